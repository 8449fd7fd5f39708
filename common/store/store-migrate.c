#include "cp/base.h"
#include "cp/strbuf.h"
#include "cp/crypto.h"
#include "store-int.h"

/* Key of the transaction advisory lock each migration step holds:
 * "nbcpmigr". Transaction-scoped (not a session lock) so that migrating
 * through a pgbouncer in transaction pooling mode is safe: a session lock
 * would stay on whichever server connection took it. */
#define MIGRATE_LOCK_KEY "7953758364736030066"

static const char create_table_sql[] =
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP)";

static void checksum_hex(const char *sql, char out[2 * CP_SHA256_LEN + 1]) {
        uint8_t d[CP_SHA256_LEN];

        cp_crypto_sha256(sql, strlen(sql), d);
        for (size_t i = 0; i < sizeof d; i++)
                (void) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Compares the recorded rows with the compiled list. Sets *pending to the
 * number of compiled migrations not yet recorded and *unknown to recorded
 * versions this binary does not have (newer, or merged from elsewhere); fails with -EBADMSG on a changed one. */
static int compare(const PGresult *rows, unsigned *pending, unsigned *unknown, cp_error *reterr) {
        int n = PQntuples(rows);

        *pending = 0;
        *unknown = 0;
        for (int i = 0; i < n; i++) {
                long v = strtol(PQgetvalue(rows, i, 0), NULL, 10);
                bool known = false;
                for (size_t m = 0; m < cp_store__n_migrations && !known; m++)
                        known = cp_store__migrations[m].version == v;
                if (!known)
                        (*unknown)++;
        }
        for (size_t m = 0; m < cp_store__n_migrations; m++) {
                const cp_store_migration *mig = &cp_store__migrations[m];
                char sum[2 * CP_SHA256_LEN + 1];
                bool found = false;

                checksum_hex(mig->sql, sum);
                for (int i = 0; i < n && !found; i++) {
                        if (strtol(PQgetvalue(rows, i, 0), NULL, 10) != mig->version)
                                continue;
                        found = true;
                        if (strcmp(PQgetvalue(rows, i, 2), sum) != 0) {
                                cp_error_set(reterr, -EBADMSG,
                                             "migration %s was changed after it was applied",
                                             mig->name);
                                cp_error_detail(reterr, "recorded checksum %s, this binary has %s",
                                                PQgetvalue(rows, i, 2), sum);
                                cp_error_hint(reterr, "migrations are forward-only: restore the "
                                              "original file and add a new migration instead");
                                return -EBADMSG;
                        }
                }
                if (!found)
                        (*pending)++;
        }
        return 0;
}

static int read_applied(cp_store_conn *c, PGresult **ret, cp_error *reterr) {
        PGresult *res = PQexec(c->pg, "SELECT version, name, checksum FROM schema_migrations ORDER BY version");

        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                int r = cp_store__error(c->pg, res, reterr);
                PQclear(res);
                return r;
        }
        *ret = res;
        return 0;
}

/* Inside the caller's transaction. */
static int apply_one(cp_store_conn *c, const cp_store_migration *mig, cp_error *reterr) {
        char version[16], sum[2 * CP_SHA256_LEN + 1];
        const char *params[3] = { version, mig->name, sum };
        int r;

        (void) snprintf(version, sizeof version, "%d", mig->version);
        checksum_hex(mig->sql, sum);

        r = cp_store__command(c, mig->sql, reterr);
        if (r >= 0) {
                PGresult *res = PQexecParams(c->pg,
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1::int, $2, $3)",
                        3, NULL, params, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        r = cp_store__error(c->pg, res, reterr);
                PQclear(res);
        }
        if (r < 0)
                cp_error_prefix(reterr, "applying migration %s", mig->name);
        return r;
}

/* One transaction: lock, read what is recorded, apply the first pending
 * migration (if any), commit. *ret_applied: 1 when one was applied, 0 when
 * none was pending. *first: the counts as found by the first step. */
static int migrate_step(cp_store_conn *c, bool first, cp_store_migrate_result *result, int *ret_applied,
                        cp_error *reterr) {
        _cleanup_pgresult_ PGresult *rows = NULL;
        unsigned pending, unknown;
        int r;

        *ret_applied = 0;
        r = cp_store__command(c, "BEGIN", reterr);
        if (r < 0)
                return r;
        /* Replicas starting together queue here; the first applies, the
         * rest find everything recorded. Released at COMMIT or ROLLBACK,
         * and by the server if this process dies mid-way. */
        r = cp_store__command(c, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", reterr);
        if (r >= 0)
                r = cp_store__command(c, create_table_sql, reterr);
        if (r >= 0)
                r = read_applied(c, &rows, reterr);
        if (r >= 0)
                r = compare(rows, &pending, &unknown, reterr);
        if (r >= 0 && first) {
                result->current = (unsigned) cp_store__n_migrations - pending;
                result->unknown = unknown;
        }
        for (size_t m = 0; r >= 0 && m < cp_store__n_migrations; m++) {
                const cp_store_migration *mig = &cp_store__migrations[m];
                bool done = false;
                for (int i = 0; i < PQntuples(rows); i++)
                        if (strtol(PQgetvalue(rows, i, 0), NULL, 10) == mig->version)
                                done = true;
                if (done)
                        continue;
                r = apply_one(c, mig, reterr);
                if (r >= 0)
                        *ret_applied = 1;
                break;
        }
        if (r >= 0)
                r = cp_store__command(c, "COMMIT", reterr);
        if (r < 0)
                (void) cp_store__command(c, "ROLLBACK", NULL);
        return r;
}

int cp_store_migrate(cp_store *s, cp_store_migrate_result *ret, cp_error *reterr) {
        cp_store_migrate_result result = { 0 };
        cp_store_conn *c;
        int r, applied = 1;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        /* One migration per transaction, as before: what was applied stays
         * applied if a later one fails. */
        for (bool first = true; r >= 0 && applied; first = false) {
                r = migrate_step(c, first, &result, &applied, reterr);
                if (r >= 0)
                        result.applied += (unsigned) applied;
        }
        cp_store__release(s, c);
        if (r < 0)
                return r;
        if (ret)
                *ret = result;
        return 0;
}

int cp_store_migrations_current(cp_store *s, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *rows = NULL;
        cp_store_conn *c;
        unsigned pending, unknown;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        PGresult *res = PQexec(c->pg, "SELECT to_regclass('schema_migrations') IS NOT NULL");
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
                r = cp_store__error(c->pg, res, reterr);
        else if (PQgetvalue(res, 0, 0)[0] != 't') {
                /* Nothing applied yet: everything is pending. */
                PQclear(res);
                cp_store__release(s, c);
                return 0;
        }
        PQclear(res);
        if (r >= 0)
                r = read_applied(c, &rows, reterr);
        cp_store__release(s, c);
        if (r < 0)
                return r;
        r = compare(rows, &pending, &unknown, reterr);
        if (r < 0)
                return r;
        return pending == 0 ? 1 : 0;
}

void cp_store_migrate_report(const cp_store_migrate_result *mr, cp_strbuf *out) {
        cp_strbuf_addf(out, "applied %u migration%s (%u already applied)\n", mr->applied,
                       mr->applied == 1 ? "" : "s", mr->current);
        if (mr->unknown)
                cp_strbuf_addf(out, "the database also records %u newer migration%s this binary does not know\n",
                               mr->unknown, mr->unknown == 1 ? "" : "s");
}
