internal import CNGHTTP2

/// Shared engine of `H2ServerSession` and `H2ClientSession`: owns one `nghttp2_session`, driven as a pure byte
/// transducer (`nghttp2_session_mem_recv` in, `nghttp2_session_mem_send` out), no sockets.
///
/// Outbound data of every stream goes through a per-stream queue read by a data provider:
///
/// ```
///   sendData ──► queue ──(read callback, bounded by peer window)──► DATA frames
///                  │ emptied & not finished → EOF + NO_END_STREAM: the provider detaches after that frame
///                  │ sendData with no provider attached → nghttp2_submit_data (attach one again)
///                  │ asked while already empty & not finished → NGHTTP2_ERR_DEFERRED (parked)
///                  │ sendData on parked stream → nghttp2_session_resume_data
///                  └ empty & finished → EOF (+ trailers, or END_STREAM on the last DATA)
/// ```
///
/// Detaching once a message is out, rather than parking, is what a push is made of (one message per stream, then
/// nothing for an hour): nghttp2 then asks once per message, not twice (the second answer being DEFERRED), and
/// keeps no deferred item per idle stream. nghttp2 detaches an EOF item before `nghttp2_session_mem_send`
/// returns, so a later `sendData` can always attach a new one.
final class H2SessionCore {
    /// What the stream's outbound side does once its queue is empty.
    enum OutboundEnd {
        case open
        case endStream
        case trailers([H2Header])
    }

    struct OutboundStream {
        var queue: ByteQueue = ByteQueue()
        var end: OutboundEnd = .open
        var parked = false
        /// The stream has a body side (response/request submitted with a body).
        var hasProvider = false
        /// A data provider is attached in nghttp2 (it detaches after the frame that empties the queue).
        var attached = false
    }

    struct InboundStream {
        var headers: [H2Header] = []
        var headerBlocks = 0
        /// Size of the header block being received, counted as RFC 9113 §6.5.2 does (name + value + 32 each).
        var headerListBytes = 0
        /// The block passed `maxHeaderListSize`: the stream is reset and the rest of the block is discarded.
        var headerListExceeded = false
    }

    let isServer: Bool
    let configuration: H2Configuration
    weak var delegate: (any H2SessionDelegate)?
    /// `delegate`, loaded once for the callbacks of one `receive` or `takeOutput` (a weak load per frame was a
    /// visible part of a 10,000-stream push); restored when a nested call ends.
    private var activeDelegate: (any H2SessionDelegate)?
    private var callbackDelegate: (any H2SessionDelegate)? { activeDelegate ?? delegate }
    private var session: OpaquePointer?
    private var outbound: [H2StreamKey: OutboundStream] = [:]
    private var inbound: [H2StreamKey: InboundStream] = [:]
    private var drainedStreams: [H2StreamID] = []
    /// Sum of every stream's queue, kept as it changes so the connection's budget check is O(1).
    private(set) var totalQueuedBytes = 0
    /// The shutdown notice went out with a PING; its ACK (one round trip later) sends the final GOAWAY.
    private var awaitingShutdownPing = false
    private(set) var failure: H2Error?
    /// An error raised inside a callback, reported by the `receive` that triggered it.
    private var callbackError: H2Error?
    /// The peer's first SETTINGS frame arrived (for a server: the client preface is complete).
    private(set) var prefaceReceived = false

