/*
 * The Sync open in one round trip (cp_store_peer_open) against a real
 * PostgreSQL: one fenced UPDATE by key that lands only where the lookup
 * path would have let the open go on with a plain connect, takes a token
 * above the stored one, and writes nothing at all otherwise. Also: no index
 * of peers reads a column the connect writes (so every connect can be a
 * HOT update; migration 0014), and PostgreSQL counts them as HOT.
 */
#include "cp/base.h"
#include "cp/store.h"
#include "cp/store-peers.h"
#include "cp/util.h"
#include "cptest.h"
#include "testdb.h"

#define SEC 1000000000LL

typedef struct fixture {
        cptest_db *db;
        cp_store *store;
        cp_store_account_created acct;
        char peer_id[CP_ID_LEN + 1];
        char key[64];
} fixture;

/* A migrated database with one account and one never-connected peer. */
static void fixture_init(fixture *f) {
        cp_store_account_spec spec = { .name = "open" };
        cp_error err = { 0 };

        f->db = cptest_db_new_migrated(2, &f->store);
        cp_store_set_replica_id(f->store, "replica-open");
        ASSERT_OK(cp_store_account_create(f->store, &spec, &f->acct, &err), &err);
        cp_id_new(f->peer_id);
        (void) snprintf(f->key, sizeof f->key, "key-%s", f->peer_id);
        const char *p[3] = { f->peer_id, f->acct.account_id, f->key };
        free(cptest_db_query(f->db,
                "INSERT INTO peers (id, account_id, key, ip, dns_label, meta_wt_version, meta_hostname)"
                " VALUES ($1, $2, $3, '100.64.0.1', 'p1', '0.30.0', 'before')", 3, p));
}

static void fixture_release(fixture *f) {
        f->store = cp_store_free(f->store);
        f->db = cptest_db_free(f->db);
}

static cp_store_peer_status status(fixture *f) {
        cp_store_peer_status st;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_peer_get_status(f->store, f->acct.account_id, f->peer_id, &st, &err), &err);
        return st;
}

static int open_(fixture *f, const cp_store_peer_meta *meta, int64_t now_ns, cp_store_peer_opened *o) {
        cp_store_peer_open_req req = { .wg_pub_key = f->key, .meta = meta, .connection_ip = "198.51.100.7",
                                       .now_unix_ns = now_ns };
        cp_error err = { 0 };
        int r = cp_store_peer_open(f->store, &req, o, &err);

        ASSERT_OK(r, &err);
        return r;
}

/* The row as a string of what an open writes, to see that it did not. */
static char *row(fixture *f) {
        return cptest_db_query1(f->db,
                "SELECT concat_ws('|', peer_status_connected, peer_status_session_started_at,"
                " peer_status_last_seen, peer_status_replica_id, meta_hostname,"
                " location_connection_ip) FROM peers WHERE id = $1", f->peer_id);
}

static void assert_refused(fixture *f, const cp_store_peer_meta *meta, int64_t now_ns) {
        cp_store_peer_opened o = { 0 };
        char *before = row(f);

        ASSERT_EQ(0, open_(f, meta, now_ns, &o));
        char *after = row(f);
        ASSERT_STREQ(before, after);
        free(before);
        free(after);
}

TEST(open_lands_with_a_token_and_the_disconnect_ends_it) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_error err = { 0 };

        fixture_init(&f);
        int64_t t0 = cp_now_unix_ns();
        ASSERT_EQ(1, open_(&f, NULL, t0, &o));
        ASSERT_STREQ(f.peer_id, o.peer_id);
        ASSERT_STREQ(f.acct.account_id, o.account_id);
        ASSERT_TRUE(o.token > 0);
        cp_store_peer_status st = status(&f);
        ASSERT_TRUE(st.connected);
        ASSERT_FALSE(st.login_expired);
        ASSERT_EQ(o.token, st.session_started_at);
        ASSERT_STREQ("replica-open", st.replica_id);
        ASSERT_TRUE(st.last_seen_unix_ns > 0);
        ASSERT_DB_QUERY("198.51.100.7", f.db, "SELECT host(location_connection_ip) FROM peers WHERE id = $1",
                        f.peer_id);
        /* Without meta the stored meta stays. */
        ASSERT_DB_QUERY("before", f.db, "SELECT meta_hostname FROM peers WHERE id = $1", f.peer_id);
        /* The serial is the account's, not moved. */
        char serial[24];
        (void) snprintf(serial, sizeof serial, "%" PRId64, o.network_serial);
        ASSERT_DB_QUERY2("t", f.db, "SELECT network_serial = $2::bigint FROM accounts WHERE id = $1",
                         f.acct.account_id, serial);

        /* The same fence as every connect: a stale token does not land,
         * the open's token ends the session. */
        ASSERT_EQ(0, cp_store_peer_mark_connected(f.store, f.acct.account_id, f.peer_id, o.token, &err));
        ASSERT_EQ(0, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, o.token - 1, &err));
        ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, o.token, &err));
        st = status(&f);
        ASSERT_FALSE(st.connected);
        ASSERT_EQ(0, st.session_started_at);
        ASSERT_STREQ("", st.replica_id);
        fixture_release(&f);
}

