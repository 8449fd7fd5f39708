/*
 * The management server's metrics (mgmt-metrics.h, docs/metrics.md).
 *
 * Every handle lives in one static struct filled once (pthread_once) from
 * the process-wide registry, so the recording functions are an index and
 * an atomic. The only state that changes afterwards is what the watch
 * functions keep: the watched store and bus, touched by the thread that
 * owns them and by collectors, which the registry runs only between
 * cp_metrics_add_collector() and cp_metrics_remove_collector().
 */
#include "cp/base.h"
#include "cp/bus.h"
#include "cp/jwt.h"
#include "cp/metrics.h"
#include "cp/store.h"
#include "cp/util.h"
#include "mgmt-metrics.h"
#include "mgmt-ready.h"
#include "mgmt-replica.h"

#include <pthread.h>
#include <stdatomic.h>

#ifndef MGMT_VERSION
#define MGMT_VERSION "dev"
#endif

/* gRPC codes 0..16: OK and the 16 failures. */
#define N_STATUS 17

static const char *const status_labels[N_STATUS] = {
        "ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
        "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
        "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
};

static const char *const refused_labels[_MGMT_REFUSED_MAX] = {
        [MGMT_REFUSED_SIZE] = "size", [MGMT_REFUSED_ENVELOPE] = "envelope", [MGMT_REFUSED_BOX] = "box",
        [MGMT_REFUSED_BUDGET] = "budget", [MGMT_REFUSED_DECODE] = "decode", [MGMT_REFUSED_QUEUE] = "queue",
};

/* Fan-out of one account (~1 ms for a few peers, seconds for thousands)
 * and the bus lag (ms on one host, more with clock skew): 1 ms to 10 s. */
static const double seconds_bounds[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
/* Commit to the last stream write of one fan-out: 1 ms (a few peers) to
 * 10 s (tens of thousands of streams, a busy box). */
static const double delivery_bounds[] = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10 };

static struct {
        cp_gauge *sync_streams;
        cp_gauge *proxy_streams;
        cp_counter *sync_drained;
        cp_counter *sync_opens[MGMT_SYNC_OPEN_FAILED + N_STATUS];    /* ok, stale, closed, then by status */
        cp_counter *logins[2][N_STATUS];                              /* [registration][status] */
        cp_counter *refused[2][_MGMT_REFUSED_MAX];                    /* [proxy][reason] */
        cp_histogram *fanout_seconds;
        cp_counter *fanout_maps;
        cp_histogram *delivery[2];      /* [bus] */
        cp_counter *sync_hints[MGMT_SYNC_HINT_N_];
        cp_counter *sync_reads[MGMT_SYNC_READ_N_];
        cp_metric *http_requests, *http_seconds;
        cp_gauge *pool_size, *pool_busy, *pool_idle, *pool_prepared;
        cp_counter *hb_ok, *hb_failed, *replica_lost, *reaped, *reaped_sessions;
        cp_gauge *hb_age;
        cp_gauge *ready;
        cp_metric *ready_failing;
        /* The children of ready_failing made so far (a fixed set of check
         * names), touched only by the collector, one render at a time. */
        struct {
                char check[32];
                cp_gauge *g;
        } failing[8];
        size_t n_failing;

        /* Made by mgmt_metrics_watch_bus(), on the bus's loop thread. */
        bool bus_families;
        cp_counter *bus_published, *bus_dropped, *bus_received, *bus_malformed, *bus_reconnects, *bus_auth_failures;
        cp_gauge *bus_connected;
        cp_histogram *bus_lag;
        cp_bus_stats bus_base;          /* the counters of buses no longer watched */

