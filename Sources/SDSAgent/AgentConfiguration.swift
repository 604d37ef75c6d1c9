import Glibc
import Issuance
import Logging
import Transport

/// Everything `sds-agent run` needs, resolved from flags, then the environment (istio-agent's variable names where
/// they exist), then defaults — and validated, so the agent starts with nothing left to check.
public struct AgentConfiguration: Sendable {
    public enum IssuerKind: String, Sendable, CaseIterable {
        case local
        case workloadAPI = "workload-api"
    }

    public var socket: UnixSocketAddress
    public var socketMode: UInt32
    public var trustDomain: String
    public var spiffeID: String
    public var svidTTL: Double
    public var rotateRatio: Double
    public var stateDir: String
    public var caTTL: Double
    public var caCertPath: String?
    public var caKeyPath: String?
    public var issuer: IssuerKind
    public var upstreamSocket: UnixSocketAddress
    public var logLevel: Logger.Level
    public var logFormat: LogOutput.Format
    public var drainTimeout: Double

    /// Shorter SVIDs are for tests and demos of rotation; below 10 s an SVID could expire between Envoy's first
    /// reconnect attempts to a restarting agent (its xDS backoff starts at 0.5 s and doubles).
    public static let minimumSVIDTTL: Double = 10
    public static let defaultSocket = "/run/secrets/workload-spiffe-uds/socket"
    public static let defaultStateDir = "/var/lib/sds-agent"
    public static let defaultUpstreamSocket = "unix:///run/spire/sockets/agent.sock"
}

/// Flag values as typed by the user (nil when absent). The executable fills it; `resolve` does the rest.
public struct RawAgentOptions: Sendable, Equatable {
    public var socket: String?
    public var socketMode: String?
    public var trustDomain: String?
    public var spiffeID: String?
    public var svidTTL: String?
    public var rotateRatio: String?
    public var stateDir: String?
    public var caTTL: String?
    public var caCert: String?
    public var caKey: String?
    public var issuer: String?
    public var upstreamSocket: String?
    public var logLevel: String?
    public var logFormat: String?
    public var drainTimeout: String?
    public init() {}
}

/// A configuration problem, named after the flag (and its environment variable) that caused it.
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    public let flag: String
    public let problem: String
    public init(flag: String, problem: String) {
        self.flag = flag
        self.problem = problem
    }
    public var description: String { "\(flag): \(problem)" }
}

