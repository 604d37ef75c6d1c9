import FileIdentity
import Issuance
import LocalCA
import Logging
import Servers

/// One option of `sds-agent run`, declared once in `AgentOption.all`: its flag, environment variable, default, value
/// syntax and range, help text and documentation section. `--help`, the command-line parser, the checks in
/// `AgentConfiguration.resolve` and docs/configuration.md (`make docs`) all read it from here.
public struct AgentOption: Sendable {
    /// Where an option is documented (in this order, in `--help` and docs/configuration.md).
    public enum Section: String, Sendable, CaseIterable {
        case socketAndPeers = "Socket and peers"
        case identityAndIssuer = "Identity and issuer"
        case secretNames = "SDS secret names and federation"
        case rotation = "Rotation"
        case files = "Files in and out"
        case limits = "Limits"
        case status = "Status, logs and metrics"
    }

    /// What a value must look like. The ranges and choices here are the ones `resolve` enforces.
    public enum Syntax: Sendable {
        /// `DurationText`: `1h30m`, `500ms`, bare seconds. `why` explains the range in the refusal and the docs.
        case duration(ClosedRange<Double>, why: String)
        /// `SizeText`: bytes, or a whole number with `Ki`, `Mi`, `Gi`.
        case size(ClosedRange<Int>)
        /// A plain whole number.
        case count(ClosedRange<Int>)
        case choice([String])
        /// A number strictly between 0 and 1.
        case fraction
        /// An octal file mode, at most 0777.
        case fileMode
        case absolutePath
        /// Checked by the type it becomes (a socket address, a SPIFFE ID, ...); the text says what it takes.
        case described(String)
    }

    public enum Default: Sendable {
        /// Used as if it had been typed.
        case value(String)
        /// Worked out when resolving (from other options or the environment), or nothing: the text says which.
        case described(String)
    }

    /// The flag without its dashes.
    public let name: String
    public let valueName: String
    /// The variable read when the flag is absent (an empty one counts as unset).
    public let environment: String
    /// Variables the default is worked out from (e.g. POD_NAMESPACE for --spiffe-id).
    public let alsoReads: [EnvironmentVariable]
    public let defaultValue: Default
    public let syntax: Syntax
    public let help: String
    public let section: Section
    /// Whether refusals name the variable too (`--svid-ttl (SECRET_TTL)`) or only the flag: kept per option as the
    /// messages have always read, since scripts and tests match them.
    let errorsNameEnvironment: Bool
    let field: Field

    /// Where the typed text goes in `RawAgentOptions`: a closure that hands its body that field, in place
    /// (`{ $1(&$0.socket) }`). Not a key path: the runtime builds each key path object from its pattern on first use,
    /// ~21,000 instructions apiece, and the 43 of this table were 5 % of the agent's start-up; a closure that
    /// captures nothing is a plain function.
    enum Field: Sendable {
        case single(@Sendable (inout RawAgentOptions, (inout String?) -> Void) -> Void)
        /// The flag repeats; each value is kept, in order.
        case repeated(@Sendable (inout RawAgentOptions, (inout [String]) -> Void) -> Void)
    }

    init(
        _ name: String, _ valueName: String, env environment: String, alsoReads: [EnvironmentVariable] = [],
        default defaultValue: Default, syntax: Syntax, section: Section, errorsNameEnvironment: Bool = false,
        field: Field, help: String
    ) {
        self.name = name
        self.valueName = valueName
        self.environment = environment
        self.alsoReads = alsoReads
        self.defaultValue = defaultValue
        self.syntax = syntax
        self.help = help
        self.section = section
        self.errorsNameEnvironment = errorsNameEnvironment
        self.field = field
    }

    public var flag: String { "--" + name }

    /// How a refusal names this option.
    var label: String { errorsNameEnvironment ? labelWithEnvironment : flag }
    var labelWithEnvironment: String { "\(flag) (\(environment))" }

    func set(_ value: String, in options: inout RawAgentOptions) {
        switch field {
        case .single(let access): access(&options) { $0 = value }
        case .repeated(let access): access(&options) { $0.append(value) }
        }
    }

