/*
 * The shared server WireGuard key pair (store-serverkey.c): replicas that
 * start together agree on one pair, a wrong DataStoreEncryptionKey is
 * refused with a clear error, and the private key is never stored in the
 * clear.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-box.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

#define N_REPLICAS 8
#define N_ROUNDS 5

static void data_key(uint8_t key[32], uint8_t fill) {
        memset(key, fill, 32);
}

typedef struct replica {
        const char *dsn;
        pthread_barrier_t *start;
        const uint8_t *key;
        int r;
        cp_error err;
        uint8_t priv[32], pub[32];
} replica;

/* One "replica": its own store (own connection), then get_or_create as
 * close to the others as the barrier allows. Assertions stay in the main
 * thread: the harness's longjmp must not cross threads. */
static void *replica_run(void *arg) {
        replica *rp = arg;
        cp_store *s = NULL;

        rp->r = cp_store_open(rp->dsn, 1, &s, &rp->err);
        (void) pthread_barrier_wait(rp->start);
        if (rp->r >= 0)
                rp->r = cp_store_server_key_get_or_create(s, rp->key, rp->priv, rp->pub, &rp->err);
        cp_store_free(s);
        return NULL;
}

/* Starts N_REPLICAS replicas at once against an empty server_keys table
 * and checks they all came back with one and the same pair. */
static void race_once(cptest_db *db, const uint8_t key[32], replica rep[N_REPLICAS]) {
        pthread_barrier_t start;
        pthread_t th[N_REPLICAS];
        uint8_t derived[32];

        ASSERT_EQ(0, pthread_barrier_init(&start, NULL, N_REPLICAS));
        for (int i = 0; i < N_REPLICAS; i++) {
                memset(&rep[i], 0, sizeof rep[i]);
                rep[i].dsn = db->dsn;
                rep[i].start = &start;
                rep[i].key = key;
                ASSERT_EQ(0, pthread_create(&th[i], NULL, replica_run, &rep[i]));
        }
        for (int i = 0; i < N_REPLICAS; i++)
                ASSERT_EQ(0, pthread_join(th[i], NULL));
        pthread_barrier_destroy(&start);

        for (int i = 0; i < N_REPLICAS; i++) {
                ASSERT_OK(rep[i].r, &rep[i].err);
                ASSERT_TRUE(memcmp(rep[0].priv, rep[i].priv, 32) == 0);
                ASSERT_TRUE(memcmp(rep[0].pub, rep[i].pub, 32) == 0);
        }
        ASSERT_OK(cp_crypto_wg_public_from_private(rep[0].priv, derived, NULL), NULL);
        ASSERT_TRUE(memcmp(derived, rep[0].pub, 32) == 0);

        char *rows = cptest_db_query(db, "SELECT count(*) FROM server_keys", 0, NULL);
        ASSERT_STREQ("1", rows);
        free(rows);
}

TEST(concurrent_replicas_agree_on_one_key) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        replica rep[N_REPLICAS];
        uint8_t key[32], priv[32], pub[32];
        cp_error err = { 0 };

        data_key(key, 0x42);
        /* Several rounds from an empty table give the race a few chances
         * to show up. */
        for (int round = 0; round < N_ROUNDS; round++) {
                if (round > 0)
                        free(cptest_db_query(db, "DELETE FROM server_keys", 0, NULL));
                race_once(db, key, rep);
        }

        /* A replica started later reads the same pair. */
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);
        ASSERT_TRUE(memcmp(priv, rep[0].priv, 32) == 0);
        ASSERT_TRUE(memcmp(pub, rep[0].pub, 32) == 0);
        cp_explicit_bzero(priv, sizeof priv);
        for (int i = 0; i < N_REPLICAS; i++)
                cp_explicit_bzero(rep[i].priv, sizeof rep[i].priv);

        s = cp_store_free(s);
        cptest_db_free(db);
}

TEST(wrong_data_key_is_rejected) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        uint8_t key[32], wrong[32], priv[32], pub[32], untouched[32];
        cp_error err = { 0 };

        data_key(key, 0x01);
        data_key(wrong, 0x02);
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);

        memset(untouched, 0xcc, sizeof untouched);
        memcpy(priv, untouched, 32);
        memcpy(pub, untouched, 32);
        ASSERT_EQ(-EKEYREJECTED, cp_store_server_key_get_or_create(s, wrong, priv, pub, &err));
        ASSERT_EQ(-EKEYREJECTED, err.code);
        ASSERT_TRUE(strstr(err.message, "DataStoreEncryptionKey does not match") != NULL);
        ASSERT_TRUE(err.hint[0] != '\0');
        ASSERT_TRUE(memcmp(priv, untouched, 32) == 0);
        ASSERT_TRUE(memcmp(pub, untouched, 32) == 0);
        /* No second key was made behind our back. */
        char *rows = cptest_db_query(db, "SELECT count(*) FROM server_keys", 0, NULL);
        ASSERT_STREQ("1", rows);
        free(rows);
        /* The right key still works. */
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);
        cp_explicit_bzero(priv, sizeof priv);

        s = cp_store_free(s);
        cptest_db_free(db);
}

