public import H2

/// Pumps bytes between an `H2ClientSession` and an `H2ServerSession` in memory, standing in for a socket pair.
/// Can feed one byte at a time, stop the client from reading (to build backpressure), and inject faults.
public final class InMemoryPair {
    /// How bytes are handed to the receiving session.
    public enum FeedMode: Sendable, Equatable {
        case whole
        /// One `receive` call per byte: exercises every parser boundary.
        case byteByByte
        case chunks(of: Int)
    }

    /// A fault on the client→server direction, applied at a byte offset of that stream.
    public enum Fault: Sendable, Equatable {
        /// Everything from this offset on is lost (a dead link).
        case drop(fromOffset: Int)
        /// The byte at this offset is XOR-ed with 0xFF.
        case corrupt(atOffset: Int)
    }

    public let client: H2ClientSession
    public let server: H2ServerSession
    public var feedMode: FeedMode
    public var clientToServerFault: Fault?
    /// When false, server output piles up in `pendingToClient` unread, like a client that stopped reading.
    public var clientReads = true

    public private(set) var pendingToClient: [UInt8] = []
    public private(set) var bytesClientToServer = 0
    public private(set) var bytesServerToClient = 0
    /// The first error each side's `receive` raised; pumping into that side stops then.
    public private(set) var serverReceiveError: H2Error?
    public private(set) var clientReceiveError: H2Error?

    public init(client: H2ClientSession, server: H2ServerSession, feedMode: FeedMode = .whole) {
        self.client = client
        self.server = server
        self.feedMode = feedMode
    }

    /// Moves bytes both ways until neither side has anything to send (or `maxRounds` passes).
    /// Returns the number of rounds that moved bytes.
    @discardableResult
    public func pump(maxRounds: Int = 10_000) -> Int {
        var rounds = 0
        while rounds < maxRounds {
            var moved = false
            let toServer = client.takeOutput()
            if !toServer.isEmpty {
                moved = true
                var bytes = toServer
                let offset = bytesClientToServer
                bytesClientToServer += bytes.count
                bytes = apply(clientToServerFault, to: bytes, startingAt: offset)
                if serverReceiveError == nil {
                    serverReceiveError = feed(bytes) { chunk throws(H2Error) in try server.receive(chunk) }
                }
            }
            let toClient = server.takeOutput()
            if !toClient.isEmpty {
                moved = true
                bytesServerToClient += toClient.count
                pendingToClient += toClient
            }
            if clientReads, !pendingToClient.isEmpty {
                moved = true
                let bytes = pendingToClient
                pendingToClient = []
                if clientReceiveError == nil {
                    clientReceiveError = feed(bytes) { chunk throws(H2Error) in try client.receive(chunk) }
                }
            }
            if !moved { break }
            rounds += 1
        }
        return rounds
    }

    private func feed(_ bytes: [UInt8], into receive: ([UInt8]) throws(H2Error) -> Void) -> H2Error? {
        let step: Int
        switch feedMode {
        case .whole: step = max(bytes.count, 1)
        case .byteByByte: step = 1
        case .chunks(let size): step = max(size, 1)
        }
        var start = 0
        while start < bytes.count {
            let end = min(start + step, bytes.count)
            do throws(H2Error) {
                try receive(Array(bytes[start..<end]))
            } catch {
                return error
            }
            start = end
        }
        return nil
    }

    private func apply(_ fault: Fault?, to bytes: [UInt8], startingAt offset: Int) -> [UInt8] {
        switch fault {
        case nil:
            return bytes
        case .drop(let from):
            return from <= offset ? [] : Array(bytes.prefix(from - offset))
        case .corrupt(let at):
            guard at >= offset, at < offset + bytes.count else { return bytes }
            var copy = bytes
            copy[at - offset] ^= 0xFF
            return copy
        }
    }
}
