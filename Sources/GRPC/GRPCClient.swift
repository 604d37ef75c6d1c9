public import H2

/// One client-side call. Callbacks run synchronously on the thread driving the connection.
public final class GRPCClientCall {
    public let path: String
    public let streamID: H2StreamID

    /// A complete response message.
    public var onMessage: (([UInt8]) -> Void)?
    /// The call is over: status from the trailers (or synthesized on RST / connection loss), plus every
    /// trailer field (and, for trailers-only responses, the headers) as received.
    public var onFinish: ((GRPCStatus, [(String, String)]) -> Void)?
    /// The outbound queue drained: a good time to send more.
    public var onWritable: (() -> Void)?

    /// Response headers other than pseudo-headers, once received.
    public private(set) var responseMetadata: [(String, String)] = []
    public private(set) var finishedStatus: GRPCStatus?

    weak var connection: GRPCClientConnection?
    var decoder: GRPCMessageDecoder
    var sendClosed = false

    init(streamID: H2StreamID, path: String, maxMessageBytes: Int) {
        self.streamID = streamID
        self.path = path
        self.decoder = GRPCMessageDecoder(maxMessageBytes: maxMessageBytes)
    }

    public var isFinished: Bool { finishedStatus != nil }

    /// Frames and queues one request message: `message` followed by `tail`, both queued as they are (not copied).
    @discardableResult
    public func send(_ message: [UInt8], then tail: [UInt8] = []) -> GRPCSendResult {
        guard let connection, !sendClosed, !isFinished else { return .closed }
        do throws(H2Error) {
            try connection.session.sendData(
                streamID: streamID, bytes: connection.prefixes.prefix(length: message.count + tail.count),
                then: message, tail)
            return .queued
        } catch .wouldExceed {
            return .wouldExceed
        } catch {
            return .closed
        }
    }

    /// Half-closes: no more request messages.
    public func closeSend() {
        guard let connection, !sendClosed, !isFinished else { return }
        sendClosed = true
        try? connection.session.closeSend(streamID: streamID)
    }

    /// Cancels the call (RST_STREAM CANCEL); `onFinish` reports CANCELLED.
    public func cancel() {
        guard let connection, !isFinished else { return }
        try? connection.session.resetStream(streamID: streamID, errorCode: .cancel)
        connection.complete(self, status: GRPCStatus(.cancelled, "cancelled by client"), trailers: [])
    }

    func complete(status: GRPCStatus, trailers: [(String, String)]) {
        guard finishedStatus == nil else { return }
        finishedStatus = status
        let onFinish = self.onFinish
        // Callers capture the call in these closures; dropping them once it is over breaks that cycle.
        self.onMessage = nil
        self.onFinish = nil
        self.onWritable = nil
        onFinish?(status, trailers)
    }

    func setResponseMetadata(_ metadata: [(String, String)]) { responseMetadata = metadata }
}

/// The gRPC client side of one HTTP/2 connection. Owns its `H2ClientSession`: the transport feeds
/// `session.receive(_:)` and flushes `session.takeOutput()`.
public final class GRPCClientConnection: H2SessionDelegate {
    public let session: H2ClientSession
    public let authority: String
    /// `:scheme`: `http` over plaintext, `https` over TLS.
    public let scheme: String
    public let maxMessageBytes: Int
    private var calls: [H2StreamKey: GRPCClientCall] = [:]
    var prefixes = GRPCMessageFraming.Cache()
    /// Set when the server sent GOAWAY: new calls are refused.
    public private(set) var goAwayReceived = false

    public init(
        authority: String = "localhost", scheme: String = "http", configuration: H2Configuration = H2Configuration(),
        maxMessageBytes: Int = GRPCMessageFraming.defaultMaxMessageBytes
    ) {
        self.authority = authority
        self.scheme = scheme
        self.maxMessageBytes = maxMessageBytes
        self.session = H2ClientSession(configuration: configuration)
        self.session.delegate = self
    }

    public var activeCallCount: Int { calls.count }

