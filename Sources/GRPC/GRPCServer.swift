public import H2

/// Runs `action` once after `seconds` on the thread driving the connection; returns what cancels it. The owner
/// passes its event loop's timers (tests pass a fake), so deadlines need no clock here.
public typealias GRPCTimerScheduler = (_ seconds: Double, _ action: @escaping () -> Void) -> (() -> Void)

/// Creates the handling of one call: the factory sets the call's callbacks and may send or finish at once.
public typealias GRPCCallHandler = (GRPCServerCall) -> Void

/// Method paths (`/package.Service/Method`) to handlers. Shared by every connection of a server.
public final class GRPCRouter {
    private var handlers: [String: GRPCCallHandler] = [:]

    public init() {}

    public func register(_ path: String, handler: @escaping GRPCCallHandler) {
        handlers[path] = handler
    }

    public func handler(for path: String) -> GRPCCallHandler? { handlers[path] }

    /// The handler for `path` and the router's own copy of the path: a call that keeps it shares that string
    /// instead of holding the one decoded from its request (a heap string per held stream).
    func route(for path: String) -> (path: String, handler: GRPCCallHandler)? {
        guard let index = handlers.index(forKey: path) else { return nil }
        let (registered, handler) = handlers[index]
        return (registered, handler)
    }
}

/// What happened to a message handed to `GRPCServerCall.send` / `GRPCClientCall.send`.
public enum GRPCSendResult: Sendable, Equatable {
    case queued
    /// The peer is not reading: the stream's queue is at its bound. Nothing was queued; retry from `onWritable`.
    case wouldExceed
    /// The call is over; the message was dropped.
    case closed
}

/// What a handler holding a call for long (a stream) hears, as one object instead of the four closures of
/// `GRPCServerCall`: a held stream then costs one reference, not four closure contexts and the weak references in
/// them. The call holds it strongly until the call ends (`releaseCallbacks`: the stream closed, the connection was
/// lost, or the connection object went away with calls still open), so an object that holds its call is a cycle
/// only while the call is live. Not weak: a weakly referenced object carries a side table, and every retain and
/// release of it takes the slow path (a fifth of a 10,000-stream push went there).
public protocol GRPCServerCallEvents: AnyObject {
    /// A complete request message.
    func callReceived(_ message: [UInt8])
    /// The client finished sending (END_STREAM).
    func callHalfClosed()
    /// The call ended without `finish` (see `GRPCServerCall.onCancel`).
    func callCancelled()
    /// The stream's queue drained (see `GRPCServerCall.onWritable`).
    func callWritable()
}

/// One server-side call. Every callback runs synchronously on the thread driving the connection.
public final class GRPCServerCall {
    public let path: String
    /// Request headers other than pseudo-headers (`:path` etc.), in arrival order. Available while the router's
    /// handler runs, empty after: a stream held for hours keeps none of its request headers.
    public internal(set) var metadata: [(String, String)]
    public let streamID: H2StreamID

    /// A complete request message.
    public var onMessage: (([UInt8]) -> Void)?
    /// The client finished sending (END_STREAM).
    public var onHalfClose: (() -> Void)?
    /// The call ended without `finish`: RST_STREAM from the client, or the connection died. No more sends.
    public var onCancel: (() -> Void)?
    /// The stream's queue drained: the peer took everything sent so far. A good time to send more (SDS streams
    /// build their next, merged response here rather than queue one per change).
    public var onWritable: (() -> Void)?
    /// Told every event, after the closure for it (if any). Held until the call ends: see `GRPCServerCallEvents`.
    public var events: (any GRPCServerCallEvents)?

    weak var connection: GRPCServerConnection? {
        didSet { connectionID = connection.map(ObjectIdentifier.init) ?? connectionID }
    }
    /// Which connection the call arrived on, kept after the connection is gone: handlers budget per connection.
    public private(set) var connectionID: ObjectIdentifier?
    var state = ServerCallStateMachine()
    /// Cancels the `grpc-timeout` timer, if one is armed.
    var cancelDeadline: (() -> Void)?
    var decoder: GRPCMessageDecoder

    init(streamID: H2StreamID, path: String, metadata: [(String, String)], maxMessageBytes: Int) {
        self.streamID = streamID
        self.path = path
        self.metadata = metadata
        self.decoder = GRPCMessageDecoder(maxMessageBytes: maxMessageBytes)
    }

    /// True once finished or cancelled.
    public var isClosed: Bool { state.state == .closed }

    /// Who is on the other end, as the transport describes it (for logs); see `GRPCServerConnection.peer`.
    public var peer: String { connection?.peer ?? "" }

