/*
 * jwt-keys.c: the IdP's signing keys. Fetches the OIDC discovery document
 * (when configured) and the JWKS with libcurl, builds an immutable key set
 * of cjose JWKs, and keeps it fresh from a background thread: at start,
 * with backoff while the IdP is down, and when the response's max-age runs
 * out. An unknown kid may force a refetch (cp_jwt_keys_refetch_unknown_kid),
 * at most once per cooldown, and only one fetch ever runs at a time.
 */
#include "cp/base.h"
#include "cp/util.h"

#include <curl/curl.h>
#include <jansson.h>

#include "jwt-int.h"

#define BACKOFF_FIRST_MS 500
#define BACKOFF_MAX_MS   60000
/* A validator finding no keys may wake the thread at most this often. */
#define KICK_MIN_MS      1000

typedef struct http_doc {
        char *data;
        size_t len;
        bool too_big;
        bool have_max_age;
        int64_t max_age;
        cp_jwt *j;
} http_doc;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void) {
        (void) curl_global_init(CURL_GLOBAL_DEFAULT);
}

cp_jwt_keyset *cp_jwt_keyset_ref(cp_jwt_keyset *ks) {
        if (ks)
                atomic_fetch_add(&ks->refs, 1);
        return ks;
}

void cp_jwt_keyset_unref(cp_jwt_keyset *ks) {
        if (!ks || atomic_fetch_sub(&ks->refs, 1) != 1)
                return;
        for (size_t i = 0; i < ks->n; i++) {
                free(ks->keys[i].kid);
                free(ks->keys[i].alg);
                (void) cjose_jwk_release(ks->keys[i].jwk);
        }
        free(ks->keys);
        free(ks);
}

const cp_jwt_key *cp_jwt_keyset_find(const cp_jwt_keyset *ks, const char *kid) {
        if (!ks)
                return NULL;
        if (!kid)       /* no kid: only a set of one key is unambiguous */
                return ks->n == 1 ? &ks->keys[0] : NULL;
        for (size_t i = 0; i < ks->n; i++)
                if (ks->keys[i].kid && strcmp(ks->keys[i].kid, kid) == 0)
                        return &ks->keys[i];
        return NULL;
}

/* Cache-Control: ..., max-age=N, ... (directive names are case-insensitive). */
bool cp_jwt_parse_max_age(const char *v, size_t len, int64_t *ret) {
        size_t i = 0;

        while (i < len) {
                while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                        i++;
                size_t start = i;
                while (i < len && v[i] != ',')
                        i++;
                if (i - start > 8 && strncasecmp(v + start, "max-age=", 8) == 0) {
                        int64_t n = 0;
                        size_t k = start + 8;
                        if (k < len && v[k] == '"')
                                k++;
                        if (k >= len || v[k] < '0' || v[k] > '9')
                                return false;
                        for (; k < len && v[k] >= '0' && v[k] <= '9'; k++)
                                n = n < INT64_MAX / 100 ? n * 10 + (v[k] - '0') : INT64_MAX / 10;
                        *ret = n;
                        return true;
                }
        }
        return false;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *userdata) {
        http_doc *d = userdata;
        size_t n = size * nmemb;
        static const char name[] = "cache-control:";

        if (n >= 5 && strncmp(p, "HTTP/", 5) == 0)
                d->have_max_age = false;        /* a new response (after a redirect) */
        else if (n > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
                int64_t v;
                if (cp_jwt_parse_max_age(p + sizeof name - 1, n - (sizeof name - 1), &v)) {
                        d->max_age = v;
                        d->have_max_age = true;
                }
        }
        return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *userdata) {
        http_doc *d = userdata;
        size_t n = size * nmemb;

        if (n > CP_JWT_MAX_DOC - d->len) {
                d->too_big = true;
                return 0;
        }
        d->data = cp_xrealloc(d->data, d->len + n + 1);
        memcpy(d->data + d->len, p, n);
        d->len += n;
        d->data[d->len] = '\0';
        return n;
}

static int on_progress(void *userdata, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t e) {
        http_doc *d = userdata;
        bool stop;

        (void) a, (void) b, (void) c, (void) e;
        pthread_mutex_lock(&d->j->lock);
        stop = d->j->stop;
        pthread_mutex_unlock(&d->j->lock);
        return stop ? 1 : 0;
}

