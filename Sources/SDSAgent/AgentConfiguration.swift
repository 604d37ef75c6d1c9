import FileIdentity
import Glibc
import Issuance
import LocalCA
import Logging
import Servers
import Transport

/// Everything `sds-agent run` needs, resolved from flags, then the environment (istio-agent's variable names where
/// they exist), then defaults — and validated, so the agent starts with nothing left to check.
public struct AgentConfiguration: Sendable {
    public enum IssuerKind: String, Sendable, CaseIterable {
        case local
        case workloadAPI = "workload-api"
        /// istiod (or cert-manager's istio-csr): a CSR with the pod's token, like istio-agent.
        case istiod
        /// Credential files someone else keeps fresh (Kubernetes Pod Certificates, cert-manager's CSI driver).
        case files
    }

    /// `--issuer files`: where the chain, key and bundle are (`--svid-file`, `--svid-key-file`, `--bundle-file`).
    public struct CredentialFiles: Sendable, Equatable {
        public var svid: String
        /// nil when `svid` is a credential bundle holding the key too.
        public var key: String?
        public var bundle: String
    }

    /// The workload key `--issuer istiod` makes (istio-agent's ECC_SIGNATURE_ALGORITHM / ECC_CURVE /
    /// WORKLOAD_RSA_KEY_SIZE). ECDSA P-256 by default: istiod signs either, and a P-256 key costs ~30 µs to make
    /// against ~200 ms for RSA-2048 (about 7,000×), with a quarter of the bytes in every handshake.
    public enum KeyType: String, Sendable, CaseIterable {
        case ecdsaP256 = "ecdsa-p256"
        case ecdsaP384 = "ecdsa-p384"
        case rsa2048 = "rsa-2048"
        case rsa3072 = "rsa-3072"
        case rsa4096 = "rsa-4096"
    }

    /// `--issuer istiod` settings, with istio-agent's names.
    public struct IstiodSettings: Sendable, Equatable {
        /// `CA_ADDR`.
        public var address: TCPEndpoint
        /// `CA_ROOT_CA`: a PEM file, or nil for `SYSTEM` (the OS trust store).
        public var rootCertPath: String?
        /// `ISTIOD_SAN`, else the host of `CA_ADDR`.
        public var serverName: String
        public var tokenPath: String
        /// `ISTIO_META_CLUSTER_ID`.
        public var clusterID: String
        /// `CA_HEADER_<K>=<v>` → header `k: v`, sorted by name.
        public var headers: [Header]
        public var keyType: KeyType

        public struct Header: Sendable, Equatable {
            public var name: String
            public var value: String
        }
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
    public var istiod: IstiodSettings
    /// Set with `--issuer files`.
    public var credentialFiles: CredentialFiles?
    /// `--output-dir` (`OUTPUT_CERTS`): where the identity is also written as files, in `outputLayout`.
    public var outputDirectory: String?
    public var outputLayout: OutputLayout = .istio
    /// `--output-jwt <audience>=<file>`: JWT-SVID files kept fresh.
    public var outputJWTs: [OutputJWT] = []
    /// `--output-signal <pidfile>:<SIGNAL>`: who to tell once an update's files are all in place.
    public var outputSignal: OutputSignal?
    /// `--crl-file` (`CRL_FILE`); by default istio-agent's path, used when it exists at start.
    public var crlFile: String?
    public var crlFileGiven = false
    public static let defaultCRLFile = "/var/run/secrets/istio/crl/ca-crl.pem"

