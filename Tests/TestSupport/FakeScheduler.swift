public import Transport

/// A `Scheduler` driven by the test: `advance(by:)` moves virtual monotonic time (and the `FakeClock` with
/// it) and runs the timers that fall due, in due-time order (ties in scheduling order), including timers
/// scheduled by the actions it runs. Nothing ever runs inside `schedule`.
public final class FakeScheduler: Scheduler {
    public let clock: FakeClock
    /// Virtual monotonic seconds since the scheduler was created.
    public private(set) var elapsed: Double = 0
    private var entries: [Entry] = []
    private var nextSequence = 0

    private final class Entry {
        let sequence: Int
        let due: Double
        let action: () -> Void
        var cancelled = false
        init(sequence: Int, due: Double, action: @escaping () -> Void) {
            self.sequence = sequence
            self.due = due
            self.action = action
        }
    }

    private struct Timer: ScheduledTimer {
        let entry: Entry
        func cancel() { entry.cancelled = true }
    }

    public init(clock: FakeClock = FakeClock()) {
        self.clock = clock
    }

    @discardableResult
    public func schedule(after seconds: Double, _ action: @escaping () -> Void) -> ScheduledTimer {
        let entry = Entry(sequence: nextSequence, due: elapsed + max(seconds, 0), action: action)
        nextSequence += 1
        entries.append(entry)
        return Timer(entry: entry)
    }

    /// Timers scheduled and not yet run or cancelled.
    public var pendingCount: Int { entries.count { !$0.cancelled } }

    /// Seconds until the next pending timer is due, nil when none is pending.
    public var nextDueIn: Double? {
        entries.filter { !$0.cancelled }.map(\.due).min().map { $0 - elapsed }
    }

    /// Runs the timers already due (delay 0) without moving time.
    public func runDue() { advance(by: 0) }

    /// Moves time forward by `seconds`, running every timer that falls due on the way.
    public func advance(by seconds: Double) {
        let target = elapsed + seconds
        while true {
            entries.removeAll { $0.cancelled }
            guard
                let next = entries.filter({ $0.due <= target })
                    .min(by: { ($0.due, $0.sequence) < ($1.due, $1.sequence) })
            else { break }
            move(to: next.due)
            entries.removeAll { $0 === next }
            next.action()
        }
        move(to: target)
    }

    /// Moves time to the next pending timer and runs what falls due; returns the seconds advanced.
    @discardableResult
    public func advanceToNextTimer() -> Double? {
        guard let delay = nextDueIn else { return nil }
        advance(by: delay)
        return delay
    }

    private func move(to time: Double) {
        guard time > elapsed else { return }
        let wholeBefore = Int64(elapsed.rounded(.down))
        let wholeAfter = Int64(time.rounded(.down))
        elapsed = time
        if wholeAfter != wholeBefore { clock.advance(by: wholeAfter - wholeBefore) }
    }
}