/* GET url into d; fails for anything but a 200 within the size limit. */
static int http_get(cp_jwt *j, const char *url, http_doc *d, cp_error *reterr) {
        char errbuf[CURL_ERROR_SIZE] = "";
        long status = 0;
        CURLcode c;
        CURL *h;

        memset(d, 0, sizeof *d);
        d->j = j;
        h = curl_easy_init();
        if (!h)
                return cp_error_set(reterr, -ENOMEM, "curl_easy_init failed");
        (void) curl_easy_setopt(h, CURLOPT_URL, url);
        (void) curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        (void) curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        (void) curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
        (void) curl_easy_setopt(h, CURLOPT_MAXREDIRS, 3L);
        (void) curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long) j->http_timeout_ms);
        (void) curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) j->http_timeout_ms);
        (void) curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) CP_JWT_MAX_DOC);
        (void) curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        (void) curl_easy_setopt(h, CURLOPT_USERAGENT, "netbird-cp-jwt/1");
        (void) curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        (void) curl_easy_setopt(h, CURLOPT_HEADERDATA, d);
        (void) curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        (void) curl_easy_setopt(h, CURLOPT_WRITEDATA, d);
        (void) curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        (void) curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        (void) curl_easy_setopt(h, CURLOPT_XFERINFODATA, d);
        if (j->ca_file)
                (void) curl_easy_setopt(h, CURLOPT_CAINFO, j->ca_file);

        c = curl_easy_perform(h);
        (void) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);

        int r = 0;
        if (d->too_big || c == CURLE_FILESIZE_EXCEEDED)
                r = cp_error_set(reterr, -EFBIG, "%s: response larger than %d bytes", url, CP_JWT_MAX_DOC);
        else if (c != CURLE_OK)
                r = cp_error_set(reterr, -EIO, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(c));
        else if (status != 200)
                r = cp_error_set(reterr, -EIO, "%s: HTTP status %ld", url, status);
        else if (!d->data)
                r = cp_error_set(reterr, -EIO, "%s: empty response", url);
        if (r < 0) {
                free(d->data);
                d->data = NULL;
        }
        return r;
}

static bool http_url(const char *s) {
        return s && (strncasecmp(s, "https://", 8) == 0 || strncasecmp(s, "http://", 7) == 0) &&
               !strpbrk(s, " \t\r\n");
}

int cp_jwt_parse_discovery(const char *data, size_t len, const char *url, char **ret_issuer, char **ret_jwks,
                           cp_error *reterr) {
        json_error_t jerr;
        json_t *root = json_loadb(data, len, 0, &jerr);
        const char *iss, *jwks;
        int r = 0;

        if (!json_is_object(root))
                r = cp_error_set(reterr, -EBADMSG, "%s: not a JSON object", url);
        else if (!(iss = json_string_value(json_object_get(root, "issuer"))) || !iss[0])
                r = cp_error_set(reterr, -EBADMSG, "%s: no \"issuer\"", url);
        else if (!http_url(jwks = json_string_value(json_object_get(root, "jwks_uri"))))
                r = cp_error_set(reterr, -EBADMSG, "%s: no http(s) \"jwks_uri\"", url);
        else {
                *ret_issuer = cp_xstrdup(iss);
                *ret_jwks = cp_xstrdup(jwks);
        }
        json_decref(root);
        return r;
}

static bool curve_of(const char *crv, int *ret) {
        if (!crv)
                return false;
        if (strcmp(crv, "P-256") == 0)
                *ret = CJOSE_JWK_EC_P_256;
        else if (strcmp(crv, "P-384") == 0)
                *ret = CJOSE_JWK_EC_P_384;
        else if (strcmp(crv, "P-521") == 0)
                *ret = CJOSE_JWK_EC_P_521;
        else
                return false;
        return true;
}

