/// P-256 private keys in the exact shapes OpenSSL writes them, read and written without OpenSSL 3.0's decoder and
/// encoder frameworks. Those build and search a table of every provider's decoders or encoders on each call:
/// ~2.5M instructions per key read (~8M the first time), ~3.4M for the first PKCS#8 write, three quarters of the
/// agent's start-up before this path existed. Anything that is not exactly one of these shapes (another curve, a
/// key without its public point, attributes, encryption, odd PEM) is left to OpenSSL, so what loads and what is
/// refused does not change; only the cost does.
enum P256KeyEncoding {
    static let scalarLength = 32
    static let pointLength = 65

    /// `AlgorithmIdentifier { id-ecPublicKey, prime256v1 }`.
    private static let algorithmIdentifier: [UInt8] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]
    /// `namedCurve prime256v1`, as SEC1's optional `[0] ECParameters` holds it.
    private static let curveOID: [UInt8] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]

    /// The scalar (32 bytes, big-endian) and the uncompressed public point (65 bytes).
    struct Parts: Equatable {
        var scalar: [UInt8]
        var point: [UInt8]
    }

    /// PKCS#8 `PrivateKeyInfo` (version 0) around a SEC1 `ECPrivateKey` without parameters and with the public
    /// key, byte for byte what OpenSSL 3's encoder writes for a P-256 key.
    static func pkcs8(_ parts: Parts) -> [UInt8] {
        precondition(parts.scalar.count == scalarLength && parts.point.count == pointLength)
        var out: [UInt8] = [0x30, 0x81, 0x87, 0x02, 0x01, 0x00]
        out.reserveCapacity(138)
        out += algorithmIdentifier
        out += [0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20]
        out += parts.scalar
        out += [0xa1, 0x44, 0x03, 0x42, 0x00]
        out += parts.point
        return out
    }

    /// The parts of a PKCS#8 P-256 key in the shape `pkcs8(_:)` writes (the inner key may also carry its curve);
    /// nil for any other shape, which is the caller's cue to ask OpenSSL.
    static func parts(pkcs8 der: [UInt8]) -> Parts? {
        var outer = DERCursor(der[...])
        guard var info = outer.nested(tag: 0x30), outer.isAtEnd else { return nil }
        guard info.element(tag: 0x02)?.elementsEqual([0]) == true,
            info.element(tag: 0x30)?.elementsEqual(algorithmIdentifier.dropFirst(2)) == true,
            let inner = info.element(tag: 0x04), info.isAtEnd
        else { return nil }
        return parts(sec1: inner)
    }

    /// The parts of a SEC1 `ECPrivateKey` (RFC 5915) on P-256 that carries its public key; nil otherwise.
    static func parts(sec1 der: ArraySlice<UInt8>) -> Parts? {
        var outer = DERCursor(der)
        guard var key = outer.nested(tag: 0x30), outer.isAtEnd else { return nil }
        guard key.element(tag: 0x02)?.elementsEqual([1]) == true, let scalar = key.element(tag: 0x04),
            scalar.count == scalarLength
        else { return nil }
        if key.peekTag == 0xa0 {
            guard key.element(tag: 0xa0)?.elementsEqual(curveOID) == true else { return nil }
        }
        guard var publicKey = key.nested(tag: 0xa1), key.isAtEnd, let bits = publicKey.element(tag: 0x03),
            publicKey.isAtEnd, bits.count == pointLength + 1, bits.first == 0, bits.dropFirst().first == 0x04
        else { return nil }
        return Parts(scalar: Array(scalar), point: Array(bits.dropFirst()))
    }

    /// The DER of a PEM text's first block when it is labelled `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1),
    /// with strict base64 and no headers; nil for anything else.
    static func firstKeyBlock(pem: String) -> (der: [UInt8], isPKCS8: Bool)? {
        var utf8 = Array(pem.utf8)[...]
        let begin = Array("-----BEGIN ".utf8)
        // A block starts at the beginning of a line; text before it is skipped, as OpenSSL does.
        while !utf8.starts(with: begin) {
            guard let newline = utf8.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            utf8 = utf8[(newline + 1)...]
        }
        guard let lineEnd = utf8.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        var header = utf8[..<lineEnd]
        if header.last == UInt8(ascii: "\r") { header = header.dropLast() }
        let isPKCS8: Bool
        if header.elementsEqual("-----BEGIN PRIVATE KEY-----".utf8) {
            isPKCS8 = true
        } else if header.elementsEqual("-----BEGIN EC PRIVATE KEY-----".utf8) {
            isPKCS8 = false
        } else {
            return nil
        }
        let end = Array("-----END \(isPKCS8 ? "PRIVATE KEY" : "EC PRIVATE KEY")-----".utf8)
        let body = utf8[(lineEnd + 1)...]
        guard let endStart = Self.firstIndex(of: end, in: body) else { return nil }
        guard let der = Self.base64(body[..<endStart]) else { return nil }
        return (der, isPKCS8)
    }
}

