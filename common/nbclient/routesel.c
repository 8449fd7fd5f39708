/*
 * The agent's route selection and exit-node reconcile (cp/nbc-routesel.h).
 * Written from the behaviour of NetBird's RouteSelector and its
 * routemanager's updateRouteSelectorFromManagement (NetBird #6640), with
 * the whole reconcile under one lock.
 */
#include "cp/base.h"
#include "cp/nbc-routesel.h"

#include <pthread.h>

#define V6_SUFFIX "-v6"
#define streq(a, b) (strcmp((a), (b)) == 0)

/* A small set of route ids (an agent sees tens of routes: linear is fine). */
typedef struct {
        char **v;
        size_t n, cap;
} idset;

static ssize_t idset_find(const idset *s, const char *id) {
        for (size_t i = 0; i < s->n; i++)
                if (streq(s->v[i], id))
                        return (ssize_t) i;
        return -1;
}

static bool idset_has(const idset *s, const char *id) {
        return idset_find(s, id) >= 0;
}

static void idset_add(idset *s, const char *id) {
        if (idset_has(s, id))
                return;
        if (s->n == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 8;
                s->v = cp_xrealloc(s->v, s->cap * sizeof *s->v);
        }
        s->v[s->n++] = cp_xstrdup(id);
}

static void idset_del(idset *s, const char *id) {
        ssize_t i = idset_find(s, id);

        if (i < 0)
                return;
        free(s->v[i]);
        s->v[i] = s->v[--s->n];
}

static void idset_clear(idset *s) {
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        s->n = 0;
}

static void idset_release(idset *s) {
        idset_clear(s);
        free(s->v);
        *s = (idset) { 0 };
}

struct cp_nbc_routesel {
        pthread_mutex_t lock;
        idset selected;         /* explicit user picks: on */
        idset deselected;       /* explicit user picks: off */
        bool deselect_all;
};

cp_nbc_routesel *cp_nbc_routesel_new(void) {
        cp_nbc_routesel *rs = cp_xcalloc(1, sizeof *rs);

        pthread_mutex_init(&rs->lock, NULL);
        return rs;
}

void cp_nbc_routesel_free(cp_nbc_routesel *rs) {
        if (!rs)
                return;
        idset_release(&rs->selected);
        idset_release(&rs->deselected);
        pthread_mutex_destroy(&rs->lock);
        free(rs);
}

static bool in_list(const char *const *all, size_t n_all, const char *id) {
        for (size_t i = 0; i < n_all; i++)
                if (streq(all[i], id))
                        return true;
        return false;
}

/* ---- the user's picks (RouteSelector) ------------------------------------------------------------- */

int cp_nbc_routesel_select(cp_nbc_routesel *rs, const char *const *ids, size_t n, bool append,
                           const char *const *all, size_t n_all) {
        int r = 0;

        pthread_mutex_lock(&rs->lock);
        if (!append || rs->deselect_all) {
                idset_clear(&rs->selected);
                idset_clear(&rs->deselected);
                for (size_t i = 0; i < n_all; i++)
                        idset_add(&rs->deselected, all[i]);
        }
        for (size_t i = 0; i < n; i++) {
                if (!in_list(all, n_all, ids[i])) {
                        r = -ENOENT;
                        continue;
                }
                idset_del(&rs->deselected, ids[i]);
                idset_add(&rs->selected, ids[i]);
        }
        rs->deselect_all = false;
        pthread_mutex_unlock(&rs->lock);
        return r;
}

int cp_nbc_routesel_deselect(cp_nbc_routesel *rs, const char *const *ids, size_t n,
                             const char *const *all, size_t n_all) {
        int r = 0;

        pthread_mutex_lock(&rs->lock);
        if (!rs->deselect_all)
                for (size_t i = 0; i < n; i++) {
                        if (!in_list(all, n_all, ids[i])) {
                                r = -ENOENT;
                                continue;
                        }
                        idset_add(&rs->deselected, ids[i]);
                        idset_del(&rs->selected, ids[i]);
                }
        pthread_mutex_unlock(&rs->lock);
        return r;
}