extension AgentConfiguration {
    /// Resolves `options` over `environment`. `validateTrustDomain`/`validateSPIFFEID` return an error text or nil
    /// (the SPIFFE rules live in the SPIFFE module; the caller passes them in).
    public static func resolve(
        _ options: RawAgentOptions, environment: [String: String],
        validateTrustDomain: (String) -> String?, validateSPIFFEID: (String, String) -> String?
    ) throws(ConfigurationError) -> AgentConfiguration {
        func pick(_ flag: String?, _ env: String?, _ fallback: String) -> String {
            if let flag { return flag }
            if let env, let value = environment[env], !value.isEmpty { return value }
            return fallback
        }
        func pickOptional(_ flag: String?, _ env: String) -> String? {
            if let flag { return flag }
            if let value = environment[env], !value.isEmpty { return value }
            return nil
        }

        let socketText = pick(options.socket, "SDS_SOCKET", defaultSocket)
        let socket: UnixSocketAddress
        do { socket = try UnixSocketAddress(socketText) } catch {
            throw ConfigurationError(flag: "--socket", problem: error.description)
        }
        try checkSocketDirectory(socket.path)

        let modeText = pick(options.socketMode, "SDS_SOCKET_MODE", "0600")
        guard let mode = UInt32(modeText.hasPrefix("0o") ? String(modeText.dropFirst(2)) : modeText, radix: 8),
            mode <= 0o777
        else {
            throw ConfigurationError(
                flag: "--socket-mode", problem: "'\(modeText)' is not an octal file mode (e.g. 0600, 0660)")
        }

        let trustDomain = pick(options.trustDomain, "TRUST_DOMAIN", "cluster.local")
        if let problem = validateTrustDomain(trustDomain) {
            throw ConfigurationError(flag: "--trust-domain (TRUST_DOMAIN)", problem: problem)
        }
        let namespace = environment["POD_NAMESPACE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let serviceAccount = environment["SERVICE_ACCOUNT"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let spiffeID = pick(
            options.spiffeID, "SPIFFE_ID", "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)")
        if let problem = validateSPIFFEID(spiffeID, trustDomain) {
            throw ConfigurationError(flag: "--spiffe-id (SPIFFE_ID)", problem: problem)
        }

        let ttl = try duration(pick(options.svidTTL, "SECRET_TTL", "1h"), flag: "--svid-ttl (SECRET_TTL)")
        guard ttl >= minimumSVIDTTL else {
            throw ConfigurationError(
                flag: "--svid-ttl (SECRET_TTL)",
                problem:
                    "must be at least \(DurationText.format(seconds: minimumSVIDTTL)), got \(DurationText.format(seconds: ttl)) (an SVID must outlive Envoy's first reconnect attempts)"
            )
        }
        let ratioText = pick(options.rotateRatio, "SECRET_GRACE_PERIOD_RATIO", "0.5")
        guard let ratio = Double(ratioText), ratio > 0, ratio < 1 else {
            throw ConfigurationError(
                flag: "--rotate-ratio (SECRET_GRACE_PERIOD_RATIO)",
                problem: "'\(ratioText)' must be a number between 0 and 1 (0.5 rotates at half-life)")
        }
        let caCert = pickOptional(options.caCert, "SDS_CA_CERT")
        let caKey = pickOptional(options.caKey, "SDS_CA_KEY")
        if (caCert == nil) != (caKey == nil) {
            throw ConfigurationError(
                flag: caCert == nil ? "--ca-cert" : "--ca-key", problem: "--ca-cert and --ca-key go together")
        }
        let caTTL = try duration(pick(options.caTTL, "SDS_CA_TTL", "8760h"), flag: "--ca-ttl")
        let issuerText = pick(options.issuer, "SDS_ISSUER", "local")
        guard let issuer = IssuerKind(rawValue: issuerText) else {
            throw ConfigurationError(flag: "--issuer", problem: "'\(issuerText)' is not one of: local, workload-api")
        }
        // A self-made root must hold its rotation: the successor in the bundle an SVID lifetime and a margin before
        // it signs, the old root kept until its last SVID expires (RootRotationSchedule). An operator CA (or
        // SPIRE) is not rotated here, so --ca-ttl does not apply to it.
        let rootRatio = Double(RootRotationSchedule.minimumRootToSVIDLifetimeRatio)
        if issuer == .local && caCert == nil && caTTL < rootRatio * ttl.rounded(.up) {
            throw ConfigurationError(
                flag: "--ca-ttl",
                problem:
                    "must be at least \(Int(rootRatio)) × --svid-ttl (\(DurationText.format(seconds: rootRatio * ttl.rounded(.up)))) so the root can rotate with overlap, got \(DurationText.format(seconds: caTTL))"
            )
        }

        let upstreamText = pick(options.upstreamSocket, "UPSTREAM_SPIFFE_ENDPOINT_SOCKET", defaultUpstreamSocket)
        let upstream: UnixSocketAddress
        do { upstream = try UnixSocketAddress(upstreamText) } catch {
            throw ConfigurationError(flag: "--upstream-socket", problem: error.description)
        }

        let levelText = pick(options.logLevel, "LOG_LEVEL", "info")
        guard let level = Logger.Level(rawValue: levelText.lowercased()) else {
            throw ConfigurationError(
                flag: "--log-level",
                problem: "'\(levelText)' is not one of: trace, debug, info, notice, warning, error, critical")
        }
        let formatText = pick(options.logFormat, "LOG_FORMAT", "text")
        guard let format = LogOutput.Format(rawValue: formatText) else {
            throw ConfigurationError(flag: "--log-format", problem: "'\(formatText)' is not one of: text, json")
        }
        let drain = try duration(pick(options.drainTimeout, "SDS_DRAIN_TIMEOUT", "5s"), flag: "--drain-timeout")

        return AgentConfiguration(
            socket: socket, socketMode: mode, trustDomain: trustDomain, spiffeID: spiffeID, svidTTL: ttl,
            rotateRatio: ratio, stateDir: pick(options.stateDir, "SDS_STATE_DIR", defaultStateDir), caTTL: caTTL,
            caCertPath: caCert, caKeyPath: caKey, issuer: issuer, upstreamSocket: upstream, logLevel: level,
            logFormat: format, drainTimeout: drain)
    }

    private static func duration(_ text: String, flag: String) throws(ConfigurationError) -> Double {
        let seconds: Double
        do { seconds = try DurationText.seconds(text) } catch {
            throw ConfigurationError(flag: flag, problem: error.description)
        }
        guard seconds > 0 else {
            throw ConfigurationError(flag: flag, problem: "must be greater than 0, got '\(text)'")
        }
        return seconds
    }

    /// The socket's directory must exist (or be creatable) and be writable, or bind would fail later with less context.
    private static func checkSocketDirectory(_ path: String) throws(ConfigurationError) {
        let directory: String
        if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            directory = "."
        }
        if access(directory, F_OK) != 0 {
            // Istio mounts an emptyDir here; outside Kubernetes create it (0755: the socket itself stays 0600).
            var built = directory.hasPrefix("/") ? "" : "."
            for component in directory.split(separator: "/") {
                built += "/" + component
                if access(built, F_OK) != 0 && mkdir(built, 0o755) != 0 && errno != EEXIST {
                    throw ConfigurationError(
                        flag: "--socket",
                        problem: "cannot create directory \(built): \(String(cString: strerror(errno)))")
                }
            }
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            throw ConfigurationError(
                flag: "--socket", problem: "directory \(directory) is not writable: \(String(cString: strerror(errno)))"
            )
        }
    }
}
