import PKI
import Testing

@testable import SDSAgent
@testable import Servers

@Suite struct DurationTextTests {
    @Test(arguments: [
        ("1h", 3600.0), ("30m", 1800), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5), ("24h0m0s", 86400), ("45", 45),
    ])
    func parsesGoStyleDurations(text: String, seconds: Double) throws {
        #expect(try DurationText.seconds(text) == seconds)
    }

    // The last ones cross `maxSeconds` (1e23 s once trapped in `format`; `inf` was accepted as a TTL).
    @Test(arguments: [
        "", "h", "1x", "1h30", "-", "1.2.3s", "inf", "infinity", "nan", "-5", "-5s", "0x10", "1e9",
        String(repeating: "9", count: 400) + "h", "1e23", "31536000001", "8760001000h",
    ])
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

/// Resolves options as `sds-agent run` would, with a fixed own UID.
func resolveConfiguration(
    _ edit: (inout RawAgentOptions) -> Void = { _ in }, env: [String: String] = [:], ownUID: UInt32 = 4242
) throws(ConfigurationError) -> AgentConfiguration {
    var options = RawAgentOptions()
    options.socket = "/tmp/sds-config-test/agent.sock"
    edit(&options)
    return try AgentConfiguration.resolve(options, environment: env, ownUID: ownUID)
}

@Suite struct AgentConfigurationTests {
    private func resolve(_ edit: (inout RawAgentOptions) -> Void = { _ in }, env: [String: String] = [:])
        throws(ConfigurationError) -> AgentConfiguration
    {
        try resolveConfiguration(edit, env: env)
    }

    @Test func defaultsFollowIstioAgent() throws {
        let config = try resolve()
        #expect(config.trustDomain.name == "cluster.local")
        #expect(config.spiffeID.uri == "spiffe://cluster.local/ns/default/sa/default")
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
        #expect(config.spiffeID.uri == "spiffe://example.org/ns/shop/sa/web")
        #expect(config.svidTTL == 86400)
        #expect(config.rotateRatio == 0.25)
    }

    @Test func outboundBoundsHaveDefaultsAndAcceptTheirLimits() throws {
        let defaults = try resolve { _ in }
        #expect(defaults.writeStallTimeout == OutboundLimits.defaultWriteStallTimeout)
        #expect(defaults.maxQueuedBytes == OutboundLimits.defaultMaxQueuedBytes)
        let edge = try resolve {
            $0.drainTimeout = "10m"
            $0.writeStallTimeout = "500ms"
            $0.maxQueuedBytes = "65536"
        }
        #expect(edge.drainTimeout == 600)
        #expect(edge.writeStallTimeout == 0.5)
        #expect(edge.maxQueuedBytes == 65536)
    }

    @Test func flagsWinOverEnvironment() throws {
        let config = try resolve({ $0.trustDomain = "a.org" }, env: ["TRUST_DOMAIN": "b.org"])
        #expect(config.trustDomain.name == "a.org")
    }

