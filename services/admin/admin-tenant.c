/*
 * msp enable|disable, tenant create|list|suspend|resume|delete|limit:
 * the lifecycle of MSP and tenant accounts (cp/store-tenant.h,
 * cp/store-msp.h; docs/ops.md "MSPs and tenants").
 *
 * Suspend, resume and delete change the database first (the truth), then
 * publish the bus hint "account A at serial S" so every replica's streams
 * of A react at once. Without --redis-url (or when Redis is down) the
 * command still succeeds and says so: each replica catches up on its
 * periodic serial check (--serial-check-interval).
 */
#include "cp/base.h"
#include "cp/bus.h"
#include "cp/store-msp.h"
#include "cp/store-tenant.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "admin.h"

#define BUS_TIMEOUT_MS 3000
/* The ProxyService's pseudo-account on the bus (services/management/
 * proxy/mgmt-proxy.h MGMT_PROXY_BUS_CHANGES): "the change log is at seq". */
#define PROXY_BUS_CHANGES "~proxy"

static int need_arg(const admin_ctx *a, const char *what) {
        if (a->opts->arg && *a->opts->arg)
                return 0;
        fprintf(stderr, ADMIN_PROG ": error: %s needs the account id as its argument\n", what);
        return ADMIN_EXIT_USAGE;
}

/* A store error about an account: unknown is its own clear message. */
static int account_fail(const cp_error *err, int r, const char *id, const char *what) {
        if (r == -ENOENT) {
                fprintf(stderr, ADMIN_PROG ": error: account %s not found\n", id);
                return ADMIN_EXIT_FAILURE;
        }
        return admin_fail(ADMIN_EXIT_FAILURE, err, "cannot %s account %s", what, id);
}

/* The hint to every replica; a failure is a warning, never an error. */
static void publish(const admin_ctx *a, const char *account_id, int64_t serial) {
        cp_error err = { 0 };

        if (!a->cfg->redis_url || !*a->cfg->redis_url) {
                fprintf(stderr, ADMIN_PROG ": warning: no --redis-url: replicas notice within their "
                                "--serial-check-interval\n");
                return;
        }
        if (cp_bus_publish_once(a->cfg->redis_url, a->cfg->bus_channel_prefix ? a->cfg->bus_channel_prefix
                                                                              : "netbird-cp",
                                account_id, serial, BUS_TIMEOUT_MS, &err) < 0)
                fprintf(stderr, ADMIN_PROG ": warning: bus hint not sent (%s): replicas notice within their "
                                "--serial-check-interval\n", err.message);
}

/* ---- msp enable / disable ------------------------------------------------------------- */

static int msp_set(const admin_ctx *a, bool enable) {
        cp_store *s = NULL;
        cp_error err = { 0 };
        bool changed = false;
        int r = need_arg(a, enable ? "msp enable" : "msp disable");

        if (r)
                return r;
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        r = cp_store_msp_set_enabled(s, a->opts->arg, enable, CP_STORE_INITIATOR_OPERATOR, &changed, &err);
        cp_store_free(s);
        if (r < 0)
                return account_fail(&err, r, a->opts->arg, enable ? "enable MSP for" : "disable MSP for");
        printf("account %s: MSP %s%s\n", a->opts->arg, enable ? "enabled" : "disabled",
               changed ? "" : " (already)");
        return admin_finish_stdout();
}

int admin_cmd_msp_enable(const admin_ctx *a) {
        return msp_set(a, true);
}

int admin_cmd_msp_disable(const admin_ctx *a) {
        return msp_set(a, false);
}

/* ---- suspend / resume / limit / delete --------------------------------------------------- */

