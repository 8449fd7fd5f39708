/*
 * netbird-mgmt's malloc policy (services/management/runtime/mgmt-malloc.h):
 * applied unless the environment sets glibc's knobs; freed memory stays in
 * the process while fan-outs run and goes back with one trim once they
 * stop and it grew; nothing is trimmed again while nothing grew.
 */
#include "cp/base.h"
#include "cp/util.h"
#include "cptest.h"
#include "mgmt-malloc.h"

#include <malloc.h>

static bool applied;

/* Allocates and frees n blocks of size bytes (each written, so resident). */
static void churn(size_t n, size_t size) {
        void **p = cp_xcalloc(n, sizeof *p);

        for (size_t i = 0; i < n; i++) {
                p[i] = cp_xmalloc(size);
                memset(p[i], 1, size);
        }
        for (size_t i = 0; i < n; i++)
                free(p[i]);
        free(p);
}

TEST(policy_applied_without_glibc_settings) {
#ifdef __SANITIZE_ADDRESS__
        /* AddressSanitizer's allocator replaces glibc's: mallopt() has
         * nothing to tune and says so. */
        CPTEST_SKIP("AddressSanitizer's allocator, not glibc's");
#endif
        if (getenv("GLIBC_TUNABLES") || getenv("MALLOC_ARENA_MAX") || getenv("MALLOC_TRIM_THRESHOLD_"))
                CPTEST_SKIP("the environment sets glibc's malloc knobs");
        ASSERT_TRUE(applied);
}

TEST(freed_memory_kept_then_trimmed_once_idle) {
        if (!applied)
                CPTEST_SKIP("policy not applied (GLIBC_TUNABLES or MALLOC_* set, or a sanitizer's allocator)");
        int64_t now = cp_now_mono_ms();

        /* 64 MiB in map-sized blocks, freed: kept (glibc's default would
         * have trimmed the top of the heap right away). */
        mgmt_malloc_fanout_done();
        churn(640, 100 * 1024);
        ASSERT_TRUE(mallinfo2().fordblks >= 32u * 1024 * 1024);
        /* a fan-out just finished: nothing is given back */
        ASSERT_FALSE(mgmt_malloc_idle_tick(now));
        mgmt_malloc_fanout_done();
        ASSERT_FALSE(mgmt_malloc_idle_tick(now));
        /* idle long enough: one trim; the next ticks have nothing new */
        int64_t later = now + 100LL * MGMT_MALLOC_IDLE_MS;
        ASSERT_TRUE(mgmt_malloc_idle_tick(later));
        ASSERT_FALSE(mgmt_malloc_idle_tick(later + MGMT_MALLOC_TICK_MS));
        /* grown again (e.g. an open storm's buffers), still idle: trimmed */
        churn(320, 100 * 1024);
        ASSERT_TRUE(mgmt_malloc_idle_tick(later + 2 * MGMT_MALLOC_TICK_MS));
}

int main(int argc, char **argv) {
        applied = mgmt_malloc_tune();
        return cptest_main(argc, argv);
}
