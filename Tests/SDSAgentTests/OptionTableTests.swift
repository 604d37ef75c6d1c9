import Foundation
import Glibc
import Servers
import Testing

@testable import SDSAgent

/// The option table (`AgentOption`) is the one source of `--help`, parsing, checking and docs/configuration.md.
@Suite struct OptionTableTests {
    /// The repository's root, from this file's place in it (Tests/SDSAgentTests/).
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let documentPath = repositoryRoot.appendingPathComponent("docs/configuration.md").path

    static func committedDocument() throws -> String { try String(contentsOfFile: documentPath, encoding: .utf8) }

    @Test func theCommittedDocumentIsWhatTheTableGenerates() throws {
        let committed = try Self.committedDocument()
        let generated = AgentCommandLine.configurationMarkdown
        let firstDifference = zip(committed.split(separator: "\n"), generated.split(separator: "\n"))
            .first { $0 != $1 }
        #expect(
            committed == generated,
            "docs/configuration.md is stale: run make docs (first differing line: \(firstDifference.map { "\($0.0) ≠ \($0.1)" } ?? "a missing or extra line"))"
        )
    }

    /// Each `--flag <value>` line of `--help`, read back: its variable (in brackets) and its default must be in the
    /// flag's part of docs/configuration.md.
    @Test func everyFlagInHelpHasItsVariableAndDefaultDocumented() throws {
        let document = try Self.committedDocument()
        var seen: [String] = []
        for line in AgentCommandLine.helpText.split(separator: "\n") where line.hasPrefix("  --") {
            let flag = String(line.dropFirst(2).prefix { $0 != " " })
            guard flag != "--help,", let option = AgentOption.named(String(flag.dropFirst(2))) else { continue }
            seen.append(flag)
            guard let open = line.lastIndex(of: "["), line.hasSuffix("]") else {
                Issue.record("\(flag): no [VARIABLE] in its help line")
                continue
            }
            let variable = String(line[line.index(after: open)..<line.index(before: line.endIndex)])
            #expect(variable == option.environment)
            #expect(line.contains("Default: \(option.defaultText)."), "\(flag): its default in --help")
            let heading = "### `\(flag) <"
            guard let start = document.range(of: heading) else {
                Issue.record("\(flag) is not in docs/configuration.md: run make docs")
                continue
            }
            let rest = document[start.upperBound...]
            let block = String(rest[..<(rest.range(of: "\n### ")?.lowerBound ?? rest.endIndex)])
            #expect(block.contains("- Environment: `\(variable)`"), "\(flag): \(variable) documented")
            let unescaped = block.replacingOccurrences(of: "\\", with: "")
            #expect(unescaped.contains("- Default: "), "\(flag): a default documented")
            #expect(unescaped.contains(option.defaultText), "\(flag): default \(option.defaultText) documented")
        }
        #expect(seen.count == AgentOption.all.count, "every option has a --help line")
    }

    @Test func flagsAndVariablesAreUnique() {
        #expect(Set(AgentOption.all.map(\.name)).count == AgentOption.all.count)
        #expect(Set(AgentOption.all.map(\.environment)).count == AgentOption.all.count)
    }

    /// Every default that is a value passes its own option's check (a default outside its range would be a
    /// contradiction in the table).
    @Test func everyDefaultValueResolves() throws {
        let config = try resolveConfiguration()
        #expect(config.maxQueuedBytes == OutboundLimits.defaultMaxQueuedBytes)
        #expect(config.writeStallTimeout == OutboundLimits.defaultWriteStallTimeout)
        #expect(config.outputLayout == .istio)
        #expect(config.logLevel == .info)
    }

    @Test func enumeratedValuesListEveryAcceptedValue() {
        let help = AgentCommandLine.helpText
        #expect(help.contains("One of: trace, debug, info, notice, warning, error, critical."))
        #expect(help.contains("One of: local, workload-api, istiod, files."))
        #expect(help.contains("One of: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096."))
        #expect(help.contains("One of: text, json."))
        #expect(help.contains("One of: istio, spiffe-helper."))
        #expect(!help.contains("--help-markdown"), "hidden: for make docs")
    }

    @Test func theLevelCriticalIsAccepted() throws {
        #expect(try resolveConfiguration { $0.logLevel = "critical" }.logLevel == .critical)
        #expect(try resolveConfiguration { $0.logLevel = "WARNING" }.logLevel == .warning)
    }

    @Test func helpMarkdownIsAHiddenCommand() throws {
        #expect(try AgentCommandLine.parse(["--help-markdown"]) == .helpMarkdown)
    }
}

/// One size syntax for every size option, one duration syntax for every duration option.
@Suite struct UniformValueSyntaxTests {
    @Test(arguments: [
        ("65536", 65536), ("64Ki", 64 << 10), ("16Mi", 16 << 20), ("1Gi", 1 << 30), (" 2Mi ", 2 << 20), ("0", 0),
    ])
    func sizesParse(text: String, bytes: Int) throws {
        #expect(try SizeText.bytes(text) == bytes)
    }

    @Test(arguments: ["", "Mi", "16MiB", "1.5Mi", "-1", "+1", "16mi", "16M", "9223372036854775807Ki", "0x10"])
    func sizeGarbageIsRefused(text: String) {
        #expect(throws: SizeText.ParseError.self) { try SizeText.bytes(text) }
    }

