/*
 * common/base token buckets (cp/ratelimit.h): burst, refill, keys
 * independent, bounded table with eviction, and a threaded run of many
 * takers on shared keys (also built with ThreadSanitizer: test
 * "ratelimit-tsan" in tests/unit/meson.build). Time is passed in, so
 * nothing here waits.
 */
#include "cp/base.h"
#include "cp/ratelimit.h"
#include "cptest.h"

#include <pthread.h>
#include <stdatomic.h>

#define K(s) (s), strlen(s)

TEST(burst_then_refused_then_refilled) {
        cp_ratelimit *rl = cp_ratelimit_new(60, 3, 64);        /* 1 a second, 3 at once */
        int64_t retry = 0;

        ASSERT_TRUE(cp_ratelimit_enabled(rl));
        for (int i = 0; i < 3; i++)
                ASSERT_TRUE(cp_ratelimit_take(rl, K("10.0.0.1"), 1000, NULL));
        ASSERT_FALSE(cp_ratelimit_take(rl, K("10.0.0.1"), 1000, &retry));
        ASSERT_TRUE(retry >= 999 && retry <= 1001);     /* ~1 s until the next token */
        /* check never takes */
        ASSERT_FALSE(cp_ratelimit_check(rl, K("10.0.0.1"), 1500, &retry));
        ASSERT_TRUE(retry >= 499 && retry <= 501);
        ASSERT_TRUE(cp_ratelimit_check(rl, K("10.0.0.1"), 2000, NULL));
        ASSERT_TRUE(cp_ratelimit_check(rl, K("10.0.0.1"), 2000, NULL));
        ASSERT_TRUE(cp_ratelimit_take(rl, K("10.0.0.1"), 2000, NULL));
        ASSERT_FALSE(cp_ratelimit_take(rl, K("10.0.0.1"), 2000, NULL));
        /* a long pause refills to the burst, not beyond */
        for (int i = 0; i < 3; i++)
                ASSERT_TRUE(cp_ratelimit_take(rl, K("10.0.0.1"), 1000000, NULL));
        ASSERT_FALSE(cp_ratelimit_take(rl, K("10.0.0.1"), 1000000, NULL));
        /* a clock that goes back adds nothing */
        ASSERT_FALSE(cp_ratelimit_take(rl, K("10.0.0.1"), 5, NULL));
        cp_ratelimit_free(rl);
}

TEST(keys_are_independent) {
        cp_ratelimit *rl = cp_ratelimit_new(1, 2, 64);

        ASSERT_TRUE(cp_ratelimit_take(rl, K("a"), 0, NULL));
        ASSERT_TRUE(cp_ratelimit_take(rl, K("a"), 0, NULL));
        ASSERT_FALSE(cp_ratelimit_take(rl, K("a"), 0, NULL));
        ASSERT_TRUE(cp_ratelimit_take(rl, K("b"), 0, NULL));
        ASSERT_TRUE(cp_ratelimit_take(rl, K("ab"), 0, NULL));
        ASSERT_EQ(3, cp_ratelimit_size(rl));
        ASSERT_EQ(0, cp_ratelimit_evictions(rl));
        cp_ratelimit_free(rl);
}

TEST(disabled_allows_everything) {
        cp_ratelimit *rl = cp_ratelimit_new(0, 10, 64);

        ASSERT_FALSE(cp_ratelimit_enabled(rl));
        ASSERT_FALSE(cp_ratelimit_enabled(NULL));
        for (int i = 0; i < 1000; i++)
                ASSERT_TRUE(cp_ratelimit_take(rl, K("x"), 0, NULL));
        ASSERT_TRUE(cp_ratelimit_take(NULL, K("x"), 0, NULL));
        ASSERT_EQ(0, cp_ratelimit_size(rl));
        cp_ratelimit_free(rl);
        cp_ratelimit_free(NULL);
}

/* 100,000 distinct keys through a 64-slot table: the table never grows,
 * and the limited key loses its state only when it is the oldest. */
