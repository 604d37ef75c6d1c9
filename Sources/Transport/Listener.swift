internal import CLinux
import Glibc

/// A listening, non-blocking stream socket on the event loop, Unix or TCP: the one accept loop of the agent (the SDS
/// socket and the status listener). Accepted descriptors are non-blocking and close-on-exec.
///
/// A Unix socket file is created with `mode` (0600 by default) — no window in which it is more open — and removed
/// again when the listener closes; a file left by a dead process is replaced, one a live process still answers on
/// is an error (two agents must never fight over one socket).
///
/// Accepting never spins: when `accept` fails for want of a resource (EMFILE/ENFILE: no descriptor left;
/// ENOBUFS/ENOMEM) or for any reason not tied to one connection, the waiting connections stay in the kernel's backlog
/// and the listener leaves the poll set — on a level-triggered epoll it would otherwise be reported ready, fail again
/// and burn a core. It comes back on `resume()` (the owner calls it when it closes a connection, freeing a
/// descriptor) or after `resourceRetryDelay`, whichever is first; if going back into the poll set fails, it stays
/// paused and retries, so a listener never silently stops for good. The owner may also `pause(for:)` on purpose.
///
/// ```
///   ┌───────────┐  accept failed / pause(for:)  ┌────────┐
///   │ accepting │ ─────────────────────────────► │ paused │ (not in the poll set)
///   └───────────┘ ◄───────────────────────────── └────────┘
///                   resume() or retry timer
/// ```
public final class Listener {
    /// How long a paused listener waits before trying `accept` again when no connection has closed meanwhile (the
    /// shortage may be another process's): often enough to recover within a fraction of a second, rare enough that
    /// a lasting shortage costs a few failed syscalls per second.
    public static let resourceRetryDelay = 0.25

    /// What the listener is bound to (for TCP, with the kernel's port when port 0 was asked for).
    public enum BoundAddress: Equatable, Sendable, CustomStringConvertible {
        case unix(UnixSocketAddress)
        case tcp(TCPAddress)

        public var description: String {
            switch self {
            case .unix(let address): address.path
            case .tcp(let address): address.description
            }
        }
    }

    public let address: BoundAddress
    public private(set) var fd: Int32
    private let loop: EventLoop
    private let onAccept: (Int32) -> Void
    /// Called each time accepting pauses on an error, with the error that paused it.
    public var onPause: ((SystemError) -> Void)?
    public private(set) var isPaused = false
    private var retryTimer: EventLoop.Timer?

    /// Binds a Unix socket file with `mode` and listens.
    public convenience init(
        unix address: UnixSocketAddress, mode: UInt32 = 0o600, backlog: Int32 = 1024, loop: EventLoop,
        onAccept: @escaping (Int32) -> Void
    ) throws(SystemError) {
        try Self.removeStaleSocket(at: address)
        let fd = try Self.streamSocket(family: AF_UNIX)
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
        try self.init(fd: fd, backlog: backlog, address: .unix(address), loop: loop, onAccept: onAccept)
    }

    /// Binds a TCP address (`SO_REUSEADDR`: a restarted agent must rebind at once, not wait out the old
    /// connections' TIME_WAIT) and listens.
    public convenience init(
        tcp address: TCPAddress, backlog: Int32 = 64, loop: EventLoop, onAccept: @escaping (Int32) -> Void
    ) throws(SystemError) {
        let fd = try Self.streamSocket(family: address.isIPv6 ? AF_INET6 : AF_INET)
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard (address.withSockaddr { bind(fd, $0, $1) } ?? -1) == 0 else {
            let e = SystemError.last("bind", detail: address.description)
            Glibc.close(fd)
            throw e
        }
        try self.init(
            fd: fd, backlog: backlog, address: .tcp(Self.localAddress(fd, asked: address)), loop: loop,
            onAccept: onAccept)
    }

    /// Listens on the bound `fd` (closed, and a socket file removed, on failure).
    private init(
        fd: Int32, backlog: Int32, address: BoundAddress, loop: EventLoop, onAccept: @escaping (Int32) -> Void
    ) throws(SystemError) {
        self.fd = fd
        self.address = address
        self.loop = loop
        self.onAccept = onAccept
        do throws(SystemError) {
            guard listen(fd, backlog) == 0 else { throw SystemError.last("listen", detail: address.description) }
            try watch()
        } catch {
            Glibc.close(fd)
            if case .unix(let unix) = address { unlink(unix.path) }
            self.fd = -1
            throw error
        }
    }

    private static func streamSocket(family: Int32) throws(SystemError) -> Int32 {
        let fd = socket(
            family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.last("socket") }
        return fd
    }

    deinit { close() }

    /// The TCP address bound (nil for a Unix socket).
    public var boundTCPAddress: TCPAddress? {
        if case .tcp(let address) = address { return address }
        return nil
    }

    /// Stops accepting (and removes a Unix socket file). Idempotent.
    public func close() {
        guard fd >= 0 else { return }
        retryTimer?.cancel()
        retryTimer = nil
        if !isPaused { loop.deregister(fd: fd) }
        Glibc.close(fd)
        fd = -1
        if case .unix(let unix) = address { unlink(unix.path) }
    }

    /// Stops accepting for `seconds` (or until `resume()`); new connections wait in the kernel's backlog meanwhile
    /// (their bytes arrive in their own buffers, so an owner can tell a client that has spoken from one that has not
    /// when it accepts them).
    public func pause(for seconds: Double) {
        guard !isPaused, fd >= 0 else { return }
        isPaused = true
        loop.deregister(fd: fd)
        retryTimer = loop.schedule(after: seconds) { [weak self] in self?.resume() }
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
        while fd >= 0, !isPaused {
            let client = sds_accept_nonblocking(fd)
            if client >= 0 {
                onAccept(client)
                continue
            }
            let error = SystemError.last("accept", detail: address.description)
            switch error.errno {
            case EAGAIN, EWOULDBLOCK:
                return  // drained
            case EINTR, ECONNABORTED, EPROTO:
                continue  // that one connection is gone; the next may be fine
            default:
                // EMFILE/ENFILE/ENOBUFS/ENOMEM, or anything unexpected: retrying now would fail the same way.
                pauseOnError(error)
                return
            }
        }
    }

    private func pauseOnError(_ error: SystemError) {
        guard !isPaused, fd >= 0 else { return }
        pause(for: Self.resourceRetryDelay)
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

    private static func localAddress(_ fd: Int32, asked: TCPAddress) -> TCPAddress {
        guard asked.port == 0 else { return asked }
        var storage = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return asked }
        // sin_port and sin6_port sit at the same offset (right after the family).
        let port = UInt16(bigEndian: storage.sin6_port)
        let text = asked.isIPv6 ? "[\(asked.host)]:\(port)" : "\(asked.host):\(port)"
        return (try? TCPAddress(text)) ?? asked
    }
}
