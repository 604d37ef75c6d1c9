import GRPC
import H2
import TestSupport
import Testing

/// A gRPC server and client connection joined in memory.
final class Harness {
    let router = GRPCRouter()
    let server: GRPCServerConnection
    let client: GRPCClientConnection
    let pair: InMemoryPair

    init(
        feedMode: InMemoryPair.FeedMode = .whole, configuration: H2Configuration = H2Configuration(),
        maxMessageBytes: Int = GRPCMessageFraming.defaultMaxMessageBytes,
        maxBufferedRequestBytes: Int = GRPCServerConnection.defaultMaxBufferedRequestBytes,
        register: (GRPCRouter) -> Void
    ) {
        register(router)
        server = GRPCServerConnection(
            router: router, configuration: configuration, maxMessageBytes: maxMessageBytes,
            maxBufferedRequestBytes: maxBufferedRequestBytes)
        client = GRPCClientConnection(configuration: configuration, maxMessageBytes: maxMessageBytes)
        pair = InMemoryPair(client: client.session, server: server.session, feedMode: feedMode)
    }

    func pump() { pair.pump() }
}

/// What a client call saw.
final class ClientRecord {
    var messages: [[UInt8]] = []
    var status: GRPCStatus?
    var trailers: [(String, String)] = []

    init(_ call: GRPCClientCall) {
        call.onMessage = { [unowned self] in messages.append($0) }
        call.onFinish = { [unowned self] status, trailers in
            self.status = status
            self.trailers = trailers
        }
    }
}

let echoPath = "/test.Echo/Echo"
let ssdPath = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"

/// Unary echo: replies with the request, reversed, and OK.
func registerUnaryEcho(_ router: GRPCRouter) {
    router.register(echoPath) { call in
        var request: [UInt8]?
        call.onMessage = { request = $0 }
        call.onHalfClose = {
            call.send(Array((request ?? []).reversed()))
            call.finish(.ok)
        }
    }
}

@Test(arguments: [InMemoryPair.FeedMode.whole, .byteByByte])
func unaryCallRoundTrips(feedMode: InMemoryPair.FeedMode) throws {
    let harness = Harness(feedMode: feedMode, register: registerUnaryEcho)
    let call = try harness.client.startCall(path: echoPath, metadata: [("x-test", "yes")])
    let record = ClientRecord(call)
    call.send(Array("abc".utf8))
    call.closeSend()
    harness.pump()
    #expect(record.messages == [Array("cba".utf8)])
    #expect(record.status == .ok)
    #expect(harness.server.activeCallCount == 0)
    #expect(harness.client.activeCallCount == 0)
}

@Test func serverSeesPathAndMetadata() throws {
    var seen: (String, [(String, String)])?
    let harness = Harness { router in
        router.register(ssdPath) { call in
            seen = (call.path, call.metadata)
            call.finish(.ok)
        }
    }
    let call = try harness.client.startCall(path: ssdPath, metadata: [("workload.spiffe.io", "true")])
    let record = ClientRecord(call)
    harness.pump()
    #expect(seen?.0 == ssdPath)
    #expect(seen?.1.contains { $0 == ("workload.spiffe.io", "true") } == true)
    #expect(record.status == .ok)
}

@Test func serverStreamingDeliversManyMessagesInOrder() throws {
    let count = 2000
    let harness = Harness { router in
        router.register("/test.Stream/Count") { call in
            call.onHalfClose = {
                for index in 0..<count {
                    #expect(call.send(withUnsafeBytes(of: UInt32(index).bigEndian, Array.init)) == .queued)
                }
                call.finish(GRPCStatus(.ok))
            }
        }
    }
    let call = try harness.client.startCall(path: "/test.Stream/Count")
    let record = ClientRecord(call)
    call.send([])
    call.closeSend()
    harness.pump()
    #expect(record.messages.count == count)
    #expect(record.messages.enumerated().allSatisfy { $1 == withUnsafeBytes(of: UInt32($0).bigEndian, Array.init) })
    #expect(record.status == .ok)
}

