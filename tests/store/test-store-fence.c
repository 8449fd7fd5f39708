/*
 * Fenced peer status against a real PostgreSQL (netbird-protocol.md 5.2):
 * a connect lands only with a strictly newer session token, a disconnect
 * only with the token that owns the row, and a token of 0 never touches it.
 * A Sync open's connect carries the agent's meta and address: they are
 * written only by a connect that lands, and a stale one writes nothing.
 */
#include "cp/base.h"
#include "cp/store.h"
#include "cp/store-peers.h"
#include "cp/util.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define SEC 1000000000LL

typedef struct fixture {
        cptest_db *db;
        cp_store *store;
        cp_store_account_created acct;
        char peer_id[CP_ID_LEN + 1];
} fixture;

/* A migrated database with one account and one never-connected peer. */
static void fixture_init(fixture *f, unsigned pool) {
        cp_store_account_spec spec = { .name = "fence" };
        cp_error err = { 0 };
        char key[64];

        f->db = cptest_db_new_migrated(pool, &f->store);
        ASSERT_OK(cp_store_account_create(f->store, &spec, &f->acct, &err), &err);
        cp_id_new(f->peer_id);
        (void) snprintf(key, sizeof key, "key-%s", f->peer_id);
        const char *p[3] = { f->peer_id, f->acct.account_id, key };
        free(cptest_db_query(f->db,
                "INSERT INTO peers (id, account_id, key, ip, dns_label) VALUES ($1, $2, $3, '100.64.0.1', 'p1')",
                3, p));
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

static int connect_(fixture *f, int64_t t) {
        cp_error err = { 0 };
        int r = cp_store_peer_mark_connected(f->store, f->acct.account_id, f->peer_id, t, &err);
        ASSERT_OK(r, &err);
        return r;
}

static int disconnect_(fixture *f, int64_t t) {
        cp_error err = { 0 };
        int r = cp_store_peer_mark_disconnected(f->store, f->acct.account_id, f->peer_id, t, &err);
        ASSERT_OK(r, &err);
        return r;
}

TEST(matching_disconnect_lands) {
        fixture f;
        int64_t t = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_(&f, t));
        cp_store_peer_status st = status(&f);
        ASSERT_TRUE(st.connected);
        ASSERT_EQ(t, st.session_started_at);
        ASSERT_TRUE(st.last_seen_unix_ns > 0);

        ASSERT_EQ(1, disconnect_(&f, t));
        st = status(&f);
        ASSERT_FALSE(st.connected);
        ASSERT_EQ(0, st.session_started_at);
        fixture_release(&f);
}

TEST(stale_disconnect_is_dropped) {
        fixture f;
        int64_t t = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_(&f, t));
        /* A zombie stream that started an hour earlier ends now. */
        ASSERT_EQ(0, disconnect_(&f, t - 3600 * SEC));
        cp_store_peer_status st = status(&f);
        ASSERT_TRUE(st.connected);
        ASSERT_EQ(t, st.session_started_at);
        /* A newer token than the owner's does not disconnect either. */
        ASSERT_EQ(0, disconnect_(&f, t + 1));
        ASSERT_TRUE(status(&f).connected);
        fixture_release(&f);
}

TEST(stale_connect_is_dropped) {
        fixture f;
        int64_t t2 = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_(&f, t2));
        ASSERT_EQ(1, disconnect_(&f, t2));
        ASSERT_EQ(1, connect_(&f, t2 + SEC));
        /* A blocked goroutine's older connect arrives late. */
        ASSERT_EQ(0, connect_(&f, t2 + SEC - 60 * SEC));
        /* Equal is not newer. */
        ASSERT_EQ(0, connect_(&f, t2 + SEC));
        cp_store_peer_status st = status(&f);
        ASSERT_TRUE(st.connected);
        ASSERT_EQ(t2 + SEC, st.session_started_at);
        fixture_release(&f);
}

