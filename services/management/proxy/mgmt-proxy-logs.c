/*
 * SendAccessLog: entries are checked, queued in memory and written in
 * batches by one writer thread per replica; the retention job runs on the
 * same thread.
 *
 * An RPC returns once its entry is queued (NetBird answers after its own
 * INSERT; here a crash may lose what is queued, at most one flush
 * interval's worth). Each flush is ONE statement whatever the batch size:
 * the entries go as one jsonb array parameter, expanded with
 * jsonb_to_recordset and joined with accounts (an account deleted
 * meanwhile drops its entries), ON CONFLICT (id) DO NOTHING (a log_id
 * sent twice is stored once). The queue is bounded in entries and bytes;
 * when full the RPC answers RESOURCE_EXHAUSTED and the proxy may retry.
 *
 * Checks before queueing (so the flush never fails on one bad entry):
 * account_id and log_id present, sizes bounded, strings valid UTF-8, the
 * token's account scope, and the service in that account (or the account
 * itself when no service is named) exists; positive answers are cached
 * for a minute in a small table so the hot path does not ask the
 * database.
 *
 * Retention (ReverseProxy.AccessLogRetentionDays: 0 = 7 days, < 0 keep
 * forever): every AccessLogCleanupIntervalHours (0 = 24 h), first a few
 * seconds after start, rows older than that are deleted in chunks of
 * 10,000, each its own statement, so no long lock is held. Every replica
 * runs it; concurrent runs delete each row once. The same thread deletes
 * expired rows of proxy_used_tokens and proxy_oidc_states every 10
 * minutes.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/geo.h"
#include "cp/log.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "mgmt-proxy-rpc-int.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <time.h>

#define DEFAULT_BATCH           1000
#define DEFAULT_FLUSH_MS        200
#define DEFAULT_QUEUE_MAX       100000
#define QUEUE_MAX_BYTES         (64u * 1024 * 1024)
#define ENTRY_MAX_BYTES         (64 * 1024)
#define METADATA_MAX            64
#define SEEN_SLOTS              4096
#define SEEN_TTL_MS             60000
#define RETENTION_CHUNK         "10000"
#define FIRST_CLEANUP_MS        5000
#define GC_INTERVAL_MS          (10 * 60 * 1000)

static const cp_log_ctx log_ctx = { .component = "proxy-logs" };

typedef struct seen_slot {
        uint64_t hash;
        int64_t until_ms;
} seen_slot;

struct prpc_logs {
        mgmt_prpc *p;
        unsigned batch, queue_max;
        int64_t flush_ms;
        int64_t retention_days;         /* < 0 keep forever */
        int64_t cleanup_ms;

        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        char **q;                       /* ring of JSON rows */
        size_t head, count;
        size_t bytes;
        bool stopping;

        pthread_mutex_t seen_lock;
        seen_slot seen[SEEN_SLOTS];

        atomic_uint_fast64_t written, dropped;
};

/* ---- the existence cache ------------------------------------------------------ */

static uint64_t fnv(const char *a, const char *b) {
        uint64_t h = 1469598103934665603ULL;

        for (const char *s = a; *s; s++)
                h = (h ^ (uint8_t) *s) * 1099511628211ULL;
        h = (h ^ 0x1f) * 1099511628211ULL;
        for (const char *s = b; *s; s++)
                h = (h ^ (uint8_t) *s) * 1099511628211ULL;
        return h | 1;
}

static bool seen_has(prpc_logs *l, uint64_t h) {
        seen_slot *s = &l->seen[h % SEEN_SLOTS];
        bool ok;

        pthread_mutex_lock(&l->seen_lock);
        ok = s->hash == h && s->until_ms > cp_now_mono_ms();
        pthread_mutex_unlock(&l->seen_lock);
        return ok;
}

static void seen_add(prpc_logs *l, uint64_t h) {
        seen_slot *s = &l->seen[h % SEEN_SLOTS];

        pthread_mutex_lock(&l->seen_lock);
        s->hash = h;
        s->until_ms = cp_now_mono_ms() + SEEN_TTL_MS;
        pthread_mutex_unlock(&l->seen_lock);
}