    @Test func badValuesNameTheFlag() {
        #expect(throws: ConfigurationError.self) { try resolve { $0.svidTTL = "0s" } }
        let cases: [(String, (inout RawAgentOptions) -> Void)] = [
            ("--svid-ttl (SECRET_TTL)", { $0.svidTTL = "0" }),
            ("--svid-ttl (SECRET_TTL)", { $0.svidTTL = "soon" }),
            ("--rotate-ratio (SECRET_GRACE_PERIOD_RATIO)", { $0.rotateRatio = "1.5" }),
            ("--trust-domain (TRUST_DOMAIN)", { $0.trustDomain = "Bad_TD" }),
            ("--spiffe-id (SPIFFE_ID)", { $0.spiffeID = "spiffe://other.org/x" }),
            ("--socket-mode", { $0.socketMode = "rw" }),
            ("--log-format", { $0.logFormat = "xml" }),
            ("--issuer", { $0.issuer = "vault" }),
            ("--socket", { $0.socket = "" }),
            ("--ca-key", { $0.caCert = "/x.pem" }),
            ("--drain-timeout", { $0.drainTimeout = "inf" }),
            ("--drain-timeout", { $0.drainTimeout = "601s" }),
            ("--drain-timeout", { $0.drainTimeout = "1e300" }),
            ("--drain-timeout", { $0.drainTimeout = "nan" }),
            ("--write-stall-timeout", { $0.writeStallTimeout = "inf" }),
            ("--write-stall-timeout", { $0.writeStallTimeout = "11m" }),
            ("--write-stall-timeout", { $0.writeStallTimeout = "99ms" }),
            ("--max-queued-bytes", { $0.maxQueuedBytes = "1" }),
            ("--max-queued-bytes", { $0.maxQueuedBytes = "2147483648" }),
            ("--max-queued-bytes", { $0.maxQueuedBytes = "16MiB" }),
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

    /// The root must hold its rotation (RootRotationSchedule.minimumRootToSVIDLifetimeRatio = 6); the integration
    /// test's short values pass, one second less does not; an operator CA is not rotated, so no ratio applies.
    @Test func caTTLMustHoldTheRootRotation() throws {
        let short = try resolve {
            $0.caTTL = "2m"
            $0.svidTTL = "20s"
        }
        #expect(short.caTTL == 120 && short.svidTTL == 20)
        do {
            _ = try resolve {
                $0.caTTL = "119s"
                $0.svidTTL = "20s"
            }
            Issue.record("a CA lifetime of 119 s cannot hold the overlap of 20 s SVIDs")
        } catch {
            #expect(error.flag == "--ca-ttl")
            #expect(error.problem.contains("at least 6 × --svid-ttl (2m)"))
        }
        let operatorCA = try resolve {
            $0.caTTL = "1m"
            $0.svidTTL = "20s"
            $0.caCert = "/ca.pem"
            $0.caKey = "/ca.key"
        }
        #expect(operatorCA.caTTL == 60)
    }

    @Test func svidTTLHasAFloorOf10s() throws {
        #expect(try resolve { $0.svidTTL = "10s" }.svidTTL == 10)
        #expect(throws: ConfigurationError.self) { try resolve { $0.svidTTL = "9s" } }
    }

    /// Every duration flag is finite and within its range; each bad value is one line naming the flag.
    @Test(arguments: [
        ("--svid-ttl (SECRET_TTL)", "inf"), ("--svid-ttl (SECRET_TTL)", "nan"), ("--svid-ttl (SECRET_TTL)", "-1h"),
        ("--svid-ttl (SECRET_TTL)", "9s"), ("--svid-ttl (SECRET_TTL)", "2161h"),
        ("--svid-ttl (SECRET_TTL)", "999999999999999999999999h"),
        ("--ca-ttl", "inf"), ("--ca-ttl", "0"), ("--ca-ttl", "87601h"),
        ("--drain-timeout", "inf"), ("--drain-timeout", "0"), ("--drain-timeout", "-1s"), ("--drain-timeout", "11m"),
        ("--drain-timeout", "NaN"),
        ("--jwt-ttl", "9s"), ("--jwt-ttl", "25h"), ("--jwt-ttl", "inf"), ("--jwt-ttl", "5 minutes"),
    ])
    func durationFlagsAreFiniteAndBounded(flag: String, value: String) {
        do {
            _ = try resolve { options in
                switch flag {
                case "--ca-ttl": options.caTTL = value
                case "--drain-timeout": options.drainTimeout = value
                case "--jwt-ttl": options.jwtTTL = value
                default: options.svidTTL = value
                }
            }
            Issue.record("\(flag) \(value) was accepted")
        } catch {
            #expect(error.flag == flag)
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func jwtTTLDefaultsToFiveMinutesAndTakesItsBounds() throws {
        #expect(try resolve { _ in }.jwtTTL == 300)
        #expect(try resolve { $0.jwtTTL = "10s" }.jwtTTL == 10)
        #expect(try resolve { $0.jwtTTL = "24h" }.jwtTTL == 86400)
    }

    @Test func durationFlagsAtTheirBoundsAreAccepted() throws {
        let config = try resolve {
            $0.svidTTL = "2160h"
            $0.caTTL = "87600h"
            $0.drainTimeout = "10m"
        }
        #expect(config.svidTTL == 90 * 86400 && config.caTTL == 3650 * 86400 && config.drainTimeout == 600)
        #expect(try resolve { $0.svidTTL = "1m" }.svidTTL == 60)
    }

    @Test func inboundLimitsDefaultAndFlags() throws {
        let defaults = try resolve()
        #expect(defaults.limits.maxRequestBytes == 1 << 20)
        #expect(defaults.limits.maxConnections == 256)
        let set = try resolve {
            $0.maxRequestBytes = "256Ki"
            $0.maxConnections = "16"
        }
        #expect(set.limits.maxRequestBytes == 256 << 10 && set.limits.maxConnections == 16)
        let fromEnvironment = try resolve(env: ["SDS_MAX_REQUEST_BYTES": "2Mi", "SDS_MAX_CONNECTIONS": "1000"])
        #expect(fromEnvironment.limits.maxRequestBytes == 2 << 20 && fromEnvironment.limits.maxConnections == 1000)
    }

    @Test(arguments: [
        ("--max-request-bytes", "0"), ("--max-request-bytes", "65535"), ("--max-request-bytes", "65Mi"),
        ("--max-request-bytes", "lots"), ("--max-request-bytes", "-1"),
        ("--max-request-bytes", "9223372036854775807Mi"),
        ("--max-connections", "0"), ("--max-connections", "65537"), ("--max-connections", "1.5"),
    ])
    func inboundLimitFlagsOutOfRangeNameTheFlag(flag: String, value: String) {
        do {
            _ = try resolve { options in
                if flag == "--max-connections" {
                    options.maxConnections = value
                } else {
                    options.maxRequestBytes = value
                }
            }
            Issue.record("\(flag) \(value) was accepted")
        } catch {
            #expect(error.flag == flag)
        }
    }
}

@Suite struct RefusalLogTests {
    @Test func theFirstRefusalOfACauseIsLoggedThenOneLinePerIntervalWithTheCount() {
        var log = RefusalLog(interval: 60)
        #expect(log.record("connection limit", now: 100) == RefusalLog.Entry(cause: "connection limit", suppressed: 0))
        for second in 1...500 { #expect(log.record("connection limit", now: 100 + Double(second) * 0.1) == nil) }
        // Another cause is not held back by the first.
        #expect(log.record("accept paused", now: 120) == RefusalLog.Entry(cause: "accept paused", suppressed: 0))
        #expect(
            log.record("connection limit", now: 160) == RefusalLog.Entry(cause: "connection limit", suppressed: 500))
        #expect(log.record("connection limit", now: 161) == nil)
    }
}

@Suite struct IstiodConfigurationTests {
    private func resolve(_ edit: (inout RawAgentOptions) -> Void = { _ in }, env: [String: String] = [:])
        throws(ConfigurationError) -> AgentConfiguration
    {
        var options = RawAgentOptions()
        options.socket = "/tmp/sds-config-test/agent.sock"
        edit(&options)
        return try AgentConfiguration.resolve(options, environment: env)
    }

    @Test func istioAgentDefaults() throws {
        let config = try resolve { $0.issuer = "istiod" }
        #expect(config.issuer == .istiod)
        #expect(config.istiod.address.description == "istiod.istio-system.svc:15012")
        #expect(config.istiod.serverName == "istiod.istio-system.svc")
        #expect(config.istiod.rootCertPath == "/var/run/secrets/istio/root-cert.pem")
        #expect(config.istiod.tokenPath == "/var/run/secrets/tokens/istio-token")
        #expect(config.istiod.clusterID == "Kubernetes")
        #expect(config.istiod.keyAlgorithm == .ecdsaP256)
        #expect(config.svidTTL == 86_400, "istio-agent's SECRET_TTL default")
        #expect(try resolve().svidTTL == 3600, "the local CA's default is unchanged")
    }

    @Test func anInjectedIstioProxyEnvironmentChoosesIstiod() throws {
        let env = [
            "PILOT_CERT_PROVIDER": "istiod", "CA_ADDR": "istiod.istio-system.svc:15012", "ISTIOD_SAN": "istiod.example",
            "CA_ROOT_CA": "SYSTEM", "ISTIO_META_CLUSTER_ID": "east", "CA_HEADER_X-TENANT": "blue",
        ]
        let config = try resolve(env: env)
        #expect(config.issuer == .istiod)
        #expect(config.istiod.serverName == "istiod.example")
        #expect(config.istiod.rootCertPath == nil, "SYSTEM: the OS trust store")
        #expect(config.istiod.clusterID == "east")
        #expect(config.istiod.headers == [.init(name: "x-tenant", value: "blue")])
        // Without CA_ADDR the local CA stays the default.
        #expect(try resolve(env: ["PILOT_CERT_PROVIDER": "istiod"]).issuer == .local)
        // An explicit choice wins.
        #expect(try resolve({ $0.issuer = "local" }, env: env).issuer == .local)
    }

    @Test(arguments: [
        ([:], KeyAlgorithm.ecdsaP256),
        (["ECC_SIGNATURE_ALGORITHM": "ECDSA"], .ecdsaP256),
        (["ECC_SIGNATURE_ALGORITHM": "ECDSA", "ECC_CURVE": "P384"], .ecdsaP384),
        (["WORKLOAD_RSA_KEY_SIZE": "2048"], .rsa(bits: 2048)),
        (["WORKLOAD_RSA_KEY_SIZE": "4096"], .rsa(bits: 4096)),
        (["SDS_KEY_TYPE": "rsa-3072", "ECC_SIGNATURE_ALGORITHM": "ECDSA"], .rsa(bits: 3072)),
    ])
    func keyTypeHonoursIstioAgentsVariables(env: [String: String], expected: KeyAlgorithm) throws {
        #expect(try resolve({ $0.issuer = "istiod" }, env: env).istiod.keyAlgorithm == expected)
    }

    @Test func theFlagWinsOverTheEnvironment() throws {
        let config = try resolve({ $0.keyType = "ecdsa-p384" }, env: ["WORKLOAD_RSA_KEY_SIZE": "2048"])
        #expect(config.istiod.keyAlgorithm == .ecdsaP384)
    }

    @Test(arguments: [
        ("--key-type", "keyType=rsa-1024", [String: String]()),
        ("WORKLOAD_RSA_KEY_SIZE", "", ["WORKLOAD_RSA_KEY_SIZE": "1024"]),
        ("ECC_CURVE", "", ["ECC_SIGNATURE_ALGORITHM": "ECDSA", "ECC_CURVE": "P521"]),
        ("--ca-addr (CA_ADDR)", "caAddr=istiod", [:]),
        ("--ca-root-cert (CA_ROOT_CA)", "caRootCert=root.pem", [:]),
        ("--token-file", "tokenFile=token", [:]),
        ("CA_HEADER_AUTHORIZATION", "", ["CA_HEADER_AUTHORIZATION": "Bearer x"]),
    ])
    func badValuesNameTheirFlag(flag: String, option: String, env: [String: String]) {
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        let error = #expect(throws: ConfigurationError.self) {
            try resolve(
                { options in
                    guard parts.count == 2 else { return }
                    switch parts[0] {
                    case "keyType": options.keyType = parts[1]
                    case "caAddr": options.caAddr = parts[1]
                    case "caRootCert": options.caRootCert = parts[1]
                    default: options.tokenFile = parts[1]
                    }
                }, env: env)
        }
        #expect(error?.flag == flag)
    }
}
