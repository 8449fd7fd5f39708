#include "cp/base.h"
#include "cp/util.h"
#include "mgmt-malloc.h"

#include <malloc.h>
#include <stdatomic.h>

extern char **environ;

static bool applied;
static _Atomic int64_t last_fanout_ms;  /* cp_now_mono_ms() of the last fan-out, 0 = none */
static size_t free_after_trim;          /* mallinfo2().fordblks after the last trim (idle tick's thread) */

static bool environment_sets_malloc(void) {
        if (getenv("GLIBC_TUNABLES"))
                return true;
        /* MALLOC_PERTURB_ and MALLOC_CHECK_ are debugging aids (meson test
         * sets MALLOC_PERTURB_ for every test), not a memory policy. */
        for (char **e = environ; e && *e; e++)
                if (strncmp(*e, "MALLOC_", 7) == 0 && strncmp(*e, "MALLOC_PERTURB_=", 16) != 0 &&
                    strncmp(*e, "MALLOC_CHECK_=", 14) != 0)
                        return true;
        return false;
}

bool mgmt_malloc_tune(void) {
        if (environment_sets_malloc())
                return false;
        /* Each returns 1 on success; a refusal leaves glibc's default. */
        applied = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1;
        applied = (mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024) == 1) && applied;
        applied = (mallopt(M_TOP_PAD, 64 * 1024 * 1024) == 1) && applied;
        return applied;
}

void mgmt_malloc_fanout_done(void) {
        int64_t now = cp_now_mono_ms();

        atomic_store(&last_fanout_ms, now > 0 ? now : 1);
}

bool mgmt_malloc_idle_tick(int64_t now_ms) {
        int64_t last = atomic_load(&last_fanout_ms);
        struct mallinfo2 mi;

        if (!applied || (last != 0 && now_ms - last < MGMT_MALLOC_IDLE_MS))
                return false;
        /* Free memory the process holds (every arena): trimmed when it
         * grew by MGMT_MALLOC_TRIM_BYTES since the last trim, so an idle
         * replica does not walk and madvise the same free pages again. */
        mi = mallinfo2();
        if (mi.fordblks < free_after_trim)
                free_after_trim = mi.fordblks;
        if (mi.fordblks - free_after_trim < MGMT_MALLOC_TRIM_BYTES)
                return false;
        (void) malloc_trim(0);
        free_after_trim = mallinfo2().fordblks;
        return true;
}
