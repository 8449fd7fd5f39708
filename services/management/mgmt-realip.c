/*
 * The agent's real address behind a trusted reverse proxy (mgmt-realip.h).
 */
#include "cp/base.h"
#include "mgmt-realip.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

typedef struct prefix {
        int family;                     /* AF_INET or AF_INET6 */
        unsigned char addr[16];
        unsigned bits;
} prefix;

struct mgmt_realip {
        prefix *p;
        size_t n;
};

/* "a.b.c.d", "a.b.c.d/n", "v6", "v6/n" -> *out; false when it is not. */
static bool parse_prefix(const char *s, size_t len, prefix *out) {
        char buf[64];
        const char *slash;
        unsigned max;

        if (len == 0 || len >= sizeof buf)
                return false;
        memcpy(buf, s, len);
        buf[len] = '\0';
        slash = strchr(buf, '/');
        if (slash)
                buf[slash - buf] = '\0';
        memset(out, 0, sizeof *out);
        if (inet_pton(AF_INET, buf, out->addr) == 1) {
                out->family = AF_INET;
                max = 32;
        } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
                out->family = AF_INET6;
                max = 128;
        } else
                return false;
        out->bits = max;
        if (slash) {
                char *end;
                const char *n = slash + 1;
                if (*n < '0' || *n > '9')
                        return false;
                unsigned long v = strtoul(n, &end, 10);
                if (*end || v > max)
                        return false;
                out->bits = (unsigned) v;
        }
        return true;
}

/* The address text a (no port) inside one of r's prefixes. */
static bool trusted(const mgmt_realip *r, const char *a) {
        prefix ip;

        if (!parse_prefix(a, strlen(a), &ip) || ip.bits != (ip.family == AF_INET ? 32u : 128u))
                return false;
        for (size_t i = 0; i < r->n; i++) {
                const prefix *p = &r->p[i];
                if (p->family != ip.family)
                        continue;
                unsigned full = p->bits / 8, rest = p->bits % 8;
                if (memcmp(p->addr, ip.addr, full) != 0)
                        continue;
                if (rest && ((p->addr[full] ^ ip.addr[full]) & (0xff << (8 - rest)) & 0xff))
                        continue;
                return true;
        }
        return false;
}

int mgmt_realip_new(const char *list, mgmt_realip **ret, cp_error *reterr) {
        mgmt_realip *r;
        const char *s = list;

        *ret = NULL;
        if (!list || !*list)
                return 0;
        r = cp_xcalloc(1, sizeof *r);
        while (*s) {
                size_t len;
                while (*s == ' ' || *s == ',')
                        s++;
                if (!*s)
                        break;
                len = strcspn(s, ", ");
                r->p = cp_xrealloc(r->p, (r->n + 1) * sizeof *r->p);
                if (!parse_prefix(s, len, &r->p[r->n])) {
                        cp_error_set(reterr, -EINVAL, "trusted-proxies: \"%.*s\" is not an IP address or prefix",
                                     (int) len, s);
                        mgmt_realip_free(r);
                        return -EINVAL;
                }
                /* Host bits of the address are ignored by the match. */
                r->n++;
                s += len;
        }
        *ret = r;
        return 0;
}

mgmt_realip *mgmt_realip_free(mgmt_realip *r) {
        if (!r)
                return NULL;
        free(r->p);
        free(r);
        return NULL;
}

/* The value of header key, or NULL (len in *len). */
static const char *header(const grpc_metadata_array *md, const char *key, size_t *len) {
        for (size_t i = 0; i < md->count; i++) {
                if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) {
                        *len = GRPC_SLICE_LENGTH(md->metadata[i].value);
                        return (const char *) GRPC_SLICE_START_PTR(md->metadata[i].value);
                }
        }
        return NULL;
}

/* Copies the trimmed [s, s+len) into out when it is one address. */
static bool take_address(const char *s, size_t len, char *out, size_t cap) {
        char buf[64];
        prefix p;

        while (len && (*s == ' ' || *s == '\t'))
                s++, len--;
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
                len--;
        if (len == 0 || len >= sizeof buf || len >= cap || memchr(s, '/', len))
                return false;
        memcpy(buf, s, len);
        buf[len] = '\0';
        if (!parse_prefix(buf, len, &p))
                return false;
        memcpy(out, buf, len + 1);
        return true;
}

void mgmt_realip_apply(const mgmt_realip *r, const grpc_metadata_array *md, char *ip, size_t cap) {
        const char *v;
        size_t len;

        if (!r || !md || !*ip || !trusted(r, ip))
                return;
        v = header(md, "x-forwarded-for", &len);
        if (v) {
                /* Right to left: proxies append; the first entry that is
                 * not a trusted proxy is the client. */
                size_t end = len;
                char cand[64];
                while (end > 0) {
                        size_t start = end;
                        while (start > 0 && v[start - 1] != ',')
                                start--;
                        if (!take_address(v + start, end - start, cand, sizeof cand))
                                break;
                        if (!trusted(r, cand) || start == 0) {
                                (void) snprintf(ip, cap, "%s", cand);
                                return;
                        }
                        end = start - 1;
                }
        }
        v = header(md, "x-real-ip", &len);
        if (v)
                (void) take_address(v, len, ip, cap);
}
