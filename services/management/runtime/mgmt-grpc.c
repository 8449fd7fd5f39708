#include "cp/base.h"
#include "cp/util.h"
#include "mgmt-grpc.h"
#include "mgmt-limits.h"
#include "mgmt-realip.h"
#include "mgmt-strmap.h"

#include <ctype.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>

/* Request slots kept posted per registered method and for unknown methods,
 * shared out over the completion queues (at least SLOTS_MIN on each): a
 * call arriving on a connection whose queue has no free slot takes one of
 * another queue. */
#define SLOTS_PER_METHOD 16
#define SLOTS_GENERIC 8
#define SLOTS_MIN 4
/* How often the CQ thread wakes when idle, and while shutting down, to see
 * whether the grace period is over. */
#define POLL_IDLE_MS 250
#define POLL_SHUTDOWN_MS 50
/* After the server is destroyed, how long the queues stay open for calls
 * whose last completions are still on their way (maybe_close_cq). */
#define CLOSE_WAIT_CALLS_MS 5000
/* Keepalive: agents ping every 30 s even without calls (NetBird's client
 * settings); NetBird's server enforces a minimum of 15 s and permits pings
 * without streams. We accept pings down to 5 s apart. */
#define MIN_PING_INTERVAL_MS 5000
/* Completion queues (one thread each): when the caller leaves it to us,
 * and at most. One by default: on 2 cores several cost more CPU per
 * message than the tag scan they save (docs/benchmarks.md). */
#define CQS_DEFAULT 1
#define CQS_MAX 64

typedef enum tag_kind {
        TAG_NEW,                /* the request slot matched a call (or was dropped) */
        TAG_CLOSE,              /* RECV_CLOSE_ON_SERVER: the call is over */
        TAG_STATUS,             /* the final status went out */
        TAG_SEND,               /* a stream message went out (or the call died) */
        TAG_RECV,               /* a client message arrived (or the client stream ended) */
        _TAG_MAX,
} tag_kind;

typedef struct mgmt_tag {
        mgmt_call *call;        /* NULL for the server's own tags (shutdown, wake) */
        tag_kind kind;
} mgmt_tag;

/* A function queued for the CQ thread (mgmt_grpc_post). */
typedef struct mgmt_post {
        struct mgmt_post *next;
        mgmt_grpc_post_fn fn;
        void *userdata;
} mgmt_post;

/* An offloaded job on its way to a worker and back: either for a call
 * (call set, done) or for the server (call NULL, gdone). */
typedef struct offload {
        mgmt_grpc *g;
        mgmt_call *call;
        mgmt_work_fn work;
        mgmt_call_done_fn done;
        mgmt_grpc_post_fn gdone;
        void *userdata;
        bool done_here;                 /* gdone runs on the worker, under the handler lock */
} offload;

/* One completion queue and the thread that polls it. */
typedef struct mgmt_cq {
        mgmt_grpc *g;
        grpc_completion_queue *cq;
        size_t index;
        pthread_t thread;
        bool thread_started;
} mgmt_cq;

#define GENERIC_SLOT SIZE_MAX

struct mgmt_call {
        mgmt_grpc *g;
        size_t method;                  /* index into g->methods, or GENERIC_SLOT */
        size_t cq;                      /* index into g->cqs: the queue the call is bound to */
        unsigned refs;                  /* slot + outstanding batches + offloads; under the handler lock */
        atomic_bool over;               /* RECV_CLOSE_ON_SERVER came back; read by workers */
        int64_t started_ms;
        bool matched;                   /* counted in g->live_calls */
        bool initial_md_sent;
        bool status_sent;
        int cancelled;                  /* from RECV_CLOSE_ON_SERVER */
        mgmt_tag tags[_TAG_MAX];
        grpc_call *call;
        grpc_call_details details;      /* generic slots */
        grpc_metadata_array request_md;
        gpr_timespec deadline;          /* registered slots */
        grpc_byte_buffer *payload;      /* unary / server-stream request */
        grpc_byte_buffer *response;     /* kept until the STATUS batch is done */
        grpc_byte_buffer *send_bb;      /* the stream message in flight (TAG_SEND) */
        mgmt_call_sent_fn sent_fn;
        void *sent_userdata;
        grpc_byte_buffer *recv_bb;      /* filled by the RECV_MESSAGE in flight (TAG_RECV) */
        bool receiving;
        mgmt_call_recv_fn recv_fn;
        void *recv_userdata;
        void *userdata;                 /* the handler's (mgmt_call_set_userdata) */
        grpc_slice status_details;      /* kept until the STATUS batch is done */
        bool has_status_details;
        char *method_name;              /* for logs */
        char *peer;                     /* gpr-allocated */
        bool conn_counted;              /* holds a count in g->conns */
        char peer_ip[64];
        char request_id[65];
        cp_log_ctx log;
};

struct mgmt_grpc {
        grpc_server *server;            /* set before the threads start, never changed */
        mgmt_cq *cqs;                   /* n_cqs queues, each with its thread */
        size_t n_cqs;
        grpc_completion_queue *cq;      /* cqs[0].cq: posts' wake-ups and the shutdown tag */
        int port;
        mgmt_rpc_method *methods;
        void **registered;
        size_t n_methods;
        void *userdata;
        mgmt_workers *workers;          /* borrowed */
        void (*on_stopped)(mgmt_grpc *g, void *userdata);
        void *stopped_userdata;
        void (*on_start)(mgmt_grpc *g, void *userdata);
        void *start_userdata;
        const struct mgmt_realip *realip;       /* borrowed; NULL = none */
        bool grpc_inited;

