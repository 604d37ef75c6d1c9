import PKI
import TestSupport
import Testing

@Suite struct PrivateKeyTests {
    @Test func generatedKeyRoundTripsThroughPKCS8DERAndPEM() throws {
        let key = try PrivateKey.generate()
        #expect(key.algorithm == .ecdsaP256)
        let der = try key.pkcs8DER()
        let fromDER = try PrivateKey(pkcs8DER: der)
        #expect(fromDER.publicKey == key.publicKey)
        let pem = try key.pkcs8PEM()
        #expect(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"))
        #expect(try PrivateKey(pem: pem).publicKey == key.publicKey)
        #expect(try PrivateKey.generate().publicKey != key.publicKey)
    }

    @Test func truncatedPKCS8IsRejectedWithOpenSSLReason() throws {
        let der = try PrivateKey.generate().pkcs8DER()
        let error = #expect(throws: PKIError.self) { try PrivateKey(pkcs8DER: Array(der.dropLast(5))) }
        #expect(error?.operation == "parsing a PKCS#8 DER private key")
        #expect(error?.reasons.isEmpty == false)
    }

    @Test func garbagePEMIsRejected() {
        let error = #expect(throws: PKIError.self) { try PrivateKey(pem: "not a key") }
        #expect(error?.reasons.isEmpty == false, "\(String(describing: error))")
    }
}

@Suite struct CertificateTests {
    let ca: TestCA
    init() throws { ca = try TestCA() }

    @Test func rootHasTheRequestedFields() throws {
        let root = ca.root
        #expect(root.isCA)
        #expect(root.isSelfSigned)
        #expect(root.keyUsage == [.keyCertSign, .cRLSign])
        #expect(root.extendedKeyUsage == nil)
        #expect(root.uriSANs == ["spiffe://example.org"])
        #expect(root.subject == "CN=example.org root,O=TestCA")
        #expect(root.issuer == root.subject)
        #expect(root.notBefore == ca.now - 3600)
        #expect(root.notAfter == ca.now + 365 * 86_400)
        #expect(root.publicKeyMatches(ca.rootKey))
        #expect(!root.publicKeyMatches(try PrivateKey.generate()))
        #expect(root.sha256Fingerprint.count == 32)
    }

    @Test func leafFieldsAndSerial() throws {
        let (chain, key) = try ca.makeLeaf()
        let leaf = chain[0]
        #expect(!leaf.isCA)
        #expect(!leaf.isSelfSigned)
        #expect(leaf.keyUsage == [.digitalSignature])
        #expect(leaf.extendedKeyUsage == [.serverAuth, .clientAuth])
        #expect(leaf.uriSANs == ["spiffe://example.org/workload"])
        #expect(leaf.issuer == ca.root.subject)
        #expect(leaf.publicKeyMatches(key))
        #expect(!leaf.serialHex.isEmpty && leaf.serialHex == leaf.serialHex.lowercased())
        #expect(leaf.serialHex.count <= 32)
    }

    @Test func builtAndParsedLeavesAgreeOnTheirKey() throws {
        // Built leaves take a fast path that leaves OpenSSL without a decoded key; both forms must behave alike.
        let (chain, key) = try ca.makeLeaf()
        let parsed = try Certificate(der: chain[0].der)
        for certificate in [chain[0], parsed] {
            #expect(certificate.publicKeyMatches(key))
            #expect(!certificate.publicKeyMatches(ca.rootKey))
            #expect(certificate.publicKey == key.publicKey)
            try TrustStore(roots: [ca.root]).verify(leaf: certificate, at: ca.now)
        }
        #expect(parsed == chain[0])
    }

    @Test func explicitSerialIsReadBackAsHex() throws {
        let key = try PrivateKey.generate()
        let certificate = try CertificateBuilder(
            subject: DistinguishedName(commonName: "x"), publicKey: key.publicKey, serialNumber: [0x01, 0xab],
            notBefore: ca.now, notAfter: ca.now + 10
        ).sign(issuer: nil, issuerKey: key)
        #expect(certificate.serialHex == "1ab")
        #expect(certificate.keyUsage == nil)
    }

    @Test func zeroSerialIsRejected() throws {
        let key = try PrivateKey.generate()
        let builder = CertificateBuilder(
            subject: DistinguishedName(commonName: "x"), publicKey: key.publicKey, serialNumber: [0],
            notBefore: ca.now, notAfter: ca.now + 10)
        #expect(throws: PKIError.self) { try builder.sign(issuer: nil, issuerKey: key) }
    }

    @Test func pemAndDERRoundTripIncludingMultiCertificateBundles() throws {
        let intermediate = try ca.makeIntermediate()
        var options = TestCA.LeafOptions()
        options.intermediate = intermediate
        let (chain, _) = try ca.makeLeaf(options)
        let pem = Certificate.pem(chain + [ca.root])
        let parsed = try Certificate.parseChain(pem: pem)
        #expect(parsed == chain + [ca.root])
        let der = Certificate.concatenatedDER(parsed)
        #expect(try Certificate.parseChain(der: der) == parsed)
        #expect(try Certificate(der: ca.root.der) == ca.root)
        #expect(try Certificate(pem: ca.root.pem) == ca.root)
    }

