import Glibc
public import PKI
public import SPIFFE
public import Transport

/// How a bundle endpoint's server proves who it is (SPIFFE Trust Domain and Bundle, §5.2).
public enum BundleEndpointProfile: Sendable {
    /// `https_web`: a Web PKI certificate for the URL's host, verified against the system trust store
    /// (`SSL_CERT_FILE` / `SSL_CERT_DIR` override it).
    case httpsWeb
    /// `https_spiffe`: an X.509-SVID for exactly `endpointID` (the URL's fragment), chaining to `roots` (the
    /// bundle last held for the endpoint's trust domain, at first the bootstrap bundle). The host is not checked.
    case httpsSPIFFE(endpointID: SPIFFEID, roots: [Certificate])
}

/// Why a fetch failed, with the endpoint it was for.
public struct BundleEndpointError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The host name did not resolve.
        case resolution
        /// No connection, or it failed or closed before an answer.
        case connection
        /// The TLS handshake failed or the server is not who the profile requires.
        case tls
        /// The answer was not a 200 with a body within the bounds.
        case http
        /// No complete answer within the timeout.
        case timeout
    }

    public let kind: Kind
    /// The endpoint's URL.
    public let endpoint: String
    public let reason: String

    public init(kind: Kind, endpoint: String, reason: String) {
        self.kind = kind
        self.endpoint = endpoint
        self.reason = reason
    }

    public var description: String { "bundle endpoint \(endpoint): \(reason)" }
}

/// One fetch of a bundle endpoint: `GET <path> HTTP/1.1` over TLS, answered with the body bytes (the caller parses
/// them with `SPIFFEBundle.parse`). The I/O shell around `HTTPResponseParser` and `TLSClient`:
///
///     resolve (off the loop for a name) ─► TCPDial ─► TLS handshake (profile's checks) ─► request ─► response
///        └───────────── any failure, or `timeout` seconds over the whole ─────────────► completion(.failure)
///
/// The request is handed to `TLSClient` before the handshake, which holds it until the server is verified: an
/// impostor never sees even the path. The completion runs once, on the loop, never inside `init` and never after
/// `cancel()`; dropping the fetcher cancels it. One fetcher per fetch, like `TCPDial`.
public final class BundleEndpointFetcher {
    /// Why 10 s: a bundle is one small GET; an endpoint slower than that is down for our purposes, and the refresh
    /// policy retries soon.
    public static let defaultTimeout: Double = 10
    /// Why 8: a name with more addresses than that is not one endpoint we should spend the timeout walking.
    static let maxAddresses = 8

    public let url: BundleEndpointURL
    private let profile: BundleEndpointProfile
    private let loop: EventLoop
    private let timeout: Double
    private var completion: ((Result<[UInt8], BundleEndpointError>) -> Void)?
    private var timer: EventLoop.Timer?
    private var dial: TCPDial?
    private var connection: Connection?
    private var relay: Relay?
    private var tls: TLSClient?
    private var parser = HTTPResponseParser()

