/*
 * The agent envelope (NaCl box between WireGuard keys, netbird-protocol.md
 * section 2) and the DataStoreEncryptionKey field cipher (AES-256-GCM,
 * proxy-and-api.md section 4.4).
 *
 * Interoperability is pinned with published vectors rather than with a
 * second implementation: the X25519 keys of RFC 7748 section 6.1, the box
 * example of Bernstein's "Cryptography in NaCl" (the vector NaCl's own
 * tests use; any NaCl box, Go's included, produces it), and test case 15
 * of the GCM specification (AES-256, 96-bit IV, no additional data).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-box.h"
#include "cptest.h"

/* Decodes lower-case hex into a new buffer; *len gets the byte count. */
static uint8_t *unhex(const char *hex, size_t *len) {
        size_t n = strlen(hex) / 2;
        uint8_t *out = cp_xmalloc(n ? n : 1);

        for (size_t i = 0; i < n; i++) {
                unsigned v;
                if (sscanf(hex + 2 * i, "%2x", &v) != 1)
                        abort();
                out[i] = (uint8_t) v;
        }
        *len = n;
        return out;
}

static void unhex32(const char *hex, uint8_t out[32]) {
        size_t n;
        _cleanup_free_ uint8_t *b = unhex(hex, &n);

        if (n != 32)
                abort();
        memcpy(out, b, 32);
}

/* RFC 7748 6.1 (also the keys of the NaCl box example). */
#define ALICE_SK "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
#define ALICE_PK "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
#define BOB_SK   "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
#define BOB_PK   "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"

/* "Cryptography in NaCl", section 9: Alice boxes 131 bytes to Bob. */
#define NACL_NONCE "69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37"
#define NACL_PLAIN \
        "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc" \
        "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31" \
        "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde" \
        "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864" \
        "5e0705"
/* The 16-byte tag followed by the 131-byte ciphertext. */
#define NACL_SEALED \
        "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce" \
        "48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c972" \
        "71d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae" \
        "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b3" \
        "7973f622a43d14a6599b1f654cb45a74e355a5"

/* ---- WireGuard keys ------------------------------------------------------ */

TEST(x25519_public_from_private_known_answer) {
        uint8_t sk[32], pk[32], expect[32];
        cp_error err = { 0 };

        unhex32(ALICE_SK, sk);
        unhex32(ALICE_PK, expect);
        ASSERT_OK(cp_crypto_wg_public_from_private(sk, pk, &err), &err);
        ASSERT_TRUE(memcmp(pk, expect, 32) == 0);
        unhex32(BOB_SK, sk);
        unhex32(BOB_PK, expect);
        ASSERT_OK(cp_crypto_wg_public_from_private(sk, pk, &err), &err);
        ASSERT_TRUE(memcmp(pk, expect, 32) == 0);
}

TEST(keypair_new_is_clamped_and_consistent) {
        uint8_t priv[32], pub[32], derived[32], priv2[32], pub2[32];

        cp_crypto_wg_keypair_new(priv, pub);
        ASSERT_EQ(0, priv[0] & 7);
        ASSERT_EQ(0, priv[31] & 128);
        ASSERT_EQ(64, priv[31] & 64);
        ASSERT_OK(cp_crypto_wg_public_from_private(priv, derived, NULL), NULL);
        ASSERT_TRUE(memcmp(pub, derived, 32) == 0);
        cp_crypto_wg_keypair_new(priv2, pub2);
        ASSERT_TRUE(memcmp(priv, priv2, 32) != 0);
        ASSERT_TRUE(memcmp(pub, pub2, 32) != 0);
        cp_explicit_bzero(priv, sizeof priv);
        cp_explicit_bzero(priv2, sizeof priv2);
}

TEST(wg_key_format_and_parse_round_trip) {
        uint8_t key[32], back[32];
        char b64[CP_WG_KEY_B64_LEN];
        cp_error err = { 0 };

        unhex32(ALICE_PK, key);
        cp_crypto_wg_key_format(key, b64);
        ASSERT_EQ(44, strlen(b64));
        ASSERT_STREQ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", b64);
        memset(back, 0, sizeof back);
        ASSERT_OK(cp_crypto_wg_key_parse(b64, back, &err), &err);
        ASSERT_TRUE(memcmp(key, back, 32) == 0);
}

