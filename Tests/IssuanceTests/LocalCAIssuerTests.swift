import Issuance
import LocalCA
import PKI
import SPIFFE
import TestSupport
import Testing
import Transport

/// Drives a `LocalCAIssuer` with a fake clock and scheduler, recording what it delivers.
final class IssuerHarness {
    let scheduler = FakeScheduler()
    var clock: FakeClock { scheduler.clock }
    let id = try! SPIFFEID(parsing: "spiffe://example.org/ns/default/sa/web")
    var updates: [IdentityUpdate] = []
    var errors: [IssuerError] = []
    let issuer: LocalCAIssuer
    let ca: LocalCA

    init(rootLifetime: Int64 = LocalCA.defaultRootLifetime, ttl: Int64 = 3600) throws {
        ca = try LocalCA.ephemeral(
            trustDomain: TrustDomain("example.org"), now: FakeClock.defaultStart, rootLifetime: rootLifetime)
        issuer = LocalCAIssuer(
            ca: ca, spiffeID: id, ttl: ttl, clock: scheduler.clock, scheduler: scheduler, randomUnit: { 0.5 })
    }

    func start() {
        issuer.start(
            onUpdate: { [unowned self] in self.updates.append($0) },
            onError: { [unowned self] in self.errors.append($0) })
    }
}

@Suite struct LocalCAIssuerTests {
    @Test func firstSVIDArrivesOnTheNextTurnNotInsideStart() throws {
        let h = try IssuerHarness()
        h.start()
        #expect(h.updates.isEmpty)
        h.scheduler.runDue()
        #expect(h.updates.count == 1)
        let update = try #require(h.updates.first)
        #expect(update.svid.spiffeID == h.id)
        #expect(update.bundles.map(\.trustDomain) == [h.ca.trustDomain])
        try update.svid.verify(against: update.bundles[0], at: h.clock.now())
    }

    @Test func renewsAtHalfLifeAndNotBefore() throws {
        let h = try IssuerHarness(ttl: 3600)
        h.start()
        h.scheduler.runDue()
        // Lifetime 3660 s (60 s backdating): half is 1830 s before notAfter, i.e. 1770 s from now.
        #expect(h.issuer.rotateAt == FakeClock.defaultStart + 1770)
        h.scheduler.advance(by: 1769)
        #expect(h.updates.count == 1)
        h.scheduler.advance(by: 1)
        #expect(h.updates.count == 2)
        #expect(h.updates[1].svid.leaf != h.updates[0].svid.leaf)
        #expect(h.updates[1].svid.notBefore == FakeClock.defaultStart + 1770 - 60)
        #expect(h.errors.isEmpty)
    }

    @Test func rotateNowIssuesOnTheNextTurnAndReplacesTheTimer() throws {
        let h = try IssuerHarness()
        h.start()
        h.scheduler.runDue()
        h.issuer.rotateNow()
        #expect(h.updates.count == 1)
        h.scheduler.runDue()
        #expect(h.updates.count == 2)
        #expect(h.scheduler.pendingCount == 1)
    }

    @Test func stopCancelsAndNoCallbackFollows() throws {
        let h = try IssuerHarness()
        h.start()
        h.issuer.stop()
        h.scheduler.advance(by: 86_400)
        #expect(h.updates.isEmpty && h.errors.isEmpty)
        #expect(h.scheduler.pendingCount == 0)
    }

    @Test func failuresRetryWithGrowingBackoffWhileTheLastSVIDStays() throws {
        // The CA expires 600 s after the start: renewals succeed until then, then fail with backoff.
        let h = try IssuerHarness(rootLifetime: 600, ttl: 3600)
        h.start()
        h.scheduler.runDue()
        let first = try #require(h.issuer.current)
        #expect(first.notAfter == FakeClock.defaultStart + 600)
        h.clock.advance(by: 10_000)  // the wall clock jumps past the CA's expiry
        h.issuer.rotateNow()
        h.scheduler.runDue()
        #expect(h.errors.count == 1)
        #expect(h.errors[0].kind == .issuanceFailed)
        #expect(h.errors[0].message.contains("expired"))
        #expect(h.errors[0].retryAfter == 0.1)
        h.scheduler.advance(by: 0.1)
        #expect(h.errors.count == 2)
        #expect(h.errors[1].retryAfter == 0.2)
        h.scheduler.advance(by: 0.2)
        #expect(h.errors.map(\.retryAfter) == [0.1, 0.2, 0.4])
        #expect(h.issuer.current?.leaf == first.leaf)
        #expect(h.updates.count == 1)
    }
}

@Suite struct FakeSchedulerTests {
    @Test func runsTimersInDueOrderAndMovesTheClock() {
        let scheduler = FakeScheduler()
        var log: [String] = []
        scheduler.schedule(after: 2) { log.append("b") }
        scheduler.schedule(after: 1) {
            log.append("a")
            scheduler.schedule(after: 0.5) { log.append("a+") }
        }
        let cancelled = scheduler.schedule(after: 1.2) { log.append("never") }
        cancelled.cancel()
        scheduler.advance(by: 1.9)
        #expect(log == ["a", "a+"])
        #expect(scheduler.clock.now() == FakeClock.defaultStart + 1)
        scheduler.advance(by: 0.1)
        #expect(log == ["a", "a+", "b"])
        #expect(scheduler.clock.now() == FakeClock.defaultStart + 2)
        #expect(scheduler.pendingCount == 0)
    }
}

@Suite struct FakeIssuerTests {
    @Test func deliversOnlyWhileStarted() throws {
        let ca = try TestCA()
        let (chain, key) = try ca.makeLeaf()
        let update = IdentityUpdate(
            svid: try X509SVID(chain: chain, privateKey: key, now: ca.now), bundles: [ca.bundle])
        let issuer = FakeIssuer()
        var received = 0
        issuer.push(update)
        issuer.start(onUpdate: { _ in received += 1 }, onError: { _ in })
        issuer.push(update)
        issuer.rotateNow()
        issuer.stop()
        issuer.push(update)
        #expect(received == 1)
        #expect(issuer.rotateNowCount == 1)
        #expect(issuer.isStarted && issuer.isStopped)
    }
}
