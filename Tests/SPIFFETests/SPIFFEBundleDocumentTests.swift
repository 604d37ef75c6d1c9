import Foundation
import JSONText
import PKI
import SPIFFE
import TestSupport
import Testing

@Suite struct SPIFFEBundleDocumentTests {
    let trustDomain = try! TrustDomain("example.org")
    let now = FakeClock.defaultStart

    /// A self-signed CA of `trustDomain` on a key of `algorithm`.
    func root(_ algorithm: KeyAlgorithm) throws -> Certificate {
        let key = try PrivateKey.generate(algorithm)
        return try CertificateBuilder(
            subject: DistinguishedName(commonName: "\(algorithm) root"), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: now - 60, notAfter: now + 86_400,
            basicConstraints: .ca(pathLength: nil), keyUsage: [.keyCertSign, .cRLSign],
            uriSANs: ["spiffe://example.org"], includeAuthorityKeyIdentifier: false
        ).sign(issuer: nil, issuerKey: key)
    }

    func jwtKey(kid: String) throws -> String {
        let (x, y) = try PrivateKey.generate().publicKey.ecCoordinates()
        return JSONValue.object([
            ("use", .string("jwt-svid")), ("kty", .string("EC")), ("kid", .string(kid)), ("crv", .string("P-256")),
            ("x", .string(Base64URL.encode(x))), ("y", .string(Base64URL.encode(y))),
        ]).rendered
    }

    @Test func ecAndRSARootsAndJWTKeysRoundTrip() throws {
        let roots = [try root(.ecdsaP256), try root(.ecdsaP384), try root(.rsa(bits: 2048))]
        let bundle = SPIFFEBundle(
            x509: X509Bundle(trustDomain: trustDomain, certificates: roots),
            jwtKeys: [try jwtKey(kid: "current"), try jwtKey(kid: "next")], sequence: 3_400_000_123, refreshHint: 300)
        let document = try bundle.document()
        let parsed = try SPIFFEBundle.parse(Array(document.utf8), trustDomain: trustDomain)
        #expect(parsed == bundle)
        #expect(parsed.x509.certificates == roots)
        // Written again, the same bytes: the member order is fixed.
        #expect(try parsed.document() == document)
    }

    @Test func membersFollowTheSpecInAFixedOrder() throws {
        let ec = try root(.ecdsaP384)
        let rsa = try root(.rsa(bits: 2048))
        let bundle = SPIFFEBundle(
            x509: X509Bundle(trustDomain: trustDomain, certificates: [ec, rsa]), jwtKeys: [try jwtKey(kid: "k1")],
            sequence: 7, refreshHint: 300)
        let document = try JSONValue.parse(Array(try bundle.document().utf8), maxBytes: 1 << 20)
        guard case .object(let top) = document, case .array(let keys) = document["keys"] ?? .null else {
            Issue.record("not a JWK Set")
            return
        }
        #expect(top.map(\.0) == ["keys", "spiffe_refresh_hint", "spiffe_sequence"])
        #expect(document["spiffe_refresh_hint"] == .int(300) && document["spiffe_sequence"] == .int(7))
        guard case .object(let ecMembers) = keys[0], case .object(let rsaMembers) = keys[1],
            case .object(let jwtMembers) = keys[2]
        else {
            Issue.record("keys are not objects")
            return
        }
        #expect(ecMembers.map(\.0) == ["use", "kty", "crv", "x", "y", "x5c"])
        #expect(rsaMembers.map(\.0) == ["use", "kty", "n", "e", "x5c"])
        #expect(jwtMembers.map(\.0) == ["use", "kty", "kid", "crv", "x", "y"])
        #expect(keys[0]["use"] == .string("x509-svid") && keys[0]["crv"] == .string("P-384"))
        #expect(keys[1]["kty"] == .string("RSA") && keys[1]["e"] == .string("AQAB"))
        // x5c is standard, padded base64 of the DER (RFC 7517 §4.7), unlike the base64url parameters.
        #expect(keys[0]["x5c"] == .array([.string(Data(ec.der).base64EncodedString())]))
        #expect(keys[1]["x5c"] == .array([.string(Data(rsa.der).base64EncodedString())]))
        // The EC parameters are the certificate's key: 48-byte coordinates for P-384.
        guard case .string(let x) = keys[0]["x"] ?? .null, case .string(let n) = keys[1]["n"] ?? .null else {
            Issue.record("no x or n")
            return
        }
        #expect(Base64URL.decode(Substring(x))?.count == 48)
        #expect(Base64URL.decode(Substring(n))?.count == 256)
    }

    @Test func theECParametersAreTheKeysCoordinates() throws {
        let key = try PrivateKey.generate()
        let (x, y) = try key.publicKey.ecCoordinates()
        #expect(try key.publicKey.jwkParameters() == .ec(curve: "P-256", x: x, y: y))
    }

    @Test func hintAndSequenceAreLeftOutWhenUnset() throws {
        let bundle = SPIFFEBundle(x509: X509Bundle(trustDomain: trustDomain, certificates: [try root(.ecdsaP256)]))
        let document = try bundle.document()
        #expect(!document.contains("spiffe_"))
        #expect(try SPIFFEBundle.parse(Array(document.utf8), trustDomain: trustDomain) == bundle)
    }

    /// A JWT authority the reader would drop (or refuse) is not written: the document would mean less than it says.
    @Test(arguments: [
        "not json", "[]", #"{"use":"x509-svid","kid":"k"}"#, #"{"use":"jwt-svid"}"#, #"{"use":"jwt-svid","kid":1}"#,
    ])
    func jwtKeysTheReaderWouldDropAreRefused(key: String) throws {
        let bundle = SPIFFEBundle(
            x509: X509Bundle(trustDomain: trustDomain, certificates: [try root(.ecdsaP256)]), jwtKeys: [key])
        #expect(throws: SPIFFEBundle.WriteError.self) { try bundle.document() }
    }
}