@Test(arguments: [InMemoryPair.FeedMode.whole, .byteByByte])
func bidiStreamingEchoesEachMessageAsItArrives(feedMode: InMemoryPair.FeedMode) throws {
    let harness = Harness(feedMode: feedMode) { router in
        router.register("/test.Echo/Bidi") { call in
            call.onMessage = { call.send($0) }
            call.onHalfClose = { call.finish(.ok) }
        }
    }
    let call = try harness.client.startCall(path: "/test.Echo/Bidi")
    let record = ClientRecord(call)
    for index in 0..<5 {
        call.send([UInt8(index), 0xEE])
        harness.pump()
        // Each reply arrives before the next request is sent: a real bidi exchange.
        #expect(record.messages.count == index + 1)
        #expect(record.messages.last == [UInt8(index), 0xEE])
    }
    #expect(record.status == nil)
    call.closeSend()
    harness.pump()
    #expect(record.status == .ok)
}

@Test func clientStreamingSumsAllRequests() throws {
    let harness = Harness { router in
        router.register("/test.Sum/Sum") { call in
            var total = 0
            call.onMessage = { total += $0.reduce(0) { $0 + Int($1) } }
            call.onHalfClose = {
                call.send(Array(String(total).utf8))
                call.finish(.ok)
            }
        }
    }
    let call = try harness.client.startCall(path: "/test.Sum/Sum")
    let record = ClientRecord(call)
    for _ in 0..<100 { call.send([1, 2, 3]) }
    call.closeSend()
    harness.pump()
    #expect(record.messages == [Array("600".utf8)])
    #expect(record.status == .ok)
}

@Test func unknownMethodGetsUnimplementedTrailersOnly() throws {
    let harness = Harness(register: registerUnaryEcho)
    let call = try harness.client.startCall(path: "/test.Echo/Missing")
    let record = ClientRecord(call)
    call.send([1])
    call.closeSend()
    harness.pump()
    #expect(record.status == GRPCStatus(.unimplemented, "unknown method /test.Echo/Missing"))
    #expect(record.messages.isEmpty)
    // Trailers-only: the status travelled in the only header block, alongside content-type.
    #expect(call.responseMetadata.contains { $0 == ("grpc-status", "12") })
    #expect(harness.server.activeCallCount == 0)
}

@Test func errorStatusMessageIsPercentEncodedOnTheWire() throws {
    let harness = Harness { router in
        router.register(echoPath) { call in
            call.send([1])
            call.finish(GRPCStatus(.permissionDenied, "100% denied: ünïcode"))
        }
    }
    let call = try harness.client.startCall(path: echoPath)
    let record = ClientRecord(call)
    harness.pump()
    #expect(record.status == GRPCStatus(.permissionDenied, "100% denied: ünïcode"))
    #expect(record.trailers.contains { $0.0 == "grpc-message" && $0.1.hasPrefix("100%25 denied: %C3%BC") })
}

@Test func clientCancelReachesTheServerCall() throws {
    var cancelled = false
    var serverCall: GRPCServerCall?
    let harness = Harness { router in
        router.register(ssdPath) { call in
            serverCall = call
            call.onCancel = { cancelled = true }
        }
    }
    let call = try harness.client.startCall(path: ssdPath)
    let record = ClientRecord(call)
    call.send([1, 2])
    harness.pump()
    #expect(serverCall != nil && !cancelled)
    call.cancel()
    harness.pump()
    #expect(cancelled)
    #expect(record.status?.code == .cancelled)
    #expect(serverCall?.isClosed == true)
    #expect(serverCall?.send([1]) == .closed)
    #expect(harness.server.activeCallCount == 0)
}

