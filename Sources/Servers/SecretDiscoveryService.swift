import GRPC
import H2
import Logging
import Wire
import XDS

/// The `envoy.service.secret.v3.SecretDiscoveryService` over the XDS state machines: one `SotWStream` per
/// StreamSecrets call, one `DeltaStream` per DeltaSecrets call, FetchSecrets held until answerable.
///
/// This class only moves messages between gRPC calls and the pure machines, and pushes cache changes to every open
/// stream; all protocol decisions are the machines'. It runs on the event loop thread.
///
/// Outbound is pull-style: after a response is queued the machine is told (`responseAwaitsTransport`) and holds
/// further changes in its own state; when the call reports the queue drained (`onWritable`) the machine builds one
/// response merging them (`transportReady`). A peer that stops reading therefore costs one response per stream.
public final class SecretDiscoveryService {
    public private(set) var cache: SecretCache
    private let logger: Logger
    /// Whether per-stream lines (push, ack) are logged: read once, as asking `logger.logLevel` on each of 10,000
    /// pushes copies its handler (the logger is a constant, so its level cannot change under the service).
    private let logsPerStream: Bool
    /// Open StreamSecrets and DeltaSecrets calls.
    private var streams: [ObjectIdentifier: any OpenStream] = [:]
    private var heldFetches: [ObjectIdentifier: (call: GRPCServerCall, request: DiscoveryRequest)] = [:]
    private var streamCounter: UInt64 = 0
    /// One encoding of each pushed secret, shared by the streams it goes to (see `SharedResponseBodies`).
    private var sharedBodies = SharedResponseBodies()
    /// The names each open call holds (its part of `subscriptions`).
    private var namesByCall: [ObjectIdentifier: [String]] = [:]
    /// Which connection each call holding names belongs to (for the per-connection on-demand budget).
    private var connectionByCall: [ObjectIdentifier: ObjectIdentifier] = [:]
    /// Says which names cost work on demand (a file read and watch, a JWT mint): those a connection may hold only
    /// `maxOnDemandNamesPerConnection` of.
    private let isOnDemand: (String) -> Bool
    /// Why 32: a pod's Envoy asks for a few `file-*` names and a JWT-SVID per upstream audience; 32 distinct ones
    /// on one connection is a client inventing names, and half of the agent's `file-*` room
    /// (`FileAccessPolicy.maxNames`) is left for everyone else. Counted from what the connection's calls hold now, so the
    /// budget frees as soon as they release names or end.
    public static let maxOnDemandNamesPerConnection = 32
    /// Called after a request subscribed names, with the peer that asked (for logs), so the owner can load
    /// secrets that are produced on demand (file-backed names).
    public var onSubscribe: ((_ names: [String], _ peer: String) -> Void)?
    /// Called with names that no stream or held fetch holds any more, so on-demand secrets can be released.
    public var onRelease: (([String]) -> Void)?
    /// Which names open streams and held fetches hold.
    public private(set) var subscriptions = SubscriptionCounts()

    /// Per-client variants: the names a client with this node is answered from other cache entries (see
    /// `SecretCache.viewing`). Asked once per stream, with the node of its first request.
    public var aliases: (Node) -> [String: String] = { _ in [:] }

    /// Pushes, NACKs and refused names are counted here (for `/metrics`).
    public let metrics: AgentMetrics
    /// Names never served that were already warned about; bounded so that a client inventing names cannot grow it.
    private(set) var warnedNeverServed: Set<String> = []
    /// Why 256: a pod's bootstraps name a handful of secrets; more distinct refused names is a client making them
    /// up, and it is counted (`refusals{reason="names"}`), not logged.
    static let maxWarnedNeverServed = 256

    /// The label a name is counted under in `/metrics` (see `SecretName.metricLabel`): a bounded set.
    private let metricLabel: (String) -> String
    /// NACKs and failed calls, logged at most once per kind and interval.
    private var warnings: WarningLimiter

    public init(
        classifier: @escaping SecretCache.NameClassifier, logger: Logger, metrics: AgentMetrics = AgentMetrics(),
        metricLabel: @escaping (String) -> String = { _ in "other" },
        monotonicNow: @escaping () -> Double = { 0 },
        isOnDemand: @escaping (String) -> Bool = { _ in false }
    ) {
        self.isOnDemand = isOnDemand
        self.warnings = WarningLimiter(logger: logger, now: monotonicNow)
        self.cache = SecretCache(classifier: classifier)
        self.logger = logger
        self.logsPerStream = logger.logLevel <= .debug
        self.metrics = metrics
        self.metricLabel = metricLabel
    }

