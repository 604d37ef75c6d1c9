import Foundation
import Issuance
import LocalCA
import PKI
import SPIFFE
import TestSupport
import Testing
import Transport

/// The timeline of `RootRotationSchedule` as a pure value: no clock, no files.
@Suite struct RootRotationScheduleTests {
    let t0 = FakeClock.defaultStart
    // --ca-ttl 2m --svid-ttl 20s: lead max(20 + 10, 120 / 6) = 30; activate 120 - 30 = 90; publish 60; retire 110.
    let schedule = RootRotationSchedule(svidLifetime: 20)
    var root: RootRotationSchedule.Root { .init(createdAt: t0, notAfter: t0 + 120) }

    @Test func successorIsPublishedThenSignsThenTheOldRootIsRetired() {
        let alone = schedule.decide(now: t0, current: root, successor: nil)
        #expect(alone == .init(due: nil, signer: .current, bundle: [.current], nextEventAt: t0 + 60))
        #expect(schedule.decide(now: t0 + 59, current: root, successor: nil).due == nil)
        #expect(schedule.decide(now: t0 + 60, current: root, successor: nil).due == .createSuccessor)

        let next = RootRotationSchedule.Root(createdAt: t0 + 60, notAfter: t0 + 180)
        let published = schedule.decide(now: t0 + 60, current: root, successor: next)
        #expect(published == .init(due: nil, signer: .current, bundle: [.current, .successor], nextEventAt: t0 + 90))
        let activated = schedule.decide(now: t0 + 90, current: root, successor: next)
        #expect(
            activated == .init(due: nil, signer: .successor, bundle: [.current, .successor], nextEventAt: t0 + 110))
        #expect(schedule.decide(now: t0 + 109, current: root, successor: next).due == nil)
        let retired = schedule.decide(now: t0 + 110, current: root, successor: next)
        #expect(retired == .init(due: .retireCurrent, signer: .successor, bundle: [.successor], nextEventAt: nil))
    }

    @Test func aLongLivedRootPublishesItsSuccessorASixthOfItsLifetimeEarly() {
        let year: Int64 = 365 * 86_400
        let times = RootRotationSchedule(svidLifetime: 3600).timeline(
            current: .init(createdAt: t0, notAfter: t0 + year), successorCreatedAt: nil)
        #expect(times.activateAt == t0 + year - 3600 - 1800)
        #expect(times.activateAt - times.publishAt == year / 6)
        #expect(times.retireAt == times.activateAt + 3600)
    }

    @Test func aLateSuccessorStillGetsTheLeadUnlessTheRootExpiresFirst() {
        // Created at 70 instead of 60 (the agent was stopped): it signs at 70 + 30, not at 90.
        let late = schedule.timeline(current: root, successorCreatedAt: t0 + 70)
        #expect(late.activateAt == t0 + 100)
        #expect(late.retireAt == t0 + 120)
        // Created at 100: the current root expires at 120, so the switch happens then, whatever the lead.
        let tooLate = schedule.timeline(current: root, successorCreatedAt: t0 + 100)
        #expect(tooLate.activateAt == t0 + 120 && tooLate.retireAt == t0 + 120)
        // The agent was stopped past the root's expiry: create, then retire at once.
        #expect(schedule.decide(now: t0 + 500, current: root, successor: nil).due == .createSuccessor)
        let fresh = RootRotationSchedule.Root(createdAt: t0 + 500, notAfter: t0 + 620)
        #expect(schedule.decide(now: t0 + 500, current: root, successor: fresh).due == .retireCurrent)
    }

    /// Several generations at the smallest accepted ratio and at a larger one: the successor is in the bundle at
    /// least S + margin before it signs, the old root stays until S after the switch (its last SVID expired), an SVID
    /// is never cut short by its root's expiry, and a new successor is never due while two roots exist.
    @Test(arguments: [Int64(6), 7, 20, 8760])
    func invariantsHoldOverGenerations(ratio: Int64) {
        let svid: Int64 = 20
        let lifetime = ratio * svid
        let schedule = RootRotationSchedule(svidLifetime: svid)
        var current = RootRotationSchedule.Root(createdAt: t0, notAfter: t0 + lifetime)
        var successor: RootRotationSchedule.Root?
        var now = t0
        var activatedAt: Timestamp?
        var generations = 0
        var steps = 0
        while generations < 5 && steps < 100 {
            steps += 1
            let decision = schedule.decide(now: now, current: current, successor: successor)
            #expect(decision.bundle.contains(decision.signer))
            // An SVID issued now by the signer lives its full TTL.
            let signer = decision.signer == .current ? current : successor!
            #expect(now + svid <= signer.notAfter, "ratio \(ratio): an SVID issued at \(now) would be cut short")
            switch decision.due {
            case .createSuccessor:
                #expect(successor == nil)
                successor = .init(createdAt: now, notAfter: now + lifetime)
                continue
            case .retireCurrent:
                let switched = try! #require(activatedAt)
                #expect(now - switched >= svid, "the old root left before its last SVID expired")
                current = successor!
                successor = nil
                activatedAt = nil
                generations += 1
                continue
            case nil:
                break
            }
            if decision.signer == .successor && activatedAt == nil {
                activatedAt = now
                #expect(now - successor!.createdAt >= svid + schedule.margin, "the successor signed too early")
            }
            now = try! #require(decision.nextEventAt)
        }
        #expect(generations == 5)
    }
}

