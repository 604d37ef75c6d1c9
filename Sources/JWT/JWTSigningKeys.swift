public import LocalCA
public import PKI
import Transport

/// The local CA's JWT signing keys in its state directory: the current key (`jwt-key.pem`) and, during a rotation,
/// its successor (`jwt-key-next.pem`), kept by a `RotatingKeyStore` (atomic 0600 files, retirement, crash recovery,
/// ownership checks) on `RootRotationSchedule` with the JWT-SVID lifetime as the SVID lifetime: the successor is in
/// the JWT bundle at least one token lifetime and a half before it signs, and the old key stays in the bundle until
/// every token it signed has expired.
///
///     files:   jwt-key.pem  ──createSuccessor──►  jwt-key.pem + jwt-key-next.pem  ──retireCurrent──►  jwt-key.pem
///
/// Each file is a few `name=value` lines (`kid`, `created_at`, `not_after`) followed by the PKCS#8 PEM key. A start
/// that finds both files with the same `kid` finishes an interrupted retirement.
public final class JWTSigningKeys {
    public static let currentFileName = "jwt-key.pem"
    public static let successorFileName = "jwt-key-next.pem"
    /// A key file longer than this is not ours: a P-256 PKCS#8 PEM and three short lines are ~350 bytes.
    static let maxFileBytes = 8 * 1024

    public let stateDirectory: String
    /// Lifetime of each key created from now on, in seconds.
    public let keyLifetime: Int64
    public let schedule: RootRotationSchedule
    private var store: RotatingKeyStore<JWTKeyFormat>
    public var current: JWTSigningKey { store.current }
    public var successor: JWTSigningKey? { store.successor }
    public var createdNewKey: Bool { store.createdFirstKey }

    private init(keyLifetime: Int64, schedule: RootRotationSchedule, store: RotatingKeyStore<JWTKeyFormat>) {
        self.stateDirectory = store.directory
        self.keyLifetime = keyLifetime
        self.schedule = schedule
        self.store = store
    }

    /// Refuses the state dir's JWT key files if others may read or replace them (see
    /// `FileTrust.checkPrivateKeyFile`): run before anything else is loaded, so a bad mode is the only line.
    public static func checkKeyFiles(stateDirectory: String) throws {
        try RotatingKeyStore<JWTKeyFormat>.checkPrivateFiles(directory: stateDirectory)
    }

    /// Loads the keys of `stateDirectory` or creates the first one. A damaged file throws a one-line error naming
    /// it; nothing is overwritten.
    public static func open(stateDirectory: String, now: Timestamp, keyLifetime: Int64, tokenLifetime: Int64) throws
        -> JWTSigningKeys
    {
        let store = try RotatingKeyStore.open(
            directory: stateDirectory, format: JWTKeyFormat(keyLifetime: keyLifetime), now: now)
        return JWTSigningKeys(
            keyLifetime: keyLifetime, schedule: RootRotationSchedule(svidLifetime: tokenLifetime), store: store)
    }

    /// The public half of a JWT signing key, as the JWT bundle publishes it.
    public struct PublishedKey: Sendable {
        public let kid: String
        public let publicKey: PublicKey
        public let createdAt: Timestamp
        public let notAfter: Timestamp
    }

    /// The keys of `stateDirectory`'s JWT bundle, current first, then the successor: what a running agent publishes
    /// (it writes each change of the schedule before publishing it). Read only: nothing is created, finished or
    /// removed, and only the public halves leave this function. nil when there is no key yet (no `jwt-key.pem`);
    /// the agent's rules for the files (ours, mode 0600) apply, and a damaged file throws naming it.
    public static func readPublished(stateDirectory: String) throws -> [PublishedKey]? {
        let currentPath = stateDirectory + "/" + currentFileName
        let successorPath = stateDirectory + "/" + successorFileName
        guard Files.exists(currentPath) else {
            if Files.exists(successorPath) {
                throw JWTSVIDError("\(successorPath) exists but \(currentPath) is missing; restore it or remove both")
            }
            return nil
        }
        // Whoever can replace a key file can put their key in the bundle: the state dir must be ours, as for `open`.
        try LocalCARoots.checkOwnedByUs(stateDirectory, what: "state dir", directory: true)
        try checkKeyFiles(stateDirectory: stateDirectory)
        // Re-parsed from its DER, the public key keeps nothing of the private one, which is freed on return.
        func published(_ key: JWTSigningKey) throws -> PublishedKey {
            PublishedKey(
                kid: key.kid, publicKey: try PublicKey(spkiDER: key.privateKey.publicKey.spkiDER),
                createdAt: key.createdAt, notAfter: key.notAfter)
        }
        let current = try published(try read(currentPath))
        guard Files.exists(successorPath) else { return [current] }
        let successor = try published(try read(successorPath))
        // The same kid in both: a retirement stopped before removing jwt-key-next.pem (`open` finishes it).
        return successor.kid == current.kid ? [current] : [current, successor]
    }

