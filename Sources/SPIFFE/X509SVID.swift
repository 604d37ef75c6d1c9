public import PKI

/// Why a certificate chain and key are not a valid X509-SVID. Each case is one rule of the X509-SVID spec
/// (https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md) or of the caller's expectations;
/// the description names the rule.
public enum SVIDError: Error, Sendable, Hashable, CustomStringConvertible {
    case emptyChain
    case leafHasNoURISAN
    case leafHasMultipleURISANs(count: Int)
    case leafURISANIsNotSPIFFEID(uri: String, reason: SPIFFEIDError)
    case leafSPIFFEIDHasNoPath(SPIFFEID)
    case leafIsCA
    case leafHasNoKeyUsage
    case leafMissingDigitalSignature
    case leafHasKeyCertSign
    case leafHasCRLSign
    case intermediateNotCA(index: Int)
    case intermediateMissingKeyCertSign(index: Int)
    case keyMismatch
    case expired(notAfter: Timestamp, now: Timestamp)
    case notYetValid(notBefore: Timestamp, now: Timestamp)
    case wrongSPIFFEID(expected: SPIFFEID, actual: SPIFFEID)
    case wrongTrustDomain(expected: TrustDomain, actual: TrustDomain)

    public var description: String {
        switch self {
        case .emptyChain: "X509-SVID chain is empty"
        case .leafHasNoURISAN: "leaf certificate must have exactly one URI SAN (has none)"
        case .leafHasMultipleURISANs(let count): "leaf certificate must have exactly one URI SAN (has \(count))"
        case .leafURISANIsNotSPIFFEID(let uri, let reason): "leaf URI SAN \(uri) is not a SPIFFE ID: \(reason)"
        case .leafSPIFFEIDHasNoPath(let id): "leaf SPIFFE ID \(id) must have a path (not be a trust domain's own ID)"
        case .leafIsCA: "leaf certificate must not be a CA (basicConstraints CA:TRUE)"
        case .leafHasNoKeyUsage: "leaf certificate must have a keyUsage extension"
        case .leafMissingDigitalSignature: "leaf certificate keyUsage must include digitalSignature"
        case .leafHasKeyCertSign: "leaf certificate keyUsage must not include keyCertSign"
        case .leafHasCRLSign: "leaf certificate keyUsage must not include cRLSign"
        case .intermediateNotCA(let index): "signing certificate #\(index) in the chain must be a CA (CA:TRUE)"
        case .intermediateMissingKeyCertSign(let index):
            "signing certificate #\(index) in the chain must have keyUsage keyCertSign"
        case .keyMismatch: "private key does not match the leaf certificate's public key"
        case .expired(let notAfter, let now): "leaf certificate expired at \(notAfter) (now \(now))"
        case .notYetValid(let notBefore, let now): "leaf certificate is not valid before \(notBefore) (now \(now))"
        case .wrongSPIFFEID(let expected, let actual): "SPIFFE ID is \(actual), expected \(expected)"
        case .wrongTrustDomain(let expected, let actual): "trust domain is \(actual), expected \(expected)"
        }
    }
}

/// An X509-SVID: a SPIFFE ID, its certificate chain (leaf first, then intermediates; never the root) and
/// the leaf's private key. Only the validating initialisers create one, so holding an `X509SVID` means the
/// spec's rules held at the time given to the initialiser.
public struct X509SVID: Sendable {
    public let spiffeID: SPIFFEID
    /// Leaf first, then the intermediates that lead to a root of the trust domain's bundle.
    public let chain: [Certificate]
    public let privateKey: PrivateKey

    public var leaf: Certificate { chain[0] }

