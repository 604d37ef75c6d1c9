import Testing
import Wire

/// Every message survives encode → decode unchanged (Swift on both sides).
@Suite struct RoundTripTests {
    static let chain = DataSource.inlineBytes(pattern(1, 2000))
    static let key = DataSource.inlineString("-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n")
    static let tlsSecret = Secret(
        name: "default", kind: .tlsCertificate(TLSCertificate(certificateChain: chain, privateKey: key)))

    func roundTrip<M: WireMessage>(_ message: M) throws -> M {
        try M(wireBytes: message.wireBytes())
    }

    @Test func validateResponseClaims() throws {
        let response = ValidateJWTSVIDResponse(
            spiffeID: "spiffe://example.org/a",
            claims: [
                "sub": .string("spiffe://example.org/a"), "aud": .list([.string("x"), .string("y")]),
                "exp": .number(1_800_000_000), "extra": .structValue(["flag": .bool(true), "none": .null]),
            ])
        #expect(try ValidateJWTSVIDResponse(wireBytes: response.wireBytes()) == response)
    }

    @Test func claimsNestedPastTheBoundAreRefused() {
        var value = ProtoValue.null
        for _ in 0...ProtoValue.maxDepth { value = .list([value]) }
        let response = ValidateJWTSVIDResponse(spiffeID: "x", claims: ["deep": value])
        #expect(throws: WireError.self) { try ValidateJWTSVIDResponse(wireBytes: response.wireBytes()) }
    }

    @Test func genericSecret() throws {
        let secret = Secret(name: "jwt-svid:aud", kind: .genericSecret(.inlineBytes(Array("a.b.c".utf8))))
        #expect(try Secret(wireBytes: secret.wireBytes()) == secret)
    }

    @Test func anyMessage() throws {
        let any = AnyMessage(typeURL: "type.googleapis.com/x.Y", value: pattern(2, 100))
        #expect(try roundTrip(any) == any)
        #expect(try roundTrip(AnyMessage(typeURL: "", value: [])) == AnyMessage(typeURL: "", value: []))
    }

    @Test func rpcStatus() throws {
        let status = RPCStatus(code: -5, message: "ünïcode ✓", details: [AnyMessage(typeURL: "a/b", value: [0])])
        #expect(try roundTrip(status) == status)
    }

