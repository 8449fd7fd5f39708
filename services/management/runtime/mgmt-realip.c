/*
 * The agent's real address behind a trusted reverse proxy (mgmt-realip.h).
 */
#include "cp/base.h"
#include "cp/prefix.h"
#include "mgmt-realip.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

struct mgmt_realip {
        cp_prefix_list trusted;
};

int mgmt_realip_new(const char *list, mgmt_realip **ret, cp_error *reterr) {
        cp_prefix_list l;
        int r;

        *ret = NULL;
        if ((r = cp_prefix_list_parse(list, &l, reterr)) < 0) {
                cp_error_prefix(reterr, "trusted-proxies");
                return r;
        }
        if (l.n == 0)
                return 0;
        *ret = cp_xcalloc(1, sizeof **ret);
        (*ret)->trusted = l;
        return 0;
}

mgmt_realip *mgmt_realip_free(mgmt_realip *r) {
        if (!r)
                return NULL;
        cp_prefix_list_release(&r->trusted);
        free(r);
        return NULL;
}

/* The values of header key, joined with ", " in order when the metadata
 * holds it more than once (a proxy may add a line of its own), or NULL.
 * *joined (freed by the caller) holds a joined value. */
static const char *header(const grpc_metadata_array *md, const char *key, size_t *len, char **joined) {
        const grpc_slice *first = NULL;
        size_t total = 0, count = 0;

        for (size_t i = 0; i < md->count; i++)
                if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) {
                        if (!first)
                                first = &md->metadata[i].value;
                        total += GRPC_SLICE_LENGTH(md->metadata[i].value) + 2;
                        count++;
                }
        if (!first)
                return NULL;
        if (count == 1) {
                *len = GRPC_SLICE_LENGTH(*first);
                return (const char *) GRPC_SLICE_START_PTR(*first);
        }
        char *out = cp_xmalloc(total), *p = out;
        for (size_t i = 0; i < md->count; i++)
                if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) {
                        size_t n = GRPC_SLICE_LENGTH(md->metadata[i].value);
                        if (p != out) {
                                memcpy(p, ", ", 2);
                                p += 2;
                        }
                        memcpy(p, GRPC_SLICE_START_PTR(md->metadata[i].value), n);
                        p += n;
                }
        *joined = out;
        *len = (size_t) (p - out);
        return out;
}

/* Copies the trimmed [s, s+len) into out when it is one address. */
static bool take_address(const char *s, size_t len, char *out, size_t cap) {
        char buf[64];
        cp_prefix p;

        while (len && (*s == ' ' || *s == '\t'))
                s++, len--;
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
                len--;
        if (len == 0 || len >= sizeof buf || len >= cap || memchr(s, '/', len))
                return false;
        memcpy(buf, s, len);
        buf[len] = '\0';
        if (!cp_prefix_parse(buf, len, &p))
                return false;
        memcpy(out, buf, len + 1);
        return true;
}

/* The rule of mgmt_realip_apply() on the two header values (either may
 * be NULL). */
static void apply_values(const mgmt_realip *r, const char *xff, size_t xff_len, const char *xri, size_t xri_len,
                         char *ip, size_t cap) {
        if (xff) {
                /* Right to left: proxies append; the first entry that is
                 * not a trusted proxy is the client. */
                size_t end = xff_len;
                char cand[64];
                while (end > 0) {
                        size_t start = end;
                        while (start > 0 && xff[start - 1] != ',')
                                start--;
                        if (!take_address(xff + start, end - start, cand, sizeof cand))
                                break;
                        if (!cp_prefix_list_contains(&r->trusted, cand) || start == 0) {
                                (void) snprintf(ip, cap, "%s", cand);
                                return;
                        }
                        end = start - 1;
                }
                /* A proxy that sent X-Forwarded-For said it all: an
                 * X-Real-IP beside it may be the client's own. */
                return;
        }
        if (xri)
                (void) take_address(xri, xri_len, ip, cap);
}

void mgmt_realip_apply(const mgmt_realip *r, const grpc_metadata_array *md, char *ip, size_t cap) {
        _cleanup_free_ char *joined = NULL, *unused = NULL;
        const char *xff, *xri;
        size_t xff_len = 0, xri_len = 0;

        if (!r || !md || !*ip || !cp_prefix_list_contains(&r->trusted, ip))
                return;
        xff = header(md, "x-forwarded-for", &xff_len, &joined);
        xri = header(md, "x-real-ip", &xri_len, &unused);
        apply_values(r, xff, xff_len, xri, xri_len, ip, cap);
}

void mgmt_realip_apply_headers(const mgmt_realip *r, const char *xff, const char *xri, char *ip, size_t cap) {
        if (!r || !*ip || !cp_prefix_list_contains(&r->trusted, ip))
                return;
        apply_values(r, xff, xff ? strlen(xff) : 0, xri, xri ? strlen(xri) : 0, ip, cap);
}

bool mgmt_realip_trusts(const mgmt_realip *r, const char *ip) {
        return r && ip && *ip && cp_prefix_list_contains(&r->trusted, ip);
}
