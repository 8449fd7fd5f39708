/*
 * netbird-cp-admin: command line -> settings -> command -> exit code.
 * The commands live in the admin-core library (admin-*.c).
 *
 * Settings come in two tables. The common ones are rows of netbird-mgmt's
 * own table (cp_config_options), loaded with its spec, so a flag, an
 * NB_MGMT_* / NB_STORE_ENGINE_POSTGRES_DSN variable or a management.json
 * key means exactly what it means to the server. Each command's own flags
 * form a second table with the prefix NB_ADMIN_ for their environment
 * variables, so a replica's environment never sets them by accident.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cp/store.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "admin.h"

#include <signal.h>

#ifndef ADMIN_VERSION
#define ADMIN_VERSION "unknown"
#endif

/* Which common settings a command takes besides config, DSN, engine and
 * log level. */
#define NEEDS_DATA_KEY (1u << 0)        /* --data-store-encryption-key */
#define NEEDS_DNS      (1u << 1)        /* the server's --dns-domain (peer FQDNs in API answers) */
#define TAKES_ARG      (1u << 2)        /* one positional argument (admin_opts.arg) */
#define NEEDS_BUS      (1u << 3)        /* --redis-url, --bus-channel-prefix (the bus hint) */

#define O(field) offsetof(admin_opts, field)

static const cp_cfg_option account_create_rows[] = {
        { "owner-name", CP_CFG_STRING, O(owner_name), "admin", { NULL }, NULL, 0, 0, 0, NULL, "NAME",
          "name of the account's owner user" },
        { "domain", CP_CFG_STRING, O(domain), NULL, { NULL }, NULL, 0, 0, 0, NULL, "DOMAIN",
          "the account's domain" },
        { "dns-domain", CP_CFG_STRING, O(account_dns_domain), NULL, { NULL }, NULL, 0, 0, 0, NULL, "DOMAIN",
          "the account's own peer FQDN suffix (default: the server's --dns-domain)" },
        { "setup-key-ttl", CP_CFG_DURATION, O(setup_key_ttl_ms), "0", { NULL }, NULL, 0, 0,
          (int64_t) 10 * 365 * 86400 * 1000, NULL, "DURATION", "lifetime of the first setup key, 0 = never expires" },
        { "if-none", CP_CFG_BOOL, O(if_none), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "create only when the database has no account yet (else print nothing, exit 0)" },
};

