/*
 * Transactions with caller-written, parameterised SQL (cp/store-tx.h).
 *
 * Statements run through PQexecParams, i.e. libpq's unnamed statement:
 * parsed and planned on every call. The callers (REST requests) run a few
 * statements each, so a plan cache would buy little and would need the
 * SQL text to be stable per pointer. Every statement is timed under the
 * label "api" (netbird_cp_store_query_duration_seconds).
 *
 * BEGIN is not a round trip of its own: it goes out with the transaction's
 * first statement in one libpq pipeline (BEGIN, the statement, Sync), and
 * a transaction that runs nothing never begins. Store functions that run
 * on the transaction's connection themselves (cp_store__tx_conn) get it
 * begun first.
 */
#include "cp/base.h"
#include "cp/store-tx.h"
#include "store-int.h"

struct cp_store_tx {
        cp_store *store;
        cp_store_conn *conn;
        bool begun;             /* BEGIN has been sent */
        bool failed;            /* a statement failed: only rollback is left */
};

int cp_store_tx_begin(cp_store *s, cp_store_tx **ret, cp_error *reterr) {
        cp_store_conn *c;
        int r = cp_store__acquire(s, &c, reterr);

        if (r < 0)
                return r;
        cp_store_tx *tx = cp_xcalloc(1, sizeof *tx);
        tx->store = s;
        tx->conn = c;
        *ret = tx;
        return 0;
}

/* BEGIN and the first statement in one pipeline. Returns the statement's
 * result (NULL when the connection broke); *begin_failed when BEGIN
 * itself failed (the statement then did not run). Every result up to the
 * Sync is consumed, so the connection leaves pipeline mode idle or in a
 * (failed) transaction block. */
static PGresult *exec_first(PGconn *pg, const char *sql, int n, const char *const *params, PGresult **begin_res) {
        PGresult *res = NULL, *r;
        int seen = 0;

        *begin_res = NULL;
        if (!PQenterPipelineMode(pg))
                return NULL;
        if (!PQsendQueryParams(pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ||
            !PQsendQueryParams(pg, sql, n, NULL, params, NULL, NULL, 0) || !PQpipelineSync(pg)) {
                (void) PQexitPipelineMode(pg);
                return NULL;
        }
        /* Results: BEGIN's, NULL, the statement's (or PIPELINE_ABORTED),
         * NULL, then PIPELINE_SYNC. A NULL twice in a row is a broken
         * connection. */
        for (int nulls = 0; nulls < 2;) {
                r = PQgetResult(pg);
                if (!r) {
                        nulls++;
                        continue;
                }
                nulls = 0;
                if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
                        PQclear(r);
                        break;
                }
                if (seen == 0)
                        *begin_res = r;
                else if (seen == 1)
                        res = r;
                else
                        PQclear(r);
                seen++;
        }
        (void) PQexitPipelineMode(pg);
        return res;
}

int cp_store_tx_exec(cp_store_tx *tx, const char *sql, int n, const char *const *params,
                     cp_store_rows **ret, cp_error *reterr) {
        int64_t started = cp_store__clock_ns();
        PGresult *res;
        int r;

        if (tx->failed)
                return cp_error_set(reterr, -ECANCELED, "the transaction was aborted by an earlier error");
        if (!tx->begun) {
                PGresult *begin_res = NULL;
                tx->begun = true;
                res = exec_first(tx->conn->pg, sql, n, params, &begin_res);
                if (PQresultStatus(begin_res) != PGRES_COMMAND_OK) {
                        /* BEGIN failed or never answered: report that. */
                        PQclear(res);
                        res = begin_res;
                } else
                        PQclear(begin_res);
        } else
                res = PQexecParams(tx->conn->pg, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType status = PQresultStatus(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
                cp_store__observe(CP_STORE__TIMED_API, started, true);
                r = cp_store__error(tx->conn->pg, res, reterr);
                PQclear(res);
                tx->failed = true;
                return r;
        }
        cp_store__observe(CP_STORE__TIMED_API, started, false);
        if (ret)
                *ret = res;
        else
                PQclear(res);
        return 0;
}

cp_store_conn *cp_store__tx_conn(cp_store_tx *tx) {
        if (tx->failed)
                return NULL;
        if (!tx->begun) {
                tx->begun = true;
                if (cp_store__command(tx->conn, "BEGIN", NULL) < 0) {
                        tx->failed = true;
                        return NULL;
                }
        }
        return tx->conn;
}

void cp_store__tx_failed(cp_store_tx *tx) {
        tx->failed = true;
}

int cp_store_tx_commit(cp_store_tx *tx, cp_error *reterr) {
        int r;

        if (tx->failed) {
                cp_store_tx_end(tx);
                return cp_error_set(reterr, -ECANCELED, "the transaction was aborted by an earlier error");
        }
        /* Nothing ran: nothing to commit. */
        r = tx->begun ? cp_store__command(tx->conn, "COMMIT", reterr) : 0;
        /* A failed COMMIT leaves the transaction rolled back; release
         * closes the connection if it is in a bad state. */
        cp_store__release(tx->store, tx->conn);
        free(tx);
        return r;
}

int cp_store_exec1(cp_store *s, const char *sql, int n, const char *const *params, cp_store_rows **ret,
                   cp_error *reterr) {
        cp_store_tx *tx = NULL;
        cp_store_rows *rows = NULL;
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_exec(tx, sql, n, params, &rows, reterr);
        if (r < 0) {
                (void) cp_store_tx_end(tx);
                return r;
        }
        r = cp_store_tx_commit(tx, reterr);
        if (r < 0 || !ret)
                (void) cp_store_rows_free(rows);
        else
                *ret = rows;
        return r;
}

cp_store_tx *cp_store_tx_end(cp_store_tx *tx) {
        if (!tx)
                return NULL;
        if (tx->conn->pg && PQtransactionStatus(tx->conn->pg) != PQTRANS_IDLE)
                (void) cp_store__command(tx->conn, "ROLLBACK", NULL);
        cp_store__release(tx->store, tx->conn);
        free(tx);
        return NULL;
}

int cp_store_rows_count(const cp_store_rows *r) {
        return r ? PQntuples(r) : 0;
}

const char *cp_store_rows_get(const cp_store_rows *r, int row, int col) {
        if (!r || row < 0 || col < 0 || row >= PQntuples(r) || col >= PQnfields(r) ||
            PQgetisnull(r, row, col))
                return NULL;
        return PQgetvalue(r, row, col);
}

bool cp_store_rows_bool(const cp_store_rows *r, int row, int col) {
        const char *v = cp_store_rows_get(r, row, col);

        return v && v[0] == 't';
}

int cp_store_rows_len(const cp_store_rows *r, int row, int col) {
        return cp_store_rows_get(r, row, col) ? PQgetlength(r, row, col) : 0;
}

int64_t cp_store_rows_affected(const cp_store_rows *r) {
        return r ? cp_store__affected(r) : 0;
}

cp_store_rows *cp_store_rows_free(cp_store_rows *r) {
        if (r)
                PQclear(r);
        return NULL;
}
