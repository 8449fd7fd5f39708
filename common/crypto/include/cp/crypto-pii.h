/*
 * cp/crypto-pii.h: the process's DataStoreEncryptionKeys, and personal
 * data (users' e-mails and names, the copies events keep, MSP tenants'
 * contacts) sealed with them.
 *
 * A process installs its configured keys once at start
 * (cp_pii_install: DataStoreEncryptionKey and, during a rotation,
 * DataStoreEncryptionKeyPrevious). Each key is known by its fingerprint:
 * the first 16 bytes, lower-case hex, of HMAC-SHA256(key, "netbird-cp data
 * key fingerprint v1") -- safe to log and to store, it reveals nothing of
 * the key. The database's data_keys table (migration 0011) marks one
 * fingerprint current; cp_pii_use() makes that key the one this process
 * writes with (the readiness checker re-reads it every few seconds).
 *
 * Rows that hold personal data carry the fingerprint of the key that
 * sealed them in a pii_key column ('' = a legacy row in plain text). The
 * stored values are NetBird's format (cp/crypto-aead.h).
 *
 * READING personal data: select the value and the row's pii_key, then
 *     char *email = cp_pii_open(pii_key, stored_email);   // free()
 * or, for JSON built in SQL, wrap the column with CP_PII_SQL() and pass
 * the finished JSON text through cp_pii_expand_json().
 * WRITING: char fp[CP_PII_FP_LEN] = ""; char *sealed = cp_pii_seal(plain, fp);
 * and store sealed with pii_key = fp.
 *
 * Threads: install before any thread uses the module; everything else is
 * thread-safe (the writer is an atomic index). Secrets: the keys live in
 * this module's memory (wiped by cp_pii_uninstall); plaintexts returned
 * are the caller's to free.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/crypto-aead.h"
#include "cp/error.h"
#include "cp/strbuf.h"

#define CP_PII_FP_LEN 33        /* 32 hex characters + NUL */
#define CP_PII_MAX_KEYS 2       /* current + previous */

/* The fingerprint of a key (see above). */
void cp_pii_fingerprint(const uint8_t key[CP_DATA_KEY_LEN], char out[CP_PII_FP_LEN]);

/* Installs the configured keys, replacing any: key (required) and
 * previous (NULL when none). Until cp_pii_use() says otherwise, key is the
 * writer. Not thread-safe (call before threads use the module). */
void cp_pii_install(const uint8_t key[CP_DATA_KEY_LEN], const uint8_t *previous);
/* Wipes the installed keys. */
void cp_pii_uninstall(void);
/* Whether keys are installed. */
bool cp_pii_installed(void);

/* Whether fp is the fingerprint of an installed key. */
bool cp_pii_has(const char *fp);
/* Makes the installed key of fingerprint fp the writer. Returns 0, or
 * -ENOKEY when no installed key has that fingerprint. */
int cp_pii_use(const char *fp);
/* No writer: the database's current key is one this process does not
 * have. cp_pii_seal then returns NULL and cp_pii_encrypt -EKEYREJECTED,
 * so nothing is sealed with a stale key; cp_pii_use() restores one. */
void cp_pii_drop_writer(void);
/* The fingerprint of the writer key ("" when none installed or dropped), and of the
 * configured key / previous key ("" when none). */
const char *cp_pii_writer_fp(void);
const char *cp_pii_key_fp(void);
const char *cp_pii_previous_fp(void);
/* A copy of the installed key of fingerprint fp. Returns 0 or -ENOKEY. */
int cp_pii_key_get(const char *fp, uint8_t out[CP_DATA_KEY_LEN]);

/* ---- personal data (text) ------------------------------------------------- */

/* Seals plain (NUL-terminated; NULL = "") with the writer key and writes
 * its fingerprint to fp. Returns a new string (free()); "" for ""; NULL
 * (fp "") when the writer was dropped (cp_pii_drop_writer) -- callers
 * fail with CP_PII_SEAL_ERROR. With
 * no key installed (tools and tests without a DataStoreEncryptionKey) it
 * returns plain as is and fp "": a legacy row, which replicas seal.
 * fp is read first: initialise it to "" for a row's first value; when it
 * names an installed key (the row's first value) that key is used, so
 * every value of a row is sealed with one key even if the writer changes
 * in between. */
