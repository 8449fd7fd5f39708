/*
 * cp/store-snapshot.h: everything one account's network maps are computed
 * from, read in one consistent transaction.
 *
 * cp_store_snapshot_load() runs, on one pooled connection,
 *
 *   BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY
 *   one SELECT each from accounts, peers, groups, group_peers, policies,
 *   policy_rules, routes, name_server_groups, dns_zones, dns_records,
 *   networks, network_resources, network_routers, group_resources,
 *   posture_checks, the policies' source_posture_checks and the peers'
 *   posture meta, all scoped to the account
 *   COMMIT
 *
 * so the serial and every row belong to the same database snapshot. Rows
 * are handed to a sink, one callback per row, in table order (account
 * first, then peers, groups, group_peers, policies, rules, routes,
 * nameserver groups, DNS zones, their records, networks, network
 * resources, network routers, group resources); within a table rows come
 * ordered by id (rules by
 * policy id, then id). The store does not know what is built from them
 * (common/netmap feeds its builder; layering: store below netmap).
 *
 * Every pointer in a row is borrowed: valid only during the callback. A
 * callback returning a negative value stops the load, which returns that
 * value. Statements are run with PQexecParams, not from the statement
 * table, so this file adds nothing to it.
 *
 * Threads: like every cp_store call, safe from any thread; the callbacks
 * run on the calling thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

typedef struct cp_store_snap_account {
        const char *id;
        int64_t network_serial;
        const char *network_cidr;               /* accounts.network_net, "100.77.0.0/16" */
        const char *dns_domain;                 /* settings_dns_domain; "" = server default */
        bool lazy_connection_enabled;
        bool routing_peer_dns_resolution_enabled;
        bool login_expiration_enabled;
        int64_t login_expiration_ns;
        const char *const *dns_disabled_groups; /* dns_settings_disabled_management_groups */
        size_t n_dns_disabled_groups;
        int64_t now_unix_ns;                    /* the database clock at the snapshot */
} cp_store_snap_account;

typedef struct cp_store_snap_peer {
        const char *id;
        const char *key;
        const char *ip;                         /* host(ip), no prefix */
        const char *dns_label;
        const char *const *extra_dns_labels;
        size_t n_extra_dns_labels;
        const char *ssh_key;
        const char *wt_version;                 /* meta_wt_version */
        const char *user_id;                    /* "" for setup-key peers */
        bool ssh_enabled;
        bool server_ssh_allowed;                /* meta_flags.ServerSSHAllowed */
        bool cap_source_prefixes;               /* PeerCapability 1 in meta_capabilities */
        bool login_expiration_enabled;
        int64_t last_login_unix_ns;             /* 0 = never */
        bool status_login_expired;              /* peer_status_login_expired */
        bool requires_approval;                 /* peer_status_requires_approval */
} cp_store_snap_peer;

typedef struct cp_store_snap_rule {
        const char *id;
        const char *policy_id;
        bool enabled;
        const char *action;                     /* "accept" | "drop" */
        const char *protocol;                   /* "all" | "tcp" | "udp" | "icmp" | "netbird-ssh" */
        bool bidirectional;
        const char *const *sources;
        size_t n_sources;
        const char *const *destinations;
        size_t n_destinations;
        const char *source_resource_id;         /* NULL when unset */
        const char *source_resource_type;
        const char *destination_resource_id;
        const char *destination_resource_type;
        const int32_t *ports;
        size_t n_ports;
        const int32_t *port_ranges;             /* inclusive start/end pairs */
        size_t n_port_ranges;                   /* pairs */
} cp_store_snap_rule;

typedef struct cp_store_snap_route {
        const char *id;
        const char *network;                    /* CIDR, or NULL for a domain route */
        int network_type;
        const char *net_id;
        const char *peer;                       /* NULL when routed by peer_groups */
        const char *const *peer_groups;
        size_t n_peer_groups;
        const char *const *groups;
        size_t n_groups;
        const char *const *access_control_groups;
        size_t n_access_control_groups;
        const char *const *domains;
        size_t n_domains;
        int metric;
        bool masquerade;
        bool enabled;
        bool keep_route;
        bool skip_auto_apply;
} cp_store_snap_route;

typedef struct cp_store_snap_nameserver {
        const char *ip;
        const char *ns_type;                    /* "udp" */
        int port;
} cp_store_snap_nameserver;

typedef struct cp_store_snap_nsgroup {
        const char *id;
        bool enabled;
        bool primary;
        bool search_domains_enabled;
        const cp_store_snap_nameserver *nameservers;
        size_t n_nameservers;
        const char *const *groups;
        size_t n_groups;
        const char *const *domains;
        size_t n_domains;
} cp_store_snap_nsgroup;

/* Custom DNS zones (dns_zones) and their records (dns_records); zones
 * come by id, records by zone id then id, after the nameserver groups. */