    /// The default as users read it (`--help`, docs/configuration.md).
    public var defaultText: String {
        switch defaultValue {
        case .value(let text): text
        case .described(let text): text
        }
    }

    /// The accepted values and range in a few words (`--help`); nil for `.described`, whose text is for the docs.
    var constraintText: String? {
        switch syntax {
        case .duration(let range, _):
            "a duration from \(DurationText.format(seconds: range.lowerBound)) to "
                + DurationText.format(seconds: range.upperBound)
        case .size(let range):
            "a size from \(SizeText.format(bytes: range.lowerBound)) to \(SizeText.format(bytes: range.upperBound))"
        case .count(let range): "a whole number from \(range.lowerBound) to \(range.upperBound)"
        case .choice(let values): "one of: " + values.joined(separator: ", ")
        case .fraction: "a number between 0 and 1 (exclusive)"
        case .fileMode: "an octal file mode (e.g. 0600, 0660)"
        case .absolutePath: "an absolute path"
        case .described: nil
        }
    }

    /// The value syntax in full, for the docs.
    var syntaxText: String {
        switch syntax {
        case .duration(_, let why):
            (constraintText ?? "") + " (\(why)); " + AgentOption.durationSyntax
        case .size: (constraintText ?? "") + "; " + AgentOption.sizeSyntax
        case .described(let text): text
        default: constraintText ?? ""
        }
    }

    static let durationSyntax = "durations are Go-style: 1h30m, 90s, 500ms, or bare seconds"
    static let sizeSyntax = "sizes are bytes, or a whole number with Ki, Mi or Gi (powers of 1024): 65536, 64Ki, 16Mi"
}

/// A variable read only from the environment: what an option's default is worked out from, or settings istio-agent
/// takes that way (`CA_HEADER_<NAME>`).
public struct EnvironmentVariable: Sendable {
    public let name: String
    public let section: AgentOption.Section
    public let help: String
}

extension EnvironmentVariable {
    static let podNamespace = EnvironmentVariable(
        name: "POD_NAMESPACE", section: .identityAndIssuer,
        help: "The pod's namespace, for the default --spiffe-id (default: default).")
    static let serviceAccount = EnvironmentVariable(
        name: "SERVICE_ACCOUNT", section: .identityAndIssuer,
        help: "The pod's service account, for the default --spiffe-id (default: default).")
    static let pilotCertProvider = EnvironmentVariable(
        name: "PILOT_CERT_PROVIDER", section: .identityAndIssuer,
        help: "istiod, with CA_ADDR set (an injected istio-proxy container), makes --issuer default to istiod.")
    static let eccSignatureAlgorithm = EnvironmentVariable(
        name: "ECC_SIGNATURE_ALGORITHM", section: .identityAndIssuer,
        help: "istio-agent's key choice when --key-type is unset: ECDSA (P-256, or ECC_CURVE).")
    static let eccCurve = EnvironmentVariable(
        name: "ECC_CURVE", section: .identityAndIssuer,
        help: "With ECC_SIGNATURE_ALGORITHM=ECDSA: P256 (default) or P384.")
    static let workloadRSAKeySize = EnvironmentVariable(
        name: "WORKLOAD_RSA_KEY_SIZE", section: .identityAndIssuer,
        help: "istio-agent's RSA key size when --key-type and ECC_SIGNATURE_ALGORITHM are unset: 2048, 3072, 4096.")
    /// A prefix: each `CA_HEADER_<NAME>=<value>` is one header.
    static let caHeaderPrefix = "CA_HEADER_"
    static let caHeaders = EnvironmentVariable(
        name: caHeaderPrefix + "<NAME>", section: .identityAndIssuer,
        help: "--issuer istiod: sent as header <name> (lower-cased) with every CSR, e.g. CA_HEADER_X-TENANT=blue.")

    /// Every environment-only variable, in documentation order.
    static let all: [EnvironmentVariable] = [
        podNamespace, serviceAccount, pilotCertProvider, eccSignatureAlgorithm, eccCurve, workloadRSAKeySize, caHeaders,
    ]
}

extension AgentOption {
    // MARK: Socket and peers

