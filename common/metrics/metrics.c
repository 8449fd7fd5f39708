/*
 * The registry, families, children, updates and the text renderer
 * (cp/metrics.h; README.md has the lifetimes and thread rules).
 *
 * Locks: collect_lock serialises renders and guards the collector list;
 * lock guards the family and child lists. A render holds collect_lock
 * while its collectors run (they may create children, which takes lock)
 * and then takes lock to walk the lists. Order: collect_lock, then lock;
 * updates take neither.
 */
#include "cp/base.h"
#include "cp/metrics.h"
#include "metrics-int.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#define MAX_LABELS 8
#define MAX_BOUNDS 32

typedef enum metric_type {
        TYPE_COUNTER,
        TYPE_GAUGE,
        TYPE_HISTOGRAM,
} metric_type;

static const char *const type_names[] = {
        [TYPE_COUNTER] = "counter",
        [TYPE_GAUGE] = "gauge",
        [TYPE_HISTOGRAM] = "histogram",
};

struct cp_counter {
        _Atomic uint64_t v;
};

struct cp_gauge {
        _Atomic uint64_t bits;          /* a double's bits */
};

struct cp_histogram {
        const double *bounds;           /* the family's; n_bounds + 1 buckets */
        size_t n_bounds;
        _Atomic uint64_t sum_bits;      /* a double's bits */
        _Atomic uint64_t buckets[];     /* non-cumulative; the last is +Inf */
};

typedef struct child {
        struct child *next;
        char **values;                  /* the family's n_labels values */
        union {
                cp_counter counter;
                cp_gauge gauge;
        } u;
        cp_histogram *hist;             /* histogram families */
} child;

struct cp_metric {
        struct cp_metric *next;
        cp_metrics *reg;                /* whose lock guards the children */
        metric_type type;
        char *name;
        char *help;
        char **labels;
        size_t n_labels;
        double *bounds;
        size_t n_bounds;
        child *children, **children_tail;
};

typedef struct collector {
        struct collector *next;
        cp_metrics_collect_fn fn;
        void *userdata;
} collector;

/* Memory owned by the registry (collector state), freed with it. */
typedef struct kept {
        struct kept *next;
        max_align_t data[];
} kept;

struct cp_metrics {
        pthread_mutex_t collect_lock;
        pthread_mutex_t lock;
        cp_metric *families, **families_tail;
        collector *collectors;
        kept *kept;
        bool process_collector;
};

_noreturn_ static void misuse(const char *what, const char *name) {
        /* A programming error: no logger in a library, one line and abort. */
        char msg[256];
        int len = snprintf(msg, sizeof msg, "{\"level\":\"fatal\",\"msg\":\"metrics: %s\",\"metric\":\"%s\"}\n",
                           what, name ? name : "");
        if (len > 0)
                (void) !write(STDERR_FILENO, msg, (size_t) len < sizeof msg ? (size_t) len : sizeof msg - 1);
        abort();
}

/* ---- atomics on doubles --------------------------------------------------- */

static uint64_t double_bits(double v) {
        uint64_t b;

        memcpy(&b, &v, sizeof b);
        return b;
}

static double bits_double(uint64_t b) {
        double v;

        memcpy(&v, &b, sizeof v);
        return v;
}

static void atomic_add_double(_Atomic uint64_t *p, double delta) {
        uint64_t old = atomic_load_explicit(p, memory_order_relaxed);

        while (!atomic_compare_exchange_weak_explicit(p, &old, double_bits(bits_double(old) + delta),
                                                      memory_order_relaxed, memory_order_relaxed))
                ;
}

/* ---- registries --------------------------------------------------------------- */

static void registry_init(cp_metrics *m) {
        pthread_mutex_init(&m->collect_lock, NULL);
        pthread_mutex_init(&m->lock, NULL);
        m->families = NULL;
        m->families_tail = &m->families;
        m->collectors = NULL;
        m->process_collector = false;
}

static cp_metrics global_registry;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void) {
        registry_init(&global_registry);
}

cp_metrics *cp_metrics_global(void) {
        (void) pthread_once(&global_once, global_init);
        return &global_registry;
}

