/*
 * jwt.c: cp_jwt's configuration, token validation (header, key choice,
 * signature with cjose, claims) and the verified-token cache. The keys
 * themselves live in jwt-keys.c.
 */
#include "cp/base.h"
#include "cp/jwt.h"

#include <jansson.h>
#include <openssl/evp.h>

#include "jwt-int.h"

#define DEFAULT_LEEWAY_S        60
#define DEFAULT_COOLDOWN_MS     30000
#define DEFAULT_MAX_AGE_S       3600
#define DEFAULT_TIMEOUT_MS      5000
#define DEFAULT_CACHE_ENTRIES   4096

/* Algorithms accepted and the key each needs; everything else (none,
 * HS*, unknown names) is refused before a key is even looked at. */
static const struct alg_rule {
        const char *alg;
        cp_jwt_kty kty;
        int crv;                        /* EC curve; ignored for RSA */
} alg_rules[] = {
        { "RS256", CP_JWT_KTY_RSA, 0 },
        { "RS384", CP_JWT_KTY_RSA, 0 },
        { "RS512", CP_JWT_KTY_RSA, 0 },
        { "PS256", CP_JWT_KTY_RSA, 0 },
        { "PS384", CP_JWT_KTY_RSA, 0 },
        { "PS512", CP_JWT_KTY_RSA, 0 },
        { "ES256", CP_JWT_KTY_EC, CJOSE_JWK_EC_P_256 },
        { "ES384", CP_JWT_KTY_EC, CJOSE_JWK_EC_P_384 },
        { "ES512", CP_JWT_KTY_EC, CJOSE_JWK_EC_P_521 },
};

static bool is_http_url(const char *s) {
        return s && (strncasecmp(s, "https://", 8) == 0 || strncasecmp(s, "http://", 7) == 0) &&
               s[strcspn(s, ":") + 3] != '\0' && !strpbrk(s, " \t\r\n");
}

static bool empty(const char *s) {
        return !s || !s[0];
}

int cp_jwt_new(const cp_jwt_config *cfg, cp_jwt **ret, cp_error *reterr) {
        cp_jwt *j;
        int r;

        if (empty(cfg->issuer) && empty(cfg->oidc_config_endpoint))
                return cp_error_set(reterr, -EINVAL, "JWT: neither an issuer nor an OIDC config endpoint is set");
        if (empty(cfg->keys_location) && empty(cfg->oidc_config_endpoint))
                return cp_error_set(reterr, -EINVAL, "JWT: neither a keys location nor an OIDC config endpoint is set");
        if (!empty(cfg->keys_location) && !is_http_url(cfg->keys_location))
                return cp_error_set(reterr, -EINVAL, "JWT: keys location %s is not an http(s) URL", cfg->keys_location);
        if (!empty(cfg->oidc_config_endpoint) && !is_http_url(cfg->oidc_config_endpoint))
                return cp_error_set(reterr, -EINVAL, "JWT: OIDC config endpoint %s is not an http(s) URL",
                                    cfg->oidc_config_endpoint);

        j = cp_xcalloc(1, sizeof *j);
        for (size_t i = 0; i < CP_JWT_MAX_AUDIENCES; i++) {
                const char *a = cfg->audiences[i];
                bool dup = false;
                if (empty(a))
                        continue;
                for (size_t k = 0; k < j->n_audiences; k++)
                        dup = dup || strcmp(j->audiences[k], a) == 0;
                if (!dup)
                        j->audiences[j->n_audiences++] = cp_xstrdup(a);
        }
        if (j->n_audiences == 0) {
                cp_jwt_free(j);
                return cp_error_set(reterr, -EINVAL, "JWT: no audience is set");
        }
        /* NetBird's custom claims are named url.JoinPath(AuthAudience, name). */
        size_t alen = strlen(j->audiences[0]);
        while (alen > 0 && j->audiences[0][alen - 1] == '/')
                alen--;
        j->claim_prefix = cp_xasprintf("%.*s/", (int) alen, j->audiences[0]);
        j->cfg_issuer = cp_xstrdup(cfg->issuer ? cfg->issuer : "");
        j->cfg_keys_location = cp_xstrdup(cfg->keys_location ? cfg->keys_location : "");
        j->oidc_endpoint = empty(cfg->oidc_config_endpoint) ? NULL : cp_xstrdup(cfg->oidc_config_endpoint);
        j->user_id_claim = cp_xstrdup(empty(cfg->user_id_claim) ? "sub" : cfg->user_id_claim);
        j->ca_file = empty(cfg->ca_file) ? NULL : cp_xstrdup(cfg->ca_file);
        j->key_refresh_enabled = cfg->key_refresh_enabled;
        j->leeway_s = cfg->leeway_s == 0 ? DEFAULT_LEEWAY_S : cfg->leeway_s < 0 ? 0 : cfg->leeway_s;
        j->cooldown_ms = cfg->refetch_cooldown_ms > 0 ? cfg->refetch_cooldown_ms : DEFAULT_COOLDOWN_MS;
        j->default_max_age_s = cfg->default_max_age_s > 0 ? cfg->default_max_age_s : DEFAULT_MAX_AGE_S;
        j->http_timeout_ms = cfg->http_timeout_ms > 0 ? cfg->http_timeout_ms : DEFAULT_TIMEOUT_MS;
        j->now_s = cfg->now_s;

        size_t n = cfg->cache_entries ? cfg->cache_entries : DEFAULT_CACHE_ENTRIES;
        j->cache_sets = (n + CP_JWT_CACHE_WAYS - 1) / CP_JWT_CACHE_WAYS;
        j->cache = cp_xcalloc(j->cache_sets * CP_JWT_CACHE_WAYS, sizeof *j->cache);
        pthread_mutex_init(&j->cache_lock, NULL);

        r = cp_jwt_keys_start(j, reterr);
        if (r < 0) {
                cp_jwt_free(j);
                return r;
        }
        *ret = j;
        return 0;
}

