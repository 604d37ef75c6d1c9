import GRPC
import Glibc
import H2
import Logging
import Transport

/// The socket side of the agent: accepts Unix-socket connections and runs one HTTP/2 + gRPC session per
/// connection on the event loop.
///
/// The HTTP/2 server preface (SETTINGS) is written the moment a connection is accepted, before any secret exists,
/// because istio's pilot-agent deletes a socket whose gRPC dial does not complete within 1 s.
public final class SDSServer {
    private let loop: EventLoop
    private let router: GRPCRouter
    private let logger: Logger
    private var listener: UnixListener?
    private var connections: [ObjectIdentifier: ServerConnection] = [:]
    private var connectionCounter: UInt64 = 0
    private let h2Configuration: H2Configuration
    /// Stop pulling bytes from nghttp2 while this much is queued in user space for the socket.
    static let writeHighWater = 256 * 1024

    public init(
        loop: EventLoop, router: GRPCRouter, logger: Logger, h2Configuration: H2Configuration = H2Configuration()
    ) {
        self.loop = loop
        self.router = router
        self.logger = logger
        self.h2Configuration = h2Configuration
    }

    public var connectionCount: Int { connections.count }
    /// Called when the last connection closes (used by graceful drain).
    public var onAllConnectionsClosed: (() -> Void)?

    /// Binds the socket (mode applied at creation) and starts accepting.
    public func listen(on address: UnixSocketAddress, mode: UInt32) throws(SystemError) {
        listener = try UnixListener(address: address, mode: mode, loop: loop) { [unowned self] fd in self.accept(fd) }
    }

    /// Stops accepting and removes the socket file.
    public func stopListening() {
        listener?.close()
        listener = nil
    }

    /// Sends GOAWAY on every connection and flushes; connections close once their calls have finished and their
    /// bytes are written.
    public func beginDrain() {
        for connection in connections.values {
            connection.grpc.beginDrain()
            connection.flush()
        }
    }

    /// Writes whatever the sessions produced (after pushes made outside a read callback).
    public func flushAll() {
        for connection in connections.values { connection.flush() }
    }

    /// Closes every connection now.
    public func closeAll() {
        for connection in connections.values { connection.close() }
        connections.removeAll()
    }

    private func accept(_ fd: Int32) {
        connectionCounter += 1
        let connection = ServerConnection(
            id: connectionCounter, router: router, configuration: h2Configuration, server: self)
        do {
            connection.socket = try Connection(fd: fd, loop: loop, delegate: connection)
        } catch {
            logger.error("accept failed", metadata: ["error": "\(error)"])
            Glibc.close(fd)
            return
        }
        connections[ObjectIdentifier(connection)] = connection
        logger.info("connection opened", metadata: ["connection": "\(connection.id)"])
        connection.flush()  // the server preface, now
    }

    fileprivate func closed(_ connection: ServerConnection, reason: String) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        connection.grpc.connectionLost()
        logger.info("connection closed", metadata: ["connection": "\(connection.id)", "reason": "\(reason)"])
        if connections.isEmpty { onAllConnectionsClosed?() }
    }
}

/// One accepted connection: socket bytes ⇄ nghttp2 session ⇄ gRPC calls.
final class ServerConnection: ConnectionDelegate {
    let id: UInt64
    let grpc: GRPCServerConnection
    var socket: Connection?
    private unowned let server: SDSServer
    private var outputBuffer: [UInt8] = []

    init(id: UInt64, router: GRPCRouter, configuration: H2Configuration, server: SDSServer) {
        self.id = id
        self.grpc = GRPCServerConnection(router: router, configuration: configuration)
        self.server = server
    }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        do {
            try grpc.session.receive(bytes)
        } catch {
            // A protocol violation: nghttp2 queued a GOAWAY; write it and close.
            flush()
            socket?.closeAfterWrites()
            server.closed(self, reason: "protocol error: \(error)")
            return
        }
        flush()
    }

    func connectionDrained(_ connection: Connection) { flush() }

    func connectionClosed(_ connection: Connection, error: SystemError?) {
        server.closed(self, reason: error.map { "\($0)" } ?? "peer closed")
    }

    /// Moves session output to the socket until the session has nothing more or the socket backs up.
    func flush() {
        guard let socket, !socket.isClosed else { return }
        while socket.pendingWriteBytes < SDSServer.writeHighWater {
            outputBuffer.removeAll(keepingCapacity: true)
            if grpc.session.takeOutput(into: &outputBuffer, maxBytes: 64 * 1024) == 0 { break }
            socket.write(outputBuffer)
        }
        if grpc.session.isClosed {
            socket.closeAfterWrites()
            server.closed(self, reason: "session finished")
        }
    }

    func close() {
        socket?.close()
        grpc.connectionLost()
    }
}
