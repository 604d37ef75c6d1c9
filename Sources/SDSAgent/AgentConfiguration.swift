import Federation
import FileIdentity
import Glibc
import Issuance
import LocalCA
import Logging
import PKI
import SPIFFE
import Servers
import Transport

/// Everything `sds-agent run` needs, resolved from flags, then the environment (istio-agent's variable names where
/// they exist), then defaults — and validated, so the agent starts with nothing left to check. The options, their
/// variables, defaults and ranges are declared in `AgentOption` (Options.swift); resolving reads nothing but its
/// arguments (the socket's directory is prepared at start-up, `AgentMain.prepareSocketDirectory`).
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

    /// `--key-type` names of the workload keys `--issuer istiod` can make (istio-agent's ECC_SIGNATURE_ALGORITHM /
    /// ECC_CURVE / WORKLOAD_RSA_KEY_SIZE choose among the same). The first is the default: ECDSA P-256, as istiod
    /// signs either, and a P-256 key costs ~30 µs to make against ~200 ms for RSA-2048 (about 7,000×), with a quarter
    /// of the bytes in every handshake.
    public static let keyAlgorithms: [(name: String, algorithm: KeyAlgorithm)] = [
        ("ecdsa-p256", .ecdsaP256), ("ecdsa-p384", .ecdsaP384), ("rsa-2048", .rsa(bits: 2048)),
        ("rsa-3072", .rsa(bits: 3072)), ("rsa-4096", .rsa(bits: 4096)),
    ]

    /// The `--key-type` name of `algorithm` (for logs).
    public static func keyAlgorithmName(_ algorithm: KeyAlgorithm) -> String {
        keyAlgorithms.first { $0.algorithm == algorithm }?.name ?? algorithm.description
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
        public var keyAlgorithm: KeyAlgorithm

        public struct Header: Sendable, Equatable {
            public var name: String
            public var value: String
        }
    }

    public var socket: UnixSocketAddress
    public var socketMode: UInt32
    public var trustDomain: TrustDomain
    /// The one identity served; always in `trustDomain`.
    public var spiffeID: SPIFFEID
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
    /// `--default-svid-name`, `--default-bundle-name`, `--default-all-bundles-name`.
    public var naming = SDSNaming.spire
    /// `--federate-with`: the trust domains trusted besides the own one, and where their bundles come from.
    public var federation: [FederationSource] = []
    /// `--federate-bootstrap`: the file whose roots first verify a domain's https_spiffe endpoint, by domain.
    public var federationBootstrap: [TrustDomain: String] = [:]
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
    /// Why at most 1 GiB: the budget is per connection; more than that means a misplaced unit, not a need. At least
    /// 64 KiB: less would cut off a healthy peer that is merely behind by one large response.
    public static let maxQueuedBytesRange = (64 << 10)...(1 << 30)
    public static let writeStallTimeoutRange: ClosedRange<Double> = minWriteStallTimeout...maxWriteStallTimeout

    /// Shorter SVIDs are for tests and demos of rotation; below 10 s an SVID could expire between Envoy's first
    /// reconnect attempts to a restarting agent (its xDS backoff starts at 0.5 s and doubles).
    public static let minimumSVIDTTL: Double = 10
    /// The local CA signs hour-long SVIDs by default, rotation being free there; with istiod, istio-agent's
    /// SECRET_TTL default (24 h, istiod's default workload lifetime).
    public static let defaultSVIDTTL = "1h"
    public static let istiodSVIDTTL = "24h"
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
    public var defaultSVIDName: String?
    public var defaultBundleName: String?
    public var defaultAllBundlesName: String?
    /// Each `--federate-with`, in order (the flag repeats).
    public var federateWith: [String] = []
    /// Each `--federate-bootstrap`, in order (the flag repeats).
    public var federateBootstrap: [String] = []
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
    /// Resolves `options` over `environment`: each option's text is its flag, else its variable, else its default
    /// (`AgentOption`), checked against the option's syntax and range. Reads nothing else: no file, no directory.
    public static func resolve(_ options: RawAgentOptions, environment: [String: String], ownUID: UInt32 = geteuid())
        throws(ConfigurationError) -> AgentConfiguration
    {
        let source = OptionSource(options: options, environment: environment)
        func text(_ option: AgentOption) -> String { source.text(option, else: "") }

        let socket: UnixSocketAddress
        do { socket = try UnixSocketAddress(text(.socket)) } catch {
            throw AgentOption.socket.refusal(error.description)
        }
        let mode = try AgentOption.socketMode.fileMode(text(.socketMode))

        let trustDomain = try resolveTrustDomain(text(.trustDomain))
        let namespace = source.variable(EnvironmentVariable.podNamespace.name) ?? "default"
        let serviceAccount = source.variable(EnvironmentVariable.serviceAccount.name) ?? "default"
        let spiffeID = try resolveSPIFFEID(
            source.text(.spiffeID, else: "\(trustDomain.idString)/ns/\(namespace)/sa/\(serviceAccount)"),
            in: trustDomain)

        // What an injected istio-proxy container already says: PILOT_CERT_PROVIDER=istiod with a CA_ADDR.
        let istioInjected =
            environment[EnvironmentVariable.pilotCertProvider.name] == "istiod"
            && source.variable(AgentOption.caAddr.environment) != nil
        let issuer = try AgentOption.issuer.choice(
            source.text(.issuer, else: istioInjected ? IssuerKind.istiod.rawValue : IssuerKind.local.rawValue),
            as: IssuerKind.self)
        let ttl = try AgentOption.svidTTL.duration(
            source.text(.svidTTL, else: issuer == .istiod ? istiodSVIDTTL : defaultSVIDTTL))
        let ratio = try AgentOption.rotateRatio.fraction(text(.rotateRatio))
        let caCert = source.given(.caCert)
        let caKey = source.given(.caKey)
        if (caCert == nil) != (caKey == nil) {
            throw (caCert == nil ? AgentOption.caCert : AgentOption.caKey).refusal("--ca-cert and --ca-key go together")
        }
        let caTTL = try AgentOption.caTTL.duration(text(.caTTL))
        let istiod = try istiodSettings(source)
        // A self-made root must hold its rotation: the successor in the bundle an SVID lifetime and a margin before
        // it signs, the old root kept until its last SVID expires (RootRotationSchedule). An operator CA (or
        // SPIRE) is not rotated here, so --ca-ttl does not apply to it.
        let rootRatio = Double(RootRotationSchedule.minimumRootToSVIDLifetimeRatio)
        if issuer == .local && caCert == nil && caTTL < rootRatio * ttl.rounded(.up) {
            throw AgentOption.caTTL.refusal(
                "must be at least \(Int(rootRatio)) × --svid-ttl (\(DurationText.format(seconds: rootRatio * ttl.rounded(.up)))) so the root can rotate with overlap, got \(DurationText.format(seconds: caTTL))"
            )
        }

        let upstream: UnixSocketAddress
        do { upstream = try UnixSocketAddress(text(.upstreamSocket)) } catch {
            throw AgentOption.upstreamSocket.refusal(error.description)
        }
        let level = try AgentOption.logLevel.choice(text(.logLevel), as: Logger.Level.self, ignoringCase: true)
        let format = try AgentOption.logFormat.choice(text(.logFormat), as: LogOutput.Format.self)
        let drain = try AgentOption.drainTimeout.duration(text(.drainTimeout))
        let stall = try AgentOption.writeStallTimeout.duration(text(.writeStallTimeout))
        let queued = try AgentOption.maxQueuedBytes.whole(text(.maxQueuedBytes))
        var limits = InboundLimits()
        limits.maxRequestBytes = try AgentOption.maxRequestBytes.whole(text(.maxRequestBytes))
        limits.maxConnections = try AgentOption.maxConnections.whole(text(.maxConnections))
        var statusAddress: TCPAddress?
        if let addressText = source.given(.statusAddr), addressText != "off" {
            do { statusAddress = try TCPAddress(addressText) } catch {
                throw AgentOption.statusAddr.refusal(error.description)
            }
        }

        let fileDirs = try directories(text(.fileDirs))
        let uids = try ids(source.given(.allowUID), option: .allowUID)
        let gids = try ids(source.given(.allowGID), option: .allowGID)

        var configuration = AgentConfiguration(
            socket: socket, socketMode: mode, trustDomain: trustDomain, spiffeID: spiffeID, svidTTL: ttl,
            rotateRatio: ratio, stateDir: text(.stateDir), caTTL: caTTL, caCertPath: caCert, caKeyPath: caKey,
            issuer: issuer, upstreamSocket: upstream, istiod: istiod, logLevel: level, logFormat: format,
            drainTimeout: drain, fileDirectories: fileDirs,
            // The agent's own user is always admitted (it can read the agent's files anyway, and probes run as it);
            // by default no one else, matching the socket's 0600 default.
            allowedUIDs: Set(uids ?? []).union([ownUID]), allowedGIDs: Set(gids ?? []))
        configuration.writeStallTimeout = stall
        configuration.maxQueuedBytes = queued
        configuration.limits = limits
        configuration.jwtTTL = try AgentOption.jwtTTL.duration(text(.jwtTTL))
        configuration.statusAddress = statusAddress
        configuration.spiffeIDGiven = source.given(.spiffeID) != nil
        configuration.credentialFiles = try credentialFiles(source, issuer: issuer)
        try resolveOutputs(source, into: &configuration)
        if let crl = source.given(.crlFile) {
            configuration.crlFile = try AgentOption.crlFile.absolutePath(crl)
            configuration.crlFileGiven = true
        } else {
            configuration.crlFile = defaultCRLFile
        }
        configuration.naming = try naming(source)
        configuration.federation = try federation(source, ownTrustDomain: configuration.trustDomain)
        configuration.federationBootstrap = try federationBootstrap(source, federation: configuration.federation)
        return configuration
    }

    /// `--federate-bootstrap <td>=<file>` (or `SDS_FEDERATE_BOOTSTRAP`): required for, and only for, each https_spiffe
    /// endpoint (its server proves an ID of the domain, verified with roots obtained out of band the first time).
    private static func federationBootstrap(_ source: OptionSource, federation: [FederationSource])
        throws(ConfigurationError) -> [TrustDomain: String]
    {
        let option = AgentOption.federateBootstrap
        let entries = source.entries(option)
        var files: [TrustDomain: String] = [:]
        for entry in entries {
            // The same trust-domain rules as --federate-with's (a bare name or its spiffe:// form, no path).
            guard let equals = entry.firstIndex(of: "="),
                let domain = try? FederationSource.trustDomain(parsing: String(entry[..<equals]))
            else {
                throw option.refusal("'\(entry)' is not <trust domain>=<absolute file>")
            }
            let path = try option.absolutePath(String(entry[entry.index(after: equals)...]))
            let spiffeEndpoint = federation.contains {
                if case .endpoint(let url) = $0.location { return $0.trustDomain == domain && url.endpointID != nil }
                return false
            }
            guard spiffeEndpoint else {
                throw option.refusal(
                    "'\(entry)': \(domain.name) has no https_spiffe endpoint in --federate-with (https://…#spiffe://…)")
            }
            files[domain] = path
        }
        for source in federation {
            if case .endpoint(let url) = source.location, url.endpointID != nil, files[source.trustDomain] == nil {
                throw AgentOption.federateWith.refusal(
                    "'\(source)': an https_spiffe endpoint needs --federate-bootstrap \(source.trustDomain.name)=<file> "
                        + "(the roots that verify it the first time)")
            }
        }
        return files
    }

    /// `--federate-with` (or `SDS_FEDERATE_WITH`, comma-separated): one source per trust domain, never the own one.
    private static func federation(_ source: OptionSource, ownTrustDomain: TrustDomain) throws(ConfigurationError)
        -> [FederationSource]
    {
        let option = AgentOption.federateWith
        let entries = source.entries(option)
        var sources: [FederationSource] = []
        for entry in entries {
            let parsed: FederationSource
            do throws(FederationSource.ParseError) { parsed = try FederationSource.parse(entry) } catch {
                throw option.refusal(error.description)
            }
            guard parsed.trustDomain != ownTrustDomain else {
                throw option.refusal("'\(entry)': \(ownTrustDomain.name) is this agent's own trust domain")
            }
            guard !sources.contains(where: { $0.trustDomain == parsed.trustDomain }) else {
                throw option.refusal("'\(entry)': \(parsed.trustDomain.name) is named twice")
            }
            sources.append(parsed)
        }
        return sources
    }

    /// The three SDS names: each non-empty and no two alike (one name cannot mean two secrets), none a name with a
    /// meaning of its own (`spiffe://…`, `file-cert:`, `file-root:`, `jwt-svid:`).
    private static func naming(_ source: OptionSource) throws(ConfigurationError) -> SDSNaming {
        let options = [AgentOption.defaultSVIDName, .defaultBundleName, .defaultAllBundlesName]
        var names: [String] = []
        for option in options {
            let name = source.text(option, else: option.defaultText)
            guard !name.isEmpty, name.utf8.count <= 256, !name.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F })
            else {
                throw option.refusal("'\(name)' is not a secret name: 1 to 256 printable characters, no spaces")
            }
            for reserved in ["spiffe://", "file-cert:", "file-root:", SecretName.jwtSVIDPrefix]
            where name.hasPrefix(reserved) {
                throw option.refusal("'\(name)' starts with \(reserved), which names other secrets")
            }
            if let index = names.firstIndex(of: name) {
                throw option.refusal("'\(name)' is already the name given by \(options[index].flag)")
            }
            names.append(name)
        }
        return SDSNaming(svid: names[0], bundle: names[1], allBundles: names[2])
    }

    /// A bare trust domain name (`spiffe://example.org` is refused too: the flag takes the name).
    private static func resolveTrustDomain(_ text: String) throws(ConfigurationError) -> TrustDomain {
        let option = AgentOption.trustDomain
        let domain: TrustDomain
        do { domain = try TrustDomain(text) } catch {
            throw option.refusal("'\(text)' is not a valid trust domain: \(error)")
        }
        guard domain.name == text else {
            throw option.refusal("'\(text)' must be a bare trust domain name such as example.org")
        }
        return domain
    }

    /// A workload's ID (with a path) in `trustDomain`.
    private static func resolveSPIFFEID(_ text: String, in trustDomain: TrustDomain) throws(ConfigurationError)
        -> SPIFFEID
    {
        let option = AgentOption.spiffeID
        let id: SPIFFEID
        do { id = try SPIFFEID(parsing: text) } catch {
            throw option.refusal("'\(text)' is not a valid SPIFFE ID: \(error)")
        }
        if id.path.isEmpty { throw option.refusal("'\(text)' names a trust domain, not a workload (add a path)") }
        if id.trustDomain != trustDomain {
            throw option.refusal("'\(text)' is not in trust domain \(trustDomain) (set --trust-domain to match)")
        }
        return id
    }

    /// `--output-dir`, `--output-layout`, `--output-jwt`, `--output-signal`.
    private static func resolveOutputs(_ source: OptionSource, into configuration: inout AgentConfiguration)
        throws(ConfigurationError)
    {
        if let directory = source.given(.outputDir) {
            configuration.outputDirectory = try AgentOption.outputDir.absolutePath(directory)
        }
        configuration.outputLayout = try AgentOption.outputLayout.choice(
            source.text(.outputLayout, else: ""), as: OutputLayout.self)
        // The environment form separates entries with commas (an audience holding one needs the flag).
        let option = AgentOption.outputJWT
        let jwtEntries = source.entries(option)
        for entry in jwtEntries {
            guard let eq = entry.lastIndex(of: "="), eq != entry.startIndex else {
                throw option.refusal("'\(entry)' must be <audience>=<file>, e.g. spiffe://td/db=/run/jwt")
            }
            let path = try option.absolutePath(String(entry[entry.index(after: eq)...]))
            configuration.outputJWTs.append(OutputJWT(audience: String(entry[..<eq]), path: path))
        }
        if !configuration.outputJWTs.isEmpty, configuration.issuer != .local, configuration.issuer != .workloadAPI {
            throw option.refusal(
                "--issuer \(configuration.issuer.rawValue) has no JWT-SVID source (local and workload-api do)")
        }
        if let signalText = source.given(.outputSignal) {
            switch OutputSignal.parse(signalText) {
            case .success(let signal): configuration.outputSignal = signal
            case .failure(let error): throw AgentOption.outputSignal.refusal(error.description)
            }
            guard configuration.outputDirectory != nil || !configuration.outputJWTs.isEmpty else {
                throw AgentOption.outputSignal.refusal(
                    "signals after files are written: needs --output-dir or --output-jwt")
            }
        }
    }

    /// `--svid-file`, `--svid-key-file`, `--bundle-file`: required with `--issuer files` (the key file only when the
    /// SVID file is not a credential bundle), refused with any other issuer (they would be silently ignored).
    private static func credentialFiles(_ source: OptionSource, issuer: IssuerKind) throws(ConfigurationError)
        -> CredentialFiles?
    {
        let svid = source.given(.svidFile)
        let key = source.given(.svidKeyFile)
        let bundle = source.given(.bundleFile)
        guard issuer == .files else {
            if svid != nil || key != nil || bundle != nil {
                let option: AgentOption = svid != nil ? .svidFile : key != nil ? .svidKeyFile : .bundleFile
                throw option.refusal("only used with --issuer files")
            }
            return nil
        }
        guard let svid else {
            throw ConfigurationError(
                flag: AgentOption.svidFile.labelWithEnvironment,
                problem: "--issuer files needs the certificate chain file (or a Pod Certificates credential bundle)")
        }
        guard let bundle else {
            throw ConfigurationError(
                flag: AgentOption.bundleFile.labelWithEnvironment,
                problem: "--issuer files needs the trust domain's roots (PEM or a SPIFFE bundle document)")
        }
        return CredentialFiles(
            svid: try AgentOption.svidFile.absolutePath(svid),
            key: try key.map { (key) throws(ConfigurationError) in try AgentOption.svidKeyFile.absolutePath(key) },
            bundle: try AgentOption.bundleFile.absolutePath(bundle))
    }

    private static func istiodSettings(_ source: OptionSource) throws(ConfigurationError) -> IstiodSettings {
        let addressText = source.text(.caAddr, else: "")
        let address: TCPEndpoint
        do { address = try TCPEndpoint(addressText) } catch {
            throw AgentOption.caAddr.refusal(error.description)
        }
        let rootText = source.text(.caRootCert, else: "")
        guard rootText == "SYSTEM" || rootText.hasPrefix("/") else {
            throw AgentOption.caRootCert.refusal("'\(rootText)' must be an absolute path or SYSTEM")
        }
        let tokenPath = try AgentOption.tokenFile.absolutePath(source.text(.tokenFile, else: ""))
        var headers: [IstiodSettings.Header] = []
        let prefix = EnvironmentVariable.caHeaderPrefix
        for (name, value) in source.environment where name.hasPrefix(prefix) && name.count > prefix.count {
            let header = String(name.dropFirst(prefix.count)).lowercased()
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
            serverName: source.text(.caServerName, else: address.host), tokenPath: tokenPath,
            clusterID: source.text(.clusterID, else: ""), headers: headers, keyAlgorithm: try keyAlgorithm(source))
    }

    /// `--key-type`, else istio-agent's variables: ECC_SIGNATURE_ALGORITHM=ECDSA (ECC_CURVE=P384 for P-384), or
    /// WORKLOAD_RSA_KEY_SIZE for RSA; else the first of `keyAlgorithms`.
    private static func keyAlgorithm(_ source: OptionSource) throws(ConfigurationError) -> KeyAlgorithm {
        if let text = source.given(.keyType) {
            let name = try AgentOption.keyType.choice(text)
            guard let entry = keyAlgorithms.first(where: { $0.name == name }) else {
                throw AgentOption.keyType.refusal("'\(text)' names no key algorithm")
            }
            return entry.algorithm
        }
        let algorithmVariable = EnvironmentVariable.eccSignatureAlgorithm.name
        let curveVariable = EnvironmentVariable.eccCurve.name
        let algorithm = source.environment[algorithmVariable] ?? ""
        if algorithm.uppercased() == "ECDSA" {
            switch (source.environment[curveVariable] ?? "").uppercased() {
            case "", "P256": return .ecdsaP256
            case "P384": return .ecdsaP384
            case let curve:
                throw ConfigurationError(flag: curveVariable, problem: "'\(curve)' is not one of: P256, P384")
            }
        }
        if !algorithm.isEmpty {
            throw ConfigurationError(flag: algorithmVariable, problem: "'\(algorithm)' is not ECDSA")
        }
        let sizeVariable = EnvironmentVariable.workloadRSAKeySize.name
        if let size = source.variable(sizeVariable) {
            switch size {
            case "2048": return .rsa(bits: 2048)
            case "3072": return .rsa(bits: 3072)
            case "4096": return .rsa(bits: 4096)
            default:
                throw ConfigurationError(flag: sizeVariable, problem: "'\(size)' is not one of: 2048, 3072, 4096")
            }
        }
        return keyAlgorithms[0].algorithm
    }

    /// `--file-dirs`: absolute directories, comma-separated. `/` is refused: it would let any client read any file
    /// the agent can read.
    private static func directories(_ text: String) throws(ConfigurationError) -> [String] {
        let option = AgentOption.fileDirs
        var result: [String] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            var path = String(part)
            while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
            guard path.hasPrefix("/") else { throw option.refusal("'\(part)' is not an absolute directory") }
            guard path != "/" else {
                throw option.refusal("'/' would serve every file the agent can read; name the certificate directories")
            }
            guard !path.split(separator: "/").contains("..") else { throw option.refusal("'\(part)' contains '..'") }
            result.append(path)
        }
        return result
    }

    /// `--allow-uid` / `--allow-gid`: decimal IDs, comma-separated; nil when not given.
    private static func ids(_ text: String?, option: AgentOption) throws(ConfigurationError) -> [UInt32]? {
        guard let text else { return nil }
        var result: [UInt32] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = part.trimmingPrefix(" ")
            guard let id = UInt32(trimmed), id != UInt32.max else {
                throw option.refusal("'\(part)' is not a numeric ID (e.g. 1337,1000)")
            }
            result.append(id)
        }
        return result
    }
}
