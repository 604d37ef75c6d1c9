import GRPC
import Glibc
import Issuance
import IstioCA
import PKI
import SPIFFE
import TestSupport
import Transport
import Wire
import WorkloadAPIClient

/// Upstream issuers fed hostile *responses*: the first byte picks one, the rest is a sequence of ops (`FuzzInput`).
///
/// **Workload API** (first byte even; then [any ID?][jitter]): the real `WorkloadAPIIssuer` shell. Its dialer hands
/// it one end of a socket pair; the other end is a fake upstream (a `GRPCServerConnection` answering the Workload API
/// paths) whose answers come from the input. The issuer's socket runs on a real `EventLoop`, its timers on a
/// `FakeScheduler`; the consumer does what the agent does with an update: arms a loop timer until the SVID expires.
/// Ops (`byte % 14`):
///
///     0 X509SVIDResponse   0-3 SVIDs: a chain from the fixture set (valid, notAfter 9999-12-31, notBefore a year
///                          ahead, expired, another workload, another trust domain, via an intermediate, leaf is a
///                          CA, the leaf then up to hundreds of intermediates, garbage, none), a key (its own,
///                          another, garbage), a bundle (own, other, none, up to hundreds of roots), a SPIFFE ID;
///                          CRLs; federated bundles
///     1 X509BundlesResponse   trust domains from a dictionary, or hundreds of made-up ones
///     2 JWTBundlesResponse    3 end a stream with a status
///     4 break the connection  close, half-close, GOAWAY, RST_STREAM, garbage bytes
///     5 time passes (timers run) or the wall clock jumps (a day, a year, centuries, or back)
///     6 rotateNow             7 how the next dial goes (connected, in progress, refused, missing, backlog full)
///     8 relay FetchJWTSVID    9 relay ValidateJWTSVID
///    10 answer the oldest relayed call: JWTSVIDResponse, or ValidateJWTSVIDResponse with claims nested up to
///       20,000 deep; an error, no message, two messages, a reset
///    11 run due timers       12 stop         13 raw bytes on a stream
///
/// **istiod** (first byte odd): `IstioCAClientStateMachine` (its shell needs TLS over TCP), with its timers armed on
/// a real `EventLoop` as `IstioCAIssuer` arms them. Responses are `IstioCertificateResponse` bytes decoded as the
/// shell decodes them, with elements from a fixture set of certificates for the CSR's key (valid, 9999-12-31, not
/// yet valid, expired, wrong ID, another key, via an intermediate, another root; roots, intermediates, garbage, a
/// NUL byte, one element holding up to hundreds of roots). Ops (`byte % 10`, each then [jitter]): key ready, key
/// failed, respond, call failed, cannot send, the timer fires, time passes, rotateNow, stop, a stale answer.
///
/// Invariants: no crash or trap; every update delivered is valid at the time of delivery, for the wanted ID, and
/// chains to its own bundle (istiod: certifies the key the machine took for the round); what the issuer holds as
/// current is always the last update delivered — a bad response never replaces it; timer delays are finite and
/// non-negative; nothing is delivered or reported after `stop()`; each relayed call is answered exactly once; every
/// socket handed to the issuer is closed once it stopped.
enum IssuerResponsesTarget {
    /// Whether `finish` checks that the issuer closed every socket it was given (see there). The fuzzer's entry
    /// point turns it on.
    nonisolated(unsafe) static var checksDescriptors = false

    static let maxOps = 64
    static let workloadID = "spiffe://example.org/ns/default/sa/web"
    static let istioID = "spiffe://example.org/ns/default/sa/default"
    /// 9999-12-31T23:59:59Z: RFC 5280's "no well-defined expiration date".
    static let endOfTime: Int64 = 253_402_300_799

    struct Leaf: Sendable {
        let chainDER: [UInt8]
        let keyDER: [UInt8]
    }

    struct Fixture: Sendable {
        let start: Timestamp
        let leaves: [Leaf]
        let intermediateDER: [UInt8]
        let bundleDER: [UInt8]
        let otherBundleDER: [UInt8]
        let csrKey: PrivateKey
        let otherKey: PrivateKey
        /// Elements an istiod answer may hold (PEM text).
        let istioElements: [String]
        let rootPEM: String
        let root: Certificate
    }

