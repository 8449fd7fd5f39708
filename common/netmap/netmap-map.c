/*
 * netmap-map.c: one peer's network map, computed from a finished snapshot
 * into a worker (netbird-protocol.md 4.3). Everything here is per-peer
 * work: walking the target's rules and routes and collecting indexes.
 * Nothing is allocated once the worker's buffers have grown to the
 * account's size.
 */
#include "cp/base.h"

#include "netmap-int.h"

cp_netmap_worker *cp_netmap_worker_new(void) {
        return cp_xcalloc(1, sizeof(cp_netmap_worker));
}

cp_netmap_worker *cp_netmap_worker_free(cp_netmap_worker *w) {
        if (!w)
                return NULL;
        free(w->vis);
        free(w->rel);
        free(w->grp);
        free(w->touched.v);
        free(w->remotes.v);
        free(w->offline.v);
        free(w->relevant.v);
        free(w->routes.v);
        free(w->own_ha.v);
        free(w->nsgroups.v);
        free(w->zones.v);
        free(w->fw);
        free(w->rfw.v);
        free(w->nw_scratch.v);
        cp_netmap__buf_release(&w->side);
        cp_netmap__buf_release(&w->out);
        free(w);
        return NULL;
}

/* Bitsets are all-zero between calls: every bit set is cleared again
 * when its set is extracted. */
static void size_bits(uint64_t **bits, size_t *words, size_t need) {
        if (need <= *words)
                return;
        free(*bits);
        *bits = cp_xcalloc(need, sizeof **bits);
        *words = need;
}

static void ensure(cp_netmap_worker *w, const cp_netmap_account *a) {
        size_t pw = ((size_t) a->n_peers + 63) / 64 + 1, gw = ((size_t) a->n_groups + 63) / 64 + 1;
        if (pw > w->peer_words) {
                size_t old = w->peer_words;
                size_bits(&w->vis, &old, pw);
                old = w->peer_words;
                size_bits(&w->rel, &old, pw);
                w->peer_words = pw;
        }
        size_bits(&w->grp, &w->group_words, gw);
}

static inline bool bit_test(const uint64_t *b, uint32_t i) {
        return (b[i >> 6] >> (i & 63)) & 1;
}

/* Sets bit i; remembers it in touched when it was clear. */
static inline void bit_mark(uint64_t *b, nm_vec *touched, uint32_t i) {
        uint64_t m = (uint64_t) 1 << (i & 63);
        if (!(b[i >> 6] & m)) {
                b[i >> 6] |= m;
                nm_vec_push(touched, i);
        }
}

/* Moves the set bits of b into out (ascending) and clears them. A scan
 * of the whole bitset is cheap when many bits are set; a sort of the
 * touched list when few are. */
static void extract(uint64_t *b, size_t words, nm_vec *touched, nm_vec *out) {
        out->n = 0;
        if (touched->n * 16 >= words) {
                for (size_t i = 0; i < words; i++) {
                        uint64_t x = b[i];
                        if (!x)
                                continue;
                        b[i] = 0;
                        while (x) {
                                nm_vec_push(out, (uint32_t) (i * 64 + (size_t) __builtin_ctzll(x)));
                                x &= x - 1;
                        }
                }
        } else {
                for (size_t i = 0; i < touched->n; i++) {
                        uint32_t k = touched->v[i];
                        b[k >> 6] &= ~((uint64_t) 1 << (k & 63));
                        nm_vec_push(out, k);
                }
                out->n = cp_netmap__sort_unique(out->v, out->n);
        }
        touched->n = 0;
}

static void push_fw(cp_netmap_worker *w, uint32_t peer, nm_tmpl_list tl) {
        if (w->n_fw == w->cap_fw) {
                w->cap_fw = w->cap_fw ? w->cap_fw * 2 : 256;
                w->fw = cp_xrealloc(w->fw, w->cap_fw * sizeof *w->fw);
        }
        w->fw[w->n_fw++] = (nm_fw) { peer, tl.first, tl.n };
        w->n_fw_msgs += tl.n;
}

