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

/// The event loop as a `Scheduler`: the timers of issuers and connection drivers run on the loop's thread, never
/// inside `schedule`.
public final class EventLoopScheduler: Scheduler {
    private let loop: EventLoop

    public init(loop: EventLoop) { self.loop = loop }

    private struct LoopTimer: ScheduledTimer {
        let timer: EventLoop.Timer
        func cancel() { timer.cancel() }
    }

    @discardableResult
    public func schedule(after seconds: Double, _ action: @escaping () -> Void) -> any ScheduledTimer {
        LoopTimer(timer: loop.schedule(after: seconds, action))
    }
}
