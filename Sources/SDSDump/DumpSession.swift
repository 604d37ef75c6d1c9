public import GRPC
public import PKI
public import Wire

/// One update sds-dump prints: the secrets that arrived (every name for the first update, the pushed ones after)
/// and the CA certificates of every bundle held at that moment, to verify chains against.
public struct DumpUpdate: Sendable {
    public var time: Timestamp
    public var mode: DumpMode
    public var secrets: [ReceivedSecret]
    public var bundles: [Certificate]

    public init(time: Timestamp, mode: DumpMode, secrets: [ReceivedSecret], bundles: [Certificate]) {
        self.time = time
        self.mode = mode
        self.secrets = secrets
        self.bundles = bundles
    }

    /// The reports to print, in the order the secrets are listed.
    public var reports: [SecretReport] { secrets.map { $0.report(bundles: bundles, at: time) } }
}

/// How a run ends; each outcome has its exit code.
public enum DumpOutcome: Sendable, Equatable {
    /// Every name arrived (and, with --watch, --count updates were printed).
    case completed
    /// SIGINT/SIGTERM. With --watch that is the normal way to stop.
    case interrupted(watching: Bool)
    case cannotConnect(path: String, reason: String)
    /// The connection broke after it was made.
    case connectionLost(path: String, reason: String)
    /// --timeout passed before these names arrived.
    case timedOut(missing: [String])
    /// FetchSecrets answered without these names.
    case notReturned(missing: [String])
    /// A call ended with an error status.
    case serverError(GRPCStatus)
    /// The server ended a stream with OK although the stream is meant to stay open.
    case streamEnded(name: String)

    public var exitCode: Int32 {
        switch self {
        case .completed: 0
        case .interrupted(let watching): watching ? 0 : 130
        case .cannotConnect, .connectionLost: 3
        case .timedOut, .notReturned: 4
        case .serverError, .streamEnded: 5
        }
    }

    /// The line for stderr (nil when there is nothing to say).
    public var message: String? {
        switch self {
        case .completed, .interrupted: nil
        case .cannotConnect(let path, let reason): "cannot connect to \(path): \(reason)"
        case .connectionLost(let path, let reason): "connection to \(path) lost: \(reason)"
        case .timedOut(let missing): "timed out; never arrived: " + missing.joined(separator: ", ")
        case .notReturned(let missing): "FetchSecrets did not return: " + missing.joined(separator: ", ")
        case .serverError(let status):
            "server returned \(statusName(status.code)) (\(status.code.rawValue))"
                + (status.message.isEmpty ? "" : ": \(status.message)")
        case .streamEnded(let name): "server ended the stream for \(name) before sds-dump was done"
        }
    }
}

/// The upper-snake name gRPC documents for a status code (`PERMISSION_DENIED`).
public func statusName(_ code: GRPCStatus.Code) -> String {
    var out = ""
    for character in "\(code)" {
        if character.isUppercase { out += "_" }
        out += character.uppercased()
    }
    return out
}

/// The protocol side of sds-dump, with no I/O: which requests to send, what to ACK or NACK, when an update is
/// complete, when the run is over. The shell (`DumpClient`) opens one call per stream, sends what it is told,
/// and feeds back responses, call ends, the timeout and signals.
///
/// ```
///   start ──► waitingForEveryName ──(last name arrives)──► emit ─┬─ no --watch, or --fetch ──► finished(completed)
///                 │                                             └─ --watch ──► watching
///                 ├── --timeout ──► finished(timedOut: names still missing)
///                 └── error status ──► finished(serverError)
///   watching ──(push)──► emit ──(--count reached)──► finished(completed)
///      └── SIGINT ──► finished(interrupted)
/// ```
///
/// Every response is answered like Envoy does: an ACK (version and nonce of the response), or with --nack (or a
/// secret that cannot be read) a NACK (nonce, the last accepted version, error_detail set).
public struct DumpSession: Sendable {
    public enum Action: Sendable {
        /// Open stream `stream` (index into `streamNames`) and send `request` on it.
        case openSotW(stream: Int, DiscoveryRequest)
        case openDelta(stream: Int, DeltaDiscoveryRequest)
        /// The one FetchSecrets call.
        case fetch(DiscoveryRequest)
        case sendSotW(stream: Int, DiscoveryRequest)
        case sendDelta(stream: Int, DeltaDiscoveryRequest)
        /// Print (and write to --pem-dir) this update.
        case emit(DumpUpdate)
        /// Something worth a line on stderr that does not end the run (a rejected secret).
        case warn(String)
        case finish(DumpOutcome)
    }

