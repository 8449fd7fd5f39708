/*
 * mgmt-keys.h: the server's WireGuard key pairs as this replica holds
 * them, and how they follow a rotation without a restart.
 *
 * The deployment has one current pair and, for a grace period after a
 * rotation (`netbird-cp-admin server-key rotate`), the previous one
 * (cp_store_server_keys_load). Agents seal requests to whichever public
 * key GetServerKey gave them; a request opens with the current key or
 * the previous one, and the answer is sealed with the same one.
 *
 * Keeping up with the database:
 *   - mgmt_keys_reload() re-reads the row (the manager runs it on a
 *     worker every serial-check interval);
 *   - when a request opens with neither key, mgmt_keys_reload_after_miss()
 *     re-reads at most once a second and says whether a newer set is
 *     there, so an agent that got the new key from a faster replica is
 *     served here too instead of failing until the next poll.
 *
 * Shared keys: an agent's requests are sealed with one box key derived
 * from its key and a server pair (one X25519, about half of a Sync open's
 * CPU). GetServerKey, Login, Sync and every reconnect of an agent use the
 * same pair, so mgmt_keys_shared() keeps the derived keys in a bounded
 * direct-mapped cache (2^16 slots), wiped when the key set changes and
 * when the keys are freed or forgotten.
 *
 * Threads: every function may be called from any thread. The set is
 * swapped under a mutex that is never held across a database call;
 * readers take a copy (mgmt_keys_get), so a swap never pulls a key out
 * from under an operation. Reloads take turns on a second mutex; the
 * shared-key cache has a third, held only to copy one slot.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/crypto-box.h"
#include "cp/error.h"
#include "cp/store.h"

typedef struct mgmt_server_key {
        uint8_t priv[CP_WG_KEY_LEN];
        uint8_t pub[CP_WG_KEY_LEN];
        char pub_b64[CP_WG_KEY_B64_LEN];
} mgmt_server_key;

/* A copy of the keys: key[0] current, key[1] previous when n == 2.
 * version changes whenever the set changed. Wipe with
 * mgmt_key_set_wipe(). */
typedef struct mgmt_key_set {
        mgmt_server_key key[2];
        unsigned n;
        uint64_t version;
} mgmt_key_set;

typedef struct mgmt_keys mgmt_keys;

/* Loads the keys (creating the pair on an empty database). data_key (the
 * raw DataStoreEncryptionKey) is copied and kept for reloads, wiped by
 * mgmt_keys_free(). The store is borrowed and must outlive the keys.
 * Errors as cp_store_server_keys_load (-EKEYREJECTED: wrong data key). */
int mgmt_keys_new(cp_store *store, const uint8_t data_key[32], mgmt_keys **ret, cp_error *reterr);
/* Keys without a database (tests/fuzz): the pair of priv and, when
 * prev_priv is not NULL, a previous pair; reloads find the same set.
 * -EINVAL for a key that is not a usable X25519 private key. */
int mgmt_keys_new_fixed(const uint8_t priv[CP_WG_KEY_LEN], const uint8_t *prev_priv, mgmt_keys **ret,
                        cp_error *reterr);
/* Accepts NULL; returns NULL. */
mgmt_keys *mgmt_keys_free(mgmt_keys *k);
/* Wipes the secrets held without freeing anything (an exit that leaves a
 * stuck thread in place); requests opened afterwards fail. */
void mgmt_keys_forget(mgmt_keys *k);

/* A copy of the set right now. Never blocks on the database. */
void mgmt_keys_get(mgmt_keys *k, mgmt_key_set *out);
void mgmt_key_set_wipe(mgmt_key_set *ks);
/* The current public key (GetServerKey). Never blocks on the database. */
void mgmt_keys_current_public(mgmt_keys *k, char out[CP_WG_KEY_B64_LEN]);

/* Re-reads the keys from the database (blocks: run it on a worker).
 * Returns 1 when the set changed, 0 when not, negative on error (the
 * keys held stay as they were). Logs a change and a failure. */
int mgmt_keys_reload(mgmt_keys *k);

/* The box key of peer_pub with the server pair key (a pair of a set from
 * mgmt_keys_get), as cp_crypto_box_shared_init() derives it: from the
 * cache when this pair was seen lately. Errors as that function
 * (-EINVAL: a low-order peer key). *out is the caller's to release. */
int mgmt_keys_shared(mgmt_keys *k, const mgmt_server_key *key, const uint8_t peer_pub[CP_WG_KEY_LEN],
                     cp_crypto_box_shared *out, cp_error *reterr);
/* Keeps a shared key in the cache once a request opened with it (so keys
 * that opened nothing, e.g. garbage sent with random agent keys, never
 * evict good ones); version is that of the set key came from, and the
 * key is not kept when the set changed since. */
void mgmt_keys_keep(mgmt_keys *k, uint64_t version, const mgmt_server_key *key,
                    const uint8_t peer_pub[CP_WG_KEY_LEN], const cp_crypto_box_shared *shared);

/* Called (on the reloading thread; must not block) for every server pair
 * a reload dropped: the grace period of a rotation ran out, or a forced
 * rotation retired it. Set once, before the keys are shared. */
typedef void (*mgmt_keys_dropped_fn)(const char *pub_b64, void *userdata);
void mgmt_keys_set_on_dropped(mgmt_keys *k, mgmt_keys_dropped_fn fn, void *userdata);

/* After a request opened with none of the keys of a set whose version
 * was seen_version: true when a newer set is available (already, or
 * after a reload, which runs at most once a second), so the caller
 * should try again with mgmt_keys_get(). Blocks on the database. */
bool mgmt_keys_reload_after_miss(mgmt_keys *k, uint64_t seen_version);
