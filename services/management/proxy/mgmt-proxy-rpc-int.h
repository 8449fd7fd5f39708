/*
 * mgmt-proxy-rpc-int.h: what the files of the unary ProxyService RPCs
 * share (mgmt-proxy-rpc.c: the context, dispatch, scope, services and
 * session tokens, SendStatusUpdate; mgmt-proxy-auth.c: Authenticate,
 * ValidateSession, ValidateTunnelPeer; mgmt-proxy-oidc.c: GetOIDCURL and
 * the callback; mgmt-proxy-peer.c: CreateProxyPeer; mgmt-proxy-logs.c:
 * SendAccessLog, the writer and the retention). Not exported.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>

#include "cp/base.h"
#include "cp/store-tx.h"
#include "mgmt-proxy-rpc.h"
#include "proxy_service.pb-c.h"

typedef struct prpc_logs prpc_logs;

struct mgmt_prpc {
        cp_store *store;
        uint8_t data_key[32];
        char *dns_domain;
        struct cp_jwt *jwt;
        struct cp_geo *geo;
        void (*account_changed)(const char *account_id, int64_t serial, void *userdata);
        void *userdata;
        int (*onetime_verify)(const char *token, const char *account_id, const char *service_id,
                              char ret_hash_hex[65], int64_t *ret_expires_unix, void *userdata);
        void *onetime_userdata;
        /* HttpConfig for GetOIDCURL and the callback ("" when absent) */
        char *auth_issuer;
        char *oidc_config_endpoint;
        char *auth_client_id;
        char *auth_client_secret;       /* IdpManagerConfig.ClientConfig.ClientSecret; may be "" */
        char *auth_callback_url;
        char *auth_audience;
        prpc_logs *logs;
        /* The OIDC callback's per-client limiter (mgmt-proxy-oidc.c). */
        pthread_mutex_t cb_lock;
        struct prpc_bucket *cb_buckets;
};

/* The callback limiter's table: slots by hash of the client address; a
 * collision restarts the slot (a full bucket), which only loosens the
 * limit for the two clients involved. */
#define PRPC_CB_BUCKETS 4096
typedef struct prpc_bucket {
        uint64_t key;                   /* hash of the address; 0 = free */
        double tokens;
        int64_t at_ms;
} prpc_bucket;

/* A reply with a status other than OK. */
void prpc_fail(mgmt_prpc_reply *ret, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);
/* Packs msg into ret (status OK). */
void prpc_ok(mgmt_prpc_reply *ret, const ProtobufCMessage *msg);

/* PERMISSION_DENIED (NetBird's text) when an account-scoped token names
 * another account; returns false then. */
bool prpc_scope_ok(const mgmt_prpc_caller *who, const char *account_id, mgmt_prpc_reply *ret);

/* A service row as the RPCs read it. Strings owned (prpc_service_release). */
typedef struct prpc_service {
        char *id, *account_id, *domain;
        char *auth_json;                /* services.auth */
        char *priv_sealed;              /* session_private_key */
        char *pub_b64, *prev_pub_b64;   /* prev "" unless inside its grace period */
        bool private_;
        char **access_groups;
        size_t n_access_groups;
} prpc_service;

void prpc_service_release(prpc_service *s);
/* By (account, id), or by domain when id is NULL (domain unique across
 * accounts). 0, -ENOENT, or a store error. */
int prpc_service_get(mgmt_prpc *p, const char *account_id, const char *id, const char *domain,
                     prpc_service *ret, cp_error *reterr);

/* Mints a session token with the service's key: 0 and *ret (malloc'd),
 * "" when the service has no key (NetBird: success with an empty token),
 * negative when signing failed. */
int prpc_session_mint(mgmt_prpc *p, const prpc_service *s, const char *sub, const char *email,
                      const char *method, const char *const *groups, const char *const *names, size_t n_groups,
                      char **ret, cp_error *reterr);

/* The handlers. */
void prpc_authenticate(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__AuthenticateRequest *req,
                       mgmt_prpc_reply *ret);
void prpc_validate_session(mgmt_prpc *p, const mgmt_prpc_caller *who,
                           const Management__ValidateSessionRequest *req, mgmt_prpc_reply *ret);
void prpc_validate_tunnel_peer(mgmt_prpc *p, const mgmt_prpc_caller *who,
                               const Management__ValidateTunnelPeerRequest *req, mgmt_prpc_reply *ret);
void prpc_get_oidc_url(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__GetOIDCURLRequest *req,
                       mgmt_prpc_reply *ret);
void prpc_create_proxy_peer(mgmt_prpc *p, const mgmt_prpc_caller *who,
                            const Management__CreateProxyPeerRequest *req, mgmt_prpc_reply *ret);
void prpc_send_access_log(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__SendAccessLogRequest *req,
                          mgmt_prpc_reply *ret);

/* The access-log writer (mgmt-proxy-logs.c). */
int prpc_logs_new(mgmt_prpc *p, const mgmt_prpc_options *o, const struct json_t *file, prpc_logs **ret,
                  cp_error *reterr);
prpc_logs *prpc_logs_free(prpc_logs *l);

/* One statement in its own short transaction: rows in *ret (may be NULL). */
int prpc_exec(mgmt_prpc *p, const char *sql, int n, const char *const *params, cp_store_rows **ret,
              cp_error *reterr);
