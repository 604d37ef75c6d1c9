import Foundation
import Testing
import Wire

private let secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

/// Bytes encoded by the reference runtime (xds-protos, py-spiffe) decode in Swift, field by field.
@Suite struct PythonToSwiftTests {
    @Test func discoveryRequestWithEnvoySizedNode() throws {
        let encoded = try PythonPeer.encoded("discovery_request")
        #expect(encoded.type == DiscoveryRequest.protoName)
        #expect(encoded.bytes.count > 60_000)
        let request = try DiscoveryRequest(wireBytes: encoded.bytes)
        #expect(request.versionInfo == "v1")
        #expect(request.resourceNames == ["default", "ROOTCA"])
        #expect(request.typeURL == secretTypeURL)
        #expect(request.typeURL == Secret.typeURL)
        #expect(request.responseNonce == "nonce-1")
        #expect(request.errorDetail == RPCStatus(code: 13, message: "Failed to load certificate chain from <inline>"))
        let node = try #require(request.node)
        #expect(node.id == "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local")
        #expect(node.cluster == "app.default")
        #expect(node.userAgentName == "envoy")
        #expect(node.userAgentVersion == "1.40.0")
        // Unknown fields (metadata, 500 extensions, client features) survive: the node is kept byte for byte.
        #expect(node.rawBytes == encoded.nodeBytes)
        #expect(node.wireBytes() == encoded.nodeBytes)
    }

    @Test func deltaDiscoveryRequestWithEnvoySizedNode() throws {
        let encoded = try PythonPeer.encoded("delta_discovery_request")
        let request = try DeltaDiscoveryRequest(wireBytes: encoded.bytes)
        #expect(request.typeURL == secretTypeURL)
        #expect(request.resourceNamesSubscribe == ["default", "spiffe://example.org"])
        #expect(request.resourceNamesUnsubscribe == ["old"])
        #expect(request.initialResourceVersions == ["default": "3", "ROOTCA": "7"])
        #expect(request.responseNonce == "nonce-2")
        #expect(request.errorDetail?.code == 13)
        #expect(request.node?.id == "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local")
        #expect(request.node?.userAgentVersion == "1.40.0")
        #expect(request.node?.rawBytes == encoded.nodeBytes)
    }

