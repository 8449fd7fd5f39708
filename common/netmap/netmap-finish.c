/*
 * netmap-finish.c: turning a filled builder into a snapshot. This is the
 * shared work of a fan-out, done once per account change; everything the
 * per-peer step (netmap-map.c) needs is either an index lookup here or a
 * pre-encoded byte span in account->blob.
 *
 * Semantics follow NetBird's NetworkMapComponents.Calculate and its
 * encoders (netbird-protocol.md 4.3, 1.5, 1.6): see README.md for the
 * mapping and for what is deliberately different.
 */
#include "cp/base.h"

#include "netmap-int.h"

/* A stamp per peer, so set unions need no clearing between uses. */
typedef struct marker {
        uint32_t *stamp;
        uint32_t gen;
} marker;

static uint32_t marker_next(marker *m, size_t n) {
        if (++m->gen == 0) {
                memset(m->stamp, 0, n * sizeof *m->stamp);
                m->gen = 1;
        }
        return m->gen;
}

static nm_span blob_span(const cp_netmap_account *a, size_t start) {
        return (nm_span) { (uint32_t) start, (uint32_t) (a->blob.len - start) };
}

static bool validated(const cp_netmap_account *a, uint32_t p) {
        return !(a->peers[p].flags & NM_PEER_UNVALIDATED);
}

/* ---- groups --------------------------------------------------------------------------- */

/* Resolves group_peers rows. all_members/all_n get every member (sorted,
 * unique, including peers waiting for approval); groups[].members only the
 * validated ones. Also builds peer -> groups. */
static void resolve_groups(cp_netmap_account *a, const uint32_t **all_members, uint32_t *all_n) {
        uint32_t G = a->n_groups, P = a->n_peers;
        uint32_t *cnt = cp_xcalloc((size_t) G + 1, sizeof *cnt);
        int64_t *gi = cp_xmalloc((a->n_gp ? a->n_gp : 1) * sizeof *gi);
        int64_t *pi = cp_xmalloc((a->n_gp ? a->n_gp : 1) * sizeof *pi);
        size_t total = 0;

        for (size_t i = 0; i < a->n_gp; i++) {
                gi[i] = cp_netmap__map_get(&a->group_by_id, a->gp[i].group);
                pi[i] = cp_netmap__map_get(&a->peer_by_id, a->gp[i].peer);
                if (gi[i] >= 0 && pi[i] >= 0) {
                        cnt[gi[i]]++;
                        total++;
                }
        }
        uint32_t *mem = cp_netmap__arena_alloc(&a->arena, (total ? total : 1) * sizeof *mem);
        uint32_t *off = cp_xmalloc(((size_t) G + 1) * sizeof *off);
        uint32_t o = 0;
        for (uint32_t g = 0; g < G; g++) {
                off[g] = o;
                o += cnt[g];
                cnt[g] = 0;
        }
        for (size_t i = 0; i < a->n_gp; i++)
                if (gi[i] >= 0 && pi[i] >= 0)
                        mem[off[gi[i]] + cnt[gi[i]]++] = (uint32_t) pi[i];
        free(gi);
        free(pi);

        uint32_t *pcnt = cp_xcalloc((size_t) P + 1, sizeof *pcnt);
        size_t ptotal = 0;
        for (uint32_t g = 0; g < G; g++) {
                uint32_t *m = mem + off[g];
                uint32_t n = (uint32_t) cp_netmap__sort_unique(m, cnt[g]);
                all_members[g] = m;
                all_n[g] = n;
                uint32_t nv = 0;
                for (uint32_t k = 0; k < n; k++) {
                        pcnt[m[k]]++;
                        nv += validated(a, m[k]);
                }
                ptotal += n;
                if (nv == n) {
                        a->groups[g].members = m;
                } else {
                        uint32_t *v = cp_netmap__arena_alloc(&a->arena, (nv ? nv : 1) * sizeof *v);
                        nv = 0;
                        for (uint32_t k = 0; k < n; k++)
                                if (validated(a, m[k]))
                                        v[nv++] = m[k];
                        a->groups[g].members = v;
                }
                a->groups[g].n_members = nv;
        }
        free(cnt);
        free(off);

        a->peer_groups = cp_xmalloc((ptotal ? ptotal : 1) * sizeof *a->peer_groups);
        o = 0;
        for (uint32_t p = 0; p < P; p++) {
                a->peers[p].groups = (nm_range) { o, 0 };
                o += pcnt[p];
        }
        free(pcnt);
        for (uint32_t g = 0; g < G; g++)
                for (uint32_t k = 0; k < all_n[g]; k++) {
                        nm_peer *p = &a->peers[all_members[g][k]];
                        a->peer_groups[p->groups.off + p->groups.n++] = g;
                }
}

