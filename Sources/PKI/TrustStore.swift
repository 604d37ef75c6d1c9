private import COpenSSL

/// Root certificates to verify chains against (an `X509_STORE`). Verification takes the time as a parameter
/// (`X509_V_FLAG_USE_CHECK_TIME`), never the wall clock.
public final class TrustStore: @unchecked Sendable {
    // Immutable after init; X509_STORE is safe for concurrent verification once populated.
    private let store: OpaquePointer
    public let roots: [Certificate]

    public init(roots: [Certificate]) throws {
        guard let store = X509_STORE_new() else { throw PKIError.openSSL("X509_STORE_new") }
        self.store = store
        self.roots = roots
        for root in roots {
            guard X509_STORE_add_cert(store, root.handle.pointer) == 1 else {
                throw PKIError.openSSL("adding a root to the trust store")
            }
        }
    }

    deinit { X509_STORE_free(store) }

    /// Verifies `leaf` through `intermediates` (any order) up to one of the roots, at `time`.
    /// Throws a `PKIError` carrying OpenSSL's verification message (e.g. "certificate has expired").
    public func verify(leaf: Certificate, intermediates: [Certificate] = [], at time: Timestamp) throws {
        // X509_verify_cert needs every certificate's key decoded (builder-made leaves have none; see
        // CertificateBuilder.setPublicKey). Verification is off the issuing hot path, so re-parse here.
        let leaf = try leaf.withDecodedPublicKey()
        let intermediates = try intermediates.map { try $0.withDecodedPublicKey() }
        PKIError.clearErrorQueue()
        guard let context = X509_STORE_CTX_new() else { throw PKIError.openSSL("X509_STORE_CTX_new") }
        defer { X509_STORE_CTX_free(context) }
        guard let untrusted = sds_sk_X509_new_null() else { throw PKIError.openSSL("sk_X509_new_null") }
        // The stack borrows the certificates (sk_X509_free, not pop_free): the Certificates own them.
        defer { sds_sk_X509_free(untrusted) }
        for certificate in intermediates {
            guard sds_sk_X509_push(untrusted, certificate.handle.pointer) > 0 else {
                throw PKIError.openSSL("sk_X509_push")
            }
        }
        guard X509_STORE_CTX_init(context, store, leaf.handle.pointer, untrusted) == 1 else {
            throw PKIError.openSSL("X509_STORE_CTX_init")
        }
        // Sets X509_V_FLAG_USE_CHECK_TIME on the context's parameters.
        X509_STORE_CTX_set_time(context, 0, time_t(time.secondsSinceEpoch))
        // The context borrows the handles: keep the owning Certificates alive until verification ends.
        let verified = withExtendedLifetime((leaf, intermediates)) { X509_verify_cert(context) }
        if verified != 1 {
            let code = X509_STORE_CTX_get_error(context)
            let depth = X509_STORE_CTX_get_error_depth(context)
            let message = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
            PKIError.clearErrorQueue()
            throw PKIError(operation: "verifying the certificate chain", reasons: ["\(message) (depth \(depth))"])
        }
    }
}