TEST(private_key_is_not_stored_in_clear) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        uint8_t key[32], priv[32], pub[32], raw[128], back[32];
        char priv_b64[CP_WG_KEY_B64_LEN], pub_b64[CP_WG_KEY_B64_LEN];
        cp_error err = { 0 };

        data_key(key, 0x33);
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);
        cp_crypto_wg_key_format(priv, priv_b64);
        cp_crypto_wg_key_format(pub, pub_b64);

        char *stored_pub = cptest_db_query(db, "SELECT public_key FROM server_keys WHERE purpose = 'wireguard'",
                                           0, NULL);
        char *stored_priv = cptest_db_query(db,
                "SELECT private_key_enc FROM server_keys WHERE purpose = 'wireguard'", 0, NULL);
        ASSERT_STREQ(pub_b64, stored_pub);
        ASSERT_TRUE(strcmp(stored_priv, priv_b64) != 0);
        ASSERT_TRUE(strstr(stored_priv, priv_b64) == NULL);
        /* It is the AES-GCM form: 12 + 32 + 16 bytes, none of them the key. */
        int n = cp_crypto_b64_decode(stored_priv, raw, sizeof raw);
        ASSERT_EQ(60, n);
        ASSERT_TRUE(memmem(raw, (size_t) n, priv, 32) == NULL);
        ASSERT_EQ(32, cp_crypto_aead_decrypt(key, stored_priv, back, sizeof back, &err));
        ASSERT_TRUE(memcmp(back, priv, 32) == 0);

        cp_explicit_bzero(priv, sizeof priv);
        cp_explicit_bzero(back, sizeof back);
        cp_explicit_bzero(priv_b64, sizeof priv_b64);
        free(stored_pub);
        free(stored_priv);
        s = cp_store_free(s);
        cptest_db_free(db);
}

TEST(damaged_rows_are_refused) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        uint8_t key[32], priv[32], pub[32], other_priv[32], other_pub[32];
        char other_b64[CP_WG_KEY_B64_LEN];
        cp_error err = { 0 };

        data_key(key, 0x44);
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);

        /* Someone pasted another public key: the halves no longer match. */
        cp_crypto_wg_keypair_new(other_priv, other_pub);
        cp_crypto_wg_key_format(other_pub, other_b64);
        const char *p[1] = { other_b64 };
        free(cptest_db_query(db, "UPDATE server_keys SET public_key = $1", 1, p));
        ASSERT_EQ(-EBADMSG, cp_store_server_key_get_or_create(s, key, priv, pub, &err));
        ASSERT_TRUE(strstr(err.message, "inconsistent") != NULL);

        /* A private column that is not even base64. */
        free(cptest_db_query(db, "UPDATE server_keys SET private_key_enc = 'not base64!'", 0, NULL));
        ASSERT_EQ(-EBADMSG, cp_store_server_key_get_or_create(s, key, priv, pub, &err));
        ASSERT_EQ(-EBADMSG, err.code);
        ASSERT_TRUE(strstr(err.message, "malformed") != NULL);

        /* The schema refuses a public key of the wrong length outright. */
        char *state = cptest_db_try(db, "UPDATE server_keys SET public_key = 'short'", 0, NULL);
        ASSERT_STREQ("23514", state);
        free(state);

        cp_explicit_bzero(priv, sizeof priv);
        cp_explicit_bzero(other_priv, sizeof other_priv);
        s = cp_store_free(s);
        cptest_db_free(db);
}


/* ---- rotation (migration 0004) ------------------------------------------------- */

