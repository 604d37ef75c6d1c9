import Glibc
public import H2
public import PKI
public import Transport

/// Why a connection ended: told once to the driver's owner, which decides what to log and whom to tell.
public enum ConnectionLoss: Sendable, Equatable, CustomStringConvertible {
    /// The peer closed the socket (EOF, or a reset).
    case closedByPeer
    /// A socket error other than a reset.
    case socket(SystemError)
    /// The TLS layer failed (verification, protocol) or the peer ended the TLS session.
    case tls(String)
    /// The peer broke HTTP/2 (our GOAWAY naming the error was written first, when the socket took it).
    case http2(String)
    /// Both sides are done (or GOAWAY with nothing left): the normal end.
    case sessionEnded
    /// The peer's HTTP/2 preface did not arrive within the timeout (server role).
    case noPreface(seconds: Double)
    /// Bytes waited for the peer and it took none for the timeout.
    case writeStalled(seconds: Double)
    /// More than the budget waited for the peer and it took none within the grace period.
    case overBudget(bytes: Int)

    public var description: String {
        switch self {
        case .closedByPeer: "the peer closed the connection"
        case .socket(let error): "\(error)"
        case .tls(let reason): "TLS: \(reason)"
        case .http2(let reason): "HTTP/2 error: \(reason)"
        case .sessionEnded: "the HTTP/2 session ended"
        case .noPreface(let seconds): "no HTTP/2 preface within \(Self.format(seconds))"
        case .writeStalled(let seconds): "took no byte for \(Self.format(seconds))"
        case .overBudget(let bytes): "more than \(bytes) bytes queued and none taken for 1 s"
        }
    }

    private static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() && seconds < 1e9 ? "\(Int(seconds)) s" : "\(seconds) s"
    }

    /// The driver cut the peer off for not reading (write stall or queued-bytes budget).
    public var isCutOff: Bool {
        switch self {
        case .writeStalled, .overBudget: true
        default: false
        }
    }
}

/// The byte pipe under a driver: a socket `Connection` in production, an in-memory channel in tests. Events flow
/// the other way, into the driver's `received`, `drained` and `channelClosed`.
public protocol ByteChannel: AnyObject {
    /// Bytes handed to `write` that the channel has not passed on yet (the peer has not taken them).
    var pendingWriteBytes: Int { get }
    var isClosed: Bool { get }
    func write(_ bytes: [UInt8])
    /// Closes once everything pending is written, then reports `channelClosed(error: nil)`.
    func closeAfterWrites()
    /// Closes now, dropping what is pending; reports nothing.
    func close()
}

extension Connection: ByteChannel {}

/// The one way an HTTP/2 peer is driven, client or server: channel bytes ⇄ (TLS, when given) ⇄ nghttp2 session.
/// The SDS server, the Workload API and istiod clients, sds-dump, the healthcheck and the bench client all use it.
///
///     socket ──read──► [TLSClient.receive] ──plaintext──► H2 session.receive ──► gRPC callbacks
///     socket ◄─write── [TLSClient.takeCiphertext] ◄─────── H2 session.takeOutput ◄── calls' sends
///
/// It owns the rules every connection shares:
/// - **Back-pressure:** output is pulled from nghttp2 only while the channel holds less than `writeHighWater`; the
///   rest is pulled when it drains. Nothing piles up in user space beyond one pull.
/// - **A peer that does not read** is cut off: over `maxQueuedBytes` with no byte taken for `overBudgetGrace`, or
///   any bytes waiting and none taken for `writeStallTimeout`. A peer that reads one large response slowly is not.
/// - **A peer that never speaks HTTP/2** is closed after `prefaceTimeout` (server role).
/// - **Ending:** after a protocol error the GOAWAY naming it is written before the socket closes; a finished
///   session closes once its last bytes are written (bounded by the write-stall timeout).
///
/// `onClosed` runs exactly once, when the channel is closed, unless the owner closed it with `close()`.
public final class H2ConnectionDriver {
    /// The bounds a connection runs under; nil disables a rule.
    public struct Limits: Sendable, Equatable {
        /// Why 256 KiB: two HTTP/2 windows' worth; more only holds memory the kernel should be holding.
        public static let defaultWriteHighWater = 256 * 1024
        /// Why 64 KiB per pull: one read buffer's worth; larger pulls only grow the temporary array.
        public static let outputChunk = 64 * 1024
        /// Why 1 s: a peer that reads takes bytes within milliseconds of their arrival; one over the budget that
        /// takes none for a second is not reading, and its queue is held that long at most.
        public static let defaultOverBudgetGrace: Double = 1

        public var writeHighWater: Int
        /// Bytes that may wait for the peer (session queues plus the channel's) while it takes none of them.
        public var maxQueuedBytes: Int?
        public var overBudgetGrace: Double
        /// A peer that takes no byte for this long while data waits for it is cut off.
        public var writeStallTimeout: Double?
        /// A peer whose HTTP/2 preface has not arrived by then is closed (meaningful in the server role).
        public var prefaceTimeout: Double?

