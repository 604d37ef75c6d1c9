import JSONText
public import PKI
public import Wire

/// What sds-dump shows of a generic secret: its size and, when it is a JWT, the claims that say what it is for —
/// never the token itself (it is a bearer credential); `--pem-dir` writes it out when asked.
public struct GenericSecretSummary: Sendable, Equatable {
    public var length: Int
    /// For a JWT (compact JWS): its `sub`, `aud` and `exp`, read without verifying the signature.
    public var jwtSubject: String?
    public var jwtAudiences: [String]
    public var jwtExpiresAt: Timestamp?

    public init(length: Int, jwtSubject: String?, jwtAudiences: [String], jwtExpiresAt: Timestamp?) {
        self.length = length
        self.jwtSubject = jwtSubject
        self.jwtAudiences = jwtAudiences
        self.jwtExpiresAt = jwtExpiresAt
    }

    public init(_ bytes: [UInt8]) {
        self.init(length: bytes.count, jwtSubject: nil, jwtAudiences: [], jwtExpiresAt: nil)
        let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3,
            let claimBytes = Base64URL.decode(Substring(String(decoding: parts[1], as: UTF8.self))),
            let claims = try? JSONValue.parse(claimBytes)
        else { return }
        if case .string(let sub)? = claims["sub"] { jwtSubject = sub }
        switch claims["aud"] {
        case .string(let one)?: jwtAudiences = [one]
        case .array(let many)?:
            jwtAudiences = many.compactMap {
                if case .string(let text) = $0 { return text }
                return nil
            }
        default: break
        }
        if case .int(let exp)? = claims["exp"] { jwtExpiresAt = Timestamp(secondsSinceEpoch: exp) }
    }
}

/// What sds-dump shows of one certificate; every field already in its printed form except the times.
public struct CertificateReport: Sendable, Equatable {
    /// The first URI SAN with the `spiffe` scheme.
    public var spiffeID: String?
    /// RFC 4514 (RFC 2253) distinguished names.
    public var subject: String
    public var issuer: String
    /// Hex as `openssl x509 -serial` prints it: whole bytes, upper case, no colons.
    public var serial: String
    public var notBefore: Timestamp
    public var notAfter: Timestamp
    public var keyType: String
    /// SHA-256 of the DER, 64 lower-case hex digits.
    public var sha256: String

    public init(
        spiffeID: String?, subject: String, issuer: String, serial: String, notBefore: Timestamp,
        notAfter: Timestamp, keyType: String, sha256: String
    ) {
        self.spiffeID = spiffeID
        self.subject = subject
        self.issuer = issuer
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.keyType = keyType
        self.sha256 = sha256
    }

    public init(_ certificate: Certificate) {
        var serial = certificate.serialHex.uppercased()
        // Certificate.serialHex drops leading zeros; openssl prints whole bytes ("0123AB", "00").
        if serial.utf8.count % 2 == 1 { serial = "0" + serial }
        self.init(
            spiffeID: certificate.uriSANs.first { $0.lowercased().hasPrefix("spiffe://") },
            subject: certificate.subject, issuer: certificate.issuer, serial: serial,
            notBefore: certificate.notBefore, notAfter: certificate.notAfter,
            keyType: certificate.publicKey?.typeDescription ?? "unknown",
            sha256: hex(certificate.sha256Fingerprint))
    }
}

/// One secret as received: its name, the version it came with, and its certificates parsed.
public struct SecretReport: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A `tls_certificate`: chain (leaf first) and the private key's type, never the key.
        case certificate(privateKeyType: String)
        /// A `validation_context`: the trusted CA certificates.
        case validationContext
        /// A `generic_secret`: what it is, never its content.
        case generic(GenericSecretSummary)
    }

    /// The result of verifying a certificate's chain against the fetched bundles.
    public enum ChainVerdict: Sendable, Equatable {
        case verified
        case notVerified(reason: String)
    }

    public var name: String
    public var version: String
    public var kind: Kind
    public var certificates: [CertificateReport]
    /// Only for certificates, and only when a bundle was fetched.
    public var chainVerdict: ChainVerdict?

    public init(
        name: String, version: String, kind: Kind, certificates: [CertificateReport], chainVerdict: ChainVerdict?
    ) {
        self.name = name
        self.version = version
        self.kind = kind
        self.certificates = certificates
        self.chainVerdict = chainVerdict
    }
}

/// One secret as it arrived on the wire, with the PEM material pulled out (for reports and `--pem-dir`).
public struct ReceivedSecret: Sendable {
    public var name: String
    public var version: String
    public var material: Material

