/* SSO peers (cp/store-sso.h, and cp_store_peer_register with a user)
 * against a real PostgreSQL: the one-time JWT claim, SSO registration,
 * the JWT login of a known peer, ExtendAuthSession and the inactivity
 * expiration of the sweep. */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"
#include "cp/store-peers.h"
#include "cp/store-sso.h"
#include "cptest.h"
#include "testdb.h"

static void wg_key(char out[45]) {
        uint8_t raw[32];
        cp_random_bytes(raw, sizeof raw);
        cp_crypto_b64_encode(raw, sizeof raw, out, 45);
}

typedef struct fixture {
        cp_store *s;
        cptest_db *db;
        cp_store_account_created a;
} fixture;

static void fixture_init(fixture *f) {
        cp_store_account_spec spec = { .name = "admin" };
        cp_error err = { 0 };

        f->db = cptest_db_new_migrated(2, &f->s);
        ASSERT_OK(cp_store_account_create(f->s, &spec, &f->a, &err), &err);
}

static void fixture_done(fixture *f) {
        cp_store_free(f->s);
        cptest_db_free(f->db);
}

/* Registers an SSO peer of user (wg gets its key). */
static int sso_reg(fixture *f, const char *user, const char *hostname, char wg[45], cp_store_peer **ret,
                   int64_t *serial, size_t n_labels, cp_error *err) {
        static const char *const labels[] = { "extra.example" };
        cp_store_peer_meta meta = { .hostname = hostname, .go_os = "linux", .wt_version = "0.60.0" };
        cp_store_peer_register_req req = {
                .wg_pub_key = wg, .meta = &meta, .dns_domain = "netbird.cloud", .user_id = user,
                .setup_key = "ignored-for-sso", .extra_dns_labels = labels, .n_extra_dns_labels = n_labels,
        };
        wg_key(wg);
        return cp_store_peer_register(f->s, &req, ret, serial, err);
}

static int64_t serial_of(fixture *f) {
        char *v = cptest_db_query2(f->db, "SELECT network_serial FROM accounts WHERE id = $1", f->a.account_id, NULL);
        int64_t n = strtoll(v, NULL, 10);
        free(v);
        return n;
}

