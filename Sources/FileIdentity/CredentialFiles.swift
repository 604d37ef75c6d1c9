public import Issuance
public import PKI
public import SPIFFE

/// The identity that credential files hold, decided from their bytes alone (pure: the shell reads the files).
///
/// Layouts it reads, all PEM:
/// - a Kubernetes Pod Certificates credential bundle (`credentialBundlePath`): the PKCS#8 private key and the
///   certificate chain in one file, in either order;
/// - a chain file and a key file apart (cert-manager's csi-driver-spiffe `tls.crt`/`tls.key`, Istio's
///   `cert-chain.pem`/`key.pem`);
/// - the own trust domain's roots: PEM certificates (`ca.crt`, `root-cert.pem`, a ClusterTrustBundle projection)
///   or a SPIFFE bundle document.
///
/// The pair must be consistent — the key matches the leaf, the leaf is an X509-SVID valid now and chains to the
/// bundle — or nothing is taken: a half-written file, a key from the next rotation next to the previous
/// certificate, or an expired certificate is refused with the reason, and the caller keeps its last good identity.
public enum CredentialFiles {
    public struct Contents: Sendable {
        /// The chain, or the credential bundle (chain and key).
        public var svid: [UInt8]
        /// The key file, when the key is not in `svid`.
        public var key: [UInt8]?
        public var bundle: [UInt8]

        public init(svid: [UInt8], key: [UInt8]?, bundle: [UInt8]) {
            self.svid = svid
            self.key = key
            self.bundle = bundle
        }
    }

    /// Why files cannot be served (yet). `validFrom` is set when they will be once that time comes (a leaf
    /// delivered ahead of its notBefore), so the shell can look again then without a file event.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public var validFrom: Timestamp?

        public init(_ description: String, validFrom: Timestamp? = nil) {
            self.description = description
            self.validFrom = validFrom
        }
    }

    /// The identity in `contents` at `now`. `expectedID` (`--spiffe-id`, when the operator gave one) must be the
    /// leaf's SPIFFE ID; without it, the leaf's URI SAN is the identity.
    public static func identity(
        _ contents: Contents, expectedID: SPIFFEID?, now: Timestamp
    ) throws(Refusal) -> IdentityUpdate {
        let chainText = String(decoding: contents.svid, as: UTF8.self)
        let keyText = contents.key.map { String(decoding: $0, as: UTF8.self) } ?? chainText
        let chain: [Certificate]
        do {
            chain = try Certificate.parseChain(pem: chainText, maxCount: Certificate.maxChainCertificates)
        } catch {
            throw Refusal("the certificate file holds no complete certificate chain: \(error)")
        }
        let key: PrivateKey
        do { key = try PrivateKey(pem: keyText) } catch {
            throw Refusal(
                "\(contents.key == nil ? "the credential bundle" : "the key file") holds no complete private key: "
                    + "\(error)")
        }
        let svid: X509SVID
        do {
            svid = try X509SVID(chain: chain, privateKey: key, now: now, expectedID: expectedID)
        } catch {
            if case .notYetValid(let notBefore, _) = error {
                throw Refusal("the certificate is not valid yet: \(error)", validFrom: notBefore)
            }
            throw Refusal("the certificate and key are not a usable X509-SVID: \(error)")
        }
        let bundle: SPIFFEBundle
        do {
            bundle = try SPIFFEBundle.parse(contents.bundle, trustDomain: svid.spiffeID.trustDomain)
        } catch {
            throw Refusal("the bundle file: \(error)")
        }
        do {
            try svid.verify(against: bundle.x509, at: now)
        } catch {
            throw Refusal("the certificate does not chain to the bundle file's roots: \(error)")
        }
        return IdentityUpdate(svid: svid, bundles: [bundle.x509])
    }
}
