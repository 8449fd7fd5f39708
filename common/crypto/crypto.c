#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"

#include <ctype.h>
#include <sodium.h>
#include <zlib.h>

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

int cp_crypto_init(void) {
        return sodium_init() < 0 ? -EIO : 0;
}

void cp_crypto_sha256(const void *data, size_t len, uint8_t out[CP_SHA256_LEN]) {
        crypto_hash_sha256(out, data, len);
}

size_t cp_crypto_b64_len(size_t n) {
        return sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
}

void cp_crypto_b64_encode(const void *data, size_t n, char *out, size_t out_len) {
        if (out_len < cp_crypto_b64_len(n))
                abort();
        sodium_bin2base64(out, out_len, data, n, sodium_base64_VARIANT_ORIGINAL);
}

int cp_crypto_b64_decode(const char *in, uint8_t *out, size_t out_cap) {
        size_t n = 0;
        const char *end = NULL;

        if (sodium_base642bin(out, out_cap, in, strlen(in), NULL, &n, &end,
                              sodium_base64_VARIANT_ORIGINAL) != 0 || *end != '\0')
                return -EINVAL;
        return n > INT_MAX ? -EINVAL : (int) n;
}

void cp_crypto_sha256_b64(const void *data, size_t len, char out[CP_SHA256_B64_LEN]) {
        uint8_t digest[CP_SHA256_LEN];

        cp_crypto_sha256(data, len, digest);
        cp_crypto_b64_encode(digest, sizeof digest, out, CP_SHA256_B64_LEN);
}

void cp_crypto_setup_key_new(char out[CP_SETUP_KEY_LEN + 1]) {
        uint8_t u[16];

        cp_random_bytes(u, sizeof u);
        u[6] = (uint8_t) ((u[6] & 0x0f) | 0x40);        /* version 4 */
        u[8] = (uint8_t) ((u[8] & 0x3f) | 0x80);        /* RFC 4122 variant */
        (void) snprintf(out, CP_SETUP_KEY_LEN + 1,
                        "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X",
                        u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
                        u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

int cp_crypto_setup_key_hash(const char *key, char out[CP_SHA256_B64_LEN]) {
        char upper[257];
        size_t n = strlen(key);

        if (n == 0 || n >= sizeof upper)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                upper[i] = (char) toupper((unsigned char) key[i]);
        cp_crypto_sha256_b64(upper, n, out);
        cp_explicit_bzero(upper, n);
        return 0;
}

void cp_crypto_setup_key_mask(const char *key, char out[10]) {
        (void) snprintf(out, 10, "%.5s****", key);
}

static void crc_base62(const char *s, size_t n, char out[6]) {
        uint32_t crc = (uint32_t) crc32(0L, (const Bytef *) s, (uInt) n);

        for (int i = 5; i >= 0; i--) {
                out[i] = base62[crc % 62];
                crc /= 62;
        }
}

void cp_crypto_token_new(const char prefix[static 5], char out[CP_TOKEN_LEN + 1]) {
        char *p = out;

        memcpy(p, prefix, 4);
        p += 4;
        for (int i = 0; i < 30; i++)
                p[i] = base62[cp_random_uniform(62)];
        crc_base62(p, 30, p + 30);
        out[CP_TOKEN_LEN] = '\0';
}

int cp_crypto_token_check(const char prefix[static 5], const char *token) {
        char sum[6];

        if (strlen(token) != CP_TOKEN_LEN || strncmp(token, prefix, 4) != 0)
                return -EINVAL;
        for (const char *p = token + 4; *p; p++)
                if (!strchr(base62, *p))
                        return -EINVAL;
        crc_base62(token + 4, 30, sum);
        return memcmp(sum, token + 34, 6) == 0 ? 0 : -EINVAL;
}

void cp_crypto_pat_new(char out[CP_PAT_LEN + 1]) {
        cp_crypto_token_new(CP_PAT_PREFIX, out);
}

int cp_crypto_pat_check(const char *token) {
        return cp_crypto_token_check(CP_PAT_PREFIX, token);
}

void cp_crypto_pat_hash(const char *token, char out[CP_SHA256_B64_LEN]) {
        cp_crypto_sha256_b64(token, strlen(token), out);
}
