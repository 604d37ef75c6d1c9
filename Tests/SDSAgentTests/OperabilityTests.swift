import GRPC
import Glibc
import H2
import HTTP1
import Logging
import TestSupport
import Testing
import Transport
import Wire

@testable import SDSAgent
@testable import Servers

private let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// gRPC health in memory: a client and the health service over two nghttp2 sessions.
private final class HealthHarness {
    let health = HealthService()
    let server: GRPCServerConnection
    let client = GRPCClientConnection()
    let pair: InMemoryPair

    init() {
        let router = GRPCRouter()
        health.register(on: router)
        server = GRPCServerConnection(router: router)
        pair = InMemoryPair(client: client.session, server: server.session, feedMode: .whole)
        pair.pump()
    }

    func call(_ path: String, service: String = "") throws -> (GRPCClientCall, Received) {
        let call = try client.startCall(path: path)
        let received = Received()
        call.onMessage = { received.messages.append($0) }
        call.onFinish = { status, _ in received.status = status }
        call.send(HealthWire.request(service: service))
        return (call, received)
    }
}

@Suite struct HealthServiceTests {
    @Test func checkSaysNotServingUntilTold() throws {
        let h = HealthHarness()
        let (call, received) = try h.call(HealthService.checkPath)
        call.closeSend()
        h.pair.pump()
        #expect(received.status?.code == .ok)
        #expect(received.messages.map(HealthWire.status(fromResponse:)) == [.notServing])

        h.health.setServing(true)
        let (again, answer) = try h.call(
            HealthService.checkPath, service: "envoy.service.secret.v3.SecretDiscoveryService")
        again.closeSend()
        h.pair.pump()
        #expect(answer.messages.map(HealthWire.status(fromResponse:)) == [.serving])
    }

    @Test func unknownServiceIsNotFoundOnCheckAndServiceUnknownOnWatch() throws {
        let h = HealthHarness()
        let (check, checked) = try h.call(HealthService.checkPath, service: "no.such.Service")
        check.closeSend()
        let (_, watched) = try h.call(HealthService.watchPath, service: "no.such.Service")
        h.pair.pump()
        #expect(checked.status?.code == .notFound)
        #expect(watched.messages.map(HealthWire.status(fromResponse:)) == [.serviceUnknown])
        #expect(watched.status == nil, "the Watch stays open")
        #expect(h.health.watcherCount == 0, "an unknown service is not watched")
    }

    @Test func watchGetsTheCurrentStatusThenEachChangeOnce() throws {
        let h = HealthHarness()
        let (call, received) = try h.call(HealthService.watchPath)
        h.pair.pump()
        h.health.setServing(true)
        h.pair.pump()
        h.health.setServing(true)  // no change: nothing sent
        h.pair.pump()
        h.health.setServing(false)
        h.pair.pump()
        #expect(received.messages.map(HealthWire.status(fromResponse:)) == [.notServing, .serving, .notServing])
        #expect(h.health.watcherCount == 1)
        call.cancel()
        h.pair.pump()
        #expect(h.health.watcherCount == 0, "a cancelled Watch is forgotten")
    }

    @Test func finishAllEndsWatches() throws {
        let h = HealthHarness()
        let (_, received) = try h.call(HealthService.watchPath)
        h.pair.pump()
        h.health.finishAll(GRPCStatus(.unavailable, "draining"))
        h.pair.pump()
        #expect(received.status?.code == .unavailable)
        #expect(h.health.watcherCount == 0)
    }

