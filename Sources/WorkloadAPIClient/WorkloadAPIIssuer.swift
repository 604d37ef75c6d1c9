import ConnectionDriver
public import GRPC
import Glibc
import H2
public import Issuance
import PKI
public import SPIFFE
public import Transport
public import Wire

/// An `Issuer` that relays the SVID and bundles a SPIRE agent (any SPIFFE Workload API server) streams to us.
///
/// It keeps `FetchX509SVID` and `FetchX509Bundles` open on one HTTP/2 connection to the upstream's Unix socket,
/// each with the `workload.spiffe.io: true` metadata, and delivers the complete state whenever it changes. The
/// upstream owns rotation (TTL is the upstream's); a failed connection is retried with backoff while the last
/// SVID keeps being served. All logic lives in `WorkloadAPIClientStateMachine`; this class only dials, pumps
/// bytes between the socket and the nghttp2 session, decodes messages and runs the retry and first-response
/// timers.
///
/// Each X.509 message is parsed (certificates, keys, chain checks) off the event loop when the issuer has a worker:
/// OpenSSL 3.0 spends ~0.1 ms on every certificate, and a message may hold 2,048 of them, all resent at each SPIRE
/// rotation. One parse runs at a time, in arrival order, each with what the one before it brought (so unchanged
/// bundles are taken over, not parsed again); a message arriving meanwhile waits, and only the latest of each stream
/// waits (each is the stream's whole state).
///
/// `rotateNow()` is a hint (SPIRE decides when to rotate): while connected it does nothing; while waiting to
/// reconnect it reconnects at once.
public final class WorkloadAPIIssuer: Issuer {
    public let socket: UnixSocketAddress
    private let loop: EventLoop
    private let scheduler: any Scheduler
    private let clock: any WallClock
    private let randomUnit: () -> Double
    private let dial: (UnixSocketAddress) throws(SystemError) -> UnixConnectStart
    private let connectTimeout: Double
    /// A connect still under way: its descriptor waits for writability, bounded by `connectTimeout`.
    private var pendingConnect: (fd: Int32, attempt: Int, timer: any ScheduledTimer)?
    private var machine: WorkloadAPIClientStateMachine
    private var callbacks = IssuerCallbacks()
    private var retryTimer: (any ScheduledTimer)?
    /// Armed for each connection until it sends its first X509SVIDResponse (see `firstResponseTimeout`).
    private var firstResponseTimer: (timer: any ScheduledTimer, attempt: Int)?
    private var connection: UpstreamConnection?
    /// Where messages are parsed; nil parses them on the loop, inside the callback that decoded them.
    private let worker: OffLoopWorker?
    /// A parse is under way (its result has not been handed to the machine yet).
    private var parsing = false
    /// Decoded messages waiting for the parse under way: at most one per stream, in arrival order.
    private var waiting: [(message: DecodedMessage, attempt: Int)] = []

    /// - Parameters:
    ///   - spiffeID: the SVID to relay when the workload has several; nil relays the first one offered.
    ///   - firstResponseTimeout: seconds a new connection may go without an X509SVIDResponse before it is torn
    ///     down, reported and retried. The Workload API spec has SPIRE answer the first FetchX509SVID
    ///     message immediately, so silence this long means a wedged peer, not a slow one.
    ///   - connectTimeout: seconds a connect that did not complete at once may take before it counts as failed.
    ///   - worker: where X.509 messages are parsed; nil parses them on the loop (tests).
    ///   - randomUnit: uniform samples in [0, 1) for backoff jitter (injected for tests).
    ///   - dial: starts connecting to the socket and must never block (injected for tests; the default is a
    ///     non-blocking Unix-socket connect: a full listen backlog fails at once with EAGAIN and is retried with
    ///     backoff like any refused connection).
    public init(
        socket: UnixSocketAddress, spiffeID: SPIFFEID?, loop: EventLoop, scheduler: any Scheduler,
        clock: any WallClock, backoff: Backoff = Backoff(), firstResponseTimeout: Double = 10,
        connectTimeout: Double = WorkloadAPIIssuer.defaultConnectTimeout, worker: OffLoopWorker? = nil,
        randomUnit: @escaping () -> Double = { Double.random(in: 0..<1) },
        dial: @escaping (UnixSocketAddress) throws(SystemError) -> UnixConnectStart = {
            (address) throws(SystemError) in try startUnixConnect(address)
        }
    ) {
        self.socket = socket
        self.loop = loop
        self.scheduler = scheduler
        self.clock = clock
        self.randomUnit = randomUnit
        self.dial = dial
        self.connectTimeout = connectTimeout
        self.worker = worker
        self.machine = WorkloadAPIClientStateMachine(
            upstream: socket.path, wantedID: spiffeID, backoff: backoff, firstResponseTimeout: firstResponseTimeout)
    }

