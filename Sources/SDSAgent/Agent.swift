import GRPC
import Glibc
import Issuance
import IstioCA
import Logging
import PKI
import SPIFFE
import Transport
import Wire
import WorkloadAPI
import XDS

/// The running agent: socket, SDS service, issuer, file-backed names, signals.
///
///     bind socket ──► load/create CA ──► issuer.start ──► serve ──SIGHUP──► rotate now
///                                                           │
///                                                SIGTERM/INT: stop accepting (socket removed), GOAWAY,
///                                                finish streams UNAVAILABLE, flush, exit 0
public final class Agent {
    public let configuration: AgentConfiguration
    let loop: EventLoop
    let logger: Logger
    let service: SecretDiscoveryService
    let server: SDSServer
    private var issuer: (any Issuer)?
    private let clock: any WallClock
    let fileNames: FileBackedNames
    private var federatedNames: Set<String> = []
    private var current: IdentityUpdate?
    private var lastIssuerError: IssuerError?
    private var draining = false
    private var expiryTimer: EventLoop.Timer?
    private let ownID: String
    private let ownTrustDomain: String

    /// Builds the agent; binds nothing yet.
    public init(configuration: AgentConfiguration, logger: Logger, clock: any WallClock = SystemWallClock())
        throws(SystemError)
    {
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.loop = try EventLoop()
        LogSink.standardError.attach(to: loop)
        let ownID = configuration.spiffeID
        let ownTD = configuration.trustDomain
        self.ownID = ownID
        self.ownTrustDomain = ownTD
        let classify: @Sendable (String) -> SecretName = { name in
            SecretName(name, ownID: ownID, ownTrustDomain: ownTD)
        }
        let fileNames = FileBackedNames(
            policy: FileAccessPolicy(
                allowedDirectories: configuration.fileDirectories,
                // The pod's service-account token is a credential: never served, whatever --file-dirs says.
                protectedPaths: [configuration.stateDir, configuration.istiod.tokenPath]
                    + (configuration.caKeyPath.map { [$0] } ?? []),
                allowedFiles: [SecretName.systemTrustStore]),
            loop: loop, logger: logger, clock: clock, classify: classify)
        self.fileNames = fileNames
        // Names we will serve once they exist are "served" (held while pending); everything else is never served.
        let refusals = fileNames.refusals
        let classifier: SecretCache.NameClassifier = { name in
            switch classify(name) {
            case .workloadCertificate, .ownBundle, .allBundles: return .served
            case .fileCertificate, .fileRoot: return refusals.byName[name] == nil ? .served : .neverServed
            case .federatedBundle, .unknown: return .neverServed
            }
        }
        self.service = SecretDiscoveryService(classifier: classifier, logger: logger)
        let router = GRPCRouter()
        service.register(on: router)
        self.server = SDSServer(
            loop: loop, router: router, logger: logger,
            admission: PeerAdmission(uids: configuration.allowedUIDs, gids: configuration.allowedGIDs),
            limits: OutboundLimits(
                maxQueuedBytes: configuration.maxQueuedBytes, writeStallTimeout: configuration.writeStallTimeout),
            inboundLimits: configuration.limits)
        service.onSubscribe = { [unowned self] names, peer in self.fileNames.subscribe(names, peer: peer) }
        service.onRelease = { [unowned self] names in self.fileNames.release(names) }
        fileNames.publish = { [unowned self] secrets in
            if !self.service.publish(secrets).isEmpty { self.server.flushAll() }
        }
        fileNames.unpublish = { [unowned self] names in self.service.unpublish(names) }
        fileNames.reclassify = { [unowned self] in
            self.service.reclassify()
            self.server.flushAll()
        }
    }

    /// Binds the socket, starts the issuer and serves until SIGTERM/SIGINT. Returns the exit code.
    public func run(makeIssuer: (Agent) throws -> any Issuer) -> Int32 {
        // The CA (or upstream client) is set up before binding: a corrupt state dir fails without ever creating a
        // socket, and loading a CA takes about a millisecond, well inside pilot-agent's 1 s probe.
        let issuer: any Issuer
        do {
            issuer = try makeIssuer(self)
        } catch {
            logger.critical("cannot start the issuer", metadata: ["error": "\(error)"])
            return 1
        }
        do {
            // Signals first: the loop owns them before anything else can run.
            try loop.onSignal(SIGHUP) { [unowned self] in self.rotateNow() }
            try loop.onSignal(SIGTERM) { [unowned self] in self.drain(signal: "SIGTERM") }
            try loop.onSignal(SIGINT) { [unowned self] in self.drain(signal: "SIGINT") }
            signal(SIGPIPE, SIG_IGN)
            // Bind before any SVID exists: the HTTP/2 handshake must complete at once (pilot-agent's 1 s probe).
            try server.listen(on: configuration.socket, mode: configuration.socketMode)
        } catch {
            logger.critical("cannot serve", metadata: ["socket": "\(configuration.socket)", "error": "\(error)"])
            return 1
        }
        logger.info(
            "listening",
            metadata: [
                "socket": "\(configuration.socket)", "mode": "\(String(configuration.socketMode, radix: 8))",
                "spiffe_id": "\(configuration.spiffeID)", "issuer": "\(configuration.issuer.rawValue)",
            ])
        self.issuer = issuer
        issuer.start(
            onUpdate: { [unowned self] update in self.identityChanged(update) },
            onError: { [unowned self] error in self.issuerFailed(error) })
        loop.run()
        issuer.stop()
        server.closeAll()
        server.stopListening()
        logger.info("stopped")
        return 0
    }

