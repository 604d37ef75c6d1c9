public import Issuance
public import PKI
public import SPIFFE

/// What istiod's answer must be before anything of it is served, checked against the request we made (pure).
///
/// - at least two PEM certificates (istio-agent refuses fewer), leaf first, root last;
/// - the leaf passes the X509-SVID rules, carries exactly the SPIFFE ID we asked for and *our* public key (a CA
///   that answered someone else's CSR, or substituted a key, is refused);
/// - the chain verifies up to its own last certificate, a self-signed root, at `now`.
///
/// The served bundle (`ROOTCA`) is that root plus every root of the root-cert file: during Istio's root rotation
/// the file carries the next root before istiod signs with it, and peers signed by either must be trusted.
public enum IstioChain {
    /// Why 16 certificates: istiod returns 2 or 3 (leaf, optional intermediate, root); a plugged-in CA chain may
    /// add a few levels. Far more is a broken or hostile CA, and each one costs a signature check.
    public static let maxCertificates = 16

    public static func validate(
        chainPEMs: [String], key: PrivateKey, expectedID: SPIFFEID, fileRoots: [Certificate], now: Timestamp
    ) throws(IssuerError) -> IdentityUpdate {
        func refuse(_ reason: String) -> IssuerError {
            IssuerError(kind: .issuanceFailed, message: "istiod returned an unusable certificate chain: \(reason)")
        }
        guard chainPEMs.count >= 2 else {
            throw refuse("\(chainPEMs.count) certificate(s); a leaf and its root are required")
        }
        guard chainPEMs.count <= maxCertificates else {
            throw refuse("\(chainPEMs.count) certificates (at most \(maxCertificates))")
        }
        var certificates: [Certificate] = []
        for (index, pem) in chainPEMs.enumerated() {
            // An element may itself hold several PEM blocks (some CAs concatenate); take them all in order.
            do {
                // The budget left, not the whole cap: an answer of thousands of certificates stops at the 17th.
                let parsed = try Certificate.parseChain(pem: pem, maxCount: maxCertificates - certificates.count)
                guard !parsed.isEmpty else { throw refuse("element \(index) holds no certificate") }
                certificates += parsed
            } catch let error as IssuerError {
                throw error
            } catch {
                throw refuse("element \(index): \(error)")
            }
        }
        guard certificates.count <= maxCertificates else {
            throw refuse("\(certificates.count) certificates (at most \(maxCertificates))")
        }
        let root = certificates[certificates.count - 1]
        guard root.isSelfSigned, root.isCA else { throw refuse("the last certificate is not a self-signed CA (root)") }
        let chain = Array(certificates.dropLast())
        guard chain[0].publicKeyMatches(key) else {
            throw refuse("the leaf certifies another public key than the one in our CSR")
        }
        let svid: X509SVID
        do throws(SVIDError) {
            svid = try X509SVID(chain: chain, privateKey: key, now: now, expectedID: expectedID)
        } catch {
            throw refuse("\(error)")
        }
        do {
            try TrustStore(roots: [root]).verify(leaf: chain[0], intermediates: Array(chain.dropFirst()), at: now)
        } catch {
            throw refuse("\(error)")
        }
        var roots = [root]
        for fileRoot in fileRoots where !roots.contains(fileRoot) { roots.append(fileRoot) }
        let bundle = X509Bundle(trustDomain: expectedID.trustDomain, certificates: roots)
        return IdentityUpdate(svid: svid, bundles: [bundle])
    }
}
