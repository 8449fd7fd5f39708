/*
 * cp/store-services.h: NetBird's reverse proxy in the store: services,
 * the mapping change log every proxy stream follows, proxy access tokens
 * and the services' session signing keys (migration 0008).
 *
 * Everything here runs inside a caller's cp_store_tx (cp/store-tx.h), so
 * a change, its change-log rows, its activity events and the serial bump
 * commit or vanish together. Nothing logs; errors are cp_store's negative
 * errno values with reterr filled (see common/store/README.md).
 *
 * The change log (proxy_mapping_changes): every transaction that changes
 * what proxies serve appends one row per affected (service, cluster,
 * domain) with cp_store_tx_proxy_change(). It takes a transaction-level
 * advisory lock on CP_STORE_PROXY_CHANGES_LOCK before the INSERT, so
 * writers are serialised from their first change-log row to their commit:
 * seq numbers become visible in increasing order and a reader that has
 * seen seq N never later finds a committed row below N. Keep the rest of
 * such a transaction short after the first call.
 *
 * Threads: as cp_store_tx (a tx belongs to its thread); the plain
 * functions are thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/crypto-aead.h"
#include "cp/crypto.h"
#include "cp/error.h"
#include "cp/store-tx.h"
#include "cp/store.h"
#include "cp/util.h"

/* The key of pg_advisory_xact_lock taken before every change-log INSERT
 * ("nbproxy" in ASCII). Readers never take it. */
#define CP_STORE_PROXY_CHANGES_LOCK INT64_C(0x6e6270726f7879)

/* ProxyMappingUpdateType of proxy_service.proto. */
enum {
        CP_PROXY_CHANGE_CREATED = 0,
        CP_PROXY_CHANGE_MODIFIED = 1,
        CP_PROXY_CHANGE_REMOVED = 2,
};

/* Appends one change-log row (after taking the advisory lock, a no-op
 * when this transaction already holds it). cluster and domain are the
 * values the change applies to: the old ones for a removal. *ret_seq
 * (may be NULL) gets the row's seq. -EINVAL for an op outside 0..2 or a
 * NULL argument. */
int cp_store_tx_proxy_change(struct cp_store_tx *tx, const char *account_id, const char *service_id, int op,
                             const char *cluster, const char *domain, int64_t *ret_seq, cp_error *reterr);

/* Appends a REMOVED row for every enabled service of account_id (with
 * source_peer: only that peer's ephemeral services), for a caller about
 * to delete them some other way (the account itself, the peer: the
 * foreign keys cascade without telling proxies). *ret_seq (may be NULL)
 * gets the highest seq written, 0 when none. */
int cp_store_tx_proxy_services_removed(struct cp_store_tx *tx, const char *account_id, const char *source_peer,
                                       int64_t *ret_seq, cp_error *reterr);

/* ---- session signing keys ------------------------------------------------------
 * Each service has an Ed25519 key pair that signs its proxy session
 * tokens. Stored: the 32-byte seed sealed with the DataStoreEncryptionKey
 * (cp/crypto-aead.h, like the server key) and the public key as standard
 * base64 (what the proxy gets as Authentication.session_key). */
#define CP_SESSION_PUB_B64_LEN 45       /* 44 characters + NUL */

/* ---- services ---------------------------------------------------------------- */

/* A new row of services. Strings are borrowed; the JSON columns are
 * given as text in the REST API's shapes with secrets already hashed
 * (migration 0008). */
typedef struct cp_store_service_new {
        const char *id;                 /* NULL: a new id (written to ret_id) */
        const char *account_id;
        const char *name;
        const char *domain;
        const char *proxy_cluster;      /* NULL = "" */
        const char *mode;               /* NULL = "http" */
        int listen_port;
        bool port_auto_assigned;
        bool enabled;
        bool terminated;
        bool pass_host_header;
        bool rewrite_redirects;
        bool private_;
        const char *access_groups;      /* PostgreSQL array literal; NULL = {} */
        const char *targets;            /* JSON text; NULL = [] */
        const char *auth;               /* JSON text; NULL = {} */
        const char *restrictions;       /* JSON text; NULL = {} */
        /* An ephemeral service (CreateExpose): the peer that owns it and
         * when it ends (Unix seconds). NULL / 0: a permanent one. */
        const char *source_peer;
        int64_t expires_at_s;
} cp_store_service_new;

