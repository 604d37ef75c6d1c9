/// A minimal HTTP/1.1 request-head parser for the status listener (`/live`, `/ready`, `/metrics`): pure bytes in,
/// a verdict out — no I/O, no clock, so tests and the fuzzer drive it directly (`HTTPRequestParser.parse(_:)`).
///
/// Why our own and not a library: Debian packages llhttp only as a Node.js internal and http-parser is
/// unmaintained; the status listener needs a request line and header names, nothing more — bodies, chunked
/// encoding, upgrades and pipelining are refused, not parsed.
///
///     requestLine ──CRLF──► headers ──empty line──► complete
///          │                   │
///          └─ bad byte, too long, body announced ──► invalid (the owner answers 400/413/501 and closes)
///
/// Line ends are CRLF; a bare LF is tolerated (RFC 9112 §2.2). Everything is ASCII; header values are not kept
/// except the few the caller needs (none today), so memory held is the head buffer alone, at most `maxHeadBytes`.
public struct HTTPRequestParser: Sendable {
    /// A parsed request head.
    public struct Request: Sendable, Equatable {
        public var method: String
        /// The request target as sent (origin form: path and optional query).
        public var target: String
        /// 0 for HTTP/1.0, 1 for HTTP/1.1.
        public var minorVersion: Int
        /// Header names, lowercased, in arrival order (values are not needed by the status listener).
        public var headerNames: [String]

        public init(method: String, target: String, minorVersion: Int, headerNames: [String]) {
            self.method = method
            self.target = target
            self.minorVersion = minorVersion
            self.headerNames = headerNames
        }

        /// The target's path, without the query.
        public var path: String {
            guard let query = target.firstIndex(of: "?") else { return target }
            return String(target[..<query])
        }
    }

    /// Why a request was refused; `statusCode` is the answer it deserves before the connection closes.
    public enum ParseError: Error, Sendable, Equatable {
        /// The head did not end within `maxHeadBytes`.
        case headTooLarge
        /// The request line is not `METHOD SP origin-form SP HTTP/1.x`.
        case malformedRequestLine
        /// A version other than HTTP/1.0 or HTTP/1.1.
        case unsupportedVersion
        /// A header line without a valid `name:`, or an obsolete line fold.
        case malformedHeader
        /// Content-Length other than 0, or any Transfer-Encoding: the status endpoints take no body.
        case bodyNotAllowed
        /// More header lines than `maxHeaderCount`.
        case tooManyHeaders

        public var statusCode: Int {
            switch self {
            case .headTooLarge: return 431
            case .unsupportedVersion: return 505
            case .bodyNotAllowed: return 413
            case .malformedRequestLine, .malformedHeader, .tooManyHeaders: return 400
            }
        }
    }

    public enum Outcome: Sendable, Equatable {
        /// The head is incomplete; feed more bytes.
        case needMoreBytes
        /// The head is complete; bytes after it (a pipelined request or a body) were not consumed.
        case complete(Request)
        case invalid(ParseError)
    }

    /// Why 8 KiB: curl, kubelet and Prometheus send well under 1 KiB; 8 KiB is the common server default
    /// (nginx's large_client_header_buffers, Go's net/http is 1 MiB but counts any header). A head that does not
    /// fit is refused with 431, and the connection holds at most this much.
    public static let defaultMaxHeadBytes = 8 * 1024
    /// Why 64: real clients send fewer than 15; bounds the names array independently of their size.
    public static let maxHeaderCount = 64

    private enum State: Sendable, Equatable {
        case requestLine
        case headers(Request)
        case done(Outcome)
    }

    public let maxHeadBytes: Int
    private var state = State.requestLine
    /// Bytes of the line being assembled (the only buffer).
    private var line: [UInt8] = []
    private var headBytes = 0

