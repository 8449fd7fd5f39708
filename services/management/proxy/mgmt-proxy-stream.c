/*
 * mgmt-proxy-stream.c: GetMappingUpdate and SyncMappings (docs/proxy.md,
 * "Proxy connections and mapping streams").
 *
 * A stream lives on the CQ thread; everything that touches PostgreSQL is
 * a job on a worker (mgmt_call_offload), one data job at a time per
 * stream:
 *
 *   AUTH    the proxy token (and, for GetMappingUpdate, the request);
 *   OPEN    cluster check for account-scoped tokens, the proxies row
 *           upsert with a new session id, and the change log's max seq
 *           read BEFORE the first snapshot page (start_seq);
 *   PAGE    one keyset page of the snapshot (batch_size + 1 rows, to
 *           know whether it is the last), built and packed as one
 *           message with a fresh one-time token per mapping;
 *   CHANGES the change-log rows after the last one handled, up to the
 *           first one this proxy must get, packed as one message.
 *
 * Memory per stream: at most one packed message waiting (ready) and one
 * in flight (gRPC's), plus one page while a job runs; a job is started
 * only when nothing is waiting, so a slow proxy holds the server to that
 * whatever the number of mappings or changes.
 *
 * Back-pressure: GetMappingUpdate sends back-to-back (the next message
 * after the previous went out). SyncMappings sends the next message only
 * after the ack of the previous one, in the snapshot and after it (the
 * proxy acks every message it processed), with an ack deadline
 * (ack_timeout_ms: DEADLINE_EXCEEDED). An ack with nothing waiting for
 * one, or any non-ack after the init, is INVALID_ARGUMENT.
 *
 * End of a stream: the call ends (client gone, status sent, shutdown);
 * once no job of it is left, its proxies row is marked disconnected
 * (guarded by session_id) by a job of the server, and it is freed.
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/store-proxyconn.h"
#include "cp/util.h"
#include "mgmt-proxy-int.h"
#include "mgmt-metrics.h"
#include "mgmt-proxy-onetime.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <inttypes.h>

/* Change-log rows read per CHANGES query (rows of other capabilities or
 * of services since removed are skipped without sending). */
#define CHANGES_PAGE 64
/* Longest proxy id and address accepted (NetBird has no limit; ours
 * bounds what a row holds). */
#define MAX_ID_LEN 255

static const cp_log_ctx log_ctx = { .component = "proxy" };

typedef enum ps_phase {
        PS_AUTH,                /* AUTH job running */
        PS_INIT,                /* SyncMappings: waiting for the init */
        PS_OPENING,             /* OPEN job running */
        PS_SNAPSHOT,            /* pages going out */
        PS_LIVE,                /* the snapshot is out: changes */
} ps_phase;

struct mgmt_proxy_stream {
        mgmt_proxy_stream *prev, *next;
        mgmt_proxy *hub;
        mgmt_call *call;                /* one reference while the stream lives */
        const cp_proto_method *method;
        bool bidi;
        ps_phase phase;

        /* Who it is (fixed once open). */
        mgmt_proxy_token token;
        char proxy_id[MAX_ID_LEN + 1];
        char address[MAX_ID_LEN + 1];
        char version[128];
        char session_id[CP_ID_LEN + 1];
        char ip[64];
        cp_store_proxy_caps caps;
        bool registered;                /* the proxies row is ours: disconnect at the end */

        /* Progress. */
        char cursor[MAX_ID_LEN + 1];    /* last service id of the snapshot read */
        bool snapshot_read;             /* the last page has been read */
        int64_t live_seq;               /* last change-log row handled */
        int64_t checked_seq;            /* hints up to this were read and had nothing */
        bool want_changes;              /* read the change log when idle */
        bool retry_changes;             /* a read failed: again at the next tick */
        uint64_t sent;                  /* messages sent */

        /* The pipeline. */
        bool data_job;                  /* an OPEN/PAGE/CHANGES job is out */
        unsigned jobs;                  /* every job out (data, token check, heartbeat) */
        bool token_job;
        bool heartbeat_job;
        int64_t last_token_check_ms, last_heartbeat_ms;
        uint8_t *ready;                 /* the next message, packed */
        size_t ready_len;
        bool ready_last;                /* ready carries initial_sync_complete */
        bool awaiting_ack;
        int64_t ack_deadline_ms;

        bool ending;                    /* a status was sent */
        bool over;                      /* on_close ran */
};

typedef enum job_kind { JOB_AUTH, JOB_OPEN, JOB_PAGE, JOB_CHANGES, JOB_TOKEN, JOB_HEARTBEAT } job_kind;

