/*
 * cp/crypto-box.h: the NetBird agent envelope and WireGuard keys.
 *
 * Every encrypted management RPC carries its protobuf payload in
 * EncryptedMessage.body, sealed with a NaCl box (X25519, HSalsa20,
 * XSalsa20-Poly1305) between the sender's and the receiver's WireGuard
 * keys (netbird-protocol.md section 2). The body is laid out as
 *
 *     nonce[24] || poly1305 tag[16] || ciphertext[len(plaintext)]
 *
 * with a fresh random nonce per message, which is exactly libsodium's
 * crypto_box_easy output with the nonce in front and what Go's
 * nacl/box.Seal produces when given the nonce as prefix. An empty
 * plaintext (Logout's Empty) gives the 40-byte minimum.
 *
 * Keys: WireGuard keys are Curve25519 keys, 32 bytes, written on the wire
 * as standard base64 with padding (44 characters).
 *
 * Threads: every function is thread-safe and allocates nothing; a
 * cp_crypto_box_shared may be used by several threads at once once
 * initialised (it is only read). cp_crypto_init() (cp/crypto.h) must have
 * run once in the process.
 *
 * Secrets: private keys and shared keys are passed in caller memory; the
 * functions wipe their own copies and intermediates, the caller wipes its
 * buffers (cp_explicit_bzero, cp_crypto_box_shared_release).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/error.h"

#define CP_WG_KEY_LEN           32      /* raw key bytes */
#define CP_WG_KEY_B64_LEN       45      /* 44 base64 characters + NUL */

#define CP_BOX_NONCE_LEN        24
#define CP_BOX_TAG_LEN          16
#define CP_BOX_OVERHEAD         (CP_BOX_NONCE_LEN + CP_BOX_TAG_LEN)     /* 40 */
/* Largest plaintext we seal or open: far above any network map gRPC would
 * carry, and small enough that lengths always fit an int. */
#define CP_BOX_MAX_PLAIN        (64u * 1024 * 1024)

/* ---- WireGuard / X25519 keys ------------------------------------------------ */

/* Parses a key in standard base64: exactly 44 characters, padding
 * included, decoding to 32 bytes (wgtypes.ParseKey's rule). Returns 0 and
 * fills ret, or -EINVAL with reterr saying what is wrong (the key itself
 * is not repeated, so arbitrary input never reaches logs). Non-canonical
 * encodings (stray bits in the last character) are refused; every real
 * agent sends canonical keys. */
int cp_crypto_wg_key_parse(const char *b64, uint8_t ret[CP_WG_KEY_LEN], cp_error *reterr);

/* Standard base64 of a 32-byte key into out (44 characters + NUL). */
void cp_crypto_wg_key_format(const uint8_t key[CP_WG_KEY_LEN], char out[CP_WG_KEY_B64_LEN]);

/* A new random key pair (crypto_box_keypair). The private key is returned
 * clamped, the form WireGuard tools write (clamping does not change the
 * public key). Aborts only if the kernel has no randomness. */
void cp_crypto_wg_keypair_new(uint8_t ret_priv[CP_WG_KEY_LEN], uint8_t ret_pub[CP_WG_KEY_LEN]);

/* The public key of a private key (X25519 with the base point). Returns 0,
 * or -EINVAL when the result is the all-zero point, which no valid private
 * key produces. */
int cp_crypto_wg_public_from_private(const uint8_t priv[CP_WG_KEY_LEN],
                                     uint8_t ret_pub[CP_WG_KEY_LEN], cp_error *reterr);

/* ---- the envelope ---------------------------------------------------------
 * Both sides of a conversation derive the same shared key: ours from
 * (peer public, server private), the peer's from (server public, peer
 * private). Computing it costs one X25519; a Sync stream that seals many
 * messages to one peer should compute it once with cp_crypto_box_shared_init
 * and use the _shared variants. */

typedef struct cp_crypto_box_shared {
        uint8_t key[32];        /* the HSalsa20-derived box key: a secret */
} cp_crypto_box_shared;

/* Derives the shared key of peer_pub and our_priv into *shared. Returns 0,
 * or -EINVAL when peer_pub is a low-order point (the X25519 result would
 * be all zeros; libsodium refuses such keys, and so do we). *shared is
 * left untouched on failure. Release it with cp_crypto_box_shared_release. */
int cp_crypto_box_shared_init(cp_crypto_box_shared *shared, const uint8_t peer_pub[CP_WG_KEY_LEN],
                              const uint8_t our_priv[CP_WG_KEY_LEN], cp_error *reterr);
/* Wipes the key. Accepts NULL. */
void cp_crypto_box_shared_release(cp_crypto_box_shared *shared);

/* Bytes a sealed body of a plain_len plaintext takes: plain_len + 40. */
static inline size_t cp_crypto_box_sealed_len(size_t plain_len) {
        return plain_len + CP_BOX_OVERHEAD;
}

/* Seals plain[0..plain_len) into out, which must hold
 * cp_crypto_box_sealed_len(plain_len) bytes (out and plain must not
 * overlap). Returns the number of bytes written, or:
 *   -EMSGSIZE  plain_len > CP_BOX_MAX_PLAIN
 *   -ENOBUFS   out_cap too small
 *   -EINVAL    (cp_crypto_box_seal only) peer_pub is a low-order point */
int cp_crypto_box_seal_shared(const cp_crypto_box_shared *shared, const void *plain, size_t plain_len,
                              uint8_t *out, size_t out_cap, cp_error *reterr);
int cp_crypto_box_seal(const uint8_t peer_pub[CP_WG_KEY_LEN], const uint8_t our_priv[CP_WG_KEY_LEN],
                       const void *plain, size_t plain_len,
                       uint8_t *out, size_t out_cap, cp_error *reterr);

/* Opens body[0..body_len) into out, which must hold body_len - 40 bytes
 * (body and out must not overlap). Returns the plaintext length, or:
 *   -EBADMSG   body shorter than 40 bytes, or authentication failed (wrong
 *              key pair, or the body was altered)
 *   -EMSGSIZE  body longer than CP_BOX_MAX_PLAIN + 40
 *   -ENOBUFS   out_cap too small
 *   -EINVAL    (cp_crypto_box_open only) peer_pub is a low-order point
 * out is written only on success (the tag is checked before decrypting). */
int cp_crypto_box_open_shared(const cp_crypto_box_shared *shared, const uint8_t *body, size_t body_len,
                              uint8_t *out, size_t out_cap, cp_error *reterr);
int cp_crypto_box_open(const uint8_t peer_pub[CP_WG_KEY_LEN], const uint8_t our_priv[CP_WG_KEY_LEN],
                       const uint8_t *body, size_t body_len,
                       uint8_t *out, size_t out_cap, cp_error *reterr);
