/*
 * The REST API dispatcher: route matching, authentication, permissions,
 * one transaction per request, the serial bump and the announcement.
 */
#include "api-int.h"
#include "cp/crypto.h"
#include "cp/ratelimit.h"
#include "cp/util.h"

#include <ctype.h>

/* Every resource's table, searched in this order. */
static const api_route *const tables[] = {
        api_accounts_routes, api_users_routes,  api_peers_routes, api_setup_keys_routes,
        api_groups_routes,   api_policies_routes, api_routes_routes, api_dns_routes,
        api_events_routes,   api_instance_routes, api_locations_routes, api_unserved_routes,
        api_zones_routes,    api_networks_routes, api_posture_routes,
        api_services_routes, api_rproxy_routes, api_msp_routes,
};

/* ---- permissions ---------------------------------------------------------------- */

/* NetBird's role tables (management/server/permissions/roles): owner may
 * do everything; admin everything but change accounts; auditor reads
 * everything; network_admin what its table lists; user and billing_admin
 * nothing (regular users get their own peers through the handlers). */
static bool network_admin_allows(api_module m, api_op op) {
        switch (m) {
        case API_MOD_NETWORKS:
        case API_MOD_GROUPS:
        case API_MOD_DNS:
        case API_MOD_NAMESERVERS:
        case API_MOD_POLICIES:
        case API_MOD_ROUTES:
        case API_MOD_PATS:
                return true;
        case API_MOD_SETTINGS:
        case API_MOD_ACCOUNTS:
        case API_MOD_EVENTS:
        case API_MOD_USERS:
        case API_MOD_SETUP_KEYS:
        case API_MOD_PEERS:
                return op == API_READ;
        default:
                return false;
        }
}

bool api_allowed(const api_ctx *c, api_module m, api_op op) {
        if (m == API_MOD_PUBLIC || m == API_MOD_SELF || m == API_MOD_MSP)
                return true;
        if (op == API_READ && c->service_user)
                return true;
        if (strcmp(c->role, "owner") == 0)
                return true;
        if (strcmp(c->role, "admin") == 0)
                return m != API_MOD_ACCOUNTS || op == API_READ;
        if (strcmp(c->role, "auditor") == 0)
                return op == API_READ;
        if (strcmp(c->role, "network_admin") == 0)
                return network_admin_allows(m, op);
        return false;
}

bool api_is_admin(const api_ctx *c) {
        return strcmp(c->role, "owner") == 0 || strcmp(c->role, "admin") == 0;
}

bool api_is_regular_user(const api_ctx *c) {
        return strcmp(c->role, "user") == 0 && !c->service_user;
}

/* ---- routing ----------------------------------------------------------------------- */

static int hexval(int ch) {
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        ch = tolower(ch);
        if (ch >= 'a' && ch <= 'f')
                return ch - 'a' + 10;
        return -1;
}

/* True when s is UTF-8 as PostgreSQL takes it in a text parameter: no
 * overlong forms, no surrogates, nothing past U+10FFFF. */
static bool utf8_valid(const unsigned char *s) {
        while (*s) {
                unsigned c = *s;
                int n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
                if (n < 0 || (n == 1 && c < 0xc2) || (n == 3 && c > 0xf4))
                        return false;
                for (int i = 1; i <= n; i++)
                        if ((s[i] & 0xc0) != 0x80)
                                return false;
                if ((n == 2 && c == 0xe0 && s[1] < 0xa0) || (n == 2 && c == 0xed && s[1] >= 0xa0) ||
                    (n == 3 && c == 0xf0 && s[1] < 0x90) || (n == 3 && c == 0xf4 && s[1] >= 0x90))
                        return false;
                s += n + 1;
        }
        return true;
}

/* Percent-decodes [s, s+n) into a new string; NULL when it holds a bad
 * escape, a NUL byte or is not UTF-8 (which PostgreSQL would refuse as a
 * parameter, a 500 instead of a 400; found by tests/fuzz, fuzz_api). */
