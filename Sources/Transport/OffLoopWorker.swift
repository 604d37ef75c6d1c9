internal import CLinux
import Glibc

/// Runs work that would stall the event loop (RSA key generation: ~200 ms for 2048 bits, seconds for 4096; DNS
/// lookups) on a thread of its own, and hands the result back on the loop.
///
///     loop thread: run(work, then:) ──► new detached thread runs `work`
///                                        │ stores the result in the job, writes the job's address to the pipe
///     loop thread: pipe readable ◄───────┘ reads the address, runs `then(result)`
///
/// The socket pair is the only thing the threads share: the write happens after the result is stored and the loop
/// reads it before touching the result, so the socket orders the two (no lock). Each job's address is one datagram,
/// so concurrent writes never interleave. A thread per job, not a pool: jobs are rare (one per rotation or
/// connection) and an idle agent then holds no extra thread.
///
/// The write end belongs to a reference-counted `WakeWriter` that every job holds: a worker dropped while a
/// thread still runs closes only its read end, and the thread's late write fails (`send` with `MSG_NOSIGNAL`, no
/// SIGPIPE) instead of landing in whatever descriptor reused the number.
public final class OffLoopWorker {
    private let loop: EventLoop
    private let readFD: Int32
    private let writer: WakeWriter
    /// Jobs whose thread has not reported yet (kept so `cancelAll` can drop their completions).
    private var pending: Set<ObjectIdentifier> = []

    public init(loop: EventLoop) throws(SystemError) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemError.last("socketpair")
        }
        // Only the read end is non-blocking: a worker's 8-byte write never blocks for long, and a blocking write
        // cannot lose the result.
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        self.loop = loop
        self.readFD = fds[0]
        self.writer = WakeWriter(fd: fds[1])
        do {
            try loop.register(fd: readFD, events: .readable) { [weak self] _ in self?.drain() }
        } catch {
            Glibc.close(fds[0])
            throw error
        }
    }

    deinit {
        loop.deregister(fd: readFD)
        // Jobs whose threads have not reported are dropped with their results (their threads' writes now fail, and
        // each thread releases its own job). The write end closes when the last job lets go of `writer`. Reports
        // already queued hold a reference each: take them back first.
        var address: UInt = 0
        while Glibc.read(readFD, &address, MemoryLayout<UInt>.size) == MemoryLayout<UInt>.size {
            if let raw = UnsafeMutableRawPointer(bitPattern: address) { Unmanaged<AnyJob>.fromOpaque(raw).release() }
        }
        Glibc.close(readFD)
    }

    /// Jobs started and not yet completed.
    public var pendingCount: Int { pending.count }

    /// The worker threads' nice value (the loop runs at the process's, usually 0).
    static let niceness: Int32 = 10
    /// Linux's SCHED_BATCH (not exported by Glibc's module): CPU-bound work, never preempting others on wake-up.
    static let batchPolicy: Int32 = 3

    /// Runs `work` on a new thread, then `completion` with its result on the loop (never inside `run`).
    public func run<T: Sendable>(_ work: @escaping @Sendable () -> T, then completion: @escaping (T) -> Void) {
        let job = Job(work: work, completion: completion, writer: writer)
        pending.insert(ObjectIdentifier(job))
        // One reference for the thread; `drain` takes it back.
        let context = Unmanaged.passRetained(job).toOpaque()
        var thread = pthread_t()
        // SCHED_BATCH from its first instruction (the nice value below is set by the thread itself, a moment late):
        // a new thread would otherwise take a full time slice on the loop's core before the loop gets it back.
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setinheritsched(&attributes, Int32(PTHREAD_EXPLICIT_SCHED))
        pthread_attr_setschedpolicy(&attributes, OffLoopWorker.batchPolicy)
        var parameters = sched_param(sched_priority: 0)
        pthread_attr_setschedparam(&attributes, &parameters)
        let body: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { raw in
            // Below the loop's priority: the work here (an RSA key, a chain to verify) may take a core for hundreds
            // of milliseconds, and the loop thread must still get one at once when a stream needs it.
            // (On Linux, PRIO_PROCESS with id 0 is the calling thread alone.)
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, OffLoopWorker.niceness)
            let job = Unmanaged<AnyJob>.fromOpaque(raw!)
            // Not reported (the worker is gone): nobody will take the thread's reference back, so drop it here.
            if !job.takeUnretainedValue().execute() { job.release() }
            return nil
        }
        var started = pthread_create(&thread, &attributes, body, context)
        if started != 0 {
            // A scheduling policy the environment refuses (a seccomp profile, say) is no reason to run on the loop.
            started = pthread_create(&thread, nil, body, context)
        }
        if started != 0 {
            // No thread: run it here rather than lose it (the caller still hears back on the next turn).
            if !job.execute() { Unmanaged.passUnretained(job as AnyJob).release() }
        } else {
            pthread_detach(thread)
        }
    }

    private func drain() {
        var address: UInt = 0
        while Glibc.read(readFD, &address, MemoryLayout<UInt>.size) == MemoryLayout<UInt>.size {
            guard let raw = UnsafeMutableRawPointer(bitPattern: address) else { continue }
            let job = Unmanaged<AnyJob>.fromOpaque(raw).takeRetainedValue()
            guard pending.remove(ObjectIdentifier(job)) != nil else { continue }
            job.complete()
        }
    }

    /// Forgets every pending job: their completions will not run (their threads still finish).
    public func cancelAll() { pending.removeAll() }
}

/// A job as the thread and the pipe see it.
class AnyJob: @unchecked Sendable {
    /// Runs the work and reports the job to the loop; false when the report could not be sent.
    func execute() -> Bool { false }
    func complete() {}
}

/// The write end of a worker's socket pair, closed when the worker and every job that may still write are gone.
final class WakeWriter: @unchecked Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { Glibc.close(fd) }

    /// Sends the job's address as one datagram; false if the read end is gone.
    func report(_ address: UInt) -> Bool {
        var address = address
        while true {
            let sent = Glibc.send(fd, &address, MemoryLayout<UInt>.size, Int32(MSG_NOSIGNAL))
            if sent == MemoryLayout<UInt>.size { return true }
            if sent < 0 && errno == EINTR { continue }
            return false
        }
    }
}

/// `@unchecked Sendable`: `result` is written by the worker thread before it writes the job's address to the pipe
/// and read by the loop only after reading that address; `completion` is touched on the loop only.
final class Job<T: Sendable>: AnyJob, @unchecked Sendable {
    private let work: @Sendable () -> T
    private var completion: ((T) -> Void)?
    private var result: T?
    private let writer: WakeWriter

    init(work: @escaping @Sendable () -> T, completion: @escaping (T) -> Void, writer: WakeWriter) {
        self.work = work
        self.completion = completion
        self.writer = writer
    }

    override func execute() -> Bool {
        result = work()
        return writer.report(UInt(bitPattern: Unmanaged.passUnretained(self as AnyJob).toOpaque()))
    }

    override func complete() {
        guard let result, let completion else { return }
        self.completion = nil
        completion(result)
    }
}
