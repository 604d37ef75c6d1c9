import GRPC
import H2
import Logging
import TestSupport
import Testing
import Wire
import XDS

@testable import SDSAgent
@testable import Servers

/// The SDS service end to end in memory: a gRPC client and server over two nghttp2 sessions pumping bytes, no
/// sockets, no clock.
final class ServiceHarness {
    let service: SecretDiscoveryService
    let server: GRPCServerConnection
    let client: GRPCClientConnection
    let pair: InMemoryPair

    init(
        feedMode: InMemoryPair.FeedMode = .whole, clientConfiguration: H2Configuration = H2Configuration(),
        serverConfiguration: H2Configuration = H2Configuration()
    ) {
        service = SecretDiscoveryService(
            classifier: {
                SecretName($0, ownID: "spiffe://example.org/ns/a/sa/b", ownTrustDomain: "example.org") == .unknown
                    ? .neverServed : .served
            },
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            metricLabel: {
                SecretName.metricLabel(for: $0, ownID: "spiffe://example.org/ns/a/sa/b", ownTrustDomain: "example.org")
            })
        let router = GRPCRouter()
        service.register(on: router)
        server = GRPCServerConnection(router: router, configuration: serverConfiguration)
        client = GRPCClientConnection(authority: "sds-grpc", configuration: clientConfiguration)
        pair = InMemoryPair(client: client.session, server: server.session, feedMode: feedMode)
        pair.pump()
    }

    func secret(_ name: String, _ content: String) -> Secret {
        Secret(
            name: name,
            kind: .tlsCertificate(
                TLSCertificate(
                    certificateChain: .inlineBytes(Array(content.utf8)), privateKey: .inlineBytes(Array("k".utf8)))))
    }
}

final class Received {
    var messages: [[UInt8]] = []
    var status: GRPCStatus?
}

func open(_ h: ServiceHarness, _ method: SecretDiscoveryServiceMethod) throws -> (GRPCClientCall, Received) {
    let call = try h.client.startCall(path: method.path)
    let received = Received()
    call.onMessage = { received.messages.append($0) }
    call.onFinish = { status, _ in received.status = status }
    return (call, received)
}

