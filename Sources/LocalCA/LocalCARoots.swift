import Glibc
public import PKI
public import SPIFFE
import Transport

/// The local CA's self-made roots in its state directory: the current root (`ca.pem`, `ca.key`) and, during a
/// rotation, its successor (`ca-next.pem`, `ca-next.key`). All files are 0600 and written atomically (temporary
/// file, fsync, rename); `RootRotationSchedule` says when each change below is due.
///
///     files:   ca.*                 ──createSuccessor──►  ca.* + ca-next.*  ──retireCurrent──►  ca.* (was ca-next.*)
///     roots:   current                                    current, successor                   current
///
/// Crash safety: a successor is written key first, so a crash between the two files leaves `ca-next.key` alone,
/// reported at the next start (never replaced). Retiring writes the successor's key over `ca.key`, removes
/// `ca-next.key`, writes its certificate over `ca.pem`, removes `ca-next.pem`; a start that finds `ca.key` matching
/// `ca-next.pem` finishes that retirement (the old root was being dropped anyway, the new pair is complete).
///
/// The state dir is trusted only if it is ours: the directory and the key files must be owned by this process's
/// user and writable by no one else (a key another user can replace would let them mint SVIDs).
public final class LocalCARoots {
    public static let successorCertificateFileName = "ca-next.pem"
    public static let successorKeyFileName = "ca-next.key"

    public let stateDirectory: String
    public let trustDomain: TrustDomain
    /// Lifetime of each root created from now on, in seconds.
    public let rootLifetime: Int64
    private let nameConstrained: Bool
    /// The root that was signing before any rotation in progress, and is in every bundle.
    public private(set) var current: LocalCA
    /// The next root, once published.
    public private(set) var successor: LocalCA?
    /// True when this start created the first root (empty state directory).
    public let createdNewRoot: Bool
    /// True when this start finished a retirement that a crash had interrupted.
    public let finishedInterruptedRetirement: Bool

    private var currentCertificatePath: String { stateDirectory + "/" + LocalCA.certificateFileName }
    private var currentKeyPath: String { stateDirectory + "/" + LocalCA.keyFileName }
    private var successorCertificatePath: String { stateDirectory + "/" + Self.successorCertificateFileName }
    private var successorKeyPath: String { stateDirectory + "/" + Self.successorKeyFileName }

