/*
 * mgmt-malloc.h: glibc malloc's policy for the replica's large, short-lived
 * buffers (the sealed maps of a fan-out).
 *
 * A fan-out seals one message per stream and each lives until its stream
 * has sent it: on NetBird's 5000/15 shape that is 5,015 messages of
 * ~104 KB, ~520 MB held at the peak. With glibc's defaults the freed
 * memory goes back to the kernel after every fan-out (heap trimming, the
 * workers' arenas dropping whole heaps) and the next fan-out takes
 * ~127,000 page faults to get it back, each a zeroed page: on 2 busy
 * cores that cost 4-5x the sealing itself (tests/bench/bench-netmap, the
 * "server's per-map path" rows). mgmt_malloc_tune() keeps freed memory in
 * the process instead (M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB, and
 * M_MMAP_THRESHOLD 32 MiB so maps up to that size come from the arenas,
 * not from a fresh mmap each); mgmt_malloc_idle_tick() gives it back with
 * malloc_trim(0) (every arena, also free pages inside the heaps, which
 * glibc's own trimming never returns) once no fan-out has finished for
 * MGMT_MALLOC_IDLE_MS and the free memory held grew by
 * MGMT_MALLOC_TRIM_BYTES since the last trim (an open storm's transient
 * buffers too), so an idle replica holds no more than glibc's defaults
 * would leave.
 *
 * An operator who sets glibc's own knobs (GLIBC_TUNABLES or any
 * MALLOC_*_ variable but the debugging aids MALLOC_PERTURB_ and
 * MALLOC_CHECK_) keeps them: mgmt_malloc_tune() then changes nothing and
 * the idle trim stays off.
 *
 * Threads: mgmt_malloc_tune() once, before any thread starts;
 * mgmt_malloc_fanout_done() from any thread; mgmt_malloc_idle_tick() from
 * one thread at a time (a worker job the manager queues, one at a time).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define MGMT_MALLOC_IDLE_MS 30000       /* no fan-out this long: give memory back */
#define MGMT_MALLOC_TICK_MS 10000       /* how often the manager asks */
#define MGMT_MALLOC_TRIM_BYTES (8u * 1024 * 1024) /* free memory grown by this much: trim */

/* Applies the policy unless the environment sets glibc's knobs; true
 * when applied. */
bool mgmt_malloc_tune(void);
/* A fan-out finished: memory is kept for the next one for a while. */
void mgmt_malloc_fanout_done(void);
/* Trims (malloc_trim(0)) when the policy is applied, no fan-out finished
 * for MGMT_MALLOC_IDLE_MS and the free memory grew as above (mallinfo2:
 * a walk of the free lists, each tick). now_ms is cp_now_mono_ms(). True
 * when it trimmed. */
bool mgmt_malloc_idle_tick(int64_t now_ms);
