/* JWT user provisioning (cp/identity.h) on a real database: NetBird's
 * single- and multi-account rules, concurrent first sign-ins, JWT groups,
 * the sign-in time and its events. Claims are built by hand: validation
 * itself is cp/jwt.h's business. */
#include "cp/log.h"
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/identity.h"
#include "cp/store-tx.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <time.h>

static const cp_identity_options SINGLE = { .single_account_domain = "netbird.selfhosted" };
static const cp_identity_options MULTI = { .single_account_domain = NULL };

/* Claims as cp_jwt_validate() would hand them out. */
static cp_jwt_claims *claims(const char *sub, const char *email, const char *domain, const char *category,
                             const char *account_id) {
        cp_jwt_claims *c = cp_xcalloc(1, sizeof *c);

        c->user_id = cp_xstrdup(sub);
        c->email = cp_xstrdup(email ? email : "");
        c->name = cp_xstrdup(email ? email : "");
        c->account_id = cp_xstrdup(account_id ? account_id : "");
        c->domain = cp_xstrdup(domain ? domain : "");
        c->domain_category = cp_xstrdup(category ? category : "");
        c->iat = (int64_t) time(NULL);
        c->payload = json_pack("{s:s}", "sub", sub);
        return c;
}

/* One resolve in its own transaction, committed when it succeeds. */
static int resolve(cp_store *s, const cp_identity_options *o, cp_jwt_claims *c, cp_identity_user *u,
                   cp_error *err) {
        cp_store_tx *tx = NULL;
        int r = cp_store_tx_begin(s, &tx, err);

        if (r < 0)
                return r;
        r = cp_identity_resolve(tx, o, c, CP_IDENTITY_LOGIN, u, err);
        if (r < 0) {
                cp_store_tx_end(tx);
                return r;
        }
        return cp_store_tx_commit(tx, err);
}

