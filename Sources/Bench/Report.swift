import JSONText

/// One flat JSON object, built without Foundation (the load client keeps its own footprint small).
public struct JSONObject: Sendable, CustomStringConvertible {
    private var fields: [(String, String)] = []

    public init() {}

    public mutating func set(_ key: String, _ value: String) { fields.append((key, Self.quote(value))) }
    public mutating func set(_ key: String, _ value: Int) { fields.append((key, String(value))) }
    public mutating func set(_ key: String, _ value: Double) {
        fields.append((key, value.isFinite ? String(value) : "null"))
    }
    public mutating func set(_ key: String, _ values: [Double]) {
        fields.append((key, "[" + values.map { $0.isFinite ? String($0) : "null" }.joined(separator: ",") + "]"))
    }

    public var description: String {
        "{" + fields.map { "\(Self.quote($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }

    static func quote(_ text: String) -> String { JSONValue.quoted(text) }
}

/// Median of a sample (mean of the middle two for an even count); nil when empty.
public func median(_ values: [Double]) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// Spreads `streams` over `connections` as evenly as possible (the first ones take the remainder); never more
/// connections than streams, and at least one.
public func streamsPerConnection(streams: Int, connections: Int) -> [Int] {
    let count = max(1, min(connections, streams))
    let base = streams / count
    let extra = streams % count
    return (0..<count).map { $0 < extra ? base + 1 : base }
}
