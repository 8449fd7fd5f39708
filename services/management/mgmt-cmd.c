#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store.h"
#include "cp/store-pii.h"
#include "cp/strbuf.h"
#include "mgmt-cmd.h"
#include "mgmt-datakey.h"
#include "mgmt-manager.h"
#include "mgmt-memtrim.h"
#include "mgmt-netconf.h"
#include "mgmt-tls.h"

#include <event2/event.h>
#include <grpc/support/log.h>

static const cp_log_ctx log_main = { .component = "main" };

/* ---- library log routing -------------------------------------------------- */

static void grpc_log_sink(gpr_log_func_args *a) {
        static const cp_log_ctx ctx = { .component = "grpc" };
        cp_log_level level = a->severity == GPR_LOG_SEVERITY_ERROR ? CP_LOG_ERROR :
                             a->severity == GPR_LOG_SEVERITY_INFO ? CP_LOG_DEBUG : CP_LOG_TRACE;
        char line[16];

        (void) snprintf(line, sizeof line, "%d", a->line);
        cp_log_kv(&ctx, level, a->message, "file", a->file, "line", line, NULL);
}

static void libevent_log_sink(int severity, const char *msg) {
        static const cp_log_ctx ctx = { .component = "libevent" };
        cp_log_level level = severity >= EVENT_LOG_ERR ? CP_LOG_ERROR :
                             severity == EVENT_LOG_WARN ? CP_LOG_WARN : CP_LOG_DEBUG;

        cp_log(&ctx, level, "%s", msg);
}

void mgmt_log_route_libraries(cp_log_level level) {
        gpr_set_log_function(grpc_log_sink);
        /* gRPC's INFO is chatty: only at trace; its DEBUG never. */
        gpr_set_log_verbosity(level <= CP_LOG_TRACE ? GPR_LOG_SEVERITY_INFO : GPR_LOG_SEVERITY_ERROR);
        event_set_log_callback(libevent_log_sink);
}

/* ---- management ----------------------------------------------------------- */

/* A configuration problem found by the command itself: the same report as
 * main.c's (stderr line, optional hint, JSON log line), exit 2. */
static int config_error(int r, const cp_error *err) {
        fprintf(stderr, "netbird-mgmt: error: %s\n", err->message);
        if (err->hint[0])
                fprintf(stderr, "hint: %s\n", err->hint);
        (void) cp_log_error(&log_main, r, err, "invalid configuration");
        return MGMT_EXIT_USAGE;
}

/* The DataStoreEncryptionKey is required: it seals the server key in the
 * database, which every replica must open. NetBird generates a missing
 * key and writes it back into management.json; with many replicas that
 * would give each its own key, so we refuse to start instead. */
static int require_data_key(const cp_config *cfg, uint8_t key[32], cp_error *err) {
        int r = cp_config_encryption_key(cfg, key);

        if (r == 1)
                return 0;
        if (r == 0)
                cp_error_set(err, -EINVAL, "no DataStoreEncryptionKey configured: the server key is stored "
                             "encrypted with it, and every replica must use the same key");
        else
                cp_error_set(err, -EINVAL, "invalid DataStoreEncryptionKey: expected standard base64 of 32 bytes");
        cp_error_hint(err, "generate one with 'openssl rand -base64 32' and give the same value to every "
                      "replica: --data-store-encryption-key, NB_MGMT_DATA_STORE_ENCRYPTION_KEY or "
                      "DataStoreEncryptionKey in management.json");
        return -EINVAL;
}

static void netconf_warning(const char *text, void *userdata) {
        static const cp_log_ctx log_config = { .component = "config" };

        cp_log(&log_config, CP_LOG_WARN, "%s", text);
}

