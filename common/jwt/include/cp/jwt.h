/*
 * cp/jwt.h: validation of IdP-issued JWTs (OIDC access and ID tokens), the
 * one validator the REST API and the agent gRPC service share.
 *
 * A cp_jwt holds the configuration (NetBird's HttpConfig: issuer,
 * audiences, JWKS location, user-id claim) and the IdP's signing keys. It
 * fetches the keys with libcurl from the JWKS URL (or from the jwks_uri of
 * the OIDC discovery document when an OIDC config endpoint is set; the
 * document's issuer then wins over the configured one), caches them for
 * the response's Cache-Control max-age (a default when absent), and
 * refetches early when a token names a kid it does not know (only with
 * key_refresh_enabled), at most once per cooldown and one fetch at a time,
 * so a flood of tokens with made-up kids cannot hammer the IdP. Signatures are checked with cjose (JWS, JWK) and OpenSSL; no
 * base64url, RSA or ECDSA is written here.
 *
 * Accepted: RS256/384/512, PS256/384/512 with RSA keys, ES256/384/512 with
 * EC keys of the matching curve. Refused: "none", any HMAC algorithm (so
 * a public key can never be used as an HMAC secret), an algorithm the
 * key's type or its JWK "alg" does not allow, a token without a kid when
 * the set holds more than one key. Claims: iss must equal the issuer;
 * aud (a string or an array) must hold one of the audiences; exp, nbf and
 * iat are checked with a leeway; the user id is the configured claim
 * (default "sub") and must be a non-empty string.
 *
 * The IdP being unreachable is not fatal: cp_jwt_new() succeeds without
 * keys, a background thread keeps trying (backoff up to a minute), tokens
 * get -EAGAIN until keys arrive, and cp_jwt_status() says why for /readyz.
 *
 * Verified tokens are remembered by SHA-256 of their text until their exp
 * (bounded count), so a busy dashboard does not pay a signature check per
 * request; a remembered token is still refused once exp passes.
 *
 * Threads: every function may be called from any thread at once, except
 * cp_jwt_free(), which must be called once, when no call is in flight.
 * Never logs; failures come back as negative errno values with a message.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

struct json_t;  /* jansson; include <jansson.h> to read cp_jwt_claims.payload */

typedef struct cp_jwt cp_jwt;

#define CP_JWT_MAX_AUDIENCES 8
/* Longest token accepted (the REST API takes Authorization values up to
 * 16 KiB; a token is the rest after "Bearer "). */
#define CP_JWT_MAX_TOKEN_LEN (16 * 1024)

typedef struct cp_jwt_config {
        const char *issuer;             /* HttpConfig.AuthIssuer; may be NULL with an OIDC endpoint */
        /* Every audience accepted, as NetBird's GetAuthAudiences():
         * AuthAudience, ExtraAuthAudience and DeviceAuthorizationFlow's
         * ProviderConfig.Audience; netbird-mgmt adds the PKCE flow's too
         * (NetBird does not; docs/auth.md).
         * Empty strings and duplicates are skipped. The first non-empty one
         * (AuthAudience) prefixes the wt_* claims: "<aud>/wt_account_id". */
        const char *audiences[CP_JWT_MAX_AUDIENCES];
        const char *keys_location;      /* HttpConfig.AuthKeysLocation (JWKS URL); NULL with an OIDC endpoint */
        const char *oidc_config_endpoint; /* HttpConfig.OIDCConfigEndpoint; NULL = none */
        const char *user_id_claim;      /* HttpConfig.AuthUserIDClaim; NULL or "" = "sub" */
        /* HttpConfig.IdpSignKeyRefreshEnabled: refetch the keys when a
         * token names an unknown kid. Without it, keys are refetched only
         * when their max-age runs out (NetBird's behaviour). */
        bool key_refresh_enabled;
        int64_t leeway_s;               /* exp/nbf/iat tolerance; 0 = 60 s, < 0 = none */
        int64_t refetch_cooldown_ms;    /* unknown-kid refetch at most this often; 0 = 30 s
                                         * (NetBird's forcedRefreshCooldown) */
        int64_t default_max_age_s;      /* when the JWKS response has no max-age (or 0); 0 = 1 h */
        int64_t http_timeout_ms;        /* per fetch; 0 = 5 s */
        size_t cache_entries;           /* verified-token cache size; 0 = 4096 */
        const char *ca_file;            /* extra CA bundle for https (tests); NULL = system */
        /* Tests only: the wall clock in Unix seconds for exp/nbf/iat and the
         * token cache; NULL = time(). Key max-age and backoff use the
         * monotonic clock either way. */
        int64_t (*now_s)(void);
} cp_jwt_config;

