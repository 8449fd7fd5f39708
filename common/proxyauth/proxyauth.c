#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/proxyauth.h"
#include "cp/strbuf.h"
#include "cp/util.h"

#include <argon2.h>
#include <jansson.h>
#include <sodium.h>

/* ---- base64url -------------------------------------------------------------- */

static char *b64url(const void *data, size_t n, int variant) {
        size_t len = sodium_base64_encoded_len(n, variant);
        char *out = cp_xmalloc(len);

        sodium_bin2base64(out, len, data, n, variant);
        return out;
}

/* Decodes base64url without padding into a new buffer (NUL added). */
static int unb64url(const char *in, size_t in_len, uint8_t **ret, size_t *ret_len) {
        size_t cap = in_len * 3 / 4 + 2, n = 0;
        uint8_t *out = cp_xmalloc(cap + 1);
        const char *end = NULL;

        if (sodium_base642bin(out, cap, in, in_len, NULL, &n, &end,
                              sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 || end != in + in_len) {
                free(out);
                return -EINVAL;
        }
        out[n] = 0;
        *ret = out;
        *ret_len = n;
        return 0;
}

/* ---- key pairs ------------------------------------------------------------------ */

int cp_proxyauth_keypair_new(const uint8_t data_key[32], char **ret_priv_sealed, char pub_b64[45],
                             cp_error *reterr) {
        uint8_t seed[32], pk[32], sk[64];
        int r;

        cp_random_bytes(seed, sizeof seed);
        crypto_sign_seed_keypair(pk, sk, seed);
        r = cp_pii_encrypt(data_key, seed, sizeof seed, ret_priv_sealed, reterr);
        cp_explicit_bzero(seed, sizeof seed);
        cp_explicit_bzero(sk, sizeof sk);
        if (r < 0)
                return r;
        cp_crypto_b64_encode(pk, sizeof pk, pub_b64, 45);
        return 0;
}

int cp_proxyauth_seed_open(const uint8_t data_key[32], const char *sealed, uint8_t seed[32], cp_error *reterr) {
        uint8_t buf[128];
        int r;

        if (!sealed || !*sealed)
                return cp_error_set(reterr, -EBADMSG, "the service has no session key");
        r = cp_pii_decrypt(data_key, sealed, buf, sizeof buf - 1, reterr);
        if (r < 0) {
                cp_error_prefix(reterr, "session key");
                if (reterr)
                        reterr->code = -EBADMSG;
                return -EBADMSG;
        }
        if (r == 32 || r == 64) {
                memcpy(seed, buf, 32);
                cp_explicit_bzero(buf, sizeof buf);
                return 0;
        }
        /* NetBird's form: base64 text of the 64-byte Go private key. */
        buf[r] = 0;
        uint8_t raw[96];
        int n = cp_crypto_b64_decode((const char *) buf, raw, sizeof raw);
        cp_explicit_bzero(buf, sizeof buf);
        if (n == 64) {
                memcpy(seed, raw, 32);
                cp_explicit_bzero(raw, sizeof raw);
                return 0;
        }
        cp_explicit_bzero(raw, sizeof raw);
        return cp_error_set(reterr, -EBADMSG, "stored session key has no usable form");
}

int cp_proxyauth_pub_parse(const char *b64, uint8_t pub[32]) {
        uint8_t raw[48];

        if (!b64 || cp_crypto_b64_decode(b64, raw, sizeof raw) != 32)
                return -EINVAL;
        memcpy(pub, raw, 32);
        return 0;
}

/* ---- signing ---------------------------------------------------------------------- */

static const char header_json[] = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}";

static json_t *strv(const char *const *v, size_t n) {
        json_t *a = json_array();

        for (size_t i = 0; i < n; i++)
                json_array_append_new(a, json_string(v[i] ? v[i] : ""));
        return a;
}

