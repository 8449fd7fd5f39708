/*
 * cp/netmap.h: per-peer NetworkMaps computed from an in-memory snapshot of
 * one account, and their SyncResponse wire encoding
 * (netbird-protocol.md sections 1.5, 1.6, 4.2, 4.3).
 *
 * The three steps and who does what:
 *
 *   1. Build. A cp_netmap_builder collects the account (settings, peers,
 *      groups and memberships, policies and rules, routes, nameserver
 *      groups, custom DNS zones, network resources and routers),
 *      referring to objects by their string ids. The loader
 *      cp_netmap_load() fills one from PostgreSQL; tests and benchmarks
 *      fill it by hand.
 *   2. Finish (the shared work, once per account change).
 *      cp_netmap_builder_finish() resolves every id to an integer index,
 *      computes group member sets, each rule's source and destination
 *      peer sets, the peer -> rules and peer -> routes indexes, and
 *      pre-encodes everything whose bytes do not depend on the receiving
 *      peer: each peer's RemotePeerConfig, DNS records and firewall-rule
 *      address fields, each rule's per-direction firewall-rule templates,
 *      each (route, routing peer) Route message, each NameServerGroup.
 *      The result is an immutable, refcounted cp_netmap_account.
 *   3. Encode (the per-peer work). cp_netmap_encode_sync() computes one
 *      peer's map from the snapshot (visible peers, firewall rules,
 *      routes, route firewall rules, DNS) in a per-thread
 *      cp_netmap_worker and writes the SyncResponse bytes, mostly by
 *      copying the pre-encoded pieces, into the worker's reusable buffer.
 *
 * The output is the protobuf encoding of management.SyncResponse as
 * protoc-c would pack the same message (fields in number order, proto3
 * defaults omitted), so protobuf_c_message_unpack() reads it back; the
 * library itself does not depend on the generated code. Ordering is
 * deterministic: peers by snapshot index (the order they were added),
 * rules by (rule, direction IN then OUT, remote peer index), routes by
 * routing peer index then route order.
 *
 * Threads: a builder belongs to one thread. A finished cp_netmap_account
 * is immutable: any number of threads may read it and encode from it at
 * once; cp_netmap_account_ref/unref are atomic. A cp_netmap_worker
 * belongs to one thread at a time (one per fan-out thread).
 *
 * Not modelled (see common/netmap/README.md): IPv6 overlay addresses and
 * routes (also IPv6 network resources), SSH authorized users (SSHAuth),
 * forwarding rules, the component envelope, reverse-proxy services (and
 * the routing-peer DNS resolution they force on the routers of their
 * domain resources).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

typedef struct cp_netmap_builder cp_netmap_builder;
typedef struct cp_netmap_account cp_netmap_account;
typedef struct cp_netmap_worker cp_netmap_worker;

/* Limits on what one account may hold; the builder refuses more with
 * -E2BIG (indexes are 32-bit, and a single map must stay encodable). */
#define CP_NETMAP_MAX_PEERS     1000000u
#define CP_NETMAP_MAX_OBJECTS   1000000u        /* groups, rules, routes, ns groups, network resources, routers each */

/* ---- the account ------------------------------------------------------------ */

/* NetBird's default auto-update version for accounts that set none; Login
 * and Sync must both send it so the two PeerConfigs agree. */
#define CP_NETMAP_AUTO_UPDATE_DEFAULT "disabled"

typedef struct cp_netmap_account_spec {
        const char *id;
        uint64_t serial;                /* accounts.network_serial; NetworkMap.Serial */
        const char *network_cidr;       /* IPv4 overlay network, "100.77.0.0/16" */
        /* The FQDN suffix: the account's settings_dns_domain when set, else
         * the server's --dns-domain. "" or NULL = no DNS domain (empty
         * fqdn fields and no peer zone). */
        const char *dns_domain;
        bool lazy_connection_enabled;
        bool routing_peer_dns_resolution_enabled;
        /* dns_settings_disabled_management_groups: peers in these groups
         * get DNSConfig.ServiceEnable = false and no zones/nameservers. */
        const char *const *dns_disabled_groups;
        size_t n_dns_disabled_groups;
        /* PeerConfig.autoUpdate; NULL = CP_NETMAP_AUTO_UPDATE_DEFAULT. */
        const char *auto_update_version;
        bool auto_update_always;
} cp_netmap_account_spec;

