import Glibc
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
    /// Bounds on what peers of the socket can make the agent hold (`--max-request-bytes`, `--max-connections`).
    public var limits: InboundLimits

    public static let defaultSocket = "/run/secrets/workload-spiffe-uds/socket"
    public static let defaultStateDir = "/var/lib/sds-agent"
    public static let defaultUpstreamSocket = "unix:///run/spire/sockets/agent.sock"

    /// The range each duration flag accepts. Every duration is finite and positive; the upper ends catch unit
    /// mistakes (`--svid-ttl 3600h` meant as seconds) and keep every derived timer and certificate date in range.
    /// SVIDs: at least 1m (an SVID must outlive Envoy's reconnect backoff), at most 90 days (istiod's maximum
    /// workload certificate lifetime). CA root: at most 10 years. Drain: at most 1h (Kubernetes kills a pod after
    /// its termination grace period, 30 s by default, long before).
    public static let svidTTLRange: ClosedRange<Double> = 60...(90 * 86400)
    public static let caTTLRange: ClosedRange<Double> = 60...(10 * 365 * 86400)
    public static let drainTimeoutRange: ClosedRange<Double> = 0.001...3600
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
    public var maxRequestBytes: String?
    public var maxConnections: String?
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

        let ttl = try duration(
            pick(options.svidTTL, "SECRET_TTL", "1h"), flag: "--svid-ttl (SECRET_TTL)", range: svidTTLRange,
            why: "an SVID must outlive Envoy's reconnect backoff; istiod issues at most 90 days")
        let ratioText = pick(options.rotateRatio, "SECRET_GRACE_PERIOD_RATIO", "0.5")
        guard let ratio = Double(ratioText), ratio > 0, ratio < 1 else {
            throw ConfigurationError(
                flag: "--rotate-ratio (SECRET_GRACE_PERIOD_RATIO)",
                problem: "'\(ratioText)' must be a number between 0 and 1 (0.5 rotates at half-life)")
        }
        let caTTL = try duration(
            pick(options.caTTL, "SDS_CA_TTL", "8760h"), flag: "--ca-ttl", range: caTTLRange, why: "at most 10 years")
        guard caTTL > ttl else {
            throw ConfigurationError(flag: "--ca-ttl", problem: "must be longer than --svid-ttl")
        }

        let caCert = pickOptional(options.caCert, "SDS_CA_CERT")
        let caKey = pickOptional(options.caKey, "SDS_CA_KEY")
        if (caCert == nil) != (caKey == nil) {
            throw ConfigurationError(
                flag: caCert == nil ? "--ca-cert" : "--ca-key", problem: "--ca-cert and --ca-key go together")
        }

        let issuerText = pick(options.issuer, "SDS_ISSUER", "local")
        guard let issuer = IssuerKind(rawValue: issuerText) else {
            throw ConfigurationError(flag: "--issuer", problem: "'\(issuerText)' is not one of: local, workload-api")
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
        let drain = try duration(
            pick(options.drainTimeout, "SDS_DRAIN_TIMEOUT", "5s"), flag: "--drain-timeout", range: drainTimeoutRange,
            why: "Kubernetes stops a pod long before an hour")

        var limits = InboundLimits()
        limits.maxRequestBytes = try count(
            pick(options.maxRequestBytes, "SDS_MAX_REQUEST_BYTES", String(InboundLimits.defaultMaxRequestBytes)),
            flag: "--max-request-bytes", range: InboundLimits.maxRequestBytesRange)
        limits.maxConnections = try count(
            pick(options.maxConnections, "SDS_MAX_CONNECTIONS", String(InboundLimits.defaultMaxConnections)),
            flag: "--max-connections", range: InboundLimits.maxConnectionsRange)

        return AgentConfiguration(
            socket: socket, socketMode: mode, trustDomain: trustDomain, spiffeID: spiffeID, svidTTL: ttl,
            rotateRatio: ratio, stateDir: pick(options.stateDir, "SDS_STATE_DIR", defaultStateDir), caTTL: caTTL,
            caCertPath: caCert, caKeyPath: caKey, issuer: issuer, upstreamSocket: upstream, logLevel: level,
            logFormat: format, drainTimeout: drain, limits: limits)
    }

    private static func duration(_ text: String, flag: String, range: ClosedRange<Double>, why: String)
        throws(ConfigurationError) -> Double
    {
        let seconds: Double
        do { seconds = try DurationText.seconds(text) } catch {
            throw ConfigurationError(flag: flag, problem: error.description)
        }
        guard range.contains(seconds) else {
            throw ConfigurationError(
                flag: flag,
                problem:
                    "'\(text)' is out of range: must be from \(DurationText.format(seconds: range.lowerBound)) to \(DurationText.format(seconds: range.upperBound)) (\(why))"
            )
        }
        return seconds
    }

    /// A whole number within `range`; suffixes Ki and Mi (powers of 1024) are accepted for sizes.
    private static func count(_ text: String, flag: String, range: ClosedRange<Int>) throws(ConfigurationError)
        -> Int
    {
        var digits = Substring(text.trimmingSpaces())
        var scale = 1
        for (suffix, factor) in [("Ki", 1 << 10), ("Mi", 1 << 20)] where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            scale = factor
        }
        guard let value = Int(digits), value.multipliedReportingOverflow(by: scale).overflow == false,
            range.contains(value * scale)
        else {
            throw ConfigurationError(
                flag: flag, problem: "'\(text)' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value * scale
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
