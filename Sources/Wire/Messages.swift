// Swift value types for the protobuf messages sds-agent speaks. They mirror the wire-compatible subsets in
// Protos/ (same packages, names and field numbers as upstream). Encoding and decoding go through protobuf-c
// (see Codec.swift and Conformances.swift); no C type appears here.

/// A message that can be packed to and unpacked from protobuf bytes.
///
/// Decoding never traps: truncated, malformed or oversized input throws `WireError`. Fields the Swift type
/// does not model are dropped, except `Node`, whose original bytes are kept (see `Node.rawBytes`).
public protocol WireMessage: Sendable, Equatable {
    /// The fully-qualified protobuf name, e.g. `envoy.extensions.transport_sockets.tls.v3.Secret`.
    static var protoName: String { get }
    /// Parses protobuf bytes, rejecting input longer than `limit` bytes before looking at it.
    /// The buffer is only read during the call.
    init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError)
    /// Serializes to protobuf bytes. Deterministic: map entries are written in key order.
    func wireBytes() -> [UInt8]
}

extension WireMessage {
    /// `type.googleapis.com/<protoName>`, the type URL used in `Any` and xDS `type_url`.
    public static var typeURL: String { "type.googleapis.com/" + protoName }

    /// The largest input decoded by default: 4 MiB, gRPC's default maximum receive message size.
    public static var defaultDecodeLimit: Int { 4 << 20 }

    /// Parses protobuf bytes. Throws `WireError` for truncated, malformed or oversized input; never traps.
    public init(wireBytes: [UInt8], limit: Int = Self.defaultDecodeLimit) throws(WireError) {
        // `withUnsafeBytes` only rethrows untyped errors: carry the typed one out in a Result.
        self = try wireBytes.withUnsafeBytes { buffer in
            Result { () throws(WireError) -> Self in try Self(wireBuffer: buffer, limit: limit) }
        }.get()
    }

    /// Parses protobuf bytes from a slice (e.g. a gRPC frame's payload) without copying them first.
    public init(wireBytes: ArraySlice<UInt8>, limit: Int = Self.defaultDecodeLimit) throws(WireError) {
        // `withUnsafeBytes` only rethrows untyped errors: carry the typed one out in a Result.
        self = try wireBytes.withUnsafeBytes { buffer in
            Result { () throws(WireError) -> Self in try Self(wireBuffer: buffer, limit: limit) }
        }.get()
    }
}

/// Why bytes could not be decoded.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// protobuf-c rejected the bytes (truncated, wrong wire type, bad length, invalid UTF-8 in a string ...).
    case malformed(message: String)
    /// The input is larger than the decoder accepts.
    case oversize(bytes: Int, limit: Int)
    /// An `Any` held a different type than expected.
    case unexpectedType(expected: String, actual: String)

    public var description: String {
        switch self {
        case .malformed(let message): return "malformed \(message)"
        case .oversize(let bytes, let limit): return "message of \(bytes) bytes exceeds the \(limit)-byte limit"
        case .unexpectedType(let expected, let actual): return "expected Any of \(expected), got \(actual)"
        }
    }
}

// MARK: - google.protobuf / google.rpc

/// `google.protobuf.Any`.
public struct AnyMessage: Sendable, Equatable, Hashable {
    public var typeURL: String
    public var value: [UInt8]
    public init(typeURL: String, value: [UInt8]) {
        self.typeURL = typeURL
        self.value = value
    }

    /// Packs `message` with its `type.googleapis.com/...` type URL.
    public init<M: WireMessage>(packing message: M) {
        self.init(typeURL: M.typeURL, value: message.wireBytes())
    }

    /// The message name the type URL refers to: everything after its last `/`.
    public var typeName: Substring {
        guard let slash = typeURL.lastIndex(of: "/") else { return typeURL[...] }
        return typeURL[typeURL.index(after: slash)...]
    }

    /// Whether this `Any` holds an `M` (the type URL's last path segment is `M.protoName`).
    public func holds<M: WireMessage>(_ type: M.Type) -> Bool { typeName == M.protoName }

    /// Decodes the held message as `M`; throws `.unexpectedType` when the type URL names another type.
    public func unpack<M: WireMessage>(
        _ type: M.Type = M.self, limit: Int = M.defaultDecodeLimit
    ) throws(WireError) -> M {
        guard holds(M.self) else { throw .unexpectedType(expected: M.typeURL, actual: typeURL) }
        return try M(wireBytes: value, limit: limit)
    }
}

/// `google.rpc.Status` (as carried in xDS `error_detail`).
public struct RPCStatus: Sendable, Equatable {
    public var code: Int32
    public var message: String
    public var details: [AnyMessage]
    public init(code: Int32, message: String, details: [AnyMessage] = []) {
        self.code = code
        self.message = message
        self.details = details
    }
}

