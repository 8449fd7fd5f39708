#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-box.h"

#include <sodium.h>

_Static_assert(CP_WG_KEY_LEN == crypto_box_PUBLICKEYBYTES, "X25519 public key size");
_Static_assert(CP_WG_KEY_LEN == crypto_box_SECRETKEYBYTES, "X25519 private key size");
_Static_assert(CP_BOX_NONCE_LEN == crypto_box_NONCEBYTES, "box nonce size");
_Static_assert(CP_BOX_TAG_LEN == crypto_box_MACBYTES, "box tag size");
_Static_assert(sizeof ((cp_crypto_box_shared *) 0)->key == crypto_box_BEFORENMBYTES, "box shared key size");
_Static_assert(CP_BOX_MAX_PLAIN + CP_BOX_OVERHEAD <= INT_MAX, "lengths are returned as int");

int cp_crypto_wg_key_parse(const char *b64, uint8_t ret[CP_WG_KEY_LEN], cp_error *reterr) {
        uint8_t key[CP_WG_KEY_LEN + 1];
        size_t n = b64 ? strlen(b64) : 0;
        int r;

        if (n != CP_WG_KEY_B64_LEN - 1)
                return cp_error_set(reterr, -EINVAL,
                                    "invalid WireGuard key: expected 44 characters of base64, got %zu", n);
        /* One spare byte: 44 characters without padding decode to 33
         * bytes, which should read as a wrong size, not as bad base64. */
        r = cp_crypto_b64_decode(b64, key, sizeof key);
        if (r < 0)
                return cp_error_set(reterr, -EINVAL, "invalid WireGuard key: not standard base64");
        if (r != CP_WG_KEY_LEN)
                return cp_error_set(reterr, -EINVAL,
                                    "invalid WireGuard key: decodes to %d bytes, expected 32", r);
        memcpy(ret, key, CP_WG_KEY_LEN);
        return 0;
}

void cp_crypto_wg_key_format(const uint8_t key[CP_WG_KEY_LEN], char out[CP_WG_KEY_B64_LEN]) {
        cp_crypto_b64_encode(key, CP_WG_KEY_LEN, out, CP_WG_KEY_B64_LEN);
}

void cp_crypto_wg_keypair_new(uint8_t ret_priv[CP_WG_KEY_LEN], uint8_t ret_pub[CP_WG_KEY_LEN]) {
        /* crypto_box_keypair hashes fresh randomness into the secret and
         * cannot fail once sodium_init() has run. */
        if (crypto_box_keypair(ret_pub, ret_priv) != 0)
                abort();
        /* Clamp the way WireGuard does; X25519 clamps internally anyway, so
         * the public key computed above stays valid. */
        ret_priv[0] &= 248;
        ret_priv[31] = (uint8_t) ((ret_priv[31] & 127) | 64);
}

int cp_crypto_wg_public_from_private(const uint8_t priv[CP_WG_KEY_LEN],
                                     uint8_t ret_pub[CP_WG_KEY_LEN], cp_error *reterr) {
        uint8_t pub[CP_WG_KEY_LEN];

        if (crypto_scalarmult_base(pub, priv) != 0)
                return cp_error_set(reterr, -EINVAL, "invalid WireGuard private key");
        memcpy(ret_pub, pub, sizeof pub);
        return 0;
}

int cp_crypto_box_shared_init(cp_crypto_box_shared *shared, const uint8_t peer_pub[CP_WG_KEY_LEN],
                              const uint8_t our_priv[CP_WG_KEY_LEN], cp_error *reterr) {
        cp_crypto_box_shared tmp;

        /* beforenm fails only when the X25519 result is all zeros, i.e. the
         * peer key is a low-order point chosen to force a known key. */
        if (crypto_box_beforenm(tmp.key, peer_pub, our_priv) != 0) {
                cp_explicit_bzero(&tmp, sizeof tmp);
                return cp_error_set(reterr, -EINVAL, "unusable WireGuard public key (low-order point)");
        }
        memcpy(shared, &tmp, sizeof tmp);
        cp_explicit_bzero(&tmp, sizeof tmp);
        return 0;
}

