/// Follows the version each benchmark stream holds, to tell when every stream got its first secret and when a
/// rotation reached the last one. Pure: the caller brings the clock readings.
///
///     waitingForFirst ──(every stream answered)──► ready ──beginPush(at:)──► pushing
///           ▲                                        ▲                          │
///           │                                        └──(every stream has a ────┘
///           │                                            version ≠ its baseline): lastPush = t − start
///     (a stream answers with its first version: counted once)
///
/// A response that repeats a stream's baseline version (e.g. a late answer to an ACK) is not progress.
public struct PushTracker<Version: Equatable & Sendable>: Sendable {
    public enum State: Sendable, Equatable {
        case waitingForFirst
        case ready
        case pushing(startNanos: UInt64)
    }

    public private(set) var state: State = .waitingForFirst
    /// The newest version each stream received; nil until its first response.
    public private(set) var versions: [Version?]
    /// Streams that answered at least once.
    public private(set) var answeredCount = 0
    /// Duration of the last completed push, in nanoseconds.
    public private(set) var lastPushNanos: UInt64?
    /// When the last stream got its first response, in the caller's clock.
    public private(set) var readyAtNanos: UInt64?

    private var baseline: [Version?] = []
    private var updated: [Bool] = []
    private var pendingCount = 0

    public init(streamCount: Int) {
        versions = Array(repeating: nil, count: streamCount)
    }

    public var streamCount: Int { versions.count }

    /// Records that `stream` received `version` at `nanos`.
    // Specialised for sds-bench's digests: unspecialised, this generic code tripled the client's bookkeeping cost.
    @_specialize(exported:true,where Version == UInt64)
    public mutating func received(stream: Int, version: Version, at nanos: UInt64) {
        if versions[stream] == nil { answeredCount += 1 }
        versions[stream] = version
        switch state {
        case .waitingForFirst:
            if answeredCount == versions.count {
                state = .ready
                readyAtNanos = nanos
            }
        case .ready:
            break
        case .pushing(let start):
            guard !updated[stream], version != baseline[stream] else { return }
            updated[stream] = true
            pendingCount -= 1
            if pendingCount == 0 {
                state = .ready
                lastPushNanos = nanos >= start ? nanos - start : 0
            }
        }
    }

    /// A rotation is about to be triggered at `nanos`: from now on, every stream must see a new version.
    /// Returns false (and changes nothing) unless every stream is ready and no push is in flight.
    @discardableResult
    @_specialize(exported:true,where Version == UInt64)
    public mutating func beginPush(at nanos: UInt64) -> Bool {
        guard state == .ready else { return false }
        baseline = versions
        updated = Array(repeating: false, count: versions.count)
        pendingCount = versions.count
        lastPushNanos = nil
        state = pendingCount == 0 ? .ready : .pushing(startNanos: nanos)
        if pendingCount == 0 { lastPushNanos = 0 }
        return true
    }

    public var isPushing: Bool {
        if case .pushing = state { return true }
        return false
    }
}
