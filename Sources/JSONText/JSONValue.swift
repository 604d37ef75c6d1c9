/// A JSON value, written by hand so nothing needs Foundation (sds-agent's JSON logs, sds-dump, the bench). Objects keep their key order: the schema is
/// stable and a reader diffing two documents sees the same layout.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool { lhs.rendered == rhs.rendered }

    /// Compact JSON on one line (JSON Lines: one document per line).
    public var rendered: String {
        var out = ""
        write(to: &out)
        return out
    }

    func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .string(let value): Self.writeString(value, to: &out)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, (key, value)) in members.enumerated() {
                if index > 0 { out += "," }
                Self.writeString(key, to: &out)
                out += ":"
                value.write(to: &out)
            }
            out += "}"
        }
    }

    /// `value` as a JSON string literal, quotes included.
    public static func quoted(_ value: String) -> String {
        var out = ""
        writeString(value, to: &out)
        return out
    }

    /// RFC 8259 string escaping: quote, backslash and control characters; everything else is UTF-8 as is.
    static func writeString(_ value: String, to out: inout String) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            // U+2028/2029 are valid JSON but end lines in JavaScript; escaping them keeps JSON Lines safe anywhere.
            // DEL and the C1 controls are valid JSON too, but a terminal acts on them: escaped, a log line cannot
            // move the cursor or hide text.
            case _
            where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028
                || scalar.value == 0x2029:
                let digits = Array("0123456789abcdef")
                var escape = "\\u"
                for shift in stride(from: 12, through: 0, by: -4) {
                    escape.append(digits[Int((scalar.value >> UInt32(shift)) & 0xF)])
                }
                out += escape
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