/* Starts a snapshot. Strings are copied; the spec is only borrowed for
 * the call. Returns 0 and *ret (free with cp_netmap_builder_free or hand
 * to cp_netmap_builder_finish), or -EINVAL (bad id or cidr). */
int cp_netmap_builder_new(const cp_netmap_account_spec *spec, cp_netmap_builder **ret, cp_error *reterr);
/* Accepts NULL; returns NULL. */
cp_netmap_builder *cp_netmap_builder_free(cp_netmap_builder *b);

/* ---- peers ------------------------------------------------------------------ */

typedef struct cp_netmap_peer_spec {
        const char *id;
        const char *key;                /* base64 WireGuard public key */
        const char *ip;                 /* IPv4 overlay address, no prefix */
        const char *dns_label;          /* "" = no DNS record, no fqdn */
        const char *const *extra_dns_labels;
        size_t n_extra_dns_labels;
        const char *ssh_key;            /* NULL or "" = none */
        const char *wt_version;         /* meta_wt_version; gates features (see README) */
        bool ssh_enabled;
        bool server_ssh_allowed;        /* meta flags.serverSSHAllowed */
        bool cap_source_prefixes;       /* PeerCapability 1: fill FirewallRule.sourcePrefixes */
        /* SSO login expired (section 4.3): the peer goes to others'
         * offlinePeers instead of remotePeers. Connection state plays no
         * part (pitfall 11). */
        bool login_expired;
        /* Waiting for approval: invisible to every other peer; its own map
         * is empty (section 4.2). */
        bool requires_approval;
        /* SyncResponse.sessionExpiresAt (section 6): the deadline in Unix
         * ns, or 0 for "no expiry" (sent as the empty Timestamp). */
        int64_t session_expires_unix_ns;
} cp_netmap_peer_spec;

/* Adds a peer; it gets the next index (0, 1, ...). -EEXIST for a repeated
 * id or key, -EINVAL for a malformed ip or a missing id/key, -E2BIG past
 * CP_NETMAP_MAX_PEERS. */
int cp_netmap_builder_add_peer(cp_netmap_builder *b, const cp_netmap_peer_spec *p, cp_error *reterr);

/* ---- groups ----------------------------------------------------------------- */

/* Adds a group (name is informational; may be NULL). -EEXIST on a repeated id. */
int cp_netmap_builder_add_group(cp_netmap_builder *b, const char *id, const char *name, cp_error *reterr);
/* Adds peer_id to group_id (a group_peers row). Either id may name
 * something never added (or added later): dangling references are
 * ignored at finish, as NetBird ignores them. Repeats are harmless. */
int cp_netmap_builder_add_group_peer(cp_netmap_builder *b, const char *group_id, const char *peer_id,
                                     cp_error *reterr);

/* ---- policies and rules ----------------------------------------------------- */

typedef enum cp_netmap_protocol {
        CP_NETMAP_PROTO_ALL,
        CP_NETMAP_PROTO_TCP,
        CP_NETMAP_PROTO_UDP,
        CP_NETMAP_PROTO_ICMP,
        CP_NETMAP_PROTO_NETBIRD_SSH,    /* sent as TCP in FirewallRule */
} cp_netmap_protocol;

typedef enum cp_netmap_action {
        CP_NETMAP_ACCEPT,
        CP_NETMAP_DROP,
} cp_netmap_action;

/* Parse the policy_rules text forms ("all", "tcp", "udp", "icmp",
 * "netbird-ssh"; "accept", "drop"). -EINVAL for anything else. */
int cp_netmap_protocol_parse(const char *s, cp_netmap_protocol *ret);
int cp_netmap_action_parse(const char *s, cp_netmap_action *ret);

