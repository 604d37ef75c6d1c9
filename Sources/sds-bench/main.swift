import Bench
import ConnectionDriver
import GRPC
import Glibc
import H2
import Issuance
import JWT
import LocalCA
import PKI
import SPIFFE
import Transport
import Wire

// `sds-bench`: the load client and issuance benchmark behind `make bench` (Tests/Bench/bench.py drives it).
//
//   sds-bench issue --count N
//       Local-CA SVIDs per second on this thread; one JSON line.
//   sds-bench first --socket S [--timeout SECONDS]
//       Prints {"event":"waiting"} once it watches for S, waits for S to accept, opens StreamSecrets for `default`,
//       prints the CLOCK_REALTIME of the first DiscoveryResponse (so the caller can subtract the agent's start time).
//   sds-bench hold --socket S --streams N --connections C [--names default,ROOTCA]
//       Opens N StreamSecrets streams over C connections, ACKs every response like Envoy, prints
//       {"event":"ready",...} once every stream has a secret, then obeys stdin, one command a line:
//         push PID   SIGHUP PID and time until every stream holds a new version -> {"event":"push","ms":...}
//         stats      -> {"event":"stats","client_cpu_ms":...}
//         quit       exit 0
// Every wait is bounded; any failure exits 1 with a message on stderr.

let secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

