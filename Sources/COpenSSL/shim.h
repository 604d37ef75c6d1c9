#ifndef SDS_COPENSSL_SHIM_H
#define SDS_COPENSSL_SHIM_H
// OpenSSL 3 headers plus `static inline` wrappers for the macros (and variadic or type-generic
// helpers) Swift cannot import. Only the PKI module imports this, and never re-exports it.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/ssl.h>

static inline long sds_BIO_get_mem_data(BIO *bio, char **data) {
    return BIO_ctrl(bio, BIO_CTRL_INFO, 0, (void *)data);
}

static inline void sds_OPENSSL_free(void *ptr) { OPENSSL_free(ptr); }

static inline int sds_X509_CRL_revoked_count(X509_CRL *crl) {
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
    return revoked == NULL ? 0 : sk_X509_REVOKED_num(revoked);
}

// EVP_EC_gen is a variadic macro: generate an EC key on a named group (e.g. "P-256").
static inline EVP_PKEY *sds_EC_generate(const char *group) {
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL) return NULL;
    if (EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_CTX_set_group_name(ctx, group) <= 0 ||
        EVP_PKEY_generate(ctx, &pkey) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        return NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

// A P-256 key pair from its raw parts (32-byte big-endian scalar, 65-byte uncompressed point) through the EC key
// manager: OpenSSL 3.0's decoder framework costs ~2.5M instructions per key (~8M the first time), this ~50k. The
// point is checked to lie on the curve (as the decoder does); the scalar's copy here is cleansed before returning.
static inline EVP_PKEY *sds_EC_P256_from_raw(const unsigned char *priv, const unsigned char *pub) {
    unsigned char native[32];
    BIGNUM *bn = BN_bin2bn(priv, 32, NULL);
    if (bn == NULL) return NULL;
    int ok = BN_bn2nativepad(bn, native, (int)sizeof native) == (int)sizeof native;
    BN_clear_free(bn);
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = ok ? EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL) : NULL;
    if (ctx != NULL) {
        char group[] = "prime256v1";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
            OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_PRIV_KEY, native, sizeof native),
            OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pub, 65),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(ctx);
    }
    OPENSSL_cleanse(native, sizeof native);
    return pkey;
}

// An EC key's raw parts: the scalar big-endian, left-padded to `privLen`, and the encoded public point (its
// conversion form: uncompressed for every key we generate). 1 on success. The scalar's BIGNUM is cleared.
static inline int sds_EC_raw_parts(const EVP_PKEY *pkey, unsigned char *priv, size_t privLen, unsigned char *pub,
                                   size_t pubCap, size_t *pubLen) {
    BIGNUM *bn = NULL;
    if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, &bn) != 1) return 0;
    int ok = BN_bn2binpad(bn, priv, (int)privLen) == (int)privLen;
    BN_clear_free(bn);
    if (!ok) return 0;
    return EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub, pubCap, pubLen);
}

// An RSA key of `bits` bits (public exponent 65537). EVP_RSA_gen is a variadic macro.
static inline EVP_PKEY *sds_RSA_generate(unsigned int bits) {
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (ctx == NULL) return NULL;
    if (EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)bits) <= 0 ||
        EVP_PKEY_generate(ctx, &pkey) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        return NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

// Name of an EC key's group ("prime256v1" / "P-256" style short name); 0 on failure.
static inline int sds_EC_group_name(const EVP_PKEY *pkey, char *buf, size_t len) {
    size_t out = 0;
    return EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, buf, len, &out);
}

static inline unsigned long sds_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }

// STACK_OF(X509)
static inline STACK_OF(X509) *sds_sk_X509_new_null(void) { return sk_X509_new_null(); }
static inline int sds_sk_X509_push(STACK_OF(X509) *sk, X509 *x) { return sk_X509_push(sk, x); }
static inline void sds_sk_X509_free(STACK_OF(X509) *sk) { sk_X509_free(sk); }

// GENERAL_NAMES (STACK_OF(GENERAL_NAME))
static inline GENERAL_NAMES *sds_sk_GENERAL_NAME_new_null(void) { return sk_GENERAL_NAME_new_null(); }
static inline int sds_sk_GENERAL_NAME_num(const GENERAL_NAMES *sk) { return sk_GENERAL_NAME_num(sk); }
static inline GENERAL_NAME *sds_sk_GENERAL_NAME_value(const GENERAL_NAMES *sk, int i) {
    return sk_GENERAL_NAME_value(sk, i);
}
static inline int sds_sk_GENERAL_NAME_push(GENERAL_NAMES *sk, GENERAL_NAME *gn) {
    return sk_GENERAL_NAME_push(sk, gn);
}

