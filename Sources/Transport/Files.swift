import Glibc

/// Whole-file reads and crash-safe writes with Glibc (no Foundation in library modules). Used for the CA's state
/// directory, Istio's file-backed secrets and sds-dump's `--pem-dir`; errors name the path.
public enum Files {
    /// Creates `path` with `mode` if it does not exist; an existing directory is left as it is (it may be a mount).
    public static func ensureDirectory(_ path: String, mode: UInt32 = 0o700) throws(SystemError) {
        if mkdir(path, mode_t(mode)) == 0 { return }
        let code = errno
        guard code == EEXIST else { throw SystemError("mkdir", errno: code, detail: path) }
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw SystemError("mkdir", errno: ENOTDIR, detail: "\(path) (exists and is not a directory)")
        }
    }

    /// Whether `path` exists (any file type; a dangling symlink counts).
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// The whole file; more than `limit` bytes is an error (EFBIG), so a wrong path cannot make us read a disk.
    /// Only regular files are read (see `RegularFile`): a FIFO or a device named by mistake is an error, not a hang.
    public static func read(_ path: String, limit: Int = .max) throws(SystemError) -> [UInt8] {
        try RegularFile(path: path).readAll(limit: limit)
    }

    /// The canonical absolute path of `path`: every symlink, `.` and `..` resolved (`realpath(3)`).
    public static func realPath(_ path: String) throws(SystemError) -> String {
        guard let resolved = realpath(path, nil) else { throw SystemError.last("realpath", detail: path) }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Writes `bytes` to `directory/name` so that a crash leaves either the old file or the complete new one:
    /// write a temporary file with exactly `mode`, fsync it, rename it over the target, fsync the directory.
    public static func writeAtomically(directory: String, name: String, bytes: [UInt8], mode: UInt32)
        throws(SystemError)
    {
        let target = directory + "/" + name
        let temporary = directory + "/." + name + ".tmp"
        _ = unlink(temporary)  // a leftover from an earlier crash
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else { throw SystemError.last("create", detail: temporary) }
        var ok = false
        defer {
            if !ok { _ = unlink(temporary) }
        }
        // open() applies the umask; fchmod makes the mode exact (0600 for keys) whatever the umask.
        guard fchmod(fd, mode_t(mode)) == 0 else {
            let error = SystemError.last("chmod", detail: temporary)
            close(fd)
            throw error
        }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                let error = SystemError.last("write", detail: temporary)
                close(fd)
                throw error
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let error = SystemError.last("fsync", detail: temporary)
            close(fd)
            throw error
        }
        guard close(fd) == 0 else { throw SystemError.last("close", detail: temporary) }
        guard rename(temporary, target) == 0 else {
            throw SystemError.last("rename", detail: "\(temporary) to \(target)")
        }
        ok = true
        // Make the rename itself durable.
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw SystemError.last("open", detail: directory) }
        defer { close(directoryFD) }
        guard fsync(directoryFD) == 0 else { throw SystemError.last("fsync", detail: directory) }
    }
}

/// An open regular file, owned by this value (closed in `deinit`).
///
/// Opened with `O_NONBLOCK` and checked with `fstat` before a byte is read: opening a FIFO that way returns at once
/// instead of waiting for a writer, and a FIFO, socket or device is refused — the event loop never blocks on a file
/// it was asked to read. `realPath` is where the descriptor really points (`/proc/self/fd`), so a caller can check a
/// policy against what was opened, not against a path that may have been swapped since it was resolved.
public final class RegularFile {
    public let path: String
    public let realPath: String
    public let size: Int
    private let fd: Int32

    public init(path: String) throws(SystemError) {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.last("open", detail: path) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let error = SystemError.last("stat", detail: path)
            close(fd)
            throw error
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SystemError("open", errno: EINVAL, detail: "\(path) (not a regular file)")
        }
        self.fd = fd
        self.path = path
        self.size = Int(info.st_size)
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        self.realPath =
            length > 0 ? String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : path
    }

    deinit { close(fd) }

    /// Reads the whole file; more than `limit` bytes is EFBIG (checked against the size first, then while reading,
    /// since a file can grow).
    public func readAll(limit: Int = .max) throws(SystemError) -> [UInt8] {
        guard size <= limit else { throw SystemError("read", errno: EFBIG, detail: path) }
        var out: [UInt8] = []
        out.reserveCapacity(size)
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SystemError.last("read", detail: path)
            }
            if count == 0 { break }
            out.append(contentsOf: buffer[0..<count])
            guard out.count <= limit else { throw SystemError("read", errno: EFBIG, detail: path) }
        }
        return out
    }
}
