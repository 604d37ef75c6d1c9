/// `sds-agent`'s command line, parsed by hand.
///
/// Why not swift-argument-parser (nor does sds-dump, see DumpCommandLine): it links FoundationEssentials, measured at
/// +3.6 MB RSS in a static binary — a third of the sidecar's 12 MB budget, for parsing a dozen flags once at startup.
public enum AgentCommandLine {
    public enum Parsed: Equatable, Sendable {
        case run(RawAgentOptions)
        /// `sds-agent healthcheck [--socket PATH]`: the socket to ask (nil: SDS_SOCKET, then the default).
        case healthcheck(socket: String?)
        case help
        case version
    }

    public struct UsageError: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public static let version = "0.1.0"

    struct Flag: Sendable {
        let name: String
        let valueName: String
        let environment: String?
        let help: String
        let set: @Sendable (inout RawAgentOptions, String) -> Void
    }

    static let flags: [Flag] = [
        Flag(
            name: "socket", valueName: "path", environment: "SDS_SOCKET",
            help: "Unix socket to serve SDS on (default /run/secrets/workload-spiffe-uds/socket).",
            set: { $0.socket = $1 }),
        Flag(
            name: "socket-mode", valueName: "mode", environment: "SDS_SOCKET_MODE",
            help: "File mode of the socket, octal (default 0600: only this user; Envoy must run as it).",
            set: { $0.socketMode = $1 }),
        Flag(
            name: "trust-domain", valueName: "name", environment: "TRUST_DOMAIN",
            help: "Trust domain of the workload's SPIFFE ID (default cluster.local).", set: { $0.trustDomain = $1 }),
        Flag(
            name: "spiffe-id", valueName: "id", environment: "SPIFFE_ID",
            help:
                "Workload SPIFFE ID, the one identity served (default spiffe://<td>/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT).",
            set: { $0.spiffeID = $1 }),
        Flag(
            name: "svid-ttl", valueName: "duration", environment: "SECRET_TTL",
            help: "SVID lifetime, e.g. 1h, 30m, 24h (default 1h, 24h with --issuer istiod; 10s to 2160h).",
            set: { $0.svidTTL = $1 }),
        Flag(
            name: "rotate-ratio", valueName: "ratio", environment: "SECRET_GRACE_PERIOD_RATIO",
            help: "Rotate when this fraction of the lifetime is left (default 0.5).", set: { $0.rotateRatio = $1 }),
        Flag(
            name: "state-dir", valueName: "dir", environment: "SDS_STATE_DIR",
            help:
                "Where the local CA keeps ca.pem, ca.key (and ca-next.* while rotating), 0600; must be ours and not group/world-writable (default /var/lib/sds-agent).",
            set: { $0.stateDir = $1 }),
        Flag(
            name: "ca-ttl", valueName: "duration", environment: "SDS_CA_TTL",
            help:
                "Lifetime of each local CA root, rotated with overlap; 6 x --svid-ttl to 87600h (default 8760h).",
            set: { $0.caTTL = $1 }),
        Flag(
            name: "jwt-ttl", valueName: "duration", environment: "SDS_JWT_TTL",
            help: "Lifetime of the JWT-SVIDs the local CA mints, re-minted at half-life (default 5m; 10s to 24h).",
            set: { $0.jwtTTL = $1 }),
        Flag(
            name: "ca-cert", valueName: "pem", environment: "SDS_CA_CERT",
            help: "Operator CA certificate to sign with (then its chain), instead of a self-made root.",
            set: { $0.caCert = $1 }),
        Flag(
            name: "ca-key", valueName: "pem", environment: "SDS_CA_KEY", help: "Private key of --ca-cert.",
            set: { $0.caKey = $1 }),
        Flag(
            name: "issuer", valueName: "kind", environment: "SDS_ISSUER",
            help:
                "Where SVIDs come from: local (embedded CA, default), workload-api (a SPIRE agent), istiod (a CSR to istiod or istio-csr; the default when PILOT_CERT_PROVIDER=istiod and CA_ADDR are set) or files (--svid-file, kept fresh by someone else).",
            set: { $0.issuer = $1 }),
        Flag(
            name: "output-dir", valueName: "dir", environment: "OUTPUT_CERTS",
            help:
                "Also write the identity as files here on every change, atomically: key.pem (0600), cert-chain.pem, root-cert.pem.",
            set: { $0.outputDir = $1 }),
        Flag(
            name: "output-layout", valueName: "layout", environment: "SDS_OUTPUT_LAYOUT",
            help: "istio (default) or spiffe-helper (svid.pem, svid_key.pem, svid_bundle.pem).",
            set: { $0.outputLayout = $1 }),
        Flag(
            name: "output-jwt", valueName: "aud=file", environment: "SDS_OUTPUT_JWT",
            help: "Keep a JWT-SVID for <aud> in <file> (0600), re-written at half-life; repeatable.",
            set: { $0.outputJWT.append($1) }),
        Flag(
            name: "output-signal", valueName: "pidfile:SIG", environment: "SDS_OUTPUT_SIGNAL",
            help:
                "Signal the process in <pidfile> once every file of an update is in place (e.g. /run/app.pid:SIGHUP).",
            set: { $0.outputSignal = $1 }),
        Flag(
            name: "crl-file", valueName: "pem", environment: "CRL_FILE",
            help:
                "PEM CRLs of the trust domain, served in ROOTCA and spiffe://<td> (default /var/run/secrets/istio/crl/ca-crl.pem if present).",
            set: { $0.crlFile = $1 }),
        Flag(
            name: "svid-file", valueName: "pem", environment: "SDS_SVID_FILE",
            help:
                "--issuer files: the certificate chain, or a Pod Certificates credential bundle (key and chain in one file, either order).",
            set: { $0.svidFile = $1 }),
        Flag(
            name: "svid-key-file", valueName: "pem", environment: "SDS_SVID_KEY_FILE",
            help: "--issuer files: the private key, when --svid-file holds only the chain (tls.key, key.pem).",
            set: { $0.svidKeyFile = $1 }),
        Flag(
            name: "bundle-file", valueName: "file", environment: "SDS_BUNDLE_FILE",
            help:
                "--issuer files: the trust domain's roots, PEM or a SPIFFE bundle document (ca.crt, a ClusterTrustBundle projection).",
            set: { $0.bundleFile = $1 }),
        Flag(
            name: "upstream-socket", valueName: "unix:///path", environment: "UPSTREAM_SPIFFE_ENDPOINT_SOCKET",
            help:
                "SPIFFE Workload API socket for --issuer workload-api (default unix:///run/spire/sockets/agent.sock).",
            set: { $0.upstreamSocket = $1 }),
        Flag(
            name: "ca-addr", valueName: "host:port", environment: "CA_ADDR",
            help: "istiod's address for --issuer istiod (default istiod.istio-system.svc:15012).",
            set: { $0.caAddr = $1 }),
        Flag(
            name: "ca-root-cert", valueName: "pem|SYSTEM", environment: "CA_ROOT_CA",
            help:
                "Roots istiod's certificate must chain to; also served in ROOTCA (default /var/run/secrets/istio/root-cert.pem).",
            set: { $0.caRootCert = $1 }),
        Flag(
            name: "ca-server-name", valueName: "name", environment: "ISTIOD_SAN",
            help: "Name istiod's certificate must carry (default: the host of --ca-addr).",
            set: { $0.caServerName = $1 }),
        Flag(
            name: "token-file", valueName: "path", environment: "SDS_TOKEN_FILE",
            help:
                "Projected service-account token (audience istio-ca), re-read for every CSR (default /var/run/secrets/tokens/istio-token).",
            set: { $0.tokenFile = $1 }),
        Flag(
            name: "cluster-id", valueName: "id", environment: "ISTIO_META_CLUSTER_ID",
            help: "Sent as ClusterID metadata with every CSR (default Kubernetes).", set: { $0.clusterID = $1 }),
        Flag(
            name: "key-type", valueName: "type", environment: "SDS_KEY_TYPE",
            help:
                "Workload key for --issuer istiod: ecdsa-p256 (default), ecdsa-p384, rsa-2048, rsa-3072, rsa-4096; else ECC_SIGNATURE_ALGORITHM/ECC_CURVE/WORKLOAD_RSA_KEY_SIZE.",
            set: { $0.keyType = $1 }),
        Flag(
            name: "log-level", valueName: "level", environment: "LOG_LEVEL",
            help: "trace, debug, info (default), notice, warning, error.", set: { $0.logLevel = $1 }),
        Flag(
            name: "log-format", valueName: "format", environment: "LOG_FORMAT",
            help: "text (default) or json.", set: { $0.logFormat = $1 }),
        Flag(
            name: "file-dirs", valueName: "dir,dir", environment: "SDS_FILE_DIRS",
            help:
                "Directories file-cert:/file-root: names may read (default /etc/certs,/etc/istio,/var/run/secrets/istio).",
            set: { $0.fileDirs = $1 }),
        Flag(
            name: "allow-uid", valueName: "uid,uid", environment: "SDS_ALLOW_UIDS",
            help: "User IDs admitted on the socket, checked by SO_PEERCRED (the agent's own UID always is).",
            set: { $0.allowUIDs = $1 }),
        Flag(
            name: "allow-gid", valueName: "gid,gid", environment: "SDS_ALLOW_GIDS",
            help: "Group IDs admitted on the socket, besides --allow-uid (default: none).",
            set: { $0.allowGIDs = $1 }),
        Flag(
            name: "drain-timeout", valueName: "duration", environment: "SDS_DRAIN_TIMEOUT",
            help: "How long SIGTERM waits for peers to take the last bytes (default 5s, at most 10m).",
            set: { $0.drainTimeout = $1 }),
        Flag(
            name: "write-stall-timeout", valueName: "duration", environment: "SDS_WRITE_STALL_TIMEOUT",
            help: "Disconnect a peer that takes no byte this long while data waits for it (default 30s, 100ms to 10m).",
            set: { $0.writeStallTimeout = $1 }),
        Flag(
            name: "max-queued-bytes", valueName: "bytes", environment: "SDS_MAX_QUEUED_BYTES",
            help:
                "Disconnect a peer that lets more than this wait for it and takes none for 1 s, per connection (default 16777216).",
            set: { $0.maxQueuedBytes = $1 }),
        Flag(
            name: "max-request-bytes", valueName: "bytes", environment: "SDS_MAX_REQUEST_BYTES",
            help:
                "Largest request message; a bigger one ends its stream RESOURCE_EXHAUSTED (default 1Mi; 64Ki to 64Mi).",
            set: { $0.maxRequestBytes = $1 }),
        Flag(
            name: "max-connections", valueName: "count", environment: "SDS_MAX_CONNECTIONS",
            help: "Connections served at once; more are closed on accept (default 256; 1 to 65536).",
            set: { $0.maxConnections = $1 }),
        Flag(
            name: "status-addr", valueName: "host:port", environment: "SDS_STATUS_ADDR",
            help:
                "HTTP /live, /ready, /metrics on this address, e.g. 127.0.0.1:15095 (:PORT is loopback; default off).",
            set: { $0.statusAddress = $1 }),
    ]