/// Type of a general name (GEN_URI, GEN_DNS, ...) and its IA5 string payload for URI/DNS/email.
static inline int sds_GENERAL_NAME_type(const GENERAL_NAME *gn) { return gn->type; }
static inline const ASN1_IA5STRING *sds_GENERAL_NAME_ia5(const GENERAL_NAME *gn) {
    switch (gn->type) {
    case GEN_URI: return gn->d.uniformResourceIdentifier;
    case GEN_DNS: return gn->d.dNSName;
    case GEN_EMAIL: return gn->d.rfc822Name;
    default: return NULL;
    }
}

/// Adds a general name of `type` (GEN_URI / GEN_DNS) with an IA5 value; 1 on success.
static inline int sds_GENERAL_NAMES_add_ia5(GENERAL_NAMES *names, int type, const char *value, int len) {
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    if (ia5 == NULL) return 0;
    if (!ASN1_STRING_set(ia5, value, len)) { ASN1_IA5STRING_free(ia5); return 0; }
    GENERAL_NAME *gn = GENERAL_NAME_new();
    if (gn == NULL) { ASN1_IA5STRING_free(ia5); return 0; }
    GENERAL_NAME_set0_value(gn, type, ia5);
    if (!sk_GENERAL_NAME_push(names, gn)) { GENERAL_NAME_free(gn); return 0; }
    return 1;
}

static inline int sds_ASN1_STRING_length(const ASN1_STRING *s) { return ASN1_STRING_length(s); }

// STACK_OF(X509_EXTENSION)
static inline STACK_OF(X509_EXTENSION) *sds_sk_X509_EXTENSION_new_null(void) { return sk_X509_EXTENSION_new_null(); }
static inline int sds_sk_X509_EXTENSION_push(STACK_OF(X509_EXTENSION) *sk, X509_EXTENSION *e) {
    return sk_X509_EXTENSION_push(sk, e);
}
static inline void sds_sk_X509_EXTENSION_free(STACK_OF(X509_EXTENSION) *sk) { sk_X509_EXTENSION_free(sk); }
static inline void sds_sk_X509_EXTENSION_pop_free(STACK_OF(X509_EXTENSION) *sk) {
    sk_X509_EXTENSION_pop_free(sk, X509_EXTENSION_free);
}
static inline int sds_sk_X509_EXTENSION_num(const STACK_OF(X509_EXTENSION) *sk) { return sk_X509_EXTENSION_num(sk); }
static inline X509_EXTENSION *sds_sk_X509_EXTENSION_value(const STACK_OF(X509_EXTENSION) *sk, int i) {
    return sk_X509_EXTENSION_value(sk, i);
}

// Sets a certificate's subjectPublicKeyInfo to `pkey`'s EC P-256 point without OpenSSL 3.0's encoder
// round trip (X509_set_pubkey encodes provider keys through OSSL_ENCODER: ~200 us; this: ~1 us).
// The X509 then has no cached EVP_PKEY; callers re-read keys from the DER.
static inline int sds_X509_set_ec_p256_pubkey(X509 *x, const EVP_PKEY *pkey) {
    unsigned char point[133];
    size_t len = 0;
    if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof point, &len))
        return 0;
    unsigned char *copy = OPENSSL_memdup(point, len);
    if (copy == NULL) return 0;
    if (!X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_X9_62_id_ecPublicKey), V_ASN1_OBJECT,
                                OBJ_nid2obj(NID_X9_62_prime256v1), copy, (int)len)) {
        OPENSSL_free(copy);
        return 0;
    }
    return 1;
}

// The encoded public key (uncompressed EC point) of `pkey`, for cheap comparison with a certificate's key.
static inline int sds_EVP_PKEY_encoded_public_key(const EVP_PKEY *pkey, unsigned char *buf, size_t cap, size_t *len) {
    return EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, buf, cap, len);
}

// TLS client over memory BIOs (PKI's TLSClient): the ctrl macros Swift cannot import.
static inline int sds_SSL_CTX_set_min_tls12(SSL_CTX *ctx) { return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); }
static inline int sds_SSL_CTX_set_max_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
static inline int sds_TLS1_1_VERSION(void) { return TLS1_1_VERSION; }
static inline int sds_SSL_set_sni(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
static inline int sds_SSL_want_read(const SSL *ssl) { return SSL_want_read(ssl); }
// Client-side session resumption: sessions are handed to the new-session callback and kept by the caller (no
// internal cache, which is keyed for servers).
static inline long sds_SSL_CTX_client_sessions(SSL_CTX *ctx) {
    return SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
}
static inline long sds_BIO_pending(BIO *bio) { return (long)BIO_ctrl_pending(bio); }

#endif
