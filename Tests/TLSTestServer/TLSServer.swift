private import COpenSSL

@testable import PKI

/// A TLS server as a byte transducer, the counterpart of `TLSClient` over the same memory BIOs. The agent serves SDS
/// on a Unix socket without TLS; this exists so `TLSClient` can be tested in memory against a real OpenSSL peer
/// (byte by byte, wrong names, untrusted roots, old protocol versions) without sockets.
public final class TLSServer {
    public enum State: Sendable, Equatable {
        case handshaking
        case established(alpn: String?)
        case failed(String)
    }

    public private(set) var state: State = .handshaking
    private let ssl: OpaquePointer
    private let networkIn: OpaquePointer
    private let networkOut: OpaquePointer
    /// The ALPN callback's argument: retained for the context's lifetime, released in `deinit` after the SSL
    /// (and with it the context) is freed.
    private var alpnBox: Unmanaged<ALPNChoice>?
    /// The server whose context this connection shares (kept alive with its ALPN choice).
    private var sibling: TLSServer?

    /// - Parameters:
    ///   - chain: the server's certificate first, then intermediates.
    ///   - alpn: the protocol to select when the client offers it (nil: no ALPN answer at all).
    ///   - maxTLS11: cap the server at TLS 1.1, to show a client refuses it.
    public init(chain: [Certificate], key: PrivateKey, alpn: String? = "h2", maxTLS11: Bool = false) throws {
        PKIError.clearErrorQueue()
        guard let method = TLS_server_method(), let ctx = SSL_CTX_new(method) else {
            throw PKIError.openSSL("SSL_CTX_new")
        }
        defer { SSL_CTX_free(ctx) }
        if maxTLS11 {
            _ = sds_SSL_CTX_set_max_version(ctx, sds_TLS1_1_VERSION())
            // OpenSSL 3 refuses TLS < 1.2 at its default security level: lower it so the old version is offered.
            SSL_CTX_set_security_level(ctx, 0)
        }
        guard let leaf = chain.first else { throw PKIError(operation: "empty server chain") }
        let parsedLeaf = try Certificate(der: leaf.der)
        guard SSL_CTX_use_certificate(ctx, parsedLeaf.handle.pointer) == 1 else {
            throw PKIError.openSSL("SSL_CTX_use_certificate")
        }
        for intermediate in chain.dropFirst() {
            // add1: the context takes its own reference.
            guard SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_CERT, 1, UnsafeMutableRawPointer(intermediate.handle.pointer)) == 1
            else { throw PKIError.openSSL("adding an intermediate") }
        }
        guard SSL_CTX_use_PrivateKey(ctx, key.handle.pointer) == 1 else {
            throw PKIError.openSSL("SSL_CTX_use_PrivateKey")
        }
        if let alpn {
            let box = Unmanaged.passRetained(ALPNChoice(Array(alpn.utf8)))
            alpnBox = box
            SSL_CTX_set_alpn_select_cb(
                ctx,
                { _, out, outLength, offered, offeredLength, arg in
                    let choice = Unmanaged<ALPNChoice>.fromOpaque(arg!).takeUnretainedValue()
                    var index = 0
                    let length = Int(offeredLength)
                    while index < length {
                        let size = Int(offered![index])
                        let name = Array(UnsafeBufferPointer(start: offered! + index + 1, count: size))
                        if name == choice.name {
                            out!.pointee = offered! + index + 1
                            outLength!.pointee = UInt8(size)
                            return SSL_TLSEXT_ERR_OK
                        }
                        index += 1 + size
                    }
                    return SSL_TLSEXT_ERR_NOACK
                }, box.toOpaque())
        }
        (ssl, networkIn, networkOut) = try Self.connection(on: ctx)
    }

    /// One server-side SSL on `ctx` over two memory BIOs (the SSL frees both).
    private static func connection(on ctx: OpaquePointer) throws -> (OpaquePointer, OpaquePointer, OpaquePointer) {
        guard let ssl = SSL_new(ctx), let networkIn = BIO_new(BIO_s_mem()), let networkOut = BIO_new(BIO_s_mem())
        else { throw PKIError.openSSL("SSL_new") }
        SSL_set_bio(ssl, networkIn, networkOut)
        SSL_set_accept_state(ssl)
        return (ssl, networkIn, networkOut)
    }

    /// A second connection on `other`'s context (its certificate, ALPN and session-ticket keys): what a client that
    /// resumes a session meets.
    public init(nextConnectionOf other: TLSServer) throws {
        guard let ctx = SSL_get_SSL_CTX(other.ssl) else { throw PKIError.openSSL("SSL_get_SSL_CTX") }
        (ssl, networkIn, networkOut) = try Self.connection(on: ctx)
        sibling = other
    }

    /// The handshake resumed an earlier session instead of a full one.
    public var sessionReused: Bool { SSL_session_reused(ssl) == 1 }

    deinit {
        SSL_free(ssl)
        alpnBox?.release()
    }

    /// Feeds ciphertext; returns decrypted application bytes.
    public func receive(_ bytes: [UInt8]) -> [UInt8] {
        if case .failed = state { return [] }
        if !bytes.isEmpty { _ = bytes.withUnsafeBytes { BIO_write(networkIn, $0.baseAddress, Int32($0.count)) } }
        if case .handshaking = state {
            let result = SSL_do_handshake(ssl)
            if result == 1 {
                var data: UnsafePointer<UInt8>? = nil
                var length: UInt32 = 0
                SSL_get0_alpn_selected(ssl, &data, &length)
                state = .established(
                    alpn: data.map {
                        String(decoding: UnsafeBufferPointer(start: $0, count: Int(length)), as: UTF8.self)
                    })
            } else {
                let error = SSL_get_error(ssl, result)
                if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE {
                    state = .failed(PKIError.drainErrorQueue().joined(separator: "; "))
                }
                return []
            }
        }
        var plaintext: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            var read = 0
            let result = chunk.withUnsafeMutableBytes { SSL_read_ex(ssl, $0.baseAddress, $0.count, &read) }
            guard result == 1 else {
                PKIError.clearErrorQueue()
                break
            }
            plaintext += chunk[0..<read]
        }
        return plaintext
    }

    public func send(_ plaintext: [UInt8]) {
        var written = 0
        _ = plaintext.withUnsafeBytes { SSL_write_ex(ssl, $0.baseAddress, $0.count, &written) }
    }

    /// Queues close_notify (take it with `takeCiphertext`): the end of a body framed by the connection's end.
    public func shutdown() {
        _ = SSL_shutdown(ssl)
        PKIError.clearErrorQueue()
    }

    public func takeCiphertext() -> [UInt8] {
        let pending = Int(sds_BIO_pending(networkOut))
        guard pending > 0 else { return [] }
        var out = [UInt8](repeating: 0, count: pending)
        let read = out.withUnsafeMutableBytes { BIO_read(networkOut, $0.baseAddress, Int32($0.count)) }
        return read > 0 ? Array(out.prefix(Int(read))) : []
    }
}

private final class ALPNChoice {
    let name: [UInt8]
    init(_ name: [UInt8]) { self.name = name }
}
