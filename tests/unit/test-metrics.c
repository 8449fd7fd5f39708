#include "cp/base.h"
#include "cp/metrics.h"
#include "cp/strbuf.h"
#include "cptest.h"

#include <math.h>
#include <pthread.h>

/* Renders m into a malloc'd string. */
static char *render(cp_metrics *m) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_metrics_render(m, &sb);
        return cp_strbuf_detach(&sb);
}

TEST(render_exact) {
        cp_metrics *m = cp_metrics_new();
        static const double bounds[] = { 0.005, 0.1, 1 };

        cp_metric *logins = cp_metrics_counter(m, "x_logins_total", "Logins by outcome.",
                                               CP_LABELS("kind", "outcome"));
        cp_counter *ok = cp_metric_counter(logins, CP_LABELS("login", "ok"));
        cp_counter *denied = cp_metric_counter(logins, CP_LABELS("registration", "permission_denied"));
        cp_gauge *streams = cp_metric_gauge(cp_metrics_gauge(m, "x_streams", "Open streams.", NULL), NULL);
        cp_metric *lat = cp_metrics_histogram(m, "x_duration_seconds", "How long.", CP_LABELS("op"), bounds, 3);
        cp_histogram *h = cp_metric_histogram(lat, CP_LABELS("read"));
        (void) cp_metrics_counter(m, "x_unused_total", "A labelled family without children.", CP_LABELS("a"));
        (void) cp_metric_histogram(cp_metrics_histogram(m, "x_plain_seconds", "No labels.", NULL, bounds, 1), NULL);

        cp_counter_inc(ok);
        cp_counter_add(ok, 2);
        cp_counter_inc(denied);
        cp_gauge_inc(streams);
        cp_gauge_inc(streams);
        cp_gauge_dec(streams);
        cp_gauge_add(streams, 0.5);
        cp_histogram_observe(h, 0.001);
        cp_histogram_observe(h, 0.005);         /* on the bound: counts in le="0.005" */
        cp_histogram_observe(h, 0.25);
        cp_histogram_observe(h, 7);
        cp_histogram_observe(h, NAN);           /* ignored */

        char *text = render(m);
        ASSERT_STREQ("# HELP x_logins_total Logins by outcome.\n"
                     "# TYPE x_logins_total counter\n"
                     "x_logins_total{kind=\"login\",outcome=\"ok\"} 3\n"
                     "x_logins_total{kind=\"registration\",outcome=\"permission_denied\"} 1\n"
                     "# HELP x_streams Open streams.\n"
                     "# TYPE x_streams gauge\n"
                     "x_streams 1.5\n"
                     "# HELP x_duration_seconds How long.\n"
                     "# TYPE x_duration_seconds histogram\n"
                     "x_duration_seconds_bucket{op=\"read\",le=\"0.005\"} 2\n"
                     "x_duration_seconds_bucket{op=\"read\",le=\"0.1\"} 2\n"
                     "x_duration_seconds_bucket{op=\"read\",le=\"1\"} 3\n"
                     "x_duration_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n"
                     "x_duration_seconds_sum{op=\"read\"} 7.256\n"
                     "x_duration_seconds_count{op=\"read\"} 4\n"
                     "# HELP x_plain_seconds No labels.\n"
                     "# TYPE x_plain_seconds histogram\n"
                     "x_plain_seconds_bucket{le=\"0.005\"} 0\n"
                     "x_plain_seconds_bucket{le=\"+Inf\"} 0\n"
                     "x_plain_seconds_sum 0\n"
                     "x_plain_seconds_count 0\n",
                     text);
        free(text);
        ASSERT_EQ(4, cp_histogram_count(h));
        ASSERT_EQ(3, cp_counter_get(ok));
        cp_metrics_free(m);
}

TEST(escaping) {
        cp_metrics *m = cp_metrics_new();
        cp_metric *f = cp_metrics_gauge(m, "x_info", "Help with \\ and\nnewline \"quoted\".", CP_LABELS("v"));

        cp_gauge_set(cp_metric_gauge(f, CP_LABELS("a\"b\\c\nd")), 1);
        char *text = render(m);
        ASSERT_STREQ("# HELP x_info Help with \\\\ and\\nnewline \"quoted\".\n"
                     "# TYPE x_info gauge\n"
                     "x_info{v=\"a\\\"b\\\\c\\nd\"} 1\n",
                     text);
        free(text);
        cp_metrics_free(m);
}

