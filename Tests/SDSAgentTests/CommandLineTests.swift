import Testing

@testable import SDSAgent
@testable import Servers

@Suite struct AgentCommandLineTests {
    @Test func runWithFlagsInBothSpellings() throws {
        let parsed = try AgentCommandLine.parse([
            "run", "--socket", "/tmp/a.sock", "--svid-ttl=24h", "--issuer", "local",
        ])
        var expected = RawAgentOptions()
        expected.socket = "/tmp/a.sock"
        expected.svidTTL = "24h"
        expected.issuer = "local"
        #expect(parsed == .run(expected))
    }

    @Test func runIsTheDefaultCommand() throws {
        #expect(try AgentCommandLine.parse([]) == .run(RawAgentOptions()))
        #expect(try AgentCommandLine.parse(["--log-level", "debug"]) != .help)
    }

    @Test func helpAndVersion() throws {
        #expect(try AgentCommandLine.parse(["--help"]) == .help)
        #expect(try AgentCommandLine.parse(["run", "-h"]) == .help)
        #expect(try AgentCommandLine.parse(["version"]) == .version)
        for flag in AgentOption.all {
            #expect(AgentCommandLine.helpText.contains("--\(flag.name) <"), "help documents --\(flag.name)")
        }
    }

    @Test(arguments: [
        (["--bogus"], "--bogus"), (["run", "--socket"], "--socket"), (["serve"], "serve"),
        (["run", "stray"], "stray"), (["--svid-ttl", "--socket", "x"], "--svid-ttl"),
    ])
    func usageErrorsNameTheProblem(arguments: [String], mention: String) {
        do {
            _ = try AgentCommandLine.parse(arguments)
            Issue.record("expected a usage error")
        } catch {
            #expect(error.message.contains(mention))
            #expect(!error.message.contains("\n"))
        }
    }
}