// MARK: - envoy.config.core.v3

/// `envoy.config.core.v3.Node`. Envoy sends ~500 extensions and a metadata Struct; we decode the few fields
/// we use and keep the node's original bytes in `rawBytes` so re-encoding loses nothing.
public struct Node: Sendable, Equatable {
    public var id: String
    public var cluster: String
    public var userAgentName: String
    /// `user_agent_build_version.version` rendered as `major.minor.patch`, when present.
    public var userAgentVersion: String
    /// `metadata.disable_spiffe_cert_validation: true` (SPIRE's switch): this Envoy wants the all-bundles secret as a
    /// plain `trusted_ca`, not as the SPIFFE certificate validator config.
    public var disableSPIFFECertValidation: Bool
    /// The node exactly as received (empty for a node built in Swift). When non-empty it is what gets encoded.
    public var rawBytes: [UInt8]
    public init(
        id: String = "", cluster: String = "", userAgentName: String = "", userAgentVersion: String = "",
        disableSPIFFECertValidation: Bool = false, rawBytes: [UInt8] = []
    ) {
        self.id = id
        self.cluster = cluster
        self.userAgentName = userAgentName
        self.userAgentVersion = userAgentVersion
        self.disableSPIFFECertValidation = disableSPIFFECertValidation
        // Metadata is not modelled: a node built here with the switch carries it in bytes of its own.
        self.rawBytes =
            rawBytes.isEmpty && disableSPIFFECertValidation
            ? Self.encodedWithSwitch(id: id, cluster: cluster, userAgentName: userAgentName, version: userAgentVersion)
            : rawBytes
    }

    /// `id`, `cluster`, `metadata {disable_spiffe_cert_validation: true}`, `user_agent_name`, `user_agent_version`.
    private static func encodedWithSwitch(id: String, cluster: String, userAgentName: String, version: String)
        -> [UInt8]
    {
        func varint(_ value: Int) -> [UInt8] {
            var value = UInt64(value)
            var out: [UInt8] = []
            while value >= 0x80 {
                out.append(UInt8(value & 0x7F) | 0x80)
                value >>= 7
            }
            return out + [UInt8(value)]
        }
        func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] {
            varint(number << 3 | 2) + varint(payload.count) + payload
        }
        let value = [UInt8(4 << 3), 1]  // Value.bool_value = true
        let entry = field(1, Array(disableSPIFFECertValidationKey.utf8)) + field(2, value)
        var out: [UInt8] = []
        if !id.isEmpty { out += field(1, Array(id.utf8)) }
        if !cluster.isEmpty { out += field(2, Array(cluster.utf8)) }
        out += field(3, field(1, entry))
        if !userAgentName.isEmpty { out += field(6, Array(userAgentName.utf8)) }
        if !version.isEmpty { out += field(7, Array(version.utf8)) }
        return out
    }

    /// The metadata key SPIRE reads for `disableSPIFFECertValidation`.
    public static let disableSPIFFECertValidationKey = "disable_spiffe_cert_validation"
}

/// `envoy.config.core.v3.DataSource`.
public enum DataSource: Sendable, Equatable {
    case filename(String)
    case inlineBytes([UInt8])
    case inlineString(String)
    case environmentVariable(String)

    /// The inline content as bytes (nil for file and environment sources).
    public var inlineContent: [UInt8]? {
        switch self {
        case .inlineBytes(let b): return b
        case .inlineString(let s): return Array(s.utf8)
        case .filename, .environmentVariable: return nil
        }
    }
}

/// `envoy.config.core.v3.TypedExtensionConfig`.
public struct TypedExtensionConfig: Sendable, Equatable {
    public var name: String
    public var typedConfig: AnyMessage
    public init(name: String, typedConfig: AnyMessage) {
        self.name = name
        self.typedConfig = typedConfig
    }
}

// MARK: - envoy.service.discovery.v3

/// `envoy.service.discovery.v3.DiscoveryRequest` (SotW).
public struct DiscoveryRequest: Sendable, Equatable {
    public var versionInfo: String
    public var node: Node?
    public var resourceNames: [String]
    public var typeURL: String
    public var responseNonce: String
    public var errorDetail: RPCStatus?
    public init(
        versionInfo: String = "", node: Node? = nil, resourceNames: [String] = [], typeURL: String = "",
        responseNonce: String = "", errorDetail: RPCStatus? = nil
    ) {
        self.versionInfo = versionInfo
        self.node = node
        self.resourceNames = resourceNames
        self.typeURL = typeURL
        self.responseNonce = responseNonce
        self.errorDetail = errorDetail
    }
}

