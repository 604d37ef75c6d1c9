import Glibc
public import Issuance
import PKI
public import SPIFFE
public import Transport

/// Where the credential files are (`--svid-file`, `--svid-key-file`, `--bundle-file`). These paths are the
/// operator's: they are not confined by `--file-dirs`, which is for names clients ask for.
public struct CredentialFilePaths: Sendable, Equatable {
    public var svid: String
    public var key: String?
    public var bundle: String

    public init(svid: String, key: String?, bundle: String) {
        self.svid = svid
        self.key = key
        self.bundle = bundle
    }

    public var all: [String] { [svid] + (key.map { [$0] } ?? []) + [bundle] }
}

/// `--issuer files`: serves the identity that files hold, and follows them as something else rewrites them (the
/// kubelet for Pod Certificates, cert-manager's CSI driver, istio-agent's file output).
///
///     start / file event / SIGHUP / notBefore reached
///          └─▶ read all files (bounded, non-blocking) ─▶ CredentialFiles.identity
///                 ├─ consistent and new ─▶ onUpdate (the next loop turn)
///                 ├─ consistent, unchanged ─▶ nothing
///                 └─ refused ─▶ onError once per distinct reason; the last good identity keeps serving
///
/// The files' directories are watched (inotify), so a kubelet `..data` swap, a rename over a file and an in-place
/// rewrite are all seen. A half-written file fails to parse and is read again on the write that completes it.
/// Rotation belongs to whoever writes the files: this issuer never schedules one, it only re-reads.
public final class FileIdentityIssuer: Issuer {
    /// Why 1 MiB: a credential bundle or a roots file of a few certificates is a few KiB; the cap applies before
    /// the read.
    public static let maxFileBytes = 1 << 20

    private let paths: CredentialFilePaths
    private let expectedID: SPIFFEID?
    private let loop: EventLoop
    private let clock: any WallClock
    private var callbacks = IssuerCallbacks()
    private var watcher: FileWatcher?
    private var lastDelivered: [[UInt8]]?
    private var lastRefusal: String?
    private var validFromTimer: EventLoop.Timer?
    private var pendingLoad: EventLoop.Timer?
    /// A consistent certificate without a SPIFFE ID (no URI SAN, no `--spiffe-id` required): not an identity the
    /// `Issuer` contract can carry, so it goes here (served as `default` only). Called on the loop, like `onUpdate`.
    public var onPlainCredential: ((CredentialFiles.PlainCredential) -> Void)?

    public init(paths: CredentialFilePaths, expectedID: SPIFFEID?, loop: EventLoop, clock: any WallClock) {
        self.paths = paths
        self.expectedID = expectedID
        self.loop = loop
        self.clock = clock
    }

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        guard callbacks.start(onUpdate: onUpdate, onError: onError) else { return }
        do {
            let watcher = try FileWatcher(loop: loop) { [weak self] _ in self?.scheduleLoad() }
            for path in paths.all { try watcher.watch(file: path) }
            self.watcher = watcher
        } catch {
            // Served from what is there now; later changes only with SIGHUP. Said once, with the reason.
            report("cannot watch the credential files (changes need SIGHUP): \(error)")
        }
        scheduleLoad()
    }

    public func rotateNow() { scheduleLoad() }

    public func stop() {
        callbacks.stop()
        watcher = nil
        validFromTimer?.cancel()
        pendingLoad?.cancel()
    }

    /// Loads on the next loop turn (never inside `start` or a callback), once for a burst of file events: a
    /// kubelet swap touches several entries of one directory at once.
    private func scheduleLoad() {
        guard pendingLoad == nil else { return }
        pendingLoad = loop.schedule(after: 0) { [weak self] in
            self?.pendingLoad = nil
            self?.load()
        }
    }

    private func load() {
        // The files are read one by one through their paths; a kubelet-style `..data` swap between two reads would
        // pair one version's certificate with the next version's key. Where every path resolves before and after
        // the reads is compared: if any moved, the set read is no set at all, neither served nor reported, and it is
        // read again (the swap's own events would schedule that too).
        let before = Self.resolved(paths.all)
        let read = Result { () throws(SystemError) in
            CredentialFiles.Contents(
                svid: try Self.read(paths.svid), key: try paths.key.map(Self.read), bundle: try Self.read(paths.bundle))
        }
        guard Self.resolved(paths.all) == before else { return scheduleLoad() }
        let contents: CredentialFiles.Contents
        switch read {
        case .success(let read): contents = read
        case .failure(let error): return report("cannot read the credential files: \(error)")
        }
        let credential: CredentialFiles.Credential
        do throws(CredentialFiles.Refusal) {
            credential = try CredentialFiles.credential(contents, expectedID: expectedID, now: clock.now())
        } catch {
            if let validFrom = error.validFrom { lookAgain(at: validFrom) }
            return report(error.description)
        }
        lastRefusal = nil
        switch credential {
        case .svid(let update):
            let fingerprint = [update.svid.chainDER] + update.bundles.map(\.der)
            guard fingerprint != lastDelivered else { return }
            lastDelivered = fingerprint
            callbacks.deliver(update)
        case .plain(let plain):
            let fingerprint = [Certificate.concatenatedDER(plain.chain), Certificate.concatenatedDER(plain.roots)]
            guard fingerprint != lastDelivered, callbacks.isStarted else { return }
            lastDelivered = fingerprint
            onPlainCredential?(plain)
        }
    }

    /// A leaf delivered before its notBefore becomes servable without any file event: look again then.
    private func lookAgain(at validFrom: Timestamp) {
        validFromTimer?.cancel()
        let delay = Double(validFrom - clock.now()) + 1
        validFromTimer = loop.schedule(after: delay) { [weak self] in self?.scheduleLoad() }
    }

    /// One report per distinct problem: a file that stays broken is one log line, not one per event.
    private func report(_ message: String) {
        guard message != lastRefusal else { return }
        lastRefusal = message
        callbacks.report(IssuerError(kind: .issuanceFailed, message: "credential files: \(message)"))
    }

    /// Each path with every symlink resolved (nil where it does not resolve now).
    private static func resolved(_ paths: [String]) -> [String?] {
        paths.map { try? Files.realPath($0) }
    }

    private static func read(_ path: String) throws(SystemError) -> [UInt8] {
        let file = try RegularFile(path: path)
        return try file.readAll(limit: maxFileBytes)
    }
}
