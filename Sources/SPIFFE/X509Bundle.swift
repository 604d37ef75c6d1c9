public import PKI

/// The X.509 roots of one trust domain (a SPIFFE bundle's X.509 authorities).
public struct X509Bundle: Sendable, Hashable {
    public let trustDomain: TrustDomain
    public let certificates: [Certificate]

    public init(trustDomain: TrustDomain, certificates: [Certificate]) {
        self.trustDomain = trustDomain
        self.certificates = certificates
    }

    /// Parses every `CERTIFICATE` block of `pem`.
    public init(trustDomain: TrustDomain, pem: String) throws {
        self.init(trustDomain: trustDomain, certificates: try Certificate.parseChain(pem: pem))
    }

    /// Parses concatenated DER certificates (the Workload API's `bundle` field).
    public init(trustDomain: TrustDomain, der: [UInt8]) throws {
        self.init(trustDomain: trustDomain, certificates: try Certificate.parseChain(der: der))
    }

    /// PEM blocks, in order (Envoy's `trusted_ca`).
    public var pem: String { Certificate.pem(certificates) }

    /// DER certificates concatenated (the Workload API's `bundle`).
    public var der: [UInt8] { Certificate.concatenatedDER(certificates) }

    /// Whether `der` is exactly this bundle's certificates, concatenated in order: compared in place, without
    /// building the concatenation.
    public func isEncoded(as der: [UInt8]) -> Bool {
        var offset = 0
        for certificate in certificates {
            let own = certificate.der
            guard der.count - offset >= own.count, der[offset..<offset + own.count].elementsEqual(own) else {
                return false
            }
            offset += own.count
        }
        return offset == der.count
    }
}
