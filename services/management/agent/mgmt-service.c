/*
 * mgmt-service.c: management.ManagementService's method table (see
 * mgmt-service.h) and the RPCs small enough to answer on the CQ thread.
 */
#include "cp/base.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-expose.h"
#include "mgmt-service.h"
#include "mgmt-sync.h"

#include "management.pb-c.h"

/* GetServerKey's expiresAt: a sane time in the future (NetBird sends a
 * value around 1970 by mistake; agents ignore it). */
#define SERVER_KEY_EXPIRY_S (24 * 3600)

/* One row of data per rpc (mgmt_rpc_method.data). */
typedef struct service_rpc {
        cp_proto_mgmt_method_id id;
        mgmt_agent_handler handler;     /* NULL: answered on the CQ thread */
        void (*inline_call)(mgmt_call *c, const mgmt_agent *a);
} service_rpc;

static void rpc_unimplemented(mgmt_call *c, const mgmt_agent *a) {
        const cp_proto_method *m = &cp_proto_mgmt_methods[((const service_rpc *) mgmt_call_method(c)->data)->id];
        char msg[128];

        /* grpc-go's text for a method the server does not implement. */
        (void) snprintf(msg, sizeof msg, "method %s not implemented", m->name);
        mgmt_agent_log_outcome(c, m, NULL, NULL, GRPC_STATUS_UNIMPLEMENTED, msg, NULL);
        mgmt_call_finish(c, GRPC_STATUS_UNIMPLEMENTED, msg);
}

static void rpc_get_server_key(mgmt_call *c, const mgmt_agent *a) {
        const cp_proto_method *m = &cp_proto_mgmt_methods[CP_PROTO_MGMT_GET_SERVER_KEY];
        Management__ServerKeyResponse resp = MANAGEMENT__SERVER_KEY_RESPONSE__INIT;
        Google__Protobuf__Timestamp exp = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        char key[CP_WG_KEY_B64_LEN];
        uint8_t buf[128];

        mgmt_keys_current_public(a->keys, key);
        exp.seconds = cp_now_unix_ns() / 1000000000 + SERVER_KEY_EXPIRY_S;
        resp.key = key;
        resp.expiresat = &exp;
        size_t n = management__server_key_response__get_packed_size(&resp);
        if (n > sizeof buf)
                abort();        /* 44-character key plus a timestamp: cannot happen */
        n = management__server_key_response__pack(&resp, buf);
        mgmt_agent_log_outcome(c, m, NULL, NULL, GRPC_STATUS_OK, NULL, NULL);
        mgmt_call_reply(c, GRPC_STATUS_OK, NULL, buf, n);
}

static void rpc_is_healthy(mgmt_call *c, const mgmt_agent *a) {
        /* Like NetBird: the process answers, so it is healthy. Readiness
         * (database, migrations) is /readyz on the HTTP port. */
        mgmt_agent_log_outcome(c, &cp_proto_mgmt_methods[CP_PROTO_MGMT_IS_HEALTHY], NULL, NULL, GRPC_STATUS_OK, NULL, NULL);
        mgmt_call_reply(c, GRPC_STATUS_OK, NULL, NULL, 0);
}

static Management__ProviderConfig *provider_config(const mgmt_provider *p, mgmt_arena *a) {
        Management__ProviderConfig *pc = mgmt_arena_alloc(a, sizeof *pc);

        management__provider_config__init(pc);
        pc->clientid = p->client_id;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        pc->clientsecret = p->client_secret;    /* deprecated, still sent by NetBird */
#pragma GCC diagnostic pop
        pc->audience = p->audience;
        pc->tokenendpoint = p->token_endpoint;
        pc->scope = p->scope;
        pc->useidtoken = p->use_id_token;
        return pc;
}

static void rpc_device_flow(mgmt_agent_op *op) {
        const mgmt_netconf *n = op->agent->netconf;

        if (!n->device_flow) {
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "no device authorization flow information available");
                return;
        }
        if (!n->device_provider_ok) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "no provider found in the protocol for %s",
                                n->device_provider_name);
                return;
        }
        Management__DeviceAuthorizationFlow *f = mgmt_arena_alloc(&op->arena, sizeof *f);
        management__device_authorization_flow__init(f);
        f->provider = MANAGEMENT__DEVICE_AUTHORIZATION_FLOW__PROVIDER__HOSTED;
        f->providerconfig = provider_config(&n->device, &op->arena);
        f->providerconfig->domain = n->device.domain;
        f->providerconfig->deviceauthendpoint = n->device.device_auth_endpoint;
        op->response = &f->base;
}

