import Glibc

/// A failed system call, with the errno text. Transport's only error type.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public let operation: String
    public let errno: Int32
    public let detail: String

    public init(_ operation: String, errno: Int32, detail: String = "") {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    /// Captures the current `errno` for `operation`.
    static func last(_ operation: String, detail: String = "") -> SystemError {
        SystemError(operation, errno: Glibc.errno, detail: detail)
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return detail.isEmpty ? "\(operation): \(reason)" : "\(operation) \(detail): \(reason)"
    }
}
