import Foundation
import GRPC
import Glibc
import Issuance
import IstioCA
import PKI
import SPIFFE
import TLSTestServer
import TestSupport
import Testing
import Transport
import Wire

/// The event loop as a `Scheduler` (the WorkloadAPI module has the agent's; this target does not link it).
final class LoopScheduler: Scheduler {
    let loop: EventLoop
    init(loop: EventLoop) { self.loop = loop }
    struct Handle: ScheduledTimer {
        let timer: EventLoop.Timer
        func cancel() { timer.cancel() }
    }
    func schedule(after seconds: Double, _ action: @escaping () -> Void) -> any ScheduledTimer {
        Handle(timer: loop.schedule(after: seconds, action))
    }
}

/// A small istiod in this process, on the same event loop: TCP listener → TLSServer → HTTP/2 + gRPC server →
/// CreateCertificate, signing with an intermediate. It records what reached it.
final class InProcessIstiod {
    struct Seen {
        var metadata: [String: String]
        var csrURIs: [String]
    }

    let loop: EventLoop
    let mesh: FakeMeshCA
    let servingChain: [Certificate]
    let servingKey: PrivateKey
    let router = GRPCRouter()
    private(set) var port: UInt16 = 0
    private var listener: Int32 = -1
    private var connections: [ServerConnection] = []
    var seen: [Seen] = []
    var handshakesStarted = 0

    init(loop: EventLoop, mesh: FakeMeshCA) throws {
        self.loop = loop
        self.mesh = mesh
        servingKey = try PrivateKey.generate()
        let cert = try CertificateBuilder(
            subject: DistinguishedName(commonName: "istiod"), publicKey: servingKey.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: mesh.ca.now - 60,
            notAfter: mesh.ca.now + 86_400 * 3650, keyUsage: [.digitalSignature], extendedKeyUsage: [.serverAuth],
            dnsSANs: ["istiod.istio-system.svc"]
        ).sign(issuer: mesh.ca.root, issuerKey: mesh.ca.rootKey)
        servingChain = [cert]
        router.register(IstioCertificateServiceMethod.createCertificate.path) { [unowned self] call in
            // Request headers are the handler's to read now (the call keeps none of them after).
            let metadata = Dictionary(call.metadata, uniquingKeysWith: { a, _ in a })
            call.onMessage = { [unowned self] bytes in
                do {
                    let request = try IstioCertificateRequest(wireBytes: bytes)
                    let chain = try self.sign(request.csr)
                    self.seen.append(
                        Seen(
                            metadata: metadata,
                            csrURIs: chain.uris))
                    _ = call.send(IstioCertificateResponse(certChain: chain.pems).wireBytes())
                    call.finish(.ok)
                } catch {
                    call.finish(GRPCStatus(.invalidArgument, "\(error)"))
                }
            }
        }
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        _ = listen(listener, 16)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
        try loop.register(fd: listener, events: .readable) { [unowned self] _ in self.acceptAll() }
    }

    deinit {
        loop.deregister(fd: listener)
        close(listener)
    }

    private func acceptAll() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            handshakesStarted += 1
            if let connection = try? ServerConnection(fd: fd, istiod: self) { connections.append(connection) }
        }
    }

    /// Signs the CSR's key for the CSR's URI SAN: leaf → intermediate → root.
    private func sign(_ csrPEM: String) throws -> (pems: [String], uris: [String]) {
        let body = csrPEM.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let der = Data(base64Encoded: body) else { throw PKIError(operation: "CSR base64") }
        let csr = try CertificateSigningRequest(der: [UInt8](der))
        guard csr.signatureIsValid, let key = csr.publicKey else { throw PKIError(operation: "CSR signature") }
        let leaf = try CertificateBuilder(
            subject: DistinguishedName([]), publicKey: key, serialNumber: try CertificateBuilder.randomSerialNumber(),
            notBefore: mesh.ca.now - 60, notAfter: mesh.ca.now + 3600, keyUsage: [.digitalSignature],
            extendedKeyUsage: [.serverAuth, .clientAuth], uriSANs: csr.uriSANs
        ).sign(issuer: mesh.intermediate.certificate, issuerKey: mesh.intermediate.key)
        return ([leaf.pem, mesh.intermediate.certificate.pem, mesh.ca.root.pem], csr.uriSANs)
    }
}

/// One accepted connection: socket ⇄ TLSServer ⇄ gRPC server session.
final class ServerConnection: ConnectionDelegate {
    let tls: TLSServer
    let grpc: GRPCServerConnection
    var socket: Connection?
    private var pending: [UInt8] = []