/* Inclusive port range [start, end]. */
typedef struct cp_netmap_port_range {
        uint16_t start;
        uint16_t end;
} cp_netmap_port_range;

/* Adds a policy. -EEXIST on a repeated id. */
int cp_netmap_builder_add_policy(cp_netmap_builder *b, const char *id, bool enabled, cp_error *reterr);

typedef struct cp_netmap_rule_spec {
        const char *id;                 /* FirewallRule.PolicyID carries this (pitfall 12) */
        const char *policy_id;          /* a rule of an unknown policy is ignored */
        bool enabled;
        cp_netmap_action action;
        cp_netmap_protocol protocol;
        bool bidirectional;
        const char *const *sources;     /* group ids */
        size_t n_sources;
        const char *const *destinations;
        size_t n_destinations;
        /* A "peer" source/destination resource replaces the groups of that
         * side with one peer; NULL = use the groups. */
        const char *source_peer;
        const char *destination_peer;
        const uint16_t *ports;          /* each becomes one FirewallRule */
        size_t n_ports;
        const cp_netmap_port_range *port_ranges;        /* used when n_ports == 0 */
        size_t n_port_ranges;
        /* A network resource (host, subnet or domain) named as the rule's
         * destination resource: the rule's policy then applies to that
         * resource (NetBird's GetPoliciesForNetworkResource), like a
         * destination group holding it. NULL = none. Peer resources go
         * in destination_peer instead. */
        const char *destination_resource;
} cp_netmap_rule_spec;

/* Adds a rule; rules keep the order they were added in (the loader adds
 * them by policy then rule id). -EEXIST on a repeated id, -EINVAL on a
 * bad enum or a range with start > end. */
int cp_netmap_builder_add_rule(cp_netmap_builder *b, const cp_netmap_rule_spec *r, cp_error *reterr);

/* ---- routes ----------------------------------------------------------------- */

typedef struct cp_netmap_route_spec {
        const char *id;
        /* CIDR, e.g. "10.0.0.0/8" or "0.0.0.0/0" (exit node); NULL for a
         * domain route (sent with the placeholder 192.0.2.0/32). IPv6
         * networks are accepted and never sent (no IPv6 support yet). */
        const char *network;
        int network_type;               /* 0 invalid, 1 IPv4, 2 IPv6, 3 domain */
        const char *net_id;             /* HA group name */
        const char *peer;               /* routing peer id, or NULL with peer_groups */
        const char *const *peer_groups; /* every member routes; ID becomes "<id>:<peer id>" */
        size_t n_peer_groups;
        const char *const *groups;      /* distribution groups */
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
} cp_netmap_route_spec;

/* -EEXIST on a repeated id, -EINVAL on a malformed network. */
int cp_netmap_builder_add_route(cp_netmap_builder *b, const cp_netmap_route_spec *r, cp_error *reterr);

/* ---- networks: resources and routers (netmap-networks.c) ---------------------- */

typedef enum cp_netmap_resource_type {
        CP_NETMAP_RESOURCE_HOST,
        CP_NETMAP_RESOURCE_SUBNET,
        CP_NETMAP_RESOURCE_DOMAIN,
} cp_netmap_resource_type;

/* "host", "subnet", "domain"; -EINVAL for anything else. */
int cp_netmap_resource_type_parse(const char *s, cp_netmap_resource_type *ret);

typedef struct cp_netmap_network_resource_spec {
        const char *id;                 /* Route.ID is "<id>:<routing peer id>" */
        const char *network_id;
        const char *name;               /* Route.NetID (the HA group of its routers) */
        cp_netmap_resource_type type;
        /* host and subnet: the CIDR ("10.0.0.5/32", "10.0.0.0/24"); IPv6
         * ones are accepted and never sent (no IPv6 support). NULL for a
         * domain resource. */
        const char *prefix;
        const char *domain;             /* domain: "example.com" or "*.example.com" */
        bool enabled;
} cp_netmap_network_resource_spec;

/* -EEXIST on a repeated id, -EINVAL on a missing id/network/name, a bad
 * prefix or a domain resource without a domain. */
