import Glibc
public import PKI
public import SPIFFE
import Transport

/// A failure of the local CA, as one line that names the file or the rule involved.
public struct LocalCAError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The embedded certificate authority: signs X509-SVIDs of one trust domain in process.
///
/// Its signing key is either a self-signed root kept in a state directory (see `LocalCARoots`, which also rotates
/// it) or an operator-supplied CA (+ chain to a root). One instance is one signing key: immutable, so it can be
/// shared.
public final class LocalCA: Sendable {
    /// One year.
    public static let defaultRootLifetime: Int64 = 365 * 86_400
    /// SVIDs start this long before "now" so that peers whose clocks lag still accept them.
    public static let clockSkewAllowance: Int64 = 60
    public static let certificateFileName = "ca.pem"
    public static let keyFileName = "ca.key"

    public let trustDomain: TrustDomain
    /// The certificate whose key signs the SVIDs.
    public let signingCertificate: Certificate
    private let signingKey: PrivateKey
    /// Certificates served after the leaf: the signing certificate and its intermediates, root excluded
    /// (empty when the signing certificate is the root).
    public let intermediates: [Certificate]
    /// The trust domain's bundle: the root(s).
    public let bundle: X509Bundle
    /// True when this start created a new root (first start on an empty state directory).
    public let createdNewRoot: Bool

    init(
        trustDomain: TrustDomain, signingCertificate: Certificate, signingKey: PrivateKey,
        intermediates: [Certificate], roots: [Certificate], createdNewRoot: Bool
    ) {
        self.trustDomain = trustDomain
        self.signingCertificate = signingCertificate
        self.signingKey = signingKey
        self.intermediates = intermediates
        self.bundle = X509Bundle(trustDomain: trustDomain, certificates: roots)
        self.createdNewRoot = createdNewRoot
    }

    // MARK: - Creating and loading

    /// The current root of `stateDirectory` (see `LocalCARoots.open`), refused when it has expired: for tools and
    /// tests that want one fixed root. The agent itself uses `LocalCARoots`, which rotates it.
    public static func openOrCreate(
        stateDirectory: String, trustDomain: TrustDomain, now: Timestamp,
        rootLifetime: Int64 = defaultRootLifetime, nameConstrained: Bool = false
    ) throws -> LocalCA {
        let roots = try LocalCARoots.open(
            stateDirectory: stateDirectory, trustDomain: trustDomain, now: now, rootLifetime: rootLifetime,
            nameConstrained: nameConstrained)
        let certificate = roots.current.signingCertificate
        guard now < certificate.notAfter else {
            throw LocalCAError(
                "\(stateDirectory)/\(certificateFileName) expired at \(certificate.notAfter)")
        }
        return roots.current
    }

    /// A root kept in memory only (tests, benchmarks).
    public static func ephemeral(
        trustDomain: TrustDomain, now: Timestamp, rootLifetime: Int64 = defaultRootLifetime
    ) throws -> LocalCA {
        let root = try makeRoot(trustDomain: trustDomain, now: now, lifetime: rootLifetime, nameConstrained: false)
        return LocalCA(
            trustDomain: trustDomain, signingCertificate: root.certificate, signingKey: root.key, intermediates: [],
            roots: [root.certificate], createdNewRoot: true)
    }

    /// An operator-supplied CA: `certificateChainPath` holds the signing certificate first, then its
    /// intermediates and the root(s), PEM; `keyPath` the signing key, PEM. SVID chains are leaf + the signing
    /// certificate + intermediates; the bundle is the self-signed certificates of the file.
    public static func operatorSupplied(
        certificateChainPath: String, keyPath: String, trustDomain: TrustDomain, now: Timestamp
    ) throws -> LocalCA {
        let chain = try readChain(certificateChainPath)
        try FileTrust.checkPrivateKeyFile(keyPath, what: "--ca-key")
        let key = try readKey(keyPath)
        do {
            return try LocalCA(signingChain: chain, signingKey: key, trustDomain: trustDomain, now: now)
        } catch let error as LocalCAError {
            throw LocalCAError("\(certificateChainPath): \(error.message)")
        }
    }

    /// The certificates of an operator's chain file, with one error line naming the file.
    private static func readChain(_ certificateChainPath: String) throws -> [Certificate] {
        do {
            return try Certificate.parseChain(
                pem: String(decoding: try Files.read(certificateChainPath), as: UTF8.self))
        } catch let error as SystemError {
            throw LocalCAError("\(error)")
        } catch {
            throw LocalCAError("\(certificateChainPath): not a PEM certificate chain: \(error)")
        }
    }