typedef struct job {
        mgmt_proxy_stream *s;           /* only fields fixed while a job is out */
        job_kind kind;
        grpc_byte_buffer *payload;      /* AUTH of GetMappingUpdate */
        /* Results. */
        grpc_status_code status;
        char msg[256];
        int64_t seq;                    /* OPEN: start_seq; CHANGES: last seq handled */
        int64_t target_seq;             /* CHANGES: the hint it answers */
        char cursor[MAX_ID_LEN + 1];    /* PAGE: the new cursor */
        bool last;                      /* PAGE: the snapshot's last; CHANGES: nothing more */
        uint8_t *buf;                   /* the packed message, or NULL */
        size_t len;
        bool valid;                     /* TOKEN */
        /* AUTH: the token; for GetMappingUpdate the decoded request. */
        mgmt_proxy_token token;
        Management__GetMappingUpdateRequest *req;
} job;

static void pump(mgmt_proxy_stream *s);
static void maybe_free(mgmt_proxy_stream *s);

static int64_t now_ms(void) {
        return cp_now_mono_ms();
}

/* ---- ending --------------------------------------------------------------------- */

static void end(mgmt_proxy_stream *s, grpc_status_code st, const char *msg) {
        if (s->ending || s->over)
                return;
        s->ending = true;
        mgmt_proxy_log_outcome(s->call, s->method, s->token.account_id, st, msg, NULL);
        mgmt_call_finish(s->call, st, msg);
        free(s->ready);
        s->ready = NULL;
}

typedef struct disconnect {
        mgmt_proxy *hub;
        char proxy_id[MAX_ID_LEN + 1];
        char session_id[CP_ID_LEN + 1];
} disconnect;

static void disconnect_work(void *userdata) {
        disconnect *d = userdata;
        cp_error err = { 0 };

        if (cp_store_proxy_disconnect(d->hub->store, d->proxy_id, d->session_id, &err) < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot mark a proxy disconnected", "proxy_id", d->proxy_id,
                          "error", err.message, NULL);
}

static void disconnect_done(mgmt_grpc *g, void *userdata) {
        free(userdata);
}

/* Once the call is over and no job is out: the fenced disconnect, and
 * the stream goes. */
static void maybe_free(mgmt_proxy_stream *s) {
        mgmt_proxy *p = s->hub;

        if (!s->over || s->jobs > 0)
                return;
        if (s->registered) {
                mgmt_metrics_proxy_streams(-1);
                disconnect *d = cp_xcalloc(1, sizeof *d);
                d->hub = p;
                memcpy(d->proxy_id, s->proxy_id, sizeof d->proxy_id);
                memcpy(d->session_id, s->session_id, sizeof d->session_id);
                /* force: bounded by the streams that were open. */
                if (mgmt_grpc_offload(p->grpc, disconnect_work, disconnect_done, d, true) < 0)
                        free(d);
        }
        if (s->prev)
                s->prev->next = s->next;
        else
                p->streams = s->next;
        if (s->next)
                s->next->prev = s->prev;
        free(s->ready);
        mgmt_call_set_userdata(s->call, NULL);
        mgmt_call_unref(s->call);
        free(s);
}

/* ---- packing -------------------------------------------------------------------- */

/* GetMappingUpdateResponse and SyncMappingsResponse are the same on the
 * wire (mapping = 1, initial_sync_complete = 2): one packer for both. */
static uint8_t *pack(Management__ProxyMapping **maps, size_t n, bool complete, size_t *ret_len) {
        Management__GetMappingUpdateResponse r = MANAGEMENT__GET_MAPPING_UPDATE_RESPONSE__INIT;
        uint8_t *buf;

        r.mapping = maps;
        r.n_mapping = n;
        r.initial_sync_complete = complete;
        *ret_len = management__get_mapping_update_response__get_packed_size(&r);
        buf = cp_xmalloc(*ret_len ? *ret_len : 1);
        *ret_len = management__get_mapping_update_response__pack(&r, buf);
        return buf;
}

static cp_store_proxy_scope scope_of(const mgmt_proxy_stream *s) {
        return (cp_store_proxy_scope) {
                .cluster = s->address,
                .account_id = s->token.account_id,
                .private_ok = s->caps.supports_private_service == CP_STORE_TRUE,
                .custom_ports_ok = s->caps.supports_custom_ports != CP_STORE_UNSET,
        };
}

/* ---- jobs (workers) --------------------------------------------------------------- */

static void work_auth(job *j) {
        mgmt_proxy_stream *s = j->s;

        if (mgmt_proxy_authenticate(s->hub, s->call, &j->token, &j->status, j->msg, sizeof j->msg) < 0)
                return;
        if (!s->bidi) {
                j->req = (Management__GetMappingUpdateRequest *) mgmt_proxy_decode(
                        s->method, j->payload, NULL, false, &j->status, j->msg, sizeof j->msg);
                if (!j->req)
                        return;
        }
        j->status = GRPC_STATUS_OK;
}

