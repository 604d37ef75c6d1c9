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
        /// The leaf is not an X509-SVID only because it has no URI SAN (see `credential`).
        public var leafHasNoURISAN = false

        public init(_ description: String, validFrom: Timestamp? = nil) {
            self.description = description
            self.validFrom = validFrom
        }
    }

    /// A certificate and key that are consistent but not an X509-SVID: the leaf has no URI SAN (a Pod Certificates
    /// signer or a CA that issues plain TLS certificates). Envoy can still use it as `default`; the Workload API,
    /// whose answers are SPIFFE IDs, cannot.
    public struct PlainCredential: Sendable {
        public var chain: [Certificate]
        public var key: PrivateKey
        public var roots: [Certificate]
    }

    /// What the files hold: an X509-SVID with its bundle, or a plain certificate (when the leaf has no URI SAN and no
    /// `expectedID` was asked for).
    public enum Credential: Sendable {
        case svid(IdentityUpdate)
        case plain(PlainCredential)
    }

    /// `identity`, falling back to a plain certificate when the leaf has no URI SAN at all (and no SPIFFE ID was
    /// required): the same consistency rules apply (key, validity, chain to the roots).
    public static func credential(
        _ contents: Contents, expectedID: SPIFFEID?, now: Timestamp
    ) throws(Refusal) -> Credential {
        do throws(Refusal) {
            return .svid(try identity(contents, expectedID: expectedID, now: now))
        } catch {
            guard expectedID == nil, error.leafHasNoURISAN else { throw error }
        }
        let chain = try parseChain(contents)
        let key = try parseKey(contents)
        guard let leaf = chain.first, leaf.publicKeyMatches(key) else {
            throw Refusal("the private key does not match the leaf certificate's public key")
        }
        guard now < leaf.notAfter else { throw Refusal("the certificate expired at \(leaf.notAfter)") }
        guard leaf.notBefore <= now else {
            throw Refusal("the certificate is not valid before \(leaf.notBefore)", validFrom: leaf.notBefore)
        }
        let roots: [Certificate]
        do {
            roots = try Certificate.parseChain(
                pem: String(decoding: contents.bundle, as: UTF8.self), maxCount: Certificate.maxBundleCertificates)
            try TrustStore(roots: roots).verify(leaf: leaf, intermediates: Array(chain.dropFirst()), at: now)
        } catch {
            throw Refusal("the certificate does not chain to the bundle file's roots: \(error)")
        }
        return .plain(PlainCredential(chain: chain, key: key, roots: roots))
    }

    private static func parseChain(_ contents: Contents) throws(Refusal) -> [Certificate] {
        do {
            return try Certificate.parseChain(
                pem: String(decoding: contents.svid, as: UTF8.self), maxCount: Certificate.maxChainCertificates)
        } catch {
            throw Refusal("the certificate file holds no complete certificate chain: \(error)")
        }
    }

    private static func parseKey(_ contents: Contents) throws(Refusal) -> PrivateKey {
        do { return try PrivateKey(pem: String(decoding: contents.key ?? contents.svid, as: UTF8.self)) } catch {
            throw Refusal(
                "\(contents.key == nil ? "the credential bundle" : "the key file") holds no complete private key: "
                    + "\(error)")
        }
    }

    /// The identity in `contents` at `now`. `expectedID` (`--spiffe-id`, when the operator gave one) must be the
    /// leaf's SPIFFE ID; without it, the leaf's URI SAN is the identity.
    public static func identity(
        _ contents: Contents, expectedID: SPIFFEID?, now: Timestamp
    ) throws(Refusal) -> IdentityUpdate {
        let chain = try parseChain(contents)
        let key = try parseKey(contents)
        let svid: X509SVID
        do {
            svid = try X509SVID(chain: chain, privateKey: key, now: now, expectedID: expectedID)
        } catch {
            // Without the current time in the text: a refusal is reported once per distinct text, and the same
            // expired file seen again a second later must not be a new report.
            if case .notYetValid(let notBefore, _) = error {
                throw Refusal("the certificate is not valid before \(notBefore)", validFrom: notBefore)
            }
            if case .expired(let notAfter, _) = error { throw Refusal("the certificate expired at \(notAfter)") }
            var refusal = Refusal("the certificate and key are not a usable X509-SVID: \(error)")
            refusal.leafHasNoURISAN = error == .leafHasNoURISAN
            throw refusal
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
