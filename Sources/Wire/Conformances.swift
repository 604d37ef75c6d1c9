internal import CSDSProtos

// Each message converts between its Swift struct and protobuf-c's generated C struct:
//   `init(c:)`         reads a C struct protobuf-c unpacked (memory owned by the decode's arena);
//   `build(in:)`       writes a C struct into the encode's arena (strings and bytes copied there).
// `wireBytes()` / `init(wireBuffer:limit:)` wire those to the generated `*__pack` / `*__unpack`.

typealias CAny = Google__Protobuf__Any
typealias CStatus = Google__Rpc__Status
typealias CNode = Envoy__Config__Core__V3__Node
typealias CBuildVersion = Envoy__Config__Core__V3__BuildVersion
typealias CSemanticVersion = Envoy__Type__V3__SemanticVersion
typealias CDataSource = Envoy__Config__Core__V3__DataSource
typealias CTypedExtensionConfig = Envoy__Config__Core__V3__TypedExtensionConfig
typealias CDiscoveryRequest = Envoy__Service__Discovery__V3__DiscoveryRequest
typealias CDiscoveryResponse = Envoy__Service__Discovery__V3__DiscoveryResponse
typealias CDeltaDiscoveryRequest = Envoy__Service__Discovery__V3__DeltaDiscoveryRequest
typealias CInitialResourceVersionsEntry =
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry
typealias CDeltaDiscoveryResponse = Envoy__Service__Discovery__V3__DeltaDiscoveryResponse
typealias CResource = Envoy__Service__Discovery__V3__Resource
typealias CSecret = Envoy__Extensions__TransportSockets__Tls__V3__Secret
typealias CGenericSecret = Envoy__Extensions__TransportSockets__Tls__V3__GenericSecret
typealias CTLSCertificate = Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate
typealias CCertificateValidationContext = Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext
typealias CSPIFFECertValidatorConfig = Envoy__Extensions__TransportSockets__Tls__V3__SPIFFECertValidatorConfig
typealias CSPIFFETrustDomain = Envoy__Extensions__TransportSockets__Tls__V3__SPIFFECertValidatorConfig__TrustDomain
typealias CX509SVID = CSDSProtos.X509SVID
typealias CX509SVIDResponse = CSDSProtos.X509SVIDResponse
typealias CX509BundlesResponse = CSDSProtos.X509BundlesResponse
typealias CFederatedBundlesEntry = X509SVIDResponse__FederatedBundlesEntry
typealias CBundlesEntry = X509BundlesResponse__BundlesEntry
typealias CJWTSVIDRequest = CSDSProtos.JWTSVIDRequest
typealias CJWTSVID = CSDSProtos.JWTSVID
typealias CJWTSVIDResponse = CSDSProtos.JWTSVIDResponse
typealias CJWTBundlesResponse = CSDSProtos.JWTBundlesResponse
typealias CJWTBundlesEntry = JWTBundlesResponse__BundlesEntry
typealias CValidateJWTSVIDRequest = CSDSProtos.ValidateJWTSVIDRequest
typealias CValidateJWTSVIDResponse = CSDSProtos.ValidateJWTSVIDResponse

// MARK: - google.protobuf.Any