    public struct OutputJWT: Sendable, Equatable {
        public var audience: String
        public var path: String
    }
    /// Whether `spiffeID` is the operator's (`--spiffe-id`/`SPIFFE_ID`) rather than the default made from the pod's
    /// namespace and service account. With `--issuer files` and no operator ID, the leaf's URI SAN is the identity.
    public var spiffeIDGiven = true
    public var logLevel: Logger.Level
    public var logFormat: LogOutput.Format
    public var drainTimeout: Double
    /// Directories `file-cert:`/`file-root:` names may read from (see `FileAccessPolicy`).
    public var fileDirectories: [String]
    /// Peers admitted on the socket: by user ID, or by group ID (either admits).
    public var allowedUIDs: Set<UInt32>
    public var allowedGIDs: Set<UInt32>
    public var writeStallTimeout: Double = OutboundLimits.defaultWriteStallTimeout
    public var maxQueuedBytes: Int = OutboundLimits.defaultMaxQueuedBytes
    /// Bounds on what peers of the socket can make the agent hold (`--max-request-bytes`, `--max-connections`).
    public var limits = InboundLimits()
    /// Lifetime of the JWT-SVIDs the local CA mints (`--jwt-ttl`), in seconds.
    public var jwtTTL: Double = AgentConfiguration.defaultJWTTTL

    /// 5 minutes: SPIRE's default JWT-SVID lifetime; a bearer token should not live long.
    public static let defaultJWTTTL: Double = 300
    /// From 10 s (tests and demos of re-minting) to 24 h (a bearer token living longer is a leak waiting to happen).
    public static let jwtTTLRange: ClosedRange<Double> = 10...86400
    /// The HTTP status listener (`/live`, `/ready`, `/metrics`); nil (the default) binds no port. See
    /// `StatusServer` for why it is off unless asked for.
    public var statusAddress: TCPAddress?

    /// Why 10 min: a drain only waits for peers to take the last bytes; Kubernetes' default grace period is 30 s,
    /// and an unbounded (or `inf`) drain would keep a dead pod's sidecar alive forever.
    public static let maxDrainTimeout: Double = 600
    /// Why 10 min: longer only keeps a stuck peer's memory; shorter than ~1 s would cut off a busy but healthy Envoy.
    public static let maxWriteStallTimeout: Double = 600
    /// Why 100 ms: below that, an ordinary scheduling delay of a healthy Envoy would count as a stall.
    public static let minWriteStallTimeout: Double = 0.1
    /// Why 1 GiB: the budget is per connection; more than that means a misplaced unit, not a need.
    public static let maxQueuedBytesLimit = 1 << 30

    /// Shorter SVIDs are for tests and demos of rotation; below 10 s an SVID could expire between Envoy's first
    /// reconnect attempts to a restarting agent (its xDS backoff starts at 0.5 s and doubles).
    public static let minimumSVIDTTL: Double = 10
    public static let defaultSocket = "/run/secrets/workload-spiffe-uds/socket"
    public static let defaultStateDir = "/var/lib/sds-agent"
    public static let defaultUpstreamSocket = "unix:///run/spire/sockets/agent.sock"
    /// istio-agent's defaults.
    public static let defaultCAAddress = "istiod.istio-system.svc:15012"
    public static let defaultCARootCert = "/var/run/secrets/istio/root-cert.pem"
    public static let defaultTokenFile = "/var/run/secrets/tokens/istio-token"
    public static let defaultClusterID = "Kubernetes"

    /// The range each duration flag accepts. Every duration is finite and positive; the upper ends catch unit
    /// mistakes (`--svid-ttl 3600h` meant as seconds) and keep every derived timer and certificate date in range.
    /// SVIDs: from `minimumSVIDTTL` to 90 days (istiod's maximum workload certificate lifetime). CA root: at most 10
    /// years (and at least its rotation ratio times the SVID lifetime, checked with the issuer). Drain: at most
    /// `maxDrainTimeout`.
    public static let svidTTLRange: ClosedRange<Double> = minimumSVIDTTL...(90 * 86400)
    public static let caTTLRange: ClosedRange<Double> = minimumSVIDTTL...(10 * 365 * 86400)
    public static let drainTimeoutRange: ClosedRange<Double> = 0.001...maxDrainTimeout
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
    public var caAddr: String?
    public var caRootCert: String?
    public var caServerName: String?
    public var tokenFile: String?
    public var clusterID: String?
    public var keyType: String?
    public var logLevel: String?
    public var logFormat: String?
    public var drainTimeout: String?
    public var maxRequestBytes: String?
    public var maxConnections: String?
    public var fileDirs: String?
    public var allowUIDs: String?
    public var allowGIDs: String?
    public var writeStallTimeout: String?
    public var maxQueuedBytes: String?
    public var jwtTTL: String?
    public var statusAddress: String?
    public var svidFile: String?
    public var svidKeyFile: String?
    public var bundleFile: String?
    public var outputDir: String?
    public var outputLayout: String?
    /// Each `--output-jwt`, in order (the flag repeats).
    public var outputJWT: [String] = []
    public var outputSignal: String?
    public var crlFile: String?
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
        validateTrustDomain: (String) -> String?, validateSPIFFEID: (String, String) -> String?,
        ownUID: UInt32 = geteuid()
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

