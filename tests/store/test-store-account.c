/* Account creation, hashed secrets, unique indexes and constraints. */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

TEST(account_create_builds_the_netbird_defaults) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_account_spec spec = { .name = "alice", .domain = "example.test" };
        cp_store_account_created a;
        cp_error err = { 0 };
        int64_t n = -1;

        ASSERT_OK(cp_store_account_count(s, &n, &err), &err);
        ASSERT_EQ(0, n);
        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        ASSERT_OK(cp_store_account_count(s, &n, &err), &err);
        ASSERT_EQ(1, n);

        ASSERT_DB_QUERY("t", db, "SELECT network_net <<= '100.64.0.0/10' AND masklen(network_net) = 16"
                              " FROM accounts WHERE id = $1", a.account_id);
        ASSERT_DB_QUERY(a.network_cidr, db, "SELECT network_net::text FROM accounts WHERE id = $1", a.account_id);
        ASSERT_DB_QUERY("0", db, "SELECT network_serial FROM accounts WHERE id = $1", a.account_id);
        ASSERT_DB_QUERY("t", db, "SELECT settings_peer_login_expiration_enabled AND"
                              " settings_peer_login_expiration = 86400000000000"
                              " FROM accounts WHERE id = $1", a.account_id);
        ASSERT_DB_QUERY("All", db, "SELECT string_agg(name, ',') FROM groups WHERE account_id = $1", a.account_id);
        /* The Default rule goes All -> All, both ways, any protocol, accept. */
        ASSERT_DB_QUERY("t", db,
                     "SELECT r.sources = ARRAY[g.id] AND r.destinations = ARRAY[g.id] AND r.bidirectional"
                     " AND r.protocol = 'all' AND r.action = 'accept' AND p.enabled"
                     " FROM policy_rules r JOIN policies p ON p.id = r.policy_id"
                     " JOIN groups g ON g.account_id = p.account_id AND g.name = 'All'"
                     " WHERE p.account_id = $1", a.account_id);
        ASSERT_DB_QUERY("owner", db, "SELECT role FROM users WHERE account_id = $1", a.account_id);
        ASSERT_DB_QUERY("5", db, "SELECT count(*) FROM events WHERE account_id = $1", a.account_id);
        ASSERT_DB_QUERY("4", db, "SELECT min(activity) FROM events WHERE account_id = $1", a.account_id);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(secrets_are_stored_only_hashed) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_account_spec spec = { .name = "bob" };
        cp_store_account_created a;
        cp_error err = { 0 };
        char hash[CP_SHA256_B64_LEN], masked[10];

        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        ASSERT_EQ(0, cp_crypto_pat_check(a.admin_token));

        cp_crypto_setup_key_hash(a.setup_key, hash);
        ASSERT_DB_QUERY(hash, db, "SELECT key FROM setup_keys WHERE account_id = $1", a.account_id);
        cp_crypto_setup_key_mask(a.setup_key, masked);
        ASSERT_DB_QUERY(masked, db, "SELECT key_secret FROM setup_keys WHERE account_id = $1", a.account_id);
        ASSERT_DB_QUERY("reusable", db, "SELECT type FROM setup_keys WHERE account_id = $1", a.account_id);

        cp_crypto_pat_hash(a.admin_token, hash);
        ASSERT_DB_QUERY(hash, db, "SELECT hashed_token FROM personal_access_tokens WHERE user_id = $1", a.user_id);

        /* The plain secrets appear nowhere in the database. */
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM setup_keys s WHERE s::text LIKE '%' || $1 || '%'", a.setup_key);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM personal_access_tokens t"
                              " WHERE t::text LIKE '%' || $1 || '%'", a.admin_token);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM events e WHERE e::text LIKE '%' || $1 || '%'", a.admin_token);
        cp_store_free(s);
        cptest_db_free(db);
}

static void insert_peer(cptest_db *db, const char *account, const char *id, const char *ip, const char *label) {
        const char *p[4] = { id, account, ip, label };
        free(cptest_db_query(db, "INSERT INTO peers (id, account_id, key, ip, dns_label)"
                                 " VALUES ($1, $2, 'k-' || $1, $3::inet, $4)", 4, p));
}

static char *try_peer(cptest_db *db, const char *account, const char *id, const char *ip, const char *label) {
        const char *p[4] = { id, account, ip, label };
        return cptest_db_try(db, "INSERT INTO peers (id, account_id, key, ip, dns_label)"
                                 " VALUES ($1, $2, 'k-' || $1, $3::inet, $4)", 4, p);
}

