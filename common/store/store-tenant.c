/*
 * Account lifecycle for MSPs and tenants (cp/store-tenant.h): MSP
 * enable/disable, suspend/resume, the device limit, delete-all and the
 * tenant status. Every function is one short transaction through
 * cp/store-tx.h; the SQL texts are constants with every value a
 * parameter.
 */
#include "cp/base.h"
#include "cp/store-services.h"
#include "cp/store-tenant.h"
#include "cp/store-tx.h"
#include "store-int.h"

#include <jansson.h>

static int check_id(const char *account_id, cp_error *reterr) {
        if (!account_id || !*account_id || strlen(account_id) >= 64)
                return cp_error_set(reterr, -EINVAL, "account id is required (at most 63 characters)");
        return 0;
}

static int event(cp_store_tx *tx, int activity, const char *initiator, const char *account_id, const char *meta,
                 cp_error *reterr) {
        static const char sql[] = "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                                  " VALUES ($1::int, $2, $3, $3, $4::jsonb)";
        char code[16];

        (void) snprintf(code, sizeof code, "%d", activity);
        const char *p[4] = { code, initiator && *initiator ? initiator : CP_STORE_INITIATOR_OPERATOR, account_id,
                             meta ? meta : "{}" };
        return cp_store_tx_exec(tx, sql, 4, p, NULL, reterr);
}

/* Runs the change (its first column: whether it changed, then optional
 * values), and the event when it changed, in one transaction. */
static int change(cp_store *s, const char *sql, int n, const char *const *params, int activity_on,
                  int activity_off, bool on, const char *initiator, const char *account_id, const char *meta,
                  bool *ret_changed, int64_t *ret_value, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_exec(tx, sql, n, params, &rows, reterr);
        if (r >= 0 && cp_store_rows_count(rows) != 1)
                r = cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        bool changed = r >= 0 && cp_store_rows_bool(rows, 0, 0);
        if (r >= 0 && changed)
                r = event(tx, on ? activity_on : activity_off, initiator, account_id, meta, reterr);
        if (r >= 0)
                r = cp_store_tx_commit(TAKE_PTR(tx), reterr);
        tx = cp_store_tx_end(tx);
        if (r < 0)
                return r;
        if (ret_changed)
                *ret_changed = changed;
        if (ret_value)
                *ret_value = strtoll(cp_store_rows_get(rows, 0, 1) ?: "0", NULL, 10);
        return 0;
}

int cp_store_msp_set_enabled(cp_store *s, const char *account_id, bool enabled, const char *initiator_id,
                             bool *ret_changed, cp_error *reterr) {
        /* The old value comes from the locked row version (a self-join
         * in UPDATE ... FROM reads the one the UPDATE replaces). */
        static const char sql[] =
                "UPDATE accounts a SET msp_enabled_at = CASE WHEN $2::boolean"
                " THEN COALESCE(o.msp_enabled_at, CURRENT_TIMESTAMP) ELSE NULL END"
                " FROM (SELECT id, msp_enabled_at FROM accounts WHERE id = $1 FOR UPDATE) o"
                " WHERE a.id = o.id RETURNING (o.msp_enabled_at IS NOT NULL) <> $2::boolean";
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        const char *p[2] = { account_id, enabled ? "true" : "false" };
        return change(s, sql, 2, p, CP_ACTIVITY_ACCOUNT_MSP_ENABLED, CP_ACTIVITY_ACCOUNT_MSP_DISABLED, enabled,
                      initiator_id, account_id, "{}", ret_changed, NULL, reterr);
}

int cp_store_account_set_suspended(cp_store *s, const char *account_id, bool suspended, const char *initiator_id,
                                   int64_t *ret_serial, bool *ret_changed, cp_error *reterr) {
        static const char sql[] =
                "UPDATE accounts a SET suspended_at = CASE WHEN $2::boolean"
                " THEN COALESCE(o.suspended_at, CURRENT_TIMESTAMP) ELSE NULL END,"
                " network_serial = a.network_serial + 1"
                " FROM (SELECT id, suspended_at FROM accounts WHERE id = $1 FOR UPDATE) o"
                " WHERE a.id = o.id RETURNING (o.suspended_at IS NOT NULL) <> $2::boolean, a.network_serial";
        int64_t serial = 0;
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        const char *p[2] = { account_id, suspended ? "true" : "false" };
        r = change(s, sql, 2, p, CP_ACTIVITY_ACCOUNT_SUSPENDED, CP_ACTIVITY_ACCOUNT_RESUMED, suspended,
                   initiator_id, account_id, "{}", ret_changed, &serial, reterr);
        if (r >= 0 && ret_serial)
                *ret_serial = serial;
        return r;
}

