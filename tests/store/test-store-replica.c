/*
 * The replicas table and the fenced clean-up after a dead replica
 * (cp/store-replica.h) against a real PostgreSQL: owners are recorded by
 * connects and cleared by disconnects; the reaper removes only silent
 * replicas and marks disconnected only the sessions they still own; a
 * peer that reconnected elsewhere is never clobbered, also when the
 * reconnect races the reap.
 */
#include "cp/base.h"
#include "cp/store-replica.h"
#include "cp/store.h"
#include "cp/util.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

#define N_PEERS 12

typedef struct fixture {
        cptest_db *db;
        cp_store *a, *b;                /* the stores of replicas "ra" and "rb" */
        cp_store_account_created acct;
        char peers[N_PEERS][CP_ID_LEN + 1];
} fixture;

static void fixture_init(fixture *f) {
        cp_store_account_spec spec = { .name = "replicas" };
        cp_error err = { 0 };

        f->db = cptest_db_new_migrated(4, &f->a);
        ASSERT_OK(cp_store_open(f->db->dsn, 4, &f->b, &err), &err);
        cp_store_set_replica_id(f->a, "ra");
        cp_store_set_replica_id(f->b, "rb");
        ASSERT_OK(cp_store_account_create(f->a, &spec, &f->acct, &err), &err);
        for (int i = 0; i < N_PEERS; i++) {
                char key[64], ip[32], label[16];
                cp_id_new(f->peers[i]);
                (void) snprintf(key, sizeof key, "key-%s", f->peers[i]);
                (void) snprintf(ip, sizeof ip, "100.64.0.%d", i + 1);
                (void) snprintf(label, sizeof label, "p%d", i);
                const char *p[5] = { f->peers[i], f->acct.account_id, key, ip, label };
                free(cptest_db_query(f->db, "INSERT INTO peers (id, account_id, key, ip, dns_label)"
                                            " VALUES ($1, $2, $3, $4::inet, $5)", 5, p));
        }
        cp_store_replica_info ra = { .id = "ra", .name = "host-a", .pid = 1, .grpc_address = "127.0.0.1:1" };
        cp_store_replica_info rb = { .id = "rb", .name = "host-b", .pid = 2 };
        ASSERT_OK(cp_store_replica_register(f->a, &ra, &err), &err);
        ASSERT_OK(cp_store_replica_register(f->b, &rb, &err), &err);
}

static void fixture_release(fixture *f) {
        f->a = cp_store_free(f->a);
        f->b = cp_store_free(f->b);
        f->db = cptest_db_free(f->db);
}

static cp_store_peer_status status(fixture *f, int i) {
        cp_store_peer_status st;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_peer_get_status(f->a, f->acct.account_id, f->peers[i], &st, &err), &err);
        return st;
}

static void connect_on(fixture *f, cp_store *s, int i, int64_t token) {
        cp_error err = { 0 };
        ASSERT_EQ(1, cp_store_peer_mark_connected(s, f->acct.account_id, f->peers[i], token, &err));
}

/* Makes replica id silent for an hour, by the database's clock. */
static void silence(fixture *f, const char *id) {
        const char *p[1] = { id };
        free(cptest_db_query(f->db, "UPDATE replicas SET heartbeat_at = now() - interval '1 hour' WHERE id = $1",
                             1, p));
}

TEST(connect_records_owner_disconnect_clears_it) {
        fixture f;
        cp_error err = { 0 };

        fixture_init(&f);
        connect_on(&f, f.a, 0, 10);
        ASSERT_STREQ("ra", status(&f, 0).replica_id);
        /* A newer session on the other replica takes the row, owner too. */
        connect_on(&f, f.b, 0, 20);
        ASSERT_STREQ("rb", status(&f, 0).replica_id);
        /* The older stream's end changes nothing. */
        ASSERT_EQ(0, cp_store_peer_mark_disconnected(f.a, f.acct.account_id, f.peers[0], 10, &err));
        ASSERT_STREQ("rb", status(&f, 0).replica_id);
        ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.b, f.acct.account_id, f.peers[0], 20, &err));
        ASSERT_STREQ("", status(&f, 0).replica_id);
        ASSERT_FALSE(status(&f, 0).connected);
        fixture_release(&f);
}

