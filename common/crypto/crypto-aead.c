#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-aead.h"
#include "cp/util.h"

#include <openssl/evp.h>

#define RAW_OVERHEAD (CP_AEAD_NONCE_LEN + CP_AEAD_TAG_LEN)

_Static_assert(CP_AEAD_MAX_PLAIN + RAW_OVERHEAD <= INT_MAX / 2, "lengths fit OpenSSL's int");

static EVP_CIPHER_CTX *ctx_new(void) {
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

        /* EVP_CIPHER_CTX_new fails only on allocation: our OOM policy. */
        if (!ctx) {
                fputs("cp: out of memory (EVP_CIPHER_CTX_new)\n", stderr);
                abort();
        }
        return ctx;
}

static void ctx_freep(EVP_CIPHER_CTX **p) {
        EVP_CIPHER_CTX_free(*p);
}
#define _cleanup_evp_ _cleanup_(ctx_freep)

/* Decodes base64 that must come out as exactly CP_DATA_KEY_LEN bytes. */
int cp_crypto_data_key_parse(const char *b64, uint8_t ret[CP_DATA_KEY_LEN], cp_error *reterr) {
        uint8_t key[CP_DATA_KEY_LEN + 1];
        int r;

        if (!b64 || !*b64)
                return cp_error_set(reterr, -EINVAL, "DataStoreEncryptionKey is empty");
        if (strlen(b64) > 64)
                return cp_error_set(reterr, -EINVAL,
                                    "DataStoreEncryptionKey must be base64 of 32 bytes (44 characters)");
        r = cp_crypto_b64_decode(b64, key, sizeof key);
        if (r < 0) {
                cp_explicit_bzero(key, sizeof key);
                return cp_error_set(reterr, -EINVAL, "DataStoreEncryptionKey is not standard base64");
        }
        if (r != CP_DATA_KEY_LEN) {
                cp_explicit_bzero(key, sizeof key);
                return cp_error_set(reterr, -EINVAL,
                                    "DataStoreEncryptionKey decodes to %d bytes, expected 32", r);
        }
        memcpy(ret, key, CP_DATA_KEY_LEN);
        cp_explicit_bzero(key, sizeof key);
        return 0;
}

void cp_crypto_data_key_new(char out[CP_DATA_KEY_B64_LEN]) {
        uint8_t key[CP_DATA_KEY_LEN];

        cp_random_bytes(key, sizeof key);
        cp_crypto_b64_encode(key, sizeof key, out, CP_DATA_KEY_B64_LEN);
        cp_explicit_bzero(key, sizeof key);
}

int cp_crypto_aead_encrypt(const uint8_t key[CP_DATA_KEY_LEN], const void *plain, size_t len,
                           char **ret, cp_error *reterr) {
        _cleanup_evp_ EVP_CIPHER_CTX *ctx = NULL;
        int outl = 0, finl = 0;

        if (len > CP_AEAD_MAX_PLAIN)
                return cp_error_set(reterr, -EMSGSIZE, "value of %zu bytes is too large to encrypt (limit %u)",
                                    len, CP_AEAD_MAX_PLAIN);
        if (len == 0) {
                /* NetBird's FieldEncrypt keeps empty values empty. */
                *ret = cp_xstrdup("");
                return 0;
        }

        size_t raw_len = len + RAW_OVERHEAD;
        uint8_t *raw = cp_xmalloc(raw_len);
        uint8_t *nonce = raw, *ct = raw + CP_AEAD_NONCE_LEN, *tag = ct + len;

        cp_random_bytes(nonce, CP_AEAD_NONCE_LEN);
        ctx = ctx_new();
        /* 12 bytes is GCM's default IV length, so no SET_IVLEN is needed. */
        if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
            EVP_EncryptUpdate(ctx, ct, &outl, plain, (int) len) != 1 ||
            EVP_EncryptFinal_ex(ctx, ct + outl, &finl) != 1 ||
            (size_t) outl + (size_t) finl != len ||
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CP_AEAD_TAG_LEN, tag) != 1) {
                free(raw);
                return cp_error_set(reterr, -EIO, "AES-256-GCM encryption failed in OpenSSL");
        }

        size_t out_len = cp_crypto_b64_len(raw_len);
        char *out = cp_xmalloc(out_len);
        cp_crypto_b64_encode(raw, raw_len, out, out_len);
        free(raw);      /* ciphertext only: nothing to wipe */
        *ret = out;
        return 0;
}

