private import COpenSSL

/// An X.501 distinguished name as an ordered list of (attribute, value) pairs, e.g. `O=SPIFFE`, `CN=x`.
public struct DistinguishedName: Sendable, Hashable {
    public struct Attribute: Sendable, Hashable {
        /// Short name OpenSSL knows (`C`, `O`, `OU`, `CN`, `serialNumber`, ...).
        public var type: String
        public var value: String
        public init(_ type: String, _ value: String) {
            self.type = type
            self.value = value
        }
    }

    public var attributes: [Attribute]

    public init(_ attributes: [Attribute] = []) {
        self.attributes = attributes
    }

    public init(organization: String? = nil, commonName: String? = nil) {
        var attributes: [Attribute] = []
        if let organization { attributes.append(Attribute("O", organization)) }
        if let commonName { attributes.append(Attribute("CN", commonName)) }
        self.attributes = attributes
    }
}

/// basicConstraints.
public enum BasicConstraints: Sendable, Hashable {
    /// CA:FALSE (a leaf).
    case notCA
    /// CA:TRUE with an optional path length.
    case ca(pathLength: Int?)
}

/// Everything a certificate says, then `sign(...)`. Extensions are written critical where RFC 5280 and the
/// X509-SVID spec want them: basicConstraints and keyUsage critical, the rest not.
///
/// The in-process CA builds leaves directly from a fresh key with this type; it never round-trips through
/// a CSR (OpenSSL 3.0's `X509_REQ_set_pubkey` alone costs ~290 µs, ten times a signature).
public struct CertificateBuilder: Sendable {
    public var subject: DistinguishedName
    /// The key the certificate certifies.
    public var publicKey: PublicKey
    /// Big-endian unsigned serial number; must be non-empty and not all zero.
    public var serialNumber: [UInt8]
    public var notBefore: Timestamp
    public var notAfter: Timestamp
    public var basicConstraints: BasicConstraints
    /// nil leaves the extension out.
    public var keyUsage: KeyUsage?
    /// nil leaves the extension out.
    public var extendedKeyUsage: ExtendedKeyUsage?
    public var uriSANs: [String]
    public var dnsSANs: [String]
    public var includeSubjectKeyIdentifier: Bool
    public var includeAuthorityKeyIdentifier: Bool
    /// Optional critical nameConstraints: permitted URI domains (e.g. the trust domain name).
    public var permittedURIDomains: [String]?

    public init(
        subject: DistinguishedName, publicKey: PublicKey, serialNumber: [UInt8], notBefore: Timestamp,
        notAfter: Timestamp, basicConstraints: BasicConstraints = .notCA, keyUsage: KeyUsage? = nil,
        extendedKeyUsage: ExtendedKeyUsage? = nil, uriSANs: [String] = [], dnsSANs: [String] = [],
        includeSubjectKeyIdentifier: Bool = true, includeAuthorityKeyIdentifier: Bool = true,
        permittedURIDomains: [String]? = nil
    ) {
        self.subject = subject
        self.publicKey = publicKey
        self.serialNumber = serialNumber
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.basicConstraints = basicConstraints
        self.keyUsage = keyUsage
        self.extendedKeyUsage = extendedKeyUsage
        self.uriSANs = uriSANs
        self.dnsSANs = dnsSANs
        self.includeSubjectKeyIdentifier = includeSubjectKeyIdentifier
        self.includeAuthorityKeyIdentifier = includeAuthorityKeyIdentifier
        self.permittedURIDomains = permittedURIDomains
    }

    /// A random positive serial of `bytes` bytes (RFC 5280 allows up to 20 octets; 16 gives 128 bits).
    public static func randomSerialNumber(bytes: Int = 16) throws -> [UInt8] {
        var serial = [UInt8](repeating: 0, count: bytes)
        repeat {
            guard RAND_bytes(&serial, Int32(bytes)) == 1 else { throw PKIError.openSSL("RAND_bytes") }
        } while serial.allSatisfy { $0 == 0 }
        return serial
    }

    /// Signs the certificate. `issuer` nil means self-signed (the issuer name is the subject and
    /// `issuerKey` must be the subject key). Signs with the issuer key's digest (SHA-256 for P-256).
    public func sign(issuer: Certificate?, issuerKey: PrivateKey) throws -> Certificate {
        PKIError.clearErrorQueue()
        guard let x509 = X509_new() else { throw PKIError.openSSL("X509_new") }
        // Hand ownership to a handle only once signed; until then free on every exit.
        var owned: OpaquePointer? = x509
        defer { if let owned { X509_free(owned) } }

        guard X509_set_version(x509, Int(X509_VERSION_3)) == 1 else { throw PKIError.openSSL("X509_set_version") }
        try setSerial(x509)
        guard ASN1_TIME_set(X509_getm_notBefore(x509), time_t(notBefore.secondsSinceEpoch)) != nil,
            ASN1_TIME_set(X509_getm_notAfter(x509), time_t(notAfter.secondsSinceEpoch)) != nil
        else { throw PKIError.openSSL("setting the validity period") }

        let name = try makeName()
        defer { X509_NAME_free(name) }
        guard X509_set_subject_name(x509, name) == 1 else { throw PKIError.openSSL("X509_set_subject_name") }
        if let issuer {
            guard X509_set_issuer_name(x509, X509_get_subject_name(issuer.handle.pointer)) == 1 else {
                throw PKIError.openSSL("X509_set_issuer_name")
            }
        } else {
            guard X509_set_issuer_name(x509, name) == 1 else { throw PKIError.openSSL("X509_set_issuer_name") }
        }
        try setPublicKey(x509)

        try addExtensions(x509, issuer: issuer?.handle.pointer ?? x509)

        guard X509_sign(x509, issuerKey.handle.pointer, issuerKey.algorithm.signingDigest) > 0 else {
            throw PKIError.openSSL("signing the certificate")
        }
        owned = nil
        return Certificate(handle: try X509Handle(taking: x509))
    }