cp_jwt *cp_jwt_free(cp_jwt *j) {
        if (!j)
                return NULL;
        cp_jwt_keys_stop(j);
        if (j->cache) {
                for (size_t i = 0; i < j->cache_sets * CP_JWT_CACHE_WAYS; i++)
                        json_decref(j->cache[i].payload);
                free(j->cache);
                pthread_mutex_destroy(&j->cache_lock);
        }
        for (size_t i = 0; i < j->n_audiences; i++)
                free(j->audiences[i]);
        free(j->claim_prefix);
        free(j->cfg_issuer);
        free(j->cfg_keys_location);
        free(j->oidc_endpoint);
        free(j->user_id_claim);
        free(j->ca_file);
        free(j);
        return NULL;
}

static int64_t now_s(cp_jwt *j) {
        return j->now_s ? j->now_s() : (int64_t) time(NULL);
}

/* ---- verified-token cache ---- */

static cp_jwt_cache_entry *cache_set(cp_jwt *j, const uint8_t hash[32]) {
        uint64_t h;

        memcpy(&h, hash, sizeof h);
        return &j->cache[(h % j->cache_sets) * CP_JWT_CACHE_WAYS];
}

static void cache_drop(cp_jwt_cache_entry *e) {
        json_decref(e->payload);
        memset(e, 0, sizeof *e);
}

/* 1 and a copy of the payload on a hit, -EKEYEXPIRED (entry dropped) when
 * the remembered token has expired since, 0 on a miss. */
static int cache_lookup(cp_jwt *j, const uint8_t hash[32], int64_t now, json_t **ret_payload, int64_t *ret_exp) {
        int r = 0;

        pthread_mutex_lock(&j->cache_lock);
        cp_jwt_cache_entry *set = cache_set(j, hash);
        for (size_t i = 0; i < CP_JWT_CACHE_WAYS; i++) {
                cp_jwt_cache_entry *e = &set[i];
                if (!e->used || memcmp(e->hash, hash, 32) != 0)
                        continue;
                *ret_exp = e->exp;
                if (now > e->exp + j->leeway_s) {
                        cache_drop(e);
                        r = -EKEYEXPIRED;
                } else {
                        e->stamp = ++j->cache_clock;
                        *ret_payload = json_deep_copy(e->payload);
                        r = *ret_payload ? 1 : 0;
                }
                break;
        }
        pthread_mutex_unlock(&j->cache_lock);
        return r;
}

