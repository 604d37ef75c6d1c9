public import GRPC
public import Issuance
public import PKI
public import SPIFFE
public import Wire

/// The two server streams the client keeps open on its one connection.
public enum WorkloadAPIStream: String, Sendable, Hashable {
    case x509SVID = "FetchX509SVID"
    case x509Bundles = "FetchX509Bundles"
}

/// The Workload API client as a pure value: connection lifecycle, backoff, deduplication of error reports,
/// choice of the SVID and change detection. Events in, actions out; the I/O shell (`WorkloadAPIIssuer`) dials,
/// pumps bytes and runs timers. No clock, no randomness of its own: both are event parameters.
///
///              start                retry timer                 first valid SVID
///     idle ─────────────► waiting ─────────────► connecting ──────────────────► streaming
///                           ▲  ▲                  │   (dialed, both streams      │  (delivers each change)
///                           │  └──── failed ──────┘    opened, nothing usable)   │
///                           │   (also: no X509SVIDResponse within the first-     │
///                           │    response deadline: a wedged peer)               │
///                           │   dial failed, stream ended, connection lost       │
///                           │   (reported once per distinct error)               │
///                           └────────────── stream ended / connection lost ──────┘
///                                           (re-opened at once, reported only if the re-open fails)
///     stop: any state ──► stopped (timer cancelled, connection closed; every later event ignored)
///
/// Each connection attempt has a number; events of an older attempt (a second stream finishing after the
/// connection was already torn down) are ignored, so the shell may report whatever its callbacks see.
///
/// A peer that accepts the connection (even completes the HTTP/2 handshake) but never answers would otherwise
/// hold the machine in `connecting` forever: no retry, no report. The Workload API spec has the server answer
/// the first FetchX509SVID message at once (SPIRE does; with no identity it ends the stream with
/// PERMISSION_DENIED instead), so silence past `firstResponseTimeout` means a wedged peer, and is a failure
/// like any other (reported once, connection torn down, retried with backoff). Any decodable X509SVIDResponse
/// ends the wait, even one without a usable SVID: that peer is alive, its answer is reported as it is, and
/// tearing it down every few seconds would only alternate two reports.
///
/// Backoff grows with each failure and resets when a connection yields a valid SVID. Errors are reported when
/// they differ (kind and message) from the last one reported since the last good state, so a caller logging
/// every `onError` sees one line per outage, not one per retry.
public struct WorkloadAPIClientStateMachine {
    public enum Action {
        /// Dial the socket and open both streams for `attempt`; on failure, feed `connectFailed`. Also arm a
        /// timer of `firstResponseTimeout` seconds that feeds `firstResponseDeadlinePassed(attempt:)` (it may
        /// be cancelled once `awaitingFirstResponse` is no longer `attempt`; a late one is ignored anyway).
        case connect(attempt: Int)
        /// Tear down the current connection (its calls' late events may still be fed; they are ignored).
        case closeConnection
        /// Arm the one retry timer (replacing any armed one); feed `retryTimerFired` when it fires.
        case scheduleRetry(after: Double)
        case cancelRetry
        /// Hand the complete current state to the consumer (`onUpdate`).
        case deliver(IdentityUpdate)
        /// Tell the consumer (`onError`); the last delivered update stays valid.
        case report(IssuerError)
    }

    public enum State: Equatable {
        case idle
        case waiting
        case connecting(attempt: Int)
        case streaming(attempt: Int)
        case stopped
    }

    /// Where the upstream lives, for messages.
    public let upstream: String
    /// The SVID to pick; nil takes the first one offered.
    public let wantedID: SPIFFEID?
    public private(set) var state: State = .idle
    public private(set) var backoff: Backoff
    /// Seconds a connection may stay silent before its first X509SVIDResponse.
    public let firstResponseTimeout: Double
    private var attemptCounter = 0
    /// The attempt whose connection has sent an X509SVIDResponse (usable or not): its peer is not silent.
    private var answeredAttempt: Int?
    /// The last error reported since things were last good: identical ones are not reported again.
    private var lastReported: (kind: IssuerError.Kind, message: String)?
    /// The last valid SVID and its own bundle (kept across reconnects: errors never invalidate it).
    private var current: (svid: X509SVID, bundle: X509Bundle)?
    /// `federated_bundles` of the last X509SVIDResponse.
    private var svidStreamBundles: [TrustDomain: X509Bundle] = [:]
    /// The last X509BundlesResponse's bundles; authoritative (a removal shows here) once one arrived.
    private var bundleStreamBundles: [TrustDomain: X509Bundle]?
    private var deliveredFingerprint: [[UInt8]]?
    /// The update most recently delivered.
    public private(set) var lastDelivered: IdentityUpdate?

