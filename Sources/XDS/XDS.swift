// XDS: the xDS side of the SDS server as pure values. A versioned `SecretCache`, one state machine per gRPC stream
// (`SotWStream` for StreamSecrets, `DeltaStream` for DeltaSecrets) and `SecretFetch` for the unary FetchSecrets.
// Nothing here does I/O or reads a clock: the service layer feeds events in and performs the returned actions.
//
// Wiring, for the service layer (all on the one thread or actor that owns the cache; these are plain values):
// - One `SecretCache` with the owner's name classifier. On each issuance: `cache.set(name:version:resource:)`
//   with version = e.g. hex SHA-256 of the serialized Secret; if it returns true, call `cacheChanged(cache)` on
//   every open stream and perform the actions, and re-`decide` every held FetchSecrets call.
// - One `SotWStream` per StreamSecrets call and one `DeltaStream` per DeltaSecrets call, created when the call
//   opens (a per-stream `NonceSequence` prefix keeps nonces distinct in logs). Each decoded request message goes
//   to `receive(_:cache:)`; perform the returned actions in order: `.send` → write the message, `.ack`/`.nack` →
//   log, `.protocolError` → finish the call with INVALID_ARGUMENT and the error's description.
// - Streams never answer with an error for a name they cannot serve (Envoy would back off ~30 s); they hold.

internal import Wire

/// Constants of the Secret Discovery Service.
public enum SDS {
    /// The only resource type SDS serves: `type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret`.
    public static let secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
}

/// A request the service must refuse; the service layer finishes the call with INVALID_ARGUMENT and this text.
public enum XDSProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The first request of a stream carried no `type_url`.
    case missingTypeURL
    /// The request asked for a type this server does not serve.
    case unsupportedTypeURL(String)
    /// A follow-up request on the stream switched to another type (a stream carries one type).
    case typeURLChanged(from: String, to: String)
    /// FetchSecrets without any resource name (SDS has no wildcard).
    case noResourceNames

    public var description: String {
        switch self {
        case .missingTypeURL:
            return "the first request must carry type_url \(SDS.secretTypeURL)"
        case .unsupportedTypeURL(let url):
            return "unsupported type_url \"\(url)\"; this server serves only \(SDS.secretTypeURL)"
        case .typeURLChanged(let from, let to):
            return "type_url changed on the stream from \"\(from)\" to \"\(to)\""
        case .noResourceNames:
            return "FetchSecrets needs at least one resource name"
        }
    }
}

/// Checks a request's `type_url`. Envoy always sends it; other clients may leave it empty on follow-up requests,
/// which means "same as before".
func checkTypeURL(_ typeURL: String, isFirstRequest: Bool) -> XDSProtocolError? {
    if typeURL.isEmpty {
        return isFirstRequest ? .missingTypeURL : nil
    }
    if typeURL != SDS.secretTypeURL {
        return isFirstRequest ? .unsupportedTypeURL(typeURL) : .typeURLChanged(from: SDS.secretTypeURL, to: typeURL)
    }
    return nil
}

/// Removes repeated names, keeping the first occurrence's order (responses list resources in request order).
func uniqueNames(_ names: [String]) -> [String] {
    // Envoy asks for one name a stream: no set to build for that (every ACK passes here).
    if names.count < 2 { return names }
    if names.count == 2 { return names[0] == names[1] ? [names[0]] : names }
    var seen = Set<String>()
    seen.reserveCapacity(names.count)
    return names.filter { seen.insert($0).inserted }
}

/// The `version_info` of a SotW response holding `versions` (name → per-resource version, in response order).
///
/// One resource (Envoy's case: one stream per secret): that resource's own version, so logs and Delta's
/// per-resource versions line up. Several: FNV-1a 64 of the `name=version` pairs sorted by name, as 16 hex
/// digits — deterministic, independent of request order, and changes whenever any member's content does.
func sotwVersionInfo(_ versions: [(name: String, version: String)]) -> String {
    if versions.count == 1 { return versions[0].version }
    return sotwVersionInfo(digest: sotwDigest(versions))
}

/// A several-resource `version_info` from its pairs' `sotwDigest`.
func sotwVersionInfo(digest: UInt64) -> String {
    let digits = String(digest, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// FNV-1a 64 of the `name=version` pairs, in name order: equal for equal sets of pairs. What a SotW stream keeps of
/// its last response to tell whether the next would differ (8 bytes, not a dictionary per stream).
func sotwDigest(_ versions: [(name: String, version: String)]) -> UInt64 {
    var hash = FNV1a()
    for pair in versions.count > 1 ? versions.sorted(by: { $0.name < $1.name }) : versions {
        add(name: pair.name, version: pair.version, to: &hash)
    }
    return hash.value
}

/// `sotwDigest` of one pair: a one-name response, every push to an Envoy stream, builds no list of pairs.
func sotwDigest(name: String, version: String) -> UInt64 {
    var hash = FNV1a()
    add(name: name, version: version, to: &hash)
    return hash.value
}

private func add(name: String, version: String, to hash: inout FNV1a) {
    hash.add(name)
    hash.add(UInt8(ascii: "="))
    hash.add(version)
    hash.add(0)  // separator, so ("ab","c") != ("a","bc")
}
