public import PKI

/// When the local CA replaces its self-made root: a pure timeline over the current root's lifetime and the SVID
/// lifetime `S` (no clock inside; `now` is a parameter), like `RotationPolicy` for SVIDs.
///
///     current root: created                                                                 notAfter
///          |------------------------------------------------------------------------------------|
///                                           publish              activate              retire
///     bundle   [current]                    [current, successor ......................] [successor]
///     signs    current ..........................................|successor ──────────────────────►
///                                           |<----- lead ------->|<-------- S -------->|<- S/2 ->|
///
///     publish   the successor is created, saved in the state dir and added to every bundle;
///               lead = max(S + S/2, current lifetime / 6): at least one SVID lifetime plus a margin
///     activate  the successor signs (the SVID is reissued at once); = notAfter - S - S/2, so the old root's
///               last SVID expires S/2 before the root does and is never cut short
///     retire    the last SVID the old root signed has expired (activate + S): the old root leaves the bundle and
///               the successor becomes the current root, whose own timeline starts over
///
/// Why these numbers: a peer trusts a new SVID only once it holds the root that signed it. Every consumer that
/// renews at least once per SVID lifetime has fetched the successor before it signs (`lead` ≥ S + S/2); a root
/// lifetime / 6 makes the overlap long with long-lived roots (a year: two months), so an agent that was down for a
/// while, or a peer that refreshes its bundle rarely, still sees it. Phases of two roots never overlap (at most two
/// roots exist) when the root lifetime is at least 5.5 × S; `minimumRootToSVIDLifetimeRatio` rounds that up.
///
/// Late events (the agent was stopped): a successor created late still gets `lead` ≥ S + S/2 before it signs,
/// unless the current root expires first, which forces the switch at its expiry (nothing can sign with it).
public struct RootRotationSchedule: Sendable, Hashable {
    /// The smallest root lifetime / SVID lifetime the timeline holds: 5.5 is needed (lead S + S/2, then S until
    /// retirement, then S/2 of margin, then the successor signs S + S/2 before its own successor is published, at
    /// most two roots at a time); 6 leaves the successor a little time as the only root.
    public static let minimumRootToSVIDLifetimeRatio: Int64 = 6

    /// SVID lifetime in seconds (the `--svid-ttl`).
    public var svidLifetime: Int64

    public init(svidLifetime: Int64) {
        self.svidLifetime = max(svidLifetime, 1)
    }

    /// Time left between the old root's last SVID expiry and the root's own expiry, and added to the minimum lead.
    public var margin: Int64 { max(svidLifetime / 2, 1) }

    /// What the schedule knows of a root: when it was created and when it expires.
    public struct Root: Sendable, Hashable {
        public var createdAt: Timestamp
        public var notAfter: Timestamp

        public init(createdAt: Timestamp, notAfter: Timestamp) {
            self.createdAt = createdAt
            self.notAfter = notAfter
        }
    }

    /// Which of the (at most two) roots is meant.
    public enum Role: Sendable, Hashable {
        case current
        case successor
    }

    /// A change of the state dir that is due now; the caller performs it and asks again.
    public enum Action: Sendable, Hashable {
        /// Create and save a successor root and add it to the bundle.
        case createSuccessor
        /// Drop the current root; the successor becomes the current root.
        case retireCurrent
    }

    /// The answer for one `now`.
    public struct Decision: Sendable, Hashable {
        /// To do before anything else (then ask again); nil when the state dir is as it should be.
        public var due: Action?
        /// The root that signs SVIDs now.
        public var signer: Role
        /// The roots every bundle carries now, oldest first.
        public var bundle: [Role]
        /// When the answer changes next (the one timer to arm); nil when `due` is set.
        public var nextEventAt: Timestamp?

        public init(due: Action?, signer: Role, bundle: [Role], nextEventAt: Timestamp?) {
            self.due = due
            self.signer = signer
            self.bundle = bundle
            self.nextEventAt = nextEventAt
        }
    }

    /// The three instants of the current root's timeline (see the diagram).
    public struct Timeline: Sendable, Hashable {
        public var publishAt: Timestamp
        public var activateAt: Timestamp
        public var retireAt: Timestamp
    }

    /// The timeline of `current`, given when its successor was created (nil: not yet).
    public func timeline(current: Root, successorCreatedAt: Timestamp?) -> Timeline {
        let lifetime = current.notAfter - current.createdAt
        let lead = max(svidLifetime + margin, lifetime / 6)
        let plannedActivation = current.notAfter - svidLifetime - margin
        let publishAt = plannedActivation - lead
        var activateAt = plannedActivation
        if let created = successorCreatedAt {
            // A late successor still gets one SVID lifetime plus the margin in the bundle before it signs, unless
            // the current root expires first.
            activateAt = min(max(plannedActivation, created + svidLifetime + margin), current.notAfter)
        }
        return Timeline(
            publishAt: publishAt, activateAt: activateAt, retireAt: min(activateAt + svidLifetime, current.notAfter))
    }

    /// Which roots are in the bundle at `now`, which signs, what is due and when the next event is.
    public func decide(now: Timestamp, current: Root, successor: Root?) -> Decision {
        let times = timeline(current: current, successorCreatedAt: successor?.createdAt)
        guard successor != nil else {
            if now >= times.publishAt {
                return Decision(due: .createSuccessor, signer: .current, bundle: [.current], nextEventAt: nil)
            }
            return Decision(due: nil, signer: .current, bundle: [.current], nextEventAt: times.publishAt)
        }
        if now >= times.retireAt {
            return Decision(due: .retireCurrent, signer: .successor, bundle: [.successor], nextEventAt: nil)
        }
        if now >= times.activateAt {
            return Decision(
                due: nil, signer: .successor, bundle: [.current, .successor], nextEventAt: times.retireAt)
        }
        return Decision(due: nil, signer: .current, bundle: [.current, .successor], nextEventAt: times.activateAt)
    }
}

/// When to warn that an operator CA (`--ca-cert`), which sds-agent cannot rotate, is about to expire: from
/// `warningPeriod` before its notAfter, then once every `repeatInterval`. Pure: the caller keeps the last warning.
public enum CAExpiryWarning {
    /// 30 days: enough for an operator to get a new intermediate issued and rolled out.
    public static let warningPeriod: Int64 = 30 * 86_400
    /// Once a day: visible in any day's logs without flooding them.
    public static let repeatInterval: Int64 = 86_400

    /// The next time to warn about a CA expiring at `notAfter`, given the last warning (nil: none yet).
    public static func nextWarningAt(notAfter: Timestamp, lastWarnedAt: Timestamp?) -> Timestamp {
        let start = notAfter - warningPeriod
        guard let last = lastWarnedAt else { return start }
        return max(start, last + repeatInterval)
    }
}
