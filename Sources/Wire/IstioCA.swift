internal import CSDSProtos

// istio.v1.auth.IstioCertificateService (Protos/istio_ca.proto): what istiod and cert-manager's istio-csr serve.

/// `istio.v1.auth.IstioCertificateRequest`.
public struct IstioCertificateRequest: Sendable, Equatable {
    /// PEM-encoded PKCS#10 CSR.
    public var csr: String
    /// Requested lifetime in seconds (0: the CA's default); the CA may shorten it.
    public var validityDuration: Int64

    public init(csr: String, validityDuration: Int64 = 0) {
        self.csr = csr
        self.validityDuration = validityDuration
    }
}

/// `istio.v1.auth.IstioCertificateResponse`.
public struct IstioCertificateResponse: Sendable, Equatable {
    /// One PEM certificate per element, leaf first, root last.
    public var certChain: [String]

    public init(certChain: [String]) { self.certChain = certChain }
}

/// `istio.v1.auth.IstioCertificateService`.
public enum IstioCertificateServiceMethod: String, Sendable, CaseIterable {
    /// Unary `IstioCertificateRequest` → `IstioCertificateResponse`.
    case createCertificate = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

    /// The `:path` header value.
    public var path: String { rawValue }
}

typealias CIstioCertificateRequest = Istio__V1__Auth__IstioCertificateRequest
typealias CIstioCertificateResponse = Istio__V1__Auth__IstioCertificateResponse

extension IstioCertificateRequest: WireMessage {
    public static var protoName: String { "istio.v1.auth.IstioCertificateRequest" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: istio__v1__auth__istio_certificate_request__unpack,
            descriptor: istio__v1__auth__istio_certificate_request__descriptor,
            convert: { (c) throws(WireError) in
                IstioCertificateRequest(
                    csr: try swiftString(c.pointee.csr, field: "IstioCertificateRequest.csr"),
                    validityDuration: c.pointee.validity_duration)
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: csr.utf8.count + 64, packedSize: istio__v1__auth__istio_certificate_request__get_packed_size,
            pack: istio__v1__auth__istio_certificate_request__pack,
            build: { arena in
                let c = arena.make(CIstioCertificateRequest.self)
                istio__v1__auth__istio_certificate_request__init(c)
                c.pointee.csr = arena.cString(csr)
                c.pointee.validity_duration = validityDuration
                return c
            })
    }
}

extension IstioCertificateResponse: WireMessage {
    public static var protoName: String { "istio.v1.auth.IstioCertificateResponse" }

    public init(wireBuffer: UnsafeRawBufferPointer, limit: Int) throws(WireError) {
        self = try Codec.decode(
            wireBuffer, limit: limit, protoName: Self.protoName,
            unpack: istio__v1__auth__istio_certificate_response__unpack,
            descriptor: istio__v1__auth__istio_certificate_response__descriptor,
            convert: { (c) throws(WireError) in
                IstioCertificateResponse(
                    certChain: try swiftStrings(
                        c.pointee.n_cert_chain, c.pointee.cert_chain, field: "IstioCertificateResponse.cert_chain"))
            })
    }

    public func wireBytes() -> [UInt8] {
        Codec.encode(
            estimatedSize: certChain.reduce(64) { $0 + $1.utf8.count + 8 },
            packedSize: istio__v1__auth__istio_certificate_response__get_packed_size,
            pack: istio__v1__auth__istio_certificate_response__pack,
            build: { arena in
                let c = arena.make(CIstioCertificateResponse.self)
                istio__v1__auth__istio_certificate_response__init(c)
                (c.pointee.n_cert_chain, c.pointee.cert_chain) = arena.cStrings(certChain)
                return c
            })
    }
}
