/*
 * netmap-networks.c: NetBird's Networks in the map: network resources
 * (host, subnet, domain), the routers that serve them, and the policies
 * that open them (a rule whose destinations hold a group containing the
 * resource, or whose destination resource is the resource).
 *
 * Semantics follow NetBird's account_components.go (the resource loop of
 * GetPeerNetworkMapComponents, GetResourcePoliciesMap,
 * GetResourceRoutersMap) and NetworkMapComponents.Calculate
 * (getNetworkResourcesRoutesToSync, getPeerNetworkResourceFirewallRules,
 * addNetworksRoutingPeers):
 *
 *   - a resource counts when it is enabled and at least one enabled
 *     policy has an enabled rule aimed at it; its routing peers are the
 *     validated peers of the enabled routers of its network (a router's
 *     peer, or the members of its peer groups; a peer in two routers of
 *     one network takes the later router);
 *   - a routing peer of the resource's network gets its own Route for the
 *     resource, the RouteFirewallRules of every active rule of the
 *     resource's policies (sources: the rule's source peers but itself),
 *     and every source peer of those policies as a remote peer;
 *   - any other peer that is a source of one of the resource's policies
 *     gets the Route of every routing peer (HA: same NetID = the
 *     resource's name, each with its router's metric and masquerade) and
 *     those routing peers as remote peers;
 *   - Route: ID "<resource id>:<peer id>", KeepRoute, NetID = resource
 *     name; domain resources carry the domain and 192.0.2.0/32
 *     (NetworkType 3); resource routes and their route firewall rules come
 *     before the account's routes;
 *   - peers added this way are remote peers even when their login expired
 *     (unless the policies already list them as offline) and get no DNS
 *     records and no FirewallRules.
 *
 * Shared work is done once in cp_netmap__networks_finish: policy source
 * sets, resources' policies, the routing-peer map, every (resource,
 * routing peer) Route message, and per peer the sorted list of resources
 * it routes or reaches. The per-peer step walks that list.
 */
#include "cp/base.h"

#include "netmap-int.h"

typedef struct nw_resource {
        const char *id;
        const char *network_id;
        const char *name;
        const char *domain;
        cp_netmap_resource_type type;
        bool enabled;
        bool v6;                /* never sent (no IPv6 support) */
        nm_route route;         /* what a Route and RouteFirewallRule are made of */
        /* resolved */
        uint32_t *policies;     /* applied policies, in policy order */
        uint32_t n_policies;
        nm_range entries;       /* into account->entries, by routing peer index */
} nw_resource;

typedef struct nw_router {
        const char *id;
        const char *network_id;
        const char *peer;
        const char **peer_groups;
        uint32_t n_peer_groups;
        int metric;
        bool masquerade;
        bool enabled;
} nw_router;

struct nm_networks {
        nw_resource *res;
        uint32_t n_res, cap_res;
        nw_router *routers;
        uint32_t n_routers, cap_routers;
        struct nw_gr { const char *group; const char *resource; } *gr;
        size_t n_gr, cap_gr;
        nm_map res_by_id, router_by_id;

        /* resolved */
        const uint32_t **pol_src;       /* per policy: its source peers (getResourcePolicyPeers) */
        uint32_t *n_pol_src;
        uint32_t *items;                /* per peer: resource << 1 | routes-it flag, by resource */
        nm_range *peer_items;
};

#define GROW(arr, n, cap)                                                       \
        do {                                                                    \
                if ((n) == (cap)) {                                             \
                        (cap) = (cap) ? (cap) * 2 : 16;                         \
                        (arr) = cp_xrealloc((arr), (size_t) (cap) * sizeof *(arr)); \
                }                                                               \
        } while (0)

static bool empty(const char *s) {
        return !s || !*s;
}

static struct nm_networks *networks(cp_netmap_account *a) {
        if (!a->nw)
                a->nw = cp_xcalloc(1, sizeof *a->nw);
        return a->nw;
}

/* ---- builder ------------------------------------------------------------------------ */

