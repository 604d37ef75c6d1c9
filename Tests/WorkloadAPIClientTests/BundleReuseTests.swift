import Issuance
import SPIFFE
import TestSupport
import Testing
import Wire
import WorkloadAPIClient

@testable import PKI

/// Whether two certificates are one parse (the same OpenSSL object), not only equal bytes.
private func sameParse(_ lhs: [Certificate], _ rhs: [Certificate]) -> Bool {
    lhs.count == rhs.count && zip(lhs, rhs).allSatisfy { $0.handle === $1.handle }
}

private func trustDomain(_ name: String) throws -> TrustDomain { try TrustDomain(name) }

@Suite struct BundleEncodingTests {
    @Test func aBundleIsEncodedAsItsCertificatesInOrderAndNothingElse() throws {
        let first = try TestCA(trustDomain: "example.org").bundle.certificates[0]
        let second = try TestCA(trustDomain: "example.org").bundle.certificates[0]
        let bundle = X509Bundle(trustDomain: try trustDomain("example.org"), certificates: [first, second])
        #expect(bundle.isEncoded(as: first.der + second.der))
        #expect(!bundle.isEncoded(as: second.der + first.der), "the order counts")
        #expect(!bundle.isEncoded(as: first.der), "a prefix is not the bundle")
        #expect(!bundle.isEncoded(as: first.der + second.der + [0]), "nor is a trailing byte")
        var flipped = first.der + second.der
        flipped[flipped.count - 1] ^= 1
        #expect(!bundle.isEncoded(as: flipped))
        #expect(X509Bundle(trustDomain: try trustDomain("example.org"), certificates: []).isEncoded(as: []))
    }
}

@Suite struct BundleReuseTests {
    @Test func anUnchangedBundleIsTakenFromTheLastMessageAndAChangedOneIsParsed() throws {
        let other = try TestCA(trustDomain: "other.org")
        let third = try TestCA(trustDomain: "third.org")
        let entries = ["spiffe://other.org": other.bundle.der, "third.org": third.bundle.der]
        let before = UpstreamIdentity.bundles(entries)
        #expect(before.problems.isEmpty)
        let otherDomain = try trustDomain("other.org")
        let thirdDomain = try trustDomain("third.org")

        let again = UpstreamIdentity.bundles(entries, reusing: before.bundles)
        #expect(again.bundles == before.bundles)
        #expect(sameParse(again.bundles[otherDomain]!.certificates, before.bundles[otherDomain]!.certificates))
        #expect(sameParse(again.bundles[thirdDomain]!.certificates, before.bundles[thirdDomain]!.certificates))

        // A root added to other.org: that bundle is parsed again, the unchanged one is still reused.
        let added = try TestCA(trustDomain: "other.org").bundle.der
        let changed = UpstreamIdentity.bundles(
            ["spiffe://other.org": other.bundle.der + added, "third.org": third.bundle.der], reusing: before.bundles)
        #expect(changed.problems.isEmpty)
        #expect(changed.bundles[otherDomain]?.der == other.bundle.der + added)
        #expect(changed.bundles[otherDomain]?.certificates.count == 2)
        #expect(sameParse(changed.bundles[thirdDomain]!.certificates, before.bundles[thirdDomain]!.certificates))
    }

    @Test func aBundleIsOnlyReusedForItsOwnTrustDomain() throws {
        let other = try TestCA(trustDomain: "other.org")
        let before = UpstreamIdentity.bundles(["spiffe://other.org": other.bundle.der])
        // The same bytes under another name: parsed for that name (a bundle is a trust domain's, not only bytes).
        let renamed = UpstreamIdentity.bundles(["spiffe://fourth.org": other.bundle.der], reusing: before.bundles)
        let fourth = try #require(renamed.bundles[try trustDomain("fourth.org")])
        #expect(fourth.trustDomain.name == "fourth.org")
        #expect(!sameParse(fourth.certificates, before.bundles[try trustDomain("other.org")]!.certificates))
    }

    @Test func oneMessagesBundlesHoldAtMost2048CertificatesWhetherParsedOrReused() throws {
        let root = try TestCA(trustDomain: "other.org").bundle.der
        // Five trust domains of 500 certificates: the first four fit (2,000), the fifth does not.
        let big = Array([[UInt8]](repeating: root, count: 500).joined())
        let entries = Dictionary(uniqueKeysWithValues: (1...5).map { ("spiffe://d\($0).org", big) })
        #expect(UpstreamIdentity.maxBundleCertificatesPerMessage == 2048)
        let parsed = UpstreamIdentity.bundles(entries)
        #expect(parsed.bundles.keys.map(\.name).sorted() == ["d1.org", "d2.org", "d3.org", "d4.org"])
        #expect(parsed.problems.count == 2)
        #expect(parsed.problems.first?.hasPrefix("bundle spiffe://d5.org:") == true)
        #expect(parsed.problems.last?.contains("2048 certificates in all") == true)
        // The same message again, every bundle on hand: the same answer (reuse never lifts the limit).
        var all = parsed.bundles
        all[try trustDomain("d5.org")] = try X509Bundle(trustDomain: try trustDomain("d5.org"), der: big)
        let reused = UpstreamIdentity.bundles(entries, reusing: all)
        #expect(reused.bundles == parsed.bundles)
        #expect(reused.problems.count == 2)
    }

    @Test func aRotationReusesEveryUnchangedBundleOfBothStreams() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let federated = ["spiffe://other.org": upstream.other.bundle.der]
        // A new SVID with the same bundles, as SPIRE sends at each rotation; what the machine delivers for it.
        func rotation() throws -> IdentityUpdate {
            let response = upstream.response([try upstream.svid()], federated: federated)
            return try #require(updates(machine.received(response, attempt: 1, now: upstream.now)).first)
        }
        let first = try rotation()
        let rotated = try rotation()
        #expect(rotated.svid.chainDER != first.svid.chainDER, "a new SVID")
        #expect(rotated.bundles.map(\.trustDomain.name) == ["example.org", "other.org"])
        for (new, old) in zip(rotated.bundles, first.bundles) {
            #expect(sameParse(new.certificates, old.certificates), "\(new.trustDomain) parsed again")
        }
        // The bundle stream then sends the same bundles: taken from what the SVID stream brought.
        _ = machine.received(
            X509BundlesResponse(
                bundles: ["spiffe://example.org": upstream.ca.bundle.der].merging(federated) { a, _ in a }),
            attempt: 1, now: upstream.now)
        for (new, old) in zip(try rotation().bundles, first.bundles) {
            #expect(sameParse(new.certificates, old.certificates), "\(new.trustDomain) parsed again")
        }
    }
}