static void rpc_pkce_flow(mgmt_agent_op *op) {
        const mgmt_netconf *n = op->agent->netconf;

        if (!n->pkce_flow) {
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "no pkce authorization flow information available");
                return;
        }
        Management__PKCEAuthorizationFlow *f = mgmt_arena_alloc(&op->arena, sizeof *f);
        management__pkceauthorization_flow__init(f);
        f->providerconfig = provider_config(&n->pkce, &op->arena);
        f->providerconfig->authorizationendpoint = n->pkce.authorization_endpoint;
        f->providerconfig->redirecturls = n->pkce.redirect_urls;
        f->providerconfig->n_redirecturls = n->pkce.n_redirect_urls;
        f->providerconfig->disablepromptlogin = n->pkce.disable_prompt_login;
        f->providerconfig->loginflag = n->pkce.login_flag;
        op->response = &f->base;
}

/* Sync is a stream: mgmt-sync.c runs it (its open goes to a worker). */
static void rpc_sync(mgmt_call *c, const mgmt_agent *a) {
        mgmt_sync_on_call(a->sync, c);
}

static void sync_on_close(mgmt_call *c, bool cancelled, void *userdata) {
        const mgmt_agent *a = userdata;

        mgmt_sync_on_close(a->sync, c, cancelled);
}

/* ---- dispatch ------------------------------------------------------------------ */

static void on_call(mgmt_call *c, void *userdata) {
        const mgmt_agent *a = userdata;
        const service_rpc *rpc = mgmt_call_method(c)->data;

        if (!rpc->handler) {
                rpc->inline_call(c, a);
                return;
        }
        (void) mgmt_agent_offload(c, a, rpc->id, rpc->handler);
}

static const service_rpc rpcs[_CP_PROTO_MGMT_MAX] = {
        [CP_PROTO_MGMT_LOGIN] = { CP_PROTO_MGMT_LOGIN, mgmt_login, NULL },
        [CP_PROTO_MGMT_SYNC] = { CP_PROTO_MGMT_SYNC, NULL, rpc_sync },
        [CP_PROTO_MGMT_GET_SERVER_KEY] = { CP_PROTO_MGMT_GET_SERVER_KEY, NULL, rpc_get_server_key },
        [CP_PROTO_MGMT_IS_HEALTHY] = { CP_PROTO_MGMT_IS_HEALTHY, NULL, rpc_is_healthy },
        [CP_PROTO_MGMT_GET_DEVICE_AUTHORIZATION_FLOW] = { CP_PROTO_MGMT_GET_DEVICE_AUTHORIZATION_FLOW,
                                                          rpc_device_flow, NULL },
        [CP_PROTO_MGMT_GET_PKCE_AUTHORIZATION_FLOW] = { CP_PROTO_MGMT_GET_PKCE_AUTHORIZATION_FLOW,
                                                        rpc_pkce_flow, NULL },
        [CP_PROTO_MGMT_SYNC_META] = { CP_PROTO_MGMT_SYNC_META, mgmt_sync_meta, NULL },
        [CP_PROTO_MGMT_LOGOUT] = { CP_PROTO_MGMT_LOGOUT, mgmt_logout, NULL },
        [CP_PROTO_MGMT_JOB] = { CP_PROTO_MGMT_JOB, NULL, rpc_unimplemented },
        [CP_PROTO_MGMT_EXTEND_AUTH_SESSION] = { CP_PROTO_MGMT_EXTEND_AUTH_SESSION, mgmt_extend_session, NULL },
        [CP_PROTO_MGMT_CREATE_EXPOSE] = { CP_PROTO_MGMT_CREATE_EXPOSE, mgmt_create_expose, NULL },
        [CP_PROTO_MGMT_RENEW_EXPOSE] = { CP_PROTO_MGMT_RENEW_EXPOSE, mgmt_renew_expose, NULL },
        [CP_PROTO_MGMT_STOP_EXPOSE] = { CP_PROTO_MGMT_STOP_EXPOSE, mgmt_stop_expose, NULL },
};

void mgmt_service_methods(mgmt_rpc_method out[MGMT_SERVICE_N_METHODS]) {
        for (size_t i = 0; i < MGMT_SERVICE_N_METHODS; i++) {
                const cp_proto_method *m = &cp_proto_mgmt_methods[i];
                out[i] = (mgmt_rpc_method) {
                        .path = m->path,
                        .kind = mgmt_rpc_kind_of(m->streaming),
                        .on_call = on_call,
                        .on_close = i == CP_PROTO_MGMT_SYNC ? sync_on_close : NULL,
                        .data = &rpcs[i],
                };
        }
}
