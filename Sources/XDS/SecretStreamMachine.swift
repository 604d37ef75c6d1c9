public import Wire

/// One field of a log line about a stream event: a client-chosen text or list of names, which the service bounds
/// before logging (a request may name thousands).
public enum StreamLogField: Sendable {
    case text(String)
    case names([String])
}

/// What the SDS service does with one machine action, whatever the protocol variant: the service drives SotW and
/// Delta streams with one generic call type, and each machine says here what its actions mean.
public enum SecretStreamStep<Response: Sendable>: Sendable {
    /// Write this response on the stream.
    case send(Response)
    /// The client applied a response: log these fields at debug.
    case ack(fields: [(String, StreamLogField)])
    /// The client rejected a response for these names: count it and log these fields (rate-limited).
    case nack(names: [String], fields: [(String, StreamLogField)])
    /// The request broke the protocol: end the call with INVALID_ARGUMENT.
    case protocolError(XDSProtocolError)
}

/// The interface the State-of-the-World and Delta stream machines share: requests and cache changes in, actions
/// out, one response in the transport at a time (pull-style: `responseAwaitsTransport`, then `transportReady`).
public protocol SecretStreamMachine {
    associatedtype Request: WireMessage
    associatedtype Response: WireMessage
    associatedtype Action

    /// `sotw` or `delta`: the `mode` field of logs.
    static var mode: String { get }

    init(nonces: NonceSequence)

    var node: Node? { get }
    var subscribedNames: [String] { get }

    mutating func receive(_ request: Request, cache: SecretCache) -> [Action]
    mutating func cacheChanged(_ cache: SecretCache) -> [Action]
    /// `cacheChanged` when all it can return is a response: that response, or nil.
    mutating func responseToCacheChange(_ cache: SecretCache) -> Response?
    mutating func responseAwaitsTransport()
    mutating func transportReady(_ cache: @autoclosure () -> SecretCache) -> [Action]

    /// Whether `bytes` is a request that only acknowledges the stream's latest response and changes nothing (see
    /// `DiscoveryRequestEcho`), checked without decoding it; nil for anything else, which takes `receive`.
    /// Changes nothing; `mutating` so that a call on a machine stored in a class (each open stream's) is made in
    /// place: a non-mutating call copies the whole machine first, every field retained and then released (the
    /// change saved ~660 instructions an ACK).
    mutating func plainAcknowledgement(_ bytes: [UInt8]) -> DiscoveryRequestEcho?

    /// The node a request carries (the first one of a stream does).
    static func node(of request: Request) -> Node?

    /// The names `request` newly asks for, when it changed the subscription (nil when it did not): what on-demand
    /// secrets must be loaded for. `before` is `subscribedNames` before the request was received.
    func namesAsked(by request: Request, before: [String]) -> [String]?

    static func step(_ action: consuming Action) -> SecretStreamStep<Response>

    /// What a push log line says about `response`.
    static func pushFields(_ response: Response) -> [(String, StreamLogField)]

    /// `response` encoded as `body` then `tail`: the body from `bodies` when another stream already sent the same
    /// content (the same array, not a copy), the tail what is this stream's own (its nonce).
    static func wireParts(_ response: Response, sharing bodies: inout SharedResponseBodies) -> (
        body: [UInt8], tail: [UInt8]
    )
}

extension SecretStreamMachine {
    public mutating func plainAcknowledgement(_ bytes: [UInt8]) -> DiscoveryRequestEcho? { nil }

    public static func wireParts(_ response: Response, sharing bodies: inout SharedResponseBodies) -> (
        body: [UInt8], tail: [UInt8]
    ) {
        (response.wireBytes(), [])
    }

    /// `wireParts` as one array.
    public static func wireBytes(_ response: Response, sharing bodies: inout SharedResponseBodies) -> [UInt8] {
        let parts = wireParts(response, sharing: &bodies)
        return parts.body + parts.tail
    }
}

/// Encodings of responses without their nonce, shared by every stream that sends the same content: a rotation
/// pushes one secret to 10,000 streams, and it is encoded once instead of 10,000 times. Bounded: at most
/// `maxEntries` bodies of at most `maxBodyBytes` each (a larger one is encoded per stream), dropped all at once
/// when full, so the content clients ask for cannot grow it.
public struct SharedResponseBodies: Sendable {
    /// Why 16: a push concerns a handful of secrets (the SVID, the bundles, their variants).
    public static let maxEntries = 16
    public static let maxBodyBytes = 64 * 1024
    private var bodies: [String: [UInt8]] = [:]
    /// The body asked for last: a push asks for the same one once per stream, and comparing one key is cheaper
    /// than hashing it.
    private var last: (key: String, body: [UInt8])?

