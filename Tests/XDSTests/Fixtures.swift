import Synchronization
import Wire
import XDS

/// A packed secret whose bytes say which name and content it is, so tests can tell responses apart.
func packedSecret(_ name: String, _ version: String) -> AnyMessage {
    AnyMessage(typeURL: SDS.secretTypeURL, value: Array("\(name)@\(version)".utf8))
}

/// Serves `default`, `ROOTCA` and SPIFFE IDs of `example.org`; never serves anything else.
let istioStyleClassifier: SecretCache.NameClassifier = { name in
    name == "default" || name == "ROOTCA" || name.hasPrefix("spiffe://example.org") ? .served : .neverServed
}

func emptyCache() -> SecretCache { SecretCache(classifier: istioStyleClassifier) }

extension SecretCache {
    /// Stores `name` at `version` with content derived from both.
    @discardableResult
    mutating func put(_ name: String, _ version: String) -> Bool {
        set(name: name, version: version, resource: packedSecret(name, version))
    }
}

let otherTrustDomainID = "spiffe://other.org/ns/default/sa/web"

// MARK: - SotW

func sotwRequest(
    _ names: [String], version: String = "", nonce: String = "", node: Node? = nil,
    typeURL: String = SDS.secretTypeURL, error: RPCStatus? = nil
) -> DiscoveryRequest {
    DiscoveryRequest(
        versionInfo: version, node: node, resourceNames: names, typeURL: typeURL, responseNonce: nonce,
        errorDetail: error)
}

/// The responses among `actions`.
func sent(_ actions: [SotWStream.Action]) -> [DiscoveryResponse] {
    actions.compactMap { if case .send(let response) = $0 { return response } else { return nil } }
}

/// The ACK for `response` (its nonce and version, same names).
func ack(_ response: DiscoveryResponse, names: [String]) -> DiscoveryRequest {
    sotwRequest(names, version: response.versionInfo, nonce: response.nonce)
}

let loadFailure = RPCStatus(code: 13, message: "Failed to load certificate chain from <inline>")

// MARK: - Delta

func deltaRequest(
    subscribe: [String] = [], unsubscribe: [String] = [], initialVersions: [String: String] = [:],
    nonce: String = "", node: Node? = nil, typeURL: String = SDS.secretTypeURL, error: RPCStatus? = nil
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest(
        node: node, typeURL: typeURL, resourceNamesSubscribe: subscribe, resourceNamesUnsubscribe: unsubscribe,
        initialResourceVersions: initialVersions, responseNonce: nonce, errorDetail: error)
}

func sent(_ actions: [DeltaStream.Action]) -> [DeltaDiscoveryResponse] {
    actions.compactMap { if case .send(let response) = $0 { return response } else { return nil } }
}

/// name@version of each resource in a Delta response, for compact expectations.
func contents(_ response: DeltaDiscoveryResponse) -> [String] {
    response.resources.map { "\($0.name)@\($0.version)" }
}

// MARK: - Classifiers with state the test controls

/// The names a test-controlled classifier serves; the set can change mid-test.
final class ServedNames: Sendable {
    private let names: Mutex<Set<String>>
    init(_ names: Set<String>) { self.names = Mutex(names) }
    func contains(_ name: String) -> Bool { names.withLock { $0.contains(name) } }
    func set(_ newNames: Set<String>) { names.withLock { $0 = newNames } }
}

/// Counts calls, to show how much work an event does without timing anything.
final class CallCounter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
    func reset() { count.withLock { $0 = 0 } }
}