    static let socket = AgentOption(
        "socket", "path", env: "SDS_SOCKET", default: .value(AgentConfiguration.defaultSocket),
        syntax: .described("a file path or unix:///absolute/path, at most 107 bytes"), section: .socketAndPeers,
        field: .single { $1(&$0.socket) },
        help: "Unix socket to serve SDS and the Workload API on; a missing directory is created (0755).")
    static let socketMode = AgentOption(
        "socket-mode", "mode", env: "SDS_SOCKET_MODE", default: .value("0600"), syntax: .fileMode,
        section: .socketAndPeers, field: .single { $1(&$0.socketMode) },
        help: "File mode of the socket; 0600 admits only this user (Envoy must run as it).")
    static let allowUID = AgentOption(
        "allow-uid", "uid,uid", env: "SDS_ALLOW_UIDS", default: .described("none besides the agent's own"),
        syntax: .described("decimal user IDs, comma-separated"), section: .socketAndPeers,
        errorsNameEnvironment: true, field: .single { $1(&$0.allowUIDs) },
        help: "User IDs admitted on the socket, checked by SO_PEERCRED (the agent's own UID always is).")
    static let allowGID = AgentOption(
        "allow-gid", "gid,gid", env: "SDS_ALLOW_GIDS", default: .described("none"),
        syntax: .described("decimal group IDs, comma-separated"), section: .socketAndPeers,
        errorsNameEnvironment: true, field: .single { $1(&$0.allowGIDs) },
        help: "Group IDs admitted on the socket, besides --allow-uid.")

    // MARK: Identity and issuer