/* Resolves group ids, dropping unknown ones (NetBird skips them). */
static uint32_t *resolve_ids(cp_netmap_account *a, const char **ids, uint32_t n, uint32_t *ret_n) {
        uint32_t *v = n ? cp_netmap__arena_alloc(&a->arena, n * sizeof *v) : NULL;
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
                int64_t g = cp_netmap__map_get(&a->group_by_id, ids[i]);
                if (g >= 0)
                        v[k++] = (uint32_t) g;
        }
        *ret_n = k;
        return v;
}

/* The validated peers of a list of groups, sorted and unique. A single
 * group's member array is shared, not copied (self-mesh policies then
 * have src == dst by pointer, which the per-peer step exploits). */
static const uint32_t *peer_set(cp_netmap_account *a, const uint32_t *groups, uint32_t n_groups, marker *mk,
                                uint32_t *ret_n) {
        if (n_groups == 0) {
                *ret_n = 0;
                return NULL;
        }
        if (n_groups == 1) {
                *ret_n = a->groups[groups[0]].n_members;
                return a->groups[groups[0]].members;
        }
        uint32_t gen = marker_next(mk, a->n_peers);
        size_t n = 0;
        for (uint32_t i = 0; i < n_groups; i++)
                n += a->groups[groups[i]].n_members;
        uint32_t *v = cp_netmap__arena_alloc(&a->arena, (n ? n : 1) * sizeof *v);
        n = 0;
        for (uint32_t i = 0; i < n_groups; i++) {
                const nm_group *g = &a->groups[groups[i]];
                for (uint32_t k = 0; k < g->n_members; k++)
                        if (mk->stamp[g->members[k]] != gen) {
                                mk->stamp[g->members[k]] = gen;
                                v[n++] = g->members[k];
                        }
        }
        *ret_n = (uint32_t) cp_netmap__sort_unique(v, n);
        return v;
}

static const uint32_t *resource_peer(cp_netmap_account *a, const char *id, uint32_t *ret_n) {
        int64_t p = cp_netmap__map_get(&a->peer_by_id, id);
        *ret_n = 0;
        if (p < 0 || !validated(a, (uint32_t) p))
                return NULL;
        uint32_t *v = cp_netmap__arena_alloc(&a->arena, sizeof *v);
        *v = (uint32_t) p;
        *ret_n = 1;
        return v;
}

/* ---- firewall-rule templates ------------------------------------------------------------ */

/* RuleProtocol on the wire; netbird-ssh travels as TCP in FirewallRule. */
static const uint8_t fw_proto[] = {
        [CP_NETMAP_PROTO_ALL] = 1,
        [CP_NETMAP_PROTO_TCP] = 2,
        [CP_NETMAP_PROTO_UDP] = 3,
        [CP_NETMAP_PROTO_ICMP] = 4,
        [CP_NETMAP_PROTO_NETBIRD_SSH] = 2,
};

/* One expanded FirewallRule's fields 2..7. port != 0 sets Port; else a
 * TCP/UDP rule gets PortInfo{range{start,end}} ({0,0} = all ports). */