        /* The handler lock: held by a CQ thread while it handles an event
         * or runs posts, and by a worker while it runs a done function
         * of mgmt_grpc_offload_here(); never while waiting on a queue.
         * Everything below marked "CQ thread only", every mgmt_call's
         * state and every handler's state is under it. */
        pthread_mutex_t lock;
        size_t n_running;               /* CQ loops not yet past GRPC_QUEUE_SHUTDOWN (under lock) */

        /* Written by any thread. */
        atomic_bool shutdown_requested;
        _Atomic int64_t cancel_at_ms;   /* monotonic; 0 = not shutting down */

        /* Posts to the CQ thread: a locked list, plus a wake-up. gRPC's C
         * API has no alarm, so the wake is a connectivity watch on a lame
         * channel with a deadline in the past, which completes on the CQ
         * at once (grpc-c-core.md section 6). At most one is outstanding:
         * wake_pending coalesces them. The watch is started, and the
         * channel destroyed, only under posts_lock, so a late post can
         * never touch a destroyed channel. */
        pthread_mutex_t posts_lock;
        mgmt_post *posts_head, **posts_tail;    /* under posts_lock */
        bool wake_pending;                      /* under posts_lock */
        bool cq_closed;                         /* under posts_lock: no post can run any more */
        grpc_channel *lame;
        mgmt_tag wake_tag;

        /* CQ thread only (under the handler lock). */
        mgmt_tag shutdown_tag;
        bool server_destroyed;
        bool calls_cancelled;
        bool cq_shut;
        size_t live_calls;
        int64_t destroyed_ms;           /* monotonic ms of grpc_server_destroy */
        size_t jobs;                    /* offloads not yet done */
        /* Connections with calls: the peer string ("ipv4:a.b.c.d:port",
         * one per HTTP/2 connection) -> number of live calls. */
        mgmt_strmap *conns;
        int64_t max_connections;        /* 0 = no limit */
};

static const cp_log_ctx log_ctx = { .component = "grpc" };

/* ---- call lifetime ------------------------------------------------------- */

/* CQ thread: one call less on its connection. */
static void conn_release(mgmt_call *c) {
        mgmt_grpc *g = c->g;
        uintptr_t n = (uintptr_t) mgmt_strmap_get(g->conns, c->peer);

        c->conn_counted = false;
        if (n <= 1)
                (void) mgmt_strmap_remove(g->conns, c->peer);
        else
                (void) mgmt_strmap_put(g->conns, c->peer, (void *) (n - 1));
        mgmt_limits_connections(MGMT_LISTENER_GRPC, (int64_t) mgmt_strmap_size(g->conns));
}

/* CQ thread: counts the call on its connection; false when it would be
 * one connection more than --grpc-max-connections. */
static bool conn_admit(mgmt_call *c) {
        mgmt_grpc *g = c->g;

        if (!c->peer)
                return true;
        uintptr_t n = (uintptr_t) mgmt_strmap_get(g->conns, c->peer);
        if (n == 0 && g->max_connections > 0 && (int64_t) mgmt_strmap_size(g->conns) >= g->max_connections) {
                mgmt_limits_connection_refused(MGMT_LISTENER_GRPC);
                return false;
        }
        (void) mgmt_strmap_put(g->conns, c->peer, (void *) (n + 1));
        c->conn_counted = true;
        mgmt_limits_connections(MGMT_LISTENER_GRPC, (int64_t) mgmt_strmap_size(g->conns));
        return true;
}

static void call_unref(mgmt_call *c) {
        if (--c->refs > 0)
                return;
        if (c->matched)
                c->g->live_calls--;
        if (c->conn_counted)
                conn_release(c);
        if (c->call)
                grpc_call_unref(c->call);
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->request_md);
        if (c->payload)
                grpc_byte_buffer_destroy(c->payload);
        if (c->response)
                grpc_byte_buffer_destroy(c->response);
        if (c->send_bb)
                grpc_byte_buffer_destroy(c->send_bb);
        if (c->recv_bb)
                grpc_byte_buffer_destroy(c->recv_bb);
        if (c->has_status_details)
                grpc_slice_unref(c->status_details);
        if (c->peer)
                gpr_free(c->peer);
        free(c->method_name);
        free(c);
}

/* Starts a batch that holds one reference until its tag comes back. */
static bool call_batch(mgmt_call *c, const grpc_op *ops, size_t n, tag_kind kind) {
        c->refs++;
        grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->tags[kind], NULL);
        if (e != GRPC_CALL_OK) {
                c->refs--;
                cp_log_kv(&c->log, CP_LOG_ERROR, "cannot start batch", "error", grpc_call_error_to_string(e),
                          NULL);
                return false;
        }
        return true;
}

void mgmt_call_finish(mgmt_call *c, grpc_status_code status, const char *message) {
        grpc_op ops[2];
        size_t n = 0;

        if (c->status_sent)
                return;
        memset(ops, 0, sizeof ops);
        if (!c->initial_md_sent) {
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                ops[n].data.send_initial_metadata.count = 0;
                n++;
        }
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.trailing_metadata_count = 0;
        ops[n].data.send_status_from_server.status = status;
        if (message) {
                c->status_details = grpc_slice_from_copied_string(message);
                c->has_status_details = true;
                ops[n].data.send_status_from_server.status_details = &c->status_details;
        }
        n++;
        if (call_batch(c, ops, n, TAG_STATUS)) {
                c->initial_md_sent = true;
                c->status_sent = true;
        }
}