    @Test func damagedInputIsRejected() throws {
        #expect(throws: PKIError.self) { try Certificate(der: Array(ca.root.der.dropLast(10))) }
        #expect(throws: PKIError.self) { try Certificate(der: ca.root.der + [0]) }
        #expect(throws: PKIError.self) { try Certificate.parseChain(pem: "") }
        let pem = ca.root.pem
        let truncated = String(pem.prefix(pem.count / 2))
        #expect(throws: PKIError.self) { try Certificate.parseChain(pem: truncated) }
    }

    @Test func nameConstraintsAndDNSNames() throws {
        let key = try PrivateKey.generate()
        let certificate = try CertificateBuilder(
            subject: DistinguishedName(commonName: "c"), publicKey: key.publicKey, serialNumber: [7],
            notBefore: ca.now, notAfter: ca.now + 10, basicConstraints: .ca(pathLength: 0),
            keyUsage: [.keyCertSign], dnsSANs: ["a.example"], permittedURIDomains: ["example.org"]
        ).sign(issuer: nil, issuerKey: key)
        #expect(certificate.dnsSANs == ["a.example"])
        #expect(certificate.pathLength == 0)
    }
}

@Suite struct TrustStoreTests {
    let ca: TestCA
    init() throws { ca = try TestCA() }

    @Test func verifiesLeafThroughIntermediateAtAGivenTime() throws {
        let intermediate = try ca.makeIntermediate()
        var options = TestCA.LeafOptions()
        options.intermediate = intermediate
        let (chain, _) = try ca.makeLeaf(options)
        let store = try TrustStore(roots: [ca.root])
        try store.verify(leaf: chain[0], intermediates: [intermediate.certificate], at: ca.now)
        let missing = #expect(throws: PKIError.self) { try store.verify(leaf: chain[0], at: ca.now) }
        #expect(missing?.description.contains("unable to get local issuer certificate") == true)
        let expired = #expect(throws: PKIError.self) {
            try store.verify(leaf: chain[0], intermediates: [intermediate.certificate], at: ca.now + 86_400)
        }
        #expect(expired?.description.contains("certificate has expired") == true)
    }

    @Test func rejectsAnotherRoot() throws {
        let other = try TestCA()
        let (chain, _) = try ca.makeLeaf()
        #expect(throws: PKIError.self) { try TrustStore(roots: [other.root]).verify(leaf: chain[0], at: ca.now) }
    }
}

@Suite struct CSRTests {
    @Test func createParseAndVerify() throws {
        let key = try PrivateKey.generate()
        let csr = try CertificateSigningRequest(
            subject: DistinguishedName(organization: "o"), uriSANs: ["spiffe://example.org/a"], key: key)
        let parsed = try CertificateSigningRequest(der: csr.der)
        #expect(parsed.signatureIsValid)
        #expect(parsed.uriSANs == ["spiffe://example.org/a"])
        #expect(parsed.subject == "O=o")
        #expect(parsed.publicKey == key.publicKey)
        #expect(csr.pem.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----"))
    }

    @Test func tamperedCSRFailsVerification() throws {
        let key = try PrivateKey.generate()
        var der = try CertificateSigningRequest(subject: DistinguishedName(organization: "o"), key: key).der
        // Flip a bit of the subject "o": the structure still parses, the signature no longer matches.
        if let index = der.firstIndex(of: UInt8(ascii: "o")) { der[index] = UInt8(ascii: "p") }
        let parsed = try CertificateSigningRequest(der: der)
        #expect(!parsed.signatureIsValid)
    }
}

@Suite struct TimestampTests {
    @Test func arithmeticAndDescription() {
        let t = Timestamp(secondsSinceEpoch: 1_767_225_600)
        #expect(t.description == "2026-01-01T00:00:00Z")
        #expect((t + 61) - t == 61)
        #expect(t - 1 < t)
    }
}

@Suite struct EncryptedKeyTests {
    @Test func encryptedPEMIsRejectedWithoutPrompting() {
        // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:x`
        let encrypted = """
            -----BEGIN ENCRYPTED PRIVATE KEY-----
            MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAjAEV8/xHqXmQICCAAw
            DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEI3CTXlIUDIOG+ws5gr+qm4EgZAb
            lMjVu32YOv5MeBvV4A4w8dZpyd44K1ESIJKnHP0tN6UKpnsnARO+iN07G8lhAdAw
            2/PJcgXlFVmx/VZAixHfzzbilUP+7viphWtZq1GKSbmlqbpoW5uH6mn8qAno4A52
            e92KHGsxV/5Jx3WObweCstcHNz9LYBiiR5xaA9ZSLHXFH+22LBQigDDc1sZyyRw=
            -----END ENCRYPTED PRIVATE KEY-----
            """
        #expect(throws: PKIError.self) { try PrivateKey(pem: encrypted) }
    }
}
