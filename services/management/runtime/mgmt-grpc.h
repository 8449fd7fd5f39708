/*
 * mgmt-grpc.h: the gRPC server (C core API) for agents.
 *
 * Threads: one or several completion queues, each polled by its own
 * thread (--grpc-threads; default 1: see docs/benchmarks.md "Several
 * completion queues" for why several are not the default). The server spreads
 * connections over the queues and every queue has its own request slots,
 * so each queue holds the calls of a share of the connections: gRPC's
 * per-event work on a queue (Debian's libgrpc is built without NDEBUG and
 * scans the queue's outstanding tags on every completion) grows with the
 * calls on that queue only, and runs on the queue's thread in parallel
 * with the others.
 *
 * The handler lock: handlers stay serialized. A thread takes the server's
 * handler lock after grpc_completion_queue_next() returned and holds it
 * while it handles that one event (or runs the posts); waiting on a queue
 * is outside it. So "the CQ thread" below and in every handler's comments
 * means "whichever CQ thread holds the handler lock": handler state needs
 * no locking of its own, exactly as with one thread, but it must not be
 * kept in thread-local storage and no handler may block (a handler that
 * waits stalls every queue). A call is bound to one queue for its life;
 * its batches may be started from any thread holding the lock.
 *
 * Work that may block (PostgreSQL, crypto) is handed to the worker pool
 * with mgmt_call_offload(): the job runs on a worker, and its result comes
 * back through mgmt_grpc_post(), which queues a function and wakes queue 0
 * with an immediately-expiring watch on a lame channel ("mode B" of
 * grpc-c-core.md section 6). mgmt_grpc_offload_here() instead runs the
 * done function on the worker itself, under the handler lock, as soon as
 * the work is over: a fan-out's sealed maps start their sends from the
 * worker that sealed them while other workers still seal, with no hop
 * through a queue. Other threads may call only mgmt_grpc_post(),
 * mgmt_grpc_shutdown(), mgmt_grpc_cancel_now() and the read-only call
 * accessors marked "any thread". No CQ thread touches the manager's
 * event_base: the last one to stop reports back through the on_stopped
 * callback, which the manager turns into an eventfd wake-up.
 *
 * Calls: each call is a mgmt_call whose tags (NEW, CLOSE, STATUS, ...) are
 * embedded in it; the call holds one reference per outstanding batch (and
 * one for its request slot) and is freed when the count drops to zero,
 * never from a handler (style.md habit 14). Every call starts a
 * RECV_CLOSE_ON_SERVER batch first, so cancellation is always seen.
 *
 * Methods: a table of mgmt_rpc_method rows is registered before the server
 * starts; anything else lands on generic request slots and is answered
 * UNIMPLEMENTED (SEND_INITIAL_METADATA in the same batch as the status:
 * pitfall 1 of grpc-c-core.md).
 *
 * Shutdown: mgmt_grpc_shutdown() stops accepting and lets in-flight calls
 * run for the grace period; then the CQ thread cancels what is left,
 * destroys the server, waits until every offloaded job and every post has
 * come back (a job still inside the database keeps the queue open) and
 * every matched call is freed (the last completions of calls on other
 * queues may still start jobs; bounded at 5 s, then logged), drains the
 * queues to GRPC_QUEUE_SHUTDOWN, calls on_stopped and exits. A job
 * offloaded after that is refused (-ESHUTDOWN).
 */
#pragma once

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/log.h"
#include "mgmt-tls.h"
#include "mgmt-work.h"
#include "cp-methods.h"

/* Largest request message gRPC accepts; bigger ones are refused by gRPC
 * itself with RESOURCE_EXHAUSTED before any handler runs. It is the
 * largest legitimate sealed agent request (a LoginRequest with a 256 KiB
 * plaintext: the arithmetic is in agent/mgmt-agent.c) plus its 40 B box
 * and 64 B envelope, rounded up; each edge bounds its methods further
 * (agent: 256 KiB or 32 KiB of plaintext; proxy: 128 KiB). */
#define MGMT_GRPC_MAX_RECV (288 * 1024)

typedef struct mgmt_grpc mgmt_grpc;
typedef struct mgmt_call mgmt_call;