int cp_proxyauth_session_sign(const uint8_t seed[32], const cp_proxyauth_claims *c, int64_t now_s,
                              int64_t ttl_s, char **ret, cp_error *reterr) {
        uint8_t pk[32], sk[64], sig[64];

        if (!c || !c->sub || !*c->sub || !c->domain || !*c->domain || !c->method || !*c->method)
                return cp_error_set(reterr, -EINVAL, "session token needs a subject, a domain and a method");

        /* Key order as golang-jwt writes RegisteredClaims, then NetBird's. */
        json_auto_t *claims = json_object();
        json_object_set_new(claims, "iss", json_string(CP_PROXYAUTH_ISSUER));
        json_object_set_new(claims, "sub", json_string(c->sub));
        json_object_set_new(claims, "aud", strv(&c->domain, 1));
        json_object_set_new(claims, "exp", json_integer(now_s + ttl_s));
        json_object_set_new(claims, "nbf", json_integer(now_s));
        json_object_set_new(claims, "iat", json_integer(now_s));
        json_object_set_new(claims, "method", json_string(c->method));
        if (c->email && *c->email)
                json_object_set_new(claims, "email", json_string(c->email));
        if (c->n_groups > 0)
                json_object_set_new(claims, "groups", strv(c->groups, c->n_groups));
        if (c->n_group_names > 0)
                json_object_set_new(claims, "group_names", strv(c->group_names, c->n_group_names));
        _cleanup_free_ char *payload = json_dumps(claims, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!payload)
                return cp_error_set(reterr, -EINVAL, "session claims are not valid UTF-8");

        _cleanup_free_ char *h = b64url(header_json, strlen(header_json), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        _cleanup_free_ char *p = b64url(payload, strlen(payload), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        cp_strbuf sb;
        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "%s.%s", h, p);

        crypto_sign_seed_keypair(pk, sk, seed);
        crypto_sign_detached(sig, NULL, (const uint8_t *) sb.buf, sb.len, sk);
        cp_explicit_bzero(sk, sizeof sk);
        _cleanup_free_ char *s = b64url(sig, sizeof sig, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        cp_strbuf_addf(&sb, ".%s", s);
        *ret = cp_strbuf_detach(&sb);
        return 0;
}

/* ---- verification ------------------------------------------------------------------ */

void cp_proxyauth_verified_release(cp_proxyauth_verified *v) {
        if (!v)
                return;
        free(v->sub);
        free(v->method);
        free(v->email);
        memset(v, 0, sizeof *v);
}

static bool aud_has(const json_t *aud, const char *domain) {
        size_t i;
        json_t *e;

        if (json_is_string(aud))
                return strcmp(json_string_value(aud), domain) == 0;
        json_array_foreach(aud, i, e)
                if (json_is_string(e) && strcmp(json_string_value(e), domain) == 0)
                        return true;
        return false;
}

/* A NumericDate claim: absent is fine (0 and false), a number is read. */
static int num_claim(const json_t *claims, const char *name, int64_t *ret, bool *present) {
        json_t *v = json_object_get(claims, name);

        *present = v != NULL;
        if (!v)
                return 0;
        if (json_is_integer(v))
                *ret = json_integer_value(v);
        else if (json_is_real(v) && json_real_value(v) > -1e15 && json_real_value(v) < 1e15)
                /* Bounded first: converting a double out of int64_t's
                 * range is undefined (found by tests/fuzz, fuzz_proxy). */
                *ret = (int64_t) json_real_value(v);
        else
                return -EINVAL;
        return 0;
}

int cp_proxyauth_session_verify(const uint8_t pub[32], const uint8_t *prev_pub, const char *token,
                                const char *domain, int64_t now_s, cp_proxyauth_verified *ret,
                                cp_error *reterr) {
        _cleanup_free_ uint8_t *hdr = NULL, *body = NULL, *sig = NULL;
        size_t hdr_len, body_len, sig_len;
        const char *d1, *d2;

        if (!token || strlen(token) > CP_PROXYAUTH_TOKEN_MAX || !domain)
                return cp_error_set(reterr, -EINVAL, "token is missing or too long");
        d1 = strchr(token, '.');
        d2 = d1 ? strchr(d1 + 1, '.') : NULL;
        if (!d1 || !d2 || strchr(d2 + 1, '.'))
                return cp_error_set(reterr, -EINVAL, "token is not a JWT");
        if (unb64url(token, (size_t) (d1 - token), &hdr, &hdr_len) < 0 ||
            unb64url(d1 + 1, (size_t) (d2 - d1 - 1), &body, &body_len) < 0 ||
            unb64url(d2 + 1, strlen(d2 + 1), &sig, &sig_len) < 0 || sig_len != crypto_sign_BYTES)
                return cp_error_set(reterr, -EINVAL, "token is not base64url");

        json_auto_t *h = json_loadb((const char *) hdr, hdr_len, 0, NULL);
        json_t *alg = h ? json_object_get(h, "alg") : NULL;
        if (!json_is_string(alg) || strcmp(json_string_value(alg), "EdDSA") != 0)
                return cp_error_set(reterr, -EINVAL, "unexpected signing method");

        size_t signed_len = (size_t) (d2 - token);
        bool ok = crypto_sign_verify_detached(sig, (const uint8_t *) token, signed_len, pub) == 0;
        if (!ok && prev_pub)
                ok = crypto_sign_verify_detached(sig, (const uint8_t *) token, signed_len, prev_pub) == 0;
        if (!ok)
                return cp_error_set(reterr, -EBADMSG, "token signature is invalid");

        json_auto_t *c = json_loadb((const char *) body, body_len, 0, NULL);
        if (!json_is_object(c))
                return cp_error_set(reterr, -EINVAL, "token claims are not a JSON object");
        int64_t exp = 0, nbf = 0, iat = 0;
        bool has_exp, has_nbf, has_iat;
        if (num_claim(c, "exp", &exp, &has_exp) < 0 || num_claim(c, "nbf", &nbf, &has_nbf) < 0 ||
            num_claim(c, "iat", &iat, &has_iat) < 0)
                return cp_error_set(reterr, -EINVAL, "token has a malformed time claim");
        if (has_exp && now_s >= exp)
                return cp_error_set(reterr, -EKEYEXPIRED, "token is expired");
        if (has_nbf && now_s < nbf)
                return cp_error_set(reterr, -EKEYEXPIRED, "token is not valid yet");
        json_t *iss = json_object_get(c, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), CP_PROXYAUTH_ISSUER) != 0)
                return cp_error_set(reterr, -EACCES, "token has the wrong issuer");
        if (!aud_has(json_object_get(c, "aud"), domain))
                return cp_error_set(reterr, -EACCES, "token is not for this domain");
        json_t *sub = json_object_get(c, "sub");
        if (!json_is_string(sub) || !*json_string_value(sub))
                return cp_error_set(reterr, -EINVAL, "token has no subject");
        if (ret) {
                json_t *m = json_object_get(c, "method"), *e = json_object_get(c, "email");
                ret->sub = cp_xstrdup(json_string_value(sub));
                ret->method = cp_xstrdup(json_is_string(m) ? json_string_value(m) : "");
                ret->email = cp_xstrdup(json_is_string(e) ? json_string_value(e) : "");
                ret->exp = exp;
        }
        return 0;
}

