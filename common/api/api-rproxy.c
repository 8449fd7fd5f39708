/*
 * The reverse proxy's smaller REST families: /api/reverse-proxies/domains
 * (+ validate), /clusters, /proxy-tokens, and the proxy access logs under
 * /api/events/proxy; plus the cluster helpers api-services.c uses
 * (api-rproxy.h). Permission module "services" everywhere, as NetBird.
 */
#include "api-activity.h"
#include "api-rproxy.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/store-services.h"

#include <netdb.h>
#include <strings.h>

/* A proxy counts while connected with a heartbeat in the last two
 * minutes (NetBird's proxyActiveThreshold). */
#define ACTIVE(p) "(" p ".status = 'connected' AND " p ".last_seen > CURRENT_TIMESTAMP - interval '2 minutes')"

/* The account's allow list: its own active clusters, then the shared ones. */
static const char SQL_ALLOW_LIST[] =
        "SELECT cluster_address FROM proxies p WHERE " ACTIVE("p") " AND (p.account_id = $1 OR p.account_id IS NULL)"
        " GROUP BY cluster_address ORDER BY bool_or(p.account_id IS NOT NULL) DESC, cluster_address";

static const char SQL_CUSTOM_MATCH[] =
        "SELECT target_cluster FROM proxy_domains WHERE account_id = $1"
        " AND ($2 = domain OR right($2, length(domain) + 1) = '.' || domain)"
        " ORDER BY length(domain) DESC LIMIT 1";

static int allow_list(api_ctx *c, cp_store_rows **ret) {
        const char *p[] = { c->account_id };
        return api_sql(c, SQL_ALLOW_LIST, 1, p, ret);
}

static bool suffix_match(const char *domain, const char *cluster) {
        size_t d = strlen(domain), n = strlen(cluster);
        if (strcmp(domain, cluster) == 0)
                return true;
        return d > n + 1 && domain[d - n - 1] == '.' && strcmp(domain + d - n, cluster) == 0;
}

/* 1 found, 0 none (why: "no proxy clusters available" or "no match"),
 * API_FAIL. */
static int derive(api_ctx *c, const char *domain, char *out, size_t outsz, bool *none_available) {
        _cleanup_rows_ cp_store_rows *rows = NULL, *custom = NULL;
        int r = allow_list(c, &rows);
        if (r < 0)
                return r;
        *none_available = cp_store_rows_count(rows) == 0;
        if (*none_available)
                return 0;
        for (int i = 0; i < cp_store_rows_count(rows); i++)
                if (suffix_match(domain, cp_store_rows_get(rows, i, 0))) {
                        (void) snprintf(out, outsz, "%s", cp_store_rows_get(rows, i, 0));
                        return 1;
                }
        const char *p[] = { c->account_id, domain };
        if ((r = api_sql(c, SQL_CUSTOM_MATCH, 2, p, &custom)) < 0)
                return r;
        if (cp_store_rows_count(custom) == 0)
                return 0;
        (void) snprintf(out, outsz, "%s", cp_store_rows_get(custom, 0, 0));
        return 1;
}

int api_rproxy_derive_cluster_quiet(api_ctx *c, const char *domain, char *out, size_t outsz) {
        bool none;
        return derive(c, domain, out, outsz, &none);
}

int api_rproxy_derive_cluster(api_ctx *c, const char *domain, char *out, size_t outsz) {
        bool none = false;
        int r = derive(c, domain, out, outsz, &none);
        if (r < 0)
                return r;
        if (r == 1)
                return 0;
        if (none)
                return api_error(c, 412, "could not derive cluster from domain %s: no proxy clusters available", domain);
        return api_error(c, 412,
                         "could not derive cluster from domain %s: domain %s does not match any available proxy cluster",
                         domain, domain);
}

