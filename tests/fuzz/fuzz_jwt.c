/*
 * fuzz_jwt: the IdP token path shared by the REST API and the agents'
 * SSO Login (common/jwt): cp_jwt_validate() on a token (header, alg and
 * key rules, signature, claims), and the documents fetched from the IdP
 * (cp_jwt_parse_jwks, cp_jwt_parse_discovery, cp_jwt_parse_max_age).
 *
 * Input: byte 0 % 5 chooses:
 *   0  the rest is a token as a client sends it (after "Bearer ");
 *   1  the rest is a token's claim set, which the harness signs (ES256,
 *      the fixed key of the installed JWKS, kid "k1"), so the claim
 *      checks after the signature are reached;
 *   2  a JWKS document; 3  an OIDC discovery document;
 *   4  a Cache-Control header value.
 * The validator's keys are installed with cp_jwt_keys_install(); its
 * JWKS URL points at a closed local port, so its background fetch fails
 * and keeps them. The clock is fixed.
 */
#include "cp/base.h"
#include "cp/jwt.h"

#include <cjose/cjose.h>
#include <fcntl.h>
#include <jansson.h>

#include "jwt-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NOW_S 1765000000
#define ISSUER "https://idp.example.com/"

/* A P-256 key made for this harness only. */
static const char priv_jwk[] =
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"9DsTUtbZMY45TCNle9nlNWVSeu6ILSRNOZWAcubvMLM\","
        "\"y\":\"x-ecB6jrSTi9LlhUyvRzRncKWderOIasV0v4s37opv0\",\"d\":\"auBdTSuKuOUWd_89sXeo82-KGF_xg2mW46uU1XFA4Y4\"}";
static const char jwks[] =
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"k1\",\"use\":\"sig\",\"alg\":\"ES256\","
        "\"x\":\"9DsTUtbZMY45TCNle9nlNWVSeu6ILSRNOZWAcubvMLM\",\"y\":\"x-ecB6jrSTi9LlhUyvRzRncKWderOIasV0v4s37opv0\"}]}";

static cp_jwt *jwt;
static cjose_jwk_t *signer;

static int64_t fixed_now(void) {
        return NOW_S;
}

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        cp_jwt_config cfg = {
                .issuer = ISSUER,
                .audiences = { "netbird", "extra-aud" },
                .keys_location = "http://127.0.0.1:9/jwks",
                .default_max_age_s = 1000000,
                .http_timeout_ms = 200,
                .cache_entries = 64,
                .now_s = fixed_now,
        };
        cp_jwt_keyset *ks = NULL;
        cp_error err = { 0 };
        cjose_err cerr;

        if (cp_jwt_new(&cfg, &jwt, &err) < 0 || cp_jwt_parse_jwks(jwks, strlen(jwks), "fixed", &ks, &err) < 0)
                abort();
        cp_jwt_keys_install(jwt, ks, 1000000);
        signer = cjose_jwk_import(priv_jwk, strlen(priv_jwk), &cerr);
        if (!signer)
                abort();
        if (getenv("CP_FUZZ_WRITE_SEEDS")) {
                write_seeds(getenv("CP_FUZZ_WRITE_SEEDS"));
                exit(0);
        }
        return 0;
}

/* The compact form of claims signed with the fixed key (malloc'd). */
static char *sign(const uint8_t *claims, size_t n) {
        cjose_header_t *h = cjose_header_new(NULL);
        cjose_err cerr;
        cjose_jws_t *jws;
        const char *compact = NULL;
        char *out = NULL;

        if (!h || !cjose_header_set(h, CJOSE_HDR_ALG, CJOSE_HDR_ALG_ES256, &cerr) ||
            !cjose_header_set(h, CJOSE_HDR_KID, "k1", &cerr))
                abort();
        jws = cjose_jws_sign(signer, h, claims, n, &cerr);
        if (!jws || !cjose_jws_export(jws, &compact, &cerr))
                abort();
        out = cp_xstrdup(compact);
        cjose_jws_release(jws);
        cjose_header_release(h);
        return out;
}

