/// Counters the agent keeps for `/metrics`. Gauges (connections, streams, expiries) are read from their owners at
/// scrape time, so only events are counted here.
///
/// Cardinality is bounded by construction: every label value is either a fixed word (a reason, an API, an issuer
/// kind) or a secret name the agent serves — never a stream, connection, peer or requested-but-refused name.
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

    func countRotation(_ reason: RotationReason, at seconds: Int64) {
        rotations[reason, default: 0] += 1
        lastRotation = seconds
    }

    func countRefusal(_ reason: RefusalReason) { refusals[reason, default: 0] += 1 }

    /// Issuer kinds and failure reasons are fixed words; the key joins them for one dictionary.
    func countIssuanceFailure(issuer: String, reason: String) {
        issuanceFailures[issuer + "\u{0}" + reason, default: 0] += 1
    }
}

/// Prometheus text exposition format 0.0.4: `# HELP`, `# TYPE`, then `name{label="value"} number` lines.
///
/// Why hand-written: the format is a few lines of rules, and a client library would bring Foundation (RSS).
public struct MetricsExposition {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public private(set) var text = ""

    public init() {}

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
        text += name
        if !labels.isEmpty {
            text += "{"
            text += labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(Self.escapeLabelValue($0.value))\"" }
                .joined(separator: ",")
            text += "}"
        }
        text += " \(value)\n"
    }

    /// Label values escape backslash, double quote and line feed.
    static func escapeLabelValue(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    /// HELP text escapes backslash and line feed.
    static func escapeHelp(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
