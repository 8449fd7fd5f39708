/* MSP tenant creation (cp/store-msp.h): the account and its link in one
 * transaction, idempotency by domain and by key, the refusals, and
 * concurrent creates from many connections making one tenant. */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/store-msp.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

/* A fresh MSP account with one group; its ids in msp and group. */
static void make_msp(cp_store *s, cptest_db *db, char msp[32], char group[32]) {
        cp_store_account_spec spec = { .name = "msp" };
        cp_store_account_created a;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_account_create(s, &spec, &a, &err), &err);
        (void) snprintf(msp, 32, "%s", a.account_id);
        free(cptest_db_query1(db, "UPDATE accounts SET msp_enabled_at = now() WHERE id = $1", msp));
        char *g = cptest_db_query1(db, "SELECT id FROM groups WHERE account_id = $1", msp);
        (void) snprintf(group, 32, "%s", g);
        free(g);
}

TEST(create_makes_an_account_and_its_link_and_is_idempotent) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        char msp[32], group[32], groups[128], again_id[32];
        cp_store_msp_tenant_created t, again;
        cp_error err = { 0 };

        make_msp(s, db, msp, group);
        (void) snprintf(groups, sizeof groups, "[{\"id\":\"%s\",\"role\":\"admin\",\"name\":\"x\"}]", group);
        cp_store_msp_tenant_spec spec = { .msp_account_id = msp, .name = "Acme", .domain = "Acme.Example",
                                          .groups_json = groups };
        ASSERT_OK(cp_store_msp_tenant_create(s, &spec, &t, &err), &err);
        ASSERT_TRUE(t.created);
        ASSERT_STREQ(t.account_id, t.account.account_id);
        ASSERT_EQ(0, cp_crypto_pat_check(t.account.admin_token));
        ASSERT_TRUE(t.account.setup_key[0] != '\0');
        ASSERT_DB_QUERY("acme.example", db, "SELECT domain FROM accounts WHERE id = $1", t.account_id);
        ASSERT_DB_QUERY("All", db, "SELECT string_agg(name, ',') FROM groups WHERE account_id = $1", t.account_id);
        ASSERT_DB_QUERY2("pending", db, "SELECT status FROM msp_tenants WHERE account_id = $1 AND msp_account_id = $2",
                         t.account_id, msp);
        ASSERT_DB_QUERY("43", db, "SELECT length(dns_challenge) FROM msp_tenants WHERE account_id = $1",
                        t.account_id);
        /* The dashboard's "name" is dropped from the mapping. */
        ASSERT_DB_QUERY("f", db, "SELECT groups::text LIKE '%name%' FROM msp_tenants WHERE account_id = $1",
                        t.account_id);
        char *challenge = cptest_db_query1(db, "SELECT dns_challenge FROM msp_tenants WHERE account_id = $1",
                                           t.account_id);

        /* The same domain (any name): the same tenant, nothing new. */
        spec.name = "Another name";
        spec.domain = "acme.example";
        ASSERT_OK(cp_store_msp_tenant_create(s, &spec, &again, &err), &err);
        ASSERT_FALSE(again.created);
        ASSERT_STREQ(t.account_id, again.account_id);
        ASSERT_STREQ("", again.account.admin_token);
        (void) snprintf(again_id, sizeof again_id, "%s", again.account_id);
        ASSERT_DB_QUERY(challenge, db, "SELECT dns_challenge FROM msp_tenants WHERE account_id = $1", again_id);
        ASSERT_DB_QUERY("Acme", db, "SELECT name FROM msp_tenants WHERE account_id = $1", again_id);
        ASSERT_DB_QUERY("2", db, "SELECT count(*) FROM accounts", NULL);
        free(challenge);

        /* An idempotency key: same request -> same tenant; another -> -EEXIST. */
        cp_store_msp_tenant_spec keyed = { .msp_account_id = msp, .name = "K", .domain = "k.example",
                                           .idempotency_key = "key-1" };
        ASSERT_OK(cp_store_msp_tenant_create(s, &keyed, &t, &err), &err);
        ASSERT_TRUE(t.created);
        ASSERT_OK(cp_store_msp_tenant_create(s, &keyed, &again, &err), &err);
        ASSERT_FALSE(again.created);
        ASSERT_STREQ(t.account_id, again.account_id);
        keyed.domain = "k2.example";
        ASSERT_EQ(-EEXIST, cp_store_msp_tenant_create(s, &keyed, &again, &err));
        ASSERT_DB_QUERY("3", db, "SELECT count(*) FROM accounts", NULL);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(refusals) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        char msp[32], group[32], groups[128];
        cp_store_msp_tenant_created t;
        cp_error err = { 0 };

        make_msp(s, db, msp, group);
        cp_store_msp_tenant_spec spec = { .msp_account_id = "nosuch", .name = "n", .domain = "n.example" };
        ASSERT_EQ(-ENOENT, cp_store_msp_tenant_create(s, &spec, &t, &err));
        free(cptest_db_query1(db, "UPDATE accounts SET msp_enabled_at = NULL WHERE id = $1", msp));
        spec.msp_account_id = msp;
        ASSERT_EQ(-EPERM, cp_store_msp_tenant_create(s, &spec, &t, &err));
        free(cptest_db_query1(db, "UPDATE accounts SET msp_enabled_at = now() WHERE id = $1", msp));

        const char *bad_domains[] = { "", "nodot", "a..example", "a.example.", "sp ace.example", NULL };
        for (int i = 0; bad_domains[i]; i++) {
                spec.domain = bad_domains[i];
                ASSERT_EQ(-EINVAL, cp_store_msp_tenant_create(s, &spec, &t, &err));
        }
        spec.domain = "ok.example";
        spec.name = "";
        ASSERT_EQ(-EINVAL, cp_store_msp_tenant_create(s, &spec, &t, &err));
        spec.name = "n";
        spec.groups_json = "{}";
        ASSERT_EQ(-EINVAL, cp_store_msp_tenant_create(s, &spec, &t, &err));
        spec.groups_json = "[{\"id\":\"nosuch\",\"role\":\"admin\"}]";
        ASSERT_EQ(-EINVAL, cp_store_msp_tenant_create(s, &spec, &t, &err));
        ASSERT_STREQ("group id nosuch not found", err.message);
        (void) snprintf(groups, sizeof groups, "[{\"id\":\"%s\",\"role\":\"root\"}]", group);
        spec.groups_json = groups;
        ASSERT_EQ(-EINVAL, cp_store_msp_tenant_create(s, &spec, &t, &err));
        ASSERT_STREQ("invalid role: root", err.message);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM accounts", NULL);
        ASSERT_DB_QUERY("0", db, "SELECT count(*) FROM msp_tenants", NULL);
        cp_store_free(s);
        cptest_db_free(db);
}

