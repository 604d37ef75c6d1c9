import Testing
import Wire
import XDS

/// `SotWStream.plainAcknowledgement` skips decoding for the ACKs that change nothing; it must say yes exactly when
/// `receive` would return only that `.ack` and leave the stream as it was, and no for everything else.
@Suite struct PlainAcknowledgementTests {
    private func answered(_ names: [String]) -> (SotWStream, SecretCache, DiscoveryResponse) {
        var cache = emptyCache()
        for name in ["default", "ROOTCA"] { cache.put(name, "v1") }
        var stream = SotWStream()
        let response = sent(stream.receive(sotwRequest(names), cache: cache))[0]
        return (stream, cache, response)
    }

    @Test func agreesWithReceiveOnEveryKindOfFollowUp() throws {
        let node = Node(id: "sidecar~10.0.0.1~web.ns~ns.svc.cluster.local", cluster: "web")
        // (An empty subscription is never answered, so it has nothing to acknowledge.)
        for names in [["default"], ["default", "ROOTCA"]] {
            let (stream, cache, response) = answered(names)
            let cases: [(String, DiscoveryRequest)] = [
                ("ack", ack(response, names: names)),
                (
                    "ack without type_url",
                    sotwRequest(names, version: response.versionInfo, nonce: response.nonce, typeURL: "")
                ),
                ("stale nonce", sotwRequest(names, version: "v0", nonce: "stale")),
                ("empty nonce", sotwRequest(names)),
                ("other names", sotwRequest(["ROOTCA"], version: response.versionInfo, nonce: response.nonce)),
                (
                    "names reordered",
                    sotwRequest(names.reversed(), version: response.versionInfo, nonce: response.nonce)
                ),
                ("nack", sotwRequest(names, nonce: response.nonce, error: loadFailure)),
                ("with a node", sotwRequest(names, version: response.versionInfo, nonce: response.nonce, node: node)),
                ("other type", sotwRequest(names, version: response.versionInfo, nonce: response.nonce, typeURL: "x")),
            ]
            for (label, request) in cases {
                var received = stream
                let actions = received.receive(request, cache: cache)
                var asked = stream
                let plain = asked.plainAcknowledgement(request.wireBytes())
                let onlyTheAck =
                    actions == [.ack(nonce: response.nonce, versionInfo: request.versionInfo, resourceNames: names)]
                    && received.subscribedNames == stream.subscribedNames && received.node == stream.node
                    && received.latestNonce == stream.latestNonce && received.failure == nil
                // A fast path may decline what `receive` treats as a plain ACK (several names), never the reverse.
                if plain != nil { #expect(onlyTheAck, "\(label) \(names)") }
                // One name reversed is the same list.
                let acks = ["ack", "ack without type_url"] + (names.count == 1 ? ["names reordered"] : [])
                let expected = acks.contains(label) && names.count <= 1
                #expect((plain != nil) == expected, "\(label) \(names)")
                if let plain {
                    #expect(plain.nonceText == response.nonce && plain.versionInfoText == response.versionInfo)
                }
            }
        }
    }

    @Test func aStreamThatHasNotAnsweredTakesNoShortcut() {
        var stream = SotWStream()
        #expect(stream.plainAcknowledgement(sotwRequest(["default"], version: "v1", nonce: "1").wireBytes()) == nil)
    }
}