static void tmpl_emit(cp_netmap_account *a, const nm_rule *r, int dir, uint32_t port, uint32_t start,
                      uint32_t end) {
        size_t s = a->blob.len;
        uint8_t wp = fw_proto[r->protocol];

        nm_put_uint(&a->blob, 2, (uint64_t) dir);
        nm_put_uint(&a->blob, 3, r->action);
        nm_put_uint(&a->blob, 4, wp);
        if (port) {
                char buf[8];
                (void) snprintf(buf, sizeof buf, "%u", port);
                nm_put_str(&a->blob, 5, buf);
        } else if (wp == 2 || wp == 3) {
                nm_buf range = { 0 }, info = { 0 };
                nm_put_uint(&range, 1, start);
                nm_put_uint(&range, 2, end);
                nm_put_lenfield(&info, 2, range.data, range.len);
                nm_put_lenfield(&a->blob, 6, info.data, info.len);
                cp_netmap__buf_release(&range);
                cp_netmap__buf_release(&info);
        }
        nm_put_str(&a->blob, 7, r->id);
        if (a->n_tmpls % 256 == 0)
                a->tmpls = cp_xrealloc(a->tmpls, ((size_t) a->n_tmpls + 256) * sizeof *a->tmpls);
        a->tmpls[a->n_tmpls++] = blob_span(a, s);
}

/* ExpandPortsAndRanges for one (rule, direction, variant of the target). */
static nm_tmpl_list build_tmpls(cp_netmap_account *a, const nm_rule *r, int dir, unsigned variant) {
        nm_tmpl_list l = { a->n_tmpls, 0 };
        bool has22 = false, has22022 = false;

        if (!r->n_ports && !r->n_ranges) {
                tmpl_emit(a, r, dir, 0, 0, 0);
                l.n = 1;
                return l;
        }
        for (uint32_t i = 0; i < r->n_ports; i++) {
                tmpl_emit(a, r, dir, r->ports[i], 0, 0);
                has22 |= r->ports[i] == 22;
                has22022 |= r->ports[i] == 22022;
        }
        for (uint32_t i = 0; !r->n_ports && i < r->n_ranges; i++) {
                uint32_t s = r->ranges[i].start, e = r->ranges[i].end;
                if (variant & 1) {
                        tmpl_emit(a, r, dir, 0, s, e);
                        has22 |= s <= 22 && 22 <= e;
                        has22022 |= s <= 22022 && 22022 <= e;
                } else if (s == e) {
                        /* old agents: single-port ranges become a Port */
                        tmpl_emit(a, r, dir, s, 0, 0);
                        has22 |= s == 22;
                        has22022 |= s == 22022;
                }
        }
        /* The native SSH server's companion port (section 4.3 step 5). */
        bool native = r->protocol == CP_NETMAP_PROTO_NETBIRD_SSH ||
                      (r->protocol == CP_NETMAP_PROTO_TCP && (variant & 2));
        if (native && has22 && !has22022)
                tmpl_emit(a, r, dir, 22022, 0, 0);
        l.n = a->n_tmpls - l.first;
        return l;
}

static void build_rule_tmpls(cp_netmap_account *a, nm_rule *r) {
        for (int dir = NM_IN; dir <= NM_OUT; dir++)
                for (unsigned v = 0; v < NM_VARIANTS; v++) {
                        /* Variants that cannot change the expansion share a list. */
                        unsigned eff = v;
                        if (!r->n_ports && !r->n_ranges)
                                eff = 0;
                        if (r->n_ports)
                                eff &= ~1u;
                        if (r->protocol != CP_NETMAP_PROTO_TCP)
                                eff &= ~2u;
                        r->tmpl[dir][v] = eff == v ? build_tmpls(a, r, dir, v) : r->tmpl[dir][eff];
                }
}

/* ---- rules ------------------------------------------------------------------------------------ */

