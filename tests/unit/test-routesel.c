/*
 * common/nbclient route selector (cp/nbc-routesel.h): seed 002 (NetBird
 * #6640), the exit-node reconcile on every map. The cases are those of
 * NetBird's routemanager exit_node_selection_test.go, written against our
 * API, plus the HA-group, v6-pair and filter behaviour, and a threaded race
 * of deselect-all against the reconcile (also built with ThreadSanitizer:
 * tests/unit/meson.build, test "routesel-tsan").
 *
 * CP_TEST_ROUTESEL_ROUNDS overrides the race's round count.
 */
#include "cp/base.h"
#include "cp/nbc-routesel.h"
#include "cptest.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---- map fixtures ----------------------------------------------------------------------------- */

typedef struct {
        Management__Route r[16];
        Management__Route *p[16];
        size_t n;
} rmap;

static void add(rmap *m, const char *netid, const char *network, const char *peer, bool skip_auto_apply) {
        Management__Route *r = &m->r[m->n];

        management__route__init(r);
        r->id = (char *) netid;
        r->netid = (char *) netid;
        r->network = (char *) network;
        r->peer = (char *) peer;
        r->skipautoapply = skip_auto_apply;
        m->p[m->n] = r;
        m->n++;
}

static void exit_route(rmap *m, const char *netid, const char *peer, bool skip) {
        add(m, netid, "0.0.0.0/0", peer, skip);
}

static bool sel(cp_nbc_routesel *rs, const char *id) {
        return cp_nbc_routesel_is_selected(rs, id);
}

/* Applies m and checks the preferred exit node ("" for none). */
static void apply_expect(cp_nbc_routesel *rs, rmap *m, const char *want) {
        _cleanup_free_ char *pref = NULL;

        ASSERT_EQ(1, cp_nbc_routesel_apply(rs, m->p, m->n, &pref));
        ASSERT_STREQ(want, pref);
}

static const char *const ABC[] = { "a", "b", "c" };

/* ---- NetBird's pickPreferredExitNode cases, through apply ------------------------------------- */

TEST(persisted_user_selection_wins_over_management) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", false);       /* the map asks for a */
        exit_route(&m, "b", "p2", true);
        exit_route(&m, "c", "p3", true);
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "b" }, 1, true, ABC, 3));
        apply_expect(rs, &m, "b");
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "b"));
        ASSERT_FALSE(sel(rs, "c"));
        cp_nbc_routesel_free(rs);
}

TEST(several_user_selected_self_heal_to_the_smallest) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", true);
        exit_route(&m, "b", "p2", true);
        exit_route(&m, "c", "p3", true);
        /* Legacy state: c and a both explicitly on. */
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "c", "a" }, 2, true, ABC, 3));
        apply_expect(rs, &m, "a");
        ASSERT_TRUE(sel(rs, "a"));
        ASSERT_FALSE(sel(rs, "b"));
        ASSERT_FALSE(sel(rs, "c"));
        cp_nbc_routesel_free(rs);
}

TEST(explicit_opt_out_keeps_none) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "exitA", "p1", false);
        exit_route(&m, "exitB", "p2", false);
        const char *all[] = { "exitA", "exitB" };
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, all, 2, all, 2));
        apply_expect(rs, &m, "");
        ASSERT_FALSE(sel(rs, "exitA"));
        ASSERT_FALSE(sel(rs, "exitB"));
        cp_nbc_routesel_free(rs);
}

TEST(fresh_selector_takes_the_map_auto_apply_pick) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", true);
        exit_route(&m, "b", "p2", false);
        exit_route(&m, "c", "p3", true);
        apply_expect(rs, &m, "b");
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "b"));
        ASSERT_FALSE(sel(rs, "c"));
        cp_nbc_routesel_free(rs);
}

TEST(no_user_pick_and_no_auto_apply_selects_none) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };
        bool active[3];

        exit_route(&m, "exitA", "p1", true);
        exit_route(&m, "exitB", "p2", true);
        add(&m, "lan", "192.168.1.0/24", "p3", false);
        apply_expect(rs, &m, "");
        ASSERT_FALSE(sel(rs, "exitA"));
        ASSERT_FALSE(sel(rs, "exitB"));
        /* Never auto-activated: only the LAN route would be installed. */
        ASSERT_EQ(1, cp_nbc_routesel_filter(rs, m.p, m.n, active));
        ASSERT_TRUE(active[2]);
        cp_nbc_routesel_free(rs);
}