int cp_store_account_set_device_limit(cp_store *s, const char *account_id, int64_t limit,
                                      const char *initiator_id, cp_error *reterr) {
        static const char sql[] =
                "UPDATE accounts a SET device_limit = $2::integer"
                " FROM (SELECT id, device_limit FROM accounts WHERE id = $1 FOR UPDATE) o"
                " WHERE a.id = o.id RETURNING o.device_limit IS DISTINCT FROM $2::integer";
        char lim[24], meta[64];
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        if (limit > INT32_MAX)
                return cp_error_set(reterr, -EINVAL, "device limit %" PRId64 " is too large", limit);
        (void) snprintf(lim, sizeof lim, "%" PRId64, limit);
        (void) snprintf(meta, sizeof meta, "{\"device_limit\":%s}", limit < 0 ? "null" : lim);
        const char *p[2] = { account_id, limit < 0 ? NULL : lim };
        return change(s, sql, 2, p, CP_ACTIVITY_ACCOUNT_DEVICE_LIMIT_UPDATED, 0, true, initiator_id, account_id,
                      meta, NULL, NULL, reterr);
}

/* ---- registration's admission (cp_store_peer_register) --------------------------------- */

/* Suspension and limit are read without a lock first: an account
 * without a limit (most) does not make its registrations take turns on
 * its row. With a limit, the row lock makes the count and the insert one
 * decision per account (see ST_ACCOUNT_ADMIT_LOCK in store.c), and the
 * limit is read again under it. A limit set while a registration is
 * past this point applies from the next one. */
int cp_store__peer_admit(cp_store_conn *c, const char *account_id, int64_t *ret_limit, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL, *locked = NULL, *cnt = NULL;
        const char *params[1] = { account_id };
        int r;

        r = cp_store__exec(c, ST_ACCOUNT_ADMIT_READ, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -EIO, "account %s not found", account_id);
        if (cp_store__col_bool(res, 0))
                return cp_error_set(reterr, -EHOSTDOWN, "account %s is suspended", account_id);
        if (PQgetisnull(res, 0, 1))
                return 0;
        r = cp_store__exec(c, ST_ACCOUNT_ADMIT_LOCK, params, &locked, reterr);
        if (r < 0)
                return r;
        if (PQntuples(locked) != 1)
                return cp_error_set(reterr, -EIO, "account %s not found", account_id);
        if (cp_store__col_bool(locked, 0))
                return cp_error_set(reterr, -EHOSTDOWN, "account %s is suspended", account_id);
        if (PQgetisnull(locked, 0, 1))
                return 0;
        int64_t limit = cp_store__col_int64(locked, 1);
        r = cp_store__exec(c, ST_ACCOUNT_PEER_COUNT, params, &cnt, reterr);
        if (r < 0)
                return r;
        if (cp_store__col_int64(cnt, 0) >= limit) {
                *ret_limit = limit;
                return cp_error_set(reterr, -EDQUOT, "account %s reached its device limit of %" PRId64 " peers",
                                    account_id, limit);
        }
        return 0;
}

void cp_store__peer_limit_event(cp_store_conn *c, const char *account_id, const char *initiator,
                                const char *hostname, int64_t limit) {
        char code[12];
        json_auto_t *meta = json_pack("{s:s, s:I}", "name", hostname ? hostname : "", "device_limit",
                                      (json_int_t) limit);
        _cleanup_free_ char *meta_s = meta ? json_dumps(meta, JSON_COMPACT) : NULL;

        (void) snprintf(code, sizeof code, "%d", CP_ACTIVITY_ACCOUNT_PEER_LIMIT_REACHED);
        const char *ev[5] = { code, initiator ? initiator : "", "", account_id, meta_s ? meta_s : "{}" };
        /* Refused agents retry with backoff, forever: one event per
         * account per 10 minutes tells the story without flooding. */
        (void) cp_store__exec(c, ST_EVENT_INSERT_SPARSE, ev, NULL, NULL);
}

