import H2
import TestSupport
import Testing

/// Records every delegate event, in order.
final class RecordingDelegate: H2SessionDelegate {
    enum Event: Equatable {
        case headers(H2StreamID, [H2Header], H2HeaderBlockKind, endStream: Bool)
        case data(H2StreamID, [UInt8], endStream: Bool)
        case closed(H2StreamID, H2ErrorCode)
        case goAway(lastStreamID: H2StreamID, H2ErrorCode)
        case drained(H2StreamID)
    }

    var events: [Event] = []
    /// The session whose DATA this delegate hands back to flow control as it arrives (like the gRPC layer does).
    weak var session: H2Endpoint?
    /// False: DATA is recorded but never consumed, so the peer's windows run out.
    var consumesData = true
    var limitsExceeded: [(H2Limit, H2StreamID)] = []
    var onHeaders: ((H2StreamID, [H2Header], H2HeaderBlockKind, Bool) -> Void)?
    var onDrained: ((H2StreamID) -> Void)?

    func h2HeadersReceived(streamID: H2StreamID, headers: [H2Header], kind: H2HeaderBlockKind, endStream: Bool) {
        events.append(.headers(streamID, headers, kind, endStream: endStream))
        onHeaders?(streamID, headers, kind, endStream)
    }

    func h2DataReceived(streamID: H2StreamID, bytes: UnsafeBufferPointer<UInt8>, endStream: Bool) {
        events.append(.data(streamID, Array(bytes), endStream: endStream))
        if consumesData { session?.consume(streamID: streamID, count: bytes.count) }
    }

    func h2LimitExceeded(_ limit: H2Limit, streamID: H2StreamID) {
        limitsExceeded.append((limit, streamID))
    }

    func h2StreamClosed(streamID: H2StreamID, errorCode: H2ErrorCode) {
        events.append(.closed(streamID, errorCode))
    }

    func h2GoAwayReceived(lastStreamID: H2StreamID, errorCode: H2ErrorCode) {
        events.append(.goAway(lastStreamID: lastStreamID, errorCode))
    }

    func h2OutboundQueueDrained(streamID: H2StreamID) {
        events.append(.drained(streamID))
        onDrained?(streamID)
    }

    /// Concatenated DATA payload of one stream.
    func body(of streamID: H2StreamID) -> [UInt8] {
        events.reduce(into: []) { out, event in
            if case .data(streamID, let bytes, _) = event { out += bytes }
        }
    }

    func headers(of streamID: H2StreamID, _ kind: H2HeaderBlockKind) -> [H2Header]? {
        for case .headers(streamID, let headers, kind, _) in events { return headers }
        return nil
    }

    func closeCode(of streamID: H2StreamID) -> H2ErrorCode? {
        for case .closed(streamID, let code) in events { return code }
        return nil
    }
}

let requestHeaders = [
    H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":path", "/svc/Method"),
    H2Header(":authority", "localhost"), H2Header("content-type", "application/grpc"),
]

struct Fixture {
    let serverEvents = RecordingDelegate()
    let clientEvents = RecordingDelegate()
    let pair: InMemoryPair

    init(feedMode: InMemoryPair.FeedMode = .whole, configuration: H2Configuration = H2Configuration()) {
        let server = H2ServerSession(configuration: configuration, delegate: serverEvents)
        let client = H2ClientSession(configuration: configuration, delegate: clientEvents)
        pair = InMemoryPair(client: client, server: server, feedMode: feedMode)
        serverEvents.session = server
        clientEvents.session = client
    }

    var server: H2ServerSession { pair.server }
    var client: H2ClientSession { pair.client }

    /// The server answers every request's headers with `:status 200` and keeps the stream open for data.
    func answerRequestsWithStatus200() {
        let server = self.server
        serverEvents.onHeaders = { streamID, _, kind, _ in
            guard kind == .request else { return }
            try? server.sendResponseHeaders(
                streamID: streamID, headers: [H2Header(":status", "200")], endStream: false)
        }
    }
}

@Test func serverQueuesSettingsAtCreationSoTheHandshakeCompletesAtOnce() {
    let server = H2ServerSession()
    let output = server.takeOutput()
    // A frame header: 3 bytes length, then type 0x4 (SETTINGS) on stream 0.
    #expect(output.count >= 9)
    #expect(output[3] == 0x04)
    #expect(output[5...8].allSatisfy { $0 == 0 })
}

