import Testing
import Wire

/// Bad input throws `WireError`; it never traps, hangs or allocates what a length prefix claims.
@Suite struct MalformedInputTests {
    static let response = DiscoveryResponse(
        versionInfo: "1",
        resources: [
            AnyMessage(
                packing: Secret(
                    name: "default",
                    kind: .tlsCertificate(
                        TLSCertificate(certificateChain: .inlineBytes(pattern(1, 300)), privateKey: .inlineString("k")))
                ))
        ],
        typeURL: Secret.typeURL, nonce: "n")

    func isMalformed(_ error: WireError) -> Bool {
        if case .malformed = error { return true }
        return false
    }

    func decodeAsEveryType(_ bytes: [UInt8]) {
        _ = try? AnyMessage(wireBytes: bytes)
        _ = try? RPCStatus(wireBytes: bytes)
        _ = try? Node(wireBytes: bytes)
        _ = try? DiscoveryRequest(wireBytes: bytes)
        _ = try? DiscoveryResponse(wireBytes: bytes)
        _ = try? DeltaDiscoveryRequest(wireBytes: bytes)
        _ = try? DeltaDiscoveryResponse(wireBytes: bytes)
        _ = try? Resource(wireBytes: bytes)
        _ = try? Secret(wireBytes: bytes)
        _ = try? SPIFFECertValidatorConfig(wireBytes: bytes)
        _ = try? X509SVIDRequest(wireBytes: bytes)
        _ = try? X509SVIDResponse(wireBytes: bytes)
        _ = try? X509BundlesRequest(wireBytes: bytes)
        _ = try? X509BundlesResponse(wireBytes: bytes)
        _ = try? JWTSVIDRequest(wireBytes: bytes)
        _ = try? JWTSVIDResponse(wireBytes: bytes)
        _ = try? JWTBundlesResponse(wireBytes: bytes)
        _ = try? ValidateJWTSVIDRequest(wireBytes: bytes)
        _ = try? ValidateJWTSVIDResponse(wireBytes: bytes)
    }

    @Test func truncatedInsideAFieldIsMalformed() throws {
        let bytes = Self.response.wireBytes()
        let error = #expect(throws: WireError.self) { try DiscoveryResponse(wireBytes: Array(bytes.dropLast())) }
        #expect(error.map(isMalformed) == true)
        #expect(error?.description.contains("exceeds") == true)
    }

    @Test func everyPrefixDecodesOrThrows() {
        let bytes = Self.response.wireBytes()
        var rejected = 0
        for length in 0..<bytes.count {
            do {
                _ = try DiscoveryResponse(wireBytes: Array(bytes[..<length]))
            } catch {
                rejected += 1
            }
            decodeAsEveryType(Array(bytes[..<length]))
        }
        // Only cuts at the boundaries of the 4 top-level fields (and the empty prefix) can be valid.
        #expect(rejected >= bytes.count - 5)
    }

    @Test func lengthPrefixClaiming100MBIsMalformed() {
        // Field 1 (string), wire type 2, length 100,000,000 as a varint, then 3 bytes.
        var bytes: [UInt8] = [0x0a]
        var length: UInt64 = 100_000_000
        while length >= 0x80 {
            bytes.append(UInt8(length & 0x7f) | 0x80)
            length >>= 7
        }
        bytes.append(UInt8(length))
        bytes += Array("abc".utf8)
        let error = #expect(throws: WireError.self) { try DiscoveryRequest(wireBytes: bytes) }
        #expect(error?.description.contains("length 100000000") == true)
        decodeAsEveryType(bytes)
    }

    @Test func wrongWireTypeIsMalformed() {
        // version_info (field 1, a string) sent as a varint.
        #expect(throws: WireError.self) { try DiscoveryRequest(wireBytes: [0x08, 0x01]) }
        // resources (field 2, a message) sent as fixed32.
        #expect(throws: WireError.self) { try DiscoveryResponse(wireBytes: [0x15, 1, 2, 3, 4]) }
        // Secret.tls_certificate (field 2) as a varint.
        #expect(throws: WireError.self) { try Secret(wireBytes: [0x10, 0x05]) }
    }