static inline void visit(cp_netmap_worker *w, uint32_t self, uint32_t q, nm_tmpl_list tl) {
        if (q == self)
                return;
        bit_mark(w->vis, &w->touched, q);
        if (tl.n)
                push_fw(w, q, tl);
}

/* The remote peers of one (rule, direction): the union of two sorted
 * sets, either of which may be absent. Visibility is recorded for every
 * remote even when the rule expands to no firewall rule for this agent:
 * NetBird adds the peer before expanding ports. */
static void emit_dir(cp_netmap_worker *w, uint32_t self, nm_tmpl_list tl, const uint32_t *x, uint32_t nx,
                     const uint32_t *y, uint32_t ny) {
        if (!x || x == y) {
                x = y;
                nx = ny;
                y = NULL;
        }
        if (!y) {
                for (uint32_t i = 0; i < nx; i++)
                        visit(w, self, x[i], tl);
                return;
        }
        uint32_t i = 0, j = 0;
        while (i < nx || j < ny) {
                uint32_t q;
                if (j >= ny || (i < nx && x[i] < y[j]))
                        q = x[i++];
                else if (i >= nx || y[j] < x[i])
                        q = y[j++];
                else {
                        q = x[i++];
                        j++;
                }
                visit(w, self, q, tl);
        }
}

/* One rule's share (section 4.3 step 4): P in sources -> destinations OUT
 * (+ IN when bidirectional); P in destinations -> sources IN (+ OUT).
 * fw false: visibility only, no firewall rules collected. */
static void apply_rule(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self, uint32_t ri, bool in_src,
                       bool in_dst, bool fw) {
        const nm_rule *r = &a->rules[ri];
        const uint32_t *s = r->src, *d = r->dst;
        uint32_t ns = r->n_src, nd = r->n_dst;
        bool bi = r->bidirectional;
        nm_tmpl_list none = { 0, 0 };

        emit_dir(w, self, fw ? r->tmpl[NM_IN][w->variant] : none, in_dst ? s : NULL, in_dst ? ns : 0,
                 bi && in_src ? d : NULL, bi && in_src ? nd : 0);
        emit_dir(w, self, fw ? r->tmpl[NM_OUT][w->variant] : none, in_src ? d : NULL, in_src ? nd : 0,
                 bi && in_dst ? s : NULL, bi && in_dst ? ns : 0);
        if (in_dst && r->protocol == CP_NETMAP_PROTO_NETBIRD_SSH)
                w->ssh = true;
}

/* The policy step for peer p: walks its two sorted rule lists together
 * and marks every remote peer in w->vis (self excluded; UINT32_MAX
 * excludes nobody). */
static void walk_rules(cp_netmap_worker *w, const cp_netmap_account *a, const nm_peer *p, uint32_t self, bool fw) {
        const uint32_t *sr = a->peer_rules + p->src_rules.off, *dr = a->peer_rules + p->dst_rules.off;
        uint32_t ns = p->src_rules.n, nd = p->dst_rules.n, i = 0, j = 0;

        while (i < ns || j < nd) {
                uint32_t ri = i < ns && (j >= nd || sr[i] <= dr[j]) ? sr[i] : dr[j];
                bool in_src = i < ns && sr[i] == ri, in_dst = j < nd && dr[j] == ri;
                i += in_src;
                j += in_dst;
                apply_rule(w, a, self, ri, in_src, in_dst, fw);
        }
}

static bool in_groups(const cp_netmap_worker *w, const uint32_t *groups, uint32_t n) {
        for (uint32_t i = 0; i < n; i++)
                if (bit_test(w->grp, groups[i]))
                        return true;
        return false;
}

/* Every routing peer of route r is relevant to the target (DNS records,
 * route ACL sources), as NetBird puts route advertisers into the map's
 * component peers. */
static void mark_advertisers(cp_netmap_worker *w, const cp_netmap_account *a, const nm_route *r) {
        for (uint32_t k = 0; k < r->entries.n; k++)
                bit_mark(w->rel, &w->touched, a->entries[r->entries.off + k].peer);
}

/* ---- route firewall rules (the target is a routing peer) ------------------------------- */