    public init() {}

    public var count: Int { bodies.count }

    /// The body asked for last, if it was `key` (checked before `body(for:encode:)`, whose closure would capture
    /// the response for every stream of a push).
    public func lastBody(for key: String) -> [UInt8]? {
        guard let last, last.key == key else { return nil }
        return last.body
    }

    /// The body stored under `key`, or `encode()`'s result (stored when it fits).
    public mutating func body(for key: String, encode: () -> [UInt8]) -> [UInt8] {
        if let body = lastBody(for: key) { return body }
        if let body = bodies[key] {
            last = (key, body)
            return body
        }
        let body = encode()
        guard body.count <= Self.maxBodyBytes else { return body }
        if bodies.count >= Self.maxEntries { bodies.removeAll(keepingCapacity: true) }
        bodies[key] = body
        last = (key, body)
        return body
    }
}

extension SotWStream: SecretStreamMachine {
    public static let mode = "sotw"

    public static func node(of request: DiscoveryRequest) -> Node? { request.node }

    public func namesAsked(by request: DiscoveryRequest, before: [String]) -> [String]? {
        subscribedNames != before ? subscribedNames : nil
    }

    public static func step(_ action: consuming Action) -> SecretStreamStep<DiscoveryResponse> {
        switch action {
        case .send(let response):
            return .send(response)
        case .ack(let nonce, let version, let names):
            return .ack(fields: [("nonce", .text(nonce)), ("version", .text(version)), ("names", .names(names))])
        case .nack(let nonce, _, let rejected, let names, let detail):
            return .nack(
                names: names,
                fields: [
                    ("nonce", .text(nonce)), ("rejected_version", .text(rejected)), ("names", .names(names)),
                    ("error", .text(detail.message)),
                ])
        case .protocolError(let error):
            return .protocolError(error)
        }
    }

    public static func pushFields(_ response: DiscoveryResponse) -> [(String, StreamLogField)] {
        [("version", .text(response.versionInfo)), ("nonce", .text(response.nonce))]
    }

    /// A one-resource response (Envoy's: one stream per secret) is its resource's version, type and bytes, then
    /// the stream's nonce: the version is the hash of the resource's bytes, so it keys the shared encoding. The
    /// nonce is field 5, the last one set, so body then tail are exactly what encoding the whole response gives.
    public static func wireParts(_ response: DiscoveryResponse, sharing bodies: inout SharedResponseBodies) -> (
        body: [UInt8], tail: [UInt8]
    ) {
        // Keyed by the version alone (no string built per stream): every SotW response here is of one type.
        guard response.resources.count == 1, !response.versionInfo.isEmpty, response.typeURL == SDS.secretTypeURL
        else { return (response.wireBytes(), []) }
        let body =
            bodies.lastBody(for: response.versionInfo)
            ?? bodies.body(for: response.versionInfo) {
                var withoutNonce = response
                withoutNonce.nonce = ""
                return withoutNonce.wireBytes()
            }
        return (body, WireFieldWriter.stringField(response.nonce, field: 5))
    }
}

extension DeltaStream: SecretStreamMachine {
    public static let mode = "delta"

    public static func node(of request: DeltaDiscoveryRequest) -> Node? { request.node }

    public func namesAsked(by request: DeltaDiscoveryRequest, before: [String]) -> [String]? {
        request.resourceNamesSubscribe.isEmpty && request.resourceNamesUnsubscribe.isEmpty
            ? nil : request.resourceNamesSubscribe
    }

    public static func step(_ action: consuming Action) -> SecretStreamStep<DeltaDiscoveryResponse> {
        switch action {
        case .send(let response):
            return .send(response)
        case .ack(let nonce, let versions, let removed):
            return .ack(fields: [
                ("nonce", .text(nonce)), ("versions", .names(versions.map { "\($0.key)@\($0.value)" })),
                ("removed", .names(removed)),
            ])
        case .nack(let nonce, let rejected, _, let detail):
            return .nack(
                names: Array(rejected.keys),
                fields: [
                    ("nonce", .text(nonce)), ("rejected_versions", .names(rejected.map { "\($0.key)@\($0.value)" })),
                    ("error", .text(detail.message)),
                ])
        case .protocolError(let error):
            return .protocolError(error)
        }
    }

    public static func pushFields(_ response: DeltaDiscoveryResponse) -> [(String, StreamLogField)] {
        [
            ("resources", .names(response.resources.map { "\($0.name)@\($0.version)" })),
            ("removed", .names(response.removedResources)), ("nonce", .text(response.nonce)),
        ]
    }
}
