/*
 * admin-import.h: `netbird-cp-admin import`, a NetBird store (SQLite file
 * or PostgreSQL database) into ours. Internal to the admin-core library.
 *
 * Three modules:
 *   admin-import.c      the command: reads the source, then one
 *                       transaction per account (admin_cmd_import).
 *   admin-import-src.c  import_src_*: reads NetBird's tables, only the
 *                       columns the source has, every value as text
 *                       (a BLOB as "\x" + hex, as PostgreSQL prints a
 *                       bytea), into one JSON array of objects per table.
 *   admin-import-map.c  import_map_*: the SQL that maps the staged rows
 *                       (TEMP table nb_src) to our tables, in PostgreSQL,
 *                       with every value a parameter.
 *
 * Ownership: the tables' JSON texts belong to the import_src that read
 * them (import_src_free releases them).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store-tx.h"

/* NetBird's tables we read, in the order the mapping needs them. */
typedef enum import_table {
        IMPORT_ACCOUNTS,
        IMPORT_USERS,
        IMPORT_PATS,
        IMPORT_SETUP_KEYS,
        IMPORT_PEERS,
        IMPORT_GROUPS,
        IMPORT_GROUP_PEERS,
        IMPORT_POLICIES,
        IMPORT_POLICY_RULES,
        IMPORT_ROUTES,
        IMPORT_NS_GROUPS,
        IMPORT_POSTURE,
        IMPORT_NETWORKS,
        IMPORT_NET_ROUTERS,
        IMPORT_NET_RESOURCES,
        IMPORT_ZONES,
        IMPORT_RECORDS,
        IMPORT_EVENTS,          /* from the activity store (events.db) */
        IMPORT_DELETED_USERS,   /* from the activity store */
        _IMPORT_N_TABLES,
} import_table;

/* NetBird's name of a table. */
const char *import_table_name(import_table t);

typedef struct import_src {
        /* Per table: a JSON array (text) of objects, one per row, column
         * name -> text or null; NULL when the source has no such table. */
        char *rows[_IMPORT_N_TABLES];
        json_t *parsed[_IMPORT_N_TABLES];       /* the same, parsed (admin-import.c edits users) */
        size_t count[_IMPORT_N_TABLES];
} import_src;

/* Reads NetBird's store from a SQLite file (read-only, checked whole
 * first) or from a PostgreSQL DSN, and the activity store from
 * events_sqlite / events_pg when given (both may be NULL). Returns 0, or
 * -EINVAL (not a NetBird store: reterr says what is missing), -EBADMSG
 * (not SQLite, or damaged), -EIO / -ENOENT (cannot open). */
int import_src_read_sqlite(const char *path, import_src *src, cp_error *reterr);
int import_src_read_pg(const char *dsn, import_src *src, cp_error *reterr);
int import_src_read_events_sqlite(const char *path, import_src *src, cp_error *reterr);
int import_src_read_events_pg(const char *dsn, import_src *src, cp_error *reterr);
/* After editing parsed[t], makes rows[t] its text again. */
void import_src_sync(import_src *src, import_table t);
void import_src_free(import_src *src);

/* ---- the mapping (admin-import-map.c) ------------------------------------------------ */

typedef struct import_counts {
        int64_t peers, users, groups, policies, routes, setup_keys, pats, ns_groups, posture, networks, zones,
                events, skipped;
} import_counts;

/* Inside tx: creates the TEMP staging tables and helper functions, and
 * loads src into them. */
int import_map_stage(cp_store_tx *tx, const import_src *src, cp_error *reterr);

/* Whether the account exists in our database (1/0) or an error. */
int import_map_exists(cp_store_tx *tx, const char *account_id, cp_error *reterr);

/* Maps one staged account into our tables inside tx (update: the
 * account exists and is replaced). Records that cannot map are printed
 * to out as "skipped <table> <id>: <reason>" lines (out may be NULL) and
 * counted. Returns 0, or an error that must roll tx back (reterr says
 * why, e.g. the account's network is unreadable). */
int import_map_account(cp_store_tx *tx, const char *account_id, bool update, import_counts *ret, FILE *out,
                       cp_error *reterr);
