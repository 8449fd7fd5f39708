/*
 * Ephemeral peers (cp/store-ephemeral.h): the periodic sweep, one read of
 * the accounts with a peer due, then one statement per account (store.c,
 * ST_EPHEMERAL_SWEEP).
 */
#include "cp/base.h"
#include "cp/store-ephemeral.h"
#include "store-int.h"

/* NetBird activity codes (netbird-protocol.md section 7). */
enum {
        ACTIVITY_PEER_REMOVED_BY_USER = 5,
        ACTIVITY_POLICY_REMOVED = 11,
};

static bool retryable(const cp_error *err) {
        return strcmp(err->sqlstate, "40P01") == 0 || strcmp(err->sqlstate, "40001") == 0;
}

/* One account's statement; appends what it deleted. */
static int sweep_account(cp_store *s, const char *account_id, const char *lifetime_us, const char *dns_domain,
                         cp_store_expired_account **accts, size_t *n, cp_store_expired_peer **peers,
                         size_t *n_peers, cp_error *reterr) {
        char peer_code[12], policy_code[12];
        const char *params[5] = { account_id, lifetime_us, peer_code, cp_store__nz(dns_domain), policy_code };
        int r;

        (void) snprintf(peer_code, sizeof peer_code, "%d", ACTIVITY_PEER_REMOVED_BY_USER);
        (void) snprintf(policy_code, sizeof policy_code, "%d", ACTIVITY_POLICY_REMOVED);
        for (int attempt = 0;; attempt++) {
                _cleanup_pgresult_ PGresult *res = NULL;
                cp_error err = { 0 };

                r = cp_store__run(s, ST_EPHEMERAL_SWEEP, params, &res, &err);
                if (r < 0) {
                        if (attempt < 3 && retryable(&err))
                                continue;
                        if (reterr)
                                *reterr = err;
                        return r;
                }
                size_t rows = (size_t) PQntuples(res);
                if (rows == 0)
                        return 0;
                *accts = cp_xrealloc(*accts, (*n + 1) * sizeof **accts);
                (void) snprintf((*accts)[*n].account_id, sizeof (*accts)[*n].account_id, "%s", account_id);
                (*accts)[*n].serial = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                (*n)++;
                *peers = cp_xrealloc(*peers, (*n_peers + rows) * sizeof **peers);
                for (size_t i = 0; i < rows; i++) {
                        cp_store_expired_peer *p = &(*peers)[(*n_peers)++];
                        (void) snprintf(p->account_id, sizeof p->account_id, "%s", account_id);
                        (void) snprintf(p->peer_id, sizeof p->peer_id, "%s", PQgetvalue(res, (int) i, 1));
                }
                return 0;
        }
}

static int cmp_peer(const void *a, const void *b) {
        const cp_store_expired_peer *x = a, *y = b;
        int c = strcmp(x->account_id, y->account_id);

        return c ? c : strcmp(x->peer_id, y->peer_id);
}

static int cmp_account(const void *a, const void *b) {
        return strcmp(((const cp_store_expired_account *) a)->account_id,
                      ((const cp_store_expired_account *) b)->account_id);
}

int cp_store_ephemeral_sweep(cp_store *s, int64_t lifetime_ms, const char *dns_domain,
                             cp_store_expired_account **ret_accounts, size_t *ret_n,
                             cp_store_expired_peer **ret_peers, size_t *ret_n_peers, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *due = NULL;
        cp_store_expired_account *accts = NULL;
        cp_store_expired_peer *peers = NULL;
        size_t n = 0, n_peers = 0;
        char us[24];
        int r, first = 0;

        if (!ret_accounts || !ret_n || (ret_peers && !ret_n_peers))
                return cp_error_set(reterr, -EINVAL, "result pointers are required");
        if (lifetime_ms <= 0 || lifetime_ms > INT64_MAX / 1000)
                return cp_error_set(reterr, -EINVAL, "ephemeral peer lifetime must be positive");
        (void) snprintf(us, sizeof us, "%" PRId64, lifetime_ms * 1000);
        const char *params[1] = { us };
        r = cp_store__run(s, ST_EPHEMERAL_ACCOUNTS, params, &due, reterr);
        if (r < 0)
                return r;
        for (int i = 0; i < PQntuples(due); i++) {
                cp_error err = { 0 };
                r = sweep_account(s, PQgetvalue(due, i, 0), us, dns_domain, &accts, &n, &peers, &n_peers, &err);
                if (r < 0 && first == 0) {
                        first = r;
                        if (reterr)
                                *reterr = err;
                }
        }
        /* The database's collation ordered the accounts; callers get
         * strcmp order. */
        if (n > 1)
                qsort(accts, n, sizeof *accts, cmp_account);
        if (n_peers > 1)
                qsort(peers, n_peers, sizeof *peers, cmp_peer);
        *ret_accounts = accts;
        *ret_n = n;
        if (ret_peers) {
                *ret_peers = peers;
                *ret_n_peers = n_peers;
        } else
                free(peers);
        return first;
}
