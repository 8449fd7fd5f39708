/*
 * mgmt-replica.h: this process as a replica: its row in the replicas
 * table, the heartbeat, and the reaping of replicas that died.
 *
 * A thread of its own, on a store of its own (one connection), so a busy
 * worker pool never delays a heartbeat and a hanging database never
 * blocks the event loop or the CQ thread. Every heartbeat interval it:
 *
 *   1. moves this replica's heartbeat forward (database clock);
 *   2. if the row is gone, another replica reaped us (we were cut off for
 *      longer than the expiry): it registers again and calls on_lost, and
 *      the manager ends every stream so agents reconnect and fence the
 *      rows back;
 *   3. once it has itself been heartbeating without a gap for a whole
 *      expiry period, reaps every other replica silent for longer than
 *      the expiry (cp_store_replica_reap: one statement deletes the row and
 *      marks exactly its still-owned sessions disconnected). The "without
 *      a gap" rule keeps replicas coming back from a database outage, when
 *      every heartbeat looks old, from reaping each other before the
 *      others had a chance to heartbeat again.
 *
 * Threads: new/stop/draining from the manager's thread; on_lost runs on
 * the replica thread and must not block; mgmt_replica_get_stats() from any
 * thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

typedef struct mgmt_replica mgmt_replica;

typedef struct mgmt_replica_options {
        const char *id;                 /* 1..CP_STORE_REPLICA_ID_MAX bytes, new for each process start */
        const char *dsn;                /* the replica thread opens its own one-connection store */
        const char *name;               /* NULL: the host name */
        const char *grpc_address, *http_address, *version;
        int64_t heartbeat_ms, expiry_ms;
        void (*on_lost)(void *userdata);
        void *userdata;
} mgmt_replica_options;

typedef struct mgmt_replica_stats {
        uint64_t heartbeats;            /* landed */
        uint64_t heartbeat_failures;    /* database errors */
        uint64_t lost;                  /* times this replica found itself reaped */
        uint64_t reaped_replicas;       /* other replicas this one reaped */
        uint64_t reaped_sessions;       /* their sessions it marked disconnected */
        int64_t last_heartbeat_ms;      /* monotonic ms of the last landed heartbeat, 0 = none */
} mgmt_replica_stats;

/* Registers the replica (synchronously: a failure is a start-up error)
 * and starts the thread. */
int mgmt_replica_new(const mgmt_replica_options *opt, mgmt_replica **ret, cp_error *reterr);

/* Once the listeners have their ports: records the addresses in the row
 * (synchronously). */
int mgmt_replica_set_addresses(mgmt_replica *r, const char *grpc_address, const char *http_address,
                               cp_error *reterr);

/* Shutdown began: the row says "draining" (asynchronously) and reaping
 * stops. */
void mgmt_replica_draining(mgmt_replica *r);

/* Stops the thread; with deregister, deletes the row and marks
 * disconnected any session still owned (normally none: every stream's
 * own fenced disconnect ran before). Waits at most timeout_ms; returns
 * false (and leaks r) when the thread is stuck in the database. Accepts
 * NULL. */
bool mgmt_replica_stop(mgmt_replica *r, bool deregister, int64_t timeout_ms);

void mgmt_replica_get_stats(mgmt_replica *r, mgmt_replica_stats *ret);
