public import PKI
public import SPIFFE
import Transport

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
        try LocalCARoots.checkRoot(certificate, path: certificatePath, trustDomain: trustDomain)
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

extension LocalCARoots {
    static func checkRoot(_ certificate: Certificate, path certificatePath: String, trustDomain: TrustDomain)
        throws
    {
        guard certificate.isCA, certificate.keyUsage?.contains(.keyCertSign) == true else {
            throw LocalCAError("\(certificatePath) is not a CA certificate (needs CA:TRUE and keyCertSign)")
        }
        let domains = certificate.uriSANs.compactMap { try? SPIFFEID(parsing: $0).trustDomain }
        guard domains.contains(trustDomain) else {
            let found = domains.isEmpty ? "no trust domain" : "trust domain \(domains[0])"
            throw LocalCAError("\(certificatePath) is the CA of \(found), not \(trustDomain)")
        }
    }

    // MARK: - Reading only

    /// The roots `stateDirectory` holds, current then successor: the X.509 bundle a running agent serves (it
    /// saves each change of the schedule before serving it). Read only, for `sds-agent bundle show`: nothing is
    /// created, finished or removed, and no private key is read (key files are only checked to exist, as `open`
    /// needs each certificate's key). nil when there is no root yet (no state dir, or neither `ca.pem` nor
    /// `ca.key`). The agent's rules apply: the state dir must be ours; a missing half, a certificate that is not a
    /// CA of `trustDomain`, or a successor not newer than the current root throws a one-line `LocalCAError`.
    ///
    /// One state cannot be told apart without reading `ca.key`: `ca-next.pem` without `ca-next.key` is either a
    /// retirement interrupted before `ca.pem` was replaced (the next start serves only the successor) or damage
    /// (the next start refuses). It throws, asking for a start. A retirement interrupted after `ca.key` was replaced
    /// but before `ca-next.key` was removed reads as both roots, one more than the next start serves: that root has
    /// signed nothing still valid.
    public static func readPublished(stateDirectory: String, trustDomain: TrustDomain) throws -> [Certificate]? {
        guard Files.exists(stateDirectory) else { return nil }
        try checkOwnedByUs(stateDirectory, what: "state dir", directory: true)
        let paths = (
            cert: stateDirectory + "/" + LocalCA.certificateFileName, key: stateDirectory + "/" + LocalCA.keyFileName,
            nextCert: stateDirectory + "/" + successorCertificateFileName,
            nextKey: stateDirectory + "/" + successorKeyFileName
        )
        let hasNext = (Files.exists(paths.nextCert), Files.exists(paths.nextKey))
        switch (Files.exists(paths.cert), Files.exists(paths.key)) {
        case (false, false):
            guard !hasNext.0 && !hasNext.1 else {
                let found = hasNext.0 ? paths.nextCert : paths.nextKey
                throw LocalCAError(
                    "\(found) exists but \(paths.cert) and \(paths.key) are missing; restore them or remove \(found)")
            }
            return nil
        case (true, false):
            throw LocalCAError("\(paths.key) is missing but \(paths.cert) exists; restore it or remove both")
        case (false, true):
            throw LocalCAError(
                "\(paths.cert) is missing but \(paths.key) exists (interrupted first start?); restore it or remove both"
            )
        case (true, true):
            break
        }
        let current = try LocalCA.readCertificate(paths.cert)
        try checkRoot(current, path: paths.cert, trustDomain: trustDomain)
        switch hasNext {
        case (false, false):
            return [current]
        case (false, true):
            throw LocalCAError(
                "\(paths.nextCert) is missing but \(paths.nextKey) exists (interrupted root rotation?); restore it or remove \(paths.nextKey)"
            )
        case (true, false):
            let next = try LocalCA.readCertificate(paths.nextCert)
            // ca.pem already replaced by the successor: the retirement only missed removing ca-next.pem.
            if next == current { return [current] }
            throw LocalCAError(
                "\(paths.nextCert) exists without \(paths.nextKey) (an interrupted root retirement, or damage): start the agent once, which finishes the retirement or names the damage"
            )
        case (true, true):
            let next = try LocalCA.readCertificate(paths.nextCert)
            try checkRoot(next, path: paths.nextCert, trustDomain: trustDomain)
            guard next.notAfter > current.notAfter else {
                throw LocalCAError(
                    "\(paths.nextCert) expires before \(paths.cert): it cannot be its successor; remove ca-next.*")
            }
            return [current, next]
        }
    }
}
