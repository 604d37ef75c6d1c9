private import COpenSSL

/// How OpenSSL starts in this process.
public enum OpenSSLLibrary {
    /// Call first, before any other OpenSSL use. OpenSSL reads the system's `openssl.cnf` on first use, which the
    /// agent does not need (it configures every context it makes) and which costs start-up time; it is read only
    /// when `OPENSSL_CONF` names one, so an operator who relies on a configuration (a FIPS provider) still gets it.
    public static func initialize(environment: [String: String]) {
        if let configuration = environment["OPENSSL_CONF"], !configuration.isEmpty { return }
        _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_LOAD_CONFIG), nil)
    }
}