    /// The embedded CA issuer for this configuration: an operator-supplied CA (warned about before it expires) or
    /// the state dir's self-made roots (rotated on `RootRotationSchedule`).
    public func makeLocalCAIssuer() throws -> any Issuer {
        let trustDomain = try TrustDomain(configuration.trustDomain)
        let spiffeID = try SPIFFEID(parsing: configuration.spiffeID)
        let now = clock.now()
        let ttl = Int64(configuration.svidTTL.rounded(.up))
        let scheduler = EventLoopScheduler(loop: loop)
        let rotation = RotationPolicy(gracePeriodRatio: configuration.rotateRatio)
        let onEvent: (LocalCAIssuer.Event) -> Void = { [logger] event in Agent.log(event, logger) }
        if let certPath = configuration.caCertPath, let keyPath = configuration.caKeyPath {
            let ca = try LocalCA.operatorSupplied(
                certificateChainPath: certPath, keyPath: keyPath, trustDomain: trustDomain, now: now)
            logger.info(
                "CA loaded",
                metadata: [
                    "certificate": "\(certPath)", "subject": "\(ca.signingCertificate.subject)",
                    "not_after": "\(ca.signingCertificate.notAfter)",
                ])
            return LocalCAIssuer(
                ca: ca, spiffeID: spiffeID, ttl: ttl, clock: clock, scheduler: scheduler, rotation: rotation,
                onEvent: onEvent)
        }
        let roots = try LocalCARoots.open(
            stateDirectory: configuration.stateDir, trustDomain: trustDomain, now: now,
            rootLifetime: Int64(configuration.caTTL.rounded(.up)))
        if roots.finishedInterruptedRetirement {
            logger.warning(
                "CA root retirement was interrupted; finished it", metadata: ["state_dir": "\(configuration.stateDir)"])
        }
        var metadata: Logger.Metadata = [
            "state_dir": "\(configuration.stateDir)", "serial": "\(roots.current.signingCertificate.serialHex)",
            "not_after": "\(roots.current.signingCertificate.notAfter)",
        ]
        if let successor = roots.successor {
            metadata["successor_serial"] = "\(successor.signingCertificate.serialHex)"
        }
        logger.info(roots.createdNewRoot ? "CA created" : "CA loaded", metadata: metadata)
        return LocalCAIssuer(
            roots: roots, spiffeID: spiffeID, ttl: ttl, clock: clock, scheduler: scheduler, rotation: rotation,
            onEvent: onEvent)
    }

    private static func log(_ event: LocalCAIssuer.Event, _ logger: Logger) {
        switch event {
        case .successorPublished(let serial, let signsFrom):
            logger.info(
                "CA successor root published in the bundle",
                metadata: ["serial": "\(serial)", "signs_from": "\(signsFrom)"])
        case .signingSwitched(let serial):
            logger.info("CA now signs with the successor root", metadata: ["serial": "\(serial)"])
        case .rootRetired(let serial):
            logger.info(
                "CA root retired from the bundle (every SVID it signed has expired)", metadata: ["serial": "\(serial)"])
        case .operatorCAExpiring(let serial, let notAfter):
            logger.warning(
                "operator CA expires soon and sds-agent cannot rotate it: replace --ca-cert/--ca-key",
                metadata: ["serial": "\(serial)", "not_after": "\(notAfter)"])
        }
    }

    /// The SPIRE Workload API client for this configuration (`--issuer workload-api`).
    public func makeWorkloadAPIIssuer() throws -> any Issuer {
        WorkloadAPIIssuer.make(
            upstreamSocket: configuration.upstreamSocket, spiffeID: try SPIFFEID(parsing: configuration.spiffeID),
            loop: loop, scheduler: EventLoopScheduler(loop: loop), clock: clock)
    }

