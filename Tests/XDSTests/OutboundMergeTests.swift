import Testing
import Wire
import XDS

/// At most one response per stream sits in the transport; what changes meanwhile is merged into the one built when
/// the transport takes it (`responseAwaitsTransport` / `transportReady`). What the client ends up holding must be
/// what it would hold had every response been sent.
@Suite struct SotWOutboundMergeTests {
    /// `default` v1 answered and still in the transport.
    private func inTransport() -> (SotWStream, SecretCache, DiscoveryResponse) {
        var cache = emptyCache()
        cache.put("default", "v1")
        var stream = SotWStream(nonces: NonceSequence(prefix: "s-"))
        let response = sent(stream.receive(sotwRequest(["default"]), cache: cache))[0]
        stream.responseAwaitsTransport()
        return (stream, cache, response)
    }

    @Test func changesWhileBusyAreHeldThenSentAsTheLatestSnapshot() {
        var (stream, cache, first) = inTransport()
        for version in ["v2", "v3", "v4"] {
            cache.put("default", version)
            #expect(stream.cacheChanged(cache).isEmpty)
        }
        #expect(stream.holdsUnsentChange)
        let merged = sent(stream.transportReady(cache))
        #expect(merged.count == 1)
        #expect(merged.first?.resources == [packedSecret("default", "v4")])
        #expect(merged.first?.versionInfo == "v4")
        // The replaced responses never had a nonce: the next one follows the response the client saw.
        #expect(first.nonce == "s-1")
        #expect(merged.first?.nonce == "s-2")
        #expect(!stream.holdsUnsentChange)
    }

    @Test func readyWithNothingHeldSendsNothing() {
        var (stream, cache, _) = inTransport()
        #expect(stream.transportReady(cache).isEmpty)
        // Not busy any more: the next change goes out at once.
        cache.put("default", "v2")
        #expect(sent(stream.cacheChanged(cache)).count == 1)
    }

    @Test func aChangeUndoneWhileBusySendsNothing() {
        var (stream, cache, _) = inTransport()
        cache.put("default", "v2")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v1")
        #expect(stream.cacheChanged(cache).isEmpty)
        #expect(stream.transportReady(cache).isEmpty)
    }

    @Test func ackOfTheResponseInTransportIsAnAckAndAnOlderEchoIsStale() {
        var (stream, cache, first) = inTransport()
        // The ACK of the response in flight still counts (its nonce is the latest).
        #expect(
            stream.receive(ack(first, names: ["default"]), cache: cache)
                == [.ack(nonce: "s-1", versionInfo: "v1", resourceNames: ["default"])])
        cache.put("default", "v2")
        _ = stream.cacheChanged(cache)
        let second = sent(stream.transportReady(cache))[0]
        // After the merged response, an echo of the first is stale and changes nothing.
        #expect(stream.receive(ack(first, names: ["default", "ROOTCA"]), cache: cache).isEmpty)
        #expect(stream.latestNonce == second.nonce)
    }

    @Test func newNamesRequestedWhileBusyAreAnsweredWhenReady() {
        var (stream, cache, first) = inTransport()
        cache.put("ROOTCA", "r1")
        let actions = stream.receive(ack(first, names: ["default", "ROOTCA"]), cache: cache)
        #expect(sent(actions).isEmpty)
        let merged = sent(stream.transportReady(cache))
        #expect(merged.first?.resources == [packedSecret("default", "v1"), packedSecret("ROOTCA", "r1")])
    }
}

@Suite struct DeltaOutboundMergeTests {
    /// `default` v1 and `ROOTCA` r1 answered and still in the transport.
    private func inTransport() -> (DeltaStream, SecretCache) {
        var cache = emptyCache()
        cache.put("default", "v1")
        cache.put("ROOTCA", "r1")
        var stream = DeltaStream(nonces: NonceSequence(prefix: "d-"))
        let first = sent(stream.receive(deltaRequest(subscribe: ["default", "ROOTCA"]), cache: cache))
        #expect(first.map(contents) == [["ROOTCA@r1", "default@v1"]])
        stream.responseAwaitsTransport()
        return (stream, cache)
    }

    @Test func updatesMergeToTheLatestVersionAndRemovalsAreKept() {
        var (stream, cache) = inTransport()
        cache.put("default", "v2")
        #expect(stream.cacheChanged(cache).isEmpty)
        _ = cache.remove(name: "ROOTCA")
        #expect(stream.cacheChanged(cache).isEmpty)
        cache.put("default", "v3")
        #expect(stream.cacheChanged(cache).isEmpty)
        let merged = sent(stream.transportReady(cache))
        #expect(merged.count == 1)
        #expect(merged.first.map(contents) == ["default@v3"])
        #expect(merged.first?.removedResources == ["ROOTCA"])
        #expect(merged.first?.nonce == "d-2")
    }

    @Test func removedThenRestoredAtTheHeldVersionSendsNothing() {
        var (stream, cache) = inTransport()
        _ = cache.remove(name: "ROOTCA")
        _ = stream.cacheChanged(cache)
        cache.put("ROOTCA", "r1")
        _ = stream.cacheChanged(cache)
        #expect(stream.transportReady(cache).isEmpty)
    }

    @Test func removedThenRestoredAtANewVersionIsAnUpdateNotARemoval() {
        var (stream, cache) = inTransport()
        _ = cache.remove(name: "ROOTCA")
        _ = stream.cacheChanged(cache)
        cache.put("ROOTCA", "r2")
        _ = stream.cacheChanged(cache)
        let merged = sent(stream.transportReady(cache))
        #expect(merged.first.map(contents) == ["ROOTCA@r2"])
        #expect(merged.first?.removedResources == [])
    }

    @Test func subscribeAndUnsubscribeWhileBusyAreMergedToo() {
        var (stream, cache) = inTransport()
        let spiffeID = "spiffe://example.org/ns/a/sa/b"
        cache.put(spiffeID, "s1")
        #expect(
            sent(stream.receive(deltaRequest(subscribe: [spiffeID], unsubscribe: ["ROOTCA"]), cache: cache)).isEmpty)
        cache.put("ROOTCA", "r2")  // no longer subscribed: not sent
        _ = stream.cacheChanged(cache)
        let merged = sent(stream.transportReady(cache))
        #expect(merged.first.map(contents) == [spiffeID + "@s1"])
    }

    @Test func ackOfTheResponseInTransportIsLogged() {
        var (stream, cache) = inTransport()
        #expect(
            stream.receive(deltaRequest(nonce: "d-1"), cache: cache)
                == [.ack(nonce: "d-1", versions: ["ROOTCA": "r1", "default": "v1"], removed: [])])
    }
}