static void validate(char *token) {
        cp_jwt_claims *claims = NULL;
        cp_error err = { 0 };
        const char **groups = NULL;

        if (cp_jwt_validate(jwt, token, &claims, &err) == 0) {
                if (!claims->user_id || !claims->user_id[0])
                        abort();        /* a valid token always has a user */
                (void) cp_jwt_claims_strings(claims, "groups", &groups);
                free(groups);
                cp_jwt_claims_free(claims);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        const char *p = (const char *) data + 1;
        size_t n = size - 1;

        switch (data[0] % 5) {
        case 0: {
                _cleanup_free_ char *t = cp_xstrndup(p, n);
                validate(t);
                break;
        }
        case 1: {
                _cleanup_free_ char *t = sign((const uint8_t *) p, n);
                validate(t);
                break;
        }
        case 2: {
                cp_jwt_keyset *ks = NULL;
                cp_error err = { 0 };
                if (cp_jwt_parse_jwks(p, n, "fuzz", &ks, &err) == 0) {
                        for (size_t i = 0; i < ks->n; i++)
                                (void) cp_jwt_keyset_find(ks, ks->keys[i].kid ? ks->keys[i].kid : "");
                        cp_jwt_keyset_unref(ks);
                }
                break;
        }
        case 3: {
                char *iss = NULL, *uri = NULL;
                cp_error err = { 0 };
                if (cp_jwt_parse_discovery(p, n, "fuzz", &iss, &uri, &err) == 0) {
                        free(iss);
                        free(uri);
                }
                break;
        }
        default: {
                int64_t v;
                if (cp_jwt_parse_max_age(p, n, &v) && v < 0)
                        abort();
                break;
        }
        }
        return 0;
}

/* ---- seeds ------------------------------------------------------------------- */

static void put(const char *dir, const char *name, uint8_t first, const char *p) {
        char path[512];
        size_t n = strlen(p);
        int fd;

        (void) snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, &first, 1) != 1 || write(fd, p, n) != (ssize_t) n)
                abort();
        close(fd);
}

static void write_seeds(const char *dir) {
        const char *claims = "{\"iss\":\"" ISSUER "\",\"aud\":[\"netbird\",\"x\"],\"sub\":\"user-1\","
                             "\"email\":\"u@example.com\",\"name\":\"U\",\"exp\":1765003600,\"iat\":1764999000,"
                             "\"nbf\":1764999000,\"groups\":[\"g1\",\"g2\"],\"netbird/wt_account_id\":\"acc\","
                             "\"wt_account_domain\":\"example.com\",\"wt_account_domain_category\":\"private\"}";
        _cleanup_free_ char *tok = sign((const uint8_t *) claims, strlen(claims));

        put(dir, "token-valid", 0, tok);
        put(dir, "token-none", 0, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.");
        put(dir, "token-hs256", 0, "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl");
        put(dir, "claims", 1, claims);
        put(dir, "claims-expired", 1, "{\"iss\":\"" ISSUER "\",\"aud\":\"netbird\",\"sub\":\"u\",\"exp\":1}");
        put(dir, "jwks", 2, jwks);
        put(dir, "jwks-rsa", 2, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"use\":\"sig\",\"alg\":\"RS256\",\"e\":\"AQAB\","
            "\"n\":\"xjlCRBqkQRNvOemA0sH1MrkZ2h3ZrWmO8zdQvx_qRUCGk6Z2JN7ynyGw0zjMfQ3KGGxyqEoHxaMJ4fbcnP0tJ7nF7B"
            "Wlu6AdR6ZtVyS5MnovYkYkZ7ERQHhtB5dTmm1dw7L1s2yjQ3z6pnLQ7FuH8Ei3ZSVD0xdzXVNkbRiVbpGJHhGWQ8S6kFjPw-"
            "Pm6uTDEFETtx4SaN0xkKEbF_c5yrNlRMhu7aAukRrKIXjQ9k1PXtnLeA3ISV6lGMSKxdD3dLwvoljO4Jr8ZGyvjSWUvZaMzG"
            "Ofq7w1Vz8R46y1TsNnW5m7V8VUUbH7qG4KVcWsrlXHc_jyMPTn-NwyL7RYHrJQ\"},{\"kty\":\"oct\",\"k\":\"AAAA\"}]}");
        put(dir, "discovery", 3, "{\"issuer\":\"" ISSUER "\",\"jwks_uri\":\"https://idp.example.com/jwks\","
            "\"authorization_endpoint\":\"https://idp.example.com/auth\"}");
        put(dir, "cache-control", 4, " public, max-age=3600, must-revalidate");
}
