internal import CLinux
import Glibc

/// Watches directories with inotify and reports, on the event loop, which watched files may have changed.
///
/// Directories, not files, are watched: Kubernetes updates mounted Secrets and ConfigMaps by swapping a `..data`
/// symlink, and editors replace files by rename — both invisible to a watch on the old file's inode.
public final class FileWatcher {
    private let loop: EventLoop
    private let fd: Int32
    private var directories: [Int32: String] = [:]
    private var watchedFiles: [String: Set<String>] = [:]  // directory → files of interest
    private let onChange: (Set<String>) -> Void

    /// `onChange` receives the watched file paths whose directory saw an event (a superset is fine: callers reload
    /// and compare content).
    public init(loop: EventLoop, onChange: @escaping (Set<String>) -> Void) throws(SystemError) {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw SystemError.last("inotify_init1") }
        self.fd = fd
        self.loop = loop
        self.onChange = onChange
        try loop.register(fd: fd, events: .readable) { [weak self] _ in self?.drain() }
    }

    deinit {
        loop.deregister(fd: fd)
        close(fd)
    }

    /// Starts watching `path` (its directory). Idempotent.
    public func watch(file path: String) throws(SystemError) {
        let directory = Self.directory(of: path)
        if watchedFiles[directory] == nil {
            let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB)
            let wd = inotify_add_watch(fd, directory, mask)
            guard wd >= 0 else { throw SystemError.last("inotify_add_watch", detail: directory) }
            directories[wd] = directory
        }
        watchedFiles[directory, default: []].insert(path)
    }

    /// Stops watching `path`; the directory's watch is removed with its last file, so a client that asked for many
    /// names cannot leave inotify watches behind.
    public func unwatch(file path: String) {
        let directory = Self.directory(of: path)
        guard var files = watchedFiles[directory], files.remove(path) != nil else { return }
        if !files.isEmpty {
            watchedFiles[directory] = files
            return
        }
        watchedFiles.removeValue(forKey: directory)
        if let wd = directories.first(where: { $0.value == directory })?.key {
            _ = inotify_rm_watch(fd, wd)
            directories.removeValue(forKey: wd)
        }
    }

    /// Directories watched now (one inotify watch each).
    public var watchedDirectoryCount: Int { directories.count }

    private func drain() {
        var changed = Set<String>()
        let size = 4096
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let count = read(fd, buffer, size)
            if count <= 0 { break }
            var offset = 0
            while offset < count {
                let event = buffer.load(fromByteOffset: offset, as: inotify_event.self)
                if let directory = directories[event.wd], let files = watchedFiles[directory] {
                    changed.formUnion(files)
                }
                offset += MemoryLayout<inotify_event>.size + Int(event.len)
            }
        }
        if !changed.isEmpty { onChange(changed) }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