        /* Made by mgmt_metrics_watch_jwt(). */
        bool jwt_families;
        cp_counter *jwt_accepted, *jwt_refused, *jwt_cache_hits, *jwt_fetch_ok, *jwt_fetch_failed;
        cp_gauge *jwt_keys;
} mm;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void) {
        cp_metrics *reg = cp_metrics_global();
        cp_metric *f;

        cp_gauge_set(cp_metric_gauge(cp_metrics_gauge(reg, "netbird_cp_build_info",
                                                      "Always 1; the version of netbird-mgmt in the label.",
                                                      CP_LABELS("version")),
                                     CP_LABELS(MGMT_VERSION)),
                     1);
        cp_metrics_add_process_collector(reg);

        mm.sync_streams = cp_metrics_plain_gauge(reg, "netbird_cp_sync_streams",
                                                 "Sync streams open on this replica (registered, first map "
                                                 "sent).");
        mm.proxy_streams = cp_metrics_plain_gauge(reg, "netbird_cp_proxy_streams",
                                                  "ProxyService mapping streams open on this replica "
                                                  "(GetMappingUpdate and SyncMappings, registered).");
        mm.sync_drained = cp_metrics_plain_counter(reg, "netbird_cp_sync_drained_total",
                                                   "Sync streams ended by this replica's shutdown drain "
                                                   "(spread over --drain-window).");
        f = cp_metrics_counter(reg, "netbird_cp_sync_opens_total",
                               "Sync opens by outcome: ok, stale (a newer stream owns the peer), closed (client "
                               "left or shutdown during the open), or the gRPC status it failed with.",
                               CP_LABELS("outcome"));
        mm.sync_opens[MGMT_SYNC_OPEN_OK] = cp_metric_counter(f, CP_LABELS("ok"));
        mm.sync_opens[MGMT_SYNC_OPEN_STALE] = cp_metric_counter(f, CP_LABELS("stale"));
        mm.sync_opens[MGMT_SYNC_OPEN_CLOSED] = cp_metric_counter(f, CP_LABELS("closed"));
        for (int s = 1; s < N_STATUS; s++)
                mm.sync_opens[MGMT_SYNC_OPEN_FAILED + s] = cp_metric_counter(f, CP_LABELS(status_labels[s]));

        f = cp_metrics_counter(reg, "netbird_cp_logins_total",
                               "Login calls by kind (registration: with a setup key for an unknown peer) and "
                               "outcome (ok or the gRPC status, lower case).",
                               CP_LABELS("kind", "outcome"));
        for (int k = 0; k < 2; k++)
                for (int s = 0; s < N_STATUS; s++)
                        mm.logins[k][s] = cp_metric_counter(f, CP_LABELS(k ? "registration" : "login",
                                                                          status_labels[s]));

        f = cp_metrics_counter(reg, "netbird_cp_requests_refused_total",
                               "Requests refused before their handler ran, by service (agent, proxy) and reason: "
                               "size (over the method's limit), envelope (malformed EncryptedMessage or key), box "
                               "(did not open), budget (decoding went over the per-call memory budget), decode "
                               "(malformed message), queue (the workers' queue was full: jobs, or for agents 64 MiB of waiting "
                               "requests).",
                               CP_LABELS("service", "reason"));
        for (int s = 0; s < 2; s++)
                for (int r = 0; r < _MGMT_REFUSED_MAX; r++)
                        mm.refused[s][r] = cp_metric_counter(f, CP_LABELS(s ? "proxy" : "agent",
                                                                          refused_labels[r]));

        mm.fanout_seconds = cp_metrics_plain_histogram(reg, "netbird_cp_fanout_duration_seconds",
                                                       "One account change on this replica: map rebuild, "
                                                       "encoding, sealing and queueing for every stream of the "
                                                       "account here.",
                                                       seconds_bounds, ELEMENTSOF(seconds_bounds));
        mm.fanout_maps = cp_metrics_plain_counter(reg, "netbird_cp_fanout_maps_pushed_total",
                                                  "Network maps queued to Sync streams by fan-out.");
        f = cp_metrics_histogram(reg, "netbird_cp_sync_delivery_seconds",
                                 "One fan-out from the change to the last stream write: from the commit "
                                 "on this replica (origin local) or the publisher's send time of a bus "
                                 "hint (origin bus, replica clock skew included) to the send completion "
                                 "of the last map it queued (coalesced changes: the earliest).",
                                 CP_LABELS("origin"), delivery_bounds, ELEMENTSOF(delivery_bounds));
        mm.delivery[0] = cp_metric_histogram(f, CP_LABELS("local"));
        mm.delivery[1] = cp_metric_histogram(f, CP_LABELS("bus"));
        f = cp_metrics_counter(reg, "netbird_cp_sync_hints_total",
                               "Bus messages about an account, by what they caused: no_streams (no stream of "
                               "the account here: nothing), coalesced (a read or rebuild for it was running: "
                               "one more read after it), read (a read of its serial from the database).",
                               CP_LABELS("outcome"));
        mm.sync_hints[MGMT_SYNC_HINT_NO_STREAMS] = cp_metric_counter(f, CP_LABELS("no_streams"));
        mm.sync_hints[MGMT_SYNC_HINT_COALESCED] = cp_metric_counter(f, CP_LABELS("coalesced"));
        mm.sync_hints[MGMT_SYNC_HINT_READ] = cp_metric_counter(f, CP_LABELS("read"));
        f = cp_metrics_counter(reg, "netbird_cp_sync_serial_reads_total",
                               "Reads of an account's serial for a hint (a bus message, or the periodic serial "
                               "check finding a difference), by result: unchanged (the streams had it: no "
                               "rebuild), changed (rebuilt and pushed), went_back (below what the streams "
                               "had, e.g. a restored database: raised past it, rebuilt and pushed).",
                               CP_LABELS("result"));
        mm.sync_reads[MGMT_SYNC_READ_UNCHANGED] = cp_metric_counter(f, CP_LABELS("unchanged"));
        mm.sync_reads[MGMT_SYNC_READ_CHANGED] = cp_metric_counter(f, CP_LABELS("changed"));
        mm.sync_reads[MGMT_SYNC_READ_WENT_BACK] = cp_metric_counter(f, CP_LABELS("went_back"));
        mm.http_requests = cp_metrics_counter(reg, "netbird_cp_http_requests_total",
                                              "REST API requests answered by this replica, by route pattern "
                                              "(e.g. /api/peers/{peerId}; \"other\" when none matched), "
                                              "method and HTTP status code.",
                                              CP_LABELS("route", "method", "code"));
        mm.http_seconds = cp_metrics_histogram(reg, "netbird_cp_http_request_duration_seconds",
                                               "REST API request latency on this replica (queueing, the "
                                               "transaction, encoding), by route pattern and method.",
                                               CP_LABELS("route", "method"), seconds_bounds,
                                               ELEMENTSOF(seconds_bounds));
        mm.pool_size = cp_metrics_plain_gauge(reg, "netbird_cp_store_pool_size",
                                              "PostgreSQL connections the pool may open (--db-pool-size).");
        f = cp_metrics_gauge(reg, "netbird_cp_store_pool_connections",
                             "PostgreSQL connections of the pool: busy (lent out) or idle (open, free).",
                             CP_LABELS("state"));
        mm.pool_prepared = cp_metrics_plain_gauge(reg, "netbird_cp_store_prepared_statements",
                                                  "1 while the pool uses named prepared statements; 0 with "
                                                  "--db-prepared-statements=false or after it switched to "
                                                  "unnamed ones (a transaction pooler lost a statement).");
        mm.pool_busy = cp_metric_gauge(f, CP_LABELS("busy"));
        mm.pool_idle = cp_metric_gauge(f, CP_LABELS("idle"));

        f = cp_metrics_counter(reg, "netbird_cp_replica_heartbeats_total",
                               "Heartbeats of this replica into the replicas table: ok (landed) or failed "
                               "(database error).",
                               CP_LABELS("result"));
        mm.hb_ok = cp_metric_counter(f, CP_LABELS("ok"));
        mm.hb_failed = cp_metric_counter(f, CP_LABELS("failed"));
        mm.hb_age = cp_metrics_plain_gauge(reg, "netbird_cp_replica_heartbeat_age_seconds",
                                           "Seconds since this replica's last landed heartbeat.");
        mm.replica_lost = cp_metrics_plain_counter(reg, "netbird_cp_replica_lost_total",
                                                   "Times this replica found itself reaped by another (it was "
                                                   "cut off longer than --replica-expiry) and re-registered.");
        mm.reaped = cp_metrics_plain_counter(reg, "netbird_cp_replica_reaped_total",
                                             "Dead replicas (heartbeat older than --replica-expiry) this replica "
                                             "removed.");
        mm.ready = cp_metrics_plain_gauge(reg, "netbird_cp_ready",
                                          "1 when this replica's /readyz answers 200 (ready to serve), else 0.");
        mm.ready_failing = cp_metrics_gauge(reg, "netbird_cp_ready_failing",
                                            "1 for the readiness check that fails now (store, migrations or "
                                            "a gate such as data_key), 0 for the others.",
                                            CP_LABELS("check"));
        mm.reaped_sessions = cp_metrics_plain_counter(reg, "netbird_cp_replica_reaped_sessions_total",
                                                      "Sessions of dead replicas this replica marked "
                                                      "disconnected.");
}

