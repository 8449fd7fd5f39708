/*
 * store-proxyconn.c: proxy access tokens, proxies rows and the mapping
 * stream reads (cp/store-proxyconn.h). Every function runs one short
 * transaction through cp/store-tx.h.
 */
#include "cp/base.h"
#include "cp/store-proxyconn.h"
#include "cp/store-services.h"
#include "cp/util.h"

#include <inttypes.h>

#define NZ(s) ((s) ? (s) : "")

static void copy_text(char *out, size_t cap, const char *v) {
        (void) snprintf(out, cap, "%s", v ? v : "");
}

#define TOKEN_COLUMNS \
        "id, COALESCE(account_id, ''), revoked, (expires_at IS NOT NULL AND expires_at <= now()), " \
        "(last_used IS NULL OR last_used < now() - interval '1 minute')"

static int token_row(cp_store_rows *rows, cp_store_proxy_token *ret) {
        if (cp_store_rows_count(rows) < 1)
                return -ENOENT;
        *ret = (cp_store_proxy_token) { 0 };
        copy_text(ret->id, sizeof ret->id, cp_store_rows_get(rows, 0, 0));
        copy_text(ret->account_id, sizeof ret->account_id, cp_store_rows_get(rows, 0, 1));
        ret->revoked = cp_store_rows_bool(rows, 0, 2);
        ret->expired = cp_store_rows_bool(rows, 0, 3);
        ret->touch_due = cp_store_rows_bool(rows, 0, 4);
        return 0;
}

int cp_store_proxy_token_by_hash(cp_store *s, const char *hashed, cp_store_proxy_token *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { hashed };
        int r;

        r = cp_store_exec1(s, "SELECT " TOKEN_COLUMNS " FROM proxy_access_tokens WHERE hashed_token = $1", 1, p, &rows,
                 reterr);
        if (r < 0)
                return r;
        return token_row(rows, ret);
}

int cp_store_proxy_token_by_id(cp_store *s, const char *id, cp_store_proxy_token *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { id };
        int r;

        r = cp_store_exec1(s, "SELECT " TOKEN_COLUMNS " FROM proxy_access_tokens WHERE id = $1", 1, p, &rows, reterr);
        if (r < 0)
                return r;
        return token_row(rows, ret);
}

int cp_store_proxy_token_touch(cp_store *s, const char *id, cp_error *reterr) {
        const char *p[] = { id };

        return cp_store_exec1(s,
                    "UPDATE proxy_access_tokens SET last_used = now() WHERE id = $1 AND "
                    "(last_used IS NULL OR last_used < now() - interval '1 minute')",
                    1, p, NULL, reterr);
}

static const char *tri(cp_store_tristate t) {
        return t == CP_STORE_UNSET ? NULL : t == CP_STORE_TRUE ? "true" : "false";
}

int cp_store_proxy_connect(cp_store *s, const cp_store_proxy_conn *c, cp_error *reterr) {
        const char *p[] = {
                c->proxy_id, c->session_id, c->cluster, NZ(c->ip), c->account_id, c->token_id,
                c->replica_id, NZ(c->version), tri(c->caps.supports_custom_ports),
                tri(c->caps.require_subdomain), tri(c->caps.supports_crowdsec), tri(c->caps.private_),
                tri(c->caps.supports_private_service),
        };

        return cp_store_exec1(s,
                    "INSERT INTO proxies (id, session_id, cluster_address, ip_address, account_id, token_id, "
                    "replica_id, version, status, connected_at, disconnected_at, last_seen, "
                    "supports_custom_ports, require_subdomain, supports_crowdsec, private, "
                    "supports_private_service) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'connected', now(), NULL, now(), $9, $10, $11, $12, "
                    "$13) "
                    "ON CONFLICT (id) DO UPDATE SET session_id = EXCLUDED.session_id, "
                    "cluster_address = EXCLUDED.cluster_address, ip_address = EXCLUDED.ip_address, "
                    "account_id = EXCLUDED.account_id, token_id = EXCLUDED.token_id, "
                    "replica_id = EXCLUDED.replica_id, version = EXCLUDED.version, status = 'connected', "
                    "connected_at = now(), disconnected_at = NULL, last_seen = now(), "
                    "supports_custom_ports = EXCLUDED.supports_custom_ports, "
                    "require_subdomain = EXCLUDED.require_subdomain, "
                    "supports_crowdsec = EXCLUDED.supports_crowdsec, private = EXCLUDED.private, "
                    "supports_private_service = EXCLUDED.supports_private_service",
                    (int) ELEMENTSOF(p), p, NULL, reterr);
}

static int fenced(cp_store *s, const char *sql, const char *proxy_id, const char *session_id, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { proxy_id, session_id };
        int r;

        r = cp_store_exec1(s, sql, 2, p, &rows, reterr);
        if (r < 0)
                return r;
        return cp_store_rows_affected(rows) > 0 ? 1 : 0;
}