    private init(
        stateDirectory: String, trustDomain: TrustDomain, rootLifetime: Int64, nameConstrained: Bool,
        current: LocalCA, successor: LocalCA?, createdNewRoot: Bool, finishedInterruptedRetirement: Bool
    ) {
        self.stateDirectory = stateDirectory
        self.trustDomain = trustDomain
        self.rootLifetime = rootLifetime
        self.nameConstrained = nameConstrained
        self.current = current
        self.successor = successor
        self.createdNewRoot = createdNewRoot
        self.finishedInterruptedRetirement = finishedInterruptedRetirement
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
        do throws(SystemError) {
            try Files.ensureDirectory(stateDirectory)
        } catch {
            throw LocalCAError("state dir \(stateDirectory): \(error)")
        }
        try checkOwnedByUs(stateDirectory, what: "state dir", directory: true)
        let paths = (
            cert: stateDirectory + "/" + LocalCA.certificateFileName, key: stateDirectory + "/" + LocalCA.keyFileName,
            nextCert: stateDirectory + "/" + successorCertificateFileName,
            nextKey: stateDirectory + "/" + successorKeyFileName
        )
        for key in [paths.key, paths.nextKey] where Files.exists(key) {
            try checkPrivateKeyFile(key, what: "key file")
        }

        var finished = false
        if Files.exists(paths.nextCert) && Files.exists(paths.key) {
            let next = try LocalCA.readCertificate(paths.nextCert)
            let key = try LocalCA.readKey(paths.key)
            if next.publicKeyMatches(key) {
                // ca.key already holds the successor's key: a retirement was interrupted. Finish it.
                try writeFile(stateDirectory, LocalCA.certificateFileName, Array(next.pem.utf8))
                try removeFile(paths.nextKey)
                try removeFile(paths.nextCert)
                finished = true
            }
        }

        let hasCurrent = (Files.exists(paths.cert), Files.exists(paths.key))
        let hasNext = (Files.exists(paths.nextCert), Files.exists(paths.nextKey))
        switch hasCurrent {
        case (false, false):
            if hasNext.0 || hasNext.1 {
                let found = hasNext.0 ? paths.nextCert : paths.nextKey
                throw LocalCAError(
                    "\(found) exists but \(paths.cert) and \(paths.key) are missing; restore them or remove \(found)")
            }
            let root = try LocalCA.makeRoot(
                trustDomain: trustDomain, now: now, lifetime: rootLifetime, nameConstrained: nameConstrained)
            // Key first: a crash between the two renames leaves ca.key without ca.pem, which the next start
            // reports instead of issuing from a certificate whose key is lost.
            try writeFile(stateDirectory, LocalCA.keyFileName, Array(try root.key.pkcs8PEM().utf8))
            try writeFile(stateDirectory, LocalCA.certificateFileName, Array(root.certificate.pem.utf8))
            let ca = LocalCA(
                trustDomain: trustDomain, signingCertificate: root.certificate, signingKey: root.key,
                intermediates: [], roots: [root.certificate], createdNewRoot: true)
            return LocalCARoots(
                stateDirectory: stateDirectory, trustDomain: trustDomain, rootLifetime: rootLifetime,
                nameConstrained: nameConstrained, current: ca, successor: nil, createdNewRoot: true,
                finishedInterruptedRetirement: false)
        case (true, false):
            throw LocalCAError("\(paths.key) is missing but \(paths.cert) exists; restore it or remove both")
        case (false, true):
            throw LocalCAError(
                "\(paths.cert) is missing but \(paths.key) exists (interrupted first start?); restore it or remove both"
            )
        case (true, true):
            break
        }
        let current = try loadRoot(certificatePath: paths.cert, keyPath: paths.key, trustDomain: trustDomain)
        var successor: LocalCA?
        switch hasNext {
        case (false, false):
            break
        case (true, false):
            throw LocalCAError(
                "\(paths.nextKey) is missing but \(paths.nextCert) exists; restore it or remove \(paths.nextCert)")
        case (false, true):
            throw LocalCAError(
                "\(paths.nextCert) is missing but \(paths.nextKey) exists (interrupted root rotation?); restore it or remove \(paths.nextKey)"
            )
        case (true, true):
            let next = try loadRoot(certificatePath: paths.nextCert, keyPath: paths.nextKey, trustDomain: trustDomain)
            guard next.signingCertificate.notAfter > current.signingCertificate.notAfter else {
                throw LocalCAError(
                    "\(paths.nextCert) expires before \(paths.cert): it cannot be its successor; remove ca-next.*")
            }
            successor = next
        }
        return LocalCARoots(
            stateDirectory: stateDirectory, trustDomain: trustDomain, rootLifetime: rootLifetime,
            nameConstrained: nameConstrained, current: current, successor: successor, createdNewRoot: false,
            finishedInterruptedRetirement: finished)
    }

    private static func loadRoot(certificatePath: String, keyPath: String, trustDomain: TrustDomain) throws
        -> LocalCA
    {
        let certificate = try LocalCA.readCertificate(certificatePath)
        let key = try LocalCA.readKey(keyPath)
        guard certificate.publicKeyMatches(key) else {
            throw LocalCAError("\(keyPath) does not match the certificate in \(certificatePath)")
        }
        try checkRoot(certificate, path: certificatePath, trustDomain: trustDomain)
        return LocalCA(
            trustDomain: trustDomain, signingCertificate: certificate, signingKey: key, intermediates: [],
            roots: [certificate], createdNewRoot: false)
    }