static void cache_insert(cp_jwt *j, const uint8_t hash[32], int64_t exp, json_t *payload, int64_t now) {
        pthread_mutex_lock(&j->cache_lock);
        cp_jwt_cache_entry *set = cache_set(j, hash), *victim = &set[0];
        for (size_t i = 0; i < CP_JWT_CACHE_WAYS; i++) {
                cp_jwt_cache_entry *e = &set[i];
                if (!e->used || memcmp(e->hash, hash, 32) == 0 || now > e->exp + j->leeway_s) {
                        victim = e;
                        break;
                }
                if (e->stamp < victim->stamp)
                        victim = e;
        }
        cache_drop(victim);
        victim->used = true;
        memcpy(victim->hash, hash, 32);
        victim->exp = exp;
        victim->stamp = ++j->cache_clock;
        victim->payload = json_deep_copy(payload);
        if (!victim->payload)
                cache_drop(victim);
        pthread_mutex_unlock(&j->cache_lock);
}

/* ---- claims ---- */

static char *str_claim(json_t *payload, const char *name) {
        const char *s = json_string_value(json_object_get(payload, name));
        return cp_xstrdup(s ? s : "");
}

/* NetBird's wt_* claims: "<AuthAudience>/<name>", else the bare name. */
static char *wt_claim(cp_jwt *j, json_t *payload, const char *name) {
        _cleanup_free_ char *full = cp_xasprintf("%s%s", j->claim_prefix, name);
        const char *s = json_string_value(json_object_get(payload, full));

        if (!s)
                s = json_string_value(json_object_get(payload, name));
        return cp_xstrdup(s ? s : "");
}

/* Reads a NumericDate; 0 when absent, -EINVAL when not a number. */
static int time_claim(json_t *payload, const char *name, int64_t *ret) {
        json_t *v = json_object_get(payload, name);
        double d;

        *ret = 0;
        if (!v)
                return 0;
        if (!json_is_number(v))
                return -EINVAL;
        d = json_number_value(v);
        if (!(d > -1e15 && d < 1e15))
                return -EINVAL;
        *ret = (int64_t) d;
        return 1;
}

/* Builds the claims of an already verified payload (takes the reference). */
static int make_claims(cp_jwt *j, json_t *payload, const char *hex, cp_jwt_claims **ret, cp_error *reterr) {
        const char *uid = json_string_value(json_object_get(payload, j->user_id_claim));
        cp_jwt_claims *c;

        if (!uid || !uid[0]) {
                json_decref(payload);
                return cp_error_set(reterr, -EACCES, "token has no user id claim \"%s\"", j->user_id_claim);
        }
        c = cp_xcalloc(1, sizeof *c);
        c->user_id = cp_xstrdup(uid);
        c->email = str_claim(payload, "email");
        c->name = str_claim(payload, "name");
        c->account_id = wt_claim(j, payload, "wt_account_id");
        c->domain = wt_claim(j, payload, "wt_account_domain");
        c->domain_category = wt_claim(j, payload, "wt_account_domain_category");
        (void) time_claim(payload, "exp", &c->exp);
        (void) time_claim(payload, "iat", &c->iat);
        (void) snprintf(c->token_hash, sizeof c->token_hash, "%s", hex);
        c->payload = payload;
        *ret = c;
        return 0;
}

static bool audience_ok(cp_jwt *j, json_t *aud) {
        size_t i;
        json_t *v;

        if (json_is_string(aud)) {
                for (size_t k = 0; k < j->n_audiences; k++)
                        if (strcmp(json_string_value(aud), j->audiences[k]) == 0)
                                return true;
                return false;
        }
        json_array_foreach(aud, i, v) {
                if (json_is_string(v) && audience_ok(j, v))
                        return true;
        }
        return false;
}

