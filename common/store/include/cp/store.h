/*
 * cp/store.h: the PostgreSQL store.
 *
 * A cp_store is a small pool of libpq connections to one database. Each
 * connection prepares the statements of the statement table lazily, once,
 * and reuses them. Functions never log; failures come back as a negative
 * errno-style value with reterr holding the message and the SQLSTATE.
 *
 * Threads: every function here is safe to call from any thread at the same
 * time; each call borrows a pooled connection for its duration and blocks
 * while none is free. The pool reconnects a connection found broken.
 *
 * Scope: every statement about tenant data takes an account id and is
 * filtered by it; nothing reads or writes another account's rows.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"

typedef struct cp_store cp_store;
struct cp_strbuf;

/* Longest replica id the store keeps (they are generated, "r" + 24 hex). */
#define CP_STORE_REPLICA_ID_MAX 64

/* Opens a pool of pool_size (1..256) connections to dsn (libpq conninfo
 * or URI). Connections are made on demand; this call makes the first one
 * so a bad DSN fails here. *ret is owned by the caller, freed with
 * cp_store_free(). */
int cp_store_open(const char *dsn, unsigned pool_size, cp_store **ret, cp_error *reterr);
/* Closes every connection; waits for none. Accepts NULL; returns NULL. */
cp_store *cp_store_free(cp_store *s);

/*
 * Whether stores opened from now on in this process use named prepared
 * statements (PQprepare once per connection, then PQexecPrepared; the
 * default) or send every statement unnamed (PQexecParams: parse and plan
 * each time). A pgbouncer in transaction pooling mode (1.18 has no
 * prepared-statement support) needs false: a statement prepared on one
 * server connection is missing on the next. Named statements are
 * prepared as "<name>_<8 hex of a hash of the SQL>", so one another client
 * or version prepared under the same name on a pooled server connection is
 * never run in place of ours. Either way, a store whose server answers
 * "prepared statement ... does not exist" (26000) or "already exists"
 * (42P05) switches to unnamed statements for good: the statement is
 * retried once when no transaction was open; inside one the transaction
 * is aborted and the call fails with -ECONNRESET (a passing fault: the
 * request fails, and a retry by the client runs unnamed). Call before any
 * thread opens a store.
 */
void cp_store_use_prepared(bool on);
/* False once s sends unnamed statements (configured, or switched). */
bool cp_store_uses_prepared(cp_store *s);

/* Runs SELECT 1 on a pooled connection. */
int cp_store_ping(cp_store *s, cp_error *reterr);

/* The pool right now (store-metrics.c), for a metrics collector: size is
 * pool_size, busy the connections lent out (or being made), idle those
 * open and free. Any thread; takes the pool's lock briefly. The store
 * also records per-statement latency and errors in the process-wide
 * registry (cp/metrics.h; docs/metrics.md). */
typedef struct cp_store_pool_usage {
        unsigned size;
        unsigned busy;
        unsigned idle;
} cp_store_pool_usage;
void cp_store_pool_stats(cp_store *s, cp_store_pool_usage *ret);

/* The database's clock_timestamp() as Unix nanoseconds (microsecond
 * resolution). It is the one clock every replica shares, so Sync session
 * tokens taken from it order streams correctly even when replica clocks
 * disagree. */
int cp_store_db_now_ns(cp_store *s, int64_t *ret, cp_error *reterr);

/* ---- migrations (store-migrate.c) ---------------------------------------
 * The migrations in sql/migrations/ are compiled into the binary. Applying
 * them takes a session advisory lock, so replicas that start together
 * apply each migration exactly once; each is recorded in
 * schema_migrations(version, name, checksum, applied_at). An applied
 * migration whose checksum differs from the compiled one is an error
 * (-EBADMSG, reterr names it): migrations are forward-only and never
 * edited after they land. Versions in the database the binary does not
 * know (a newer replica ran first) are tolerated and counted. */
typedef struct cp_store_migrate_result {
        unsigned applied;       /* migrations applied by this call */
        unsigned current;       /* known migrations already present before */
        unsigned unknown;       /* recorded versions newer than this binary */
} cp_store_migrate_result;

int cp_store_migrate(cp_store *s, cp_store_migrate_result *ret, cp_error *reterr);
/* Appends the one- or two-line report `migrate` prints for a result. */
void cp_store_migrate_report(const cp_store_migrate_result *mr, struct cp_strbuf *out);
/* Checks without changing anything; returns 1 when every compiled
 * migration is applied with a matching checksum, 0 when some are pending,
 * or a negative error (-EBADMSG on a checksum mismatch). */
int cp_store_migrations_current(cp_store *s, cp_error *reterr);

