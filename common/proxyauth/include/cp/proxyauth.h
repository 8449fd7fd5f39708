/*
 * cp/proxyauth.h: the reverse proxy's session tokens and service secrets.
 *
 * Session tokens are the JWTs NetBird's management mints for a user of a
 * reverse-proxy service (proxy-and-api.md 1.6) and the proxy keeps in its
 * nb_session cookie, validating them locally with the mapping's
 * auth.session_key:
 *
 *     header  {"alg":"EdDSA","typ":"JWT"}
 *     claims  {"iss":"netbird-management","sub":USER,"aud":[DOMAIN],
 *              "exp":NOW+24h,"nbf":NOW,"iat":NOW,"method":METHOD,
 *              "email":..., "groups":[...], "group_names":[...]}
 *
 * (email, groups and group_names only when not empty), each part
 * base64url without padding, signed with Ed25519 (libsodium's
 * crypto_sign_detached) under the service's key pair.
 *
 * Key pair: per service, in services.session_private_key (the 32-byte
 * Ed25519 seed sealed with the DataStoreEncryptionKey, cp/crypto-aead.h)
 * and services.session_public_key (standard base64 of the 32-byte public
 * key). Any replica holding the DataStoreEncryptionKey can mint and
 * verify. A stored private value that decrypts to 64 bytes (seed ||
 * public, Go's ed25519.PrivateKey) or to the standard base64 text of
 * those 64 bytes (NetBird's own column) is accepted too.
 *
 * Service secrets (password, PIN, header values) are argon2id hashes in
 * PHC form ($argon2id$v=19$m=..,t=..,p=..$salt$hash), checked with
 * libargon2.
 *
 * Threads: every function is thread-safe and keeps no state; secrets in
 * caller memory are the caller's to wipe. cp_crypto_init() must have run.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

#define CP_PROXYAUTH_ISSUER             "netbird-management"
#define CP_PROXYAUTH_SESSION_TTL_S      (24 * 3600)
#define CP_PROXYAUTH_SEED_LEN           32
#define CP_PROXYAUTH_PUB_LEN            32
/* Largest token verify looks at (a cookie is at most 4 KiB anyway). */
#define CP_PROXYAUTH_TOKEN_MAX          8192

/* ---- key pairs ------------------------------------------------------------ */

/* A new pair: *ret_priv_sealed (malloc'd, caller frees) is the seed sealed
 * with data_key, pub_b64 the public key in standard base64 (44 + NUL). */
int cp_proxyauth_keypair_new(const uint8_t data_key[32], char **ret_priv_sealed, char pub_b64[45],
                             cp_error *reterr);

/* Opens a stored private value into the seed. -EBADMSG when it does not
 * decrypt with data_key or has no usable form. seed is written only on
 * success; the caller wipes it. */
int cp_proxyauth_seed_open(const uint8_t data_key[32], const char *sealed, uint8_t seed[32],
                           cp_error *reterr);

/* Parses a standard-base64 public key (32 bytes). -EINVAL otherwise. */
int cp_proxyauth_pub_parse(const char *b64, uint8_t pub[32]);

/* ---- session tokens ------------------------------------------------------ */

typedef struct cp_proxyauth_claims {
        const char *sub;                /* user id (or peer id); required */
        const char *domain;             /* the one audience; required */
        const char *method;             /* "password" | "pin" | "oidc" | "header" */
        const char *email;              /* NULL or "" = left out */
        const char *const *groups;      /* group ids; n_groups 0 = left out */
        size_t n_groups;
        const char *const *group_names; /* paired with groups; n 0 = left out */
        size_t n_group_names;
} cp_proxyauth_claims;

/* Mints a token valid from now_s for ttl_s seconds. *ret is malloc'd (the
 * caller frees it). -EINVAL for a missing sub/domain/method. */
int cp_proxyauth_session_sign(const uint8_t seed[32], const cp_proxyauth_claims *c, int64_t now_s,
                              int64_t ttl_s, char **ret, cp_error *reterr);

/* What verify found in a valid token; strings malloc'd, freed with
 * cp_proxyauth_verified_release. */
typedef struct cp_proxyauth_verified {
        char *sub;
        char *method;
        char *email;
        int64_t exp;
} cp_proxyauth_verified;

void cp_proxyauth_verified_release(cp_proxyauth_verified *v);

/* Verifies token for domain at now_s against pub and, when not NULL,
 * prev_pub (the key before a rotation, still inside its grace period):
 * alg EdDSA, a valid signature by either key, iss netbird-management,
 * domain among aud, now < exp, nbf <= now, sub not empty (golang-jwt's
 * rules as NetBird's proxy applies them). Returns 0 and fills *ret (may
 * be NULL), or -EINVAL (malformed), -EBADMSG (bad signature), -EKEYEXPIRED
 * (expired or not yet valid), -EACCES (wrong issuer or audience). */
int cp_proxyauth_session_verify(const uint8_t pub[32], const uint8_t *prev_pub, const char *token,
                                const char *domain, int64_t now_s, cp_proxyauth_verified *ret,
                                cp_error *reterr);

/* ---- argon2id ------------------------------------------------------------- */

/* 1 when secret matches the PHC-form argon2id hash, 0 when it does not
 * (also for an empty or malformed hash: a misconfigured secret never
 * matches), negative only on an internal failure (-ENOMEM). */
int cp_proxyauth_argon2id_verify(const char *hash, const char *secret, size_t secret_len);

/* Hashes secret in NetBird's parameters (m=19456, t=2, p=1, 16-byte salt,
 * 32-byte key) into *ret (malloc'd). For tests and the REST layer. */
int cp_proxyauth_argon2id_hash(const char *secret, size_t secret_len, char **ret, cp_error *reterr);

/* ---- the OIDC state ------------------------------------------------------ */

/* base64url(redirect) "|" base64url(nonce16) "|" hex(HMAC-SHA256(key,
 * redirect "|" base64url(nonce16))): NetBird's state (base64url with
 * padding, as Go's URLEncoding). *ret malloc'd. */
int cp_proxyauth_state_new(const uint8_t key[32], const char *redirect_url, char **ret, cp_error *reterr);
/* Checks the HMAC of state in constant time; on success *ret_redirect
 * (malloc'd) is the redirect URL it carries. -EBADMSG otherwise. */
int cp_proxyauth_state_check(const uint8_t key[32], const char *state, char **ret_redirect, cp_error *reterr);