@Test(arguments: [InMemoryPair.FeedMode.whole, .byteByByte, .chunks(of: 7)])
func requestResponseWithTrailersRoundTrips(feedMode: InMemoryPair.FeedMode) throws {
    let fixture = Fixture(feedMode: feedMode)
    let server = fixture.server
    fixture.answerRequestsWithStatus200()
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    try fixture.client.sendData(streamID: streamID, bytes: Array("hello".utf8))
    try fixture.client.closeSend(streamID: streamID)
    fixture.pair.pump()

    #expect(fixture.serverEvents.headers(of: streamID, .request)?.value(for: ":path") == "/svc/Method")
    #expect(fixture.serverEvents.body(of: streamID) == Array("hello".utf8))
    #expect(fixture.serverEvents.events.contains(.data(streamID, [], endStream: true)))

    try server.sendData(streamID: streamID, bytes: Array("world".utf8))
    try server.sendTrailers(streamID: streamID, trailers: [H2Header("grpc-status", "0")])
    fixture.pair.pump()

    #expect(fixture.clientEvents.headers(of: streamID, .response)?.value(for: ":status") == "200")
    #expect(fixture.clientEvents.body(of: streamID) == Array("world".utf8))
    #expect(fixture.clientEvents.headers(of: streamID, .trailers) == [H2Header("grpc-status", "0")])
    #expect(fixture.clientEvents.closeCode(of: streamID) == .noError)
    #expect(fixture.serverEvents.closeCode(of: streamID) == .noError)
    #expect(fixture.pair.serverReceiveError == nil && fixture.pair.clientReceiveError == nil)
}

@Test func clientResetClosesTheServerStreamWithCancel() throws {
    let fixture = Fixture()
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    try fixture.client.resetStream(streamID: streamID, errorCode: .cancel)
    fixture.pair.pump()
    #expect(fixture.serverEvents.closeCode(of: streamID) == .cancel)
    #expect(fixture.server.openStreamCount == 0)
}