static void side_span(cp_netmap_worker *w, size_t start) {
        nm_vec_push(&w->rfw, (uint32_t) start);
        nm_vec_push(&w->rfw, (uint32_t) (w->side.len - start));
}

static void rfw_one(cp_netmap_worker *w, const cp_netmap_account *a, const nm_route *r, const nm_route_entry *e,
                    const nm_rule *rule, const nm_buf *sources, const uint8_t *portinfo, size_t portinfo_len) {
        static const uint8_t proto[] = { 1, 2, 3, 4, 6 };       /* NETBIRD_SSH stays 6 here */
        size_t s = w->side.len;

        nm_buf_add(&w->side, sources->data, sources->len);
        nm_put_uint(&w->side, 2, rule->action);
        nm_put_str(&w->side, 3, r->network);
        nm_put_uint(&w->side, 4, proto[rule->protocol]);
        nm_put_lenfield(&w->side, 5, portinfo, portinfo_len);
        nm_put_bool(&w->side, 6, r->dynamic);
        for (uint32_t i = 0; i < r->n_domains; i++)
                nm_put_lenfield(&w->side, 7, r->domains[i], strlen(r->domains[i]));
        nm_put_str(&w->side, 9, a->policies[rule->policy].id);
        nm_put_str(&w->side, 10, e->id);
        side_span(w, s);
}

/* Rules of route entry e from one policy rule: sources are the rule's
 * source peers that are in the route's distribution groups, are not the
 * target and are relevant to it; one RouteFirewallRule per port or
 * range (GenerateRouteFirewallRules). A rule whose sources end up empty
 * is left out: agents refuse it ("source ranges empty"). */
static void rfw_rule(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self, const nm_route *r,
                     const nm_route_entry *e, const nm_rule *rule, nm_buf *sources) {
        const uint32_t *x = rule->src, *y = r->dist_peers;
        uint32_t nx = rule->n_src, ny = r->n_dist_peers, i = 0, j = 0;

        sources->len = 0;
        while (i < nx && j < ny) {
                if (x[i] < y[j])
                        i++;
                else if (y[j] < x[i])
                        j++;
                else {
                        uint32_t q = x[i];
                        i++;
                        j++;
                        if (q == self || !bit_test(w->rel, q))
                                continue;
                        nm_span sp = a->peers[q].rfw_src;
                        nm_buf_add(sources, a->blob.data + sp.off, sp.len);
                }
        }
        cp_netmap__rfw_ports(w, a, r, e, rule, sources);
}

void cp_netmap__rfw_ports(cp_netmap_worker *w, const cp_netmap_account *a, const nm_route *r,
                          const nm_route_entry *e, const nm_rule *rule, const nm_buf *sources) {
        if (!sources->len)
                return;

        uint8_t pi[24] = { 0 };
        if (rule->n_ports) {
                for (uint32_t k = 0; k < rule->n_ports; k++) {
                        bool dup = false;
                        for (uint32_t m = 0; m < k; m++)
                                dup |= rule->ports[m] == rule->ports[k];
                        if (dup)
                                continue;
                        uint8_t *p = pi;
                        *p++ = NM_TAG(1, NM_WT_VARINT);
                        p = nm_vput(p, rule->ports[k]);
                        rfw_one(w, a, r, e, rule, sources, pi, (size_t) (p - pi));
                }
        } else if (rule->n_ranges) {
                for (uint32_t k = 0; k < rule->n_ranges; k++) {
                        uint32_t st = rule->ranges[k].start, en = rule->ranges[k].end;
                        bool dup = false;
                        for (uint32_t m = 0; m < k; m++)
                                dup |= rule->ranges[m].start == st && rule->ranges[m].end == en;
                        if (dup)
                                continue;
                        size_t n = 0;
                        if (st && en) {
                                uint8_t rb[12], *p = rb;
                                *p++ = NM_TAG(1, NM_WT_VARINT);
                                p = nm_vput(p, st);
                                *p++ = NM_TAG(2, NM_WT_VARINT);
                                p = nm_vput(p, en);
                                uint8_t *q = pi;
                                *q++ = NM_TAG(2, NM_WT_LEN);
                                q = nm_vput(q, (uint64_t) (p - rb));
                                memcpy(q, rb, (size_t) (p - rb));
                                n = (size_t) (q - pi) + (size_t) (p - rb);
                        }
                        rfw_one(w, a, r, e, rule, sources, pi, n);
                }
        } else {
                rfw_one(w, a, r, e, rule, sources, pi, 0);
        }
}

