public import GRPC
public import Issuance
public import PKI
public import SPIFFE

/// The istiod certificate client as a pure value: rounds of key + CSR, istio-agent's retry schedule within a
/// round, rotation at the grace ratio, the rotation back-off between failed rounds, deduplicated reports. Events
/// in, actions out; the I/O shell (`IstioCAIssuer`) generates keys off the loop, dials, speaks TLS and gRPC, and
/// runs the one timer. No clock and no randomness of its own: both are event parameters.
///
///            start / rotation due / back-off over                    key + CSR ready
///   idle ──► waiting ─────────────────────────────► preparing(round) ──────────────► requesting(round, try)
///              ▲  ▲                                     │ key failed                   │    ▲         │
///              │  │                                     ▼                              │    │ retry   │ retryable
///              │  └──────────── failed round: report once, rotation back-off ◄─────────┤  pausing ◄──┘ failure,
///              │                 (non-retryable status, 5 tries spent, chain refused)   │ (100 ms · 2^n ± 10 %)
///              └──────────────── chain valid: deliver, sleep until the grace ratio ◄────┘
///   stop: any state ──► stopped (timer cancelled, call abandoned; every later event ignored)
///
/// A round is one new key and one CSR (istio-agent makes a fresh key per rotation); its tries reuse them. Events
/// carry their round, so a late answer of an abandoned round is ignored. Failures never withdraw what was
/// delivered: the agent serves the last chain until it expires.
public struct IstioCAClientStateMachine {
    public enum Action {
        /// Make a key of `algorithm` and a CSR for `spiffeID` off the loop; feed `keyReady` or `keyFailed`.
        case generateKey(round: Int, algorithm: KeyAlgorithm, spiffeID: SPIFFEID)
        /// Dial istiod (fresh connection), verify it, send `csrPEM` with the token read now; feed `responded` or
        /// `callFailed`. Arm a deadline of `callTimeout` that feeds `callFailed(.deadlineExceeded)`.
        case sendCSR(round: Int, try: Int, csrPEM: String)
        /// Abandon the call in flight (close its connection); its late events are ignored anyway.
        case abandonCall
        /// Arm the one timer (replacing an armed one); feed `timerFired` when it fires.
        case scheduleTimer(after: Double)
        case cancelTimer
        case deliver(IdentityUpdate)
        case report(IssuerError)
    }

    public enum State: Equatable {
        case idle
        /// Until the next round: the first on the next turn, a rotation, or a back-off after a failed round.
        case waiting
        case preparing(round: Int)
        case requesting(round: Int, try: Int)
        /// Between two tries of one round.
        case pausing(round: Int, try: Int)
        case stopped
    }

    /// istio-agent's retry schedule within one CSR (grpc_retry in its CA client): 5 tries, 100 ms doubling, ±10 %.
    public static let maxTries = 5
    public static let retryBaseDelay = 0.1
    public static let retryJitter = 0.1
    /// The gRPC codes istio-agent retries within a round; any other ends the round at once.
    public static let retryableCodes: Set<GRPCStatus.Code> = [
        .cancelled, .deadlineExceeded, .resourceExhausted, .aborted, .internal, .unavailable,
    ]

    /// Why 1 s: a CA that answers with an almost expired certificate must not make us ask again in a tight loop.
    public static let minimumRotationDelay: Double = 1

    public let spiffeID: SPIFFEID
    public let algorithm: KeyAlgorithm
    /// Where istiod is, for messages.
    public let upstream: String
    public let rotation: RotationPolicy
    public private(set) var state: State = .idle
    /// Between failed rounds (retries within a round follow `retryBaseDelay`).
    public private(set) var roundBackoff: Backoff
    private var roundCounter = 0
    /// The key and CSR of the current round.
    private var pending: (round: Int, key: PrivateKey, csrPEM: String)?
    private var lastReported: (kind: IssuerError.Kind, message: String)?
    /// The update most recently delivered (served until it expires, whatever happens meanwhile).
    public private(set) var lastDelivered: IdentityUpdate?

