import CLinux
import CNGHTTP2
import COpenSSL
import CProtobufC
import Glibc

// `sds-floor`: the floors `make bench` measures the agent against, in the same run (Tests/Bench/bench.py).
// It links the same C libraries as sds-agent (nghttp2, OpenSSL's libssl/libcrypto, protobuf-c) with the static Swift
// stdlib, built the same way, and none of our modules.
//
//   sds-floor
//       The RSS floor: initializes each library as the agent does (an nghttp2 session with its SETTINGS, a P-256
//       key, protobuf-c's version), prints `ready` and sleeps. The agent's RSS minus this is what our code costs.
//   sds-floor streams N
//       nghttp2's own per-stream state: N open server streams, 100 per nghttp2 server session (as the bench spreads
//       them over connections), fed in memory with hand-built client frames (HEADERS and one DATA frame of a gRPC
//       request each); every stream answered with response HEADERS and one ~2 KB DATA frame, then parked on a
//       deferred data provider, as the agent's are. Sessions use the agent's options and SETTINGS. Prints one JSON
//       line: RSS (VmRSS, RssAnon) and malloc'd bytes (mallinfo2) before, after the sessions, after the streams.
//   sds-floor fanout N [RUNS]
//       The push floor: ceil(N/100) Unix socketpairs (the bench's connections), one ~2 KB buffer built once, N
//       blocking writes of it spread round-robin over the pairs; a reader thread (epoll, non-blocking reads) drains
//       the other ends. Time from the first write to the last byte read; RUNS runs (default 9), one JSON line.
//   sds-floor first
//       The start-up floor: exec + static initialization + one P-256 key and one ECDSA signature, then one JSON line
//       with the CLOCK_REALTIME of the write (the caller subtracts its spawn time).
// Any failure exits 1 with a message on stderr.

func fail(_ message: String) -> Never {
    let line = "sds-floor: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

func writeLine(_ line: String) {
    _ = (line + "\n").withCString { write(1, $0, strlen($0)) }
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

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

func positiveInt(_ text: String, _ what: String) -> Int {
    guard let value = Int(text), value > 0 else { fail("\(what) must be a positive integer, not \(text)") }
    return value
}

// MARK: idle

func runIdle() {
    var callbacks: OpaquePointer?
    nghttp2_session_callbacks_new(&callbacks)
    var session: OpaquePointer?
    nghttp2_session_server_new(&session, callbacks, nil)
    nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil, 0)

    let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil)
    EVP_PKEY_keygen_init(context)
    "P-256".withCString { _ = EVP_PKEY_CTX_set_group_name(context, $0) }
    var key: OpaquePointer?
    EVP_PKEY_generate(context, &key)

    let version = String(cString: protobuf_c_version())
    writeLine("ready")
    _ = version
    withExtendedLifetime((session, key)) { _ = pause() }
}

// MARK: streams

/// VmRSS and RssAnon of this process, in kB.
func ownRSS() -> (rss: Int, anon: Int) {
    let fd = open("/proc/self/status", O_RDONLY)
    guard fd >= 0 else { fail("cannot open /proc/self/status") }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard count > 0 else { fail("cannot read /proc/self/status") }
    var rss = 0
    var anon = 0
    for line in String(decoding: bytes[0..<count], as: UTF8.self).split(separator: "\n") {
        let value = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        if line.hasPrefix("VmRSS:") { rss = value }
        if line.hasPrefix("RssAnon:") { anon = value }
    }
    return (rss, anon)
}

/// An nghttp2 allocator that counts the bytes nghttp2 asks for (a 16-byte header before each block keeps its size).
/// Used in a second pass only, so the RSS pass runs on the allocator the agent uses.
final class CountingAllocator {
    var live = 0
    var mem = nghttp2_mem()

    init() {
        mem.malloc = { size, user in CountingAllocator.allocate(size, user) }
        mem.calloc = { count, size, user in
            guard let block = CountingAllocator.allocate(count * size, user) else { return nil }
            return memset(block, 0, count * size)
        }
        mem.realloc = { old, size, user in
            guard let old else { return CountingAllocator.allocate(size, user) }
            let header = old - 16
            let oldSize = header.load(as: Int.self)
            guard let block = realloc(header, size + 16) else { return nil }
            block.storeBytes(of: size, as: Int.self)
            CountingAllocator.counter(user).live += size - oldSize
            return block + 16
        }
        mem.free = { block, user in
            guard let block else { return }
            let header = block - 16
            CountingAllocator.counter(user).live -= header.load(as: Int.self)
            free(header)
        }
        mem.mem_user_data = Unmanaged.passUnretained(self).toOpaque()
    }