typedef enum mgmt_rpc_kind {
        MGMT_RPC_UNARY,                 /* request arrives with the call */
        MGMT_RPC_SERVER_STREAM,         /* request arrives with the call */
        MGMT_RPC_BIDI,                  /* messages are read with RECV_MESSAGE */
} mgmt_rpc_kind;

typedef struct mgmt_rpc_method {
        const char *path;               /* "/management.ManagementService/GetServerKey" */
        mgmt_rpc_kind kind;
        /* Runs on the CQ thread when a call arrives. It should eventually
         * call mgmt_call_finish() (unless the call is cancelled first); it
         * never frees the call. */
        void (*on_call)(mgmt_call *call, void *userdata);
        /* Optional; runs on the CQ thread once the call is over, finished
         * or cancelled (client gone, deadline, server shutdown). The call
         * stays valid until this returns, and is freed once its last batch
         * completes. */
        void (*on_close)(mgmt_call *call, bool cancelled, void *userdata);
        /* Anything the handlers want per method (mgmt_call_method(c)->data). */
        const void *data;
} mgmt_rpc_method;

typedef struct mgmt_grpc_options {
        const char *address;            /* listen address, IPv4 or IPv6 literal or host name */
        int port;                       /* 0 = any free port */
        const mgmt_tls *tls;            /* NULL = plaintext h2c; borrowed for the call only */
        const mgmt_rpc_method *methods; /* may be NULL */
        size_t n_methods;
        void *userdata;                 /* passed to on_call */
        /* Runs offloaded jobs (mgmt_call_offload); borrowed, must outlive
         * the server. NULL = offloading fails with -ENOSYS. */
        mgmt_workers *workers;
        /* Called once, on the last CQ thread to stop, after the server is
         * fully stopped (outside the handler lock); the thread exits right
         * after it returns. */
        void (*on_stopped)(mgmt_grpc *g, void *userdata);
        void *stopped_userdata;
        /* Optional; called once, on the thread of mgmt_grpc_new() before
         * any CQ thread starts, so that modules posting to the server
         * (mgmt_grpc_post) can learn the mgmt_grpc pointer before any
         * call runs. */
        void (*on_start)(mgmt_grpc *g, void *userdata);
        void *start_userdata;
        /* Reverse proxies trusted for the agent's address (mgmt-realip.h);
         * borrowed, must outlive the server; NULL = none. */
        const struct mgmt_realip *realip;
        /* Limits (docs/ops.md "Limits"); 0 = none. Streams: advertised as
         * SETTINGS_MAX_CONCURRENT_STREAMS (gRPC clients hold further
         * calls until a stream ends). Connections: distinct peers
         * (address and port) with calls in progress; a call from one more
         * is answered RESOURCE_EXHAUSTED "too many connections". Counted
         * in netbird_cp_connections{listener="grpc"} (mgmt-limits.h). */
        int64_t max_streams_per_connection;
        int64_t max_connections;
        /* Completion queues, one thread each (--grpc-threads); 0 = the
         * default, 1 (mgmt_grpc_threads_for). */
        int threads;
} mgmt_grpc_options;

/* Initialises gRPC, binds, starts the server and its CQ thread. On failure
 * everything is undone and reterr names the address. */
int mgmt_grpc_new(const mgmt_grpc_options *o, mgmt_grpc **ret, cp_error *reterr);
/* The port actually bound. */
int mgmt_grpc_port(const mgmt_grpc *g);
/* The number of completion queues (and CQ threads) for the option value
 * threads (0 = the default, 1; at most 64), and the
 * number a server runs. */
size_t mgmt_grpc_threads_for(int threads);
size_t mgmt_grpc_threads(const mgmt_grpc *g);
/* Any thread, idempotent: stop accepting calls; cancel those still running
 * after grace_ms. */
void mgmt_grpc_shutdown(mgmt_grpc *g, int64_t grace_ms);
/* Any thread, after mgmt_grpc_shutdown(): cancel in-flight calls now. */
void mgmt_grpc_cancel_now(mgmt_grpc *g);
/* Joins the CQ thread (call only after on_stopped ran) and shuts gRPC down.
 * Accepts NULL; returns NULL. */
mgmt_grpc *mgmt_grpc_free(mgmt_grpc *g);

