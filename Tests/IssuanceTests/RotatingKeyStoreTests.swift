import Foundation
import LocalCA
import PKI
import Testing

struct TextKeyError: Error, CustomStringConvertible {
    var description: String
}

/// A two-file key in text: `t.key` (private) holds `secret=<id>`, `t.txt` holds `id=<id>`. Two files, so that the
/// store's write order and half-written states are exercised as with the CA's key and certificate.
struct TextKeyFormat: RotatingKeyFormat {
    static let files = [
        RotatingKeyFile(name: "t.key", successorName: "t-next.key", isPrivate: true),
        RotatingKeyFile(name: "t.txt", successorName: "t-next.txt", isPrivate: false),
    ]
    static let keyName = "text key"
    static let privateFileLabel = "text key file"
    static func error(_ message: String) -> any Error { TextKeyError(description: message) }

    static func field(_ name: String, in path: String) throws -> String {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard text.hasPrefix(name + "="), text.hasSuffix("\n"), text.count > name.count + 2 else {
            throw TextKeyError(description: "\(path) is damaged")
        }
        return String(text.dropFirst(name.count + 1).dropLast())
    }

    func read(_ paths: [String]) throws -> String {
        let id = try Self.field("id", in: paths[1])
        guard try Self.field("secret", in: paths[0]) == id else {
            throw TextKeyError(description: "\(paths[0]) does not match \(paths[1])")
        }
        return id
    }

    func encode(_ key: String) throws -> [[UInt8]] { [Array("secret=\(key)\n".utf8), Array("id=\(key)\n".utf8)] }
    func make(now: Timestamp) throws -> String { "k\(now.secondsSinceEpoch)" }
    func isSameKey(firstFile: String, lastFile: String) throws -> Bool {
        try Self.field("id", in: lastFile) == Self.field("secret", in: firstFile)
    }
}

/// The generic store on its own, with `TextKeyFormat`: what `LocalCARoots` and `JWTSigningKeys` rely on.
@Suite struct RotatingKeyStoreTests {
    let t0 = Timestamp(secondsSinceEpoch: 1000)

    func open(_ dir: String, _ now: Timestamp? = nil) throws -> RotatingKeyStore<TextKeyFormat> {
        try RotatingKeyStore.open(directory: dir, format: TextKeyFormat(), now: now ?? t0)
    }

    func files(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    func text(_ temp: TempDirectory, _ name: String) throws -> String {
        try String(contentsOfFile: temp.path + "/" + name, encoding: .utf8)
    }

    func expectOpenFails(_ dir: String) -> String {
        let text = #expect(throws: (any Error).self) { try open(dir) }.map { "\($0)" } ?? ""
        #expect(!text.contains("\n"), "one line: \(text)")
        return text
    }

    /// A store in `temp` with a current key (`k1000`) and its successor (`k1060`).
    func withSuccessor(_ temp: TempDirectory) throws -> RotatingKeyStore<TextKeyFormat> {
        var store = try open(temp.path)
        try store.createSuccessor(now: t0 + 60)
        return store
    }

    @Test func firstOpenCreatesTheKeyWithPrivateModesAndReopenLoadsIt() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let dir = temp.path + "/state"
        let first = try open(dir)
        #expect(first.createdFirstKey && first.current == "k1000" && first.successor == nil)
        #expect(try files(dir) == ["t.key", "t.txt"])
        #expect(try temp.mode("state") == 0o700)
        #expect(try temp.mode("state/t.key") == 0o600 && temp.mode("state/t.txt") == 0o600)
        #expect(try text(temp, "state/t.key") == "secret=k1000\n")

        let again = try open(dir, t0 + 50)
        #expect(!again.createdFirstKey && !again.finishedInterruptedRetirement)
        #expect(again.current == "k1000")
    }

    /// The first file is written before the second: a write that fails in between leaves the private half alone,
    /// which the next open reports as an interrupted first start and does not replace.
    @Test func aFirstStartStoppedAfterTheFirstFileIsReportedNotRedone() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        // Blocks the second file's temporary name, so its write fails.
        try FileManager.default.createDirectory(atPath: temp.path + "/.t.txt.tmp", withIntermediateDirectories: false)
        #expect(throws: TextKeyError.self) { try open(temp.path) }
        try FileManager.default.removeItem(atPath: temp.path + "/.t.txt.tmp")
        #expect(try files(temp.path) == ["t.key"])