int cp_netmap_builder_add_network_resource(cp_netmap_builder *b, const cp_netmap_network_resource_spec *r,
                                           cp_error *reterr);

typedef struct cp_netmap_network_router_spec {
        const char *id;
        const char *network_id;
        const char *peer;               /* the routing peer, or NULL with peer_groups */
        const char *const *peer_groups; /* every member routes the network */
        size_t n_peer_groups;
        int metric;                     /* Route.Metric */
        bool masquerade;                /* Route.Masquerade */
        bool enabled;
} cp_netmap_network_router_spec;

/* -EEXIST on a repeated id, -EINVAL on a missing id or network. Routers
 * are applied in the order added: a peer routing one network through
 * two routers takes the later one's metric and masquerade (NetBird's
 * GetResourceRoutersMap). */
int cp_netmap_builder_add_network_router(cp_netmap_builder *b, const cp_netmap_network_router_spec *r,
                                         cp_error *reterr);

/* Puts resource_id into group_id (a group_resources row): policies whose
 * rule destinations hold the group apply to the resource. Dangling ids
 * are ignored at finish. */
int cp_netmap_builder_add_group_resource(cp_netmap_builder *b, const char *group_id, const char *resource_id,
                                         cp_error *reterr);

/* ---- nameserver groups -------------------------------------------------- */

typedef struct cp_netmap_nameserver {
        const char *ip;
        int ns_type;                    /* 1 = udp */
        int port;
} cp_netmap_nameserver;

typedef struct cp_netmap_nsgroup_spec {
        const char *id;
        bool enabled;
        bool primary;
        bool search_domains_enabled;
        const cp_netmap_nameserver *nameservers;
        size_t n_nameservers;
        const char *const *groups;      /* the peers it applies to */
        size_t n_groups;
        const char *const *domains;
        size_t n_domains;
} cp_netmap_nsgroup_spec;

int cp_netmap_builder_add_nsgroup(cp_netmap_builder *b, const cp_netmap_nsgroup_spec *g, cp_error *reterr);

/* ---- custom DNS zones (netmap-zones.c) ---------------------------------------- */

typedef struct cp_netmap_zone_spec {
        const char *id;
        const char *domain;             /* as stored; sent with a trailing dot */
        bool enabled;
        bool enable_search_domain;      /* CustomZone.SearchDomainDisabled = !this */
        const char *const *groups;      /* distribution groups */
        size_t n_groups;
} cp_netmap_zone_spec;

/* -EEXIST on a repeated id, -EINVAL without id or domain. */
int cp_netmap_builder_add_zone(cp_netmap_builder *b, const cp_netmap_zone_spec *z, cp_error *reterr);

typedef struct cp_netmap_zone_record_spec {
        const char *zone_id;
        const char *name;
        const char *type;               /* "A", "AAAA", "CNAME"; others are skipped */
        const char *content;
        int64_t ttl;
} cp_netmap_zone_record_spec;

/* Adds a record to a zone added before; a record of an unknown zone is
 * ignored. Records keep the order they were added in. */
int cp_netmap_builder_add_zone_record(cp_netmap_builder *b, const cp_netmap_zone_record_spec *r,
                                      cp_error *reterr);

/* ---- posture checks (netmap-posture.c) ------------------------------------------- */

/* A posture check: its id and the API's "checks" JSON object (the
 * posture_checks.checks column; see cp/posture.h). -EEXIST on a repeated
 * id, -EINVAL when checks_json is not a JSON object. */
int cp_netmap_builder_add_posture_check(cp_netmap_builder *b, const char *id, const char *checks_json,
                                        cp_error *reterr);
/* A policy's source_posture_checks. Ids of unknown checks are skipped at
 * finish, as NetBird skips them. The rules of the policy keep only the
 * source peers that pass every check; peers in its enabled rules' source
 * groups get the checks' process paths in SyncResponse.Checks. */
int cp_netmap_builder_set_policy_posture_checks(cp_netmap_builder *b, const char *policy_id,
                                                const char *const *ids, size_t n, cp_error *reterr);
