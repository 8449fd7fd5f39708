/*
 * netmap-int.h: the snapshot's internal layout, shared by the netmap .c
 * files; not exported.
 *
 * Everything is indexed by uint32: peers, groups, rules, routes. Sets of
 * peers are sorted arrays of peer indexes. Pre-encoded protobuf pieces
 * live in one byte array (account->blob) and are referred to by nm_span
 * (offset, length), so the array may grow while the snapshot is built.
 */
#pragma once

#include "cp/base.h"
#include "cp/netmap.h"

/* ---- small containers (netmap-util.c) -------------------------------------- */

/* A bump allocator: chunks freed all at once. */
typedef struct nm_arena {
        struct nm_chunk *head;
} nm_arena;

void *cp_netmap__arena_alloc(nm_arena *ar, size_t n);  /* 8-byte aligned, not zeroed */
char *cp_netmap__arena_strdup(nm_arena *ar, const char *s);     /* NULL -> "" */
void cp_netmap__arena_release(nm_arena *ar);

/* Growable byte buffer. */
typedef struct nm_buf {
        uint8_t *data;
        size_t len;
        size_t cap;
} nm_buf;

void cp_netmap__buf_reserve(nm_buf *b, size_t extra);
static inline void nm_buf_add(nm_buf *b, const void *p, size_t n) {
        if (b->cap - b->len < n)
                cp_netmap__buf_reserve(b, n);
        if (n)
                memcpy(b->data + b->len, p, n);
        b->len += n;
}
void cp_netmap__buf_release(nm_buf *b);

/* Growable uint32 vector. */
typedef struct nm_vec {
        uint32_t *v;
        size_t n;
        size_t cap;
} nm_vec;

static inline void nm_vec_push(nm_vec *x, uint32_t e) {
        if (x->n == x->cap) {
                x->cap = x->cap ? x->cap * 2 : 16;
                x->v = cp_xrealloc(x->v, x->cap * sizeof *x->v);
        }
        x->v[x->n++] = e;
}

/* String -> uint32 map (open addressing; keys borrowed, must outlive it). */
typedef struct nm_map {
        const char **keys;
        uint32_t *vals;
        size_t cap;             /* power of two */
        size_t n;
} nm_map;

/* Returns the value or -1. */
int64_t cp_netmap__map_get(const nm_map *m, const char *key);
/* Inserts; returns 0, or -EEXIST (value unchanged) when key is present. */
int cp_netmap__map_put(nm_map *m, const char *key, uint32_t val);
void cp_netmap__map_release(nm_map *m);

/* Agent versions (netbird-protocol.md sections 1.5, 4.3; NetBird's
 * version.MeetsMinVersion / IsDevelopmentVersion). */
typedef struct nm_version {
        bool dev;               /* "development", "dev-…", "ci-…" */
        bool ok;                /* parsed as [v]X[.Y[.Z]][-pre][+meta] */
        bool v_prefix;
        bool prerelease;
        uint32_t core;          /* X<<20 | Y<<10 | Z (each < 1024) */
} nm_version;

void cp_netmap__version_parse(const char *s, nm_version *ret);
#define NM_VER(x, y, z) (((uint32_t) (x) << 20) | ((uint32_t) (y) << 10) | (uint32_t) (z))

/* IPv4 text <-> host-order uint32; "a.b.c.d/n" into addr and prefix. */
int cp_netmap__ipv4_parse(const char *s, uint32_t *ret);
int cp_netmap__cidr_parse(const char *s, bool *ret_v6, uint32_t *ret_addr, unsigned *ret_prefix);

/* Sorts and deduplicates v[0..n); returns the new length. */
size_t cp_netmap__sort_unique(uint32_t *v, size_t n);

/* ---- protobuf writing ------------------------------------------------------- */

enum { NM_WT_VARINT = 0, NM_WT_LEN = 2 };

