/*
 * The periodic checks of the Sync hub (mgmt-sync.h): the serial check,
 * which notices changes made where no bus message reached this replica,
 * and the login expiry check, which marks expired SSO logins and deletes
 * the ephemeral peers disconnected for their lifetime. Both run their
 * statements on a worker and act on the CQ thread (mgmt-sync-int.h).
 */
#include "mgmt-sync-int.h"

#include "cp/store-ephemeral.h"
#include "cp/store-expose.h"
#include "mgmt-expose.h"

static const cp_log_ctx log_ctx = { .component = "sync" };

/* ---- periodic serial check ------------------------------------------------------------------- */

typedef struct serial_check {
        mgmt_sync *hub;
        size_t n;
        char (*ids)[64];
        int64_t *serials;
        int r;
        cp_error err;
} serial_check;

static void serial_check_free(serial_check *c) {
        free(c->ids);
        free(c->serials);
        free(c);
}

typedef struct collect_ctx {
        serial_check *c;
        size_t cap;
} collect_ctx;

static void collect_acct(const char *key, void *value, void *userdata) {
        collect_ctx *x = userdata;
        sync_acct *a = value;

        if (a->n_streams == 0 || x->c->n >= x->cap)
                return;
        (void) snprintf(x->c->ids[x->c->n++], sizeof x->c->ids[0], "%s", a->id);
}

/* Worker: one query for every account. */
static void serial_check_work(void *userdata) {
        serial_check *c = userdata;
        const char **ids = cp_xcalloc(c->n, sizeof *ids);

        for (size_t i = 0; i < c->n; i++)
                ids[i] = c->ids[i];
        c->r = cp_store_account_serials(c->hub->agent->store, ids, c->n, c->serials, &c->err);
        free(ids);
}

static void serial_check_done(mgmt_grpc *g, void *userdata) {
        serial_check *c = userdata;
        mgmt_sync *h = c->hub;

        h->checking = false;
        if (h->check_again) {
                /* Asked for while this one ran (the bus came back): the
                 * answer must come from a query that started after. */
                h->check_again = false;
                mgmt_sync_check_serials(h);
        }
        if (c->r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot read the account serials", "error", c->err.message, NULL);
                serial_check_free(c);
                return;
        }
        for (size_t i = 0; i < c->n; i++) {
                sync_acct *a = mgmt_strmap_get(h->accts, c->ids[i]);
                char from[24], to[24];
                int64_t lo = INT64_MAX, hi = 0;

                if (!a || a->n_streams == 0)
                        continue;
                /* Pushed when the database's serial differs from what the
                 * streams have, in either direction (lower: a restored
                 * database; the fan-out raises it). Streams that
                 * registered meanwhile got a map read after the query: a
                 * newer one makes the fan-out re-read and find no
                 * difference. -1: the account is gone (deleted
                 * elsewhere); the fan-out finds it so and ends its
                 * streams. */
                for (sync_stream *s = a->streams; s; s = s->acct_next) {
                        if (s->ending)
                                continue;
                        if (s->last_serial < lo)
                                lo = s->last_serial;
                        if (s->last_serial > hi)
                                hi = s->last_serial;
                }
                if (lo == INT64_MAX || (c->serials[i] == lo && c->serials[i] == hi))
                        continue;
                (void) snprintf(from, sizeof from, "%" PRId64, hi);
                (void) snprintf(to, sizeof to, "%" PRId64, c->serials[i]);
                cp_log_ctx ctx = { .component = "sync", .account = a->id };
                cp_log_kv(&ctx, CP_LOG_DEBUG, "serial moved elsewhere; pushing", "from", from, "to", to, NULL);
                if (a->building)
                        a->dirty = true;
                else
                        mgmt_sync__fanout_start(h, a, false);
        }
        serial_check_free(c);
}

static void on_check_serials(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;
        size_t n = mgmt_strmap_size(h->accts);
        serial_check *c;

        if (h->checking) {
                h->check_again = true;
                return;
        }
        /* Until a spread drain has ended every stream, the ones left
         * still catch up (docs/ops.md). */
        if (atomic_load(&h->drain_done) || n == 0)
                return;
        c = cp_xcalloc(1, sizeof *c);
        c->hub = h;
        c->ids = cp_xcalloc(n, sizeof *c->ids);
        collect_ctx x = { .c = c, .cap = n };
        mgmt_strmap_foreach(h->accts, collect_acct, &x);
        if (c->n == 0) {
                serial_check_free(c);
                return;
        }
        c->serials = cp_xcalloc(c->n, sizeof *c->serials);
        h->checking = true;
        /* Not forced: with the workers busy, the next tick tries again. */
        if (mgmt_grpc_offload(g, serial_check_work, serial_check_done, c, false) < 0) {
                h->checking = false;
                serial_check_free(c);
        }
}

void mgmt_sync_check_serials(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (g)
                mgmt_grpc_post(g, on_check_serials, h);
}

/* ---- periodic login expiry check ------------------------------------------------------------ */

typedef struct expiry_check {
        mgmt_sync *hub;
        cp_store_expired_account *accts;
        size_t n;
        cp_store_expired_peer *peers;   /* the peers this check marked */
        size_t n_peers;
        int64_t queued_ms;              /* monotonic, when the check was queued */
        int r;
        cp_error err;
        /* The ephemeral sweep on the same beat: the accounts it changed. */
        cp_store_expired_account *eph_accts;
        size_t n_eph;
        cp_store_expired_peer *eph_peers;
        size_t n_eph_peers;
        int eph_r;
        cp_error eph_err;
        /* The expired peer-exposed services on the same beat. */
        cp_store_expired_expose *exposes;
        size_t n_exposes;
        int64_t expose_seq;
        int expose_r;
        cp_error expose_err;
} expiry_check;