static const char HASH_A[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char HASH_B[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

TEST(jwt_claim_is_one_time_and_bounded_by_exp) {
        fixture f;
        cp_error err = { 0 };
        int64_t now = cp_now_unix_ns() / 1000000000, deleted = -1;

        fixture_init(&f);
        ASSERT_OK(cp_store_jwt_claim(f.s, HASH_A, now + 600, &err), &err);
        ASSERT_EQ(-EALREADY, cp_store_jwt_claim(f.s, HASH_A, now + 600, &err));
        ASSERT_STREQ("JWT already used", err.message);
        /* exp in the past: nothing is claimed, the answer says why. */
        ASSERT_EQ(-EKEYEXPIRED, cp_store_jwt_claim(f.s, HASH_B, now - 5, &err));
        ASSERT_STREQ("JWT expired", err.message);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM jwt_claims", NULL, NULL);
        ASSERT_EQ(-EINVAL, cp_store_jwt_claim(f.s, "XYZ", now + 600, &err));
        ASSERT_EQ(-EINVAL, cp_store_jwt_claim(f.s, HASH_B, 0, &err));
        /* The sweep's clean-up drops claims of expired tokens only. */
        free(cptest_db_query2(f.db, "INSERT INTO jwt_claims (token_hash, expires_at) VALUES ($1, now() - interval '1 minute')",
               HASH_B, NULL));
        ASSERT_OK(cp_store_jwt_claims_gc(f.s, &deleted, &err), &err);
        ASSERT_EQ(1, deleted);
        ASSERT_DB_QUERY2("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", f.db,
                     "SELECT string_agg(token_hash, ',') FROM jwt_claims", NULL, NULL);
        fixture_done(&f);
}

TEST(sso_registration_takes_the_users_groups_and_expires) {
        fixture f;
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        char wg[45], gid[CP_ID_LEN + 1];
        int64_t serial = 0, before;

        fixture_init(&f);
        cp_id_new(gid);
        free(cptest_db_query2(f.db, "INSERT INTO groups (id, account_id, name) VALUES ($1, $2, 'devs')", gid, f.a.account_id));
        free(cptest_db_query2(f.db, "UPDATE users SET auto_groups = ARRAY[$1, 'gone'] WHERE id = $2", gid, f.a.user_id));
        before = serial_of(&f);
        ASSERT_OK(sso_reg(&f, f.a.user_id, "laptop", wg, &p, &serial, 0, &err), &err);
        ASSERT_STREQ(f.a.user_id, p->user_id);
        ASSERT_TRUE(p->login_expiration_enabled);
        ASSERT_TRUE(p->inactivity_expiration_enabled);
        ASSERT_FALSE(p->ephemeral);
        ASSERT_EQ(2, (int) p->n_group_ids);     /* All and devs */
        ASSERT_EQ(before + 1, serial);
        ASSERT_TRUE(p->last_login_unix_ns > 0);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM group_peers WHERE group_id = $1 AND peer_id = $2", gid, p->id);
        char *initiator = cptest_db_query2(f.db, "SELECT initiator_id || '|' || (meta ? 'setup_key_name')::text FROM events"
                                  " WHERE activity = 0 AND target_id = $1", p->id, NULL);
        char want[100];
        (void) snprintf(want, sizeof want, "%s|false", f.a.user_id);
        ASSERT_STREQ(want, initiator);
        free(initiator);
        ASSERT_DB_QUERY2("t", f.db, "SELECT last_login IS NOT NULL FROM users WHERE id = $1", f.a.user_id, NULL);
        /* The setup key was not used. */
        ASSERT_DB_QUERY2("0", f.db, "SELECT used_times FROM setup_keys WHERE account_id = $1", f.a.account_id, NULL);
        cp_store_peer_free(p);
        p = NULL;

        /* Refusals write nothing. */
        before = serial_of(&f);
        ASSERT_EQ(-ENOENT, sso_reg(&f, "no-such-user", "x1", wg, &p, NULL, 0, &err));
        ASSERT_STREQ("failed adding new peer: user not found", err.message);
        free(cptest_db_query2(f.db, "UPDATE users SET pending_approval = true WHERE id = $1", f.a.user_id, NULL));
        ASSERT_EQ(-EACCES, sso_reg(&f, f.a.user_id, "x2", wg, &p, NULL, 0, &err));
        ASSERT_STREQ("user pending approval cannot add peers", err.message);
        free(cptest_db_query2(f.db, "UPDATE users SET pending_approval = false WHERE id = $1", f.a.user_id, NULL));
        ASSERT_EQ(-EPERM, sso_reg(&f, f.a.user_id, "x3", wg, &p, NULL, 1, &err));
        ASSERT_TRUE(p == NULL);
        ASSERT_EQ(before, serial_of(&f));
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM peers", NULL, NULL);
        fixture_done(&f);
}

TEST(sso_login_renews_only_an_expired_login_of_the_owner) {
        fixture f;
        cp_store_peer *p = NULL;
        cp_store_sso_login sl;
        cp_error err = { 0 };
        char wg[45], id[64], other[CP_ID_LEN + 1];
        int64_t before;

        fixture_init(&f);
        ASSERT_OK(sso_reg(&f, f.a.user_id, "box", wg, &p, NULL, 0, &err), &err);
        (void) snprintf(id, sizeof id, "%s", p->id);
        cp_store_peer_free(p);

        /* Not expired: nothing changes (NetBird keeps last_login). */
        free(cptest_db_query2(f.db, "UPDATE peers SET last_login = now() - interval '1 hour' WHERE id = $1", id, NULL));
        char *old = cptest_db_query2(f.db, "SELECT last_login FROM peers WHERE id = $1", id, NULL);
        before = serial_of(&f);
        ASSERT_OK(cp_store_peer_sso_login(f.s, f.a.account_id, id, f.a.user_id, "netbird.cloud", &sl, &err), &err);
        ASSERT_FALSE(sl.refreshed);
        ASSERT_DB_QUERY2(old, f.db, "SELECT last_login FROM peers WHERE id = $1", id, NULL);
        free(old);
        ASSERT_EQ(before, serial_of(&f));

        /* Another user, a blocked owner: refused, nothing written. */
        cp_id_new(other);
        free(cptest_db_query2(f.db, "INSERT INTO users (id, account_id, role) VALUES ($1, $2, 'user')", other, f.a.account_id));
        ASSERT_EQ(-EACCES, cp_store_peer_sso_login(f.s, f.a.account_id, id, other, NULL, &sl, &err));
        ASSERT_STREQ("peer is already registered by a different User or a Setup Key", err.message);
        free(cptest_db_query2(f.db, "UPDATE users SET blocked = true WHERE id = $1", f.a.user_id, NULL));
        free(cptest_db_query2(f.db, "UPDATE peers SET peer_status_login_expired = true WHERE id = $1", id, NULL));
        ASSERT_EQ(-EPERM, cp_store_peer_sso_login(f.s, f.a.account_id, id, f.a.user_id, NULL, &sl, &err));
        ASSERT_STREQ("user is blocked", err.message);
        /* The Login/Sync lookup says so too. */
        cp_store_account_settings st;
        ASSERT_OK(cp_store_peer_lookup(f.s, wg, &p, &st, NULL, &err), &err);
        ASSERT_TRUE(p->owner_blocked);
        p = cp_store_peer_free(p);
        ASSERT_DB_QUERY2("t", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", id, NULL);
        free(cptest_db_query2(f.db, "UPDATE users SET blocked = false WHERE id = $1", f.a.user_id, NULL));

        /* Expired (marked): renewed, event 49, one bump. */
        ASSERT_OK(cp_store_peer_sso_login(f.s, f.a.account_id, id, f.a.user_id, "netbird.cloud", &sl, &err), &err);
        ASSERT_TRUE(sl.refreshed);
        ASSERT_EQ(before + 1, sl.serial);
        ASSERT_TRUE(sl.last_login_unix_ns > cp_now_unix_ns() - 60 * INT64_C(1000000000));
        ASSERT_DB_QUERY2("f", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", id, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM events WHERE activity = 49 AND target_id = $1", id, NULL);
        /* Expired by its deadline (25 h with the default 24 h). */
        free(cptest_db_query2(f.db, "UPDATE peers SET last_login = now() - interval '25 hours' WHERE id = $1", id, NULL));
        ASSERT_OK(cp_store_peer_sso_login(f.s, f.a.account_id, id, f.a.user_id, NULL, &sl, &err), &err);
        ASSERT_TRUE(sl.refreshed);

        /* A setup-key peer cannot log in with a JWT. */
        cp_store_peer_meta meta = { .hostname = "keyed" };
        cp_store_peer_register_req req = { .setup_key = f.a.setup_key, .wg_pub_key = wg, .meta = &meta };
        wg_key(wg);
        ASSERT_OK(cp_store_peer_register(f.s, &req, &p, NULL, &err), &err);
        ASSERT_EQ(-EACCES, cp_store_peer_sso_login(f.s, f.a.account_id, p->id, f.a.user_id, NULL, &sl, &err));
        ASSERT_EQ(-ENOENT, cp_store_peer_sso_login(f.s, "no-such-account", p->id, f.a.user_id, NULL, &sl, &err));
        cp_store_peer_free(p);
        fixture_done(&f);
}

TEST(extend_session_moves_the_deadline_in_one_statement) {
        fixture f;
        cp_store_peer *p = NULL, *k = NULL;
        cp_store_extend ex;
        cp_error err = { 0 };
        char wg[45], kwg[45], other[CP_ID_LEN + 1];

        fixture_init(&f);
        ASSERT_OK(sso_reg(&f, f.a.user_id, "box", wg, &p, NULL, 0, &err), &err);
        free(cptest_db_query2(f.db, "UPDATE peers SET last_login = now() - interval '5 hours', peer_status_login_expired = true"
                     " WHERE id = $1", p->id, NULL));
        int64_t before = serial_of(&f);
        ASSERT_OK(cp_store_peer_extend_session(f.s, wg, f.a.user_id, "netbird.cloud", &ex, &err), &err);
        ASSERT_EQ(CP_STORE_EXTEND_OK, ex.outcome);
        ASSERT_STREQ(p->id, ex.peer_id);
        ASSERT_STREQ(f.a.account_id, ex.account_id);
        ASSERT_EQ(ex.last_login_unix_ns + 24 * 3600 * INT64_C(1000000000), ex.deadline_unix_ns);
        ASSERT_TRUE(ex.last_login_unix_ns > cp_now_unix_ns() - 60 * INT64_C(1000000000));
        ASSERT_DB_QUERY2("f", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("t", f.db, "SELECT p.last_login = u.last_login FROM peers p JOIN users u ON u.id = p.user_id"
                                " WHERE p.id = $1", p->id, NULL);
        char *ev = cptest_db_query2(f.db, "SELECT initiator_id || '|' || (meta->>'fqdn') FROM events WHERE activity = 125"
                           " AND target_id = $1", p->id, NULL);
        char want[100];
        (void) snprintf(want, sizeof want, "%s|box.netbird.cloud", f.a.user_id);
        ASSERT_STREQ(want, ev);
        free(ev);
        ASSERT_EQ(before, serial_of(&f));       /* no map changes */

        /* Another user's JWT. */
        cp_id_new(other);
        free(cptest_db_query2(f.db, "INSERT INTO users (id, account_id, role) VALUES ($1, $2, 'user')", other, f.a.account_id));
        ASSERT_OK(cp_store_peer_extend_session(f.s, wg, other, NULL, &ex, &err), &err);
        ASSERT_EQ(CP_STORE_EXTEND_NOT_OWNER, ex.outcome);
        /* The peer's own expiration off; then a setup-key peer. */
        free(cptest_db_query2(f.db, "UPDATE peers SET login_expiration_enabled = false WHERE id = $1", p->id, NULL));
        ASSERT_OK(cp_store_peer_extend_session(f.s, wg, f.a.user_id, NULL, &ex, &err), &err);
        ASSERT_EQ(CP_STORE_EXTEND_NOT_ELIGIBLE, ex.outcome);
        cp_store_peer_meta meta = { .hostname = "keyed" };
        cp_store_peer_register_req req = { .setup_key = f.a.setup_key, .wg_pub_key = kwg, .meta = &meta };
        wg_key(kwg);
        ASSERT_OK(cp_store_peer_register(f.s, &req, &k, NULL, &err), &err);
        ASSERT_OK(cp_store_peer_extend_session(f.s, kwg, f.a.user_id, NULL, &ex, &err), &err);
        ASSERT_EQ(CP_STORE_EXTEND_NOT_ELIGIBLE, ex.outcome);
        /* The account's expiration off wins over everything. */
        free(cptest_db_query2(f.db, "UPDATE accounts SET settings_peer_login_expiration_enabled = false WHERE id = $1",
               f.a.account_id, NULL));
        ASSERT_OK(cp_store_peer_extend_session(f.s, wg, other, NULL, &ex, &err), &err);
        ASSERT_EQ(CP_STORE_EXTEND_DISABLED, ex.outcome);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM events WHERE activity = 125", NULL, NULL);
        char nokey[45];
        wg_key(nokey);
        ASSERT_EQ(-ENOENT, cp_store_peer_extend_session(f.s, nokey, f.a.user_id, NULL, &ex, &err));
        cp_store_peer_free(p);
        cp_store_peer_free(k);
        fixture_done(&f);
}

TEST(sweep_expires_inactive_disconnected_sso_peers) {
        fixture f;
        cp_store_peer *p = NULL, *c = NULL;
        cp_store_expired_account *acc = NULL;
        cp_store_expired_peer *peers = NULL;
        size_t n = 0, n_peers = 0;
        cp_error err = { 0 };
        char wg[45], wg2[45];

        fixture_init(&f);
        ASSERT_OK(sso_reg(&f, f.a.user_id, "idle", wg, &p, NULL, 0, &err), &err);
        ASSERT_OK(sso_reg(&f, f.a.user_id, "online", wg2, &c, NULL, 0, &err), &err);
        free(cptest_db_query2(f.db, "UPDATE peers SET peer_status_last_seen = now() - interval '20 minutes' WHERE account_id = $1",
               f.a.account_id, NULL));
        free(cptest_db_query2(f.db, "UPDATE peers SET peer_status_connected = true WHERE id = $1", c->id, NULL));
        /* Inactivity expiration off for the account: nothing. */
        ASSERT_OK(cp_store_expire_logins(f.s, NULL, &acc, &n, &peers, &n_peers, &err), &err);
        ASSERT_EQ(0, (int) n_peers);
        free(cptest_db_query2(f.db, "UPDATE accounts SET settings_peer_inactivity_expiration_enabled = true,"
                     " settings_peer_inactivity_expiration = 600000000000 WHERE id = $1", f.a.account_id, NULL));
        ASSERT_OK(cp_store_expire_logins(f.s, NULL, &acc, &n, &peers, &n_peers, &err), &err);
        ASSERT_EQ(1, (int) n_peers);
        ASSERT_STREQ(p->id, peers[0].peer_id);
        free(acc);
        free(peers);
        char want[100];
        (void) snprintf(want, sizeof want, "%s|inactivity timeout", f.a.user_id);
        ASSERT_DB_QUERY2(want, f.db, "SELECT initiator_id || '|' || (meta->>'reason') FROM events WHERE activity = 50"
                                 " AND target_id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("f", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", c->id, NULL);
        cp_store_peer_free(p);
        cp_store_peer_free(c);
        fixture_done(&f);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
