public import Wire

/// FetchSecrets (unary) as a decision over the cache. Envoy never calls it; other clients do.
///
/// The service calls `decide` when the call arrives; on `.wait` it holds the call and calls `decide` again after
/// each cache change until it gets another answer or the call's deadline passes (the deadline is the service's:
/// nothing here reads a clock).
public enum SecretFetch {
    public enum Decision: Sendable, Equatable {
        /// Every requested name is cached: answer with this response (no nonce: there is nothing to ACK).
        case respond(DiscoveryResponse)
        /// Some names are still being issued (and none is never-served): hold the call.
        case wait(pending: [String])
        /// Some names will never be served. A unary call cannot be held forever: the service answers NOT_FOUND
        /// (or holds until the deadline, if it prefers).
        case neverServed([String])
        /// The request breaks the protocol: INVALID_ARGUMENT.
        case protocolError(XDSProtocolError)
    }

    /// What to do with `request` given the cache's current content. O(requested names).
    public static func decide(_ request: DiscoveryRequest, cache: SecretCache) -> Decision {
        if let error = checkTypeURL(request.typeURL, isFirstRequest: true) { return .protocolError(error) }
        let names = uniqueNames(request.resourceNames)
        if names.isEmpty { return .protocolError(.noResourceNames) }

        var resources: [AnyMessage] = []
        var pairs: [(name: String, version: String)] = []
        var pending: [String] = []
        var neverServed: [String] = []
        for name in names {
            if let entry = cache.entry(named: name) {
                resources.append(entry.resource)
                pairs.append((name, entry.version))
                continue
            }
            switch cache.availability(of: name) {
            case .neverServed: neverServed.append(name)
            case .pending, .available: pending.append(name)
            }
        }
        if !neverServed.isEmpty { return .neverServed(neverServed) }
        if !pending.isEmpty { return .wait(pending: pending) }
        return .respond(
            DiscoveryResponse(versionInfo: sotwVersionInfo(pairs), resources: resources, typeURL: SDS.secretTypeURL))
    }
}
