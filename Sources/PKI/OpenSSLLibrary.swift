private import COpenSSL

/// How OpenSSL starts in this process.
public enum OpenSSLLibrary {
    /// Call first, before any other OpenSSL use. OpenSSL reads the system's `openssl.cnf` on first use, which the
    /// agent does not need (it configures every context it makes) and which costs start-up time; it is read only
    /// when `OPENSSL_CONF` names one, so an operator who relies on a configuration (a FIPS provider) still gets it.
    public static func initialize(environment: [String: String]) {
        if let configuration = environment["OPENSSL_CONF"], !configuration.isEmpty { return }
        // Without OpenSSL's table of legacy cipher names (`EVP_get_cipherbyname`), which nothing here reads: every
        // cipher the agent uses (TLS to istiod and bundle endpoints) is fetched from the provider by the name the
        // provider gives it. Why: OpenSSL 3.0 fills that table (~170 ciphers, 0.38 M instructions) and then copies
        // each name into the provider name map on its first fetch of anything (1.6 M), a sixth of the agent's
        // start-up. Digests stay: certificate signatures are checked through `EVP_get_digestbynid`. An encrypted
        // legacy PEM key, which needs the table to name its cipher, is refused either way (no passphrase is ever
        // given).
        _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ADD_ALL_CIPHERS), nil)
        // The random generators as Hash_DRBG over SHA-256 (NIST SP 800-90A, 256-bit strength, as the default
        // CTR_DRBG over AES-256), set before any is made. Why: making the default's first generator fetches
        // AES-256-CTR, and OpenSSL 3.0's first cipher fetch builds every cipher's method and legacy names, ~3 M
        // instructions (a sixth of the agent's start-up), while SHA-256 is fetched anyway for the first signature.
        _ = RAND_set_DRBG_type(nil, "HASH-DRBG", nil, nil, "SHA256")
    }
}