    @Test func discoveryResponseWithTLSCertificateSecret() throws {
        let response = try DiscoveryResponse(wireBytes: PythonPeer.encoded("discovery_response").bytes)
        #expect(response.versionInfo == "42")
        #expect(response.typeURL == secretTypeURL)
        #expect(response.nonce == "n-42")
        #expect(response.resources.count == 1)
        let any = try #require(response.resources.first)
        #expect(any.typeURL == secretTypeURL)
        let secret = try any.unpack(Secret.self)
        #expect(
            secret
                == Secret(
                    name: "default",
                    kind: .tlsCertificate(
                        TLSCertificate(
                            certificateChain: .inlineBytes(pattern(1, 1500)),
                            privateKey: .inlineBytes(pattern(2, 241))))))
    }

    @Test func deltaDiscoveryResponseWithTwoResources() throws {
        let response = try DeltaDiscoveryResponse(wireBytes: PythonPeer.encoded("delta_discovery_response").bytes)
        #expect(response.systemVersionInfo == "sys-9")
        #expect(response.typeURL == secretTypeURL)
        #expect(response.nonce == "n-9")
        #expect(response.removedResources == ["gone"])
        #expect(response.resources.map(\.name) == ["default", "ROOTCA"])
        #expect(response.resources.map(\.version) == ["5", "6"])
        let root: Secret = try #require(response.resources.last?.resource).unpack()
        #expect(
            root
                == Secret(
                    name: "ROOTCA",
                    kind: .validationContext(
                        CertificateValidationContext(trustedCA: .inlineString("-----BEGIN CERTIFICATE-----\nMIIB\n")))))
        let leaf: Secret = try #require(response.resources.first?.resource).unpack()
        #expect(leaf.name == "default")
    }

    @Test func secretWithSPIFFECertValidatorConfig() throws {
        let secret = try Secret(wireBytes: PythonPeer.encoded("secret_spiffe").bytes)
        #expect(secret.name == "ALL")
        guard case .validationContext(let context) = secret.kind else {
            Issue.record("expected a validation context, got \(String(describing: secret.kind))")
            return
        }
        #expect(context.trustedCA == nil)
        let validator = try #require(context.customValidatorConfig)
        #expect(validator.name == "envoy.tls.cert_validator.spiffe")
        #expect(validator.typedConfig.typeURL == SPIFFECertValidatorConfig.typeURL)
        let config = try validator.typedConfig.unpack(SPIFFECertValidatorConfig.self)
        #expect(
            config
                == SPIFFECertValidatorConfig(trustDomains: [
                    .init(name: "example.org", trustBundle: .inlineBytes(pattern(3, 900))),
                    .init(name: "other.org", trustBundle: .inlineString("-----BEGIN CERTIFICATE-----\n")),
                ]))
    }

    @Test func x509SVIDResponseWithFederatedBundles() throws {
        let response = try X509SVIDResponse(wireBytes: PythonPeer.encoded("x509_svid_response").bytes)
        #expect(
            response.svids == [
                X509SVIDMessage(
                    spiffeID: "spiffe://example.org/workload", x509SVID: pattern(4, 700), x509SVIDKey: pattern(5, 138),
                    bundle: pattern(6, 500), hint: "internal"),
                X509SVIDMessage(
                    spiffeID: "spiffe://example.org/other", x509SVID: pattern(7, 10), x509SVIDKey: pattern(8, 11),
                    bundle: pattern(9, 12)),
            ])
        #expect(response.crl == [pattern(10, 33)])
        #expect(
            response.federatedBundles == [
                "spiffe://other.org": pattern(11, 300), "spiffe://third.org": pattern(12, 301),
            ])
    }

    @Test func x509BundlesResponse() throws {
        let response = try X509BundlesResponse(wireBytes: PythonPeer.encoded("x509_bundles_response").bytes)
        #expect(response.crl == [pattern(13, 20), pattern(14, 21)])
        #expect(response.bundles == ["spiffe://example.org": pattern(15, 400), "spiffe://other.org": pattern(16, 401)])
    }

    @Test func jwtMessages() throws {
        let svids = try JWTSVIDResponse(wireBytes: PythonPeer.encoded("jwt_svid_response").bytes)
        #expect(
            svids.svids == [
                JWTSVIDMessage(spiffeID: "spiffe://example.org/w", svid: "eyJhbGciOiJFUzI1NiJ9.e30.sig", hint: "h")
            ])
        let bundles = try JWTBundlesResponse(wireBytes: PythonPeer.encoded("jwt_bundles_response").bytes)
        #expect(bundles.bundles == ["example.org": Array(#"{"keys":[]}"#.utf8)])
        // The claims Struct is not modelled: skipped, the rest decodes.
        let validated = try ValidateJWTSVIDResponse(wireBytes: PythonPeer.encoded("validate_jwt_svid_response").bytes)
        #expect(validated.spiffeID == "spiffe://example.org/w")
    }

    /// Swift decodes Envoy-sized requests and re-encodes them; the reference runtime parses exactly the
    /// message it sent, node included byte for byte.
    @Test(arguments: ["discovery_request", "delta_discovery_request"])
    func reencodedRequestIsTheSameMessage(name: String) throws {
        let encoded = try PythonPeer.encoded(name)
        let reencoded: [UInt8]
        if name == "discovery_request" {
            reencoded = try DiscoveryRequest(wireBytes: encoded.bytes).wireBytes()
        } else {
            reencoded = try DeltaDiscoveryRequest(wireBytes: encoded.bytes).wireBytes()
        }
        #expect(reencoded.count == encoded.bytes.count)
        let verdict = try PythonPeer.json(["check", name], stdin: PythonPeer.hex(reencoded))
        #expect(verdict["equal"] as? Bool == true)
        #expect(verdict["node_identical"] as? Bool == true)
    }
}