@Test func garbageIntoTheServerSurfacesASessionErrorWithoutCrashing() {
    let server = H2ServerSession()
    _ = server.takeOutput()
    var thrown: H2Error?
    do throws(H2Error) {
        try server.receive(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
    } catch {
        thrown = error
    }
    guard case .sessionFailed = thrown else {
        Issue.record("expected sessionFailed, got \(String(describing: thrown))")
        return
    }
    _ = server.takeOutput()
    #expect(server.isClosed)
    #expect(throws: H2Error.self) { try server.receive([0, 0, 0]) }
}

@Test func corruptedFrameHeaderBreaksTheConnectionNotTheProcess() throws {
    let fixture = Fixture()
    fixture.pair.pump()  // handshake done
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    // Corrupt the top byte of the next frame's length: a frame larger than SETTINGS_MAX_FRAME_SIZE is a
    // connection error, which nghttp2 answers with GOAWAY(FRAME_SIZE_ERROR).
    fixture.pair.clientToServerFault = .corrupt(atOffset: fixture.pair.bytesClientToServer)
    fixture.pair.pump()
    #expect(fixture.serverEvents.headers(of: streamID, .request) == nil)
    #expect(fixture.clientEvents.events.contains(.goAway(lastStreamID: 0, .frameSizeError)))
    #expect(fixture.server.isClosed)
}

@Test func droppedLinkLeavesStreamsOpenUntilTheOwnerGivesUp() throws {
    let fixture = Fixture()
    fixture.pair.pump()
    fixture.pair.clientToServerFault = .drop(fromOffset: fixture.pair.bytesClientToServer)
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    #expect(fixture.serverEvents.headers(of: streamID, .request) == nil)
    #expect(fixture.server.wantsRead)
}

@Test func slowReaderBoundsTheServerQueueAndReportsWouldExceed() throws {
    var configuration = H2Configuration()
    configuration.maxQueuedBytesPerStream = 256 << 10
    configuration.initialWindowSize = 65_535
    let fixture = Fixture(configuration: configuration)
    let server = fixture.server
    fixture.answerRequestsWithStatus200()
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    fixture.pair.clientReads = false

    let chunk = [UInt8](repeating: 0xAB, count: 16 << 10)
    var sent = 0
    var refusal: H2Error?
    for _ in 0..<1000 {
        do throws(H2Error) {
            try server.sendData(streamID: streamID, bytes: chunk)
            sent += chunk.count
        } catch {
            refusal = error
            break
        }
        fixture.pair.pump()
    }
    guard case .wouldExceed(_, let adding, let limit) = refusal else {
        Issue.record("expected wouldExceed, got \(String(describing: refusal))")
        return
    }
    #expect(adding == chunk.count && limit == 256 << 10)
    #expect(server.queuedBytes(streamID: streamID) <= 256 << 10)
    // What left the queue is bounded by the client's window (65,535 stream) — the rest waits in the queue.
    #expect(sent - server.queuedBytes(streamID: streamID) <= 65_535)
    #expect(server.sendWindow(streamID: streamID) == 0)

    // The client reads again: everything arrives and the server hears the queue drained.
    fixture.pair.clientReads = true
    fixture.pair.pump()
    #expect(fixture.clientEvents.body(of: streamID).count == sent)
    #expect(server.queuedBytes(streamID: streamID) == 0)
    #expect(fixture.serverEvents.events.contains(.drained(streamID)))
}

@Test func gracefulGoAwayLetsOpenStreamsFinishAndRefusesNewOnes() throws {
    let fixture = Fixture()
    let server = fixture.server
    let first = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    server.sendGoAway(errorCode: .noError, graceful: true)
    fixture.pair.pump()
    #expect(fixture.clientEvents.events.contains(.goAway(lastStreamID: first, .noError)))
    #expect(throws: H2Error.self) { _ = try fixture.client.startRequest(headers: requestHeaders) }

    try server.sendResponseHeaders(streamID: first, headers: [H2Header(":status", "200")], endStream: false)
    try server.sendData(streamID: first, bytes: [1, 2, 3])
    try server.sendTrailers(streamID: first, trailers: [H2Header("grpc-status", "0")])
    try fixture.client.closeSend(streamID: first)
    fixture.pair.pump()
    #expect(fixture.clientEvents.body(of: first) == [1, 2, 3])
    #expect(fixture.clientEvents.closeCode(of: first) == .noError)
    #expect(server.isClosed)
}

@Test func twoStepShutdownWarnsFirstThenNamesTheLastStreamOneRoundTripLater() throws {
    let fixture = Fixture()
    let server = fixture.server
    let first = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    fixture.pair.clientReads = false
    server.beginGracefulShutdown()
    // A request already on its way when the notice left.
    let inFlight = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    #expect(!fixture.clientEvents.events.contains { if case .goAway = $0 { true } else { false } })

    // The client reads: the notice (2^31-1), then our PING comes back and the final GOAWAY names the request that
    // was in flight, which the server therefore still serves.
    fixture.pair.clientReads = true
    fixture.pair.pump()
    let goAways = fixture.clientEvents.events.compactMap { event -> H2StreamID? in
        if case .goAway(let lastStreamID, _) = event { lastStreamID } else { nil }
    }
    #expect(goAways == [Int32.max, inFlight])
    #expect(
        fixture.serverEvents.events.contains { if case .headers(inFlight, _, .request, _) = $0 { true } else { false } }
    )
    #expect(!server.isClosed)
    for stream in [first, inFlight] {
        try server.sendResponseHeaders(streamID: stream, headers: [H2Header(":status", "200")], endStream: true)
    }
    fixture.pair.pump()
    #expect(server.isClosed)
}

@Test func hundredConcurrentStreamsOnOneConnection() throws {
    let fixture = Fixture()
    let server = fixture.server
    fixture.serverEvents.onHeaders = { streamID, _, kind, _ in
        guard kind == .request else { return }
        try? server.sendResponseHeaders(streamID: streamID, headers: [H2Header(":status", "200")], endStream: false)
        try? server.sendData(streamID: streamID, bytes: withUnsafeBytes(of: streamID.bigEndian, Array.init))
        try? server.sendTrailers(streamID: streamID, trailers: [H2Header("grpc-status", "0")])
    }
    var streams: [H2StreamID] = []
    for _ in 0..<100 {
        streams.append(try fixture.client.startRequest(headers: requestHeaders, endStream: true))
    }
    #expect(fixture.client.openStreamCount == 100)
    fixture.pair.pump()
    for streamID in streams {
        #expect(fixture.clientEvents.body(of: streamID) == withUnsafeBytes(of: streamID.bigEndian, Array.init))
        #expect(fixture.clientEvents.closeCode(of: streamID) == .noError)
    }
    #expect(fixture.client.openStreamCount == 0)
    #expect(fixture.server.openStreamCount == 0)
}

@Test func sendingOnAnUnknownStreamIsAnError() {
    let server = H2ServerSession()
    #expect(throws: H2Error.noSuchStream(5)) { try server.sendData(streamID: 5, bytes: [1]) }
}

