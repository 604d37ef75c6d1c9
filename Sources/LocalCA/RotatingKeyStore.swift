import Glibc
public import PKI
import Transport

/// One file of a stored key: its name while the key is current and while it is the successor, and whether it holds
/// private key material (then it must be readable by no one else).
public struct RotatingKeyFile: Sendable {
    public let name: String
    public let successorName: String
    public let isPrivate: Bool

    public init(name: String, successorName: String, isPrivate: Bool) {
        self.name = name
        self.successorName = successorName
        self.isPrivate = isPrivate
    }
}

/// One kind of key kept by `RotatingKeyStore`: its files and how a key is read, written and made.
public protocol RotatingKeyFormat {
    associatedtype Key

    /// The files of one key, in the order they are written. A crash between two writes leaves a prefix of them, which
    /// `open` reports instead of using, so the last file is the one that makes a key usable (for the CA: key first,
    /// certificate last, never a certificate whose key is lost).
    static var files: [RotatingKeyFile] { get }
    /// The key's name in messages ("root").
    static var keyName: String { get }
    /// A private file's name in the ownership checks' messages ("key file").
    static var privateFileLabel: String { get }
    /// The error every failure but the ownership checks (always `LocalCAError`) is reported as.
    static func error(_ message: String) -> any Error

    /// The key whose files are `paths` (in `files` order), validated; a damaged file throws a line naming it.
    func read(_ paths: [String]) throws -> Key
    /// The contents of each file of `key`, in `files` order.
    func encode(_ key: Key) throws -> [[UInt8]]
    /// A new key, valid from `now`.
    func make(now: Timestamp) throws -> Key
    /// Whether `firstFile` (a key's first file) and `lastFile` (a key's last file) belong to the same key: how `open`
    /// recognises a retirement stopped after the successor's first file replaced the current key's.
    func isSameKey(firstFile: String, lastFile: String) throws -> Bool
}

/// The current/successor/retire key store over a state directory, shared by the CA's roots (`LocalCARoots`) and the
/// JWT signing keys: `RootRotationSchedule` says when each change is due.
///
///     files:   current  ──createSuccessor──►  current + successor  ──retireCurrent──►  current (was successor)
///
/// Every file is 0600 and written atomically (temporary file, fsync, rename). Retiring moves the successor's files
/// over the current key's one at a time in write order, removing each successor file once its copy is in place; a
/// start that finds the current key's first file already holding the successor's (`isSameKey`) finishes that move,
/// since the old key was being dropped anyway and the new one is complete. Any other damage is refused, naming the
/// file, and nothing is overwritten.
///
/// The state dir is trusted only if it is ours (`FileTrust`): whoever can replace a key can mint identities with it.
public struct RotatingKeyStore<Format: RotatingKeyFormat> {
    public let directory: String
    private let format: Format
    /// The key in use before any rotation in progress.
    public private(set) var current: Format.Key
    /// The next key, once created.
    public private(set) var successor: Format.Key?
    /// True when this start created the first key (empty state directory).
    public let createdFirstKey: Bool
    /// True when this start finished a retirement that a crash had interrupted.
    public let finishedInterruptedRetirement: Bool

    private init(
        directory: String, format: Format, current: Format.Key, successor: Format.Key?, createdFirstKey: Bool,
        finishedInterruptedRetirement: Bool
    ) {
        self.directory = directory
        self.format = format
        self.current = current
        self.successor = successor
        self.createdFirstKey = createdFirstKey
        self.finishedInterruptedRetirement = finishedInterruptedRetirement
    }

    private static func paths(_ directory: String, successor: Bool) -> [String] {
        Format.files.map { directory + "/" + (successor ? $0.successorName : $0.name) }
    }

    /// Refuses the private files of `directory` that others may read or replace. `open` runs it too; callers run it
    /// first when a refusal must come before anything else is loaded.
    public static func checkPrivateFiles(directory: String) throws {
        for successor in [false, true] {
            for (file, path) in zip(Format.files, paths(directory, successor: successor))
            where file.isPrivate && Files.exists(path) {
                try FileTrust.checkPrivateKeyFile(path, what: Format.privateFileLabel)
            }
        }
    }

    // MARK: - Opening

