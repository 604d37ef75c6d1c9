import Testing
import Wire
import XDS

/// 10,000 streams, each on its own name, react to one cache change. The classifier call count shows the work
/// per stream is bounded by its own subscriptions, not by the size of the cache (no timing involved).
@Suite struct ManyStreamsTests {
    static let streamCount = 10_000
    /// Names 0..<cachedCount are issued; the rest are pending.
    static let cachedCount = 5_000

    static func name(_ index: Int) -> String { "spiffe://example.org/ns/default/sa/w\(index)" }

    static func cache(counting calls: CallCounter) -> SecretCache {
        var cache = SecretCache { name in
            calls.increment()
            return name.hasPrefix("spiffe://example.org/") ? .served : .neverServed
        }
        for index in 0..<cachedCount { cache.put(name(index), "v1") }
        return cache
    }

    @Test func sotwStreamsReactToOneChange() {
        let calls = CallCounter()
        var cache = Self.cache(counting: calls)
        var streams = (0..<Self.streamCount).map { SotWStream(nonces: NonceSequence(prefix: "s\($0)-")) }
        var answered = 0
        for index in streams.indices {
            answered += sent(streams[index].receive(sotwRequest([Self.name(index)]), cache: cache)).count
        }
        #expect(answered == Self.cachedCount)

        cache.put(Self.name(42), "v2")
        calls.reset()
        var pushedTo: [Int] = []
        for index in streams.indices where !sent(streams[index].cacheChanged(cache)).isEmpty {
            pushedTo.append(index)
        }
        #expect(pushedTo == [42])
        // SotW holds pending names by lookup alone.
        #expect(calls.value == 0)

        // A second notification for the same revision does nothing anywhere.
        var repeats = 0
        for index in streams.indices { repeats += streams[index].cacheChanged(cache).count }
        #expect(repeats == 0)

        // Issuing a pending name wakes exactly its stream.
        cache.put(Self.name(9_999), "v1")
        pushedTo = []
        for index in streams.indices where !sent(streams[index].cacheChanged(cache)).isEmpty {
            pushedTo.append(index)
        }
        #expect(pushedTo == [9_999])
    }

    @Test func deltaStreamsReactToOneChange() {
        let calls = CallCounter()
        var cache = Self.cache(counting: calls)
        var streams = (0..<Self.streamCount).map { DeltaStream(nonces: NonceSequence(prefix: "d\($0)-")) }
        var answered = 0
        for index in streams.indices {
            answered += sent(streams[index].receive(deltaRequest(subscribe: [Self.name(index)]), cache: cache)).count
        }
        #expect(answered == Self.cachedCount)

        cache.put(Self.name(42), "v2")
        calls.reset()
        var pushedTo: [Int] = []
        for index in streams.indices {
            let responses = sent(streams[index].cacheChanged(cache))
            if !responses.isEmpty {
                pushedTo.append(index)
                #expect(responses.map(contents) == [["\(Self.name(42))@v2"]])
            }
        }
        #expect(pushedTo == [42])
        // One classification per pending subscribed name: O(subscriptions), not O(streams × cache).
        #expect(calls.value == Self.streamCount - Self.cachedCount)
    }
}