    enum State: Sendable {
        case idle
        case waitingForEveryName
        case watching(updates: Int)
        case finished(DumpOutcome)
    }

    public static let secretTypeURL = Secret.typeURL

    public let names: [String]
    public let mode: DumpMode
    public let watch: Bool
    public let count: Int?
    public let nack: Bool
    public let node: Node
    private var state: State = .idle
    /// The newest secret per name.
    private var latest: [String: ReceivedSecret] = [:]
    /// SotW: per stream, the version last ACKed (sent back in a NACK, as Envoy does).
    private var acceptedVersions: [String]

    public init(options: DumpOptions) {
        self.names = options.names
        self.mode = options.mode
        self.watch = options.watch && options.mode != .fetch
        self.count = options.count
        self.nack = options.nack
        self.node = Node(id: options.nodeID ?? "", cluster: options.cluster ?? "", userAgentName: "sds-dump")
        self.acceptedVersions = Array(repeating: "", count: options.names.count)
    }

    public var outcome: DumpOutcome? {
        if case .finished(let outcome) = state { return outcome }
        return nil
    }

    /// The name each stream subscribes to (one stream per name, like Envoy).
    public var streamNames: [String] { names }

    /// Names not received yet, in the order given.
    public var missingNames: [String] { names.filter { latest[$0] == nil } }

    public mutating func start() -> [Action] {
        guard case .idle = state else { return [] }
        state = .waitingForEveryName
        switch mode {
        case .sotw:
            return names.indices.map { .openSotW(stream: $0, sotwRequest(stream: $0, version: "", nonce: "")) }
        case .delta:
            return names.indices.map {
                .openDelta(
                    stream: $0,
                    DeltaDiscoveryRequest(node: node, typeURL: Self.secretTypeURL, resourceNamesSubscribe: [names[$0]]))
            }
        case .fetch:
            return [.fetch(DiscoveryRequest(node: node, resourceNames: names, typeURL: Self.secretTypeURL))]
        }
    }

    private func sotwRequest(stream: Int, version: String, nonce: String, error: RPCStatus? = nil) -> DiscoveryRequest {
        DiscoveryRequest(
            versionInfo: version, node: node, resourceNames: [names[stream]], typeURL: Self.secretTypeURL,
            responseNonce: nonce, errorDetail: error)
    }

    private var isActive: Bool {
        switch state {
        case .waitingForEveryName, .watching: true
        case .idle, .finished: false
        }
    }

    // MARK: Responses

    public mutating func receivedSotW(stream: Int, _ response: DiscoveryResponse, at now: Timestamp) -> [Action] {
        guard isActive, names.indices.contains(stream) else { return [] }
        var actions: [Action] = []
        var received: [ReceivedSecret] = []
        var rejections: [String] = []
        for resource in response.resources {
            do {
                let secret = try resource.unpack(Secret.self)
                // A SotW stream answers for its own subscription; anything else is not ours to show.
                guard secret.name == names[stream] else { continue }
                received.append(try ReceivedSecret(secret, version: response.versionInfo))
            } catch {
                rejections.append("\(error)")
            }
        }
        if rejections.isEmpty && !nack {
            acceptedVersions[stream] = response.versionInfo
            actions.append(
                .sendSotW(
                    stream: stream,
                    sotwRequest(
                        stream: stream, version: response.versionInfo,
                        nonce: response.nonce)))
        } else {
            let detail = nackDetail(rejections)
            actions += rejections.map { .warn("rejected: \($0)") }
            actions.append(
                .sendSotW(
                    stream: stream,
                    sotwRequest(
                        stream: stream, version: acceptedVersions[stream],
                        nonce: response.nonce, error: detail)))
        }
        // A response with an unreadable secret is rejected whole, as Envoy rejects it.
        if rejections.isEmpty { actions += arrived(received, at: now) }
        return actions
    }

