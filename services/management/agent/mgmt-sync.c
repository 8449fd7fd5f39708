/*
 * The Sync RPC and the registry of open streams (mgmt-sync.h).
 *
 * Life of a stream (all on the CQ thread unless marked "worker"):
 *
 *   on_call      cap check, a sync_stream, offload the open
 *   open (worker) envelope, peer by key, expiry, meta checked, session
 *                token from the database clock, fenced connect, then (only
 *                if it landed) meta and connection IP stored (fenced with
 *                the token), first map sealed
 *   open_done    error -> status; stale connect -> end OK, no side
 *                effects; otherwise register (a stream with a smaller
 *                token for the same peer ends OK), send the first map,
 *                side effects (fan-out) after the connect committed
 *   live         maps queued by fan-out, one in flight, one pending slot
 *   end          replaced / deleted / drain: status after the last send
 *   on_close     unregister (only if the registry still points at this
 *                stream) and the fenced disconnect with the stream's own
 *                token, offloaded; skipped when a newer stream's connect
 *                has landed (it cannot match any more)
 *
 * Ownership: a sync_stream is reference-counted on the CQ thread: one
 * reference while the call is open (dropped in on_close) and one per job
 * that reads it on a worker (open, fan-out targets, disconnect). It holds
 * a reference on its mgmt_call until it is freed. Workers read only the
 * fields fixed by the open job (ids, key, shared secret, token) and write
 * only the open job's results, which the CQ thread reads after the job's
 * post.
 *
 * "CQ thread" here means the handler lock of mgmt-grpc.h: the server has
 * several CQ threads, and whichever one handles an event holds the lock,
 * so everything marked CQ thread is still touched by one thread at a
 * time. A fan-out's load_done and each chunk's chunk_done run on the
 * worker that did the work, under the same lock (mgmt_grpc_offload_here),
 * with no hop through a queue: the chunks are queued as soon as the map
 * is loaded, and the maps start their sends on the worker that sealed
 * them while other workers still seal, with the same
 * rules as anywhere (no map goes backwards, a newer map replaces an unsent
 * one, a credential refresh goes first, the status after the last
 * message).
 */
#include "mgmt-malloc.h"
#include "mgmt-sync-int.h"

#include "cp/store-tenant.h"

/* Fan-out: targets per worker job once the account's map is loaded. */
#define FANOUT_CHUNK 64
/* Account entries kept for opens in progress by bus hints, at most
 * (beyond: lost_hints, mgmt-sync-int.h). */
#define KEPT_HINTS_MAX 4096

#define MSG_NOT_REGISTERED "peer is not registered"
#define MSG_TOO_MANY "too many concurrent sync requests, please try again later"
#define MSG_INTERNAL "failed handling request"
#define MSG_SHUTDOWN "server is shutting down"

static const cp_log_ctx log_ctx = { .component = "sync" };


/* ---- streams: lifetime ------------------------------------------------------ */

static sync_stream *stream_ref(sync_stream *s) {
        s->refs++;
        return s;
}

/* ---- delivery (netbird_cp_sync_delivery_seconds) ------------------------------ */

static sync_delivery *dlv_new(int64_t t0_ns, bool bus) {
        sync_delivery *d = cp_xcalloc(1, sizeof *d);

        atomic_init(&d->refs, 1);       /* the fan-out's */
        atomic_init(&d->written, false);
        d->t0_ns = t0_ns;
        d->bus = bus;
        return d;
}

static sync_delivery *dlv_ref(sync_delivery *d) {
        if (d)
                atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
        return d;
}

/* One map of the fan-out was written (written) or dropped, or the fan-out
 * queued them all (written false); the last one observes. */
static void dlv_done(sync_delivery *d, bool written) {
        if (!d)
                return;
        if (written)
                atomic_store_explicit(&d->written, true, memory_order_relaxed);
        if (atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1)
                return;
        if (atomic_load_explicit(&d->written, memory_order_relaxed))
                mgmt_metrics_sync_delivery(d->bus, d->t0_ns);
        free(d);
}

/* Drops the unsent map, if any. */
static void stream_drop_pending(sync_stream *s) {
        free(s->pending);
        s->pending = NULL;
        s->pending_len = 0;
        dlv_done(s->pending_dlv, false);
        s->pending_dlv = NULL;
}

static void stream_unref(sync_stream *s) {
        if (!s || --s->refs > 0)
                return;
        if (s->have_shared)
                cp_crypto_box_shared_release(&s->shared);
        free(s->first);
        stream_drop_pending(s);
        dlv_done(s->sending_dlv, false);
        free(s->refresh);
        mgmt_call_unref(s->call);
        free(s);
}

/* ---- accounts --------------------------------------------------------------- */

static sync_acct *acct_get(mgmt_sync *h, const char *id, bool create) {
        sync_acct *a = mgmt_strmap_get(h->accts, id);

        if (a || !create)
                return a;
        a = cp_xcalloc(1, sizeof *a);
        (void) snprintf(a->id, sizeof a->id, "%s", id);
        (void) mgmt_strmap_put(h->accts, id, a);
        return a;
}

/* Frees an account entry nobody needs: no streams, no fan-out running.
 * While opens are in progress it is kept instead (one of them may
 * register into this account and must see the serial a change announced
 * meanwhile) and freed by accts_sweep() after the last one. */
static void acct_maybe_free(mgmt_sync *h, sync_acct *a) {
        if (!a || a->n_streams > 0 || a->building || a->kept)
                return;
        if (h->setups > 0) {
                a->kept = true;
                a->kept_next = h->kept;
                h->kept = a;
                h->n_kept++;
                return;
        }
        (void) mgmt_strmap_remove(h->accts, a->id);
        free(a);
}

/* After the last open in progress: drop the entries kept for it (only
 * those: this runs after every open). */
static void accts_sweep(mgmt_sync *h) {
        if (h->setups > 0)
                return;
        while (h->kept) {
                sync_acct *a = h->kept;
                h->kept = a->kept_next;
                h->n_kept--;
                a->kept = false;
                a->kept_next = NULL;
                acct_maybe_free(h, a);
        }
}

/* ---- the credential refresh list ------------------------------------------------ */

/* The list is sorted by refresh_due_ms. Due times are nearly always
 * appended in order (now + the one interval), so the walk from the tail
 * is short. */
static void refresh_insert(mgmt_sync *h, sync_stream *s, int64_t due_ms) {
        sync_stream *after = h->refresh_tail;

        s->refresh_due_ms = due_ms;
        while (after && after->refresh_due_ms > due_ms)
                after = after->refresh_prev;
        s->refresh_prev = after;
        s->refresh_next = after ? after->refresh_next : h->refresh_head;
        if (s->refresh_next)
                s->refresh_next->refresh_prev = s;
        else
                h->refresh_tail = s;
        if (after)
                after->refresh_next = s;
        else
                h->refresh_head = s;
        s->on_refresh_list = true;
}

static void refresh_remove(mgmt_sync *h, sync_stream *s) {
        if (!s->on_refresh_list)
                return;
        if (s->refresh_prev)
                s->refresh_prev->refresh_next = s->refresh_next;
        else
                h->refresh_head = s->refresh_next;
        if (s->refresh_next)
                s->refresh_next->refresh_prev = s->refresh_prev;
        else
                h->refresh_tail = s->refresh_prev;
        s->refresh_prev = s->refresh_next = NULL;
        s->on_refresh_list = false;
}

/* ---- the registry ------------------------------------------------------------ */