    init(isServer: Bool, configuration: H2Configuration) {
        self.isServer = isServer
        self.configuration = configuration
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        installCallbacks(callbacks)
        var options: OpaquePointer?
        nghttp2_option_new(&options)
        defer { nghttp2_option_del(options) }
        // Flow control follows consumption: nghttp2 sends WINDOW_UPDATE only for bytes the delegate has passed to
        // `consume`, so a stream (or connection) whose data is not being processed stops receiving.
        nghttp2_option_set_no_auto_window_update(options, 1)
        nghttp2_option_set_max_continuations(options, configuration.maxContinuations)
        nghttp2_option_set_max_deflate_dynamic_table_size(options, configuration.maxEncoderTableSize)
        if isServer {
            nghttp2_option_set_stream_reset_rate_limit(
                options, configuration.streamResetBurst, configuration.streamResetRatePerSecond)
        }
        var newSession: OpaquePointer?
        let userData = Unmanaged.passUnretained(self).toOpaque()
        let rc: Int32
        if isServer {
            rc = nghttp2_session_server_new2(&newSession, callbacks, userData, options)
        } else {
            rc = nghttp2_session_client_new2(&newSession, callbacks, userData, options)
        }
        // Only allocation can fail here; nothing sensible remains to do without a session.
        precondition(rc == 0 && newSession != nil, "nghttp2_session_new failed: \(rc)")
        session = newSession
        // Queue our SETTINGS now so the handshake completes before any application data exists
        // (pilot-agent drops a socket whose gRPC dial has not completed within 1 s).
        var settings = [
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                value: configuration.maxConcurrentStreams),
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                value: configuration.initialWindowSize),
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                value: configuration.maxHeaderListSize),
        ]
        if !isServer {
            settings.append(
                nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        _ = nghttp2_submit_settings(newSession, UInt8(NGHTTP2_FLAG_NONE.rawValue), settings, settings.count)
        // With automatic WINDOW_UPDATE off, the connection window is grown through the local window size (nghttp2
        // then sends the WINDOW_UPDATE), not with submit_window_update.
        _ = nghttp2_session_set_local_window_size(
            newSession, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, configuration.connectionWindowSize)
    }

    deinit {
        nghttp2_session_del(session)
    }

    // MARK: Byte transduction

    func receive(_ bytes: UnsafeRawBufferPointer) throws(H2Error) {
        if let failure { throw failure }
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        // A delegate may drop the last reference to the session's owner while nghttp2 is still on the stack.
        defer { withExtendedLifetime(self) {} }
        let outerDelegate = activeDelegate
        activeDelegate = delegate
        defer { activeDelegate = outerDelegate }
        var remaining = bytes.count
        var cursor = base.assumingMemoryBound(to: UInt8.self)
        while remaining > 0 {
            let consumed = nghttp2_session_mem_recv(session, cursor, remaining)
            if let error = callbackError {
                callbackError = nil
                fail(error)
                throw error
            }
            if consumed < 0 {
                let error = H2Error.sessionFailed(code: Int32(consumed), reason: Self.describe(Int32(consumed)))
                fail(error)
                // Some fatal errors (a CONTINUATION flood, other floods) leave nothing queued: say GOAWAY before the
                // owner closes, so the peer learns why. A no-op when nghttp2 has already queued one.
                let code: H2ErrorCode =
                    consumed == Int(NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue)
                        || consumed == Int(NGHTTP2_ERR_FLOODED.rawValue) ? .enhanceYourCalm : .protocolError
                _ = nghttp2_session_terminate_session(session, code.rawValue)
                throw error
            }
            remaining -= consumed
            cursor += consumed
        }
    }

    /// Appends up to `maxBytes` of pending output to `output`; returns how many bytes were appended.
    @discardableResult
    func takeOutput(into output: inout [UInt8], maxBytes: Int) -> Int {
        defer { withExtendedLifetime(self) {} }
        let outerDelegate = activeDelegate
        activeDelegate = delegate
        defer { activeDelegate = outerDelegate }
        // Sized once from what the queues hold (plus a DATA frame header per ~1 KB and room for control frames),
        // capped at this call's share: a push's output grew from empty by doubling, copying each chunk ~7 times.
        if output.isEmpty, totalQueuedBytes > 0 {
            // Both bounded before adding (`maxBytes` may be .max: "everything").
            let cap = min(maxBytes, Self.maxReservation) + Self.maxFrameBytes
            let queued = min(totalQueuedBytes, Self.maxReservation)
            let expected = min(queued + queued / 128 + 512, cap)
            if output.capacity < expected { output.reserveCapacity(expected) }
        }
        var taken = 0
        while taken < maxBytes, session != nil {
            var chunk: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &chunk)
            if count < 0 {
                // A callback's own error says more than nghttp2's generic CALLBACK_FAILURE.
                fail(callbackError ?? .sessionFailed(code: Int32(count), reason: Self.describe(Int32(count))))
                callbackError = nil
                break
            }
            if count == 0 { break }
            output.append(contentsOf: UnsafeBufferPointer(start: chunk, count: count))
            taken += count
        }
        notifyDrained()
        return taken
    }

    /// One DATA frame as nghttp2 packs them (16 KiB of payload unless told otherwise, plus the header): how far a
    /// `takeOutput` may run past `maxBytes`. Only sizes a reservation.
    private static let maxFrameBytes = 16_384 + 9
    /// No reservation beyond this (a caller asking for everything gets the rest by growth).
    private static let maxReservation = 1 << 20

    var wantsRead: Bool { failure == nil && nghttp2_session_want_read(session) != 0 }
    var wantsWrite: Bool { nghttp2_session_want_write(session) != 0 }
    var isClosed: Bool { !wantsRead && !wantsWrite }

    private func fail(_ error: H2Error) {
        if failure == nil { failure = error }
    }

    private func notifyDrained() {
        // Loaded once, not per stream (each load retains and releases it); held for the loop, so a delegate that
        // drops its session half-way is still there for the streams left.
        guard !drainedStreams.isEmpty, let delegate = callbackDelegate else {
            drainedStreams.removeAll()
            return
        }
        while !drainedStreams.isEmpty {
            let streams = drainedStreams
            drainedStreams.removeAll()
            // `index(forKey:)`, not `outbound[…] != nil`: that copies the stream's entry out (its queue's arrays
            // retained and released) only to compare it with nil.
            for streamID in streams where outbound.index(forKey: H2StreamKey(streamID)) != nil {
                delegate.h2OutboundQueueDrained(streamID: streamID)
            }
        }
    }

    static func describe(_ code: Int32) -> String {
        String(cString: nghttp2_strerror(code))
    }

    // MARK: Actions

    func submitRequest(headers: [H2Header], endStream: Bool) throws(H2Error) -> H2StreamID {
        if let failure { throw failure }
        // After GOAWAY nghttp2 would accept the request and drop it at send time; refuse it here instead.
        guard nghttp2_session_check_request_allowed(session) != 0 else {
            throw .refused(reason: "the connection is going away")
        }
        var provider = Self.dataProvider()
        let streamID = withNameValues(headers) { nva, count in
            endStream
                ? nghttp2_submit_request(session, nil, nva, count, nil, nil)
                : nghttp2_submit_request(session, nil, nva, count, &provider, nil)
        }
        guard streamID > 0 else {
            throw .refused(reason: Self.describe(streamID))
        }
        var stream = OutboundStream()
        stream.hasProvider = !endStream
        stream.attached = !endStream
        stream.end = endStream ? .endStream : .open
        outbound[H2StreamKey(streamID)] = stream
        return streamID
    }

    func submitResponse(streamID: H2StreamID, headers: [H2Header], endStream: Bool) throws(H2Error) {
        if let failure { throw failure }
        guard
            var stream = outbound[H2StreamKey(streamID)]
                ?? (inbound[H2StreamKey(streamID)] != nil ? OutboundStream() : nil)
        else {
            throw .noSuchStream(streamID)
        }
        guard !stream.hasProvider, case .open = stream.end else { throw .streamOutboundClosed(streamID) }
        var provider = Self.dataProvider()
        let rc = withNameValues(headers) { nva, count in
            endStream
                ? nghttp2_submit_response(session, streamID, nva, count, nil)
                : nghttp2_submit_response(session, streamID, nva, count, &provider)
        }
        guard rc == 0 else { throw .sessionFailed(code: rc, reason: Self.describe(rc)) }
        stream.hasProvider = !endStream
        stream.attached = !endStream
        if endStream { stream.end = .endStream }
        outbound[H2StreamKey(streamID)] = stream
    }

    /// Queues `first`, `second` and `third` (in that order, as one piece of data: all or nothing), without copying
    /// them: the queue keeps the arrays.
    func sendData(streamID: H2StreamID, _ first: [UInt8], _ second: [UInt8], _ third: [UInt8]) throws(H2Error) {
        if let failure { throw failure }
        guard let index = outbound.index(forKey: H2StreamKey(streamID)) else { throw .noSuchStream(streamID) }
        let limit = configuration.maxQueuedBytesPerStream
        let adding = first.count + second.count + third.count
        // One access to the stream's entry for the checks and the append (reading its fields one by one copied the
        // whole entry, queue included, for each).
        let outcome = Self.update(&outbound.values[index]) { stream -> SendOutcome in
            guard stream.hasProvider else { return .noSuchStream }
            guard case .open = stream.end else { return .closed }
            let queued = stream.queue.count
            if queued + adding > limit { return .wouldExceed(queued: queued) }
            stream.queue.append(first, second, third)
            defer {
                stream.parked = false
                stream.attached = true
            }
            return .queued(wasParked: stream.parked, wasAttached: stream.attached)
        }
        switch outcome {
        case .noSuchStream: throw .noSuchStream(streamID)
        case .closed: throw .streamOutboundClosed(streamID)
        case .wouldExceed(let queued): throw .wouldExceed(queued: queued, adding: adding, limit: limit)
        case .queued(let wasParked, let wasAttached):
            totalQueuedBytes += adding
            if wasParked {
                _ = nghttp2_session_resume_data(session, streamID)
            } else if !wasAttached {
                try attachProvider(streamID: streamID)
            }
        }
    }

    private enum SendOutcome {
        case noSuchStream
        case closed
        case wouldExceed(queued: Int)
        case queued(wasParked: Bool, wasAttached: Bool)
    }

    /// Attaches a data provider to a stream whose previous one detached (see the type's comment).
    private func attachProvider(streamID: H2StreamID) throws(H2Error) {
        var provider = Self.dataProvider()
        // END_STREAM allows the provider's EOF to end the stream (as a request's or response's own provider does);
        // NO_END_STREAM on every EOF that does not end it keeps it open.
        let rc = nghttp2_submit_data(session, UInt8(NGHTTP2_FLAG_END_STREAM.rawValue), streamID, &provider)
        guard rc == 0 else {
            // Not expected (nghttp2 detached the last provider before its send returned); the session cannot
            // deliver this stream's data in order any more, so it fails rather than drop or reorder bytes.
            let error = H2Error.sessionFailed(code: rc, reason: Self.describe(rc))
            fail(error)
            throw error
        }
    }

    func finishOutbound(streamID: H2StreamID, trailers: [H2Header]?) throws(H2Error) {
        if let failure { throw failure }
        guard var stream = outbound[H2StreamKey(streamID)], stream.hasProvider else { throw .noSuchStream(streamID) }
        guard case .open = stream.end else { throw .streamOutboundClosed(streamID) }
        stream.end = trailers.map { .trailers($0) } ?? .endStream
        let wasParked = stream.parked
        let wasAttached = stream.attached
        stream.parked = false
        // Without a provider the queue is empty (data attaches one): trailers go straight out; a plain end needs a
        // provider for its empty END_STREAM DATA frame.
        stream.attached = wasAttached || trailers == nil
        outbound[H2StreamKey(streamID)] = stream
        if wasParked {
            _ = nghttp2_session_resume_data(session, streamID)
        } else if !wasAttached {
            if let trailers {
                try submitTrailers(trailers, streamID: streamID)
            } else {
                try attachProvider(streamID: streamID)
            }
        }
    }

    /// The stream's trailers (HEADERS with END_STREAM), after whatever DATA is already queued in nghttp2.
    private func submitTrailers(_ trailers: [H2Header], streamID: H2StreamID) throws(H2Error) {
        let rc = withNameValues(trailers) { nva, count in nghttp2_submit_trailer(session, streamID, nva, count) }
        guard rc == 0 else { throw .sessionFailed(code: rc, reason: Self.describe(rc)) }
    }

    func resetStream(streamID: H2StreamID, errorCode: H2ErrorCode) throws(H2Error) {
        if let failure { throw failure }
        let rc = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, errorCode.rawValue)
        guard rc == 0 else { throw .sessionFailed(code: rc, reason: Self.describe(rc)) }
        if var stream = outbound[H2StreamKey(streamID)] {
            // Nothing queued will be sent any more; release it now rather than at close.
            totalQueuedBytes -= stream.queue.count
            stream.queue = ByteQueue()
            outbound[H2StreamKey(streamID)] = stream
        }
    }

    func submitGoAway(errorCode: H2ErrorCode, graceful: Bool) {
        guard failure == nil else { return }
        if graceful, isServer {
            // Lets in-flight calls finish: the last-stream-id is the highest stream already opened.
            let lastStreamID = nghttp2_session_get_last_proc_stream_id(session)
            _ = nghttp2_submit_goaway(
                session, UInt8(NGHTTP2_FLAG_NONE.rawValue), lastStreamID, errorCode.rawValue, nil, 0)
        } else {
            _ = nghttp2_session_terminate_session(session, errorCode.rawValue)
        }
    }

    /// The delegate has processed `count` bytes of DATA received on `streamID`: they count again towards the windows
    /// the peer may fill (nghttp2 sends WINDOW_UPDATE once enough has been consumed).
    func consume(streamID: H2StreamID, count: Int) {
        guard failure == nil, count > 0 else { return }
        if nghttp2_session_consume(session, streamID, count) != 0 {
            // The stream is already gone: its bytes still count for the connection.
            _ = nghttp2_session_consume_connection(session, count)
        }
    }

    /// Two-step graceful shutdown (RFC 9113 §6.8): a GOAWAY with last-stream-id 2^31-1 warns the client at once;
    /// one round trip later (our PING's ACK) the final GOAWAY names the last stream processed, so a request already
    /// in flight when the warning left is still served rather than refused.
    func beginGracefulShutdown() {
        guard failure == nil, isServer, !awaitingShutdownPing else { return }
        guard nghttp2_submit_shutdown_notice(session) == 0 else {
            submitGoAway(errorCode: .noError, graceful: true)
            return
        }
        awaitingShutdownPing = true
        _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
    }

    func queuedBytes(streamID: H2StreamID) -> Int {
        guard let index = outbound.index(forKey: H2StreamKey(streamID)) else { return 0 }
        return outbound.values[index].queue.count
    }
    var openStreamCount: Int { Set(outbound.keys).union(inbound.keys).count }

    /// How many bytes the peer currently lets us send on the stream (min of stream and connection windows).
    func sendWindow(streamID: H2StreamID) -> Int {
        let stream = nghttp2_session_get_stream_remote_window_size(session, streamID)
        let connection = nghttp2_session_get_remote_window_size(session)
        return Int(max(0, min(stream, connection)))
    }

    // MARK: Callback bodies (called from C; never throw)

    fileprivate func onBeginHeaders(streamID: H2StreamID) {
        if inbound[H2StreamKey(streamID)] == nil { inbound[H2StreamKey(streamID)] = InboundStream() }
        inbound[H2StreamKey(streamID)]?.headers.removeAll()
        inbound[H2StreamKey(streamID)]?.headerListBytes = 0
    }

    /// Collects one header field, bounded by `maxHeaderListSize`: HPACK lets a few bytes on the wire name kilobytes
    /// of table entries, so the decoded size is what is counted. A block past the bound resets its stream
    /// (ENHANCE_YOUR_CALM, which gRPC clients map to RESOURCE_EXHAUSTED) and nothing more of it is kept.
    fileprivate func onHeader(streamID: H2StreamID, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>)
    {
        guard inbound[H2StreamKey(streamID)]?.headerListExceeded == false,
            let used = inbound[H2StreamKey(streamID)]?.headerListBytes
        else {
            return
        }
        let size = used + name.count + value.count + 32
        guard size <= Int(configuration.maxHeaderListSize) else {
            inbound[H2StreamKey(streamID)]?.headers = []
            inbound[H2StreamKey(streamID)]?.headerListExceeded = true
            _ = nghttp2_submit_rst_stream(
                session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, H2ErrorCode.enhanceYourCalm.rawValue)
            callbackDelegate?.h2LimitExceeded(.headerListSize, streamID: streamID)
            return
        }
        inbound[H2StreamKey(streamID)]?.headerListBytes = size
        inbound[H2StreamKey(streamID)]?.headers.append(
            H2Header(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }

    fileprivate func onHeadersFrame(streamID: H2StreamID, endStream: Bool) {
        guard var stream = inbound[H2StreamKey(streamID)], !stream.headerListExceeded else { return }
        let headers = stream.headers
        stream.headers = []
        let kind: H2HeaderBlockKind =
            stream.headerBlocks == 0 ? (isServer ? .request : .response) : .trailers
        stream.headerBlocks += 1
        inbound[H2StreamKey(streamID)] = stream
        callbackDelegate?.h2HeadersReceived(streamID: streamID, headers: headers, kind: kind, endStream: endStream)
    }

    fileprivate func onData(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>) {
        callbackDelegate?.h2DataReceived(streamID: streamID, bytes: bytes, endStream: false)
    }

    fileprivate func onDataFrameEnd(streamID: H2StreamID) {
        callbackDelegate?.h2DataReceived(
            streamID: streamID, bytes: UnsafeBufferPointer(start: nil, count: 0), endStream: true)
    }

    fileprivate func onStreamClose(streamID: H2StreamID, errorCode: UInt32) {
        let known = inbound.removeValue(forKey: H2StreamKey(streamID)) != nil
        let removedOut = outbound.removeValue(forKey: H2StreamKey(streamID))
        totalQueuedBytes -= removedOut?.queue.count ?? 0
        let knownOut = removedOut != nil
        if known || knownOut {
            callbackDelegate?.h2StreamClosed(streamID: streamID, errorCode: H2ErrorCode(rawValue: errorCode))
        }
    }

    /// A server that has sent its complete response while the request is still open asks the client to stop
    /// sending with RST_STREAM(NO_ERROR) (RFC 9113 §8.1), so a finished call frees its stream at once.
    fileprivate func onFrameSent(streamID: H2StreamID, endStream: Bool) {
        guard isServer, endStream, streamID > 0 else { return }
        if nghttp2_session_get_stream_remote_close(session, streamID) == 0 {
            _ = nghttp2_submit_rst_stream(
                session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, H2ErrorCode.noError.rawValue)
        }
    }

    fileprivate func notePeerSettings() { prefaceReceived = true }

    /// nghttp2 refused a frame on its own; the refusals that cross one of our bounds are reported.
    fileprivate func onInvalidFrame(streamID: H2StreamID, libraryError: Int32) {
        if libraryError == NGHTTP2_ERR_REFUSED_STREAM.rawValue {
            // HEADERS past SETTINGS_MAX_CONCURRENT_STREAMS: nghttp2 has queued RST_STREAM(REFUSED_STREAM).
            callbackDelegate?.h2LimitExceeded(.concurrentStreams, streamID: streamID)
        }
    }

    fileprivate func onPingAck() {
        guard awaitingShutdownPing else { return }
        awaitingShutdownPing = false
        submitGoAway(errorCode: .noError, graceful: true)
    }

    fileprivate func onGoAway(lastStreamID: H2StreamID, errorCode: UInt32) {
        callbackDelegate?.h2GoAwayReceived(lastStreamID: lastStreamID, errorCode: H2ErrorCode(rawValue: errorCode))
    }

    /// Fills `buffer` from the stream's queue; returns bytes written or a negative nghttp2 code.
    fileprivate func readOutbound(
        streamID: H2StreamID, buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: inout UInt32
    ) -> Int {
        guard let index = outbound.index(forKey: H2StreamKey(streamID)) else {
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        // One access to the stream's entry for the read and what follows from it.
        let (wasNonEmpty, written, isEmpty, end) = Self.update(&outbound.values[index]) { stream in
            let wasNonEmpty = stream.queue.count > 0
            let written = stream.queue.read(into: buffer, maxCount: length)
            let isEmpty = stream.queue.count == 0
            if isEmpty, written == 0, case .open = stream.end { stream.parked = true }
            return (wasNonEmpty, written, isEmpty, stream.end)
        }
        totalQueuedBytes -= written
        if isEmpty {
            switch end {
            case .open:
                if written == 0 {
                    if wasNonEmpty { drainedStreams.append(streamID) }
                    return Int(NGHTTP2_ERR_DEFERRED.rawValue)
                }
                // This frame empties the queue: the provider detaches after it (the next data attaches one).
                flags |= NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                outbound.values[index].attached = false
            case .endStream:
                flags |= NGHTTP2_DATA_FLAG_EOF.rawValue
            case .trailers(let trailers):
                flags |= NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                do throws(H2Error) {
                    try submitTrailers(trailers, streamID: streamID)
                } catch {
                    callbackError = error
                    return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
                }
            }
            if wasNonEmpty { drainedStreams.append(streamID) }
        }
        return written
    }

    /// Runs `body` on one stream's entry in place: a single access, where reading and writing fields of
    /// `outbound.values[index]` one by one is an access (and an exclusivity check) each.
    @inline(__always)
    private static func update<R>(_ stream: inout OutboundStream, _ body: (inout OutboundStream) -> R) -> R {
        body(&stream)
    }

    // MARK: C plumbing

    private static func dataProvider() -> nghttp2_data_provider {
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, streamID, buffer, length, flags, _, userData in
            guard let userData, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            return core.readOutbound(streamID: streamID, buffer: buffer, length: length, flags: &flags.pointee)
        }
        return provider
    }

    private func installCallbacks(_ callbacks: OpaquePointer?) {
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            core.onBeginHeaders(streamID: frame.pointee.hd.stream_id)
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) {
            _, frame, name, nameLength, value, valueLength, _, userData in
            guard let frame, let userData, let name, let value else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            core.onHeader(
                streamID: frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: nameLength),
                value: UnsafeBufferPointer(start: value, count: valueLength))
            return 0
        }
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks) { _, frame, libraryError, userData in
            guard let frame, let userData else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            core.onInvalidFrame(streamID: frame.pointee.hd.stream_id, libraryError: libraryError)
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            let header = frame.pointee.hd
            let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch UInt32(header.type) {
            case NGHTTP2_HEADERS.rawValue:
                core.onHeadersFrame(streamID: header.stream_id, endStream: endStream)
            case NGHTTP2_DATA.rawValue where endStream:
                core.onDataFrameEnd(streamID: header.stream_id)
            case NGHTTP2_SETTINGS.rawValue where header.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0:
                core.notePeerSettings()
            case NGHTTP2_PING.rawValue where header.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0:
                core.onPingAck()
            case NGHTTP2_GOAWAY.rawValue:
                let goaway = frame.pointee.goaway
                core.onGoAway(lastStreamID: goaway.last_stream_id, errorCode: goaway.error_code)
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            let header = frame.pointee.hd
            let type = UInt32(header.type)
            guard type == NGHTTP2_HEADERS.rawValue || type == NGHTTP2_DATA.rawValue else { return 0 }
            let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            core.onFrameSent(streamID: header.stream_id, endStream: endStream)
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) {
            _, _, streamID, data, length, userData in
            guard let userData, let data else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            core.onData(streamID: streamID, bytes: UnsafeBufferPointer(start: data, count: length))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            guard let userData else { return 0 }
            let core = Unmanaged<H2SessionCore>.fromOpaque(userData).takeUnretainedValue()
            core.onStreamClose(streamID: streamID, errorCode: errorCode)
            return 0
        }
    }
}

/// Calls `body` with an `nghttp2_nv` array pointing into one contiguous copy of the headers.
/// nghttp2 copies name/value pairs during `submit_*`, so the storage only has to outlive the call.
private func withNameValues<R>(_ headers: [H2Header], _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
    var storage: [UInt8] = []
    var ranges: [(name: Range<Int>, value: Range<Int>)] = []
    for header in headers {
        let nameStart = storage.count
        storage.append(contentsOf: header.name.utf8)
        let valueStart = storage.count
        storage.append(contentsOf: header.value.utf8)
        ranges.append((nameStart..<valueStart, valueStart..<storage.count))
    }
    storage.append(0)  // never empty, so baseAddress exists
    return storage.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress!
        let nva = ranges.map { range in
            nghttp2_nv(
                name: base + range.name.lowerBound, value: base + range.value.lowerBound,
                namelen: range.name.count, valuelen: range.value.count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        }
        return nva.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
    }
}