/* Worker: one statement marks what expired since the last check (by any
 * replica: each peer goes to exactly one caller). */
static void expiry_check_work(void *userdata) {
        expiry_check *c = userdata;

        c->r = cp_store_expire_logins(c->hub->agent->store, c->hub->agent->config->dns_domain, &c->accts, &c->n,
                                      &c->peers, &c->n_peers, &c->err);
        /* The one-time JWT claims whose token has expired are of no use
         * any more (the validator refuses such a token): dropped on the
         * same beat. A failure only leaves rows for the next check. */
        (void) cp_store_jwt_claims_gc(c->hub->agent->store, NULL, NULL);
        /* Ephemeral peers disconnected for their lifetime are deleted
         * (NetBird's ephemeral manager; any replica, each peer once). */
        int64_t lifetime = c->hub->agent->config->ephemeral_peer_lifetime_ms;
        if (lifetime > 0)
                c->eph_r = cp_store_ephemeral_sweep(c->hub->agent->store, lifetime,
                                                    c->hub->agent->config->dns_domain, &c->eph_accts,
                                                    &c->n_eph, &c->eph_peers, &c->n_eph_peers, &c->eph_err);
        /* Peer-exposed services past their TTL (NetBird's expose reaper;
         * any replica, each row once, with its REMOVED change row). */
        c->expose_r = cp_store_expose_sweep(c->hub->agent->store, &c->exposes, &c->n_exposes, &c->expose_seq,
                                            &c->expose_err);
}

/* After the expose sweep's commit: the proxies learn of the removals. */
static void expose_done(mgmt_sync *h, expiry_check *c) {
        if (c->expose_r < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot delete expired exposed services", "error",
                          c->expose_err.message, NULL);
        for (size_t i = 0; i < c->n_exposes; i++) {
                cp_log_ctx ctx = { .component = "sync", .account = c->exposes[i].account_id };
                cp_log_kv(&ctx, CP_LOG_INFO, "expired expose session removed", "peer", c->exposes[i].peer_id,
                          "domain", c->exposes[i].domain, NULL);
        }
        mgmt_expose_changed(h->agent, c->expose_seq);
        free(c->exposes);
}

/* After the sweep's commit: each changed account's new serial is
 * announced (the other replicas push it) and pushed to the streams here;
 * the deleted peers leave every map. */
static void ephemeral_done(mgmt_sync *h, expiry_check *c) {
        if (c->eph_r < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot delete ephemeral peers", "error", c->eph_err.message, NULL);
        for (size_t i = 0; i < c->n_eph_peers; i++) {
                cp_log_ctx ctx = { .component = "sync", .account = c->eph_peers[i].account_id };
                cp_log_kv(&ctx, CP_LOG_INFO, "ephemeral peer deleted after its idle time", "peer",
                          c->eph_peers[i].peer_id, NULL);
        }
        for (size_t i = 0; i < c->n_eph; i++)
                mgmt_sync_local_change(h, c->eph_accts[i].account_id, c->eph_accts[i].serial);
        free(c->eph_accts);
        free(c->eph_peers);
}

static void expiry_check_done(mgmt_grpc *g, void *userdata) {
        expiry_check *c = userdata;
        mgmt_sync *h = c->hub;

        h->expiring = false;
        if (c->r < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot expire peer logins", "error", c->err.message, NULL);
        /* The expired peers' own streams here end (OK, as NetBird closes
         * their update channels); the agent's next open is refused with
         * "login expired". Still registered, so on_close disconnects them
         * with their own tokens. A stream that started after the check
         * was queued passed its own expiry check (a re-login since):
         * left alone. Streams on other replicas end with the fan-out the
         * serial bump below starts there (chunk_done). */
        for (size_t i = 0; c->r >= 0 && i < c->n_peers; i++) {
                sync_stream *s = mgmt_strmap_get(h->peers, c->peers[i].peer_id);
                if (!s || s->ending || s->started_ms >= c->queued_ms ||
                    strcmp(s->account_id, c->peers[i].account_id) != 0)
                        continue;
                mgmt_sync__stream_end(s, GRPC_STATUS_OK, NULL, "login expired");
        }
        for (size_t i = 0; c->r >= 0 && i < c->n; i++) {
                char serial[24];
                cp_log_ctx ctx = { .component = "sync", .account = c->accts[i].account_id };

                (void) snprintf(serial, sizeof serial, "%" PRId64, c->accts[i].serial);
                cp_log_kv(&ctx, CP_LOG_INFO, "peer logins expired", "serial", serial, NULL);
                /* The expired peers go to offlinePeers in everyone's map. */
                mgmt_sync_local_change(h, c->accts[i].account_id, c->accts[i].serial);
        }
        ephemeral_done(h, c);
        expose_done(h, c);
        free(c->accts);
        free(c->peers);
        free(c);
}

static void on_expire_logins(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;
        expiry_check *c;

        if (h->expiring || h->draining)
                return;
        c = cp_xcalloc(1, sizeof *c);
        c->hub = h;
        c->queued_ms = cp_now_mono_ms();
        h->expiring = true;
        /* Not forced: with the workers busy, the next tick tries again. */
        if (mgmt_grpc_offload(g, expiry_check_work, expiry_check_done, c, false) < 0) {
                h->expiring = false;
                free(c);
        }
}

void mgmt_sync_expire_logins(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (g)
                mgmt_grpc_post(g, on_expire_logins, h);
}