    @Test func requestCodec() {
        #expect(HealthWire.service(fromRequest: []) == "")
        #expect(HealthWire.service(fromRequest: HealthWire.request(service: "a.B")) == "a.B")
        let long = String(repeating: "x", count: 300)  // a two-byte length varint
        #expect(HealthWire.service(fromRequest: HealthWire.request(service: long)) == long)
        // Unknown fields are skipped: field 2 varint, field 3 fixed64, then the service.
        #expect(
            HealthWire.service(fromRequest: [0x10, 0x05, 0x19, 0, 0, 0, 0, 0, 0, 0, 0] + [0x0A, 0x01, 0x61]) == "a")
        // Malformed: a length past the end, a truncated varint, invalid UTF-8, wire type 7.
        #expect(HealthWire.service(fromRequest: [0x0A, 0x05, 0x61]) == nil)
        #expect(HealthWire.service(fromRequest: [0x0A, 0x80]) == nil)
        #expect(HealthWire.service(fromRequest: [0x0A, 0x01, 0xFF]) == nil)
        #expect(HealthWire.service(fromRequest: [0x0F]) == nil)
    }

    @Test func responseCodec() {
        for status in [HealthWire.ServingStatus.unknown, .serving, .notServing, .serviceUnknown] {
            #expect(HealthWire.status(fromResponse: HealthWire.response(status)) == status)
        }
        #expect(HealthWire.status(fromResponse: [0x08]) == nil)
    }

    @Test func verdictLinesAreOneLineAndExitCodesMatch() {
        let verdicts: [HealthCheckClient.Verdict] = [
            .serving, .notServing(.notServing), .callFailed(GRPCStatus(.unavailable, "x")), .cannotConnect("gone"),
            .timedOut,
        ]
        for verdict in verdicts {
            #expect(!verdict.line(socket: "/s").contains("\n"))
            #expect(verdict.exitCode == (verdict == .serving ? 0 : 1))
        }
        #expect(HealthCheckClient.Verdict.notServing(.notServing).line(socket: "/s").contains("NOT_SERVING"))
    }
}

@Suite struct StatusRoutesTests {
    private func request(_ method: String, _ target: String) -> HTTPRequestParser.Request {
        HTTPRequestParser.Request(method: method, target: target, minorVersion: 1, headerNames: [])
    }

    @Test func readyFollowsTheSVIDLiveDoesNot() {
        for ready in [true, false] {
            let live = StatusRoutes.response(for: request("GET", "/live"), ready: ready, metrics: { "" })
            let readiness = StatusRoutes.response(for: request("GET", "/ready?verbose"), ready: ready, metrics: { "" })
            #expect(live.status == 200)
            #expect(readiness.status == (ready ? 200 : 503))
        }
    }

    @Test func metricsIsPrometheusText() {
        let response = StatusRoutes.response(for: request("GET", "/metrics"), ready: true, metrics: { "m 1\n" })
        #expect(response.status == 200 && response.body == "m 1\n")
        #expect(response.contentType == "text/plain; version=0.0.4; charset=utf-8")
    }

    @Test func onlyGetAndHead() {
        let head = StatusRoutes.response(for: request("HEAD", "/live"), ready: true, metrics: { "" })
        #expect(head.status == 200 && head.omitBody)
        let post = StatusRoutes.response(for: request("POST", "/live"), ready: true, metrics: { "" })
        #expect(post.status == 405 && post.headers.first?.0 == "Allow")
        #expect(StatusRoutes.response(for: request("GET", "/"), ready: true, metrics: { "" }).status == 404)
    }
}

@Suite struct MetricsExpositionTests {
    @Test func familiesAndSamples() {
        var out = MetricsExposition()
        out.family("sds_agent_x_total", .counter, "Things.\nMore \\ text.")
        out.sample("sds_agent_x_total", ["secret": "a\"b\\c\nd", "api": "sotw"], UInt64(3))
        out.sample("sds_agent_y", Int64(-1))
        #expect(
            out.text
                == "# HELP sds_agent_x_total Things.\\nMore \\\\ text.\n# TYPE sds_agent_x_total counter\n"
                + "sds_agent_x_total{api=\"sotw\",secret=\"a\\\"b\\\\c\\nd\"} 3\nsds_agent_y -1\n")
    }
}