TEST(format_value) {
        char buf[32];
        static const struct {
                double v;
                const char *s;
        } cases[] = {
                { 0, "0" }, { -0.0, "0" }, { 1, "1" }, { -3, "-3" }, { 0.1, "0.1" }, { 0.005, "0.005" },
                { 2.5, "2.5" }, { 1e20, "1e+20" }, { 1.0 / 3, "0.3333333333333333" }, { 1700000000.25, "1700000000.25" },
                { INFINITY, "+Inf" }, { -INFINITY, "-Inf" }, { NAN, "NaN" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                cp_metrics_format_value(cases[i].v, buf);
                ASSERT_STREQ(cases[i].s, buf);
        }
}

TEST(registration_is_idempotent_and_children_unique) {
        cp_metrics *m = cp_metrics_new();
        cp_metric *a = cp_metrics_counter(m, "x_total", "One.", CP_LABELS("k"));
        cp_metric *b = cp_metrics_counter(m, "x_total", "Other help is fine.", CP_LABELS("k"));

        ASSERT_TRUE(a == b);
        ASSERT_TRUE(cp_metric_counter(a, CP_LABELS("v")) == cp_metric_counter(b, CP_LABELS("v")));
        ASSERT_TRUE(cp_metric_counter(a, CP_LABELS("v")) != cp_metric_counter(b, CP_LABELS("w")));
        /* Unlabelled families have their one child from the start. */
        cp_metric *g = cp_metrics_gauge(m, "x_g", "G.", NULL);
        ASSERT_TRUE(cp_metric_gauge(g, NULL) == cp_metric_gauge(g, NULL));
        ASSERT_TRUE(cp_metrics_plain_gauge(m, "x_g", "G.") == cp_metric_gauge(g, NULL));
        ASSERT_TRUE(cp_metrics_plain_counter(m, "y_total", "Y.") ==
                    cp_metric_counter(cp_metrics_counter(m, "y_total", "Y.", NULL), NULL));
        /* NULL children are ignored, so optional wiring needs no checks. */
        cp_counter_inc(NULL);
        cp_gauge_set(NULL, 1);
        cp_histogram_observe(NULL, 1);
        cp_metrics_free(m);
}

typedef struct collect_state {
        cp_gauge *g;
        int calls;
} collect_state;

static void collect(cp_metrics *m, void *userdata) {
        collect_state *st = userdata;

        st->calls++;
        /* Collectors may register (children on demand). */
        cp_gauge_set(cp_metric_gauge(cp_metrics_gauge(m, "x_late", "Made by a collector.", NULL), NULL), 2);
        cp_gauge_set(st->g, st->calls * 10);
}

TEST(collectors_run_at_render_until_removed) {
        cp_metrics *m = cp_metrics_new();
        collect_state st = { .g = cp_metric_gauge(cp_metrics_gauge(m, "x_collected", "Collected.", NULL), NULL) };

        cp_metrics_add_collector(m, collect, &st);
        char *text = render(m);
        ASSERT_STREQ("# HELP x_collected Collected.\n# TYPE x_collected gauge\nx_collected 10\n"
                     "# HELP x_late Made by a collector.\n# TYPE x_late gauge\nx_late 2\n",
                     text);
        free(text);
        cp_metrics_remove_collector(m, collect, &st);
        cp_metrics_remove_collector(m, collect, &st);   /* absent: no-op */
        free(render(m));
        ASSERT_EQ(1, st.calls);
        cp_metrics_free(m);
}

TEST(process_collector) {
        cp_metrics *m = cp_metrics_new();

        cp_metrics_add_process_collector(m);
        cp_metrics_add_process_collector(m);    /* once per registry */
        char *text = render(m);
        ASSERT_TRUE(strstr(text, "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1") != NULL);
        ASSERT_TRUE(strstr(text, "\nprocess_resident_memory_bytes ") != NULL);
        ASSERT_TRUE(strstr(text, "\nprocess_open_fds ") != NULL);
        ASSERT_TRUE(strstr(text, "\nprocess_resident_memory_bytes 0\n") == NULL);
        ASSERT_TRUE(strstr(text, "\nprocess_open_fds 0\n") == NULL);
        free(text);
        cp_metrics_free(m);
}

#define THREADS 4
#define ROUNDS 100000

typedef struct hammer {
        cp_counter *c;
        cp_gauge *g;
        cp_histogram *h;
} hammer;

static void *hammer_run(void *arg) {
        hammer *x = arg;

        for (int i = 0; i < ROUNDS; i++) {
                cp_counter_inc(x->c);
                cp_gauge_inc(x->g);
                cp_histogram_observe(x->h, (i % 2) ? 0.5 : 2);
        }
        return NULL;
}

TEST(updates_from_many_threads_add_up) {
        cp_metrics *m = cp_metrics_new();
        static const double bounds[] = { 1 };
        hammer x = {
                .c = cp_metric_counter(cp_metrics_counter(m, "x_total", "C.", NULL), NULL),
                .g = cp_metric_gauge(cp_metrics_gauge(m, "x_g", "G.", NULL), NULL),
                .h = cp_metric_histogram(cp_metrics_histogram(m, "x_h", "H.", NULL, bounds, 1), NULL),
        };
        pthread_t t[THREADS];

        for (int i = 0; i < THREADS; i++)
                ASSERT_EQ(0, pthread_create(&t[i], NULL, hammer_run, &x));
        /* Renders race the updates; they must not crash or tear. */
        for (int i = 0; i < 20; i++)
                free(render(m));
        for (int i = 0; i < THREADS; i++)
                ASSERT_EQ(0, pthread_join(t[i], NULL));
        ASSERT_EQ(THREADS * ROUNDS, cp_counter_get(x.c));
        ASSERT_EQ(THREADS * ROUNDS, (long long) cp_gauge_get(x.g));
        ASSERT_EQ(THREADS * ROUNDS, cp_histogram_count(x.h));
        ASSERT_EQ(THREADS * ROUNDS / 2 * 5 / 2, (long long) cp_histogram_sum(x.h));
        cp_metrics_free(m);
}

TEST(global_registry_is_one) {
        ASSERT_TRUE(cp_metrics_global() == cp_metrics_global());
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
