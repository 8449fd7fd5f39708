/*
 * admin-import-src.c: reads a NetBird store, table by table, into JSON
 * texts (admin-import.h). Every value is text: SQLite's integers and
 * reals as printed, a BLOB as "\x" + hex; PostgreSQL's values as
 * json_each_text prints them (a bytea as "\x" + hex too). Only the
 * columns the source has appear; the mapping reads a missing one as NULL,
 * which is how the schema versions differ.
 */
#include "cp/base.h"
#include "cp/strbuf.h"
#include "admin-import.h"

#include <libpq-fe.h>
#include <sqlite3.h>

static const char *const table_names[_IMPORT_N_TABLES] = {
        [IMPORT_ACCOUNTS] = "accounts",
        [IMPORT_USERS] = "users",
        [IMPORT_PATS] = "personal_access_tokens",
        [IMPORT_SETUP_KEYS] = "setup_keys",
        [IMPORT_PEERS] = "peers",
        [IMPORT_GROUPS] = "groups",
        [IMPORT_GROUP_PEERS] = "group_peers",
        [IMPORT_POLICIES] = "policies",
        [IMPORT_POLICY_RULES] = "policy_rules",
        [IMPORT_ROUTES] = "routes",
        [IMPORT_NS_GROUPS] = "name_server_groups",
        [IMPORT_POSTURE] = "posture_checks",
        [IMPORT_NETWORKS] = "networks",
        [IMPORT_NET_ROUTERS] = "network_routers",
        [IMPORT_NET_RESOURCES] = "network_resources",
        [IMPORT_ZONES] = "zones",
        [IMPORT_RECORDS] = "records",
        [IMPORT_EVENTS] = "events",
        [IMPORT_DELETED_USERS] = "deleted_users",
};

/* The columns without which a table's rows mean nothing: a source that
 * lacks one is not a NetBird store we know. */
static const char *const required[_IMPORT_N_TABLES][6] = {
        [IMPORT_ACCOUNTS] = { "id", "network_net" },
        [IMPORT_USERS] = { "id", "account_id", "role" },
        [IMPORT_PATS] = { "id", "user_id", "hashed_token" },
        [IMPORT_SETUP_KEYS] = { "id", "account_id", "key", "type" },
        [IMPORT_PEERS] = { "id", "account_id", "key", "ip", "dns_label" },
        [IMPORT_GROUPS] = { "id", "account_id", "name" },
        [IMPORT_GROUP_PEERS] = { "group_id", "peer_id" },
        [IMPORT_POLICIES] = { "id", "account_id" },
        [IMPORT_POLICY_RULES] = { "id", "policy_id" },
        [IMPORT_ROUTES] = { "id", "account_id", "network" },
        [IMPORT_NS_GROUPS] = { "id", "account_id", "name_servers" },
        [IMPORT_POSTURE] = { "id", "account_id", "checks" },
        [IMPORT_NETWORKS] = { "id", "account_id" },
        [IMPORT_NET_ROUTERS] = { "id", "network_id", "account_id" },
        [IMPORT_NET_RESOURCES] = { "id", "network_id", "account_id", "type" },
        [IMPORT_ZONES] = { "id", "account_id", "domain" },
        [IMPORT_RECORDS] = { "id", "zone_id", "type" },
        [IMPORT_EVENTS] = { "account_id", "activity" },
};

/* cols: the table's column names (a JSON array of strings). */
static int check_columns(import_table t, const json_t *cols, const char *where, cp_error *reterr) {
        for (size_t i = 0; i < ELEMENTSOF(required[t]) && required[t][i]; i++) {
                bool found = false;
                size_t k;
                const json_t *c;
                json_array_foreach(cols, k, c)
                        found = found || strcmp(json_string_value(c) ?: "", required[t][i]) == 0;
                if (!found)
                        return cp_error_set(reterr, -EINVAL, "%s is not a NetBird store of a known schema (table %s "
                                            "has no column %s)", where, table_names[t], required[t][i]);
        }
        return 0;
}

const char *import_table_name(import_table t) {
        return t < _IMPORT_N_TABLES ? table_names[t] : "?";
}

