import Foundation
import Glibc
import Issuance
import SPIFFE
import TestSupport
import Testing
import Transport
import WorkloadAPIClient

/// Records what an issuer calls back with.
final class Recorder {
    var updates: [IdentityUpdate] = []
    var errors: [IssuerError] = []

    func start(_ issuer: any Issuer) {
        issuer.start(onUpdate: { self.updates.append($0) }, onError: { self.errors.append($0) })
    }
}

/// The issuer's contract, with a fake scheduler and a dialer that never reaches anything (no sockets needed).
@Suite struct IssuerContractTests {
    final class Dialer {
        var attempts = 0
        var errno = ENOENT
    }

    func makeIssuer(_ scheduler: FakeScheduler, _ dialer: Dialer) throws -> WorkloadAPIIssuer {
        WorkloadAPIIssuer(
            socket: try UnixSocketAddress("unix:///run/spire/sockets/agent.sock"),
            spiffeID: try SPIFFEID(parsing: Upstream.workload), loop: try EventLoop(), scheduler: scheduler,
            clock: scheduler.clock, randomUnit: { 0.5 },
            dial: { (address) throws(SystemError) -> UnixConnectStart in
                dialer.attempts += 1
                throw SystemError("connect", errno: dialer.errno, detail: address.path)
            })
    }

    @Test func nothingHappensInsideStartAndAMissingSocketIsReportedOnce() throws {
        let scheduler = FakeScheduler()
        let dialer = Dialer()
        let issuer = try makeIssuer(scheduler, dialer)
        let recorder = Recorder()
        recorder.start(issuer)
        #expect(dialer.attempts == 0 && recorder.errors.isEmpty, "no work and no callback inside start")
        scheduler.runDue()
        #expect(dialer.attempts == 1)
        let error = try #require(recorder.errors.first)
        #expect(error.kind == .upstreamUnavailable)
        #expect(error.message.contains("/run/spire/sockets/agent.sock"))
        #expect(error.retryAfter == 0.1)
        // A minute of retries: backoff 0.1, 0.2, ... capped at 30 s, and still a single report.
        scheduler.advance(by: 60)
        #expect((8...12).contains(dialer.attempts), "\(dialer.attempts) dials in a minute")
        #expect(recorder.errors.count == 1)
        // The socket appears but refuses: that is news.
        dialer.errno = ECONNREFUSED
        scheduler.advance(by: 31)
        #expect(recorder.errors.count == 2)
        #expect(recorder.updates.isEmpty)
    }

    @Test func rotateNowRetriesAtOnceWhileBackingOff() throws {
        let scheduler = FakeScheduler()
        let dialer = Dialer()
        let issuer = try makeIssuer(scheduler, dialer)
        Recorder().start(issuer)
        scheduler.advance(by: 10)
        let before = dialer.attempts
        issuer.rotateNow()
        #expect(dialer.attempts == before, "not inside rotateNow")
        scheduler.runDue()
        #expect(dialer.attempts == before + 1)
    }

    @Test func stopCancelsTheRetryTimer() throws {
        let scheduler = FakeScheduler()
        let dialer = Dialer()
        let issuer = try makeIssuer(scheduler, dialer)
        let recorder = Recorder()
        recorder.start(issuer)
        scheduler.runDue()
        issuer.stop()
        #expect(scheduler.pendingCount == 0)
        scheduler.advance(by: 120)
        #expect(dialer.attempts == 1)
        #expect(issuer.state == .stopped)
    }

    @Test func stopInsideACallbackEndsEverything() throws {
        let scheduler = FakeScheduler()
        let dialer = Dialer()
        let issuer = try makeIssuer(scheduler, dialer)
        var errors = 0
        issuer.start(
            onUpdate: { _ in },
            onError: { _ in
                errors += 1; issuer.stop()
            })
        scheduler.advance(by: 60)
        #expect(errors == 1 && dialer.attempts == 1)
        #expect(scheduler.pendingCount == 0)
    }

    @Test func stopBeforeTheFirstTurnMeansNoCallbackEver() throws {
        let scheduler = FakeScheduler()
        let dialer = Dialer()
        let issuer = try makeIssuer(scheduler, dialer)
        let recorder = Recorder()
        recorder.start(issuer)
        issuer.stop()
        scheduler.advance(by: 60)
        #expect(dialer.attempts == 0 && recorder.errors.isEmpty && recorder.updates.isEmpty)
    }
}

/// Against a real Workload API server we did not write: grpcio + py-spiffe's servicer
/// (Tests/Integration/workload_api_server.py), which rejects calls without the security header.
@Suite(.serialized) struct RealWorkloadAPIServerTests {
    static let workloadID = "spiffe://example.org/ns/default/sa/default"

    /// The Python server as a child process; `start` returns once it says it is serving.
    final class PythonServer {
        let process = Process()
        let output = Pipe()

