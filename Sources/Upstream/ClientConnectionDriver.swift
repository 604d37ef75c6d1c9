public import GRPC
import Glibc
import H2
public import PKI
public import Transport

/// Why a client connection ended.
public enum ClientConnectionLoss: Sendable, CustomStringConvertible {
    /// The server closed the socket (EOF, or a reset).
    case closedByPeer
    /// A socket error other than a reset.
    case socket(SystemError)
    /// The TLS layer failed (verification, protocol) or the server ended the TLS session.
    case tls(String)
    /// The server broke HTTP/2.
    case http2(String)
    /// The HTTP/2 session ended (both sides are done, or GOAWAY with nothing left).
    case sessionEnded

    public var description: String {
        switch self {
        case .closedByPeer: "the server closed the connection"
        case .socket(let error): "\(error)"
        case .tls(let reason): "TLS: \(reason)"
        case .http2(let reason): "HTTP/2 error: \(reason)"
        case .sessionEnded: "the HTTP/2 session ended"
        }
    }
}

/// The one pump for an HTTP/2 client connection: socket bytes ⇄ (TLS, when given) ⇄ nghttp2 client session, for
/// every upstream peer (plaintext over a Unix socket for the Workload API, TLS over TCP for istiod).
///
///     socket ──read──► [TLSClient.receive] ──plaintext──► H2 session.receive ──► gRPC calls' callbacks
///     socket ◄─write── [TLSClient.takeCiphertext] ◄─────── H2 session.takeOutput ◄── calls' sends
///
/// Output is pulled from nghttp2 only while the socket's queue is below `writeHighWater` (pull-style
/// backpressure); the rest is pulled when the socket drains. `onLost` runs at most once, on the loop, when the
/// socket closes, TLS fails or the HTTP/2 session ends; never after `close()`.
public final class ClientConnectionDriver: ConnectionDelegate {
    public let grpc: GRPCClientConnection
    private let tls: TLSClient?
    private var socket: Connection?
    private var closed = false
    /// Why 256 KiB: two HTTP/2 windows' worth; more only holds memory the kernel should be holding.
    static let writeHighWater = 256 * 1024
    /// Why 64 KiB per pull: one read buffer's worth; larger pulls only grow the temporary array.
    static let outputChunk = 64 * 1024
    private var outputBuffer: [UInt8] = []

    /// Why the connection was lost (socket error, TLS failure, HTTP/2 protocol error or end of session).
    public var onLost: ((ClientConnectionLoss) -> Void)?

    /// Takes ownership of the connected, non-blocking `fd` (closed on failure too).
    public init(fd: Int32, loop: EventLoop, tls: TLSClient?, grpc: GRPCClientConnection) throws(SystemError) {
        self.grpc = grpc
        self.tls = tls
        do {
            self.socket = try Connection(fd: fd, loop: loop, delegate: nil)
        } catch {
            Glibc.close(fd)
            throw error
        }
        socket?.delegate = self
    }

    /// Whether the connection is over (lost or closed).
    public var isClosed: Bool { closed }

    /// Whether TLS (if any) has completed its handshake: the server is verified.
    public var isSecured: Bool { tls?.isEstablished ?? true }

    public func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        guard !closed else { return }
        if let tls {
            let plaintext = tls.receive(bytes)
            if case .failed(let reason) = tls.state {
                // Send the alert, so the server logs why, then give up.
                let alert = tls.takeCiphertext()
                if !alert.isEmpty { socket?.write(alert) }
                lost(.tls(reason))
                return
            }
            if !plaintext.isEmpty {
                guard feedSession(plaintext) else { return }
            }
            if case .closed = tls.state {
                lost(.tls("the server closed the TLS session"))
                return
            }
        } else {
            do {
                try grpc.session.receive(bytes)
            } catch {
                lostAfterFlush(.http2("\(error)"))
                return
            }
        }
        flush()
    }

    private func feedSession(_ plaintext: [UInt8]) -> Bool {
        do throws(H2Error) {
            try grpc.session.receive(plaintext)
        } catch {
            lostAfterFlush(.http2("\(error)"))
            return false
        }
        return true
    }

    public func connectionDrained(_ connection: Connection) { flush() }

    public func connectionClosed(_ connection: Connection, error: SystemError?) {
        lost(error.map { .socket($0) } ?? .closedByPeer)
    }

    /// Moves session output (through TLS) to the socket until the session has nothing more or the socket backs up.
    public func flush() {
        guard !closed, let socket, !socket.isClosed else { return }
        while socket.pendingWriteBytes < Self.writeHighWater {
            outputBuffer.removeAll(keepingCapacity: true)
            if grpc.session.takeOutput(into: &outputBuffer, maxBytes: Self.outputChunk) == 0 { break }
            if let tls { tls.send(outputBuffer) } else { socket.write(outputBuffer) }
            if let tls {
                let ciphertext = tls.takeCiphertext()
                if !ciphertext.isEmpty { socket.write(ciphertext) }
            }
        }
        if let tls {
            // Handshake messages are produced without any session output.
            let ciphertext = tls.takeCiphertext()
            if !ciphertext.isEmpty { socket.write(ciphertext) }
        }
        if grpc.session.isClosed { lost(.sessionEnded) }
    }

    /// After a protocol error nghttp2 has queued a GOAWAY naming it: send that first, so the server learns why.
    private func lostAfterFlush(_ reason: ClientConnectionLoss) {
        if let socket, !socket.isClosed {
            outputBuffer.removeAll(keepingCapacity: true)
            if grpc.session.takeOutput(into: &outputBuffer, maxBytes: Self.outputChunk) > 0 {
                if let tls {
                    tls.send(outputBuffer)
                    socket.write(tls.takeCiphertext())
                } else {
                    socket.write(outputBuffer)
                }
            }
        }
        lost(reason)
    }

    private func lost(_ reason: ClientConnectionLoss) {
        guard !closed else { return }
        // The owner hears the real reason first; closing then finishes the calls ("connection lost"), which an
        // owner that already gave up ignores.
        let onLost = self.onLost
        self.onLost = nil
        onLost?(reason)
        close()
    }

    /// Closes the socket (a TLS close_notify is attempted first); no callback runs afterwards.
    public func close() {
        guard !closed else { return }
        closed = true
        onLost = nil
        if let tls, tls.isEstablished {
            tls.close()
            let notify = tls.takeCiphertext()
            if !notify.isEmpty { socket?.write(notify) }
        }
        socket?.close()
        grpc.connectionLost()
    }
}