static void route_firewall(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self) {
        const nm_peer *p = &a->peers[self];
        nm_buf sources = { 0 };

        for (uint32_t k = 0; k < p->routes.n; k++) {
                const nm_route_entry *e = &a->entries[a->peer_routes[p->routes.off + k]];
                const nm_route *r = &a->routes[e->route];
                if (!r->enabled)
                        continue;
                if (!r->n_acgs) {
                        nm_vec_push(&w->rfw, NM_RFW_BLOB | e->default_permit.off);
                        nm_vec_push(&w->rfw, e->default_permit.len);
                        continue;
                }
                for (uint32_t g = 0; g < r->n_acg_idx; g++) {
                        const nm_range *pl = &a->group_dst_pol[r->acg_idx[g]];
                        for (uint32_t m = 0; m < pl->n; m++) {
                                uint32_t pol = a->group_dst_policies[pl->off + m];
                                if (!a->policies[pol].enabled)
                                        continue;
                                const nm_range *rl = &a->policy_rule_ranges[pol];
                                for (uint32_t q = 0; q < rl->n; q++) {
                                        const nm_rule *rule = &a->rules[a->policy_rules[rl->off + q]];
                                        if (rule->active)
                                                rfw_rule(w, a, self, r, e, rule, &sources);
                                }
                        }
                }
        }
        cp_netmap__buf_release(&sources);
}

/* ---- the map ---------------------------------------------------------------------------------- */

static void peer_config(cp_netmap_worker *w, const cp_netmap_account *a, const nm_peer *p, const void *jwt,
                        size_t jwt_len) {
        uint8_t ssh[16];
        size_t n = 0;

        nm_buf_add(&w->side, a->blob.data + p->pc_head.off, p->pc_head.len);
        /* SSHConfig is always present: {1 sshEnabled, 3 jwtConfig} */
        if (w->ssh)
                ssh[n++] = NM_TAG(1, NM_WT_VARINT), ssh[n++] = 1;
        bool with_jwt = w->ssh && jwt;
        size_t body = n + (with_jwt ? nm_fsize(jwt_len) : 0);
        uint8_t hdr[12], *h = hdr;
        *h++ = NM_TAG(3, NM_WT_LEN);
        h = nm_vput(h, body);
        nm_buf_add(&w->side, hdr, (size_t) (h - hdr));
        nm_buf_add(&w->side, ssh, n);
        if (with_jwt)
                nm_put_lenfield(&w->side, 3, jwt, jwt_len);
        nm_buf_add(&w->side, a->blob.data + p->pc_tail.off, p->pc_tail.len);
        w->pc_len = w->side.len;
}

