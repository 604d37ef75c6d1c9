import Issuance
import PKI
import SPIFFE
import Servers
import Transport
import Wire

/// Turns an issuer's identity into the Envoy `Secret`s every supported name expects: the same SVID under `default`
/// and its SPIFFE ID, the own bundle under `ROOTCA` and `spiffe://<td>`, each federated bundle under
/// `spiffe://<other>`, and all bundles under `ALL` as Envoy's SPIFFE validator config.
public enum IdentitySecrets {
    /// The name Envoy's SPIFFE certificate validator is registered under.
    static let spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

    /// `crlPEM`, when the operator gave CRLs (`--crl-file`), goes into the own trust domain's validation contexts
    /// (`ROOTCA`, `spiffe://<td>`), checked for the leaf only: the file names the CAs it covers, and requiring a CRL
    /// for every CA of every chain would fail handshakes the operator did not mean to revoke. Not into `ALL`:
    /// Envoy's SPIFFE validator takes only `allow_expired_certificate` and the SAN matchers from its context.
    ///
    /// `naming` says which names carry the SVID, the own bundle and all bundles (`--default-*-name`). The all-bundles
    /// secret binds each bundle to its own domain (never one concatenated CA list: a CA of one domain must not vouch
    /// for an ID in another), which is what lets Istio's `ROOTCA` carry federated domains.
    public static func secrets(for update: IdentityUpdate, crlPEM: String? = nil, naming: SDSNaming = .spire) throws
        -> [Secret]
    {
        try secretsAndVariants(for: update, crlPEM: crlPEM, naming: naming).secrets
    }

    /// The cache key of the all-bundles name's plain variant: what an Envoy whose node metadata sets
    /// `disable_spiffe_cert_validation: true` gets for that name (SPIRE's behaviour). The NUL byte keeps it out of
    /// reach of any request (names with one are refused on the wire).
    public static func plainVariantKey(_ name: String) -> String { name + "\u{0}trusted_ca" }

    /// The secrets, and the per-client variants by cache key (see `plainVariantKey`).
    public static func secretsAndVariants(
        for update: IdentityUpdate, crlPEM: String? = nil, naming: SDSNaming = .spire
    ) throws -> (secrets: [Secret], variants: [String: Secret]) {
        let svid = update.svid
        let certificate = Secret.Kind.tlsCertificate(
            TLSCertificate(
                certificateChain: .inlineBytes(Array(svid.chainPEM.utf8)),
                privateKey: .inlineBytes(Array(try svid.privateKey.pkcs8PEM().utf8))))
        var secrets = [
            Secret(name: naming.svid, kind: certificate),
            Secret(name: svid.spiffeID.uri, kind: certificate),
        ]
        let ownDomain = svid.spiffeID.trustDomain
        let crl = crlPEM.map { DataSource.inlineBytes(Array($0.utf8)) }
        // Each bundle's PEM once: it goes into three secrets, and a federation may hold 2,048 certificates.
        let pems = update.bundles.map { Array($0.pem.utf8) }
        for (bundle, pem) in zip(update.bundles, pems) {
            let own = bundle.trustDomain == ownDomain
            let context = Secret.Kind.validationContext(
                CertificateValidationContext(
                    trustedCA: .inlineBytes(pem), crl: own ? crl : nil,
                    onlyVerifyLeafCertCRL: own && crl != nil))
            secrets.append(Secret(name: bundle.trustDomain.idString, kind: context))
            if bundle.trustDomain == ownDomain { secrets.append(Secret(name: naming.bundle, kind: context)) }
        }
        let validator = SPIFFECertValidatorConfig(
            trustDomains: zip(update.bundles, pems).map {
                SPIFFECertValidatorConfig.TrustDomain(name: $0.trustDomain.name, trustBundle: .inlineBytes($1))
            })
        secrets.append(
            Secret(
                name: naming.allBundles,
                kind: .validationContext(
                    CertificateValidationContext(
                        customValidatorConfig: TypedExtensionConfig(
                            name: spiffeValidatorName, typedConfig: AnyMessage(packing: validator))))))
        // Every domain's roots in one list: each CA then vouches for any ID, which is why it is only served to an
        // Envoy that asked for it.
        let plain = Secret(
            name: naming.allBundles,
            kind: .validationContext(
                CertificateValidationContext(
                    trustedCA: .inlineBytes(Array(pems.joined())))))
        return (secrets, [plainVariantKey(naming.allBundles): plain])
    }
}

/// Istio's file-backed names (`file-cert:<cert>~<key>`, `file-root:<ca>`): read, validated, served as inline PEM
/// so Envoy never needs access to the files. Reading goes through the caller's `read`, which enforces the
/// `FileAccessPolicy`.
enum FileSecrets {
    enum Failure: Error, CustomStringConvertible {
        /// The policy refuses a file of this name: never served.
        case refused(FileAccessPolicy.Refusal)
        /// Missing, unreadable or invalid for now: held until the files change.
        case notReady(String)

        var description: String {
            switch self {
            case .refused(let refusal): return refusal.description
            case .notReady(let problem): return problem
            }
        }
    }

    static func load(
        _ name: String, kind: SecretName, now: Timestamp, read: (String) throws(Failure) -> [UInt8]
    ) throws(Failure) -> Secret {
        func text(_ path: String) throws(Failure) -> String { String(decoding: try read(path), as: UTF8.self) }
        switch kind {
        case .fileCertificate(let certificatePath, let keyPath):
            let chainPEM = try text(certificatePath)
            let keyPEM = try text(keyPath)
            let chain: [Certificate]
            let key: PrivateKey
            do {
                chain = try Certificate.parseChain(pem: chainPEM)
                key = try PrivateKey(pem: keyPEM)
            } catch {
                throw .notReady("\(name): \(error)")
            }
            guard let leaf = chain.first else { throw .notReady("\(certificatePath): no certificate") }
            guard leaf.publicKeyMatches(key) else {
                throw .notReady("\(keyPath) does not match the certificate in \(certificatePath)")
            }
            guard now < leaf.notAfter else {
                throw .notReady("\(certificatePath) expired at \(leaf.notAfter)")
            }
            return Secret(
                name: name,
                kind: .tlsCertificate(
                    TLSCertificate(
                        // The parsed certificates, re-encoded: a chain file that also holds a key (a Pod
                        // Certificates credential bundle) never puts that key in the certificate field.
                        certificateChain: .inlineBytes(Array(Certificate.pem(chain).utf8)),
                        privateKey: .inlineBytes(Array(keyPEM.utf8)))
                ))
        case .fileRoot(let path):
            let pem = try text(path)
            let chain: [Certificate]
            do { chain = try Certificate.parseChain(pem: pem) } catch { throw .notReady("\(path): \(error)") }
            guard !chain.isEmpty else { throw .notReady("\(path): no certificate") }
            // Only the certificates, re-encoded: a validation context never carries a key, whatever else the file
            // holds (a cert-and-key file named as a root would otherwise hand its key to every client).
            return Secret(
                name: name,
                kind: .validationContext(
                    CertificateValidationContext(trustedCA: .inlineBytes(Array(Certificate.pem(chain).utf8)))))
        default:
            throw .notReady("\(name) is not a file-backed name")
        }
    }
}