static bool is_event_table(import_table t) {
        return t == IMPORT_EVENTS || t == IMPORT_DELETED_USERS;
}

/* Takes a reference of rows. */
static void set_rows(import_src *src, import_table t, json_t *rows) {
        json_incref(rows);
        json_decref(src->parsed[t]);
        free(src->rows[t]);
        src->parsed[t] = rows;
        src->count[t] = json_array_size(rows);
        src->rows[t] = json_dumps(rows, JSON_COMPACT);
        if (!src->rows[t])
                abort();       /* out of memory, as cp_x* do */
}

void import_src_sync(import_src *src, import_table t) {
        json_t *rows = json_incref(src->parsed[t]);
        set_rows(src, t, rows);
        json_decref(rows);
}

void import_src_free(import_src *src) {
        for (size_t t = 0; t < _IMPORT_N_TABLES; t++) {
                json_decref(src->parsed[t]);
                free(src->rows[t]);
        }
        *src = (import_src) { 0 };
}

/* ---- SQLite ---------------------------------------------------------------------------- */

static int sqlite_fail(sqlite3 *db, int code, cp_error *reterr, const char *what, const char *path) {
        return cp_error_set(reterr, code, "%s %s: %s", what, path, db ? sqlite3_errmsg(db) : "out of memory");
}

static json_t *sqlite_value(sqlite3_stmt *st, int col) {
        switch (sqlite3_column_type(st, col)) {
        case SQLITE_NULL:
                return json_null();
        case SQLITE_BLOB: {
                const unsigned char *b = sqlite3_column_blob(st, col);
                int n = sqlite3_column_bytes(st, col);
                cp_strbuf sb;
                json_t *v;
                cp_strbuf_init(&sb);
                cp_strbuf_adds(&sb, "\\x");
                for (int i = 0; i < n; i++)
                        cp_strbuf_addf(&sb, "%02x", b[i]);
                v = json_stringn(sb.buf, sb.len);
                cp_strbuf_release(&sb);
                return v ? v : json_null();
        }
        default: {
                const char *s = (const char *) sqlite3_column_text(st, col);
                int n = sqlite3_column_bytes(st, col);
                /* Not UTF-8 (jansson refuses it): read as absent. */
                json_t *v = s ? json_stringn(s, (size_t) n) : NULL;
                return v ? v : json_null();
        }
        }
}

static int sqlite_table(sqlite3 *db, const char *path, import_table t, import_src *src, cp_error *reterr) {
        sqlite3_stmt *st = NULL;
        char sql[128];
        json_t *rows;
        int r;

        r = sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1, &st, NULL);
        if (r != SQLITE_OK)
                return sqlite_fail(db, -EBADMSG, reterr, "cannot read", path);
        (void) sqlite3_bind_text(st, 1, table_names[t], -1, SQLITE_STATIC);
        r = sqlite3_step(st);
        sqlite3_finalize(st);
        if (r == SQLITE_DONE)
                return 0;       /* this version has no such table */
        if (r != SQLITE_ROW)
                return sqlite_fail(db, -EBADMSG, reterr, "cannot read", path);

        (void) snprintf(sql, sizeof sql, "SELECT * FROM \"%s\"", table_names[t]);
        r = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (r != SQLITE_OK)
                return sqlite_fail(db, -EBADMSG, reterr, "cannot read", path);
        int n_cols = sqlite3_column_count(st);
        json_t *cols = json_array();
        for (int c = 0; c < n_cols; c++)
                (void) json_array_append_new(cols, json_string(sqlite3_column_name(st, c) ?: ""));
        r = check_columns(t, cols, path, reterr);
        json_decref(cols);
        if (r < 0) {
                sqlite3_finalize(st);
                return r;
        }
        rows = json_array();
        while ((r = sqlite3_step(st)) == SQLITE_ROW) {
                json_t *o = json_object();
                for (int c = 0; c < n_cols; c++) {
                        const char *name = sqlite3_column_name(st, c);
                        if (name)
                                (void) json_object_set_new(o, name, sqlite_value(st, c));
                }
                (void) json_array_append_new(rows, o);
        }
        if (r != SQLITE_DONE) {
                r = sqlite_fail(db, -EBADMSG, reterr, "cannot read", path);
                sqlite3_finalize(st);
                json_decref(rows);
                return r;
        }
        sqlite3_finalize(st);
        set_rows(src, t, rows);
        json_decref(rows);
        return 0;
}

