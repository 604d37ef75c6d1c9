import GRPC
import Wire
import WorkloadAPI

/// The JWT half of the Workload API with `--issuer workload-api`: the upstream (a SPIRE agent) already serves it,
/// so FetchJWTSVID and ValidateJWTSVID are relayed as they are, and its JWT bundles are republished.
final class UpstreamJWTRelay: JWTProvider {
    private let issuer: WorkloadAPIIssuer

    init(issuer: WorkloadAPIIssuer) {
        self.issuer = issuer
    }

    func fetchJWTSVID(_ request: JWTSVIDRequest, reply: @escaping (Result<JWTSVIDResponse, GRPCStatus>) -> Void) {
        if let problem = LocalJWTAuthority.checkAudiences(request.audience) { return reply(.failure(problem)) }
        issuer.relay(.fetchJWTSVID, request: request.wireBytes()) { result in
            reply(Self.decode(result))
        }
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
