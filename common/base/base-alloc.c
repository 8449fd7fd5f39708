#include "cp/base.h"

_noreturn_ static void oom(size_t n) {
        /* No allocation and no logger here: write(2) is all we can trust. */
        char msg[96];
        int len = snprintf(msg, sizeof msg, "{\"level\":\"fatal\",\"msg\":\"out of memory allocating %zu bytes\"}\n", n);
        if (len > 0)
                (void) !write(STDERR_FILENO, msg, (size_t) len);
        abort();
}

void *cp_xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);
        if (!p)
                oom(n);
        return p;
}

void *cp_xcalloc(size_t count, size_t size) {
        void *p = calloc(count ? count : 1, size ? size : 1);
        if (!p)
                oom(count * size);
        return p;
}

void *cp_xrealloc(void *p, size_t n) {
        void *q = realloc(p, n ? n : 1);
        if (!q)
                oom(n);
        return q;
}

char *cp_xstrdup(const char *s) {
        return cp_xstrndup(s, strlen(s));
}

char *cp_xstrndup(const char *s, size_t n) {
        size_t len = strnlen(s, n);
        char *p = cp_xmalloc(len + 1);
        memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

char *cp_xasprintf(const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                oom(strlen(fmt));
        return s;
}

void cp_explicit_bzero(void *p, size_t n) {
        if (p)
                explicit_bzero(p, n);
}
