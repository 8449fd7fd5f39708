#include "cp/base.h"
#include "cp/store-peers.h"
#include "store-int.h"

enum {
        ACTIVITY_PEER_LOGIN_EXPIRED = 50,      /* netbird-protocol.md section 7 */
};

/* Runs the fenced disconnect and reports whether it landed. The connect
 * is cp_store_peer_connect() (store-peers.c): one statement that can
 * carry the agent's meta as well. */
static int fenced_disconnect(cp_store *s, const char *account_id, const char *peer_id, int64_t token,
                             cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char tok[24];
        const char *params[3] = { account_id, peer_id, tok };
        int r;

        if (!account_id || !peer_id)
                return cp_error_set(reterr, -EINVAL, "account and peer id are required");
        (void) snprintf(tok, sizeof tok, "%" PRId64, token);

        r = cp_store__run(s, ST_PEER_DISCONNECT, params, &res, reterr);
        if (r < 0)
                return r;
        r = cp_store__affected(res) > 0 ? 1 : 0;
        cp_store__fenced(false, r == 1);
        return r;
}

int cp_store_peer_mark_connected(cp_store *s, const char *account_id, const char *peer_id,
                                 int64_t token, cp_error *reterr) {
        cp_store_peer_connect_req req = { .token = token };

        return cp_store_peer_connect(s, account_id, peer_id, &req, NULL, NULL, reterr);
}

int cp_store_peer_mark_disconnected(cp_store *s, const char *account_id, const char *peer_id,
                                    int64_t token, cp_error *reterr) {
        /* "= 0" would match every peer that never connected. */
        if (token == 0)
                return 0;
        return fenced_disconnect(s, account_id, peer_id, token, reterr);
}

int cp_store_peer_get_status(cp_store *s, const char *account_id, const char *peer_id,
                             cp_store_peer_status *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[2] = { account_id, peer_id };
        int r = cp_store__run(s, ST_PEER_STATUS, params, &res, reterr);

        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "peer %s not found in account %s", peer_id, account_id);

        ret->connected = PQgetvalue(res, 0, 0)[0] == 't';
        ret->login_expired = PQgetvalue(res, 0, 1)[0] == 't';
        ret->requires_approval = PQgetvalue(res, 0, 2)[0] == 't';
        ret->session_started_at = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        ret->last_seen_unix_ns = strtoll(PQgetvalue(res, 0, 4), NULL, 10) * 1000;
        (void) snprintf(ret->replica_id, sizeof ret->replica_id, "%s", PQgetvalue(res, 0, 5));
        return 0;
}

void cp_store_set_replica_id(cp_store *s, const char *replica_id) {
        free(s->replica_id);
        s->replica_id = replica_id && *replica_id ? cp_xstrdup(replica_id) : NULL;
}

/* ---- login expiration ------------------------------------------------------------ */

static int cmp_expired(const void *a, const void *b) {
        return strcmp(((const cp_store_expired_account *) a)->account_id,
                      ((const cp_store_expired_account *) b)->account_id);
}

static int cmp_expired_peer(const void *a, const void *b) {
        const cp_store_expired_peer *x = a, *y = b;
        int c = strcmp(x->account_id, y->account_id);

        return c ? c : strcmp(x->peer_id, y->peer_id);
}

int cp_store_expire_logins(cp_store *s, const char *dns_domain, cp_store_expired_account **ret_accounts,
                           size_t *ret_n, cp_store_expired_peer **ret_peers, size_t *ret_n_peers,
                           cp_error *reterr) {
        char code[12];
        const char *params[2] = { code, cp_store__nz(dns_domain) };
        cp_store_expired_account *out = NULL;
        cp_store_expired_peer *peers = NULL;
        size_t n = 0, n_peers = 0;
        int r;

        if (!ret_accounts || !ret_n || (ret_peers && !ret_n_peers))
                return cp_error_set(reterr, -EINVAL, "result pointers are required");
        (void) snprintf(code, sizeof code, "%d", ACTIVITY_PEER_LOGIN_EXPIRED);

        for (int attempt = 0;; attempt++) {
                _cleanup_pgresult_ PGresult *res = NULL;
                cp_store_conn *c;
                cp_error err = { 0 };

                r = cp_store__acquire(s, &c, reterr);
                if (r < 0)
                        return r;
                /* One statement: its own transaction. */
                r = cp_store__exec(c, ST_PEER_EXPIRE_LOGINS, params, &res, &err);
                cp_store__release(s, c);
                if (r < 0) {
                        /* A deadlock with a concurrent caller rolled everything back. */
                        if (attempt < 3 && (strcmp(err.sqlstate, "40P01") == 0 ||
                                            strcmp(err.sqlstate, "40001") == 0))
                                continue;
                        if (reterr)
                                *reterr = err;
                        return r;
                }
                /* One row per marked peer, sorted by account id then peer
                 * id: the accounts are the runs of equal account ids. */
                n_peers = (size_t) PQntuples(res);
                if (n_peers > 0) {
                        out = cp_xcalloc(n_peers, sizeof *out);
                        peers = cp_xcalloc(n_peers, sizeof *peers);
                        for (size_t i = 0; i < n_peers; i++) {
                                const char *acc = PQgetvalue(res, (int) i, 0);
                                (void) snprintf(peers[i].account_id, sizeof peers[i].account_id, "%s", acc);
                                (void) snprintf(peers[i].peer_id, sizeof peers[i].peer_id, "%s",
                                                PQgetvalue(res, (int) i, 2));
                                if (n > 0 && strcmp(out[n - 1].account_id, acc) == 0)
                                        continue;
                                (void) snprintf(out[n].account_id, sizeof out[n].account_id, "%s", acc);
                                out[n].serial = strtoll(PQgetvalue(res, (int) i, 1), NULL, 10);
                                n++;
                        }
                        /* The ORDER BY sorts in the database's collation;
                         * callers get strcmp order. */
                        qsort(out, n, sizeof *out, cmp_expired);
                        qsort(peers, n_peers, sizeof *peers, cmp_expired_peer);
                }
                break;
        }
        *ret_accounts = out;
        *ret_n = n;
        if (ret_peers) {
                *ret_peers = peers;
                *ret_n_peers = n_peers;
        } else
                free(peers);
        return 0;
}
