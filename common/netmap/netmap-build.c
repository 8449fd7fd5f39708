/*
 * netmap-build.c: the builder, and finishing a snapshot: resolving string
 * ids to indexes and doing every piece of work that does not depend on
 * the receiving peer, once per account change (netbird-protocol.md 4.3).
 */
#include "cp/base.h"

#include "netmap-int.h"

#define GROW(arr, n, cap)                                                       \
        do {                                                                    \
                if ((n) == (cap)) {                                             \
                        (cap) = (cap) ? (cap) * 2 : 16;                         \
                        (arr) = cp_xrealloc((arr), (size_t) (cap) * sizeof *(arr)); \
                }                                                               \
        } while (0)

static const char **dup_strv(nm_arena *ar, const char *const *v, size_t n) {
        if (!n)
                return NULL;
        const char **d = cp_netmap__arena_alloc(ar, n * sizeof *d);
        for (size_t i = 0; i < n; i++)
                d[i] = cp_netmap__arena_strdup(ar, v[i]);
        return d;
}

static bool empty(const char *s) {
        return !s || !*s;
}

/* ---- builder ------------------------------------------------------------------------ */

int cp_netmap_builder_new(const cp_netmap_account_spec *spec, cp_netmap_builder **ret, cp_error *reterr) {
        bool v6;
        uint32_t addr;
        unsigned prefix;

        if (!spec || empty(spec->id))
                return cp_error_set(reterr, -EINVAL, "netmap: account id missing");
        if (cp_netmap__cidr_parse(spec->network_cidr, &v6, &addr, &prefix) < 0 || v6)
                return cp_error_set(reterr, -EINVAL, "netmap: account network is not an IPv4 CIDR");
        if (spec->n_dns_disabled_groups > CP_NETMAP_MAX_OBJECTS)
                return cp_error_set(reterr, -E2BIG, "netmap: too many disabled DNS groups");

        cp_netmap_account *a = cp_xcalloc(1, sizeof *a);
        a->refs = 1;
        a->id = cp_netmap__arena_strdup(&a->arena, spec->id);
        a->serial = spec->serial;
        a->net_addr = addr;
        a->prefix_len = prefix;
        a->dns_domain = cp_netmap__arena_strdup(&a->arena, spec->dns_domain);
        a->lazy_connection = spec->lazy_connection_enabled;
        a->routing_peer_dns = spec->routing_peer_dns_resolution_enabled;
        a->dns_disabled_groups = dup_strv(&a->arena, spec->dns_disabled_groups, spec->n_dns_disabled_groups);
        a->n_dns_disabled_groups = (uint32_t) spec->n_dns_disabled_groups;
        a->auto_update_version = cp_netmap__arena_strdup(
                &a->arena, spec->auto_update_version ? spec->auto_update_version : CP_NETMAP_AUTO_UPDATE_DEFAULT);
        a->auto_update_always = spec->auto_update_always;

        cp_netmap_builder *b = cp_xmalloc(sizeof *b);
        b->a = a;
        *ret = b;
        return 0;
}

cp_netmap_builder *cp_netmap_builder_free(cp_netmap_builder *b) {
        if (b) {
                cp_netmap__account_free(b->a);
                free(b);
        }
        return NULL;
}

static int too_many(cp_error *reterr, const char *what) {
        return cp_error_set(reterr, -E2BIG, "netmap: too many %s", what);
}

static int duplicate(cp_error *reterr, const char *what, const char *id) {
        return cp_error_set(reterr, -EEXIST, "netmap: duplicate %s %s", what, id);
}

