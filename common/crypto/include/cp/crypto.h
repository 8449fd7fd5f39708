/*
 * cp/crypto.h: hashing and secret generation for stored secrets.
 *
 * Secrets (setup keys, personal access tokens) are stored only as
 * base64(SHA-256(secret)), the form NetBird uses, so a database dump never
 * reveals a usable secret. All functions are thread-safe and need
 * cp_crypto_init() once per process first (it initialises libsodium).
 *
 * See also cp/crypto-box.h (WireGuard keys, the agent envelope) and
 * cp/crypto-aead.h (field encryption with the DataStoreEncryptionKey).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

/* Initialises libsodium; returns 0 or -EIO. Safe to call more than once. */
int cp_crypto_init(void);

#define CP_SHA256_LEN 32
/* Standard base64 (with padding) of a SHA-256 digest: 44 chars + NUL. */
#define CP_SHA256_B64_LEN 45

void cp_crypto_sha256(const void *data, size_t len, uint8_t out[CP_SHA256_LEN]);
void cp_crypto_sha256_b64(const void *data, size_t len, char out[CP_SHA256_B64_LEN]);

/* Standard base64 with padding. out must hold cp_crypto_b64_len(n) bytes
 * (includes the NUL). */
size_t cp_crypto_b64_len(size_t n);
void cp_crypto_b64_encode(const void *data, size_t n, char *out, size_t out_len);
/* Decodes standard base64 (padding required); returns the decoded length
 * or -EINVAL when the input is not valid base64 or does not fit. */
int cp_crypto_b64_decode(const char *in, uint8_t *out, size_t out_cap);

/* ---- setup keys -----------------------------------------------------------
 * A setup key is an upper-case UUID v4 string (36 chars). It is looked up
 * by base64(SHA-256(UPPERCASE(key))), so keys typed in lower case match. */
#define CP_SETUP_KEY_LEN 36
void cp_crypto_setup_key_new(char out[CP_SETUP_KEY_LEN + 1]);
/* Hash used for storage and lookup; key may be in any case. Returns
 * -EINVAL for an empty key or one longer than 256 bytes. */
int cp_crypto_setup_key_hash(const char *key, char out[CP_SHA256_B64_LEN]);
/* The masked display form: first five characters then "****". */
void cp_crypto_setup_key_mask(const char *key, char out[10]);

/* ---- generated tokens -----------------------------------------------------
 * NetBird's token format, shared by personal access tokens ("nbp_") and
 * proxy access tokens ("nbx_"): a 4-character prefix + 30 random base62
 * characters + 6 base62 characters of the CRC32 of those 30 (zero-padded),
 * 40 characters in all. The checksum lets us reject mistyped tokens
 * before touching the database. Stored as base64(SHA-256(token)). */
#define CP_TOKEN_LEN 40
#define CP_PAT_PREFIX "nbp_"
#define CP_PROXY_TOKEN_PREFIX "nbx_"
/* prefix: exactly 4 characters. */
void cp_crypto_token_new(const char prefix[static 5], char out[CP_TOKEN_LEN + 1]);
/* Returns 0 when token has the prefix, length, alphabet and checksum,
 * -EINVAL otherwise. */
int cp_crypto_token_check(const char prefix[static 5], const char *token);

/* ---- personal access tokens ("nbp_") --------------------------------------- */
#define CP_PAT_LEN CP_TOKEN_LEN
void cp_crypto_pat_new(char out[CP_PAT_LEN + 1]);
/* Returns 0 when token has the right prefix, length, alphabet and
 * checksum, -EINVAL otherwise. */
int cp_crypto_pat_check(const char *token);
/* base64(SHA-256(token)), the stored form (of proxy tokens too). */
void cp_crypto_pat_hash(const char *token, char out[CP_SHA256_B64_LEN]);
