/*
 * ThreadSanitizer tests of the server's shared pieces that need neither
 * gRPC nor a database: the worker pool (runtime/mgmt-work.c) and the
 * metrics registry (common/metrics). meson compiles this file and those
 * sources with -fsanitize=thread (tests/service/meson.build); any data race
 * makes the binary exit 66 (TSAN_OPTIONS). The same file also builds and
 * passes without TSan (it then checks only the counts).
 *
 * The whole server under TSan: docs/testing.md.
 */
#include "cp/base.h"
#include "cp/metrics.h"
#include "cp/strbuf.h"
#include "cptest.h"
#include "mgmt-work.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

/* ---- the worker pool --------------------------------------------------------- */

#define SUBMITTERS 4
#define JOBS 3000

typedef struct shared {
        mgmt_workers *w;
        pthread_mutex_t lock;
        uint64_t sum;                   /* under lock */
        int64_t plain[SUBMITTERS];      /* written by the jobs of one submitter, read after free */
        atomic_int ran, nested, refused;
} shared;

typedef struct job {
        shared *s;
        int who;
        bool nest;
} job;

static void run_nested(void *userdata) {
        shared *s = userdata;

        atomic_fetch_add(&s->nested, 1);
}

static void run_job(void *userdata) {
        job *j = userdata;
        shared *s = j->s;

        pthread_mutex_lock(&s->lock);
        s->sum += (uint64_t) j->who + 1;
        /* Unsynchronised but for the lock: TSan checks the lock covers it. */
        s->plain[j->who]++;
        pthread_mutex_unlock(&s->lock);
        /* A job that queues another job (as the fenced disconnect does). */
        if (j->nest)
                (void) mgmt_workers_submit(s->w, run_nested, s, true);
        atomic_fetch_add(&s->ran, 1);
        free(j);
}

typedef struct submitter {
        shared *s;
        int who;
} submitter;

static void *submit_many(void *userdata) {
        submitter *sub = userdata;

        for (int i = 0; i < JOBS; i++) {
                job *j = cp_xcalloc(1, sizeof *j);
                *j = (job) { .s = sub->s, .who = sub->who, .nest = i % 10 == 0 };
                int r;
                /* A small queue: -EAGAIN happens; the submitter retries. */
                while ((r = mgmt_workers_submit(sub->s->w, run_job, j, false)) == -EAGAIN) {
                        atomic_fetch_add(&sub->s->refused, 1);
                        sched_yield();
                }
                if (r < 0)
                        abort();
                (void) mgmt_workers_queued(sub->s->w);
        }
        return NULL;
}

TEST(workers_many_submitters_small_queue) {
        shared s = { .lock = PTHREAD_MUTEX_INITIALIZER };
        pthread_t t[SUBMITTERS];
        submitter sub[SUBMITTERS];

        ASSERT_EQ(0, mgmt_workers_new(4, 16, &s.w, NULL));
        for (int i = 0; i < SUBMITTERS; i++) {
                sub[i] = (submitter) { .s = &s, .who = i };
                ASSERT_EQ(0, pthread_create(&t[i], NULL, submit_many, &sub[i]));
        }
        for (int i = 0; i < SUBMITTERS; i++)
                pthread_join(t[i], NULL);
        /* mgmt_workers_free() may be called only once nothing can submit:
         * the last jobs still queue nested ones, which a free begun earlier
         * would refuse (-ESHUTDOWN). Wait (bounded) for them to run. */
        for (int ms = 0; ms < 60000 && (atomic_load(&s.ran) < SUBMITTERS * JOBS ||
                                        atomic_load(&s.nested) < SUBMITTERS * JOBS / 10); ms++)
                usleep(1000);
        mgmt_workers_free(s.w);
        ASSERT_EQ(SUBMITTERS * JOBS, atomic_load(&s.ran));
        ASSERT_EQ(SUBMITTERS * JOBS / 10, atomic_load(&s.nested));
        ASSERT_EQ((uint64_t) JOBS * (1 + 2 + 3 + 4), s.sum);
        for (int i = 0; i < SUBMITTERS; i++)
                ASSERT_EQ(JOBS, s.plain[i]);
        printf("# %d submits refused by the full queue and retried\n", atomic_load(&s.refused));
}

