/// Parses durations the way istio-agent's users write them (Go's `time.ParseDuration`: `1h`, `90m`, `1h30m`,
/// `3600s`, `500ms`), plus a bare number meaning seconds.
public enum DurationText {
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let text: String
        public var description: String { "'\(text)' is not a duration (examples: 1h, 30m, 1h30m, 90s, 500ms)" }
    }

    /// The longest duration accepted: 1000 years. Durations become TTLs and certificate lifetimes (Int64
    /// seconds added to now), so values such as `inf` or `1e30` (found by fuzzing) would trap in those
    /// conversions; no flag means anything near this long.
    public static let maxSeconds: Double = 1000 * 365 * 86_400

    /// Seconds in `text`: always finite and not negative (`inf`, `nan`, `-5s` and overflowing digits are not
    /// durations). Each flag then checks its own range.
    public static func seconds(_ text: String) throws(ParseError) -> Double {
        let total = try parse(text)
        guard total.isFinite, total >= 0 else { throw ParseError(text: text) }
        return total
    }

    private static func parse(_ text: String) throws(ParseError) -> Double {
        let trimmed = text.trimmingSpaces()
        guard !trimmed.isEmpty else { throw ParseError(text: text) }
        // Only plain decimals: Double() also reads "inf", "nan" and hex floats.
        if trimmed.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            guard let plain = Double(trimmed) else { throw ParseError(text: text) }
            return try bounded(plain, text)
        }
        let units: [(String, Double)] = [("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)]
        var total = 0.0
        var rest = Substring(trimmed)
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, let value = Double(number) else { throw ParseError(text: text) }
            rest = rest.dropFirst(number.count)
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }) else { throw ParseError(text: text) }
            rest = rest.dropFirst(unit.count)
            total += value * scale
        }
        return try bounded(total, text)
    }

    private static func bounded(_ seconds: Double, _ text: String) throws(ParseError) -> Double {
        // NaN compares false: rejected too.
        guard abs(seconds) <= maxSeconds else { throw ParseError(text: text) }
        return seconds
    }

    /// `3600` → `1h`, `5400` → `1h30m`, `90` → `1m30s`, `0.1` → `100ms`: for logs, `--help` defaults and ranges.
    public static func format(seconds: Double) -> String {
        // Any Double may be handed in: only those `seconds` can return are written as units.
        guard seconds >= 0, seconds <= maxSeconds else { return "\(seconds)s" }
        // Below a second, whole seconds would round a range's lower end (100ms, 1ms) to a misleading 0s.
        if seconds > 0 && seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
        var remaining = Int(seconds.rounded())
        if remaining == 0 { return "0s" }
        var text = ""
        for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] where remaining >= size {
            text += "\(remaining / size)\(unit)"
            remaining %= size
        }
        return text
    }
}

extension String {
    func trimmingSpaces() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" && $0 != "\n" }) else { return "" }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" && $0 != "\n" })!
        return String(scalars[first...last])
    }
}
