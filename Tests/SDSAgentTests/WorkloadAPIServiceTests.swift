import GRPC
import H2
import Issuance
import Logging
import PKI
import SPIFFE
import TestSupport
import Testing
import Wire

@testable import SDSAgent
@testable import Servers

@Suite struct LatestStateStreamTests {
    @Test func waitsWhileNothingIsPublishedThenSendsTheFirstState() {
        var stream = LatestStateStream()
        #expect(stream.stateChanged(to: nil) == .none)
        #expect(stream.stateChanged(to: 1) == .send(generation: 1))
    }

    @Test func sendsEachGenerationOnceAndNothingForTheSameOne() {
        var stream = LatestStateStream()
        #expect(stream.stateChanged(to: 1) == .send(generation: 1))
        stream.responseAwaitsTransport(generation: 1)
        #expect(stream.transportReady(current: 1) == .none)
        #expect(stream.stateChanged(to: 1) == .none)
        #expect(stream.stateChanged(to: 2) == .send(generation: 2))
    }

    @Test func changesWhileBusyMergeIntoOneSendOfTheLatest() {
        var stream = LatestStateStream()
        stream.responseAwaitsTransport(generation: 1)
        for generation: UInt64 in 2...50 { #expect(stream.stateChanged(to: generation) == .none) }
        #expect(stream.owed)
        #expect(stream.transportReady(current: 50) == .send(generation: 50))
        stream.responseAwaitsTransport(generation: 50)
        #expect(stream.transportReady(current: 50) == .none)
    }

    @Test func aChangeBackToWhatWasSentSendsNothing() {
        var stream = LatestStateStream()
        stream.responseAwaitsTransport(generation: 3)
        #expect(stream.stateChanged(to: 4) == .none)
        #expect(stream.transportReady(current: 3) == .none)
        #expect(!stream.busy && !stream.owed)
    }
}

/// The Workload API service end to end in memory: a gRPC client and server over two nghttp2 sessions, no sockets.
final class WorkloadHarness {
    let service = WorkloadAPIService(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    let server: GRPCServerConnection
    let client: GRPCClientConnection
    let pair: InMemoryPair
    let ca: TestCA

    init(clientConfiguration: H2Configuration = H2Configuration()) throws {
        let router = GRPCRouter()
        service.register(on: router)
        server = GRPCServerConnection(router: router)
        client = GRPCClientConnection(authority: "localhost", configuration: clientConfiguration)
        pair = InMemoryPair(client: client.session, server: server.session)
        pair.pump()
        ca = try TestCA()
    }

    func update(_ id: String = "spiffe://example.org/app") throws -> IdentityUpdate {
        let (chain, key) = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: id))
        let svid = try X509SVID(chain: chain, privateKey: key, now: ca.now)
        return IdentityUpdate(svid: svid, bundles: [ca.bundle])
    }

    func open(_ method: SpiffeWorkloadAPIMethod, header: Bool = true, request: [UInt8] = [])
        throws -> (GRPCClientCall, Received)
    {
        let metadata = header ? [(SpiffeWorkloadAPIMethod.securityHeader.name, "true")] : []
        let call = try client.startCall(path: method.path, metadata: metadata)
        let received = Received()
        call.onMessage = { received.messages.append($0) }
        call.onFinish = { status, _ in received.status = status }
        call.send(request)
        call.closeSend()
        pair.pump()
        return (call, received)
    }
}

@Suite struct WorkloadAPIServiceTests {
    @Test(arguments: SpiffeWorkloadAPIMethod.allCases)
    func callsWithoutTheSecurityHeaderAreInvalidArgument(method: SpiffeWorkloadAPIMethod) throws {
        let h = try WorkloadHarness()
        try h.service.publish(h.update())
        let (_, received) = try h.open(method, header: false)
        #expect(received.status?.code == .invalidArgument)
        #expect(received.status?.message.contains("workload.spiffe.io") == true)
        #expect(received.messages.isEmpty)
    }

