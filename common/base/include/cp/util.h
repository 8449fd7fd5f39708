/*
 * cp/util.h: small helpers without a better home: clocks, random bytes,
 * identifiers and strict number parsing. All functions are thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Wall-clock time in Unix nanoseconds / monotonic milliseconds. */
int64_t cp_now_unix_ns(void);
int64_t cp_now_mono_ms(void);
/* *ts = CLOCK_MONOTONIC now + ms, for pthread_cond_timedwait on a
 * condition variable set to CLOCK_MONOTONIC. */
struct timespec;
void cp_mono_deadline(struct timespec *ts, int64_t ms);

/* Fills buf with n bytes from the kernel CSPRNG; aborts if that fails,
 * because nothing sensible can continue without randomness. */
void cp_random_bytes(void *buf, size_t n);
/* Uniform random integer in [0, bound), bound > 0. */
uint64_t cp_random_uniform(uint64_t bound);

/* A new identifier of CP_ID_LEN characters [0-9a-v] plus NUL: 4 bytes of
 * big-endian Unix seconds then 8 random bytes, base32hex-encoded, so ids
 * sort roughly by creation time (like the xid strings NetBird uses). */
#define CP_ID_LEN 20
void cp_id_new(char out[CP_ID_LEN + 1]);

/* Strict parsers: the whole string must be a number in range; they return
 * 0 or -EINVAL / -ERANGE and write *ret only on success. */
int cp_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret);
int cp_parse_bool(const char *s, bool *ret);
/* Durations like "12h", "30m", "1h30m", "250ms", "10s" or a bare number of
 * seconds; result in milliseconds. */
int cp_parse_duration_ms(const char *s, int64_t *ret);

/* Formats Unix ns as RFC 3339 UTC with microseconds,
 * e.g. 2026-11-21T10:00:00.123456Z; buf needs 32 bytes. */
void cp_format_rfc3339(int64_t unix_ns, char buf[32]);

/* Core dumps off for this process, before it holds any secret: the core
 * size limit (soft and hard) set to 0 and the process made non-dumpable
 * (PR_SET_DUMPABLE 0: no core, no ptrace attach by non-root, its /proc
 * files owned by root). Left alone when the environment variable
 * CP_CORE_DUMPS_ENV is "1" (an operator who wants a core for a bug
 * report; docs/ops.md, "Secrets"). Returns 1 when left alone, 0 when
 * disabled, or a negative errno (the caller logs it and carries on). */
#define CP_CORE_DUMPS_ENV "NB_CP_ALLOW_CORE_DUMPS"
int cp_core_dumps_disable(void);
