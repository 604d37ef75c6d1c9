/// The `grpc-timeout` request header (gRPC over HTTP/2, "Requests"): `TimeoutValue TimeoutUnit`, where the value is
/// a positive integer of at most 8 ASCII digits and the unit one of `H` `M` `S` `m` `u` `n` (hours down to
/// nanoseconds; case matters: `M` is minutes, `m` milliseconds).
///
/// The spec gives no rule for a malformed value; like grpc-go's server we refuse the call with INTERNAL
/// ("malformed grpc-timeout") rather than run it without the deadline its client meant to set.
public struct GRPCTimeout: Sendable, Equatable, CustomStringConvertible {
    public enum Unit: Character, Sendable, CaseIterable {
        case hours = "H"
        case minutes = "M"
        case seconds = "S"
        case milliseconds = "m"
        case microseconds = "u"
        case nanoseconds = "n"

        var secondsPerUnit: Double {
            switch self {
            case .hours: 3600
            case .minutes: 60
            case .seconds: 1
            case .milliseconds: 1e-3
            case .microseconds: 1e-6
            case .nanoseconds: 1e-9
            }
        }
    }

    /// The spec's bound on TimeoutValue: at most 8 digits.
    public static let maxDigits = 8

    public let value: UInt32
    public let unit: Unit

    /// Parses a header value; nil when it breaks the grammar (empty, a sign, a space, 9+ digits, an unknown unit).
    public init?(headerValue text: String) {
        let utf8 = Array(text.utf8)
        guard utf8.count >= 2, utf8.count <= Self.maxDigits + 1,
            let unit = Unit(rawValue: Character(Unicode.Scalar(utf8[utf8.count - 1])))
        else { return nil }
        var value: UInt32 = 0
        for byte in utf8.dropLast() {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt32(byte - UInt8(ascii: "0"))
        }
        self.value = value
        self.unit = unit
    }

    public init(value: UInt32, unit: Unit) {
        self.value = value
        self.unit = unit
    }

    /// The timeout in seconds (99999999H is about 1.1e4 years: a Double holds every value exactly enough).
    public var seconds: Double { Double(value) * unit.secondsPerUnit }

    public var description: String { "\(value)\(unit.rawValue)" }
}