@Test func connectionLossCancelsServerCallsAndFailsClientCalls() throws {
    var cancelled = 0
    let harness = Harness { router in
        router.register(ssdPath) { call in call.onCancel = { cancelled += 1 } }
    }
    let records = try (0..<3).map { _ in ClientRecord(try harness.client.startCall(path: ssdPath)) }
    harness.pump()
    harness.server.connectionLost()
    harness.client.connectionLost()
    #expect(cancelled == 3)
    #expect(records.allSatisfy { $0.status?.code == .unavailable })
}

@Test func oversizeRequestIsRefusedWithResourceExhausted() throws {
    var received = 0
    var cancelled = false
    let harness = Harness(maxMessageBytes: 1024) { router in
        router.register(echoPath) { call in
            call.onMessage = { _ in received += 1 }
            call.onCancel = { cancelled = true }
        }
    }
    let call = try harness.client.startCall(path: echoPath)
    let record = ClientRecord(call)
    #expect(call.send(Array(repeating: 9, count: 4096)) == .queued)
    harness.pump()
    #expect(received == 0)
    #expect(cancelled)
    #expect(record.status?.code == .resourceExhausted)
}

@Test func compressedRequestIsRefused() throws {
    let harness = Harness(register: registerUnaryEcho)
    let call = try harness.client.startCall(path: echoPath)
    let record = ClientRecord(call)
    // Hand-made frame with the compressed flag set, below the gRPC layer.
    try harness.client.session.sendData(streamID: call.streamID, bytes: [1, 0, 0, 0, 2, 0xAA, 0xBB])
    harness.pump()
    #expect(record.status == GRPCStatus(.unimplemented, "compressed messages not supported"))
}

@Test func gracefulDrainFinishesInFlightCallsAndRefusesNewOnes() throws {
    var serverCalls: [GRPCServerCall] = []
    let harness = Harness { router in
        router.register(ssdPath) { call in serverCalls.append(call) }
    }
    let inFlight = ClientRecord(try harness.client.startCall(path: ssdPath))
    harness.pump()
    harness.server.beginDrain()
    harness.pump()
    #expect(harness.client.goAwayReceived)
    #expect(throws: GRPCStatus.self) { _ = try harness.client.startCall(path: ssdPath) }
    #expect(!harness.server.session.isClosed)

    serverCalls[0].send([42])
    serverCalls[0].finish(GRPCStatus(.unavailable, "draining"))
    harness.pump()
    #expect(inFlight.messages == [[42]])
    #expect(inFlight.status == GRPCStatus(.unavailable, "draining"))
    #expect(harness.server.session.isClosed)
}

@Test func drainWithStatusEndsEveryCallAtOnce() throws {
    let harness = Harness { router in router.register(ssdPath) { _ in } }
    let records = try (0..<4).map { _ in ClientRecord(try harness.client.startCall(path: ssdPath)) }
    harness.pump()
    harness.server.beginDrain(finishCalls: GRPCStatus(.unavailable, "shutting down"))
    harness.pump()
    #expect(records.allSatisfy { $0.status == GRPCStatus(.unavailable, "shutting down") })
    #expect(harness.server.activeCallCount == 0)
}

@Test func slowClientBoundsServerBufferingAndResumesOnWritable() throws {
    var configuration = H2Configuration()
    configuration.maxQueuedBytesPerStream = 128 << 10
    configuration.initialWindowSize = 65_535
    let message = [UInt8](repeating: 0x5A, count: 8 << 10)
    var serverCall: GRPCServerCall?
    var sentCount = 0
    var refusedCount = 0
    var maxQueued = 0
    let harness = Harness(configuration: configuration) { router in
        router.register(ssdPath) { call in
            serverCall = call
            // Produce until refused, then wait for the queue to drain: classic backpressure.
            let produce = {
                while sentCount < 100 {
                    guard call.send(message) == .queued else {
                        refusedCount += 1
                        return
                    }
                    sentCount += 1
                    maxQueued = max(maxQueued, call.queuedBytes)
                }
                call.finish(.ok)
            }
            call.onWritable = produce
            call.onHalfClose = produce
        }
    }
    let call = try harness.client.startCall(path: ssdPath)
    let record = ClientRecord(call)
    harness.pair.clientReads = false
    call.closeSend()
    harness.pump()
    // The client reads nothing: the server stopped at its bound instead of buffering all 800 KiB.
    #expect(refusedCount >= 1)
    #expect(sentCount < 100)
    #expect(serverCall!.queuedBytes <= 128 << 10)
    #expect(maxQueued <= 128 << 10)

    harness.pair.clientReads = true
    harness.pump()
    #expect(sentCount == 100)
    #expect(record.messages.count == 100)
    #expect(record.status == .ok)
}

