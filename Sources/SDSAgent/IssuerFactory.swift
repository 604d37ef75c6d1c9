import FileIdentity
import Glibc
import Issuance
import IstioCA
import JWT
import LocalCA
import Logging
import PKI
import SPIFFE
import Transport
import WorkloadAPIClient

/// Builds the issuer a configuration names, with its start-up log lines: the embedded CA (operator CA or the state
/// dir's rotating roots), the SPIRE Workload API client, credential files, or istiod's CSR client.
struct IssuerFactory {
    let configuration: AgentConfiguration
    let loop: EventLoop
    let clock: any WallClock
    let logger: Logger

    /// The embedded CA issuer for this configuration: an operator-supplied CA (warned about before it expires) or
    /// the state dir's self-made roots (rotated on `RootRotationSchedule`).
    func localCA() throws -> any Issuer {
        // Every key file of the state dir is checked before any is loaded: a readable JWT key must not leave a
        // "CA loaded" line before the refusal.
        try JWTSigningKeys.checkKeyFiles(stateDirectory: configuration.stateDir)
        let trustDomain = configuration.trustDomain
        let spiffeID = configuration.spiffeID
        let now = clock.now()
        let ttl = Int64(configuration.svidTTL.rounded(.up))
        let scheduler = EventLoopScheduler(loop: loop)
        let rotation = RotationPolicy(gracePeriodRatio: configuration.rotateRatio)
        let onEvent: (LocalCAIssuer.Event) -> Void = { [logger] event in IssuerFactory.log(event, logger) }
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
    func workloadAPI() throws -> any Issuer {
        try WorkloadAPIIssuer.make(
            upstreamSocket: configuration.upstreamSocket, spiffeID: configuration.spiffeID,
            loop: loop, scheduler: EventLoopScheduler(loop: loop), clock: clock)
    }

    /// `--issuer files`: the identity that credential files hold, followed as they change.
    func files(onPlainCredential: @escaping (CredentialFiles.PlainCredential) -> Void) throws -> any Issuer {
        guard let files = configuration.credentialFiles else {
            throw ConfigurationError(flag: "--svid-file", problem: "--issuer files needs --svid-file and --bundle-file")
        }
        let expected = configuration.spiffeIDGiven ? configuration.spiffeID : nil
        logger.info(
            "credential files issuer",
            metadata: [
                "svid_file": "\(files.svid)", "key_file": "\(files.key ?? "(in the SVID file)")",
                "bundle_file": "\(files.bundle)", "spiffe_id": "\(expected?.uri ?? "(from the leaf)")",
            ])
        let issuer = FileIdentityIssuer(
            paths: CredentialFilePaths(svid: files.svid, key: files.key, bundle: files.bundle), expectedID: expected,
            loop: loop, clock: clock)
        issuer.onPlainCredential = onPlainCredential
        return issuer
    }

    /// The istiod CSR client for this configuration (`--issuer istiod`).
    func istiod() throws -> any Issuer {
        let settings = configuration.istiod
        let istio = IstioCAConfiguration(
            address: settings.address, rootCertPath: settings.rootCertPath, serverName: settings.serverName,
            tokenPath: settings.tokenPath, clusterID: settings.clusterID,
            extraHeaders: settings.headers.map { ($0.name, $0.value) }, keyAlgorithm: settings.keyAlgorithm,
            spiffeID: configuration.spiffeID,
            requestedTTL: Int64(configuration.svidTTL.rounded(.up)),
            rotation: RotationPolicy(
                gracePeriodRatio: configuration.rotateRatio,
                maximumLifetime: Int64(configuration.svidTTL.rounded(.up))))
        logger.info(
            "istiod issuer",
            metadata: [
                "ca_addr": "\(settings.address)", "server_name": "\(settings.serverName)",
                "root_cert": "\(settings.rootCertPath ?? "SYSTEM")", "token_file": "\(settings.tokenPath)",
                "cluster_id": "\(settings.clusterID)",
                "key_type": "\(AgentConfiguration.keyAlgorithmName(settings.keyAlgorithm))",
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
}
