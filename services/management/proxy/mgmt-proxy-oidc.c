/*
 * The proxy's OIDC sign-in (proxy-and-api.md 1.6): GetOIDCURL starts an
 * authorization-code flow with PKCE at the configured IdP for a redirect
 * URL on one of the account's service domains; the IdP sends the browser
 * to GET /api/reverse-proxy/callback (HttpConfig.AuthCallbackURL), on any
 * replica, which checks the state's HMAC before it consumes the flow's
 * verifier (so a forged state cannot cancel someone's sign-in), exchanges
 * the code, verifies the ID token with the REST API's validator, and
 * sends the browser back to the service with a session token, or with
 * error=access_denied.
 *
 * The verifier lives in proxy_oidc_states under the hex SHA-256 of the
 * state for 10 minutes; the DELETE ... RETURNING that reads it makes each
 * flow usable once across replicas.
 */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/jwt.h"
#include "cp/log.h"
#include "cp/proxyauth.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "mgmt-proxy-rpc-int.h"

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>

#define HTTP_TIMEOUT_MS         5000
#define DOC_MAX                 (256 * 1024)
#define STATE_TTL_S             "600"

static const cp_log_ctx log_ctx = { .component = "proxy-oidc" };

/* ---- HTTP ------------------------------------------------------------------------ */

typedef struct body {
        cp_strbuf sb;
        bool too_big;
} body;

static size_t on_body(char *data, size_t size, size_t n, void *userdata) {
        body *b = userdata;

        if (b->sb.len + size * n > DOC_MAX) {
                b->too_big = true;
                return 0;
        }
        cp_strbuf_add(&b->sb, data, size * n);
        return size * n;
}

/* GET url (post == NULL) or POST the form post; the JSON answer of a 2xx
 * in *ret. */
static int http_json(const char *url, const char *post, json_t **ret, cp_error *reterr) {
        char errbuf[CURL_ERROR_SIZE] = "";
        body b = { 0 };
        long code = 0;
        CURL *h;
        CURLcode cr;

        h = curl_easy_init();
        if (!h)
                return cp_error_set(reterr, -ENOMEM, "curl_easy_init failed");
        cp_strbuf_init(&b.sb);
        (void) curl_easy_setopt(h, CURLOPT_URL, url);
        (void) curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        (void) curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long) HTTP_TIMEOUT_MS);
        (void) curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        (void) curl_easy_setopt(h, CURLOPT_USERAGENT, "netbird-cp-proxy-oidc/1");
        (void) curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        (void) curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
        if (post)
                (void) curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
        cr = curl_easy_perform(h);
        (void) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(h);
        if (cr != CURLE_OK) {
                cp_strbuf_release(&b.sb);
                return cp_error_set(reterr, -EIO, "%s: %s", url, b.too_big ? "answer too large" :
                                    *errbuf ? errbuf : curl_easy_strerror(cr));
        }
        if (code < 200 || code > 299) {
                cp_strbuf_release(&b.sb);
                return cp_error_set(reterr, -EIO, "%s answered HTTP %ld", url, code);
        }
        json_t *j = json_loadb(b.sb.buf, b.sb.len, 0, NULL);
        cp_strbuf_release(&b.sb);
        if (!json_is_object(j)) {
                json_decref(j);
                return cp_error_set(reterr, -EIO, "%s did not answer a JSON object", url);
        }
        *ret = j;
        return 0;
}

/* The IdP's endpoints from its discovery document (OIDCConfigEndpoint, else
 * AuthIssuer + /.well-known/openid-configuration), read on every use:
 * sign-ins are rare and the IdP may change them. */
static int discover(mgmt_prpc *p, char **ret_authorize, char **ret_token, cp_error *reterr) {
        _cleanup_free_ char *url = NULL;
        json_t *doc = NULL;
        int r;

        if (*p->oidc_config_endpoint)
                url = cp_xstrdup(p->oidc_config_endpoint);
        else if (*p->auth_issuer) {
                size_t n = strlen(p->auth_issuer);
                url = cp_xmalloc(n + 40);
                (void) snprintf(url, n + 40, "%.*s/.well-known/openid-configuration",
                                (int) (p->auth_issuer[n - 1] == '/' ? n - 1 : n), p->auth_issuer);
        } else
                return cp_error_set(reterr, -ENOENT, "no IdP configured (HttpConfig.AuthIssuer)");
        r = http_json(url, NULL, &doc, reterr);
        if (r < 0)
                return r;
        json_t *a = json_object_get(doc, "authorization_endpoint"), *t = json_object_get(doc, "token_endpoint");
        if (!json_is_string(a) || !json_is_string(t)) {
                json_decref(doc);
                return cp_error_set(reterr, -EIO, "the discovery document has no authorization or token endpoint");
        }
        *ret_authorize = cp_xstrdup(json_string_value(a));
        *ret_token = cp_xstrdup(json_string_value(t));
        json_decref(doc);
        return 0;
}