    @Test func nodeBuiltInSwiftDecodesWithItsBytesKept() throws {
        let node = Node(id: "id", cluster: "c", userAgentName: "envoy", userAgentVersion: "1.40.0")
        let bytes = node.wireBytes()
        let decoded = try Node(wireBytes: bytes)
        #expect(
            decoded == Node(id: "id", cluster: "c", userAgentName: "envoy", userAgentVersion: "1.40.0", rawBytes: bytes)
        )
        #expect(decoded.wireBytes() == bytes)
    }

    @Test func discoveryRequest() throws {
        let node = Node(id: "n", cluster: "c")
        var request = DiscoveryRequest(
            versionInfo: "1", node: node, resourceNames: ["default", "ROOTCA"], typeURL: Secret.typeURL,
            responseNonce: "nonce", errorDetail: RPCStatus(code: 13, message: "nack"))
        let decoded = try roundTrip(request)
        request.node?.rawBytes = node.wireBytes()
        #expect(decoded == request)
        // A node carried as raw bytes re-encodes verbatim, and round trips again.
        #expect(try roundTrip(decoded) == decoded)
    }

    @Test func deltaDiscoveryRequest() throws {
        let request = DeltaDiscoveryRequest(
            node: nil, typeURL: Secret.typeURL, resourceNamesSubscribe: ["a"], resourceNamesUnsubscribe: ["b", "c"],
            initialResourceVersions: ["a": "1", "x": ""], responseNonce: "n",
            errorDetail: RPCStatus(code: 1, message: ""))
        #expect(try roundTrip(request) == request)
    }

    @Test func mapsEncodeDeterministically() {
        let versions = Dictionary(uniqueKeysWithValues: (0..<50).map { ("name-\($0)", "\($0)") })
        let first = DeltaDiscoveryRequest(initialResourceVersions: versions).wireBytes()
        let second = DeltaDiscoveryRequest(
            initialResourceVersions: Dictionary(versions.shuffled(), uniquingKeysWith: { a, _ in a })
        )
        .wireBytes()
        #expect(first == second)
    }

    @Test func discoveryResponse() throws {
        let response = DiscoveryResponse(
            versionInfo: "v", resources: [AnyMessage(packing: Self.tlsSecret), AnyMessage(packing: Self.tlsSecret)],
            typeURL: Secret.typeURL, nonce: "1")
        #expect(try roundTrip(response) == response)
    }

    @Test func deltaDiscoveryResponseAndResource() throws {
        let resource = Resource(name: "default", version: "9", resource: AnyMessage(packing: Self.tlsSecret))
        #expect(try roundTrip(resource) == resource)
        let absent = Resource(name: "gone", version: "", resource: nil)
        #expect(try roundTrip(absent) == absent)
        let response = DeltaDiscoveryResponse(
            systemVersionInfo: "s", resources: [resource, absent], typeURL: Secret.typeURL,
            removedResources: ["x"], nonce: "n")
        #expect(try roundTrip(response) == response)
    }

    @Test(arguments: [
        DataSource.inlineBytes([]), .inlineBytes(pattern(3, 10)), .inlineString(""), .inlineString("pem"),
        .filename("/etc/cert.pem"), .environmentVariable("CERT"),
    ])
    func secretWithEveryDataSource(source: DataSource) throws {
        let secret = Secret(
            name: "s", kind: .tlsCertificate(TLSCertificate(certificateChain: source, privateKey: source)))
        #expect(try roundTrip(secret) == secret)
    }

    @Test func secretKinds() throws {
        #expect(try roundTrip(Self.tlsSecret) == Self.tlsSecret)
        let root = Secret(name: "ROOTCA", kind: .validationContext(CertificateValidationContext(trustedCA: Self.chain)))
        #expect(try roundTrip(root) == root)
        let none = Secret(name: "empty", kind: nil)
        #expect(try roundTrip(none) == none)
        let certificate = TLSCertificate(certificateChain: Self.chain, privateKey: Self.key)
        #expect(try roundTrip(certificate) == certificate)
    }

    @Test func spiffeCertValidatorConfig() throws {
        let config = SPIFFECertValidatorConfig(
            trustDomains: [
                .init(name: "a.org", trustBundle: .inlineBytes([1])), .init(name: "b.org", trustBundle: Self.key),
            ],
            trustBundles: .filename("/bundles.json"))
        #expect(try roundTrip(config) == config)
        let context = CertificateValidationContext(
            trustedCA: nil,
            customValidatorConfig: TypedExtensionConfig(
                name: "envoy.tls.cert_validator.spiffe", typedConfig: AnyMessage(packing: config)))
        #expect(try roundTrip(context) == context)
        let unpacked = try context.customValidatorConfig?.typedConfig.unpack(SPIFFECertValidatorConfig.self)
        #expect(unpacked == config)
    }

    @Test func workloadAPIMessages() throws {
        #expect(try roundTrip(X509SVIDRequest()) == X509SVIDRequest())
        #expect(try roundTrip(X509BundlesRequest()) == X509BundlesRequest())
        let svid = X509SVIDMessage(
            spiffeID: "spiffe://example.org/w", x509SVID: pattern(4, 800), x509SVIDKey: pattern(5, 138),
            bundle: pattern(6, 400), hint: "")
        #expect(try roundTrip(svid) == svid)
        let response = X509SVIDResponse(
            svids: [svid, svid], crl: [[], pattern(7, 3)], federatedBundles: ["spiffe://o.org": pattern(8, 9)])
        #expect(try roundTrip(response) == response)
        let bundles = X509BundlesResponse(crl: [pattern(9, 2)], bundles: ["spiffe://a": [], "spiffe://b": [2]])
        #expect(try roundTrip(bundles) == bundles)
    }

    @Test func jwtMessages() throws {
        let request = JWTSVIDRequest(audience: ["a", "b"], spiffeID: "spiffe://x/y")
        #expect(try roundTrip(request) == request)
        let svid = JWTSVIDMessage(spiffeID: "spiffe://x/y", svid: "a.b.c", hint: "h")
        #expect(try roundTrip(svid) == svid)
        #expect(try roundTrip(JWTSVIDResponse(svids: [svid, svid])) == JWTSVIDResponse(svids: [svid, svid]))
        #expect(try roundTrip(JWTBundlesRequest()) == JWTBundlesRequest())
        let bundles = JWTBundlesResponse(bundles: ["x": [1], "y": []])
        #expect(try roundTrip(bundles) == bundles)
        let validate = ValidateJWTSVIDRequest(audience: "a", svid: "t")
        #expect(try roundTrip(validate) == validate)
        #expect(try roundTrip(ValidateJWTSVIDResponse(spiffeID: "s")) == ValidateJWTSVIDResponse(spiffeID: "s"))
    }

    @Test func emptyMessagesEncodeToNoBytes() throws {
        #expect(DiscoveryRequest().wireBytes().isEmpty)
        #expect(X509SVIDRequest().wireBytes().isEmpty)
        #expect(try DiscoveryResponse(wireBytes: []) == DiscoveryResponse())
    }

    @Test func decodesFromASlice() throws {
        let bytes = [0, 0, 0, 0, 0] + AnyMessage(packing: Self.tlsSecret).wireBytes()
        let any = try AnyMessage(wireBytes: bytes[5...])
        #expect(try any.unpack(Secret.self) == Self.tlsSecret)
    }

    @Test func anyUnpackChecksTheTypeURL() throws {
        let any = AnyMessage(packing: Self.tlsSecret)
        #expect(any.typeURL == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")
        #expect(any.holds(Secret.self))
        #expect(!any.holds(SPIFFECertValidatorConfig.self))
        #expect(throws: WireError.unexpectedType(expected: SPIFFECertValidatorConfig.typeURL, actual: any.typeURL)) {
            try any.unpack(SPIFFECertValidatorConfig.self)
        }
        // Only the last path segment names the type (any host is allowed, per protobuf).
        let otherHost = AnyMessage(
            typeURL: "example.com/envoy.extensions.transport_sockets.tls.v3.Secret", value: any.value)
        #expect(try otherHost.unpack(Secret.self) == Self.tlsSecret)
    }
}