/* ---- metrics ------------------------------------------------------------------ */

#define UPDATERS 4
#define UPDATES 20000

typedef struct mshared {
        cp_metrics *reg;
        cp_metric *labelled;
        cp_counter *plain;
        cp_gauge *gauge;
        cp_gauge *collected;            /* set only by the collector */
        cp_histogram *hist;
        atomic_bool stop;
} mshared;

typedef struct updater {
        mshared *m;
        int who;
} updater;

static void *update_many(void *userdata) {
        updater *u = userdata;
        mshared *m = u->m;
        char label[16];

        for (int i = 0; i < UPDATES; i++) {
                /* Children made and found concurrently by every thread. */
                (void) snprintf(label, sizeof label, "l%d", i % 8);
                cp_counter_inc(cp_metric_counter(m->labelled, CP_LABELS(label)));
                cp_counter_inc(m->plain);
                cp_gauge_add(m->gauge, 1);
                cp_gauge_add(m->gauge, -1);
                cp_histogram_observe(m->hist, (double) (i % 100) / 10.0);
        }
        return NULL;
}

/* A collector sets its own gauge: setting the gauge the updaters add to
 * would lose an add that came between its read and its write (the
 * updaters' gauge then ends at -1, not 0: a race of the test, not of the
 * registry). */
static void collect(cp_metrics *reg, void *userdata) {
        mshared *m = userdata;

        cp_gauge_set(m->collected, cp_gauge_get(m->gauge));
}

static void *render_many(void *userdata) {
        mshared *m = userdata;
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        while (!atomic_load(&m->stop)) {
                cp_strbuf_reset(&sb);
                cp_metrics_render(m->reg, &sb);
        }
        cp_strbuf_release(&sb);
        return NULL;
}

TEST(metrics_updates_and_renders_from_many_threads) {
        static const double bounds[] = { 0.5, 1, 5 };
        mshared m = { .reg = cp_metrics_new() };
        pthread_t t[UPDATERS], r;
        updater u[UPDATERS];

        m.labelled = cp_metrics_counter(m.reg, "tsan_labelled_total", "Labelled.", CP_LABELS("l"));
        m.plain = cp_metrics_plain_counter(m.reg, "tsan_plain_total", "Plain.");
        m.gauge = cp_metrics_plain_gauge(m.reg, "tsan_gauge", "Gauge.");
        m.collected = cp_metrics_plain_gauge(m.reg, "tsan_collected", "Gauge set by the collector.");
        m.hist = cp_metrics_plain_histogram(m.reg, "tsan_seconds", "Histogram.", bounds, ELEMENTSOF(bounds));
        cp_metrics_add_collector(m.reg, collect, &m);
        ASSERT_EQ(0, pthread_create(&r, NULL, render_many, &m));
        for (int i = 0; i < UPDATERS; i++) {
                u[i] = (updater) { .m = &m, .who = i };
                ASSERT_EQ(0, pthread_create(&t[i], NULL, update_many, &u[i]));
        }
        for (int i = 0; i < UPDATERS; i++)
                pthread_join(t[i], NULL);
        atomic_store(&m.stop, true);
        pthread_join(r, NULL);
        cp_metrics_remove_collector(m.reg, collect, &m);

        ASSERT_EQ((uint64_t) UPDATERS * UPDATES, cp_counter_get(m.plain));
        ASSERT_EQ((uint64_t) UPDATERS * UPDATES, cp_histogram_count(m.hist));
        ASSERT_TRUE(cp_gauge_get(m.gauge) == 0);
        uint64_t sum = 0;
        for (int i = 0; i < 8; i++) {
                char label[16];
                (void) snprintf(label, sizeof label, "l%d", i);
                sum += cp_counter_get(cp_metric_counter(m.labelled, CP_LABELS(label)));
        }
        ASSERT_EQ((uint64_t) UPDATERS * UPDATES, sum);
        cp_metrics_free(m.reg);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