/* One JWK of the set into *k; false to skip it (not a signing key we can use). */
static bool import_key(json_t *o, cp_jwt_key *k) {
        const char *kty = json_string_value(json_object_get(o, "kty"));
        const char *use = json_string_value(json_object_get(o, "use"));
        const char *alg = json_string_value(json_object_get(o, "alg"));
        const char *kid = json_string_value(json_object_get(o, "kid"));
        cjose_err cerr;
        int crv = CJOSE_JWK_EC_INVALID;

        if (!kty || (use && strcmp(use, "sig") != 0))
                return false;
        if (alg && (strncmp(alg, "HS", 2) == 0 || strcasecmp(alg, "none") == 0))
                return false;
        memset(k, 0, sizeof *k);
        if (strcmp(kty, "RSA") == 0) {
                if (!json_is_string(json_object_get(o, "n")) || !json_is_string(json_object_get(o, "e")))
                        return false;
                k->kty = CP_JWT_KTY_RSA;
        } else if (strcmp(kty, "EC") == 0) {
                if (!curve_of(json_string_value(json_object_get(o, "crv")), &crv) ||
                    !json_is_string(json_object_get(o, "x")) || !json_is_string(json_object_get(o, "y")))
                        return false;
                k->kty = CP_JWT_KTY_EC;
        } else
                return false;

        /* Every member cjose decodes must be base64url it can decode
         * without tripping an assertion (cp_jwt_b64url_ok). */
        static const char *const b64_members[] = { "n", "e", "d", "p", "q", "dp", "dq", "qi", "x", "y", "k" };
        for (size_t i = 0; i < ELEMENTSOF(b64_members); i++) {
                json_t *m = json_object_get(o, b64_members[i]);
                if (m && (!json_is_string(m) || !cp_jwt_b64url_ok(json_string_value(m), json_string_length(m))))
                        return false;
        }
        _cleanup_free_ char *text = json_dumps(o, JSON_COMPACT);
        if (!text)
                return false;
        k->jwk = cjose_jwk_import(text, strlen(text), &cerr);
        if (!k->jwk)
                return false;
        cjose_jwk_kty_t got = cjose_jwk_get_kty(k->jwk, &cerr);
        /* RSA under 1024 bits is refused (as Go's crypto/rsa does). */
        if ((k->kty == CP_JWT_KTY_RSA && (got != CJOSE_JWK_KTY_RSA ||
                                          cjose_jwk_get_keysize(k->jwk, &cerr) < CP_JWT_MIN_RSA_BITS)) ||
            (k->kty == CP_JWT_KTY_EC && (got != CJOSE_JWK_KTY_EC ||
                                         (int) cjose_jwk_EC_get_curve(k->jwk, &cerr) != crv))) {
                (void) cjose_jwk_release(k->jwk);
                k->jwk = NULL;
                return false;
        }
        k->crv = crv;
        k->kid = kid ? cp_xstrdup(kid) : NULL;
        k->alg = alg ? cp_xstrdup(alg) : NULL;
        return true;
}

int cp_jwt_parse_jwks(const char *data, size_t len, const char *url, cp_jwt_keyset **ret, cp_error *reterr) {
        json_error_t jerr;
        json_t *root = json_loadb(data, len, 0, &jerr);
        json_t *arr = json_object_get(root, "keys");
        cp_jwt_keyset *ks;
        size_t i;
        json_t *o;

        if (!json_is_array(arr)) {
                json_decref(root);
                return cp_error_set(reterr, -EBADMSG, "%s: not a JWKS (no \"keys\" array)", url);
        }
        ks = cp_xcalloc(1, sizeof *ks);
        atomic_init(&ks->refs, 1);
        ks->keys = cp_xcalloc(json_array_size(arr) + 1, sizeof *ks->keys);
        json_array_foreach(arr, i, o) {
                if (json_is_object(o) && import_key(o, &ks->keys[ks->n]))
                        ks->n++;
        }
        if (ks->n == 0) {
                size_t total = json_array_size(arr);
                cp_jwt_keyset_unref(ks);
                json_decref(root);
                return cp_error_set(reterr, -EBADMSG, "%s: no usable signing key among %zu", url, total);
        }
        json_decref(root);
        *ret = ks;
        return 0;
}

/* One fetch: discovery (until it has worked once), then the JWKS. Called
 * without the lock, by whoever set j->fetching. */
