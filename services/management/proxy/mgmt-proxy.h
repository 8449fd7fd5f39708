/*
 * mgmt-proxy.h: management.ProxyService, the gRPC service NetBird's
 * reverse proxies connect to (docs/proxy.md, "Proxy connections and
 * mapping streams").
 *
 * One mgmt_proxy per process (the "hub"). It owns the method table of
 * the service (registered on the same gRPC server as the agents'
 * ManagementService, mgmt-proxy-service.c), the proxy authentication
 * (mgmt-proxy-auth.c) and the mapping streams GetMappingUpdate and
 * SyncMappings (mgmt-proxy-stream.c). The unary RPCs are handlers
 * plugged into the table from their own files (mgmt-proxy-int.h).
 *
 * Threads: the streams live on the gRPC CQ thread; the database work runs
 * on the workers. mgmt_proxy_changed() and mgmt_proxy_token_revoked() may
 * be called from any thread (they post to the CQ thread); the other
 * functions are for the manager's loop thread unless marked.
 *
 * Between replicas: a change to what proxies serve is a row of
 * proxy_mapping_changes (migration 0008); whoever commits one calls
 * mgmt_proxy_changed() on its own hub and publishes the bus pseudo
 * account MGMT_PROXY_BUS_CHANGES with serial = seq; every replica's
 * manager routes that message to mgmt_proxy_changed(). A periodic poll
 * (mgmt_proxy_tick) is the safety net. Revocations travel the same way
 * under MGMT_PROXY_BUS_TOKENS (the token id is not a number: the hint
 * carries no id, every replica re-checks the tokens of its streams).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/store.h"
#include "cp-methods.h"
#include "mgmt-grpc.h"

typedef struct mgmt_proxy mgmt_proxy;

/* Bus pseudo-accounts (real account ids never start with '~'). */
#define MGMT_PROXY_BUS_CHANGES "~proxy"
#define MGMT_PROXY_BUS_TOKENS "~proxytok"

typedef struct mgmt_proxy_options {
        cp_store *store;                /* borrowed; must outlive the hub */
        const uint8_t *data_key;        /* the DataStoreEncryptionKey, 32 bytes; copied */
        const char *replica_id;         /* copied; written to proxies.replica_id */
        /* Mappings per snapshot message: NB_PROXY_SNAPSHOT_BATCH_SIZE,
         * 500 when 0. */
        int batch_size;
        /* SyncMappings: how long the server waits for the ack of a
         * message before it ends the stream (DEADLINE_EXCEEDED). 0 = 60 s. */
        int64_t ack_timeout_ms;
        /* How often every stream's token is re-read (60 s when 0). */
        int64_t token_check_ms;
        /* How often a stream's proxies.last_seen is written (60 s when 0). */
        int64_t heartbeat_ms;
        /* proxies rows not seen for this long are deleted (1 h when 0). */
        int64_t stale_ms;
        /* The safety-net poll of the change log (--serial-check-interval;
         * 0 = off, as that flag's 0s turns off the serial check). */
        int64_t poll_ms;
} mgmt_proxy_options;

mgmt_proxy *mgmt_proxy_new(const mgmt_proxy_options *o);
/* After the gRPC server is gone (no stream, no job left). Accepts NULL. */
mgmt_proxy *mgmt_proxy_free(mgmt_proxy *p);

/* The rows to register, in cp_proto_proxy_method_id order; they point
 * into p (their data), which must outlive the server. The server's
 * userdata is not used by them. */
#define MGMT_PROXY_N_METHODS ((size_t) _CP_PROTO_PROXY_MAX)
void mgmt_proxy_methods(mgmt_proxy *p, mgmt_rpc_method out[MGMT_PROXY_N_METHODS]);

/* Loop thread, before the server starts: who answers the unary RPCs
 * (mgmt-proxy-rpc.h; borrowed, outlives the server). */
struct mgmt_prpc;
void mgmt_proxy_set_unary(mgmt_proxy *p, struct mgmt_prpc *rpc);

/* CQ thread, once, before any call (the gRPC server's on_start). */
void mgmt_proxy_on_grpc_start(mgmt_grpc *g, mgmt_proxy *p);

/* Any thread: the change log has rows up to seq (a hint: streams whose
 * cluster it concerns read them from the database). seq <= 0: "maybe
 * something", read anyway. */
void mgmt_proxy_changed(mgmt_proxy *p, int64_t seq);
/* Any thread: token_id was revoked (or deleted, or expired); NULL or ""
 * = some token, re-check every stream's. Streams of a token no longer
 * valid end with UNAUTHENTICATED "token expired or revoked". */
void mgmt_proxy_token_revoked(mgmt_proxy *p, const char *token_id);
/* Loop thread, every --serial-check-interval or so: the safety-net poll
 * of the change log, the periodic token re-check, heartbeats and the
 * stale-row sweep (each at its own interval). */
void mgmt_proxy_tick(mgmt_proxy *p);
/* Any thread, at shutdown: end every stream (UNAVAILABLE "server is
 * shutting down") so proxies reconnect elsewhere at once; their
 * disconnects still run. */
void mgmt_proxy_drain(mgmt_proxy *p);

