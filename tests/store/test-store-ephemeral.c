/*
 * cp_store_ephemeral_sweep (cp/store-ephemeral.h) against the real schema:
 * which peers go, what goes with them (policies naming them, memberships,
 * events, one serial bump per account), and several callers at once
 * deleting each peer exactly once.
 */
#include "cp/base.h"
#include "cp/store-ephemeral.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

typedef struct fixture {
        cp_store *s;
        cptest_db *db;
        cp_store_account_created a, b;
} fixture;

static void fixture_init(fixture *f, unsigned pool) {
        cp_store_account_spec sa = { .name = "alpha" }, sb = { .name = "bravo" };
        cp_error err = { 0 };

        f->db = cptest_db_new_migrated(pool, &f->s);
        ASSERT_OK(cp_store_account_create(f->s, &sa, &f->a, &err), &err);
        ASSERT_OK(cp_store_account_create(f->s, &sb, &f->b, &err), &err);
}

static void fixture_done(fixture *f) {
        cp_store_free(f->s);
        cptest_db_free(f->db);
}

/* A peer straight in SQL: id, account, ephemeral, connected, last seen
 * `ago` seconds before now, kernel version. */
static void peer(fixture *f, const char *account, const char *id, bool ephemeral, bool connected, int ago,
                 const char *kernel) {
        static int n;
        char num[16], eph[2] = { ephemeral ? 't' : 'f', 0 }, con[2] = { connected ? 't' : 'f', 0 }, secs[16];

        (void) snprintf(num, sizeof num, "%d", ++n);
        (void) snprintf(secs, sizeof secs, "%d", ago);
        const char *p[8] = { id, account, num, eph, con, secs, kernel };
        free(cptest_db_query(f->db,
                             "INSERT INTO peers (id, account_id, key, ip, dns_label, name, ephemeral,"
                             " peer_status_connected, peer_status_last_seen, meta_kernel_version)"
                             " VALUES ($1, $2, 'key-' || $1, '100.64.0.0'::inet + $3::int, $1, 'name-' || $1,"
                             " $4::boolean, $5::boolean, now() - $6::int * interval '1 second', $7)",
                             7, p));
        /* In the account's All group, as every peer. */
        const char *g[2] = { account, id };
        free(cptest_db_query(f->db,
                             "INSERT INTO group_peers (account_id, group_id, peer_id)"
                             " SELECT $1, id, $2 FROM groups WHERE account_id = $1 AND name = 'All'",
                             2, g));
}

static int64_t serial_of(fixture *f, const char *account) {
        char *v = cptest_db_query1(f->db, "SELECT network_serial FROM accounts WHERE id = $1", account);
        int64_t n = strtoll(v, NULL, 10);
        free(v);
        return n;
}

#define HOUR 3600
#define LIFETIME_MS (10 * 60 * 1000)

TEST(sweep_deletes_the_due_ephemeral_peers_and_what_names_them) {
        fixture f;
        cp_store_expired_account *acc = NULL;
        cp_store_expired_peer *peers = NULL;
        size_t n = 0, n_peers = 0;
        cp_error err = { 0 };

        fixture_init(&f, 2);
        peer(&f, f.a.account_id, "due1", true, false, HOUR, "");
        peer(&f, f.a.account_id, "due2wasm", true, false, HOUR, "wasm");
        peer(&f, f.a.account_id, "connected", true, true, HOUR, "");        /* connected: stays */
        peer(&f, f.a.account_id, "recent", true, false, 60, "");            /* seen 1 min ago: stays */
        peer(&f, f.a.account_id, "plain", false, false, HOUR, "");          /* not ephemeral: stays */
        peer(&f, f.b.account_id, "due3", true, false, HOUR, "");
        /* A policy whose rule names due1 as its destination resource. */
        const char *pa[1] = { f.a.account_id };
        free(cptest_db_query(f.db, "INSERT INTO policies (id, account_id, name) VALUES ('pol1', $1, 'to due1')", 1, pa));
        free(cptest_db_query(f.db, "INSERT INTO policy_rules (id, policy_id, account_id, destination_resource_id,"
                                   " destination_resource_type) VALUES ('rule1', 'pol1', $1, 'due1', 'peer')", 1, pa));
        int64_t sa = serial_of(&f, f.a.account_id), sb = serial_of(&f, f.b.account_id);

        ASSERT_OK(cp_store_ephemeral_sweep(f.s, LIFETIME_MS, "netbird.cloud", &acc, &n, &peers, &n_peers, &err),
                  &err);
        /* Both accounts, in strcmp order, each bumped once. */
        ASSERT_EQ(2, n);
        bool a_first = strcmp(f.a.account_id, f.b.account_id) < 0;
        cp_store_expired_account *ra = &acc[a_first ? 0 : 1], *rb = &acc[a_first ? 1 : 0];
        ASSERT_STREQ(f.a.account_id, ra->account_id);
        ASSERT_EQ(sa + 1, ra->serial);
        ASSERT_EQ(sb + 1, rb->serial);
        ASSERT_EQ(sa + 1, serial_of(&f, f.a.account_id));
        ASSERT_EQ(sb + 1, serial_of(&f, f.b.account_id));
        ASSERT_EQ(3, n_peers);
        free(acc);
        free(peers);

        ASSERT_DB_QUERY("connected,plain,recent", f.db,
                        "SELECT string_agg(id, ',' ORDER BY id) FROM peers WHERE account_id = $1", f.a.account_id);
        ASSERT_DB_QUERY("0", f.db, "SELECT count(*) FROM peers WHERE account_id = $1", f.b.account_id);
        ASSERT_DB_QUERY("0", f.db, "SELECT count(*) FROM group_peers WHERE peer_id IN ('due1', 'due2wasm', 'due3')",
                        NULL);
        ASSERT_DB_QUERY("0", f.db, "SELECT count(*) FROM policies WHERE id = 'pol1'", NULL);
        /* Events: peer.user.delete from "sys" with the peer meta (not for
         * the wasm peer), policy.delete targeted at the peer. */
        ASSERT_DB_QUERY("due1|sys|due1.netbird.cloud,due3|sys|due3.netbird.cloud", f.db,
                        "SELECT string_agg(target_id || '|' || initiator_id || '|' || (meta->>'fqdn'), ','"
                        " ORDER BY target_id) FROM events WHERE activity = 5", NULL);
        ASSERT_DB_QUERY("due1|sys|to due1", f.db,
                        "SELECT target_id || '|' || initiator_id || '|' || (meta->>'name') FROM events"
                        " WHERE activity = 11 AND account_id = $1", f.a.account_id);

        /* Nothing left: no rows, no events, no bump. */
        acc = NULL;
        peers = NULL;
        ASSERT_OK(cp_store_ephemeral_sweep(f.s, LIFETIME_MS, NULL, &acc, &n, &peers, &n_peers, &err), &err);
        ASSERT_EQ(0, n);
        ASSERT_EQ(0, n_peers);
        ASSERT_TRUE(acc == NULL && peers == NULL);
        ASSERT_EQ(sa + 1, serial_of(&f, f.a.account_id));
        ASSERT_DB_QUERY("2", f.db, "SELECT count(*) FROM events WHERE activity = 5", NULL);

        /* A shorter lifetime reaches the recently seen one. */
        ASSERT_OK(cp_store_ephemeral_sweep(f.s, 30 * 1000, NULL, &acc, &n, NULL, NULL, &err), &err);
        ASSERT_EQ(1, n);
        free(acc);
        ASSERT_DB_QUERY("connected,plain", f.db,
                        "SELECT string_agg(id, ',' ORDER BY id) FROM peers WHERE account_id = $1", f.a.account_id);

        ASSERT_EQ(-EINVAL, cp_store_ephemeral_sweep(f.s, 0, NULL, &acc, &n, NULL, NULL, &err));
        ASSERT_EQ(-EINVAL, cp_store_ephemeral_sweep(f.s, 1000, NULL, NULL, &n, NULL, NULL, &err));
        fixture_done(&f);
}