/// `CAExpiryWarning`: from 30 days before expiry, once a day.
@Suite struct CAExpiryWarningTests {
    @Test func warnsFromThirtyDaysBeforeThenDaily() {
        let notAfter = FakeClock.defaultStart + 100 * 86_400
        let first = CAExpiryWarning.nextWarningAt(notAfter: notAfter, lastWarnedAt: nil)
        #expect(first == notAfter - 30 * 86_400)
        #expect(CAExpiryWarning.nextWarningAt(notAfter: notAfter, lastWarnedAt: first + 5) == first + 86_405)
    }
}

/// The state dir through a rotation, restarts at each phase, damage and ownership.
@Suite struct LocalCARootsTests {
    let t0 = FakeClock.defaultStart
    let domain = try! TrustDomain("example.org")

    func open(_ dir: String, _ now: Timestamp, lifetime: Int64 = 120) throws -> LocalCARoots {
        try LocalCARoots.open(stateDirectory: dir, trustDomain: domain, now: now, rootLifetime: lifetime)
    }

    func files(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    @Test func successorIsSavedBesideTheRootThenReplacesIt() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let roots = try open(temp.path, t0)
        let first = roots.current.signingCertificate
        let next = try roots.createSuccessor(now: t0 + 60).signingCertificate
        #expect(try files(temp.path) == ["ca-next.key", "ca-next.pem", "ca.key", "ca.pem"])
        for name in ["ca-next.key", "ca-next.pem"] { #expect(try temp.mode(name) == 0o600) }

        let reopened = try open(temp.path, t0 + 70)
        #expect(reopened.current.signingCertificate == first)
        #expect(reopened.successor?.signingCertificate == next)

        let retired = try reopened.retireCurrent()
        #expect(retired.signingCertificate == first)
        #expect(reopened.current.signingCertificate == next && reopened.successor == nil)
        #expect(try files(temp.path) == ["ca.key", "ca.pem"])
        #expect(try temp.mode("ca.key") == 0o600 && temp.mode("ca.pem") == 0o600)
        #expect(try open(temp.path, t0 + 120).current.signingCertificate == next)
    }

    func expectOpenFails(_ dir: String, at now: Timestamp? = nil) -> String {
        do {
            _ = try open(dir, now ?? t0)
            Issue.record("expected the start to fail")
            return ""
        } catch {
            let text = "\(error)"
            #expect(!text.contains("\n"), "one line: \(text)")
            return text
        }
    }

    @Test func damagedSuccessorIsAOneLineErrorNamingTheFileAndIsNeverReplaced() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        try open(temp.path, t0).createSuccessor(now: t0 + 60)
        let pem = try String(contentsOfFile: temp.path + "/ca-next.pem", encoding: .utf8)
        let truncated = String(pem.prefix(pem.count / 2))
        try temp.write("ca-next.pem", truncated)
        let message = expectOpenFails(temp.path, at: t0 + 70)
        #expect(message.contains(temp.path + "/ca-next.pem"))
        #expect(message.contains("corrupt or truncated"))
        #expect(try String(contentsOfFile: temp.path + "/ca-next.pem", encoding: .utf8) == truncated)

        try FileManager.default.removeItem(atPath: temp.path + "/ca-next.pem")
        let missing = expectOpenFails(temp.path, at: t0 + 70)
        #expect(missing.contains(temp.path + "/ca-next.pem is missing but " + temp.path + "/ca-next.key exists"))
        #expect(FileManager.default.fileExists(atPath: temp.path + "/ca-next.key"))
    }