TEST(user_deselect_does_not_block_an_auto_apply_sibling) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", false);
        exit_route(&m, "b", "p2", false);
        const char *all[] = { "a", "b" };
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, (const char *[]) { "a" }, 1, all, 2));
        apply_expect(rs, &m, "b");
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "b"));
        cp_nbc_routesel_free(rs);
}

/* ---- NetBird's enforce / update cases -------------------------------------------------------- */

TEST(switching_the_pick_moves_the_single_selection) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", true);
        exit_route(&m, "b", "p2", true);
        exit_route(&m, "c", "p3", true);
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "b" }, 1, true, ABC, 3));
        apply_expect(rs, &m, "b");
        ASSERT_TRUE(!sel(rs, "a") && sel(rs, "b") && !sel(rs, "c"));
        /* The user picks c (NetBird's client: select c, deselect the rest). */
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "c" }, 1, true, ABC, 3));
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, (const char *[]) { "a", "b" }, 2, ABC, 3));
        apply_expect(rs, &m, "c");
        ASSERT_TRUE(!sel(rs, "a") && !sel(rs, "b") && sel(rs, "c"));
        /* Then none. */
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, ABC, 3, ABC, 3));
        apply_expect(rs, &m, "");
        ASSERT_TRUE(!sel(rs, "a") && !sel(rs, "b") && !sel(rs, "c"));
        cp_nbc_routesel_free(rs);
}

TEST(deselect_all_is_left_alone) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };
        char *pref = (char *) "x";

        exit_route(&m, "a", "p1", false);
        exit_route(&m, "b", "p2", false);
        add(&m, "lan", "10.0.0.0/8", "p3", false);
        cp_nbc_routesel_deselect_all(rs);
        ASSERT_EQ(0, cp_nbc_routesel_apply(rs, m.p, m.n, &pref));
        ASSERT_TRUE(pref == NULL);
        ASSERT_TRUE(cp_nbc_routesel_is_deselect_all(rs));
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_FALSE(sel(rs, "b"));
        ASSERT_FALSE(sel(rs, "lan"));
        bool active[3];
        ASSERT_EQ(0, cp_nbc_routesel_filter(rs, m.p, m.n, active));
        cp_nbc_routesel_free(rs);
}

TEST(fresh_map_selects_one_and_leaves_other_routes_on) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "exitB", "p2", false);
        exit_route(&m, "exitA", "p1", false);
        add(&m, "lan", "192.168.1.0/24", "p3", false);
        exit_route(&m, "exitC", "p4", false);
        apply_expect(rs, &m, "exitA");          /* the smallest, whatever the map order */
        ASSERT_TRUE(sel(rs, "exitA"));
        ASSERT_FALSE(sel(rs, "exitB"));
        ASSERT_FALSE(sel(rs, "exitC"));
        ASSERT_TRUE(sel(rs, "lan"));
        ASSERT_FALSE(cp_nbc_routesel_has_user_selection(rs, "lan"));
        cp_nbc_routesel_free(rs);
}

TEST(persisted_pick_survives_the_next_maps) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };
        const char *all[] = { "exitA", "exitB" };

        exit_route(&m, "exitA", "p1", false);
        exit_route(&m, "exitB", "p2", false);
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "exitB" }, 1, true, all, 2));
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, (const char *[]) { "exitA" }, 1, all, 2));
        for (int i = 0; i < 3; i++) {
                apply_expect(rs, &m, "exitB");
                ASSERT_TRUE(sel(rs, "exitB"));
                ASSERT_FALSE(sel(rs, "exitA"));
        }
        cp_nbc_routesel_free(rs);
}

TEST(no_exit_node_in_the_map_is_nothing_to_do) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };
        char *pref = NULL;

        add(&m, "lan", "192.168.1.0/24", "p1", false);
        ASSERT_EQ(0, cp_nbc_routesel_apply(rs, m.p, m.n, &pref));
        ASSERT_TRUE(pref == NULL);
        ASSERT_TRUE(sel(rs, "lan"));
        ASSERT_EQ(0, cp_nbc_routesel_apply_map(rs, NULL, NULL));
        cp_nbc_routesel_free(rs);
}

/* ---- HA groups, ::/0, v6 pairs, the user API ------------------------------------------------- */

