/*
 * cp/strbuf.h: a growable, always NUL-terminated byte string.
 *
 * Lifetime: cp_strbuf_init() on an embedded struct, cp_strbuf_release()
 * frees the contents, cp_strbuf_detach() hands the buffer to the caller
 * (who frees it with free()) and leaves the strbuf empty and reusable.
 * A cp_strbuf is owned by one thread at a time.
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>

#include "cp/macro.h"

typedef struct cp_strbuf {
        char *buf;      /* never NULL after init; always NUL-terminated */
        size_t len;     /* bytes before the terminating NUL */
        size_t cap;     /* bytes allocated in buf */
} cp_strbuf;

void cp_strbuf_init(cp_strbuf *sb);
void cp_strbuf_release(cp_strbuf *sb);
/* Empties the string but keeps the allocation. */
void cp_strbuf_reset(cp_strbuf *sb);
/* Returns the buffer (caller frees) and re-initialises sb. */
char *cp_strbuf_detach(cp_strbuf *sb);

void cp_strbuf_grow(cp_strbuf *sb, size_t extra);
void cp_strbuf_add(cp_strbuf *sb, const void *data, size_t n);
void cp_strbuf_adds(cp_strbuf *sb, const char *s);
void cp_strbuf_addch(cp_strbuf *sb, char c);
void cp_strbuf_addf(cp_strbuf *sb, const char *fmt, ...) _printf_(2, 3);
void cp_strbuf_vaddf(cp_strbuf *sb, const char *fmt, va_list ap) _printf_(2, 0);
/* Appends s as the inside of a JSON string (no surrounding quotes). */
void cp_strbuf_add_json_escaped(cp_strbuf *sb, const char *s);
/* The same into dst, which has room for 6 * strlen(s) bytes; returns the
 * end of what was written (no NUL). */
char *cp_json_escape_to(char *dst, const char *s);
