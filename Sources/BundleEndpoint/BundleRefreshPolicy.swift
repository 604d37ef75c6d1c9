public import SPIFFE

/// When to fetch a federated trust domain's bundle again, and whether a fetched one replaces the last. Pure: the
/// caller supplies the random sample and keeps the count of failures.
///
///     fetched, accepted ──► wait refreshDelay(hint)        (300 s without a hint; 10 s ... 3600 s)
///     failed (n-th time) ──► wait retryDelay(n)            (1, 2, 4 ... s, jittered, never past the refresh delay)
public struct BundleRefreshPolicy: Sendable, Hashable {
    /// Why 300 s without a hint: a root rotation then reaches this agent within five minutes, at one small request
    /// per five minutes per federated domain.
    public static let defaultRefreshSeconds: Double = 300
    /// Why at least 10 s: a hint of 0 or 1 s (a typo, or a hostile endpoint) must not turn every agent into a
    /// load generator against it.
    public static let minimumRefreshSeconds: Double = 10
    /// Why at most an hour: a hint of days (or a hostile one) would leave this agent without a rotated root for
    /// that long; an hour bounds how stale a federated bundle gets while the endpoint is up.
    public static let maximumRefreshSeconds: Double = 3600

    /// The first retry after a failure. Why 1 s: the usual failure is an endpoint restarting or a load balancer
    /// blip, gone in seconds; waiting a whole refresh interval would keep a stale bundle minutes longer, while
    /// doubling from 1 s reaches even the longest interval (3600 s) in 12 failures, so a dead endpoint costs a
    /// dozen requests per interval at most.
    public var initialRetrySeconds: Double
    /// ± this fraction of each retry delay, uniformly. Why 0.2: agents federating with the same endpoint all fail
    /// when it goes down; without jitter they would all retry in the same second when it comes back.
    public var retryJitter: Double

    public init(initialRetrySeconds: Double = 1, retryJitter: Double = 0.2) {
        self.initialRetrySeconds = max(0.001, initialRetrySeconds)
        self.retryJitter = min(max(retryJitter, 0), 1)
    }

    /// Seconds until the next fetch after `bundle` was accepted: its `spiffe_refresh_hint`, clamped.
    public func refreshDelay(after bundle: SPIFFEBundle) -> Double { refreshDelay(hint: bundle.refreshHint) }

    /// Seconds until the next fetch for a `spiffe_refresh_hint` (nil: none in the document).
    public func refreshDelay(hint: Int64?) -> Double {
        guard let hint else { return Self.defaultRefreshSeconds }
        // Clamped as an integer first: an outside Int64 near its limits converts to Double without surprise.
        return Double(min(max(hint, Int64(Self.minimumRefreshSeconds)), Int64(Self.maximumRefreshSeconds)))
    }

    /// Seconds until the retry after the `failures`-th failure in a row (1 for the first): `initialRetrySeconds`
    /// doubled per earlier failure, jittered by `randomUnit` (uniform in [0, 1): 0.5 is no jitter), and never more
    /// than `refreshDelay` — retrying a failed fetch must not be slower than fetching a working one.
    public func retryDelay(failures: Int, refreshDelay: Double, randomUnit: Double) -> Double {
        let cap = max(refreshDelay, initialRetrySeconds)
        var base = initialRetrySeconds
        // Stops doubling at the cap, so a long outage's count cannot overflow the exponent.
        var step = 1
        while step < failures && base < cap {
            base *= 2
            step += 1
        }
        let unit = min(max(randomUnit, 0), 1)
        let jittered = min(base, cap) * (1 + retryJitter * (2 * unit - 1))
        return min(max(jittered, 0.001), cap)
    }

    /// Why a fetched bundle is refused in favour of the one held (nil: accept it).
    ///
    /// - A bundle for another trust domain: the caller parsed it for the wrong one.
    /// - No X.509 authority: every peer of the domain would become untrusted (`SPIFFEBundle.parse` already refuses
    ///   such a document; checked again for bundles built otherwise).
    /// - A `spiffe_sequence` lower than the held bundle's: an older document, replayed or served by a lagging
    ///   replica, must not undo a root rotation. An equal sequence is the same document served again; a document
    ///   without a sequence cannot be ordered and is accepted (the spec makes the field optional).
    public func refusal(new: SPIFFEBundle, previous: SPIFFEBundle?, trustDomain: TrustDomain) -> String? {
        guard new.x509.trustDomain == trustDomain else {
            return "the bundle is for trust domain \(new.x509.trustDomain), not \(trustDomain)"
        }
        guard !new.x509.certificates.isEmpty else { return "the bundle of \(trustDomain) has no X.509 authority" }
        if let sequence = new.sequence, let held = previous?.sequence, sequence < held {
            return "the bundle of \(trustDomain) has spiffe_sequence \(sequence), lower than the held \(held)"
        }
        return nil
    }

    /// What to do with a fetched bundle.
    public enum Acceptance: Sendable, Equatable {
        case accept
        case refuse(reason: String)
    }

    /// `refusal(new:previous:trustDomain:)` as a verdict.
    public func accept(new: SPIFFEBundle, previous: SPIFFEBundle?, trustDomain: TrustDomain) -> Acceptance {
        refusal(new: new, previous: previous, trustDomain: trustDomain).map { .refuse(reason: $0) } ?? .accept
    }
}
