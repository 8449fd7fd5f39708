#include "cp/base.h"
#include "cp/log.h"
#include "cp/store-replica.h"
#include "cp/util.h"
#include "mgmt-replica.h"

#include <pthread.h>
#include <stdatomic.h>

struct mgmt_replica {
        cp_store *store;                /* one connection, this thread's own */
        char id[CP_STORE_REPLICA_ID_MAX + 1];
        char name[256];
        char *grpc_address, *http_address, *version;
        int pid;
        int64_t heartbeat_ms, expiry_ms;
        void (*on_lost)(void *userdata);
        void *userdata;

        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC; signalled on stop and draining */
        /* Guarded by lock. */
        bool stop, deregister, exited;
        bool draining, draining_written;

        /* Replica thread only. */
        int64_t healthy_since_ms;       /* 0 = not healthy now */
        int64_t last_ok_ms;
        bool failing;                   /* the last heartbeat failed (log transitions only) */

        _Atomic uint64_t heartbeats, heartbeat_failures, lost, reaped_replicas, reaped_sessions;
        _Atomic int64_t last_heartbeat_ms;
};

static const cp_log_ctx log_ctx = { .component = "replica" };

static int do_register(mgmt_replica *r, cp_error *reterr) {
        cp_store_replica_info info = { .id = r->id, .name = r->name, .pid = r->pid, .version = r->version };
        int ret;

        /* The addresses may be replaced by the manager's thread. */
        pthread_mutex_lock(&r->lock);
        info.grpc_address = cp_xstrdup(r->grpc_address);
        info.http_address = cp_xstrdup(r->http_address);
        pthread_mutex_unlock(&r->lock);
        ret = cp_store_replica_register(r->store, &info, reterr);
        free((char *) info.grpc_address);
        free((char *) info.http_address);
        return ret;
}

static void reap(mgmt_replica *r) {
        cp_store_reaped_replica *dead = NULL;
        size_t n = 0;
        cp_error err = { 0 };

        if (cp_store_replica_reap(r->store, r->id, r->expiry_ms, &dead, &n, &err) < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot reap dead replicas", "error", err.message, NULL);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                char sessions[24];

                (void) snprintf(sessions, sizeof sessions, "%" PRId64, dead[i].sessions);
                cp_log_kv(&log_ctx, CP_LOG_WARN, "replica missed its heartbeats; its sessions are disconnected",
                          "dead_replica", dead[i].id, "dead_replica_name", dead[i].name, "sessions", sessions,
                          NULL);
                atomic_fetch_add_explicit(&r->reaped_replicas, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&r->reaped_sessions, (uint64_t) dead[i].sessions, memory_order_relaxed);
        }
        free(dead);
}

/* One round: heartbeat (or re-register), then maybe reap. */
static void tick(mgmt_replica *r, bool draining) {
        cp_error err = { 0 };
        int64_t now = cp_now_mono_ms();
        int hb;

        if (draining) {
                /* The state write doubles as the heartbeat. */
                hb = cp_store_replica_set_state(r->store, r->id, "draining", &err);
                if (hb >= 0) {
                        pthread_mutex_lock(&r->lock);
                        r->draining_written = true;
                        pthread_mutex_unlock(&r->lock);
                }
        } else
                hb = cp_store_replica_heartbeat(r->store, r->id, &err);

        if (hb < 0) {
                atomic_fetch_add_explicit(&r->heartbeat_failures, 1, memory_order_relaxed);
                r->healthy_since_ms = 0;
                if (!r->failing)
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "heartbeat failed", "error", err.message, NULL);
                r->failing = true;
                return;
        }
        if (r->failing)
                cp_log(&log_ctx, CP_LOG_INFO, "heartbeat works again");
        r->failing = false;

        if (hb == 0 && !draining) {
                /* Reaped while we were cut off: our sessions are marked
                 * disconnected. Come back, then let the agents reconnect. */
                atomic_fetch_add_explicit(&r->lost, 1, memory_order_relaxed);
                cp_log_kv(&log_ctx, CP_LOG_ERROR,
                          "this replica was declared dead by another; registering again and ending its streams",
                          "replica_id", r->id, NULL);
                r->healthy_since_ms = 0;
                if (do_register(r, &err) < 0) {
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot register again", "error", err.message, NULL);
                        return;
                }
                if (r->on_lost)
                        r->on_lost(r->userdata);
                return;
        }

        atomic_fetch_add_explicit(&r->heartbeats, 1, memory_order_relaxed);
        atomic_store_explicit(&r->last_heartbeat_ms, now, memory_order_relaxed);
        /* Healthy means no gap longer than two intervals since the last
         * landed heartbeat. */
        if (r->healthy_since_ms == 0 || now - r->last_ok_ms > 2 * r->heartbeat_ms)
                r->healthy_since_ms = now;
        r->last_ok_ms = now;
        if (!draining && now - r->healthy_since_ms >= r->expiry_ms)
                reap(r);
}

