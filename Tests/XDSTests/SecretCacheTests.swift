import Testing
import Wire
@testable import XDS

@Suite struct SecretCacheTests {
    @Test func setReportsChangeAndBumpsRevisionOnlyForNewContent() {
        var cache = emptyCache()
        #expect(cache.revision == 0)
        let changed1 = cache.put("default", "v1")
        #expect(changed1)
        #expect(cache.revision == 1)
        let changed2 = cache.put("default", "v1")
        #expect(!changed2)
        #expect(cache.revision == 1)
        let changed3 = cache.put("default", "v2")
        #expect(changed3)
        #expect(cache.revision == 2)
        #expect(
            cache.entry(named: "default") == SecretCache.Entry(version: "v2", resource: packedSecret("default", "v2")))
        #expect(cache.version(of: "default") == "v2")
        #expect(cache.count == 1)
    }

    @Test func removeReportsWhetherSomethingWasThere() {
        var cache = emptyCache()
        cache.put("default", "v1")
        let changed4 = cache.remove(name: "default")
        #expect(changed4)
        #expect(cache.revision == 2)
        let changed5 = cache.remove(name: "default")
        #expect(!changed5)
        #expect(cache.revision == 2)
        #expect(cache.entry(named: "default") == nil)
    }

    @Test func availabilityCombinesContentAndClassifier() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("only-cached", "v1")
        #expect(cache.availability(of: "default") == .available)
        // A cached secret is served whatever the classifier says.
        #expect(cache.availability(of: "only-cached") == .available)
        #expect(cache.availability(of: "ROOTCA") == .pending)
        #expect(cache.availability(of: otherTrustDomainID) == .neverServed)
        #expect(cache.availability(of: "file-root:system") == .neverServed)
    }

    @Test func invalidateBumpsRevisionWithoutContentChange() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.invalidate()
        #expect(cache.revision == 2)
        #expect(cache.version(of: "default") == "v1")
    }

    /// The digest a push takes from the entry (made once when it was stored) is the one a stream would compute for
    /// the name it asked for, under the stored name, an alias, and after the version changed.
    @Test func anEntrysDigestIsTheOneComputedForTheNameAskedFor() throws {
        var cache = emptyCache()
        cache.put("default", "v1")
        var entry = try #require(cache.entry(named: "default"))
        #expect(entry.sotwDigest(answeredAs: "default") == sotwDigest(name: "default", version: "v1"))
        #expect(entry.sotwDigest(answeredAs: "ALL") == sotwDigest(name: "ALL", version: "v1"))
        #expect(entry.sotwDigest(answeredAs: "default") != sotwDigest(name: "default", version: "v2"))
        entry.version = "v2"
        #expect(entry.sotwDigest(answeredAs: "default") == sotwDigest(name: "default", version: "v2"))
    }
    /// A push's copy answers from its last lookup only while it is the same name in the same content: other names,
    /// aliases, absent names and a change made through the copy are looked up afresh, and the service's own cache
    /// is untouched by the copy's changes.
    @Test func aPushCopyRemembersOnlyWhatIsStillTrue() throws {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r1")
        var push = cache.rememberingLastLookup()
        #expect(push.entry(named: "default")?.version == "v1")
        #expect(push.entry(named: "default")?.version == "v1")
        #expect(push.entry(named: "ROOTCA")?.version == "r1")
        #expect(push.entry(named: "missing") == nil)
        #expect(push.entry(named: "default")?.version == "v1")
        let view = push.viewing(["ALL": "ROOTCA"])
        #expect(view.entry(named: "ALL")?.version == "r1")
        #expect(view.entry(named: "default")?.version == "v1")
        push.put("default", "v2")
        #expect(push.entry(named: "default")?.version == "v2")
        push.remove(name: "default")
        #expect(push.entry(named: "default") == nil)
        #expect(cache.entry(named: "default")?.version == "v1")
        cache.put("default", "v3")
        #expect(cache.rememberingLastLookup().entry(named: "default")?.version == "v3")
    }
}
