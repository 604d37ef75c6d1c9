import Glibc

/// Small Glibc file helpers for the CA's state directory (no Foundation in library modules).
enum StateFiles {
    struct Failure: Error {
        let message: String
    }

    static func errnoText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code))
    }

    /// Creates `path` with mode 0700 if it does not exist.
    static func ensureDirectory(_ path: String) throws(Failure) {
        if mkdir(path, 0o700) == 0 { return }
        let code = errno
        guard code == EEXIST else { throw Failure(message: "cannot create directory \(path): \(errnoText(code))") }
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw Failure(message: "\(path) exists and is not a directory")
        }
    }

    /// Whether `path` exists (any file type).
    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// The whole file. Throws with the path and errno text.
    static func read(_ path: String) throws(Failure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(message: "cannot open \(path): \(errnoText())") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(message: "cannot read \(path): \(errnoText())")
            }
            if count == 0 { break }
            out.append(contentsOf: buffer[0..<count])
        }
        return out
    }

    /// Writes `bytes` to `directory/name` so that a crash leaves either the old file or the complete new one:
    /// write a temporary file (mode `mode`), fsync it, rename it over the target, fsync the directory.
    static func writeAtomically(directory: String, name: String, bytes: [UInt8], mode: mode_t) throws(Failure) {
        let target = directory + "/" + name
        let temporary = directory + "/." + name + ".tmp"
        _ = unlink(temporary)  // a leftover from an earlier crash
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(message: "cannot create \(temporary): \(errnoText())") }
        var ok = false
        defer {
            if !ok { _ = unlink(temporary) }
        }
        // open() applies the umask; fchmod makes the mode exact (0600 for keys) whatever the umask.
        guard fchmod(fd, mode) == 0 else {
            close(fd)
            throw Failure(message: "cannot chmod \(temporary): \(errnoText())")
        }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                let text = errnoText()
                close(fd)
                throw Failure(message: "cannot write \(temporary): \(text)")
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let text = errnoText()
            close(fd)
            throw Failure(message: "cannot fsync \(temporary): \(text)")
        }
        guard close(fd) == 0 else { throw Failure(message: "cannot close \(temporary): \(errnoText())") }
        guard rename(temporary, target) == 0 else {
            throw Failure(message: "cannot rename \(temporary) to \(target): \(errnoText())")
        }
        ok = true
        // Make the rename itself durable.
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw Failure(message: "cannot open \(directory): \(errnoText())") }
        defer { close(directoryFD) }
        guard fsync(directoryFD) == 0 else { throw Failure(message: "cannot fsync \(directory): \(errnoText())") }
    }
}