        // What an injected istio-proxy container already says: PILOT_CERT_PROVIDER=istiod with a CA_ADDR.
        let istioInjected =
            environment["PILOT_CERT_PROVIDER"] == "istiod" && !(environment["CA_ADDR"] ?? "").isEmpty
        let issuerText = pick(options.issuer, "SDS_ISSUER", istioInjected ? "istiod" : "local")
        guard let issuer = IssuerKind(rawValue: issuerText) else {
            throw ConfigurationError(
                flag: "--issuer", problem: "'\(issuerText)' is not one of: local, workload-api, istiod, files")
        }
        // istiod: istio-agent's SECRET_TTL default (24 h, istiod's default workload lifetime); the local CA signs
        // hour-long SVIDs by default, rotation being free there.
        let ttl = try duration(
            pick(options.svidTTL, "SECRET_TTL", issuer == .istiod ? "24h" : "1h"), flag: "--svid-ttl (SECRET_TTL)",
            range: svidTTLRange,
            why: "an SVID must outlive Envoy's first reconnect attempts; istiod issues at most 90 days")
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
        let caTTL = try duration(
            pick(options.caTTL, "SDS_CA_TTL", "8760h"), flag: "--ca-ttl", range: caTTLRange, why: "at most 10 years")
        let istiod = try istiodSettings(options, environment: environment, pick: pick)
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
        let drain = try duration(
            pick(options.drainTimeout, "SDS_DRAIN_TIMEOUT", "5s"), flag: "--drain-timeout", range: drainTimeoutRange,
            why: "a drain only waits for peers to take the last bytes")
        let stall = try duration(
            pick(options.writeStallTimeout, "SDS_WRITE_STALL_TIMEOUT", "30s"), flag: "--write-stall-timeout",
            range: minWriteStallTimeout...maxWriteStallTimeout,
            why: "shorter cuts off a healthy Envoy, longer only keeps a stuck peer's memory")
        let queuedText = pick(
            options.maxQueuedBytes, "SDS_MAX_QUEUED_BYTES", String(OutboundLimits.defaultMaxQueuedBytes))
        guard let queued = Int(queuedText), queued >= 64 << 10, queued <= maxQueuedBytesLimit else {
            throw ConfigurationError(
                flag: "--max-queued-bytes",
                problem: "'\(queuedText)' must be a byte count from \(64 << 10) to \(maxQueuedBytesLimit)")
        }

        var limits = InboundLimits()
        limits.maxRequestBytes = try count(
            pick(options.maxRequestBytes, "SDS_MAX_REQUEST_BYTES", String(InboundLimits.defaultMaxRequestBytes)),
            flag: "--max-request-bytes", range: InboundLimits.maxRequestBytesRange)
        limits.maxConnections = try count(
            pick(options.maxConnections, "SDS_MAX_CONNECTIONS", String(InboundLimits.defaultMaxConnections)),
            flag: "--max-connections", range: InboundLimits.maxConnectionsRange)
        var statusAddress: TCPAddress?
        if let text = pickOptional(options.statusAddress, "SDS_STATUS_ADDR"), text != "off" {
            do { statusAddress = try TCPAddress(text) } catch {
                throw ConfigurationError(flag: "--status-addr", problem: error.description)
            }
        }

        let fileDirs = try directories(
            pick(options.fileDirs, "SDS_FILE_DIRS", FileAccessPolicy.defaultDirectories.joined(separator: ",")))
        let uids = try ids(pickOptional(options.allowUIDs, "SDS_ALLOW_UIDS"), flag: "--allow-uid (SDS_ALLOW_UIDS)")
        let gids = try ids(pickOptional(options.allowGIDs, "SDS_ALLOW_GIDS"), flag: "--allow-gid (SDS_ALLOW_GIDS)")

