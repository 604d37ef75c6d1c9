import GRPC
import Issuance
import Logging
import SPIFFE
import Wire

/// The `SpiffeWorkloadAPI` served to the applications beside Envoy, on the SDS socket (same listener, peer checks
/// and limits): the X.509-SVID and bundles the agent holds, streamed with the full state in every message.
///
/// A thin shell, like `SecretDiscoveryService`: the per-stream protocol decisions are `LatestStateStream`'s; this
/// class encodes states, moves messages and enforces the spec's request rules (the `workload.spiffe.io: true`
/// header, one request message per call). It runs on the event loop thread.
public final class WorkloadAPIService {
    /// What a server stream carries.
    enum StreamKind: Sendable, Hashable {
        case x509SVID
        case x509Bundles
        case jwtBundles
    }

    /// The encoded current message of one stream kind, named by a generation that changes with its bytes.
    struct Published {
        var generation: UInt64
        var bytes: [UInt8]
    }

    final class StreamCall {
        let call: GRPCServerCall
        let kind: StreamKind
        var machine = LatestStateStream()
        var receivedRequest = false
        init(call: GRPCServerCall, kind: StreamKind) {
            self.call = call
            self.kind = kind
        }
    }

    private let logger: Logger
    private var published: [StreamKind: Published] = [:]
    private var generationCounter: UInt64 = 0
    private var streams: [ObjectIdentifier: StreamCall] = [:]
    /// The JWT methods: served by `jwt` when set, else answered with this status.
    public var jwt: (any JWTProvider)?
    /// Called after a reply that arrived later than its request (a relayed call): the server must flush it.
    public var flushReplies: (() -> Void)?
    /// Why JWT calls fail when `jwt` is nil (e.g. the issuer has no JWT source).
    public var jwtUnavailable = GRPCStatus(.unavailable, "this sds-agent serves no JWT-SVIDs")

    /// Refused and failed calls, logged at most once per kind and interval (a client without the security header
    /// calling in a loop costs one line a minute).
    private var warnings: WarningLimiter

    public init(logger: Logger, monotonicNow: @escaping () -> Double = { 0 }) {
        self.logger = logger
        self.warnings = WarningLimiter(logger: logger, now: monotonicNow)
    }

    /// Open server streams (for logs and tests).
    public var openStreamCount: Int { streams.count }

    public func register(on router: GRPCRouter) {
        router.register(SpiffeWorkloadAPIMethod.fetchX509SVID.path) { [weak self] call in
            if let status = self?.x509Unavailable, Self.hasSecurityHeader(call) {
                call.finish(status)
                return
            }
            self?.open(call, kind: .x509SVID, request: X509SVIDRequest.self)
        }
        router.register(SpiffeWorkloadAPIMethod.fetchX509Bundles.path) { [weak self] call in
            self?.open(call, kind: .x509Bundles, request: X509BundlesRequest.self)
        }
        router.register(SpiffeWorkloadAPIMethod.fetchJWTBundles.path) { [weak self] call in
            guard let self else { return }
            guard !Self.hasSecurityHeader(call) || self.jwt != nil else {
                self.refuse(call, self.jwtUnavailable)
                return
            }
            self.open(call, kind: .jwtBundles, request: JWTBundlesRequest.self)
        }
        router.register(SpiffeWorkloadAPIMethod.fetchJWTSVID.path) { [weak self] call in
            self?.unary(call, request: JWTSVIDRequest.self) { [weak self] request, reply in
                guard let self else { return reply(.failure(GRPCStatus(.unavailable, "shutting down"))) }
                guard let jwt = self.jwt else { return reply(.failure(self.jwtUnavailable)) }
                jwt.fetchJWTSVID(request) { reply($0.map { $0.wireBytes() }) }
            }
        }
        router.register(SpiffeWorkloadAPIMethod.validateJWTSVID.path) { [weak self] call in
            self?.unary(call, request: ValidateJWTSVIDRequest.self) { [weak self] request, reply in
                guard let self else { return reply(.failure(GRPCStatus(.unavailable, "shutting down"))) }
                guard let jwt = self.jwt else { return reply(.failure(self.jwtUnavailable)) }
                jwt.validateJWTSVID(request) { reply($0.map { $0.wireBytes() }) }
            }
        }
    }