void mgmt_call_reply(mgmt_call *c, grpc_status_code status, const char *message, const void *data,
                     size_t len) {
        grpc_op ops[3];
        size_t n = 0;

        if (status != GRPC_STATUS_OK || c->status_sent || c->response) {
                mgmt_call_finish(c, status, message);
                return;
        }
        grpc_slice s = grpc_slice_from_copied_buffer(data ? data : "", len);
        c->response = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);

        memset(ops, 0, sizeof ops);
        if (!c->initial_md_sent) {
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                n++;
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->response;
        n++;
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = GRPC_STATUS_OK;
        if (message) {
                c->status_details = grpc_slice_from_copied_string(message);
                c->has_status_details = true;
                ops[n].data.send_status_from_server.status_details = &c->status_details;
        }
        n++;
        if (call_batch(c, ops, n, TAG_STATUS)) {
                c->initial_md_sent = true;
                c->status_sent = true;
        }
}

/* Sends the slice s (one reference, always consumed). */
static int send_slice(mgmt_call *c, grpc_slice s, mgmt_call_sent_fn sent, void *userdata) {
        grpc_op ops[2];
        size_t n = 0;

        if (c->send_bb || c->status_sent || atomic_load(&c->over)) {
                grpc_slice_unref(s);
                return c->send_bb ? -EBUSY : -EPIPE;
        }
        c->send_bb = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);

        memset(ops, 0, sizeof ops);
        if (!c->initial_md_sent) {
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                n++;
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_bb;
        n++;
        c->sent_fn = sent;
        c->sent_userdata = userdata;
        if (!call_batch(c, ops, n, TAG_SEND)) {
                grpc_byte_buffer_destroy(c->send_bb);
                c->send_bb = NULL;
                c->sent_fn = NULL;
                c->sent_userdata = NULL;
                return -EIO;
        }
        c->initial_md_sent = true;
        return 0;
}

int mgmt_call_send(mgmt_call *c, const void *data, size_t len, mgmt_call_sent_fn sent, void *userdata) {
        if (c->send_bb)
                return -EBUSY;
        if (c->status_sent || atomic_load(&c->over))
                return -EPIPE;
        return send_slice(c, grpc_slice_from_copied_buffer(data ? data : "", len), sent, userdata);
}

int mgmt_call_send_take(mgmt_call *c, void *data, size_t len, mgmt_call_sent_fn sent, void *userdata) {
        /* gRPC frees the buffer once the message is written: no copy on
         * the CQ thread, which sends every message of a fan-out. */
        if (!data || len == 0) {
                free(data);
                return mgmt_call_send(c, NULL, 0, sent, userdata);
        }
        return send_slice(c, grpc_slice_new(data, len, free), sent, userdata);
}

bool mgmt_call_sending(const mgmt_call *c) {
        return c->send_bb != NULL;
}

int mgmt_call_recv(mgmt_call *c, mgmt_call_recv_fn fn, void *userdata) {
        grpc_op op;

        if (c->receiving)
                return -EBUSY;
        if (c->status_sent || atomic_load(&c->over))
                return -EPIPE;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        c->recv_fn = fn;
        c->recv_userdata = userdata;
        if (!call_batch(c, &op, 1, TAG_RECV)) {
                c->recv_fn = NULL;
                c->recv_userdata = NULL;
                return -EIO;
        }
        c->receiving = true;
        return 0;
}

int mgmt_call_metadata(const mgmt_call *c, const char *key, char *out, size_t cap) {
        if (cap > 0)
                out[0] = '\0';
        for (size_t i = 0; i < c->request_md.count; i++) {
                const grpc_metadata *md = &c->request_md.metadata[i];
                size_t n = GRPC_SLICE_LENGTH(md->value);
                if (grpc_slice_str_cmp(md->key, key) != 0)
                        continue;
                if (n >= cap)
                        return -ENOSPC;
                memcpy(out, GRPC_SLICE_START_PTR(md->value), n);
                out[n] = '\0';
                return (int) n;
        }
        return -ENOENT;
}

bool mgmt_call_has_metadata(const mgmt_call *c) {
        return c->request_md.count > 0;
}

void mgmt_call_drop_metadata(mgmt_call *c) {
        /* The array only: the slices in it belong to the call. */
        grpc_metadata_array_destroy(&c->request_md);
        grpc_metadata_array_init(&c->request_md);
}

void mgmt_call_ref(mgmt_call *c) {
        c->refs++;
}

void mgmt_call_unref(mgmt_call *c) {
        if (c)
                call_unref(c);
}

void mgmt_call_set_userdata(mgmt_call *c, void *userdata) {
        c->userdata = userdata;
}

void *mgmt_call_userdata(const mgmt_call *c) {
        return c->userdata;
}

mgmt_grpc *mgmt_call_grpc(const mgmt_call *c) {
        return c->g;
}

grpc_byte_buffer *mgmt_call_take_payload(mgmt_call *c) {
        grpc_byte_buffer *b = c->payload;

        c->payload = NULL;
        return b;
}

const mgmt_rpc_method *mgmt_call_method(const mgmt_call *c) {
        return c->method == GENERIC_SLOT ? NULL : &c->g->methods[c->method];
}

const cp_log_ctx *mgmt_call_log(const mgmt_call *c) {
        return &c->log;
}

const char *mgmt_call_peer_ip(const mgmt_call *c) {
        return c->peer_ip;
}

bool mgmt_call_is_over(const mgmt_call *c) {
        return atomic_load(&((mgmt_call *) c)->over);
}

size_t mgmt_call_queue(const mgmt_call *c) {
        return c->cq;
}

int64_t mgmt_call_started_ms(const mgmt_call *c) {
        return c->started_ms;
}

/* ---- posts to the CQ thread and offloaded jobs ----------------------------- */