static void resolve_rules(cp_netmap_account *a, marker *mk) {
        uint32_t P = a->n_peers, R = a->n_rules, NP = a->n_policies;
        uint32_t *sc = cp_xcalloc((size_t) P + 1, sizeof *sc), *dc = cp_xcalloc((size_t) P + 1, sizeof *dc);
        size_t total = 0;

        for (uint32_t i = 0; i < R; i++) {
                nm_rule *r = &a->rules[i];
                int64_t pol = cp_netmap__map_get(&a->policy_by_id, r->policy_id);
                r->policy = pol < 0 ? UINT32_MAX : (uint32_t) pol;
                r->active = r->enabled && pol >= 0 && a->policies[pol].enabled;
                r->src_group_idx = resolve_ids(a, r->src_groups, r->n_src_groups, &r->n_src_group_idx);
                r->dst_group_idx = resolve_ids(a, r->dst_groups, r->n_dst_groups, &r->n_dst_group_idx);
                if (!r->active)
                        continue;
                r->src = r->src_peer ? resource_peer(a, r->src_peer, &r->n_src)
                                     : peer_set(a, r->src_group_idx, r->n_src_group_idx, mk, &r->n_src);
                r->src = cp_netmap__posture_filter(a, r, r->src, &r->n_src);
                r->dst = r->dst_peer ? resource_peer(a, r->dst_peer, &r->n_dst)
                                     : peer_set(a, r->dst_group_idx, r->n_dst_group_idx, mk, &r->n_dst);
                build_rule_tmpls(a, r);
                for (uint32_t k = 0; k < r->n_src; k++)
                        sc[r->src[k]]++;
                for (uint32_t k = 0; k < r->n_dst; k++)
                        dc[r->dst[k]]++;
                total += (size_t) r->n_src + r->n_dst;
        }

        /* peer -> active rules, each list in rule order */
        a->peer_rules = cp_xmalloc((total ? total : 1) * sizeof *a->peer_rules);
        uint32_t o = 0;
        for (uint32_t p = 0; p < P; p++) {
                a->peers[p].src_rules = (nm_range) { o, 0 };
                o += sc[p];
                a->peers[p].dst_rules = (nm_range) { o, 0 };
                o += dc[p];
        }
        free(sc);
        free(dc);
        for (uint32_t i = 0; i < R; i++) {
                const nm_rule *r = &a->rules[i];
                if (!r->active)
                        continue;
                for (uint32_t k = 0; k < r->n_src; k++) {
                        nm_range *x = &a->peers[r->src[k]].src_rules;
                        a->peer_rules[x->off + x->n++] = i;
                }
                for (uint32_t k = 0; k < r->n_dst; k++) {
                        nm_range *x = &a->peers[r->dst[k]].dst_rules;
                        a->peer_rules[x->off + x->n++] = i;
                }
        }

        /* policy -> rules, and group -> policies with a rule whose
         * destinations hold the group (route access control, 4.3). */
        a->policy_rule_ranges = cp_xcalloc((size_t) NP + 1, sizeof *a->policy_rule_ranges);
        a->policy_rules = cp_xmalloc(((size_t) R + 1) * sizeof *a->policy_rules);
        for (uint32_t i = 0; i < R; i++)
                if (a->rules[i].policy != UINT32_MAX)
                        a->policy_rule_ranges[a->rules[i].policy].n++;
        o = 0;
        for (uint32_t p = 0; p < NP; p++) {
                a->policy_rule_ranges[p].off = o;
                o += a->policy_rule_ranges[p].n;
                a->policy_rule_ranges[p].n = 0;
        }
        for (uint32_t i = 0; i < R; i++)
                if (a->rules[i].policy != UINT32_MAX) {
                        nm_range *x = &a->policy_rule_ranges[a->rules[i].policy];
                        a->policy_rules[x->off + x->n++] = i;
                }

        nm_vec pairs = { 0 };   /* (group, policy) */
        for (uint32_t p = 0; p < NP; p++) {
                const nm_range *x = &a->policy_rule_ranges[p];
                for (uint32_t k = 0; k < x->n; k++) {
                        const nm_rule *r = &a->rules[a->policy_rules[x->off + k]];
                        for (uint32_t d = 0; d < r->n_dst_group_idx; d++) {
                                nm_vec_push(&pairs, r->dst_group_idx[d]);
                                nm_vec_push(&pairs, p);
                        }
                }
        }
        a->group_dst_pol = cp_xcalloc((size_t) a->n_groups + 1, sizeof *a->group_dst_pol);
        a->group_dst_policies = cp_xmalloc((pairs.n / 2 + 1) * sizeof *a->group_dst_policies);
        for (size_t i = 0; i < pairs.n; i += 2)
                a->group_dst_pol[pairs.v[i]].n++;
        o = 0;
        for (uint32_t g = 0; g < a->n_groups; g++) {
                a->group_dst_pol[g].off = o;
                o += a->group_dst_pol[g].n;
                a->group_dst_pol[g].n = 0;
        }
        /* pairs are in policy order, so each group's list is too; skip
         * repeats of the same policy */
        for (size_t i = 0; i < pairs.n; i += 2) {
                nm_range *x = &a->group_dst_pol[pairs.v[i]];
                if (x->n && a->group_dst_policies[x->off + x->n - 1] == pairs.v[i + 1])
                        continue;
                a->group_dst_policies[x->off + x->n++] = pairs.v[i + 1];
        }
        free(pairs.v);
}

