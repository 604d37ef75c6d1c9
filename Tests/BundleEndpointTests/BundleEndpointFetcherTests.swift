import BundleEndpoint
import Foundation
import PKI
import SPIFFE
import TLSTestServer
import Testing
import Transport

/// A bundle endpoint in this process, on the same event loop: TCP listener → TLSServer → what `behavior` says.
/// It records the plaintext each connection received.
final class InProcessBundleEndpoint {
    enum Behavior {
        /// Answer the request with these bytes (one TLS record per `recordSize` bytes), then close (with
        /// close_notify when `closeNotify`, else a bare TCP close).
        case answer([UInt8], recordSize: Int = .max, closeNotify: Bool = false)
        /// Accept, handshake, read the request, and say nothing.
        case silent
    }

    let loop: EventLoop
    let chain: [Certificate]
    let key: PrivateKey
    var behavior: Behavior
    private var listener: Listener?
    private var sessions: [Session] = []
    /// Plaintext received, per connection.
    var received: [[UInt8]] { sessions.map(\.plaintext) }
    var port: UInt16 { listener?.boundTCPAddress?.port ?? 0 }

    init(loop: EventLoop, chain: [Certificate], key: PrivateKey, behavior: Behavior) throws {
        self.loop = loop
        self.chain = chain
        self.key = key
        self.behavior = behavior
        listener = try Listener(tcp: TCPAddress("127.0.0.1:0"), loop: loop) { [weak self] fd in
            guard let self, let session = try? Session(fd: fd, endpoint: self) else {
                close(fd)
                return
            }
            self.sessions.append(session)
        }
    }

    deinit { listener?.close() }

    final class Session: ConnectionDelegate {
        let tls: TLSServer
        var socket: Connection?
        weak var endpoint: InProcessBundleEndpoint?
        var plaintext: [UInt8] = []
        var answered = false

        init(fd: Int32, endpoint: InProcessBundleEndpoint) throws {
            self.endpoint = endpoint
            tls = try TLSServer(chain: endpoint.chain, key: endpoint.key, alpn: nil)
            socket = try Connection(fd: fd, loop: endpoint.loop, delegate: nil)
            socket?.delegate = self
        }

        func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
            plaintext += tls.receive(Array(bytes))
            flush()
            if case .failed = tls.state {
                connection.close()
                return
            }
            guard !answered, plaintext.count >= 4, plaintext.suffix(4).elementsEqual("\r\n\r\n".utf8),
                let behavior = endpoint?.behavior
            else { return }
            answered = true
            switch behavior {
            case .silent: break
            case .answer(let response, let recordSize, let closeNotify):
                var start = 0
                while start < response.count {
                    let end = min(response.count, start + min(recordSize, response.count - start))
                    tls.send(Array(response[start..<end]))
                    start = end
                }
                if closeNotify { tls.shutdown() }
                flush()
                connection.closeAfterWrites()
            }
        }

        private func flush() {
            let ciphertext = tls.takeCiphertext()
            if !ciphertext.isEmpty { socket?.write(ciphertext) }
        }

        func connectionDrained(_ connection: Connection) {}
        func connectionClosed(_ connection: Connection, error: SystemError?) {}
    }
}

@Suite(.serialized) struct BundleEndpointFetcherTests {
    static let endpointID = "spiffe://east.example/spire/server"

    struct Harness {
        let loop: EventLoop
        let worker: OffLoopWorker
        let ca: TestBundleCA
        let server: InProcessBundleEndpoint
    }

    func harness(
        behavior: InProcessBundleEndpoint.Behavior, servingID: String = endpointID, webName: String? = nil
    ) throws -> Harness {
        let loop = try EventLoop()
        let ca = try TestBundleCA()
        let (chain, key) = try webName.map { try ca.webCertificate(dnsName: $0) } ?? ca.svid(servingID)
        let server = try InProcessBundleEndpoint(loop: loop, chain: chain, key: key, behavior: behavior)
        return Harness(loop: loop, worker: try OffLoopWorker(loop: loop), ca: ca, server: server)
    }

