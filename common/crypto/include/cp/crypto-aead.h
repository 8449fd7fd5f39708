/*
 * cp/crypto-aead.h: field encryption with the DataStoreEncryptionKey.
 *
 * NetBird encrypts some columns (user e-mails and names, session keys)
 * with AES-256-GCM under the DataStoreEncryptionKey of management.json
 * (proxy-and-api.md section 4.4), and so do we, in the same format so the
 * values are interchangeable:
 *
 *     stored = standard base64( nonce[12] || ciphertext || tag[16] )
 *
 * with a fresh random nonce per value and no additional data. The key is
 * configured as standard base64 of 32 bytes. An empty plaintext is stored
 * as the empty string and the empty string decrypts to nothing, as in
 * NetBird.
 *
 * Threads: every function is thread-safe (OpenSSL EVP, one cipher context
 * per call). Secrets: the functions wipe their own intermediate buffers;
 * the caller owns and wipes the key and any decrypted secret.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

#define CP_DATA_KEY_LEN         32      /* AES-256 */
#define CP_DATA_KEY_B64_LEN     45      /* 44 base64 characters + NUL */
#define CP_AEAD_NONCE_LEN       12
#define CP_AEAD_TAG_LEN         16
/* Largest plaintext accepted: these are column values, not files. */
#define CP_AEAD_MAX_PLAIN       (16u * 1024 * 1024)

/* Parses a DataStoreEncryptionKey: standard base64 decoding to exactly 32
 * bytes. Returns 0 and fills ret, or -EINVAL (reterr says why; the key is
 * never echoed). */
int cp_crypto_data_key_parse(const char *b64, uint8_t ret[CP_DATA_KEY_LEN], cp_error *reterr);

/* A new random key in its configured form (44 characters + NUL). */
void cp_crypto_data_key_new(char out[CP_DATA_KEY_B64_LEN]);

/* Encrypts plain[0..len) and returns the stored form in *ret: a new
 * NUL-terminated string the caller frees with free(); "" when len is 0.
 * Returns 0, or -EMSGSIZE when len > CP_AEAD_MAX_PLAIN. */
int cp_crypto_aead_encrypt(const uint8_t key[CP_DATA_KEY_LEN], const void *plain, size_t len,
                           char **ret, cp_error *reterr);

/* An upper bound of the plaintext length of a stored value, for sizing
 * the buffer of cp_crypto_aead_decrypt. */
size_t cp_crypto_aead_plain_max(const char *b64);

/* Decrypts the stored form b64 into out[0..out_cap). Returns the
 * plaintext length (0 for ""), or:
 *   -EINVAL    not standard base64, or shorter than nonce + tag
 *   -EMSGSIZE  longer than CP_AEAD_MAX_PLAIN allows
 *   -EBADMSG   authentication failed: a different key was used, or the
 *              value was altered
 *   -ENOBUFS   out_cap is smaller than the plaintext
 * out is written only on success: GCM hands out plaintext before the tag
 * is checked, so that happens in a scratch buffer that is wiped. */
int cp_crypto_aead_decrypt(const uint8_t key[CP_DATA_KEY_LEN], const char *b64,
                           void *out, size_t out_cap, cp_error *reterr);

/* Same, into a new buffer: *ret gets len + 1 bytes with a NUL after the
 * plaintext (so text values can be used as strings), *ret_len the length.
 * ret_len may be NULL. The caller wipes (if secret) and frees *ret. Same
 * errors, minus -ENOBUFS; nothing is written to *ret / *ret_len on
 * failure. */
int cp_crypto_aead_decrypt_dup(const uint8_t key[CP_DATA_KEY_LEN], const char *b64,
                               char **ret, size_t *ret_len, cp_error *reterr);
