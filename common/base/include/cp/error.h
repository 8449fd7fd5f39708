/*
 * cp/error.h: the one error convention of common/ (style.md habit 8).
 *
 * Functions return int: >= 0 on success, a negative errno-style value on
 * failure. When a failure has text worth keeping (a SQLSTATE and server
 * message from PostgreSQL, a validation failure naming a config key), the
 * function fills the optional cp_error *reterr it was given. Passing NULL
 * for reterr is always allowed. A function never writes its ret_ outputs
 * on failure.
 *
 * cp_error holds fixed-size buffers, so it can live on the stack and needs
 * no release.
 */
#pragma once

#include <stdarg.h>

#include "cp/macro.h"

typedef struct cp_error {
        int code;               /* negative errno-style value, 0 when unset */
        char sqlstate[6];       /* five-character SQLSTATE, "" if none */
        char message[512];
        char detail[512];
        char hint[256];
} cp_error;

/* Clears every field. */
void cp_error_clear(cp_error *e);

/* Fills e (if not NULL) with code and a formatted message, clearing the
 * other fields; returns code so callers can write
 *   return cp_error_set(reterr, -EINVAL, "bad port %s", s);            */
int cp_error_set(cp_error *e, int code, const char *fmt, ...) _printf_(3, 4);
int cp_error_setv(cp_error *e, int code, const char *fmt, va_list ap) _printf_(3, 0);

/* Sets the optional detail / hint of an already set error. */
void cp_error_detail(cp_error *e, const char *fmt, ...) _printf_(2, 3);
void cp_error_hint(cp_error *e, const char *fmt, ...) _printf_(2, 3);

/* Prepends "what: " to the message, keeping code and SQLSTATE, to add
 * context while an error travels up. */
void cp_error_prefix(cp_error *e, const char *fmt, ...) _printf_(2, 3);
