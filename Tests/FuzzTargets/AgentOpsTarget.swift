import GRPC
import H2
import Issuance
import Logging
import PKI
import SDSAgent
import SPIFFE
import Servers
import TestSupport
import Transport
import Wire

/// The agent's serving side as clients see it, driven by operations instead of raw bytes: the real
/// `SecretDiscoveryService`, `HealthService` and `WorkloadAPIService` on one `GRPCRouter`, behind up to four
/// in-memory connections at once (a `GRPCServerConnection` each, a `GRPCClientConnection` as the client), so that
/// what reaches the services is well-formed HTTP/2 and gRPC carrying hostile messages. Secrets are published the
/// way the agent publishes an issuer's identity (`default`, the SPIFFE ID, `ROOTCA`, `spiffe://<td>`, `ALL`), in
/// generations signed by a `TestCA`; `grpc-timeout` deadlines run on a `FakeScheduler`.
///
/// Input: a sequence of ops (`FuzzInput`); `op = byte % 16`, arguments after it:
///
///     0 open connection   [config]         config bits: 0-1 per-stream send queue (8 MiB, 64 KiB, 4 KiB, 600 B),
///                                          2 four concurrent streams, 3-4 client window (1 MiB, 1 MiB, 512, 16),
///                                          5 4 KiB request messages, 6 8 KiB of buffered requests per connection
///     1 open stream       [conn][method][flags][timeout]   flags bit 0: without `workload.spiffe.io: true`,
///                                          bit 1: with grpc-timeout (`timeout` picks it)
///     2 SotW request      [conn][call][flags][names…][type URL…]…   (hand-encoded DiscoveryRequest)
///     3 Delta request     [conn][call][flags]…                       (hand-encoded DeltaDiscoveryRequest)
///     4 method's request  [conn][call]…    health / Workload API / SDS request for the call's method
///     5 half-close        [conn][call]
///     6 reset stream      [conn][call]
///     7 stop/resume reading on a connection   [conn]   reading → not reading (output piles up unread, held by
///                                          flow control) → stalled (nothing taken: held in the server's queues)
///     8 publish           [variant]        next generation (rotation), a bundle larger than small queues, a
///                                          federated bundle, unpublish those, withdraw the Workload API SVID,
///                                          flip health, reclassify
///     9 advance the clock [choice]         runs the grpc-timeout deadlines that fall due
///    10 end a connection  [conn][variant]  graceful drain, drain ending calls, socket gone, client GOAWAY,
///                                          immediate server GOAWAY
///    11 ACK / NACK        [conn][call][nack]   of the call's last response (right version and nonce)
///    12 pump now, then toggle pumping after every op
///    13 raw request bytes [conn][call][len16][bytes]
///    14 open + subscribe  [conn][delta][count][name…]   SotW (or Delta) with a well-formed first request
///    15 end every call    [variant]        `finishAll` on the SDS, health or Workload API service (drain)
///
/// Invariants, checked as bytes arrive and after the last op (a failure traps, so libFuzzer reports it):
/// - no byte the server writes (HTTP/2 output, reassembled messages, status messages) holds the test CA's private
///   key (PKCS#8 DER, PEM, or the raw scalar); the served SVID's key is expected, the CA's never;
/// - every xDS response carries the Secret type URL and only names its stream asked for;
/// - afterwards, a fresh well-formed connection opening StreamSecrets (and DeltaSecrets) for `default` and `ROOTCA`
///   gets both, with the current generation's certificate.
enum AgentOpsTarget {
    static let ownID = "spiffe://example.org/ns/default/sa/fuzz"
    static let secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    static let maxOps = 64
    static let maxConnections = 4
    static let maxCallsPerConnection = 16

    struct Generation: Sendable {
        let update: IdentityUpdate
        let secrets: [Secret]
        let chainPEM: [UInt8]
    }

    struct Fixture: Sendable {
        let generations: [Generation]
        /// `spiffe://big.example`: ~140 KB of PEM, larger than the small per-stream queues a connection may pick.
        let bigBundle: Secret
        let federated: Secret
        /// The test CA's private key as PKCS#8 DER, a line of its PEM, and its raw scalar.
        let caKeyNeedles: [[UInt8]]
    }

