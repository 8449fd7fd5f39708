/*
 * cp/config.h: table-driven settings (style.md habit 15, after nginx's
 * ngx_command_t).
 *
 * A setting is one row of a cp_cfg_option table: its flag name, a type, the
 * offsetof() of the struct field it fills, a default written as text, the
 * environment variables and the management.json key it may come from, and
 * an optional check. One loader walks the rows, so every setting behaves the
 * same way and the documentation (docs/config.md, --help) follows the table.
 *
 * Precedence, lowest first:
 *     built-in default < config file (JSON) < environment < command line
 *
 * Two layers live here:
 *   - cp_cfg_*: the generic loader, which knows nothing about any service;
 *   - cp_config_*: the management server's settings table and struct.
 *
 * The library never logs (habit 9). Failures come back as -EINVAL (or the
 * errno of a failed file read) with a cp_error whose message names the
 * setting and where the bad value came from: "flag --port", "environment
 * variable NB_MGMT_PORT", or "StoreConfig.Engine in /etc/netbird/management.json".
 * Warnings that are not errors (unknown keys in the file, NetBird flags we
 * accept and ignore) are collected as strings for the caller to log.
 *
 * Threads: loading is not thread-safe (it reads the process environment);
 * do it once in main() before other threads start. A loaded struct may then
 * be read from any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/log.h"
#include "cp/strbuf.h"

struct json_t;  /* jansson; include <jansson.h> to use cp_cfg_result.file */

/* ---- the generic loader ------------------------------------------------- */

typedef enum cp_cfg_type {
        CP_CFG_STRING,          /* char *, heap; NULL when unset */
        CP_CFG_INT,             /* int64_t within [min, max] */
        CP_CFG_BOOL,            /* bool; a flag given without a value means true */
        CP_CFG_DURATION,        /* int64_t milliseconds within [min, max]; "10s", "1m30s", "250ms" */
        CP_CFG_LOG_LEVEL,       /* cp_log_level; trace, debug, info, warn, error, fatal, panic */
} cp_cfg_type;

/* Row flags. */
#define CP_CFG_SECRET   (1u << 0)       /* the value is never copied into messages */
#define CP_CFG_IGNORED  (1u << 1)       /* accepted for compatibility: parsed, then dropped with a
                                         * warning; such rows have no field (offset unused) */

#define CP_CFG_MAX_ENV 3

typedef struct cp_cfg_option {
        const char *name;               /* flag name without the dashes, e.g. "http-port" */
        cp_cfg_type type;
        size_t offset;                  /* offsetof(struct, field) in the table's base struct */
        const char *def;                /* default as text, parsed like any other source;
                                         * NULL leaves the field zero / NULL */
        /* Extra environment variable names, tried in order after the generic
         * <env_prefix><NAME> (name upper-cased, '-' -> '_'). NULL-padded. */
        const char *env[CP_CFG_MAX_ENV];
        const char *json;               /* dotted key path in the config file, NULL = none */
        unsigned flags;
        int64_t min, max;               /* CP_CFG_INT and CP_CFG_DURATION (ms) */
        /* Extra validation of a parsed value (the field's address); returns 0
         * or -EINVAL with a message about the value only ("only postgres is
         * supported"); the loader adds which setting and source it was. */
        int (*check)(const void *field, cp_error *reterr);
        const char *arg;                /* placeholder shown in --help, e.g. "PORT"; NULL for bools */
        const char *help;               /* one line for --help */
} cp_cfg_option;

/* A table of rows plus the struct their offsets point into. */
typedef struct cp_cfg_table {
        const cp_cfg_option *options;
        size_t n_options;
        void *base;
} cp_cfg_table;

typedef struct cp_cfg_spec {
        const char *env_prefix;                 /* e.g. "NB_MGMT_" */
        /* Name of the string option that holds the config file path, or
         * NULL for no file. A missing file at that option's default path is
         * not an error; a missing file named by a flag or variable is. An
         * empty path means "no file". */
        const char *file_option;
        /* Top-level keys of the file that are known but not read by any row
         * (NULL-terminated); other unknown top-level keys produce warnings. */
        const char *const *file_known_keys;
        /* Objects of the file that belong to us entirely (NULL-terminated):
         * unknown keys inside them produce warnings too. */
        const char *const *file_owned_objects;
} cp_cfg_spec;

