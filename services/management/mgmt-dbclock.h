/*
 * mgmt-dbclock.h: the database clock, the one clock every replica shares.
 *
 * Sync session tokens (docs/protocol.md, "Session tokens") are Unix
 * nanoseconds read from PostgreSQL's clock_timestamp() when a stream
 * opens, never from the replica's own clock: replicas whose clocks are
 * seconds apart still order their streams by one clock.
 *
 * This is a small helper with its own libpq connection (one, opened on
 * demand, reopened after a failure), because the store has no call that
 * returns the database time; it runs one read-only statement. It belongs
 * in the store (a session-open call that takes the token inside the fenced
 * UPDATE) and should move there.
 *
 * Threads: any thread; calls are serialised on a mutex (the statement
 * takes a few tens of microseconds).
 */
#pragma once

#include <stdint.h>

#include "cp/error.h"

typedef struct mgmt_dbclock mgmt_dbclock;

/* dsn is copied. Connects lazily: never fails. */
mgmt_dbclock *mgmt_dbclock_new(const char *dsn);
/* Accepts NULL; returns NULL. */
mgmt_dbclock *mgmt_dbclock_free(mgmt_dbclock *c);

/* The database's clock_timestamp() as Unix nanoseconds (microsecond
 * resolution, so the last three digits are 0). One retry on a fresh
 * connection when the old one is broken. -ECONNRESET when the database
 * cannot be reached, -EIO for anything else; reterr says why. */
int mgmt_dbclock_now_ns(mgmt_dbclock *c, int64_t *ret, cp_error *reterr);