int cp_netmap_resource_type_parse(const char *s, cp_netmap_resource_type *ret) {
        if (s && strcmp(s, "host") == 0)
                *ret = CP_NETMAP_RESOURCE_HOST;
        else if (s && strcmp(s, "subnet") == 0)
                *ret = CP_NETMAP_RESOURCE_SUBNET;
        else if (s && strcmp(s, "domain") == 0)
                *ret = CP_NETMAP_RESOURCE_DOMAIN;
        else
                return -EINVAL;
        return 0;
}

int cp_netmap_builder_add_network_resource(cp_netmap_builder *b, const cp_netmap_network_resource_spec *r,
                                           cp_error *reterr) {
        cp_netmap_account *a = b->a;
        bool v6 = false;
        uint32_t addr = 0;
        unsigned prefix = 0;
        char buf[32];

        if (!r || empty(r->id) || empty(r->network_id) || empty(r->name))
                return cp_error_set(reterr, -EINVAL, "netmap: network resource id, network or name missing");
        if ((unsigned) r->type > CP_NETMAP_RESOURCE_DOMAIN)
                return cp_error_set(reterr, -EINVAL, "netmap: network resource %s: bad type", r->id);
        if (r->type == CP_NETMAP_RESOURCE_DOMAIN ? empty(r->domain)
                                                 : cp_netmap__cidr_parse(r->prefix, &v6, &addr, &prefix) < 0)
                return cp_error_set(reterr, -EINVAL, "netmap: network resource %s: bad prefix or domain", r->id);
        struct nm_networks *nw = networks(a);
        if (nw->n_res >= CP_NETMAP_MAX_OBJECTS)
                return cp_error_set(reterr, -E2BIG, "netmap: too many network resources");
        if (cp_netmap__map_get(&nw->res_by_id, r->id) >= 0)
                return cp_error_set(reterr, -EEXIST, "netmap: duplicate network resource %s", r->id);

        GROW(nw->res, nw->n_res, nw->cap_res);
        nw_resource *x = &nw->res[nw->n_res];
        *x = (nw_resource) {
                .id = cp_netmap__arena_strdup(&a->arena, r->id),
                .network_id = cp_netmap__arena_strdup(&a->arena, r->network_id),
                .name = cp_netmap__arena_strdup(&a->arena, r->name),
                .type = r->type,
                .enabled = r->enabled,
                .v6 = v6,
        };
        nm_route *rt = &x->route;
        rt->id = x->id;
        rt->net_id = x->name;
        rt->enabled = true;
        rt->keep_route = true;
        if (r->type == CP_NETMAP_RESOURCE_DOMAIN) {
                const char **d = cp_netmap__arena_alloc(&a->arena, sizeof *d);
                x->domain = d[0] = cp_netmap__arena_strdup(&a->arena, r->domain);
                rt->domains = d;
                rt->n_domains = 1;
                rt->network = "192.0.2.0/32";
                rt->network_type = 3;
                rt->dynamic = true;
        } else if (v6) {
                rt->network = cp_netmap__arena_strdup(&a->arena, r->prefix);
                rt->network_type = 2;
                rt->v6 = true;
        } else {
                (void) snprintf(buf, sizeof buf, "%u.%u.%u.%u/%u", addr >> 24, (addr >> 16) & 255,
                                (addr >> 8) & 255, addr & 255, prefix);
                rt->network = cp_netmap__arena_strdup(&a->arena, buf);
                rt->network_type = 1;
        }
        (void) cp_netmap__map_put(&nw->res_by_id, x->id, nw->n_res);
        nw->n_res++;
        return 0;
}