static void set_all(cp_nbc_routesel *rs, bool off) {
        pthread_mutex_lock(&rs->lock);
        rs->deselect_all = off;
        idset_clear(&rs->selected);
        idset_clear(&rs->deselected);
        pthread_mutex_unlock(&rs->lock);
}

void cp_nbc_routesel_select_all(cp_nbc_routesel *rs) {
        set_all(rs, false);
}

void cp_nbc_routesel_deselect_all(cp_nbc_routesel *rs) {
        set_all(rs, true);
}

static bool selected_locked(const cp_nbc_routesel *rs, const char *id) {
        return !rs->deselect_all && !idset_has(&rs->deselected, id);
}

static bool user_pick_locked(const cp_nbc_routesel *rs, const char *id) {
        return idset_has(&rs->selected, id) || idset_has(&rs->deselected, id);
}

bool cp_nbc_routesel_is_deselect_all(cp_nbc_routesel *rs) {
        pthread_mutex_lock(&rs->lock);
        bool r = rs->deselect_all;
        pthread_mutex_unlock(&rs->lock);
        return r;
}

bool cp_nbc_routesel_is_selected(cp_nbc_routesel *rs, const char *id) {
        pthread_mutex_lock(&rs->lock);
        bool r = selected_locked(rs, id);
        pthread_mutex_unlock(&rs->lock);
        return r;
}

bool cp_nbc_routesel_has_user_selection(cp_nbc_routesel *rs, const char *id) {
        pthread_mutex_lock(&rs->lock);
        bool r = user_pick_locked(rs, id);
        pthread_mutex_unlock(&rs->lock);
        return r;
}

void cp_nbc_routesel_read(cp_nbc_routesel *rs, const char *const *ids, size_t n, bool *ret_selected,
                          bool *ret_deselect_all) {
        pthread_mutex_lock(&rs->lock);
        for (size_t i = 0; i < n; i++)
                ret_selected[i] = selected_locked(rs, ids[i]);
        if (ret_deselect_all)
                *ret_deselect_all = rs->deselect_all;
        pthread_mutex_unlock(&rs->lock);
}

/* ---- exit nodes ------------------------------------------------------------------------------- */

bool cp_nbc_routesel_is_exit_network(const char *network) {
        return network && (streq(network, "0.0.0.0/0") || streq(network, "::/0"));
}

static const char *net_id(const Management__Route *r) {
        return r->netid ? r->netid : "";
}

static const char *network(const Management__Route *r) {
        return r->network ? r->network : "";
}

static bool has_suffix(const char *s, const char *suffix) {
        size_t n = strlen(s), m = strlen(suffix);

        return n >= m && streq(s + n - m, suffix);
}

/* The first route of network id in routes (an HA group's routes share the
 * id; NetBird looks at the group's first route), or NULL. */
static const Management__Route *group_head(Management__Route *const *routes, size_t n, const char *id,
                                           size_t len) {
        for (size_t i = 0; i < n; i++) {
                const char *nid = net_id(routes[i]);
                if (strlen(nid) == len && strncmp(nid, id, len) == 0)
                        return routes[i];
        }
        return NULL;
}

/* routes[i] is a group head: the first route of its network id. */
static bool first_of_group(Management__Route *const *routes, size_t i) {
        return group_head(routes, i + 1, net_id(routes[i]), strlen(net_id(routes[i]))) == routes[i];
}

/* A "<base>-v6" ::/0 group whose "<base>" group is a 0.0.0.0/0 exit node:
 * one toggle with its base. Returns the base's length, or 0. */
static size_t v6_pair_base(Management__Route *const *routes, size_t n, const Management__Route *head) {
        const char *id = net_id(head);

        if (!streq(network(head), "::/0") || !has_suffix(id, V6_SUFFIX))
                return 0;
        size_t len = strlen(id) - strlen(V6_SUFFIX);
        const Management__Route *base = group_head(routes, n, id, len);
        return base && streq(network(base), "0.0.0.0/0") ? len : 0;
}

/* NetBird's SyncPairedSelection: the v6 entry takes the base's pick. */
static void sync_pair_locked(cp_nbc_routesel *rs, const char *base, size_t len, const char *v6) {
        _cleanup_free_ char *b = cp_xstrndup(base, len);
        bool sel = idset_has(&rs->selected, b), desel = idset_has(&rs->deselected, b);

        idset_del(&rs->selected, v6);
        idset_del(&rs->deselected, v6);
        if (sel)
                idset_add(&rs->selected, v6);
        else if (desel)
                idset_add(&rs->deselected, v6);
}