static inline size_t nm_vsize(uint64_t v) {
        size_t n = 1;
        while (v >= 0x80) {
                v >>= 7;
                n++;
        }
        return n;
}

static inline uint8_t *nm_vput(uint8_t *p, uint64_t v) {
        while (v >= 0x80) {
                *p++ = (uint8_t) (v | 0x80);
                v >>= 7;
        }
        *p++ = (uint8_t) v;
        return p;
}

/* Size of a length-delimited field with a one-byte tag and body of n. */
static inline size_t nm_fsize(size_t n) {
        return 1 + nm_vsize(n) + n;
}

#define NM_TAG(field, wt) ((uint8_t) (((field) << 3) | (wt)))

/* Build-time appenders (into an nm_buf); proto3: singular defaults are
 * omitted, which is what protoc-c does. */
static inline void nm_put_varint(nm_buf *b, uint64_t v) {
        uint8_t tmp[10];
        nm_buf_add(b, tmp, (size_t) (nm_vput(tmp, v) - tmp));
}
static inline void nm_put_uint(nm_buf *b, unsigned field, uint64_t v) {
        if (!v)
                return;
        nm_put_varint(b, NM_TAG(field, NM_WT_VARINT));
        nm_put_varint(b, v);
}
static inline void nm_put_bool(nm_buf *b, unsigned field, bool v) {
        nm_put_uint(b, field, v ? 1 : 0);
}
/* A length-delimited field that is always written (submessages, repeated
 * strings/bytes). */
static inline void nm_put_lenfield(nm_buf *b, unsigned field, const void *p, size_t n) {
        nm_put_varint(b, NM_TAG(field, NM_WT_LEN));
        nm_put_varint(b, n);
        nm_buf_add(b, p, n);
}
/* A singular string/bytes field: omitted when empty. */
static inline void nm_put_str(nm_buf *b, unsigned field, const char *s) {
        if (s && *s)
                nm_put_lenfield(b, field, s, strlen(s));
}

/* ---- the snapshot -------------------------------------------------------------- */

typedef struct nm_span {
        uint32_t off;
        uint32_t len;
} nm_span;

/* A range of a CSR index array. */
typedef struct nm_range {
        uint32_t off;
        uint32_t n;
} nm_range;

enum {
        NM_PEER_SSH_ENABLED      = 1u << 0,
        NM_PEER_SERVER_SSH       = 1u << 1,
        NM_PEER_CAP_SRC_PREFIXES = 1u << 2,
        NM_PEER_EXPIRED          = 1u << 3,
        NM_PEER_UNVALIDATED      = 1u << 4,
        NM_PEER_PORT_RANGES      = 1u << 5,     /* agent >= 0.48.0 or dev */
        NM_PEER_NATIVE_SSH       = 1u << 6,     /* agent >= 0.60.0 or dev */
        NM_PEER_OLD_REMOTE_PEERS = 1u << 7,     /* agent < 0.29.3: top-level remotePeers */
        NM_PEER_DNS_DISABLED     = 1u << 8,     /* in a disabled-management group */
};

typedef struct nm_peer {
        const char *id;
        const char *key;
        const char *ip_str;
        const char *dns_label;
        const char *ssh_key;
        const char *wt_version;
        const char *const *extra_labels;
        uint32_t n_extra_labels;
        uint32_t ip;
        uint32_t flags;
        int64_t session_expires_ns;
        /* pre-encoded pieces */
        nm_span rpc;            /* RemotePeerConfig body */
        nm_span fw_ip;          /* FirewallRule field 1 (PeerIP), tag included */
        nm_span fw_src;         /* FirewallRule field 9 (sourcePrefixes), tag included */
        nm_span rfw_src;        /* RouteFirewallRule field 1 ("ip/32"), tag included */
        nm_span dns_recs;       /* CustomZone field 2 entries (SimpleRecord), tags included */
        uint32_t n_dns_recs;
        nm_span pc_head;        /* PeerConfig field 1 (address) */
        nm_span pc_tail;        /* PeerConfig fields 4, 5, 6, 8 */
        /* indexes */
        nm_range groups;        /* into account->peer_groups: groups the peer is in */
        nm_range src_rules;     /* into account->peer_rules: active rules with the peer in sources */
        nm_range dst_rules;     /*   ... in destinations */
        nm_range routes;        /* into account->peer_routes: route entries it serves */
} nm_peer;