static char *pct_decode(const char *s, size_t n) {
        char *out = cp_xmalloc(n + 1), *o = out;

        for (size_t i = 0; i < n; i++) {
                if (s[i] != '%') {
                        *o++ = s[i];
                        continue;
                }
                int a = i + 1 < n ? hexval((unsigned char) s[i + 1]) : -1;
                int b = i + 2 < n ? hexval((unsigned char) s[i + 2]) : -1;
                if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                        free(out);
                        return NULL;
                }
                *o++ = (char) (a * 16 + b);
                i += 2;
        }
        *o = '\0';
        if (!utf8_valid((const unsigned char *) out)) {
                free(out);
                return NULL;
        }
        return out;
}

/* The query decoded as a whole is UTF-8 (its values go to PostgreSQL as
 * text parameters). Bad escapes are left to the values' own decoding. */
static bool query_ok(const char *q) {
        if (!q)
                return true;
        _cleanup_free_ char *d = cp_xstrdup(q);
        char *o = d;
        for (const char *p = q; *p; p++) {
                int a = p[0] == '%' && p[1] ? hexval((unsigned char) p[1]) : -1;
                int b = a >= 0 && p[2] ? hexval((unsigned char) p[2]) : -1;
                if (a >= 0 && b >= 0 && (a || b)) {
                        *o++ = (char) (a * 16 + b);
                        p += 2;
                } else
                        *o++ = *p;
        }
        *o = '\0';
        return utf8_valid((const unsigned char *) d);
}

static void free_params(api_ctx *c) {
        for (int i = 0; i < c->nparam; i++)
                free(c->param[i]);
        c->nparam = 0;
}

/* Matches path against pattern; on success the {x} segments are in
 * c->param. Returns 1 on a match, 0 on none, -1 for a bad escape. */
static int match(api_ctx *c, const char *pattern, const char *path) {
        const char *p = pattern, *s = path;

        free_params(c);
        while (*p && *s) {
                if (*p == '{') {
                        const char *pe = strchr(p, '}');
                        size_t n = strcspn(s, "/");
                        if (!pe || n == 0 || c->nparam == API_MAX_PARAMS)
                                return 0;
                        char *v = pct_decode(s, n);
                        if (!v)
                                return -1;
                        c->param[c->nparam++] = v;
                        p = pe + 1;
                        s += n;
                        continue;
                }
                if (*p != *s)
                        return 0;
                p++;
                s++;
        }
        /* A trailing slash on the request is tolerated ("/api/peers/"). */
        if (*p == '\0' && (*s == '\0' || (s[0] == '/' && s[1] == '\0')))
                return 1;
        return 0;
}

typedef struct found {
        const api_route *route;
        bool path_known;        /* some route has this path with another method */
        bool bad_escape;
} found;

static found find_route(api_ctx *c, const char *method, const char *path) {
        found f = { 0 };

        for (size_t t = 0; t < ELEMENTSOF(tables); t++)
                for (const api_route *r = tables[t]; r->method; r++) {
                        int m = match(c, r->pattern, path);
                        if (m < 0) {
                                f.bad_escape = true;
                                continue;
                        }
                        if (m == 0)
                                continue;
                        if (strcmp(r->method, method) == 0) {
                                f.route = r;
                                return f;
                        }
                        f.path_known = true;
                }
        free_params(c);
        return f;
}

bool cp_api_owns_path(const char *path) {
        return path && strncmp(path, "/api", 4) == 0 && (path[4] == '\0' || path[4] == '/');
}

/* ---- authentication ---------------------------------------------------------------- */

/* Looks up the caller, as NetBird's auth middleware does. A personal
 * access token: "Token nbp_..." or "Bearer nbp_...". Any other bearer
 * value is an IdP JWT: validated with the server's cp_jwt (none = "token
 * invalid"), then provisioned (cp_identity_resolve) in this request's
 * transaction, after which the request runs as that user exactly as for
 * a PAT. NetBird's messages: 401 "no valid authentication provided"
 * without a usable scheme, 401 "token invalid" for a bad or unknown
 * token and for a JWT refused by the account's JWT allow list, 403 "user
 * is blocked" / "user is pending approval". An expired JWT is 401 "token
 * expired", the text the dashboard answers with a new sign-in (NetBird
 * says "token invalid"; docs/api.md). */
