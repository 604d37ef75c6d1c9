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
    let limits: InboundLimits
    private var refusals = RefusalLog()
    /// Stop pulling bytes from nghttp2 while this much is queued in user space for the socket.
    static let writeHighWater = 256 * 1024

    public init(loop: EventLoop, router: GRPCRouter, logger: Logger, limits: InboundLimits = InboundLimits()) {
        self.loop = loop
        self.router = router
        self.logger = logger
        self.limits = limits
        self.h2Configuration = limits.h2Configuration
    }

    public var connectionCount: Int { connections.count }
    /// Called when the last connection closes (used by graceful drain).
    public var onAllConnectionsClosed: (() -> Void)?

    /// Binds the socket (mode applied at creation) and starts accepting.
    public func listen(on address: UnixSocketAddress, mode: UInt32) throws(SystemError) {
        let listener = try UnixListener(address: address, mode: mode, loop: loop) { [unowned self] fd in
            self.accept(fd)
        }
        listener.onPause = { [unowned self] error in
            self.refused("accept paused: \(error)", metadata: ["connections": "\(self.connections.count)"])
        }
        self.listener = listener
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

    /// The connection cap: past `limits.maxConnections` a new connection is closed at once, before any byte is
    /// read or written (the peer sees EOF), so a flood of connections costs one accept and close each.
    private func admit(_ fd: Int32) -> Bool {
        guard connections.count < limits.maxConnections else {
            Glibc.close(fd)
            refused("connection limit (\(limits.maxConnections)) reached: closing new connections", metadata: [:])
            return false
        }
        return true
    }

    /// Logs a refusal once per cause and interval (see `RefusalLog`), never once per event.
    fileprivate func refused(_ cause: String, metadata: Logger.Metadata) {
        guard let entry = refusals.record(cause, now: EventLoop.monotonicSeconds()) else { return }
        var metadata = metadata
        if entry.suppressed > 0 { metadata["unlogged_since_last"] = "\(entry.suppressed)" }
        logger.warning("refused: \(cause)", metadata: metadata)
    }

    private func accept(_ fd: Int32) {
        guard admit(fd) else { return }
        connectionCounter += 1
        let connection = ServerConnection(
            id: connectionCounter, router: router, configuration: h2Configuration,
            limits: limits, server: self)
        do {
            connection.socket = try Connection(fd: fd, loop: loop, delegate: connection)
        } catch {
            logger.error("accept failed", metadata: ["error": "\(error)"])
            Glibc.close(fd)
            return
        }
        connections[ObjectIdentifier(connection)] = connection
        logger.info("connection opened", metadata: ["connection": "\(connection.id)"])
        connection.grpc.onLimitExceeded = { [unowned self] limit in
            self.refused("HTTP/2 \(limit.rawValue) limit crossed: stream refused", metadata: [:])
        }
        connection.grpc.onBufferBudgetExceeded = { [unowned self] in
            let budget = self.limits.maxBufferedRequestBytesPerConnection
            self.refused("partial requests on one connection past \(budget) bytes: stream ended", metadata: [:])
        }
        connection.prefaceTimer = loop.schedule(after: limits.prefaceTimeout) { [weak self, weak connection] in
            guard let self, let connection, !connection.grpc.session.prefaceReceived else { return }
            self.refused("no HTTP/2 preface within \(self.limits.prefaceTimeout) s: closing", metadata: [:])
            connection.close()
            self.closed(connection, reason: "no HTTP/2 preface")
        }
        connection.flush()  // the server preface, now
    }

    fileprivate func closed(_ connection: ServerConnection, reason: String) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        connection.prefaceTimer?.cancel()
        connection.grpc.connectionLost()
        // A descriptor is free again: a listener paused on EMFILE may accept now.
        listener?.resume()
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
    /// Closes the connection if the peer's HTTP/2 preface has not arrived in time (`InboundLimits.prefaceTimeout`).
    var prefaceTimer: EventLoop.Timer?

    init(id: UInt64, router: GRPCRouter, configuration: H2Configuration, limits: InboundLimits, server: SDSServer) {
        self.id = id
        self.grpc = GRPCServerConnection(
            router: router, configuration: configuration, maxMessageBytes: limits.maxRequestBytes,
            maxBufferedRequestBytes: limits.maxBufferedRequestBytesPerConnection)
        self.server = server
    }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        do {
            try grpc.session.receive(bytes)
        } catch {
            // A protocol violation or a crossed bound: a GOAWAY is queued; write it and close. Recorded first, so
            // the log gives this reason rather than flush's "session finished".
            server.closed(self, reason: "protocol error: \(error)")
            flush()
            socket?.closeAfterWrites()
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
        prefaceTimer?.cancel()
        socket?.close()
        grpc.connectionLost()
    }
}
