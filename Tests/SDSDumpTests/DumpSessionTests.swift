import GRPC
import PKI
import SDSDump
import Testing
import Wire

@Suite struct DumpSessionTests {
    let fixtures: Fixtures
    init() throws { fixtures = try Fixtures() }

    @Test func sotwOpensOneStreamPerNameWithTheNode() {
        var session = DumpSession(options: DumpOptions(nodeID: "dump-node", cluster: "dump-cluster"))
        let opened = session.start().compactMap(\.sotwRequest)
        #expect(opened.map(\.stream) == [0, 1])
        #expect(opened.map(\.request.resourceNames) == [["default"], ["ROOTCA"]])
        #expect(opened.allSatisfy { $0.request.typeURL == Secret.typeURL && $0.request.responseNonce.isEmpty })
        #expect(opened.allSatisfy { $0.request.node?.id == "dump-node" && $0.request.node?.cluster == "dump-cluster" })
    }

    @Test func sotwAcksEachResponseAndEmitsOnceEveryNameArrived() throws {
        var session = DumpSession(options: DumpOptions())
        _ = session.start()
        let first = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "v1", nonce: "n1"),
            at: Fixtures.now)
        let ack = try #require(first.compactMap(\.sotwRequest).first)
        #expect(ack.stream == 0 && ack.request.versionInfo == "v1" && ack.request.responseNonce == "n1")
        #expect(ack.request.errorDetail == nil && ack.request.resourceNames == ["default"])
        #expect(first.compactMap(\.update).isEmpty, "ROOTCA is still missing")
        #expect(session.missingNames == ["ROOTCA"])

        let second = session.receivedSotW(
            stream: 1, Fixtures.sotwResponse([fixtures.bundleSecret()], version: "v2", nonce: "n2"), at: Fixtures.now)
        let update = try #require(second.compactMap(\.update).first)
        #expect(update.secrets.map(\.name) == ["default", "ROOTCA"])
        #expect(update.reports[0].chainVerdict == .verified)
        #expect(update.reports[1].chainVerdict == nil)
        #expect(second.compactMap(\.outcome) == [.completed])
        #expect(session.outcome?.exitCode == 0)
    }

    @Test func nackCarriesErrorDetailAndTheLastAcceptedVersion() throws {
        var session = DumpSession(options: DumpOptions(names: ["default"], nack: true))
        _ = session.start()
        let actions = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "v1", nonce: "n1"),
            at: Fixtures.now)
        let nack = try #require(actions.compactMap(\.sotwRequest).first?.request)
        #expect(nack.responseNonce == "n1" && nack.versionInfo == "" && nack.errorDetail != nil)
        #expect(actions.compactMap(\.update).count == 1, "a NACKed secret is still shown")
        #expect(actions.compactMap(\.outcome) == [.completed])
    }

    @Test func unreadableSecretIsNackedAndNotCounted() throws {
        var session = DumpSession(options: DumpOptions(names: ["default"]))
        _ = session.start()
        let broken = Secret(
            name: "default",
            kind: .tlsCertificate(
                TLSCertificate(certificateChain: .inlineString("not a certificate"), privateKey: .inlineString("x"))))
        let actions = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([broken], version: "v1", nonce: "n1"), at: Fixtures.now)
        #expect(actions.compactMap(\.sotwRequest).first?.request.errorDetail != nil)
        #expect(actions.compactMap(\.update).isEmpty)
        #expect(session.timedOut().compactMap(\.outcome) == [.timedOut(missing: ["default"])])
    }

    @Test func deltaAcksWithTheNonceAndUsesTheResourceVersion() throws {
        var session = DumpSession(options: DumpOptions(names: ["default"], mode: .delta))
        let opened = try #require(session.start().compactMap(\.deltaRequest).first)
        #expect(opened.request.resourceNamesSubscribe == ["default"])
        let actions = session.receivedDelta(
            stream: 0, Fixtures.deltaResponse(try fixtures.certificateSecret(), version: "r1", nonce: "n7"),
            at: Fixtures.now)
        let ack = try #require(actions.compactMap(\.deltaRequest).first?.request)
        #expect(ack.responseNonce == "n7" && ack.errorDetail == nil)
        #expect(actions.compactMap(\.update).first?.secrets.map(\.version) == ["r1"])
    }

    @Test func deltaRemovedResourceDoesNotCountAsArrived() {
        var session = DumpSession(options: DumpOptions(names: ["never"], mode: .delta))
        _ = session.start()
        let actions = session.receivedDelta(
            stream: 0, DeltaDiscoveryResponse(typeURL: Secret.typeURL, removedResources: ["never"], nonce: "n1"),
            at: Fixtures.now)
        #expect(actions.compactMap(\.deltaRequest).count == 1, "still ACKed")
        #expect(actions.compactMap(\.update).isEmpty)
    }

    @Test func timeoutNamesEveryMissingName() throws {
        var session = DumpSession(options: DumpOptions(names: ["default", "never-served", "also-missing"]))
        _ = session.start()
        _ = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "v1", nonce: "n1"),
            at: Fixtures.now)
        let outcome = try #require(session.timedOut().compactMap(\.outcome).first)
        #expect(outcome == .timedOut(missing: ["never-served", "also-missing"]))
        #expect(outcome.exitCode == 4)
        #expect(outcome.message?.contains("never-served") == true)
    }

    @Test func watchEmitsEveryNameFirstThenOnlyPushesUntilCount() throws {
        var session = DumpSession(options: DumpOptions(watch: true, count: 2))
        _ = session.start()
        _ = session.receivedSotW(
            stream: 1, Fixtures.sotwResponse([fixtures.bundleSecret()], version: "b1", nonce: "1"), at: Fixtures.now)
        let first = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "c1", nonce: "2"),
            at: Fixtures.now)
        #expect(first.compactMap(\.update).first?.secrets.map(\.name) == ["default", "ROOTCA"])
        #expect(first.compactMap(\.outcome).isEmpty)
        #expect(session.timedOut().isEmpty, "the timeout only guards the first update")

        let push = session.receivedSotW(
            stream: 0, Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "c2", nonce: "3"),
            at: Fixtures.now + 60)
        let update = try #require(push.compactMap(\.update).first)
        #expect(update.secrets.map(\.name) == ["default"] && update.secrets[0].version == "c2")
        #expect(update.reports[0].chainVerdict == .verified, "verified against the bundle held from before")
        #expect(push.compactMap(\.outcome) == [.completed])
    }

    @Test func sigintEndsAWatchWithExit0() {
        var session = DumpSession(options: DumpOptions(watch: true))
        _ = session.start()
        #expect(session.interrupted().compactMap(\.outcome).first?.exitCode == 0)
    }

    @Test func errorStatusEndsTheRunWithExit5() throws {
        var session = DumpSession(options: DumpOptions())
        _ = session.start()
        let outcome = try #require(
            session.callFinished(stream: 0, status: GRPCStatus(.permissionDenied, "go away")).compactMap(\.outcome)
                .first)
        #expect(outcome.exitCode == 5)
        #expect(outcome.message == "server returned PERMISSION_DENIED (7): go away")
        #expect(session.callFinished(stream: 1, status: GRPCStatus(.ok)).isEmpty, "nothing after the end")
    }

    @Test func fetchSendsEveryNameInOneCallAndReportsMissingNames() throws {
        var session = DumpSession(options: DumpOptions(mode: .fetch))
        guard case .fetch(let request)? = session.start().first else {
            Issue.record("no fetch action")
            return
        }
        #expect(request.resourceNames == ["default", "ROOTCA"])
        let actions = session.receivedFetch(
            Fixtures.sotwResponse([try fixtures.certificateSecret()], version: "v", nonce: ""), at: Fixtures.now)
        #expect(actions.compactMap(\.update).isEmpty)
        let outcome = session.callFinished(stream: nil, status: .ok).compactMap(\.outcome).first
        #expect(outcome == .notReturned(missing: ["ROOTCA"]))
    }

    @Test func connectionLostIsExit3NamingThePath() {
        var session = DumpSession(options: DumpOptions())
        _ = session.start()
        let outcome = session.connectionLost(path: "/run/x.sock", reason: "reset").compactMap(\.outcome).first
        #expect(outcome?.exitCode == 3 && outcome?.message?.contains("/run/x.sock") == true)
    }
}