    @Test func successorKeyNotMatchingIsNamed() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        try open(temp.path, t0).createSuccessor(now: t0 + 60)
        try temp.write("ca-next.key", try PrivateKey.generate().pkcs8PEM())
        #expect(expectOpenFails(temp.path).contains(temp.path + "/ca-next.key does not match"))
    }

    /// A crash inside `retireCurrent`: after the new key replaced ca.key (with or without ca-next.key removed), and
    /// after ca.pem was replaced too. Every state reopens as the finished retirement.
    @Test(arguments: [1, 2, 3])
    func interruptedRetirementIsFinishedAtTheNextStart(crashAfterStep: Int) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let roots = try open(temp.path, t0)
        let next = try roots.createSuccessor(now: t0 + 60).signingCertificate
        let nextKey = try String(contentsOfFile: temp.path + "/ca-next.key", encoding: .utf8)
        try temp.write("ca.key", nextKey)
        if crashAfterStep >= 2 { try FileManager.default.removeItem(atPath: temp.path + "/ca-next.key") }
        if crashAfterStep >= 3 { try temp.write("ca.pem", next.pem) }

        let reopened = try open(temp.path, t0 + 111)
        #expect(reopened.finishedInterruptedRetirement)
        #expect(reopened.current.signingCertificate == next && reopened.successor == nil)
        #expect(try files(temp.path) == ["ca.key", "ca.pem"])
    }

    // MARK: The state dir is trusted only if it is ours

    @Test func groupOrWorldWritableStateDirIsRefused() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try open(temp.path, t0)
        chmod(temp.path, 0o777)
        let message = expectOpenFails(temp.path)
        #expect(message.contains("state dir \(temp.path) is writable by group or others (mode 0777)"))
        chmod(temp.path, 0o770)
        #expect(expectOpenFails(temp.path).contains("mode 0770"))
        chmod(temp.path, 0o755)
        _ = try open(temp.path, t0)
    }

    @Test(arguments: ["ca.key", "ca-next.key"])
    func writableKeyFileIsRefused(name: String) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        try open(temp.path, t0).createSuccessor(now: t0 + 60)
        chmod(temp.path + "/" + name, 0o666)
        let message = expectOpenFails(temp.path)
        #expect(message.contains("key file \(temp.path)/\(name) is writable by group or others (mode 0666)"))
    }

    @Test func stateDirOrKeyOwnedByAnotherUserIsRefused() throws {
        // Only root can give a file away; elsewhere there is nothing to check.
        guard geteuid() == 0 else { return }
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try open(temp.path, t0)
        chown(temp.path + "/ca.key", 4242, 4242)
        #expect(expectOpenFails(temp.path).contains("key file \(temp.path)/ca.key is owned by uid 4242"))
        chown(temp.path + "/ca.key", 0, 0)
        chown(temp.path, 4242, 4242)
        #expect(expectOpenFails(temp.path).contains("state dir \(temp.path) is owned by uid 4242"))
    }
}

/// `LocalCAIssuer` over a state dir with a fake clock and scheduler: the rotation as the Envoys see it.
final class RotatingIssuerHarness {
    let scheduler: FakeScheduler
    var clock: FakeClock { scheduler.clock }
    let id = try! SPIFFEID(parsing: "spiffe://example.org/ns/default/sa/web")
    var updates: [IdentityUpdate] = []
    var errors: [IssuerError] = []
    let roots: LocalCARoots
    let issuer: LocalCAIssuer

    init(stateDir: String, start: Timestamp = FakeClock.defaultStart, rootLifetime: Int64 = 120, ttl: Int64 = 20)
        throws
    {
        scheduler = FakeScheduler(clock: FakeClock(start))
        roots = try LocalCARoots.open(
            stateDirectory: stateDir, trustDomain: TrustDomain("example.org"), now: start, rootLifetime: rootLifetime)
        issuer = LocalCAIssuer(
            roots: roots, spiffeID: id, ttl: ttl, clock: scheduler.clock, scheduler: scheduler, randomUnit: { 0.5 })
        issuer.start(
            onUpdate: { [unowned self] in self.updates.append($0) },
            onError: { [unowned self] in self.errors.append($0) })
    }