TEST(heartbeat_state_and_validation) {
        fixture f;
        cp_error err = { 0 };

        fixture_init(&f);
        silence(&f, "ra");
        ASSERT_EQ(1, cp_store_replica_heartbeat(f.a, "ra", &err));
        char *age = cptest_db_query(f.db, "SELECT (now() - heartbeat_at < interval '1 minute')::text"
                                          " FROM replicas WHERE id = 'ra'", 0, NULL);
        ASSERT_STREQ("true", age);
        free(age);
        ASSERT_EQ(0, cp_store_replica_heartbeat(f.a, "nobody", &err));
        ASSERT_EQ(1, cp_store_replica_set_state(f.a, "ra", "draining", &err));
        char *st = cptest_db_query(f.db, "SELECT state FROM replicas WHERE id = 'ra'", 0, NULL);
        ASSERT_STREQ("draining", st);
        free(st);
        ASSERT_EQ(-EINVAL, cp_store_replica_set_state(f.a, "ra", "dead", &err));
        ASSERT_EQ(-EINVAL, cp_store_replica_heartbeat(f.a, "", &err));
        /* Registering again brings the row back to serving. */
        cp_store_replica_info ra = { .id = "ra", .name = "host-a2", .pid = 3 };
        ASSERT_OK(cp_store_replica_register(f.a, &ra, &err), &err);
        st = cptest_db_query(f.db, "SELECT state || ' ' || name || ' ' || pid FROM replicas WHERE id = 'ra'", 0,
                             NULL);
        ASSERT_STREQ("serving host-a2 3", st);
        free(st);
        fixture_release(&f);
}

TEST(reap_touches_only_what_the_dead_replica_still_owns) {
        fixture f;
        cp_error err = { 0 };
        cp_store_reaped_replica *dead = NULL;
        size_t n = 99;

        fixture_init(&f);
        /* ra holds 0..5, rb holds 6..9; peer 3 moved from ra to rb. */
        for (int i = 0; i < 6; i++)
                connect_on(&f, f.a, i, 100 + i);
        for (int i = 6; i < 10; i++)
                connect_on(&f, f.b, i, 100 + i);
        connect_on(&f, f.b, 3, 500);

        /* Nobody is silent yet: nothing happens. */
        ASSERT_OK(cp_store_replica_reap(f.b, "rb", 60000, &dead, &n, &err), &err);
        ASSERT_EQ(0, (int) n);
        ASSERT_TRUE(dead == NULL);

        silence(&f, "ra");
        /* A replica never reaps itself. */
        ASSERT_OK(cp_store_replica_reap(f.a, "ra", 60000, &dead, &n, &err), &err);
        ASSERT_EQ(0, (int) n);

        ASSERT_OK(cp_store_replica_reap(f.b, "rb", 60000, &dead, &n, &err), &err);
        ASSERT_EQ(1, (int) n);
        ASSERT_STREQ("ra", dead[0].id);
        ASSERT_STREQ("host-a", dead[0].name);
        ASSERT_EQ(5, (int) dead[0].sessions);
        free(dead);
        for (int i = 0; i < 6; i++) {
                cp_store_peer_status st = status(&f, i);
                if (i == 3) {
                        ASSERT_TRUE(st.connected && st.session_started_at == 500);
                        ASSERT_STREQ("rb", st.replica_id);
                } else {
                        ASSERT_FALSE(st.connected);
                        ASSERT_EQ(0, (int) st.session_started_at);
                        ASSERT_STREQ("", st.replica_id);
                }
        }
        for (int i = 6; i < 10; i++)
                ASSERT_STREQ("rb", status(&f, i).replica_id);
        char *rows = cptest_db_query(f.db, "SELECT string_agg(id, ',' ORDER BY id) FROM replicas", 0, NULL);
        ASSERT_STREQ("rb", rows);
        free(rows);
        /* ra's late disconnects find nothing to do (token 0 now). */
        ASSERT_EQ(0, cp_store_peer_mark_disconnected(f.a, f.acct.account_id, f.peers[0], 100, &err));
        /* ra comes back: it can reconnect its peers (token above 0). */
        connect_on(&f, f.a, 0, 101);
        ASSERT_STREQ("ra", status(&f, 0).replica_id);
        ASSERT_EQ(-EINVAL, cp_store_replica_reap(f.b, "rb", 0, &dead, &n, &err));
        fixture_release(&f);
}