static void registry_add(mgmt_sync *h, sync_stream *s) {
        sync_acct *a = acct_get(h, s->account_id, true);

        if (h->refresh_ms > 0)
                refresh_insert(h, s, s->creds_ms + h->refresh_ms);

        (void) mgmt_strmap_put(h->peers, s->peer_id, s);
        s->registered = true;
        s->acct = a;
        s->acct_prev = NULL;
        s->acct_next = a->streams;
        if (a->streams)
                a->streams->acct_prev = s;
        a->streams = s;
        a->n_streams++;
        mgmt_metrics_sync_streams(1);
}

/* Removes s only if the registry still points at it: an older stream's
 * end never removes a newer one. */
static void registry_remove(mgmt_sync *h, sync_stream *s) {
        sync_acct *a = s->acct;

        if (!s->registered)
                return;
        refresh_remove(h, s);
        if (mgmt_strmap_get(h->peers, s->peer_id) == s)
                (void) mgmt_strmap_remove(h->peers, s->peer_id);
        if (s->acct_prev)
                s->acct_prev->acct_next = s->acct_next;
        else
                a->streams = s->acct_next;
        if (s->acct_next)
                s->acct_next->acct_prev = s->acct_prev;
        a->n_streams--;
        mgmt_metrics_sync_streams(-1);
        s->registered = false;
        s->acct = NULL;
        s->acct_prev = s->acct_next = NULL;
        acct_maybe_free(h, a);
}

/* ---- sending ----------------------------------------------------------------- */

static void on_sent(mgmt_call *c, bool ok, void *userdata);

/* Starts sending data (copied), or finishes the call when there is
 * nothing left to send and the stream is ending. */
static void pump(sync_stream *s) {
        if (s->closed || mgmt_call_sending(s->call))
                return;
        if (s->refresh || s->pending) {
                /* A pending credential refresh goes first: it is small and
                 * its own slot, so a map replacing the pending map never
                 * drops it (nor it the map). */
                uint8_t *m = s->refresh ? s->refresh : s->pending;
                size_t n = s->refresh ? s->refresh_len : s->pending_len;
                if (s->refresh) {
                        s->refresh = NULL;
                        s->refresh_len = 0;
                } else {
                        s->pending = NULL;
                        s->pending_len = 0;
                        s->sending_dlv = s->pending_dlv;
                        s->pending_dlv = NULL;
                }
                stream_ref(s);
                int r = mgmt_call_send_take(s->call, m, n, on_sent, s);
                if (r == 0)
                        return;
                dlv_done(s->sending_dlv, false);
                s->sending_dlv = NULL;
                stream_unref(s);
                /* -EPIPE: the client is gone and on_close is on its way. */
                cp_log_kv(mgmt_call_log(s->call), r == -EPIPE ? CP_LOG_DEBUG : CP_LOG_WARN,
                          "cannot send a sync message", "error", strerror(-r), NULL);
                if (!s->ending)
                        mgmt_sync__stream_end(s, GRPC_STATUS_INTERNAL, MSG_INTERNAL, "send failed");
        }
        if (s->ending)
                mgmt_call_finish(s->call, s->end_status, s->end_message);
}

static void on_sent(mgmt_call *c, bool ok, void *userdata) {
        sync_stream *s = userdata;

        dlv_done(s->sending_dlv, ok);
        s->sending_dlv = NULL;
        if (ok)
                pump(s);
        /* !ok: the call is dead; on_close says why. */
        stream_unref(s);
}

/* Queues one map (takes msg, malloc'd) of the fan-out dlv (NULL: none;
 * a reference is taken when queued). Maps never go backwards on a
 * stream; a newer map replaces one still waiting (the agent only needs
 * the newest full map). final: the stream ends after this map. */
static void stream_queue(sync_stream *s, uint8_t *msg, size_t len, int64_t serial, bool final, sync_delivery *dlv) {
        if (s->closed || s->ending || serial < s->last_serial) {
                free(msg);
                return;
        }
        s->last_serial = serial;
        stream_drop_pending(s);
        s->pending = msg;
        s->pending_len = len;
        s->pending_dlv = dlv_ref(dlv);
        if (final) {
                s->ending = true;
                s->end_status = GRPC_STATUS_OK;
                s->end_message = NULL;
                s->end_reason = "peer deleted";
        }
        pump(s);
}

/* Ends the stream with status once the message in flight (if any) went
 * out; an unsent map is dropped. */
void mgmt_sync__stream_end(sync_stream *s, grpc_status_code status, const char *message, const char *reason) {
        if (s->closed || s->ending)
                return;
        s->ending = true;
        s->end_status = status;
        s->end_message = message;
        s->end_reason = reason;
        stream_drop_pending(s);
        free(s->refresh);
        s->refresh = NULL;
        pump(s);
}

/* The stream's peer was deleted (Logout, the REST API, another replica):
 * the row is gone, so no disconnect can match. The stream leaves the
 * registry, sends last (its deleted-peer map, sealed for it; taken, may be
 * NULL) and ends, or ends at once when the map is refused. */
static void stream_end_deleted(sync_stream *s, uint8_t *last, size_t len, int64_t serial) {
        registry_remove(s->hub, s);
        s->connected = false;
        stream_queue(s, last, len, s->last_serial > serial ? s->last_serial : serial, true, NULL);
        if (!s->ending)
                mgmt_sync__stream_end(s, GRPC_STATUS_OK, NULL, "peer deleted");
}

/* ---- fenced disconnect ---------------------------------------------------------- */

/* A copy of what the disconnect needs, so a job waiting for a retry holds
 * no stream (and no gRPC call) alive. */
typedef struct disconnect_job {
        mgmt_sync *hub;
        char account_id[64];
        char peer_id[64];
        char peer_key[CP_WG_KEY_B64_LEN];
        int64_t token;
        int r;
        cp_error err;
        /* While waiting for a retry (CQ thread): the hub's list. */
        struct disconnect_job *next;
        int attempts;
        int64_t due_ms;
} disconnect_job;

/* A failed disconnect (PostgreSQL unreachable) is retried with backoff:
 * 1 s doubling to 30 s. Dropping it would leave the peer marked connected
 * for as long as this replica lives (it keeps heartbeating, so nobody
 * reaps its sessions). */
#define DISCONNECT_RETRY_MIN_MS 1000
#define DISCONNECT_RETRY_MAX_MS 30000

static void disconnect_work(void *userdata) {
        disconnect_job *j = userdata;

        j->r = cp_store_peer_mark_disconnected(j->hub->agent->store, j->account_id, j->peer_id, j->token, &j->err);
}

static void disconnect_done(mgmt_grpc *g, void *userdata) {
        disconnect_job *j = userdata;
        char tok[24];

        (void) snprintf(tok, sizeof tok, "%" PRId64, j->token);
        cp_log_ctx ctx = { .component = "sync", .account = j->account_id };
        if (j->r < 0) {
                mgmt_sync *h = j->hub;
                int64_t wait = DISCONNECT_RETRY_MIN_MS << (j->attempts < 5 ? j->attempts : 5);

                if (j->attempts == 0)
                        cp_log_kv(&ctx, CP_LOG_ERROR, "cannot mark the peer disconnected; retrying", "peer_key",
                                  j->peer_key, "token", tok, "error", j->err.message, NULL);
                j->attempts++;
                j->due_ms = cp_now_mono_ms() + (wait < DISCONNECT_RETRY_MAX_MS ? wait : DISCONNECT_RETRY_MAX_MS);
                j->next = h->retry_disconnects;
                h->retry_disconnects = j;
                h->n_retry_disconnects++;
                return;
        }
        if (j->hub->draining) {
                if (j->r)
                        j->hub->n_disc_landed++;
                else
                        j->hub->n_disc_fenced++;
        }
        cp_log_kv(&ctx, CP_LOG_DEBUG, j->r ? "peer disconnected" : "disconnect fenced off (newer session)",
                  "peer_key", j->peer_key, "token", tok, "attempts", j->attempts ? "retried" : "first", NULL);
        free(j);
}

