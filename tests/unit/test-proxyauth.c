/*
 * common/proxyauth: session JWTs, argon2id secrets, the OIDC state.
 *
 * The token of sign_matches_independent_implementation was made with
 * PyNaCl (libsodium's Python binding) and Python's json, base64 and the
 * same seed and times; Ed25519 is deterministic, so our signer must
 * produce exactly those bytes, and our verifier must accept them. The
 * service tests (tests/service/test_proxy_rpc.py) verify the tokens the
 * server mints with PyNaCl as well.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-aead.h"
#include "cp/proxyauth.h"
#include "cptest.h"

#include <sodium.h>

#define PY_TOKEN \
        "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9." \
        "eyJpc3MiOiJuZXRiaXJkLW1hbmFnZW1lbnQiLCJzdWIiOiJ1c2VyLTEiLCJhdWQiOlsiYXBwLmV4YW1wbGUuY29tIl0sImV4cCI6" \
        "MTcwMDA4NjQwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsIm1ldGhvZCI6Im9pZGMiLCJlbWFpbCI6ImFAZXhh" \
        "bXBsZS5jb20iLCJncm91cHMiOlsiZzEiLCJnMiJdLCJncm91cF9uYW1lcyI6WyJEZXYiLCJPcHMiXX0." \
        "iO2HlW3miAxmrTGpm6LBn2Iqc9CbtnnokNRM2cWSkC3FnFJrfiq_GNFjO5iMlXHPQGnxLaJ-qFVOVSL1V_xHDw"
#define PY_PUB "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
#define T0 1700000000

static void seed_0_31(uint8_t seed[32]) {
        for (int i = 0; i < 32; i++)
                seed[i] = (uint8_t) i;
}

TEST(sign_matches_independent_implementation) {
        uint8_t seed[32], pub[32];
        const char *groups[] = { "g1", "g2" }, *names[] = { "Dev", "Ops" };
        cp_proxyauth_claims c = { .sub = "user-1", .domain = "app.example.com", .method = "oidc",
                                  .email = "a@example.com", .groups = groups, .n_groups = 2,
                                  .group_names = names, .n_group_names = 2 };
        _cleanup_free_ char *tok = NULL;
        cp_proxyauth_verified v = { 0 };
        cp_error err = { 0 };

        seed_0_31(seed);
        ASSERT_OK(cp_proxyauth_session_sign(seed, &c, T0, 86400, &tok, &err), &err);
        ASSERT_STREQ(PY_TOKEN, tok);
        ASSERT_OK(cp_proxyauth_pub_parse(PY_PUB, pub), NULL);
        ASSERT_OK(cp_proxyauth_session_verify(pub, NULL, PY_TOKEN, "app.example.com", T0 + 10, &v, &err), &err);
        ASSERT_STREQ("user-1", v.sub);
        ASSERT_STREQ("oidc", v.method);
        ASSERT_STREQ("a@example.com", v.email);
        ASSERT_EQ(T0 + 86400, v.exp);
        cp_proxyauth_verified_release(&v);
}

TEST(verify_refuses_what_the_proxy_refuses) {
        uint8_t seed[32], pub[32], other_seed[32], other_pub[32], sk[64];
        cp_proxyauth_claims c = { .sub = "u", .domain = "a.example", .method = "password" };
        _cleanup_free_ char *tok = NULL;
        cp_error err = { 0 };

        seed_0_31(seed);
        crypto_sign_seed_keypair(pub, sk, seed);
        memset(other_seed, 7, 32);
        crypto_sign_seed_keypair(other_pub, sk, other_seed);
        ASSERT_OK(cp_proxyauth_session_sign(seed, &c, T0, 60, &tok, &err), &err);
        ASSERT_OK(cp_proxyauth_session_verify(pub, NULL, tok, "a.example", T0, NULL, &err), &err);
        ASSERT_EQ(-EKEYEXPIRED, cp_proxyauth_session_verify(pub, NULL, tok, "a.example", T0 + 60, NULL, NULL));
        ASSERT_EQ(-EKEYEXPIRED, cp_proxyauth_session_verify(pub, NULL, tok, "a.example", T0 - 1, NULL, NULL));
        ASSERT_EQ(-EACCES, cp_proxyauth_session_verify(pub, NULL, tok, "b.example", T0, NULL, NULL));
        ASSERT_EQ(-EBADMSG, cp_proxyauth_session_verify(other_pub, NULL, tok, "a.example", T0, NULL, NULL));
        /* the previous key of a rotation still verifies */
        ASSERT_OK(cp_proxyauth_session_verify(other_pub, pub, tok, "a.example", T0, NULL, &err), &err);
        /* a flipped signature byte, garbage, a missing part */
        tok[strlen(tok) - 3] = tok[strlen(tok) - 3] == 'A' ? 'B' : 'A';
        ASSERT_EQ(-EBADMSG, cp_proxyauth_session_verify(pub, NULL, tok, "a.example", T0, NULL, NULL));
        ASSERT_EQ(-EINVAL, cp_proxyauth_session_verify(pub, NULL, "a.b", "a.example", T0, NULL, NULL));
        ASSERT_EQ(-EINVAL, cp_proxyauth_session_verify(pub, NULL, "!!.??.**", "a.example", T0, NULL, NULL));
        /* alg none is refused before any signature check */
        ASSERT_EQ(-EINVAL, cp_proxyauth_session_verify(pub, NULL,
                  "eyJhbGciOiJub25lIn0.e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                  "a.example", T0, NULL, NULL));
}

/* header.claims signed with sk, as the server's signer would. */
static char *sign_raw(const uint8_t sk[64], const char *claims) {
        static const char hdr[] = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}";
        char h[128], c[512], sig64[128];
        uint8_t sig[64];

        sodium_bin2base64(h, sizeof h, (const uint8_t *) hdr, strlen(hdr), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        sodium_bin2base64(c, sizeof c, (const uint8_t *) claims, strlen(claims),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        _cleanup_free_ char *signing = cp_xasprintf("%s.%s", h, c);
        crypto_sign_detached(sig, NULL, (const uint8_t *) signing, strlen(signing), sk);
        sodium_bin2base64(sig64, sizeof sig64, sig, sizeof sig, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        return cp_xasprintf("%s.%s", signing, sig64);
}

/* tests/fuzz (fuzz_proxy) found a real-valued time claim converted to
 * int64_t unchecked: undefined for 1e300 (x86 made it INT64_MIN, so the
 * token read as expired). Out of range is a malformed claim now; a real
 * in range still counts. */
TEST(verify_time_claims_as_reals) {
        uint8_t seed[32], pub[32], sk[64];
        cp_error err = { 0 };

        seed_0_31(seed);
        crypto_sign_seed_keypair(pub, sk, seed);
        static const char *const huge[] = { "exp", "nbf", "iat" };
        for (size_t i = 0; i < ELEMENTSOF(huge); i++) {
                _cleanup_free_ char *claims = cp_xasprintf(
                        "{\"iss\":\"netbird-management\",\"sub\":\"u\",\"aud\":[\"a.example\"],\"%s\":1e300}", huge[i]);
                _cleanup_free_ char *tok = sign_raw(sk, claims);
                ASSERT_EQ(-EINVAL, cp_proxyauth_session_verify(pub, NULL, tok, "a.example", T0, NULL, NULL));
                _cleanup_free_ char *neg = cp_xasprintf(
                        "{\"iss\":\"netbird-management\",\"sub\":\"u\",\"aud\":[\"a.example\"],\"%s\":-1e300}", huge[i]);
                _cleanup_free_ char *tok2 = sign_raw(sk, neg);
                ASSERT_EQ(-EINVAL, cp_proxyauth_session_verify(pub, NULL, tok2, "a.example", T0, NULL, NULL));
        }
        _cleanup_free_ char *ok = sign_raw(sk, "{\"iss\":\"netbird-management\",\"sub\":\"u\",\"aud\":[\"a.example\"],"
                                               "\"exp\":1700000060.5,\"nbf\":1699999999.5}");
        ASSERT_OK(cp_proxyauth_session_verify(pub, NULL, ok, "a.example", T0, NULL, &err), &err);
}

TEST(keypair_sealed_with_the_data_key) {
        uint8_t key[32], other[32], seed[32], pub[32], pk[32], sk[64];
        _cleanup_free_ char *sealed = NULL;
        char pub_b64[45];
        cp_error err = { 0 };

        memset(key, 1, 32);
        memset(other, 2, 32);
        ASSERT_OK(cp_proxyauth_keypair_new(key, &sealed, pub_b64, &err), &err);
        ASSERT_OK(cp_proxyauth_seed_open(key, sealed, seed, &err), &err);
        crypto_sign_seed_keypair(pk, sk, seed);
        ASSERT_OK(cp_proxyauth_pub_parse(pub_b64, pub), NULL);
        ASSERT_TRUE(memcmp(pk, pub, 32) == 0);
        ASSERT_EQ(-EBADMSG, cp_proxyauth_seed_open(other, sealed, seed, NULL));
        ASSERT_EQ(-EBADMSG, cp_proxyauth_seed_open(key, "", seed, NULL));

        /* NetBird's column: base64 text of the 64-byte Go private key */
        char go_b64[100];
        _cleanup_free_ char *nb = NULL;
        uint8_t seed2[32];
        cp_crypto_b64_encode(sk, 64, go_b64, sizeof go_b64);
        ASSERT_OK(cp_crypto_aead_encrypt(key, go_b64, strlen(go_b64), &nb, &err), &err);
        ASSERT_OK(cp_proxyauth_seed_open(key, nb, seed2, &err), &err);
        ASSERT_TRUE(memcmp(seed, seed2, 32) == 0);
}

TEST(argon2id_verify) {
        _cleanup_free_ char *h = NULL;
        cp_error err = { 0 };

        ASSERT_OK(cp_proxyauth_argon2id_hash("s3cret", 6, &h, &err), &err);
        ASSERT_TRUE(strncmp(h, "$argon2id$v=19$m=19456,t=2,p=1$", 31) == 0);
        ASSERT_EQ(1, cp_proxyauth_argon2id_verify(h, "s3cret", 6));
        ASSERT_EQ(0, cp_proxyauth_argon2id_verify(h, "s3creT", 6));
        ASSERT_EQ(0, cp_proxyauth_argon2id_verify("", "s3cret", 6));
        ASSERT_EQ(0, cp_proxyauth_argon2id_verify("$argon2id$garbage", "s3cret", 6));
        ASSERT_EQ(0, cp_proxyauth_argon2id_verify("plaintext", "plaintext", 9));
}

TEST(oidc_state_round_trip_and_tamper) {
        uint8_t key[32], other[32];
        _cleanup_free_ char *st = NULL, *url = NULL;
        cp_error err = { 0 };
        char *bad = NULL;

        memset(key, 3, 32);
        memset(other, 4, 32);
        ASSERT_OK(cp_proxyauth_state_new(key, "https://app.example.com/x?y=1", &st, &err), &err);
        ASSERT_OK(cp_proxyauth_state_check(key, st, &url, &err), &err);
        ASSERT_STREQ("https://app.example.com/x?y=1", url);
        ASSERT_EQ(-EBADMSG, cp_proxyauth_state_check(other, st, &bad, NULL));
        st[0] = st[0] == 'a' ? 'b' : 'a';
        ASSERT_EQ(-EBADMSG, cp_proxyauth_state_check(key, st, &bad, NULL));
        ASSERT_EQ(-EBADMSG, cp_proxyauth_state_check(key, "a|b", &bad, NULL));
        ASSERT_TRUE(bad == NULL);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
