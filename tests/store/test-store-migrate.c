/* Migrations: applied once, raced safely, and a changed one is refused. */
#include "cp/base.h"
#include "cp/store.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

/* The number of migrations compiled in (from sql/migrations). */
static unsigned compiled(void) {
        cptest_db *db = cptest_db_new();
        cp_store *s = NULL;
        cp_store_migrate_result res;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_open(db->dsn, 1, &s, &err), &err);
        ASSERT_OK(cp_store_migrate(s, &res, &err), &err);
        cp_store_free(s);
        cptest_db_free(db);
        return res.applied;
}

TEST(migrate_applies_once_and_records) {
        cptest_db *db = cptest_db_new();
        cp_store *s = NULL;
        cp_store_migrate_result res;
        cp_error err = { 0 };

        ASSERT_OK(cp_store_open(db->dsn, 1, &s, &err), &err);
        ASSERT_EQ(0, cp_store_migrations_current(s, &err));
        ASSERT_OK(cp_store_migrate(s, &res, &err), &err);
        ASSERT_TRUE(res.applied >= 1);
        ASSERT_EQ(0, res.current);
        unsigned n = res.applied;
        ASSERT_EQ(1, cp_store_migrations_current(s, &err));

        ASSERT_OK(cp_store_migrate(s, &res, &err), &err);
        ASSERT_EQ(0, res.applied);
        ASSERT_EQ(n, res.current);

        char *rows = cptest_db_query(db, "SELECT count(*) FROM schema_migrations", 0, NULL);
        char expect[16];
        (void) snprintf(expect, sizeof expect, "%u", n);
        ASSERT_STREQ(expect, rows);
        free(rows);
        char *name = cptest_db_query(db, "SELECT name FROM schema_migrations WHERE version = 1", 0, NULL);
        ASSERT_STREQ("0001_init", name);
        free(name);
        /* The schema really is there. */
        char *t = cptest_db_query(db, "SELECT to_regclass('peers') IS NOT NULL", 0, NULL);
        ASSERT_STREQ("t", t);
        free(t);
        cp_store_free(s);
        cptest_db_free(db);
}

typedef struct racer {
        const char *dsn;
        pthread_barrier_t *start;
        int r;
        cp_store_migrate_result res;
        cp_error err;
} racer;

static void *race_main(void *arg) {
        racer *x = arg;
        cp_store *s = NULL;

        x->r = cp_store_open(x->dsn, 1, &s, &x->err);
        pthread_barrier_wait(x->start);
        if (x->r >= 0)
                x->r = cp_store_migrate(s, &x->res, &x->err);
        cp_store_free(s);
        return NULL;
}

TEST(replicas_starting_together_apply_each_migration_once) {
        enum { N = 6 };
        unsigned n = compiled();
        cptest_db *db = cptest_db_new();
        pthread_barrier_t start;
        pthread_t th[N];
        racer rc[N];
        unsigned total = 0;

        pthread_barrier_init(&start, NULL, N);
        for (int i = 0; i < N; i++) {
                rc[i] = (racer) { .dsn = db->dsn, .start = &start };
                pthread_create(&th[i], NULL, race_main, &rc[i]);
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < N; i++) {
                ASSERT_OK(rc[i].r, &rc[i].err);
                total += rc[i].res.applied;
        }
        ASSERT_EQ(n, total);
        cptest_db_free(db);
}

TEST(changed_migration_is_a_clear_error) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_error err = { 0 };

        free(cptest_db_query(db, "UPDATE schema_migrations SET checksum = 'deadbeef' WHERE version = 1", 0, NULL));
        ASSERT_EQ(-EBADMSG, cp_store_migrate(s, NULL, &err));
        ASSERT_TRUE(strstr(err.message, "0001_init") != NULL);
        ASSERT_TRUE(strstr(err.message, "changed") != NULL);
        ASSERT_TRUE(err.hint[0] != '\0');
        ASSERT_EQ(-EBADMSG, cp_store_migrations_current(s, &err));
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(newer_versions_from_another_replica_are_tolerated) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_store_migrate_result res;
        cp_error err = { 0 };

        free(cptest_db_query(db, "INSERT INTO schema_migrations (version, name, checksum)"
                                 " VALUES (9999, '9999_future', 'x')", 0, NULL));
        ASSERT_OK(cp_store_migrate(s, &res, &err), &err);
        ASSERT_EQ(0, res.applied);
        ASSERT_EQ(1, res.unknown);
        ASSERT_EQ(1, cp_store_migrations_current(s, &err));
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(bad_dsn_and_pool_size_are_errors) {
        cp_store *s = NULL;
        cp_error err = { 0 };

        if (!getenv("CP_TEST_PG_DSN"))
                CPTEST_SKIP("CP_TEST_PG_DSN not set");
        ASSERT_EQ(-EINVAL, cp_store_open("host=127.0.0.1", 0, &s, &err));
        ASSERT_TRUE(s == NULL);
        /* Port 1 on loopback: nothing listens, connection refused. */
        int r = cp_store_open("host=127.0.0.1 port=1 connect_timeout=2", 2, &s, &err);
        ASSERT_TRUE(r < 0);
        ASSERT_TRUE(s == NULL);
        ASSERT_TRUE(strstr(err.message, "cannot connect to PostgreSQL") != NULL);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