static void keep_min(const char **best, const char *id) {
        if (!*best || strcmp(id, *best) < 0)
                *best = id;
}

int cp_nbc_routesel_apply(cp_nbc_routesel *rs, Management__Route *const *routes, size_t n,
                          char **ret_preferred) {
        const char *user = NULL, *mgmt = NULL;
        _cleanup_free_ char *pref = NULL;
        size_t n_exit = 0;
        int r = 0;

        if (ret_preferred)
                *ret_preferred = NULL;
        pthread_mutex_lock(&rs->lock);
        /* The user's "all off" is never overridden by the map. */
        if (rs->deselect_all)
                goto out;

        /* Read the picks and the map's requests (collectExitNodeInfo). A
         * "-v6" partner is not counted: it follows its base. */
        for (size_t i = 0; i < n; i++) {
                const Management__Route *head = routes[i];
                const char *id = net_id(head);

                if (!first_of_group(routes, i) || !cp_nbc_routesel_is_exit_network(network(head)) ||
                    has_suffix(id, V6_SUFFIX))
                        continue;
                n_exit++;
                if (user_pick_locked(rs, id)) {
                        if (selected_locked(rs, id))
                                keep_min(&user, id);
                        continue;       /* an explicit "off" keeps it out of both lists */
                }
                for (size_t j = i; j < n; j++)
                        if (streq(net_id(routes[j]), id) && !routes[j]->skipautoapply) {
                                keep_min(&mgmt, id);
                                break;
                        }
        }
        if (n_exit == 0)
                goto out;

        /* Choose (pickPreferredExitNode) and write (SetExclusiveExitNode). */
        pref = cp_xstrdup(user ? user : mgmt ? mgmt : "");     /* the sets below may free the original */
        for (size_t i = 0; i < n; i++) {
                const char *id = net_id(routes[i]);
                if (!first_of_group(routes, i) || !cp_nbc_routesel_is_exit_network(network(routes[i])) ||
                    has_suffix(id, V6_SUFFIX) || streq(id, pref))
                        continue;
                idset_add(&rs->deselected, id);
                idset_del(&rs->selected, id);
        }
        if (*pref) {
                idset_del(&rs->deselected, pref);
                idset_add(&rs->selected, pref);
        }
        /* Each paired v6 entry follows its base (mirrorV6ExitPairSelections). */
        for (size_t i = 0; i < n; i++) {
                size_t len;
                if (first_of_group(routes, i) && (len = v6_pair_base(routes, n, routes[i])) > 0)
                        sync_pair_locked(rs, net_id(routes[i]), len, net_id(routes[i]));
        }
        if (ret_preferred)
                *ret_preferred = TAKE_PTR(pref);
        r = 1;
out:
        pthread_mutex_unlock(&rs->lock);
        return r;
}

int cp_nbc_routesel_apply_map(cp_nbc_routesel *rs, const Management__NetworkMap *nm, char **ret_preferred) {
        return cp_nbc_routesel_apply(rs, nm ? nm->routes : NULL, nm ? nm->n_routes : 0, ret_preferred);
}

size_t cp_nbc_routesel_filter(cp_nbc_routesel *rs, Management__Route *const *routes, size_t n,
                              bool *ret_active) {
        size_t on = 0;

        pthread_mutex_lock(&rs->lock);
        for (size_t i = 0; i < n; i++) {
                const Management__Route *rt = routes[i];
                const char *id = net_id(rt);
                /* The group's kind is its first route's network. */
                const Management__Route *head = group_head(routes, n, id, strlen(id));
                bool active;

                if (rs->deselect_all || idset_has(&rs->deselected, id))
                        active = false;
                else if (!cp_nbc_routesel_is_exit_network(network(head)))
                        active = true;
                else if (user_pick_locked(rs, id))
                        active = selected_locked(rs, id);
                else
                        active = !rt->skipautoapply;
                ret_active[i] = active;
                on += active;
        }
        pthread_mutex_unlock(&rs->lock);
        return on;
}
