public import Wire

/// One StreamSecrets (state-of-the-world) gRPC stream, as a value: requests and cache changes in, actions out.
///
/// ```
///                       receive(first request)
///   ┌──────────────────────┐  type_url ok   ┌─────────────────────────────────────────────┐
///   │ awaitingFirstRequest ├───────────────▶│ open(names, sent, latestNonce)              │◀─┐
///   └──────────┬───────────┘                │  all names cached and versions ≠ sent ─▶ send│  │ receive / cacheChanged
///              │ bad type_url               └──────┬───────────────────────────────────┬──┘  │
///              ▼                                   │ bad type_url                      └─────┘
///   ┌──────────────────────┐                       │
///   │ failed(error)        │◀──────────────────────┘   (the service ends the call: INVALID_ARGUMENT)
///   └──────────────────────┘
/// ```
///
/// Rules, from Envoy's behaviour and the xDS protocol:
/// - A response goes out when every requested name is in the cache and the versions of those names differ from
///   the last response on this stream. Names pending issuance or never served hold the response: SotW has no way
///   to say "does not exist" short of an error, and an error closes the stream and makes Envoy back off for ~30 s.
///   Envoy opens one stream per secret, so "all or nothing" costs nothing in practice; a response always carries
///   every requested name, in request order.
/// - Each response gets a new nonce. A request echoing the latest nonce is an ACK (no `error_detail`) or a NACK
///   (`error_detail` set). Neither triggers a resend: after a NACK the rejected versions still count as sent, so
///   the same content is not pushed again; the next content change is.
/// - A request echoing an older nonce is stale (the client has not yet seen our latest response): ignored whole.
/// - An empty nonce starts a new subscription: the first request of a stream (including Envoy's reconnect after a
///   server restart, which carries its old `version_info`) or a client starting over; it is always answered once
///   its names are available, whatever `version_info` says.
/// - A changed set of names on a current (latest-nonce) request is answered with the new set. An empty set holds
///   everything: SDS has no wildcard.
/// - `version_info` of a response: the resource's own version when it holds one resource, otherwise a hash of
///   its `name=version` pairs (see `sotwVersionInfo`).
/// - The node is kept from the first request that carries one (Istio sends it only on the first message).
///
/// Work per event is O(names subscribed on this stream), never O(cache).
public struct SotWStream: Sendable {
    /// What the service should do after an event. An event yields zero, one or two actions (an ACK or NACK to log,
    /// then maybe a response), in the order to perform them.
    public enum Action: Sendable, Equatable {
        /// Write this response on the stream.
        case send(DiscoveryResponse)
        /// The client applied the latest response (log only). `versionInfo` is the version it now runs.
        case ack(nonce: String, versionInfo: String, resourceNames: [String])
        /// The client rejected the latest response (log it; nothing is resent until the content changes).
        /// `versionInfo` is the last version the client accepted; `rejectedVersionInfo` the one it refused.
        case nack(
            nonce: String, versionInfo: String, rejectedVersionInfo: String, resourceNames: [String],
            errorDetail: RPCStatus)
        /// The request breaks the protocol: end the call with INVALID_ARGUMENT and this error's description.
        case protocolError(XDSProtocolError)
    }

    /// What the stream last sent.
    struct SentResponse: Sendable {
        var nonce: String
        var versionInfo: String
        /// `sotwDigest` of the name and version of every resource in that response.
        var digest: UInt64
    }

    struct Subscription: Sendable {
        /// Requested names, deduplicated, in request order.
        var names: [String]
        /// The latest response on this stream for the current subscription; nil until one is sent (or after a
        /// client starts over with an empty nonce).
        var sent: SentResponse?
        /// The latest nonce sent on this stream (kept across start-overs so stale echoes stay stale).
        var latestNonce: String?
        /// The cache revision this subscription was last compared against, to skip repeated notifications.
        var evaluatedRevision: UInt64?
    }

    /// `open` holds the subscription.
    private var lifecycle: StreamLifecycle<Subscription>

    /// The client's node, from the first request that carried one.
    public var node: Node? { lifecycle.node }
    /// The most recent NACK on this stream (for status pages and logs).
    public var lastRejection: RPCStatus? { lifecycle.lastRejection }

    public init(nonces: NonceSequence = NonceSequence()) {
        lifecycle = StreamLifecycle(nonces: nonces)
    }

    /// The names the client currently subscribes to (empty before the first request).
    public var subscribedNames: [String] { lifecycle.payload?.names ?? [] }

    /// The nonce of the latest response sent, if any.
    public var latestNonce: String? { lifecycle.payload?.latestNonce }

    /// The error that failed the stream, if one did.
    public var failure: XDSProtocolError? { lifecycle.failure }

    /// True while a change waits for the transport to take the response before it (see `OutboundGate`).
    public var holdsUnsentChange: Bool { lifecycle.outbound.owed }

    /// The service handed the latest `.send` to a transport that has not taken it yet: until `transportReady`, changes
    /// are held in this stream's state and merged into one response then (SotW: the latest snapshot).
    public mutating func responseAwaitsTransport() {
        lifecycle.outbound.busy = true
    }

    /// The transport took the response in flight: returns the response merging every change held since, if any.
    /// `cache` is only evaluated when a change is owed (a push drains thousands of streams that owe nothing).
    public mutating func transportReady(_ cache: @autoclosure () -> SecretCache) -> [Action] {
        guard lifecycle.outbound.ready(), var subscription = lifecycle.takePayload() else { return [] }
        defer { lifecycle.payload = subscription }
        return respondIfChanged(&subscription, cache: cache()).map { [$0] } ?? []
    }