TEST(ha_group_counts_once_and_any_member_may_ask_for_auto_apply) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };
        bool active[3];

        /* Group "ha": two routing peers, only the second auto-applied. */
        exit_route(&m, "ha", "p1", true);
        exit_route(&m, "ha", "p2", false);
        exit_route(&m, "z", "p3", true);
        /* Before any reconcile: no pick, so the flagged member only. */
        ASSERT_EQ(1, cp_nbc_routesel_filter(rs, m.p, m.n, active));
        ASSERT_FALSE(active[0]);
        ASSERT_TRUE(active[1]);
        ASSERT_FALSE(active[2]);
        apply_expect(rs, &m, "ha");
        ASSERT_TRUE(sel(rs, "ha"));
        ASSERT_FALSE(sel(rs, "z"));
        /* The reconcile records its choice as NetBird's does
         * (SetExclusiveExitNode): the whole group is on now, z off. */
        ASSERT_TRUE(cp_nbc_routesel_has_user_selection(rs, "ha"));
        ASSERT_EQ(2, cp_nbc_routesel_filter(rs, m.p, m.n, active));
        ASSERT_TRUE(active[0] && active[1] && !active[2]);
        cp_nbc_routesel_free(rs);
}

TEST(v6_default_routes_are_exit_nodes_and_pairs_follow_their_base) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        rmap m = { 0 };

        exit_route(&m, "a", "p1", false);
        add(&m, "a-v6", "::/0", "p1", false);
        exit_route(&m, "b", "p2", true);
        add(&m, "b-v6", "::/0", "p2", true);
        add(&m, "v6only", "::/0", "p3", true);
        apply_expect(rs, &m, "a");
        ASSERT_TRUE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "a-v6"));
        ASSERT_FALSE(sel(rs, "b"));
        ASSERT_FALSE(sel(rs, "b-v6"));
        ASSERT_FALSE(sel(rs, "v6only"));

        /* The user moves to the v6-only exit node: one exit node still. */
        const char *all[] = { "a", "a-v6", "b", "b-v6", "v6only" };
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "v6only" }, 1, true, all, 5));
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, (const char *[]) { "a" }, 1, all, 5));
        apply_expect(rs, &m, "v6only");
        ASSERT_TRUE(sel(rs, "v6only"));
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_FALSE(sel(rs, "a-v6"));
        ASSERT_FALSE(sel(rs, "b"));
        cp_nbc_routesel_free(rs);
}

TEST(select_and_deselect_refuse_unknown_routes_and_do_the_rest) {
        cp_nbc_routesel *rs = cp_nbc_routesel_new();
        const char *all[] = { "a", "b" };

        ASSERT_EQ(-ENOENT, cp_nbc_routesel_deselect(rs, (const char *[]) { "x", "a" }, 2, all, 2));
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "b"));
        ASSERT_EQ(-ENOENT, cp_nbc_routesel_select(rs, (const char *[]) { "a", "y" }, 2, true, all, 2));
        ASSERT_TRUE(sel(rs, "a"));
        /* Not appending: only the given ones stay on. */
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "b" }, 1, false, all, 2));
        ASSERT_FALSE(sel(rs, "a"));
        ASSERT_TRUE(sel(rs, "b"));
        /* Deselect-all, then select one: the others stay off. */
        cp_nbc_routesel_deselect_all(rs);
        ASSERT_EQ(0, cp_nbc_routesel_deselect(rs, (const char *[]) { "b" }, 1, all, 2));
        ASSERT_TRUE(cp_nbc_routesel_is_deselect_all(rs));
        ASSERT_EQ(0, cp_nbc_routesel_select(rs, (const char *[]) { "a" }, 1, true, all, 2));
        ASSERT_FALSE(cp_nbc_routesel_is_deselect_all(rs));
        ASSERT_TRUE(sel(rs, "a"));
        ASSERT_FALSE(sel(rs, "b"));
        cp_nbc_routesel_select_all(rs);
        ASSERT_TRUE(sel(rs, "a") && sel(rs, "b"));
        ASSERT_FALSE(cp_nbc_routesel_has_user_selection(rs, "a"));
        cp_nbc_routesel_free(rs);
}

/* ---- the race: deselect-all against the reconcile --------------------------------------------- */

#define N_EXIT 3
static const char *const EXITS[N_EXIT] = { "exitA", "exitB", "exitC" };