    /// Parses `arguments` (without the program name).
    public static func parse(_ arguments: [String]) throws(UsageError) -> Parsed {
        var rest = arguments[...]
        if let first = rest.first {
            switch first {
            case "run": rest = rest.dropFirst()
            case "healthcheck": return try parseHealthcheck(rest.dropFirst())
            case "help", "-h", "--help": return .help
            case "version", "--version": return .version
            default:
                if !first.hasPrefix("-") {
                    throw UsageError(message: "unknown command '\(first)' (commands: run, healthcheck, help, version)")
                }
            }
        }
        var options = RawAgentOptions()
        while let argument = rest.first {
            rest = rest.dropFirst()
            if argument == "-h" || argument == "--help" { return .help }
            guard argument.hasPrefix("--") else {
                throw UsageError(message: "unexpected argument '\(argument)' (flags start with --; see --help)")
            }
            var name = String(argument.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let flag = flags.first(where: { $0.name == name }) else {
                throw UsageError(message: "unknown flag --\(name) (see sds-agent run --help)")
            }
            if value == nil {
                guard let next = rest.first, !next.hasPrefix("--") else {
                    throw UsageError(message: "--\(name) needs a value (<\(flag.valueName)>)")
                }
                value = next
                rest = rest.dropFirst()
            }
            flag.set(&options, value!)
        }
        return .run(options)
    }

    /// `healthcheck` takes one flag, `--socket` (same default and environment variable as `run`).
    static func parseHealthcheck(_ arguments: ArraySlice<String>) throws(UsageError) -> Parsed {
        var socket: String?
        var rest = arguments
        while let argument = rest.first {
            rest = rest.dropFirst()
            if argument == "-h" || argument == "--help" { return .help }
            if argument.hasPrefix("--socket=") {
                socket = String(argument.dropFirst("--socket=".count))
            } else if argument == "--socket" {
                guard let next = rest.first, !next.hasPrefix("--") else {
                    throw UsageError(message: "--socket needs a value (<path>)")
                }
                socket = next
                rest = rest.dropFirst()
            } else {
                throw UsageError(message: "healthcheck: unexpected argument '\(argument)' (only --socket <path>)")
            }
        }
        return .healthcheck(socket: socket)
    }

    public static var helpText: String {
        var text = """
            sds-agent \(version) — Envoy SDS provider sidecar: short-lived SPIFFE identities for Envoy over a Unix socket.

            Envoy subscribes to its workload certificate and trust bundle over the socket (gRPC SecretDiscoveryService,
            SotW or Delta); sds-agent issues X.509-SVIDs and pushes every rotation to every stream.
            Names served: default, ROOTCA (Istio); the SPIFFE ID, spiffe://<trust-domain>, ALL (SPIRE);
            file-cert:<cert>~<key>, file-root:<ca>, file-root:system (Istio file-backed).

            USAGE: sds-agent run [flags]
                   sds-agent healthcheck [--socket <path>]   (exit 0 when SERVING, else 1; one line; an exec probe)

            FLAGS (each also read from the environment variable in brackets; a flag wins):

            """
        for flag in flags {
            let left = "  --\(flag.name) <\(flag.valueName)>"
            let padded = left + String(repeating: " ", count: max(1, 34 - left.count))
            text += padded + flag.help + (flag.environment.map { " [\($0)]" } ?? "") + "\n"
        }
        text += """
              -h, --help                      Show this help.

            SIGNALS:
              SIGHUP           rotate the SVID now and push it to every stream
              SIGTERM, SIGINT  stop accepting, GOAWAY, end streams UNAVAILABLE, remove the socket, exit 0

            SECURITY:
              The socket is created with --socket-mode (0600 by default). Every connection's peer, as the kernel
              records it (SO_PEERCRED), must be the agent's own UID or named in --allow-uid/--allow-gid; others are
              closed before any byte is read. file-cert:/file-root: names read only regular files below --file-dirs
              (symlinks resolved), never the state dir or --ca-key. --ca-cert/--ca-key in every pod lets every pod
              mint any identity of the trust domain: a dev or single-node mode; a mesh uses --issuer workload-api.
              A pod holds exactly one identity, --spiffe-id, whatever the issuer: with --issuer workload-api, X.509-
              and JWT-SVIDs the upstream would issue for other SPIFFE IDs are refused (PERMISSION_DENIED). Private
              keys (state dir, --ca-key) must be the agent's own and mode 0600 or 0400, or it does not start.

            EXIT CODES: 0 clean stop, 1 runtime failure (e.g. damaged --state-dir), 2 bad flag or value.

            EXAMPLES:
              sds-agent run --socket /run/secrets/workload-spiffe-uds/socket --trust-domain cluster.local
              SECRET_TTL=24h POD_NAMESPACE=shop SERVICE_ACCOUNT=web sds-agent run --state-dir /var/lib/sds-agent
              sds-agent run --issuer workload-api --upstream-socket unix:///run/spire/sockets/agent.sock
              CA_ADDR=istiod.istio-system.svc:15012 sds-agent run --issuer istiod --key-type ecdsa-p256
              sds-agent run --issuer files --svid-file /var/run/pod-cert/credential-bundle.pem \\
                --bundle-file /var/run/trust/roots.pem

            """
        return text
    }
}
