import Glibc
import HTTP1
import Logging
import Transport

/// The bounds of the HTTP status listener. Probes and scrapers send one small request and read one answer; these
/// bounds keep a hostile or stuck client from holding more than a few kilobytes or a descriptor for long.
public struct StatusLimits: Sendable, Equatable {
    /// Why 16: a pod has a kubelet, a Prometheus or two and an operator's curl; each holds at most one request head
    /// (8 KiB). Connections past the cap are closed at once (counted as `refusals{reason="limits"}`).
    public static let defaultMaxConnections = 16
    /// Why 5 s, from accept to the last response byte (not reset by arriving bytes, so a slowloris trickling one byte
    /// a second gains nothing): a real client sends its request in one packet and reads a few KiB at once.
    public static let defaultConnectionTimeout = 5.0

    public var maxConnections: Int
    public var connectionTimeout: Double
    public var maxHeadBytes: Int

    public init(
        maxConnections: Int = StatusLimits.defaultMaxConnections,
        connectionTimeout: Double = StatusLimits.defaultConnectionTimeout,
        maxHeadBytes: Int = HTTPRequestParser.defaultMaxHeadBytes
    ) {
        self.maxConnections = maxConnections
        self.connectionTimeout = connectionTimeout
        self.maxHeadBytes = maxHeadBytes
    }
}

/// What the status endpoints answer, as a pure function of the request and the agent's state.
///
/// - `/live`: 200 while the event loop runs (it is what answers).
/// - `/ready`: 200 only while an SVID is held and unexpired, else 503 — the same condition as gRPC health SERVING.
/// - `/metrics`: Prometheus text exposition 0.0.4.
/// GET and HEAD only (405 otherwise); anything else is 404.
public enum StatusRoutes {
    public static func response(
        for request: HTTPRequestParser.Request, ready: Bool, metrics: () -> String
    ) -> HTTPResponse {
        guard request.method == "GET" || request.method == "HEAD" else {
            return HTTPResponse(
                status: 405, body: "only GET and HEAD\n", headers: [("Allow", "GET, HEAD")])
        }
        var response: HTTPResponse
        switch request.path {
        case "/live": response = HTTPResponse(status: 200, body: "live\n")
        case "/ready":
            response =
                ready
                ? HTTPResponse(status: 200, body: "ready\n")
                : HTTPResponse(status: 503, body: "not ready: no valid SVID held\n")
        case "/metrics":
            response = HTTPResponse(status: 200, contentType: MetricsExposition.contentType, body: metrics())
        default: response = HTTPResponse(status: 404, body: "not found (try /live, /ready, /metrics)\n")
        }
        response.omitBody = request.method == "HEAD"
        return response
    }

    /// The answer to a request the parser refused.
    public static func response(for error: HTTPRequestParser.ParseError) -> HTTPResponse {
        HTTPResponse(status: error.statusCode, body: "\(error)\n")
    }
}

/// The HTTP/1.1 status listener (`--status-addr`): `/live`, `/ready`, `/metrics` on the agent's event loop.
///
/// Why off by default: kubelet and Prometheus reach a pod by its IP, so a loopback default would serve neither,
/// and a port opened in every pod's network namespace by default can collide with the application's; the exec
/// probe (`sds-agent healthcheck`) needs no port. `:PORT` binds loopback; a scrape needs `0.0.0.0:PORT`. The
/// documented port, 15095, is clear of those an Istio pod uses (15000, 15001, 15004, 15006, 15008, 15020, 15021,
/// 15053, 15090).
///
/// One request per connection: read the head (bounded by `StatusLimits.maxHeadBytes`), answer, close. Nothing here
/// blocks: the socket is non-blocking and the response is queued on the connection like any other write.
public final class StatusServer {
    private let loop: EventLoop
    private let logger: Logger
    private let limits: StatusLimits
    private var listener: Listener?
    private var connections: [ObjectIdentifier: StatusConnection] = [:]
    fileprivate let respond: (HTTPRequestParser.Request) -> HTTPResponse
    /// Called when a connection is turned away at the cap.
    public var onRefused: (() -> Void)?
    /// Evictions and refusals at the cap, logged once per kind and interval with a count.
    private var refusals = RefusalLog()
    private var connectionCounter: UInt64 = 0

    public init(
        loop: EventLoop, logger: Logger, limits: StatusLimits = StatusLimits(),
        respond: @escaping (HTTPRequestParser.Request) -> HTTPResponse
    ) {
        self.loop = loop
        self.logger = logger
        self.limits = limits
        self.respond = respond
    }

    public var connectionCount: Int { connections.count }
    /// Open connections whose peer has not sent a byte yet (the first to go at the cap).
    public var silentConnectionCount: Int { connections.values.filter { $0.isSilent }.count }
    public var boundAddress: TCPAddress? { listener?.boundTCPAddress }

    public func listen(on address: TCPAddress) throws(SystemError) {
        listener = try Listener(tcp: address, loop: loop) { [weak self] fd in
            guard let self else {
                Glibc.close(fd)
                return
            }
            self.accept(fd)
        }
    }

    public func stopListening() {
        listener?.close()
        listener = nil
    }

    public func closeAll() {
        for connection in connections.values { connection.close() }
        connections.removeAll()
    }

