/*
 * service-key rotate: new Ed25519 session signing keys for reverse-proxy
 * services (docs/proxy.md, "Session tokens"). The key being replaced
 * becomes the previous key and keeps validating session tokens on every
 * replica until the grace period ends (services.session_prev_valid_until,
 * database clock). Each rotated service gets a MODIFIED row in the proxy
 * mapping change log, so connected proxies receive the new public key
 * (Authentication.session_key) at the replicas' next poll.
 *
 * One transaction per service, its row locked: the current private key
 * must open with the given DataStoreEncryptionKey (else the replicas
 * could not use the new one either), and a service whose previous key is
 * still inside its grace period is skipped unless --force.
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/proxyauth.h"
#include "cp/store-services.h"
#include "cp/store-tx.h"
#include "admin.h"

static const cp_log_ctx log_ctx = { .component = "admin" };

typedef enum outcome { ROTATED, SKIPPED_GRACE, GONE } outcome;

static int rotate_one(cp_store *s, const uint8_t data_key[32], const char *id, int64_t grace_s, bool force,
                      outcome *ret, char pub_out[45], cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        _cleanup_free_ char *sealed = NULL;
        cp_store_tx *tx = NULL;
        uint8_t seed[32];
        char grace[24];
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        const char *p1[1] = { id };
        r = cp_store_tx_exec(tx, "SELECT account_id, session_private_key, COALESCE(session_prev_valid_until >"
                             " CURRENT_TIMESTAMP, false), enabled, proxy_cluster, domain"
                             " FROM services WHERE id = $1 FOR UPDATE", 1, p1, &rows, reterr);
        if (r < 0)
                goto out;
        if (cp_store_rows_count(rows) != 1) {
                *ret = GONE;
                goto out;
        }
        if (cp_store_rows_bool(rows, 0, 2) && !force) {
                *ret = SKIPPED_GRACE;
                goto out;
        }
        const char *cur = cp_store_rows_get(rows, 0, 1);
        if (cur && *cur) {
                r = cp_proxyauth_seed_open(data_key, cur, seed, reterr);
                cp_explicit_bzero(seed, sizeof seed);
                if (r < 0) {
                        r = cp_error_set(reterr, -EKEYREJECTED, "the session key of service %s does not open with "
                                         "this DataStoreEncryptionKey", id);
                        goto out;
                }
        }
        r = cp_proxyauth_keypair_new(data_key, &sealed, pub_out, reterr);
        if (r < 0)
                goto out;
        (void) snprintf(grace, sizeof grace, "%" PRId64, grace_s);
        const char *p2[4] = { id, sealed, pub_out, grace };
        r = cp_store_tx_exec(tx, "UPDATE services SET session_prev_public_key = NULLIF(session_public_key, ''),"
                             " session_prev_valid_until = CURRENT_TIMESTAMP + $4::bigint * interval '1 second',"
                             " session_private_key = $2, session_public_key = $3 WHERE id = $1", 4, p2, NULL, reterr);
        if (r >= 0 && cp_store_rows_bool(rows, 0, 3))
                r = cp_store_tx_proxy_change(tx, cp_store_rows_get(rows, 0, 0), id, CP_PROXY_CHANGE_MODIFIED,
                                             cp_store_rows_get(rows, 0, 4), cp_store_rows_get(rows, 0, 5), NULL,
                                             reterr);
        if (r >= 0) {
                r = cp_store_tx_commit(tx, reterr);     /* frees tx in every case */
                tx = NULL;
        }
        if (r >= 0)
                *ret = ROTATED;
out:
        (void) cp_store_tx_end(tx);
        if (sealed)
                cp_explicit_bzero(sealed, strlen(sealed));
        return r;
}

int admin_cmd_service_key_rotate(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        uint8_t data_key[32];
        cp_error err = { 0 };
        cp_store *s = NULL;
        json_t *ids = NULL;
        int r, code = ADMIN_EXIT_OK;

        if (o->grace_ms % 1000 != 0) {
                fprintf(stderr, ADMIN_PROG ": error: invalid value for --grace: whole seconds only\n");
                return ADMIN_EXIT_USAGE;
        }
        if (!!(o->service && *o->service) == o->all) {
                fprintf(stderr, ADMIN_PROG ": error: give exactly one of --service ID and --all\n");
                return ADMIN_EXIT_USAGE;
        }
        r = cp_config_encryption_key(a->cfg, data_key);
        if (r <= 0) {
                cp_error_set(&err, -EINVAL, r == 0 ? "no DataStoreEncryptionKey configured: session keys are "
                             "stored encrypted with it" : "invalid DataStoreEncryptionKey: expected standard base64 "
                             "of 32 bytes");
                return admin_fail(ADMIN_EXIT_USAGE, &err, "cannot rotate service keys");
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0) {
                cp_explicit_bzero(data_key, sizeof data_key);
                return r;
        }
        if (o->all)
                r = admin_query_json(s, "SELECT COALESCE(json_agg(id ORDER BY id), '[]') FROM services", 0, NULL, &ids);
        else {
                const char *p[1] = { o->service };
                r = admin_query_json(s, "SELECT COALESCE(json_agg(id), '[]') FROM services WHERE id = $1", 1, p,
                                     &ids);
        }
        if (r != 0)
                goto out;
        if (!o->all && json_array_size(ids) == 0) {
                cp_error_set(&err, -ENOENT, "no service %s", o->service);
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot rotate service keys");
                goto out;
        }
        json_t *result = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v) {
                const char *id = json_string_value(v);
                outcome out = GONE;
                char pub[45] = "";
                r = rotate_one(s, data_key, id, o->grace_ms / 1000, o->force, &out, pub, &err);
                if (r < 0) {
                        json_decref(result);
                        code = admin_fail(r == -EKEYREJECTED ? ADMIN_EXIT_USAGE : ADMIN_EXIT_FAILURE, &err,
                                          "cannot rotate the session key of service %s", id);
                        goto out;
                }
                const char *what = out == ROTATED ? "rotated" : out == SKIPPED_GRACE ? "skipped" : "gone";
                if (out == ROTATED)
                        cp_log_kv(&log_ctx, CP_LOG_INFO, "service session key rotated", "service", id,
                                  "public_key", pub, NULL);
                if (o->json)
                        json_array_append_new(result, json_pack("{s:s, s:s, s:s}", "id", id, "result", what,
                                                                "public_key", pub));
                else
                        printf("%s %s%s%s\n", id, what, *pub ? " " : "",
                               out == SKIPPED_GRACE ? " (previous key still in its grace period; --force drops it)"
                                                    : pub);
                if (out == SKIPPED_GRACE && !o->all)
                        code = ADMIN_EXIT_FAILURE;
        }
        if (o->json) {
                char *d = json_dumps(result, JSON_INDENT(2));
                printf("%s\n", d ? d : "[]");
                free(d);
        }
        json_decref(result);
        if (admin_finish_stdout() != 0)
                code = ADMIN_EXIT_FAILURE;
out:
        cp_explicit_bzero(data_key, sizeof data_key);
        json_decref(ids);
        cp_store_free(s);
        return r > 0 && code == ADMIN_EXIT_OK ? r : code;
}
