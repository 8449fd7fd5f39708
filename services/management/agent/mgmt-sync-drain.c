/*
 * The end of Sync streams in bulk (mgmt-sync.h): the shutdown drain,
 * spread over --drain-window in steps the runtime's timer asks for
 * (mgmt_sync_drain_step), or all at once with a zero window; and the
 * endings that are not a shutdown: every stream when this replica's
 * sessions were lost, or those sealed with a server key that was
 * retired. Each stream ends with UNAVAILABLE and keeps its registry
 * entry, so on_close issues its own fenced disconnect. Runs on the CQ
 * thread (mgmt-sync-int.h) apart from the posting entry points.
 */
#include "mgmt-sync-int.h"

#include <inttypes.h>

#define MSG_SHUTDOWN "server is shutting down"
#define MSG_SESSION_LOST "session lost on this server, please reconnect"
#define MSG_KEY_RETIRED "server key rotated, please reconnect"

static const cp_log_ctx log_ctx = { .component = "sync" };

/* ---- drain ----------------------------------------------------------------------------------- */

static void collect_stream(const char *key, void *value, void *userdata) {
        sync_stream ***out = userdata;

        *(*out)++ = value;
}

/* CQ thread: ends with UNAVAILABLE every registered stream, or with key
 * set only those sealed with that server key. Returns how many it ended
 * (not those already ending). */
static size_t end_streams(mgmt_sync *h, const char *key, const char *message, const char *reason) {
        size_t n = mgmt_strmap_size(h->peers), ended = 0;
        sync_stream **all, **end;
        char count[32];

        all = cp_xcalloc(n ? n : 1, sizeof *all);
        end = all;
        mgmt_strmap_foreach(h->peers, collect_stream, &end);
        /* Still registered, so on_close disconnects them with their own
         * tokens once the status went out. */
        for (sync_stream **p = all; p < end; p++)
                if ((!key || strcmp((*p)->server_key, key) == 0) && !(*p)->ending && !(*p)->closed) {
                        mgmt_sync__stream_end(*p, GRPC_STATUS_UNAVAILABLE, message, reason);
                        ended++;
                }
        free(all);
        (void) snprintf(count, sizeof count, "%zu", ended);
        cp_log_kv(&log_ctx, CP_LOG_INFO, "ending sync streams", "streams", count, "reason", reason, NULL);
        return ended;
}

typedef struct drain_post {
        mgmt_sync *hub;
        int64_t window_ms;
} drain_post;

static void collect_live(const char *key, void *value, void *userdata) {
        sync_stream ***out = userdata;
        sync_stream *s = value;

        if (!s->ending && !s->closed)
                *(*out)++ = s;
}

/* CQ thread: one step of a spread drain. The streams still to end get
 * their share of the time left: with R of them left, dt since the
 * previous step and T until the window's end, ceil(R * dt / T) of them,
 * picked at random (a partial Fisher-Yates shuffle), so the endings, and
 * the agents' reconnects, are spread evenly over the window whatever the
 * order of the registry. Each ends as in end_streams(): UNAVAILABLE, and
 * the fenced disconnect in on_close. */
static void drain_step(mgmt_sync *h) {
        int64_t now = cp_now_mono_ms();
        size_t n = mgmt_strmap_size(h->peers), live, k;
        sync_stream **all, **end;

        if (!h->draining || atomic_load(&h->drain_done))
                return;
        all = cp_xcalloc(n ? n : 1, sizeof *all);
        end = all;
        mgmt_strmap_foreach(h->peers, collect_live, &end);
        live = (size_t) (end - all);
        if (now >= h->drain_end_ms || live == 0)
                k = live;
        else {
                int64_t dt = now - h->drain_last_ms, left = h->drain_end_ms - h->drain_last_ms;
                k = (size_t) (((int64_t) live * dt + left - 1) / left);
                if (k > live)
                        k = live;
        }
        h->drain_last_ms = now;
        for (size_t i = 0; i < k; i++) {
                size_t j = i + (size_t) cp_random_uniform(live - i);
                sync_stream *t = all[i];

                all[i] = all[j];
                all[j] = t;
                mgmt_sync__stream_end(all[i], GRPC_STATUS_UNAVAILABLE, MSG_SHUTDOWN, "server shutting down");
        }
        free(all);
        h->n_drained += k;
        if (k)
                mgmt_metrics_sync_drained((unsigned) k);
        if (k == live) {
                atomic_store(&h->drain_done, true);
                cp_log(&log_ctx, CP_LOG_INFO, "drain done: every sync stream was ended");
        }
}

static void on_drain(mgmt_grpc *g, void *userdata) {
        drain_post *p = userdata;
        mgmt_sync *h = p->hub;
        int64_t window = p->window_ms;

        free(p);
        if (h->draining)
                return;
        h->draining = true;
        if (window <= 0) {
                size_t n = end_streams(h, NULL, MSG_SHUTDOWN, "server shutting down");

                atomic_store(&h->drain_done, true);
                h->n_drained += n;
                if (n)
                        mgmt_metrics_sync_drained((unsigned) n);
                return;
        }
        char count[32], ms[32];

        h->drain_last_ms = cp_now_mono_ms();
        h->drain_end_ms = h->drain_last_ms + window;
        (void) snprintf(count, sizeof count, "%zu", mgmt_strmap_size(h->peers));
        (void) snprintf(ms, sizeof ms, "%" PRId64 "ms", window);
        cp_log_kv(&log_ctx, CP_LOG_INFO, "ending sync streams over the drain window", "streams", count, "window",
                  ms, NULL);
}

static void on_drain_step(mgmt_grpc *g, void *userdata) {
        drain_step(userdata);
}

static void on_reconnect_all(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;

        /* During a spread drain the streams not ended yet end now. */
        if (!atomic_load(&h->drain_done))
                (void) end_streams(h, NULL, MSG_SESSION_LOST, "replica sessions lost");
}

void mgmt_sync_reconnect_all(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (g)
                mgmt_grpc_post(g, on_reconnect_all, h);
}

typedef struct key_post {
        mgmt_sync *hub;
        char key[CP_WG_KEY_B64_LEN];
} key_post;

static void on_key_dropped(mgmt_grpc *g, void *userdata) {
        key_post *p = userdata;

        if (!atomic_load(&p->hub->drain_done))
                (void) end_streams(p->hub, p->key, MSG_KEY_RETIRED, "server key retired");
        free(p);
}

void mgmt_sync_end_key(mgmt_sync *h, const char *pub_b64) {
        mgmt_grpc *g = atomic_load(&h->grpc);
        key_post *p;

        if (!g)
                return;
        p = cp_xcalloc(1, sizeof *p);
        p->hub = h;
        (void) snprintf(p->key, sizeof p->key, "%s", pub_b64);
        if (!mgmt_grpc_post(g, on_key_dropped, p))
                free(p);
}

void mgmt_sync_drain(mgmt_sync *h, int64_t window_ms) {
        mgmt_grpc *g = atomic_load(&h->grpc);
        drain_post *p;

        if (!g) {
                atomic_store(&h->drain_done, true);
                return;
        }
        p = cp_xcalloc(1, sizeof *p);
        p->hub = h;
        p->window_ms = window_ms;
        if (!mgmt_grpc_post(g, on_drain, p)) {
                /* The server stopped: no stream is left to end. */
                free(p);
                atomic_store(&h->drain_done, true);
        }
}

bool mgmt_sync_drain_step(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (!g || atomic_load(&h->drain_done))
                return false;
        mgmt_grpc_post(g, on_drain_step, h);
        return true;
}
