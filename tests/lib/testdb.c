#include "cp/base.h"
#include "cp/util.h"
#include "cptest.h"
#include "testdb.h"

#include <libpq-fe.h>

static void admin_exec(const char *sql) {
        const char *dsn = getenv("CP_TEST_PG_DSN");
        PGconn *c = PQconnectdb(dsn);

        if (PQstatus(c) != CONNECTION_OK) {
                char msg[512];
                (void) snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
                PQfinish(c);
                cptest_fail(__FILE__, __LINE__, "cannot connect to CP_TEST_PG_DSN: %s", msg);
        }
        PGresult *res = PQexec(c, sql);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                char msg[512];
                (void) snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
                PQclear(res);
                PQfinish(c);
                cptest_fail(__FILE__, __LINE__, "%s: %s", sql, msg);
        }
        PQclear(res);
        PQfinish(c);
}

cptest_db *cptest_db_new(void) {
        const char *base = getenv("CP_TEST_PG_DSN");
        char id[CP_ID_LEN + 1], sql[160];

        if (!base || !*base)
                cptest_skip("CP_TEST_PG_DSN not set (run through tests/run)");
        /* tests/run --pgbouncer transaction: as docs/database-ha.md says. */
        const char *bouncer = getenv("CP_TEST_PGBOUNCER");
        if (bouncer && strcmp(bouncer, "transaction") == 0)
                cp_store_use_prepared(false);
        cptest_db *db = cp_xcalloc(1, sizeof *db);
        cp_id_new(id);
        (void) snprintf(db->name, sizeof db->name, "t_%s", id);
        (void) snprintf(sql, sizeof sql, "CREATE DATABASE %s", db->name);
        admin_exec(sql);
        /* In key=value conninfo the last dbname wins. */
        db->dsn = cp_xasprintf("%s dbname=%s", base, db->name);
        return db;
}

cptest_db *cptest_db_new_migrated(unsigned pool_size, cp_store **ret_store) {
        cptest_db *db = cptest_db_new();
        cp_store *s = NULL;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_open(db->dsn, pool_size, &s, &err), &err);
        ASSERT_OK(cp_store_migrate(s, NULL, &err), &err);
        *ret_store = s;
        return db;
}

cptest_db *cptest_db_free(cptest_db *db) {
        char sql[160];

        if (!db)
                return NULL;
        (void) snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db->name);
        admin_exec(sql);
        free(db->dsn);
        free(db);
        return NULL;
}

static char *run(cptest_db *db, const char *sql, int nparams, const char *const *params, bool want_error) {
        PGconn *c = PQconnectdb(db->dsn);
        char *out;

        if (PQstatus(c) != CONNECTION_OK) {
                char msg[512];
                (void) snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
                PQfinish(c);
                cptest_fail(__FILE__, __LINE__, "cannot connect to %s: %s", db->name, msg);
        }
        PGresult *res = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
        ExecStatusType st = PQresultStatus(res);
        bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        if (want_error) {
                const char *state = ok ? "" : PQresultErrorField(res, PG_DIAG_SQLSTATE);
                out = cp_xstrdup(state ? state : "?????");
        } else if (!ok) {
                char msg[512];
                (void) snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
                PQclear(res);
                PQfinish(c);
                cptest_fail(__FILE__, __LINE__, "%s: %s", sql, msg);
        } else
                out = cp_xstrdup(PQntuples(res) > 0 && PQnfields(res) > 0 ? PQgetvalue(res, 0, 0) : "");
        PQclear(res);
        PQfinish(c);
        return out;
}

char *cptest_db_query(cptest_db *db, const char *sql, int nparams, const char *const *params) {
        return run(db, sql, nparams, params, false);
}

char *cptest_db_query2(cptest_db *db, const char *sql, const char *a, const char *b) {
        const char *p[2] = { a, b };

        return cptest_db_query(db, sql, !a ? 0 : b ? 2 : 1, a ? p : NULL);
}

char *cptest_db_try(cptest_db *db, const char *sql, int nparams, const char *const *params) {
        return run(db, sql, nparams, params, true);
}
