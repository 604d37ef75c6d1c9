import GRPC
import Issuance
import PKI
import SPIFFE
import TestSupport
import Testing
import Wire
import WorkloadAPIClient

typealias Machine = WorkloadAPIClientStateMachine

/// A machine that has started and dialed attempt 1.
func connectedMachine(wanted: String? = Upstream.workload) throws -> Machine {
    var machine = Machine(upstream: "/run/spire.sock", wantedID: try wanted.map { try SPIFFEID(parsing: $0) })
    _ = machine.start()
    _ = machine.retryTimerFired()
    return machine
}

@Suite struct ConnectionLifecycleTests {
    @Test func startOnlySchedulesTheFirstConnectForTheNextTurn() throws {
        var machine = Machine(upstream: "/run/spire.sock", wantedID: nil)
        #expect(steps(machine.start()) == [.retry(0)])
        #expect(machine.state == .waiting)
        #expect(steps(machine.start()).isEmpty, "an issuer is started at most once")
        #expect(steps(machine.retryTimerFired()) == [.connect(1)])
        #expect(machine.state == .connecting(attempt: 1))
    }

    @Test func dialFailuresBackOffExponentiallyAndAreReportedOnce() throws {
        var machine = try connectedMachine()
        var delays: [Double] = []
        var reported: [IssuerError] = []
        for attempt in 1...12 {
            let actions = machine.connectFailed(
                attempt: attempt, reason: "connect: Connection refused", randomUnit: 0.5)
            reported += reports(actions)
            for case .scheduleRetry(let delay) in actions { delays.append(delay) }
            #expect(steps(machine.retryTimerFired()) == [.connect(attempt + 1)])
        }
        #expect(reported.count == 1, "one report per outage, not per retry: \(reported)")
        #expect(reported.first?.kind == .upstreamUnavailable)
        #expect(reported.first?.message.contains("/run/spire.sock") == true)
        #expect(reported.first?.retryAfter == 0.1)
        #expect(Array(delays.prefix(4)) == [0.1, 0.2, 0.4, 0.8])
        #expect(delays.last == 30, "capped at 30 s")
    }

    @Test func backoffJitterStaysWithinTwentyPercent() throws {
        var low = try connectedMachine()
        var high = try connectedMachine()
        #expect(steps(low.connectFailed(attempt: 1, reason: "x", randomUnit: 0)).contains(.retry(0.08)))
        #expect(steps(high.connectFailed(attempt: 1, reason: "x", randomUnit: 0.999_999)).contains(.retry(0.12)))
    }

    @Test func aDifferentFailureIsAStateChangeAndIsReported() throws {
        var machine = try connectedMachine()
        #expect(reports(machine.connectFailed(attempt: 1, reason: "No such file", randomUnit: 0.5)).count == 1)
        _ = machine.retryTimerFired()
        #expect(reports(machine.connectFailed(attempt: 2, reason: "No such file", randomUnit: 0.5)).isEmpty)
        _ = machine.retryTimerFired()
        #expect(reports(machine.connectFailed(attempt: 3, reason: "Connection refused", randomUnit: 0.5)).count == 1)
    }