int cp_netmap_builder_add_network_router(cp_netmap_builder *b, const cp_netmap_network_router_spec *r,
                                         cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (!r || empty(r->id) || empty(r->network_id))
                return cp_error_set(reterr, -EINVAL, "netmap: network router id or network missing");
        if (r->n_peer_groups > 65536)
                return cp_error_set(reterr, -E2BIG, "netmap: network router %s: too many peer groups", r->id);
        struct nm_networks *nw = networks(a);
        if (nw->n_routers >= CP_NETMAP_MAX_OBJECTS)
                return cp_error_set(reterr, -E2BIG, "netmap: too many network routers");
        if (cp_netmap__map_get(&nw->router_by_id, r->id) >= 0)
                return cp_error_set(reterr, -EEXIST, "netmap: duplicate network router %s", r->id);

        GROW(nw->routers, nw->n_routers, nw->cap_routers);
        nw_router *x = &nw->routers[nw->n_routers];
        *x = (nw_router) {
                .id = cp_netmap__arena_strdup(&a->arena, r->id),
                .network_id = cp_netmap__arena_strdup(&a->arena, r->network_id),
                .peer = empty(r->peer) ? NULL : cp_netmap__arena_strdup(&a->arena, r->peer),
                .n_peer_groups = (uint32_t) r->n_peer_groups,
                .metric = r->metric,
                .masquerade = r->masquerade,
                .enabled = r->enabled,
        };
        if (r->n_peer_groups) {
                x->peer_groups = cp_netmap__arena_alloc(&a->arena, r->n_peer_groups * sizeof *x->peer_groups);
                for (size_t i = 0; i < r->n_peer_groups; i++)
                        x->peer_groups[i] = cp_netmap__arena_strdup(&a->arena, r->peer_groups[i]);
        }
        (void) cp_netmap__map_put(&nw->router_by_id, x->id, nw->n_routers);
        nw->n_routers++;
        return 0;
}

int cp_netmap_builder_add_group_resource(cp_netmap_builder *b, const char *group_id, const char *resource_id,
                                         cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (empty(group_id) || empty(resource_id))
                return cp_error_set(reterr, -EINVAL, "netmap: group or resource id missing");
        struct nm_networks *nw = networks(a);
        GROW(nw->gr, nw->n_gr, nw->cap_gr);
        nw->gr[nw->n_gr++] = (struct nw_gr) { cp_netmap__arena_strdup(&a->arena, group_id),
                                              cp_netmap__arena_strdup(&a->arena, resource_id) };
        return 0;
}

void cp_netmap__networks_free(cp_netmap_account *a) {
        struct nm_networks *nw = a->nw;

        if (!nw)
                return;
        for (uint32_t i = 0; i < nw->n_res; i++)
                free(nw->res[i].policies);
        free(nw->res);
        free(nw->routers);
        free(nw->gr);
        cp_netmap__map_release(&nw->res_by_id);
        cp_netmap__map_release(&nw->router_by_id);
        free(nw->pol_src);
        free(nw->n_pol_src);
        free(nw->items);
        free(nw->peer_items);
        free(nw);
        a->nw = NULL;
}

/* ---- finish ------------------------------------------------------------------------- */

static bool validated(const cp_netmap_account *a, uint32_t p) {
        return !(a->peers[p].flags & NM_PEER_UNVALIDATED);
}

static int cmp_pair(const void *x, const void *y) {
        const uint32_t *l = x, *r = y;
        if (l[0] != r[0])
                return l[0] < r[0] ? -1 : 1;
        return l[1] < r[1] ? -1 : l[1] > r[1];
}

/* The policies applied to each enabled resource: enabled policies with an
 * enabled rule whose destination resource is the resource or whose
 * destinations hold a group containing it (GetPoliciesForNetworkResource),
 * each once, in policy order. */
