import ArgumentParser
import Glibc
import SDSAgent

/// `sds-agent`: the Envoy SDS provider sidecar. Thin: parses arguments, hands a configuration to SDSAgent.
struct SDSAgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sds-agent",
        abstract: "Envoy SDS provider sidecar: short-lived SPIFFE identities for Envoy over a Unix socket.",
        discussion: """
            Envoy subscribes to its workload certificate and trust bundle over the socket (gRPC SecretDiscoveryService, \
            SotW or Delta); sds-agent issues X.509-SVIDs and pushes every rotation to every stream.

            Names served: default, ROOTCA (Istio style); the SPIFFE ID and spiffe://<trust-domain> (SPIRE style).
            """,
        subcommands: [Run.self],
        defaultSubcommand: Run.self)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve SDS on a Unix socket.",
        discussion: """
            Every flag can also come from the environment (shown in brackets); a flag wins over the environment.
            Signals: SIGHUP rotates the SVID now and pushes it to every stream; SIGTERM/SIGINT stop accepting, send \
            GOAWAY, finish in-flight writes, remove the socket and exit 0.

            Example (Istio-style sidecar):
              sds-agent run --socket /run/secrets/workload-spiffe-uds/socket --trust-domain cluster.local
            """)

    @Option(help: ArgumentHelp("Unix socket to serve on [SDS_SOCKET].", valueName: "path"))
    var socket: String = AgentConfiguration.defaultSocket

    @Option(help: ArgumentHelp("File mode of the socket, octal [SDS_SOCKET_MODE].", valueName: "mode"))
    var socketMode: String?

    @Option(
        help: ArgumentHelp("Trust domain of issued SVIDs [TRUST_DOMAIN]; default cluster.local.", valueName: "name"))
    var trustDomain: String?

    @Option(
        name: .customLong("spiffe-id"),
        help: ArgumentHelp(
            "Workload SPIFFE ID [SPIFFE_ID]; default spiffe://<td>/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT.",
            valueName: "id"))
    var spiffeID: String?

    @Option(help: ArgumentHelp("SVID lifetime, e.g. 1h, 30m [SECRET_TTL]; default 1h.", valueName: "duration"))
    var svidTTL: String?

    @Option(
        help: ArgumentHelp(
            "Rotate when this fraction of the lifetime is left [SECRET_GRACE_PERIOD_RATIO]; default 0.5.",
            valueName: "ratio"))
    var rotateRatio: String?

    @Option(
        help: ArgumentHelp(
            "Directory for the local CA's root (ca.pem, ca.key; 0600) [SDS_STATE_DIR]; default /var/lib/sds-agent.",
            valueName: "dir"))
    var stateDir: String?

    @Option(help: ArgumentHelp("Lifetime of a newly created local CA root; default 8760h.", valueName: "duration"))
    var caTTL: String?

    @Option(
        help: ArgumentHelp("Operator-supplied CA certificate (PEM, then its chain) [SDS_CA_CERT].", valueName: "pem"))
    var caCert: String?

    @Option(help: ArgumentHelp("Key of --ca-cert (PEM) [SDS_CA_KEY].", valueName: "pem"))
    var caKey: String?

    @Option(
        help: ArgumentHelp(
            "Where SVIDs come from: local | workload-api [SDS_ISSUER]; default local.", valueName: "kind"))
    var issuer: String?

    @Option(
        help: ArgumentHelp(
            "SPIFFE Workload API socket for --issuer workload-api [UPSTREAM_SPIFFE_ENDPOINT_SOCKET].",
            valueName: "unix:///path"))
    var upstreamSocket: String?

    @Option(
        help: ArgumentHelp(
            "trace | debug | info | notice | warning | error [LOG_LEVEL]; default info.", valueName: "level"))
    var logLevel: String?

    @Option(help: ArgumentHelp("text | json [LOG_FORMAT]; default text.", valueName: "format"))
    var logFormat: String?

    @Option(
        help: ArgumentHelp("How long a graceful stop waits for writes to finish; default 5s.", valueName: "duration"))
    var drainTimeout: String?

    func raw(socketGiven: Bool) -> RawAgentOptions {
        var raw = RawAgentOptions()
        raw.socket = socketGiven ? socket : nil
        raw.socketMode = socketMode
        raw.trustDomain = trustDomain
        raw.spiffeID = spiffeID
        raw.svidTTL = svidTTL
        raw.rotateRatio = rotateRatio
        raw.stateDir = stateDir
        raw.caTTL = caTTL
        raw.caCert = caCert
        raw.caKey = caKey
        raw.issuer = issuer
        raw.upstreamSocket = upstreamSocket
        raw.logLevel = logLevel
        raw.logFormat = logFormat
        raw.drainTimeout = drainTimeout
        return raw
    }

    func run() throws {
        let given = CommandLine.arguments.contains { $0 == "--socket" || $0.hasPrefix("--socket=") }
        let code = AgentMain.run(options: raw(socketGiven: given), environment: AgentMain.processEnvironment())
        Glibc.exit(code)
    }
}

// Usage errors exit 2 with one line naming the flag (ArgumentParser's default is 64 and a full usage block).
do {
    var command = try SDSAgentCommand.parseAsRoot()
    try command.run()
} catch {
    let code = SDSAgentCommand.exitCode(for: error)
    if code == .success {
        SDSAgentCommand.exit(withError: error)  // --help, --version
    }
    let message = SDSAgentCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    _ = "sds-agent: \(message)\n".withCString { write(2, $0, strlen($0)) }
    Glibc.exit(2)
}
