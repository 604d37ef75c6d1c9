private import COpenSSL

/// Which roots a TLS client trusts for the server's certificate.
public enum TLSTrust: Sendable {
    /// Exactly these roots (istio-agent's root-cert file, `CA_ROOT_CA`).
    case roots([Certificate])
    /// The operating system's trust store (`CA_ROOT_CA=SYSTEM`: istiod behind a publicly trusted certificate).
    /// OpenSSL's default verify paths, so `SSL_CERT_FILE` and `SSL_CERT_DIR` override the distribution's bundle.
    case system
    /// A SPIFFE peer (a federation bundle endpoint's `https_spiffe` profile): the chain must verify against
    /// `roots` (that trust domain's bundle) and the leaf must be an X.509-SVID whose one URI SAN is exactly `id`.
    /// No DNS name or address is checked: a SPIFFE ID names the server, not its host (`serverName` is still sent
    /// as SNI when it is a host name, for servers that host several names).
    case spiffe(roots: [Certificate], id: String)
}

/// What a TLS client session expects of its server.
public struct TLSClientConfiguration: Sendable {
    public var trust: TLSTrust
    /// The name the server's certificate must carry (DNS SAN, or an IP SAN for an address); also sent as SNI when
    /// it is a host name.
    public var serverName: String
    /// ALPN protocols offered, in preference order; the server must pick one of them. Empty: no ALPN at all
    /// (HTTP/1.1, where a server that ignores ALPN is normal), and the state reports `alpn: ""`.
    public var alpn: [String]

    public init(trust: TLSTrust, serverName: String, alpn: [String] = ["h2"]) {
        self.trust = trust
        self.serverName = serverName
        self.alpn = alpn
    }
}

/// Owns one `SSL_CTX`.
final class SSLContextHandle {
    let pointer: OpaquePointer
    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { SSL_CTX_free(pointer) }
}

/// The part of a TLS client that depends only on what it trusts and offers: an `SSL_CTX` with the trust roots (or
/// the system store) and ALPN set, and the last session each server name gave it, so the next connection resumes
/// it: a resumed handshake skips decoding and verifying the server's chain again (1–2 ms of the event loop with
/// OpenSSL 3.0), and the session was verified against these same roots. Used by one thread (its event loop).
public final class TLSClientContext {
    let handle: SSLContextHandle
    let alpn: [String]
    /// The SPIFFE ID the server's leaf must carry (`TLSTrust.spiffe`), checked once the chain verified.
    let wantedSPIFFEID: String?
    /// The latest session per server name. Bounded by the names this process dials (istiod, a few bundle
    /// endpoints), all from its configuration.
    private var sessions: [String: OpaquePointer] = [:]

