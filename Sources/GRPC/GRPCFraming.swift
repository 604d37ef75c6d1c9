/// gRPC's length-prefixed message framing: 1 byte compressed flag, 4 bytes big-endian length, the message.
public enum GRPCMessageFraming {
    public static let prefixLength = 5
    /// The default bound on one message (grpc's default receive limit).
    public static let defaultMaxMessageBytes = 4 << 20

    /// The prefix of an uncompressed message of `length` bytes (sent before the message's own bytes, which are then
    /// queued without a copy). A length past 4 GiB cannot be queued anywhere here: the per-stream bound is far lower.
    public static func prefix(length: Int) -> [UInt8] {
        let length = UInt32(truncatingIfNeeded: length)
        return [
            0, UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
            UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
        ]
    }

    /// The last prefix made, handed out again for the next message of the same length: a push (or the load client's
    /// ACKs) sends one length on every stream of a connection, so one 5-byte array serves them all.
    struct Cache {
        private var last: (length: Int, bytes: [UInt8])?

        mutating func prefix(length: Int) -> [UInt8] {
            if let last, last.length == length { return last.bytes }
            let bytes = GRPCMessageFraming.prefix(length: length)
            last = (length, bytes)
            return bytes
        }
    }

    /// Frames one uncompressed message (prefix and message in one array).
    public static func frame(_ message: [UInt8]) -> [UInt8] {
        prefix(length: message.count) + message
    }
}

/// A streaming decoder of length-prefixed messages, fed arbitrary chunks (down to single bytes).
///
/// It holds at most one message, and only the bytes of it that have arrived (never reserved from the announced
/// length): a prefix announcing more than `maxMessageBytes` fails at once with RESOURCE_EXHAUSTED, before any of
/// the body is buffered; a compressed message fails with UNIMPLEMENTED
/// (we never advertise `grpc-accept-encoding`, so a peer sending one is broken). After a failure the
/// decoder stays failed.
///
/// ```
///   ┌────────────┐ 5 bytes  ┌───────────┐ length bytes ┌──────────┐
///   │ readPrefix │─────────►│ readBody  │─────────────►│ message  │──► back to readPrefix
///   └────────────┘          └───────────┘              └──────────┘
///         │ flag=1 / length > max
///         ▼
///      failed(status)
/// ```
public struct GRPCMessageDecoder: Sendable {
    enum State: Sendable {
        case readPrefix(prefix: [UInt8])
        case readBody(length: Int, body: [UInt8])
        case failed(GRPCStatus)
    }

    public let maxMessageBytes: Int
    private var state: State = .readPrefix(prefix: [])

    public init(maxMessageBytes: Int = GRPCMessageFraming.defaultMaxMessageBytes) {
        self.maxMessageBytes = maxMessageBytes
    }

    /// Bytes of the partial message (prefix or body) held right now.
    public var bufferedBytes: Int {
        switch state {
        case .readPrefix(let prefix): prefix.count
        case .readBody(_, let body): body.count
        case .failed: 0
        }
    }

    /// Bytes allocated for the partial message (capacity, not count): what the decoder really holds in memory.
    public var bufferCapacity: Int {
        switch state {
        case .readPrefix(let prefix): prefix.capacity
        case .readBody(_, let body): body.capacity
        case .failed: 0
        }
    }

    /// True when no partial message is buffered (a stream may end cleanly here).
    public var isAtMessageBoundary: Bool {
        if case .readPrefix(let prefix) = state { return prefix.isEmpty }
        return false
    }

    /// Fails the decoder with `status` (a bound decided outside it): what it held is released, and every later
    /// `feed` throws `status`.
    public mutating func fail(_ status: GRPCStatus) {
        state = .failed(status)
    }

    /// Fails the decoder (and throws) on a compressed or unknown flag, or a length past `maxMessageBytes`.
    private mutating func checkPrefix(flag: UInt8, length: Int) throws(GRPCStatus) {
        if flag != 0 {
            let status = GRPCStatus(
                flag == 1 ? .unimplemented : .internal,
                flag == 1 ? "compressed messages not supported" : "invalid message flag \(flag)")
            state = .failed(status)
            throw status
        }
        if length > maxMessageBytes {
            let status = GRPCStatus(
                .resourceExhausted, "message of \(length) bytes exceeds the limit of \(maxMessageBytes)")
            state = .failed(status)
            throw status
        }
    }

