/*
 * Network maps for the Sync streams (mgmt-map.h), on top of
 * common/netmap: the snapshot is a cp_netmap_account, loaded with
 * cp_netmap_load() in one consistent read and precomputed once per
 * serial; the per-peer SyncResponse comes from cp_netmap_encode_sync() in
 * a cp_netmap_worker kept per thread.
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cp/store-peers.h"
#include "mgmt-agent-int.h"
#include "mgmt-map.h"
#include "mgmt-strmap.h"

#include <pthread.h>

struct mgmt_map {
        cp_netmap_account *account;
        /* The map owns one reference of account; mgmt_map itself is just
         * the account under another name. */
};

struct mgmt_maps {
        cp_store *store;
        const cp_config *config;
        const mgmt_netconf *netconf;
        pthread_mutex_t lock;
        mgmt_strmap *cache;             /* account id -> cp_netmap_account (one reference) */
        pthread_key_t worker_key;       /* each thread's cp_netmap_worker */
};

static void free_worker(void *w) {
        (void) cp_netmap_worker_free(w);
}

mgmt_maps *mgmt_maps_new(cp_store *store, const cp_config *cfg, const mgmt_netconf *netconf) {
        mgmt_maps *m = cp_xcalloc(1, sizeof *m);

        m->store = store;
        m->config = cfg;
        m->netconf = netconf;
        pthread_mutex_init(&m->lock, NULL);
        m->cache = mgmt_strmap_new();
        if (pthread_key_create(&m->worker_key, free_worker) != 0)
                abort();        /* only when the process is out of keys */
        return m;
}

static void drop_cached(const char *key, void *value, void *userdata) {
        (void) cp_netmap_account_unref(value);
}

mgmt_maps *mgmt_maps_free(mgmt_maps *m) {
        if (!m)
                return NULL;
        mgmt_strmap_foreach(m->cache, drop_cached, NULL);
        m->cache = mgmt_strmap_free(m->cache);
        /* The calling thread's worker; the workers' own went with their
         * threads (the key's destructor). */
        (void) cp_netmap_worker_free(pthread_getspecific(m->worker_key));
        (void) pthread_setspecific(m->worker_key, NULL);
        (void) pthread_key_delete(m->worker_key);
        pthread_mutex_destroy(&m->lock);
        free(m);
        return NULL;
}

/* The snapshot is the map: a mgmt_map * is a cp_netmap_account *. */
static mgmt_map *as_map(cp_netmap_account *a) {
        return (mgmt_map *) a;
}
static cp_netmap_account *as_account(const mgmt_map *map) {
        return (cp_netmap_account *) map;
}

int mgmt_maps_get_at(mgmt_maps *m, const char *account_id, int64_t serial, mgmt_map **ret, cp_error *reterr) {
        cp_netmap_account *a, *old;
        int r;

        pthread_mutex_lock(&m->lock);
        a = mgmt_strmap_get(m->cache, account_id);
        if (a && cp_netmap_account_serial(a) >= (uint64_t) serial) {
                *ret = as_map(cp_netmap_account_ref(a));
                pthread_mutex_unlock(&m->lock);
                return 0;
        }
        pthread_mutex_unlock(&m->lock);

        /* Read and precompute outside the lock; two threads may do it at
         * once for one account, and the newer result stays cached. */
        r = cp_netmap_load(m->store, account_id, m->config->dns_domain, &a, reterr);
        if (r < 0)
                return r;
        pthread_mutex_lock(&m->lock);
        old = mgmt_strmap_get(m->cache, account_id);
        if (!old || cp_netmap_account_serial(old) <= cp_netmap_account_serial(a)) {
                (void) mgmt_strmap_put(m->cache, account_id, cp_netmap_account_ref(a));
                (void) cp_netmap_account_unref(old);
        }
        pthread_mutex_unlock(&m->lock);
        *ret = as_map(a);
        return 0;
}

cp_netmap_account *mgmt_maps_peek(mgmt_maps *m, const char *account_id, int64_t serial) {
        cp_netmap_account *a;

        pthread_mutex_lock(&m->lock);
        a = mgmt_strmap_get(m->cache, account_id);
        a = a && cp_netmap_account_serial(a) >= (uint64_t) serial ? cp_netmap_account_ref(a) : NULL;
        pthread_mutex_unlock(&m->lock);
        return a;
}

int mgmt_maps_get(mgmt_maps *m, const char *account_id, mgmt_map **ret, cp_error *reterr) {
        cp_store_account_settings st;
        int r;

        r = cp_store_account_get_settings(m->store, account_id, &st, reterr);
        if (r < 0)
                return r;
        return mgmt_maps_get_at(m, account_id, st.network_serial, ret, reterr);
}

mgmt_map *mgmt_map_ref(mgmt_map *map) {
        return as_map(cp_netmap_account_ref(as_account(map)));
}

mgmt_map *mgmt_map_unref(mgmt_map *map) {
        (void) cp_netmap_account_unref(as_account(map));
        return NULL;
}

int64_t mgmt_map_serial(const mgmt_map *map) {
        return (int64_t) cp_netmap_account_serial(as_account(map));
}

