/// Nonces for one stream's responses: `prefix` followed by a counter in decimal.
///
/// A client echoes the nonce of the response it is answering, and a stream only compares it with the last nonce
/// it sent, so uniqueness within a stream is all the protocol needs. The service may pass a per-stream prefix
/// (e.g. a stream number) so nonces are also unique in logs across streams.
public struct NonceSequence: Sendable, Equatable {
    public let prefix: String
    private var counter: UInt64

    public init(prefix: String = "", start: UInt64 = 1) {
        self.prefix = prefix
        self.counter = start
    }

    /// The next nonce; never empty, since an empty `response_nonce` means "no response seen yet".
    public mutating func next() -> String {
        defer { counter &+= 1 }
        // Written digit by digit into the string's own storage: `prefix + String(counter)` goes through the generic
        // `description` and an append, ~300 instructions of every push's ~6,800 per stream.
        var value = counter
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var first = digits.count  // UInt64.max has 20 digits
            repeat {
                first -= 1
                digits[first] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value % 10)
                value /= 10
            } while value != 0
            let prefixBytes = prefix.utf8
            return String(unsafeUninitializedCapacity: prefixBytes.count + digits.count - first) { out in
                var end = out.initialize(fromContentsOf: prefixBytes)
                for index in first..<digits.count {
                    out[end] = digits[index]
                    end += 1
                }
                return end
            }
        }
    }
}
