import JSONText
import PKI
import SDSDump
import TestSupport
import Testing
import Wire

@Suite struct GenericSecretReportTests {
    @Test func jwtClaimsAreShownNeverTheToken() throws {
        let claims = #"{"aud":["db","cache"],"exp":1800000300,"sub":"spiffe://example.org/app"}"#
        let token = "eyJhbGciOiJFUzI1NiJ9." + Base64URL.encode(Array(claims.utf8)) + ".c2ln"
        let summary = GenericSecretSummary(Array(token.utf8))
        #expect(summary.jwtSubject == "spiffe://example.org/app")
        #expect(summary.jwtAudiences == ["db", "cache"])
        #expect(summary.jwtExpiresAt == Timestamp(secondsSinceEpoch: 1_800_000_300))
        #expect(summary.length == token.utf8.count)
    }

    @Test func opaqueSecretIsOnlyItsLength() {
        let summary = GenericSecretSummary(Array("not a jwt".utf8))
        #expect(summary == GenericSecretSummary(length: 9, jwtSubject: nil, jwtAudiences: [], jwtExpiresAt: nil))
    }
}

@Suite struct RenderTests {
    let fixtures: Fixtures
    init() throws { fixtures = try Fixtures() }

    func update(bundleRoot: Certificate? = nil, at time: Timestamp = Fixtures.now) throws -> DumpUpdate {
        let certificate = try ReceivedSecret(try fixtures.certificateSecret(), version: "v1")
        let bundle = try ReceivedSecret(fixtures.bundleSecret(root: bundleRoot), version: "v2")
        return DumpUpdate(
            time: time, mode: .sotw, secrets: [certificate, bundle], bundles: bundle.trustedCAs ?? [])
    }

    @Test func jsonDocumentHoldsTheContractKeysInOrder() throws {
        let json = DumpRenderer.json(try update()).rendered
        #expect(json.hasPrefix(#"{"time":"2026-01-01T00:00:00Z","mode":"sotw","secrets":[{"name":"default","#))
        #expect(json.contains(#""kind":"certificate","version":"v1","certificates":[{"spiffe_id":"#))
        #expect(json.contains(#""spiffe_id":"spiffe://example.org/ns/demo/sa/dump","subject":"O=TestCA","#))
        #expect(json.contains(#""expires_in_seconds":3600,"key_type":"ECDSA P-256","sha256":""#))
        #expect(json.contains(#""private_key":{"type":"ECDSA P-256"},"chain_verified":true}"#))
        #expect(json.contains(#""kind":"validation_context","version":"v2""#))
        #expect(json.hasSuffix(#""chain_verified":null}]}"#))
        #expect(!json.contains("\n") && !json.contains("PRIVATE KEY"))
    }

    @Test func jsonSaysFalseAgainstAForeignBundle() throws {
        let other = try TestCA(trustDomain: "other.org", now: Fixtures.now)
        let json = DumpRenderer.json(try update(bundleRoot: other.root)).rendered
        #expect(json.contains(#""chain_verified":false"#))
    }