static void work_open(job *j) {
        mgmt_proxy_stream *s = j->s;
        mgmt_proxy *p = s->hub;
        cp_error err = { 0 };
        int r;

        if (s->token.account_id[0]) {
                /* NetBird: a bring-your-own proxy may not take a cluster
                 * address served by a global proxy or another account. */
                bool taken = false;
                r = cp_store_proxy_cluster_taken(p->store, s->address, s->token.account_id, &taken, &err);
                if (r < 0)
                        goto db;
                if (taken) {
                        j->status = GRPC_STATUS_ALREADY_EXISTS;
                        (void) snprintf(j->msg, sizeof j->msg, "cluster address %s is already in use", s->address);
                        return;
                }
        }
        cp_store_proxy_conn c = {
                .proxy_id = s->proxy_id, .session_id = s->session_id, .cluster = s->address, .ip = s->ip,
                .account_id = s->token.account_id[0] ? s->token.account_id : NULL, .token_id = s->token.id,
                .replica_id = p->replica_id, .version = s->version, .caps = s->caps,
        };
        /* The change log's position first: whatever commits from here on
         * is sent after the snapshot, even when the snapshot has it too. */
        r = cp_store_proxy_changes_max(p->store, &j->seq, &err);
        if (r < 0)
                goto db;
        r = cp_store_proxy_connect(p->store, &c, &err);
        if (r < 0)
                goto db;
        j->status = GRPC_STATUS_OK;
        return;
db:
        cp_log_kv(&log_ctx, CP_LOG_ERROR, "cannot register a proxy", "proxy_id", s->proxy_id, "error", err.message,
                  NULL);
        j->status = GRPC_STATUS_INTERNAL;
        (void) snprintf(j->msg, sizeof j->msg, "failed to register proxy");
}

static void work_page(job *j) {
        mgmt_proxy_stream *s = j->s;
        mgmt_proxy *p = s->hub;
        cp_store_proxy_scope scope = scope_of(s);
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_error err = { 0 };
        mgmt_arena a;
        int r, n;

        r = cp_store_proxy_snapshot_page(p->store, &scope, j->cursor, p->batch_size + 1, &rows, &err);
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "cannot read the mapping snapshot", "proxy_id", s->proxy_id,
                          "error", err.message, NULL);
                j->status = GRPC_STATUS_UNAVAILABLE;
                (void) snprintf(j->msg, sizeof j->msg, "cannot read the mappings, please reconnect");
                return;
        }
        n = cp_store_rows_count(rows);
        j->last = n <= p->batch_size;
        if (n > p->batch_size)
                n = p->batch_size;
        mgmt_arena_init(&a);
        Management__ProxyMapping **maps = n ? mgmt_arena_array(&a, (size_t) n, sizeof *maps) : NULL;
        int64_t now_s = cp_now_unix_ns() / 1000000000;
        for (int i = 0; i < n; i++) {
                char tok[MGMT_PROXY_ONETIME_LEN];
                mgmt_proxy_onetime_new(p, cp_store_rows_get(rows, i, CP_SVC_ID),
                                       cp_store_rows_get(rows, i, CP_SVC_ACCOUNT_ID), now_s, tok);
                maps[i] = mgmt_proxy_mapping_build(&a, rows, i, MANAGEMENT__PROXY_MAPPING_UPDATE_TYPE__UPDATE_TYPE_CREATED,
                                                   tok);
        }
        if (n > 0)
                (void) snprintf(j->cursor, sizeof j->cursor, "%s", cp_store_rows_get(rows, n - 1, CP_SVC_ID));
        j->buf = pack(maps, (size_t) n, j->last, &j->len);
        mgmt_arena_release(&a);
        j->status = GRPC_STATUS_OK;
}

/* Whether the proxy gets a CREATED/MODIFIED of the row (capabilities). */
static bool caps_allow(const mgmt_proxy_stream *s, const cp_store_rows *rows, int i) {
        const char *mode = cp_store_rows_get(rows, i, CP_SVC_MODE);
        const char *port = cp_store_rows_get(rows, i, CP_SVC_LISTEN_PORT);

        if (cp_store_rows_bool(rows, i, CP_SVC_PRIVATE) && s->caps.supports_private_service != CP_STORE_TRUE)
                return false;
        if (port && strcmp(port, "0") != 0 && mode && strcmp(mode, "tls") != 0 &&
            s->caps.supports_custom_ports == CP_STORE_UNSET)
                return false;
        return true;
}