static uint8_t *pack_in(mgmt_arena *a, const ProtobufCMessage *msg, size_t *ret_len) {
        size_t n = protobuf_c_message_get_packed_size(msg);
        uint8_t *out = mgmt_arena_alloc(a, n ? n : 1);

        *ret_len = protobuf_c_message_pack(msg, out);
        return out;
}

const uint8_t *mgmt_map_jwt_config(mgmt_maps *m, mgmt_arena *a, size_t *ret_len) {
        Management__JWTConfig *jwt = m->netconf ? mgmt_netconf_jwt_config(m->netconf, a) : NULL;

        *ret_len = 0;
        return jwt ? pack_in(a, &jwt->base, ret_len) : NULL;
}

static int encode(mgmt_maps *m, const mgmt_map *map, const char *peer_id, cp_netmap_encode_opts *opts,
                  const uint8_t **ret, size_t *ret_len, cp_error *reterr) {
        const cp_netmap_account *acc = as_account(map);
        cp_netmap_worker *w = pthread_getspecific(m->worker_key);
        int64_t idx;
        int r;

        idx = cp_netmap_account_find_peer(acc, peer_id);
        if (idx < 0)
                return cp_error_set(reterr, -ENOENT, "peer %s is not in the map of account %s", peer_id,
                                    cp_netmap_account_id(acc));
        if (!w) {
                w = cp_netmap_worker_new();
                (void) pthread_setspecific(m->worker_key, w);
        }
        r = cp_netmap_encode_sync(w, acc, (size_t) idx, opts, ret, ret_len, NULL);
        if (r < 0)
                return cp_error_set(reterr, r, "cannot encode the map of peer %s: %s", peer_id, strerror(-r));
        return 0;
}

int mgmt_map_pack(mgmt_maps *m, const mgmt_map *map, const char *peer_id,
                  const Management__NetbirdConfig *netbird_config, mgmt_arena *a, uint8_t **ret, size_t *ret_len,
                  cp_error *reterr) {
        cp_netmap_encode_opts opts = { 0 };
        const uint8_t *data;
        size_t len;
        int r;

        if (netbird_config) {
                opts.with_netbird_config = true;
                opts.netbird_config = pack_in(a, &netbird_config->base, &opts.netbird_config_len);
        }
        opts.jwt_config = mgmt_map_jwt_config(m, a, &opts.jwt_config_len);
        r = encode(m, map, peer_id, &opts, &data, &len, reterr);
        if (r < 0)
                return r;
        *ret = mgmt_arena_alloc(a, len ? len : 1);
        memcpy(*ret, data, len);
        *ret_len = len;
        return 0;
}

int mgmt_map_seal(mgmt_maps *m, const mgmt_map *map, const char *peer_id, const uint8_t *jwt_config,
                  size_t jwt_config_len, const char *server_key, const cp_crypto_box_shared *shared, uint8_t **ret,
                  size_t *ret_len, cp_error *reterr) {
        cp_netmap_encode_opts opts = { .jwt_config = jwt_config, .jwt_config_len = jwt_config_len };
        const uint8_t *data;
        size_t len;
        int r;

        r = encode(m, map, peer_id, &opts, &data, &len, reterr);
        if (r < 0)
                return r;
        /* Straight from the thread's encoding buffer (still in cache) into
         * the one buffer the stream sends: no copy of the plaintext. */
        *ret = mgmt_agent_seal_msg(server_key, shared, data, len, ret_len, reterr);
        return *ret ? 0 : -EIO;
}

bool mgmt_map_peer_login_expired(const mgmt_map *map, const char *peer_id) {
        const cp_netmap_account *acc = as_account(map);
        int64_t idx = cp_netmap_account_find_peer(acc, peer_id);

        return idx >= 0 && cp_netmap_account_peer_login_expired(acc, (size_t) idx);
}

int mgmt_map_pack_deleted(const mgmt_map *map, mgmt_arena *a, uint8_t **ret, size_t *ret_len) {
        const cp_netmap_account *acc = as_account(map);
        Management__SyncResponse *resp = mgmt_arena_alloc(a, sizeof *resp);
        Management__NetworkMap *nm = mgmt_arena_alloc(a, sizeof *nm);
        Management__DNSConfig *dns = mgmt_arena_alloc(a, sizeof *dns);

        management__sync_response__init(resp);
        management__network_map__init(nm);
        management__dnsconfig__init(dns);
        nm->serial = cp_netmap_account_serial(acc);
        nm->remotepeersisempty = true;
        nm->firewallrulesisempty = true;
        /* NetBird leaves this false; false with an empty list would mean
         * "old server, allow all routed traffic" to the agent (§9.5). */
        nm->routesfirewallrulesisempty = true;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        dns->forwarderport = cp_netmap_account_forwarder_port(acc);
#pragma GCC diagnostic pop
        nm->dnsconfig = dns;
        resp->remotepeersisempty = true;
        resp->networkmap = nm;
        *ret = pack_in(a, &resp->base, ret_len);
        return 0;
}
