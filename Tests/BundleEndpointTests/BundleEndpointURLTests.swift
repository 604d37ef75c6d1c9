import BundleEndpoint
import SPIFFE
import Testing

@Suite struct BundleEndpointURLTests {
    @Test func httpsWebURL() throws {
        let url = try BundleEndpointURL(parsing: "https://Bundles.Example.org/federation/bundle.json")
        #expect(url.host == "bundles.example.org")
        #expect(url.port == 443)
        #expect(url.requestTarget == "/federation/bundle.json")
        #expect(url.endpointID == nil)
        #expect(url.hostHeader == "bundles.example.org")
        #expect(url.description == "https://bundles.example.org/federation/bundle.json")
    }

    @Test func httpsSPIFFEURLWithPortAndQuery() throws {
        let url = try BundleEndpointURL(
            parsing: "https://10.0.0.7:8443/bundle?td=east#spiffe://east.example/spire/server")
        #expect(url.host == "10.0.0.7")
        #expect(url.port == 8443)
        #expect(url.requestTarget == "/bundle?td=east", "the query is kept and sent")
        #expect(url.endpointID?.uri == "spiffe://east.example/spire/server")
        #expect(url.hostHeader == "10.0.0.7:8443")
        #expect(url.description == "https://10.0.0.7:8443/bundle?td=east#spiffe://east.example/spire/server")
    }

    @Test func ipv6HostAndDefaults() throws {
        let url = try BundleEndpointURL(parsing: "https://[::1]:9443")
        #expect(url.host == "::1")
        #expect(url.port == 9443)
        #expect(url.requestTarget == "/")
        #expect(url.hostHeader == "[::1]:9443")
        #expect(try BundleEndpointURL(parsing: "https://h?x=1").requestTarget == "/?x=1")
    }

    @Test(arguments: [
        ("http://bundles.example.org/b", "scheme must be https"),
        ("ftp://bundles.example.org/b", "scheme must be https"),
        ("bundles.example.org/b", "is not https://host[:port]/path"),
        ("https:/bundles.example.org/b", "is not https://host[:port]/path"),
        ("https://user:pw@bundles.example.org/b", "userinfo"),
        ("https:///b", "empty host"),
        ("https://:443/b", "empty host"),
        ("https://bundles.example.org:0/b", "port \"0\" is not 1-65535"),
        ("https://bundles.example.org:65536/b", "is not 1-65535"),
        ("https://bundles.example.org:/b", "is not 1-65535"),
        ("https://bundles.example.org:44x/b", "is not 1-65535"),
        ("https://bund%6ces.example.org/b", "is not a DNS name or an IP address"),
        ("https://[::1/b", "unclosed [IPv6]"),
        ("https://[::1]x/b", "not a port"),
        ("https://[abc]/b", "invalid IPv6 host"),
        ("https://[fe80::1%25eth0]/b", "invalid IPv6 host"),
        ("https://h/b#", "is not a SPIFFE ID"),
        ("https://h/b#https://east.example/x", "is not a SPIFFE ID"),
        ("https://h/b#spiffe://East.example/x", "is not a SPIFFE ID"),
        ("https://h/b c", "printable ASCII without spaces"),
        ("", "printable ASCII"),
    ])
    func refused(text: String, expected: String) {
        #expect {
            try BundleEndpointURL(parsing: text)
        } throws: { error in
            let line = "\(error)"
            return line.contains(expected) && !line.contains("\n")
        }
    }

    /// What the fuzz target checks, on mutations of valid URLs: a URL that parses prints as one that parses back
    /// to the same value.
    @Test func everyAcceptedURLRoundTrips() throws {
        var generator = SplitMix(seed: 0xF00D)
        let alphabet = Array("abcXYZ019:/?#@[].%-_ spiffe://".utf8)
        let valid = [
            "https://Bundles.Example.org:8443/federation/bundle.json?td=east",
            "https://[::1]/bundle#spiffe://east.example/spire/server", "https://10.0.0.7:0443?x#spiffe://e/x",
        ]
        var accepted = 0
        for text in valid {
            for _ in 0..<3000 {
                var bytes = Array(text.utf8)
                for _ in 0..<(1 + Int(generator.next() % 3)) {
                    let position = Int(generator.next() % UInt64(bytes.count))
                    bytes[position] = alphabet[Int(generator.next() % UInt64(alphabet.count))]
                }
                guard let url = try? BundleEndpointURL(parsing: String(decoding: bytes, as: UTF8.self)) else {
                    continue
                }
                accepted += 1
                #expect(try BundleEndpointURL(parsing: url.description) == url, "\(url)")
            }
        }
        #expect(accepted > 100)
    }

    @Test func aHugeURLIsRefusedBeforeItIsParsed() {
        let text = "https://h/" + String(repeating: "a", count: BundleEndpointURL.maxBytes)
        #expect(throws: BundleEndpointURL.ParseError.self) { try BundleEndpointURL(parsing: text) }
    }
}