TEST(zero_token_disconnect_never_touches_the_row) {
        fixture f;

        fixture_init(&f, 2);
        /* The peer never connected: stored token 0, last_seen NULL. */
        ASSERT_EQ(0, disconnect_(&f, 0));
        cp_store_peer_status st = status(&f);
        ASSERT_EQ(0, st.last_seen_unix_ns);
        ASSERT_FALSE(st.connected);
        char *n = cptest_db_query(f.db, "SELECT count(*) FROM peers WHERE peer_status_last_seen IS NULL", 0, NULL);
        ASSERT_STREQ("1", n);
        free(n);
        /* And a connect needs a positive token. */
        cp_error err;
        ASSERT_EQ(-EINVAL, cp_store_peer_mark_connected(f.store, f.acct.account_id, f.peer_id, 0, &err));
        fixture_release(&f);
}

TEST(connect_clears_login_expired_and_uses_db_clock) {
        fixture f;

        fixture_init(&f, 2);
        const char *p[1] = { f.peer_id };
        free(cptest_db_query(f.db, "UPDATE peers SET peer_status_login_expired = true WHERE id = $1", 1, p));
        char *before = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0, NULL);
        ASSERT_EQ(1, connect_(&f, cp_now_unix_ns()));
        char *after = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0, NULL);
        cp_store_peer_status st = status(&f);
        ASSERT_FALSE(st.login_expired);
        /* last_seen was written by the database between the two readings. */
        ASSERT_TRUE(st.last_seen_unix_ns / 1000 >= strtoll(before, NULL, 10));
        ASSERT_TRUE(st.last_seen_unix_ns / 1000 <= strtoll(after, NULL, 10));
        free(before);
        free(after);
        fixture_release(&f);
}

TEST(db_clock_is_the_servers_and_moves_forward) {
        fixture f;
        cp_error err = { 0 };
        int64_t a = 0, b = 0;

        fixture_init(&f, 2);
        char *before = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0, NULL);
        ASSERT_OK(cp_store_db_now_ns(f.store, &a, &err), &err);
        usleep(2000);
        ASSERT_OK(cp_store_db_now_ns(f.store, &b, &err), &err);
        char *after = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0, NULL);
        ASSERT_TRUE(a / 1000 >= strtoll(before, NULL, 10));
        ASSERT_TRUE(b / 1000 <= strtoll(after, NULL, 10));
        ASSERT_TRUE(b > a);
        ASSERT_EQ(0, a % 1000);         /* microsecond resolution, in ns */
        free(before);
        free(after);
        fixture_release(&f);
}

TEST(updates_are_scoped_to_the_account) {
        fixture f;
        cp_store_account_spec spec = { .name = "other" };
        cp_store_account_created other;
        cp_error err = { 0 };
        int64_t t = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_OK(cp_store_account_create(f.store, &spec, &other, &err), &err);
        /* The right peer id under another account's id changes nothing. */
        ASSERT_EQ(0, cp_store_peer_mark_connected(f.store, other.account_id, f.peer_id, t, &err));
        ASSERT_FALSE(status(&f).connected);
        ASSERT_EQ(1, connect_(&f, t));
        ASSERT_EQ(0, cp_store_peer_mark_disconnected(f.store, other.account_id, f.peer_id, t, &err));
        ASSERT_TRUE(status(&f).connected);
        cp_store_peer_status st;
        ASSERT_EQ(-ENOENT, cp_store_peer_get_status(f.store, other.account_id, f.peer_id, &st, &err));
        fixture_release(&f);
}

/* ---- the connect with meta (cp_store_peer_connect) ------------------------ */

static char *peer_value(fixture *f, const char *column) {
        char sql[160];
        const char *p[1] = { f->peer_id };

        (void) snprintf(sql, sizeof sql, "SELECT %s::text FROM peers WHERE id = $1", column);
        return cptest_db_query(f->db, sql, 1, p);
}

static int64_t serial_of(fixture *f) {
        const char *p[1] = { f->acct.account_id };
        char *v = cptest_db_query(f->db, "SELECT network_serial FROM accounts WHERE id = $1", 1, p);
        int64_t n = strtoll(v, NULL, 10);

        free(v);
        return n;
}

/* Connects with a meta of this hostname and agent version; expect as
 * cp_store_peer_connect_req.expect_wt_version. */