    /// A local socket connects at once or fails at once; one still pending after this long is wedged.
    public static let defaultConnectTimeout = 5.0

    /// What the agent calls for `--issuer workload-api`: messages parsed on a worker.
    public static func make(
        upstreamSocket: UnixSocketAddress, spiffeID: SPIFFEID?, loop: EventLoop, scheduler: any Scheduler,
        clock: any WallClock
    ) throws(SystemError) -> WorkloadAPIIssuer {
        WorkloadAPIIssuer(
            socket: upstreamSocket, spiffeID: spiffeID, loop: loop, scheduler: scheduler, clock: clock,
            worker: try OffLoopWorker(loop: loop))
    }

    /// Where the client is (for diagnostics and tests).
    public var state: WorkloadAPIClientStateMachine.State { machine.state }
    /// The update most recently delivered.
    public var current: IdentityUpdate? { machine.lastDelivered }

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        guard callbacks.start(onUpdate: onUpdate, onError: onError) else { return }
        perform(machine.start())
    }

    public func rotateNow() { perform(machine.rotateNow()) }

    // MARK: JWT relay (the upstream speaks the whole Workload API)

    /// The JWT bundles the upstream streams (`FetchJWTBundles`: JWKS per trust domain ID), on every change. The
    /// JWT stream is best effort beside the X.509 ones: an upstream that ends it (e.g. UNIMPLEMENTED) does not
    /// cost the connection.
    public var onJWTBundles: (([String: [UInt8]]) -> Void)?

    /// Relays one unary Workload API call (`FetchJWTSVID`, `ValidateJWTSVID`) over the upstream connection;
    /// `reply` gets the response message or the upstream's status, on the loop thread, later. Not connected:
    /// UNAVAILABLE at once.
    public func relay(
        _ method: SpiffeWorkloadAPIMethod, request: [UInt8],
        reply: @escaping (Result<[UInt8], GRPCStatus>) -> Void
    ) {
        guard let connection else {
            reply(.failure(GRPCStatus(.unavailable, "the upstream Workload API \(socket.path) is not connected")))
            return
        }
        connection.unary(method, request, reply)
    }

    fileprivate func receivedJWTBundles(_ message: [UInt8]) {
        guard let response = try? JWTBundlesResponse(wireBytes: message) else { return }
        onJWTBundles?(response.bundles)
    }

    public func stop() {
        perform(machine.stop())
        callbacks.stop()
        worker?.cancelAll()
        waiting.removeAll()
    }

    // MARK: Actions

    private func perform(_ actions: [WorkloadAPIClientStateMachine.Action]) {
        for action in actions {
            // A callback may have stopped the issuer halfway through: then only tearing down is left to do.
            if machine.state == .stopped {
                switch action {
                case .cancelRetry, .closeConnection: break
                case .connect, .scheduleRetry, .deliver, .report: continue
                }
            }
            switch action {
            case .connect(let attempt):
                connect(attempt: attempt)
                if machine.awaitingFirstResponse == attempt { armFirstResponseDeadline(attempt: attempt) }
            case .closeConnection:
                closeConnection()
            case .scheduleRetry(let delay):
                retryTimer?.cancel()
                retryTimer = scheduler.schedule(after: delay) { [weak self] in
                    guard let self else { return }
                    self.retryTimer = nil
                    self.perform(self.machine.retryTimerFired())
                }
            case .cancelRetry:
                retryTimer?.cancel()
                retryTimer = nil
            case .deliver(let update):
                callbacks.deliver(update)
            case .report(let error):
                callbacks.report(error)
            }
        }
        // The deadline only matters while its connection waits for a first answer; a timer left armed would be
        // ignored by the machine, but cancelling keeps the scheduler free of dead timers.
        if let armed = firstResponseTimer, machine.awaitingFirstResponse != armed.attempt {
            armed.timer.cancel()
            firstResponseTimer = nil
        }
    }

    private func armFirstResponseDeadline(attempt: Int) {
        firstResponseTimer?.timer.cancel()
        let timer = scheduler.schedule(after: machine.firstResponseTimeout) { [weak self] in
            guard let self else { return }
            if self.firstResponseTimer?.attempt == attempt { self.firstResponseTimer = nil }
            self.perform(self.machine.firstResponseDeadlinePassed(attempt: attempt, randomUnit: self.randomUnit()))
        }
        firstResponseTimer = (timer, attempt)
    }

    private func connect(attempt: Int) {
        cancelPendingConnect()
        let start: UnixConnectStart
        do throws(SystemError) {
            start = try dial(socket)
        } catch {
            perform(machine.connectFailed(attempt: attempt, reason: "\(error)", randomUnit: randomUnit()))
            return
        }
        switch start {
        case .connected(let fd):
            connected(fd: fd, attempt: attempt)
        case .inProgress(let fd):
            awaitConnect(fd: fd, attempt: attempt)
        }
    }

    /// Waits, on the loop, for an in-progress connect to finish (writable, then SO_ERROR) or time out.
    private func awaitConnect(fd: Int32, attempt: Int) {
        let timer = scheduler.schedule(after: connectTimeout) { [weak self] in
            guard let self, let pending = self.pendingConnect, pending.fd == fd else { return }
            self.cancelPendingConnect()
            self.perform(
                self.machine.connectFailed(
                    attempt: attempt, reason: "connect \(self.socket.path): timed out after \(self.connectTimeout) s",
                    randomUnit: self.randomUnit()))
        }
        pendingConnect = (fd, attempt, timer)
        do throws(SystemError) {
            try loop.register(fd: fd, events: .writable) { [weak self] _ in
                guard let self, let pending = self.pendingConnect, pending.fd == fd else { return }
                pending.timer.cancel()
                self.pendingConnect = nil
                self.loop.deregister(fd: fd)
                do throws(SystemError) {
                    try finishUnixConnect(fd, address: self.socket)
                } catch {
                    self.perform(
                        self.machine.connectFailed(attempt: attempt, reason: "\(error)", randomUnit: self.randomUnit()))
                    return
                }
                self.connected(fd: fd, attempt: attempt)
            }
        } catch {
            cancelPendingConnect()
            perform(machine.connectFailed(attempt: attempt, reason: "\(error)", randomUnit: randomUnit()))
        }
    }

    private func cancelPendingConnect() {
        guard let pending = pendingConnect else { return }
        pendingConnect = nil
        pending.timer.cancel()
        loop.deregister(fd: pending.fd)
        Glibc.close(pending.fd)
    }

    private func connected(fd: Int32, attempt: Int) {
        let upstream = UpstreamConnection(attempt: attempt, issuer: self)
        do throws(SystemError) {
            // The driver owns `fd` from here, closing it on failure too.
            try upstream.attach(fd: fd, loop: loop)
        } catch {
            perform(machine.connectFailed(attempt: attempt, reason: "\(error)", randomUnit: randomUnit()))
            return
        }
        connection = upstream
        do throws(GRPCStatus) {
            try upstream.openStreams()
        } catch {
            closeConnection()
            perform(machine.connectFailed(attempt: attempt, reason: "\(error)", randomUnit: randomUnit()))
            return
        }
        upstream.flush()
    }

    private func closeConnection() {
        cancelPendingConnect()
        guard let upstream = connection else { return }
        connection = nil
        upstream.close()
        // The connection may be closed from inside one of its own callbacks (nghttp2 is mid-receive): keep it
        // alive until the stack has unwound.
        scheduler.schedule(after: 0) { withExtendedLifetime(upstream) {} }
    }

    // MARK: Events from the connection

    fileprivate func received(_ message: [UInt8], on stream: WorkloadAPIStream, attempt: Int) {
        let decoded: DecodedMessage
        do throws(WireError) {
            switch stream {
            case .x509SVID: decoded = .svid(try X509SVIDResponse(wireBytes: message))
            case .x509Bundles: decoded = .bundles(try X509BundlesResponse(wireBytes: message))
            }
        } catch {
            perform(
                machine.malformedMessage(
                    attempt: attempt, stream: stream, reason: "\(error)", randomUnit: randomUnit()))
            return
        }
        if let index = waiting.firstIndex(where: { $0.message.stream == stream }) {
            waiting[index] = (decoded, attempt)
        } else {
            waiting.append((decoded, attempt))
        }
        parseNext()
    }

    /// Starts parsing the oldest waiting message, unless a parse is under way; its result goes to the machine
    /// (which ignores it if its connection is gone by then), then the next one starts.
    private func parseNext() {
        while !parsing, machine.state != .stopped, !waiting.isEmpty {
            let (message, attempt) = waiting.removeFirst()
            guard machine.attempt == attempt else { continue }
            let context = machine.parseContext
            let now = clock.now()
            parsing = true
            switch message {
            case .svid(let response):
                parse({ WorkloadAPIClientStateMachine.parse(response, context: context, now: now) }) {
                    [weak self] parsed in self?.parsed { $0.received(parsed, attempt: attempt, now: $1) }
                }
            case .bundles(let response):
                parse({ WorkloadAPIClientStateMachine.parse(response, context: context) }) { [weak self] parsed in
                    self?.parsed { $0.received(parsed, attempt: attempt, now: $1) }
                }
            }
        }
    }

    /// A parse's result, handed to the machine by `apply` (with the time now); then the next parse starts.
    private func parsed(
        _ apply: (inout WorkloadAPIClientStateMachine, Timestamp) -> [WorkloadAPIClientStateMachine.Action]
    ) {
        parsing = false
        perform(apply(&machine, clock.now()))
        parseNext()
    }

    private func parse<Parsed: Sendable>(
        _ work: @escaping @Sendable () -> Parsed, then completion: @escaping (Parsed) -> Void
    ) {
        if let worker { worker.run(work, then: completion) } else { completion(work()) }
    }

    fileprivate func ended(_ stream: WorkloadAPIStream, status: GRPCStatus, attempt: Int) {
        perform(machine.streamEnded(attempt: attempt, stream: stream, status: status, randomUnit: randomUnit()))
    }

    fileprivate func lost(attempt: Int, reason: String) {
        perform(machine.connectionLost(attempt: attempt, reason: reason, randomUnit: randomUnit()))
    }
}

