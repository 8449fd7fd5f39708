#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-pii.h"
#include "cp/util.h"
#include "mgmt-datakey.h"
#include "mgmt-http.h"
#include "mgmt-metrics.h"
#include "mgmt-ready.h"

#include <event2/event.h>
#include <signal.h>
#include <stdatomic.h>

#define LEGACY_BATCH 500
#define LEGACY_BATCHES_PER_CHECK 4

static const cp_log_ctx log_ctx = { .component = "datakey" };

/* What the gate saw last, so that transitions are logged once. */
static atomic_int last_state;   /* 0 unknown, 1 accepted, -1 rejected */
static char last_writer[CP_PII_FP_LEN];
/* When a failed check was last logged (monotonic ms), 0 = not since a good one. */
static _Atomic int64_t last_error_ms;

static void log_rejected(const cp_store_pii_check *chk, const cp_error *err) {
        const char *prev = cp_pii_previous_fp();

        cp_log_kv(&log_ctx, CP_LOG_ERROR,
                  "the DataStoreEncryptionKey does not match the data in the database: this replica stays running "
                  "but not ready, writes nothing, and checks again every few seconds",
                  "key_fingerprint", cp_pii_key_fp(), "previous_key_fingerprint", *prev ? prev : "none",
                  "data_key_fingerprint", *chk->current ? chk->current : "unknown (sealed before fingerprints)",
                  "error", err->message,
                  "hint", "start the replica with the DataStoreEncryptionKey this database was sealed with (during "
                  "a rotation, give it as DataStoreEncryptionKeyPrevious); compare fingerprints with "
                  "'netbird-cp-admin data-key status'; never replace it with a new key over existing data",
                  NULL);
}

int mgmt_datakey_gate(void *userdata, char *why, size_t why_size) {
        cp_store *s = userdata;
        cp_store_pii_check chk;
        cp_error err = { 0 };
        int r;

        r = cp_store_pii_key_check(s, &chk, &err);
        if (r == -EKEYREJECTED) {
                /* Never seal with a key the database no longer uses:
                 * writers of names and e-mails fail until the check
                 * passes again (cp_pii_use() in it restores the writer). */
                cp_pii_drop_writer();
                if (atomic_exchange(&last_state, -1) != -1)
                        log_rejected(&chk, &err);
                (void) snprintf(why, why_size, "DataStoreEncryptionKey %s does not match the data's key %s",
                                cp_pii_key_fp(), *chk.current ? chk.current : "(unknown)");
                return r;
        }
        if (r < 0) {
                /* why reaches /readyz: the database's text goes to the
                 * log only, at most once per MGMT_READY_LOG_EVERY_MS. */
                int64_t now = cp_now_mono_ms(), last = atomic_load(&last_error_ms);
                if ((!last || now - last >= MGMT_READY_LOG_EVERY_MS) &&
                    atomic_compare_exchange_strong(&last_error_ms, &last, now ? now : 1))
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot check the DataStoreEncryptionKey against the database",
                                  "error", err.message, NULL);
                (void) snprintf(why, why_size, "data key check: %s", MGMT_READY_MSG_STORE);
                return r;
        }
        atomic_store(&last_error_ms, 0);
        if (chk.registered)
                cp_log_kv(&log_ctx, CP_LOG_INFO, "recorded the deployment's DataStoreEncryptionKey", "key_fingerprint",
                          chk.current, NULL);
        if (atomic_exchange(&last_state, 1) == -1)
                cp_log_kv(&log_ctx, CP_LOG_INFO, "the DataStoreEncryptionKey matches the data now", "key_fingerprint",
                          chk.current, NULL);
        if (strcmp(last_writer, cp_pii_writer_fp()) != 0) {
                (void) snprintf(last_writer, sizeof last_writer, "%s", cp_pii_writer_fp());
                cp_log_kv(&log_ctx, CP_LOG_INFO, "sealing personal data with the current key", "key_fingerprint",
                          last_writer, NULL);
        }

        /* Plain text from before migration 0012: a few batches a check. */
        cp_store_pii_counts c = { 0 };
        err = (cp_error) { 0 };
        r = cp_store_pii_seal_legacy(s, LEGACY_BATCH, LEGACY_BATCHES_PER_CHECK, &c, &err);
        if (r < 0)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot seal plain-text personal data", "error", err.message, NULL);
        else if (c.batches > 0) {
                char u[24], e[24], t[24];
                (void) snprintf(u, sizeof u, "%" PRId64, c.users);
                (void) snprintf(e, sizeof e, "%" PRId64, c.events);
                (void) snprintf(t, sizeof t, "%" PRId64, c.tenants);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "sealed plain-text personal data", "users", u, "events", e,
                          "tenants", t, NULL);
        }
        return 0;
}

