/*
 * cp/nbc-routesel.h: the agent's route selection, as NetBird's client keeps
 * it (client/internal/routeselector and the routemanager's exit-node
 * reconcile, NetBird #6640). Prefix cp_nbc_routesel_.
 *
 * Selection is keyed by route network id (Route.NetID; routes of one HA
 * group share it). Routes default to selected; the user turns routes off
 * and on (deselect / select, each remembered as an explicit pick), or all
 * off at once (deselect_all) or all back on (select_all).
 *
 * Exit nodes are routes to 0.0.0.0/0 or ::/0. They are mutually
 * exclusive: cp_nbc_routesel_apply(), called with every received map's
 * routes, keeps at most one exit node selected:
 *   1. the user's persisted pick (an exit node explicitly selected; the
 *      smallest id if several survive from older state),
 *   2. else the one the map marks for auto-apply (a route of the group with
 *      skipAutoApply false; the smallest id if several),
 *   3. else none: an exit node the map does not request is never switched
 *      on by the map; it stays off until the user selects it.
 * A "<base>-v6" ::/0 route paired with a "<base>" 0.0.0.0/0 exit node is
 * one toggle with its base: it is not counted on its own and its
 * selection follows the base's.
 * The whole reconciliation (reading the picks, choosing, writing) runs
 * under the selector's lock in that one call, so a concurrent
 * deselect_all either fully precedes it (then apply leaves everything
 * alone: the user's "all off" stays) or fully follows it (and is
 * honoured): the two never interleave.
 *
 * Threads: every function may be called from any thread at any time; each
 * takes the selector's lock for its whole work.
 * Ownership: the selector copies the ids it keeps; routes passed in are
 * only read during the call. *ret_preferred is malloc'd: free().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "management.pb-c.h"

typedef struct cp_nbc_routesel cp_nbc_routesel;

/* A fresh selector: nothing picked, every route selected. Aborts on OOM. */
cp_nbc_routesel *cp_nbc_routesel_new(void);
void cp_nbc_routesel_free(cp_nbc_routesel *rs);

/* NetBird's SelectRoutes: selects ids (each must be in all, else it is
 * skipped and the call returns -ENOENT after doing the others). Without
 * append, or after a deselect_all, every route of all is first deselected
 * and older picks forgotten. Clears deselect_all. 0 on success. */
int cp_nbc_routesel_select(cp_nbc_routesel *rs, const char *const *ids, size_t n, bool append,
                           const char *const *all, size_t n_all);
/* NetBird's DeselectRoutes: deselects ids (unknown ones: -ENOENT, as
 * above). Does nothing while deselect_all is set. */
int cp_nbc_routesel_deselect(cp_nbc_routesel *rs, const char *const *ids, size_t n,
                             const char *const *all, size_t n_all);
/* All routes on (every pick forgotten) / all routes off. */
void cp_nbc_routesel_select_all(cp_nbc_routesel *rs);
void cp_nbc_routesel_deselect_all(cp_nbc_routesel *rs);

bool cp_nbc_routesel_is_deselect_all(cp_nbc_routesel *rs);
/* Whether the route id is selected (false while deselect_all is set). */
bool cp_nbc_routesel_is_selected(cp_nbc_routesel *rs, const char *id);
/* Whether the user explicitly selected or deselected id. */
bool cp_nbc_routesel_has_user_selection(cp_nbc_routesel *rs, const char *id);
/* One consistent reading of several routes: ret_selected[i] for ids[i]
 * and *ret_deselect_all (optional), all under one lock. */
void cp_nbc_routesel_read(cp_nbc_routesel *rs, const char *const *ids, size_t n, bool *ret_selected,
                          bool *ret_deselect_all);

/* Applies a received map's routes (see the top of this file). Returns 1
 * when the exit nodes were reconciled, 0 when there was nothing to do (no
 * exit node in the map, or deselect_all is set: left alone).
 * *ret_preferred (optional) is the exit node kept selected, "" for none,
 * NULL when 0 is returned. */
int cp_nbc_routesel_apply(cp_nbc_routesel *rs, Management__Route *const *routes, size_t n,
                          char **ret_preferred);
/* The same for a NetworkMap's routes. */
int cp_nbc_routesel_apply_map(cp_nbc_routesel *rs, const Management__NetworkMap *nm, char **ret_preferred);

/* NetBird's FilterSelectedExitNodes: which of routes the agent would
 * install now. ret_active[i] for routes[i]: false when its network id is
 * deselected (or deselect_all); a non-exit route is on; an exit route the
 * user picked explicitly is on iff selected; otherwise an exit route is on
 * iff it is not skipAutoApply. Returns how many are on. */
size_t cp_nbc_routesel_filter(cp_nbc_routesel *rs, Management__Route *const *routes, size_t n,
                              bool *ret_active);

/* Whether a route's network is 0.0.0.0/0 or ::/0. */
bool cp_nbc_routesel_is_exit_network(const char *network);