static int connect_meta(fixture *f, int64_t t, const char *host, const char *version, const char *ip,
                        const char *expect, unsigned *ret_changed, int64_t *ret_serial) {
        cp_store_peer_meta m = { .hostname = host, .wt_version = version, .go_os = "linux" };
        cp_store_peer_connect_req req = { .token = t, .meta = &m, .connection_ip = ip, .expect_wt_version = expect };
        cp_error err = { 0 };
        int r = cp_store_peer_connect(f->store, f->acct.account_id, f->peer_id, &req, ret_changed, ret_serial, &err);

        ASSERT_OK(r, &err);
        return r;
}

TEST(connect_with_meta_writes_meta_and_address_when_it_lands) {
        fixture f;
        unsigned changed = 99;
        int64_t serial = -1, t = cp_now_unix_ns();

        fixture_init(&f, 2);
        int64_t s0 = serial_of(&f);
        /* A new version (the row has none): the serial moves with it. */
        ASSERT_EQ(1, connect_meta(&f, t, "h1", "0.60.0", "198.51.100.1", NULL, &changed, &serial));
        ASSERT_EQ(CP_STORE_PEER_CHANGED_WT_VERSION | CP_STORE_PEER_CHANGED_SERIAL, changed);
        ASSERT_EQ(s0 + 1, serial);
        ASSERT_EQ(s0 + 1, serial_of(&f));
        char *v = peer_value(&f, "meta_hostname");
        ASSERT_STREQ("h1", v);
        free(v);
        v = peer_value(&f, "host(location_connection_ip)");
        ASSERT_STREQ("198.51.100.1", v);
        free(v);
        ASSERT_TRUE(status(&f).connected);

        /* The same version again, as expected: the plain connect, no bump;
         * the other meta and the address are still written. */
        ASSERT_EQ(1, connect_meta(&f, t + 1, "h2", "0.60.0", "198.51.100.2", "0.60.0", &changed, &serial));
        ASSERT_EQ(0, changed);
        ASSERT_EQ(0, serial);
        ASSERT_EQ(s0 + 1, serial_of(&f));
        v = peer_value(&f, "meta_hostname");
        ASSERT_STREQ("h2", v);
        free(v);
        v = peer_value(&f, "host(location_connection_ip)");
        ASSERT_STREQ("198.51.100.2", v);
        free(v);
        ASSERT_EQ(t + 1, status(&f).session_started_at);

        /* Without meta and address: the stored ones stay. */
        cp_store_peer_connect_req bare = { .token = t + 2 };
        cp_error err = { 0 };
        ASSERT_EQ(1, cp_store_peer_connect(f.store, f.acct.account_id, f.peer_id, &bare, &changed, &serial, &err));
        ASSERT_EQ(0, changed);
        v = peer_value(&f, "meta_wt_version");
        ASSERT_STREQ("0.60.0", v);
        free(v);
        v = peer_value(&f, "host(location_connection_ip)");
        ASSERT_STREQ("198.51.100.2", v);
        free(v);
        ASSERT_EQ(-EINVAL, cp_store_peer_connect(f.store, f.acct.account_id, f.peer_id,
                                                 &(cp_store_peer_connect_req) { .token = t + 3,
                                                                                .connection_ip = "nope" },
                                                 NULL, NULL, &err));
        ASSERT_EQ(t + 2, status(&f).session_started_at);
        fixture_release(&f);
}

/* ---- location and posture (docs/protocol.md "Location and posture") ----- */

static int connect_loc(fixture *f, int64_t t, const char *os_version, const char *cc, const char *city,
                       int64_t gid, unsigned *ret_changed, int64_t *ret_serial) {
        cp_store_peer_meta m = { .hostname = "h", .wt_version = "0.60.0", .go_os = "linux",
                                 .os_version = os_version };
        cp_store_peer_location loc = { .country_code = cc, .city_name = city, .geoname_id = gid };
        cp_store_peer_connect_req req = { .token = t, .meta = &m, .connection_ip = "198.51.100.1",
                                          .expect_wt_version = "0.60.0", .location = cc ? &loc : NULL };
        cp_error err = { 0 };
        int r = cp_store_peer_connect(f->store, f->acct.account_id, f->peer_id, &req, ret_changed, ret_serial, &err);

        ASSERT_OK(r, &err);
        return r;
}

static char *location_of(fixture *f) {
        return peer_value(f, "location_country_code || '/' || location_city_name || '/' || location_geo_name_id");
}