/* 1 when the service (or, service_id "", the account) exists; -EAGAIN
 * when it is not in the cache and no_db forbids the query. */
static int target_exists(prpc_logs *l, const char *account_id, const char *service_id, bool no_db,
                         cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        uint64_t h = fnv(account_id, service_id);
        const char *params[2] = { account_id, service_id };
        int r;

        if (seen_has(l, h))
                return 1;
        if (no_db)
                return -EAGAIN;
        if (*service_id)
                r = prpc_exec(l->p, "SELECT 1 FROM services WHERE account_id = $1 AND id = $2", 2, params, &rows,
                              reterr);
        else
                r = prpc_exec(l->p, "SELECT 1 FROM accounts WHERE id = $1", 1, params, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return 0;
        seen_add(l, h);
        return 1;
}

/* ---- one entry ----------------------------------------------------------------------- */

/* The row as JSON text, or NULL when a string is not valid UTF-8. geo
 * (may be NULL) locates the source address, as NetBird's enrichment. */
static char *entry_json(const Management__AccessLog *a, cp_geo *geo) {
        char ts[40] = "", ip[INET6_ADDRSTRLEN] = "";
        const char *reason = "";
        int64_t secs;
        int32_t nanos = 0;
        struct tm tm;
        uint8_t bin[16];

        if (a->timestamp) {
                secs = a->timestamp->seconds;
                nanos = a->timestamp->nanos;
        } else
                secs = (int64_t) time(NULL);
        time_t t = (time_t) secs;
        if (nanos < 0 || nanos > 999999999 || secs < -62135596800LL || secs > 253402300799LL ||
            !gmtime_r(&t, &tm))
                return NULL;
        (void) strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        (void) snprintf(ts + strlen(ts), sizeof ts - strlen(ts), ".%06dZ", nanos / 1000);
        /* NetBird keeps the source address only when it parses; an
         * IPv4-mapped IPv6 address is stored as the IPv4 one. */
        if (inet_pton(AF_INET, a->source_ip, bin) == 1)
                (void) snprintf(ip, sizeof ip, "%s", a->source_ip);
        else if (inet_pton(AF_INET6, a->source_ip, bin) == 1) {
                static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
                if (memcmp(bin, mapped, 12) == 0)
                        (void) inet_ntop(AF_INET, bin + 12, ip, sizeof ip);
                else
                        (void) inet_ntop(AF_INET6, bin, ip, sizeof ip);
        }
        cp_geo_location loc = { 0 };
        if (*ip && cp_geo_lookup(geo, ip, &loc, NULL) <= 0)
                memset(&loc, 0, sizeof loc);
        /* Only HTTP entries get a reason; L4 ones have no auth or status. */
        if (!*a->protocol || strcmp(a->protocol, "http") == 0) {
                if (!a->auth_success)
                        reason = "Authentication failed";
                else if (a->response_code >= 400)
                        reason = "Request failed";
        }
        json_auto_t *meta = json_object();
        for (size_t i = 0; i < a->n_metadata; i++) {
                json_t *v = json_string(a->metadata[i]->value);
                if (!v || json_object_set_new(meta, a->metadata[i]->key, v) < 0)
                        return NULL;
        }
        json_auto_t *row = json_object();
        struct { const char *k; const char *v; } strs[] = {
                { "id", a->log_id }, { "account_id", a->account_id }, { "service_id", a->service_id },
                { "timestamp", ts }, { "method", a->method }, { "host", a->host }, { "path", a->path },
                { "source_ip", ip }, { "reason", reason }, { "user_id", a->user_id },
                { "auth_method_used", a->auth_mechanism }, { "protocol", a->protocol },
                { "country_code", loc.country_code }, { "city_name", loc.city_name },
        };
        for (size_t i = 0; i < ELEMENTSOF(strs); i++) {
                json_t *v = json_string(strs[i].v);
                if (!v)
                        return NULL;
                json_object_set_new(row, strs[i].k, v);
        }
        json_object_set_new(row, "duration_ms", json_integer(a->duration_ms));
        json_object_set_new(row, "status_code", json_integer(a->response_code));
        json_object_set_new(row, "bytes_upload", json_integer(a->bytes_upload));
        json_object_set_new(row, "bytes_download", json_integer(a->bytes_download));
        json_object_set_new(row, "metadata", json_incref(meta));
        json_object_set_new(row, "agent_network", json_boolean(a->agent_network));
        return json_dumps(row, JSON_COMPACT);
}

static size_t str_total(const Management__AccessLog *a) {
        size_t n = strlen(a->log_id) + strlen(a->account_id) + strlen(a->service_id) + strlen(a->host) +
                   strlen(a->path) + strlen(a->method) + strlen(a->source_ip) + strlen(a->auth_mechanism) +
                   strlen(a->user_id) + strlen(a->protocol);

        for (size_t i = 0; i < a->n_metadata; i++)
                n += strlen(a->metadata[i]->key) + strlen(a->metadata[i]->value);
        return n;
}

void prpc_send_access_log(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__SendAccessLogRequest *req,
                          mgmt_prpc_reply *ret) {
        prpc_logs *l = p->logs;
        const Management__AccessLog *a = req->log;
        cp_error err = { 0 };
        char *row;
        int r;

        if (!a)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT, "log is required");
        if (!prpc_scope_ok(who, a->account_id, ret))
                return;
        if (!*a->account_id || !*a->log_id)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT, "log_id and account_id are required");
        if (strlen(a->log_id) > 256 || strlen(a->account_id) > 256 || strlen(a->service_id) > 256)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT, "log_id, account_id or service_id is too long");
        if (a->n_metadata > METADATA_MAX || str_total(a) > ENTRY_MAX_BYTES)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT, "access log entry is too large");
        row = entry_json(a, p->geo);
        if (!row)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT,
                                 "access log entry has a string that is not valid UTF-8 or a bad timestamp");
        r = target_exists(l, a->account_id, a->service_id, who && who->no_db, &err);
        if (r == -EAGAIN) {
                free(row);
                ret->would_block = true;
                return;
        }
        if (r <= 0) {
                free(row);
                if (r < 0)
                        return prpc_fail(ret, GRPC_STATUS_INTERNAL, "save access log: %s", err.message);
                return prpc_fail(ret, GRPC_STATUS_NOT_FOUND, *a->service_id ? "service %s not found" :
                                 "account %s not found", *a->service_id ? a->service_id : a->account_id);
        }

        size_t len = strlen(row);
        pthread_mutex_lock(&l->lock);
        if (l->stopping || l->count >= l->queue_max || l->bytes + len > QUEUE_MAX_BYTES) {
                pthread_mutex_unlock(&l->lock);
                free(row);
                return prpc_fail(ret, GRPC_STATUS_RESOURCE_EXHAUSTED, "access log queue is full");
        }
        l->q[(l->head + l->count) % l->queue_max] = row;
        l->count++;
        l->bytes += len;
        if (l->count >= l->batch)
                pthread_cond_signal(&l->cond);
        pthread_mutex_unlock(&l->lock);

        Management__SendAccessLogResponse resp = MANAGEMENT__SEND_ACCESS_LOG_RESPONSE__INIT;
        prpc_ok(ret, &resp.base);
}