    /// Consumes `bytes`, returning every message they complete.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(GRPCStatus) -> GRPCDecodedMessages {
        var messages = GRPCDecodedMessages()
        var index = bytes.startIndex
        while true {
            switch state {
            case .failed(let status):
                throw status
            case .readPrefix(var prefix):
                guard index != bytes.endIndex else { return messages }
                if prefix.isEmpty, bytes.distance(from: index, to: bytes.endIndex) >= GRPCMessageFraming.prefixLength {
                    // The usual case (a message arriving in one DATA frame): the prefix is read in place and a body
                    // that is all here is taken in one copy, with nothing buffered in between.
                    var cursor = index
                    var header: (UInt8, Int) = (bytes[cursor], 0)
                    for _ in 0..<4 {
                        cursor = bytes.index(after: cursor)
                        header.1 = header.1 << 8 | Int(bytes[cursor])
                    }
                    index = bytes.index(after: cursor)
                    try checkPrefix(flag: header.0, length: header.1)
                    let length = header.1
                    if bytes.distance(from: index, to: bytes.endIndex) >= length {
                        let end = bytes.index(index, offsetBy: length)
                        messages.append(Array(bytes[index..<end]))
                        index = end
                    } else {
                        state = .readBody(length: length, body: [])
                    }
                    continue
                }
                let take = min(
                    GRPCMessageFraming.prefixLength - prefix.count, bytes.distance(from: index, to: bytes.endIndex))
                let end = bytes.index(index, offsetBy: take)
                prefix.append(contentsOf: bytes[index..<end])
                index = end
                if prefix.count < GRPCMessageFraming.prefixLength {
                    state = .readPrefix(prefix: prefix)
                    return messages
                }
                let length = Int(prefix[1]) << 24 | Int(prefix[2]) << 16 | Int(prefix[3]) << 8 | Int(prefix[4])
                try checkPrefix(flag: prefix[0], length: length)
                if length == 0 {
                    messages.append([])
                    state = .readPrefix(prefix: [])
                } else {
                    // Nothing reserved from the announced length: the buffer grows with the bytes that arrive, so a
                    // prefix promising 4 MiB followed by silence costs its five bytes, not 4 MiB.
                    state = .readBody(length: length, body: [])
                }
            case .readBody(let length, var body):
                guard index != bytes.endIndex else { return messages }
                // Release the copy held by `state` so appending does not copy the whole body.
                state = .readPrefix(prefix: [])
                let take = min(length - body.count, bytes.distance(from: index, to: bytes.endIndex))
                let end = bytes.index(index, offsetBy: take)
                if body.capacity < body.count + take {
                    // Geometric growth for amortised appends, but never past the announced length: the buffer is
                    // at most twice what arrived and at most the message.
                    body.reserveCapacity(min(length, max(body.count + take, 2 * body.capacity)))
                }
                body.append(contentsOf: bytes[index..<end])
                index = end
                if body.count == length {
                    messages.append(body)
                    state = .readPrefix(prefix: [])
                } else {
                    state = .readBody(length: length, body: body)
                }
            }
        }
    }
}

/// The messages one `GRPCMessageDecoder.feed` completed, in order. The first is held inline: nearly every DATA frame
/// completes exactly one message, and a list of them cost an allocation per message (~370 instructions with its
/// release) on both ends of every SDS response and ACK.
public struct GRPCDecodedMessages: Sequence, Sendable {
    private var first: [UInt8]?
    private var rest: [[UInt8]] = []

    init() {}

    mutating func append(_ message: [UInt8]) {
        if first == nil { first = message } else { rest.append(message) }
    }

    public var count: Int { first == nil ? 0 : 1 + rest.count }
    public var isEmpty: Bool { first == nil }

    public struct Iterator: IteratorProtocol {
        fileprivate var first: [UInt8]?
        fileprivate var rest: [[UInt8]]
        fileprivate var index = 0

        public mutating func next() -> [UInt8]? {
            if let message = first {
                first = nil
                return message
            }
            guard index < rest.count else { return nil }
            defer { index += 1 }
            return rest[index]
        }
    }

    public func makeIterator() -> Iterator { Iterator(first: first, rest: rest) }
}
