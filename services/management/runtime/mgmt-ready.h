/*
 * mgmt-ready.h: the readiness checker behind GET /readyz.
 *
 * A thread of its own runs the checks (cp_store_ping, then
 * cp_store_migrations_current) every MGMT_READY_INTERVAL_MS and keeps the
 * latest result. The HTTP handler only reads that result, so a database
 * that hangs never blocks the event loop (and with it /healthz and signal
 * handling). A check still running after MGMT_READY_STALE_MS counts as a
 * failure.
 *
 * Threads: mgmt_ready_get() may be called from any thread; new/free from
 * the thread that owns the manager.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/store.h"

#define MGMT_READY_INTERVAL_MS 2000
#define MGMT_READY_STALE_MS 5000
/* A failure's full reason is logged when readiness is lost, then when it
 * changes, at most this often. /readyz's body never carries it. */
#define MGMT_READY_LOG_EVERY_MS 60000

/* /readyz's "error" when the database cannot be reached or read; the
 * database's own message is in the log ("not ready", component ready). */
#define MGMT_READY_MSG_STORE "database unavailable"
#define MGMT_READY_MSG_SCHEMA "cannot read the database schema version"

typedef struct mgmt_ready mgmt_ready;

typedef struct mgmt_ready_state {
        bool ready;
        const char *failed;     /* "store", "migrations" or the gate's name when not ready */
        char error[256];        /* why, when not ready: our words, safe to show anyone */
        int64_t age_ms;         /* since the result was produced */
} mgmt_ready_state;

/* Runs the checks once synchronously (so the first /readyz is accurate),
 * then starts the thread. store is borrowed and must outlive the checker.
 * Returns 0 or a negative errno (thread creation failed). */
int mgmt_ready_new(cp_store *store, mgmt_ready **ret);

/* An extra check run after the store's, on the checker's thread (so it
 * may query the store): 0 = fine, negative = not ready, with a short
 * reason in why (failed = name). The DataStoreEncryptionKey check
 * (mgmt-datakey.h) is one. */
typedef int (*mgmt_ready_gate_fn)(void *userdata, char *why, size_t why_size);
int mgmt_ready_new_gated(cp_store *store, const char *name, mgmt_ready_gate_fn gate, void *userdata,
                         mgmt_ready **ret);

/* Several gates, run in order after the store's; the first that fails
 * names /readyz's "failed" (e.g. "data_key", then "bus" for a Redis that
 * refuses our password). gates[] is copied; names and userdata are
 * borrowed and must outlive the checker. At most MGMT_READY_MAX_GATES. */
#define MGMT_READY_MAX_GATES 4
typedef struct mgmt_ready_gate {
        const char *name;
        mgmt_ready_gate_fn fn;
        void *userdata;
} mgmt_ready_gate;
int mgmt_ready_new_gates(cp_store *store, const mgmt_ready_gate *gates, size_t n_gates, mgmt_ready **ret);

void mgmt_ready_get(mgmt_ready *r, mgmt_ready_state *ret);

/* Any thread: the gates' names, in order (borrowed, as given to
 * mgmt_ready_new_gates()), at most max of them; returns how many. */
size_t mgmt_ready_gate_names(const mgmt_ready *r, const char **names, size_t max);

/* Stops the thread, waiting at most timeout_ms for a check in progress.
 * Returns true when the thread is gone (r is freed); false when it is stuck
 * inside the store, in which case r is left alone and the store must not be
 * freed either (the process is about to exit anyway). Accepts NULL. */
bool mgmt_ready_stop(mgmt_ready *r, int64_t timeout_ms);
