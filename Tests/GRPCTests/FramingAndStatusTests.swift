import Testing

@testable import GRPC

@Test func decoderFedOneByteAtATimeYieldsEveryMessage() throws {
    let messages: [[UInt8]] = [Array("first".utf8), [], Array(repeating: 7, count: 300), [0]]
    let wire = messages.flatMap(GRPCMessageFraming.frame)
    var decoder = GRPCMessageDecoder()
    var decoded: [[UInt8]] = []
    for byte in wire {
        decoded += try decoder.feed([byte])
    }
    #expect(decoded == messages)
    #expect(decoder.isAtMessageBoundary)
}

@Test func decoderSplitsMessagesAcrossArbitraryChunks() throws {
    let messages: [[UInt8]] = (0..<20).map { Array(repeating: UInt8($0), count: $0 * 13) }
    let wire = messages.flatMap(GRPCMessageFraming.frame)
    var decoder = GRPCMessageDecoder()
    var decoded: [[UInt8]] = []
    var index = 0
    var size = 1
    while index < wire.count {
        let end = min(index + size, wire.count)
        decoded += try decoder.feed(wire[index..<end])
        index = end
        size = size % 17 + 3
    }
    #expect(decoded == messages)
}

@Test func oversizePrefixFailsWithResourceExhaustedBeforeAnyBodyArrives() {
    var decoder = GRPCMessageDecoder(maxMessageBytes: 4 << 20)
    // Announces 100 MB; only the 5-byte prefix is fed.
    let length = UInt32(100_000_000)
    let prefix: [UInt8] = [
        0, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF),
    ]
    #expect(throws: Never.self) { _ = try decoder.feed(prefix.prefix(4)) }
    do {
        _ = try decoder.feed(prefix.suffix(1))
        Issue.record("expected RESOURCE_EXHAUSTED")
    } catch {
        #expect(error.code == .resourceExhausted)
    }
    // Stays failed: later bytes are refused, not buffered.
    #expect(throws: GRPCStatus.self) { _ = try decoder.feed([1, 2, 3]) }
}

@Test func messageExactlyAtTheLimitIsAccepted() throws {
    var decoder = GRPCMessageDecoder(maxMessageBytes: 10)
    #expect(try decoder.feed(GRPCMessageFraming.frame(Array(repeating: 1, count: 10))).count == 1)
}

@Test func compressedFlagIsRejectedAsUnsupported() {
    var decoder = GRPCMessageDecoder()
    do {
        _ = try decoder.feed([1, 0, 0, 0, 1, 0x42])
        Issue.record("expected a failure")
    } catch {
        #expect(error == GRPCStatus(.unimplemented, "compressed messages not supported"))
    }
}

@Test func invalidFlagIsInternal() {
    var decoder = GRPCMessageDecoder()
    #expect(throws: GRPCStatus(.internal, "invalid message flag 2")) { _ = try decoder.feed([2, 0, 0, 0, 0]) }
}

@Test func partialMessageIsNotAtABoundary() throws {
    var decoder = GRPCMessageDecoder()
    _ = try decoder.feed([0, 0, 0])
    #expect(!decoder.isAtMessageBoundary)
}

@Test func percentEncodingRoundTripsNonASCIIAndPercent() {
    let message = "bad cert: 100% wrong — ünïcode\nnewline"
    let encoded = GRPCPercentEncoding.encode(message)
    #expect(encoded.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E })
    #expect(encoded.contains("100%25"))
    #expect(GRPCPercentEncoding.decode(encoded) == message)
    #expect(GRPCPercentEncoding.decode("a%zzb%4") == "a%zzb%4")
}

@Test func statusTrailersRoundTrip() {
    let status = GRPCStatus(.permissionDenied, "no 🚫")
    #expect(GRPCStatus(trailers: status.trailerFields) == status)
    #expect(GRPCStatus.ok.trailerFields.map(\.0) == ["grpc-status"])
    #expect(GRPCStatus(trailers: []).code == .unknown)
    #expect(GRPCStatus(trailers: [("grpc-status", "99")]).code == .unknown)
}

@Test func aPrefixAnnouncingTheLimitReservesNothingTheBufferGrowsWithWhatArrives() throws {
    var decoder = GRPCMessageDecoder(maxMessageBytes: 4 << 20)
    let length = UInt32(4 << 20)
    let prefix: [UInt8] = [
        0, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF),
    ]
    #expect(try decoder.feed(prefix).isEmpty)
    // 4 MiB promised, nothing sent: nothing held.
    #expect(decoder.bufferedBytes == 0)
    #expect(decoder.bufferCapacity < 64)
    #expect(try decoder.feed([UInt8](repeating: 7, count: 1000)).isEmpty)
    #expect(decoder.bufferedBytes == 1000)
    // Array growth may round up, but stays in proportion to what arrived.
    #expect(decoder.bufferCapacity < 4096)
}

@Test func theBufferNeverGrowsPastTheAnnouncedLengthNorTwiceWhatArrived() throws {
    let length = 900_000
    var decoder = GRPCMessageDecoder(maxMessageBytes: 1 << 20)
    let prefix: [UInt8] = [0, 0, UInt8(length >> 16), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
    _ = try decoder.feed(prefix)
    var arrived = 0
    let chunk = [UInt8](repeating: 1, count: 16_384)
    while arrived + chunk.count < length {
        _ = try decoder.feed(chunk)
        arrived += chunk.count
        // The allocator rounds up to its size classes and pages: allow a page.
        #expect(decoder.bufferCapacity <= 2 * arrived + 4096, "after \(arrived) bytes")
        #expect(decoder.bufferCapacity <= length + 4096)
    }
}

@Test func aMessageOneBytePastTheLimitFailsFromItsPrefixAndBuffersNothingAfter() {
    var decoder = GRPCMessageDecoder(maxMessageBytes: 1 << 20)
    let length = UInt32((1 << 20) + 1)
    let prefix: [UInt8] = [
        0, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF),
    ]
    #expect(throws: GRPCStatus(.resourceExhausted, "message of 1048577 bytes exceeds the limit of 1048576")) {
        _ = try decoder.feed(prefix)
    }
    #expect(throws: GRPCStatus.self) { _ = try decoder.feed([UInt8](repeating: 1, count: 1 << 16)) }
    #expect(decoder.bufferedBytes == 0 && decoder.bufferCapacity == 0)
}

/// Whole prefixes in one chunk take the in-place path: several messages in one chunk, a body completed by the
/// next chunk, and an oversize prefix refused without buffering, all as the byte-by-byte path decodes them.
@Test func wholePrefixesInOneChunkDecodeAsByteByByteDoes() throws {
    let messages: [[UInt8]] = [Array("one".utf8), [], Array(repeating: 9, count: 40), Array("last".utf8)]
    let wire = messages.flatMap(GRPCMessageFraming.frame)
    var decoder = GRPCMessageDecoder()
    #expect(Array(try decoder.feed(wire)) == messages)
    #expect(decoder.isAtMessageBoundary)

    let split = GRPCMessageFraming.frame(Array(repeating: 3, count: 100))
    #expect(try decoder.feed(split[..<30]).isEmpty)
    #expect(decoder.bufferedBytes == 25, "the body's first 25 bytes, not the prefix")
    #expect(Array(try decoder.feed(split[30...])) == [Array(repeating: 3, count: 100)])

    var bounded = GRPCMessageDecoder(maxMessageBytes: 10)
    #expect(throws: GRPCStatus.self) { _ = try bounded.feed([0, 0, 0, 0, 11] + Array(repeating: 1, count: 11)) }
    #expect(bounded.bufferedBytes == 0)
}