    static let trustDomain = AgentOption(
        "trust-domain", "name", env: "TRUST_DOMAIN", default: .value("cluster.local"),
        syntax: .described("a bare SPIFFE trust domain name, e.g. example.org"), section: .identityAndIssuer,
        errorsNameEnvironment: true, field: .single { $1(&$0.trustDomain) },
        help: "Trust domain of the workload's SPIFFE ID.")
    static let spiffeID = AgentOption(
        "spiffe-id", "id", env: "SPIFFE_ID", alsoReads: [.podNamespace, .serviceAccount],
        default: .described("spiffe://<trust-domain>/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT"),
        syntax: .described("a SPIFFE ID in --trust-domain, with a path"), section: .identityAndIssuer,
        errorsNameEnvironment: true, field: .single { $1(&$0.spiffeID) },
        help: "Workload SPIFFE ID, the one identity served, whatever the issuer.")
    static let issuer = AgentOption(
        "issuer", "kind", env: "SDS_ISSUER", alsoReads: [.pilotCertProvider],
        default: .described("local; istiod when PILOT_CERT_PROVIDER=istiod and CA_ADDR are set"),
        syntax: .choice(AgentConfiguration.IssuerKind.allCases.map(\.rawValue)), section: .identityAndIssuer,
        field: .single { $1(&$0.issuer) },
        help:
            "Where SVIDs come from: local (the embedded CA), workload-api (a SPIRE agent), istiod (a CSR to istiod or istio-csr) or files (--svid-file, kept fresh by someone else)."
    )
    static let stateDir = AgentOption(
        "state-dir", "dir", env: "SDS_STATE_DIR", default: .value(AgentConfiguration.defaultStateDir),
        syntax: .described("a directory"), section: .identityAndIssuer, field: .single { $1(&$0.stateDir) },
        help:
            "Where the local CA keeps ca.pem, ca.key (and ca-next.* while rotating) and its JWT keys, 0600; must be ours and not group/world-writable."
    )
    static let caCert = AgentOption(
        "ca-cert", "pem", env: "SDS_CA_CERT", default: .described("none: a self-made root in --state-dir"),
        syntax: .described("a PEM file; goes with --ca-key"), section: .identityAndIssuer,
        field: .single { $1(&$0.caCert) },
        help: "Operator CA certificate to sign with (then its chain), instead of a self-made root.")
    static let caKey = AgentOption(
        "ca-key", "pem", env: "SDS_CA_KEY", default: .described("none"),
        syntax: .described("a PEM file, the agent's own, mode 0600 or 0400"), section: .identityAndIssuer,
        field: .single { $1(&$0.caKey) }, help: "Private key of --ca-cert.")
    static let upstreamSocket = AgentOption(
        "upstream-socket", "unix:///path", env: "UPSTREAM_SPIFFE_ENDPOINT_SOCKET",
        default: .value(AgentConfiguration.defaultUpstreamSocket),
        syntax: .described("unix:///absolute/path or a file path"), section: .identityAndIssuer,
        field: .single { $1(&$0.upstreamSocket) }, help: "SPIFFE Workload API socket for --issuer workload-api.")
    static let caAddr = AgentOption(
        "ca-addr", "host:port", env: "CA_ADDR", default: .value(AgentConfiguration.defaultCAAddress),
        syntax: .described("host:port ([v6]:port for IPv6), the host may be a name"), section: .identityAndIssuer,
        errorsNameEnvironment: true, field: .single { $1(&$0.caAddr) }, help: "istiod's address for --issuer istiod.")
    static let caRootCert = AgentOption(
        "ca-root-cert", "pem|SYSTEM", env: "CA_ROOT_CA", default: .value(AgentConfiguration.defaultCARootCert),
        syntax: .described("an absolute path, or SYSTEM for the OS trust store"), section: .identityAndIssuer,
        errorsNameEnvironment: true, field: .single { $1(&$0.caRootCert) },
        help: "Roots istiod's certificate must chain to; also served in ROOTCA.")
    static let caServerName = AgentOption(
        "ca-server-name", "name", env: "ISTIOD_SAN", default: .described("the host of --ca-addr"),
        syntax: .described("a DNS name"), section: .identityAndIssuer, field: .single { $1(&$0.caServerName) },
        help: "Name istiod's certificate must carry.")
    static let tokenFile = AgentOption(
        "token-file", "path", env: "SDS_TOKEN_FILE", default: .value(AgentConfiguration.defaultTokenFile),
        syntax: .absolutePath, section: .identityAndIssuer, field: .single { $1(&$0.tokenFile) },
        help: "Projected service-account token (audience istio-ca), re-read for every CSR.")
    static let defaultSVIDName = AgentOption(
        "default-svid-name", "name", env: "SDS_DEFAULT_SVID_NAME", default: .value(SDSNaming.spire.svid),
        syntax: .described("a secret name"), section: .secretNames, field: .single { $1(&$0.defaultSVIDName) },
        help: "The SDS name of the workload's certificate and key (SPIRE's default_svid_name); the SPIFFE ID works too."
    )
    static let defaultBundleName = AgentOption(
        "default-bundle-name", "name", env: "SDS_DEFAULT_BUNDLE_NAME", default: .value(SDSNaming.spire.bundle),
        syntax: .described("a secret name"), section: .secretNames, field: .single { $1(&$0.defaultBundleName) },
        help:
            "The SDS name of the own trust domain's bundle (SPIRE's default_bundle_name); spiffe://<trust domain> "
            + "works too. Istio with federation: null (a name nobody asks for).")
    static let defaultAllBundlesName = AgentOption(
        "default-all-bundles-name", "name", env: "SDS_DEFAULT_ALL_BUNDLES_NAME",
        default: .value(SDSNaming.spire.allBundles), syntax: .described("a secret name"), section: .secretNames,
        field: .single { $1(&$0.defaultAllBundlesName) },
        help:
            "The SDS name of every trust domain's bundle as Envoy's SPIFFE validator config, each bound to its own "
            + "domain (SPIRE's default_all_bundles_name). Istio with federation: ROOTCA.")
    static let federateWith = AgentOption(
        "federate-with", "td=source", env: "SDS_FEDERATE_WITH", default: .described("none"),
        syntax: .described(
            "<trust domain>=<source>, the source an absolute file (a SPIFFE bundle document or PEM certificates, "
                + "watched), an https:// bundle endpoint (https_web: the OS trust store verifies it; SSL_CERT_FILE and "
                + "SSL_CERT_DIR apply) or https://…#spiffe://<td>/<path> (https_spiffe: the endpoint must present that "
                + "SPIFFE ID; needs --federate-bootstrap); endpoints are fetched again after the bundle's "
                + "spiffe_refresh_hint (default 5m, 10s to 1h); the flag repeats, the variable separates entries with "
                + "commas"),
        section: .secretNames, field: .repeated { $1(&$0.federateWith) },
        help:
            "Trust another trust domain: its bundle is served as spiffe://<td>, in the all-bundles name and as the "
            + "Workload API's federated bundles; repeatable.")
    static let federateBootstrap = AgentOption(
        "federate-bootstrap", "td=file", env: "SDS_FEDERATE_BOOTSTRAP", default: .described("none"),
        syntax: .described(
            "<trust domain>=<absolute file> (PEM or a SPIFFE bundle document), one per https_spiffe endpoint; the "
                + "flag repeats, the variable separates entries with commas"),
        section: .secretNames, field: .repeated { $1(&$0.federateBootstrap) },
        help: "The roots that verify a domain's https_spiffe bundle endpoint until its first bundle is fetched.")
    static let clusterID = AgentOption(
        "cluster-id", "id", env: "ISTIO_META_CLUSTER_ID", default: .value(AgentConfiguration.defaultClusterID),
        syntax: .described("text"), section: .identityAndIssuer, field: .single { $1(&$0.clusterID) },
        help: "Sent as ClusterID metadata with every CSR.")
    static let keyType = AgentOption(
        "key-type", "type", env: "SDS_KEY_TYPE", alsoReads: [.eccSignatureAlgorithm, .eccCurve, .workloadRSAKeySize],
        default: .described(
            "\(AgentConfiguration.keyAlgorithms[0].name), else what ECC_SIGNATURE_ALGORITHM/ECC_CURVE/WORKLOAD_RSA_KEY_SIZE say"
        ),
        syntax: .choice(AgentConfiguration.keyAlgorithms.map(\.name)), section: .identityAndIssuer,
        field: .single { $1(&$0.keyType) }, help: "Workload key for --issuer istiod.")