static int fetch_unlocked(cp_jwt *j) {
        _cleanup_free_ char *url = NULL, *new_issuer = NULL, *new_jwks = NULL;
        cp_jwt_keyset *ks = NULL, *old = NULL;
        cp_error err = {};
        http_doc d = {};
        bool discover;
        int r;

        atomic_fetch_add(&j->n_fetches, 1);
        pthread_mutex_lock(&j->lock);
        discover = j->oidc_endpoint && !j->discovered;
        url = j->jwks_url ? cp_xstrdup(j->jwks_url) : NULL;
        pthread_mutex_unlock(&j->lock);

        if (discover) {
                r = http_get(j, j->oidc_endpoint, &d, &err);
                if (r >= 0) {
                        r = cp_jwt_parse_discovery(d.data, d.len, j->oidc_endpoint, &new_issuer, &new_jwks, &err);
                        free(d.data);
                }
                if (r < 0) {
                        cp_error_prefix(&err, "OIDC discovery");
                        goto done;
                }
                free(url);
                url = cp_xstrdup(new_jwks);
        }
        r = http_get(j, url, &d, &err);
        if (r >= 0) {
                r = cp_jwt_parse_jwks(d.data, d.len, url, &ks, &err);
                free(d.data);
        }
        if (r < 0)
                cp_error_prefix(&err, "JWKS fetch");

done:
        pthread_mutex_lock(&j->lock);
        if (new_issuer) {
                free(j->issuer);
                free(j->jwks_url);
                j->issuer = TAKE_PTR(new_issuer);
                j->jwks_url = TAKE_PTR(new_jwks);
                j->discovered = true;
        }
        if (r >= 0) {
                /* No max-age, or max-age=0 (which would mean a fetch per
                 * token): the default. */
                int64_t max_age = d.have_max_age && d.max_age > 0 ? d.max_age : j->default_max_age_s;
                if (max_age > 7 * 24 * 3600)
                        max_age = 7 * 24 * 3600;
                old = j->keys;
                j->keys = ks;
                j->keys_expire_ms = cp_now_mono_ms() + max_age * 1000;
                (void) snprintf(j->reason, sizeof j->reason, "%zu signing keys from %s", ks->n, url);
        } else {
                atomic_fetch_add(&j->n_fetch_failures, 1);
                if (j->keys)
                        (void) snprintf(j->reason, sizeof j->reason, "%zu signing keys kept; refresh failed: %s",
                                        j->keys->n, err.message);
                else
                        (void) snprintf(j->reason, sizeof j->reason, "%s", err.message);
        }
        pthread_mutex_unlock(&j->lock);
        cp_jwt_keyset_unref(old);
        return r;
}

/* Called with the lock held, returns with it held: runs one fetch, or, if
 * one is under way, waits for it to end (single flight). */
static int fetch_locked(cp_jwt *j) {
        int r;

        if (j->fetching) {
                while (j->fetching)
                        pthread_cond_wait(&j->cond, &j->lock);
                return j->keys ? 0 : -EAGAIN;
        }
        j->fetching = true;
        pthread_mutex_unlock(&j->lock);
        r = fetch_unlocked(j);
        pthread_mutex_lock(&j->lock);
        j->fetching = false;
        pthread_cond_broadcast(&j->cond);
        return r;
}

static void *keys_thread(void *userdata) {
        cp_jwt *j = userdata;
        int64_t backoff = 0, retry_at = 0;

        pthread_mutex_lock(&j->lock);
        while (!j->stop) {
                int64_t now = cp_now_mono_ms();
                int64_t due = j->keys && backoff == 0 ? j->keys_expire_ms : retry_at;

                if (j->kick) {
                        j->kick = false;
                        if (!j->keys)
                                due = now;
                }
                if (now >= due && !j->fetching) {
                        if (fetch_locked(j) < 0) {
                                backoff = backoff ? backoff * 2 : BACKOFF_FIRST_MS;
                                if (backoff > BACKOFF_MAX_MS)
                                        backoff = BACKOFF_MAX_MS;
                                retry_at = cp_now_mono_ms() + backoff;
                        } else
                                backoff = 0;
                        continue;
                }
                struct timespec ts;
                cp_mono_deadline(&ts, j->fetching ? 1000 : due - now);
                (void) pthread_cond_timedwait(&j->cond, &j->lock, &ts);
        }
        pthread_mutex_unlock(&j->lock);
        return NULL;
}