    @Test func humanListingShowsEveryCertificateAndNoKey() throws {
        let text = DumpRenderer.human(try update(at: Fixtures.now + 13 * 60), colors: false)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("2026-01-01T00:13:00Z "))
        #expect(lines.filter { $0.first?.isNumber == true }.count == 1, "only the first line starts with a time")
        #expect(lines.contains("default: certificate (version v1)"))
        #expect(lines.contains("ROOTCA: validation context (version v2)"))
        #expect(text.contains("expires in 47m"))
        #expect(text.contains("SPIFFE ID   spiffe://example.org/ns/demo/sa/dump"))
        #expect(text.contains("key type    ECDSA P-256"))
        #expect(text.contains("  chain: verified"))
        let leaf = fixtures.leafChain[0]
        let serial = CertificateReport(leaf).serial
        #expect(text.contains("serial      \(serial)"))
        #expect(!text.contains("\u{1B}") && !text.contains("PRIVATE KEY"))
    }

    @Test func humanListingSaysWhyAChainIsNotVerified() throws {
        let other = try TestCA(trustDomain: "other.org", now: Fixtures.now)
        let text = DumpRenderer.human(try update(bundleRoot: other.root), colors: false)
        #expect(text.contains("chain: NOT verified: unable to get local issuer certificate"))
    }

    @Test func coloursOnlyWhenAsked() throws {
        // 55 minutes into a 61-minute lifetime: past the tenth that turns it red.
        let text = DumpRenderer.human(try update(at: Fixtures.now + 55 * 60), colors: true)
        #expect(text.contains("\u{1B}[31mexpires in 5m\u{1B}[0m"))
    }

    @Test(arguments: [
        (Int64(47 * 60 + 59), "expires in 47m"), (86_399, "expires in 23h59m"), (90_061, "expires in 1d1h1m"),
        (42, "expires in 42s"), (0, "expired 0s ago"), (-300, "expired 5m ago"), (3600, "expires in 1h"),
    ])
    func expiryText(seconds: Int64, text: String) {
        #expect(DumpRenderer.expiresText(seconds) == text)
    }

    @Test func urgency() {
        #expect(DumpRenderer.urgencyColor(remaining: 3000, lifetime: 3600) == nil)
        #expect(DumpRenderer.urgencyColor(remaining: 1000, lifetime: 3600) == "\u{1B}[33m")
        #expect(DumpRenderer.urgencyColor(remaining: 300, lifetime: 3600) == "\u{1B}[31m")
        #expect(DumpRenderer.urgencyColor(remaining: -1, lifetime: 3600) == "\u{1B}[31m")
    }

    @Test func serialIsPrintedInWholeBytesAsOpenSSLDoes() throws {
        let key = try PrivateKey.generate()
        for (bytes, expected) in [([UInt8]([0x01, 0x23]), "0123"), ([0x0A], "0A"), ([0x80, 0x00], "8000")] {
            let certificate = try CertificateBuilder(
                subject: DistinguishedName(commonName: "serial"), publicKey: key.publicKey, serialNumber: bytes,
                notBefore: Fixtures.now, notAfter: Fixtures.now + 60
            ).sign(issuer: nil, issuerKey: key)
            #expect(CertificateReport(certificate).serial == expected)
            #expect(CertificateReport(certificate).sha256.count == 64)
        }
    }
}

@Suite struct TextRulesTests {
    @Test func jsonEscapesQuotesBackslashesAndControls() {
        let value = JSONValue.string("a\"b\\c\nd\u{01}e\u{2028}é")
        #expect(value.rendered == #""a\"b\\c\nd\u0001e\u2028é""#)
        #expect(
            JSONValue.object([("k", .array([.null, .bool(false), .int(-3)]))]).rendered == #"{"k":[null,false,-3]}"#)
    }

    @Test(arguments: [
        ("1", 1.0), ("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5),
    ])
    func durations(text: String, seconds: Double) {
        #expect(parseDuration(text) == seconds)
    }

    @Test(arguments: ["soon", "", "0", "-1", "inf", "nan", "1e3", "s", "10x"])
    func notDurations(text: String) {
        #expect(parseDuration(text) == nil)
    }

    @Test func safeFileNames() {
        #expect(safeFileName("spiffe://example.org") == "spiffe_example.org")
        #expect(safeFileName("spiffe://example.org/ns/demo/sa/dump") == "spiffe_example.org_ns_demo_sa_dump")
        #expect(safeFileName("default") == "default" && safeFileName("ROOTCA") == "ROOTCA")
        #expect(safeFileName("../../etc/passwd") == ".._.._etc_passwd")
        #expect(safeFileName("a b\u{E9}c") == "a_b_c")
    }
}