TEST(open_takes_a_token_above_a_stored_one_from_the_future) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_error err = { 0 };

        fixture_init(&f);
        /* A replica whose clock ran ahead stored a later token. */
        int64_t ahead = cp_now_unix_ns() + 3600 * SEC;
        ASSERT_EQ(1, cp_store_peer_mark_connected(f.store, f.acct.account_id, f.peer_id, ahead, &err));
        ASSERT_EQ(1, open_(&f, NULL, cp_now_unix_ns(), &o));
        ASSERT_EQ(ahead + 1, o.token);
        ASSERT_EQ(ahead + 1, status(&f).session_started_at);
        /* The old session's disconnect is fenced off. */
        ASSERT_EQ(0, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, ahead, &err));
        ASSERT_TRUE(status(&f).connected);
        fixture_release(&f);
}

TEST(open_never_beats_the_top_token) {
        fixture f;
        cp_error err = { 0 };

        fixture_init(&f);
        ASSERT_EQ(1, cp_store_peer_mark_connected(f.store, f.acct.account_id, f.peer_id, INT64_MAX, &err));
        assert_refused(&f, NULL, cp_now_unix_ns());
        ASSERT_EQ(INT64_MAX, status(&f).session_started_at);
        fixture_release(&f);
}

TEST(open_writes_nothing_for_an_unknown_key) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_store_peer_open_req req = { .wg_pub_key = "no-such-key", .now_unix_ns = cp_now_unix_ns() };
        cp_error err = { 0 };

        fixture_init(&f);
        ASSERT_EQ(0, cp_store_peer_open(f.store, &req, &o, &err));
        ASSERT_FALSE(status(&f).connected);
        req.wg_pub_key = "";
        ASSERT_EQ(-EINVAL, cp_store_peer_open(f.store, &req, &o, &err));
        req.wg_pub_key = f.key;
        req.connection_ip = "not an address";
        ASSERT_EQ(-EINVAL, cp_store_peer_open(f.store, &req, &o, &err));
        ASSERT_FALSE(status(&f).connected);
        fixture_release(&f);
}

TEST(open_leaves_suspended_accounts_and_expired_logins_to_the_lookup) {
        fixture f;

        fixture_init(&f);
        free(cptest_db_query1(f.db, "UPDATE accounts SET suspended_at = now() WHERE id = $1", f.acct.account_id));
        assert_refused(&f, NULL, cp_now_unix_ns());
        free(cptest_db_query1(f.db, "UPDATE accounts SET suspended_at = NULL WHERE id = $1", f.acct.account_id));

        free(cptest_db_query1(f.db, "UPDATE peers SET peer_status_login_expired = true WHERE id = $1", f.peer_id));
        assert_refused(&f, NULL, cp_now_unix_ns());
        ASSERT_TRUE(status(&f).login_expired);
        free(cptest_db_query1(f.db, "UPDATE peers SET peer_status_login_expired = false WHERE id = $1",
                              f.peer_id));

        /* An SSO peer: its login ran out 1 h ago by the caller's clock
         * (24 h expiration, last login 25 h ago). */
        free(cptest_db_query2(f.db,
                "UPDATE peers SET user_id = $2, login_expiration_enabled = true,"
                " last_login = now() - interval '25 hours' WHERE id = $1", f.peer_id, f.acct.user_id));
        free(cptest_db_query1(f.db,
                "UPDATE accounts SET settings_peer_login_expiration_enabled = true,"
                " settings_peer_login_expiration = 24 * 3600 * 1000000000::bigint WHERE id = $1",
                f.acct.account_id));
        assert_refused(&f, NULL, cp_now_unix_ns());
        /* ... and not yet by a clock 2 h earlier. */
        cp_store_peer_opened o = { 0 };
        ASSERT_EQ(1, open_(&f, NULL, cp_now_unix_ns() - 2 * 3600 * SEC, &o));
        cp_error err = { 0 };
        ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, o.token, &err));

        /* Its owner blocked. */
        free(cptest_db_query1(f.db, "UPDATE peers SET last_login = now() WHERE id = $1", f.peer_id));
        free(cptest_db_query1(f.db, "UPDATE users SET blocked = true WHERE id = $1", f.acct.user_id));
        assert_refused(&f, NULL, cp_now_unix_ns());
        free(cptest_db_query1(f.db, "UPDATE users SET blocked = false WHERE id = $1", f.acct.user_id));
        ASSERT_EQ(1, open_(&f, NULL, cp_now_unix_ns(), &o));
        fixture_release(&f);
}