    public enum Material: Sendable {
        case certificate(chain: [Certificate], privateKey: [UInt8])
        case validationContext(trustedCAs: [Certificate])
        case generic(secret: [UInt8])
    }

    public init(name: String, version: String, material: Material) {
        self.name = name
        self.version = version
        self.material = material
    }

    /// Why a secret cannot be shown; sds-dump NACKs the response that carried it.
    public struct Rejection: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Extracts the material of `secret`; only inline data is accepted (a file name would be on the server's disk).
    public init(_ secret: Secret, version: String) throws(Rejection) {
        self.name = secret.name
        self.version = version
        switch secret.kind {
        case .tlsCertificate(let tls)?:
            guard let chainBytes = tls.certificateChain.inlineContent else {
                throw Rejection(description: "secret \(secret.name): certificate_chain is not inline")
            }
            guard let key = tls.privateKey.inlineContent else {
                throw Rejection(description: "secret \(secret.name): private_key is not inline")
            }
            material = .certificate(chain: try Self.certificates(chainBytes, secret.name), privateKey: key)
        case .genericSecret(let source)?:
            guard let bytes = source.inlineContent else {
                throw Rejection(description: "secret \(secret.name): generic_secret is not inline")
            }
            material = .generic(secret: bytes)
        case .validationContext(let context)?:
            var bytes: [[UInt8]] = []
            if let trusted = context.trustedCA {
                guard let inline = trusted.inlineContent else {
                    throw Rejection(description: "secret \(secret.name): trusted_ca is not inline")
                }
                bytes.append(inline)
            }
            // The SPIFFE validator carries one bundle per trust domain instead of trusted_ca.
            if let custom = context.customValidatorConfig,
                let config = try? custom.typedConfig.unpack(SPIFFECertValidatorConfig.self)
            {
                bytes += config.trustDomains.compactMap { $0.trustBundle.inlineContent }
            }
            guard !bytes.isEmpty else {
                throw Rejection(description: "secret \(secret.name): validation context holds no CA certificates")
            }
            var certificates: [Certificate] = []
            for block in bytes { certificates += try Self.certificates(block, secret.name) }
            material = .validationContext(trustedCAs: certificates)
        case nil:
            throw Rejection(description: "secret \(secret.name): neither tls_certificate nor validation_context")
        }
    }

    private static func certificates(_ bytes: [UInt8], _ name: String) throws(Rejection) -> [Certificate] {
        do {
            return try Certificate.parseChain(pem: String(decoding: bytes, as: UTF8.self))
        } catch {
            // Some servers send DER: try that before giving up.
            if let der = try? Certificate.parseChain(der: bytes) { return der }
            throw Rejection(description: "secret \(name): \(error)")
        }
    }

    /// The CA certificates, for a validation context.
    public var trustedCAs: [Certificate]? {
        if case .validationContext(let cas) = material { return cas }
        return nil
    }

    /// The key's type only: sds-dump never prints a private key.
    var privateKeyType: String {
        guard case .certificate(let chain, let key) = material else { return "" }
        if let parsed = try? PrivateKey(pem: String(decoding: key, as: UTF8.self)) {
            return parsed.algorithm.description
        }
        if let parsed = try? PrivateKey(pkcs8DER: key) { return parsed.algorithm.description }
        // A key type PKI does not load (P-521, Ed25519): it must be the leaf's key type to be usable at all.
        return chain.first?.publicKey?.typeDescription ?? "unknown"
    }

    /// The report of this secret at `time`; a certificate's chain is verified against `bundles` when there are any.
    public func report(bundles: [Certificate], at time: Timestamp) -> SecretReport {
        switch material {
        case .certificate(let chain, _):
            var verdict: SecretReport.ChainVerdict?
            if !bundles.isEmpty {
                do {
                    let store = try TrustStore(roots: bundles)
                    try store.verify(leaf: chain[0], intermediates: Array(chain.dropFirst()), at: time)
                    verdict = .verified
                } catch let error as PKIError {
                    verdict = .notVerified(
                        reason: error.reasons.isEmpty ? error.operation : error.reasons.joined(separator: "; "))
                } catch {
                    verdict = .notVerified(reason: "\(error)")
                }
            }
            return SecretReport(
                name: name, version: version, kind: .certificate(privateKeyType: privateKeyType),
                certificates: chain.map(CertificateReport.init), chainVerdict: verdict)
        case .validationContext(let cas):
            return SecretReport(
                name: name, version: version, kind: .validationContext, certificates: cas.map(CertificateReport.init),
                chainVerdict: nil)
        case .generic(let bytes):
            return SecretReport(
                name: name, version: version, kind: .generic(GenericSecretSummary(bytes)), certificates: [],
                chainVerdict: nil)
        }
    }
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}