/* Any thread: runs fn(g, userdata) on the CQ thread soon, in posting
 * order. Posts made before the server has stopped always run (shutdown
 * waits for them); a post after on_stopped is a bug: it is logged and
 * dropped. Returns false when dropped: fn will not run, so userdata is
 * still the caller's to free. */
typedef void (*mgmt_grpc_post_fn)(mgmt_grpc *g, void *userdata);
bool mgmt_grpc_post(mgmt_grpc *g, mgmt_grpc_post_fn fn, void *userdata);

/* CQ thread: runs work(userdata) on a worker (work may be NULL), then
 * done(g, userdata) on the CQ thread. Like mgmt_call_offload() but for
 * work that belongs to no call (fan-out of network maps); shutdown waits
 * for it the same way. force: queue even when the worker queue is full.
 * Returns 0, or -EAGAIN / -ESHUTDOWN / -ENOSYS, and then neither runs. */
int mgmt_grpc_offload(mgmt_grpc *g, mgmt_work_fn work, mgmt_grpc_post_fn done, void *userdata, bool force);
/* CQ thread: the same, always queued (force), but done(g, userdata) runs
 * on the worker right after work, under the handler lock, instead of
 * being posted: for work whose result goes straight to the network
 * (a fan-out chunk's sends). done may do anything a handler may; it must
 * not rely on running after posts made before it. */
int mgmt_grpc_offload_here(mgmt_grpc *g, mgmt_work_fn work, mgmt_grpc_post_fn done, void *userdata);
/* Any thread: true once mgmt_grpc_shutdown() was called. */
bool mgmt_grpc_stopping(const mgmt_grpc *g);

/* ---- for handlers (CQ thread only unless marked) --------------------------- */

/* Sends the final status (with initial metadata if not sent yet). message
 * may be NULL. */
void mgmt_call_finish(mgmt_call *c, grpc_status_code status, const char *message);
/* Unary answer: with status OK sends data[0..len) as the one response
 * message (len may be 0: an empty message, e.g. Empty) and the status, in
 * one batch together with the initial metadata; with any other status
 * data is ignored and only the status goes out. message may be NULL. The
 * bytes are copied. */
void mgmt_call_reply(mgmt_call *c, grpc_status_code status, const char *message, const void *data,
                     size_t len);
/* Server streams: sends data[0..len) (copied) as the next message, with
 * the initial metadata if not sent yet. One message may be in flight at a
 * time (grpc-c-core.md §4): chain the next one from sent(c, ok, userdata),
 * which runs on the CQ thread when the message went out (ok) or the call
 * died (!ok: stop sending; on_close reports why). The call holds a
 * reference until then. Returns 0, -EBUSY (a message is in flight),
 * -EPIPE (status sent or call over) or -EIO (gRPC refused the batch). */
typedef void (*mgmt_call_sent_fn)(mgmt_call *c, bool ok, void *userdata);
int mgmt_call_send(mgmt_call *c, const void *data, size_t len, mgmt_call_sent_fn sent, void *userdata);
/* The same with a malloc'd data that the call takes in every case (freed
 * once written, or at once on failure): no copy. */
int mgmt_call_send_take(mgmt_call *c, void *data, size_t len, mgmt_call_sent_fn sent, void *userdata);
/* True while a message sent with mgmt_call_send() is in flight. */
bool mgmt_call_sending(const mgmt_call *c);
/* Bidi streams: reads the next client message. recv(c, msg, userdata)
 * runs on the CQ thread with the message (the handler owns it and
 * destroys it with grpc_byte_buffer_destroy()), or with msg NULL when
 * the client closed its side or the call died (on_close says which).
 * One receive may be in flight at a time; the call holds a reference
 * until recv ran. Returns 0, -EBUSY (a receive is in flight), -EPIPE
 * (status sent or call over) or -EIO. Messages above the server's
 * receive limit (1 MiB) end the call with RESOURCE_EXHAUSTED in gRPC
 * itself. */
typedef void (*mgmt_call_recv_fn)(mgmt_call *c, grpc_byte_buffer *msg, void *userdata);
int mgmt_call_recv(mgmt_call *c, mgmt_call_recv_fn recv, void *userdata);
/* Any thread. The first value of the request metadata key (lower case,
 * e.g. "authorization") copied into out[0..cap) with a NUL: returns its
 * length, -ENOENT when the call has no such key, -ENOSPC when it does not
 * fit (out is then ""). The metadata never changes once on_call runs. */
