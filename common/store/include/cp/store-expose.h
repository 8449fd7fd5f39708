/*
 * cp/store-expose.h: services a peer exposes itself (the agent's
 * CreateExpose, RenewExpose and StopExpose; NetBird's "netbird expose").
 *
 * Such a service is a row of services with source 'ephemeral', owned by
 * source_peer, targeting that peer, and ending at expires_at unless the
 * peer renews it. Creating, stopping and expiring one write the service
 * row, its proxy change-log row (cp/store-services.h) and the activity
 * event in one transaction.
 *
 * Errors: negative errno values; for the ones the agent passes on, the
 * message in reterr is NetBird's text, verbatim:
 *   -EACCES   permission denied (peer expose off, not in a group, the
 *             service is someone else's or not ephemeral)
 *   -EEXIST   already exists (the peer's domain, a taken domain or port)
 *   -ENOSPC   a precondition failed (the per-peer limit, no free port,
 *             no proxy cluster for the domain)
 *   -ENOENT   not found (no such domain or session, an unknown group)
 *   -ENODEV   no proxy cluster to pick a domain from (NetBird: internal)
 *   others    internal
 *
 * Threads: every function is thread-safe (each borrows a connection).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/crypto-aead.h"
#include "cp/error.h"
#include "cp/store.h"
#include "cp/util.h"

/* NetBird's fixed limits (expose_tracker.go). */
#define CP_EXPOSE_TTL_S 90              /* a session lives 90 s after its last renewal */
#define CP_EXPOSE_MAX_PER_PEER 10
#define CP_EXPOSE_SWEEP_BATCH 100       /* rows one sweep deletes at most */
/* The L4 listen ports handed out when the proxies take no custom ports
 * (NetBird's defaults of NB_PROXY_PORT_MIN/MAX). */
#define CP_EXPOSE_PORT_MIN 10000
#define CP_EXPOSE_PORT_MAX 49151

/* NetBird activity codes of peer-exposed services. */
enum {
        CP_ACTIVITY_PEER_SERVICE_EXPOSED = 111,
        CP_ACTIVITY_PEER_SERVICE_UNEXPOSED = 112,
        CP_ACTIVITY_PEER_SERVICE_EXPOSE_EXPIRED = 113,
};

/* A validated CreateExpose (the agent checked every field). Strings are
 * borrowed. */
typedef struct cp_store_expose_req {
        const char *account_id;
        const char *peer_id;
        const char *name;               /* the generated service name */
        const char *base_domain;        /* the service becomes name.base_domain;
                                         * NULL or "": a random active cluster */
        const char *mode;               /* http, tcp, udp, tls */
        const char *target_protocol;    /* http, https, tcp, udp */
        int port;                       /* the peer's local port, 1..65535 */
        int listen_port;                /* L4: the wanted public port, 0 = any */
        const char *password_hash;      /* argon2id PHC strings, NULL = none */
        const char *pin_hash;
        const char *const *user_groups; /* group names (bearer auth) */
        size_t n_user_groups;
        int64_t ttl_s;
} cp_store_expose_req;

typedef struct cp_store_expose_created {
        char id[CP_ID_LEN + 1];
        char domain[256];
        char cluster[256];
        int listen_port;
        bool port_auto_assigned;
        int64_t seq;                    /* its CREATED change-log row */
} cp_store_expose_created;

/* NetBird's CreateServiceFromPeer after its request validation: the
 * account's peer-expose permission, the domain and its cluster, the group
 * names, then in one transaction (the peer row locked, serialising one
 * peer's creates on every replica) the duplicate, domain, per-peer limit
 * and L4 port checks, the row, its change-log row and the event. */
/* NetBird's validateExposePermission alone (its -EACCES texts), read
 * only: CreateExpose asks before it spends argon2id on the secrets;
 * cp_store_expose_create checks again under its locks. */
int cp_store_expose_permitted(cp_store *s, const char *account_id, const char *peer_id, cp_error *reterr);
int cp_store_expose_create(cp_store *s, const uint8_t data_key[CP_DATA_KEY_LEN], const cp_store_expose_req *req,
                           cp_store_expose_created *ret, cp_error *reterr);

/* Extends the session of domain to now + ttl_s. -ENOENT "service with
 * domain ... not found", or "no active expose session for service ..."
 * when it is not peer_id's ephemeral service in account_id. */
int cp_store_expose_renew(cp_store *s, const char *account_id, const char *peer_id, const char *domain,
                          int64_t ttl_s, cp_error *reterr);

/* Deletes peer_id's ephemeral service at domain with its REMOVED change
 * row (*ret_seq, 0 when the service was disabled) and the event. */
int cp_store_expose_stop(cp_store *s, const char *account_id, const char *peer_id, const char *domain,
                         int64_t *ret_seq, cp_error *reterr);

/* One expired service the sweep deleted. */
typedef struct cp_store_expired_expose {
        char account_id[64];
        char service_id[64];
        char peer_id[64];
        char domain[256];
} cp_store_expired_expose;

/* Deletes up to CP_EXPOSE_SWEEP_BATCH ephemeral services past expires_at,
 * with their REMOVED change rows and events, in one statement: replicas
 * sweeping at once skip each other's rows, so each is deleted (and
 * reported) once. *ret (free()) and *ret_n the deleted ones; *ret_seq the
 * highest change-log seq written (0: none). */
int cp_store_expose_sweep(cp_store *s, cp_store_expired_expose **ret, size_t *ret_n, int64_t *ret_seq,
                          cp_error *reterr);

/* SQL fragment for statements that delete peers: given a CTE named d of
 * deleted peers rows (with id), these CTEs write the REMOVED change rows
 * of the enabled services those peers exposed (the services themselves
 * go by the foreign key's cascade). The number is
 * CP_STORE_PROXY_CHANGES_LOCK in decimal (store-expose.c asserts it).
 * Append it after a comma to the statement's other CTEs. */
#define CP_STORE_SQL_PROXY_LOCK "31070482533939321"
#define CP_STORE_SQL_EXPOSE_GONE(d)                                                                     \
        " xs AS (SELECT s.account_id, s.id, s.proxy_cluster, s.domain FROM services s JOIN " d           \
        " ON s.source_peer = " d ".id WHERE s.enabled),"                                               \
        " xl AS (SELECT pg_advisory_xact_lock(" CP_STORE_SQL_PROXY_LOCK ") AS l WHERE EXISTS (SELECT 1 FROM xs)),"  \
        " xc AS (INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"      \
        " SELECT xs.account_id, xs.id, 2, xs.proxy_cluster, xs.domain FROM xs CROSS JOIN xl"            \
        " ORDER BY xs.id RETURNING seq)"