bool mgmt_grpc_post(mgmt_grpc *g, mgmt_grpc_post_fn fn, void *userdata) {
        mgmt_post *p = cp_xcalloc(1, sizeof *p);
        bool closed;

        p->fn = fn;
        p->userdata = userdata;
        pthread_mutex_lock(&g->posts_lock);
        closed = g->cq_closed;
        if (!closed) {
                *g->posts_tail = p;
                g->posts_tail = &p->next;
                if (!g->wake_pending) {
                        /* Non-blocking: it only arms a timer that is
                         * already due. */
                        g->wake_pending = true;
                        grpc_channel_watch_connectivity_state(g->lame, GRPC_CHANNEL_TRANSIENT_FAILURE,
                                                              gpr_inf_past(GPR_CLOCK_MONOTONIC), g->cq,
                                                              &g->wake_tag);
                }
        }
        pthread_mutex_unlock(&g->posts_lock);
        if (closed) {
                /* Only during shutdown: the manager's timers, the bus and
                 * REST announcements may still post after the queue
                 * closed (every stream has ended by then, so there is
                 * nothing left for the post to do). Not an error. */
                cp_log(&log_ctx, CP_LOG_DEBUG, "post after the gRPC server stopped; dropped");
                free(p);
        }
        return !closed;
}

/* CQ thread, on the wake tag: the flag is cleared and the list taken in
 * one step, so a post that lands afterwards starts a new wake. */
static void run_posts(mgmt_grpc *g) {
        mgmt_post *list;

        pthread_mutex_lock(&g->posts_lock);
        g->wake_pending = false;
        list = g->posts_head;
        g->posts_head = NULL;
        g->posts_tail = &g->posts_head;
        pthread_mutex_unlock(&g->posts_lock);
        while (list) {
                mgmt_post *p = list;
                list = p->next;
                p->fn(g, p->userdata);
                free(p);
        }
}

static void offload_done(mgmt_grpc *g, void *userdata) {
        offload *o = userdata;
        mgmt_call *c = o->call;

        if (c)
                o->done(c, o->userdata);
        else if (o->gdone)
                o->gdone(g, o->userdata);
        free(o);
        g->jobs--;
        if (c)
                call_unref(c);
}

static void maybe_close_cq(mgmt_grpc *g);

static void offload_run(void *userdata) {
        offload *o = userdata;
        mgmt_grpc *g = o->g;

        if (o->work)
                o->work(o->userdata);
        if (!o->done_here) {
                mgmt_grpc_post(g, offload_done, o);
                return;
        }
        /* The queue stays open while a job is out (g->jobs), so this is
         * always before the server stops, as a post would be. */
        pthread_mutex_lock(&g->lock);
        offload_done(g, o);
        maybe_close_cq(g);
        pthread_mutex_unlock(&g->lock);
}

static int submit(mgmt_grpc *g, offload *o, bool force) {
        int r;

        if (!g->workers) {
                free(o);
                return -ENOSYS;
        }
        if (g->cq_shut) {
                /* Too late: nothing could run its done function. */
                free(o);
                return -ESHUTDOWN;
        }
        if (o->call)
                o->call->refs++;
        g->jobs++;
        r = mgmt_workers_submit(g->workers, offload_run, o, force);
        if (r < 0) {
                g->jobs--;
                if (o->call)
                        o->call->refs--;
                free(o);
        }
        return r;
}

int mgmt_call_offload(mgmt_call *c, mgmt_work_fn work, mgmt_call_done_fn done, void *userdata) {
        offload *o = cp_xcalloc(1, sizeof *o);

        *o = (offload) { .g = c->g, .call = c, .work = work, .done = done, .userdata = userdata };
        return submit(c->g, o, false);
}

int mgmt_grpc_offload(mgmt_grpc *g, mgmt_work_fn work, mgmt_grpc_post_fn done, void *userdata, bool force) {
        offload *o = cp_xcalloc(1, sizeof *o);

        *o = (offload) { .g = g, .work = work, .gdone = done, .userdata = userdata };
        return submit(g, o, force);
}

int mgmt_grpc_offload_here(mgmt_grpc *g, mgmt_work_fn work, mgmt_grpc_post_fn done, void *userdata) {
        offload *o = cp_xcalloc(1, sizeof *o);

        *o = (offload) { .g = g, .work = work, .gdone = done, .userdata = userdata, .done_here = true };
        return submit(g, o, true);
}

bool mgmt_grpc_stopping(const mgmt_grpc *g) {
        return atomic_load(&((mgmt_grpc *) g)->shutdown_requested);
}

/* ---- request slots ------------------------------------------------------- */

static void request_slot(mgmt_grpc *g, size_t method, size_t cqi) {
        mgmt_call *c = cp_xcalloc(1, sizeof *c);
        grpc_completion_queue *cq = g->cqs[cqi].cq;
        grpc_call_error e;

        c->g = g;
        c->method = method;
        c->cq = cqi;
        c->refs = 1;                    /* the slot's own reference */
        for (size_t k = 0; k < _TAG_MAX; k++)
                c->tags[k] = (mgmt_tag) { .call = c, .kind = (tag_kind) k };
        grpc_call_details_init(&c->details);
        grpc_metadata_array_init(&c->request_md);
        c->log = log_ctx;

        if (method == GENERIC_SLOT)
                e = grpc_server_request_call(g->server, &c->call, &c->details, &c->request_md, cq, cq,
                                             &c->tags[TAG_NEW]);
        else
                e = grpc_server_request_registered_call(
                        g->server, g->registered[method], &c->call, &c->deadline, &c->request_md,
                        g->methods[method].kind == MGMT_RPC_BIDI ? NULL : &c->payload, cq, cq,
                        &c->tags[TAG_NEW]);
        if (e != GRPC_CALL_OK) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "cannot post a request slot", "error",
                          grpc_call_error_to_string(e), NULL);
                call_unref(c);
        }
}