    static func ok(_ body: String, extraHeaders: String = "") -> [UInt8] {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\(extraHeaders)"
        return Array((head + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)").utf8)
    }

    /// Runs one fetch to its completion (or `wait` seconds) and returns the completions seen.
    func fetch(
        _ h: Harness, url: String? = nil, roots: [Certificate]? = nil, id: String = endpointID,
        profile: BundleEndpointProfile? = nil, timeout: Double = 5, wait: Double = 10
    ) throws -> [Result<[UInt8], BundleEndpointError>] {
        let url = try BundleEndpointURL(parsing: url ?? "https://127.0.0.1:\(h.server.port)/bundle#\(id)")
        let profile = try profile ?? .httpsSPIFFE(endpointID: try SPIFFEID(parsing: id), roots: roots ?? [h.ca.root])
        var results: [Result<[UInt8], BundleEndpointError>] = []
        let fetcher = BundleEndpointFetcher(
            url: url, profile: profile, timeout: timeout, loop: h.loop, worker: h.worker
        ) { results.append($0) }
        #expect(results.isEmpty, "never completes inside init")
        _ = h.loop.run(until: { !results.isEmpty }, timeout: wait)
        // Completes once: nothing more arrives on later turns.
        _ = h.loop.run(until: { false }, timeout: 0.05)
        withExtendedLifetime(fetcher) {}
        return results
    }

    func failure(_ results: [Result<[UInt8], BundleEndpointError>]) -> BundleEndpointError? {
        guard results.count == 1, case .failure(let error) = results[0] else {
            Issue.record("expected one failure, got \(results)")
            return nil
        }
        return error
    }

    // MARK: https_spiffe

    @Test(arguments: [Int.max, 7])
    func fetchesTheBundleFromTheExpectedSPIFFEServer(recordSize: Int) throws {
        let ca = try TestBundleCA()
        let document = ca.document(sequence: 3, refreshHint: 60)
        let h = try harness(behavior: .answer(Self.ok(document), recordSize: recordSize))
        let results = try fetch(h, roots: [h.ca.root])
        #expect(results.count == 1)
        let body = try #require(try results.first?.get())
        #expect(body == Array(document.utf8))
        let bundle = try SPIFFEBundle.parse(body, trustDomain: try TrustDomain("east.example"))
        #expect(bundle.sequence == 3)
        let request = String(decoding: try #require(h.server.received.first), as: UTF8.self)
        #expect(
            request
                == "GET /bundle HTTP/1.1\r\nHost: 127.0.0.1:\(h.server.port)\r\nAccept: application/json\r\n"
                + "Connection: close\r\nUser-Agent: sds-agent\r\n\r\n")
    }

    @Test func aChunkedAnswerEndedByCloseNotifyIsRead() throws {
        let chunks = "3\r\n{\"k\r\n2\r\n\":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n"
        let response = Array(("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks).utf8)
        let h = try harness(behavior: .answer(response, recordSize: 5, closeNotify: true))
        let results = try fetch(h)
        #expect(try results.first?.get() == Array("{\"k\":1}".utf8))
    }

    @Test func aBodyUntilCloseNeedsCloseNotify() throws {
        let response = Array("HTTP/1.1 200 OK\r\n\r\n{}".utf8)
        let proven = try harness(behavior: .answer(response, closeNotify: true))
        #expect(try fetch(proven).first?.get() == Array("{}".utf8))
        let bare = try harness(behavior: .answer(response, closeNotify: false))
        let error = failure(try fetch(bare))
        #expect(error?.kind == .http)
        #expect(error?.reason.contains("without TLS close_notify") == true, "\(String(describing: error))")
    }

    @Test func aServerWithAnotherSPIFFEIDIsRefusedBeforeItHearsTheRequest() throws {
        let h = try harness(behavior: .answer(Self.ok("{}")), servingID: "spiffe://east.example/impostor")
        let error = failure(try fetch(h))
        #expect(error?.kind == .tls)
        #expect(
            error?.reason
                == "server certificate rejected: its SPIFFE ID is spiffe://east.example/impostor, expected "
                + Self.endpointID)
        let heard = h.server.received.reduce(0) { $0 + $1.count }
        #expect(heard == 0, "not even the path left")
    }

    @Test func aChainFromAnotherRootIsRefused() throws {
        let h = try harness(behavior: .answer(Self.ok("{}")))
        let other = try TestBundleCA()
        let error = failure(try fetch(h, roots: [other.root]))
        #expect(error?.kind == .tls)
        #expect(error?.reason.contains("server certificate rejected") == true, "\(String(describing: error))")
        let heard = h.server.received.reduce(0) { $0 + $1.count }
        #expect(heard == 0)
    }

    @Test func noRootsIsATLSSetupError() throws {
        let h = try harness(behavior: .answer(Self.ok("{}")))
        let error = failure(try fetch(h, roots: []))
        #expect(error?.kind == .tls)
        #expect(error?.reason.contains("no trusted roots") == true)
    }

    // MARK: HTTP answers

    @Test func aNon200IsAnErrorNamingTheStatus() throws {
        let h = try harness(
            behavior: .answer(Array("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".utf8)))
        let error = failure(try fetch(h))
        #expect(error?.kind == .http)
        #expect(
            error?.description
                == "bundle endpoint https://127.0.0.1:\(h.server.port)/bundle#\(Self.endpointID): the server answered "
                + "HTTP 404 Not Found")
    }

    @Test func aBodyOverTheBoundIsRefusedAtItsLength() throws {
        let h = try harness(
            behavior: .answer(
                Array("HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n".utf8)
                    + Array(repeating: 0x7B, count: 64 << 10)))
        let error = failure(try fetch(h))
        #expect(error?.kind == .http)
        #expect(error?.reason == "response body larger than 1048576 bytes")
    }

    @Test func aStreamedBodyOverTheBoundIsRefusedAsItArrives() throws {
        // No length: read until close, 1 MiB + 1 byte in 16 KiB records.
        let body = [UInt8](repeating: 0x20, count: (1 << 20) + 1)
        let h = try harness(behavior: .answer(Array("HTTP/1.1 200 OK\r\n\r\n".utf8) + body, recordSize: 16 << 10))
        let error = failure(try fetch(h))
        #expect(error?.reason == "response body larger than 1048576 bytes")
    }

    @Test func aConnectionClosedMidBodyIsAnError() throws {
        // Says 100 bytes, sends 50, closes (even with close_notify: the length was not met).
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".utf8) + Array(repeating: 0x20, count: 50)
        for closeNotify in [false, true] {
            let h = try harness(behavior: .answer(response, closeNotify: closeNotify))
            let error = failure(try fetch(h))
            #expect(error?.kind == .http)
            #expect(error?.reason == "connection closed with 50 bytes of the body missing")
        }
    }

    // MARK: Time and connections

    @Test func aServerThatNeverAnswersTimesOut() throws {
        let h = try harness(behavior: .silent)
        let started = EventLoop.monotonicSeconds()
        let error = failure(try fetch(h, timeout: 0.3, wait: 5))
        let elapsed = EventLoop.monotonicSeconds() - started
        #expect(error?.kind == .timeout)
        #expect(error?.reason == "no complete answer within 0.3 s")
        #expect(elapsed >= 0.25 && elapsed < 3, "\(elapsed)")
        #expect(h.server.received.first?.isEmpty == false, "the request was sent; the server kept quiet")
    }

    @Test func aPeerThatNeverHandshakesTimesOut() throws {
        // A plain TCP listener that accepts and never reads: the TLS handshake never completes.
        let h = try harness(behavior: .silent)
        var accepted: [Int32] = []
        let listener = try Listener(tcp: TCPAddress("127.0.0.1:0"), loop: h.loop) { accepted.append($0) }
        defer {
            listener.close()
            accepted.forEach { close($0) }
        }
        let port = try #require(listener.boundTCPAddress?.port)
        let error = failure(try fetch(h, url: "https://127.0.0.1:\(port)/b#\(Self.endpointID)", timeout: 0.3))
        #expect(error?.kind == .timeout)
    }

    @Test func aRefusedConnectionIsAConnectionError() throws {
        let h = try harness(behavior: .silent)
        // A port nobody listens on: bind one, note it, close it.
        let probe = try Listener(tcp: TCPAddress("127.0.0.1:0"), loop: h.loop) { close($0) }
        let port = try #require(probe.boundTCPAddress?.port)
        probe.close()
        let error = failure(try fetch(h, url: "https://127.0.0.1:\(port)/b#\(Self.endpointID)"))
        #expect(error?.kind == .connection)
        #expect(error?.reason.contains("cannot connect") == true, "\(String(describing: error))")
    }

    @Test func cancelSilencesTheFetch() throws {
        let h = try harness(behavior: .silent)
        var results: [Result<[UInt8], BundleEndpointError>] = []
        let fetcher = BundleEndpointFetcher(
            url: try BundleEndpointURL(parsing: "https://127.0.0.1:\(h.server.port)/b#\(Self.endpointID)"),
            profile: .httpsSPIFFE(endpointID: try SPIFFEID(parsing: Self.endpointID), roots: [h.ca.root]),
            timeout: 0.1, loop: h.loop, worker: h.worker
        ) { results.append($0) }
        _ = h.loop.run(until: { !h.server.received.isEmpty }, timeout: 5)
        fetcher.cancel()
        _ = h.loop.run(until: { false }, timeout: 0.3)
        #expect(results.isEmpty)
    }

    @Test func droppingTheFetcherCancelsIt() throws {
        let h = try harness(behavior: .silent)
        var results: [Result<[UInt8], BundleEndpointError>] = []
        var fetcher: BundleEndpointFetcher? = BundleEndpointFetcher(
            url: try BundleEndpointURL(parsing: "https://127.0.0.1:\(h.server.port)/b#\(Self.endpointID)"),
            profile: .httpsSPIFFE(endpointID: try SPIFFEID(parsing: Self.endpointID), roots: [h.ca.root]),
            timeout: 0.1, loop: h.loop, worker: h.worker
        ) { results.append($0) }
        _ = h.loop.run(until: { !h.server.received.isEmpty }, timeout: 5)
        fetcher = nil
        _ = h.loop.run(until: { false }, timeout: 0.3)
        #expect(results.isEmpty && fetcher == nil)
    }

    // MARK: https_web

    /// The system trust store is OpenSSL's default verify paths, so `SSL_CERT_FILE` points it at a test CA. The
    /// variable is process-wide: only this test sets it, and nothing else in the test process trusts `.system`.
    @Test func httpsWebVerifiesTheHostAgainstTheSystemStore() throws {
        let h = try harness(behavior: .answer(Self.ok("{\"keys\":[]}")), webName: "localhost")
        let file = NSTemporaryDirectory() + "bundle-endpoint-ca-\(getpid()).pem"
        try h.ca.root.pem.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        setenv("SSL_CERT_FILE", file, 1)
        defer { unsetenv("SSL_CERT_FILE") }
        // A name, resolved off the loop: localhost may resolve to ::1 first, where nothing listens; the dial moves on.
        let good = try fetch(h, url: "https://localhost:\(h.server.port)/bundle", profile: .httpsWeb)
        #expect(try good.first?.get() == Array("{\"keys\":[]}".utf8))
        #expect(
            String(decoding: h.server.received.last ?? [], as: UTF8.self).contains(
                "Host: localhost:\(h.server.port)\r\n"))
        // The same server by address: its certificate names localhost only.
        let wrongName = failure(try fetch(h, url: "https://127.0.0.1:\(h.server.port)/bundle", profile: .httpsWeb))
        #expect(wrongName?.kind == .tls)
        #expect(wrongName?.reason.contains("server certificate rejected") == true, "\(String(describing: wrongName))")
    }

    @Test func anUnresolvableHostIsAResolutionError() throws {
        let h = try harness(behavior: .silent)
        let error = failure(
            try fetch(h, url: "https://no-such-host.invalid/bundle", profile: .httpsWeb, timeout: 20, wait: 25))
        #expect(error?.kind == .resolution)
    }
}
