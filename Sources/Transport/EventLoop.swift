internal import CLinux
import Glibc

/// A single-threaded epoll loop: file-descriptor readiness, monotonic timers and signals (via signalfd).
///
/// Why one thread and no thread per connection: an SDS sidecar holds a handful of long-lived, mostly idle streams;
/// one loop keeps RSS flat and makes every callback run in a known order. Nothing wakes the loop but I/O, a due
/// timer or a signal — an idle agent performs no wakeups of its own.
///
/// Everything here must be called on the loop's thread (the thread that calls `run()`).
public final class EventLoop {
    /// Readiness reported for a registered descriptor.
    public struct Readiness: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Readiness(rawValue: EPOLLIN.rawValue)
        public static let writable = Readiness(rawValue: EPOLLOUT.rawValue)
        public static let hangup = Readiness(rawValue: EPOLLHUP.rawValue | EPOLLRDHUP.rawValue)
        public static let error = Readiness(rawValue: EPOLLERR.rawValue)
    }

    /// A handle to a scheduled timer; `cancel()` is idempotent.
    public final class Timer {
        fileprivate let deadline: UInt64
        fileprivate let sequence: UInt64
        fileprivate var action: (() -> Void)?
        fileprivate init(deadline: UInt64, sequence: UInt64, action: @escaping () -> Void) {
            self.deadline = deadline
            self.sequence = sequence
            self.action = action
        }
        public func cancel() { action = nil }
        public var isPending: Bool { action != nil }
    }

    private let epollFD: Int32
    private var handlers: [Int32: (Readiness) -> Void] = [:]
    private var interest: [Int32: Readiness] = [:]
    /// Timers ordered by (deadline, sequence); few in number, so a sorted array beats a heap in code and speed.
    private var timers: [Timer] = []
    private var timerSequence: UInt64 = 0
    /// Cancelled timers leave the array lazily (when they reach the front); once it grows to this size the cancelled
    /// ones are swept. Without it a peer opening and cancelling calls with long deadlines (`grpc-timeout: 1H`) would
    /// grow the array by one dead timer per call until each deadline passed.
    private var timerSweepThreshold = EventLoop.minimumTimerSweepThreshold
    static let minimumTimerSweepThreshold = 64
    /// Timer slots in use, cancelled ones included (for tests of the sweep).
    var timerSlotCount: Int { timers.count }
    private var signalFD: Int32 = -1
    private var signalHandlers: [Int32: () -> Void] = [:]
    private var stopping = false
    /// One read buffer per loop, shared by the connections it drives: they run one at a time on this loop's thread,
    /// so one buffer serves them all (64 KiB once, not per connection), and another loop on another thread (sds-dump,
    /// the healthcheck, tests) never reads into the same memory.
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)

    public init() throws(SystemError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else {
            readBuffer.deallocate()
            throw SystemError.last("epoll_create1")
        }
        epollFD = fd
    }

    deinit {
        readBuffer.deallocate()
        if signalFD >= 0 { close(signalFD) }
        close(epollFD)
    }

    // MARK: Descriptors

    /// Watches `fd` for `events`; `handler` runs on the loop when it is ready. Replaces an earlier registration.
    public func register(fd: Int32, events: Readiness, handler: @escaping (Readiness) -> Void) throws(SystemError) {
        var event = epoll_event()
        event.events = events.rawValue | EPOLLRDHUP.rawValue
        event.data.fd = fd
        let op = handlers[fd] == nil ? EPOLL_CTL_ADD : EPOLL_CTL_MOD
        guard epoll_ctl(epollFD, op, fd, &event) == 0 else { throw SystemError.last("epoll_ctl") }
        handlers[fd] = handler
        interest[fd] = events
    }

    /// Changes the events watched for an already registered `fd` (no syscall when unchanged).
    public func modify(fd: Int32, events: Readiness) {
        guard handlers[fd] != nil, interest[fd] != events else { return }
        var event = epoll_event()
        event.events = events.rawValue | EPOLLRDHUP.rawValue
        event.data.fd = fd
        if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) == 0 { interest[fd] = events }
    }

    /// Stops watching `fd` (the caller closes it).
    public func deregister(fd: Int32) {
        guard handlers.removeValue(forKey: fd) != nil else { return }
        interest.removeValue(forKey: fd)
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)
    }

    // MARK: Timers

    /// Runs `action` on the loop after `seconds` (monotonic clock).
    @discardableResult
    public func schedule(after seconds: Double, _ action: @escaping () -> Void) -> Timer {
        timerSequence &+= 1
        let timer = Timer(
            deadline: Self.deadline(after: seconds, from: Self.monotonicNanos()), sequence: timerSequence,
            action: action)
        if timers.count >= timerSweepThreshold {
            timers.removeAll { !$0.isPending }
            // Twice the live timers: sweeping stays amortised O(1) per schedule.
            timerSweepThreshold = max(Self.minimumTimerSweepThreshold, timers.count * 2)
        }
        let index = timers.firstIndex { ($0.deadline, $0.sequence) > (timer.deadline, timer.sequence) }
        timers.insert(timer, at: index ?? timers.endIndex)
        return timer
    }

    /// The longest delay a timer takes: a delay computed from an outside value (a certificate valid until 9999, a
    /// refresh hint) is clamped here, not trapped on. A century is far past any lifetime the agent schedules for,
    /// and far below `UInt64.max` nanoseconds (~584 years) once added to the monotonic clock.
    public static let maximumDelaySeconds: Double = 100 * 365 * 86_400

    /// The one place a delay in seconds becomes a monotonic deadline in nanoseconds. Negative, NaN and too-large
    /// delays are clamped (to now, now, and `maximumDelaySeconds`) so no caller can trap the conversion.
    public static func deadline(after seconds: Double, from now: UInt64) -> UInt64 {
        let clamped = seconds.isNaN ? 0 : min(max(0, seconds), maximumDelaySeconds)
        let (sum, overflow) = now.addingReportingOverflow(UInt64(clamped * 1_000_000_000))
        return overflow ? UInt64.max : sum
    }

    // MARK: Signals

    /// Delivers `signal` to `handler` on the loop. The signal is blocked for the process's threads and read from a
    /// signalfd, so a handler may do anything (no async-signal-safety limits). The mask is per thread: call this
    /// before starting other threads (they inherit it), or a process-directed signal may reach a thread that does
    /// not block it.
    public func onSignal(_ signal: Int32, _ handler: @escaping () -> Void) throws(SystemError) {
        signalHandlers[signal] = handler
        var mask = sigset_t()
        sigemptyset(&mask)
        for sig in signalHandlers.keys { sigaddset(&mask, sig) }
        guard pthread_sigmask(SIG_BLOCK, &mask, nil) == 0 else { throw SystemError.last("pthread_sigmask") }
        let fd = signalfd(signalFD, &mask, Int32(SFD_NONBLOCK | SFD_CLOEXEC))
        guard fd >= 0 else { throw SystemError.last("signalfd") }
        if signalFD < 0 {
            signalFD = fd
            try register(fd: fd, events: .readable) { [weak self] _ in self?.drainSignals() }
        }
    }

    private func drainSignals() {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        while read(signalFD, &info, size) == size {
            signalHandlers[Int32(info.ssi_signo)]?()
        }
    }

    // MARK: Running

    /// Runs until `stop()` is called. Returns after the iteration in which it was called.
    public func run() {
        stopping = false
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while !stopping {
            let timeout = nextTimeoutMillis()
            let count = events.withUnsafeMutableBufferPointer { buffer in
                epoll_wait(epollFD, buffer.baseAddress, Int32(buffer.count), timeout)
            }
            if count < 0 {
                if errno == EINTR { continue }
                break
            }
            for i in 0..<Int(count) {
                let fd = events[i].data.fd
                // A handler run earlier in this batch may have closed this descriptor.
                guard let handler = handlers[fd] else { continue }
                handler(Readiness(rawValue: events[i].events))
            }
            runDueTimers()
        }
    }

    /// Makes `run()` return once the current iteration finishes.
    public func stop() { stopping = true }

    /// Runs iterations until `condition` holds or `timeout` seconds pass; for tests and clients that wait for an
    /// answer. Returns whether the condition held.
    public func run(until condition: () -> Bool, timeout: Double) -> Bool {
        let deadline = Self.deadline(after: timeout, from: Self.monotonicNanos())
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while !condition() {
            let now = Self.monotonicNanos()
            if now >= deadline { return false }
            var wait = Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1))
            let timerWait = nextTimeoutMillis()
            if timerWait >= 0 { wait = min(wait, timerWait) }
            let count = events.withUnsafeMutableBufferPointer { buffer in
                epoll_wait(epollFD, buffer.baseAddress, Int32(buffer.count), wait)
            }
            if count < 0 && errno != EINTR { return condition() }
            for i in 0..<Int(max(0, count)) {
                let fd = events[i].data.fd
                guard let handler = handlers[fd] else { continue }
                handler(Readiness(rawValue: events[i].events))
            }
            runDueTimers()
        }
        return true
    }

    private func nextTimeoutMillis() -> Int32 {
        // Cancelled timers are dropped lazily from the front; the rest are skipped when they come due.
        while let first = timers.first, !first.isPending { timers.removeFirst() }
        guard let first = timers.first else { return -1 }
        let now = Self.monotonicNanos()
        guard first.deadline > now else { return 0 }
        // Round up so a timer never fires a hair early and costs an extra wakeup.
        return Int32(min(UInt64(Int32.max), (first.deadline - now + 999_999) / 1_000_000))
    }

    private func runDueTimers() {
        let now = Self.monotonicNanos()
        while let first = timers.first, first.deadline <= now || !first.isPending {
            timers.removeFirst()
            if let action = first.action {
                first.action = nil
                action()
            }
        }
    }

    /// Seconds on the monotonic clock the timers use (for rate limits and durations, not wall time).
    public static func monotonicSeconds() -> Double { Double(monotonicNanos()) / 1_000_000_000 }

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
