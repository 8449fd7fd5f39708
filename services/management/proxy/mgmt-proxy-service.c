/*
 * mgmt-proxy-service.c: management.ProxyService's method table, the
 * unary edge (authenticate, decode, run the handler on a worker, answer)
 * and the hub's life (mgmt-proxy.h, mgmt-proxy-int.h).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-proxy-int.h"
#include "mgmt-proxy-rpc.h"
#include "mgmt-metrics.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <inttypes.h>
#include <stdarg.h>

#include <sodium.h>

#define DEFAULT_BATCH 500
#define DEFAULT_ACK_TIMEOUT_MS 60000
#define DEFAULT_TOKEN_CHECK_MS 60000
#define DEFAULT_HEARTBEAT_MS 60000
#define DEFAULT_STALE_MS (3600 * 1000)

/* The handlers of the unary RPCs (mgmt-proxy-int.h). NULL: UNIMPLEMENTED
 * (after the token check, as NetBird's interceptor runs first).
 * CheckLLMPolicyLimits and RecordLLMUsage stay UNIMPLEMENTED, as NetBird
 * answers them without its agent-network module. */
static const mgmt_proxy_handler handlers[_CP_PROTO_PROXY_MAX] = {
        [CP_PROTO_PROXY_SEND_ACCESS_LOG] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_AUTHENTICATE] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_SEND_STATUS_UPDATE] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_CREATE_PROXY_PEER] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_GET_OIDCURL] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_VALIDATE_SESSION] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_VALIDATE_TUNNEL_PEER] = mgmt_proxy_unary,
        [CP_PROTO_PROXY_CHECK_LLM_POLICY_LIMITS] = NULL,
        [CP_PROTO_PROXY_RECORD_LLM_USAGE] = NULL,
};

void mgmt_proxy_log_outcome(mgmt_call *c, const cp_proto_method *m, const char *account, grpc_status_code status,
                            const char *message, const char *detail) {
        /* Successful unary calls are debug: access logs and status
         * updates come many a second. */
        mgmt_call_log_rpc(c, "proxy", m->name, account, NULL, status, m->streaming == CP_PROTO_UNARY, message,
                          detail);
}

void mgmt_proxy_fail(mgmt_proxy_op *op, grpc_status_code status, const char *fmt, ...) {
        char buf[512];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        op->status = status;
        op->message = mgmt_arena_strdup(&op->arena, buf);
        op->response = NULL;
}

/* ---- decoding --------------------------------------------------------------------- */

ProtobufCMessage *mgmt_proxy_decode(const cp_proto_method *m, grpc_byte_buffer *bb, mgmt_arena *a, bool quiet,
                                    grpc_status_code *ret_status, char *msg, size_t msg_size) {
        ProtobufCMessage *req;

        if (bb && grpc_byte_buffer_length(bb) > MGMT_PROXY_MAX_REQUEST) {
                if (!quiet)
                        mgmt_metrics_refused("proxy", MGMT_REFUSED_SIZE);
                *ret_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
                (void) snprintf(msg, msg_size, "request message too large");
                return NULL;
        }
        grpc_slice s = mgmt_payload_slice(bb);
        if (a)
                mgmt_arena_set_budget(a, MGMT_PROXY_UNPACK_BUDGET);
        req = protobuf_c_message_unpack(m->request, a ? mgmt_arena_pb(a) : NULL, GRPC_SLICE_LENGTH(s),
                                        GRPC_SLICE_START_PTR(s));
        grpc_slice_unref(s);
        bool over = a && mgmt_arena_over_budget(a);
        if (a)
                mgmt_arena_set_budget(a, 0);
        if (req)
                return req;
        if (!quiet)
                mgmt_metrics_refused("proxy", over ? MGMT_REFUSED_BUDGET : MGMT_REFUSED_DECODE);
        *ret_status = over ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INVALID_ARGUMENT;
        if (over)
                (void) snprintf(msg, msg_size, "request message too large");
        else
                (void) snprintf(msg, msg_size, "cannot decode the %s request", m->name);
        return NULL;
}

/* ---- unary calls ------------------------------------------------------------------ */

