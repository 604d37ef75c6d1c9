import GRPC
import Issuance
import IstioCA
import PKI
import SPIFFE
import TestSupport
import Testing

typealias Machine = IstioCAClientStateMachine

let workloadID = "spiffe://example.org/ns/demo/sa/web"

/// A compact view of actions, for equality checks.
enum Step: Equatable {
    case generate(round: Int)
    case send(round: Int, try: Int)
    case abandon
    case timer(Double)
    case cancelTimer
    case deliver(serial: String)
    case report(IssuerError.Kind)

    init(_ action: Machine.Action) {
        switch action {
        case .generateKey(let round, _, _): self = .generate(round: round)
        case .sendCSR(let round, let attempt, _): self = .send(round: round, try: attempt)
        case .abandonCall: self = .abandon
        case .scheduleTimer(let delay): self = .timer((delay * 1000).rounded() / 1000)
        case .cancelTimer: self = .cancelTimer
        case .deliver(let update): self = .deliver(serial: update.svid.leaf.serialHex)
        case .report(let error): self = .report(error.kind)
        }
    }
}

func steps(_ actions: [Machine.Action]) -> [Step] { actions.map(Step.init) }

func reports(_ actions: [Machine.Action]) -> [IssuerError] {
    actions.compactMap { if case .report(let error) = $0 { error } else { nil } }
}

/// istiod's side: a root, an intermediate, and leaves for whatever key and ID a test names.
struct FakeMeshCA {
    let ca: TestCA
    let intermediate: (certificate: Certificate, key: PrivateKey)

    init() throws {
        ca = try TestCA()
        intermediate = try ca.makeIntermediate()
    }

    /// leaf → intermediate → root, as istiod answers, PEM per element.
    func chain(for key: PrivateKey, id: String = workloadID, lifetime: Int64 = 3600) throws -> [String] {
        let leaf = try CertificateBuilder(
            subject: DistinguishedName([]), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: ca.now - 60,
            notAfter: ca.now + lifetime, keyUsage: [.digitalSignature, .keyEncipherment],
            extendedKeyUsage: [.serverAuth, .clientAuth], uriSANs: [id]
        ).sign(issuer: intermediate.certificate, issuerKey: intermediate.key)
        return [leaf.pem, intermediate.certificate.pem, ca.root.pem]
    }
}

/// A machine that has started, made its key for round 1 and sent try 1.
func requestingMachine(key: PrivateKey) throws -> Machine {
    var machine = Machine(spiffeID: try SPIFFEID(parsing: workloadID), algorithm: .ecdsaP256, upstream: "istiod:15012")
    _ = machine.start()
    _ = machine.timerFired()
    _ = machine.keyReady(round: 1, key: key, csrPEM: "CSR")
    return machine
}

