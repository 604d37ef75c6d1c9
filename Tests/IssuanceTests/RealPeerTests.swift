import Foundation
import Issuance
import LocalCA
import PKI
import SPIFFE
import TestSupport
import Testing

/// SVIDs from the local CA checked by independent implementations: py-spiffe and the openssl CLI.
@Suite struct RealPeerTests {
    let now = FakeClock.defaultStart

    /// `$SDS_PYTHON` (set by the Makefile); a missing interpreter is a failure, not a skip.
    static func python() throws -> String {
        guard let path = ProcessInfo.processInfo.environment["SDS_PYTHON"], !path.isEmpty else {
            throw PeerUnavailable(message: "SDS_PYTHON is not set: run the tests through `make test` or set it")
        }
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw PeerUnavailable(message: "SDS_PYTHON=\(path) is not executable: run `make venv`")
        }
        return path
    }

    struct PeerUnavailable: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    static let pyScript = """
        import sys, pathlib
        from cryptography.hazmat.primitives.serialization import Encoding
        from spiffe import X509Svid, X509Bundle, TrustDomain
        d = pathlib.Path(sys.argv[1])
        td = TrustDomain(sys.argv[2])
        svid = X509Svid.load(d / "chain.pem", d / "key.pem", Encoding.PEM)
        svid_der = X509Svid.parse_raw((d / "chain.der").read_bytes(), (d / "key.der").read_bytes())
        assert str(svid_der.spiffe_id) == str(svid.spiffe_id)
        bundle = X509Bundle.load(td, d / "bundle.pem", Encoding.PEM)
        bundle_der = X509Bundle.parse_raw(td, (d / "bundle.der").read_bytes())
        assert len(bundle.x509_authorities) == len(bundle_der.x509_authorities) >= 1
        print("ID", svid.spiffe_id, "CHAIN", len(svid.cert_chain), "ROOTS", len(bundle.x509_authorities))
        """

    func writeArtifacts(_ svid: X509SVID, bundle: X509Bundle, to temp: TempDirectory) throws {
        try temp.write("chain.pem", svid.chainPEM)
        try temp.write("leaf.pem", svid.leaf.pem)
        try temp.write("intermediates.pem", Certificate.pem(Array(svid.chain.dropFirst())))
        try temp.write("key.pem", svid.privateKey.pkcs8PEM())
        try temp.write("chain.der", svid.chainDER)
        try temp.write("key.der", svid.privateKey.pkcs8DER())
        try temp.write("bundle.pem", bundle.pem)
        try temp.write("bundle.der", bundle.der)
        try temp.write("check.py", Self.pyScript)
    }

    func checkWithPeers(_ svid: X509SVID, bundle: X509Bundle) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        try writeArtifacts(svid, bundle: bundle, to: temp)
        let py = try run(Self.python(), [temp.path + "/check.py", temp.path, bundle.trustDomain.name])
        #expect(py.status == 0, "py-spiffe rejected the SVID: \(py.output)")
        #expect(py.output.contains("ID \(svid.spiffeID) CHAIN \(svid.chain.count) ROOTS \(bundle.certificates.count)"))

        var arguments = ["verify", "-CAfile", temp.path + "/bundle.pem"]
        // -attime: openssl must judge validity at the test's fake time, not the machine's.
        arguments += ["-attime", String(now.secondsSinceEpoch)]
        if svid.chain.count > 1 { arguments += ["-untrusted", temp.path + "/intermediates.pem"] }
        arguments.append(temp.path + "/leaf.pem")
        let verify = try run("/usr/bin/openssl", arguments)
        #expect(verify.status == 0, "openssl verify: \(verify.output)")
        #expect(verify.output.contains(": OK"))
    }

    @Test func pySpiffeAndOpenSSLAcceptEverySVIDFromTheStateDirCA() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let ca = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: TrustDomain("example.org"), now: now)
        for path in ["/ns/default/sa/web", "/a", "/x.y-z_0/B"] {
            let svid = try ca.issue(spiffeID: SPIFFEID(parsing: "spiffe://example.org" + path), ttl: 3600, now: now)
            try checkWithPeers(svid, bundle: ca.bundle)
        }
    }

    @Test func nameConstrainedRootIsAcceptedByPeers() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let ca = try LocalCA.openOrCreate(
            stateDirectory: temp.path, trustDomain: TrustDomain("example.org"), now: now, nameConstrained: true)
        let svid = try ca.issue(spiffeID: SPIFFEID(parsing: "spiffe://example.org/a/b"), ttl: 3600, now: now)
        try checkWithPeers(svid, bundle: ca.bundle)
    }

    @Test func pySpiffeAndOpenSSLAcceptSVIDsFromAnOperatorIntermediate() throws {
        let test = try TestCA(now: now)
        let intermediate = try test.makeIntermediate()
        let ca = try LocalCA(
            signingChain: [intermediate.certificate, test.root], signingKey: intermediate.key,
            trustDomain: test.trustDomain, now: now)
        let svid = try ca.issue(spiffeID: SPIFFEID(parsing: "spiffe://example.org/w"), ttl: 600, now: now)
        try checkWithPeers(svid, bundle: ca.bundle)
    }

    @Test func pySpiffeRejectsTheBrokenFixturesToo() throws {
        // Cross-check of our rules: what we reject as leaf-is-ca / no-digital-signature, py-spiffe rejects too.
        let test = try TestCA(now: now)
        for rule in [TestCA.BrokenRule.leafIsCA, .noDigitalSignature, .twoURISANs, .leafIDWithoutPath] {
            let (chain, key) = try test.fixture(breaking: rule)
            let temp = try TempDirectory()
            defer { temp.remove() }
            try temp.write("chain.pem", Certificate.pem(chain))
            try temp.write("key.pem", key.pkcs8PEM())
            try temp.write(
                "check.py",
                """
                import sys, pathlib
                from cryptography.hazmat.primitives.serialization import Encoding
                from spiffe import X509Svid
                d = pathlib.Path(sys.argv[1])
                try:
                    X509Svid.load(d / "chain.pem", d / "key.pem", Encoding.PEM)
                except Exception as e:
                    print("REJECTED", type(e).__name__, e)
                    sys.exit(0)
                print("ACCEPTED")
                sys.exit(1)
                """)
            let py = try run(Self.python(), [temp.path + "/check.py", temp.path])
            #expect(py.status == 0, "\(rule.rawValue): \(py.output)")
        }
    }

    @Test func opensslShowsExactlyTheSVIDExtensions() throws {
        let ca = try LocalCA.ephemeral(trustDomain: TrustDomain("example.org"), now: now)
        let svid = try ca.issue(spiffeID: SPIFFEID(parsing: "spiffe://example.org/ns/a/sa/b"), ttl: 3600, now: now)
        let temp = try TempDirectory()
        defer { temp.remove() }
        try temp.write("leaf.pem", svid.leaf.pem)
        let text = try run("/usr/bin/openssl", ["x509", "-noout", "-text", "-in", temp.path + "/leaf.pem"])
        #expect(text.status == 0)
        let lines = text.output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        func value(after header: String) -> String? {
            guard let index = lines.firstIndex(of: header), index + 1 < lines.count else { return nil }
            return lines[index + 1]
        }
        #expect(value(after: "X509v3 Basic Constraints: critical") == "CA:FALSE")
        #expect(value(after: "X509v3 Key Usage: critical") == "Digital Signature")
        #expect(
            value(after: "X509v3 Extended Key Usage:") == "TLS Web Server Authentication, TLS Web Client Authentication"
        )
        #expect(value(after: "X509v3 Subject Alternative Name:") == "URI:spiffe://example.org/ns/a/sa/b")
        #expect(lines.contains("X509v3 Subject Key Identifier:"))
        #expect(lines.contains("X509v3 Authority Key Identifier:"))
        #expect(lines.contains("Signature Algorithm: ecdsa-with-SHA256"))
        #expect(lines.contains("ASN1 OID: prime256v1"))
        // Exactly these six extensions, nothing else.
        let extensionHeaders = lines.filter { $0.hasPrefix("X509v3 ") && $0 != "X509v3 extensions:" }
        #expect(extensionHeaders.count == 6, "\(extensionHeaders)")
    }
}