    public var openStreamCount: Int { streams.count }

    /// Open calls by API, for `/metrics` (`fetch`: FetchSecrets calls held until their names are issued).
    public var openCallCounts: (sotw: Int, delta: Int, fetch: Int) {
        let sotw = streams.values.count { $0.mode == SotWStream.mode }
        return (sotw, streams.count - sotw, heldFetches.count)
    }

    /// A requested name this agent will never serve is held in silence by SotW (and Envoy waits forever), so it is
    /// warned once per name, with the node that asked: a typo in a bootstrap shows in the log at once.
    /// One line per request at most (the new names summarised), and those lines rate-limited: a request naming
    /// thousands of other workloads' IDs costs a line, not thousands.
    private func noteNeverServed(_ names: [String], node: String) {
        var fresh: [String] = []
        for name in names where cache.availability(of: name) == .neverServed {
            metrics.countRefusal(.names)
            guard warnedNeverServed.count < Self.maxWarnedNeverServed, warnedNeverServed.insert(name).inserted
            else { continue }
            fresh.append(name)
        }
        guard !fresh.isEmpty else { return }
        warnings.warn(
            kind: "never served",
            "requested names will never be served here (unknown names, another workload's identity, or refused)",
            metadata: ["names": "\(LogSummary.names(fresh))", "node": "\(LogSummary.text(node))"])
    }

    /// Counts a NACK against the names it concerns that this agent serves, each under its bounded label.
    private func countNack(_ names: some Sequence<String>) {
        for name in names where cache.availability(of: name) != .neverServed {
            metrics.nacks[metricLabel(name), default: 0] += 1
        }
    }

    /// Registers StreamSecrets, DeltaSecrets and FetchSecrets.
    public func register(on router: GRPCRouter) {
        router.register(SecretDiscoveryServiceMethod.streamSecrets.path) { [weak self] in
            self?.open($0, as: SotWStream.self)
        }
        router.register(SecretDiscoveryServiceMethod.deltaSecrets.path) { [weak self] in
            self?.open($0, as: DeltaStream.self)
        }
        router.register(SecretDiscoveryServiceMethod.fetchSecrets.path) { [weak self] in self?.openFetch($0) }
    }

    // MARK: Publishing

    /// The cache as a client with `aliases` sees it (the cache itself when it has none).
    fileprivate func cache(for aliases: [String: String]) -> SecretCache {
        aliases.isEmpty ? cache : cache.viewing(aliases)
    }

    /// Puts `secrets` into the cache (versions are content hashes, so unchanged content is no change) and pushes to
    /// every stream that holds a changed name. Returns the names whose content changed.
    /// `variants` are stored under their key, not their name: the variant a client with an alias to that key gets
    /// when it asks for the secret's name.
    @discardableResult
    public func publish(_ secrets: [Secret], variants: [String: Secret] = [:]) -> [String] {
        var changed: [String] = []
        var variantChanged = false
        for secret in secrets {
            let resource = AnyMessage(packing: secret)
            let version = ContentHash.hex(resource.value)
            if cache.set(name: secret.name, version: version, resource: resource) { changed.append(secret.name) }
        }
        for (key, secret) in variants.sorted(by: { $0.key < $1.key }) {
            let resource = AnyMessage(packing: secret)
            if cache.set(name: key, version: ContentHash.hex(resource.value), resource: resource) {
                variantChanged = true
            }
        }
        if !changed.isEmpty || variantChanged { pushCacheChange() }
        return changed
    }

    /// Removes names from the cache (Delta streams that held them are told `removed_resources`).
    public func unpublish(_ names: [String]) {
        var changed = false
        for name in names where cache.remove(name: name) { changed = true }
        if changed { pushCacheChange() }
    }

    /// Re-asks the classifier (e.g. a federated bundle appeared or vanished) and pushes what that changes.
    public func reclassify() {
        cache.invalidate()
        pushCacheChange()
    }

