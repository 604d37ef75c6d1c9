/// Counters the agent keeps for `/metrics`. Gauges (connections, streams, expiries) are read from their owners at
/// scrape time, so only events are counted here.
///
/// Cardinality is bounded by construction: every label value is either a fixed word (a reason, an API, an issuer
/// kind), a name the operator configured (`default`, `ROOTCA`, the own SPIFFE ID), or the kind of a name a client
/// chose (`file-cert`, `jwt-svid`, `other`, ...) — never a stream, connection, peer or client-chosen name.
public final class AgentMetrics {
    /// Why a rotation wave happened (`sds_agent_rotations_total{reason}`).
    public enum RotationReason: String, CaseIterable, Sendable {
        /// The issuer's own timer (the first issuance at startup counts here too).
        case schedule
        /// SIGHUP.
        case signal
        /// The upstream Workload API pushed a new SVID or bundle.
        case upstream
        /// A file-backed name's file changed.
        case file
    }

    /// Why a connection, stream or name was refused (`sds_agent_refusals_total{reason}`).
    public enum RefusalReason: String, CaseIterable, Sendable {
        /// SO_PEERCRED: the peer is not admitted.
        case peer
        /// A bound was crossed (queued bytes, write stall, status-listener connection cap).
        case limits
        /// A requested name the agent will never serve.
        case names
    }

    public internal(set) var rotations: [RotationReason: UInt64] = [:]
    /// Seconds since the epoch of the last rotation wave that published something.
    public internal(set) var lastRotation: Int64?
    /// Issuance failures by (issuer, reason).
    public internal(set) var issuanceFailures: [String: UInt64] = [:]
    public internal(set) var pushes: UInt64 = 0
    public internal(set) var nacks: [String: UInt64] = [:]
    public internal(set) var refusals: [RefusalReason: UInt64] = [:]

    public init() {}

    public func countRotation(_ reason: RotationReason, at seconds: Int64) {
        rotations[reason, default: 0] += 1
        lastRotation = seconds
    }

    public func countRefusal(_ reason: RefusalReason) { refusals[reason, default: 0] += 1 }

    /// Issuer kinds and failure reasons are fixed words; the key joins them for one dictionary.
    public func countIssuanceFailure(issuer: String, reason: String) {
        issuanceFailures[issuer + "\u{0}" + reason, default: 0] += 1
    }
}

/// Prometheus text exposition format 0.0.4: `# HELP`, `# TYPE`, then `name{label="value"} number` lines.
///
/// Why hand-written: the format is a few lines of rules, and a client library would bring Foundation (RSS).
public struct MetricsExposition {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public private(set) var text = ""
    /// Why 1 MiB: today's exposition is ~3 KB; a page this large is a bug, and a scrape must never cost the event
    /// loop more than a few milliseconds. Samples past it are dropped and the page says how many.
    public static let maxBytes = 1 << 20
    private let maxBytes: Int
    public private(set) var omittedSamples = 0

    public init(maxBytes: Int = MetricsExposition.maxBytes) { self.maxBytes = maxBytes }

    /// The page: the text, and a comment line if samples were left out.
    public var page: String {
        omittedSamples == 0
            ? text : text + "# sds-agent: \(omittedSamples) samples omitted (page over \(maxBytes) bytes)\n"
    }

    public enum Kind: String {
        case counter, gauge
    }

    /// Starts a metric family. Each family is declared once, before its samples.
    public mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    /// One sample; labels are written sorted by name (a stable exposition for diffs and tests).
    public mutating func sample(_ name: String, _ value: some BinaryInteger) { sample(name, [:], value) }

    public mutating func sample(_ name: String, _ labels: [String: String], _ value: some BinaryInteger) {
        var line = name
        if !labels.isEmpty {
            line += "{"
            line += labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(Self.escapeLabelValue($0.value))\"" }
                .joined(separator: ",")
            line += "}"
        }
        line += " \(value)\n"
        guard text.utf8.count + line.utf8.count <= maxBytes else {
            omittedSamples += 1
            return
        }
        text += line
    }

    /// Label values escape backslash, double quote and line feed, byte by byte: walking Characters would see
    /// `"\r\n"` as one (neither `"\r"` nor `"\n"`) and let a raw line feed through, forging a sample. The format
    /// has no escape for other control bytes; they become `?`.
    static func escapeLabelValue(_ value: String) -> String { escape(value, quote: true) }

    /// HELP text escapes backslash and line feed (byte by byte, as label values).
    static func escapeHelp(_ value: String) -> String { escape(value, quote: false) }

    private static func escape(_ value: String, quote: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(value.utf8.count)
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "\"") where quote: out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0..<0x20, 0x7f: out.append(UInt8(ascii: "?"))
            default: out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