/* ---- several sweepers at once ----------------------------------------------------------------- */

#define SWEEPERS 4
#define DUE_PER_ACCOUNT 25

typedef struct sweeper {
        fixture *f;
        pthread_barrier_t *start;
        size_t n_peers, n_accts;
        int r;
        cp_error err;
} sweeper;

static void *sweep_thread(void *arg) {
        sweeper *w = arg;
        cp_store_expired_account *acc = NULL;
        cp_store_expired_peer *peers = NULL;

        pthread_barrier_wait(w->start);
        w->r = cp_store_ephemeral_sweep(w->f->s, LIFETIME_MS, NULL, &acc, &w->n_accts, &peers, &w->n_peers,
                                        &w->err);
        free(acc);
        free(peers);
        return NULL;
}

TEST(concurrent_sweeps_delete_each_peer_once) {
        fixture f;
        pthread_barrier_t start;
        sweeper w[SWEEPERS];
        pthread_t t[SWEEPERS];
        char id[32];

        fixture_init(&f, SWEEPERS + 1);
        for (int i = 0; i < DUE_PER_ACCOUNT; i++) {
                (void) snprintf(id, sizeof id, "a%02d", i);
                peer(&f, f.a.account_id, id, true, false, HOUR, "");
                (void) snprintf(id, sizeof id, "b%02d", i);
                peer(&f, f.b.account_id, id, true, false, HOUR, "");
        }
        int64_t sa = serial_of(&f, f.a.account_id), sb = serial_of(&f, f.b.account_id);
        pthread_barrier_init(&start, NULL, SWEEPERS);
        for (int i = 0; i < SWEEPERS; i++) {
                w[i] = (sweeper) { .f = &f, .start = &start };
                ASSERT_EQ(0, pthread_create(&t[i], NULL, sweep_thread, &w[i]));
        }
        size_t total = 0, bumps = 0;
        for (int i = 0; i < SWEEPERS; i++) {
                pthread_join(t[i], NULL);
                ASSERT_OK(w[i].r, &w[i].err);
                total += w[i].n_peers;
                bumps += w[i].n_accts;
        }
        pthread_barrier_destroy(&start);
        /* Every peer deleted by exactly one caller, logged once. */
        ASSERT_EQ(2 * DUE_PER_ACCOUNT, total);
        ASSERT_DB_QUERY("0", f.db, "SELECT count(*) FROM peers", NULL);
        ASSERT_DB_QUERY("50", f.db, "SELECT count(DISTINCT target_id) FROM events WHERE activity = 5", NULL);
        ASSERT_DB_QUERY("50", f.db, "SELECT count(*) FROM events WHERE activity = 5", NULL);
        /* One bump per caller that deleted something in the account. */
        ASSERT_EQ((int64_t) bumps, serial_of(&f, f.a.account_id) - sa + serial_of(&f, f.b.account_id) - sb);
        fixture_done(&f);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
