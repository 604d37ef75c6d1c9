private import COpenSSL
import Glibc

/// Owns one `X509`; frees it in `deinit`. Never mutated after it is parsed or signed, so it can be shared.
final class X509Handle: @unchecked Sendable {
    let pointer: OpaquePointer
    /// The DER encoding, kept because callers ask for it often (hashing, the Workload API, PEM).
    let der: [UInt8]

    init(taking pointer: OpaquePointer) throws {
        self.pointer = pointer
        let length = i2d_X509(pointer, nil)
        guard length > 0 else {
            X509_free(pointer)
            throw PKIError.openSSL("encoding a certificate as DER")
        }
        var out = [UInt8](repeating: 0, count: Int(length))
        out.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_X509(pointer, &cursor)
        }
        self.der = out
    }

    deinit { X509_free(pointer) }
}

/// Key usage bits (RFC 5280 §4.2.1.3) that matter for SPIFFE.
public struct KeyUsage: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let digitalSignature = KeyUsage(rawValue: 0x0080)
    public static let nonRepudiation = KeyUsage(rawValue: 0x0040)
    public static let keyEncipherment = KeyUsage(rawValue: 0x0020)
    public static let dataEncipherment = KeyUsage(rawValue: 0x0010)
    public static let keyAgreement = KeyUsage(rawValue: 0x0008)
    public static let keyCertSign = KeyUsage(rawValue: 0x0004)
    public static let cRLSign = KeyUsage(rawValue: 0x0002)

    /// The names OpenSSL's extension config syntax uses, in a fixed order.
    var configNames: [String] {
        var names: [String] = []
        if contains(.digitalSignature) { names.append("digitalSignature") }
        if contains(.nonRepudiation) { names.append("nonRepudiation") }
        if contains(.keyEncipherment) { names.append("keyEncipherment") }
        if contains(.dataEncipherment) { names.append("dataEncipherment") }
        if contains(.keyAgreement) { names.append("keyAgreement") }
        if contains(.keyCertSign) { names.append("keyCertSign") }
        if contains(.cRLSign) { names.append("cRLSign") }
        return names
    }
}

/// Extended key usages that matter for mTLS.
public struct ExtendedKeyUsage: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    // Same bit values as OpenSSL's XKU_* flags, so reading is a plain copy.
    public static let serverAuth = ExtendedKeyUsage(rawValue: 0x1)
    public static let clientAuth = ExtendedKeyUsage(rawValue: 0x2)
    public static let emailProtection = ExtendedKeyUsage(rawValue: 0x4)
    public static let codeSigning = ExtendedKeyUsage(rawValue: 0x8)

    var configNames: [String] {
        var names: [String] = []
        if contains(.serverAuth) { names.append("serverAuth") }
        if contains(.clientAuth) { names.append("clientAuth") }
        if contains(.emailProtection) { names.append("emailProtection") }
        if contains(.codeSigning) { names.append("codeSigning") }
        return names
    }
}

/// An X.509 certificate (immutable value). Equality and hashing are by DER encoding.
public struct Certificate: Sendable, Hashable, CustomStringConvertible {
    let handle: X509Handle

    init(handle: X509Handle) {
        self.handle = handle
    }

    /// Parses exactly one DER certificate; trailing bytes are an error.
    public init(der: [UInt8]) throws {
        let (certificate, consumed) = try Certificate.parseOneDER(der[...])
        guard consumed == der.count else {
            throw PKIError(operation: "parsing a DER certificate", reasons: ["\(der.count - consumed) trailing bytes"])
        }
        self = certificate
    }

    /// Parses the first certificate of a PEM text.
    public init(pem: String) throws {
        let certificates = try Certificate.parseChain(pem: pem)
        self = certificates[0]
    }

    /// The most certificates one chain holds: a leaf, intermediates, a root. Why 16: CAs return 2 or 3; a plugged-in
    /// CA hierarchy may add a few intermediates; RFC 5280 sets no limit, OpenSSL's default verify depth is 100.
    public static let maxChainCertificates = 16
    /// The most certificates one trust bundle holds. Why 512: a bundle of every public root is ~150; a trust domain's
    /// own roots are a handful even mid-rotation.
    public static let maxBundleCertificates = 512