    /// Validates `chain` + `privateKey` as an X509-SVID at `now`:
    /// - leaf: exactly one URI SAN, a SPIFFE ID with a path; CA:FALSE; keyUsage with digitalSignature, without keyCertSign
    ///   and cRLSign; `privateKey` matches; `notBefore <= now < notAfter` (OpenSSL, BoringSSL and so Envoy count a
    ///   certificate as expired from its notAfter second on: so does this);
    /// - every following certificate: CA:TRUE with keyCertSign;
    /// - the SPIFFE ID equals `expectedID` and belongs to `expectedTrustDomain` when those are given.
    /// Chain signatures are checked by `verify(against:at:)`, which needs the bundle.
    public init(
        chain: [Certificate], privateKey: PrivateKey, now: Timestamp, expectedID: SPIFFEID? = nil,
        expectedTrustDomain: TrustDomain? = nil
    ) throws(SVIDError) {
        guard let leaf = chain.first else { throw .emptyChain }
        let uris = leaf.uriSANs
        guard uris.count == 1 else {
            throw uris.isEmpty ? .leafHasNoURISAN : .leafHasMultipleURISANs(count: uris.count)
        }
        let id: SPIFFEID
        do {
            id = try SPIFFEID(parsing: uris[0])
        } catch let error as SPIFFEIDError {
            throw .leafURISANIsNotSPIFFEID(uri: uris[0], reason: error)
        } catch {
            throw .leafURISANIsNotSPIFFEID(uri: uris[0], reason: .wrongScheme)
        }
        guard !id.path.isEmpty else { throw .leafSPIFFEIDHasNoPath(id) }
        guard !leaf.isCA else { throw .leafIsCA }
        guard let usage = leaf.keyUsage else { throw .leafHasNoKeyUsage }
        guard usage.contains(.digitalSignature) else { throw .leafMissingDigitalSignature }
        guard !usage.contains(.keyCertSign) else { throw .leafHasKeyCertSign }
        guard !usage.contains(.cRLSign) else { throw .leafHasCRLSign }
        for (index, certificate) in chain.enumerated().dropFirst() {
            guard certificate.isCA else { throw .intermediateNotCA(index: index) }
            guard certificate.keyUsage?.contains(.keyCertSign) == true else {
                throw .intermediateMissingKeyCertSign(index: index)
            }
        }
        guard leaf.publicKeyMatches(privateKey) else { throw .keyMismatch }
        guard now < leaf.notAfter else { throw .expired(notAfter: leaf.notAfter, now: now) }
        guard leaf.notBefore <= now else { throw .notYetValid(notBefore: leaf.notBefore, now: now) }
        if let expectedID, expectedID != id { throw .wrongSPIFFEID(expected: expectedID, actual: id) }
        if let expectedTrustDomain, expectedTrustDomain != id.trustDomain {
            throw .wrongTrustDomain(expected: expectedTrustDomain, actual: id.trustDomain)
        }
        self.spiffeID = id
        self.chain = chain
        self.privateKey = privateKey
    }

    /// Parses a PEM chain (leaf first) and a PEM private key, then validates as `init(chain:...)` does.
    /// Parse failures throw `PKIError`; rule violations throw `SVIDError`.
    public init(
        chainPEM: String, keyPEM: String, now: Timestamp, expectedID: SPIFFEID? = nil,
        expectedTrustDomain: TrustDomain? = nil
    ) throws {
        try self.init(
            chain: Certificate.parseChain(pem: chainPEM, maxCount: Certificate.maxChainCertificates),
            privateKey: PrivateKey(pem: keyPEM), now: now,
            expectedID: expectedID, expectedTrustDomain: expectedTrustDomain)
    }

    /// Parses the Workload API form (concatenated DER chain, PKCS#8 DER key), then validates.
    public init(
        chainDER: [UInt8], keyPKCS8DER: [UInt8], now: Timestamp, expectedID: SPIFFEID? = nil,
        expectedTrustDomain: TrustDomain? = nil
    ) throws {
        try self.init(
            chain: Certificate.parseChain(der: chainDER, maxCount: Certificate.maxChainCertificates),
            privateKey: PrivateKey(pkcs8DER: keyPKCS8DER), now: now,
            expectedID: expectedID, expectedTrustDomain: expectedTrustDomain)
    }

    /// Verifies the chain's signatures up to one of `bundle`'s roots at `time` (throws `PKIError`).
    public func verify(against bundle: X509Bundle, at time: Timestamp) throws {
        try TrustStore(roots: bundle.certificates).verify(leaf: leaf, intermediates: Array(chain.dropFirst()), at: time)
    }

    /// The chain as PEM, leaf first (Envoy's `certificate_chain`).
    public var chainPEM: String { Certificate.pem(chain) }

    /// The chain as concatenated DER (the Workload API's `x509_svid`).
    public var chainDER: [UInt8] { Certificate.concatenatedDER(chain) }

    public var notBefore: Timestamp { leaf.notBefore }
    public var notAfter: Timestamp { leaf.notAfter }
}