typedef struct {
        cp_nbc_routesel *rs;
        rmap map;
        pthread_barrier_t start, end;
        atomic_int done;                /* of the two writers, this round */
        atomic_long violations;
        long rounds;
} race;

static void violation(race *x, const char *what, long round) {
        if (atomic_fetch_add(&x->violations, 1) < 5)
                fprintf(stderr, "# round %ld: %s\n", round, what);
}

static void *reconciler(void *arg) {
        race *x = arg;

        for (long i = 0; i < x->rounds; i++) {
                pthread_barrier_wait(&x->start);
                cp_nbc_routesel_apply(x->rs, x->map.p, x->map.n, NULL);
                atomic_fetch_add(&x->done, 1);
                pthread_barrier_wait(&x->end);
        }
        return NULL;
}

static void *deselector(void *arg) {
        race *x = arg;

        for (long i = 0; i < x->rounds; i++) {
                pthread_barrier_wait(&x->start);
                cp_nbc_routesel_deselect_all(x->rs);
                atomic_fetch_add(&x->done, 1);
                pthread_barrier_wait(&x->end);
        }
        return NULL;
}

/* Reads the exits in one consistent view while the writers run: never two
 * exit nodes at once, never one under deselect-all. */
static void *checker(void *arg) {
        race *x = arg;
        bool on[N_EXIT], all_off;

        for (long i = 0; i < x->rounds; i++) {
                pthread_barrier_wait(&x->start);
                do {
                        cp_nbc_routesel_read(x->rs, EXITS, N_EXIT, on, &all_off);
                        int n = on[0] + on[1] + on[2];
                        if (n > 1)
                                violation(x, "two exit nodes selected", i);
                        if (all_off && n > 0)
                                violation(x, "an exit node selected under deselect-all", i);
                } while (atomic_load(&x->done) < 2);
                pthread_barrier_wait(&x->end);
        }
        return NULL;
}

TEST(deselect_all_never_interleaves_with_the_reconcile) {
        const char *env = getenv("CP_TEST_ROUTESEL_ROUNDS");
        race x = { .rs = cp_nbc_routesel_new(), .rounds = env ? atol(env) : 20000 };
        pthread_t t[3];
        bool on[N_EXIT], all_off;

        ASSERT_TRUE(x.rounds > 0);
        for (int i = 0; i < N_EXIT; i++)
                exit_route(&x.map, EXITS[i], "p", i == 1);      /* auto-apply exitA and exitC */
        add(&x.map, "lan", "10.0.0.0/8", "p", false);
        pthread_barrier_init(&x.start, NULL, 4);
        pthread_barrier_init(&x.end, NULL, 4);
        ASSERT_EQ(0, pthread_create(&t[0], NULL, reconciler, &x));
        ASSERT_EQ(0, pthread_create(&t[1], NULL, deselector, &x));
        ASSERT_EQ(0, pthread_create(&t[2], NULL, checker, &x));
        for (long i = 0; i < x.rounds; i++) {
                /* Each round starts reconciled: exactly exitA on, then the
                 * user's pick alternates so the reconcile has work to do. */
                cp_nbc_routesel_select_all(x.rs);
                if (i % 2)
                        cp_nbc_routesel_select(x.rs, (const char *[]) { "exitB" }, 1, true, EXITS, N_EXIT);
                cp_nbc_routesel_apply(x.rs, x.map.p, x.map.n, NULL);
                atomic_store(&x.done, 0);
                pthread_barrier_wait(&x.start);
                pthread_barrier_wait(&x.end);
                /* Whatever the order, the user's "all off" holds at the end. */
                cp_nbc_routesel_read(x.rs, EXITS, N_EXIT, on, &all_off);
                if (!all_off)
                        violation(&x, "deselect-all undone", i);
                if (on[0] || on[1] || on[2] || cp_nbc_routesel_is_selected(x.rs, "lan"))
                        violation(&x, "a route still selected after deselect-all", i);
        }
        for (int i = 0; i < 3; i++)
                pthread_join(t[i], NULL);
        pthread_barrier_destroy(&x.start);
        pthread_barrier_destroy(&x.end);
        cp_nbc_routesel_free(x.rs);
        fprintf(stdout, "# %ld rounds, %ld violations\n", x.rounds, atomic_load(&x.violations));
        ASSERT_EQ(0, atomic_load(&x.violations));
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
