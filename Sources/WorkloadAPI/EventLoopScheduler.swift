public import Issuance
public import Transport

/// The event loop as an Issuance `Scheduler`: the timers of an issuer run on the loop's thread, never inside
/// `schedule`.
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