    init(fd: Int32, istiod: InProcessIstiod) throws {
        tls = try TLSServer(chain: istiod.servingChain, key: istiod.servingKey)
        grpc = GRPCServerConnection(router: istiod.router)
        socket = try Connection(fd: fd, loop: istiod.loop, delegate: nil)
        socket?.delegate = self
    }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        let plaintext = tls.receive(Array(bytes))
        if !plaintext.isEmpty { try? grpc.session.receive(plaintext) }
        while grpc.session.takeOutput(into: &pending, maxBytes: 64 * 1024) > 0 {}
        // The server's SETTINGS exist before the handshake ends: hold them until TLS can carry them.
        if !pending.isEmpty, case .established = tls.state {
            tls.send(pending)
            pending = []
        }
        let ciphertext = tls.takeCiphertext()
        if !ciphertext.isEmpty { connection.write(ciphertext) }
        if case .failed = tls.state { connection.close() }
    }
    func connectionDrained(_ connection: Connection) {}
    func connectionClosed(_ connection: Connection, error: SystemError?) {}
}

@Suite(.serialized) struct IstioCAIssuerTests {
    struct Harness {
        let loop: EventLoop
        let istiod: InProcessIstiod
        let directory: String
        let issuer: IstioCAIssuer
    }

    func harness(serverName: String = "istiod.istio-system.svc", trustOtherRoot: Bool = false) throws -> Harness {
        let loop = try EventLoop()
        let mesh = try FakeMeshCA()
        let istiod = try InProcessIstiod(loop: loop, mesh: mesh)
        var template = Array("/tmp/sds-istioca-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let root = trustOtherRoot ? try TestCA().root : mesh.ca.root
        try root.pem.write(toFile: directory + "/root-cert.pem", atomically: true, encoding: .utf8)
        try "header.payload.signature\n".write(toFile: directory + "/token", atomically: true, encoding: .utf8)
        let configuration = IstioCAConfiguration(
            address: TCPEndpoint(host: "127.0.0.1", port: istiod.port), rootCertPath: directory + "/root-cert.pem",
            serverName: serverName, tokenPath: directory + "/token", clusterID: "east",
            extraHeaders: [("tenant", "blue")], keyAlgorithm: .ecdsaP256,
            spiffeID: try SPIFFEID(parsing: workloadID), requestedTTL: 3600, rotation: RotationPolicy())
        let issuer = IstioCAIssuer(
            configuration: configuration, loop: loop, scheduler: LoopScheduler(loop: loop),
            clock: FakeClock(mesh.ca.now), worker: try OffLoopWorker(loop: loop))
        return Harness(loop: loop, istiod: istiod, directory: directory, issuer: issuer)
    }

    @Test func getsItsCertificateOverTLSWithTheTokenAndHeaders() throws {
        let h = try harness()
        var updates: [IdentityUpdate] = []
        var errors: [IssuerError] = []
        h.issuer.start(onUpdate: { updates.append($0) }, onError: { errors.append($0) })
        let delivered = h.loop.run(until: { !updates.isEmpty || !errors.isEmpty }, timeout: 10)
        #expect(delivered && errors.isEmpty, "\(errors)")
        h.issuer.stop()
        #expect(updates.first?.svid.spiffeID.uri == workloadID)
        #expect(updates.first?.bundles.first?.certificates == [h.istiod.mesh.ca.root])
        let seen = try #require(h.istiod.seen.first)
        #expect(seen.metadata["authorization"] == "Bearer header.payload.signature", "trimmed, re-read per CSR")
        #expect(seen.metadata["clusterid"] == "east")
        #expect(seen.metadata["tenant"] == "blue")
        #expect(seen.csrURIs == [workloadID])
    }

    @Test(arguments: [(false, "not-istiod.example"), (true, "istiod.istio-system.svc")])
    func anUnverifiedServerNeverReceivesTheRequest(trustOtherRoot: Bool, serverName: String) throws {
        let h = try harness(serverName: serverName, trustOtherRoot: trustOtherRoot)
        var errors: [IssuerError] = []
        h.issuer.start(onUpdate: { _ in }, onError: { errors.append($0) })
        // Five tries (100 + 200 + 400 + 800 ms apart), then one report for the round.
        #expect(h.loop.run(until: { !errors.isEmpty }, timeout: 10))
        h.issuer.stop()
        #expect(h.istiod.handshakesStarted == IstioCAClientStateMachine.maxTries)
        #expect(h.istiod.seen.isEmpty, "no request, so no token, reached the server")
        #expect(errors.first?.message.contains("server certificate rejected") == true, "\(errors)")
    }

    @Test func stopSilencesEverything() throws {
        let h = try harness()
        var calls = 0
        h.issuer.start(onUpdate: { _ in calls += 1 }, onError: { _ in calls += 1 })
        h.issuer.stop()
        _ = h.loop.run(until: { false }, timeout: 0.5)
        #expect(calls == 0)
        #expect(h.istiod.seen.isEmpty)
    }
}