    private func pushCacheChange() {
        // Connection by connection, each written as soon as its streams have their responses: the first Envoys
        // read and apply theirs while the responses of the others are still being built (on two cores, the two
        // overlap instead of adding up).
        // One copy of the cache for the push (a copy per stream retained and released its tables), taken again if
        // the cache changed under the loop (a stream's end releasing an on-demand name can remove one): a stream is
        // never answered from a cache older than one it was already answered from. The copy remembers its last
        // lookup: every stream holding `default` asks for it in turn.
        var current = cache.rememberingLastLookup()
        var byConnection: [ConnectionKey: [any OpenStream]] = [:]
        for stream in streams.values {
            byConnection[ConnectionKey(stream.call.connectionID), default: []].append(stream)
        }
        for group in byConnection.values {
            for stream in group {
                if cache.revision != current.revision { current = cache.rememberingLastLookup() }
                // SotW (Envoy's streams) called on its concrete type: through the existential, the generic entry
                // built Optional<Response>'s metadata for every stream before reaching the specialized code.
                if let sotw = stream.asSotW {
                    sotw.cacheChanged(in: self, cache: current)
                } else {
                    stream.cacheChanged(in: self, cache: current)
                }
            }
            group.last?.call.flushConnection()
        }
        var answered: [ObjectIdentifier] = []
        for (key, held) in heldFetches where answerFetch(held.call, held.request) { answered.append(key) }
        for key in answered {
            heldFetches.removeValue(forKey: key)
            holdNames([], for: key)
        }
    }

    /// A connection as the push's grouping key, hashed with `H2StreamKey.finalizerHash` of its address instead of
    /// SipHash: the push groups every stream by it (~290 instructions a stream less). The addresses are the
    /// allocator's, not chosen by a client.
    private struct ConnectionKey: Hashable {
        let id: ObjectIdentifier?

        init(_ id: ObjectIdentifier?) { self.id = id }

        func hash(into hasher: inout Hasher) { hasher.combine(id) }

        func _rawHashValue(seed: Int) -> Int {
            H2StreamKey.finalizerHash(UInt64(UInt(bitPattern: id.map { Int(bitPattern: $0) } ?? 0)), seed: seed)
        }
    }

    /// Ends every call with `status` (graceful drain: Envoy reconnects elsewhere or to our successor).
    public func finishAll(_ status: GRPCStatus) {
        for stream in streams.values { stream.call.finish(status) }
        for held in heldFetches.values { held.call.finish(status) }
        streams.removeAll()
        heldFetches.removeAll()
        let held = Array(subscriptions.names)
        subscriptions = SubscriptionCounts()
        if !held.isEmpty { onRelease?(held) }
    }

    // MARK: StreamSecrets (SotW) and DeltaSecrets, one call type

    /// The next stream number (nonce prefix and log field), unique for this service's lifetime.
    private func nextStreamID() -> UInt64 {
        streamCounter += 1
        return streamCounter
    }

    /// One open StreamSecrets or DeltaSecrets call and its stream machine. It is the call's events object: a held
    /// stream costs this object and its machine, with no closure contexts (10,000 streams are held for hours
    /// between pushes).
    final class StreamCall<Machine: SecretStreamMachine>: OpenStream, GRPCServerCallEvents {
        let call: GRPCServerCall
        var machine: Machine
        let id: UInt64
        /// This client's variants (its node's), fixed by its first request.
        var aliases: [String: String] = [:]
        /// Weak: the service owns its streams, and may be gone while a connection still delivers an event. Every
        /// stream's weak reference shares the service's one side table.
        weak var service: SecretDiscoveryService?

        init(call: GRPCServerCall, id: UInt64, service: SecretDiscoveryService) {
            self.call = call
            self.id = id
            self.service = service
            self.machine = Machine(nonces: NonceSequence(prefix: "\(id)-"))
        }

        var mode: String { Machine.mode }

        var asSotW: StreamCall<SotWStream>? { self as? StreamCall<SotWStream> }

        @_specialize(where Machine == SotWStream)
        @_specialize(where Machine == DeltaStream)
        func cacheChanged(in service: SecretDiscoveryService, cache: SecretCache) {
            // The push's one copy of the cache, passed on as it is: `service.cache(for:)` made a copy (its tables
            // retained and released) for every stream.
            let response: Machine.Response?
            if aliases.isEmpty {
                response = machine.responseToCacheChange(cache)
            } else {
                response = machine.responseToCacheChange(cache.viewing(aliases))
            }
            if let response { service.send(response, on: self) }
        }