        var configuration = AgentConfiguration(
            socket: socket, socketMode: mode, trustDomain: trustDomain, spiffeID: spiffeID, svidTTL: ttl,
            rotateRatio: ratio, stateDir: pick(options.stateDir, "SDS_STATE_DIR", defaultStateDir), caTTL: caTTL,
            caCertPath: caCert, caKeyPath: caKey, issuer: issuer, upstreamSocket: upstream, istiod: istiod,
            logLevel: level,
            logFormat: format, drainTimeout: drain, fileDirectories: fileDirs,
            // The agent's own user is always admitted (it can read the agent's files anyway, and probes run as it);
            // by default no one else, matching the socket's 0600 default.
            allowedUIDs: Set(uids ?? []).union([ownUID]), allowedGIDs: Set(gids ?? []))
        configuration.writeStallTimeout = stall
        configuration.maxQueuedBytes = queued
        configuration.limits = limits
        configuration.jwtTTL = try duration(
            pick(options.jwtTTL, "SDS_JWT_TTL", "5m"), flag: "--jwt-ttl", range: jwtTTLRange,
            why: "a bearer token should not live long")
        configuration.statusAddress = statusAddress
        configuration.spiffeIDGiven = pickOptional(options.spiffeID, "SPIFFE_ID") != nil
        configuration.credentialFiles = try credentialFiles(options, issuer: issuer, pickOptional: pickOptional)
        try resolveOutputs(options, environment: environment, pickOptional: pickOptional, into: &configuration)
        if let crl = pickOptional(options.crlFile, "CRL_FILE") {
            guard crl.hasPrefix("/") else {
                throw ConfigurationError(flag: "--crl-file (CRL_FILE)", problem: "'\(crl)' must be an absolute path")
            }
            configuration.crlFile = crl
            configuration.crlFileGiven = true
        } else {
            configuration.crlFile = defaultCRLFile
        }
        return configuration
    }

    /// `--output-dir`, `--output-layout`, `--output-jwt`, `--output-signal`.
    private static func resolveOutputs(
        _ options: RawAgentOptions, environment: [String: String], pickOptional: (String?, String) -> String?,
        into configuration: inout AgentConfiguration
    ) throws(ConfigurationError) {
        if let directory = pickOptional(options.outputDir, "OUTPUT_CERTS") {
            guard directory.hasPrefix("/") else {
                throw ConfigurationError(
                    flag: "--output-dir (OUTPUT_CERTS)", problem: "'\(directory)' must be an absolute path")
            }
            configuration.outputDirectory = directory
        }
        if let layoutText = pickOptional(options.outputLayout, "SDS_OUTPUT_LAYOUT") {
            guard let layout = OutputLayout(rawValue: layoutText) else {
                throw ConfigurationError(
                    flag: "--output-layout", problem: "'\(layoutText)' is not one of: istio, spiffe-helper")
            }
            configuration.outputLayout = layout
        }
        // The environment form separates entries with commas (an audience holding one needs the flag).
        let jwtEntries =
            options.outputJWT.isEmpty
            ? (environment["SDS_OUTPUT_JWT"] ?? "").split(separator: ",").map(String.init) : options.outputJWT
        for entry in jwtEntries {
            guard let eq = entry.lastIndex(of: "="), eq != entry.startIndex else {
                throw ConfigurationError(
                    flag: "--output-jwt", problem: "'\(entry)' must be <audience>=<file>, e.g. spiffe://td/db=/run/jwt")
            }
            let path = String(entry[entry.index(after: eq)...])
            guard path.hasPrefix("/") else {
                throw ConfigurationError(flag: "--output-jwt", problem: "'\(path)' must be an absolute path")
            }
            configuration.outputJWTs.append(OutputJWT(audience: String(entry[..<eq]), path: path))
        }
        if !configuration.outputJWTs.isEmpty, configuration.issuer != .local, configuration.issuer != .workloadAPI {
            throw ConfigurationError(
                flag: "--output-jwt",
                problem: "--issuer \(configuration.issuer.rawValue) has no JWT-SVID source (local and workload-api do)")
        }
        if let signalText = pickOptional(options.outputSignal, "SDS_OUTPUT_SIGNAL") {
            switch OutputSignal.parse(signalText) {
            case .success(let signal): configuration.outputSignal = signal
            case .failure(let error): throw ConfigurationError(flag: "--output-signal", problem: error.description)
            }
            guard configuration.outputDirectory != nil || !configuration.outputJWTs.isEmpty else {
                throw ConfigurationError(
                    flag: "--output-signal",
                    problem: "signals after files are written: needs --output-dir or --output-jwt")
            }
        }
    }