    // MARK: Rotation

    static let svidTTL = AgentOption(
        "svid-ttl", "duration", env: "SECRET_TTL",
        default: .described(
            "\(AgentConfiguration.defaultSVIDTTL); \(AgentConfiguration.istiodSVIDTTL) with --issuer istiod"),
        syntax: .duration(
            AgentConfiguration.svidTTLRange,
            why: "an SVID must outlive Envoy's first reconnect attempts; istiod issues at most 90 days"),
        section: .rotation, errorsNameEnvironment: true, field: .single { $1(&$0.svidTTL) }, help: "SVID lifetime.")
    static let rotateRatio = AgentOption(
        "rotate-ratio", "ratio", env: "SECRET_GRACE_PERIOD_RATIO", default: .value("0.5"), syntax: .fraction,
        section: .rotation, errorsNameEnvironment: true, field: .single { $1(&$0.rotateRatio) },
        help: "Rotate when this fraction of the lifetime is left (0.5 rotates at half-life).")
    static let caTTL = AgentOption(
        "ca-ttl", "duration", env: "SDS_CA_TTL", default: .value("8760h"),
        syntax: .duration(AgentConfiguration.caTTLRange, why: "at most 10 years"), section: .rotation,
        field: .single { $1(&$0.caTTL) },
        help:
            "Lifetime of each self-made local CA root, rotated with overlap; at least \(RootRotationSchedule.minimumRootToSVIDLifetimeRatio) x --svid-ttl."
    )
    static let jwtTTL = AgentOption(
        "jwt-ttl", "duration", env: "SDS_JWT_TTL",
        default: .value(DurationText.format(seconds: AgentConfiguration.defaultJWTTTL)),
        syntax: .duration(AgentConfiguration.jwtTTLRange, why: "a bearer token should not live long"),
        section: .rotation, field: .single { $1(&$0.jwtTTL) },
        help: "Lifetime of the JWT-SVIDs the local CA mints, re-minted at half-life.")

    // MARK: Files in and out

