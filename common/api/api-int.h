/*
 * api-int.h: what the API's resource files share; not exported.
 *
 * A resource file (api-groups.c, api-peers.c, ...) defines a route table
 * (method, path pattern, permission module and operation, handler) and
 * its handlers. The dispatcher (api.c) matches the route, authenticates,
 * opens the transaction, checks the permission, locks the account row for
 * writes, runs the handler, bumps the serial if the handler said the
 * change alters maps, commits and announces.
 *
 * A handler returns 0 after putting its response in c (api_reply_*), or
 * API_FAIL after api_error() (any status) — then everything it wrote is
 * rolled back. Handlers never commit.
 *
 * SQL: every statement is parameterised ($1..$n) and scoped by
 * c->account_id. Most reads let PostgreSQL build the JSON
 * (json_build_object / json_agg), so the JSON shape sits next to the
 * columns it reads.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/api.h"
#include "cp/base.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"
#include "cp/util.h"

#include <inttypes.h>

#define API_FAIL (-1)
#define API_MAX_PARAMS 4
#define API_MAX_QVALS 8

/* NetBird's permission modules (management/server/permissions/modules). */
typedef enum api_module {
        API_MOD_PUBLIC,         /* no authentication at all */
        API_MOD_SELF,           /* any authenticated user; the handler checks the rest */
        API_MOD_ACCOUNTS,
        API_MOD_SETTINGS,
        API_MOD_USERS,
        API_MOD_PATS,
        API_MOD_PEERS,
        API_MOD_SETUP_KEYS,
        API_MOD_GROUPS,
        API_MOD_POLICIES,
        API_MOD_ROUTES,
        API_MOD_DNS,
        API_MOD_NAMESERVERS,
        API_MOD_EVENTS,
        API_MOD_NETWORKS,
        API_MOD_SERVICES,       /* the reverse proxy */
        API_MOD_REMOTE_JOBS,    /* /api/peers/{id}/jobs (api-unserved.c) */
        API_MOD_MSP,            /* /api/integrations/msp (api-msp.c): any authenticated user, the
                                 * handler checks the rest; ?account= does not switch accounts */
} api_module;

typedef enum api_op {
        API_READ,
        API_CREATE,
        API_UPDATE,
        API_DELETE,
} api_op;

typedef struct api_ctx api_ctx;
typedef int (*api_handler)(api_ctx *c);

typedef struct api_route {
        const char *method;     /* "GET", "POST", "PUT", "DELETE" */
        const char *pattern;    /* "/api/groups/{groupId}": {x} matches one segment */
        api_module module;
        api_op op;
        api_handler fn;
} api_route;

/* What the peers routes keep between requests (api-peers.c): recent
 * network-map snapshots and rendered peer lists. Thread-safe. */
typedef struct api_peer_caches api_peer_caches;
api_peer_caches *api_peer_caches_new(void);
/* Accepts NULL; returns NULL. */
api_peer_caches *api_peer_caches_free(api_peer_caches *pc);

struct cp_api {
        cp_store *store;
        char *dns_domain;
        char *version;
        cp_api_announce_fn announce;
        void *announce_userdata;
        struct cp_netmap_account *(*snapshot_peek)(const char *account_id, int64_t serial, void *userdata);
        void *snapshot_userdata;
        api_peer_caches *peer_caches;
        cp_jwt *jwt;                    /* borrowed; NULL = no IdP */
        cp_identity_options identity;   /* single_account_domain owned (a copy) */
        struct cp_geo *geo;             /* borrowed; NULL = no geo databases */
        /* The reverse proxy (cp_api_options). */
        void (*proxy_announce)(int64_t seq, void *userdata);
        void (*proxy_token_revoked)(const char *token_id, void *userdata);
        void *proxy_announce_userdata;
        uint8_t data_key[32];           /* DataStoreEncryptionKey, when has_data_key */
        bool has_data_key;
        void (*proxy_callback)(const char *query, const char *remote, int *ret_status, char **ret_location,
                               char **ret_body, void *userdata);
        void *proxy_callback_userdata;
        /* The DNS server tenant domain checks ask (api-msp.c): IPv4
         * address and port in network byte order; port 0 = the system
         * resolver. */
        uint32_t msp_dns_addr;
        uint16_t msp_dns_port;
        struct cp_ratelimit *rest_token_limit;  /* borrowed; NULL = none */
        struct cp_ratelimit *rest_addr_limit;   /* borrowed; NULL = none */
};