    @Test func svidStreamWaitsForTheFirstSVIDThenGetsEveryRotation() throws {
        let h = try WorkloadHarness()
        let (_, received) = try h.open(.fetchX509SVID)
        #expect(received.messages.isEmpty && received.status == nil, "held open, not failed")

        let first = try h.update()
        try h.service.publish(first)
        h.pair.pump()
        #expect(received.messages.count == 1)
        let response = try X509SVIDResponse(wireBytes: received.messages[0])
        #expect(response.svids.count == 1)
        #expect(response.svids[0].spiffeID == "spiffe://example.org/app")
        #expect(response.svids[0].x509SVID == first.svid.chainDER)
        #expect(response.svids[0].x509SVIDKey == (try first.svid.privateKey.pkcs8DER()))
        #expect(response.svids[0].bundle == h.ca.bundle.der)
        #expect(response.federatedBundles.isEmpty)

        try h.service.publish(first)  // the same state again: nothing new to say
        h.pair.pump()
        #expect(received.messages.count == 1)

        let second = try h.update()
        try h.service.publish(second)
        h.pair.pump()
        #expect(received.messages.count == 2)
        #expect(try X509SVIDResponse(wireBytes: received.messages[1]).svids[0].x509SVID == second.svid.chainDER)
        #expect(received.status == nil, "the stream stays open")
    }

    @Test func bundlesStreamCarriesEveryTrustDomainFederatedOnesInTheSVIDStream() throws {
        let h = try WorkloadHarness()
        let other = try TestCA(trustDomain: "other.org")
        var update = try h.update()
        update.bundles.append(other.bundle)
        try h.service.publish(update)
        let (_, bundles) = try h.open(.fetchX509Bundles)
        let (_, svids) = try h.open(.fetchX509SVID)
        let bundleResponse = try X509BundlesResponse(wireBytes: bundles.messages[0])
        #expect(
            bundleResponse.bundles == ["spiffe://example.org": h.ca.bundle.der, "spiffe://other.org": other.bundle.der])
        let svidResponse = try X509SVIDResponse(wireBytes: svids.messages[0])
        #expect(svidResponse.federatedBundles == ["spiffe://other.org": other.bundle.der])
    }

    @Test func malformedRequestIsInvalidArgument() throws {
        let h = try WorkloadHarness()
        let (_, received) = try h.open(.fetchX509SVID, request: [0xff, 0xff, 0xff])
        #expect(received.status?.code == .invalidArgument)
    }

    @Test func jwtCallsWithoutASourceAreUnavailableNamingWhy() throws {
        let h = try WorkloadHarness()
        h.service.jwtUnavailable = GRPCStatus(.unavailable, "the istiod issuer has no JWT source")
        let (_, received) = try h.open(
            .fetchJWTSVID, request: JWTSVIDRequest(audience: ["x"]).wireBytes())
        #expect(received.status == GRPCStatus(.unavailable, "the istiod issuer has no JWT source"))
        let (_, bundles) = try h.open(.fetchJWTBundles)
        #expect(bundles.status?.code == .unavailable)
    }

    /// A client that stops reading: rotations must not pile up; when it reads again it gets the message in
    /// flight and then only the latest state.
    @Test func stalledClientCostsOneMessageAndThenGetsTheLatest() throws {
        var tinyWindow = H2Configuration()
        tinyWindow.initialWindowSize = 64
        let h = try WorkloadHarness(clientConfiguration: tinyWindow)
        let (_, received) = try h.open(.fetchX509SVID)
        h.pair.clientReads = false
        let first = try h.update()
        try h.service.publish(first)
        h.pair.pump()
        let oneMessage = h.server.session.totalQueuedBytes
        #expect(oneMessage > 0)
        var last = first
        for _ in 1...30 {
            last = try h.update()
            try h.service.publish(last)
            h.pair.pump()
            #expect(h.server.session.totalQueuedBytes <= oneMessage + 64)
        }
        h.pair.clientReads = true
        h.pair.pump()
        #expect(received.messages.count == 2, "the message in flight, then the latest")
        let chains = try received.messages.map { try X509SVIDResponse(wireBytes: $0).svids[0].x509SVID }
        #expect(chains == [first.svid.chainDER, last.svid.chainDER])
    }
}
