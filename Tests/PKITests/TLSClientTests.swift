import Glibc
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

    /// Connections on one context resume the session the previous one got (no second chain verification), for
    /// the same server name only; a context trusting other roots starts afresh.
    @Test func aSecondConnectionResumesTheSessionOfTheFirst() throws {
        let peer = try Peer()
        let context = try TLSClientContext(trust: .roots([peer.ca.root]))
        let first = try TLSClient(context: context, serverName: "istiod.istio-system.svc")
        first.send(Array("one".utf8))
        #expect(pump(first, peer.server).toServer == Array("one".utf8))
        #expect(first.state == .established(alpn: "h2"))
        #expect(!first.resumedSession)

        let nextServer = try TLSServer(nextConnectionOf: peer.server)
        let second = try TLSClient(context: context, serverName: "istiod.istio-system.svc")
        second.send(Array("two".utf8))
        #expect(pump(second, nextServer).toServer == Array("two".utf8))
        #expect(second.state == .established(alpn: "h2"))
        #expect(second.resumedSession && nextServer.sessionReused)

        let otherContext = try TLSClientContext(trust: .roots([peer.ca.root]))
        let third = try TLSClient(context: otherContext, serverName: "istiod.istio-system.svc")
        let thirdServer = try TLSServer(nextConnectionOf: peer.server)
        pump(third, thirdServer)
        #expect(third.state == .established(alpn: "h2"))
        #expect(!third.resumedSession, "sessions belong to the context that verified them")
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

    @Test func withNoALPNOfferedAServerWithoutALPNIsFine() throws {
        let peer = try Peer(alpn: nil)
        let client = try TLSClient(
            configuration: TLSClientConfiguration(
                trust: .roots([peer.ca.root]), serverName: "istiod.istio-system.svc", alpn: []))
        client.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        let (serverGot, _) = pump(client, peer.server)
        #expect(client.state == .established(alpn: ""))
        #expect(serverGot == Array("GET / HTTP/1.1\r\n\r\n".utf8))
    }

    // MARK: TLSTrust.spiffe (a bundle endpoint's https_spiffe profile)

    static let endpointID = "spiffe://example.org/spire/server"

    /// A server presenting `chain` (an X.509-SVID from a CA valid around the real time: OpenSSL checks the wall
    /// clock), and a client expecting `endpointID` under `roots`, whatever host it dialled.
    func spiffePair(_ chain: [Certificate], key: PrivateKey, roots: [Certificate], host: String = "10.1.2.3") throws
        -> (TLSClient, TLSServer)
    {
        let server = try TLSServer(chain: chain, key: key, alpn: nil)
        let client = try TLSClient(
            configuration: TLSClientConfiguration(
                trust: .spiffe(roots: roots, id: Self.endpointID), serverName: host, alpn: []))
        return (client, server)
    }

    static func realTimeCA() throws -> TestCA {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return try TestCA(now: Timestamp(secondsSinceEpoch: Int64(now.tv_sec)))
    }

    @Test(arguments: ["10.1.2.3", "bundles.example.org"])
    func spiffeTrustAcceptsTheExpectedSVIDWhateverTheHost(host: String) throws {
        let ca = try Self.realTimeCA()
        let (chain, key) = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: Self.endpointID))
        let (client, server) = try spiffePair(chain, key: key, roots: [ca.root], host: host)
        client.send(Array("GET".utf8))
        let (serverGot, _) = pump(client, server)
        #expect(client.state == .established(alpn: ""))
        #expect(serverGot == Array("GET".utf8))
    }

    @Test func spiffeTrustAcceptsAnIntermediate() throws {
        let ca = try Self.realTimeCA()
        var options = TestCA.LeafOptions(spiffeID: Self.endpointID)
        options.intermediate = try ca.makeIntermediate()
        let (chain, key) = try ca.makeLeaf(options)
        let (client, server) = try spiffePair(chain, key: key, roots: [ca.root])
        pump(client, server)
        #expect(client.isEstablished, "\(client.state)")
    }

    @Test(arguments: [
        ([Self.endpointID + "/not"], "its SPIFFE ID is spiffe://example.org/spire/server/not, expected"),
        (
            [Self.endpointID, "spiffe://example.org/other"],
            "its SPIFFE ID is spiffe://example.org/spire/server, spiffe"
        ),
        ([], "its SPIFFE ID is no URI SAN"),
        (["spiffe://example.org/spire/server\u{0}"], "expected spiffe://example.org/spire/server"),
    ])
    func spiffeTrustRefusesAnyOtherIDAndNoPlaintextLeaves(uris: [String], expected: String) throws {
        let ca = try Self.realTimeCA()
        var options = TestCA.LeafOptions(spiffeID: Self.endpointID)
        options.uriSANs = uris
        let (chain, key) = try ca.makeLeaf(options)
        let (client, server) = try spiffePair(chain, key: key, roots: [ca.root])
        client.send(Array("GET /bundle".utf8))
        let (serverGot, _) = pump(client, server)
        guard case .failed(let reason) = client.state else {
            Issue.record("expected a failure, got \(client.state)")
            return
        }
        #expect(reason.hasPrefix("server certificate rejected: ") && reason.contains(expected), "\(reason)")
        #expect(serverGot.isEmpty, "the request never left")
    }

    @Test func spiffeTrustRefusesACALeafAndAnotherRoot() throws {
        let ca = try Self.realTimeCA()
        var options = TestCA.LeafOptions(spiffeID: Self.endpointID)
        options.isCA = true
        options.keyUsage = [.digitalSignature, .keyCertSign]
        let caLeaf = try ca.makeLeaf(options)
        let (client, server) = try spiffePair(caLeaf.chain, key: caLeaf.key, roots: [ca.root])
        pump(client, server)
        #expect(!client.isEstablished, "\(client.state)")

        let good = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: Self.endpointID))
        let (other, otherServer) = try spiffePair(good.chain, key: good.key, roots: [try Self.realTimeCA().root])
        pump(other, otherServer)
        guard case .failed(let reason) = other.state else {
            Issue.record("expected a failure, got \(other.state)")
            return
        }
        #expect(reason.contains("unable to get local issuer certificate"), "\(reason)")
    }

    @Test func spiffeTrustNeedsRootsAndAnID() throws {
        #expect(throws: PKIError.self) {
            try TLSClient(
                configuration: TLSClientConfiguration(
                    trust: .spiffe(roots: [], id: Self.endpointID), serverName: "h", alpn: []))
        }
        let ca = try Self.realTimeCA()
        #expect(throws: PKIError.self) {
            try TLSClient(
                configuration: TLSClientConfiguration(trust: .spiffe(roots: [ca.root], id: ""), serverName: "h"))
        }
    }
}
