import ConnectionDriver
import GRPC
import H2
import TestSupport
import Testing
import Transport

/// A channel in memory: what the driver writes waits in `pending` until the test lets the peer `take` it, so a
/// peer that does not read is one that never calls `take`.
private final class MemoryChannel: ByteChannel {
    weak var driver: H2ConnectionDriver?
    private(set) var pending: [UInt8] = []
    private(set) var isClosed = false
    private(set) var closedGracefully = false
    private var closeWhenDrained = false

    var pendingWriteBytes: Int { pending.count }

    func write(_ bytes: [UInt8]) {
        guard !isClosed else { return }
        pending += bytes
    }

    func closeAfterWrites() {
        guard !isClosed else { return }
        if pending.isEmpty {
            closeNowGracefully()
        } else {
            closeWhenDrained = true
        }
    }

    func close() {
        isClosed = true
        pending = []
    }

    /// The peer reads up to `max` bytes; the driver hears `drained` when nothing is left.
    func take(max: Int = .max) -> [UInt8] {
        let taken = Array(pending.prefix(max))
        pending.removeFirst(taken.count)
        if pending.isEmpty {
            if closeWhenDrained {
                closeNowGracefully()
            } else {
                driver?.drained()
            }
        }
        return taken
    }

    private func closeNowGracefully() {
        isClosed = true
        closedGracefully = true
        driver?.channelClosed(error: nil)
    }
}

/// A gRPC server behind a driver on a memory channel, and a gRPC client speaking to it by hand.
private final class Harness {
    let scheduler = FakeScheduler()
    let router = GRPCRouter()
    let server: GRPCServerConnection
    let client = GRPCClientConnection()
    let channel = MemoryChannel()
    let driver: H2ConnectionDriver
    var losses: [ConnectionLoss] = []
    var afterClosedCount = 0
    var serverCalls: [GRPCServerCall] = []

    init(limits: H2ConnectionDriver.Limits) {
        server = GRPCServerConnection(router: router)
        driver = H2ConnectionDriver(session: server.session, limits: limits, scheduler: scheduler)
        channel.driver = driver
        driver.attach(channel)
        driver.onClosed = { [unowned self] loss in self.losses.append(loss) }
        driver.afterClosed = { [unowned self] in self.afterClosedCount += 1 }
        router.register("/test.Echo/Big") { [unowned self] call in
            self.serverCalls.append(call)
            // Weak: the call owns this closure.
            call.onMessage = { [weak call] message in
                guard let call else { return }
                // Answers with as many KiB as the request's first byte says.
                let kib = Int(message.first ?? 1)
                _ = call.send([UInt8](repeating: 7, count: kib * 1024))
                call.finish(GRPCStatus(.ok))
            }
        }
    }

    /// Client bytes to the driver, then as much of the driver's output as the client will read.
    func clientSends() {
        let bytes = client.session.takeOutput()
        if !bytes.isEmpty { bytes.withUnsafeBytes { driver.received($0) } }
    }

    func clientReads(max: Int = .max) throws {
        let bytes = channel.take(max: max)
        if !bytes.isEmpty { try client.session.receive(bytes) }
    }

    /// Both ways until quiet.
    func pump() throws {
        for _ in 0..<1000 {
            let before = channel.pendingWriteBytes
            clientSends()
            try clientReads()
            if channel.pendingWriteBytes == 0 && before == 0 && !client.session.wantsWrite { return }
        }
    }

    func call(kib: UInt8) throws -> (messages: [[UInt8]], status: GRPCStatus?) {
        let call = try client.startCall(path: "/test.Echo/Big")
        var messages: [[UInt8]] = []
        var status: GRPCStatus?
        call.onMessage = { messages.append($0) }
        call.onFinish = { finished, _ in status = finished }
        call.send([kib])
        call.closeSend()
        try pump()
        return (messages, status)
    }
}

@Suite struct H2ConnectionDriverTests {
    @Test func serverWritesItsPrefaceAtOnceAndServesACall() throws {
        let harness = Harness(limits: .init())
        harness.driver.flush()
        #expect(harness.channel.pendingWriteBytes > 0, "the server preface leaves before the client speaks")
        let (messages, status) = try harness.call(kib: 4)
        #expect(status?.code == .ok)
        #expect(messages.map(\.count) == [4096])
        #expect(harness.losses.isEmpty)
    }

    @Test func pullsNoMoreThanTheHighWaterMarkWhileThePeerDoesNotRead() throws {
        let harness = Harness(limits: .init(writeHighWater: 16 * 1024))
        harness.driver.flush()
        try harness.clientReads()
        let call = try harness.client.startCall(path: "/test.Echo/Big")
        call.send([200])  // 200 KiB answer
        call.closeSend()
        harness.clientSends()
        // The client reads nothing: the driver stopped pulling near the mark; the rest waits in nghttp2.
        #expect(harness.channel.pendingWriteBytes < 16 * 1024 + H2ConnectionDriver.Limits.outputChunk)
        #expect(harness.server.session.totalQueuedBytes > 0)
        // Reading drains the channel, and each drain pulls the next share until the answer is complete.
        var received = 0
        call.onMessage = { received += $0.count }
        try harness.pump()
        #expect(received == 200 * 1024)
    }

