/*
 * cp/alloc.h: allocation with a single out-of-memory policy.
 *
 * Every cp_x* function either returns memory or aborts the process after
 * writing one line to stderr; callers never test for NULL (style.md habit 6).
 * Sizes that come from input must be checked against a limit before they
 * reach these functions.
 *
 * Thread-safe. All returned memory is freed with free().
 */
#pragma once

#include <stddef.h>

#include "cp/macro.h"

void *cp_xmalloc(size_t n);
void *cp_xcalloc(size_t count, size_t size);
void *cp_xrealloc(void *p, size_t n);
char *cp_xstrdup(const char *s);
char *cp_xstrndup(const char *s, size_t n);
/* printf into a new heap string; the caller frees it. */
char *cp_xasprintf(const char *fmt, ...) _printf_(1, 2);

/* Sets the memory to zero in a way the compiler may not elide; use it on
 * secrets before they are freed. */
void cp_explicit_bzero(void *p, size_t n);