void mgmt_metrics_init(void) {
        (void) pthread_once(&init_once, init);
}

void mgmt_metrics_render(cp_strbuf *out) {
        mgmt_metrics_init();
        cp_metrics_render(cp_metrics_global(), out);
}

/* ---- Sync and Login -------------------------------------------------------------- */

void mgmt_metrics_sync_streams(int delta) {
        mgmt_metrics_init();
        cp_gauge_add(mm.sync_streams, delta);
}

void mgmt_metrics_sync_drained(unsigned n) {
        mgmt_metrics_init();
        cp_counter_add(mm.sync_drained, n);
}

void mgmt_metrics_proxy_streams(int delta) {
        mgmt_metrics_init();
        cp_gauge_add(mm.proxy_streams, delta);
}

void mgmt_metrics_sync_open(mgmt_sync_open_outcome outcome, grpc_status_code status) {
        mgmt_metrics_init();
        if (outcome != MGMT_SYNC_OPEN_FAILED)
                cp_counter_inc(mm.sync_opens[outcome]);
        else if (status > 0 && status < N_STATUS)
                cp_counter_inc(mm.sync_opens[MGMT_SYNC_OPEN_FAILED + status]);
}

int64_t mgmt_metrics_now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void mgmt_metrics_fanout(int64_t started_ns, uint64_t maps) {
        mgmt_metrics_init();
        cp_histogram_observe(mm.fanout_seconds, (double) (mgmt_metrics_now_ns() - started_ns) / 1e9);
        cp_counter_add(mm.fanout_maps, maps);
}