void cp_crypto_box_shared_release(cp_crypto_box_shared *shared) {
        if (shared)
                cp_explicit_bzero(shared, sizeof *shared);
}

int cp_crypto_box_seal_shared(const cp_crypto_box_shared *shared, const void *plain, size_t plain_len,
                              uint8_t *out, size_t out_cap, cp_error *reterr) {
        if (plain_len > CP_BOX_MAX_PLAIN)
                return cp_error_set(reterr, -EMSGSIZE, "message of %zu bytes is too large to seal (limit %u)",
                                    plain_len, CP_BOX_MAX_PLAIN);
        size_t n = cp_crypto_box_sealed_len(plain_len);
        if (out_cap < n)
                return cp_error_set(reterr, -ENOBUFS, "sealing needs %zu bytes, buffer has %zu", n, out_cap);

        /* The nonce goes first; crypto_box_easy then writes tag || ciphertext
         * right after it, which is the layout the Go side expects. */
        randombytes_buf(out, CP_BOX_NONCE_LEN);
        if (crypto_box_easy_afternm(out + CP_BOX_NONCE_LEN, plain, plain_len, out, shared->key) != 0)
                return cp_error_set(reterr, -EMSGSIZE, "message too large to seal");
        return (int) n;
}

int cp_crypto_box_seal(const uint8_t peer_pub[CP_WG_KEY_LEN], const uint8_t our_priv[CP_WG_KEY_LEN],
                       const void *plain, size_t plain_len,
                       uint8_t *out, size_t out_cap, cp_error *reterr) {
        cp_crypto_box_shared shared;
        int r;

        r = cp_crypto_box_shared_init(&shared, peer_pub, our_priv, reterr);
        if (r < 0)
                return r;
        r = cp_crypto_box_seal_shared(&shared, plain, plain_len, out, out_cap, reterr);
        cp_crypto_box_shared_release(&shared);
        return r;
}

int cp_crypto_box_open_shared(const cp_crypto_box_shared *shared, const uint8_t *body, size_t body_len,
                              uint8_t *out, size_t out_cap, cp_error *reterr) {
        if (body_len < CP_BOX_OVERHEAD)
                return cp_error_set(reterr, -EBADMSG,
                                    "sealed message of %zu bytes is shorter than the 40-byte minimum", body_len);
        if (body_len - CP_BOX_OVERHEAD > CP_BOX_MAX_PLAIN)
                return cp_error_set(reterr, -EMSGSIZE, "sealed message of %zu bytes is too large (limit %u)",
                                    body_len, CP_BOX_MAX_PLAIN + CP_BOX_OVERHEAD);
        size_t n = body_len - CP_BOX_OVERHEAD;
        if (out_cap < n)
                return cp_error_set(reterr, -ENOBUFS, "opening needs %zu bytes, buffer has %zu", n, out_cap);

        if (crypto_box_open_easy_afternm(out, body + CP_BOX_NONCE_LEN, body_len - CP_BOX_NONCE_LEN,
                                         body, shared->key) != 0)
                return cp_error_set(reterr, -EBADMSG,
                                    "cannot open sealed message: wrong key or altered message");
        return (int) n;
}

int cp_crypto_box_open(const uint8_t peer_pub[CP_WG_KEY_LEN], const uint8_t our_priv[CP_WG_KEY_LEN],
                       const uint8_t *body, size_t body_len,
                       uint8_t *out, size_t out_cap, cp_error *reterr) {
        cp_crypto_box_shared shared;
        int r;

        /* Cheap checks before the X25519, so junk is refused cheaply. */
        if (body_len < CP_BOX_OVERHEAD)
                return cp_error_set(reterr, -EBADMSG,
                                    "sealed message of %zu bytes is shorter than the 40-byte minimum", body_len);
        r = cp_crypto_box_shared_init(&shared, peer_pub, our_priv, reterr);
        if (r < 0)
                return r;
        r = cp_crypto_box_open_shared(&shared, body, body_len, out, out_cap, reterr);
        cp_crypto_box_shared_release(&shared);
        return r;
}