static const char SQL_AUTH_TOKEN[] =
        "SELECT t.id, u.id, u.account_id, u.role, u.is_service_user, u.blocked, u.pending_approval,"
        " t.expiration_date <= CURRENT_TIMESTAMP"
        " FROM personal_access_tokens t JOIN users u ON u.id = t.user_id AND u.account_id = t.account_id"
        " WHERE t.hashed_token = $1";
/* last_used at most once a minute per token: a busy script must not turn
 * every read into a row write. */
static const char SQL_TOKEN_USED[] =
        "UPDATE personal_access_tokens SET last_used = CURRENT_TIMESTAMP"
        " WHERE account_id = $1 AND id = $2"
        " AND (last_used IS NULL OR last_used < CURRENT_TIMESTAMP - interval '1 minute')";
static const char SQL_AUTH_USER[] =
        "SELECT '', u.id, u.account_id, u.role, u.is_service_user, u.blocked, u.pending_approval, false"
        " FROM users u WHERE u.id = $1";

/* The longest Authorization value taken (a JWT with many group claims
 * runs to several KiB). */
#define API_MAX_AUTHORIZATION (16 * 1024)

static int check_status(api_ctx *c, bool blocked, bool pending) {
        if (pending)
                return api_error(c, 403, "user is pending approval");
        if (blocked)
                return api_error(c, 403, "user is blocked");
        return 0;
}

static int fill_identity(api_ctx *c, cp_store_rows *rows) {
        const char *expired = cp_store_rows_get(rows, 0, 7);

        if (expired && strcmp(expired, "t") == 0)
                return api_error(c, 401, "token invalid");
        (void) snprintf(c->token_id, sizeof c->token_id, "%s", cp_store_rows_get(rows, 0, 0));
        (void) snprintf(c->user_id, sizeof c->user_id, "%s", cp_store_rows_get(rows, 0, 1));
        (void) snprintf(c->account_id, sizeof c->account_id, "%s", cp_store_rows_get(rows, 0, 2));
        (void) snprintf(c->role, sizeof c->role, "%s", cp_store_rows_get(rows, 0, 3));
        c->service_user = cp_store_rows_bool(rows, 0, 4);
        return check_status(c, cp_store_rows_bool(rows, 0, 5), cp_store_rows_bool(rows, 0, 6));
}

/* Commits the sign-in's writes (serial: the account's new serial when JWT
 * groups changed memberships, else 0) and begins the request's own
 * transaction. */
static int commit_provisioning(api_ctx *c, int64_t serial) {
        cp_error err = { 0 };
        int r;

        r = cp_store_tx_commit(c->tx, &err);
        c->tx = NULL;
        if (r < 0)
                return api_internal(c, "commit", &err);
        if (serial > 0 && c->api->announce)
                c->api->announce(c->account_id, serial, c->api->announce_userdata);
        r = cp_store_tx_begin(c->api->store, &c->tx, &err);
        if (r < 0)
                return api_internal(c, "begin", &err);
        return 0;
}

static int take_token(api_ctx *c, const char *kind, const char *id);

