import Glibc
public import Issuance
import PKI
public import Transport

/// The files an identity is written as for applications that read files (`--output-dir`, istio-agent's
/// `OUTPUT_CERTS`), in one of two layouts:
///
///     istio          key.pem (0600)      cert-chain.pem   root-cert.pem
///     spiffe-helper  svid_key.pem (0600) svid.pem         svid_bundle.pem
///
/// The roots go first, so an application never sees a chain its bundle does not trust yet; the key and chain
/// follow. Each file is replaced atomically (temporary file, fsync, rename, directory fsync), and the signal, if
/// any, is sent only when every file of the update is in place.
public enum OutputLayout: String, Sendable, CaseIterable {
    case istio
    case spiffeHelper = "spiffe-helper"
}

public struct OutputFile: Sendable, Equatable {
    public var name: String
    public var bytes: [UInt8]
    public var mode: UInt32
}

public enum CredentialOutput {
    /// The files `update` is written as, in writing order. Pure.
    public static func files(for update: IdentityUpdate, layout: OutputLayout) throws -> [OutputFile] {
        let roots = Array((update.bundles.first?.pem ?? "").utf8)
        let chain = Array(Certificate.pem(update.svid.chain).utf8)
        let key = Array(try update.svid.privateKey.pkcs8PEM().utf8)
        let names =
            switch layout {
            case .istio: (roots: "root-cert.pem", chain: "cert-chain.pem", key: "key.pem")
            case .spiffeHelper: (roots: "svid_bundle.pem", chain: "svid.pem", key: "svid_key.pem")
            }
        return [
            OutputFile(name: names.roots, bytes: roots, mode: 0o644),
            OutputFile(name: names.key, bytes: key, mode: 0o600),
            OutputFile(name: names.chain, bytes: chain, mode: 0o644),
        ]
    }
}

/// `--output-signal <pidfile>:<SIGNAL>`: the process whose PID the file holds is signalled after each complete
/// update (spiffe-helper's `cmd_args`/`renew_signal` without running anything ourselves).
public struct OutputSignal: Sendable, Equatable {
    public var pidFile: String
    public var signal: Int32

    static let names: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "USR1": SIGUSR1, "USR2": SIGUSR2, "TERM": SIGTERM,
        "WINCH": SIGWINCH,
    ]

    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses `path:SIGNAL` (`SIGHUP`, `HUP` or a number).
    public static func parse(_ text: String) -> Result<OutputSignal, ParseError> {
        guard let colon = text.lastIndex(of: ":") else {
            return .failure(ParseError(description: "'\(text)' must be <pidfile>:<SIGNAL>, e.g. /run/app.pid:SIGHUP"))
        }
        let path = String(text[..<colon])
        var name = text[text.index(after: colon)...].uppercased()
        if name.hasPrefix("SIG") { name = String(name.dropFirst(3)) }
        guard path.hasPrefix("/") else {
            return .failure(ParseError(description: "the pid file '\(path)' must be an absolute path"))
        }
        let number = Int32(name) ?? names[name]
        guard let number, (1...64).contains(number), number != SIGKILL, number != SIGSTOP else {
            return .failure(
                ParseError(description: "'\(name)' is not a signal to send (HUP, USR1, USR2, TERM, ... or a number)"))
        }
        return .success(OutputSignal(pidFile: path, signal: number))
    }

    /// Sends the signal; the reason when it could not (no pid file, not a PID, no such process). Never blocks: the
    /// pid file is read without waiting (a FIFO is refused) and at most 32 bytes of it.
    public func send() -> String? {
        let text: [UInt8]
        do {
            let file = try RegularFile(path: pidFile)
            text = try file.readAll(limit: 32)
        } catch {
            return "cannot read the pid file: \(error)"
        }
        let digits = String(decoding: text, as: UTF8.self).trimmingWhitespace
        guard let pid = Int32(digits), pid > 1 else {
            return "\(pidFile) does not hold a process ID"
        }
        guard kill(pid, signal) == 0 else {
            return "cannot signal process \(pid) from \(pidFile): \(String(cString: strerror(errno)))"
        }
        return nil
    }
}