int cp_netmap_builder_add_peer(cp_netmap_builder *b, const cp_netmap_peer_spec *p, cp_error *reterr) {
        cp_netmap_account *a = b->a;
        uint32_t ip;
        nm_version ver;

        if (!p || empty(p->id) || empty(p->key))
                return cp_error_set(reterr, -EINVAL, "netmap: peer id or key missing");
        if (cp_netmap__ipv4_parse(p->ip, &ip) < 0)
                return cp_error_set(reterr, -EINVAL, "netmap: peer %s: bad IPv4 address", p->id);
        if (a->n_peers >= CP_NETMAP_MAX_PEERS)
                return too_many(reterr, "peers");
        if (p->n_extra_dns_labels > 1024)
                return cp_error_set(reterr, -E2BIG, "netmap: peer %s: too many extra DNS labels", p->id);
        if (cp_netmap__map_get(&a->peer_by_id, p->id) >= 0)
                return duplicate(reterr, "peer", p->id);
        if (cp_netmap__map_get(&a->peer_by_key, p->key) >= 0)
                return duplicate(reterr, "peer key of", p->id);

        GROW(a->peers, a->n_peers, a->cap_peers);
        nm_peer *np = &a->peers[a->n_peers];
        *np = (nm_peer) {
                .id = cp_netmap__arena_strdup(&a->arena, p->id),
                .key = cp_netmap__arena_strdup(&a->arena, p->key),
                .ip_str = cp_netmap__arena_strdup(&a->arena, p->ip),
                .dns_label = cp_netmap__arena_strdup(&a->arena, p->dns_label),
                .ssh_key = cp_netmap__arena_strdup(&a->arena, p->ssh_key),
                .wt_version = cp_netmap__arena_strdup(&a->arena, p->wt_version),
                .extra_labels = dup_strv(&a->arena, p->extra_dns_labels, p->n_extra_dns_labels),
                .n_extra_labels = (uint32_t) p->n_extra_dns_labels,
                .ip = ip,
                .session_expires_ns = p->session_expires_unix_ns,
        };
        if (p->ssh_enabled)
                np->flags |= NM_PEER_SSH_ENABLED;
        if (p->server_ssh_allowed)
                np->flags |= NM_PEER_SERVER_SSH;
        if (p->cap_source_prefixes)
                np->flags |= NM_PEER_CAP_SRC_PREFIXES;
        if (p->login_expired)
                np->flags |= NM_PEER_EXPIRED;
        if (p->requires_approval)
                np->flags |= NM_PEER_UNVALIDATED;

        /* Feature gates by agent version (firewall_helpers.go, conversion.go). */
        cp_netmap__version_parse(p->wt_version, &ver);
        if (ver.dev || (ver.ok && ver.core >= NM_VER(0, 60, 0)))
                np->flags |= NM_PEER_NATIVE_SSH | NM_PEER_PORT_RANGES;
        else if (ver.ok && ver.core >= NM_VER(0, 48, 0))
                np->flags |= NM_PEER_PORT_RANGES;
        if (!ver.dev && (!ver.ok || ver.prerelease || ver.core < NM_VER(0, 29, 3)))
                np->flags |= NM_PEER_OLD_REMOTE_PEERS;

        (void) cp_netmap__map_put(&a->peer_by_id, np->id, a->n_peers);
        (void) cp_netmap__map_put(&a->peer_by_key, np->key, a->n_peers);
        a->n_peers++;
        return 0;
}

int cp_netmap_builder_add_group(cp_netmap_builder *b, const char *id, const char *name, cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (empty(id))
                return cp_error_set(reterr, -EINVAL, "netmap: group id missing");
        if (a->n_groups >= CP_NETMAP_MAX_OBJECTS)
                return too_many(reterr, "groups");
        if (cp_netmap__map_get(&a->group_by_id, id) >= 0)
                return duplicate(reterr, "group", id);
        GROW(a->groups, a->n_groups, a->cap_groups);
        nm_group *g = &a->groups[a->n_groups];
        *g = (nm_group) {
                .id = cp_netmap__arena_strdup(&a->arena, id),
                .name = cp_netmap__arena_strdup(&a->arena, name),
        };
        (void) cp_netmap__map_put(&a->group_by_id, g->id, a->n_groups);
        a->n_groups++;
        return 0;
}