/* ---- URLs ----------------------------------------------------------------------------- */

static void add_param(cp_strbuf *sb, bool *first, const char *k, const char *v) {
        char *e = curl_easy_escape(NULL, v, 0);

        cp_strbuf_addf(sb, "%s%s=%s", *first ? "" : "&", k, e ? e : "");
        *first = false;
        curl_free(e);
}

/* The host of an http(s) URL (lower case, no port, brackets stripped),
 * or -EINVAL. */
static int url_host(const char *url, char **ret_host) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL;
        int r = -EINVAL;

        if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
                size_t n = strlen(host);
                if (n > 1 && host[0] == '[' && host[n - 1] == ']') {
                        memmove(host, host + 1, n - 2);
                        host[n - 2] = 0;
                }
                *ret_host = cp_xstrdup(host);
                r = 0;
        }
        curl_free(scheme);
        curl_free(host);
        curl_url_cleanup(u);
        return r;
}

static void hex_sha256(const char *s, char out[65]) {
        uint8_t d[32];

        cp_crypto_sha256(s, strlen(s), d);
        sodium_bin2hex(out, 65, d, sizeof d);
}

/* ---- GetOIDCURL ------------------------------------------------------------------------ */

void prpc_get_oidc_url(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__GetOIDCURLRequest *req,
                       mgmt_prpc_reply *ret) {
        _cleanup_free_ char *host = NULL, *authorize = NULL, *token_ep = NULL, *state = NULL;
        _cleanup_rows_ cp_store_rows *rows = NULL;
        uint8_t vbytes[32], challenge[32];
        char verifier[64], chal[64], state_hash[65];
        cp_error err = { 0 };
        int r;

        if (!prpc_scope_ok(who, req->account_id, ret))
                return;
        if (strlen(req->redirect_url) > 4096 || url_host(req->redirect_url, &host) < 0)
                return prpc_fail(ret, GRPC_STATUS_INVALID_ARGUMENT,
                                 "redirect URL must be a valid http or https URL");
        const char *q[2] = { req->account_id, host };
        r = prpc_exec(p, "SELECT id FROM services WHERE account_id = $1 AND domain = $2", 2, q, &rows, &err);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_FAILED_PRECONDITION, "get account services: %s", err.message);
        if (cp_store_rows_count(rows) != 1)
                return prpc_fail(ret, GRPC_STATUS_FAILED_PRECONDITION, "service not found in store");
        r = discover(p, &authorize, &token_ep, &err);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_FAILED_PRECONDITION, "create OIDC provider: %s", err.message);

        r = cp_proxyauth_state_new(p->data_key, req->redirect_url, &state, &err);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "generate state: %s", err.message);
        cp_random_bytes(vbytes, sizeof vbytes);
        sodium_bin2base64(verifier, sizeof verifier, vbytes, sizeof vbytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        cp_crypto_sha256(verifier, strlen(verifier), challenge);
        sodium_bin2base64(chal, sizeof chal, challenge, sizeof challenge, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        hex_sha256(state, state_hash);
        const char *ins[5] = { state_hash, req->account_id, cp_store_rows_get(rows, 0, 0), verifier,
                               req->redirect_url };
        r = prpc_exec(p, "INSERT INTO proxy_oidc_states (state_hash, account_id, service_id, verifier, redirect_url,"
                      " expires_at) VALUES ($1, $2, $3, $4, $5, CURRENT_TIMESTAMP + " STATE_TTL_S
                      " * interval '1 second')", 5, ins, NULL, &err);
        cp_explicit_bzero(verifier, sizeof verifier);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "store PKCE verifier: %s", err.message);

        /* Go's oauth2 AuthCodeURL: parameters sorted by name. */
        cp_strbuf sb;
        bool first = true;
        cp_strbuf_init(&sb);
        cp_strbuf_adds(&sb, authorize);
        cp_strbuf_addch(&sb, strchr(authorize, '?') ? '&' : '?');
        add_param(&sb, &first, "client_id", p->auth_client_id);
        add_param(&sb, &first, "code_challenge", chal);
        add_param(&sb, &first, "code_challenge_method", "S256");
        if (*p->auth_callback_url)
                add_param(&sb, &first, "redirect_uri", p->auth_callback_url);
        add_param(&sb, &first, "response_type", "code");
        add_param(&sb, &first, "scope", "openid profile email");
        add_param(&sb, &first, "state", state);
        Management__GetOIDCURLResponse resp = MANAGEMENT__GET_OIDCURLRESPONSE__INIT;
        resp.url = sb.buf;
        prpc_ok(ret, &resp.base);
        cp_strbuf_release(&sb);
}

