#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-keys.h"

#include <pthread.h>
#include <stdatomic.h>

/* The least time between two reloads caused by requests that opened with
 * no key: garbage sent in a loop must not turn into a query per request. */
#define MISS_RELOAD_MS 1000

/* Shared keys kept: 2^16 slots of 104 bytes (6.8 MB of address space,
 * resident only as slots are used), direct-mapped by the key pair. */
#define SHARED_CACHE_BITS 16

/* One shared key, of the server pair with public key server_pub and the
 * agent key peer_pub. */
typedef struct shared_slot {
        uint8_t server_pub[CP_WG_KEY_LEN];
        uint8_t peer_pub[CP_WG_KEY_LEN];
        cp_crypto_box_shared shared;    /* a secret: wiped when replaced or dropped */
        bool used;
} shared_slot;

struct mgmt_keys {
        cp_store *store;                /* borrowed; NULL: the fixed set below (mgmt_keys_new_fixed) */
        mgmt_key_set fixed;             /* wiped in mgmt_keys_free */
        uint8_t data_key[32];           /* wiped in mgmt_keys_free */

        pthread_mutex_t lock;           /* guards set; never held across I/O */
        mgmt_key_set set;

        pthread_mutex_t reload_lock;    /* one reload at a time */
        _Atomic int64_t last_miss_reload_ms;    /* read without the lock, set under it */

        mgmt_keys_dropped_fn on_dropped;        /* set before the keys are shared */
        void *dropped_userdata;

        pthread_mutex_t cache_lock;     /* guards cache; held only to copy a slot */
        shared_slot *cache;             /* 1 << SHARED_CACHE_BITS slots */
};

static const cp_log_ctx log_ctx = { .component = "server-key" };

static void fill_key(mgmt_server_key *k, const uint8_t priv[32], const uint8_t pub[32]) {
        memcpy(k->priv, priv, sizeof k->priv);
        memcpy(k->pub, pub, sizeof k->pub);
        cp_crypto_wg_key_format(pub, k->pub_b64);
}

/* Reads the row into a fresh set (version not set). */
static int load(mgmt_keys *k, mgmt_key_set *out, cp_error *reterr) {
        cp_store_server_keys sk;
        int r;

        if (!k->store) {
                *out = k->fixed;
                return 0;
        }
        r = cp_store_server_keys_load(k->store, k->data_key, &sk, reterr);
        if (r < 0)
                return r;
        memset(out, 0, sizeof *out);
        fill_key(&out->key[0], sk.priv, sk.pub);
        out->n = 1;
        if (sk.has_previous) {
                fill_key(&out->key[1], sk.prev_priv, sk.prev_pub);
                out->n = 2;
        }
        cp_explicit_bzero(&sk, sizeof sk);
        return 0;
}

static bool same_keys(const mgmt_key_set *a, const mgmt_key_set *b) {
        if (a->n != b->n)
                return false;
        for (unsigned i = 0; i < a->n; i++)
                if (memcmp(a->key[i].pub, b->key[i].pub, sizeof a->key[i].pub) != 0)
                        return false;
        return true;
}

int mgmt_keys_new(cp_store *store, const uint8_t data_key[32], mgmt_keys **ret, cp_error *reterr) {
        mgmt_keys *k = cp_xcalloc(1, sizeof *k);
        int r;

        k->store = store;
        memcpy(k->data_key, data_key, sizeof k->data_key);
        pthread_mutex_init(&k->lock, NULL);
        pthread_mutex_init(&k->reload_lock, NULL);
        pthread_mutex_init(&k->cache_lock, NULL);
        k->cache = cp_xcalloc((size_t) 1 << SHARED_CACHE_BITS, sizeof *k->cache);
        r = load(k, &k->set, reterr);
        if (r < 0) {
                mgmt_keys_free(k);
                return r;
        }
        k->set.version = 1;
        cp_log_kv(&log_ctx, CP_LOG_INFO, "server key ready", "public_key", k->set.key[0].pub_b64,
                  "previous_key", k->set.n == 2 ? k->set.key[1].pub_b64 : NULL, NULL);
        *ret = k;
        return 0;
}