    static func counter(_ user: UnsafeMutableRawPointer?) -> CountingAllocator {
        Unmanaged<CountingAllocator>.fromOpaque(user!).takeUnretainedValue()
    }

    static func allocate(_ size: Int, _ user: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
        guard let header = malloc(size + 16) else { return nil }
        header.storeBytes(of: size, as: Int.self)
        counter(user).live += size
        return header + 16
    }
}

/// One HTTP/2 frame: the 9-byte header, then `payload`.
func frame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8]) -> [UInt8] {
    let length = payload.count
    return [
        UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags,
        UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff),
    ] + payload
}

/// Calls `body` with `headers` as nghttp2 name-value pairs (valid only inside `body`).
func withNameValues<R>(_ headers: [(String, String)], _ body: ([nghttp2_nv]) -> R) -> R {
    var storage: [[UInt8]] = []
    for (name, value) in headers {
        storage.append(Array(name.utf8))
        storage.append(Array(value.utf8))
    }
    var pointers: [UnsafeMutablePointer<UInt8>] = []
    for bytes in storage {
        let pointer = UnsafeMutablePointer<UInt8>.allocate(capacity: max(bytes.count, 1))
        pointer.initialize(from: bytes, count: bytes.count)
        pointers.append(pointer)
    }
    defer { pointers.forEach { $0.deallocate() } }
    var nva: [nghttp2_nv] = []
    for index in 0..<headers.count {
        nva.append(
            nghttp2_nv(
                name: pointers[2 * index], value: pointers[2 * index + 1], namelen: storage[2 * index].count,
                valuelen: storage[2 * index + 1].count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
    }
    return body(nva)
}

/// The request headers of an SDS StreamSecrets call, HPACK-encoded twice by one encoder: the first block (literals
/// that enter the dynamic table) opens a session's first stream, the second (all indexed) every later one.
func requestHeaderBlocks() -> (first: [UInt8], later: [UInt8]) {
    let headers = [
        (":method", "POST"), (":scheme", "http"),
        (":path", "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"), (":authority", "sds-grpc"),
        ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "envoy/1.40.0"),
        ("x-envoy-internal", "true"),
    ]
    var deflater: OpaquePointer?
    guard nghttp2_hd_deflate_new(&deflater, 4096) == 0 else { fail("nghttp2_hd_deflate_new") }
    defer { nghttp2_hd_deflate_del(deflater) }
    return withNameValues(headers) { nva in
        func encode() -> [UInt8] {
            var block = [UInt8](repeating: 0, count: nghttp2_hd_deflate_bound(deflater, nva, nva.count))
            let count = nghttp2_hd_deflate_hd(deflater, &block, block.count, nva, nva.count)
            guard count > 0 else { fail("nghttp2_hd_deflate_hd: \(count)") }
            return Array(block[0..<count])
        }
        let first = encode()
        return (first, encode())
    }
}

/// A server session configured as the agent's (H2SessionCore): its options, SETTINGS and connection window.
/// With `allocator`, nghttp2 allocates through it (the counting pass).
func newServerSession(
    callbacks: OpaquePointer?, options: OpaquePointer?, allocator: CountingAllocator?
) -> OpaquePointer? {
    var session: OpaquePointer?
    let rc =
        if let allocator {
            nghttp2_session_server_new3(&session, callbacks, nil, options, &allocator.mem)
        } else {
            nghttp2_session_server_new2(&session, callbacks, nil, options)
        }
    guard rc == 0 else { fail("nghttp2_session_server_new: \(rc)") }
    let settings = [
        nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: 128),
        nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: 16 << 10),
    ]
    _ = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), settings, settings.count)
    _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 1 << 24)
    return session
}

/// Feeds `bytes` to the session, then takes (and drops) everything it has to send.
func exchange(_ session: OpaquePointer?, _ bytes: UnsafeRawBufferPointer) {
    if let base = bytes.baseAddress, !bytes.isEmpty {
        let consumed = nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        guard consumed == bytes.count else { fail("nghttp2_session_mem_recv: \(consumed)") }
    }
    while true {
        var output: UnsafePointer<UInt8>?
        let count = nghttp2_session_mem_send(session, &output)
        guard count >= 0 else { fail("nghttp2_session_mem_send: \(count)") }
        if count == 0 { return }
    }
}

