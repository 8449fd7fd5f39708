#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-box.h"
#include "store-int.h"

/* The server_keys row this module owns. */
#define PURPOSE_WIREGUARD "wireguard"

/* Keeps reterr's message but reports the failure as a bad row. */
static int bad_row(cp_error *reterr, const char *what) {
        cp_error_prefix(reterr, "%s", what);
        if (reterr)
                reterr->code = -EBADMSG;
        return -EBADMSG;
}

/* Decodes and checks one stored row into priv/pub. Returns 0, or a
 * negative error with reterr set; priv is wiped on failure. */
static int decode_row(const PGresult *res, const uint8_t data_key[32],
                      uint8_t priv[CP_WG_KEY_LEN], uint8_t pub[CP_WG_KEY_LEN], cp_error *reterr) {
        uint8_t derived[CP_WG_KEY_LEN];
        int r;

        r = cp_crypto_wg_key_parse(PQgetvalue(res, 0, 0), pub, reterr);
        if (r < 0)
                return bad_row(reterr, "stored server public key is malformed");

        r = cp_crypto_aead_decrypt(data_key, PQgetvalue(res, 0, 1), priv, CP_WG_KEY_LEN, reterr);
        if (r == -EBADMSG) {
                r = cp_error_set(reterr, -EKEYREJECTED,
                                 "cannot decrypt the stored server key: the DataStoreEncryptionKey does not "
                                 "match the one the key was stored with");
                cp_error_hint(reterr, "give every replica the DataStoreEncryptionKey the deployment was "
                              "created with; only if it is lost, delete the server_keys row so a new server "
                              "key is made (agents pick it up on their next request)");
                return r;
        }
        if (r < 0)
                return bad_row(reterr, "stored server private key is malformed");
        if (r != CP_WG_KEY_LEN) {
                cp_explicit_bzero(priv, CP_WG_KEY_LEN);
                return cp_error_set(reterr, -EBADMSG, "stored server private key has %d bytes, expected 32", r);
        }

        /* A row whose halves disagree (edited by hand, or written with a
         * different key pair) would make every agent request fail to open;
         * refuse it here, where the cause is still obvious. */
        r = cp_crypto_wg_public_from_private(priv, derived, reterr);
        if (r < 0 || memcmp(derived, pub, sizeof derived) != 0) {
                cp_explicit_bzero(priv, CP_WG_KEY_LEN);
                return cp_error_set(reterr, -EBADMSG,
                                    "stored server key pair is inconsistent: the private key does not "
                                    "belong to the public key");
        }
        return 0;
}

/* Reads the row. Returns 1 and fills priv/pub when it exists, 0 when it
 * does not, negative on error. */
static int read_row(cp_store_conn *c, const uint8_t data_key[32],
                    uint8_t priv[CP_WG_KEY_LEN], uint8_t pub[CP_WG_KEY_LEN], cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { PURPOSE_WIREGUARD };
        int r;

        r = cp_store__exec(c, ST_SERVER_KEY_GET, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) == 0)
                return 0;
        r = decode_row(res, data_key, priv, pub, reterr);
        return r < 0 ? r : 1;
}

/* Generates a pair and offers it; a concurrent replica's insert may win,
 * which is fine: the caller reads back whatever landed. */
static int insert_new(cp_store_conn *c, const uint8_t data_key[32], cp_error *reterr) {
        uint8_t priv[CP_WG_KEY_LEN], pub[CP_WG_KEY_LEN];
        char pub_b64[CP_WG_KEY_B64_LEN];
        _cleanup_free_ char *priv_enc = NULL;
        int r;

        cp_crypto_wg_keypair_new(priv, pub);
        r = cp_crypto_aead_encrypt(data_key, priv, sizeof priv, &priv_enc, reterr);
        cp_explicit_bzero(priv, sizeof priv);
        if (r < 0)
                return r;
        cp_crypto_wg_key_format(pub, pub_b64);

        const char *params[3] = { PURPOSE_WIREGUARD, pub_b64, priv_enc };
        return cp_store__exec(c, ST_SERVER_KEY_INSERT, params, NULL, reterr);
}

int cp_store_server_key_get_or_create(cp_store *s, const uint8_t data_key[32],
                                      uint8_t ret_priv[32], uint8_t ret_pub[32], cp_error *reterr) {
        uint8_t priv[CP_WG_KEY_LEN], pub[CP_WG_KEY_LEN];
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        /* Autocommit throughout: the INSERT waits for a concurrent
         * inserter's transaction to end, and the SELECT after it runs in a
         * new snapshot, so it sees whichever row won. */
        r = read_row(c, data_key, priv, pub, reterr);
        if (r == 0) {
                r = insert_new(c, data_key, reterr);
                if (r >= 0)
                        r = read_row(c, data_key, priv, pub, reterr);
                if (r == 0)
                        r = cp_error_set(reterr, -EIO, "server key row vanished right after it was inserted");
        }
        cp_store__release(s, c);
        if (r < 0) {
                cp_explicit_bzero(priv, sizeof priv);
                return r;
        }

        memcpy(ret_priv, priv, sizeof priv);
        memcpy(ret_pub, pub, sizeof pub);
        cp_explicit_bzero(priv, sizeof priv);
        return 0;
}
