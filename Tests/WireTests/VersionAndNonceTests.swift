import Testing
import Wire

/// The load client's cheap read of a DiscoveryResponse agrees with a full decode, and refuses what a decode refuses.
@Suite struct VersionAndNonceTests {
    @Test func agreesWithAFullDecode() throws {
        let response = DiscoveryResponse(
            versionInfo: "331425d538433f94", resources: [AnyMessage(typeURL: "type.googleapis.com/x", value: [1, 2])],
            typeURL: "type.googleapis.com/x", nonce: "12-3")
        let read = try DiscoveryResponse.versionAndNonce(wireBytes: response.wireBytes())
        #expect(read.version == response.versionInfo)
        #expect(read.nonce == response.nonce)
        #expect(try DiscoveryResponse.versionAndNonce(wireBytes: []) == ("", ""))
    }

    @Test func refusesWhatADecodeRefuses() {
        // A truncated length, a string field with invalid UTF-8, one with a NUL byte.
        for bytes: [UInt8] in [[0x0a, 0x05, 0x61], [0x0a, 0x02, 0xff, 0xfe], [0x2a, 0x02, 0x61, 0x00]] {
            #expect(throws: WireError.self) { try DiscoveryResponse.versionAndNonce(wireBytes: bytes) }
            #expect(throws: WireError.self) { try DiscoveryResponse(wireBytes: bytes) }
        }
    }
}