/// The response body: one ~2 KB DATA frame (a DiscoveryResponse's size), then deferred like the agent's idle stream.
/// `source.fd` is 1 until the body has gone out.
func responseProvider() -> nghttp2_data_provider {
    var provider = nghttp2_data_provider()
    provider.source.fd = 1
    provider.read_callback = { _, _, buffer, length, flags, source, _ in
        guard let buffer, let flags, let source else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        guard source.pointee.fd == 1 else { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
        source.pointee.fd = 0
        let count = min(length, 2048)
        buffer.initialize(repeating: 0x5a, count: count)
        flags.pointee = 0
        return count
    }
    return provider
}

func runStreams(_ total: Int) {
    let perSession = 100
    var callbacks: OpaquePointer?
    nghttp2_session_callbacks_new(&callbacks)
    var options: OpaquePointer?
    nghttp2_option_new(&options)
    nghttp2_option_set_no_auto_window_update(options, 1)
    nghttp2_option_set_max_continuations(options, 8)
    nghttp2_option_set_max_deflate_dynamic_table_size(options, 4096)
    nghttp2_option_set_stream_reset_rate_limit(options, 1000, 33)

    // Everything fed to the sessions is built before the first reading: the client preface, its SETTINGS, the ACK
    // of ours, a connection WINDOW_UPDATE (as Envoy sends), and each stream's frames.
    let handshake =
        Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + frame(type: 0x4, flags: 0, stream: 0, payload: [])
        + frame(type: 0x4, flags: 0x1, stream: 0, payload: [])
        + frame(type: 0x8, flags: 0, stream: 0, payload: [0x00, 0xff, 0x00, 0x00])
    let blocks = requestHeaderBlocks()
    // A gRPC message: 5-byte prefix, then a DiscoveryRequest-sized body (node, resource name, type URL).
    let request: [UInt8] = [0, 0, 0, 0, 160] + [UInt8](repeating: 0x0a, count: 160)
    func streamFrames(_ id: UInt32, first: Bool) -> [UInt8] {
        frame(type: 0x1, flags: 0x4, stream: id, payload: first ? blocks.first : blocks.later)
            + frame(type: 0x0, flags: 0, stream: id, payload: request)
    }
    let firstStream = streamFrames(1, first: true)
    let laterStreams: [[UInt8]] = (1..<perSession).map { streamFrames(UInt32(2 * $0 + 1), first: false) }
    var provider = responseProvider()
    let statusHeaders = [(":status", "200"), ("content-type", "application/grpc")]

    func openStreams(_ session: OpaquePointer?, count: Int) {
        for index in 0..<count {
            let id = Int32(2 * index + 1)
            if index == 0 {
                firstStream.withUnsafeBytes { exchange(session, $0) }
            } else {
                laterStreams[index - 1].withUnsafeBytes { exchange(session, $0) }
            }
            let rc = withNameValues(statusHeaders) { nva in
                nghttp2_submit_response(session, id, nva, nva.count, &provider)
            }
            guard rc == 0 else { fail("nghttp2_submit_response(\(id)): \(rc)") }
            exchange(session, UnsafeRawBufferPointer(start: nil, count: 0))
            guard nghttp2_session_find_stream(session, id) != nil else { fail("stream \(id) is not open") }
        }
    }
    func newSession(_ allocator: CountingAllocator? = nil) -> OpaquePointer? {
        let session = newServerSession(callbacks: callbacks, options: options, allocator: allocator)
        exchange(session, UnsafeRawBufferPointer(start: nil, count: 0))  // our SETTINGS go out first
        handshake.withUnsafeBytes { exchange(session, $0) }
        return session
    }

    // Warm-up, as the agent's bench has one Envoy-like client (2 streams) before its idle reading: the code paths
    // are resident and the allocator's arena exists before the baseline.
    let warm = newSession()
    openStreams(warm, count: 2)
    let sessionCount = (total + perSession - 1) / perSession
    var sessions = [OpaquePointer?](repeating: nil, count: sessionCount)

    // Pass 1, RSS on the allocator the agent uses: the sessions, then their streams.
    let before = ownRSS()
    for index in 0..<sessionCount { sessions[index] = newSession() }
    let afterSessions = ownRSS()
    var remaining = total
    for session in sessions {
        openStreams(session, count: min(perSession, remaining))
        remaining -= perSession
    }
    let afterStreams = ownRSS()

    // Pass 2, the bytes nghttp2 itself asks for: one more session of `perSession` streams through the counter.
    let allocator = CountingAllocator()
    let counted = newSession(allocator)
    let sessionBytes = allocator.live
    openStreams(counted, count: perSession)
    let streamBytes = Double(allocator.live - sessionBytes) / Double(perSession)

    let perStream = Double(afterStreams.rss - before.rss) * 1024 / Double(total)
    let perStreamOnly = Double(afterStreams.rss - afterSessions.rss) * 1024 / Double(total)
    writeLine(
        "{\"event\":\"streams\",\"streams\":\(total),\"sessions\":\(sessionCount),"
            + "\"rss_before_kb\":\(before.rss),\"rss_after_sessions_kb\":\(afterSessions.rss),"
            + "\"rss_after_streams_kb\":\(afterStreams.rss),\"anon_before_kb\":\(before.anon),"
            + "\"anon_after_streams_kb\":\(afterStreams.anon),"
            + "\"rss_per_stream_bytes\":\(perStream),\"rss_per_stream_excluding_sessions_bytes\":\(perStreamOnly),"
            + "\"nghttp2_bytes_per_stream\":\(streamBytes),\"nghttp2_bytes_per_session\":\(sessionBytes)}")
    withExtendedLifetime((warm, sessions, counted, allocator)) {}
}

// MARK: fanout

/// The reader thread's side of one fanout run.
final class FanoutReader {
    let fds: [Int32]
    let expected: Int
    let readyPipe: Int32
    var finishedAt: UInt64 = 0
    var failure: String?

    init(fds: [Int32], expected: Int, readyPipe: Int32) {
        self.fds = fds
        self.expected = expected
        self.readyPipe = readyPipe
    }

    /// Drains every fd until `expected` bytes have arrived (or 30 s pass), then records the time.
    func run() {
        let epoll = epoll_create1(0)
        guard epoll >= 0 else {
            failure = "epoll_create1: errno \(errno)"
            return
        }
        defer { close(epoll) }
        for (index, fd) in fds.enumerated() {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.u64 = UInt64(index)
            guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
                failure = "epoll_ctl: errno \(errno)"
                return
            }
        }
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        var events = [epoll_event](repeating: epoll_event(), count: 128)
        var received = 0
        var token: UInt8 = 1
        _ = write(readyPipe, &token, 1)
        let deadline = monotonicNanos() + 30_000_000_000
        while received < expected {
            let count = epoll_wait(epoll, &events, Int32(events.count), 1000)
            if count < 0 && errno != EINTR {
                failure = "epoll_wait: errno \(errno)"
                return
            }
            for event in events[0..<max(Int(count), 0)] {
                let fd = fds[Int(event.data.u64)]
                while true {
                    let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if got <= 0 { break }
                    received += got
                }
            }
            if monotonicNanos() > deadline {
                failure = "only \(received) of \(expected) bytes within 30 s"
                return
            }
        }
        finishedAt = monotonicNanos()
    }
}

