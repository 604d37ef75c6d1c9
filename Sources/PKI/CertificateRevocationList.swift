private import COpenSSL
import Glibc

/// Owns one `X509_CRL`; frees it in `deinit`.
final class X509CRLHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { X509_CRL_free(pointer) }
}

/// An X.509 certificate revocation list (RFC 5280 §5), as Envoy's `CertificateValidationContext.crl` takes it.
public struct CertificateRevocationList: Sendable {
    let handle: X509CRLHandle

    /// The most CRLs one file may hold. Why 16: one per CA of a trust domain's hierarchy; more is a wrong file.
    public static let maxPerFile = 16

    /// Every `X509 CRL` block of `pem`, in order; at least one, at most `maxPerFile` (checked while parsing).
    public static func parseAll(pem: String) throws -> [CertificateRevocationList] {
        PKIError.clearErrorQueue()
        let bio = try MemoryBIO(bytes: Array(pem.utf8))
        var lists: [CertificateRevocationList] = []
        while let crl = PEM_read_bio_X509_CRL(bio.bio, nil, nil, nil) {
            let list = CertificateRevocationList(handle: X509CRLHandle(taking: crl))
            guard lists.count < maxPerFile else {
                throw PKIError(operation: "parsing CRLs", reasons: ["more than \(maxPerFile) CRLs"])
            }
            lists.append(list)
        }
        let code = ERR_peek_last_error()
        let cleanEnd = ERR_GET_REASON(code) == PEM_R_NO_START_LINE && !lists.isEmpty
        if code != 0 && !cleanEnd { throw PKIError.openSSL("parsing PEM CRLs (\(lists.count) read before the error)") }
        PKIError.clearErrorQueue()
        guard !lists.isEmpty else {
            throw PKIError(operation: "parsing PEM CRLs", reasons: ["no X509 CRL block found"])
        }
        return lists
    }

    /// When it was issued (`thisUpdate`).
    public var thisUpdate: Timestamp { Certificate.crlTimes(handle.pointer).thisUpdate }
    /// When the next one is due (`nextUpdate`); nil when the CRL does not say (RFC 5280 requires it).
    public var nextUpdate: Timestamp? { Certificate.crlTimes(handle.pointer).nextUpdate }

    /// How many certificates it revokes.
    public var revokedCount: Int { Int(sds_X509_CRL_revoked_count(handle.pointer)) }

    /// The issuer's name, RFC 2253.
    public var issuer: String { Certificate.nameString(X509_CRL_get_issuer(handle.pointer)) }

    /// Whether `certificate` (a CA) issued and signed this CRL: names equal and the signature verifies with its key.
    public func isSigned(by certificate: Certificate) -> Bool {
        guard
            X509_NAME_cmp(X509_CRL_get_issuer(handle.pointer), X509_get_subject_name(certificate.handle.pointer))
                == 0,
            let key = X509_get0_pubkey(certificate.handle.pointer)
        else { return false }
        defer { PKIError.clearErrorQueue() }
        return X509_CRL_verify(handle.pointer, key) == 1
    }

    /// PEM encoding (one `X509 CRL` block).
    public var pem: String {
        guard let bio = try? MemoryBIO(), PEM_write_bio_X509_CRL(bio.bio, handle.pointer) == 1 else { return "" }
        return bio.string
    }
}

extension CertificateRevocationList {
    /// Why a CRL file cannot be served.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// The CRLs of `pem` that Envoy may be given: each signed by one of `issuers` (the trust domain's roots and the
    /// SVID's intermediates) and current at `now` (issued, and not past `nextUpdate`). One that is not is a
    /// refusal of the whole file — a partial set would silently stop revoking — with the reason.
    public static func validated(
        pem: String, issuers: [Certificate], now: Timestamp
    ) throws(Refusal) -> [CertificateRevocationList] {
        let lists: [CertificateRevocationList]
        do { lists = try parseAll(pem: pem) } catch { throw Refusal("not a PEM CRL file: \(error)") }
        for (index, list) in lists.enumerated() {
            guard issuers.contains(where: { list.isSigned(by: $0) }) else {
                throw Refusal("CRL \(index) (issuer \(list.issuer)) is not signed by a CA of the trust bundle")
            }
            guard list.thisUpdate <= now else {
                throw Refusal("CRL \(index) is not valid before \(list.thisUpdate)")
            }
            guard let next = list.nextUpdate else {
                throw Refusal("CRL \(index) has no nextUpdate (RFC 5280 §5.1.2.5)")
            }
            guard now < next else { throw Refusal("CRL \(index) expired at \(next) (its nextUpdate)") }
        }
        return lists
    }
}
