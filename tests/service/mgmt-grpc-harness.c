/*
 * A test harness around mgmt-core's gRPC server (mgmt-grpc.c) with two
 * registered methods, so the service tests can drive what the management
 * binary cannot show yet (it has no methods of its own):
 *
 *   /cptest.Harness/Empty  server-streaming, finishes OK with no messages
 *   /cptest.Harness/Hold   server-streaming, never finishes by itself
 *   /cptest.Harness/Watch  server-streaming, held until the client goes;
 *                          logs "watching call" with the queue it is on
 *   /cptest.Harness/Push   unary: its request bytes go to every Watch
 *                          stream as one message, as a fan-out does: the
 *                          streams in chunks of 4, each chunk copied
 *                          ("sealed") on a worker that then starts the
 *                          chunk's sends itself (mgmt_grpc_offload_here);
 *                          a stream with a message in flight keeps the
 *                          newest one pending, and never takes a message
 *                          of an older push than one it has (chunks of
 *                          pushes back to back finish in any order).
 *                          Answers the number of
 *                          streams as decimal text.
 *
 * Usage: mgmt-grpc-harness GRACE_MS [THREADS]. Logs JSON lines on stdout
 * ("listening" with the port and the number of completion queues first);
 * on SIGTERM it calls mgmt_grpc_shutdown(GRACE_MS), waits for on_stopped,
 * frees everything and exits 0.
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-grpc.h"

#include <pthread.h>
#include <signal.h>

typedef struct watcher watcher;

typedef struct harness {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopped;
        /* Under the server's handler lock. */
        watcher *watchers;
        uint64_t pushes;
        mgmt_workers *workers;
} harness;

/* A Watch stream: one reference while the call is open, one per chunk
 * that holds it; the last one drops the call's. */
struct watcher {
        unsigned refs;
        harness *h;
        mgmt_call *call;
        bool closed;
        uint64_t last_push;             /* the newest push taken */
        uint8_t *pending;               /* the newest unsent message (malloc) */
        size_t pending_len;
        watcher *prev, *next;
};

typedef struct push_chunk {
        watcher *w[4];
        uint8_t *msg[4];
        size_t n;
        uint64_t push;
        grpc_slice payload;
} push_chunk;

#define CHUNK 4

static void empty_call(mgmt_call *c, void *userdata) {
        cp_log(mgmt_call_log(c), CP_LOG_INFO, "empty call");
        mgmt_call_finish(c, GRPC_STATUS_OK, NULL);
}

static void hold_call(mgmt_call *c, void *userdata) {
        cp_log(mgmt_call_log(c), CP_LOG_INFO, "holding call");
}

static void log_close(mgmt_call *c, bool cancelled, void *userdata) {
        cp_log_kv(mgmt_call_log(c), CP_LOG_INFO, "call closed", "cancelled", cancelled ? "true" : "false", NULL);
}

static void watcher_unref(watcher *w) {
        if (--w->refs > 0)
                return;
        free(w->pending);
        mgmt_call_unref(w->call);
        free(w);
}

static void watcher_sent(mgmt_call *c, bool ok, void *userdata);

/* Under the handler lock: the pending message goes out when nothing is
 * in flight. */
static void watcher_pump(watcher *w) {
        if (w->closed || !w->pending || mgmt_call_sending(w->call))
                return;
        uint8_t *m = w->pending;
        w->pending = NULL;
        w->refs++;
        if (mgmt_call_send_take(w->call, m, w->pending_len, watcher_sent, w) < 0)
                watcher_unref(w);
}

static void watcher_sent(mgmt_call *c, bool ok, void *userdata) {
        watcher *w = userdata;

        if (ok)
                watcher_pump(w);
        watcher_unref(w);
}

static void watch_call(mgmt_call *c, void *userdata) {
        harness *h = userdata;
        watcher *w = cp_xcalloc(1, sizeof *w);
        char q[24];

        mgmt_call_ref(c);
        *w = (watcher) { .refs = 1, .h = h, .call = c, .next = h->watchers };
        if (h->watchers)
                h->watchers->prev = w;
        h->watchers = w;
        mgmt_call_set_userdata(c, w);
        (void) snprintf(q, sizeof q, "%zu", mgmt_call_queue(c));
        cp_log_kv(mgmt_call_log(c), CP_LOG_INFO, "watching call", "queue", q, NULL);
}

static void watch_close(mgmt_call *c, bool cancelled, void *userdata) {
        harness *h = userdata;
        watcher *w = mgmt_call_userdata(c);

        log_close(c, cancelled, userdata);
        w->closed = true;
        if (w->prev)
                w->prev->next = w->next;
        else
                h->watchers = w->next;
        if (w->next)
                w->next->prev = w->prev;
        watcher_unref(w);
}

/* Worker: the chunk's messages, one copy per stream (a stand-in for
 * packing and sealing each stream's map). */
static void chunk_work(void *userdata) {
        push_chunk *ch = userdata;
        size_t len = GRPC_SLICE_LENGTH(ch->payload);

        for (size_t i = 0; i < ch->n; i++) {
                ch->msg[i] = cp_xmalloc(len ? len : 1);
                memcpy(ch->msg[i], GRPC_SLICE_START_PTR(ch->payload), len);
        }
}

