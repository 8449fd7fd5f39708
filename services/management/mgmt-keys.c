#include "cp/base.h"
#include "cp/log.h"
#include "cp/util.h"
#include "mgmt-keys.h"

#include <pthread.h>

/* The least time between two reloads caused by requests that opened with
 * no key: garbage sent in a loop must not turn into a query per request. */
#define MISS_RELOAD_MS 1000

struct mgmt_keys {
        cp_store *store;                /* borrowed */
        uint8_t data_key[32];           /* wiped in mgmt_keys_free */

        pthread_mutex_t lock;           /* guards set; never held across I/O */
        mgmt_key_set set;

        pthread_mutex_t reload_lock;    /* one reload at a time */
        int64_t last_miss_reload_ms;    /* under reload_lock */
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
        int r = cp_store_server_keys_load(k->store, k->data_key, &sk, reterr);

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

mgmt_keys *mgmt_keys_free(mgmt_keys *k) {
        if (!k)
                return NULL;
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

/* With reload_lock held: read, and swap when something changed. */
static int reload_locked(mgmt_keys *k) {
        mgmt_key_set fresh;
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
        if (changed) {
                fresh.version = k->set.version + 1;
                k->set = fresh;
        }
        pthread_mutex_unlock(&k->lock);
        if (changed)
                cp_log_kv(&log_ctx, CP_LOG_INFO, "server key changed", "public_key", fresh.key[0].pub_b64,
                          "previous_key", fresh.n == 2 ? fresh.key[1].pub_b64 : NULL, NULL);
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
        bool newer;

        pthread_mutex_lock(&k->reload_lock);
        /* Someone reloaded while we waited for the lock (or before): no
         * need to ask the database again. */
        newer = current_version(k) != seen_version;
        if (!newer) {
                int64_t now = cp_now_mono_ms();
                if (k->last_miss_reload_ms == 0 || now - k->last_miss_reload_ms >= MISS_RELOAD_MS) {
                        k->last_miss_reload_ms = now;
                        newer = reload_locked(k) > 0;
                }
        }
        pthread_mutex_unlock(&k->reload_lock);
        return newer;
}
