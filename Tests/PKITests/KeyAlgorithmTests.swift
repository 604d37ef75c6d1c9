import PKI
import SPIFFE
import TestSupport
import Testing

/// RSA and P-384 wherever P-256 goes: generation, PEM forms, CSRs, leaves and X509-SVID validation.
@Suite struct KeyAlgorithmTests {
    static let algorithms: [KeyAlgorithm] = [.ecdsaP256, .ecdsaP384, .rsa(bits: 2048)]

    @Test(arguments: algorithms)
    func generatedKeysRoundTripAndSayWhatTheyAre(algorithm: KeyAlgorithm) throws {
        let key = try PrivateKey.generate(algorithm)
        #expect(key.algorithm == algorithm)
        let reparsed = try PrivateKey(pem: try key.pkcs8PEM())
        #expect(reparsed.algorithm == algorithm)
        #expect(reparsed.publicKey == key.publicKey)
        #expect(try PrivateKey(pkcs8DER: try key.pkcs8DER()).publicKey == key.publicKey)
        // The PEM form is PKCS#8 in 64-character base64 lines, as OpenSSL's PEM writer lays it out.
        let lines = try key.pkcs8PEM().split(separator: "\n").map(String.init)
        #expect(lines.first == "-----BEGIN PRIVATE KEY-----" && lines.last == "-----END PRIVATE KEY-----")
        let body = lines.dropFirst().dropLast()
        #expect(body.dropLast().allSatisfy { $0.count == 64 } && (body.last?.count ?? 0) <= 64)
        let url = Base64URL.encode(try key.pkcs8DER())
        let base64 = url.replacing("-", with: "+").replacing("_", with: "/")
        #expect(body.joined() == base64 + String(repeating: "=", count: (4 - base64.count % 4) % 4))
    }

    @Test(arguments: algorithms)
    func csrCarriesTheSPIFFEIDAndProvesPossession(algorithm: KeyAlgorithm) throws {
        let key = try PrivateKey.generate(algorithm)
        let csr = try CertificateSigningRequest(
            subject: DistinguishedName([]), uriSANs: ["spiffe://example.org/ns/a/sa/b"], key: key)
        #expect(csr.uriSANs == ["spiffe://example.org/ns/a/sa/b"])
        #expect(csr.signatureIsValid)
        #expect(csr.publicKey == key.publicKey)
        #expect(csr.pem.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----"))
    }

    @Test(arguments: algorithms)
    func leavesForAnyAlgorithmAreValidX509SVIDsAndOnlyWithTheirOwnKey(algorithm: KeyAlgorithm) throws {
        let ca = try TestCA()
        let key = try PrivateKey.generate(algorithm)
        let leaf = try CertificateBuilder(
            subject: DistinguishedName([]), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: ca.now - 60, notAfter: ca.now + 600,
            keyUsage: [.digitalSignature, .keyEncipherment], uriSANs: ["spiffe://example.org/w"]
        ).sign(issuer: ca.root, issuerKey: ca.rootKey)
        #expect(leaf.publicKeyMatches(key))
        #expect(!leaf.publicKeyMatches(try PrivateKey.generate(algorithm)))
        let svid = try X509SVID(chain: [leaf], privateKey: key, now: ca.now)
        try svid.verify(against: ca.bundle, at: ca.now)
        // A key of another algorithm never matches.
        let other: KeyAlgorithm = algorithm.isRSA ? .ecdsaP256 : .rsa(bits: 2048)
        #expect(throws: SVIDError.keyMismatch) {
            try X509SVID(chain: [leaf], privateKey: try PrivateKey.generate(other), now: ca.now)
        }
    }

    @Test func rsaKeysOutsideTheSupportedSizesAreRefused() {
        #expect(throws: PKIError.self) { try PrivateKey.generate(.rsa(bits: 1024)) }
        #expect(throws: PKIError.self) { try PrivateKey.generate(.rsa(bits: 8192)) }
    }
}