void mgmt_metrics_sync_delivery(bool bus, int64_t t0_ns) {
        int64_t d = mgmt_metrics_now_ns() - t0_ns;

        mgmt_metrics_init();
        cp_histogram_observe(mm.delivery[bus ? 1 : 0], d > 0 ? (double) d / 1e9 : 0);
}

int64_t mgmt_metrics_bus_t0_ns(int64_t sent_ms) {
        int64_t now = mgmt_metrics_now_ns();
        int64_t lag_ms = sent_ms > 0 ? cp_now_unix_ns() / 1000000 - sent_ms : 0;

        /* Clamped: a clock ahead of ours is no lag; one behind by more
         * than an hour (or a forged time) is counted as an hour. */
        if (lag_ms < 0)
                lag_ms = 0;
        if (lag_ms > 3600 * 1000)
                lag_ms = 3600 * 1000;
        return now - lag_ms * 1000000 > 0 ? now - lag_ms * 1000000 : 1;
}

void mgmt_metrics_sync_hint(mgmt_sync_hint_outcome outcome) {
        mgmt_metrics_init();
        if (outcome >= 0 && outcome < MGMT_SYNC_HINT_N_)
                cp_counter_inc(mm.sync_hints[outcome]);
}

void mgmt_metrics_sync_serial_read(mgmt_sync_read_result result) {
        mgmt_metrics_init();
        if (result >= 0 && result < MGMT_SYNC_READ_N_)
                cp_counter_inc(mm.sync_reads[result]);
}

void mgmt_metrics_login(bool registration, grpc_status_code status) {
        mgmt_metrics_init();
        if (status >= 0 && status < N_STATUS)
                cp_counter_inc(mm.logins[registration][status]);
}

void mgmt_metrics_refused(const char *service, mgmt_refused_reason reason) {
        mgmt_metrics_init();
        if (reason >= 0 && reason < _MGMT_REFUSED_MAX)
                cp_counter_inc(mm.refused[strcmp(service, "proxy") == 0][reason]);
}

