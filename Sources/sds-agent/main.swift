import Glibc
import SDSAgent
import SDSDump
import Servers

// Called as `sds-dump` (a link to this binary, as in the container image): the same sds-dump as its own executable,
// without a second copy of libcrypto and the Swift runtime in the image.
if CommandLine.arguments.first?.split(separator: "/").last == "sds-dump" {
    exit(DumpCommandLine.main(arguments: Array(CommandLine.arguments.dropFirst())))
}

// `sds-agent`: thin: parse the command line, hand a configuration to SDSAgent.
let exitCode: Int32
do {
    switch try AgentCommandLine.parse(Array(CommandLine.arguments.dropFirst())) {
    case .help:
        _ = AgentCommandLine.helpText.withCString { write(1, $0, strlen($0)) }
        exitCode = 0
    case .helpMarkdown:
        _ = AgentCommandLine.configurationMarkdown.withCString { write(1, $0, strlen($0)) }
        exitCode = 0
    case .version:
        _ = "sds-agent \(AgentCommandLine.version)\n".withCString { write(1, $0, strlen($0)) }
        exitCode = 0
    case .healthcheck(let socket):
        exitCode = HealthCheckClient.main(socket: socket, environment: AgentMain.processEnvironment())
    case .bundleShow(let format, let options):
        exitCode = BundleShow.main(format: format, options: options, environment: AgentMain.processEnvironment())
    case .run(let options):
        exitCode = AgentMain.run(options: options, environment: AgentMain.processEnvironment())
    }
} catch {
    _ = "sds-agent: \(error)\n".withCString { write(2, $0, strlen($0)) }
    exitCode = 2
}
exit(exitCode)
