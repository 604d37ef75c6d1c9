/// A stream identifier as HTTP/2 numbers it (odd: client-initiated).
public typealias H2StreamID = Int32

/// A stream identifier as a dictionary key (the per-stream tables of H2 and gRPC), hashed with one 64-bit
/// finalizer round instead of SipHash: an `Int32` key costs ~110 instructions of SipHash-1-3 a lookup, and a
/// push makes four or five lookups a stream on each side. The dictionary's seed (random per process and per
/// table) goes into the mix, so a peer choosing stream IDs cannot aim them at one bucket; and a table never holds
/// more streams than SETTINGS_MAX_CONCURRENT_STREAMS allows.
public struct H2StreamKey: Hashable, Sendable {
    public let id: H2StreamID

    @inline(__always)
    public init(_ id: H2StreamID) { self.id = id }

    public func hash(into hasher: inout Hasher) { hasher.combine(id) }

    /// What `Dictionary` and `Set` hash with (`finalizerHash` of the ID).
    @inline(__always)
    public func _rawHashValue(seed: Int) -> Int { Self.finalizerHash(UInt64(UInt32(bitPattern: id)), seed: seed) }

    /// MurmurHash3's fmix64 over `value` and a table's per-process seed: one round instead of SipHash, for keys
    /// that are a number only (stream IDs, object addresses) looked up several times a stream on every push.
    @inline(__always)
    public static func finalizerHash(_ value: UInt64, seed: Int) -> Int {
        var x = value ^ UInt64(bitPattern: Int64(seed))
        x ^= x >> 33
        x &*= 0xff51_afd7_ed55_8ccd
        x ^= x >> 33
        x &*= 0xc4ce_b9fe_1a85_ec53
        x ^= x >> 33
        return Int(bitPattern: UInt(x))
    }
}

/// One header field. Names are lower-case as HTTP/2 requires; pseudo-headers start with ":".
public struct H2Header: Sendable, Equatable, Hashable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

extension Array where Element == H2Header {
    /// The first value of `name`, if present.
    public func value(for name: String) -> String? {
        first { $0.name == name }?.value
    }
}

/// An HTTP/2 error code (RFC 9113 §7) as carried by RST_STREAM and GOAWAY.
public struct H2ErrorCode: RawRepresentable, Sendable, Equatable, Hashable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let noError = H2ErrorCode(rawValue: 0x0)
    public static let protocolError = H2ErrorCode(rawValue: 0x1)
    public static let internalError = H2ErrorCode(rawValue: 0x2)
    public static let flowControlError = H2ErrorCode(rawValue: 0x3)
    public static let settingsTimeout = H2ErrorCode(rawValue: 0x4)
    public static let streamClosed = H2ErrorCode(rawValue: 0x5)
    public static let frameSizeError = H2ErrorCode(rawValue: 0x6)
    public static let refusedStream = H2ErrorCode(rawValue: 0x7)
    public static let cancel = H2ErrorCode(rawValue: 0x8)
    public static let compressionError = H2ErrorCode(rawValue: 0x9)
    public static let connectError = H2ErrorCode(rawValue: 0xa)
    public static let enhanceYourCalm = H2ErrorCode(rawValue: 0xb)
    public static let inadequateSecurity = H2ErrorCode(rawValue: 0xc)
    public static let http11Required = H2ErrorCode(rawValue: 0xd)

    public var description: String { "H2ErrorCode(0x\(String(rawValue, radix: 16)))" }
}

/// Why an H2 operation failed.
public enum H2Error: Error, Sendable, Equatable {
    /// nghttp2 rejected the bytes or a frame; the connection is unusable and should be closed
    /// once `takeOutput` has flushed any GOAWAY it produced.
    case sessionFailed(code: Int32, reason: String)
    /// The stream is unknown or already closed on our side.
    case noSuchStream(H2StreamID)
    /// Queuing the data would push the stream's outbound queue past `maxQueuedBytesPerStream`:
    /// the peer is not reading fast enough. Nothing was queued; retry after `outboundQueueDrained`.
    case wouldExceed(queued: Int, adding: Int, limit: Int)
    /// The stream's outbound side is already finished (trailers or end-of-stream submitted).
    case streamOutboundClosed(H2StreamID)
    /// The session refused a new stream (GOAWAY received/sent, or stream IDs exhausted).
    case refused(reason: String)
}

/// What kind of header block arrived.
public enum H2HeaderBlockKind: Sendable, Equatable {
    /// The first header block of a client-initiated stream (server side).
    case request
    /// The first header block of a response (client side); may be trailers-only when `endStream` is set.
    case response
    /// A header block after data: trailers (always ends the stream).
    case trailers
}

