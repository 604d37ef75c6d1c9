public import SPIFFE

/// What an issuer delivers: the workload's current X509-SVID and the bundles to trust.
public struct IdentityUpdate: Sendable {
    public var svid: X509SVID
    /// The SVID's own trust domain first, then federated trust domains (each at most once).
    public var bundles: [X509Bundle]

    public init(svid: X509SVID, bundles: [X509Bundle]) {
        self.svid = svid
        self.bundles = bundles
    }
}

/// Why an issuer could not deliver. The agent keeps serving the last good SVID meanwhile.
public struct IssuerError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// Signing failed (local CA) or the upstream returned something unusable.
        case issuanceFailed
        /// The upstream (e.g. the SPIRE Workload API socket) cannot be reached.
        case upstreamUnavailable
        /// The upstream refused: this workload has no identity there.
        case permissionDenied
    }

    public var kind: Kind
    public var message: String
    /// Seconds until the issuer tries again by itself; nil when it will not retry on its own.
    public var retryAfter: Double?

    public init(kind: Kind, message: String, retryAfter: Double? = nil) {
        self.kind = kind
        self.message = message
        self.retryAfter = retryAfter
    }

    public var description: String {
        let retry = retryAfter.map { " (retrying in \(($0 * 1000).rounded() / 1000) s)" } ?? ""
        return "\(message)\(retry)"
    }
}

/// A source of one workload identity (an X509-SVID) and its trust bundles.
///
/// Contract, for every implementation (local CA, SPIRE Workload API client, test fake):
/// - **Threading.** All methods are called on the event-loop thread, and the callbacks are invoked on it
///   too, never from inside `start`, `rotateNow` or `stop` (at the earliest on the next loop turn).
/// - **Request.** What identity is issued (SPIFFE ID, TTL) is fixed when the issuer is constructed; an
///   issuer serves exactly one SVID at a time.
/// - **TTL.** An issuer that signs (the local CA) uses its configured TTL, capped by its CA's own expiry; an
///   issuer that relays (SPIRE) takes the upstream's lifetime. Either way the issuer renews by itself before
///   expiry (see `RotationPolicy`) and delivers the new SVID with `onUpdate`; the consumer never polls.
/// - **Updates.** `onUpdate` carries the complete current state (SVID and all bundles), not a delta; it is
///   called once the first SVID exists and again whenever the SVID or any bundle changes. Every SVID it
///   carries has passed the X509-SVID rules at the time of delivery.
/// - **Errors.** `onError` reports a failed attempt; the issuer retries with backoff by itself
///   (`IssuerError.retryAfter`). Errors never invalidate the last update: keep serving it.
/// - **Cancellation.** `stop()` cancels timers and in-flight work; no callback runs after it returns.
///   An issuer is started at most once.
public protocol Issuer: AnyObject {
    /// Starts issuing; see the protocol's contract for when the callbacks run.
    func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void)
    /// Asks for a fresh SVID now (SIGHUP). Issuers that rotate upstream may treat it as a hint.
    func rotateNow()
    /// Stops; no callback runs afterwards.
    func stop()
}

/// The callbacks an `Issuer` was started with, held by its I/O shell: set by `start` (once), dropped by `stop`, after
/// which nothing is delivered or reported — the contract every issuer states.
public struct IssuerCallbacks {
    private var handlers: (onUpdate: (IdentityUpdate) -> Void, onError: (IssuerError) -> Void)?

    public init() {}

    /// Takes the callbacks; false when already started (a second `start` is ignored).
    public mutating func start(
        onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void
    ) -> Bool {
        guard handlers == nil else { return false }
        handlers = (onUpdate, onError)
        return true
    }

    public mutating func stop() { handlers = nil }

    /// Started and not stopped: callbacks (of any kind) may be delivered.
    public var isStarted: Bool { handlers != nil }

    public func deliver(_ update: IdentityUpdate) { handlers?.onUpdate(update) }

    public func report(_ error: IssuerError) { handlers?.onError(error) }
}
