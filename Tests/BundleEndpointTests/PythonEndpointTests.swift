import BundleEndpoint
import Foundation
import Glibc
import PKI
import SPIFFE
import Testing
import Transport

/// `Tests/Integration/bundle_endpoint_server.py` run as a script: Python's `http.server` and `ssl` (its own OpenSSL
/// build and defaults) on the other side of the fetcher, in both profiles.
final class PythonBundleEndpoint {
    let process = Process()
    /// The `--federate-with` value's URL, and the PEM file the script names (root or web CA).
    let url: String
    let pemPath: String

    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Integration/bundle_endpoint_server.py").path

    /// `$SDS_PYTHON` (set by the Makefile), else the package's `.venv` (`make venv`).
    static var python: String? {
        if let python = ProcessInfo.processInfo.environment["SDS_PYTHON"], !python.isEmpty { return python }
        let venv = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".venv/bin/python").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    init(profile: String) throws {
        guard let python = Self.python else {
            throw Failure(description: "no Python for the fake endpoint: run `make venv` (or set SDS_PYTHON)")
        }
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-u", Self.script, "--trust-domain", "east.example", "--profile", profile, "--port", "0"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        // Two lines: `--federate-with east.example=<url>`, then `<what>: <pem path>`.
        var text = ""
        while text.split(separator: "\n").count < 2 {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let lines = text.split(separator: "\n")
        guard lines.count >= 2, let equals = lines[0].firstIndex(of: "="), let colon = lines[1].lastIndex(of: " ")
        else {
            kill(process.processIdentifier, SIGKILL)
            throw Failure(description: "bundle_endpoint_server.py printed \(text)")
        }
        url = String(lines[0][lines[0].index(after: equals)...])
        pemPath = String(lines[1][lines[1].index(after: colon)...])
    }

    deinit {
        // SIGKILL, not SIGTERM: a child inherits the test thread's signal mask, and the event loop's threads block
        // the signals it reads through signalfd.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

extension BundleEndpointFetcherTests {
    func fetchFromPython(url: String, profile: BundleEndpointProfile) throws -> Result<[UInt8], BundleEndpointError> {
        let loop = try EventLoop()
        let worker = try OffLoopWorker(loop: loop)
        var results: [Result<[UInt8], BundleEndpointError>] = []
        let fetcher = BundleEndpointFetcher(
            url: try BundleEndpointURL(parsing: url), profile: profile, timeout: 10, loop: loop, worker: worker
        ) { results.append($0) }
        _ = loop.run(until: { !results.isEmpty }, timeout: 15)
        withExtendedLifetime(fetcher) {}
        return try #require(results.first)
    }

    @Test func httpsSPIFFEAgainstPythonsHTTPServer() throws {
        let peer = try PythonBundleEndpoint(profile: "spiffe")
        let roots = try Certificate.parseChain(pem: try String(contentsOfFile: peer.pemPath, encoding: .utf8))
        let endpointID = try #require(try BundleEndpointURL(parsing: peer.url).endpointID)
        let body = try fetchFromPython(url: peer.url, profile: .httpsSPIFFE(endpointID: endpointID, roots: roots))
            .get()
        let bundle = try SPIFFEBundle.parse(body, trustDomain: try TrustDomain("east.example"))
        #expect(bundle.x509.certificates == roots)
        #expect(bundle.sequence == 1 && bundle.refreshHint == 300)
        #expect(
            BundleRefreshPolicy().accept(new: bundle, previous: nil, trustDomain: bundle.x509.trustDomain) == .accept)
        // The same server under another expected ID is refused.
        let other = try SPIFFEID(parsing: "spiffe://east.example/other")
        let refused = try fetchFromPython(url: peer.url, profile: .httpsSPIFFE(endpointID: other, roots: roots))
        guard case .failure(let error) = refused else {
            Issue.record("accepted another SPIFFE ID")
            return
        }
        #expect(error.kind == .tls)
    }

    /// The web profile trusts the system store; `SSL_CERT_FILE` names the script's CA (see
    /// `httpsWebVerifiesTheHostAgainstTheSystemStore` for why setting it here is safe).
    @Test func httpsWebAgainstPythonsHTTPServer() throws {
        let peer = try PythonBundleEndpoint(profile: "web")
        setenv("SSL_CERT_FILE", peer.pemPath, 1)
        defer { unsetenv("SSL_CERT_FILE") }
        for url in [peer.url, peer.url.replacingOccurrences(of: "localhost", with: "127.0.0.1")] {
            let body = try fetchFromPython(url: url, profile: .httpsWeb).get()
            let bundle = try SPIFFEBundle.parse(body, trustDomain: try TrustDomain("east.example"))
            #expect(bundle.x509.certificates.count == 1, "\(url)")
        }
    }
}