/* The claim checks of RFC 7519 as NetBird's validator applies them. */
static int check_claims(cp_jwt *j, json_t *payload, const char *issuer, int64_t now, int64_t *ret_exp,
                        cp_error *reterr) {
        json_t *aud = json_object_get(payload, "aud");
        const char *iss = json_string_value(json_object_get(payload, "iss"));
        int64_t exp, nbf, iat;

        if (!iss || strcmp(iss, issuer) != 0)
                return cp_error_set(reterr, -EACCES, "token issuer is not %s", issuer);
        if (!aud || (!json_is_string(aud) && !json_is_array(aud)))
                return cp_error_set(reterr, -EACCES, "token has no audience");
        if (!audience_ok(j, aud))
                return cp_error_set(reterr, -EACCES, "token audience is none of the %zu accepted", j->n_audiences);
        if (time_claim(payload, "exp", &exp) < 0 || time_claim(payload, "nbf", &nbf) < 0 ||
            time_claim(payload, "iat", &iat) < 0)
                return cp_error_set(reterr, -EACCES, "token exp, nbf or iat is not a number");
        if (json_object_get(payload, "exp") && now > exp + j->leeway_s)
                return cp_error_set(reterr, -EKEYEXPIRED, "token expired %" PRId64 " s ago", now - exp);
        if (json_object_get(payload, "nbf") && now + j->leeway_s < nbf)
                return cp_error_set(reterr, -EACCES, "token not valid for another %" PRId64 " s (nbf)", nbf - now);
        if (json_object_get(payload, "iat") && now + j->leeway_s < iat)
                return cp_error_set(reterr, -EACCES, "token issued %" PRId64 " s in the future (iat)", iat - now);
        *ret_exp = json_object_get(payload, "exp") ? exp : 0;
        return 0;
}

bool cp_jwt_b64url_ok(const char *s, size_t n) {
        /* A length of 4k+1 leaves 6 bits that make no byte. */
        if (n % 4 == 1)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '_'))
                        return false;
        }
        return true;
}

/* Three base64url segments (RFC 7515 compact form, no padding), checked
 * before cjose decodes any: Debian's libcjose 0.6 aborts the process on an
 * assertion for some malformed base64url (a stray '=' inside a segment;
 * found by tests/fuzz, fuzz_jwt). */
static bool compact_ok(const char *token, size_t len) {
        const char *p = token, *end = token + len;

        for (int part = 0; part < 3; part++) {
                const char *dot = memchr(p, '.', (size_t) (end - p));
                const char *e = part < 2 ? dot : end;
                if (!e || (part == 2 && dot) || !cp_jwt_b64url_ok(p, (size_t) (e - p)))
                        return false;
                p = e + 1;
        }
        return true;
}

/* The protected header, decoded before cjose sees the token, so refused
 * algorithms get a precise message. */
static json_t *decode_header(const char *token, size_t len) {
        const char *dot = memchr(token, '.', len);
        uint8_t *raw = NULL;
        size_t rawlen = 0;
        cjose_err cerr;
        json_error_t jerr;
        json_t *h;

        if (!dot || !cjose_base64url_decode(token, (size_t) (dot - token), &raw, &rawlen, &cerr))
                return NULL;
        h = json_loadb((const char *) raw, rawlen, JSON_REJECT_DUPLICATES, &jerr);
        free(raw);
        if (!json_is_object(h)) {
                json_decref(h);
                return NULL;
        }
        return h;
}

static const struct alg_rule *find_alg(const char *alg) {
        for (size_t i = 0; i < ELEMENTSOF(alg_rules); i++)
                if (strcmp(alg_rules[i].alg, alg) == 0)
                        return &alg_rules[i];
        return NULL;
}

