import JSONText
import PKI

/// A trust domain's bundle as a file or a bundle endpoint hands it over: PEM certificates, or the SPIFFE bundle
/// format (SPIFFE Trust Domain and Bundle, §4: a JWKS document whose keys say `"use": "x509-svid"` — one
/// certificate in `x5c` — or `"use": "jwt-svid"`, with `spiffe_sequence` and `spiffe_refresh_hint`).
///
///     bytes ──first byte `{`?──yes──▶ JWKS: x509-svid keys → X509Bundle, jwt-svid keys kept as JWK JSON
///                 │ no
///                 ▼
///            PEM CERTIFICATE blocks → X509Bundle
///
/// Pure: the caller reads the bytes (bounded) and says which trust domain they are for.
public struct SPIFFEBundle: Sendable, Equatable {
    public var x509: X509Bundle
    /// The `jwt-svid` keys, each one JWK object rendered as JSON (what a JWKS `keys` array holds).
    public var jwtKeys: [String]
    /// `spiffe_sequence`, when the document has one: a later document must not have a lower one.
    public var sequence: Int64?
    /// `spiffe_refresh_hint` in seconds, when the document has one.
    public var refreshHint: Int64?

    public init(x509: X509Bundle, jwtKeys: [String] = [], sequence: Int64? = nil, refreshHint: Int64? = nil) {
        self.x509 = x509
        self.jwtKeys = jwtKeys
        self.sequence = sequence
        self.refreshHint = refreshHint
    }

    /// Why 1 MiB: what the agent reads of any file; a bundle of 512 certificates (`Certificate.maxBundleCertificates`)
    /// in JSON is about 900 KiB.
    public static let maxDocumentBytes = 1 << 20

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// Parses a PEM bundle or a SPIFFE bundle document for `trustDomain`. At least one X.509 authority is required:
    /// an empty bundle would make every peer of the domain untrusted without saying why.
    public static func parse(_ bytes: [UInt8], trustDomain: TrustDomain) throws(ParseError) -> SPIFFEBundle {
        guard bytes.count <= maxDocumentBytes else {
            throw ParseError("bundle larger than \(maxDocumentBytes) bytes")
        }
        guard bytes.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "{") else {
            do {
                let certificates = try Certificate.parseChain(
                    pem: String(decoding: bytes, as: UTF8.self), maxCount: Certificate.maxBundleCertificates)
                return SPIFFEBundle(x509: X509Bundle(trustDomain: trustDomain, certificates: certificates))
            } catch {
                throw ParseError("not a PEM bundle: \(error)")
            }
        }
        let document: JSONValue
        do { document = try JSONValue.parse(bytes, maxBytes: maxDocumentBytes) } catch {
            throw ParseError("not a SPIFFE bundle document: \(error)")
        }
        guard case .array(let keys) = document["keys"] ?? .null else {
            throw ParseError("a SPIFFE bundle document needs a \"keys\" array")
        }
        guard keys.count <= Certificate.maxBundleCertificates else {
            throw ParseError("\(keys.count) keys (at most \(Certificate.maxBundleCertificates))")
        }
        var certificates: [Certificate] = []
        var jwtKeys: [String] = []
        for (index, key) in keys.enumerated() {
            guard case .string(let use) = key["use"] ?? .null else {
                throw ParseError("key \(index) has no \"use\"")
            }
            switch use {
            case "x509-svid":
                guard case .array(let chain) = key["x5c"] ?? .null, chain.count == 1,
                    case .string(let encoded) = chain[0]
                else { throw ParseError("x509-svid key \(index) must hold exactly one certificate in \"x5c\"") }
                guard let der = Self.base64(encoded) else {
                    throw ParseError("x509-svid key \(index): \"x5c\" is not base64")
                }
                do {
                    certificates += try Certificate.parseChain(der: der, maxCount: 1)
                } catch {
                    throw ParseError("x509-svid key \(index): \(error)")
                }
            case "jwt-svid":
                guard case .string = key["kid"] ?? .null else {
                    throw ParseError("jwt-svid key \(index) has no \"kid\"")
                }
                jwtKeys.append(key.rendered)
            default:
                // The spec lets documents carry other uses; they are not ours to serve.
                continue
            }
        }
        guard !certificates.isEmpty else { throw ParseError("no x509-svid authority in the bundle") }
        return SPIFFEBundle(
            x509: X509Bundle(trustDomain: trustDomain, certificates: certificates), jwtKeys: jwtKeys,
            sequence: Self.integer(document["spiffe_sequence"]),
            refreshHint: Self.integer(document["spiffe_refresh_hint"]))
    }

    private static func integer(_ value: JSONValue?) -> Int64? {
        if case .int(let number) = value ?? .null { return number }
        return nil
    }

    /// Standard, padded base64 (RFC 4648 §4, as `x5c` uses it) decoded through the URL-alphabet decoder.
    static func base64(_ text: String) -> [UInt8]? {
        var url = ""
        url.reserveCapacity(text.utf8.count)
        for character in text.unicodeScalars {
            switch character {
            case "+": url.append("-")
            case "/": url.append("_")
            case "=": continue
            case "-", "_": return nil
            default: url.unicodeScalars.append(character)
            }
        }
        return Base64URL.decode(Substring(url))
    }
}