// MARK: Bounds on what a peer sends

/// One HTTP/2 frame as a hostile client would write it (RFC 9113 §4.1).
private func frame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8]) -> [UInt8] {
    let length = UInt32(payload.count)
    return [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, flags]
        + [UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)]
        + payload
}

/// HPACK: literal header field without indexing, new name (RFC 7541 §6.2.2); short names and values only.
private func literal(_ name: String, _ value: String) -> [UInt8] {
    [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [UInt8(value.utf8.count)] + Array(value.utf8)
}

/// The client preface and an empty SETTINGS, then `:method POST`, `:scheme http`, `:path /` (static table 3, 6, 4).
private let rawPreface =
    Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + frame(type: 0x4, flags: 0, stream: 0, payload: [])
private let rawRequestStart: [UInt8] = [0x83, 0x86, 0x84] + literal(":authority", "x") + literal("content-type", "a")

@Test func dataNobodyConsumesStopsThePeerAtTheWindowAndConsumingResumesIt() throws {
    var configuration = H2Configuration()
    configuration.initialWindowSize = 65_535
    let fixture = Fixture(configuration: configuration)
    fixture.serverEvents.consumesData = false
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    let chunk = [UInt8](repeating: 0x5A, count: 16 << 10)
    for _ in 0..<12 { try fixture.client.sendData(streamID: streamID, bytes: chunk) }  // 192 KiB offered
    fixture.pair.pump()
    // Exactly one window's worth arrived; the rest waits in the client, which may send nothing more.
    #expect(fixture.serverEvents.body(of: streamID).count == 65_535)
    #expect(fixture.client.sendWindow(streamID: streamID) == 0)
    #expect(fixture.client.queuedBytes(streamID: streamID) == 12 * chunk.count - 65_535)

    // The server processes what it holds: the window opens again and everything arrives.
    fixture.serverEvents.consumesData = true
    fixture.server.consume(streamID: streamID, count: 65_535)
    fixture.pair.pump()
    #expect(fixture.serverEvents.body(of: streamID).count == 12 * chunk.count)
    #expect(fixture.client.queuedBytes(streamID: streamID) == 0)
}

@Test func headersPastMaxConcurrentStreamsAreRefusedAndReported() throws {
    var configuration = H2Configuration()
    configuration.maxConcurrentStreams = 2
    let fixture = Fixture(configuration: configuration)
    // Submitted before the client has seen the server's SETTINGS, so it does not know the bound yet.
    var streams: [H2StreamID] = []
    for _ in 0..<5 { streams.append(try fixture.client.startRequest(headers: requestHeaders)) }
    fixture.pair.pump()
    #expect(fixture.serverEvents.headers(of: streams[0], .request) != nil)
    #expect(fixture.serverEvents.headers(of: streams[1], .request) != nil)
    for streamID in streams[2...] {
        #expect(fixture.serverEvents.headers(of: streamID, .request) == nil)
        #expect(fixture.clientEvents.closeCode(of: streamID) == .refusedStream)
    }
    #expect(
        fixture.serverEvents.limitsExceeded.map(\.0) == [.concurrentStreams, .concurrentStreams, .concurrentStreams])
    #expect(fixture.server.openStreamCount == 2)
}

@Test func aHeaderListPastTheBoundResetsTheStreamAndKeepsNothing() throws {
    let fixture = Fixture()
    let limit = Int(H2Configuration().maxHeaderListSize)
    let big = H2Header("x-padding", String(repeating: "a", count: limit))
    let tooBig = try fixture.client.startRequest(headers: requestHeaders + [big])
    let fine = try fixture.client.startRequest(headers: requestHeaders + [H2Header("x-small", "b")])
    fixture.pair.pump()
    #expect(fixture.serverEvents.headers(of: tooBig, .request) == nil, "the oversized block was not delivered")
    #expect(fixture.clientEvents.closeCode(of: tooBig) == .enhanceYourCalm)
    #expect(fixture.serverEvents.limitsExceeded.map(\.0) == [.headerListSize])
    #expect(fixture.serverEvents.headers(of: fine, .request)?.value(for: "x-small") == "b", "other streams go on")
    #expect(fixture.pair.serverReceiveError == nil)
}