static int key_allows(const cp_jwt_key *k, const struct alg_rule *rule, cp_error *reterr) {
        if (k->kty != rule->kty)
                return cp_error_set(reterr, -EACCES, "algorithm %s does not fit the %s key %s", rule->alg,
                                    k->kty == CP_JWT_KTY_RSA ? "RSA" : "EC", k->kid ? k->kid : "(no kid)");
        if (rule->kty == CP_JWT_KTY_EC && k->crv != rule->crv)
                return cp_error_set(reterr, -EACCES, "algorithm %s does not fit the curve of key %s", rule->alg,
                                    k->kid ? k->kid : "(no kid)");
        if (k->alg && strcmp(k->alg, rule->alg) != 0)
                return cp_error_set(reterr, -EACCES, "key %s is for %s, the token says %s",
                                    k->kid ? k->kid : "(no kid)", k->alg, rule->alg);
        return 0;
}

DEFINE_TRIVIAL_CLEANUP_FUNC(cp_jwt_keyset *, cp_jwt_keyset_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(cjose_jws_t *, cjose_jws_release);

static int validate(cp_jwt *j, const char *token, cp_jwt_claims **ret, cp_error *reterr) {
        _cleanup_(json_decrefp) json_t *hdr = NULL, *payload = NULL;
        _cleanup_(cp_jwt_keyset_unrefp) cp_jwt_keyset *ks = NULL;
        _cleanup_(cjose_jws_releasep) cjose_jws_t *jws = NULL;
        _cleanup_free_ char *issuer = NULL;
        uint8_t hash[32];
        unsigned int hlen = 0;
        char hex[65];
        cjose_err cerr;
        size_t len;
        int64_t now, exp = 0;
        int r;

        len = token ? strnlen(token, CP_JWT_MAX_TOKEN_LEN + 1) : 0;
        if (len == 0)
                return cp_error_set(reterr, -EACCES, "no token");
        if (len > CP_JWT_MAX_TOKEN_LEN)
                return cp_error_set(reterr, -E2BIG, "token longer than %d bytes", CP_JWT_MAX_TOKEN_LEN);
        if (!compact_ok(token, len))
                return cp_error_set(reterr, -EACCES, "malformed token (not three base64url segments)");
        if (!EVP_Digest(token, len, hash, &hlen, EVP_sha256(), NULL) || hlen != sizeof hash)
                return cp_error_set(reterr, -EIO, "SHA-256 failed");
        for (size_t i = 0; i < sizeof hash; i++)
                (void) snprintf(hex + 2 * i, 3, "%02x", hash[i]);

        now = now_s(j);
        r = cache_lookup(j, hash, now, &payload, &exp);
        if (r == -EKEYEXPIRED)
                return cp_error_set(reterr, -EKEYEXPIRED, "token expired %" PRId64 " s ago", now - exp);
        if (r > 0) {
                atomic_fetch_add(&j->n_cache_hits, 1);
                return make_claims(j, TAKE_PTR(payload), hex, ret, reterr);
        }

        ks = cp_jwt_keys_current(j, &issuer);
        if (!ks) {
                char why[384];
                cp_jwt_keys_kick(j);
                (void) cp_jwt_status(j, why, sizeof why);
                return cp_error_set(reterr, -EAGAIN, "no IdP signing keys yet: %s", why);
        }

        hdr = decode_header(token, len);
        if (!hdr)
                return cp_error_set(reterr, -EACCES, "malformed token (header)");
        const char *alg = json_string_value(json_object_get(hdr, "alg"));
        json_t *kidv = json_object_get(hdr, "kid");
        const char *kid = json_string_value(kidv);
        if (!alg)
                return cp_error_set(reterr, -EACCES, "token header has no alg");
        const struct alg_rule *rule = find_alg(alg);
        if (!rule)
                return cp_error_set(reterr, -EACCES, "token algorithm %.32s refused", alg);
        if (kidv && !kid)
                return cp_error_set(reterr, -EACCES, "token kid is not a string");
        if (json_object_get(hdr, "crit"))
                return cp_error_set(reterr, -EACCES, "token header has crit extensions");

        const cp_jwt_key *key = cp_jwt_keyset_find(ks, kid);
        if (!key && kid && j->key_refresh_enabled) {
                cp_jwt_keyset_unref(ks);
                ks = cp_jwt_keys_refetch_unknown_kid(j);
                key = cp_jwt_keyset_find(ks, kid);
        }
        if (!key) {
                if (!kid)
                        return cp_error_set(reterr, -EACCES, "token has no kid and the IdP has %zu keys", ks ? ks->n : 0);
                return cp_error_set(reterr, -EACCES, "token kid %.64s is unknown%s", kid,
                                    j->key_refresh_enabled ? "" :
                                    " (IdpSignKeyRefreshEnabled would refetch the keys for it)");
        }
        r = key_allows(key, rule, reterr);
        if (r < 0)
                return r;

        jws = cjose_jws_import(token, len, &cerr);
        if (!jws)
                return cp_error_set(reterr, -EACCES, "malformed token (%s)", cerr.message);
        if (!cjose_jws_verify(jws, key->jwk, &cerr))
                return cp_error_set(reterr, -EACCES, "token signature does not verify with key %s",
                                    key->kid ? key->kid : "(no kid)");
        uint8_t *pt = NULL;
        size_t ptlen = 0;
        if (!cjose_jws_get_plaintext(jws, &pt, &ptlen, &cerr))
                return cp_error_set(reterr, -EACCES, "malformed token (payload)");
        json_error_t jerr;
        payload = json_loadb((const char *) pt, ptlen, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(payload))
                return cp_error_set(reterr, -EACCES, "token payload is not a JSON object");

        if (!issuer)
                return cp_error_set(reterr, -EAGAIN, "the IdP's issuer is not known yet");
        r = check_claims(j, payload, issuer, now, &exp, reterr);
        if (r < 0)
                return r;
        if (!json_is_string(json_object_get(payload, j->user_id_claim)) ||
            !json_string_value(json_object_get(payload, j->user_id_claim))[0])
                return cp_error_set(reterr, -EACCES, "token has no user id claim \"%s\"", j->user_id_claim);
        if (exp > 0)
                cache_insert(j, hash, exp, payload, now);
        return make_claims(j, TAKE_PTR(payload), hex, ret, reterr);
}

int cp_jwt_validate(cp_jwt *j, const char *token, cp_jwt_claims **ret, cp_error *reterr) {
        int r = validate(j, token, ret, reterr);

        atomic_fetch_add(r < 0 ? &j->n_refused : &j->n_validated, 1);
        return r;
}

int cp_jwt_claims_strings(const cp_jwt_claims *claims, const char *name, const char ***ret) {
        json_t *v = claims && claims->payload ? json_object_get(claims->payload, name) : NULL;
        const char **out;
        size_t n = 0, i;
        json_t *e;

        out = cp_xcalloc((json_is_array(v) ? json_array_size(v) : 1) + 1, sizeof *out);
        if (json_is_string(v))
                out[n++] = json_string_value(v);
        else if (json_is_array(v))
                json_array_foreach(v, i, e) {
                        if (json_is_string(e))
                                out[n++] = json_string_value(e);
                }
        *ret = out;
        return (int) n;
}

cp_jwt_claims *cp_jwt_claims_free(cp_jwt_claims *c) {
        if (!c)
                return NULL;
        free(c->user_id);
        free(c->email);
        free(c->name);
        free(c->account_id);
        free(c->domain);
        free(c->domain_category);
        json_decref(c->payload);
        free(c);
        return NULL;
}

void cp_jwt_get_stats(cp_jwt *j, cp_jwt_stats *ret) {
        cp_jwt_keyset *ks = cp_jwt_keys_current(j, NULL);

        memset(ret, 0, sizeof *ret);
        ret->validated = atomic_load(&j->n_validated);
        ret->cache_hits = atomic_load(&j->n_cache_hits);
        ret->refused = atomic_load(&j->n_refused);
        ret->fetches = atomic_load(&j->n_fetches);
        ret->fetch_failures = atomic_load(&j->n_fetch_failures);
        ret->keys = ks ? ks->n : 0;
        cp_jwt_keyset_unref(ks);
}