/* ---- fenced peer status (store-status.c) -----------------------------------
 * Both are one UPDATE, no transaction wrapper and no read before the write
 * (netbird-protocol.md section 5.2). last_seen comes from the database
 * clock (CURRENT_TIMESTAMP).
 *
 * mark_connected lands only when the stored session token is smaller than
 * token; it sets connected, last_seen, the token and clears login_expired.
 * mark_disconnected lands only when the stored token equals token; it sets
 * disconnected, last_seen and token 0. A token of 0 never touches the row.
 *
 * The connect also records the owning replica (peer_status_replica_id,
 * set with cp_store_set_replica_id()), the disconnect clears it: that is
 * how a dead replica's sessions are found (store-replica.h).
 * mark_connected is cp_store_peer_connect() (cp/store-peers.h) without
 * meta or address: the same statement, so there is one fenced connect.
 *
 * Return 1 when the UPDATE landed, 0 when it was fenced off (stale, or no
 * such peer in that account), negative on error. */
int cp_store_peer_mark_connected(cp_store *s, const char *account_id, const char *peer_id,
                                 int64_t token, cp_error *reterr);
int cp_store_peer_mark_disconnected(cp_store *s, const char *account_id, const char *peer_id,
                                    int64_t token, cp_error *reterr);

/* The replica id fenced connects record as the session owner (copied;
 * NULL or "" = none). Set once, before the store is shared between
 * threads. */
void cp_store_set_replica_id(cp_store *s, const char *replica_id);

/* The current status columns of one peer, for callers and tests. */
typedef struct cp_store_peer_status {
        bool connected;
        bool login_expired;
        bool requires_approval;
        int64_t session_started_at;     /* the session token, 0 = none */
        int64_t last_seen_unix_ns;      /* 0 when NULL */
        char replica_id[CP_STORE_REPLICA_ID_MAX + 1];   /* the owner; "" = none */
} cp_store_peer_status;

/* Returns 0 and fills *ret, -ENOENT when the peer is not in the account. */
int cp_store_peer_get_status(cp_store *s, const char *account_id, const char *peer_id,
                             cp_store_peer_status *ret, cp_error *reterr);

/* ---- accounts (store-account.c) ------------------------------------------
 * Creates an account the way NetBird creates one: a random /16 inside
 * 100.64.0.0/10, serial 0, default settings (login expiration on, 24 h),
 * the "All" group and the "Default" All->All accept policy, an owner user,
 * a personal access token for that user and a reusable setup key. All in
 * one transaction: either everything exists afterwards or nothing does.
 *
 * The secrets are returned in plain text once and stored only hashed. */
typedef struct cp_store_account_spec {
        const char *name;               /* owner user's name, e.g. "admin" */
        const char *domain;             /* account domain, may be NULL */
        const char *dns_domain;         /* account override of the FQDN suffix; NULL or ""
                                         * = the server's --dns-domain applies */
        const char *setup_key_name;     /* NULL = "Default key" */
        int64_t setup_key_ttl_s;        /* 0 = never expires */
        bool only_if_none;              /* create only when no account exists yet;
                                         * concurrent callers serialise on an advisory
                                         * lock and all but one get -EEXIST */
        /* An account made by an IdP sign-in (cp_store_tx_account_create):
         * the owner is this existing IdP user id rather than a new id; no
         * token, no setup key, non_deletable off, and only the
         * account.create event (NetBird's newAccount). NULL = bootstrap. */
        const char *owner_user_id;
} cp_store_account_spec;

typedef struct cp_store_account_created {
        char account_id[32];
        char user_id[32];
        char setup_key_id[32];
        char setup_key[40];             /* plain text, e.g. 36-char UUID form */
        char pat_id[32];
        char admin_token[48];           /* plain text nbp_… token */
        char network_cidr[24];          /* e.g. 100.77.0.0/16 */
} cp_store_account_created;

int cp_store_account_create(cp_store *s, const cp_store_account_spec *spec,
                            cp_store_account_created *ret, cp_error *reterr);

/* The same inside the caller's transaction (cp/store-tx.h); spec's
 * only_if_none is ignored (take cp_store_tx_lock_accounts() and look
 * first). With owner_user_id set, ret's user_id, setup_key*, pat_id and
 * admin_token stay empty. */
struct cp_store_tx;
int cp_store_tx_account_create(struct cp_store_tx *tx, const cp_store_account_spec *spec,
                               cp_store_account_created *ret, cp_error *reterr);
/* Takes the transaction-scoped advisory lock that serialises account
 * creation on every replica (the one only_if_none takes): after it, a
 * read sees every account committed before. */
int cp_store_tx_lock_accounts(struct cp_store_tx *tx, cp_error *reterr);
/* Writes one activity event (NetBird's numeric code; meta a JSON object
 * text, NULL = {}) in the caller's transaction: the one writer the REST
 * API and identity provisioning share. */