/* What the checks read of a peer (copied). A peer with none set is
 * checked with its wt_version and empty everything else. */
typedef struct cp_posture_peer cp_posture_peer;
int cp_netmap_builder_set_peer_posture(cp_netmap_builder *b, const char *peer_id, const cp_posture_peer *m,
                                       cp_error *reterr);

/* Peer idx's SyncResponse.Checks entries as pre-encoded at finish: a run
 * of field-6 entries (tag, length, a packed Checks message each); *len 0
 * when the peer has none (or idx is out of range). The bytes live as long
 * as the snapshot. For a LoginResponse, which carries the same Checks. */
void cp_netmap_account_peer_checks(const cp_netmap_account *a, size_t idx, const uint8_t **data, size_t *len);

/* ---- finish ------------------------------------------------------------------ */

/* Resolves and precomputes (see the top of this file). Consumes the
 * builder in every case: it is freed, also on failure. On success *ret is
 * a new snapshot with one reference, released with
 * cp_netmap_account_unref(). Fails only on limits (-E2BIG). */
int cp_netmap_builder_finish(cp_netmap_builder *b, cp_netmap_account **ret, cp_error *reterr);

/* ---- the snapshot -------------------------------------------------------------- */

/* Adds a reference; returns a. Thread-safe. */
cp_netmap_account *cp_netmap_account_ref(cp_netmap_account *a);
/* Drops a reference; the last one frees the snapshot. Accepts NULL;
 * returns NULL. Thread-safe. */
cp_netmap_account *cp_netmap_account_unref(cp_netmap_account *a);

const char *cp_netmap_account_id(const cp_netmap_account *a);
uint64_t cp_netmap_account_serial(const cp_netmap_account *a);
size_t cp_netmap_account_n_peers(const cp_netmap_account *a);
/* Index of a peer by id or by WireGuard key, or -ENOENT. */
int64_t cp_netmap_account_find_peer(const cp_netmap_account *a, const char *peer_id);
int64_t cp_netmap_account_find_peer_by_key(const cp_netmap_account *a, const char *wg_key);
/* The id / key of peer idx (< n_peers); valid while the snapshot lives. */
const char *cp_netmap_account_peer_id(const cp_netmap_account *a, size_t idx);
const char *cp_netmap_account_peer_key(const cp_netmap_account *a, size_t idx);
/* Whether peer idx's SSO login had expired when the snapshot was read
 * (login_expired of its spec); false for idx out of range. */
bool cp_netmap_account_peer_login_expired(const cp_netmap_account *a, size_t idx);
/* DNSConfig.ForwarderPort of this snapshot: 22054 when every peer runs
 * >= 0.59.0 (development builds count as new), else 5353. */
int cp_netmap_account_forwarder_port(const cp_netmap_account *a);

/* ---- per-peer encoding -------------------------------------------------------- */

/* Allocates nothing until the first encode; buffers grow to the largest
 * map seen and are reused. Free with cp_netmap_worker_free (NULL-safe,
 * returns NULL). */
cp_netmap_worker *cp_netmap_worker_new(void);
cp_netmap_worker *cp_netmap_worker_free(cp_netmap_worker *w);

typedef struct cp_netmap_encode_opts {
        /* SyncResponse.netbirdConfig: set only on the first message of a
         * stream (pitfall 7: fan-out pushes leave it unset). The bytes are
         * a packed NetbirdConfig (e.g. management__netbird_config__pack);
         * with_netbird_config and len 0 sends a present, empty message. */
        bool with_netbird_config;
        const void *netbird_config;
        size_t netbird_config_len;
        /* PeerConfig.sshConfig.jwtConfig, a packed JWTConfig, sent only
         * when SSH ends up enabled for the peer; NULL = none. */
        const void *jwt_config;
        size_t jwt_config_len;
        /* Leave sessionExpiresAt out (the "no information" state). By
         * default it is sent from the peer's session_expires_unix_ns. */
        bool omit_session_expires;
        /* Already packed SyncResponse fields appended as they are (e.g.
         * Checks, field 6); protobuf readers merge them. NULL = none. */
        const void *extra;
        size_t extra_len;
} cp_netmap_encode_opts;

