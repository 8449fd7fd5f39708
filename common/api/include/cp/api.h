/*
 * cp/api.h: NetBird's management REST API (the core of
 * shared/management/http/api/openapi.yml), independent of any HTTP server.
 *
 * A request goes in as plain strings (method, path, query, Authorization,
 * body) and a response comes out (status and JSON body). The caller owns
 * the transport: netbird-mgmt serves it on its HTTP listener from worker
 * threads; the admin CLI calls it in-process as a trusted user.
 *
 * Every request runs in one PostgreSQL transaction: authentication, the
 * permission check, the handler's reads and writes, the activity events
 * and, when the change alters network maps, the account serial increment.
 * A request that fails leaves nothing behind. Writes lock the account row
 * first, so changes to one account are serialised across every replica.
 * After a change that bumped the serial has committed, the announce hook
 * is called with the account and its new serial (netbird-mgmt pushes the
 * new maps to its streams and publishes on the bus).
 *
 * Threads: cp_api_handle() may be called from any number of threads at
 * once; it blocks on PostgreSQL. A cp_api is read-only after cp_api_new().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/identity.h"
#include "cp/jwt.h"
#include "cp/store.h"
#include "cp/strbuf.h"

typedef struct cp_api cp_api;
struct cp_netmap_account;
struct cp_geo;

/* Called after commit, on the thread that handled the request; must not
 * block. */
typedef void (*cp_api_announce_fn)(const char *account_id, int64_t serial, void *userdata);

typedef struct cp_api_options {
        cp_store *store;                /* borrowed; outlives the cp_api */
        const char *dns_domain;         /* the server's --dns-domain (peer FQDNs) */
        const char *version;            /* reported by /api/instance/version */
        cp_api_announce_fn announce;    /* may be NULL */
        void *announce_userdata;
        /* Optional: a look into the process's own cache of account
         * snapshots (netbird-mgmt's Sync path keeps the newest one of
         * every account it holds streams of). Returns a new reference to
         * the snapshot of account_id at serial or newer, or NULL; any
         * thread, must not block. Saves the peers routes a reload right
         * after a change, which the fan-out has just loaded. */
        struct cp_netmap_account *(*snapshot_peek)(const char *account_id, int64_t serial, void *userdata);
        void *snapshot_userdata;
        /* IdP sign-in: the validator (borrowed, may be NULL = no IdP: any
         * non-PAT bearer is "token invalid") and how JWT users map to
         * accounts. */
        cp_jwt *jwt;
        cp_identity_options identity;
        /* Geolocation databases for /api/locations (borrowed, may be
         * NULL = none: the lists are empty). */
        struct cp_geo *geo;
        /* The reverse proxy. After a commit that appended rows to the
         * proxy mapping change log, proxy_announce gets the highest seq
         * the request wrote; after a commit that revoked a proxy access
         * token, proxy_token_revoked gets its id. Both on the request's
         * thread, must not block; may be NULL. */
        void (*proxy_announce)(int64_t seq, void *userdata); void *proxy_announce_userdata;   /* may be NULL */
        void (*proxy_token_revoked)(const char *token_id, void *userdata);                    /* same userdata */
        /* The DataStoreEncryptionKey (32 bytes, copied), which seals the
         * services' session signing keys. NULL: creating a service
         * answers 500. */
        const uint8_t *data_key;
        /* GET /api/reverse-proxy/callback, the end of a reverse proxy's
         * OIDC sign-in: unauthenticated, answered by this function (on
         * the worker that handles the request): a status, and for a
         * redirect *ret_location, else *ret_body (JSON), both malloc'd.
         * NULL = the path is unknown (404). */
        void (*proxy_callback)(const char *query, const char *remote, int *ret_status, char **ret_location,
                               char **ret_body, void *userdata);
        void *proxy_callback_userdata;
        /* The DNS server that MSP tenant domain checks ask (POST
         * /api/integrations/msp/tenants/{id}/dns): "IPv4[:port]" (port 53
         * when absent); NULL or "" = the system resolver. */
        const char *msp_dns_server;
        /* Rate limits (cp/ratelimit.h; borrowed, NULL = none): requests
         * per token (a PAT by its hash before it is looked up, an IdP user
         * by id once signed in) and failed authentications per client
         * address (cp_api_request.remote_ip): an address past that limit
         * is refused before its token is looked at. Both answer 429
         * {"message":"too many requests","code":429} with
         * cp_api_response.retry_after set. */
        struct cp_ratelimit *rest_token_limit;
        struct cp_ratelimit *rest_addr_limit;
} cp_api_options;

int cp_api_new(const cp_api_options *o, cp_api **ret, cp_error *reterr);
/* Parses a DNS server "IPv4[:port]" (cp_api_options.msp_dns_server) into
 * the address and port in network byte order; -EINVAL with a message
 * otherwise. */
int cp_api_parse_dns_server(const char *s, uint32_t *ret_addr, uint16_t *ret_port, cp_error *reterr);
/* Accepts NULL; returns NULL. */
cp_api *cp_api_free(cp_api *api);

typedef struct cp_api_request {
        const char *method;             /* "GET", "POST", "PUT", "DELETE", ... */
        const char *path;               /* as received, percent-encoded, e.g. "/api/peers/x" */
        const char *query;              /* without '?', percent-encoded; NULL = none */
        const char *authorization;      /* the Authorization header; NULL = none */
        const char *body;               /* NULL = none */
        size_t body_len;
        /* A trusted in-process caller (the admin CLI) acts as this user
         * without a token; HTTP callers must leave it NULL. */
        const char *as_user_id;
        /* The client's "address:port" as the HTTP listener saw it, for
         * per-client limits; NULL = unknown. */
        const char *remote;
        /* The client's address without port: the real one behind a
         * trusted proxy (--trusted-proxies). NULL = unknown (no per-address
         * limit). */
        const char *remote_ip;
        /* The Idempotency-Key header (POST /api/integrations/msp/tenants);
         * NULL = none. */
        const char *idempotency_key;
} cp_api_request;

typedef struct cp_api_response {
        int status;                     /* HTTP status */
        cp_strbuf body;                 /* JSON (may be empty for 200 with no body) */
        /* For the caller's log line; never sent. */
        char account_id[64];
        char user_id[64];
        char route[64];                 /* the matched pattern, e.g. "/api/peers/{peerId}" */
        char detail[512];               /* the internal reason of a 5xx, "" otherwise */
        char *location;                 /* a Location header to send (malloc'd), NULL = none */
        /* A 429 from a rate limit: the Retry-After to send (seconds) and
         * the limit's name ("rest_token", "rest_addr"); 0 and "" otherwise. */
        int retry_after;
        char limited[16];
} cp_api_response;

void cp_api_response_init(cp_api_response *resp);
void cp_api_response_release(cp_api_response *resp);

/* Handles one request; always fills resp (errors are responses with
 * NetBird's body {"message": ..., "code": N}). */
void cp_api_handle(cp_api *api, const cp_api_request *req, cp_api_response *resp);

/* True when path is served by the API (starts with "/api/" or is "/api"). */
bool cp_api_owns_path(const char *path);