    /// - Parameter roundBackoff: delays between failed rounds. Why 1 s doubling to 30 s: a refused token or a
    ///   down istiod is not fixed in milliseconds (the five quick tries already covered a blip), and 30 s keeps a
    ///   mesh of agents from hammering an istiod that is coming back while still renewing long before a
    ///   certificate of hours expires.
    public init(
        spiffeID: SPIFFEID, algorithm: KeyAlgorithm, upstream: String, rotation: RotationPolicy = RotationPolicy(),
        roundBackoff: Backoff = Backoff(initialDelay: 1, maximumDelay: 30, multiplier: 2, jitter: 0.1)
    ) {
        self.spiffeID = spiffeID
        self.algorithm = algorithm
        self.upstream = upstream
        self.rotation = rotation
        self.roundBackoff = roundBackoff
    }

    /// The round whose events count, if one is under way.
    public var round: Int? {
        switch state {
        case .preparing(let round), .requesting(let round, _), .pausing(let round, _): round
        case .idle, .waiting, .stopped: nil
        }
    }

    // MARK: Lifecycle

    /// The first round starts on the next turn (never inside `start`).
    public mutating func start() -> [Action] {
        guard state == .idle else { return [] }
        state = .waiting
        return [.scheduleTimer(after: 0)]
    }

    /// SIGHUP: a new round now, unless one is under way (then it is the fresh certificate already).
    public mutating func rotateNow() -> [Action] {
        guard state == .waiting else { return [] }
        return [.scheduleTimer(after: 0)]
    }

    public mutating func stop() -> [Action] {
        let inCall = if case .requesting = state { true } else { false }
        state = .stopped
        pending = nil
        return inCall ? [.cancelTimer, .abandonCall] : [.cancelTimer]
    }

    public mutating func timerFired() -> [Action] {
        switch state {
        case .waiting:
            roundCounter += 1
            state = .preparing(round: roundCounter)
            return [.generateKey(round: roundCounter, algorithm: algorithm, spiffeID: spiffeID)]
        case .pausing(let round, let previous):
            guard let pending, pending.round == round else { return [] }
            state = .requesting(round: round, try: previous + 1)
            return [.sendCSR(round: round, try: previous + 1, csrPEM: pending.csrPEM)]
        case .idle, .preparing, .requesting, .stopped:
            return []
        }
    }

    // MARK: Key

    public mutating func keyReady(round: Int, key: PrivateKey, csrPEM: String) -> [Action] {
        guard state == .preparing(round: round) else { return [] }
        pending = (round, key, csrPEM)
        state = .requesting(round: round, try: 1)
        return [.sendCSR(round: round, try: 1, csrPEM: csrPEM)]
    }

    public mutating func keyFailed(round: Int, reason: String, now: Timestamp, randomUnit: Double) -> [Action] {
        guard state == .preparing(round: round) else { return [] }
        return failRound(
            IssuerError(kind: .issuanceFailed, message: "cannot make a \(algorithm) key and CSR: \(reason)"),
            now: now, randomUnit: randomUnit)
    }

    // MARK: Call outcome

    /// istiod answered OK with `chainPEMs`.
    public mutating func responded(
        round: Int, try attempt: Int, chainPEMs: [String], fileRoots: [Certificate], now: Timestamp,
        randomUnit: Double
    ) -> [Action] {
        guard state == .requesting(round: round, try: attempt), let pending, pending.round == round else { return [] }
        let result: Result<IdentityUpdate, IssuerError>
        do throws(IssuerError) {
            result = .success(
                try IstioChain.validate(
                    chainPEMs: chainPEMs, key: pending.key, expectedID: spiffeID, fileRoots: fileRoots, now: now))
        } catch {
            result = .failure(error)
        }
        return validated(round: round, try: attempt, result, now: now, randomUnit: randomUnit)
    }

    /// The key of the round whose answer is awaited, to validate that answer with (`IstioChain.validate`, which the
    /// issuer runs off the event loop: parsing and verifying an RSA chain takes milliseconds); nil for any other
    /// round.
    public func awaitedKey(round: Int, try attempt: Int) -> PrivateKey? {
        guard state == .requesting(round: round, try: attempt), let pending, pending.round == round else { return nil }
        return pending.key
    }

