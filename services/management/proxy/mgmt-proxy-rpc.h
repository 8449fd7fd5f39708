/*
 * mgmt-proxy-rpc.h: ProxyService's unary RPCs (proxy-and-api.md 1.6):
 * Authenticate, GetOIDCURL, ValidateSession, ValidateTunnelPeer,
 * CreateProxyPeer, SendStatusUpdate, SendAccessLog; CheckLLMPolicyLimits
 * and RecordLLMUsage answer UNIMPLEMENTED. Plus the REST callback that
 * completes the proxy's OIDC flow (GET /api/reverse-proxy/callback) and
 * the access-log writer and retention.
 *
 * The edge (mgmt-proxy edge of the ProxyService: method table, proxy
 * token auth) decodes the request and hands it, the method id and who
 * called (the proxy token's account) to mgmt_prpc_handle_msg() on a
 * worker, and sends back what it returns.
 *
 * Replicas share nothing in memory here: the session signing keys, used
 * one-time tokens and OIDC flow states are rows of PostgreSQL, so a token
 * minted or a flow started on one replica is honoured by every other.
 *
 * Threads: mgmt_prpc_new/free on the loop thread (before the workers
 * start / after they stopped); mgmt_prpc_handle_msg and the callback on any
 * worker, concurrently. The access-log writer runs its own thread; the
 * retention runs on that thread too, between flushes.
 */
#pragma once

#include <grpc/status.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"
#include "cp-methods.h"
#include "proxy_service.pb-c.h"

#include <protobuf-c/protobuf-c.h>

struct json_t;
struct cp_jwt;
struct cp_geo;

typedef struct mgmt_prpc mgmt_prpc;

typedef struct mgmt_prpc_options {
        cp_store *store;                        /* borrowed */
        const uint8_t *data_key;                /* DataStoreEncryptionKey, 32 bytes; copied */
        const struct json_t *file;              /* management.json (HttpConfig, ReverseProxy); may be NULL */
        const char *dns_domain;                 /* --dns-domain, for the proxy peer's event */
        struct cp_jwt *jwt;                     /* ID token validator of the OIDC callback; NULL = none */
        struct cp_geo *geo;                     /* access logs' source locations; NULL = none */
        /* A change this process committed that agents must see (the
         * proxy peer): the manager announces it (mgmt_sync_local_change).
         * Any thread. NULL = nobody is told. */
        void (*account_changed)(const char *account_id, int64_t serial, void *userdata);
        void *userdata;
        /* Verifies a one-time token of ProxyMapping.auth_token (stateless,
         * signed, with an expiry: the edge's module makes them) for this
         * account and service: 0 and the token's hex SHA-256 and expiry
         * (Unix seconds), or negative when it is not valid. Any thread.
         * NULL = CreateProxyPeer refuses every token. */
        int (*onetime_verify)(const char *token, const char *account_id, const char *service_id,
                              char ret_hash_hex[65], int64_t *ret_expires_unix, void *userdata);
        void *onetime_userdata;
        /* Access-log writer: flush every batch entries or flush_ms,
         * queue bounded by queue_max (then RESOURCE_EXHAUSTED). 0 = the
         * defaults (1000, 200 ms, 100000). */
        unsigned log_batch;
        int64_t log_flush_ms;
        unsigned log_queue_max;
        /* Retention: ReverseProxy.AccessLogRetentionDays (from the file
         * unless retention_days_set) and the interval of the clean-up. */
        bool retention_days_set;
        int64_t retention_days;
        int64_t cleanup_interval_ms;            /* 0 = ReverseProxy.AccessLogCleanupIntervalHours or 1 h */
} mgmt_prpc_options;

int mgmt_prpc_new(const mgmt_prpc_options *o, mgmt_prpc **ret, cp_error *reterr);
/* Flushes the queued access logs, stops the writer, wipes the key.
 * Accepts NULL; returns NULL. */
mgmt_prpc *mgmt_prpc_free(mgmt_prpc *p);

/* Who is calling: the proxy access token the edge verified. */
typedef struct mgmt_prpc_caller {
        const char *token_account_id;           /* account-scoped token; NULL or "" = management-wide */
        const char *peer_ip;                    /* for logs */
        /* The call runs on the gRPC CQ thread: it must not wait on the
         * database. An RPC that would (only SendAccessLog whose account or
         * service was not seen lately) sets reply.would_block instead and
         * does nothing; the edge then runs it again on a worker. */
        bool no_db;
} mgmt_prpc_caller;

/* The answer: status (and message) and, with OK, the packed response
 * (malloc'd, the caller frees data). */
typedef struct mgmt_prpc_reply {
        bool would_block;               /* see mgmt_prpc_caller.no_db */
        grpc_status_code status;
        char message[256];
        uint8_t *data;
        size_t len;
} mgmt_prpc_reply;

/* True for the methods this module answers (the unary ones). */
bool mgmt_prpc_handles(cp_proto_proxy_method_id id);

/* Worker thread (or the CQ thread with who->no_db): runs the RPC on msg,
 * the method's request decoded by the edge (owned by the caller), and
 * fills *ret. Blocks on nothing but the store. */
void mgmt_prpc_handle_msg(mgmt_prpc *p, cp_proto_proxy_method_id id, const mgmt_prpc_caller *who,
                          const ProtobufCMessage *msg, mgmt_prpc_reply *ret);

/* The one-time token verifier (see mgmt_prpc_options.onetime_verify), set
 * once the edge exists, before any call. */
void mgmt_prpc_set_onetime(mgmt_prpc *p,
                           int (*verify)(const char *token, const char *account_id, const char *service_id,
                                         char ret_hash_hex[65], int64_t *ret_expires_unix, void *userdata),
                           void *userdata);

/* ---- the OIDC callback (GET /api/reverse-proxy/callback) ---------------- */

/* Worker thread: query is the raw query string (code, state, error...),
 * remote the client's "address:port" (NULL = unknown) for the per-client
 * limit (NetBird's: 10 a minute, bursts of 15). Fills status (302, 400,
 * 401, 429, 500) and, for 302, *ret_location (malloc'd), else *ret_body a
 * JSON error body (malloc'd). */
void mgmt_prpc_oidc_callback(mgmt_prpc *p, const char *query, const char *remote, int *ret_status,
                             char **ret_location, char **ret_body);

/* ---- for tests and the benchmark --------------------------------------- */

/* Access-log entries written so far by this process, and those dropped
 * (their account or service vanished meanwhile, or a write failed). */
void mgmt_prpc_log_stats(mgmt_prpc *p, uint64_t *ret_written, uint64_t *ret_dropped);
