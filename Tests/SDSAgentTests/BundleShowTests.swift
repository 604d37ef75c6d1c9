import Foundation
import JSONText
import JWT
import LocalCA
import PKI
import SPIFFE
import TestSupport
import Testing

@testable import SDSAgent

@Suite struct BundleShowTests {
    let now = FakeClock.defaultStart

    func temporaryDirectory() -> String {
        NSTemporaryDirectory() + "sds-bundle-show-" + UUID().uuidString
    }

    func configuration(stateDir: String, _ edit: (inout RawAgentOptions) -> Void = { _ in }) throws
        -> AgentConfiguration
    {
        try resolveConfiguration(
            { options in
                options.stateDir = stateDir
                options.trustDomain = "example.org"
                edit(&options)
            }, ownUID: geteuid())
    }

    /// What `sds-agent run` leaves in a fresh state dir with --issuer local: a root, then the JWT keys.
    func startAgent(in directory: String) throws -> (LocalCARoots, JWTSigningKeys) {
        let roots = try LocalCARoots.open(
            stateDirectory: directory, trustDomain: try TrustDomain("example.org"), now: now)
        let keys = try JWTSigningKeys.open(stateDirectory: directory, now: now, keyLifetime: 86_400, tokenLifetime: 300)
        return (roots, keys)
    }

    @Test func anEmptyStateDirIsRefusedAndNothingIsCreated() throws {
        let directory = temporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = try configuration(stateDir: directory)
        #expect(throws: BundleShow.Failure("no CA in \(directory) yet: start the agent once")) {
            try BundleShow.bundle(config)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        #expect(BundleShow.main(format: .spiffe, options: options(stateDir: directory), environment: [:]) == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }

    @Test func aMissingStateDirIsNotCreated() throws {
        let directory = temporaryDirectory()
        #expect(throws: BundleShow.Failure.self) { try BundleShow.bundle(try configuration(stateDir: directory)) }
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    func options(stateDir: String) -> RawAgentOptions {
        var options = RawAgentOptions()
        options.stateDir = stateDir
        options.trustDomain = "example.org"
        options.socket = "/tmp/sds-config-test/agent.sock"
        return options
    }

    @Test func theDocumentHoldsTheRootsAndTheJWTKeysTheAgentServes() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (roots, keys) = try startAgent(in: directory)
        let before = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        let config = try configuration(stateDir: directory)
        let bundle = try BundleShow.bundle(config)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == before)
        #expect(bundle.x509.certificates == [roots.current.signingCertificate])
        let served = try JSONValue.parse(try JWKS.document([keys.current]))
        guard case .array(let servedKeys) = served["keys"] ?? .null else {
            Issue.record("no keys in the JWKS")
            return
        }
        #expect(bundle.jwtKeys == servedKeys.map(\.rendered))
        // The default --svid-ttl (1 h) and --jwt-ttl (5 min): the hint is the shorter, 300 s.
        #expect(bundle.refreshHint == 300)
        let text = try BundleShow.render(bundle, format: .spiffe)
        #expect(text.hasSuffix("}\n") && !text.contains("PRIVATE"))
        let parsed = try SPIFFEBundle.parse(Array(text.utf8), trustDomain: try TrustDomain("example.org"))
        #expect(parsed == bundle)
        #expect(try BundleShow.render(bundle, format: .pem) == roots.current.signingCertificate.pem)
    }

    @Test func successorsAreInTheBundleAndEveryChangeRaisesTheSequence() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (roots, keys) = try startAgent(in: directory)
        let config = try configuration(stateDir: directory)
        var sequences = [try BundleShow.bundle(config).sequence ?? 0]

        let next = try roots.createSuccessor(now: now + 1000)
        let withRoot = try BundleShow.bundle(config)
        #expect(withRoot.x509.certificates == [roots.current.signingCertificate, next.signingCertificate])
        sequences.append(withRoot.sequence ?? 0)

        // The JWT keys' own schedule: a successor once its publication time comes.
        let timeline = keys.schedule.timeline(
            current: RootRotationSchedule.Root(createdAt: keys.current.createdAt, notAfter: keys.current.notAfter),
            successorCreatedAt: nil)
        _ = try keys.advance(now: timeline.publishAt)
        let withKey = try BundleShow.bundle(config)
        #expect(withKey.jwtKeys.count == 2)
        sequences.append(withKey.sequence ?? 0)

        try roots.retireCurrent()
        let retired = try BundleShow.bundle(config)
        #expect(retired.x509.certificates == [next.signingCertificate])
        sequences.append(retired.sequence ?? 0)

