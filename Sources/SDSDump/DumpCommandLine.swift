/// `sds-dump`'s command line, parsed by hand.
///
/// Why not swift-argument-parser: it links FoundationEssentials (~3.5 MB of code in a static binary), and sds-dump is
/// also a second name of the `sds-agent` binary (the container image ships one executable under both names), whose
/// RSS budget has no room for it.
public enum DumpCommandLine {
    public enum Parsed: Equatable, Sendable {
        case dump(DumpOptions)
        case help
    }

    public struct UsageError: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public static let helpText = """
        OVERVIEW: Subscribe to an SDS server like Envoy and show the secrets it serves.

        Exit codes: 0 ok, 2 usage, 3 cannot connect, 4 timeout (names what never arrived), 5 the server returned an
        error status, 1 the secrets arrived but --pem-dir could not be written.

        USAGE: sds-dump [<options>] [<names> ...]

        ARGUMENTS:
          <names>                 Secret names (default: default ROOTCA).

        OPTIONS:
          --socket <socket>       The SDS server's socket: a path or unix:///abs/path.
                                  (default: \(DumpOptions.defaultSocket))
          --sotw                  StreamSecrets (default): one stream per name, like Envoy.
          --delta                 DeltaSecrets: one stream per name, like Envoy.
          --fetch                 One FetchSecrets call for every name (opens no stream).
          --json                  One JSON document per update (JSON Lines).
          --pem-dir <pem-dir>     Write <name>.cert.pem, <name>.key.pem (0600), <name>.bundle.pem,
                                  <name>.secret (a generic secret, 0600) here.
          --watch                 Keep the streams open and print every update until interrupted or --count updates.
          --count <count>         With --watch: stop after this many updates.
          --nack                  Answer each response with a NACK instead of an ACK.
          --timeout <timeout>     How long to wait for every name (e.g. 10, 10s, 500ms). (default: 10s)
          --node-id <node-id>     The node id presented to the server.
          --cluster <cluster>     The node cluster presented to the server.
          -h, --help              Show help information.

        """

    /// The options that take a value (`--name value` or `--name=value`).
    static let valued: Set<String> = ["--socket", "--pem-dir", "--count", "--timeout", "--node-id", "--cluster"]
    /// The options that are switches.
    static let switches: Set<String> = ["--sotw", "--delta", "--fetch", "--json", "--watch", "--nack"]

    /// Parses the arguments after the program name. Options and names may come in any order; after `--` every
    /// argument is a name.
    public static func parse(_ arguments: [String]) throws(UsageError) -> Parsed {
        var values: [String: String] = [:]
        var seen: Set<String> = []
        var names: [String] = []
        var index = 0
        var optionsEnded = false
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if optionsEnded || !argument.hasPrefix("-") || argument == "-" {
                names.append(argument)
                continue
            }
            if argument == "--" {
                optionsEnded = true
                continue
            }
            if argument == "-h" || argument == "--help" { return .help }
            let name: String
            var inline: String?
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                inline = String(argument[argument.index(after: equals)...])
            } else {
                name = argument
            }
            if switches.contains(name) {
                guard inline == nil else { throw UsageError(message: "\(name) takes no value") }
                seen.insert(name)
            } else if valued.contains(name) {
                if let inline {
                    values[name] = inline
                } else {
                    guard index < arguments.count else { throw UsageError(message: "\(name): missing value") }
                    values[name] = arguments[index]
                    index += 1
                }
            } else {
                throw UsageError(message: "unknown option '\(name)'")
            }
        }
        return .dump(try options(values: values, switches: seen, names: names))
    }

    static func options(values: [String: String], switches: Set<String>, names: [String]) throws(UsageError)
        -> DumpOptions
    {
        let modes = DumpMode.allCases.filter { switches.contains("--\($0.rawValue)") }
        guard modes.count <= 1 else {
            throw UsageError(message: "\(modes.map { "--\($0.rawValue)" }.joined(separator: ", ")): choose one")
        }
        let socket = values["--socket"] ?? DumpOptions.defaultSocket
        if let problem = socketAddressProblem(socket) { throw UsageError(message: "--socket: \(problem)") }
        let timeoutText = values["--timeout"] ?? "10s"
        guard let timeout = parseDuration(timeoutText) else {
            throw UsageError(message: "--timeout: '\(timeoutText)' is not a duration (e.g. 10, 10s, 500ms, 1m)")
        }
        var count: Int?
        if let countText = values["--count"] {
            guard let parsed = Int(countText) else {
                throw UsageError(message: "--count: '\(countText)' is not a whole number")
            }
            guard parsed >= 1 else { throw UsageError(message: "--count: must be at least 1, got \(parsed)") }
            count = parsed
        }
        let watch = switches.contains("--watch")
        if count != nil && !watch { throw UsageError(message: "--count: only meaningful with --watch") }
        return DumpOptions(
            socket: socket, names: names, mode: modes.first ?? .sotw, json: switches.contains("--json"),
            pemDirectory: values["--pem-dir"], watch: watch, count: count, nack: switches.contains("--nack"),
            timeoutSeconds: timeout, nodeID: values["--node-id"], cluster: values["--cluster"])
    }

    /// sds-dump from start to exit code: parse, print help or one usage line (exit 2), or dump.
    public static func main(arguments: [String]) -> Int32 {
        let parsed: Parsed
        do {
            parsed = try parse(arguments)
        } catch {
            // One line naming the flag, exit 2 (scripts read it; the full usage is behind --help).
            writeStandardError("sds-dump: \(error) (see sds-dump --help)\n")
            return 2
        }
        switch parsed {
        case .help:
            writeStandardOutput(helpText)
            return 0
        case .dump(let options):
            do {
                return try DumpClient(options: options).run()
            } catch {
                writeStandardError("sds-dump: \(error)\n")
                return 1
            }
        }
    }
}