TEST(connect_writes_the_location_and_bumps_only_with_posture_checks) {
        fixture f;
        unsigned changed = 99;
        int64_t serial = -1, t = cp_now_unix_ns();
        char *v;

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_loc(&f, t, "12", "DE", "Berlin", 2950159, NULL, NULL));
        int64_t s0 = serial_of(&f);
        v = location_of(&f);
        ASSERT_STREQ("DE/Berlin/2950159", v);
        free(v);

        /* No posture checks: a new location and OS version, no bump. */
        ASSERT_EQ(1, connect_loc(&f, ++t, "13", "FR", "Paris", 2988507, &changed, &serial));
        ASSERT_EQ(0, changed);
        ASSERT_EQ(s0, serial_of(&f));
        v = location_of(&f);
        ASSERT_STREQ("FR/Paris/2988507", v);
        free(v);
        /* No location given (no database): the stored one stays. */
        ASSERT_EQ(1, connect_loc(&f, ++t, "13", NULL, NULL, 0, &changed, &serial));
        v = location_of(&f);
        ASSERT_STREQ("FR/Paris/2988507", v);
        free(v);

        const char *p[1] = { f.acct.account_id };
        free(cptest_db_query(f.db, "INSERT INTO posture_checks (id, account_id, name) VALUES ('pc1', $1, 'pc')",
                             1, p));
        /* Unchanged: the plain connect, no bump. */
        ASSERT_EQ(1, connect_loc(&f, ++t, "13", "FR", "Paris", 2988507, &changed, &serial));
        ASSERT_EQ(0, changed);
        ASSERT_EQ(s0, serial_of(&f));
        /* The location changes: the serial moves with the connect. */
        ASSERT_EQ(1, connect_loc(&f, ++t, "13", "DE", "Berlin", 2950159, &changed, &serial));
        ASSERT_EQ(CP_STORE_PEER_CHANGED_POSTURE | CP_STORE_PEER_CHANGED_SERIAL, changed);
        ASSERT_EQ(s0 + 1, serial);
        ASSERT_EQ(s0 + 1, serial_of(&f));
        v = location_of(&f);
        ASSERT_STREQ("DE/Berlin/2950159", v);
        free(v);
        /* The OS version changes: again. */
        ASSERT_EQ(1, connect_loc(&f, ++t, "14", "DE", "Berlin", 2950159, &changed, &serial));
        ASSERT_EQ(CP_STORE_PEER_CHANGED_POSTURE | CP_STORE_PEER_CHANGED_SERIAL, changed);
        ASSERT_EQ(s0 + 2, serial_of(&f));
        /* A stale connect with another location writes nothing, bumps
         * nothing. */
        ASSERT_EQ(0, connect_loc(&f, t - 10, "15", "JP", "Tokyo", 1850147, &changed, &serial));
        ASSERT_EQ(0, changed);
        ASSERT_EQ(s0 + 2, serial_of(&f));
        v = location_of(&f);
        ASSERT_STREQ("DE/Berlin/2950159", v);
        free(v);
        v = peer_value(&f, "meta_os_version");
        ASSERT_STREQ("14", v);
        free(v);
        fixture_release(&f);
}

TEST(stale_connect_with_meta_writes_nothing) {
        fixture f;
        unsigned changed = 99;
        int64_t serial = -1, t = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_meta(&f, t, "owner", "0.60.0", "198.51.100.1", NULL, NULL, NULL));
        int64_t s0 = serial_of(&f);
        char *xmin = peer_value(&f, "xmin"), *xmax = peer_value(&f, "xmax");
        /* An older stream's connect arrives late, by each path: another
         * version (the locking statement), the stored version expected
         * (the plain connect, then the locking one), no expectation. */
        const char *versions[3] = { "0.61.0", "0.60.0", "0.61.0" };
        const char *expect[3] = { NULL, "0.60.0", "0.61.0" };
        for (int i = 0; i < 3; i++) {
                ASSERT_EQ(0, connect_meta(&f, t - 1, "zombie", versions[i], "203.0.113.9", expect[i], &changed,
                                          &serial));
                ASSERT_EQ(0, changed);
                ASSERT_EQ(0, serial);
                /* Equal is not newer either. */
                ASSERT_EQ(0, connect_meta(&f, t, "zombie", versions[i], "203.0.113.9", expect[i], NULL, NULL));
        }
        /* Nothing written: no new row version, not even a lock, the
         * owner's meta and address, the same serial. */
        char *xmin2 = peer_value(&f, "xmin"), *xmax2 = peer_value(&f, "xmax");
        ASSERT_STREQ(xmin, xmin2);
        ASSERT_STREQ(xmax, xmax2);
        free(xmin);
        free(xmin2);
        free(xmax);
        free(xmax2);
        char *v = peer_value(&f, "meta_hostname");
        ASSERT_STREQ("owner", v);
        free(v);
        v = peer_value(&f, "meta_wt_version");
        ASSERT_STREQ("0.60.0", v);
        free(v);
        v = peer_value(&f, "host(location_connection_ip)");
        ASSERT_STREQ("198.51.100.1", v);
        free(v);
        ASSERT_EQ(s0, serial_of(&f));
        ASSERT_EQ(t, status(&f).session_started_at);
        fixture_release(&f);
}

