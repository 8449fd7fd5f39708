#include "cp/base.h"
#include "cp/ratelimit.h"
#include "cp/util.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>

#define WAYS 8
#define STRIPES 64

typedef struct slot {
        uint64_t h;                     /* 0 = empty */
        int64_t last_ms;                /* when tokens was last brought up to date */
        double tokens;
} slot;

struct cp_ratelimit {
        double per_ms;                  /* tokens added per millisecond */
        double burst;
        size_t n_sets;
        slot *slots;                    /* n_sets * WAYS */
        uint64_t seed[2];
        pthread_mutex_t locks[STRIPES];
        atomic_uint_fast64_t evictions;
};

cp_ratelimit *cp_ratelimit_new(int64_t per_minute, int64_t burst, size_t max_keys) {
        cp_ratelimit *rl = cp_xcalloc(1, sizeof *rl);

        if (per_minute <= 0 || burst <= 0)
                return rl;              /* disabled: no slots */
        rl->per_ms = (double) per_minute / 60000.0;
        rl->burst = (double) burst;
        rl->n_sets = max_keys / WAYS + (max_keys % WAYS != 0);
        if (rl->n_sets == 0)
                rl->n_sets = 1;
        rl->slots = cp_xcalloc(rl->n_sets * WAYS, sizeof *rl->slots);
        cp_random_bytes(rl->seed, sizeof rl->seed);
        for (size_t i = 0; i < STRIPES; i++)
                pthread_mutex_init(&rl->locks[i], NULL);
        atomic_init(&rl->evictions, 0);
        return rl;
}

cp_ratelimit *cp_ratelimit_free(cp_ratelimit *rl) {
        if (!rl)
                return NULL;
        if (rl->slots)
                for (size_t i = 0; i < STRIPES; i++)
                        pthread_mutex_destroy(&rl->locks[i]);
        free(rl->slots);
        free(rl);
        return NULL;
}

bool cp_ratelimit_enabled(const cp_ratelimit *rl) {
        return rl && rl->slots;
}

static uint64_t mix(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* A keyed hash: FNV-1a over the bytes from a random start, finished with
 * splitmix64's mixer under the second half of the key. Not a MAC; it only
 * has to keep an outsider from choosing keys that land in one set. */
static uint64_t key_hash(const cp_ratelimit *rl, const void *key, size_t len) {
        const unsigned char *p = key;
        uint64_t h = 0xcbf29ce484222325ULL ^ rl->seed[0];

        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= 0x100000001b3ULL;
        }
        h = mix(h ^ rl->seed[1] ^ (uint64_t) len);
        return h ? h : 1;
}

static void refill(const cp_ratelimit *rl, slot *s, int64_t now_ms) {
        if (now_ms > s->last_ms) {
                s->tokens += (double) (now_ms - s->last_ms) * rl->per_ms;
                if (s->tokens > rl->burst)
                        s->tokens = rl->burst;
                s->last_ms = now_ms;
        }
}

/* Under the set's lock: the key's slot, made (full) when absent (only
 * when make; else NULL). */
static slot *find(cp_ratelimit *rl, slot *set, uint64_t h, int64_t now_ms, bool make) {
        slot *victim = NULL, *oldest = &set[0];

        for (size_t i = 0; i < WAYS; i++)
                if (set[i].h == h)
                        return &set[i];
        if (!make)
                return NULL;
        for (size_t i = 0; i < WAYS && !victim; i++)
                if (set[i].h == 0)
                        victim = &set[i];
        /* The least recently used, chosen before refill() moves every
         * slot's last_ms to now. */
        for (size_t i = 1; i < WAYS; i++)
                if (set[i].last_ms < oldest->last_ms)
                        oldest = &set[i];
        for (size_t i = 0; i < WAYS && !victim; i++) {
                refill(rl, &set[i], now_ms);
                if (set[i].tokens >= rl->burst)
                        victim = &set[i];
        }
        if (!victim) {
                victim = oldest;
                atomic_fetch_add_explicit(&rl->evictions, 1, memory_order_relaxed);
        }
        *victim = (slot) { .h = h, .last_ms = now_ms, .tokens = rl->burst };
        return victim;
}

static bool run(cp_ratelimit *rl, const void *key, size_t len, int64_t now_ms, int64_t *retry_after_ms, bool take) {
        if (!cp_ratelimit_enabled(rl))
                return true;

        uint64_t h = key_hash(rl, key, len);
        size_t set = (size_t) (h % rl->n_sets);
        pthread_mutex_t *lock = &rl->locks[set % STRIPES];
        bool ok;

        pthread_mutex_lock(lock);
        /* A check of a key not in the table: its bucket would be full
         * (>= 1 token); nothing is made, so checks evict nobody. */
        slot *s = find(rl, &rl->slots[set * WAYS], h, now_ms, take);
        if (!s) {
                pthread_mutex_unlock(lock);
                return true;
        }
        refill(rl, s, now_ms);
        ok = s->tokens >= 1.0;
        if (ok && take)
                s->tokens -= 1.0;
        if (!ok && retry_after_ms) {
                double wait = (1.0 - s->tokens) / rl->per_ms;
                *retry_after_ms = wait < 1.0 ? 1 : (int64_t) wait + 1;
        }
        pthread_mutex_unlock(lock);
        return ok;
}

bool cp_ratelimit_take(cp_ratelimit *rl, const void *key, size_t len, int64_t now_ms, int64_t *retry_after_ms) {
        return run(rl, key, len, now_ms, retry_after_ms, true);
}

bool cp_ratelimit_check(cp_ratelimit *rl, const void *key, size_t len, int64_t now_ms, int64_t *retry_after_ms) {
        return run(rl, key, len, now_ms, retry_after_ms, false);
}

size_t cp_ratelimit_size(cp_ratelimit *rl) {
        size_t n = 0;

        if (!cp_ratelimit_enabled(rl))
                return 0;
        for (size_t set = 0; set < rl->n_sets; set++) {
                pthread_mutex_t *lock = &rl->locks[set % STRIPES];
                pthread_mutex_lock(lock);
                for (size_t i = 0; i < WAYS; i++)
                        n += rl->slots[set * WAYS + i].h != 0;
                pthread_mutex_unlock(lock);
        }
        return n;
}

uint64_t cp_ratelimit_evictions(const cp_ratelimit *rl) {
        return rl ? atomic_load_explicit(&((cp_ratelimit *) rl)->evictions, memory_order_relaxed) : 0;
}

size_t cp_ratelimit_capacity(const cp_ratelimit *rl) {
        return cp_ratelimit_enabled(rl) ? rl->n_sets * WAYS : 0;
}

size_t cp_ratelimit_addr_key(const char *ip, char out[CP_RATELIMIT_ADDR_KEY_LEN]) {
        struct in6_addr a6;

        if (ip && strchr(ip, ':') && inet_pton(AF_INET6, ip, &a6) == 1) {
                memset(a6.s6_addr + 8, 0, 8);
                if (inet_ntop(AF_INET6, &a6, out, CP_RATELIMIT_ADDR_KEY_LEN)) {
                        size_t n = strlen(out);
                        memcpy(out + n, "/64", 4);
                        return n + 3;
                }
        }
        (void) snprintf(out, CP_RATELIMIT_ADDR_KEY_LEN, "%s", ip ? ip : "");
        return strlen(out);
}
