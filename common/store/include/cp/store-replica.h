/*
 * cp/store-replica.h: the replicas table and the sessions each replica
 * owns (sql/migrations/0003_replicas.sql).
 *
 * A management process registers under a fresh id when it starts and
 * heartbeats by the database's clock. Fenced connects record that id as
 * the session owner (cp_store_set_replica_id()). A replica that stops
 * heartbeating is reaped by another: one statement deletes its row and
 * marks disconnected exactly the sessions it still owned, so a peer that
 * has already reconnected to another replica is never touched.
 *
 * These are deployment-wide operations: they are the only peers updates
 * not scoped to one account (they are scoped to one replica instead).
 * Every call is one statement on a pooled connection; thread-safe like
 * the rest of the store.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

typedef struct cp_store_replica_info {
        const char *id;                 /* 1..CP_STORE_REPLICA_ID_MAX bytes */
        const char *name;               /* host name; may be NULL */
        int pid;
        const char *grpc_address;       /* may be NULL */
        const char *http_address;       /* may be NULL */
        const char *version;            /* may be NULL */
} cp_store_replica_info;

/* Inserts (or refreshes) the replica's row: state serving, heartbeat now. */
int cp_store_replica_register(cp_store *s, const cp_store_replica_info *info, cp_error *reterr);

/* Moves the heartbeat to the database's now. Returns 1, or 0 when the row
 * is gone (another replica reaped this one: its sessions were marked
 * disconnected and it must re-register and have its streams reconnect). */
int cp_store_replica_heartbeat(cp_store *s, const char *id, cp_error *reterr);

/* state: "serving" or "draining" (the CHECK constraint). Returns 1, or 0
 * when the row is gone. */
int cp_store_replica_set_state(cp_store *s, const char *id, const char *state, cp_error *reterr);

/* Graceful goodbye: deletes the row and, in the same statement, marks
 * disconnected every session the replica still owns (normally none once
 * its streams ended). *ret_swept (may be NULL) = sessions marked. */
int cp_store_replica_deregister(cp_store *s, const char *id, int64_t *ret_swept, cp_error *reterr);

typedef struct cp_store_reaped_replica {
        char id[CP_STORE_REPLICA_ID_MAX + 1];
        char name[256];
        int64_t sessions;               /* sessions marked disconnected */
} cp_store_reaped_replica;

/* Deletes every replica other than self_id whose heartbeat is older than
 * expiry_ms by the database's clock and marks its sessions disconnected,
 * all in one statement. Concurrent reapers each reap a replica at most
 * once between them. Returns 0 and *ret (malloc'd, free(); NULL when none)
 * with *ret_n entries sorted by id. */
int cp_store_replica_reap(cp_store *s, const char *self_id, int64_t expiry_ms, cp_store_reaped_replica **ret,
                          size_t *ret_n, cp_error *reterr);