void cp_netmap__compute(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t self, const void *jwt,
                 size_t jwt_len) {
        const nm_peer *p = &a->peers[self];
        size_t words = ((size_t) a->n_peers + 63) / 64;

        ensure(w, a);
        w->remotes.n = w->offline.n = w->relevant.n = w->routes.n = w->own_ha.n = w->nsgroups.n = 0;
        w->n_fw = w->n_fw_msgs = 0;
        w->side.len = 0;
        w->rfw.n = 0;
        w->n_dns_recs = 0;
        w->zones.n = 0;
        w->ssh = p->flags & NM_PEER_SSH_ENABLED;
        w->dns = !(p->flags & NM_PEER_DNS_DISABLED);
        w->unvalidated = p->flags & NM_PEER_UNVALIDATED;
        w->variant = ((p->flags & NM_PEER_PORT_RANGES) ? 1u : 0u) |
                     ((p->flags & NM_PEER_NATIVE_SSH) && (p->flags & NM_PEER_SSH_ENABLED) &&
                                      (p->flags & NM_PEER_SERVER_SSH)
                              ? 2u
                              : 0u);

        if (w->unvalidated) {
                /* Waiting for approval: nothing but the peer config (4.2). */
                w->dns = false;
                peer_config(w, a, p, jwt, jwt_len);
                return;
        }

        walk_rules(w, a, p, self, true);
        peer_config(w, a, p, jwt, jwt_len);

        /* Visible peers: login-expired ones go to offlinePeers (pitfall 11). */
        nm_vec *vis = &w->relevant;     /* reused as scratch */
        extract(w->vis, words, &w->touched, vis);
        for (size_t k = 0; k < vis->n; k++) {
                uint32_t q = vis->v[k];
                nm_vec_push((a->peers[q].flags & NM_PEER_EXPIRED) ? &w->offline : &w->remotes, q);
                bit_mark(w->rel, &w->touched, q);
        }
        bit_mark(w->rel, &w->touched, self);

        for (uint32_t k = 0; k < p->groups.n; k++) {
                uint32_t g = a->peer_groups[p->groups.off + k];
                w->grp[g >> 6] |= (uint64_t) 1 << (g & 63);
        }

        /* Routes (4.3): the target's own routes first (it serves them; the
         * agent recognises its own key), then the enabled routes of each
         * connectable peer distributed to the target's groups, minus the
         * HA sets the target serves itself. */
        for (uint32_t k = 0; k < p->routes.n; k++) {
                uint32_t e = a->peer_routes[p->routes.off + k];
                const nm_route *r = &a->routes[a->entries[e].route];
                nm_vec_push(&w->own_ha, r->ha);
                mark_advertisers(w, a, r);
                if (r->enabled)
                        nm_vec_push(&w->routes, e);
        }
        for (size_t k = 0; k < w->remotes.n; k++) {
                const nm_peer *q = &a->peers[w->remotes.v[k]];
                for (uint32_t m = 0; m < q->routes.n; m++) {
                        uint32_t e = a->peer_routes[q->routes.off + m];
                        const nm_route *r = &a->routes[a->entries[e].route];
                        if (!r->enabled || !in_groups(w, r->dist_groups, r->n_dist_groups))
                                continue;
                        bool own = false;
                        for (size_t h = 0; h < w->own_ha.n && !own; h++)
                                own = w->own_ha.v[h] == r->ha;
                        if (!own)
                                nm_vec_push(&w->routes, e);
                }
        }
        for (uint32_t k = 0; k < p->groups.n; k++) {
                const nm_range *dr2 = &a->groups[a->peer_groups[p->groups.off + k]].dist_routes;
                for (uint32_t m = 0; m < dr2->n; m++)
                        mark_advertisers(w, a, &a->routes[a->group_routes[dr2->off + m]]);
        }

        if (p->routes.n)
                route_firewall(w, a, self);
        if (a->nw)
                cp_netmap__networks_compute(w, a, self);

        /* DNS (4.3): the peer zone holds the relevant peers' records;
         * nameserver groups apply by group, except to their own servers. */
        if (w->dns) {
                for (uint32_t k = 0; k < a->n_nsgroups; k++) {
                        const nm_nsgroup *g = &a->nsgroups[k];
                        if (!g->enabled || !in_groups(w, g->group_idx, g->n_group_idx))
                                continue;
                        bool self_ns = false;
                        for (uint32_t m = 0; m < g->n_ns && !self_ns; m++)
                                self_ns = strcmp(g->ns_ips[m], p->ip_str) == 0;
                        if (!self_ns)
                                nm_vec_push(&w->nsgroups, k);
                }
        }
        cp_netmap__zones_pick(w, a);
        extract(w->rel, words, &w->touched, &w->relevant);
        if (w->dns && a->zone_domain.len)
                for (size_t k = 0; k < w->relevant.n; k++)
                        w->n_dns_recs += a->peers[w->relevant.v[k]].n_dns_recs;

        for (uint32_t k = 0; k < p->groups.n; k++) {
                uint32_t g = a->peer_groups[p->groups.off + k];
                w->grp[g >> 6] &= ~((uint64_t) 1 << (g & 63));
        }
}