int api_rproxy_capability(api_ctx *c, const char *cluster, const char *column) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_strbuf sql;
        /* column is one of a fixed set (never request input) */
        static const char *const cols[] = { "supports_custom_ports", "require_subdomain", "private", "supports_crowdsec",
                                            NULL };
        bool ok = false;
        for (int i = 0; cols[i]; i++)
                ok = ok || strcmp(cols[i], column) == 0;
        if (!ok) {
                (void) api_internal(c, "bad capability column", NULL);
                return -2;
        }
        bool unanimous = strcmp(column, "supports_crowdsec") == 0;
        cp_strbuf_init(&sql);
        cp_strbuf_addf(&sql,
                       "SELECT count(%s) > 0, COALESCE(%s(%s), false) FROM proxies p WHERE p.cluster_address = $1 AND " ACTIVE("p"),
                       column, unanimous ? "bool_and" : "bool_or", column);
        const char *p[] = { cluster };
        int r = api_sql(c, sql.buf, 1, p, &rows);
        cp_strbuf_release(&sql);
        if (r < 0)
                return -2;
        if (!cp_store_rows_bool(rows, 0, 0))
                return -1;
        return cp_store_rows_bool(rows, 0, 1) ? 1 : 0;
}

int api_rproxy_check_subdomain(api_ctx *c, const char *domain, const char *cluster) {
        if (strcmp(domain, cluster) != 0)
                return 0;
        int r = api_rproxy_capability(c, cluster, "require_subdomain");
        if (r == -2)
                return API_FAIL;
        if (r == 1)
                return api_error(c, 422, "domain %s requires a subdomain label", domain);
        return 0;
}

int api_rproxy_domain_taken(api_ctx *c, const char *domain, const char *exclude_id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { domain, exclude_id };
        int r = api_sql(c, "SELECT 1 FROM services WHERE domain = $1 AND id <> $2", 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 409, "domain already taken");
        return 0;
}

/* ---- capabilities in JSON ------------------------------------------------------------------------- */

static int set_cap(api_ctx *c, json_t *o, const char *key, const char *cluster, const char *column) {
        int v = api_rproxy_capability(c, cluster, column);
        if (v == -2)
                return API_FAIL;
        if (v >= 0)
                json_object_set_new(o, key, json_boolean(v == 1));
        return 0;
}

/* ---- /api/reverse-proxies/domains ------------------------------------------------------------------ */

static const char SQL_CUSTOM_DOMAINS[] =
        "SELECT id, domain, target_cluster, validated FROM proxy_domains WHERE account_id = $1 ORDER BY created_at, id";

static json_t *custom_domain_json(const char *id, const char *domain, const char *cluster, bool validated) {
        json_t *o = json_pack("{s:s,s:s,s:b,s:s}", "id", id, "domain", domain, "validated", validated, "type", "custom");
        if (cluster && *cluster)
                json_object_set_new(o, "target_cluster", json_string(cluster));
        return o;
}

static int list_domains(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *clusters = NULL, *custom = NULL;
        const char *p[] = { c->account_id };
        json_t *arr = json_array();
        int r;

        if ((r = allow_list(c, &clusters)) < 0 || (r = api_sql(c, SQL_CUSTOM_DOMAINS, 1, p, &custom)) < 0)
                goto out;
        for (int i = 0; i < cp_store_rows_count(clusters); i++) {
                const char *cl = cp_store_rows_get(clusters, i, 0);
                json_t *o = json_pack("{s:s,s:s,s:b,s:s}", "id", "", "domain", cl, "validated", true, "type", "free");
                json_array_append_new(arr, o);
                if ((r = set_cap(c, o, "supports_custom_ports", cl, "supports_custom_ports")) < 0 ||
                    (r = set_cap(c, o, "require_subdomain", cl, "require_subdomain")) < 0 ||
                    (r = set_cap(c, o, "supports_crowdsec", cl, "supports_crowdsec")) < 0 ||
                    (r = set_cap(c, o, "supports_private", cl, "private")) < 0)
                        goto out;
        }
        for (int i = 0; i < cp_store_rows_count(custom); i++) {
                const char *cl = cp_store_rows_get(custom, i, 2);
                json_t *o = custom_domain_json(cp_store_rows_get(custom, i, 0), cp_store_rows_get(custom, i, 1), cl,
                                               cp_store_rows_bool(custom, i, 3));
                json_array_append_new(arr, o);
                if (*cl && ((r = set_cap(c, o, "supports_custom_ports", cl, "supports_custom_ports")) < 0 ||
                            (r = set_cap(c, o, "supports_crowdsec", cl, "supports_crowdsec")) < 0 ||
                            (r = set_cap(c, o, "supports_private", cl, "private")) < 0))
                        goto out;
        }
        r = api_reply_json(c, 200, arr);
out:
        json_decref(arr);
        return r;
}