TEST(connect_sees_a_version_changed_since_the_caller_read_it) {
        fixture f;
        unsigned changed = 99;
        int64_t serial = -1, t = cp_now_unix_ns();

        fixture_init(&f, 2);
        ASSERT_EQ(1, connect_meta(&f, t, "h", "0.60.0", NULL, NULL, NULL, NULL));
        ASSERT_EQ(1, disconnect_(&f, t));
        /* A login stores another version after our read of "0.60.0". */
        const char *p[1] = { f.peer_id };
        free(cptest_db_query(f.db, "UPDATE peers SET meta_wt_version = '0.59.0' WHERE id = $1", 1, p));
        int64_t s0 = serial_of(&f);
        /* We send "0.60.0", expecting it stored: the guarded connect does
         * not land, the locking one does and sees the change. */
        ASSERT_EQ(1, connect_meta(&f, t + 1, "h", "0.60.0", NULL, "0.60.0", &changed, &serial));
        ASSERT_EQ(CP_STORE_PEER_CHANGED_WT_VERSION | CP_STORE_PEER_CHANGED_SERIAL, changed);
        ASSERT_EQ(s0 + 1, serial);
        ASSERT_EQ(s0 + 1, serial_of(&f));
        char *v = peer_value(&f, "meta_wt_version");
        ASSERT_STREQ("0.60.0", v);
        free(v);
        ASSERT_EQ(t + 1, status(&f).session_started_at);
        fixture_release(&f);
}

/* ---- races ---------------------------------------------------------------
 * nproc processes x THREADS threads share a barrier in shared memory. Each
 * round: every thread connects with a distinct token (slot order), then
 * the checker asserts the row holds the largest; then every thread tries
 * to disconnect with its own token, and exactly the owner's must land.
 * With meta, each connect also carries its own hostname ("s<slot>") and
 * the round's agent version, which changes every other round, by both
 * paths of cp_store_peer_connect: the owner's hostname must be stored,
 * and the serial must move exactly once in a round whose version is new. */
#define THREADS 16
#define MAX_PROCS 3

typedef struct race_shared {
        pthread_barrier_t barrier;
        atomic_int violations;
        atomic_int errors;
        atomic_int disconnects_landed;
        atomic_int owner_disconnected;
        atomic_int first_bad_round;
        _Atomic int64_t serial_before;  /* the account's serial as a round begins (meta) */
} race_shared;

typedef struct race_ctx {
        race_shared *sh;
        fixture *f;
        cp_store *store;        /* this process's own pool */
        int proc, nproc, rounds;
        int64_t base;
        bool meta;              /* connect with meta (cp_store_peer_connect) */
} race_ctx;

typedef struct race_thread {
        race_ctx *ctx;
        int slot;
} race_thread;

static void violation(race_shared *sh, int round) {
        int zero = 0;
        atomic_fetch_add(&sh->violations, 1);
        atomic_compare_exchange_strong(&sh->first_bad_round, &zero, round);
}

/* The round's agent version: a new one in round 1 and every even round. */
static int race_version(int round) {
        return round / 2;
}

static int64_t race_serial(race_ctx *c) {
        cp_store_account_settings st;
        cp_error err;

        return cp_store_account_get_settings(c->store, c->f->acct.account_id, &st, &err) < 0 ? -1
                                                                                            : st.network_serial;
}