/// A blocking write of all of `buffer`.
func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) {
    var offset = 0
    while offset < buffer.count {
        let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
        guard written > 0 else { fail("write: errno \(errno)") }
        offset += written
    }
}

func fanoutOnce(writes: Int, pairs: Int, bytes: Int, coalesce: Bool) -> Double {
    var writers: [Int32] = []
    var readers: [Int32] = []
    for _ in 0..<pairs {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            fail("socketpair: errno \(errno)")
        }
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        writers.append(fds[0])
        readers.append(fds[1])
    }
    defer { (writers + readers).forEach { close($0) } }
    var ready: [Int32] = [0, 0]
    guard pipe(&ready) == 0 else { fail("pipe: errno \(errno)") }
    defer { ready.forEach { close($0) } }

    let reader = FanoutReader(fds: readers, expected: writes * bytes, readyPipe: ready[1])
    var thread = pthread_t()
    let context = Unmanaged.passRetained(reader).toOpaque()
    let rc = pthread_create(
        &thread, nil,
        { context in
            let reader = Unmanaged<FanoutReader>.fromOpaque(context!).takeRetainedValue()
            reader.run()
            return nil
        }, context)
    guard rc == 0 else { fail("pthread_create: \(rc)") }
    // The reader is in its loop (as the bench client is waiting on its sockets) before the clock starts.
    var token: UInt8 = 0
    guard read(ready[0], &token, 1) == 1 else { fail("the reader thread did not start") }

    let started = monotonicNanos()
    // "Encoded once": the payload is built inside the timed window, then written `writes` times, each write on its
    // own (the brief's floor) or, coalesced, copied into one buffer per pair and written at once.
    let payload = [UInt8](repeating: 0x5a, count: bytes)
    if coalesce {
        for pair in 0..<pairs {
            let count = writes / pairs + (pair < writes % pairs ? 1 : 0)
            var batch: [UInt8] = []
            batch.reserveCapacity(count * bytes)
            for _ in 0..<count { batch.append(contentsOf: payload) }
            batch.withUnsafeBytes { writeAll(writers[pair], $0) }
        }
    } else {
        payload.withUnsafeBytes { buffer in
            for index in 0..<writes { writeAll(writers[index % pairs], buffer) }
        }
    }
    pthread_join(thread, nil)
    if let failure = reader.failure { fail("fanout reader: \(failure)") }
    return Double(reader.finishedAt - started) / 1e6
}