static int domain_event(api_ctx *c, int act, const char *id, const char *domain, const char *cluster, bool validated) {
        json_t *m = json_pack("{s:s,s:s,s:b}", "domain", domain, "target_cluster", cluster, "validated", validated);
        char *txt = json_dumps(m, JSON_COMPACT);
        int r = api_event(c, act, id, txt);
        free(txt);
        json_decref(m);
        return r;
}

/* NetBird's domain Validator: the canonical name of "validation.<domain>"
 * (after following CNAMEs; the system resolver, so /etc/hosts counts)
 * must be the cluster's address. Blocking: it runs inside the request,
 * bounded by the resolver's own timeouts (resolv.conf). */
static bool cname_matches(const char *domain, const char *cluster) {
        struct addrinfo hints = { .ai_flags = AI_CANONNAME, .ai_socktype = SOCK_STREAM }, *res = NULL;
        char name[300];
        bool ok = false;

        if (!*cluster || snprintf(name, sizeof name, "validation.%s", domain) >= (int) sizeof name)
                return false;
        if (getaddrinfo(name, NULL, &hints, &res) != 0)
                return false;
        if (res && res->ai_canonname) {
                size_t n = strlen(res->ai_canonname), m = strlen(cluster);
                if (n > 0 && res->ai_canonname[n - 1] == '.')
                        n--;
                if (m > 0 && cluster[m - 1] == '.')
                        m--;
                ok = n == m && strncasecmp(res->ai_canonname, cluster, n) == 0;
        }
        freeaddrinfo(res);
        return ok;
}

static int create_domain(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *clusters = NULL;
        const char *domain = "", *cluster = "";
        cp_strbuf ascii, why;
        char id[CP_ID_LEN + 1];
        cp_error err = { 0 };
        json_t *body = api_body(c);
        int r;

        if (!body)
                return API_FAIL;
        if ((r = api_field_str(c, body, "domain", &domain)) < 0 || (r = api_field_str(c, body, "target_cluster", &cluster)) < 0)
                return r;
        cp_strbuf_init(&ascii);
        cp_strbuf_init(&why);
        if (!*domain || api_domain_to_ascii(domain, &ascii, &why) < 0 || !api_domain_valid(ascii.buf) ||
            ascii.buf[0] == '*') {
                r = api_error(c, 422, "invalid domain %s", domain);
                goto out;
        }
        if ((r = allow_list(c, &clusters)) < 0)
                goto out;
        bool ok = false;
        for (int i = 0; i < cp_store_rows_count(clusters) && !ok; i++)
                ok = strcmp(cp_store_rows_get(clusters, i, 0), cluster) == 0;
        if (!ok) {
                r = api_error(c, 422, "target cluster %s is not available", cluster);
                goto out;
        }
        cp_id_new(id);
        /* an initial validation against the target cluster, as NetBird */
        bool validated = cname_matches(ascii.buf, cluster);
        const char *p[] = { id, c->account_id, ascii.buf, cluster, validated ? "t" : "f" };
        r = api_sql_try(c,
                        "INSERT INTO proxy_domains (id, account_id, domain, target_cluster, validated)"
                        " VALUES ($1, $2, $3, $4, $5::boolean)",
                        5, p, NULL, &err);
        if (r == -EEXIST) {
                r = api_error(c, 409, "domain %s already exists", ascii.buf);
                goto out;
        }
        if (r < 0) {
                r = api_internal(c, "create domain", &err);
                goto out;
        }
        if ((r = domain_event(c, API_ACT_DOMAIN_ADDED, id, ascii.buf, cluster, validated)) < 0)
                goto out;
        json_t *o = custom_domain_json(id, ascii.buf, cluster, validated);
        r = api_reply_json(c, 200, o);
        json_decref(o);
out:
        cp_strbuf_release(&ascii);
        cp_strbuf_release(&why);
        return r;
}

