import GRPC
import Glibc
import H2
import Issuance
import Logging
import PKI
import SDSAgent
import Servers
import Synchronization
import TestSupport
import Transport
import Wire

/// Istio's file-backed names (`file-cert:<cert>~<key>`, `file-root:<ca>`) against a directory tree the input builds
/// and keeps changing. `FileBackedNames` is internal to SDSAgent, so the names are reached the way a client reaches
/// them: one real `Agent` (local CA, state dir, `--file-dirs`) runs for the whole process on a thread of its own,
/// serving a Unix socket in a temporary directory, and each input talks to it over that socket.
///
///     <tmp>/allowed/            --file-dirs #1; holds the state dir (protected even inside an allowed dir)
///     <tmp>/allowed/state/      --state-dir: ca.pem, ca.key, jwt-key.pem (never served)
///     <tmp>/alias -> allowed2/  --file-dirs #2, named through a symlink
///     <tmp>/outside/            not allowed: its files hold certificates and keys no allowed file holds
///
/// Each input gets fresh directories `allowed/in<N>`, `allowed2/in<N>` (named as `alias/in<N>`) and `outside/out<N>`
/// and one connection; ops (`byte % 12`, arguments after):
///
///     0 write a file      [dir][entry][content]   inside: chain, key, bundle, chain+key in one file, garbage,
///                                                 empty, 2 MiB (sparse), expired chain, another key; outside:
///                                                 outside chain, key or bundle
///     1 symlink           [dir][entry][target]    sibling, inside, outside file or dir, the CA key, ca.pem, the
///                                                 state dir, /etc/passwd, /proc/self/environ, the system trust
///                                                 store, dangling, itself, a loop, ../ out of the dir, the alias
///                                                 dir, /dev/zero
///     2 flip a symlink    [entry][target][storm][target2]   atomically (rename over it); with storm > 0 the SotW
///                                                 names go again and the link flips storm times between the two
///                                                 targets while the agent reads (a real race with its thread)
///     3 other file ops    [variant][dir][entry]   FIFO, directory, unlink, chmod 000 / 644 (files), rename over
///                                                 another entry [entry2]
///     4 SotW request      [count][name…]          5 Delta subscribe [count][name…]
///     6 unsubscribe       [count][delta]          Delta: the first count names; SotW: keep the first count
///     7 FetchSecrets      [name]                  8 nothing (a round trip)   9 a raw name (NUL bytes, invalid
///     UTF-8, 5,000-byte paths)     10 ACK the last responses     11 reset the xDS streams
///
///     name = [kind][path][path]   kind: file-cert:<path>~<path> (< 0x80), file-root:<path>, file-root:system (0xFF);
///     path = [base][count][component…]   base: in, alias, out, state dir, allowed dir, /etc/ssl/certs, an
///            escape through .., relative; components: the entries, .., ., empty, ca.key, ca.pem, jwt-key.pem
///
/// Before the files change after requests, a health Check round trip makes sure the agent handled them (and the
/// file events before them); the last op is followed by one too.
/// Invariants, on every response: no file-backed secret holds the content of a file outside the allowed
/// directories or of the state dir (the CA key, ca.pem, the JWT key), no validation context holds a private key,
/// no certificate chain field holds a private key; the agent answers every round trip within 5 s and survives.
enum FileNamesTarget {
    static let maxOps = 24
    static let entries = ["a", "b", "c", "d", "link", "loop", "fifo", "dir", "big"]

    /// Contents written inside the allowed directories, and the ones only the outside directory holds.
    struct Contents: Sendable {
        let inside: [[UInt8]]
        let outside: [[UInt8]]
        /// PEM lines that only outside files or the state dir hold: never in a file-backed secret.
        let forbidden: [[UInt8]]
    }

    /// The agent under test: started once per process, on its own thread.
    final class Environment: @unchecked Sendable {
        let root: String
        let allowed: String
        let allowed2: String
        let alias: String
        let outside: String
        let stateDir: String
        let socket: UnixSocketAddress
        let contents: Contents
        /// The agent's thread.
        var thread = pthread_t()