        init(socketPath: String) throws {
            guard let python = ProcessInfo.processInfo.environment["SDS_PYTHON"], !python.isEmpty else {
                throw TestFailure("SDS_PYTHON is not set: run the tests with `make test` (it creates the venv)")
            }
            guard FileManager.default.isExecutableFile(atPath: python) else {
                throw TestFailure("SDS_PYTHON=\(python) is not an executable: run `make venv`")
            }
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Integration/workload_api_server.py")
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [script.path, "unix://\(socketPath)", RealWorkloadAPIServerTests.workloadID]
            process.standardOutput = output
            try process.run()
            // The script prints one line once grpcio is serving; reading it waits for exactly that (EOF if the
            // script died first).
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line += chunk
            }
            guard String(decoding: line, as: UTF8.self).contains("workload API serving") else {
                kill()
                throw TestFailure("workload_api_server.py did not start: \(String(decoding: line, as: UTF8.self))")
            }
        }

        /// SIGKILL: the child inherits a signal mask that blocks SIGTERM (dispatch worker threads block it),
        /// and a killed upstream is the outage we want anyway (the socket file stays: connection refused).
        func kill() {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        deinit { if process.isRunning { kill() } }
    }

    struct TestFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    @Test func firstUpdateThenOutageReportedOnceThenReconnectsByItself() throws {
        let directory = try FileManager.default.url(
            for: .itemReplacementDirectory, in: .userDomainMask, appropriateFor: URL(fileURLWithPath: "/tmp"),
            create: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = directory.appendingPathComponent("wapi.sock").path
        var server: PythonServer? = try PythonServer(socketPath: socketPath)

        let loop = try EventLoop()
        var dials = 0
        let issuer = WorkloadAPIIssuer(
            socket: try UnixSocketAddress("unix://\(socketPath)"),
            spiffeID: try SPIFFEID(parsing: Self.workloadID), loop: loop, scheduler: EventLoopScheduler(loop: loop),
            clock: SystemWallClock(), worker: try OffLoopWorker(loop: loop),  // as the agent runs it
            dial: { (address) throws(SystemError) -> UnixConnectStart in
                dials += 1
                return try startUnixConnect(address)
            })
        let recorder = Recorder()
        recorder.start(issuer)
        defer {
            issuer.stop()
            // One more turn: the closed connection is kept alive until then (it may close inside its own callback).
            var turned = false
            loop.schedule(after: 0) { turned = true }
            _ = loop.run(until: { turned }, timeout: 5)
        }

        #expect(loop.run(until: { !recorder.updates.isEmpty }, timeout: 20), "no SVID from the server")
        let first = try #require(recorder.updates.first)
        #expect(first.svid.spiffeID.uri == Self.workloadID)
        #expect(first.bundles.map(\.trustDomain.name) == ["example.org"])
        try first.svid.verify(against: first.bundles[0], at: SystemWallClock().now())
        #expect(recorder.errors.isEmpty, "\(recorder.errors)")
        #expect(issuer.state == .streaming(attempt: 1))

        // Kill the server: the stream ends, reconnecting fails, and that is reported once for all the retries.
        server?.kill()
        server = nil
        #expect(loop.run(until: { !recorder.errors.isEmpty }, timeout: 20), "the outage was not reported")
        let dialsAtReport = dials
        #expect(loop.run(until: { dials >= dialsAtReport + 3 }, timeout: 20), "the issuer stopped retrying")
        #expect(recorder.errors.count == 1, "\(recorder.errors)")
        #expect(recorder.errors.first?.kind == .upstreamUnavailable)
        #expect(recorder.updates.count == 1)

        // A new server (with a new CA) on the same socket: the issuer reconnects by itself and delivers its SVID.
        server = try PythonServer(socketPath: socketPath)
        #expect(loop.run(until: { recorder.updates.count == 2 }, timeout: 40), "no reconnect after the restart")
        let second = try #require(recorder.updates.last)
        #expect(second.svid.spiffeID.uri == Self.workloadID)
        #expect(second.bundles.first?.der != first.bundles.first?.der, "the new server's bundle")
        try second.svid.verify(against: second.bundles[0], at: SystemWallClock().now())
        #expect(recorder.errors.count == 1)
        server?.kill()
    }
}

/// An upstream that accepts the connection and reads our requests but never answers: the issuer must give up
/// on it after the first-response deadline instead of waiting in `connecting` forever.
@Suite struct SilentUpstreamTests {
    /// Dials hand the issuer one end of a fresh socket pair and keep the other: a peer that reads nothing and
    /// writes nothing. The loop is never run, so nothing but the scheduler's timers moves the issuer.
    final class SilentDialer {
        var peers: [Int32] = []

        func dial() throws(SystemError) -> Int32 {
            var fds: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0
            else { throw SystemError("socketpair", errno: errno) }
            peers.append(fds[1])
            return fds[0]
        }

        /// What the peer end can read: the bytes our side wrote, and whether our side has closed (EOF).
        func drain(_ index: Int) -> (bytes: Int, closed: Bool) {
            var total = 0
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(peers[index], &buffer, buffer.count)
                if count > 0 {
                    total += count
                } else {
                    return (total, count == 0)
                }
            }
        }

