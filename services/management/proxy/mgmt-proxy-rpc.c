#include "cp/base.h"
#include "cp/config.h"
#include "cp/crypto.h"
#include "cp/proxyauth.h"
#include "cp/util.h"
#include "mgmt-proxy-rpc-int.h"

#include <jansson.h>
#include <stdarg.h>
#include <time.h>

/* ---- replies ----------------------------------------------------------------- */

void prpc_fail(mgmt_prpc_reply *ret, grpc_status_code code, const char *fmt, ...) {
        va_list ap;

        ret->status = code;
        va_start(ap, fmt);
        (void) vsnprintf(ret->message, sizeof ret->message, fmt, ap);
        va_end(ap);
}

void prpc_ok(mgmt_prpc_reply *ret, const ProtobufCMessage *msg) {
        size_t n = protobuf_c_message_get_packed_size(msg);

        ret->status = GRPC_STATUS_OK;
        ret->message[0] = 0;
        ret->data = cp_xmalloc(n ? n : 1);
        ret->len = protobuf_c_message_pack(msg, ret->data);
}

bool prpc_scope_ok(const mgmt_prpc_caller *who, const char *account_id, mgmt_prpc_reply *ret) {
        const char *scope = who ? who->token_account_id : NULL;

        if (!scope || !*scope || strcmp(scope, account_id ? account_id : "") == 0)
                return true;
        prpc_fail(ret, GRPC_STATUS_PERMISSION_DENIED, "account-scoped token cannot access account %s",
                  account_id ? account_id : "");
        return false;
}

int prpc_exec(mgmt_prpc *p, const char *sql, int n, const char *const *params, cp_store_rows **ret,
              cp_error *reterr) {
        return cp_store_exec1(p->store, sql, n, params, ret, reterr);
}

/* ---- services ---------------------------------------------------------------- */

void prpc_service_release(prpc_service *s) {
        if (!s)
                return;
        free(s->id);
        free(s->account_id);
        free(s->domain);
        free(s->auth_json);
        if (s->priv_sealed)
                cp_explicit_bzero(s->priv_sealed, strlen(s->priv_sealed));
        free(s->priv_sealed);
        free(s->pub_b64);
        free(s->prev_pub_b64);
        for (size_t i = 0; i < s->n_access_groups; i++)
                free(s->access_groups[i]);
        free(s->access_groups);
        memset(s, 0, sizeof *s);
}

#define SERVICE_COLUMNS \
        "SELECT id, account_id, domain, auth::text, session_private_key, session_public_key," \
        " CASE WHEN session_prev_valid_until > CURRENT_TIMESTAMP THEN COALESCE(session_prev_public_key, '')" \
        " ELSE '' END, private, to_json(access_groups)::text FROM services"