/* Inserts svc with a fresh session key pair and, when it is enabled,
 * appends its CREATED change-log row (*ret_seq gets the seq, 0 when none
 * was written; may be NULL). ret_id (may be NULL) gets the id.
 * -EEXIST: the domain is taken (by any account) or the id exists;
 * -ENOENT: the account or source peer does not exist. */
int cp_store_tx_service_create(struct cp_store_tx *tx, const uint8_t data_key[CP_DATA_KEY_LEN],
                               const cp_store_service_new *svc, char ret_id[CP_ID_LEN + 1], int64_t *ret_seq,
                               cp_error *reterr);

/* Deletes a service of account_id and, when it was enabled, appends its
 * REMOVED change-log row (*ret_seq as above). -ENOENT when there is no
 * such service in that account. */
int cp_store_tx_service_delete(struct cp_store_tx *tx, const char *account_id, const char *service_id,
                               int64_t *ret_seq, cp_error *reterr);

/* ---- proxy access tokens --------------------------------------------------------
 * "nbx_" tokens (cp_crypto_token_new with CP_PROXY_TOKEN_PREFIX), stored
 * as base64(SHA-256). account_id NULL: management-wide. */
typedef struct cp_store_proxy_token_created {
        char id[CP_ID_LEN + 1];
        char plain[CP_TOKEN_LEN + 1];   /* shown once; the caller wipes it */
} cp_store_proxy_token_created;

/* Creates a token; expires_in_s 0 = never. -EINVAL for an empty name or
 * a negative expiry. */
int cp_store_tx_proxy_token_create(struct cp_store_tx *tx, const char *account_id, const char *name,
                                   int64_t expires_in_s, const char *created_by,
                                   cp_store_proxy_token_created *ret, cp_error *reterr);

/* Revokes token_id. account_id NULL: only a management-wide token
 * matches; set: only a token of that account. Returns 1 when it was
 * revoked now, 0 when it was already revoked, -ENOENT when no such token
 * (in that scope). */
int cp_store_tx_proxy_token_revoke(struct cp_store_tx *tx, const char *account_id, const char *token_id,
                                   cp_error *reterr);

/* A services row's targets as JSON text with each target's host looked
 * up as NetBird's replaceHostByLookup does, for REST responses and for
 * the ProxyMappings alike: a peer target's host is the peer's address, a
 * host or domain resource's its address or domain, "unknown" when the
 * target is gone; subnet and cluster targets keep theirs. An SQL
 * expression over a services row aliased s. */
#define CP_STORE_SQL_TARGET_HOST(type, expr)                                                                \
        " WHEN '" type "' THEN jsonb_set(t, '{host}', to_jsonb(COALESCE((" expr "), 'unknown')))"
#define CP_STORE_SQL_SERVICE_TARGETS                                                                        \
        "(SELECT COALESCE(jsonb_agg(CASE t->>'target_type'"                                                 \
        CP_STORE_SQL_TARGET_HOST("peer", "SELECT host(p.ip) FROM peers p WHERE p.account_id = s.account_id" \
                                 " AND p.id = t->>'target_id'")                                             \
        CP_STORE_SQL_TARGET_HOST("host", "SELECT host(r.prefix) FROM network_resources r"                   \
                                 " WHERE r.account_id = s.account_id AND r.id = t->>'target_id'")           \
        CP_STORE_SQL_TARGET_HOST("domain", "SELECT NULLIF(r.domain, '') FROM network_resources r"           \
                                 " WHERE r.account_id = s.account_id AND r.id = t->>'target_id'")           \
        " ELSE t END ORDER BY o), '[]') FROM jsonb_array_elements(s.targets) WITH ORDINALITY a(t, o))::text"

/* NetBird's GetServiceIDByTargetID: the first service of account $1 with
 * a target whose target_id is $2 (a peer or a network resource, which
 * then cannot be deleted: 412 "... is in use by proxy <service id>"). A
 * peer's own exposed services do not count: they go with the peer. */
#define CP_STORE_SQL_SERVICE_TARGETING                                                                      \
        "SELECT id FROM services WHERE account_id = $1"                                                     \
        " AND targets @> jsonb_build_array(jsonb_build_object('target_id', $2::text))"                      \
        " AND source_peer IS DISTINCT FROM $2 ORDER BY id LIMIT 1"