func fail(_ message: String) -> Never {
    let line = "sds-bench: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

func emit(_ object: JSONObject) {
    let line = "\(object)\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func realtimeNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// This process's CPU time (user + system), in milliseconds.
func ownCPUMillis() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    let user = Double(usage.ru_utime.tv_sec) * 1000 + Double(usage.ru_utime.tv_usec) / 1000
    let system = Double(usage.ru_stime.tv_sec) * 1000 + Double(usage.ru_stime.tv_usec) / 1000
    return user + system
}

/// `--flag value` pairs.
struct Arguments {
    var values: [String: String] = [:]
    init(_ list: ArraySlice<String>) {
        var iterator = list.makeIterator()
        while let flag = iterator.next() {
            guard flag.hasPrefix("--"), let value = iterator.next() else { fail("bad argument \(flag)") }
            values[String(flag.dropFirst(2))] = value
        }
    }
    func string(_ name: String) -> String {
        guard let value = values[name] else { fail("missing --\(name)") }
        return value
    }
    func int(_ name: String, default fallback: Int? = nil) -> Int {
        guard let text = values[name] ?? fallback.map(String.init) else { fail("missing --\(name)") }
        guard let value = Int(text), value > 0 else { fail("--\(name) must be a positive integer") }
        return value
    }
    func double(_ name: String, default fallback: Double) -> Double {
        guard let text = values[name] else { return fallback }
        guard let value = Double(text), value > 0 else { fail("--\(name) must be a positive number") }
        return value
    }
}

/// One client connection: the transport feeds the H2 session and flushes what it produces.
/// One client connection to the agent, driven like every other HTTP/2 peer of ours (`H2ConnectionDriver`).
final class BenchConnection {
    let grpc = GRPCClientConnection()
    let driver: H2ConnectionDriver

    init(fd: Int32, loop: EventLoop) {
        do {
            driver = try H2ConnectionDriver.onSocket(fd, loop: loop, session: grpc.session)
        } catch {
            fail("register: \(error)")
        }
        driver.onClosed = { loss in fail("the agent closed a connection (\(loss))") }
    }

    convenience init(address: UnixSocketAddress, loop: EventLoop) {
        let fd: Int32
        do { fd = try connectUnixSocket(address) } catch { fail("connect \(address): \(error)") }
        self.init(fd: fd, loop: loop)
    }

    func flush() { driver.flush() }
}

/// Opens a StreamSecrets stream for `name` and ACKs every response like Envoy; `onVersion` sees each version.
func openStream(on connection: BenchConnection, name: String, onVersion: @escaping (UInt64) -> Void) {
    let call: GRPCClientCall
    do throws(GRPCStatus) {
        call = try connection.grpc.startCall(path: SecretDiscoveryServiceMethod.streamSecrets.path)
    } catch {
        fail("cannot start StreamSecrets: \(error)")
    }
    let node = Node(id: "sds-bench", cluster: "bench")
    // The client's own cost is part of every push figure, so it reads only what an ACK needs (the version and nonce
    // entries, by a scan of the top level, copied as encoded) and builds no message: a full decode and encode per
    // response made this client, not the agent, the slower side at 10,000 streams. The stream's own fields (its
    // name and the type URL) are encoded once; each ACK adds the response's version and nonce entries (protobuf
    // fields may come in any order). Versions are told apart by their digest.
    var fixed: [UInt8] = []
    WireFieldWriter.appendString(name, field: 3, to: &fixed)
    WireFieldWriter.appendString(secretTypeURL, field: 4, to: &fixed)
    call.onMessage = { [weak call, fixed] bytes in
        guard let call else { return }
        let ack: (entries: [UInt8], versionDigest: UInt64)
        do throws(WireError) {
            ack = try DiscoveryResponse.ackEntries(wireBytes: bytes)
        } catch {
            fail("malformed DiscoveryResponse: \(error)")
        }
        call.send(fixed, then: ack.entries)
        onVersion(ack.versionDigest)
    }
    call.onFinish = { status, _ in fail("stream \(name) ended: \(status)") }
    let request = DiscoveryRequest(node: node, resourceNames: [name], typeURL: secretTypeURL)
    call.send(request.wireBytes())
}

func makeLoop() -> EventLoop {
    do { return try EventLoop() } catch { fail("event loop: \(error)") }
}

func parseAddress(_ text: String) -> UnixSocketAddress {
    do { return try UnixSocketAddress(text) } catch { fail("\(error)") }
}

// MARK: issue

func runIssue(_ arguments: Arguments) {
    let count = arguments.int("count", default: 2000)
    let cpuBefore = ownCPUMillis()
    let result: LocalCA.IssuanceBenchmark
    do { result = try LocalCA.benchmarkIssuance(count: count) } catch { fail("issuance: \(error)") }
    var object = JSONObject()
    object.set("event", "issue")
    object.set("count", result.count)
    object.set("seconds", result.seconds)
    object.set("svids_per_s", result.svidsPerSecond)
    object.set("cpu_ms", ownCPUMillis() - cpuBefore)
    emit(object)
}

// MARK: jwt

/// JWT-SVID minting: ES256 signature, base64url and JSON for distinct audience sets (no cache hits).
func runJWT(_ arguments: Arguments) {
    let count = arguments.int("count", default: 2000)
    let cpuBefore = ownCPUMillis()
    do {
        let now = Timestamp(secondsSinceEpoch: Int64(realtimeNanos() / 1_000_000_000))
        let key = try JWTSigningKey.generate(now: now, lifetime: 86_400)
        let subject = try SPIFFEID(parsing: "spiffe://example.org/ns/bench/sa/bench")
        let started = monotonicNanos()
        var bytes = 0
        for index in 0..<count {
            let token = try JWTSVIDToken.mint(
                subject: subject, audiences: ["spiffe://example.org/ns/db/sa/\(index)"], issuedAt: now,
                expiresAt: now + 300, key: key)
            bytes += token.utf8.count
        }
        let seconds = Double(monotonicNanos() - started) / 1e9
        var object = JSONObject()
        object.set("event", "jwt")
        object.set("count", count)
        object.set("seconds", seconds)
        object.set("tokens_per_s", Double(count) / seconds)
        object.set("token_bytes", bytes / max(count, 1))
        object.set("cpu_ms", ownCPUMillis() - cpuBefore)
        emit(object)
    } catch {
        fail("jwt: \(error)")
    }
}

// MARK: first

func runFirst(_ arguments: Arguments) {
    let address = parseAddress(arguments.string("socket"))
    let timeout = arguments.double("timeout", default: 10)
    let deadline = monotonicNanos() + UInt64(timeout * 1e9)
    let loop = makeLoop()
    // Block on inotify until the socket file appears (no busy polling to steal the CPU the agent is starting
    // on); between bind() and listen() connect() is refused, so then retry tightly. Every wait is bounded.
    var directoryChanged = false
    let watcher: FileWatcher
    do {
        watcher = try FileWatcher(loop: loop) { _ in directoryChanged = true }
        try watcher.watch(file: address.path)
    } catch {
        fail("inotify on \(address): \(error)")
    }
    // The caller starts the agent on this line: from here no start-up can be missed.
    var waiting = JSONObject()
    waiting.set("event", "waiting")
    emit(waiting)
    var fd: Int32 = -1
    var attempts = 0
    while fd < 0 {
        attempts += 1
        do {
            fd = try connectUnixSocket(address)
        } catch {
            guard error.errno == ENOENT || error.errno == ECONNREFUSED else { fail("connect: \(error)") }
            if monotonicNanos() >= deadline { fail("no agent on \(address) after \(timeout) s") }
            if directoryChanged {
                usleep(50)
            } else {
                // The 50 ms cap covers an event missed before the watch started.
                _ = loop.run(until: { directoryChanged }, timeout: 0.05)
            }
        }
    }
    let connectedAt = realtimeNanos()
    let connection = BenchConnection(fd: fd, loop: loop)
    var receivedAt: UInt64?
    openStream(on: connection, name: "default") { _ in
        if receivedAt == nil { receivedAt = realtimeNanos() }
    }
    connection.flush()
    let remaining = Double(deadline > monotonicNanos() ? deadline - monotonicNanos() : 0) / 1e9
    guard loop.run(until: { receivedAt != nil }, timeout: remaining), let receivedAt else {
        fail("no DiscoveryResponse within \(timeout) s")
    }
    withExtendedLifetime(watcher) {}
    var object = JSONObject()
    object.set("event", "first")
    object.set("connected_realtime_ns", Int(connectedAt))
    object.set("received_realtime_ns", Int(receivedAt))
    object.set("connect_attempts", attempts)
    emit(object)
}

// MARK: hold

/// Reads newline-terminated commands from stdin on the loop.
final class CommandReader {
    private var pending: [UInt8] = []
    private var eof = false
    var lines: [String] = []

    init(loop: EventLoop) {
        _ = fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK)
        do {
            try loop.register(fd: 0, events: .readable) { [unowned self, unowned loop] _ in self.readAvailable(loop) }
        } catch {
            fail("stdin: \(error)")
        }
    }

    private func readAvailable(_ loop: EventLoop) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if count > 0 {
                pending += buffer[0..<count]
            } else {
                if count == 0 {
                    // EOF: the driver is gone; behave as if it said quit.
                    loop.deregister(fd: 0)
                    lines.append("quit")
                }
                break
            }
        }
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: pending[..<newline], as: UTF8.self))
            pending.removeSubrange(...newline)
        }
    }
}