/* Opens read-only and checks the whole file: a truncated or damaged
 * store is refused before anything is read from it. */
static int sqlite_open(const char *path, sqlite3 **ret, cp_error *reterr) {
        sqlite3_stmt *st = NULL;
        sqlite3 *db = NULL;
        int r;

        if (access(path, R_OK) < 0)
                return cp_error_set(reterr, -errno, "cannot open %s: %s", path, strerror(errno));
        r = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
        if (r != SQLITE_OK) {
                r = sqlite_fail(db, -EIO, reterr, "cannot open", path);
                sqlite3_close(db);
                return r;
        }
        r = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
        if (r == SQLITE_OK)
                r = sqlite3_step(st);
        if (r != SQLITE_ROW || strcmp((const char *) sqlite3_column_text(st, 0), "ok") != 0) {
                if (r == SQLITE_ROW)
                        r = cp_error_set(reterr, -EBADMSG, "%s is damaged (SQLite integrity check: %s)", path,
                                         (const char *) sqlite3_column_text(st, 0));
                else
                        r = sqlite_fail(db, -EBADMSG, reterr, "not a readable SQLite database:", path);
                sqlite3_finalize(st);
                sqlite3_close(db);
                return r;
        }
        sqlite3_finalize(st);
        *ret = db;
        return 0;
}

/* A NetBird store has an accounts table with id and network_net. */
static int check_netbird(const import_src *src, const char *where, cp_error *reterr) {
        const json_t *a = src->parsed[IMPORT_ACCOUNTS];
        if (!a)
                return cp_error_set(reterr, -EINVAL, "%s is not a NetBird store (it has no accounts table)", where);
        if (json_array_size(a) == 0) {
                if (!src->parsed[IMPORT_PEERS] || !src->parsed[IMPORT_USERS])
                        return cp_error_set(reterr, -EINVAL,
                                            "%s is not a NetBird store (no peers or users table)", where);
                return 0;
        }
        const json_t *first = json_array_get(a, 0);
        if (!json_object_get(first, "id") || !json_object_get(first, "network_net"))
                return cp_error_set(reterr, -EINVAL, "%s is not a NetBird store of a known schema (its accounts "
                                    "table has no id or network_net column)", where);
        return 0;
}

static int read_sqlite(const char *path, bool events, import_src *src, cp_error *reterr) {
        sqlite3 *db = NULL;
        int r;

        r = sqlite_open(path, &db, reterr);
        if (r < 0)
                return r;
        for (import_table t = 0; t < _IMPORT_N_TABLES; t++) {
                if (is_event_table(t) != events)
                        continue;
                r = sqlite_table(db, path, t, src, reterr);
                if (r < 0)
                        break;
        }
        sqlite3_close(db);
        if (r >= 0 && !events)
                r = check_netbird(src, path, reterr);
        if (r >= 0 && events && !src->parsed[IMPORT_EVENTS])
                r = cp_error_set(reterr, -EINVAL, "%s is not a NetBird activity store (it has no events table)",
                                 path);
        return r;
}

int import_src_read_sqlite(const char *path, import_src *src, cp_error *reterr) {
        return read_sqlite(path, false, src, reterr);
}

int import_src_read_events_sqlite(const char *path, import_src *src, cp_error *reterr) {
        return read_sqlite(path, true, src, reterr);
}

/* ---- PostgreSQL -------------------------------------------------------------------------- */

/* One table as a JSON array of objects of text values. The names are
 * constants: NetBird's tables in the schema the DSN's search_path finds. */
#define PG_DUMP(t)                                                                                      \
        "SELECT coalesce(json_agg((SELECT json_object_agg(e.key, e.value) FROM json_each_text(row_to_json(x)) e)),"\
        " '[]')::text FROM \"" t "\" x"