TEST(wg_key_parse_errors) {
        static const char *const bad[] = {
                "",
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo",           /* 43: padding missing */
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo==",         /* 45 */
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmoA",          /* 44, 33 bytes */
                "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=",          /* URL-safe alphabet */
                "hSDwCYkwp1R0i33ctD73Wg2*Og0mOBr066SpjqqbTmo=",          /* not base64 */
                "hSDwCYkwp1R0i33ctD73Wg2 Og0mOBr066SpjqqbTmo=",          /* space */
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=",          /* stray low bits */
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",          /* 44, 31 bytes */
        };
        uint8_t key[32], untouched[32];
        cp_error err;

        memset(untouched, 0xa5, sizeof untouched);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                memcpy(key, untouched, sizeof key);
                cp_error_clear(&err);
                ASSERT_EQ(-EINVAL, cp_crypto_wg_key_parse(bad[i], key, &err));
                ASSERT_EQ(-EINVAL, err.code);
                ASSERT_TRUE(strstr(err.message, "invalid WireGuard key") != NULL);
                ASSERT_TRUE(memcmp(key, untouched, sizeof key) == 0);
        }
        ASSERT_EQ(-EINVAL, cp_crypto_wg_key_parse(NULL, key, NULL));
        cp_error_clear(&err);
        ASSERT_EQ(-EINVAL, cp_crypto_wg_key_parse(bad[3], key, &err));
        ASSERT_TRUE(strstr(err.message, "33 bytes") != NULL);
        cp_error_clear(&err);
        ASSERT_EQ(-EINVAL, cp_crypto_wg_key_parse(bad[1], key, &err));
        ASSERT_TRUE(strstr(err.message, "44 characters") != NULL);
}

/* ---- the box --------------------------------------------------------------- */

TEST(box_known_answer_opens) {
        uint8_t alice_pk[32], alice_sk[32], bob_pk[32], bob_sk[32];
        size_t nonce_len, sealed_len, plain_len;
        _cleanup_free_ uint8_t *nonce = unhex(NACL_NONCE, &nonce_len);
        _cleanup_free_ uint8_t *sealed = unhex(NACL_SEALED, &sealed_len);
        _cleanup_free_ uint8_t *plain = unhex(NACL_PLAIN, &plain_len);
        uint8_t body[24 + 147], out[147];
        cp_error err = { 0 };

        ASSERT_EQ(24, nonce_len);
        ASSERT_EQ(147, sealed_len);
        ASSERT_EQ(131, plain_len);
        unhex32(ALICE_PK, alice_pk);
        unhex32(ALICE_SK, alice_sk);
        unhex32(BOB_PK, bob_pk);
        unhex32(BOB_SK, bob_sk);

        /* The wire body is nonce || tag || ciphertext. */
        memcpy(body, nonce, 24);
        memcpy(body + 24, sealed, 147);
        /* Bob (the server) opens what Alice (the peer) sealed... */
        ASSERT_EQ(131, cp_crypto_box_open(alice_pk, bob_sk, body, sizeof body, out, sizeof out, &err));
        ASSERT_TRUE(memcmp(out, plain, 131) == 0);
        /* ...and Alice opens it too: both ends derive the same box key. */
        memset(out, 0, sizeof out);
        ASSERT_EQ(131, cp_crypto_box_open(bob_pk, alice_sk, body, sizeof body, out, sizeof out, &err));
        ASSERT_TRUE(memcmp(out, plain, 131) == 0);
}