/* ---- the callback ------------------------------------------------------------------------ */

/* The value of name in a query string, decoded; NULL when absent. */
static char *query_get(const char *query, const char *name) {
        size_t n = strlen(name);

        for (const char *s = query; s && *s;) {
                const char *amp = strchr(s, '&'), *end = amp ? amp : s + strlen(s);
                if ((size_t) (end - s) > n && strncmp(s, name, n) == 0 && s[n] == '=') {
                        int len = 0;
                        _cleanup_free_ char *raw = strndup(s + n + 1, (size_t) (end - s - (ptrdiff_t) n - 1));
                        for (char *c = raw; *c; c++)
                                if (*c == '+')
                                        *c = ' ';
                        char *dec = curl_easy_unescape(NULL, raw, 0, &len);
                        char *out = dec && (size_t) len == strlen(dec) ? cp_xstrdup(dec) : NULL;
                        curl_free(dec);
                        return out;
                }
                s = amp ? amp + 1 : end;
        }
        return NULL;
}

static char *error_body(const char *msg, int code) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_adds(&sb, "{\"message\":\"");
        cp_strbuf_add_json_escaped(&sb, msg);
        cp_strbuf_addf(&sb, "\",\"code\":%d}", code);
        return cp_strbuf_detach(&sb);
}

static char *redirect_with(const char *url, const char *k1, const char *v1, const char *k2, const char *v2) {
        cp_strbuf sb;
        bool first = false;
        const char *hash = strchr(url, '#');
        size_t base = hash ? (size_t) (hash - url) : strlen(url);

        cp_strbuf_init(&sb);
        cp_strbuf_add(&sb, url, base);
        cp_strbuf_addch(&sb, memchr(url, '?', base) ? '&' : '?');
        first = true;
        add_param(&sb, &first, k1, v1);
        if (k2)
                add_param(&sb, &first, k2, v2);
        return cp_strbuf_detach(&sb);
}

/* The session token for an IdP user of the service's account, or the
 * reason there is none ("" reason and NULL token = internal failure). */
static int mint_for_user(mgmt_prpc *p, const char *account_id, const char *service_id, const char *user_id,
                         char **ret_token, const char **ret_denied, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        prpc_service s = { 0 };
        const char *params[2] = { account_id, user_id };
        int r;

        /* last_login is written by the same statement that reads the user,
         * only when the user may sign in. */
        r = prpc_exec(p, "WITH u AS (SELECT id, email, pii_key, blocked, pending_approval, auto_groups FROM users"
                      " WHERE account_id = $1 AND id = $2 FOR NO KEY UPDATE),"
                      " w AS (UPDATE users x SET last_login = CURRENT_TIMESTAMP FROM u"
                      " WHERE x.account_id = $1 AND x.id = u.id AND NOT u.blocked AND NOT u.pending_approval)"
                      " SELECT " CP_PII_SQL("u.pii_key", "u.email") ", u.blocked, u.pending_approval,"
                      " COALESCE((SELECT json_agg(json_build_array(g.id, g.name) ORDER BY a.ord)"
                      " FROM unnest(u.auto_groups) WITH ORDINALITY a(gid, ord)"
                      " JOIN groups g ON g.account_id = $1 AND g.id = a.gid), '[]')::text FROM u",
                      2, params, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1) {
                *ret_denied = "user not found in the service's account";
                return 0;
        }
        if (cp_store_rows_bool(rows, 0, 2) || cp_store_rows_bool(rows, 0, 1)) {
                *ret_denied = cp_store_rows_bool(rows, 0, 2) ? "user pending approval" : "user blocked";
                return 0;
        }
        r = prpc_service_get(p, account_id, service_id, NULL, &s, reterr);
        if (r < 0)
                return r;
        json_auto_t *g = json_loads(cp_store_rows_get(rows, 0, 3), 0, NULL);
        size_t n = json_array_size(g), i;
        _cleanup_free_ const char **ids = cp_xcalloc(n + 1, sizeof *ids);
        _cleanup_free_ const char **names = cp_xcalloc(n + 1, sizeof *names);
        json_t *e;
        json_array_foreach(g, i, e) {
                ids[i] = json_string_value(json_array_get(e, 0));
                names[i] = json_string_value(json_array_get(e, 1));
        }
        _cleanup_free_ char *email = cp_pii_open_marked(cp_store_rows_get(rows, 0, 0));
        r = prpc_session_mint(p, &s, user_id, email, "oidc", ids, names, n, ret_token, reterr);
        prpc_service_release(&s);
        return r;
}

/* NetBird's limit on the callback: 10 a minute per client address,
 * bursts of 15. true when the call may go on. */