    /// `--svid-file`, `--svid-key-file`, `--bundle-file`: required with `--issuer files` (the key file only when the
    /// SVID file is not a credential bundle), refused with any other issuer (they would be silently ignored).
    private static func credentialFiles(
        _ options: RawAgentOptions, issuer: IssuerKind, pickOptional: (String?, String) -> String?
    ) throws(ConfigurationError) -> CredentialFiles? {
        let svid = pickOptional(options.svidFile, "SDS_SVID_FILE")
        let key = pickOptional(options.svidKeyFile, "SDS_SVID_KEY_FILE")
        let bundle = pickOptional(options.bundleFile, "SDS_BUNDLE_FILE")
        guard issuer == .files else {
            if svid != nil || key != nil || bundle != nil {
                let flag = svid != nil ? "--svid-file" : key != nil ? "--svid-key-file" : "--bundle-file"
                throw ConfigurationError(flag: flag, problem: "only used with --issuer files")
            }
            return nil
        }
        guard let svid else {
            throw ConfigurationError(
                flag: "--svid-file (SDS_SVID_FILE)",
                problem: "--issuer files needs the certificate chain file (or a Pod Certificates credential bundle)")
        }
        guard let bundle else {
            throw ConfigurationError(
                flag: "--bundle-file (SDS_BUNDLE_FILE)",
                problem: "--issuer files needs the trust domain's roots (PEM or a SPIFFE bundle document)")
        }
        for (flag, path) in [("--svid-file", svid), ("--svid-key-file", key ?? "/"), ("--bundle-file", bundle)]
        where !path.hasPrefix("/") {
            throw ConfigurationError(flag: flag, problem: "'\(path)' must be an absolute path")
        }
        return CredentialFiles(svid: svid, key: key, bundle: bundle)
    }