typedef struct nm_group {
        const char *id;
        const char *name;
        const uint32_t *members;        /* validated members, sorted unique */
        uint32_t n_members;
        nm_range dist_routes;   /* into account->group_routes: enabled routes distributed to it */
} nm_group;

typedef struct nm_policy {
        const char *id;
        bool enabled;
} nm_policy;

enum { NM_IN = 0, NM_OUT = 1 };

/* A firewall-rule template list for one (rule, direction, variant):
 * entries [first, first + n) of account->tmpls, each the FirewallRule
 * fields 2..7 (Direction .. PolicyID) of one expanded port. */
typedef struct nm_tmpl_list {
        uint32_t first;
        uint32_t n;
} nm_tmpl_list;

/* Variants of the target peer that change a rule's expansion:
 * bit 0 = agent understands port ranges, bit 1 = the native SSH companion
 * port applies to tcp rules (agent >= 0.60.0, ssh enabled and server SSH
 * allowed). */
#define NM_VARIANTS 4

typedef struct nm_rule {
        const char *id;
        const char *policy_id;
        uint32_t policy;        /* index, or UINT32_MAX when unknown */
        bool enabled;
        bool active;            /* policy enabled and rule enabled */
        bool bidirectional;
        uint8_t action;         /* cp_netmap_action */
        uint8_t protocol;       /* cp_netmap_protocol */
        const char **src_groups;
        uint32_t n_src_groups;
        const char **dst_groups;
        uint32_t n_dst_groups;
        const char *src_peer;   /* resource of type peer, or NULL */
        const char *dst_peer;
        const char *dst_resource;       /* network resource, or NULL (netmap-networks.c) */
        uint16_t *ports;
        uint32_t n_ports;
        cp_netmap_port_range *ranges;
        uint32_t n_ranges;
        /* resolved */
        uint32_t *src_group_idx;
        uint32_t n_src_group_idx;
        uint32_t *dst_group_idx;
        uint32_t n_dst_group_idx;
        const uint32_t *src;    /* peer set, sorted unique, validated */
        uint32_t n_src;
        const uint32_t *dst;
        uint32_t n_dst;
        nm_tmpl_list tmpl[2][NM_VARIANTS];
} nm_rule;

typedef struct nm_route {
        const char *id;
        const char *network;    /* canonical text as sent */
        bool v6;                /* never sent (no IPv6 support) */
        bool dynamic;           /* network_type == 3 */
        int network_type;
        const char *net_id;
        const char *peer;
        const char **peer_groups;
        uint32_t n_peer_groups;
        const char **groups;
        uint32_t n_groups;
        const char **acgs;
        uint32_t n_acgs;
        const char **domains;
        uint32_t n_domains;
        int metric;
        bool masquerade, enabled, keep_route, skip_auto_apply;
        /* resolved */
        uint32_t ha;            /* HA-set id: NetID + network/domains */
        uint32_t *dist_groups;
        uint32_t n_dist_groups;
        uint32_t *acg_idx;
        uint32_t n_acg_idx;
        const uint32_t *dist_peers;     /* routes with ACGs: validated peers of the
                                         * distribution groups, sorted */
        uint32_t n_dist_peers;
        nm_range entries;       /* into account->entries: one per routing peer */
} nm_route;

/* One route as served by one routing peer. */
typedef struct nm_route_entry {
        uint32_t route;         /* into routes; a network resource entry: the resource (netmap-networks.c) */
        uint32_t peer;
        const char *id;         /* route id, or "<route id>:<peer id>" via peer groups */
        nm_span msg;            /* Route body */
        nm_span default_permit; /* RouteFirewallRule body for routes without ACGs */
} nm_route_entry;

