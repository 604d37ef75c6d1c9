private import COpenSSL

/// The algorithm of a key pair. A struct over an internal enum so algorithms can be added without changing any
/// signature that takes or returns one.
public struct KeyAlgorithm: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case ecdsaP256
        case ecdsaP384
        case rsa(bits: Int)
    }

    let kind: Kind

    /// ECDSA on NIST P-256, signing with SHA-256 (what SPIFFE issues by default, and istio-agent with
    /// `ECC_SIGNATURE_ALGORITHM=ECDSA`).
    public static let ecdsaP256 = KeyAlgorithm(kind: .ecdsaP256)
    /// ECDSA on NIST P-384, signing with SHA-384 (istio-agent's `ECC_CURVE=P384`).
    public static let ecdsaP384 = KeyAlgorithm(kind: .ecdsaP384)
    /// RSA with `bits` modulus bits, signing with SHA-256 (istio-agent's default, RSA-2048).
    public static func rsa(bits: Int) -> KeyAlgorithm { KeyAlgorithm(kind: .rsa(bits: bits)) }

    /// The RSA modulus sizes accepted: below 2048 is broken by current guidance (NIST SP 800-131A), above 4096
    /// costs seconds of CPU per key for no gain any mesh CA asks for.
    public static let rsaBitRange = 2048...4096

    /// Whether this is RSA (generation costs hundreds of milliseconds: never on the event loop).
    public var isRSA: Bool {
        if case .rsa = kind { return true }
        return false
    }

    public var description: String {
        switch kind {
        case .ecdsaP256: "ECDSA P-256"
        case .ecdsaP384: "ECDSA P-384"
        case .rsa(let bits): "RSA \(bits)"
        }
    }

    /// Digest used when this key signs a certificate or CSR.
    var signingDigest: OpaquePointer? {
        switch kind {
        case .ecdsaP256, .rsa: EVP_sha256()
        case .ecdsaP384: EVP_sha384()
        }
    }
}

/// Owns one `EVP_PKEY`; frees it in `deinit`. Keys are never mutated after creation, which is what makes
/// sharing a handle between threads sound (OpenSSL documents EVP_PKEY as safe for concurrent read use).
final class EVPKeyHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    /// The key's PKCS#8 DER once made (OpenSSL 3.0's encoder takes ~0.3 ms for RSA): made on the worker that
    /// produced the key, read on the loop after the hand-over (which orders the two), never written concurrently.
    var cachedPKCS8DER: [UInt8]?
    /// Its PEM (base64 of the DER) once made, under the same rule.
    var cachedPKCS8PEM: String?

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { EVP_PKEY_free(pointer) }

    /// Which supported algorithm this key is; throws for keys we cannot use.
    func algorithm() throws -> KeyAlgorithm {
        let base = EVP_PKEY_get_base_id(pointer)
        if base == EVP_PKEY_RSA {
            let bits = Int(EVP_PKEY_get_bits(pointer))
            guard KeyAlgorithm.rsaBitRange.contains(bits) else {
                throw PKIError(operation: "unsupported RSA key size \(bits) (2048 to 4096 bits are supported)")
            }
            return .rsa(bits: bits)
        }
        guard base == EVP_PKEY_EC else {
            throw PKIError(operation: "unsupported key type (ECDSA P-256, P-384 and RSA are supported)")
        }
        var buffer = [CChar](repeating: 0, count: 64)
        guard sds_EC_group_name(pointer, &buffer, buffer.count) == 1 else {
            throw PKIError.openSSL("reading the EC group of a key")
        }
        let group = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch group {
        case "prime256v1", "P-256", "secp256r1": return .ecdsaP256
        case "secp384r1", "P-384": return .ecdsaP384
        default: throw PKIError(operation: "unsupported EC curve \(group) (P-256 and P-384 are supported)")
        }
    }

    /// An EC key's encoded public point, in the form OpenSSL holds it (uncompressed for every key we make or read in
    /// our own shapes); nil for other keys or on failure. 133 bytes fit P-521's uncompressed point, the largest.
    func encodedPublicKey() -> [UInt8]? {
        var point = [UInt8](repeating: 0, count: 133)
        var length = 0
        guard sds_EVP_PKEY_encoded_public_key(pointer, &point, point.count, &length) == 1 else {
            PKIError.clearErrorQueue()
            return nil
        }
        return Array(point.prefix(length))
    }

    func publicKeyDER() -> [UInt8] {
        let length = i2d_PUBKEY(pointer, nil)
        guard length > 0 else { return [] }
        var out = [UInt8](repeating: 0, count: Int(length))
        out.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_PUBKEY(pointer, &cursor)
        }
        return out
    }
}