/* CQ thread: queues the failed disconnects that are due again. */
static void on_retry_disconnects(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;
        int64_t now = cp_now_mono_ms();
        disconnect_job **pp = &h->retry_disconnects;

        while (*pp) {
                disconnect_job *j = *pp;
                if (j->due_ms > now) {
                        pp = &j->next;
                        continue;
                }
                *pp = j->next;
                j->next = NULL;
                h->n_retry_disconnects--;
                j->r = 0;
                j->err = (cp_error) { 0 };
                /* Not forced: with the queue full it waits for the next
                 * round. */
                if (mgmt_grpc_offload(g, disconnect_work, disconnect_done, j, false) < 0) {
                        j->next = h->retry_disconnects;
                        h->retry_disconnects = j;
                        h->n_retry_disconnects++;
                        if (pp == &h->retry_disconnects)
                                pp = &j->next;
                        j->due_ms = now + DISCONNECT_RETRY_MIN_MS;
                }
        }
}

void mgmt_sync_retry_disconnects(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (g)
                mgmt_grpc_post(g, on_retry_disconnects, h);
}

/* The fenced disconnect with the stream's own token, on a worker. It
 * must run even when the worker queue is full (force) and before the
 * server reports it stopped (mgmt_grpc_offload jobs are waited for). */
static void stream_disconnect(sync_stream *s) {
        mgmt_grpc *g = atomic_load(&s->hub->grpc);

        if (!s->connected)
                return;
        s->connected = false;
        disconnect_job *j = cp_xcalloc(1, sizeof *j);
        j->hub = s->hub;
        memcpy(j->account_id, s->account_id, sizeof j->account_id);
        memcpy(j->peer_id, s->peer_id, sizeof j->peer_id);
        memcpy(j->peer_key, s->peer_key, sizeof j->peer_key);
        j->token = s->token;
        if (mgmt_grpc_offload(g, disconnect_work, disconnect_done, j, true) < 0) {
                cp_log_ctx ctx = { .component = "sync", .account = s->account_id };
                cp_log_kv(&ctx, CP_LOG_ERROR, "cannot queue the disconnect; the peer stays marked connected",
                          "peer_key", s->peer_key, NULL);
                free(j);
        }
}

/* ---- opening a stream (worker) ------------------------------------------------------ */

static void open_fail_internal(mgmt_agent_op *op, const char *what, int r, const cp_error *err) {
        mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, MSG_INTERNAL);
        (void) snprintf(op->detail, sizeof op->detail, "%s: %s", what,
                        err && err->message[0] ? err->message : strerror(-r));
}

/* Builds, seals and keeps the first message: the full map with the
 * NetbirdConfig (fresh TURN/relay credentials). */
static int open_first_message(sync_stream *s, mgmt_agent_op *op, int64_t serial) {
        const mgmt_agent *ag = s->hub->agent;
        mgmt_map *map = NULL;
        cp_error err = { 0 };
        uint8_t *plain, *sealed;
        size_t plain_len, sealed_len;
        int r;

        /* The cached map when it is at serial or newer: no database read. */
        r = mgmt_maps_get_at(s->hub->maps, s->account_id, serial, &map, &err);
        if (r < 0) {
                open_fail_internal(op, "cannot load the network map", r, &err);
                return r;
        }
        s->creds_ms = cp_now_mono_ms();
        Management__NetbirdConfig *cfg = mgmt_netconf_build(ag->netconf, cp_now_unix_ns() / 1000000000, &op->arena);
        r = mgmt_map_pack(s->hub->maps, map, s->peer_id, cfg, &op->arena, &plain, &plain_len, &err);
        s->first_serial = mgmt_map_serial(map);
        map = mgmt_map_unref(map);
        if (r < 0) {
                open_fail_internal(op, "cannot build the network map", r, &err);
                return r;
        }
        sealed = mgmt_agent_seal_msg(s->server_key, &s->shared, plain, plain_len, &sealed_len, &err);
        cp_explicit_bzero(plain, plain_len);
        if (!sealed) {
                open_fail_internal(op, "cannot seal the first message", -EIO, &err);
                return -EIO;
        }
        s->first = sealed;
        s->first_len = sealed_len;
        return 0;
}

/* The common open in one round trip (cp_store_peer_open: the lookup and
 * the fenced connect in one UPDATE). 1 when it landed (s is set up as
 * after the connect in open_work), 0 when it wrote nothing and the lookup
 * path decides (unknown key, suspended account, expired or blocked
 * login, a new agent version, posture inputs changed, bad meta), -1 when
 * the open failed (op says why). */
static int open_fast(sync_stream *s, mgmt_agent_op *op, const Management__SyncRequest *req) {
        const mgmt_agent *ag = s->hub->agent;
        const Management__PeerSystemMeta *pm = req->meta;
        cp_store_peer_meta meta;
        cp_store_peer_opened o;
        cp_error err = { 0 };
        int r;

        /* Meta the lookup path refuses: it refuses it in its own order. */
        if (pm && (pm->n_networkaddresses > CP_STORE_META_MAX_ADDRESSES || pm->n_files > CP_STORE_META_MAX_FILES ||
                   pm->n_capabilities > CP_STORE_META_MAX_CAPABILITIES))
                return 0;
        if (pm && mgmt_login_meta(op, pm, &meta) < 0)
                return -1;
        const char *ip = mgmt_call_peer_ip(op->call);
        cp_store_peer_location where;
        cp_geo_location loc;
        cp_store_peer_open_req oq = {
                .wg_pub_key = op->peer_key,
                .meta = pm ? &meta : NULL,
                .connection_ip = ip && *ip ? ip : NULL,
                .location = mgmt_peer_location(ag, ip, &loc, &where),
                .now_unix_ns = cp_now_unix_ns(),
        };
        r = cp_store_peer_open(ag->store, &oq, &o, &err);
        if (r == 0 || r == -EINVAL)
                return 0;       /* nothing written */
        if (r < 0) {
                open_fail_internal(op, "cannot open the session", r, &err);
                return -1;
        }
        (void) snprintf(s->peer_id, sizeof s->peer_id, "%s", o.peer_id);
        (void) snprintf(s->account_id, sizeof s->account_id, "%s", o.account_id);
        (void) snprintf(op->account, sizeof op->account, "%s", o.account_id);
        s->token = o.token;
        s->was_expired = false;
        s->connect = 1;
        if (open_first_message(s, op, o.network_serial) < 0) {
                /* Undo our connect (fenced: only if still ours). */
                (void) cp_store_peer_mark_disconnected(ag->store, o.account_id, o.peer_id, s->token, NULL);
                s->connect = -1;
        }
        return 1;
}