/* ---- routes ------------------------------------------------------------------------------------ */

/* Route message body (section 1.6) for route r served by peer p. */
nm_span cp_netmap__encode_route(cp_netmap_account *a, const nm_route *r, const nm_peer *p, const char *id) {
        size_t s = a->blob.len;
        nm_put_str(&a->blob, 1, id);
        nm_put_str(&a->blob, 2, r->network);
        nm_put_uint(&a->blob, 3, (uint64_t) (int64_t) r->network_type);
        nm_put_str(&a->blob, 4, p->key);
        nm_put_uint(&a->blob, 5, (uint64_t) (int64_t) r->metric);
        nm_put_bool(&a->blob, 6, r->masquerade);
        nm_put_str(&a->blob, 7, r->net_id);
        for (uint32_t i = 0; i < r->n_domains; i++)
                nm_put_lenfield(&a->blob, 8, r->domains[i], strlen(r->domains[i]));
        nm_put_bool(&a->blob, 9, r->keep_route);
        nm_put_bool(&a->blob, 10, r->skip_auto_apply);
        return blob_span(a, s);
}

/* The default permit of a route without access-control groups:
 * RouteFirewallRule{0.0.0.0/0 -> network, ALL, accept}. */
static nm_span encode_default_permit(cp_netmap_account *a, const nm_route *r, const char *id) {
        size_t s = a->blob.len;
        nm_put_lenfield(&a->blob, 1, "0.0.0.0/0", 9);
        nm_put_str(&a->blob, 3, r->network);
        nm_put_uint(&a->blob, 4, 1);                    /* ALL */
        nm_put_lenfield(&a->blob, 5, "", 0);            /* empty PortInfo, present */
        nm_put_bool(&a->blob, 6, r->dynamic);
        for (uint32_t i = 0; i < r->n_domains; i++)
                nm_put_lenfield(&a->blob, 7, r->domains[i], strlen(r->domains[i]));
        nm_put_str(&a->blob, 10, id);
        return blob_span(a, s);
}

