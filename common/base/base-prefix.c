/*
 * Address and prefix lists (cp/prefix.h).
 */
#include "cp/base.h"
#include "cp/prefix.h"

#include <arpa/inet.h>

bool cp_prefix_parse(const char *s, size_t len, cp_prefix *ret) {
        char buf[64];
        char *slash;
        unsigned max;

        if (len == 0 || len >= sizeof buf)
                return false;
        memcpy(buf, s, len);
        buf[len] = '\0';
        slash = strchr(buf, '/');
        if (slash)
                *slash++ = '\0';
        memset(ret, 0, sizeof *ret);
        if (inet_pton(AF_INET, buf, ret->addr) == 1) {
                ret->family = AF_INET;
                max = 32;
        } else if (inet_pton(AF_INET6, buf, ret->addr) == 1) {
                ret->family = AF_INET6;
                max = 128;
        } else
                return false;
        ret->bits = max;
        if (slash) {
                char *end;
                if (*slash < '0' || *slash > '9')
                        return false;
                unsigned long v = strtoul(slash, &end, 10);
                if (*end || v > max)
                        return false;
                ret->bits = (unsigned) v;
        }
        return true;
}

int cp_prefix_list_parse(const char *list, cp_prefix_list *ret, cp_error *reterr) {
        cp_prefix_list l = { 0 };
        const char *s = list;

        *ret = (cp_prefix_list) { 0 };
        while (s && *s) {
                size_t len;
                while (*s == ' ' || *s == ',')
                        s++;
                if (!*s)
                        break;
                len = strcspn(s, ", ");
                l.p = cp_xrealloc(l.p, (l.n + 1) * sizeof *l.p);
                if (!cp_prefix_parse(s, len, &l.p[l.n])) {
                        cp_prefix_list_release(&l);
                        return cp_error_set(reterr, -EINVAL, "\"%.*s\" is not an IP address or prefix", (int) len,
                                            s);
                }
                l.n++;
                s += len;
        }
        *ret = l;
        return 0;
}

void cp_prefix_list_release(cp_prefix_list *l) {
        free(l->p);
        *l = (cp_prefix_list) { 0 };
}

bool cp_prefix_list_contains(const cp_prefix_list *l, const char *a) {
        cp_prefix ip;

        if (!cp_prefix_parse(a, strlen(a), &ip) || ip.bits != (ip.family == AF_INET ? 32u : 128u))
                return false;
        for (size_t i = 0; i < l->n; i++) {
                const cp_prefix *p = &l->p[i];
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
