import GRPC
import Servers
import Wire
import WorkloadAPIClient

/// The JWT half of the Workload API with `--issuer workload-api`: the upstream (a SPIRE agent) already serves it,
/// so FetchJWTSVID and ValidateJWTSVID are relayed, and its JWT bundles are republished.
///
/// Scoped to the agent's own identity, as the local CA and the X.509 half are: a SPIRE agent may entitle the pod
/// to several SPIFFE IDs, but this agent serves exactly one (`--spiffe-id`), so a client asking for another is
/// refused (PERMISSION_DENIED) without a call upstream, a request without one asks the upstream for ours only, and
/// whatever the upstream answers is filtered to ours before it reaches the client. ValidateJWTSVID is relayed as
/// it is: validating another workload's token is what it is for, and it returns no credential.
final class UpstreamJWTRelay: JWTProvider {
    private let issuer: WorkloadAPIIssuer
    /// The one SPIFFE ID this agent serves.
    private let spiffeID: String

    init(issuer: WorkloadAPIIssuer, spiffeID: String) {
        self.issuer = issuer
        self.spiffeID = spiffeID
    }

    func fetchJWTSVID(_ request: JWTSVIDRequest, reply: @escaping (Result<JWTSVIDResponse, GRPCStatus>) -> Void) {
        if let problem = LocalJWTAuthority.checkAudiences(request.audience) { return reply(.failure(problem)) }
        if !request.spiffeID.isEmpty, request.spiffeID != spiffeID {
            return reply(.failure(Self.notOurs(request.spiffeID, ours: spiffeID)))
        }
        let scoped = JWTSVIDRequest(audience: request.audience, spiffeID: spiffeID)
        issuer.relay(.fetchJWTSVID, request: scoped.wireBytes()) { [spiffeID] result in
            reply(
                Self.decode(result).flatMap { (response: JWTSVIDResponse) in
                    let ours = response.svids.filter { $0.spiffeID == spiffeID }
                    guard !ours.isEmpty else {
                        return .failure(
                            GRPCStatus(.permissionDenied, "the upstream issued no JWT-SVID for \(spiffeID)"))
                    }
                    return .success(JWTSVIDResponse(svids: ours))
                })
        }
    }

    static func notOurs(_ requested: String, ours: String) -> GRPCStatus {
        GRPCStatus(
            .permissionDenied,
            "this agent serves only \(ours) (--spiffe-id); no JWT-SVID for \(LogSummary.text(requested, maxBytes: 128))"
        )
    }

    func validateJWTSVID(
        _ request: ValidateJWTSVIDRequest, reply: @escaping (Result<ValidateJWTSVIDResponse, GRPCStatus>) -> Void
    ) {
        issuer.relay(.validateJWTSVID, request: request.wireBytes()) { result in
            reply(Self.decode(result))
        }
    }

    private static func decode<Response: WireMessage>(_ result: Result<[UInt8], GRPCStatus>) -> Result<
        Response, GRPCStatus
    > {
        result.flatMap { bytes in
            do { return .success(try Response(wireBytes: bytes)) } catch {
                return .failure(GRPCStatus(.unavailable, "the upstream sent a malformed \(Response.self): \(error)"))
            }
        }
    }
}
