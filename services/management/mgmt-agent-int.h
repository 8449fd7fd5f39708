/*
 * mgmt-agent-int.h: what the agent edge (mgmt-agent.c) shares with the
 * handlers of its bigger RPCs (mgmt-login.c). Not for other modules.
 *
 * One mgmt_agent_op is one encrypted RPC on its way through a worker:
 * built on the CQ thread when the call arrives, filled on a worker (the
 * envelope is opened, the handler runs, the answer is sealed), and
 * answered and freed back on the CQ thread. Everything it allocates lives
 * in its arena.
 */
#pragma once

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "cp/crypto-box.h"
#include "cp-methods.h"
#include "mgmt-agent.h"
#include "mgmt-arena.h"

typedef struct mgmt_agent_op {
        const mgmt_agent *agent;
        mgmt_call *call;                /* only the "any thread" accessors */
        const cp_proto_method *method;
        grpc_byte_buffer *payload;
        mgmt_arena arena;

        /* Filled by the edge before the handler runs. */
        char peer_key[CP_WG_KEY_B64_LEN];       /* the sender's key, canonical base64 */
        uint8_t peer_pub[CP_WG_KEY_LEN];
        const ProtobufCMessage *request;        /* the opened body, in the arena */

        /* Filled by the handler. */
        grpc_status_code status;
        const char *message;            /* status details, in the arena; NULL for OK */
        const ProtobufCMessage *response;       /* to seal (or to send plain when the
                                                 * method's response is plaintext);
                                                 * NULL = an empty message */
        char account[40];               /* for the log line, "" if unknown */
        char detail[200];               /* extra log text (a store error), "" if none */

        /* Filled by the edge after the handler: the bytes to send. */
        uint8_t *reply;
        size_t reply_len;
} mgmt_agent_op;

/* Sets the op's outcome: a status and a formatted message (for clients). */
void mgmt_agent_fail(mgmt_agent_op *op, grpc_status_code status, const char *fmt, ...) _printf_(3, 4);

/* The Login handler (mgmt-login.c). */
void mgmt_login(mgmt_agent_op *op);
/* SyncMeta and Logout (mgmt-login.c): they share its peer lookup. */
void mgmt_sync_meta(mgmt_agent_op *op);
void mgmt_logout(mgmt_agent_op *op);