typedef struct nm_nsgroup {
        const char *id;
        bool enabled;
        const char **groups;
        uint32_t n_groups;
        const char **ns_ips;
        uint32_t n_ns;
        nm_span msg;            /* NameServerGroup body */
        uint32_t *group_idx;
        uint32_t n_group_idx;
} nm_nsgroup;

/* A custom DNS zone (netmap-zones.c). */
typedef struct nm_zone {
        const char *id;
        const char *domain;
        bool enabled;
        bool search;
        const char **groups;
        uint32_t n_groups;
        uint32_t *group_idx;    /* resolved distribution groups */
        uint32_t n_group_idx;
        nm_buf recs;            /* CustomZone field 2 entries as added; released at finish */
        uint32_t n_recs;
        nm_span msg;            /* CustomZone body; len 0 = sent to nobody */
} nm_zone;

struct cp_netmap_account {
        int refs;               /* atomic */
        nm_arena arena;
        nm_buf blob;

        const char *id;
        uint64_t serial;
        uint32_t net_addr;
        unsigned prefix_len;
        const char *dns_domain;
        bool lazy_connection;
        bool routing_peer_dns;
        const char **dns_disabled_groups;
        uint32_t n_dns_disabled_groups;
        const char *auto_update_version;
        bool auto_update_always;
        int forwarder_port;

        nm_peer *peers;
        uint32_t n_peers, cap_peers;
        nm_group *groups;
        uint32_t n_groups, cap_groups;
        nm_policy *policies;
        uint32_t n_policies, cap_policies;
        nm_rule *rules;
        uint32_t n_rules, cap_rules;
        nm_route *routes;
        uint32_t n_routes, cap_routes;
        nm_nsgroup *nsgroups;
        uint32_t n_nsgroups, cap_nsgroups;

        /* group_peers rows as added (resolved at finish) */
        struct nm_gp { const char *group; const char *peer; } *gp;
        size_t n_gp, cap_gp;

        nm_map peer_by_id, peer_by_key, group_by_id, policy_by_id, rule_by_id, route_by_id, ns_by_id;

        /* CSR arrays */
        uint32_t *peer_groups;
        uint32_t *peer_rules;
        uint32_t *peer_routes;  /* route entry indexes */
        uint32_t *group_routes; /* route indexes */
        uint32_t *group_dst_policies;   /* policies with a rule whose destinations hold the group */
        nm_range *group_dst_pol;        /* per group, into group_dst_policies */
        uint32_t *policy_rules;         /* rules of each policy, in order */
        nm_range *policy_rule_ranges;   /* per policy, into policy_rules */
        nm_route_entry *entries;
        uint32_t n_entries;
        nm_span *tmpls;         /* firewall-rule templates */
        uint32_t n_tmpls;

        nm_span zone_domain;    /* CustomZone field 1, tag included; len 0 = no zone */
        nm_zone *zones;         /* custom DNS zones */
        uint32_t n_zones, cap_zones;
        nm_map zone_by_id;
        struct nm_networks *nw; /* network resources and routers (netmap-networks.c); NULL = none */
        struct nm_posture *posture;     /* netmap-posture.c; NULL = no posture checks */
        bool built;
};

struct cp_netmap_builder {
        cp_netmap_account *a;
};

/* ---- the per-thread worker (netmap-map.c, netmap-encode.c) ---------------------- */

/* One remote peer's firewall rules from one (rule, direction): templates
 * [first, first + n) of account->tmpls, each one FirewallRule. */
typedef struct nm_fw {
        uint32_t peer;
        uint32_t first;
        uint32_t n;
} nm_fw;

struct cp_netmap_worker {
        /* per-peer bitsets, sized for the largest account seen */
        uint64_t *vis;          /* policy-visible peers */
        uint64_t *rel;          /* "relevant" peers: visible, self, route advertisers */
        size_t peer_words;
        uint64_t *grp;          /* the target's groups */
        size_t group_words;
        nm_vec touched;         /* bits set in vis, then in rel */

