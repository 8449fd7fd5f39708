/*
 * cp/ratelimit.h: token buckets per key (a source address, a setup key's
 * hash, a token's user id), in a table of fixed size.
 *
 * Every key has a bucket of `burst` tokens that refills at `per_minute`
 * tokens a minute; taking a token from an empty bucket is refused, with
 * the time until the next token. Keys are never stored: the table keeps a
 * 64-bit keyed hash of each (the key is random per table), so a setup key
 * or a token handed in as the key stays in no memory of ours.
 *
 * Memory is bounded: the table holds at most max_keys buckets, created
 * when the table is. A key that is not in the table gets a full bucket in
 * its set (8 slots per set), replacing a bucket that has refilled to full
 * (forgetting it loses nothing) or else the least recently used one; only
 * then is state lost, in the limited party's favour. A spray of source
 * addresses therefore costs no memory, only the forgetting of the oldest
 * buckets (counted in cp_ratelimit_evictions()).
 *
 * Threads: every function is thread-safe (a lock per group of sets);
 * cp_ratelimit_free() only once no other thread uses the table.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cp_ratelimit cp_ratelimit;

/* per_minute <= 0 or burst <= 0: a disabled table, which allows every
 * take (cp_ratelimit_enabled() is false). max_keys is rounded up to a
 * whole number of sets, at least one. Never fails (out of memory aborts). */
cp_ratelimit *cp_ratelimit_new(int64_t per_minute, int64_t burst, size_t max_keys);
/* Accepts NULL; returns NULL. */
cp_ratelimit *cp_ratelimit_free(cp_ratelimit *rl);

/* False for a NULL or disabled table. */
bool cp_ratelimit_enabled(const cp_ratelimit *rl);

/* Takes one token from key's bucket (len bytes of key) at now_ms
 * (monotonic milliseconds, cp_now_mono_ms()). True: allowed. False: the
 * bucket is empty; *retry_after_ms (may be NULL) gets the time until the
 * next token (at least 1). A NULL or disabled table allows everything. */
bool cp_ratelimit_take(cp_ratelimit *rl, const void *key, size_t len, int64_t now_ms, int64_t *retry_after_ms);
/* Like cp_ratelimit_take() but takes nothing: would a take be allowed?
 * A key not in the table is allowed and not added (a check evicts nobody). */
bool cp_ratelimit_check(cp_ratelimit *rl, const void *key, size_t len, int64_t now_ms, int64_t *retry_after_ms);

/* The key of a client address for the per-address limits: an IPv4
 * address as it is, an IPv6 address as its /64 ("2001:db8:1:2::/64"; one
 * host usually holds a whole /64, so per address would be no limit).
 * Anything else as it is (truncated). Returns the key's length. */
#define CP_RATELIMIT_ADDR_KEY_LEN 64
size_t cp_ratelimit_addr_key(const char *ip, char out[CP_RATELIMIT_ADDR_KEY_LEN]);

/* Buckets in use, and how many buckets were forgotten while not full
 * (the table was full). */
size_t cp_ratelimit_size(cp_ratelimit *rl);
uint64_t cp_ratelimit_evictions(const cp_ratelimit *rl);
/* The number of slots (max_keys rounded up). */
size_t cp_ratelimit_capacity(const cp_ratelimit *rl);
