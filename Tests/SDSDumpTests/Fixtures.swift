import GRPC
import PKI
import SDSDump
import TestSupport
import Wire

/// Secrets as a server would send them, made by a test CA at the fixed time `FakeClock.defaultStart`.
struct Fixtures {
    static let now = FakeClock.defaultStart
    let ca: TestCA
    let leafChain: [Certificate]
    let leafKey: PrivateKey

    init() throws {
        ca = try TestCA(now: Self.now)
        (leafChain, leafKey) = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: "spiffe://example.org/ns/demo/sa/dump"))
    }

    func certificateSecret(name: String = "default") throws -> Secret {
        Secret(
            name: name,
            kind: .tlsCertificate(
                TLSCertificate(
                    certificateChain: .inlineBytes(Array(Certificate.pem(leafChain).utf8)),
                    privateKey: .inlineBytes(Array(try leafKey.pkcs8PEM().utf8)))))
    }

    func bundleSecret(name: String = "ROOTCA", root: Certificate? = nil) -> Secret {
        Secret(
            name: name,
            kind: .validationContext(
                CertificateValidationContext(trustedCA: .inlineBytes(Array((root ?? ca.root).pem.utf8)))))
    }

    static func sotwResponse(_ secrets: [Secret], version: String, nonce: String) -> DiscoveryResponse {
        DiscoveryResponse(
            versionInfo: version, resources: secrets.map { AnyMessage(packing: $0) }, typeURL: Secret.typeURL,
            nonce: nonce)
    }

    static func deltaResponse(_ secret: Secret, version: String, nonce: String) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse(
            resources: [Resource(name: secret.name, version: version, resource: AnyMessage(packing: secret))],
            typeURL: Secret.typeURL, nonce: nonce)
    }
}

extension DumpSession.Action {
    var sotwRequest: (stream: Int, request: DiscoveryRequest)? {
        switch self {
        case .openSotW(let stream, let request), .sendSotW(let stream, let request): (stream, request)
        default: nil
        }
    }

    var deltaRequest: (stream: Int, request: DeltaDiscoveryRequest)? {
        switch self {
        case .openDelta(let stream, let request), .sendDelta(let stream, let request): (stream, request)
        default: nil
        }
    }

    var update: DumpUpdate? {
        if case .emit(let update) = self { return update }
        return nil
    }

    var outcome: DumpOutcome? {
        if case .finish(let outcome) = self { return outcome }
        return nil
    }
}