/* The same worker, under the handler lock: start the sends. */
static void chunk_done(mgmt_grpc *g, void *userdata) {
        push_chunk *ch = userdata;
        size_t len = GRPC_SLICE_LENGTH(ch->payload);

        for (size_t i = 0; i < ch->n; i++) {
                watcher *w = ch->w[i];
                if (w->closed || ch->push < w->last_push) {
                        free(ch->msg[i]);
                } else {
                        free(w->pending);
                        w->last_push = ch->push;
                        w->pending = ch->msg[i];
                        w->pending_len = len;
                        watcher_pump(w);
                }
                watcher_unref(w);
        }
        grpc_slice_unref(ch->payload);
        free(ch);
}

static void push_call(mgmt_call *c, void *userdata) {
        harness *h = userdata;
        grpc_byte_buffer *bb = mgmt_call_take_payload(c);
        grpc_slice payload = mgmt_payload_slice(bb);
        push_chunk *ch = NULL;
        size_t n = 0;
        char text[24];

        if (bb)
                grpc_byte_buffer_destroy(bb);
        h->pushes++;
        for (watcher *w = h->watchers; w; w = w->next) {
                if (!ch) {
                        ch = cp_xcalloc(1, sizeof *ch);
                        ch->payload = grpc_slice_ref(payload);
                        ch->push = h->pushes;
                }
                w->refs++;
                ch->w[ch->n++] = w;
                n++;
                if (ch->n == CHUNK || !w->next) {
                        if (mgmt_grpc_offload_here(mgmt_call_grpc(c), chunk_work, chunk_done, ch) < 0) {
                                for (size_t i = 0; i < ch->n; i++)
                                        watcher_unref(ch->w[i]);
                                grpc_slice_unref(ch->payload);
                                free(ch);
                        }
                        ch = NULL;
                }
        }
        grpc_slice_unref(payload);
        (void) snprintf(text, sizeof text, "%zu", n);
        mgmt_call_reply(c, GRPC_STATUS_OK, NULL, text, strlen(text));
}

static const mgmt_rpc_method methods[] = {
        { "/cptest.Harness/Empty", MGMT_RPC_SERVER_STREAM, empty_call, log_close },
        { "/cptest.Harness/Hold", MGMT_RPC_SERVER_STREAM, hold_call, log_close },
        { "/cptest.Harness/Watch", MGMT_RPC_SERVER_STREAM, watch_call, watch_close },
        { "/cptest.Harness/Push", MGMT_RPC_UNARY, push_call, log_close },
};

static void on_stopped(mgmt_grpc *g, void *userdata) {
        harness *h = userdata;

        pthread_mutex_lock(&h->lock);
        h->stopped = true;
        pthread_cond_signal(&h->cond);
        pthread_mutex_unlock(&h->lock);
}

int main(int argc, char **argv) {
        static const cp_log_ctx ctx = { .component = "harness" };
        harness h = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        int64_t grace = 1000, threads = 0;
        mgmt_grpc *g = NULL;
        cp_error err = { 0 };
        sigset_t set;
        char port[16], nq[16];
        int sig;

        if ((argc > 1 && cp_parse_int64(argv[1], 0, 600000, &grace) < 0) ||
            (argc > 2 && cp_parse_int64(argv[2], 0, 64, &threads) < 0)) {
                fprintf(stderr, "usage: %s [GRACE_MS [THREADS]]\n", argv[0]);
                return 2;
        }
        /* Block the signals before gRPC starts threads, then sigwait. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        (void) cp_log_open("console", CP_LOG_DEBUG, NULL);
        if (mgmt_workers_new(2, 1024, &h.workers, &err) < 0) {
                (void) cp_log_error(&ctx, err.code, &err, "cannot start workers");
                return 1;
        }

        mgmt_grpc_options o = {
                .address = "127.0.0.1",
                .port = 0,
                .methods = methods,
                .n_methods = ELEMENTSOF(methods),
                .userdata = &h,
                .workers = h.workers,
                .threads = (int) threads,
                .on_stopped = on_stopped,
                .stopped_userdata = &h,
        };
        if (mgmt_grpc_new(&o, &g, &err) < 0) {
                (void) cp_log_error(&ctx, err.code, &err, "cannot start");
                return 1;
        }
        (void) snprintf(port, sizeof port, "%d", mgmt_grpc_port(g));
        (void) snprintf(nq, sizeof nq, "%zu", mgmt_grpc_threads(g));
        cp_log_kv(&ctx, CP_LOG_INFO, "listening", "protocol", "grpc", "port", port, "queues", nq, NULL);

        (void) sigwait(&set, &sig);
        cp_log(&ctx, CP_LOG_INFO, "shutting down");
        mgmt_grpc_shutdown(g, grace);
        pthread_mutex_lock(&h.lock);
        while (!h.stopped)
                pthread_cond_wait(&h.cond, &h.lock);
        pthread_mutex_unlock(&h.lock);
        mgmt_grpc_free(g);
        mgmt_workers_free(h.workers);
        cp_log(&ctx, CP_LOG_INFO, "stopped");
        cp_log_close();
        return 0;
}