    // MARK: Publishing

    /// The issuer's new identity: the SVID stream and the bundles stream get it (if their bytes changed).
    public func publish(_ update: IdentityUpdate) throws {
        let svid = update.svid
        let ownDomain = svid.spiffeID.trustDomain
        var bundles: [String: [UInt8]] = [:]
        for bundle in update.bundles { bundles[bundle.trustDomain.idString] = bundle.der }
        let own = update.bundles.first { $0.trustDomain == ownDomain }?.der ?? []
        let svidResponse = X509SVIDResponse(
            svids: [
                X509SVIDMessage(
                    spiffeID: svid.spiffeID.uri, x509SVID: svid.chainDER, x509SVIDKey: try svid.privateKey.pkcs8DER(),
                    bundle: own)
            ],
            federatedBundles: bundles.filter { $0.key != ownDomain.idString })
        x509Unavailable = nil
        set(.x509SVID, svidResponse.wireBytes())
        set(.x509Bundles, X509BundlesResponse(bundles: bundles).wireBytes())
    }

    /// The JWT bundles changed (JWKS per trust domain ID).
    public func publishJWTBundles(_ bundles: [String: [UInt8]]) {
        set(.jwtBundles, JWTBundlesResponse(bundles: bundles).wireBytes())
    }

    /// The SVID expired: new streams wait; open ones keep what they have (an expired SVID is not re-sent).
    public func withdrawSVID() {
        published[.x509SVID] = nil
    }

    /// Why there is no X509-SVID to serve at all (a certificate without a SPIFFE ID): FetchX509SVID calls end with
    /// this status, open ones now and new ones at once, until an SVID is published again (nil).
    public var x509Unavailable: GRPCStatus? {
        didSet {
            guard let status = x509Unavailable else { return }
            published[.x509SVID] = nil
            for (key, stream) in streams where stream.kind == .x509SVID {
                streams.removeValue(forKey: key)
                stream.call.finish(status)
            }
        }
    }

    private func set(_ kind: StreamKind, _ bytes: [UInt8]) {
        guard published[kind]?.bytes != bytes else { return }
        generationCounter += 1
        published[kind] = Published(generation: generationCounter, bytes: bytes)
        for stream in streams.values where stream.kind == kind {
            perform(stream.machine.stateChanged(to: generationCounter), on: stream)
        }
    }

    /// Ends every call with `status` (graceful drain).
    public func finishAll(_ status: GRPCStatus) {
        let open = streams.values
        streams.removeAll()
        for stream in open { stream.call.finish(status) }
    }

    // MARK: Calls

    /// The spec: a call without `workload.spiffe.io: true` is refused, so a process tricked into relaying requests
    /// (SSRF) cannot reach the API.
    static func hasSecurityHeader(_ call: GRPCServerCall) -> Bool {
        let header = SpiffeWorkloadAPIMethod.securityHeader
        return call.metadata.contains { $0.0 == header.name && $0.1 == header.value }
    }

    static let missingSecurityHeader = GRPCStatus(
        .invalidArgument, "security header missing from request (workload.spiffe.io: true)")

    private func refuse(_ call: GRPCServerCall, _ status: GRPCStatus) {
        warnings.warn(
            kind: "refused \(call.path) \(status.code)", "workload API call refused",
            metadata: ["path": "\(call.path)", "status": "\(LogSummary.text("\(status)"))"])
        call.finish(status)
    }