    static let svidFile = AgentOption(
        "svid-file", "pem", env: "SDS_SVID_FILE", default: .described("none"), syntax: .absolutePath,
        section: .files, field: .single { $1(&$0.svidFile) },
        help:
            "--issuer files: the certificate chain, or a Pod Certificates credential bundle (key and chain in one file, either order)."
    )
    static let svidKeyFile = AgentOption(
        "svid-key-file", "pem", env: "SDS_SVID_KEY_FILE", default: .described("none: the key is in --svid-file"),
        syntax: .absolutePath, section: .files, field: .single { $1(&$0.svidKeyFile) },
        help: "--issuer files: the private key, when --svid-file holds only the chain (tls.key, key.pem).")
    static let bundleFile = AgentOption(
        "bundle-file", "file", env: "SDS_BUNDLE_FILE", default: .described("none"), syntax: .absolutePath,
        section: .files, field: .single { $1(&$0.bundleFile) },
        help:
            "--issuer files: the trust domain's roots, PEM or a SPIFFE bundle document (ca.crt, a ClusterTrustBundle projection)."
    )
    static let crlFile = AgentOption(
        "crl-file", "pem", env: "CRL_FILE", default: .described("\(AgentConfiguration.defaultCRLFile) if present"),
        syntax: .absolutePath, section: .files, errorsNameEnvironment: true, field: .single { $1(&$0.crlFile) },
        help: "PEM CRLs of the trust domain, served in ROOTCA and spiffe://<td>.")
    static let fileDirs = AgentOption(
        "file-dirs", "dir,dir", env: "SDS_FILE_DIRS",
        default: .value(FileAccessPolicy.defaultDirectories.joined(separator: ",")),
        syntax: .described("absolute directories, comma-separated; not /"), section: .files,
        errorsNameEnvironment: true, field: .single { $1(&$0.fileDirs) },
        help:
            "Directories file-cert:/file-root: names may read (symlinks resolved; never the state dir or --ca-key).")
    static let outputDir = AgentOption(
        "output-dir", "dir", env: "OUTPUT_CERTS", default: .described("off"), syntax: .absolutePath,
        section: .files, errorsNameEnvironment: true, field: .single { $1(&$0.outputDir) },
        help: "Also write the identity as files here on every change, atomically, in --output-layout (key 0600).")
    static let outputLayout = AgentOption(
        "output-layout", "layout", env: "SDS_OUTPUT_LAYOUT", default: .value(OutputLayout.istio.rawValue),
        syntax: .choice(OutputLayout.allCases.map(\.rawValue)), section: .files,
        field: .single { $1(&$0.outputLayout) },
        help:
            "File names in --output-dir: istio (key.pem, cert-chain.pem, root-cert.pem) or spiffe-helper (svid.pem, svid_key.pem, svid_bundle.pem)."
    )
    static let outputJWT = AgentOption(
        "output-jwt", "aud=file", env: "SDS_OUTPUT_JWT", default: .described("none"),
        syntax: .described("<audience>=<absolute file>; the flag repeats, the variable separates entries with commas"),
        section: .files, field: .repeated { $1(&$0.outputJWT) },
        help: "Keep a JWT-SVID for <aud> in <file> (0600), re-written at half-life; repeatable.")
    static let outputSignal = AgentOption(
        "output-signal", "pidfile:SIG", env: "SDS_OUTPUT_SIGNAL", default: .described("none"),
        syntax: .described("<pidfile>:<signal name>; needs --output-dir or --output-jwt"), section: .files,
        field: .single { $1(&$0.outputSignal) },
        help: "Signal the process in <pidfile> once every file of an update is in place (e.g. /run/app.pid:SIGHUP).")

    // MARK: Limits