static void resource_policies(cp_netmap_account *a, struct nm_networks *nw) {
        uint32_t G = a->n_groups;
        nm_vec gres = { 0 };    /* (group, resource) pairs */

        for (size_t i = 0; i < nw->n_gr; i++) {
                int64_t g = cp_netmap__map_get(&a->group_by_id, nw->gr[i].group);
                int64_t r = cp_netmap__map_get(&nw->res_by_id, nw->gr[i].resource);
                if (g < 0 || r < 0)
                        continue;
                nm_vec_push(&gres, (uint32_t) g);
                nm_vec_push(&gres, (uint32_t) r);
        }
        if (gres.n)
                qsort(gres.v, gres.n / 2, 2 * sizeof *gres.v, cmp_pair);
        nm_range *by_group = cp_xcalloc((size_t) G + 1, sizeof *by_group);
        for (size_t i = 0; i < gres.n; i += 2) {
                if (!by_group[gres.v[i]].n)
                        by_group[gres.v[i]].off = (uint32_t) (i / 2);
                by_group[gres.v[i]].n++;
        }

        nm_vec pairs = { 0 };   /* (resource, policy), policy order */
        for (uint32_t p = 0; p < a->n_policies; p++) {
                if (!a->policies[p].enabled)
                        continue;
                const nm_range *rl = &a->policy_rule_ranges[p];
                for (uint32_t k = 0; k < rl->n; k++) {
                        const nm_rule *rule = &a->rules[a->policy_rules[rl->off + k]];
                        if (!rule->enabled)
                                continue;
                        int64_t r = rule->dst_resource ? cp_netmap__map_get(&nw->res_by_id, rule->dst_resource) : -1;
                        if (r >= 0) {
                                nm_vec_push(&pairs, (uint32_t) r);
                                nm_vec_push(&pairs, p);
                        }
                        for (uint32_t d = 0; d < rule->n_dst_group_idx; d++) {
                                const nm_range *x = &by_group[rule->dst_group_idx[d]];
                                for (uint32_t m = 0; m < x->n; m++) {
                                        nm_vec_push(&pairs, gres.v[2 * (x->off + m) + 1]);
                                        nm_vec_push(&pairs, p);
                                }
                        }
                }
        }
        free(by_group);
        free(gres.v);
        if (pairs.n)
                qsort(pairs.v, pairs.n / 2, 2 * sizeof *pairs.v, cmp_pair);
        for (size_t i = 0; i < pairs.n; i += 2) {
                nw_resource *x = &nw->res[pairs.v[i]];
                if (!x->enabled || (x->n_policies && x->policies[x->n_policies - 1] == pairs.v[i + 1]))
                        continue;
                x->policies = cp_xrealloc(x->policies, ((size_t) x->n_policies + 1) * sizeof *x->policies);
                x->policies[x->n_policies++] = pairs.v[i + 1];
        }
        free(pairs.v);
}

/* Appends the validated members of group g (by id) to v. */
static void push_members(const cp_netmap_account *a, const char *group_id, nm_vec *v) {
        int64_t g = cp_netmap__map_get(&a->group_by_id, group_id);
        if (g < 0)
                return;
        for (uint32_t m = 0; m < a->groups[g].n_members; m++)
                nm_vec_push(v, a->groups[g].members[m]);
}

/* getResourcePolicyPeers: the first rule's peer resource, else the
 * members of every rule's source groups. Validated peers that pass the
 * policy's source posture checks (getPostureValidPeers), sorted. */
static void policy_sources(cp_netmap_account *a, struct nm_networks *nw, uint32_t p) {
        const nm_range *rl = &a->policy_rule_ranges[p];
        nm_vec v = { 0 };

        if (!rl->n)
                return;
        const nm_rule *first = &a->rules[a->policy_rules[rl->off]];
        if (first->src_peer) {
                int64_t q = cp_netmap__map_get(&a->peer_by_id, first->src_peer);
                if (q >= 0 && validated(a, (uint32_t) q))
                        nm_vec_push(&v, (uint32_t) q);
        } else {
                for (uint32_t k = 0; k < rl->n; k++) {
                        const nm_rule *rule = &a->rules[a->policy_rules[rl->off + k]];
                        for (uint32_t g = 0; g < rule->n_src_groups; g++)
                                push_members(a, rule->src_groups[g], &v);
                }
        }
        uint32_t n = (uint32_t) cp_netmap__sort_unique(v.v, v.n);
        uint32_t *s = cp_netmap__arena_alloc(&a->arena, (n ? n : 1) * sizeof *s);
        if (n)
                memcpy(s, v.v, n * sizeof *s);
        free(v.v);
        /* Only the sources that pass the policy's posture checks (the
         * rules of one policy share them; first->policy is p). */
        nw->pol_src[p] = cp_netmap__posture_filter(a, first, s, &n);
        nw->n_pol_src[p] = n;
}

