import ConnectionDriver
import GRPC
import Glibc
import H2
public import Issuance
public import PKI
public import SPIFFE
public import Transport
import Wire

/// Where and how to reach istiod (or cert-manager's istio-csr), with istio-agent's names in comments.
public struct IstioCAConfiguration: Sendable {
    /// `CA_ADDR`.
    public var address: TCPEndpoint
    /// `CA_ROOT_CA`: the PEM file of roots istiod's serving certificate chains to; nil = the system trust store.
    public var rootCertPath: String?
    /// `ISTIOD_SAN`: the name istiod's certificate must carry (default: the host of `CA_ADDR`).
    public var serverName: String
    /// The projected service-account token (audience `istio-ca`), re-read for every CSR.
    public var tokenPath: String
    /// `ISTIO_META_CLUSTER_ID`, sent as `ClusterID` metadata.
    public var clusterID: String
    /// `CA_HEADER_<K>=<v>` → `k: v`.
    public var extraHeaders: [(String, String)]
    public var keyAlgorithm: KeyAlgorithm
    public var spiffeID: SPIFFEID
    /// Requested lifetime in seconds (`SECRET_TTL`); istiod may shorten it.
    public var requestedTTL: Int64
    public var rotation: RotationPolicy

    public init(
        address: TCPEndpoint, rootCertPath: String?, serverName: String, tokenPath: String, clusterID: String,
        extraHeaders: [(String, String)], keyAlgorithm: KeyAlgorithm, spiffeID: SPIFFEID, requestedTTL: Int64,
        rotation: RotationPolicy
    ) {
        self.address = address
        self.rootCertPath = rootCertPath
        self.serverName = serverName
        self.tokenPath = tokenPath
        self.clusterID = clusterID
        self.extraHeaders = extraHeaders
        self.keyAlgorithm = keyAlgorithm
        self.spiffeID = spiffeID
        self.requestedTTL = requestedTTL
        self.rotation = rotation
    }

    /// Why 64 KiB: a projected token is ~1 KiB; anything near this is not a token, and it must fit in one
    /// HTTP/2 header block istiod accepts.
    public static let maxTokenBytes = 64 * 1024
    /// Why 1 MiB: a root-cert file holds a few roots (two during a root rotation), a few KiB.
    public static let maxRootCertBytes = 1 << 20
    /// Why 10 s per try: dial, TLS handshake and one signature on istiod take milliseconds; istio-agent's CSR
    /// context gives up after 10 s as well. A try cut off here counts as DEADLINE_EXCEEDED (retried).
    public static let callTimeout: Double = 10
    /// Why 256 KiB: an answer is at most `IstioChain.maxCertificates` (16) PEM certificates of a few KiB each (an
    /// RSA-4096 one is ~2.5 KiB); refusing a larger message at its length prefix means a hostile or broken istiod
    /// costs neither the buffering nor the parsing of megabytes (a 3.4 MB answer used to cost ~20 MB of RSS).
    public static let maxResponseBytes = 256 << 10
}

/// An `Issuer` that gets the workload certificate from istiod the way istio-agent does: a key made here (off the
/// event loop), a CSR for our SPIFFE ID sent to `istio.v1.auth.IstioCertificateService/CreateCertificate` over
/// TLS (server certificate verified against the root-cert file and the expected name, ALPN h2) with the pod's
/// projected token as `authorization: Bearer`, and the returned chain validated before it is delivered. All
/// decisions live in `IstioCAClientStateMachine`; this class performs its actions.
///
/// Each try dials a fresh connection and closes it after the answer: CSRs are hours apart, an idle connection
/// would only be reaped by istiod, and a failed try never reuses a connection (istio-agent rebuilds it too).
/// The token is read from its file for every try (kubelet rotates it) and is never logged or written anywhere.
public final class IstioCAIssuer: Issuer {
    /// What happened, for the agent's log (successes and what was refused; failures go through `onError`).
    public enum Event {
        case keyGenerated(algorithm: KeyAlgorithm, milliseconds: Double)
        case csrSent(round: Int, try: Int)
    }

    public let configuration: IstioCAConfiguration
    private let loop: EventLoop
    private let scheduler: any Scheduler
    private let clock: any WallClock
    private let worker: OffLoopWorker
    private let randomUnit: () -> Double
    private let onEvent: (Event) -> Void
    private var machine: IstioCAClientStateMachine
    private var callbacks = IssuerCallbacks()
    private var timer: (any ScheduledTimer)?
    private var call: InFlightCall?
    /// The roots of the root-cert file as last read (also part of the served bundle).
    private var fileRoots: [Certificate] = []
    /// The root-cert file's bytes as last read (nil: the system store), its roots and the TLS context trusting them.
    private var trustCache: (bytes: [UInt8]?, roots: [Certificate], context: TLSClientContext)?