static const cp_cfg_option json_rows[] = {
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option account_json_rows[] = {
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the account" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option sessions_rows[] = {
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "only this account's sessions (default: every account)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option setup_key_create_rows[] = {
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the account (required)" },
        { "name", CP_CFG_STRING, O(name), "setup key", { NULL }, NULL, 0, 0, 0, NULL, "NAME", "the key's name" },
        { "type", CP_CFG_STRING, O(type), "reusable", { NULL }, NULL, 0, 0, 0, NULL, "TYPE", "reusable or one-off" },
        { "expires-in", CP_CFG_DURATION, O(expires_in_ms), "0", { NULL }, NULL, 0, 0,
          (int64_t) 10 * 365 * 86400 * 1000, NULL, "DURATION", "lifetime, 0 = never expires" },
        { "usage-limit", CP_CFG_INT, O(usage_limit), "0", { NULL }, NULL, 0, 0, INT32_MAX, NULL, "N",
          "how many peers may register with it, 0 = unlimited" },
        { "auto-group", CP_CFG_STRING, O(auto_group_env), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "group id peers registered with the key join; repeat for several (the variable: comma-separated)" },
        { "ephemeral", CP_CFG_BOOL, O(ephemeral), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "peers registered with it are ephemeral" },
        { "allow-extra-dns-labels", CP_CFG_BOOL, O(allow_extra_dns_labels), "false", { NULL }, NULL, 0, 0, 0,
          NULL, NULL, "peers may add extra DNS labels" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "print the API's whole answer as JSON instead of KEY=VALUE lines" },
};

static const cp_cfg_option proxy_token_create_rows[] = {
        { "name", CP_CFG_STRING, O(name), NULL, { NULL }, NULL, 0, 0, 0, NULL, "NAME", "the token's name (required)" },
        { "expires-in", CP_CFG_DURATION, O(expires_in_ms), "0", { NULL }, NULL, 0, 0,
          (int64_t) 3650 * 86400 * 1000, NULL, "DURATION", "lifetime, e.g. 30d or 720h (0 = never expires)" },
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "scope the token to this account (default: management-wide)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option proxy_token_list_rows[] = {
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "only this account's tokens (default: every token)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option rotate_rows[] = {
        { "grace", CP_CFG_DURATION, O(grace_ms), "24h", { NULL }, NULL, 0, 0, (int64_t) 30 * 86400 * 1000, NULL,
          "DURATION", "how long requests sealed to the old key still open (0s = not at all)" },
        { "force", CP_CFG_BOOL, O(force), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "rotate even while the key replaced last time is inside its grace period (drops it)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option service_key_rotate_rows[] = {
        { "service", CP_CFG_STRING, O(service), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the service to rotate" },
        { "all", CP_CFG_BOOL, O(all), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "rotate every service" },
        { "grace", CP_CFG_DURATION, O(grace_ms), "24h", { NULL }, NULL, 0, 0, (int64_t) 30 * 86400 * 1000, NULL,
          "DURATION", "how long session tokens signed with the old key still validate (0s = not at all)" },
        { "force", CP_CFG_BOOL, O(force), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "rotate even while the key replaced last time is inside its grace period (drops it)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option tenant_create_rows[] = {
        { "msp", CP_CFG_STRING, O(msp), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the MSP account (required)" },
        { "name", CP_CFG_STRING, O(name), NULL, { NULL }, NULL, 0, 0, 0, NULL, "NAME", "the tenant's name (required)" },
        { "domain", CP_CFG_STRING, O(domain), NULL, { NULL }, NULL, 0, 0, 0, NULL, "DOMAIN",
          "the tenant's domain (required; the same domain again returns the existing tenant)" },
        { "groups", CP_CFG_STRING, O(groups), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID:ROLE,...",
          "MSP groups and the role their users get in the tenant" },
};

static const cp_cfg_option tenant_list_rows[] = {
        { "msp", CP_CFG_STRING, O(msp), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the MSP account (required)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option tenant_limit_rows[] = {
        { "max-devices", CP_CFG_STRING, O(max_devices), NULL, { NULL }, NULL, 0, 0, 0, NULL, "N|none",
          "how many peers the account may hold (required; none = no limit)" },
};

static const cp_cfg_option reencrypt_rows[] = {
        { "batch-size", CP_CFG_INT, O(batch_size), "500", { NULL }, NULL, 0, 1, 100000, NULL, "N",
          "rows re-sealed per committed transaction" },
        { "max-batches", CP_CFG_INT, O(max_batches), "0", { NULL }, NULL, 0, 0, INT32_MAX, NULL, "N",
          "stop after this many batches (0 = until done); run again to continue" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option netmap_show_rows[] = {
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID", "the account (required)" },
        { "peer", CP_CFG_STRING, O(peer), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "only this peer (default: every peer of the account)" },
        { "json", CP_CFG_BOOL, O(json), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "print JSON" },
};

static const cp_cfg_option import_rows[] = {
        { "sqlite", CP_CFG_STRING, O(import_sqlite), NULL, { NULL }, NULL, 0, 0, 0, NULL, "FILE",
          "NetBird's SQLite store (store.db in its datadir)" },
        { "postgres", CP_CFG_STRING, O(import_postgres), NULL, { NULL }, NULL, 0, 0, 0, NULL, "DSN",
          "NetBird's PostgreSQL store (its NB_STORE_ENGINE_POSTGRES_DSN)" },
        { "events-sqlite", CP_CFG_STRING, O(events_sqlite), NULL, { NULL }, NULL, 0, 0, 0, NULL, "FILE",
          "NetBird's activity store (default: events.db beside --sqlite's file, if there)" },
        { "events-postgres", CP_CFG_STRING, O(events_postgres), NULL, { NULL }, NULL, 0, 0, 0, NULL, "DSN",
          "NetBird's activity store in PostgreSQL" },
        { "encryption-key", CP_CFG_STRING, O(encryption_key), NULL, { NULL }, NULL, 0, 0, 0, NULL, "KEY",
          "NetBird's DataStoreEncryptionKey (its management.json), to open users' encrypted fields" },
        { "dry-run", CP_CFG_BOOL, O(dry_run), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "run each account's import and roll it back: prints what an import would do" },
        { "update", CP_CFG_BOOL, O(update), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "replace the imported data of accounts that exist (else they are refused)" },
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "only this account of the store" },
};

static const cp_cfg_option export_rows[] = {
        { "sqlite", CP_CFG_STRING, O(export_sqlite), NULL, { NULL }, NULL, 0, 0, 0, NULL, "FILE",
          "the NetBird store.db to write (required; NetBird v0.77.1's schema)" },
        { "events-sqlite", CP_CFG_STRING, O(events_sqlite), NULL, { NULL }, NULL, 0, 0, 0, NULL, "FILE",
          "also write the activity events as NetBird's events.db (needs --encryption-key)" },
        { "encryption-key", CP_CFG_STRING, O(encryption_key), NULL, { NULL }, NULL, 0, 0, 0, NULL, "KEY",
          "NetBird's DataStoreEncryptionKey: users' e-mails and names are written encrypted with it "
          "(default: plain text)" },
        { "account", CP_CFG_STRING, O(account), NULL, { NULL }, NULL, 0, 0, 0, NULL, "ID",
          "only this account (default: every account)" },
        { "force", CP_CFG_BOOL, O(force), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL,
          "replace the files if they exist" },
};

#undef O

typedef struct command {
        const char *group;
        const char *verb;               /* NULL: a one-word command */
        const char *summary;
        int (*run)(const admin_ctx *a);
        const cp_cfg_option *rows;
        size_t n_rows;
        unsigned needs;
} command;

#define ROWS(t) t, ELEMENTSOF(t)

static const command commands[] = {
        { "migrate", NULL, "apply the database migrations", admin_cmd_migrate, NULL, 0, 0 },
        { "account", "create", "create an account; prints ACCOUNT_ID, USER_ID, SETUP_KEY, ADMIN_TOKEN, NETWORK",
          admin_cmd_account_create, ROWS(account_create_rows), NEEDS_DATA_KEY },
        { "account", "list", "list the accounts", admin_cmd_account_list, ROWS(json_rows), 0 },
        { "setup-key", "create", "create a setup key through the REST API; prints SETUP_KEY_ID and SETUP_KEY",
          admin_cmd_setup_key_create, ROWS(setup_key_create_rows), NEEDS_DNS },
        { "setup-key", "list", "list an account's setup keys through the REST API", admin_cmd_setup_key_list,
          ROWS(account_json_rows), NEEDS_DNS },
        { "peers", "list", "list an account's peers through the REST API", admin_cmd_peers_list,
          ROWS(account_json_rows), NEEDS_DNS },
        { "sessions", "list", "list connected peers: session token, last seen, owning replica",
          admin_cmd_sessions_list, ROWS(sessions_rows), 0 },
        { "replicas", "list", "list the replicas and their heartbeats", admin_cmd_replicas_list, ROWS(json_rows), 0 },
        { "server-key", "rotate", "replace the server's WireGuard key, keeping the old one for a grace period",
          admin_cmd_server_key_rotate, ROWS(rotate_rows), NEEDS_DATA_KEY },
        { "server-key", "show", "show the server key's public half and rotation state", admin_cmd_server_key_show,
          ROWS(json_rows), 0 },
        { "service-key", "rotate", "new session signing keys for reverse-proxy services (--service ID or --all)",
          admin_cmd_service_key_rotate, ROWS(service_key_rotate_rows), NEEDS_DATA_KEY },
        { "proxy-token", "create", "create a reverse-proxy access token; prints PROXY_TOKEN_ID and PROXY_TOKEN once",
          admin_cmd_proxy_token_create, ROWS(proxy_token_create_rows), 0 },
        { "proxy-token", "list", "list the reverse-proxy access tokens", admin_cmd_proxy_token_list,
          ROWS(proxy_token_list_rows), 0 },
        { "proxy-token", "revoke", "revoke a reverse-proxy access token: proxy-token revoke <id>",
          admin_cmd_proxy_token_revoke, NULL, 0, TAKES_ARG },
        { "msp", "enable", "make an account an MSP: msp enable <account-id>", admin_cmd_msp_enable, NULL, 0,
          TAKES_ARG },
        { "msp", "disable", "stop an account being an MSP (its tenants stay linked): msp disable <account-id>",
          admin_cmd_msp_disable, NULL, 0, TAKES_ARG },
        { "tenant", "create", "create a tenant of an MSP (idempotent per domain); prints TENANT_ID and its keys",
          admin_cmd_tenant_create, ROWS(tenant_create_rows), 0 },
        { "tenant", "list", "list an MSP's tenants with their status, peers and last activity",
          admin_cmd_tenant_list, ROWS(tenant_list_rows), 0 },
        { "tenant", "suspend", "suspend an account: tenant suspend <account-id>", admin_cmd_tenant_suspend, NULL,
          0, TAKES_ARG | NEEDS_BUS },
        { "tenant", "resume", "resume a suspended account: tenant resume <account-id>", admin_cmd_tenant_resume,
          NULL, 0, TAKES_ARG | NEEDS_BUS },
        { "tenant", "delete", "delete an account and every row of it: tenant delete <account-id>",
          admin_cmd_tenant_delete, NULL, 0, TAKES_ARG | NEEDS_BUS },
        { "tenant", "limit", "set an account's device limit: tenant limit <account-id> --max-devices N|none",
          admin_cmd_tenant_limit, ROWS(tenant_limit_rows), TAKES_ARG },
        { "data-key", "status", "the DataStoreEncryptionKeys by fingerprint, which is current, rows sealed with each",
          admin_cmd_data_key_status, ROWS(json_rows), NEEDS_DATA_KEY },
        { "data-key", "reencrypt", "re-seal everything under the new DataStoreEncryptionKey (old one as ...-previous)",
          admin_cmd_data_key_reencrypt, ROWS(reencrypt_rows), NEEDS_DATA_KEY },
        { "data-key", "retire", "forget an old key once nothing is sealed with it: data-key retire <fingerprint>",
          admin_cmd_data_key_retire, NULL, 0, NEEDS_DATA_KEY | TAKES_ARG },
        { "netmap", "show", "the SyncResponse of a peer computed fresh from the database (base64 protobuf)",
          admin_cmd_netmap_show, ROWS(netmap_show_rows), NEEDS_DNS },
        { "import", NULL, "import a NetBird store (--sqlite FILE or --postgres DSN), one transaction per account",
          admin_cmd_import, ROWS(import_rows), NEEDS_DATA_KEY | NEEDS_BUS },
        { "export", NULL, "write the accounts as a NetBird store.db (and events.db) that NetBird's server opens",
          admin_cmd_export, ROWS(export_rows), NEEDS_DATA_KEY },
};

/* The command's own flags: environment NB_ADMIN_<NAME>, no file. */
static const cp_cfg_spec admin_spec = { .env_prefix = "NB_ADMIN_" };

static const cp_log_ctx log_main = { .component = "main" };

static void usage(FILE *f) {
        fprintf(f, ADMIN_PROG " %s: operations on a netbird-cp deployment, straight on its database\n\n"
                   "Usage:\n  " ADMIN_PROG " <command> [flags]\n\nCommands:\n", ADMIN_VERSION);
        for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
                char name[40];
                (void) snprintf(name, sizeof name, "%s%s%s", commands[i].group, commands[i].verb ? " " : "",
                                commands[i].verb ? commands[i].verb : "");
                fprintf(f, "  %-20s %s\n", name, commands[i].summary);
        }
        fprintf(f, "  %-20s %s\n  %-20s %s\n\n", "version", "print the version", "help", "show this help");
        fprintf(f, "Run '" ADMIN_PROG " <command> --help' for the flags of a command.\n"
                   "Exit status: 0 success, 1 failure, 2 bad usage or configuration.\n");
}

/* The common rows this command takes, copied from netbird-mgmt's table
 * (offsets into cp_config). Returns how many. */
static size_t common_rows(const command *cmd, cp_cfg_option out[8]) {
        static const char *const always[] = { "config", "postgres-dsn", "store-engine", "log-level" };
        size_t n_all, n = 0;
        const cp_cfg_option *all = cp_config_options(&n_all);

        for (size_t i = 0; i < n_all; i++) {
                const cp_cfg_option *o = &all[i];
                bool want = false;
                for (size_t k = 0; k < ELEMENTSOF(always); k++)
                        want = want || strcmp(o->name, always[k]) == 0;
                if (strcmp(o->name, "data-store-encryption-key") == 0 ||
                    strcmp(o->name, "data-store-encryption-key-previous") == 0)
                        want = cmd->needs & NEEDS_DATA_KEY;
                if (strcmp(o->name, "dns-domain") == 0)
                        want = cmd->needs & NEEDS_DNS;
                if (strcmp(o->name, "redis-url") == 0 || strcmp(o->name, "bus-channel-prefix") == 0)
                        want = cmd->needs & NEEDS_BUS;
                if (!want || n == 8)
                        continue;
                out[n] = *o;
                /* A one-shot tool: only problems on stderr by default. */
                if (strcmp(o->name, "log-level") == 0)
                        out[n].def = "warn";
                n++;
        }
        return n;
}

static const cp_cfg_option *find_row(const cp_cfg_option *rows, size_t n, const char *name, size_t len) {
        for (size_t i = 0; i < n; i++)
                if (strlen(rows[i].name) == len && strncmp(rows[i].name, name, len) == 0)
                        return &rows[i];
        return NULL;
}

typedef struct split_args {
        char **common, **own;
        int n_common, n_own;
} split_args;

/* Sends each flag (and its value) to the table that knows it; flags
 * neither knows, and anything else, go to the common load, which reports
 * them. Every --auto-group value is collected into opts. */
static int split(const command *cmd, const cp_cfg_option *common, size_t n_common, int argc, char **argv,
                 split_args *out, admin_opts *opts) {
        out->common = cp_xcalloc((size_t) argc + 1, sizeof *out->common);
        out->own = cp_xcalloc((size_t) argc + 1, sizeof *out->own);
        for (int i = 0; i < argc; i++) {
                const char *arg = argv[i];
                bool is_flag = strncmp(arg, "--", 2) == 0;
                if (!is_flag && (cmd->needs & TAKES_ARG) && !opts->arg) {
                        opts->arg = arg;
                        continue;
                }
                /* Only a flag has a name after its "--" ("-" or "" has none). */
                const char *name = is_flag ? arg + 2 : "", *eq = is_flag ? strchr(arg, '=') : NULL;
                size_t len = eq ? (size_t) (eq - name) : strlen(name);
                const cp_cfg_option *row = is_flag && len > 0 ? find_row(cmd->rows, cmd->n_rows, name, len) : NULL;
                bool is_own = row != NULL;

                if (!row && is_flag && len > 0)
                        row = find_row(common, n_common, name, len);
                bool takes_next = row && !eq && row->type != CP_CFG_BOOL && i + 1 < argc;
                if (is_own && strcmp(row->name, "auto-group") == 0) {
                        if (!eq && i + 1 >= argc) {
                                fprintf(stderr, ADMIN_PROG ": error: flag --auto-group needs a value\n");
                                return -EINVAL;
                        }
                        const char *v = eq ? eq + 1 : argv[++i];
                        opts->auto_groups = cp_xrealloc(opts->auto_groups,
                                                        (opts->n_auto_groups + 1) * sizeof *opts->auto_groups);
                        opts->auto_groups[opts->n_auto_groups++] = cp_xstrdup(v);
                        continue;
                }
                char ***dst = is_own ? &out->own : &out->common;
                int *n = is_own ? &out->n_own : &out->n_common;
                (*dst)[(*n)++] = argv[i];
                if (takes_next)
                        (*dst)[(*n)++] = argv[++i];
        }
        return 0;
}

static void command_usage(const command *cmd, const cp_cfg_table *common, const cp_cfg_table *own) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "Usage:\n  " ADMIN_PROG " %s%s%s [flags]\n\n%s.\n\nFlags (--flag value or --flag=value; "
                       "precedence: flag > environment > config file > default):\n", cmd->group,
                       cmd->verb ? " " : "", cmd->verb ? cmd->verb : "", cmd->summary);
        cp_cfg_usage(&sb, &cp_config_spec, common, 1);
        if (own->n_options)
                cp_cfg_usage(&sb, &admin_spec, own, 1);
        fputs(sb.buf, stdout);
        cp_strbuf_release(&sb);
}

static int config_error(const command *cmd, const cp_error *err) {
        fprintf(stderr, ADMIN_PROG ": error: %s\n", err->message);
        if (err->hint[0])
                fprintf(stderr, "hint: %s\n", err->hint);
        else if (strncmp(err->message, "unknown flag", 12) == 0 || strncmp(err->message, "unexpected argument", 19) == 0)
                fprintf(stderr, "hint: run '" ADMIN_PROG " %s%s%s --help' for the list of flags\n", cmd->group,
                        cmd->verb ? " " : "", cmd->verb ? cmd->verb : "");
        return ADMIN_EXIT_USAGE;
}

/* An empty string given as a flag means unset, as for the server. */
static void empty_to_null(char **s) {
        if (*s && !**s) {
                free(*s);
                *s = NULL;
        }
}

static int run_command(const command *cmd, int argc, char **argv) {
        cp_cfg_option common[8];
        size_t n_common = common_rows(cmd, common);
        cp_config cfg = { 0 };
        admin_opts opts = { 0 };
        cp_cfg_result own_res = { 0 };
        cp_cfg_table common_t = { common, n_common, &cfg };
        cp_cfg_table own_t = { cmd->rows, cmd->n_rows, &opts };
        split_args sa = { 0 };
        cp_error err = { 0 };
        int r;

        (void) cp_log_open("stderr", CP_LOG_WARN, NULL);
        if (split(cmd, common, n_common, argc, argv, &sa, &opts) < 0) {
                r = ADMIN_EXIT_USAGE;
                goto out;
        }
        r = cp_cfg_load(&cp_config_spec, &common_t, 1, sa.n_common, sa.common, NULL, &cfg.source, &err);
        if (r >= 0 && !cfg.source.help)
                r = cp_cfg_load(&admin_spec, &own_t, 1, sa.n_own, sa.own, NULL, &own_res, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        if (cfg.source.help) {
                command_usage(cmd, &common_t, &own_t);
                r = ADMIN_EXIT_OK;
                goto out;
        }
        /* --auto-group flags were taken out before loading; what is left
         * in the field came from the environment. */
        if (opts.n_auto_groups == 0 && opts.auto_group_env)
                for (char *save = NULL, *g = strtok_r(opts.auto_group_env, ",", &save); g;
                     g = strtok_r(NULL, ",", &save)) {
                        opts.auto_groups = cp_xrealloc(opts.auto_groups,
                                                       (opts.n_auto_groups + 1) * sizeof *opts.auto_groups);
                        opts.auto_groups[opts.n_auto_groups++] = cp_xstrdup(g);
                }
        empty_to_null(&cfg.postgres_dsn);
        empty_to_null(&cfg.data_store_encryption_key);
        empty_to_null(&cfg.data_store_encryption_key_previous);
        empty_to_null(&opts.account);
        empty_to_null(&opts.domain);
        empty_to_null(&opts.account_dns_domain);
        empty_to_null(&opts.msp);
        empty_to_null(&opts.peer);
        empty_to_null(&opts.import_sqlite);
        empty_to_null(&opts.import_postgres);
        empty_to_null(&opts.events_sqlite);
        empty_to_null(&opts.events_postgres);
        empty_to_null(&opts.encryption_key);
        r = cp_config_check_store(&cfg, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        r = cp_log_open("stderr", cfg.log_level, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        if (cp_crypto_init() < 0) {
                fprintf(stderr, ADMIN_PROG ": error: cannot initialise libsodium\n");
                r = ADMIN_EXIT_FAILURE;
                goto out;
        }
        /* The file is the servers' management.json: keys this tool does
         * not read are expected there, so its warnings are only debug. */
        for (size_t i = 0; i < cfg.source.n_warnings; i++)
                cp_log(&log_main, CP_LOG_DEBUG, "%s", cfg.source.warnings[i]);

        /* A one-shot tool gains nothing from prepared statements, and
         * unnamed ones work through any pgbouncer pooling mode. */
        cp_store_use_prepared(false);
        admin_ctx a = { .cfg = &cfg, .opts = &opts };
        r = cmd->run(&a);

out:
        cp_cfg_release_fields(&own_t, 1);
        cp_cfg_result_release(&own_res);
        for (size_t i = 0; i < opts.n_auto_groups; i++)
                free(opts.auto_groups[i]);
        free(opts.auto_groups);
        free(sa.common);
        free(sa.own);
        cp_config_release(&cfg);
        cp_log_close();
        return r;
}

int main(int argc, char **argv) {
        const char *group = argc > 1 ? argv[1] : NULL;
        const char *verb = argc > 2 ? argv[2] : NULL;
        bool group_known = false;

        /* Before anything is read: the CLI holds the data key, tokens and
         * the keys it creates. It runs briefly and says nothing about a
         * failure here (nothing to log to yet). */
        (void) cp_core_dumps_disable();
        (void) signal(SIGPIPE, SIG_IGN);
        if (!group) {
                usage(stderr);
                return ADMIN_EXIT_USAGE;
        }
        if (strcmp(group, "help") == 0 || strcmp(group, "--help") == 0 || strcmp(group, "-h") == 0) {
                usage(stdout);
                return ADMIN_EXIT_OK;
        }
        if (strcmp(group, "version") == 0 || strcmp(group, "--version") == 0) {
                printf(ADMIN_PROG " %s\n", ADMIN_VERSION);
                return ADMIN_EXIT_OK;
        }
        for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
                const command *c = &commands[i];
                if (strcmp(group, c->group) != 0)
                        continue;
                group_known = true;
                if (!c->verb)
                        return run_command(c, argc - 2, argv + 2);
                if (verb && strcmp(verb, c->verb) == 0)
                        return run_command(c, argc - 3, argv + 3);
        }
        if (group_known && verb)
                fprintf(stderr, ADMIN_PROG ": error: unknown command \"%s %s\"\n", group, verb);
        else if (group_known)
                fprintf(stderr, ADMIN_PROG ": error: \"%s\" needs a verb (see the list below)\n", group);
        else
                fprintf(stderr, ADMIN_PROG ": error: unknown command \"%s\"\n", group);
        usage(stderr);
        return ADMIN_EXIT_USAGE;
}