    private static func istiodSettings(
        _ options: RawAgentOptions, environment: [String: String], pick: (String?, String?, String) -> String
    ) throws(ConfigurationError) -> IstiodSettings {
        let addressText = pick(options.caAddr, "CA_ADDR", defaultCAAddress)
        let address: TCPEndpoint
        do { address = try TCPEndpoint(addressText) } catch {
            throw ConfigurationError(flag: "--ca-addr (CA_ADDR)", problem: error.description)
        }
        let rootText = pick(options.caRootCert, "CA_ROOT_CA", defaultCARootCert)
        guard rootText == "SYSTEM" || rootText.hasPrefix("/") else {
            throw ConfigurationError(
                flag: "--ca-root-cert (CA_ROOT_CA)", problem: "'\(rootText)' must be an absolute path or SYSTEM")
        }
        let tokenPath = pick(options.tokenFile, "SDS_TOKEN_FILE", defaultTokenFile)
        guard tokenPath.hasPrefix("/") else {
            throw ConfigurationError(flag: "--token-file", problem: "'\(tokenPath)' must be an absolute path")
        }
        var headers: [IstiodSettings.Header] = []
        for (name, value) in environment where name.hasPrefix("CA_HEADER_") && name.count > "CA_HEADER_".count {
            let header = String(name.dropFirst("CA_HEADER_".count)).lowercased()
            // HTTP/2 header names: lowercase token characters; pseudo-headers and our own fields are not theirs.
            let reserved = ["authorization", "clusterid", "content-type", "te", "grpc-timeout"]
            guard
                header.utf8.allSatisfy({
                    $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || (0x61...0x7a).contains($0)
                        || (0x30...0x39).contains($0)
                }),
                !reserved.contains(header)
            else {
                throw ConfigurationError(flag: name, problem: "'\(header)' cannot be sent as a CA header")
            }
            guard value.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
                throw ConfigurationError(flag: name, problem: "the value must be printable ASCII")
            }
            headers.append(IstiodSettings.Header(name: header, value: value))
        }
        headers.sort { $0.name < $1.name }
        return IstiodSettings(
            address: address, rootCertPath: rootText == "SYSTEM" ? nil : rootText,
            serverName: pick(options.caServerName, "ISTIOD_SAN", address.host), tokenPath: tokenPath,
            clusterID: pick(options.clusterID, "ISTIO_META_CLUSTER_ID", defaultClusterID),
            headers: headers, keyType: try keyType(options.keyType, environment: environment))
    }

    /// `--key-type`, else istio-agent's variables: ECC_SIGNATURE_ALGORITHM=ECDSA (ECC_CURVE=P384 for P-384), or
    /// WORKLOAD_RSA_KEY_SIZE for RSA; else ECDSA P-256 (see `KeyType`).
    private static func keyType(_ flag: String?, environment: [String: String]) throws(ConfigurationError) -> KeyType {
        let text = flag ?? environment["SDS_KEY_TYPE"].flatMap { $0.isEmpty ? nil : $0 }
        if let text {
            guard let type = KeyType(rawValue: text) else {
                throw ConfigurationError(
                    flag: "--key-type",
                    problem: "'\(text)' is not one of: \(KeyType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return type
        }
        let algorithm = environment["ECC_SIGNATURE_ALGORITHM"] ?? ""
        if algorithm.uppercased() == "ECDSA" {
            switch (environment["ECC_CURVE"] ?? "").uppercased() {
            case "", "P256": return .ecdsaP256
            case "P384": return .ecdsaP384
            case let curve:
                throw ConfigurationError(flag: "ECC_CURVE", problem: "'\(curve)' is not one of: P256, P384")
            }
        }
        if !algorithm.isEmpty {
            throw ConfigurationError(flag: "ECC_SIGNATURE_ALGORITHM", problem: "'\(algorithm)' is not ECDSA")
        }
        if let size = environment["WORKLOAD_RSA_KEY_SIZE"], !size.isEmpty {
            switch size {
            case "2048": return .rsa2048
            case "3072": return .rsa3072
            case "4096": return .rsa4096
            default:
                throw ConfigurationError(
                    flag: "WORKLOAD_RSA_KEY_SIZE", problem: "'\(size)' is not one of: 2048, 3072, 4096")
            }
        }
        return .ecdsaP256
    }

    /// `--file-dirs`: absolute directories, comma-separated. `/` is refused: it would let any client read any file
    /// the agent can read.
    private static func directories(_ text: String) throws(ConfigurationError) -> [String] {
        let flag = "--file-dirs (SDS_FILE_DIRS)"
        var result: [String] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            var path = String(part)
            while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
            guard path.hasPrefix("/") else {
                throw ConfigurationError(flag: flag, problem: "'\(part)' is not an absolute directory")
            }
            guard path != "/" else {
                throw ConfigurationError(
                    flag: flag,
                    problem: "'/' would serve every file the agent can read; name the certificate directories")
            }
            guard !path.split(separator: "/").contains("..") else {
                throw ConfigurationError(flag: flag, problem: "'\(part)' contains '..'")
            }
            result.append(path)
        }
        return result
    }

    /// `--allow-uid` / `--allow-gid`: decimal IDs, comma-separated; nil when not given.
    private static func ids(_ text: String?, flag: String) throws(ConfigurationError) -> [UInt32]? {
        guard let text else { return nil }
        var result: [UInt32] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = part.trimmingPrefix(" ")
            guard let id = UInt32(trimmed), id != UInt32.max else {
                throw ConfigurationError(flag: flag, problem: "'\(part)' is not a numeric ID (e.g. 1337,1000)")
            }
            result.append(id)
        }
        return result
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