/// A private key (opaque): ECDSA P-256 or P-384, or RSA; see `KeyAlgorithm`.
public struct PrivateKey: Sendable {
    let handle: EVPKeyHandle
    public let algorithm: KeyAlgorithm

    init(handle: EVPKeyHandle) throws {
        self.handle = handle
        self.algorithm = try handle.algorithm()
    }

    /// A fresh key pair from OpenSSL's CSPRNG. RSA takes hundreds of milliseconds (RSA-2048 ~200 ms, RSA-4096
    /// seconds): call it off the event loop for RSA. Safe on any thread.
    public static func generate(_ algorithm: KeyAlgorithm = .ecdsaP256) throws -> PrivateKey {
        PKIError.clearErrorQueue()
        let key: OpaquePointer?
        switch algorithm.kind {
        case .ecdsaP256: key = sds_EC_generate("P-256")
        case .ecdsaP384: key = sds_EC_generate("P-384")
        case .rsa(let bits):
            guard KeyAlgorithm.rsaBitRange.contains(bits) else {
                throw PKIError(operation: "unsupported RSA key size \(bits) (2048 to 4096 bits are supported)")
            }
            key = sds_RSA_generate(UInt32(bits))
        }
        guard let key else { throw PKIError.openSSL("generating an \(algorithm) key") }
        return PrivateKey(handle: EVPKeyHandle(taking: key), algorithm: algorithm)
    }

    private init(handle: EVPKeyHandle, algorithm: KeyAlgorithm) {
        self.handle = handle
        self.algorithm = algorithm
    }

    /// A P-256 key from its parts through the EC key manager (see `P256KeyEncoding`); nil if OpenSSL refuses the
    /// point, which the caller then hands to OpenSSL's own parser for its error.
    private static func p256(_ parts: P256KeyEncoding.Parts, pkcs8DER: [UInt8]?) -> PrivateKey? {
        PKIError.clearErrorQueue()
        guard let key = sds_EC_P256_from_raw(parts.scalar, parts.point) else {
            PKIError.clearErrorQueue()
            return nil
        }
        let handle = EVPKeyHandle(taking: key)
        handle.cachedPKCS8DER = pkcs8DER ?? P256KeyEncoding.pkcs8(parts)
        return PrivateKey(handle: handle, algorithm: .ecdsaP256)
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` in DER (what the Workload API carries). Trailing bytes are an error.
    public init(pkcs8DER der: [UInt8]) throws {
        if let parts = P256KeyEncoding.parts(pkcs8: der), let key = Self.p256(parts, pkcs8DER: nil) {
            self = key
            return
        }
        PKIError.clearErrorQueue()
        let info: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            guard let info = d2i_PKCS8_PRIV_KEY_INFO(nil, &cursor, buffer.count) else { return nil }
            if cursor != buffer.baseAddress.map({ $0 + buffer.count }) {
                PKCS8_PRIV_KEY_INFO_free(info)
                return nil
            }
            return info
        }
        guard let info else { throw PKIError.openSSL("parsing a PKCS#8 DER private key") }
        defer { PKCS8_PRIV_KEY_INFO_free(info) }
        guard let key = EVP_PKCS82PKEY(info) else { throw PKIError.openSSL("decoding a PKCS#8 private key") }
        try self.init(handle: EVPKeyHandle(taking: key))
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, what `openssl ecparam
    /// -genkey` writes) or PKCS#1 (`RSA PRIVATE KEY`), so operator-supplied keys load too. Encrypted keys are rejected.
    public init(pem: String) throws {
        if let block = P256KeyEncoding.firstKeyBlock(pem: pem),
            let parts = block.isPKCS8
                ? P256KeyEncoding.parts(pkcs8: block.der) : P256KeyEncoding.parts(sec1: block.der[...]),
            let key = Self.p256(parts, pkcs8DER: nil)
        {
            self = key
            return
        }
        PKIError.clearErrorQueue()
        let bio = try MemoryBIO(bytes: Array(pem.utf8))
        // A nil password callback would make OpenSSL prompt on the terminal for encrypted keys; refuse instead.
        typealias PasswordCallback =
            @convention(c) (
                UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?
            ) -> Int32
        let noPassword: PasswordCallback = { _, _, _, _ in 0 }
        guard let key = PEM_read_bio_PrivateKey(bio.bio, nil, noPassword, nil) else {
            throw PKIError.openSSL("parsing a PEM private key")
        }
        try self.init(handle: EVPKeyHandle(taking: key))
    }

    /// PKCS#8 `PrivateKeyInfo`, DER.
    public func pkcs8DER() throws -> [UInt8] {
        if let cached = handle.cachedPKCS8DER { return cached }
        if algorithm == .ecdsaP256, let parts = rawP256Parts() {
            let der = P256KeyEncoding.pkcs8(parts)
            handle.cachedPKCS8DER = der
            return der
        }
        return try encoderPKCS8DER()
    }

    /// The scalar and uncompressed point of a P-256 key; nil if OpenSSL holds the point in another form.
    private func rawP256Parts() -> P256KeyEncoding.Parts? {
        var scalar = [UInt8](repeating: 0, count: P256KeyEncoding.scalarLength)
        var point = [UInt8](repeating: 0, count: P256KeyEncoding.pointLength)
        var pointLength = 0
        guard sds_EC_raw_parts(handle.pointer, &scalar, scalar.count, &point, point.count, &pointLength) == 1,
            pointLength == P256KeyEncoding.pointLength, point[0] == 0x04
        else {
            PKIError.clearErrorQueue()
            return nil
        }
        return P256KeyEncoding.Parts(scalar: scalar, point: point)
    }

    /// PKCS#8 DER through OpenSSL's encoder (every key that is not P-256; tests compare the P-256 path with it).
    func encoderPKCS8DER() throws -> [UInt8] {
        guard let info = EVP_PKEY2PKCS8(handle.pointer) else { throw PKIError.openSSL("encoding a key as PKCS#8") }
        defer { PKCS8_PRIV_KEY_INFO_free(info) }
        let length = i2d_PKCS8_PRIV_KEY_INFO(info, nil)
        guard length > 0 else { throw PKIError.openSSL("encoding a key as PKCS#8") }
        var out = [UInt8](repeating: 0, count: Int(length))
        out.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_PKCS8_PRIV_KEY_INFO(info, &cursor)
        }
        handle.cachedPKCS8DER = out
        return out
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), unencrypted.
    public func pkcs8PEM() throws -> String {
        if let cached = handle.cachedPKCS8PEM { return cached }
        // The PKCS#8 DER (cached: the Workload API serves it too) in base64 lines, as PEM_write_bio_PrivateKey
        // writes it: OpenSSL 3.0's encoder framework cost a quarter of a rotation's instructions per encoding.
        let pem = PEMEncoding.encode(label: "PRIVATE KEY", der: try pkcs8DER())
        handle.cachedPKCS8PEM = pem
        return pem
    }