    public init(trust: TLSTrust, alpn: [String] = ["h2"]) throws {
        PKIError.clearErrorQueue()
        guard let method = TLS_client_method(), let ctx = SSL_CTX_new(method) else {
            throw PKIError.openSSL("SSL_CTX_new")
        }
        let context = SSLContextHandle(taking: ctx)
        // TLS 1.2 at least: what istio-agent and gRPC require; older versions lack AEAD-only suites.
        guard sds_SSL_CTX_set_min_tls12(ctx) == 1 else { throw PKIError.openSSL("setting TLS 1.2 as the minimum") }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        switch trust {
        case .system:
            guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                throw PKIError.openSSL("loading the system trust store")
            }
        case .roots(let roots), .spiffe(let roots, _):
            guard !roots.isEmpty else { throw PKIError(operation: "no trusted roots for the TLS server") }
            guard let store = SSL_CTX_get_cert_store(ctx) else { throw PKIError.openSSL("SSL_CTX_get_cert_store") }
            for root in roots {
                let decoded = try root.withDecodedPublicKey()
                guard X509_STORE_add_cert(store, decoded.handle.pointer) == 1 else {
                    throw PKIError.openSSL("adding a trusted root")
                }
            }
        }
        if case .spiffe(_, let id) = trust {
            guard !id.isEmpty else { throw PKIError(operation: "empty expected SPIFFE ID") }
            wantedSPIFFEID = id
        } else {
            wantedSPIFFEID = nil
        }
        var protocols: [UInt8] = []
        for name in alpn {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.count < 256 else { throw PKIError(operation: "invalid ALPN name \(name)") }
            protocols.append(UInt8(bytes.count))
            protocols += bytes
        }
        if !protocols.isEmpty {
            // Returns 0 on success (unlike most of OpenSSL).
            guard SSL_CTX_set_alpn_protos(ctx, protocols, UInt32(protocols.count)) == 0 else {
                throw PKIError.openSSL("setting ALPN")
            }
        }
        self.handle = context
        self.alpn = alpn
        _ = sds_SSL_CTX_client_sessions(ctx)
        _ = SSL_CTX_set_ex_data(ctx, 0, Unmanaged.passUnretained(self).toOpaque())
        SSL_CTX_sess_set_new_cb(ctx) { ssl, session in
            guard let ssl, let session, let ctx = SSL_get_SSL_CTX(ssl), let owner = SSL_CTX_get_ex_data(ctx, 0),
                let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
            else { return 0 }
            let context = Unmanaged<TLSClientContext>.fromOpaque(owner).takeUnretainedValue()
            // Kept only where `offerSession` would use it: a SPIFFE peer's identity is checked on each connection.
            guard context.wantedSPIFFEID == nil else { return 0 }
            context.remember(session, for: String(cString: name))
            return 1  // the context owns this reference now
        }
    }

    deinit {
        for session in sessions.values { SSL_SESSION_free(session) }
    }

    private func remember(_ session: OpaquePointer, for name: String) {
        if let previous = sessions.updateValue(session, forKey: name) { SSL_SESSION_free(previous) }
    }

    /// Offers `ssl` the session last made with `name`, if any (the server may refuse it: a full handshake follows).
    func offerSession(to ssl: OpaquePointer, name: String) {
        guard let session = sessions[name] else { return }
        _ = SSL_set_session(ssl, session)
    }
}

/// A TLS client as a byte transducer (OpenSSL over two memory BIOs, no socket inside): ciphertext from the
/// network goes in with `receive`, plaintext for the application with `send`; ciphertext for the network comes
/// out of `takeCiphertext`, plaintext for the application out of `receive`'s result. The caller moves the bytes,
/// so the same HTTP/2 session code runs over a socket, over TLS, or in memory in tests.
///
///     handshaking ──(server certificate verified against the trust roots and the server name,
///          │         TLS >= 1.2, ALPN agreed)──► established ──(close_notify / error)──► closed / failed
///          └──(any verification or protocol failure)──► failed (an alert is left in takeCiphertext)
///
/// Plaintext sent before the handshake completes is held and written once it does: nothing leaves in the clear,
/// and nothing (a bearer token) leaves before the server proved who it is.
public final class TLSClient {
    public enum State: Sendable, Equatable {
        case handshaking
        /// `alpn` is the protocol the server chose.
        case established(alpn: String)
        case closed
        case failed(String)
    }

    public private(set) var state: State = .handshaking
    private let context: SSLContextHandle
    /// Kept alive while the session runs: OpenSSL's new-session callback finds it through the `SSL_CTX`.
    private let owner: TLSClientContext
    private let ssl: OpaquePointer
    /// Ciphertext in from the network (OpenSSL reads it).
    private let networkIn: OpaquePointer
    /// Ciphertext out to the network (OpenSSL writes it).
    private let networkOut: OpaquePointer
    private var heldPlaintext: [UInt8] = []
    private let wantedALPN: [String]
    /// The SPIFFE ID the server's leaf must carry (`TLSTrust.spiffe`), checked once the chain verified.
    private let wantedSPIFFEID: String?

    /// Why 16 KiB + overhead per read: one TLS record's plaintext is at most 16 KiB.
    private static let readChunk = 16 * 1024

    public convenience init(configuration: TLSClientConfiguration) throws {
        try self.init(
            context: TLSClientContext(trust: configuration.trust, alpn: configuration.alpn),
            serverName: configuration.serverName)
    }