        _ = try keys.advance(now: timeline.retireAt)
        let keyRetired = try BundleShow.bundle(config)
        #expect(keyRetired.jwtKeys.count == 1)
        sequences.append(keyRetired.sequence ?? 0)
        #expect(sequences == sequences.sorted() && Set(sequences).count == sequences.count)
    }

    @Test func anOperatorCAsRootsAreReadWithoutItsKey() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ca = try TestCA()
        let intermediate = try ca.makeIntermediate()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let chainPath = directory + "/chain.pem"
        try Certificate.pem([intermediate.certificate, ca.root]).write(
            toFile: chainPath, atomically: true, encoding: .utf8)
        // --ca-key names a file that does not exist: the command never opens it.
        let config = try configuration(stateDir: directory + "/state") { options in
            options.caCert = chainPath
            options.caKey = directory + "/never-read.key"
        }
        #expect(throws: BundleShow.Failure("no JWT signing key in \(directory)/state yet: start the agent once")) {
            try BundleShow.bundle(config)
        }
        _ = try JWTSigningKeys.open(
            stateDirectory: directory + "/state", now: now, keyLifetime: 86_400, tokenLifetime: 300)
        let bundle = try BundleShow.bundle(config)
        #expect(bundle.x509.certificates == [ca.root])
        #expect(bundle.jwtKeys.count == 1)
    }

    @Test func aRootOfAnotherTrustDomainIsRefused() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try startAgent(in: directory)
        let config = try configuration(stateDir: directory) { options in
            options.trustDomain = "other.org"
        }
        #expect(throws: LocalCAError.self) { try BundleShow.bundle(config) }
    }

    @Test func theRelaysPublishNoBundleOfTheirOwn() {
        var options = options(stateDir: "/nonexistent")
        options.issuer = "workload-api"
        #expect(BundleShow.main(format: .spiffe, options: options, environment: [:]) == 2)
        #expect(BundleShow.upstreamSource(.istiod) != nil && BundleShow.upstreamSource(.local) == nil)
    }

    @Test func theCredentialFilesBundleIsReadBackWithoutItsJWTKeys() throws {
        let directory = temporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ca = try TestCA()
        try ca.root.pem.write(toFile: directory + "/roots.pem", atomically: true, encoding: .utf8)
        let config = try configuration(stateDir: directory) { options in
            options.issuer = "files"
            options.svidFile = directory + "/svid.pem"
            options.bundleFile = directory + "/roots.pem"
        }
        let bundle = try BundleShow.bundle(config)
        #expect(bundle.x509.certificates == [ca.root] && bundle.jwtKeys.isEmpty)
        #expect(bundle.sequence == 2 * ca.root.notBefore.secondsSinceEpoch)
    }

    @Test func refreshHintIsTheShortestLifetimeWithinOneToFiveMinutes() {
        #expect(BundleShow.refreshHint(svidTTL: 3600, jwtTTL: 300) == 300)
        #expect(BundleShow.refreshHint(svidTTL: 3600, jwtTTL: 120) == 120)
        #expect(BundleShow.refreshHint(svidTTL: 30, jwtTTL: nil) == 60)
        #expect(BundleShow.refreshHint(svidTTL: 86_400, jwtTTL: nil) == 300)
    }

    // MARK: Command line

    @Test func parsesBundleShow() throws {
        guard case .bundleShow(let format, let options) = try AgentCommandLine.parse(["bundle", "show"]) else {
            Issue.record("not bundle show")
            return
        }
        #expect(format == .spiffe && options == RawAgentOptions())
        guard
            case .bundleShow(.pem, let withFlags) = try AgentCommandLine.parse([
                "bundle", "show", "--format=pem", "--state-dir", "/s", "--trust-domain", "td.org",
            ])
        else {
            Issue.record("not bundle show --format pem")
            return
        }
        #expect(withFlags.stateDir == "/s" && withFlags.trustDomain == "td.org")
        #expect(try AgentCommandLine.parse(["bundle", "show", "--help"]) == .help)
    }

    @Test(arguments: [
        (["bundle"], "bundle: expected 'show', got nothing (sds-agent bundle show [--format spiffe|pem])"),
        (["bundle", "list"], "bundle: expected 'show', got 'list' (sds-agent bundle show [--format spiffe|pem])"),
        (["bundle", "show", "--format", "jwks"], "--format: 'jwks' is not one of: spiffe, pem"),
        (["bundle", "show", "--format"], "--format needs a value (<spiffe|pem>)"),
        (["bundle", "show", "--nope"], "unknown flag --nope (see sds-agent bundle show --help)"),
        (["run", "--format", "pem"], "unknown flag --format (see sds-agent run --help)"),
    ])
    func badArgumentsNameTheFlag(arguments: [String], message: String) {
        #expect(throws: AgentCommandLine.UsageError(message: message)) { try AgentCommandLine.parse(arguments) }
    }

    @Test func helpListsTheCommand() {
        #expect(AgentCommandLine.helpText.contains("sds-agent bundle show [--format spiffe|pem]"))
    }
}