/// Bytes encoded by Swift decode in the reference runtime, field by field.
@Suite struct SwiftToPythonTests {
    static let tlsSecret = Secret(
        name: "spiffe://example.org/ns/default/sa/app",
        kind: .tlsCertificate(
            TLSCertificate(
                certificateChain: .inlineBytes(pattern(20, 1200)), privateKey: .inlineBytes(pattern(21, 121)))
        ))

    @Test func discoveryResponse() throws {
        let response = DiscoveryResponse(
            versionInfo: "7", resources: [AnyMessage(packing: Self.tlsSecret)], typeURL: Secret.typeURL, nonce: "abc")
        let json = try PythonPeer.decode(response)
        #expect(json["version_info"] as? String == "7")
        #expect(json["type_url"] as? String == secretTypeURL)
        #expect(json["nonce"] as? String == "abc")
        let resources = try #require(json["resources"] as? [[String: Any]])
        #expect(resources.count == 1)
        #expect(resources[0]["@type"] as? String == secretTypeURL)
        #expect(resources[0]["name"] as? String == "spiffe://example.org/ns/default/sa/app")
        let certificate = try #require(resources[0]["tls_certificate"] as? [String: Any])
        #expect(base64((certificate["certificate_chain"] as? [String: Any])?["inline_bytes"]) == pattern(20, 1200))
        #expect(base64((certificate["private_key"] as? [String: Any])?["inline_bytes"]) == pattern(21, 121))
    }

