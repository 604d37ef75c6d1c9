public import SPIFFE

/// A strict HTTP/1.1 response parser for one bundle-endpoint answer: pure bytes in, the body or a refusal out — no
/// I/O and no clock, so tests feed it byte by byte and a fuzzer can drive `parse(_:)` directly.
///
///     head (status line, headers; 1xx heads skipped) ──200, empty line──► body by Content-Length
///       │                                                              ├► chunks ─► trailers
///       └─ not 200, malformed, too large ──► failed                     └► until the connection closes
///
/// Every bound is checked before the bytes it guards are kept: the head (and trailers) at `maxHeadBytes`, a
/// Content-Length or chunk size against `maxBodyBytes` as its digits arrive (so a huge or overflowing number is
/// refused at its first excess digit, and the body buffer is reserved only for an accepted length), and the chunk
/// framing at `maxChunkFramingBytes`. The request sent `Connection: close`, so one response is all there is:
/// bytes after it are ignored.
///
/// Strictness (RFC 9112) where a lenient parser would let a hostile server smuggle or stall: Transfer-Encoding
/// other than exactly `chunked` is refused (nothing else was asked for), as are Transfer-Encoding together with
/// Content-Length, a repeated Content-Length, any Content-Encoding but `identity`, obsolete line folding, and
/// whitespace before a header's colon. Bare LF line ends are tolerated (RFC 9112 §2.2).
public struct HTTPResponseParser: Sendable {
    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The status line and headers (or the trailers) did not end within the limit.
        case headTooLarge(limit: Int)
        case malformedStatusLine
        case unsupportedVersion(String)
        /// A final status other than 200 (or 101, which nobody asked for).
        case status(code: Int, reason: String)
        case malformedHeader
        case invalidContentLength
        /// Transfer-Encoding together with Content-Length, or Content-Length twice: the framing is ambiguous.
        case conflictingFraming
        case unsupportedTransferEncoding(String)
        case unsupportedContentEncoding(String)
        case bodyTooLarge(limit: Int)
        case malformedChunk
        case chunkFramingTooLarge(limit: Int)
        /// The connection ended before the response did (`what` says where).
        case truncated(String)
        /// A body framed by the connection's end ended without TLS close_notify: the end may be an attacker's.
        case unprovenEnd

