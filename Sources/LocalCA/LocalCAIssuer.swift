public import Issuance
public import PKI
public import SPIFFE
public import Transport

/// An `Issuer` over the embedded CA: issues the configured SPIFFE ID, renews it at the time the `RotationPolicy`
/// picks, rotates a self-made root on the `RootRotationSchedule` (or warns before an operator CA expires), and
/// retries failures with `Backoff` while the previous SVID keeps being served.
///
///     start ──► idle ──(next turn)──► tick ──ok──► waiting(next event) ──timer──► tick ...
///                                      │                    ▲
///                                      └─fail─► retrying(backoff) ──timer──► tick
///     rotateNow: any state ──► tick on the next turn, renewing the SVID     stop: any state ──► stopped
///
/// A tick performs the root change that is due (create the successor, retire the old root), reissues the SVID if
/// it is due or was signed by another root than the one that signs now, delivers an update if the SVID or the
/// bundle changed, and arms one timer for the earliest next event (SVID renewal, root event, expiry warning): an
/// idle agent wakes for nothing else.
public final class LocalCAIssuer: Issuer {
    /// Like istio-agent's `SECRET_TTL` default.
    public static let defaultTTL: Int64 = 86_400

    /// Something an operator should hear about (the agent logs it).
    public enum Event: Sendable, Hashable {
        /// A successor root was created and added to every bundle; it signs from `signsFrom`.
        case successorPublished(serial: String, signsFrom: Timestamp)
        /// SVIDs are now signed by the root `serial` (the successor).
        case signingSwitched(serial: String)
        /// The root `serial` left the bundle: every SVID it signed has expired.
        case rootRetired(serial: String)
        /// The operator CA `serial` expires at `notAfter` and cannot be rotated by sds-agent.
        case operatorCAExpiring(serial: String, notAfter: Timestamp)
    }

    private enum State {
        case idle
        case running(onUpdate: (IdentityUpdate) -> Void, onError: (IssuerError) -> Void)
        case stopped
    }

    private enum Authority {
        /// An operator CA or an in-memory root: signs until it expires, warned about beforehand.
        case fixed(LocalCA)
        /// The state dir's roots, rotated on the schedule.
        case rotating(LocalCARoots, RootRotationSchedule)
    }

    private let authority: Authority
    private let spiffeID: SPIFFEID
    private let ttl: Int64
    private let clock: any WallClock
    private let scheduler: any Scheduler
    private let rotation: RotationPolicy
    private var backoff: Backoff
    private let randomUnit: () -> Double
    private let onEvent: (Event) -> Void
    private var state: State = .idle
    private var timer: (any ScheduledTimer)?
    private var renewRequested = false
    private var lastExpiryWarning: Timestamp?
    /// The root certificates of the last update delivered.
    private var deliveredBundle: [Certificate] = []
    /// The SVID most recently delivered.
    public private(set) var current: X509SVID?
    /// The root that signed `current`.
    public private(set) var currentSigner: Certificate?
    /// When the current SVID is due for renewal (per `RotationPolicy`).
    public private(set) var rotateAt: Timestamp?
    /// When the current SVID will actually be renewed (`rotateAt`, or later if that was already past).
    private var renewAt: Timestamp?

    /// An issuer over one fixed CA (operator-supplied or in memory). From `CAExpiryWarning.warningPeriod` before
    /// the CA expires, `onEvent` hears `.operatorCAExpiring` once a day.
    /// - Parameters:
    ///   - ttl: requested SVID lifetime in seconds (capped by the CA's expiry).
    ///   - randomUnit: uniform samples in [0, 1) for rotation and backoff jitter (injected for tests).
    public convenience init(
        ca: LocalCA, spiffeID: SPIFFEID, ttl: Int64 = defaultTTL, clock: any WallClock, scheduler: any Scheduler,
        rotation: RotationPolicy = RotationPolicy(), backoff: Backoff = Backoff(),
        randomUnit: @escaping () -> Double = { Double.random(in: 0..<1) }, onEvent: @escaping (Event) -> Void = { _ in }
    ) {
        self.init(
            authority: .fixed(ca), spiffeID: spiffeID, ttl: ttl, clock: clock, scheduler: scheduler,
            rotation: rotation, backoff: backoff, randomUnit: randomUnit, onEvent: onEvent)
    }

    /// An issuer over the state dir's self-made roots, rotated on `RootRotationSchedule(svidLifetime: ttl)`.
    public convenience init(
        roots: LocalCARoots, spiffeID: SPIFFEID, ttl: Int64 = defaultTTL, clock: any WallClock,
        scheduler: any Scheduler, rotation: RotationPolicy = RotationPolicy(), backoff: Backoff = Backoff(),
        randomUnit: @escaping () -> Double = { Double.random(in: 0..<1) }, onEvent: @escaping (Event) -> Void = { _ in }
    ) {
        self.init(
            authority: .rotating(roots, RootRotationSchedule(svidLifetime: ttl)), spiffeID: spiffeID, ttl: ttl,
            clock: clock, scheduler: scheduler, rotation: rotation, backoff: backoff, randomUnit: randomUnit,
            onEvent: onEvent)
    }

