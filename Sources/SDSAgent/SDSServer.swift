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
    private var listener: UnixListener?
    private var connections: [ObjectIdentifier: ServerConnection] = [:]
    private var connectionCounter: UInt64 = 0
    private let h2Configuration: H2Configuration
    private let admission: PeerAdmission
    /// Refused (uid, gid) pairs already logged: a refused peer that reconnects in a loop is logged once, and the set
    /// is bounded so that many identities cannot grow it.
    private var reportedRefusals: Set<UInt64> = []
    public private(set) var refusedPeerCount = 0
    /// Refusals by reason, for `/metrics`.
    var metrics: AgentMetrics?
    let limits: OutboundLimits
    /// What a peer may make the agent hold or do (see `InboundLimits`).
    let inboundLimits: InboundLimits
    private var refusals = RefusalLog()
    /// Stop pulling bytes from nghttp2 while this much is queued in user space for the socket.
    static let writeHighWater = 256 * 1024

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
        let listener = try UnixListener(address: address, mode: mode, loop: loop) { [weak self] fd in
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
        let connection = ServerConnection(
            id: connectionCounter, router: router, configuration: h2Configuration, inboundLimits: inboundLimits,
            server: self, loop: loop)
        connection.grpc.peer = peer.description
        do {
            connection.socket = try Connection(fd: fd, loop: loop, delegate: connection)
        } catch {
            logger.error("accept failed", metadata: ["error": "\(error)"])
            Glibc.close(fd)
            return
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
        connection.prefaceTimer = loop.schedule(after: inboundLimits.prefaceTimeout) { [weak self, weak connection] in
            guard let self, let connection, !connection.grpc.session.prefaceReceived else { return }
            self.refused("no HTTP/2 preface within \(self.inboundLimits.prefaceTimeout) s: closing", metadata: [:])
            connection.close()
            self.closed(connection, reason: "no HTTP/2 preface")
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

    /// The peer stopped taking bytes or made too many wait: closed now, logged once (Envoy reconnects and gets the
    /// current state).
    fileprivate func cutOff(_ connection: ServerConnection, reason: String) {
        metrics?.countRefusal(.limits)
        logger.warning(
            "disconnecting a peer that does not read",
            metadata: [
                "connection": "\(connection.id)", "reason": "\(reason)", "queued_bytes": "\(connection.queuedBytes)",
            ])
        connection.close()
        closed(connection, reason: reason)
    }

    fileprivate func closed(_ connection: ServerConnection, reason: String) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        connection.prefaceTimer?.cancel()
        connection.stopStallWatch()
        connection.grpc.connectionLost()
        // A descriptor is free again: a listener paused on EMFILE may accept now.
        listener?.resume()
        logger.debug("connection closed", metadata: ["connection": "\(connection.id)", "reason": "\(reason)"])
        if connections.isEmpty { onAllConnectionsClosed?() }
    }
}

/// One accepted connection: socket bytes ⇄ nghttp2 session ⇄ gRPC calls.
final class ServerConnection: ConnectionDelegate {
    let id: UInt64
    let grpc: GRPCServerConnection
    var socket: Connection?
    /// Weak: the server may be gone (stopped) while a socket event for this connection is still queued.
    private weak var server: SDSServer?
    private let loop: EventLoop
    private var outputBuffer: [UInt8] = []
    /// Closes the connection if the peer's HTTP/2 preface has not arrived in time (`InboundLimits.prefaceTimeout`).
    var prefaceTimer: EventLoop.Timer?
    /// Bytes handed to the socket since the connection opened; minus what it still queues, what the peer took.
    private var bytesHanded: UInt64 = 0
    private var stallTimer: EventLoop.Timer?
    /// What the peer had taken when the stall timer was armed.
    private var takenAtArming: UInt64 = 0
    /// The session finished; the socket closes once its queue is written (or the drain timeout ends it).
    private var closing = false
    /// Armed while the queue is over `OutboundLimits.maxQueuedBytes`: see `watchOverBudget`.
    private var overBudgetTimer: EventLoop.Timer?
    /// Why 1 s: a peer that reads takes bytes within milliseconds of their arrival; one over the budget that takes
    /// none for a second is not reading, and its queue is held that long at most.
    static let overBudgetGrace: Double = 1

    init(
        id: UInt64, router: GRPCRouter, configuration: H2Configuration, inboundLimits: InboundLimits,
        server: SDSServer, loop: EventLoop
    ) {
        self.id = id
        self.loop = loop
        // Deadlines (`grpc-timeout`) run on the loop's timers; what an expiry writes is flushed right after.
        let flusher = WeakFlusher()
        self.grpc = GRPCServerConnection(
            router: router, configuration: configuration, maxMessageBytes: inboundLimits.maxRequestBytes,
            maxBufferedRequestBytes: inboundLimits.maxBufferedRequestBytesPerConnection,
            scheduler: { seconds, action in
                let timer = loop.schedule(after: seconds) {
                    action()
                    flusher.connection?.flush()
                }
                return { timer.cancel() }
            })
        self.server = server
        flusher.connection = self
    }

    /// Lets the deadline timers reach this connection without keeping it alive.
    private final class WeakFlusher {
        weak var connection: ServerConnection?
    }

    /// Bytes waiting for the peer: HTTP/2 stream queues plus the socket's write queue.
    var queuedBytes: Int { grpc.session.totalQueuedBytes + (socket?.pendingWriteBytes ?? 0) }

    private var bytesTaken: UInt64 { bytesHanded - UInt64(socket?.pendingWriteBytes ?? 0) }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        do {
            try grpc.session.receive(bytes)
        } catch {
            // A protocol violation: nghttp2 queued a GOAWAY; write it, then close.
            flush()
            closeAfterWrites(reason: "protocol error: \(error)")
            return
        }
        flush()
    }

    func connectionDrained(_ connection: Connection) { flush() }

    func connectionClosed(_ connection: Connection, error: SystemError?) {
        server?.closed(self, reason: error.map { "\($0)" } ?? (closing ? "session finished" : "peer closed"))
    }

    /// Moves session output to the socket until the session has nothing more or the socket backs up.
    func flush() {
        guard let socket, !socket.isClosed, !closing else { return }
        while socket.pendingWriteBytes < SDSServer.writeHighWater {
            outputBuffer.removeAll(keepingCapacity: true)
            if grpc.session.takeOutput(into: &outputBuffer, maxBytes: 64 * 1024) == 0 { break }
            bytesHanded += UInt64(outputBuffer.count)
            socket.write(outputBuffer)
        }
        if grpc.session.isClosed {
            closeAfterWrites(reason: "session finished")
            return
        }
        if let server, queuedBytes > server.limits.maxQueuedBytes {
            watchOverBudget(server.limits.maxQueuedBytes)
        }
        watchForStall()
    }

    /// Over the budget, a peer is cut off if it takes no byte within `overBudgetGrace`: one response larger than
    /// the budget (a big trust bundle) to a peer that is reading it must not end the connection, and two flushes a
    /// microsecond apart say nothing about whether the peer reads.
    private func watchOverBudget(_ limit: Int) {
        guard overBudgetTimer == nil else { return }
        let takenAtArming = bytesTaken
        overBudgetTimer = loop.schedule(after: Self.overBudgetGrace) { [weak self] in
            guard let self else { return }
            self.overBudgetTimer = nil
            guard self.socket?.isClosed == false, self.queuedBytes > limit else { return }
            if self.bytesTaken == takenAtArming {
                self.server?.cutOff(self, reason: "more than \(limit) bytes queued and none taken for 1 s")
            } else {
                self.watchOverBudget(limit)
            }
        }
    }

    /// Closes once the socket has written everything (GOAWAY and trailers included); the server forgets the
    /// connection only then, so a drain waits for those bytes.
    private func closeAfterWrites(reason: String) {
        guard let socket, !closing else { return }
        closing = true
        stopStallWatch()
        socket.closeAfterWrites()
        if socket.isClosed { server?.closed(self, reason: reason) }
    }

    /// Arms the stall timer when data starts waiting; it fires after the timeout and cuts the peer off if it took
    /// nothing meanwhile (else it re-arms).
    private func watchForStall() {
        guard stallTimer == nil, queuedBytes > 0, let timeout = server?.limits.writeStallTimeout else { return }
        takenAtArming = bytesTaken
        stallTimer = loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.stallTimer = nil
            guard self.queuedBytes > 0, self.socket?.isClosed == false else { return }
            if self.bytesTaken == self.takenAtArming {
                self.server?.cutOff(self, reason: "took no byte for \(DurationText.format(seconds: timeout))")
            } else {
                self.watchForStall()
            }
        }
    }

    func stopStallWatch() {
        stallTimer?.cancel()
        stallTimer = nil
        overBudgetTimer?.cancel()
        overBudgetTimer = nil
    }

    func close() {
        prefaceTimer?.cancel()
        stopStallWatch()
        socket?.close()
        grpc.connectionLost()
    }
}