/* The caller's x-request-id when it is short and plain, else a new id. */
static void pick_request_id(mgmt_call *c) {
        for (size_t i = 0; i < c->request_md.count; i++) {
                const grpc_metadata *md = &c->request_md.metadata[i];
                size_t n = GRPC_SLICE_LENGTH(md->value);
                const char *v = (const char *) GRPC_SLICE_START_PTR(md->value);
                if (grpc_slice_str_cmp(md->key, "x-request-id") != 0 || n == 0 || n >= sizeof c->request_id)
                        continue;
                size_t k = 0;
                while (k < n && (isalnum((unsigned char) v[k]) || strchr("._-", v[k])))
                        k++;
                if (k == n) {
                        memcpy(c->request_id, v, n);
                        c->request_id[n] = '\0';
                        return;
                }
        }
        char id[CP_ID_LEN + 1];
        cp_id_new(id);
        memcpy(c->request_id, id, sizeof id);
}

/* "ipv4:127.0.0.1:5000" -> "127.0.0.1", "ipv6:[::1]:5000" -> "::1"
 * (also %-escaped zone ids are kept as they are); anything else -> "". */
static void peer_ip_from(const char *peer, char *out, size_t cap) {
        const char *p, *end;

        out[0] = '\0';
        if (!peer)
                return;
        if (strncmp(peer, "ipv4:", 5) == 0) {
                p = peer + 5;
                end = strrchr(p, ':');
        } else if (strncmp(peer, "ipv6:[", 6) == 0) {
                p = peer + 6;
                end = strchr(p, ']');
        } else
                return;
        if (!end || (size_t) (end - p) >= cap)
                return;
        /* An IPv4 client on a dual-stack listener: "::ffff:a.b.c.d" is
         * a.b.c.d, as Go's net.IP prints it for NetBird. */
        if (end - p > 7 && strncasecmp(p, "::ffff:", 7) == 0 && memchr(p + 7, '.', (size_t) (end - p - 7)))
                p += 7;
        memcpy(out, p, (size_t) (end - p));
        out[end - p] = '\0';
}

static void on_new_call(mgmt_call *c, bool ok) {
        mgmt_grpc *g = c->g;
        grpc_op op;

        if (!ok)
                return;                 /* slot given back at shutdown */
        if (!atomic_load(&g->shutdown_requested))
                request_slot(g, c->method, c->cq);      /* keep this queue's pool full */
        c->matched = true;
        g->live_calls++;

        c->method_name = c->method == GENERIC_SLOT ? grpc_slice_to_c_string(c->details.method) : NULL;
        if (c->method_name) {
                /* grpc_slice_to_c_string memory belongs to gpr; keep a libc copy */
                char *m = cp_xstrdup(c->method_name);
                gpr_free(c->method_name);
                c->method_name = m;
        } else
                c->method_name = cp_xstrdup(c->method == GENERIC_SLOT ? "?" : g->methods[c->method].path);
        c->started_ms = cp_now_mono_ms();
        c->peer = grpc_call_get_peer(c->call);
        peer_ip_from(c->peer, c->peer_ip, sizeof c->peer_ip);
        mgmt_realip_apply(g->realip, &c->request_md, c->peer_ip, sizeof c->peer_ip);
        pick_request_id(c);
        c->log = (cp_log_ctx) { .component = "grpc", .method = c->method_name, .peer = c->peer,
                                .request_id = c->request_id };

        /* Always watch for the end of the call first. */
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &c->cancelled;
        if (!call_batch(c, &op, 1, TAG_CLOSE))
                return;

        if (!conn_admit(c)) {
                cp_log(&c->log, CP_LOG_WARN, "call refused: too many connections (--grpc-max-connections)");
                mgmt_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many connections, please try again later");
                return;
        }
        if (c->method == GENERIC_SLOT) {
                char msg[300];
                (void) snprintf(msg, sizeof msg, "method %s is not implemented", c->method_name);
                cp_log(&c->log, CP_LOG_INFO, "unimplemented method");
                mgmt_call_finish(c, GRPC_STATUS_UNIMPLEMENTED, msg);
                return;
        }
        g->methods[c->method].on_call(c, g->userdata);
}

static void on_event(mgmt_tag *t, bool ok) {
        mgmt_call *c = t->call;

        switch (t->kind) {
        case TAG_NEW:
                on_new_call(c, ok);
                break;
        case TAG_CLOSE:
                atomic_store(&c->over, true);
                cp_log_kv(&c->log, CP_LOG_DEBUG, "call finished", "cancelled", c->cancelled ? "true" : "false",
                          NULL);
                if (c->method != GENERIC_SLOT && c->g->methods[c->method].on_close)
                        c->g->methods[c->method].on_close(c, c->cancelled != 0, c->g->userdata);
                break;
        case TAG_SEND: {
                mgmt_call_sent_fn fn = c->sent_fn;
                void *ud = c->sent_userdata;
                grpc_byte_buffer_destroy(c->send_bb);
                c->send_bb = NULL;
                c->sent_fn = NULL;
                c->sent_userdata = NULL;
                if (fn)
                        fn(c, ok, ud);
                break;
        }
        case TAG_RECV: {
                mgmt_call_recv_fn fn = c->recv_fn;
                void *ud = c->recv_userdata;
                grpc_byte_buffer *msg = ok ? c->recv_bb : NULL;
                if (!ok && c->recv_bb)
                        grpc_byte_buffer_destroy(c->recv_bb);
                c->recv_bb = NULL;
                c->receiving = false;
                c->recv_fn = NULL;
                c->recv_userdata = NULL;
                if (fn)
                        fn(c, msg, ud);
                else if (msg)
                        grpc_byte_buffer_destroy(msg);
                break;
        }
        case TAG_STATUS:
        case _TAG_MAX:
                break;
        }
        call_unref(c);
}