/* ---- delete ---------------------------------------------------------------------------- */

/* Every table of the schema with an account_id column that still holds a
 * row of $1 (query_to_xml runs the count per table; the table name is
 * quoted by format's %I and the id by %L). The change log keeps the
 * REMOVED rows the delete wrote for proxies. */
static const char SQL_LEFTOVERS[] =
        /* MATERIALIZED: the tables with the column first, so the count is
         * never tried on a table without it (the planner may evaluate
         * WHERE conditions in any order). */
        "WITH t AS MATERIALIZED (SELECT c.table_name::text AS name FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND c.column_name = 'account_id'"
        " AND t.table_type = 'BASE TABLE' AND c.table_name <> 'proxy_mapping_changes')"
        " SELECT name FROM t WHERE (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I"
        " WHERE account_id = %L', name, $1::text), false, true, '')))[1]::text::bigint > 0"
        " ORDER BY 1";

int cp_store_tx_account_delete_all(cp_store_tx *tx, const char *account_id, cp_store_account_deleted *ret,
                                   cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *lock = NULL, *tenants = NULL, *peers = NULL, *left = NULL;
        cp_store_account_deleted out = { 0 };
        const char *p[1] = { account_id };
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        /* FOR UPDATE: registrations (KEY SHARE, then NO KEY UPDATE) and
         * REST writers of the account wait, then find it gone. */
        r = cp_store_tx_exec(tx, "SELECT network_serial FROM accounts WHERE id = $1 FOR UPDATE", 1, p, &lock,
                             reterr);
        if (r >= 0 && cp_store_rows_count(lock) != 1)
                r = cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        if (r >= 0) {
                /* An MSP's tenants are other accounts: deleting the MSP
                 * would cut their links (rows keyed by the tenants). */
                r = cp_store_tx_exec(tx, "SELECT count(*) FROM msp_tenants WHERE msp_account_id = $1", 1, p, &tenants,
                                     reterr);
                if (r >= 0 && strcmp(cp_store_rows_get(tenants, 0, 0), "0") != 0)
                        r = cp_error_set(reterr, -EBUSY, "account %s manages %s tenants: delete or unlink them first",
                                         account_id, cp_store_rows_get(tenants, 0, 0));
        }
        if (r >= 0) {
                out.serial = strtoll(cp_store_rows_get(lock, 0, 0), NULL, 10) + 1;
                r = cp_store_tx_exec(tx, "SELECT count(*) FROM peers WHERE account_id = $1", 1, p, &peers, reterr);
        }
        if (r >= 0) {
                out.peers = strtoll(cp_store_rows_get(peers, 0, 0), NULL, 10);
                r = cp_store_tx_proxy_services_removed(tx, account_id, NULL, &out.proxy_seq, reterr);
        }
        if (r >= 0)
                r = cp_store_tx_exec(tx, "DELETE FROM events WHERE account_id = $1", 1, p, NULL, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "DELETE FROM accounts WHERE id = $1", 1, p, NULL, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, SQL_LEFTOVERS, 1, p, &left, reterr);
        if (r >= 0 && cp_store_rows_count(left) > 0)
                r = cp_error_set(reterr, -EIO, "table %s still holds rows of account %s after the delete (no "
                                 "cascading foreign key); nothing was deleted", cp_store_rows_get(left, 0, 0),
                                 account_id);
        if (r < 0)
                return r;
        if (ret)
                *ret = out;
        return 0;
}

int cp_store_account_delete_all(cp_store *s, const char *account_id, cp_store_account_deleted *ret,
                                cp_error *reterr) {
        cp_store_account_deleted out = { 0 };
        cp_store_tx *tx = NULL;
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_account_delete_all(tx, account_id, &out, reterr);
        if (r >= 0)
                r = cp_store_tx_commit(TAKE_PTR(tx), reterr);
        tx = cp_store_tx_end(tx);
        if (r < 0) {
                cp_error_prefix(reterr, "deleting account");
                return r;
        }
        if (ret)
                *ret = out;
        return 0;
}

