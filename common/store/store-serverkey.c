#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-pii.h"
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

/* Decodes and checks one stored pair (public text, encrypted private
 * text) into priv/pub. Returns 0, or a negative error with reterr set;
 * priv is wiped on failure. */
static int decode_pair(const char *pub_text, const char *priv_enc, const uint8_t data_key[32],
                       uint8_t priv[CP_WG_KEY_LEN], uint8_t pub[CP_WG_KEY_LEN], cp_error *reterr) {
        uint8_t derived[CP_WG_KEY_LEN];
        int r;

        r = cp_crypto_wg_key_parse(pub_text, pub, reterr);
        if (r < 0)
                return bad_row(reterr, "stored server public key is malformed");

        /* data_key first, then the other installed keys (during a
         * DataStoreEncryptionKey rotation, cp/crypto-pii.h). */
        r = cp_pii_decrypt(data_key, priv_enc, priv, CP_WG_KEY_LEN, reterr);
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

/* Reads the row: the current pair and the previous one inside its grace
 * period. Returns 1 and fills *keys when it exists, 0 when it does not,
 * negative on error (keys wiped). */
static int read_row(cp_store_conn *c, const uint8_t data_key[32], cp_store_server_keys *keys,
                    cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { PURPOSE_WIREGUARD };
        int r;

        r = cp_store__exec(c, ST_SERVER_KEY_GET, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) == 0)
                return 0;
        memset(keys, 0, sizeof *keys);
        r = decode_pair(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), data_key, keys->priv, keys->pub, reterr);
        if (r >= 0 && !PQgetisnull(res, 0, 3) && !PQgetisnull(res, 0, 4)) {
                r = decode_pair(PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), data_key, keys->prev_priv,
                                keys->prev_pub, reterr);
                if (r < 0)
                        cp_error_prefix(reterr, "previous key");
                keys->has_previous = r >= 0;
        }
        if (r < 0) {
                cp_explicit_bzero(keys, sizeof *keys);
                return r;
        }
        keys->generation = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        return 1;
}

/* A fresh pair with its private half sealed for the database. */
static int new_pair(const uint8_t data_key[32], char pub_b64[CP_WG_KEY_B64_LEN], char **ret_priv_enc,
                    cp_error *reterr) {
        uint8_t priv[CP_WG_KEY_LEN], pub[CP_WG_KEY_LEN];
        int r;

        cp_crypto_wg_keypair_new(priv, pub);
        /* With the key the database marks current when keys are installed. */
        r = cp_pii_encrypt(data_key, priv, sizeof priv, ret_priv_enc, reterr);
        cp_explicit_bzero(priv, sizeof priv);
        if (r < 0)
                return r;
        cp_crypto_wg_key_format(pub, pub_b64);
        return 0;
}

/* Generates a pair and offers it; a concurrent replica's insert may win,
 * which is fine: the caller reads back whatever landed. */
static int insert_new(cp_store_conn *c, const uint8_t data_key[32], cp_error *reterr) {
        char pub_b64[CP_WG_KEY_B64_LEN];
        _cleanup_free_ char *priv_enc = NULL;
        int r;

        r = new_pair(data_key, pub_b64, &priv_enc, reterr);
        if (r < 0)
                return r;
        const char *params[3] = { PURPOSE_WIREGUARD, pub_b64, priv_enc };
        return cp_store__exec(c, ST_SERVER_KEY_INSERT, params, NULL, reterr);
}

int cp_store_server_keys_load(cp_store *s, const uint8_t data_key[32], cp_store_server_keys *ret,
                              cp_error *reterr) {
        cp_store_server_keys keys;
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        /* Autocommit throughout: the INSERT waits for a concurrent
         * inserter's transaction to end, and the SELECT after it runs in a
         * new snapshot, so it sees whichever row won. */
        r = read_row(c, data_key, &keys, reterr);
        if (r == 0) {
                r = insert_new(c, data_key, reterr);
                if (r >= 0)
                        r = read_row(c, data_key, &keys, reterr);
                if (r == 0)
                        r = cp_error_set(reterr, -EIO, "server key row vanished right after it was inserted");
        }
        cp_store__release(s, c);
        if (r < 0)
                return r;
        *ret = keys;
        cp_explicit_bzero(&keys, sizeof keys);
        return 0;
}