/// An X.509 message decoded from the wire, waiting to be parsed.
enum DecodedMessage {
    case svid(X509SVIDResponse)
    case bundles(X509BundlesResponse)

    var stream: WorkloadAPIStream {
        switch self {
        case .svid: .x509SVID
        case .bundles: .x509Bundles
        }
    }
}

/// One connection to the upstream: the two gRPC calls over the shared client driver (socket ⇄ nghttp2 client
/// session, plaintext over the Unix socket; see `H2ConnectionDriver`).
final class UpstreamConnection {
    let attempt: Int
    let grpc = GRPCClientConnection()
    private var driver: H2ConnectionDriver?
    private weak var issuer: WorkloadAPIIssuer?
    private var calls: [GRPCClientCall] = []
    /// Relayed unary calls waiting for the upstream's answer.
    private var relays: [ObjectIdentifier: (Result<[UInt8], GRPCStatus>) -> Void] = [:]
    /// More relayed calls than this at once are refused: each holds a stream of this connection, whose streams
    /// the upstream bounds too (SPIRE: 100 by default), and the X.509 streams must keep theirs.
    static let maxRelays = 64
    private var closed = false

    init(attempt: Int, issuer: WorkloadAPIIssuer) {
        self.attempt = attempt
        self.issuer = issuer
    }

