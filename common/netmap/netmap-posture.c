/*
 * Posture checks in the network map (NetBird's
 * Account.validatePostureChecksOnPeer / getAllPeersFromGroups and
 * getPeerPostureChecks / toProtocolChecks).
 *
 * The builder collects the account's posture checks (the API's "checks"
 * JSON), each policy's source posture checks and each peer's posture
 * meta, all by id. At finish, once per snapshot: every check is evaluated
 * on every peer into a bitset; a policy's pass set is the AND of its
 * checks' sets; each active rule of a policy with checks keeps only the
 * source peers in that set (its destinations are untouched, as in
 * NetBird); and each peer gets its SyncResponse.Checks fields pre-encoded
 * (the process paths of the checks of enabled policies with an enabled
 * rule whose source groups hold the peer).
 */
#include "netmap-int.h"

#include <jansson.h>

#include "cp/posture.h"

typedef struct pc_check {
        const char *id;
        json_t *checks;
        uint64_t *pass;         /* bit per peer */
} pc_check;

typedef struct pc_policy_ref {
        const char *policy_id;
        const char **ids;
        uint32_t n_ids;
} pc_policy_ref;

typedef struct pc_peer_meta {
        const char *peer_id;
        cp_posture_peer m;      /* strings in the arena */
} pc_peer_meta;

struct nm_posture {
        pc_check *checks;
        uint32_t n_checks, cap_checks;
        pc_policy_ref *refs;
        uint32_t n_refs, cap_refs;
        pc_peer_meta *metas;
        uint32_t n_metas, cap_metas;
        nm_map check_by_id;
        /* resolved at finish */
        uint64_t **policy_pass;         /* per policy: NULL = no checks, else its pass bitset */
        nm_span *peer_checks;           /* per peer: SyncResponse field 6 entries */
};

#define PC_GROW(arr, n, cap)                                                                    \
        do {                                                                                    \
                if ((n) == (cap)) {                                                             \
                        (cap) = (cap) ? (cap) * 2 : 8;                                          \
                        (arr) = cp_xrealloc((arr), (size_t) (cap) * sizeof *(arr));             \
                }                                                                               \
        } while (0)

static struct nm_posture *posture(cp_netmap_account *a) {
        if (!a->posture)
                a->posture = cp_xcalloc(1, sizeof *a->posture);
        return a->posture;
}

static const char **strs_dup(cp_netmap_account *a, const char *const *v, size_t n) {
        const char **out = cp_netmap__arena_alloc(&a->arena, (n ? n : 1) * sizeof *out);
        for (size_t i = 0; i < n; i++)
                out[i] = cp_netmap__arena_strdup(&a->arena, v[i]);
        return out;
}

int cp_netmap_builder_add_posture_check(cp_netmap_builder *b, const char *id, const char *checks_json,
                                        cp_error *reterr) {
        cp_netmap_account *a = b->a;
        struct nm_posture *ps = posture(a);

        if (!id || !*id)
                return cp_error_set(reterr, -EINVAL, "netmap: posture check id missing");
        if (cp_netmap__map_get(&ps->check_by_id, id) >= 0)
                return cp_error_set(reterr, -EEXIST, "netmap: posture check %s added twice", id);
        json_t *j = json_loads(checks_json ? checks_json : "{}", 0, NULL);
        if (!json_is_object(j)) {
                json_decref(j);
                return cp_error_set(reterr, -EINVAL, "netmap: posture check %s is not a JSON object", id);
        }
        PC_GROW(ps->checks, ps->n_checks, ps->cap_checks);
        ps->checks[ps->n_checks] = (pc_check) { .id = cp_netmap__arena_strdup(&a->arena, id), .checks = j };
        (void) cp_netmap__map_put(&ps->check_by_id, ps->checks[ps->n_checks].id, ps->n_checks);
        ps->n_checks++;
        return 0;
}

int cp_netmap_builder_set_policy_posture_checks(cp_netmap_builder *b, const char *policy_id,
                                                const char *const *ids, size_t n, cp_error *reterr) {
        cp_netmap_account *a = b->a;
        struct nm_posture *ps = posture(a);

        if (!policy_id || !*policy_id)
                return cp_error_set(reterr, -EINVAL, "netmap: policy id missing");
        if (n == 0)
                return 0;
        PC_GROW(ps->refs, ps->n_refs, ps->cap_refs);
        ps->refs[ps->n_refs++] = (pc_policy_ref) {
                .policy_id = cp_netmap__arena_strdup(&a->arena, policy_id),
                .ids = strs_dup(a, ids, n),
                .n_ids = (uint32_t) n,
        };
        return 0;
}

