/*
 * DataStoreEncryptionKeys in the database (cp/store-pii.h): the first key
 * is recorded (proven by the server key on a database from before the
 * fingerprints), a wrong key is refused without a write, legacy rows are
 * sealed, re-sealing under a new key goes in committed batches that a
 * rerun resumes, and an old key is retired only once nothing uses it.
 */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/store-pii.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

static uint8_t key_a[32], key_b[32], key_c[32];

static void keys_init(void) {
        memset(key_a, 0xa1, 32);
        memset(key_b, 0xb2, 32);
        memset(key_c, 0xc3, 32);
}

static void add_users(cptest_db *db, int n) {
        char count[16];

        (void) snprintf(count, sizeof count, "%d", n);
        free(cptest_db_query1(db, "WITH a AS (INSERT INTO accounts (id, created_by, network_identifier,"
                              " network_net) VALUES ('acc', 'u0', 'acc', '100.64.0.0/16')"
                              " ON CONFLICT DO NOTHING RETURNING 1)"
                              " INSERT INTO users (id, account_id, role, name, email)"
                              " SELECT 'u' || i, 'acc', 'user', 'Name ' || i, 'u' || i || '@x.test'"
                              " FROM generate_series(1, $1::int) i", count));
}

TEST(a_recorded_key_that_is_no_longer_current_is_made_current_again) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_pii_check chk;
        cp_error err = { 0 };
        char fp_a[CP_PII_FP_LEN];

        keys_init();
        cp_pii_fingerprint(key_a, fp_a);
        cp_pii_install(key_a, NULL);
        /* Ours is recorded but no row is current (someone cleared it). */
        free(cptest_db_query1(db, "INSERT INTO data_keys (fingerprint, current) VALUES ($1, false)", fp_a));
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_STREQ(fp_a, chk.current);
        ASSERT_DB_QUERY(fp_a, db, "SELECT fingerprint FROM data_keys WHERE current", NULL);
        cp_pii_uninstall();
        cp_store_free(s);
        cptest_db_free(db);
}

/* The plain-text pass (every few seconds on every replica) reads an
 * index of the rows it seals, never the service users and empty events
 * that stay plain for ever. The conditions are PII_SELECT's. */
