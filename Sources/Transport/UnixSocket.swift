internal import CLinux
import Glibc

/// Where a Unix socket lives. Accepts a plain path or the `unix:///abs/path` form of SPIFFE_ENDPOINT_SOCKET.
public struct UnixSocketAddress: Equatable, Sendable, CustomStringConvertible {
    public let path: String

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case empty
        case unsupportedScheme(String)
        case tooLong(String, limit: Int)
        case notAbsolute(String)

        public var description: String {
            switch self {
            case .empty: return "socket address is empty"
            case .unsupportedScheme(let s):
                return "socket address \(s): only unix:///absolute/path or a file path is supported"
            case .tooLong(let p, let limit):
                return "socket path \(p) is longer than \(limit) bytes (the sockaddr_un limit)"
            case .notAbsolute(let s):
                return "socket address \(s): a unix:// URI needs an absolute path (unix:///run/x.sock)"
            }
        }
    }

    /// The longest path `sockaddr_un.sun_path` holds, without its terminating NUL.
    public static let maxPathLength = 107

    public init(_ text: String) throws(ParseError) {
        guard !text.isEmpty else { throw .empty }
        var path = text
        if text.hasPrefix("unix://") {
            path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw .notAbsolute(text) }
        } else if text.hasPrefix("unix:") {
            path = String(text.dropFirst("unix:".count))
        } else if text.contains("://") {
            throw .unsupportedScheme(text)
        }
        guard path.utf8.count <= Self.maxPathLength else { throw .tooLong(path, limit: Self.maxPathLength) }
        self.path = path
    }

    public var description: String { path }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

/// A listening Unix stream socket. The socket file is created with `mode` (0600 by default) — no window in which it
/// is more open — and removed again when the listener closes.
///
/// Accepting never spins: when `accept` fails for want of a resource (EMFILE/ENFILE: no descriptor left;
/// ENOBUFS/ENOMEM), the waiting connections stay in the kernel's backlog and the listener leaves the poll set — on a
/// level-triggered epoll it would otherwise be reported ready, fail again and burn a core. It comes back on
/// `resume()` (the owner calls it when it closes a connection, freeing a descriptor) or after
/// `resourceRetryDelay`, whichever is first.
///
/// ```
///   ┌───────────┐  EMFILE/ENFILE/ENOBUFS/ENOMEM  ┌────────┐
///   │ accepting │ ─────────────────────────────► │ paused │ (not in the poll set)
///   └───────────┘ ◄───────────────────────────── └────────┘
///                   resume() or retry timer
/// ```
public final class UnixListener {
    /// How long a paused listener waits before trying `accept` again when no connection has closed meanwhile (the
    /// shortage may be another process's): often enough to recover within a fraction of a second, rare enough that
    /// a lasting shortage costs a few failed syscalls per second.
    public static let resourceRetryDelay = 0.25

    public let address: UnixSocketAddress
    public private(set) var fd: Int32
    private let loop: EventLoop
    private let onAccept: (Int32) -> Void
    /// Called each time accepting pauses, with the error that paused it.
    public var onPause: ((SystemError) -> Void)?
    public private(set) var isPaused = false
    private var retryTimer: EventLoop.Timer?

