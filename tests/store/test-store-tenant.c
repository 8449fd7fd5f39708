/* The tenant lifecycle in the store (cp/store-tenant.h) and the
 * registration admission (cp/store-peers.h): MSP enable/disable, suspend
 * and resume with the serial bump, the device limit against concurrent
 * registrations on many connections, delete-all, and the status. */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/store-peers.h"
#include "cp/store-tenant.h"
#include "cp/util.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

static void make_account(cp_store *s, cp_store_account_created *a) {
        cp_store_account_spec spec = { .name = "owner" };
        cp_error err = { 0 };

        ASSERT_OK(cp_store_account_create(s, &spec, a, &err), &err);
}

/* Registers a peer with a fresh WireGuard key; returns the store's result. */
static int reg(cp_store *s, const char *setup_key, const char *host, cp_error *err) {
        uint8_t raw[32];
        char key[64];
        cp_store_peer_meta meta = { .hostname = host, .go_os = "linux" };

        cp_random_bytes(raw, sizeof raw);
        cp_crypto_b64_encode(raw, sizeof raw, key, 45);
        cp_store_peer_register_req rr = { .setup_key = setup_key, .wg_pub_key = key, .meta = &meta };
        return cp_store_peer_register(s, &rr, NULL, NULL, err);
}

TEST(msp_suspend_and_limit_setters) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_account_created a;
        cp_error err = { 0 };
        bool changed = false;
        int64_t serial = 0, before;

        make_account(s, &a);
        ASSERT_OK(cp_store_msp_set_enabled(s, a.account_id, true, NULL, &changed, &err), &err);
        ASSERT_TRUE(changed);
        char *first = cptest_db_query1(db, "SELECT msp_enabled_at::text FROM accounts WHERE id = $1", a.account_id);
        ASSERT_OK(cp_store_msp_set_enabled(s, a.account_id, true, NULL, &changed, &err), &err);
        ASSERT_FALSE(changed);
        ASSERT_DB_QUERY(first, db, "SELECT msp_enabled_at::text FROM accounts WHERE id = $1", a.account_id);
        free(first);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 1304 AND account_id = $1"
                        " AND initiator_id = 'sys'", a.account_id);
        ASSERT_OK(cp_store_msp_set_enabled(s, a.account_id, false, "op", &changed, &err), &err);
        ASSERT_TRUE(changed);
        ASSERT_DB_QUERY("t", db, "SELECT msp_enabled_at IS NULL FROM accounts WHERE id = $1", a.account_id);

        _cleanup_free_ char *serial_before = cptest_db_query1(db, "SELECT network_serial FROM accounts WHERE id = $1",
                                                              a.account_id);
        before = strtoll(serial_before, NULL, 10);
        ASSERT_OK(cp_store_account_set_suspended(s, a.account_id, true, NULL, &serial, &changed, &err), &err);
        ASSERT_TRUE(changed);
        ASSERT_EQ(before + 1, serial);
        ASSERT_OK(cp_store_account_set_suspended(s, a.account_id, true, NULL, &serial, &changed, &err), &err);
        ASSERT_FALSE(changed);
        ASSERT_EQ(before + 2, serial);
        cp_store_account_settings st;
        ASSERT_OK(cp_store_account_get_settings(s, a.account_id, &st, &err), &err);
        ASSERT_TRUE(st.suspended);
        /* A suspended account takes no peer. */
        ASSERT_EQ(-EHOSTDOWN, reg(s, a.setup_key, "host-1", &err));
        ASSERT_DB_QUERY("0", db, "SELECT used_times FROM setup_keys WHERE account_id = $1", a.account_id);
        ASSERT_OK(cp_store_account_set_suspended(s, a.account_id, false, NULL, &serial, &changed, &err), &err);
        ASSERT_TRUE(changed);
        ASSERT_OK(reg(s, a.setup_key, "host-1", &err), &err);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 1301 AND account_id = $1",
                        a.account_id);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 1302 AND account_id = $1",
                        a.account_id);

        ASSERT_OK(cp_store_account_set_device_limit(s, a.account_id, 1, NULL, &err), &err);
        ASSERT_OK(cp_store_account_set_device_limit(s, a.account_id, 1, NULL, &err), &err);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 1303 AND account_id = $1",
                        a.account_id);
        ASSERT_EQ(-EDQUOT, reg(s, a.setup_key, "host-2", &err));
        ASSERT_DB_QUERY("1", db, "SELECT used_times FROM setup_keys WHERE account_id = $1", a.account_id);
        ASSERT_DB_QUERY("{\"name\": \"host-2\", \"device_limit\": 1}", db,
                        "SELECT meta::text FROM events WHERE activity = 1300 AND account_id = $1", a.account_id);
        ASSERT_OK(cp_store_account_set_device_limit(s, a.account_id, -1, NULL, &err), &err);
        ASSERT_DB_QUERY("t", db, "SELECT device_limit IS NULL FROM accounts WHERE id = $1", a.account_id);
        ASSERT_OK(reg(s, a.setup_key, "host-2", &err), &err);

        /* Unknown accounts and bad values. */
        ASSERT_EQ(-ENOENT, cp_store_msp_set_enabled(s, "nope", true, NULL, NULL, &err));
        ASSERT_EQ(-ENOENT, cp_store_account_set_suspended(s, "nope", true, NULL, NULL, NULL, &err));
        ASSERT_EQ(-ENOENT, cp_store_account_set_device_limit(s, "nope", 3, NULL, &err));
        ASSERT_EQ(-EINVAL, cp_store_account_set_device_limit(s, a.account_id, (int64_t) INT32_MAX + 1, NULL, &err));
        ASSERT_EQ(-EINVAL, cp_store_account_set_suspended(s, "", true, NULL, NULL, NULL, &err));
        cp_store_free(s);
        cptest_db_free(db);
}