@Test func aHeaderListJustWithinTheBoundIsDelivered() throws {
    let fixture = Fixture()
    // RFC 9113 counts name + value + 32 per field; the request headers take the rest.
    let used = requestHeaders.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 32 }
    let room = Int(H2Configuration().maxHeaderListSize) - used - 32 - "x-padding".utf8.count
    let streamID = try fixture.client.startRequest(
        headers: requestHeaders + [H2Header("x-padding", String(repeating: "a", count: room))])
    fixture.pair.pump()
    #expect(fixture.serverEvents.headers(of: streamID, .request)?.value(for: "x-padding")?.count == room)
    #expect(fixture.serverEvents.limitsExceeded.isEmpty)
}

@Test func aContinuationFloodFailsTheConnectionWithGoAway() throws {
    let events = RecordingDelegate()
    let server = H2ServerSession(delegate: events)
    _ = server.takeOutput()
    var bytes = rawPreface + frame(type: 0x1, flags: 0, stream: 1, payload: rawRequestStart)  // no END_HEADERS
    var fed = 0
    var failure: H2Error?
    // Endless CONTINUATION frames, none with END_HEADERS: the session must give up after its bound, not buffer on.
    for index in 0..<1000 {
        bytes += frame(type: 0x9, flags: 0, stream: 1, payload: literal("x-\(index % 10)", "v"))
        do throws(H2Error) {
            try server.receive(bytes)
        } catch {
            failure = error
            break
        }
        bytes = []
        fed += 1
    }
    #expect(failure != nil, "the flood was accepted")
    #expect(fed <= H2Configuration().maxContinuations)
    #expect(events.events.isEmpty, "no header block was delivered")
    let output = server.takeOutput()
    // Our SETTINGS were taken above; what follows must include a GOAWAY (frame type 0x7).
    var offset = 0
    var types: [UInt8] = []
    while offset + 9 <= output.count {
        let length = Int(output[offset]) << 16 | Int(output[offset + 1]) << 8 | Int(output[offset + 2])
        types.append(output[offset + 3])
        offset += 9 + length
    }
    #expect(types.contains(0x7), "frame types sent: \(types)")
    #expect(!server.wantsRead)
}

@Test func rapidResetsPastTheRateLimitEndTheConnection() throws {
    var configuration = H2Configuration()
    configuration.streamResetBurst = 10
    configuration.streamResetRatePerSecond = 1
    let fixture = Fixture(configuration: configuration)
    fixture.pair.pump()
    var opened = 0
    for _ in 0..<100 {
        guard let streamID = try? fixture.client.startRequest(headers: requestHeaders) else { break }
        opened += 1
        fixture.pair.pump()  // the HEADERS go out, so the reset is the peer's to count
        try? fixture.client.resetStream(streamID: streamID, errorCode: .cancel)
        fixture.pair.pump()
        if fixture.clientEvents.events.contains(where: { if case .goAway = $0 { true } else { false } }) { break }
    }
    #expect(opened < 100, "the server let 100 open-and-reset cycles through")
    #expect(fixture.clientEvents.events.contains(where: { if case .goAway = $0 { true } else { false } }))
}

@Test func thePeerPrefaceIsNoticed() throws {
    let fixture = Fixture()
    #expect(!fixture.server.prefaceReceived)
    fixture.pair.pump()
    #expect(fixture.server.prefaceReceived)
}

/// Data sent in parts (`bytes`, `then`, `last`: how gRPC sends a prefix, a shared body and a stream's own tail)
/// arrives as their concatenation, in order, also when the peer's window splits DATA frames inside a part and
/// across parts (65,535 bytes of window, ~300 KB sent).
@Test func dataSentInPartsArrivesWholeAcrossFrameAndWindowBoundaries() throws {
    let fixture = Fixture()
    let server = fixture.server
    fixture.answerRequestsWithStatus200()
    let streamID = try fixture.client.startRequest(headers: requestHeaders)
    fixture.pair.pump()
    var expected: [UInt8] = []
    let shared = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    for message in 0..<15 {
        let prefix = [UInt8(message), 1, 2, 3, 4]
        let tail = [UInt8](repeating: UInt8(200 + message), count: message)
        try server.sendData(streamID: streamID, bytes: prefix, then: shared, tail)
        expected += prefix + shared + tail
        if message % 4 == 0 { fixture.pair.pump() }
    }
    try server.sendData(streamID: streamID, bytes: [], then: [], [])
    try server.sendTrailers(streamID: streamID, trailers: [H2Header("grpc-status", "0")])
    fixture.pair.pump()
    #expect(fixture.clientEvents.body(of: streamID) == expected)
    #expect(server.queuedBytes(streamID: streamID) == 0)
    #expect(fixture.clientEvents.closeCode(of: streamID) == .noError)
}
