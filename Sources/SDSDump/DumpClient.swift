import ConnectionDriver
import GRPC
import Glibc
import H2
import PKI
import Transport
import Wire

/// The I/O shell around `DumpSession`: one Unix-socket connection (moved by the shared `H2ConnectionDriver`),
/// one HTTP/2 session, one gRPC call per stream, an epoll loop with the timeout and SIGINT/SIGTERM, stdout, stderr
/// and --pem-dir. Decides nothing itself.
public final class DumpClient {
    private let options: DumpOptions
    private var session: DumpSession
    private let loop: EventLoop
    private let grpc = GRPCClientConnection()
    private var connection: H2ConnectionDriver?
    private var path = ""
    private var calls: [Int: GRPCClientCall] = [:]
    private var fetchCall: GRPCClientCall?
    private let colors: Bool

    /// How long to wait, after the last ACK, for the server to end the half-closed streams (proof it read the ACK).
    static let closingGrace = 2.0

    public init(options: DumpOptions) throws(SystemError) {
        self.options = options
        self.session = DumpSession(options: options)
        self.loop = try EventLoop()
        self.colors = !options.json && isatty(STDOUT_FILENO) == 1
    }

    /// Runs to the end; returns the process exit code.
    public func run() -> Int32 {
        let outcome = runSession()
        if let message = outcome.message { writeStandardError("sds-dump: \(message)\n") }
        // Everything arrived but --pem-dir could not be written: a script relying on the files must not see success.
        if outcome.exitCode == 0 && pemWriteFailed { return Self.pemWriteFailureExitCode }
        return outcome.exitCode
    }

    /// Exit code when the secrets arrived but `--pem-dir` could not be written (each failure was printed).
    public static let pemWriteFailureExitCode: Int32 = 1
    private var pemWriteFailed = false

    private func runSession() -> DumpOutcome {
        let address: UnixSocketAddress
        do throws(UnixSocketAddress.ParseError) {
            address = try UnixSocketAddress(options.socket)
        } catch {
            return .cannotConnect(path: options.socket, reason: "\(error)")
        }
        path = address.path
        do throws(SystemError) {
            let fd = try connectUnixSocket(address)
            let driver = try H2ConnectionDriver.onSocket(fd, loop: loop, session: grpc.session)
            driver.onClosed = { [weak self] loss in self?.lost(loss) }
            driver.afterClosed = { [grpc] in grpc.connectionLost() }
            connection = driver
            try loop.onSignal(SIGINT) { [unowned self] in self.perform(self.session.interrupted()) }
            try loop.onSignal(SIGTERM) { [unowned self] in self.perform(self.session.interrupted()) }
        } catch {
            return .cannotConnect(path: address.path, reason: String(cString: strerror(error.errno)))
        }
        perform(session.start())
        let timer = loop.schedule(after: options.timeoutSeconds) { [unowned self] in
            self.perform(self.session.timedOut())
        }
        // With --watch the run has no end of its own: a year stands in for "until a signal or --count".
        _ = loop.run(until: { self.session.outcome != nil }, timeout: 365 * 86_400)
        timer.cancel()
        let outcome = session.outcome ?? .interrupted(watching: options.watch)
        if outcome == .completed { closeGracefully() }
        connection?.close()
        return outcome
    }

    /// Half-closes every stream and waits (briefly) for the server to end them: by then it has read every ACK.
    private func closeGracefully() {
        let open = Array(calls.values).filter { !$0.isFinished }
        guard !open.isEmpty else {
            flush()
            return
        }
        for call in open { call.closeSend() }
        flush()
        _ = loop.run(
            until: { open.allSatisfy(\.isFinished) || self.connection?.isClosed ?? true }, timeout: Self.closingGrace)
    }

    // MARK: Actions

    private func perform(_ actions: [DumpSession.Action]) {
        for action in actions {
            switch action {
            case .openSotW(let stream, let request):
                open(stream: stream, path: SecretDiscoveryServiceMethod.streamSecrets.path, first: request.wireBytes())
            case .openDelta(let stream, let request):
                open(stream: stream, path: SecretDiscoveryServiceMethod.deltaSecrets.path, first: request.wireBytes())
            case .fetch(let request):
                startFetch(request)
            case .sendSotW(let stream, let request):
                calls[stream]?.send(request.wireBytes())
            case .sendDelta(let stream, let request):
                calls[stream]?.send(request.wireBytes())
            case .emit(let update):
                emit(update)
            case .warn(let text):
                writeStandardError("sds-dump: \(text)\n")
            case .finish:
                break  // the loop sees session.outcome and returns
            }
        }
        flush()
    }