    @Test func sizesFormatWithTheLargestEvenUnit() {
        #expect(SizeText.format(bytes: 16 << 20) == "16Mi")
        #expect(SizeText.format(bytes: 1 << 30) == "1Gi")
        #expect(SizeText.format(bytes: 1536) == "1536")
        #expect(SizeText.format(bytes: 0) == "0")
    }

    /// Every size option, from the flag and from its variable, takes plain bytes and each unit.
    @Test func everySizeOptionTakesEveryUnit() throws {
        #expect(try resolveConfiguration { $0.maxQueuedBytes = "16Mi" }.maxQueuedBytes == 16 << 20)
        #expect(try resolveConfiguration { $0.maxQueuedBytes = "1Gi" }.maxQueuedBytes == 1 << 30)
        #expect(try resolveConfiguration { $0.maxQueuedBytes = "64Ki" }.maxQueuedBytes == 64 << 10)
        #expect(try resolveConfiguration(env: ["SDS_MAX_QUEUED_BYTES": "32Mi"]).maxQueuedBytes == 32 << 20)
        #expect(try resolveConfiguration { $0.maxRequestBytes = "64Mi" }.limits.maxRequestBytes == 64 << 20)
        #expect(try resolveConfiguration { $0.maxRequestBytes = "65536" }.limits.maxRequestBytes == 65536)
        for option in AgentOption.all {
            guard case .size(let range) = option.syntax else { continue }
            for text in [String(range.lowerBound), SizeText.format(bytes: range.upperBound)] {
                #expect(try option.whole(text) >= range.lowerBound, "\(option.flag) \(text)")
            }
            #expect(throws: ConfigurationError.self) { try option.whole("\(range.upperBound)Ki") }
        }
    }

    /// Every duration option takes `1h30m`-style, `ms` and bare seconds within its range, and names itself when not.
    @Test func everyDurationOptionTakesTheOneSyntax() throws {
        var durations = 0
        for option in AgentOption.all {
            guard case .duration(let range, _) = option.syntax else { continue }
            durations += 1
            let inside = min(range.upperBound, max(range.lowerBound, 90))
            let minutes = Int(inside) / 60
            let seconds = Int(inside) % 60
            #expect(try option.duration("\(Int(inside))") == Double(Int(inside)), "\(option.flag) bare seconds")
            #expect(try option.duration("\(minutes)m\(seconds)s") == inside, "\(option.flag) Go style")
            #expect(
                try option.duration("\(Int(inside) * 1000)ms") == Double(Int(inside)), "\(option.flag) milliseconds")
            do {
                _ = try option.duration("soon")
                Issue.record("\(option.flag) took 'soon'")
            } catch {
                #expect(error.flag.hasPrefix(option.flag))
            }
        }
        #expect(durations == 5)
    }

    @Test func rangesInMessagesKeepTheirUnits() {
        do {
            _ = try AgentOption.writeStallTimeout.duration("99ms")
            Issue.record("99ms accepted")
        } catch {
            #expect(error.problem.contains("from 100ms to 10m"))
        }
        do {
            _ = try AgentOption.maxQueuedBytes.whole("2Gi")
            Issue.record("2Gi accepted")
        } catch {
            #expect(
                error.description
                    == "--max-queued-bytes: '2Gi' must be a size from 64Ki to 1Gi (bytes, or with Ki, Mi, Gi)")
        }
    }
}

/// Resolving reads only its arguments; the socket's directory is made at start-up.
@Suite struct StartUpTests {
    @Test func resolvingCreatesNoDirectory() throws {
        let directory = "/tmp/sds-options-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        _ = try resolveConfiguration { $0.socket = directory + "/sub/agent.sock" }
        #expect(access(directory, F_OK) != 0, "resolve made \(directory)")
        try AgentMain.prepareSocketDirectory(directory + "/sub/agent.sock")
        #expect(access(directory + "/sub", W_OK) == 0)
        rmdir(directory + "/sub")
        rmdir(directory)
    }

    @Test func anUnusableSocketDirectoryNamesTheSocketFlag() {
        do {
            try AgentMain.prepareSocketDirectory("/proc/nonexistent/agent.sock")
            Issue.record("a directory under /proc was usable")
        } catch {
            #expect(error.flag == "--socket")
            #expect(error.problem.contains("/proc/nonexistent"))
            #expect(!error.description.contains("\n"))
        }
    }
    /// The environment is split at each entry's first "=" (values may hold more), entries without one are skipped,
    /// a later duplicate wins, and the process's own table reads as getenv does.
    @Test func theEnvironmentSplitsAtTheFirstEquals() {
        let texts = ["A=1", "SDS_URL=https://x/?a=b=c", "EMPTY=", "NOEQUALS", "A=2", "=lead", "U=\u{e9}t\u{e9}"]
        let entries = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: texts.count + 1)
        defer { entries.deallocate() }
        for (index, text) in texts.enumerated() { entries[index] = strdup(text) }
        entries[texts.count] = nil
        defer { for index in texts.indices { free(entries[index]) } }
        let table = AgentMain.environment(entries)
        #expect(table == ["A": "2", "SDS_URL": "https://x/?a=b=c", "EMPTY": "", "": "lead", "U": "\u{e9}t\u{e9}"])
        let own = AgentMain.processEnvironment()
        #expect(!own.isEmpty)
        for (name, value) in own { #expect(getenv(name).map { String(cString: $0) } == value) }
    }
}