    /// A request arrived on the stream.
    public mutating func receive(_ request: DiscoveryRequest, cache: SecretCache) -> [Action] {
        switch lifecycle.admit(typeURL: request.typeURL, node: request.node) {
        case .ignored:
            return []

        case .rejected(let error):
            return [.protocolError(error)]

        case .first:
            // Whatever nonce or version a first request carries belongs to an earlier stream: start afresh.
            var subscription = Subscription(names: uniqueNames(request.resourceNames))
            let action = respondIfChanged(&subscription, cache: cache)
            lifecycle.open(with: subscription)
            return action.map { [$0] } ?? []

        case .open(var subscription):
            defer { lifecycle.payload = subscription }
            if request.responseNonce.isEmpty {
                // A new subscription on this stream: answer it as if nothing had been sent.
                subscription.names = uniqueNames(request.resourceNames)
                subscription.sent = nil
                return respondIfChanged(&subscription, cache: cache).map { [$0] } ?? []
            }
            guard request.responseNonce == subscription.latestNonce else {
                // Stale: the client will answer our latest response; that request is the one to act on.
                return []
            }

            var actions: [Action] = []
            if let errorDetail = request.errorDetail {
                lifecycle.lastRejection = errorDetail
                actions.append(
                    .nack(
                        nonce: request.responseNonce, versionInfo: request.versionInfo,
                        rejectedVersionInfo: subscription.sent?.versionInfo ?? "",
                        resourceNames: subscription.names, errorDetail: errorDetail))
            } else {
                actions.append(
                    .ack(
                        nonce: request.responseNonce, versionInfo: request.versionInfo,
                        resourceNames: subscription.names))
            }
            let names = uniqueNames(request.resourceNames)
            // The same list (an ACK's usual case) needs no sets to tell it is the same set.
            if names != subscription.names, Set(names) != Set(subscription.names) {
                subscription.names = names
                if let action = respondIfChanged(&subscription, cache: cache) { actions.append(action) }
            }
            return actions
        }
    }

    /// `receive`'s answer to an ACK of the latest response that keeps the names and carries no node and no error
    /// (what nearly every request on an open stream is), told from the request's bytes: such a request changes
    /// nothing, and `receive` would return only the `.ack` to log. Nil for every other request. (`mutating` only to
    /// be called in place: see `SecretStreamMachine`.)
    public mutating func plainAcknowledgement(_ bytes: [UInt8]) -> DiscoveryRequestEcho? {
        guard lifecycle.isOpen, let latestNonce = lifecycle.payload?.latestNonce,
            let echo = DiscoveryRequestEcho(wireBytes: bytes), echo.echoes(nonce: latestNonce),
            echo.typeURLIsAbsentOr(SDS.secretTypeURL), let names = lifecycle.payload?.names, echo.names(equal: names)
        else { return nil }
        return echo
    }

    /// The cache changed (the service calls this for every stream after each effective `set` or `remove`).
    public mutating func cacheChanged(_ cache: SecretCache) -> [Action] {
        responseToCacheChange(cache).map { [.send($0)] } ?? []
    }

    /// `cacheChanged`'s one possible action, the response, without a list around it (a push asks every stream).
    public mutating func responseToCacheChange(_ cache: SecretCache) -> DiscoveryResponse? {
        guard lifecycle.isOpen, lifecycle.payload?.evaluatedRevision != cache.revision,
            var subscription = lifecycle.takePayload()
        else { return nil }
        defer { lifecycle.payload = subscription }
        guard case .send(let response)? = respondIfChanged(&subscription, cache: cache) else { return nil }
        return response
    }

    /// A response with every subscribed name, if all are cached and their versions differ from the last response.
    private mutating func respondIfChanged(_ subscription: inout Subscription, cache: SecretCache) -> Action? {
        subscription.evaluatedRevision = cache.revision
        guard !subscription.names.isEmpty, lifecycle.outbound.mayRespond() else { return nil }

        let resources: [AnyMessage]
        let digest: UInt64
        /// The one resource's version; with several, `version_info` is the digest in hex (`sotwVersionInfo`).
        let singleVersion: String?
        if subscription.names.count == 1 {
            // Envoy's case (one stream per secret), on every push: no list of pairs.
            guard let entry = cache.entry(named: subscription.names[0]) else { return nil }
            resources = entry.asResources
            digest = entry.sotwDigest(answeredAs: subscription.names[0])
            singleVersion = entry.version
        } else {
            var all: [AnyMessage] = []
            var pairs: [(name: String, version: String)] = []
            all.reserveCapacity(subscription.names.count)
            pairs.reserveCapacity(subscription.names.count)
            for name in subscription.names {
                guard let entry = cache.entry(named: name) else { return nil }  // hold until every name is there
                all.append(entry.resource)
                pairs.append((name, entry.version))
            }
            resources = all
            digest = sotwDigest(pairs)
            singleVersion = nil
        }
        if let sent = subscription.sent, sent.digest == digest { return nil }

        let nonce = lifecycle.nonces.next()
        let versionInfo = singleVersion ?? sotwVersionInfo(digest: digest)
        subscription.sent = SentResponse(nonce: nonce, versionInfo: versionInfo, digest: digest)
        subscription.latestNonce = nonce
        return .send(
            DiscoveryResponse(versionInfo: versionInfo, resources: resources, typeURL: SDS.secretTypeURL, nonce: nonce))
    }
}