        // The call delivers each event from a strong local reference, so an event whose handling ends the call (and
        // drops the stream) half-way finds it alive.
        @_specialize(where Machine == SotWStream)
        @_specialize(where Machine == DeltaStream)
        func callReceived(_ message: [UInt8]) { service?.received(message, on: self) }

        func callHalfClosed() { service?.close(call, key: ObjectIdentifier(call), status: .ok) }

        @_specialize(where Machine == SotWStream)
        @_specialize(where Machine == DeltaStream)
        func callCancelled() { service?.cancelled(self) }

        /// Pull-style: the machine holds changes while its last response is in the transport and builds the
        /// merged one when the transport took it.
        @_specialize(where Machine == SotWStream)
        @_specialize(where Machine == DeltaStream)
        func callWritable() {
            // Most streams owe nothing when their response leaves (the cache view, and the service, are then not
            // even looked at): a push drains every stream it reached.
            let actions = machine.transportReady(service?.cache(for: aliases) ?? SecretDiscoveryService.noCache)
            guard !actions.isEmpty, let service else { return }
            service.perform(actions, on: self)
        }
    }

    /// What a stream whose service is gone evaluates against: nothing is served (nothing can be sent either).
    fileprivate static let noCache = SecretCache(classifier: { _ in .neverServed })

    /// Only one response per stream is ever in the transport, so the queue bound is only crossed by a single
    /// response larger than it.
    static let responseTooLarge = GRPCStatus(.resourceExhausted, "response larger than the stream's send queue")

    private func open<Machine: SecretStreamMachine>(_ call: GRPCServerCall, as _: Machine.Type) {
        let stream = StreamCall<Machine>(call: call, id: nextStreamID(), service: self)
        streams[ObjectIdentifier(call)] = stream
        call.events = stream
        logger.debug("stream opened", metadata: ["stream": "\(stream.id)", "mode": "\(Machine.mode)"])
    }

    /// One request on an open stream: decoded (a malformed one fails the call), then handed to the machine.
    @_specialize(where Machine == SotWStream)
    @_specialize(where Machine == DeltaStream)
    fileprivate func received<Machine: SecretStreamMachine>(_ bytes: [UInt8], on stream: StreamCall<Machine>) {
        if let echo = stream.machine.plainAcknowledgement(bytes) {
            if logsPerStream {
                let fields: [(String, StreamLogField)] = [
                    ("nonce", .text(echo.nonceText)), ("version", .text(echo.versionInfoText)),
                    ("names", .names(stream.machine.subscribedNames)),
                ]
                logger.debug("ack", metadata: Self.metadata(stream: stream.id, fields))
            }
            return
        }
        let key = ObjectIdentifier(stream.call)
        let request: Machine.Request
        do { request = try Machine.Request(wireBytes: bytes) } catch {
            fail(stream.call, key: key, GRPCStatus(.invalidArgument, "malformed \(Machine.Request.self): \(error)"))
            return
        }
        let before = stream.machine.subscribedNames
        if stream.machine.node == nil, let node = Machine.node(of: request) { stream.aliases = aliases(node) }
        let actions = stream.machine.receive(request, cache: cache(for: stream.aliases))
        let asked = stream.machine.namesAsked(by: request, before: before)
        // Logged before the push it may cause, so the log reads in causal order.
        if asked != nil {
            logger.info(
                "subscribed",
                metadata: [
                    "stream": "\(stream.id)", "mode": "\(Machine.mode)",
                    "names": "\(LogSummary.names(stream.machine.subscribedNames))",
                    "node": "\(LogSummary.text(stream.machine.node?.id ?? ""))",
                ])
        }
        if asked != nil, let status = onDemandBudgetExceeded(stream.machine.subscribedNames, on: stream.call) {
            return fail(stream.call, key: key, status)
        }
        perform(actions, on: stream)
        // A request that ended its own stream (a protocol error, a response too large) subscribes nothing.
        if let asked, streams[key] === stream {
            // After `perform`: loading on-demand secrets pushes through `cacheChanged`, which must come after the
            // response this request produced.
            onSubscribe?(asked, stream.call.peer)
            noteNeverServed(asked, node: stream.machine.node?.id ?? "")
            if streams[key] === stream {
                holdNames(stream.machine.subscribedNames, for: key, on: stream.call)
            }
        }
    }

