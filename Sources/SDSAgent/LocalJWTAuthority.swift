import GRPC
import Issuance
import JWT
import PKI
import SPIFFE
import Servers
import Wire

/// JWT-SVIDs from the local CA: the state dir's rotating ES256 keys (`JWTSigningKeys`), one token per audience set
/// (`JWTSVIDCache`, re-minted at half-life), the JWT bundle as JWKS, and validation against that bundle.
/// Runs on the event loop thread; every answer is immediate.
final class LocalJWTAuthority: JWTProvider {
    /// A request naming more audiences than this is refused: a token carries them all, and a JWT-SVID is sent in
    /// a header (Envoy's default header limit is 60 KiB in total).
    static let maxAudiences = 32
    /// An audience longer than this is refused, for the same reason.
    static let maxAudienceBytes = 512

    private let keys: JWTSigningKeys
    private let spiffeID: SPIFFEID
    private let ttl: Int64
    private let clock: any WallClock
    private var cache = JWTSVIDCache()
    private(set) var bundle: [JWTSigningKey] = []
    private(set) var signer: JWTSigningKey
    /// The JWT bundle changed (a key was added or retired): JWKS per trust domain ID.
    var onBundleChanged: (([String: [UInt8]]) -> Void)?
    /// Federated trust domains' JWT keys (`--federate-with` bundles' `jwt-svid` keys): tokens of those domains are
    /// validated with them, and their JWKS are published with ours.
    private var federated: [TrustDomain: (jwks: [UInt8], keys: [String: PublicKey])] = [:]

    init(keys: JWTSigningKeys, spiffeID: SPIFFEID, ttl: Int64, clock: any WallClock) throws {
        self.keys = keys
        self.spiffeID = spiffeID
        self.ttl = ttl
        self.clock = clock
        let decision = try keys.advance(now: clock.now())
        self.signer = decision.signer
        self.bundle = decision.bundle
    }

    /// The JWT bundles to publish: this trust domain's JWKS and each federated domain's.
    func bundles() throws -> [String: [UInt8]] {
        var bundles = [spiffeID.trustDomain.idString: try JWKS.document(bundle)]
        for (domain, entry) in federated { bundles[domain.idString] = entry.jwks }
        return bundles
    }

    /// Replaces the federated domains' JWT keys (a domain whose bundle has none is left out: none of its tokens can
    /// be validated, and publishing an empty JWKS would say otherwise).
    func setFederated(_ federatedBundles: [TrustDomain: SPIFFEBundle]) throws {
        var next: [TrustDomain: (jwks: [UInt8], keys: [String: PublicKey])] = [:]
        for (domain, bundle) in federatedBundles where domain != spiffeID.trustDomain && !bundle.jwtKeys.isEmpty {
            next[domain] = (JWKS.document(rendered: bundle.jwtKeys), JWKS.verificationKeys(rendered: bundle.jwtKeys))
        }
        let changed =
            Set(next.keys) != Set(federated.keys) || next.contains { federated[$0.key]?.jwks != $0.value.jwks }
        federated = next
        if changed { onBundleChanged?(try bundles()) }
    }

    /// Applies the key schedule at the current time; returns when it should be asked again.
    @discardableResult
    func advance() throws -> Timestamp? {
        let now = clock.now()
        let decision = try keys.advance(now: now)
        signer = decision.signer
        let changed = decision.bundle.map(\.kid) != bundle.map(\.kid)
        bundle = decision.bundle
        if changed { onBundleChanged?(try bundles()) }
        return keys.nextEventAt(now: now)
    }

    /// A token for `audiences` now (from the cache while in its first half-life).
    func token(for audiences: [String]) throws -> (token: String, issuedAt: Timestamp, expiresAt: Timestamp) {
        try advance()
        let subject = spiffeID
        let result = try cache.token(for: audiences, now: clock.now(), ttl: ttl, signer: signer) {
            audiences, issuedAt, expiresAt in
            try JWTSVIDToken.mint(
                subject: subject, audiences: audiences, issuedAt: issuedAt, expiresAt: expiresAt, key: signer)
        }
        return (result.token, result.issuedAt, result.expiresAt)
    }

    static func checkAudiences(_ audiences: [String]) -> GRPCStatus? {
        if audiences.isEmpty { return GRPCStatus(.invalidArgument, "audience must be specified") }
        if audiences.count > maxAudiences {
            return GRPCStatus(.invalidArgument, "more than \(maxAudiences) audiences")
        }
        if audiences.contains(where: { $0.isEmpty || $0.utf8.count > maxAudienceBytes }) {
            return GRPCStatus(.invalidArgument, "an audience is empty or longer than \(maxAudienceBytes) bytes")
        }
        return nil
    }

    func fetchJWTSVID(_ request: JWTSVIDRequest, reply: @escaping (Result<JWTSVIDResponse, GRPCStatus>) -> Void) {
        if let problem = Self.checkAudiences(request.audience) { return reply(.failure(problem)) }
        if !request.spiffeID.isEmpty, request.spiffeID != spiffeID.uri {
            return reply(.failure(GRPCStatus(.permissionDenied, "no identity issued for \(request.spiffeID)")))
        }
        do {
            let minted = try token(for: request.audience)
            reply(.success(JWTSVIDResponse(svids: [JWTSVIDMessage(spiffeID: spiffeID.uri, svid: minted.token)])))
        } catch {
            reply(.failure(GRPCStatus(.internal, "cannot mint a JWT-SVID: \(error)")))
        }
    }

    func validateJWTSVID(
        _ request: ValidateJWTSVIDRequest, reply: @escaping (Result<ValidateJWTSVIDResponse, GRPCStatus>) -> Void
    ) {
        guard !request.audience.isEmpty else {
            return reply(.failure(GRPCStatus(.invalidArgument, "audience must be specified")))
        }
        guard !request.svid.isEmpty else {
            return reply(.failure(GRPCStatus(.invalidArgument, "svid must be specified")))
        }
        _ = try? advance()
        // The token's own trust domain picks the keys (ours, or a federated domain's); the signature check then
        // proves the choice, and `validate` holds the subject to that domain.
        var trustDomain = spiffeID.trustDomain
        var publicKeys: [String: PublicKey] = [:]
        if case .string(let subject) = JWTSVIDToken.unverifiedClaims(request.svid)?["sub"],
            let domain = try? SPIFFEID(parsing: subject).trustDomain, domain != trustDomain
        {
            guard let entry = federated[domain] else {
                return reply(.failure(GRPCStatus(.invalidArgument, "invalid JWT-SVID: no JWT bundle for \(domain)")))
            }
            trustDomain = domain
            publicKeys = entry.keys
        } else {
            for key in bundle { publicKeys[key.kid] = key.privateKey.publicKey }
        }
        do throws(JWTSVIDError) {
            let claims = try JWTSVIDToken.validate(
                request.svid, audience: request.audience, keys: publicKeys, trustDomain: trustDomain,
                now: clock.now())
            var fields: [String: ProtoValue] = [
                "sub": .string(claims.subject.uri), "aud": .list(claims.audiences.map { .string($0) }),
                "exp": .number(Double(claims.expiresAt.secondsSinceEpoch)),
            ]
            if let issuedAt = claims.issuedAt { fields["iat"] = .number(Double(issuedAt.secondsSinceEpoch)) }
            reply(.success(ValidateJWTSVIDResponse(spiffeID: claims.subject.uri, claims: fields)))
        } catch {
            reply(.failure(GRPCStatus(.invalidArgument, "invalid JWT-SVID: \(error)")))
        }
    }
}
