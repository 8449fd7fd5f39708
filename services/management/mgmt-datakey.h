/*
 * mgmt-datakey.h: the replica's DataStoreEncryptionKey against the
 * database (cp/store-pii.h, migration 0012).
 *
 * A replica whose key does not match the data must neither crash in a
 * loop nor seal anything with the wrong key. Before the manager starts,
 * mgmt_datakey_hold() checks the key; when it is wrong it logs ONE error
 * (the configured key's fingerprint, the one the data expects, what to
 * do), then serves only /healthz (ok) and /readyz (not ready, failed
 * "data_key") on the HTTP port, re-checking every
 * MGMT_READY_INTERVAL_MS, and writes nothing to the database. Once the
 * check passes (the database changed) the replica starts as usual. A
 * check that fails for another reason (a database hiccup) holds the same
 * way, with a warning instead of the error, until a check passes; a
 * database that cannot be opened at all is left to the manager.
 * When the running check rejects the key, the writer key is dropped
 * (cp_pii_drop_writer): nothing is sealed with a stale key.
 *
 * While running, mgmt_datakey_gate() is the readiness checker's extra
 * check: it follows the key the database marks current (the writer), turns
 * the replica not ready when that key is not configured here, and seals
 * plain-text personal data left from before migration 0011 (a few
 * batches per check, one replica at a time).
 *
 * Threads: the gate runs on the readiness thread; hold on the main thread
 * before anything else runs.
 */
#pragma once

#include <stddef.h>

#include "cp/config.h"
#include "cp/error.h"

/* A mgmt_ready_gate_fn; userdata is the cp_store. */
int mgmt_datakey_gate(void *userdata, char *why, size_t why_size);

/* Returns 1 when the key is right (go on and start), 0 when a signal
 * ended the wait, negative on an error before waiting (the database
 * unreachable is not one: the manager reports it as before). The keys
 * must be installed (cp_pii_install). */
int mgmt_datakey_hold(const cp_config *cfg, cp_error *reterr);
