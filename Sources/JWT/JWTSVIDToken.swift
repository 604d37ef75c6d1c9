public import JSONText
public import PKI
public import SPIFFE

/// A key that signs JWT-SVIDs: ES256 (P-256), named by `kid` in every token header and in the JWT bundle.
public struct JWTSigningKey: Sendable {
    public let kid: String
    public let privateKey: PrivateKey
    public let createdAt: Timestamp
    public let notAfter: Timestamp

    public init(kid: String, privateKey: PrivateKey, createdAt: Timestamp, notAfter: Timestamp) {
        self.kid = kid
        self.privateKey = privateKey
        self.createdAt = createdAt
        self.notAfter = notAfter
    }

    /// A fresh key with a random `kid` (24 random bytes, base64url: 32 characters).
    public static func generate(now: Timestamp, lifetime: Int64) throws -> JWTSigningKey {
        JWTSigningKey(
            kid: Base64URL.encode(try RandomBytes.make(24)), privateKey: try PrivateKey.generate(), createdAt: now,
            notAfter: now + lifetime)
    }
}

/// What a validated JWT-SVID says.
public struct JWTSVIDClaims: Sendable, Equatable {
    public var subject: SPIFFEID
    public var audiences: [String]
    public var issuedAt: Timestamp?
    public var expiresAt: Timestamp
    public var keyID: String
}

/// Why a token is not a valid JWT-SVID (for the caller's status message).
public struct JWTSVIDError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// JWT-SVIDs (SPIFFE JWT-SVID spec, RFC 7519 compact JWS): minting and validating. Pure (time is a parameter);
/// the fuzz targets can call `validate` directly.
public enum JWTSVIDToken {
    /// Tokens longer than this are refused before any decoding: ours are ~400 bytes; 8 KiB is far more than a
    /// JWT-SVID with many audiences needs, and bounds what an untrusted `ValidateJWTSVID` caller makes us parse.
    public static let maxTokenBytes = 8 * 1024

    /// A signed JWT-SVID: header `{"alg":"ES256","kid":…,"typ":"JWT"}`, claims `sub`, `aud` (a string for one
    /// audience, else an array), `exp`, `iat`.
    public static func mint(
        subject: SPIFFEID, audiences: [String], issuedAt: Timestamp, expiresAt: Timestamp, key: JWTSigningKey
    ) throws -> String {
        let header = JSONValue.object([
            ("alg", .string("ES256")), ("kid", .string(key.kid)), ("typ", .string("JWT")),
        ])
        let audience: JSONValue =
            audiences.count == 1 ? .string(audiences[0]) : .array(audiences.map { .string($0) })
        let claims = JSONValue.object([
            ("aud", audience), ("exp", .int(expiresAt.secondsSinceEpoch)), ("iat", .int(issuedAt.secondsSinceEpoch)),
            ("sub", .string(subject.uri)),
        ])
        let signingInput =
            Base64URL.encode(Array(header.rendered.utf8)) + "." + Base64URL.encode(Array(claims.rendered.utf8))
        let signature = try key.privateKey.signES256(Array(signingInput.utf8))
        return signingInput + "." + Base64URL.encode(signature)
    }

    /// Validates `token` as a JWT-SVID for `audience` at `now`: ES256 only, a `kid` found in `keys` whose
    /// signature matches, `sub` a SPIFFE ID of `trustDomain`, `aud` containing `audience`, not expired (`exp`
    /// required). `keys` maps key IDs to the public keys of the trust domain's JWT bundle.
    public static func validate(
        _ token: String, audience: String, keys: [String: PublicKey], trustDomain: TrustDomain, now: Timestamp
    ) throws(JWTSVIDError) -> JWTSVIDClaims {
        guard token.utf8.count <= maxTokenBytes else { throw JWTSVIDError("token longer than \(maxTokenBytes) bytes") }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw JWTSVIDError("not a compact JWS (header.payload.signature)") }
        guard let headerBytes = Base64URL.decode(parts[0]), let claimBytes = Base64URL.decode(parts[1]),
            let signature = Base64URL.decode(parts[2])
        else { throw JWTSVIDError("malformed base64url") }
        let header: JSONValue
        let claims: JSONValue
        do throws(JSONParseError) {
            header = try JSONValue.parse(headerBytes)
            claims = try JSONValue.parse(claimBytes)
        } catch {
            throw JWTSVIDError("malformed JSON: \(error)")
        }
        guard case .string("ES256") = header["alg"] else { throw JWTSVIDError("unsupported alg (ES256 only)") }
        if let typ = header["typ"], typ != .string("JWT"), typ != .string("JOSE") {
            throw JWTSVIDError("unsupported typ")
        }
        guard case .string(let kid) = header["kid"] else { throw JWTSVIDError("no kid in the header") }
        guard let key = keys[kid] else { throw JWTSVIDError("unknown kid \"\(kid)\" (not in the JWT bundle)") }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard key.verifyES256(signingInput, signature: signature) else { throw JWTSVIDError("bad signature") }