/* ---- argon2id ------------------------------------------------------------------------ */

int cp_proxyauth_argon2id_verify(const char *hash, const char *secret, size_t secret_len) {
        int r;

        if (!hash || strncmp(hash, "$argon2id$", 10) != 0 || !secret)
                return 0;
        r = argon2id_verify(hash, secret, secret_len);
        if (r == ARGON2_OK)
                return 1;
        if (r == ARGON2_MEMORY_ALLOCATION_ERROR)
                return -ENOMEM;
        return 0;
}

int cp_proxyauth_argon2id_hash(const char *secret, size_t secret_len, char **ret, cp_error *reterr) {
        const uint32_t t = 2, m = 19456, p = 1;
        uint8_t salt[16];
        size_t len = argon2_encodedlen(t, m, p, sizeof salt, 32, Argon2_id);
        char *out = cp_xmalloc(len + 1);
        int r;

        cp_random_bytes(salt, sizeof salt);
        r = argon2id_hash_encoded(t, m, p, secret, secret_len, salt, sizeof salt, 32, out, len);
        if (r != ARGON2_OK) {
                free(out);
                return cp_error_set(reterr, -EIO, "argon2id: %s", argon2_error_message(r));
        }
        *ret = out;
        return 0;
}

/* ---- the OIDC state ---------------------------------------------------------------------- */

static void hmac_hex(const uint8_t key[32], const char *a, const char *b, char out[65]) {
        crypto_auth_hmacsha256_state st;
        uint8_t mac[32];

        crypto_auth_hmacsha256_init(&st, key, 32);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *) a, strlen(a));
        crypto_auth_hmacsha256_update(&st, (const uint8_t *) "|", 1);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *) b, strlen(b));
        crypto_auth_hmacsha256_final(&st, mac);
        sodium_bin2hex(out, 65, mac, sizeof mac);
}

int cp_proxyauth_state_new(const uint8_t key[32], const char *redirect_url, char **ret, cp_error *reterr) {
        uint8_t nonce[16];
        char mac[65];

        if (!redirect_url || !*redirect_url)
                return cp_error_set(reterr, -EINVAL, "redirect url is empty");
        cp_random_bytes(nonce, sizeof nonce);
        _cleanup_free_ char *n = b64url(nonce, sizeof nonce, sodium_base64_VARIANT_URLSAFE);
        _cleanup_free_ char *u = b64url(redirect_url, strlen(redirect_url), sodium_base64_VARIANT_URLSAFE);
        hmac_hex(key, redirect_url, n, mac);
        cp_strbuf sb;
        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "%s|%s|%s", u, n, mac);
        *ret = cp_strbuf_detach(&sb);
        return 0;
}

int cp_proxyauth_state_check(const uint8_t key[32], const char *state, char **ret_redirect, cp_error *reterr) {
        const char *p1, *p2;
        char mac[65];

        if (!state || strlen(state) > 8192)
                return cp_error_set(reterr, -EBADMSG, "invalid state format");
        p1 = strchr(state, '|');
        p2 = p1 ? strchr(p1 + 1, '|') : NULL;
        if (!p1 || !p2 || strchr(p2 + 1, '|'))
                return cp_error_set(reterr, -EBADMSG, "invalid state format");
        size_t ulen = (size_t) (p1 - state), cap = ulen + 4, n = 0;
        _cleanup_free_ char *url = cp_xmalloc(cap + 1);
        const char *end = NULL;
        if (sodium_base642bin((uint8_t *) url, cap, state, ulen, NULL, &n, &end,
                              sodium_base64_VARIANT_URLSAFE) != 0 || end != p1 || memchr(url, 0, n))
                return cp_error_set(reterr, -EBADMSG, "invalid state encoding");
        url[n] = 0;
        _cleanup_free_ char *nonce = strndup(p1 + 1, (size_t) (p2 - p1 - 1));
        hmac_hex(key, url, nonce, mac);
        if (strlen(p2 + 1) != 64 || sodium_memcmp(mac, p2 + 1, 64) != 0)
                return cp_error_set(reterr, -EBADMSG, "invalid state signature");
        *ret_redirect = TAKE_PTR(url);
        return 0;
}
