private import COpenSSL

extension PublicKey {
    /// A human name for the key's type, for any key OpenSSL parses (not only the ones we issue): `ECDSA P-256`,
    /// `ECDSA P-384`, `RSA 2048`, `Ed25519`. Diagnostic tools print it; nothing decides on it.
    public var typeDescription: String {
        let pointer = handle.pointer
        let base = EVP_PKEY_get_base_id(pointer)
        switch base {
        case EVP_PKEY_EC:
            var buffer = [CChar](repeating: 0, count: 64)
            guard sds_EC_group_name(pointer, &buffer, buffer.count) == 1 else {
                PKIError.clearErrorQueue()
                return "ECDSA"
            }
            let group = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            switch group {
            case "prime256v1", "P-256", "secp256r1": return "ECDSA P-256"
            case "secp384r1", "P-384": return "ECDSA P-384"
            case "secp521r1", "P-521": return "ECDSA P-521"
            default: return "ECDSA \(group)"
            }
        case EVP_PKEY_RSA: return "RSA \(EVP_PKEY_get_bits(pointer))"
        case EVP_PKEY_ED25519: return "Ed25519"
        case EVP_PKEY_ED448: return "Ed448"
        default: return "unknown (NID \(base))"
        }
    }
}
