/*
 * cp/log.h: JSON-lines logging, one object per line.
 *
 *   {"time":"2026-11-21T10:00:00.123456Z","level":"info","component":"store",
 *    "msg":"applied migration","request_id":"…","method":"…","peer":"…",
 *    "account":"…","action":"…", <extra fields>}
 *
 * The level and target are the only process globals (style.md habit 11);
 * set them once with cp_log_open() before other threads start. Writing a
 * line is thread-safe: each line is built in memory and written with a
 * single write(2).
 *
 * Libraries in common/ log at debug level at most; services log where they
 * decide what to do.
 */
#pragma once

#include <stdbool.h>

#include "cp/error.h"
#include "cp/macro.h"

typedef enum cp_log_level {
        CP_LOG_TRACE,
        CP_LOG_DEBUG,
        CP_LOG_INFO,
        CP_LOG_WARN,
        CP_LOG_ERROR,
        CP_LOG_FATAL,
        CP_LOG_PANIC,
} cp_log_level;

/* Per-operation context; every field may be NULL and is then left out.
 * The strings are borrowed for the duration of the call only. */
typedef struct cp_log_ctx {
        const char *component;
        const char *request_id;
        const char *method;
        const char *peer;
        const char *account;
        const char *action;
} cp_log_ctx;

/* target is "console" (stdout), "stderr" or a file path opened for append.
 * Returns 0, or a negative errno with reterr naming the path. */
int cp_log_open(const char *target, cp_log_level level, cp_error *reterr);
/* Closes a file target; logging goes back to stdout. */
void cp_log_close(void);
void cp_log_set_level(cp_log_level level);
bool cp_log_enabled(cp_log_level level);

/* Parses NetBird's level names: trace, debug, info, warn(ing), error,
 * fatal, panic. */
int cp_log_level_parse(const char *s, cp_log_level *ret);
const char *cp_log_level_name(cp_log_level level);

void cp_log(const cp_log_ctx *ctx, cp_log_level level, const char *fmt, ...) _printf_(3, 4);

/* Like cp_log, with extra string fields given as a NULL-terminated list
 * of key, value pairs after the message. A NULL value is skipped. */
void cp_log_kv(const cp_log_ctx *ctx, cp_log_level level, const char *msg, ...);

/* Logs "<msg>: <err->message>" with sqlstate/detail/hint fields and
 * returns err->code (or r when err is NULL), for
 *   return cp_log_error(ctx, r, &err, "failed to open store");          */
int cp_log_error(const cp_log_ctx *ctx, int r, const cp_error *err, const char *fmt, ...) _printf_(4, 5);
