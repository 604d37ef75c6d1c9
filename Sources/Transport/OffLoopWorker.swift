import Glibc

/// Runs work that would stall the event loop (RSA key generation: ~200 ms for 2048 bits, seconds for 4096; DNS
/// lookups) on a thread of its own, and hands the result back on the loop.
///
///     loop thread: run(work, then:) ──► new detached thread runs `work`
///                                        │ stores the result in the job, writes the job's address to the pipe
///     loop thread: pipe readable ◄───────┘ reads the address, runs `then(result)`
///
/// The pipe is the only thing the threads share: the write happens after the result is stored and the loop reads
/// it before touching the result, so the pipe orders the two (no lock). A job's address is 8 bytes, below
/// PIPE_BUF, so concurrent writes never interleave. A thread per job, not a pool: jobs are rare (one per
/// rotation or connection) and an idle agent then holds no extra thread.
public final class OffLoopWorker {
    private let loop: EventLoop
    private let readFD: Int32
    private let writeFD: Int32
    /// Jobs whose thread has not reported yet (kept so `cancelAll` can drop their completions).
    private var pending: Set<ObjectIdentifier> = []

    public init(loop: EventLoop) throws(SystemError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SystemError.last("pipe") }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        // Only the read end is non-blocking: a worker's 8-byte write into a pipe never blocks for long, and a
        // blocking write cannot lose the result.
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        self.loop = loop
        self.readFD = fds[0]
        self.writeFD = fds[1]
        do {
            try loop.register(fd: readFD, events: .readable) { [unowned self] _ in self.drain() }
        } catch {
            Glibc.close(fds[0])
            Glibc.close(fds[1])
            throw error
        }
    }

    deinit {
        loop.deregister(fd: readFD)
        Glibc.close(readFD)
        // A worker still running keeps writing into a closed pipe: it gets EPIPE/EBADF and drops its result.
        // Leaving the write end open until then would need a reference count; jobs are short, so close it.
        Glibc.close(writeFD)
    }

    /// Jobs started and not yet completed.
    public var pendingCount: Int { pending.count }

    /// Runs `work` on a new thread, then `completion` with its result on the loop (never inside `run`).
    public func run<T: Sendable>(_ work: @escaping @Sendable () -> T, then completion: @escaping (T) -> Void) {
        let job = Job(work: work, completion: completion, writeFD: writeFD)
        pending.insert(ObjectIdentifier(job))
        // One reference for the thread; `drain` takes it back.
        let context = Unmanaged.passRetained(job).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<AnyJob>.fromOpaque(raw!).takeUnretainedValue().execute()
                return nil
            }, context)
        if started != 0 {
            // No thread: run it here rather than lose it (the caller still hears back on the next turn).
            job.execute()
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
    func execute() {}
    func complete() {}
}

/// `@unchecked Sendable`: `result` is written by the worker thread before it writes the job's address to the pipe
/// and read by the loop only after reading that address; `completion` is touched on the loop only.
final class Job<T: Sendable>: AnyJob, @unchecked Sendable {
    private let work: @Sendable () -> T
    private var completion: ((T) -> Void)?
    private var result: T?
    private let writeFD: Int32

    init(work: @escaping @Sendable () -> T, completion: @escaping (T) -> Void, writeFD: Int32) {
        self.work = work
        self.completion = completion
        self.writeFD = writeFD
    }

    override func execute() {
        result = work()
        var address = UInt(bitPattern: Unmanaged.passUnretained(self as AnyJob).toOpaque())
        while Glibc.write(writeFD, &address, MemoryLayout<UInt>.size) < 0 && errno == EINTR {}
    }

    override func complete() {
        guard let result, let completion else { return }
        self.completion = nil
        completion(result)
    }
}
