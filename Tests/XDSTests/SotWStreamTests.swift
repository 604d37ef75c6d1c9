import Testing
import Wire
import XDS

@Suite struct SotWStreamTests {
    /// A stream that answered `["default"]` at v1; returns the stream, the cache and that response.
    private func answeredDefault() -> (SotWStream, SecretCache, DiscoveryResponse) {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream()
        let response = sent(stream.receive(sotwRequest(["default"]), cache: cache))[0]
        return (stream, cache, response)
    }

    @Test func firstRequestIsAnsweredWithTheSecret() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream(nonces: NonceSequence(prefix: "s7-"))
        let actions = stream.receive(sotwRequest(["default"]), cache: cache)
        #expect(
            actions == [
                .send(
                    DiscoveryResponse(
                        versionInfo: "v1", resources: [packedSecret("default", "v1")], typeURL: SDS.secretTypeURL,
                        nonce: "s7-1"))
            ])
        #expect(stream.latestNonce == "s7-1")
        #expect(stream.subscribedNames == ["default"])
    }

    @Test func ackSendsNothing() {
        var (stream, cache, response) = answeredDefault()
        let actions = stream.receive(ack(response, names: ["default"]), cache: cache)
        #expect(actions == [.ack(nonce: response.nonce, versionInfo: "v1", resourceNames: ["default"])])
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func nackIsRecordedAndSameContentIsNotResent() {
        var (stream, cache, response) = answeredDefault()
        let nack = sotwRequest(["default"], version: "", nonce: response.nonce, error: loadFailure)
        let actions = stream.receive(nack, cache: cache)
        #expect(
            actions == [
                .nack(
                    nonce: response.nonce, versionInfo: "", rejectedVersionInfo: "v1", resourceNames: ["default"],
                    errorDetail: loadFailure)
            ])
        #expect(stream.lastRejection == loadFailure)
        // Unrelated changes bump the revision but must not resend the rejected content.
        cache.put("ROOTCA", "r1")
        #expect(stream.cacheChanged(cache).isEmpty)
        let changed1 = cache.put("default", "v1")
        #expect(!changed1)
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func nackThenNewContentIsPushed() {
        var (stream, cache, response) = answeredDefault()
        _ = stream.receive(sotwRequest(["default"], nonce: response.nonce, error: loadFailure), cache: cache)
        cache.put("default", "v2")
        let pushed = sent(stream.cacheChanged(cache))
        #expect(pushed.map(\.versionInfo) == ["v2"])
        #expect(pushed.first?.resources == [packedSecret("default", "v2")])
        #expect(pushed.first?.nonce != response.nonce)
    }

    @Test func nackWithChangedNamesAnswersTheNewNames() {
        var (stream, cache, response) = answeredDefault()
        cache.put("ROOTCA", "r1")
        let actions = stream.receive(sotwRequest(["ROOTCA"], nonce: response.nonce, error: loadFailure), cache: cache)
        #expect(actions.count == 2)
        guard case .nack = actions.first else {
            Issue.record("expected the NACK first, got \(actions)")
            return
        }
        #expect(sent(actions).map(\.resources) == [[packedSecret("ROOTCA", "r1")]])
    }

    @Test func staleNonceIsIgnored() {
        var (stream, cache, first) = answeredDefault()
        cache.put("default", "v2")
        let second = sent(stream.cacheChanged(cache))[0]
        // The ACK of the first response crosses our push: stale, even if it also changes names or NACKs.
        #expect(stream.receive(ack(first, names: ["default"]), cache: cache).isEmpty)
        #expect(stream.receive(ack(first, names: ["ROOTCA"]), cache: cache).isEmpty)
        #expect(stream.receive(sotwRequest(["default"], nonce: first.nonce, error: loadFailure), cache: cache).isEmpty)
        #expect(stream.subscribedNames == ["default"])
        #expect(stream.lastRejection == nil)
        #expect(
            stream.receive(ack(second, names: ["default"]), cache: cache)
                == [.ack(nonce: second.nonce, versionInfo: "v2", resourceNames: ["default"])])
    }

    @Test func reconnectWithOldVersionAndEmptyNonceIsAnswered() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream()
        // After a server restart Envoy comes back holding v1; it still needs a response on the new stream.
        let pushed = sent(stream.receive(sotwRequest(["default"], version: "v1"), cache: cache))
        #expect(pushed.map(\.versionInfo) == ["v1"])
    }

    @Test func firstRequestWithLeftoverNonceIsANewSubscription() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream()
        let pushed = sent(stream.receive(sotwRequest(["default"], version: "v1", nonce: "old-42"), cache: cache))
        #expect(pushed.count == 1)
    }

    @Test func emptyNonceMidStreamStartsOverAndIsAnswered() {
        var (stream, cache, response) = answeredDefault()
        let again = sent(stream.receive(sotwRequest(["default"], version: "v1"), cache: cache))
        #expect(again.map(\.versionInfo) == ["v1"])
        #expect(again.first?.nonce != response.nonce)
    }

    @Test func changedNamesAreAnsweredWithTheNewSet() {
        var (stream, cache, response) = answeredDefault()
        cache.put("ROOTCA", "r1")
        _ = stream.cacheChanged(cache)
        let actions = stream.receive(ack(response, names: ["ROOTCA"]), cache: cache)
        #expect(actions.first == .ack(nonce: response.nonce, versionInfo: "v1", resourceNames: ["default"]))
        let pushed = sent(actions)
        #expect(pushed.map(\.resources) == [[packedSecret("ROOTCA", "r1")]])
        #expect(stream.subscribedNames == ["ROOTCA"])
    }

    @Test func reorderedNamesAreNotAChange() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r1")
        var stream = SotWStream()
        let response = sent(stream.receive(sotwRequest(["default", "ROOTCA"]), cache: cache))[0]
        let actions = stream.receive(ack(response, names: ["ROOTCA", "default", "ROOTCA"]), cache: cache)
        #expect(sent(actions).isEmpty)
    }

    @Test func neverServedNameIsHeldNotAnsweredWithAnError() {
        var cache = emptyCache()
        var stream = SotWStream()
        #expect(stream.receive(sotwRequest([otherTrustDomainID]), cache: cache).isEmpty)
        cache.put("default", "v1")
        #expect(stream.cacheChanged(cache).isEmpty)
        #expect(stream.failure == nil)
    }

    @Test func pendingNameIsHeldThenAnsweredOnCacheChange() {
        var cache = emptyCache()
        var stream = SotWStream()
        #expect(stream.receive(sotwRequest(["default"]), cache: cache).isEmpty)
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v1")
        #expect(sent(stream.cacheChanged(cache)).map(\.versionInfo) == ["v1"])
    }

    @Test func severalNamesAreHeldUntilAllAreAvailableThenSentInRequestOrder() {
        var cache = emptyCache()
        var stream = SotWStream()
        cache.put("ROOTCA", "r1")
        #expect(stream.receive(sotwRequest(["default", "ROOTCA"]), cache: cache).isEmpty)
        cache.put("default", "v1")
        let response = sent(stream.cacheChanged(cache))[0]
        #expect(response.resources == [packedSecret("default", "v1"), packedSecret("ROOTCA", "r1")])
        #expect(response.versionInfo.count == 16)
        #expect(response.versionInfo != "v1")
        // The version of a multi-resource response is deterministic and follows content.
        var other = SotWStream()
        let sameContent = sent(other.receive(sotwRequest(["ROOTCA", "default"]), cache: cache))[0]
        #expect(sameContent.versionInfo == response.versionInfo)
        cache.put("ROOTCA", "r2")
        #expect(sent(stream.cacheChanged(cache)).first?.versionInfo != response.versionInfo)
    }

    @Test func contentChangeIsPushedWithANewNonce() {
        var (stream, cache, response) = answeredDefault()
        _ = stream.receive(ack(response, names: ["default"]), cache: cache)
        cache.put("default", "v2")
        let pushed = sent(stream.cacheChanged(cache))
        #expect(pushed.map(\.versionInfo) == ["v2"])
        #expect(pushed.map(\.nonce) != [response.nonce])
        #expect(stream.latestNonce == pushed.first?.nonce)
    }

    @Test func sameContentOrUnrelatedChangeIsNotPushed() {
        var (stream, cache, _) = answeredDefault()
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("spiffe://example.org/other", "x1")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v2")
        cache.put("default", "v1")  // back to what the stream already sent
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func removedSecretIsHeldAndOnlyNewContentIsPushedLater() {
        var (stream, cache, _) = answeredDefault()
        cache.remove(name: "default")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v1")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).map(\.versionInfo) == ["v2"])
    }

    @Test func emptyNameListHoldsEverything() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream()
        #expect(stream.receive(sotwRequest([]), cache: cache).isEmpty)
    }

    @Test func wrongTypeURLIsAProtocolErrorAndFailsTheStream() {
        let cache = emptyCache()
        var stream = SotWStream()
        let clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        #expect(
            stream.receive(sotwRequest(["default"], typeURL: clusterType), cache: cache)
                == [.protocolError(.unsupportedTypeURL(clusterType))])
        #expect(stream.failure == .unsupportedTypeURL(clusterType))
        #expect(stream.receive(sotwRequest(["default"]), cache: cache).isEmpty)
    }

    @Test func missingTypeURLOnFirstRequestIsAProtocolError() {
        var stream = SotWStream()
        #expect(
            stream.receive(sotwRequest(["default"], typeURL: ""), cache: emptyCache()) == [
                .protocolError(.missingTypeURL)
            ])
    }

    @Test func emptyTypeURLOnFollowUpMeansSameType() {
        var (stream, cache, response) = answeredDefault()
        var request = ack(response, names: ["default"])
        request.typeURL = ""
        #expect(stream.receive(request, cache: cache).count == 1)
        #expect(stream.failure == nil)
    }

    @Test func changedTypeURLOnFollowUpIsAProtocolError() {
        var (stream, cache, response) = answeredDefault()
        var request = ack(response, names: ["default"])
        request.typeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"
        #expect(
            stream.receive(request, cache: cache)
                == [.protocolError(.typeURLChanged(from: SDS.secretTypeURL, to: request.typeURL))])
    }

    @Test func nodeIsKeptFromTheFirstMessage() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream()
        let node = Node(id: "sidecar~10.0.0.1~web.default~default.svc.cluster.local", cluster: "web")
        let response = sent(stream.receive(sotwRequest(["default"], node: node), cache: cache))[0]
        _ = stream.receive(ack(response, names: ["default"]), cache: cache)
        #expect(stream.node == node)
    }
}

/// Nonces are the prefix and the counter in decimal, whatever the counter's width.
@Suite struct NonceSequenceTests {
    @Test(arguments: [0, 1, 9, 10, 99, 100, 12_345, UInt64(UInt32.max), UInt64.max - 1, UInt64.max])
    func aNonceIsThePrefixAndTheCounter(start: UInt64) {
        for prefix in ["", "7-", "a-much-longer-prefix-than-fifteen-bytes-"] {
            var nonces = NonceSequence(prefix: prefix, start: start)
            #expect(nonces.next() == prefix + String(start))
            #expect(nonces.next() == prefix + String(start &+ 1))
        }
    }
}