@Suite struct SecretDiscoveryServiceTests {
    /// A client whose node asks for it (SPIRE's `disable_spiffe_cert_validation`) is answered from the variant entry
    /// under the name it asked for; another client on the same service gets the ordinary secret.
    @Test func aNodesAliasesPickTheVariantItIsServed() throws {
        let h = ServiceHarness()
        h.service.aliases = { $0.disableSPIFFECertValidation ? ["ALL": "ALL\u{0}plain"] : [:] }
        h.service.publish(
            [h.secret("ALL", "validator")], variants: ["ALL\u{0}plain": h.secret("ALL", "plain")])
        func firstResponse(_ node: Node) throws -> Secret {
            let (call, received) = try open(h, .streamSecrets)
            call.send(DiscoveryRequest(node: node, resourceNames: ["ALL"], typeURL: Secret.typeURL).wireBytes())
            h.pair.pump()
            let response = try DiscoveryResponse(wireBytes: try #require(received.messages.first))
            return try Secret(wireBytes: try #require(response.resources.first).value)
        }
        let plain = try firstResponse(Node(id: "plain", disableSPIFFECertValidation: true))
        let ordinary = try firstResponse(Node(id: "ordinary"))
        #expect(plain.name == "ALL" && ordinary.name == "ALL")
        guard case .tlsCertificate(let plainTLS) = plain.kind, case .tlsCertificate(let ordinaryTLS) = ordinary.kind
        else {
            Issue.record("unexpected kinds")
            return
        }
        #expect(plainTLS.certificateChain == .inlineBytes(Array("plain".utf8)))
        #expect(ordinaryTLS.certificateChain == .inlineBytes(Array("validator".utf8)))
    }

    @Test func sotwHoldsUntilIssuedThenPushesOnlyOnChange() throws {
        let h = ServiceHarness(feedMode: .byteByByte)
        let (call, received) = try open(h, .streamSecrets)
        call.send(DiscoveryRequest(resourceNames: ["default"], typeURL: SDS.secretTypeURL).wireBytes())
        h.pair.pump()
        #expect(received.messages.isEmpty, "held: nothing issued yet")

        h.service.publish([h.secret("default", "one")])
        h.pair.pump()
        #expect(received.messages.count == 1)
        let first = try DiscoveryResponse(wireBytes: received.messages[0])
        let secret = try first.resources[0].unpack(Secret.self)
        #expect(secret.name == "default")

        // ACK, then the same content again: no push.
        call.send(
            DiscoveryRequest(
                versionInfo: first.versionInfo, resourceNames: ["default"], typeURL: SDS.secretTypeURL,
                responseNonce: first.nonce
            ).wireBytes())
        h.service.publish([h.secret("default", "one")])
        h.pair.pump()
        #expect(received.messages.count == 1)

        // New content: pushed with a new version and nonce.
        h.service.publish([h.secret("default", "two")])
        h.pair.pump()
        #expect(received.messages.count == 2)
        let second = try DiscoveryResponse(wireBytes: received.messages[1])
        #expect(second.versionInfo != first.versionInfo)
        #expect(second.nonce != first.nonce)
    }

    @Test func deltaAnswersNamesNeverServedInRemovedResources() throws {
        let h = ServiceHarness()
        h.service.publish([h.secret("default", "one")])
        let (call, received) = try open(h, .deltaSecrets)
        call.send(
            DeltaDiscoveryRequest(
                typeURL: SDS.secretTypeURL, resourceNamesSubscribe: ["default", "spiffe://example.org/ns/x/sa/other"]
            ).wireBytes())
        h.pair.pump()
        let responses = try received.messages.map { try DeltaDiscoveryResponse(wireBytes: $0) }
        #expect(responses.flatMap { $0.resources.map(\.name) } == ["default"])
        #expect(responses.flatMap(\.removedResources) == ["spiffe://example.org/ns/x/sa/other"])
    }

    @Test func pushReachesEveryStreamOnce() throws {
        let h = ServiceHarness()
        var calls: [(GRPCClientCall, Received)] = []
        // As many streams as one connection may hold (SETTINGS_MAX_CONCURRENT_STREAMS, 128).
        for _ in 0..<128 {
            let (call, received) = try open(h, .streamSecrets)
            call.send(DiscoveryRequest(resourceNames: ["ROOTCA"], typeURL: SDS.secretTypeURL).wireBytes())
            calls.append((call, received))
        }
        h.pair.pump()
        h.service.publish([h.secret("ROOTCA", "bundle")])
        h.pair.pump()
        #expect(calls.allSatisfy { $0.1.messages.count == 1 })
        #expect(h.service.openStreamCount == 128)
    }

    @Test func malformedRequestGetsInvalidArgumentAndOtherStreamsContinue() throws {
        let h = ServiceHarness()
        let (bad, badReceived) = try open(h, .streamSecrets)
        let (good, goodReceived) = try open(h, .streamSecrets)
        bad.send([0xff, 0xff, 0xff])
        good.send(DiscoveryRequest(resourceNames: ["default"], typeURL: SDS.secretTypeURL).wireBytes())
        h.service.publish([h.secret("default", "one")])
        h.pair.pump()
        #expect(badReceived.status?.code == .invalidArgument)
        #expect(goodReceived.messages.count == 1)
        #expect(goodReceived.status == nil)
    }

    @Test func fetchIsHeldUntilIssuedAndNotFoundForNamesNeverServed() throws {
        let h = ServiceHarness()
        let (held, heldReceived) = try open(h, .fetchSecrets)
        held.send(DiscoveryRequest(resourceNames: ["default"], typeURL: SDS.secretTypeURL).wireBytes())
        held.closeSend()
        let (never, neverReceived) = try open(h, .fetchSecrets)
        never.send(DiscoveryRequest(resourceNames: ["kubernetes://x"], typeURL: SDS.secretTypeURL).wireBytes())
        never.closeSend()
        h.pair.pump()
        #expect(heldReceived.status == nil)
        #expect(neverReceived.status?.code == .notFound)
        h.service.publish([h.secret("default", "one")])
        h.pair.pump()
        #expect(heldReceived.status == .ok)
        #expect(heldReceived.messages.count == 1)
    }

    @Test func drainFinishesStreamsUnavailable() throws {
        let h = ServiceHarness()
        let (call, received) = try open(h, .deltaSecrets)
        call.send(DeltaDiscoveryRequest(typeURL: SDS.secretTypeURL, resourceNamesSubscribe: ["default"]).wireBytes())
        h.pair.pump()
        h.service.finishAll(GRPCStatus(.unavailable, "shutting down"))
        h.pair.pump()
        #expect(received.status?.code == .unavailable)
        #expect(h.service.openStreamCount == 0)
    }

    /// A client whose window lets almost nothing through and that stops reading: rotations must not pile up as
    /// queued responses; when it reads again it gets the one it took first and then only the latest.
    @Test(arguments: [SecretDiscoveryServiceMethod.streamSecrets, .deltaSecrets])
    func stalledClientCostsOneResponseAndThenGetsTheLatest(method: SecretDiscoveryServiceMethod) throws {
        var tinyWindow = H2Configuration()
        tinyWindow.initialWindowSize = 64
        let h = ServiceHarness(clientConfiguration: tinyWindow)
        let (call, received) = try open(h, method)
        if method == .streamSecrets {
            call.send(DiscoveryRequest(resourceNames: ["default"], typeURL: SDS.secretTypeURL).wireBytes())
        } else {
            call.send(
                DeltaDiscoveryRequest(typeURL: SDS.secretTypeURL, resourceNamesSubscribe: ["default"]).wireBytes())
        }
        h.pair.pump()
        h.pair.clientReads = false
        h.service.publish([h.secret("default", "version-0")])
        h.pair.pump()
        let oneResponse = h.server.session.totalQueuedBytes
        #expect(oneResponse > 0, "the first response waits for the window")
        for version in 1...200 {
            h.service.publish([h.secret("default", "version-\(version)")])
            h.pair.pump()
            #expect(h.server.session.totalQueuedBytes <= oneResponse)
        }

        h.pair.clientReads = true
        h.pair.pump()
        #expect(received.messages.count == 2, "the response in flight, then one merged response")
        let contents = try received.messages.map { bytes -> String in
            let secret: Secret
            if method == .streamSecrets {
                secret = try DiscoveryResponse(wireBytes: bytes).resources[0].unpack(Secret.self)
            } else {
                secret = try DeltaDiscoveryResponse(wireBytes: bytes).resources[0].resource!.unpack(Secret.self)
            }
            guard case .tlsCertificate(let certificate) = secret.kind,
                case .inlineBytes(let chain) = certificate.certificateChain
            else { return "" }
            return String(decoding: chain, as: UTF8.self)
        }
        #expect(contents == ["version-0", "version-200"])
    }
}

@Suite struct SecretDiscoveryServiceMetricsTests {
    @Test func pushesAndNacksAreCountedByServedName() throws {
        let h = ServiceHarness()
        let (call, received) = try open(h, .streamSecrets)
        call.send(DiscoveryRequest(resourceNames: ["default"], typeURL: SDS.secretTypeURL).wireBytes())
        h.service.publish([h.secret("default", "one")])
        h.pair.pump()
        #expect(h.service.metrics.pushes == 1)
        let first = try DiscoveryResponse(wireBytes: received.messages[0])
        call.send(
            DiscoveryRequest(
                versionInfo: "", resourceNames: ["default"], typeURL: SDS.secretTypeURL, responseNonce: first.nonce,
                errorDetail: RPCStatus(code: 3, message: "bad cert", details: [])
            ).wireBytes())
        h.pair.pump()
        #expect(h.service.metrics.nacks == ["default": 1])
        #expect(h.service.openCallCounts.sotw == 1)
    }

    @Test func aNameNeverServedIsWarnedOnceAndCountedEachTime() throws {
        let h = ServiceHarness()
        for _ in 0..<3 {
            let (call, _) = try open(h, .streamSecrets)
            call.send(
                DiscoveryRequest(resourceNames: ["defualt", "default"], typeURL: SDS.secretTypeURL).wireBytes())
        }
        h.pair.pump()
        #expect(h.service.metrics.refusals[.names] == 3, "each subscription naming it is counted")
        #expect(h.service.warnedNeverServed == ["defualt"], "warned once, and only the name never served")
    }

    @Test func theWarnedSetIsBounded() throws {
        let h = ServiceHarness()
        let names = (0..<(SecretDiscoveryService.maxWarnedNeverServed + 10)).map { "made-up-\($0)" }
        let (call, _) = try open(h, .streamSecrets)
        call.send(DiscoveryRequest(resourceNames: names, typeURL: SDS.secretTypeURL).wireBytes())
        h.pair.pump()
        #expect(h.service.warnedNeverServed.count == SecretDiscoveryService.maxWarnedNeverServed)
        #expect(h.service.metrics.refusals[.names] == UInt64(names.count))
    }
}