static int delete_domain(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { c->account_id, c->param[0] };
        int r = api_sql(c,
                        "DELETE FROM proxy_domains WHERE account_id = $1 AND id = $2"
                        " RETURNING domain, target_cluster, validated",
                        2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "custom domain %s not found", c->param[0]);
        r = domain_event(c, API_ACT_DOMAIN_DELETED, c->param[0], cp_store_rows_get(rows, 0, 0),
                         cp_store_rows_get(rows, 0, 1), cp_store_rows_bool(rows, 0, 2));
        if (r < 0)
                return r;
        /* NetBird answers 204 with no body */
        return api_reply_text(c, 204, "", 0);
}

/* NetBird starts the CNAME check in the background and answers 202
 * whatever happens. Here the check runs before the answer (still 202),
 * for a domain of the account (404 otherwise): on a match the domain
 * becomes validated, with NetBird's event 120. */
static int validate_domain(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { c->account_id, c->param[0] };
        int r = api_sql(c,
                        "SELECT domain, target_cluster, validated FROM proxy_domains WHERE account_id = $1 AND id = $2"
                        " FOR UPDATE",
                        2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "custom domain %s not found", c->param[0]);
        const char *domain = cp_store_rows_get(rows, 0, 0), *cluster = cp_store_rows_get(rows, 0, 1);
        if (cname_matches(domain, cluster)) {
                if ((r = api_sql(c, "UPDATE proxy_domains SET validated = true WHERE account_id = $1 AND id = $2", 2, p,
                                 NULL)) < 0 ||
                    (r = domain_event(c, API_ACT_DOMAIN_VALIDATED, c->param[0], domain, cluster, true)) < 0)
                        return r;
        }
        return api_reply_text(c, 202, "", 0);
}

/* ---- /api/reverse-proxies/clusters ----------------------------------------------------------------- */

static const char SQL_CLUSTERS[] =
        "SELECT min(p.id), p.cluster_address, count(*) FILTER (WHERE " ACTIVE("p") "),"
        " bool_or(" ACTIVE("p") "), bool_or(p.account_id IS NOT NULL)"
        " FROM proxies p WHERE p.account_id IS NULL OR p.account_id = $1"
        " GROUP BY p.cluster_address ORDER BY p.cluster_address";

static int list_clusters(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { c->account_id };
        json_t *arr = json_array();
        int r = api_sql(c, SQL_CLUSTERS, 1, p, &rows);
        if (r < 0)
                goto out;
        for (int i = 0; i < cp_store_rows_count(rows); i++) {
                const char *addr = cp_store_rows_get(rows, i, 1);
                json_t *o = json_pack("{s:s,s:s,s:s,s:b,s:I}", "id", cp_store_rows_get(rows, i, 0), "address", addr,
                                      "type", cp_store_rows_bool(rows, i, 4) ? "account" : "shared", "online",
                                      cp_store_rows_bool(rows, i, 3), "connected_proxies",
                                      (json_int_t) atoll(cp_store_rows_get(rows, i, 2)));
                json_array_append_new(arr, o);
                if ((r = set_cap(c, o, "supports_custom_ports", addr, "supports_custom_ports")) < 0 ||
                    (r = set_cap(c, o, "require_subdomain", addr, "require_subdomain")) < 0 ||
                    (r = set_cap(c, o, "supports_crowdsec", addr, "supports_crowdsec")) < 0 ||
                    (r = set_cap(c, o, "private", addr, "private")) < 0)
                        goto out;
        }
        r = api_reply_json(c, 200, arr);
out:
        json_decref(arr);
        return r;
}

