#include "cp/base.h"
#include "mgmt-tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#define TLS_MAX_FILE (1u << 20)

static int read_small_file(const char *path, const char *what, char **ret, cp_error *reterr) {
        struct stat st;
        FILE *f = fopen(path, "re");

        if (!f)
                return cp_error_set(reterr, -errno, "cannot read %s %s: %s", what, path, strerror(errno));
        if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > TLS_MAX_FILE) {
                (void) fclose(f);
                return cp_error_set(reterr, -EINVAL, "cannot read %s %s: not a regular file of at most %u "
                                    "bytes", what, path, TLS_MAX_FILE);
        }
        size_t n = (size_t) st.st_size;
        char *buf = cp_xmalloc(n + 1);
        size_t got = fread(buf, 1, n, f);
        (void) fclose(f);
        if (got != n) {
                free(buf);
                return cp_error_set(reterr, -EIO, "cannot read %s %s: short read", what, path);
        }
        buf[n] = '\0';
        *ret = buf;
        return 0;
}

static void openssl_reason(char *buf, size_t n) {
        unsigned long e = ERR_get_error();

        if (e)
                ERR_error_string_n(e, buf, n);
        else
                (void) snprintf(buf, n, "no PEM data found");
        ERR_clear_error();
}

int mgmt_tls_load(const char *cert_file, const char *key_file, mgmt_tls **ret, cp_error *reterr) {
        mgmt_tls *t = cp_xcalloc(1, sizeof *t);
        X509 *cert = NULL;
        EVP_PKEY *key = NULL;
        BIO *bio = NULL;
        char why[256];
        int r;

        r = read_small_file(cert_file, "certificate file", &t->cert_pem, reterr);
        if (r < 0)
                goto fail;
        r = read_small_file(key_file, "key file", &t->key_pem, reterr);
        if (r < 0)
                goto fail;

        bio = BIO_new_mem_buf(t->cert_pem, -1);
        cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!cert) {
                openssl_reason(why, sizeof why);
                r = cp_error_set(reterr, -EINVAL, "certificate file %s holds no PEM certificate: %s",
                                 cert_file, why);
                goto fail;
        }
        bio = BIO_new_mem_buf(t->key_pem, -1);
        key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!key) {
                openssl_reason(why, sizeof why);
                r = cp_error_set(reterr, -EINVAL, "key file %s holds no unencrypted PEM private key: %s",
                                 key_file, why);
                goto fail;
        }
        if (X509_check_private_key(cert, key) != 1) {
                ERR_clear_error();
                r = cp_error_set(reterr, -EINVAL, "key file %s does not match certificate file %s", key_file,
                                 cert_file);
                goto fail;
        }
        char *subj = X509_NAME_oneline(X509_get_subject_name(cert), NULL, 0);
        t->subject = cp_xstrdup(subj ? subj : "");
        OPENSSL_free(subj);
        X509_free(cert);
        EVP_PKEY_free(key);
        *ret = t;
        return 0;

fail:
        X509_free(cert);
        EVP_PKEY_free(key);
        mgmt_tls_free(t);
        return r;
}

mgmt_tls *mgmt_tls_free(mgmt_tls *t) {
        if (!t)
                return NULL;
        if (t->key_pem)
                cp_explicit_bzero(t->key_pem, strlen(t->key_pem));
        free(t->key_pem);
        free(t->cert_pem);
        free(t->subject);
        free(t);
        return NULL;
}
