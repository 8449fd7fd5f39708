/*
 * cp/store-tx.h: one transaction on one pooled connection, for callers
 * that write their own parameterised SQL (the REST API, the admin CLI).
 *
 * The rest of the store runs a fixed table of prepared statements. The
 * REST API needs many more statements, each used by one handler, and
 * some built from a fixed set of fragments (an optional filter), so it
 * runs them through here: every value is a parameter ($1, $2, ...), never
 * spliced into the text. The SQL text must be a constant or be built only
 * from constants.
 *
 * Lifetime: cp_store_tx_begin() borrows a connection (BEGIN goes out
 * pipelined with the first statement, so it costs no round trip of its
 * own, and a transaction that runs nothing never begins);
 * cp_store_tx_commit() or cp_store_tx_end() (rollback when not committed)
 * gives the connection back and frees the handle. Exactly one of them must
 * be called for every handle begun.
 *
 * Threads: a cp_store_tx belongs to the thread that began it.
 *
 * Results: cp_store_rows is libpq's PGresult under another name, so
 * callers need not include libpq; the accessors below cover what they
 * read. Values are text; SQL NULL reads as NULL.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

typedef struct cp_store_tx cp_store_tx;
typedef struct pg_result cp_store_rows;

/* Borrows a connection for a transaction (READ COMMITTED), begun with its
 * first statement. */
int cp_store_tx_begin(cp_store *s, cp_store_tx **ret, cp_error *reterr);

/* Runs sql with n text parameters (NULL = SQL NULL). On success returns
 * 0 and, when ret is not NULL, the rows (free with cp_store_rows_free).
 * On failure the transaction is aborted (only cp_store_tx_end is left to
 * do) and the error is one of cp_store's: -EEXIST unique violation,
 * -ENOENT foreign key violation, -EINVAL check or invalid input,
 * -ECONNRESET connection lost, -EIO otherwise; reterr keeps the SQLSTATE. */
int cp_store_tx_exec(cp_store_tx *tx, const char *sql, int n, const char *const *params,
                     cp_store_rows **ret, cp_error *reterr);

/* Commits and frees tx (also when COMMIT fails: then nothing was written). */
int cp_store_tx_commit(cp_store_tx *tx, cp_error *reterr);
/* Rolls back unless committed, gives the connection back, frees tx.
 * Accepts NULL; returns NULL. */
cp_store_tx *cp_store_tx_end(cp_store_tx *tx);

/* One statement in a transaction of its own: begin, cp_store_tx_exec,
 * commit. Same results and errors as cp_store_tx_exec (a failed COMMIT
 * too); *ret is set only on success. */
int cp_store_exec1(cp_store *s, const char *sql, int n, const char *const *params, cp_store_rows **ret,
                   cp_error *reterr);

/* Rows. */
int cp_store_rows_count(const cp_store_rows *r);
/* The value at (row, col) as text, NULL for SQL NULL or out of range. */
const char *cp_store_rows_get(const cp_store_rows *r, int row, int col);
/* A boolean value: true for PostgreSQL's "t"; false for "f" and NULL. */
bool cp_store_rows_bool(const cp_store_rows *r, int row, int col);
/* Its length in bytes (0 for NULL). */
int cp_store_rows_len(const cp_store_rows *r, int row, int col);
/* Rows changed by an INSERT/UPDATE/DELETE without RETURNING. */
int64_t cp_store_rows_affected(const cp_store_rows *r);
/* Accepts NULL; returns NULL. */
cp_store_rows *cp_store_rows_free(cp_store_rows *r);

static inline void cp_store_rows_freep(cp_store_rows **r) {
        if (*r)
                (void) cp_store_rows_free(*r);
}
#define _cleanup_rows_ _cleanup_(cp_store_rows_freep)
