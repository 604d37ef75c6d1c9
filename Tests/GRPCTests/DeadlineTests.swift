import GRPC
import H2
import TestSupport
import Testing

@Suite struct GRPCTimeoutParserTests {
    @Test(arguments: [
        ("1H", 3600.0), ("2M", 120), ("30S", 30), ("200m", 0.2), ("1500u", 0.0015), ("7n", 7e-9),
        ("99999999S", 99_999_999), ("0m", 0), ("00000005S", 5),
    ])
    func validValuesParse(text: String, seconds: Double) throws {
        let timeout = try #require(GRPCTimeout(headerValue: text))
        #expect(abs(timeout.seconds - seconds) <= seconds * 1e-12)
        #expect(timeout.description == "\(timeout.value)\(timeout.unit.rawValue)")
    }

    @Test(arguments: [
        "", "S", "5", "5s", "5h", "5x", "-5S", "+5S", " 5S", "5S ", "5 S", "1.5S", "123456789S", "5SS", "٥S", "5é",
    ])
    func malformedValuesAreRejected(text: String) {
        #expect(GRPCTimeout(headerValue: text) == nil)
    }

    @Test func eightDigitsIsTheBound() {
        #expect(GRPCTimeout(headerValue: String(repeating: "9", count: GRPCTimeout.maxDigits) + "n") != nil)
        #expect(GRPCTimeout(headerValue: String(repeating: "9", count: GRPCTimeout.maxDigits + 1) + "n") == nil)
    }
}

/// A gRPC pair whose server arms deadlines on a fake scheduler.
private final class DeadlineHarness {
    let scheduler = FakeScheduler()
    let router = GRPCRouter()
    let server: GRPCServerConnection
    let client = GRPCClientConnection()
    let pair: InMemoryPair
    var serverCalls: [GRPCServerCall] = []
    var cancelled = 0

    init() {
        let scheduler = self.scheduler
        server = GRPCServerConnection(
            router: router,
            scheduler: { seconds, action in
                let timer = scheduler.schedule(after: seconds, action)
                return { timer.cancel() }
            })
        pair = InMemoryPair(client: client.session, server: server.session)
        // Never answers: a held call.
        router.register(ssdPath) { [unowned self] call in
            self.serverCalls.append(call)
            call.onCancel = { [unowned self] in self.cancelled += 1 }
        }
    }

    func start(timeout: String?) throws -> ClientRecord {
        let record = ClientRecord(
            try client.startCall(path: ssdPath, metadata: timeout.map { [("grpc-timeout", $0)] } ?? []))
        pair.pump()
        return record
    }
}

@Suite struct DeadlineTests {
    @Test func heldCallEndsWithDeadlineExceededWhenItsTimeoutPasses() throws {
        let h = DeadlineHarness()
        let record = try h.start(timeout: "200m")
        h.scheduler.advance(by: 0.199)
        h.pair.pump()
        #expect(record.status == nil)
        h.scheduler.advance(by: 0.002)
        h.pair.pump()
        #expect(record.status?.code == .deadlineExceeded)
        // The handler hears the call is over, so it can forget it.
        #expect(h.cancelled == 1)
        #expect(h.server.activeCallCount == 0)
    }

    @Test func finishedCallDisarmsItsDeadline() throws {
        let h = DeadlineHarness()
        let record = try h.start(timeout: "1S")
        h.serverCalls[0].finish(.ok)
        h.pair.pump()
        #expect(record.status == .ok)
        #expect(h.scheduler.pendingCount == 0)
        h.scheduler.advance(by: 2)
        #expect(h.cancelled == 0)
    }

    @Test func callWithoutTimeoutArmsNothing() throws {
        let h = DeadlineHarness()
        _ = try h.start(timeout: nil)
        #expect(h.scheduler.pendingCount == 0)
        #expect(h.server.activeCallCount == 1)
    }

    @Test func hugeTimeoutArmsNoTimer() throws {
        let h = DeadlineHarness()
        _ = try h.start(timeout: "99999999H")
        #expect(h.scheduler.pendingCount == 0)
        #expect(h.server.activeCallCount == 1)
    }

    @Test func malformedTimeoutFailsTheCallWithInternal() throws {
        let h = DeadlineHarness()
        let record = try h.start(timeout: "5 seconds")
        #expect(record.status?.code == .internal)
        #expect(h.serverCalls.isEmpty)
    }

    @Test func callArrivingDuringDrainIsAnsweredUnavailable() throws {
        let h = DeadlineHarness()
        let first = try h.start(timeout: nil)
        h.server.beginDrain()
        // A request the client sent before it saw the shutdown notice.
        let late = try h.client.startCall(path: ssdPath)
        let lateRecord = ClientRecord(late)
        h.pair.pump()
        #expect(lateRecord.status?.code == .unavailable)
        #expect(first.status == nil)
        #expect(h.serverCalls.count == 1)
    }
}