    private func open<Request: WireMessage>(_ call: GRPCServerCall, kind: StreamKind, request: Request.Type) {
        guard Self.hasSecurityHeader(call) else { return refuse(call, Self.missingSecurityHeader) }
        let key = ObjectIdentifier(call)
        let stream = StreamCall(call: call, kind: kind)
        streams[key] = stream
        logger.debug("workload API stream opened", metadata: ["path": "\(call.path)", "peer": "\(call.peer)"])
        call.onMessage = { [weak self, weak stream] bytes in
            guard let self, let stream else { return }
            guard !stream.receivedRequest else {
                return self.fail(stream, GRPCStatus(.invalidArgument, "a server-streaming call takes one request"))
            }
            stream.receivedRequest = true
            do { _ = try Request(wireBytes: bytes) } catch {
                self.fail(stream, GRPCStatus(.invalidArgument, "malformed \(Request.self): \(error)"))
            }
        }
        call.onCancel = { [weak self] in
            self?.streams.removeValue(forKey: key)
        }
        call.onWritable = { [weak self, weak stream] in
            guard let self, let stream else { return }
            self.perform(stream.machine.transportReady(current: self.published[stream.kind]?.generation), on: stream)
        }
        perform(stream.machine.stateChanged(to: published[kind]?.generation), on: stream)
    }

    private func perform(_ action: LatestStateStream.Action, on stream: StreamCall) {
        guard case .send(let generation) = action, let state = published[stream.kind],
            state.generation == generation
        else { return }
        switch stream.call.send(state.bytes) {
        case .queued:
            stream.machine.responseAwaitsTransport(generation: generation)
            logger.debug(
                "workload API push", metadata: ["path": "\(stream.call.path)", "generation": "\(generation)"])
        case .wouldExceed:
            fail(stream, SecretDiscoveryService.responseTooLarge)
        case .closed:
            streams.removeValue(forKey: ObjectIdentifier(stream.call))
        }
    }

    private func fail(_ stream: StreamCall, _ status: GRPCStatus) {
        warnings.warn(
            kind: "failed \(stream.call.path) \(status.code)", "workload API call failed",
            metadata: ["path": "\(stream.call.path)", "status": "\(LogSummary.text("\(status)"))"])
        streams.removeValue(forKey: ObjectIdentifier(stream.call))
        stream.call.finish(status)
    }

    /// A unary call: one request message, then half-close; `answer` replies once (possibly later, on the loop).
    private func unary<Request: WireMessage>(
        _ call: GRPCServerCall, request: Request.Type,
        answer: @escaping (Request, @escaping (Result<[UInt8], GRPCStatus>) -> Void) -> Void
    ) {
        guard Self.hasSecurityHeader(call) else { return refuse(call, Self.missingSecurityHeader) }
        var request: Request?
        var failed = false
        call.onMessage = { [weak self, weak call] bytes in
            guard let self, let call else { return }
            guard request == nil, !failed else {
                failed = true
                return self.refuse(call, GRPCStatus(.invalidArgument, "a unary call takes one request"))
            }
            do { request = try Request(wireBytes: bytes) } catch {
                failed = true
                self.refuse(call, GRPCStatus(.invalidArgument, "malformed \(Request.self): \(error)"))
            }
        }
        call.onHalfClose = { [weak self, weak call] in
            guard let self, let call, !failed else { return }
            guard let request else {
                return self.refuse(call, GRPCStatus(.invalidArgument, "\(call.path) needs a request message"))
            }
            var answering = true
            answer(request) { [weak self, weak call] result in
                guard let self, let call, !call.isClosed else { return }
                switch result {
                case .success(let bytes):
                    call.send(bytes)
                    call.finish(.ok)
                case .failure(let status):
                    self.refuse(call, status)
                }
                if !answering { self.flushReplies?() }
            }
            answering = false
        }
    }
}

/// The JWT half of the Workload API: minted by the local CA's JWT authority, or relayed to an upstream Workload API.
/// Replies run on the event loop thread, at once or later.
public protocol JWTProvider: AnyObject {
    func fetchJWTSVID(_ request: JWTSVIDRequest, reply: @escaping (Result<JWTSVIDResponse, GRPCStatus>) -> Void)
    func validateJWTSVID(
        _ request: ValidateJWTSVIDRequest, reply: @escaping (Result<ValidateJWTSVIDResponse, GRPCStatus>) -> Void)
}