    /// OpenSSL 3.0's `X509_set_pubkey` encodes provider keys through `OSSL_ENCODER` (~240 µs, ten times the
    /// signature), and parsing the DER back costs ~140 µs. Leaves are the hot path, so for them the SPKI is
    /// written directly from the EC point (~1 µs). Such a certificate carries no decoded key inside OpenSSL;
    /// `Certificate` compares keys by their encoded bits and decodes on demand, and chain verification needs
    /// only the issuers' keys. CA certificates (rare, and used as issuers) take the standard path.
    private func setPublicKey(_ x509: OpaquePointer) throws {
        if case .notCA = basicConstraints, try publicKey.handle.algorithm() == .ecdsaP256 {
            guard sds_X509_set_ec_p256_pubkey(x509, publicKey.handle.pointer) == 1 else {
                throw PKIError.openSSL("setting the subject public key")
            }
        } else {
            guard X509_set_pubkey(x509, publicKey.handle.pointer) == 1 else {
                throw PKIError.openSSL("X509_set_pubkey")
            }
        }
    }

    private func setSerial(_ x509: OpaquePointer) throws {
        guard !serialNumber.isEmpty, !serialNumber.allSatisfy({ $0 == 0 }) else {
            throw PKIError(operation: "setting the serial number", reasons: ["serial number must be positive"])
        }
        guard let bn = BN_bin2bn(serialNumber, Int32(serialNumber.count), nil) else {
            throw PKIError.openSSL("BN_bin2bn")
        }
        defer { BN_free(bn) }
        guard let integer = BN_to_ASN1_INTEGER(bn, nil) else { throw PKIError.openSSL("BN_to_ASN1_INTEGER") }
        defer { ASN1_INTEGER_free(integer) }
        guard X509_set_serialNumber(x509, integer) == 1 else { throw PKIError.openSSL("X509_set_serialNumber") }
    }

    private func makeName() throws -> OpaquePointer {
        guard let name = X509_NAME_new() else { throw PKIError.openSSL("X509_NAME_new") }
        for attribute in subject.attributes {
            let added = attribute.value.withCString { value in
                value.withMemoryRebound(to: UInt8.self, capacity: attribute.value.utf8.count) {
                    X509_NAME_add_entry_by_txt(name, attribute.type, MBSTRING_UTF8, $0, -1, -1, 0)
                }
            }
            guard added == 1 else {
                X509_NAME_free(name)
                throw PKIError.openSSL("adding \(attribute.type)=\(attribute.value) to a name")
            }
        }
        return name
    }

    private func addExtensions(_ x509: OpaquePointer, issuer: OpaquePointer) throws {
        var context = X509V3_CTX()
        // Subject and issuer let OpenSSL compute the key identifiers ("hash", "keyid:always").
        X509V3_set_ctx(&context, issuer, x509, nil, nil, 0)

        func add(_ nid: Int32, _ value: String) throws {
            guard let ext = X509V3_EXT_nconf_nid(nil, &context, nid, value) else {
                throw PKIError.openSSL("building extension \(String(cString: OBJ_nid2sn(nid))) = \(value)")
            }
            defer { X509_EXTENSION_free(ext) }
            guard X509_add_ext(x509, ext, -1) == 1 else { throw PKIError.openSSL("X509_add_ext") }
        }

        switch basicConstraints {
        case .notCA: try add(NID_basic_constraints, "critical,CA:FALSE")
        case .ca(let pathLength?): try add(NID_basic_constraints, "critical,CA:TRUE,pathlen:\(pathLength)")
        case .ca(nil): try add(NID_basic_constraints, "critical,CA:TRUE")
        }
        if let keyUsage {
            guard !keyUsage.isEmpty else {
                throw PKIError(operation: "building keyUsage", reasons: ["an empty keyUsage is not encodable"])
            }
            try add(NID_key_usage, "critical," + keyUsage.configNames.joined(separator: ","))
        }
        if let extendedKeyUsage, !extendedKeyUsage.isEmpty {
            try add(NID_ext_key_usage, extendedKeyUsage.configNames.joined(separator: ","))
        }
        if includeSubjectKeyIdentifier { try add(NID_subject_key_identifier, "hash") }
        if includeAuthorityKeyIdentifier { try add(NID_authority_key_identifier, "keyid:always") }
        if !uriSANs.isEmpty || !dnsSANs.isEmpty {
            // Built as GENERAL_NAMEs rather than config text so no value can be misread as config syntax.
            guard let names = sds_sk_GENERAL_NAME_new_null() else { throw PKIError.openSSL("GENERAL_NAMES") }
            defer { GENERAL_NAMES_free(names) }
            for (type, values) in [(GEN_URI, uriSANs), (GEN_DNS, dnsSANs)] {
                for value in values {
                    guard sds_GENERAL_NAMES_add_ia5(names, type, value, Int32(value.utf8.count)) == 1 else {
                        throw PKIError.openSSL("adding SAN \(value)")
                    }
                }
            }
            guard X509_add1_ext_i2d(x509, NID_subject_alt_name, UnsafeMutableRawPointer(names), 0, 0) == 1 else {
                throw PKIError.openSSL("adding subjectAltName")
            }
        }
        if let permittedURIDomains, !permittedURIDomains.isEmpty {
            let value = permittedURIDomains.map { "permitted;URI:\($0)" }.joined(separator: ",")
            try add(NID_name_constraints, "critical," + value)
        }
    }
}