cp_metrics *cp_metrics_new(void) {
        cp_metrics *m = cp_xcalloc(1, sizeof *m);

        registry_init(m);
        return m;
}

static void strv_free(char **v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

cp_metrics *cp_metrics_free(cp_metrics *m) {
        if (!m)
                return NULL;
        if (m == &global_registry)
                misuse("the global registry cannot be freed", NULL);
        while (m->families) {
                cp_metric *f = m->families;
                m->families = f->next;
                while (f->children) {
                        child *c = f->children;
                        f->children = c->next;
                        strv_free(c->values, f->n_labels);
                        free(c->hist);
                        free(c);
                }
                strv_free(f->labels, f->n_labels);
                free(f->bounds);
                free(f->name);
                free(f->help);
                free(f);
        }
        while (m->collectors) {
                collector *c = m->collectors;
                m->collectors = c->next;
                free(c);
        }
        while (m->kept) {
                kept *k = m->kept;
                m->kept = k->next;
                free(k);
        }
        pthread_mutex_destroy(&m->lock);
        pthread_mutex_destroy(&m->collect_lock);
        free(m);
        return NULL;
}

/* ---- families ------------------------------------------------------------------- */

static bool valid_name(const char *s, bool colon) {
        if (!s || !*s)
                return false;
        for (size_t i = 0; s[i]; i++) {
                char c = s[i];
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
                          (i > 0 && c >= '0' && c <= '9');
                if (!ok)
                        return false;
        }
        return true;
}

static size_t strv_len(const char *const *v) {
        size_t n = 0;

        while (v && v[n])
                n++;
        return n;
}

static child *child_new(cp_metric *f, const char *const *values);

static bool same_shape(const cp_metric *f, metric_type type, const char *const *labels, size_t n_labels,
                       const double *bounds, size_t n_bounds) {
        if (f->type != type || f->n_labels != n_labels || f->n_bounds != n_bounds)
                return false;
        for (size_t i = 0; i < n_labels; i++)
                if (strcmp(f->labels[i], labels[i]) != 0)
                        return false;
        for (size_t i = 0; i < n_bounds; i++)
                if (f->bounds[i] != bounds[i])
                        return false;
        return true;
}

static cp_metric *family_register(cp_metrics *m, metric_type type, const char *name, const char *help,
                                  const char *const *labels, const double *bounds, size_t n_bounds) {
        size_t n_labels = strv_len(labels);
        cp_metric *f;

        if (!valid_name(name, true))
                misuse("invalid metric name", name);
        if (n_labels > MAX_LABELS)
                misuse("too many labels", name);
        for (size_t i = 0; i < n_labels; i++) {
                if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0)
                        misuse("invalid label name", name);
                if (type == TYPE_HISTOGRAM && strcmp(labels[i], "le") == 0)
                        misuse("a histogram cannot have the label le", name);
                for (size_t j = 0; j < i; j++)
                        if (strcmp(labels[i], labels[j]) == 0)
                                misuse("duplicate label name", name);
        }
        if (type == TYPE_HISTOGRAM) {
                if (n_bounds < 1 || n_bounds > MAX_BOUNDS || !bounds)
                        misuse("a histogram needs 1 to 32 bucket bounds", name);
                for (size_t i = 0; i < n_bounds; i++)
                        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                                misuse("bucket bounds must be finite and increasing", name);
        }

        pthread_mutex_lock(&m->lock);
        for (f = m->families; f; f = f->next)
                if (strcmp(f->name, name) == 0)
                        break;
        if (f) {
                bool same = same_shape(f, type, labels, n_labels, bounds, n_bounds);
                pthread_mutex_unlock(&m->lock);
                if (!same)
                        misuse("registered again with another type, labels or buckets", name);
                return f;
        }
        f = cp_xcalloc(1, sizeof *f);
        f->reg = m;
        f->type = type;
        f->name = cp_xstrdup(name);
        f->help = cp_xstrdup(help ? help : "");
        f->n_labels = n_labels;
        if (n_labels) {
                f->labels = cp_xcalloc(n_labels, sizeof *f->labels);
                for (size_t i = 0; i < n_labels; i++)
                        f->labels[i] = cp_xstrdup(labels[i]);
        }
        if (type == TYPE_HISTOGRAM) {
                f->bounds = cp_xcalloc(n_bounds, sizeof *f->bounds);
                memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
                f->n_bounds = n_bounds;
        }
        f->children_tail = &f->children;
        if (n_labels == 0)
                (void) child_new(f, NULL);
        *m->families_tail = f;
        m->families_tail = &f->next;
        pthread_mutex_unlock(&m->lock);
        return f;
}

