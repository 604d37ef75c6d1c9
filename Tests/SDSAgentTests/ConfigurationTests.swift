import Testing

@testable import SDSAgent

@Suite struct DurationTextTests {
    @Test(arguments: [
        ("1h", 3600.0), ("30m", 1800), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5), ("24h0m0s", 86400), ("45", 45),
    ])
    func parsesGoStyleDurations(text: String, seconds: Double) throws {
        #expect(try DurationText.seconds(text) == seconds)
    }

    // The last ones cross `maxSeconds` (1e23 s once trapped in `format`; `inf` was accepted as a TTL).
    @Test(arguments: ["", "h", "1x", "1h30", "-", "1.2.3s", "nan", "inf", "1e23", "31536000001", "8760001000h"])
    func rejectsGarbage(text: String) {
        #expect(throws: DurationText.ParseError.self) { try DurationText.seconds(text) }
    }

    @Test func formatsForHumans() {
        #expect(DurationText.format(seconds: 3600) == "1h")
        #expect(DurationText.format(seconds: 5430) == "1h30m30s")
        #expect(DurationText.format(seconds: 0) == "0s")
        #expect(DurationText.format(seconds: DurationText.maxSeconds) == "8760000h")
        #expect(DurationText.format(seconds: 1e23) == "1e+23s")
        #expect(DurationText.format(seconds: -.infinity) == "-infs")
    }
}

@Suite struct AgentConfigurationTests {
    private func resolve(_ edit: (inout RawAgentOptions) -> Void = { _ in }, env: [String: String] = [:])
        throws(ConfigurationError) -> AgentConfiguration
    {
        var options = RawAgentOptions()
        options.socket = "/tmp/sds-config-test/agent.sock"
        edit(&options)
        return try AgentConfiguration.resolve(
            options, environment: env, validateTrustDomain: { $0.contains("_") ? "bad character" : nil },
            validateSPIFFEID: { id, td in id.hasPrefix("spiffe://\(td)/") ? nil : "not in trust domain \(td)" })
    }

    @Test func defaultsFollowIstioAgent() throws {
        let config = try resolve()
        #expect(config.trustDomain == "cluster.local")
        #expect(config.spiffeID == "spiffe://cluster.local/ns/default/sa/default")
        #expect(config.svidTTL == 3600)
        #expect(config.rotateRatio == 0.5)
        #expect(config.socketMode == 0o600)
        #expect(config.issuer == .local)
    }

    @Test func environmentFillsWhatFlagsLeaveOut() throws {
        let config = try resolve(env: [
            "TRUST_DOMAIN": "example.org", "POD_NAMESPACE": "shop", "SERVICE_ACCOUNT": "web", "SECRET_TTL": "24h",
            "SECRET_GRACE_PERIOD_RATIO": "0.25",
        ])
        #expect(config.spiffeID == "spiffe://example.org/ns/shop/sa/web")
        #expect(config.svidTTL == 86400)
        #expect(config.rotateRatio == 0.25)
    }

    @Test func flagsWinOverEnvironment() throws {
        let config = try resolve({ $0.trustDomain = "a.org" }, env: ["TRUST_DOMAIN": "b.org"])
        #expect(config.trustDomain == "a.org")
    }

    @Test func badValuesNameTheFlag() {
        #expect(throws: ConfigurationError.self) { try resolve { $0.svidTTL = "0s" } }
        let cases: [(String, (inout RawAgentOptions) -> Void)] = [
            ("--svid-ttl (SECRET_TTL)", { $0.svidTTL = "0" }),
            ("--svid-ttl (SECRET_TTL)", { $0.svidTTL = "soon" }),
            ("--rotate-ratio (SECRET_GRACE_PERIOD_RATIO)", { $0.rotateRatio = "1.5" }),
            ("--trust-domain (TRUST_DOMAIN)", { $0.trustDomain = "bad_td" }),
            ("--spiffe-id (SPIFFE_ID)", { $0.spiffeID = "spiffe://other.org/x" }),
            ("--socket-mode", { $0.socketMode = "rw" }),
            ("--log-format", { $0.logFormat = "xml" }),
            ("--issuer", { $0.issuer = "vault" }),
            ("--socket", { $0.socket = "/proc/nonexistent/agent.sock" }),
            ("--ca-key", { $0.caCert = "/x.pem" }),
        ]
        for (flag, edit) in cases {
            do {
                _ = try resolve(edit)
                Issue.record("expected an error for \(flag)")
            } catch {
                #expect(error.flag == flag)
                #expect(!error.description.contains("\n"))
            }
        }
    }
}