    /// Bytes queued on this call's stream, not yet accepted by the peer's flow-control window.
    public var queuedBytes: Int { connection?.session.queuedBytes(streamID: streamID) ?? 0 }

    /// Frames and queues one response message (response headers go first, once). The message is `message` followed
    /// by `tail`; both are queued as they are, not copied (a body shared by many streams, then a stream's own bytes).
    @discardableResult
    public func send(_ message: [UInt8], then tail: [UInt8] = []) -> GRPCSendResult {
        guard let connection else { return .closed }
        return connection.send(message, then: tail, on: self)
    }

    /// Asks the connection's owner to write what the connection has queued now, rather than when the current event
    /// ends: a push to thousands of streams lets the first connections' peers start reading while the rest are
    /// still being built.
    public func flushConnection() { connection?.onFlushRequested?() }

    /// Ends the call with `status` (trailers, or trailers-only if nothing was sent). Later calls do nothing.
    public func finish(_ status: GRPCStatus = .ok) {
        connection?.finish(self, status: status)
    }

    /// Handlers capture their call in these closures; dropping them when the stream is gone breaks that cycle.
    func releaseCallbacks() {
        onMessage = nil
        onHalfClose = nil
        onCancel = nil
        onWritable = nil
        events = nil
    }

    // Each event: the closure, then the events object, each held strongly in a local for the call so that a
    // handler whose owner drops it half-way (by ending the call) does not free what is running.
    func deliver(_ message: [UInt8]) {
        if let onMessage { onMessage(message) }
        if let events { events.callReceived(message) }
    }

    func deliverHalfClose() {
        if let onHalfClose { onHalfClose() }
        if let events { events.callHalfClosed() }
    }

    func deliverCancel() {
        if let onCancel { onCancel() }
        if let events { events.callCancelled() }
    }

    func deliverWritable() {
        if let onWritable { onWritable() }
        if let events { events.callWritable() }
    }
}

/// The gRPC server side of one HTTP/2 connection. Owns its `H2ServerSession`: the transport feeds
/// `session.receive(_:)` and flushes `session.takeOutput()`; this object turns stream events into calls.
public final class GRPCServerConnection: H2SessionDelegate {
    public let session: H2ServerSession
    public let router: GRPCRouter
    public let maxMessageBytes: Int
    private var calls: [H2StreamKey: GRPCServerCall] = [:]
    private var prefixes = GRPCMessageFraming.Cache()
    private(set) public var isDraining = false
    /// Bound on the partial request messages held across all calls of this connection: each call may hold one
    /// message up to `maxMessageBytes`, and this caps their sum, so a peer cannot hold `maxMessageBytes` times
    /// SETTINGS_MAX_CONCURRENT_STREAMS by starting a large message on every stream.
    public let maxBufferedRequestBytes: Int
    /// Bytes allocated for partial request messages right now, across this connection's calls (buffer capacity:
    /// what is really held, growth slack included).
    public private(set) var bufferedRequestBytes = 0
    /// The peer crossed an HTTP/2 bound (the stream was already refused or reset): for the owner's log.
    public var onLimitExceeded: ((H2Limit) -> Void)?
    /// A call was ended RESOURCE_EXHAUSTED because `maxBufferedRequestBytes` would have been passed: for the log.
    public var onBufferBudgetExceeded: (() -> Void)?
    /// Who is on the other end, as the transport describes it (e.g. `pid=… uid=… gid=…`); logs name it.
    public var peer = ""
    /// Writes what the session has queued (set by whoever drives the connection; see `GRPCServerCall.flushConnection`).
    public var onFlushRequested: (() -> Void)?
    private let scheduler: GRPCTimerScheduler?

    /// A `grpc-timeout` longer than this arms no timer: nothing here lives that long, and an event loop timer in
    /// nanoseconds would overflow near the header's maximum (99999999H).
    public static let longestHonouredTimeout: Double = 30 * 24 * 3600

    /// `scheduler` arms `grpc-timeout` deadlines; without one they are parsed (a malformed one still fails the
    /// call) but not enforced.
    public init(
        router: GRPCRouter, configuration: H2Configuration = H2Configuration(),
        maxMessageBytes: Int = GRPCMessageFraming.defaultMaxMessageBytes,
        maxBufferedRequestBytes: Int = GRPCServerConnection.defaultMaxBufferedRequestBytes,
        scheduler: GRPCTimerScheduler? = nil
    ) {
        self.router = router
        self.scheduler = scheduler
        self.maxMessageBytes = maxMessageBytes
        self.maxBufferedRequestBytes = maxBufferedRequestBytes
        self.session = H2ServerSession(configuration: configuration)
        self.session.delegate = self
    }

