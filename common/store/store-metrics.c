/*
 * The store's metrics (docs/metrics.md): per-statement query latency and
 * errors in the process-wide registry, and the pool's occupancy for a
 * caller's collector.
 *
 * A statement's series are made the first time this process runs it, so
 * a replica shows the ~25 statements it uses, not the bootstrap-only ones;
 * the label's values are bounded by the statement table either way. The
 * handles are published with an atomic pointer: only the first run of each
 * statement takes the registry's lock.
 */
#include "cp/base.h"
#include "cp/metrics.h"
#include "store-int.h"

#include <pthread.h>
#include <stdatomic.h>

/* Index _ST_MAX is COMMIT (the wait for every write transaction's
 * durability), _ST_MAX + 1 every statement of cp/store-tx.h ("api"). */
#define N_TIMED (_ST_MAX + 2)

static const double query_bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5 };

typedef struct stmt_metrics {
        cp_histogram *seconds;
        cp_counter *errors;
} stmt_metrics;

/* ---- fenced peer status writes ------------------------------------------------ */

static cp_counter *fenced[2][2];         /* [connect][landed] */
static pthread_once_t fenced_once = PTHREAD_ONCE_INIT;

static void fenced_init(void) {
        cp_metric *f = cp_metrics_counter(cp_metrics_global(), "netbird_cp_fenced_updates_total",
                                          "Fenced peer status writes (Sync session connect and disconnect) by "
                                          "result: landed, or stale (fenced off by a newer session).",
                                          CP_LABELS("op", "result"));

        for (int c = 1; c >= 0; c--)
                for (int l = 1; l >= 0; l--)
                        fenced[c][l] = cp_metric_counter(f, CP_LABELS(c ? "connect" : "disconnect",
                                                                      l ? "landed" : "stale"));
}

/* ---- statements ------------------------------------------------------------------ */

static _Atomic(stmt_metrics *) timed[N_TIMED];

static stmt_metrics *stmt_metrics_get(unsigned i) {
        stmt_metrics *sm = atomic_load_explicit(&timed[i], memory_order_acquire);
        cp_metrics *reg;
        const char *name;

        if (_likely_(sm))
                return sm;
        /* The fenced counters too, so they are there (at 0) from the
         * replica's first statements on, before its first Sync. */
        (void) pthread_once(&fenced_once, fenced_init);
        reg = cp_metrics_global();
        name = i < _ST_MAX ? cp_store__stmt_name((cp_store_stmt) i) : i == _ST_MAX ? "commit" : "api";
        sm = cp_xcalloc(1, sizeof *sm);
        sm->seconds = cp_metric_histogram(
                cp_metrics_histogram(reg, "netbird_cp_store_query_duration_seconds",
                                     "PostgreSQL statement latency as the replica sees it (round trip, "
                                     "including preparing it on a new connection), by statement.",
                                     CP_LABELS("statement"), query_bounds, ELEMENTSOF(query_bounds)),
                CP_LABELS(name));
        sm->errors = cp_metric_counter(
                cp_metrics_counter(reg, "netbird_cp_store_query_errors_total",
                                   "PostgreSQL statements that failed (any error: constraint, connection, "
                                   "timeout), by statement.",
                                   CP_LABELS("statement")),
                CP_LABELS(name));
        /* Two threads may race here: both get the same children (the
         * registry dedups), one struct wins, the other is freed. */
        stmt_metrics *expected = NULL;
        if (!atomic_compare_exchange_strong_explicit(&timed[i], &expected, sm, memory_order_acq_rel,
                                                     memory_order_acquire)) {
                free(sm);
                sm = expected;
        }
        return sm;
}

int64_t cp_store__clock_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cp_store__observe(int st, int64_t started_ns, bool failed) {
        stmt_metrics *sm;

        if (st < 0 || st >= N_TIMED)
                return;
        sm = stmt_metrics_get((unsigned) st);
        cp_histogram_observe(sm->seconds, (double) (cp_store__clock_ns() - started_ns) / 1e9);
        if (failed)
                cp_counter_inc(sm->errors);
}

void cp_store_pool_stats(cp_store *s, cp_store_pool_usage *ret) {
        cp_store_pool_usage u = { .size = s->size };

        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < s->size; i++) {
                /* A slot in use belongs to its borrower (it may be
                 * connecting), so only free slots are looked into. */
                if (s->conns[i].in_use)
                        u.busy++;
                else if (s->conns[i].pg)
                        u.idle++;
        }
        pthread_mutex_unlock(&s->lock);
        *ret = u;
}

void cp_store__fenced(bool connect, bool landed) {
        (void) pthread_once(&fenced_once, fenced_init);
        cp_counter_inc(fenced[connect][landed]);
}