/* ---- the writer ------------------------------------------------------------------------- */

#define INSERT_SQL \
        "INSERT INTO proxy_access_logs (id, account_id, service_id, timestamp, method, host, path, duration_ms," \
        " status_code, source_ip, reason, user_id, auth_method_used, bytes_upload, bytes_download, protocol," \
        " metadata, agent_network, country_code, city_name)" \
        " SELECT x.id, x.account_id, x.service_id, x.\"timestamp\", x.method, x.host, x.path, x.duration_ms," \
        " x.status_code, x.source_ip, x.reason, x.user_id, x.auth_method_used, x.bytes_upload," \
        " x.bytes_download, x.protocol, x.metadata, x.agent_network, x.country_code, x.city_name" \
        " FROM jsonb_to_recordset($1::jsonb) AS x(id text, account_id text, service_id text," \
        " \"timestamp\" timestamptz, method text, host text, path text, duration_ms bigint, status_code integer," \
        " source_ip text, reason text, user_id text, auth_method_used text, bytes_upload bigint," \
        " bytes_download bigint, protocol text, metadata jsonb, agent_network boolean, country_code text," \
        " city_name text)" \
        " JOIN accounts a ON a.id = x.account_id" \
        " ON CONFLICT (id) DO NOTHING"

static void write_batch(prpc_logs *l, char **rows, size_t n) {
        _cleanup_rows_ cp_store_rows *res = NULL;
        cp_strbuf sb;
        cp_error err = { 0 };
        int r = -EIO;

        cp_strbuf_init(&sb);
        cp_strbuf_addch(&sb, '[');
        for (size_t i = 0; i < n; i++) {
                if (i)
                        cp_strbuf_addch(&sb, ',');
                cp_strbuf_adds(&sb, rows[i]);
        }
        cp_strbuf_addch(&sb, ']');
        const char *params[1] = { sb.buf };
        /* A lost connection is retried once on a fresh one. */
        for (int attempt = 0; attempt < 2 && r < 0; attempt++) {
                res = cp_store_rows_free(res);
                r = prpc_exec(l->p, INSERT_SQL, 1, params, &res, &err);
                if (r != -ECONNRESET)
                        break;
        }
        cp_strbuf_release(&sb);
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "cannot write access logs; the batch is dropped", "error",
                          err.message, NULL);
                atomic_fetch_add(&l->dropped, n);
                return;
        }
        uint64_t landed = (uint64_t) cp_store_rows_affected(res);
        atomic_fetch_add(&l->written, landed);
        atomic_fetch_add(&l->dropped, n - landed);
}

