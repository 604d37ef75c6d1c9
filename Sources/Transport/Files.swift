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
    public static func read(_ path: String, limit: Int = .max) throws(SystemError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.last("open", detail: path) }
        defer { close(fd) }
        var out: [UInt8] = []
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
