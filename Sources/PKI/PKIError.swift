private import COpenSSL

/// A failed OpenSSL operation. `operation` says what we were doing; `reasons` are OpenSSL's own reason
/// strings, drained from the thread's error queue right where the call failed (oldest first).
public struct PKIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var reasons: [String]

    public init(operation: String, reasons: [String] = []) {
        self.operation = operation
        self.reasons = reasons
    }

    public var description: String {
        reasons.isEmpty ? operation : "\(operation): \(reasons.joined(separator: "; "))"
    }

    /// Drains OpenSSL's (thread-local) error queue into an error for `operation`.
    static func openSSL(_ operation: String) -> PKIError {
        PKIError(operation: operation, reasons: drainErrorQueue())
    }

    static func drainErrorQueue() -> [String] {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                let library = ERR_lib_error_string(code).map { String(cString: $0) }
                let text = String(cString: reason)
                reasons.append(library.map { "\($0): \(text)" } ?? text)
            } else {
                var buffer = [CChar](repeating: 0, count: 256)
                ERR_error_string_n(code, &buffer, buffer.count)
                reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
        return reasons
    }

    /// Forgets errors left by earlier calls that failed harmlessly (e.g. the end of a PEM bundle), so the
    /// next failure reports only its own reasons.
    static func clearErrorQueue() {
        ERR_clear_error()
    }
}
