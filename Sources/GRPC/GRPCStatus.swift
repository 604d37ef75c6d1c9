/// A gRPC status: the outcome of a call, carried in the `grpc-status` / `grpc-message` trailers.
public struct GRPCStatus: Error, Sendable, Equatable, CustomStringConvertible {
    /// The standard gRPC status codes.
    public enum Code: Int, Sendable, Equatable, CaseIterable {
        case ok = 0
        case cancelled = 1
        case unknown = 2
        case invalidArgument = 3
        case deadlineExceeded = 4
        case notFound = 5
        case alreadyExists = 6
        case permissionDenied = 7
        case resourceExhausted = 8
        case failedPrecondition = 9
        case aborted = 10
        case outOfRange = 11
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
        case dataLoss = 15
        case unauthenticated = 16
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String = "") {
        self.code = code
        self.message = message
    }

    public static let ok = GRPCStatus(.ok)

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }

    /// The trailer fields for this status (`grpc-message` omitted when empty).
    public var trailerFields: [(String, String)] {
        var fields = [("grpc-status", String(code.rawValue))]
        if !message.isEmpty { fields.append(("grpc-message", GRPCPercentEncoding.encode(message))) }
        return fields
    }

    /// Reads a status from trailers; a missing or unparsable `grpc-status` is `.unknown` per the gRPC spec.
    public init(trailers: [(String, String)]) {
        let statusText = trailers.first { $0.0 == "grpc-status" }?.1
        let message = trailers.first { $0.0 == "grpc-message" }.map { GRPCPercentEncoding.decode($0.1) } ?? ""
        guard let statusText else {
            self.init(.unknown, message.isEmpty ? "missing grpc-status" : message)
            return
        }
        guard let raw = Int(statusText), let code = Code(rawValue: raw) else {
            self.init(.unknown, "invalid grpc-status \(statusText)")
            return
        }
        self.init(code, message)
    }
}

/// The percent-encoding of `grpc-message`: bytes outside printable ASCII, and "%" itself, become %XX.
public enum GRPCPercentEncoding {
    public static func encode(_ text: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in text.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes %XX sequences; malformed ones are kept verbatim (the spec asks receivers to be lenient).
    public static func decode(_ text: String) -> String {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
                let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
            {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