    private func open(stream: Int, path: String, first: [UInt8]) {
        let call: GRPCClientCall
        do throws(GRPCStatus) {
            call = try grpc.startCall(path: path)
        } catch {
            perform(session.callFinished(stream: stream, status: error))
            return
        }
        calls[stream] = call
        let mode = options.mode
        call.onMessage = { [unowned self] bytes in
            let now = Self.wallClockNow()
            switch mode {
            case .sotw:
                guard let response = try? DiscoveryResponse(wireBytes: bytes) else {
                    return perform(
                        self.session.callFinished(
                            stream: stream, status: GRPCStatus(.internal, "undecodable DiscoveryResponse")))
                }
                perform(session.receivedSotW(stream: stream, response, at: now))
            case .delta:
                guard let response = try? DeltaDiscoveryResponse(wireBytes: bytes) else {
                    return perform(
                        self.session.callFinished(
                            stream: stream, status: GRPCStatus(.internal, "undecodable DeltaDiscoveryResponse")))
                }
                perform(session.receivedDelta(stream: stream, response, at: now))
            case .fetch:
                break
            }
        }
        call.onFinish = { [unowned self] status, _ in
            self.perform(self.session.callFinished(stream: stream, status: status))
        }
        call.send(first)
    }

    private func startFetch(_ request: DiscoveryRequest) {
        let call: GRPCClientCall
        do throws(GRPCStatus) {
            call = try grpc.startCall(path: SecretDiscoveryServiceMethod.fetchSecrets.path)
        } catch {
            perform(session.callFinished(stream: nil, status: error))
            return
        }
        fetchCall = call
        call.onMessage = { [unowned self] bytes in
            guard let response = try? DiscoveryResponse(wireBytes: bytes) else {
                return perform(session.callFinished(stream: nil, status: GRPCStatus(.internal, "undecodable response")))
            }
            perform(session.receivedFetch(response, at: Self.wallClockNow()))
        }
        call.onFinish = { [unowned self] status, _ in
            self.perform(self.session.callFinished(stream: nil, status: status))
        }
        call.send(request.wireBytes())
        call.closeSend()
    }

    private func emit(_ update: DumpUpdate) {
        if let directory = options.pemDirectory {
            for secret in update.secrets {
                do throws(SystemError) {
                    try PEMFiles.write(secret, into: directory)
                } catch {
                    pemWriteFailed = true
                    writeStandardError("sds-dump: --pem-dir: \(error)\n")
                }
            }
        }
        if options.json {
            writeStandardOutput(DumpRenderer.json(update).rendered + "\n")
        } else {
            writeStandardOutput(DumpRenderer.human(update, colors: colors) + (options.watch ? "\n" : ""))
        }
    }

    // MARK: Socket

    /// Moves what the HTTP/2 session produced to the socket.
    private func flush() { connection?.flush() }

    /// The connection is gone. The session hears it before the calls end with UNAVAILABLE (the driver closes them
    /// right after), which would otherwise read as exit 5.
    private func lost(_ loss: ConnectionLoss) {
        let reason =
            switch loss {
            case .closedByPeer: "the server closed the connection"
            case .socket(let error): String(cString: strerror(error.errno))
            default: "\(loss)"
            }
        perform(session.connectionLost(path: path, reason: reason))
    }

    // MARK: Clock and output

    static func wallClockNow() -> Timestamp {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Timestamp(secondsSinceEpoch: Int64(now.tv_sec))
    }
}

/// Writes all of `text` to a descriptor (stdout is flushed per update so `--watch` readers see it at once).
func writeAll(_ text: String, to fd: Int32) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EINTR || errno == EAGAIN { continue }
            return
        }
        bytes = bytes.dropFirst(written)
    }
}

public func writeStandardOutput(_ text: String) { writeAll(text, to: STDOUT_FILENO) }
public func writeStandardError(_ text: String) { writeAll(text, to: STDERR_FILENO) }

/// `--pem-dir`: `<safe>.cert.pem` and `<safe>.key.pem` (0600) for a certificate, `<safe>.bundle.pem` for a
/// validation context. Each file is written to a temporary name and renamed, so a reader never sees half a file.
enum PEMFiles {
    static func write(_ secret: ReceivedSecret, into directory: String) throws(SystemError) {
        try createDirectory(directory)
        let base = safeFileName(secret.name)
        switch secret.material {
        case .certificate(let chain, let key):
            try Files.writeAtomically(
                directory: directory, name: base + ".cert.pem", bytes: Array(Certificate.pem(chain).utf8), mode: 0o644)
            try Files.writeAtomically(directory: directory, name: base + ".key.pem", bytes: key, mode: 0o600)
        case .validationContext(let cas):
            try Files.writeAtomically(
                directory: directory, name: base + ".bundle.pem", bytes: Array(Certificate.pem(cas).utf8), mode: 0o644)
        case .generic(let bytes):
            // A bearer token: readable by the owner only, like a private key.
            try Files.writeAtomically(directory: directory, name: base + ".secret", bytes: bytes, mode: 0o600)
        }
    }

    /// Creates `path` and any missing parent, each 0700 (it will hold private keys), like `mkdir -p -m 0700`.
    /// Existing directories are left as they are: their mode is the operator's choice.
    static func createDirectory(_ path: String) throws(SystemError) {
        var info = stat()
        if stat(path, &info) == 0 { return }  // exists; a non-directory fails at the first write, naming it
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) == 0 {
                // mkdir applies the umask; a key directory must be exactly 0700 whatever the umask is.
                _ = chmod(prefix, 0o700)
            } else if errno != EEXIST {
                throw SystemError("mkdir", errno: errno, detail: prefix)
            }
            prefix += "/"
        }
    }
}
