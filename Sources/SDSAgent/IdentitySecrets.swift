import Issuance
import PKI
import SPIFFE
import Transport
import Wire

/// Turns an issuer's identity into the Envoy `Secret`s every supported name expects: the same SVID under `default`
/// and its SPIFFE ID, the own bundle under `ROOTCA` and `spiffe://<td>`, each federated bundle under
/// `spiffe://<other>`, and all bundles under `ALL` as Envoy's SPIFFE validator config.
enum IdentitySecrets {
    /// The name Envoy's SPIFFE certificate validator is registered under.
    static let spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

    static func secrets(for update: IdentityUpdate) throws -> [Secret] {
        let svid = update.svid
        let certificate = Secret.Kind.tlsCertificate(
            TLSCertificate(
                certificateChain: .inlineBytes(Array(svid.chainPEM.utf8)),
                privateKey: .inlineBytes(Array(try svid.privateKey.pkcs8PEM().utf8))))
        var secrets = [
            Secret(name: SecretName.istioWorkload, kind: certificate),
            Secret(name: svid.spiffeID.uri, kind: certificate),
        ]
        let ownDomain = svid.spiffeID.trustDomain
        for bundle in update.bundles {
            let context = Secret.Kind.validationContext(
                CertificateValidationContext(trustedCA: .inlineBytes(Array(bundle.pem.utf8))))
            secrets.append(Secret(name: bundle.trustDomain.idString, kind: context))
            if bundle.trustDomain == ownDomain { secrets.append(Secret(name: SecretName.istioRoot, kind: context)) }
        }
        let validator = SPIFFECertValidatorConfig(
            trustDomains: update.bundles.map {
                SPIFFECertValidatorConfig.TrustDomain(
                    name: $0.trustDomain.name, trustBundle: .inlineBytes(Array($0.pem.utf8)))
            })
        secrets.append(
            Secret(
                name: SecretName.allBundlesName,
                kind: .validationContext(
                    CertificateValidationContext(
                        customValidatorConfig: TypedExtensionConfig(
                            name: spiffeValidatorName, typedConfig: AnyMessage(packing: validator))))))
        return secrets
    }
}

/// Istio's file-backed names (`file-cert:<cert>~<key>`, `file-root:<ca>`): read, validated, served as inline PEM
/// so Envoy never needs access to the files.
enum FileSecrets {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func load(_ name: String, kind: SecretName, now: Timestamp) throws(Failure) -> Secret {
        switch kind {
        case .fileCertificate(let certificatePath, let keyPath):
            let chainPEM = try read(certificatePath)
            let keyPEM = try read(keyPath)
            let chain: [Certificate]
            let key: PrivateKey
            do {
                chain = try Certificate.parseChain(pem: chainPEM)
                key = try PrivateKey(pem: keyPEM)
            } catch {
                throw Failure(description: "\(name): \(error)")
            }
            guard let leaf = chain.first else { throw Failure(description: "\(certificatePath): no certificate") }
            guard leaf.publicKeyMatches(key) else {
                throw Failure(description: "\(keyPath) does not match the certificate in \(certificatePath)")
            }
            guard now <= leaf.notAfter else {
                throw Failure(description: "\(certificatePath) expired at \(leaf.notAfter)")
            }
            return Secret(
                name: name,
                kind: .tlsCertificate(
                    TLSCertificate(
                        certificateChain: .inlineBytes(Array(chainPEM.utf8)),
                        privateKey: .inlineBytes(Array(keyPEM.utf8)))
                ))
        case .fileRoot(let path):
            let pem = try read(path)
            do {
                guard !(try Certificate.parseChain(pem: pem)).isEmpty else {
                    throw Failure(description: "\(path): no certificate")
                }
            } catch let failure as Failure {
                throw failure
            } catch {
                throw Failure(description: "\(path): \(error)")
            }
            return Secret(
                name: name,
                kind: .validationContext(CertificateValidationContext(trustedCA: .inlineBytes(Array(pem.utf8)))))
        default:
            throw Failure(description: "\(name) is not a file-backed name")
        }
    }

    /// Certificates and keys are kilobytes; the 1 MiB cap only stops a wrong path from reading something huge.
    static func read(_ path: String) throws(Failure) -> String {
        do throws(SystemError) {
            return String(decoding: try Files.read(path, limit: 1 << 20), as: UTF8.self)
        } catch {
            throw Failure(description: "\(error)")
        }
    }
}