/// istio.v1.auth messages (Protos/istio_ca.proto): field numbers as istio/api's ca.proto.
@Suite struct IstioCARoundTripTests {
    @Test func requestAndResponseRoundTrip() throws {
        let request = IstioCertificateRequest(
            csr: "-----BEGIN CERTIFICATE REQUEST-----\nMII\n", validityDuration: 86_400)
        #expect(try IstioCertificateRequest(wireBytes: request.wireBytes()) == request)
        let response = IstioCertificateResponse(certChain: ["leaf", "intermediate", "root"])
        #expect(try IstioCertificateResponse(wireBytes: response.wireBytes()) == response)
    }

    @Test func wireBytesUseUpstreamFieldNumbers() {
        // csr = 1 (tag 0x0a), validity_duration = 3 (varint, tag 0x18).
        #expect(IstioCertificateRequest(csr: "A", validityDuration: 5).wireBytes() == [0x0a, 0x01, 0x41, 0x18, 0x05])
        // cert_chain = 1, repeated string.
        #expect(IstioCertificateResponse(certChain: ["a", "b"]).wireBytes() == [0x0a, 0x01, 0x61, 0x0a, 0x01, 0x62])
    }

    @Test func oversizedResponsesAreRefusedBeforeDecoding() {
        let bytes = IstioCertificateResponse(certChain: [String(repeating: "x", count: 2000)]).wireBytes()
        #expect(throws: WireError.self) { try IstioCertificateResponse(wireBytes: bytes, limit: 1000) }
    }
}
