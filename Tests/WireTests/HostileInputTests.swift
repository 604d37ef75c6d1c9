import Testing

@testable import Wire

/// Messages a hostile peer or upstream can send that protobuf-c alone would mishandle: nesting deep enough to
/// overflow its recursive unpack, and strings it would cut at a NUL byte. Each is refused, with the field named,
/// before protobuf-c sees a byte.
@Suite struct HostileInputTests {
    /// A varint, as the wire format writes it.
    static func varint(_ value: Int) -> [UInt8] {
        var value = UInt64(value)
        var out: [UInt8] = []
        while value >= 0x80 {
            out.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
        return out
    }

    /// A length-delimited field.
    static func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] {
        varint(number << 3 | 2) + varint(payload.count) + payload
    }

    /// A `google.protobuf.Struct` holding `{"k": {"k": … {}}}`, `depth` Structs deep.
    static func nestedStruct(depth: Int) -> [UInt8] {
        var inner: [UInt8] = []
        for _ in 0..<depth {
            let value = field(5, inner)  // Value.struct_value
            let entry = field(1, Array("k".utf8)) + field(2, value)  // map entry: key, value
            inner = field(1, entry)  // Struct.fields
        }
        return inner
    }

    @Test func claimsNestedFiveThousandDeepAreRefusedWithoutRecursingThatDeep() {
        // ValidateJWTSVIDResponse { spiffe_id = 1; claims = 2 }: what an upstream SPIRE agent answers.
        let bytes =
            Self.field(1, Array("spiffe://example.org/web".utf8)) + Self.field(2, Self.nestedStruct(depth: 5000))
        #expect(bytes.count > 50_000)
        #expect {
            _ = try ValidateJWTSVIDResponse(wireBytes: bytes)
        } throws: { error in
            "\(error)".contains("nested deeper than \(WireValidation.maxDepth)")
        }
    }

    @Test func deeplyNestedNodeMetadataIsKeptAsBytesNotUnpacked() throws {
        // DiscoveryRequest { node = 2 { metadata = 3 } }: metadata is not modelled, so protobuf-c keeps it as an
        // unknown field's bytes and never recurses into it; the request decodes and the bytes are kept as sent.
        let node =
            Self.field(1, Array("sidecar~10.0.0.1~web~ns.svc.cluster.local".utf8))
            + Self.field(3, Self.nestedStruct(depth: 5000))
        let bytes =
            Self.field(2, node)
            + Self.field(4, Array("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".utf8))
        let request = try DiscoveryRequest(wireBytes: bytes)
        #expect(request.node?.id == "sidecar~10.0.0.1~web~ns.svc.cluster.local")
        #expect(request.node?.rawBytes == node)
    }

    @Test func aNulByteInANameIsRefusedNamingTheField() {
        // DeltaDiscoveryRequest { type_url = 2; resource_names_subscribe = 3 }.
        let bytes =
            Self.field(2, Array("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".utf8))
            + Self.field(3, Array("svc-a\0svc-b".utf8))
        #expect {
            _ = try DeltaDiscoveryRequest(wireBytes: bytes)
        } throws: { error in
            "\(error)".contains("resource_names_subscribe") && "\(error)".contains("NUL")
        }
    }

    @Test func aNulByteInAnAudienceOrSPIFFEIDIsRefused() {
        // JWTSVIDRequest { audience = 1 (repeated); spiffe_id = 2 }: `svc-a\0svc-b` must not become `svc-a`, and
        // `<own ID>\0/admin` must not become the own ID.
        let audience = Self.field(1, Array("svc-a\0svc-b".utf8))
        #expect {
            _ = try JWTSVIDRequest(wireBytes: audience)
        } throws: { error in
            "\(error)".contains("audience")
        }
        let id = Self.field(1, Array("svc".utf8)) + Self.field(2, Array("spiffe://example.org/web\0/admin".utf8))
        #expect {
            _ = try JWTSVIDRequest(wireBytes: id)
        } throws: { error in
            "\(error)".contains("spiffe_id")
        }
    }

    @Test func invalidUTF8InATypeURLIsRefused() {
        let bytes = Self.field(4, [0x74, 0xff, 0xfe])  // DiscoveryRequest.type_url
        #expect {
            _ = try DiscoveryRequest(wireBytes: bytes)
        } throws: { error in
            "\(error)".contains("type_url") && "\(error)".contains("UTF-8")
        }
    }

    @Test func bytesFieldsMayHoldNulBytes() throws {
        // X509SVIDResponse's DER fields are `bytes`: zeros are ordinary there.
        let response = X509SVIDResponse(
            svids: [
                X509SVIDMessage(
                    spiffeID: "spiffe://example.org/web", x509SVID: [0, 1, 0], x509SVIDKey: [0], bundle: [])
            ])
        let decoded = try X509SVIDResponse(wireBytes: response.wireBytes())
        #expect(decoded.svids.first?.x509SVID == [0, 1, 0])
    }
}
