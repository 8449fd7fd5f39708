/*
 * cp/metrics.h: counters, gauges and histograms with fixed label sets,
 * rendered in the Prometheus text exposition format (version 0.0.4).
 *
 *   cp_metric *f = cp_metrics_counter(cp_metrics_global(), "netbird_cp_logins_total",
 *                                     "Login calls by outcome.", CP_LABELS("kind", "outcome"));
 *   cp_counter *ok = cp_metric_counter(f, CP_LABELS("login", "ok"));    (setup: once)
 *   cp_counter_inc(ok);                                                  (hot path: any thread)
 *
 * Three steps with different costs:
 *   - A family (name, help, type, label names, buckets) is registered once.
 *   - A child (one combination of label values) is created once, at setup,
 *     and the caller keeps the pointer. This allocates and takes the
 *     registry's lock.
 *   - Updating a child is a relaxed C11 atomic (a compare-and-swap loop for
 *     floating-point values): no allocation, no lock, any thread.
 *
 * Lifetimes: families and children live as long as their registry; the
 * process-wide registry (cp_metrics_global()) lives until exit, so pointers
 * into it never dangle. Strings passed in are copied.
 *
 * Threads: every function is thread-safe. Rendering runs the collectors
 * and then reads every value with relaxed loads; a scrape racing updates
 * sees each value at some recent point, and a histogram's _count is the
 * sum of its buckets as read, so _count always equals the +Inf bucket.
 *
 * Programming errors (an invalid name, the same name registered with a
 * different type, labels or buckets, a child with the wrong number of
 * label values) abort with one line on stderr: they are fixed in code, not
 * handled at run time.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/strbuf.h"

typedef struct cp_metrics cp_metrics;           /* a registry */
typedef struct cp_metric cp_metric;             /* one family: name, help, type, labels */
typedef struct cp_counter cp_counter;           /* one child of a counter family */
typedef struct cp_gauge cp_gauge;               /* one child of a gauge family */
typedef struct cp_histogram cp_histogram;       /* one child of a histogram family */

/* A NULL-terminated list of label names or values, as a compound literal
 * (valid in the enclosing block): CP_LABELS("kind", "outcome"). */
#define CP_LABELS(...) ((const char *const[]) { __VA_ARGS__, NULL })

/* The content type of cp_metrics_render()'s output. */
#define CP_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- registries ------------------------------------------------------------- */

/* The process-wide registry: created on first use, never freed (do not
 * pass it to cp_metrics_free()). Services and libraries register here;
 * the HTTP side renders it. */
cp_metrics *cp_metrics_global(void);

/* A private registry (tests, tools). Free with cp_metrics_free(), after
 * every thread stopped using its children. Accepts NULL; returns NULL. */
cp_metrics *cp_metrics_new(void);
cp_metrics *cp_metrics_free(cp_metrics *m);

/* ---- families ------------------------------------------------------------------ */

/*
 * Registers a family, or returns the one already registered under name
 * when type, label names and buckets are the same (so independent modules
 * may each register what they use). name: [a-zA-Z_:][a-zA-Z0-9_:]*; a
 * counter's name should end in _total. help: one line of text (escaped on
 * output). labels: NULL-terminated label names ([a-zA-Z_][a-zA-Z0-9_]*, not
 * starting with "__", at most 8), or NULL for none.
 *
 * A family without labels has exactly one child, made here: get it with
 * cp_metric_counter(f, NULL) and so on.
 *
 * Histogram bounds: n_bounds (1..32) strictly increasing finite upper
 * bounds; the +Inf bucket is implicit. "le" is not allowed as a label.
 */
cp_metric *cp_metrics_counter(cp_metrics *m, const char *name, const char *help, const char *const *labels);
cp_metric *cp_metrics_gauge(cp_metrics *m, const char *name, const char *help, const char *const *labels);
cp_metric *cp_metrics_histogram(cp_metrics *m, const char *name, const char *help, const char *const *labels,
                                const double *bounds, size_t n_bounds);