TEST(box_seal_open_round_trip) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        const char msg[] = "a LoginRequest, more or less";
        uint8_t body[sizeof msg + CP_BOX_OVERHEAD], body2[sizeof msg + CP_BOX_OVERHEAD];
        char out[sizeof msg];
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        ASSERT_EQ(sizeof body, cp_crypto_box_sealed_len(sizeof msg));

        /* Server to peer, opened the way the agent does. */
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(peer_pub, srv_priv, msg, sizeof msg,
                                                  body, sizeof body, &err));
        ASSERT_EQ(sizeof msg, cp_crypto_box_open(srv_pub, peer_priv, body, sizeof body,
                                                 (uint8_t *) out, sizeof out, &err));
        ASSERT_STREQ(msg, out);

        /* A fresh nonce every time. */
        ASSERT_EQ(sizeof body2, cp_crypto_box_seal(peer_pub, srv_priv, msg, sizeof msg,
                                                   body2, sizeof body2, &err));
        ASSERT_TRUE(memcmp(body, body2, CP_BOX_NONCE_LEN) != 0);
        ASSERT_TRUE(memcmp(body + CP_BOX_NONCE_LEN, body2 + CP_BOX_NONCE_LEN,
                           sizeof body - CP_BOX_NONCE_LEN) != 0);

        /* Peer to server. */
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(srv_pub, peer_priv, msg, sizeof msg,
                                                  body, sizeof body, &err));
        memset(out, 0, sizeof out);
        ASSERT_EQ(sizeof msg, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body,
                                                 (uint8_t *) out, sizeof out, &err));
        ASSERT_STREQ(msg, out);
}

TEST(box_empty_plaintext_is_40_bytes) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        uint8_t body[CP_BOX_OVERHEAD], out[1];

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        /* Logout's sealed Empty. */
        ASSERT_EQ(40, cp_crypto_box_seal(srv_pub, peer_priv, "", 0, body, sizeof body, NULL));
        ASSERT_EQ(0, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body, out, sizeof out, NULL));
        ASSERT_EQ(0, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body, NULL, 0, NULL));
}

TEST(box_shared_key_matches_one_shot) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        cp_crypto_box_shared srv, peer;
        const char msg[] = "SyncResponse #1";
        uint8_t body[sizeof msg + CP_BOX_OVERHEAD];
        char out[sizeof msg];
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        ASSERT_OK(cp_crypto_box_shared_init(&srv, peer_pub, srv_priv, &err), &err);
        ASSERT_OK(cp_crypto_box_shared_init(&peer, srv_pub, peer_priv, &err), &err);
        ASSERT_TRUE(memcmp(srv.key, peer.key, sizeof srv.key) == 0);

        for (int i = 0; i < 3; i++) {
                ASSERT_EQ(sizeof body, cp_crypto_box_seal_shared(&srv, msg, sizeof msg, body, sizeof body, &err));
                /* Opened by the one-shot path on the other side. */
                ASSERT_EQ(sizeof msg, cp_crypto_box_open(srv_pub, peer_priv, body, sizeof body,
                                                         (uint8_t *) out, sizeof out, &err));
                ASSERT_STREQ(msg, out);
                ASSERT_EQ(sizeof msg, cp_crypto_box_open_shared(&peer, body, sizeof body,
                                                                (uint8_t *) out, sizeof out, &err));
        }
        cp_crypto_box_shared_release(&srv);
        cp_crypto_box_shared_release(&peer);
        for (size_t i = 0; i < sizeof srv.key; i++)
                ASSERT_EQ(0, srv.key[i]);
        cp_crypto_box_shared_release(NULL);
}

TEST(box_open_with_wrong_key_fails) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32], other_priv[32], other_pub[32];
        const char msg[] = "for the server only";
        uint8_t body[sizeof msg + CP_BOX_OVERHEAD], out[sizeof msg], untouched[sizeof msg];
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        cp_crypto_wg_keypair_new(other_priv, other_pub);
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(srv_pub, peer_priv, msg, sizeof msg, body, sizeof body, NULL));

        memset(out, 0x5a, sizeof out);
        memcpy(untouched, out, sizeof out);
        /* A different server key (e.g. another replica's, before keys were
         * shared), and a wrong claimed sender. */
        ASSERT_EQ(-EBADMSG, cp_crypto_box_open(peer_pub, other_priv, body, sizeof body, out, sizeof out, &err));
        ASSERT_EQ(-EBADMSG, err.code);
        ASSERT_TRUE(strstr(err.message, "wrong key") != NULL);
        ASSERT_EQ(-EBADMSG, cp_crypto_box_open(other_pub, srv_priv, body, sizeof body, out, sizeof out, NULL));
        ASSERT_TRUE(memcmp(out, untouched, sizeof out) == 0);
        ASSERT_EQ(sizeof msg, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body, out, sizeof out, NULL));
}