/* Half the threads expect the stored version to be the one they send (the
 * plain connect first), the others know nothing (the locking one). */
static int race_connect_meta(race_ctx *c, int round, int slot, int64_t token) {
        char host[16], version[16];
        cp_error err;

        (void) snprintf(host, sizeof host, "s%d", slot);
        (void) snprintf(version, sizeof version, "v%d", race_version(round));
        cp_store_peer_meta m = { .hostname = host, .wt_version = version };
        cp_store_peer_connect_req req = { .token = token, .meta = &m, .expect_wt_version = slot % 2 ? version : NULL };
        return cp_store_peer_connect(c->store, c->f->acct.account_id, c->f->peer_id, &req, NULL, NULL, &err);
}

/* After the connects of a round: the owner's hostname and the round's
 * version are stored, and the serial moved once if the version is new. */
static bool race_meta_ok(race_ctx *c, int round, int owner_slot) {
        cp_store_peer *p = NULL;
        cp_error err;
        char host[16], version[16];
        bool changed = round == 1 || race_version(round) != race_version(round - 1);
        int64_t before = atomic_load(&c->sh->serial_before), now = race_serial(c);

        if (cp_store_peer_get(c->store, c->f->acct.account_id, c->f->peer_id, &p, &err) < 0)
                return false;
        (void) snprintf(host, sizeof host, "s%d", owner_slot);
        (void) snprintf(version, sizeof version, "v%d", race_version(round));
        bool ok = strcmp(p->meta.hostname, host) == 0 && strcmp(p->meta.wt_version, version) == 0 &&
                  before >= 0 && now == before + (changed ? 1 : 0);
        if (!ok)
                printf("# round %d: hostname %s (want %s), version %s (want %s), serial %" PRId64
                       " -> %" PRId64 " (%s)\n", round, p->meta.hostname, host, p->meta.wt_version, version,
                       before, now, changed ? "want +1" : "want +0");
        cp_store_peer_free(p);
        return ok;
}

static void *race_thread_main(void *arg) {
        race_thread *t = arg;
        race_ctx *c = t->ctx;
        race_shared *sh = c->sh;
        int slots = c->nproc * THREADS;
        bool checker = t->slot == 0;
        cp_error err;

        for (int round = 1; round <= c->rounds; round++) {
                int64_t my = c->base + (int64_t) round * 1000 + t->slot;
                int64_t max = c->base + (int64_t) round * 1000 + slots - 1;
                int r;

                if (checker && c->meta)
                        atomic_store(&sh->serial_before, race_serial(c));
                pthread_barrier_wait(&sh->barrier);
                if (c->meta)
                        r = race_connect_meta(c, round, t->slot, my);
                else
                        r = cp_store_peer_mark_connected(c->store, c->f->acct.account_id, c->f->peer_id, my, &err);
                if (r < 0)
                        atomic_fetch_add(&sh->errors, 1);
                pthread_barrier_wait(&sh->barrier);
                if (checker) {
                        cp_store_peer_status st;
                        if (cp_store_peer_get_status(c->store, c->f->acct.account_id, c->f->peer_id, &st, &err) < 0)
                                atomic_fetch_add(&sh->errors, 1);
                        else if (!st.connected || st.session_started_at != max)
                                violation(sh, round);
                        if (c->meta && !race_meta_ok(c, round, slots - 1))
                                violation(sh, round);
                        atomic_store(&sh->disconnects_landed, 0);
                        atomic_store(&sh->owner_disconnected, 0);
                }
                pthread_barrier_wait(&sh->barrier);
                r = cp_store_peer_mark_disconnected(c->store, c->f->acct.account_id, c->f->peer_id, my, &err);
                if (r < 0)
                        atomic_fetch_add(&sh->errors, 1);
                else if (r == 1) {
                        atomic_fetch_add(&sh->disconnects_landed, 1);
                        if (my == max)
                                atomic_store(&sh->owner_disconnected, 1);
                }
                pthread_barrier_wait(&sh->barrier);
                if (checker) {
                        cp_store_peer_status st;
                        if (atomic_load(&sh->disconnects_landed) != 1 || !atomic_load(&sh->owner_disconnected))
                                violation(sh, round);
                        if (cp_store_peer_get_status(c->store, c->f->acct.account_id, c->f->peer_id, &st, &err) < 0)
                                atomic_fetch_add(&sh->errors, 1);
                        else if (st.connected || st.session_started_at != 0)
                                violation(sh, round);
                }
        }
        return NULL;
}