/* A family without labels and its one child, in one call (the same rules
 * as above; registering the name again returns the same child). */
cp_counter *cp_metrics_plain_counter(cp_metrics *m, const char *name, const char *help);
cp_gauge *cp_metrics_plain_gauge(cp_metrics *m, const char *name, const char *help);
cp_histogram *cp_metrics_plain_histogram(cp_metrics *m, const char *name, const char *help, const double *bounds,
                                         size_t n_bounds);

/* ---- children ---------------------------------------------------------------------- */

/*
 * The child of family f for values (NULL-terminated, one per label name,
 * in the family's order; NULL for a family without labels). Created on the
 * first call and returned again afterwards; allocates and locks, so call
 * it at setup and keep the pointer. Children are rendered in the order
 * they were created, including those never updated (value 0).
 * The type must match the family's.
 */
cp_counter *cp_metric_counter(cp_metric *f, const char *const *values);
cp_gauge *cp_metric_gauge(cp_metric *f, const char *const *values);
cp_histogram *cp_metric_histogram(cp_metric *f, const char *const *values);

/* ---- updates: lock-free, any thread; a NULL child is ignored --------------------------- */

void cp_counter_inc(cp_counter *c);
void cp_counter_add(cp_counter *c, uint64_t n);
/* For collectors that mirror a counter kept elsewhere (cp_bus_stats):
 * sets the absolute value. Never make it go down. */
void cp_counter_set(cp_counter *c, uint64_t v);
uint64_t cp_counter_get(const cp_counter *c);

void cp_gauge_set(cp_gauge *g, double v);
void cp_gauge_add(cp_gauge *g, double delta);
void cp_gauge_inc(cp_gauge *g);
void cp_gauge_dec(cp_gauge *g);
double cp_gauge_get(const cp_gauge *g);

/* Counts v in the first bucket whose bound is >= v (the +Inf bucket when
 * none) and adds it to the sum. NaN is ignored. */
void cp_histogram_observe(cp_histogram *h, double v);
/* Observations so far (the sum of the buckets). */
uint64_t cp_histogram_count(const cp_histogram *h);
double cp_histogram_sum(const cp_histogram *h);

/* ---- collectors ------------------------------------------------------------------------ */

/*
 * A collector fills gauges and counters from a source that keeps its own
 * numbers (a stats struct, /proc) just before each render. It runs on the
 * rendering thread, one render at a time, and may register families and
 * children, but must not render or add/remove collectors.
 *
 * userdata is borrowed until cp_metrics_remove_collector() returns; once it
 * has returned, fn is not running and will not run again with userdata, so
 * the caller may free what userdata points to.
 */
typedef void (*cp_metrics_collect_fn)(cp_metrics *m, void *userdata);

void cp_metrics_add_collector(cp_metrics *m, cp_metrics_collect_fn fn, void *userdata);
/* Removes the collector added with this (fn, userdata); no-op when absent. */
void cp_metrics_remove_collector(cp_metrics *m, cp_metrics_collect_fn fn, void *userdata);

/*
 * The standard process metrics, from /proc/self and getrusage(), filled at
 * each render: process_start_time_seconds, process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds. Idempotent per registry.
 */
void cp_metrics_add_process_collector(cp_metrics *m);

/* ---- rendering --------------------------------------------------------------------------- */

/*
 * Runs the collectors, then appends every family that has at least one
 * child to out, in registration order: "# HELP" and "# TYPE" lines, then
 * one sample per child (histograms: cumulative _bucket lines ending with
 * le="+Inf", then _sum and _count). Label values and help text are
 * escaped as the format requires.
 */
void cp_metrics_render(cp_metrics *m, cp_strbuf *out);

/* Formats v the way the exposition format writes numbers: shortest
 * round-trip decimal, "+Inf", "-Inf", "NaN". buf must hold 32 bytes. */
void cp_metrics_format_value(double v, char buf[32]);