TEST(open_writes_meta_only_with_the_stored_version) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_store_peer_meta meta = { .hostname = "after", .wt_version = "0.31.0" };

        fixture_init(&f);
        /* A new version bumps the serial: the lookup path's statement. */
        assert_refused(&f, &meta, cp_now_unix_ns());
        meta.wt_version = "0.30.0";
        ASSERT_EQ(1, open_(&f, &meta, cp_now_unix_ns(), &o));
        ASSERT_DB_QUERY("after", f.db, "SELECT meta_hostname FROM peers WHERE id = $1", f.peer_id);
        fixture_release(&f);
}

TEST(open_leaves_posture_input_changes_to_the_lookup) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_store_peer_meta meta = { .hostname = "h", .wt_version = "0.30.0", .os = "linux" };

        fixture_init(&f);
        free(cptest_db_query1(f.db,
                "INSERT INTO posture_checks (id, account_id, name) VALUES ('pc1', $1, 'pc')", f.acct.account_id));
        /* The os and the connection address change: a posture input. */
        assert_refused(&f, &meta, cp_now_unix_ns());
        free(cptest_db_query1(f.db,
                "UPDATE peers SET meta_os = 'linux', location_connection_ip = '198.51.100.7' WHERE id = $1",
                f.peer_id));
        ASSERT_EQ(1, open_(&f, &meta, cp_now_unix_ns(), &o));
        fixture_release(&f);
}

TEST(no_index_of_peers_reads_a_column_the_connect_writes) {
        fixture f;

        fixture_init(&f);
        /* Each would make every connect and disconnect a non-HOT update
         * with an entry in every index of peers (migration 0014). */
        ASSERT_DB_QUERY2("", f.db,
                "SELECT coalesce(string_agg(indexrelid::regclass::text, ',' ORDER BY 1), '') FROM pg_index"
                " WHERE indrelid = 'peers'::regclass AND pg_get_indexdef(indexrelid) ~ $1",
                "(peer_status_|location_|meta_)", NULL);
        fixture_release(&f);
}

TEST(connects_and_disconnects_are_hot_updates) {
        fixture f;
        cp_store_peer_opened o = { 0 };
        cp_error err = { 0 };

        fixture_init(&f);
        for (int i = 0; i < 10; i++) {
                ASSERT_EQ(1, open_(&f, NULL, cp_now_unix_ns(), &o));
                ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, o.token, &err));
                ASSERT_EQ(1, cp_store_peer_mark_connected(f.store, f.acct.account_id, f.peer_id, o.token + 1, &err));
                ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.store, f.acct.account_id, f.peer_id, o.token + 1,
                                                             &err));
        }
        /* The store's backends report their counters when they exit. */
        f.store = cp_store_free(f.store);
        char *v = NULL;
        for (int i = 0; i < 100; i++) {
                free(v);
                v = cptest_db_query(f.db,
                        "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables"
                        " WHERE relname = 'peers' AND n_tup_upd >= 40", 0, NULL);
                if (v && *v)
                        break;
                usleep(100 * 1000);
        }
        /* HOT needs room on the row's page, which PostgreSQL does not
         * promise for every update (a page not yet pruned): most, not
         * all. Before 0014 none was (an index read peer_status_*). */
        long upd = 0, hot = 0;
        ASSERT_TRUE(v && sscanf(v, "%ld %ld", &upd, &hot) == 2);
        ASSERT_EQ(40, upd);
        ASSERT_TRUE(hot >= 30);
        free(v);
        fixture_release(&f);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
