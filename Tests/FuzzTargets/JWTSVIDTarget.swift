import JSONText
import JWT
import PKI
import SPIFFE

/// What a `ValidateJWTSVID` caller controls: the token text, through base64url, the bounded JSON parser and the
/// JWT-SVID checks. A parsed JSON document must print back to one that parses to the same value; base64url must
/// round-trip.
enum JWTSVIDTarget {
    /// One key for every input: the target checks parsing, not key generation.
    static let key = try! JWTSigningKey.generate(now: Timestamp(secondsSinceEpoch: 1_800_000_000), lifetime: 86_400)
    static let keys = ["fuzz": key.privateKey.publicKey, key.kid: key.privateKey.publicKey]
    static let trustDomain = try! TrustDomain("example.org")

    static func run(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        if let value = try? JSONValue.parse(bytes) {
            guard (try? JSONValue.parse(Array(value.rendered.utf8))) == value else {
                fatalError("JSON does not round-trip: \(value.rendered)")
            }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        if let decoded = Base64URL.decode(Substring(text)) {
            guard Base64URL.decode(Substring(Base64URL.encode(decoded))) == decoded else {
                fatalError("base64url does not round-trip")
            }
        }
        _ = try? JWTSVIDToken.validate(
            text, audience: "db", keys: keys, trustDomain: trustDomain,
            now: Timestamp(secondsSinceEpoch: 1_800_000_100))
        _ = JWTSVIDToken.unverifiedClaims(text)
    }
}
