/*
 * mgmt-memtrim.h: glibc malloc settings for a process that holds many
 * idle streams, and giving the heap's free pages back to the kernel.
 *
 * Opening a Sync stream allocates far more than the stream keeps: the
 * request, the map, the sealed first message, protobuf and libpq
 * buffers, on the workers and on the CQ thread. Once freed, those chunks
 * stay resident in glibc's arenas, between the small blocks every held
 * stream keeps (its call, its record, gRPC's call arena), so after a
 * burst of opens the resident size per stream is much more than what the
 * streams use. mgmt_memtrim_check() measures the free bytes the arenas
 * hold (mallinfo2) and, beyond a threshold, calls malloc_trim(0), which
 * returns the free whole pages inside the arenas (madvise), not only the
 * top of the heap. docs/benchmarks.md (tests/bench/load part b) has the
 * figures.
 *
 * Threads: mgmt_memtrim_init() once, before any thread starts.
 * mgmt_memtrim_check() from any thread, but it takes every arena's lock
 * in turn, so it belongs on a worker (the manager runs it every few
 * seconds), never on the CQ thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Process-wide malloc settings (mallopt): at most one arena per core
 * (at least 2). Call before threads start. */
void mgmt_memtrim_init(void);

/* Trims when MGMT_MEMTRIM_MIN_FREE more bytes are free in the arenas than
 * right after the last trim.
 * Returns true when it trimmed; *ret_released (may be NULL) gets the
 * resident bytes given back, when known. */
bool mgmt_memtrim_check(size_t *ret_released);

#define MGMT_MEMTRIM_MIN_FREE (4u << 20)
