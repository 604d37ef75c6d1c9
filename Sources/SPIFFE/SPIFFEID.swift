/// Why a string is not a SPIFFE ID or trust domain. Each case is one rule of the SPIFFE ID spec
/// (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md); the description names it.
public enum SPIFFEIDError: Error, Sendable, Hashable, CustomStringConvertible {
    case empty
    case tooLong(bytes: Int)
    case wrongScheme
    case missingTrustDomain
    case trustDomainTooLong(bytes: Int)
    case trustDomainHasPort
    case trustDomainHasUserinfo
    case badTrustDomainCharacter(Character)
    case hasQueryOrFragment
    case emptyPathSegment
    case trailingSlash
    case dotPathSegment
    case badPathCharacter(Character)

    public var description: String {
        switch self {
        case .empty: "SPIFFE ID is empty"
        case .tooLong(let bytes): "SPIFFE ID is \(bytes) bytes, the maximum is 2048"
        case .wrongScheme: "scheme must be \"spiffe://\" (lower case)"
        case .missingTrustDomain: "trust domain is missing"
        case .trustDomainTooLong(let bytes):
            "trust domain is \(bytes) bytes, the maximum is \(TrustDomain.maxBytes) (its ID, spiffe://<name>, must fit "
                + "in 2048)"
        case .trustDomainHasPort: "trust domain must not contain a port"
        case .trustDomainHasUserinfo: "trust domain must not contain userinfo (\"@\")"
        case .badTrustDomainCharacter(let c):
            "trust domain characters are limited to lower-case letters, digits, dots, dashes and underscores "
                + "(found \"\(c)\")"
        case .hasQueryOrFragment: "SPIFFE ID must not contain a query or fragment"
        case .emptyPathSegment: "path segments must not be empty"
        case .trailingSlash: "path must not end with a slash"
        case .dotPathSegment: "path segments must not be \".\" or \"..\""
        case .badPathCharacter(let c):
            "path segment characters are limited to letters, digits, dots, dashes and underscores (found \"\(c)\")"
        }
    }
}

/// A SPIFFE trust domain name, e.g. `example.org` (validated: lower-case letters, digits, `.`, `-`, `_`).
public struct TrustDomain: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let name: String

    /// Accepts a bare name (`example.org`) or its SPIFFE ID form (`spiffe://example.org`).
    public init(_ nameOrID: String) throws {
        if nameOrID.hasPrefix("spiffe://") {
            let id = try SPIFFEID(parsing: nameOrID)
            self = id.trustDomain
            return
        }
        try TrustDomain.validate(nameOrID)
        self.name = nameOrID
    }

    private init(validated name: String) {
        self.name = name
    }

    /// The longest name whose ID (`spiffe://<name>`) is still a SPIFFE ID: a name accepted bare must also be
    /// accepted in its ID form, or a flag value would parse and its ID would not (found by fuzzing).
    public static let maxBytes = 2048 - "spiffe://".utf8.count

    static func validate(_ name: String) throws {
        guard !name.isEmpty else { throw SPIFFEIDError.missingTrustDomain }
        guard name.utf8.count <= maxBytes else { throw SPIFFEIDError.trustDomainTooLong(bytes: name.utf8.count) }
        for byte in name.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
                continue
            case UInt8(ascii: ":"): throw SPIFFEIDError.trustDomainHasPort
            case UInt8(ascii: "@"): throw SPIFFEIDError.trustDomainHasUserinfo
            default: throw SPIFFEIDError.badTrustDomainCharacter(TrustDomain.character(in: name, at: byte))
            }
        }
    }

    static func character(in string: String, at byte: UInt8) -> Character {
        if byte < 0x80 { return Character(Unicode.Scalar(byte)) }
        return string.first { !$0.isASCII } ?? "?"
    }

    /// `spiffe://<name>`: the trust domain's own ID (also the SDS secret name of its bundle, SPIRE style).
    public var idString: String { "spiffe://" + name }

    public var description: String { name }

    public static func < (lhs: TrustDomain, rhs: TrustDomain) -> Bool { lhs.name < rhs.name }

    static func unchecked(_ name: String) -> TrustDomain { TrustDomain(validated: name) }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain><path>`, path empty or `/seg/seg...`.
public struct SPIFFEID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let trustDomain: TrustDomain
    /// Empty, or `/`-prefixed segments without a trailing slash.
    public let path: String

    /// Parses and validates a SPIFFE ID string.
    public init(parsing string: String) throws {
        guard !string.isEmpty else { throw SPIFFEIDError.empty }
        guard string.utf8.count <= 2048 else { throw SPIFFEIDError.tooLong(bytes: string.utf8.count) }
        let scheme = "spiffe://"
        guard string.hasPrefix(scheme) else { throw SPIFFEIDError.wrongScheme }
        let rest = string.dropFirst(scheme.count)
        if rest.contains("?") || rest.contains("#") { throw SPIFFEIDError.hasQueryOrFragment }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let domain = String(rest[..<slash])
        try TrustDomain.validate(domain)
        let path = String(rest[slash...])
        try SPIFFEID.validatePath(path)
        self.trustDomain = TrustDomain.unchecked(domain)
        self.path = path
    }

    /// Builds `spiffe://<trustDomain><path>`; `path` is empty or starts with `/`.
    public init(trustDomain: TrustDomain, path: String) throws {
        try self.init(parsing: trustDomain.idString + path)
    }

    static func validatePath(_ path: String) throws {
        guard !path.isEmpty else { return }
        // The caller split at the first "/", so the path starts with one.
        let segments = path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst()
        for (index, segment) in segments.enumerated() {
            if segment.isEmpty {
                throw index == segments.count - 1 ? SPIFFEIDError.trailingSlash : SPIFFEIDError.emptyPathSegment
            }
            if segment.elementsEqual(".".utf8) || segment.elementsEqual("..".utf8) {
                throw SPIFFEIDError.dotPathSegment
            }
            for byte in segment {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
                    continue
                default: throw SPIFFEIDError.badPathCharacter(TrustDomain.character(in: path, at: byte))
                }
            }
        }
    }

    /// The URI form, `spiffe://td/path`.
    public var uri: String { trustDomain.idString + path }

    public var description: String { uri }

    public func isMember(of trustDomain: TrustDomain) -> Bool { self.trustDomain == trustDomain }

    public static func < (lhs: SPIFFEID, rhs: SPIFFEID) -> Bool { lhs.uri < rhs.uri }
}
