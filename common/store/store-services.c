/*
 * The reverse proxy's rows (cp/store-services.h): the change log, the
 * services' session keys, service create/delete, proxy access tokens.
 *
 * Everything goes through cp_store_tx_exec, so these calls share the
 * caller's transaction with whatever else it writes.
 */
#include <sodium.h>

#include "cp/base.h"
#include "cp/proxyauth.h"
#include "cp/store-services.h"

int cp_store_tx_proxy_change(struct cp_store_tx *tx, const char *account_id, const char *service_id, int op,
                             const char *cluster, const char *domain, int64_t *ret_seq, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char lock[24], opbuf[4];
        int r;

        if (!tx || !account_id || !service_id || !cluster || !domain || op < CP_PROXY_CHANGE_CREATED ||
            op > CP_PROXY_CHANGE_REMOVED)
                return cp_error_set(reterr, -EINVAL, "bad proxy change arguments");
        (void) snprintf(lock, sizeof lock, "%" PRId64, CP_STORE_PROXY_CHANGES_LOCK);
        (void) snprintf(opbuf, sizeof opbuf, "%d", op);
        /* The lock first, in its own statement: the INSERT's nextval()
         * must run after it is held. */
        const char *lp[] = { lock };
        r = cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock($1::bigint)", 1, lp, NULL, reterr);
        if (r < 0)
                return r;
        const char *p[] = { account_id, service_id, opbuf, cluster, domain };
        r = cp_store_tx_exec(tx,
                             "INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"
                             " VALUES ($1, $2, $3::smallint, $4, $5) RETURNING seq",
                             5, p, &rows, reterr);
        if (r < 0)
                return r;
        if (ret_seq) {
                int64_t seq = 0;
                (void) cp_parse_int64(cp_store_rows_get(rows, 0, 0), 0, INT64_MAX, &seq);
                *ret_seq = seq;
        }
        return 0;
}

int cp_store_tx_proxy_services_removed(struct cp_store_tx *tx, const char *account_id, const char *source_peer,
                                       int64_t *ret_seq, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char lock[24];
        int r;

        if (ret_seq)
                *ret_seq = 0;
        (void) snprintf(lock, sizeof lock, "%" PRId64, CP_STORE_PROXY_CHANGES_LOCK);
        const char *lp[] = { lock };
        r = cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock($1::bigint)", 1, lp, NULL, reterr);
        if (r < 0)
                return r;
        const char *p[] = { account_id, source_peer };
        r = cp_store_tx_exec(tx,
                             "WITH ins AS (INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"
                             " SELECT account_id, id, 2, proxy_cluster, domain FROM services"
                             " WHERE account_id = $1 AND enabled AND ($2::text IS NULL OR source_peer = $2)"
                             " ORDER BY id RETURNING seq) SELECT COALESCE(max(seq), 0) FROM ins",
                             2, p, &rows, reterr);
        if (r < 0)
                return r;
        if (ret_seq)
                (void) cp_parse_int64(cp_store_rows_get(rows, 0, 0), 0, INT64_MAX, ret_seq);
        return 0;
}