TEST(table_is_bounded) {
        cp_ratelimit *rl = cp_ratelimit_new(1, 1, 60);
        char key[32];

        ASSERT_EQ(64, cp_ratelimit_capacity(rl));
        for (int i = 0; i < 100000; i++) {
                int n = snprintf(key, sizeof key, "198.51.%d.%d", i / 256, i % 256);
                ASSERT_TRUE(cp_ratelimit_take(rl, key, (size_t) n, 10, NULL));
        }
        ASSERT_EQ(64, cp_ratelimit_size(rl));
        ASSERT_TRUE(cp_ratelimit_evictions(rl) >= 100000 - 64);
        /* a key just limited survives a later key landing in its set only if
         * the set has a full bucket to give up: empty or full buckets go first */
        cp_ratelimit *r2 = cp_ratelimit_new(1, 1, 8);   /* one set */
        ASSERT_TRUE(cp_ratelimit_take(r2, K("victim"), 0, NULL));
        for (int i = 0; i < 7; i++) {
                int n = snprintf(key, sizeof key, "k%d", i);
                ASSERT_TRUE(cp_ratelimit_take(r2, key, (size_t) n, 1, NULL));
        }
        ASSERT_FALSE(cp_ratelimit_take(r2, K("victim"), 2, NULL));
        ASSERT_EQ(0, cp_ratelimit_evictions(r2));
        cp_ratelimit_free(r2);
        /* Nothing full to give up: the least recently used bucket goes
         * (not the first slot), and a check makes no bucket. */
        r2 = cp_ratelimit_new(1, 1, 8);
        for (int i = 0; i < 8; i++) {
                int n = snprintf(key, sizeof key, "k%d", i);
                ASSERT_TRUE(cp_ratelimit_take(r2, key, (size_t) n, 10 + i, NULL));
        }
        ASSERT_FALSE(cp_ratelimit_take(r2, K("k0"), 20, NULL));        /* k0 used last, k1 oldest */
        ASSERT_TRUE(cp_ratelimit_check(r2, K("new"), 21, NULL));
        ASSERT_EQ(0, cp_ratelimit_evictions(r2));
        ASSERT_EQ(8, cp_ratelimit_size(r2));
        ASSERT_TRUE(cp_ratelimit_take(r2, K("new"), 22, NULL));
        ASSERT_EQ(1, cp_ratelimit_evictions(r2));
        ASSERT_FALSE(cp_ratelimit_take(r2, K("k0"), 23, NULL));        /* survived */
        ASSERT_TRUE(cp_ratelimit_take(r2, K("k1"), 24, NULL));         /* forgotten: full again */
        cp_ratelimit_free(r2);
        cp_ratelimit_free(rl);
}

TEST(address_keys) {
        char key[CP_RATELIMIT_ADDR_KEY_LEN];

        ASSERT_EQ(strlen("198.51.100.7"), cp_ratelimit_addr_key("198.51.100.7", key));
        ASSERT_STREQ("198.51.100.7", key);
        cp_ratelimit_addr_key("2001:db8:1:2:aaaa::1", key);
        ASSERT_STREQ("2001:db8:1:2::/64", key);
        cp_ratelimit_addr_key("2001:DB8:1:2:bbbb:cccc:dddd:eeee", key);
        ASSERT_STREQ("2001:db8:1:2::/64", key);
        cp_ratelimit_addr_key("2001:db8:1:3::1", key);
        ASSERT_STREQ("2001:db8:1:3::/64", key);
        cp_ratelimit_addr_key("::1", key);
        ASSERT_STREQ("::/64", key);
        cp_ratelimit_addr_key("not:an address", key);
        ASSERT_STREQ("not:an address", key);
        cp_ratelimit_addr_key(NULL, key);
        ASSERT_STREQ("", key);
}

/* ---- threads ------------------------------------------------------------------------- */

#define THREADS 8
#define ROUNDS 20000

static cp_ratelimit *shared;
static atomic_long allowed;

static void *taker(void *arg) {
        long id = (long) arg;
        char key[16];

        for (int i = 0; i < ROUNDS; i++) {
                int n = snprintf(key, sizeof key, "k%d", (int) ((i + id) % 16));
                /* time stands still: only the burst can be taken */
                if (cp_ratelimit_take(shared, key, (size_t) n, 0, NULL))
                        atomic_fetch_add(&allowed, 1);
                if (i % 64 == 0)
                        (void) cp_ratelimit_size(shared);
        }
        return NULL;
}

TEST(threads_share_buckets_exactly) {
        pthread_t t[THREADS];

        shared = cp_ratelimit_new(60, 100, 1024);
        atomic_store(&allowed, 0);
        for (long i = 0; i < THREADS; i++)
                ASSERT_EQ(0, pthread_create(&t[i], NULL, taker, (void *) i));
        for (int i = 0; i < THREADS; i++)
                pthread_join(t[i], NULL);
        /* 16 keys of 100 tokens each, no refill: exactly 1,600 allowed */
        ASSERT_EQ(1600, atomic_load(&allowed));
        ASSERT_EQ(16, cp_ratelimit_size(shared));
        shared = cp_ratelimit_free(shared);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