    /// The call ended without our `finish` (RST_STREAM from the client, or the connection died).
    @_specialize(where Machine == SotWStream)
    @_specialize(where Machine == DeltaStream)
    fileprivate func cancelled<Machine: SecretStreamMachine>(_ stream: StreamCall<Machine>) {
        let key = ObjectIdentifier(stream.call)
        streams.removeValue(forKey: key)
        holdNames([], for: key)
        logger.debug("stream closed by peer", metadata: ["stream": "\(stream.id)"])
    }

    @_specialize(where Machine == SotWStream)
    @_specialize(where Machine == DeltaStream)
    fileprivate func perform<Machine: SecretStreamMachine>(
        _ actions: consuming [Machine.Action], on stream: StreamCall<Machine>
    ) {
        // Taken out of the array (moved, not copied: a response's strings and resources are not retained again).
        if actions.count > 1 { actions.reverse() }
        while let action = actions.popLast() {
            switch Machine.step(action) {
            case .send(let response):
                send(response, on: stream)
            case .ack(let fields):
                logger.debug("ack", metadata: Self.metadata(stream: stream.id, fields))
            case .nack(let names, let fields):
                countNack(names)
                warnings.warn(kind: "nack", "nack", metadata: Self.metadata(stream: stream.id, fields))
            case .protocolError(let error):
                fail(stream.call, key: ObjectIdentifier(stream.call), GRPCStatus(.invalidArgument, error.description))
            }
        }
    }

    @_specialize(where Machine == SotWStream)
    @_specialize(where Machine == DeltaStream)
    fileprivate func send<Machine: SecretStreamMachine>(
        _ response: Machine.Response, on stream: StreamCall<Machine>
    ) {
        let parts = Machine.wireParts(response, sharing: &sharedBodies)
        switch stream.call.send(parts.body, then: parts.tail) {
        case .queued:
            stream.machine.responseAwaitsTransport()
            metrics.pushes += 1
            // Per stream at debug: a rotation at 10,000 streams is one info line (the agent's), not 10,000; and
            // its fields are not even built unless debug is on.
            if logsPerStream {
                var metadata = Self.metadata(stream: stream.id, Machine.pushFields(response))
                metadata["mode"] = "\(Machine.mode)"
                logger.debug("push", metadata: metadata)
            }
        case .wouldExceed:
            // One response alone is larger than the stream's queue bound: it can never be sent.
            fail(stream.call, key: ObjectIdentifier(stream.call), Self.responseTooLarge)
        case .closed:
            streams.removeValue(forKey: ObjectIdentifier(stream.call))
        }
    }