int mgmt_keys_new_fixed(const uint8_t priv[CP_WG_KEY_LEN], const uint8_t *prev_priv, mgmt_keys **ret,
                        cp_error *reterr) {
        mgmt_keys *k = cp_xcalloc(1, sizeof *k);
        uint8_t pub[CP_WG_KEY_LEN];
        int r;

        pthread_mutex_init(&k->lock, NULL);
        pthread_mutex_init(&k->reload_lock, NULL);
        pthread_mutex_init(&k->cache_lock, NULL);
        k->cache = cp_xcalloc((size_t) 1 << SHARED_CACHE_BITS, sizeof *k->cache);
        for (unsigned i = 0; i < 2; i++) {
                const uint8_t *p = i == 0 ? priv : prev_priv;
                if (!p)
                        break;
                r = cp_crypto_wg_public_from_private(p, pub, reterr);
                if (r < 0) {
                        mgmt_keys_free(k);
                        return r;
                }
                fill_key(&k->fixed.key[i], p, pub);
                k->fixed.n = i + 1;
        }
        k->set = k->fixed;
        k->set.version = 1;
        *ret = k;
        return 0;
}

static bool in_set(const mgmt_key_set *ks, const uint8_t pub[CP_WG_KEY_LEN]) {
        for (unsigned i = 0; i < ks->n; i++)
                if (memcmp(ks->key[i].pub, pub, CP_WG_KEY_LEN) == 0)
                        return true;
        return false;
}

/* Wipes the shared keys of the server pairs that are not in keep (NULL:
 * every shared key; exit). Shared keys of pairs still held stay, so a
 * rotation does not make every agent redo its X25519. */
static void cache_wipe(mgmt_keys *k, const mgmt_key_set *keep) {
        pthread_mutex_lock(&k->cache_lock);
        for (size_t i = 0; k->cache && i < (size_t) 1 << SHARED_CACHE_BITS; i++)
                if (k->cache[i].used && !(keep && in_set(keep, k->cache[i].server_pub)))
                        cp_explicit_bzero(&k->cache[i], sizeof k->cache[i]);
        pthread_mutex_unlock(&k->cache_lock);
}

mgmt_keys *mgmt_keys_free(mgmt_keys *k) {
        if (!k)
                return NULL;
        cache_wipe(k, NULL);
        free(k->cache);
        pthread_mutex_destroy(&k->cache_lock);
        pthread_mutex_destroy(&k->lock);
        pthread_mutex_destroy(&k->reload_lock);
        cp_explicit_bzero(k, sizeof *k);
        free(k);
        return NULL;
}

void mgmt_keys_forget(mgmt_keys *k) {
        if (!k)
                return;
        pthread_mutex_lock(&k->lock);
        cp_explicit_bzero(&k->set, sizeof k->set);
        cp_explicit_bzero(k->data_key, sizeof k->data_key);
        pthread_mutex_unlock(&k->lock);
        cache_wipe(k, NULL);
}

void mgmt_keys_get(mgmt_keys *k, mgmt_key_set *out) {
        pthread_mutex_lock(&k->lock);
        *out = k->set;
        pthread_mutex_unlock(&k->lock);
}

void mgmt_key_set_wipe(mgmt_key_set *ks) {
        cp_explicit_bzero(ks, sizeof *ks);
}

void mgmt_keys_current_public(mgmt_keys *k, char out[CP_WG_KEY_B64_LEN]) {
        pthread_mutex_lock(&k->lock);
        memcpy(out, k->set.key[0].pub_b64, CP_WG_KEY_B64_LEN);
        pthread_mutex_unlock(&k->lock);
}

static uint64_t current_version(mgmt_keys *k) {
        uint64_t v;

        pthread_mutex_lock(&k->lock);
        v = k->set.version;
        pthread_mutex_unlock(&k->lock);
        return v;
}

/* With reload_lock held: read, and swap when something changed. The
 * shared keys of a pair no longer held are wiped, and the hook hears of
 * every dropped pair (its streams must not go on with it). */
static int reload_locked(mgmt_keys *k) {
        mgmt_key_set fresh, old;
        cp_error err = { 0 };
        bool changed;
        int r;

        r = load(k, &fresh, &err);
        if (r < 0) {
                (void) cp_log_error(&log_ctx, r, &err, "cannot re-read the server key; keeping the keys held");
                return r;
        }
        pthread_mutex_lock(&k->lock);
        changed = !same_keys(&k->set, &fresh);
        old = k->set;
        if (changed) {
                fresh.version = k->set.version + 1;
                k->set = fresh;
        }
        pthread_mutex_unlock(&k->lock);
        if (changed) {
                cache_wipe(k, &fresh);
                cp_log_kv(&log_ctx, CP_LOG_INFO, "server key changed", "public_key", fresh.key[0].pub_b64,
                          "previous_key", fresh.n == 2 ? fresh.key[1].pub_b64 : NULL, NULL);
                for (unsigned i = 0; i < old.n; i++)
                        if (!in_set(&fresh, old.key[i].pub) && k->on_dropped)
                                k->on_dropped(old.key[i].pub_b64, k->dropped_userdata);
        }
        mgmt_key_set_wipe(&old);
        mgmt_key_set_wipe(&fresh);
        return changed ? 1 : 0;
}

