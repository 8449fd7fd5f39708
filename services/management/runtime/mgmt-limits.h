/*
 * mgmt-limits.h: this replica's rate and connection limits (docs/ops.md
 * "Limits"), made from the settings (--login-rate and the rest,
 * docs/config.md) and counted in /metrics (docs/metrics.md):
 *   netbird_cp_rate_limited_total{limit}        refusals by limit
 *   netbird_cp_connections{listener}            open connections (grpc: with calls)
 *   netbird_cp_connections_refused_total{listener}
 *
 * Rate limits are token buckets (cp/ratelimit.h) in memory, per replica:
 * a protection of this process, not state the replicas share; the
 * cluster-wide effective limit is replicas x limit.
 *
 * Threads: the takes and counters are thread-safe (the CQ thread, the
 * workers and the HTTP loop call them). The tables are made by
 * mgmt_limits_new() and freed by mgmt_limits_free() once no thread uses
 * them (after the servers stopped).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/config.h"
#include "cp/ratelimit.h"

typedef enum mgmt_limit {
        MGMT_LIMIT_LOGIN_ADDR,          /* Login per source address */
        MGMT_LIMIT_LOGIN_KEY,           /* registration per setup key */
        MGMT_LIMIT_REST_TOKEN,          /* REST per token / user */
        MGMT_LIMIT_REST_ADDR,           /* REST authentication failures per address */
        _MGMT_LIMIT_MAX,
} mgmt_limit;

typedef enum mgmt_listener {
        MGMT_LISTENER_GRPC,
        MGMT_LISTENER_HTTP,
        _MGMT_LISTENER_MAX,
} mgmt_listener;

typedef struct mgmt_limits mgmt_limits;

/* The tables of c's settings; never fails. */
mgmt_limits *mgmt_limits_new(const cp_config *c);
/* Accepts NULL; returns NULL. */
mgmt_limits *mgmt_limits_free(mgmt_limits *l);

/* The table of one limit (borrowed; NULL for a NULL l): handed to code
 * that takes from it itself (the REST API). */
cp_ratelimit *mgmt_limits_table(mgmt_limits *l, mgmt_limit which);
/* The limit's label in /metrics ("login_addr", ...). */
const char *mgmt_limit_name(mgmt_limit which);

/* Takes one token of key's bucket; false when over the limit (counted;
 * *retry_after_ms, may be NULL, says when to come back). l NULL: true. */
bool mgmt_limits_take(mgmt_limits *l, mgmt_limit which, const void *key, size_t len, int64_t *retry_after_ms);
/* Counts one refusal that the table's user decided itself. */
void mgmt_limits_count(mgmt_limit which);

/* Connection gauges and refusals (any thread). */
void mgmt_limits_connections(mgmt_listener which, int64_t open);
void mgmt_limits_connection_refused(mgmt_listener which);