    public init(
        configuration: IstioCAConfiguration, loop: EventLoop, scheduler: any Scheduler, clock: any WallClock,
        worker: OffLoopWorker, randomUnit: @escaping () -> Double = { Double.random(in: 0..<1) },
        onEvent: @escaping (Event) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.loop = loop
        self.scheduler = scheduler
        self.clock = clock
        self.worker = worker
        self.randomUnit = randomUnit
        self.onEvent = onEvent
        self.machine = IstioCAClientStateMachine(
            spiffeID: configuration.spiffeID, algorithm: configuration.keyAlgorithm,
            upstream: configuration.address.description, rotation: configuration.rotation)
    }

    public var state: IstioCAClientStateMachine.State { machine.state }
    public var current: IdentityUpdate? { machine.lastDelivered }

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        guard callbacks.start(onUpdate: onUpdate, onError: onError) else { return }
        perform(machine.start())
    }

    public func rotateNow() { perform(machine.rotateNow()) }

    public func stop() {
        perform(machine.stop())
        worker.cancelAll()
        callbacks.stop()
    }

    // MARK: Actions

    private func perform(_ actions: [IstioCAClientStateMachine.Action]) {
        for action in actions {
            switch action {
            case .generateKey(let round, let algorithm, let spiffeID):
                generateKey(round: round, algorithm: algorithm, spiffeID: spiffeID)
            case .sendCSR(let round, let attempt, let csrPEM):
                send(round: round, try: attempt, csrPEM: csrPEM)
            case .abandonCall:
                abandonCall()
            case .scheduleTimer(let delay):
                timer?.cancel()
                timer = scheduler.schedule(after: delay) { [weak self] in
                    guard let self else { return }
                    self.timer = nil
                    self.perform(self.machine.timerFired())
                }
            case .cancelTimer:
                timer?.cancel()
                timer = nil
            case .deliver(let update):
                callbacks.deliver(update)
            case .report(let error):
                callbacks.report(error)
            }
        }
    }

    private func generateKey(round: Int, algorithm: KeyAlgorithm, spiffeID: SPIFFEID) {
        let uri = spiffeID.uri
        // Off the loop for every algorithm: RSA takes ~200 ms and more, and even a P-256 CSR costs ~300 µs of
        // OpenSSL 3.0's encoder; one path is simpler than two.
        worker.run(
            { () -> Result<(PrivateKey, String, Double), PKIError> in
                let started = monotonicSeconds()
                do {
                    let key = try PrivateKey.generate(algorithm)
                    let csr = try CertificateSigningRequest(subject: DistinguishedName([]), uriSANs: [uri], key: key)
                    return .success((key, csr.pem, (monotonicSeconds() - started) * 1000))
                } catch let error as PKIError {
                    return .failure(error)
                } catch {
                    return .failure(PKIError(operation: "\(error)"))
                }
            },
            then: { [weak self] result in
                guard let self else { return }
                switch result {
                case .success(let (key, csrPEM, milliseconds)):
                    self.onEvent(.keyGenerated(algorithm: algorithm, milliseconds: milliseconds))
                    self.perform(self.machine.keyReady(round: round, key: key, csrPEM: csrPEM))
                case .failure(let error):
                    self.perform(
                        self.machine.keyFailed(
                            round: round, reason: "\(error)", now: self.clock.now(), randomUnit: self.randomUnit()))
                }
            })
    }

    private func send(round: Int, try attempt: Int, csrPEM: String) {
        abandonCall()
        let fail = { [weak self] (status: GRPCStatus) in
            guard let self else { return }
            self.abandonCall()
            self.perform(
                self.machine.callFailed(
                    round: round, try: attempt, status: status, now: self.clock.now(), randomUnit: self.randomUnit()))
        }
        // Everything read from disk is read before dialing: nothing is sent if any of it is missing.
        let token: String
        let tlsTrust: TLSClientContext
        do throws(IssuerError) {
            token = try readToken()
            tlsTrust = try readTrust()
        } catch {
            // Not a transport failure: retrying in 100 ms will not make the file appear. End the round.
            abandonCall()
            perform(
                machine.cannotSend(round: round, try: attempt, error: error, now: clock.now(), randomUnit: randomUnit())
            )
            return
        }
        var metadata: [(String, String)] = []
        if !token.isEmpty { metadata.append(("authorization", "Bearer " + token)) }
        if !configuration.clusterID.isEmpty { metadata.append(("clusterid", configuration.clusterID)) }
        metadata += configuration.extraHeaders
        metadata.append(("grpc-timeout", "\(Int(IstioCAConfiguration.callTimeout * 1000))m"))
        let request = IstioCertificateRequest(csr: csrPEM, validityDuration: configuration.requestedTTL)
        let inFlight = InFlightCall()
        call = inFlight
        inFlight.deadline = scheduler.schedule(after: IstioCAConfiguration.callTimeout) { [weak inFlight] in
            guard let inFlight, !inFlight.finished else { return }
            fail(GRPCStatus(.deadlineExceeded, "no answer within \(Int(IstioCAConfiguration.callTimeout)) s"))
        }
        let address = configuration.address
        let serverName = configuration.serverName
        let dial = { [weak self, weak inFlight] (addresses: [ResolvedAddress]) in
            guard let self, let inFlight, !inFlight.finished else { return }
            inFlight.dial = TCPDial(
                addresses: addresses, target: address.description, timeout: IstioCAConfiguration.callTimeout,
                loop: self.loop
            ) { [weak self, weak inFlight] result in
                guard let self, let inFlight, !inFlight.finished else {
                    if case .success(let fd) = result { Glibc.close(fd) }
                    return
                }
                switch result {
                case .failure(let error):
                    fail(GRPCStatus(.unavailable, "cannot connect: \(error)"))
                case .success(let fd):
                    self.started(
                        inFlight, fd: fd, trust: tlsTrust, serverName: serverName, metadata: metadata,
                        request: request, round: round, try: attempt, fail: fail)
                }
            }
        }
        if address.hostIsNumeric {
            if case .success(let addresses) = HostResolver.resolve(address) { dial(addresses) }
        } else {
            // getaddrinfo blocks (DNS): off the loop.
            worker.run(
                { HostResolver.resolve(address) },
                then: { [weak inFlight] result in
                    guard let inFlight, !inFlight.finished else { return }
                    switch result {
                    case .success(let addresses): dial(addresses)
                    case .failure(let error): fail(GRPCStatus(.unavailable, "cannot resolve: \(error)"))
                    }
                })
        }
        onEvent(.csrSent(round: round, try: attempt))
    }

    private func started(
        _ inFlight: InFlightCall, fd: Int32, trust: TLSClientContext, serverName: String, metadata: [(String, String)],
        request: IstioCertificateRequest, round: Int, try attempt: Int, fail: @escaping (GRPCStatus) -> Void
    ) {
        let tls: TLSClient
        do {
            tls = try TLSClient(context: trust, serverName: serverName)
        } catch {
            Glibc.close(fd)
            fail(GRPCStatus(.unavailable, "TLS setup: \(error)"))
            return
        }
        let grpc = GRPCClientConnection(
            authority: configuration.address.description, scheme: "https",
            maxMessageBytes: IstioCAConfiguration.maxResponseBytes)
        let driver: H2ConnectionDriver
        do throws(SystemError) {
            driver = try H2ConnectionDriver.onSocket(fd, loop: loop, session: grpc.session, tls: tls)
        } catch {
            fail(GRPCStatus(.unavailable, "\(error)"))
            return
        }
        inFlight.driver = driver
        driver.afterClosed = { [grpc] in grpc.connectionLost() }
        driver.onClosed = { reason in
            // After the answer, the connection closing is expected.
            guard !inFlight.finished else { return }
            fail(GRPCStatus(.unavailable, "\(reason)"))
        }
        let grpcCall: GRPCClientCall
        do throws(GRPCStatus) {
            // The HEADERS carrying the token are queued in nghttp2, but TLSClient holds every byte until the
            // handshake verified the server: an impostor never sees the token.
            grpcCall = try grpc.startCall(
                path: IstioCertificateServiceMethod.createCertificate.path, metadata: metadata)
        } catch {
            fail(error)
            return
        }
        var response: [UInt8]?
        grpcCall.onMessage = { message in response = message }
        grpcCall.onFinish = { [weak self] status, _ in
            guard let self, !inFlight.finished else { return }
            guard status.code == .ok else {
                fail(status)
                return
            }
            guard let bytes = response else {
                fail(GRPCStatus(.internal, "OK without a response message"))
                return
            }
            let decoded: IstioCertificateResponse
            do throws(WireError) {
                decoded = try IstioCertificateResponse(wireBytes: bytes, limit: IstioCAConfiguration.maxResponseBytes)
            } catch {
                fail(GRPCStatus(.internal, "malformed IstioCertificateResponse: \(error)"))
                return
            }
            inFlight.finish()
            // Close after this callback has unwound (we are inside nghttp2's receive).
            self.scheduler.schedule(after: 0) { withExtendedLifetime(inFlight) {} }
            if self.call === inFlight { self.call = nil }
            self.validateOffLoop(round: round, try: attempt, chainPEMs: decoded.certChain)
        }
        grpcCall.send(request.wireBytes())
        grpcCall.closeSend()
        driver.flush()
    }

    /// Parses and verifies istiod's chain on the worker: PEM decoding, signature checks and the key match take
    /// ~3.5 ms for an RSA-2048 chain in OpenSSL 3.0, which on the loop would stall every SDS stream for that long.
    /// The private key's encodings, which publishing needs, are made there too. The machine ignores a result for a try
    /// it no longer awaits.
    private func validateOffLoop(round: Int, try attempt: Int, chainPEMs: [String]) {
        guard let key = machine.awaitedKey(round: round, try: attempt) else { return }
        let expectedID = machine.spiffeID
        let fileRoots = fileRoots
        let now = clock.now()
        worker.run(
            { () -> Result<IdentityUpdate, IssuerError> in
                do throws(IssuerError) {
                    let update = try IstioChain.validate(
                        chainPEMs: chainPEMs, key: key, expectedID: expectedID, fileRoots: fileRoots, now: now)
                    // The encodings publishing needs, made here, not on the loop: the PEM (SDS) is made from the DER
                    // (the Workload API), and both are kept.
                    _ = try? update.svid.privateKey.pkcs8PEM()
                    return .success(update)
                } catch {
                    return .failure(error)
                }
            },
            then: { [weak self] result in
                guard let self else { return }
                self.perform(
                    self.machine.validated(
                        round: round, try: attempt, result, now: self.clock.now(), randomUnit: self.randomUnit()))
            })
    }

    private func abandonCall() {
        guard let inFlight = call else { return }
        call = nil
        inFlight.finish()
        // May run inside one of the connection's own callbacks: keep it alive until the stack unwinds.
        scheduler.schedule(after: 0) { withExtendedLifetime(inFlight) {} }
    }

    // MARK: Files

    /// The token, trimmed of surrounding whitespace; empty means "send no authorization header" (istio-agent).
    private func readToken() throws(IssuerError) -> String {
        let bytes: [UInt8]
        do throws(SystemError) {
            bytes = try Files.read(configuration.tokenPath, limit: IstioCAConfiguration.maxTokenBytes)
        } catch {
            throw IssuerError(kind: .issuanceFailed, message: "cannot read the token: \(error)")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let trimmed = text.trimmingWhitespace()
        // A header value cannot carry control characters; such a file is not a JWT.
        guard trimmed.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
            throw IssuerError(
                kind: .issuanceFailed, message: "the token file \(configuration.tokenPath) holds no printable token")
        }
        return trimmed
    }

    /// The roots istiod's serving certificate must chain to, re-read for every try (Istio's root rotation
    /// rewrites the file); also kept for the served bundle.
    private func readTrust() throws(IssuerError) -> TLSClientContext {
        guard let path = configuration.rootCertPath else {
            fileRoots = []
            if let cached = trustCache, cached.bytes == nil { return cached.context }
            return try cacheTrust(.system, bytes: nil)
        }
        do {
            let bytes = try Files.read(path, limit: IstioCAConfiguration.maxRootCertBytes)
            // The same file as last time: the same roots and TLS context (parsing the roots and making the
            // context cost about a millisecond of the loop per rotation).
            if let cached = trustCache, cached.bytes == bytes {
                fileRoots = cached.roots
                return cached.context
            }
            let roots = try Certificate.parseChain(pem: String(decoding: bytes, as: UTF8.self))
            guard !roots.isEmpty else {
                throw IssuerError(kind: .issuanceFailed, message: "the root-cert file \(path) holds no certificate")
            }
            fileRoots = roots
            return try cacheTrust(.roots(roots), bytes: bytes)
        } catch let error as IssuerError {
            throw error
        } catch {
            throw IssuerError(kind: .issuanceFailed, message: "cannot read the root-cert file \(path): \(error)")
        }
    }

    private func cacheTrust(_ trust: TLSTrust, bytes: [UInt8]?) throws(IssuerError) -> TLSClientContext {
        let context: TLSClientContext
        do { context = try TLSClientContext(trust: trust) } catch {
            throw IssuerError(kind: .upstreamUnavailable, message: "TLS setup: \(error)")
        }
        trustCache = (bytes, fileRoots, context)
        return context
    }
}

/// One try: the dial, then the connection; `finish` tears down whatever exists and silences late events.
final class InFlightCall {
    var dial: TCPDial?
    var driver: H2ConnectionDriver?
    var deadline: (any ScheduledTimer)?
    private(set) var finished = false

    func finish() {
        guard !finished else { return }
        finished = true
        deadline?.cancel()
        dial?.cancel()
        driver?.close()
    }
}

private func monotonicSeconds() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}