    /// A connection dropped without `connectionLost()` (its owner gone, or a test's in-memory peer) still breaks its
    /// calls' cycles with their handlers.
    deinit {
        for call in calls.values { call.releaseCallbacks() }
    }

    public var activeCallCount: Int { calls.count }

    /// 16 MiB: room for every one of 128 streams to be midway through a 128 KiB request at once (Envoy interleaves
    /// its streams' DATA frames, and its largest request, with the full Node, is ~61 KB), a sixteenth of what
    /// 128 × 1 MiB messages would pin.
    public static let defaultMaxBufferedRequestBytes = 16 << 20

    /// Graceful drain: the two-step GOAWAY (see `H2ServerSession.beginGracefulShutdown`). Calls in flight go on
    /// until they finish; a call arriving meanwhile is answered UNAVAILABLE; the session closes
    /// (`session.isClosed`) once every call has ended and the final GOAWAY is out. Pass `finishCalls` to end the
    /// calls now with it.
    public func beginDrain(finishCalls status: GRPCStatus? = nil) {
        guard !isDraining else { return }
        isDraining = true
        session.beginGracefulShutdown()
        if let status {
            for call in calls.values { call.finish(status) }
        }
    }

    /// The connection is gone (socket error / EOF): every open call is cancelled.
    public func connectionLost() {
        let open = calls
        calls.removeAll()
        bufferedRequestBytes = 0
        for call in open.values {
            call.cancelDeadline?()
            if call.state.streamClosed() == .notifyCancelled { call.deliverCancel() }
            call.releaseCallbacks()
        }
    }

    // MARK: H2SessionDelegate

    public func h2HeadersReceived(streamID: H2StreamID, headers: [H2Header], kind: H2HeaderBlockKind, endStream: Bool) {
        guard kind == .request else { return }  // request trailers carry nothing for gRPC
        let path = headers.value(for: ":path")
        let metadata = headers.filter { !$0.name.hasPrefix(":") }.map { ($0.name, $0.value) }
        let route = path.flatMap { router.route(for: $0) }
        let call = GRPCServerCall(
            streamID: streamID, path: route?.path ?? path ?? "", metadata: metadata, maxMessageBytes: maxMessageBytes)
        let handler = route?.handler
        let action = call.state.receiveRequestHeaders(
            method: headers.value(for: ":method"), contentType: headers.value(for: "content-type"),
            pathIsRegistered: handler != nil, path: path)
        switch action {
        case .reject(let httpStatus, let status):
            sendTrailersOnly(streamID: streamID, httpStatus: httpStatus, status: status)
        case .accept:
            if isDraining {
                // Between the shutdown notice and the final GOAWAY: this server will not serve it; retry elsewhere.
                sendTrailersOnly(
                    streamID: streamID, httpStatus: 200, status: GRPCStatus(.unavailable, "server is shutting down"))
                return
            }
            var timeout: GRPCTimeout?
            if let text = headers.value(for: "grpc-timeout") {
                guard let parsed = GRPCTimeout(headerValue: text) else {
                    sendTrailersOnly(
                        streamID: streamID, httpStatus: 200,
                        status: GRPCStatus(.internal, "malformed grpc-timeout '\(text)'"))
                    return
                }
                timeout = parsed
            }
            call.connection = self
            calls[H2StreamKey(streamID)] = call
            if let timeout, timeout.seconds <= Self.longestHonouredTimeout, let scheduler {
                call.cancelDeadline = scheduler(timeout.seconds) { [weak self, weak call] in
                    guard let self, let call else { return }
                    self.deadlineExpired(call, timeout: timeout)
                }
            }
            handler?(call)
            call.metadata = []
            if endStream {
                h2DataReceived(streamID: streamID, bytes: UnsafeBufferPointer(start: nil, count: 0), endStream: true)
            }
        }
    }