@Test func hundredConcurrentCallsOnOneConnection() throws {
    let harness = Harness(register: registerUnaryEcho)
    var records: [ClientRecord] = []
    for index in 0..<100 {
        let call = try harness.client.startCall(path: echoPath)
        records.append(ClientRecord(call))
        call.send([UInt8(index), 1])
        call.closeSend()
    }
    #expect(harness.client.activeCallCount == 100)
    harness.pump()
    for (index, record) in records.enumerated() {
        #expect(record.messages == [[1, UInt8(index)]])
        #expect(record.status == .ok)
    }
    #expect(harness.server.activeCallCount == 0)
}

@Test func garbageBytesBreakOnlyThatConnection() {
    let server = GRPCServerConnection(router: GRPCRouter())
    _ = server.session.takeOutput()
    #expect(throws: H2Error.self) { try server.session.receive([UInt8](repeating: 0x17, count: 64)) }
    _ = server.session.takeOutput()
    #expect(server.session.isClosed)
}

@Test func oversizeResponseFailsTheClientCallWithResourceExhausted() throws {
    let router = GRPCRouter()
    router.register(echoPath) { call in
        call.send(Array(repeating: 1, count: 2048))
        call.finish(.ok)
    }
    let server = GRPCServerConnection(router: router)
    let client = GRPCClientConnection(maxMessageBytes: 1024)
    let pair = InMemoryPair(client: client.session, server: server.session)
    let record = ClientRecord(try client.startCall(path: echoPath))
    pair.pump()
    #expect(record.messages.isEmpty)
    #expect(record.status?.code == .resourceExhausted)
    #expect(client.activeCallCount == 0)
}

@Test func serverResetBeforeTrailersIsNeverReportedAsOK() throws {
    /// A broken server speaking raw H2: headers and one message, then a reset instead of trailers.
    final class TrailerlessServer: H2SessionDelegate {
        weak var session: H2ServerSession?
        func h2HeadersReceived(streamID: H2StreamID, headers: [H2Header], kind: H2HeaderBlockKind, endStream: Bool) {
            guard let session else { return }
            try? session.sendResponseHeaders(
                streamID: streamID,
                headers: [H2Header(":status", "200"), H2Header("content-type", "application/grpc")],
                endStream: false)
            try? session.sendData(streamID: streamID, bytes: GRPCMessageFraming.frame([7]))
        }
        func h2DataReceived(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>, endStream: Bool) {}
        func h2StreamClosed(streamID: H2StreamID, errorCode: H2ErrorCode) {}
    }
    let delegate = TrailerlessServer()
    let server = H2ServerSession(delegate: delegate)
    delegate.session = server
    let client = GRPCClientConnection()
    let pair = InMemoryPair(client: client.session, server: server)
    let call = try client.startCall(path: echoPath)
    let record = ClientRecord(call)
    pair.pump()
    #expect(record.messages == [[7]])
    #expect(record.status == nil)
    // Even RST_STREAM(NO_ERROR) without trailers leaves the call without a status: it must not read as OK.
    try server.resetStream(streamID: call.streamID, errorCode: .noError)
    pair.pump()
    #expect(record.status?.code == .cancelled)
}