/* What a valid token says. Owned by the caller, freed with
 * cp_jwt_claims_free(). */
typedef struct cp_jwt_claims {
        char *user_id;                  /* the user-id claim */
        char *email;                    /* "email" claim, "" when absent */
        char *name;                     /* "name" claim, "" when absent */
        /* NetBird's custom claims (the audience-prefixed forms and the bare
         * ones), "" when absent. */
        char *account_id;               /* wt_account_id */
        char *domain;                   /* wt_account_domain */
        char *domain_category;          /* wt_account_domain_category */
        int64_t exp;                    /* Unix seconds; 0 when the token has none */
        int64_t iat;                    /* 0 when absent */
        char token_hash[65];            /* hex SHA-256 of the token text */
        struct json_t *payload;         /* the whole claim set (one reference), for claims such as
                                         * the account's JWT groups claim */
} cp_jwt_claims;

/* Validates cfg (strings are copied) and starts fetching keys in the
 * background. Fails only for a configuration that can never work
 * (-EINVAL: no issuer and no OIDC endpoint, no audience, no keys
 * location and no OIDC endpoint, a bad URL). */
int cp_jwt_new(const cp_jwt_config *cfg, cp_jwt **ret, cp_error *reterr);
/* Stops the background thread and frees everything. Accepts NULL;
 * returns NULL. */
cp_jwt *cp_jwt_free(cp_jwt *j);

/*
 * Validates token (the compact JWS text, without "Bearer "). On success
 * *ret holds its claims. Failures:
 *   -EKEYEXPIRED  the token has expired (exp + leeway in the past)
 *   -EAGAIN       no signing keys yet (the IdP has not been reached)
 *   -EACCES       anything else wrong with the token: malformed, bad
 *                 signature, unknown kid, refused alg, wrong issuer or
 *                 audience, not yet valid, no user id
 *   -E2BIG        longer than CP_JWT_MAX_TOKEN_LEN
 * reterr says which check failed, in words fit for a log line (never the
 * token itself).
 */
int cp_jwt_validate(cp_jwt *j, const char *token, cp_jwt_claims **ret, cp_error *reterr);

/* The string array claim name of claims' payload (JWT groups), as a
 * NULL-terminated array of borrowed strings in *ret (free the array, not
 * the strings). A single string counts as one group; non-strings are
 * skipped. Returns the count (0 when absent). */
int cp_jwt_claims_strings(const cp_jwt_claims *claims, const char *name, const char ***ret);

cp_jwt_claims *cp_jwt_claims_free(cp_jwt_claims *c);

static inline void cp_jwt_claims_freep(cp_jwt_claims **c) {
        if (*c)
                (void) cp_jwt_claims_free(*c);
}
#define _cleanup_jwt_claims_ __attribute__((cleanup(cp_jwt_claims_freep)))

/* Readiness: true when signing keys are loaded; otherwise buf holds why
 * not (e.g. "JWKS fetch from https://idp/keys failed: connection
 * refused"), fit for /readyz. */
bool cp_jwt_status(cp_jwt *j, char *buf, size_t len);

/* The issuer in force (the discovery document's when one was read), for
 * messages and SSH JWTConfig; "" before it is known. Copies into buf. */
void cp_jwt_issuer(cp_jwt *j, char *buf, size_t len);
/* The JWKS URL in force (the discovery document's jwks_uri when one was
 * read), for SSH JWTConfig; "" before it is known. Copies into buf. */
void cp_jwt_keys_location(cp_jwt *j, char *buf, size_t len);

/* Counters for /metrics (any thread). */
typedef struct cp_jwt_stats {
        uint64_t validated;             /* tokens accepted (cache hits included) */
        uint64_t cache_hits;
        uint64_t refused;               /* tokens refused, any reason */
        uint64_t fetches;               /* JWKS fetches attempted */
        uint64_t fetch_failures;
        size_t keys;                    /* keys loaded now */
} cp_jwt_stats;
void cp_jwt_get_stats(cp_jwt *j, cp_jwt_stats *ret);