/* Routers grouped by network, each group in router order. */
typedef struct net_index {
        nm_map by_id;           /* network id -> dense index */
        nm_range *ranges;       /* per network, into order */
        uint32_t *order;        /* router indexes */
} net_index;

static void net_index_build(const struct nm_networks *nw, net_index *ni) {
        uint32_t n_net = 0, *net = cp_xmalloc(((size_t) nw->n_routers + 1) * sizeof *net);

        *ni = (net_index) { 0 };
        for (uint32_t i = 0; i < nw->n_routers; i++) {
                int64_t k = cp_netmap__map_get(&ni->by_id, nw->routers[i].network_id);
                if (k < 0) {
                        k = n_net++;
                        (void) cp_netmap__map_put(&ni->by_id, nw->routers[i].network_id, (uint32_t) k);
                }
                net[i] = (uint32_t) k;
        }
        ni->ranges = cp_xcalloc((size_t) n_net + 1, sizeof *ni->ranges);
        ni->order = cp_xmalloc(((size_t) nw->n_routers + 1) * sizeof *ni->order);
        for (uint32_t i = 0; i < nw->n_routers; i++)
                ni->ranges[net[i]].n++;
        uint32_t o = 0;
        for (uint32_t k = 0; k < n_net; k++) {
                ni->ranges[k].off = o;
                o += ni->ranges[k].n;
                ni->ranges[k].n = 0;
        }
        for (uint32_t i = 0; i < nw->n_routers; i++) {
                nm_range *x = &ni->ranges[net[i]];
                ni->order[x->off + x->n++] = i;
        }
        free(net);
}

static void net_index_release(net_index *ni) {
        cp_netmap__map_release(&ni->by_id);
        free(ni->ranges);
        free(ni->order);
}

/* The routing peers of a network as (peer, router) pairs sorted by peer:
 * validated peers of its enabled routers, the later router winning for
 * a peer in two (GetResourceRoutersMap). */
static void routing_peers(const cp_netmap_account *a, const struct nm_networks *nw, const net_index *ni,
                          const char *network_id, nm_vec *out) {
        int64_t k = cp_netmap__map_get(&ni->by_id, network_id);

        out->n = 0;
        if (k < 0)
                return;
        for (uint32_t j = 0; j < ni->ranges[k].n; j++) {
                uint32_t i = ni->order[ni->ranges[k].off + j];
                const nw_router *r = &nw->routers[i];
                if (!r->enabled)
                        continue;
                size_t start = out->n;
                if (r->peer) {
                        int64_t q = cp_netmap__map_get(&a->peer_by_id, r->peer);
                        if (q >= 0 && validated(a, (uint32_t) q))
                                nm_vec_push(out, (uint32_t) q);
                } else {
                        for (uint32_t g = 0; g < r->n_peer_groups; g++)
                                push_members(a, r->peer_groups[g], out);
                }
                /* out holds pairs: spread the peers just pushed into (peer, router) */
                size_t n = out->n - start;
                for (size_t m = 0; m < n; m++)
                        nm_vec_push(out, 0);
                for (size_t m = n; m-- > 0;) {
                        out->v[start + 2 * m] = out->v[start + m];
                        out->v[start + 2 * m + 1] = i;
                }
        }
        if (!out->n)
                return;
        /* sort by (peer, router order); keep the last router of each peer */
        qsort(out->v, out->n / 2, 2 * sizeof *out->v, cmp_pair);
        size_t w = 0;
        for (size_t i = 0; i < out->n; i += 2) {
                if (i + 2 < out->n && out->v[i + 2] == out->v[i])
                        continue;
                out->v[w++] = out->v[i];
                out->v[w++] = out->v[i + 1];
        }
        out->n = w;
}

