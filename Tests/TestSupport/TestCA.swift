public import PKI
public import SPIFFE

/// Quick roots, intermediates and leaves for tests, including deliberately broken X509-SVIDs.
public struct TestCA: Sendable {
    public let trustDomain: TrustDomain
    public let root: Certificate
    public let rootKey: PrivateKey
    /// The time certificates are made around (validity: `now - 1 h ... now + 1 day` unless told otherwise).
    public let now: Timestamp

    public init(trustDomain: String = "example.org", now: Timestamp = FakeClock.defaultStart) throws {
        self.trustDomain = try TrustDomain(trustDomain)
        self.now = now
        let key = try PrivateKey.generate()
        self.rootKey = key
        self.root = try CertificateBuilder(
            subject: DistinguishedName(organization: "TestCA", commonName: "\(trustDomain) root"),
            publicKey: key.publicKey, serialNumber: try CertificateBuilder.randomSerialNumber(),
            notBefore: now - 3600, notAfter: now + 365 * 86_400, basicConstraints: .ca(pathLength: nil),
            keyUsage: [.keyCertSign, .cRLSign], uriSANs: ["spiffe://\(trustDomain)"],
            includeAuthorityKeyIdentifier: false
        ).sign(issuer: nil, issuerKey: key)
    }

    public var bundle: X509Bundle { X509Bundle(trustDomain: trustDomain, certificates: [root]) }

    /// An intermediate signed by the root (or by `parent`).
    public func makeIntermediate(
        isCA: Bool = true, keyUsage: KeyUsage? = [.keyCertSign, .cRLSign],
        parent: (certificate: Certificate, key: PrivateKey)? = nil
    ) throws -> (certificate: Certificate, key: PrivateKey) {
        let key = try PrivateKey.generate()
        let certificate = try CertificateBuilder(
            subject: DistinguishedName(organization: "TestCA", commonName: "intermediate"),
            publicKey: key.publicKey, serialNumber: try CertificateBuilder.randomSerialNumber(),
            notBefore: now - 3600, notAfter: now + 30 * 86_400,
            basicConstraints: isCA ? .ca(pathLength: nil) : .notCA, keyUsage: keyUsage
        ).sign(issuer: parent?.certificate ?? root, issuerKey: parent?.key ?? rootKey)
        return (certificate, key)
    }

    /// How to make a leaf; the defaults make a valid X509-SVID.
    public struct LeafOptions: Sendable {
        public var uriSANs: [String]
        public var isCA: Bool = false
        public var keyUsage: KeyUsage? = [.digitalSignature]
        public var extendedKeyUsage: ExtendedKeyUsage? = [.serverAuth, .clientAuth]
        public var notBeforeOffset: Int64 = -60
        public var notAfterOffset: Int64 = 3600
        /// Return a key other than the certified one.
        public var mismatchedKey = false
        /// Sign through this intermediate (it is appended to the chain).
        public var intermediate: (certificate: Certificate, key: PrivateKey)?

        public init(spiffeID: String = "spiffe://example.org/workload") {
            uriSANs = [spiffeID]
        }
    }

    /// A leaf and its key; the chain is the leaf, then the intermediate when one is given.
    public func makeLeaf(_ options: LeafOptions = LeafOptions()) throws -> (chain: [Certificate], key: PrivateKey) {
        let key = try PrivateKey.generate()
        let leaf = try CertificateBuilder(
            subject: DistinguishedName(organization: "TestCA"), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: now + options.notBeforeOffset,
            notAfter: now + options.notAfterOffset, basicConstraints: options.isCA ? .ca(pathLength: nil) : .notCA,
            keyUsage: options.keyUsage, extendedKeyUsage: options.extendedKeyUsage, uriSANs: options.uriSANs
        ).sign(issuer: options.intermediate?.certificate ?? root, issuerKey: options.intermediate?.key ?? rootKey)
        let chain = [leaf] + (options.intermediate.map { [$0.certificate] } ?? [])
        return (chain, options.mismatchedKey ? try PrivateKey.generate() : key)
    }

    /// X509-SVID fixtures, each named after the one rule it breaks.
    public enum BrokenRule: String, CaseIterable, Sendable {
        case leafIsCA = "leaf-is-ca"
        case twoURISANs = "two-uri-sans"
        case noURISAN = "no-uri-san"
        case uriSANNotSPIFFE = "uri-san-not-spiffe"
        case leafIDWithoutPath = "leaf-id-without-path"
        case noKeyUsage = "no-key-usage"
        case noDigitalSignature = "no-digital-signature"
        case leafHasKeyCertSign = "leaf-has-key-cert-sign"
        case leafHasCRLSign = "leaf-has-crl-sign"
        case intermediateNotCA = "intermediate-not-ca"
        case intermediateWithoutKeyCertSign = "intermediate-without-key-cert-sign"
        case keyMismatch = "key-mismatch"
        case expired = "expired"
        case notYetValid = "not-yet-valid"
        case wrongTrustDomain = "wrong-trust-domain"
    }

    /// A chain + key that would be a valid X509-SVID for `spiffe://example.org/workload` at `now`, except for
    /// `rule`.
    public func fixture(breaking rule: BrokenRule) throws -> (chain: [Certificate], key: PrivateKey) {
        var options = LeafOptions(spiffeID: "spiffe://\(trustDomain)/workload")
        switch rule {
        case .leafIsCA: options.isCA = true
        case .twoURISANs: options.uriSANs.append("spiffe://\(trustDomain)/other")
        case .noURISAN: options.uriSANs = []
        case .uriSANNotSPIFFE: options.uriSANs = ["https://\(trustDomain)/workload"]
        case .leafIDWithoutPath: options.uriSANs = ["spiffe://\(trustDomain)"]
        case .noKeyUsage: options.keyUsage = nil
        case .noDigitalSignature: options.keyUsage = [.keyEncipherment]
        case .leafHasKeyCertSign: options.keyUsage = [.digitalSignature, .keyCertSign]
        case .leafHasCRLSign: options.keyUsage = [.digitalSignature, .cRLSign]
        case .intermediateNotCA: options.intermediate = try makeIntermediate(isCA: false)
        case .intermediateWithoutKeyCertSign: options.intermediate = try makeIntermediate(keyUsage: [.digitalSignature])
        case .keyMismatch: options.mismatchedKey = true
        case .expired:
            options.notBeforeOffset = -7200
            options.notAfterOffset = -3600
        case .notYetValid:
            options.notBeforeOffset = 3600
            options.notAfterOffset = 7200
        case .wrongTrustDomain: options.uriSANs = ["spiffe://other.example/workload"]
        }
        return try makeLeaf(options)
    }
}
