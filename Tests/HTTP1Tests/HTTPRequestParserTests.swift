import Testing

@testable import HTTP1

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite struct HTTPRequestParserTests {
    @Test func curlRequestParses() {
        let outcome = HTTPRequestParser.parse(
            bytes(
                "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:15095\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"))
        guard case .complete(let request) = outcome else {
            Issue.record("expected complete, got \(outcome)")
            return
        }
        #expect(request.method == "GET")
        #expect(request.target == "/metrics?x=1")
        #expect(request.path == "/metrics")
        #expect(request.minorVersion == 1)
        #expect(request.headerNames == ["host", "user-agent", "accept"])
    }

    @Test func oneByteAtATimeGivesTheSameRequest() {
        let text = bytes("GET /ready HTTP/1.0\nAccept: */*\n\n")
        var parser = HTTPRequestParser()
        var last = HTTPRequestParser.Outcome.needMoreBytes
        for (index, byte) in text.enumerated() {
            last = parser.feed([byte])
            if index < text.count - 1 { #expect(last == .needMoreBytes) }
        }
        #expect(last == HTTPRequestParser.parse(text))
        guard case .complete(let request) = last else {
            Issue.record("expected complete, got \(last)")
            return
        }
        #expect(request.path == "/ready" && request.minorVersion == 0)
    }

    @Test func incompleteHeadNeedsMoreBytes() {
        #expect(HTTPRequestParser.parse(bytes("GET /live HTTP/1.1\r\nHost: x\r\n")) == .needMoreBytes)
        #expect(HTTPRequestParser.parse([]) == .needMoreBytes)
    }

    @Test func oneLeadingEmptyLineIsIgnored() {
        guard case .complete = HTTPRequestParser.parse(bytes("\r\nGET / HTTP/1.1\r\n\r\n")) else {
            Issue.record("a leading CRLF must be ignored (RFC 9112 §2.2)")
            return
        }
    }

    @Test(arguments: [
        "GET /live\r\n\r\n",  // HTTP/0.9 form
        "GET  /live HTTP/1.1\r\n\r\n",  // two spaces
        "GET live HTTP/1.1\r\n\r\n",  // not origin form
        "GET http://x/live HTTP/1.1\r\n\r\n",  // absolute form is not for us
        "G(T /live HTTP/1.1\r\n\r\n",  // not a token
        "GET /li\u{7F}ve HTTP/1.1\r\n\r\n",
        "GET /live HTTX/1.1\r\n\r\n",
        "\u{16}\u{03}\u{01}\u{02}\u{00}\n\n",  // a TLS ClientHello's first bytes
    ])
    func malformedRequestLineIs400(_ text: String) {
        let outcome = HTTPRequestParser.parse(bytes(text))
        #expect(outcome == .invalid(.malformedRequestLine))
        #expect(HTTPRequestParser.ParseError.malformedRequestLine.statusCode == 400)
    }

    @Test func otherVersionsAre505() {
        #expect(HTTPRequestParser.parse(bytes("GET / HTTP/2.0\r\n\r\n")) == .invalid(.unsupportedVersion))
        #expect(HTTPRequestParser.parse(bytes("GET / HTTP/1.7\r\n\r\n")) == .invalid(.unsupportedVersion))
    }

    @Test(arguments: ["NoColon\r\n", ": empty name\r\n", "Bad Name: x\r\n", " folded: x\r\n", "X: a\u{01}b\r\n"])
    func malformedHeaderIs400(_ header: String) {
        #expect(HTTPRequestParser.parse(bytes("GET / HTTP/1.1\r\n" + header + "\r\n")) == .invalid(.malformedHeader))
    }

    @Test func bodiesAreRefused() {
        #expect(
            HTTPRequestParser.parse(bytes("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"))
                == .invalid(.bodyNotAllowed))
        #expect(
            HTTPRequestParser.parse(bytes("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"))
                == .invalid(.bodyNotAllowed))
        guard case .complete = HTTPRequestParser.parse(bytes("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")) else {
            Issue.record("Content-Length: 0 is no body")
            return
        }
    }

    @Test func headOneByteOverTheLimitIsRefusedOneUnderIsNot() {
        let head = "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 100) + "\r\n\r\n"
        let size = head.utf8.count
        guard case .complete = HTTPRequestParser.parse(bytes(head), maxHeadBytes: size) else {
            Issue.record("a head of exactly the limit must parse")
            return
        }
        #expect(HTTPRequestParser.parse(bytes(head), maxHeadBytes: size - 1) == .invalid(.headTooLarge))
        #expect(HTTPRequestParser.ParseError.headTooLarge.statusCode == 431)
    }

    @Test func endlessLineStopsAtTheLimitWithoutBufferingMore() {
        var parser = HTTPRequestParser()
        var outcome = HTTPRequestParser.Outcome.needMoreBytes
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
        var fed = 0
        while outcome == .needMoreBytes && fed < 100_000 {
            outcome = parser.feed(chunk)
            fed += chunk.count
        }
        #expect(outcome == .invalid(.headTooLarge))
        #expect(fed <= HTTPRequestParser.defaultMaxHeadBytes + chunk.count)
    }

    @Test func tooManyHeadersAreRefused() {
        let headers = (0...HTTPRequestParser.maxHeaderCount).map { "X-\($0): v\r\n" }.joined()
        #expect(
            HTTPRequestParser.parse(bytes("GET / HTTP/1.1\r\n" + headers + "\r\n"), maxHeadBytes: 1 << 20)
                == .invalid(.tooManyHeaders))
    }

    @Test func verdictIsFinal() {
        var parser = HTTPRequestParser()
        let first = parser.feed(bytes("GET / HTTP/1.1\r\n\r\n"))
        #expect(parser.feed(bytes("garbage\r\n\r\n")) == first)
    }

    @Test func responseBytes() {
        var response = HTTPResponse(status: 503, body: "no\n")
        #expect(
            String(decoding: response.bytes, as: UTF8.self)
                == "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
                + "Connection: close\r\n\r\nno\n")
        response.omitBody = true
        #expect(
            String(decoding: response.bytes, as: UTF8.self).hasSuffix("Content-Length: 3\r\nConnection: close\r\n\r\n"))
    }
}