TEST(rotation_keeps_the_previous_key_for_its_grace_period) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        uint8_t key[32], wrong[32], priv[32], pub[32];
        cp_store_server_keys ks;
        cp_store_server_key_info info;
        cp_error err = { 0 };
        char first_b64[CP_WG_KEY_B64_LEN];

        data_key(key, 0x55);
        data_key(wrong, 0x56);
        /* Nothing to rotate or show before a replica made the key. */
        ASSERT_EQ(-ENOENT, cp_store_server_key_info_get(s, &info, &err));
        ASSERT_EQ(-ENOENT, cp_store_server_key_rotate(s, key, 60, false, &info, &err));
        ASSERT_OK(cp_store_server_key_get_or_create(s, key, priv, pub, &err), &err);
        cp_crypto_wg_key_format(pub, first_b64);
        ASSERT_OK(cp_store_server_keys_load(s, key, &ks, &err), &err);
        ASSERT_FALSE(ks.has_previous);
        ASSERT_EQ(1, ks.generation);
        ASSERT_OK(cp_store_server_key_info_get(s, &info, &err), &err);
        ASSERT_STREQ(first_b64, info.public_key);
        ASSERT_EQ(0, info.rotated_unix_ns);
        ASSERT_STREQ("", info.previous_public_key);

        /* A wrong DataStoreEncryptionKey changes nothing. */
        ASSERT_EQ(-EKEYREJECTED, cp_store_server_key_rotate(s, wrong, 60, false, &info, &err));
        ASSERT_OK(cp_store_server_key_info_get(s, &info, &err), &err);
        ASSERT_EQ(1, info.generation);

        ASSERT_OK(cp_store_server_key_rotate(s, key, 3600, false, &info, &err), &err);
        ASSERT_EQ(2, info.generation);
        ASSERT_STREQ(first_b64, info.previous_public_key);
        ASSERT_TRUE(info.previous_valid);
        ASSERT_TRUE(strcmp(info.public_key, first_b64) != 0);
        ASSERT_TRUE(info.rotated_unix_ns > 0 && info.previous_expires_unix_ns > info.rotated_unix_ns);

        /* Replicas load both pairs; the previous one is the old pair. */
        ASSERT_OK(cp_store_server_keys_load(s, key, &ks, &err), &err);
        ASSERT_TRUE(ks.has_previous);
        ASSERT_EQ(2, ks.generation);
        ASSERT_TRUE(memcmp(ks.prev_priv, priv, 32) == 0 && memcmp(ks.prev_pub, pub, 32) == 0);
        ASSERT_TRUE(memcmp(ks.pub, pub, 32) != 0);
        uint8_t derived[32];
        ASSERT_OK(cp_crypto_wg_public_from_private(ks.priv, derived, NULL), NULL);
        ASSERT_TRUE(memcmp(derived, ks.pub, 32) == 0);
        /* The previous private key is stored encrypted, as the current
         * one is: not its base64 nor containing it, the AES-GCM form
         * (12 + 32 + 16 bytes, none of them the key) that opens to it. */
        char *enc = cptest_db_query(db, "SELECT previous_private_key_enc FROM server_keys", 0, NULL);
        char priv_b64[CP_WG_KEY_B64_LEN];
        uint8_t raw[128], back[32];
        cp_crypto_wg_key_format(priv, priv_b64);
        ASSERT_TRUE(strlen(enc) > 44);
        ASSERT_TRUE(strcmp(enc, priv_b64) != 0);
        ASSERT_TRUE(strstr(enc, priv_b64) == NULL);
        int n_raw = cp_crypto_b64_decode(enc, raw, sizeof raw);
        ASSERT_EQ(60, n_raw);
        ASSERT_TRUE(memmem(raw, (size_t) n_raw, priv, 32) == NULL);
        ASSERT_EQ(32, cp_crypto_aead_decrypt(key, enc, back, sizeof back, &err));
        ASSERT_TRUE(memcmp(back, priv, 32) == 0);
        cp_explicit_bzero(back, sizeof back);
        cp_explicit_bzero(priv_b64, sizeof priv_b64);
        free(enc);

        /* Again inside the grace period: refused unless forced. */
        ASSERT_EQ(-EBUSY, cp_store_server_key_rotate(s, key, 3600, false, &info, &err));
        ASSERT_TRUE(strstr(err.hint, "--force") != NULL);
        ASSERT_OK(cp_store_server_key_rotate(s, key, 0, true, &info, &err), &err);
        ASSERT_EQ(3, info.generation);
        ASSERT_FALSE(info.previous_valid);
        /* A grace period of 0: the previous pair is not handed out. */
        ASSERT_OK(cp_store_server_keys_load(s, key, &ks, &err), &err);
        ASSERT_FALSE(ks.has_previous);
        ASSERT_EQ(3, ks.generation);
        /* ... and an expired one does not block the next rotation. */
        ASSERT_OK(cp_store_server_key_rotate(s, key, 60, false, &info, &err), &err);
        ASSERT_EQ(4, info.generation);

        /* The schema keeps the previous key whole. */
        char *state = cptest_db_try(db, "UPDATE server_keys SET previous_expires_at = NULL", 0, NULL);
        ASSERT_STREQ("23514", state);
        free(state);

        cp_explicit_bzero(&ks, sizeof ks);
        cp_explicit_bzero(priv, sizeof priv);
        s = cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 2;
        return cptest_main(argc, argv);
}