int cp_store_tx_event(struct cp_store_tx *tx, int activity, const char *initiator_id, const char *target_id,
                      const char *account_id, const char *meta_json, cp_error *reterr);

/* Appends the created account as shell-sourceable lines, in this order:
 * ACCOUNT_ID=, USER_ID=, SETUP_KEY=, ADMIN_TOKEN=, NETWORK=. Values that
 * are not plain ids, keys or CIDRs are single-quoted. What
 * `netbird-mgmt bootstrap` and `netbird-cp-admin account create` print. */
void cp_store_account_env(const cp_store_account_created *a, struct cp_strbuf *out);
/* One KEY=value line quoted the same way. */
void cp_store_env_line(struct cp_strbuf *out, const char *name, const char *value);

/* Number of accounts; used by bootstrap to stay idempotent. */
int cp_store_account_count(cp_store *s, int64_t *ret, cp_error *reterr);

/* ---- server key pair (store-serverkey.c) -------------------------------
 * The server's WireGuard key pair, which agents seal their requests to
 * (GetServerKey hands out the public half). Every replica must hold the
 * same pair, so it lives in the database: the public key in clear, the
 * private key AES-256-GCM-encrypted with the DataStoreEncryptionKey
 * (cp/crypto-aead.h), which all replicas share.
 *
 * get_or_create reads the pair; when there is none yet it generates one
 * and inserts it with ON CONFLICT DO NOTHING, then reads again, so
 * replicas starting together all end up with the first inserted pair.
 * After decrypting it checks that the private key yields the stored
 * public key.
 *
 * data_key is the raw 32-byte DataStoreEncryptionKey. On success ret_priv
 * and ret_pub are filled; ret_priv is a secret the caller keeps for the
 * process lifetime and wipes with cp_explicit_bzero when done. Nothing is
 * written to them on failure. Errors:
 *   -EKEYREJECTED  the stored private key does not decrypt with data_key:
 *                  the DataStoreEncryptionKey differs from the one the key
 *                  was stored with (reterr says so, with a hint)
 *   -EBADMSG       the stored row is malformed or its halves do not match
 *   others         as for every store call (-ECONNRESET, -EIO, ...) */
int cp_store_server_key_get_or_create(cp_store *s, const uint8_t data_key[32],
                                      uint8_t ret_priv[32], uint8_t ret_pub[32], cp_error *reterr);

/* ---- server key rotation (store-serverkey.c, migration 0004) --------------
 * A rotation replaces the pair and keeps the one it replaced as the
 * previous key until a grace period ends (by the database clock), so
 * requests sealed to it still open on every replica meanwhile. generation
 * counts rotations (1 for a key never rotated). */

/* What a replica holds: the current pair and, inside its grace period,
 * the previous one. Secrets: the caller wipes the struct
 * (cp_explicit_bzero) when done. */
typedef struct cp_store_server_keys {
        uint8_t priv[32];
        uint8_t pub[32];
        bool has_previous;
        uint8_t prev_priv[32];
        uint8_t prev_pub[32];
        int64_t generation;
} cp_store_server_keys;

/* Like cp_store_server_key_get_or_create (same errors, creates the row
 * when there is none) but returns the previous pair too. Both pairs are
 * decrypted and checked. Nothing is written to *ret on failure. */
int cp_store_server_keys_load(cp_store *s, const uint8_t data_key[32], cp_store_server_keys *ret,
                              cp_error *reterr);

/* The public state of the row, for operators (no secret, no data key). */
typedef struct cp_store_server_key_info {
        char public_key[48];
        int64_t generation;
        int64_t created_unix_ns;
        int64_t rotated_unix_ns;                /* 0: never rotated */
        char previous_public_key[48];           /* "" when there is none */
        int64_t previous_expires_unix_ns;       /* 0 when there is none */
        bool previous_valid;                    /* still inside its grace period */
} cp_store_server_key_info;

/* -ENOENT when no replica has created the key yet. */
int cp_store_server_key_info_get(cp_store *s, cp_store_server_key_info *ret, cp_error *reterr);

/* Rotates in one transaction: locks the row, checks that data_key opens
 * the current private key (-EKEYREJECTED otherwise: a key sealed with
 * the wrong DataStoreEncryptionKey would stop every replica), refuses
 * with -EBUSY while an earlier previous key is still inside its grace
 * period unless force (rotating again would drop it at once), then makes
 * a new pair, moves the current one to previous with grace_s seconds to
 * live (0: dropped at once) and bumps generation. -ENOENT when there is
 * no key yet. On success *ret (may be NULL) describes the new state. */
int cp_store_server_key_rotate(cp_store *s, const uint8_t data_key[32], int64_t grace_s, bool force,
                               cp_store_server_key_info *ret, cp_error *reterr);