static void work_changes(job *j) {
        mgmt_proxy_stream *s = j->s;
        mgmt_proxy *p = s->hub;
        cp_store_proxy_scope scope = scope_of(s);
        cp_error err = { 0 };

        j->status = GRPC_STATUS_OK;
        j->last = true;
        for (;;) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                int r = cp_store_proxy_changes_after(p->store, &scope, j->seq, CHANGES_PAGE, &rows, &err);
                if (r < 0) {
                        /* Not fatal: the next hint or poll tries again. */
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot read the mapping change log", "proxy_id",
                                  s->proxy_id, "error", err.message, NULL);
                        j->status = GRPC_STATUS_UNAVAILABLE;
                        return;
                }
                int n = cp_store_rows_count(rows);
                for (int i = 0; i < n; i++) {
                        int64_t seq = strtoll(cp_store_rows_get(rows, i, CP_CHG_SEQ), NULL, 10);
                        int op = (int) strtol(cp_store_rows_get(rows, i, CP_CHG_OP), NULL, 10);
                        j->seq = seq;
                        mgmt_arena a;
                        Management__ProxyMapping *m = NULL;
                        mgmt_arena_init(&a);
                        if (op == MANAGEMENT__PROXY_MAPPING_UPDATE_TYPE__UPDATE_TYPE_REMOVED) {
                                m = mgmt_proxy_mapping_removed(&a, cp_store_rows_get(rows, i, CP_CHG_SERVICE_ID),
                                                               cp_store_rows_get(rows, i, CP_CHG_ACCOUNT_ID),
                                                               cp_store_rows_get(rows, i, CP_CHG_DOMAIN));
                        } else if (cp_store_rows_get(rows, i, CP_SVC_ID) && caps_allow(s, rows, i)) {
                                /* The service as it is now; gone, disabled or
                                 * moved: skipped (its REMOVED row follows). */
                                char tok[MGMT_PROXY_ONETIME_LEN];
                                mgmt_proxy_onetime_new(p, cp_store_rows_get(rows, i, CP_SVC_ID),
                                                       cp_store_rows_get(rows, i, CP_SVC_ACCOUNT_ID),
                                                       cp_now_unix_ns() / 1000000000, tok);
                                m = mgmt_proxy_mapping_build(&a, rows, i, op, tok);
                        }
                        if (m) {
                                j->buf = pack(&m, 1, false, &j->len);
                                j->last = false;
                                mgmt_arena_release(&a);
                                return;
                        }
                        mgmt_arena_release(&a);
                }
                if (n < CHANGES_PAGE || mgmt_call_is_over(s->call))
                        return;
        }
}

static void work_token(job *j) {
        j->valid = mgmt_proxy_token_valid(j->s->hub, &j->s->token);
}

static void work_heartbeat(job *j) {
        mgmt_proxy_stream *s = j->s;
        cp_error err = { 0 };

        if (cp_store_proxy_heartbeat(s->hub->store, s->proxy_id, s->session_id, &err) < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot record a proxy heartbeat", "proxy_id", s->proxy_id,
                          "error", err.message, NULL);
}

static void job_work(void *userdata) {
        job *j = userdata;

        if (mgmt_call_is_over(j->s->call) && j->kind != JOB_HEARTBEAT) {
                j->status = GRPC_STATUS_CANCELLED;
                return;
        }
        switch (j->kind) {
        case JOB_AUTH:
                work_auth(j);
                break;
        case JOB_OPEN:
                work_open(j);
                break;
        case JOB_PAGE:
                work_page(j);
                break;
        case JOB_CHANGES:
                work_changes(j);
                break;
        case JOB_TOKEN:
                work_token(j);
                break;
        case JOB_HEARTBEAT:
                work_heartbeat(j);
                break;
        }
}

/* ---- CQ thread -------------------------------------------------------------------- */

static void on_recv(mgmt_call *c, grpc_byte_buffer *msg, void *userdata);

static void caps_from(cp_store_proxy_caps *out, const Management__ProxyCapabilities *in) {
        *out = (cp_store_proxy_caps) { CP_STORE_UNSET, CP_STORE_UNSET, CP_STORE_UNSET, CP_STORE_UNSET,
                                       CP_STORE_UNSET };
        if (!in)
                return;
#define TRI(field, c) \
        if (in->c) \
                out->field = in->field ? CP_STORE_TRUE : CP_STORE_FALSE
        TRI(supports_custom_ports, _supports_custom_ports_case);
        TRI(require_subdomain, _require_subdomain_case);
        TRI(supports_crowdsec, _supports_crowdsec_case);
        TRI(private_, _private_case);
        TRI(supports_private_service, _supports_private_service_case);
#undef TRI
}

/* NetBird's check: an IP address or a valid domain name. */
static bool valid_address(const char *a) {
        struct in6_addr v6;
        struct in_addr v4;
        size_t n = strlen(a), label = 0;

        if (inet_pton(AF_INET, a, &v4) == 1 || inet_pton(AF_INET6, a, &v6) == 1)
                return true;
        if (n == 0 || n > 253 || a[0] == '.' || a[n - 1] == '.' || !strchr(a, '.'))
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = a[i];
                if (ch == '.') {
                        if (label == 0 || a[i - 1] == '-')
                                return false;
                        label = 0;
                        continue;
                }
                if (!(isalnum((unsigned char) ch) || ch == '-') || (label == 0 && ch == '-') || ++label > 63)
                        return false;
        }
        return a[n - 1] != '-';
}