struct api_ctx {
        cp_api *api;
        const cp_api_request *req;
        const api_route *route;
        cp_store_tx *tx;

        /* Path parameters in pattern order, percent-decoded. */
        char *param[API_MAX_PARAMS];
        int nparam;
        /* Decoded query values handed out by api_query(), freed with c. */
        char *qval[API_MAX_QVALS];
        int nqval;

        /* Who is calling (filled by authentication). */
        char account_id[64];
        char user_id[256];              /* IdP user ids can be long */
        char role[16];                  /* owner, admin, user, auditor, network_admin, billing_admin */
        bool service_user;
        char token_id[64];              /* the PAT used, "" for a trusted caller */
        /* Acting inside an MSP tenant (?account=, api_msp_enter()): the
         * caller's own account and role there; account_id and role are
         * then the tenant's and the role the tenant mapping gives. ""
         * when not acting. */
        char home_account_id[64];
        char home_role[16];
        const char *acting_param;       /* the ?account= value (lives as long as c), NULL = none */

        /* The JSON body, parsed on first use by api_body(). */
        json_t *body;
        bool body_parsed;

        /* The response. */
        int status;
        cp_strbuf out;
        bool replied;

        /* The error, when a handler or the dispatcher fails. */
        int err_status;
        char err_message[512];
        char err_detail[512];           /* internal reason for logs (5xx) */
        bool retryable;                 /* failed on a deadlock or serialization
                                         * failure: the whole request may run again */
        int64_t retry_after_ms;         /* a 429 of a rate limit (limited names it) */
        const char *limited;
        bool rate_taken;                /* the caller's rest_token taken (once per
                                         * request, not per deadlock retry) */

        /* Set by api_changed(): bump the serial before commit. */
        bool changed;
        int64_t serial;

        /* The reverse proxy: the highest proxy_mapping_changes seq this
         * request wrote (0 none) and a proxy token it revoked (""), for
         * the hooks called after commit. */
        int64_t proxy_seq;
        char revoked_token[64];
        /* An account deleted by this request (the account's own delete, or
         * an MSP's tenant): announced after the commit at this serial so
         * every replica ends its streams at once. */
        char gone_account[64];
        int64_t gone_serial;
};

/* ---- timestamps in SQL-built JSON ---------------------------------------------------- */

/* A timestamptz expression as Go's time.Time encodes it: RFC 3339 in UTC,
 * trailing zeros of the fraction dropped; NULL stays NULL. */
#define API_TS_JSON(e)                                                                                      \
        "regexp_replace(to_char((" e ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"          \
        " '\\.?0+Z$', 'Z')"
/* The same with NULL as Go's zero time. */
#define API_TS_OR_ZERO_JSON(e) "COALESCE(" API_TS_JSON(e) ", '0001-01-01T00:00:00Z')"

/* ---- errors and replies (api-util.c) ------------------------------------------ */

/* Sets the error response {"message": message, "code": status}; returns
 * API_FAIL. The message is lower-cased, ids and names included, as
 * NetBird's error writer (util.WriteError) does. */
int api_error(api_ctx *c, int status, const char *fmt, ...) _printf_(3, 4);
/* The same with the text as given: NetBird's handlers that write their
 * own message (util.WriteErrorResponse), e.g. a group still in use. */
int api_error_verbatim(api_ctx *c, int status, const char *fmt, ...) _printf_(3, 4);
/* 500 "internal server error" with an internal detail for the log line. */
int api_internal(api_ctx *c, const char *what, const cp_error *err);
/* 400 "couldn't parse JSON request" (NetBird's text for any bad body). */
int api_bad_json(api_ctx *c);

/* Replies with a JSON text (copied); status is usually 200. */
int api_reply_text(api_ctx *c, int status, const char *json, size_t len);
/* Replies with a jansson value (not stolen). */
int api_reply_json(api_ctx *c, int status, const json_t *v);
/* Replies 200 "{}": what NetBird's DELETE handlers answer. */
int api_reply_empty_object(api_ctx *c);

/* ---- SQL (api-util.c) ------------------------------------------------------------ */

/* Runs one statement in the request's transaction. On failure it sets a
 * 500 response (with the store's message as detail) and returns API_FAIL;
 * use api_sql_try() to handle specific errors yourself. */
int api_sql(api_ctx *c, const char *sql, int n, const char *const *params, cp_store_rows **ret);
/* Like api_sql() but returns the store's negative errno (-EEXIST, -ENOENT,
 * -EINVAL, ...) with err filled and no response set. After a failure the
 * transaction is aborted: the handler must fail (api_error) next. */