int cp_netmap_builder_add_group_peer(cp_netmap_builder *b, const char *group_id, const char *peer_id,
                                     cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (empty(group_id) || empty(peer_id))
                return cp_error_set(reterr, -EINVAL, "netmap: group or peer id missing");
        if (a->n_gp >= (size_t) CP_NETMAP_MAX_PEERS * 64)
                return too_many(reterr, "group memberships");
        GROW(a->gp, a->n_gp, a->cap_gp);
        a->gp[a->n_gp].group = cp_netmap__arena_strdup(&a->arena, group_id);
        a->gp[a->n_gp].peer = cp_netmap__arena_strdup(&a->arena, peer_id);
        a->n_gp++;
        return 0;
}

int cp_netmap_protocol_parse(const char *s, cp_netmap_protocol *ret) {
        static const char *const names[] = {
                [CP_NETMAP_PROTO_ALL] = "all",
                [CP_NETMAP_PROTO_TCP] = "tcp",
                [CP_NETMAP_PROTO_UDP] = "udp",
                [CP_NETMAP_PROTO_ICMP] = "icmp",
                [CP_NETMAP_PROTO_NETBIRD_SSH] = "netbird-ssh",
        };
        for (size_t i = 0; s && i < ELEMENTSOF(names); i++)
                if (strcmp(s, names[i]) == 0) {
                        *ret = (cp_netmap_protocol) i;
                        return 0;
                }
        return -EINVAL;
}

int cp_netmap_action_parse(const char *s, cp_netmap_action *ret) {
        if (s && strcmp(s, "accept") == 0)
                *ret = CP_NETMAP_ACCEPT;
        else if (s && strcmp(s, "drop") == 0)
                *ret = CP_NETMAP_DROP;
        else
                return -EINVAL;
        return 0;
}

int cp_netmap_builder_add_policy(cp_netmap_builder *b, const char *id, bool enabled, cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (empty(id))
                return cp_error_set(reterr, -EINVAL, "netmap: policy id missing");
        if (a->n_policies >= CP_NETMAP_MAX_OBJECTS)
                return too_many(reterr, "policies");
        if (cp_netmap__map_get(&a->policy_by_id, id) >= 0)
                return duplicate(reterr, "policy", id);
        GROW(a->policies, a->n_policies, a->cap_policies);
        a->policies[a->n_policies] = (nm_policy) { .id = cp_netmap__arena_strdup(&a->arena, id), .enabled = enabled };
        (void) cp_netmap__map_put(&a->policy_by_id, a->policies[a->n_policies].id, a->n_policies);
        a->n_policies++;
        return 0;
}