static int start_job(mgmt_proxy_stream *s, job *j);

/* The request's fields, validated; then OPEN. */
static void open_with(mgmt_proxy_stream *s, const char *proxy_id, const char *version, const char *address,
                      const Management__ProxyCapabilities *caps) {
        if (!proxy_id || !*proxy_id) {
                end(s, GRPC_STATUS_INVALID_ARGUMENT, "proxy_id is required");
                return;
        }
        if (strlen(proxy_id) > MAX_ID_LEN) {
                end(s, GRPC_STATUS_INVALID_ARGUMENT, "proxy_id is too long");
                return;
        }
        if (!address || strlen(address) > MAX_ID_LEN || !valid_address(address)) {
                end(s, GRPC_STATUS_INVALID_ARGUMENT, "address must be a valid IP address or domain name");
                return;
        }
        (void) snprintf(s->proxy_id, sizeof s->proxy_id, "%s", proxy_id);
        (void) snprintf(s->address, sizeof s->address, "%s", address);
        (void) snprintf(s->version, sizeof s->version, "%s", version ? version : "");
        caps_from(&s->caps, caps);
        cp_id_new(s->session_id);
        s->phase = PS_OPENING;
        job *j = cp_xcalloc(1, sizeof *j);
        j->kind = JOB_OPEN;
        (void) start_job(s, j);
}

/* A newer connection of the same proxy on this replica ends the older
 * one (its disconnect then finds the row taken over and writes nothing). */
static void supersede(mgmt_proxy_stream *s) {
        for (mgmt_proxy_stream *o = s->hub->streams; o; o = o->next)
                if (o != s && !o->ending && o->registered && strcmp(o->proxy_id, s->proxy_id) == 0)
                        end(o, GRPC_STATUS_CANCELLED, "superseded by a newer connection of the same proxy");
}

static void job_done(mgmt_call *c, void *userdata) {
        job *j = userdata;
        mgmt_proxy_stream *s = j->s;

        s->jobs--;
        if (j->kind == JOB_TOKEN) {
                s->token_job = false;
                s->last_token_check_ms = now_ms();
                if (j->status != GRPC_STATUS_CANCELLED && !j->valid)
                        end(s, GRPC_STATUS_UNAUTHENTICATED, MGMT_PROXY_MSG_TOKEN_GONE);
                goto out;
        }
        if (j->kind == JOB_HEARTBEAT) {
                s->heartbeat_job = false;
                s->last_heartbeat_ms = now_ms();
                goto out;
        }
        s->data_job = false;
        if (j->kind == JOB_OPEN && j->status == GRPC_STATUS_OK) {
                /* The row is written: ours to mark disconnected at the
                 * end, even when the stream ended meanwhile. */
                s->registered = true;
                mgmt_metrics_proxy_streams(1);
        }
        if (s->ending || s->over || j->status == GRPC_STATUS_CANCELLED)
                goto out;
        switch (j->kind) {
        case JOB_AUTH:
                if (j->status != GRPC_STATUS_OK) {
                        end(s, j->status, j->msg);
                        break;
                }
                s->token = j->token;
                (void) snprintf(s->ip, sizeof s->ip, "%s", mgmt_call_peer_ip(c));
                if (s->bidi) {
                        s->phase = PS_INIT;
                        if (mgmt_call_recv(c, on_recv, s) < 0)
                                end(s, GRPC_STATUS_INTERNAL, "cannot read the stream");
                        break;
                }
                open_with(s, j->req->proxy_id, j->req->version, j->req->address, j->req->capabilities);
                break;
        case JOB_OPEN:
                if (j->status != GRPC_STATUS_OK) {
                        end(s, j->status, j->msg);
                        break;
                }
                s->live_seq = j->seq;
                s->checked_seq = j->seq;
                s->phase = PS_SNAPSHOT;
                s->last_token_check_ms = s->last_heartbeat_ms = now_ms();
                cp_log_kv(&log_ctx, CP_LOG_INFO, "proxy connected", "proxy_id", s->proxy_id, "cluster",
                          s->address, "method", s->method->name, "session", s->session_id,
                          "account", s->token.account_id[0] ? s->token.account_id : NULL, NULL);
                supersede(s);
                break;
        case JOB_PAGE:
                if (j->status != GRPC_STATUS_OK) {
                        end(s, j->status, j->msg);
                        break;
                }
                memcpy(s->cursor, j->cursor, sizeof s->cursor);
                s->snapshot_read = j->last;
                s->ready = j->buf;
                s->ready_len = j->len;
                s->ready_last = j->last;
                j->buf = NULL;
                break;
        case JOB_CHANGES:
                s->live_seq = j->seq;
                if (j->status != GRPC_STATUS_OK) {
                        /* The database is away: not in a loop; the next
                         * tick (a second) tries again. */
                        if (j->target_seq > s->checked_seq)
                                s->checked_seq = j->target_seq;
                        s->retry_changes = true;
                        break;
                }
                if (j->buf) {
                        s->ready = j->buf;
                        s->ready_len = j->len;
                        s->ready_last = false;
                        j->buf = NULL;
                        s->want_changes = true; /* there may be more */
                } else if (j->target_seq > s->checked_seq)
                        s->checked_seq = j->target_seq;
                break;
        case JOB_TOKEN:
        case JOB_HEARTBEAT:
                break;
        }
out:
        if (j->payload)
                grpc_byte_buffer_destroy(j->payload);
        if (j->req)
                management__get_mapping_update_request__free_unpacked(j->req, NULL);
        free(j->buf);
        free(j);
        if (!s->ending && !s->over)
                pump(s);
        maybe_free(s);
}