    /// The public half.
    public var publicKey: PublicKey { PublicKey(handle: handle) }
}

/// A public key (opaque): from a private key, a certificate or a CSR.
public struct PublicKey: Sendable, Equatable {
    let handle: EVPKeyHandle

    init(handle: EVPKeyHandle) {
        self.handle = handle
    }

    /// `SubjectPublicKeyInfo`, DER.
    public var spkiDER: [UInt8] { handle.publicKeyDER() }

    public static func == (lhs: PublicKey, rhs: PublicKey) -> Bool {
        lhs.handle === rhs.handle || EVP_PKEY_eq(lhs.handle.pointer, rhs.handle.pointer) == 1
    }

    /// Whether `privateKey` is the other half of this key.
    public func matches(_ privateKey: PrivateKey) -> Bool {
        EVP_PKEY_eq(handle.pointer, privateKey.handle.pointer) == 1
    }
}

extension PublicKey {
    /// Parses a DER `SubjectPublicKeyInfo`; trailing bytes are an error. The key holds the public half only, even
    /// when the bytes came from a private key's `publicKey` (which shares the private key's OpenSSL object): what
    /// must outlive a private key without keeping it in memory.
    public init(spkiDER der: [UInt8]) throws {
        // Bounded: a P-521 or RSA-4096 key is well under 1 KiB, and the bytes may come from a federated bundle.
        guard !der.isEmpty, der.count <= 4096 else { throw PKIError(operation: "public key: \(der.count) bytes") }
        PKIError.clearErrorQueue()
        let key: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            guard let key = d2i_PUBKEY(nil, &cursor, buffer.count) else { return nil }
            if cursor != buffer.baseAddress.map({ $0 + buffer.count }) {
                EVP_PKEY_free(key)
                return nil
            }
            return key
        }
        guard let key else { throw PKIError.openSSL("parsing a DER SubjectPublicKeyInfo") }
        self.init(handle: EVPKeyHandle(taking: key))
    }
}
