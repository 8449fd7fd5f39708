/*
 * netbird-mgmt: command line -> configuration -> subcommand -> exit code.
 * Everything else lives in the mgmt-core library (mgmt-*.c).
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cp/store.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "mgmt-cmd.h"
#include "mgmt-netconf.h"

#include <signal.h>

#ifndef MGMT_VERSION
#define MGMT_VERSION "unknown"
#endif

static const cp_log_ctx log_main = { .component = "main" };
static int core_dumps;          /* cp_core_dumps_disable()'s result */

typedef struct command {
        const char *name;
        const char *summary;
        int (*run)(const cp_config *cfg, void *extra);
        const cp_cfg_option *extra_options;     /* the command's own settings */
        const size_t *n_extra_options;
        size_t extra_size;                      /* size of the struct they fill */
        bool one_shot;                          /* logs go to stderr: stdout is the result */
} command;

static const command commands[] = {
        { "management", "run the management server (gRPC for agents, HTTP probes)", mgmt_cmd_management,
          NULL, NULL, 0, false },
        { "migrate", "apply database migrations and exit", mgmt_cmd_migrate, NULL, NULL, 0, true },
        { "bootstrap", "create the first account and print its credentials as shell variables",
          mgmt_cmd_bootstrap, mgmt_bootstrap_options, &mgmt_bootstrap_n_options, sizeof(mgmt_bootstrap_cfg),
          true },
};

static void usage(FILE *f) {
        fprintf(f, "netbird-mgmt %s: NetBird-compatible management control plane\n\n"
                   "Usage:\n  netbird-mgmt <command> [flags]\n\nCommands:\n", MGMT_VERSION);
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
        fprintf(f, "  %-12s %s\n  %-12s %s\n\n", "version", "print the version", "help", "show this help");
        fprintf(f, "Run 'netbird-mgmt <command> --help' for the flags of a command.\n");
}

static void command_usage(const command *cmd, const cp_cfg_table *tables, size_t n_tables) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "Usage:\n  netbird-mgmt %s [flags]\n\n%s.\n\n"
                            "Flags (--flag value or --flag=value; precedence: flag > environment > "
                            "config file > default):\n", cmd->name, cmd->summary);
        cp_cfg_usage(&sb, &cp_config_spec, tables, n_tables);
        if (cmd->run == mgmt_cmd_management)
                mgmt_netconf_usage(&sb);
        fputs(sb.buf, stdout);
        cp_strbuf_release(&sb);
}

static int config_error(const command *cmd, const cp_error *err) {
        fprintf(stderr, "netbird-mgmt: error: %s\n", err->message);
        if (err->hint[0])
                fprintf(stderr, "hint: %s\n", err->hint);
        else if (strncmp(err->message, "unknown flag", 12) == 0 ||
                 strncmp(err->message, "unexpected argument", 19) == 0)
                fprintf(stderr, "hint: run 'netbird-mgmt %s --help' for the list of flags\n", cmd->name);
        (void) cp_log_error(&log_main, err->code, err, "invalid configuration");
        return MGMT_EXIT_USAGE;
}

static int run_command(const command *cmd, int argc, char **argv) {
        cp_config cfg = { 0 };
        cp_error err = { 0 };
        cp_cfg_table tables[2];
        size_t n_tables = 0;
        void *extra = NULL;
        int r;

        /* Until the configuration says otherwise, log where it will most
         * likely go. */
        (void) cp_log_open(cmd->one_shot ? "stderr" : "console", CP_LOG_INFO, NULL);

        if (cmd->extra_options) {
                extra = cp_xcalloc(1, cmd->extra_size);
                tables[n_tables++] = (cp_cfg_table) { cmd->extra_options, *cmd->n_extra_options, extra };
        }
        r = cp_config_load(&cfg, argc, argv, NULL, tables, n_tables, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        if (cfg.source.help) {
                size_t n;
                cp_cfg_table all[3] = { { cp_config_options(&n), 0, NULL } };
                all[0].n_options = n;
                for (size_t i = 0; i < n_tables; i++)
                        all[1 + i] = tables[i];
                command_usage(cmd, all, 1 + n_tables);
                r = MGMT_EXIT_OK;
                goto out;
        }
        r = cp_config_check_store(&cfg, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        const char *target = cfg.log_file;
        if (cmd->one_shot && strcmp(target, "console") == 0)
                target = "stderr";
        r = cp_log_open(target, cfg.log_level, &err);
        if (r < 0) {
                r = config_error(cmd, &err);
                goto out;
        }
        mgmt_log_route_libraries(cfg.log_level);
        if (cp_crypto_init() < 0) {
                cp_log(&log_main, CP_LOG_ERROR, "cannot initialise libsodium");
                r = MGMT_EXIT_FAILURE;
                goto out;
        }

        cp_log_kv(&log_main, CP_LOG_INFO, "starting", "version", MGMT_VERSION, "command", cmd->name,
                  "config_file", cfg.source.file_path ? cfg.source.file_path : "none", NULL);
        if (core_dumps < 0)
                cp_log_kv(&log_main, CP_LOG_WARN, "cannot disable core dumps", "error", strerror(-core_dumps), NULL);
        else if (core_dumps == 1)
                cp_log(&log_main, CP_LOG_WARN, "core dumps allowed (" CP_CORE_DUMPS_ENV "=1): a core file holds "
                       "this process's secrets");
        static const cp_log_ctx log_config = { .component = "config" };
        for (size_t i = 0; i < cfg.source.n_warnings; i++)
                cp_log(&log_config, CP_LOG_WARN, "%s", cfg.source.warnings[i]);

        cp_store_use_prepared(cfg.db_prepared_statements);
        r = cmd->run(&cfg, extra);

out:
        if (n_tables)
                cp_cfg_release_fields(tables, n_tables);
        free(extra);
        cp_config_release(&cfg);
        cp_log_close();
        return r;
}

int main(int argc, char **argv) {
        const char *name = argc > 1 ? argv[1] : NULL;

        /* Before anything is read (management.json holds secrets): a
         * crash must not write keys and tokens to a core file. */
        core_dumps = cp_core_dumps_disable();
        /* A peer closing its socket must not kill the process. */
        (void) signal(SIGPIPE, SIG_IGN);

        if (!name) {
                usage(stderr);
                return MGMT_EXIT_USAGE;
        }
        if (strcmp(name, "help") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
                usage(stdout);
                return MGMT_EXIT_OK;
        }
        if (strcmp(name, "version") == 0 || strcmp(name, "--version") == 0) {
                printf("netbird-mgmt %s\n", MGMT_VERSION);
                return MGMT_EXIT_OK;
        }
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                if (strcmp(name, commands[i].name) == 0)
                        return run_command(&commands[i], argc - 2, argv + 2);

        fprintf(stderr, "netbird-mgmt: error: unknown command \"%s\"\n", name);
        usage(stderr);
        return MGMT_EXIT_USAGE;
}
