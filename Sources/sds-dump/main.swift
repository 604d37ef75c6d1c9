import ArgumentParser
import Glibc
import SDSDump

/// sds-dump: see what an SDS server serves, as Envoy would receive it. Parses arguments; `DumpClient` does the rest.
struct SDSDumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sds-dump",
        abstract: "Subscribe to an SDS server like Envoy and show the secrets it serves.",
        discussion: """
            Exit codes: 0 ok, 2 usage, 3 cannot connect, 4 timeout (names what never arrived), \
            5 the server returned an error status, 1 the secrets arrived but --pem-dir could not be written.
            """)

    enum Mode: String, EnumerableFlag {
        case sotw, delta, fetch

        static func help(for value: Mode) -> ArgumentHelp? {
            switch value {
            case .sotw: "StreamSecrets (default): one stream per name, like Envoy."
            case .delta: "DeltaSecrets: one stream per name, like Envoy."
            case .fetch: "One FetchSecrets call for every name (opens no stream)."
            }
        }
    }

    @Option(help: "The SDS server's socket: a path or unix:///abs/path.")
    var socket = DumpOptions.defaultSocket

    @Flag var mode: Mode = .sotw

    @Flag(help: "One JSON document per update (JSON Lines).")
    var json = false

    @Option(
        name: .customLong("pem-dir"),
        help: "Write <name>.cert.pem, <name>.key.pem (0600), <name>.bundle.pem, <name>.secret (0600) here.")
    var pemDir: String?

    @Flag(help: "Keep the streams open and print every update until interrupted or --count updates.")
    var watch = false

    @Option(help: "With --watch: stop after this many updates.")
    var count: Int?

    @Flag(help: "Answer each response with a NACK instead of an ACK.")
    var nack = false

    @Option(help: "How long to wait for every name (e.g. 10, 10s, 500ms).")
    var timeout = "10s"

    @Option(name: .customLong("node-id"), help: "The node id presented to the server.")
    var nodeID: String?

    @Option(help: "The node cluster presented to the server.")
    var cluster: String?

    @Argument(help: "Secret names (default: default ROOTCA).")
    var names: [String] = []

    func validate() throws {
        if let problem = socketAddressProblem(socket) { throw ValidationError("--socket: \(problem)") }
        guard parseDuration(timeout) != nil else {
            throw ValidationError("--timeout: '\(timeout)' is not a duration (e.g. 10, 10s, 500ms, 1m)")
        }
        if let count, count < 1 { throw ValidationError("--count: must be at least 1, got \(count)") }
        if count != nil && !watch { throw ValidationError("--count: only meaningful with --watch") }
    }

    var options: DumpOptions {
        DumpOptions(
            socket: socket, names: names, mode: DumpMode(rawValue: mode.rawValue) ?? .sotw, json: json,
            pemDirectory: pemDir, watch: watch, count: count, nack: nack,
            timeoutSeconds: parseDuration(timeout) ?? DumpOptions.defaultTimeoutSeconds, nodeID: nodeID,
            cluster: cluster)
    }
}

let command: SDSDumpCommand
do {
    command = try SDSDumpCommand.parse()
} catch {
    // --help and --version are "errors" that exit 0: let ArgumentParser print them.
    if SDSDumpCommand.exitCode(for: error) == .success { SDSDumpCommand.exit(withError: error) }
    // A usage error is one line naming the flag, exit 2 (scripts read it; the full usage is behind --help).
    let message = SDSDumpCommand.message(for: error).split(whereSeparator: \.isNewline).joined(separator: " ")
    writeStandardError("sds-dump: \(message) (see sds-dump --help)\n")
    exit(2)
}

do {
    let client = try DumpClient(options: command.options)
    exit(client.run())
} catch {
    writeStandardError("sds-dump: \(error)\n")
    exit(1)
}
