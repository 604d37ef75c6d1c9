import GRPC
import H2

/// The bounds on what a peer of the SDS socket can make the agent hold or do. The agent is one thread serving every
/// Envoy in the pod: whatever one peer can make it do, it does to all, so every input is bounded, and crossing a
/// bound costs the peer that crossed it (a refused stream or connection), never the others.
///
/// Bounds defined here (the agent's own), with the HTTP/2 ones `H2Configuration` defines and enforces:
///
/// | bound                         | default     | crossing                                   | where enforced           |
/// |-------------------------------|-------------|--------------------------------------------|--------------------------|
/// | request message size          | 1 MiB       | RESOURCE_EXHAUSTED on that stream          | GRPCMessageDecoder       |
/// | partial requests / connection | 16 MiB      | RESOURCE_EXHAUSTED on the stream crossing  | GRPCServerConnection     |
/// | connections                   | 256         | oldest idle evicted, else newcomer closed  | SDSServer                |
/// | connection preface            | 10 s        | connection closed                          | H2ConnectionDriver       |
/// | concurrent streams/connection | 128         | RST_STREAM(REFUSED_STREAM)                 | H2Configuration, nghttp2 |
/// | header list size              | 16 KiB      | RST_STREAM(ENHANCE_YOUR_CALM)              | H2Configuration, H2      |
/// | CONTINUATION frames per block | 8           | GOAWAY, connection closed                  | H2Configuration, nghttp2 |
/// | stream resets                 | 1000 + 33/s | GOAWAY, connection closed                  | H2Configuration, nghttp2 |
/// | HPACK tables                  | 4 KiB each  | (never larger, whatever the peer asks)     | H2Configuration, nghttp2 |
/// | reads per wakeup              | 4 × 64 KiB  | the rest waits for the next loop iteration | Transport.Connection     |
/// | descriptors (EMFILE)          | —           | listener paused 0.25 s or until a close    | Transport.Listener       |
///
/// Buffers grow with the bytes that arrived, never with what a length prefix announces, and HTTP/2 flow control
/// follows what the gRPC layer has processed.
public struct InboundLimits: Sendable, Equatable {
    /// Largest request message accepted (`--max-request-bytes`). SDS and Workload API requests are small: Envoy's
    /// DiscoveryRequest carries its full Node on the first request of a stream, ~61 KB with every extension listed;
    /// a Workload API request is empty. 1 MiB is 16 times the largest seen, and a quarter of gRPC's 4 MiB default.
    public var maxRequestBytes: Int = Self.defaultMaxRequestBytes
    /// Connections served at once (`--max-connections`); one more is closed right after `accept`. A pod has one
    /// Envoy (plus pilot-agent's probe and the odd sds-dump); 256 leaves room for sidecars sharing a socket while
    /// bounding what a runaway client costs: 256 connections × 128 streams.
    public var maxConnections: Int = Self.defaultMaxConnections
    /// Seconds a new connection has to send the HTTP/2 connection preface (magic and SETTINGS). Envoy and gRPC
    /// clients send it with the connect; a connection still silent after this long only holds a slot, so it is
    /// closed (a connected Envoy may stay idle forever: the clock stops once the preface is in).
    public var prefaceTimeout: Double = 10

    public static let defaultMaxRequestBytes = 1 << 20
    /// `--max-request-bytes` accepts this range: below 64 KiB Envoy's Node would not fit; above 64 MiB one stream
    /// could hold more than the agent's whole working set many times over.
    public static let maxRequestBytesRange = (64 << 10)...(64 << 20)
    public static let defaultMaxConnections = 256
    /// `--max-connections` accepts this range (above it, a flood is limited by RLIMIT_NOFILE, not by this bound).
    public static let maxConnectionsRange = 1...65_536
    /// A refusal of one cause is logged at most once per this many seconds, with how many were not logged: a flood
    /// must not turn into a log flood.
    public static let refusalLogInterval = 60.0

    public init() {}

    /// Partial request messages one connection may hold across its calls: gRPC's default (16 MiB, room for all 128
    /// streams to be midway through a 128 KiB request), or two whole messages when `--max-request-bytes` is larger.
    public var maxBufferedRequestBytesPerConnection: Int {
        max(GRPCServerConnection.defaultMaxBufferedRequestBytes, 2 * maxRequestBytes)
    }

    /// The HTTP/2 settings of an SDS connection (the H2 bounds keep the defaults documented in `H2Configuration`).
    public var h2Configuration: H2Configuration { H2Configuration() }
}

/// Decides which refusals to log: the first of a cause at once, then at most one line per `interval` per cause,
/// carrying how many went unlogged in between. Pure (time is passed in).
public struct RefusalLog: Sendable {
    public struct Entry: Sendable, Equatable {
        public let cause: String
        /// Refusals of this cause not logged since the last line (0 for the first).
        public let suppressed: Int
    }

    private var lastLogged: [String: Double] = [:]
    private var unlogged: [String: Int] = [:]
    public let interval: Double

    public init(interval: Double = InboundLimits.refusalLogInterval) {
        self.interval = interval
    }

    /// Records one refusal of `cause` at `now` (seconds, monotonic); returns what to log, if anything.
    public mutating func record(_ cause: String, now: Double) -> Entry? {
        if let last = lastLogged[cause], now - last < interval {
            unlogged[cause, default: 0] += 1
            return nil
        }
        lastLogged[cause] = now
        return Entry(cause: cause, suppressed: unlogged.removeValue(forKey: cause) ?? 0)
    }
}
