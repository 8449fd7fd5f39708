/*
 * admin-export.h: the tables `netbird-cp-admin export` writes (private to
 * admin-export.c and admin-export-schema.c).
 *
 * The export writes a NetBird store of NetBird v0.77.1's schema (the
 * pinned commit: the gorm models of management/server/types, peer, route,
 * dns, posture, networks and zones, as gorm's SQLite dialect creates them:
 * text, numeric for booleans, integer, datetime, JSON in text columns)
 * and an events.db of NetBird's activity schema. Each table is one
 * SQLite DDL text (CREATE TABLE with gorm's constraint names, then its
 * indexes, including the ones NetBird's migrations create:
 * idx_account_ip, idx_account_dnslabel, idx_peers_key_unique) and one
 * PostgreSQL SELECT over our tables, scoped to one account ($1), whose
 * first columns are the SQLite table's columns in order, each already in
 * NetBird's stored form as text (booleans 1/0, times as go-sqlite3 writes
 * them, JSON as encoding/json would marshal the Go value).
 *
 * Values that only C can produce (personal data sealed under our
 * DataStoreEncryptionKey, re-encrypted under NetBird's) are flagged per
 * column: see admin_export_table.pii.
 */
#pragma once

#include <stddef.h>

typedef struct admin_export_table {
        const char *name;               /* NetBird's table */
        const char *ddl;                /* SQLite: CREATE TABLE and CREATE INDEX statements */
        const char *sql;                /* PostgreSQL: the rows of account $1 */
        /* Bit i set: column i is personal data sealed under our key; the
         * SELECT gives the row's pii_key after the table's columns. It is
         * opened and written as NetBird stores it: encrypted with its
         * DataStoreEncryptionKey (FieldEncrypt) when one is given, else in
         * plain text. */
        unsigned pii;
        const char *noun;               /* the summary line's word for its rows, NULL = not shown */
} admin_export_table;

/* The store.db tables in the order they are written (parents first). */
extern const admin_export_table admin_export_store_tables[];
extern const size_t admin_export_n_store_tables;

/* events.db (NetBird's activity store): DDL of events and deleted_users,
 * and the SELECT of account $1's events after id $2, in id order, at most
 * $3 rows: id, timestamp, activity, initiator_id, target_id, account_id,
 * meta (JSON), pii_key. */
extern const char admin_export_events_ddl[];
extern const char admin_export_events_sql[];