#define N 8

typedef struct racer {
        cp_store *s;
        const char *msp;
        const char *domain;             /* NULL = race.example */
        const char *key;
        cp_store_msp_tenant_created out;
        int r;
} racer;

static void *race(void *arg) {
        racer *x = arg;
        cp_error err = { 0 };
        cp_store_msp_tenant_spec spec = { .msp_account_id = x->msp, .name = "Race",
                                          .domain = x->domain ? x->domain : "race.example",
                                          .idempotency_key = x->key };

        x->r = cp_store_msp_tenant_create(x->s, &spec, &x->out, &err);
        return NULL;
}

TEST(concurrent_creates_make_one_tenant) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(N, &s);
        char msp[32], group[32];
        racer x[N];
        pthread_t th[N];
        int created = 0;

        make_msp(s, db, msp, group);
        for (int i = 0; i < N; i++) {
                x[i] = (racer) { .s = s, .msp = msp };
                ASSERT_EQ(0, pthread_create(&th[i], NULL, race, &x[i]));
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        for (int i = 0; i < N; i++) {
                ASSERT_EQ(0, x[i].r);
                ASSERT_STREQ(x[0].out.account_id, x[i].out.account_id);
                created += x[i].out.created;
        }
        ASSERT_EQ(1, created);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM msp_tenants", NULL);
        ASSERT_DB_QUERY("2", db, "SELECT count(*) FROM accounts", NULL);
        cp_store_free(s);
        cptest_db_free(db);
}

/* The same key with different domains: one tenant, the rest -EEXIST;
 * different domains without a key: all made, side by side. */
TEST(concurrent_creates_by_key_and_by_domain) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(N, &s);
        static const char *const domains[N] = { "d0.example", "d1.example", "d2.example", "d3.example",
                                                "d4.example", "d5.example", "d6.example", "d7.example" };
        char msp[32], group[32];
        racer x[N];
        pthread_t th[N];
        int created = 0, conflicts = 0;

        make_msp(s, db, msp, group);
        for (int i = 0; i < N; i++) {
                x[i] = (racer) { .s = s, .msp = msp, .domain = domains[i], .key = "same-key" };
                ASSERT_EQ(0, pthread_create(&th[i], NULL, race, &x[i]));
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        for (int i = 0; i < N; i++) {
                if (x[i].r == 0 && x[i].out.created)
                        created++;
                else
                        conflicts += x[i].r == -EEXIST;
        }
        ASSERT_EQ(1, created);
        ASSERT_EQ(N - 1, conflicts);
        ASSERT_DB_QUERY("1", db, "SELECT count(*) FROM msp_tenants", NULL);

        free(cptest_db_query1(db, "DELETE FROM msp_tenants WHERE msp_account_id = $1", msp));
        for (int i = 0; i < N; i++) {
                x[i] = (racer) { .s = s, .msp = msp, .domain = domains[i] };
                ASSERT_EQ(0, pthread_create(&th[i], NULL, race, &x[i]));
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        for (int i = 0; i < N; i++) {
                ASSERT_EQ(0, x[i].r);
                ASSERT_TRUE(x[i].out.created);
        }
        ASSERT_DB_QUERY("8", db, "SELECT count(*) FROM msp_tenants", NULL);
        cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