int api_sql_try(api_ctx *c, const char *sql, int n, const char *const *params, cp_store_rows **ret,
                cp_error *err);
/* Runs sql, which must return at most one row with one JSON text column,
 * and replies with it (status), setting *found. No row or a NULL value:
 * returns 0 with *found = false and no reply, so the handler answers
 * 404 with its own message. */
int api_sql_reply(api_ctx *c, int status, const char *sql, int n, const char *const *params, bool *found);
/* The same for JSON holding personal data wrapped with CP_PII_SQL
 * (cp/crypto-pii.h): the markers are opened before the reply. */
int api_sql_reply_pii(api_ctx *c, int status, const char *sql, int n, const char *const *params, bool *found);

/* Replies 200 with the JSON text sql returns for $1 = the caller's
 * account ("[]" when it returns no row). */
int api_reply_list(api_ctx *c, const char *sql);
/* Replies 200 with the JSON sql returns for ($1 account, $2 id), or 404
 * "<noun>: <id> not found" (NetBird's not-found text) when it is none. */
int api_reply_one(api_ctx *c, const char *sql, const char *id, const char *noun);

/* The request's account needs new maps: the dispatcher increments
 * accounts.network_serial before commit and announces it after. */
void api_changed(api_ctx *c);

/* Writes an activity event (events table) in the transaction: NetBird's
 * numeric activity code, the target id and a JSON object of meta (NULL
 * = {}); the initiator is the calling user. */
int api_event(api_ctx *c, int activity, const char *target_id, const char *meta_json);
/* The same with a meta object of string members: key, value pairs ended
 * by NULL (a NULL value is ""), e.g. api_event_kv(c, act, id, "name", n, NULL). */
int api_event_kv(api_ctx *c, int activity, const char *target_id, ...) __attribute__((sentinel));

/* The first id of pgarray (a PostgreSQL array literal), in its order,
 * that is not a group of the caller's account, or with all_is_bad the
 * account's "All" group: returns 1 with the id in bad and *is_all (may be
 * NULL) telling which; 0 when every id is fine; API_FAIL on a database
 * error. The callers word NetBird's messages, which differ per resource. */
int api_find_bad_group(api_ctx *c, const char *pgarray, bool all_is_bad, char *bad, size_t badsz, bool *is_all);

/* ---- request input (api-util.c) --------------------------------------------------- */

/* The decoded query parameter, or NULL (first occurrence). The returned
 * string lives as long as c. */
const char *api_query(api_ctx *c, const char *name);
/* The JSON body as an object, parsed once. NULL after setting 400
 * "couldn't parse JSON request" when missing, invalid or not an object. */
json_t *api_body(api_ctx *c);

/* Typed fields of a JSON object. Each returns 1 when present (and sets
 * *ret), 0 when absent or null (ret untouched), or API_FAIL after setting
 * 400 "couldn't parse JSON request" for a value of the wrong type (what
 * NetBird's JSON decoder does). */
int api_field_str(api_ctx *c, json_t *obj, const char *key, const char **ret);
int api_field_bool(api_ctx *c, json_t *obj, const char *key, bool *ret);
/* An integer (a JSON number without fraction) in [min, max]; out of range
 * is 422 "<key> must be between min and max". */
int api_field_int(api_ctx *c, json_t *obj, const char *key, int64_t min, int64_t max, int64_t *ret);
/* An array of strings, appended to *pgarray as a PostgreSQL array literal
 * ({"a","b"}); *count gets its length. */
int api_field_strarr(api_ctx *c, json_t *obj, const char *key, cp_strbuf *pgarray, size_t *count);
/* An array (any element type) or object, borrowed from obj. */
int api_field_array(api_ctx *c, json_t *obj, const char *key, json_t **ret);
int api_field_object(api_ctx *c, json_t *obj, const char *key, json_t **ret);

/* PostgreSQL array literals: start with "{", add quoted elements, end "}". */
void api_pgarray_begin(cp_strbuf *sb);
void api_pgarray_add(cp_strbuf *sb, const char *elem);
void api_pgarray_end(cp_strbuf *sb);

/* ---- policies' source posture checks (api-posture.c) ----------------------------------- */

/* 422 "posture checks: <id> not found" for the first id of ids (a JSON
 * array of strings, NULL = none) that is not a posture check of the
 * caller's account. */