    static let fixture: Fixture = {
        do {
            let ca = try TestCA()
            let other = try TestCA(trustDomain: "other.org")
            let intermediate = try ca.makeIntermediate()
            func leaf(_ id: String, from issuer: TestCA = ca, _ adjust: (inout TestCA.LeafOptions) -> Void = { _ in })
                throws -> Leaf
            {
                var options = TestCA.LeafOptions(spiffeID: id)
                adjust(&options)
                let made = try issuer.makeLeaf(options)
                return Leaf(chainDER: Certificate.concatenatedDER(made.chain), keyDER: try made.key.pkcs8DER())
            }
            let farFuture = endOfTime - ca.now.secondsSinceEpoch
            let leaves = [
                try leaf(workloadID),
                try leaf(workloadID) { $0.notAfterOffset = farFuture },
                try leaf(workloadID) {
                    $0.notBeforeOffset = 365 * 86_400
                    $0.notAfterOffset = 366 * 86_400
                },
                try leaf(workloadID) {
                    $0.notBeforeOffset = -7200
                    $0.notAfterOffset = -3600
                },
                try leaf("spiffe://example.org/ns/other/sa/x"),
                try leaf("spiffe://other.org/ns/default/sa/web", from: other),
                try leaf(workloadID) { $0.intermediate = intermediate },
                try leaf(workloadID) { $0.isCA = true },
            ]
            // istiod's answers certify the key of our CSR.
            let csrKey = try PrivateKey.generate()
            let otherKey = try PrivateKey.generate()
            func istioLeaf(
                _ id: String = istioID, key: PrivateKey? = nil, notBefore: Int64 = -60, notAfter: Int64 = 86_400,
                issuer: (certificate: Certificate, key: PrivateKey)? = nil
            ) throws -> String {
                try makeIstioLeaf(
                    id: id, key: key ?? csrKey, validity: (ca.now + notBefore, ca.now + notAfter),
                    issuer: issuer ?? (ca.root, ca.rootKey))
            }
            let rootPEM = ca.root.pem
            let elements = [
                try istioLeaf(),
                try istioLeaf(notAfter: farFuture),
                try istioLeaf(notBefore: 365 * 86_400, notAfter: 366 * 86_400),
                try istioLeaf(notBefore: -7200, notAfter: -3600),
                try istioLeaf("spiffe://example.org/ns/other/sa/x"),
                try istioLeaf(key: otherKey),
                try istioLeaf(issuer: (intermediate.certificate, intermediate.key)),
                try istioLeaf(issuer: (other.root, other.rootKey)),
                intermediate.certificate.pem,
                rootPEM,
                other.root.pem,
                intermediate.certificate.pem + rootPEM,
            ]
            return Fixture(
                start: ca.now, leaves: leaves, intermediateDER: intermediate.certificate.der,
                bundleDER: ca.bundle.der, otherBundleDER: other.bundle.der, csrKey: csrKey, otherKey: otherKey,
                istioElements: elements, rootPEM: rootPEM, root: ca.root)
        } catch {
            fatalError("fuzz fixture: \(error)")
        }
    }()

    /// A leaf as istiod signs it: for `key` (our CSR's), `id` as its one URI SAN.
    static func makeIstioLeaf(
        id: String, key: PrivateKey, validity: (Timestamp, Timestamp),
        issuer: (certificate: Certificate, key: PrivateKey)
    ) throws -> String {
        let builder = CertificateBuilder(
            subject: DistinguishedName(organization: "istiod"), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: validity.0, notAfter: validity.1,
            basicConstraints: .notCA, keyUsage: [.digitalSignature, .keyEncipherment],
            extendedKeyUsage: [.serverAuth, .clientAuth], uriSANs: [id])
        return try builder.sign(issuer: issuer.certificate, issuerKey: issuer.key).pem
    }

    /// `MSG_NOSIGNAL` (Linux), which the Glibc module does not import: a write to a socket whose peer is gone fails
    /// with EPIPE instead of killing the process.
    static let noSignal: Int32 = 0x4000

