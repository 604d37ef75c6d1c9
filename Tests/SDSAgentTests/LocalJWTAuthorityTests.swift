import Foundation
import GRPC
import Issuance
import JSONText
import JWT
import PKI
import SPIFFE
import TestSupport
import Testing
import Wire

@testable import SDSAgent
@testable import Servers

/// The local CA's JWT-SVIDs through the Workload API service, in memory, on a fake clock.
@Suite struct LocalJWTAuthorityTests {
    let clock = FakeClock()
    let dir = NSTemporaryDirectory() + "sds-jwt-authority-" + UUID().uuidString
    let id = try! SPIFFEID(parsing: "spiffe://example.org/app")

    func authority(keyLifetime: Int64 = 6000) throws -> LocalJWTAuthority {
        let keys = try JWTSigningKeys.open(
            stateDirectory: dir, now: clock.now(), keyLifetime: keyLifetime, tokenLifetime: 300)
        return try LocalJWTAuthority(keys: keys, spiffeID: id, ttl: 300, clock: clock)
    }

    func harness(_ authority: LocalJWTAuthority) throws -> WorkloadHarness {
        let h = try WorkloadHarness()
        h.service.jwt = authority
        h.service.publishJWTBundles(try authority.bundles())
        return h
    }

    @Test func fetchValidateAndBundleThroughTheService() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try harness(try authority())
        let (_, fetched) = try h.open(.fetchJWTSVID, request: JWTSVIDRequest(audience: ["db"]).wireBytes())
        #expect(fetched.status == .ok)
        let token = try JWTSVIDResponse(wireBytes: fetched.messages[0]).svids[0].svid

        let (_, valid) = try h.open(
            .validateJWTSVID, request: ValidateJWTSVIDRequest(audience: "db", svid: token).wireBytes())
        let validated = try ValidateJWTSVIDResponse(wireBytes: valid.messages[0])
        #expect(validated.spiffeID == id.uri)
        #expect(validated.claims["sub"] == .string(id.uri))
        #expect(validated.claims["aud"] == .list([.string("db")]))
        #expect(validated.claims["exp"] == .number(Double(clock.now().secondsSinceEpoch + 300)))
        let (_, wrongAudience) = try h.open(
            .validateJWTSVID, request: ValidateJWTSVIDRequest(audience: "web", svid: token).wireBytes())
        #expect(wrongAudience.status?.code == .invalidArgument)

