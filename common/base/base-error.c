#include "cp/base.h"
#include "cp/error.h"

void cp_error_clear(cp_error *e) {
        if (e)
                memset(e, 0, sizeof *e);
}

int cp_error_setv(cp_error *e, int code, const char *fmt, va_list ap) {
        if (!e)
                return code;
        cp_error_clear(e);
        e->code = code;
        (void) vsnprintf(e->message, sizeof e->message, fmt, ap);
        return code;
}

int cp_error_set(cp_error *e, int code, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        int r = cp_error_setv(e, code, fmt, ap);
        va_end(ap);
        return r;
}

void cp_error_detail(cp_error *e, const char *fmt, ...) {
        va_list ap;

        if (!e)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(e->detail, sizeof e->detail, fmt, ap);
        va_end(ap);
}

void cp_error_hint(cp_error *e, const char *fmt, ...) {
        va_list ap;

        if (!e)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(e->hint, sizeof e->hint, fmt, ap);
        va_end(ap);
}

void cp_error_prefix(cp_error *e, const char *fmt, ...) {
        char pre[256], old[sizeof e->message];
        va_list ap;

        if (!e)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        memcpy(old, e->message, sizeof old);
        (void) snprintf(e->message, sizeof e->message, "%s: %s", pre, old);
}