/* ---- status ---------------------------------------------------------------------------- */

#define STATUS_SELECT \
        "SELECT a.id, COALESCE(t.name, ''), COALESCE(t.domain, a.domain), COALESCE(t.status, '')," \
        " COALESCE(t.msp_account_id, ''), a.suspended_at IS NOT NULL," \
        " COALESCE((EXTRACT(EPOCH FROM a.suspended_at) * 1000)::bigint, 0)," \
        " a.msp_enabled_at IS NOT NULL, COALESCE(a.device_limit, -1), ps.total, ps.connected," \
        " COALESCE((EXTRACT(EPOCH FROM GREATEST(ps.seen, (SELECT max(e.timestamp) FROM events e" \
        " WHERE e.account_id = a.id))) * 1000)::bigint, 0)," \
        " a.network_serial, (EXTRACT(EPOCH FROM a.created_at) * 1000)::bigint" \
        " FROM accounts a LEFT JOIN msp_tenants t ON t.account_id = a.id" \
        " CROSS JOIN LATERAL " CP_STORE_SQL_ACCOUNT_PEERS("a.id") " ps"

static int64_t col_i64(const cp_store_rows *rows, int row, int col) {
        const char *v = cp_store_rows_get(rows, row, col);

        return v ? strtoll(v, NULL, 10) : 0;
}

static void status_from_row(const cp_store_rows *rows, int i, cp_store_tenant_status *t) {
        *t = (cp_store_tenant_status) { 0 };
        (void) snprintf(t->account_id, sizeof t->account_id, "%s", cp_store_rows_get(rows, i, 0) ?: "");
        (void) snprintf(t->name, sizeof t->name, "%s", cp_store_rows_get(rows, i, 1) ?: "");
        (void) snprintf(t->domain, sizeof t->domain, "%s", cp_store_rows_get(rows, i, 2) ?: "");
        (void) snprintf(t->status, sizeof t->status, "%s", cp_store_rows_get(rows, i, 3) ?: "");
        (void) snprintf(t->msp_account_id, sizeof t->msp_account_id, "%s", cp_store_rows_get(rows, i, 4) ?: "");
        t->suspended = cp_store_rows_bool(rows, i, 5);
        t->suspended_at_ms = col_i64(rows, i, 6);
        t->msp_enabled = cp_store_rows_bool(rows, i, 7);
        t->device_limit = col_i64(rows, i, 8);
        t->peers_total = col_i64(rows, i, 9);
        t->peers_connected = col_i64(rows, i, 10);
        t->last_activity_ms = col_i64(rows, i, 11);
        t->serial = col_i64(rows, i, 12);
        t->created_at_ms = col_i64(rows, i, 13);
}

int cp_store_account_status(cp_store *s, const char *account_id, cp_store_tenant_status *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        int r = check_id(account_id, reterr);

        if (r < 0)
                return r;
        r = cp_store_exec1(s, STATUS_SELECT " WHERE a.id = $1", 1, p, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        status_from_row(rows, 0, ret);
        return 0;
}

int cp_store_tenant_status_list(cp_store *s, const char *msp_account_id, cp_store_tenant_status **ret,
                                size_t *ret_n, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL, *msp = NULL;
        const char *p[1] = { msp_account_id };
        int r = check_id(msp_account_id, reterr);

        if (r < 0)
                return r;
        r = cp_store_exec1(s, STATUS_SELECT " WHERE t.msp_account_id = $1 ORDER BY t.name, a.id", 1, p, &rows,
                           reterr);
        if (r < 0)
                return r;
        int n = cp_store_rows_count(rows);
        if (n == 0) {
                r = cp_store_exec1(s, "SELECT 1 FROM accounts WHERE id = $1", 1, p, &msp, reterr);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(msp) != 1)
                        return cp_error_set(reterr, -ENOENT, "account %s not found", msp_account_id);
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        cp_store_tenant_status *out = cp_xcalloc((size_t) n, sizeof *out);
        for (int i = 0; i < n; i++)
                status_from_row(rows, i, &out[i]);
        *ret = out;
        *ret_n = (size_t) n;
        return 0;
}