int cp_jwt_keys_start(cp_jwt *j, cp_error *reterr) {
        pthread_condattr_t ca;
        int r;

        (void) pthread_once(&curl_once, curl_init_once);
        pthread_mutex_init(&j->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&j->cond, &ca);
        pthread_condattr_destroy(&ca);
        if (!j->oidc_endpoint) {
                j->issuer = cp_xstrdup(j->cfg_issuer);
                j->jwks_url = cp_xstrdup(j->cfg_keys_location);
        } else if (j->cfg_keys_location[0])
                j->jwks_url = cp_xstrdup(j->cfg_keys_location);
        (void) snprintf(j->reason, sizeof j->reason, "no fetch from %s has finished yet",
                        j->oidc_endpoint ? j->oidc_endpoint : j->jwks_url);
        j->keys_init = true;
        r = pthread_create(&j->thread, NULL, keys_thread, j);
        if (r != 0)
                return cp_error_set(reterr, -r, "cannot start the JWKS thread: %s", strerror(r));
        j->thread_started = true;
        return 0;
}

void cp_jwt_keys_install(cp_jwt *j, cp_jwt_keyset *ks, int64_t max_age_s) {
        cp_jwt_keyset *old;

        pthread_mutex_lock(&j->lock);
        old = j->keys;
        j->keys = ks;
        j->keys_expire_ms = cp_now_mono_ms() + max_age_s * 1000;
        (void) snprintf(j->reason, sizeof j->reason, "%zu signing keys installed", ks->n);
        pthread_cond_broadcast(&j->cond);
        pthread_mutex_unlock(&j->lock);
        cp_jwt_keyset_unref(old);
}

void cp_jwt_keys_stop(cp_jwt *j) {
        if (!j->keys_init)
                return;
        if (j->thread_started) {
                pthread_mutex_lock(&j->lock);
                j->stop = true;
                pthread_cond_broadcast(&j->cond);
                pthread_mutex_unlock(&j->lock);
                pthread_join(j->thread, NULL);
                j->thread_started = false;
        }
        cp_jwt_keyset_unref(j->keys);
        j->keys = NULL;
        free(j->issuer);
        free(j->jwks_url);
        j->issuer = j->jwks_url = NULL;
        pthread_cond_destroy(&j->cond);
        pthread_mutex_destroy(&j->lock);
}

cp_jwt_keyset *cp_jwt_keys_current(cp_jwt *j, char **ret_issuer) {
        cp_jwt_keyset *ks;

        pthread_mutex_lock(&j->lock);
        ks = cp_jwt_keyset_ref(j->keys);
        if (ret_issuer)
                *ret_issuer = j->issuer ? cp_xstrdup(j->issuer) : NULL;
        pthread_mutex_unlock(&j->lock);
        return ks;
}

cp_jwt_keyset *cp_jwt_keys_refetch_unknown_kid(cp_jwt *j) {
        cp_jwt_keyset *ks;

        pthread_mutex_lock(&j->lock);
        if (j->fetching)
                (void) fetch_locked(j);         /* waits for the fetch under way */
        else {
                int64_t now = cp_now_mono_ms();
                if (j->last_forced_ms == 0 || now - j->last_forced_ms >= j->cooldown_ms) {
                        j->last_forced_ms = now;
                        (void) fetch_locked(j);
                }
        }
        ks = cp_jwt_keyset_ref(j->keys);
        pthread_mutex_unlock(&j->lock);
        return ks;
}

void cp_jwt_keys_kick(cp_jwt *j) {
        int64_t now = cp_now_mono_ms();

        pthread_mutex_lock(&j->lock);
        if (!j->keys && !j->fetching && now - j->last_kick_ms >= KICK_MIN_MS) {
                j->last_kick_ms = now;
                j->kick = true;
                pthread_cond_broadcast(&j->cond);
        }
        pthread_mutex_unlock(&j->lock);
}

bool cp_jwt_status(cp_jwt *j, char *buf, size_t len) {
        bool ok;

        pthread_mutex_lock(&j->lock);
        ok = j->keys != NULL;
        if (len)
                (void) snprintf(buf, len, "%s", j->reason);
        pthread_mutex_unlock(&j->lock);
        return ok;
}

void cp_jwt_keys_location(cp_jwt *j, char *buf, size_t len) {
        pthread_mutex_lock(&j->lock);
        if (len)
                (void) snprintf(buf, len, "%s", j->jwks_url ? j->jwks_url : "");
        pthread_mutex_unlock(&j->lock);
}

void cp_jwt_issuer(cp_jwt *j, char *buf, size_t len) {
        pthread_mutex_lock(&j->lock);
        if (len)
                (void) snprintf(buf, len, "%s", j->issuer ? j->issuer : "");
        pthread_mutex_unlock(&j->lock);
}
