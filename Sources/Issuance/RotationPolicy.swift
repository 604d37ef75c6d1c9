public import PKI

/// When to replace a certificate: once only `gracePeriodRatio` of its lifetime is left, like istio-agent's
/// `SECRET_GRACE_PERIOD_RATIO` (0.5). The ratio is jittered by ±`jitter` (istio-agent's
/// `SECRET_GRACE_PERIOD_RATIO_JITTER`, 0.01) so that many agents started together do not all hit the CA
/// at the same second. Pure: time and randomness are parameters.
///
///     notBefore                    rotateAt                    notAfter
///        |-----------------------------|---------------------------|
///                                      |<-- lifetime * (ratio ± jitter) -->|
public struct RotationPolicy: Sendable, Hashable {
    /// Fraction of the lifetime that is left when we rotate (0.5 = at half-life).
    public var gracePeriodRatio: Double
    /// Maximum absolute deviation added to `gracePeriodRatio`, uniformly distributed.
    public var jitter: Double
    /// The longest lifetime counted, in seconds: a certificate valid longer (an upstream's `notAfter` of
    /// 9999-12-31, RFC 5280's "no well-defined expiration") is rotated as if it lived this long, so rotation keeps
    /// the agent's own cadence (`--svid-ttl`) instead of waiting centuries or overflowing a timer.
    public var maximumLifetime: Int64

    /// A century: the bound when the caller has none of its own (far below any overflow in timers or `Double`).
    public static let defaultMaximumLifetime: Int64 = 100 * 365 * 86_400

    public init(gracePeriodRatio: Double = 0.5, jitter: Double = 0.01, maximumLifetime: Int64? = nil) {
        self.gracePeriodRatio = gracePeriodRatio
        self.jitter = jitter
        self.maximumLifetime = min(max(1, maximumLifetime ?? Self.defaultMaximumLifetime), Self.defaultMaximumLifetime)
    }

    /// The time to rotate a certificate valid from `notBefore` to `notAfter`. `randomUnit` is a uniform
    /// sample in [0, 1): 0 gives the earliest time (ratio + jitter), 0.5 exactly the ratio.
    public func rotateAt(notBefore: Timestamp, notAfter: Timestamp, randomUnit: Double) -> Timestamp {
        guard notAfter > notBefore else { return notBefore }
        // Compared before subtracting: two outside timestamps far apart must not overflow.
        let counted =
            notAfter.secondsSinceEpoch.subtractingReportingOverflow(notBefore.secondsSinceEpoch).overflow
            ? maximumLifetime : min(notAfter - notBefore, maximumLifetime)
        let unit = min(max(randomUnit, 0), 1)
        let ratio = min(max(gracePeriodRatio + jitter * (1 - 2 * unit), 0), 1)
        let grace = Int64((Double(counted) * ratio).rounded())
        return notBefore + (counted - grace)
    }

    /// Same, drawing the sample from `generator`.
    public func rotateAt(
        notBefore: Timestamp, notAfter: Timestamp, using generator: inout some RandomNumberGenerator
    ) -> Timestamp {
        rotateAt(notBefore: notBefore, notAfter: notAfter, randomUnit: Double.random(in: 0..<1, using: &generator))
    }

    /// Whether a certificate valid from `notBefore` to `notAfter` should be replaced at `now`.
    public func shouldRotate(now: Timestamp, notBefore: Timestamp, notAfter: Timestamp, randomUnit: Double) -> Bool {
        now >= rotateAt(notBefore: notBefore, notAfter: notAfter, randomUnit: randomUnit)
    }
}

/// Exponential backoff with jitter for retrying a failed issuance: 0.1 s, 0.2 s, 0.4 s ... capped at 30 s,
/// each delay multiplied by a uniform factor in [1 - jitter, 1 + jitter] and then capped again. Pure value:
/// the caller supplies the random sample and keeps the state.
public struct Backoff: Sendable, Hashable {
    public var initialDelay: Double
    public var maximumDelay: Double
    public var multiplier: Double
    public var jitter: Double
    /// Failures since the last `reset()`.
    public private(set) var attempts: Int = 0

    public init(initialDelay: Double = 0.1, maximumDelay: Double = 30, multiplier: Double = 2, jitter: Double = 0.2) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The delay before the next attempt, in seconds; counts one more failure. `randomUnit` in [0, 1).
    public mutating func nextDelay(randomUnit: Double) -> Double {
        // Stop growing once the cap is reached so the exponent cannot overflow to infinity.
        var base = initialDelay
        var step = 0
        while step < attempts && base < maximumDelay {
            base *= multiplier
            step += 1
        }
        base = min(base, maximumDelay)
        attempts += 1
        let unit = min(max(randomUnit, 0), 1)
        let factor = 1 + jitter * (2 * unit - 1)
        return min(max(base * factor, 0), maximumDelay)
    }

    /// After a success: the next failure starts again at `initialDelay`.
    public mutating func reset() {
        attempts = 0
    }
}