static void resolve_routes(cp_netmap_account *a, marker *mk) {
        uint32_t P = a->n_peers, G = a->n_groups;
        nm_map ha = { 0 };
        nm_vec ent = { 0 };     /* (route, peer, via_group) triples */
        uint32_t n_ha = 0;

        for (uint32_t i = 0; i < a->n_routes; i++) {
                nm_route *r = &a->routes[i];
                r->dist_groups = resolve_ids(a, r->groups, r->n_groups, &r->n_dist_groups);
                r->acg_idx = resolve_ids(a, r->acgs, r->n_acgs, &r->n_acg_idx);

                /* HA set: NetID + the network, or the domains of a dynamic route */
                nm_buf key = { 0 };
                nm_buf_add(&key, r->net_id, strlen(r->net_id));
                nm_buf_add(&key, "|", 1);
                if (r->dynamic && r->n_domains) {
                        for (uint32_t k = 0; k < r->n_domains; k++) {
                                if (k)
                                        nm_buf_add(&key, ", ", 2);
                                nm_buf_add(&key, r->domains[k], strlen(r->domains[k]));
                        }
                } else {
                        nm_buf_add(&key, r->network, strlen(r->network));
                }
                nm_buf_add(&key, "", 1);
                int64_t h = cp_netmap__map_get(&ha, (const char *) key.data);
                if (h < 0) {
                        const char *k = cp_netmap__arena_strdup(&a->arena, (const char *) key.data);
                        h = n_ha++;
                        (void) cp_netmap__map_put(&ha, k, (uint32_t) h);
                }
                r->ha = (uint32_t) h;
                cp_netmap__buf_release(&key);

                if (r->v6)
                        continue;       /* no IPv6 support: never sent */
                if (r->peer) {
                        int64_t p = cp_netmap__map_get(&a->peer_by_id, r->peer);
                        if (p >= 0 && validated(a, (uint32_t) p)) {
                                nm_vec_push(&ent, i);
                                nm_vec_push(&ent, (uint32_t) p);
                                nm_vec_push(&ent, 0);
                        }
                } else {
                        uint32_t gen = marker_next(mk, P);
                        for (uint32_t k = 0; k < r->n_peer_groups; k++) {
                                int64_t g = cp_netmap__map_get(&a->group_by_id, r->peer_groups[k]);
                                if (g < 0)
                                        continue;
                                for (uint32_t m = 0; m < a->groups[g].n_members; m++) {
                                        uint32_t p = a->groups[g].members[m];
                                        if (mk->stamp[p] == gen)
                                                continue;
                                        mk->stamp[p] = gen;
                                        nm_vec_push(&ent, i);
                                        nm_vec_push(&ent, p);
                                        nm_vec_push(&ent, 1);
                                }
                        }
                }
                if (r->n_acgs) {
                        uint32_t n;
                        r->dist_peers = peer_set(a, r->dist_groups, r->n_dist_groups, mk, &n);
                        r->n_dist_peers = n;
                }
        }
        cp_netmap__map_release(&ha);

        a->n_entries = (uint32_t) (ent.n / 3);
        a->entries = cp_xmalloc(((size_t) a->n_entries + 1) * sizeof *a->entries);
        uint32_t *pc = cp_xcalloc((size_t) P + 1, sizeof *pc);
        for (uint32_t e = 0; e < a->n_entries; e++) {
                nm_route *r = &a->routes[ent.v[3 * e]];
                const nm_peer *p = &a->peers[ent.v[3 * e + 1]];
                nm_route_entry *x = &a->entries[e];
                x->route = ent.v[3 * e];
                x->peer = ent.v[3 * e + 1];
                if (ent.v[3 * e + 2]) {
                        size_t n = strlen(r->id) + 1 + strlen(p->id) + 1;
                        char *id = cp_netmap__arena_alloc(&a->arena, n);
                        (void) snprintf(id, n, "%s:%s", r->id, p->id);
                        x->id = id;
                } else {
                        x->id = r->id;
                }
                x->msg = cp_netmap__encode_route(a, r, p, x->id);
                x->default_permit = r->n_acgs ? (nm_span) { 0, 0 } : encode_default_permit(a, r, x->id);
                if (!r->entries.n)
                        r->entries.off = e;
                r->entries.n++;
                pc[x->peer]++;
        }
        free(ent.v);

        a->peer_routes = cp_xmalloc(((size_t) a->n_entries + 1) * sizeof *a->peer_routes);
        uint32_t o = 0;
        for (uint32_t p = 0; p < P; p++) {
                a->peers[p].routes = (nm_range) { o, 0 };
                o += pc[p];
        }
        free(pc);
        for (uint32_t e = 0; e < a->n_entries; e++) {
                nm_range *x = &a->peers[a->entries[e].peer].routes;
                a->peer_routes[x->off + x->n++] = e;
        }

        /* group -> enabled routes distributed to it */
        uint32_t *gc = cp_xcalloc((size_t) G + 1, sizeof *gc);
        size_t total = 0;
        for (uint32_t i = 0; i < a->n_routes; i++) {
                nm_route *r = &a->routes[i];
                if (!r->enabled || r->v6)
                        continue;
                r->n_dist_groups = (uint32_t) cp_netmap__sort_unique(r->dist_groups, r->n_dist_groups);
                for (uint32_t k = 0; k < r->n_dist_groups; k++)
                        gc[r->dist_groups[k]]++;
                total += r->n_dist_groups;
        }
        a->group_routes = cp_xmalloc((total ? total : 1) * sizeof *a->group_routes);
        o = 0;
        for (uint32_t g = 0; g < G; g++) {
                a->groups[g].dist_routes = (nm_range) { o, 0 };
                o += gc[g];
        }
        free(gc);
        for (uint32_t i = 0; i < a->n_routes; i++) {
                const nm_route *r = &a->routes[i];
                if (!r->enabled || r->v6)
                        continue;
                for (uint32_t k = 0; k < r->n_dist_groups; k++) {
                        nm_range *x = &a->groups[r->dist_groups[k]].dist_routes;
                        a->group_routes[x->off + x->n++] = i;
                }
        }
}

