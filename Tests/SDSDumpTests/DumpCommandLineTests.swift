import SDSDump
import Testing

@Suite struct DumpCommandLineTests {
    func options(_ arguments: [String]) throws -> DumpOptions {
        guard case .dump(let options) = try DumpCommandLine.parse(arguments) else {
            Issue.record("not a dump: \(arguments)")
            return DumpOptions()
        }
        return options
    }

    func usageError(_ arguments: [String]) -> String? {
        do {
            _ = try DumpCommandLine.parse(arguments)
            return nil
        } catch {
            return error.message
        }
    }

    @Test func noArgumentsAskTheDefaultSocketForIstiosNames() throws {
        #expect(try options([]) == DumpOptions())
        #expect(try options([]).names == ["default", "ROOTCA"])
        #expect(try options([]).mode == .sotw && options([]).timeoutSeconds == 10)
    }

    @Test func everyOptionInBothFormsAndNamesAnywhere() throws {
        let parsed = try options([
            "default", "--socket", "unix:///run/sds.sock", "--fetch", "--json", "--pem-dir=/tmp/pem", "--nack",
            "--timeout=500ms", "--node-id", "n1", "--cluster=c1", "ROOTCA",
        ])
        #expect(
            parsed
                == DumpOptions(
                    socket: "unix:///run/sds.sock", names: ["default", "ROOTCA"], mode: .fetch, json: true,
                    pemDirectory: "/tmp/pem", nack: true, timeoutSeconds: 0.5, nodeID: "n1", cluster: "c1"))
        let watching = try options(["--delta", "--watch", "--count", "2"])
        #expect(watching.mode == .delta && watching.watch && watching.count == 2)
    }

    @Test func afterDoubleDashEveryArgumentIsAName() throws {
        #expect(try options(["--", "--json", "-h"]).names == ["--json", "-h"])
    }

    @Test func helpWinsWhereverItIs() throws {
        #expect(try DumpCommandLine.parse(["default", "--help"]) == .help)
        #expect(try DumpCommandLine.parse(["-h"]) == .help)
        for option in [
            "--socket", "--sotw", "--delta", "--fetch", "--json", "--pem-dir", "--watch", "--count", "--nack",
            "--timeout", "--node-id", "--cluster",
        ] {
            #expect(DumpCommandLine.helpText.contains("\n  \(option) "), "help lists \(option)")
        }
        #expect(DumpCommandLine.helpText.contains("\n  -h, --help "))
    }

    @Test func aBadArgumentIsOneMessageNamingIt() {
        #expect(usageError(["--no-such-flag"]) == "unknown option '--no-such-flag'")
        #expect(usageError(["--timeout", "soon"])?.hasPrefix("--timeout: 'soon'") == true)
        #expect(usageError(["--timeout", "0"])?.hasPrefix("--timeout:") == true)
        #expect(usageError(["--count", "many", "--watch"])?.hasPrefix("--count: 'many'") == true)
        #expect(usageError(["--count", "0", "--watch"]) == "--count: must be at least 1, got 0")
        #expect(usageError(["--count", "2"]) == "--count: only meaningful with --watch")
        #expect(usageError(["--socket"]) == "--socket: missing value")
        #expect(usageError(["--json=yes"]) == "--json takes no value")
        #expect(usageError(["--fetch", "--delta"]) == "--delta, --fetch: choose one")
        #expect(usageError(["--socket", "unix://relative"])?.hasPrefix("--socket:") == true)
    }
}
