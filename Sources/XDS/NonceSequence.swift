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
        return prefix + String(counter)
    }
}
