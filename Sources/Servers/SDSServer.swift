import ConnectionDriver
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

/// How much a connection may hold for a peer that does not read, and for how long.
///
/// Responses never pile up per stream (each SDS stream keeps at most one response in the transport and merges later
/// changes into the next one), so what a connection can hold is bounded by its streams; these bounds cut off a peer
/// that makes even that much wait.
public struct OutboundLimits: Sendable, Equatable {
    /// Bytes a connection may have waiting for its peer (HTTP/2 stream queues plus the socket's write queue) while
    /// the peer takes none of them: a peer still reading is never cut for the size of what it asked for.
    /// Why 16 MiB: the largest legitimate burst is one response per stream on a full connection — 128 streams
    /// (our SETTINGS_MAX_CONCURRENT_STREAMS) of a few KiB each — with ample room for large trust bundles.
    public static let defaultMaxQueuedBytes = 16 << 20
    /// Why 30 s: Envoy reads continuously; a peer whose data has waited this long without it taking a byte is
    /// stuck or hostile, and a reconnecting Envoy gets the current state at once.
    public static let defaultWriteStallTimeout: Double = 30

    public var maxQueuedBytes: Int
    /// A peer that takes no byte for this long while data waits for it is disconnected (checked by a timer armed
    /// when data starts waiting: the cut comes between one and two timeouts after the peer's last read).
    public var writeStallTimeout: Double

    public init(
        maxQueuedBytes: Int = OutboundLimits.defaultMaxQueuedBytes,
        writeStallTimeout: Double = OutboundLimits.defaultWriteStallTimeout
    ) {
        self.maxQueuedBytes = maxQueuedBytes
        self.writeStallTimeout = writeStallTimeout
    }
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
    private var listener: Listener?
    private var connections: [ObjectIdentifier: ServerConnection] = [:]
    private var connectionCounter: UInt64 = 0
    private let h2Configuration: H2Configuration
    private let admission: PeerAdmission
    /// Refused (uid, gid) pairs already logged: a refused peer that reconnects in a loop is logged once, and the set
    /// is bounded so that many identities cannot grow it.
    private var reportedRefusals: Set<UInt64> = []
    public private(set) var refusedPeerCount = 0
    /// Refusals by reason, for `/metrics`.
    public var metrics: AgentMetrics?
    let limits: OutboundLimits
    /// What a peer may make the agent hold or do (see `InboundLimits`).
    let inboundLimits: InboundLimits
    private var refusals = RefusalLog()

    public init(
        loop: EventLoop, router: GRPCRouter, logger: Logger, admission: PeerAdmission,
        limits: OutboundLimits = OutboundLimits(), inboundLimits: InboundLimits = InboundLimits()
    ) {
        self.loop = loop
        self.router = router
        self.logger = logger
        self.admission = admission
        self.h2Configuration = inboundLimits.h2Configuration
        self.limits = limits
        self.inboundLimits = inboundLimits
    }

    public var connectionCount: Int { connections.count }
    /// Called when the last connection closes (used by graceful drain).
    public var onAllConnectionsClosed: (() -> Void)?