    var lastBundle: [Certificate] { updates.last?.bundles.first?.certificates ?? [] }
    var lastSVID: X509SVID? { updates.last?.svid }
}

@Suite struct RotatingIssuerTests {
    let t0 = FakeClock.defaultStart

    /// `--ca-ttl 2m --svid-ttl 20s`: published at 60, signing switched at 90, old root retired at 110; every update
    /// verifies against its own bundle and the SVID Envoy holds is always trusted by the bundle it holds.
    @Test func rootRotatesWithOverlapAndEveryUpdateVerifies() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        var events: [LocalCAIssuer.Event] = []
        let scheduler = FakeScheduler(clock: FakeClock(t0))
        let roots = try LocalCARoots.open(
            stateDirectory: temp.path, trustDomain: TrustDomain("example.org"), now: t0, rootLifetime: 120)
        let id = try SPIFFEID(parsing: "spiffe://example.org/ns/default/sa/web")
        let issuer = LocalCAIssuer(
            roots: roots, spiffeID: id, ttl: 20, clock: scheduler.clock, scheduler: scheduler, randomUnit: { 0.5 },
            onEvent: { events.append($0) })
        var updates: [(at: Timestamp, update: IdentityUpdate)] = []
        issuer.start(onUpdate: { updates.append((scheduler.clock.now(), $0)) }, onError: { Issue.record("\($0)") })
        let first = roots.current.signingCertificate
        scheduler.runDue()