/* ---- the CQ thread ------------------------------------------------------- */

static void maybe_cancel(mgmt_grpc *g) {
        int64_t at = atomic_load(&g->cancel_at_ms);

        if (g->calls_cancelled || g->server_destroyed || at == 0 || cp_now_mono_ms() < at)
                return;
        g->calls_cancelled = true;
        if (g->live_calls > 0) {
                char n[32];
                (void) snprintf(n, sizeof n, "%zu", g->live_calls);
                cp_log_kv(&log_ctx, CP_LOG_WARN, "shutdown grace period over, cancelling calls", "calls", n,
                          NULL);
        }
        grpc_server_cancel_all_calls(g->server);
}

/* After the server is destroyed: once no offloaded job and no post can
 * still arrive, close every queue (each then drains to
 * GRPC_QUEUE_SHUTDOWN). Under the handler lock. */
static void maybe_close_cq(mgmt_grpc *g) {
        if (!g->server_destroyed || g->cq_shut || g->jobs > 0)
                return;
        /* The server's shutdown tag (queue 0) may be handled before the
         * last completions of calls on other queues: their handlers can
         * still start jobs (a stream's fenced disconnect). Wait for every
         * matched call to be freed, bounded (a reference a handler never
         * drops must not stop the process from exiting: it is logged). */
        if (g->live_calls > 0 && cp_now_mono_ms() < g->destroyed_ms + CLOSE_WAIT_CALLS_MS)
                return;
        pthread_mutex_lock(&g->posts_lock);
        if (g->wake_pending || g->posts_head) {
                pthread_mutex_unlock(&g->posts_lock);
                return;         /* a wake is on its way: run those posts first */
        }
        g->cq_closed = true;
        if (g->lame) {
                grpc_channel_destroy(g->lame);
                g->lame = NULL;
        }
        pthread_mutex_unlock(&g->posts_lock);
        for (size_t i = 0; i < g->n_cqs; i++)
                grpc_completion_queue_shutdown(g->cqs[i].cq);
        g->cq_shut = true;
}

/* Under the handler lock: one event of any queue. */
static void handle_event(mgmt_grpc *g, grpc_event ev) {
        if (ev.type == GRPC_OP_COMPLETE) {
                mgmt_tag *t = ev.tag;
                if (t == &g->shutdown_tag) {
                        /* No call is matched any more; what is left are
                         * completions of calls already finishing, jobs
                         * still on workers and the slots given back. */
                        grpc_server_destroy(g->server);
                        g->server_destroyed = true;
                        g->destroyed_ms = cp_now_mono_ms();
                        if (g->jobs > 0) {
                                char n[32];
                                (void) snprintf(n, sizeof n, "%zu", g->jobs);
                                cp_log_kv(&log_ctx, CP_LOG_INFO, "waiting for jobs on workers", "jobs", n,
                                          NULL);
                        }
                } else if (t == &g->wake_tag)
                        run_posts(g);
                else
                        on_event(t, ev.success != 0);
        }
        maybe_cancel(g);
        maybe_close_cq(g);
}

/* One wait on queue q (outside the handler lock: this is where gRPC's
 * own per-queue work happens, in parallel across queues) and what it
 * returned. False once the queue is shut down and drained. */