static int suspend_set(const admin_ctx *a, bool suspend) {
        cp_store *s = NULL;
        cp_error err = { 0 };
        int64_t serial = 0;
        bool changed = false;
        int r = need_arg(a, suspend ? "tenant suspend" : "tenant resume");

        if (r)
                return r;
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        r = cp_store_account_set_suspended(s, a->opts->arg, suspend, CP_STORE_INITIATOR_OPERATOR, &serial,
                                           &changed, &err);
        cp_store_free(s);
        if (r < 0)
                return account_fail(&err, r, a->opts->arg, suspend ? "suspend" : "resume");
        publish(a, a->opts->arg, serial);
        printf("account %s: %s%s\n", a->opts->arg, suspend ? "suspended" : "active",
               changed ? "" : " (already)");
        return admin_finish_stdout();
}

int admin_cmd_tenant_suspend(const admin_ctx *a) {
        return suspend_set(a, true);
}

int admin_cmd_tenant_resume(const admin_ctx *a) {
        return suspend_set(a, false);
}

int admin_cmd_tenant_limit(const admin_ctx *a) {
        const char *v = a->opts->max_devices;
        cp_store *s = NULL;
        cp_error err = { 0 };
        int64_t limit = -1;
        int r = need_arg(a, "tenant limit");

        if (r)
                return r;
        if (!v || (strcmp(v, "none") != 0 && cp_parse_int64(v, 0, INT32_MAX, &limit) < 0)) {
                fprintf(stderr, ADMIN_PROG ": error: --max-devices needs a number 0..%d or \"none\"\n", INT32_MAX);
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        r = cp_store_account_set_device_limit(s, a->opts->arg, limit, CP_STORE_INITIATOR_OPERATOR, &err);
        cp_store_free(s);
        if (r < 0)
                return account_fail(&err, r, a->opts->arg, "set the device limit of");
        if (limit < 0)
                printf("account %s: no device limit\n", a->opts->arg);
        else
                printf("account %s: device limit %" PRId64 "\n", a->opts->arg, limit);
        return admin_finish_stdout();
}

int admin_cmd_tenant_delete(const admin_ctx *a) {
        cp_store_account_deleted del = { 0 };
        cp_store *s = NULL;
        cp_error err = { 0 };
        int r = need_arg(a, "tenant delete");

        if (r)
                return r;
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        r = cp_store_account_delete_all(s, a->opts->arg, &del, &err);
        cp_store_free(s);
        if (r < 0)
                return account_fail(&err, r, a->opts->arg, "delete");
        publish(a, a->opts->arg, del.serial);
        if (del.proxy_seq > 0)
                publish(a, PROXY_BUS_CHANGES, del.proxy_seq);
        printf("account %s: deleted (%" PRId64 " peers)\n", a->opts->arg, del.peers);
        return admin_finish_stdout();
}

/* ---- list ------------------------------------------------------------------------------ */

static json_t *ms_time(int64_t ms) {
        char buf[40];
        time_t t = (time_t) (ms / 1000);
        struct tm tm;

        if (ms <= 0 || !gmtime_r(&t, &tm))
                return json_null();
        (void) strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
        return json_string(buf);
}

static json_t *status_json(const cp_store_tenant_status *t) {
        return json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:I, s:o, s:I, s:o}", "id", t->account_id,
                         "name", t->name, "domain", t->domain, "status", t->status[0] ? t->status : "-",
                         "state", t->suspended ? "suspended" : "active", "suspended_at",
                         ms_time(t->suspended_at_ms), "device_limit",
                         t->device_limit < 0 ? json_null() : json_integer(t->device_limit), "peers_total",
                         (json_int_t) t->peers_total, "peers_connected", (json_int_t) t->peers_connected,
                         "last_activity", ms_time(t->last_activity_ms), "serial", (json_int_t) t->serial,
                         "created_at", ms_time(t->created_at_ms));
}