    /// Loads the keys of `directory`, or makes the first one there when it holds none.
    public static func open(directory: String, format: Format, now: Timestamp) throws -> Self {
        do throws(SystemError) {
            try Files.ensureDirectory(directory)
        } catch {
            throw Format.error("state dir \(directory): \(error)")
        }
        try FileTrust.checkOwnedByUs(directory, what: "state dir", directory: true)
        try checkPrivateFiles(directory: directory)
        let finished = try finishInterruptedRetirement(directory, format)

        let currentPaths = paths(directory, successor: false)
        let successorPaths = paths(directory, successor: true)
        let hasCurrent = currentPaths.map(Files.exists)
        let hasSuccessor = successorPaths.map(Files.exists)
        guard hasCurrent.contains(true) else {
            // Messages name the files last-written first: the one that completes a key is what operators look for.
            if let found = zip(successorPaths, hasSuccessor).reversed().first(where: \.1)?.0 {
                let missing = Array(currentPaths.reversed())
                throw Format.error(
                    "\(found) exists but \(phrase(missing)) \(missing.count == 1 ? "is" : "are") missing; restore "
                        + "\(missing.count == 1 ? "it" : "them") or remove \(found)")
            }
            let key = try format.make(now: now)
            try write(format.encode(key), directory, names: Format.files.map(\.name))
            return Self(
                directory: directory, format: format, current: key, successor: nil, createdFirstKey: true,
                finishedInterruptedRetirement: false)
        }
        try requireComplete(
            currentPaths, hasCurrent, interrupted: "interrupted first start?",
            remove: currentPaths.count == 2 ? "both" : "all of them")
        let current = try format.read(currentPaths)
        var successor: Format.Key?
        if hasSuccessor.contains(true) {
            let present = zip(successorPaths, hasSuccessor).filter(\.1).map(\.0)
            try requireComplete(
                successorPaths, hasSuccessor, interrupted: "interrupted \(Format.keyName) rotation?",
                remove: phrase(Array(present.reversed())))
            successor = try format.read(successorPaths)
        }
        return Self(
            directory: directory, format: format, current: current, successor: successor, createdFirstKey: false,
            finishedInterruptedRetirement: finished)
    }

    /// Refuses a key with some of its files missing. When the present files are the first ones written, the key's
    /// writing was interrupted: the message says so.
    private static func requireComplete(_ paths: [String], _ present: [Bool], interrupted: String, remove: String)
        throws
    {
        guard present.contains(false) else { return }
        let missing = Array(zip(paths, present).filter { !$0.1 }.map(\.0).reversed())
        let found = Array(zip(paths, present).filter(\.1).map(\.0).reversed())
        let isWritePrefix = !present.drop(while: { $0 }).contains(true)
        throw Format.error(
            "\(phrase(missing)) \(missing.count == 1 ? "is" : "are") missing but \(phrase(found)) "
                + "\(found.count == 1 ? "exists" : "exist")\(isWritePrefix ? " (\(interrupted))" : ""); restore "
                + "\(missing.count == 1 ? "it" : "them") or remove \(remove)")
    }

    private static func phrase(_ paths: [String]) -> String {
        paths.count <= 2
            ? paths.joined(separator: " and ") : paths.dropLast().joined(separator: ", ") + " and " + paths.last!
    }

    /// When the current key's first file already holds the successor's, a crash stopped `promote` after its first
    /// step: its remaining steps are replayed from the successor files still there (a removed one was copied).
    private static func finishInterruptedRetirement(_ directory: String, _ format: Format) throws -> Bool {
        let first = directory + "/" + Format.files[0].name
        let last = directory + "/" + Format.files[Format.files.count - 1].successorName
        guard Files.exists(last), Files.exists(first), try format.isSameKey(firstFile: first, lastFile: last) else {
            return false
        }
        var contents: [[UInt8]?] = [nil]
        for path in paths(directory, successor: true).dropFirst() {
            contents.append(Files.exists(path) ? try readFile(path) : nil)
        }
        try promote(directory, contents)
        return true
    }

    // MARK: - Rotating

    /// Makes the successor (valid from `now`) and saves it. Fails if a successor exists.
    @discardableResult
    public mutating func createSuccessor(now: Timestamp) throws -> Format.Key {
        guard successor == nil else {
            throw Format.error("\(Self.paths(directory, successor: true).last!) already exists")
        }
        let key = try format.make(now: now)
        try Self.write(format.encode(key), directory, names: Format.files.map(\.successorName))
        successor = key
        return key
    }

    /// Drops the current key: the successor's files replace it (see the type's note on crash safety) and it becomes
    /// the current key. Returns the retired key.
    @discardableResult
    public mutating func retireCurrent() throws -> Format.Key {
        guard let next = successor else {
            throw Format.error(
                "no successor \(Format.keyName) to replace \(Self.paths(directory, successor: false).last!)")
        }
        let retired = current
        try Self.promote(directory, try format.encode(next))
        current = next
        successor = nil
        return retired
    }

    /// Moves the successor's files over the current key's in write order, each successor file removed once its
    /// copy is in place, so that any crash leaves a state `finishInterruptedRetirement` recognises. A nil content
    /// only removes the successor file (its copy is already in place).
    private static func promote(_ directory: String, _ contents: [[UInt8]?]) throws {
        for (file, bytes) in zip(Format.files, contents) {
            if let bytes { try write([bytes], directory, names: [file.name]) }
            try removeFile(directory + "/" + file.successorName)
        }
    }

    // MARK: - Files

    private static func write(_ contents: [[UInt8]], _ directory: String, names: [String]) throws {
        for (name, bytes) in zip(names, contents) {
            do throws(SystemError) {
                try Files.writeAtomically(directory: directory, name: name, bytes: bytes, mode: 0o600)
            } catch {
                throw Format.error("state dir \(directory): \(error)")
            }
        }
    }

    private static func readFile(_ path: String) throws -> [UInt8] {
        do throws(SystemError) {
            return try Files.read(path)
        } catch {
            throw Format.error("\(error)")
        }
    }

    private static func removeFile(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw Format.error("cannot remove \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Whether a state dir or key file may be trusted: it must be ours and writable by no one else, and a private key
/// readable by no one else.
public enum FileTrust {
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
}
