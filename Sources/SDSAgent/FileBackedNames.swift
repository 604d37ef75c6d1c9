import Glibc
import Issuance
import Logging
import PKI
import Servers
import Transport
import Wire

/// Istio's file-backed names as clients subscribe to them: each path confined by `FileAccessPolicy`, read without
/// blocking the loop, validated, watched for changes, and released (watch and cache entry) when no stream holds the
/// name any more.
///
///     subscribe ──► refused by policy? ──yes──► logged once (name, reason, peer); never served
///                        │ no                       (Delta: removed_resources, Fetch: NOT_FOUND, SotW: held)
///                        ▼
///                   watched + read ──ok──► published ──file event / SIGHUP──► re-read (re-checked)
///                        │ missing/invalid
///                        ▼
///                   held, logged once per distinct error (a mount may still be coming)
///         last stream gone ──► unwatched, removed from the cache, forgotten
final class FileBackedNames {
    /// Names refused by policy, shared with the secret cache's classifier (which must be `@Sendable`). Only the
    /// event-loop thread reads or writes it.
    final class Refusals: @unchecked Sendable {
        var byName: [String: FileAccessPolicy.Refusal] = [:]
    }

    let refusals = Refusals()
    private let policy: FileAccessPolicy
    private let loop: EventLoop
    private let logger: Logger
    private let clock: any WallClock
    private let classify: (String) -> SecretName
    private var watcher: FileWatcher?
    /// Every watched file → the names that read it (a name reads one or two files).
    private var namesByFile: [String: Set<String>] = [:]
    /// Names held now → the files they read.
    private var filesByName: [String: [String]] = [:]
    /// The last load error per name: a lasting problem is logged once, not on every file event.
    private var errors: [String: String] = [:]
    /// Refused names already logged. Bounded, so a client cycling through fresh names cannot grow it (nor the log)
    /// without end: past the bound, refusals are counted and reported in one line.
    private var reported: Set<String> = []
    private var unreportedRefusals = 0
    static let maxReportedRefusals = 1024
    /// Names refused only because `FileAccessPolicy.maxNames` were in use, still subscribed: retried as soon as
    /// room frees, so the refusal never outlives the load that caused it.
    private var waitingForRoom: Set<String> = []

    /// Puts secrets into the cache / takes them out / re-asks the classifier.
    var publish: ([Secret]) -> Void = { _ in }
    var unpublish: ([String]) -> Void = { _ in }
    var reclassify: () -> Void = {}

    init(
        policy: FileAccessPolicy, loop: EventLoop, logger: Logger, clock: any WallClock,
        classify: @escaping (String) -> SecretName
    ) {
        self.policy = policy
        self.loop = loop
        self.logger = logger
        self.clock = clock
        self.classify = classify
    }

    /// Names held now (for tests and metrics).
    var heldNames: [String] { filesByName.keys.sorted() }

    /// Loads the file-backed names among `names` that are not held yet.
    func subscribe(_ names: [String], peer: String) {
        var fresh: [String] = []
        var refusedAny = false
        for name in names where filesByName[name] == nil && refusals.byName[name] == nil {
            let paths: [String]
            switch classify(name) {
            case .fileCertificate(let cert, let key): paths = [cert, key]
            case .fileRoot(let path): paths = [path]
            default: continue
            }
            if filesByName.count >= FileAccessPolicy.maxNames {
                refuse(name, .tooManyNames, peer: peer)
                waitingForRoom.insert(name)
                refusedAny = true
                continue
            }
            // Checked before anything is watched or opened: a refused path is never touched. Each path is checked
            // exactly once and that verdict is used: a lazy `compactMap(...).first` evaluates its closure twice, and a
            // symlink flipped in between turned the second (unwrapped) verdict into nil, a trap.
            var firstRefusal: FileAccessPolicy.Refusal?
            for path in paths {
                if let refusal = check(path) {
                    firstRefusal = refusal
                    break
                }
            }
            if let refusal = firstRefusal {
                refuse(name, refusal, peer: peer)
                refusedAny = true
                continue
            }
            filesByName[name] = paths
            for path in paths { namesByFile[path, default: []].insert(name) }
            watch(paths)
            fresh.append(name)
        }
        if refusedAny { reclassify() }
        if !fresh.isEmpty { reload(fresh, peer: peer) }
    }

    /// Forgets names no stream holds any more: their watches, cache entries, errors and refusals.
    func release(_ names: [String]) {
        var gone: [String] = []
        for name in names {
            waitingForRoom.remove(name)
            refusals.byName.removeValue(forKey: name)
            errors.removeValue(forKey: name)
            guard let paths = filesByName.removeValue(forKey: name) else { continue }
            gone.append(name)
            for path in paths {
                namesByFile[path]?.remove(name)
                if namesByFile[path]?.isEmpty == true {
                    namesByFile.removeValue(forKey: path)
                    watcher?.unwatch(file: path)
                }
            }
        }
        if !gone.isEmpty { unpublish(gone) }
        retryWaitingForRoom()
    }

    /// Names that found no room get another try now, in name order: each takes a slot or waits again.
    private func retryWaitingForRoom() {
        guard !waitingForRoom.isEmpty, filesByName.count < FileAccessPolicy.maxNames else { return }
        let retry = waitingForRoom.sorted()
        waitingForRoom = []
        for name in retry { refusals.byName.removeValue(forKey: name) }
        subscribe(retry, peer: "")
        // Subscribing reclassifies only on a refusal; the names that got room leave `neverServed` here.
        reclassify()
    }

    /// Re-reads every held name (SIGHUP).
    func reloadAll() { reload(heldNames, peer: "") }