/* ---- REST API (mgmt-http.c, loop thread) ---------------------------------------------- */

void mgmt_metrics_http(const char *route, const char *method, int code, double seconds) {
        char status[8];

        mgmt_metrics_init();
        (void) snprintf(status, sizeof status, "%d", code);
        cp_counter_inc(cp_metric_counter(mm.http_requests, CP_LABELS(route, method, status)));
        cp_histogram_observe(cp_metric_histogram(mm.http_seconds, CP_LABELS(route, method)), seconds);
}

/* ---- the store pool ------------------------------------------------------------------ */

static void collect_store(cp_metrics *m, void *userdata) {
        cp_store_pool_usage u;

        cp_store_pool_stats(userdata, &u);
        cp_gauge_set(mm.pool_size, u.size);
        cp_gauge_set(mm.pool_busy, u.busy);
        cp_gauge_set(mm.pool_idle, u.idle);
        cp_gauge_set(mm.pool_prepared, cp_store_uses_prepared(userdata) ? 1 : 0);
}

void mgmt_metrics_watch_store(cp_store *s) {
        mgmt_metrics_init();
        cp_metrics_add_collector(cp_metrics_global(), collect_store, s);
}

void mgmt_metrics_unwatch_store(cp_store *s) {
        if (!s)
                return;
        cp_metrics_remove_collector(cp_metrics_global(), collect_store, s);
        cp_gauge_set(mm.pool_size, 0);
        cp_gauge_set(mm.pool_busy, 0);
        cp_gauge_set(mm.pool_idle, 0);
}

/* ---- the replica ---------------------------------------------------------------------------- */

static void collect_replica(cp_metrics *m, void *userdata) {
        mgmt_replica_stats st;

        mgmt_replica_get_stats(userdata, &st);
        cp_counter_set(mm.hb_ok, st.heartbeats);
        cp_counter_set(mm.hb_failed, st.heartbeat_failures);
        cp_counter_set(mm.replica_lost, st.lost);
        cp_counter_set(mm.reaped, st.reaped_replicas);
        cp_counter_set(mm.reaped_sessions, st.reaped_sessions);
        cp_gauge_set(mm.hb_age, st.last_heartbeat_ms ? (double) (cp_now_mono_ms() - st.last_heartbeat_ms) / 1e3 : 0);
}

void mgmt_metrics_watch_replica(mgmt_replica *r) {
        mgmt_metrics_init();
        cp_metrics_add_collector(cp_metrics_global(), collect_replica, r);
}

void mgmt_metrics_unwatch_replica(mgmt_replica *r) {
        if (r)
                cp_metrics_remove_collector(cp_metrics_global(), collect_replica, r);
}

/* ---- readiness ---------------------------------------------------------------------------- */

static cp_gauge *ready_failing_child(const char *check) {
        for (size_t i = 0; i < mm.n_failing; i++)
                if (strcmp(mm.failing[i].check, check) == 0)
                        return mm.failing[i].g;
        if (mm.n_failing == ELEMENTSOF(mm.failing) || strlen(check) >= sizeof mm.failing[0].check)
                return NULL;
        (void) snprintf(mm.failing[mm.n_failing].check, sizeof mm.failing[0].check, "%s", check);
        mm.failing[mm.n_failing].g = cp_metric_gauge(mm.ready_failing, CP_LABELS(check));
        return mm.failing[mm.n_failing++].g;
}

static atomic_bool ready_draining;

void mgmt_metrics_ready_draining(void) {
        atomic_store(&ready_draining, true);
}

static void collect_ready(cp_metrics *m, void *userdata) {
        mgmt_ready_state st;
        cp_gauge *g;

        mgmt_ready_get(userdata, &st);
        for (size_t i = 0; i < mm.n_failing; i++)
                cp_gauge_set(mm.failing[i].g, 0);
        /* /readyz's order: draining first, then the checker's verdict. */
        if (atomic_load(&ready_draining)) {
                st.ready = false;
                st.failed = "draining";
        }
        if (!st.ready && st.failed && (g = ready_failing_child(st.failed)))
                cp_gauge_set(g, 1);
        cp_gauge_set(mm.ready, st.ready ? 1 : 0);
}