    /// A session on a context made earlier (and shared by every session that trusts the same roots): making the
    /// context (loading a trust store, decoding roots) is the costly part, done once rather than per connection.
    public init(context: TLSClientContext, serverName name: String) throws {
        PKIError.clearErrorQueue()
        let ctx = context.handle.pointer
        wantedSPIFFEID = context.wantedSPIFFEID
        guard let ssl = SSL_new(ctx) else { throw PKIError.openSSL("SSL_new") }
        guard let networkIn = BIO_new(BIO_s_mem()), let networkOut = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw PKIError.openSSL("BIO_new")
        }
        // SSL_free frees both BIOs from here on.
        SSL_set_bio(ssl, networkIn, networkOut)
        SSL_set_connect_state(ssl)
        self.context = context.handle
        self.owner = context
        self.ssl = ssl
        self.networkIn = networkIn
        self.networkOut = networkOut
        self.wantedALPN = context.alpn
        guard !name.isEmpty else { throw PKIError(operation: "empty TLS server name") }
        guard let parameters = SSL_get0_param(ssl) else { throw PKIError.openSSL("SSL_get0_param") }
        if wantedSPIFFEID != nil {
            // The SPIFFE ID is the name checked (after the handshake); the host only routes, so it goes as SNI.
            if !Self.isIPAddress(name) {
                guard sds_SSL_set_sni(ssl, name) == 1 else { throw PKIError.openSSL("setting SNI") }
            }
        } else if Self.isIPAddress(name) {
            // An address is matched against the certificate's IP SANs, and never sent as SNI (RFC 6066).
            guard X509_VERIFY_PARAM_set1_ip_asc(parameters, name) == 1 else {
                throw PKIError.openSSL("setting the expected server address \(name)")
            }
        } else {
            guard SSL_set1_host(ssl, name) == 1 else { throw PKIError.openSSL("setting the expected server name") }
            guard sds_SSL_set_sni(ssl, name) == 1 else { throw PKIError.openSSL("setting SNI") }
            // Keyed by the SNI name (what the new-session callback sees): an address gets no resumption.
            context.offerSession(to: ssl, name: name)
        }
        // Starts the handshake: the ClientHello waits in takeCiphertext.
        advanceHandshake()
    }

    deinit { SSL_free(ssl) }

    private static func isIPAddress(_ name: String) -> Bool {
        name.contains(":") || (!name.isEmpty && name.allSatisfy { $0 == "." || $0.isASCII && $0.isNumber })
    }

    /// The handshake resumed a session the context kept from an earlier connection.
    public var resumedSession: Bool { SSL_session_reused(ssl) == 1 }

    public var isEstablished: Bool {
        if case .established = state { return true }
        return false
    }

    /// Feeds ciphertext from the network; returns the plaintext it decrypts to (possibly none). After a failure
    /// the state says why, and an alert for the peer may be waiting in `takeCiphertext`.
    public func receive(_ ciphertext: UnsafeRawBufferPointer) -> [UInt8] {
        switch state {
        case .closed, .failed: return []
        case .handshaking, .established: break
        }
        if ciphertext.count > 0 {
            let written = BIO_write(networkIn, ciphertext.baseAddress, Int32(ciphertext.count))
            if written != Int32(ciphertext.count) {
                fail("buffering received bytes: \(PKIError.drainErrorQueue().joined(separator: "; "))")
                return []
            }
        }
        if case .handshaking = state { advanceHandshake() }
        guard case .established = state else { return [] }
        var plaintext: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: Self.readChunk)
        while true {
            var read = 0
            let result = chunk.withUnsafeMutableBytes { SSL_read_ex(ssl, $0.baseAddress, $0.count, &read) }
            if result == 1 {
                plaintext += chunk[0..<read]
                continue
            }
            let error = SSL_get_error(ssl, result)
            if error == SSL_ERROR_WANT_READ { break }
            if error == SSL_ERROR_ZERO_RETURN {
                state = .closed
                break
            }
            fail(describeFailure(error))
            break
        }
        return plaintext
    }

    /// Encrypts application bytes (held until the handshake completes).
    public func send(_ plaintext: [UInt8]) {
        guard !plaintext.isEmpty else { return }
        switch state {
        case .handshaking: heldPlaintext += plaintext
        case .established: write(plaintext)
        case .closed, .failed: break
        }
    }

    /// Ciphertext waiting for the network (handshake messages, records, alerts).
    public func takeCiphertext() -> [UInt8] {
        let pending = Int(sds_BIO_pending(networkOut))
        guard pending > 0 else { return [] }
        var out = [UInt8](repeating: 0, count: pending)
        let read = out.withUnsafeMutableBytes { BIO_read(networkOut, $0.baseAddress, Int32($0.count)) }
        return read > 0 ? Array(out.prefix(Int(read))) : []
    }

    /// Queues close_notify (take it with `takeCiphertext`).
    public func close() {
        guard case .established = state else { return }
        _ = SSL_shutdown(ssl)
        PKIError.clearErrorQueue()
        state = .closed
    }

    private func advanceHandshake() {
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            var data: UnsafePointer<UInt8>? = nil
            var length: UInt32 = 0
            SSL_get0_alpn_selected(ssl, &data, &length)
            let selected = data.map {
                String(decoding: UnsafeBufferPointer(start: $0, count: Int(length)), as: UTF8.self)
            }
            // A server that ignores ALPN would speak something we did not offer; gRPC over TLS requires h2. With
            // nothing offered, no server can have chosen anything.
            let agreed: String
            if wantedALPN.isEmpty {
                agreed = ""
            } else {
                guard let selected, wantedALPN.contains(selected) else {
                    fail("the server agreed to no ALPN protocol of \(wantedALPN) (got \(selected ?? "none"))")
                    return
                }
                agreed = selected
            }
            // Before `established`, so no held byte is written to a server that is not the SPIFFE ID expected.
            if let wantedSPIFFEID, let refusal = checkSPIFFEPeer(wantedSPIFFEID) {
                fail(refusal)
                return
            }
            state = .established(alpn: agreed)
            if !heldPlaintext.isEmpty {
                let held = heldPlaintext
                heldPlaintext = []
                write(held)
            }
            return
        }
        let error = SSL_get_error(ssl, result)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return }
        fail(describeFailure(error))
    }

    /// Why the verified peer is not the X.509-SVID `id` (nil when it is). OpenSSL has already verified the chain
    /// against the roots; what it cannot check is the URI SAN: exactly one (an X.509-SVID has one), equal to `id`
    /// byte for byte, on a leaf that is not a CA.
    private func checkSPIFFEPeer(_ id: String) -> String? {
        guard let raw = SSL_get1_peer_certificate(ssl), let handle = try? X509Handle(taking: raw) else {
            PKIError.clearErrorQueue()
            return "server certificate rejected: the server sent no certificate"
        }
        let leaf = Certificate(handle: handle)
        guard !leaf.isCA else { return "server certificate rejected: the leaf is a CA, not an X.509-SVID" }
        let uris = leaf.uriSANs
        guard uris == [id] else {
            let shown = uris.isEmpty ? "no URI SAN" : uris.prefix(4).joined(separator: ", ")
            return "server certificate rejected: its SPIFFE ID is \(shown), expected \(id)"
        }
        return nil
    }

    private func write(_ plaintext: [UInt8]) {
        var written = 0
        let result = plaintext.withUnsafeBytes { SSL_write_ex(ssl, $0.baseAddress, $0.count, &written) }
        // A memory BIO never pushes back, so a write either takes everything or the session is broken.
        if result != 1 { fail(describeFailure(SSL_get_error(ssl, 0))) }
    }

    private func describeFailure(_ error: Int32) -> String {
        let verify = SSL_get_verify_result(ssl)
        let reasons = PKIError.drainErrorQueue()
        if verify != X509_V_OK {
            let text = X509_verify_cert_error_string(verify).map { String(cString: $0) } ?? "error \(verify)"
            return "server certificate rejected: \(text)"
        }
        if reasons.isEmpty { return "TLS error \(error)" }
        return "TLS error: " + reasons.joined(separator: "; ")
    }

    private func fail(_ reason: String) {
        heldPlaintext = []
        state = .failed(reason)
    }
}