    @Test func aHealthyStreamThatEndsIsReopenedAtOnceWithoutAReport() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        _ = machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now)
        #expect(machine.state == .streaming(attempt: 1))
        let ended = machine.streamEnded(
            attempt: 1, stream: .x509SVID, status: GRPCStatus(.unavailable, "connection lost"), randomUnit: 0.5)
        #expect(steps(ended) == [.close, .retry(0.1)])
        #expect(machine.state == .waiting)
        #expect(steps(machine.retryTimerFired()) == [.connect(2)])
    }

    @Test func anOutageAfterStreamingIsReportedOnceThenRecovers() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let first = upstream.response([try upstream.svid()])
        #expect(updates(machine.received(first, attempt: 1, now: upstream.now)).count == 1)
        _ = machine.connectionLost(attempt: 1, reason: "peer closed", randomUnit: 0.5)
        var reported: [IssuerError] = []
        for attempt in 2...6 {
            _ = machine.retryTimerFired()
            reported += reports(machine.connectFailed(attempt: attempt, reason: "Connection refused", randomUnit: 0.5))
        }
        #expect(reported.map(\.kind) == [.upstreamUnavailable])
        // The upstream comes back with the same SVID: nothing new to deliver, but the client is healthy again ...
        _ = machine.retryTimerFired()
        #expect(updates(machine.received(first, attempt: 7, now: upstream.now)).isEmpty)
        #expect(machine.state == .streaming(attempt: 7))
        #expect(machine.backoff.attempts == 0)
        // ... so the next outage is news again.
        _ = machine.connectionLost(attempt: 7, reason: "peer closed", randomUnit: 0.5)
        _ = machine.retryTimerFired()
        #expect(reports(machine.connectFailed(attempt: 8, reason: "Connection refused", randomUnit: 0.5)).count == 1)
    }

    @Test func permissionDeniedIsReportedOnceAndRetriedUntilAnIdentityAppears() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        var reported: [IssuerError] = []
        for attempt in 1...5 {
            let actions = machine.streamEnded(
                attempt: attempt, stream: .x509SVID, status: GRPCStatus(.permissionDenied, "no identity issued"),
                randomUnit: 0.5)
            #expect(steps(actions).first == .close)
            reported += reports(actions)
            _ = machine.retryTimerFired()
        }
        #expect(reported.map(\.kind) == [.permissionDenied])
        #expect(reported.first?.message.contains("no identity issued") == true)
        let delivered = updates(
            machine.received(upstream.response([try upstream.svid()]), attempt: 6, now: upstream.now))
        #expect(delivered.map(\.svid.spiffeID.uri) == [Upstream.workload])
    }

    @Test func eventsOfAnEarlierConnectionAreIgnored() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        _ = machine.streamEnded(attempt: 1, stream: .x509SVID, status: GRPCStatus(.cancelled), randomUnit: 0.5)
        // The second stream of the torn-down connection finishes too: no second close, retry or report.
        #expect(steps(machine.streamEnded(attempt: 1, stream: .x509Bundles, status: .ok, randomUnit: 0.5)).isEmpty)
        _ = machine.retryTimerFired()
        #expect(steps(machine.connectionLost(attempt: 1, reason: "late", randomUnit: 0.5)).isEmpty)
        #expect(
            updates(machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now))
                .isEmpty)
        #expect(machine.state == .connecting(attempt: 2))
    }

    @Test func rotateNowIsAHint() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        _ = machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now)
        #expect(steps(machine.rotateNow()).isEmpty, "SPIRE rotates upstream and pushes the result")
        _ = machine.connectionLost(attempt: 1, reason: "gone", randomUnit: 0.5)
        _ = machine.retryTimerFired()
        _ = machine.connectFailed(attempt: 2, reason: "refused", randomUnit: 0.5)
        #expect(steps(machine.rotateNow()) == [.retry(0)], "while backing off, retry now")
        #expect(machine.backoff.attempts == 2, "without forgetting the failures")
    }

    @Test func stopCancelsEverythingAndIgnoresLaterEvents() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        #expect(steps(machine.stop()) == [.cancelRetry, .close])
        #expect(machine.state == .stopped)
        #expect(steps(machine.retryTimerFired()).isEmpty)
        #expect(
            steps(machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now))
                .isEmpty)
        #expect(steps(machine.streamEnded(attempt: 1, stream: .x509SVID, status: .ok, randomUnit: 0.5)).isEmpty)
        #expect(steps(machine.rotateNow()).isEmpty)
        var waiting = Machine(upstream: "/x", wantedID: nil)
        _ = waiting.start()
        #expect(steps(waiting.stop()) == [.cancelRetry])
    }

    @Test func aMalformedMessageRestartsTheConnection() throws {
        var machine = try connectedMachine()
        let actions = machine.malformedMessage(attempt: 1, stream: .x509Bundles, reason: "truncated", randomUnit: 0.5)
        #expect(steps(actions) == [.close, .retry(0.1), .report(.issuanceFailed)])
    }
}

