import GRPC
import Glibc
import H2
import Logging
import Transport

/// Which peers may use the socket, by the kernel's record of who connected (`SO_PEERCRED`): a peer is admitted
/// when its user ID is in `uids` or its group ID is in `gids`. The socket's file mode decides who can connect at
/// all; this decides who is served, so a mode opened to a group (0660) does not open it to every member's process.
public struct PeerAdmission: Sendable, Equatable {
    public var uids: Set<UInt32>
    public var gids: Set<UInt32>

    public init(uids: Set<UInt32>, gids: Set<UInt32> = []) {
        self.uids = uids
        self.gids = gids
    }

    public func admits(_ peer: PeerCredentials) -> Bool { uids.contains(peer.uid) || gids.contains(peer.gid) }
}

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
    private let admission: PeerAdmission
    /// Refused (uid, gid) pairs already logged: a refused peer that reconnects in a loop is logged once, and the set
    /// is bounded so that many identities cannot grow it.
    private var reportedRefusals: Set<UInt64> = []
    public private(set) var refusedPeerCount = 0
    /// Stop pulling bytes from nghttp2 while this much is queued in user space for the socket.
    static let writeHighWater = 256 * 1024

    public init(
        loop: EventLoop, router: GRPCRouter, logger: Logger, admission: PeerAdmission,
        h2Configuration: H2Configuration = H2Configuration()
    ) {
        self.loop = loop
        self.router = router
        self.logger = logger
        self.admission = admission
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
        guard let peer = admit(fd) else {
            Glibc.close(fd)
            return
        }
        connectionCounter += 1
        let connection = ServerConnection(
            id: connectionCounter, router: router, configuration: h2Configuration, server: self)
        connection.grpc.peer = peer.description
        do {
            connection.socket = try Connection(fd: fd, loop: loop, delegate: connection)
        } catch {
            logger.error("accept failed", metadata: ["error": "\(error)"])
            Glibc.close(fd)
            return
        }
        connections[ObjectIdentifier(connection)] = connection
        logger.info(
            "connection opened",
            metadata: [
                "connection": "\(connection.id)", "peer_pid": "\(peer.pid)", "peer_uid": "\(peer.uid)",
                "peer_gid": "\(peer.gid)",
            ])
        connection.flush()  // the server preface, now
    }

    /// The peer's credentials when it may be served; nil (logged once per uid/gid) when it may not. Checked before a
    /// byte is read: a refused peer never reaches HTTP/2 or gRPC.
    private func admit(_ fd: Int32) -> PeerCredentials? {
        let peer: PeerCredentials
        do { peer = try PeerCredentials(socket: fd) } catch {
            logger.error("connection refused: cannot read peer credentials", metadata: ["error": "\(error)"])
            return nil
        }
        if admission.admits(peer) { return peer }
        refusedPeerCount += 1
        let key = UInt64(peer.uid) << 32 | UInt64(peer.gid)
        if reportedRefusals.count < Self.maxReportedRefusals, reportedRefusals.insert(key).inserted {
            logger.warning(
                "connection refused: peer not allowed (--allow-uid/--allow-gid)",
                metadata: ["peer_pid": "\(peer.pid)", "peer_uid": "\(peer.uid)", "peer_gid": "\(peer.gid)"])
        }
        return nil
    }

    /// Distinct refused identities logged; beyond, refusals are only counted (`refusedPeerCount`).
    static let maxReportedRefusals = 256

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
