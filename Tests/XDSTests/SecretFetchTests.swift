import Testing
import Wire
import XDS

@Suite struct SecretFetchTests {
    @Test func allNamesAvailableIsAnswered() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r1")
        let decision = SecretFetch.decide(sotwRequest(["ROOTCA", "default"]), cache: cache)
        guard case .respond(let response) = decision else {
            Issue.record("expected a response, got \(decision)")
            return
        }
        #expect(response.resources == [packedSecret("ROOTCA", "r1"), packedSecret("default", "v1")])
        #expect(response.typeURL == SDS.secretTypeURL)
        #expect(response.nonce == "")
        #expect(response.versionInfo.count == 16)
    }

    @Test func singleNameVersionIsTheResourceVersion() {
        var cache = emptyCache()
        cache.put("default", "v1")
        #expect(
            SecretFetch.decide(sotwRequest(["default"]), cache: cache)
                == .respond(
                    DiscoveryResponse(
                        versionInfo: "v1", resources: [packedSecret("default", "v1")], typeURL: SDS.secretTypeURL)))
    }

    @Test func pendingNameWaitsUntilTheCacheHasIt() {
        var cache = emptyCache()
        cache.put("ROOTCA", "r1")
        let request = sotwRequest(["default", "ROOTCA"])
        #expect(SecretFetch.decide(request, cache: cache) == .wait(pending: ["default"]))
        cache.put("default", "v1")
        guard case .respond = SecretFetch.decide(request, cache: cache) else {
            Issue.record("expected a response once default is cached")
            return
        }
    }

    @Test func neverServedNameIsReported() {
        let decision = SecretFetch.decide(sotwRequest(["default", otherTrustDomainID]), cache: emptyCache())
        #expect(decision == .neverServed([otherTrustDomainID]))
    }

    @Test func noNamesIsAProtocolError() {
        #expect(SecretFetch.decide(sotwRequest([]), cache: emptyCache()) == .protocolError(.noResourceNames))
    }

    @Test func wrongOrMissingTypeURLIsAProtocolError() {
        let cache = emptyCache()
        #expect(
            SecretFetch.decide(sotwRequest(["default"], typeURL: ""), cache: cache) == .protocolError(.missingTypeURL))
        #expect(
            SecretFetch.decide(sotwRequest(["default"], typeURL: "x"), cache: cache)
                == .protocolError(.unsupportedTypeURL("x")))
    }
}
