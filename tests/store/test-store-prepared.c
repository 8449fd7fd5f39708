/*
 * Named prepared statements (common/store/store.c) on a server connection
 * that a transaction pooler would share: a statement another client
 * prepared under our statement's name is never run in place of ours (ours
 * carries a hash of its SQL), and one lost inside a transaction is a
 * passing -ECONNRESET after which the store runs unnamed.
 */
#include "cp/base.h"
#include "cp/store.h"
#include "cptest.h"
#include "store-int.h"
#include "testdb.h"

#include <ctype.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

static cptest_db *open_named(cp_store **s) {
        const char *bouncer = getenv("CP_TEST_PGBOUNCER");

        if (bouncer && strcmp(bouncer, "transaction") == 0)
                CPTEST_SKIP("named statements need one server connection per client (no transaction pooling)");
        cptest_db *db = cptest_db_new_migrated(1, s);
        if (!cp_store_uses_prepared(*s)) {
                *s = cp_store_free(*s);
                db = cptest_db_free(db);
                CPTEST_SKIP("this run sends unnamed statements");
        }
        return db;
}

static char *exec_value(cp_store_conn *c, cp_store_stmt st, int *ret) {
        cp_error err = { 0 };
        PGresult *res = NULL;
        char *v = NULL;

        *ret = cp_store__exec(c, st, NULL, &res, &err);
        if (*ret == 0) {
                v = strdup(PQgetvalue(res, 0, 0));
                PQclear(res);
        }
        return v;
}

TEST(server_name_carries_a_hash_of_the_sql) {
        const char *n = cp_store__stmt_server_name(ST_PING);

        ASSERT_TRUE(strncmp(n, "ping_", 5) == 0);
        ASSERT_EQ(13, (int) strlen(n));
        for (const char *c = n + 5; *c; c++)
                ASSERT_TRUE(isxdigit((unsigned char) *c) && !isupper((unsigned char) *c));
        ASSERT_TRUE(strcmp(cp_store__stmt_name(ST_PING), "ping") == 0);
        ASSERT_TRUE(strcmp(cp_store__stmt_server_name(ST_PING), cp_store__stmt_server_name(ST_DB_NOW)) != 0);
        for (int st = 0; st < _ST_MAX; st++)
                ASSERT_TRUE(strlen(cp_store__stmt_server_name((cp_store_stmt) st)) <= 63);
}

TEST(foreign_statement_of_the_same_name_is_not_run) {
        cp_store *s = NULL;
        cptest_db *db = open_named(&s);
        cp_store_conn *c;
        cp_error err = { 0 };
        int r;

        ASSERT_OK(cp_store__acquire(s, &c, &err), &err);
        /* Another client's statements under our names: other SQL, and
         * another parameter count (which would be 08P01). */
        ASSERT_OK(cp_store__command(c, "PREPARE ping AS SELECT 2", &err), &err);
        ASSERT_OK(cp_store__command(c, "PREPARE db_now(int) AS SELECT $1", &err), &err);
        char *v = exec_value(c, ST_PING, &r);
        ASSERT_EQ(0, r);
        ASSERT_TRUE(strcmp(v, "1") == 0);
        free(v);
        v = exec_value(c, ST_DB_NOW, &r);
        ASSERT_EQ(0, r);
        free(v);
        ASSERT_TRUE(cp_store_uses_prepared(s));
        cp_store__release(s, c);
        s = cp_store_free(s);
        db = cptest_db_free(db);
}

TEST(statement_lost_inside_a_transaction_is_a_passing_fault) {
        cp_store *s = NULL;
        cptest_db *db = open_named(&s);
        cp_store_conn *c;
        cp_error err = { 0 };
        int r;

        ASSERT_OK(cp_store__acquire(s, &c, &err), &err);
        free(exec_value(c, ST_PING, &r));
        ASSERT_EQ(0, r);
        /* What a transaction pooler does: the next server connection
         * does not have it. */
        ASSERT_OK(cp_store__command(c, "DEALLOCATE ALL", &err), &err);
        ASSERT_OK(cp_store__command(c, "BEGIN", &err), &err);
        r = cp_store__exec(c, ST_PING, NULL, NULL, &err);
        ASSERT_EQ(-ECONNRESET, r);
        ASSERT_TRUE(strstr(err.message, "--db-prepared-statements=false") != NULL);
        ASSERT_TRUE(strcmp(err.sqlstate, "26000") == 0);
        ASSERT_OK(cp_store__command(c, "ROLLBACK", &err), &err);
        ASSERT_FALSE(cp_store_uses_prepared(s));
        /* The retry runs unnamed. */
        char *v = exec_value(c, ST_PING, &r);
        ASSERT_EQ(0, r);
        ASSERT_TRUE(strcmp(v, "1") == 0);
        free(v);
        cp_store__release(s, c);
        s = cp_store_free(s);
        db = cptest_db_free(db);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