/* A bearer value that is not a PAT: an IdP token. */
static int authenticate_jwt(api_ctx *c, const char *token) {
        _cleanup_jwt_claims_ cp_jwt_claims *claims = NULL;
        cp_identity_user u;
        cp_error err = { 0 };
        int r;

        if (!c->api->jwt)
                return api_error(c, 401, "token invalid");      /* no IdP configured */
        r = cp_jwt_validate(c->api->jwt, token, &claims, &err);
        if (r == -EKEYEXPIRED)
                return api_error(c, 401, "token expired");
        if (r < 0) {
                (void) snprintf(c->err_detail, sizeof c->err_detail, "jwt: %s", err.message);
                return api_error(c, 401, "token invalid");
        }
        r = cp_identity_resolve(c->tx, &c->api->identity, claims, CP_IDENTITY_LOGIN, &u, &err);
        if (r == -EPERM || r == -ENOENT || r == -EINVAL) {
                /* NetBird's middleware answers every refusal of the
                 * sign-in (allow list, wt_account_id mismatch) so. */
                (void) snprintf(c->err_detail, sizeof c->err_detail, "identity: %s", err.message);
                return api_error(c, 401, "token invalid");
        }
        if (r < 0)
                return api_internal(c, "identity", &err);
        r = take_token(c, "user", u.user_id);
        if (r < 0)
                return r;
        (void) snprintf(c->user_id, sizeof c->user_id, "%s", u.user_id);
        (void) snprintf(c->account_id, sizeof c->account_id, "%s", u.account_id);
        (void) snprintf(c->role, sizeof c->role, "%s", u.role);
        c->service_user = u.service_user;
        c->token_id[0] = '\0';
        if (u.new_user || u.serial > 0 || u.blocked || u.pending_approval) {
                /* What provisioning wrote stays even when the request is
                 * then refused (a pending user must be there to approve)
                 * or its handler fails: commit it on its own, as NetBird's
                 * middleware does before the handler runs. */
                r = commit_provisioning(c, u.serial);
                if (r < 0)
                        return r;
        }
        return check_status(c, u.blocked, u.pending_approval);
}

/* 429 as NetBird's auth middleware answers it, with the time to wait. */
static int rate_limited(api_ctx *c, const char *limit, int64_t retry_after_ms) {
        c->limited = limit;
        c->retry_after_ms = retry_after_ms;
        return api_error(c, 429, "too many requests");
}

/* One request of a caller (key: "pat:<hash>" or "user:<id>"): an IdP
 * user once signed in (authenticate_jwt), a PAT before the transaction
 * begins (limit_before_auth). */
static int take_token(api_ctx *c, const char *kind, const char *id) {
        char key[300];
        int64_t retry_ms = 0;
        int n;

        if (c->rate_taken)
                return 0;       /* a retry after a deadlock: taken once */
        c->rate_taken = true;
        n = snprintf(key, sizeof key, "%s:%s", kind, id);
        if (n < 0 || cp_ratelimit_take(c->api->rest_token_limit, key, (size_t) n < sizeof key ? (size_t) n :
                                       sizeof key - 1, cp_now_mono_ms(), &retry_ms))
                return 0;
        return rate_limited(c, "rest_token", retry_ms);
}

static int authenticate(api_ctx *c) {
        const char *h = c->req->authorization;
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char scheme[16], hash[CP_SHA256_B64_LEN];
        int r;

        if (c->req->as_user_id) {
                const char *p[1] = { c->req->as_user_id };
                r = api_sql(c, SQL_AUTH_USER, 1, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) != 1)
                        return api_error(c, 401, "no valid authentication provided");
                return fill_identity(c, rows);
        }

        /* "<scheme> <value>", exactly two parts. */
        const char *sp = h ? strchr(h, ' ') : NULL;
        if (!sp || sp == h || (size_t) (sp - h) >= sizeof scheme || strchr(sp + 1, ' ') || !sp[1])
                return api_error(c, 401, "no valid authentication provided");
        memcpy(scheme, h, (size_t) (sp - h));
        scheme[sp - h] = '\0';
        const char *value = sp + 1;
        bool is_token = strcasecmp(scheme, "token") == 0;
        bool is_bearer = strcasecmp(scheme, "bearer") == 0;
        if (!is_token && !is_bearer)
                return api_error(c, 401, "no valid authentication provided");
        if (strlen(h) > API_MAX_AUTHORIZATION)
                return api_error(c, 401, "token invalid");
        if (is_bearer && strncmp(value, "nbp_", 4) != 0)
                return authenticate_jwt(c, value);
        if (cp_crypto_pat_check(value) < 0)
                return api_error(c, 401, "token invalid");
        cp_crypto_pat_hash(value, hash);
        const char *p[1] = { hash };
        r = api_sql(c, SQL_AUTH_TOKEN, 1, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 401, "token invalid");
        r = fill_identity(c, rows);
        if (r < 0)
                return r;
        const char *u[2] = { c->account_id, c->token_id };
        return api_sql(c, SQL_TOKEN_USED, 2, u, NULL);
}

