/*
 * mgmt-proxy-onetime.c: stateless one-time tokens (mgmt-proxy-onetime.h).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"
#include "mgmt-proxy-int.h"
#include "mgmt-proxy-onetime.h"

#include <sodium.h>

#define NONCE_LEN 16
#define MAC_LEN crypto_auth_hmacsha256_BYTES
#define RAW_LEN (8 + NONCE_LEN + MAC_LEN)

static void put_be64(uint8_t *b, uint64_t v) {
        for (int i = 7; i >= 0; i--, v >>= 8)
                b[i] = (uint8_t) v;
}

static uint64_t get_be64(const uint8_t *b) {
        uint64_t v = 0;

        for (int i = 0; i < 8; i++)
                v = (v << 8) | b[i];
        return v;
}

static void update_str(crypto_auth_hmacsha256_state *st, const char *s) {
        uint8_t len[8];
        size_t n = s ? strlen(s) : 0;

        put_be64(len, n);
        crypto_auth_hmacsha256_update(st, len, sizeof len);
        if (n)
                crypto_auth_hmacsha256_update(st, (const uint8_t *) s, n);
}

/* raw[0..24) = expiry || nonce; writes the MAC after them. */
static void mac(const mgmt_proxy *p, const char *service_id, const char *account_id, uint8_t raw[RAW_LEN],
                uint8_t out[MAC_LEN]) {
        crypto_auth_hmacsha256_state st;

        crypto_auth_hmacsha256_init(&st, p->onetime_key, sizeof p->onetime_key);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *) "v1", 2);
        update_str(&st, service_id);
        update_str(&st, account_id);
        crypto_auth_hmacsha256_update(&st, raw, 8 + NONCE_LEN);
        crypto_auth_hmacsha256_final(&st, out);
        sodium_memzero(&st, sizeof st);
}

void mgmt_proxy_onetime_new(const mgmt_proxy *p, const char *service_id, const char *account_id, int64_t now_s,
                            char out[MGMT_PROXY_ONETIME_LEN]) {
        uint8_t raw[RAW_LEN];

        put_be64(raw, (uint64_t) (now_s + MGMT_PROXY_ONETIME_TTL_S));
        cp_random_bytes(raw + 8, NONCE_LEN);
        mac(p, service_id, account_id, raw, raw + 8 + NONCE_LEN);
        sodium_bin2base64(out, MGMT_PROXY_ONETIME_LEN, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

int mgmt_proxy_onetime_verify(const mgmt_proxy *p, const char *token, const char *service_id,
                              const char *account_id, int64_t now_s, char ret_hash_hex[65], int64_t *ret_expires_s) {
        uint8_t raw[RAW_LEN], want[MAC_LEN];
        size_t n = 0;
        const char *end = NULL;

        if (!token || strlen(token) != MGMT_PROXY_ONETIME_LEN - 1)
                return -EINVAL;
        if (sodium_base642bin(raw, sizeof raw, token, strlen(token), NULL, &n, &end,
                              sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
            n != sizeof raw || *end != '\0')
                return -EINVAL;
        mac(p, service_id, account_id, raw, want);
        if (sodium_memcmp(want, raw + 8 + NONCE_LEN, MAC_LEN) != 0)
                return -EINVAL;
        int64_t expires = (int64_t) get_be64(raw);
        if (expires <= now_s)
                return -ETIME;
        if (ret_hash_hex) {
                uint8_t h[CP_SHA256_LEN];
                cp_crypto_sha256(token, strlen(token), h);
                sodium_bin2hex(ret_hash_hex, 65, h, sizeof h);
        }
        if (ret_expires_s)
                *ret_expires_s = expires;
        return 0;
}
