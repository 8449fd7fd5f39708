/*
 * SSO peers: the one-time JWT claim, the JWT login of a known peer and
 * ExtendAuthSession. Each is one prepared statement (store.c), so a call
 * costs one round trip and locks what it changes for that statement only.
 */
#include "cp/base.h"
#include "cp/store-sso.h"
#include "store-int.h"

static bool hex_hash(const char *h) {
        if (!h || strlen(h) != 64)
                return false;
        for (const char *p = h; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return false;
        return true;
}

int cp_store_jwt_claim(cp_store *s, const char *token_hash, int64_t exp_unix_s, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char exp[24];
        int r;

        if (!hex_hash(token_hash))
                return cp_error_set(reterr, -EINVAL, "token hash must be 64 lower-case hex digits");
        if (exp_unix_s <= 0)
                return cp_error_set(reterr, -EINVAL, "jwt token has no expiration");
        (void) snprintf(exp, sizeof exp, "%" PRId64, exp_unix_s);
        const char *params[2] = { token_hash, exp };
        r = cp_store__run(s, ST_JWT_CLAIM, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -EIO, "jwt claim returned %d rows", PQntuples(res));
        if (cp_store__col_bool(res, 0))
                return 0;
        if (cp_store__col_bool(res, 1))
                return cp_error_set(reterr, -EKEYEXPIRED, "JWT expired");
        return cp_error_set(reterr, -EALREADY, "JWT already used");
}

int cp_store_jwt_claims_gc(cp_store *s, int64_t *ret_deleted, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = cp_store__run(s, ST_JWT_CLAIMS_GC, NULL, &res, reterr);

        if (r < 0)
                return r;
        if (ret_deleted)
                *ret_deleted = cp_store__affected(res);
        return 0;
}

int cp_store_peer_sso_login(cp_store *s, const char *account_id, const char *peer_id, const char *user_id,
                            const char *dns_domain, cp_store_sso_login *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char code[12];
        int r;

        if (!account_id || !peer_id || !user_id || !*user_id || !ret)
                return cp_error_set(reterr, -EINVAL, "account, peer and user ids are required");
        (void) snprintf(code, sizeof code, "%d", CP_STORE_ACTIVITY_USER_LOGGED_IN_PEER);
        const char *params[5] = { account_id, peer_id, user_id, code, cp_store__nz(dns_domain) };
        r = cp_store__run(s, ST_PEER_SSO_LOGIN, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);
        if (strcmp(PQgetvalue(res, 0, 0), user_id) != 0)
                return cp_error_set(reterr, -EACCES,
                                    "peer is already registered by a different User or a Setup Key");
        if (cp_store__col_bool(res, 1))
                return cp_error_set(reterr, -EPERM, "user is blocked");
        *ret = (cp_store_sso_login) {
                .refreshed = cp_store__col_bool(res, 2),
                .serial = cp_store__col_int64(res, 3),
                .last_login_unix_ns = cp_store__col_int64(res, 4) * 1000,
        };
        return 0;
}

int cp_store_peer_extend_session(cp_store *s, const char *wg_pub_key, const char *user_id,
                                 const char *dns_domain, cp_store_extend *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        cp_store_extend out = { 0 };
        char code[12];
        int r;

        if (!wg_pub_key || !user_id || !*user_id || !ret)
                return cp_error_set(reterr, -EINVAL, "peer key and user id are required");
        (void) snprintf(code, sizeof code, "%d", CP_STORE_ACTIVITY_USER_EXTENDED_PEER_SESSION);
        const char *params[4] = { wg_pub_key, user_id, cp_store__nz(dns_domain), code };
        r = cp_store__run(s, ST_PEER_EXTEND_SESSION, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer not found");
        /* account_id, id, uid, peer_on, acc_on, exp_ns, extended, last_login (us) */
        (void) snprintf(out.account_id, sizeof out.account_id, "%s", PQgetvalue(res, 0, 0));
        (void) snprintf(out.peer_id, sizeof out.peer_id, "%s", PQgetvalue(res, 0, 1));
        const char *uid = PQgetvalue(res, 0, 2);
        if (!cp_store__col_bool(res, 4))
                out.outcome = CP_STORE_EXTEND_DISABLED;
        else if (!*uid || !cp_store__col_bool(res, 3))
                out.outcome = CP_STORE_EXTEND_NOT_ELIGIBLE;
        else if (strcmp(uid, user_id) != 0)
                out.outcome = CP_STORE_EXTEND_NOT_OWNER;
        else if (!cp_store__col_bool(res, 6))
                return cp_error_set(reterr, -EIO, "session extension wrote nothing");
        else {
                out.outcome = CP_STORE_EXTEND_OK;
                out.last_login_unix_ns = cp_store__col_int64(res, 7) * 1000;
                out.deadline_unix_ns = out.last_login_unix_ns + cp_store__col_int64(res, 5);
        }
        *ret = out;
        return 0;
}