static void cleanup(prpc_logs *l) {
        char days[24];
        cp_error err = { 0 };
        int64_t total = 0;

        if (l->retention_days < 0)
                return;
        (void) snprintf(days, sizeof days, "%" PRId64, l->retention_days);
        const char *params[1] = { days };
        for (;;) {
                _cleanup_rows_ cp_store_rows *res = NULL;
                int r = prpc_exec(l->p, "DELETE FROM proxy_access_logs WHERE id IN (SELECT id FROM proxy_access_logs"
                                  " WHERE timestamp < CURRENT_TIMESTAMP - $1::bigint * interval '1 day'"
                                  " LIMIT " RETENTION_CHUNK ")", 1, params, &res, &err);
                if (r < 0) {
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "access log retention failed", "error", err.message,
                                  NULL);
                        return;
                }
                int64_t n = cp_store_rows_affected(res);
                total += n;
                if (n < atoll(RETENTION_CHUNK))
                        break;
                pthread_mutex_lock(&l->lock);
                bool stop = l->stopping;
                pthread_mutex_unlock(&l->lock);
                if (stop)
                        break;
        }
        if (total > 0) {
                char t[24];
                (void) snprintf(t, sizeof t, "%" PRId64, total);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "old access logs deleted", "rows", t, "retention_days", days,
                          NULL);
        }
}

/* Spent one-time tokens and OIDC flows past their expiry: a token past
 * its expiry no longer verifies, so its row is not needed to refuse it. */
static void gc_expired(prpc_logs *l) {
        cp_error err = { 0 };

        if (prpc_exec(l->p, "DELETE FROM proxy_used_tokens WHERE expires_at < CURRENT_TIMESTAMP", 0, NULL, NULL,
                      &err) < 0 ||
            prpc_exec(l->p, "DELETE FROM proxy_oidc_states WHERE expires_at < CURRENT_TIMESTAMP", 0, NULL, NULL,
                      &err) < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot delete expired proxy tokens and OIDC states", "error",
                          err.message, NULL);
}