        public init(
            writeHighWater: Int = Limits.defaultWriteHighWater, maxQueuedBytes: Int? = nil,
            overBudgetGrace: Double = Limits.defaultOverBudgetGrace, writeStallTimeout: Double? = nil,
            prefaceTimeout: Double? = nil
        ) {
            self.writeHighWater = writeHighWater
            self.maxQueuedBytes = maxQueuedBytes
            self.overBudgetGrace = overBudgetGrace
            self.writeStallTimeout = writeStallTimeout
            self.prefaceTimeout = prefaceTimeout
        }
    }

    public let session: H2Endpoint
    public let limits: Limits
    private let tls: TLSClient?
    private let scheduler: any Scheduler
    private var channel: (any ByteChannel)?
    private var outputBuffer: [UInt8] = []
    /// Bytes handed to the channel since the connection opened; minus what it still holds, what the peer took.
    private var bytesHanded: UInt64 = 0
    private var prefaceTimer: (any ScheduledTimer)?
    private var stallTimer: (any ScheduledTimer)?
    private var takenAtStallArming: UInt64 = 0
    private var overBudgetTimer: (any ScheduledTimer)?
    /// Set once the end is decided: reading stops, and the first reason is the one reported.
    private var ending: ConnectionLoss?
    private var closed = false

    /// Why the connection ended; runs once, after the channel closed (never after `close()`).
    public var onClosed: ((ConnectionLoss) -> Void)?
    /// Runs once however the connection closed (`close()` included), after `onClosed`: where the session's owner
    /// ends its calls (`connectionLost()`), so the owner hears the real reason before the calls fail.
    public var afterClosed: (() -> Void)?

    /// Drives `session` over `channel`; the server role writes its preface at the first `flush()`.
    public init(
        session: H2Endpoint, tls: TLSClient? = nil, limits: Limits = Limits(), scheduler: any Scheduler
    ) {
        self.session = session
        self.tls = tls
        self.limits = limits
        self.scheduler = scheduler
    }

    /// Starts driving `channel` (the driver must already be its delegate, or be fed by the caller).
    public func attach(_ channel: any ByteChannel) {
        self.channel = channel
        if let timeout = limits.prefaceTimeout {
            prefaceTimer = scheduler.schedule(after: timeout) { [weak self] in
                guard let self, !self.session.prefaceReceived else { return }
                self.end(.noPreface(seconds: timeout), graceful: false)
            }
        }
    }

    /// Whether the connection is over (ended or closed).
    public var isClosed: Bool { closed || ending != nil }

    /// Whether TLS (if any) has completed its handshake: the peer is verified.
    public var isSecured: Bool { tls?.isEstablished ?? true }

    /// Bytes waiting for the peer: HTTP/2 stream queues plus the channel's write queue.
    public var queuedBytes: Int { session.totalQueuedBytes + (channel?.pendingWriteBytes ?? 0) }

    private var bytesTaken: UInt64 { bytesHanded - UInt64(channel?.pendingWriteBytes ?? 0) }

    // MARK: Channel events

