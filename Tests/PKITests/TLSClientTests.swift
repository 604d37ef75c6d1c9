import PKI
import TLSTestServer
import TestSupport
import Testing

/// TLSClient against a real OpenSSL server (TLSServer), in memory: no socket, bytes moved by the test.
@Suite struct TLSClientTests {
    struct Peer {
        let ca: TestCA
        let server: TLSServer

        init(dnsName: String = "istiod.istio-system.svc", alpn: String? = "h2", maxTLS11: Bool = false) throws {
            ca = try TestCA()
            let key = try PrivateKey.generate()
            let certificate = try CertificateBuilder(
                subject: DistinguishedName(commonName: "istiod"), publicKey: key.publicKey,
                serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: ca.now - 60,
                notAfter: ca.now + 86_400 * 365 * 5, keyUsage: [.digitalSignature], extendedKeyUsage: [.serverAuth],
                dnsSANs: [dnsName]
            ).sign(issuer: ca.root, issuerKey: ca.rootKey)
            server = try TLSServer(chain: [certificate], key: key, alpn: alpn, maxTLS11: maxTLS11)
        }
    }

    /// Moves bytes both ways until neither side has anything to say; `chunk` bytes at a time.
    @discardableResult
    func pump(_ client: TLSClient, _ server: TLSServer, chunk: Int = .max) -> (toServer: [UInt8], toClient: [UInt8]) {
        var serverGot: [UInt8] = []
        var clientGot: [UInt8] = []
        for _ in 0..<10_000 {
            let c = client.takeCiphertext()
            for start in stride(from: 0, to: c.count, by: min(chunk, max(c.count, 1))) {
                serverGot += server.receive(Array(c[start..<min(start + chunk, c.count)]))
            }
            let s = server.takeCiphertext()
            for start in stride(from: 0, to: s.count, by: min(chunk, max(s.count, 1))) {
                clientGot += s[start..<min(start + chunk, s.count)].withUnsafeBytes { client.receive($0) }
            }
            if c.isEmpty && s.isEmpty { break }
        }
        return (serverGot, clientGot)
    }

    func client(trusting roots: [Certificate], name: String = "istiod.istio-system.svc") throws -> TLSClient {
        try TLSClient(configuration: TLSClientConfiguration(trust: .roots(roots), serverName: name))
    }

    @Test(arguments: [Int.max, 1])
    func handshakeVerifiesTheServerAndAgreesOnH2(chunk: Int) throws {
        let peer = try Peer()
        let client = try client(trusting: [peer.ca.root])
        client.send(Array("PRI * HTTP/2.0".utf8))
        let (serverGot, _) = pump(client, peer.server, chunk: chunk)
        #expect(client.state == .established(alpn: "h2"))
        #expect(peer.server.state == .established(alpn: "h2"))
        #expect(serverGot == Array("PRI * HTTP/2.0".utf8), "held plaintext written once verified")
        peer.server.send(Array("SETTINGS".utf8))
        let (_, clientGot) = pump(client, peer.server, chunk: chunk)
        #expect(clientGot == Array("SETTINGS".utf8))
    }

    @Test func anUntrustedServerIsRefusedAndNoPlaintextLeaves() throws {
        let peer = try Peer()
        let secret = Array("authorization: Bearer secret-token".utf8)
        let client = try client(trusting: [try TestCA().root])
        client.send(secret)
        let (serverGot, _) = pump(client, peer.server)
        guard case .failed(let reason) = client.state else {
            Issue.record("expected a failure, got \(client.state)")
            return
        }
        #expect(reason.contains("server certificate rejected"))
        #expect(serverGot.isEmpty, "the server decrypted nothing")
        // The client's alert reached the server, naming why.
        guard case .failed(let serverSaw) = peer.server.state else {
            Issue.record("the server did not hear the alert: \(peer.server.state)")
            return
        }
        #expect(serverSaw.contains("unknown ca"), "\(serverSaw)")
    }

    @Test func aWrongServerNameIsRefused() throws {
        let peer = try Peer(dnsName: "other.example")
        let client = try client(trusting: [peer.ca.root])
        client.send(Array("token".utf8))
        let (serverGot, _) = pump(client, peer.server)
        guard case .failed(let reason) = client.state else {
            Issue.record("expected a failure, got \(client.state)")
            return
        }
        #expect(reason.contains("hostname mismatch"))
        #expect(serverGot.isEmpty)
    }

    @Test func aServerThatIgnoresALPNIsRefused() throws {
        let peer = try Peer(alpn: nil)
        let client = try client(trusting: [peer.ca.root])
        pump(client, peer.server)
        guard case .failed(let reason) = client.state else {
            Issue.record("expected a failure, got \(client.state)")
            return
        }
        #expect(reason.contains("ALPN"))
    }

    @Test func tlsBelow12IsRefused() throws {
        let peer = try Peer(maxTLS11: true)
        let client = try client(trusting: [peer.ca.root])
        pump(client, peer.server)
        guard case .failed(let reason) = client.state else {
            Issue.record("expected a failure, got \(client.state)")
            return
        }
        #expect(reason.contains("version"), "\(reason)")
    }

    @Test func anIPAddressIsMatchedAgainstIPSANsNotDNSNames() throws {
        // The server's certificate names a DNS name only: an address is not it.
        let peer = try Peer(dnsName: "127.0.0.1")
        let client = try client(trusting: [peer.ca.root], name: "127.0.0.1")
        pump(client, peer.server)
        #expect(!client.isEstablished)
    }
}
