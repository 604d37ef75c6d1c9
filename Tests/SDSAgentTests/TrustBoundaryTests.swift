import Glibc
import Logging
import Testing
import Transport

@testable import SDSAgent
@testable import Servers

@Suite struct FileAccessPolicyTests {
    private func refusal(_ path: String, dirs: [String] = ["/etc/certs"], protected: [String] = ["/var/lib/sds"])
        -> FileAccessPolicy.Refusal?
    {
        FileAccessPolicy.refusal(
            forResolved: path, resolvedDirectories: dirs, resolvedProtected: protected,
            allowedFiles: ["/etc/ssl/certs/ca-certificates.crt"])
    }

    @Test func servesFilesBelowAnAllowedDirectory() {
        #expect(refusal("/etc/certs/cert-chain.pem") == nil)
        #expect(refusal("/etc/certs/..2026_12_04/cert-chain.pem") == nil)
    }

    @Test func refusesPathsOutsideTheAllowedDirectories() {
        #expect(refusal("/etc/passwd") == .outsideAllowedDirectories("/etc/passwd"))
        // Component-wise: a sibling sharing a prefix is not below the directory.
        #expect(refusal("/etc/certs2/key.pem") == .outsideAllowedDirectories("/etc/certs2/key.pem"))
        #expect(refusal("/etc/certs/x", dirs: []) == .outsideAllowedDirectories("/etc/certs/x"))
    }

    @Test func refusesTheAgentsOwnSecretsEvenInsideAnAllowedDirectory() {
        #expect(refusal("/var/lib/sds/ca.key", dirs: ["/var/lib"]) == .agentSecret("/var/lib/sds/ca.key"))
        #expect(
            refusal("/etc/certs/ca.key", protected: ["/etc/certs/ca.key"]) == .agentSecret("/etc/certs/ca.key"))
    }

    @Test func refusesPseudoFilesystemsWhateverTheDirectories() {
        #expect(refusal("/proc/self/environ", dirs: ["/proc"]) == .pseudoFilesystem("/proc/self/environ"))
        #expect(refusal("/dev/zero", dirs: ["/dev"]) == .pseudoFilesystem("/dev/zero"))
        #expect(refusal("/sys/kernel/x", dirs: ["/sys"]) == .pseudoFilesystem("/sys/kernel/x"))
    }

    @Test func theRootDirectoryNeverAllowsEverything() {
        #expect(refusal("/etc/passwd", dirs: ["/"]) == .outsideAllowedDirectories("/etc/passwd"))
    }

    @Test func theSystemTrustStoreIsAllowedByName() {
        #expect(refusal("/etc/ssl/certs/ca-certificates.crt") == nil)
    }
}

@Suite struct PeerAdmissionTests {
    @Test func admitsByUserOrGroup() {
        let admission = PeerAdmission(uids: [1000], gids: [1337])
        #expect(admission.admits(PeerCredentials(pid: 1, uid: 1000, gid: 5)))
        #expect(admission.admits(PeerCredentials(pid: 1, uid: 7, gid: 1337)))
        #expect(!admission.admits(PeerCredentials(pid: 1, uid: 0, gid: 0)))
    }

    @Test func readsTheKernelsRecordOfTheSocketPeer() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        let peer = try PeerCredentials(socket: fds[0])
        #expect(peer == PeerCredentials(pid: getpid(), uid: geteuid(), gid: getegid()))
    }
}

@Suite struct TrustConfigurationTests {
    private func resolve(_ edit: (inout RawAgentOptions) -> Void = { _ in }, env: [String: String] = [:])
        throws(ConfigurationError) -> AgentConfiguration
    {
        try resolveConfiguration(edit, env: env, ownUID: 4242)
    }

    @Test func defaultsAdmitOnlyTheAgentsOwnUserAndConventionalDirectories() throws {
        let config = try resolve()
        #expect(config.allowedUIDs == [4242])
        #expect(config.allowedGIDs.isEmpty)
        #expect(config.fileDirectories == FileAccessPolicy.defaultDirectories)
        #expect(!config.fileDirectories.contains("/"))
    }

