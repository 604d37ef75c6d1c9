import Testing
import Wire
import XDS

/// A push encodes each secret once and shares the bytes across streams, appending each stream's nonce: the bytes
/// must be exactly what encoding the whole response gives, and the memo must stay bounded.
@Suite struct SharedEncodingTests {
    private func response(_ name: String, _ version: String, nonce: String) -> DiscoveryResponse {
        DiscoveryResponse(
            versionInfo: version, resources: [packedSecret(name, version)], typeURL: SDS.secretTypeURL, nonce: nonce)
    }

    @Test func sharedBytesAreTheWholeResponsesBytes() throws {
        var bodies = SharedResponseBodies()
        for nonce in ["1-1", "2-1", "12345-678"] {
            let whole = response("default", "v1", nonce: nonce)
            let shared = SotWStream.wireBytes(whole, sharing: &bodies)
            #expect(shared == whole.wireBytes())
            #expect(try DiscoveryResponse(wireBytes: shared) == whole)
        }
        #expect(bodies.count == 1, "one body for three streams")
    }

    @Test func streamsShareOneBodyBufferAndOwnOnlyTheirNonce() {
        var bodies = SharedResponseBodies()
        let first = SotWStream.wireParts(response("default", "v1", nonce: "1-1"), sharing: &bodies)
        let second = SotWStream.wireParts(response("default", "v1", nonce: "2-1"), sharing: &bodies)
        let firstAddress = first.body.withUnsafeBufferPointer { $0.baseAddress }
        #expect(firstAddress == second.body.withUnsafeBufferPointer { $0.baseAddress }, "the same buffer, not a copy")
        #expect(first.tail == [0x2a, 3] + Array("1-1".utf8), "field 5, length, the nonce")
    }

    @Test func differentContentIsNotShared() throws {
        var bodies = SharedResponseBodies()
        let first = response("default", "v1", nonce: "1-1")
        let second = response("default", "v2", nonce: "2-1")
        #expect(try DiscoveryResponse(wireBytes: SotWStream.wireBytes(first, sharing: &bodies)) == first)
        #expect(try DiscoveryResponse(wireBytes: SotWStream.wireBytes(second, sharing: &bodies)) == second)
        #expect(bodies.count == 2)
    }

    @Test func severalResourcesAreEncodedPerStream() throws {
        var bodies = SharedResponseBodies()
        let both = DiscoveryResponse(
            versionInfo: "v", resources: [packedSecret("a", "1"), packedSecret("b", "2")], typeURL: SDS.secretTypeURL,
            nonce: "3-1")
        #expect(SotWStream.wireBytes(both, sharing: &bodies) == both.wireBytes())
        #expect(bodies.count == 0)
    }

    @Test func theMemoIsBounded() {
        var bodies = SharedResponseBodies()
        for i in 0..<(SharedResponseBodies.maxEntries * 3) {
            _ = SotWStream.wireBytes(response("default", "v\(i)", nonce: "1-\(i)"), sharing: &bodies)
            #expect(bodies.count <= SharedResponseBodies.maxEntries)
        }
        var calls = 0
        let big = bodies.body(for: "big") {
            calls += 1
            return [UInt8](repeating: 1, count: SharedResponseBodies.maxBodyBytes + 1)
        }
        _ = bodies.body(for: "big") {
            calls += 1
            return big
        }
        #expect(calls == 2, "a body over the size bound is not kept")
    }

    @Test func aNonceFieldIsAppendedAsProtobufEncodesIt() {
        var bytes: [UInt8] = []
        WireFieldWriter.appendString("", field: 5, to: &bytes)
        #expect(bytes.isEmpty, "proto3 omits an empty string")
        WireFieldWriter.appendString(String(repeating: "n", count: 200), field: 5, to: &bytes)
        #expect(Array(bytes.prefix(3)) == [0x2a, 0xc8, 0x01], "tag 5/length-delimited, varint 200")
        #expect(bytes.count == 203)
    }
}
