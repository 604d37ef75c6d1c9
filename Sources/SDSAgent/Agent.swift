import Federation
import FileIdentity
import GRPC
import Glibc
import HTTP1
import Issuance
import IstioCA
import JWT
import LocalCA
import Logging
import PKI
import SPIFFE
import Servers
import Transport
import Wire
import WorkloadAPIClient
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
    /// The SPIFFE Workload API for the applications beside Envoy, on the same socket.
    let workloadAPI: WorkloadAPIService
    let server: SDSServer
    private var issuer: (any Issuer)?
    private let clock: any WallClock
    let fileNames: FileBackedNames
    private var federatedNames: Set<String> = []
    /// What the issuer delivered last, and `current`: the same with the `--federate-with` bundles merged in (what is
    /// served).
    private var issued: IdentityUpdate?
    private var current: IdentityUpdate?
    /// `--federate-with`: the federated trust domains' bundles, kept current (nil without any).
    private var federation: FederatedBundles?
    /// `--issuer files` with a certificate that has no SPIFFE ID: served as `default`/`ROOTCA` only.
    private var plain: CredentialFiles.PlainCredential?
    private var lastIssuerError: IssuerError?
    private var draining = false
    private var expiryTimer: EventLoop.Timer?
    /// The one identity this agent serves, as names are classified by it. Fixed by the configuration, except with
    /// `--issuer files` and no `--spiffe-id`: then it is the leaf's, known once the files are read.
    private let own: OwnIdentity
    private var jwtAuthority: LocalJWTAuthority?
    private var jwtKeyTimer: EventLoop.Timer?
    /// `jwt-svid:<audience>` names served over SDS (local CA only).
    private var jwtNames: JWTSecretNames?
    let metrics = AgentMetrics()
    let health = HealthService()
    private(set) var status: StatusServer?
    /// Why the next identity update happens: SIGHUP sets `.signal` until the update it asked for arrives.
    private var pendingRotationReason: AgentMetrics.RotationReason?
    /// `--output-dir`/`--output-jwt`: the identity as files too (nil when neither is asked for).
    private var outputs: FileOutputs?
    /// `--crl-file`: CRLs served with the own trust domain's bundle (nil without one).
    private var revocation: RevocationFile?
    /// Expiry of each served `file-cert:` certificate, by name (read when the file is loaded, not per scrape).
    private var fileCertificateExpiry: [String: Int64] = [:]

    /// Builds the agent; binds nothing yet.
    public init(configuration: AgentConfiguration, logger: Logger, clock: any WallClock = SystemWallClock())
        throws(SystemError)
    {
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.loop = try EventLoop()
        LogSink.standardError.attach(to: loop)
        let own = OwnIdentity(id: configuration.spiffeID.uri, trustDomain: configuration.trustDomain.name)
        self.own = own
        let classify: @Sendable (String) -> SecretName = { name in
            SecretName(name, ownID: own.id, ownTrustDomain: own.trustDomain, naming: configuration.naming)
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
            case .jwtSVID: return configuration.issuer == .local ? .served : .neverServed
            case .federatedBundle, .unknown: return .neverServed
            }
        }
        self.service = SecretDiscoveryService(
            classifier: classifier, logger: logger, metrics: metrics,
            metricLabel: {
                SecretName.metricLabel(
                    for: $0, ownID: own.id, ownTrustDomain: own.trustDomain, naming: configuration.naming)
            },
            monotonicNow: EventLoop.monotonicSeconds,
            isOnDemand: { name in
                switch classify(name) {
                case .fileCertificate, .fileRoot, .jwtSVID: true
                default: false
                }
            })
        // SPIRE's per-Envoy switch: node metadata `disable_spiffe_cert_validation: true` gets the all-bundles name as
        // a plain CA list.
        let plainAllBundles = [
            configuration.naming.allBundles: IdentitySecrets.plainVariantKey(configuration.naming.allBundles)
        ]
        service.aliases = { node in node.disableSPIFFECertValidation ? plainAllBundles : [:] }
        let router = GRPCRouter()
        service.register(on: router)
        self.workloadAPI = WorkloadAPIService(logger: logger, monotonicNow: EventLoop.monotonicSeconds)
        workloadAPI.register(on: router)
        health.register(on: router)
        self.server = SDSServer(
            loop: loop, router: router, logger: logger,
            admission: PeerAdmission(uids: configuration.allowedUIDs, gids: configuration.allowedGIDs),
            limits: OutboundLimits(
                maxQueuedBytes: configuration.maxQueuedBytes, writeStallTimeout: configuration.writeStallTimeout),
            inboundLimits: configuration.limits)
        server.metrics = metrics
        service.onSubscribe = { [unowned self] names, peer in
            self.fileNames.subscribe(names, peer: peer)
            self.jwtNames?.subscribe(names)
        }
        service.onRelease = { [unowned self] names in
            self.fileNames.release(names)
            self.jwtNames?.release(names)
        }
        fileNames.publish = { [unowned self] secrets in
            for secret in secrets { self.fileCertificateExpiry[secret.name] = Self.leafNotAfter(secret) }
            if !self.service.publish(secrets).isEmpty {
                self.metrics.countRotation(.file, at: self.clock.now().secondsSinceEpoch)
                self.server.flushAll()
            }
        }
        fileNames.unpublish = { [unowned self] names in
            for name in names { self.fileCertificateExpiry.removeValue(forKey: name) }
            self.service.unpublish(names)
        }
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
        do { try setUpJWT(issuer) } catch {
            logger.critical("cannot set up JWT-SVID signing", metadata: ["error": "\(error)"])
            return 1
        }
        if let path = configuration.crlFile, configuration.crlFileGiven || Files.exists(path) {
            let revocation = RevocationFile(path: path, loop: loop, clock: clock, logger: logger)
            revocation.onChange = { [unowned self] in
                guard let current = self.current else { return }
                self.publishSecrets(for: current)
                self.server.flushAll()
            }
            self.revocation = revocation
        }
        do {
            let outputs = try FileOutputs(configuration: configuration, loop: loop, clock: clock, logger: logger)
            if !outputs.isEmpty { self.outputs = outputs }
        } catch {
            logger.critical("cannot set up --output-dir", metadata: ["error": "\(error)"])
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
        if let address = configuration.statusAddress {
            do throws(SystemError) {
                try startStatusListener(on: address)
            } catch {
                // Asked for and unavailable (e.g. the port is taken): a probe or scrape relying on it would fail
                // later with less context, so the agent does not start. The socket it bound goes too.
                logger.critical(
                    "cannot listen on --status-addr", metadata: ["address": "\(address)", "error": "\(error)"])
                server.stopListening()
                return 1
            }
        }
        logger.info(
            "listening",
            metadata: [
                "socket": "\(configuration.socket)", "mode": "\(String(configuration.socketMode, radix: 8))",
                "spiffe_id": "\(configuration.spiffeID)", "issuer": "\(configuration.issuer.rawValue)",
            ])
        if !configuration.federation.isEmpty {
            let federation: FederatedBundles
            do { federation = try startFederation() } catch {
                logger.critical("cannot start federation", metadata: ["error": "\(error)"])
                server.stopListening()
                return 1
            }
            federation.onChange = { [unowned self] in self.federationChanged() }
            self.federation = federation
            federatedJWTKeysChanged()
        }
        self.issuer = issuer
        issuer.start(
            onUpdate: { [unowned self] update in self.identityChanged(update) },
            onError: { [unowned self] error in self.issuerFailed(error) })
        if let jwt = workloadAPI.jwt, !configuration.outputJWTs.isEmpty { outputs?.startJWTs(from: jwt) }
        loop.run()
        federation?.stop()
        outputs?.stop()
        issuer.stop()
        server.closeAll()
        server.stopListening()
        status?.closeAll()
        status?.stopListening()
        logger.info("stopped")
        return 0
    }

    private var issuers: IssuerFactory {
        IssuerFactory(configuration: configuration, loop: loop, clock: clock, logger: logger)
    }

    /// The embedded CA issuer for this configuration (see `IssuerFactory`).
    public func makeLocalCAIssuer() throws -> any Issuer { try issuers.localCA() }

    /// The SPIRE Workload API client for this configuration (`--issuer workload-api`).
    public func makeWorkloadAPIIssuer() throws -> any Issuer { try issuers.workloadAPI() }

    /// `--issuer files`: the identity that credential files hold, followed as they change.
    public func makeFilesIssuer() throws -> any Issuer {
        try issuers.files(onPlainCredential: { [unowned self] plain in self.plainCredentialChanged(plain) })
    }

    /// The istiod CSR client for this configuration (`--issuer istiod`).
    public func makeIstiodIssuer() throws -> any Issuer { try issuers.istiod() }

    /// The JWT half of the Workload API: relayed to an upstream Workload API, or minted by the local CA with the
    /// state dir's rotating keys.
    private func setUpJWT(_ issuer: any Issuer) throws {
        workloadAPI.flushReplies = { [unowned self] in self.server.flushAll() }
        if let upstream = issuer as? WorkloadAPIIssuer {
            // The upstream (a SPIRE agent) serves JWT-SVIDs itself: relay them.
            workloadAPI.jwt = UpstreamJWTRelay(issuer: upstream, spiffeID: configuration.spiffeID.uri)
            upstream.onJWTBundles = { [unowned self] bundles in
                self.workloadAPI.publishJWTBundles(bundles)
                self.server.flushAll()
            }
            return
        }
        guard configuration.issuer == .local else {
            // istiod signs X.509 CSRs only: it has no JWT-SVID source to relay.
            workloadAPI.jwtUnavailable = GRPCStatus(
                .unavailable,
                "JWT-SVIDs are not served with --issuer \(configuration.issuer.rawValue): it has no JWT-SVID source")
            return
        }
        let ttl = Int64(configuration.jwtTTL.rounded(.up))
        // The key schedule needs a key lifetime of at least 6 token lifetimes (RootRotationSchedule); the CA's
        // root lifetime is the default, as SPIRE uses its CA TTL for JWT keys.
        let keyLifetime = max(
            Int64(configuration.caTTL.rounded(.up)), RootRotationSchedule.minimumRootToSVIDLifetimeRatio * ttl)
        let keys = try JWTSigningKeys.open(
            stateDirectory: configuration.stateDir, now: clock.now(), keyLifetime: keyLifetime, tokenLifetime: ttl)
        logger.info(
            keys.createdNewKey ? "JWT signing key created" : "JWT signing key loaded",
            metadata: ["kid": "\(keys.current.kid)", "not_after": "\(keys.current.notAfter)"])
        let authority = try LocalJWTAuthority(
            keys: keys, spiffeID: configuration.spiffeID, ttl: ttl, clock: clock)
        // Weak, both: the authority holds this closure, so a strong capture of it would be a cycle that outlives the
        // agent (found by the file-names fuzz target's leak check).
        authority.onBundleChanged = { [weak self, weak authority] bundles in
            guard let self, let authority else { return }
            self.logger.info("JWT bundle changed", metadata: ["kids": "\(authority.bundle.map(\.kid))"])
            self.workloadAPI.publishJWTBundles(bundles)
            self.server.flushAll()
        }
        jwtAuthority = authority
        workloadAPI.jwt = authority
        let names = JWTSecretNames(authority: authority, loop: loop, clock: clock, logger: logger)
        names.publish = { [unowned self] secrets in
            if !self.service.publish(secrets).isEmpty { self.server.flushAll() }
        }
        names.unpublish = { [unowned self] gone in self.service.unpublish(gone) }
        jwtNames = names
        workloadAPI.publishJWTBundles(try authority.bundles())
        armJWTKeyTimer(try authority.advance())
    }

    private func armJWTKeyTimer(_ at: Timestamp?) {
        jwtKeyTimer?.cancel()
        guard let at else { return }
        jwtKeyTimer = loop.schedule(after: Double(max(0, at - clock.now()))) { [unowned self] in
            do { self.armJWTKeyTimer(try self.jwtAuthority?.advance()) } catch {
                self.logger.error("JWT key rotation failed; retrying in 60 s", metadata: ["error": "\(error)"])
                self.armJWTKeyTimer(self.clock.now() + 60)
            }
        }
    }

    // MARK: Status

    /// SERVING / ready: an SVID is held and has not expired, and the agent is not draining (it no longer accepts).
    var isServing: Bool {
        guard !draining else { return false }
        if let plain, let leaf = plain.chain.first { return leaf.notAfter > clock.now() }
        guard let current else { return false }
        return current.svid.notAfter > clock.now()
    }

    private func startStatusListener(on address: TCPAddress) throws(SystemError) {
        let status = StatusServer(loop: loop, logger: logger) { [unowned self] request in
            StatusRoutes.response(for: request, ready: self.isServing, metrics: { self.metricsText() })
        }
        status.onRefused = { [unowned self] in self.metrics.countRefusal(.limits) }
        try status.listen(on: address)
        self.status = status
        logger.info(
            "status listening", metadata: ["address": "\(status.boundAddress?.description ?? address.description)"])
    }

    /// The `/metrics` exposition, read from its owners now (gauges) and from `metrics` (counters).
    func metricsText() -> String {
        MetricsPage(
            issuer: configuration.issuer.rawValue, svidName: configuration.naming.svid, current: current,
            fileCertificateExpiry: fileCertificateExpiry,
            metrics: metrics, issuerUp: current != nil && lastIssuerError == nil, serving: isServing,
            connections: server.connectionCount, calls: service.openCallCounts
        ).text
    }

    /// The leaf's notAfter of a certificate secret with an inline PEM chain; nil for anything else.
    static func leafNotAfter(_ secret: Secret) -> Int64? {
        guard case .tlsCertificate(let tls) = secret.kind, case .inlineBytes(let pem) = tls.certificateChain,
            let leaf = try? Certificate.parseChain(pem: String(decoding: pem, as: UTF8.self)).first
        else { return nil }
        return leaf.notAfter.secondsSinceEpoch
    }

    // MARK: Events

    /// `update` with the `--federate-with` bundles: a configured domain's bundle replaces one the issuer sent for the
    /// same domain (the operator named its source); the own domain's bundle always comes from the issuer.
    private func withFederation(_ update: IdentityUpdate) -> IdentityUpdate {
        guard let federation, !federation.bundles.isEmpty else { return update }
        let configured = federation.x509Bundles
        let domains = Set(configured.map(\.trustDomain))
        let own = update.svid.spiffeID.trustDomain
        var merged = update
        merged.bundles = update.bundles.filter { $0.trustDomain == own || !domains.contains($0.trustDomain) }
        merged.bundles += configured.filter { $0.trustDomain != own }
        return merged
    }

    /// The federated bundles' sources, started: the bootstrap files read now (a missing or bad one stops the start:
    /// the endpoint could never be verified), a worker for endpoint host names when there are endpoints.
    private func startFederation() throws -> FederatedBundles {
        var bootstrap: [TrustDomain: [Certificate]] = [:]
        for (domain, path) in configuration.federationBootstrap {
            let bytes = try RegularFile(path: path).readAll(limit: SPIFFEBundle.maxDocumentBytes)
            do throws(SPIFFEBundle.ParseError) {
                bootstrap[domain] = try SPIFFEBundle.parse(bytes, trustDomain: domain).x509.certificates
            } catch {
                throw ConfigurationError(flag: "--federate-bootstrap", problem: "\(path): \(error)")
            }
        }
        let endpoints = configuration.federation.contains {
            if case .endpoint = $0.location { return true }
            return false
        }
        return FederatedBundles(
            sources: configuration.federation, loop: loop, logger: logger,
            worker: endpoints ? try OffLoopWorker(loop: loop) : nil, bootstrap: bootstrap)
    }

    /// The federated domains' JWT keys go to the local JWT authority (validation, FetchJWTBundles).
    private func federatedJWTKeysChanged() {
        guard let federation, let jwtAuthority else { return }
        do { try jwtAuthority.setFederated(federation.bundles) } catch {
            logger.error("cannot publish the federated JWT bundles", metadata: ["error": "\(error)"])
        }
    }

    /// A federated bundle changed: the served identity is published again with it.
    private func federationChanged() {
        federatedJWTKeysChanged()
        guard let issued else { return }
        let update = withFederation(issued)
        guard let secrets = secrets(for: update) else { return }
        current = update
        publish(update, secrets)
        server.flushAll()
    }

    /// The SDS secrets of `update` (nil, logged, when the SVID cannot be encoded).
    private func secrets(for update: IdentityUpdate) -> IdentitySecretSet? {
        do {
            let built = try IdentitySecrets.secretsAndVariants(
                for: update, crlPEM: revocation?.pem, naming: configuration.naming)
            return IdentitySecretSet(secrets: built.secrets, variants: built.variants)
        } catch {
            logger.error("cannot encode the SVID", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Publishes `update` (as `secrets`) to SDS and the Workload API; returns the SDS names whose content changed.
    @discardableResult
    private func publish(_ update: IdentityUpdate, _ secrets: IdentitySecretSet) -> [String] {
        let changed = service.publish(secrets.secrets, variants: secrets.variants)
        do { try workloadAPI.publish(update) } catch {
            logger.error("cannot encode the SVID for the Workload API", metadata: ["error": "\(error)"])
        }
        // Federated bundles that disappeared: Delta streams hear `removed_resources`.
        let nowFederated = Set(
            update.bundles.map { $0.trustDomain.idString }.filter { $0 != "spiffe://" + own.trustDomain })
        let gone = federatedNames.subtracting(nowFederated)
        if !gone.isEmpty { service.unpublish(Array(gone)) }
        federatedNames = nowFederated
        return changed
    }

    private func identityChanged(_ delivered: IdentityUpdate) {
        let started = EventLoop.monotonicSeconds()
        let pushesBefore = metrics.pushes
        issued = delivered
        let update = withFederation(delivered)
        // The CRLs are checked against this identity's CAs before its secrets are built with them.
        revocation?.identityChanged(update)
        // Built before anything changes: a failure leaves the previous identity served.
        guard let secrets = secrets(for: update) else { return }
        if lastIssuerError != nil {
            logger.info("issuer recovered")
            lastIssuerError = nil
        }
        let identity = update.svid.spiffeID
        if identity.uri != own.id {
            // Only `--issuer files` without `--spiffe-id` gets here (every other issuer is held to the configured
            // ID): the identity is the leaf's, and names are classified by it from now on.
            logger.info("identity taken from the credential files", metadata: ["spiffe_id": "\(identity)"])
            own.id = identity.uri
            own.trustDomain = identity.trustDomain.name
            service.reclassify()
        }
        current = update
        plain = nil
        outputs?.identityChanged(update)
        let changed = publish(update, secrets)
        // Before the flush: a Watch's new status leaves with the secrets' pushes.
        health.setServing(isServing)
        server.flushAll()
        armExpiry(update.svid.notAfter)
        let reason: AgentMetrics.RotationReason =
            configuration.issuer == .workloadAPI ? .upstream : (pendingRotationReason ?? .schedule)
        pendingRotationReason = nil
        if !changed.isEmpty { metrics.countRotation(reason, at: clock.now().secondsSinceEpoch) }
        // One line per wave, however many streams: what changed, how many responses it queued, how long it took.
        let elapsed = EventLoop.monotonicSeconds() - started
        logger.info(
            "rotated",
            metadata: [
                "spiffe_id": "\(update.svid.spiffeID)", "serial": "\(update.svid.leaf.serialHex)",
                "not_after": "\(update.svid.notAfter)", "reason": "\(reason.rawValue)",
                "names": "\(LogOutput.listValue(changed))",
                "streams": "\(service.openStreamCount)", "pushed": "\(metrics.pushes - pushesBefore)",
                "duration_ms": "\((elapsed * 1_000_000).rounded() / 1000)",
            ])
    }

    /// A consistent certificate without a SPIFFE ID from `--issuer files`: Envoy gets it as `default` with its roots
    /// as `ROOTCA`; the SPIFFE-ID names and the Workload API cannot carry it, and the latter says so.
    private func plainCredentialChanged(_ credential: CredentialFiles.PlainCredential) {
        guard let leaf = credential.chain.first else { return }
        let key: String
        do { key = try credential.key.pkcs8PEM() } catch {
            logger.error("cannot encode the certificate's key", metadata: ["error": "\(error)"])
            return
        }
        logger.warning(
            "the certificate in --svid-file has no SPIFFE ID (URI SAN): served under the SVID and bundle names only",
            metadata: ["serial": "\(leaf.serialHex)", "not_after": "\(leaf.notAfter)"])
        plain = credential
        if let old = current {
            current = nil
            service.unpublish([old.svid.spiffeID.uri])
        }
        workloadAPI.x509Unavailable = GRPCStatus(
            .unavailable,
            "no X509-SVID: the certificate in --svid-file has no SPIFFE ID (URI SAN); Envoy gets it as default only")
        service.publish([
            Secret(
                name: configuration.naming.svid,
                kind: .tlsCertificate(
                    TLSCertificate(
                        certificateChain: .inlineBytes(Array(Certificate.pem(credential.chain).utf8)),
                        privateKey: .inlineBytes(Array(key.utf8))))),
            Secret(
                name: configuration.naming.bundle,
                kind: .validationContext(
                    CertificateValidationContext(
                        trustedCA: .inlineBytes(Array(Certificate.pem(credential.roots).utf8))))),
        ])
        health.setServing(isServing)
        server.flushAll()
        armExpiry(leaf.notAfter)
    }

    /// Publishes `update`'s secrets again (the CRLs changed); returns the names whose content changed.
    @discardableResult
    private func publishSecrets(for update: IdentityUpdate) -> [String] {
        secrets(for: update).map { service.publish($0.secrets, variants: $0.variants) } ?? []
    }

    /// An SVID is served until it expires, however long the issuer is down — and not after: an expired certificate
    /// would be accepted by Envoy and fail every handshake. At expiry the workload names leave the cache, so new
    /// requests are held (and Delta streams hear `removed_resources`) until the issuer delivers again.
    private func armExpiry(_ notAfter: Timestamp) {
        expiryTimer?.cancel()
        let seconds = Double(notAfter - clock.now()) + 1
        expiryTimer = loop.schedule(after: max(0, seconds)) { [unowned self] in
            if let plain = self.plain, let leaf = plain.chain.first, leaf.notAfter <= self.clock.now() {
                self.logger.error(
                    "certificate expired; holding requests until the files hold a new one",
                    metadata: ["serial": "\(leaf.serialHex)", "not_after": "\(leaf.notAfter)"])
                self.plain = nil
                self.health.setServing(false)
                self.service.unpublish([configuration.naming.svid])
                self.server.flushAll()
                return
            }
            guard let current = self.current, current.svid.notAfter <= self.clock.now() else { return }
            self.logger.error(
                "SVID expired; holding requests until the issuer delivers a new one",
                metadata: ["serial": "\(current.svid.leaf.serialHex)", "not_after": "\(current.svid.notAfter)"])
            self.current = nil
            self.workloadAPI.withdrawSVID()
            self.health.setServing(false)
            self.service.unpublish([configuration.naming.svid, current.svid.spiffeID.uri])
            self.server.flushAll()
        }
    }

    private func issuerFailed(_ error: IssuerError) {
        lastIssuerError = error
        let reason =
            switch error.kind {
            case .issuanceFailed: "issuance_failed"
            case .upstreamUnavailable: "upstream_unavailable"
            case .permissionDenied: "permission_denied"
            }
        metrics.countIssuanceFailure(issuer: configuration.issuer.rawValue, reason: reason)
        let serving = current.map { "serial \($0.svid.leaf.serialHex) until \($0.svid.notAfter)" } ?? "nothing yet"
        logger.error("issuance failed", metadata: ["error": "\(error)", "serving": "\(serving)"])
    }

    private func rotateNow() {
        // Debug: the wave's own info line (`rotated reason=signal`) says it; one info line per rotation.
        logger.debug("SIGHUP: rotating now")
        pendingRotationReason = .signal
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
        health.setServing(false)
        health.finishAll(GRPCStatus(.unavailable, "sds-agent is shutting down"))
        // The shutdown notice first, then every call's trailers; the final GOAWAY follows one round trip later.
        server.beginDrain()
        service.finishAll(GRPCStatus(.unavailable, "sds-agent is shutting down"))
        workloadAPI.finishAll(GRPCStatus(.unavailable, "sds-agent is shutting down"))
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

/// The agent's own SPIFFE ID and trust domain, as the secret cache's classifier reads them (it must be
/// `@Sendable`). Only the event-loop thread reads or writes it.
final class OwnIdentity: @unchecked Sendable {
    var id: String
    var trustDomain: String

    init(id: String, trustDomain: String) {
        self.id = id
        self.trustDomain = trustDomain
    }
}

/// An identity's SDS secrets and their per-client variants, by cache key.
struct IdentitySecretSet {
    let secrets: [Secret]
    let variants: [String: Secret]
}