    @Test func invalidWireTypeAndFieldZeroAreMalformed() {
        #expect(throws: WireError.self) { try Node(wireBytes: [0x0f, 0x00]) }  // wire type 7
        #expect(throws: WireError.self) { try Node(wireBytes: [0x02, 0x00]) }  // field number 0
        #expect(throws: WireError.self) { try Node(wireBytes: [0x08, 0xff]) }  // truncated varint
    }

    /// Found by fuzzing: protobuf-c accepts field number 0 in an overlong (two-byte) tag, but the scan that keeps
    /// a request's node bytes stopped there, so the node lost its bytes and did not survive re-encoding.
    @Test func overlongFieldZeroBeforeANodeIsMalformed() throws {
        let fieldZero: [UInt8] = [0x82, 0x00, 0x00]  // tag 2 written in two bytes: field 0, length-delimited, empty
        let node: [UInt8] = [0x0a, 0x03, 0x0a, 0x01, 0x6e]  // field 1: Node(id: "n")
        #expect(throws: WireError.self) { try DeltaDiscoveryRequest(wireBytes: fieldZero + node) }
        #expect(throws: WireError.self) { try DiscoveryRequest(wireBytes: [0x12] + node.dropFirst() + fieldZero) }
        #expect(try DeltaDiscoveryRequest(wireBytes: node).node?.id == "n")
    }

    /// Found by fuzzing: a node sent in two pieces, the second without the user-agent oneof, lost its
    /// user_agent_version in protobuf-c's merge; protobuf merges pieces as if concatenated.
    @Test func nodeSentInPiecesDecodesAsItsConcatenation() throws {
        let withVersion: [UInt8] = [0x12, 0x03, 0x3a, 0x01, 0x29]  // field 2: Node(user_agent_version: ")")
        let empty: [UInt8] = [0x12, 0x00]  // field 2 again, empty
        let request = try DiscoveryRequest(wireBytes: withVersion + empty)
        #expect(request.node?.userAgentVersion == ")")
        #expect(try DiscoveryRequest(wireBytes: request.wireBytes()) == request)
    }

    @Test func invalidUTF8InAStringIsMalformed() {
        let error = #expect(throws: WireError.self) { try Node(wireBytes: [0x0a, 0x02, 0xff, 0xfe]) }
        #expect(error?.description.contains("UTF-8") == true)
    }

    @Test func oversizeInputIsRejectedBeforeParsing() {
        let big = [UInt8](repeating: 0, count: DiscoveryRequest.defaultDecodeLimit + 1)
        #expect(throws: WireError.oversize(bytes: big.count, limit: 4 << 20)) { try DiscoveryRequest(wireBytes: big) }
        let bytes = Self.response.wireBytes()
        #expect(throws: WireError.oversize(bytes: bytes.count, limit: 100)) {
            try DiscoveryResponse(wireBytes: bytes, limit: 100)
        }
        #expect(throws: Never.self) { try DiscoveryResponse(wireBytes: bytes, limit: bytes.count) }
    }

    @Test func unknownFieldsAreSkipped() throws {
        // Field 99 (varint) and field 100 (bytes) in front of version_info.
        let bytes: [UInt8] = [0x98, 0x06, 0x01, 0xa2, 0x06, 0x01, 0x00, 0x0a, 0x01, 0x41]
        #expect(try DiscoveryRequest(wireBytes: bytes).versionInfo == "A")
    }

    /// Seeded random bytes, and random corruptions of a valid message, decoded as every type.
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomBytesNeverCrash(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        for _ in 0..<500 {
            let length = Int(random.next() % 200)
            decodeAsEveryType((0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        }
        let valid = Self.response.wireBytes()
        for _ in 0..<500 {
            var corrupted = valid
            for _ in 0..<(1 + random.next() % 4) {
                corrupted[Int(random.next() % UInt64(corrupted.count))] = UInt8(truncatingIfNeeded: random.next())
            }
            decodeAsEveryType(corrupted)
        }
    }
}

/// A small seeded generator, so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
