/*
 * jwt-int.h: what jwt.c (validation, token cache) and jwt-keys.c (JWKS
 * and discovery fetching, the key set, the background thread) share.
 * Not installed; nothing outside common/jwt includes it.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>

#include <cjose/cjose.h>

#include "cp/jwt.h"

/* Smallest RSA modulus of a usable key. */
#define CP_JWT_MIN_RSA_BITS 1024

/* Largest JWKS or discovery document read. */
#define CP_JWT_MAX_DOC (1024 * 1024)

typedef enum cp_jwt_kty {
        CP_JWT_KTY_RSA,
        CP_JWT_KTY_EC,
} cp_jwt_kty;

typedef struct cp_jwt_key {
        char *kid;                      /* NULL when the JWK has none */
        char *alg;                      /* the JWK's own "alg"; NULL when absent */
        cp_jwt_kty kty;
        int crv;                        /* cjose_jwk_ec_curve for EC keys */
        cjose_jwk_t *jwk;               /* public key; only read after the set is built */
} cp_jwt_key;

/* An immutable key set, shared by reference: validators take a reference
 * under cp_jwt.lock and verify with it after dropping the lock, so a
 * refresh never frees keys in use. */
typedef struct cp_jwt_keyset {
        atomic_int refs;
        size_t n;
        cp_jwt_key *keys;
} cp_jwt_keyset;

typedef struct cp_jwt_cache_entry {
        uint8_t hash[32];
        bool used;
        int64_t exp;                    /* Unix seconds */
        uint64_t stamp;                 /* last use, for eviction within the set */
        struct json_t *payload;         /* verified claim set; never modified, copied on a hit */
} cp_jwt_cache_entry;

/* Ways per set of the verified-token cache (set-associative, the least
 * recently used entry of a set is evicted). */
#define CP_JWT_CACHE_WAYS 4

struct cp_jwt {
        /* Configuration, immutable after cp_jwt_new(). */
        char *cfg_issuer;               /* "" when only the OIDC endpoint gives it */
        char *audiences[CP_JWT_MAX_AUDIENCES];
        size_t n_audiences;
        char *claim_prefix;             /* audiences[0] + "/" for the wt_* claims */
        char *cfg_keys_location;        /* "" when only discovery gives it */
        char *oidc_endpoint;            /* NULL = none */
        char *user_id_claim;
        char *ca_file;
        bool key_refresh_enabled;
        int64_t leeway_s;
        int64_t cooldown_ms;
        int64_t default_max_age_s;
        int64_t http_timeout_ms;
        int64_t (*now_s)(void);

        /* Key state; lock protects every field up to the cache. */
        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC; wakes the thread and fetch waiters */
        cp_jwt_keyset *keys;            /* NULL until the first successful fetch */
        char *issuer;                   /* in force: discovery's or cfg_issuer; NULL until known */
        char *jwks_url;                 /* in force; NULL until known */
        bool discovered;
        char reason[384];               /* why there are no keys (or the last fetch failure) */
        int64_t keys_expire_ms;         /* monotonic; when max-age runs out */
        int64_t last_forced_ms;         /* last unknown-kid refetch; 0 = never */
        int64_t last_kick_ms;           /* last cp_jwt_keys_kick() that woke the thread */
        bool fetching;                  /* single flight: one fetch at a time */
        bool stop;
        bool kick;                      /* a validator asks the thread to try now */
        bool keys_init;                 /* lock and cond initialised */
        bool thread_started;
        pthread_t thread;

        /* Verified-token cache. */
        pthread_mutex_t cache_lock;
        cp_jwt_cache_entry *cache;
        size_t cache_sets;
        uint64_t cache_clock;

        /* Stats. */
        atomic_uint_fast64_t n_validated;
        atomic_uint_fast64_t n_cache_hits;
        atomic_uint_fast64_t n_refused;
        atomic_uint_fast64_t n_fetches;
        atomic_uint_fast64_t n_fetch_failures;
};

/* jwt.c: true when s[0..n) is base64url without padding that decodes
 * (cjose asserts on some malformed input: check before cjose decodes). */
bool cp_jwt_b64url_ok(const char *s, size_t n);

/* jwt-keys.c */
int cp_jwt_keys_start(cp_jwt *j, cp_error *reterr);
void cp_jwt_keys_stop(cp_jwt *j);
cp_jwt_keyset *cp_jwt_keyset_ref(cp_jwt_keyset *ks);
void cp_jwt_keyset_unref(cp_jwt_keyset *ks);
/* The current key set (a reference; NULL when none) and, when ret_issuer
 * is not NULL, a copy of the issuer in force. */
cp_jwt_keyset *cp_jwt_keys_current(cp_jwt *j, char **ret_issuer);
/* A token named a kid the set does not hold: refetch now unless a refetch
 * ran within the cooldown; waits for a fetch already under way instead of
 * starting another. Returns the set to use (a reference, maybe the old
 * one, maybe NULL). */
cp_jwt_keyset *cp_jwt_keys_refetch_unknown_kid(cp_jwt *j);
/* Wakes the background thread (no keys yet and a token arrived). */
void cp_jwt_keys_kick(cp_jwt *j);
/* The parsers of what the IdP sends (also for tests/fuzz): a JWKS
 * document into a new key set (-EBADMSG: not a JWKS, or no usable key),
 * an OIDC discovery document into its issuer and jwks_uri (malloc'd), a
 * Cache-Control value's max-age. url only names the source in messages. */
int cp_jwt_parse_jwks(const char *data, size_t len, const char *url, cp_jwt_keyset **ret, cp_error *reterr);
int cp_jwt_parse_discovery(const char *data, size_t len, const char *url, char **ret_issuer, char **ret_jwks,
                           cp_error *reterr);
bool cp_jwt_parse_max_age(const char *v, size_t len, int64_t *ret);
/* Puts ks (the reference is taken) in force for max_age_s, as a fetch
 * would (tests/fuzz: keys without an IdP). */
void cp_jwt_keys_install(cp_jwt *j, cp_jwt_keyset *ks, int64_t max_age_s);
const cp_jwt_key *cp_jwt_keyset_find(const cp_jwt_keyset *ks, const char *kid);