int api_posture_ids_check(api_ctx *c, const json_t *ids);
/* Sets policies.source_posture_checks of policy_id to ids (NULL = none). */
int api_posture_ids_store(api_ctx *c, const char *policy_id, const json_t *ids);

/* ---- helpers shared by routes and DNS (api-routes.c) ------------------------------------ */

/* NetBird's group list check (validateGroups), its messages lower-cased
 * as NetBird sends them: 422 "the list of group ids should not be empty",
 * "group id should not be empty string" or "group id <id> not found" for
 * the first bad element of pgarray (a PostgreSQL array literal of n ids). */
int api_check_groups(api_ctx *c, const char *pgarray, size_t n);
/* IDNA ToASCII as NetBird's domain package does it (punycode for labels
 * that are not ASCII, "xn--" labels decoded and re-encoded, then lower
 * case) into out. Returns 0, or -1 with a reason in err (e.g. "idna:
 * invalid label ..."). */
int api_domain_to_ascii(const char *in, cp_strbuf *out, cp_strbuf *err);
/* Whether an ASCII domain matches NetBird's domain syntax (labels of
 * letters, digits, '-', '_', an optional "*." in front). */
bool api_domain_valid(const char *ascii);
/* An IP address as Go's netip prints it (RFC 5952 for IPv6,
 * "::ffff:a.b.c.d" for mapped IPv4) into out (64 bytes); -1 when in is
 * not a plain IPv4 or IPv6 address (zones and leading zeros refused). */
int api_ip_canonical(const char *in, char out[64]);
/* Characters (code points) of a UTF-8 string, as Go's utf8.RuneCountInString. */
size_t api_utf8_count(const char *s);
/* s[0..len) quoted as Go's %q quotes it for ASCII (\" \\ \xNN), into sb. */
void api_go_quote(cp_strbuf *sb, const char *s, size_t len);

/* ---- custom DNS zones (api-zones.c) ---------------------------------------------------- */

/* NetBird's settings check: a new, non-empty peer DNS domain (new_domain
 * differs from old_domain) may not be the domain of one of the account's
 * zones: 422 "peer DNS domain <d> conflicts with existing custom DNS zone". */
int api_zones_check_dns_domain(api_ctx *c, const char *old_domain, const char *new_domain);

/* ---- permissions (api.c) ----------------------------------------------------------- */

/* Whether the caller's role allows op on module (NetBird's role tables;
 * service users may read everything). */
bool api_allowed(const api_ctx *c, api_module module, api_op op);
/* Owner or admin (NetBird's "admin role required" checks). */
bool api_is_admin(const api_ctx *c);
/* A regular user ("user" role, not a service user): sees only their own
 * peers, and nothing when the account blocks regular users' view. */
bool api_is_regular_user(const api_ctx *c);

/* ---- MSP tenants (api-msp.c) ----------------------------------------------------------- */

/* ?account=<tenant id> on a route: the authenticated caller (c->account_id
 * their MSP) enters the tenant with the most privileged role the tenant's
 * groups mapping gives their MSP groups. 403 "permission denied" for an
 * unknown tenant, another MSP's tenant, no mapping, an invited tenant or
 * a disabled MSP alike. Every event the request writes afterwards
 * records the MSP account (events.initiator_account_id). */
int api_msp_enter(api_ctx *c, const char *tenant_id);
/* Whether /users/current reports the "tenants" module allowed: an owner
 * or admin of an MSP account in its own account (not acting). */
int api_msp_tenants_allowed(api_ctx *c, bool *ret);

/* ---- resources: route tables, each ended by { NULL } --------------------------------- */

extern const api_route api_accounts_routes[];
extern const api_route api_users_routes[];
extern const api_route api_peers_routes[];
extern const api_route api_setup_keys_routes[];
extern const api_route api_groups_routes[];
extern const api_route api_policies_routes[];
extern const api_route api_routes_routes[];
extern const api_route api_dns_routes[];
extern const api_route api_events_routes[];
extern const api_route api_instance_routes[];
extern const api_route api_zones_routes[];
extern const api_route api_networks_routes[];
/* Lists of what this server does not hold yet, answered empty (api-unserved.c). */
extern const api_route api_locations_routes[];
extern const api_route api_unserved_routes[];
extern const api_route api_posture_routes[];
/* The reverse proxy (api-services.c, api-rproxy.c). */
extern const api_route api_services_routes[];
extern const api_route api_rproxy_routes[];
/* MSP tenants (api-msp.c). */
extern const api_route api_msp_routes[];