TEST(single_account_first_user_owns_the_new_account) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_identity_user u1, u2;
        cp_error err = { 0 };
        cp_jwt_claims *a = claims("idp|alice", "alice@corp.example", "corp.example", "", NULL);
        cp_jwt_claims *b = claims("idp|bob", "bob@other.example", "other.example", "public", NULL);

        ASSERT_OK(resolve(s, &SINGLE, a, &u1, &err), &err);
        ASSERT_TRUE(u1.new_account && u1.new_user);
        ASSERT_STREQ("owner", u1.role);
        ASSERT_TRUE(!u1.blocked && !u1.pending_approval);
        ASSERT_DB_QUERY("netbird.selfhosted|private|true|true", db,
                     "SELECT domain || '|' || domain_category || '|' || is_domain_primary_account || '|'"
                     " || settings_extra_user_approval_required FROM accounts WHERE id = $1", u1.account_id);
        ASSERT_DB_QUERY("alice@corp.example|false|api", db,
                     "SELECT email || '|' || non_deletable || '|' || issued FROM users WHERE id = $1", "idp|alice");
        /* NetBird's newAccount: no setup key, no token; account.create, user.join. */
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM setup_keys WHERE account_id = $1", u1.account_id);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM personal_access_tokens WHERE account_id = $1", u1.account_id);
        ASSERT_DB_QUERY("All", db, "SELECT string_agg(name, ',') FROM groups WHERE account_id = $1", u1.account_id);
        ASSERT_DB_QUERY("4,2", db, "SELECT string_agg(activity::text, ',' ORDER BY id) FROM events WHERE account_id = $1",
                     u1.account_id);
        ASSERT_DB_QUERY("t", db, "SELECT last_login IS NOT NULL FROM users WHERE id = $1", "idp|alice");

        /* The second user joins the same account whatever its domain
         * claims say, pending approval (new accounts require it). */
        ASSERT_OK(resolve(s, &SINGLE, b, &u2, &err), &err);
        ASSERT_STREQ(u1.account_id, u2.account_id);
        ASSERT_TRUE(u2.new_user && !u2.new_account);
        ASSERT_STREQ("user", u2.role);
        ASSERT_TRUE(u2.blocked && u2.pending_approval);
        ASSERT_DB_QUERY("{\"pending_approval\": true}", db,
                     "SELECT meta::text FROM events WHERE activity = 2 AND target_id = $1", "idp|bob");
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM accounts", NULL);

        /* Signing in again changes nothing. */
        ASSERT_OK(resolve(s, &SINGLE, a, &u1, &err), &err);
        ASSERT_TRUE(!u1.new_user && !u1.new_account && u1.serial == 0);
        ASSERT_DB_QUERY("2", db, "SELECT count(*) FROM users", NULL);
        cp_jwt_claims_free(a);
        cp_jwt_claims_free(b);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(single_account_joins_the_account_the_cli_made) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_store_account_spec spec = { .name = "admin" };
        cp_store_account_created acc;
        cp_identity_user u;
        cp_error err = { 0 };
        cp_jwt_claims *a = claims("idp|carol", "carol@x.example", NULL, NULL, NULL);

        ASSERT_OK(cp_store_account_create(s, &spec, &acc, &err), &err);
        ASSERT_OK(resolve(s, &SINGLE, a, &u, &err), &err);
        ASSERT_STREQ(acc.account_id, u.account_id);
        ASSERT_STREQ("user", u.role);
        ASSERT_TRUE(u.new_user && !u.new_account && !u.pending_approval && !u.blocked);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM accounts", NULL);
        cp_jwt_claims_free(a);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(multi_account_domains_and_claims) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(2, &s);
        cp_identity_user a1, a2, b1, p1, p2, x;
        cp_error err = { 0 };
        cp_jwt_claims *ca1 = claims("u-a1", "a1@one.example", "one.example", "private", NULL);
        cp_jwt_claims *ca2 = claims("u-a2", "a2@one.example", "one.example", "private", NULL);
        cp_jwt_claims *cb1 = claims("u-b1", "b1@two.example", "two.example", "private", NULL);
        cp_jwt_claims *cp1 = claims("u-p1", "p1@gmail.com", "gmail.com", "public", NULL);
        cp_jwt_claims *cp2 = claims("u-p2", "p2@gmail.com", "gmail.com", "public", NULL);

        ASSERT_OK(resolve(s, &MULTI, ca1, &a1, &err), &err);
        ASSERT_OK(resolve(s, &MULTI, cb1, &b1, &err), &err);
        ASSERT_TRUE(strcmp(a1.account_id, b1.account_id) != 0);
        ASSERT_STREQ("owner", a1.role);
        ASSERT_STREQ("owner", b1.role);
        /* Same private domain: joins the primary account as a user. */
        ASSERT_OK(resolve(s, &MULTI, ca2, &a2, &err), &err);
        ASSERT_STREQ(a1.account_id, a2.account_id);
        ASSERT_STREQ("user", a2.role);
        /* A public domain: everyone gets an account of their own. */
        ASSERT_OK(resolve(s, &MULTI, cp1, &p1, &err), &err);
        ASSERT_OK(resolve(s, &MULTI, cp2, &p2, &err), &err);
        ASSERT_TRUE(strcmp(p1.account_id, p2.account_id) != 0);
        ASSERT_STREQ("owner", p2.role);
        ASSERT_DB_QUERY("gmail.com||false", db,
                     "SELECT domain || '|' || domain_category || '|' || is_domain_primary_account FROM accounts"
                     " WHERE id = $1", p1.account_id);
        ASSERT_DB_QUERY("4", db, "SELECT count(*) FROM accounts", NULL);

        /* wt_account_id: the user's own account passes, another is refused. */
        cp_jwt_claims *own = claims("u-a1", "a1@one.example", "one.example", "private", a1.account_id);
        cp_jwt_claims *other = claims("u-a1", "a1@one.example", "one.example", "private", b1.account_id);
        cp_jwt_claims *stranger = claims("u-new", "n@one.example", "one.example", "private", a1.account_id);
        ASSERT_OK(resolve(s, &MULTI, own, &x, &err), &err);
        ASSERT_STREQ(a1.account_id, x.account_id);
        ASSERT_EQ(-ENOENT, resolve(s, &MULTI, other, &x, &err));
        ASSERT_EQ(-ENOENT, resolve(s, &MULTI, stranger, &x, &err));
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM users WHERE id = $1", "u-new");

        cp_jwt_claims_free(ca1);
        cp_jwt_claims_free(ca2);
        cp_jwt_claims_free(cb1);
        cp_jwt_claims_free(cp1);
        cp_jwt_claims_free(cp2);
        cp_jwt_claims_free(own);
        cp_jwt_claims_free(other);
        cp_jwt_claims_free(stranger);
        cp_store_free(s);
        cptest_db_free(db);
}