        init(root: String, contents: (inside: [[UInt8]], outside: [[UInt8]])) throws {
            self.root = root
            allowed = root + "/allowed"
            allowed2 = root + "/allowed2"
            alias = root + "/alias"
            outside = root + "/outside"
            stateDir = allowed + "/state"
            socket = try UnixSocketAddress(root + "/sds.sock")
            for directory in [allowed, allowed2, outside] { try Files.ensureDirectory(directory, mode: 0o755) }
            guard symlink(allowed2, alias) == 0 else { throw SystemError("symlink", errno: errno, detail: alias) }
            var options = RawAgentOptions()
            options.socket = socket.path
            options.stateDir = stateDir
            options.trustDomain = "example.org"
            options.spiffeID = "spiffe://example.org/ns/default/sa/fuzz"
            options.fileDirs = "\(allowed),\(alias)"
            options.issuer = "local"
            options.drainTimeout = "100ms"
            let configuration = try AgentConfiguration.resolve(options, environment: [:])
            let agent = try Agent(
                configuration: configuration,
                logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
            let box = Unmanaged.passRetained(agent).toOpaque()
            let started = pthread_create(
                &thread, nil,
                { raw in
                    guard let raw else { return nil }
                    let code = Unmanaged<Agent>.fromOpaque(raw).takeRetainedValue().run { try $0.makeLocalCAIssuer() }
                    guard FileNamesTarget.stopping.load(ordering: .acquiring) else {
                        fatalError("the agent under test stopped (exit code \(code))")
                    }
                    return nil
                }, box)
            guard started == 0 else { throw SystemError("pthread_create", errno: started) }
            // Serving once the socket accepts: the CA and the JWT key exist by then.
            var waited = 0
            while (try? connectUnixSocket(socket)).map({ Glibc.close($0) }) == nil {
                waited += 1
                guard waited < 1000 else { throw SystemError("connect", errno: ETIMEDOUT, detail: socket.path) }
                usleep(10_000)
            }
            var forbidden = contents.outside.flatMap { FileNamesTarget.needles(in: $0) }
            for name in ["ca.key", "ca.pem", "jwt-key.pem"] {
                forbidden += FileNamesTarget.needles(in: try Files.read(stateDir + "/" + name))
            }
            self.contents = Contents(inside: contents.inside, outside: contents.outside, forbidden: forbidden)
        }
    }

    /// The second base64 line of every PEM block of `text`: unique to that block (the first line of a key is
    /// mostly the algorithm header all keys of its kind share).
    static func needles(in text: [UInt8]) -> [[UInt8]] {
        let lines = text.split(separator: UInt8(ascii: "\n")).map(Array.init)
        var needles: [[UInt8]] = []
        for (index, line) in lines.enumerated() where line.starts(with: Array("-----BEGIN".utf8)) {
            if index + 2 < lines.count, !lines[index + 2].starts(with: Array("-----END".utf8)) {
                needles.append(lines[index + 2])
            }
        }
        return needles
    }

    nonisolated(unsafe) static var counter = 0
    /// Set by `stop()`: the agent's thread ends without a trap.
    static let stopping = Atomic<Bool>(false)
    nonisolated(unsafe) static var started: Environment?