    /// Hands the connected socket to the driver (which closes it if this fails).
    func attach(fd: Int32, loop: EventLoop) throws(SystemError) {
        let driver = try H2ConnectionDriver.onSocket(fd, loop: loop, session: grpc.session)
        let attempt = self.attempt
        driver.afterClosed = { [grpc] in grpc.connectionLost() }
        driver.onClosed = { [weak self] reason in
            guard let self, !self.closed else { return }
            self.issuer?.lost(attempt: attempt, reason: "\(reason)")
        }
        self.driver = driver
    }

    /// Starts both server-streaming calls: one empty request each, then half-close.
    func openStreams() throws(GRPCStatus) {
        let header = SpiffeWorkloadAPIMethod.securityHeader
        for (method, stream, request) in [
            (SpiffeWorkloadAPIMethod.fetchX509SVID, WorkloadAPIStream.x509SVID, X509SVIDRequest().wireBytes()),
            (.fetchX509Bundles, .x509Bundles, X509BundlesRequest().wireBytes()),
        ] {
            let call = try grpc.startCall(path: method.path, metadata: [(header.name, header.value)])
            let attempt = self.attempt
            call.onMessage = { [weak self] message in
                guard let self, !self.closed else { return }
                self.issuer?.received(message, on: stream, attempt: attempt)
            }
            call.onFinish = { [weak self] status, _ in
                guard let self, !self.closed else { return }
                self.issuer?.ended(stream, status: status, attempt: attempt)
            }
            calls.append(call)
            call.send(request)
            call.closeSend()
        }
        let jwtBundles = try grpc.startCall(
            path: SpiffeWorkloadAPIMethod.fetchJWTBundles.path, metadata: [(header.name, header.value)])
        jwtBundles.onMessage = { [weak self] message in
            guard let self, !self.closed else { return }
            self.issuer?.receivedJWTBundles(message)
        }
        calls.append(jwtBundles)
        jwtBundles.send(JWTBundlesRequest().wireBytes())
        jwtBundles.closeSend()
    }

