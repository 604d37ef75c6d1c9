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
