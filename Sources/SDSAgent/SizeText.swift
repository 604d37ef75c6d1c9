/// Parses sizes the way Kubernetes resource quantities write binary units: plain bytes (`65536`) or a whole number
/// with `Ki`, `Mi` or `Gi` (powers of 1024: `64Ki`, `16Mi`, `1Gi`). Every size option takes this one syntax.
public enum SizeText {
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let text: String
        public var description: String { "'\(text)' is not a size (examples: 65536, 64Ki, 16Mi, 1Gi)" }
    }

    /// Largest to smallest, so `format` picks the largest unit that divides evenly.
    static let units: [(suffix: String, factor: Int)] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]

    /// Bytes in `text`: never negative; `16MiB`, `1.5Mi`, `-1` and overflowing digits are not sizes. Each option
    /// then checks its own range.
    public static func bytes(_ text: String) throws(ParseError) -> Int {
        var digits = Substring(text.trimmingSpaces())
        var factor = 1
        if let unit = units.first(where: { digits.hasSuffix($0.suffix) }) {
            digits = digits.dropLast(unit.suffix.count)
            factor = unit.factor
        }
        // Only ASCII digits: Int() also takes a sign.
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(digits) else {
            throw ParseError(text: text)
        }
        let (scaled, overflow) = value.multipliedReportingOverflow(by: factor)
        guard !overflow else { throw ParseError(text: text) }
        return scaled
    }

    /// `16777216` → `16Mi`, `65536` → `64Ki`, `1000` → `1000`: for `--help` defaults, ranges and messages.
    public static func format(bytes: Int) -> String {
        for unit in units where bytes != 0 && bytes % unit.factor == 0 { return "\(bytes / unit.factor)\(unit.suffix)" }
        return String(bytes)
    }
}
