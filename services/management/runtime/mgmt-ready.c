#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-ready.h"

#include <pthread.h>

struct mgmt_ready {
        cp_store *store;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC; signalled on stop */
        /* Everything below is guarded by lock. */
        bool stop;
        bool exited;
        bool have_result;
        bool running;
        int64_t started_ms, finished_ms;
        bool store_ok;
        int migrations;                 /* cp_store_migrations_current() */
        bool gate_ok;
        const char *gate_failed;        /* the failing gate's name */
        char error[256];                /* what /readyz says: never a database's own text */
        char detail[512];               /* the full reason, for the log only */
        int64_t logged_ms;              /* when the detail was last logged, 0 = not since ready
                                         * (checker thread only) */
        /* Set at creation, read-only after. */
        mgmt_ready_gate gates[MGMT_READY_MAX_GATES];
        size_t n_gates;
};

static const cp_log_ctx log_ctx = { .component = "ready" };

static void check_once(mgmt_ready *r) {
        cp_error err = { 0 };
        int ping, mig = -EIO;

        pthread_mutex_lock(&r->lock);
        r->running = true;
        r->started_ms = cp_now_mono_ms();
        pthread_mutex_unlock(&r->lock);

        char why[256] = "";
        int gate = 0;
        const char *gate_failed = NULL;

        ping = cp_store_ping(r->store, &err);
        if (ping >= 0)
                mig = cp_store_migrations_current(r->store, &err);
        for (size_t i = 0; ping >= 0 && mig == 1 && i < r->n_gates && gate >= 0; i++) {
                gate = r->gates[i].fn(r->gates[i].userdata, why, sizeof why);
                if (gate < 0)
                        gate_failed = r->gates[i].name;
        }

        pthread_mutex_lock(&r->lock);
        bool was_ready = r->have_result && r->store_ok && r->migrations == 1 && r->gate_ok;
        r->running = false;
        r->have_result = true;
        r->finished_ms = cp_now_mono_ms();
        r->store_ok = ping >= 0;
        r->migrations = mig;
        r->gate_ok = gate >= 0;
        r->gate_failed = gate_failed;
        /* /readyz answers anyone who can reach the port: it says which
         * check failed in words of ours; the database's own text (host
         * names, user and database names, server messages) goes to the
         * log only. Gates write reasons meant for the body. */
        const char *raw = err.message[0] ? err.message : strerror(-(ping < 0 ? ping : mig));
        if (ping < 0) {
                (void) snprintf(r->error, sizeof r->error, "%s", MGMT_READY_MSG_STORE);
                (void) snprintf(r->detail, sizeof r->detail, "%s", raw);
        } else if (mig < 0) {
                (void) snprintf(r->error, sizeof r->error, "%s", MGMT_READY_MSG_SCHEMA);
                (void) snprintf(r->detail, sizeof r->detail, "%s", raw);
        } else if (mig == 0) {
                (void) snprintf(r->error, sizeof r->error, "database schema has pending migrations");
                (void) snprintf(r->detail, sizeof r->detail, "%s", r->error);
        } else if (gate < 0) {
                (void) snprintf(r->error, sizeof r->error, "%s", why);
                (void) snprintf(r->detail, sizeof r->detail, "%s", why);
        } else
                r->error[0] = r->detail[0] = '\0';
        bool now_ready = r->store_ok && r->migrations == 1 && r->gate_ok;
        char detail[sizeof r->detail];
        memcpy(detail, r->detail, sizeof detail);
        pthread_mutex_unlock(&r->lock);

        /* The checker runs every MGMT_READY_INTERVAL_MS however often
         * /readyz is probed. A failure is logged when readiness is lost
         * (or never came), then at most once per MGMT_READY_LOG_EVERY_MS
         * while it lasts. logged_ms belongs to this thread. */
        int64_t now = cp_now_mono_ms();
        if (now_ready) {
                if (!was_ready)
                        cp_log(&log_ctx, CP_LOG_INFO, "ready");
                r->logged_ms = 0;
        } else if (was_ready || !r->logged_ms || now - r->logged_ms >= MGMT_READY_LOG_EVERY_MS) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "not ready", "error", detail, NULL);
                r->logged_ms = now ? now : 1;
        }
}