        /* the computed map (indexes into the snapshot) */
        nm_vec remotes;         /* visible, not expired, ascending */
        nm_vec offline;         /* visible, login expired, ascending */
        nm_vec relevant;        /* ascending */
        nm_vec routes;          /* route entry indexes */
        nm_vec own_ha;          /* HA ids the target serves itself */
        nm_vec nsgroups;
        nm_vec zones;           /* custom zones (indexes) the target gets */
        nm_fw *fw;
        size_t n_fw, cap_fw;
        size_t n_fw_msgs;
        nm_buf side;            /* PeerConfig body, then route firewall rules */
        size_t pc_len;          /* PeerConfig is side.data[0, pc_len) */
        nm_vec rfw;             /* (offset, length) pairs: side-buffer spans with
                                 * the high bit of offset set for account->blob spans */
        size_t n_dns_recs;
        bool ssh;
        bool dns;
        bool unvalidated;
        unsigned variant;
        nm_vec nw_scratch;      /* netmap-networks.c */

        nm_buf out;
};

#define NM_RFW_BLOB 0x80000000u

/* netmap-map.c: computes the map of peer idx into w. */
void cp_netmap__compute(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t idx, const void *jwt,
                 size_t jwt_len);

/* netmap-zones.c: precompute at finish; per peer, pick (needs w->grp
 * and w->dns set), then the DNSConfig.CustomZones fields' size and bytes. */
void cp_netmap__zones_finish(cp_netmap_account *a);
void cp_netmap__zones_free(cp_netmap_account *a);
void cp_netmap__zones_pick(cp_netmap_worker *w, const cp_netmap_account *a);
size_t cp_netmap__zones_size(const cp_netmap_worker *w, const cp_netmap_account *a);
uint8_t *cp_netmap__zones_write(uint8_t *o, const cp_netmap_worker *w, const cp_netmap_account *a);
/* netmap-map.c: the RouteFirewallRules of one policy rule for route entry
 * e, from already encoded sources (RouteFirewallRule field 1 entries);
 * one per port or range; nothing when sources is empty. */
void cp_netmap__rfw_ports(cp_netmap_worker *w, const cp_netmap_account *a, const nm_route *r,
                          const nm_route_entry *e, const nm_rule *rule, const nm_buf *sources);
/* netmap-posture.c: evaluates the posture checks (finish, before the
 * rules are resolved); filters a rule's source peers by its policy's
 * checks (returns src itself or an arena copy, *n updated); a peer's
 * pre-encoded SyncResponse.Checks fields; frees the posture state. */
void cp_netmap__posture_finish(cp_netmap_account *a);
const uint32_t *cp_netmap__posture_filter(cp_netmap_account *a, const nm_rule *r, const uint32_t *src, uint32_t *n);
nm_span cp_netmap__posture_checks(const cp_netmap_account *a, uint32_t peer);
void cp_netmap__posture_free(cp_netmap_account *a);

/* netmap-build.c */
int cp_netmap__finish(cp_netmap_account *a, cp_error *reterr);
void cp_netmap__account_free(cp_netmap_account *a);

/* netmap-finish.c: a Route body (section 1.6) for route r served by p. */
nm_span cp_netmap__encode_route(cp_netmap_account *a, const nm_route *r, const nm_peer *p, const char *id);

/* netmap-networks.c: network resources and routers. finish runs after
 * routes are resolved and appends the resources' route entries to
 * account->entries; compute runs in cp_netmap__compute after the regular
 * routes and route firewall rules and puts the resources' ones first,
 * as NetBird does; free releases what finish and the builder made. */
void cp_netmap__networks_finish(cp_netmap_account *a);
void cp_netmap__networks_compute(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self);
void cp_netmap__networks_free(cp_netmap_account *a);