    /// Starts a call to `path` (e.g. `/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`) with extra
    /// request `metadata` (e.g. `("workload.spiffe.io", "true")`). Messages follow with `send`, then `closeSend`.
    public func startCall(path: String, metadata: [(String, String)] = []) throws(GRPCStatus) -> GRPCClientCall {
        if goAwayReceived { throw GRPCStatus(.unavailable, "connection is going away") }
        var headers = [
            H2Header(":method", "POST"), H2Header(":scheme", scheme), H2Header(":path", path),
            H2Header(":authority", authority), H2Header("content-type", "application/grpc"),
            H2Header("te", "trailers"),
        ]
        headers += metadata.map { H2Header($0.0.lowercased(), $0.1) }
        let streamID: H2StreamID
        do throws(H2Error) {
            streamID = try session.startRequest(headers: headers, endStream: false)
        } catch {
            throw GRPCStatus(.unavailable, "cannot open stream: \(error)")
        }
        let call = GRPCClientCall(streamID: streamID, path: path, maxMessageBytes: maxMessageBytes)
        call.connection = self
        calls[H2StreamKey(streamID)] = call
        return call
    }

    /// The connection is gone: every open call finishes with UNAVAILABLE.
    public func connectionLost() {
        let open = calls
        calls.removeAll()
        for call in open.values { call.complete(status: GRPCStatus(.unavailable, "connection lost"), trailers: []) }
    }

    func complete(_ call: GRPCClientCall, status: GRPCStatus, trailers: [(String, String)]) {
        calls.removeValue(forKey: H2StreamKey(call.streamID))
        call.complete(status: status, trailers: trailers)
    }

    // MARK: H2SessionDelegate

    public func h2HeadersReceived(streamID: H2StreamID, headers: [H2Header], kind: H2HeaderBlockKind, endStream: Bool) {
        guard let call = calls[H2StreamKey(streamID)] else { return }
        let fields = headers.filter { !$0.name.hasPrefix(":") }.map { ($0.name, $0.value) }
        switch kind {
        case .response, .request:
            call.setResponseMetadata(fields)
            let httpStatus = headers.value(for: ":status")
            if endStream {
                // Trailers-only response.
                complete(call, status: Self.status(httpStatus: httpStatus, fields: fields), trailers: fields)
            } else if httpStatus != "200" {
                complete(call, status: Self.status(httpStatus: httpStatus, fields: []), trailers: fields)
                try? session.resetStream(streamID: streamID, errorCode: .cancel)
            }
        case .trailers:
            complete(call, status: GRPCStatus(trailers: fields), trailers: fields)
        }
    }

    public func h2DataReceived(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>, endStream: Bool) {
        // Decoded (within the message bound) or dropped before this returns: hand the bytes back to flow control.
        defer { session.consume(streamID: streamID, count: bytes.count) }
        guard let call = calls[H2StreamKey(streamID)] else { return }
        do throws(GRPCStatus) {
            for message in try call.decoder.feed(bytes) {
                call.onMessage?(message)
                // The callback may have cancelled the call.
                if call.isFinished { return }
            }
        } catch {
            complete(call, status: error, trailers: [])
            try? session.resetStream(streamID: streamID, errorCode: .cancel)
            return
        }
        // A response must end with trailers; END_STREAM on DATA means the server broke off.
        if endStream {
            complete(call, status: GRPCStatus(.internal, "stream ended without trailers"), trailers: [])
        }
    }

    public func h2StreamClosed(streamID: H2StreamID, errorCode: H2ErrorCode) {
        guard let call = calls.removeValue(forKey: H2StreamKey(streamID)) else { return }
        let status =
            errorCode == .refusedStream
            ? GRPCStatus(.unavailable, "stream refused") : GRPCStatus(.cancelled, "stream reset (\(errorCode))")
        call.complete(status: status, trailers: [])
    }

    public func h2GoAwayReceived(lastStreamID: H2StreamID, errorCode: H2ErrorCode) {
        goAwayReceived = true
    }

    public func h2OutboundQueueDrained(streamID: H2StreamID) {
        calls[H2StreamKey(streamID)]?.onWritable?()
    }

    /// A status for a response that carried none of its own: grpc-status if present, else derived from :status
    /// per gRPC's HTTP-to-gRPC status mapping.
    static func status(httpStatus: String?, fields: [(String, String)]) -> GRPCStatus {
        if fields.contains(where: { $0.0 == "grpc-status" }) { return GRPCStatus(trailers: fields) }
        let code: GRPCStatus.Code =
            switch httpStatus {
            case "400": .internal
            case "401": .unauthenticated
            case "403": .permissionDenied
            case "404": .unimplemented
            case "429", "502", "503", "504": .unavailable
            default: .unknown
            }
        return GRPCStatus(code, "HTTP status \(httpStatus ?? "(none)")")
    }
}