        public var description: String {
            switch self {
            case .headTooLarge(let limit): "response head larger than \(limit) bytes"
            case .malformedStatusLine: "malformed HTTP status line"
            case .unsupportedVersion(let version): "unsupported HTTP version \(version)"
            case .status(let code, let reason): "the server answered HTTP \(code)\(reason.isEmpty ? "" : " " + reason)"
            case .malformedHeader: "malformed response header line"
            case .invalidContentLength: "invalid Content-Length"
            case .conflictingFraming: "ambiguous body framing (Transfer-Encoding with Content-Length, or two lengths)"
            case .unsupportedTransferEncoding(let coding): "unsupported Transfer-Encoding \(coding)"
            case .unsupportedContentEncoding(let coding): "unsupported Content-Encoding \(coding)"
            case .bodyTooLarge(let limit): "response body larger than \(limit) bytes"
            case .malformedChunk: "malformed chunked body"
            case .chunkFramingTooLarge(let limit): "chunk framing larger than \(limit) bytes"
            case .truncated(let what): "connection closed \(what)"
            case .unprovenEnd: "the body ended without TLS close_notify, so it may be truncated"
            }
        }
    }

    public enum Outcome: Sendable, Equatable {
        case needMoreBytes
        /// The whole body (possibly empty).
        case complete([UInt8])
        case failed(ParseError)
    }

    /// Why 16 KiB: a bundle endpoint's head is a status line and a dozen headers, well under 2 KiB; 16 KiB is what
    /// most servers and proxies allow a head to be, and all the parser ever buffers besides the body.
    public static let defaultMaxHeadBytes = 16 * 1024
    /// Why 256 bytes: a chunk-size line is a hex number (≤ 6 digits for a 1 MiB body) and rarely an extension.
    public static let maxChunkLineBytes = 256
    /// Why 256 KiB: real servers write chunks of KiBs (framing ≈ 1 % of the body); this allows a 1 MiB body in
    /// 16-byte chunks and refuses a server that would make us parse megabytes of framing around a few bytes.
    public static let maxChunkFramingBytes = 256 * 1024

    private enum State: Sendable {
        /// Status line and headers, or a 1xx head being skipped.
        case head
        case contentLength(remaining: Int)
        case untilClose
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data.
        case chunkDataEnd(sawCR: Bool)
        case trailers
        case done(Outcome)
    }

    public let maxHeadBytes: Int
    public let maxBodyBytes: Int
    private var state = State.head
    /// The line being assembled (head, chunk size or trailer): bounded by `maxHeadBytes` or `maxChunkLineBytes`.
    private var line: [UInt8] = []
    /// Head and trailer bytes so far, against `maxHeadBytes`.
    private var headBytes = 0
    private var framingBytes = 0
    private var body: [UInt8] = []
    // The head being parsed.
    private var statusCode: Int?
    private var contentLength: Int?
    private var transferCodings: [String] = []

    public init(maxHeadBytes: Int = defaultMaxHeadBytes, maxBodyBytes: Int = SPIFFEBundle.maxDocumentBytes) {
        self.maxHeadBytes = maxHeadBytes
        self.maxBodyBytes = maxBodyBytes
    }

    /// The whole response at once, followed by a clean close: the fuzzing entry point and the tests' shorthand.
    public static func parse(
        _ bytes: [UInt8], maxHeadBytes: Int = defaultMaxHeadBytes, maxBodyBytes: Int = SPIFFEBundle.maxDocumentBytes
    ) -> Outcome {
        var parser = HTTPResponseParser(maxHeadBytes: maxHeadBytes, maxBodyBytes: maxBodyBytes)
        if case .needMoreBytes = parser.feed(bytes) { return parser.close(cleanly: true) }
        return parser.outcome
    }

    /// The outcome so far (`needMoreBytes` until the response is complete or refused).
    public var outcome: Outcome {
        if case .done(let outcome) = state { return outcome }
        return .needMoreBytes
    }

    /// Feeds the next bytes. Once the outcome is `complete` or `failed` it stays so; later bytes are ignored.
    public mutating func feed(_ bytes: [UInt8]) -> Outcome { feed(bytes[...]) }

    public mutating func feed(_ bytes: ArraySlice<UInt8>) -> Outcome {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            switch state {
            case .done(let outcome):
                return outcome
            case .contentLength(let remaining):
                let take = min(remaining, bytes.endIndex - index)
                body += bytes[index..<(index + take)]
                index += take
                if remaining == take {
                    state = .done(.complete(body))
                } else {
                    state = .contentLength(remaining: remaining - take)
                }
            case .untilClose:
                let take = bytes.endIndex - index
                guard take <= maxBodyBytes - body.count else { return fail(.bodyTooLarge(limit: maxBodyBytes)) }
                body += bytes[index...]
                index = bytes.endIndex
            case .chunkData(let remaining):
                // The chunk's size was checked against the body bound when its line ended.
                let take = min(remaining, bytes.endIndex - index)
                body += bytes[index..<(index + take)]
                index += take
                state = remaining == take ? .chunkDataEnd(sawCR: false) : .chunkData(remaining: remaining - take)
            case .chunkDataEnd(let sawCR):
                let byte = bytes[index]
                index += 1
                if let failure = countFraming(1) { return fail(failure) }
                if byte == UInt8(ascii: "\r") && !sawCR {
                    state = .chunkDataEnd(sawCR: true)
                } else if byte == UInt8(ascii: "\n") {
                    state = .chunkSize
                } else {
                    return fail(.malformedChunk)
                }
            case .head, .trailers:
                let byte = bytes[index]
                index += 1
                headBytes += 1
                guard headBytes <= maxHeadBytes else { return fail(.headTooLarge(limit: maxHeadBytes)) }
                guard byte == UInt8(ascii: "\n") else {
                    line.append(byte)
                    continue
                }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let failure = endOfHeadLine()
                line.removeAll(keepingCapacity: true)
                if let failure { return fail(failure) }
            case .chunkSize:
                let byte = bytes[index]
                index += 1
                if let failure = countFraming(1) { return fail(failure) }
                guard byte == UInt8(ascii: "\n") else {
                    guard line.count < Self.maxChunkLineBytes else { return fail(.malformedChunk) }
                    line.append(byte)
                    continue
                }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let failure = endOfChunkSizeLine()
                line.removeAll(keepingCapacity: true)
                if let failure { return fail(failure) }
            }
        }
        return outcome
    }

    /// The connection ended. `cleanly`: the transport proved the end is the peer's (TLS close_notify); a bare TCP
    /// end may be an attacker's truncation, so a body framed by the end needs it. Framed bodies do not.
    public mutating func close(cleanly: Bool) -> Outcome {
        switch state {
        case .done(let outcome): return outcome
        case .untilClose: return cleanly ? finish(.complete(body)) : fail(.unprovenEnd)
        case .head: return fail(.truncated(statusCode == nil ? "before the response" : "inside the response head"))
        case .contentLength(let remaining): return fail(.truncated("with \(remaining) bytes of the body missing"))
        case .chunkSize, .chunkData, .chunkDataEnd, .trailers: return fail(.truncated("inside the chunked body"))
        }
    }

    private mutating func fail(_ error: ParseError) -> Outcome { finish(.failed(error)) }

    private mutating func finish(_ outcome: Outcome) -> Outcome {
        state = .done(outcome)
        line = []
        if case .failed = outcome { body = [] }
        return outcome
    }

    private mutating func countFraming(_ count: Int) -> ParseError? {
        framingBytes += count
        return framingBytes > Self.maxChunkFramingBytes ? .chunkFramingTooLarge(limit: Self.maxChunkFramingBytes) : nil
    }

    // MARK: Head

    /// Handles one complete head or trailer line (in `line`, without its line end).
    private mutating func endOfHeadLine() -> ParseError? {
        if case .trailers = state {
            if line.isEmpty {
                state = .done(.complete(body))
                return nil
            }
            // Trailers are checked for shape and dropped: nothing in them matters to a bundle.
            return parseHeaderLine() == nil ? .malformedHeader : nil
        }
        guard let status = statusCode else { return parseStatusLine() }
        if line.isEmpty {
            if status < 200 {
                // An interim response (100 Continue, 103 Early Hints): its head is skipped, the final one follows.
                statusCode = nil
                contentLength = nil
                transferCodings = []
                return nil
            }
            return endOfHead()
        }
        guard let (name, value) = parseHeaderLine() else { return .malformedHeader }
        // Interim heads' headers do not describe the final response.
        guard status >= 200 else { return nil }
        switch name {
        case "content-length":
            guard contentLength == nil else { return .conflictingFraming }
            guard !value.isEmpty, value.allSatisfy(Self.isDigit) else { return .invalidContentLength }
            var length = 0
            for digit in value {
                length = length * 10 + Int(digit - UInt8(ascii: "0"))
                // Checked per digit: a 40-digit length is refused at its 8th digit, long before it could overflow.
                guard length <= maxBodyBytes else { return .bodyTooLarge(limit: maxBodyBytes) }
            }
            contentLength = length
        case "transfer-encoding":
            for coding in value.split(separator: UInt8(ascii: ",")) {
                let trimmed = Self.trimmed(coding[...])
                guard !trimmed.isEmpty else { continue }
                // Bounded by the head size; the list is only compared with ["chunked"].
                transferCodings.append(String(decoding: trimmed, as: UTF8.self).lowercased())
            }
        case "content-encoding":
            let coding = String(decoding: value, as: UTF8.self).lowercased()
            // Nothing asked for compression (no Accept-Encoding was sent), and a decompressor is an attack surface.
            guard coding == "identity" else { return .unsupportedContentEncoding(Self.shown(value)) }
        default:
            break
        }
        return nil
    }

    /// `HTTP/1.x SP 3DIGIT SP reason` (a missing reason and its space are tolerated).
    private mutating func parseStatusLine() -> ParseError? {
        let version = Array("HTTP/1.".utf8)
        guard line.count >= 12, line.starts(with: version) else {
            guard line.starts(with: Array("HTTP/".utf8)) else { return .malformedStatusLine }
            let shownVersion = line.prefix { $0 != UInt8(ascii: " ") }
            return .unsupportedVersion(Self.shown(shownVersion))
        }
        guard line[7] == UInt8(ascii: "0") || line[7] == UInt8(ascii: "1") else {
            return .unsupportedVersion(Self.shown(line.prefix(8)))
        }
        guard line[8] == UInt8(ascii: " "), line[9...11].allSatisfy(Self.isDigit) else { return .malformedStatusLine }
        let code = line[9...11].reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
        guard code >= 100 else { return .malformedStatusLine }
        let reason = line[12...]
        guard reason.isEmpty || reason.first == UInt8(ascii: " ") else { return .malformedStatusLine }
        guard reason.allSatisfy(Self.isFieldValueByte) else { return .malformedStatusLine }
        // 101 would switch to a protocol nobody asked for; every other final status but 200 is a refusal.
        if code == 101 || code >= 200 && code != 200 {
            return .status(code: code, reason: Self.shown(reason.dropFirst()))
        }
        statusCode = code
        return nil
    }

    /// The empty line after a 200's headers: decides how the body is framed.
    private mutating func endOfHead() -> ParseError? {
        if !transferCodings.isEmpty {
            guard contentLength == nil else { return .conflictingFraming }
            guard transferCodings == ["chunked"] else {
                return .unsupportedTransferEncoding(Self.shown(Array(transferCodings.joined(separator: ", ").utf8)))
            }
            state = .chunkSize
            return nil
        }
        if let contentLength {
            if contentLength == 0 {
                state = .done(.complete([]))
            } else {
                // The length is at most maxBodyBytes (checked as it was parsed): reserving it is bounded.
                body.reserveCapacity(contentLength)
                state = .contentLength(remaining: contentLength)
            }
            return nil
        }
        state = .untilClose
        return nil
    }

    /// `name: value` with a token name, no whitespace before the colon, no obsolete fold; the name lowercased and
    /// the value trimmed. Nil when malformed.
    private func parseHeaderLine() -> (String, ArraySlice<UInt8>)? {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return nil }
        let name = line[..<colon]
        guard name.allSatisfy(Self.isTokenByte) else { return nil }
        let value = line[(colon + 1)...]
        guard value.allSatisfy(Self.isFieldValueByte) else { return nil }
        return (String(decoding: name, as: UTF8.self).lowercased(), Self.trimmed(value))
    }

    // MARK: Chunks

    /// `1*HEXDIG [BWS ; extension]`: the size is checked against what the body may still take as each digit
    /// arrives, so an overflowing size is refused before it is a number.
    private mutating func endOfChunkSizeLine() -> ParseError? {
        var size = 0
        var index = line.startIndex
        while index < line.endIndex, let digit = Self.hexValue(line[index]) {
            size = size * 16 + digit
            guard size <= maxBodyBytes - body.count else { return .bodyTooLarge(limit: maxBodyBytes) }
            index += 1
        }
        guard index > line.startIndex else { return .malformedChunk }
        let rest = line[index...].drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        // A chunk extension is allowed and ignored; anything else after the size is not a size.
        guard rest.isEmpty || rest.first == UInt8(ascii: ";") else { return .malformedChunk }
        guard rest.allSatisfy(Self.isFieldValueByte) else { return .malformedChunk }
        state = size == 0 ? .trailers : .chunkData(remaining: size)
        return nil
    }

    // MARK: Bytes

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
        default: nil
        }
    }

    /// RFC 9110 §5.6.2 tchar.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default: Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// HTAB, SP, visible ASCII and obs-text (RFC 9110 §5.5): no CR, LF, NUL or other controls.
    private static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte == 0x09 || (byte >= 0x20 && byte != 0x7F)
    }

    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isSpace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) })
        else { return [] }
        return bytes[first...last]
    }

    /// Peer text for an error line: printable ASCII only, at most 64 bytes.
    private static func shown(_ bytes: some Collection<UInt8>) -> String {
        var out = String(
            decoding: bytes.prefix(64).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
        if bytes.count > 64 { out += "…" }
        return out
    }
}