    /// The istiod CSR client for this configuration (`--issuer istiod`).
    public func makeIstiodIssuer() throws -> any Issuer {
        let settings = configuration.istiod
        let algorithm: KeyAlgorithm =
            switch settings.keyType {
            case .ecdsaP256: .ecdsaP256
            case .ecdsaP384: .ecdsaP384
            case .rsa2048: .rsa(bits: 2048)
            case .rsa3072: .rsa(bits: 3072)
            case .rsa4096: .rsa(bits: 4096)
            }
        let istio = IstioCAConfiguration(
            address: settings.address, rootCertPath: settings.rootCertPath, serverName: settings.serverName,
            tokenPath: settings.tokenPath, clusterID: settings.clusterID,
            extraHeaders: settings.headers.map { ($0.name, $0.value) }, keyAlgorithm: algorithm,
            spiffeID: try SPIFFEID(parsing: configuration.spiffeID),
            requestedTTL: Int64(configuration.svidTTL.rounded(.up)),
            rotation: RotationPolicy(gracePeriodRatio: configuration.rotateRatio))
        logger.info(
            "istiod issuer",
            metadata: [
                "ca_addr": "\(settings.address)", "server_name": "\(settings.serverName)",
                "root_cert": "\(settings.rootCertPath ?? "SYSTEM")", "token_file": "\(settings.tokenPath)",
                "cluster_id": "\(settings.clusterID)", "key_type": "\(settings.keyType.rawValue)",
            ])
        let worker = try OffLoopWorker(loop: loop)
        return IstioCAIssuer(
            configuration: istio, loop: loop, scheduler: EventLoopScheduler(loop: loop), clock: clock, worker: worker,
            onEvent: { [logger] event in
                switch event {
                case .keyGenerated(let algorithm, let milliseconds):
                    logger.debug(
                        "key generated off the loop",
                        metadata: ["algorithm": "\(algorithm)", "ms": "\((milliseconds * 10).rounded() / 10)"])
                case .csrSent(let round, let attempt):
                    logger.debug(
                        "CSR try started (dial, TLS, request)", metadata: ["round": "\(round)", "try": "\(attempt)"])
                }
            })
    }

    // MARK: Events

    private func identityChanged(_ update: IdentityUpdate) {
        let secrets: [Secret]
        do {
            secrets = try IdentitySecrets.secrets(for: update)
        } catch {
            logger.error("cannot encode the SVID", metadata: ["error": "\(error)"])
            return
        }
        if lastIssuerError != nil {
            logger.info("issuer recovered")
            lastIssuerError = nil
        }
        current = update
        let changed = service.publish(secrets)
        // Federated bundles that disappeared: Delta streams hear `removed_resources`.
        let nowFederated = Set(
            update.bundles.map { $0.trustDomain.idString }.filter { $0 != "spiffe://" + ownTrustDomain })
        let gone = federatedNames.subtracting(nowFederated)
        if !gone.isEmpty { service.unpublish(Array(gone)) }
        federatedNames = nowFederated
        server.flushAll()
        armExpiry(update.svid.notAfter)
        logger.info(
            "rotated",
            metadata: [
                "spiffe_id": "\(update.svid.spiffeID)", "serial": "\(update.svid.leaf.serialHex)",
                "not_after": "\(update.svid.notAfter)", "changed": "\(changed)",
                "streams": "\(service.openStreamCount)",
            ])
    }

    /// An SVID is served until it expires, however long the issuer is down — and not after: an expired certificate
    /// would be accepted by Envoy and fail every handshake. At expiry the workload names leave the cache, so new
    /// requests are held (and Delta streams hear `removed_resources`) until the issuer delivers again.
    private func armExpiry(_ notAfter: Timestamp) {
        expiryTimer?.cancel()
        let seconds = Double(notAfter - clock.now()) + 1
        expiryTimer = loop.schedule(after: max(0, seconds)) { [unowned self] in
            guard let current = self.current, current.svid.notAfter <= self.clock.now() else { return }
            self.logger.error(
                "SVID expired; holding requests until the issuer delivers a new one",
                metadata: ["serial": "\(current.svid.leaf.serialHex)", "not_after": "\(current.svid.notAfter)"])
            self.current = nil
            self.service.unpublish([SecretName.istioWorkload, current.svid.spiffeID.uri])
            self.server.flushAll()
        }
    }

    private func issuerFailed(_ error: IssuerError) {
        lastIssuerError = error
        let serving = current.map { "serial \($0.svid.leaf.serialHex) until \($0.svid.notAfter)" } ?? "nothing yet"
        logger.error("issuance failed", metadata: ["error": "\(error)", "serving": "\(serving)"])
    }

    private func rotateNow() {
        logger.info("SIGHUP: rotating now")
        issuer?.rotateNow()
        fileNames.reloadAll()
    }

    private func drain(signal: String) {
        guard !draining else {
            logger.warning("second \(signal): stopping now")
            loop.stop()
            return
        }
        draining = true
        logger.info("draining", metadata: ["signal": "\(signal)", "connections": "\(server.connectionCount)"])
        server.stopListening()
        issuer?.stop()
        // The shutdown notice first, then every call's trailers; the final GOAWAY follows one round trip later.
        server.beginDrain()
        service.finishAll(GRPCStatus(.unavailable, "sds-agent is shutting down"))
        server.flushAll()
        if server.connectionCount == 0 {
            loop.stop()
            return
        }
        // Wait for peers to take the last bytes, bounded by the drain timeout.
        let deadline = loop.schedule(after: configuration.drainTimeout) { [unowned self] in
            self.logger.warning("drain timeout: closing \(self.server.connectionCount) connections")
            self.loop.stop()
        }
        server.onAllConnectionsClosed = { [unowned self] in
            deadline.cancel()
            self.loop.stop()
        }
    }
}
