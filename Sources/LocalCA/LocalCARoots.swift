public import PKI
public import SPIFFE

/// The local CA's self-made roots in its state directory: the current root (`ca.pem`, `ca.key`) and, during a
/// rotation, its successor (`ca-next.pem`, `ca-next.key`), kept by a `RotatingKeyStore` (atomic 0600 files,
/// retirement, crash recovery, ownership checks); `RootRotationSchedule` says when each change is due.
///
///     files:   ca.*                 ──createSuccessor──►  ca.* + ca-next.*  ──retireCurrent──►  ca.* (was ca-next.*)
///     roots:   current                                    current, successor                   current
///
/// Crash safety: each root is written key first, so a crash between the two files leaves a key without its
/// certificate, reported at the next start (never replaced), rather than a certificate whose key is lost. A start
/// that finds `ca.key` matching `ca-next.pem` finishes the interrupted retirement.
public final class LocalCARoots {
    public static let successorCertificateFileName = "ca-next.pem"
    public static let successorKeyFileName = "ca-next.key"

    public let stateDirectory: String
    public let trustDomain: TrustDomain
    /// Lifetime of each root created from now on, in seconds.
    public let rootLifetime: Int64
    private var store: RotatingKeyStore<RootFormat>
    /// The root that was signing before any rotation in progress, and is in every bundle.
    public var current: LocalCA { store.current }
    /// The next root, once published.
    public var successor: LocalCA? { store.successor }
    /// True when this start created the first root (empty state directory).
    public var createdNewRoot: Bool { store.createdFirstKey }
    /// True when this start finished a retirement that a crash had interrupted.
    public var finishedInterruptedRetirement: Bool { store.finishedInterruptedRetirement }

    private init(trustDomain: TrustDomain, rootLifetime: Int64, store: RotatingKeyStore<RootFormat>) {
        self.stateDirectory = store.directory
        self.trustDomain = trustDomain
        self.rootLifetime = rootLifetime
        self.store = store
    }

    /// What `RootRotationSchedule` needs of a root: its creation (notBefore is backdated by the clock-skew
    /// allowance) and expiry.
    public static func scheduleRoot(_ ca: LocalCA) -> RootRotationSchedule.Root {
        RootRotationSchedule.Root(
            createdAt: ca.signingCertificate.notBefore + LocalCA.clockSkewAllowance,
            notAfter: ca.signingCertificate.notAfter)
    }

    // MARK: - Opening

    /// Loads the roots of `stateDirectory`, or creates the first one there when it holds no root. Any damage (a
    /// missing half, an unparsable or truncated file, a key not matching its certificate, a root of another trust
    /// domain, a successor not newer than the current root) and a state dir or key file that is not ours throw a
    /// one-line `LocalCAError` naming the path; nothing is overwritten. An expired root is loaded: the schedule
    /// replaces it.
    public static func open(
        stateDirectory: String, trustDomain: TrustDomain, now: Timestamp,
        rootLifetime: Int64 = LocalCA.defaultRootLifetime, nameConstrained: Bool = false
    ) throws -> LocalCARoots {
        let format = RootFormat(trustDomain: trustDomain, lifetime: rootLifetime, nameConstrained: nameConstrained)
        let store = try RotatingKeyStore.open(directory: stateDirectory, format: format, now: now)
        if let next = store.successor,
            next.signingCertificate.notAfter <= store.current.signingCertificate.notAfter
        {
            throw LocalCAError(
                "\(stateDirectory)/\(successorCertificateFileName) expires before "
                    + "\(stateDirectory)/\(LocalCA.certificateFileName): it cannot be its successor; remove ca-next.*")
        }
        return LocalCARoots(trustDomain: trustDomain, rootLifetime: rootLifetime, store: store)
    }

    /// See `FileTrust.checkOwnedByUs`.
    public static func checkOwnedByUs(_ path: String, what: String, directory: Bool) throws {
        try FileTrust.checkOwnedByUs(path, what: what, directory: directory)
    }

    /// See `FileTrust.checkPrivateKeyFile`.
    public static func checkPrivateKeyFile(_ path: String, what: String) throws {
        try FileTrust.checkPrivateKeyFile(path, what: what)
    }

    // MARK: - Rotating

    /// Creates the successor root (valid from `now` for `rootLifetime`) and saves it as `ca-next.key` then
    /// `ca-next.pem`. Fails if a successor exists.
    @discardableResult
    public func createSuccessor(now: Timestamp) throws -> LocalCA {
        try store.createSuccessor(now: now)
    }

    /// Drops the current root: the successor's files replace `ca.*` (see the type's crash-safety note) and it
    /// becomes the current root. Returns the retired root.
    @discardableResult
    public func retireCurrent() throws -> LocalCA {
        try store.retireCurrent()
    }
}

/// A root as `RotatingKeyStore` keeps it: key first, then certificate.
struct RootFormat: RotatingKeyFormat {
    static let files = [
        RotatingKeyFile(name: LocalCA.keyFileName, successorName: LocalCARoots.successorKeyFileName, isPrivate: true),
        RotatingKeyFile(
            name: LocalCA.certificateFileName, successorName: LocalCARoots.successorCertificateFileName,
            isPrivate: false),
    ]
    static let keyName = "root"
    static let privateFileLabel = "key file"
    static func error(_ message: String) -> any Error { LocalCAError(message) }

    let trustDomain: TrustDomain
    let lifetime: Int64
    let nameConstrained: Bool

    func read(_ paths: [String]) throws -> LocalCA {
        let (keyPath, certificatePath) = (paths[0], paths[1])
        let certificate = try LocalCA.readCertificate(certificatePath)
        let key = try LocalCA.readKey(keyPath)
        guard certificate.publicKeyMatches(key) else {
            throw LocalCAError("\(keyPath) does not match the certificate in \(certificatePath)")
        }
        guard certificate.isCA, certificate.keyUsage?.contains(.keyCertSign) == true else {
            throw LocalCAError("\(certificatePath) is not a CA certificate (needs CA:TRUE and keyCertSign)")
        }
        let domains = certificate.uriSANs.compactMap { try? SPIFFEID(parsing: $0).trustDomain }
        guard domains.contains(trustDomain) else {
            let found = domains.isEmpty ? "no trust domain" : "trust domain \(domains[0])"
            throw LocalCAError("\(certificatePath) is the CA of \(found), not \(trustDomain)")
        }
        return LocalCA(
            trustDomain: trustDomain, signingCertificate: certificate, signingKey: key, intermediates: [],
            roots: [certificate], createdNewRoot: false)
    }

    func encode(_ ca: LocalCA) throws -> [[UInt8]] {
        [Array(try ca.signingKeyPEM().utf8), Array(ca.signingCertificate.pem.utf8)]
    }

    func make(now: Timestamp) throws -> LocalCA {
        let root = try LocalCA.makeRoot(
            trustDomain: trustDomain, now: now, lifetime: lifetime, nameConstrained: nameConstrained)
        return LocalCA(
            trustDomain: trustDomain, signingCertificate: root.certificate, signingKey: root.key, intermediates: [],
            roots: [root.certificate], createdNewRoot: true)
    }

    func isSameKey(firstFile: String, lastFile: String) throws -> Bool {
        let certificate = try LocalCA.readCertificate(lastFile)
        return certificate.publicKeyMatches(try LocalCA.readKey(firstFile))
    }
}