        guard case .string(let sub) = claims["sub"], let subject = try? SPIFFEID(parsing: sub) else {
            throw JWTSVIDError("sub is not a SPIFFE ID")
        }
        guard subject.trustDomain == trustDomain else {
            throw JWTSVIDError("sub \(sub) is not in trust domain \(trustDomain)")
        }
        let audiences: [String]
        switch claims["aud"] {
        case .string(let one): audiences = [one]
        case .array(let many):
            audiences = try many.map { value throws(JWTSVIDError) in
                guard case .string(let text) = value else { throw JWTSVIDError("aud holds a non-string") }
                return text
            }
        default: throw JWTSVIDError("no aud")
        }
        guard audiences.contains(audience) else { throw JWTSVIDError("audience \"\(audience)\" not in aud") }
        guard case .int(let exp) = claims["exp"] else { throw JWTSVIDError("no exp") }
        guard now.secondsSinceEpoch < exp else { throw JWTSVIDError("token expired") }
        var issuedAt: Timestamp?
        if case .int(let iat) = claims["iat"] { issuedAt = Timestamp(secondsSinceEpoch: iat) }
        return JWTSVIDClaims(
            subject: subject, audiences: audiences, issuedAt: issuedAt, expiresAt: Timestamp(secondsSinceEpoch: exp),
            keyID: kid)
    }

    /// The claims of `token` without checking anything but its shape (sds-dump's view of a served token).
    public static func unverifiedClaims(_ token: String) -> JSONValue? {
        guard token.utf8.count <= maxTokenBytes else { return nil }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let bytes = Base64URL.decode(parts[1]) else { return nil }
        return try? JSONValue.parse(bytes)
    }
}

/// A JWT bundle as the Workload API carries it: a JWKS document (RFC 7517) of EC P-256 keys with `use` set to
/// `jwt-svid` (SPIFFE Trust Domain and Bundle spec).
public enum JWKS {
    public static func document(_ keys: [JWTSigningKey]) throws -> [UInt8] {
        let entries = try keys.map { try entry(kid: $0.kid, publicKey: $0.privateKey.publicKey) }
        return Array(JSONValue.object([("keys", .array(entries))]).rendered.utf8)
    }

    /// A JWKS document of JWK objects already rendered as JSON (a federated SPIFFE bundle's `jwt-svid` keys).
    public static func document(rendered keys: [String]) -> [UInt8] {
        Array(("{\"keys\":[" + keys.joined(separator: ",") + "]}").utf8)
    }

    /// The EC P-256 verification keys among `keys` (rendered JWK objects), by `kid`: what a federated domain signs
    /// its JWT-SVIDs with. Keys of another type or curve, or without a `kid`, are skipped (ES256 is the only
    /// algorithm validated here, and a key without a kid can never be chosen).
    public static func verificationKeys(rendered keys: [String]) -> [String: PublicKey] {
        // SubjectPublicKeyInfo of an id-ecPublicKey / prime256v1 key, up to the uncompressed point (RFC 5480).
        let prefix: [UInt8] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A, 0x86,
            0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ]
        var result: [String: PublicKey] = [:]
        for rendered in keys {
            guard let jwk = try? JSONValue.parse(Array(rendered.utf8)),
                case .string("EC") = jwk["kty"], case .string("P-256") = jwk["crv"],
                case .string(let kid) = jwk["kid"], !kid.isEmpty,
                case .string(let x) = jwk["x"], case .string(let y) = jwk["y"],
                let xBytes = Base64URL.decode(Substring(x)), let yBytes = Base64URL.decode(Substring(y)),
                xBytes.count == 32, yBytes.count == 32,
                let key = try? PublicKey(spkiDER: prefix + xBytes + yBytes)
            else { continue }
            result[kid] = key
        }
        return result
    }

    /// One JWT authority as a JWK: `use`, `kty`, `kid`, then the key's parameters. The same object in the Workload
    /// API's JWT bundle and in the SPIFFE bundle document (`sds-agent bundle show`), so the two cannot disagree.
    public static func entry(kid: String, publicKey: PublicKey) throws -> JSONValue {
        let members = SPIFFEBundle.jwkMembers(try publicKey.jwkParameters())
        return .object(
            [("use", .string("jwt-svid")), members[0], ("kid", .string(kid))] + members.dropFirst())
    }
}