        // Run to just before each event and check nothing happened early; the scheduler never holds two timers.
        func bundleSerials() -> [String] { updates.last!.update.bundles[0].certificates.map(\.serialHex) }
        func signer() -> Certificate? { issuer.currentSigner }
        scheduler.advance(by: 59)
        #expect(bundleSerials() == [first.serialHex] && roots.successor == nil)
        #expect(scheduler.pendingCount == 1)
        scheduler.advance(by: 1)
        let next = try #require(roots.successor?.signingCertificate)
        #expect(bundleSerials() == [first.serialHex, next.serialHex])
        #expect(signer() == first)
        #expect(events == [.successorPublished(serial: next.serialHex, signsFrom: t0 + 90)])
        scheduler.advance(by: 29)
        #expect(signer() == first)
        scheduler.advance(by: 1)
        #expect(signer() == next)
        #expect(updates.last!.at == t0 + 90 && bundleSerials().count == 2)
        scheduler.advance(by: 19)
        #expect(bundleSerials().count == 2)
        scheduler.advance(by: 1)
        #expect(bundleSerials() == [next.serialHex])
        #expect(roots.current.signingCertificate == next)
        #expect(
            events == [
                .successorPublished(serial: next.serialHex, signsFrom: t0 + 90),
                .signingSwitched(serial: next.serialHex),
                .rootRetired(serial: first.serialHex),
            ])

        // Every update: its SVID verifies against its bundle; the old root left only after its last SVID expired.
        let lastByOldRoot = updates.filter {
            (try? $0.update.svid.verify(
                against: X509Bundle(trustDomain: id.trustDomain, certificates: [first]), at: $0.at)) != nil
        }.last
        for (at, update) in updates {
            try update.svid.verify(against: update.bundles[0], at: at)
            #expect(update.svid.notAfter - at == 20)
        }
        #expect(try #require(lastByOldRoot).update.svid.notAfter <= t0 + 110)
        #expect(scheduler.pendingCount == 1)
    }

    /// With long lifetimes the issuer wakes only for the next event: SVID renewal or the next root event.
    @Test func anIdleIssuerArmsOneTimerForTheNextEvent() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        // Root 6 h, SVID 1 h: lead max(1.5 h, 1 h) = 1.5 h; publish at 6 h - 1.5 h - 1.5 h = 3 h.
        let h = try RotatingIssuerHarness(stateDir: temp.path, rootLifetime: 6 * 3600, ttl: 3600)
        h.scheduler.runDue()
        #expect(h.scheduler.pendingCount == 1)
        #expect(h.scheduler.nextDueIn == 1770)  // SVID half-life (3660 s lifetime with the 60 s backdating)
        var wakeups = 0
        while h.roots.successor == nil && wakeups < 20 {
            h.scheduler.advanceToNextTimer()
            wakeups += 1
        }
        #expect(h.clock.now() == t0 + 3 * 3600)
        #expect(wakeups == 7)  // renewals at 1770 s intervals (6), then the publication itself
        #expect(h.lastBundle.count == 2)
        #expect(h.errors.isEmpty)
    }

    /// A restart at each phase resumes the schedule from the state dir: the right bundle, the right signer.
    @Test(arguments: [
        (30, 1, false),  // before publication: one root, the first signs
        (70, 2, false),  // published: both roots, the first signs
        (95, 2, true),  // activated: both roots, the successor signs
        (115, 1, true),  // retired: the successor alone
    ])
    func restartResumesTheSchedule(at offset: Int64, bundleCount: Int, successorSigns: Bool) throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let first: Certificate
        var second: Certificate?
        do {
            let before = try RotatingIssuerHarness(stateDir: temp.path)
            first = before.roots.current.signingCertificate
            before.scheduler.runDue()
            before.scheduler.advance(by: Double(offset) - 1)
            second =
                before.roots.successor?.signingCertificate
                ?? (before.roots.current.signingCertificate == first ? nil : before.roots.current.signingCertificate)
            before.issuer.stop()
        }
        let after = try RotatingIssuerHarness(stateDir: temp.path, start: t0 + offset)
        #expect(!after.roots.createdNewRoot)
        after.scheduler.runDue()
        #expect(after.lastBundle.count == bundleCount)
        let signer = try #require(after.issuer.currentSigner)
        if successorSigns {
            #expect(signer == second)
        } else {
            #expect(signer == first)
        }
        if let second, bundleCount == 2 { #expect(after.lastBundle == [first, second]) }
        try after.lastSVID!.verify(against: after.updates.last!.bundles[0], at: after.clock.now())
        #expect(after.errors.isEmpty)
    }

    /// Stopped past the root's expiry (it can sign nothing): the next start replaces it at once.
    @Test func anExpiredRootIsReplacedAtTheNextStart() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let old = try LocalCARoots.open(
            stateDirectory: temp.path, trustDomain: TrustDomain("example.org"), now: t0, rootLifetime: 120
        ).current.signingCertificate
        let h = try RotatingIssuerHarness(stateDir: temp.path, start: t0 + 1000)
        h.scheduler.runDue()
        #expect(h.errors.isEmpty)
        #expect(h.lastBundle.count == 1 && h.lastBundle[0] != old)
        #expect(h.roots.current.signingCertificate == h.lastBundle[0])
        try h.lastSVID!.verify(against: h.updates.last!.bundles[0], at: h.clock.now())
    }
}

/// An operator CA cannot be rotated: a warning once a day from 30 days before its expiry, on the scheduler.
@Suite struct OperatorCAExpiryTests {
    @Test func warnsOnceADayFromThirtyDaysBeforeExpiry() throws {
        let t0 = FakeClock.defaultStart
        let scheduler = FakeScheduler()
        let ca = try LocalCA.ephemeral(trustDomain: TrustDomain("example.org"), now: t0, rootLifetime: 32 * 86_400)
        var warnings: [Timestamp] = []
        let issuer = LocalCAIssuer(
            ca: ca, spiffeID: try SPIFFEID(parsing: "spiffe://example.org/a"), ttl: 86_400, clock: scheduler.clock,
            scheduler: scheduler, randomUnit: { 0.5 },
            onEvent: { event in
                if case .operatorCAExpiring(_, let notAfter) = event {
                    #expect(notAfter == t0 + 32 * 86_400)
                    warnings.append(scheduler.clock.now())
                }
            })
        issuer.start(onUpdate: { _ in }, onError: { _ in })
        scheduler.runDue()
        #expect(warnings.isEmpty)
        scheduler.advance(by: 2 * 86_400 - 1)
        #expect(warnings.isEmpty)
        scheduler.advance(by: 1)
        #expect(warnings == [t0 + 2 * 86_400])
        scheduler.advance(by: 3 * 86_400)
        #expect(warnings == [t0 + 2 * 86_400, t0 + 3 * 86_400, t0 + 4 * 86_400, t0 + 5 * 86_400])
    }
}