        deinit { for fd in peers { close(fd) } }
    }

    @Test func aSilentPeerIsReportedOnceTornDownAndRetriedWithBackoff() throws {
        let scheduler = FakeScheduler()
        let dialer = SilentDialer()
        let issuer = WorkloadAPIIssuer(
            socket: try UnixSocketAddress("unix:///run/spire/sockets/agent.sock"),
            spiffeID: try SPIFFEID(parsing: Upstream.workload), loop: try EventLoop(), scheduler: scheduler,
            clock: scheduler.clock, randomUnit: { 0.5 },
            dial: { (_) throws(SystemError) -> UnixConnectStart in .connected(try dialer.dial()) })
        let recorder = Recorder()
        recorder.start(issuer)
        defer { issuer.stop() }

        scheduler.runDue()
        #expect(dialer.peers.count == 1)
        #expect(issuer.state == .connecting(attempt: 1))
        let sent = dialer.drain(0)
        #expect(sent.bytes > 0 && !sent.closed, "the requests went out and the connection is open")

        // Just short of the deadline: still waiting, nothing said.
        scheduler.advance(by: 9.9)
        #expect(issuer.state == .connecting(attempt: 1))
        #expect(recorder.errors.isEmpty)

        // The deadline: one report, the connection closed, a retry armed with the first backoff step.
        scheduler.advance(by: 0.1)
        let error = try #require(recorder.errors.first)
        #expect(error.kind == .upstreamUnavailable)
        #expect(error.message == "no response from the Workload API at /run/spire/sockets/agent.sock within 10 s")
        #expect(error.retryAfter == 0.1)
        #expect(issuer.state == .waiting)
        #expect(dialer.drain(0).closed, "the silent connection was torn down")
        #expect(
            abs((scheduler.nextDueIn ?? -1) - 0.1) < 1e-9, "next retry in \(String(describing: scheduler.nextDueIn))")

        // The retry meets the same silence: torn down again, backoff grown, no second report.
        scheduler.advance(by: 0.1)
        #expect(issuer.state == .connecting(attempt: 2))
        scheduler.advance(by: 10)
        #expect(issuer.state == .waiting)
        #expect(dialer.drain(1).closed)
        #expect(
            abs((scheduler.nextDueIn ?? -1) - 0.2) < 1e-9, "next retry in \(String(describing: scheduler.nextDueIn))")
        #expect(recorder.errors.count == 1, "\(recorder.errors)")
        #expect(recorder.updates.isEmpty)
    }

    @Test func aConnectStillInProgressTimesOutIsReportedAndRetriedNeverWaitedOn() throws {
        let scheduler = FakeScheduler()
        let dialer = SilentDialer()
        var dials = 0
        let issuer = WorkloadAPIIssuer(
            socket: try UnixSocketAddress("unix:///run/spire/sockets/agent.sock"), spiffeID: nil,
            loop: try EventLoop(), scheduler: scheduler, clock: scheduler.clock, connectTimeout: 2,
            randomUnit: { 0.5 },
            dial: { (_) throws(SystemError) -> UnixConnectStart in
                dials += 1
                // The loop never runs, so the descriptor is never seen writable: the connect stays in progress.
                return .inProgress(try dialer.dial())
            })
        let recorder = Recorder()
        recorder.start(issuer)
        defer { issuer.stop() }
        scheduler.runDue()
        #expect(dials == 1 && issuer.state == .connecting(attempt: 1))
        scheduler.advance(by: 1.9)
        #expect(recorder.errors.isEmpty, "not before the connect timeout")
        scheduler.advance(by: 0.1)
        let error = try #require(recorder.errors.first)
        #expect(error.kind == .upstreamUnavailable)
        #expect(error.message.contains("timed out"), "\(error.message)")
        #expect(issuer.state == .waiting)
        #expect(dialer.drain(0).closed, "the half-open descriptor was closed")
        scheduler.advance(by: 0.1)
        #expect(dials == 2, "retried after the backoff")
    }

    @Test func stopWhileWaitingForTheFirstResponseCancelsTheDeadline() throws {
        let scheduler = FakeScheduler()
        let dialer = SilentDialer()
        let issuer = WorkloadAPIIssuer(
            socket: try UnixSocketAddress("unix:///run/spire/sockets/agent.sock"), spiffeID: nil,
            loop: try EventLoop(), scheduler: scheduler, clock: scheduler.clock, firstResponseTimeout: 3,
            randomUnit: { 0.5 }, dial: { (_) throws(SystemError) -> UnixConnectStart in .connected(try dialer.dial()) })
        let recorder = Recorder()
        recorder.start(issuer)
        scheduler.runDue()
        #expect(issuer.state == .connecting(attempt: 1))
        #expect(scheduler.nextDueIn == 3, "the configured deadline is armed")
        issuer.stop()
        scheduler.runDue()  // the connection's deferred release
        #expect(scheduler.pendingCount == 0)
        scheduler.advance(by: 60)
        #expect(recorder.errors.isEmpty && dialer.peers.count == 1)
    }
}
