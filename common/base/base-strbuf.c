#include "cp/base.h"
#include "cp/strbuf.h"

static char empty_buf[1];

void cp_strbuf_init(cp_strbuf *sb) {
        sb->buf = empty_buf;
        sb->len = 0;
        sb->cap = 0;
}

void cp_strbuf_release(cp_strbuf *sb) {
        if (sb->cap)
                free(sb->buf);
        cp_strbuf_init(sb);
}

void cp_strbuf_reset(cp_strbuf *sb) {
        sb->len = 0;
        if (sb->cap)
                sb->buf[0] = '\0';
}

char *cp_strbuf_detach(cp_strbuf *sb) {
        char *r = sb->cap ? sb->buf : cp_xstrdup("");
        cp_strbuf_init(sb);
        return r;
}

void cp_strbuf_grow(cp_strbuf *sb, size_t extra) {
        if (extra >= SIZE_MAX / 2 - sb->len)
                abort();
        size_t need = sb->len + extra + 1;
        if (need <= sb->cap)
                return;
        size_t cap = sb->cap ? sb->cap : 64;
        while (cap < need)
                cap *= 2;
        if (sb->cap) {
                sb->buf = cp_xrealloc(sb->buf, cap);
        } else {
                sb->buf = cp_xmalloc(cap);
                sb->buf[0] = '\0';
        }
        sb->cap = cap;
}

void cp_strbuf_add(cp_strbuf *sb, const void *data, size_t n) {
        cp_strbuf_grow(sb, n);
        memcpy(sb->buf + sb->len, data, n);
        sb->len += n;
        sb->buf[sb->len] = '\0';
}

void cp_strbuf_adds(cp_strbuf *sb, const char *s) {
        cp_strbuf_add(sb, s, strlen(s));
}

void cp_strbuf_addch(cp_strbuf *sb, char c) {
        cp_strbuf_add(sb, &c, 1);
}

void cp_strbuf_vaddf(cp_strbuf *sb, const char *fmt, va_list ap) {
        va_list cp;

        va_copy(cp, ap);
        int n = vsnprintf(NULL, 0, fmt, cp);
        va_end(cp);
        if (n < 0)
                return;
        cp_strbuf_grow(sb, (size_t) n);
        (void) vsnprintf(sb->buf + sb->len, (size_t) n + 1, fmt, ap);
        sb->len += (size_t) n;
}

void cp_strbuf_addf(cp_strbuf *sb, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        cp_strbuf_vaddf(sb, fmt, ap);
        va_end(ap);
}

char *cp_json_escape_to(char *dst, const char *s) {
        static const char hex[] = "0123456789abcdef";

        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                /* Runs that need no escaping (most of every log line) go in
                 * one copy. */
                const unsigned char *run = p;
                while (*p >= 0x20 && *p != '"' && *p != '\\')
                        p++;
                memcpy(dst, run, (size_t) (p - run));
                dst += p - run;
                if (!*p)
                        break;
                *dst++ = '\\';
                switch (*p) {
                case '"':  *dst++ = '"'; break;
                case '\\': *dst++ = '\\'; break;
                case '\n': *dst++ = 'n'; break;
                case '\r': *dst++ = 'r'; break;
                case '\t': *dst++ = 't'; break;
                default:        /* the other control characters */
                        memcpy(dst, "u00", 3);
                        dst[3] = hex[*p >> 4];
                        dst[4] = hex[*p & 15];
                        dst += 5;
                }
        }
        return dst;
}

void cp_strbuf_add_json_escaped(cp_strbuf *sb, const char *s) {
        /* At most six bytes per byte (\u00XX); only capacity is reserved. */
        cp_strbuf_grow(sb, 6 * strlen(s));
        sb->len = (size_t) (cp_json_escape_to(sb->buf + sb->len, s) - sb->buf);
        sb->buf[sb->len] = '\0';
}
