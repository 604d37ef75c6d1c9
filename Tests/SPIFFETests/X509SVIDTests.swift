import PKI
import SPIFFE
import TestSupport
import Testing

@Suite struct X509SVIDTests {
    let ca: TestCA
    init() throws { ca = try TestCA() }

    @Test func validLeafBecomesAnSVID() throws {
        let (chain, key) = try ca.makeLeaf()
        let id = try SPIFFEID(parsing: "spiffe://example.org/workload")
        let svid = try X509SVID(
            chain: chain, privateKey: key, now: ca.now, expectedID: id, expectedTrustDomain: ca.trustDomain)
        #expect(svid.spiffeID == id)
        #expect(svid.leaf == chain[0])
        try svid.verify(against: ca.bundle, at: ca.now)
    }

    @Test func validChainWithIntermediateBecomesAnSVIDAndVerifies() throws {
        var options = TestCA.LeafOptions()
        options.intermediate = try ca.makeIntermediate()
        let (chain, key) = try ca.makeLeaf(options)
        let svid = try X509SVID(chain: chain, privateKey: key, now: ca.now)
        #expect(svid.chain.count == 2)
        try svid.verify(against: ca.bundle, at: ca.now)
        #expect(throws: PKIError.self) { try svid.verify(against: TestCA().bundle, at: ca.now) }
    }

    @Test func pemAndWorkloadAPIFormsParse() throws {
        let (chain, key) = try ca.makeLeaf()
        let fromPEM = try X509SVID(chainPEM: Certificate.pem(chain), keyPEM: key.pkcs8PEM(), now: ca.now)
        let fromDER = try X509SVID(chainDER: fromPEM.chainDER, keyPKCS8DER: key.pkcs8DER(), now: ca.now)
        #expect(fromDER.chain == chain)
        #expect(fromDER.chainPEM == fromPEM.chainPEM)
    }

    static func expectedError(_ rule: TestCA.BrokenRule, now: Timestamp, chain: [Certificate]) throws -> SVIDError {
        switch rule {
        case .leafIsCA: return .leafIsCA
        case .twoURISANs: return .leafHasMultipleURISANs(count: 2)
        case .noURISAN: return .leafHasNoURISAN
        case .uriSANNotSPIFFE:
            return .leafURISANIsNotSPIFFEID(uri: "https://example.org/workload", reason: .wrongScheme)
        case .leafIDWithoutPath: return .leafSPIFFEIDHasNoPath(try SPIFFEID(parsing: "spiffe://example.org"))
        case .noKeyUsage: return .leafHasNoKeyUsage
        case .noDigitalSignature: return .leafMissingDigitalSignature
        case .leafHasKeyCertSign: return .leafHasKeyCertSign
        case .leafHasCRLSign: return .leafHasCRLSign
        case .intermediateNotCA: return .intermediateNotCA(index: 1)
        case .intermediateWithoutKeyCertSign: return .intermediateMissingKeyCertSign(index: 1)
        case .keyMismatch: return .keyMismatch
        case .expired: return .expired(notAfter: chain[0].notAfter, now: now)
        case .notYetValid: return .notYetValid(notBefore: chain[0].notBefore, now: now)
        case .wrongTrustDomain:
            return .wrongTrustDomain(expected: try TrustDomain("example.org"), actual: try TrustDomain("other.example"))
        }
    }

    @Test(arguments: TestCA.BrokenRule.allCases)
    func fixtureBreakingARuleIsRejectedWithThatRule(_ rule: TestCA.BrokenRule) throws {
        let (chain, key) = try ca.fixture(breaking: rule)
        let expected = try Self.expectedError(rule, now: ca.now, chain: chain)
        #expect(throws: expected) {
            try X509SVID(chain: chain, privateKey: key, now: ca.now, expectedTrustDomain: ca.trustDomain)
        }
    }

    @Test func wrongSPIFFEIDIsRejected() throws {
        let (chain, key) = try ca.makeLeaf()
        let expected = try SPIFFEID(parsing: "spiffe://example.org/other")
        #expect(
            throws: SVIDError.wrongSPIFFEID(
                expected: expected, actual: try SPIFFEID(parsing: "spiffe://example.org/workload"))
        ) {
            try X509SVID(chain: chain, privateKey: key, now: ca.now, expectedID: expected)
        }
    }

    @Test func emptyChainIsRejected() throws {
        #expect(throws: SVIDError.emptyChain) {
            try X509SVID(chain: [], privateKey: PrivateKey.generate(), now: ca.now)
        }
    }

    @Test func errorDescriptionsNameTheRule() {
        #expect(SVIDError.leafIsCA.description.contains("must not be a CA"))
        #expect(SVIDError.leafHasMultipleURISANs(count: 2).description.contains("exactly one URI SAN"))
        #expect(SVIDError.keyMismatch.description.contains("does not match"))
    }
}

@Suite struct X509BundleTests {
    @Test func pemAndDERRoundTrip() throws {
        let a = try TestCA()
        let b = try TestCA()
        let bundle = X509Bundle(trustDomain: a.trustDomain, certificates: [a.root, b.root])
        #expect(try X509Bundle(trustDomain: a.trustDomain, pem: bundle.pem) == bundle)
        #expect(try X509Bundle(trustDomain: a.trustDomain, der: bundle.der) == bundle)
        #expect(throws: PKIError.self) { try X509Bundle(trustDomain: a.trustDomain, pem: "garbage") }
    }
}
