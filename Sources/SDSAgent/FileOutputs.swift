import FileIdentity
import Issuance
import JWT
import Logging
import PKI
import Servers
import Transport
import Wire

/// `--output-dir`, `--output-jwt` and `--output-signal`: the identity (and JWT-SVIDs) as files for applications that
/// read files, the way istio-agent's `OUTPUT_CERTS` and spiffe-helper keep them. Everything is written off the
/// event loop (`CredentialFileWriter`, one `OffLoopWorker`); a failed write is logged and tried again with the next
/// update (or, for a JWT-SVID, in a few seconds), and serving over the socket never waits for it.
final class FileOutputs {
    private let writer: CredentialFileWriter?
    private let jwts: [AgentConfiguration.OutputJWT]
    private let worker: OffLoopWorker
    private let loop: EventLoop
    private let clock: any WallClock
    private let logger: Logger
    private var jwtTimers: [String: EventLoop.Timer] = [:]
    /// Where JWT-SVIDs come from (the Workload API's provider: the local authority or the upstream relay).
    private var jwtSource: (any JWTProvider)?

    /// Why 5 s: a JWT source that failed (the upstream is restarting) is asked again soon, not in a tight loop.
    static let jwtRetryDelay: Double = 5

    init(configuration: AgentConfiguration, loop: EventLoop, clock: any WallClock, logger: Logger) throws {
        self.loop = loop
        self.clock = clock
        self.logger = logger
        self.jwts = configuration.outputJWTs
        self.worker = try OffLoopWorker(loop: loop)
        let directory = configuration.outputDirectory
        if let directory {
            // Created at start (not by resolving the configuration): an emptyDir shared with the app usually exists.
            try Files.ensureDirectory(directory, mode: 0o755)
        }
        // One writer for the identity files and the JWT-SVID files: one queue, so a signal never lands mid-update.
        writer =
            directory == nil && configuration.outputJWTs.isEmpty
            ? nil
            : CredentialFileWriter(
                directory: directory, layout: configuration.outputLayout, signal: configuration.outputSignal,
                worker: worker
            ) { [logger] outcome in
                if let problem = outcome.problem {
                    logger.warning(
                        "identity files: \(outcome.written.count == 3 ? "written, but" : "not all written:")",
                        metadata: ["directory": "\(directory ?? "")", "problem": "\(problem)"])
                } else {
                    logger.debug("identity files written", metadata: ["directory": "\(directory ?? "")"])
                }
            }
    }

    var isEmpty: Bool { writer == nil }

    /// A new identity (every issuer, every rotation and bundle change).
    func identityChanged(_ update: IdentityUpdate) { writer?.write(update) }

    /// Starts keeping the `--output-jwt` files fresh from `source`.
    func startJWTs(from source: any JWTProvider) {
        jwtSource = source
        for output in jwts { refreshJWT(output) }
    }

    private func refreshJWT(_ output: AgentConfiguration.OutputJWT) {
        jwtTimers[output.path]?.cancel()
        jwtSource?.fetchJWTSVID(JWTSVIDRequest(audience: [output.audience])) { [weak self] result in
            guard let self else { return }
            switch result {
            case .success(let response):
                guard let token = response.svids.first?.svid else {
                    self.retryJWT(output, problem: "the JWT source returned no token")
                    return
                }
                self.writeJWT(token, output)
            case .failure(let status):
                self.retryJWT(output, problem: "\(status)")
            }
        }
    }

    private func writeJWT(_ token: String, _ output: AgentConfiguration.OutputJWT) {
        writer?.write(Array(token.utf8), to: output.path, mode: 0o600) { [weak self] outcome in
            guard let self else { return }
            if let problem = outcome.problem {
                self.logger.warning("JWT-SVID file", metadata: ["file": "\(output.path)", "problem": "\(problem)"])
            }
            self.scheduleRenewal(token, output)
        }
    }

    /// Re-fetched at half-life (the token's own `iat`/`exp`, as the Workload API's clients renew).
    private func scheduleRenewal(_ token: String, _ output: AgentConfiguration.OutputJWT) {
        var delay = Self.jwtRetryDelay
        if let claims = JWTSVIDToken.unverifiedClaims(token), case .int(let iat) = claims["iat"] ?? .null,
            case .int(let exp) = claims["exp"] ?? .null
        {
            let renewAt = JWTSVIDCache.renewAt(
                issuedAt: Timestamp(secondsSinceEpoch: iat), expiresAt: Timestamp(secondsSinceEpoch: exp))
            delay = max(1, Double(renewAt - clock.now()))
        }
        jwtTimers[output.path] = loop.schedule(after: delay) { [weak self] in self?.refreshJWT(output) }
    }

    private func retryJWT(_ output: AgentConfiguration.OutputJWT, problem: String) {
        logger.warning(
            "cannot fetch a JWT-SVID for --output-jwt",
            metadata: ["audience": "\(LogSummary.text(output.audience))", "problem": "\(problem)"])
        jwtTimers[output.path] = loop.schedule(after: Self.jwtRetryDelay) { [weak self] in self?.refreshJWT(output) }
    }

    func stop() {
        for timer in jwtTimers.values { timer.cancel() }
        jwtTimers.removeAll()
        jwtSource = nil
    }
}