extension String {
    fileprivate var trimmingWhitespace: String {
        let bytes = Array(utf8)
        let isSpace: (UInt8) -> Bool = { [0x20, 0x09, 0x0A, 0x0D].contains($0) }
        guard let start = bytes.firstIndex(where: { !isSpace($0) }) else { return "" }
        let end = bytes.lastIndex(where: { !isSpace($0) })!
        return String(decoding: bytes[start...end], as: UTF8.self)
    }
}

/// Writes identities (and JWT-SVIDs) to files off the event loop, one job at a time, in one queue: an identity
/// update that arrives while one is being written waits, and only the latest waiting one is written (a burst of
/// rotations ends in the newest files, not in every intermediate set); single files (a JWT-SVID) wait their turn
/// too, after the first identity set (with an output directory). Because nothing else writes while a job runs, the
/// signal sent at the end of each job always finds every file of the last update in place.
public final class CredentialFileWriter {
    public struct Outcome: Sendable {
        /// Files written (names).
        public var written: [String]
        /// What failed, if anything (a write, or the signal: the files are in place then).
        public var problem: String?
    }

    private enum Job {
        case identity([OutputFile])
        case file(directory: String, file: OutputFile, completion: (Outcome) -> Void)
    }

    private let directory: String?
    private let layout: OutputLayout
    private let signal: OutputSignal?
    private let worker: OffLoopWorker
    private let onOutcome: (Outcome) -> Void
    private var writing = false
    private var waitingIdentity: [OutputFile]?
    private var waitingFiles: [Job] = []
    private var identityWritten = false

    /// `directory` nil: no identity files, only single files (`--output-jwt` without `--output-dir`).
    public init(
        directory: String?, layout: OutputLayout, signal: OutputSignal?, worker: OffLoopWorker,
        onOutcome: @escaping (Outcome) -> Void
    ) {
        self.directory = directory
        self.layout = layout
        self.signal = signal
        self.worker = worker
        self.onOutcome = onOutcome
    }

    /// Writes `update` as the identity files (after the job in progress, if any). Without a directory: nothing.
    public func write(_ update: IdentityUpdate) {
        guard directory != nil else { return }
        do { waitingIdentity = try CredentialOutput.files(for: update, layout: layout) } catch {
            onOutcome(Outcome(written: [], problem: "cannot encode the identity: \(error)"))
            return
        }
        writeNext()
    }

    /// Writes one file (a JWT-SVID) in its turn; `completion` hears how it went.
    public func write(
        _ bytes: [UInt8], to path: String, mode: UInt32, completion: @escaping (Outcome) -> Void
    ) {
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        let name = String(path[path.index(after: slash)...])
        waitingFiles.append(
            .file(directory: directory, file: OutputFile(name: name, bytes: bytes, mode: mode), completion: completion))
        writeNext()
    }

    private func writeNext() {
        guard !writing else { return }
        let job: Job
        if let files = waitingIdentity {
            waitingIdentity = nil
            job = .identity(files)
        } else if !waitingFiles.isEmpty, identityWritten || directory == nil {
            // With an output directory, single files wait for the first identity set: the process the signal wakes
            // reads that set.
            job = waitingFiles.removeFirst()
        } else {
            return
        }
        writing = true
        let (directory, files, completion): (String, [OutputFile], ((Outcome) -> Void)?) =
            switch job {
            case .identity(let files): (self.directory ?? "/", files, nil)
            case .file(let directory, let file, let completion): (directory, [file], completion)
            }
        let isIdentity = completion == nil
        let signal = self.signal
        worker.run(
            { () -> Outcome in
                var written: [String] = []
                for file in files {
                    do {
                        try Files.writeAtomically(
                            directory: directory, name: file.name, bytes: file.bytes, mode: file.mode)
                    } catch {
                        return Outcome(written: written, problem: "\(error)")
                    }
                    written.append(file.name)
                }
                return Outcome(written: written, problem: signal?.send())
            },
            then: { [weak self] outcome in
                guard let self else { return }
                self.writing = false
                if isIdentity {
                    if outcome.written.count == files.count { self.identityWritten = true }
                    self.onOutcome(outcome)
                } else {
                    completion?(outcome)
                }
                self.writeNext()
            })
    }
}
