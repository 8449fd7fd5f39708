#include "cp/base.h"
#include "mgmt-dbclock.h"

#include <libpq-fe.h>
#include <pthread.h>

/* Exact: extract() returns numeric since PostgreSQL 14. */
#define CLOCK_SQL "SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint"

struct mgmt_dbclock {
        char *dsn;
        pthread_mutex_t lock;
        PGconn *pg;                     /* under lock; NULL until needed */
};

static void drop_notice(void *arg, const char *message) {
}

mgmt_dbclock *mgmt_dbclock_new(const char *dsn) {
        mgmt_dbclock *c = cp_xcalloc(1, sizeof *c);

        c->dsn = cp_xstrdup(dsn ? dsn : "");
        pthread_mutex_init(&c->lock, NULL);
        return c;
}

mgmt_dbclock *mgmt_dbclock_free(mgmt_dbclock *c) {
        if (!c)
                return NULL;
        if (c->pg)
                PQfinish(c->pg);
        pthread_mutex_destroy(&c->lock);
        free(c->dsn);
        free(c);
        return NULL;
}

/* One attempt; under lock. */
static int read_clock(mgmt_dbclock *c, int64_t *ret, cp_error *reterr) {
        PGresult *res;
        int r = 0;

        if (!c->pg) {
                c->pg = PQconnectdb(c->dsn);
                if (PQstatus(c->pg) != CONNECTION_OK) {
                        r = cp_error_set(reterr, -ECONNRESET, "cannot connect to PostgreSQL: %s",
                                         PQerrorMessage(c->pg));
                        PQfinish(c->pg);
                        c->pg = NULL;
                        return r;
                }
                (void) PQsetNoticeProcessor(c->pg, drop_notice, NULL);
        }
        res = PQexecParams(c->pg, CLOCK_SQL, 0, NULL, NULL, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                bool bad = PQstatus(c->pg) != CONNECTION_OK;
                r = cp_error_set(reterr, bad ? -ECONNRESET : -EIO, "cannot read the database clock: %s",
                                 PQerrorMessage(c->pg));
                if (bad) {
                        PQfinish(c->pg);
                        c->pg = NULL;
                }
        } else
                *ret = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        return r;
}

int mgmt_dbclock_now_ns(mgmt_dbclock *c, int64_t *ret, cp_error *reterr) {
        int64_t v = 0;
        int r;

        pthread_mutex_lock(&c->lock);
        r = read_clock(c, &v, reterr);
        if (r == -ECONNRESET)
                r = read_clock(c, &v, reterr);   /* a stale connection: once more */
        pthread_mutex_unlock(&c->lock);
        if (r == 0)
                *ret = v;
        return r;
}
