import Glibc
public import SPIFFE

/// A SPIFFE federation bundle endpoint as `--federate-with <td>=<url>` gives it: `https://host[:port]/path[?query]`,
/// with `#spiffe://<td>/<path>` appended for the `https_spiffe` profile (the endpoint server's SPIFFE ID).
///
/// Only https: the SPIFFE Federation spec serves bundles over TLS in both profiles, and a bundle fetched in the
/// clear would let anyone on the path choose whom the agent trusts. Userinfo is refused (credentials on a command
/// line end up in logs and `ps`); a query is kept and sent, since some endpoints select a domain with it.
public struct BundleEndpointURL: Sendable, Hashable, CustomStringConvertible {
    /// Lower-cased host name, IPv4 address, or IPv6 address without brackets.
    public let host: String
    public let port: UInt16
    /// The request target: the path (`/` when the URL has none) and `?query` when there is one.
    public let requestTarget: String
    /// The endpoint server's SPIFFE ID (the fragment): present for `https_spiffe`, nil for `https_web`.
    public let endpointID: SPIFFEID?

    /// Why 4 KiB: a URL with a host (≤ 253), a path and a SPIFFE ID (≤ 2048) fits; more is not a flag value.
    public static let maxBytes = 4096

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    public init(parsing text: String) throws(ParseError) {
        guard text.utf8.count <= Self.maxBytes else {
            throw ParseError("bundle endpoint URL is \(text.utf8.count) bytes, at most \(Self.maxBytes)")
        }
        // Printable ASCII only: a URL on a command line has no raw spaces, controls or UTF-8 (IRIs are not URLs).
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ParseError(
                "bundle endpoint URL must be non-empty printable ASCII without spaces: \(Self.shown(text))")
        }
        let bytes = Array(text.utf8)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon > 0,
            bytes[..<colon].allSatisfy(isAlphanumeric), bytes[colon...].starts(with: "://".utf8)
        else {
            throw ParseError("bundle endpoint URL \(Self.shown(text)) is not https://host[:port]/path")
        }
        let scheme = String(decoding: bytes[..<colon], as: UTF8.self).lowercased()
        guard scheme == "https" else {
            throw ParseError("bundle endpoint URL scheme must be https (SPIFFE federation is over TLS), not \(scheme)")
        }
        var rest = bytes[(colon + 3)...]
        // The fragment first: a SPIFFE ID contains "/" and ":", which would otherwise look like path and port.
        var fragment: String?
        if let hash = rest.firstIndex(of: UInt8(ascii: "#")) {
            fragment = String(decoding: rest[(hash + 1)...], as: UTF8.self)
            rest = rest[..<hash]
        }
        let authorityEnd = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        let target = rest[authorityEnd...]
        guard !authority.contains(UInt8(ascii: "@")) else {
            throw ParseError("bundle endpoint URL must not carry userinfo (user@): credentials belong in no URL")
        }
        (host, port) = try Self.parseAuthority(authority)
        var requestTarget = String(decoding: target, as: UTF8.self)
        if requestTarget.hasPrefix("?") || requestTarget.isEmpty { requestTarget = "/" + requestTarget }
        self.requestTarget = requestTarget
        if let fragment {
            do {
                endpointID = try SPIFFEID(parsing: fragment)
            } catch {
                throw ParseError("bundle endpoint URL fragment \(Self.shown(fragment)) is not a SPIFFE ID: \(error)")
            }
        } else {
            endpointID = nil
        }
    }

    private static func parseAuthority(_ authority: ArraySlice<UInt8>) throws(ParseError) -> (String, UInt16) {
        var hostBytes: ArraySlice<UInt8>
        var portBytes: ArraySlice<UInt8>?
        if authority.first == UInt8(ascii: "[") {
            guard let close = authority.firstIndex(of: UInt8(ascii: "]")) else {
                throw ParseError("bundle endpoint URL has an unclosed [IPv6] host")
            }
            hostBytes = authority[(authority.startIndex + 1)..<close]
            let after = authority[(close + 1)...]
            if !after.isEmpty {
                guard after.first == UInt8(ascii: ":") else {
                    throw ParseError("bundle endpoint URL has bytes after the [IPv6] host that are not a port")
                }
                portBytes = after.dropFirst()
            }
            // Brackets hold an IPv6 address and nothing else (RFC 3986 §3.2.2; no zone IDs, no IPvFuture).
            var address = in6_addr()
            guard hostBytes.count <= 45, inet_pton(AF_INET6, String(decoding: hostBytes, as: UTF8.self), &address) == 1
            else { throw ParseError("bundle endpoint URL has an invalid IPv6 host") }
        } else {
            if let colon = authority.firstIndex(of: UInt8(ascii: ":")) {
                hostBytes = authority[..<colon]
                portBytes = authority[(colon + 1)...]
            } else {
                hostBytes = authority
            }
            guard !hostBytes.isEmpty else { throw ParseError("bundle endpoint URL has an empty host") }
            // A DNS name or an IPv4 address: letters, digits, "-", "." (and "_", which some internal names use).
            guard hostBytes.count <= 253,
                hostBytes.allSatisfy({
                    isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
                })
            else {
                throw ParseError(
                    "bundle endpoint URL host \(shown(String(decoding: hostBytes, as: UTF8.self))) is not a DNS name "
                        + "or an IP address")
            }
        }
        var port: UInt16 = 443
        if let portBytes {
            guard !portBytes.isEmpty, portBytes.count <= 5, portBytes.allSatisfy(isDigit),
                let value = UInt16(String(decoding: portBytes, as: UTF8.self)), value > 0
            else {
                throw ParseError(
                    "bundle endpoint URL port \(shown(String(decoding: portBytes, as: UTF8.self))) is not 1-65535")
            }
            port = value
        }
        return (String(decoding: hostBytes, as: UTF8.self).lowercased(), port)
    }

    /// The `Host` header: the port only when it is not https's 443, an IPv6 address in brackets (RFC 9110 §7.2).
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == 443 ? name : "\(name):\(port)"
    }

    public var description: String {
        "https://\(hostHeader)\(requestTarget)" + (endpointID.map { "#\($0.uri)" } ?? "")
    }

    /// Text for an error line: bounded, so a hostile flag value cannot flood the log.
    static func shown(_ text: String) -> String {
        text.utf8.count <= 128 ? "\"\(text)\"" : "\"\(String(decoding: text.utf8.prefix(128), as: UTF8.self))…\""
    }
}

private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
private func isAlphanumeric(_ byte: UInt8) -> Bool {
    isDigit(byte) || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "z"))
}
