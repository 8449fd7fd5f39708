#include "cp/base.h"
#include "cp/crypto.h"
#include "cptest.h"

#include <ctype.h>

TEST(sha256_known_answer) {
        char b64[CP_SHA256_B64_LEN];

        /* SHA-256("abc"), RFC 6234 test vector, in standard base64. */
        cp_crypto_sha256_b64("abc", 3, b64);
        ASSERT_STREQ("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", b64);
}

TEST(setup_key_hash_is_case_insensitive) {
        char key[CP_SETUP_KEY_LEN + 1], lower[CP_SETUP_KEY_LEN + 1];
        char h1[CP_SHA256_B64_LEN], h2[CP_SHA256_B64_LEN], expect[CP_SHA256_B64_LEN];

        cp_crypto_setup_key_new(key);
        ASSERT_EQ(CP_SETUP_KEY_LEN, strlen(key));
        ASSERT_EQ('4', key[14]);        /* UUID version 4 */
        for (size_t i = 0; i <= CP_SETUP_KEY_LEN; i++)
                lower[i] = (char) tolower((unsigned char) key[i]);
        ASSERT_OK(cp_crypto_setup_key_hash(key, h1), NULL);
        ASSERT_OK(cp_crypto_setup_key_hash(lower, h2), NULL);
        ASSERT_STREQ(h1, h2);
        cp_crypto_sha256_b64(key, strlen(key), expect);   /* key is already upper case */
        ASSERT_STREQ(expect, h1);
        ASSERT_EQ(-EINVAL, cp_crypto_setup_key_hash("", h1));
}

TEST(setup_key_mask) {
        char m[10];

        cp_crypto_setup_key_mask("A2C8E62B-38F5-4553-B31E-DD66C696CEBB", m);
        ASSERT_STREQ("A2C8E****", m);
}

TEST(pat_format_and_checksum) {
        char t[CP_PAT_LEN + 1];

        cp_crypto_pat_new(t);
        ASSERT_EQ(CP_PAT_LEN, strlen(t));
        ASSERT_TRUE(strncmp(t, "nbp_", 4) == 0);
        ASSERT_EQ(0, cp_crypto_pat_check(t));
        /* Any single changed character breaks the checksum. */
        t[10] = t[10] == 'a' ? 'b' : 'a';
        ASSERT_EQ(-EINVAL, cp_crypto_pat_check(t));
        ASSERT_EQ(-EINVAL, cp_crypto_pat_check("nbp_short"));
        ASSERT_EQ(-EINVAL, cp_crypto_pat_check("xxx_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

/* The same generator with NetBird's proxy token prefix; a token of one
 * kind never passes as the other. */
TEST(proxy_token_format_and_checksum) {
        char t[CP_TOKEN_LEN + 1];

        cp_crypto_token_new(CP_PROXY_TOKEN_PREFIX, t);
        ASSERT_EQ(CP_TOKEN_LEN, strlen(t));
        ASSERT_TRUE(strncmp(t, "nbx_", 4) == 0);
        ASSERT_EQ(0, cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, t));
        ASSERT_EQ(-EINVAL, cp_crypto_pat_check(t));
        memcpy(t, "nbp_", 4);           /* same secret and checksum, other prefix */
        ASSERT_EQ(0, cp_crypto_pat_check(t));
        ASSERT_EQ(-EINVAL, cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, t));
        /* a token computed independently (CRC32 of the 30, base62, zero-padded) */
        ASSERT_EQ(0, cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, "nbx_0123456789abcdefghijABCDEFGHIJ3mpbCX"));
}

TEST(b64_round_trip_and_rejects_garbage) {
        const uint8_t in[5] = { 0, 1, 2, 250, 255 };
        char enc[16];
        uint8_t out[8];

        cp_crypto_b64_encode(in, sizeof in, enc, sizeof enc);
        ASSERT_EQ(5, cp_crypto_b64_decode(enc, out, sizeof out));
        ASSERT_TRUE(memcmp(in, out, 5) == 0);
        ASSERT_EQ(-EINVAL, cp_crypto_b64_decode("!!!!", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_crypto_b64_decode("AAAAAAAAAAAAAAAA", out, 4));
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