    public init(maxHeadBytes: Int = HTTPRequestParser.defaultMaxHeadBytes) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// The whole parse of `bytes` at once: the fuzzing entry point and the unit tests' shorthand.
    public static func parse(_ bytes: [UInt8], maxHeadBytes: Int = defaultMaxHeadBytes) -> Outcome {
        var parser = HTTPRequestParser(maxHeadBytes: maxHeadBytes)
        return parser.feed(bytes)
    }

    /// Feeds the next bytes. Once the outcome is `complete` or `invalid` it stays so; later bytes are ignored.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> Outcome {
        if case .done(let outcome) = state { return outcome }
        for byte in bytes {
            headBytes += 1
            if headBytes > maxHeadBytes { return finish(.invalid(.headTooLarge)) }
            guard byte == UInt8(ascii: "\n") else {
                line.append(byte)
                continue
            }
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            let outcome = endOfLine()
            line.removeAll(keepingCapacity: true)
            if let outcome { return finish(outcome) }
        }
        return .needMoreBytes
    }

    private mutating func finish(_ outcome: Outcome) -> Outcome {
        state = .done(outcome)
        line = []
        return outcome
    }

    /// Handles one complete line; returns an outcome when the head is finished or refused.
    private mutating func endOfLine() -> Outcome? {
        switch state {
        case .requestLine:
            // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
            if line.isEmpty && headBytes <= 2 { return nil }
            switch Self.parseRequestLine(line) {
            case .success(let request): state = .headers(request)
            case .failure(let error): return .invalid(error)
            }
            return nil
        case .headers(var request):
            if line.isEmpty { return .complete(request) }
            if request.headerNames.count >= Self.maxHeaderCount { return .invalid(.tooManyHeaders) }
            switch Self.parseHeader(line) {
            case .failure(let error): return .invalid(error)
            case .success(let (name, value)):
                if name == "transfer-encoding" { return .invalid(.bodyNotAllowed) }
                if name == "content-length" && value != "0" { return .invalid(.bodyNotAllowed) }
                request.headerNames.append(name)
                state = .headers(request)
            }
            return nil
        case .done(let outcome):
            return outcome
        }
    }

    static func parseRequestLine(_ line: [UInt8]) -> Result<Request, ParseError> {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(.malformedRequestLine) }
        let method = parts[0]
        let target = parts[1]
        let version = parts[2]
        guard !method.isEmpty, method.allSatisfy(isTokenCharacter) else { return .failure(.malformedRequestLine) }
        // Origin form only (`/path?query`); visible ASCII, no spaces (they split the line above).
        guard target.first == UInt8(ascii: "/"), target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return .failure(.malformedRequestLine)
        }
        let prefix = Array("HTTP/1.".utf8)
        guard version.count == prefix.count + 1, version.starts(with: prefix) else {
            return .failure(version.starts(with: Array("HTTP/".utf8)) ? .unsupportedVersion : .malformedRequestLine)
        }
        let minor = version[version.endIndex - 1]
        guard minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1") else { return .failure(.unsupportedVersion) }
        return .success(
            Request(
                method: String(decoding: method, as: UTF8.self), target: String(decoding: target, as: UTF8.self),
                minorVersion: Int(minor - UInt8(ascii: "0")), headerNames: []))
    }

    /// `name: value` with a token name (lowercased) and a value of visible ASCII, spaces and tabs, trimmed.
    static func parseHeader(_ line: [UInt8]) -> Result<(String, String), ParseError> {
        // A line starting with whitespace is an obsolete fold (RFC 9112 §5.2): refused.
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return .failure(.malformedHeader) }
        let name = line[..<colon]
        guard name.allSatisfy(isTokenCharacter) else { return .failure(.malformedHeader) }
        var value = line[(colon + 1)...]
        guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else { return .failure(.malformedHeader) }
        while let first = value.first, first == 0x20 || first == 0x09 { value = value.dropFirst() }
        while let last = value.last, last == 0x20 || last == 0x09 { value = value.dropLast() }
        let lowered = name.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }
        return .success((String(decoding: lowered, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }

    /// RFC 9110 §5.6.2 `tchar`.
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}
