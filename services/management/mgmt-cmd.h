/*
 * mgmt-cmd.h: the subcommands of netbird-mgmt. Each takes the loaded
 * configuration (and its own extra settings) and returns a process exit
 * code: 0 ok, 1 runtime failure, 2 usage or configuration error. Each logs
 * its own failures; main.c only dispatches.
 */
#pragma once

#include "cp/config.h"

#define MGMT_EXIT_OK 0
#define MGMT_EXIT_FAILURE 1
#define MGMT_EXIT_USAGE 2

/* `management`: runs the server until SIGTERM/SIGINT. */
int mgmt_cmd_management(const cp_config *cfg, void *extra);

/* `migrate`: applies migrations and prints how many on stdout. */
int mgmt_cmd_migrate(const cp_config *cfg, void *extra);

/* `bootstrap`: creates the first account and prints shell-sourceable
 * ACCOUNT_ID=, USER_ID=, SETUP_KEY=, ADMIN_TOKEN=, NETWORK= lines on stdout.
 * Does nothing (and prints nothing) when an account already exists. */
typedef struct mgmt_bootstrap_cfg {
        char *account_name;
        int64_t setup_key_ttl_ms;
} mgmt_bootstrap_cfg;

extern const cp_cfg_option mgmt_bootstrap_options[];
extern const size_t mgmt_bootstrap_n_options;
int mgmt_cmd_bootstrap(const cp_config *cfg, void *extra);

/* Sends gRPC core's and libevent's own log lines through cp_log (as JSON,
 * component "grpc" / "libevent"), at verbosity matching level. Call once
 * before grpc_init. */
void mgmt_log_route_libraries(cp_log_level level);