    @Test func deltaDiscoveryResponse() throws {
        let bundle = Secret(
            name: "spiffe://example.org",
            kind: .validationContext(CertificateValidationContext(trustedCA: .inlineString("PEM\n"))))
        let response = DeltaDiscoveryResponse(
            systemVersionInfo: "s1",
            resources: [
                Resource(name: "default", version: "3", resource: AnyMessage(packing: Self.tlsSecret)),
                Resource(name: "spiffe://example.org", version: "4", resource: AnyMessage(packing: bundle)),
            ],
            typeURL: Secret.typeURL, removedResources: ["unknown-name", "other"], nonce: "n1")
        let json = try PythonPeer.decode(response)
        #expect(json["system_version_info"] as? String == "s1")
        #expect(json["type_url"] as? String == secretTypeURL)
        #expect(json["nonce"] as? String == "n1")
        #expect(json["removed_resources"] as? [String] == ["unknown-name", "other"])
        let resources = try #require(json["resources"] as? [[String: Any]])
        #expect(resources.map { $0["name"] as? String } == ["default", "spiffe://example.org"])
        #expect(resources.map { $0["version"] as? String } == ["3", "4"])
        let second = try #require(resources[1]["resource"] as? [String: Any])
        #expect(second["@type"] as? String == secretTypeURL)
        #expect(
            (second["validation_context"] as? [String: Any]).flatMap { $0["trusted_ca"] as? [String: Any] }?[
                "inline_string"] as? String == "PEM\n")
    }

    /// SPIRE's per-Envoy switch in node metadata: what xds-protos encodes decodes to the flag, and a node built with
    /// it encodes as a Struct the Python peer reads back.
    @Test func disableSPIFFECertValidationInNodeMetadata() throws {
        let built = DiscoveryRequest(
            node: Node(id: "n", disableSPIFFECertValidation: true), resourceNames: ["ALL"], typeURL: Secret.typeURL)
        let json = try PythonPeer.decode(built)
        let metadata = try #require((json["node"] as? [String: Any])?["metadata"] as? [String: Any])
        #expect(metadata["disable_spiffe_cert_validation"] as? Bool == true)
        let decoded = try DiscoveryRequest(wireBytes: built.wireBytes())
        #expect(decoded.node?.disableSPIFFECertValidation == true)
        let plain = try DiscoveryRequest(
            wireBytes: DiscoveryRequest(node: Node(id: "n"), resourceNames: ["ALL"], typeURL: Secret.typeURL)
                .wireBytes())
        #expect(plain.node?.disableSPIFFECertValidation == false)
    }

    @Test func discoveryRequestWithSwiftBuiltNode() throws {
        let request = DiscoveryRequest(
            versionInfo: "v9",
            node: Node(
                id: "sds-dump", cluster: "cli", userAgentName: "sds-dump",
                userAgentVersion: "0.1.0"), resourceNames: ["default"], typeURL: Secret.typeURL, responseNonce: "x",
            errorDetail: RPCStatus(
                code: 3, message: "bad", details: [AnyMessage(packing: RPCStatus(code: 1, message: "inner"))]))
        let json = try PythonPeer.decode(request)
        #expect(json["version_info"] as? String == "v9")
        #expect(json["resource_names"] as? [String] == ["default"])
        #expect(json["response_nonce"] as? String == "x")
        let node = try #require(json["node"] as? [String: Any])
        #expect(node["id"] as? String == "sds-dump")
        #expect(node["cluster"] as? String == "cli")
        #expect(node["user_agent_name"] as? String == "sds-dump")
        #expect(node["user_agent_version"] as? String == "0.1.0")
        let status = try #require(json["error_detail"] as? [String: Any])
        #expect(status["code"] as? Int == 3)
        #expect(status["message"] as? String == "bad")
        let details = try #require(status["details"] as? [[String: Any]])
        #expect(details.first?["@type"] as? String == RPCStatus.typeURL)
        #expect(details.first?["message"] as? String == "inner")
    }

    @Test func deltaDiscoveryRequest() throws {
        let request = DeltaDiscoveryRequest(
            node: Node(id: "n"), typeURL: Secret.typeURL, resourceNamesSubscribe: ["a", "b"],
            resourceNamesUnsubscribe: ["c"], initialResourceVersions: ["a": "1", "b": "2", "z": "26"],
            responseNonce: "r", errorDetail: nil)
        let json = try PythonPeer.decode(request)
        #expect((json["node"] as? [String: Any])?["id"] as? String == "n")
        #expect(json["resource_names_subscribe"] as? [String] == ["a", "b"])
        #expect(json["resource_names_unsubscribe"] as? [String] == ["c"])
        #expect(json["initial_resource_versions"] as? [String: String] == ["a": "1", "b": "2", "z": "26"])
        #expect(json["response_nonce"] as? String == "r")
        #expect(json["error_detail"] == nil)
    }

    @Test func secretWithSPIFFECertValidatorConfig() throws {
        let config = SPIFFECertValidatorConfig(trustDomains: [
            .init(name: "example.org", trustBundle: .inlineBytes(pattern(30, 64))),
            .init(name: "other.org", trustBundle: .inlineString("PEM")),
        ])
        let secret = Secret(
            name: "ALL",
            kind: .validationContext(
                CertificateValidationContext(
                    customValidatorConfig: TypedExtensionConfig(
                        name: "envoy.tls.cert_validator.spiffe", typedConfig: AnyMessage(packing: config)))))
        let json = try PythonPeer.decode(secret)
        #expect(json["name"] as? String == "ALL")
        let validator = try #require(
            (json["validation_context"] as? [String: Any])?["custom_validator_config"] as? [String: Any])
        #expect(validator["name"] as? String == "envoy.tls.cert_validator.spiffe")
        let typed = try #require(validator["typed_config"] as? [String: Any])
        #expect(typed["@type"] as? String == SPIFFECertValidatorConfig.typeURL)
        let domains = try #require(typed["trust_domains"] as? [[String: Any]])
        #expect(domains.map { $0["name"] as? String } == ["example.org", "other.org"])
        #expect(base64((domains[0]["trust_bundle"] as? [String: Any])?["inline_bytes"]) == pattern(30, 64))
        #expect((domains[1]["trust_bundle"] as? [String: Any])?["inline_string"] as? String == "PEM")
    }

    @Test func x509SVIDResponse() throws {
        let response = X509SVIDResponse(
            svids: [
                X509SVIDMessage(
                    spiffeID: "spiffe://example.org/a", x509SVID: pattern(40, 300), x509SVIDKey: pattern(41, 100),
                    bundle: pattern(42, 200), hint: "h")
            ],
            crl: [pattern(43, 5)], federatedBundles: ["spiffe://b.org": pattern(44, 50), "spiffe://c.org": [1]])
        let json = try PythonPeer.decode(response)
        let svids = try #require(json["svids"] as? [[String: Any]])
        #expect(svids.count == 1)
        #expect(svids[0]["spiffe_id"] as? String == "spiffe://example.org/a")
        #expect(base64(svids[0]["x509_svid"]) == pattern(40, 300))
        #expect(base64(svids[0]["x509_svid_key"]) == pattern(41, 100))
        #expect(base64(svids[0]["bundle"]) == pattern(42, 200))
        #expect(svids[0]["hint"] as? String == "h")
        #expect((json["crl"] as? [Any])?.map { base64($0) } == [pattern(43, 5)])
        let federated = try #require(json["federated_bundles"] as? [String: Any])
        #expect(federated.mapValues { base64($0) } == ["spiffe://b.org": pattern(44, 50), "spiffe://c.org": [1]])
    }

    @Test func x509BundlesResponse() throws {
        let response = X509BundlesResponse(crl: [], bundles: ["spiffe://example.org": pattern(50, 70)])
        let json = try PythonPeer.decode(response)
        #expect(json["crl"] == nil)
        #expect(
            (json["bundles"] as? [String: Any])?.mapValues { base64($0) } == ["spiffe://example.org": pattern(50, 70)])
    }

    @Test func jwtMessages() throws {
        let request = try PythonPeer.decode(JWTSVIDRequest(audience: ["a", "b"], spiffeID: "spiffe://x/y"))
        #expect(request["audience"] as? [String] == ["a", "b"])
        #expect(request["spiffe_id"] as? String == "spiffe://x/y")
        let validate = try PythonPeer.decode(ValidateJWTSVIDRequest(audience: "a", svid: "t.o.k"))
        #expect(validate["audience"] as? String == "a")
        #expect(validate["svid"] as? String == "t.o.k")
        let bundles = try PythonPeer.decode(JWTBundlesResponse(bundles: ["td": [0x7b, 0x7d]]))
        #expect((bundles["bundles"] as? [String: Any])?.mapValues { base64($0) } == ["td": [0x7b, 0x7d]])
        let svids = try PythonPeer.decode(JWTSVIDResponse(svids: [JWTSVIDMessage(spiffeID: "s", svid: "v")]))
        #expect((svids["svids"] as? [[String: Any]])?.first?["svid"] as? String == "v")
        #expect(try PythonPeer.decode(JWTBundlesRequest()).isEmpty)
    }

    @Test func emptyRequestsDecode() throws {
        #expect(try PythonPeer.decode(X509SVIDRequest()).isEmpty)
        #expect(try PythonPeer.decode(X509BundlesRequest()).isEmpty)
    }
}

@Test func methodPathsMatchTheReferenceDescriptors() throws {
    let json = try PythonPeer.json(["paths"])
    let expected = Set(try #require(json["paths"] as? [String]))
    let ours = Set(SecretDiscoveryServiceMethod.allCases.map(\.path) + SpiffeWorkloadAPIMethod.allCases.map(\.path))
    #expect(ours == expected)
}
