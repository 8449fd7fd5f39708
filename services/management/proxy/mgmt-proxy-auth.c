/*
 * mgmt-proxy-auth.c: proxy access tokens on every ProxyService call, and
 * the per-IP failure limiter (docs/proxy.md).
 *
 * Order and texts as NetBird's interceptor: the limiter first
 * (RESOURCE_EXHAUSTED "too many failed authentication attempts"), then
 * UNAUTHENTICATED "missing metadata", "missing authorization header",
 * "invalid authorization format" (not "Bearer "), "invalid token format"
 * (prefix, length, alphabet, CRC32 checksum: no database round trip for
 * a mistyped token), "invalid token" (no row with its base64(SHA-256)),
 * "token expired or revoked". Every failure takes one token from the
 * caller IP's bucket.
 *
 * The limiter is per replica, in memory: a token bucket per client IP
 * (burst 5, one back every 12 s; NB_PROXY_AUTH_FAILURE_BURST changes the
 * burst), forgotten 15 minutes after its last failure; at most 65,536
 * addresses at once (past that, new ones go uncounted until idle ones
 * are forgotten, so many failing addresses cannot grow it without
 * bound). A client spread over N replicas gets N buckets; the limit is
 * about guessing tokens, and 2^178 of them make N irrelevant.
 *
 * Token cache: a token that passed is remembered by its hash for
 * NB_PROXY_TOKEN_CACHE_TTL (2 s by default, 0 = off), so a proxy sending
 * thousands of access logs a second costs one token lookup per interval
 * instead of one per call. A revocation through the REST API reaches every
 * replica's hub (mgmt_proxy_token_revoked, the bus), which forgets every
 * cached token at once; without that hint (a revocation made with
 * netbird-cp-admin, or the bus down) a revoked or expired token still
 * passes for at most the TTL. At most 4,096 tokens are kept; past that the
 * cache starts over.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cp/store-proxyconn.h"
#include "cp/util.h"
#include "mgmt-proxy-int.h"

#include <inttypes.h>

#include <sodium.h>

#define FAILURE_REFILL_MS 12000
#define LIMITER_TTL_MS (15 * 60 * 1000)
#define LIMITER_SWEEP_MS (5 * 60 * 1000)
#define DEFAULT_BURST 5
#define LIMITER_MAX 65536               /* failing addresses remembered at once */
#define DEFAULT_TOKEN_TTL_MS 2000
#define TOKENS_MAX 4096

static const cp_log_ctx log_ctx = { .component = "proxy" };

typedef struct bucket {
        double tokens;
        int64_t at_ms;                  /* when tokens was computed */
} bucket;

static int burst(void) {
        static int cached = -1;
        const char *v;
        int64_t n;

        if (cached >= 0)
                return cached;
        v = getenv("NB_PROXY_AUTH_FAILURE_BURST");
        n = DEFAULT_BURST;
        if (v && *v && cp_parse_int64(v, 1, 1000000, &n) < 0)
                n = DEFAULT_BURST;
        cached = (int) n;
        return cached;
}

static double refill(const bucket *b, int64_t now) {
        double t = b->tokens + (double) (now - b->at_ms) / FAILURE_REFILL_MS;

        return t > burst() ? burst() : t;
}

/* A token that passed, until until_ms (monotonic). */
typedef struct cached_token {
        mgmt_proxy_token tok;
        int64_t until_ms;
} cached_token;

static int64_t token_ttl(void) {
        const char *v = getenv("NB_PROXY_TOKEN_CACHE_TTL");
        int64_t ms;

        if (!v || !*v)
                return DEFAULT_TOKEN_TTL_MS;
        if (cp_parse_duration_ms(v, &ms) < 0 || ms < 0 || ms > 60000) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "NB_PROXY_TOKEN_CACHE_TTL is not a duration of 0 to 60s; using 2s",
                          "value", v, NULL);
                return DEFAULT_TOKEN_TTL_MS;
        }
        return ms;
}

void mgmt_proxy_limiter_init(mgmt_proxy *p) {
        pthread_mutex_init(&p->limiter_lock, NULL);
        p->limiter = mgmt_strmap_new();
        p->limiter_swept_ms = cp_now_mono_ms();
        pthread_mutex_init(&p->tokens_lock, NULL);
        p->tokens = mgmt_strmap_new();
        p->tokens_ttl_ms = token_ttl();
}

static void free_value(const char *key, void *value, void *userdata) {
        free(value);
}

void mgmt_proxy_limiter_free(mgmt_proxy *p) {
        mgmt_strmap_foreach(p->limiter, free_value, NULL);
        p->limiter = mgmt_strmap_free(p->limiter);
        pthread_mutex_destroy(&p->limiter_lock);
        mgmt_strmap_foreach(p->tokens, free_value, NULL);
        p->tokens = mgmt_strmap_free(p->tokens);
        pthread_mutex_destroy(&p->tokens_lock);
}

