import Foundation
import PKI
import SPIFFE
import TestSupport

/// A test CA for the federated domain `east.example`, valid around the real time (the TLS handshakes in these
/// tests are verified by OpenSSL against the wall clock, not a fake one).
struct TestBundleCA {
    let ca: TestCA
    var root: Certificate { ca.root }

    init(trustDomain: String = "east.example") throws {
        ca = try TestCA(
            trustDomain: trustDomain, now: Timestamp(secondsSinceEpoch: Int64(Date().timeIntervalSince1970)))
    }

    /// A SPIFFE bundle document (JWKS) holding the root as its one x509-svid key.
    func document(sequence: Int64? = 1, refreshHint: Int64? = 300) -> String {
        var fields = [
            #""keys":[{"use":"x509-svid","kty":"EC","x5c":["\#(Data(root.der).base64EncodedString())"]}]"#
        ]
        if let sequence { fields.append(#""spiffe_sequence":\#(sequence)"#) }
        if let refreshHint { fields.append(#""spiffe_refresh_hint":\#(refreshHint)"#) }
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// An X.509-SVID serving certificate for `spiffeID` and its key.
    func svid(_ spiffeID: String) throws -> (chain: [Certificate], key: PrivateKey) {
        try ca.makeLeaf(TestCA.LeafOptions(spiffeID: spiffeID))
    }

    /// A Web PKI style serving certificate (DNS SAN, serverAuth) for `dnsName`, signed by the root.
    func webCertificate(dnsName: String) throws -> (chain: [Certificate], key: PrivateKey) {
        let key = try PrivateKey.generate()
        let certificate = try CertificateBuilder(
            subject: DistinguishedName(commonName: dnsName), publicKey: key.publicKey,
            serialNumber: try CertificateBuilder.randomSerialNumber(), notBefore: ca.now - 60,
            notAfter: ca.now + 3600, keyUsage: [.digitalSignature], extendedKeyUsage: [.serverAuth],
            dnsSANs: [dnsName]
        ).sign(issuer: ca.root, issuerKey: ca.rootKey)
        return ([certificate], key)
    }
}
