/*
 * mgmt-proxy-int.h: what the ProxyService's files share: the hub, the
 * authenticated token of a call, and the API the unary handlers are
 * plugged in with. Not for modules outside proxy/.
 *
 * A unary RPC: on the CQ thread the call is handed to a worker at once;
 * there the proxy token is checked (mgmt-proxy-auth.c), the request is
 * decoded into the op's arena, and the method's handler runs with
 * op->request set. It sets op->response (a message in the arena, of the
 * method's response type; NULL = the empty message) or a failure with
 * mgmt_proxy_fail(); the edge packs and answers on the CQ thread and logs
 * one line. A handler blocks freely (PostgreSQL, argon2id): it runs on a
 * worker; it must not touch op->call except through the "any thread"
 * accessors of mgmt-grpc.h.
 *
 * Plugging a handler in: declare it below, define it in its own file and
 * set its row in rpcs[] of mgmt-proxy-service.c. A method without a
 * handler answers UNIMPLEMENTED.
 */
#pragma once

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cp/macro.h"
#include "cp/store.h"
#include "cp-methods.h"
#include "mgmt-arena.h"
#include "mgmt-grpc.h"
#include "mgmt-proxy.h"
#include "mgmt-strmap.h"

#include "proxy_service.pb-c.h"

/* The token a call authenticated with. */
typedef struct mgmt_proxy_token {
        char id[65];
        char account_id[65];            /* "" = management-wide */
} mgmt_proxy_token;

typedef struct mgmt_proxy_op mgmt_proxy_op;
/* A unary handler; runs on a worker. */
typedef void (*mgmt_proxy_handler)(mgmt_proxy_op *op);

/* One row of data per rpc (mgmt_rpc_method.data). */
typedef struct mgmt_proxy_rpc {
        mgmt_proxy *proxy;
        cp_proto_proxy_method_id id;
        mgmt_proxy_handler handler;     /* NULL: a stream, or UNIMPLEMENTED */
} mgmt_proxy_rpc;

typedef struct mgmt_proxy_stream mgmt_proxy_stream;

struct mgmt_proxy {
        cp_store *store;
        struct mgmt_prpc *unary;        /* the unary RPCs (mgmt-proxy-rpc.h); set by the manager */
        uint8_t data_key[32];
        uint8_t onetime_key[32];        /* HMAC key of the one-time tokens, from data_key */
        char replica_id[64];
        int batch_size;
        int64_t ack_timeout_ms, token_check_ms, heartbeat_ms, stale_ms, poll_ms;
        mgmt_proxy_rpc rpcs[_CP_PROTO_PROXY_MAX];

        /* The per-IP failure limiter (mgmt-proxy-auth.c). */
        pthread_mutex_t limiter_lock;
        mgmt_strmap *limiter;
        int64_t limiter_swept_ms;
        /* Tokens that passed, by their hash, for a short while
         * (mgmt-proxy-auth.c): most calls then skip the database. */
        pthread_mutex_t tokens_lock;
        mgmt_strmap *tokens;
        int64_t tokens_ttl_ms;
        /* Bumped by every forget: a lookup that began before one does not
         * put its (maybe revoked) token back. Under tokens_lock. */
        uint64_t tokens_gen;

        /* Set by on_start (any thread reads it to post). */
        _Atomic(mgmt_grpc *) grpc;
        /* CQ thread only: the open streams. */
        mgmt_proxy_stream *streams;
        bool draining;
        /* Loop thread: when each periodic task ran last (monotonic ms). */
        int64_t last_poll_ms, last_reap_ms;
        atomic_bool reap_queued;

        /* Any thread. */
        _Atomic int64_t hint_seq;       /* highest seq hinted so far */
};

/* ---- unary operations --------------------------------------------------------- */

struct mgmt_proxy_op {
        mgmt_proxy *proxy;
        mgmt_call *call;                /* only the "any thread" accessors */
        const cp_proto_method *method;
        mgmt_proxy_handler handler;
        grpc_byte_buffer *payload;
        mgmt_arena arena;
        /* Filled by the edge before the handler runs. */
        mgmt_proxy_token token;
        const ProtobufCMessage *request;        /* in the arena */
        /* Filled by the handler. */
        grpc_status_code status;
        const char *message;            /* status details, in the arena; NULL for OK */
        const ProtobufCMessage *response;       /* NULL = the empty message */
        char account[65];               /* for the log line, "" if unknown */
        char detail[200];               /* extra log text (a store error), "" if none */
        /* Set by the edge when the handler runs on the CQ thread; the
         * handler sets would_block when it needs the database there. */
        bool on_cq, would_block;
        /* Filled by the edge after the handler. */
        uint8_t *reply;
        size_t reply_len;
};