static void open_work(void *userdata) {
        sync_stream *s = userdata;
        mgmt_agent_op *op = s->op;
        const mgmt_agent *ag = s->hub->agent;
        _cleanup_store_peer_ cp_store_peer *p = NULL;
        cp_store_account_settings st;
        cp_error err = { 0 };
        int64_t now_db = 0;
        int r;

        op->status = GRPC_STATUS_OK;
        s->connect = -1;
        if (mgmt_call_is_over(op->call)) {
                mgmt_agent_fail(op, GRPC_STATUS_CANCELLED, "call cancelled");
                return;
        }
        s->have_shared = true;
        if (mgmt_agent_open_request(op, &s->shared) < 0)
                return;
        memcpy(s->peer_key, op->peer_key, sizeof s->peer_key);
        memcpy(s->server_key, op->server_key, sizeof s->server_key);
        const Management__SyncRequest *req = (const Management__SyncRequest *) op->request;

        /* The common open: one round trip, which lands or writes nothing. */
        if (open_fast(s, op, req) != 0)
                return;

        /* Round trip 1: the peer, its account's settings, the clock. */
        r = cp_store_peer_lookup(ag->store, op->peer_key, &p, &st, &now_db, &err);
        if (r == -ENOENT) {
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MSG_NOT_REGISTERED);
                return;
        }
        if (r < 0) {
                open_fail_internal(op, "cannot look the peer up", r, &err);
                return;
        }
        (void) snprintf(s->peer_id, sizeof s->peer_id, "%s", p->id);
        (void) snprintf(s->account_id, sizeof s->account_id, "%s", p->account_id);
        (void) snprintf(op->account, sizeof op->account, "%s", p->account_id);
        /* A suspended account (cp/store-tenant.h): FailedPrecondition,
         * which the agent retries with backoff until a resume. */
        if (st.suspended) {
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED);
                return;
        }
        /* NetBird's SyncPeer: an SSO peer of a blocked user first. */
        if (p->user_id[0] && p->owner_blocked) {
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_BLOCKED);
                return;
        }
        if (mgmt_login_expired(p, &st, cp_now_unix_ns())) {
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_EXPIRED);
                return;
        }

        /* The meta is checked now (a bad one fails the open before any
         * write) and stored only if our connect lands. */
        cp_store_peer_meta meta;
        if (req->meta && mgmt_login_meta(op, req->meta, &meta) < 0)
                return;

        /* The session token: the database clock, so every replica orders
         * streams by one clock; above the stored token, so a reconnect in
         * the same microsecond is still newer. A stored token at the top
         * of the range cannot be beaten: the connect below is stale. */
        if (p->status.session_started_at == INT64_MAX)
                s->token = INT64_MAX;
        else
                s->token = now_db > p->status.session_started_at ? now_db : p->status.session_started_at + 1;
        s->was_expired = p->status.login_expired;

        /* Round trip 2: the fenced connect, and with it (only if it lands,
         * fenced by our token under the row lock, docs/protocol.md "Sync")
         * the meta (NetBird's SyncPeer; a change others see, the version,
         * bumps the serial and is fanned out) and the connection address.
         * A stale connect writes nothing at all. */
        const char *ip = mgmt_call_peer_ip(op->call);
        cp_store_peer_location where;
        cp_geo_location loc;
        cp_store_peer_connect_req cr = {
                .token = s->token,
                .meta = req->meta ? &meta : NULL,
                .connection_ip = ip && *ip ? ip : NULL,
                .expect_wt_version = p->meta.wt_version,
                .location = mgmt_peer_location(ag, ip, &loc, &where),
        };
        unsigned changed = 0;
        int64_t serial = 0;
        r = cp_store_peer_connect(ag->store, p->account_id, p->id, &cr, &changed, &serial, &err);
        if (r < 0) {
                open_fail_internal(op, "cannot mark the peer connected", r, &err);
                return;
        }
        s->connect = r;
        if (r == 0)
                return;         /* stale: a newer session owns the peer; nothing written */
        if (changed & CP_STORE_PEER_CHANGED_SERIAL)
                s->changed_serial = serial;

        /* The first map: at least as new as the serial read with the peer
         * (or bumped by our connect). A change committed since is fanned
         * out to this stream once it is registered (open_done). */
        if (open_first_message(s, op, serial > st.network_serial ? serial : st.network_serial) < 0) {
                /* Undo our connect (fenced: only if still ours). */
                (void) cp_store_peer_mark_disconnected(ag->store, p->account_id, p->id, s->token, NULL);
                s->connect = -1;
        }
}

/* ---- opening a stream (CQ thread) ------------------------------------------------------ */

static void log_open(sync_stream *s, mgmt_agent_op *op) {
        mgmt_agent_log_outcome(s->call, op->method, op->peer_key, op->account, op->status, op->message,
                               op->detail);
}

static void open_done(mgmt_call *c, void *userdata) {
        sync_stream *s = userdata;
        mgmt_sync *h = s->hub;
        mgmt_agent_op *op = s->op;
        sync_stream *old;

        s->op = NULL;
        h->setups--;
        if (op->status == GRPC_STATUS_OK && s->connect == 0)
                (void) snprintf(op->detail, sizeof op->detail, "stale session: a newer stream owns the peer");
        log_open(s, op);
        s->connected = s->connect == 1;

        if (op->status != GRPC_STATUS_OK) {
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_FAILED, op->status);
                mgmt_call_finish(c, op->status, op->message);
                goto out;
        }
        if (s->connect == 0) {
                /* Fenced off: end quietly, no side effects. */
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_STALE, GRPC_STATUS_OK);
                mgmt_call_finish(c, GRPC_STATUS_OK, NULL);
                goto out;
        }

        /* The registry follows the tokens, as the database does: the
         * stream with the larger token owns the peer. */
        old = mgmt_strmap_get(h->peers, s->peer_id);
        if (old && old->token > s->token) {
                /* A newer stream registered first; its connect landed
                 * after ours, so our disconnect could not match. */
                s->connected = false;
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_STALE, GRPC_STATUS_OK);
                mgmt_call_finish(c, GRPC_STATUS_OK, NULL);
                goto out;
        }
        if (old) {
                /* Replaced: our connect landed with a larger token, so
                 * its disconnect could not match; skip it. NetBird ends
                 * the old stream cleanly as well (EOF; the agent then
                 * stays on the new one). */
                registry_remove(h, old);
                old->connected = false;
                mgmt_sync__stream_end(old, GRPC_STATUS_OK, NULL, "replaced by a newer stream");
        }
        if (s->closed || h->draining) {
                /* The client left while we opened, or shutdown began. */
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_CLOSED, GRPC_STATUS_OK);
                stream_disconnect(s);
                if (!s->closed)
                        mgmt_call_finish(c, GRPC_STATUS_UNAVAILABLE, MSG_SHUTDOWN);
                goto out;
        }

        registry_add(h, s);
        mgmt_metrics_sync_open(MGMT_SYNC_OPEN_OK, GRPC_STATUS_OK);
        s->opened = true;
        /* The open job was the last reader of the request's metadata. */
        mgmt_call_drop_metadata(c);
        sync_acct *a = s->acct;
        stream_queue(s, s->first, s->first_len, s->first_serial, false, NULL);
        s->first = NULL;

        /* A change committed while we opened may be newer than our map:
         * a fan-out running now did not include this stream (it runs once
         * more after); hints or changes that came while the account had
         * no stream here were kept for us; a fan-out that read another
         * serial than our map's makes us read it again (a hint: no
         * rebuild when the database has our serial). */
        if (a->building)
                a->dirty = true;
        else if (a->dirty)
                mgmt_sync__fanout_start(h, a, a->dirty_force);
        else if (h->lost_hints != s->lost_hints)
                mgmt_sync__fanout_start(h, a, false);
        else if (a->n_streams == 1 && a->db_serial <= s->first_serial)
                a->db_serial = s->first_serial;
        else if (a->db_serial != s->first_serial)
                mgmt_sync__fanout_start(h, a, false);

        /* Side effects, after the connect committed: our meta change, or
         * a re-login that cleared login_expired, changes others' maps. */
        if (s->changed_serial > 0 || s->was_expired)
                mgmt_sync_local_change(h, s->account_id, s->changed_serial);

out:
        if (op->payload)
                grpc_byte_buffer_destroy(op->payload);
        mgmt_arena_release(&op->arena);
        free(op);
        accts_sweep(h);
        stream_unref(s);        /* the open job's reference */
}

