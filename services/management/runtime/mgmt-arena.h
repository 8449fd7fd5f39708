/*
 * mgmt-arena.h: an operation-scoped arena (style.md habit 4b).
 *
 * One RPC builds and decodes many small objects: the unpacked protobuf
 * request, the response tree with its repeated fields, formatted strings.
 * They all come from one mgmt_arena, which the RPC frees in one go when it
 * ends, so no error path has to remember what it allocated. It is also a
 * protobuf-c allocator (mgmt_arena_pb), so protobuf_c_message_unpack()
 * can allocate into it; such messages are never freed one by one.
 *
 * Memory comes in chunks of 8 KiB (bigger requests get a chunk of their
 * own); allocation aborts on out-of-memory like cp_xmalloc. Callers bound
 * input sizes before they reach the arena.
 *
 * Budget: while a budget is set (mgmt_arena_set_budget), an allocation
 * through the protobuf-c allocator that would make the arena hold more
 * than the budget (chunk headers and slack included) returns NULL, so
 * protobuf_c_message_unpack() fails instead of growing: the edges set one
 * around the unpack of a client's message, whose cost in memory the
 * client chooses (a 2-byte repeated entry becomes a ~50-byte struct).
 * mgmt_arena_alloc() and the other direct calls never fail; their callers
 * bound what they build.
 *
 * Threads: an arena belongs to one thread at a time (it may be handed
 * over, e.g. from a worker back to the CQ thread, with the job).
 */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

#include "cp/macro.h"

typedef struct mgmt_arena_chunk mgmt_arena_chunk;

typedef struct mgmt_arena {
        mgmt_arena_chunk *chunks;
        size_t held;                    /* bytes malloc'd for the chunks */
        size_t budget;                  /* for pb allocations; 0 = none */
        bool over_budget;               /* a pb allocation was refused */
        ProtobufCAllocator pb;          /* allocator_data = the arena */
} mgmt_arena;

void mgmt_arena_init(mgmt_arena *a);
/* Frees every allocation; the arena is empty and reusable afterwards. */
void mgmt_arena_release(mgmt_arena *a);

/* Sets (bytes > 0) or clears (0) the budget of protobuf-c allocations
 * and forgets an earlier refusal. */
void mgmt_arena_set_budget(mgmt_arena *a, size_t bytes);
/* True when a pb allocation was refused since the budget was set: an
 * unpack that failed then failed for its size, not its form. */
static inline bool mgmt_arena_over_budget(const mgmt_arena *a) {
        return a->over_budget;
}
/* Bytes the arena holds (chunks with their headers). */
static inline size_t mgmt_arena_held(const mgmt_arena *a) {
        return a->held;
}

/* Zeroed memory, aligned for any type, valid until release. */
void *mgmt_arena_alloc(mgmt_arena *a, size_t n);
/* n elements of size each, zeroed; aborts on overflow. */
void *mgmt_arena_array(mgmt_arena *a, size_t n, size_t size);
char *mgmt_arena_strdup(mgmt_arena *a, const char *s);
char *mgmt_arena_printf(mgmt_arena *a, const char *fmt, ...) _printf_(2, 3);

/* The protobuf-c allocator of a. */
static inline ProtobufCAllocator *mgmt_arena_pb(mgmt_arena *a) {
        return &a->pb;
}