TEST(the_plain_text_pass_reads_only_rows_with_something_to_seal) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        static const struct { const char *query, *index; } plans[] = {
                { "SELECT id FROM users WHERE pii_key = '' AND (email <> '' OR name <> '') ORDER BY id LIMIT 500",
                  "idx_users_pii_legacy" },
                { "SELECT account_id FROM msp_tenants WHERE pii_key = '' AND (contact_email <> '' OR"
                  " contact_name <> '') ORDER BY account_id LIMIT 500", "idx_msp_tenants_pii_legacy" },
                { "SELECT id FROM events WHERE meta ? 'email' AND pii_key = '' AND (meta->>'email' <> ''"
                  " OR COALESCE(meta->>'name', '') <> '') ORDER BY id LIMIT 500", "idx_events_pii_legacy" },
        };

        /* The whole plan as one line (the tables are small: no seq scan). */
        free(cptest_db_query(db, "CREATE FUNCTION test_plan(q text) RETURNS text LANGUAGE plpgsql AS $$"
                             " DECLARE l text; o text := ''; BEGIN"
                             " PERFORM set_config('enable_seqscan', 'off', true);"
                             " FOR l IN EXECUTE 'EXPLAIN ' || q LOOP o := o || l || ' '; END LOOP;"
                             " RETURN o; END $$", 0, NULL));
        for (size_t i = 0; i < ELEMENTSOF(plans); i++) {
                char *plan = cptest_db_query1(db, "SELECT test_plan($1)", plans[i].query);
                if (!strstr(plan, plans[i].index))
                        cptest_fail(__FILE__, __LINE__, "%s: %s", plans[i].index, plan);
                free(plan);
        }
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(first_key_is_recorded_and_a_wrong_one_refused_without_a_write) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_pii_check chk;
        cp_error err = { 0 };
        uint8_t priv[32], pub[32];
        char fp_a[CP_PII_FP_LEN], fp_c[CP_PII_FP_LEN];

        keys_init();
        cp_pii_fingerprint(key_a, fp_a);
        cp_pii_fingerprint(key_c, fp_c);
        /* A database from before 0012: a server key sealed with A. */
        ASSERT_OK(cp_store_server_key_get_or_create(s, key_a, priv, pub, &err), &err);
        cp_pii_install(key_c, NULL);
        ASSERT_EQ(-EKEYREJECTED, cp_store_pii_key_check(s, &chk, &err));
        ASSERT_STREQ("", chk.current);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM data_keys", NULL);
        /* C with A as previous: A is proven and recorded, and writes. */
        cp_pii_install(key_c, key_a);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_TRUE(chk.registered);
        ASSERT_STREQ(fp_a, chk.current);
        ASSERT_STREQ(fp_a, cp_pii_writer_fp());
        ASSERT_DB_QUERY(fp_a, db, "SELECT fingerprint FROM data_keys WHERE current", NULL);
        /* Now recorded: C alone is refused and names A. */
        cp_pii_install(key_c, NULL);
        ASSERT_EQ(-EKEYREJECTED, cp_store_pii_key_check(s, &chk, &err));
        ASSERT_STREQ(fp_a, chk.current);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM data_keys", NULL);
        cp_pii_uninstall();
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(legacy_rows_sealed_then_rotated_in_batches_that_resume) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_pii_check chk;
        cp_store_pii_counts c = { 0 };
        cp_error err = { 0 };
        uint8_t priv[32], pub[32];
        char fp_a[CP_PII_FP_LEN], fp_b[CP_PII_FP_LEN];
        int64_t rows = -1, secrets = -1;

        keys_init();
        cp_pii_fingerprint(key_a, fp_a);
        cp_pii_fingerprint(key_b, fp_b);
        add_users(db, 7);
        /* A service user: nothing to seal, never touched. */
        free(cptest_db_query(db, "INSERT INTO users (id, account_id, role, is_service_user, service_user_name)"
                             " VALUES ('svc', 'acc', 'admin', true, 'robot')", 0, NULL));
        cp_pii_install(key_a, NULL);
        ASSERT_OK(cp_store_server_key_get_or_create(s, key_a, priv, pub, &err), &err);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_OK(cp_store_pii_seal_legacy(s, 3, 0, &c, &err), &err);
        ASSERT_EQ(7, (int) c.users);
        ASSERT_EQ(3, c.batches);
        ASSERT_DB_QUERY("7", db, "SELECT count(*) FROM users WHERE pii_key = $1", fp_a);
        ASSERT_DB_QUERY("", db, "SELECT pii_key FROM users WHERE id = 'svc'", NULL);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM users WHERE email LIKE '%x.test' OR name LIKE 'Name%'", NULL);

        /* Rotation to B: two batches of two, then the rest. */
        cp_pii_install(key_b, key_a);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_STREQ(fp_a, cp_pii_writer_fp());
        ASSERT_OK(cp_store_pii_key_set_current(s, fp_b, &err), &err);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_STREQ(fp_b, cp_pii_writer_fp());
        memset(&c, 0, sizeof c);
        ASSERT_OK(cp_store_pii_reseal_secrets(s, &c, &err), &err);
        ASSERT_EQ(1, (int) c.secrets);
        ASSERT_OK(cp_store_pii_reseal(s, false, 2, 2, &c, &err), &err);
        ASSERT_FALSE(c.done);
        ASSERT_EQ(4, (int) c.users);
        ASSERT_DB_QUERY("4", db, "SELECT count(*) FROM users WHERE pii_key = $1", fp_b);
        ASSERT_EQ(-EBUSY, cp_store_pii_key_retire(s, fp_a, &err));
        memset(&c, 0, sizeof c);
        ASSERT_OK(cp_store_pii_reseal(s, false, 2, 0, &c, &err), &err);
        ASSERT_TRUE(c.done);
        ASSERT_EQ(3, (int) c.users);
        ASSERT_OK(cp_store_pii_key_usage(s, fp_a, &rows, &secrets, &err), &err);
        ASSERT_EQ(0, (int) rows);
        ASSERT_EQ(0, (int) secrets);
        /* Every value opens with B alone, and reads as it was. */
        cp_pii_install(key_b, NULL);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        char *name = cptest_db_query(db, "SELECT name FROM users WHERE id = 'u5'", 0, NULL);
        char *plain = cp_pii_open(fp_b, name);
        ASSERT_STREQ("Name 5", plain);
        free(plain);
        free(name);
        ASSERT_OK(cp_store_server_key_get_or_create(s, key_b, priv, pub, &err), &err);
        /* A retires; the current key cannot. */
        ASSERT_EQ(-EBUSY, cp_store_pii_key_retire(s, fp_b, &err));
        ASSERT_OK(cp_store_pii_key_retire(s, fp_a, &err), &err);
        ASSERT_DB_QUERY(fp_b, db, "SELECT string_agg(fingerprint, ',') FROM data_keys", NULL);
        cp_pii_uninstall();
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(rows_under_an_unknown_key_stop_the_reseal) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_pii_check chk;
        cp_store_pii_counts c = { 0 };
        cp_error err = { 0 };

        keys_init();
        add_users(db, 2);
        free(cptest_db_query(db, "UPDATE users SET pii_key = 'ffffffffffffffffffffffffffffffff' WHERE id = 'u1'",
                             0, NULL));
        cp_pii_install(key_a, NULL);
        ASSERT_OK(cp_store_pii_key_check(s, &chk, &err), &err);
        ASSERT_EQ(-ENOKEY, cp_store_pii_reseal(s, false, 10, 0, &c, &err));
        ASSERT_TRUE(strstr(err.message, "ffffffff") != NULL);
        cp_pii_uninstall();
        cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