    static let drainTimeout = AgentOption(
        "drain-timeout", "duration", env: "SDS_DRAIN_TIMEOUT", default: .value("5s"),
        syntax: .duration(
            AgentConfiguration.drainTimeoutRange, why: "a drain only waits for peers to take the last bytes"),
        section: .limits, field: .single { $1(&$0.drainTimeout) },
        help: "How long SIGTERM waits for peers to take the last bytes.")
    static let writeStallTimeout = AgentOption(
        "write-stall-timeout", "duration", env: "SDS_WRITE_STALL_TIMEOUT",
        default: .value(DurationText.format(seconds: OutboundLimits.defaultWriteStallTimeout)),
        syntax: .duration(
            AgentConfiguration.writeStallTimeoutRange,
            why: "shorter cuts off a healthy Envoy, longer only keeps a stuck peer's memory"),
        section: .limits, field: .single { $1(&$0.writeStallTimeout) },
        help: "Disconnect a peer that takes no byte this long while data waits for it.")
    static let maxQueuedBytes = AgentOption(
        "max-queued-bytes", "bytes", env: "SDS_MAX_QUEUED_BYTES",
        default: .value(SizeText.format(bytes: OutboundLimits.defaultMaxQueuedBytes)),
        syntax: .size(AgentConfiguration.maxQueuedBytesRange), section: .limits,
        field: .single { $1(&$0.maxQueuedBytes) },
        help: "Disconnect a peer that lets more than this wait for it and takes none for 1 s, per connection.")
    static let maxRequestBytes = AgentOption(
        "max-request-bytes", "bytes", env: "SDS_MAX_REQUEST_BYTES",
        default: .value(SizeText.format(bytes: InboundLimits.defaultMaxRequestBytes)),
        syntax: .size(InboundLimits.maxRequestBytesRange), section: .limits, field: .single { $1(&$0.maxRequestBytes) },
        help: "Largest request message; a bigger one ends its stream RESOURCE_EXHAUSTED.")
    static let maxConnections = AgentOption(
        "max-connections", "count", env: "SDS_MAX_CONNECTIONS",
        default: .value(String(InboundLimits.defaultMaxConnections)),
        syntax: .count(InboundLimits.maxConnectionsRange), section: .limits, field: .single { $1(&$0.maxConnections) },
        help:
            "Connections served at once; at the limit a newcomer evicts the oldest connection without an HTTP/2 "
            + "preface, else the oldest without an open call, and is closed only when every connection holds a call.")

    // MARK: Status, logs and metrics

    static let statusAddr = AgentOption(
        "status-addr", "host:port", env: "SDS_STATUS_ADDR", default: .described("off"),
        syntax: .described("HOST:PORT with a numeric host, :PORT (loopback), or off"), section: .status,
        field: .single { $1(&$0.statusAddress) },
        help: "HTTP /live, /ready, /metrics on this address, e.g. 127.0.0.1:15095.")
    static let logLevel = AgentOption(
        "log-level", "level", env: "LOG_LEVEL", default: .value(Logger.Level.info.rawValue),
        syntax: .choice(Logger.Level.allCases.map(\.rawValue)), section: .status, field: .single { $1(&$0.logLevel) },
        help: "The least severe level logged (any case).")
    static let logFormat = AgentOption(
        "log-format", "format", env: "LOG_FORMAT", default: .value(LogOutput.Format.text.rawValue),
        syntax: .choice(LogOutput.Format.allCases.map(\.rawValue)), section: .status,
        field: .single { $1(&$0.logFormat) },
        help: "One line per event, as logfmt-style text or JSON.")

    /// Every option of `sds-agent run`, by section.
    public static let all: [AgentOption] = [
        socket, socketMode, allowUID, allowGID,
        trustDomain, spiffeID, issuer, stateDir, caCert, caKey, upstreamSocket, caAddr, caRootCert, caServerName,
        tokenFile, clusterID, keyType,
        defaultSVIDName, defaultBundleName, defaultAllBundlesName, federateWith, federateBootstrap,
        svidTTL, rotateRatio, caTTL, jwtTTL,
        svidFile, svidKeyFile, bundleFile, crlFile, fileDirs, outputDir, outputLayout, outputJWT, outputSignal,
        drainTimeout, writeStallTimeout, maxQueuedBytes, maxRequestBytes, maxConnections,
        statusAddr, logLevel, logFormat,
    ]

    static func named(_ name: String) -> AgentOption? { all.first { $0.name == name } }
}

// MARK: Reading and checking values

/// Where `resolve` reads an option's text: the flag, else its environment variable (empty counts as unset), else
/// its default when that is a value.
struct OptionSource {
    let options: RawAgentOptions
    let environment: [String: String]

    /// The operator's text (flag, then variable); nil when neither is set.
    func given(_ option: AgentOption) -> String? {
        if case .single(let access) = option.field {
            var options = options
            var flag: String?
            access(&options) { flag = $0 }
            if let flag { return flag }
        }
        return variable(option.environment)
    }

