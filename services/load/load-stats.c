/*
 * Latency samples and counters by gRPC status, rendered into the JSON
 * summary line.
 */
#include "cp-methods.h"
#include "cp/base.h"
#include "load.h"

void load_series_add(load_series *s, double v) {
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 1024;
                s->v = cp_xrealloc(s->v, s->cap * sizeof *s->v);
        }
        s->v[s->n++] = v;
}

void load_series_release(load_series *s) {
        free(s->v);
        *s = (load_series) { 0 };
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n), n > 0. */
static double pct(const double *v, size_t n, double p) {
        size_t k = (size_t) (p * (double) n + 0.999999);
        return v[k == 0 ? 0 : (k > n ? n : k) - 1];
}

void load_series_json(cp_strbuf *sb, const char *name, load_series *s) {
        if (s->n == 0) {
                cp_strbuf_addf(sb, "\"%s\":{\"n\":0}", name);
                return;
        }
        qsort(s->v, s->n, sizeof *s->v, cmp_double);
        cp_strbuf_addf(sb, "\"%s\":{\"n\":%zu,\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f}", name, s->n,
                       pct(s->v, s->n, 0.50), pct(s->v, s->n, 0.99), s->v[s->n - 1]);
}

void load_counts_add(load_counts *c, grpc_status_code st) {
        size_t last = ELEMENTSOF(c->by_status) - 1;
        c->by_status[(unsigned) st < last ? (size_t) st : last]++;
}

uint64_t load_counts_total(const load_counts *c) {
        uint64_t t = 0;
        for (size_t i = 0; i < ELEMENTSOF(c->by_status); i++)
                t += c->by_status[i];
        return t;
}

void load_counts_json(cp_strbuf *sb, const char *name, const load_counts *c) {
        size_t last = ELEMENTSOF(c->by_status) - 1;
        bool first = true;

        cp_strbuf_addf(sb, "\"%s\":{", name);
        for (size_t i = 0; i <= last; i++) {
                if (!c->by_status[i])
                        continue;
                cp_strbuf_addf(sb, "%s\"%s\":%" PRIu64, first ? "" : ",",
                               i == last ? "UNKNOWN_STATUS" : cp_proto_status_name(i),
                               c->by_status[i]);
                first = false;
        }
        cp_strbuf_addch(sb, '}');
}