int mgmt_call_metadata(const mgmt_call *c, const char *key, char *out, size_t cap);
/* Any thread. False when the call came with no metadata at all. */
bool mgmt_call_has_metadata(const mgmt_call *c);
/* CQ thread (handler lock): frees the request's metadata array once the
 * handler has read what it needs, so a stream held for hours does not
 * keep it (gRPC sizes it for 8 entries, ~0.8 KB). Only when no job of
 * the call reads the metadata any more: afterwards mgmt_call_metadata
 * finds nothing and mgmt_call_has_metadata is false. */
void mgmt_call_drop_metadata(mgmt_call *c);
/* CQ thread: extra references for handlers that keep a call beyond
 * on_call (a Sync stream in the registry). The call is freed when the
 * last reference goes; unref accepts NULL. */
void mgmt_call_ref(mgmt_call *c);
void mgmt_call_unref(mgmt_call *c);
/* CQ thread: one pointer for the handler, e.g. for on_close. */
void mgmt_call_set_userdata(mgmt_call *c, void *userdata);
void *mgmt_call_userdata(const mgmt_call *c);
/* Any thread: the server the call belongs to. */
mgmt_grpc *mgmt_call_grpc(const mgmt_call *c);

/* The request message of a unary or server-streaming call (NULL for bidi,
 * or when taken already). The caller owns it from now on and destroys it
 * with grpc_byte_buffer_destroy(); it may be read on any thread. */
grpc_byte_buffer *mgmt_call_take_payload(mgmt_call *c);

/* Runs work(userdata) on a worker thread, then done(c, userdata) on the
 * CQ thread. The call stays valid (one reference) until done returns;
 * work must not touch the call except through the "any thread"
 * accessors. Returns 0, or -EAGAIN (the worker queue is full), -ESHUTDOWN
 * (workers stopping) or -ENOSYS (no workers); then neither function runs
 * and userdata stays the caller's. */
typedef void (*mgmt_call_done_fn)(mgmt_call *c, void *userdata);
int mgmt_call_offload(mgmt_call *c, mgmt_work_fn work, mgmt_call_done_fn done, void *userdata);

/* Any thread. The method row the call came in on (NULL for an unknown
 * method). */
const mgmt_rpc_method *mgmt_call_method(const mgmt_call *c);
/* Any thread. The call's log context: component, method, peer address,
 * request id. Fixed before on_call runs; valid while the call is. */
const cp_log_ctx *mgmt_call_log(const mgmt_call *c);
/* Any thread. The peer's IP address without port ("127.0.0.1", "::1"),
 * or "" when gRPC did not report an IP peer. */
const char *mgmt_call_peer_ip(const mgmt_call *c);
/* Any thread. True once the call is over: finished, cancelled by the
 * client, past its deadline or cancelled at shutdown. Workers check it to
 * skip work nobody waits for any more. */
bool mgmt_call_is_over(const mgmt_call *c);
/* Any thread. The completion queue the call is bound to (0 ..
 * mgmt_grpc_threads() - 1): its events are polled by that queue's
 * thread. */
size_t mgmt_call_queue(const mgmt_call *c);
/* The time the call arrived, monotonic ms (for "took" in logs). */
int64_t mgmt_call_started_ms(const mgmt_call *c);

/* ---- shared by the protocols (any thread) -------------------------------------- */

/* How a method of a generated table streams, as the server registers it. */
mgmt_rpc_kind mgmt_rpc_kind_of(cp_proto_streaming s);
/* A whole message as one slice (the caller unrefs it); empty for NULL. */
grpc_slice mgmt_payload_slice(grpc_byte_buffer *bb);
/* The one "rpc" log line of a call: component and method, the call's
 * peer and request id, account, code, message and detail (NULL or "" are
 * left out), the time taken. OK is logged at debug when ok_is_debug, the
 * rest at info, UNAVAILABLE and RESOURCE_EXHAUSTED at warn, INTERNAL,
 * UNKNOWN and DATA_LOSS at error. peer_key may be NULL. */
void mgmt_call_log_rpc(mgmt_call *c, const char *component, const char *method, const char *account,
                       const char *peer_key, grpc_status_code status, bool ok_is_debug, const char *message,
                       const char *detail);