@Suite struct SVIDSelectionTests {
    @Test func theConfiguredSPIFFEIDIsChosenAmongSeveral() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let response = upstream.response([
            try upstream.svid("spiffe://example.org/ns/default/sa/other"), try upstream.svid(),
        ])
        let delivered = updates(machine.received(response, attempt: 1, now: upstream.now))
        #expect(delivered.map(\.svid.spiffeID.uri) == [Upstream.workload])
        #expect(delivered.first?.bundles.map(\.trustDomain.name) == ["example.org"])
        #expect(delivered.first?.bundles.first?.der == upstream.ca.bundle.der)
    }

    @Test func withoutAConfiguredIDTheFirstSVIDIsChosen() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine(wanted: nil)
        let first = "spiffe://example.org/ns/default/sa/first"
        let response = upstream.response([try upstream.svid(first), try upstream.svid()])
        #expect(updates(machine.received(response, attempt: 1, now: upstream.now)).map(\.svid.spiffeID.uri) == [first])
    }

    @Test func noSVIDForTheConfiguredIDIsAnErrorAndKeepsTheStream() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let actions = machine.received(
            upstream.response([try upstream.svid("spiffe://example.org/ns/default/sa/other")]), attempt: 1,
            now: upstream.now)
        #expect(steps(actions) == [.report(.issuanceFailed)])
        #expect(reports(actions).first?.message.contains("offered: spiffe://example.org/ns/default/sa/other") == true)
        #expect(machine.state == .connecting(attempt: 1))
    }

    @Test func aResponseWithoutSVIDsIsAnError() throws {
        var machine = try connectedMachine()
        #expect(
            steps(machine.received(X509SVIDResponse(), attempt: 1, now: FakeClock.defaultStart))
                == [.report(.issuanceFailed)])
    }

    @Test(arguments: ["expired", "key-mismatch", "leaf-is-ca", "garbage-der"])
    func anInvalidSVIDNeverReplacesTheLastGoodOne(rule: String) throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let good = updates(machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now))
        #expect(good.count == 1)
        var broken = try upstream.svid { options in
            switch rule {
            case "expired":
                options.notBeforeOffset = -7200
                options.notAfterOffset = -3600
            case "key-mismatch": options.mismatchedKey = true
            case "leaf-is-ca": options.isCA = true
            default: break
            }
        }
        if rule == "garbage-der" { broken.x509SVID = [0x30, 0x03, 0x01] }
        let actions = machine.received(upstream.response([broken]), attempt: 1, now: upstream.now)
        #expect(steps(actions) == [.report(.issuanceFailed)])
        #expect(machine.lastDelivered?.svid.chainDER == good.first?.svid.chainDER)
        #expect(machine.state == .streaming(attempt: 1), "the stream stays open for the next, hopefully good, state")
        // The same broken state again is not news.
        #expect(steps(machine.received(upstream.response([broken]), attempt: 1, now: upstream.now)).isEmpty)
    }

    @Test func anSVIDThatDoesNotChainToItsBundleIsRejected() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        var svid = try upstream.svid()
        svid.bundle = upstream.other.bundle.der
        #expect(
            steps(machine.received(upstream.response([svid]), attempt: 1, now: upstream.now))
                == [.report(.issuanceFailed)])
    }
}

@Suite struct ChangeDetectionTests {
    @Test func onlyChangesAreDeliveredAndEachCarriesTheFullState() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let first = upstream.response([try upstream.svid()])
        #expect(updates(machine.received(first, attempt: 1, now: upstream.now)).count == 1)
        #expect(updates(machine.received(first, attempt: 1, now: upstream.now)).isEmpty)
        #expect(
            updates(
                machine.received(
                    X509BundlesResponse(bundles: ["spiffe://example.org": upstream.ca.bundle.der]),
                    attempt: 1, now: upstream.now)
            ).isEmpty, "the own bundle, again: no change")
        let rotated = updates(machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now))
        #expect(rotated.count == 1)
        #expect(rotated.first?.svid.chainDER != first.svids[0].x509SVID)
    }

    @Test func federatedBundlesFollowTheOwnBundleInNameOrder() throws {
        let upstream = try Upstream()
        let third = try TestCA(trustDomain: "a-third.org")
        var machine = try connectedMachine()
        let response = upstream.response(
            [try upstream.svid()],
            federated: ["spiffe://other.org": upstream.other.bundle.der, "spiffe://a-third.org": third.bundle.der])
        let delivered = updates(machine.received(response, attempt: 1, now: upstream.now))
        #expect(delivered.first?.bundles.map(\.trustDomain.name) == ["example.org", "a-third.org", "other.org"])
        #expect(delivered.first?.bundles[2].der == upstream.other.bundle.der)
    }

    @Test func theBundleStreamAddsAndRemovesFederatedBundles() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        // Bundles may arrive before the SVID: nothing to deliver until there is an SVID.
        let withOther = X509BundlesResponse(bundles: [
            "spiffe://example.org": upstream.ca.bundle.der, "spiffe://other.org": upstream.other.bundle.der,
        ])
        #expect(steps(machine.received(withOther, attempt: 1, now: upstream.now)).isEmpty)
        #expect(
            steps(machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now)).map(
                \.description
            ).first?.contains("[\"example.org\", \"other.org\"]") == true)
        let removed = machine.received(
            X509BundlesResponse(bundles: ["spiffe://example.org": upstream.ca.bundle.der]), attempt: 1,
            now: upstream.now)
        #expect(updates(removed).first?.bundles.map(\.trustDomain.name) == ["example.org"])
    }

    @Test func anUnusableFederatedBundleIsLeftOutAndReported() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        let response = upstream.response(
            [try upstream.svid()],
            federated: ["spiffe://other.org": [1, 2, 3], "not a domain!": upstream.other.bundle.der])
        let actions = machine.received(response, attempt: 1, now: upstream.now)
        #expect(
            steps(actions) == [.deliver(id: Upstream.workload, bundles: ["example.org"]), .report(.issuanceFailed)])
        #expect(steps(machine.received(response, attempt: 1, now: upstream.now)).isEmpty)
    }
}