int cp_store_proxy_disconnect(cp_store *s, const char *proxy_id, const char *session_id, cp_error *reterr) {
        return fenced(s,
                      "UPDATE proxies SET status = 'disconnected', disconnected_at = now(), last_seen = now() "
                      "WHERE id = $1 AND session_id = $2",
                      proxy_id, session_id, reterr);
}

int cp_store_proxy_heartbeat(cp_store *s, const char *proxy_id, const char *session_id, cp_error *reterr) {
        return fenced(s, "UPDATE proxies SET last_seen = now() WHERE id = $1 AND session_id = $2", proxy_id,
                      session_id, reterr);
}

int cp_store_proxy_reap(cp_store *s, int64_t max_age_s, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char age[32];
        const char *p[] = { age };
        int r;

        (void) snprintf(age, sizeof age, "%" PRId64, max_age_s);
        r = cp_store_exec1(s, "DELETE FROM proxies WHERE last_seen < now() - make_interval(secs => $1::bigint)", 1, p,
                 &rows, reterr);
        if (r < 0)
                return r;
        return (int) cp_store_rows_affected(rows);
}

int cp_store_proxy_cluster_taken(cp_store *s, const char *cluster, const char *account_id, bool *ret,
                                 cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { cluster, account_id };
        int r;

        r = cp_store_exec1(s,
                 "SELECT EXISTS (SELECT 1 FROM proxies WHERE cluster_address = $1 AND status = 'connected' "
                 "AND (account_id IS NULL OR account_id <> $2))",
                 2, p, &rows, reterr);
        if (r < 0)
                return r;
        *ret = cp_store_rows_bool(rows, 0, 0);
        return 0;
}

int cp_store_proxy_changes_max(cp_store *s, int64_t *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r;

        r = cp_store_exec1(s, "SELECT COALESCE(max(seq), 0) FROM proxy_mapping_changes", 0, NULL, &rows, reterr);
        if (r < 0)
                return r;
        *ret = strtoll(cp_store_rows_get(rows, 0, 0) ? cp_store_rows_get(rows, 0, 0) : "0", NULL, 10);
        return 0;
}

/* Targets with their hosts looked up (peer and resource addresses), as
 * the REST API shows them: what the proxy dials. */
#define SVC_COLUMNS \
        "s.id, s.account_id, s.domain, s.mode, s.listen_port, s.pass_host_header, s.rewrite_redirects, " \
        "s.private, " CP_STORE_SQL_SERVICE_TARGETS ", s.auth::text, s.restrictions::text, s.session_public_key"

int cp_store_proxy_snapshot_page(cp_store *s, const cp_store_proxy_scope *scope, const char *after, int limit,
                                 cp_store_rows **ret, cp_error *reterr) {
        char lim[16];
        const char *p[] = {
                scope->cluster, scope->account_id && *scope->account_id ? scope->account_id : NULL,
                after ? after : "", scope->private_ok ? "true" : "false",
                scope->custom_ports_ok ? "true" : "false", lim,
        };

        (void) snprintf(lim, sizeof lim, "%d", limit);
        /* idx_services_proxy_cluster (proxy_cluster, id) serves the
         * keyset: each page is an index range scan from the last id. */
        return cp_store_exec1(s,
                    "SELECT " SVC_COLUMNS " FROM services s "
                    "WHERE s.proxy_cluster = $1 AND s.id > $3 AND s.enabled "
                    "AND ($2::text IS NULL OR s.account_id = $2) "
                    "AND (NOT s.private OR $4::boolean) "
                    "AND (s.listen_port = 0 OR s.mode = 'tls' OR $5::boolean) "
                    "ORDER BY s.id LIMIT $6::int",
                    (int) ELEMENTSOF(p), p, ret, reterr);
}

int cp_store_proxy_changes_after(cp_store *s, const cp_store_proxy_scope *scope, int64_t after, int limit,
                                 cp_store_rows **ret, cp_error *reterr) {
        char lim[16], seq[32];
        const char *p[] = {
                scope->cluster, scope->account_id && *scope->account_id ? scope->account_id : NULL, seq, lim,
        };

        (void) snprintf(lim, sizeof lim, "%d", limit);
        (void) snprintf(seq, sizeof seq, "%" PRId64, after);
        return cp_store_exec1(s,
                    "SELECT " SVC_COLUMNS ", c.seq, c.account_id, c.service_id, c.op, c.domain "
                    "FROM proxy_mapping_changes c "
                    "LEFT JOIN services s ON s.id = c.service_id AND s.enabled AND s.proxy_cluster = c.cluster "
                    "WHERE c.seq > $3::bigint AND c.cluster = $1 AND ($2::text IS NULL OR c.account_id = $2) "
                    "ORDER BY c.seq LIMIT $4::int",
                    (int) ELEMENTSOF(p), p, ret, reterr);
}