void mgmt_metrics_watch_ready(mgmt_ready *r) {
        if (!r)
                return;
        mgmt_metrics_init();
        /* Every check this checker runs, and the drain, are there from
         * the first scrape. */
        const char *gates[MGMT_READY_MAX_GATES];
        size_t n = mgmt_ready_gate_names(r, gates, ELEMENTSOF(gates));

        (void) ready_failing_child("store");
        (void) ready_failing_child("migrations");
        for (size_t i = 0; i < n; i++)
                (void) ready_failing_child(gates[i]);
        (void) ready_failing_child("draining");
        cp_metrics_add_collector(cp_metrics_global(), collect_ready, r);
}

void mgmt_metrics_unwatch_ready(mgmt_ready *r) {
        if (!r)
                return;
        cp_metrics_remove_collector(cp_metrics_global(), collect_ready, r);
        cp_gauge_set(mm.ready, 0);
}

/* ---- the bus ---------------------------------------------------------------------------- */

static void bus_counters_set(const cp_bus_stats *st) {
        cp_counter_set(mm.bus_published, mm.bus_base.published + st->published);
        cp_counter_set(mm.bus_dropped, mm.bus_base.publish_dropped + st->publish_dropped);
        cp_counter_set(mm.bus_received, mm.bus_base.received + st->received);
        cp_counter_set(mm.bus_malformed, mm.bus_base.malformed + st->malformed);
        cp_counter_set(mm.bus_reconnects, mm.bus_base.reconnects + st->reconnects);
        cp_counter_set(mm.bus_auth_failures, mm.bus_base.auth_failures + st->auth_failures);
}

static void collect_bus(cp_metrics *m, void *userdata) {
        cp_bus_stats st;

        cp_bus_get_stats(userdata, &st);
        bus_counters_set(&st);
}

static void bus_families(void) {
        cp_metrics *reg = cp_metrics_global();
        cp_metric *f;

        if (mm.bus_families)
                return;
        mm.bus_families = true;
        f = cp_metrics_counter(reg, "netbird_cp_bus_messages_total",
                               "Bus (Redis pub/sub) messages: published (answered by Redis), publish_dropped "
                               "(not sent: Redis down or backlog), received (delivered), malformed (dropped).",
                               CP_LABELS("result"));
        mm.bus_published = cp_metric_counter(f, CP_LABELS("published"));
        mm.bus_dropped = cp_metric_counter(f, CP_LABELS("publish_dropped"));
        mm.bus_received = cp_metric_counter(f, CP_LABELS("received"));
        mm.bus_malformed = cp_metric_counter(f, CP_LABELS("malformed"));
        mm.bus_reconnects = cp_metrics_plain_counter(reg, "netbird_cp_bus_reconnects_total",
                                                     "Bus connection attempts after the first (both "
                                                     "connections).");
        mm.bus_auth_failures = cp_metrics_plain_counter(reg, "netbird_cp_bus_auth_failures_total",
                                                        "Bus connections Redis refused (NOAUTH, WRONGPASS, an "
                                                        "error to AUTH, NOPERM): a wrong password or ACL.");
        mm.bus_connected = cp_metrics_plain_gauge(reg, "netbird_cp_bus_connected",
                                                  "1 while subscribed to the bus, else 0.");
        mm.bus_lag = cp_metrics_plain_histogram(reg, "netbird_cp_bus_lag_seconds",
                                                "Bus message delay: our wall clock at delivery minus the "
                                                "publisher's at publish (replica clock skew included).",
                                                seconds_bounds, ELEMENTSOF(seconds_bounds));
}

void mgmt_metrics_watch_bus(const cp_bus *bus) {
        mgmt_metrics_init();
        bus_families();
        cp_metrics_add_collector(cp_metrics_global(), collect_bus, (void *) bus);
}

void mgmt_metrics_unwatch_bus(const cp_bus *bus) {
        cp_bus_stats st;

        if (!bus || !mm.bus_families)
                return;
        cp_metrics_remove_collector(cp_metrics_global(), collect_bus, (void *) bus);
        /* Not collected any more: fold its final counts into the base. */
        cp_bus_get_stats(bus, &st);
        bus_counters_set(&st);
        mm.bus_base.published += st.published;
        mm.bus_base.publish_dropped += st.publish_dropped;
        mm.bus_base.received += st.received;
        mm.bus_base.malformed += st.malformed;
        mm.bus_base.reconnects += st.reconnects;
        mm.bus_base.auth_failures += st.auth_failures;
        cp_gauge_set(mm.bus_connected, 0);
}