@Suite struct IstioCAStateMachineTests {
    @Test func startMakesAKeyOnTheNextTurnThenSendsTheCSR() throws {
        var machine = Machine(spiffeID: try SPIFFEID(parsing: workloadID), algorithm: .rsa(bits: 2048), upstream: "x")
        #expect(steps(machine.start()) == [.timer(0)])
        #expect(steps(machine.start()).isEmpty, "an issuer is started at most once")
        let generate = machine.timerFired()
        guard case .generateKey(1, let algorithm, let id) = generate.first else {
            Issue.record("expected generateKey, got \(generate)")
            return
        }
        #expect(algorithm == .rsa(bits: 2048))
        #expect(id.uri == workloadID)
        #expect(
            steps(machine.keyReady(round: 1, key: try PrivateKey.generate(), csrPEM: "CSR")) == [
                .send(round: 1, try: 1)
            ])
        #expect(machine.state == .requesting(round: 1, try: 1))
    }

    @Test func retryableFailuresFollowIstioAgentsScheduleThenEndTheRound() throws {
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        var pauses: [Double] = []
        for attempt in 1...4 {
            let actions = machine.callFailed(
                round: 1, try: attempt, status: GRPCStatus(.unavailable, "connection refused"),
                now: FakeClock.defaultStart,
                randomUnit: 0.5)
            #expect(reports(actions).isEmpty, "tries within a round are not reported")
            for case .scheduleTimer(let delay) in actions { pauses.append(delay) }
            #expect(steps(machine.timerFired()) == [.send(round: 1, try: attempt + 1)])
        }
        #expect(pauses == [0.1, 0.2, 0.4, 0.8])
        let last = machine.callFailed(
            round: 1, try: 5, status: GRPCStatus(.unavailable, "connection refused"), now: FakeClock.defaultStart,
            randomUnit: 0.5)
        #expect(steps(last) == [.abandon, .timer(1), .report(.upstreamUnavailable)])
        #expect(reports(last).first?.message.contains("5 tries") == true)
        #expect(machine.state == .waiting)
        // The next round makes a new key.
        #expect(steps(machine.timerFired()) == [.generate(round: 2)])
    }

    @Test(arguments: [
        GRPCStatus.Code.cancelled, .deadlineExceeded, .resourceExhausted, .aborted, .internal, .unavailable,
    ])
    func retryableCodes(code: GRPCStatus.Code) throws {
        var machine = try requestingMachine(key: try PrivateKey.generate())
        let actions = machine.callFailed(
            round: 1, try: 1, status: GRPCStatus(code), now: FakeClock.defaultStart, randomUnit: 0)
        #expect(steps(actions) == [.abandon, .timer(0.09)], "100 ms - 10 %")
    }

    @Test func jitterIsTenPercentEitherWay() {
        #expect(Machine.retryDelay(afterTry: 1, randomUnit: 0) == 0.1 * 0.9)
        #expect(Machine.retryDelay(afterTry: 1, randomUnit: 1) == 0.1 * 1.1)
        #expect(Machine.retryDelay(afterTry: 3, randomUnit: 0.5) == 0.4)
    }

    @Test func unauthenticatedIsNotRetriedWithinTheRoundAndIsReportedOncePerOutage() throws {
        var machine = try requestingMachine(key: try PrivateKey.generate())
        var roundDelays: [Double] = []
        var reported: [IssuerError] = []
        for round in 1...5 {
            if round > 1 {
                _ = machine.timerFired()
                _ = machine.keyReady(round: round, key: try PrivateKey.generate(), csrPEM: "CSR")
            }
            let actions = machine.callFailed(
                round: round, try: 1, status: GRPCStatus(.unauthenticated, "request authenticate failure"),
                now: FakeClock.defaultStart, randomUnit: 0.5)
            #expect(Step(actions[0]) == .abandon)
            for case .scheduleTimer(let delay) in actions { roundDelays.append(delay) }
            reported += reports(actions)
        }
        #expect(roundDelays == [1, 2, 4, 8, 16], "the rotation back-off between rounds")
        #expect(reported.count == 1)
        #expect(reported.first?.kind == .permissionDenied)
        #expect(reported.first?.message.contains("request authenticate failure") == true)
    }

    @Test func aValidChainIsDeliveredAndTheNextRoundWaitsForTheGraceRatioFromReceipt() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        let secondRoot = try TestCA().root
        let actions = machine.responded(
            round: 1, try: 1, chainPEMs: try mesh.chain(for: key, lifetime: 3600),
            fileRoots: [mesh.ca.root, secondRoot], now: mesh.ca.now, randomUnit: 0.5)
        guard case .deliver(let update) = actions.first else {
            Issue.record("expected a delivery, got \(actions)")
            return
        }
        #expect(update.svid.spiffeID.uri == workloadID)
        #expect(update.svid.chain.count == 2, "leaf and intermediate; the root goes to the bundle")
        // ROOTCA: the chain's root, then the file's other roots (Istio root rotation), each once.
        #expect(update.bundles.count == 1)
        #expect(update.bundles[0].certificates == [mesh.ca.root, secondRoot])
        // Half of the lifetime counted from now (the leaf's notBefore is backdated a minute).
        #expect(steps(Array(actions.dropFirst())) == [.timer(1800)])
        #expect(machine.state == .waiting)
        #expect(machine.lastDelivered?.svid.leaf == update.svid.leaf)
    }

    @Test func chainsThatAreNotOursAreRefusedAndNothingIsDelivered() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        let cases: [(String, [String])] = [
            ("another SPIFFE ID", try mesh.chain(for: key, id: "spiffe://example.org/ns/demo/sa/other")),
            ("another public key", try mesh.chain(for: try PrivateKey.generate())),
            ("no root", Array(try mesh.chain(for: key).prefix(1))),
            ("a root that did not sign it", try mesh.chain(for: key).dropLast() + [try TestCA().root.pem]),
            ("garbage", ["not a certificate", mesh.ca.root.pem]),
        ]
        for (name, chain) in cases {
            var machine = try requestingMachine(key: key)
            let actions = machine.responded(
                round: 1, try: 1, chainPEMs: chain, fileRoots: [], now: mesh.ca.now, randomUnit: 0.5)
            #expect(steps(actions) == [.timer(1), .report(.issuanceFailed)], "\(name)")
            #expect(machine.lastDelivered == nil, "\(name)")
        }
    }

    @Test func tooManyCertificatesAreRefusedBeforeParsing() throws {
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        let chain = [String](repeating: "x", count: IstioChain.maxCertificates + 1)
        let actions = machine.responded(
            round: 1, try: 1, chainPEMs: chain, fileRoots: [], now: FakeClock.defaultStart, randomUnit: 0.5)
        #expect(reports(actions).first?.message.contains("at most \(IstioChain.maxCertificates)") == true)
    }

    /// The issuer validates istiod's chain off the loop: the machine hands out the awaited key, takes the validated
    /// result as `responded` would, and ignores a result that comes back after the try was given up.
    @Test func aChainValidatedOffTheLoopIsDeliveredOnlyForTheAwaitedTry() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        #expect(machine.awaitedKey(round: 1, try: 2) == nil)
        let awaited = try #require(machine.awaitedKey(round: 1, try: 1))
        let update = try IstioChain.validate(
            chainPEMs: try mesh.chain(for: awaited), key: awaited, expectedID: machine.spiffeID,
            fileRoots: [mesh.ca.root], now: mesh.ca.now)
        let actions = machine.validated(round: 1, try: 1, .success(update), now: mesh.ca.now, randomUnit: 0.5)
        #expect(steps(actions) == [.deliver(serial: update.svid.leaf.serialHex), .timer(1800)])
        #expect(machine.awaitedKey(round: 1, try: 1) == nil, "nothing awaited once delivered")

        var stale = try requestingMachine(key: key)
        _ = stale.callFailed(round: 1, try: 1, status: GRPCStatus(.deadlineExceeded), now: mesh.ca.now, randomUnit: 0.5)
        #expect(stale.validated(round: 1, try: 1, .success(update), now: mesh.ca.now, randomUnit: 0.5).isEmpty)
        #expect(stale.lastDelivered == nil)

        var refused = try requestingMachine(key: key)
        let failure = IssuerError(kind: .issuanceFailed, message: "unusable")
        let refusal = refused.validated(round: 1, try: 1, .failure(failure), now: mesh.ca.now, randomUnit: 0.5)
        #expect(steps(refusal) == [.timer(1), .report(.issuanceFailed)])
    }

    @Test func lateEventsOfAnAbandonedTryOrRoundAreIgnored() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        _ = machine.callFailed(round: 1, try: 1, status: GRPCStatus(.unavailable), now: mesh.ca.now, randomUnit: 0.5)
        // Pausing: a late answer of try 1 changes nothing.
        let late = machine.responded(
            round: 1, try: 1, chainPEMs: try mesh.chain(for: key), fileRoots: [], now: mesh.ca.now, randomUnit: 0.5)
        #expect(late.isEmpty)
        #expect(machine.keyReady(round: 7, key: key, csrPEM: "CSR").isEmpty)
        #expect(steps(machine.timerFired()) == [.send(round: 1, try: 2)])
        #expect(
            machine.callFailed(round: 1, try: 1, status: GRPCStatus(.unavailable), now: mesh.ca.now, randomUnit: 0)
                .isEmpty)
    }

    @Test func aFailedRoundWhileServingRetriesBeforeTheServedCertificateExpires() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        _ = machine.responded(
            round: 1, try: 1, chainPEMs: try mesh.chain(for: key, lifetime: 20), fileRoots: [], now: mesh.ca.now,
            randomUnit: 0.5)
        var delays: [Double] = []
        // Rounds keep failing near expiry: each back-off is at most half of what is left, and at least 1 s.
        for round in 2...8 {
            _ = machine.timerFired()
            _ = machine.keyReady(round: round, key: try PrivateKey.generate(), csrPEM: "CSR")
            let actions = machine.callFailed(
                round: round, try: 1, status: GRPCStatus(.permissionDenied), now: mesh.ca.now + 14, randomUnit: 0.5)
            for case .scheduleTimer(let delay) in actions { delays.append(delay) }
        }
        #expect(delays == [1, 2, 3, 3, 3, 3, 3])
    }

    @Test func aLocalProblemEndsTheRoundWithItsOwnMessage() throws {
        var machine = try requestingMachine(key: try PrivateKey.generate())
        let error = IssuerError(kind: .issuanceFailed, message: "cannot read the token: open /t: No such file")
        let actions = machine.cannotSend(round: 1, try: 1, error: error, now: FakeClock.defaultStart, randomUnit: 0.5)
        #expect(steps(actions) == [.abandon, .timer(1), .report(.issuanceFailed)])
        #expect(reports(actions).first?.message == error.message)
        #expect(machine.state == .waiting)
    }

    @Test func rotateNowStartsARoundOnlyWhenNoneIsUnderWay() throws {
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        #expect(machine.rotateNow().isEmpty)
        _ = machine.callFailed(
            round: 1, try: 1, status: GRPCStatus(.unauthenticated), now: FakeClock.defaultStart, randomUnit: 0.5)
        #expect(steps(machine.rotateNow()) == [.timer(0)])
    }

    @Test func stopAbandonsTheCallAndIgnoresEverythingAfter() throws {
        let mesh = try FakeMeshCA()
        let key = try PrivateKey.generate()
        var machine = try requestingMachine(key: key)
        #expect(steps(machine.stop()) == [.cancelTimer, .abandon])
        #expect(machine.timerFired().isEmpty)
        #expect(
            machine.responded(
                round: 1, try: 1, chainPEMs: try mesh.chain(for: key), fileRoots: [], now: mesh.ca.now, randomUnit: 0.5
            ).isEmpty)
        #expect(machine.rotateNow().isEmpty)
    }
}