int cp_netmap_builder_set_peer_posture(cp_netmap_builder *b, const char *peer_id, const cp_posture_peer *m,
                                       cp_error *reterr) {
        cp_netmap_account *a = b->a;
        struct nm_posture *ps = posture(a);
        nm_arena *ar = &a->arena;

        if (!peer_id || !*peer_id || !m)
                return cp_error_set(reterr, -EINVAL, "netmap: peer id missing");
        PC_GROW(ps->metas, ps->n_metas, ps->cap_metas);
        ps->metas[ps->n_metas++] = (pc_peer_meta) {
                .peer_id = cp_netmap__arena_strdup(ar, peer_id),
                .m = {
                        .wt_version = cp_netmap__arena_strdup(ar, m->wt_version),
                        .go_os = cp_netmap__arena_strdup(ar, m->go_os),
                        .os_version = cp_netmap__arena_strdup(ar, m->os_version),
                        .kernel_version = cp_netmap__arena_strdup(ar, m->kernel_version),
                        .net_addrs = strs_dup(a, m->net_addrs, m->n_net_addrs),
                        .n_net_addrs = m->n_net_addrs,
                        .connection_ip = cp_netmap__arena_strdup(ar, m->connection_ip),
                        .running = strs_dup(a, m->running, m->n_running),
                        .n_running = m->n_running,
                        .country_code = cp_netmap__arena_strdup(ar, m->country_code),
                        .city_name = cp_netmap__arena_strdup(ar, m->city_name),
                },
        };
        return 0;
}

/* ---- finish ---------------------------------------------------------------------------------- */

static inline bool bit(const uint64_t *s, uint32_t i) {
        return (s[i / 64] >> (i % 64)) & 1;
}

/* Each check on each peer, once. */
static void evaluate(cp_netmap_account *a, struct nm_posture *ps, size_t words) {
        const cp_posture_peer **meta = cp_xcalloc((size_t) a->n_peers + 1, sizeof *meta);

        for (uint32_t i = 0; i < ps->n_metas; i++) {
                int64_t p = cp_netmap__map_get(&a->peer_by_id, ps->metas[i].peer_id);
                if (p >= 0)
                        meta[p] = &ps->metas[i].m;
        }
        for (uint32_t c = 0; c < ps->n_checks; c++) {
                pc_check *k = &ps->checks[c];
                k->pass = cp_xcalloc(words, sizeof *k->pass);
                for (uint32_t p = 0; p < a->n_peers; p++) {
                        cp_posture_peer none = { .wt_version = a->peers[p].wt_version, .go_os = "",
                                                 .os_version = "", .kernel_version = "", .connection_ip = "",
                                                 .country_code = "", .city_name = "" };
                        if (cp_posture_check_peer(k->checks, meta[p] ? meta[p] : &none))
                                k->pass[p / 64] |= UINT64_C(1) << (p % 64);
                }
        }
        free(meta);
}

/* A policy's pass set: the AND of its known checks (unknown ids are
 * skipped, as NetBird skips them); NULL when none applies. */
static void policy_sets(cp_netmap_account *a, struct nm_posture *ps, size_t words) {
        ps->policy_pass = cp_xcalloc((size_t) a->n_policies + 1, sizeof *ps->policy_pass);
        for (uint32_t r = 0; r < ps->n_refs; r++) {
                int64_t pol = cp_netmap__map_get(&a->policy_by_id, ps->refs[r].policy_id);
                if (pol < 0)
                        continue;
                for (uint32_t i = 0; i < ps->refs[r].n_ids; i++) {
                        int64_t c = cp_netmap__map_get(&ps->check_by_id, ps->refs[r].ids[i]);
                        if (c < 0)
                                continue;
                        uint64_t **set = &ps->policy_pass[pol];
                        if (!*set) {
                                *set = cp_netmap__arena_alloc(&a->arena, words * sizeof **set);
                                memcpy(*set, ps->checks[c].pass, words * sizeof **set);
                        } else {
                                for (size_t w = 0; w < words; w++)
                                        (*set)[w] &= ps->checks[c].pass[w];
                        }
                }
        }
}

/* SyncResponse.Checks per peer: for each enabled policy with checks and an
 * enabled rule whose source groups hold the peer, its checks (each once,
 * in policy then list order) that carry process paths. */
