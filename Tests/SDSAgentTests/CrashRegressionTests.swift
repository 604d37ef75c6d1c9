import GRPC
import H2
import Testing
import Wire
import XDS

@testable import SDSAgent
@testable import Servers

/// Requests that used to end the agent (`Attempted to read an unowned reference but object … was already
/// destroyed`): the stream's own error path dropped it while its request handler still ran. Each must now end only
/// that stream, with a status, and leave the service serving a fresh client.
@Suite struct CrashRegressionTests {
    static let secretType = SDS.secretTypeURL

    /// A fresh, well-formed stream is still served `default` (the invariant every case ends on).
    func expectStillServes(_ h: ServiceHarness) throws {
        let (call, received) = try open(h, .streamSecrets)
        call.send(DiscoveryRequest(resourceNames: ["default"], typeURL: Self.secretType).wireBytes())
        h.pair.pump()
        #expect(received.messages.count == 1)
        #expect(received.status == nil)
    }

    @Test(arguments: ["", "type.googleapis.com/envoy.config.cluster.v3.Cluster"])
    func deltaWithAWrongTypeURLThatSubscribesEndsOnlyThatStream(typeURL: String) throws {
        let h = ServiceHarness()
        h.service.publish([h.secret("default", "one")])
        let (call, received) = try open(h, .deltaSecrets)
        call.send(
            DeltaDiscoveryRequest(
                typeURL: typeURL, resourceNamesSubscribe: ["default", "ROOTCA"], resourceNamesUnsubscribe: ["x"]
            ).wireBytes())
        h.pair.pump()
        #expect(received.status?.code == .invalidArgument)
        #expect(h.service.subscriptions.names.isEmpty, "a failed stream holds no names")
        try expectStillServes(h)
    }

    @Test func deltaWithAWrongTypeURLThatOnlyUnsubscribesEndsOnlyThatStream() throws {
        let h = ServiceHarness()
        h.service.publish([h.secret("default", "one")])
        let (call, received) = try open(h, .deltaSecrets)
        call.send(DeltaDiscoveryRequest(typeURL: Self.secretType, resourceNamesSubscribe: ["default"]).wireBytes())
        h.pair.pump()
        call.send(
            DeltaDiscoveryRequest(
                typeURL: "type.googleapis.com/envoy.config.cluster.v3.Cluster", resourceNamesUnsubscribe: ["default"]
            ).wireBytes())
        h.pair.pump()
        #expect(received.status?.code == .invalidArgument)
        try expectStillServes(h)
    }

    @Test func sotwWhoseSecondRequestChangesTheTypeURLEndsOnlyThatStream() throws {
        let h = ServiceHarness()
        h.service.publish([h.secret("default", "one")])
        let (call, received) = try open(h, .streamSecrets)
        call.send(DiscoveryRequest(resourceNames: ["default"], typeURL: Self.secretType).wireBytes())
        h.pair.pump()
        let first = try DiscoveryResponse(wireBytes: received.messages[0])
        call.send(
            DiscoveryRequest(
                versionInfo: first.versionInfo, resourceNames: ["default", "ROOTCA"],
                typeURL: "type.googleapis.com/envoy.config.listener.v3.Listener", responseNonce: first.nonce
            ).wireBytes())
        h.pair.pump()
        #expect(received.status?.code == .invalidArgument)
        #expect(h.service.openStreamCount == 0)
        try expectStillServes(h)
    }

    /// One response larger than the stream's whole send queue can never be sent: RESOURCE_EXHAUSTED for that
    /// stream, and the handler that asked for it must not touch the dropped stream afterwards.
    @Test(arguments: [SecretDiscoveryServiceMethod.streamSecrets, .deltaSecrets])
    func aResponseLargerThanTheStreamQueueEndsOnlyThatStream(method: SecretDiscoveryServiceMethod) throws {
        var small = H2Configuration()
        small.maxQueuedBytesPerStream = 4096
        let h = ServiceHarness(serverConfiguration: small)
        h.service.publish([h.secret("big", String(repeating: "x", count: 16_384)), h.secret("default", "one")])
        let (call, received) = try open(h, method)
        if method == .streamSecrets {
            call.send(DiscoveryRequest(resourceNames: ["big"], typeURL: Self.secretType).wireBytes())
        } else {
            call.send(DeltaDiscoveryRequest(typeURL: Self.secretType, resourceNamesSubscribe: ["big"]).wireBytes())
        }
        h.pair.pump()
        #expect(received.status?.code == .resourceExhausted)
        try expectStillServes(h)
    }
}