    static let environment: Environment = {
        do {
            let ca = try TestCA(now: SystemWallClock().now())
            let other = try TestCA(trustDomain: "other.org", now: SystemWallClock().now())
            let id = "spiffe://example.org/ns/default/sa/files"
            func pair(_ issuer: TestCA, _ options: TestCA.LeafOptions) throws -> (chain: [UInt8], key: [UInt8]) {
                let leaf = try issuer.makeLeaf(options)
                return (Array(Certificate.pem(leaf.chain).utf8), Array(try leaf.key.pkcs8PEM().utf8))
            }
            let inside = try pair(ca, TestCA.LeafOptions(spiffeID: id))
            var expiredOptions = TestCA.LeafOptions(spiffeID: id)
            expiredOptions.notBeforeOffset = -7200
            expiredOptions.notAfterOffset = -3600
            let expired = try pair(ca, expiredOptions)
            let outside = try pair(other, TestCA.LeafOptions(spiffeID: "spiffe://other.org/ns/default/sa/outside"))
            let anotherKey = Array(try PrivateKey.generate().pkcs8PEM().utf8)
            let insideContents: [[UInt8]] = [
                inside.chain, inside.key, Array(ca.root.pem.utf8), inside.chain + inside.key,
                Array("not a certificate\n".utf8), [], expired.chain, anotherKey,
            ]
            var template = Array("/tmp/sds-fuzz-files-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { fatalError("mkdtemp: \(errno)") }
            let root = String(cString: made)
            // Registered after LeakSanitizer's exit check, so it runs before it: the agent is stopped and freed
            // first (a live agent keeps objects behind multi-payload enums, whose spare-bit tags hide the pointers).
            atexit { FileNamesTarget.stop() }
            let environment = try Environment(
                root: root,
                contents: (insideContents, [outside.chain, outside.key, Array(other.root.pem.utf8)]))
            started = environment
            return environment
        } catch {
            fatalError("file-names fixture: \(error)")
        }
    }()

    /// Stops the agent under test (SIGTERM to its thread: the agent drains and `run` returns), waits for its
    /// thread, so that its memory is freed before the process ends (LeakSanitizer checks at exit), and removes its
    /// directory. Runs at exit, and from the corpus replay after the last input; no input may run afterwards.
    static func stop() {
        guard let environment = started, !stopping.load(ordering: .acquiring) else { return }
        stopping.store(true, ordering: .releasing)
        pthread_kill(environment.thread, SIGTERM)
        pthread_join(environment.thread, nil)
        removeTree(environment.root)
    }

    static func run(_ bytes: UnsafeRawBufferPointer) {
        invariant(!stopping.load(ordering: .acquiring), "file-names: the agent under test was stopped")
        let environment = Self.environment
        counter += 1
        var input = FuzzInput(bytes)
        let session = Session(environment: environment, index: counter)
        var count = 0
        var unanswered = false
        while !input.isAtEnd, count < maxOps {
            count += 1
            let op = input.byte() % 12
            // Requests in a row go out together; before the files change, the agent has handled them all (a
            // round trip), so what it read is what the ops before said. A request after file operations needs
            // none: the agent reads the inotify events they queued before the request that follows them.
            if op < 4, unanswered {
                session.roundTrip()
                unanswered = false
            }
            if session.apply(op: op, &input) { unanswered = true }
        }
        session.finish()
    }

    // MARK: - A client of the agent under test

    /// One gRPC connection to the agent, driven synchronously from this thread.
    final class Client {
        let fd: Int32
        let grpc = GRPCClientConnection(authority: "localhost")
        var isBroken = false
        static let timeout = 5.0
        nonisolated(unsafe) static var buffer = [UInt8](repeating: 0, count: 65_536)

        init(_ socket: UnixSocketAddress) {
            do { fd = try connectUnixSocket(socket) } catch { fatalError("the agent refused a connection: \(error)") }
        }

        deinit {
            grpc.connectionLost()
            Glibc.close(fd)
        }

        static func now() -> Double {
            var spec = timespec()
            clock_gettime(CLOCK_MONOTONIC, &spec)
            return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
        }

        func flush() {
            var output = grpc.session.takeOutput()
            while !output.isEmpty, !isBroken {
                let written = output.withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress, $0.count, IssuerResponsesTarget.noSignal)
                }
                if written > 0 {
                    output.removeFirst(written)
                } else if written < 0, errno == EAGAIN {
                    var pollFD = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    guard poll(&pollFD, 1, Int32(Client.timeout * 1000)) > 0 else {
                        fatalError("the agent took no byte for \(Client.timeout) s")
                    }
                } else if written < 0, errno == EINTR {
                    continue
                } else {
                    isBroken = true
                }
            }
        }