TEST(box_open_detects_tampering) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        const char msg[] = "meta: hostname=laptop";
        uint8_t body[sizeof msg + CP_BOX_OVERHEAD], out[sizeof msg];

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(srv_pub, peer_priv, msg, sizeof msg, body, sizeof body, NULL));
        /* One flipped bit anywhere: nonce, tag or ciphertext. */
        for (size_t i = 0; i < sizeof body; i++) {
                body[i] ^= 0x01;
                ASSERT_EQ(-EBADMSG, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body,
                                                       out, sizeof out, NULL));
                body[i] ^= 0x01;
        }
        ASSERT_EQ(sizeof msg, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body, out, sizeof out, NULL));
}

TEST(box_open_truncated_body_fails) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        uint8_t body[64 + CP_BOX_OVERHEAD], out[64];
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        memset(out, 'x', sizeof out);
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(srv_pub, peer_priv, out, 64, body, sizeof body, NULL));
        for (size_t n = 0; n < CP_BOX_OVERHEAD; n++) {
                cp_error_clear(&err);
                ASSERT_EQ(-EBADMSG, cp_crypto_box_open(peer_pub, srv_priv, body, n, out, sizeof out, &err));
                ASSERT_TRUE(strstr(err.message, "40-byte minimum") != NULL);
                ASSERT_EQ(-EBADMSG, cp_crypto_box_open(peer_pub, srv_priv, n ? body : NULL, n,
                                                       out, sizeof out, NULL));
        }
        /* Long enough, but cut short: the tag no longer matches. */
        for (size_t n = CP_BOX_OVERHEAD; n < sizeof body; n += 7)
                ASSERT_EQ(-EBADMSG, cp_crypto_box_open(peer_pub, srv_priv, body, n, out, sizeof out, NULL));
}

