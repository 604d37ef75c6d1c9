/// A FIFO of byte arrays, read from the front as one stream of bytes. Appending an array keeps it as it is (a
/// reference, no copy): a push hands the same encoded secret to thousands of streams, and each stream's queue holds
/// that one buffer plus its own few bytes (gRPC prefix, nonce) until nghttp2 copies them into a DATA frame.
struct ByteQueue {
    private var segments: [[UInt8]] = []
    /// The first segment not yet fully read, and how far into it reading got.
    private var head = 0
    private var offset = 0
    private(set) var count = 0

    mutating func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        segments.append(bytes)
        count += bytes.count
    }

    /// The three in order (a gRPC message is sent as prefix, body and tail). An empty queue, a held stream's usual
    /// state, allocates its list of segments once; a longer queue grows it as appends do (geometrically: reserving
    /// three more each time would copy the list on every message).
    mutating func append(_ first: [UInt8], _ second: [UInt8], _ third: [UInt8]) {
        if segments.isEmpty { segments.reserveCapacity(3) }
        append(first)
        append(second)
        append(third)
    }

    mutating func read(into buffer: UnsafeMutablePointer<UInt8>, maxCount: Int) -> Int {
        var written = 0
        while written < maxCount, head < segments.count {
            let n = segments[head].withUnsafeBufferPointer { source in
                let n = min(maxCount - written, source.count - offset)
                (buffer + written).update(from: source.baseAddress! + offset, count: n)
                return n
            }
            written += n
            offset += n
            if offset == segments[head].count {
                head += 1
                offset = 0
            }
        }
        count -= written
        if head == segments.count {
            // Drained: the storage goes too. A held stream sends one response an hour or so; keeping the buffers of
            // the last one was most of what each of 10,000 idle streams cost.
            segments = []
            head = 0
        } else if head >= 16, head > segments.count / 2 {
            segments.removeFirst(head)
            head = 0
        }
        return written
    }
}
