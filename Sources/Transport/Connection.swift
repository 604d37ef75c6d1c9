internal import CLinux
import Glibc

/// What a connection tells its owner. All calls happen on the event loop.
public protocol ConnectionDelegate: AnyObject {
    /// Bytes arrived. The buffer is only valid during the call.
    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer)
    /// Every queued byte reached the kernel: a good moment to produce more output (pull-style backpressure).
    func connectionDrained(_ connection: Connection)
    /// The peer closed, or an I/O error happened (`error` set). The connection is already closed.
    func connectionClosed(_ connection: Connection, error: SystemError?)
}

/// A non-blocking stream socket on the event loop, with a write queue.
///
/// Reads land in one buffer shared by every connection of the loop (an idle connection then costs no read buffer).
/// Writes go straight to the kernel; only what the kernel refuses is queued, and `EPOLLOUT` is watched just while
/// something is queued — so an idle connection causes no wakeups.
public final class Connection {
    public let fd: Int32
    private let loop: EventLoop
    public weak var delegate: ConnectionDelegate?
    private var queue: [[UInt8]] = []
    private var queueHead = 0
    private var headOffset = 0
    public private(set) var pendingWriteBytes = 0
    public private(set) var isClosed = false
    /// Close once the queue drains (graceful shutdown).
    private var closeWhenDrained = false

    /// Reads per readiness report before yielding to the other descriptors: a peer that keeps its socket full
    /// gets 256 KiB per loop iteration, not the whole loop (epoll is level-triggered, so the rest is reported again
    /// at once).
    static let maxReadsPerWakeup = 4

    public init(fd: Int32, loop: EventLoop, delegate: ConnectionDelegate?) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.delegate = delegate
        try loop.register(fd: fd, events: .readable) { [weak self] readiness in self?.handle(readiness) }
    }

    deinit {
        if !isClosed {
            loop.deregister(fd: fd)
            Glibc.close(fd)
        }
    }

    /// Queues `bytes`; writes as much as the kernel takes right now.
    public func write(_ bytes: [UInt8]) {
        guard !isClosed, !bytes.isEmpty else { return }
        if pendingWriteBytes == 0 {
            let written = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written == bytes.count { return }
            if written < 0 && errno != EAGAIN && errno != EINTR {
                fail(SystemError.last("send"))
                return
            }
            let taken = max(0, written)
            queue.append(taken == 0 ? bytes : Array(bytes[taken...]))
            pendingWriteBytes += bytes.count - taken
        } else {
            queue.append(bytes)
            pendingWriteBytes += bytes.count
        }
        loop.modify(fd: fd, events: [.readable, .writable])
    }

    /// Closes after everything queued has been written.
    public func closeAfterWrites() {
        guard !isClosed else { return }
        if pendingWriteBytes == 0 { close() } else { closeWhenDrained = true }
    }

    /// Closes now; queued bytes are dropped. Does not call the delegate.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        loop.deregister(fd: fd)
        Glibc.close(fd)
        queue.removeAll()
        pendingWriteBytes = 0
    }

    private func handle(_ readiness: EventLoop.Readiness) {
        if readiness.contains(.writable) { flush() }
        if isClosed { return }
        if readiness.contains(.readable) || readiness.contains(.hangup) || readiness.contains(.error) {
            readAvailable()
        }
    }

    private func readAvailable() {
        let buffer = loop.readBuffer
        for _ in 0..<Self.maxReadsPerWakeup where !isClosed {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count > 0 {
                delegate?.connection(self, received: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                if count < buffer.count { return }
            } else if count == 0 {
                finish(nil)
                return
            } else {
                if errno == EAGAIN || errno == EINTR { return }
                fail(SystemError.last("read"))
                return
            }
        }
    }

    private func flush() {
        while queueHead < queue.count {
            let chunk = queue[queueHead]
            let written = chunk.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + headOffset, raw.count - headOffset, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EINTR { return }
                fail(SystemError.last("send"))
                return
            }
            pendingWriteBytes -= written
            headOffset += written
            if headOffset < chunk.count { return }
            headOffset = 0
            queueHead += 1
        }
        queue.removeAll(keepingCapacity: false)
        queueHead = 0
        loop.modify(fd: fd, events: .readable)
        if closeWhenDrained {
            close()
            delegate?.connectionClosed(self, error: nil)
            return
        }
        delegate?.connectionDrained(self)
    }

    private func fail(_ error: SystemError) {
        finish(error.errno == ECONNRESET || error.errno == EPIPE ? nil : error)
    }

    private func finish(_ error: SystemError?) {
        guard !isClosed else { return }
        close()
        delegate?.connectionClosed(self, error: error)
    }
}