int prpc_service_get(mgmt_prpc *p, const char *account_id, const char *id, const char *domain,
                     prpc_service *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *by_id[2] = { account_id, id }, *by_domain[1] = { domain };
        int r;

        if (id)
                r = prpc_exec(p, SERVICE_COLUMNS " WHERE account_id = $1 AND id = $2", 2, by_id, &rows, reterr);
        else
                r = prpc_exec(p, SERVICE_COLUMNS " WHERE domain = $1", 1, by_domain, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return cp_error_set(reterr, -ENOENT, "service not found");
        prpc_service s = {
                .id = cp_xstrdup(cp_store_rows_get(rows, 0, 0)),
                .account_id = cp_xstrdup(cp_store_rows_get(rows, 0, 1)),
                .domain = cp_xstrdup(cp_store_rows_get(rows, 0, 2)),
                .auth_json = cp_xstrdup(cp_store_rows_get(rows, 0, 3)),
                .priv_sealed = cp_xstrdup(cp_store_rows_get(rows, 0, 4)),
                .pub_b64 = cp_xstrdup(cp_store_rows_get(rows, 0, 5)),
                .prev_pub_b64 = cp_xstrdup(cp_store_rows_get(rows, 0, 6)),
                .private_ = cp_store_rows_bool(rows, 0, 7),
        };
        json_auto_t *groups = json_loads(cp_store_rows_get(rows, 0, 8), 0, NULL);
        size_t i;
        json_t *g;
        s.access_groups = cp_xcalloc(json_array_size(groups) + 1, sizeof *s.access_groups);
        json_array_foreach(groups, i, g)
                if (json_is_string(g))
                        s.access_groups[s.n_access_groups++] = cp_xstrdup(json_string_value(g));
        *ret = s;
        return 0;
}

int prpc_session_mint(mgmt_prpc *p, const prpc_service *s, const char *sub, const char *email,
                      const char *method, const char *const *groups, const char *const *names, size_t n_groups,
                      char **ret, cp_error *reterr) {
        uint8_t seed[32];
        int r;

        if (!s->priv_sealed || !*s->priv_sealed) {
                *ret = cp_xstrdup("");
                return 0;
        }
        r = cp_proxyauth_seed_open(p->data_key, s->priv_sealed, seed, reterr);
        if (r < 0)
                return r;
        cp_proxyauth_claims c = { .sub = sub, .domain = s->domain, .method = method, .email = email,
                                  .groups = groups, .n_groups = n_groups, .group_names = names,
                                  .n_group_names = n_groups };
        r = cp_proxyauth_session_sign(seed, &c, (int64_t) time(NULL), CP_PROXYAUTH_SESSION_TTL_S, ret, reterr);
        cp_explicit_bzero(seed, sizeof seed);
        return r;
}

/* ---- SendStatusUpdate -------------------------------------------------------- */

static const char *status_name(Management__ProxyStatus st) {
        switch (st) {
        case MANAGEMENT__PROXY_STATUS__PROXY_STATUS_PENDING: return "pending";
        case MANAGEMENT__PROXY_STATUS__PROXY_STATUS_ACTIVE: return "active";
        case MANAGEMENT__PROXY_STATUS__PROXY_STATUS_TUNNEL_NOT_CREATED: return "tunnel_not_created";
        case MANAGEMENT__PROXY_STATUS__PROXY_STATUS_CERTIFICATE_PENDING: return "certificate_pending";
        case MANAGEMENT__PROXY_STATUS__PROXY_STATUS_CERTIFICATE_FAILED: return "certificate_failed";
        default: return "error";
        }
}

static void send_status_update(mgmt_prpc *p, const mgmt_prpc_caller *who,
                               const Management__SendStatusUpdateRequest *req, mgmt_prpc_reply *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_error err = { 0 };
        int r;

        if (!prpc_scope_ok(who, req->account_id, ret))
                return;
        if (!*req->service_id || !*req->account_id)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT, "service_id and account_id are required");
        /* One UPDATE: the row lock orders concurrent reports of the
         * service's proxies; the status is the last one written. */
        const char *params[4] = { req->account_id, req->service_id, status_name(req->status),
                                  req->certificate_issued ? "true" : "false" };
        r = prpc_exec(p, "UPDATE services SET meta_status = $3,"
                      " meta_certificate_issued_at = CASE WHEN $4::boolean THEN CURRENT_TIMESTAMP"
                      " ELSE meta_certificate_issued_at END"
                      " WHERE account_id = $1 AND id = $2", 4, params, &rows, &err);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "update service status: %s", err.message);
        if (cp_store_rows_affected(rows) != 1)
                return prpc_fail(ret, GRPC_STATUS_NOT_FOUND, "service %s not found", req->service_id);
        Management__SendStatusUpdateResponse resp = MANAGEMENT__SEND_STATUS_UPDATE_RESPONSE__INIT;
        prpc_ok(ret, &resp.base);
}

/* ---- dispatch ---------------------------------------------------------------- */

bool mgmt_prpc_handles(cp_proto_proxy_method_id id) {
        return id != CP_PROTO_PROXY_GET_MAPPING_UPDATE && id != CP_PROTO_PROXY_SYNC_MAPPINGS &&
               id < _CP_PROTO_PROXY_MAX;
}