char *cp_pii_seal(const char *plain, char fp[CP_PII_FP_LEN]);
/* CP_PII_SEAL_ERROR: the error text for a NULL from cp_pii_seal (keys
 * installed, writer dropped, fp naming no installed key). */
#define CP_PII_SEAL_ERROR "personal data cannot be sealed: the database's DataStoreEncryptionKey is not this " \
        "replica's"
/* Opens a stored value: fp "" (or NULL) means plain text, returned as is.
 * Returns 0 and *ret (free()), or -ENOKEY (fp is not an installed key),
 * -EBADMSG / -EINVAL (not a value sealed with that key). */
int cp_pii_open_strict(const char *fp, const char *stored, char **ret, cp_error *reterr);
/* Same, never failing: on failure it logs a warning (fingerprint and
 * reason, never the value) and returns "" instead. Returns a new string
 * (free()). This is what readers that build responses call. */
char *cp_pii_open(const char *fp, const char *stored);

/* JSON built in SQL: CP_PII_SQL(fp, col) is an SQL expression giving
 * "pii1:<fp>:<sealed>" for a sealed value, NULL when fp is NULL (an outer
 * join found no row) and, for fp = '' (plain text), CP_PII_PLAIN(col).
 * After the query, cp_pii_expand_json() replaces each JSON string that is
 * a marker of an installed key as a whole (never a marker inside a
 * string) by the opened value, JSON-escaped.
 *
 * SECURITY: the expansion decrypts whatever marker it finds, so plain
 * text must never look like one: someone holding a ciphertext (a
 * database dump) would paste "pii1:<fp>:<sealed>" into a name and read it
 * back opened. Every plain-text string in a JSON that is expanded (or a
 * column given to cp_pii_open_marked) -- legacy rows, service user names,
 * ids taken from an IdP -- goes through CP_PII_PLAIN(col): a value that
 * starts with "pii1:" or "pii0:" gets a "pii0:" prefix, which the
 * expansion and cp_pii_open_marked strip once. */
#define CP_PII_PLAIN(col) \
        "(CASE WHEN left((" col "), 5) IN ('pii0:', 'pii1:') THEN 'pii0:' || (" col ") ELSE (" col ") END)"
#define CP_PII_SQL(fp, col) \
        "(CASE WHEN (" fp ") = '' THEN " CP_PII_PLAIN(col) " WHEN (" fp ") IS NOT NULL"                   \
        " THEN concat('pii1:', " fp ", ':', " col ") END)"
void cp_pii_expand_json(const char *json, cp_strbuf *out);
/* One column selected with CP_PII_SQL (or CP_PII_PLAIN): opened when it
 * is a marker that opens, its "pii0:" escape stripped, else as is. Returns a new string (free()); NULL gives "". */
char *cp_pii_open_marked(const char *value);
/* Whether json holds a CP_PII_SQL marker (a fast check before expanding). */
bool cp_pii_json_has_marker(const char *json);

/* ---- sealed secrets (server keys, session keys) ------------------------------
 * Secrets sealed before the fingerprints existed carry no fingerprint.
 * cp_pii_decrypt tries `hint` first (the caller's key; NULL = none), then
 * the writer, then the other installed key: AES-GCM's tag makes a wrong
 * key fail cleanly, so this never mistakes one key for another. Same
 * results as cp_crypto_aead_decrypt. cp_pii_encrypt seals with the writer
 * key when keys are installed, else with fallback. */
int cp_pii_decrypt(const uint8_t *hint, const char *b64, void *out, size_t out_cap, cp_error *reterr);
int cp_pii_encrypt(const uint8_t fallback[CP_DATA_KEY_LEN], const void *plain, size_t len, char **ret,
                   cp_error *reterr);