    private func watch(_ paths: [String]) {
        do {
            if watcher == nil {
                watcher = try FileWatcher(loop: loop) { [weak self] changed in self?.filesChanged(changed) }
            }
            for path in paths { try watcher?.watch(file: path) }
        } catch {
            logger.warning("cannot watch files (changes need SIGHUP)", metadata: ["error": "\(error)"])
        }
    }

    private func filesChanged(_ paths: Set<String>) {
        reload(Set(paths.flatMap { namesByFile[$0] ?? [] }).sorted(), peer: "")
    }

    private func reload(_ names: [String], peer: String) {
        var secrets: [Secret] = []
        var refused: [(name: String, refusal: FileAccessPolicy.Refusal)] = []
        for name in names {
            do throws(FileSecrets.Failure) {
                secrets.append(try FileSecrets.load(name, kind: classify(name), now: clock.now(), read: read))
                errors[name] = nil
            } catch {
                switch error {
                case .refused(let refusal):
                    // A path that now resolves somewhere else (a symlink swapped to lead out): refused from now on.
                    refused.append((name, refusal))
                case .notReady(let problem):
                    // Held, not failed: istio-agent also waits for mounted files to appear.
                    if errors[name] != problem {
                        logger.warning(
                            "file-backed secret not ready",
                            metadata: ["name": "\(LogSummary.text(name))", "error": "\(LogSummary.text(problem))"])
                    }
                    errors[name] = problem
                }
            }
        }
        if !refused.isEmpty {
            release(refused.map(\.name))
            for (name, refusal) in refused { refuse(name, refusal, peer: peer) }
            reclassify()
        }
        if !secrets.isEmpty { publish(secrets) }
    }

    /// The policy's verdict on where `path` leads now; nil when it may be read. A file that does not exist yet is
    /// judged by where it would be: its deepest existing directory resolved, the rest appended — so a name waiting
    /// for a mount inside an allowed directory is held, and one outside is refused.
    private func check(_ path: String) -> FileAccessPolicy.Refusal? {
        guard path.hasPrefix("/") else { return .outsideAllowedDirectories(path) }
        var head = path
        var missing: [Substring] = []
        while true {
            if let resolved = try? Files.realPath(head) {
                let full = missing.isEmpty ? resolved : resolved + "/" + missing.reversed().joined(separator: "/")
                return refusal(forResolved: full)
            }
            guard let slash = head.lastIndex(of: "/"), slash != head.startIndex else {
                return .outsideAllowedDirectories(path)
            }
            let component = head[head.index(after: slash)...]
            // `..` below a directory that does not exist cannot be judged without resolving it: refuse.
            if component == ".." { return .outsideAllowedDirectories(path) }
            if !component.isEmpty && component != "." { missing.append(component) }
            head = String(head[..<slash])
        }
    }

    /// The policy's directories and protected paths with their symlinks resolved now (a mount may appear or move
    /// later, so this is not cached across checks of different files).
    private struct ResolvedPolicy {
        let directories: [String]
        let protected: [String]
    }

    private func resolvedPolicy() -> ResolvedPolicy {
        func resolve(_ paths: [String]) -> [String] { paths.map { (try? Files.realPath($0)) ?? $0 } }
        return ResolvedPolicy(
            directories: resolve(policy.allowedDirectories), protected: resolve(policy.protectedPaths))
    }

    private func refusal(forResolved path: String, _ resolved: ResolvedPolicy? = nil) -> FileAccessPolicy.Refusal? {
        let resolved = resolved ?? resolvedPolicy()
        return FileAccessPolicy.refusal(
            forResolved: path, resolvedDirectories: resolved.directories, resolvedProtected: resolved.protected,
            allowedFiles: policy.allowedFiles)
    }

    /// Reads one file of a name: resolved, checked, opened without blocking, re-checked against what was really
    /// opened (a symlink swapped between the check and the open), then read with the size cap.
    private func read(_ path: String) throws(FileSecrets.Failure) -> [UInt8] {
        let resolved: String
        do { resolved = try Files.realPath(path) } catch { throw .notReady("\(error)") }
        // Resolved once for both checks of this file: before opening it and on what was opened.
        let policyNow = resolvedPolicy()
        if let refusal = refusal(forResolved: resolved, policyNow) { throw .refused(refusal) }
        let file: RegularFile
        do { file = try RegularFile(path: resolved) } catch {
            if error.errno == EINVAL { throw .refused(.notRegularFile(path)) }
            throw .notReady("\(error)")
        }
        if let refusal = refusal(forResolved: file.realPath, policyNow) { throw .refused(refusal) }
        guard file.size <= FileAccessPolicy.maxFileBytes else { throw .refused(.tooLarge(path)) }
        do { return try file.readAll(limit: FileAccessPolicy.maxFileBytes) } catch {
            if error.errno == EFBIG { throw .refused(.tooLarge(path)) }
            throw .notReady("\(error)")
        }
    }

    private func refuse(_ name: String, _ refusal: FileAccessPolicy.Refusal, peer: String) {
        refusals.byName[name] = refusal
        if reported.contains(name) { return }
        guard reported.count < Self.maxReportedRefusals else {
            unreportedRefusals += 1
            if unreportedRefusals == 1 {
                logger.warning(
                    "file-backed name refused; further refusals are not logged",
                    metadata: ["logged": "\(Self.maxReportedRefusals)"])
            }
            return
        }
        reported.insert(name)
        logger.warning(
            "file-backed name refused",
            metadata: [
                "name": "\(LogSummary.text(name))", "reason": "\(LogSummary.text("\(refusal)"))", "peer": "\(peer)",
            ])
    }
}