int cp_store_tx_service_create(struct cp_store_tx *tx, const uint8_t data_key[CP_DATA_KEY_LEN],
                               const cp_store_service_new *svc, char ret_id[CP_ID_LEN + 1], int64_t *ret_seq,
                               cp_error *reterr) {
        _cleanup_free_ char *sealed = NULL;
        char pub[CP_SESSION_PUB_B64_LEN], id[CP_ID_LEN + 1], port[16], expires[32];
        int r;

        if (ret_seq)
                *ret_seq = 0;
        if (!svc || !svc->account_id || !svc->name || !svc->domain)
                return cp_error_set(reterr, -EINVAL, "a service needs an account, a name and a domain");
        if (svc->listen_port < 0 || svc->listen_port > 65535)
                return cp_error_set(reterr, -EINVAL, "listen port %d out of range", svc->listen_port);
        if (svc->id)
                (void) snprintf(id, sizeof id, "%s", svc->id);
        else
                cp_id_new(id);
        r = cp_proxyauth_keypair_new(data_key, &sealed, pub, reterr);
        if (r < 0)
                return r;
        (void) snprintf(port, sizeof port, "%d", svc->listen_port);
        if (svc->expires_at_s > 0)
                (void) snprintf(expires, sizeof expires, "%" PRId64, svc->expires_at_s);
        const char *cluster = svc->proxy_cluster ? svc->proxy_cluster : "";
        const char *p[] = {
                id,
                svc->account_id,
                svc->name,
                svc->domain,
                cluster,
                svc->mode ? svc->mode : "http",
                port,
                svc->port_auto_assigned ? "t" : "f",
                svc->enabled ? "t" : "f",
                svc->terminated ? "t" : "f",
                svc->pass_host_header ? "t" : "f",
                svc->rewrite_redirects ? "t" : "f",
                svc->private_ ? "t" : "f",
                svc->access_groups ? svc->access_groups : "{}",
                svc->targets ? svc->targets : "[]",
                svc->auth ? svc->auth : "{}",
                svc->restrictions ? svc->restrictions : "{}",
                sealed,
                pub,
                svc->source_peer ? "ephemeral" : "permanent",
                svc->source_peer,
                svc->expires_at_s > 0 ? expires : NULL,
        };
        r = cp_store_tx_exec(tx,
                             "INSERT INTO services (id, account_id, name, domain, proxy_cluster, mode, listen_port,"
                             " port_auto_assigned, enabled, terminated, pass_host_header, rewrite_redirects,"
                             " private, access_groups, targets, auth, restrictions, session_private_key,"
                             " session_public_key, source, source_peer, expires_at)"
                             " VALUES ($1, $2, $3, $4, $5, $6, $7::integer, $8::boolean, $9::boolean,"
                             " $10::boolean, $11::boolean, $12::boolean, $13::boolean, $14::text[], $15::jsonb,"
                             " $16::jsonb, $17::jsonb, $18, $19, $20, $21, to_timestamp($22::bigint))",
                             (int) (sizeof p / sizeof p[0]), p, NULL, reterr);
        if (r < 0)
                return r;
        if (svc->enabled) {
                r = cp_store_tx_proxy_change(tx, svc->account_id, id, CP_PROXY_CHANGE_CREATED, cluster,
                                             svc->domain, ret_seq, reterr);
                if (r < 0)
                        return r;
        }
        if (ret_id)
                memcpy(ret_id, id, sizeof id);
        return 0;
}

int cp_store_tx_service_delete(struct cp_store_tx *tx, const char *account_id, const char *service_id,
                               int64_t *ret_seq, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r;

        if (ret_seq)
                *ret_seq = 0;
        const char *p[] = { account_id, service_id };
        r = cp_store_tx_exec(tx,
                             "DELETE FROM services WHERE account_id = $1 AND id = $2"
                             " RETURNING enabled, proxy_cluster, domain",
                             2, p, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return cp_error_set(reterr, -ENOENT, "service %s not found", service_id);
        if (!cp_store_rows_bool(rows, 0, 0))
                return 0;
        return cp_store_tx_proxy_change(tx, account_id, service_id, CP_PROXY_CHANGE_REMOVED,
                                        cp_store_rows_get(rows, 0, 1), cp_store_rows_get(rows, 0, 2), ret_seq,
                                        reterr);
}

int cp_store_tx_proxy_token_create(struct cp_store_tx *tx, const char *account_id, const char *name,
                                   int64_t expires_in_s, const char *created_by,
                                   cp_store_proxy_token_created *ret, cp_error *reterr) {
        char hash[CP_SHA256_B64_LEN], expires[32];
        int r;

        if (!name || !*name)
                return cp_error_set(reterr, -EINVAL, "a proxy token needs a name");
        if (expires_in_s < 0)
                return cp_error_set(reterr, -EINVAL, "expires_in must be non-negative");
        cp_id_new(ret->id);
        cp_crypto_token_new(CP_PROXY_TOKEN_PREFIX, ret->plain);
        cp_crypto_pat_hash(ret->plain, hash);
        (void) snprintf(expires, sizeof expires, "%" PRId64, expires_in_s);
        const char *p[] = { ret->id, name, hash, account_id, expires_in_s > 0 ? expires : NULL,
                            created_by ? created_by : "" };
        r = cp_store_tx_exec(tx,
                             "INSERT INTO proxy_access_tokens (id, name, hashed_token, account_id, expires_at,"
                             " created_by) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP + make_interval(secs =>"
                             " $5::bigint), $6)",
                             6, p, NULL, reterr);
        if (r < 0)
                explicit_bzero(ret->plain, sizeof ret->plain);
        return r;
}

int cp_store_tx_proxy_token_revoke(struct cp_store_tx *tx, const char *account_id, const char *token_id,
                                   cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r;

        const char *p[] = { token_id, account_id };
        r = cp_store_tx_exec(tx,
                             "SELECT revoked FROM proxy_access_tokens WHERE id = $1 AND account_id IS NOT DISTINCT"
                             " FROM $2 FOR UPDATE",
                             2, p, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return cp_error_set(reterr, -ENOENT, "proxy token %s not found", token_id);
        if (cp_store_rows_bool(rows, 0, 0))
                return 0;
        r = cp_store_tx_exec(tx, "UPDATE proxy_access_tokens SET revoked = true WHERE id = $1", 1, p, NULL,
                             reterr);
        return r < 0 ? r : 1;
}