@Suite struct BundleRefreshPolicyTests {
    let policy = BundleRefreshPolicy()

    @Test func refreshFollowsTheHintWithinItsClamp() {
        #expect(policy.refreshDelay(hint: nil) == 300)
        #expect(policy.refreshDelay(hint: 60) == 60)
        #expect(policy.refreshDelay(hint: 0) == 10)
        #expect(policy.refreshDelay(hint: -5) == 10)
        #expect(policy.refreshDelay(hint: 86_400) == 3600)
        #expect(policy.refreshDelay(hint: .max) == 3600)
        #expect(policy.refreshDelay(hint: .min) == 10)
    }

    @Test func retriesDoubleFromOneSecondUpToTheRefreshDelay() {
        let delays = (1...14).map { policy.retryDelay(failures: $0, refreshDelay: 300, randomUnit: 0.5) }
        #expect(delays.prefix(9) == [1, 2, 4, 8, 16, 32, 64, 128, 256])
        #expect(delays.dropFirst(9).allSatisfy { $0 == 300 }, "capped at the refresh interval")
        #expect(policy.retryDelay(failures: .max, refreshDelay: 3600, randomUnit: 0.5) == 3600, "no overflow")
        #expect(policy.retryDelay(failures: 0, refreshDelay: 300, randomUnit: 0.5) == 1)
    }

    @Test func retriesAreJitteredWithinTwentyPercentAndNeverPastTheCap() {
        #expect(policy.retryDelay(failures: 3, refreshDelay: 300, randomUnit: 0) == 4 * 0.8)
        #expect(abs(policy.retryDelay(failures: 3, refreshDelay: 300, randomUnit: 0.999_999) - 4 * 1.2) < 0.001)
        #expect(policy.retryDelay(failures: 20, refreshDelay: 300, randomUnit: 0.999) <= 300)
        #expect(policy.retryDelay(failures: 20, refreshDelay: 300, randomUnit: 0) == 240)
        // Out-of-range samples are clamped, not trusted.
        #expect(policy.retryDelay(failures: 1, refreshDelay: 300, randomUnit: 7) == 1.2)
        #expect(policy.retryDelay(failures: 1, refreshDelay: 300, randomUnit: -7) == 0.8)
    }

    func bundle(_ ca: TestBundleCA, sequence: Int64?, domain: String = "east.example", empty: Bool = false) throws
        -> SPIFFEBundle
    {
        SPIFFEBundle(
            x509: X509Bundle(trustDomain: try TrustDomain(domain), certificates: empty ? [] : [ca.root]),
            sequence: sequence)
    }

    @Test func acceptanceRefusesOlderSequencesEmptySetsAndOtherDomains() throws {
        let ca = try TestBundleCA()
        let east = try TrustDomain("east.example")
        let held = try bundle(ca, sequence: 5)
        #expect(policy.accept(new: try bundle(ca, sequence: 6), previous: held, trustDomain: east) == .accept)
        #expect(policy.accept(new: try bundle(ca, sequence: 5), previous: held, trustDomain: east) == .accept)
        #expect(policy.accept(new: try bundle(ca, sequence: 1), previous: nil, trustDomain: east) == .accept)
        #expect(policy.accept(new: try bundle(ca, sequence: nil), previous: held, trustDomain: east) == .accept)
        #expect(
            policy.accept(new: try bundle(ca, sequence: 4), previous: held, trustDomain: east)
                == .refuse(reason: "the bundle of east.example has spiffe_sequence 4, lower than the held 5"))
        #expect(
            policy.accept(new: try bundle(ca, sequence: 7, empty: true), previous: held, trustDomain: east)
                == .refuse(reason: "the bundle of east.example has no X.509 authority"))
        #expect(
            policy.refusal(new: try bundle(ca, sequence: 7, domain: "west.example"), previous: held, trustDomain: east)
                == "the bundle is for trust domain west.example, not east.example")
    }

    @Test func aParsedDocumentCarriesItsHintAndSequence() throws {
        let ca = try TestBundleCA()
        let bundle = try SPIFFEBundle.parse(
            Array(ca.document(sequence: 9, refreshHint: 42).utf8), trustDomain: try TrustDomain("east.example"))
        #expect(policy.refreshDelay(after: bundle) == 42)
        #expect(bundle.sequence == 9)
    }
}