    /// What the schedule says at `now`: performs a due change (creating or retiring a key) and returns the decision
    /// after it, with whether the set of keys changed.
    public func advance(now: Timestamp) throws -> (signer: JWTSigningKey, bundle: [JWTSigningKey], changed: Bool) {
        var changed = false
        for _ in 0..<2 {
            let decision = schedule.decide(now: now, current: root(current), successor: successor.map(root))
            switch decision.due {
            case .createSuccessor:
                try store.createSuccessor(now: now)
                changed = true
            case .retireCurrent:
                guard successor != nil else { break }
                try store.retireCurrent()
                changed = true
            case nil:
                let signer = decision.signer == .current ? current : (successor ?? current)
                let bundle = decision.bundle.map { $0 == .current ? current : (successor ?? current) }
                return (signer, bundle, changed)
            }
        }
        let decision = schedule.decide(now: now, current: root(current), successor: successor.map(root))
        let signer = decision.signer == .current ? current : (successor ?? current)
        return (signer, [current] + (successor.map { [$0] } ?? []), changed)
    }

    /// When the schedule's answer next changes (the timer to arm).
    public func nextEventAt(now: Timestamp) -> Timestamp? {
        schedule.decide(now: now, current: root(current), successor: successor.map(root)).nextEventAt
    }

    private func root(_ key: JWTSigningKey) -> RootRotationSchedule.Root {
        RootRotationSchedule.Root(createdAt: key.createdAt, notAfter: key.notAfter)
    }

    // MARK: Files

    static func encode(_ key: JWTSigningKey) throws -> [UInt8] {
        let text =
            "kid=\(key.kid)\ncreated_at=\(key.createdAt.secondsSinceEpoch)\nnot_after=\(key.notAfter.secondsSinceEpoch)\n"
            + (try key.privateKey.pkcs8PEM())
        return Array(text.utf8)
    }

    static func decode(_ bytes: [UInt8], path: String) throws -> JWTSigningKey {
        guard String(validating: bytes, as: UTF8.self) != nil else { throw JWTSVIDError("\(path): not UTF-8") }
        // Lines are split on the byte: splitting the String walks Characters (~130,000 instructions at start-up).
        var fields: [String: String] = [:]
        var pemStart = 0
        var lineStart = 0
        while lineStart <= bytes.count {
            let lineEnd = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
            let line = bytes[lineStart..<lineEnd]
            if line.starts(with: "-----BEGIN".utf8) { break }
            pemStart = min(lineEnd + 1, bytes.count)
            lineStart = lineEnd + 1
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else { continue }
            fields[String(decoding: line[..<equals], as: UTF8.self)] = String(
                decoding: line[(equals + 1)...], as: UTF8.self)
        }
        guard let kid = fields["kid"], !kid.isEmpty, let created = fields["created_at"].flatMap({ Int64($0) }),
            let notAfter = fields["not_after"].flatMap({ Int64($0) })
        else { throw JWTSVIDError("\(path): missing kid, created_at or not_after") }
        let key: PrivateKey
        do { key = try PrivateKey(pem: String(decoding: bytes[pemStart...], as: UTF8.self)) } catch {
            throw JWTSVIDError("\(path): \(error)")
        }
        return JWTSigningKey(
            kid: kid, privateKey: key, createdAt: Timestamp(secondsSinceEpoch: created),
            notAfter: Timestamp(secondsSinceEpoch: notAfter))
    }

    static func read(_ path: String) throws -> JWTSigningKey {
        let bytes: [UInt8]
        do throws(SystemError) {
            bytes = try Files.read(path, limit: maxFileBytes + 1)
        } catch {
            throw JWTSVIDError("\(path): \(error)")
        }
        guard bytes.count <= maxFileBytes else { throw JWTSVIDError("\(path): longer than \(maxFileBytes) bytes") }
        return try decode(bytes, path: path)
    }
}

/// A JWT signing key as `RotatingKeyStore` keeps it: one file.
struct JWTKeyFormat: RotatingKeyFormat {
    static let files = [
        RotatingKeyFile(
            name: JWTSigningKeys.currentFileName, successorName: JWTSigningKeys.successorFileName, isPrivate: true)
    ]
    static let keyName = "JWT key"
    static let privateFileLabel = "JWT key file"
    static func error(_ message: String) -> any Error { JWTSVIDError(message) }

    let keyLifetime: Int64

    func read(_ paths: [String]) throws -> JWTSigningKey { try JWTSigningKeys.read(paths[0]) }
    func encode(_ key: JWTSigningKey) throws -> [[UInt8]] { [try JWTSigningKeys.encode(key)] }
    func make(now: Timestamp) throws -> JWTSigningKey { try JWTSigningKey.generate(now: now, lifetime: keyLifetime) }
    func isSameKey(firstFile: String, lastFile: String) throws -> Bool {
        try JWTSigningKeys.read(lastFile).kid == JWTSigningKeys.read(firstFile).kid
    }
}
