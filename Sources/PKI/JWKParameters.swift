private import COpenSSL

/// The public parameters of a key as a JSON Web Key carries them (RFC 7518 §6.2.1 for EC, §6.3.1 for RSA): what a
/// SPIFFE bundle document says of each authority besides its certificate. Big-endian unsigned bytes; the caller
/// base64url-encodes them. Public material only: nothing of a private key is reachable from here.
public enum JWKPublicParameters: Sendable, Hashable {
    /// `crv` (`P-256`, `P-384`, `P-521`), `x` and `y`, each coordinate padded to the curve's field size as RFC 7518
    /// §6.2.1.2 requires (a verifier compares lengths).
    case ec(curve: String, x: [UInt8], y: [UInt8])
    /// `n` and `e`, minimal (no leading zero bytes, RFC 7518 §6.3.1.1).
    case rsa(modulus: [UInt8], exponent: [UInt8])

    /// The JWK `kty`.
    public var keyType: String {
        switch self {
        case .ec: "EC"
        case .rsa: "RSA"
        }
    }
}

extension PublicKey {
    /// This key's JWK parameters. Any RSA size is described (an operator's root may be larger than the keys the
    /// agent makes); EC keys on the three NIST curves JWK names; anything else (Ed25519, other curves) throws.
    public func jwkParameters() throws -> JWKPublicParameters {
        let pointer = handle.pointer
        PKIError.clearErrorQueue()
        switch EVP_PKEY_get_base_id(pointer) {
        case EVP_PKEY_RSA:
            // OSSL_PKEY_PARAM_RSA_N / _E.
            return .rsa(modulus: try minimalBytes("n"), exponent: try minimalBytes("e"))
        case EVP_PKEY_EC:
            var buffer = [CChar](repeating: 0, count: 64)
            guard sds_EC_group_name(pointer, &buffer, buffer.count) == 1 else {
                throw PKIError.openSSL("reading the EC group of a key")
            }
            let group = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let (curve, size): (String, Int32)
            switch group {
            case "prime256v1", "P-256", "secp256r1": (curve, size) = ("P-256", 32)
            case "secp384r1", "P-384": (curve, size) = ("P-384", 48)
            case "secp521r1", "P-521": (curve, size) = ("P-521", 66)
            default: throw PKIError(operation: "EC curve \(group) has no JWK name (P-256, P-384, P-521 have)")
            }
            // The encoded point, when uncompressed (every key the agent makes or reads in its own shapes), holds both
            // coordinates already padded: a copy, where reading them as numbers (OSSL_PKEY_PARAM_EC_PUB_X / _Y) costs
            // ~100,000 instructions each in OpenSSL 3.0. Any other form is read as numbers.
            let coordinate = Int(size)
            if let point = handle.encodedPublicKey(), point.count == 1 + 2 * coordinate, point[0] == 0x04 {
                return .ec(curve: curve, x: Array(point[1...coordinate]), y: Array(point[(1 + coordinate)...]))
            }
            return .ec(curve: curve, x: try paddedBytes("qx", size: size), y: try paddedBytes("qy", size: size))
        default:
            throw PKIError(operation: "a \(typeDescription) key has no JWK form here (EC and RSA have)")
        }
    }

    private func withBigNumber<T>(_ name: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        var number: OpaquePointer?
        guard EVP_PKEY_get_bn_param(handle.pointer, name, &number) == 1, let number else {
            throw PKIError.openSSL("reading the public key's \(name)")
        }
        defer { BN_free(number) }
        return try body(number)
    }

    private func minimalBytes(_ name: String) throws -> [UInt8] {
        try withBigNumber(name) { number in
            var out = [UInt8](repeating: 0, count: (Int(BN_num_bits(number)) + 7) / 8)
            guard BN_bn2bin(number, &out) == Int32(out.count) else {
                throw PKIError.openSSL("encoding the public key's \(name)")
            }
            return out
        }
    }

    private func paddedBytes(_ name: String, size: Int32) throws -> [UInt8] {
        try withBigNumber(name) { number in
            var out = [UInt8](repeating: 0, count: Int(size))
            guard BN_bn2binpad(number, &out, size) == size else {
                throw PKIError.openSSL("encoding the public key's \(name)")
            }
            return out
        }
    }
}

extension Certificate {
    /// The JWK parameters of the certificate's subject public key (see `PublicKey.jwkParameters`).
    public func publicKeyJWKParameters() throws -> JWKPublicParameters {
        guard let key = publicKey else {
            throw PKIError(operation: "reading a certificate's public key", reasons: ["no decodable key"])
        }
        return try key.jwkParameters()
    }
}