static int delete_cluster(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { c->param[0], c->account_id };
        int r = api_sql(c, "DELETE FROM proxies WHERE cluster_address = $1 AND account_id = $2", 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_affected(rows) == 0)
                return api_error(c, 404, "cluster not found");
        return api_reply_empty_object(c);
}

/* ---- /api/reverse-proxies/proxy-tokens ---------------------------------------------------------------- */

#define TOKEN_JSON(t)                                                                                        \
        "json_strip_nulls(json_build_object('id', " t ".id, 'name', " t ".name, 'expires_at', "                   \
        API_TS_JSON(t ".expires_at") ", 'created_at', " API_TS_JSON(t ".created_at") ", 'last_used', "            \
        API_TS_JSON(t ".last_used") ", 'revoked', " t ".revoked))"

static int list_tokens(api_ctx *c) {
        return api_reply_list(c, "SELECT COALESCE(json_agg(" TOKEN_JSON("t") " ORDER BY t.created_at, t.id), '[]')"
                                 " FROM proxy_access_tokens t WHERE t.account_id = $1");
}

static int create_token(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_proxy_token_created tok;
        const char *name = "";
        int64_t expires_in = 0;
        cp_error err = { 0 };
        json_t *body = api_body(c), *v;
        int r;

        if (!body)
                return API_FAIL;
        if ((r = api_field_str(c, body, "name", &name)) < 0)
                return r;
        v = json_object_get(body, "expires_in");
        if (v && !json_is_null(v)) {
                if (!json_is_integer(v))
                        return api_bad_json(c);
                expires_in = json_integer_value(v);
        }
        if (!*name || strlen(name) > 255)
                return api_error_verbatim(c, 400, "name is required and must be at most 255 characters");
        if (expires_in < 0)
                return api_error_verbatim(c, 400, "expires_in must be non-negative");
        if (expires_in > INT64_C(9223372036))
                expires_in = INT64_C(9223372036);       /* Go's Duration limit */
        r = cp_store_tx_proxy_token_create(c->tx, c->account_id, name, expires_in, c->user_id, &tok, &err);
        if (r < 0)
                return api_internal(c, "failed to save token", &err);
        /* The token's JSON from the database, plain_token added here: the
         * plain token never goes to the database, not even as a
         * parameter. */
        const char *p[] = { c->account_id, tok.id };
        r = api_sql(c, "SELECT " TOKEN_JSON("t") "::text FROM proxy_access_tokens t"
                       " WHERE t.account_id = $1 AND t.id = $2", 2, p, &rows);
        const char *obj = r < 0 ? NULL : cp_store_rows_get(rows, 0, 0);
        size_t len = obj ? strlen(obj) : 0;
        if (r >= 0 && (len < 2 || obj[len - 1] != '}'))
                r = api_internal(c, "the new token is gone", NULL);
        if (r >= 0) {
                cp_strbuf out;
                cp_strbuf_init(&out);
                cp_strbuf_add(&out, obj, len - 1);
                cp_strbuf_adds(&out, len > 2 ? ",\"plain_token\":\"" : "\"plain_token\":\"");
                cp_strbuf_add_json_escaped(&out, tok.plain);
                cp_strbuf_adds(&out, "\"}");
                r = api_reply_text(c, 200, out.buf, out.len);
                cp_explicit_bzero(out.buf, out.len);
                cp_strbuf_release(&out);
        }
        cp_explicit_bzero(tok.plain, sizeof tok.plain);
        return r;
}