void mgmt_sync_on_call(mgmt_sync *h, mgmt_call *c) {
        const cp_proto_method *m = &cp_proto_mgmt_methods[CP_PROTO_MGMT_SYNC];
        sync_stream *s;
        mgmt_agent_op *op;
        int r;

        if (h->max_setups >= 0 && h->setups >= h->max_setups) {
                mgmt_agent_log_outcome(c, m, NULL, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, MSG_TOO_MANY, NULL);
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_FAILED, GRPC_STATUS_RESOURCE_EXHAUSTED);
                mgmt_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, MSG_TOO_MANY);
                return;
        }
        s = cp_xcalloc(1, sizeof *s);
        s->refs = 2;            /* the open call, the open job */
        s->hub = h;
        s->call = c;
        s->started_ms = mgmt_call_started_ms(c);
        s->lost_hints = h->lost_hints;
        mgmt_call_ref(c);
        op = cp_xcalloc(1, sizeof *op);
        op->agent = h->agent;
        op->call = c;
        op->method = m;
        op->payload = mgmt_call_take_payload(c);
        mgmt_arena_init(&op->arena);
        s->op = op;
        mgmt_call_set_userdata(c, s);
        h->setups++;
        r = mgmt_call_offload(c, open_work, open_done, s);
        if (r < 0) {
                const char *msg = "server is busy, please try again later";
                grpc_status_code st = r == -EAGAIN ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_UNAVAILABLE;
                h->setups--;
                mgmt_agent_log_outcome(c, m, NULL, NULL, st, msg, r == -EAGAIN ? "worker queue full" : NULL);
                mgmt_metrics_sync_open(MGMT_SYNC_OPEN_FAILED, st);
                mgmt_call_finish(c, st, msg);
                s->op = NULL;
                if (op->payload)
                        grpc_byte_buffer_destroy(op->payload);
                mgmt_arena_release(&op->arena);
                free(op);
                stream_unref(s);        /* the job's; on_close drops the other */
        }
}

void mgmt_sync_on_close(mgmt_sync *h, mgmt_call *c, bool cancelled) {
        sync_stream *s = mgmt_call_userdata(c);

        if (!s)
                return;
        mgmt_call_set_userdata(c, NULL);
        s->closed = true;
        stream_drop_pending(s);
        free(s->refresh);
        s->refresh = NULL;
        if (!s->op) {
                /* Opened (or failed to): leave the registry, if it is still
                 * ours, and hand the peer back with our own token. */
                registry_remove(h, s);
                stream_disconnect(s);
                if (s->opened) {
                        char took[32];
                        cp_log_ctx ctx = { .component = "sync", .request_id = mgmt_call_log(c)->request_id,
                                           .peer = mgmt_call_peer_ip(c), .account = s->account_id };
                        (void) snprintf(took, sizeof took, "%" PRId64, cp_now_mono_ms() - s->started_ms);
                        cp_log_kv(&ctx, CP_LOG_INFO, "sync stream ended", "peer_key", s->peer_key, "reason",
                                  s->ending ? s->end_reason : cancelled ? "client gone" : "closed",
                                  "open_ms", took, NULL);
                }
        }
        /* else: the open job is still running; open_done sees closed. */
        stream_unref(s);        /* the open call's reference */
}

/* ---- fan-out ------------------------------------------------------------------------------ */

typedef struct fanout_target {
        sync_stream *s;
        uint8_t *msg;                   /* sealed EncryptedMessage (malloc); NULL = nothing */
        size_t len;
        bool gone;                      /* the peer is not in the map: msg is its last one */
        bool expired;                   /* its own SSO login has expired in the map */
} fanout_target;

typedef struct fanout {
        mgmt_sync *hub;
        sync_acct *acct;
        char account_id[64];
        fanout_target *targets;
        size_t n;
        mgmt_map *map;                  /* loaded by the first job */
        bool suspended;                 /* the account is suspended: its streams end */
        /* A hint (not a change committed here): read the serial, rebuild
         * only when it differs from what the targets have. */
        bool hint;
        int64_t have_min, have_max;     /* the targets' last_serial when it started */
        bool unchanged;                 /* hint: every target has the database's serial */
        bool went_back;                 /* the database's serial was below have_max: raised */
        int64_t read_serial;            /* the serial read, before any raise */
        int64_t serial;
        int64_t started_ns;             /* for netbird_cp_fanout_duration_seconds */
        sync_delivery *dlv;             /* NULL: no change time known (a periodic check) */
        uint64_t pushed;                /* maps queued */
        size_t chunks_left;
        int r;
        cp_error err;
} fanout;

typedef struct fanout_chunk {
        fanout *f;
        size_t from, to;
} fanout_chunk;

static void fanout_finish(mgmt_sync *h, fanout *f) {
        sync_acct *a = f->acct;

        for (size_t i = 0; i < f->n; i++) {
                free(f->targets[i].msg);
                stream_unref(f->targets[i].s);
        }
        free(f->targets);
        if (f->map) {           /* loaded: a fan-out that ran */
                mgmt_metrics_fanout(f->started_ns, f->pushed);
                mgmt_malloc_fanout_done();
                if (cp_log_enabled(CP_LOG_DEBUG)) {
                        /* Benchmarks (tests/bench/load) read these lines:
                         * the log time is when the last map was queued. */
                        char serial[24], maps[24], us[24];
                        cp_log_ctx ctx = { .component = "sync", .account = f->account_id };
                        (void) snprintf(serial, sizeof serial, "%" PRId64, f->serial);
                        (void) snprintf(maps, sizeof maps, "%" PRIu64, f->pushed);
                        (void) snprintf(us, sizeof us, "%" PRId64,
                                        (mgmt_metrics_now_ns() - f->started_ns) / 1000);
                        cp_log_kv(&ctx, CP_LOG_DEBUG, "fan-out done", "serial", serial, "maps", maps,
                                  "duration_us", us, NULL);
                }
        }
        f->map = mgmt_map_unref(f->map);
        dlv_done(f->dlv, false);        /* every map is queued */
        free(f);
        a->building = false;
        if (a->dirty && a->n_streams > 0) {
                mgmt_sync__fanout_start(h, a, a->dirty_force);
                if (a->building)
                        return;
        }
        /* No stream to run for now, but an open in progress may register
         * into the entry (kept for it) with a map read before the change:
         * it finds the entry dirty and runs once more (open_done). */
        if (!(a->dirty && a->n_streams == 0 && h->setups > 0))
                a->dirty = a->dirty_force = false;
        acct_maybe_free(h, a);
}

/* Worker: build, pack and seal the maps of one slice of the targets.
 * Each map is sealed straight from the thread's encoding buffer into the
 * message the stream sends (mgmt_map_seal): one allocation per map, no
 * copy of the plaintext; the JWTConfig is packed once per slice. */
static void chunk_work(void *userdata) {
        fanout_chunk *ch = userdata;
        fanout *f = ch->f;
        const uint8_t *jwt;
        size_t jwt_len;
        mgmt_arena arena;

        mgmt_arena_init(&arena);
        jwt = mgmt_map_jwt_config(f->hub->maps, &arena, &jwt_len);
        for (size_t i = ch->from; i < ch->to; i++) {
                fanout_target *t = &f->targets[i];
                cp_error err = { 0 };

                int r = mgmt_map_seal(f->hub->maps, f->map, t->s->peer_id, jwt, jwt_len, t->s->server_key,
                                      &t->s->shared, &t->msg, &t->len, &err);
                if (r == -ENOENT) {
                        /* The peer was deleted (REST API, another replica's
                         * Logout): its stream gets the deleted-peer map
                         * Logout sends and ends, as NetBird's deletion
                         * does, instead of lingering without maps. */
                        mgmt_arena deleted;
                        uint8_t *plain;
                        size_t plain_len;

                        t->gone = true;
                        mgmt_arena_init(&deleted);
                        (void) mgmt_map_pack_deleted(f->map, &deleted, &plain, &plain_len);
                        t->msg = mgmt_agent_seal_msg(t->s->server_key, &t->s->shared, plain, plain_len, &t->len,
                                                     &err);
                        mgmt_arena_release(&deleted);
                } else if (r == 0)
                        t->expired = mgmt_map_peer_login_expired(f->map, t->s->peer_id);
                if (!t->msg)
                        t->len = 0;
        }
        mgmt_arena_release(&arena);
}