    /// Starts fetching at once.
    public init(
        url: BundleEndpointURL, profile: BundleEndpointProfile, timeout: Double = defaultTimeout, loop: EventLoop,
        worker: OffLoopWorker, completion: @escaping (Result<[UInt8], BundleEndpointError>) -> Void
    ) {
        self.url = url
        self.profile = profile
        self.loop = loop
        self.timeout = timeout
        self.completion = completion
        timer = loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.fail(.timeout, "no complete answer within \(Self.seconds(timeout))")
        }
        let endpoint = TCPEndpoint(host: url.host, port: url.port)
        if endpoint.hostIsNumeric {
            // An IP literal resolves to itself without a lookup: nothing blocks. On the next turn, so that not even
            // a failure can complete inside init.
            loop.schedule(after: 0) { [weak self] in self?.startDial(HostResolver.resolve(endpoint)) }
        } else {
            // getaddrinfo blocks (DNS): off the loop.
            worker.run({ HostResolver.resolve(endpoint) }, then: { [weak self] in self?.startDial($0) })
        }
    }

    deinit { teardown() }

    /// Abandons the fetch: everything is closed and the completion never runs.
    public func cancel() {
        completion = nil
        teardown()
    }

    private func startDial(_ resolved: Result<[ResolvedAddress], SystemError>) {
        guard completion != nil else { return }
        let addresses: [ResolvedAddress]
        switch resolved {
        case .success(let found): addresses = Array(found.prefix(Self.maxAddresses))
        case .failure(let error):
            fail(.resolution, "cannot resolve \(url.host): \(error)")
            return
        }
        // TCPDial never completes inside its init, so `dial` is set before the completion can run.
        dial = TCPDial(
            addresses: addresses, target: TCPEndpoint(host: url.host, port: url.port).description, timeout: timeout,
            loop: loop
        ) { [weak self] result in
            guard let self, self.completion != nil else {
                if case .success(let fd) = result { Glibc.close(fd) }
                return
            }
            self.dial = nil
            switch result {
            case .success(let fd): self.connected(fd)
            case .failure(let error): self.fail(.connection, "cannot connect: \(error)")
            }
        }
    }

    private func connected(_ fd: Int32) {
        let trust: TLSTrust
        switch profile {
        case .httpsWeb: trust = .system
        case .httpsSPIFFE(let endpointID, let roots): trust = .spiffe(roots: roots, id: endpointID.uri)
        }
        let tls: TLSClient
        do {
            // No ALPN: HTTP/1.1, which servers that ignore ALPN speak too.
            tls = try TLSClient(configuration: TLSClientConfiguration(trust: trust, serverName: url.host, alpn: []))
        } catch {
            Glibc.close(fd)
            fail(.tls, "TLS setup: \(error)")
            return
        }
        let relay = Relay(owner: self)
        let connection: Connection
        do throws(SystemError) {
            connection = try Connection(fd: fd, loop: loop, delegate: relay)
        } catch {
            Glibc.close(fd)
            fail(.connection, "\(error)")
            return
        }
        self.tls = tls
        self.relay = relay
        self.connection = connection
        // Held by TLSClient until the handshake verified the server, then written.
        tls.send(Array(request.utf8))
        flush()
    }

    /// The request: the URL's path and query, its host, and nothing that could vary by caller.
    var request: String {
        "GET \(url.requestTarget) HTTP/1.1\r\nHost: \(url.hostHeader)\r\nAccept: application/json\r\n"
            + "Connection: close\r\nUser-Agent: sds-agent\r\n\r\n"
    }

    private func flush() {
        guard let tls, let connection else { return }
        let ciphertext = tls.takeCiphertext()
        if !ciphertext.isEmpty { connection.write(ciphertext) }
    }

    fileprivate func received(_ bytes: UnsafeRawBufferPointer) {
        guard completion != nil, let tls else { return }
        let plaintext = tls.receive(bytes)
        flush()
        // The plaintext first: a complete answer stands even if a later record in the same read is broken.
        if !plaintext.isEmpty, handle(parser.feed(plaintext)) { return }
        switch tls.state {
        case .failed(let reason): fail(.tls, reason)
        case .closed: _ = handle(parser.close(cleanly: true))
        case .handshaking, .established: break
        }
    }

    fileprivate func closed(_ error: SystemError?) {
        guard completion != nil, let tls else { return }
        if let error {
            fail(.connection, "connection failed: \(error)")
            return
        }
        switch tls.state {
        case .handshaking: fail(.tls, "the server closed the connection during the TLS handshake")
        case .failed(let reason): fail(.tls, reason)
        case .established, .closed: _ = handle(parser.close(cleanly: tls.state == .closed))
        }
    }

    /// Completes on a final outcome; true when it did.
    private func handle(_ outcome: HTTPResponseParser.Outcome) -> Bool {
        switch outcome {
        case .needMoreBytes: return false
        case .complete(let body): finish(.success(body))
        case .failed(let error): fail(.http, "\(error)")
        }
        return true
    }

    private func fail(_ kind: BundleEndpointError.Kind, _ reason: String) {
        finish(.failure(BundleEndpointError(kind: kind, endpoint: url.description, reason: reason)))
    }

    private func finish(_ result: Result<[UInt8], BundleEndpointError>) {
        guard let completion else { return }
        self.completion = nil
        teardown()
        completion(result)
    }

    private func teardown() {
        timer?.cancel()
        timer = nil
        dial?.cancel()
        dial = nil
        connection?.close()
        // This may run inside the connection's own callback: keep it (and its delegate) alive until the stack
        // unwinds rather than free it under its caller.
        if let connection {
            let relay = relay
            loop.schedule(after: 0) { withExtendedLifetime((connection, relay)) {} }
        }
        connection = nil
        relay = nil
        tls = nil
    }

    private static func seconds(_ value: Double) -> String {
        value == value.rounded() && value < 1e9 ? "\(Int(value)) s" : "\(value) s"
    }
}

/// The connection's delegate: the connection holds it weakly and it holds the fetcher weakly, so neither keeps a
/// finished fetch alive.
private final class Relay: ConnectionDelegate {
    weak var owner: BundleEndpointFetcher?
    init(owner: BundleEndpointFetcher) { self.owner = owner }

    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) { owner?.received(bytes) }
    func connectionDrained(_ connection: Connection) {}
    func connectionClosed(_ connection: Connection, error: SystemError?) { owner?.closed(error) }
}
