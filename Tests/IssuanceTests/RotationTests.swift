import Issuance
import PKI
import Testing

@Suite struct RotationPolicyTests {
    let start = Timestamp(secondsSinceEpoch: 1_000_000)

    @Test func defaultRotatesAtHalfLifeWhenJitterIsCentred() {
        let policy = RotationPolicy()
        #expect(policy.rotateAt(notBefore: start, notAfter: start + 1000, randomUnit: 0.5) == start + 500)
        #expect(policy.shouldRotate(now: start + 500, notBefore: start, notAfter: start + 1000, randomUnit: 0.5))
        #expect(!policy.shouldRotate(now: start + 499, notBefore: start, notAfter: start + 1000, randomUnit: 0.5))
    }

    @Test func jitterMovesTheRatioByAtMostOnePercentOfTheLifetime() {
        let policy = RotationPolicy()
        let lifetime: Int64 = 86_400
        let earliest = policy.rotateAt(notBefore: start, notAfter: start + lifetime, randomUnit: 0)
        let latest = policy.rotateAt(notBefore: start, notAfter: start + lifetime, randomUnit: 0.999_999)
        #expect(earliest == start + 86_400 / 2 - 864)
        #expect(latest == start + 86_400 / 2 + 864)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<100 {
            let at = policy.rotateAt(notBefore: start, notAfter: start + lifetime, using: &generator)
            #expect(at >= earliest && at <= latest)
        }
    }

    @Test func customRatioAndDegenerateLifetime() {
        let policy = RotationPolicy(gracePeriodRatio: 0.25, jitter: 0)
        #expect(policy.rotateAt(notBefore: start, notAfter: start + 100, randomUnit: 0.3) == start + 75)
        #expect(policy.rotateAt(notBefore: start, notAfter: start, randomUnit: 0.3) == start)
    }
}

@Suite struct BackoffTests {
    @Test func doublesFrom100msAndCapsAt30s() {
        var backoff = Backoff(jitter: 0)
        var delays: [Double] = []
        for _ in 0..<12 { delays.append(backoff.nextDelay(randomUnit: 0.5)) }
        #expect(delays.prefix(4).map { ($0 * 1000).rounded() } == [100, 200, 400, 800])
        #expect(delays.last == 30)
        #expect(delays.allSatisfy { $0 <= 30 })
        #expect(backoff.attempts == 12)
        backoff.reset()
        #expect(backoff.nextDelay(randomUnit: 0.5) == 0.1)
    }

    @Test func jitterStaysWithinBoundsAndUnderTheCap() {
        var low = Backoff()
        var high = Backoff()
        #expect(abs(low.nextDelay(randomUnit: 0) - 0.08) < 1e-9)
        #expect(abs(high.nextDelay(randomUnit: 1) - 0.12) < 1e-9)
        var capped = Backoff()
        for _ in 0..<20 { _ = capped.nextDelay(randomUnit: 0.5) }
        #expect(capped.nextDelay(randomUnit: 1) == 30)
        for _ in 0..<1000 { _ = capped.nextDelay(randomUnit: 0.9) }
        #expect(capped.nextDelay(randomUnit: 0) == 24)
    }
}

@Suite struct SystemWallClockTests {
    @Test func readsTheRealClockInSeconds() {
        let now = SystemWallClock().now()
        // After 2025-01-01 and before 2100: a real clock, in seconds (not milliseconds).
        #expect(now.secondsSinceEpoch > 1_735_689_600 && now.secondsSinceEpoch < 4_102_444_800)
    }
}

/// An upstream's certificate valid until 9999-12-31 (RFC 5280's "no well-defined expiration") is served, and
/// rotated on the agent's own cadence: its lifetime counts as at most `maximumLifetime` (`--svid-ttl`).
@Suite struct FarFutureRotationTests {
    let now = Timestamp(secondsSinceEpoch: 1_800_000_000)
    let year9999 = Timestamp(secondsSinceEpoch: 253_402_300_799)

    @Test func aFarFutureNotAfterRotatesAsIfItLivedTheAgentsTTL() {
        let policy = RotationPolicy(gracePeriodRatio: 0.5, jitter: 0, maximumLifetime: 3600)
        #expect(policy.rotateAt(notBefore: now, notAfter: year9999, randomUnit: 0.5) == now + 1800)
    }

    @Test func withoutABoundOfItsOwnACenturyIsTheMost() {
        let policy = RotationPolicy(jitter: 0)
        let at = policy.rotateAt(notBefore: now, notAfter: year9999, randomUnit: 0.5)
        #expect(at == now + RotationPolicy.defaultMaximumLifetime / 2)
    }

    @Test func extremeTimestampsNeverTrap() {
        let policy = RotationPolicy(maximumLifetime: 3600)
        let lowest = Timestamp(secondsSinceEpoch: .min)
        let highest = Timestamp(secondsSinceEpoch: .max)
        #expect(policy.rotateAt(notBefore: lowest, notAfter: highest, randomUnit: 0.5) > lowest)
        #expect(policy.rotateAt(notBefore: highest, notAfter: lowest, randomUnit: 0.5) == highest)
    }

    @Test func shortLifetimesAreUnchanged() {
        let policy = RotationPolicy(jitter: 0, maximumLifetime: 3600)
        #expect(policy.rotateAt(notBefore: now, notAfter: now + 600, randomUnit: 0.5) == now + 300)
    }
}
