/// A FIFO of bytes read from the front without shifting on every read: the consumed prefix is
/// dropped only once it outweighs the live part, so reads are amortised O(1) per byte.
struct ByteQueue {
    private var storage: [UInt8] = []
    private var readIndex = 0

    var count: Int { storage.count - readIndex }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        storage.append(contentsOf: bytes)
    }

    mutating func read(into buffer: UnsafeMutablePointer<UInt8>, maxCount: Int) -> Int {
        let n = min(maxCount, count)
        guard n > 0 else { return 0 }
        storage.withUnsafeBufferPointer { source in
            buffer.update(from: source.baseAddress! + readIndex, count: n)
        }
        readIndex += n
        if readIndex == storage.count {
            // Drained: the storage goes too. A held stream sends one response an hour or so; keeping the buffer of
            // the last one (1.2 KB for an SVID) was most of what each of 10,000 idle streams cost.
            storage = []
            readIndex = 0
        } else if readIndex > storage.count / 2 {
            storage.removeFirst(readIndex)
            readIndex = 0
        }
        return n
    }
}