static int revoke_token(api_ctx *c) {
        cp_error err = { 0 };
        int r = cp_store_tx_proxy_token_revoke(c->tx, c->account_id, c->param[0], &err);
        if (r == -ENOENT)
                return api_error_verbatim(c, 404, "token not found");
        if (r < 0)
                return api_internal(c, "failed to revoke token", &err);
        (void) snprintf(c->revoked_token, sizeof c->revoked_token, "%s", c->param[0]);
        return api_reply_empty_object(c);
}

/* ---- /api/events/proxy ------------------------------------------------------------------------------- */

/* strconv.Atoi > 0, else the default */
static int64_t positive(const char *s, int64_t dflt) {
        int64_t v;
        if (!s || cp_parse_int64(s, 1, INT32_MAX, &v) < 0)
                return dflt;
        return v;
}

static const char LOG_JSON[] =
        "json_strip_nulls(json_build_object('id', l.id, 'service_id', l.service_id, 'timestamp', "
        API_TS_JSON("l.timestamp") ", 'method', l.method, 'host', l.host, 'path', l.path,"
        " 'duration_ms', l.duration_ms, 'status_code', l.status_code,"
        " 'source_ip', NULLIF(l.source_ip, ''), 'reason', NULLIF(l.reason, ''), 'user_id', NULLIF(l.user_id, ''),"
        " 'auth_method_used', NULLIF(l.auth_method_used, ''), 'country_code', NULLIF(l.country_code, ''),"
        " 'city_name', NULLIF(l.city_name, ''), 'subdivision_code', NULLIF(l.subdivision_code, ''),"
        " 'bytes_upload', l.bytes_upload, 'bytes_download', l.bytes_download,"
        " 'protocol', NULLIF(l.protocol, ''), 'metadata', CASE WHEN l.metadata = '{}'::jsonb THEN NULL ELSE l.metadata END))";

/* Users' e-mails and names are sealed (cp/crypto-pii.h), so the filters
 * on them are resolved here: the ids (a JSON array, for
 * jsonb_array_elements_text) of the account's users whose e-mail (what
 * & 1) or name (what & 2) contains needle, as strpos did. */
static int users_matching(api_ctx *c, const char *needle, unsigned what, cp_strbuf *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        int r = api_sql(c, "SELECT id, pii_key, email, name FROM users WHERE account_id = $1", 1, p, &rows);

        if (r < 0)
                return r;
        cp_strbuf_adds(ret, "[");
        for (int i = 0, n = 0; i < cp_store_rows_count(rows); i++) {
                const char *fp = cp_store_rows_get(rows, i, 1);
                bool hit = false;
                for (unsigned k = 0; k < 2 && !hit; k++) {
                        if (!(what & (1u << k)))
                                continue;
                        char *v = cp_pii_open(fp, cp_store_rows_get(rows, i, 2 + (int) k));
                        hit = strstr(v, needle) != NULL;
                        cp_explicit_bzero(v, strlen(v));
                        free(v);
                }
                if (hit) {
                        cp_strbuf_adds(ret, n++ ? ",\"" : "\"");
                        cp_strbuf_add_json_escaped(ret, cp_store_rows_get(rows, i, 0));
                        cp_strbuf_addch(ret, '"');
                }
        }
        cp_strbuf_addch(ret, ']');
        return 0;
}