/* ---- the request ------------------------------------------------------------------- */

static const char SQL_LOCK_ACCOUNT[] =
        "SELECT network_serial, suspended_at IS NOT NULL FROM accounts WHERE id = $1 FOR UPDATE";
static const char SQL_BUMP_SERIAL[] =
        "UPDATE accounts SET network_serial = network_serial + 1 WHERE id = $1 RETURNING network_serial";

static void respond_error(api_ctx *c, cp_api_response *resp) {
        int status = c->err_status ? c->err_status : 500;
        const char *msg = c->err_status ? c->err_message : "internal server error";

        resp->status = status;
        cp_strbuf_reset(&resp->body);
        cp_strbuf_adds(&resp->body, "{\"message\":\"");
        cp_strbuf_add_json_escaped(&resp->body, msg);
        cp_strbuf_addf(&resp->body, "\",\"code\":%d}", status);
        (void) snprintf(resp->detail, sizeof resp->detail, "%s", c->err_detail);
        resp->retry_after = 0;
        resp->limited[0] = '\0';
        if (status == 429 && c->limited) {
                /* whole seconds, rounded up, at least 1 */
                resp->retry_after = (int) ((c->retry_after_ms + 999) / 1000);
                if (resp->retry_after < 1)
                        resp->retry_after = 1;
                (void) snprintf(resp->limited, sizeof resp->limited, "%s", c->limited);
        }
}

/* How often a request that lost a deadlock runs at most. */
#define API_ATTEMPTS 3

/* Forgets what the failed attempt produced; the route, the parameters,
 * the parsed body and the request stay. */
static void reset_for_retry(api_ctx *c) {
        cp_strbuf_reset(&c->out);
        c->status = 0;
        c->replied = false;
        c->changed = false;
        c->serial = 0;
        c->proxy_seq = 0;
        c->revoked_token[0] = '\0';
        c->gone_account[0] = '\0';
        c->gone_serial = 0;
        c->home_account_id[0] = c->home_role[0] = '\0';
        c->retryable = false;
        c->retry_after_ms = 0;
        c->limited = NULL;
        c->err_status = 0;
        c->err_message[0] = c->err_detail[0] = '\0';
}

/* Before a write: writes of one account take turns, on every replica;
 * a suspended account (cp/store-tenant.h) takes none (reads stay
 * allowed, so its users and its MSP still see it; docs/msp.md). */
static int lock_for_write(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        int r = api_sql(c, SQL_LOCK_ACCOUNT, 1, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 1 && cp_store_rows_bool(rows, 0, 1))
                return api_error(c, 403, "account is suspended");
        return 0;
}

/* The rate limit that needs no database, before the transaction: a
 * personal access token over its rate (keyed by its hash, as NetBird's
 * limiter keys by the token) costs no connection. The failed
 * authentications of an address are counted after authenticate()
 * (failed_auth): a valid credential is never refused for what others
 * behind the same address did. */
static int limit_before_auth(api_ctx *c) {
        const char *h = c->req->authorization;
        const char *sp = h ? strchr(h, ' ') : NULL;
        if (!sp || strlen(h) > API_MAX_AUTHORIZATION)
                return 0;
        size_t sl = (size_t) (sp - h);
        bool scheme_ok = (sl == 5 && strncasecmp(h, "token", 5) == 0) || (sl == 6 && strncasecmp(h, "bearer", 6) == 0);
        if (!scheme_ok || strncmp(sp + 1, "nbp_", 4) != 0 || cp_crypto_pat_check(sp + 1) < 0)
                return 0;       /* authenticate() answers it */
        char hash[CP_SHA256_B64_LEN];
        cp_crypto_pat_hash(sp + 1, hash);
        return take_token(c, "pat", hash);
}

/* A 401 from ip: counted against the address (an IPv6 one's /64); past its limit the
 * answer is 429 (guessing tokens stays slow) instead of 401. */
static int failed_auth(api_ctx *c, const char *ip, int r) {
        char key[CP_RATELIMIT_ADDR_KEY_LEN];
        size_t len = cp_ratelimit_addr_key(ip, key);
        int64_t retry_ms = 0;

        if (cp_ratelimit_take(c->api->rest_addr_limit, key, len, cp_now_mono_ms(), &retry_ms))
                return r;
        return rate_limited(c, "rest_addr", retry_ms);
}