int cp_netmap_builder_add_rule(cp_netmap_builder *b, const cp_netmap_rule_spec *r, cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (!r || empty(r->id) || empty(r->policy_id))
                return cp_error_set(reterr, -EINVAL, "netmap: rule or policy id missing");
        if ((unsigned) r->protocol > CP_NETMAP_PROTO_NETBIRD_SSH || (unsigned) r->action > CP_NETMAP_DROP)
                return cp_error_set(reterr, -EINVAL, "netmap: rule %s: bad protocol or action", r->id);
        if (a->n_rules >= CP_NETMAP_MAX_OBJECTS)
                return too_many(reterr, "rules");
        if (r->n_sources > 65536 || r->n_destinations > 65536 || r->n_ports > 65536 || r->n_port_ranges > 65536)
                return cp_error_set(reterr, -E2BIG, "netmap: rule %s: lists too long", r->id);
        for (size_t i = 0; i < r->n_port_ranges; i++)
                if (r->port_ranges[i].start > r->port_ranges[i].end)
                        return cp_error_set(reterr, -EINVAL, "netmap: rule %s: port range start > end", r->id);
        if (cp_netmap__map_get(&a->rule_by_id, r->id) >= 0)
                return duplicate(reterr, "rule", r->id);

        GROW(a->rules, a->n_rules, a->cap_rules);
        nm_rule *nr = &a->rules[a->n_rules];
        *nr = (nm_rule) {
                .id = cp_netmap__arena_strdup(&a->arena, r->id),
                .policy = UINT32_MAX,
                .enabled = r->enabled,
                .bidirectional = r->bidirectional,
                .action = (uint8_t) r->action,
                .protocol = (uint8_t) r->protocol,
                .src_groups = dup_strv(&a->arena, r->sources, r->n_sources),
                .n_src_groups = (uint32_t) r->n_sources,
                .dst_groups = dup_strv(&a->arena, r->destinations, r->n_destinations),
                .n_dst_groups = (uint32_t) r->n_destinations,
                .src_peer = empty(r->source_peer) ? NULL : cp_netmap__arena_strdup(&a->arena, r->source_peer),
                .dst_peer = empty(r->destination_peer) ? NULL : cp_netmap__arena_strdup(&a->arena, r->destination_peer),
                .dst_resource = empty(r->destination_resource) ? NULL
                                                                : cp_netmap__arena_strdup(&a->arena, r->destination_resource),
                .n_ports = (uint32_t) r->n_ports,
                .n_ranges = (uint32_t) r->n_port_ranges,
        };
        /* The policy may be added later: resolved at finish. */
        const char *pid = cp_netmap__arena_strdup(&a->arena, r->policy_id);
        nr->ports = r->n_ports ? cp_netmap__arena_alloc(&a->arena, r->n_ports * sizeof *nr->ports) : NULL;
        if (r->n_ports)
                memcpy(nr->ports, r->ports, r->n_ports * sizeof *nr->ports);
        nr->ranges = r->n_port_ranges ? cp_netmap__arena_alloc(&a->arena, r->n_port_ranges * sizeof *nr->ranges) : NULL;
        if (r->n_port_ranges)
                memcpy(nr->ranges, r->port_ranges, r->n_port_ranges * sizeof *nr->ranges);
        nr->policy_id = pid;
        (void) cp_netmap__map_put(&a->rule_by_id, nr->id, a->n_rules);
        a->n_rules++;
        return 0;
}

/* Canonical text of a network as NetBird prints a netip.Prefix. */
static const char *route_network(nm_arena *ar, const char *network, bool *ret_v6, cp_error *reterr, int *ret_err) {
        bool v6;
        uint32_t addr;
        unsigned prefix;
        char buf[32];

        *ret_err = 0;
        if (!network) {
                *ret_v6 = false;
                return "192.0.2.0/32";  /* domain routes: NetBird's placeholder */
        }
        if (cp_netmap__cidr_parse(network, &v6, &addr, &prefix) < 0) {
                *ret_err = cp_error_set(reterr, -EINVAL, "netmap: bad route network");
                return NULL;
        }
        *ret_v6 = v6;
        if (v6)
                return cp_netmap__arena_strdup(ar, network);
        (void) snprintf(buf, sizeof buf, "%u.%u.%u.%u/%u", addr >> 24, (addr >> 16) & 255, (addr >> 8) & 255,
                        addr & 255, prefix);
        return cp_netmap__arena_strdup(ar, buf);
}

