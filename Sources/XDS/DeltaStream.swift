public import Wire

/// One DeltaSecrets (incremental) gRPC stream, as a value: requests and cache changes in, actions out.
///
/// ```
///                       receive(first request)
///   ┌──────────────────────┐  type_url ok   ┌──────────────────────────────────────────────────┐
///   │ awaitingFirstRequest ├───────────────▶│ open(subscriptions: name → what the client holds) │◀─┐
///   └──────────┬───────────┘                │  per name: a view (see below)                     │  │ receive /
///              │ bad type_url               │  send only names whose state must change          │  │ cacheChanged
///              ▼                            └──────┬──────────────────────────────────────┬─────┘  │
///   ┌──────────────────────┐      bad type_url     │                                      └────────┘
///   │ failed(error)        │◀──────────────────────┘   (the service ends the call: INVALID_ARGUMENT)
///   └──────────────────────┘
///
///   per subscribed name, on each evaluation (view: unknown | declared(v) | holds(v) | toldRemoved):
///     cached at v, view holds(v) or declared(v) .......... nothing                    → holds(v)
///     cached at v, any other view ........................ resources += (name, v)     → holds(v)
///     never served, not yet told ......................... removed_resources += name  → toldRemoved
///     pending, view holds(_) (removed from the cache) .... removed_resources += name  → toldRemoved
///     pending otherwise .................................. hold
/// ```
///
/// Rules, from Envoy's behaviour and the xDS protocol:
/// - `resource_names_subscribe` / `_unsubscribe` are honoured on every request, even one with a stale nonce.
///   Subscribing to a name again (already subscribed, or after an unsubscribe) forgets what the client holds, so
///   the resource is sent again. A request that only unsubscribes needs no response.
/// - `initial_resource_versions` (sent on reconnect) records what the client already holds: a resource cached at
///   that version is not sent again.
/// - A name this server will never serve is answered once in `removed_resources` (the protocol's "does not
///   exist"). A name the client held (sent on this stream, or declared and then seen in the cache) that is later
///   removed from the cache is also reported removed. A name being issued is held until ready, also after a
///   reconnect where the client declares an older version (our restart emptied the cache; that is no removal).
/// - ACK / NACK: the latest nonce in `response_nonce`, with `error_detail` for a NACK. After a NACK the rejected
///   versions still count as sent, so they are not pushed again; the next content change is.
/// - Wildcard: SDS does not use it. An empty first subscribe is just "no names": nothing is sent until names are
///   subscribed, and `*` is an ordinary (never served, by any sane classifier) name.
/// - `system_version_info` = the cache revision. Resources and removed names are listed sorted by name.
/// - The node is kept from the first request that carries one.
///
/// Work per event is O(names subscribed on this stream), never O(cache).
public struct DeltaStream: Sendable {
    /// What the service should do after an event. An event yields zero, one or two actions (an ACK or NACK to log,
    /// then maybe a response), in the order to perform them.
    public enum Action: Sendable, Equatable {
        /// Write this response on the stream.
        case send(DeltaDiscoveryResponse)
        /// The client applied the latest response (log only): name → version of its resources, and its removals.
        case ack(nonce: String, versions: [String: String], removed: [String])
        /// The client rejected the latest response (log it; those versions are not resent).
        case nack(nonce: String, rejectedVersions: [String: String], removed: [String], errorDetail: RPCStatus)
        /// The request breaks the protocol: end the call with INVALID_ARGUMENT and this error's description.
        case protocolError(XDSProtocolError)
    }

    /// What the client holds of one subscribed name, as far as this stream knows.
    enum ClientView: Sendable, Equatable {
        /// Nothing sent yet on this subscription.
        case unknown
        /// The client said (in `initial_resource_versions`) it holds this version; not yet seen in the cache.
        case declared(version: String)
        /// The client holds this version, which this stream sent or found in the cache.
        case holds(version: String)
        /// We told the client the name does not exist.
        case toldRemoved
    }

    struct SentResponse: Sendable {
        var nonce: String
        var versions: [String: String]
        var removed: [String]
    }

    struct Session: Sendable {
        var subscriptions: [String: ClientView] = [:]
        var lastSent: SentResponse?
        /// The cache revision the subscriptions were last compared against, to skip repeated notifications.
        var evaluatedRevision: UInt64?
    }

    /// `open` holds the session.
    private var lifecycle: StreamLifecycle<Session>

    /// The client's node, from the first request that carried one.
    public var node: Node? { lifecycle.node }
    /// The most recent NACK on this stream (for status pages and logs).
    public var lastRejection: RPCStatus? { lifecycle.lastRejection }

    public init(nonces: NonceSequence = NonceSequence()) {
        lifecycle = StreamLifecycle(nonces: nonces)
    }

    /// The names the client currently subscribes to, sorted.
    public var subscribedNames: [String] { lifecycle.payload?.subscriptions.keys.sorted() ?? [] }

    /// The nonce of the latest response sent, if any.
    public var latestNonce: String? { lifecycle.payload?.lastSent?.nonce }

    /// The error that failed the stream, if one did.
    public var failure: XDSProtocolError? { lifecycle.failure }

    /// True while a change waits for the transport to take the response before it (see `OutboundGate`).
    public var holdsUnsentChange: Bool { lifecycle.outbound.owed }

