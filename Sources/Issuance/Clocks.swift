import Glibc
public import PKI

/// The wall clock, injected wherever certificate validity is compared with "now" so tests can move time.
public protocol WallClock: Sendable {
    func now() -> Timestamp
}

/// The real clock: `clock_gettime(CLOCK_REALTIME)`, truncated to whole seconds (certificates' precision).
public struct SystemWallClock: WallClock {
    public init() {}

    public func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(secondsSinceEpoch: Int64(spec.tv_sec))
    }
}

/// A one-shot timer handle. `cancel()` after it fired, or twice, does nothing.
public protocol ScheduledTimer {
    func cancel()
}

/// Runs closures later on the owner's thread (the event loop implements it; tests use `FakeScheduler`).
/// Delays are monotonic seconds: a wall-clock jump does not move a scheduled timer.
public protocol Scheduler: AnyObject {
    /// Runs `action` once, `seconds` from now (0 = on the next loop turn, never synchronously inside
    /// `schedule`).
    @discardableResult
    func schedule(after seconds: Double, _ action: @escaping () -> Void) -> ScheduledTimer
}