extension AnyMessage: WireMessage {
    public static var protoName: String { "google.protobuf.Any" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: google__protobuf__any__unpack,
            descriptor: google__protobuf__any__descriptor,
            convert: { (c) throws(WireError) in try AnyMessage(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: value.count + typeURL.utf8.count + 256,
            packedSize: google__protobuf__any__get_packed_size, pack: google__protobuf__any__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CAny>) throws(WireError) {
        self.init(
            typeURL: try swiftString(c.pointee.type_url, field: "Any.type_url"), value: swiftBytes(c.pointee.value))
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CAny> {
        let c = arena.make(CAny.self)
        google__protobuf__any__init(c)
        c.pointee.type_url = arena.cString(typeURL)
        c.pointee.value = arena.binary(value)
        return c
    }
}

// MARK: - google.rpc.Status

extension RPCStatus: WireMessage {
    public static var protoName: String { "google.rpc.Status" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: google__rpc__status__unpack,
            descriptor: google__rpc__status__descriptor,
            convert: { (c) throws(WireError) in try RPCStatus(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            packedSize: google__rpc__status__get_packed_size, pack: google__rpc__status__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CStatus>) throws(WireError) {
        self.init(
            code: c.pointee.code, message: try swiftString(c.pointee.message, field: "Status.message"),
            details: try swiftMessages(c.pointee.n_details, c.pointee.details) { (d) throws(WireError) in
                try AnyMessage(c: d)
            })
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CStatus> {
        let c = arena.make(CStatus.self)
        google__rpc__status__init(c)
        c.pointee.code = code
        c.pointee.message = arena.cString(message)
        (c.pointee.n_details, c.pointee.details) = arena.messages(details) { $0.build(in: arena) }
        return c
    }
}

// MARK: - envoy.config.core.v3

extension Node: WireMessage {
    public static var protoName: String { "envoy.config.core.v3.Node" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: envoy__config__core__v3__node__unpack,
            descriptor: envoy__config__core__v3__node__descriptor,
            convert: { (c) throws(WireError) in try Node(c: c, rawBytes: Array(wireBuffer)) })
    }

    /// `rawBytes` when present (byte for byte what was received), else the modelled fields.
    public func wireBytes() -> [UInt8] {
        if !rawBytes.isEmpty { return rawBytes }
        return Codec.encode(
            packedSize: envoy__config__core__v3__node__get_packed_size, pack: envoy__config__core__v3__node__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CNode>, rawBytes: [UInt8]) throws(WireError) {
        let node = c.pointee
        var userAgentVersion = ""
        switch node.user_agent_version_type_case {
        case ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_VERSION:
            userAgentVersion = try swiftString(node.user_agent_version, field: "Node.user_agent_version")
        case ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_BUILD_VERSION:
            if let version = node.user_agent_build_version?.pointee.version?.pointee {
                userAgentVersion = "\(version.major_number).\(version.minor_number).\(version.patch)"
            }
        default:
            break
        }
        // Only the one key is read, from the bytes: the metadata (Istio's labels, versions ...) is never unpacked.
        let disableSPIFFECertValidation = Self.metadataFlag(Self.disableSPIFFECertValidationKey, inNode: rawBytes)
        self.init(
            id: try swiftString(node.id, field: "Node.id"),
            cluster: try swiftString(node.cluster, field: "Node.cluster"),
            userAgentName: try swiftString(node.user_agent_name, field: "Node.user_agent_name"),
            userAgentVersion: userAgentVersion, disableSPIFFECertValidation: disableSPIFFECertValidation,
            rawBytes: rawBytes)
    }

    /// Whether the node's metadata (field 3, a `google.protobuf.Struct`) sets `key` to `true`: its top-level
    /// entries are scanned in the wire bytes, never recursing, however deep the rest of the metadata nests.
    static func metadataFlag(_ key: String, inNode bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { node in
            var value = false
            var nodeScanner = WireScanner(node)
            while let field = try? nodeScanner.next() {
                guard field.number == 3, field.wireType == .lengthDelimited else { continue }
                let metadataBytes = UnsafeRawBufferPointer(rebasing: node[field.payload])
                var metadata = WireScanner(metadataBytes)
                while let entryField = try? metadata.next() {
                    guard entryField.number == 1, entryField.wireType == .lengthDelimited else { continue }
                    let entryBytes = UnsafeRawBufferPointer(rebasing: metadataBytes[entryField.payload])
                    if let flag = Self.boolEntry(entryBytes, key: key) { value = flag }
                }
            }
            return value
        }
    }

    /// A map entry `{key = 1; value = 2}` whose key is `key`: its Value's `bool_value` (field 4), false for any
    /// other kind; nil for another key.
    private static func boolEntry(_ entry: UnsafeRawBufferPointer, key: String) -> Bool? {
        var scanner = WireScanner(entry)
        var matches = false
        var flag = false
        while let field = try? scanner.next() {
            let payload = UnsafeRawBufferPointer(rebasing: entry[field.payload])
            if field.number == 1, field.wireType == .lengthDelimited {
                matches = payload.elementsEqual(key.utf8)
            } else if field.number == 2, field.wireType == .lengthDelimited {
                var value = WireScanner(payload)
                flag = false
                while let kind = try? value.next() {
                    if kind.number == 4, kind.wireType == .varint {
                        flag = payload[kind.payload].contains { $0 != 0 }
                    } else {
                        flag = false
                    }
                }
            }
        }
        return matches ? flag : nil
    }

    /// The modelled fields only; a version goes out as the `user_agent_version` string, which decodes back
    /// to the same `userAgentVersion`.
    func build(in arena: CArena) -> UnsafeMutablePointer<CNode> {
        let c = arena.make(CNode.self)
        envoy__config__core__v3__node__init(c)
        c.pointee.id = arena.cString(id)
        c.pointee.cluster = arena.cString(cluster)
        c.pointee.user_agent_name = arena.cString(userAgentName)
        if !userAgentVersion.isEmpty {
            c.pointee.user_agent_version_type_case =
                ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_VERSION
            c.pointee.user_agent_version = arena.cString(userAgentVersion)
        }
        return c
    }

    /// Sets field `number` of `parent` to this node. A node with `rawBytes` travels as an unknown field
    /// holding those bytes verbatim: no re-parse of Envoy's ~60 KB node, nothing lost. protobuf-c writes
    /// unknown fields after the known ones; field order carries no meaning in protobuf.
    static func attach(
        _ node: Node?, number: UInt32, to base: UnsafeMutablePointer<ProtobufCMessage>,
        field: UnsafeMutablePointer<UnsafeMutablePointer<CNode>?>, arena: CArena
    ) {
        guard let node else { return }
        if node.rawBytes.isEmpty {
            field.pointee = node.build(in: arena)
            return
        }
        // protobuf-c writes the tag, then `data` verbatim: for a length-delimited field, `data` holds the
        // length varint followed by the payload.
        var length = UInt64(node.rawBytes.count)
        var prefix: [UInt8] = []
        while length >= 0x80 {
            prefix.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        prefix.append(UInt8(length))
        let data = arena.allocate(byteCount: prefix.count + node.rawBytes.count)
        data.copyMemory(from: prefix, byteCount: prefix.count)
        node.rawBytes.withUnsafeBytes { (data + prefix.count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let unknown = arena.make(ProtobufCMessageUnknownField.self)
        unknown.initialize(
            to: ProtobufCMessageUnknownField(
                tag: number, wire_type: PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, len: prefix.count + node.rawBytes.count,
                data: data.assumingMemoryBound(to: UInt8.self)))
        base.pointee.n_unknown_fields = 1
        base.pointee.unknown_fields = unknown
    }

    /// The node of a decoded request, with its original bytes found by scanning the request's top level.
    static func decoded(
        _ c: UnsafeMutablePointer<CNode>?, number: UInt64, in request: UnsafeRawBufferPointer
    ) throws(WireError) -> Node? {
        guard let c else { return nil }
        guard let raw = try WireScanner.payload(ofField: number, in: request) else {
            return try Node(c: c, rawBytes: [])
        }
        // A node sent in several pieces: protobuf-c's merge of them can differ from the protobuf rule (a later
        // piece without the user-agent oneof cleared it; found by fuzzing), so decode the merged bytes instead.
        guard raw.pieces == 1 else { return try Node(wireBytes: raw.bytes) }
        return try Node(c: c, rawBytes: raw.bytes)
    }
}

extension DataSource {
    init(c: UnsafeMutablePointer<CDataSource>) throws(WireError) {
        let source = c.pointee
        switch source.specifier_case {
        case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
            self = .filename(try swiftString(source.filename, field: "DataSource.filename"))
        case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
            self = .inlineString(try swiftString(source.inline_string, field: "DataSource.inline_string"))
        case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE:
            self = .environmentVariable(
                try swiftString(source.environment_variable, field: "DataSource.environment_variable"))
        case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
            self = .inlineBytes(swiftBytes(source.inline_bytes))
        default:
            // No specifier set (or one we do not model): empty content.
            self = .inlineBytes([])
        }
    }

    static func optional(_ c: UnsafeMutablePointer<CDataSource>?) throws(WireError) -> DataSource? {
        guard let c else { return nil }
        return try DataSource(c: c)
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CDataSource> {
        let c = arena.make(CDataSource.self)
        envoy__config__core__v3__data_source__init(c)
        switch self {
        case .filename(let name):
            c.pointee.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME
            c.pointee.filename = arena.cString(name)
        case .inlineBytes(let bytes):
            c.pointee.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES
            c.pointee.inline_bytes = arena.binary(bytes)
        case .inlineString(let string):
            c.pointee.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING
            c.pointee.inline_string = arena.cString(string)
        case .environmentVariable(let name):
            c.pointee.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE
            c.pointee.environment_variable = arena.cString(name)
        }
        return c
    }
}

extension TypedExtensionConfig {
    init(c: UnsafeMutablePointer<CTypedExtensionConfig>) throws(WireError) {
        let typed = try c.pointee.typed_config.map { (a) throws(WireError) in try AnyMessage(c: a) }
        self.init(
            name: try swiftString(c.pointee.name, field: "TypedExtensionConfig.name"),
            typedConfig: typed ?? AnyMessage(typeURL: "", value: []))
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CTypedExtensionConfig> {
        let c = arena.make(CTypedExtensionConfig.self)
        envoy__config__core__v3__typed_extension_config__init(c)
        c.pointee.name = arena.cString(name)
        c.pointee.typed_config = typedConfig.build(in: arena)
        return c
    }
}

// MARK: - envoy.service.discovery.v3

extension DiscoveryRequest: WireMessage {
    public static var protoName: String { "envoy.service.discovery.v3.DiscoveryRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__service__discovery__v3__discovery_request__unpack,
            descriptor: envoy__service__discovery__v3__discovery_request__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                return DiscoveryRequest(
                    versionInfo: try swiftString(m.version_info, field: "DiscoveryRequest.version_info"),
                    node: try Node.decoded(m.node, number: 2, in: wireBuffer),
                    resourceNames: try swiftStrings(
                        m.n_resource_names, m.resource_names, field: "DiscoveryRequest.resource_names"),
                    typeURL: try swiftString(m.type_url, field: "DiscoveryRequest.type_url"),
                    responseNonce: try swiftString(m.response_nonce, field: "DiscoveryRequest.response_nonce"),
                    errorDetail: try m.error_detail.map { (s) throws(WireError) in try RPCStatus(c: s) })
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: (node?.rawBytes.count ?? 0) + 1024,
            packedSize: envoy__service__discovery__v3__discovery_request__get_packed_size,
            pack: envoy__service__discovery__v3__discovery_request__pack,
            build: { arena in
                let c = arena.make(CDiscoveryRequest.self)
                envoy__service__discovery__v3__discovery_request__init(c)
                c.pointee.version_info = arena.cString(versionInfo)
                (c.pointee.n_resource_names, c.pointee.resource_names) = arena.cStrings(resourceNames)
                c.pointee.type_url = arena.cString(typeURL)
                c.pointee.response_nonce = arena.cString(responseNonce)
                c.pointee.error_detail = errorDetail?.build(in: arena)
                c.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { base in
                    Node.attach(node, number: 2, to: base, field: &c.pointee.node, arena: arena)
                }
                return c
            })
    }
}

extension DiscoveryResponse: WireMessage {
    public static var protoName: String { "envoy.service.discovery.v3.DiscoveryResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__service__discovery__v3__discovery_response__unpack,
            descriptor: envoy__service__discovery__v3__discovery_response__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                return DiscoveryResponse(
                    versionInfo: try swiftString(m.version_info, field: "DiscoveryResponse.version_info"),
                    resources: try swiftMessages(m.n_resources, m.resources) { (a) throws(WireError) in
                        try AnyMessage(c: a)
                    },
                    typeURL: try swiftString(m.type_url, field: "DiscoveryResponse.type_url"),
                    nonce: try swiftString(m.nonce, field: "DiscoveryResponse.nonce"))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: resources.reduce(512) { $0 + $1.value.count + $1.typeURL.utf8.count + 64 },
            packedSize: envoy__service__discovery__v3__discovery_response__get_packed_size,
            pack: envoy__service__discovery__v3__discovery_response__pack,
            build: { arena in
                let c = arena.make(CDiscoveryResponse.self)
                envoy__service__discovery__v3__discovery_response__init(c)
                c.pointee.version_info = arena.cString(versionInfo)
                (c.pointee.n_resources, c.pointee.resources) = arena.messages(resources) { $0.build(in: arena) }
                c.pointee.type_url = arena.cString(typeURL)
                c.pointee.nonce = arena.cString(nonce)
                return c
            })
    }
}

extension DeltaDiscoveryRequest: WireMessage {
    public static var protoName: String { "envoy.service.discovery.v3.DeltaDiscoveryRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__service__discovery__v3__delta_discovery_request__unpack,
            descriptor: envoy__service__discovery__v3__delta_discovery_request__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                var versions: [String: String] = [:]
                let entries = try swiftMessages(m.n_initial_resource_versions, m.initial_resource_versions) {
                    (e) throws(WireError) in
                    (
                        try swiftString(e.pointee.key, field: "initial_resource_versions.key"),
                        try swiftString(e.pointee.value, field: "initial_resource_versions.value")
                    )
                }
                // A repeated map key: the last entry wins, as in every protobuf runtime.
                for (key, value) in entries { versions[key] = value }
                return DeltaDiscoveryRequest(
                    node: try Node.decoded(m.node, number: 1, in: wireBuffer),
                    typeURL: try swiftString(m.type_url, field: "DeltaDiscoveryRequest.type_url"),
                    resourceNamesSubscribe: try swiftStrings(
                        m.n_resource_names_subscribe, m.resource_names_subscribe,
                        field: "DeltaDiscoveryRequest.resource_names_subscribe"),
                    resourceNamesUnsubscribe: try swiftStrings(
                        m.n_resource_names_unsubscribe, m.resource_names_unsubscribe,
                        field: "DeltaDiscoveryRequest.resource_names_unsubscribe"),
                    initialResourceVersions: versions,
                    responseNonce: try swiftString(m.response_nonce, field: "DeltaDiscoveryRequest.response_nonce"),
                    errorDetail: try m.error_detail.map { (s) throws(WireError) in try RPCStatus(c: s) })
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: (node?.rawBytes.count ?? 0) + 1024,
            packedSize: envoy__service__discovery__v3__delta_discovery_request__get_packed_size,
            pack: envoy__service__discovery__v3__delta_discovery_request__pack,
            build: { arena in
                let c = arena.make(CDeltaDiscoveryRequest.self)
                envoy__service__discovery__v3__delta_discovery_request__init(c)
                c.pointee.type_url = arena.cString(typeURL)
                (c.pointee.n_resource_names_subscribe, c.pointee.resource_names_subscribe) = arena.cStrings(
                    resourceNamesSubscribe)
                (c.pointee.n_resource_names_unsubscribe, c.pointee.resource_names_unsubscribe) = arena.cStrings(
                    resourceNamesUnsubscribe)
                (c.pointee.n_initial_resource_versions, c.pointee.initial_resource_versions) = arena.messages(
                    initialResourceVersions.sorted { $0.key < $1.key }
                ) { entry in
                    let e = arena.make(CInitialResourceVersionsEntry.self)
                    envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(e)
                    e.pointee.key = arena.cString(entry.key)
                    e.pointee.value = arena.cString(entry.value)
                    return e
                }
                c.pointee.response_nonce = arena.cString(responseNonce)
                c.pointee.error_detail = errorDetail?.build(in: arena)
                c.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { base in
                    Node.attach(node, number: 1, to: base, field: &c.pointee.node, arena: arena)
                }
                return c
            })
    }
}

extension Resource: WireMessage {
    public static var protoName: String { "envoy.service.discovery.v3.Resource" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__service__discovery__v3__resource__unpack,
            descriptor: envoy__service__discovery__v3__resource__descriptor,
            convert: { (c) throws(WireError) in try Resource(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: (resource?.value.count ?? 0) + 512,
            packedSize: envoy__service__discovery__v3__resource__get_packed_size,
            pack: envoy__service__discovery__v3__resource__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CResource>) throws(WireError) {
        self.init(
            name: try swiftString(c.pointee.name, field: "Resource.name"),
            version: try swiftString(c.pointee.version, field: "Resource.version"),
            resource: try c.pointee.resource.map { (a) throws(WireError) in try AnyMessage(c: a) })
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CResource> {
        let c = arena.make(CResource.self)
        envoy__service__discovery__v3__resource__init(c)
        c.pointee.name = arena.cString(name)
        c.pointee.version = arena.cString(version)
        c.pointee.resource = resource?.build(in: arena)
        return c
    }
}

extension DeltaDiscoveryResponse: WireMessage {
    public static var protoName: String { "envoy.service.discovery.v3.DeltaDiscoveryResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__service__discovery__v3__delta_discovery_response__unpack,
            descriptor: envoy__service__discovery__v3__delta_discovery_response__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                return DeltaDiscoveryResponse(
                    systemVersionInfo: try swiftString(
                        m.system_version_info, field: "DeltaDiscoveryResponse.system_version_info"),
                    resources: try swiftMessages(m.n_resources, m.resources) { (r) throws(WireError) in
                        try Resource(c: r)
                    },
                    typeURL: try swiftString(m.type_url, field: "DeltaDiscoveryResponse.type_url"),
                    removedResources: try swiftStrings(
                        m.n_removed_resources, m.removed_resources, field: "DeltaDiscoveryResponse.removed_resources"),
                    nonce: try swiftString(m.nonce, field: "DeltaDiscoveryResponse.nonce"))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: resources.reduce(512) { $0 + ($1.resource?.value.count ?? 0) + 128 },
            packedSize: envoy__service__discovery__v3__delta_discovery_response__get_packed_size,
            pack: envoy__service__discovery__v3__delta_discovery_response__pack,
            build: { arena in
                let c = arena.make(CDeltaDiscoveryResponse.self)
                envoy__service__discovery__v3__delta_discovery_response__init(c)
                c.pointee.system_version_info = arena.cString(systemVersionInfo)
                (c.pointee.n_resources, c.pointee.resources) = arena.messages(resources) { $0.build(in: arena) }
                c.pointee.type_url = arena.cString(typeURL)
                (c.pointee.n_removed_resources, c.pointee.removed_resources) = arena.cStrings(removedResources)
                c.pointee.nonce = arena.cString(nonce)
                return c
            })
    }
}

// MARK: - envoy.extensions.transport_sockets.tls.v3

extension TLSCertificate: WireMessage {
    public static var protoName: String { "envoy.extensions.transport_sockets.tls.v3.TlsCertificate" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__extensions__transport_sockets__tls__v3__tls_certificate__unpack,
            descriptor: envoy__extensions__transport_sockets__tls__v3__tls_certificate__descriptor,
            convert: { (c) throws(WireError) in try TLSCertificate(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: 4096,
            packedSize: envoy__extensions__transport_sockets__tls__v3__tls_certificate__get_packed_size,
            pack: envoy__extensions__transport_sockets__tls__v3__tls_certificate__pack,
            build: { build(in: $0) })
    }

    /// An absent chain or key reads as empty inline bytes (proto3: absent means default).
    init(c: UnsafeMutablePointer<CTLSCertificate>) throws(WireError) {
        self.init(
            certificateChain: try DataSource.optional(c.pointee.certificate_chain) ?? .inlineBytes([]),
            privateKey: try DataSource.optional(c.pointee.private_key) ?? .inlineBytes([]))
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CTLSCertificate> {
        let c = arena.make(CTLSCertificate.self)
        envoy__extensions__transport_sockets__tls__v3__tls_certificate__init(c)
        c.pointee.certificate_chain = certificateChain.build(in: arena)
        c.pointee.private_key = privateKey.build(in: arena)
        return c
    }
}

extension CertificateValidationContext: WireMessage {
    public static var protoName: String { "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__extensions__transport_sockets__tls__v3__certificate_validation_context__unpack,
            descriptor: envoy__extensions__transport_sockets__tls__v3__certificate_validation_context__descriptor,
            convert: { (c) throws(WireError) in try CertificateValidationContext(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: 4096,
            packedSize: envoy__extensions__transport_sockets__tls__v3__certificate_validation_context__get_packed_size,
            pack: envoy__extensions__transport_sockets__tls__v3__certificate_validation_context__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CCertificateValidationContext>) throws(WireError) {
        self.init(
            trustedCA: try DataSource.optional(c.pointee.trusted_ca),
            customValidatorConfig: try c.pointee.custom_validator_config.map { (t) throws(WireError) in
                try TypedExtensionConfig(c: t)
            }, crl: try DataSource.optional(c.pointee.crl),
            onlyVerifyLeafCertCRL: c.pointee.only_verify_leaf_cert_crl != 0)
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CCertificateValidationContext> {
        let c = arena.make(CCertificateValidationContext.self)
        envoy__extensions__transport_sockets__tls__v3__certificate_validation_context__init(c)
        c.pointee.trusted_ca = trustedCA?.build(in: arena)
        c.pointee.custom_validator_config = customValidatorConfig?.build(in: arena)
        c.pointee.crl = crl?.build(in: arena)
        c.pointee.only_verify_leaf_cert_crl = onlyVerifyLeafCertCRL ? 1 : 0
        return c
    }
}

extension SPIFFECertValidatorConfig: WireMessage {
    public static var protoName: String { "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__unpack,
            descriptor: envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__descriptor,
            convert: { (c) throws(WireError) in
                SPIFFECertValidatorConfig(
                    trustDomains: try swiftMessages(c.pointee.n_trust_domains, c.pointee.trust_domains) {
                        (d) throws(WireError) in
                        TrustDomain(
                            name: try swiftString(d.pointee.name, field: "TrustDomain.name"),
                            trustBundle: try DataSource.optional(d.pointee.trust_bundle) ?? .inlineBytes([]))
                    },
                    trustBundles: try DataSource.optional(c.pointee.trust_bundles))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: trustDomains.reduce(512) { $0 + ($1.trustBundle.inlineContent?.count ?? 0) + 128 },
            packedSize: envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__get_packed_size,
            pack: envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__pack,
            build: { arena in
                let c = arena.make(CSPIFFECertValidatorConfig.self)
                envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__init(c)
                (c.pointee.n_trust_domains, c.pointee.trust_domains) = arena.messages(trustDomains) { domain in
                    let d = arena.make(CSPIFFETrustDomain.self)
                    envoy__extensions__transport_sockets__tls__v3__spiffecert_validator_config__trust_domain__init(d)
                    d.pointee.name = arena.cString(domain.name)
                    d.pointee.trust_bundle = domain.trustBundle.build(in: arena)
                    return d
                }
                c.pointee.trust_bundles = trustBundles?.build(in: arena)
                return c
            })
    }
}

extension Secret: WireMessage {
    public static var protoName: String { "envoy.extensions.transport_sockets.tls.v3.Secret" }

    /// A secret of a kind not modelled here (session ticket keys, generic secret) decodes with `kind == nil`.
    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: envoy__extensions__transport_sockets__tls__v3__secret__unpack,
            descriptor: envoy__extensions__transport_sockets__tls__v3__secret__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                var kind: Kind?
                switch m.type_case {
                case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE:
                    if let t = m.tls_certificate { kind = .tlsCertificate(try TLSCertificate(c: t)) }
                case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT:
                    if let v = m.validation_context {
                        kind = .validationContext(try CertificateValidationContext(c: v))
                    }
                case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_GENERIC_SECRET:
                    if let g = m.generic_secret {
                        kind = .genericSecret(try DataSource.optional(g.pointee.secret) ?? .inlineBytes([]))
                    }
                default:
                    kind = nil
                }
                return Secret(name: try swiftString(m.name, field: "Secret.name"), kind: kind)
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: 4096,
            packedSize: envoy__extensions__transport_sockets__tls__v3__secret__get_packed_size,
            pack: envoy__extensions__transport_sockets__tls__v3__secret__pack,
            build: { arena in
                let c = arena.make(CSecret.self)
                envoy__extensions__transport_sockets__tls__v3__secret__init(c)
                c.pointee.name = arena.cString(name)
                switch kind {
                case .tlsCertificate(let certificate):
                    c.pointee.type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE
                    c.pointee.tls_certificate = certificate.build(in: arena)
                case .validationContext(let context):
                    c.pointee.type_case =
                        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT
                    c.pointee.validation_context = context.build(in: arena)
                case .genericSecret(let source):
                    c.pointee.type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_GENERIC_SECRET
                    let generic = arena.make(CGenericSecret.self)
                    envoy__extensions__transport_sockets__tls__v3__generic_secret__init(generic)
                    generic.pointee.secret = source.build(in: arena)
                    c.pointee.generic_secret = generic
                case nil:
                    break
                }
                return c
            })
    }
}

// MARK: - SPIFFE Workload API

extension X509SVIDRequest: WireMessage {
    public static var protoName: String { "X509SVIDRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: x509_svidrequest__unpack,
            descriptor: x509_svidrequest__descriptor,
            convert: { (_) throws(WireError) in X509SVIDRequest() })
    }

    /// An empty message encodes to no bytes.
    public func wireBytes() -> [UInt8] { [] }
}

extension X509BundlesRequest: WireMessage {
    public static var protoName: String { "X509BundlesRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: x509_bundles_request__unpack,
            descriptor: x509_bundles_request__descriptor,
            convert: { (_) throws(WireError) in X509BundlesRequest() })
    }

    /// An empty message encodes to no bytes.
    public func wireBytes() -> [UInt8] { [] }
}

extension X509SVIDMessage: WireMessage {
    public static var protoName: String { "X509SVID" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: x509_svid__unpack,
            descriptor: x509_svid__descriptor,
            convert: { (c) throws(WireError) in try X509SVIDMessage(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: x509SVID.count + x509SVIDKey.count + bundle.count + 512,
            packedSize: x509_svid__get_packed_size, pack: x509_svid__pack, build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CX509SVID>) throws(WireError) {
        self.init(
            spiffeID: try swiftString(c.pointee.spiffe_id, field: "X509SVID.spiffe_id"),
            x509SVID: swiftBytes(c.pointee.x509_svid), x509SVIDKey: swiftBytes(c.pointee.x509_svid_key),
            bundle: swiftBytes(c.pointee.bundle), hint: try swiftString(c.pointee.hint, field: "X509SVID.hint"))
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CX509SVID> {
        let c = arena.make(CX509SVID.self)
        x509_svid__init(c)
        c.pointee.spiffe_id = arena.cString(spiffeID)
        c.pointee.x509_svid = arena.binary(x509SVID)
        c.pointee.x509_svid_key = arena.binary(x509SVIDKey)
        c.pointee.bundle = arena.binary(bundle)
        c.pointee.hint = arena.cString(hint)
        return c
    }
}

/// `map<string, bytes>` entries → dictionary; a repeated key: the last entry wins.
private func bundleMap<E>(
    _ count: Int, _ array: UnsafeMutablePointer<UnsafeMutablePointer<E>?>?, field: StaticString,
    key: (E) -> UnsafeMutablePointer<CChar>?, value: (E) -> ProtobufCBinaryData
) throws(WireError) -> [String: [UInt8]] {
    var map: [String: [UInt8]] = [:]
    for (k, v) in try swiftMessages(
        count, array,
        { (e) throws(WireError) in
            (try swiftString(key(e.pointee), field: field), swiftBytes(value(e.pointee)))
        })
    {
        map[k] = v
    }
    return map
}

extension X509SVIDResponse: WireMessage {
    public static var protoName: String { "X509SVIDResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: x509_svidresponse__unpack,
            descriptor: x509_svidresponse__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                return X509SVIDResponse(
                    svids: try swiftMessages(m.n_svids, m.svids) { (s) throws(WireError) in try X509SVIDMessage(c: s) },
                    crl: swiftBytesList(m.n_crl, m.crl),
                    federatedBundles: try bundleMap(
                        m.n_federated_bundles, m.federated_bundles, field: "federated_bundles.key",
                        key: { $0.key }, value: { $0.value }))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: svids.reduce(1024) { $0 + $1.x509SVID.count + $1.x509SVIDKey.count + $1.bundle.count }
                + federatedBundles.values.reduce(0) { $0 + $1.count + 64 },
            packedSize: x509_svidresponse__get_packed_size, pack: x509_svidresponse__pack,
            build: { arena in
                let c = arena.make(CX509SVIDResponse.self)
                x509_svidresponse__init(c)
                (c.pointee.n_svids, c.pointee.svids) = arena.messages(svids) { $0.build(in: arena) }
                (c.pointee.n_crl, c.pointee.crl) = arena.binaries(crl)
                (c.pointee.n_federated_bundles, c.pointee.federated_bundles) = arena.messages(
                    federatedBundles.sorted { $0.key < $1.key }
                ) { entry in
                    let e = arena.make(CFederatedBundlesEntry.self)
                    x509_svidresponse__federated_bundles_entry__init(e)
                    e.pointee.key = arena.cString(entry.key)
                    e.pointee.value = arena.binary(entry.value)
                    return e
                }
                return c
            })
    }
}

extension X509BundlesResponse: WireMessage {
    public static var protoName: String { "X509BundlesResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: x509_bundles_response__unpack,
            descriptor: x509_bundles_response__descriptor,
            convert: { (c) throws(WireError) in
                let m = c.pointee
                return X509BundlesResponse(
                    crl: swiftBytesList(m.n_crl, m.crl),
                    bundles: try bundleMap(
                        m.n_bundles, m.bundles, field: "bundles.key", key: { $0.key }, value: { $0.value }))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: bundles.values.reduce(512) { $0 + $1.count + 64 },
            packedSize: x509_bundles_response__get_packed_size, pack: x509_bundles_response__pack,
            build: { arena in
                let c = arena.make(CX509BundlesResponse.self)
                x509_bundles_response__init(c)
                (c.pointee.n_crl, c.pointee.crl) = arena.binaries(crl)
                (c.pointee.n_bundles, c.pointee.bundles) = arena.messages(bundles.sorted { $0.key < $1.key }) {
                    entry in
                    let e = arena.make(CBundlesEntry.self)
                    x509_bundles_response__bundles_entry__init(e)
                    e.pointee.key = arena.cString(entry.key)
                    e.pointee.value = arena.binary(entry.value)
                    return e
                }
                return c
            })
    }
}

extension JWTSVIDRequest: WireMessage {
    public static var protoName: String { "JWTSVIDRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: jwtsvidrequest__unpack,
            descriptor: jwtsvidrequest__descriptor,
            convert: { (c) throws(WireError) in
                JWTSVIDRequest(
                    audience: try swiftStrings(
                        c.pointee.n_audience, c.pointee.audience, field: "JWTSVIDRequest.audience"),
                    spiffeID: try swiftString(c.pointee.spiffe_id, field: "JWTSVIDRequest.spiffe_id"))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            packedSize: jwtsvidrequest__get_packed_size, pack: jwtsvidrequest__pack,
            build: { arena in
                let c = arena.make(CJWTSVIDRequest.self)
                jwtsvidrequest__init(c)
                (c.pointee.n_audience, c.pointee.audience) = arena.cStrings(audience)
                c.pointee.spiffe_id = arena.cString(spiffeID)
                return c
            })
    }
}

extension JWTSVIDMessage: WireMessage {
    public static var protoName: String { "JWTSVID" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: jwtsvid__unpack,
            descriptor: jwtsvid__descriptor,
            convert: { (c) throws(WireError) in try JWTSVIDMessage(c: c) })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: svid.utf8.count + 512, packedSize: jwtsvid__get_packed_size, pack: jwtsvid__pack,
            build: { build(in: $0) })
    }

    init(c: UnsafeMutablePointer<CJWTSVID>) throws(WireError) {
        self.init(
            spiffeID: try swiftString(c.pointee.spiffe_id, field: "JWTSVID.spiffe_id"),
            svid: try swiftString(c.pointee.svid, field: "JWTSVID.svid"),
            hint: try swiftString(c.pointee.hint, field: "JWTSVID.hint"))
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CJWTSVID> {
        let c = arena.make(CJWTSVID.self)
        jwtsvid__init(c)
        c.pointee.spiffe_id = arena.cString(spiffeID)
        c.pointee.svid = arena.cString(svid)
        c.pointee.hint = arena.cString(hint)
        return c
    }
}

extension JWTSVIDResponse: WireMessage {
    public static var protoName: String { "JWTSVIDResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: jwtsvidresponse__unpack,
            descriptor: jwtsvidresponse__descriptor,
            convert: { (c) throws(WireError) in
                JWTSVIDResponse(
                    svids: try swiftMessages(c.pointee.n_svids, c.pointee.svids) { (s) throws(WireError) in
                        try JWTSVIDMessage(c: s)
                    })
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: svids.reduce(512) { $0 + $1.svid.utf8.count + 128 },
            packedSize: jwtsvidresponse__get_packed_size, pack: jwtsvidresponse__pack,
            build: { arena in
                let c = arena.make(CJWTSVIDResponse.self)
                jwtsvidresponse__init(c)
                (c.pointee.n_svids, c.pointee.svids) = arena.messages(svids) { $0.build(in: arena) }
                return c
            })
    }
}

extension JWTBundlesRequest: WireMessage {
    public static var protoName: String { "JWTBundlesRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: jwtbundles_request__unpack,
            descriptor: jwtbundles_request__descriptor,
            convert: { (_) throws(WireError) in JWTBundlesRequest() })
    }

    /// An empty message encodes to no bytes.
    public func wireBytes() -> [UInt8] { [] }
}

extension JWTBundlesResponse: WireMessage {
    public static var protoName: String { "JWTBundlesResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: jwtbundles_response__unpack,
            descriptor: jwtbundles_response__descriptor,
            convert: { (c) throws(WireError) in
                JWTBundlesResponse(
                    bundles: try bundleMap(
                        c.pointee.n_bundles, c.pointee.bundles, field: "bundles.key", key: { $0.key },
                        value: { $0.value }))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: bundles.values.reduce(512) { $0 + $1.count + 64 },
            packedSize: jwtbundles_response__get_packed_size, pack: jwtbundles_response__pack,
            build: { arena in
                let c = arena.make(CJWTBundlesResponse.self)
                jwtbundles_response__init(c)
                (c.pointee.n_bundles, c.pointee.bundles) = arena.messages(bundles.sorted { $0.key < $1.key }) {
                    entry in
                    let e = arena.make(CJWTBundlesEntry.self)
                    jwtbundles_response__bundles_entry__init(e)
                    e.pointee.key = arena.cString(entry.key)
                    e.pointee.value = arena.binary(entry.value)
                    return e
                }
                return c
            })
    }
}

extension ValidateJWTSVIDRequest: WireMessage {
    public static var protoName: String { "ValidateJWTSVIDRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: validate_jwtsvidrequest__unpack,
            descriptor: validate_jwtsvidrequest__descriptor,
            convert: { (c) throws(WireError) in
                ValidateJWTSVIDRequest(
                    audience: try swiftString(c.pointee.audience, field: "ValidateJWTSVIDRequest.audience"),
                    svid: try swiftString(c.pointee.svid, field: "ValidateJWTSVIDRequest.svid"))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: svid.utf8.count + 512,
            packedSize: validate_jwtsvidrequest__get_packed_size, pack: validate_jwtsvidrequest__pack,
            build: { arena in
                let c = arena.make(CValidateJWTSVIDRequest.self)
                validate_jwtsvidrequest__init(c)
                c.pointee.audience = arena.cString(audience)
                c.pointee.svid = arena.cString(svid)
                return c
            })
    }
}

extension ValidateJWTSVIDResponse: WireMessage {
    public static var protoName: String { "ValidateJWTSVIDResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName, unpack: validate_jwtsvidresponse__unpack,
            descriptor: validate_jwtsvidresponse__descriptor,
            convert: { (c) throws(WireError) in
                ValidateJWTSVIDResponse(
                    spiffeID: try swiftString(c.pointee.spiffe_id, field: "ValidateJWTSVIDResponse.spiffe_id"),
                    claims: try c.pointee.claims.map { (s) throws(WireError) in try ProtoValue.fields(s, depth: 0) }
                        ?? [:])
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            packedSize: validate_jwtsvidresponse__get_packed_size, pack: validate_jwtsvidresponse__pack,
            build: { arena in
                let c = arena.make(CValidateJWTSVIDResponse.self)
                validate_jwtsvidresponse__init(c)
                c.pointee.spiffe_id = arena.cString(spiffeID)
                if !claims.isEmpty { c.pointee.claims = ProtoValue.build(fields: claims, in: arena) }
                return c
            })
    }
}

// MARK: - google.protobuf.Struct

typealias CStruct = Google__Protobuf__Struct
typealias CStructEntry = Google__Protobuf__Struct__FieldsEntry
typealias CValue = Google__Protobuf__Value
typealias CListValue = Google__Protobuf__ListValue

extension ProtoValue {
    static func fields(_ c: UnsafeMutablePointer<CStruct>, depth: Int) throws(WireError) -> [String: ProtoValue] {
        guard depth < maxDepth else { throw .malformed(message: "Struct nested deeper than \(maxDepth)") }
        var out: [String: ProtoValue] = [:]
        for index in 0..<c.pointee.n_fields {
            guard let entry = c.pointee.fields[index] else { continue }
            let key = try swiftString(entry.pointee.key, field: "Struct.fields.key")
            out[key] =
                try entry.pointee.value.map { (v) throws(WireError) in try ProtoValue(v, depth: depth + 1) } ?? .null
        }
        return out
    }

    init(_ c: UnsafeMutablePointer<CValue>, depth: Int) throws(WireError) {
        guard depth < Self.maxDepth else { throw .malformed(message: "Value nested deeper than \(Self.maxDepth)") }
        let value = c.pointee
        switch value.kind_case {
        case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: self = .number(value.number_value)
        case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
            self = .string(try swiftString(value.string_value, field: "Value.string_value"))
        case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE: self = .bool(value.bool_value != 0)
        case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
            self = .structValue(
                try value.struct_value.map { (s) throws(WireError) in try Self.fields(s, depth: depth + 1) } ?? [:])
        case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
            var items: [ProtoValue] = []
            if let list = value.list_value {
                for index in 0..<list.pointee.n_values {
                    guard let item = list.pointee.values[index] else { continue }
                    items.append(try ProtoValue(item, depth: depth + 1))
                }
            }
            self = .list(items)
        default: self = .null
        }
    }

    static func build(fields: [String: ProtoValue], in arena: CArena) -> UnsafeMutablePointer<CStruct> {
        let c = arena.make(CStruct.self)
        google__protobuf__struct__init(c)
        let entries = arena.make(UnsafeMutablePointer<CStructEntry>?.self, count: fields.count)
        for (index, (key, value)) in fields.sorted(by: { $0.key < $1.key }).enumerated() {
            let entry = arena.make(CStructEntry.self)
            google__protobuf__struct__fields_entry__init(entry)
            entry.pointee.key = arena.cString(key)
            entry.pointee.value = value.build(in: arena)
            entries[index] = entry
        }
        c.pointee.n_fields = fields.count
        c.pointee.fields = entries
        return c
    }

    func build(in arena: CArena) -> UnsafeMutablePointer<CValue> {
        let c = arena.make(CValue.self)
        google__protobuf__value__init(c)
        switch self {
        case .null:
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE
        case .number(let number):
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE
            c.pointee.number_value = number
        case .string(let text):
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE
            c.pointee.string_value = arena.cString(text)
        case .bool(let flag):
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE
            c.pointee.bool_value = flag ? 1 : 0
        case .structValue(let fields):
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE
            c.pointee.struct_value = Self.build(fields: fields, in: arena)
        case .list(let items):
            c.pointee.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE
            let list = arena.make(CListValue.self)
            google__protobuf__list_value__init(list)
            let values = arena.make(UnsafeMutablePointer<CValue>?.self, count: items.count)
            for (index, item) in items.enumerated() { values[index] = item.build(in: arena) }
            list.pointee.n_values = items.count
            list.pointee.values = values
            c.pointee.list_value = list
        }
        return c
    }
}