    /// - Parameter firstResponseTimeout: how long a connection may stay without any X509SVIDResponse before
    ///   it counts as failed. SPIRE answers the first FetchX509SVID at once (the Workload API spec asks
    ///   for it), so 10 s is far beyond any healthy answer yet short enough that a wedged agent is noticed.
    public init(
        upstream: String, wantedID: SPIFFEID?, backoff: Backoff = Backoff(), firstResponseTimeout: Double = 10
    ) {
        self.upstream = upstream
        self.wantedID = wantedID
        self.backoff = backoff
        self.firstResponseTimeout = firstResponseTimeout
    }

    // MARK: Lifecycle

    /// Connects on the next turn (never inside `start`).
    public mutating func start() -> [Action] {
        guard state == .idle else { return [] }
        state = .waiting
        return [.scheduleRetry(after: 0)]
    }

    public mutating func retryTimerFired() -> [Action] {
        guard state == .waiting else { return [] }
        attemptCounter += 1
        state = .connecting(attempt: attemptCounter)
        return [.connect(attempt: attemptCounter)]
    }

    /// SPIRE rotates by itself and pushes the result, so a rotation request is only a hint: while connected it
    /// changes nothing; while waiting out a backoff it retries now (on the next turn), without resetting the
    /// backoff.
    public mutating func rotateNow() -> [Action] {
        guard state == .waiting else { return [] }
        return [.scheduleRetry(after: 0)]
    }

    public mutating func stop() -> [Action] {
        let wasConnected = attempt != nil
        state = .stopped
        return wasConnected ? [.cancelRetry, .closeConnection] : [.cancelRetry]
    }

    /// The attempt whose connection is open, if any.
    public var attempt: Int? {
        switch state {
        case .connecting(let attempt), .streaming(let attempt): attempt
        case .idle, .waiting, .stopped: nil
        }
    }

    /// The attempt whose connection has not answered FetchX509SVID yet (its first-response timer matters).
    public var awaitingFirstResponse: Int? {
        guard case .connecting(let attempt) = state, answeredAttempt != attempt else { return nil }
        return attempt
    }

    // MARK: Failures

    /// Dialing (or opening the streams) failed.
    public mutating func connectFailed(attempt: Int, reason: String, randomUnit: Double) -> [Action] {
        guard self.attempt == attempt else { return [] }
        return fail(
            IssuerError(kind: .upstreamUnavailable, message: "cannot reach the Workload API at \(upstream): \(reason)"),
            closeConnection: false, randomUnit: randomUnit)
    }

    /// One of the streams finished (with trailers, a reset, or because the connection went).
    public mutating func streamEnded(
        attempt: Int, stream: WorkloadAPIStream, status: GRPCStatus, randomUnit: Double
    ) -> [Action] {
        guard self.attempt == attempt else { return [] }
        let error: IssuerError
        switch status.code {
        case .permissionDenied:
            // SPIRE's answer while the workload has no registration entry: "no identity issued".
            error = IssuerError(
                kind: .permissionDenied,
                message: "the Workload API at \(upstream) issues no identity to this workload: \(status.message)")
        case .invalidArgument, .unimplemented, .unauthenticated:
            error = IssuerError(
                kind: .issuanceFailed, message: "the Workload API at \(upstream) rejected \(stream.rawValue): \(status)"
            )
        default:
            error = IssuerError(
                kind: .upstreamUnavailable,
                message: "the Workload API at \(upstream) ended \(stream.rawValue): \(status)")
        }
        return fail(
            error, closeConnection: true, randomUnit: randomUnit, quietIfStreaming: status.code != .permissionDenied)
    }

    /// The first-response timer of `attempt` fired. Only a connection still waiting for its first answer fails;
    /// a stale timer (a newer attempt, the connection answered or is streaming, stopped) changes nothing.
    public mutating func firstResponseDeadlinePassed(attempt: Int, randomUnit: Double) -> [Action] {
        guard awaitingFirstResponse == attempt else { return [] }
        return fail(
            IssuerError(
                kind: .upstreamUnavailable,
                message: "no response from the Workload API at \(upstream) within \(Self.seconds(firstResponseTimeout))"
            ),
            closeConnection: true, randomUnit: randomUnit)
    }