/* Worker. */
static void op_work(void *userdata) {
        mgmt_proxy_op *op = userdata;
        grpc_status_code st;
        char msg[160];

        if (mgmt_call_is_over(op->call)) {
                op->status = GRPC_STATUS_CANCELLED;
                return;
        }
        if (mgmt_proxy_authenticate(op->proxy, op->call, &op->token, &st, msg, sizeof msg) < 0) {
                mgmt_proxy_fail(op, st, "%s", msg);
                return;
        }
        (void) snprintf(op->account, sizeof op->account, "%s", op->token.account_id);
        if (!op->handler) {
                mgmt_proxy_fail(op, GRPC_STATUS_UNIMPLEMENTED, "method %s not implemented", op->method->name);
                return;
        }
        op->request = mgmt_proxy_decode(op->method, op->payload, &op->arena, false, &st, msg, sizeof msg);
        if (!op->request) {
                mgmt_proxy_fail(op, st, "%s", msg);
                return;
        }
        op->status = GRPC_STATUS_OK;
        op->handler(op);
        if (op->status != GRPC_STATUS_OK || !op->response)
                return;
        size_t n = protobuf_c_message_get_packed_size(op->response);
        op->reply = cp_xmalloc(n ? n : 1);
        op->reply_len = protobuf_c_message_pack(op->response, op->reply);
}

/* CQ thread. */
static void op_done(mgmt_call *c, void *userdata) {
        mgmt_proxy_op *op = userdata;

        if (op->status != GRPC_STATUS_CANCELLED || !mgmt_call_is_over(c)) {
                mgmt_proxy_log_outcome(c, op->method, op->account, op->status, op->message, op->detail);
                mgmt_call_reply(c, op->status, op->status == GRPC_STATUS_OK ? NULL : op->message, op->reply,
                                op->reply_len);
        }
        if (op->payload)
                grpc_byte_buffer_destroy(op->payload);
        free(op->reply);
        mgmt_arena_release(&op->arena);
        free(op);
}

/* CQ thread: SendAccessLog from a proxy whose token is cached is
 * handled here, without a worker: it only queues the entry for the log
 * writer, so a flood of them never sits in the workers' queue in front of
 * other RPCs (bench-proxy-logs). The handler runs with on_cq set and
 * gives up (would_block) rather than query the database. True when
 * answered. */
static bool access_log_inline(mgmt_proxy_op *op) {
        mgmt_proxy *p = op->proxy;

        if (!p->unary || !op->handler || !mgmt_proxy_token_cached(p, op->call, &op->token))
                return false;
        grpc_status_code st;
        char msg[160];
        op->request = mgmt_proxy_decode(op->method, op->payload, &op->arena, true, &st, msg, sizeof msg);
        if (!op->request)
                return false;   /* the worker decodes again and answers */
        (void) snprintf(op->account, sizeof op->account, "%s", op->token.account_id);
        op->status = GRPC_STATUS_OK;
        op->on_cq = true;
        op->handler(op);
        if (op->would_block)
                return false;
        if (op->status == GRPC_STATUS_OK && op->response) {
                size_t n = protobuf_c_message_get_packed_size(op->response);
                op->reply = cp_xmalloc(n ? n : 1);
                op->reply_len = protobuf_c_message_pack(op->response, op->reply);
        }
        op_done(op->call, op);
        return true;
}

static void unary_call(mgmt_call *c, const mgmt_proxy_rpc *rpc) {
        mgmt_proxy_op *op = cp_xcalloc(1, sizeof *op);
        int r;

        op->proxy = rpc->proxy;
        op->call = c;
        op->method = &cp_proto_proxy_methods[rpc->id];
        op->handler = rpc->handler;
        op->payload = mgmt_call_take_payload(c);
        mgmt_arena_init(&op->arena);
        if (rpc->id == CP_PROTO_PROXY_SEND_ACCESS_LOG && access_log_inline(op))
                return;
        if (op->request) {
                /* Decoded for the inline path but not taken: start over. */
                mgmt_arena_release(&op->arena);
                mgmt_arena_init(&op->arena);
                op->request = NULL;
                op->token = (mgmt_proxy_token) { 0 };
                op->account[0] = '\0';
                op->status = GRPC_STATUS_OK;
                op->message = NULL;
                op->on_cq = op->would_block = false;
        }
        r = mgmt_call_offload(c, op_work, op_done, op);
        if (r < 0) {
                const char *msg = "server is busy, please try again later";
                grpc_status_code st = r == -EAGAIN ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_UNAVAILABLE;
                if (r == -EAGAIN)
                        mgmt_metrics_refused("proxy", MGMT_REFUSED_QUEUE);
                mgmt_proxy_log_outcome(c, op->method, NULL, st, msg, r == -EAGAIN ? "worker queue full" : NULL);
                mgmt_call_finish(c, st, msg);
                if (op->payload)
                        grpc_byte_buffer_destroy(op->payload);
                mgmt_arena_release(&op->arena);
                free(op);
        }
}