static void chunk_done(mgmt_grpc *g, void *userdata) {
        fanout_chunk *ch = userdata;
        fanout *f = ch->f;

        for (size_t i = ch->from; i < ch->to; i++) {
                fanout_target *t = &f->targets[i];
                if (t->gone && t->s->registered)
                        stream_end_deleted(t->s, t->msg, t->len, f->serial);
                else if (t->expired && t->s->registered && f->serial >= t->s->last_serial) {
                        /* Its own login has expired (marked by whichever
                         * replica's sweep, or its deadline passed): the
                         * stream ends here too, as NetBird closes expired
                         * peers' channels, and the agent's next open is
                         * refused until it logs in with a JWT. A map older
                         * than the stream's newest (a re-login since) is
                         * no reason. */
                        free(t->msg);
                        mgmt_sync__stream_end(t->s, GRPC_STATUS_OK, NULL, "login expired");
                } else if (t->msg && t->s->registered) {
                        stream_queue(t->s, t->msg, t->len, f->serial, false, f->dlv);
                        f->pushed++;
                } else
                        free(t->msg);
                t->msg = NULL;
        }
        free(ch);
        if (--f->chunks_left == 0)
                fanout_finish(f->hub, f);
}

/* Worker: the account's serial, and what follows from it: that the
 * account is suspended (f->suspended) or gone (-ENOENT from the
 * settings); for a hint, that the targets have it already (f->unchanged:
 * nothing to build); else its map at that serial. The serial decides,
 * compared with what the targets have, never with anything a bus message
 * said. A serial below the newest one a target was sent (a database
 * restored from a backup, an operator in psql) is raised past it first:
 * NetBird's agent ignores a map whose serial is lower than the one it
 * holds (client/internal/engine.go, updateNetworkMap), so the map of the
 * restored state must come with a higher serial to be taken at all. The
 * raise is one conditional statement (never lowers a serial), announced
 * in load_done so every replica's streams follow. */
static void load_work(void *userdata) {
        fanout *f = userdata;
        cp_store *store = f->hub->agent->store;
        cp_store_account_settings st;

        f->r = cp_store_account_get_settings(store, f->account_id, &st, &f->err);
        if (f->r == -ENOENT) {
                f->suspended = true;    /* deleted: same end, below */
                return;
        }
        if (f->r < 0)
                return;
        if (st.suspended) {
                f->suspended = true;
                f->serial = st.network_serial;
                return;
        }
        f->read_serial = st.network_serial;
        if (f->n > 0 && st.network_serial < f->have_max && f->have_max < INT64_MAX) {
                int64_t now = 0;
                f->r = cp_store_account_serial_raise(store, f->account_id, f->have_max + 1, &now, &f->err);
                if (f->r == -ENOENT)
                        f->suspended = true;
                if (f->r < 0)
                        return;
                f->went_back = true;
                st.network_serial = now;
        } else if (f->hint && st.network_serial == f->have_min && st.network_serial == f->have_max) {
                f->unchanged = true;
                f->serial = st.network_serial;
                return;
        }
        f->r = mgmt_maps_get_at(f->hub->maps, f->account_id, st.network_serial, &f->map, &f->err);
}

/* CQ thread: the account was suspended or deleted (cp/store-tenant.h):
 * every stream of it ends, on every replica, since each one's fan-out
 * reads the row. Suspended: FailedPrecondition (the agent retries with
 * backoff and is let in again after a resume). Deleted: the peers are
 * gone, so the stream leaves the registry and ends OK, as for a deleted
 * peer; its next open is refused as not registered. */
static void end_account_streams(fanout *f, bool deleted) {
        cp_log_ctx ctx = { .component = "sync", .account = f->account_id };
        char n[24];

        (void) snprintf(n, sizeof n, "%zu", f->n);
        cp_log_kv(&ctx, CP_LOG_INFO, deleted ? "account deleted; ending its streams"
                                             : "account suspended; ending its streams", "streams", n, NULL);
        for (size_t i = 0; i < f->n; i++) {
                sync_stream *s = f->targets[i].s;
                if (!s->registered)
                        continue;
                if (deleted)
                        stream_end_deleted(s, NULL, 0, f->serial);
                else
                        mgmt_sync__stream_end(s, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED,
                                              "account suspended");
        }
}

static void load_done(mgmt_grpc *g, void *userdata) {
        fanout *f = userdata;
        mgmt_sync *h = f->hub;
        sync_acct *a = f->acct;

        if (f->suspended) {
                end_account_streams(f, f->r == -ENOENT);
                fanout_finish(f->hub, f);
                return;
        }
        if (f->r < 0) {
                cp_log_ctx ctx = { .component = "sync", .account = f->account_id };
                cp_log_kv(&ctx, f->r == -ENOENT ? CP_LOG_DEBUG : CP_LOG_ERROR, "cannot load the network map",
                          "error", f->err.message, NULL);
                fanout_finish(f->hub, f);
                return;
        }
        if (f->went_back) {
                char from[24], was[24], to[24];
                cp_log_ctx ctx = { .component = "sync", .account = f->account_id };

                (void) snprintf(from, sizeof from, "%" PRId64, f->have_max);
                (void) snprintf(was, sizeof was, "%" PRId64, f->read_serial);
                (void) snprintf(to, sizeof to, "%" PRId64, mgmt_map_serial(f->map));
                cp_log_kv(&ctx, CP_LOG_WARN,
                          "the account's serial went back (a restored database?); raised past what the streams had",
                          "streams_had", from, "database", was, "raised_to", to, NULL);
                mgmt_metrics_sync_serial_read(MGMT_SYNC_READ_WENT_BACK);
                /* The other replicas' streams follow (their read finds a
                 * serial above theirs). */
                if (h->announce)
                        h->announce(f->account_id, mgmt_map_serial(f->map), h->announce_userdata);
        } else if (f->hint)
                mgmt_metrics_sync_serial_read(f->unchanged ? MGMT_SYNC_READ_UNCHANGED : MGMT_SYNC_READ_CHANGED);
        if (f->unchanged) {
                a->db_serial = f->serial;
                fanout_finish(h, f);
                return;
        }
        f->serial = mgmt_map_serial(f->map);
        a->db_serial = f->serial;
        f->chunks_left = (f->n + FANOUT_CHUNK - 1) / FANOUT_CHUNK;
        if (f->chunks_left == 0) {
                fanout_finish(f->hub, f);
                return;
        }
        size_t n_chunks = f->chunks_left;
        for (size_t k = 0; k < n_chunks; k++) {
                fanout_chunk *ch = cp_xcalloc(1, sizeof *ch);
                ch->f = f;
                ch->from = k * FANOUT_CHUNK;
                ch->to = ch->from + FANOUT_CHUNK < f->n ? ch->from + FANOUT_CHUNK : f->n;
                if (mgmt_grpc_offload_here(g, chunk_work, chunk_done, ch) < 0) {
                        /* Workers stopping: nothing more will be sent. */
                        free(ch);
                        if (--f->chunks_left == 0)
                                fanout_finish(f->hub, f);
                }
        }
}

