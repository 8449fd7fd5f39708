/*
 * mgmt-grpc.h: the gRPC server (C core API) for agents.
 *
 * Threads: one completion-queue thread owns every call. It is the only
 * thread that touches a mgmt_call; handlers run on it. Other threads may
 * only call mgmt_grpc_shutdown() and mgmt_grpc_cancel_now(). The CQ thread
 * never touches the manager's event_base: it reports back through the
 * on_stopped callback, which the manager turns into an eventfd wake-up
 * (grpc-c-core.md section 6).
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
 * destroys the server, drains the queue to GRPC_QUEUE_SHUTDOWN, calls
 * on_stopped and exits.
 */
#pragma once

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/log.h"
#include "mgmt-tls.h"

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
} mgmt_rpc_method;

typedef struct mgmt_grpc_options {
        const char *address;            /* listen address, IPv4 or IPv6 literal or host name */
        int port;                       /* 0 = any free port */
        const mgmt_tls *tls;            /* NULL = plaintext h2c; borrowed for the call only */
        const mgmt_rpc_method *methods; /* may be NULL */
        size_t n_methods;
        void *userdata;                 /* passed to on_call */
        /* Called once on the CQ thread after the server is fully stopped;
         * the thread exits right after it returns. */
        void (*on_stopped)(mgmt_grpc *g, void *userdata);
        void *stopped_userdata;
} mgmt_grpc_options;

/* Initialises gRPC, binds, starts the server and its CQ thread. On failure
 * everything is undone and reterr names the address. */
int mgmt_grpc_new(const mgmt_grpc_options *o, mgmt_grpc **ret, cp_error *reterr);
/* The port actually bound. */
int mgmt_grpc_port(const mgmt_grpc *g);
/* Any thread, idempotent: stop accepting calls; cancel those still running
 * after grace_ms. */
void mgmt_grpc_shutdown(mgmt_grpc *g, int64_t grace_ms);
/* Any thread, after mgmt_grpc_shutdown(): cancel in-flight calls now. */
void mgmt_grpc_cancel_now(mgmt_grpc *g);
/* Joins the CQ thread (call only after on_stopped ran) and shuts gRPC down.
 * Accepts NULL; returns NULL. */
mgmt_grpc *mgmt_grpc_free(mgmt_grpc *g);

/* ---- for handlers (CQ thread only) ---------------------------------------- */

/* Sends the final status (with initial metadata if not sent yet). message
 * may be NULL. */
void mgmt_call_finish(mgmt_call *c, grpc_status_code status, const char *message);
/* The call's log context: component, method, peer, request id. */
const cp_log_ctx *mgmt_call_log(const mgmt_call *c);