extension P256KeyEncoding {
    /// A PEM body: standard base64, padded, line breaks anywhere, nothing else (`Base64URL.decode` once line breaks
    /// and padding are taken off and the two alphabet letters swapped; it refuses any other character). Keys are a
    /// few hundred bytes, read from files their readers already bounded.
    fileprivate static func base64(_ body: ArraySlice<UInt8>) -> [UInt8]? {
        var url: [UInt8] = []
        url.reserveCapacity(body.count)
        var padding = 0
        for byte in body {
            switch byte {
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"): continue
            case UInt8(ascii: "="): padding += 1
            // Data after padding, or a URL-alphabet letter, is not standard base64.
            case _ where padding > 0, UInt8(ascii: "-"), UInt8(ascii: "_"): return nil
            case UInt8(ascii: "+"): url.append(UInt8(ascii: "-"))
            case UInt8(ascii: "/"): url.append(UInt8(ascii: "_"))
            default: url.append(byte)
            }
        }
        // Whole quanta only, padding included.
        guard padding <= 2, (url.count + padding) % 4 == 0 else { return nil }
        return Base64URL.decode(Substring(decoding: url, as: UTF8.self))
    }

    /// Where `needle` first starts in `haystack` (a plain scan: the standard library's `firstRange(of:)` lives in
    /// _StringProcessing, whose generic searcher cost ~0.4 MB of resident code for this one call).
    fileprivate static func firstIndex(of needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var index = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while index <= last {
            if haystack[index] == first, haystack[index..<(index + needle.count)].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }
}

/// A bounds-checked DER reader over definite, minimal lengths (up to 0xffff: keys are small).
private struct DERCursor {
    private var bytes: ArraySlice<UInt8>

    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

    var isAtEnd: Bool { bytes.isEmpty }
    var peekTag: UInt8? { bytes.first }

    /// The next element's contents as a cursor, when its tag is `tag`.
    mutating func nested(tag: UInt8) -> DERCursor? { element(tag: tag).map(DERCursor.init) }

    /// The contents of the next element when its tag is `tag`; nil (and nothing consumed) otherwise.
    mutating func element(tag: UInt8) -> ArraySlice<UInt8>? {
        var cursor = bytes.startIndex
        guard cursor < bytes.endIndex, bytes[cursor] == tag else { return nil }
        cursor += 1
        guard cursor < bytes.endIndex else { return nil }
        let first = bytes[cursor]
        cursor += 1
        var length: Int
        switch first {
        case 0..<0x80: length = Int(first)
        case 0x81:
            guard cursor < bytes.endIndex, bytes[cursor] >= 0x80 else { return nil }
            length = Int(bytes[cursor])
            cursor += 1
        case 0x82:
            guard bytes.endIndex - cursor >= 2, bytes[cursor] != 0 else { return nil }
            length = Int(bytes[cursor]) << 8 | Int(bytes[cursor + 1])
            cursor += 2
        default: return nil
        }
        guard bytes.endIndex - cursor >= length else { return nil }
        let contents = bytes[cursor..<(cursor + length)]
        bytes = bytes[(cursor + length)...]
        return contents
    }
}