cp_metric *cp_metrics_counter(cp_metrics *m, const char *name, const char *help, const char *const *labels) {
        return family_register(m, TYPE_COUNTER, name, help, labels, NULL, 0);
}

cp_metric *cp_metrics_gauge(cp_metrics *m, const char *name, const char *help, const char *const *labels) {
        return family_register(m, TYPE_GAUGE, name, help, labels, NULL, 0);
}

cp_metric *cp_metrics_histogram(cp_metrics *m, const char *name, const char *help, const char *const *labels,
                                const double *bounds, size_t n_bounds) {
        return family_register(m, TYPE_HISTOGRAM, name, help, labels, bounds, n_bounds);
}

/* ---- children ----------------------------------------------------------------------- */

/* Appends a child; the registry's lock is held. */
static child *child_new(cp_metric *f, const char *const *values) {
        child *c = cp_xcalloc(1, sizeof *c);

        if (f->n_labels) {
                c->values = cp_xcalloc(f->n_labels, sizeof *c->values);
                for (size_t i = 0; i < f->n_labels; i++)
                        c->values[i] = cp_xstrdup(values[i]);
        }
        if (f->type == TYPE_HISTOGRAM) {
                c->hist = cp_xcalloc(1, sizeof *c->hist + (f->n_bounds + 1) * sizeof c->hist->buckets[0]);
                c->hist->bounds = f->bounds;
                c->hist->n_bounds = f->n_bounds;
        }
        *f->children_tail = c;
        f->children_tail = &c->next;
        return c;
}

static child *child_get(cp_metric *f, metric_type type, const char *const *values) {
        child *c;

        if (!f)
                misuse("no family", NULL);
        if (f->type != type)
                misuse("child of another type than its family", f->name);
        if (strv_len(values) != f->n_labels)
                misuse("wrong number of label values", f->name);
        pthread_mutex_lock(&f->reg->lock);
        for (c = f->children; c; c = c->next) {
                size_t i = 0;
                while (i < f->n_labels && strcmp(c->values[i], values[i]) == 0)
                        i++;
                if (i == f->n_labels)
                        break;
        }
        if (!c)
                c = child_new(f, values);
        pthread_mutex_unlock(&f->reg->lock);
        return c;
}

cp_counter *cp_metric_counter(cp_metric *f, const char *const *values) {
        return &child_get(f, TYPE_COUNTER, values)->u.counter;
}

cp_gauge *cp_metric_gauge(cp_metric *f, const char *const *values) {
        return &child_get(f, TYPE_GAUGE, values)->u.gauge;
}

cp_histogram *cp_metric_histogram(cp_metric *f, const char *const *values) {
        return child_get(f, TYPE_HISTOGRAM, values)->hist;
}

cp_counter *cp_metrics_plain_counter(cp_metrics *m, const char *name, const char *help) {
        return cp_metric_counter(cp_metrics_counter(m, name, help, NULL), NULL);
}

cp_gauge *cp_metrics_plain_gauge(cp_metrics *m, const char *name, const char *help) {
        return cp_metric_gauge(cp_metrics_gauge(m, name, help, NULL), NULL);
}

cp_histogram *cp_metrics_plain_histogram(cp_metrics *m, const char *name, const char *help, const double *bounds,
                                         size_t n_bounds) {
        return cp_metric_histogram(cp_metrics_histogram(m, name, help, NULL, bounds, n_bounds), NULL);
}


/* ---- updates ------------------------------------------------------------------------ */

void cp_counter_inc(cp_counter *c) {
        if (c)
                atomic_fetch_add_explicit(&c->v, 1, memory_order_relaxed);
}