    /// Log metadata with every client-chosen value bounded (`LogSummary`).
    private static func metadata(stream: UInt64, _ fields: [(String, StreamLogField)]) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["stream": "\(stream)"]
        for (key, value) in fields {
            switch value {
            case .text(let text): metadata[key] = "\(LogSummary.text(text))"
            case .names(let names): metadata[key] = "\(LogSummary.names(names))"
            }
        }
        return metadata
    }

    // MARK: FetchSecrets

    private func openFetch(_ call: GRPCServerCall) {
        let key = ObjectIdentifier(call)
        var request: DiscoveryRequest?
        call.onMessage = { [weak self, weak call] bytes in
            guard let self, let call else { return }
            guard request == nil else {
                self.fail(call, key: key, GRPCStatus(.invalidArgument, "FetchSecrets is unary: one request"))
                return
            }
            do { request = try DiscoveryRequest(wireBytes: bytes) } catch {
                self.fail(call, key: key, GRPCStatus(.invalidArgument, "malformed DiscoveryRequest: \(error)"))
            }
        }
        call.onHalfClose = { [weak self, weak call] in
            guard let self, let call else { return }
            guard let request else {
                call.finish(GRPCStatus(.invalidArgument, "FetchSecrets needs a DiscoveryRequest"))
                return
            }
            if let status = self.onDemandBudgetExceeded(request.resourceNames, on: call) {
                return self.fail(call, key: key, status)
            }
            self.holdNames(request.resourceNames, for: key, on: call)
            self.onSubscribe?(request.resourceNames, call.peer)
            self.noteNeverServed(request.resourceNames, node: request.node?.id ?? "")
            if self.answerFetch(call, request) {
                self.holdNames([], for: key)
            } else {
                self.heldFetches[key] = (call, request)
            }
        }
        call.onCancel = { [weak self] in
            guard let self else { return }
            self.heldFetches.removeValue(forKey: key)
            self.holdNames([], for: key)
        }
    }

    /// Answers a FetchSecrets call if it can; returns false while its names are still being issued.
    private func answerFetch(_ call: GRPCServerCall, _ request: DiscoveryRequest) -> Bool {
        switch SecretFetch.decide(request, cache: cache(for: request.node.map(aliases) ?? [:])) {
        case .respond(let response):
            call.send(response.wireBytes())
            call.finish(.ok)
            return true
        case .wait:
            return false
        case .neverServed(let names):
            call.finish(GRPCStatus(.notFound, "not served here: \(LogSummary.names(names))"))
            return true
        case .protocolError(let error):
            call.finish(GRPCStatus(.invalidArgument, error.description))
            return true
        }
    }

    // MARK: Ending calls

    private func fail(_ call: GRPCServerCall, key: ObjectIdentifier, _ status: GRPCStatus) {
        warnings.warn(
            kind: "failed \(call.path)", "call failed",
            metadata: ["path": "\(call.path)", "status": "\(LogSummary.text("\(status)"))"])
        close(call, key: key, status: status)
    }

    fileprivate func close(_ call: GRPCServerCall, key: ObjectIdentifier, status: GRPCStatus) {
        streams.removeValue(forKey: key)
        heldFetches.removeValue(forKey: key)
        holdNames([], for: key)
        call.finish(status)
    }

    /// The status that ends a call whose request would make its connection hold more than
    /// `maxOnDemandNamesPerConnection` distinct on-demand names, or nil. Counted from what the connection's other
    /// calls hold now, before anything is read or minted for the new names.
    private func onDemandBudgetExceeded(_ names: [String], on call: GRPCServerCall) -> GRPCStatus? {
        var onDemand = Set(names.lazy.filter(isOnDemand))
        guard !onDemand.isEmpty else { return nil }
        let key = ObjectIdentifier(call)
        if let connection = call.connectionID {
            for (other, held) in namesByCall where other != key && connectionByCall[other] == connection {
                onDemand.formUnion(held.lazy.filter(isOnDemand))
            }
        }
        guard onDemand.count > Self.maxOnDemandNamesPerConnection else { return nil }
        metrics.countRefusal(.names)
        return GRPCStatus(
            .resourceExhausted,
            "this connection would hold \(onDemand.count) jwt-svid:/file-* names; at most "
                + "\(Self.maxOnDemandNamesPerConnection) (release some, or use another connection)")
    }

    /// Records that the call `key` now holds `names`; names nobody holds any more go to `onRelease`.
    private func holdNames(_ names: [String], for key: ObjectIdentifier, on call: GRPCServerCall? = nil) {
        let old = namesByCall[key] ?? []
        if names.isEmpty {
            namesByCall.removeValue(forKey: key)
            connectionByCall.removeValue(forKey: key)
        } else {
            namesByCall[key] = names
            if let connection = call?.connectionID { connectionByCall[key] = connection }
        }
        let released = subscriptions.update(from: old, to: names)
        if !released.isEmpty { onRelease?(released) }
    }
}

/// A content hash for resource versions: FNV-1a 64, hex. Versions only need to change when content does; this is
/// not a security boundary (the content itself is what Envoy validates).
enum ContentHash {
    static func hex(_ bytes: [UInt8]) -> String {
        var hash = FNV1a()
        hash.add(bytes)
        let text = String(hash.value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }
}

/// An open stream of either kind, as the service's table holds it.
protocol OpenStream: AnyObject {
    var call: GRPCServerCall { get }
    var mode: String { get }
    /// Lets the machine react to a cache change: the response it builds, if any, is sent.
    /// `cache` is the service's, taken once for the whole push.
    func cacheChanged(in service: SecretDiscoveryService, cache: SecretCache)
    /// This stream as a SotW call, when it is one: a push calls those on their concrete type (through this
    /// protocol, the generic entry built `Optional<Response>` metadata for every stream).
    var asSotW: SecretDiscoveryService.StreamCall<SotWStream>? { get }
}