size_t cp_crypto_aead_plain_max(const char *b64) {
        size_t n = (strlen(b64) + 3) / 4 * 3;

        return n > RAW_OVERHEAD ? n - RAW_OVERHEAD : 0;
}

/* Decrypts into a new scratch buffer of *ret_len (+1 NUL) bytes, which the
 * caller wipes and frees. Plaintext is only handed out after the tag
 * checked out. */
static int decrypt_scratch(const uint8_t key[CP_DATA_KEY_LEN], const char *b64,
                           uint8_t **ret, size_t *ret_len, cp_error *reterr) {
        _cleanup_evp_ EVP_CIPHER_CTX *ctx = NULL;
        size_t b64_len = strlen(b64);
        int outl = 0, finl = 0, r;

        if (b64_len == 0) {
                *ret = cp_xcalloc(1, 1);
                *ret_len = 0;
                return 0;
        }
        if (b64_len > cp_crypto_b64_len(CP_AEAD_MAX_PLAIN + RAW_OVERHEAD))
                return cp_error_set(reterr, -EMSGSIZE, "encrypted value of %zu characters is too large",
                                    b64_len);

        size_t cap = (b64_len + 3) / 4 * 3;
        _cleanup_free_ uint8_t *raw = cp_xmalloc(cap);
        r = cp_crypto_b64_decode(b64, raw, cap);
        if (r < 0)
                return cp_error_set(reterr, -EINVAL, "encrypted value is not standard base64");
        size_t raw_len = (size_t) r;
        if (raw_len < RAW_OVERHEAD)
                return cp_error_set(reterr, -EINVAL,
                                    "encrypted value of %zu bytes is shorter than nonce and tag (28 bytes)",
                                    raw_len);

        size_t len = raw_len - RAW_OVERHEAD;
        const uint8_t *nonce = raw, *ct = raw + CP_AEAD_NONCE_LEN;
        uint8_t *tag = raw + CP_AEAD_NONCE_LEN + len;
        uint8_t *plain = cp_xmalloc(len + 1);

        ctx = ctx_new();
        if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
            EVP_DecryptUpdate(ctx, plain, &outl, ct, (int) len) != 1 ||
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CP_AEAD_TAG_LEN, tag) != 1) {
                cp_explicit_bzero(plain, len + 1);
                free(plain);
                return cp_error_set(reterr, -EIO, "AES-256-GCM decryption failed in OpenSSL");
        }
        if (EVP_DecryptFinal_ex(ctx, plain + outl, &finl) != 1 || (size_t) outl + (size_t) finl != len) {
                /* The unauthenticated plaintext must not survive. */
                cp_explicit_bzero(plain, len + 1);
                free(plain);
                return cp_error_set(reterr, -EBADMSG,
                                    "cannot decrypt value: wrong DataStoreEncryptionKey or altered data");
        }
        plain[len] = '\0';
        *ret = plain;
        *ret_len = len;
        return 0;
}

int cp_crypto_aead_decrypt(const uint8_t key[CP_DATA_KEY_LEN], const char *b64,
                           void *out, size_t out_cap, cp_error *reterr) {
        uint8_t *plain = NULL;
        size_t len = 0;
        int r;

        r = decrypt_scratch(key, b64, &plain, &len, reterr);
        if (r < 0)
                return r;
        if (len > out_cap)
                r = cp_error_set(reterr, -ENOBUFS, "decrypted value needs %zu bytes, buffer has %zu",
                                 len, out_cap);
        else {
                if (len > 0)
                        memcpy(out, plain, len);
                r = (int) len;
        }
        cp_explicit_bzero(plain, len + 1);
        free(plain);
        return r;
}

int cp_crypto_aead_decrypt_dup(const uint8_t key[CP_DATA_KEY_LEN], const char *b64,
                               char **ret, size_t *ret_len, cp_error *reterr) {
        uint8_t *plain = NULL;
        size_t len = 0;
        int r;

        r = decrypt_scratch(key, b64, &plain, &len, reterr);
        if (r < 0)
                return r;
        *ret = (char *) plain;
        if (ret_len)
                *ret_len = len;
        return 0;
}