TEST(deregister_sweeps_own_sessions) {
        fixture f;
        cp_error err = { 0 };
        int64_t swept = -1;

        fixture_init(&f);
        connect_on(&f, f.a, 0, 10);
        connect_on(&f, f.a, 1, 11);
        connect_on(&f, f.b, 2, 12);
        ASSERT_OK(cp_store_replica_deregister(f.a, "ra", &swept, &err), &err);
        ASSERT_EQ(2, (int) swept);
        ASSERT_FALSE(status(&f, 0).connected);
        ASSERT_FALSE(status(&f, 1).connected);
        ASSERT_TRUE(status(&f, 2).connected);
        char *rows = cptest_db_query(f.db, "SELECT string_agg(id, ',' ORDER BY id) FROM replicas", 0, NULL);
        ASSERT_STREQ("rb", rows);
        free(rows);
        fixture_release(&f);
}

/* ---- the race: reconnects elsewhere while the dead replica is reaped ---- */

typedef struct racer {
        fixture *f;
        cp_store *s;
        int first, count;
        int64_t token;
        pthread_barrier_t *go;
        int reaped;                     /* reaper: replicas reaped */
} racer;

static void *reconnect_thread(void *userdata) {
        racer *x = userdata;
        cp_error err = { 0 };

        pthread_barrier_wait(x->go);
        for (int i = x->first; i < x->first + x->count; i++)
                if (cp_store_peer_mark_connected(x->s, x->f->acct.account_id, x->f->peers[i], x->token, &err) != 1)
                        cptest_fail(__FILE__, __LINE__, "reconnect did not land: %s", err.message);
        return NULL;
}

static void *reap_thread(void *userdata) {
        racer *x = userdata;
        cp_store_reaped_replica *dead = NULL;
        size_t n = 0;
        cp_error err = { 0 };

        pthread_barrier_wait(x->go);
        if (cp_store_replica_reap(x->s, "rb", 60000, &dead, &n, &err) < 0)
                cptest_fail(__FILE__, __LINE__, "reap failed: %s", err.message);
        x->reaped = (int) n;
        free(dead);
        return NULL;
}

TEST(reap_racing_reconnects_never_clobbers_them) {
        fixture f;
        cp_error err = { 0 };

        fixture_init(&f);
        for (int round = 0; round < 40; round++) {
                pthread_barrier_t go;
                pthread_t t[4];
                int64_t base = 1000 * (round + 1);
                cp_store_replica_info ra = { .id = "ra", .name = "host-a" };

                /* ra owns every peer, then falls silent. */
                ASSERT_OK(cp_store_replica_register(f.a, &ra, &err), &err);
                for (int i = 0; i < N_PEERS; i++)
                        connect_on(&f, f.a, i, base + i);
                silence(&f, "ra");
                /* Two reapers (one of them must do nothing) and two
                 * threads moving half of the peers to rb, all at once. */
                pthread_barrier_init(&go, NULL, 4);
                racer r1 = { .f = &f, .s = f.b, .go = &go }, r2 = r1;
                racer c1 = { .f = &f, .s = f.b, .first = 0, .count = N_PEERS / 4, .token = base + 500, .go = &go };
                racer c2 = c1;
                c2.first = N_PEERS / 4;
                pthread_create(&t[0], NULL, reap_thread, &r1);
                pthread_create(&t[1], NULL, reap_thread, &r2);
                pthread_create(&t[2], NULL, reconnect_thread, &c1);
                pthread_create(&t[3], NULL, reconnect_thread, &c2);
                for (int i = 0; i < 4; i++)
                        pthread_join(t[i], NULL);
                pthread_barrier_destroy(&go);
                ASSERT_EQ(1, r1.reaped + r2.reaped);
                /* Moved peers: connected on rb with the new token, whatever
                 * the order; the others: disconnected, no owner. */
                for (int i = 0; i < N_PEERS; i++) {
                        cp_store_peer_status st = status(&f, i);
                        if (i < N_PEERS / 2) {
                                if (!st.connected || st.session_started_at != base + 500 ||
                                    strcmp(st.replica_id, "rb") != 0)
                                        cptest_fail(__FILE__, __LINE__, "round %d: moved peer %d clobbered", round, i);
                        } else if (st.connected || st.session_started_at != 0 || st.replica_id[0])
                                cptest_fail(__FILE__, __LINE__, "round %d: peer %d still owned", round, i);
                }
                /* Reset for the next round. */
                for (int i = 0; i < N_PEERS / 2; i++)
                        ASSERT_EQ(1, cp_store_peer_mark_disconnected(f.b, f.acct.account_id, f.peers[i], base + 500,
                                                                     &err));
        }
        fixture_release(&f);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