TEST(peer_ip_and_dns_label_are_unique_per_account) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_account_spec spec = { .name = "x" };
        cp_store_account_created a, b;
        cp_error err = { 0 };
        char *st;

        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        ASSERT_OK(cp_store_account_create(s, &spec, &b, &err), &err);
        insert_peer(db, a.account_id, "p1", "100.64.0.1", "host");
        /* Same ip or same label in the same account: unique_violation. */
        st = try_peer(db, a.account_id, "p2", "100.64.0.1", "other");
        ASSERT_STREQ("23505", st);
        free(st);
        st = try_peer(db, a.account_id, "p3", "100.64.0.2", "host");
        ASSERT_STREQ("23505", st);
        free(st);
        /* Another account may use both. */
        insert_peer(db, b.account_id, "p4", "100.64.0.1", "host");
        /* A peer in an account that does not exist: foreign key violation. */
        st = try_peer(db, "no-such-account", "p5", "100.64.0.9", "z");
        ASSERT_STREQ("23503", st);
        free(st);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(setup_key_limits_hold_in_the_database) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_account_spec spec = { .name = "x" };
        cp_store_account_created a;
        cp_error err = { 0 };
        char *st;

        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        const char *p[1] = { a.account_id };
        free(cptest_db_query(db, "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, usage_limit)"
                                 " VALUES ('k1', $1, 'h1', 'AAAAA****', 'once', 'one-off', 1)", 1, p));
        free(cptest_db_query(db, "UPDATE setup_keys SET used_times = 1 WHERE id = 'k1'", 0, NULL));
        st = cptest_db_try(db, "UPDATE setup_keys SET used_times = 2 WHERE id = 'k1'", 0, NULL);
        ASSERT_STREQ("23514", st);      /* check_violation */
        free(st);
        st = cptest_db_try(db, "UPDATE setup_keys SET type = 'forever' WHERE id = 'k1'", 0, NULL);
        ASSERT_STREQ("23514", st);
        free(st);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(store_errors_keep_the_sqlstate) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_account_spec spec = { .name = "x" };
        cp_store_account_created a;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        /* Break the next account's insert: a second "All" group for every
         * new id is impossible, so make the policies table refuse instead. */
        free(cptest_db_query(db, "ALTER TABLE policies ADD CONSTRAINT no_more CHECK (name <> 'Default') NOT VALID", 0, NULL));
        int64_t before = 0, after = 0;
        ASSERT_OK(cp_store_account_count(s, &before, &err), &err);
        ASSERT_EQ(-EINVAL, cp_store_account_create(s, &spec, &a, &err));
        ASSERT_STREQ("23514", err.sqlstate);
        ASSERT_TRUE(strstr(err.message, "creating account") != NULL);
        /* Nothing of the failed account was left behind. */
        ASSERT_OK(cp_store_account_count(s, &after, &err), &err);
        ASSERT_EQ(before, after);
        char *g = cptest_db_query(db, "SELECT count(*) FROM groups", 0, NULL);
        ASSERT_STREQ("1", g);
        free(g);
        cp_store_free(s);
        cptest_db_free(db);
}

typedef struct first_racer {
        const char *dsn;
        pthread_barrier_t *start;
        int r;
        cp_error err;
} first_racer;

static void *first_main(void *arg) {
        first_racer *x = arg;
        cp_store_account_spec spec = { .name = "first", .only_if_none = true };
        cp_store_account_created out;
        cp_store *s = NULL;

        x->r = cp_store_open(x->dsn, 1, &s, &x->err);
        pthread_barrier_wait(x->start);
        if (x->r >= 0)
                x->r = cp_store_account_create(s, &spec, &out, &x->err);
        cp_store_free(s);
        return NULL;
}

TEST(concurrent_first_account_creation_makes_exactly_one) {
        enum { N = 8 };
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        pthread_barrier_t start;
        pthread_t th[N];
        first_racer rc[N];
        int created = 0, exists = 0;

        s = cp_store_free(s);
        pthread_barrier_init(&start, NULL, N);
        for (int i = 0; i < N; i++) {
                rc[i] = (first_racer) { .dsn = db->dsn, .start = &start };
                pthread_create(&th[i], NULL, first_main, &rc[i]);
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < N; i++) {
                if (rc[i].r == -EEXIST)
                        exists++;
                else {
                        ASSERT_OK(rc[i].r, &rc[i].err);
                        created++;
                }
        }
        ASSERT_EQ(1, created);
        ASSERT_EQ(N - 1, exists);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM accounts", NULL);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM setup_keys", NULL);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