    /// The bundle an operator-supplied CA serves (the self-signed certificates of `certificateChainPath`, as
    /// `operatorSupplied` takes them), read without the key: for `sds-agent bundle show`, which publishes public
    /// material only. The trust domain is checked as `operatorSupplied` does; whether the key matches and the CA
    /// can sign is the agent's start-up check, not repeated here.
    public static func operatorSuppliedRoots(certificateChainPath: String, trustDomain: TrustDomain) throws
        -> [Certificate]
    {
        let chain = try readChain(certificateChainPath)
        for uri in chain[0].uriSANs {
            if let id = try? SPIFFEID(parsing: uri), id.trustDomain != trustDomain {
                throw LocalCAError(
                    "\(certificateChainPath): the CA certificate is for trust domain \(id.trustDomain), not \(trustDomain)"
                )
            }
        }
        let roots = chain.filter(\.isSelfSigned)
        guard !roots.isEmpty else {
            throw LocalCAError("\(certificateChainPath): the CA chain does not end at a self-signed root")
        }
        return roots
    }

    /// An operator-supplied CA from memory: `signingChain` is the signing certificate, then intermediates,
    /// then the root(s).
    public convenience init(
        signingChain: [Certificate], signingKey: PrivateKey, trustDomain: TrustDomain, now: Timestamp
    ) throws {
        guard let signing = signingChain.first else { throw LocalCAError("the CA chain is empty") }
        guard signing.publicKeyMatches(signingKey) else {
            throw LocalCAError("the CA key does not match the first certificate of the chain")
        }
        guard signing.isCA, signing.keyUsage?.contains(.keyCertSign) == true else {
            throw LocalCAError("the first certificate is not a CA certificate (needs CA:TRUE and keyCertSign)")
        }
        for uri in signing.uriSANs {
            if let id = try? SPIFFEID(parsing: uri), id.trustDomain != trustDomain {
                throw LocalCAError("the CA certificate is for trust domain \(id.trustDomain), not \(trustDomain)")
            }
        }
        let roots = signingChain.filter(\.isSelfSigned)
        guard !roots.isEmpty else { throw LocalCAError("the CA chain does not end at a self-signed root") }
        let intermediates = signing.isSelfSigned ? [] : signingChain.filter { !$0.isSelfSigned }
        do {
            try TrustStore(roots: roots).verify(leaf: signing, intermediates: Array(intermediates.dropFirst()), at: now)
        } catch {
            throw LocalCAError("the CA chain does not verify: \(error)")
        }
        self.init(
            trustDomain: trustDomain, signingCertificate: signing, signingKey: signingKey,
            intermediates: intermediates, roots: roots, createdNewRoot: false)
        // A CA can pass every check above and still be unable to sign (e.g. no Subject Key Identifier, which the
        // leaves' Authority Key Identifier needs). One trial issuance now turns that into a startup error instead
        // of an agent that starts and never serves.
        do {
            _ = try issue(spiffeID: SPIFFEID(trustDomain: trustDomain, path: "/sds-agent/self-test"), ttl: 60, now: now)
        } catch {
            throw LocalCAError("the CA cannot sign SVIDs: \(error)")
        }
    }

    static func makeRoot(
        trustDomain: TrustDomain, now: Timestamp, lifetime: Int64, nameConstrained: Bool
    ) throws -> (certificate: Certificate, key: PrivateKey) {
        let key = try PrivateKey.generate(.ecdsaP256)
        let builder = CertificateBuilder(
            subject: DistinguishedName(organization: "sds-agent", commonName: "\(trustDomain) local CA"),
            publicKey: key.publicKey, serialNumber: try CertificateBuilder.randomSerialNumber(),
            notBefore: now - clockSkewAllowance, notAfter: now + lifetime, basicConstraints: .ca(pathLength: nil),
            keyUsage: [.keyCertSign, .cRLSign], uriSANs: [trustDomain.idString], includeAuthorityKeyIdentifier: false,
            permittedURIDomains: nameConstrained ? [trustDomain.name] : nil)
        return (try builder.sign(issuer: nil, issuerKey: key), key)
    }

