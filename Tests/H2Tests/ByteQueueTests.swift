import Testing

@testable import H2

/// The queue behind every stream's DATA: whatever the segment sizes, appends and reads, the bytes come out in order,
/// once, and `count` is what is left.
@Suite struct ByteQueueTests {
    /// A deterministic generator (no global randomness in tests).
    private struct Lehmer {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    @Test(arguments: [1, 7, 42]) func bytesComeOutInOrderOnce(seed: UInt64) {
        var random = Lehmer(state: seed)
        var queue = ByteQueue()
        var expected: [UInt8] = []
        var received: [UInt8] = []
        var next: UInt8 = 0
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: 4096)
        defer { buffer.deallocate() }
        for _ in 0..<2_000 {
            // Bursts of appends (past the three inline segments, into the overflow and its compaction), then reads
            // of any size, including ones that stop inside a segment.
            for _ in 0..<random.next(6) {
                let segment = (0..<random.next(40)).map { _ in
                    next &+= 1
                    return next
                }
                expected += segment
                queue.append(segment)
            }
            let n = queue.read(into: buffer, maxCount: random.next(120))
            received += UnsafeBufferPointer(start: buffer, count: n)
            #expect(queue.count == expected.count - received.count)
        }
        while queue.count > 0 {
            let n = queue.read(into: buffer, maxCount: 4096)
            received += UnsafeBufferPointer(start: buffer, count: n)
        }
        #expect(received == expected)
        #expect(queue.read(into: buffer, maxCount: 10) == 0)
    }
}