/* Runs the matched route inside one transaction. */
static int run(api_ctx *c) {
        const char *ip = c->req->as_user_id ? NULL : c->req->remote_ip;
        cp_error err = { 0 };
        int r;

        if (c->route->module != API_MOD_PUBLIC && !c->req->as_user_id) {
                r = limit_before_auth(c);
                if (r < 0)
                        return r;
        }
        r = cp_store_tx_begin(c->api->store, &c->tx, &err);
        if (r < 0)
                return api_internal(c, "begin", &err);
        if (c->route->module != API_MOD_PUBLIC) {
                r = authenticate(c);
                if (r < 0 && c->err_status == 401 && ip && *ip)
                        return failed_auth(c, ip, r);
                if (r < 0)
                        return r;
                /* An MSP user acting inside a tenant (the dashboard adds
                 * ?account= to every call once a tenant is picked). */
                const char *acting = c->route->module != API_MOD_MSP ? c->acting_param : NULL;
                if (acting && *acting && strcmp(acting, c->account_id) != 0) {
                        r = api_msp_enter(c, acting);
                        if (r < 0)
                                return r;
                }
                if (!api_allowed(c, c->route->module, c->route->op))
                        return api_error(c, 403, "permission denied");
                if (c->route->op != API_READ) {
                        r = lock_for_write(c);
                        if (r < 0)
                                return r;
                }
        }
        r = c->route->fn(c);
        if (r < 0)
                return r;
        if (!c->replied)
                return api_internal(c, "handler gave no reply", NULL);
        if (c->changed) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *p[1] = { c->account_id };
                r = api_sql(c, SQL_BUMP_SERIAL, 1, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) == 1)
                        c->serial = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        }
        r = cp_store_tx_commit(c->tx, &err);
        c->tx = NULL;
        if (r < 0)
                return api_internal(c, "commit", &err);
        return 0;
}

void cp_api_handle(cp_api *api, const cp_api_request *req, cp_api_response *resp) {
        api_ctx c = { .api = api, .req = req };
        const char *method = req->method ? req->method : "GET";
        const char *path = req->path ? req->path : "/";

        cp_strbuf_init(&c.out);
        cp_strbuf_reset(&resp->body);
        resp->detail[0] = resp->route[0] = resp->account_id[0] = resp->user_id[0] = '\0';

        if (api->proxy_callback && strcmp(path, "/api/reverse-proxy/callback") == 0 &&
            (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)) {
                char *body = NULL;
                free(resp->location);
                resp->location = NULL;
                api->proxy_callback(req->query, req->remote, &resp->status, &resp->location, &body,
                                    api->proxy_callback_userdata);
                if (body)
                        cp_strbuf_adds(&resp->body, body);
                free(body);
                (void) snprintf(resp->route, sizeof resp->route, "/api/reverse-proxy/callback");
                cp_strbuf_release(&c.out);
                return;
        }
        found f = find_route(&c, method, path);
        if (f.route && !query_ok(req->query)) {
                api_error(&c, 400, "invalid query");
                respond_error(&c, resp);
        } else if (f.route) {
                c.route = f.route;
                /* Read once: a retry must not find the query slots used up. */
                c.acting_param = api_query(&c, "account");
                (void) snprintf(resp->route, sizeof resp->route, "%s", f.route->pattern);
                int r = run(&c);
                /* A deadlock with another writer (e.g. a registration that
                 * holds a setup key row and waits for the account row this
                 * request holds): PostgreSQL aborted us; try again. */
                for (int attempt = 1; r < 0 && c.retryable && attempt < API_ATTEMPTS; attempt++) {
                        c.tx = cp_store_tx_end(c.tx);
                        reset_for_retry(&c);
                        r = run(&c);
                }
                if (r == 0) {
                        resp->status = c.status;
                        /* Hand the body over rather than copy it: a peer
                         * list is tens of megabytes. */
                        cp_strbuf tmp = resp->body;
                        resp->body = c.out;
                        c.out = tmp;
                        if (c.changed && c.serial > 0 && api->announce)
                                api->announce(c.account_id, c.serial, api->announce_userdata);
                        if (c.gone_account[0] && api->announce)
                                api->announce(c.gone_account, c.gone_serial, api->announce_userdata);
                        if (c.proxy_seq > 0 && api->proxy_announce)
                                api->proxy_announce(c.proxy_seq, api->proxy_announce_userdata);
                        if (c.revoked_token[0] && api->proxy_token_revoked)
                                api->proxy_token_revoked(c.revoked_token, api->proxy_announce_userdata);
                } else
                        respond_error(&c, resp);
                c.tx = cp_store_tx_end(c.tx);
        } else if (f.bad_escape) {
                api_error(&c, 400, "invalid path");
                respond_error(&c, resp);
        } else if (f.path_known) {
                api_error(&c, 405, "method not allowed");
                respond_error(&c, resp);
        } else {
                api_error(&c, 404, "not found");
                respond_error(&c, resp);
        }
        (void) snprintf(resp->account_id, sizeof resp->account_id, "%s", c.account_id);
        (void) snprintf(resp->user_id, sizeof resp->user_id, "%s", c.user_id);
        free_params(&c);
        for (int i = 0; i < c.nqval; i++)
                free(c.qval[i]);
        if (c.body)
                json_decref(c.body);
        cp_strbuf_release(&c.out);
}