int cp_netmap_builder_add_route(cp_netmap_builder *b, const cp_netmap_route_spec *r, cp_error *reterr) {
        cp_netmap_account *a = b->a;
        bool v6;
        int err;

        if (!r || empty(r->id))
                return cp_error_set(reterr, -EINVAL, "netmap: route id missing");
        if (a->n_routes >= CP_NETMAP_MAX_OBJECTS)
                return too_many(reterr, "routes");
        if (r->n_peer_groups > 65536 || r->n_groups > 65536 || r->n_access_control_groups > 65536 ||
            r->n_domains > 65536)
                return cp_error_set(reterr, -E2BIG, "netmap: route %s: lists too long", r->id);
        if (cp_netmap__map_get(&a->route_by_id, r->id) >= 0)
                return duplicate(reterr, "route", r->id);
        const char *net = route_network(&a->arena, r->network, &v6, reterr, &err);
        if (!net)
                return err;

        GROW(a->routes, a->n_routes, a->cap_routes);
        nm_route *nr = &a->routes[a->n_routes];
        *nr = (nm_route) {
                .id = cp_netmap__arena_strdup(&a->arena, r->id),
                .network = net,
                .v6 = v6 || r->network_type == 2,
                .dynamic = r->network_type == 3,
                .network_type = r->network_type,
                .net_id = cp_netmap__arena_strdup(&a->arena, r->net_id),
                .peer = empty(r->peer) ? NULL : cp_netmap__arena_strdup(&a->arena, r->peer),
                .peer_groups = dup_strv(&a->arena, r->peer_groups, r->n_peer_groups),
                .n_peer_groups = (uint32_t) r->n_peer_groups,
                .groups = dup_strv(&a->arena, r->groups, r->n_groups),
                .n_groups = (uint32_t) r->n_groups,
                .acgs = dup_strv(&a->arena, r->access_control_groups, r->n_access_control_groups),
                .n_acgs = (uint32_t) r->n_access_control_groups,
                .domains = dup_strv(&a->arena, r->domains, r->n_domains),
                .n_domains = (uint32_t) r->n_domains,
                .metric = r->metric,
                .masquerade = r->masquerade,
                .enabled = r->enabled,
                .keep_route = r->keep_route,
                .skip_auto_apply = r->skip_auto_apply,
        };
        (void) cp_netmap__map_put(&a->route_by_id, nr->id, a->n_routes);
        a->n_routes++;
        return 0;
}

int cp_netmap_builder_add_nsgroup(cp_netmap_builder *b, const cp_netmap_nsgroup_spec *g, cp_error *reterr) {
        cp_netmap_account *a = b->a;
        nm_buf body = { 0 }, ns = { 0 };

        if (!g || empty(g->id))
                return cp_error_set(reterr, -EINVAL, "netmap: nameserver group id missing");
        if (a->n_nsgroups >= CP_NETMAP_MAX_OBJECTS)
                return too_many(reterr, "nameserver groups");
        if (g->n_nameservers > 1024 || g->n_groups > 65536 || g->n_domains > 65536)
                return cp_error_set(reterr, -E2BIG, "netmap: nameserver group %s: lists too long", g->id);
        if (cp_netmap__map_get(&a->ns_by_id, g->id) >= 0)
                return duplicate(reterr, "nameserver group", g->id);

        GROW(a->nsgroups, a->n_nsgroups, a->cap_nsgroups);
        nm_nsgroup *n = &a->nsgroups[a->n_nsgroups];
        *n = (nm_nsgroup) {
                .id = cp_netmap__arena_strdup(&a->arena, g->id),
                .enabled = g->enabled,
                .groups = dup_strv(&a->arena, g->groups, g->n_groups),
                .n_groups = (uint32_t) g->n_groups,
                .n_ns = (uint32_t) g->n_nameservers,
        };
        n->ns_ips = g->n_nameservers ? cp_netmap__arena_alloc(&a->arena, g->n_nameservers * sizeof *n->ns_ips) : NULL;

        /* NameServerGroup: 1 NameServers{1 IP, 2 NSType, 3 Port}, 2 Primary,
         * 3 Domains, 4 SearchDomainsEnabled. Nothing here depends on the
         * receiving peer, so it is encoded once. */
        for (size_t i = 0; i < g->n_nameservers; i++) {
                n->ns_ips[i] = cp_netmap__arena_strdup(&a->arena, g->nameservers[i].ip);
                ns.len = 0;
                nm_put_str(&ns, 1, n->ns_ips[i]);
                nm_put_uint(&ns, 2, (uint64_t) (int64_t) g->nameservers[i].ns_type);
                nm_put_uint(&ns, 3, (uint64_t) (int64_t) g->nameservers[i].port);
                nm_put_lenfield(&body, 1, ns.data, ns.len);
        }
        nm_put_bool(&body, 2, g->primary);
        for (size_t i = 0; i < g->n_domains; i++)
                nm_put_lenfield(&body, 3, g->domains[i] ? g->domains[i] : "",
                                g->domains[i] ? strlen(g->domains[i]) : 0);
        nm_put_bool(&body, 4, g->search_domains_enabled);
        n->msg = (nm_span) { (uint32_t) a->blob.len, (uint32_t) body.len };
        nm_buf_add(&a->blob, body.data, body.len);
        cp_netmap__buf_release(&body);
        cp_netmap__buf_release(&ns);

        (void) cp_netmap__map_put(&a->ns_by_id, n->id, a->n_nsgroups);
        a->n_nsgroups++;
        return 0;
}