/// A peer that accepts the connection but never answers must not hold the client in `connecting` forever.
@Suite struct FirstResponseDeadlineTests {
    @Test func silenceUntilTheDeadlineTearsDownBacksOffAndIsReportedOnce() throws {
        var machine = try connectedMachine()
        #expect(machine.firstResponseTimeout == 10, "the documented default")
        let first = machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)
        #expect(steps(first) == [.close, .retry(0.1), .report(.upstreamUnavailable)])
        #expect(machine.state == .waiting)
        let error = try #require(reports(first).first)
        #expect(error.message == "no response from the Workload API at /run/spire.sock within 10 s")
        #expect(error.retryAfter == 0.1)
        // The same silence on the retry: backoff grows, no second report.
        #expect(steps(machine.retryTimerFired()) == [.connect(2)])
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 2, randomUnit: 0.5)) == [.close, .retry(0.2)])
        #expect(steps(machine.retryTimerFired()) == [.connect(3)])
    }

    @Test func theTimeoutInTheMessageIsTheConfiguredOne() throws {
        var machine = Machine(upstream: "/run/spire.sock", wantedID: nil, firstResponseTimeout: 2.5)
        _ = machine.start()
        _ = machine.retryTimerFired()
        let error = try #require(reports(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).first)
        #expect(error.message == "no response from the Workload API at /run/spire.sock within 2.5 s")
    }

    @Test func aDeadlineOfAnOlderAttemptIsIgnored() throws {
        var machine = try connectedMachine()
        _ = machine.connectFailed(attempt: 1, reason: "connect: Connection refused", randomUnit: 0.5)
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).isEmpty, "while waiting")
        _ = machine.retryTimerFired()
        #expect(machine.state == .connecting(attempt: 2))
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).isEmpty, "attempt 2 dialing")
        #expect(machine.state == .connecting(attempt: 2))
    }

    @Test func aDeadlineAfterTheFirstValidSVIDIsIgnored() throws {
        let upstream = try Upstream()
        var machine = try connectedMachine()
        _ = machine.received(upstream.response([try upstream.svid()]), attempt: 1, now: upstream.now)
        #expect(machine.state == .streaming(attempt: 1))
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).isEmpty)
        #expect(machine.state == .streaming(attempt: 1))
    }

    @Test func anUnusableAnswerEndsTheWaitButIsStillReported() throws {
        // A peer that answers (here: with an SVID for another workload) is not wedged: its answer is the report,
        // and reconnecting every 10 s would only alternate that report with a "no response" one.
        let upstream = try Upstream()
        var machine = try connectedMachine()
        #expect(machine.awaitingFirstResponse == 1)
        let wrong = machine.received(
            upstream.response([try upstream.svid("spiffe://example.org/ns/default/sa/other")]), attempt: 1,
            now: upstream.now)
        #expect(reports(wrong).count == 1, "\(steps(wrong))")
        #expect(updates(wrong).isEmpty)
        #expect(machine.state == .connecting(attempt: 1))
        #expect(machine.awaitingFirstResponse == nil)
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).isEmpty)
        #expect(machine.state == .connecting(attempt: 1))
    }

    @Test func aDeadlineAfterStopIsIgnored() throws {
        var machine = try connectedMachine()
        _ = machine.stop()
        #expect(steps(machine.firstResponseDeadlinePassed(attempt: 1, randomUnit: 0.5)).isEmpty)
        #expect(machine.state == .stopped)
    }
}