/* ---- what the REST API shows of a map -------------------------------------------------- */

int cp_netmap_visible_peers(cp_netmap_worker *w, const cp_netmap_account *a, size_t peer_idx,
                            cp_netmap_visible *ret) {
        if (!w || !a || !ret || peer_idx >= a->n_peers)
                return -EINVAL;
        cp_netmap__compute(w, a, (uint32_t) peer_idx, NULL, 0);
        ret->remote = w->remotes.v;
        ret->n_remote = w->remotes.n;
        ret->offline = w->offline.v;
        ret->n_offline = w->offline.n;
        return 0;
}

/* Peers whose rule lists are equal see the same set of peers (less
 * themselves), so the set is built once per distinct pair of lists: a
 * mesh of 25,000 peers under one policy is one union, not 25,000. */
typedef struct sig_entry {
        uint64_t hash;
        uint32_t peer;
} sig_entry;

static uint64_t sig_hash(const cp_netmap_account *a, const nm_peer *p) {
        uint64_t h = UINT64_C(14695981039346656037);
        const uint32_t *v = a->peer_rules + p->src_rules.off;

        for (uint32_t k = 0; k < p->src_rules.n; k++)
                h = (h ^ v[k]) * UINT64_C(1099511628211);
        h = (h ^ UINT32_MAX) * UINT64_C(1099511628211);         /* between the two lists */
        v = a->peer_rules + p->dst_rules.off;
        for (uint32_t k = 0; k < p->dst_rules.n; k++)
                h = (h ^ v[k]) * UINT64_C(1099511628211);
        return h;
}

static bool same_range(const cp_netmap_account *a, nm_range x, nm_range y) {
        return x.n == y.n && memcmp(a->peer_rules + x.off, a->peer_rules + y.off, x.n * sizeof(uint32_t)) == 0;
}

static bool same_sig(const cp_netmap_account *a, const nm_peer *p, const nm_peer *q) {
        return same_range(a, p->src_rules, q->src_rules) && same_range(a, p->dst_rules, q->dst_rules);
}

static int cmp_sig(const void *x, const void *y) {
        const sig_entry *l = x, *r = y;

        if (l->hash != r->hash)
                return l->hash < r->hash ? -1 : 1;
        return l->peer < r->peer ? -1 : l->peer > r->peer;
}

/* Clears the bits the last union set. */
static void clear_vis(cp_netmap_worker *w) {
        for (size_t k = 0; k < w->touched.n; k++) {
                uint32_t q = w->touched.v[k];
                w->vis[q >> 6] &= ~((uint64_t) 1 << (q & 63));
        }
        w->touched.n = 0;
}

int cp_netmap_visible_counts(cp_netmap_worker *w, const cp_netmap_account *a, uint32_t *counts) {
        size_t n = a ? a->n_peers : 0;
        const nm_peer *rep = NULL;

        if (!w || !a || (!counts && n))
                return -EINVAL;
        if (n == 0)
                return 0;
        ensure(w, a);
        w->touched.n = 0;
        sig_entry *order = cp_xmalloc(n * sizeof *order);
        for (size_t i = 0; i < n; i++)
                order[i] = (sig_entry) { sig_hash(a, &a->peers[i]), (uint32_t) i };
        qsort(order, n, sizeof *order, cmp_sig);

        for (size_t k = 0; k < n; k++) {
                uint32_t i = order[k].peer;
                const nm_peer *p = &a->peers[i];
                if (p->flags & NM_PEER_UNVALIDATED) {
                        counts[i] = 0;  /* its own map is empty (4.2) */
                        continue;
                }
                if (!rep || order[k].hash != order[k - 1].hash || !same_sig(a, rep, p)) {
                        clear_vis(w);
                        walk_rules(w, a, p, UINT32_MAX, false);
                        rep = p;
                }
                /* touched holds each set bit once: the union's size. */
                counts[i] = (uint32_t) w->touched.n - (bit_test(w->vis, i) ? 1u : 0u);
        }
        clear_vis(w);
        free(order);
        return 0;
}