        /// Reads what the agent sent within `milliseconds`; false when nothing came.
        @discardableResult
        func read(waiting milliseconds: Int32) -> Bool {
            var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pollFD, 1, milliseconds) > 0 else { return false }
            var received = false
            while !isBroken {
                let count = Client.buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    received = true
                    do {
                        try Client.buffer.withUnsafeBytes {
                            try grpc.session.receive(UnsafeRawBufferPointer(rebasing: $0[0..<count]))
                        }
                    } catch {
                        isBroken = true
                    }
                } else if count < 0, errno == EAGAIN {
                    break
                } else if count < 0, errno == EINTR {
                    continue
                } else {
                    isBroken = true
                }
            }
            if grpc.session.isClosed { isBroken = true }
            return received
        }

        /// Until `done` holds; a silent agent is a finding (a hang or a lost answer).
        func wait(_ what: String, until done: () -> Bool) {
            let deadline = Client.now() + Client.timeout
            flush()
            while !done(), !isBroken {
                let left = deadline - Client.now()
                guard left > 0 else { fatalError("the agent did not answer \(what) within \(Client.timeout) s") }
                read(waiting: Int32(left * 1000) + 1)
                flush()
            }
        }
    }

    // MARK: - One input

    final class Session {
        let environment: Environment
        let inDir: String
        let aliasDir: String
        let realAliasDir: String
        let outDir: String
        let relative: String
        var client: Client
        var sotw: GRPCClientCall?
        var delta: GRPCClientCall?
        var sotwNames: [[UInt8]] = []
        var deltaNames: [[UInt8]] = []
        var lastSotW: DiscoveryResponse?
        var lastDelta: DeltaDiscoveryResponse?

        init(environment: Environment, index: Int) {
            self.environment = environment
            relative = "in\(index)"
            inDir = environment.allowed + "/" + relative
            aliasDir = environment.alias + "/" + relative
            realAliasDir = environment.allowed2 + "/" + relative
            outDir = environment.outside + "/out\(index)"
            for directory in [inDir, realAliasDir, outDir] { _ = mkdir(directory, 0o755) }
            client = Client(environment.socket)
        }

        /// A health Check: once it is answered, the agent has handled everything sent before it.
        func roundTrip() {
            if client.isBroken { reconnect() }
            guard let call = try? client.grpc.startCall(path: HealthService.checkPath) else {
                reconnect()
                return
            }
            var finished = false
            call.onFinish = { _, _ in finished = true }
            call.send([])
            call.closeSend()
            client.wait("a health check") { finished }
        }

        func reconnect() {
            client = Client(environment.socket)
            sotw = nil
            delta = nil
            sotwNames = []
            deltaNames = []
        }

        // MARK: Checks

        func check(_ secret: Secret) {
            guard secret.name.hasPrefix("file-") else { return }
            var fields: [(bytes: [UInt8], isCertificate: Bool)] = []
            switch secret.kind {
            case .tlsCertificate(let certificate):
                fields.append((certificate.certificateChain.inlineContent ?? [], true))
                fields.append((certificate.privateKey.inlineContent ?? [], false))
            case .validationContext(let context):
                fields.append((context.trustedCA?.inlineContent ?? [], true))
            case .genericSecret(let source):
                fields.append((source.inlineContent ?? [], false))
            case nil:
                break
            }
            for (bytes, isCertificate) in fields {
                for needle in environment.contents.forbidden where contains(bytes, needle) {
                    fatalError("\(secret.name) served the content of a file outside the allowed directories")
                }
                if isCertificate, contains(bytes, Array("PRIVATE KEY".utf8)) {
                    fatalError("\(secret.name) served a private key as a certificate")
                }
            }
        }

        func received(sotw bytes: [UInt8]) {
            guard let response = try? DiscoveryResponse(wireBytes: bytes) else {
                fatalError("the agent sent a DiscoveryResponse it cannot decode itself")
            }
            for resource in response.resources {
                guard let secret = try? resource.unpack(Secret.self) else { fatalError("a resource not a Secret") }
                check(secret)
            }
            lastSotW = response
        }

        func received(delta bytes: [UInt8]) {
            guard let response = try? DeltaDiscoveryResponse(wireBytes: bytes) else {
                fatalError("the agent sent a DeltaDiscoveryResponse it cannot decode itself")
            }
            for resource in response.resources {
                if let secret = try? resource.resource?.unpack(Secret.self) { check(secret) }
            }
            lastDelta = response
        }

        // MARK: Streams

        func sotwCall() -> GRPCClientCall? {
            if let sotw, !sotw.isFinished { return sotw }
            sotw = try? client.grpc.startCall(
                path: SecretDiscoveryServiceMethod.streamSecrets.path, metadata: [])
            sotw?.onMessage = { [weak self] in self?.received(sotw: $0) }
            // A new stream starts from the current names (SotW requests carry them all), without a last response.
            lastSotW = nil
            return sotw
        }

        func deltaCall() -> GRPCClientCall? {
            if let delta, !delta.isFinished { return delta }
            delta = try? client.grpc.startCall(path: SecretDiscoveryServiceMethod.deltaSecrets.path, metadata: [])
            delta?.onMessage = { [weak self] in self?.received(delta: $0) }
            deltaNames = []
            lastDelta = nil
            return delta
        }

        func sendSotW(nonce: String = "", version: String = "") {
            guard let call = sotwCall() else { return }
            var writer = ProtoWriter()
            if !version.isEmpty { writer.field(1, version) }
            for name in sotwNames { writer.field(3, name) }
            writer.field(4, AgentOpsTarget.secretTypeURL)
            if !nonce.isEmpty { writer.field(5, nonce) }
            call.send(writer.bytes)
        }

        func sendDelta(subscribe: [[UInt8]], unsubscribe: [[UInt8]], nonce: String = "") {
            guard let call = deltaCall() else { return }
            var writer = ProtoWriter()
            writer.field(2, AgentOpsTarget.secretTypeURL)
            for name in subscribe { writer.field(3, name) }
            for name in unsubscribe { writer.field(4, name) }
            if !nonce.isEmpty { writer.field(6, nonce) }
            deltaNames.removeAll { unsubscribe.contains($0) }
            deltaNames += subscribe
            call.send(writer.bytes)
        }

        // MARK: Names and paths

        static let components = [
            "a", "b", "c", "d", "link", "loop", "fifo", "dir", "big", "..", ".", "", "ca.key", "ca.pem", "jwt-key.pem",
        ]

        func path(_ input: inout FuzzInput) -> String {
            var path: String
            switch input.byte() % 10 {
            case 0, 1, 2: path = inDir
            case 3: path = aliasDir
            case 4: path = outDir
            case 5: path = environment.stateDir
            case 6: path = environment.allowed
            case 7: path = "/etc/ssl/certs"
            case 8: path = inDir + "/../../outside/" + (outDir.split(separator: "/").last.map(String.init) ?? "")
            default: path = relative
            }
            for _ in 0..<input.below(3) { path += "/" + input.pick(Session.components) }
            return path
        }

        func name(_ input: inout FuzzInput) -> [UInt8] {
            let kind = input.byte()
            switch kind {
            case 0xFF: return Array("file-root:system".utf8)
            case 0x80...: return Array("file-root:\(path(&input))".utf8)
            default: return Array("file-cert:\(path(&input))~\(path(&input))".utf8)
            }
        }

        func names(_ input: inout FuzzInput) -> [[UInt8]] {
            (0...input.below(3)).map { _ in name(&input) }
        }

        // MARK: Files

        func directory(_ selector: UInt8) -> String {
            switch selector % 4 {
            case 0, 1: inDir
            case 2: realAliasDir
            default: outDir
            }
        }

        func target(_ selector: UInt8, entry: String) -> String {
            let outName = outDir.split(separator: "/").last.map(String.init) ?? ""
            switch selector % 16 {
            case 0: return "a"
            case 1: return inDir + "/b"
            case 2: return outDir + "/a"
            case 3: return outDir
            case 4: return environment.stateDir + "/ca.key"
            case 5: return environment.stateDir + "/ca.pem"
            case 6: return environment.stateDir
            case 7: return "/etc/passwd"
            case 8: return "/proc/self/environ"
            case 9: return SecretName.systemTrustStore
            case 10: return "nonexistent"
            case 11: return entry
            case 12: return "../\(relative)/loop"
            case 13: return "../../outside/\(outName)/a"
            case 14: return aliasDir + "/a"
            default: return "/dev/zero"
            }
        }

        func write(_ content: [UInt8], to path: String, big: Bool) {
            _ = unlink(path)
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o644)
            guard fd >= 0 else { return }
            defer { Glibc.close(fd) }
            if big {
                // Past the 1 MiB cap without writing it: a sparse file.
                _ = ftruncate(fd, 2 << 20)
                return
            }
            _ = content.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }

        func flip(_ entry: String, to target: String) {
            let temporary = inDir + "/.flip"
            _ = unlink(temporary)
            if symlink(target, temporary) == 0 { _ = rename(temporary, inDir + "/" + entry) }
        }

        /// Applies one op; true when it sent something to the agent.
        func apply(op: UInt8, _ input: inout FuzzInput) -> Bool {
            if client.isBroken { reconnect() }
            switch op % 12 {
            case 0:
                let selector = input.byte()
                let directory = directory(selector)
                let entry = input.pick(FileNamesTarget.entries)
                let kind = Int(input.byte())
                let contents = environment.contents
                if directory == outDir {
                    write(contents.outside[kind % contents.outside.count], to: directory + "/" + entry, big: false)
                } else {
                    let count = contents.inside.count + 1
                    let choice = kind % count
                    write(
                        choice < contents.inside.count ? contents.inside[choice] : [], to: directory + "/" + entry,
                        big: choice == contents.inside.count)
                }
            case 1:
                let directory = directory(input.byte())
                let entry = input.pick(FileNamesTarget.entries)
                let path = directory + "/" + entry
                _ = unlink(path)
                _ = rmdir(path)
                _ = symlink(target(input.byte(), entry: entry), path)
            case 2:
                let entry = input.pick(FileNamesTarget.entries)
                let first = target(input.byte(), entry: entry)
                let storm = Int(input.byte() % 32)
                flip(entry, to: first)
                guard storm > 0 else { break }
                // While the agent reads: the SotW names again, and the link flipped back and forth under it (a
                // real race with the agent's thread, between its check of a path and its open).
                let second = target(input.byte(), entry: entry)
                sendSotW()
                client.flush()
                for index in 0..<storm { flip(entry, to: index % 2 == 0 ? second : first) }
                return true
            case 3:
                let variant = input.byte() % 6
                let path = directory(input.byte()) + "/" + input.pick(FileNamesTarget.entries)
                switch variant {
                case 0:
                    _ = unlink(path)
                    _ = mkfifo(path, 0o644)
                case 1:
                    _ = unlink(path)
                    _ = mkdir(path, 0o755)
                case 2:
                    _ = unlink(path)
                    _ = rmdir(path)
                case 3, 4:
                    // Files only: an unreadable directory would outlive the input (removeTree cannot enter it).
                    var info = stat()
                    if lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG {
                        _ = chmod(path, variant == 3 ? 0 : 0o644)
                    }
                default: _ = rename(path, inDir + "/" + input.pick(FileNamesTarget.entries))
                }
            case 4:
                sotwNames = names(&input)
                sendSotW()
            case 5:
                sendDelta(subscribe: names(&input), unsubscribe: [])
            case 6:
                let count = input.below(3)
                if input.bool() {
                    sendDelta(subscribe: [], unsubscribe: Array(deltaNames.prefix(count)))
                } else {
                    sotwNames = Array(sotwNames.prefix(count))
                    sendSotW()
                }
            case 7:
                guard let call = try? client.grpc.startCall(path: SecretDiscoveryServiceMethod.fetchSecrets.path)
                else { return false }
                call.onMessage = { [weak self] in self?.received(sotw: $0) }
                var writer = ProtoWriter()
                writer.field(3, name(&input))
                writer.field(4, AgentOpsTarget.secretTypeURL)
                call.send(writer.bytes)
                call.closeSend()
            case 8:
                break
            case 9:
                var raw = Array((input.bool() ? "file-root:" : "file-cert:").utf8) + Array(inDir.utf8)
                switch input.byte() % 4 {
                case 0: raw += [0] + Array("/../../outside".utf8)
                case 1: raw += [0xFF, 0xFE]
                case 2: raw += Array(String(repeating: "/a", count: 2500).utf8)
                default: raw += input.shortBytes()
                }
                sotwNames = [raw]
                sendSotW()
            case 10:
                if let last = lastSotW { sendSotW(nonce: last.nonce, version: last.versionInfo) }
                if let last = lastDelta { sendDelta(subscribe: [], unsubscribe: [], nonce: last.nonce) }
            default:
                sotw?.cancel()
                delta?.cancel()
            }
            client.flush()
            return op % 12 >= 4
        }

        /// The last answers are checked; then the connection closes (the agent releases its names, later) and the
        /// directories go.
        func finish() {
            roundTrip()
            for directory in [inDir, realAliasDir, outDir] { FileNamesTarget.removeTree(directory) }
        }
    }

    /// `rm -rf`, without following symlinks.
    static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if info.st_mode & S_IFMT == S_IFDIR {
            _ = chmod(path, 0o755)
            if let directory = opendir(path) {
                var children: [String] = []
                while let entry = readdir(directory) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                    }
                    if name != ".", name != ".." { children.append(name) }
                }
                closedir(directory)
                for child in children { removeTree(path + "/" + child) }
            }
            _ = rmdir(path)
        } else {
            _ = unlink(path)
        }
    }
}