static bool callback_allowed(mgmt_prpc *p, const char *remote) {
        char addr[80];
        uint64_t h = 1469598103934665603ULL;
        int64_t now = cp_now_mono_ms();
        bool ok;

        if (!remote || !*remote)
                return true;
        (void) snprintf(addr, sizeof addr, "%s", remote);
        char *colon = strrchr(addr, ':');       /* "address:port"; IPv6 has more colons before */
        if (colon)
                *colon = 0;
        for (const char *c = addr; *c; c++)
                h = (h ^ (uint8_t) *c) * 1099511628211ULL;
        h |= 1;
        pthread_mutex_lock(&p->cb_lock);
        prpc_bucket *b = &p->cb_buckets[h % PRPC_CB_BUCKETS];
        if (b->key != h)
                *b = (prpc_bucket) { .key = h, .tokens = 15, .at_ms = now };
        b->tokens += (double) (now - b->at_ms) / 6000.0;
        if (b->tokens > 15)
                b->tokens = 15;
        b->at_ms = now;
        ok = b->tokens >= 1;
        if (ok)
                b->tokens -= 1;
        pthread_mutex_unlock(&p->cb_lock);
        return ok;
}

void mgmt_prpc_oidc_callback(mgmt_prpc *p, const char *query, const char *remote, int *ret_status,
                             char **ret_location, char **ret_body) {
        _cleanup_free_ char *state = query_get(query, "state"), *code = query_get(query, "code");
        _cleanup_free_ char *redirect = NULL, *authorize = NULL, *token_ep = NULL, *token = NULL;
        _cleanup_rows_ cp_store_rows *rows = NULL;
        _cleanup_jwt_claims_ cp_jwt_claims *claims = NULL;
        char state_hash[65];
        const char *denied = NULL;
        json_t *tok = NULL;
        cp_error err = { 0 };
        int r;

        *ret_location = *ret_body = NULL;
        if (!callback_allowed(p, remote)) {
                *ret_status = 429;
                *ret_body = error_body("too many requests", 429);
                return;
        }
        if (!state || cp_proxyauth_state_check(p->data_key, state, &redirect, &err) < 0) {
                *ret_status = 400;
                *ret_body = error_body("invalid state", 400);
                return;
        }
        /* Only now, with the HMAC checked, is the flow consumed. */
        hex_sha256(state, state_hash);
        const char *params[1] = { state_hash };
        r = prpc_exec(p, "DELETE FROM proxy_oidc_states WHERE state_hash = $1 AND expires_at > CURRENT_TIMESTAMP"
                      " RETURNING account_id, service_id, verifier, redirect_url", 1, params, &rows, &err);
        if (r < 0 || cp_store_rows_count(rows) != 1) {
                *ret_status = 400;
                *ret_body = error_body("invalid state: no verifier for state", 400);
                return;
        }
        if (!code) {
                *ret_status = 302;
                *ret_location = redirect_with(redirect, "error", "access_denied", "error_description",
                                              "the identity provider returned no code");
                return;
        }
        r = discover(p, &authorize, &token_ep, &err);
        if (r >= 0) {
                cp_strbuf form;
                bool first = true;
                cp_strbuf_init(&form);
                add_param(&form, &first, "grant_type", "authorization_code");
                add_param(&form, &first, "code", code);
                add_param(&form, &first, "redirect_uri", p->auth_callback_url);
                add_param(&form, &first, "client_id", p->auth_client_id);
                add_param(&form, &first, "code_verifier", cp_store_rows_get(rows, 0, 2));
                if (*p->auth_client_secret)
                        add_param(&form, &first, "client_secret", p->auth_client_secret);
                r = http_json(token_ep, form.buf, &tok, &err);
                cp_explicit_bzero(form.buf, form.len);
                cp_strbuf_release(&form);
        }
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "proxy OIDC code exchange failed", "error", err.message, NULL);
                *ret_status = 500;
                *ret_body = error_body("failed to exchange code", 500);
                return;
        }
        json_t *id_token = json_object_get(tok, "id_token");
        if (!json_is_string(id_token) || !p->jwt ||
            cp_jwt_validate(p->jwt, json_string_value(id_token), &claims, &err) < 0) {
                bool present = json_is_string(id_token);
                json_decref(tok);
                *ret_status = 401;
                *ret_body = error_body(present ? "invalid id_token" : "missing id_token", 401);
                return;
        }
        json_decref(tok);
        r = mint_for_user(p, cp_store_rows_get(rows, 0, 0), cp_store_rows_get(rows, 0, 1), claims->user_id, &token,
                          &denied, &err);
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "proxy OIDC session token failed", "error", err.message, NULL);
                *ret_status = 500;
                *ret_body = error_body("failed to create session", 500);
                return;
        }
        *ret_status = 302;
        if (denied)
                *ret_location = redirect_with(redirect, "error", "access_denied", "error_description", denied);
        else
                *ret_location = redirect_with(redirect, "session_token", token, NULL, NULL);
}