void mgmt_proxy_tokens_forget(mgmt_proxy *p) {
        pthread_mutex_lock(&p->tokens_lock);
        p->tokens_gen++;
        mgmt_strmap_foreach(p->tokens, free_value, NULL);
        p->tokens = mgmt_strmap_free(p->tokens);
        p->tokens = mgmt_strmap_new();
        pthread_mutex_unlock(&p->tokens_lock);
}

/* A hit fills *ret; a miss leaves in *gen the cache's generation, for
 * token_remember after the database lookup. */
static bool token_cached(mgmt_proxy *p, const char *hashed, mgmt_proxy_token *ret, uint64_t *gen) {
        cached_token *ct;
        bool hit = false;

        if (p->tokens_ttl_ms <= 0)
                return false;
        pthread_mutex_lock(&p->tokens_lock);
        *gen = p->tokens_gen;
        ct = mgmt_strmap_get(p->tokens, hashed);
        if (ct && ct->until_ms > cp_now_mono_ms()) {
                *ret = ct->tok;
                hit = true;
        }
        pthread_mutex_unlock(&p->tokens_lock);
        return hit;
}

/* Caches tok unless the cache was emptied since generation gen (a
 * revocation may have committed after the lookup read the row). */
static void token_remember(mgmt_proxy *p, const char *hashed, const mgmt_proxy_token *tok, uint64_t gen) {
        cached_token *ct;

        if (p->tokens_ttl_ms <= 0)
                return;
        pthread_mutex_lock(&p->tokens_lock);
        if (p->tokens_gen != gen) {
                pthread_mutex_unlock(&p->tokens_lock);
                return;
        }
        if (mgmt_strmap_size(p->tokens) >= TOKENS_MAX) {
                mgmt_strmap_foreach(p->tokens, free_value, NULL);
                p->tokens = mgmt_strmap_free(p->tokens);
                p->tokens = mgmt_strmap_new();
        }
        ct = mgmt_strmap_get(p->tokens, hashed);
        if (!ct) {
                ct = cp_xcalloc(1, sizeof *ct);
                (void) mgmt_strmap_put(p->tokens, hashed, ct);
        }
        ct->tok = *tok;
        ct->until_ms = cp_now_mono_ms() + p->tokens_ttl_ms;
        pthread_mutex_unlock(&p->tokens_lock);
}

typedef struct sweep {
        int64_t now;
        char **keys;
        size_t n, cap;
} sweep;

static void collect_old(const char *key, void *value, void *userdata) {
        sweep *s = userdata;
        const bucket *b = value;

        if (s->now - b->at_ms < LIMITER_TTL_MS)
                return;
        if (s->n == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 16;
                s->keys = cp_xrealloc(s->keys, s->cap * sizeof *s->keys);
        }
        s->keys[s->n++] = cp_xstrdup(key);
}

/* Under limiter_lock. */
/* Drops buckets idle past LIMITER_TTL_MS, at most every LIMITER_SWEEP_MS
 * unless force. */
static void maybe_sweep(mgmt_proxy *p, int64_t now, bool force) {
        sweep s = { .now = now };

        if (!force && now - p->limiter_swept_ms < LIMITER_SWEEP_MS)
                return;
        p->limiter_swept_ms = now;
        mgmt_strmap_foreach(p->limiter, collect_old, &s);
        for (size_t i = 0; i < s.n; i++) {
                free(mgmt_strmap_remove(p->limiter, s.keys[i]));
                free(s.keys[i]);
        }
        free(s.keys);
}

static bool limited(mgmt_proxy *p, const char *ip) {
        int64_t now = cp_now_mono_ms();
        bool r = false;

        pthread_mutex_lock(&p->limiter_lock);
        maybe_sweep(p, now, false);
        bucket *b = mgmt_strmap_get(p->limiter, ip);
        if (b)
                r = refill(b, now) < 1.0;
        pthread_mutex_unlock(&p->limiter_lock);
        return r;
}