    public func h2DataReceived(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>, endStream: Bool) {
        // Every byte is processed before this returns (buffered in the call's decoder, within its bound, or dropped),
        // so it is handed back to flow control at once.
        defer { session.consume(streamID: streamID, count: bytes.count) }
        guard let call = calls[H2StreamKey(streamID)] else { return }
        if !bytes.isEmpty {
            let messages: GRPCDecodedMessages
            let heldBefore = call.decoder.bufferCapacity
            do throws(GRPCStatus) {
                messages = try call.decoder.feed(bytes)
            } catch {
                bufferedRequestBytes -= heldBefore  // a failed decoder holds nothing
                perform(call.state.receiveInvalidMessage(error), on: call)
                return
            }
            bufferedRequestBytes += call.decoder.bufferCapacity - heldBefore
            if bufferedRequestBytes > maxBufferedRequestBytes {
                let status = GRPCStatus(
                    .resourceExhausted,
                    "requests in progress on this connection exceed \(maxBufferedRequestBytes) bytes")
                bufferedRequestBytes -= call.decoder.bufferCapacity
                call.decoder.fail(status)
                onBufferBudgetExceeded?()
                perform(call.state.receiveInvalidMessage(status), on: call)
                return
            }
            for message in messages {
                guard case .deliverMessage = call.state.receiveMessage() else { return }
                call.deliver(message)
            }
        }
        if endStream {
            perform(call.state.receiveEndOfStream(atMessageBoundary: call.decoder.isAtMessageBoundary), on: call)
        }
    }

    public func h2StreamClosed(streamID: H2StreamID, errorCode: H2ErrorCode) {
        guard let call = calls.removeValue(forKey: H2StreamKey(streamID)) else { return }
        bufferedRequestBytes -= call.decoder.bufferCapacity
        call.cancelDeadline?()
        if call.state.streamClosed() == .notifyCancelled { call.deliverCancel() }
        call.releaseCallbacks()
    }

    public func h2OutboundQueueDrained(streamID: H2StreamID) {
        calls[H2StreamKey(streamID)]?.deliverWritable()
    }

    public func h2LimitExceeded(_ limit: H2Limit, streamID: H2StreamID) {
        onLimitExceeded?(limit)
    }

    // MARK: Actions

    /// The client's deadline passed before the handler finished: DEADLINE_EXCEEDED, and the handler hears the call
    /// is over (`onCancel`), as for any end it did not choose.
    private func deadlineExpired(_ call: GRPCServerCall, timeout: GRPCTimeout) {
        guard calls[H2StreamKey(call.streamID)] === call else { return }
        let finish = call.state.finish(GRPCStatus(.deadlineExceeded, "deadline exceeded (grpc-timeout \(timeout))"))
        guard finish != .none else { return }
        perform(finish, on: call)
        call.deliverCancel()
    }

    private func perform(_ action: ServerCallStateMachine.InboundAction, on call: GRPCServerCall) {
        switch action {
        case .deliverMessage, .ignore: break
        case .deliverHalfClose: call.deliverHalfClose()
        case .fail(let finish):
            perform(finish, on: call)
            // The handler did not choose this end: tell it the call is over. Further request bytes are
            // discarded by the failed decoder, so nothing more is buffered.
            call.deliverCancel()
        }
    }

    func send(_ message: [UInt8], then tail: [UInt8], on call: GRPCServerCall) -> GRPCSendResult {
        var probe = call.state
        let action = probe.send()
        if action == .dropClosed { return .closed }
        let prefix = prefixes.prefix(length: message.count + tail.count)
        do throws(H2Error) {
            if action == .sendHeadersAndMessage {
                try session.sendResponseHeaders(
                    streamID: call.streamID, headers: Self.responseHeaders, endStream: false)
            }
            call.state = probe
            try session.sendData(streamID: call.streamID, bytes: prefix, then: message, tail)
            return .queued
        } catch .wouldExceed {
            return .wouldExceed
        } catch {
            return .closed
        }
    }

    func finish(_ call: GRPCServerCall, status: GRPCStatus) {
        perform(call.state.finish(status), on: call)
    }

    private func perform(_ action: ServerCallStateMachine.FinishAction, on call: GRPCServerCall) {
        switch action {
        case .none:
            return
        case .sendTrailers(let status):
            try? session.sendTrailers(streamID: call.streamID, trailers: Self.trailers(status))
        case .sendTrailersOnly(let status):
            sendTrailersOnly(streamID: call.streamID, httpStatus: 200, status: status)
        }
    }

    private func sendTrailersOnly(streamID: H2StreamID, httpStatus: Int, status: GRPCStatus) {
        var headers = [H2Header(":status", String(httpStatus)), H2Header("content-type", "application/grpc")]
        headers += Self.trailers(status)
        try? session.sendResponseHeaders(streamID: streamID, headers: headers, endStream: true)
    }

    static let responseHeaders = [H2Header(":status", "200"), H2Header("content-type", "application/grpc")]

    static func trailers(_ status: GRPCStatus) -> [H2Header] {
        status.trailerFields.map { H2Header($0.0, $0.1) }
    }
}