    static let fixture: Fixture = {
        do {
            let ca = try TestCA()
            let other = try TestCA(trustDomain: "other.org")
            let generations = try (0..<3).map { _ in
                let leaf = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: ownID))
                let svid = try X509SVID(chain: leaf.chain, privateKey: leaf.key, now: ca.now)
                let update = IdentityUpdate(svid: svid, bundles: [ca.bundle])
                return Generation(
                    update: update, secrets: try IdentitySecrets.secrets(for: update),
                    chainPEM: Array(svid.chainPEM.utf8))
            }
            let bigPEM = String(repeating: ca.root.pem, count: 200)
            let bigBundle = Secret(
                name: "spiffe://big.example",
                kind: .validationContext(CertificateValidationContext(trustedCA: .inlineBytes(Array(bigPEM.utf8)))))
            let federated = Secret(
                name: other.trustDomain.idString,
                kind: .validationContext(
                    CertificateValidationContext(trustedCA: .inlineBytes(Array(other.bundle.pem.utf8)))))
            return Fixture(
                generations: generations, bigBundle: bigBundle, federated: federated,
                caKeyNeedles: try keyNeedles(ca.rootKey))
        } catch {
            fatalError("fuzz fixture: \(error)")
        }
    }()

    /// What a leak of `key` would look like in output: its PKCS#8 DER, the second line of its PEM (the first is
    /// mostly the algorithm header every P-256 key shares), and the raw private scalar.
    static func keyNeedles(_ key: PrivateKey) throws -> [[UInt8]] {
        let der = try key.pkcs8DER()
        var needles = [der]
        let lines = try key.pkcs8PEM().split(separator: "\n")
        if lines.count > 2 { needles.append(Array(lines[2].utf8)) }
        // ECPrivateKey: version 1 (02 01 01), then the scalar as an OCTET STRING of 32 bytes (04 20).
        let marker: [UInt8] = [0x02, 0x01, 0x01, 0x04, 0x20]
        if let start = (0...(der.count - marker.count)).first(where: { Array(der[$0..<$0 + marker.count]) == marker }),
            start + marker.count + 32 <= der.count
        {
            needles.append(Array(der[(start + marker.count)..<(start + marker.count + 32)]))
        }
        return needles
    }

    static func run(_ bytes: UnsafeRawBufferPointer) {
        var input = FuzzInput(bytes)
        let harness = Harness(fixture: fixture)
        var count = 0
        while !input.isAtEnd, count < maxOps {
            count += 1
            harness.apply(op: input.byte(), &input)
            if harness.autopump { harness.pumpAll() }
        }
        harness.finish()
    }

    // MARK: - Methods and dictionaries

    enum Method: Int, CaseIterable {
        case streamSecrets, deltaSecrets, fetchSecrets, healthCheck, healthWatch
        case fetchX509SVID, fetchX509Bundles, fetchJWTSVID, fetchJWTBundles, validateJWTSVID

        var path: String {
            switch self {
            case .streamSecrets: SecretDiscoveryServiceMethod.streamSecrets.path
            case .deltaSecrets: SecretDiscoveryServiceMethod.deltaSecrets.path
            case .fetchSecrets: SecretDiscoveryServiceMethod.fetchSecrets.path
            case .healthCheck: HealthService.checkPath
            case .healthWatch: HealthService.watchPath
            case .fetchX509SVID: SpiffeWorkloadAPIMethod.fetchX509SVID.path
            case .fetchX509Bundles: SpiffeWorkloadAPIMethod.fetchX509Bundles.path
            case .fetchJWTSVID: SpiffeWorkloadAPIMethod.fetchJWTSVID.path
            case .fetchJWTBundles: SpiffeWorkloadAPIMethod.fetchJWTBundles.path
            case .validateJWTSVID: SpiffeWorkloadAPIMethod.validateJWTSVID.path
            }
        }

        var isWorkloadAPI: Bool { rawValue >= Method.fetchX509SVID.rawValue }
    }

    static func dictionary(_ words: [String]) -> [[UInt8]] { words.map { Array($0.utf8) } }

    static let names = dictionary([
        "default", "ROOTCA", ownID, "spiffe://example.org", "ALL", "spiffe://other.org", "spiffe://big.example",
        "file-root:system", "file-cert:/etc/certs/cert-chain.pem~/etc/certs/key.pem",
        "jwt-svid:spiffe://example.org/db",
        "spiffe://example.org/ns/other/sa/x", "unknown", "", "spiffe://", "default ",
    ])
    static let typeURLs = dictionary([
        "", "type.googleapis.com/envoy.config.cluster.v3.Cluster", secretTypeURL + " ",
        "envoy.extensions.transport_sockets.tls.v3.Secret", "type.googleapis.com/",
    ])
    static let tokens = dictionary(["", "0", "1-1", "2-1", "stale", "0000000000000000", "-1"])
    static let nodeIDs = dictionary([
        "sidecar~10.0.0.1~pod.default~default.svc.cluster.local", "", "envoy", "router~0.0.0.0~gw~istio-system",
    ])
    static let audiences = dictionary(["db", "spiffe://example.org/ns/db/sa/postgres", "", "a,b", "aud"])
    static let timeouts = ["1S", "100m", "0n", "99999999H", "5M", "1x", "-1S", "18446744073709551615n"]
    static let healthServices = ["", "envoy.service.secret.v3.SecretDiscoveryService", "grpc.health.v1.Health", "x"]
    static let clockSteps: [Double] = [0, 0.001, 0.1, 1, 30, 3600, 86_400, 10_000_000]

    /// The resource names a request message for `method` names, decoded as the server decodes it (none if it does
    /// not decode, or for other methods).
    static func names(inRaw bytes: [UInt8], for method: Method) -> [[UInt8]] {
        switch method {
        case .streamSecrets, .fetchSecrets:
            guard let request = try? DiscoveryRequest(wireBytes: bytes) else { return [] }
            return request.resourceNames.map { Array($0.utf8) }
        case .deltaSecrets:
            guard let request = try? DeltaDiscoveryRequest(wireBytes: bytes) else { return [] }
            let names =
                request.resourceNamesSubscribe + request.resourceNamesUnsubscribe
                + Array(request.initialResourceVersions.keys)
            return names.map { Array($0.utf8) }
        default:
            return []
        }
    }

    // MARK: - The harness

    /// One client call and what it saw.
    final class Call {
        let method: Method
        let grpc: GRPCClientCall
        /// The names of the last SotW request (an ACK repeats them); for Delta, the names subscribed now.
        var names: [[UInt8]] = []
        /// Every name this call ever asked for: responses may only carry these.
        var requested: Set<[UInt8]> = []
        var lastResponse: [UInt8]?
        /// The version of the last response this call ACKed (a NACK names it).
        var ackedVersion = ""
        var status: GRPCStatus?

        init(method: Method, grpc: GRPCClientCall) {
            self.method = method
            self.grpc = grpc
        }
    }

    /// A server connection and its client, joined in memory.
    final class Connection {
        let server: GRPCServerConnection
        let client: GRPCClientConnection
        /// The client reads what arrives (else the server's output piles up unread: only flow control holds it).
        var clientReads = true
        /// The "socket" takes nothing: the server's output stays queued in its session (its queue bounds hold it).
        var stalled = false
        var pendingToClient: [UInt8] = []
        var calls: [Call] = []
        var isOpen = true

        init(server: GRPCServerConnection, client: GRPCClientConnection) {
            self.server = server
            self.client = client
        }
    }

    final class Harness {
        let fixture: Fixture
        let scheduler = FakeScheduler()
        let router = GRPCRouter()
        let service: SecretDiscoveryService
        let health = HealthService()
        let workload: WorkloadAPIService
        var connections: [Connection] = []
        var generation = 0
        var autopump = true

        init(fixture: Fixture) {
            self.fixture = fixture
            let logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
            service = SecretDiscoveryService(
                classifier: { name in
                    SecretName(name, ownID: AgentOpsTarget.ownID, ownTrustDomain: "example.org") == .unknown
                        ? .neverServed : .served
                },
                logger: logger)
            workload = WorkloadAPIService(logger: logger)
            service.register(on: router)
            workload.register(on: router)
            health.register(on: router)
            publish(generation: 0)
        }

        func publish(generation index: Int) {
            generation = index
            let current = fixture.generations[index]
            service.publish(current.secrets)
            do { try workload.publish(current.update) } catch { fatalError("publishing to the Workload API: \(error)") }
            health.setServing(true)
        }

        // MARK: Invariants

        func scan(_ bytes: [UInt8], _ what: String) {
            for needle in fixture.caKeyNeedles where contains(bytes, needle) {
                fatalError("the test CA's private key left the server in \(what)")
            }
        }

        /// An xDS response must carry the Secret type and only names its stream asked for.
        func check(response bytes: [UInt8], on call: Call) {
            switch call.method {
            case .streamSecrets, .fetchSecrets:
                guard let response = try? DiscoveryResponse(wireBytes: bytes) else {
                    fatalError("the server sent a DiscoveryResponse it cannot decode itself")
                }
                invariant(response.typeURL == secretTypeURL, "response type_url \(response.typeURL)")
                for resource in response.resources {
                    guard let secret = try? resource.unpack(Secret.self) else {
                        fatalError("a resource that is not a Secret: \(resource.typeURL)")
                    }
                    invariant(
                        call.requested.contains(Array(secret.name.utf8)), "served \(secret.name), never requested")
                }
            case .deltaSecrets:
                guard let response = try? DeltaDiscoveryResponse(wireBytes: bytes) else {
                    fatalError("the server sent a DeltaDiscoveryResponse it cannot decode itself")
                }
                invariant(response.typeURL == secretTypeURL, "delta response type_url \(response.typeURL)")
                for resource in response.resources {
                    invariant(
                        call.requested.contains(Array(resource.name.utf8)), "served \(resource.name), never subscribed")
                }
                for name in response.removedResources {
                    invariant(call.requested.contains(Array(name.utf8)), "removed \(name), never subscribed")
                }
            default:
                break
            }
        }

        // MARK: Connections

        func openConnection(config: UInt8) -> Connection? {
            guard connections.count(where: \.isOpen) < AgentOpsTarget.maxConnections else { return nil }
            var server = H2Configuration()
            server.maxQueuedBytesPerStream = [8 << 20, 64 << 10, 4096, 600][Int(config & 3)]
            if config & 4 != 0 { server.maxConcurrentStreams = 4 }
            var client = H2Configuration()
            client.initialWindowSize = [1 << 20, 1 << 20, 512, 16][Int(config >> 3 & 3)]
            let scheduler = self.scheduler
            let connection = Connection(
                server: GRPCServerConnection(
                    router: router, configuration: server,
                    maxMessageBytes: config & 0x20 != 0 ? 4096 : GRPCMessageFraming.defaultMaxMessageBytes,
                    maxBufferedRequestBytes: config & 0x40 != 0
                        ? 8192 : GRPCServerConnection.defaultMaxBufferedRequestBytes,
                    scheduler: { seconds, action in
                        let timer = scheduler.schedule(after: seconds, action)
                        return { timer.cancel() }
                    }),
                client: GRPCClientConnection(authority: "sds-grpc", configuration: client))
            connection.server.peer = "pid=1 uid=0 gid=0"
            connections.append(connection)
            pump(connection)
            return connection
        }

        /// The open connection `selector` names; one is opened when there is none.
        func connection(_ selector: UInt8) -> Connection? {
            let open = connections.filter(\.isOpen)
            if open.isEmpty { return openConnection(config: 0) }
            return open[Int(selector) % open.count]
        }

        /// The call `selector` names on `connection`; a StreamSecrets call is opened when there is none.
        func call(_ selector: UInt8, on connection: Connection) -> Call? {
            if connection.calls.isEmpty { return open(.streamSecrets, on: connection, header: false, timeout: nil) }
            return connection.calls[Int(selector) % connection.calls.count]
        }

        func open(_ method: Method, on connection: Connection, header: Bool, timeout: String?) -> Call? {
            var metadata: [(String, String)] = []
            if header { metadata.append((SpiffeWorkloadAPIMethod.securityHeader.name, "true")) }
            if let timeout { metadata.append(("grpc-timeout", timeout)) }
            guard let grpc = try? connection.client.startCall(path: method.path, metadata: metadata) else { return nil }
            let call = Call(method: method, grpc: grpc)
            grpc.onMessage = { [weak self, weak call] message in
                guard let self, let call else { return }
                self.scan(message, "a response message")
                call.lastResponse = message
                self.check(response: message, on: call)
            }
            grpc.onFinish = { [weak self, weak call] status, trailers in
                self?.scan(Array(status.message.utf8), "a status message")
                for (name, value) in trailers { self?.scan(Array((name + value).utf8), "a trailer") }
                call?.status = status
            }
            connection.calls.append(call)
            if connection.calls.count > AgentOpsTarget.maxCallsPerConnection { connection.calls.removeFirst() }
            return call
        }

        /// Moves bytes both ways until neither side has anything to say; the server's output piles up unread while
        /// the client does not read. Bounded: a session producing output for ever is a finding (a hang).
        func pump(_ connection: Connection) {
            for _ in 0..<256 {
                guard connection.isOpen else { return }
                var moved = false
                let toServer = connection.client.session.takeOutput()
                if !toServer.isEmpty {
                    moved = true
                    do { try connection.server.session.receive(toServer) } catch {
                        close(connection)
                        return
                    }
                }
                let toClient = connection.stalled ? [] : connection.server.session.takeOutput()
                if !toClient.isEmpty {
                    moved = true
                    scan(toClient, "HTTP/2 output")
                    connection.pendingToClient += toClient
                }
                if connection.clientReads, !connection.pendingToClient.isEmpty {
                    moved = true
                    let bytes = connection.pendingToClient
                    connection.pendingToClient = []
                    do { try connection.client.session.receive(bytes) } catch {
                        close(connection)
                        return
                    }
                }
                // Both sides done (after GOAWAY): the transport closes the socket, as SDSServer does.
                if connection.server.session.isClosed || connection.client.session.isClosed {
                    close(connection)
                    return
                }
                if !moved { return }
            }
        }

        func pumpAll() {
            for connection in connections where connection.isOpen { pump(connection) }
        }

        /// The socket is gone: both sides hear it.
        func close(_ connection: Connection) {
            guard connection.isOpen else { return }
            connection.isOpen = false
            connection.server.connectionLost()
            connection.client.connectionLost()
        }

        // MARK: Ops

        func apply(op: UInt8, _ input: inout FuzzInput) {
            switch op % 16 {
            case 0:
                _ = openConnection(config: input.byte())
            case 1:
                guard let connection = connection(input.byte()) else { return }
                let method = Method.allCases[input.below(Method.allCases.count)]
                let flags = input.byte()
                let timeout = flags & 2 != 0 ? input.pick(AgentOpsTarget.timeouts) : nil
                _ = open(method, on: connection, header: flags & 1 == 0, timeout: timeout)
            case 2, 3, 4:
                guard let connection = connection(input.byte()), let call = call(input.byte(), on: connection) else {
                    return
                }
                let message: [UInt8]
                switch op % 16 {
                case 2: message = sotwRequest(&input, call: call)
                case 3: message = deltaRequest(&input, call: call)
                default: message = request(for: call, &input)
                }
                call.grpc.send(message)
            case 5:
                guard let connection = connection(input.byte()), let call = call(input.byte(), on: connection) else {
                    return
                }
                call.grpc.closeSend()
            case 6:
                guard let connection = connection(input.byte()), let call = call(input.byte(), on: connection) else {
                    return
                }
                call.grpc.cancel()
            case 7:
                guard let connection = connection(input.byte()) else { return }
                // Reading → not reading → stalled (nothing taken from the server) → reading.
                if connection.stalled {
                    connection.stalled = false
                    connection.clientReads = true
                } else if connection.clientReads {
                    connection.clientReads = false
                } else {
                    connection.stalled = true
                }
            case 8:
                publish(variant: input.byte())
            case 9:
                scheduler.advance(by: input.pick(AgentOpsTarget.clockSteps))
            case 10:
                guard let connection = connection(input.byte()) else { return }
                switch input.byte() % 5 {
                case 0: connection.server.beginDrain()
                case 1: connection.server.beginDrain(finishCalls: GRPCStatus(.unavailable, "draining"))
                case 2: close(connection)
                case 3: connection.client.session.sendGoAway()
                default: connection.server.session.sendGoAway(errorCode: .noError, graceful: false)
                }
            case 11:
                guard let connection = connection(input.byte()), let call = call(input.byte(), on: connection) else {
                    return
                }
                acknowledge(call, nack: input.bool(), &input)
            case 12:
                pumpAll()
                autopump.toggle()
            case 13:
                guard let connection = connection(input.byte()), let call = call(input.byte(), on: connection) else {
                    return
                }
                let bytes = input.lengthPrefixed()
                // Names a raw request carries, when it decodes, are asked for as a well-formed request's are (found
                // by fuzzing: a raw request subscribed a Delta stream to "", and the server rightly answered that
                // "" does not exist, which the check took for a name never asked for).
                call.requested.formUnion(AgentOpsTarget.names(inRaw: bytes, for: call.method))
                call.grpc.send(bytes)
            case 14:
                guard let connection = connection(input.byte()) else { return }
                let delta = input.bool()
                guard
                    let call = open(delta ? .deltaSecrets : .streamSecrets, on: connection, header: false, timeout: nil)
                else { return }
                let names = input.words(AgentOpsTarget.names, limit: 4)
                var writer = ProtoWriter()
                for name in names { writer.field(3, name) }
                writer.field(delta ? 2 : 4, AgentOpsTarget.secretTypeURL)
                call.names = names
                call.requested.formUnion(names)
                call.grpc.send(writer.bytes)
            default:
                let status = GRPCStatus(.unavailable, "draining")
                switch input.byte() % 4 {
                case 0: service.finishAll(status)
                case 1: health.finishAll(status)
                case 2: workload.finishAll(status)
                default:
                    service.finishAll(status)
                    health.finishAll(status)
                    workload.finishAll(status)
                }
            }
        }

        func publish(variant: UInt8) {
            switch variant % 8 {
            case 0, 1: publish(generation: (generation + 1) % fixture.generations.count)
            case 2: service.publish([fixture.bigBundle])
            case 3: service.publish([fixture.federated])
            case 4: service.unpublish([fixture.bigBundle.name, fixture.federated.name])
            case 5: workload.withdrawSVID()
            case 6: health.setServing(!health.isServing)
            default: service.reclassify()
            }
        }

        // MARK: Requests

        /// The node of a request: an id, a cluster, `metadata` (a Struct nested as deep as the input says; unknown
        /// to our Node subset, so protobuf-c keeps it as bytes), a user agent.
        func node(_ writer: inout ProtoWriter, _ input: inout FuzzInput) {
            writer.field(1, input.word(AgentOpsTarget.nodeIDs))
            writer.field(2, "fuzz-cluster")
            // Up to 240 levels as given, past that up to 1,500 (our Node subset has no metadata field: protobuf-c
            // keeps it as unknown bytes, so deeper costs only time).
            let depth = Int(input.byte())
            if depth > 0 {
                writer.field(3, ProtoWriter.nestedStruct(depth: depth > 240 ? (depth - 240) * 100 : depth))
            }
            writer.field(6, "envoy")
            writer.field(7, "1.40.0")
        }

        /// Three in four carry the Secret type URL; the rest an empty, wrong or fuzzed one.
        func typeURL(_ input: inout FuzzInput) -> [UInt8] {
            input.byte() < 0xC0 ? Array(AgentOpsTarget.secretTypeURL.utf8) : input.word(AgentOpsTarget.typeURLs)
        }

        func errorDetail(_ writer: inout ProtoWriter, field: Int, _ input: inout FuzzInput) {
            writer.message(field) { status in
                status.varintField(1, UInt64(input.byte() % 17))
                status.field(2, input.word(AgentOpsTarget.tokens))
            }
        }

        /// A DiscoveryRequest. flags bits: 0-1 version_info (none, the last response's, a word), 2 node, 3 repeat
        /// the last names, 4-5 nonce (none, the last response's, a word), 6 error_detail, 7 an unknown field.
        func sotwRequest(_ input: inout FuzzInput, call: Call) -> [UInt8] {
            let flags = input.byte()
            let last = call.lastResponse.flatMap { try? DiscoveryResponse(wireBytes: $0) }
            var writer = ProtoWriter()
            switch flags & 3 {
            case 0: break
            case 1: writer.field(1, last?.versionInfo ?? "")
            default: writer.field(1, input.word(AgentOpsTarget.tokens))
            }
            if flags & 4 != 0 { writer.message(2) { node(&$0, &input) } }
            let names = flags & 8 != 0 ? call.names : input.words(AgentOpsTarget.names, limit: 4)
            for name in names { writer.field(3, name) }
            writer.field(4, typeURL(&input))
            switch flags >> 4 & 3 {
            case 0: break
            case 1: writer.field(5, last?.nonce ?? "")
            default: writer.field(5, input.word(AgentOpsTarget.tokens))
            }
            if flags & 0x40 != 0 { errorDetail(&writer, field: 6, &input) }
            if flags & 0x80 != 0 { writer.field(99, input.shortBytes()) }
            call.names = names
            call.requested.formUnion(names)
            return writer.bytes
        }

        /// A DeltaDiscoveryRequest. flags bits: 0 node, 1 unsubscribe what was subscribed (else words), 2
        /// initial_resource_versions, 3-4 nonce (none, the last response's, a word), 5 error_detail.
        func deltaRequest(_ input: inout FuzzInput, call: Call) -> [UInt8] {
            let flags = input.byte()
            let last = call.lastResponse.flatMap { try? DeltaDiscoveryResponse(wireBytes: $0) }
            var writer = ProtoWriter()
            if flags & 1 != 0 { writer.message(1) { node(&$0, &input) } }
            writer.field(2, typeURL(&input))
            let subscribe = input.words(AgentOpsTarget.names, limit: 4)
            for name in subscribe { writer.field(3, name) }
            let unsubscribe =
                flags & 2 != 0 ? Array(call.names.prefix(input.below(4))) : input.words(AgentOpsTarget.names, limit: 2)
            for name in unsubscribe { writer.field(4, name) }
            if flags & 4 != 0 {
                for _ in 0..<input.below(3) {
                    // A name the client says it holds may come back as removed: it counts as asked for.
                    let name = input.word(AgentOpsTarget.names)
                    writer.mapEntry(5, key: name, value: input.word(AgentOpsTarget.tokens))
                    call.requested.insert(name)
                }
            }
            switch flags >> 3 & 3 {
            case 0: break
            case 1: writer.field(6, last?.nonce ?? "")
            default: writer.field(6, input.word(AgentOpsTarget.tokens))
            }
            if flags & 0x20 != 0 { errorDetail(&writer, field: 7, &input) }
            call.names.removeAll { unsubscribe.contains($0) }
            call.names += subscribe
            call.requested.formUnion(subscribe)
            call.requested.formUnion(unsubscribe)
            return writer.bytes
        }

        /// The request message of the call's method, with fields from the input.
        func request(for call: Call, _ input: inout FuzzInput) -> [UInt8] {
            switch call.method {
            case .streamSecrets, .fetchSecrets: return sotwRequest(&input, call: call)
            case .deltaSecrets: return deltaRequest(&input, call: call)
            case .healthCheck, .healthWatch:
                return HealthWire.request(service: input.pick(AgentOpsTarget.healthServices))
            case .fetchX509SVID, .fetchX509Bundles, .fetchJWTBundles: return input.bool() ? [] : input.shortBytes()
            case .fetchJWTSVID:
                var writer = ProtoWriter()
                for audience in input.words(AgentOpsTarget.audiences, limit: 3) { writer.field(1, audience) }
                if input.bool() { writer.field(2, input.word(AgentOpsTarget.names)) }
                return writer.bytes
            case .validateJWTSVID:
                var writer = ProtoWriter()
                writer.field(1, input.word(AgentOpsTarget.audiences))
                writer.field(2, input.word(AgentOpsTarget.tokens))
                return writer.bytes
            }
        }

        /// ACK (or NACK) the call's last response with its version and nonce, as Envoy does.
        func acknowledge(_ call: Call, nack: Bool, _ input: inout FuzzInput) {
            guard let bytes = call.lastResponse else { return }
            var writer = ProtoWriter()
            switch call.method {
            case .streamSecrets:
                guard let last = try? DiscoveryResponse(wireBytes: bytes) else { return }
                writer.field(1, nack ? call.ackedVersion : last.versionInfo)
                for name in call.names { writer.field(3, name) }
                writer.field(4, AgentOpsTarget.secretTypeURL)
                writer.field(5, last.nonce)
                if nack { errorDetail(&writer, field: 6, &input) } else { call.ackedVersion = last.versionInfo }
            case .deltaSecrets:
                guard let last = try? DeltaDiscoveryResponse(wireBytes: bytes) else { return }
                writer.field(2, AgentOpsTarget.secretTypeURL)
                writer.field(6, last.nonce)
                if nack { errorDetail(&writer, field: 7, &input) }
            default:
                return
            }
            call.grpc.send(writer.bytes)
        }

        // MARK: After the last op

        func finish() {
            autopump = true
            for connection in connections where connection.isOpen {
                connection.clientReads = true
                connection.stalled = false
                pump(connection)
                connection.server.beginDrain(finishCalls: GRPCStatus(.unavailable, "fuzz input ended"))
                pump(connection)
                close(connection)
            }
            guard let fresh = openConnection(config: 0) else { fatalError("no room for a fresh connection") }
            checkFreshClient(on: fresh, delta: false)
            checkFreshClient(on: fresh, delta: true)
            close(fresh)
        }

        /// A fresh, well-formed client asking for `default` and `ROOTCA` gets both, with the current certificate.
        func checkFreshClient(on connection: Connection, delta: Bool) {
            let generationPEM = fixture.generations[generation].chainPEM
            guard let call = open(delta ? .deltaSecrets : .streamSecrets, on: connection, header: false, timeout: nil)
            else { fatalError("a fresh client cannot open a stream after this input") }
            let names = [Array("default".utf8), Array("ROOTCA".utf8)]
            var writer = ProtoWriter()
            for name in names { writer.field(3, name) }
            writer.field(delta ? 2 : 4, AgentOpsTarget.secretTypeURL)
            call.names = names
            call.requested.formUnion(names)
            call.grpc.send(writer.bytes)
            pump(connection)
            guard let bytes = call.lastResponse else {
                fatalError("a fresh \(delta ? "Delta" : "SotW") client got no response for default and ROOTCA")
            }
            var served: [String: Secret] = [:]
            if delta {
                let response = try? DeltaDiscoveryResponse(wireBytes: bytes)
                for resource in response?.resources ?? [] {
                    if let secret = try? resource.resource?.unpack(Secret.self) { served[secret.name] = secret }
                }
            } else {
                let response = try? DiscoveryResponse(wireBytes: bytes)
                for resource in response?.resources ?? [] {
                    if let secret = try? resource.unpack(Secret.self) { served[secret.name] = secret }
                }
            }
            invariant(served["ROOTCA"] != nil, "a fresh client was not served ROOTCA")
            guard case .tlsCertificate(let certificate) = served["default"]?.kind,
                case .inlineBytes(let chain) = certificate.certificateChain
            else { fatalError("a fresh client was not served default") }
            invariant(chain == generationPEM, "a fresh client was served another certificate than the current one")
        }
    }
}
