import BundleEndpoint

/// What another trust domain's bundle endpoint (or anyone on the path before TLS verified it) controls: the HTTP/1.1
/// response, and, from a flag, the endpoint's URL. The first byte picks which.
///
/// The response's outcome must not depend on how TCP split it (the second byte picks the split), and the parser
/// never holds more than its bounds. A URL that parses must print as a URL that parses to the same value.
enum BundleEndpointTarget {
    static func run(_ input: UnsafeRawBufferPointer) {
        guard let selector = input.first else { return }
        let bytes = Array(input.dropFirst())
        if selector & 1 == 0 {
            response(bytes)
        } else {
            url(bytes)
        }
    }

    private static func response(_ bytes: [UInt8]) {
        let whole = HTTPResponseParser.parse(bytes)
        let cut = bytes.isEmpty ? 0 : Int(bytes[0]) * 7 % (bytes.count + 1)
        var parser = HTTPResponseParser()
        var split = parser.feed(bytes[..<cut])
        if case .needMoreBytes = split { split = parser.feed(bytes[cut...]) }
        if case .needMoreBytes = split { split = parser.close(cleanly: true) }
        guard split == whole else { fatalError("split at \(cut) changed the outcome: \(split) vs \(whole)") }
        if case .complete(let body) = whole, body.count > HTTPResponseParser().maxBodyBytes {
            fatalError("a body of \(body.count) bytes passed the bound")
        }
    }

    private static func url(_ bytes: [UInt8]) {
        guard let parsed = try? BundleEndpointURL(parsing: String(decoding: bytes, as: UTF8.self)) else { return }
        guard let again = try? BundleEndpointURL(parsing: parsed.description), again == parsed else {
            fatalError("\(parsed) does not parse back to itself")
        }
    }
}