static void *ready_thread(void *userdata) {
        mgmt_ready *r = userdata;

        pthread_mutex_lock(&r->lock);
        while (!r->stop) {
                struct timespec ts;
                cp_mono_deadline(&ts, MGMT_READY_INTERVAL_MS);
                while (!r->stop && pthread_cond_timedwait(&r->cond, &r->lock, &ts) != ETIMEDOUT)
                        ;
                if (r->stop)
                        break;
                pthread_mutex_unlock(&r->lock);
                check_once(r);
                pthread_mutex_lock(&r->lock);
        }
        r->exited = true;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        return NULL;
}

int mgmt_ready_new(cp_store *store, mgmt_ready **ret) {
        return mgmt_ready_new_gated(store, NULL, NULL, NULL, ret);
}

int mgmt_ready_new_gated(cp_store *store, const char *name, mgmt_ready_gate_fn gate, void *userdata,
                         mgmt_ready **ret) {
        mgmt_ready_gate g = { .name = name, .fn = gate, .userdata = userdata };

        return mgmt_ready_new_gates(store, &g, gate ? 1 : 0, ret);
}

int mgmt_ready_new_gates(cp_store *store, const mgmt_ready_gate *gates, size_t n_gates, mgmt_ready **ret) {
        mgmt_ready *r;
        pthread_condattr_t attr;
        int e;

        if (n_gates > MGMT_READY_MAX_GATES)
                return -E2BIG;
        r = cp_xcalloc(1, sizeof *r);
        r->store = store;
        for (size_t i = 0; i < n_gates; i++) {
                if (!gates[i].fn)
                        continue;
                r->gates[r->n_gates] = gates[i];
                if (!r->gates[r->n_gates].name)
                        r->gates[r->n_gates].name = "gate";
                r->n_gates++;
        }
        pthread_mutex_init(&r->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cond, &attr);
        pthread_condattr_destroy(&attr);

        check_once(r);
        e = pthread_create(&r->thread, NULL, ready_thread, r);
        if (e != 0) {
                pthread_cond_destroy(&r->cond);
                pthread_mutex_destroy(&r->lock);
                free(r);
                return -e;
        }
        *ret = r;
        return 0;
}

void mgmt_ready_get(mgmt_ready *r, mgmt_ready_state *ret) {
        int64_t now = cp_now_mono_ms();

        memset(ret, 0, sizeof *ret);
        pthread_mutex_lock(&r->lock);
        ret->age_ms = r->have_result ? now - r->finished_ms : 0;
        if (r->running && now - r->started_ms > MGMT_READY_STALE_MS) {
                ret->failed = "store";
                (void) snprintf(ret->error, sizeof ret->error, "store check running for %" PRId64 " ms",
                                now - r->started_ms);
        } else if (!r->have_result || !r->store_ok) {
                ret->failed = "store";
                (void) snprintf(ret->error, sizeof ret->error, "%s", r->have_result ? r->error : "not checked yet");
        } else if (r->migrations != 1) {
                ret->failed = "migrations";
                (void) snprintf(ret->error, sizeof ret->error, "%s", r->error);
        } else if (!r->gate_ok) {
                ret->failed = r->gate_failed ? r->gate_failed : "gate";
                (void) snprintf(ret->error, sizeof ret->error, "%s", r->error);
        } else
                ret->ready = true;
        pthread_mutex_unlock(&r->lock);
}

bool mgmt_ready_stop(mgmt_ready *r, int64_t timeout_ms) {
        struct timespec ts;
        bool exited;

        if (!r)
                return true;
        cp_mono_deadline(&ts, timeout_ms);
        pthread_mutex_lock(&r->lock);
        r->stop = true;
        pthread_cond_broadcast(&r->cond);
        while (!r->exited && pthread_cond_timedwait(&r->cond, &r->lock, &ts) != ETIMEDOUT)
                ;
        exited = r->exited;
        pthread_mutex_unlock(&r->lock);
        if (!exited)
                return false;
        (void) pthread_join(r->thread, NULL);
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return true;
}

size_t mgmt_ready_gate_names(const mgmt_ready *r, const char **names, size_t max) {
        size_t n = 0;

        /* Set once by mgmt_ready_new_gates(), never changed. */
        for (; r && n < r->n_gates && n < max; n++)
                names[n] = r->gates[n].name;
        return n;
}
