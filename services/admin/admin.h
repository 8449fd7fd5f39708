/*
 * admin.h: the core of netbird-cp-admin, the operator's command line for
 * bootstrap and operations without the REST API or a running server.
 *
 * main.c turns the command line into settings (the common ones from
 * netbird-mgmt's table, so flags, environment variables and
 * management.json mean the same thing, plus each command's own) and calls
 * one admin_cmd_* function; everything else lives here, in the
 * admin-core library.
 *
 * Every command returns a process exit code: 0 ok, 1 failure, 2 bad usage
 * or configuration. Results go to stdout (tables, JSON, or KEY=VALUE lines
 * safe to `source`); errors to stderr as one "netbird-cp-admin: error:"
 * line (plus a hint when there is one); JSON log lines to stderr at
 * --log-level (default warn).
 *
 * Commands that read or change tenant data (setup keys, peers) go through
 * the REST layer in-process (cp/api.h) as the account's owner, so they
 * share the API's validation, hashing and activity events. Operator views
 * (accounts, sessions, replicas) are SQL over the runbook views of
 * migration 0003. Account creation and the server key are store calls.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/config.h"
#include "cp/error.h"
#include "cp/store.h"

#define ADMIN_EXIT_OK 0
#define ADMIN_EXIT_FAILURE 1
#define ADMIN_EXIT_USAGE 2

#define ADMIN_PROG "netbird-cp-admin"

/* Every command's own settings, in one struct; each command's table
 * (main.c) fills only its fields. */
typedef struct admin_opts {
        char *account;                  /* --account ID */
        char *owner_name;               /* account create */
        char *domain;
        char *account_dns_domain;       /* account create --dns-domain */
        int64_t setup_key_ttl_ms;
        bool if_none;
        char *name;                     /* setup-key create */
        char *type;
        int64_t expires_in_ms;
        int64_t usage_limit;
        bool ephemeral;
        bool allow_extra_dns_labels;
        char *auto_group_env;           /* NB_ADMIN_AUTO_GROUP (comma-separated); the
                                         * flags themselves are collected by main.c */
        bool json;                      /* list commands */
        int64_t grace_ms;               /* server-key rotate */
        bool force;
        char *service;                  /* service-key rotate --service ID */
        bool all;                       /* service-key rotate --all */
        const char *arg;                /* the one positional argument (proxy-token revoke) */
        char *msp;                      /* tenant create/list --msp ID */
        char *max_devices;              /* tenant limit --max-devices N|none */
        char *groups;                   /* tenant create --groups ID:ROLE,... */
        int64_t batch_size;             /* data-key reencrypt */
        int64_t max_batches;
        char *peer;                     /* netmap show --peer ID */
        char *import_sqlite;            /* import --sqlite FILE */
        char *import_postgres;          /* import --postgres DSN */
        char *events_sqlite;            /* import --events-sqlite FILE */
        char *events_postgres;          /* import --events-postgres DSN */
        char *encryption_key;           /* import --encryption-key: NetBird's DataStoreEncryptionKey */
        bool dry_run;                   /* import --dry-run */
        bool update;                    /* import --update */
        char *export_sqlite;            /* export --sqlite FILE (events_sqlite, encryption_key:
                                         * export's too) */

        /* --auto-group, every occurrence (main.c gathers them, since the
         * settings loader keeps only the last value of a flag). */
        char **auto_groups;
        size_t n_auto_groups;
} admin_opts;

/* What a command runs with; built by main.c. cfg holds the common
 * settings (DSN, DataStoreEncryptionKey, the server's --dns-domain). */
typedef struct admin_ctx {
        const cp_config *cfg;
        const admin_opts *opts;
} admin_ctx;

/* ---- commands (admin-db.c, admin-api.c, admin-key.c) ---------------------- */

int admin_cmd_migrate(const admin_ctx *a);
int admin_cmd_account_create(const admin_ctx *a);
int admin_cmd_account_list(const admin_ctx *a);
int admin_cmd_sessions_list(const admin_ctx *a);
int admin_cmd_replicas_list(const admin_ctx *a);
int admin_cmd_setup_key_create(const admin_ctx *a);
int admin_cmd_setup_key_list(const admin_ctx *a);
int admin_cmd_peers_list(const admin_ctx *a);
int admin_cmd_server_key_rotate(const admin_ctx *a);
int admin_cmd_server_key_show(const admin_ctx *a);
int admin_cmd_service_key_rotate(const admin_ctx *a);
int admin_cmd_proxy_token_create(const admin_ctx *a);
int admin_cmd_proxy_token_list(const admin_ctx *a);
int admin_cmd_proxy_token_revoke(const admin_ctx *a);
/* admin-tenant.c */
int admin_cmd_msp_enable(const admin_ctx *a);
int admin_cmd_msp_disable(const admin_ctx *a);
int admin_cmd_tenant_create(const admin_ctx *a);
int admin_cmd_tenant_list(const admin_ctx *a);
int admin_cmd_tenant_suspend(const admin_ctx *a);
int admin_cmd_tenant_resume(const admin_ctx *a);
int admin_cmd_tenant_delete(const admin_ctx *a);
int admin_cmd_tenant_limit(const admin_ctx *a);
int admin_cmd_data_key_status(const admin_ctx *a);      /* admin-datakey.c */
int admin_cmd_data_key_reencrypt(const admin_ctx *a);
int admin_cmd_data_key_retire(const admin_ctx *a);
int admin_cmd_netmap_show(const admin_ctx *a);          /* admin-netmap.c */
int admin_cmd_import(const admin_ctx *a);               /* admin-import.c */
int admin_cmd_export(const admin_ctx *a);               /* admin-export.c */

/* ---- shared helpers (admin-util.c) ------------------------------------------ */

/* Prints "netbird-cp-admin: error: <what>[: err->message]" (and the
 * hint) on stderr, logs it, and returns code. */
int admin_fail(int code, const cp_error *err, const char *fmt, ...) _printf_(3, 4);

/* Opens the store (a small pool). With migrate, applies migrations and
 * fills *mr (may be NULL); without, refuses a database whose schema is
 * not current ("run migrate"). Returns 0 or an exit code after
 * reporting. */
int admin_open_store(const admin_ctx *a, bool migrate, cp_store_migrate_result *mr, cp_store **ret);

/* Runs one read-only statement whose single row and column is a JSON
 * text, and parses it. Returns 0 or an exit code after reporting. */
int admin_query_json(cp_store *s, const char *sql, int n, const char *const *params, json_t **ret);

/* One column of a table printed from a JSON array of objects. */
typedef struct admin_column {
        const char *header;
        const char *key;                /* member of each object */
} admin_column;

/* Prints rows (an array of objects) as an aligned table with a header,
 * or, with json, as indented JSON. Values: strings as they are, numbers,
 * true/false, arrays of strings joined by ",", null or missing as "-". */
void admin_print_rows(const json_t *rows, const admin_column *cols, size_t n_cols, bool json);

/* Flushes stdout; a write error is a failure. */
int admin_finish_stdout(void);
