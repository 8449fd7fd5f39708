#include "cp/base.h"
#include "cp/store-peers.h"
#include "store-int.h"

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
