import Testing
import Wire
import XDS

@Suite struct DeltaStreamTests {
    /// A stream that was sent `default` at v1; returns the stream, the cache and that response.
    private func answeredDefault() -> (DeltaStream, SecretCache, DeltaDiscoveryResponse) {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = DeltaStream()
        let response = sent(stream.receive(deltaRequest(subscribe: ["default"]), cache: cache))[0]
        return (stream, cache, response)
    }

    @Test func firstSubscribeIsAnsweredWithTheSecret() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = DeltaStream(nonces: NonceSequence(prefix: "d3-"))
        let actions = stream.receive(deltaRequest(subscribe: ["default"]), cache: cache)
        #expect(
            actions == [
                .send(
                    DeltaDiscoveryResponse(
                        systemVersionInfo: "1",
                        resources: [Resource(name: "default", version: "v1", resource: packedSecret("default", "v1"))],
                        typeURL: SDS.secretTypeURL, removedResources: [], nonce: "d3-1"))
            ])
        #expect(stream.subscribedNames == ["default"])
        #expect(stream.latestNonce == "d3-1")
    }

    @Test func ackSendsNothing() {
        var (stream, cache, response) = answeredDefault()
        let actions = stream.receive(deltaRequest(nonce: response.nonce), cache: cache)
        #expect(actions == [.ack(nonce: response.nonce, versions: ["default": "v1"], removed: [])])
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func initialResourceVersionsSkipWhatTheClientHolds() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r2")
        var stream = DeltaStream()
        // Reconnect: the client holds default@v1 (current) and ROOTCA@r1 (stale).
        let actions = stream.receive(
            deltaRequest(subscribe: ["default", "ROOTCA"], initialVersions: ["default": "v1", "ROOTCA": "r1"]),
            cache: cache)
        #expect(sent(actions).map(contents) == [["ROOTCA@r2"]])
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["default@v2"]])
    }

    @Test func declaredVersionOfAPendingNameIsHeldNotRemoved() {
        var cache = emptyCache()
        var stream = DeltaStream()
        // After our restart nothing is issued yet, but Envoy still holds v1: do not tell it v1 is gone.
        let actions = stream.receive(
            deltaRequest(subscribe: ["default"], initialVersions: ["default": "v1"]), cache: cache)
        #expect(actions.isEmpty)
        cache.put("ROOTCA", "r1")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["default@v2"]])
    }

    @Test func declaredVersionEqualToIssuedContentIsNotResent() {
        var cache = emptyCache()
        var stream = DeltaStream()
        _ = stream.receive(deltaRequest(subscribe: ["default"], initialVersions: ["default": "v1"]), cache: cache)
        cache.put("default", "v1")
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func declaredVersionSeenInCacheThenRemovedIsReportedRemoved() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = DeltaStream()
        let actions = stream.receive(
            deltaRequest(subscribe: ["default"], initialVersions: ["default": "v1"]), cache: cache)
        #expect(actions.isEmpty)
        cache.remove(name: "default")
        #expect(sent(stream.cacheChanged(cache)).map(\.removedResources) == [["default"]])
    }

    @Test func pureUnsubscribeNeedsNoResponseAndResubscribeResends() {
        var (stream, cache, response) = answeredDefault()
        #expect(stream.receive(deltaRequest(unsubscribe: ["default"], nonce: response.nonce), cache: cache).count == 1)
        #expect(stream.subscribedNames.isEmpty)
        cache.put("default", "v2")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v1")
        let again = sent(stream.receive(deltaRequest(subscribe: ["default"]), cache: cache))
        #expect(again.map(contents) == [["default@v1"]])
    }

    @Test func subscribingAgainToASubscribedNameResendsIt() {
        var (stream, cache, _) = answeredDefault()
        let again = sent(stream.receive(deltaRequest(subscribe: ["default"]), cache: cache))
        #expect(again.map(contents) == [["default@v1"]])
    }

    @Test func subscribeOnAStaleNonceIsHonoured() {
        var (stream, cache, first) = answeredDefault()
        cache.put("default", "v2")
        let second = sent(stream.cacheChanged(cache))[0]
        cache.put("ROOTCA", "r1")
        _ = stream.cacheChanged(cache)
        // The ACK of the first response, now stale, also subscribes to ROOTCA.
        let actions = stream.receive(deltaRequest(subscribe: ["ROOTCA"], nonce: first.nonce), cache: cache)
        #expect(actions.count == 1)  // no ACK logged for a stale nonce, just the response
        #expect(sent(actions).map(contents) == [["ROOTCA@r1"]])
        #expect(sent(actions).first?.nonce != second.nonce)
    }

    @Test func unsubscribeOnAStaleNonceIsHonoured() {
        var (stream, cache, first) = answeredDefault()
        cache.put("default", "v2")
        _ = stream.cacheChanged(cache)
        #expect(stream.receive(deltaRequest(unsubscribe: ["default"], nonce: first.nonce), cache: cache).isEmpty)
        #expect(stream.subscribedNames.isEmpty)
    }

    @Test func neverServedNameIsReportedRemovedOnce() {
        var cache = emptyCache()
        var stream = DeltaStream()
        let actions = stream.receive(deltaRequest(subscribe: [otherTrustDomainID, "default"]), cache: cache)
        let responses = sent(actions)
        #expect(responses.map(\.removedResources) == [[otherTrustDomainID]])
        #expect(responses.first?.resources == [])
        cache.put("default", "v1")
        #expect(sent(stream.cacheChanged(cache)).map(\.removedResources) == [[]])
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).map(\.removedResources) == [[]])
    }

    @Test func neverServedNameClaimedOnReconnectIsReportedRemoved() {
        var stream = DeltaStream()
        let actions = stream.receive(
            deltaRequest(subscribe: ["file-root:system"], initialVersions: ["file-root:system": "x"]),
            cache: emptyCache())
        #expect(sent(actions).map(\.removedResources) == [["file-root:system"]])
    }

    @Test func removedFromCacheIsReportedRemovedThenResentWhenBack() {
        var (stream, cache, _) = answeredDefault()
        cache.remove(name: "default")
        let removal = sent(stream.cacheChanged(cache))
        #expect(removal.map(\.removedResources) == [["default"]])
        #expect(removal.first?.systemVersionInfo == "2")
        cache.put("ROOTCA", "r1")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v1")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["default@v1"]])
    }

    @Test func pendingNameIsHeldThenSentOnCacheChange() {
        var cache = emptyCache()
        var stream = DeltaStream()
        #expect(stream.receive(deltaRequest(subscribe: ["default"]), cache: cache).isEmpty)
        cache.put("default", "v1")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["default@v1"]])
    }

    @Test func onlyChangedResourcesAreSent() {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r1")
        var stream = DeltaStream()
        let first = sent(stream.receive(deltaRequest(subscribe: ["default", "ROOTCA"]), cache: cache))
        #expect(first.map(contents) == [["ROOTCA@r1", "default@v1"]])
        cache.put("ROOTCA", "r2")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["ROOTCA@r2"]])
        cache.put("spiffe://example.org/ns/a/sa/b", "x1")
        #expect(stream.cacheChanged(cache).isEmpty)
    }

    @Test func nackIsRecordedAndSameVersionIsNotResent() {
        var (stream, cache, response) = answeredDefault()
        let actions = stream.receive(deltaRequest(nonce: response.nonce, error: loadFailure), cache: cache)
        #expect(
            actions == [
                .nack(nonce: response.nonce, rejectedVersions: ["default": "v1"], removed: [], errorDetail: loadFailure)
            ])
        #expect(stream.lastRejection == loadFailure)
        cache.put("ROOTCA", "r1")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).map(contents) == [["default@v2"]])
    }

    @Test func emptyFirstSubscribeIsNoNamesNotWildcard() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = DeltaStream()
        #expect(stream.receive(deltaRequest(), cache: cache).isEmpty)
        cache.put("ROOTCA", "r1")
        #expect(stream.cacheChanged(cache).isEmpty)
        #expect(
            sent(stream.receive(deltaRequest(subscribe: ["ROOTCA"]), cache: cache)).map(contents) == [["ROOTCA@r1"]])
    }

    @Test func classifierChangeSurfacesAfterInvalidate() {
        let served = ServedNames(["spiffe://example.org/web"])
        var cache = SecretCache(classifier: { served.contains($0) ? .served : .neverServed })
        var stream = DeltaStream()
        #expect(stream.receive(deltaRequest(subscribe: ["spiffe://example.org/web"]), cache: cache).isEmpty)
        served.set([])
        cache.invalidate()
        #expect(sent(stream.cacheChanged(cache)).map(\.removedResources) == [["spiffe://example.org/web"]])
    }

    @Test func wrongTypeURLIsAProtocolErrorAndFailsTheStream() {
        var stream = DeltaStream()
        let actions = stream.receive(deltaRequest(subscribe: ["default"], typeURL: "bogus"), cache: emptyCache())
        #expect(actions == [.protocolError(.unsupportedTypeURL("bogus"))])
        #expect(stream.failure == .unsupportedTypeURL("bogus"))
        #expect(stream.receive(deltaRequest(subscribe: ["default"]), cache: emptyCache()).isEmpty)
    }

    @Test func emptyTypeURLOnFollowUpMeansSameType() {
        var (stream, cache, response) = answeredDefault()
        let actions = stream.receive(deltaRequest(nonce: response.nonce, typeURL: ""), cache: cache)
        #expect(actions.count == 1)
        #expect(stream.failure == nil)
    }

    @Test func nodeIsKeptFromTheFirstMessage() {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = DeltaStream()
        let node = Node(id: "sidecar~10.0.0.1~web.default~default.svc.cluster.local", cluster: "web")
        let response = sent(stream.receive(deltaRequest(subscribe: ["default"], node: node), cache: cache))[0]
        _ = stream.receive(deltaRequest(nonce: response.nonce), cache: cache)
        #expect(stream.node == node)
    }
}