/* Runs in each process: its own pool, THREADS threads. */
static int race_process(race_ctx *c) {
        pthread_t th[THREADS];
        race_thread args[THREADS];
        cp_error err;

        if (cp_store_open(c->f->db->dsn, THREADS, &c->store, &err) < 0) {
                fprintf(stderr, "# race process %d: %s\n", c->proc, err.message);
                return 1;
        }
        for (int i = 0; i < THREADS; i++) {
                args[i].ctx = c;
                /* Interleave slots across processes so no process owns the max. */
                args[i].slot = i * c->nproc + c->proc;
                if (pthread_create(&th[i], NULL, race_thread_main, &args[i]) != 0)
                        abort();
        }
        for (int i = 0; i < THREADS; i++)
                pthread_join(th[i], NULL);
        c->store = cp_store_free(c->store);
        return 0;
}

static void run_race(int nproc, int rounds, bool meta) {
        fixture f;
        pid_t pids[MAX_PROCS];
        pthread_barrierattr_t attr;

        fixture_init(&f, 1);
        race_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ASSERT_TRUE(sh != MAP_FAILED);
        memset(sh, 0, sizeof *sh);
        pthread_barrierattr_init(&attr);
        pthread_barrierattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        ASSERT_EQ(0, pthread_barrier_init(&sh->barrier, &attr, (unsigned) (nproc * THREADS)));
        pthread_barrierattr_destroy(&attr);

        race_ctx ctx = { .sh = sh, .f = &f, .nproc = nproc, .rounds = rounds, .base = cp_now_unix_ns(),
                         .meta = meta };
        /* The parent's pool is idle during the race; children build their own. */
        for (int p = 0; p < nproc; p++) {
                pid_t pid = fork();
                ASSERT_TRUE(pid >= 0);
                if (pid == 0) {
                        ctx.proc = p;
                        _exit(race_process(&ctx));
                }
                pids[p] = pid;
        }

        /* Wait with a deadline so a stuck barrier fails instead of hanging. */
        int64_t deadline = cp_now_mono_ms() + 600 * 1000;
        int alive = nproc, bad_exit = 0;
        while (alive > 0) {
                int wst;
                pid_t w = waitpid(-1, &wst, WNOHANG);
                if (w > 0) {
                        alive--;
                        if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
                                bad_exit++;
                        continue;
                }
                if (cp_now_mono_ms() > deadline) {
                        for (int p = 0; p < nproc; p++)
                                (void) kill(pids[p], SIGKILL);
                        while (waitpid(-1, NULL, 0) > 0)
                                ;
                        cptest_fail(__FILE__, __LINE__, "race did not finish in time");
                }
                usleep(20000);
        }
        int violations = atomic_load(&sh->violations), errors = atomic_load(&sh->errors);
        int first = atomic_load(&sh->first_bad_round);
        pthread_barrier_destroy(&sh->barrier);
        munmap(sh, sizeof *sh);
        printf("# %d process(es) x %d threads, %d rounds%s: %d violations, %d errors\n",
               nproc, THREADS, rounds, meta ? " with meta" : "", violations, errors);
        if (violations)
                printf("# first violation in round %d\n", first);
        ASSERT_EQ(0, bad_exit);
        ASSERT_EQ(0, errors);
        ASSERT_EQ(0, violations);
        fixture_release(&f);
}

static int rounds_from_env(int dflt) {
        const char *s = getenv("CP_FENCE_ROUNDS");
        int64_t v;
        return s && cp_parse_int64(s, 1, 1000000, &v) == 0 ? (int) v : dflt;
}

TEST(sixteen_threads_racing_connects_leave_the_highest_token) {
        run_race(1, 50, false);
}

TEST(three_processes_by_sixteen_threads_for_many_rounds) {
        run_race(MAX_PROCS, rounds_from_env(1000), false);
}

TEST(three_processes_racing_connects_with_meta_leave_the_owners_meta) {
        run_race(MAX_PROCS, rounds_from_env(300), true);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
