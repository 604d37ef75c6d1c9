public import PKI
public import SPIFFE

/// An `Issuer` over the embedded `LocalCA`: issues the configured SPIFFE ID, renews it at the time the
/// `RotationPolicy` picks, and retries failures with `Backoff` while the previous SVID keeps being served.
///
///     start ──► idle ──(next turn)──► issue ──ok──► waiting(rotateAt) ──timer──► issue ...
///                                        │                 ▲
///                                        └─fail─► retrying(backoff) ──timer──► issue
///     rotateNow: any state ──► issue on the next turn          stop: any state ──► stopped
public final class LocalCAIssuer: Issuer {
    /// Like istio-agent's `SECRET_TTL` default.
    public static let defaultTTL: Int64 = 86_400

    private enum State {
        case idle
        case running(onUpdate: (IdentityUpdate) -> Void, onError: (IssuerError) -> Void)
        case stopped
    }

    private let ca: LocalCA
    private let spiffeID: SPIFFEID
    private let ttl: Int64
    private let clock: any WallClock
    private let scheduler: any Scheduler
    private let rotation: RotationPolicy
    private var backoff: Backoff
    private let randomUnit: () -> Double
    private var state: State = .idle
    private var timer: (any ScheduledTimer)?
    /// The SVID most recently delivered.
    public private(set) var current: X509SVID?
    /// When the current SVID is due for renewal.
    public private(set) var rotateAt: Timestamp?

    /// - Parameters:
    ///   - ttl: requested SVID lifetime in seconds (capped by the CA's expiry).
    ///   - randomUnit: uniform samples in [0, 1) for rotation and backoff jitter (injected for tests).
    public init(
        ca: LocalCA, spiffeID: SPIFFEID, ttl: Int64 = defaultTTL, clock: any WallClock, scheduler: any Scheduler,
        rotation: RotationPolicy = RotationPolicy(), backoff: Backoff = Backoff(),
        randomUnit: @escaping () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.ca = ca
        self.spiffeID = spiffeID
        self.ttl = ttl
        self.clock = clock
        self.scheduler = scheduler
        self.rotation = rotation
        self.backoff = backoff
        self.randomUnit = randomUnit
    }

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        guard case .idle = state else { return }
        state = .running(onUpdate: onUpdate, onError: onError)
        arm(after: 0)
    }

    public func rotateNow() {
        guard case .running = state else { return }
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
            self?.issue()
        }
    }

    private func issue() {
        guard case .running(let onUpdate, let onError) = state else { return }
        let now = clock.now()
        do {
            let svid = try ca.issue(spiffeID: spiffeID, ttl: ttl, now: now)
            backoff.reset()
            current = svid
            let due = rotation.rotateAt(notBefore: svid.notBefore, notAfter: svid.notAfter, randomUnit: randomUnit())
            rotateAt = due
            // The backdated notBefore and a CA close to expiry can put rotateAt in the past; renewing at once
            // would then loop, so wait half of what is left (at least a second) instead.
            let delay = due > now ? Double(due - now) : max(1, Double(svid.notAfter - now) / 2)
            arm(after: delay)
            onUpdate(IdentityUpdate(svid: svid, bundles: [ca.bundle]))
        } catch {
            let delay = backoff.nextDelay(randomUnit: randomUnit())
            arm(after: delay)
            onError(IssuerError(kind: .issuanceFailed, message: "issuing \(spiffeID): \(error)", retryAfter: delay))
        }
    }
}