/* CQ thread: one run for every stream of the account registered now
 * (mgmt-sync-int.h). */
void mgmt_sync__fanout_start(mgmt_sync *h, sync_acct *a, bool force) {
        mgmt_grpc *g = atomic_load(&h->grpc);
        fanout *f;
        size_t n = 0;

        /* While a drain is spread, the streams not yet ended still get
         * their maps (they may wait for up to --drain-window). */
        if (a->building || a->n_streams == 0 || (h->draining && atomic_load(&h->drain_done)))
                return;
        f = cp_xcalloc(1, sizeof *f);
        f->hub = h;
        f->acct = a;
        f->hint = !force;
        f->have_min = INT64_MAX;
        f->started_ns = mgmt_metrics_now_ns();
        (void) snprintf(f->account_id, sizeof f->account_id, "%s", a->id);
        f->targets = cp_xcalloc(a->n_streams, sizeof *f->targets);
        for (sync_stream *s = a->streams; s; s = s->acct_next) {
                if (s->ending)
                        continue;
                f->targets[n++].s = stream_ref(s);
                if (s->last_serial < f->have_min)
                        f->have_min = s->last_serial;
                if (s->last_serial > f->have_max)
                        f->have_max = s->last_serial;
        }
        f->n = n;
        a->dirty = a->dirty_force = false;
        if (n == 0 && !force) {
                /* A hint with every stream ending: nobody to push to now;
                 * an open in progress runs it once it registers. */
                a->dirty = h->setups > 0;
                free(f->targets);
                free(f);
                return;
        }
        a->building = true;
        if (a->t0_ns > 0) {
                f->dlv = dlv_new(a->t0_ns, a->t0_bus);
                a->t0_ns = 0;
        }
        /* force: at most one rebuild per account runs at a time, so these
         * are bounded, and dropping one would lose the newest map. */
        if (mgmt_grpc_offload_here(g, load_work, load_done, f) < 0) {
                /* Workers stopping: nothing more will be sent. */
                for (size_t i = 0; i < f->n; i++)
                        stream_unref(f->targets[i].s);
                free(f->targets);
                dlv_done(f->dlv, false);
                free(f);
                a->building = false;
        }
}

typedef struct change_post {
        mgmt_sync *hub;
        char account_id[64];
        char peer_id[64];
        int64_t serial;
        bool hint;                      /* a bus message: read the serial, push only what differs */
        int64_t t0_ns;                  /* the change's time (mgmt-sync-int.h, sync_acct) */
        uint8_t *msg;
        size_t len;
} change_post;

/* CQ thread: a change committed here (push) or a hint (read, then push
 * what differs). Nothing here trusts a serial: p->serial is only logged
 * by the callers. */
static void on_account_changed(mgmt_grpc *g, void *userdata) {
        change_post *p = userdata;
        mgmt_sync *h = p->hub;
        /* Keep an entry while opens are in progress: one of them may
         * register into this account with an older map. For hints only
         * up to a cap (anyone on Redis can name any account). */
        sync_acct *a = acct_get(h, p->account_id, h->setups > 0 && (!p->hint || h->n_kept < KEPT_HINTS_MAX));

        /* Coalesced: the earliest change not yet delivered. A hint never
         * replaces a local change's time: it may be our own message
         * coming back from Redis, for a change already on its way. */
        if (a && p->t0_ns > 0 && (a->t0_ns == 0 || (p->t0_ns < a->t0_ns && (a->t0_bus || !p->hint)))) {
                a->t0_ns = p->t0_ns;
                a->t0_bus = p->hint;
        }

        if (!a) {
                /* No stream here: nothing to read, nothing to push. */
                if (h->setups > 0)
                        h->lost_hints++;
                if (p->hint)
                        mgmt_metrics_sync_hint(MGMT_SYNC_HINT_NO_STREAMS);
        } else if (a->building || a->n_streams == 0) {
                /* One more run after the one in flight, or after the open
                 * in progress that kept this entry registers. */
                a->dirty = true;
                a->dirty_force |= !p->hint;
                if (p->hint)
                        mgmt_metrics_sync_hint(a->building ? MGMT_SYNC_HINT_COALESCED : MGMT_SYNC_HINT_NO_STREAMS);
                acct_maybe_free(h, a);
        } else {
                if (p->hint)
                        mgmt_metrics_sync_hint(MGMT_SYNC_HINT_READ);
                mgmt_sync__fanout_start(h, a, !p->hint);
        }
        free(p);
}

static void post_change(mgmt_sync *h, const char *account_id, int64_t serial, bool hint, int64_t t0_ns) {
        mgmt_grpc *g = atomic_load(&h->grpc);
        change_post *p;

        if (!g || !account_id || !*account_id)
                return;         /* no server yet, so no stream either */
        p = cp_xcalloc(1, sizeof *p);
        p->hub = h;
        (void) snprintf(p->account_id, sizeof p->account_id, "%s", account_id);
        p->serial = serial;
        p->hint = hint;
        p->t0_ns = t0_ns;
        mgmt_grpc_post(g, on_account_changed, p);
}

void mgmt_sync_account_changed(mgmt_sync *h, const char *account_id, int64_t serial) {
        post_change(h, account_id, serial, false, mgmt_metrics_now_ns());
}

void mgmt_sync_account_hint(mgmt_sync *h, const char *account_id) {
        mgmt_sync_account_hint_sent(h, account_id, 0);
}

void mgmt_sync_account_hint_sent(mgmt_sync *h, const char *account_id, int64_t sent_ms) {
        post_change(h, account_id, 0, true, mgmt_metrics_bus_t0_ns(sent_ms));
}

void mgmt_sync_set_announce(mgmt_sync *h, mgmt_sync_announce_fn fn, void *userdata) {
        h->announce = fn;
        h->announce_userdata = userdata;
}

void mgmt_sync_local_change(mgmt_sync *h, const char *account_id, int64_t serial) {
        if (h->announce && account_id && *account_id)
                h->announce(account_id, serial, h->announce_userdata);
        mgmt_sync_account_changed(h, account_id, serial);
}

/* The deleted peer's last SyncResponse (plain, small), sealed with the
 * stream's own pair here on the CQ thread: only the stream knows which
 * server key its agent holds. Returns a malloc'd EncryptedMessage, or
 * NULL (the stream then just ends). */
static uint8_t *seal_last(sync_stream *s, const uint8_t *plain, size_t len, size_t *ret_len) {
        cp_error err = { 0 };
        uint8_t *out;
        size_t n;

        if (!plain || !len || !s->have_shared || !s->server_key[0])
                return NULL;
        out = mgmt_agent_seal_msg(s->server_key, &s->shared, plain, len, &n, &err);
        if (out)
                *ret_len = n;
        return out;
}

static void on_peer_deleted(mgmt_grpc *g, void *userdata) {
        change_post *p = userdata;
        mgmt_sync *h = p->hub;
        sync_stream *s = mgmt_strmap_get(h->peers, p->peer_id);

        if (s) {
                size_t len = 0;
                uint8_t *last = seal_last(s, p->msg, p->len, &len);
                stream_end_deleted(s, last, len, p->serial);
        }
        free(p->msg);
        p->msg = NULL;
        on_account_changed(g, p);
}

void mgmt_sync_peer_deleted(mgmt_sync *h, const char *account_id, const char *peer_id, const void *msg,
                            size_t len, int64_t serial) {
        mgmt_grpc *g = atomic_load(&h->grpc);
        change_post *p;

        if (h->announce && account_id && *account_id)
                h->announce(account_id, serial, h->announce_userdata);
        if (!g)
                return;
        p = cp_xcalloc(1, sizeof *p);
        p->hub = h;
        (void) snprintf(p->account_id, sizeof p->account_id, "%s", account_id);
        (void) snprintf(p->peer_id, sizeof p->peer_id, "%s", peer_id);
        p->serial = serial;
        p->t0_ns = mgmt_metrics_now_ns();
        if (msg && len) {
                p->msg = cp_xmalloc(len);
                memcpy(p->msg, msg, len);
                p->len = len;
        }
        mgmt_grpc_post(g, on_peer_deleted, p);
}