static int start_job(mgmt_proxy_stream *s, job *j) {
        int r;

        j->s = s;
        if (j->kind != JOB_TOKEN && j->kind != JOB_HEARTBEAT)
                s->data_job = true;
        s->jobs++;
        r = mgmt_call_offload(s->call, job_work, job_done, j);
        if (r < 0) {
                bool data = j->kind != JOB_TOKEN && j->kind != JOB_HEARTBEAT;
                s->jobs--;
                if (data)
                        s->data_job = false;
                if (j->payload)
                        grpc_byte_buffer_destroy(j->payload);
                free(j);
                /* A token check or heartbeat waits for the next tick. */
                if (!data)
                        return r;
                if (r == -EAGAIN)
                        end(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "server is busy, please try again later");
                else
                        end(s, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
        }
        return r;
}

/* The send and receive batches hold references to the call, not to the
 * stream, which may be gone by the time they complete (the call ended
 * and its last job came back): the stream is looked up through the call,
 * whose userdata maybe_free() clears. */
static void on_sent(mgmt_call *c, bool ok, void *userdata) {
        mgmt_proxy_stream *s = mgmt_call_userdata(c);

        if (s && ok && !s->ending && !s->over)
                pump(s);
}

/* Sends what is ready when the stream may, and starts the next read when
 * nothing is waiting. */
static void pump(mgmt_proxy_stream *s) {
        mgmt_proxy *p = s->hub;

        if (s->ending || s->over || s->phase < PS_SNAPSHOT)
                return;
        if (s->ready && !mgmt_call_sending(s->call) && !s->awaiting_ack) {
                uint8_t *buf = s->ready;
                bool last = s->ready_last;
                s->ready = NULL;
                if (mgmt_call_send_take(s->call, buf, s->ready_len, on_sent, s) < 0)
                        return;         /* the call is going away: on_close follows */
                s->sent++;
                if (s->bidi) {
                        s->awaiting_ack = true;
                        s->ack_deadline_ms = now_ms() + p->ack_timeout_ms;
                }
                if (last) {
                        s->phase = PS_LIVE;
                        cp_log_kv(&log_ctx, CP_LOG_INFO, "proxy snapshot sent", "proxy_id", s->proxy_id, "cluster",
                                  s->address, NULL);
                }
        }
        if (s->data_job || s->ready)
                return;
        if (s->phase == PS_SNAPSHOT && !s->snapshot_read) {
                job *j = cp_xcalloc(1, sizeof *j);
                j->kind = JOB_PAGE;
                memcpy(j->cursor, s->cursor, sizeof j->cursor);
                (void) start_job(s, j);
                return;
        }
        if (s->phase != PS_LIVE)
                return;
        int64_t hint = atomic_load(&p->hint_seq);
        if (s->want_changes || hint > s->checked_seq) {
                job *j = cp_xcalloc(1, sizeof *j);
                j->kind = JOB_CHANGES;
                j->seq = s->live_seq;
                j->target_seq = hint;
                s->want_changes = false;
                (void) start_job(s, j);
        }
}

static void on_recv(mgmt_call *c, grpc_byte_buffer *msg, void *userdata) {
        mgmt_proxy_stream *s = mgmt_call_userdata(c);
        Management__SyncMappingsRequest *req = NULL;

        if (!s || s->ending || s->over) {
                if (msg)
                        grpc_byte_buffer_destroy(msg);
                return;
        }
        if (!msg) {
                /* The proxy closed its side: a clean end once open. */
                end(s, s->phase == PS_LIVE ? GRPC_STATUS_OK : GRPC_STATUS_CANCELLED,
                    s->phase == PS_LIVE ? NULL : "stream closed by the proxy");
                return;
        }
        grpc_status_code st;
        char why[160];
        req = (Management__SyncMappingsRequest *) mgmt_proxy_decode(s->method, msg, NULL, false, &st, why,
                                                                    sizeof why);
        grpc_byte_buffer_destroy(msg);
        if (!req) {
                end(s, st, st == GRPC_STATUS_INVALID_ARGUMENT ? "cannot decode the SyncMappings message" : why);
                return;
        }
        if (s->phase == PS_INIT) {
                if (req->msg_case != MANAGEMENT__SYNC_MAPPINGS_REQUEST__MSG_INIT) {
                        end(s, GRPC_STATUS_INVALID_ARGUMENT, "first message must be init");
                } else {
                        const Management__SyncMappingsInit *in = req->init;
                        open_with(s, in->proxy_id, in->version, in->address, in->capabilities);
                        /* Keep reading: an early ack is an error. */
                        if (!s->ending && mgmt_call_recv(c, on_recv, s) < 0)
                                end(s, GRPC_STATUS_INTERNAL, "cannot read the stream");
                }
                management__sync_mappings_request__free_unpacked(req, NULL);
                return;
        }
        if (req->msg_case != MANAGEMENT__SYNC_MAPPINGS_REQUEST__MSG_ACK) {
                end(s, GRPC_STATUS_INVALID_ARGUMENT, "expected ack");
        } else if (!s->awaiting_ack) {
                end(s, GRPC_STATUS_INVALID_ARGUMENT,
                    s->sent == 0 ? "ack before any batch" : "unexpected ack: no message is waiting for one");
        } else {
                s->awaiting_ack = false;
                if (mgmt_call_recv(c, on_recv, s) < 0)
                        end(s, GRPC_STATUS_INTERNAL, "cannot read the stream");
                else
                        pump(s);
        }
        management__sync_mappings_request__free_unpacked(req, NULL);
}

void mgmt_proxy_stream_on_call(mgmt_proxy *p, mgmt_call *c, bool bidi) {
        mgmt_proxy_stream *s = cp_xcalloc(1, sizeof *s);

        s->hub = p;
        s->call = c;
        s->bidi = bidi;
        s->method = &cp_proto_proxy_methods[bidi ? CP_PROTO_PROXY_SYNC_MAPPINGS : CP_PROTO_PROXY_GET_MAPPING_UPDATE];
        s->phase = PS_AUTH;
        mgmt_call_ref(c);
        mgmt_call_set_userdata(c, s);
        s->next = p->streams;
        if (p->streams)
                p->streams->prev = s;
        p->streams = s;
        if (p->draining) {
                end(s, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
                return;
        }
        job *j = cp_xcalloc(1, sizeof *j);
        j->kind = JOB_AUTH;
        j->payload = bidi ? NULL : mgmt_call_take_payload(c);
        (void) start_job(s, j);
}

void mgmt_proxy_stream_on_close(mgmt_proxy *p, mgmt_call *c, bool cancelled) {
        mgmt_proxy_stream *s = mgmt_call_userdata(c);

        if (!s)
                return;
        if (!s->ending)
                mgmt_proxy_log_outcome(c, s->method, s->token.account_id, GRPC_STATUS_CANCELLED,
                                       "stream closed by the proxy", NULL);
        if (s->registered)
                cp_log_kv(&log_ctx, CP_LOG_INFO, "proxy disconnected", "proxy_id", s->proxy_id, "cluster",
                          s->address, "session", s->session_id, NULL);
        s->over = true;
        free(s->ready);
        s->ready = NULL;
        maybe_free(s);
}

/* ---- hints and periodic work ----------------------------------------------------- */

void mgmt_proxy_on_grpc_start(mgmt_grpc *g, mgmt_proxy *p) {
        atomic_store(&p->grpc, g);
}

static void kick_all(mgmt_grpc *g, void *userdata) {
        mgmt_proxy *p = userdata;

        for (mgmt_proxy_stream *s = p->streams; s; s = s->next)
                pump(s);
}

static void want_all(mgmt_grpc *g, void *userdata) {
        mgmt_proxy *p = userdata;

        for (mgmt_proxy_stream *s = p->streams; s; s = s->next) {
                s->want_changes = true;
                pump(s);
        }
}

void mgmt_proxy_changed(mgmt_proxy *p, int64_t seq) {
        mgmt_grpc *g = p ? atomic_load(&p->grpc) : NULL;

        /* Once stopping, the streams are being drained: nothing to do
         * (and nothing allocated for a post that might be dropped). */
        if (!g || mgmt_grpc_stopping(g))
                return;
        if (seq > 0) {
                int64_t cur = atomic_load(&p->hint_seq);
                while (seq > cur && !atomic_compare_exchange_weak(&p->hint_seq, &cur, seq))
                        ;
                mgmt_grpc_post(g, kick_all, p);
        } else
                mgmt_grpc_post(g, want_all, p);
}

typedef struct revoke_post {
        mgmt_proxy *hub;
        char token_id[65];              /* "" = every stream */
} revoke_post;

static void check_token(mgmt_proxy_stream *s) {
        if (s->token_job || s->ending || s->over || s->phase < PS_INIT)
                return;
        job *j = cp_xcalloc(1, sizeof *j);
        j->kind = JOB_TOKEN;
        s->token_job = true;
        if (start_job(s, j) < 0)
                s->token_job = false;
}

static void on_revoked(mgmt_grpc *g, void *userdata) {
        revoke_post *r = userdata;

        for (mgmt_proxy_stream *s = r->hub->streams; s; s = s->next)
                if (s->phase >= PS_INIT && (!r->token_id[0] || strcmp(s->token.id, r->token_id) == 0))
                        check_token(s);
        free(r);
}

void mgmt_proxy_token_revoked(mgmt_proxy *p, const char *token_id) {
        mgmt_grpc *g = p ? atomic_load(&p->grpc) : NULL;

        if (p)
                mgmt_proxy_tokens_forget(p);

        /* Once stopping, the streams are being drained: nothing to do
         * (and nothing allocated for a post that might be dropped). */
        if (!g || mgmt_grpc_stopping(g))
                return;
        revoke_post *r = cp_xcalloc(1, sizeof *r);
        r->hub = p;
        (void) snprintf(r->token_id, sizeof r->token_id, "%s", token_id ? token_id : "");
        mgmt_grpc_post(g, on_revoked, r);
}

typedef struct tick_post {
        mgmt_proxy *hub;
        bool poll;
} tick_post;

/* CQ thread, every second: ack deadlines, token re-checks, heartbeats,
 * and the safety-net poll of the change log. */
static void on_tick(mgmt_grpc *g, void *userdata) {
        tick_post *t = userdata;
        mgmt_proxy *p = t->hub;
        int64_t now = now_ms();

        for (mgmt_proxy_stream *s = p->streams; s; s = s->next) {
                if (s->ending || s->over)
                        continue;
                if (s->awaiting_ack && now >= s->ack_deadline_ms) {
                        end(s, GRPC_STATUS_DEADLINE_EXCEEDED, "no ack from the proxy in time");
                        continue;
                }
                if (s->phase < PS_SNAPSHOT)
                        continue;
                if (now - s->last_token_check_ms >= p->token_check_ms)
                        check_token(s);
                if (!s->heartbeat_job && now - s->last_heartbeat_ms >= p->heartbeat_ms) {
                        job *j = cp_xcalloc(1, sizeof *j);
                        j->kind = JOB_HEARTBEAT;
                        s->heartbeat_job = true;
                        if (start_job(s, j) < 0)
                                s->heartbeat_job = false;
                }
                if (t->poll || s->retry_changes) {
                        s->want_changes = true;
                        s->retry_changes = false;
                }
                pump(s);
        }
        free(t);
}

static void reap_work(void *userdata) {
        mgmt_proxy *p = userdata;
        cp_error err = { 0 };
        int n = cp_store_proxy_reap(p->store, p->stale_ms / 1000, &err);

        if (n < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot delete stale proxies", "error", err.message, NULL);
        else if (n > 0) {
                char buf[16];
                (void) snprintf(buf, sizeof buf, "%d", n);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "stale proxies deleted", "count", buf, NULL);
        }
}

static void reap_done(mgmt_grpc *g, void *userdata) {
        mgmt_proxy *p = userdata;

        atomic_store(&p->reap_queued, false);
}

static void start_reap(mgmt_grpc *g, void *userdata) {
        mgmt_proxy *p = userdata;

        if (mgmt_grpc_offload(g, reap_work, reap_done, p, false) < 0)
                atomic_store(&p->reap_queued, false);
}

void mgmt_proxy_tick(mgmt_proxy *p) {
        int64_t now = now_ms();
        mgmt_grpc *g = p ? atomic_load(&p->grpc) : NULL;

        if (!g || mgmt_grpc_stopping(g))
                return;
        tick_post *t = cp_xcalloc(1, sizeof *t);
        t->hub = p;
        if (p->poll_ms > 0 && now - p->last_poll_ms >= p->poll_ms) {
                p->last_poll_ms = now;
                t->poll = true;
        }
        mgmt_grpc_post(g, on_tick, t);
        /* Every 5 minutes, as NetBird's sweep (more often when the
         * stale age is shorter). */
        int64_t every = p->stale_ms < 5 * 60 * 1000 ? p->stale_ms : 5 * 60 * 1000;
        if (now - p->last_reap_ms >= every && !atomic_exchange(&p->reap_queued, true)) {
                p->last_reap_ms = now;
                mgmt_grpc_post(g, start_reap, p);
        }
}

static void on_drain(mgmt_grpc *g, void *userdata) {
        mgmt_proxy *p = userdata;

        p->draining = true;
        for (mgmt_proxy_stream *s = p->streams; s; s = s->next)
                end(s, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
}

void mgmt_proxy_drain(mgmt_proxy *p) {
        mgmt_grpc *g = p ? atomic_load(&p->grpc) : NULL;

        if (g)
                mgmt_grpc_post(g, on_drain, p);
}