/* Where each setting's final value came from. */
typedef enum cp_cfg_origin_kind {
        CP_CFG_FROM_DEFAULT,
        CP_CFG_FROM_FILE,
        CP_CFG_FROM_ENV,
        CP_CFG_FROM_FLAG,
} cp_cfg_origin_kind;

typedef struct cp_cfg_origin {
        const cp_cfg_option *option;
        cp_cfg_origin_kind kind;
        char *text;                     /* "default", "flag --port", "environment variable X",
                                         * "HttpConfig.CertFile in /path" */
} cp_cfg_origin;

/* What the loader found besides the values. Owned by whoever called
 * cp_cfg_load(); freed with cp_cfg_result_release(). */
typedef struct cp_cfg_result {
        struct json_t *file;            /* the whole parsed file (one reference), NULL if none read */
        char *file_path;                /* the file that was read, NULL if none */
        char **warnings;                /* human-readable, for the caller to log */
        size_t n_warnings;
        cp_cfg_origin *origins;         /* one per option of every table, table order */
        size_t n_origins;
        bool help;                      /* --help or -h was given; nothing else was loaded */
} cp_cfg_result;

void cp_cfg_result_release(cp_cfg_result *r);
/* Origin of the option called name, or NULL if there is no such option. */
const cp_cfg_origin *cp_cfg_result_origin(const cp_cfg_result *r, const char *name);

/*
 * Fills the base structs of tables from defaults, the file, envp (NULL means
 * the process environment) and argv (argc entries, all of them flags: the
 * caller strips the program and command names).
 *
 * The base structs must be zeroed (or hold values from an earlier load of
 * the same tables) beforehand. Strings are replaced, old ones freed. On
 * failure the base structs may hold partly loaded values: release them
 * with cp_cfg_release_fields(); *ret is left untouched.
 *
 * Command line: "--name value", "--name=value"; bools take "--name" or
 * "--name=false". Repeated flags: the last wins. Environment variables and
 * file strings that are empty count as unset. A JSON null counts as unset.
 * File keys match case-insensitively, as Go's encoding/json does.
 */
int cp_cfg_load(const cp_cfg_spec *spec, const cp_cfg_table *tables, size_t n_tables,
                int argc, char *const *argv, char *const *envp,
                cp_cfg_result *ret, cp_error *reterr);

/* Member key (len bytes) of obj, matched the way Go's encoding/json matches
 * struct fields: an exact match first, else a case-insensitive one. NULL
 * when obj is not an object or has no such member; a JSON null member is
 * returned as it is. The result is borrowed from obj. */
struct json_t *cp_cfg_json_get(const struct json_t *obj, const char *key, size_t len);
/* What a JSON value is, for error messages: "an object", "a string", … */
const char *cp_cfg_json_kind(const struct json_t *v);

/* Frees the string fields of the tables' base structs and zeroes them all. */
void cp_cfg_release_fields(const cp_cfg_table *tables, size_t n_tables);

/* The generic environment name of an option: prefix + NAME; caller frees. */
char *cp_cfg_env_name(const char *prefix, const cp_cfg_option *o);

/* Appends one "--help" line group per option of the tables. */
void cp_cfg_usage(cp_strbuf *out, const cp_cfg_spec *spec, const cp_cfg_table *tables,
                  size_t n_tables);

/* ---- the management server's settings (config-mgmt.c) --------------------
 * Every setting, with its flag, environment names, JSON key and default, is
 * listed in docs/config.md. */

#define CP_CONFIG_ENV_PREFIX "NB_MGMT_"
#define CP_CONFIG_DEFAULT_FILE "/etc/netbird/management.json"