    func unary(
        _ method: SpiffeWorkloadAPIMethod, _ request: [UInt8], _ reply: @escaping (Result<[UInt8], GRPCStatus>) -> Void
    ) {
        guard relays.count < Self.maxRelays else {
            reply(.failure(GRPCStatus(.resourceExhausted, "more than \(Self.maxRelays) calls relayed to the upstream")))
            return
        }
        let header = SpiffeWorkloadAPIMethod.securityHeader
        let call: GRPCClientCall
        do throws(GRPCStatus) {
            call = try grpc.startCall(path: method.path, metadata: [(header.name, header.value)])
        } catch {
            reply(.failure(GRPCStatus(.unavailable, "upstream Workload API: \(error)")))
            return
        }
        let key = ObjectIdentifier(call)
        relays[key] = reply
        var response: [UInt8]?
        call.onMessage = { message in
            if response == nil { response = message }
        }
        call.onFinish = { [weak self, weak call] status, _ in
            guard let self, let reply = self.relays.removeValue(forKey: key) else { return }
            self.calls.removeAll { $0 === call }
            if status.code == .ok, let response {
                reply(.success(response))
            } else {
                reply(.failure(status.code == .ok ? GRPCStatus(.internal, "the upstream sent no response") : status))
            }
        }
        calls.append(call)
        call.send(request)
        call.closeSend()
        flush()
    }

    /// Moves session output to the socket (the driver applies backpressure).
    func flush() { driver?.flush() }

    /// Closes the socket; no callback reaches the issuer afterwards.
    func close() {
        guard !closed else { return }
        closed = true
        for call in calls {
            call.onMessage = nil
            call.onFinish = nil
        }
        calls.removeAll()
        let waiting = relays.values
        relays.removeAll()
        driver?.close()
        for reply in waiting {
            reply(.failure(GRPCStatus(.unavailable, "the upstream Workload API connection closed")))
        }
    }
}
