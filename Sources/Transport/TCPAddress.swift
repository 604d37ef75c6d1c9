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