@Test func finishedCallsAreReleasedEvenThoughHandlersCaptureThem() throws {
    weak var serverCall: GRPCServerCall?
    weak var clientCall: GRPCClientCall?
    let harness = Harness { router in
        router.register(echoPath) { call in
            serverCall = call
            // The handler's closures capture the call strongly: a cycle until the call ends.
            call.onMessage = { call.send($0) }
            call.onHalfClose = { call.finish(.ok) }
        }
    }
    var status: GRPCStatus?
    do {
        let call = try harness.client.startCall(path: echoPath)
        clientCall = call
        // Captures the call strongly, as a caller keeping state on it would.
        call.onFinish = { finished, _ in status = call.isFinished ? finished : nil }
        call.send([1])
        call.closeSend()
    }
    harness.pump()
    #expect(status == .ok)
    #expect(serverCall == nil)
    #expect(clientCall == nil)
}

/// Flow control follows consumption: the server hands every request byte back once its decoder took it, so a
/// client may send far more than the windows (64 KiB here, stream and connection) over one call.
@Test func requestsLargerThanEveryWindowArriveBecauseTheServerConsumesWhatItDecodes() throws {
    var configuration = H2Configuration()
    configuration.initialWindowSize = 65_535
    configuration.connectionWindowSize = 65_535
    var sizes: [Int] = []
    let harness = Harness(configuration: configuration) { router in
        router.register(echoPath) { call in
            call.onMessage = { sizes.append($0.count) }
            call.onHalfClose = { call.finish(.ok) }
        }
    }
    let call = try harness.client.startCall(path: echoPath)
    let record = ClientRecord(call)
    for index in 0..<10 { #expect(call.send([UInt8](repeating: UInt8(index), count: 100_000)) == .queued) }
    call.closeSend()
    harness.pump()
    #expect(sizes == Array(repeating: 100_000, count: 10))
    #expect(record.status == .ok)
}

@Test func anOversizeRequestEndsOnlyItsOwnCall() throws {
    var received: [Int] = []
    let harness = Harness(maxMessageBytes: 64 << 10) { router in
        router.register(echoPath) { call in
            call.onMessage = { received.append($0.count) }
            call.onHalfClose = { call.finish(.ok) }
        }
    }
    let big = try harness.client.startCall(path: echoPath)
    let bigRecord = ClientRecord(big)
    let small = try harness.client.startCall(path: echoPath)
    let smallRecord = ClientRecord(small)
    big.send([UInt8](repeating: 1, count: (64 << 10) + 1))
    small.send([UInt8](repeating: 2, count: 64 << 10))
    small.closeSend()
    harness.pump()
    #expect(bigRecord.status?.code == .resourceExhausted)
    #expect(smallRecord.status == .ok)
    #expect(received == [64 << 10])
}

/// Each call may hold one partial message up to the message bound; the connection bounds their sum (buffer
/// capacity: what is really allocated). Four calls each midway through a 50 KB message cannot all fit a 100 KB
/// budget: the calls that would pass it end RESOURCE_EXHAUSTED and let go of what they held; the first completes.
@Test func partialRequestsAcrossCallsAreBoundedPerConnection() throws {
    var received: [Int] = []
    var refusals = 0
    let harness = Harness(maxMessageBytes: 64 << 10, maxBufferedRequestBytes: 100_000) { router in
        router.register(echoPath) { call in
            call.onMessage = { received.append($0.count) }
            call.onHalfClose = { call.finish(.ok) }
        }
    }
    harness.server.onBufferBudgetExceeded = { refusals += 1 }
    var calls: [(GRPCClientCall, ClientRecord)] = []
    for _ in 0..<4 {
        let call = try harness.client.startCall(path: echoPath)
        calls.append((call, ClientRecord(call)))
    }
    // Each call sends the first 40,000 bytes of a 50,000-byte message: partial, held by the server.
    let message = GRPCMessageFraming.frame([UInt8](repeating: 3, count: 50_000))
    for (call, _) in calls {
        try harness.client.session.sendData(streamID: call.streamID, bytes: Array(message[..<40_005]))
        harness.pump()
    }
    #expect(harness.server.bufferedRequestBytes > 40_000 && harness.server.bufferedRequestBytes <= 100_000)
    #expect(refusals >= 2)
    #expect(calls[3].1.status?.code == .resourceExhausted)
    #expect(calls.filter { $0.1.status?.code == .resourceExhausted }.count == refusals)
    // The first finishes its message; when every call is over, nothing is held.
    try harness.client.session.sendData(streamID: calls[0].0.streamID, bytes: Array(message[40_005...]))
    calls[0].0.closeSend()
    harness.pump()
    #expect(received == [50_000])
    #expect(calls[0].1.status == .ok)
    for (call, _) in calls[1...] { call.cancel() }
    harness.pump()
    #expect(harness.server.bufferedRequestBytes == 0)
}

/// A held stream's events object hears every event; the call holds it until the call ends, so an object that holds
/// its call is a cycle only while the call lives: once the call ended, its owner alone decides its lifetime.
/// Request headers are gone once the handler returned.
final class EventsRecorder: GRPCServerCallEvents {
    let call: GRPCServerCall
    let log: (String) -> Void
    init(_ call: GRPCServerCall, log: @escaping (String) -> Void) {
        self.call = call
        self.log = log
    }
    func callReceived(_ message: [UInt8]) {
        log("message \(message.count)")
        call.send(message)
    }
    func callHalfClosed() {
        log("half-close")
        call.finish(.ok)
    }
    func callCancelled() { log("cancelled") }
    func callWritable() {}
}

@Test(arguments: [false, true])
func eventsObjectHearsTheCallAndItsOwnerDecidesItsLifetime(cancel: Bool) throws {
    var owners: [EventsRecorder] = []
    var log: [String] = []
    var metadataAfterHandler: [(String, String)]?
    var calls: [GRPCServerCall] = []
    let harness = Harness { router in
        router.register("/test.Events/Bidi") { call in
            let recorder = EventsRecorder(call) { log.append($0) }
            call.events = recorder
            owners.append(recorder)
            calls.append(call)
        }
    }
    let call = try harness.client.startCall(path: "/test.Events/Bidi", metadata: [("x-test", "yes")])
    let record = ClientRecord(call)
    call.send([1, 2, 3])
    harness.pump()
    metadataAfterHandler = calls.first?.metadata
    #expect(log == ["message 3"])
    #expect(record.messages == [[1, 2, 3]])
    if cancel {
        call.cancel()
    } else {
        call.closeSend()
    }
    harness.pump()
    #expect(log.last == (cancel ? "cancelled" : "half-close"))
    if !cancel { #expect(record.status == .ok, "half-close reached the events object, which finished the call") }
    #expect(metadataAfterHandler?.isEmpty == true)
    weak let held = owners.first
    owners.removeAll()
    #expect(held == nil, "the call does not keep its events object alive")
    #expect(calls.first?.events == nil)
}

/// A connection object dropped while a call is still open (no `connectionLost()`: its owner went away) releases the
/// call's events object: the call-and-handler cycle does not outlive the connection (LeakSanitizer would see it).
@Test func droppedConnectionReleasesItsOpenCallsEventsObjects() throws {
    weak var heldRecorder: EventsRecorder?
    weak var heldCall: GRPCServerCall?
    do {
        var harness: Harness? = Harness { router in
            router.register("/test.Events/Bidi") { call in
                let recorder = EventsRecorder(call) { _ in }
                call.events = recorder
                heldRecorder = recorder
                heldCall = call
            }
        }
        let call = try harness!.client.startCall(path: "/test.Events/Bidi")
        call.send([1])
        harness!.pump()
        #expect(heldRecorder != nil, "the open call keeps its events object")
        harness = nil
    }
    #expect(heldRecorder == nil)
    #expect(heldCall == nil)
}