static void encode_checks(cp_netmap_account *a, struct nm_posture *ps, size_t words) {
        uint32_t *seen = cp_xcalloc((size_t) ps->n_checks + 1, sizeof *seen);
        uint64_t **members = cp_xcalloc((size_t) ps->n_refs + 1, sizeof *members);
        nm_buf files = { 0 };

        /* per policy reference: the peers in its enabled rules' source groups */
        for (uint32_t r = 0; r < ps->n_refs; r++) {
                int64_t pol = cp_netmap__map_get(&a->policy_by_id, ps->refs[r].policy_id);
                if (pol < 0 || !a->policies[pol].enabled)
                        continue;
                members[r] = cp_xcalloc(words, sizeof **members);
                for (uint32_t i = 0; i < a->n_rules; i++) {
                        const nm_rule *ru = &a->rules[i];
                        if (!ru->enabled || ru->policy != (uint32_t) pol)
                                continue;
                        for (uint32_t g = 0; g < ru->n_src_groups; g++) {
                                int64_t gi = cp_netmap__map_get(&a->group_by_id, ru->src_groups[g]);
                                if (gi < 0)
                                        continue;
                                const nm_group *gr = &a->groups[gi];
                                for (uint32_t k = 0; k < gr->n_members; k++)
                                        members[r][gr->members[k] / 64] |= UINT64_C(1) << (gr->members[k] % 64);
                        }
                }
        }
        /* each check's Checks message (field 6, tag included), once; none without files */
        nm_buf msgs = { 0 };
        nm_span *msg = cp_xcalloc((size_t) ps->n_checks + 1, sizeof *msg);
        for (uint32_t c = 0; c < ps->n_checks; c++) {
                json_t *list = json_array(), *e;
                size_t j, start = msgs.len;
                cp_posture_files(ps->checks[c].checks, list);
                files.len = 0;
                json_array_foreach(list, j, e)
                        nm_put_lenfield(&files, 1, json_string_value(e), strlen(json_string_value(e)));
                json_decref(list);
                if (files.len)
                        nm_put_lenfield(&msgs, 6, files.data, files.len);
                msg[c] = (nm_span) { (uint32_t) start, (uint32_t) (msgs.len - start) };
        }
        ps->peer_checks = cp_xcalloc((size_t) a->n_peers + 1, sizeof *ps->peer_checks);
        for (uint32_t p = 0; p < a->n_peers; p++) {
                size_t start = a->blob.len;
                for (uint32_t r = 0; r < ps->n_refs; r++) {
                        if (!members[r] || !bit(members[r], p))
                                continue;
                        for (uint32_t i = 0; i < ps->refs[r].n_ids; i++) {
                                int64_t c = cp_netmap__map_get(&ps->check_by_id, ps->refs[r].ids[i]);
                                if (c < 0 || seen[c] == p + 1)
                                        continue;
                                seen[c] = p + 1;
                                if (msg[c].len)
                                        nm_buf_add(&a->blob, msgs.data + msg[c].off, msg[c].len);
                        }
                }
                ps->peer_checks[p] = (nm_span) { (uint32_t) start, (uint32_t) (a->blob.len - start) };
        }
        for (uint32_t r = 0; r < ps->n_refs; r++)
                free(members[r]);
        free(members);
        cp_netmap__buf_release(&files);
        cp_netmap__buf_release(&msgs);
        free(msg);
        free(seen);
}

void cp_netmap__posture_finish(cp_netmap_account *a) {
        struct nm_posture *ps = a->posture;

        if (!ps || ps->n_checks == 0 || ps->n_refs == 0)
                return;
        /* rule -> policy is resolved in resolve_rules, after this runs */
        for (uint32_t i = 0; i < a->n_rules; i++) {
                int64_t pol = cp_netmap__map_get(&a->policy_by_id, a->rules[i].policy_id);
                a->rules[i].policy = pol < 0 ? UINT32_MAX : (uint32_t) pol;
        }
        size_t words = ((size_t) a->n_peers + 63) / 64 + 1;
        evaluate(a, ps, words);
        policy_sets(a, ps, words);
        encode_checks(a, ps, words);
}

const uint32_t *cp_netmap__posture_filter(cp_netmap_account *a, const nm_rule *r, const uint32_t *src,
                                          uint32_t *n) {
        struct nm_posture *ps = a->posture;

        if (!ps || !ps->policy_pass || r->policy == UINT32_MAX || !ps->policy_pass[r->policy] || *n == 0)
                return src;
        const uint64_t *pass = ps->policy_pass[r->policy];
        uint32_t *v = cp_netmap__arena_alloc(&a->arena, (size_t) *n * sizeof *v), k = 0;
        for (uint32_t i = 0; i < *n; i++)
                if (bit(pass, src[i]))
                        v[k++] = src[i];
        *n = k;
        return v;
}

nm_span cp_netmap__posture_checks(const cp_netmap_account *a, uint32_t peer) {
        const struct nm_posture *ps = a->posture;

        if (!ps || !ps->peer_checks || peer >= a->n_peers)
                return (nm_span) { 0, 0 };
        return ps->peer_checks[peer];
}

void cp_netmap_account_peer_checks(const cp_netmap_account *a, size_t idx, const uint8_t **data, size_t *len) {
        nm_span s = idx < a->n_peers ? cp_netmap__posture_checks(a, (uint32_t) idx) : (nm_span) { 0, 0 };

        *data = s.len ? a->blob.data + s.off : NULL;
        *len = s.len;
}

void cp_netmap__posture_free(cp_netmap_account *a) {
        struct nm_posture *ps = a->posture;

        if (!ps)
                return;
        for (uint32_t i = 0; i < ps->n_checks; i++) {
                json_decref(ps->checks[i].checks);
                free(ps->checks[i].pass);
        }
        free(ps->checks);
        free(ps->refs);
        free(ps->metas);
        free(ps->policy_pass);
        free(ps->peer_checks);
        cp_netmap__map_release(&ps->check_by_id);
        free(ps);
        a->posture = NULL;
}