/* Counts of what went into the last map a worker encoded. */
typedef struct cp_netmap_stats {
        size_t remote_peers;
        size_t offline_peers;
        size_t firewall_rules;
        size_t routes;
        size_t route_firewall_rules;
        size_t dns_records;
        size_t nameserver_groups;
        bool ssh_enabled;
        bool dns_enabled;
} cp_netmap_stats;

/* Computes the map of peer peer_idx (< n_peers) and encodes a complete
 * SyncResponse for it:
 *   netbirdConfig (only if opts->with_netbird_config), peerConfig,
 *   remotePeers (only for agents older than 0.29.3 or with an unparsable
 *   version, section 1.5), remotePeersIsEmpty, NetworkMap{Serial,
 *   peerConfig, remotePeers, remotePeersIsEmpty, Routes, DNSConfig,
 *   offlinePeers, FirewallRules, firewallRulesIsEmpty,
 *   routesFirewallRules, routesFirewallRulesIsEmpty}, sessionExpiresAt,
 *   then opts->extra.
 * opts may be NULL (a fan-out push). On success *ret_data points into the
 * worker and stays valid until the next encode on w or its free; *ret_len
 * is its length. -EINVAL for a bad index, -EMSGSIZE when the message
 * would exceed 2 GiB. stats (optional) receives the counts. */
int cp_netmap_encode_sync(cp_netmap_worker *w, const cp_netmap_account *a, size_t peer_idx,
                          const cp_netmap_encode_opts *opts, const uint8_t **ret_data, size_t *ret_len,
                          cp_netmap_stats *stats);

/* ---- what a map shows, for the REST API ---------------------------------------- */

/* The peers a peer's map lists: NetworkMap.remotePeers and offlinePeers
 * (login expired), each ascending by snapshot index. */
typedef struct cp_netmap_visible {
        const uint32_t *remote;
        size_t n_remote;
        const uint32_t *offline;
        size_t n_offline;
} cp_netmap_visible;

/* Computes the map of peer_idx exactly as cp_netmap_encode_sync() does
 * (without encoding it) and points *ret at its visible peers. The arrays
 * live in the worker until its next call. -EINVAL for a bad index. */
int cp_netmap_visible_peers(cp_netmap_worker *w, const cp_netmap_account *a, size_t peer_idx,
                            cp_netmap_visible *ret);

/* For every peer i of the snapshot, counts[i] (n_peers entries, written
 * by the call) = n_remote + n_offline of its map: the number of peers it
 * can reach. Uses the same policy walk as the maps, once per distinct
 * (source rules, destination rules) pair of lists, so a large mesh costs
 * about one map. A peer waiting for approval counts 0. -EINVAL on NULL
 * arguments. */
int cp_netmap_visible_counts(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t *counts);

/* ---- loading from PostgreSQL (netmap-load.c) ------------------------------------ */

typedef struct cp_store cp_store;

/* Loads account_id from the store in one REPEATABLE READ READ ONLY
 * transaction (cp/store-snapshot.h: one query per table) and finishes
 * the snapshot. default_dns_domain is the server's --dns-domain, used
 * when the account has no override. Login expiry is evaluated against
 * the database clock at load time. *ret as for finish. -ENOENT when the
 * account does not exist; store errors as in cp/store.h. */
int cp_netmap_load(cp_store *s, const char *account_id, const char *default_dns_domain,
                   cp_netmap_account **ret, cp_error *reterr);

/* The same, read inside the caller's transaction (cp_store_snapshot_load_tx
 * in cp/store-snapshot.h: READ COMMITTED, so rows committed while it
 * reads may show in part). For a caller that already holds a pooled
 * connection. A failure aborts the caller's transaction. */
typedef struct cp_store_tx cp_store_tx;
int cp_netmap_load_tx(cp_store_tx *tx, const char *account_id, const char *default_dns_domain,
                      cp_netmap_account **ret, cp_error *reterr);