    /// A state-dir or operator file's bytes, a read failure as one line naming it.
    private static func read(_ path: String) throws -> [UInt8] {
        do throws(SystemError) {
            return try Files.read(path)
        } catch {
            throw LocalCAError("\(error)")
        }
    }

    static func readCertificate(_ path: String) throws -> Certificate {
        let bytes = try read(path)
        do {
            let certificates = try Certificate.parseChain(pem: String(decoding: bytes, as: UTF8.self))
            guard certificates.count == 1 else {
                throw LocalCAError("\(path) holds \(certificates.count) certificates, expected 1")
            }
            return certificates[0]
        } catch let error as LocalCAError {
            throw error
        } catch {
            throw LocalCAError("\(path) is not a valid PEM certificate (corrupt or truncated): \(error)")
        }
    }

    static func readKey(_ path: String) throws -> PrivateKey {
        let bytes = try read(path)
        do {
            return try PrivateKey(pem: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw LocalCAError("\(path) is not a valid PEM private key (corrupt or truncated): \(error)")
        }
    }

    /// The signing key as PKCS#8 PEM, for saving a root (`LocalCARoots`).
    func signingKeyPEM() throws -> String { try signingKey.pkcs8PEM() }

    // MARK: - Issuing

    /// Issues an X509-SVID for `spiffeID` (which must be in this CA's trust domain): a fresh P-256 key, a
    /// random positive 128-bit serial, exactly one URI SAN, CA:FALSE, keyUsage digitalSignature (critical),
    /// extKeyUsage serverAuth + clientAuth, SKI/AKI. Valid from `now - 60 s` to `now + ttl` seconds, but never
    /// past the CA certificate's own notAfter. Validated against the X509-SVID rules before it is returned.
    public func issue(spiffeID: SPIFFEID, ttl: Int64, now: Timestamp) throws -> X509SVID {
        guard spiffeID.trustDomain == trustDomain else {
            throw LocalCAError("cannot issue \(spiffeID): not in trust domain \(trustDomain)")
        }
        guard ttl > 0 else { throw LocalCAError("cannot issue \(spiffeID): TTL must be positive (got \(ttl))") }
        let notAfter = min(now + ttl, signingCertificate.notAfter)
        guard notAfter > now else {
            throw LocalCAError("cannot issue \(spiffeID): the CA certificate expired at \(signingCertificate.notAfter)")
        }
        let key = try PrivateKey.generate(.ecdsaP256)
        let builder = CertificateBuilder(
            subject: DistinguishedName(organization: "sds-agent"), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: now - LocalCA.clockSkewAllowance,
            notAfter: notAfter, basicConstraints: .notCA, keyUsage: [.digitalSignature],
            extendedKeyUsage: [.serverAuth, .clientAuth], uriSANs: [spiffeID.uri])
        let leaf = try builder.sign(issuer: signingCertificate, issuerKey: signingKey)
        return try X509SVID(chain: [leaf] + intermediates, privateKey: key, now: now, expectedID: spiffeID)
    }

    // MARK: - Benchmark

    /// What `benchmarkIssuance` measured.
    public struct IssuanceBenchmark: Sendable {
        public var count: Int
        public var seconds: Double
        public var svidsPerSecond: Double { seconds > 0 ? Double(count) / seconds : 0 }
        public var microsecondsPerSVID: Double { count > 0 ? seconds * 1e6 / Double(count) : 0 }
    }

    /// Issues `count` SVIDs from an in-memory CA on the calling thread and measures the wall time (monotonic
    /// clock), for `make bench`. Not used in tests' assertions.
    public static func benchmarkIssuance(count: Int, trustDomain: String = "example.org") throws -> IssuanceBenchmark {
        var start = timespec()
        clock_gettime(CLOCK_REALTIME, &start)
        let now = Timestamp(secondsSinceEpoch: Int64(start.tv_sec))
        let ca = try LocalCA.ephemeral(trustDomain: try TrustDomain(trustDomain), now: now)
        let id = try SPIFFEID(trustDomain: ca.trustDomain, path: "/ns/default/sa/bench")
        var begin = timespec()
        clock_gettime(CLOCK_MONOTONIC, &begin)
        for _ in 0..<count {
            _ = try ca.issue(spiffeID: id, ttl: 3600, now: now)
        }
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        let seconds = Double(end.tv_sec - begin.tv_sec) + Double(end.tv_nsec - begin.tv_nsec) / 1e9
        return IssuanceBenchmark(count: count, seconds: seconds)
    }
}
