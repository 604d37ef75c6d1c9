private import COpenSSL

/// The pieces of JSON Web Signatures that need OpenSSL: ES256 (RFC 7518 §3.4) signatures and the base64url
/// alphabet (RFC 4648 §5, unpadded, as JWS uses it). Token layout and JSON are the caller's.
public enum Base64URL {
    /// Unpadded base64url of `bytes`: OpenSSL's `EVP_EncodeBlock`, then the URL alphabet (`+/` → `-_`) and the
    /// padding dropped.
    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        let length = bytes.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { output in
                EVP_EncodeBlock(output.baseAddress, input.baseAddress, Int32(input.count))
            }
        }
        var text = out.prefix(Int(length))
        while text.last == UInt8(ascii: "=") { text.removeLast() }
        return String(
            decoding: text.map {
                switch $0 {
                case UInt8(ascii: "+"): UInt8(ascii: "-")
                case UInt8(ascii: "/"): UInt8(ascii: "_")
                default: $0
                }
            }, as: UTF8.self)
    }

    /// The bytes of unpadded base64url `text`; nil for any character outside the URL alphabet (padding,
    /// whitespace and `+/` included: JWS allows none of them) or an impossible length.
    public static func decode(_ text: Substring) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 4 != 1 else { return nil }
        var standard = [UInt8]()
        standard.reserveCapacity(utf8.count + 3)
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"):
                standard.append(byte)
            case UInt8(ascii: "-"): standard.append(UInt8(ascii: "+"))
            case UInt8(ascii: "_"): standard.append(UInt8(ascii: "/"))
            default: return nil
            }
        }
        let padding = (4 - standard.count % 4) % 4
        standard += [UInt8](repeating: UInt8(ascii: "="), count: padding)
        guard !standard.isEmpty else { return [] }
        var out = [UInt8](repeating: 0, count: standard.count / 4 * 3)
        let length = standard.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { output in
                EVP_DecodeBlock(output.baseAddress, input.baseAddress, Int32(input.count))
            }
        }
        // EVP_DecodeBlock counts the padding as zero bytes of output.
        guard length >= padding else { return nil }
        return Array(out.prefix(Int(length) - padding))
    }
}

/// The byte length of each of r and s in a P-256 ES256 signature.
private let es256ScalarBytes = 32

extension PrivateKey {
    /// An ES256 signature of `message`: ECDSA P-256 over SHA-256, as JWS wants it, `r || s` (32 bytes each)
    /// rather than the DER `ECDSA-Sig-Value` OpenSSL produces.
    public func signES256(_ message: [UInt8]) throws -> [UInt8] {
        guard algorithm == .ecdsaP256 else { throw PKIError(operation: "ES256 needs a P-256 key") }
        PKIError.clearErrorQueue()
        guard let context = EVP_MD_CTX_new() else { throw PKIError.openSSL("allocating a digest context") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, handle.pointer) == 1 else {
            throw PKIError.openSSL("starting an ES256 signature")
        }
        var length = 0
        guard EVP_DigestSign(context, nil, &length, message, message.count) == 1 else {
            throw PKIError.openSSL("sizing an ES256 signature")
        }
        var der = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &der, &length, message, message.count) == 1 else {
            throw PKIError.openSSL("signing ES256")
        }
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return d2i_ECDSA_SIG(nil, &cursor, length)
        }
        guard let signature = parsed else { throw PKIError.openSSL("parsing the ECDSA signature") }
        defer { ECDSA_SIG_free(signature) }
        var raw = [UInt8](repeating: 0, count: 2 * es256ScalarBytes)
        let written = raw.withUnsafeMutableBufferPointer { buffer in
            BN_bn2binpad(ECDSA_SIG_get0_r(signature), buffer.baseAddress, Int32(es256ScalarBytes))
                + BN_bn2binpad(
                    ECDSA_SIG_get0_s(signature), buffer.baseAddress! + es256ScalarBytes, Int32(es256ScalarBytes))
        }
        guard written == Int32(2 * es256ScalarBytes) else { throw PKIError.openSSL("encoding r || s") }
        return raw
    }
}

extension PublicKey {
    /// Whether `signature` (`r || s`, 64 bytes) is this P-256 key's ES256 signature of `message`.
    public func verifyES256(_ message: [UInt8], signature: [UInt8]) -> Bool {
        guard signature.count == 2 * es256ScalarBytes, (try? handle.algorithm()) == .ecdsaP256 else { return false }
        defer { PKIError.clearErrorQueue() }
        guard let ecdsa = ECDSA_SIG_new() else { return false }
        defer { ECDSA_SIG_free(ecdsa) }
        let r = BN_bin2bn(signature, Int32(es256ScalarBytes), nil)
        let s = signature.withUnsafeBufferPointer {
            BN_bin2bn($0.baseAddress! + es256ScalarBytes, Int32(es256ScalarBytes), nil)
        }
        guard let r, let s else {
            BN_free(r)
            BN_free(s)
            return false
        }
        guard ECDSA_SIG_set0(ecdsa, r, s) == 1 else {
            BN_free(r)
            BN_free(s)
            return false
        }
        let derLength = i2d_ECDSA_SIG(ecdsa, nil)
        guard derLength > 0 else { return false }
        var der = [UInt8](repeating: 0, count: Int(derLength))
        der.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_ECDSA_SIG(ecdsa, &cursor)
        }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, handle.pointer) == 1 else { return false }
        return EVP_DigestVerify(context, der, der.count, message, message.count) == 1
    }

    /// The affine coordinates of a P-256 key, 32 bytes each, big-endian (a JWK's `x` and `y`).
    public func ecCoordinates() throws -> (x: [UInt8], y: [UInt8]) {
        guard (try? handle.algorithm()) == .ecdsaP256 else { throw PKIError(operation: "not a P-256 key") }
        func coordinate(_ name: String) throws -> [UInt8] {
            var number: OpaquePointer?
            guard EVP_PKEY_get_bn_param(handle.pointer, name, &number) == 1, let number else {
                throw PKIError.openSSL("reading the EC public key's \(name)")
            }
            defer { BN_free(number) }
            var out = [UInt8](repeating: 0, count: es256ScalarBytes)
            guard BN_bn2binpad(number, &out, Int32(es256ScalarBytes)) == Int32(es256ScalarBytes) else {
                throw PKIError.openSSL("encoding the EC public key's \(name)")
            }
            return out
        }
        // OSSL_PKEY_PARAM_EC_PUB_X / _Y.
        return (try coordinate("qx"), try coordinate("qy"))
    }
}

/// Random bytes from OpenSSL's CSPRNG (key IDs and the like).
public enum RandomBytes {
    public static func make(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        guard RAND_bytes(&out, Int32(count)) == 1 else { throw PKIError.openSSL("drawing random bytes") }
        return out
    }
}
