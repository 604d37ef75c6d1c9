import PKI
import SPIFFE

/// PEM, DER and PKCS#8 parsing, and X509-SVID validation. The first byte picks the parser; the rest is its input
/// (for SVIDs: first the time of validation, 4 bytes of seconds since 2020-01-01, so seeds captured from real
/// peers are in date). Whatever parses is read back through every accessor the agent uses.
enum PKIParsingTarget {

    static func run(_ input: UnsafeRawBufferPointer) {
        var reader = InputReader(input)
        let mode = reader.byte() % 8
        switch mode {
        case 0: inspect(try? Certificate.parseChain(pem: String(decoding: reader.rest(), as: UTF8.self)))
        case 1: inspect(try? Certificate.parseChain(der: reader.rest()))
        case 2: inspect(try? PrivateKey(pkcs8DER: reader.rest()))
        case 3: inspect(try? PrivateKey(pem: String(decoding: reader.rest(), as: UTF8.self)))
        case 4:
            let now = Timestamp(secondsSinceEpoch: WorkloadAPIResponsesTarget.epoch2020 + Int64(reader.uint32()))
            // The Workload API form: a concatenated DER chain, a PKCS#8 key, a DER bundle.
            let chain = reader.lengthPrefixed()
            let key = reader.lengthPrefixed()
            let bundle = reader.rest()
            guard let svid = try? X509SVID(chainDER: chain, keyPKCS8DER: key, now: now) else { return }
            inspect(svid.chain)
            if let bundle = try? X509Bundle(trustDomain: svid.spiffeID.trustDomain, der: bundle) {
                _ = try? svid.verify(against: bundle, at: now)
            }
        case 5:
            let now = Timestamp(secondsSinceEpoch: WorkloadAPIResponsesTarget.epoch2020 + Int64(reader.uint32()))
            // The file form: a PEM chain and a PEM key in one text (file-cert: reads them from two files).
            let text = String(decoding: reader.rest(), as: UTF8.self)
            guard let svid = try? X509SVID(chainPEM: text, keyPEM: text, now: now) else { return }
            inspect(svid.chain)
            if let bundle = try? X509Bundle(trustDomain: svid.spiffeID.trustDomain, pem: text) {
                _ = try? svid.verify(against: bundle, at: now)
            }
        case 6: _ = try? CertificateSigningRequest(der: reader.rest())
        default:
            let text = String(decoding: reader.rest(), as: UTF8.self)
            if let bundle = try? X509Bundle(trustDomain: TrustDomain("example.org"), pem: text) {
                inspect(bundle.certificates)
                _ = try? TrustStore(roots: bundle.certificates)
            }
        }
    }

    private static func inspect(_ chain: [Certificate]?) {
        guard let chain else { return }
        for certificate in chain {
            _ = certificate.subject
            _ = certificate.issuer
            _ = certificate.serialHex
            _ = certificate.notBefore
            _ = certificate.notAfter
            _ = certificate.uriSANs
            _ = certificate.dnsSANs
            _ = certificate.isCA
            _ = certificate.pathLength
            _ = certificate.keyUsage
            _ = certificate.extendedKeyUsage
            _ = certificate.isSelfSigned
            _ = certificate.sha256Fingerprint
            _ = certificate.publicKey
            _ = certificate.pem
        }
        _ = try? Certificate.parseChain(der: Certificate.concatenatedDER(chain))
    }

    private static func inspect(_ key: PrivateKey?) {
        guard let key else { return }
        _ = try? key.pkcs8DER()
        _ = try? key.pkcs8PEM()
        _ = key.publicKey
    }
}
