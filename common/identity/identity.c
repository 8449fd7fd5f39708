/*
 * Placeholder until provisioning lands (branch wt-identity): finds users
 * that exist, creates nothing.
 */
#include "cp/base.h"
#include "cp/identity.h"

static const char SQL_USER[] =
        "SELECT id, account_id, role, is_service_user, blocked, pending_approval FROM users WHERE id = $1";

int cp_identity_resolve(cp_store_tx *tx, const cp_identity_options *o, const cp_jwt_claims *claims,
                        unsigned flags, cp_identity_user *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { claims->user_id };
        cp_identity_user u = { 0 };
        int r;

        (void) o;
        (void) flags;
        r = cp_store_tx_exec(tx, SQL_USER, 1, p, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return cp_error_set(reterr, -ENOENT, "user not found");
        (void) snprintf(u.user_id, sizeof u.user_id, "%s", cp_store_rows_get(rows, 0, 0));
        (void) snprintf(u.account_id, sizeof u.account_id, "%s", cp_store_rows_get(rows, 0, 1));
        (void) snprintf(u.role, sizeof u.role, "%s", cp_store_rows_get(rows, 0, 2));
        u.service_user = cp_store_rows_bool(rows, 0, 3);
        u.blocked = cp_store_rows_bool(rows, 0, 4);
        u.pending_approval = cp_store_rows_bool(rows, 0, 5);
        *ret = u;
        return 0;
}