/// Properties over many generated inputs (a deterministic generator: a failure reproduces). The libFuzzer target
/// can call `HTTPRequestParser.parse(_:)` the same way.
@Suite struct HTTPRequestParserPropertyTests {
    /// SplitMix64: small, deterministic, good enough to vary inputs.
    struct Generator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// Inputs built from request-like fragments, so that many get past the request line.
    static func input(_ g: inout Generator) -> [UInt8] {
        let fragments = [
            "GET ", "HEAD ", "/metrics", "/live?x", " HTTP/1.1", " HTTP/1.0", "\r\n", "\n", "Host: a", ": ", "X",
            "Content-Length: 0", "Content-Length: 7", "Transfer-Encoding: chunked", " ", "\t", "\u{7F}", "\0", "\r",
        ]
        var bytes: [UInt8] = []
        for _ in 0..<g.below(24) {
            if g.below(5) == 0 {
                bytes.append(UInt8(truncatingIfNeeded: g.next()))
            } else {
                bytes += Array(fragments[g.below(fragments.count)].utf8)
            }
        }
        return bytes
    }

    @Test func anySplitGivesTheSameVerdictAsTheWholeInput() {
        var g = Generator(state: 14)
        for _ in 0..<5_000 {
            let bytes = Self.input(&g)
            let whole = HTTPRequestParser.parse(bytes, maxHeadBytes: 64)
            var parser = HTTPRequestParser(maxHeadBytes: 64)
            var outcome = HTTPRequestParser.Outcome.needMoreBytes
            var index = 0
            while index < bytes.count {
                let end = min(bytes.count, index + 1 + g.below(8))
                outcome = parser.feed(bytes[index..<end])
                index = end
            }
            #expect(outcome == whole, "input \(bytes)")
        }
    }

    @Test func randomBytesNeverCompleteWithoutAnEmptyLine() {
        var g = Generator(state: 7)
        for _ in 0..<5_000 {
            let bytes = (0..<g.below(200)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            if case .complete = HTTPRequestParser.parse(bytes) {
                let text = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
                #expect(text.contains { $0.isEmpty || $0 == [UInt8(ascii: "\r")] }, "completed without an empty line")
            }
        }
    }
}