static int list_access_logs(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        static const struct {
                const char *key, *cols;
        } sorts[] = { { "timestamp", "l.timestamp" },   { "url", "url" },  { "host", "l.host" },
                      { "path", "l.path" },             { "method", "l.method" },         { "status_code", "l.status_code" },
                      { "duration", "l.duration_ms" },  { "source_ip", "l.source_ip" },   { "user_id", "l.user_id" },
                      { "auth_method", "l.auth_method_used" }, { "reason", "l.reason" } };
        const char *params[20];
        char pagebuf[24], sizebuf[24], offbuf[24];
        int n = 0, r;
        cp_strbuf where, sql;

        int64_t page = positive(api_query(c, "page"), 1);
        int64_t size = positive(api_query(c, "page_size"), 50);
        if (size > 100)
                size = 100;
        const char *order = api_query(c, "sort_order");
        bool asc = order && strcasecmp(order, "asc") == 0;
        const char *sort_by = api_query(c, "sort_by");
        const char *cols = "l.timestamp";
        for (size_t i = 0; sort_by && i < sizeof sorts / sizeof sorts[0]; i++)
                if (strcmp(sort_by, sorts[i].key) == 0)
                        cols = sorts[i].cols;

        cp_strbuf_init(&where);
        cp_strbuf_init(&sql);
        params[n++] = c->account_id;
        cp_strbuf_adds(&where, " FROM proxy_access_logs l WHERE l.account_id = $1");
        const char *v;
        cp_strbuf ids[3];               /* search, user_email, user_name: matching user ids */
        for (int i = 0; i < 3; i++)
                cp_strbuf_init(&ids[i]);
        r = 0;
        if ((v = api_query(c, "search")) && *v && (r = users_matching(c, v, 3, &ids[0])) >= 0) {
                params[n++] = v;
                params[n++] = ids[0].buf;
                cp_strbuf_addf(&where,
                               " AND (strpos(l.id, $%d) > 0 OR strpos(l.source_ip, $%d) > 0 OR strpos(l.host, $%d) > 0"
                               " OR strpos(l.path, $%d) > 0 OR strpos(l.host || l.path, $%d) > 0 OR l.user_id IN"
                               " (SELECT jsonb_array_elements_text($%d::jsonb)))",
                               n - 1, n - 1, n - 1, n - 1, n - 1, n);
        }
        static const struct {
                const char *q, *cond;
                unsigned users;         /* resolved with users_matching */
        } eq[] = { { "source_ip", "l.source_ip = $?", 0 }, { "host", "l.host = $?", 0 },
                   { "path", "strpos(l.path, $?) > 0", 0 }, { "user_id", "l.user_id = $?", 0 },
                   { "method", "l.method = $?", 0 },
                   { "user_email", "l.user_id IN (SELECT jsonb_array_elements_text($?::jsonb))", 1 },
                   { "user_name", "l.user_id IN (SELECT jsonb_array_elements_text($?::jsonb))", 2 } };
        for (size_t i = 0; r >= 0 && i < sizeof eq / sizeof eq[0]; i++)
                if ((v = api_query(c, eq[i].q)) && *v) {
                        const char *q = strchr(eq[i].cond, '?');
                        if (eq[i].users) {
                                cp_strbuf *b = &ids[eq[i].users];
                                if ((r = users_matching(c, v, eq[i].users, b)) < 0)
                                        break;
                                v = b->buf;
                        }
                        params[n++] = v;
                        cp_strbuf_adds(&where, " AND ");
                        cp_strbuf_addf(&where, "%.*s%d%s", (int) (q - eq[i].cond), eq[i].cond, n, q + 1);
                }
        if ((v = api_query(c, "status"))) {
                if (strcmp(v, "success") == 0)
                        cp_strbuf_adds(&where, " AND l.status_code >= 200 AND l.status_code < 400");
                else if (strcmp(v, "failed") == 0)
                        cp_strbuf_adds(&where, " AND (l.status_code < 200 OR l.status_code >= 400)");
        }
        int64_t code;
        if ((v = api_query(c, "status_code")) && cp_parse_int64(v, 1, INT32_MAX, &code) == 0) {
                params[n++] = v;
                cp_strbuf_addf(&where, " AND l.status_code = $%d::integer", n);
        }
        /* RFC 3339 dates; anything else is ignored, as NetBird does */
        static const char *const dates[] = { "start_date", "end_date" };
        for (int i = 0; i < 2; i++)
                if ((v = api_query(c, dates[i])) && *v && strlen(v) >= 20 && v[10] == 'T' &&
                    strspn(v, "0123456789-T:.Z+") == strlen(v)) {
                        params[n++] = v;
                        cp_strbuf_addf(&where, " AND l.timestamp %s $%d::timestamptz", i == 0 ? ">=" : "<=", n);
                }

        (void) snprintf(pagebuf, sizeof pagebuf, "%" PRId64, page);
        (void) snprintf(sizebuf, sizeof sizebuf, "%" PRId64, size);
        (void) snprintf(offbuf, sizeof offbuf, "%" PRId64, (page - 1) * size);
        const char *dir = asc ? "ASC" : "DESC";
        char orderby[96];
        if (strcmp(cols, "url") == 0)   /* host, then path */
                (void) snprintf(orderby, sizeof orderby, "l.host %s, l.path", dir);
        else
                (void) snprintf(orderby, sizeof orderby, "%s", cols);
        params[n++] = sizebuf;
        int lim = n;
        params[n++] = offbuf;
        int off = n;
        params[n++] = pagebuf;
        int pg = n;
        cp_strbuf_addf(&sql,
                       "WITH total AS (SELECT count(*) AS n %s),"
                       " page AS (SELECT %s AS j %s ORDER BY %s %s, l.id %s LIMIT $%d::bigint OFFSET $%d::bigint)"
                       " SELECT json_build_object('data', COALESCE((SELECT json_agg(j) FROM page), '[]'),"
                       " 'page', $%d::bigint, 'page_size', $%d::bigint, 'total_records', (SELECT n FROM total),"
                       " 'total_pages', ((SELECT n FROM total) + $%d::bigint - 1) / $%d::bigint)",
                       where.buf, LOG_JSON, where.buf, orderby, dir, dir, lim, off, pg, lim, lim, lim);
        if (r >= 0)
                r = api_sql(c, sql.buf, n, params, &rows);
        cp_strbuf_release(&where);
        cp_strbuf_release(&sql);
        for (int i = 0; i < 3; i++)
                cp_strbuf_release(&ids[i]);
        if (r < 0)
                return r;
        return api_reply_text(c, 200, cp_store_rows_get(rows, 0, 0), (size_t) cp_store_rows_len(rows, 0, 0));
}