/* ---- holding a replica with the wrong key ------------------------------------------------------ */

typedef struct hold {
        struct event_base *base;
        mgmt_ready *ready;
        int result;             /* 1 go on, 0 signalled */
} hold;

static void on_hold_signal(evutil_socket_t fd, short what, void *userdata) {
        hold *h = userdata;

        (void) fd;
        (void) what;
        h->result = 0;
        (void) event_base_loopexit(h->base, NULL);
}

static void on_hold_tick(evutil_socket_t fd, short what, void *userdata) {
        hold *h = userdata;
        mgmt_ready_state st;

        (void) fd;
        (void) what;
        mgmt_ready_get(h->ready, &st);
        if (st.ready) {
                h->result = 1;
                (void) event_base_loopexit(h->base, NULL);
        }
}

int mgmt_datakey_hold(const cp_config *cfg, cp_error *reterr) {
        cp_store_migrate_result mr = { 0 };
        cp_store *s = NULL;
        cp_error ignored = { 0 };
        char why[256] = "";
        int r;

        /* Connection problems are the manager's to report, as before. */
        if (cp_store_open(cfg->postgres_dsn, 2, &s, &ignored) < 0)
                return 1;
        if (cp_store_migrate(s, &mr, &ignored) < 0) {
                cp_store_free(s);
                return 1;
        }
        if (mr.applied > 0) {
                /* The manager's own migration finds nothing left to do:
                 * say here what this replica applied (same line). */
                char applied[16], current[16], unknown[16];
                (void) snprintf(applied, sizeof applied, "%u", mr.applied);
                (void) snprintf(current, sizeof current, "%u", mr.current);
                (void) snprintf(unknown, sizeof unknown, "%u", mr.unknown);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "database schema ready", "applied", applied, "already_applied",
                          current, "unknown", unknown, NULL);
        }
        r = mgmt_datakey_gate(s, why, sizeof why);
        if (r >= 0) {
                cp_store_free(s);
                return 1;
        }
        /* A wrong key, or a check that failed (a database hiccup): never
         * start unchecked; the checker below retries every few seconds. */
        if (r != -EKEYREJECTED)
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot check the DataStoreEncryptionKey against the database; "
                          "retrying", "error", why, NULL);

        hold h = { .result = 0 };
        mgmt_http *http = NULL;
        struct event *sig_term = NULL, *sig_int = NULL, *tick = NULL;
        h.base = event_base_new();
        if (!h.base) {
                r = cp_error_set(reterr, -ENOMEM, "cannot create the event loop");
                goto out;
        }
        r = mgmt_ready_new_gated(s, "data_key", mgmt_datakey_gate, s, &h.ready);
        if (r < 0) {
                r = cp_error_set(reterr, r, "cannot start the readiness checker: %s", strerror(-r));
                goto out;
        }
        /* /metrics says why: netbird_cp_ready_failing{check="data_key"}. */
        mgmt_metrics_watch_ready(h.ready);
        r = mgmt_http_new(h.base, cfg->listen_address, (int) cfg->http_port, h.ready, &http, reterr);
        if (r < 0)
                goto out;
        struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
        sig_term = evsignal_new(h.base, SIGTERM, on_hold_signal, &h);
        sig_int = evsignal_new(h.base, SIGINT, on_hold_signal, &h);
        tick = event_new(h.base, -1, EV_PERSIST, on_hold_tick, &h);
        if (!sig_term || !sig_int || !tick || event_add(sig_term, NULL) < 0 || event_add(sig_int, NULL) < 0 ||
            event_add(tick, &tv) < 0) {
                r = cp_error_set(reterr, -ENOMEM, "cannot register loop events");
                goto out;
        }
        cp_log_kv(&log_ctx, CP_LOG_INFO, "waiting for the data key check to pass (a DataStoreEncryptionKey that "
                  "matches the data); only /healthz and /readyz are served", NULL);
        if (event_base_dispatch(h.base) < 0) {
                r = cp_error_set(reterr, -EIO, "event loop failed");
                goto out;
        }
        r = h.result;
out:
        if (tick)
                event_free(tick);
        if (sig_term)
                event_free(sig_term);
        if (sig_int)
                event_free(sig_int);
        if (http)
                mgmt_http_free(http);
        mgmt_metrics_unwatch_ready(h.ready);
        if (h.ready && !mgmt_ready_stop(h.ready, 5000))
                s = NULL;       /* stuck in the store: leave both, the process exits */
        cp_store_free(s);
        if (h.base)
                event_base_free(h.base);
        return r;
}