    private init(
        authority: Authority, spiffeID: SPIFFEID, ttl: Int64, clock: any WallClock, scheduler: any Scheduler,
        rotation: RotationPolicy, backoff: Backoff, randomUnit: @escaping () -> Double,
        onEvent: @escaping (Event) -> Void
    ) {
        self.authority = authority
        self.spiffeID = spiffeID
        self.ttl = ttl
        self.clock = clock
        self.scheduler = scheduler
        self.rotation = rotation
        self.backoff = backoff
        self.randomUnit = randomUnit
        self.onEvent = onEvent
    }

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        guard case .idle = state else { return }
        state = .running(onUpdate: onUpdate, onError: onError)
        arm(after: 0)
    }

    public func rotateNow() {
        guard case .running = state else { return }
        renewRequested = true
        arm(after: 0)
    }

    public func stop() {
        timer?.cancel()
        timer = nil
        state = .stopped
    }

    private func arm(after seconds: Double) {
        timer?.cancel()
        timer = scheduler.schedule(after: max(seconds, 0)) { [weak self] in
            self?.timer = nil
            self?.tick()
        }
    }

    /// The signer and bundle for `now` after performing any root change that is due, and the next root event.
    private func authorityNow(_ now: Timestamp) throws -> (signer: LocalCA, bundle: [Certificate], next: Timestamp?) {
        switch authority {
        case .fixed(let ca):
            let notAfter = ca.signingCertificate.notAfter
            if now >= CAExpiryWarning.nextWarningAt(notAfter: notAfter, lastWarnedAt: lastExpiryWarning) {
                lastExpiryWarning = now
                onEvent(.operatorCAExpiring(serial: ca.signingCertificate.serialHex, notAfter: notAfter))
            }
            let next = CAExpiryWarning.nextWarningAt(notAfter: notAfter, lastWarnedAt: lastExpiryWarning)
            return (ca, ca.bundle.certificates, next)
        case .rotating(let roots, let schedule):
            func decide() -> RootRotationSchedule.Decision {
                schedule.decide(
                    now: now, current: LocalCARoots.scheduleRoot(roots.current),
                    successor: roots.successor.map(LocalCARoots.scheduleRoot))
            }
            var decision = decide()
            // These write the state dir (fsync included) on the event loop: a few milliseconds, twice per root
            // lifetime, where a worker thread would cost more than it saves.
            // At most two changes per tick (an agent stopped past a root's expiry creates and retires at once);
            // the bound keeps a schedule bug from spinning here.
            var changes = 0
            while let action = decision.due, changes < 2 {
                switch action {
                case .createSuccessor:
                    let next = try roots.createSuccessor(now: now)
                    decision = decide()
                    let times = schedule.timeline(
                        current: LocalCARoots.scheduleRoot(roots.current),
                        successorCreatedAt: LocalCARoots.scheduleRoot(next).createdAt)
                    onEvent(.successorPublished(serial: next.signingCertificate.serialHex, signsFrom: times.activateAt))
                case .retireCurrent:
                    let retired = try roots.retireCurrent()
                    decision = decide()
                    onEvent(.rootRetired(serial: retired.signingCertificate.serialHex))
                }
                changes += 1
            }
            if decision.due != nil {
                throw LocalCAError("the root rotation schedule did not settle at \(now)")
            }
            func ca(_ role: RootRotationSchedule.Role) -> LocalCA {
                role == .successor ? (roots.successor ?? roots.current) : roots.current
            }
            return (ca(decision.signer), decision.bundle.map { ca($0).signingCertificate }, decision.nextEventAt)
        }
    }

    private func tick() {
        guard case .running(let onUpdate, let onError) = state else { return }
        let now = clock.now()
        do {
            let (signer, bundle, nextRootEvent) = try authorityNow(now)
            let signerCertificate = signer.signingCertificate
            var svidChanged = false
            if current == nil || renewRequested || now >= (renewAt ?? now) || currentSigner != signerCertificate {
                if let previous = currentSigner, previous != signerCertificate {
                    onEvent(.signingSwitched(serial: signerCertificate.serialHex))
                }
                let svid = try signer.issue(spiffeID: spiffeID, ttl: ttl, now: now)
                backoff.reset()
                renewRequested = false
                current = svid
                currentSigner = signerCertificate
                let due = rotation.rotateAt(
                    notBefore: svid.notBefore, notAfter: svid.notAfter, randomUnit: randomUnit())
                rotateAt = due
                // The backdated notBefore and a CA close to expiry can put rotateAt in the past; renewing at once
                // would then loop, so wait half of what is left (at least a second) instead.
                renewAt = due > now ? due : now + max(1, (svid.notAfter - now) / 2)
                svidChanged = true
            }
            var next = renewAt ?? now + 1
            if let nextRootEvent { next = min(next, nextRootEvent) }
            // Whole seconds: an event that is due "now" was handled above, so the next one is at least 1 s away.
            arm(after: Double(max(next - now, 1)))
            if svidChanged || bundle != deliveredBundle, let svid = current {
                deliveredBundle = bundle
                onUpdate(
                    IdentityUpdate(
                        svid: svid, bundles: [X509Bundle(trustDomain: spiffeID.trustDomain, certificates: bundle)]))
            }
        } catch {
            let delay = backoff.nextDelay(randomUnit: randomUnit())
            arm(after: delay)
            onError(IssuerError(kind: .issuanceFailed, message: "issuing \(spiffeID): \(error)", retryAfter: delay))
        }
    }
}