/* ---- the snapshot -------------------------------------------------------------------- */

void cp_netmap__account_free(cp_netmap_account *a) {
        if (!a)
                return;
        cp_netmap__networks_free(a);
        cp_netmap__posture_free(a);
        cp_netmap__map_release(&a->peer_by_id);
        cp_netmap__map_release(&a->peer_by_key);
        cp_netmap__map_release(&a->group_by_id);
        cp_netmap__map_release(&a->policy_by_id);
        cp_netmap__map_release(&a->rule_by_id);
        cp_netmap__map_release(&a->route_by_id);
        cp_netmap__map_release(&a->ns_by_id);
        free(a->peers);
        free(a->groups);
        free(a->policies);
        free(a->rules);
        free(a->routes);
        free(a->nsgroups);
        free(a->gp);
        free(a->peer_groups);
        free(a->peer_rules);
        free(a->peer_routes);
        free(a->group_routes);
        free(a->entries);
        free(a->tmpls);
        free(a->group_dst_policies);
        free(a->group_dst_pol);
        free(a->policy_rules);
        free(a->policy_rule_ranges);
        cp_netmap__zones_free(a);
        cp_netmap__buf_release(&a->blob);
        cp_netmap__arena_release(&a->arena);
        free(a);
}

int cp_netmap_builder_finish(cp_netmap_builder *b, cp_netmap_account **ret, cp_error *reterr) {
        cp_netmap_account *a = b->a;
        free(b);
        int r = cp_netmap__finish(a, reterr);
        if (r < 0) {
                cp_netmap__account_free(a);
                return r;
        }
        *ret = a;
        return 0;
}

cp_netmap_account *cp_netmap_account_ref(cp_netmap_account *a) {
        if (a)
                __atomic_add_fetch(&a->refs, 1, __ATOMIC_RELAXED);
        return a;
}

cp_netmap_account *cp_netmap_account_unref(cp_netmap_account *a) {
        if (a && __atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL) == 0)
                cp_netmap__account_free(a);
        return NULL;
}

const char *cp_netmap_account_id(const cp_netmap_account *a) {
        return a->id;
}

uint64_t cp_netmap_account_serial(const cp_netmap_account *a) {
        return a->serial;
}

size_t cp_netmap_account_n_peers(const cp_netmap_account *a) {
        return a->n_peers;
}

int64_t cp_netmap_account_find_peer(const cp_netmap_account *a, const char *peer_id) {
        int64_t i = cp_netmap__map_get(&a->peer_by_id, peer_id);
        return i < 0 ? -ENOENT : i;
}

int64_t cp_netmap_account_find_peer_by_key(const cp_netmap_account *a, const char *wg_key) {
        int64_t i = cp_netmap__map_get(&a->peer_by_key, wg_key);
        return i < 0 ? -ENOENT : i;
}

const char *cp_netmap_account_peer_id(const cp_netmap_account *a, size_t idx) {
        return idx < a->n_peers ? a->peers[idx].id : NULL;
}

const char *cp_netmap_account_peer_key(const cp_netmap_account *a, size_t idx) {
        return idx < a->n_peers ? a->peers[idx].key : NULL;
}

bool cp_netmap_account_peer_login_expired(const cp_netmap_account *a, size_t idx) {
        return idx < a->n_peers && (a->peers[idx].flags & NM_PEER_EXPIRED);
}

int cp_netmap_account_forwarder_port(const cp_netmap_account *a) {
        return a->forwarder_port;
}