static bool poll_once(mgmt_cq *q, int64_t max_ms) {
        mgmt_grpc *g = q->g;
        int64_t poll = atomic_load(&g->shutdown_requested) ? POLL_SHUTDOWN_MS : POLL_IDLE_MS;
        gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                             gpr_time_from_millis(poll < max_ms ? poll : max_ms, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(q->cq, deadline, NULL);

        if (ev.type == GRPC_QUEUE_SHUTDOWN)
                return false;
        pthread_mutex_lock(&g->lock);
        handle_event(g, ev);
        pthread_mutex_unlock(&g->lock);
        return true;
}

/* After a queue's loop ended: the last one reports the server stopped. */
static void loop_done(mgmt_grpc *g) {
        bool last;

        pthread_mutex_lock(&g->lock);
        last = --g->n_running == 0;
        pthread_mutex_unlock(&g->lock);
        if (!last)
                return;
        if (g->live_calls > 0) {
                char n[32];
                (void) snprintf(n, sizeof n, "%zu", g->live_calls);
                cp_log_kv(&log_ctx, CP_LOG_WARN, "calls still referenced after shutdown", "calls", n, NULL);
        }
        cp_log(&log_ctx, CP_LOG_INFO, "grpc server stopped");
        if (g->on_stopped)
                g->on_stopped(g, g->stopped_userdata);
}

static void *cq_thread(void *userdata) {
        mgmt_cq *q = userdata;

        while (poll_once(q, POLL_IDLE_MS))
                ;
        loop_done(q->g);
        return NULL;
}

/* Queues a thread could not be started for: polled here, round robin,
 * until every one of them is shut down (only on the failure path of
 * mgmt_grpc_new, with the server shutting down). */
static void poll_unstarted(mgmt_grpc *g) {
        bool *done = cp_xcalloc(g->n_cqs, sizeof *done);
        size_t left = 0;

        for (size_t i = 0; i < g->n_cqs; i++)
                if (g->cqs[i].thread_started)
                        done[i] = true;
                else
                        left++;
        while (left > 0)
                for (size_t i = 0; i < g->n_cqs; i++)
                        if (!done[i] && !poll_once(&g->cqs[i], 5)) {
                                done[i] = true;
                                left--;
                                loop_done(g);
                        }
        free(done);
}

/* ---- setup / teardown ---------------------------------------------------- */

static grpc_server_credentials *make_credentials(const mgmt_tls *tls) {
        if (!tls)
                return grpc_insecure_server_credentials_create();
        grpc_ssl_pem_key_cert_pair pair = { .private_key = tls->key_pem, .cert_chain = tls->cert_pem };
        return grpc_ssl_server_credentials_create_ex(NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
                                                     NULL);
}

int mgmt_grpc_new(const mgmt_grpc_options *o, mgmt_grpc **ret, cp_error *reterr) {
        mgmt_grpc *g = cp_xcalloc(1, sizeof *g);
        grpc_arg args[] = {
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0 },
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                  .value.integer = MIN_PING_INTERVAL_MS },
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                  .value.integer = 1 },
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                  .value.integer = MGMT_GRPC_MAX_RECV },
                /* last: left out when 0 (gRPC's default, no limit) */
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_MAX_CONCURRENT_STREAMS,
                  .value.integer = o->max_streams_per_connection > INT32_MAX ? INT32_MAX :
                                   (int) o->max_streams_per_connection },
        };
        grpc_channel_args chargs = { .num_args = ELEMENTSOF(args) - (o->max_streams_per_connection > 0 ? 0 : 1),
                                     .args = args };
        char addr[300];
        int r, e;

        g->shutdown_tag = (mgmt_tag) { .call = NULL };
        g->wake_tag = (mgmt_tag) { .call = NULL };
        pthread_mutex_init(&g->posts_lock, NULL);
        pthread_mutex_init(&g->lock, NULL);
        g->n_cqs = mgmt_grpc_threads_for(o->threads);
        g->posts_tail = &g->posts_head;
        g->userdata = o->userdata;
        g->workers = o->workers;
        g->on_stopped = o->on_stopped;
        g->stopped_userdata = o->stopped_userdata;
        g->on_start = o->on_start;
        g->start_userdata = o->start_userdata;
        g->realip = o->realip;
        g->conns = mgmt_strmap_new();
        g->max_connections = o->max_connections;
        g->n_methods = o->n_methods;
        g->methods = cp_xcalloc(o->n_methods + 1, sizeof *g->methods);
        g->registered = cp_xcalloc(o->n_methods + 1, sizeof *g->registered);
        if (o->n_methods)
                memcpy(g->methods, o->methods, o->n_methods * sizeof *g->methods);

        grpc_init();
        g->grpc_inited = true;
        g->server = grpc_server_create(&chargs, NULL);
        g->cqs = cp_xcalloc(g->n_cqs, sizeof *g->cqs);
        for (size_t i = 0; i < g->n_cqs; i++) {
                g->cqs[i] = (mgmt_cq) { .g = g, .index = i, .cq = grpc_completion_queue_create_for_next(NULL) };
                grpc_server_register_completion_queue(g->server, g->cqs[i].cq, NULL);
        }
        g->cq = g->cqs[0].cq;
        g->n_running = g->n_cqs;
        g->lame = grpc_lame_client_channel_create("wake", GRPC_STATUS_UNAVAILABLE, "wake-up channel");
        for (size_t i = 0; i < g->n_methods; i++) {
                grpc_server_register_method_payload_handling ph =
                        g->methods[i].kind == MGMT_RPC_BIDI ? GRPC_SRM_PAYLOAD_NONE
                                                           : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
                g->registered[i] = grpc_server_register_method(g->server, g->methods[i].path, NULL, ph, 0);
                if (!g->registered[i]) {
                        r = cp_error_set(reterr, -EINVAL, "cannot register gRPC method %s", g->methods[i].path);
                        goto fail;
                }
        }

        /* IPv6 literals need brackets in a gRPC target. */
        if (strchr(o->address, ':') && o->address[0] != '[')
                (void) snprintf(addr, sizeof addr, "[%s]:%d", o->address, o->port);
        else
                (void) snprintf(addr, sizeof addr, "%s:%d", o->address, o->port);
        grpc_server_credentials *creds = make_credentials(o->tls);
        g->port = grpc_server_add_http2_port(g->server, addr, creds);
        grpc_server_credentials_release(creds);
        if (g->port <= 0) {
                r = cp_error_set(reterr, -EADDRINUSE, "cannot listen for gRPC on %s", addr);
                cp_error_hint(reterr, "is another process using the port, or is the address not local?");
                goto fail;
        }
        grpc_server_start(g->server);
        size_t per_method = SLOTS_PER_METHOD / g->n_cqs > SLOTS_MIN ? SLOTS_PER_METHOD / g->n_cqs : SLOTS_MIN;
        size_t generic = SLOTS_GENERIC / g->n_cqs > SLOTS_MIN ? SLOTS_GENERIC / g->n_cqs : SLOTS_MIN;
        for (size_t q = 0; q < g->n_cqs; q++) {
                for (size_t i = 0; i < g->n_methods; i++)
                        for (size_t k = 0; k < per_method; k++)
                                request_slot(g, i, q);
                for (size_t k = 0; k < generic; k++)
                        request_slot(g, GENERIC_SLOT, q);
        }

        /* Before any event is handled: no thread polls yet. */
        if (g->on_start)
                g->on_start(g, g->start_userdata);
        for (size_t i = 0; i < g->n_cqs; i++) {
                char name[16];
                e = pthread_create(&g->cqs[i].thread, NULL, cq_thread, &g->cqs[i]);
                if (e != 0) {
                        /* The queues without a thread are drained here,
                         * on this thread; the others by their own. */
                        atomic_store(&g->shutdown_requested, true);
                        atomic_store(&g->cancel_at_ms, 1);
                        pthread_mutex_lock(&g->lock);
                        g->on_stopped = NULL;
                        pthread_mutex_unlock(&g->lock);
                        grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
                        poll_unstarted(g);
                        mgmt_grpc_free(g);
                        return cp_error_set(reterr, -e, "cannot start a gRPC thread: %s", strerror(e));
                }
                (void) snprintf(name, sizeof name, "grpc-cq%zu", i);
                (void) pthread_setname_np(g->cqs[i].thread, name);
                g->cqs[i].thread_started = true;
        }
        *ret = g;
        return 0;