#define RACERS 6

typedef struct racer {
        cp_store *s;
        char sub[32];
        int r;
        cp_identity_user u;
} racer;

static void *race(void *arg) {
        racer *ra = arg;
        cp_error err = { 0 };
        cp_jwt_claims *c = claims(ra->sub, NULL, NULL, NULL, NULL);

        ra->r = resolve(ra->s, &SINGLE, c, &ra->u, &err);
        cp_jwt_claims_free(c);
        return NULL;
}

TEST(concurrent_first_sign_ins_make_one_account) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(RACERS, &s);
        racer ra[RACERS];
        pthread_t th[RACERS];

        /* Half of them the same user (two replicas, one person), half others. */
        for (int i = 0; i < RACERS; i++) {
                ra[i] = (racer) { .s = s };
                (void) snprintf(ra[i].sub, sizeof ra[i].sub, "racer-%d", i % 2 ? i : 0);
                ASSERT_EQ(0, pthread_create(&th[i], NULL, race, &ra[i]));
        }
        for (int i = 0; i < RACERS; i++) {
                ASSERT_EQ(0, pthread_join(th[i], NULL));
                ASSERT_EQ(0, ra[i].r);
        }
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM accounts", NULL);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM users WHERE role = 'owner'", NULL);
        ASSERT_DB_QUERY("4", db, "SELECT count(*) FROM users", NULL);
        for (int i = 1; i < RACERS; i++)
                ASSERT_STREQ(ra[0].u.account_id, ra[i].u.account_id);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(dashboard_login_event_on_a_newer_sign_in) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_identity_user u;
        cp_error err = { 0 };
        cp_jwt_claims *c = claims("idp|dana", "dana@x.example", NULL, NULL, NULL);

        c->iat -= 100;
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM events WHERE activity = 51", NULL);
        /* The same token again: not a new sign-in. */
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM events WHERE activity = 51", NULL);
        c->iat += 50;
        free(c->name);
        c->name = cp_xstrdup("Dana D");
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 51", NULL);
        ASSERT_DB_QUERY("Dana D", db, "SELECT name FROM users WHERE id = $1", "idp|dana");
        char iat[24];
        (void) snprintf(iat, sizeof iat, "%lld", (long long) c->iat);
        ASSERT_DB_QUERY("t", db, "SELECT last_login = to_timestamp($1::bigint) FROM users", iat);
        cp_jwt_claims_free(c);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(a_name_that_does_not_open_is_never_written_back) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_identity_user u;
        cp_error err = { 0 };
        cp_jwt_claims *c = claims("idp|erin", "erin@x.example", NULL, NULL, NULL);
        uint8_t ka[32], kb[32];

        memset(ka, 0x5a, sizeof ka);
        memset(kb, 0x6b, sizeof kb);
        cp_pii_install(ka, NULL);
        c->iat -= 100;
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        char *before = cptest_db_query1(db, "SELECT name || '/' || email FROM users WHERE id = $1", "idp|erin");
        /* Another key only: the row does not open. Tokens without a name,
         * an older one and a newer one: the stored values stay. */
        cp_pii_install(kb, NULL);
        free(c->name);
        c->name = cp_xstrdup("");
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        c->iat += 50;
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_DB_QUERY(before, db, "SELECT name || '/' || email FROM users WHERE id = $1", "idp|erin");
        char iat[24];
        (void) snprintf(iat, sizeof iat, "%lld", (long long) c->iat);
        ASSERT_DB_QUERY("t", db, "SELECT last_login = to_timestamp($1::bigint) FROM users", iat);
        /* Back with the right key, they open as they were. */
        cp_pii_install(ka, NULL);
        char *email = NULL, *fp = cptest_db_query1(db, "SELECT pii_key FROM users WHERE id = $1", "idp|erin");
        char *stored = cptest_db_query1(db, "SELECT name FROM users WHERE id = $1", "idp|erin");
        ASSERT_OK(cp_pii_open_strict(fp, stored, &email, &err), &err);
        ASSERT_STREQ("erin@x.example", email);
        free(email);
        free(stored);
        free(fp);
        free(before);
        cp_pii_uninstall();
        cp_jwt_claims_free(c);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(jwt_groups_created_joined_left_and_allow_list) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_identity_user u;
        cp_error err = { 0 };
        cp_jwt_claims *c = claims("idp|erin", "erin@x.example", NULL, NULL, NULL);

        json_object_set_new(c->payload, "roles", json_pack("[s,s]", "devs", "ops"));

        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        char *acc = cptest_db_query1(db, "SELECT account_id FROM users WHERE id = $1", "idp|erin");
        const char *p2[2] = { acc, "ops" };
        char *v = cptest_db_query(db,
                                  "UPDATE accounts SET settings_jwt_groups_enabled = true,"
                                  " settings_jwt_groups_claim_name = 'roles', settings_jwt_allow_groups = '{ops}'"
                                  " WHERE id = $1 RETURNING id", 1, p2);
        free(v);
        /* An existing api group of the same name is not taken over. */
        const char *pg[1] = { acc };
        v = cptest_db_query(db, "INSERT INTO groups (id, account_id, name) VALUES ('g-api-ops', $1, 'ops')"
                                " RETURNING id", 1, pg);
        free(v);

        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_TRUE(u.serial > 0);
        char serial[24];
        (void) snprintf(serial, sizeof serial, "%" PRId64, u.serial);
        ASSERT_DB_QUERY(serial, db, "SELECT network_serial FROM accounts WHERE id = $1", acc);
        ASSERT_DB_QUERY("devs:jwt", db,
                     "SELECT string_agg(g.name || ':' || g.issued, ',') FROM users u, groups g"
                     " WHERE u.id = $1 AND g.id = ANY(u.auto_groups)", "idp|erin");
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 20", NULL);
        /* The same groups again: no change. */
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_TRUE(u.serial == 0);
        /* devs dropped from the claim: left. */
        json_object_set_new(c->payload, "roles", json_pack("[s]", "ops"));
        ASSERT_OK(resolve(s, &SINGLE, c, &u, &err), &err);
        ASSERT_TRUE(u.serial > 0);
        ASSERT_DB_QUERY("{}", db, "SELECT auto_groups::text FROM users WHERE id = $1", "idp|erin");
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM events WHERE activity = 21", NULL);
        /* Outside the allow list: refused, nothing written. */
        json_object_set_new(c->payload, "roles", json_pack("[s]", "devs"));
        ASSERT_EQ(-EPERM, resolve(s, &SINGLE, c, &u, &err));
        ASSERT_TRUE(strstr(err.message, "user does not belong to any of the allowed JWT groups") != NULL);
        ASSERT_DB_QUERY("{}", db, "SELECT auto_groups::text FROM users WHERE id = $1", "idp|erin");
        free(acc);
        cp_jwt_claims_free(c);
        cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        /* Warnings of values that do not open go to stderr: stdout is TAP. */
        if (cp_log_open("stderr", CP_LOG_INFO, NULL) < 0)
                return 1;
        return cptest_main(argc, argv);
}
