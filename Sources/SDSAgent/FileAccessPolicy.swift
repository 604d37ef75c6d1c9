/// Which files the file-backed names (`file-cert:<cert>~<key>`, `file-root:<ca>`) may read — a pure decision over
/// canonical paths; resolving the paths (`realpath`, `/proc/self/fd`) is the caller's I/O.
///
/// A file-backed name is a path chosen by whoever can reach the socket, so without a policy a client could ask for
/// the agent's own CA key and receive it as a "certificate". A path is served only when, after every symlink is
/// resolved:
///
///     resolved path ──► under /proc, /sys, /dev?  ──yes──► refused (pseudo-filesystem)
///                   ──► the agent's own secret?   ──yes──► refused (state dir, --ca-key, …), even inside a file dir
///                   ──► under a --file-dirs dir?  ──no───► refused (outside the allowed directories)
///                   ──► allowed (then: a regular file, at most `maxFileBytes`)
///
/// The check is on resolved paths, so kubelet's `..data` symlink swaps inside an allowed directory keep working and
/// a symlink leading out of one is refused.
public struct FileAccessPolicy: Sendable, Equatable {
    /// Directories file-backed names may read from, as configured (resolved at each check: a mount may appear later).
    public var allowedDirectories: [String]
    /// Files and directories the agent keeps secret (its state dir, `--ca-key`): never served, wherever they are.
    public var protectedPaths: [String]
    /// Files allowed by name whatever the directories say: the system trust store behind `file-root:system`.
    public var allowedFiles: [String]

    /// The conventional mount points of Istio's file-mounted certificates (`/etc/certs`, as in Istio's
    /// `DestinationRule` file TLS settings), gateway certificates (`/etc/istio/…-certs`) and the mesh root
    /// (`/var/run/secrets/istio`). Deliberately not `/var/run/secrets` as a whole: the pod's tokens live there.
    public static let defaultDirectories = ["/etc/certs", "/etc/istio", "/var/run/secrets/istio"]

    /// Kernel pseudo-filesystems: their "regular files" are the agent's own memory and environment
    /// (`/proc/self/environ`), never a certificate.
    public static let pseudoFilesystems = ["/proc", "/sys", "/dev"]

    /// Certificates, keys and CA bundles are kilobytes (Debian's whole system trust store is ~200 KB); the cap only
    /// stops a wrong path from making the one event-loop thread read something huge.
    public static let maxFileBytes = 1 << 20

    /// Distinct file-backed names held at once. istio-proxy asks for a handful (one pair and one root per
    /// `DestinationRule` with file TLS); the cap keeps a client from making the agent watch and cache thousands.
    public static let maxNames = 64

    public init(allowedDirectories: [String], protectedPaths: [String], allowedFiles: [String] = []) {
        self.allowedDirectories = allowedDirectories
        self.protectedPaths = protectedPaths
        self.allowedFiles = allowedFiles
    }

    /// Why a file may not be read.
    public enum Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        case pseudoFilesystem(String)
        case agentSecret(String)
        case outsideAllowedDirectories(String)
        case notRegularFile(String)
        case tooLarge(String)
        case tooManyNames

        public var description: String {
            switch self {
            case .pseudoFilesystem(let path): return "\(path) is on a kernel pseudo-filesystem"
            case .agentSecret(let path): return "\(path) is one of the agent's own secrets"
            case .outsideAllowedDirectories(let path): return "\(path) is outside the allowed directories (--file-dirs)"
            case .notRegularFile(let path): return "\(path) is not a regular file"
            case .tooLarge(let path): return "\(path) is larger than \(FileAccessPolicy.maxFileBytes) bytes"
            case .tooManyNames: return "more than \(FileAccessPolicy.maxNames) file-backed names are in use"
            }
        }
    }

    /// Checks one canonical path. `resolvedDirectories` and `resolvedProtected` are `allowedDirectories` and
    /// `protectedPaths` after symlink resolution (an entry that does not exist is passed as configured).
    public static func refusal(
        forResolved path: String, resolvedDirectories: [String], resolvedProtected: [String], allowedFiles: [String]
    ) -> Refusal? {
        if pseudoFilesystems.contains(where: { contains($0, path) }) { return .pseudoFilesystem(path) }
        if resolvedProtected.contains(where: { contains($0, path) }) { return .agentSecret(path) }
        if allowedFiles.contains(path) { return nil }
        if !resolvedDirectories.contains(where: { $0 != "/" && contains($0, path) }) {
            return .outsideAllowedDirectories(path)
        }
        return nil
    }

    /// Whether `path` is `ancestor` itself or lies below it (component-wise: `/etc/certs2` is not below `/etc/certs`).
    static func contains(_ ancestor: String, _ path: String) -> Bool {
        var base = ancestor
        while base.count > 1 && base.hasSuffix("/") { base.removeLast() }
        return path == base || path.hasPrefix(base == "/" ? "/" : base + "/")
    }
}