static void record_failure(mgmt_proxy *p, const char *ip) {
        int64_t now = cp_now_mono_ms();

        pthread_mutex_lock(&p->limiter_lock);
        bucket *b = mgmt_strmap_get(p->limiter, ip);
        if (!b && mgmt_strmap_size(p->limiter) >= LIMITER_MAX) {
                /* Full (many failing addresses): forget the idle ones; if
                 * it is still full, this address goes uncounted rather
                 * than the map growing without bound. */
                maybe_sweep(p, now, true);
                if (mgmt_strmap_size(p->limiter) >= LIMITER_MAX) {
                        pthread_mutex_unlock(&p->limiter_lock);
                        return;
                }
        }
        if (!b) {
                b = cp_xcalloc(1, sizeof *b);
                b->tokens = burst();
                b->at_ms = now;
                (void) mgmt_strmap_put(p->limiter, ip, b);
        }
        b->tokens = refill(b, now);
        b->at_ms = now;
        if (b->tokens >= 1.0)
                b->tokens -= 1.0;
        pthread_mutex_unlock(&p->limiter_lock);
}

static int fail(mgmt_proxy *p, const char *ip, grpc_status_code *status, char *msg, size_t cap, const char *text) {
        record_failure(p, ip);
        *status = GRPC_STATUS_UNAUTHENTICATED;
        (void) snprintf(msg, cap, "%s", text);
        return -1;
}

int mgmt_proxy_authenticate(mgmt_proxy *p, mgmt_call *c, mgmt_proxy_token *ret, grpc_status_code *status,
                            char *msg, size_t cap) {
        const char *ip = mgmt_call_peer_ip(c);
        char value[256], hashed[CP_SHA256_B64_LEN];
        cp_store_proxy_token t;
        cp_error err = { 0 };
        int r;

        if (limited(p, ip)) {
                *status = GRPC_STATUS_RESOURCE_EXHAUSTED;
                (void) snprintf(msg, cap, "too many failed authentication attempts");
                return -1;
        }
        if (!mgmt_call_has_metadata(c))
                return fail(p, ip, status, msg, cap, "missing metadata");
        r = mgmt_call_metadata(c, "authorization", value, sizeof value);
        if (r == -ENOENT || (r >= 0 && value[0] == '\0'))
                return fail(p, ip, status, msg, cap, "missing authorization header");
        if (r < 0 || strncmp(value, "Bearer ", 7) != 0)
                return fail(p, ip, status, msg, cap, "invalid authorization format");
        const char *token = value + 7;
        if (cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, token) < 0) {
                sodium_memzero(value, sizeof value);
                return fail(p, ip, status, msg, cap, "invalid token format");
        }
        cp_crypto_pat_hash(token, hashed);
        sodium_memzero(value, sizeof value);
        uint64_t gen = 0;
        if (token_cached(p, hashed, ret, &gen))
                return 0;
        r = cp_store_proxy_token_by_hash(p->store, hashed, &t, &err);
        if (r == -ENOENT)
                return fail(p, ip, status, msg, cap, "invalid token");
        if (r < 0) {
                /* Not the proxy's fault: no failure counted. */
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "cannot look up a proxy token", "error", err.message, NULL);
                *status = GRPC_STATUS_UNAVAILABLE;
                (void) snprintf(msg, cap, "cannot verify the token, please try again later");
                return -1;
        }
        if (t.revoked || t.expired)
                return fail(p, ip, status, msg, cap, MGMT_PROXY_MSG_TOKEN_GONE);
        if (t.touch_due) {
                cp_error terr = { 0 };
                if (cp_store_proxy_token_touch(p->store, t.id, &terr) < 0)
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot record a proxy token's last use", "token_id",
                                  t.id, "error", terr.message, NULL);
        }
        *ret = (mgmt_proxy_token) { 0 };
        memcpy(ret->id, t.id, sizeof ret->id);
        memcpy(ret->account_id, t.account_id, sizeof ret->account_id);
        token_remember(p, hashed, ret, gen);
        return 0;
}

bool mgmt_proxy_token_cached(mgmt_proxy *p, mgmt_call *c, mgmt_proxy_token *ret) {
        char value[256], hashed[CP_SHA256_B64_LEN];
        bool hit = false;

        if (p->tokens_ttl_ms <= 0 || !mgmt_call_has_metadata(c))
                return false;
        if (mgmt_call_metadata(c, "authorization", value, sizeof value) < 0 || strncmp(value, "Bearer ", 7) != 0)
                goto out;
        if (cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, value + 7) < 0)
                goto out;
        cp_crypto_pat_hash(value + 7, hashed);
        uint64_t gen;
        hit = token_cached(p, hashed, ret, &gen);
out:
        sodium_memzero(value, sizeof value);
        return hit;
}

bool mgmt_proxy_token_valid(mgmt_proxy *p, const mgmt_proxy_token *tok) {
        cp_store_proxy_token t;
        cp_error err = { 0 };
        int r = cp_store_proxy_token_by_id(p->store, tok->id, &t, &err);

        if (r == -ENOENT)
                return false;
        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot re-check a proxy token", "token_id", tok->id, "error",
                          err.message, NULL);
                return true;
        }
        return !t.revoked && !t.expired;
}