/* Request sizes of ProxyService (mgmt-proxy-service.c). The largest
 * legitimate request is an access log entry at the handler's own limits
 * (mgmt-proxy-logs.c): 64 KiB of strings and 64 metadata pairs (6 B of
 * framing each), the timestamp and numbers: ~66 KiB. Authenticate carries
 * a header value (<= 8 KiB), SendStatusUpdate an error text,
 * SyncMappings an init or an ack (< 1 KiB). 128 KiB leaves twice the
 * largest, and an entry between 64 and 128 KiB still gets the handler's
 * clearer "access log entry is too large". Decoding may take
 * MGMT_PROXY_UNPACK_BUDGET of the op's arena (a 66 KiB entry with 64
 * pairs takes ~80 KiB). */
#define MGMT_PROXY_MAX_REQUEST (128 * 1024)
#define MGMT_PROXY_UNPACK_BUDGET (1024 * 1024)

/* Decodes a proxy's request: over MGMT_PROXY_MAX_REQUEST, or over the
 * budget while decoding into a (when a is not NULL: otherwise with
 * malloc, and the caller frees it with protobuf_c_message_free_unpacked),
 * RESOURCE_EXHAUSTED "request message too large"; malformed,
 * INVALID_ARGUMENT "cannot decode the <Method> request". NULL with
 * *ret_status and msg set on failure, counted in
 * netbird_cp_requests_refused_total unless quiet (a first try that a
 * worker repeats). */
ProtobufCMessage *mgmt_proxy_decode(const cp_proto_method *m, grpc_byte_buffer *bb, mgmt_arena *a, bool quiet,
                                    grpc_status_code *ret_status, char *msg, size_t msg_size);

/* Sets the op's outcome: a status and a formatted message (for clients). */
void mgmt_proxy_fail(mgmt_proxy_op *op, grpc_status_code status, const char *fmt, ...) _printf_(3, 4);

/* Every unary RPC but the LLM ones (mgmt-proxy-unary.c, mgmt-proxy-rpc.h). */
void mgmt_proxy_unary(mgmt_proxy_op *op);

/* ---- authentication (mgmt-proxy-auth.c) ------------------------------------------ */

/* Worker: authenticates call c from its metadata, in NetBird's order
 * (docs/proxy.md): 0 with *ret filled, or -1 with *status and msg
 * (UNAUTHENTICATED, or RESOURCE_EXHAUSTED from the per-IP limiter). */
int mgmt_proxy_authenticate(mgmt_proxy *p, mgmt_call *c, mgmt_proxy_token *ret, grpc_status_code *status,
                            char *msg, size_t cap);
/* Any thread, never blocks: fills *ret and returns true when call c
 * carries a well-formed token that is in the cache (it passed within
 * NB_PROXY_TOKEN_CACHE_TTL); false otherwise, with nothing counted: the
 * caller then runs mgmt_proxy_authenticate() on a worker. */
bool mgmt_proxy_token_cached(mgmt_proxy *p, mgmt_call *c, mgmt_proxy_token *ret);
/* Worker: true while token t is still valid (not revoked, expired or
 * deleted). A database error counts as valid (the next check decides). */
bool mgmt_proxy_token_valid(mgmt_proxy *p, const mgmt_proxy_token *t);
/* The failure limiter and the token cache: made with the hub, freed with
 * it. */
void mgmt_proxy_limiter_init(mgmt_proxy *p);
void mgmt_proxy_limiter_free(mgmt_proxy *p);
/* Any thread: forget every cached token (a token was revoked somewhere;
 * the next call of each proxy reads its token from the database). */
void mgmt_proxy_tokens_forget(mgmt_proxy *p);

/* The status text of a token that stopped being valid. */
#define MGMT_PROXY_MSG_TOKEN_GONE "token expired or revoked"

/* ---- streams (mgmt-proxy-stream.c) ---------------------------------------------- */

/* CQ thread: a GetMappingUpdate or SyncMappings call arrived / ended. */
void mgmt_proxy_stream_on_call(mgmt_proxy *p, mgmt_call *c, bool bidi);
void mgmt_proxy_stream_on_close(mgmt_proxy *p, mgmt_call *c, bool cancelled);

/* The one "rpc" log line of a call. */
void mgmt_proxy_log_outcome(mgmt_call *c, const cp_proto_method *m, const char *account, grpc_status_code status,
                            const char *message, const char *detail);

/* ---- mappings (mgmt-proxy-mapping.c) ----------------------------------------------- */

struct pg_result;
/* The ProxyMapping of row (CP_SVC_* columns of cp/store-proxyconn.h) in
 * a, of type (ProxyMappingUpdateType), with auth_token (NULL = ""). */
Management__ProxyMapping *mgmt_proxy_mapping_build(mgmt_arena *a, const struct pg_result *rows, int row, int type,
                                                   const char *auth_token);
/* A REMOVED mapping: only id, account and domain. */
Management__ProxyMapping *mgmt_proxy_mapping_removed(mgmt_arena *a, const char *id, const char *account_id,
                                                     const char *domain);