/* ---- lifetime ------------------------------------------------------------------------- */

int cp_api_new(const cp_api_options *o, cp_api **ret, cp_error *reterr) {
        if (!o || !o->store)
                return cp_error_set(reterr, -EINVAL, "the API needs a store");
        uint32_t dns_addr = 0;
        uint16_t dns_port = 0;
        if (o->msp_dns_server && *o->msp_dns_server) {
                int r = cp_api_parse_dns_server(o->msp_dns_server, &dns_addr, &dns_port, reterr);
                if (r < 0)
                        return r;
        }
        cp_api *api = cp_xcalloc(1, sizeof *api);
        api->msp_dns_addr = dns_addr;
        api->msp_dns_port = dns_port;
        api->rest_token_limit = o->rest_token_limit;
        api->rest_addr_limit = o->rest_addr_limit;
        api->store = o->store;
        api->dns_domain = cp_xstrdup(o->dns_domain ? o->dns_domain : "");
        api->version = cp_xstrdup(o->version ? o->version : "");
        api->announce = o->announce;
        api->announce_userdata = o->announce_userdata;
        api->snapshot_peek = o->snapshot_peek;
        api->snapshot_userdata = o->snapshot_userdata;
        api->peer_caches = api_peer_caches_new();
        api->jwt = o->jwt;
        api->geo = o->geo;
        api->proxy_announce = o->proxy_announce;
        api->proxy_token_revoked = o->proxy_token_revoked;
        api->proxy_announce_userdata = o->proxy_announce_userdata;
        if (o->data_key) {
                memcpy(api->data_key, o->data_key, sizeof api->data_key);
                api->has_data_key = true;
        }
        api->proxy_callback = o->proxy_callback;
        api->proxy_callback_userdata = o->proxy_callback_userdata;
        api->identity.single_account_domain =
                o->identity.single_account_domain ? cp_xstrdup(o->identity.single_account_domain) : NULL;
        *ret = api;
        return 0;
}

cp_api *cp_api_free(cp_api *api) {
        if (!api)
                return NULL;
        api->peer_caches = api_peer_caches_free(api->peer_caches);
        free(api->dns_domain);
        free(api->version);
        free((char *) api->identity.single_account_domain);
        cp_explicit_bzero(api->data_key, sizeof api->data_key);
        free(api);
        return NULL;
}

void cp_api_response_init(cp_api_response *resp) {
        memset(resp, 0, sizeof *resp);
        cp_strbuf_init(&resp->body);
}

void cp_api_response_release(cp_api_response *resp) {
        cp_strbuf_release(&resp->body);
        free(resp->location);
        resp->location = NULL;
}
