import Glibc

/// A point in time as whole seconds since the Unix epoch (UTC). Certificates carry second precision,
/// so every certificate time in this package is a `Timestamp`; logic receives it as a parameter and
/// never reads the wall clock itself.
public struct Timestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var secondsSinceEpoch: Int64

    public init(secondsSinceEpoch: Int64) {
        self.secondsSinceEpoch = secondsSinceEpoch
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool {
        lhs.secondsSinceEpoch < rhs.secondsSinceEpoch
    }

    public static func + (lhs: Timestamp, seconds: Int64) -> Timestamp {
        Timestamp(secondsSinceEpoch: lhs.secondsSinceEpoch &+ seconds)
    }

    public static func - (lhs: Timestamp, seconds: Int64) -> Timestamp {
        Timestamp(secondsSinceEpoch: lhs.secondsSinceEpoch &- seconds)
    }

    /// Seconds from `rhs` to `lhs`.
    public static func - (lhs: Timestamp, rhs: Timestamp) -> Int64 {
        lhs.secondsSinceEpoch &- rhs.secondsSinceEpoch
    }

    /// RFC 3339 UTC, e.g. `2026-11-23T20:00:00Z`.
    public var description: String {
        var t = time_t(secondsSinceEpoch)
        var parts = tm()
        guard gmtime_r(&t, &parts) != nil else { return "\(secondsSinceEpoch)s" }
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))Z"
    }
}