int mgmt_keys_reload(mgmt_keys *k) {
        int r;

        pthread_mutex_lock(&k->reload_lock);
        r = reload_locked(k);
        pthread_mutex_unlock(&k->reload_lock);
        return r;
}

bool mgmt_keys_reload_after_miss(mgmt_keys *k, uint64_t seen_version) {
        int64_t now = cp_now_mono_ms(), last = atomic_load(&k->last_miss_reload_ms);
        bool newer;

        /* Within the limit nobody waits for the lock (which a poll may
         * hold across its query): only what is held already counts. */
        if (last != 0 && now - last < MISS_RELOAD_MS)
                return current_version(k) != seen_version;
        pthread_mutex_lock(&k->reload_lock);
        /* Someone reloaded while we waited for the lock (or before): no
         * need to ask the database again. */
        newer = current_version(k) != seen_version;
        last = atomic_load(&k->last_miss_reload_ms);
        if (!newer && (last == 0 || now - last >= MISS_RELOAD_MS)) {
                atomic_store(&k->last_miss_reload_ms, now);
                newer = reload_locked(k) > 0;
        }
        pthread_mutex_unlock(&k->reload_lock);
        return newer;
}

void mgmt_keys_set_on_dropped(mgmt_keys *k, mgmt_keys_dropped_fn fn, void *userdata) {
        k->on_dropped = fn;
        k->dropped_userdata = userdata;
}

static shared_slot *cache_slot(mgmt_keys *k, const uint8_t server_pub[CP_WG_KEY_LEN],
                               const uint8_t peer_pub[CP_WG_KEY_LEN]) {
        uint64_t a, b;

        /* Public keys are uniformly random: a few of their bytes, mixed,
         * make a good index. Keys chosen to collide only evict each other. */
        memcpy(&a, peer_pub, sizeof a);
        memcpy(&b, server_pub, sizeof b);
        return &k->cache[((a ^ b) * 0x9e3779b97f4a7c15ULL) >> (64 - SHARED_CACHE_BITS)];
}

int mgmt_keys_shared(mgmt_keys *k, const mgmt_server_key *key, const uint8_t peer_pub[CP_WG_KEY_LEN],
                     cp_crypto_box_shared *out, cp_error *reterr) {
        shared_slot *slot = cache_slot(k, key->pub, peer_pub);
        bool hit;

        pthread_mutex_lock(&k->cache_lock);
        hit = slot->used && memcmp(slot->peer_pub, peer_pub, CP_WG_KEY_LEN) == 0 &&
              memcmp(slot->server_pub, key->pub, CP_WG_KEY_LEN) == 0;
        if (hit)
                *out = slot->shared;
        pthread_mutex_unlock(&k->cache_lock);
        if (hit)
                return 0;
        /* The X25519 runs outside the lock. */
        return cp_crypto_box_shared_init(out, peer_pub, key->priv, reterr);
}

void mgmt_keys_keep(mgmt_keys *k, uint64_t version, const mgmt_server_key *key,
                    const uint8_t peer_pub[CP_WG_KEY_LEN], const cp_crypto_box_shared *shared) {
        shared_slot *slot = cache_slot(k, key->pub, peer_pub);

        /* A set swapped meanwhile may have dropped this pair (and wiped its
         * shared keys): checked under the cache lock, which the wipe takes
         * after the swap, so a dropped pair's key never comes back. */
        pthread_mutex_lock(&k->cache_lock);
        if (current_version(k) == version) {
                cp_explicit_bzero(&slot->shared, sizeof slot->shared);
                memcpy(slot->server_pub, key->pub, CP_WG_KEY_LEN);
                memcpy(slot->peer_pub, peer_pub, CP_WG_KEY_LEN);
                slot->shared = *shared;
                slot->used = true;
        }
        pthread_mutex_unlock(&k->cache_lock);
}