int cp_store_server_key_get_or_create(cp_store *s, const uint8_t data_key[32],
                                      uint8_t ret_priv[32], uint8_t ret_pub[32], cp_error *reterr) {
        cp_store_server_keys keys;
        int r = cp_store_server_keys_load(s, data_key, &keys, reterr);

        if (r < 0)
                return r;
        memcpy(ret_priv, keys.priv, sizeof keys.priv);
        memcpy(ret_pub, keys.pub, sizeof keys.pub);
        cp_explicit_bzero(&keys, sizeof keys);
        return 0;
}

/* ---- rotation ---------------------------------------------------------------- */

static int64_t us_to_ns(const PGresult *res, int col) {
        return PQgetisnull(res, 0, col) ? 0 : strtoll(PQgetvalue(res, 0, col), NULL, 10) * 1000;
}

static int read_info(cp_store_conn *c, cp_store_server_key_info *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *params[1] = { PURPOSE_WIREGUARD };
        cp_store_server_key_info info = { 0 };
        int r;

        r = cp_store__exec(c, ST_SERVER_KEY_INFO, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) == 0)
                return cp_error_set(reterr, -ENOENT, "there is no server key yet: no replica has started "
                                    "on this database");
        (void) snprintf(info.public_key, sizeof info.public_key, "%s", PQgetvalue(res, 0, 0));
        info.generation = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        info.created_unix_ns = us_to_ns(res, 2);
        info.rotated_unix_ns = us_to_ns(res, 3);
        (void) snprintf(info.previous_public_key, sizeof info.previous_public_key, "%s",
                        PQgetisnull(res, 0, 4) ? "" : PQgetvalue(res, 0, 4));
        info.previous_expires_unix_ns = us_to_ns(res, 5);
        info.previous_valid = strcmp(PQgetvalue(res, 0, 6), "t") == 0;
        *ret = info;
        return 0;
}

int cp_store_server_key_info_get(cp_store *s, cp_store_server_key_info *ret, cp_error *reterr) {
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = read_info(c, ret, reterr);
        cp_store__release(s, c);
        return r;
}

/* Inside the rotation's transaction, with the row locked. */
static int rotate_locked(cp_store_conn *c, const uint8_t data_key[32], int64_t grace_s, bool force,
                         cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_free_ char *priv_enc = NULL;
        const char *lock[1] = { PURPOSE_WIREGUARD };
        uint8_t priv[CP_WG_KEY_LEN], pub[CP_WG_KEY_LEN];
        char pub_b64[CP_WG_KEY_B64_LEN], grace[24];
        int r;

        r = cp_store__exec(c, ST_SERVER_KEY_LOCK, lock, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) == 0)
                return cp_error_set(reterr, -ENOENT, "there is no server key yet: no replica has started "
                                    "on this database");
        /* The new key must be readable by the replicas, which read it with
         * the key that opens the current one. */
        r = decode_pair(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), data_key, priv, pub, reterr);
        cp_explicit_bzero(priv, sizeof priv);
        if (r < 0)
                return r;
        if (strcmp(PQgetvalue(res, 0, 2), "t") == 0 && !force) {
                cp_error_set(reterr, -EBUSY, "the key rotated last time is still inside its grace period: "
                             "rotating again now would drop it at once");
                cp_error_hint(reterr, "wait until the grace period ends, or pass --force to drop it");
                return -EBUSY;
        }
        r = new_pair(data_key, pub_b64, &priv_enc, reterr);
        if (r < 0)
                return r;
        (void) snprintf(grace, sizeof grace, "%" PRId64, grace_s > 0 ? grace_s : 0);
        const char *params[4] = { PURPOSE_WIREGUARD, pub_b64, priv_enc, grace };
        return cp_store__exec(c, ST_SERVER_KEY_ROTATE, params, NULL, reterr);
}

int cp_store_server_key_rotate(cp_store *s, const uint8_t data_key[32], int64_t grace_s, bool force,
                               cp_store_server_key_info *ret, cp_error *reterr) {
        cp_store_server_key_info info;
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = cp_store__command(c, "BEGIN", reterr);
        if (r >= 0)
                r = rotate_locked(c, data_key, grace_s, force, reterr);
        /* Read inside the transaction: once COMMIT succeeded the rotation
         * happened, so nothing after it may report a failure. */
        if (r >= 0 && ret)
                r = read_info(c, &info, reterr);
        if (r >= 0)
                r = cp_store__command(c, "COMMIT", reterr);
        if (r < 0)
                (void) cp_store__command(c, "ROLLBACK", NULL);
        cp_store__release(s, c);
        if (r >= 0 && ret)
                *ret = info;
        return r < 0 ? r : 0;
}
