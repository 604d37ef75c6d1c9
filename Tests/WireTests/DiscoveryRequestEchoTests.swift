import Testing
import Wire

/// `DiscoveryRequestEcho` reads an ACK without decoding it; whatever it does not fully understand it declines, so
/// the decode (and its errors) stays the only judge of everything else.
@Suite struct DiscoveryRequestEchoTests {
    let typeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

    private func field(_ number: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [number << 3 | 2, UInt8(payload.count)] + payload
    }

    @Test func readsAnEnvoyACK() throws {
        let request = DiscoveryRequest(
            versionInfo: "1f2e3d4c5b6a7988", resourceNames: ["default"], typeURL: typeURL, responseNonce: "42")
        let echo = try #require(DiscoveryRequestEcho(wireBytes: request.wireBytes()))
        #expect(echo.echoes(nonce: "42") && !echo.echoes(nonce: "4") && !echo.echoes(nonce: "421"))
        #expect(echo.names(equal: ["default"]) && !echo.names(equal: []) && !echo.names(equal: ["ROOTCA"]))
        #expect(!echo.names(equal: ["default", "default"]))
        #expect(echo.typeURLIsAbsentOr(typeURL) && !echo.typeURLIsAbsentOr(typeURL + "x"))
        #expect(echo.versionInfoText == "1f2e3d4c5b6a7988" && echo.nonceText == "42")
        // No names and no type URL (allowed after the first request) read as absent.
        let bare = try #require(DiscoveryRequestEcho(wireBytes: DiscoveryRequest(responseNonce: "7").wireBytes()))
        #expect(bare.names(equal: []) && bare.typeURLIsAbsentOr(typeURL) && bare.versionInfoText.isEmpty)
    }

    @Test func declinesAnythingElse() {
        let nonce = field(5, Array("42".utf8))
        let name = field(3, Array("default".utf8))
        let declined: [(String, [UInt8])] = [
            ("no nonce (a first request)", name),
            ("a node", nonce + field(2, field(1, Array("node".utf8)))),
            ("an error_detail (a NACK)", nonce + field(6, [0x08, 0x0d])),
            ("two names", nonce + name + field(3, Array("ROOTCA".utf8))),
            ("a repeated nonce", nonce + nonce),
            ("a repeated version", nonce + field(1, [0x31]) + field(1, [0x32])),
            ("an unknown field", nonce + [0x38, 0x01]),
            ("a version of the wrong wire type", nonce + [0x08, 0x01]),
            ("a version that is not UTF-8", nonce + field(1, [0xc3, 0x28])),
            ("a version with a NUL", nonce + field(1, [0x31, 0x00])),
            ("a nonce with a NUL (found by fuzzing: it does not decode)", field(5, [0x0a, 0x00])),
            ("a name that is not UTF-8", nonce + field(3, [0xff])),
            ("a length past the end", nonce + [0x0a, 0x05, 0x31]),
            ("a truncated tag", nonce + [0x80]),
        ]
        for (label, bytes) in declined {
            #expect(DiscoveryRequestEcho(wireBytes: bytes) == nil, "\(label)")
        }
    }
}
