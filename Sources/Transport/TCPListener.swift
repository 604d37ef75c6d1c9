internal import CLinux
import Glibc

/// A numeric TCP address, `HOST:PORT`: an IPv4 dotted quad or a bracketed IPv6 address (`[::1]:15095`); an empty
/// host (`:15095`) or `localhost` is the IPv4 loopback. No name resolution: it would block the caller, and a
/// status address is configured, not discovered.
public struct TCPAddress: Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    let isIPv6: Bool

    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let description: String
    }

    public init(_ text: String) throws(ParseError) {
        guard let colon = text.lastIndex(of: ":") else {
            throw ParseError(description: "'\(text)' is not HOST:PORT (e.g. 127.0.0.1:15095)")
        }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = UInt16(portText), String(port) == portText else {
            throw ParseError(description: "'\(text)': the port must be a number from 0 to 65535")
        }
        var ipv6 = false
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            ipv6 = true
        } else if host.isEmpty || host == "localhost" {
            host = "127.0.0.1"
        }
        self.host = host
        self.port = port
        self.isIPv6 = ipv6
        guard withSockaddr({ _, _ in true }) != nil else {
            throw ParseError(
                description: "'\(text)': the host must be a numeric IPv4 address or a bracketed IPv6 address")
        }
    }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Calls `body` with the socket address; nil when the host is not a numeric address.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
        if isIPv6 {
            var addr = sockaddr_in6()
            addr.sin6_family = sa_family_t(AF_INET6)
            addr.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &addr.sin6_addr) == 1 else { return nil }
            return withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return nil }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}

/// A listening, non-blocking TCP socket on the event loop; accepted descriptors are non-blocking and close-on-exec.
///
/// When the process runs out of descriptors (EMFILE/ENFILE) `accept` fails while the connection stays queued, so a
/// level-triggered listener would wake the loop forever: the listener leaves the poll set instead and returns
/// after `descriptorBackoff`.
public final class TCPListener {
    public private(set) var fd: Int32
    /// The bound address (with the kernel's port when port 0 was asked for).
    public let boundAddress: TCPAddress
    private let loop: EventLoop
    private let onAccept: (Int32) -> Void
    private var backoffTimer: EventLoop.Timer?
    /// Why 100 ms: long enough that a descriptor-starved process does not spin, short enough that service resumes
    /// promptly once a descriptor is freed.
    static let descriptorBackoff = 0.1

    public init(address: TCPAddress, backlog: Int32 = 64, loop: EventLoop, onAccept: @escaping (Int32) -> Void)
        throws(SystemError)
    {
        self.loop = loop
        self.onAccept = onAccept
        let family = address.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(
            family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.last("socket") }
        // A restarted agent must rebind at once, not wait out the old connections' TIME_WAIT.
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockaddr { bind(fd, $0, $1) } ?? -1
        guard bound == 0 else {
            let e = SystemError.last("bind", detail: address.description)
            Glibc.close(fd)
            throw e
        }
        guard listen(fd, backlog) == 0 else {
            let e = SystemError.last("listen", detail: address.description)
            Glibc.close(fd)
            throw e
        }
        self.fd = fd
        self.boundAddress = Self.localAddress(fd, asked: address)
        do {
            try loop.register(fd: fd, events: .readable) { [weak self] _ in self?.acceptAll() }
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit { close() }

    /// Stops accepting. Idempotent.
    public func close() {
        guard fd >= 0 else { return }
        backoffTimer?.cancel()
        loop.deregister(fd: fd)
        Glibc.close(fd)
        fd = -1
    }

    /// Stops accepting for `seconds`; new connections wait in the kernel's backlog meanwhile (their bytes arrive in
    /// their own buffers, so a caller can tell a client that has spoken from one that has not when it accepts them).
    public func pause(for seconds: Double) {
        guard fd >= 0, backoffTimer == nil else { return }
        paused = true
        loop.deregister(fd: fd)
        backoffTimer = loop.schedule(after: seconds) { [weak self] in
            guard let self, self.fd >= 0 else { return }
            self.backoffTimer = nil
            self.paused = false
            try? self.loop.register(fd: self.fd, events: .readable) { [weak self] _ in self?.acceptAll() }
        }
    }

    private var paused = false

    private func acceptAll() {
        while fd >= 0, !paused {
            let client = sds_accept_nonblocking(fd)
            if client >= 0 {
                onAccept(client)
                continue
            }
            switch errno {
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors: leave the poll set (a level-triggered listener would spin) and come back later.
                pause(for: Self.descriptorBackoff)
                return
            case EINTR, ECONNABORTED, EPROTO:
                continue  // that one connection is gone; the next may be fine
            default:
                return  // EAGAIN: drained
            }
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
