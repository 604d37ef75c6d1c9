import GRPC
import Issuance
import PKI
import SPIFFE
import TestSupport
import Wire
import WorkloadAPIClient

/// Workload API responses made from `TestCA`s, and a compact view of the machine's actions for `#expect`.
struct Upstream {
    let ca: TestCA
    let other: TestCA
    let now = FakeClock.defaultStart
    static let workload = "spiffe://example.org/ns/default/sa/web"

    init() throws {
        ca = try TestCA(trustDomain: "example.org")
        other = try TestCA(trustDomain: "other.org")
    }

    /// An SVID message for `spiffeID` (valid unless `options` breaks it).
    func svid(_ spiffeID: String = Upstream.workload, options: ((inout TestCA.LeafOptions) -> Void)? = nil) throws
        -> X509SVIDMessage
    {
        var leafOptions = TestCA.LeafOptions(spiffeID: spiffeID)
        options?(&leafOptions)
        let leaf = try ca.makeLeaf(leafOptions)
        return X509SVIDMessage(
            spiffeID: spiffeID, x509SVID: Certificate.concatenatedDER(leaf.chain), x509SVIDKey: try leaf.key.pkcs8DER(),
            bundle: ca.bundle.der)
    }

    func response(_ svids: [X509SVIDMessage], federated: [String: [UInt8]] = [:]) -> X509SVIDResponse {
        X509SVIDResponse(svids: svids, federatedBundles: federated)
    }
}

/// What an action is, in words (IdentityUpdate is not Equatable; the SPIFFE ID and bundle names say enough).
enum Step: Equatable, CustomStringConvertible {
    case connect(Int)
    case close
    case retry(Double)
    case cancelRetry
    case deliver(id: String, bundles: [String])
    case report(IssuerError.Kind)

    init(_ action: WorkloadAPIClientStateMachine.Action) {
        switch action {
        case .connect(let attempt): self = .connect(attempt)
        case .closeConnection: self = .close
        case .scheduleRetry(let delay): self = .retry((delay * 1000).rounded() / 1000)
        case .cancelRetry: self = .cancelRetry
        case .deliver(let update):
            self = .deliver(id: update.svid.spiffeID.uri, bundles: update.bundles.map(\.trustDomain.name))
        case .report(let error): self = .report(error.kind)
        }
    }

    var description: String {
        switch self {
        case .connect(let attempt): "connect(\(attempt))"
        case .close: "close"
        case .retry(let delay): "retry(\(delay))"
        case .cancelRetry: "cancelRetry"
        case .deliver(let id, let bundles): "deliver(\(id), \(bundles))"
        case .report(let kind): "report(\(kind))"
        }
    }
}

func steps(_ actions: [WorkloadAPIClientStateMachine.Action]) -> [Step] { actions.map(Step.init) }

func reports(_ actions: [WorkloadAPIClientStateMachine.Action]) -> [IssuerError] {
    actions.compactMap { if case .report(let error) = $0 { error } else { nil } }
}

func updates(_ actions: [WorkloadAPIClientStateMachine.Action]) -> [IdentityUpdate] {
    actions.compactMap { if case .deliver(let update) = $0 { update } else { nil } }
}