void cp_netmap__networks_finish(cp_netmap_account *a) {
        struct nm_networks *nw = a->nw;
        uint32_t P = a->n_peers;

        if (!nw)
                return;
        resource_policies(a, nw);
        nw->pol_src = cp_xcalloc((size_t) a->n_policies + 1, sizeof *nw->pol_src);
        nw->n_pol_src = cp_xcalloc((size_t) a->n_policies + 1, sizeof *nw->n_pol_src);

        nm_vec rp = { 0 }, items = { 0 };       /* (peer, resource << 1 | router) */
        size_t cap = (size_t) a->n_entries + 1;
        net_index ni;
        net_index_build(nw, &ni);
        for (uint32_t i = 0; i < nw->n_res; i++) {
                nw_resource *x = &nw->res[i];
                if (!x->enabled || x->v6 || !x->n_policies)
                        continue;
                routing_peers(a, nw, &ni, x->network_id, &rp);
                if (!rp.n)
                        continue;       /* no routes: nobody reaches it, nothing to route */
                x->entries = (nm_range) { a->n_entries, 0 };
                if (a->n_entries + rp.n / 2 + 1 > cap) {
                        cap = 2 * (a->n_entries + rp.n / 2 + 1);
                        a->entries = cp_xrealloc(a->entries, cap * sizeof *a->entries);
                }
                for (size_t k = 0; k < rp.n; k += 2) {
                        const nm_peer *p = &a->peers[rp.v[k]];
                        const nw_router *rt = &nw->routers[rp.v[k + 1]];
                        nm_route route = x->route;
                        route.metric = rt->metric;
                        route.masquerade = rt->masquerade;
                        size_t n = strlen(x->id) + 1 + strlen(p->id) + 1;
                        char *id = cp_netmap__arena_alloc(&a->arena, n);
                        (void) snprintf(id, n, "%s:%s", x->id, p->id);
                        a->entries[a->n_entries++] = (nm_route_entry) {
                                .route = i,
                                .peer = rp.v[k],
                                .id = id,
                                .msg = cp_netmap__encode_route(a, &route, p, id),
                        };
                        x->entries.n++;
                        nm_vec_push(&items, rp.v[k]);
                        nm_vec_push(&items, i << 1 | 1);
                }
                for (uint32_t m = 0; m < x->n_policies; m++) {
                        uint32_t pol = x->policies[m];
                        if (!nw->pol_src[pol])
                                policy_sources(a, nw, pol);
                        for (uint32_t s = 0; s < nw->n_pol_src[pol]; s++) {
                                nm_vec_push(&items, nw->pol_src[pol][s]);
                                nm_vec_push(&items, i << 1);
                        }
                }
        }
        free(rp.v);
        net_index_release(&ni);

        /* per peer, by resource; a routing peer of the resource's network
         * only routes it (it does not reach it through the others) */
        if (items.n)
                qsort(items.v, items.n / 2, 2 * sizeof *items.v, cmp_pair);
        nw->peer_items = cp_xcalloc((size_t) P + 1, sizeof *nw->peer_items);
        nw->items = cp_xmalloc((items.n / 2 + 1) * sizeof *nw->items);
        uint32_t o = 0;
        for (size_t i = 0; i < items.n; i += 2) {
                uint32_t p = items.v[i], it = items.v[i + 1];
                nm_range *x = &nw->peer_items[p];
                if (!x->n)
                        x->off = o;
                else if ((nw->items[o - 1] >> 1) == (it >> 1)) {
                        nw->items[o - 1] |= it & 1;
                        continue;
                }
                nw->items[o++] = it;
                x->n++;
        }
        free(items.v);
}

/* ---- per peer ----------------------------------------------------------------------- */

