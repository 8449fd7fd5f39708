/*
 * testdb.h: throwaway databases for tests.
 *
 * tests/run starts a private PostgreSQL and exports CP_TEST_PG_DSN, a
 * libpq key=value conninfo for its maintenance database. cptest_db_new()
 * creates a fresh database on that server (dropped by cptest_db_free) and
 * returns its DSN; when CP_TEST_PG_DSN is unset it skips the current test.
 */
#pragma once

#include "cp/store.h"

typedef struct cptest_db {
        char name[64];
        char *dsn;              /* conninfo for the new database */
} cptest_db;

/* Creates an empty database. */
cptest_db *cptest_db_new(void);
/* Creates a database and applies every migration, returning an open store
 * of pool_size connections in *ret_store. */
cptest_db *cptest_db_new_migrated(unsigned pool_size, cp_store **ret_store);
/* Drops the database (after the caller closed its stores). NULL-safe. */
cptest_db *cptest_db_free(cptest_db *db);

/* Runs one parameterised statement on db through a fresh connection and
 * fails the current test if it errors. Returns the PGresult's first value
 * of the first row as a new string ("" when no rows); the caller frees. */
char *cptest_db_query(cptest_db *db, const char *sql, int nparams, const char *const *params);
/* cptest_db_query with up to two parameters: a, then b; a NULL ends the
 * list (b without a is ignored). */
char *cptest_db_query2(cptest_db *db, const char *sql, const char *a, const char *b);
#define cptest_db_query1(db, sql, a) cptest_db_query2(db, sql, a, NULL)
/* Fail the current test unless sql returns expect as its first value
 * (cptest.h's ASSERT_STREQ); one or two optional parameters. */
#define ASSERT_DB_QUERY2(expect, db, sql, a, b)                 \
        do {                                                    \
                char *_v = cptest_db_query2(db, sql, a, b);     \
                ASSERT_STREQ(expect, _v);                       \
                free(_v);                                       \
        } while (0)
#define ASSERT_DB_QUERY(expect, db, sql, a) ASSERT_DB_QUERY2(expect, db, sql, a, NULL)
/* Same, but returns the SQLSTATE of the error ("" on success, caller frees)
 * instead of failing; for tests that expect a statement to be refused. */
char *cptest_db_try(cptest_db *db, const char *sql, int nparams, const char *const *params);
