import Glibc
import Logging
import PKI
import SPIFFE
import TestSupport
import Testing
import Transport

@testable import Federation

private let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

@Suite struct FederationSourceTests {
    @Test func filesAndEndpointsParse() throws {
        let file = try FederationSource.parse("cluster-b.example.com=/etc/federation/b.json")
        #expect(file.trustDomain.name == "cluster-b.example.com")
        #expect(file.location == .file(path: "/etc/federation/b.json"))
        let web = try FederationSource.parse("spiffe://b.org=https://bundles.b.org/bundle")
        #expect(web.trustDomain.name == "b.org")
        guard case .endpoint(let url) = web.location else {
            Issue.record("not an endpoint: \(web.location)")
            return
        }
        #expect(url.host == "bundles.b.org" && url.endpointID == nil)
        let spiffe = try FederationSource.parse("b.org=https://bundles.b.org:8443/b#spiffe://b.org/spire/server")
        guard case .endpoint(let endpoint) = spiffe.location else { return }
        #expect(endpoint.endpointID?.uri == "spiffe://b.org/spire/server" && endpoint.port == 8443)
    }

    @Test(arguments: [
        "b.org", "=/etc/b.json", "B.org=/etc/b.json", "b.org=relative.json", "b.org=http://b.org/bundle",
        "b.org=", "spiffe://b.org/path=/etc/b.json", "b.org=https://bundles.b.org/b#spiffe://c.org/spire/server",
        "b.org=https://user@bundles.b.org/b",
    ])
    func malformedSourcesAreRefusedWithAReason(text: String) {
        #expect(throws: FederationSource.ParseError.self) { try FederationSource.parse(text) }
    }
}

/// File sources on a real event loop: written, swapped like kubelet does, broken, restored.
@Suite(.serialized) struct FederatedBundleFileTests {
    private func directory() -> String {
        var template = Array("/tmp/sds-federation-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    private func write(_ text: String, to path: String) throws {
        let slash = path.lastIndex(of: "/")!
        try Files.writeAtomically(
            directory: String(path[..<slash]), name: String(path[path.index(after: slash)...]),
            bytes: Array(text.utf8), mode: 0o644)
    }

    @Test func aFileIsLoadedAndEveryGoodChangeIsServedWhileABadOneKeepsTheLast() throws {
        let dir = directory()
        let path = dir + "/b.pem"
        let first = try TestCA(trustDomain: "b.org")
        let second = try TestCA(trustDomain: "b.org")
        try write(first.bundle.pem, to: path)
        let loop = try EventLoop()
        let source = try FederationSource.parse("b.org=\(path)")
        let federation = FederatedBundles(sources: [source], loop: loop, logger: quiet)
        var changes = 0
        federation.onChange = { changes += 1 }
        #expect(federation.x509Bundles.first?.certificates == first.bundle.certificates, "read at start")

        try write("not a bundle", to: path)
        _ = loop.run(until: { false }, timeout: 0.3)
        #expect(changes == 0)
        #expect(federation.x509Bundles.first?.certificates == first.bundle.certificates, "the last good one stays")

        try write(second.bundle.pem, to: path)
        #expect(loop.run(until: { changes == 1 }, timeout: 5))
        #expect(federation.x509Bundles.first?.certificates == second.bundle.certificates)
    }

    @Test func aSpiffeDocumentWithALowerSequenceDoesNotReplaceTheServedOne() throws {
        let dir = directory()
        let path = dir + "/b.json"
        let ca = try TestCA(trustDomain: "b.org")
        let other = try TestCA(trustDomain: "b.org")
        func document(_ ca: TestCA, sequence: Int) -> String {
            let der = ca.bundle.certificates[0].der
            return "{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"\(Self.base64(der))\"]}],"
                + "\"spiffe_sequence\":\(sequence)}"
        }
        try write(document(ca, sequence: 7), to: path)
        let loop = try EventLoop()
        let federation = FederatedBundles(
            sources: [try FederationSource.parse("b.org=\(path)")], loop: loop, logger: quiet)
        #expect(federation.bundles[try TrustDomain("b.org")]?.sequence == 7)
        var changes = 0
        federation.onChange = { changes += 1 }
        try write(document(other, sequence: 6), to: path)
        _ = loop.run(until: { changes > 0 }, timeout: 0.3)
        #expect(changes == 0)
        #expect(federation.x509Bundles.first?.certificates == ca.bundle.certificates)
        try write(document(other, sequence: 8), to: path)
        #expect(loop.run(until: { changes == 1 }, timeout: 5))
        #expect(federation.x509Bundles.first?.certificates == other.bundle.certificates)
    }

    @Test func aMissingFileServesNothingUntilItAppears() throws {
        let dir = directory()
        let path = dir + "/b.pem"
        let loop = try EventLoop()
        let federation = FederatedBundles(
            sources: [try FederationSource.parse("b.org=\(path)")], loop: loop, logger: quiet)
        #expect(federation.bundles.isEmpty)
        var changes = 0
        federation.onChange = { changes += 1 }
        try write(try TestCA(trustDomain: "b.org").bundle.pem, to: path)
        #expect(loop.run(until: { changes == 1 }, timeout: 5))
        #expect(federation.bundles.count == 1)
    }

    static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
        var out = ""
        var index = 0
        while index < bytes.count {
            let chunk = Array(bytes[index..<min(index + 3, bytes.count)])
            let value = chunk.enumerated().reduce(0) { $0 | Int($1.element) << (16 - 8 * $1.offset) }
            for position in 0..<4 {
                out.append(position <= chunk.count ? alphabet[(value >> (18 - 6 * position)) & 63] : "=")
            }
            index += 3
        }
        return out
    }
}

/// Records the metadata of every line logged.
private final class RecordingLog: @unchecked Sendable {
    var lines: [Logger.Metadata] = []
}

private struct RecordingHandler: LogHandler {
    let log: RecordingLog
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { log.lines.append(event.metadata ?? [:]) }
}

@Suite struct FederatedBundleRefusalTests {
    /// A refusal's reason may carry text the other side chose (an HTTP reason phrase): it is cut at the bound before
    /// it is kept or logged.
    @Test func aLongReasonIsBoundedBeforeItIsLogged() throws {
        let recorded = RecordingLog()
        let logger = Logger(label: "test", factory: { _ in RecordingHandler(log: recorded) })
        let loop = try EventLoop()
        let source = try FederationSource.parse("b.org=/nonexistent/b.pem")
        let federation = FederatedBundles(sources: [], loop: loop, logger: logger)
        federation.refuse(source, String(repeating: "x", count: 10_000))
        let reason = try #require(recorded.lines.last?["reason"]).description
        #expect(reason.utf8.count <= FederatedBundles.maxReasonBytes + "…".utf8.count)
        #expect(reason.hasPrefix(String(repeating: "x", count: FederatedBundles.maxReasonBytes)))
    }
}