    @Test func flagsAndEnvironmentSetPeersAndDirectories() throws {
        let config = try resolve(
            { $0.allowUIDs = "1337,1000" }, env: ["SDS_ALLOW_GIDS": "1337", "SDS_FILE_DIRS": "/a,/b/"])
        #expect(config.allowedUIDs == [1337, 1000, 4242])
        #expect(config.allowedGIDs == [1337])
        #expect(config.fileDirectories == ["/a", "/b"])
    }

    @Test(arguments: ["/", "etc/certs", "/etc/../", "/etc,/"])
    func refusesDirectoriesThatOpenTooMuch(dirs: String) {
        #expect(throws: ConfigurationError.self) { try resolve { $0.fileDirs = dirs } }
    }

    @Test(arguments: ["root", "-1", "1,,2", "4294967295"])
    func refusesIDsThatAreNotNumbers(ids: String) {
        do {
            _ = try resolve { $0.allowUIDs = ids }
            Issue.record("accepted \(ids)")
        } catch {
            #expect(error.flag == "--allow-uid (SDS_ALLOW_UIDS)")
        }
    }
}

@Suite struct LogEscapingTests {
    @Test func clientTextCannotBreakOrForgeALine() {
        let hostile = "file-root:/x\nINFO forged=1 \"q\""
        let value = LogOutput.textValue(hostile)
        #expect(!value.contains("\n"))
        #expect(value == #""file-root:/x\nINFO forged=1 \"q\"""#)
        #expect(LogOutput.textValue("a=b") == #""a=b""#)
        #expect(LogOutput.textValue("plain-name") == "plain-name")
        #expect(LogOutput.textValue("") == #""""#)
        #expect(LogOutput.textValue("esc\u{1B}[2J") == #""esc\u001b[2J""#)
        #expect(LogOutput.textValue("c1\u{9B}") == #""c1\u009b""#)
    }

    @Test func aListOfNamesReadsAsSwiftWritesIt() {
        let lists: [[String]] = [
            [], ["default"], ["default", "spiffe://example.org/ns/a/sa/b", "ROOTCA", "ALL"],
            ["q\"uote", "back\\slash", "line\nbreak", "tab\t", "nul\u{0}", "é", "emoji \u{1F600}", "c1\u{9B}", ""],
        ]
        for names in lists { #expect(LogOutput.listValue(names) == "\(names)") }
    }

    @Test func messagesKeepSpacesButNotLineBreaks() {
        #expect(LogOutput.textMessage("connection opened") == "connection opened")
        #expect(LogOutput.textMessage("two\nlines") == #""two\nlines""#)
    }
}

@Suite struct LogSinkTests {
    /// A pipe nobody reads: writes never block, lines beyond the queue are dropped and counted, and once the reader
    /// drains, the queued lines arrive followed by one notice saying how many were lost.
    @Test func anUndrainedPipeNeverBlocksAndDropsAreReported() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        defer {
            close(fds[0])
            close(fds[1])
        }
        let sink = LogSink(descriptor: fds[1])
        sink.dropNotice = { "dropped \($0)\n" }
        let line = String(repeating: "x", count: 1023) + "\n"
        let lines = 2_000  // 2 MB: the pipe (64 KB) plus the queue (256 KB) cannot hold it
        for _ in 0..<lines { sink.write(line: line) }
        let dropped = sink.droppedLines
        #expect(dropped > 0)
        #expect(sink.queuedBytes <= LogSink.maxQueuedBytes)

        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        for _ in 0..<1_000 {
            let count = read(fds[0], &buffer, buffer.count)
            if count > 0 { received += buffer[0..<count] }
            sink.flush(timeout: 0.01)
            if sink.queuedBytes == 0 && sink.droppedLines == 0 && count <= 0 { break }
        }
        let text = String(decoding: received, as: UTF8.self)
        #expect(text.hasSuffix("dropped \(dropped)\n"))
        #expect(text.split(separator: "\n").count == lines - dropped + 1)
    }
}