    /// Binds and listens. A socket file left by a dead process is replaced; one a live process still answers on is
    /// an error (two agents must never fight over one socket).
    public init(
        address: UnixSocketAddress, mode: UInt32 = 0o600, backlog: Int32 = 1024, loop: EventLoop,
        onAccept: @escaping (Int32) -> Void
    ) throws(SystemError) {
        self.address = address
        self.loop = loop
        self.onAccept = onAccept
        try Self.removeStaleSocket(at: address)
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.last("socket") }
        // bind() creates the file with the umask applied; tighten the umask so the file never exists more open than
        // `mode`, then set the exact mode.
        let oldMask = umask(mode_t(~mode & 0o777))
        let bound = address.withSockaddr { bind(fd, $0, $1) }
        let bindErrno = errno
        umask(oldMask)
        guard bound == 0 else {
            Glibc.close(fd)
            throw SystemError("bind", errno: bindErrno, detail: address.path)
        }
        guard chmod(address.path, mode_t(mode)) == 0 else {
            let e = SystemError.last("chmod", detail: address.path)
            Glibc.close(fd)
            unlink(address.path)
            throw e
        }
        guard listen(fd, backlog) == 0 else {
            let e = SystemError.last("listen", detail: address.path)
            Glibc.close(fd)
            unlink(address.path)
            throw e
        }
        self.fd = fd
        do {
            try watch()
        } catch {
            Glibc.close(fd)
            unlink(address.path)
            throw error
        }
    }

    deinit { close() }

    /// Stops accepting and removes the socket file. Idempotent.
    public func close() {
        guard fd >= 0 else { return }
        retryTimer?.cancel()
        retryTimer = nil
        if !isPaused { loop.deregister(fd: fd) }
        Glibc.close(fd)
        fd = -1
        unlink(address.path)
    }

    /// A descriptor may be free again (a connection closed): a paused listener goes back into the poll set now.
    /// Does nothing while accepting.
    public func resume() {
        guard isPaused, fd >= 0 else { return }
        retryTimer?.cancel()
        retryTimer = nil
        do {
            try watch()
            isPaused = false
        } catch {
            // epoll_ctl failing is itself a resource shortage: stay paused and try again later.
            retryTimer = loop.schedule(after: Self.resourceRetryDelay) { [weak self] in self?.resume() }
        }
    }

    private func watch() throws(SystemError) {
        try loop.register(fd: fd, events: .readable) { [weak self] _ in self?.acceptAll() }
    }

    private func acceptAll() {
        while fd >= 0 {
            let client = sds_accept_nonblocking(fd)
            if client >= 0 {
                onAccept(client)
                continue
            }
            let error = SystemError.last("accept", detail: address.path)
            switch error.errno {
            case EAGAIN, EWOULDBLOCK:
                return  // drained
            case EINTR, ECONNABORTED, EPROTO:
                continue  // that one connection is gone; the next may be fine
            default:
                // EMFILE/ENFILE/ENOBUFS/ENOMEM, or anything unexpected: retrying now would fail the same way.
                pause(error)
                return
            }
        }
    }

    private func pause(_ error: SystemError) {
        guard !isPaused, fd >= 0 else { return }
        isPaused = true
        loop.deregister(fd: fd)
        retryTimer = loop.schedule(after: Self.resourceRetryDelay) { [weak self] in self?.resume() }
        onPause?(error)
    }

    private static func removeStaleSocket(at address: UnixSocketAddress) throws(SystemError) {
        var info = stat()
        guard lstat(address.path, &info) == 0 else {
            if errno == ENOENT { return }
            throw SystemError.last("stat", detail: address.path)
        }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw SystemError("bind", errno: EEXIST, detail: "\(address.path) (exists and is not a socket)")
        }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw SystemError.last("socket") }
        defer { Glibc.close(probe) }
        if address.withSockaddr({ connect(probe, $0, $1) }) == 0 {
            throw SystemError("bind", errno: EADDRINUSE, detail: "\(address.path) (another process is serving it)")
        }
        // ECONNREFUSED: nobody listens — a stale file from a dead process.
        guard unlink(address.path) == 0 || errno == ENOENT else {
            throw SystemError.last("unlink", detail: address.path)
        }
    }
}

/// Connects to a Unix stream socket, blocking until it is connected; returns a non-blocking descriptor. For
/// command-line clients only: on the agent's event loop use `startUnixConnect`.
public func connectUnixSocket(_ address: UnixSocketAddress) throws(SystemError) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError.last("socket") }
    guard address.withSockaddr({ connect(fd, $0, $1) }) == 0 else {
        let e = SystemError.last("connect", detail: address.path)
        close(fd)
        throw e
    }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    return fd
}

/// How a non-blocking connect began.
public enum UnixConnectStart: Equatable, Sendable {
    /// Connected at once (the usual case for a Unix socket whose listener has backlog room).
    case connected(Int32)
    /// Under way: wait until the descriptor is writable, then ask `finishUnixConnect`.
    case inProgress(Int32)
}

/// Starts connecting to a Unix stream socket without ever blocking: the descriptor is non-blocking from creation.
/// A listener whose backlog is full makes a blocking `connect` wait (for as long as the peer does not accept); here
/// it fails at once with EAGAIN, which the caller treats like any refused connection — retry with backoff.
public func startUnixConnect(_ address: UnixSocketAddress) throws(SystemError) -> UnixConnectStart {
    let fd = socket(
        AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError.last("socket") }
    if address.withSockaddr({ connect(fd, $0, $1) }) == 0 { return .connected(fd) }
    let error = SystemError.last("connect", detail: address.path)
    if error.errno == EINPROGRESS { return .inProgress(fd) }
    close(fd)
    if error.errno == EAGAIN {
        throw SystemError("connect", errno: EAGAIN, detail: "\(address.path) (listen backlog full)")
    }
    throw error
}

/// The outcome of an in-progress connect once its descriptor is writable (SO_ERROR). Throws, and closes `fd`, if
/// the connect failed.
public func finishUnixConnect(_ fd: Int32, address: UnixSocketAddress) throws(SystemError) {
    var code: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) != 0 { code = errno }
    guard code != 0 else { return }
    close(fd)
    throw SystemError("connect", errno: code, detail: address.path)
}