/* ---- peers ----------------------------------------------------------------------------------------- */

static void ip_text(uint32_t ip, char buf[16]) {
        (void) snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

/* SimpleRecord {Name, Type A, Class IN, TTL 300, RData} as a CustomZone
 * field 2 entry. */
static void dns_record(cp_netmap_account *a, const char *label, const char *ip) {
        nm_buf rec = { 0 };
        char *name = cp_xasprintf("%s.%s", label, a->dns_domain);
        nm_put_str(&rec, 1, name);
        nm_put_uint(&rec, 2, 1);
        nm_put_str(&rec, 3, "IN");
        nm_put_uint(&rec, 4, 300);
        nm_put_str(&rec, 5, ip);
        nm_put_lenfield(&a->blob, 2, rec.data, rec.len);
        cp_netmap__buf_release(&rec);
        free(name);
}

static void encode_peer(cp_netmap_account *a, nm_peer *p) {
        nm_buf tmp = { 0 };
        char ipb[16], buf[64];
        const bool domain = a->dns_domain[0] != 0;
        char *fqdn = domain ? cp_xasprintf("%s.%s", p->dns_label, a->dns_domain) : NULL;
        size_t s;

        ip_text(p->ip, ipb);

        /* RemotePeerConfig: 1 wgPubKey, 2 allowedIps, 3 sshConfig{2 sshPubKey}
         * (always present), 4 fqdn, 5 agentVersion. */
        s = a->blob.len;
        nm_put_str(&a->blob, 1, p->key);
        (void) snprintf(buf, sizeof buf, "%s/32", ipb);
        nm_put_lenfield(&a->blob, 2, buf, strlen(buf));
        nm_put_str(&tmp, 2, p->ssh_key);
        nm_put_lenfield(&a->blob, 3, tmp.data, tmp.len);
        nm_put_str(&a->blob, 4, fqdn);
        nm_put_str(&a->blob, 5, p->wt_version);
        p->rpc = blob_span(a, s);

        /* FirewallRule 1 PeerIP and 9 sourcePrefixes (address + /32) */
        s = a->blob.len;
        nm_put_str(&a->blob, 1, ipb);
        p->fw_ip = blob_span(a, s);
        s = a->blob.len;
        uint8_t pfx[5] = { (uint8_t) (p->ip >> 24), (uint8_t) (p->ip >> 16), (uint8_t) (p->ip >> 8),
                           (uint8_t) p->ip, 32 };
        nm_put_lenfield(&a->blob, 9, pfx, sizeof pfx);
        p->fw_src = blob_span(a, s);
        s = a->blob.len;
        (void) snprintf(buf, sizeof buf, "%s/32", ipb);
        nm_put_str(&a->blob, 1, buf);
        p->rfw_src = blob_span(a, s);

        /* A records: the label and every extra label */
        s = a->blob.len;
        p->n_dns_recs = 0;
        if (domain && p->dns_label[0]) {
                dns_record(a, p->dns_label, ipb);
                p->n_dns_recs++;
                for (uint32_t i = 0; i < p->n_extra_labels; i++) {
                        if (!p->extra_labels[i][0])
                                continue;
                        dns_record(a, p->extra_labels[i], ipb);
                        p->n_dns_recs++;
                }
        }
        p->dns_recs = blob_span(a, s);

        /* PeerConfig: 1 address; (3 sshConfig per encode); 4 fqdn,
         * 5 RoutingPeerDnsResolutionEnabled, 6 LazyConnectionEnabled,
         * 8 autoUpdate{1 version, 2 alwaysUpdate}. */
        s = a->blob.len;
        (void) snprintf(buf, sizeof buf, "%s/%u", ipb, a->prefix_len);
        nm_put_str(&a->blob, 1, buf);
        p->pc_head = blob_span(a, s);
        s = a->blob.len;
        nm_put_str(&a->blob, 4, fqdn);
        nm_put_bool(&a->blob, 5, a->routing_peer_dns);
        nm_put_bool(&a->blob, 6, a->lazy_connection);
        tmp.len = 0;
        nm_put_str(&tmp, 1, a->auto_update_version);
        nm_put_bool(&tmp, 2, a->auto_update_always);
        nm_put_lenfield(&a->blob, 8, tmp.data, tmp.len);
        p->pc_tail = blob_span(a, s);

        cp_netmap__buf_release(&tmp);
        free(fqdn);
}

/* DNSConfig.ForwarderPort: 22054 only when every peer runs >= 0.59.0
 * (golang.org/x/mod/semver rules: a pre-release of 0.59.0 is older). */
static int forwarder_port(const cp_netmap_account *a) {
        if (!a->n_peers)
                return 5353;
        for (uint32_t i = 0; i < a->n_peers; i++) {
                nm_version v;
                cp_netmap__version_parse(a->peers[i].wt_version, &v);
                if (v.dev)
                        continue;
                if (!v.ok || v.v_prefix || v.core < NM_VER(0, 59, 0) ||
                    (v.core == NM_VER(0, 59, 0) && v.prerelease))
                        return 5353;
        }
        return 22054;
}

int cp_netmap__finish(cp_netmap_account *a, cp_error *reterr) {
        const uint32_t **all_members = cp_xcalloc((size_t) a->n_groups + 1, sizeof *all_members);
        uint32_t *all_n = cp_xcalloc((size_t) a->n_groups + 1, sizeof *all_n);
        marker mk = { .stamp = cp_xcalloc((size_t) a->n_peers + 1, sizeof *mk.stamp) };

        if (a->built) {
                free(all_members);
                free(all_n);
                free(mk.stamp);
                return cp_error_set(reterr, -EALREADY, "netmap: snapshot already finished");
        }

        resolve_groups(a, all_members, all_n);

        for (uint32_t i = 0; i < a->n_dns_disabled_groups; i++) {
                int64_t g = cp_netmap__map_get(&a->group_by_id, a->dns_disabled_groups[i]);
                if (g < 0)
                        continue;
                for (uint32_t k = 0; k < all_n[g]; k++)
                        a->peers[all_members[g][k]].flags |= NM_PEER_DNS_DISABLED;
        }
        free(all_members);
        free(all_n);

        cp_netmap__posture_finish(a);
        resolve_rules(a, &mk);
        resolve_routes(a, &mk);
        cp_netmap__networks_finish(a);
        for (uint32_t i = 0; i < a->n_nsgroups; i++) {
                nm_nsgroup *g = &a->nsgroups[i];
                g->group_idx = resolve_ids(a, g->groups, g->n_groups, &g->n_group_idx);
        }
        free(mk.stamp);

        for (uint32_t i = 0; i < a->n_peers; i++)
                encode_peer(a, &a->peers[i]);
        a->forwarder_port = forwarder_port(a);
        if (a->dns_domain[0]) {
                size_t s = a->blob.len, n = strlen(a->dns_domain);
                char *d = cp_xasprintf("%s%s", a->dns_domain, a->dns_domain[n - 1] == '.' ? "" : ".");
                nm_put_str(&a->blob, 1, d);
                free(d);
                a->zone_domain = blob_span(a, s);
        }
        cp_netmap__zones_finish(a);
        if (a->blob.len > INT32_MAX)
                return cp_error_set(reterr, -E2BIG, "netmap: account too large to encode");
        a->built = true;
        return 0;
}
