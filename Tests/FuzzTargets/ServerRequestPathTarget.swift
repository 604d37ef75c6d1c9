import GRPC
import H2
import Logging
import PKI
import SDSAgent
import SPIFFE
import Servers
import TestSupport
import Wire

/// The whole server request path: the input is what a client wrote on the socket. It goes into a fresh
/// `GRPCServerConnection` (nghttp2 server session, gRPC framing and routing) in front of a real
/// `SecretDiscoveryService` whose cache holds real secrets from a test CA; everything the server writes is drained.
/// Halfway through, the secrets change, so pushes to whatever streams the input opened are exercised too.
enum ServerRequestPathTarget {
    /// Two generations of the names an agent serves (`default`, the SPIFFE ID, `ROOTCA`, the trust domain ID).
    struct Fixture: Sendable {
        let generations: [[Secret]]
    }

    static let fixture: Fixture = {
        do {
            let ca = try TestCA()
            let id = "spiffe://\(ca.trustDomain.name)/ns/default/sa/fuzz"
            let generations = try (0..<2).map { _ in
                let leaf = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: id))
                let certificate = Secret.Kind.tlsCertificate(
                    TLSCertificate(
                        certificateChain: .inlineBytes(Array(Certificate.pem(leaf.chain).utf8)),
                        privateKey: .inlineBytes(Array(try leaf.key.pkcs8PEM().utf8))))
                let bundle = Secret.Kind.validationContext(
                    CertificateValidationContext(trustedCA: .inlineBytes(Array(ca.bundle.pem.utf8))))
                return [
                    Secret(name: SecretName.istioWorkload, kind: certificate), Secret(name: id, kind: certificate),
                    Secret(name: SecretName.istioRoot, kind: bundle),
                    Secret(name: ca.trustDomain.idString, kind: bundle),
                ]
            }
            return Fixture(generations: generations)
        } catch {
            fatalError("fuzz fixture: \(error)")
        }
    }()

    static func run(_ input: UnsafeRawBufferPointer) {
        let fixture = Self.fixture
        let service = SecretDiscoveryService(
            classifier: { name in
                SecretName(name, ownID: "spiffe://example.org/ns/default/sa/fuzz", ownTrustDomain: "example.org")
                    == .unknown ? .neverServed : .served
            },
            logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
        let router = GRPCRouter()
        service.register(on: router)
        let connection = GRPCServerConnection(router: router)
        _ = service.publish(fixture.generations[0])
        var sink: [UInt8] = []
        let half = input.count / 2
        for (index, part) in [input[..<half], input[half...]].enumerated() {
            do {
                try connection.session.receive(UnsafeRawBufferPointer(rebasing: part))
            } catch {
                break
            }
            drain(connection, into: &sink)
            if index == 0 {
                _ = service.publish(fixture.generations[1])
                drain(connection, into: &sink)
            }
        }
        connection.beginDrain(finishCalls: GRPCStatus(.unavailable, "fuzz input ended"))
        drain(connection, into: &sink)
        connection.connectionLost()
    }

    private static func drain(_ connection: GRPCServerConnection, into sink: inout [UInt8]) {
        // Bounded: a session that kept producing output for ever would be a finding (a hang), not a loop here.
        for _ in 0..<64 {
            sink.removeAll(keepingCapacity: true)
            guard connection.session.takeOutput(into: &sink) > 0 else { return }
        }
    }
}