typedef struct cp_config {
        int64_t port;                   /* gRPC (agents), 0 = any free port */
        int64_t http_port;              /* HTTP: /healthz, /readyz, /metrics, REST (/api) */
        char *listen_address;
        char *config_file;
        char *datadir;
        char *log_file;                 /* "console" = stdout */
        cp_log_level log_level;
        char *cert_file;                /* both or neither */
        char *cert_key;
        char *letsencrypt_domain;       /* always NULL after a successful load */
        char *postgres_dsn;
        char *store_engine;             /* "postgres" (or empty) after a successful load */
        char *redis_url;                /* NULL: no bus */
        char *bus_channel_prefix;
        char *replica_name;             /* NULL: the host name */
        char *trusted_proxies;          /* comma-separated prefixes; NULL: headers never trusted */
        char *dns_domain;
        int64_t db_pool_size;
        bool db_prepared_statements;    /* false: unnamed statements (pgbouncer transaction mode) */
        int64_t shutdown_timeout_ms;
        int64_t drain_window_ms;                /* < shutdown_timeout_ms, or 0: streams end all at once */
        int64_t serial_check_interval_ms;       /* 0 = no periodic serial check */
        int64_t login_expiry_check_interval_ms; /* 0 = no periodic login expiry check */
        int64_t ephemeral_peer_lifetime_ms;     /* disconnected ephemeral peers are deleted after it */
        int64_t heartbeat_interval_ms;
        int64_t replica_expiry_ms;              /* >= 2 * heartbeat_interval_ms */
        char *data_store_encryption_key;        /* base64 of 32 bytes, or NULL */
        char *data_store_encryption_key_previous;       /* during a key rotation; NULL = none */
        char *single_account_mode_domain;       /* --single-account-mode-domain */
        bool disable_single_account_mode;       /* then the domain above is not used */
        bool idp_sign_key_refresh_enabled;      /* HttpConfig.IdpSignKeyRefreshEnabled */
        char *msp_dns_server;                   /* --msp-dns-server IPv4[:port]; NULL = system resolver */
        /* Limits (docs/ops.md "Limits"), per replica. Rates are per
         * minute; a rate or burst of 0 turns that limit off. */
        int64_t login_rate;                     /* Logins per source address */
        int64_t login_burst;
        int64_t setup_key_rate;                 /* registrations per setup key */
        int64_t setup_key_burst;
        int64_t rest_rate;                      /* REST requests per token (PAT) or user (JWT) */
        int64_t rest_burst;
        int64_t rest_auth_failure_rate;         /* REST authentication failures per source address */
        int64_t rest_auth_failure_burst;
        int64_t rate_limit_keys;                /* buckets per limit (memory bound) */
        int64_t grpc_max_streams_per_connection; /* 0 = gRPC's default (no limit) */
        int64_t grpc_max_connections;           /* connections with calls; 0 = no limit */
        int64_t grpc_threads;                   /* completion queues, one thread each; 0 = 1 */
        int64_t http_max_connections;           /* 0 = no limit */

        /* management.json itself (source.file), warnings, origins. */
        cp_cfg_result source;
} cp_config;

/* The settings table; *n receives its length. */
const cp_cfg_option *cp_config_options(size_t *n);
extern const cp_cfg_spec cp_config_spec;

/*
 * Loads the management settings plus the rows of extra tables (settings of
 * one subcommand, such as bootstrap's --account-name; may be NULL / 0) from
 * argv (flags only), envp (NULL = process environment) and the config file.
 * Also checks the settings against each other (--cert-file needs
 * --cert-key). Does not require the DSN: see cp_config_check_store().
 *
 * On success fills *ret, which the caller releases with
 * cp_config_release(); if ret->source.help is set, --help was asked for and
 * nothing else was loaded. On failure *ret and the extra structs are left
 * zeroed and reterr says what is wrong.
 */
int cp_config_load(cp_config *ret, int argc, char *const *argv, char *const *envp,
                   const cp_cfg_table *extra, size_t n_extra, cp_error *reterr);
/* Frees everything the config owns (including source.file) and zeroes it.
 * Accepts NULL. */
void cp_config_release(cp_config *c);

/* Returns 0 when a PostgreSQL DSN is configured, else -EINVAL with a
 * message that names NB_STORE_ENGINE_POSTGRES_DSN. */
int cp_config_check_store(const cp_config *c, cp_error *reterr);

/* Decodes data_store_encryption_key into out; returns 1 when a key is set,
 * 0 when none is, -EINVAL when it is not base64 of 32 bytes. */
int cp_config_encryption_key(const cp_config *c, uint8_t out[32]);
/* The same for data_store_encryption_key_previous (0 when unset). */
int cp_config_encryption_key_previous(const cp_config *c, uint8_t out[32]);

/* Decodes standard base64 (padding required) into out; returns the length
 * or -EINVAL (bad input or more than out_cap bytes). */
int cp_cfg_b64_decode(const char *in, uint8_t *out, size_t out_cap);
