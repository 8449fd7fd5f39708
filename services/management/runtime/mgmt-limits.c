/*
 * The replica's rate-limit tables and the limit metrics (mgmt-limits.h).
 * The counters live in one static struct filled once from the
 * process-wide registry, like mgmt-metrics.c's.
 */
#include "cp/base.h"
#include "cp/metrics.h"
#include "cp/util.h"
#include "mgmt-limits.h"

#include <pthread.h>

struct mgmt_limits {
        cp_ratelimit *tables[_MGMT_LIMIT_MAX];
};

static const char *const limit_names[_MGMT_LIMIT_MAX] = {
        [MGMT_LIMIT_LOGIN_ADDR] = "login_addr",
        [MGMT_LIMIT_LOGIN_KEY] = "login_key",
        [MGMT_LIMIT_REST_TOKEN] = "rest_token",
        [MGMT_LIMIT_REST_ADDR] = "rest_addr",
};

static const char *const listener_names[_MGMT_LISTENER_MAX] = {
        [MGMT_LISTENER_GRPC] = "grpc",
        [MGMT_LISTENER_HTTP] = "http",
};

static struct {
        cp_counter *limited[_MGMT_LIMIT_MAX];
        cp_gauge *open[_MGMT_LISTENER_MAX];
        cp_counter *refused[_MGMT_LISTENER_MAX];
} ml;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void) {
        cp_metrics *reg = cp_metrics_global();
        cp_metric *f;

        f = cp_metrics_counter(reg, "netbird_cp_rate_limited_total",
                               "Requests refused by a rate limit of this replica (docs/ops.md \"Limits\").",
                               CP_LABELS("limit"));
        for (size_t i = 0; i < _MGMT_LIMIT_MAX; i++)
                ml.limited[i] = cp_metric_counter(f, CP_LABELS(limit_names[i]));
        f = cp_metrics_gauge(reg, "netbird_cp_connections",
                             "Open client connections of this replica (grpc: connections with calls in progress).",
                             CP_LABELS("listener"));
        for (size_t i = 0; i < _MGMT_LISTENER_MAX; i++)
                ml.open[i] = cp_metric_gauge(f, CP_LABELS(listener_names[i]));
        f = cp_metrics_counter(reg, "netbird_cp_connections_refused_total",
                               "Calls or requests refused because the listener was at its connection limit.",
                               CP_LABELS("listener"));
        for (size_t i = 0; i < _MGMT_LISTENER_MAX; i++)
                ml.refused[i] = cp_metric_counter(f, CP_LABELS(listener_names[i]));
}

static void ensure_init(void) {
        pthread_once(&init_once, init);
}

mgmt_limits *mgmt_limits_new(const cp_config *c) {
        mgmt_limits *l = cp_xcalloc(1, sizeof *l);
        size_t keys = (size_t) c->rate_limit_keys;

        ensure_init();
        l->tables[MGMT_LIMIT_LOGIN_ADDR] = cp_ratelimit_new(c->login_rate, c->login_burst, keys);
        l->tables[MGMT_LIMIT_LOGIN_KEY] = cp_ratelimit_new(c->setup_key_rate, c->setup_key_burst, keys);
        l->tables[MGMT_LIMIT_REST_TOKEN] = cp_ratelimit_new(c->rest_rate, c->rest_burst, keys);
        l->tables[MGMT_LIMIT_REST_ADDR] = cp_ratelimit_new(c->rest_auth_failure_rate, c->rest_auth_failure_burst,
                                                           keys);
        return l;
}

mgmt_limits *mgmt_limits_free(mgmt_limits *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < _MGMT_LIMIT_MAX; i++)
                cp_ratelimit_free(l->tables[i]);
        free(l);
        return NULL;
}

cp_ratelimit *mgmt_limits_table(mgmt_limits *l, mgmt_limit which) {
        return l ? l->tables[which] : NULL;
}

const char *mgmt_limit_name(mgmt_limit which) {
        return limit_names[which];
}

bool mgmt_limits_take(mgmt_limits *l, mgmt_limit which, const void *key, size_t len, int64_t *retry_after_ms) {
        if (!l || cp_ratelimit_take(l->tables[which], key, len, cp_now_mono_ms(), retry_after_ms))
                return true;
        mgmt_limits_count(which);
        return false;
}

void mgmt_limits_count(mgmt_limit which) {
        ensure_init();
        cp_counter_inc(ml.limited[which]);
}

void mgmt_limits_connections(mgmt_listener which, int64_t open) {
        ensure_init();
        cp_gauge_set(ml.open[which], (double) open);
}

void mgmt_limits_connection_refused(mgmt_listener which) {
        ensure_init();
        cp_counter_inc(ml.refused[which]);
}