/* ---- credential refresh ------------------------------------------------------------------- */

typedef struct refresh_target {
        sync_stream *s;
        uint8_t *msg;                   /* sealed EncryptedMessage (malloc); NULL = nothing */
        size_t len;
} refresh_target;

typedef struct refresh_job {
        mgmt_sync *hub;
        size_t n;
        refresh_target t[FANOUT_CHUNK];
} refresh_job;

/* Worker: a SyncResponse with only netbirdConfig (fresh credentials; no
 * NetworkMap, no sessionExpiresAt: the agent keeps its map, checks and
 * deadline), sealed for each stream. */
static void refresh_work(void *userdata) {
        refresh_job *j = userdata;
        const mgmt_agent *ag = j->hub->agent;
        int64_t now_s = cp_now_unix_ns() / 1000000000;
        mgmt_arena arena;

        mgmt_arena_init(&arena);
        for (size_t i = 0; i < j->n; i++) {
                refresh_target *t = &j->t[i];
                Management__SyncResponse resp;
                cp_error err = { 0 };
                size_t plain_len, sealed_len;
                uint8_t *plain, *sealed;

                management__sync_response__init(&resp);
                resp.netbirdconfig = mgmt_netconf_build_refresh(ag->netconf, now_s, &arena);
                if (!resp.netbirdconfig)
                        break;
                plain_len = management__sync_response__get_packed_size(&resp);
                plain = mgmt_arena_alloc(&arena, plain_len ? plain_len : 1);
                plain_len = management__sync_response__pack(&resp, plain);
                sealed = mgmt_agent_seal_msg(t->s->server_key, &t->s->shared, plain, plain_len, &sealed_len, &err);
                cp_explicit_bzero(plain, plain_len);
                if (sealed) {
                        t->msg = sealed;
                        t->len = sealed_len;
                } else {
                        cp_log_ctx ctx = { .component = "sync", .account = t->s->account_id };
                        cp_log_kv(&ctx, CP_LOG_WARN, "cannot seal a credential refresh", "peer_key",
                                  t->s->peer_key, "error", err.message, NULL);
                }
                mgmt_arena_release(&arena);
        }
        mgmt_arena_release(&arena);
}

static void refresh_done(mgmt_grpc *g, void *userdata) {
        refresh_job *j = userdata;

        for (size_t i = 0; i < j->n; i++) {
                refresh_target *t = &j->t[i];
                sync_stream *s = t->s;
                s->refreshing = false;
                if (t->msg && s->registered && !s->closed && !s->ending) {
                        /* A newer refresh replaces one still unsent. */
                        free(s->refresh);
                        s->refresh = t->msg;
                        s->refresh_len = t->len;
                        pump(s);
                } else
                        free(t->msg);
                stream_unref(s);
        }
        free(j);
}

static void refresh_submit(mgmt_sync *h, refresh_job *j, int64_t now_ms) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        /* Not forced: with the workers busy, the streams are due again
         * and the next tick retries (not this one: due after now_ms). */
        if (mgmt_grpc_offload(g, refresh_work, refresh_done, j, false) == 0)
                return;
        for (size_t i = 0; i < j->n; i++) {
                sync_stream *s = j->t[i].s;
                s->refreshing = false;
                if (s->on_refresh_list) {
                        refresh_remove(h, s);
                        refresh_insert(h, s, now_ms + 1);
                }
                stream_unref(s);
        }
        free(j);
}

/* CQ thread: every stream whose refresh is due gets one, built and sealed
 * on a worker; its next one is due an interval from now. */
static void on_refresh_tick(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;
        int64_t now_ms = cp_now_mono_ms();
        refresh_job *j = NULL;

        /* While a drain is spread, the streams not yet ended still get
         * their credentials (as their maps, fanout_start). */
        if (atomic_load(&h->drain_done) || h->refresh_ms <= 0)
                return;
        /* Streams put back are due after now_ms, so the loop ends. */
        while (h->refresh_head && h->refresh_head->refresh_due_ms <= now_ms) {
                sync_stream *s = h->refresh_head;

                refresh_remove(h, s);
                if (s->ending)
                        continue;       /* its status goes out next; on_close unregisters it */
                refresh_insert(h, s, now_ms + h->refresh_ms);
                if (!s->refreshing) {
                        if (!j) {
                                j = cp_xcalloc(1, sizeof *j);
                                j->hub = h;
                        }
                        s->refreshing = true;
                        j->t[j->n++].s = stream_ref(s);
                        if (j->n == FANOUT_CHUNK) {
                                refresh_submit(h, j, now_ms);
                                j = NULL;
                        }
                }
        }
        if (j)
                refresh_submit(h, j, now_ms);
}

int64_t mgmt_sync_refresh_tick_ms(const mgmt_sync *h) {
        int64_t tick = h->refresh_ms / 4;

        if (h->refresh_ms <= 0)
                return 0;
        return tick < 100 ? 100 : tick > 1000 ? 1000 : tick;
}

void mgmt_sync_refresh_credentials(mgmt_sync *h) {
        mgmt_grpc *g = atomic_load(&h->grpc);

        if (g && h->refresh_ms > 0)
                mgmt_grpc_post(g, on_refresh_tick, h);
}

/* ---- setup ------------------------------------------------------------------------------------ */

mgmt_sync *mgmt_sync_new(const mgmt_agent *agent, mgmt_maps *maps, int max_setups) {
        mgmt_sync *h = cp_xcalloc(1, sizeof *h);

        h->agent = agent;
        h->maps = maps;
        h->max_setups = max_setups;
        h->refresh_ms = mgmt_netconf_refresh_ms(agent ? agent->netconf : NULL);
        h->peers = mgmt_strmap_new();
        h->accts = mgmt_strmap_new();
        return h;
}

static void free_acct(const char *key, void *value, void *userdata) {
        free(value);
}

mgmt_sync *mgmt_sync_free(mgmt_sync *h) {
        if (!h)
                return NULL;
        if (h->draining) {
                char d[24], l[24], f[24], r[24];

                (void) snprintf(d, sizeof d, "%" PRIu64, h->n_drained);
                (void) snprintf(l, sizeof l, "%" PRIu64, h->n_disc_landed);
                (void) snprintf(f, sizeof f, "%" PRIu64, h->n_disc_fenced);
                (void) snprintf(r, sizeof r, "%zu", h->n_retry_disconnects);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "sync streams at shutdown", "drained", d, "disconnects_landed", l,
                          "disconnects_fenced_off", f, "disconnects_failed", r, NULL);
        }
        /* Every call ended before the server stopped, so no stream is
         * left; account entries may be, and disconnects still failing:
         * the replica's deregistration marks those sessions
         * disconnected (or, with the database still away, the other
         * replicas reap them). */
        while (h->retry_disconnects) {
                struct disconnect_job *j = h->retry_disconnects;
                h->retry_disconnects = j->next;
                free(j);
        }
        mgmt_strmap_foreach(h->accts, free_acct, NULL);
        h->accts = mgmt_strmap_free(h->accts);
        h->peers = mgmt_strmap_free(h->peers);
        free(h);
        return NULL;
}

void mgmt_sync_on_grpc_start(mgmt_grpc *g, void *userdata) {
        mgmt_sync *h = userdata;

        atomic_store(&h->grpc, g);
}
