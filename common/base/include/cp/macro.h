/*
 * cp/macro.h: the few GNU C helpers we allow (style.md section 5 keeps this
 * list short on purpose).
 */
#pragma once

#include <stdlib.h>

#define _cleanup_(f)     __attribute__((cleanup(f)))
#define _unused_         __attribute__((unused))
#define _noreturn_       __attribute__((noreturn))
#define _printf_(a, b)   __attribute__((format(printf, a, b)))
#define _warn_unused_    __attribute__((warn_unused_result))
#define _likely_(x)      __builtin_expect(!!(x), 1)
#define _unlikely_(x)    __builtin_expect(!!(x), 0)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

/* Hand ownership of *p to the caller and leave NULL behind, so a
 * _cleanup_ handler on the source variable does nothing. */
#define TAKE_PTR(p)                     \
        ({                              \
                __typeof__(p) _tp = (p);\
                (p) = NULL;             \
                _tp;                    \
        })

/* Declares func##p(type *p) that calls func(*p) when *p is non-NULL,
 * for use with _cleanup_. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)         \
        static inline void func##p(type *p) {           \
                if (*p)                                 \
                        (void) func(*p);                \
        }

static inline void cp_freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(cp_freep)