/// The status listener over real loopback sockets, with small bounds so the test crosses them quickly.
@Suite(.serialized) struct StatusServerTests {
    private func connect(_ port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(rc == 0)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Reads what is available; nil once the peer closed.
    private func readSome(_ fd: Int32, into buffer: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &chunk, chunk.count)
        if n > 0 { buffer += chunk[0..<n] }
        return n != 0
    }

    /// Runs the loop in short slices until `condition` holds: the test's client sockets are not on the loop, so
    /// what they receive wakes nothing.
    private func drive(_ loop: EventLoop, timeout: Double = 5, until condition: () -> Bool) -> Bool {
        for _ in 0..<Int(timeout / 0.01) {
            if loop.run(until: condition, timeout: 0.01) { return true }
        }
        return condition()
    }

    private func makeServer(_ loop: EventLoop, limits: StatusLimits) throws -> StatusServer {
        let server = StatusServer(loop: loop, logger: quietLogger, limits: limits) { request in
            StatusRoutes.response(for: request, ready: true, metrics: { "" })
        }
        try server.listen(on: TCPAddress("127.0.0.1:0"))
        return server
    }

    @Test func answersThenCloses() throws {
        let loop = try EventLoop()
        let server = try makeServer(loop, limits: StatusLimits())
        let port = try #require(server.boundAddress?.port)
        #expect(port != 0, "the kernel's port is reported")
        let fd = connect(port)
        _ = "GET /live HTTP/1.1\r\nHost: x\r\n\r\n".withCString { write(fd, $0, strlen($0)) }
        var received: [UInt8] = []
        #expect(drive(loop) { !readSome(fd, into: &received) }, "the answer, then EOF")
        #expect(String(decoding: received, as: UTF8.self).hasPrefix("HTTP/1.1 200 OK\r\n"))
        close(fd)
        #expect(drive(loop, timeout: 1) { server.connectionCount == 0 }, "closed by the client's EOF, not the deadline")
    }