static void *replica_thread(void *userdata) {
        mgmt_replica *r = userdata;

        pthread_mutex_lock(&r->lock);
        while (!r->stop) {
                struct timespec ts;
                cp_mono_deadline(&ts, r->heartbeat_ms);
                /* Woken early only to stop or to write "draining". */
                while (!r->stop && !(r->draining && !r->draining_written) &&
                       pthread_cond_timedwait(&r->cond, &r->lock, &ts) != ETIMEDOUT)
                        ;
                if (r->stop)
                        break;
                bool draining = r->draining;
                pthread_mutex_unlock(&r->lock);
                tick(r, draining);
                pthread_mutex_lock(&r->lock);
        }
        bool deregister = r->deregister;
        pthread_mutex_unlock(&r->lock);

        if (deregister) {
                cp_error err = { 0 };
                int64_t swept = 0;

                if (cp_store_replica_deregister(r->store, r->id, &swept, &err) < 0)
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot deregister; the row expires by itself", "error",
                                  err.message, NULL);
                else {
                        char n[24];
                        (void) snprintf(n, sizeof n, "%" PRId64, swept);
                        cp_log_kv(&log_ctx, CP_LOG_INFO, "replica deregistered", "replica_id", r->id,
                                  "sessions_swept", n, NULL);
                }
        }

        pthread_mutex_lock(&r->lock);
        r->exited = true;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        return NULL;
}

static void replica_free(mgmt_replica *r) {
        cp_store_free(r->store);
        free(r->grpc_address);
        free(r->http_address);
        free(r->version);
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        free(r);
}

int mgmt_replica_new(const mgmt_replica_options *opt, mgmt_replica **ret, cp_error *reterr) {
        mgmt_replica *r = cp_xcalloc(1, sizeof *r);
        pthread_condattr_t attr;
        int e;

        if (!opt->id || !*opt->id || strlen(opt->id) > CP_STORE_REPLICA_ID_MAX) {
                free(r);
                return cp_error_set(reterr, -EINVAL, "invalid replica id");
        }
        (void) snprintf(r->id, sizeof r->id, "%s", opt->id);
        if (opt->name && *opt->name)
                (void) snprintf(r->name, sizeof r->name, "%s", opt->name);
        else if (gethostname(r->name, sizeof r->name - 1) < 0)
                r->name[0] = '\0';
        r->grpc_address = cp_xstrdup(opt->grpc_address ? opt->grpc_address : "");
        r->http_address = cp_xstrdup(opt->http_address ? opt->http_address : "");
        r->version = cp_xstrdup(opt->version ? opt->version : "");
        r->pid = (int) getpid();
        r->heartbeat_ms = opt->heartbeat_ms;
        r->expiry_ms = opt->expiry_ms;
        r->on_lost = opt->on_lost;
        r->userdata = opt->userdata;
        pthread_mutex_init(&r->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cond, &attr);
        pthread_condattr_destroy(&attr);

        e = cp_store_open(opt->dsn, 1, &r->store, reterr);
        if (e >= 0)
                e = do_register(r, reterr);
        if (e < 0) {
                cp_error_prefix(reterr, "cannot register this replica");
                replica_free(r);
                return e;
        }
        r->healthy_since_ms = r->last_ok_ms = cp_now_mono_ms();
        atomic_store(&r->last_heartbeat_ms, r->last_ok_ms);
        e = pthread_create(&r->thread, NULL, replica_thread, r);
        if (e != 0) {
                replica_free(r);
                return cp_error_set(reterr, -e, "cannot start the replica thread: %s", strerror(e));
        }
        cp_log_kv(&log_ctx, CP_LOG_INFO, "replica registered", "replica_id", r->id, "replica_name", r->name, NULL);
        *ret = r;
        return 0;
}

int mgmt_replica_set_addresses(mgmt_replica *r, const char *grpc_address, const char *http_address,
                               cp_error *reterr) {
        pthread_mutex_lock(&r->lock);
        free(r->grpc_address);
        free(r->http_address);
        r->grpc_address = cp_xstrdup(grpc_address ? grpc_address : "");
        r->http_address = cp_xstrdup(http_address ? http_address : "");
        pthread_mutex_unlock(&r->lock);
        return do_register(r, reterr);
}

void mgmt_replica_draining(mgmt_replica *r) {
        if (!r)
                return;
        pthread_mutex_lock(&r->lock);
        r->draining = true;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
}

bool mgmt_replica_stop(mgmt_replica *r, bool deregister, int64_t timeout_ms) {
        struct timespec ts;
        bool exited;

        if (!r)
                return true;
        cp_mono_deadline(&ts, timeout_ms);
        pthread_mutex_lock(&r->lock);
        r->stop = true;
        r->deregister = deregister;
        pthread_cond_broadcast(&r->cond);
        while (!r->exited && pthread_cond_timedwait(&r->cond, &r->lock, &ts) != ETIMEDOUT)
                ;
        exited = r->exited;
        pthread_mutex_unlock(&r->lock);
        if (!exited) {
                cp_log(&log_ctx, CP_LOG_WARN, "replica thread stuck in the database; leaving it");
                return false;
        }
        (void) pthread_join(r->thread, NULL);
        replica_free(r);
        return true;
}

void mgmt_replica_get_stats(mgmt_replica *r, mgmt_replica_stats *ret) {
        ret->heartbeats = atomic_load_explicit(&r->heartbeats, memory_order_relaxed);
        ret->heartbeat_failures = atomic_load_explicit(&r->heartbeat_failures, memory_order_relaxed);
        ret->lost = atomic_load_explicit(&r->lost, memory_order_relaxed);
        ret->reaped_replicas = atomic_load_explicit(&r->reaped_replicas, memory_order_relaxed);
        ret->reaped_sessions = atomic_load_explicit(&r->reaped_sessions, memory_order_relaxed);
        ret->last_heartbeat_ms = atomic_load_explicit(&r->last_heartbeat_ms, memory_order_relaxed);
}