fail:
        /* Never started: destroy directly, then drain the empty queue. */
        grpc_server_destroy(g->server);
        g->server_destroyed = true;
        g->cq_closed = true;
        grpc_channel_destroy(g->lame);
        g->lame = NULL;
        for (size_t i = 0; i < g->n_cqs; i++) {
                grpc_completion_queue_shutdown(g->cqs[i].cq);
                while (grpc_completion_queue_next(g->cqs[i].cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
                       GRPC_QUEUE_SHUTDOWN)
                        ;
        }
        mgmt_grpc_free(g);
        return r;
}

int mgmt_grpc_port(const mgmt_grpc *g) {
        return g->port;
}

size_t mgmt_grpc_threads_for(int threads) {
        if (threads > 0)
                return threads < CQS_MAX ? (size_t) threads : CQS_MAX;
        return CQS_DEFAULT;
}

size_t mgmt_grpc_threads(const mgmt_grpc *g) {
        return g->n_cqs;
}

void mgmt_grpc_shutdown(mgmt_grpc *g, int64_t grace_ms) {
        if (atomic_exchange(&g->shutdown_requested, true))
                return;
        int64_t at = cp_now_mono_ms() + (grace_ms > 0 ? grace_ms : 0);
        atomic_store(&g->cancel_at_ms, at > 0 ? at : 1);
        grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
}

void mgmt_grpc_cancel_now(mgmt_grpc *g) {
        if (atomic_load(&g->shutdown_requested))
                atomic_store(&g->cancel_at_ms, 1);
}

mgmt_grpc *mgmt_grpc_free(mgmt_grpc *g) {
        if (!g)
                return NULL;
        for (size_t i = 0; i < g->n_cqs; i++)
                if (g->cqs[i].thread_started)
                        (void) pthread_join(g->cqs[i].thread, NULL);
        if (g->lame)
                grpc_channel_destroy(g->lame);
        for (size_t i = 0; i < g->n_cqs; i++)
                grpc_completion_queue_destroy(g->cqs[i].cq);
        free(g->cqs);
        if (g->grpc_inited)
                grpc_shutdown();
        while (g->posts_head) {
                mgmt_post *p = g->posts_head;
                g->posts_head = p->next;
                free(p);
        }
        pthread_mutex_destroy(&g->posts_lock);
        pthread_mutex_destroy(&g->lock);
        free(g->methods);
        free(g->registered);
        mgmt_strmap_free(g->conns);
        free(g);
        return NULL;
}

/* ---- shared by the protocols ------------------------------------------------------ */

mgmt_rpc_kind mgmt_rpc_kind_of(cp_proto_streaming s) {
        switch (s) {
        case CP_PROTO_UNARY:
                return MGMT_RPC_UNARY;
        case CP_PROTO_SERVER_STREAMING:
                return MGMT_RPC_SERVER_STREAM;
        case CP_PROTO_CLIENT_STREAMING:
        case CP_PROTO_BIDI_STREAMING:
                break;
        }
        return MGMT_RPC_BIDI;           /* messages are read with RECV_MESSAGE */
}

grpc_slice mgmt_payload_slice(grpc_byte_buffer *bb) {
        grpc_byte_buffer_reader reader;
        grpc_slice s;

        if (!bb || !grpc_byte_buffer_reader_init(&reader, bb))
                return grpc_empty_slice();
        s = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        return s;
}

void mgmt_call_log_rpc(mgmt_call *c, const char *component, const char *method, const char *account,
                       const char *peer_key, grpc_status_code status, bool ok_is_debug, const char *message,
                       const char *detail) {
        const cp_log_ctx *cl = mgmt_call_log(c);
        cp_log_ctx ctx = { .component = component, .request_id = cl->request_id, .method = method,
                           .peer = mgmt_call_peer_ip(c), .account = account && *account ? account : NULL };
        cp_log_level level = CP_LOG_INFO;
        char took[32];

        if (status == GRPC_STATUS_OK && ok_is_debug)
                level = CP_LOG_DEBUG;
        else if (status == GRPC_STATUS_INTERNAL || status == GRPC_STATUS_UNKNOWN ||
                 status == GRPC_STATUS_DATA_LOSS)
                level = CP_LOG_ERROR;
        else if (status == GRPC_STATUS_RESOURCE_EXHAUSTED || status == GRPC_STATUS_UNAVAILABLE)
                level = CP_LOG_WARN;
        if (!cp_log_enabled(level))
                return;
        (void) snprintf(took, sizeof took, "%" PRId64, cp_now_mono_ms() - mgmt_call_started_ms(c));
        cp_log_kv(&ctx, level, "rpc", "code", cp_proto_status_name((int) status), "peer_key",
                  peer_key && *peer_key ? peer_key : NULL, "error", status == GRPC_STATUS_OK ? NULL : message,
                  "detail", detail && *detail ? detail : NULL, "took_ms", took, NULL);
}
