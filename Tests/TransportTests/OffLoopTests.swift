import Glibc
import Testing

@testable import Transport

@Suite struct OffLoopWorkerTests {
    @Test func workRunsOnAnotherThreadAndTheResultComesBackOnTheLoop() throws {
        let loop = try EventLoop()
        let worker = try OffLoopWorker(loop: loop)
        let loopThread = pthread_self()
        var results: [Int] = []
        var ranOnLoop = false
        for value in 1...3 {
            worker.run(
                { () -> Int in
                    // A blocking call the loop must not make.
                    usleep(20_000)
                    return value * 10
                },
                then: { result in
                    ranOnLoop = pthread_equal(pthread_self(), loopThread) != 0
                    results.append(result)
                })
        }
        #expect(results.isEmpty, "never inside run")
        // The loop keeps turning meanwhile: a timer fires long before the work is done.
        var timerFired = false
        loop.schedule(after: 0.001) { timerFired = true }
        #expect(loop.run(until: { timerFired }, timeout: 1))
        #expect(results.isEmpty)
        #expect(loop.run(until: { results.count == 3 }, timeout: 5))
        #expect(Set(results) == [10, 20, 30])
        #expect(ranOnLoop)
        #expect(worker.pendingCount == 0)
    }

    @Test func cancelledJobsNeverCompleteOnTheLoop() throws {
        let loop = try EventLoop()
        let worker = try OffLoopWorker(loop: loop)
        var completed = false
        worker.run({ () -> Int in 1 }, then: { _ in completed = true })
        worker.cancelAll()
        #expect(!loop.run(until: { completed }, timeout: 0.2))
    }
}

@Suite struct TCPDialTests {
    @Test func parsesHostPortForms() throws {
        #expect(
            try TCPEndpoint("istiod.istio-system.svc:15012")
                == TCPEndpoint(host: "istiod.istio-system.svc", port: 15012))
        #expect(try TCPEndpoint("[::1]:443") == TCPEndpoint(host: "::1", port: 443))
        #expect(try TCPEndpoint("[::1]:443").description == "[::1]:443")
        for bad in ["istiod", "istiod:", ":15012", "istiod:0", "istiod:70000", "::1:443", "[::1]443"] {
            #expect(throws: TCPEndpoint.ParseError.self, "\(bad)") { try TCPEndpoint(bad) }
        }
        #expect(try TCPEndpoint("127.0.0.1:1").hostIsNumeric)
        #expect(try !TCPEndpoint("localhost:1").hostIsNumeric)
    }

    @Test func connectsWithoutBlockingAndReportsRefusal() throws {
        let loop = try EventLoop()
        // A listening socket on an ephemeral port.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        #expect(listen(listener, 4) == 0)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        let port = UInt16(bigEndian: address.sin_port)
        guard case .success(let addresses) = HostResolver.resolve(TCPEndpoint(host: "127.0.0.1", port: port)) else {
            Issue.record("numeric resolution failed")
            return
        }
        var outcome: Result<Int32, SystemError>?
        let dial = TCPDial(addresses: addresses, target: "127.0.0.1:\(port)", timeout: 5, loop: loop) { outcome = $0 }
        #expect(outcome == nil, "never completes inside init")
        #expect(loop.run(until: { outcome != nil }, timeout: 5))
        if case .success(let fd) = outcome {
            close(fd)
        } else {
            Issue.record("expected a connection: \(String(describing: outcome))")
        }
        withExtendedLifetime(dial) {}

        // Nothing listens any more: refused, reported as a SystemError naming the target.
        close(listener)
        outcome = nil
        let refused = TCPDial(addresses: addresses, target: "127.0.0.1:\(port)", timeout: 5, loop: loop) {
            outcome = $0
        }
        #expect(loop.run(until: { outcome != nil }, timeout: 5))
        guard case .failure(let error) = outcome else {
            Issue.record("expected a refusal")
            return
        }
        #expect(error.errno == ECONNREFUSED)
        #expect(error.description.contains("127.0.0.1:\(port)"))
        withExtendedLifetime(refused) {}
    }

    @Test func aCancelledDialNeverCompletes() throws {
        let loop = try EventLoop()
        guard case .success(let addresses) = HostResolver.resolve(TCPEndpoint(host: "127.0.0.1", port: 9)) else {
            return
        }
        var completed = false
        let dial = TCPDial(addresses: addresses, target: "x", timeout: 5, loop: loop) { _ in completed = true }
        dial.cancel()
        #expect(!loop.run(until: { completed }, timeout: 0.2))
    }
}

@Suite struct TCPDialTimeoutTests {
    /// A listener that never accepts, its backlog full: the kernel drops further SYNs, so a connect stays in progress
    /// and only the dial's own timeout ends it (the loop keeps running meanwhile).
    @Test func aConnectThatNeverCompletesTimesOut() throws {
        let loop = try EventLoop()
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        #expect(listen(listener, 0) == 0)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        let port = UInt16(bigEndian: address.sin_port)
        guard case .success(let addresses) = HostResolver.resolve(TCPEndpoint(host: "127.0.0.1", port: port)) else {
            Issue.record("numeric resolution failed")
            return
        }
        // Fill the backlog with dials nobody accepts.
        var fillers: [TCPDial] = []
        for _ in 0..<4 {
            fillers.append(TCPDial(addresses: addresses, target: "filler", timeout: 5, loop: loop) { _ in })
        }
        _ = loop.run(until: { false }, timeout: 0.3)
        var outcome: Result<Int32, SystemError>?
        let started = EventLoop.monotonicNanos()
        let dial = TCPDial(addresses: addresses, target: "127.0.0.1:\(port)", timeout: 0.5, loop: loop) { outcome = $0 }
        #expect(loop.run(until: { outcome != nil }, timeout: 5))
        let elapsed = Double(EventLoop.monotonicNanos() - started) / 1e9
        guard case .failure(let error) = outcome else {
            Issue.record("expected a timeout, got \(String(describing: outcome))")
            withExtendedLifetime((dial, fillers)) {}
            return
        }
        #expect(error.errno == ETIMEDOUT)
        #expect(elapsed >= 0.45 && elapsed < 2, "\(elapsed) s")
        withExtendedLifetime((dial, fillers)) {}
    }
}