/// `envoy.service.discovery.v3.DiscoveryResponse` (SotW).
public struct DiscoveryResponse: Sendable, Equatable {
    public var versionInfo: String
    public var resources: [AnyMessage]
    public var typeURL: String
    public var nonce: String
    public init(versionInfo: String = "", resources: [AnyMessage] = [], typeURL: String = "", nonce: String = "") {
        self.versionInfo = versionInfo
        self.resources = resources
        self.typeURL = typeURL
        self.nonce = nonce
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryRequest`.
public struct DeltaDiscoveryRequest: Sendable, Equatable {
    public var node: Node?
    public var typeURL: String
    public var resourceNamesSubscribe: [String]
    public var resourceNamesUnsubscribe: [String]
    /// Per-resource versions the client already holds (sent on reconnect).
    public var initialResourceVersions: [String: String]
    public var responseNonce: String
    public var errorDetail: RPCStatus?
    public init(
        node: Node? = nil, typeURL: String = "", resourceNamesSubscribe: [String] = [],
        resourceNamesUnsubscribe: [String] = [], initialResourceVersions: [String: String] = [:],
        responseNonce: String = "", errorDetail: RPCStatus? = nil
    ) {
        self.node = node
        self.typeURL = typeURL
        self.resourceNamesSubscribe = resourceNamesSubscribe
        self.resourceNamesUnsubscribe = resourceNamesUnsubscribe
        self.initialResourceVersions = initialResourceVersions
        self.responseNonce = responseNonce
        self.errorDetail = errorDetail
    }
}

/// `envoy.service.discovery.v3.Resource`.
public struct Resource: Sendable, Equatable {
    public var name: String
    public var version: String
    public var resource: AnyMessage?
    public init(name: String, version: String, resource: AnyMessage?) {
        self.name = name
        self.version = version
        self.resource = resource
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
public struct DeltaDiscoveryResponse: Sendable, Equatable {
    public var systemVersionInfo: String
    public var resources: [Resource]
    public var typeURL: String
    public var removedResources: [String]
    public var nonce: String
    public init(
        systemVersionInfo: String = "", resources: [Resource] = [], typeURL: String = "",
        removedResources: [String] = [], nonce: String = ""
    ) {
        self.systemVersionInfo = systemVersionInfo
        self.resources = resources
        self.typeURL = typeURL
        self.removedResources = removedResources
        self.nonce = nonce
    }
}

// MARK: - envoy.extensions.transport_sockets.tls.v3

/// `envoy.extensions.transport_sockets.tls.v3.TlsCertificate`.
public struct TLSCertificate: Sendable, Equatable {
    public var certificateChain: DataSource
    public var privateKey: DataSource
    public init(certificateChain: DataSource, privateKey: DataSource) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }
}

/// `envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext`.
public struct CertificateValidationContext: Sendable, Equatable {
    public var trustedCA: DataSource?
    /// `custom_validator_config`, e.g. `envoy.tls.cert_validator.spiffe` with a `SPIFFECertValidatorConfig`.
    public var customValidatorConfig: TypedExtensionConfig?
    /// `crl`: PEM certificate revocation lists.
    public var crl: DataSource?
    /// `only_verify_leaf_cert_crl`.
    public var onlyVerifyLeafCertCRL: Bool
    public init(
        trustedCA: DataSource? = nil, customValidatorConfig: TypedExtensionConfig? = nil, crl: DataSource? = nil,
        onlyVerifyLeafCertCRL: Bool = false
    ) {
        self.trustedCA = trustedCA
        self.customValidatorConfig = customValidatorConfig
        self.crl = crl
        self.onlyVerifyLeafCertCRL = onlyVerifyLeafCertCRL
    }
}

/// `envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig`.
public struct SPIFFECertValidatorConfig: Sendable, Equatable {
    public struct TrustDomain: Sendable, Equatable {
        public var name: String
        public var trustBundle: DataSource
        public init(name: String, trustBundle: DataSource) {
            self.name = name
            self.trustBundle = trustBundle
        }
    }
    public var trustDomains: [TrustDomain]
    /// `trust_bundles`: one SPIFFE bundle document (JSON) for all domains, instead of `trustDomains`.
    public var trustBundles: DataSource?
    public init(trustDomains: [TrustDomain], trustBundles: DataSource? = nil) {
        self.trustDomains = trustDomains
        self.trustBundles = trustBundles
    }
}

/// `envoy.extensions.transport_sockets.tls.v3.Secret`.
public struct Secret: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case tlsCertificate(TLSCertificate)
        case validationContext(CertificateValidationContext)
        /// `generic_secret.secret`: opaque bytes (a JWT-SVID for Envoy's credential_injector).
        case genericSecret(DataSource)
    }
    public var name: String
    public var kind: Kind?
    public init(name: String, kind: Kind?) {
        self.name = name
        self.kind = kind
    }
}

// MARK: - SPIFFE Workload API (no proto package)

/// `X509SVIDRequest` (empty).
public struct X509SVIDRequest: Sendable, Equatable {
    public init() {}
}

/// `X509SVID`.
public struct X509SVIDMessage: Sendable, Equatable {
    public var spiffeID: String
    /// ASN.1 DER certificates concatenated, leaf first.
    public var x509SVID: [UInt8]
    /// PKCS#8 DER private key.
    public var x509SVIDKey: [UInt8]
    /// ASN.1 DER certificates concatenated: the trust domain's bundle.
    public var bundle: [UInt8]
    public var hint: String
    public init(spiffeID: String, x509SVID: [UInt8], x509SVIDKey: [UInt8], bundle: [UInt8], hint: String = "") {
        self.spiffeID = spiffeID
        self.x509SVID = x509SVID
        self.x509SVIDKey = x509SVIDKey
        self.bundle = bundle
        self.hint = hint
    }
}

/// `X509SVIDResponse`.
public struct X509SVIDResponse: Sendable, Equatable {
    public var svids: [X509SVIDMessage]
    public var crl: [[UInt8]]
    /// Trust domain name (e.g. `spiffe://other.org`) → DER certificates concatenated.
    public var federatedBundles: [String: [UInt8]]
    public init(svids: [X509SVIDMessage] = [], crl: [[UInt8]] = [], federatedBundles: [String: [UInt8]] = [:]) {
        self.svids = svids
        self.crl = crl
        self.federatedBundles = federatedBundles
    }
}

/// `X509BundlesRequest` (empty).
public struct X509BundlesRequest: Sendable, Equatable {
    public init() {}
}

/// `X509BundlesResponse`.
public struct X509BundlesResponse: Sendable, Equatable {
    public var crl: [[UInt8]]
    /// Trust domain name → DER certificates concatenated.
    public var bundles: [String: [UInt8]]
    public init(crl: [[UInt8]] = [], bundles: [String: [UInt8]] = [:]) {
        self.crl = crl
        self.bundles = bundles
    }
}

/// `JWTSVIDRequest`.
public struct JWTSVIDRequest: Sendable, Equatable {
    public var audience: [String]
    /// The SPIFFE ID of the SVID wanted; empty for all of the caller's.
    public var spiffeID: String
    public init(audience: [String], spiffeID: String = "") {
        self.audience = audience
        self.spiffeID = spiffeID
    }
}

/// `JWTSVID`.
public struct JWTSVIDMessage: Sendable, Equatable {
    public var spiffeID: String
    /// The encoded JWT (compact serialization).
    public var svid: String
    public var hint: String
    public init(spiffeID: String, svid: String, hint: String = "") {
        self.spiffeID = spiffeID
        self.svid = svid
        self.hint = hint
    }
}

/// `JWTSVIDResponse`.
public struct JWTSVIDResponse: Sendable, Equatable {
    public var svids: [JWTSVIDMessage]
    public init(svids: [JWTSVIDMessage] = []) { self.svids = svids }
}

/// `JWTBundlesRequest` (empty).
public struct JWTBundlesRequest: Sendable, Equatable {
    public init() {}
}

/// `JWTBundlesResponse`.
public struct JWTBundlesResponse: Sendable, Equatable {
    /// Trust domain name → JWKS document (JSON bytes).
    public var bundles: [String: [UInt8]]
    public init(bundles: [String: [UInt8]] = [:]) { self.bundles = bundles }
}

/// `ValidateJWTSVIDRequest`.
public struct ValidateJWTSVIDRequest: Sendable, Equatable {
    public var audience: String
    public var svid: String
    public init(audience: String, svid: String) {
        self.audience = audience
        self.svid = svid
    }
}

/// `ValidateJWTSVIDResponse`: the token's SPIFFE ID and its claims.
public struct ValidateJWTSVIDResponse: Sendable, Equatable {
    public var spiffeID: String
    /// The JWT claims (`google.protobuf.Struct`).
    public var claims: [String: ProtoValue]
    public init(spiffeID: String, claims: [String: ProtoValue] = [:]) {
        self.spiffeID = spiffeID
        self.claims = claims
    }
}

/// `google.protobuf.Value`: what a `Struct` field holds (JSON's data model; numbers are doubles).
public indirect enum ProtoValue: Sendable, Equatable {
    case null
    case number(Double)
    case string(String)
    case bool(Bool)
    case structValue([String: ProtoValue])
    case list([ProtoValue])

    /// Nesting deeper than this is refused when decoding: claims are flat, and the bound keeps the recursive
    /// conversion's stack small whatever a peer sends.
    public static let maxDepth = 16
}