static const struct pg_table {
        import_table t;
        const char *sql;
} pg_tables[] = {
        { IMPORT_ACCOUNTS, PG_DUMP("accounts") },
        { IMPORT_USERS, PG_DUMP("users") },
        { IMPORT_PATS, PG_DUMP("personal_access_tokens") },
        { IMPORT_SETUP_KEYS, PG_DUMP("setup_keys") },
        { IMPORT_PEERS, PG_DUMP("peers") },
        { IMPORT_GROUPS, PG_DUMP("groups") },
        { IMPORT_GROUP_PEERS, PG_DUMP("group_peers") },
        { IMPORT_POLICIES, PG_DUMP("policies") },
        { IMPORT_POLICY_RULES, PG_DUMP("policy_rules") },
        { IMPORT_ROUTES, PG_DUMP("routes") },
        { IMPORT_NS_GROUPS, PG_DUMP("name_server_groups") },
        { IMPORT_POSTURE, PG_DUMP("posture_checks") },
        { IMPORT_NETWORKS, PG_DUMP("networks") },
        { IMPORT_NET_ROUTERS, PG_DUMP("network_routers") },
        { IMPORT_NET_RESOURCES, PG_DUMP("network_resources") },
        { IMPORT_ZONES, PG_DUMP("zones") },
        { IMPORT_RECORDS, PG_DUMP("records") },
        { IMPORT_EVENTS, PG_DUMP("events") },
        { IMPORT_DELETED_USERS, PG_DUMP("deleted_users") },
};

/* Whether the table exists, and its columns. */
static const char SQL_PG_HAS_TABLE[] =
        "SELECT to_regclass(quote_ident($1)) IS NOT NULL, (SELECT coalesce(json_agg(column_name::text), '[]')::text"
        " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1)";

static int read_pg(const char *dsn, bool events, import_src *src, cp_error *reterr) {
        PGconn *conn = PQconnectdb(dsn);
        int r = 0;

        if (!conn || PQstatus(conn) != CONNECTION_OK) {
                r = cp_error_set(reterr, -EIO, "cannot connect to NetBird's PostgreSQL: %s",
                                 conn ? PQerrorMessage(conn) : "out of memory");
                PQfinish(conn);
                return r;
        }
        for (size_t i = 0; i < ELEMENTSOF(pg_tables) && r >= 0; i++) {
                const struct pg_table *pt = &pg_tables[i];
                const char *name = table_names[pt->t];
                PGresult *res;

                if (is_event_table(pt->t) != events)
                        continue;
                res = PQexecParams(conn, SQL_PG_HAS_TABLE, 1, NULL, &name, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                        r = cp_error_set(reterr, -EIO, "cannot read NetBird's PostgreSQL: %s", PQerrorMessage(conn));
                        PQclear(res);
                        break;
                }
                bool has = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
                json_t *cols = has ? json_loads(PQgetvalue(res, 0, 1), 0, NULL) : NULL;
                PQclear(res);
                if (!has)
                        continue;
                r = check_columns(pt->t, cols, "the PostgreSQL database", reterr);
                json_decref(cols);
                if (r < 0)
                        break;
                res = PQexecParams(conn, pt->sql, 0, NULL, NULL, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                        r = cp_error_set(reterr, -EIO, "cannot read table %s of NetBird's PostgreSQL: %s", name,
                                         PQerrorMessage(conn));
                        PQclear(res);
                        break;
                }
                json_error_t jerr;
                json_t *rows = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
                PQclear(res);
                if (!json_is_array(rows)) {
                        json_decref(rows);
                        r = cp_error_set(reterr, -EIO, "cannot read table %s of NetBird's PostgreSQL", name);
                        break;
                }
                set_rows(src, pt->t, rows);
                json_decref(rows);
        }
        PQfinish(conn);
        if (r >= 0 && !events)
                r = check_netbird(src, "the PostgreSQL database", reterr);
        if (r >= 0 && events && !src->parsed[IMPORT_EVENTS])
                r = cp_error_set(reterr, -EINVAL, "the events PostgreSQL database has no events table");
        return r;
}

int import_src_read_pg(const char *dsn, import_src *src, cp_error *reterr) {
        return read_pg(dsn, false, src, reterr);
}

int import_src_read_events_pg(const char *dsn, import_src *src, cp_error *reterr) {
        return read_pg(dsn, true, src, reterr);
}