    /// Binds the socket (mode applied at creation) and starts accepting.
    public func listen(on address: UnixSocketAddress, mode: UInt32) throws(SystemError) {
        let listener = try Listener(unix: address, mode: mode, loop: loop) { [weak self] fd in
            guard let self else {
                Glibc.close(fd)
                return
            }
            self.accept(fd)
        }
        listener.onPause = { [weak self] (error: SystemError) in
            guard let self else { return }
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

    /// The connection cap. At `inboundLimits.maxConnections` a newcomer first makes room: the oldest connection that
    /// never completed the HTTP/2 preface goes, else the oldest one without an open call; only when every connection
    /// holds a call is the newcomer closed at once, before any byte is read or written (the peer sees EOF). So
    /// half-open or idle connections can no longer lock Envoy out; each eviction kind is logged once per interval
    /// with a count.
    private func admitUnderConnectionCap(_ fd: Int32) -> Bool {
        guard connections.count >= inboundLimits.maxConnections else { return true }
        if let (victim, kind) = evictionCandidate() {
            refused(
                "connection limit (\(inboundLimits.maxConnections)) reached: evicted the oldest connection \(kind)",
                metadata: [:])
            victim.close()
            closed(victim, reason: "evicted at the connection limit (\(kind))")
            return true
        }
        Glibc.close(fd)
        refused("connection limit (\(inboundLimits.maxConnections)) reached: closing new connections", metadata: [:])
        return false
    }

    /// The connection to close for a newcomer at the cap, and why, in order: no preface yet, then no open call.
    /// Oldest first (the lowest id): it has had the longest to make progress.
    private func evictionCandidate() -> (ServerConnection, String)? {
        var noPreface: ServerConnection?
        var noCalls: ServerConnection?
        for connection in connections.values {
            if !connection.grpc.session.prefaceReceived {
                if connection.id < noPreface?.id ?? .max { noPreface = connection }
            } else if connection.grpc.activeCallCount == 0 {
                if connection.id < noCalls?.id ?? .max { noCalls = connection }
            }
        }
        if let noPreface { return (noPreface, "without an HTTP/2 preface") }
        if let noCalls { return (noCalls, "without an open call") }
        return nil
    }

    /// Logs a refusal once per cause and interval (see `RefusalLog`), never once per event.
    fileprivate func refused(_ cause: String, metadata: Logger.Metadata) {
        metrics?.countRefusal(.limits)
        guard let entry = refusals.record(cause, now: EventLoop.monotonicSeconds()) else { return }
        var metadata = metadata
        if entry.suppressed > 0 { metadata["unlogged_since_last"] = "\(entry.suppressed)" }
        logger.warning("refused: \(cause)", metadata: metadata)
    }

    private func accept(_ fd: Int32) {
        guard admitUnderConnectionCap(fd) else { return }
        guard let peer = admit(fd) else {
            Glibc.close(fd)
            return
        }
        connectionCounter += 1
        let id = connectionCounter
        let flusher = WeakDriver()
        let grpc = GRPCServerConnection(
            router: router, configuration: h2Configuration, maxMessageBytes: inboundLimits.maxRequestBytes,
            maxBufferedRequestBytes: inboundLimits.maxBufferedRequestBytesPerConnection,
            scheduler: { [loop] seconds, action in
                // Deadlines (`grpc-timeout`) run on the loop's timers; what an expiry writes is flushed right after.
                let timer = loop.schedule(after: seconds) {
                    action()
                    flusher.driver?.flush()
                }
                return { timer.cancel() }
            })
        grpc.peer = peer.description
        grpc.onFlushRequested = { flusher.driver?.flush() }
        let driver: H2ConnectionDriver
        do {
            driver = try H2ConnectionDriver.onSocket(fd, loop: loop, session: grpc.session, limits: driverLimits)
        } catch {
            logger.error("accept failed", metadata: ["error": "\(error)"])
            return
        }
        let connection = ServerConnection(id: id, grpc: grpc, driver: driver)
        flusher.driver = driver
        driver.afterClosed = { [weak grpc] in grpc?.connectionLost() }
        driver.onClosed = { [weak self, weak connection] loss in
            guard let self, let connection else { return }
            self.ended(connection, loss)
        }
        connections[ObjectIdentifier(connection)] = connection
        // Debug, like the close: an exec probe (`sds-agent healthcheck`) opens a connection every period, and the
        // connections gauge (`/metrics`) is what tracks them; refusals and cut-offs stay at warning.
        logger.debug(
            "connection opened",
            metadata: [
                "connection": "\(connection.id)", "peer_pid": "\(peer.pid)", "peer_uid": "\(peer.uid)",
                "peer_gid": "\(peer.gid)",
            ])
        connection.grpc.onLimitExceeded = { [weak self] limit in
            self?.refused("HTTP/2 \(limit.rawValue) limit crossed: stream refused", metadata: [:])
        }
        connection.grpc.onBufferBudgetExceeded = { [weak self] in
            guard let self else { return }
            let budget = self.inboundLimits.maxBufferedRequestBytesPerConnection
            self.refused("partial requests on one connection past \(budget) bytes: stream ended", metadata: [:])
        }
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
        metrics?.countRefusal(.peer)
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

    /// The driver's limits for a server connection: the operator's outbound limits and the preface timeout.
    private var driverLimits: H2ConnectionDriver.Limits {
        H2ConnectionDriver.Limits(
            maxQueuedBytes: limits.maxQueuedBytes, writeStallTimeout: limits.writeStallTimeout,
            prefaceTimeout: inboundLimits.prefaceTimeout)
    }

    /// The driver ended a connection: peer gone, protocol error, session finished, or a rule cut it off.
    private func ended(_ connection: ServerConnection, _ loss: ConnectionLoss) {
        switch loss {
        case .noPreface(let seconds):
            refused("no HTTP/2 preface within \(seconds) s: closing", metadata: [:])
        case .writeStalled, .overBudget:
            // The peer stopped taking bytes or made too many wait: logged once per connection (Envoy reconnects
            // and gets the current state).
            metrics?.countRefusal(.limits)
            logger.warning(
                "disconnecting a peer that does not read",
                metadata: [
                    "connection": "\(connection.id)", "reason": "\(loss)",
                    "queued_bytes": "\(connection.queuedBytes)",
                ])
        default:
            break
        }
        closed(connection, reason: "\(loss)")
    }

    fileprivate func closed(_ connection: ServerConnection, reason: String) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        // A descriptor is free again: a listener paused on EMFILE may accept now.
        listener?.resume()
        logger.debug("connection closed", metadata: ["connection": "\(connection.id)", "reason": "\(reason)"])
        if connections.isEmpty { onAllConnectionsClosed?() }
    }
}

/// Lets the deadline timers reach a connection's driver without keeping it alive.
private final class WeakDriver {
    weak var driver: H2ConnectionDriver?
}

final class ServerConnection {
    let id: UInt64
    let grpc: GRPCServerConnection
    let driver: H2ConnectionDriver

    init(id: UInt64, grpc: GRPCServerConnection, driver: H2ConnectionDriver) {
        self.id = id
        self.grpc = grpc
        self.driver = driver
    }

    var queuedBytes: Int { driver.queuedBytes }

    func flush() { driver.flush() }

    /// Closes now (eviction, shutdown): no `onClosed`, the server does its own bookkeeping.
    func close() { driver.close() }
}