    /// The write end of a pipe nobody reads: always writable, so registered on a loop it makes one iteration of
    /// `run(until:timeout:)` poll without waiting.
    static let alwaysReady: Int32 = {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { fatalError("pipe: \(errno)") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return fds[1]
    }()

    static func makeLoop() -> EventLoop {
        do {
            let loop = try EventLoop()
            try loop.register(fd: alwaysReady, events: .writable) { _ in }
            return loop
        } catch {
            fatalError("event loop: \(error)")
        }
    }

    static func run(_ bytes: UnsafeRawBufferPointer) {
        var input = FuzzInput(bytes)
        if input.byte() & 1 == 0 {
            WorkloadHarness(fixture: fixture, &input).run(&input)
        } else {
            IstioHarness(fixture: fixture).run(&input)
        }
    }

    /// How many copies of a certificate: up to 23 mostly (past the 16 of a chain), 20 to 640 one time in eight
    /// (past the 512 of a bundle once doubled). Hundreds of parses cost milliseconds: rare keeps the target fast.
    static func many(_ selector: UInt8) -> Int {
        selector < 0xE0 ? Int(selector) % 24 : Int(selector - 0xDF) * 20
    }

    static func dictionary(_ words: [String]) -> [[UInt8]] { words.map { Array($0.utf8) } }
    static let spiffeIDs = dictionary([
        workloadID, "spiffe://example.org/ns/other/sa/x", "spiffe://other.org/ns/default/sa/web", "",
        "spiffe://example.org", "not a uri", "SPIFFE://example.org/ns/default/sa/web",
    ])
    static let trustDomains = dictionary([
        "spiffe://example.org", "example.org", "spiffe://other.org", "other.org", "", "spiffe://Example.ORG",
        "spiffe://example.org/", "spiffe://other.org/path",
    ])
    static let tokens = dictionary([
        "", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.c2ln", "a.b.c", "not-a-jwt",
    ])
    static let jwks = dictionary([
        #"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","kid":"k","use":"jwt-svid"}]}"#, "{}", "", "[",
    ])
    /// Monotonic steps run every timer that falls due (a retry every ≤ 30 s): kept short so a step costs at most
    /// a few hundred timer runs. Longer spans are wall-clock jumps (`wallClockJumps`), which run no timer.
    static let clockSteps: [Double] = [0, 0.05, 0.1, 1, 10, 30, 300, 3600]
    static let wallClockJumps: [Int64] = [86_400, 365 * 86_400, 10_000_000_000, -86_400, -3600]

    // MARK: - Workload API

    /// The far end of one socket pair the issuer dialed: a gRPC server answering from the input.
    final class FakeUpstream {
        let fd: Int32
        var isOpen = true
        let server: GRPCServerConnection
        var pendingOutput: [UInt8] = []
        var streams: [WorkloadStreamKind: GRPCServerCall] = [:]
        var unary: [GRPCServerCall] = []

        enum WorkloadStreamKind: CaseIterable { case svid, bundles, jwtBundles }

        /// One read buffer for every upstream (inputs run one at a time on one thread).
        nonisolated(unsafe) static var buffer = [UInt8](repeating: 0, count: 65_536)

        init(fd: Int32) {
            self.fd = fd
            let router = GRPCRouter()
            server = GRPCServerConnection(router: router)
            let paths: [(SpiffeWorkloadAPIMethod, WorkloadStreamKind)] = [
                (.fetchX509SVID, .svid), (.fetchX509Bundles, .bundles), (.fetchJWTBundles, .jwtBundles),
            ]
            for (method, kind) in paths {
                router.register(method.path) { [weak self] call in self?.streams[kind] = call }
            }
            for method in [SpiffeWorkloadAPIMethod.fetchJWTSVID, .validateJWTSVID] {
                router.register(method.path) { [weak self] call in self?.unary.append(call) }
            }
        }

        /// Moves bytes between the socket and the session; true if any moved.
        func pump() -> Bool {
            guard isOpen else { return false }
            var moved = false
            while isOpen {
                let count = FakeUpstream.buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    moved = true
                    do {
                        try FakeUpstream.buffer.withUnsafeBytes {
                            try server.session.receive(UnsafeRawBufferPointer(rebasing: $0[0..<count]))
                        }
                    } catch {
                        closeSocket()
                        return true
                    }
                } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                    closeSocket()
                    return true
                } else {
                    break
                }
            }
            pendingOutput += server.session.takeOutput()
            while isOpen, !pendingOutput.isEmpty {
                let written = pendingOutput.withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress, $0.count, IssuerResponsesTarget.noSignal)
                }
                if written > 0 {
                    moved = true
                    pendingOutput.removeFirst(written)
                } else {
                    break
                }
            }
            return moved
        }

        func closeSocket() {
            guard isOpen else { return }
            isOpen = false
            server.connectionLost()
            Glibc.close(fd)
        }
    }

    final class WorkloadHarness {
        let fixture: Fixture
        let loop: EventLoop
        let scheduler: FakeScheduler
        let loopScheduler: EventLoopScheduler
        let wanted: SPIFFEID?
        var issuer: WorkloadAPIIssuer?
        var upstreams: [FakeUpstream] = []
        var dialMode: UInt8 = 0
        var issuerSockets: [Int32] = []
        var stopped = false
        var delivered: IdentityUpdate?
        var expiryTimer: (any ScheduledTimer)?
        var relaysAsked = 0
        var relaysAnswered = 0

        init(fixture: Fixture, _ input: inout FuzzInput) {
            self.fixture = fixture
            loop = IssuerResponsesTarget.makeLoop()
            scheduler = FakeScheduler(clock: FakeClock(fixture.start))
            loopScheduler = EventLoopScheduler(loop: loop)
            wanted = input.bool() ? nil : try? SPIFFEID(parsing: IssuerResponsesTarget.workloadID)
            let unit = Double(input.byte()) / 256
            do {
                issuer = WorkloadAPIIssuer(
                    socket: try UnixSocketAddress("unix:///fuzz/agent.sock"), spiffeID: wanted, loop: loop,
                    scheduler: scheduler, clock: scheduler.clock, randomUnit: { unit },
                    dial: { [weak self] (_) throws(SystemError) -> UnixConnectStart in
                        guard let self else { throw SystemError("connect", errno: ECONNREFUSED) }
                        return try self.dial()
                    })
            } catch {
                fatalError("issuer: \(error)")
            }
        }

        func dial() throws(SystemError) -> UnixConnectStart {
            switch dialMode % 6 {
            case 3: throw SystemError("connect", errno: ECONNREFUSED, detail: "/fuzz/agent.sock")
            case 4: throw SystemError("connect", errno: ENOENT, detail: "/fuzz/agent.sock")
            case 5: throw SystemError("connect", errno: EAGAIN, detail: "/fuzz/agent.sock (listen backlog full)")
            default: break
            }
            var fds: [Int32] = [0, 0]
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw SystemError("socketpair", errno: errno) }
            upstreams.append(FakeUpstream(fd: fds[1]))
            issuerSockets.append(fds[0])
            return dialMode % 6 == 2 ? .inProgress(fds[0]) : .connected(fds[0])
        }

        var upstream: FakeUpstream? { upstreams.last(where: \.isOpen) }

        func run(_ input: inout FuzzInput) {
            guard let issuer else { return }
            issuer.onJWTBundles = { [weak self] _ in invariant(self?.stopped != true, "JWT bundles after stop()") }
            issuer.start(
                onUpdate: { [weak self] update in self?.deliver(update) },
                onError: { [weak self] error in
                    invariant(self?.stopped != true, "an error reported after stop(): \(error)")
                    if let delay = error.retryAfter { invariant(delay.isFinite && delay >= 0, "retry after \(delay)") }
                })
            scheduler.runDue()
            pump()
            var count = 0
            while !input.isAtEnd, count < IssuerResponsesTarget.maxOps {
                count += 1
                apply(op: input.byte(), &input)
                pump()
                invariant(
                    issuer.current?.svid.chainDER == delivered?.svid.chainDER,
                    "the issuer's current identity is not the last one it delivered")
            }
            finish()
        }

        /// What the agent does with an update, plus the checks: valid now, the wanted ID, chains to its bundle.
        func deliver(_ update: IdentityUpdate) {
            invariant(!stopped, "an update delivered after stop()")
            let now = scheduler.clock.now()
            let svid = update.svid
            invariant(svid.notBefore <= now && now <= svid.notAfter, "delivered an SVID not valid at \(now)")
            if let wanted { invariant(svid.spiffeID == wanted, "delivered \(svid.spiffeID), wanted \(wanted)") }
            guard let own = update.bundles.first(where: { $0.trustDomain == svid.spiffeID.trustDomain }) else {
                fatalError("delivered an SVID without its own trust domain's bundle")
            }
            do { try svid.verify(against: own, at: now) } catch {
                fatalError("delivered an SVID that does not chain to its bundle: \(error)")
            }
            delivered = update
            // The agent withdraws the names when the SVID expires: a loop timer from the certificate's notAfter.
            expiryTimer?.cancel()
            expiryTimer = loopScheduler.schedule(after: Double(svid.notAfter - now)) {}
        }

        /// Runs the issuer's side (one loop iteration at a time) and the fake upstreams until nothing moves.
        func pump() {
            var idle = 0
            for _ in 0..<64 {
                var turns = 0
                _ = loop.run(
                    until: {
                        turns += 1; return turns > 1
                    }, timeout: 1)
                scheduler.runDue()
                var moved = false
                for upstream in upstreams where upstream.pump() { moved = true }
                idle = moved ? 0 : idle + 1
                if idle >= 2 { return }
            }
        }

        func apply(op: UInt8, _ input: inout FuzzInput) {
            guard let issuer else { return }
            switch op % 14 {
            case 0: send(svidResponse(&input), on: .svid)
            case 1: send(bundlesResponse(&input), on: .bundles)
            case 2:
                var writer = ProtoWriter()
                for _ in 0..<input.below(3) {
                    writer.mapEntry(
                        1, key: input.word(IssuerResponsesTarget.trustDomains),
                        value: input.word(IssuerResponsesTarget.jwks))
                }
                send(writer.bytes, on: .jwtBundles)
            case 3:
                let kind = input.pick(FakeUpstream.WorkloadStreamKind.allCases)
                let code = GRPCStatus.Code(rawValue: Int(input.byte() % 17)) ?? .unknown
                upstream?.streams[kind]?.finish(GRPCStatus(code, "fuzz"))
            case 4:
                guard let upstream else { return }
                switch input.byte() % 5 {
                case 0: upstream.closeSocket()
                case 1: _ = shutdown(upstream.fd, Int32(SHUT_WR))
                case 2: upstream.server.beginDrain()
                case 3:
                    if let call = upstream.streams[input.pick(FakeUpstream.WorkloadStreamKind.allCases)] {
                        try? upstream.server.session.resetStream(streamID: call.streamID, errorCode: .internalError)
                    }
                default:
                    let garbage = input.shortBytes()
                    _ = garbage.withUnsafeBytes {
                        Glibc.send(upstream.fd, $0.baseAddress, $0.count, IssuerResponsesTarget.noSignal)
                    }
                }
            case 5:
                if input.bool() {
                    scheduler.clock.advance(by: input.pick(IssuerResponsesTarget.wallClockJumps))
                } else {
                    scheduler.advance(by: input.pick(IssuerResponsesTarget.clockSteps))
                }
            case 6: issuer.rotateNow()
            case 7: dialMode = input.byte()
            case 8:
                var writer = ProtoWriter()
                writer.field(1, input.word(IssuerResponsesTarget.spiffeIDs))
                relay(.fetchJWTSVID, writer.bytes)
            case 9:
                var writer = ProtoWriter()
                writer.field(1, "db")
                writer.field(2, input.word(IssuerResponsesTarget.tokens))
                relay(.validateJWTSVID, writer.bytes)
            case 10: answerRelay(&input)
            case 11: scheduler.runDue()
            case 12:
                stopped = true
                issuer.stop()
            default:
                send(input.lengthPrefixed(), on: input.pick(FakeUpstream.WorkloadStreamKind.allCases))
            }
        }

        func send(_ message: [UInt8], on kind: FakeUpstream.WorkloadStreamKind) {
            upstream?.streams[kind]?.send(message)
        }

        func relay(_ method: SpiffeWorkloadAPIMethod, _ request: [UInt8]) {
            guard let issuer else { return }
            relaysAsked += 1
            var answered = false
            issuer.relay(method, request: request) { [weak self] result in
                invariant(!answered, "a relayed call answered twice")
                answered = true
                self?.relaysAnswered += 1
                // As UpstreamJWTRelay does with the answer.
                guard case .success(let bytes) = result else { return }
                if method == .fetchJWTSVID {
                    _ = try? JWTSVIDResponse(wireBytes: bytes)
                } else if let response = try? ValidateJWTSVIDResponse(wireBytes: bytes) {
                    _ = response.claims.count
                }
            }
        }

        func answerRelay(_ input: inout FuzzInput) {
            guard let upstream, !upstream.unary.isEmpty else { return }
            let call = upstream.unary.removeFirst()
            let variant = input.byte() % 6
            let message: [UInt8]
            if call.path == SpiffeWorkloadAPIMethod.fetchJWTSVID.path {
                var writer = ProtoWriter()
                for _ in 0..<input.below(3) {
                    writer.message(1) { svid in
                        svid.field(1, input.word(IssuerResponsesTarget.spiffeIDs))
                        svid.field(2, input.word(IssuerResponsesTarget.tokens))
                    }
                }
                message = writer.bytes
            } else {
                var writer = ProtoWriter()
                writer.field(1, input.word(IssuerResponsesTarget.spiffeIDs))
                if input.bool() {
                    // Claims nested as deep as the input says (a Struct level costs three protobuf levels).
                    writer.field(2, ProtoWriter.nestedStruct(depth: input.uint16() % 20_000))
                } else {
                    writer.message(2) { claims in
                        for _ in 0..<input.below(4) {
                            claims.message(1) { entry in
                                entry.field(1, input.word(IssuerResponsesTarget.trustDomains))
                                entry.message(2) { value in
                                    switch input.byte() % 5 {
                                    case 0: value.varintField(1, 0)
                                    case 1: value.doubleField(2, Double(bitPattern: UInt64(input.uint32()) << 32))
                                    case 2: value.field(3, input.word(IssuerResponsesTarget.spiffeIDs))
                                    case 3: value.varintField(4, 1)
                                    default: value.message(6) { list in list.message(1) { $0.field(3, "aud") } }
                                    }
                                }
                            }
                        }
                    }
                }
                message = writer.bytes
            }
            switch variant {
            case 0, 1:
                call.send(message)
                call.finish(.ok)
            case 2: call.finish(GRPCStatus(.invalidArgument, "bad token"))
            case 3: call.finish(.ok)
            case 4:
                call.send(message)
                call.send(message)
                call.finish(.ok)
            default: try? upstream.server.session.resetStream(streamID: call.streamID, errorCode: .cancel)
            }
        }

        /// An X509SVIDResponse whose every field comes from the input (hand-encoded: strings may hold anything).
        func svidResponse(_ input: inout FuzzInput) -> [UInt8] {
            var writer = ProtoWriter()
            let leaves = fixture.leaves
            for _ in 0..<input.below(4) {
                writer.message(1) { svid in
                    let choice = input.below(leaves.count + 3)
                    let leaf = leaves[choice % leaves.count]
                    let chain: [UInt8]
                    switch choice {
                    case leaves.count:
                        // The valid leaf followed by more intermediates than a chain may hold (16), hundreds at times.
                        chain = repeated(
                            fixture.intermediateDER, count: IssuerResponsesTarget.many(input.byte()),
                            after: leaves[0].chainDER)
                    case leaves.count + 1: chain = input.shortBytes()
                    case leaves.count + 2: chain = []
                    default: chain = leaf.chainDER
                    }
                    svid.field(1, input.word(IssuerResponsesTarget.spiffeIDs))
                    svid.field(2, chain)
                    switch input.byte() % 4 {
                    case 0, 1: svid.field(3, leaf.keyDER)
                    case 2: svid.field(3, leaves[(choice + 1) % leaves.count].keyDER)
                    default: svid.field(3, input.shortBytes())
                    }
                    svid.field(4, bundle(&input))
                    if input.bool() { svid.field(5, input.word(IssuerResponsesTarget.spiffeIDs)) }
                }
            }
            if input.bool() { writer.field(2, input.shortBytes()) }
            for _ in 0..<input.below(3) {
                writer.mapEntry(3, key: input.word(IssuerResponsesTarget.trustDomains), value: bundle(&input))
            }
            return writer.bytes
        }

        func repeated(_ element: [UInt8], count: Int, after prefix: [UInt8] = []) -> [UInt8] {
            var bytes = prefix
            bytes.reserveCapacity(prefix.count + element.count * count)
            for _ in 0..<count { bytes += element }
            return bytes
        }

        func bundle(_ input: inout FuzzInput) -> [UInt8] {
            switch input.byte() % 6 {
            case 0, 1: return fixture.bundleDER
            case 2: return fixture.otherBundleDER
            case 3: return []
            case 4: return repeated(fixture.bundleDER, count: IssuerResponsesTarget.many(input.byte()) * 2)
            default: return input.shortBytes()
            }
        }

        /// An X509BundlesResponse: a few trust domains from the dictionary, or hundreds of made-up ones.
        func bundlesResponse(_ input: inout FuzzInput) -> [UInt8] {
            var writer = ProtoWriter()
            if input.bool() { writer.field(1, input.shortBytes()) }
            let many = input.byte()
            if many > 0xF0 {
                for index in 0..<(Int(many - 0xF0) * 40) {
                    writer.mapEntry(2, key: Array("spiffe://td\(index).example".utf8), value: fixture.otherBundleDER)
                }
            }
            for _ in 0..<input.below(4) {
                writer.mapEntry(2, key: input.word(IssuerResponsesTarget.trustDomains), value: bundle(&input))
            }
            return writer.bytes
        }

        /// Stop, let every deferred close run, and check that nothing more happens and nothing is left open.
        func finish() {
            if !stopped {
                stopped = true
                issuer?.stop()
            }
            pump()
            scheduler.advance(by: 3600)
            pump()
            invariant(relaysAnswered == relaysAsked, "\(relaysAsked) relayed calls, \(relaysAnswered) answered")
            for upstream in upstreams { upstream.closeSocket() }
            expiryTimer?.cancel()
            issuer = nil
            // Only where this target owns the process (the fuzzer): replayed among other tests running in parallel,
            // a closed descriptor's number is soon another test's, and the check would blame the issuer for it.
            guard IssuerResponsesTarget.checksDescriptors else { return }
            for fd in issuerSockets {
                invariant(fcntl(fd, F_GETFD) == -1, "the issuer left socket \(fd) open after stop()")
            }
        }
    }

    // MARK: - istiod

    final class IstioHarness {
        let fixture: Fixture
        let loop: EventLoop
        let loopScheduler: EventLoopScheduler
        var machine: IstioCAClientStateMachine
        var now: Timestamp
        var timer: (any ScheduledTimer)?
        var timerDelay: Double?
        var keyRound = 0
        /// The key the machine took for the round under way: what a delivered certificate must certify. Usually the
        /// CSR key of the fixture, whose leaves the answers hold; at times the other key (found by fuzzing: the
        /// check assumed the CSR key, and a leaf for the other key, correctly delivered after the machine was given
        /// that key, failed it).
        var roundKey: PrivateKey?
        var inFlight: (round: Int, try: Int) = (0, 0)
        var delivered: IdentityUpdate?
        let expectedID: SPIFFEID

        init(fixture: Fixture) {
            self.fixture = fixture
            loop = IssuerResponsesTarget.makeLoop()
            loopScheduler = EventLoopScheduler(loop: loop)
            now = fixture.start
            do { expectedID = try SPIFFEID(parsing: IssuerResponsesTarget.istioID) } catch { fatalError("\(error)") }
            machine = IstioCAClientStateMachine(
                spiffeID: expectedID, algorithm: .ecdsaP256, upstream: "istiod.istio-system.svc:15012")
        }

        func run(_ input: inout FuzzInput) {
            perform(machine.start())
            var count = 0
            while !input.isAtEnd, count < IssuerResponsesTarget.maxOps {
                count += 1
                apply(op: input.byte(), &input)
            }
            perform(machine.stop())
            timer?.cancel()
        }

        /// Performs the machine's actions as `IstioCAIssuer` does (timers on the event loop), checking each.
        func perform(_ actions: [IstioCAClientStateMachine.Action]) {
            for action in actions {
                switch action {
                case .generateKey(let round, _, let id):
                    invariant(id == expectedID, "a CSR for \(id)")
                    keyRound = round
                case .sendCSR(let round, let attempt, _):
                    inFlight = (round, attempt)
                case .abandonCall:
                    break
                case .scheduleTimer(let delay):
                    invariant(delay.isFinite && delay >= 0, "timer delay \(delay)")
                    timer?.cancel()
                    timer = loopScheduler.schedule(after: delay) {}
                    timerDelay = delay
                case .cancelTimer:
                    timer?.cancel()
                    timer = nil
                    timerDelay = nil
                case .deliver(let update):
                    invariant(machine.state != .stopped, "an update delivered after stop()")
                    let svid = update.svid
                    invariant(svid.spiffeID == expectedID, "delivered \(svid.spiffeID)")
                    guard let roundKey else { fatalError("delivered before any key was taken") }
                    invariant(svid.leaf.publicKeyMatches(roundKey), "delivered a certificate for another key")
                    invariant(svid.notBefore <= now && now <= svid.notAfter, "delivered a certificate not valid now")
                    guard let bundle = update.bundles.first else { fatalError("delivered without a bundle") }
                    do { try svid.verify(against: bundle, at: now) } catch {
                        fatalError("delivered a chain that does not verify: \(error)")
                    }
                    delivered = update
                case .report(let error):
                    if let delay = error.retryAfter { invariant(delay.isFinite && delay >= 0, "retry after \(delay)") }
                }
            }
            invariant(
                machine.lastDelivered?.svid.chainDER == delivered?.svid.chainDER,
                "the machine's current identity is not the last one it delivered")
        }

        func apply(op: UInt8, _ input: inout FuzzInput) {
            let unit = Double(input.byte()) / 256
            switch op % 10 {
            case 0:
                let key = input.byte() < 0xF0 ? fixture.csrKey : fixture.otherKey
                let actions = machine.keyReady(round: keyRound, key: key, csrPEM: "-----BEGIN CERTIFICATE REQUEST-----")
                // Taken only if the machine was waiting for this round's key (it then sends the CSR).
                if actions.contains(where: { if case .sendCSR = $0 { true } else { false } }) { roundKey = key }
                perform(actions)
            case 1: perform(machine.keyFailed(round: keyRound, reason: "fuzz", now: now, randomUnit: unit))
            case 2: respond(round: inFlight.round, try: inFlight.try, unit: unit, &input)
            case 3:
                let code = GRPCStatus.Code(rawValue: Int(input.byte() % 17)) ?? .unknown
                perform(
                    machine.callFailed(
                        round: inFlight.round, try: inFlight.try, status: GRPCStatus(code, "fuzz"), now: now,
                        randomUnit: unit))
            case 4:
                perform(
                    machine.cannotSend(
                        round: inFlight.round, try: inFlight.try,
                        error: IssuerError(kind: .issuanceFailed, message: "no token"), now: now, randomUnit: unit))
            case 5:
                guard let delay = timerDelay else { return }
                now = now + Int64(min(delay, 1e12).rounded(.up))
                timer = nil
                timerDelay = nil
                perform(machine.timerFired())
            case 6:
                now =
                    input.bool()
                    ? now + input.pick(IssuerResponsesTarget.wallClockJumps)
                    : now + Int64(input.pick(IssuerResponsesTarget.clockSteps))
            case 7: perform(machine.rotateNow())
            case 8: perform(machine.stop())
            default:
                // A late answer for another round or try: ignored.
                respond(round: inFlight.round + Int(input.byte() % 2), try: inFlight.try + 1, unit: unit, &input)
            }
        }

        /// An IstioCertificateResponse from the input, decoded as the shell decodes it.
        func respond(round: Int, try attempt: Int, unit: Double, _ input: inout FuzzInput) {
            var writer = ProtoWriter()
            for _ in 0..<input.below(6) { writer.field(1, element(&input)) }
            let fileRoots = input.bool() ? [fixture.root] : []
            do throws(WireError) {
                let response = try IstioCertificateResponse(
                    wireBytes: writer.bytes, limit: IstioCAConfiguration.maxResponseBytes)
                perform(
                    machine.responded(
                        round: round, try: attempt, chainPEMs: response.certChain, fileRoots: fileRoots, now: now,
                        randomUnit: unit))
            } catch {
                perform(
                    machine.callFailed(
                        round: round, try: attempt, status: GRPCStatus(.internal, "malformed: \(error)"), now: now,
                        randomUnit: unit))
            }
        }

        func element(_ input: inout FuzzInput) -> [UInt8] {
            let elements = fixture.istioElements
            let choice = input.below(elements.count + 4)
            switch choice {
            case elements.count:
                return Array(String(repeating: fixture.rootPEM, count: IssuerResponsesTarget.many(input.byte())).utf8)
            case elements.count + 1: return input.shortBytes()
            case elements.count + 2: return Array((elements[0] + "\0" + fixture.rootPEM).utf8)
            case elements.count + 3: return Array((elements[0] + elements[8] + fixture.rootPEM).utf8)
            default: return Array(elements[choice].utf8)
            }
        }
    }
}
