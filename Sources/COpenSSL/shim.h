#ifndef SDS_COPENSSL_SHIM_H
#define SDS_COPENSSL_SHIM_H
// OpenSSL 3 headers plus `static inline` wrappers for the macros Swift cannot import.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/crypto.h>

static inline long sds_BIO_get_mem_data(BIO *bio, char **data) {
    return BIO_ctrl(bio, BIO_CTRL_INFO, 0, (void *)data);
}

static inline void sds_OPENSSL_free(void *ptr) { OPENSSL_free(ptr); }

#endif