int mgmt_cmd_management(const cp_config *cfg, void *extra) {
        mgmt_manager *m = NULL;
        mgmt_tls *tls = NULL;
        mgmt_netconf *netconf = NULL;
        uint8_t data_key[32];
        cp_error err = { 0 };
        int r;

        mgmt_memtrim_init();
        r = require_data_key(cfg, data_key, &err);
        if (r < 0)
                return config_error(r, &err);
        {
                uint8_t previous[32];
                int pr = cp_config_encryption_key_previous(cfg, previous);
                if (pr < 0) {
                        cp_explicit_bzero(data_key, sizeof data_key);
                        cp_error_set(&err, -EINVAL, "invalid DataStoreEncryptionKeyPrevious: expected standard "
                                     "base64 of 32 bytes");
                        return config_error(-EINVAL, &err);
                }
                /* Personal data and sealed keys open with either key and
                 * are written with the one the database marks current. */
                cp_pii_install(data_key, pr == 1 ? previous : NULL);
                cp_explicit_bzero(previous, sizeof previous);
        }
        r = mgmt_netconf_load(cfg->source.file, cfg->source.file_path, NULL, &netconf, &err);
        if (r < 0) {
                cp_explicit_bzero(data_key, sizeof data_key);
                return config_error(r, &err);
        }
        mgmt_netconf_check(netconf, netconf_warning, NULL);

        /* Unreadable or mismatched certificates are configuration errors. */
        if (cfg->cert_file) {
                r = mgmt_tls_load(cfg->cert_file, cfg->cert_key, &tls, &err);
                if (r < 0) {
                        (void) cp_log_error(&log_main, r, &err, "invalid TLS configuration");
                        fprintf(stderr, "netbird-mgmt: error: %s\n", err.message);
                        cp_explicit_bzero(data_key, sizeof data_key);
                        mgmt_netconf_free(netconf);
                        return MGMT_EXIT_USAGE;
                }
                cp_log_kv(&log_main, CP_LOG_INFO, "TLS enabled for gRPC", "subject", tls->subject, NULL);
        }
        /* A key that does not match the data: wait, not ready, writing
         * nothing (mgmt-datakey.h). */
        r = mgmt_datakey_hold(cfg, &err);
        if (r <= 0) {
                cp_explicit_bzero(data_key, sizeof data_key);
                mgmt_netconf_free(netconf);
                mgmt_tls_free(tls);
                cp_pii_uninstall();
                if (r == 0) {
                        cp_log(&log_main, CP_LOG_INFO, "stopped");
                        return MGMT_EXIT_OK;
                }
                (void) cp_log_error(&log_main, r, &err, "cannot start the management server");
                fprintf(stderr, "netbird-mgmt: error: %s\n", err.message);
                return MGMT_EXIT_FAILURE;
        }
        r = mgmt_manager_new(cfg, tls, netconf, data_key, &m, &err);
        cp_explicit_bzero(data_key, sizeof data_key);
        if (r == -EKEYREJECTED)
                return config_error(r, &err);   /* the wrong DataStoreEncryptionKey */
        if (r < 0) {
                (void) cp_log_error(&log_main, r, &err, "cannot start the management server");
                fprintf(stderr, "netbird-mgmt: error: %s\n", err.message);
                return MGMT_EXIT_FAILURE;
        }
        r = mgmt_manager_run(m);
        mgmt_manager_free(m);
        if (r < 0) {
                (void) cp_log_error(&log_main, r, NULL, "server stopped with an error");
                return MGMT_EXIT_FAILURE;
        }
        cp_log(&log_main, CP_LOG_INFO, "stopped");
        return MGMT_EXIT_OK;
}

/* ---- migrate / bootstrap -------------------------------------------------- */

static int open_and_migrate(const cp_config *cfg, cp_store **ret, cp_store_migrate_result *mr) {
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        r = cp_store_open(cfg->postgres_dsn, (unsigned) cfg->db_pool_size, &s, &err);
        if (r < 0) {
                (void) cp_log_error(&log_main, r, &err, "cannot connect to PostgreSQL");
                fprintf(stderr, "netbird-mgmt: error: cannot connect to PostgreSQL: %s\n", err.message);
                return r;
        }
        r = cp_store_migrate(s, mr, &err);
        if (r < 0) {
                (void) cp_log_error(&log_main, r, &err, "cannot apply database migrations");
                fprintf(stderr, "netbird-mgmt: error: cannot apply database migrations: %s\n", err.message);
                cp_store_free(s);
                return r;
        }
        char a[16], c[16], u[16];
        (void) snprintf(a, sizeof a, "%u", mr->applied);
        (void) snprintf(c, sizeof c, "%u", mr->current);
        (void) snprintf(u, sizeof u, "%u", mr->unknown);
        cp_log_kv(&log_main, CP_LOG_INFO, "database schema ready", "applied", a, "already_applied", c,
                  "unknown", u, NULL);
        *ret = s;
        return 0;
}

