import Foundation
import FuzzTargets
import Testing

/// Replays every committed corpus file (Tests/Fuzz/Corpus/<target>/*) through its fuzz target: the real-traffic
/// seeds, the op sequences of the structure-aware targets (Tests/Fuzz/make_op_seeds.py) and every crash the fuzzer
/// once found stay checked without a fuzzer build. A target that keeps something running between inputs (file-names:
/// an agent on its own thread) is torn down after its corpus.
@Suite struct CorpusReplayTests {
    static let corpusRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/Corpus")

    @Test(arguments: FuzzTarget.allCases)
    func replaysCorpus(_ target: FuzzTarget) throws {
        let directory = Self.corpusRoot.appendingPathComponent(target.rawValue)
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        // A target without seeds would replay nothing and pass: a corpus must exist for every target.
        #expect(files.count >= 5, "corpus \(directory.path) has \(files.count) files")
        for file in files {
            let bytes = try [UInt8](Data(contentsOf: directory.appendingPathComponent(file)))
            // A past finding that traps again takes the whole test process down: name it first.
            if file.hasPrefix("crash-") { print("replaying \(target.rawValue)/\(file)") }
            target.run(bytes)
        }
        target.tearDown()
    }
}