/// Events from an H2 session, delivered synchronously from inside `receive` (and, for stream closure
/// caused by our own frames, from inside `takeOutput`). The delegate may call back into the session.
public protocol H2SessionDelegate: AnyObject {
    func h2HeadersReceived(streamID: H2StreamID, headers: [H2Header], kind: H2HeaderBlockKind, endStream: Bool)
    /// `bytes` may be empty when only the end-of-stream flag arrives. They are nghttp2's, valid only during the
    /// call: copy what must outlive it (a gRPC decoder copies a message once, into the message it delivers; the
    /// session no longer copies every DATA chunk into an array first). Flow control follows consumption: call
    /// `consume(streamID:count:)` on the session once the bytes are processed, or the peer stops being allowed
    /// to send (after the stream's, then the connection's, window).
    func h2DataReceived(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>, endStream: Bool)
    /// The stream is gone: `errorCode` is `.noError` for a normal close, else the RST_STREAM code
    /// (sent or received) or the connection's failure.
    func h2StreamClosed(streamID: H2StreamID, errorCode: H2ErrorCode)
    func h2GoAwayReceived(lastStreamID: H2StreamID, errorCode: H2ErrorCode)
    /// The stream's outbound queue became empty: the peer has taken everything we queued.
    /// Callers applying backpressure resume producing here.
    func h2OutboundQueueDrained(streamID: H2StreamID)
    /// The peer crossed `limit` on `streamID`; the session has already refused or reset the stream.
    func h2LimitExceeded(_ limit: H2Limit, streamID: H2StreamID)
}

extension H2SessionDelegate {
    public func h2GoAwayReceived(lastStreamID: H2StreamID, errorCode: H2ErrorCode) {}
    public func h2OutboundQueueDrained(streamID: H2StreamID) {}
    public func h2LimitExceeded(_ limit: H2Limit, streamID: H2StreamID) {}
}

/// Tunables of a session, and the bounds it enforces on what a peer sends. Defaults fit gRPC over a local socket
/// with one peer process per connection (Envoy's SDS client, a Workload API server).
public struct H2Configuration: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise; nghttp2 refuses HEADERS past it with RST_STREAM(REFUSED_STREAM).
    /// Envoy opens one SDS stream per secret name per connection — a sidecar subscribes a handful (`default`,
    /// `ROOTCA`, a few file-backed names) — so 128 leaves more than ten times that, while capping what one connection
    /// can make the agent hold (each open call keeps its headers and a request buffer).
    public var maxConcurrentStreams: UInt32 = 128
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise (per stream inbound window).
    public var initialWindowSize: UInt32 = 1 << 20
    /// Connection-level inbound window we grow to at start.
    public var connectionWindowSize: Int32 = 1 << 24
    /// Bound on bytes queued (not yet taken by nghttp2 because of flow control or pacing) per stream.
    /// `sendData` refuses with `.wouldExceed` past this: a slow reader cannot make us buffer without bound.
    public var maxQueuedBytesPerStream: Int = 8 << 20
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise, and enforce on the decoded header block (name + value + 32 per
    /// field): a block past it resets its stream with ENHANCE_YOUR_CALM. 16 KiB is gRPC core's hard limit; the
    /// headers of an SDS or Workload API request are a few hundred bytes (the ~61 KB Node travels in DATA).
    public var maxHeaderListSize: UInt32 = 16 << 10
    /// CONTINUATION frames allowed after one HEADERS frame; one more fails the connection (GOAWAY, close). A header
    /// block within `maxHeaderListSize` fits in one or two 16 KiB frames; 8 is nghttp2's own default, stated here so
    /// a CONTINUATION flood (HEADERS without END_HEADERS, then endless CONTINUATION) has a visible bound.
    public var maxContinuations: Int = 8
    /// Our HPACK encoder's dynamic table, whatever larger SETTINGS_HEADER_TABLE_SIZE the peer advertises: a peer
    /// cannot make us keep more header state per connection than this. (The decoder's table is bounded by the
    /// SETTINGS_HEADER_TABLE_SIZE we advertise, HTTP/2's default 4 KiB.)
    public var maxEncoderTableSize: Int = 4096
    /// Token bucket for RST_STREAM from a client (server only): `streamResetBurst` at once, refilled by
    /// `streamResetRatePerSecond`; a client resetting faster gets GOAWAY. A peer that opens and cancels streams in a
    /// loop (HTTP/2 "rapid reset") otherwise makes the server start and tear down calls for free. nghttp2's
    /// defaults: Envoy resets an SDS stream only when a subscription goes away.
    public var streamResetBurst: UInt64 = 1000
    public var streamResetRatePerSecond: UInt64 = 33

    public init() {}
}

/// A bound a peer crossed that the session handled on its own (the stream was refused or reset); reported to the
/// delegate so the owner can log it.
public enum H2Limit: String, Sendable, Equatable, Hashable, CaseIterable {
    /// HEADERS past SETTINGS_MAX_CONCURRENT_STREAMS: RST_STREAM(REFUSED_STREAM).
    case concurrentStreams = "concurrent streams"
    /// A header block larger than `maxHeaderListSize`: RST_STREAM(ENHANCE_YOUR_CALM).
    case headerListSize = "header list size"
}