const api_route api_rproxy_routes[] = {
        { "GET", "/api/reverse-proxies/domains", API_MOD_SERVICES, API_READ, list_domains },
        { "POST", "/api/reverse-proxies/domains", API_MOD_SERVICES, API_CREATE, create_domain },
        { "DELETE", "/api/reverse-proxies/domains/{domainId}", API_MOD_SERVICES, API_DELETE, delete_domain },
        /* NetBird checks services/create inside the goroutine and answers 202 regardless */
        { "GET", "/api/reverse-proxies/domains/{domainId}/validate", API_MOD_SERVICES, API_CREATE, validate_domain },
        { "GET", "/api/reverse-proxies/clusters", API_MOD_SERVICES, API_READ, list_clusters },
        { "DELETE", "/api/reverse-proxies/clusters/{clusterAddress}", API_MOD_SERVICES, API_DELETE, delete_cluster },
        { "GET", "/api/reverse-proxies/proxy-tokens", API_MOD_SERVICES, API_READ, list_tokens },
        { "POST", "/api/reverse-proxies/proxy-tokens", API_MOD_SERVICES, API_CREATE, create_token },
        { "DELETE", "/api/reverse-proxies/proxy-tokens/{tokenId}", API_MOD_SERVICES, API_DELETE, revoke_token },
        { "GET", "/api/events/proxy", API_MOD_SERVICES, API_READ, list_access_logs },
        { NULL },
};