TEST(box_buffer_and_size_limits) {
        uint8_t srv_priv[32], srv_pub[32], peer_priv[32], peer_pub[32];
        uint8_t body[8 + CP_BOX_OVERHEAD], out[8];
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(srv_priv, srv_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        ASSERT_EQ(-ENOBUFS, cp_crypto_box_seal(srv_pub, peer_priv, "12345678", 8, body, sizeof body - 1, &err));
        ASSERT_EQ(-ENOBUFS, err.code);
        ASSERT_EQ(sizeof body, cp_crypto_box_seal(srv_pub, peer_priv, "12345678", 8, body, sizeof body, NULL));
        ASSERT_EQ(-ENOBUFS, cp_crypto_box_open(peer_pub, srv_priv, body, sizeof body, out, 7, NULL));
        ASSERT_EQ(-EMSGSIZE, cp_crypto_box_seal(srv_pub, peer_priv, body, (size_t) CP_BOX_MAX_PLAIN + 1,
                                                body, sizeof body, NULL));
        ASSERT_EQ(-EMSGSIZE, cp_crypto_box_open(peer_pub, srv_priv, body,
                                                (size_t) CP_BOX_MAX_PLAIN + CP_BOX_OVERHEAD + 1,
                                                out, sizeof out, NULL));
}

TEST(box_refuses_low_order_public_key) {
        uint8_t priv[32], pub[32], zero[32] = { 0 };
        uint8_t body[CP_BOX_OVERHEAD + 1], out[1];
        cp_crypto_box_shared shared;
        cp_error err = { 0 };

        cp_crypto_wg_keypair_new(priv, pub);
        ASSERT_EQ(-EINVAL, cp_crypto_box_shared_init(&shared, zero, priv, &err));
        ASSERT_TRUE(strstr(err.message, "low-order") != NULL);
        ASSERT_EQ(-EINVAL, cp_crypto_box_seal(zero, priv, "x", 1, body, sizeof body, NULL));
        memset(body, 0, sizeof body);
        ASSERT_EQ(-EINVAL, cp_crypto_box_open(zero, priv, body, sizeof body, out, sizeof out, NULL));
}

/* ---- AES-256-GCM with the DataStoreEncryptionKey ----------------------------- */

/* GCM specification, test case 15. */
#define GCM_KEY   "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
#define GCM_PLAIN \
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" \
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
/* base64(IV cafebabefacedbaddecaf888 || ciphertext || tag b094dac5...) */
#define GCM_STORED \
        "yv66vvrO263eyviIUi3B8JlWfQf0fzejKoRCfWQ6jNy/5cDJdZiivSVV0aqMsI5IWQ27" \
        "PaewixBWgog4xfYeY5O6egq8yfZiiYAVrbCU2sXZNHG97BpQInDjzGw="

TEST(aead_known_answer_decrypts) {
        uint8_t key[32], out[64];
        size_t plain_len;
        _cleanup_free_ uint8_t *plain = unhex(GCM_PLAIN, &plain_len);
        cp_error err = { 0 };

        unhex32(GCM_KEY, key);
        ASSERT_EQ(64, cp_crypto_aead_decrypt(key, GCM_STORED, out, sizeof out, &err));
        ASSERT_TRUE(memcmp(out, plain, 64) == 0);
}

TEST(data_key_parse) {
        uint8_t key[32], untouched[32];
        char b64[CP_DATA_KEY_B64_LEN], b64b[CP_DATA_KEY_B64_LEN];
        cp_error err = { 0 };

        cp_crypto_data_key_new(b64);
        ASSERT_EQ(44, strlen(b64));
        ASSERT_OK(cp_crypto_data_key_parse(b64, key, &err), &err);
        cp_crypto_data_key_new(b64b);
        ASSERT_TRUE(strcmp(b64, b64b) != 0);

        memset(untouched, 0x77, sizeof untouched);
        memcpy(key, untouched, sizeof key);
        ASSERT_EQ(-EINVAL, cp_crypto_data_key_parse("", key, &err));
        ASSERT_EQ(-EINVAL, cp_crypto_data_key_parse(NULL, key, NULL));
        ASSERT_EQ(-EINVAL, cp_crypto_data_key_parse("not base64!", key, &err));
        cp_error_clear(&err);
        /* 16 bytes: an AES-128 key is not accepted. */
        ASSERT_EQ(-EINVAL, cp_crypto_data_key_parse("AAAAAAAAAAAAAAAAAAAAAA==", key, &err));
        ASSERT_TRUE(strstr(err.message, "16 bytes") != NULL);
        ASSERT_TRUE(memcmp(key, untouched, sizeof key) == 0);
}

TEST(aead_round_trip) {
        static const size_t lens[] = { 1, 15, 16, 17, 32, 1000 };
        uint8_t key[32];
        char key_b64[CP_DATA_KEY_B64_LEN];
        cp_error err = { 0 };

        cp_crypto_data_key_new(key_b64);
        ASSERT_OK(cp_crypto_data_key_parse(key_b64, key, &err), &err);
        for (size_t i = 0; i < ELEMENTSOF(lens); i++) {
                size_t n = lens[i];
                _cleanup_free_ uint8_t *plain = cp_xmalloc(n);
                _cleanup_free_ uint8_t *out = cp_xmalloc(n);
                _cleanup_free_ uint8_t *raw = cp_xmalloc(n + 64);
                _cleanup_free_ char *enc = NULL, *enc2 = NULL, *dup = NULL;
                size_t dup_len = 0;

                for (size_t j = 0; j < n; j++)
                        plain[j] = (uint8_t) (j * 7 + 1);
                ASSERT_OK(cp_crypto_aead_encrypt(key, plain, n, &enc, &err), &err);
                /* Stored form: base64(nonce 12 || ciphertext || tag 16). */
                ASSERT_EQ(n + 28, cp_crypto_b64_decode(enc, raw, n + 64));
                ASSERT_TRUE(cp_crypto_aead_plain_max(enc) >= n);
                ASSERT_EQ(n, cp_crypto_aead_decrypt(key, enc, out, n, &err));
                ASSERT_TRUE(memcmp(out, plain, n) == 0);
                /* Random nonce: the same value encrypts differently. */
                ASSERT_OK(cp_crypto_aead_encrypt(key, plain, n, &enc2, &err), &err);
                ASSERT_TRUE(strcmp(enc, enc2) != 0);
                ASSERT_OK(cp_crypto_aead_decrypt_dup(key, enc2, &dup, &dup_len, &err), &err);
                ASSERT_EQ(n, dup_len);
                ASSERT_TRUE(memcmp(dup, plain, n) == 0);
                ASSERT_EQ(0, dup[n]);
                ASSERT_EQ(-ENOBUFS, cp_crypto_aead_decrypt(key, enc, out, n - 1, NULL));
        }
}

TEST(aead_empty_stays_empty) {
        uint8_t key[32], out[1];
        _cleanup_free_ char *enc = NULL, *dup = NULL;
        size_t len = 99;

        memset(key, 3, sizeof key);
        ASSERT_OK(cp_crypto_aead_encrypt(key, "", 0, &enc, NULL), NULL);
        ASSERT_STREQ("", enc);
        ASSERT_EQ(0, cp_crypto_aead_decrypt(key, "", out, sizeof out, NULL));
        ASSERT_OK(cp_crypto_aead_decrypt_dup(key, "", &dup, &len, NULL), NULL);
        ASSERT_EQ(0, len);
        ASSERT_STREQ("", dup);
}

TEST(aead_detects_tampering_and_wrong_key) {
        uint8_t key[32], other[32], raw[64], out[32], untouched[32];
        char tampered[128];
        const char secret[] = "user@example.com";
        _cleanup_free_ char *enc = NULL;
        cp_error err = { 0 };

        memset(key, 0x11, sizeof key);
        memcpy(other, key, sizeof other);
        other[31] ^= 0x80;
        ASSERT_OK(cp_crypto_aead_encrypt(key, secret, strlen(secret), &enc, &err), &err);
        memset(out, 0xee, sizeof out);
        memcpy(untouched, out, sizeof out);

        ASSERT_EQ(-EBADMSG, cp_crypto_aead_decrypt(other, enc, out, sizeof out, &err));
        ASSERT_EQ(-EBADMSG, err.code);
        ASSERT_TRUE(strstr(err.message, "DataStoreEncryptionKey") != NULL);
        ASSERT_TRUE(memcmp(out, untouched, sizeof out) == 0);

        /* Flip one bit of nonce, ciphertext and tag in turn. */
        int n = cp_crypto_b64_decode(enc, raw, sizeof raw);
        ASSERT_EQ((int) strlen(secret) + 28, n);
        for (int i = 0; i < n; i++) {
                raw[i] ^= 0x40;
                cp_crypto_b64_encode(raw, (size_t) n, tampered, sizeof tampered);
                ASSERT_EQ(-EBADMSG, cp_crypto_aead_decrypt(key, tampered, out, sizeof out, NULL));
                raw[i] ^= 0x40;
        }
        ASSERT_TRUE(memcmp(out, untouched, sizeof out) == 0);
        ASSERT_EQ(strlen(secret), cp_crypto_aead_decrypt(key, enc, out, sizeof out, NULL));
        ASSERT_TRUE(memcmp(out, secret, strlen(secret)) == 0);
}

TEST(aead_malformed_input) {
        uint8_t key[32], out[64];
        char *dup = NULL;
        cp_error err = { 0 };

        memset(key, 0x22, sizeof key);
        ASSERT_EQ(-EINVAL, cp_crypto_aead_decrypt(key, "not*base64", out, sizeof out, &err));
        ASSERT_EQ(-EINVAL, err.code);
        /* 27 bytes: shorter than nonce + tag. */
        ASSERT_EQ(-EINVAL, cp_crypto_aead_decrypt(key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", out, sizeof out, &err));
        ASSERT_TRUE(strstr(err.message, "shorter") != NULL);
        ASSERT_EQ(-EINVAL, cp_crypto_aead_decrypt_dup(key, "####", &dup, NULL, NULL));
        ASSERT_TRUE(dup == NULL);
        ASSERT_EQ(-EMSGSIZE, cp_crypto_aead_encrypt(key, out, (size_t) CP_AEAD_MAX_PLAIN + 1, &dup, NULL));
        ASSERT_TRUE(dup == NULL);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 2;
        return cptest_main(argc, argv);
}