    /// Parses every `CERTIFICATE` block of a PEM text, in order (a chain or a bundle). At least one is required, at
    /// most `maxCount`: the count is checked while parsing, so a 6,000-certificate answer costs 17 parses, not 6,000.
    public static func parseChain(pem: String, maxCount: Int = maxBundleCertificates) throws -> [Certificate] {
        PKIError.clearErrorQueue()
        let bio = try MemoryBIO(bytes: Array(pem.utf8))
        var certificates: [Certificate] = []
        while let x509 = PEM_read_bio_X509(bio.bio, nil, nil, nil) {
            let certificate = Certificate(handle: try X509Handle(taking: x509))
            guard certificates.count < maxCount else { throw tooMany(maxCount) }
            certificates.append(certificate)
        }
        // The loop ends on an error: "no start line" at a clean end of input, anything else is real damage.
        let code = ERR_peek_last_error()
        let reasonIsNoStartLine = ERR_GET_REASON(code) == PEM_R_NO_START_LINE
        if code != 0 && !(reasonIsNoStartLine && !certificates.isEmpty) {
            throw PKIError.openSSL("parsing PEM certificates (\(certificates.count) read before the error)")
        }
        PKIError.clearErrorQueue()
        guard !certificates.isEmpty else {
            throw PKIError(operation: "parsing PEM certificates", reasons: ["no CERTIFICATE block found"])
        }
        return certificates
    }

    /// Parses concatenated DER certificates (the Workload API's `x509_svid` and `bundle` fields), at most
    /// `maxCount` (checked before each parse).
    public static func parseChain(der: [UInt8], maxCount: Int = maxBundleCertificates) throws -> [Certificate] {
        var certificates: [Certificate] = []
        var rest = der[...]
        while !rest.isEmpty {
            guard certificates.count < maxCount else { throw tooMany(maxCount) }
            let (certificate, consumed) = try parseOneDER(rest)
            certificates.append(certificate)
            rest = rest.dropFirst(consumed)
        }
        guard !certificates.isEmpty else {
            throw PKIError(operation: "parsing DER certificates", reasons: ["no certificate"])
        }
        return certificates
    }

    private static func tooMany(_ maxCount: Int) -> PKIError {
        PKIError(operation: "parsing certificates", reasons: ["more than \(maxCount) certificates"])
    }