void mgmt_metrics_bus_state(bool connected) {
        cp_gauge_set(mm.bus_connected, connected ? 1 : 0);
}

void mgmt_metrics_bus_message(int64_t sent_ms) {
        int64_t lag_ms;

        if (sent_ms <= 0)
                return;
        lag_ms = cp_now_unix_ns() / 1000000 - sent_ms;
        cp_histogram_observe(mm.bus_lag, lag_ms > 0 ? (double) lag_ms / 1000 : 0);
}

/* ---- the IdP token validator ------------------------------------------------------------ */

static void collect_jwt(cp_metrics *m, void *userdata) {
        cp_jwt_stats st;

        cp_jwt_get_stats(userdata, &st);
        cp_counter_set(mm.jwt_accepted, st.validated);
        cp_counter_set(mm.jwt_refused, st.refused);
        cp_counter_set(mm.jwt_cache_hits, st.cache_hits);
        cp_counter_set(mm.jwt_fetch_ok, st.fetches - st.fetch_failures);
        cp_counter_set(mm.jwt_fetch_failed, st.fetch_failures);
        cp_gauge_set(mm.jwt_keys, (double) st.keys);
}

void mgmt_metrics_watch_jwt(cp_jwt *j) {
        cp_metrics *reg = cp_metrics_global();
        cp_metric *f;

        if (!j)
                return;
        mgmt_metrics_init();
        if (!mm.jwt_families) {
                mm.jwt_families = true;
                f = cp_metrics_counter(reg, "netbird_cp_jwt_tokens_total",
                                       "IdP tokens (JWTs) validated: accepted (cache hits included) or refused "
                                       "(any reason, also while no signing keys are loaded).",
                                       CP_LABELS("result"));
                mm.jwt_accepted = cp_metric_counter(f, CP_LABELS("accepted"));
                mm.jwt_refused = cp_metric_counter(f, CP_LABELS("refused"));
                mm.jwt_cache_hits = cp_metrics_plain_counter(reg, "netbird_cp_jwt_cache_hits_total",
                                                             "IdP tokens accepted from the verified-token cache "
                                                             "without a signature check.");
                f = cp_metrics_counter(reg, "netbird_cp_jwt_key_fetches_total",
                                       "Fetches of the IdP's signing keys (OIDC discovery and JWKS): ok or "
                                       "failed.", CP_LABELS("result"));
                mm.jwt_fetch_ok = cp_metric_counter(f, CP_LABELS("ok"));
                mm.jwt_fetch_failed = cp_metric_counter(f, CP_LABELS("failed"));
                mm.jwt_keys = cp_metrics_plain_gauge(reg, "netbird_cp_jwt_signing_keys",
                                                     "IdP signing keys loaded now (0: IdP tokens are refused).");
        }
        cp_metrics_add_collector(reg, collect_jwt, j);
}

void mgmt_metrics_unwatch_jwt(cp_jwt *j) {
        if (!j || !mm.jwt_families)
                return;
        cp_metrics_remove_collector(cp_metrics_global(), collect_jwt, j);
        cp_gauge_set(mm.jwt_keys, 0);
}

void mgmt_metrics_geo(bool mmdb, bool geonames) {
        cp_metric *f;

        pthread_once(&init_once, init);
        f = cp_metrics_gauge(cp_metrics_global(), "netbird_cp_geolocation_databases",
                             "1 when the geolocation database is open (mmdb: GeoLite2-City_*.mmdb, geonames: "
                             "geonames_*.db of the datadir), 0 when absent.",
                             CP_LABELS("database"));
        cp_gauge_set(cp_metric_gauge(f, CP_LABELS("mmdb")), mmdb ? 1 : 0);
        cp_gauge_set(cp_metric_gauge(f, CP_LABELS("geonames")), geonames ? 1 : 0);
}
