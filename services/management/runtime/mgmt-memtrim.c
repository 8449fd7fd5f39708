#include "cp/base.h"
#include "mgmt-memtrim.h"

#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

/* Resident bytes of this process (/proc/self/statm), 0 when unknown. */
static size_t resident_bytes(void) {
        unsigned long size, resident;
        FILE *f = fopen("/proc/self/statm", "re");
        size_t r = 0;

        if (!f)
                return 0;
        if (fscanf(f, "%lu %lu", &size, &resident) == 2)
                r = (size_t) resident * (size_t) sysconf(_SC_PAGESIZE);
        fclose(f);
        return r;
}

void mgmt_memtrim_init(void) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        /* glibc makes up to 8 arenas per core, one per thread that meets
         * contention: with the workers, the CQ thread and gRPC's own
         * threads each arena keeps its own free chunks beside the held
         * streams. One arena per core (at least 2) measured 0.3 KB less
         * per idle stream at 10k streams (docs/benchmarks.md, part b). */
        (void) mallopt(M_ARENA_MAX, (int) (cpus > 2 ? cpus : 2));
}

/* Free bytes in the arenas right after the last trim, lowered when they
 * are reused: trimmed chunks still count as free in mallinfo2, so only
 * what was freed since is worth a new walk. One check runs at a time
 * (the manager queues at most one). */
static size_t free_at_trim;

bool mgmt_memtrim_check(size_t *ret_released) {
        struct mallinfo2 mi = mallinfo2();
        size_t before, after;

        if (ret_released)
                *ret_released = 0;
        if (mi.fordblks < free_at_trim)
                free_at_trim = mi.fordblks;
        if (mi.fordblks - free_at_trim < MGMT_MEMTRIM_MIN_FREE)
                return false;
        free_at_trim = mi.fordblks;
        before = resident_bytes();
        (void) malloc_trim(0);
        after = resident_bytes();
        if (ret_released && before > after)
                *ret_released = before - after;
        return true;
}
