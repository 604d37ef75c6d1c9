internal import CLinux
import Glibc

/// The process's log stream (stderr), written without ever blocking: a container runtime that stops draining the
/// log pipe must not freeze the one thread that serves every Envoy in the pod.
///
/// Lines go straight to the descriptor while it takes them; what it refuses (`EAGAIN`) waits in a queue of at most
/// `maxQueuedBytes`, written when the descriptor becomes writable again (the event loop watches it only while
/// something waits). Lines that do not fit are dropped and counted, and once the queue drains one line says how many
/// were lost — a gap in the logs is never silent.
///
/// The descriptor written to is stderr reopened through `/proc/self/fd/2` with `O_NONBLOCK`: a pipe or terminal
/// reopened that way is a new open file description, so the flag does not leak to whoever else shares stderr (the
/// shell, the container runtime). Where reopening fails (a socket, as journald gives), stderr itself is used and
/// each write asks not to block (`MSG_DONTWAIT`).
public final class LogSink: @unchecked Sendable {
    /// Room for a few seconds of a burst at the info level (a rotation wave of ~1,000 streams logs ~200 KB) without
    /// letting a stuck reader pin more than a fraction of the agent's memory budget.
    public static let maxQueuedBytes = 256 * 1024

    /// The process's stderr sink. Set up once at start (`useStandardError()`), then used by every logger.
    public static let standardError = LogSink()

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var fd: Int32 = 2
    private var isSocket = false
    private var queue: [UInt8] = []
    private var queueHead = 0
    private var dropped = 0
    private weak var loop: EventLoop?
    private var watching = false
    /// Formats the "N lines dropped" notice in the log's own format.
    public var dropNotice: (@Sendable (Int) -> String)?

    init() { pthread_mutex_init(mutex, nil) }

    /// A sink writing to `descriptor`, which the caller has made non-blocking and keeps open (tests use a pipe).
    public convenience init(descriptor: Int32) {
        self.init()
        fd = descriptor
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Switches to a non-blocking descriptor for stderr (see the type's documentation).
    public func useStandardError() {
        let reopened = open("/proc/self/fd/2", O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        if reopened >= 0 {
            fd = reopened
            return
        }
        var info = stat()
        isSocket = fstat(2, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
        if !isSocket {
            // Last resort: the shared description itself (a write may then block only where it always could).
            _ = fcntl(2, F_SETFL, fcntl(2, F_GETFL) | O_NONBLOCK)
        }
    }

    /// Lets the sink finish queued writes from `loop` when the descriptor becomes writable.
    public func attach(to loop: EventLoop) {
        lock()
        self.loop = loop
        unlock()
    }

    /// Lines dropped since the last notice (for tests and metrics).
    public var droppedLines: Int {
        lock()
        defer { unlock() }
        return dropped
    }

    /// Bytes waiting for the descriptor.
    public var queuedBytes: Int {
        lock()
        defer { unlock() }
        return queue.count - queueHead
    }

    /// Writes one whole line (`line` ends with a newline), or queues it, or drops it when the queue is full.
    public func write(line: String) {
        lock()
        defer { unlock() }
        var bytes = Array(line.utf8)
        if queue.count == queueHead {
            let written = writeNow(bytes[...])
            if written == bytes.count { return }
            bytes.removeFirst(max(0, written))
            if written < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                return  // stderr is gone (closed, EPIPE): nothing to tell anyone
            }
        } else if queue.count - queueHead + bytes.count > Self.maxQueuedBytes {
            dropped += 1
            return
        }
        queue.append(contentsOf: bytes)
        watchWritable()
    }

    /// Writes what is queued, waiting at most `timeout` seconds (at exit: the last lines are the ones that matter).
    public func flush(timeout: Double) {
        lock()
        defer { unlock() }
        var remaining = Int32(timeout * 1000)
        while queue.count > queueHead && remaining > 0 {
            var poller = pollfd(fd: isSocket ? 2 : fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&poller, 1, min(remaining, 50)) >= 0 || errno == EINTR else { return }
            remaining -= 50
            drainQueue()
        }
    }

    // MARK: Internals (called with the mutex held)

    private func writeNow(_ bytes: ArraySlice<UInt8>) -> Int {
        bytes.withUnsafeBytes { raw in
            if isSocket { return Glibc.send(2, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) }
            return Glibc.write(fd, raw.baseAddress, raw.count)
        }
    }

    /// Writes as much of the queue as the descriptor takes; after a full drain, reports drops.
    private func drainQueue() {
        while queueHead < queue.count {
            let written = writeNow(queue[queueHead...])
            if written <= 0 { return }
            queueHead += written
        }
        queue.removeAll(keepingCapacity: false)
        queueHead = 0
        if dropped > 0, let notice = dropNotice?(dropped) {
            dropped = 0
            queue.append(contentsOf: notice.utf8)
            drainQueue()
        }
    }

    private func watchWritable() {
        guard !watching, let loop else { return }
        do {
            try loop.register(fd: isSocket ? 2 : fd, events: .writable) { [weak self] _ in self?.writable() }
            watching = true
        } catch {
            // Regular files cannot be polled, and never return EAGAIN: nothing to wait for.
        }
    }

    private func writable() {
        lock()
        defer { unlock() }
        drainQueue()
        if queue.count == queueHead, watching, let loop {
            loop.deregister(fd: isSocket ? 2 : fd)
            watching = false
        }
    }

    private func lock() { pthread_mutex_lock(mutex) }
    private func unlock() { pthread_mutex_unlock(mutex) }
}