    /// The text to use: given, else the default value (nil when the default is worked out by `resolve`).
    func text(_ option: AgentOption) -> String? {
        if let given = given(option) { return given }
        if case .value(let text) = option.defaultValue { return text }
        return nil
    }

    /// The text, else `fallback` (for defaults worked out by `resolve`).
    func text(_ option: AgentOption, else fallback: String) -> String { text(option) ?? fallback }

    /// A repeatable option's entries: each flag, else the variable's comma-separated entries (a value holding a
    /// comma needs the flag).
    func entries(_ option: AgentOption) -> [String] {
        guard case .repeated(let access) = option.field else { return given(option).map { [$0] } ?? [] }
        var options = options
        var flags: [String] = []
        access(&options) { flags = $0 }
        if !flags.isEmpty { return flags }
        return (variable(option.environment) ?? "").split(separator: ",").map(String.init)
    }

    func variable(_ name: String) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }
}

extension AgentOption {
    func refusal(_ problem: String) -> ConfigurationError { ConfigurationError(flag: label, problem: problem) }

    /// Seconds, within this option's range.
    func duration(_ text: String) throws(ConfigurationError) -> Double {
        guard case .duration(let range, let why) = syntax else { preconditionFailure("\(flag) is not a duration") }
        let seconds: Double
        do { seconds = try DurationText.seconds(text) } catch { throw refusal(error.description) }
        guard range.contains(seconds) else {
            throw refusal(
                "'\(text)' is out of range: must be from \(DurationText.format(seconds: range.lowerBound)) to \(DurationText.format(seconds: range.upperBound)) (\(why))"
            )
        }
        return seconds
    }

    /// Bytes (`size`) or a plain number (`count`), within this option's range.
    func whole(_ text: String) throws(ConfigurationError) -> Int {
        switch syntax {
        case .size(let range):
            guard let bytes = try? SizeText.bytes(text), range.contains(bytes) else {
                throw refusal(
                    "'\(text)' must be a size from \(SizeText.format(bytes: range.lowerBound)) to \(SizeText.format(bytes: range.upperBound)) (bytes, or with Ki, Mi, Gi)"
                )
            }
            return bytes
        case .count(let range):
            let trimmed = text.trimmingSpaces()
            guard trimmed.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(trimmed), range.contains(value)
            else {
                throw refusal("'\(text)' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        default: preconditionFailure("\(flag) is not a size or count")
        }
    }

    /// The one of this option's choices `text` names (in any case with `ignoringCase`).
    func choice(_ text: String, ignoringCase: Bool = false) throws(ConfigurationError) -> String {
        guard case .choice(let values) = syntax else { preconditionFailure("\(flag) is not a choice") }
        let wanted = ignoringCase ? text.lowercased() : text
        guard let value = values.first(where: { $0 == wanted }) else {
            throw refusal("'\(text)' is not one of: \(values.joined(separator: ", "))")
        }
        return value
    }

    /// The case of `T` that `text` names (the choices are `T`'s raw values).
    func choice<T: RawRepresentable>(_ text: String, as: T.Type, ignoringCase: Bool = false)
        throws(ConfigurationError) -> T
    where T.RawValue == String {
        guard let value = T(rawValue: try choice(text, ignoringCase: ignoringCase)) else {
            // Only when the table's choices and `T`'s cases disagree: a refusal still beats a crash on input.
            throw refusal("'\(text)' names no \(T.self)")
        }
        return value
    }

    func fraction(_ text: String) throws(ConfigurationError) -> Double {
        guard let value = Double(text), value > 0, value < 1 else {
            throw refusal("'\(text)' must be a number between 0 and 1 (0.5 rotates at half-life)")
        }
        return value
    }

    func fileMode(_ text: String) throws(ConfigurationError) -> UInt32 {
        guard let mode = UInt32(text.hasPrefix("0o") ? String(text.dropFirst(2)) : text, radix: 8), mode <= 0o777
        else {
            throw refusal("'\(text)' is not an octal file mode (e.g. 0600, 0660)")
        }
        return mode
    }

    func absolutePath(_ text: String) throws(ConfigurationError) -> String {
        guard text.hasPrefix("/") else { throw refusal("'\(text)' must be an absolute path") }
        return text
    }
}