    private static func parseOneDER(_ bytes: ArraySlice<UInt8>) throws -> (Certificate, Int) {
        PKIError.clearErrorQueue()
        var consumed = 0
        let x509: OpaquePointer? = bytes.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            let parsed = d2i_X509(nil, &cursor, buffer.count)
            if let cursor, let base = buffer.baseAddress { consumed = cursor - base }
            return parsed
        }
        guard let x509, consumed > 0 else { throw PKIError.openSSL("parsing a DER certificate") }
        return (Certificate(handle: try X509Handle(taking: x509)), consumed)
    }

    /// DER encoding.
    public var der: [UInt8] { handle.der }

    /// PEM encoding (one `CERTIFICATE` block, newline-terminated).
    public var pem: String { PEMEncoding.encode(label: "CERTIFICATE", der: handle.der) }

    /// PEM blocks of `certificates`, in order (a chain leaf first, or a bundle).
    public static func pem(_ certificates: [Certificate]) -> String {
        certificates.map(\.pem).joined()
    }

    /// DER encodings concatenated, in order.
    public static func concatenatedDER(_ certificates: [Certificate]) -> [UInt8] {
        certificates.flatMap(\.der)
    }

    public static func == (lhs: Certificate, rhs: Certificate) -> Bool {
        lhs.handle === rhs.handle || lhs.handle.der == rhs.handle.der
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(handle.der)
    }

    public var description: String { "Certificate(subject: \(subject), serial: \(serialHex))" }

    /// Subject distinguished name in RFC 2253 form (e.g. `CN=a,O=b`).
    public var subject: String { Certificate.nameString(X509_get_subject_name(handle.pointer)) }

    /// Issuer distinguished name in RFC 2253 form.
    public var issuer: String { Certificate.nameString(X509_get_issuer_name(handle.pointer)) }

    static func nameString(_ name: OpaquePointer?) -> String {
        guard let name, let bio = try? MemoryBIO() else { return "" }
        guard X509_NAME_print_ex(bio.bio, name, 0, sds_XN_FLAG_RFC2253()) >= 0 else { return "" }
        return bio.string
    }

    /// Serial number as lower-case hex without leading zeros (`"0"` for zero).
    public var serialHex: String {
        guard let serial = X509_get0_serialNumber(handle.pointer),
            let bn = ASN1_INTEGER_to_BN(serial, nil)
        else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { sds_OPENSSL_free(hex) }
        // BN_bn2hex pads to whole bytes ("01AB"); drop the padding so the form is canonical.
        let digits = String(cString: hex).lowercased().drop { $0 == "0" }
        return digits.isEmpty ? "0" : String(digits)
    }

    public var notBefore: Timestamp { Certificate.timestamp(X509_get0_notBefore(handle.pointer)) }
    public var notAfter: Timestamp { Certificate.timestamp(X509_get0_notAfter(handle.pointer)) }

    /// A CRL's `thisUpdate` / `nextUpdate` (same conversion as certificates' times).
    static func crlTimes(_ crl: OpaquePointer) -> (thisUpdate: Timestamp, nextUpdate: Timestamp?) {
        let next = X509_CRL_get0_nextUpdate(crl)
        return (timestamp(X509_CRL_get0_lastUpdate(crl)), next.map { timestamp($0) })
    }

    fileprivate static func timestamp(_ time: UnsafePointer<ASN1_TIME>?) -> Timestamp {
        var parts = tm()
        guard let time, ASN1_TIME_to_tm(time, &parts) == 1 else { return Timestamp(secondsSinceEpoch: 0) }
        return Timestamp(secondsSinceEpoch: Int64(timegm(&parts)))
    }

    /// URI subject alternative names, in order.
    public var uriSANs: [String] { subjectAlternativeNames(type: GEN_URI) }

    /// DNS subject alternative names, in order.
    public var dnsSANs: [String] { subjectAlternativeNames(type: GEN_DNS) }

    private func subjectAlternativeNames(type: Int32) -> [String] {
        guard let raw = X509_get_ext_d2i(handle.pointer, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        var out: [String] = []
        for index in 0..<sds_sk_GENERAL_NAME_num(names) {
            guard let name = sds_sk_GENERAL_NAME_value(names, index), sds_GENERAL_NAME_type(name) == type,
                let ia5 = sds_GENERAL_NAME_ia5(name), let data = ASN1_STRING_get0_data(ia5)
            else { continue }
            let length = Int(sds_ASN1_STRING_length(ia5))
            out.append(String(decoding: UnsafeBufferPointer(start: data, count: length), as: UTF8.self))
        }
        return out
    }

    /// Whether basicConstraints says CA:TRUE.
    public var isCA: Bool {
        (X509_get_extension_flags(handle.pointer) & UInt32(EXFLAG_CA)) != 0
    }

    /// The basicConstraints path length, when set on a CA.
    public var pathLength: Int? {
        let length = X509_get_pathlen(handle.pointer)
        return length >= 0 ? Int(length) : nil
    }

    /// The keyUsage extension, or nil when the certificate has none.
    public var keyUsage: KeyUsage? {
        guard (X509_get_extension_flags(handle.pointer) & UInt32(EXFLAG_KUSAGE)) != 0 else { return nil }
        return KeyUsage(rawValue: X509_get_key_usage(handle.pointer))
    }

    /// The extendedKeyUsage extension, or nil when the certificate has none.
    public var extendedKeyUsage: ExtendedKeyUsage? {
        guard (X509_get_extension_flags(handle.pointer) & UInt32(EXFLAG_XKUSAGE)) != 0 else { return nil }
        return ExtendedKeyUsage(rawValue: X509_get_extended_key_usage(handle.pointer))
    }

    /// Whether subject and issuer names are equal and the signature verifies with the certificate's own key.
    public var isSelfSigned: Bool {
        X509_check_issued(handle.pointer, handle.pointer) == X509_V_OK
            && X509_self_signed(handle.pointer, 1) == 1
    }

    /// SHA-256 of the DER encoding.
    public var sha256Fingerprint: [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(handle.pointer, EVP_sha256(), &digest, &length) == 1 else { return [] }
        return Array(digest.prefix(Int(length)))
    }

    /// Whether OpenSSL holds a decoded key for this certificate (false for leaves from the builder's fast path).
    var hasDecodedPublicKey: Bool {
        if X509_get0_pubkey(handle.pointer) != nil { return true }
        PKIError.clearErrorQueue()
        return false
    }

    /// This certificate in the form X509_verify_cert needs: with a decoded key (re-parsed when it has none).
    func withDecodedPublicKey() throws -> Certificate {
        hasDecodedPublicKey ? self : try Certificate(der: der)
    }

    /// The subject public key.
    public var publicKey: PublicKey? {
        if let key = X509_get_pubkey(handle.pointer) { return PublicKey(handle: EVPKeyHandle(taking: key)) }
        // Certificates the builder made for leaves carry no decoded key (see CertificateBuilder.setPublicKey):
        // decode the SubjectPublicKeyInfo.
        PKIError.clearErrorQueue()
        guard let spki = X509_get_X509_PUBKEY(handle.pointer) else { return nil }
        let length = i2d_X509_PUBKEY(spki, nil)
        guard length > 0 else { return nil }
        var der = [UInt8](repeating: 0, count: Int(length))
        der.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_X509_PUBKEY(spki, &cursor)
        }
        let key: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
        guard let key else {
            PKIError.clearErrorQueue()
            return nil
        }
        return PublicKey(handle: EVPKeyHandle(taking: key))
    }

    /// Whether `privateKey` is the private half of this certificate's public key. Compares the encoded public
    /// key bits (cheap, and works whether or not OpenSSL decoded the certificate's key).
    public func publicKeyMatches(_ privateKey: PrivateKey) -> Bool {
        switch privateKey.algorithm.kind {
        case .rsa:
            // A decoded certificate key is compared by OpenSSL directly (modulus and exponent): encoding the
            // private key's public half for the comparison below costs ~1 ms in OpenSSL 3.0's encoder.
            if let certified = X509_get0_pubkey(handle.pointer) {
                return EVP_PKEY_eq(certified, privateKey.handle.pointer) == 1
            }
            PKIError.clearErrorQueue()
            // Not decoded (a leaf this process built): compare the whole SubjectPublicKeyInfo.
            guard let spki = X509_get_X509_PUBKEY(handle.pointer) else { return false }
            let length = i2d_X509_PUBKEY(spki, nil)
            guard length > 0 else {
                PKIError.clearErrorQueue()
                return false
            }
            var der = [UInt8](repeating: 0, count: Int(length))
            der.withUnsafeMutableBufferPointer { buffer in
                var cursor = buffer.baseAddress
                _ = i2d_X509_PUBKEY(spki, &cursor)
            }
            return der == privateKey.handle.publicKeyDER()
        case .ecdsaP256, .ecdsaP384:
            var algorithm: OpaquePointer? = nil
            guard let spki = X509_get_X509_PUBKEY(handle.pointer),
                X509_PUBKEY_get0_param(&algorithm, nil, nil, nil, spki) == 1,
                OBJ_obj2nid(algorithm) == NID_X9_62_id_ecPublicKey,
                let bits = X509_get0_pubkey_bitstr(handle.pointer), let data = bits.pointee.data
            else {
                PKIError.clearErrorQueue()
                return false
            }
            guard let point = privateKey.handle.encodedPublicKey() else { return false }
            let certified = UnsafeBufferPointer(start: data, count: Int(bits.pointee.length))
            return certified.elementsEqual(point)
        }
    }
}

/// Base64 PEM armour. Written here (not with a BIO) because encoding is the hot path of serving secrets.
enum PEMEncoding {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(label: String, der: [UInt8]) -> String {
        var out: [UInt8] = Array("-----BEGIN \(label)-----\n".utf8)
        out.reserveCapacity(der.count * 4 / 3 + der.count / 48 + 64)
        var lineLength = 0
        var index = 0
        while index < der.count {
            let b0 = der[index]
            let b1 = index + 1 < der.count ? der[index + 1] : 0
            let b2 = index + 2 < der.count ? der[index + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < der.count ? alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < der.count ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
            lineLength += 4
            if lineLength == 64 {
                out.append(UInt8(ascii: "\n"))
                lineLength = 0
            }
        }
        if lineLength > 0 { out.append(UInt8(ascii: "\n")) }
        out.append(contentsOf: Array("-----END \(label)-----\n".utf8))
        return String(decoding: out, as: UTF8.self)
    }
}