static void *writer(void *userdata) {
        prpc_logs *l = userdata;
        char **rows = cp_xcalloc(l->batch, sizeof *rows);
        int64_t next_cleanup = cp_now_mono_ms() + FIRST_CLEANUP_MS;
        int64_t next_gc = next_cleanup;


        for (;;) {
                struct timespec ts;
                size_t n = 0;

                pthread_mutex_lock(&l->lock);
                cp_mono_deadline(&ts, l->flush_ms);
                while (!l->stopping && l->count < l->batch) {
                        if (pthread_cond_timedwait(&l->cond, &l->lock, &ts) == ETIMEDOUT)
                                break;
                }
                bool stop = l->stopping;
                while (n < l->batch && l->count > 0) {
                        rows[n] = l->q[l->head];
                        l->bytes -= strlen(rows[n]);
                        l->head = (l->head + 1) % l->queue_max;
                        l->count--;
                        n++;
                }
                bool more = l->count > 0;
                pthread_mutex_unlock(&l->lock);

                if (n > 0)
                        write_batch(l, rows, n);
                for (size_t i = 0; i < n; i++)
                        free(rows[i]);
                if (stop && !more)
                        break;
                if (!stop && cp_now_mono_ms() >= next_gc) {
                        gc_expired(l);
                        next_gc = cp_now_mono_ms() + GC_INTERVAL_MS;
                }
                if (!stop && cp_now_mono_ms() >= next_cleanup) {
                        cleanup(l);
                        next_cleanup = cp_now_mono_ms() + l->cleanup_ms;
                }
        }
        free(rows);
        return NULL;
}

/* ---- life cycle ------------------------------------------------------------------------- */

static int64_t file_int(const json_t *file, const char *key, int64_t def) {
        json_t *o = file ? cp_cfg_json_get(file, "ReverseProxy", 12) : NULL;
        json_t *v = o ? cp_cfg_json_get(o, key, strlen(key)) : NULL;

        return json_is_integer(v) ? json_integer_value(v) : def;
}

int prpc_logs_new(mgmt_prpc *p, const mgmt_prpc_options *o, const json_t *file, prpc_logs **ret,
                  cp_error *reterr) {
        prpc_logs *l = cp_xcalloc(1, sizeof *l);
        pthread_condattr_t ca;
        int r;

        l->p = p;
        l->batch = o->log_batch ? o->log_batch : DEFAULT_BATCH;
        l->flush_ms = o->log_flush_ms > 0 ? o->log_flush_ms : DEFAULT_FLUSH_MS;
        l->queue_max = o->log_queue_max ? o->log_queue_max : DEFAULT_QUEUE_MAX;
        if (l->batch > l->queue_max)
                l->batch = l->queue_max;
        l->retention_days = o->retention_days_set ? o->retention_days : file_int(file, "AccessLogRetentionDays", 0);
        if (l->retention_days == 0)
                l->retention_days = 7;
        int64_t hours = file_int(file, "AccessLogCleanupIntervalHours", 0);
        l->cleanup_ms = o->cleanup_interval_ms > 0 ? o->cleanup_interval_ms
                        : (hours > 0 ? hours : 24) * 3600 * 1000;
        l->q = cp_xcalloc(l->queue_max, sizeof *l->q);
        pthread_mutex_init(&l->lock, NULL);
        pthread_mutex_init(&l->seen_lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&l->cond, &ca);
        pthread_condattr_destroy(&ca);
        r = pthread_create(&l->thread, NULL, writer, l);
        if (r != 0) {
                prpc_logs_free(l);
                return cp_error_set(reterr, -r, "cannot start the access log writer: %s", strerror(r));
        }
        l->started = true;
        *ret = l;
        return 0;
}

prpc_logs *prpc_logs_free(prpc_logs *l) {
        if (!l)
                return NULL;
        if (l->started) {
                pthread_mutex_lock(&l->lock);
                l->stopping = true;
                pthread_cond_signal(&l->cond);
                pthread_mutex_unlock(&l->lock);
                pthread_join(l->thread, NULL);
        }
        for (size_t i = 0; i < l->count; i++)
                free(l->q[(l->head + i) % l->queue_max]);
        free(l->q);
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->lock);
        pthread_mutex_destroy(&l->seen_lock);
        free(l);
        return NULL;
}

void mgmt_prpc_log_stats(mgmt_prpc *p, uint64_t *ret_written, uint64_t *ret_dropped) {
        *ret_written = atomic_load(&p->logs->written);
        *ret_dropped = atomic_load(&p->logs->dropped);
}
