/// What both ends of one HTTP/2 connection do alike, as a byte transducer: feed what the socket read to
/// `receive`, write what `takeOutput` returns. Not thread-safe: one owner drives it.
///
/// The shared part of `H2ServerSession` and `H2ClientSession`; only those two subclass it (it is `public`, not
/// `open`: a public class cannot inherit from an internal one).
public class H2Endpoint {
    let core: H2SessionCore

    init(isServer: Bool, configuration: H2Configuration, delegate: (any H2SessionDelegate)?) {
        core = H2SessionCore(isServer: isServer, configuration: configuration)
        core.delegate = delegate
    }

    /// Receives events; held weakly (the delegate usually owns the session).
    public var delegate: (any H2SessionDelegate)? {
        get { core.delegate }
        set { core.delegate = newValue }
    }

    public var configuration: H2Configuration { core.configuration }

    // MARK: Bytes

    /// Feeds bytes read from the peer; delegate events fire synchronously. Throws once the connection is broken
    /// (then flush `takeOutput` for a GOAWAY, if any, and close).
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(H2Error) { try core.receive(bytes) }

    public func receive(_ bytes: [UInt8]) throws(H2Error) {
        var failure: H2Error?
        bytes.withUnsafeBytes { raw in
            do throws(H2Error) { try core.receive(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Appends pending output (at most about `maxBytes`; whole nghttp2 chunks) to `buffer`; returns the count added.
    @discardableResult
    public func takeOutput(into buffer: inout [UInt8], maxBytes: Int = .max) -> Int {
        core.takeOutput(into: &buffer, maxBytes: maxBytes)
    }

    /// All pending output.
    public func takeOutput() -> [UInt8] {
        var output: [UInt8] = []
        core.takeOutput(into: &output, maxBytes: .max)
        return output
    }

    public var wantsRead: Bool { core.wantsRead }
    public var wantsWrite: Bool { core.wantsWrite }
    /// Neither side has anything more to say: close the socket.
    public var isClosed: Bool { core.isClosed }
    /// The error that broke the session, if any.
    public var failure: H2Error? { core.failure }

    // MARK: Streams

    /// Queues body bytes; they leave as the peer's flow-control window allows. Throws `.wouldExceed` if the
    /// stream's queue would pass `maxQueuedBytesPerStream` (nothing is queued then).
    /// The arrays are queued as they are, not copied: `then` and `last` follow `bytes` in the same piece of data
    /// (a gRPC prefix, a body shared by many streams, a stream's own tail).
    public func sendData(
        streamID: H2StreamID, bytes: [UInt8], then: [UInt8] = [], _ last: [UInt8] = []
    ) throws(H2Error) {
        try core.sendData(streamID: streamID, bytes, then, last)
    }

    /// Hands `count` received DATA bytes of `streamID` back to flow control: the peer may send that much more.
    /// Call it once they are processed (buffered within a bound, or dropped); bytes never consumed stop the peer.
    public func consume(streamID: H2StreamID, count: Int) { core.consume(streamID: streamID, count: count) }

    /// The peer's connection preface (its first SETTINGS) has arrived.
    public var prefaceReceived: Bool { core.prefaceReceived }

    public func queuedBytes(streamID: H2StreamID) -> Int { core.queuedBytes(streamID: streamID) }
    public var totalQueuedBytes: Int { core.totalQueuedBytes }
    /// Bytes the peer's flow-control windows currently allow on `streamID`.
    public func sendWindow(streamID: H2StreamID) -> Int { core.sendWindow(streamID: streamID) }
    public var openStreamCount: Int { core.openStreamCount }
}

/// The server end of one HTTP/2 connection (see `H2Endpoint`). Queues its SETTINGS at creation so the handshake
/// completes on the first flush.
public final class H2ServerSession: H2Endpoint {
    public init(configuration: H2Configuration = H2Configuration(), delegate: (any H2SessionDelegate)? = nil) {
        super.init(isServer: true, configuration: configuration, delegate: delegate)
    }

    /// Sends the response HEADERS. With `endStream` the response is complete (trailers-only in gRPC terms);
    /// otherwise data and trailers follow via `sendData` / `sendTrailers`.
    public func sendResponseHeaders(streamID: H2StreamID, headers: [H2Header], endStream: Bool) throws(H2Error) {
        try core.submitResponse(streamID: streamID, headers: headers, endStream: endStream)
    }

    /// Ends the response with trailers once all queued data has been sent.
    public func sendTrailers(streamID: H2StreamID, trailers: [H2Header]) throws(H2Error) {
        try core.finishOutbound(streamID: streamID, trailers: trailers)
    }

    public func resetStream(streamID: H2StreamID, errorCode: H2ErrorCode) throws(H2Error) {
        try core.resetStream(streamID: streamID, errorCode: errorCode)
    }

    /// Graceful: GOAWAY carrying the last stream already opened, so those streams finish and no new one starts.
    /// Not graceful: GOAWAY with last-stream-id of the last processed stream and the session closes after it.
    public func sendGoAway(errorCode: H2ErrorCode = .noError, graceful: Bool = true) {
        core.submitGoAway(errorCode: errorCode, graceful: graceful)
    }

    /// Two-step graceful GOAWAY: first last-stream-id 2^31-1 (new requests stop), then, once our PING comes back
    /// (one round trip, so requests in flight have arrived), the final GOAWAY with the last stream processed.
    /// Streams already open finish normally; the session closes when they have.
    public func beginGracefulShutdown() {
        core.beginGracefulShutdown()
    }
}

/// The client end of one HTTP/2 connection (see `H2Endpoint`). Queues the connection preface and SETTINGS at
/// creation.
public final class H2ClientSession: H2Endpoint {
    public init(configuration: H2Configuration = H2Configuration(), delegate: (any H2SessionDelegate)? = nil) {
        super.init(isServer: false, configuration: configuration, delegate: delegate)
    }

    /// Opens a stream with request `headers` (pseudo-headers first). Without `endStream`, the body follows via
    /// `sendData` and ends with `closeSend`.
    public func startRequest(headers: [H2Header], endStream: Bool = false) throws(H2Error) -> H2StreamID {
        try core.submitRequest(headers: headers, endStream: endStream)
    }

    /// Ends the request body (END_STREAM after queued data).
    public func closeSend(streamID: H2StreamID) throws(H2Error) {
        try core.finishOutbound(streamID: streamID, trailers: nil)
    }

    public func resetStream(streamID: H2StreamID, errorCode: H2ErrorCode = .cancel) throws(H2Error) {
        try core.resetStream(streamID: streamID, errorCode: errorCode)
    }

    /// Tells the server we are going away; the session closes once the GOAWAY is flushed.
    public func sendGoAway(errorCode: H2ErrorCode = .noError) {
        core.submitGoAway(errorCode: errorCode, graceful: false)
    }
}
