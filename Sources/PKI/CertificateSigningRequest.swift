private import COpenSSL

/// Owns one `X509_REQ`.
final class X509RequestHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { X509_REQ_free(pointer) }
}

/// A PKCS#10 certificate signing request: subject, public key and URI SANs. For upstream CAs that want a
/// CSR (the istiod path); the in-process CA does not use it because `X509_REQ_set_pubkey` is slow.
public struct CertificateSigningRequest: Sendable {
    let handle: X509RequestHandle
    public let der: [UInt8]

    /// Creates and signs a CSR with `key`.
    public init(subject: DistinguishedName, uriSANs: [String] = [], key: PrivateKey) throws {
        PKIError.clearErrorQueue()
        guard let request = X509_REQ_new() else { throw PKIError.openSSL("X509_REQ_new") }
        let handle = X509RequestHandle(taking: request)
        guard X509_REQ_set_version(request, 0) == 1 else { throw PKIError.openSSL("X509_REQ_set_version") }
        guard let name = X509_NAME_new() else { throw PKIError.openSSL("X509_NAME_new") }
        defer { X509_NAME_free(name) }
        for attribute in subject.attributes {
            let added = attribute.value.withCString { value in
                value.withMemoryRebound(to: UInt8.self, capacity: attribute.value.utf8.count) {
                    X509_NAME_add_entry_by_txt(name, attribute.type, MBSTRING_UTF8, $0, -1, -1, 0)
                }
            }
            guard added == 1 else { throw PKIError.openSSL("adding \(attribute.type) to the CSR subject") }
        }
        guard X509_REQ_set_subject_name(request, name) == 1 else { throw PKIError.openSSL("X509_REQ_set_subject_name") }
        guard X509_REQ_set_pubkey(request, key.handle.pointer) == 1 else {
            throw PKIError.openSSL("X509_REQ_set_pubkey")
        }
        if !uriSANs.isEmpty {
            guard let names = sds_sk_GENERAL_NAME_new_null() else { throw PKIError.openSSL("GENERAL_NAMES") }
            defer { GENERAL_NAMES_free(names) }
            for uri in uriSANs {
                guard sds_GENERAL_NAMES_add_ia5(names, GEN_URI, uri, Int32(uri.utf8.count)) == 1 else {
                    throw PKIError.openSSL("adding SAN \(uri)")
                }
            }
            guard let ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, UnsafeMutableRawPointer(names)) else {
                throw PKIError.openSSL("encoding subjectAltName")
            }
            defer { X509_EXTENSION_free(ext) }
            guard let stack = sds_sk_X509_EXTENSION_new_null() else { throw PKIError.openSSL("extension stack") }
            defer { sds_sk_X509_EXTENSION_free(stack) }
            _ = sds_sk_X509_EXTENSION_push(stack, ext)
            guard X509_REQ_add_extensions(request, stack) == 1 else {
                throw PKIError.openSSL("X509_REQ_add_extensions")
            }
        }
        guard X509_REQ_sign(request, key.handle.pointer, key.algorithm.signingDigest) > 0 else {
            throw PKIError.openSSL("signing the CSR")
        }
        self.handle = handle
        self.der = try CertificateSigningRequest.encode(request)
    }

    /// Parses a DER CSR.
    public init(der: [UInt8]) throws {
        PKIError.clearErrorQueue()
        let request: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return d2i_X509_REQ(nil, &cursor, buffer.count)
        }
        guard let request else { throw PKIError.openSSL("parsing a DER CSR") }
        self.handle = X509RequestHandle(taking: request)
        self.der = der
    }

    private static func encode(_ request: OpaquePointer) throws -> [UInt8] {
        let length = i2d_X509_REQ(request, nil)
        guard length > 0 else { throw PKIError.openSSL("encoding the CSR") }
        var out = [UInt8](repeating: 0, count: Int(length))
        out.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_X509_REQ(request, &cursor)
        }
        return out
    }

    /// PEM (`CERTIFICATE REQUEST`).
    public var pem: String { PEMEncoding.encode(label: "CERTIFICATE REQUEST", der: der) }

    /// The requested public key.
    public var publicKey: PublicKey? {
        guard let key = X509_REQ_get_pubkey(handle.pointer) else {
            PKIError.clearErrorQueue()
            return nil
        }
        return PublicKey(handle: EVPKeyHandle(taking: key))
    }

    /// Whether the CSR's self-signature verifies with its own public key (proof of possession).
    public var signatureIsValid: Bool {
        guard let key = X509_REQ_get0_pubkey(handle.pointer) else { return false }
        let valid = X509_REQ_verify(handle.pointer, key) == 1
        if !valid { PKIError.clearErrorQueue() }
        return valid
    }

    /// Subject in RFC 2253 form.
    public var subject: String {
        guard let name = X509_REQ_get_subject_name(handle.pointer), let bio = try? MemoryBIO() else { return "" }
        guard X509_NAME_print_ex(bio.bio, name, 0, sds_XN_FLAG_RFC2253()) >= 0 else { return "" }
        return bio.string
    }

    /// Requested URI SANs.
    public var uriSANs: [String] {
        guard let extensions = X509_REQ_get_extensions(handle.pointer) else { return [] }
        defer { sds_sk_X509_EXTENSION_pop_free(extensions) }
        var out: [String] = []
        for index in 0..<sds_sk_X509_EXTENSION_num(extensions) {
            guard let ext = sds_sk_X509_EXTENSION_value(extensions, index),
                OBJ_obj2nid(X509_EXTENSION_get_object(ext)) == NID_subject_alt_name,
                let raw = X509V3_EXT_d2i(ext)
            else { continue }
            let names = OpaquePointer(raw)
            defer { GENERAL_NAMES_free(names) }
            for nameIndex in 0..<sds_sk_GENERAL_NAME_num(names) {
                guard let name = sds_sk_GENERAL_NAME_value(names, nameIndex), sds_GENERAL_NAME_type(name) == GEN_URI,
                    let ia5 = sds_GENERAL_NAME_ia5(name), let data = ASN1_STRING_get0_data(ia5)
                else { continue }
                let length = Int(sds_ASN1_STRING_length(ia5))
                out.append(String(decoding: UnsafeBufferPointer(start: data, count: length), as: UTF8.self))
            }
        }
        return out
    }
}