func runFanout(writes: Int, runs: Int) {
    let pairs = (writes + 99) / 100
    let bytes = 2048
    let separate = (0..<runs).map { _ in fanoutOnce(writes: writes, pairs: pairs, bytes: bytes, coalesce: false) }
    let coalesced = (0..<runs).map { _ in fanoutOnce(writes: writes, pairs: pairs, bytes: bytes, coalesce: true) }
    func list(_ times: [Double]) -> String { "[" + times.map { String($0) }.joined(separator: ",") + "]" }
    writeLine(
        "{\"event\":\"fanout\",\"writes\":\(writes),\"pairs\":\(pairs),\"bytes\":\(bytes),"
            + "\"runs\":\(list(separate)),\"median_ms\":\(median(separate)),\"min_ms\":\(separate.min()!),"
            + "\"max_ms\":\(separate.max()!),\"coalesced_runs\":\(list(coalesced)),"
            + "\"coalesced_median_ms\":\(median(coalesced))}")
}

// MARK: first

func runFirst() {
    // OpenSSL started as the agent starts it (PKI's OpenSSLLibrary): no configuration file, no legacy cipher
    // names, and Hash_DRBG, whose first generator needs no cipher fetch. The floor is what the agent could do at
    // best, not a slower start.
    _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ADD_ALL_CIPHERS), nil)
    _ = RAND_set_DRBG_type(nil, "HASH-DRBG", nil, nil, "SHA256")
    let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil)
    var key: OpaquePointer?
    guard EVP_PKEY_keygen_init(context) == 1,
        "P-256".withCString({ EVP_PKEY_CTX_set_group_name(context, $0) }) == 1,
        EVP_PKEY_generate(context, &key) == 1
    else { fail("P-256 key generation") }
    EVP_PKEY_CTX_free(context)
    let signing = EVP_PKEY_CTX_new(key, nil)
    var digest = [UInt8](repeating: 0x42, count: 32)
    var signature = [UInt8](repeating: 0, count: 80)
    var length = signature.count
    guard EVP_PKEY_sign_init(signing) == 1, EVP_PKEY_sign(signing, &signature, &length, &digest, digest.count) == 1
    else { fail("ECDSA signature") }
    writeLine("{\"event\":\"first\",\"written_realtime_ns\":\(realtimeNanos()),\"signature_bytes\":\(length)}")
}

// MARK: main

let argv = CommandLine.arguments
switch argv.count > 1 ? argv[1] : "idle" {
case "idle": runIdle()
case "streams" where argv.count == 3: runStreams(positiveInt(argv[2], "N"))
case "fanout" where argv.count == 3 || argv.count == 4:
    runFanout(writes: positiveInt(argv[2], "N"), runs: argv.count == 4 ? positiveInt(argv[3], "RUNS") : 9)
case "first": runFirst()
default: fail("usage: sds-floor [idle | streams N | fanout N [RUNS] | first]")
}