void mgmt_prpc_handle_msg(mgmt_prpc *p, cp_proto_proxy_method_id id, const mgmt_prpc_caller *who,
                          const ProtobufCMessage *msg, mgmt_prpc_reply *ret) {
        memset(ret, 0, sizeof *ret);
        if (!mgmt_prpc_handles(id) || msg->descriptor != cp_proto_proxy_methods[id].request)
                return prpc_fail(ret, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
        if (id == CP_PROTO_PROXY_CHECK_LLM_POLICY_LIMITS || id == CP_PROTO_PROXY_RECORD_LLM_USAGE)
                return prpc_fail(ret, GRPC_STATUS_UNIMPLEMENTED, "agent network is not available");
        switch (id) {
        case CP_PROTO_PROXY_AUTHENTICATE:
                prpc_authenticate(p, who, (const Management__AuthenticateRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_VALIDATE_SESSION:
                prpc_validate_session(p, who, (const Management__ValidateSessionRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_VALIDATE_TUNNEL_PEER:
                prpc_validate_tunnel_peer(p, who, (const Management__ValidateTunnelPeerRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_GET_OIDCURL:
                prpc_get_oidc_url(p, who, (const Management__GetOIDCURLRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_CREATE_PROXY_PEER:
                prpc_create_proxy_peer(p, who, (const Management__CreateProxyPeerRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_SEND_STATUS_UPDATE:
                send_status_update(p, who, (const Management__SendStatusUpdateRequest *) msg, ret);
                break;
        case CP_PROTO_PROXY_SEND_ACCESS_LOG:
                prpc_send_access_log(p, who, (const Management__SendAccessLogRequest *) msg, ret);
                break;
        default:
                prpc_fail(ret, GRPC_STATUS_UNIMPLEMENTED, "not implemented");
                break;
        }
}

void mgmt_prpc_set_onetime(mgmt_prpc *p,
                           int (*verify)(const char *token, const char *account_id, const char *service_id,
                                         char ret_hash_hex[65], int64_t *ret_expires_unix, void *userdata),
                           void *userdata) {
        p->onetime_verify = verify;
        p->onetime_userdata = userdata;
}

/* ---- configuration ------------------------------------------------------------ */

/* A string member of an object of the file, matched case-insensitively
 * as Go's encoding/json matches; "" when absent or not a string. */
static char *file_str(const json_t *file, const char *obj, const char *key) {
        json_t *o = file ? cp_cfg_json_get(file, obj, strlen(obj)) : NULL;
        json_t *v = o ? cp_cfg_json_get(o, key, strlen(key)) : NULL;

        return cp_xstrdup(json_is_string(v) ? json_string_value(v) : "");
}

int mgmt_prpc_new(const mgmt_prpc_options *o, mgmt_prpc **ret, cp_error *reterr) {
        mgmt_prpc *p = cp_xcalloc(1, sizeof *p);
        const json_t *f = o->file;
        int r;

        p->store = o->store;
        memcpy(p->data_key, o->data_key, sizeof p->data_key);
        p->dns_domain = cp_xstrdup(o->dns_domain ? o->dns_domain : "");
        p->jwt = o->jwt;
        p->geo = o->geo;
        pthread_mutex_init(&p->cb_lock, NULL);
        p->cb_buckets = cp_xcalloc(PRPC_CB_BUCKETS, sizeof *p->cb_buckets);
        p->account_changed = o->account_changed;
        p->userdata = o->userdata;
        p->onetime_verify = o->onetime_verify;
        p->onetime_userdata = o->onetime_userdata;
        p->auth_issuer = file_str(f, "HttpConfig", "AuthIssuer");
        p->oidc_config_endpoint = file_str(f, "HttpConfig", "OIDCConfigEndpoint");
        p->auth_client_id = file_str(f, "HttpConfig", "AuthClientID");
        p->auth_callback_url = file_str(f, "HttpConfig", "AuthCallbackURL");
        p->auth_audience = file_str(f, "HttpConfig", "AuthAudience");
        {
                json_t *idp = f ? cp_cfg_json_get(f, "IdpManagerConfig", 16) : NULL;
                p->auth_client_secret = file_str(idp, "ClientConfig", "ClientSecret");
        }
        r = prpc_logs_new(p, o, f, &p->logs, reterr);
        if (r < 0) {
                mgmt_prpc_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

mgmt_prpc *mgmt_prpc_free(mgmt_prpc *p) {
        if (!p)
                return NULL;
        p->logs = prpc_logs_free(p->logs);
        cp_explicit_bzero(p->data_key, sizeof p->data_key);
        free(p->dns_domain);
        free(p->auth_issuer);
        free(p->oidc_config_endpoint);
        free(p->auth_client_id);
        if (p->auth_client_secret)
                cp_explicit_bzero(p->auth_client_secret, strlen(p->auth_client_secret));
        free(p->auth_client_secret);
        free(p->auth_callback_url);
        free(p->auth_audience);
        free(p->cb_buckets);
        pthread_mutex_destroy(&p->cb_lock);
        free(p);
        return NULL;
}