    @Test func slowClientIsCutAtTheDeadlineAndTheCapTurnsExtrasAway() throws {
        let loop = try EventLoop()
        let server = try makeServer(loop, limits: StatusLimits(maxConnections: 2, connectionTimeout: 0.3))
        var refused = 0
        server.onRefused = { refused += 1 }
        let port = try #require(server.boundAddress?.port)
        let slow = [connect(port), connect(port)]
        defer { slow.forEach { close($0) } }
        for fd in slow { _ = "GET /live HTTP/1.1\r\n".withCString { write(fd, $0, strlen($0)) } }
        #expect(loop.run(until: { server.connectionCount == 2 && server.silentConnectionCount == 0 }, timeout: 5))
        // The third takes the one slot above the cap; the fourth, silent like it, finds no one to replace.
        let third = connect(port)
        defer { close(third) }
        #expect(loop.run(until: { server.connectionCount == 3 }, timeout: 5))
        let extra = connect(port)
        defer { close(extra) }
        var ignored: [UInt8] = []
        #expect(drive(loop, timeout: 0.5) { !readSome(extra, into: &ignored) }, "the fourth is closed at once")
        #expect(refused == 1 && server.connectionCount == 3)
        // The deadline passes with the heads unfinished: all are closed.
        #expect(loop.run(until: { server.connectionCount == 0 }, timeout: 5))
        for fd in slow { #expect(drive(loop) { !readSome(fd, into: &ignored) }) }
    }

    /// Connections that never send a byte, reopened as fast as they close, must not starve a probe: at the cap the
    /// newcomer takes the oldest silent connection's place and is answered.
    @Test func aProbeEvictsTheOldestSilentConnectionAtTheCap() throws {
        let loop = try EventLoop()
        let server = try makeServer(loop, limits: StatusLimits(maxConnections: 2, connectionTimeout: 30))
        let port = try #require(server.boundAddress?.port)
        let silent = [connect(port), connect(port)]
        defer { silent.forEach { close($0) } }
        #expect(loop.run(until: { server.connectionCount == 2 }, timeout: 5))
        for round in 0..<5 {
            let probe = connect(port)
            _ = "GET /live HTTP/1.1\r\nHost: x\r\n\r\n".withCString { write(probe, $0, strlen($0)) }
            var received: [UInt8] = []
            #expect(drive(loop) { !readSome(probe, into: &received) }, "round \(round): answered, then EOF")
            #expect(String(decoding: received, as: UTF8.self).hasPrefix("HTTP/1.1 200 OK\r\n"))
            close(probe)
        }
        var ignored: [UInt8] = []
        #expect(drive(loop) { !readSome(silent[0], into: &ignored) }, "the oldest silent one was closed")
    }

    @Test func oversizedHeadIs431() throws {
        let loop = try EventLoop()
        let server = try makeServer(loop, limits: StatusLimits(maxHeadBytes: 64))
        let fd = connect(try #require(server.boundAddress?.port))
        defer { close(fd) }
        let head = "GET /live HTTP/1.1\r\nX: " + String(repeating: "a", count: 100) + "\r\n\r\n"
        _ = head.withCString { write(fd, $0, strlen($0)) }
        var received: [UInt8] = []
        #expect(drive(loop) { !readSome(fd, into: &received) })
        #expect(String(decoding: received, as: UTF8.self).hasPrefix("HTTP/1.1 431 "))
    }
}

@Suite struct TCPAddressTests {
    @Test func forms() throws {
        #expect(try TCPAddress(":15095").description == "127.0.0.1:15095")
        #expect(try TCPAddress("localhost:1").description == "127.0.0.1:1")
        #expect(try TCPAddress("0.0.0.0:15095").description == "0.0.0.0:15095")
        #expect(try TCPAddress("[::1]:15095").description == "[::1]:15095")
        for bad in ["15095", "example.org:80", "1.2.3.4:65536", "1.2.3.4:-1", "1.2.3.4:", "::1:80"] {
            #expect(throws: TCPAddress.ParseError.self) { try TCPAddress(bad) }
        }
    }
}

@Suite struct OperabilityCommandLineTests {
    @Test func healthcheckTakesOnlyTheSocket() throws {
        #expect(try AgentCommandLine.parse(["healthcheck"]) == .healthcheck(socket: nil))
        #expect(try AgentCommandLine.parse(["healthcheck", "--socket", "/s"]) == .healthcheck(socket: "/s"))
        #expect(try AgentCommandLine.parse(["healthcheck", "--socket=/s"]) == .healthcheck(socket: "/s"))
        #expect(throws: AgentCommandLine.UsageError.self) { try AgentCommandLine.parse(["healthcheck", "--socket"]) }
        #expect(throws: AgentCommandLine.UsageError.self) { try AgentCommandLine.parse(["healthcheck", "--x"]) }
    }

    @Test func statusAddressIsOffByDefaultAndValidated() throws {
        func resolve(_ flag: String?, env: [String: String] = [:]) throws(ConfigurationError) -> AgentConfiguration {
            var options = RawAgentOptions()
            options.socket = "/tmp/sds-config-test/agent.sock"
            options.statusAddress = flag
            return try AgentConfiguration.resolve(options, environment: env)
        }
        #expect(try resolve(nil).statusAddress == nil)
        #expect(try resolve(":15095").statusAddress?.description == "127.0.0.1:15095")
        #expect(
            try resolve(nil, env: ["SDS_STATUS_ADDR": "0.0.0.0:15095"]).statusAddress?.description == "0.0.0.0:15095")
        #expect(try resolve("off", env: ["SDS_STATUS_ADDR": "0.0.0.0:15095"]).statusAddress == nil, "a flag wins")
        #expect(throws: ConfigurationError.self) { try resolve("example.org:80") }
    }
}