    private static func checkRoot(_ certificate: Certificate, path certificatePath: String, trustDomain: TrustDomain)
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

    /// Refuses a path another user owns or can write: whoever can replace the CA key can mint SVIDs, and whoever
    /// can write the directory can swap the files.
    public static func checkOwnedByUs(_ path: String, what: String, directory: Bool) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw LocalCAError("\(what) \(path): \(String(cString: strerror(errno)))")
        }
        let isDirectory = (info.st_mode & S_IFMT) == S_IFDIR
        guard isDirectory == directory else {
            throw LocalCAError("\(what) \(path) is not a \(directory ? "directory" : "regular file")")
        }
        let uid = geteuid()
        guard info.st_uid == uid else {
            throw LocalCAError(
                "\(what) \(path) is owned by uid \(info.st_uid), not by this process's uid \(uid); refusing to trust it"
            )
        }
        let writableByOthers = info.st_mode & mode_t(0o022)
        guard writableByOthers == 0 else {
            let mode = String(info.st_mode & 0o7777, radix: 8)
            throw LocalCAError(
                "\(what) \(path) is writable by group or others (mode 0\(mode)); refusing to trust it (chmod go-w)")
        }
    }

    /// A private key file must be ours and readable by no one else (0600 or 0400): any local user who can read the
    /// CA key can mint SVIDs for every workload of the trust domain.
    public static func checkPrivateKeyFile(_ path: String, what: String) throws {
        try checkOwnedByUs(path, what: what, directory: false)
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw LocalCAError("\(what) \(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & mode_t(0o077) == 0 else {
            let mode = String(info.st_mode & 0o7777, radix: 8)
            throw LocalCAError(
                "\(what) \(path) has mode 0\(mode): group or others may read it; refusing to use it (chmod 600 \(path))"
            )
        }
    }

    // MARK: - Rotating

    /// Creates the successor root (valid from `now` for `rootLifetime`) and saves it as `ca-next.key` then
    /// `ca-next.pem`. Fails if a successor exists.
    @discardableResult
    public func createSuccessor(now: Timestamp) throws -> LocalCA {
        guard successor == nil else { throw LocalCAError("\(successorCertificatePath) already exists") }
        let root = try LocalCA.makeRoot(
            trustDomain: trustDomain, now: now, lifetime: rootLifetime, nameConstrained: nameConstrained)
        try Self.writeFile(stateDirectory, Self.successorKeyFileName, Array(try root.key.pkcs8PEM().utf8))
        try Self.writeFile(stateDirectory, Self.successorCertificateFileName, Array(root.certificate.pem.utf8))
        let ca = LocalCA(
            trustDomain: trustDomain, signingCertificate: root.certificate, signingKey: root.key, intermediates: [],
            roots: [root.certificate], createdNewRoot: true)
        successor = ca
        return ca
    }

    /// Drops the current root: the successor's files replace `ca.*` (see the type's crash-safety note) and it
    /// becomes the current root. Returns the retired root.
    @discardableResult
    public func retireCurrent() throws -> LocalCA {
        guard let next = successor else { throw LocalCAError("no successor root to replace \(currentCertificatePath)") }
        let retired = current
        try Self.writeFile(stateDirectory, LocalCA.keyFileName, Array(try next.signingKeyPEM().utf8))
        try Self.removeFile(successorKeyPath)
        try Self.writeFile(stateDirectory, LocalCA.certificateFileName, Array(next.signingCertificate.pem.utf8))
        try Self.removeFile(successorCertificatePath)
        current = next
        successor = nil
        return retired
    }

    private static func writeFile(_ directory: String, _ name: String, _ bytes: [UInt8]) throws {
        do throws(SystemError) {
            try Files.writeAtomically(directory: directory, name: name, bytes: bytes, mode: 0o600)
        } catch {
            throw LocalCAError("state dir \(directory): \(error)")
        }
    }

    private static func removeFile(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw LocalCAError("cannot remove \(path): \(String(cString: strerror(errno)))")
        }
    }
}
