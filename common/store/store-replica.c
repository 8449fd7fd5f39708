/*
 * store-replica.c: replica registration, heartbeats, and the fenced
 * clean-up of a dead replica's sessions (cp/store-replica.h).
 */
#include "cp/base.h"
#include "cp/store-replica.h"
#include "store-int.h"

static int check_id(const char *id, cp_error *reterr) {
        if (!id || !*id || strlen(id) > CP_STORE_REPLICA_ID_MAX)
                return cp_error_set(reterr, -EINVAL, "replica id must be 1..%d bytes", CP_STORE_REPLICA_ID_MAX);
        return 0;
}

int cp_store_replica_register(cp_store *s, const cp_store_replica_info *info, cp_error *reterr) {
        char pid[16];
        int r = check_id(info->id, reterr);

        if (r < 0)
                return r;
        (void) snprintf(pid, sizeof pid, "%d", info->pid);
        const char *params[6] = { info->id, info->name ? info->name : "", pid,
                                  info->grpc_address ? info->grpc_address : "",
                                  info->http_address ? info->http_address : "", info->version ? info->version : "" };
        return cp_store__run(s, ST_REPLICA_REGISTER, params, NULL, reterr);
}

/* Runs a statement on the replica row ($1 = id); 1 when a row changed,
 * 0 when the row is gone. */
static int update_row(cp_store *s, cp_store_stmt st, const char *const *params, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = check_id(params[0], reterr);

        if (r >= 0)
                r = cp_store__run(s, st, params, &res, reterr);
        if (r < 0)
                return r;
        return cp_store__affected(res) > 0 ? 1 : 0;
}

int cp_store_replica_heartbeat(cp_store *s, const char *id, cp_error *reterr) {
        const char *params[1] = { id };

        return update_row(s, ST_REPLICA_HEARTBEAT, params, reterr);
}

int cp_store_replica_set_state(cp_store *s, const char *id, const char *state, cp_error *reterr) {
        const char *params[2] = { id, state };

        if (!state || (strcmp(state, "serving") != 0 && strcmp(state, "draining") != 0))
                return cp_error_set(reterr, -EINVAL, "replica state must be serving or draining");
        return update_row(s, ST_REPLICA_STATE, params, reterr);
}

int cp_store_replica_deregister(cp_store *s, const char *id, int64_t *ret_swept, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { id };
        int r = check_id(id, reterr);

        if (r >= 0)
                r = cp_store__run(s, ST_REPLICA_DEREGISTER, params, &res, reterr);
        if (r < 0)
                return r;
        if (ret_swept)
                *ret_swept = cp_store__affected(res);
        return 0;
}

int cp_store_replica_reap(cp_store *s, const char *self_id, int64_t expiry_ms, cp_store_reaped_replica **ret,
                          size_t *ret_n, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char ms[24];
        const char *params[2] = { ms, self_id };
        int r = check_id(self_id, reterr);

        *ret = NULL;
        *ret_n = 0;
        if (r < 0)
                return r;
        if (expiry_ms <= 0)
                return cp_error_set(reterr, -EINVAL, "replica expiry must be positive");
        (void) snprintf(ms, sizeof ms, "%" PRId64, expiry_ms);
        r = cp_store__run(s, ST_REPLICA_REAP, params, &res, reterr);
        if (r < 0)
                return r;
        int n = PQntuples(res);
        if (n == 0)
                return 0;
        cp_store_reaped_replica *out = cp_xcalloc((size_t) n, sizeof *out);
        for (int i = 0; i < n; i++) {
                (void) snprintf(out[i].id, sizeof out[i].id, "%s", PQgetvalue(res, i, 0));
                (void) snprintf(out[i].name, sizeof out[i].name, "%s", PQgetvalue(res, i, 1));
                out[i].sessions = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
        *ret = out;
        *ret_n = (size_t) n;
        return 0;
}