static bool sorted_has(const uint32_t *v, size_t n, uint32_t x) {
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (v[mid] == x)
                        return true;
                if (v[mid] < x)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

static void reverse(uint32_t *v, size_t n) {
        for (size_t i = 0; i < n / 2; i++) {
                uint32_t t = v[i];
                v[i] = v[n - 1 - i];
                v[n - 1 - i] = t;
        }
}

/* Moves the elements [from, v->n) of v to its front, both parts keeping
 * their order (a rotation by three reversals, in place). */
static void to_front(nm_vec *v, size_t from) {
        if (from == 0 || from == v->n)
                return;
        reverse(v->v, from);
        reverse(v->v + from, v->n - from);
        reverse(v->v, v->n);
}

void cp_netmap__networks_compute(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self) {
        const struct nm_networks *nw = a->nw;
        nm_vec *extra = &w->nw_scratch;
        size_t routes0 = w->routes.n, rfw0 = w->rfw.n;
        nm_buf sources = { 0 };

        if (!nw->peer_items || !nw->peer_items[self].n)
                return;
        const nm_range *x = &nw->peer_items[self];
        extra->n = 0;
        for (uint32_t k = 0; k < x->n; k++) {
                uint32_t it = nw->items[x->off + k];
                const nw_resource *res = &nw->res[it >> 1];
                const nm_route_entry *ents = a->entries + res->entries.off;

                if (!(it & 1)) {
                        /* a source: every routing peer's Route, and the
                         * routing peers as remote peers */
                        for (uint32_t e = 0; e < res->entries.n; e++) {
                                nm_vec_push(&w->routes, res->entries.off + e);
                                nm_vec_push(extra, ents[e].peer);
                        }
                        continue;
                }
                /* a routing peer: its own Route, the policies' sources as
                 * remote peers, a RouteFirewallRule set per active rule */
                const nm_route_entry *own = NULL;
                for (uint32_t e = 0; e < res->entries.n && !own; e++)
                        if (ents[e].peer == self)
                                own = &ents[e];
                if (!own)
                        continue;       /* cannot happen: items come from the entries */
                nm_vec_push(&w->routes, (uint32_t) (own - a->entries));
                for (uint32_t m = 0; m < res->n_policies; m++) {
                        uint32_t pol = res->policies[m];
                        for (uint32_t s = 0; s < nw->n_pol_src[pol]; s++)
                                nm_vec_push(extra, nw->pol_src[pol][s]);
                        const nm_range *rl = &a->policy_rule_ranges[pol];
                        for (uint32_t q = 0; q < rl->n; q++) {
                                const nm_rule *rule = &a->rules[a->policy_rules[rl->off + q]];
                                if (!rule->active)
                                        continue;
                                sources.len = 0;
                                for (uint32_t s = 0; s < rule->n_src; s++) {
                                        if (rule->src[s] == self)
                                                continue;
                                        nm_span sp = a->peers[rule->src[s]].rfw_src;
                                        nm_buf_add(&sources, a->blob.data + sp.off, sp.len);
                                }
                                cp_netmap__rfw_ports(w, a, &res->route, own, rule, &sources);
                        }
                }
        }
        cp_netmap__buf_release(&sources);

        /* NetBird lists the resources' routes and rules first */
        to_front(&w->routes, routes0);
        to_front(&w->rfw, rfw0);

        /* addNetworksRoutingPeers: peers not yet in the map become remote
         * peers (also login-expired ones; the policy-visible expired ones
         * stay offline) */
        size_t n = cp_netmap__sort_unique(extra->v, extra->n), before = w->remotes.n;
        for (size_t i = 0; i < n; i++) {
                uint32_t q = extra->v[i];
                if (q == self || sorted_has(w->remotes.v, before, q) || sorted_has(w->offline.v, w->offline.n, q))
                        continue;
                nm_vec_push(&w->remotes, q);
        }
        if (w->remotes.n != before)
                w->remotes.n = cp_netmap__sort_unique(w->remotes.v, w->remotes.n);
        extra->n = 0;
}