    /// Bytes the peer sent.
    public func received(_ bytes: UnsafeRawBufferPointer) {
        guard !isClosed else { return }
        guard let tls else {
            feed(bytes)
            return
        }
        let plaintext = tls.receive(bytes)
        if case .failed(let reason) = tls.state {
            // The alert goes out first, so the peer logs why.
            writeCiphertext()
            end(.tls(reason), graceful: true)
            return
        }
        if !plaintext.isEmpty {
            plaintext.withUnsafeBytes { feed($0) }
            if isClosed { return }
        }
        if case .closed = tls.state {
            end(.tls("the peer closed the TLS session"), graceful: false)
            return
        }
        flush()
    }

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        do throws(H2Error) {
            try session.receive(bytes)
        } catch {
            // nghttp2 queued a GOAWAY naming the error: write it, then close.
            flush()
            end(.http2("\(error)"), graceful: true)
            return
        }
        if tls == nil { flush() }
    }

    /// The channel wrote everything it held: pull more.
    public func drained() { flush() }

    /// The channel closed under us (peer, error, or a graceful close finished).
    public func channelClosed(error: SystemError?) {
        guard !closed else { return }
        finish(ending ?? (error.map { .socket($0) } ?? .closedByPeer))
    }

    // MARK: Output

    /// Moves session output (through TLS) to the channel until the session has nothing more or the channel backs
    /// up. Call it after anything that may have produced output outside a channel event (a push, a new call).
    public func flush() {
        guard !isClosed, let channel, !channel.isClosed else { return }
        while channel.pendingWriteBytes < limits.writeHighWater {
            outputBuffer.removeAll(keepingCapacity: true)
            if session.takeOutput(into: &outputBuffer, maxBytes: Limits.outputChunk) == 0 { break }
            if let tls {
                tls.send(outputBuffer)
                writeCiphertext()
            } else {
                write(outputBuffer)
            }
        }
        // Released, not kept: a connection's output buffer grows to a 64 KiB chunk during a push, and an idle
        // connection holding it cost ~1 KB for each of its 100 streams.
        outputBuffer = []
        // Handshake messages are produced without any session output.
        writeCiphertext()
        if session.isClosed {
            end(.sessionEnded, graceful: true)
            return
        }
        if let limit = limits.maxQueuedBytes, queuedBytes > limit { watchOverBudget(limit) }
        watchForStall()
    }

    private func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty, let channel else { return }
        bytesHanded += UInt64(bytes.count)
        channel.write(bytes)
    }

    private func writeCiphertext() {
        guard let tls else { return }
        write(tls.takeCiphertext())
    }

    // MARK: Cut-offs

    /// Over the budget, a peer is cut off if it takes no byte within the grace period: one response larger than the
    /// budget to a peer that is reading it must not end the connection, and two flushes a microsecond apart say
    /// nothing about whether the peer reads.
    private func watchOverBudget(_ limit: Int) {
        guard overBudgetTimer == nil else { return }
        let takenAtArming = bytesTaken
        overBudgetTimer = scheduler.schedule(after: limits.overBudgetGrace) { [weak self] in
            guard let self else { return }
            self.overBudgetTimer = nil
            guard !self.isClosed, self.queuedBytes > limit else { return }
            if self.bytesTaken == takenAtArming {
                self.end(.overBudget(bytes: limit), graceful: false)
            } else {
                self.watchOverBudget(limit)
            }
        }
    }

    /// Armed when data starts waiting; fires after the timeout and cuts the peer off if it took nothing meanwhile
    /// (else re-arms). The cut comes between one and two timeouts after the peer's last read.
    private func watchForStall() {
        guard stallTimer == nil, queuedBytes > 0, let timeout = limits.writeStallTimeout else { return }
        takenAtStallArming = bytesTaken
        stallTimer = scheduler.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.stallTimer = nil
            guard self.queuedBytes > 0, self.channel?.isClosed == false else { return }
            if self.bytesTaken == self.takenAtStallArming {
                if self.ending != nil {
                    // Even the last bytes of a finished session are not read: stop waiting for them.
                    self.channel?.close()
                    self.finish(self.ending ?? .sessionEnded)
                } else {
                    self.end(.writeStalled(seconds: timeout), graceful: false)
                }
            } else {
                self.watchForStall()
            }
        }
    }

    // MARK: Ending

    /// Decides the end: gracefully (what is queued is written first, then `onClosed`) or at once.
    private func end(_ loss: ConnectionLoss, graceful: Bool) {
        guard !closed, ending == nil, let channel else { return }
        ending = loss
        prefaceTimer?.cancel()
        overBudgetTimer?.cancel()
        if graceful {
            channel.closeAfterWrites()
            if channel.isClosed {
                finish(loss)
            } else {
                watchForStall()
            }
        } else {
            channel.close()
            finish(loss)
        }
    }

    private func finish(_ loss: ConnectionLoss) {
        guard !closed else { return }
        closed = true
        ending = ending ?? loss
        cancelTimers()
        let onClosed = self.onClosed
        self.onClosed = nil
        onClosed?(loss)
        runAfterClosed()
    }

    private func runAfterClosed() {
        let afterClosed = self.afterClosed
        self.afterClosed = nil
        afterClosed?()
    }

    private func cancelTimers() {
        prefaceTimer?.cancel()
        stallTimer?.cancel()
        overBudgetTimer?.cancel()
        prefaceTimer = nil
        stallTimer = nil
        overBudgetTimer = nil
    }

    /// The owner ends the connection now (a TLS close_notify is attempted first); `onClosed` does not run.
    public func close() {
        guard !closed else { return }
        closed = true
        onClosed = nil
        cancelTimers()
        if let tls, tls.isEstablished, ending == nil {
            tls.close()
            writeCiphertext()
        }
        channel?.close()
        runAfterClosed()
    }
}

extension H2ConnectionDriver: ConnectionDelegate {
    public func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) { received(bytes) }
    public func connectionDrained(_ connection: Connection) { drained() }
    public func connectionClosed(_ connection: Connection, error: SystemError?) { channelClosed(error: error) }
}

extension H2ConnectionDriver {
    /// A driver on a connected, non-blocking socket `fd` (taken over: closed on failure too).
    public static func onSocket(
        _ fd: Int32, loop: EventLoop, session: H2Endpoint, tls: TLSClient? = nil, limits: Limits = Limits()
    ) throws(SystemError) -> H2ConnectionDriver {
        let driver = H2ConnectionDriver(
            session: session, tls: tls, limits: limits, scheduler: EventLoopScheduler(loop: loop))
        let connection: Connection
        do {
            connection = try Connection(fd: fd, loop: loop, delegate: driver)
        } catch {
            Glibc.close(fd)
            throw error
        }
        driver.attach(connection)
        return driver
    }
}