        let message = expectOpenFails(temp.path)
        #expect(
            message
                == "\(temp.path)/t.txt is missing but \(temp.path)/t.key exists (interrupted first start?); restore it or remove both"
        )
        #expect(try text(temp, "t.key") == "secret=k1000\n")
    }

    @Test func successorIsSavedBesideTheCurrentKeyAndReloaded() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        var store = try open(temp.path)
        #expect(try store.createSuccessor(now: t0 + 60) == "k1060")
        #expect(store.current == "k1000" && store.successor == "k1060")
        #expect(try files(temp.path) == ["t-next.key", "t-next.txt", "t.key", "t.txt"])
        #expect(try temp.mode("t-next.key") == 0o600 && temp.mode("t-next.txt") == 0o600)

        let reopened = try open(temp.path, t0 + 70)
        #expect(reopened.current == "k1000" && reopened.successor == "k1060")
        #expect(throws: TextKeyError.self) { try store.createSuccessor(now: t0 + 80) }
        #expect(try text(temp, "t-next.txt") == "id=k1060\n")
    }

    @Test func retirementMovesTheSuccessorOverTheCurrentKey() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        var store = try withSuccessor(temp)
        #expect(try store.retireCurrent() == "k1000")
        #expect(store.current == "k1060" && store.successor == nil)
        #expect(try files(temp.path) == ["t.key", "t.txt"])
        #expect(try text(temp, "t.key") == "secret=k1060\n" && text(temp, "t.txt") == "id=k1060\n")
        #expect(try temp.mode("t.key") == 0o600)
        #expect(try open(temp.path).current == "k1060")

        let error = #expect(throws: TextKeyError.self) { try store.retireCurrent() }
        #expect(error?.description == "no successor text key to replace \(temp.path)/t.txt")
    }

    /// A crash inside `retireCurrent`: after the first file was replaced, after the successor's first file was
    /// removed too, and after the second file was replaced. Each state opens as the finished retirement.
    @Test(arguments: [1, 2, 3])
    func interruptedRetirementIsFinishedOnOpen(crashAfterStep: Int) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try withSuccessor(temp)
        try temp.write("t.key", try text(temp, "t-next.key"))
        if crashAfterStep >= 2 { try FileManager.default.removeItem(atPath: temp.path + "/t-next.key") }
        if crashAfterStep >= 3 { try temp.write("t.txt", try text(temp, "t-next.txt")) }

        let reopened = try open(temp.path, t0 + 100)
        #expect(reopened.finishedInterruptedRetirement)
        #expect(reopened.current == "k1060" && reopened.successor == nil)
        #expect(try files(temp.path) == ["t.key", "t.txt"])
        #expect(try text(temp, "t.txt") == "id=k1060\n")
    }

    @Test(arguments: ["t.txt", "t.key", "t-next.txt", "t-next.key"])
    func aDamagedFileIsRefusedNamingItAndNothingIsOverwritten(name: String) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try withSuccessor(temp)
        try temp.write(name, "garbage")
        var before: [String: String] = [:]
        for file in try files(temp.path) { before[file] = try text(temp, file) }

        #expect(expectOpenFails(temp.path).contains("\(temp.path)/\(name)"))
        var after: [String: String] = [:]
        for file in try files(temp.path) { after[file] = try text(temp, file) }
        #expect(after == before)
    }

    @Test func missingFilesAreNamedWithTheFix() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try withSuccessor(temp)
        try FileManager.default.removeItem(atPath: temp.path + "/t-next.txt")
        #expect(
            expectOpenFails(temp.path)
                == "\(temp.path)/t-next.txt is missing but \(temp.path)/t-next.key exists (interrupted text key rotation?); restore it or remove \(temp.path)/t-next.key"
        )
        try FileManager.default.removeItem(atPath: temp.path + "/t.key")
        #expect(
            expectOpenFails(temp.path)
                == "\(temp.path)/t.key is missing but \(temp.path)/t.txt exists; restore it or remove both")
        try FileManager.default.removeItem(atPath: temp.path + "/t.txt")
        #expect(
            expectOpenFails(temp.path)
                == "\(temp.path)/t-next.key exists but \(temp.path)/t.txt and \(temp.path)/t.key are missing; restore them or remove \(temp.path)/t-next.key"
        )
        #expect(try files(temp.path) == ["t-next.key"])
    }

    @Test(arguments: ["t.key", "t-next.key"], [0o644, 0o640, 0o604])
    func aPrivateFileOthersCanReadIsRefused(name: String, mode: Int) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try withSuccessor(temp)
        try temp.chmod(name, mode)
        let expected =
            "text key file \(temp.path)/\(name) has mode 0\(String(mode, radix: 8)): group or others may read it; "
            + "refusing to use it (chmod 600 \(temp.path)/\(name))"
        #expect(expectOpenFails(temp.path) == expected)
        #expect(throws: LocalCAError(expected)) {
            try RotatingKeyStore<TextKeyFormat>.checkPrivateFiles(directory: temp.path)
        }
        // The public half may be readable: only private files are held to 0600 on open.
        try temp.chmod(name, 0o600)
        try temp.chmod("t.txt", 0o644)
        _ = try open(temp.path)
    }

    @Test func aStateDirOthersCanWriteIsRefused() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try open(temp.path)
        try temp.chmod("", 0o775)
        #expect(
            expectOpenFails(temp.path).contains("state dir \(temp.path) is writable by group or others (mode 0775)"))
    }
}