typedef struct cp_store_snap_zone {
        const char *id;
        const char *domain;
        bool enabled;
        bool enable_search_domain;
        const char *const *groups;              /* distribution_groups */
        size_t n_groups;
} cp_store_snap_zone;

typedef struct cp_store_snap_zone_record {
        const char *id;
        const char *zone_id;
        const char *name;
        const char *type;                       /* "A" | "AAAA" | "CNAME" */
        const char *content;
        int64_t ttl;
} cp_store_snap_zone_record;
typedef struct cp_store_snap_network_resource {
        const char *id;
        const char *network_id;
        const char *name;
        const char *type;                       /* "host" | "subnet" | "domain" */
        const char *prefix;                     /* CIDR text, NULL for a domain resource */
        const char *domain;                     /* "" unless type domain */
        bool enabled;
} cp_store_snap_network_resource;

typedef struct cp_store_snap_network_router {
        const char *id;
        const char *network_id;
        const char *peer;                       /* NULL when routed by peer_groups */
        const char *const *peer_groups;
        size_t n_peer_groups;
        int metric;
        bool masquerade;
        bool enabled;
} cp_store_snap_network_router;

/* What posture checks read of a peer (loaded only when the account has
 * posture checks). */
typedef struct cp_store_snap_posture_peer {
        const char *id;
        const char *wt_version;
        const char *go_os;                      /* meta_go_os */
        const char *os_version;
        const char *kernel_version;
        const char *const *net_addrs;           /* meta_network_addresses' NetIP prefixes */
        size_t n_net_addrs;
        const char *const *running;             /* meta_files with ProcessIsRunning: their paths */
        size_t n_running;
        const char *connection_ip;              /* host(location_connection_ip), "" when NULL */
        const char *country_code;               /* location_country_code */
        const char *city_name;                  /* location_city_name */
} cp_store_snap_posture_peer;

/* The callbacks; any may be NULL (those rows are skipped). reterr is the
 * load's own, for the callback to explain a failure. */
typedef struct cp_store_snapshot_sink {
        int (*account)(void *userdata, const cp_store_snap_account *a, cp_error *reterr);
        int (*peer)(void *userdata, const cp_store_snap_peer *p, cp_error *reterr);
        int (*group)(void *userdata, const char *id, const char *name, cp_error *reterr);
        int (*group_peer)(void *userdata, const char *group_id, const char *peer_id, cp_error *reterr);
        int (*policy)(void *userdata, const char *id, bool enabled, cp_error *reterr);
        int (*rule)(void *userdata, const cp_store_snap_rule *r, cp_error *reterr);
        int (*route)(void *userdata, const cp_store_snap_route *r, cp_error *reterr);
        int (*nsgroup)(void *userdata, const cp_store_snap_nsgroup *g, cp_error *reterr);
        int (*zone)(void *userdata, const cp_store_snap_zone *z, cp_error *reterr);
        int (*zone_record)(void *userdata, const cp_store_snap_zone_record *r, cp_error *reterr);
        int (*network)(void *userdata, const char *id, const char *name, cp_error *reterr);
        int (*network_resource)(void *userdata, const cp_store_snap_network_resource *r, cp_error *reterr);
        int (*network_router)(void *userdata, const cp_store_snap_network_router *r, cp_error *reterr);
        /* group_resources rows, by group id then resource id */
        int (*group_resource)(void *userdata, const char *group_id, const char *resource_id, cp_error *reterr);
        /* After the nameserver groups: posture checks (id, the checks
         * JSON text), then policies with source_posture_checks, then
         * every peer's posture meta (only when a policy of the account
         * names posture checks). */
        int (*posture_check)(void *userdata, const char *id, const char *checks_json, cp_error *reterr);
        int (*policy_posture)(void *userdata, const char *policy_id, const char *const *ids, size_t n,
                              cp_error *reterr);
        int (*posture_peer)(void *userdata, const cp_store_snap_posture_peer *p, cp_error *reterr);
} cp_store_snapshot_sink;

/* Loads account_id into sink. Returns 0, -ENOENT when the account does
 * not exist (no callback ran), -EBADMSG when a stored array or JSON value
 * cannot be read, a callback's negative value, or a store error
 * (cp/store.h). On any failure the transaction is rolled back. */
int cp_store_snapshot_load(cp_store *s, const char *account_id, const cp_store_snapshot_sink *sink,
                           void *userdata, cp_error *reterr);

/* The same reads inside a transaction the caller owns (cp/store-tx.h),
 * for a caller that already holds a pooled connection and must not wait
 * for a second one (a REST request). The rows then come from the
 * caller's transaction: with READ COMMITTED each SELECT sees the commits
 * made before it, so a change landing between two of them can show half;
 * the caller decides whether that matters. A failure (also a callback's)
 * aborts the caller's transaction. */
typedef struct cp_store_tx cp_store_tx;
int cp_store_snapshot_load_tx(cp_store_tx *tx, const char *account_id, const cp_store_snapshot_sink *sink,
                              void *userdata, cp_error *reterr);