func runHold(_ arguments: Arguments) {
    let address = parseAddress(arguments.string("socket"))
    let streams = arguments.int("streams")
    let connectionCount = arguments.int("connections", default: 1)
    let names = (arguments.values["names"] ?? "default").split(separator: ",").map(String.init)
    let timeout = arguments.double("timeout", default: 60)
    let loop = makeLoop()
    var tracker = PushTracker<UInt64>(streamCount: streams)
    let start = monotonicNanos()
    var connections: [BenchConnection] = []
    var index = 0
    for count in streamsPerConnection(streams: streams, connections: connectionCount) {
        let connection = BenchConnection(address: address, loop: loop)
        for _ in 0..<count {
            let stream = index
            openStream(on: connection, name: names[stream % names.count]) { version in
                tracker.received(stream: stream, version: version, at: monotonicNanos())
            }
            index += 1
        }
        connection.flush()
        connections.append(connection)
    }
    guard loop.run(until: { tracker.state == .ready }, timeout: timeout) else {
        fail("only \(tracker.answeredCount) of \(streams) streams got a secret within \(timeout) s")
    }
    var ready = JSONObject()
    ready.set("event", "ready")
    ready.set("streams", streams)
    ready.set("connections", connections.count)
    ready.set("ready_ms", Double((tracker.readyAtNanos ?? start) - start) / 1e6)
    ready.set("client_cpu_ms", ownCPUMillis())
    emit(ready)

    let commands = CommandReader(loop: loop)
    while true {
        // Idle between commands: block on stdin and the sockets only (no timer of our own).
        _ = loop.run(until: { !commands.lines.isEmpty }, timeout: 24 * 3600)
        guard !commands.lines.isEmpty else { continue }
        let words = commands.lines.removeFirst().split(separator: " ")
        switch words.first {
        case "push":
            guard words.count == 2, let pid = Int32(words[1]) else { fail("usage: push PID") }
            let cpuBefore = ownCPUMillis()
            tracker.beginPush(at: monotonicNanos())
            guard kill(pid, SIGHUP) == 0 else { fail("kill(\(pid), SIGHUP): errno \(errno)") }
            guard loop.run(until: { !tracker.isPushing }, timeout: timeout), let nanos = tracker.lastPushNanos else {
                fail("push did not reach every stream within \(timeout) s")
            }
            var object = JSONObject()
            object.set("event", "push")
            object.set("streams", streams)
            object.set("ms", Double(nanos) / 1e6)
            object.set("client_cpu_ms", ownCPUMillis() - cpuBefore)
            emit(object)
        case "stats":
            var object = JSONObject()
            object.set("event", "stats")
            object.set("client_cpu_ms", ownCPUMillis())
            emit(object)
        case "quit":
            exit(0)
        default:
            fail("unknown command \(words.joined(separator: " "))")
        }
    }
}

// MARK: main

let argv = CommandLine.arguments
guard argv.count >= 2 else { fail("usage: sds-bench issue|jwt|first|hold [--flag value]...") }
let arguments = Arguments(argv.dropFirst(2))
switch argv[1] {
case "issue": runIssue(arguments)
case "jwt": runJWT(arguments)
case "first": runFirst(arguments)
case "hold": runHold(arguments)
default: fail("unknown command \(argv[1])")
}
