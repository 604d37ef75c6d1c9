/// `sds-agent`'s command line, parsed by hand.
///
/// Why not swift-argument-parser (nor does sds-dump, see DumpCommandLine): it links FoundationEssentials, measured at
/// +3.6 MB RSS in a static binary — a third of the sidecar's 12 MB budget, for parsing a dozen flags once at startup.
public enum AgentCommandLine {
    public enum Parsed: Equatable, Sendable {
        case run(RawAgentOptions)
        /// `sds-agent healthcheck [--socket PATH]`: the socket to ask (nil: SDS_SOCKET, then the default).
        case healthcheck(socket: String?)
        /// `sds-agent bundle show [--format spiffe|pem] [run's flags]`: the trust bundle the configuration serves.
        case bundleShow(format: BundleShow.Format, options: RawAgentOptions)
        case help
        /// `--help-markdown` (not in `--help`): docs/configuration.md, as `make docs` writes it.
        case helpMarkdown
        case version
    }

    public struct UsageError: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public static let version = "0.1.0"

    /// Parses `arguments` (without the program name).
    public static func parse(_ arguments: [String]) throws(UsageError) -> Parsed {
        var rest = arguments[...]
        if let first = rest.first {
            switch first {
            case "run": rest = rest.dropFirst()
            case "healthcheck": return try parseHealthcheck(rest.dropFirst())
            case "bundle": return try parseBundle(rest.dropFirst())
            case "help", "-h", "--help": return .help
            case "--help-markdown": return .helpMarkdown
            case "version", "--version": return .version
            default:
                if !first.hasPrefix("-") {
                    throw UsageError(
                        message: "unknown command '\(first)' (commands: run, healthcheck, bundle, help, version)")
                }
            }
        }
        guard let (options, _) = try parseFlags(rest, command: "run") else { return .help }
        return .run(options)
    }

    /// `run`'s flags (the option table) into `RawAgentOptions`, and the command's `own` flags (name without dashes →
    /// value name) into a dictionary, the last value winning as with the table's flags. nil when `-h`/`--help` is
    /// among them.
    static func parseFlags(_ arguments: ArraySlice<String>, command: String, own: [String: String] = [:])
        throws(UsageError) -> (RawAgentOptions, [String: String])?
    {
        var rest = arguments
        var options = RawAgentOptions()
        var ownValues: [String: String] = [:]
        while let argument = rest.first {
            rest = rest.dropFirst()
            if argument == "-h" || argument == "--help" { return nil }
            guard argument.hasPrefix("--") else {
                throw UsageError(message: "unexpected argument '\(argument)' (flags start with --; see --help)")
            }
            var name = String(argument.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            let isOwn = own[name] != nil
            let option = AgentOption.named(name)
            guard isOwn || option != nil else {
                throw UsageError(message: "unknown flag --\(name) (see sds-agent \(command) --help)")
            }
            if value == nil {
                guard let next = rest.first, !next.hasPrefix("--") else {
                    throw UsageError(
                        message: "--\(name) needs a value (<\(own[name] ?? option?.valueName ?? "value")>)")
                }
                value = next
                rest = rest.dropFirst()
            }
            if isOwn { ownValues[name] = value } else { option?.set(value ?? "", in: &options) }
        }
        return (options, ownValues)
    }

    /// `bundle show` takes `--format` and every flag of `run` (it reads the configuration the same way).
    static func parseBundle(_ arguments: ArraySlice<String>) throws(UsageError) -> Parsed {
        guard let subcommand = arguments.first, subcommand == "show" else {
            if let first = arguments.first, first == "-h" || first == "--help" { return .help }
            let found = arguments.first.map { "'\($0)'" } ?? "nothing"
            throw UsageError(
                message: "bundle: expected 'show', got \(found) (sds-agent bundle show [--format spiffe|pem])")
        }
        guard
            let (options, own) = try parseFlags(
                arguments.dropFirst(), command: "bundle show", own: ["format": "spiffe|pem"])
        else { return .help }
        var format = BundleShow.Format.spiffe
        if let text = own["format"] {
            guard let chosen = BundleShow.Format(rawValue: text) else {
                let choices = BundleShow.Format.allCases.map(\.rawValue).joined(separator: ", ")
                throw UsageError(message: "--format: '\(text)' is not one of: \(choices)")
            }
            format = chosen
        }
        return .bundleShow(format: format, options: options)
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
                   sds-agent bundle show [--format spiffe|pem] [flags]   (print the trust bundle this configuration
                     serves, for another trust domain's --federate-with; reads the state dir, never creates it)

            FLAGS (each also read from the environment variable in brackets; a flag wins; an empty variable is
            unset). Durations: 1h30m, 90s, 500ms or bare seconds. Sizes: bytes, or with Ki, Mi, Gi (16Mi).


            """
        for section in AgentOption.Section.allCases {
            text += "\(section.rawValue.uppercased()):\n"
            for option in AgentOption.all where option.section == section { text += helpLine(option) }
            for variable in EnvironmentVariable.all where variable.section == section {
                text += helpLine(left: "  \(variable.name)", variable.help + " (Environment only.)")
            }
            text += "\n"
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

    /// One option: flag and value, help, default and accepted values (all from the table), variable in brackets.
    static func helpLine(_ option: AgentOption) -> String {
        var help = option.help + " Default: \(option.defaultText)."
        if let constraint = option.constraintText { help += " " + sentence(constraint) }
        return helpLine(left: "  \(option.flag) <\(option.valueName)>", help + " [\(option.environment)]")
    }

    static func helpLine(left: String, _ help: String) -> String {
        left + String(repeating: " ", count: max(1, 34 - left.count)) + help + "\n"
    }
}
