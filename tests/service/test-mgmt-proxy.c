/*
 * Unit tests of proxy/ pieces that need no server: the stateless one-time
 * tokens of ProxyMapping.auth_token (mgmt-proxy-onetime.h), bound to a
 * service, an account, an expiry and the deployment's key.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cptest.h"
#include "mgmt-proxy-onetime.h"
#include "mgmt-proxy.h"

#include <sodium.h>

static mgmt_proxy *hub(uint8_t fill) {
        uint8_t key[32];

        memset(key, fill, sizeof key);
        return mgmt_proxy_new(&(mgmt_proxy_options) { .data_key = key, .replica_id = "r1" });
}

TEST(onetime_token_round_trip) {
        mgmt_proxy *p = hub(7);
        char tok[MGMT_PROXY_ONETIME_LEN], hash[65], want[65];
        uint8_t h[CP_SHA256_LEN];
        int64_t exp = 0, now = 1800000000;

        mgmt_proxy_onetime_new(p, "svc1", "acct1", now, tok);
        ASSERT_EQ(MGMT_PROXY_ONETIME_LEN - 1, strlen(tok));
        ASSERT_TRUE(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == strlen(tok));
        ASSERT_EQ(0, mgmt_proxy_onetime_verify(p, tok, "svc1", "acct1", now + 299, hash, &exp));
        ASSERT_EQ(now + MGMT_PROXY_ONETIME_TTL_S, exp);
        cp_crypto_sha256(tok, strlen(tok), h);
        sodium_bin2hex(want, sizeof want, h, sizeof h);
        ASSERT_STREQ(want, hash);
        /* Two tokens for the same mapping differ (the nonce). */
        char tok2[MGMT_PROXY_ONETIME_LEN];
        mgmt_proxy_onetime_new(p, "svc1", "acct1", now, tok2);
        ASSERT_TRUE(strcmp(tok, tok2) != 0);
        mgmt_proxy_free(p);
}

TEST(onetime_token_refusals) {
        mgmt_proxy *p = hub(7), *other = hub(8);
        char tok[MGMT_PROXY_ONETIME_LEN], bad[MGMT_PROXY_ONETIME_LEN];
        int64_t now = 1800000000;

        mgmt_proxy_onetime_new(p, "svc1", "acct1", now, tok);
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, tok, "svc2", "acct1", now, NULL, NULL));
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, tok, "svc1", "acct2", now, NULL, NULL));
        /* "svc1"+"acct1" must not match "svc1a"+"cct1" (length prefixes). */
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, tok, "svc1a", "cct1", now, NULL, NULL));
        ASSERT_EQ(-ETIME, mgmt_proxy_onetime_verify(p, tok, "svc1", "acct1", now + MGMT_PROXY_ONETIME_TTL_S, NULL,
                                                    NULL));
        /* Another deployment's key. */
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(other, tok, "svc1", "acct1", now, NULL, NULL));
        /* One character changed anywhere: refused. */
        for (size_t i = 0; i < strlen(tok); i += 7) {
                memcpy(bad, tok, sizeof bad);
                bad[i] = bad[i] == 'A' ? 'B' : 'A';
                ASSERT_TRUE(mgmt_proxy_onetime_verify(p, bad, "svc1", "acct1", now, NULL, NULL) < 0);
        }
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, "", "svc1", "acct1", now, NULL, NULL));
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, NULL, "svc1", "acct1", now, NULL, NULL));
        memcpy(bad, tok, sizeof bad);
        bad[10] = '=';
        ASSERT_EQ(-EINVAL, mgmt_proxy_onetime_verify(p, bad, "svc1", "acct1", now, NULL, NULL));
        mgmt_proxy_free(p);
        mgmt_proxy_free(other);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