    /// The cap, fairly. The last slot is kept for loopback peers (an exec probe, a local scraper). At the cap:
    /// - a newcomer whose request has already arrived (a probe sends it with its connection) takes the place of the
    ///   oldest connection that has sent nothing;
    /// - a newcomer that has sent nothing yet may only replace a silent connection that has had `silentGrace` to
    ///   speak. Without that, idle connections reopened as fast as they close would evict one another in a loop,
    ///   and a probe accepted among them would be evicted before its request was read;
    /// - with no one to replace, the one slot above the cap takes it; when that is taken too, it is closed at once.
    /// At the cap, accepting also pauses for `capPause`: newcomers wait in the backlog, where a probe's request
    /// arrives before it is looked at, and idle connections reopened in a loop cost one accept per pause, not a spin.
    private func accept(_ fd: Int32) {
        let loopback = Self.peerIsLoopback(fd)
        let cap = loopback ? limits.maxConnections : max(1, limits.maxConnections - 1)
        if connections.count >= cap {
            listener?.pause(for: Self.capPause)
            let now = EventLoop.monotonicSeconds()
            let hasRequest = Self.hasBytesWaiting(fd)
            let victim = connections.values.filter {
                $0.isSilent && (hasRequest || now - $0.openedAt >= Self.silentGrace)
            }
            .min { $0.id < $1.id }
            if let victim {
                victim.close()
                closed(victim)
                report("evicted the oldest connection that sent nothing")
            } else if connections.count > cap {
                Glibc.close(fd)
                report("connection cap reached: closing new connections")
                return
            }
        }
        connectionCounter += 1
        let connection = StatusConnection(server: self, id: connectionCounter, maxHeadBytes: limits.maxHeadBytes)
        do {
            connection.socket = try Connection(fd: fd, loop: loop, delegate: connection)
        } catch {
            Glibc.close(fd)
            return
        }
        connections[ObjectIdentifier(connection)] = connection
        connection.deadline = loop.schedule(after: limits.connectionTimeout) { [weak self, weak connection] in
            guard let self, let connection else { return }
            connection.close()
            self.closed(connection)
        }
    }

    /// Why 250 ms: a client that connects sends its request within milliseconds (a probe under load within tens);
    /// one silent for a quarter second may give its place to a newcomer.
    static let silentGrace: Double = 0.25
    /// Why 50 ms: long enough for a waiting probe's request to arrive, short next to any probe's timeout (1 s).
    static let capPause: Double = 0.05

    static func hasBytesWaiting(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0
    }

    private func report(_ cause: String) {
        onRefused?()
        guard let entry = refusals.record(cause, now: EventLoop.monotonicSeconds()) else { return }
        var metadata: Logger.Metadata = ["max_connections": "\(limits.maxConnections)"]
        if entry.suppressed > 0 { metadata["suppressed"] = "\(entry.suppressed)" }
        logger.warning("status listener: \(cause)", metadata: metadata)
    }

    /// Whether the peer of `fd` is on this host's loopback (127.0.0.0/8 or ::1, v4-mapped included).
    static func peerIsLoopback(_ fd: Int32) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) == 0 }
        }
        guard ok else { return false }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: &storage) { raw in
                raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: UInt8.self) == 127
            }
        case AF_INET6:
            return withUnsafeBytes(of: &storage) { raw in
                let offset = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
                let bytes = Array(raw[offset..<offset + 16])
                let loopback6 = bytes[0..<15].allSatisfy { $0 == 0 } && bytes[15] == 1
                let mapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff
                return loopback6 || (mapped && bytes[12] == 127)
            }
        default:
            return false
        }
    }

    fileprivate func closed(_ connection: StatusConnection) {
        connection.deadline?.cancel()
        connections.removeValue(forKey: ObjectIdentifier(connection))
    }
}

/// One status connection: bytes into the parser until a verdict, then one response and close.
final class StatusConnection: ConnectionDelegate {
    /// Weak: the server may be stopped while a socket event for this connection is still queued.
    private weak var server: StatusServer?
    let id: UInt64
    private var parser: HTTPRequestParser
    var socket: Connection?
    var deadline: EventLoop.Timer?
    private var answered = false
    /// Whether the peer sent anything we read: at the cap, connections that never did are the first to go.
    private(set) var receivedAny = false
    /// When it was accepted (monotonic seconds).
    let openedAt = EventLoop.monotonicSeconds()

    /// Nothing read and nothing waiting to be read: a probe whose request arrived in the same loop turn as a burst
    /// of newcomers is not silent, though its bytes have not been read yet (it would otherwise be the one evicted).
    var isSilent: Bool {
        guard !receivedAny, let socket, !socket.isClosed else { return false }
        return !StatusServer.hasBytesWaiting(socket.fd)
    }

    init(server: StatusServer, id: UInt64, maxHeadBytes: Int) {
        self.server = server
        self.id = id
        self.parser = HTTPRequestParser(maxHeadBytes: maxHeadBytes)
    }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        receivedAny = true
        guard !answered, let server else { return }  // bytes after the request (a body, a pipelined one) are dropped
        switch parser.feed(bytes) {
        case .needMoreBytes:
            return
        case .complete(let request):
            answer(server.respond(request), on: connection)
        case .invalid(let error):
            answer(StatusRoutes.response(for: error), on: connection)
        }
    }

    /// Writes the response, then half-closes once it is out (a "lingering close"): the client reads the whole answer
    /// and its EOF, and whatever it still sends (a body, the rest of an oversized head) is read and dropped until it
    /// closes. Closing outright with unread input would send RST, and the client could lose the answer. The
    /// connection deadline bounds how long this lasts.
    private func answer(_ response: HTTPResponse, on connection: Connection) {
        answered = true
        connection.write(response.bytes)
        if connection.pendingWriteBytes == 0 { shutdownWrites(connection) }
    }

    private func shutdownWrites(_ connection: Connection) {
        guard !connection.isClosed else { return }
        _ = shutdown(connection.fd, Int32(SHUT_WR))
    }

    func connectionDrained(_ connection: Connection) {
        if answered { shutdownWrites(connection) }
    }

    func connectionClosed(_ connection: Connection, error: SystemError?) { server?.closed(self) }

    func close() {
        deadline?.cancel()
        socket?.close()
    }
}