/* ---- dispatch -------------------------------------------------------------------- */

static void on_call(mgmt_call *c, void *userdata) {
        const mgmt_proxy_rpc *rpc = mgmt_call_method(c)->data;

        switch (rpc->id) {
        case CP_PROTO_PROXY_GET_MAPPING_UPDATE:
                mgmt_proxy_stream_on_call(rpc->proxy, c, false);
                return;
        case CP_PROTO_PROXY_SYNC_MAPPINGS:
                mgmt_proxy_stream_on_call(rpc->proxy, c, true);
                return;
        default:
                unary_call(c, rpc);
                return;
        }
}

static void stream_on_close(mgmt_call *c, bool cancelled, void *userdata) {
        const mgmt_proxy_rpc *rpc = mgmt_call_method(c)->data;

        mgmt_proxy_stream_on_close(rpc->proxy, c, cancelled);
}

void mgmt_proxy_methods(mgmt_proxy *p, mgmt_rpc_method out[MGMT_PROXY_N_METHODS]) {
        for (size_t i = 0; i < MGMT_PROXY_N_METHODS; i++) {
                const cp_proto_method *m = &cp_proto_proxy_methods[i];
                bool stream = i == CP_PROTO_PROXY_GET_MAPPING_UPDATE || i == CP_PROTO_PROXY_SYNC_MAPPINGS;
                out[i] = (mgmt_rpc_method) {
                        .path = m->path,
                        .kind = mgmt_rpc_kind_of(m->streaming),
                        .on_call = on_call,
                        .on_close = stream ? stream_on_close : NULL,
                        .data = &p->rpcs[i],
                };
        }
}

/* ---- the hub --------------------------------------------------------------------- */

static int64_t or_default(int64_t v, int64_t def) {
        return v > 0 ? v : def;
}

mgmt_proxy *mgmt_proxy_new(const mgmt_proxy_options *o) {
        mgmt_proxy *p = cp_xcalloc(1, sizeof *p);
        static const char label[] = "netbird-cp proxy one-time token v1";

        p->store = o->store;
        memcpy(p->data_key, o->data_key, sizeof p->data_key);
        /* A key of its own for the one-time tokens: a MAC made with it can
         * never be mistaken for anything else sealed with the data key. */
        crypto_auth_hmacsha256(p->onetime_key, (const uint8_t *) label, sizeof label - 1, p->data_key);
        (void) snprintf(p->replica_id, sizeof p->replica_id, "%s", o->replica_id ? o->replica_id : "");
        p->batch_size = o->batch_size > 0 ? o->batch_size : DEFAULT_BATCH;
        p->ack_timeout_ms = or_default(o->ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS);
        p->token_check_ms = or_default(o->token_check_ms, DEFAULT_TOKEN_CHECK_MS);
        p->heartbeat_ms = or_default(o->heartbeat_ms, DEFAULT_HEARTBEAT_MS);
        p->stale_ms = or_default(o->stale_ms, DEFAULT_STALE_MS);
        p->poll_ms = o->poll_ms > 0 ? o->poll_ms : 0;
        for (size_t i = 0; i < MGMT_PROXY_N_METHODS; i++)
                p->rpcs[i] = (mgmt_proxy_rpc) { .proxy = p, .id = (cp_proto_proxy_method_id) i,
                                                .handler = handlers[i] };
        mgmt_proxy_limiter_init(p);
        int64_t now = cp_now_mono_ms();
        p->last_poll_ms = p->last_reap_ms = now;
        return p;
}

mgmt_proxy *mgmt_proxy_free(mgmt_proxy *p) {
        if (!p)
                return NULL;
        mgmt_proxy_limiter_free(p);
        sodium_memzero(p->data_key, sizeof p->data_key);
        sodium_memzero(p->onetime_key, sizeof p->onetime_key);
        free(p);
        return NULL;
}