    public mutating func receivedDelta(stream: Int, _ response: DeltaDiscoveryResponse, at now: Timestamp) -> [Action] {
        guard isActive, names.indices.contains(stream) else { return [] }
        var actions: [Action] = []
        var received: [ReceivedSecret] = []
        var rejections: [String] = []
        for resource in response.resources where resource.name == names[stream] {
            do {
                guard let any = resource.resource else {
                    throw ReceivedSecret.Rejection(description: "resource \(resource.name) has no body")
                }
                var secret = try any.unpack(Secret.self)
                if secret.name.isEmpty { secret.name = resource.name }
                received.append(try ReceivedSecret(secret, version: resource.version))
            } catch {
                rejections.append("\(error)")
            }
        }
        var reply = DeltaDiscoveryRequest(node: node, typeURL: Self.secretTypeURL, responseNonce: response.nonce)
        if !rejections.isEmpty || nack {
            actions += rejections.map { .warn("rejected: \($0)") }
            reply.errorDetail = nackDetail(rejections)
        }
        actions.append(.sendDelta(stream: stream, reply))
        if rejections.isEmpty { actions += arrived(received, at: now) }
        return actions
    }

    public mutating func receivedFetch(_ response: DiscoveryResponse, at now: Timestamp) -> [Action] {
        guard isActive else { return [] }
        var received: [ReceivedSecret] = []
        for resource in response.resources {
            do {
                let secret = try resource.unpack(Secret.self)
                guard names.contains(secret.name) else { continue }
                received.append(try ReceivedSecret(secret, version: response.versionInfo))
            } catch {
                return [.warn("rejected: \(error)")]
            }
        }
        return arrived(received, at: now)
    }

    private func nackDetail(_ rejections: [String]) -> RPCStatus {
        // INVALID_ARGUMENT, as Envoy sends when it rejects a secret.
        RPCStatus(
            code: Int32(GRPCStatus.Code.invalidArgument.rawValue),
            message: rejections.isEmpty ? "sds-dump --nack: rejected on request" : rejections.joined(separator: "; "))
    }

    private mutating func arrived(_ received: [ReceivedSecret], at now: Timestamp) -> [Action] {
        for secret in received { latest[secret.name] = secret }
        switch state {
        case .waitingForEveryName:
            guard missingNames.isEmpty else { return [] }
            let update = makeUpdate(names.compactMap { latest[$0] }, at: now)
            if watch && count != 1 {
                state = .watching(updates: 1)
                return [.emit(update)]
            }
            return [.emit(update), finish(.completed)]
        case .watching(let updates):
            guard !received.isEmpty else { return [] }
            let pushed = names.filter { name in received.contains { $0.name == name } }.compactMap { latest[$0] }
            let update = makeUpdate(pushed, at: now)
            if let count, updates + 1 >= count { return [.emit(update), finish(.completed)] }
            state = .watching(updates: updates + 1)
            return [.emit(update)]
        case .idle, .finished:
            return []
        }
    }

    private func makeUpdate(_ secrets: [ReceivedSecret], at now: Timestamp) -> DumpUpdate {
        let bundles = names.compactMap { latest[$0]?.trustedCAs }.flatMap { $0 }
        return DumpUpdate(time: now, mode: mode, secrets: secrets, bundles: bundles)
    }

    private mutating func finish(_ outcome: DumpOutcome) -> Action {
        state = .finished(outcome)
        return .finish(outcome)
    }

    // MARK: Other events

    /// A call ended. `stream` is nil for the fetch call.
    public mutating func callFinished(stream: Int?, status: GRPCStatus) -> [Action] {
        guard isActive else { return [] }
        if status.code != .ok { return [finish(.serverError(status))] }
        guard let stream, names.indices.contains(stream) else {
            // FetchSecrets ended OK: if its answer did not finish the run, names were missing from it.
            return [finish(.notReturned(missing: missingNames))]
        }
        return [finish(.streamEnded(name: names[stream]))]
    }

    /// --timeout passed; only matters while names are still missing.
    public mutating func timedOut() -> [Action] {
        guard case .waitingForEveryName = state else { return [] }
        return [finish(.timedOut(missing: missingNames))]
    }

    public mutating func interrupted() -> [Action] {
        guard isActive else { return [] }
        if case .watching = state { return [finish(.interrupted(watching: true))] }
        return [finish(.interrupted(watching: watch))]
    }

    public mutating func connectionLost(path: String, reason: String) -> [Action] {
        guard isActive else { return [] }
        return [finish(.connectionLost(path: path, reason: reason))]
    }
}
