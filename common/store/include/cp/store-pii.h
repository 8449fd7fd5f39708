/*
 * cp/store-pii.h: the deployment's DataStoreEncryptionKeys in the database
 * (table data_keys, migration 0011) and the re-sealing of what they seal.
 *
 * Works with the keys installed in the process (cp/crypto-pii.h): the
 * writer key, the configured key and the previous one.
 *
 * Sealed with the DataStoreEncryptionKey:
 *   users.email, users.name                 pii_key = fingerprint
 *   events.meta->'email', ->'name'           pii_key = fingerprint
 *   msp_tenants.contact_email, contact_name  pii_key = fingerprint
 *   server_keys.private_key_enc, previous_private_key_enc
 *   services.session_private_key             (no fingerprint: they are few,
 *                                            and opened with each key)
 *
 * Threads: like the rest of the store, any thread; each call borrows a
 * pooled connection.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/crypto-pii.h"
#include "cp/error.h"
#include "cp/store.h"

typedef struct cp_store_pii_check {
        char current[CP_PII_FP_LEN];    /* the key the database marks current ("" = none known) */
        bool registered;                /* this call recorded the first key */
} cp_store_pii_check;

/* Checks the installed keys against the database and makes the current
 * one the writer (cp_pii_use). When data_keys is empty (a new database, or
 * one from before migration 0011), the key that opens the existing server
 * key (or a service's session key) is recorded as current; with nothing
 * sealed yet, the configured key is. Returns 0, or
 *   -EKEYREJECTED  no installed key is the one the data is sealed with;
 *                  ret->current names the data's key when known, and
 *                  nothing was written
 *   other          database errors. */
int cp_store_pii_key_check(cp_store *s, cp_store_pii_check *ret, cp_error *reterr);

typedef struct cp_store_pii_counts {
        int64_t users, events, tenants; /* rows re-sealed */
        int64_t secrets;                /* server and session keys re-sealed */
        int batches;                    /* batches committed */
        bool done;                      /* nothing left to re-seal */
} cp_store_pii_counts;

/* Re-seals rows not sealed with the writer key, batch rows per committed
 * transaction, at most max_batches batches (0 = until done): legacy_only
 * limits it to plain-text rows (pii_key ''). Rows are locked with SKIP
 * LOCKED, so several callers may run at once; a rerun resumes where an
 * interrupted one stopped. Counts are added to *ret. Returns 0, or
 * -ENOKEY (rows sealed with a key that is not installed; reterr names it)
 * or a database error. */
int cp_store_pii_reseal(cp_store *s, bool legacy_only, int batch, int max_batches, cp_store_pii_counts *ret,
                        cp_error *reterr);

/* Sealing of plain-text rows (legacy_only) for replicas: each batch
 * takes a transaction-level advisory lock and does nothing when another
 * process holds it, so one replica at a time does the work. At most
 * max_batches batches (0 = until done). */
int cp_store_pii_seal_legacy(cp_store *s, int batch, int max_batches, cp_store_pii_counts *ret,
                             cp_error *reterr);

/* Re-seals server keys and session keys not sealed with the writer key
 * (one transaction). Adds to ret->secrets. Returns 0, -ENOKEY when one
 * opens with no installed key, or a database error. */
int cp_store_pii_reseal_secrets(cp_store *s, cp_store_pii_counts *ret, cp_error *reterr);

/* Records fp (an installed key) and makes it the current key. */
int cp_store_pii_key_set_current(cp_store *s, const char *fp, cp_error *reterr);

/* Rows still sealed with fp (users, events, tenants; fp "" counts the
 * plain-text rows that have something to seal), and the server and
 * session keys that do not open with the writer key. */
int cp_store_pii_key_usage(cp_store *s, const char *fp, int64_t *ret_rows, int64_t *ret_secrets,
                           cp_error *reterr);

/* Forgets fp: refused (-EBUSY) when it is current or anything is still
 * sealed with it. */
int cp_store_pii_key_retire(cp_store *s, const char *fp, cp_error *reterr);

/* An activity event whose meta holds sealed "email" / "name" values (as
 * a users row has them), with pii_key their key's fingerprint ('' =
 * plain text). Otherwise cp_store_tx_event. */
struct cp_store_tx;
int cp_store_tx_event_sealed(struct cp_store_tx *tx, int activity, const char *initiator_id,
                             const char *target_id, const char *account_id, const char *meta_json,
                             const char *pii_key, cp_error *reterr);

/* For tools that create users without being a replica (bootstrap,
 * netbird-cp-admin account create): installs key (and previous; either
 * may be NULL) and checks them against the database. Returns 1 when
 * personal data written next will be sealed, 0 when it stays plain text
 * for the replicas to seal (no key given, or it does not match the data:
 * then nothing is installed and nothing was written), or a database
 * error. */
int cp_store_pii_tool_keys(cp_store *s, const uint8_t *key, const uint8_t *previous, cp_error *reterr);

/* Every recorded key: *ret_rows has fingerprint, current, created_at
 * (ISO 8601) per row; free with cp_store_rows_free. */
struct pg_result;
int cp_store_pii_key_list(cp_store *s, struct pg_result **ret_rows, cp_error *reterr);
