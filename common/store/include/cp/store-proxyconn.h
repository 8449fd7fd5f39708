/*
 * cp/store-proxyconn.h: what the ProxyService's connections need from the
 * store (migration 0008): proxy access token lookups, the proxies rows of
 * connected proxies, and the reads behind the mapping streams (the
 * snapshot in keyset pages, the change log after a seq).
 *
 * Every function borrows one pooled connection for one short transaction
 * (cp/store-tx.h) and is thread-safe; they run on the management
 * server's workers, never on the gRPC CQ thread. Errors are cp_store's
 * negative errno values with reterr filled. Nothing logs and no secret
 * is ever passed in plain text: tokens are looked up by their
 * base64(SHA-256).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store-tx.h"
#include "cp/store.h"

/* A proxy access token row, as the authentication needs it. */
typedef struct cp_store_proxy_token {
        char id[65];
        char account_id[65];            /* "" = management-wide */
        bool revoked;
        bool expired;                   /* expires_at <= now() in the database's clock */
        bool touch_due;                 /* last_used NULL or older than a minute */
} cp_store_proxy_token;

/* The token stored under hashed (base64(SHA-256(token))): 0 and *ret, or
 * -ENOENT. */
int cp_store_proxy_token_by_hash(cp_store *s, const char *hashed, cp_store_proxy_token *ret, cp_error *reterr);
/* The token with id: 0 and *ret, or -ENOENT (deleted). */
int cp_store_proxy_token_by_id(cp_store *s, const char *id, cp_store_proxy_token *ret, cp_error *reterr);
/* last_used = now(), only when it is NULL or older than a minute (so at
 * most one write a minute per token whatever the number of calls). */
int cp_store_proxy_token_touch(cp_store *s, const char *id, cp_error *reterr);

/* A capability the proxy claimed: absent (not sent), false or true. */
typedef enum cp_store_tristate {
        CP_STORE_UNSET = -1,
        CP_STORE_FALSE = 0,
        CP_STORE_TRUE = 1,
} cp_store_tristate;

typedef struct cp_store_proxy_caps {
        cp_store_tristate supports_custom_ports;
        cp_store_tristate require_subdomain;
        cp_store_tristate supports_crowdsec;
        cp_store_tristate private_;
        cp_store_tristate supports_private_service;
} cp_store_proxy_caps;

/* A connection of a proxy: the proxies row it writes. Strings borrowed. */
typedef struct cp_store_proxy_conn {
        const char *proxy_id;
        const char *session_id;
        const char *cluster;
        const char *ip;
        const char *account_id;         /* NULL: management-wide token */
        const char *token_id;
        const char *replica_id;
        const char *version;
        cp_store_proxy_caps caps;
} cp_store_proxy_conn;

/* Upserts the proxies row of c as connected, owned by c->session_id (a
 * newer connection of the same proxy, anywhere, takes the row over). */
int cp_store_proxy_connect(cp_store *s, const cp_store_proxy_conn *c, cp_error *reterr);
/* Marks the row disconnected, only while session_id still owns it.
 * Returns 1 when written, 0 when another session owns it (or it is gone). */
int cp_store_proxy_disconnect(cp_store *s, const char *proxy_id, const char *session_id, cp_error *reterr);
/* last_seen = now() for the row while session_id owns it; 1 or 0 as above. */
int cp_store_proxy_heartbeat(cp_store *s, const char *proxy_id, const char *session_id, cp_error *reterr);
/* Deletes rows whose last_seen is older than max_age_s; returns how many. */
int cp_store_proxy_reap(cp_store *s, int64_t max_age_s, cp_error *reterr);

/* For an account-scoped proxy: true when cluster is served by a
 * connected proxy of a management-wide token or of another account. */
int cp_store_proxy_cluster_taken(cp_store *s, const char *cluster, const char *account_id, bool *ret,
                                 cp_error *reterr);

/* The highest seq of the change log (0 when empty). */
int cp_store_proxy_changes_max(cp_store *s, int64_t *ret, cp_error *reterr);

/* What rows a proxy may see: its cluster address, its token's account
 * ("" or NULL: every account) and its capabilities (private services
 * need supports_private_service; an L4 service with a listen port, mode
 * other than tls, needs supports_custom_ports sent at all). */
typedef struct cp_store_proxy_scope {
        const char *cluster;
        const char *account_id;
        bool private_ok;
        bool custom_ports_ok;
} cp_store_proxy_scope;

/* Columns of the service rows returned below, in this order. */
enum {
        CP_SVC_ID,
        CP_SVC_ACCOUNT_ID,
        CP_SVC_DOMAIN,
        CP_SVC_MODE,
        CP_SVC_LISTEN_PORT,
        CP_SVC_PASS_HOST_HEADER,
        CP_SVC_REWRITE_REDIRECTS,
        CP_SVC_PRIVATE,
        CP_SVC_TARGETS,
        CP_SVC_AUTH,
        CP_SVC_RESTRICTIONS,
        CP_SVC_SESSION_PUBLIC_KEY,
        _CP_SVC_NCOLS,
};

/* One page of the snapshot: enabled services of the scope with id >
 * after (after NULL or "": from the start), in id order, at most limit
 * rows. *ret (free with cp_store_rows_free) has the CP_SVC_* columns. */
int cp_store_proxy_snapshot_page(cp_store *s, const cp_store_proxy_scope *scope, const char *after, int limit,
                                 cp_store_rows **ret, cp_error *reterr);

/* Columns of the change rows below: the CP_SVC_* columns of the service
 * as it is now (all NULL when it is gone, disabled or moved off the
 * scope's cluster), then these. */
enum {
        CP_CHG_SEQ = _CP_SVC_NCOLS,
        CP_CHG_ACCOUNT_ID,
        CP_CHG_SERVICE_ID,
        CP_CHG_OP,
        CP_CHG_DOMAIN,
        _CP_CHG_NCOLS,
};

/* The change-log rows of the scope's cluster (and account) with seq >
 * after, in seq order, at most limit. The capability filter is the
 * caller's (a REMOVED row always passes). */
int cp_store_proxy_changes_after(cp_store *s, const cp_store_proxy_scope *scope, int64_t after, int limit,
                                 cp_store_rows **ret, cp_error *reterr);
