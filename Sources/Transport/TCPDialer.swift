internal import CLinux
import Glibc

/// A TCP endpoint to dial, `host:port` (`[v6]:port` for IPv6 literals) where the host may be a name resolved later
/// (e.g. istio-agent's `CA_ADDR`); `TCPAddress` is the numeric form a listener binds.
public struct TCPEndpoint: Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case invalid(String)
        public var description: String {
            switch self {
            case .invalid(let text): "\(text): expected host:port (e.g. istiod.istio-system.svc:15012)"
            }
        }
    }

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init(_ text: String) throws(ParseError) {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .invalid(text) }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .invalid(text) }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw .invalid(text) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else { throw .invalid(text) }
        }
        if host.isEmpty { host = "" }
        guard !host.isEmpty, let port = UInt16(portText), port > 0 else { throw .invalid(text) }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether `host` is an IP literal (no lookup needed).
    public var hostIsNumeric: Bool { Self.numericAddress(host, port: port) != nil }

    /// The socket address of an IP literal, or nil for a name.
    static func numericAddress(_ host: String, port: UInt16) -> ResolvedAddress? {
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            return ResolvedAddress(bytes: withUnsafeBytes(of: &v4) { Array($0) }, family: AF_INET)
        }
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
            return ResolvedAddress(bytes: withUnsafeBytes(of: &v6) { Array($0) }, family: AF_INET6)
        }
        return nil
    }
}

/// One socket address from a lookup, as bytes (a C struct does not cross threads or module boundaries).
public struct ResolvedAddress: Sendable, Equatable {
    let bytes: [UInt8]
    let family: Int32
}

/// Resolves host names (blocking `getaddrinfo`: call it off the loop, see `OffLoopWorker`).
public enum HostResolver {
    /// Every TCP address of `address`, in the resolver's order; an IP literal resolves to itself without a lookup.
    public static func resolve(_ address: TCPEndpoint) -> Result<[ResolvedAddress], SystemError> {
        if let numeric = TCPEndpoint.numericAddress(address.host, port: address.port) { return .success([numeric]) }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let status = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard status == 0 else {
            let reason = String(cString: gai_strerror(status))
            return .failure(SystemError("getaddrinfo", errno: 0, detail: "\(address.host): \(reason)"))
        }
        defer { freeaddrinfo(list) }
        var out: [ResolvedAddress] = []
        var cursor = list
        while let entry = cursor {
            if let sockaddr = entry.pointee.ai_addr, entry.pointee.ai_addrlen > 0 {
                let bytes = Array(UnsafeRawBufferPointer(start: sockaddr, count: Int(entry.pointee.ai_addrlen)))
                out.append(ResolvedAddress(bytes: bytes, family: entry.pointee.ai_family))
            }
            cursor = entry.pointee.ai_next
        }
        guard !out.isEmpty else {
            return .failure(SystemError("getaddrinfo", errno: 0, detail: "\(address.host): no addresses"))
        }
        return .success(out)
    }
}

/// Connects a non-blocking TCP socket on the loop: `connect` returns EINPROGRESS, the loop waits for writability
/// and reads `SO_ERROR`; addresses are tried in order; the whole dial gives up after `timeout` seconds. The
/// completion runs once, on the loop, never inside `init` and never after `cancel()`.
public final class TCPDial {
    private let loop: EventLoop
    private var addresses: [ResolvedAddress]
    private var completion: ((Result<Int32, SystemError>) -> Void)?
    private var fd: Int32 = -1
    private var timer: EventLoop.Timer?
    private var lastError: SystemError?
    private let target: String

    public init(
        addresses: [ResolvedAddress], target: String, timeout: Double, loop: EventLoop,
        completion: @escaping (Result<Int32, SystemError>) -> Void
    ) {
        self.loop = loop
        self.addresses = addresses
        self.completion = completion
        self.target = target
        timer = loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.finish(.failure(SystemError("connect", errno: ETIMEDOUT, detail: target)))
        }
        // Never complete inside init.
        loop.schedule(after: 0) { [weak self] in self?.tryNext() }
    }

    deinit { closeSocket() }

    /// Abandons the dial: the socket is closed and the completion never runs.
    public func cancel() {
        completion = nil
        timer?.cancel()
        closeSocket()
    }

    private func closeSocket() {
        guard fd >= 0 else { return }
        loop.deregister(fd: fd)
        Glibc.close(fd)
        fd = -1
    }

    private func tryNext() {
        guard completion != nil else { return }
        closeSocket()
        guard !addresses.isEmpty else {
            finish(.failure(lastError ?? SystemError("connect", errno: EHOSTUNREACH, detail: target)))
            return
        }
        let address = addresses.removeFirst()
        let socketType = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let candidate = socket(address.family, socketType, 0)
        guard candidate >= 0 else {
            lastError = SystemError.last("socket")
            tryNext()
            return
        }
        fd = candidate
        let result = address.bytes.withUnsafeBytes { raw in
            connect(candidate, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
        if result == 0 {
            connected()
            return
        }
        guard errno == EINPROGRESS else {
            lastError = SystemError.last("connect", detail: target)
            tryNext()
            return
        }
        do {
            try loop.register(fd: candidate, events: .writable) { [weak self] _ in self?.writable() }
        } catch {
            lastError = error
            tryNext()
        }
    }

    private func writable() {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = Glibc.errno }
        if error != 0 {
            lastError = SystemError("connect", errno: error, detail: target)
            tryNext()
            return
        }
        connected()
    }

    private func connected() {
        loop.deregister(fd: fd)
        // TCP_NODELAY: gRPC requests are small and latency-bound (istio-agent's grpc-go sets it too).
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let connectedFD = fd
        fd = -1
        finish(.success(connectedFD))
    }

    private func finish(_ result: Result<Int32, SystemError>) {
        timer?.cancel()
        guard let completion else {
            if case .success(let fd) = result { Glibc.close(fd) }
            return
        }
        self.completion = nil
        closeSocket()
        completion(result)
    }
}