    @Test func aPeerThatTakesNothingIsCutOffAfterTheStallTimeout() throws {
        let harness = Harness(limits: .init(writeStallTimeout: 30))
        harness.driver.flush()
        try harness.clientReads()
        harness.clientSends()
        let call = try harness.client.startCall(path: "/test.Echo/Big")
        call.send([64])
        harness.clientSends()
        #expect(harness.channel.pendingWriteBytes > 0)
        // The timer armed with the preface sees that bytes were taken since, and re-arms: the cut comes between one
        // and two timeouts after the last byte taken, never sooner than one.
        harness.scheduler.advance(by: 29)
        #expect(harness.losses.isEmpty)
        harness.scheduler.advance(by: 32)
        #expect(harness.losses == [.writeStalled(seconds: 30)])
        #expect(harness.losses.first?.isCutOff == true)
        #expect(harness.channel.isClosed && !harness.channel.closedGracefully)
        #expect(harness.afterClosedCount == 1)
    }

    @Test func aPeerThatKeepsReadingIsNeverCutOffForStalling() throws {
        let harness = Harness(limits: .init(writeHighWater: 8 * 1024, writeStallTimeout: 30))
        harness.driver.flush()
        try harness.clientReads()
        let call = try harness.client.startCall(path: "/test.Echo/Big")
        call.send([250])
        call.closeSend()
        harness.clientSends()
        for _ in 0..<10 {
            try harness.clientReads(max: 1024)  // slow, but reading
            harness.clientSends()  // WINDOW_UPDATEs
            harness.scheduler.advance(by: 20)
        }
        #expect(harness.losses.isEmpty)
    }

    @Test func overTheBudgetAPeerIsCutOnlyIfItTakesNothingForTheGrace() throws {
        let limits = H2ConnectionDriver.Limits(maxQueuedBytes: 32 * 1024, overBudgetGrace: 1)
        // Reading: one answer larger than the budget is delivered.
        let reading = Harness(limits: limits)
        reading.driver.flush()
        try reading.clientReads()
        let big = try reading.client.startCall(path: "/test.Echo/Big")
        var received = 0
        big.onMessage = { received += $0.count }
        big.send([100])
        big.closeSend()
        reading.clientSends()
        for _ in 0..<200 where received < 100 * 1024 {
            try reading.clientReads(max: 4096)
            reading.clientSends()
            reading.scheduler.advance(by: 0.5)
        }
        #expect(received == 100 * 1024)
        #expect(reading.losses.isEmpty)

        // Not reading: cut after the grace.
        let stuck = Harness(limits: limits)
        stuck.driver.flush()
        try stuck.clientReads()
        let call = try stuck.client.startCall(path: "/test.Echo/Big")
        call.send([100])
        stuck.clientSends()
        #expect(stuck.driver.queuedBytes > 32 * 1024)
        stuck.scheduler.advance(by: 1.1)
        #expect(stuck.losses == [.overBudget(bytes: 32 * 1024)])
    }

    @Test func aPeerWithoutAPrefaceIsClosedAfterTheTimeout() throws {
        let harness = Harness(limits: .init(prefaceTimeout: 10))
        harness.driver.flush()
        harness.scheduler.advance(by: 10.5)
        #expect(harness.losses == [.noPreface(seconds: 10)])

        let speaking = Harness(limits: .init(prefaceTimeout: 10))
        speaking.driver.flush()
        try speaking.pump()
        speaking.scheduler.advance(by: 60)
        #expect(speaking.losses.isEmpty)
    }

    @Test func aProtocolErrorWritesTheGoawayThenCloses() throws {
        let harness = Harness(limits: .init())
        harness.driver.flush()
        // DATA on stream 0, as the first frame.
        let garbage = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 0, 0, 0, 0, 0, 0]
        garbage.withUnsafeBytes { harness.driver.received($0) }
        // The end is decided, but the GOAWAY is still waiting for the peer: the channel is not closed yet.
        #expect(harness.driver.isClosed)
        #expect(!harness.channel.isClosed)
        #expect(harness.losses.isEmpty)
        let written = harness.channel.take()
        #expect(written.contains(0x07), "a GOAWAY frame (type 7) was written")
        #expect(harness.channel.closedGracefully)
        // nghttp2 reports this one by ending the session after its GOAWAY (others by failing `receive`): either way
        // the peer got the GOAWAY before the close.
        switch harness.losses.first {
        case .http2, .sessionEnded: break
        default: Issue.record("expected the session to end on the protocol error, got \(harness.losses)")
        }
        #expect(harness.losses.count == 1 && harness.afterClosedCount == 1)
    }

    @Test func aFinishedSessionWhoseLastBytesAreNeverReadIsClosedAfterTheStallTimeout() throws {
        let harness = Harness(limits: .init(writeStallTimeout: 30))
        harness.driver.flush()
        try harness.pump()
        harness.server.beginDrain()
        harness.driver.flush()
        // The session is over once the GOAWAY is out; the peer never reads it.
        harness.scheduler.advance(by: 61)
        #expect(harness.channel.isClosed)
        #expect(harness.losses.count == 1)
    }

    @Test func closeByTheOwnerRunsAfterClosedButNotOnClosed() throws {
        let harness = Harness(limits: .init(writeStallTimeout: 30, prefaceTimeout: 10))
        harness.driver.flush()
        harness.driver.close()
        harness.scheduler.advance(by: 100)
        #expect(harness.losses.isEmpty)
        #expect(harness.afterClosedCount == 1)
        #expect(harness.channel.isClosed)
        harness.driver.close()
        #expect(harness.afterClosedCount == 1)
    }

    @Test func thePeerClosingIsReportedOnce() throws {
        let harness = Harness(limits: .init())
        harness.driver.flush()
        harness.driver.channelClosed(error: nil)
        harness.driver.channelClosed(error: nil)
        #expect(harness.losses == [.closedByPeer])
        #expect(harness.afterClosedCount == 1)
    }
}