        let (_, bundles) = try h.open(.fetchJWTBundles)
        let jwks = try JWTBundlesResponse(wireBytes: bundles.messages[0]).bundles["spiffe://example.org"]
        #expect(jwks.map { String(decoding: $0, as: UTF8.self).contains("\"use\":\"jwt-svid\"") } == true)
        #expect(bundles.status == nil, "the bundles stream stays open")
    }

    /// A token minted in a federated domain (with that domain's keys) validates once its bundle's JWT keys are
    /// known, and its JWKS is published with ours; a token of an unfederated domain does not.
    @Test func aFederatedDomainsTokenValidatesWithItsOwnKeys() throws {
        let otherDir = dir + "-b"
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: otherDir)
        }
        let local = try authority()
        let otherID = try SPIFFEID(parsing: "spiffe://b.org/ns/pay/sa/payment")
        let otherKeys = try JWTSigningKeys.open(
            stateDirectory: otherDir, now: clock.now(), keyLifetime: 6000, tokenLifetime: 300)
        let other = try LocalJWTAuthority(keys: otherKeys, spiffeID: otherID, ttl: 300, clock: clock)
        let token = try other.token(for: ["db"]).token
        let h = try harness(local)
        // Weak: the service holds the authority (as its JWT provider).
        local.onBundleChanged = { [weak service = h.service] in service?.publishJWTBundles($0) }
        func validate() throws -> Received {
            try h.open(.validateJWTSVID, request: ValidateJWTSVIDRequest(audience: "db", svid: token).wireBytes()).1
        }
        #expect(try validate().status?.code == .invalidArgument, "b.org is not federated yet")

        let jwks = try JSONValue.parse(try other.bundles()["spiffe://b.org"] ?? [])
        guard case .array(let keys) = jwks["keys"] ?? .null else {
            Issue.record("no keys in b.org's JWKS")
            return
        }
        let ca = try TestCA(trustDomain: "b.org")
        try local.setFederated([
            try TrustDomain("b.org"): SPIFFEBundle(x509: ca.bundle, jwtKeys: keys.map(\.rendered))
        ])
        let valid = try validate()
        #expect(valid.status == nil || valid.status?.code == .ok)
        #expect(try ValidateJWTSVIDResponse(wireBytes: valid.messages[0]).spiffeID == otherID.uri)

        let (_, bundles) = try h.open(.fetchJWTBundles)
        let published = try JWTBundlesResponse(wireBytes: bundles.messages[0]).bundles
        #expect(Set(published.keys) == ["spiffe://example.org", "spiffe://b.org"])

        // c.org is not federated: its token is refused.
        let stranger = try SPIFFEID(parsing: "spiffe://c.org/x")
        let strangerKeys = try JWTSigningKeys.open(
            stateDirectory: otherDir + "-c", now: clock.now(), keyLifetime: 6000, tokenLifetime: 300)
        defer { try? FileManager.default.removeItem(atPath: otherDir + "-c") }
        let strangerToken = try LocalJWTAuthority(keys: strangerKeys, spiffeID: stranger, ttl: 300, clock: clock)
            .token(for: ["db"]).token
        let (_, refused) = try h.open(
            .validateJWTSVID, request: ValidateJWTSVIDRequest(audience: "db", svid: strangerToken).wireBytes())
        #expect(refused.status?.code == .invalidArgument)
    }

    @Test func requestBoundsAndAnotherIDAreRefused() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try harness(try authority())
        let cases: [(JWTSVIDRequest, GRPCStatus.Code)] = [
            (JWTSVIDRequest(audience: []), .invalidArgument),
            (JWTSVIDRequest(audience: (0...LocalJWTAuthority.maxAudiences).map { "a\($0)" }), .invalidArgument),
            (
                JWTSVIDRequest(audience: [String(repeating: "x", count: LocalJWTAuthority.maxAudienceBytes + 1)]),
                .invalidArgument
            ),
            (JWTSVIDRequest(audience: ["db"], spiffeID: "spiffe://example.org/other"), .permissionDenied),
        ]
        for (request, code) in cases {
            let (_, received) = try h.open(.fetchJWTSVID, request: request.wireBytes())
            #expect(received.status?.code == code)
        }
        let (_, atBound) = try h.open(
            .fetchJWTSVID,
            request: JWTSVIDRequest(audience: (1...LocalJWTAuthority.maxAudiences).map { "a\($0)" }).wireBytes())
        #expect(atBound.status == .ok)
    }

    @Test func keyRotationPublishesBothKeysThenOnlyTheNewOne() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let authority = try authority()
        var published: [[String: [UInt8]]] = []
        authority.onBundleChanged = { published.append($0) }
        let first = authority.signer.kid
        var next = try #require(try authority.advance())
        clock.set(next)
        next = try #require(try authority.advance())
        #expect(published.count == 1 && authority.bundle.count == 2, "successor published beside the old key")
        #expect(authority.signer.kid == first, "the old key still signs")
        let oldToken = try authority.token(for: ["db"]).token
        clock.set(next)
        next = try #require(try authority.advance())
        #expect(authority.signer.kid != first, "the successor signs")
        #expect(authority.bundle.count == 2, "the old key stays while its tokens live")
        let newToken = try authority.token(for: ["db"]).token
        #expect(newToken != oldToken, "a new signer re-mints at once")
        clock.set(next)
        try authority.advance()
        #expect(authority.bundle.map(\.kid) == [authority.signer.kid], "the old key is retired")
        #expect(published.count == 2)
    }
}