typedef struct racer {
        cp_store *s;
        const char *key;
        int i;
        int r;
} racer;

static void *race(void *p) {
        racer *x = p;
        char host[32];
        cp_error err = { 0 };

        (void) snprintf(host, sizeof host, "racer-%d", x->i);
        x->r = reg(x->s, x->key, host, &err);
        return NULL;
}

TEST(device_limit_is_exact_under_concurrent_registrations) {
        enum { N = 24, LIMIT = 7 };
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(N, &s);
        cp_store_account_created a;
        cp_error err = { 0 };
        pthread_t th[N];
        racer x[N];
        int ok = 0, refused = 0;

        make_account(s, &a);
        ASSERT_OK(cp_store_account_set_device_limit(s, a.account_id, LIMIT, NULL, &err), &err);
        for (int i = 0; i < N; i++) {
                x[i] = (racer) { .s = s, .key = a.setup_key, .i = i };
                ASSERT_EQ(0, pthread_create(&th[i], NULL, race, &x[i]));
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        for (int i = 0; i < N; i++) {
                ok += x[i].r == 0;
                refused += x[i].r == -EDQUOT;
        }
        ASSERT_EQ(LIMIT, ok);
        ASSERT_EQ(N - LIMIT, refused);
        ASSERT_DB_QUERY("7", db, "SELECT count(*) FROM peers WHERE account_id = $1", a.account_id);
        /* At most one refusal event per 10 minutes (concurrent refusals
         * may each find none yet): at least one, and a refusal after the
         * burst adds none. */
        ASSERT_DB_QUERY("t", db, "SELECT count(*) >= 1 FROM events WHERE activity = 1300 AND account_id = $1",
                        a.account_id);
        _cleanup_free_ char *before = cptest_db_query2(db, "SELECT count(*) FROM events WHERE activity = 1300"
                                                       " AND account_id = $1", a.account_id, NULL);
        ASSERT_EQ(-EDQUOT, reg(s, a.setup_key, "late", &err));
        ASSERT_DB_QUERY(before, db, "SELECT count(*) FROM events WHERE activity = 1300 AND account_id = $1",
                        a.account_id);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(status_and_delete) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_account_created msp, t, other;
        cp_store_tenant_status st, *list = NULL;
        cp_store_account_deleted del;
        cp_error err = { 0 };
        size_t n = 99;

        make_account(s, &msp);
        make_account(s, &t);
        make_account(s, &other);
        ASSERT_OK(cp_store_tenant_status_list(s, msp.account_id, &list, &n, &err), &err);
        ASSERT_EQ(0, n);
        ASSERT_EQ(-ENOENT, cp_store_tenant_status_list(s, "nope", &list, &n, &err));
        const char *link[2] = { t.account_id, msp.account_id };
        free(cptest_db_query(db, "INSERT INTO msp_tenants (account_id, msp_account_id, name, domain, status,"
                             " dns_challenge) VALUES ($1, $2, 'Tee', 'tee.example', 'pending', 'x')", 2, link));
        ASSERT_OK(reg(s, t.setup_key, "t-1", &err), &err);
        ASSERT_OK(reg(s, t.setup_key, "t-2", &err), &err);
        ASSERT_OK(reg(s, other.setup_key, "o-1", &err), &err);
        free(cptest_db_query1(db, "UPDATE peers SET peer_status_connected = true, peer_status_last_seen ="
                              " now() + interval '1 hour' WHERE account_id = $1 AND name = 't-1'", t.account_id));
        ASSERT_OK(cp_store_tenant_status_list(s, msp.account_id, &list, &n, &err), &err);
        ASSERT_EQ(1, n);
        ASSERT_STREQ(t.account_id, list[0].account_id);
        ASSERT_STREQ("Tee", list[0].name);
        ASSERT_STREQ("tee.example", list[0].domain);
        ASSERT_STREQ("pending", list[0].status);
        ASSERT_STREQ(msp.account_id, list[0].msp_account_id);
        ASSERT_EQ(2, list[0].peers_total);
        ASSERT_EQ(1, list[0].peers_connected);
        ASSERT_EQ(-1, list[0].device_limit);
        ASSERT_FALSE(list[0].suspended);
        /* The latest of last_seen (an hour ahead) and the events. */
        ASSERT_TRUE(list[0].last_activity_ms > cp_now_unix_ns() / 1000000 + 3500 * 1000);
        char *serial = cptest_db_query1(db, "SELECT network_serial FROM accounts WHERE id = $1", t.account_id);
        ASSERT_EQ(strtoll(serial, NULL, 10), list[0].serial);
        free(serial);
        free(list);
        ASSERT_OK(cp_store_account_status(s, other.account_id, &st, &err), &err);
        ASSERT_EQ(1, st.peers_total);
        ASSERT_STREQ("", st.msp_account_id);
        ASSERT_EQ(-ENOENT, cp_store_account_status(s, "nope", &st, &err));

        char *before = cptest_db_query1(db, "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM ("
                                        "SELECT p::text AS x FROM peers p WHERE account_id <> $1 UNION ALL "
                                        "SELECT e::text FROM events e WHERE account_id <> $1 UNION ALL "
                                        "SELECT u::text FROM users u WHERE account_id <> $1 UNION ALL "
                                        "SELECT a::text FROM accounts a WHERE id <> $1) q", t.account_id);
        ASSERT_OK(cp_store_account_delete_all(s, t.account_id, &del, &err), &err);
        ASSERT_EQ(2, del.peers);
        ASSERT_TRUE(del.serial > 0);
        ASSERT_DB_QUERY(before, db, "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM ("
                        "SELECT p::text AS x FROM peers p WHERE account_id <> $1 UNION ALL "
                        "SELECT e::text FROM events e WHERE account_id <> $1 UNION ALL "
                        "SELECT u::text FROM users u WHERE account_id <> $1 UNION ALL "
                        "SELECT a::text FROM accounts a WHERE id <> $1) q", t.account_id);
        free(before);
        ASSERT_DB_QUERY("0", db, "SELECT (SELECT count(*) FROM peers WHERE account_id = $1) +"
                        " (SELECT count(*) FROM events WHERE account_id = $1) +"
                        " (SELECT count(*) FROM msp_tenants WHERE account_id = $1) +"
                        " (SELECT count(*) FROM accounts WHERE id = $1)", t.account_id);
        ASSERT_EQ(-ENOENT, cp_store_account_delete_all(s, t.account_id, &del, &err));
        cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