    /// istiod's answer to the round, validated: what `responded` does once `IstioChain.validate` ran. A result for
    /// a round or try no longer awaited (the deadline passed meanwhile, the agent stopped) changes nothing.
    public mutating func validated(
        round: Int, try attempt: Int, _ result: Result<IdentityUpdate, IssuerError>, now: Timestamp,
        randomUnit: Double
    ) -> [Action] {
        guard state == .requesting(round: round, try: attempt), pending?.round == round else { return [] }
        let update: IdentityUpdate
        switch result {
        case .success(let validated): update = validated
        case .failure(let error):
            // A chain we cannot serve is not fixed by asking again at once: end the round, nothing served.
            return failRound(error, now: now, randomUnit: randomUnit)
        }
        self.pending = nil
        lastDelivered = update
        lastReported = nil
        roundBackoff.reset()
        state = .waiting
        // Like istio-agent, the lifetime counts from receipt, not from notBefore: CAs backdate notBefore for clock
        // skew (istiod by a minute), which would otherwise pull the rotation forward, to "now" for short TTLs.
        let rotateAt = rotation.rotateAt(
            notBefore: max(now, update.svid.notBefore), notAfter: update.svid.notAfter, randomUnit: randomUnit)
        let delay = max(Self.minimumRotationDelay, Double(rotateAt - now))
        return [.deliver(update), .scheduleTimer(after: delay)]
    }

    /// The call failed: a gRPC status from istiod, or a transport failure reported as UNAVAILABLE (dial, TLS,
    /// connection lost), or the deadline (DEADLINE_EXCEEDED).
    public mutating func callFailed(
        round: Int, try attempt: Int, status: GRPCStatus, now: Timestamp, randomUnit: Double
    ) -> [Action] {
        guard state == .requesting(round: round, try: attempt) else { return [] }
        if Self.retryableCodes.contains(status.code), attempt < Self.maxTries {
            state = .pausing(round: round, try: attempt)
            return [.abandonCall, .scheduleTimer(after: Self.retryDelay(afterTry: attempt, randomUnit: randomUnit))]
        }
        let kind: IssuerError.Kind =
            switch status.code {
            case .unauthenticated, .permissionDenied: .permissionDenied
            case .unavailable, .deadlineExceeded, .cancelled: .upstreamUnavailable
            default: .issuanceFailed
            }
        let tries = attempt == 1 ? "" : " (\(attempt) tries)"
        return [.abandonCall]
            + failRound(
                IssuerError(kind: kind, message: "istiod at \(upstream) refused the CSR\(tries): \(status)"),
                now: now, randomUnit: randomUnit)
    }

    /// The try could not even start for a local reason (the token or root-cert file is missing or unusable):
    /// nothing was sent, and retrying in 100 ms will not make the file appear, so the round ends with `error`.
    public mutating func cannotSend(
        round: Int, try attempt: Int, error: IssuerError, now: Timestamp, randomUnit: Double
    ) -> [Action] {
        guard state == .requesting(round: round, try: attempt) else { return [] }
        return [.abandonCall] + failRound(error, now: now, randomUnit: randomUnit)
    }

    /// Delay before try `attempt + 1`: 100 ms, 200 ms, 400 ms, 800 ms, each ±10 %.
    public static func retryDelay(afterTry attempt: Int, randomUnit: Double) -> Double {
        let base = retryBaseDelay * Double(1 << max(0, min(attempt - 1, 16)))
        let unit = min(max(randomUnit, 0), 1)
        return base * (1 + retryJitter * (2 * unit - 1))
    }

    private mutating func failRound(_ error: IssuerError, now: Timestamp, randomUnit: Double) -> [Action] {
        pending = nil
        state = .waiting
        var delay = roundBackoff.nextDelay(randomUnit: randomUnit)
        // Never sleep past the served certificate's expiry: try again while it is still good, at least every
        // second near the end.
        if let served = lastDelivered?.svid.notAfter, served > now {
            delay = min(delay, max(1, Double(served - now) / 2))
        }
        var report = error
        report.retryAfter = delay
        return [.scheduleTimer(after: delay)] + reportOnce(report)
    }

    /// One report per distinct failure since the last success: an outage is one log line, not one per round.
    private mutating func reportOnce(_ error: IssuerError) -> [Action] {
        if let lastReported, lastReported.kind == error.kind, lastReported.message == error.message { return [] }
        lastReported = (error.kind, error.message)
        return [.report(error)]
    }
}
