import Glibc
import JSONText
import Logging

/// A swift-log handler writing one line per event to stderr, as text or JSON — what `kubectl logs` and log shippers
/// expect from a sidecar. Timestamps come from the wall clock here (this is the I/O edge, not logic).
public struct LogOutput: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    public let label: String
    public let format: Format

    public init(label: String, format: Format, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = event.level
        let message = event.message
        let explicit = event.metadata
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        let keys = merged.keys.sorted()
        var out: String
        switch format {
        case .text:
            out = "\(Self.timestamp()) \(level.rawValue.uppercased()) \(message)"
            for key in keys { out += " \(key)=\(Self.textValue(merged[key]!))" }
        case .json:
            out =
                "{\"time\":\"\(Self.timestamp())\",\"level\":\"\(level.rawValue)\",\"msg\":\(Self.jsonString("\(message)"))"
            for key in keys { out += ",\(Self.jsonString(key)):\(Self.jsonString("\(merged[key]!)"))" }
            out += "}"
        }
        out += "\n"
        // One write(2) per line so lines from a crash-time flush never interleave.
        _ = out.withCString { write(2, $0, strlen($0)) }
    }

    static func textValue(_ value: Logger.MetadataValue) -> String {
        let text = "\(value)"
        return text.contains(" ") || text.isEmpty ? jsonString(text) : text
    }

    static func jsonString(_ text: String) -> String { JSONValue.quoted(text) }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var seconds = ts.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ width: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T\(pad(parts.tm_hour)):"
            + "\(pad(parts.tm_min)):\(pad(parts.tm_sec)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}
