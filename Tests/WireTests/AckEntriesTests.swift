import Testing
import Wire

/// The load client's cheap read of a DiscoveryResponse makes the ACK a full decode would, and refuses what a decode
/// refuses.
@Suite struct AckEntriesTests {
    /// The entries copied into an ACK decode, with the stream's own fields, as the DiscoveryRequest Envoy would send;
    /// the version digest tells versions apart.
    @Test func ackEntriesMakeTheRequestEnvoyWouldSend() throws {
        let response = DiscoveryResponse(
            versionInfo: "331425d538433f94", resources: [AnyMessage(typeURL: "type.googleapis.com/x", value: [1, 2])],
            typeURL: "type.googleapis.com/x", nonce: "12-3")
        let ack = try DiscoveryResponse.ackEntries(wireBytes: response.wireBytes())
        var fixed: [UInt8] = []
        WireFieldWriter.appendString("default", field: 3, to: &fixed)
        WireFieldWriter.appendString("type.googleapis.com/x", field: 4, to: &fixed)
        let request = try DiscoveryRequest(wireBytes: fixed + ack.entries)
        #expect(request.versionInfo == response.versionInfo)
        #expect(request.responseNonce == response.nonce)
        #expect(request.resourceNames == ["default"])
        var next = response
        next.versionInfo = "331425d538433f95"
        #expect(try DiscoveryResponse.ackEntries(wireBytes: next.wireBytes()).versionDigest != ack.versionDigest)
        #expect(try DiscoveryResponse.ackEntries(wireBytes: response.wireBytes()).versionDigest == ack.versionDigest)
        #expect(try DiscoveryResponse.ackEntries(wireBytes: []).entries.isEmpty)
    }

    /// Repeated entries (protobuf keeps the last) are all copied, in order, so the ACK decodes to what the response
    /// decodes to.
    @Test func repeatedEntriesKeepTheirOrder() throws {
        var bytes: [UInt8] = []
        for (field, value) in [(1, "v1"), (5, "n1"), (1, "v2"), (4, "t"), (5, "n2"), (1, "v3")] {
            WireFieldWriter.appendString(value, field: UInt32(field), to: &bytes)
        }
        let response = try DiscoveryResponse(wireBytes: bytes)
        let request = try DiscoveryRequest(wireBytes: DiscoveryResponse.ackEntries(wireBytes: bytes).entries)
        #expect(request.versionInfo == response.versionInfo && request.versionInfo == "v3")
        #expect(request.responseNonce == response.nonce && request.responseNonce == "n2")
    }

    @Test func refusesWhatADecodeRefuses() {
        // A truncated length, a string field with invalid UTF-8, one with a NUL byte.
        for bytes: [UInt8] in [[0x0a, 0x05, 0x61], [0x0a, 0x02, 0xff, 0xfe], [0x2a, 0x02, 0x61, 0x00]] {
            #expect(throws: WireError.self) { try DiscoveryResponse.ackEntries(wireBytes: bytes) }
            #expect(throws: WireError.self) { try DiscoveryResponse(wireBytes: bytes) }
        }
    }
}
