/*
 * The seam between the ProxyService edge (mgmt-proxy-service.c: token
 * check, decoding, answering) and the unary RPCs of mgmt-proxy-rpc.h:
 * one handler for every unary method, which runs the RPC on the worker
 * the edge already is on and hands the answer back as op->response.
 */
#include "cp/base.h"
#include "mgmt-proxy-int.h"
#include "mgmt-proxy-onetime.h"
#include "mgmt-proxy-rpc.h"

#include <time.h>

/* CreateProxyPeer's verifier: the stateless tokens of mgmt-proxy-onetime.h. */
static int onetime_verify(const char *token, const char *account_id, const char *service_id, char ret_hash_hex[65],
                          int64_t *ret_expires_unix, void *userdata) {
        return mgmt_proxy_onetime_verify(userdata, token, service_id, account_id, (int64_t) time(NULL), ret_hash_hex,
                                         ret_expires_unix);
}

void mgmt_proxy_set_unary(mgmt_proxy *p, struct mgmt_prpc *rpc) {
        p->unary = rpc;
        if (rpc)
                mgmt_prpc_set_onetime(rpc, onetime_verify, p);
}

void mgmt_proxy_unary(mgmt_proxy_op *op) {
        cp_proto_proxy_method_id id = (cp_proto_proxy_method_id) (op->method - cp_proto_proxy_methods);
        mgmt_prpc_caller who = { .token_account_id = op->token.account_id, .peer_ip = mgmt_call_peer_ip(op->call),
                                 .no_db = op->on_cq };
        mgmt_prpc_reply r;

        if (!op->proxy->unary)
                return mgmt_proxy_fail(op, GRPC_STATUS_UNIMPLEMENTED, "method %s not implemented", op->method->name);
        r = (mgmt_prpc_reply) { 0 };
        mgmt_prpc_handle_msg(op->proxy->unary, id, &who, op->request, &r);
        if (r.would_block) {
                op->would_block = true;
                return;
        }
        if (r.status != GRPC_STATUS_OK) {
                mgmt_proxy_fail(op, r.status, "%s", r.message);
                return;
        }
        /* The RPC packed its answer; the edge packs op->response again (a
         * few hundred bytes: cheaper than a second response path). */
        op->response = protobuf_c_message_unpack(op->method->response, mgmt_arena_pb(&op->arena), r.len, r.data);
        free(r.data);
        if (!op->response)
                mgmt_proxy_fail(op, GRPC_STATUS_INTERNAL, "cannot encode the %s response", op->method->name);
}

