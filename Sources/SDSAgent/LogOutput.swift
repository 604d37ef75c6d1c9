import Glibc
import JSONText
import Logging
import Servers
import Transport

/// A swift-log handler writing one line per event to stderr, as text or JSON — what `kubectl logs` and log shippers
/// expect from a sidecar. Timestamps come from the wall clock here (this is the I/O edge, not logic).
///
/// Values often come from clients (secret names, node IDs, error details), so one event is always exactly one line:
/// in text, a value holding a space, quote, `=`, backslash or any control character is written as a quoted, escaped
/// string; in JSON every string is escaped. Lines go through `LogSink`, which never blocks.
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
            out = "\(Self.timestamp()) \(level.rawValue.uppercased()) \(Self.textMessage("\(message)"))"
            for key in keys { out += " \(Self.textValue(key))=\(Self.textValue("\(merged[key]!)"))" }
        case .json:
            out =
                "{\"time\":\"\(Self.timestamp())\",\"level\":\"\(level.rawValue)\",\"msg\":\(Self.jsonString("\(message)"))"
            for key in keys { out += ",\(Self.jsonString(key)):\(Self.jsonString("\(merged[key]!)"))" }
            out += "}"
        }
        out += "\n"
        LogSink.standardError.write(line: out)
    }

    /// Sets up stderr for non-blocking logging; the notice for dropped lines comes out in `format`.
    public static func bootstrap(format: Format) {
        LogSink.standardError.useStandardError()
        LogSink.standardError.dropNotice = { count in
            let message = "\(count) log lines dropped: stderr was not being read"
            switch format {
            case .text: return "\(timestamp()) WARNING \(message)\n"
            case .json:
                return "{\"time\":\"\(timestamp())\",\"level\":\"warning\",\"msg\":\(jsonString(message))}\n"
            }
        }
    }

    /// A metadata key or value: bare when it is plain, else quoted and escaped so it cannot end the line or pose
    /// as another field.
    static func textValue(_ text: String) -> String {
        needsQuoting(text, allowSpaces: false) ? jsonString(text) : text
    }

    /// The message: ours, but it may embed client text; spaces are fine there, line breaks and controls are not.
    static func textMessage(_ text: String) -> String {
        needsQuoting(text, allowSpaces: true) ? jsonString(text) : text
    }

    static func needsQuoting(_ text: String, allowSpaces: Bool) -> Bool {
        if text.isEmpty { return !allowSpaces }
        return text.unicodeScalars.contains { scalar in
            switch scalar {
            case " ": return !allowSpaces
            case "\"", "=", "\\": return !allowSpaces
            default:
                return scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028
                    || scalar.value == 0x2029
            }
        }
    }

    static func jsonString(_ text: String) -> String { JSONValue.quoted(text) }

    /// A list of names as a metadata value, exactly as `"\(names)"` writes it (`["a", "b"]`) without going through
    /// `debugDescription`'s reflection: 260,000 instructions for the first one, on the path to the first SVID.
    static func listValue(_ names: [String]) -> String {
        var text = "["
        for (index, name) in names.enumerated() {
            if index > 0 { text += ", " }
            // Printable ASCII other than a quote or backslash is written as is; anything else is escaped as Swift does.
            if name.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") })
            {
                text += "\"" + name + "\""
            } else {
                text += name.debugDescription
            }
        }
        return text + "]"
    }

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
