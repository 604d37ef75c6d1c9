import BundleEndpoint
import SPIFFE
import Testing

@Suite struct HTTPResponseParserTests {
    typealias Parser = HTTPResponseParser

    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Feeds `input` one byte at a time, then a close, and returns the first final outcome.
    func byteByByte(_ input: [UInt8], cleanly: Bool = true, maxBodyBytes: Int = SPIFFEBundle.maxDocumentBytes)
        -> Parser.Outcome
    {
        var parser = Parser(maxBodyBytes: maxBodyBytes)
        for byte in input {
            let outcome = parser.feed([byte])
            if outcome != .needMoreBytes { return outcome }
        }
        return parser.close(cleanly: cleanly)
    }

    static let framings: [(String, String)] = [
        (
            "content-length",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}"
        ),
        (
            "chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"ke\r\n7\r\nys\":[]}\r\n0\r\n"
                + "X-Trailer: t\r\n\r\n"
        ),
        ("until close", "HTTP/1.0 200 OK\r\nServer: tiny\r\n\r\n{\"keys\":[]}"),
        ("bare LF", "HTTP/1.1 200 OK\nContent-Length: 11\n\n{\"keys\":[]}"),
        (
            "interim 100 and 103 first",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                + "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}"
        ),
        ("no reason phrase", "HTTP/1.1 200\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}"),
        (
            "upper-case chunk size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\nB\r\n{\"keys\":[]}\r\n0\r\n\r\n"
        ),
    ]

    @Test(arguments: framings)
    func eachFramingYieldsTheBodyAtOnceAndByteByByte(name: String, response: String) {
        let expected = Parser.Outcome.complete(bytes("{\"keys\":[]}"))
        #expect(Parser.parse(bytes(response)) == expected, "\(name)")
        #expect(byteByByte(bytes(response)) == expected, "\(name)")
    }

    @Test func bytesAfterTheResponseAreIgnored() {
        var parser = Parser()
        #expect(parser.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage")) == .complete(bytes("{}")))
        #expect(parser.feed(bytes("more")) == .complete(bytes("{}")))
        #expect(parser.close(cleanly: false) == .complete(bytes("{}")))
    }

    @Test func anEmptyBodyIsComplete() {
        #expect(Parser.parse(bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) == .complete([]))
    }

    @Test(arguments: [
        ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "the server answered HTTP 404 Not Found"),
        ("HTTP/1.1 503 \r\n\r\n", "the server answered HTTP 503"),
        ("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\n\r\n", "HTTP 301 Moved"),
        ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "HTTP 101"),
        ("HTTP/1.1 204 No Content\r\n\r\n", "HTTP 204"),
        ("HTTP/1.1 500 \u{1}\u{7f}bad\r\n\r\n", "malformed HTTP status line"),
    ])
    func nonOKStatusesAreRefusedNamingTheStatus(response: String, expected: String) {
        guard case .failed(let error) = Parser.parse(bytes(response)) else {
            Issue.record("accepted \(response)")
            return
        }
        #expect("\(error)".contains(expected), "\(error)")
    }

    @Test func theStatusIsRefusedBeforeItsBodyIsRead() {
        var parser = Parser()
        let outcome = parser.feed(bytes("HTTP/1.1 403 Forbidden\r\n"))
        #expect(outcome == .failed(.status(code: 403, reason: "Forbidden")))
    }

    @Test(arguments: [
        ("HTTP/2 200\r\n\r\n", Parser.ParseError.unsupportedVersion("HTTP/2")),
        ("HTTP/1.2 200 OK\r\n\r\n", .unsupportedVersion("HTTP/1.2")),
        ("ICY 200 OK\r\n\r\n", .malformedStatusLine),
        ("\r\nHTTP/1.1 200 OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 2000 OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 20 OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 099 OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1  200 OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nName : x\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\n: x\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nA: b\u{0}c\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", .conflictingFraming),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            .conflictingFraming
        ),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .unsupportedTransferEncoding("gzip, chunked")),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            .unsupportedTransferEncoding("chunked, chunked")
        ),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", .unsupportedTransferEncoding("identity")),
        ("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", .unsupportedContentEncoding("gzip")),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\n{}\r\n0\r\n\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nbad trailer\r\n\r\n", .malformedHeader),
    ])
    func malformedResponsesAreRefused(response: String, expected: Parser.ParseError) {
        #expect(Parser.parse(bytes(response)) == .failed(expected), "\(response)")
        #expect(byteByByte(bytes(response)) == .failed(expected), "\(response)")
    }

    // MARK: Hostile sizes

    @Test(arguments: [
        "1048577", "99999999999999999999999999999999999999999999", "18446744073709551616", "9223372036854775808",
    ])
    func aContentLengthOverTheBoundIsRefusedBeforeAnyBodyIsBuffered(length: String) {
        var parser = Parser()
        let outcome = parser.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: \(length)\r\n"))
        #expect(outcome == .failed(.bodyTooLarge(limit: SPIFFEBundle.maxDocumentBytes)))
    }

    @Test func aContentLengthAtTheBoundIsAccepted() {
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: SPIFFEBundle.maxDocumentBytes)
        let head = bytes("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\n\r\n")
        #expect(Parser.parse(head + body) == .complete(body))
    }

    @Test(arguments: ["100001", "ffffffffffffffffffffffffffffffff", "10000000000000000", "7fffffffffffffff"])
    func aChunkSizeOverTheBoundOrOverflowingIsRefused(size: String) {
        var parser = Parser()
        let outcome = parser.feed(bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n"))
        #expect(outcome == .failed(.bodyTooLarge(limit: SPIFFEBundle.maxDocumentBytes)))
    }

    @Test func chunksAreBoundedTogether() {
        // Two chunks of 600 KiB: each fits, their sum does not, refused at the second size line.
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 600 << 10)
        let size = String(chunk.count, radix: 16)
        var parser = Parser()
        var outcome = parser.feed(bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n") + chunk)
        #expect(outcome == .needMoreBytes)
        outcome = parser.feed(bytes("\r\n\(size)\r\n"))
        #expect(outcome == .failed(.bodyTooLarge(limit: SPIFFEBundle.maxDocumentBytes)))
    }

    @Test func aBodyUntilCloseIsBoundedAsItArrives() {
        var parser = Parser(maxBodyBytes: 10)
        #expect(parser.feed(bytes("HTTP/1.1 200 OK\r\n\r\n0123456789")) == .needMoreBytes)
        #expect(parser.feed(bytes("x")) == .failed(.bodyTooLarge(limit: 10)))
    }

    @Test func aHeaderFloodIsRefusedAtTheHeadBound() {
        var parser = Parser()
        var outcome = parser.feed(bytes("HTTP/1.1 200 OK\r\n"))
        var fed = 0
        while outcome == .needMoreBytes && fed < 1 << 20 {
            outcome = parser.feed(bytes("X-Flood: aaaaaaaaaaaaaaaa\r\n"))
            fed += 27
        }
        #expect(outcome == .failed(.headTooLarge(limit: 16 * 1024)))
        #expect(fed <= 16 * 1024 + 27, "refused as soon as the bound was passed")
    }

    @Test func oneEndlessHeaderLineIsRefusedAtTheHeadBound() {
        let line = bytes("HTTP/1.1 200 OK\r\nX: ") + [UInt8](repeating: UInt8(ascii: "a"), count: 20_000)
        #expect(Parser.parse(line) == .failed(.headTooLarge(limit: 16 * 1024)))
    }

    @Test func endlessInterimResponsesCountAgainstTheHeadBound() {
        let interim = String(repeating: "HTTP/1.1 100 Continue\r\n\r\n", count: 1000)
        #expect(Parser.parse(bytes(interim)) == .failed(.headTooLarge(limit: 16 * 1024)))
    }

    @Test func endlessTrailersCountAgainstTheHeadBound() {
        let response =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
            + String(repeating: "X-Trailer: aaaaaaaaaaaaaaaaaaaaaa\r\n", count: 1000)
        #expect(Parser.parse(bytes(response)) == .failed(.headTooLarge(limit: 16 * 1024)))
    }

    @Test func aLongChunkLineIsRefused() {
        let response =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + String(repeating: "e", count: 300) + "\r\n"
        #expect(Parser.parse(bytes(response)) == .failed(.malformedChunk))
    }

    @Test func tinyChunksCannotMakeUsParseMegabytesOfFraming() {
        // One byte of body per chunk, with a long extension each: the framing bound stops it long before the body's.
        var parser = Parser()
        var outcome = parser.feed(bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
        let chunk = bytes("1;" + String(repeating: "e", count: 200) + "\r\nx\r\n")
        var chunks = 0
        while outcome == .needMoreBytes && chunks < 100_000 {
            outcome = parser.feed(chunk)
            chunks += 1
        }
        #expect(outcome == .failed(.chunkFramingTooLarge(limit: Parser.maxChunkFramingBytes)))
        #expect(chunks < 2000)
    }

    // MARK: Ends

    @Test func aReadToCloseBodyNeedsAProvenEnd() {
        let response = bytes("HTTP/1.1 200 OK\r\n\r\n{}")
        #expect(byteByByte(response, cleanly: true) == .complete(bytes("{}")))
        #expect(byteByByte(response, cleanly: false) == .failed(.unprovenEnd))
    }

    @Test func framedBodiesDoNotNeedAProvenEnd() {
        #expect(
            byteByByte(bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), cleanly: false)
                == .complete(bytes("{}")))
    }

    @Test(arguments: [
        ("", "connection closed before the response"),
        ("HTTP/1.1 200 OK\r\nContent-Le", "connection closed inside the response head"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "connection closed with 8 bytes of the body missing"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}", "connection closed inside the chunked body"),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
            "connection closed inside the chunked body"
        ),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", "connection closed inside the chunked body"),
    ])
    func aTruncatedResponseIsRefused(response: String, expected: String) {
        guard case .failed(let error) = Parser.parse(bytes(response)) else {
            Issue.record("accepted \(response)")
            return
        }
        #expect("\(error)" == expected)
    }

    @Test func errorTextsAreOneBoundedLine() {
        let reason = String(repeating: "r", count: 5000)
        guard case .failed(let error) = Parser.parse(bytes("HTTP/1.1 418 \(reason)\r\n\r\n")) else {
            Issue.record("accepted")
            return
        }
        let text = "\(error)"
        #expect(text.utf8.count < 120 && text.hasPrefix("the server answered HTTP 418 rrr"), "\(text)")
    }

    /// A cheap fuzz pass: every prefix and many random mutations of valid responses end in a verdict without a trap.
    @Test func mutationsNeverTrap() {
        var generator = SplitMix(seed: 0x5EED)
        for (_, response) in Self.framings {
            let original = bytes(response)
            for cut in 0...original.count { _ = Parser.parse(Array(original.prefix(cut))) }
            for _ in 0..<2000 {
                var mutated = original
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    let position = Int(generator.next() % UInt64(mutated.count))
                    mutated[position] = UInt8(truncatingIfNeeded: generator.next())
                }
                _ = Parser.parse(mutated)
                _ = byteByByte(mutated, cleanly: false)
            }
        }
    }
}

/// A tiny deterministic generator for the mutation pass.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