int admin_cmd_tenant_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" }, { "NAME", "name" }, { "DOMAIN", "domain" }, { "STATUS", "status" },
                { "STATE", "state" }, { "LIMIT", "device_limit" }, { "PEERS", "peers_total" },
                { "CONNECTED", "peers_connected" }, { "LAST ACTIVITY", "last_activity" }, { "SERIAL", "serial" },
        };
        cp_store_tenant_status *list = NULL;
        cp_store *s = NULL;
        cp_error err = { 0 };
        size_t n = 0;
        int r;

        if (!a->opts->msp) {
                fprintf(stderr, ADMIN_PROG ": error: tenant list needs --msp <MSP account id>\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        r = cp_store_tenant_status_list(s, a->opts->msp, &list, &n, &err);
        cp_store_free(s);
        if (r < 0)
                return account_fail(&err, r, a->opts->msp, "list the tenants of");
        json_auto_t *rows = json_array();
        for (size_t i = 0; i < n; i++)
                (void) json_array_append_new(rows, status_json(&list[i]));
        free(list);
        admin_print_rows(rows, cols, ELEMENTSOF(cols), a->opts->json);
        return admin_finish_stdout();
}

/* ---- create ---------------------------------------------------------------------------- */

int admin_cmd_tenant_create(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_store_msp_tenant_created out = { 0 };
        cp_strbuf env;
        cp_store *s = NULL;
        cp_error err = { 0 };
        int r;

        if (!o->msp || !o->name || !o->domain) {
                fprintf(stderr, ADMIN_PROG ": error: tenant create needs --msp, --name and --domain\n");
                return ADMIN_EXIT_USAGE;
        }
        /* --groups ID:ROLE,... -> [{"id":ID,"role":ROLE},...] */
        json_auto_t *arr = json_array();
        if (o->groups) {
                _cleanup_free_ char *copy = cp_xstrdup(o->groups);
                for (char *save = NULL, *g = strtok_r(copy, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
                        char *colon = strchr(g, ':');
                        if (!colon || colon == g || !colon[1]) {
                                fprintf(stderr, ADMIN_PROG ": error: --groups takes GROUP_ID:ROLE[,...], got "
                                                "\"%s\"\n", g);
                                return ADMIN_EXIT_USAGE;
                        }
                        *colon = '\0';
                        (void) json_array_append_new(arr, json_pack("{s:s, s:s}", "id", g, "role", colon + 1));
                }
        }
        _cleanup_free_ char *groups_json = json_dumps(arr, JSON_COMPACT);

        r = admin_open_store(a, false, NULL, &s);
        if (r)
                return r;
        cp_store_msp_tenant_spec spec = {
                .msp_account_id = o->msp,
                .name = o->name,
                .domain = o->domain,
                .groups_json = groups_json,
        };
        r = cp_store_msp_tenant_create(s, &spec, &out, &err);
        cp_store_free(s);
        if (r == -ENOENT)
                return account_fail(&err, r, o->msp, "create a tenant of");
        if (r == -EPERM) {
                fprintf(stderr, ADMIN_PROG ": error: account %s is not an MSP\nhint: run '" ADMIN_PROG
                                " msp enable %s' first\n", o->msp, o->msp);
                return ADMIN_EXIT_FAILURE;
        }
        if (r == -EINVAL || r == -EEXIST) {
                /* Bad name, domain or groups: the store's own message. */
                fprintf(stderr, ADMIN_PROG ": error: cannot create the tenant: %s\n", err.message);
                return ADMIN_EXIT_USAGE;
        }
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot create the tenant");
        cp_strbuf_init(&env);
        cp_store_env_line(&env, "TENANT_ID", out.account_id);
        cp_store_env_line(&env, "CREATED", out.created ? "true" : "false");
        if (out.created) {
                cp_strbuf_grow(&env, 1024);
                cp_store_account_env(&out.account, &env);
        }
        fputs(env.buf, stdout);
        cp_explicit_bzero(env.buf, env.len);
        cp_strbuf_release(&env);
        cp_explicit_bzero(&out, sizeof out);
        return admin_finish_stdout();
}
