/// A FIFO of byte arrays, read from the front as one stream of bytes. Appending an array keeps it as it is (a
/// reference, no copy): a push hands the same encoded secret to thousands of streams, and each stream's queue holds
/// that one buffer plus its own few bytes (gRPC prefix, nonce) until nghttp2 copies them into a DATA frame.
///
/// The first three segments (one gRPC message: prefix, body, tail) are held inline, so queueing a message on an
/// empty queue (a push: every stream's queue is empty between rotations) allocates nothing; further segments go to
/// `overflow`. A drained queue holds no array at all.
struct ByteQueue {
    private var first: [UInt8] = []
    private var second: [UInt8] = []
    private var third: [UInt8] = []
    private var overflow: [[UInt8]] = []
    /// Segments held (read or not), the first one not yet fully read, and how far into it reading got.
    private var segmentCount = 0
    private var head = 0
    private var offset = 0
    private(set) var count = 0

    mutating func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        switch segmentCount {
        case 0: first = bytes
        case 1: second = bytes
        case 2: third = bytes
        default: overflow.append(bytes)
        }
        segmentCount += 1
        count += bytes.count
    }

    /// The three in order (a gRPC message is sent as prefix, body and tail).
    mutating func append(_ first: [UInt8], _ second: [UInt8], _ third: [UInt8]) {
        append(first)
        append(second)
        append(third)
    }

    mutating func read(into buffer: UnsafeMutablePointer<UInt8>, maxCount: Int) -> Int {
        var written = 0
        while written < maxCount, head < segmentCount {
            // The segment is passed by value to a static copy: a closure reading `self` inside a method of `self`
            // copied the whole queue (its four arrays retained and released) for every segment. The stored
            // property goes straight in (through `segment(_:)` it was retained and released once more each).
            let (start, room, destination) = (offset, maxCount - written, buffer + written)
            let (n, length): (Int, Int)
            switch head {
            case 0: (n, length) = Self.copy(first, from: start, room: room, to: destination)
            case 1: (n, length) = Self.copy(second, from: start, room: room, to: destination)
            case 2: (n, length) = Self.copy(third, from: start, room: room, to: destination)
            default: (n, length) = Self.copy(overflow[head - 3], from: start, room: room, to: destination)
            }
            written += n
            offset += n
            if offset == length {
                release(head)
                head += 1
                offset = 0
            }
        }
        count -= written
        if head == segmentCount {
            // Drained: the storage goes too. A held stream sends one response an hour or so; keeping the buffers of
            // the last one was most of what each of 10,000 idle streams cost.
            overflow = []
            segmentCount = 0
            head = 0
        } else if head >= 16, head > segmentCount / 2 {
            compact()
        }
        return written
    }

    /// Copies up to `room` bytes of `segment` from `start`; returns how many, and the segment's length.
    private static func copy(
        _ segment: [UInt8], from start: Int, room: Int, to destination: UnsafeMutablePointer<UInt8>
    ) -> (copied: Int, length: Int) {
        // Never empty: `append` keeps no empty segment, so the base address exists.
        segment.withUnsafeBufferPointer { source in
            let n = min(room, source.count - start)
            destination.update(from: source.baseAddress! + start, count: n)
            return (n, source.count)
        }
    }

    private func segment(_ index: Int) -> [UInt8] {
        switch index {
        case 0: first
        case 1: second
        case 2: third
        default: overflow[index - 3]
        }
    }

    /// Drops a fully read segment's array (an inline one at once; the overflow's at the next compaction or drain).
    private mutating func release(_ index: Int) {
        switch index {
        case 0: first = []
        case 1: second = []
        case 2: third = []
        default: break
        }
    }

    /// Moves the unread segments to the front (a long queue read from the front for a while).
    private mutating func compact() {
        let unread = (head..<segmentCount).map(segment)
        let (savedOffset, savedCount) = (offset, count)
        self = ByteQueue()
        for segment in unread { append(segment) }
        offset = savedOffset
        count = savedCount
    }
}