void cp_counter_add(cp_counter *c, uint64_t n) {
        if (c)
                atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

void cp_counter_set(cp_counter *c, uint64_t v) {
        if (c)
                atomic_store_explicit(&c->v, v, memory_order_relaxed);
}

uint64_t cp_counter_get(const cp_counter *c) {
        return c ? atomic_load_explicit(&((cp_counter *) c)->v, memory_order_relaxed) : 0;
}

void cp_gauge_set(cp_gauge *g, double v) {
        if (g)
                atomic_store_explicit(&g->bits, double_bits(v), memory_order_relaxed);
}

void cp_gauge_add(cp_gauge *g, double delta) {
        if (g)
                atomic_add_double(&g->bits, delta);
}

void cp_gauge_inc(cp_gauge *g) {
        cp_gauge_add(g, 1);
}

void cp_gauge_dec(cp_gauge *g) {
        cp_gauge_add(g, -1);
}

double cp_gauge_get(const cp_gauge *g) {
        return g ? bits_double(atomic_load_explicit(&((cp_gauge *) g)->bits, memory_order_relaxed)) : 0;
}

void cp_histogram_observe(cp_histogram *h, double v) {
        size_t i = 0;

        if (!h || isnan(v))
                return;
        while (i < h->n_bounds && v > h->bounds[i])
                i++;
        atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
        atomic_add_double(&h->sum_bits, v);
}

uint64_t cp_histogram_count(const cp_histogram *h) {
        uint64_t n = 0;

        if (!h)
                return 0;
        for (size_t i = 0; i <= h->n_bounds; i++)
                n += atomic_load_explicit(&((cp_histogram *) h)->buckets[i], memory_order_relaxed);
        return n;
}

double cp_histogram_sum(const cp_histogram *h) {
        return h ? bits_double(atomic_load_explicit(&((cp_histogram *) h)->sum_bits, memory_order_relaxed)) : 0;
}

/* ---- collectors ------------------------------------------------------------------------ */

void cp_metrics_add_collector(cp_metrics *m, cp_metrics_collect_fn fn, void *userdata) {
        collector *c = cp_xcalloc(1, sizeof *c), **tail;

        c->fn = fn;
        c->userdata = userdata;
        pthread_mutex_lock(&m->collect_lock);
        for (tail = &m->collectors; *tail; tail = &(*tail)->next)
                ;
        *tail = c;
        pthread_mutex_unlock(&m->collect_lock);
}

void cp_metrics_remove_collector(cp_metrics *m, cp_metrics_collect_fn fn, void *userdata) {
        collector *gone = NULL;

        /* Taking collect_lock waits for a render in progress. */
        pthread_mutex_lock(&m->collect_lock);
        for (collector **p = &m->collectors; *p; p = &(*p)->next)
                if ((*p)->fn == fn && (*p)->userdata == userdata) {
                        gone = *p;
                        *p = gone->next;
                        break;
                }
        pthread_mutex_unlock(&m->collect_lock);
        free(gone);
}

void *cp_metrics__keep(cp_metrics *m, size_t size) {
        kept *k = cp_xcalloc(1, sizeof *k + size);

        pthread_mutex_lock(&m->collect_lock);
        k->next = m->kept;
        m->kept = k;
        pthread_mutex_unlock(&m->collect_lock);
        return k->data;
}

bool cp_metrics__claim_process_collector(cp_metrics *m) {
        bool first;

        pthread_mutex_lock(&m->collect_lock);
        first = !m->process_collector;
        m->process_collector = true;
        pthread_mutex_unlock(&m->collect_lock);
        return first;
}

/* ---- rendering ------------------------------------------------------------------------------ */

void cp_metrics_format_value(double v, char buf[32]) {
        if (isnan(v)) {
                (void) snprintf(buf, 32, "NaN");
                return;
        }
        if (isinf(v)) {
                (void) snprintf(buf, 32, "%s", v > 0 ? "+Inf" : "-Inf");
                return;
        }
        if (v == 0) {
                (void) snprintf(buf, 32, "0");  /* also -0 */
                return;
        }
        if (v == floor(v) && fabs(v) < 1e15) {
                (void) snprintf(buf, 32, "%.0f", v);
                return;
        }
        /* The shortest of 15..17 significant digits that reads back equal. */
        for (int prec = 15; prec <= 17; prec++) {
                (void) snprintf(buf, 32, "%.*g", prec, v);
                if (strtod(buf, NULL) == v)
                        return;
        }
}

/* Help text: backslash and newline escaped. Label values: also '"'. */
static void add_escaped(cp_strbuf *out, const char *s, bool quote) {
        for (; *s; s++) {
                if (*s == '\\')
                        cp_strbuf_adds(out, "\\\\");
                else if (*s == '\n')
                        cp_strbuf_adds(out, "\\n");
                else if (quote && *s == '"')
                        cp_strbuf_adds(out, "\\\"");
                else
                        cp_strbuf_addch(out, *s);
        }
}

/* name{l1="v1",...[,le="b"]} value */
static void add_sample(cp_strbuf *out, const cp_metric *f, const char *suffix, const child *c, const char *le,
                       const char *value) {
        cp_strbuf_adds(out, f->name);
        cp_strbuf_adds(out, suffix);
        if (f->n_labels || le) {
                cp_strbuf_addch(out, '{');
                for (size_t i = 0; i < f->n_labels; i++) {
                        if (i)
                                cp_strbuf_addch(out, ',');
                        cp_strbuf_adds(out, f->labels[i]);
                        cp_strbuf_adds(out, "=\"");
                        add_escaped(out, c->values[i], true);
                        cp_strbuf_addch(out, '"');
                }
                if (le) {
                        if (f->n_labels)
                                cp_strbuf_addch(out, ',');
                        cp_strbuf_adds(out, "le=\"");
                        cp_strbuf_adds(out, le);
                        cp_strbuf_addch(out, '"');
                }
                cp_strbuf_addch(out, '}');
        }
        cp_strbuf_addch(out, ' ');
        cp_strbuf_adds(out, value);
        cp_strbuf_addch(out, '\n');
}

static void render_histogram(cp_strbuf *out, const cp_metric *f, const child *c) {
        cp_histogram *h = c->hist;
        uint64_t cumulative = 0;
        char le[32], value[32];

        for (size_t i = 0; i <= h->n_bounds; i++) {
                cumulative += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
                if (i < h->n_bounds)
                        cp_metrics_format_value(h->bounds[i], le);
                else
                        (void) snprintf(le, sizeof le, "+Inf");
                (void) snprintf(value, sizeof value, "%" PRIu64, cumulative);
                add_sample(out, f, "_bucket", c, le, value);
        }
        cp_metrics_format_value(cp_histogram_sum(h), value);
        add_sample(out, f, "_sum", c, NULL, value);
        (void) snprintf(value, sizeof value, "%" PRIu64, cumulative);
        add_sample(out, f, "_count", c, NULL, value);
}

void cp_metrics_render(cp_metrics *m, cp_strbuf *out) {
        pthread_mutex_lock(&m->collect_lock);
        for (collector *c = m->collectors; c; c = c->next)
                c->fn(m, c->userdata);

        pthread_mutex_lock(&m->lock);
        for (const cp_metric *f = m->families; f; f = f->next) {
                char value[32];

                if (!f->children)
                        continue;
                cp_strbuf_addf(out, "# HELP %s ", f->name);
                add_escaped(out, f->help, false);
                cp_strbuf_addf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
                for (const child *c = f->children; c; c = c->next) {
                        switch (f->type) {
                        case TYPE_COUNTER:
                                (void) snprintf(value, sizeof value, "%" PRIu64, cp_counter_get(&c->u.counter));
                                add_sample(out, f, "", c, NULL, value);
                                break;
                        case TYPE_GAUGE:
                                cp_metrics_format_value(cp_gauge_get(&c->u.gauge), value);
                                add_sample(out, f, "", c, NULL, value);
                                break;
                        case TYPE_HISTOGRAM:
                                render_histogram(out, f, c);
                                break;
                        }
                }
        }
        pthread_mutex_unlock(&m->lock);
        pthread_mutex_unlock(&m->collect_lock);
}