    /// "10 s" rather than "10.0 s".
    private static func seconds(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return "\(Int(value)) s" }
        return "\(value) s"
    }

    /// The socket closed or the HTTP/2 session broke.
    public mutating func connectionLost(attempt: Int, reason: String, randomUnit: Double) -> [Action] {
        guard self.attempt == attempt else { return [] }
        return fail(
            IssuerError(kind: .upstreamUnavailable, message: "lost the Workload API at \(upstream): \(reason)"),
            closeConnection: true, randomUnit: randomUnit, quietIfStreaming: true)
    }

    /// A message that does not decode: the connection cannot be trusted to be in step; start over.
    public mutating func malformedMessage(
        attempt: Int, stream: WorkloadAPIStream, reason: String, randomUnit: Double
    ) -> [Action] {
        guard self.attempt == attempt else { return [] }
        return fail(
            IssuerError(
                kind: .issuanceFailed,
                message: "the Workload API at \(upstream) sent a malformed \(stream.rawValue) message: \(reason)"),
            closeConnection: true, randomUnit: randomUnit)
    }

    /// - Parameter quietIfStreaming: a healthy stream that ends is normal (SPIRE restarts, connection ageing): it
    ///   is re-opened without a report; only a failed re-open is reported.
    private mutating func fail(
        _ error: IssuerError, closeConnection: Bool, randomUnit: Double, quietIfStreaming: Bool = false
    ) -> [Action] {
        let wasStreaming = if case .streaming = state { true } else { false }
        let delay = backoff.nextDelay(randomUnit: randomUnit)
        state = .waiting
        var actions: [Action] = closeConnection ? [.closeConnection] : []
        actions.append(.scheduleRetry(after: delay))
        if !(wasStreaming && quietIfStreaming) {
            var report = error
            report.retryAfter = delay
            actions += reportOnce(report)
        }
        return actions
    }

    private mutating func reportOnce(_ error: IssuerError) -> [Action] {
        if let lastReported, lastReported.kind == error.kind, lastReported.message == error.message { return [] }
        lastReported = (error.kind, error.message)
        return [.report(error)]
    }

    // MARK: Messages

    /// What parsing a message needs from the machine, taken when the parse starts: the parse itself
    /// (`UpstreamIdentity`, certificate decoding and checks, ~0.1 ms a certificate in OpenSSL 3.0) can then run off
    /// the event loop, and its result is handed back with `received(_:attempt:now:)`.
    public struct ParseContext: Sendable {
        let wantedID: SPIFFEID?
        let svidStreamBundles: [TrustDomain: X509Bundle]
        let bundleStreamBundles: [TrustDomain: X509Bundle]?
        let ownBundle: X509Bundle?

        /// Every bundle held, for `UpstreamIdentity.bundles` to take instead of parsing the same bytes again (SPIRE
        /// sends each bundle on both streams); `first`'s entries, the same stream's last message, win. Built by the
        /// parse, off the loop.
        func held(preferring first: [TrustDomain: X509Bundle]) -> [TrustDomain: X509Bundle] {
            var all = first
            for (trustDomain, bundle) in svidStreamBundles where all[trustDomain] == nil { all[trustDomain] = bundle }
            for (trustDomain, bundle) in bundleStreamBundles ?? [:] where all[trustDomain] == nil {
                all[trustDomain] = bundle
            }
            if let ownBundle, all[ownBundle.trustDomain] == nil { all[ownBundle.trustDomain] = ownBundle }
            return all
        }
    }

    /// The context for parsing the next message; take it when the parse starts, after the previous message was
    /// handed back, so each message can reuse what the one before it brought.
    public var parseContext: ParseContext {
        ParseContext(
            wantedID: wantedID, svidStreamBundles: svidStreamBundles, bundleStreamBundles: bundleStreamBundles,
            ownBundle: current?.bundle)
    }

    /// An X509SVIDResponse, parsed: its chosen SVID with its own bundle (or why there is none) and its federated
    /// bundles.
    public struct ParsedX509SVIDResponse: Sendable {
        let chosen: Result<(svid: X509SVID, bundle: X509Bundle), IssuerError>
        let federated: (bundles: [TrustDomain: X509Bundle], problems: [String])
    }

    /// An X509BundlesResponse, parsed.
    public struct ParsedX509BundlesResponse: Sendable {
        let bundles: [TrustDomain: X509Bundle]
        let problems: [String]
    }

    /// Parses `response` (pure, any thread).
    public static func parse(_ response: X509SVIDResponse, context: ParseContext, now: Timestamp)
        -> ParsedX509SVIDResponse
    {
        let chosen: Result<(svid: X509SVID, bundle: X509Bundle), IssuerError>
        do throws(IssuerError) {
            chosen = .success(
                try UpstreamIdentity.svid(
                    from: response, wanted: context.wantedID, now: now,
                    fallbackBundles: context.bundleStreamBundles ?? [:],
                    reusing: context.ownBundle.map { [$0] } ?? []))
        } catch {
            chosen = .failure(error)
        }
        // Not needed when the SVID is unusable (the message is then only reported).
        let federated =
            if case .success = chosen {
                UpstreamIdentity.bundles(
                    response.federatedBundles, reusing: context.held(preferring: context.svidStreamBundles))
            } else {
                (bundles: [TrustDomain: X509Bundle](), problems: [String]())
            }
        return ParsedX509SVIDResponse(chosen: chosen, federated: federated)
    }

    /// Parses `response` (pure, any thread).
    public static func parse(_ response: X509BundlesResponse, context: ParseContext) -> ParsedX509BundlesResponse {
        let parsed = UpstreamIdentity.bundles(
            response.bundles, reusing: context.held(preferring: context.bundleStreamBundles ?? [:]))
        return ParsedX509BundlesResponse(bundles: parsed.bundles, problems: parsed.problems)
    }

    /// An X509SVIDResponse arrived on `attempt`'s connection: parsed here, on the caller's thread.
    public mutating func received(_ response: X509SVIDResponse, attempt: Int, now: Timestamp) -> [Action] {
        guard self.attempt == attempt else { return [] }
        return received(Self.parse(response, context: parseContext, now: now), attempt: attempt, now: now)
    }

    /// An X509SVIDResponse of `attempt`'s connection, parsed (`parse(_:context:now:)`).
    public mutating func received(_ response: ParsedX509SVIDResponse, attempt: Int, now: Timestamp) -> [Action] {
        guard self.attempt == attempt else { return [] }
        answeredAttempt = attempt
        let chosen: (svid: X509SVID, bundle: X509Bundle)
        switch response.chosen {
        case .success(let value): chosen = value
        case .failure(let error):
            // Keep the stream: SPIRE sends the next state when it changes. Keep the last good SVID.
            return reportOnce(error)
        }
        if case .connecting = state {
            // A connection that yields a valid SVID is good: the next failure starts the backoff afresh and is
            // worth a report even if it looks like the last one.
            state = .streaming(attempt: attempt)
            backoff.reset()
            lastReported = nil
        }
        current = chosen
        svidStreamBundles = response.federated.bundles
        return deliverIfChanged(now: now) + reportProblems(response.federated.problems)
    }

    /// An X509BundlesResponse arrived on `attempt`'s connection: parsed here, on the caller's thread. The SVID it is
    /// delivered with was checked when it arrived; `now` checks it again, since the bundles may come after it
    /// expired (found by fuzzing: an expired SVID was delivered again with new bundles).
    public mutating func received(_ response: X509BundlesResponse, attempt: Int, now: Timestamp) -> [Action] {
        guard self.attempt == attempt else { return [] }
        return received(Self.parse(response, context: parseContext), attempt: attempt, now: now)
    }

    /// An X509BundlesResponse of `attempt`'s connection, parsed (`parse(_:context:)`).
    public mutating func received(_ response: ParsedX509BundlesResponse, attempt: Int, now: Timestamp) -> [Action] {
        guard self.attempt == attempt else { return [] }
        bundleStreamBundles = response.bundles
        return deliverIfChanged(now: now) + reportProblems(response.problems)
    }

    private mutating func reportProblems(_ problems: [String]) -> [Action] {
        guard !problems.isEmpty else { return [] }
        return reportOnce(
            IssuerError(
                kind: .issuanceFailed,
                message: "ignoring unusable bundles from the Workload API at \(upstream): "
                    + problems.joined(separator: "; ")))
    }

    private mutating func deliverIfChanged(now: Timestamp) -> [Action] {
        guard let current else { return [] }
        // The whole chain, not only the leaf's dates: an intermediate may have expired since the SVID arrived
        // (found by fuzzing).
        do { try current.svid.verify(against: current.bundle, at: now) } catch {
            return reportOnce(
                IssuerError(
                    kind: .issuanceFailed,
                    message: "the Workload API's last SVID (\(current.svid.spiffeID)) does not verify now: \(error); "
                        + "waiting for its next one"))
        }
        // The bundle stream, once heard from, is the complete truth (it shows removals); before that, the SVID
        // response's federated bundles stand in.
        var federated = bundleStreamBundles ?? svidStreamBundles
        federated[current.bundle.trustDomain] = nil
        let update = UpstreamIdentity.update(svid: current.svid, ownBundle: current.bundle, federated: federated)
        let fingerprint = UpstreamIdentity.fingerprint(of: update)
        guard fingerprint != deliveredFingerprint else { return [] }
        deliveredFingerprint = fingerprint
        lastDelivered = update
        lastReported = nil
        return [.deliver(update)]
    }
}
