/*
 * mgmt-agent.h: the agent protocol edge of management.ManagementService
 * (the method table that routes each rpc is mgmt-service.h).
 *
 * This is the one place where
 *   - the EncryptedMessage envelope is opened and sealed (NaCl box between
 *     the peer's WireGuard key and the server's key, netbird-protocol.md
 *     section 2), with NetBird's status codes for its failures;
 *   - store errors become gRPC status codes and NetBird's messages
 *     (section 3.4); see docs/protocol.md for the table;
 *   - each RPC's outcome is logged once (method, peer address, peer key,
 *     account, code, time taken).
 *
 * Threads: plaintext RPCs that touch nothing shared (GetServerKey,
 * isHealthy) and the UNIMPLEMENTED answers run on the gRPC CQ thread.
 * Every encrypted RPC runs on the worker pool (mgmt_call_offload): the
 * envelope costs two X25519 operations and the handlers block on
 * PostgreSQL. Everything a handler reads from the agent context is
 * read-only after start-up.
 */
#pragma once

#include <stdint.h>

#include "cp/config.h"
#include "cp/crypto-box.h"
#include "cp/identity.h"
#include "cp/jwt.h"
#include "cp/store.h"
#include "cp-methods.h"
#include "mgmt-grpc.h"
#include "mgmt-keys.h"
#include "mgmt-netconf.h"

/* What the handlers need; every pointer is borrowed and outlives the
 * gRPC server. */
struct mgmt_sync;

typedef struct mgmt_agent {
        cp_store *store;
        const cp_config *config;
        const mgmt_netconf *netconf;
        /* The server key pairs shared by every replica (current, and the
         * previous one during a rotation's grace period); owned by the
         * manager. */
        mgmt_keys *keys;
        /* The Sync streams (registry, fan-out); set before the server
         * starts. Login, SyncMeta and Logout tell it what changed. */
        struct mgmt_sync *sync;
        /* Network maps (mgmt-map.h), for Logout's last map. */
        struct mgmt_maps *maps;
        /* The IdP token validator (owned by the manager); NULL when no IdP
         * is configured: Login with a jwtToken and ExtendAuthSession are
         * then refused. */
        cp_jwt *jwt;
        cp_identity_options identity;
        /* Geolocation (owned by the manager, never NULL once started):
         * the connection address of a Login or Sync is looked up and
         * stored with the peer (docs/protocol.md "Location"). */
        struct cp_geo *geo;
        /* Called (any thread) after a commit of this replica wrote proxy
         * mapping change-log rows up to seq: CreateExpose, StopExpose and
         * the expose sweep (mgmt-expose.h). Set by the manager to tell
         * the ProxyService streams here and on the other replicas; NULL:
         * the proxies find the rows when they next read the log. */
        void (*proxy_changed)(void *userdata, int64_t seq);
        void *proxy_changed_userdata;
        /* Rate limits (mgmt-limits.h): failed Logins per source address
         * (an emptied bucket is refused on the CQ thread before the job
         * is queued) and registration per setup key; NULL = none. */
        struct mgmt_limits *limits;
} mgmt_agent;

/* The handler of an encrypted RPC: runs on a worker with the opened
 * request in op->request and sets op's outcome (mgmt-agent-int.h). */
struct mgmt_agent_op;
typedef void (*mgmt_agent_handler)(struct mgmt_agent_op *op);

/* CQ thread: runs handler for call c through the envelope on a worker
 * (open, handle, seal) and answers the call from the CQ thread. When the
 * worker queue refuses the job the call is answered RESOURCE_EXHAUSTED or
 * UNAVAILABLE here and a negative errno is returned; 0 otherwise. */
int mgmt_agent_offload(mgmt_call *c, const mgmt_agent *a, cp_proto_mgmt_method_id id, mgmt_agent_handler handler);