/* stdout is the command's result: report if it could not be written. */
static int finish_stdout(void) {
        if (fflush(stdout) != 0 || ferror(stdout)) {
                (void) cp_log_error(&log_main, -errno, NULL, "cannot write to stdout");
                return MGMT_EXIT_FAILURE;
        }
        return MGMT_EXIT_OK;
}

int mgmt_cmd_migrate(const cp_config *cfg, void *extra) {
        cp_store_migrate_result mr = { 0 };
        cp_store *s = NULL;
        cp_strbuf out;

        if (open_and_migrate(cfg, &s, &mr) < 0)
                return MGMT_EXIT_FAILURE;
        cp_store_free(s);
        cp_strbuf_init(&out);
        cp_store_migrate_report(&mr, &out);
        fputs(out.buf, stdout);
        cp_strbuf_release(&out);
        return finish_stdout();
}

const cp_cfg_option mgmt_bootstrap_options[] = {
        { "account-name", CP_CFG_STRING, offsetof(mgmt_bootstrap_cfg, account_name), "admin", { NULL }, NULL,
          0, 0, 0, NULL, "NAME", "bootstrap: name of the account's owner user" },
        { "setup-key-ttl", CP_CFG_DURATION, offsetof(mgmt_bootstrap_cfg, setup_key_ttl_ms), "0", { NULL }, NULL,
          0, 0, (int64_t) 10 * 365 * 86400 * 1000, NULL, "DURATION",
          "bootstrap: setup key lifetime, 0 = never expires" },
};
const size_t mgmt_bootstrap_n_options = ELEMENTSOF(mgmt_bootstrap_options);

int mgmt_cmd_bootstrap(const cp_config *cfg, void *extra) {
        const mgmt_bootstrap_cfg *b = extra;
        cp_store_migrate_result mr = { 0 };
        cp_store_account_created out;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        if (b->setup_key_ttl_ms % 1000 != 0) {
                fprintf(stderr, "netbird-mgmt: error: invalid value for --setup-key-ttl: whole seconds only\n");
                cp_log(&log_main, CP_LOG_ERROR, "invalid value for --setup-key-ttl: whole seconds only");
                return MGMT_EXIT_USAGE;
        }
        if (open_and_migrate(cfg, &s, &mr) < 0)
                return MGMT_EXIT_FAILURE;
        {
                /* The owner's name is sealed when the key matches the
                 * data; else the replicas seal it. */
                uint8_t key[32], prev[32];
                int k = cp_config_encryption_key(cfg, key), p = cp_config_encryption_key_previous(cfg, prev);
                r = cp_store_pii_tool_keys(s, k == 1 ? key : NULL, p == 1 ? prev : NULL, &err);
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                if (r < 0) {
                        cp_store_free(s);
                        (void) cp_log_error(&log_main, r, &err, "cannot create the account");
                        fprintf(stderr, "netbird-mgmt: error: cannot create the account: %s\n", err.message);
                        return MGMT_EXIT_FAILURE;
                }
        }
        cp_store_account_spec spec = {
                .name = b->account_name,
                .setup_key_ttl_s = b->setup_key_ttl_ms / 1000,
                .only_if_none = true,
        };
        r = cp_store_account_create(s, &spec, &out, &err);
        cp_store_free(s);
        cp_pii_uninstall();
        if (r == -EEXIST) {
                /* Idempotent: the first account exists (maybe made by a
                 * bootstrap running at the same moment). */
                cp_log(&log_main, CP_LOG_WARN, "an account already exists; bootstrap created nothing");
                return MGMT_EXIT_OK;
        }
        if (r < 0) {
                (void) cp_log_error(&log_main, r, &err, "cannot create the account");
                fprintf(stderr, "netbird-mgmt: error: cannot create the account: %s\n", err.message);
                return MGMT_EXIT_FAILURE;
        }
        cp_log_kv(&log_main, CP_LOG_INFO, "account created", "account", out.account_id, "user", out.user_id,
                  "network", out.network_cidr, NULL);
        cp_strbuf env;
        cp_strbuf_init(&env);
        cp_store_account_env(&out, &env);
        cp_explicit_bzero(&out, sizeof out);
        fputs(env.buf, stdout);
        cp_explicit_bzero(env.buf, env.len);
        cp_strbuf_release(&env);
        return finish_stdout();
}