    /// The service handed the latest `.send` to a transport that has not taken it yet: until `transportReady`, changes
    /// are held in this stream's per-name views and merged into one response then (every name whose state changed
    /// since the response in flight, at its current version, and every name removed since).
    public mutating func responseAwaitsTransport() {
        lifecycle.outbound.busy = true
    }

    /// The transport took the response in flight: returns the response merging every change held since, if any.
    /// `cache` is only evaluated when a change is owed (a push drains thousands of streams that owe nothing).
    public mutating func transportReady(_ cache: @autoclosure () -> SecretCache) -> [Action] {
        guard lifecycle.outbound.ready(), var session = lifecycle.takePayload() else { return [] }
        defer { lifecycle.payload = session }
        return respondIfChanged(&session, cache: cache()).map { [.send($0)] } ?? []
    }

    /// A request arrived on the stream.
    public mutating func receive(_ request: DeltaDiscoveryRequest, cache: SecretCache) -> [Action] {
        var session: Session
        var actions: [Action] = []
        switch lifecycle.admit(typeURL: request.typeURL, node: request.node) {
        case .ignored:
            return []

        case .rejected(let error):
            return [.protocolError(error)]

        case .first:
            // A nonce on a first request belongs to an earlier stream: nothing to acknowledge.
            session = Session()

        case .open(let current):
            session = current
            if let sent = session.lastSent, !request.responseNonce.isEmpty, request.responseNonce == sent.nonce {
                if let errorDetail = request.errorDetail {
                    lifecycle.lastRejection = errorDetail
                    actions.append(
                        .nack(
                            nonce: sent.nonce, rejectedVersions: sent.versions, removed: sent.removed,
                            errorDetail: errorDetail))
                } else {
                    actions.append(.ack(nonce: sent.nonce, versions: sent.versions, removed: sent.removed))
                }
            }
        }

        // Subscription changes count whatever the nonce (stale included): they are the client's current wishes.
        for name in request.resourceNamesSubscribe {
            if let version = request.initialResourceVersions[name] {
                session.subscriptions[name] = .declared(version: version)
            } else {
                session.subscriptions[name] = .unknown
            }
        }
        for name in request.resourceNamesUnsubscribe {
            session.subscriptions.removeValue(forKey: name)
        }

        // Only new subscriptions can need an answer; an ACK, a NACK or a pure unsubscribe cannot.
        if !request.resourceNamesSubscribe.isEmpty, let response = respondIfChanged(&session, cache: cache) {
            actions.append(.send(response))
        }
        lifecycle.open(with: session)
        return actions
    }

    /// The cache changed (the service calls this for every stream after each effective `set` or `remove`).
    public mutating func cacheChanged(_ cache: SecretCache) -> [Action] {
        responseToCacheChange(cache).map { [.send($0)] } ?? []
    }

    /// `cacheChanged`'s one possible action, the response, without a list around it (a push asks every stream).
    public mutating func responseToCacheChange(_ cache: SecretCache) -> DeltaDiscoveryResponse? {
        guard lifecycle.isOpen, lifecycle.payload?.evaluatedRevision != cache.revision,
            var session = lifecycle.takePayload()
        else { return nil }
        defer { lifecycle.payload = session }
        return respondIfChanged(&session, cache: cache)
    }

    /// A response with what changed for the client across its subscriptions, or nil when nothing did.
    private mutating func respondIfChanged(_ session: inout Session, cache: SecretCache) -> DeltaDiscoveryResponse? {
        session.evaluatedRevision = cache.revision
        // Views change only when a response is built, so a held-back evaluation later yields the merged difference.
        guard lifecycle.outbound.mayRespond() else { return nil }
        var resources: [Resource] = []
        var removed: [String] = []
        // Mutating through `values` by index keeps the dictionary's storage (no copy while iterating).
        var index = session.subscriptions.startIndex
        while index != session.subscriptions.endIndex {
            let (name, view) = session.subscriptions[index]
            if let entry = cache.entry(named: name) {
                switch view {
                case .holds(entry.version):
                    break
                case .declared(entry.version):
                    session.subscriptions.values[index] = .holds(version: entry.version)
                case .unknown, .declared, .holds, .toldRemoved:
                    resources.append(Resource(name: name, version: entry.version, resource: entry.resource))
                    session.subscriptions.values[index] = .holds(version: entry.version)
                }
            } else {
                switch (cache.availability(of: name), view) {
                case (.neverServed, .toldRemoved):
                    break
                case (.neverServed, _), (.pending, .holds):
                    // Never served, or gone from the cache after the client had it: "does not exist".
                    removed.append(name)
                    session.subscriptions.values[index] = .toldRemoved
                case (.pending, _), (.available, _):
                    // Being issued (e.g. after a restart, while the client still holds an older version):
                    // hold. `.available` cannot happen without an entry.
                    break
                }
            }
            session.subscriptions.formIndex(after: &index)
        }
        guard !resources.isEmpty || !removed.isEmpty else { return nil }

        resources.sort { $0.name < $1.name }
        removed.sort()
        let nonce = lifecycle.nonces.next()
        var versions: [String: String] = [:]
        for resource in resources { versions[resource.name] = resource.version }
        session.lastSent = SentResponse(nonce: nonce, versions: versions, removed: removed)
        return DeltaDiscoveryResponse(
            systemVersionInfo: String(cache.revision), resources: resources, typeURL: SDS.secretTypeURL,
            removedResources: removed, nonce: nonce)
    }
}
