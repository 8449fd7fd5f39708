/*
 * NetBird's posture checks (management/server/posture, each Check()) on a
 * peer's meta, and the hashicorp/go-version rules they compare with.
 */
#include "cp/posture.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <regex.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- go-version ---------------------------------------------------------------------------- */

/* go-version's VersionRegexpRaw, anchored (its lazy "*?" is the same as
 * "*" for a whole-string match). Groups: 1 segments, 4 prerelease after
 * "-" starting with a digit, 7 prerelease starting with a letter. */
#define VERSION_RE                                                                      \
        "^v?([0-9]+(\\.[0-9]+)*)"                                                       \
        "(-([0-9]+[0-9A-Za-z~-]*(\\.[0-9A-Za-z~-]+)*)|(-?([A-Za-z~-]+[0-9A-Za-z~-]*(\\.[0-9A-Za-z~-]+)*)))?" \
        "(\\+([0-9A-Za-z~-]+(\\.[0-9A-Za-z~-]+)*))?$"

#define MAX_SEGMENTS 16

typedef struct version {
        int64_t seg[MAX_SEGMENTS];
        int nseg;
        char pre[128];
} version;

static regex_t version_re;
static bool version_re_ok;
static pthread_once_t version_re_once = PTHREAD_ONCE_INIT;

static void version_re_compile(void) {
        version_re_ok = regcomp(&version_re, VERSION_RE, REG_EXTENDED) == 0;
}

static int parse_version(const char *s, version *v) {
        regmatch_t m[12];

        pthread_once(&version_re_once, version_re_compile);
        if (!version_re_ok || !s || regexec(&version_re, s, 12, m, 0) != 0)
                return -1;
        *v = (version) { 0 };
        const char *p = s + m[1].rm_so, *end = s + m[1].rm_eo;
        while (p < end) {
                int64_t x = 0;
                for (; p < end && *p != '.'; p++) {
                        if (x > (INT64_MAX - 9) / 10)
                                return -1;      /* strconv.ParseInt's range error */
                        x = x * 10 + (*p - '0');
                }
                if (v->nseg == MAX_SEGMENTS)
                        return -1;
                v->seg[v->nseg++] = x;
                if (p < end)
                        p++;
        }
        int g = m[7].rm_so >= 0 ? 7 : m[4].rm_so >= 0 ? 4 : -1;
        if (g > 0) {
                size_t n = (size_t) (m[g].rm_eo - m[g].rm_so);
                if (n >= sizeof v->pre)
                        n = sizeof v->pre - 1;
                memcpy(v->pre, s + m[g].rm_so, n);
        }
        return 0;
}

bool cp_posture_version_valid(const char *s) {
        version v;
        return parse_version(s, &v) == 0;
}

static bool all_digits(const char *s, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isdigit((unsigned char) s[i]))
                        return false;
        return true;
}

/* go-version's comparePrereleases for two non-empty prereleases. */
static int compare_pre(const char *a, const char *b) {
        while (*a || *b) {
                size_t na = strcspn(a, "."), nb = strcspn(b, ".");
                if (!*a)
                        return -1;
                if (!*b)
                        return 1;
                bool da = all_digits(a, na), db = all_digits(b, nb);
                int c;
                if (da && db) {
                        c = na != nb ? (na < nb ? -1 : 1) : strncmp(a, b, na);
                        /* leading zeros: compare as numbers */
                        if (na != nb) {
                                long long x = strtoll(a, NULL, 10), y = strtoll(b, NULL, 10);
                                c = x < y ? -1 : x > y;
                        }
                } else if (da != db) {
                        c = da ? -1 : 1;        /* a number sorts before a word */
                } else {
                        size_t n = na < nb ? na : nb;
                        c = strncmp(a, b, n);
                        if (c == 0 && na != nb)
                                c = na < nb ? -1 : 1;
                }
                if (c != 0)
                        return c < 0 ? -1 : 1;
                a += na + (a[na] == '.');
                b += nb + (b[nb] == '.');
        }
        return 0;
}

static int compare_segments(const version *a, const version *b) {
        int n = a->nseg > b->nseg ? a->nseg : b->nseg;
        for (int i = 0; i < n; i++) {
                int64_t x = i < a->nseg ? a->seg[i] : 0, y = i < b->nseg ? b->seg[i] : 0;
                if (x != y)
                        return x < y ? -1 : 1;
        }
        return 0;
}

int cp_posture_version_at_least(const char *have, const char *min) {
        version v, c;

        if (parse_version(have, &v) < 0 || parse_version(min, &c) < 0)
                return -1;
        int segs = compare_segments(&v, &c);
        if (*v.pre && !*c.pre)
                return 0;
        if (*v.pre && *c.pre && segs != 0)
                return 0;
        if (segs != 0)
                return segs > 0;
        if (!*v.pre && !*c.pre)
                return 1;
        if (!*v.pre)
                return 1;
        if (!*c.pre)
                return 0;
        return compare_pre(v.pre, c.pre) >= 0;
}

/* ---- the checks ------------------------------------------------------------------------------ */

static const char *str(const json_t *o, const char *key) {
        const char *s = json_string_value(json_object_get(o, key));
        return s ? s : "";
}

/* NetBird's version.MeetsMinVersion: both cut at the first '-'. */
static bool nb_version_ok(const json_t *chk, const cp_posture_peer *p) {
        char have[128], min[128];
        snprintf(have, sizeof have, "%.*s", (int) strcspn(p->wt_version, "-"), p->wt_version);
        const char *m = str(chk, "min_version");
        snprintf(min, sizeof min, "%.*s", (int) strcspn(m, "-"), m);
        return cp_posture_version_at_least(have, min) == 1;
}

static bool os_version_ok(const json_t *chk, const cp_posture_peer *p) {
        const char *os = p->go_os, *key = "min_version", *have = p->os_version;
        char kernel[128];

        if (strcmp(os, "linux") == 0) {
                snprintf(kernel, sizeof kernel, "%.*s", (int) strcspn(p->kernel_version, "-"), p->kernel_version);
                have = kernel;
                key = "min_kernel_version";
        } else if (strcmp(os, "windows") == 0) {
                have = p->kernel_version;
                key = "min_kernel_version";
        } else if (strcmp(os, "android") != 0 && strcmp(os, "darwin") != 0 && strcmp(os, "ios") != 0) {
                return true;    /* an OS the check does not know passes */
        }
        const json_t *per_os = json_object_get(chk, os);
        if (!json_is_object(per_os))
                return false;   /* the OS is not allowed by the check */
        return cp_posture_version_at_least(have, str(per_os, key)) == 1;
}

static bool geo_ok(const json_t *chk, const cp_posture_peer *p) {
        const char *action = str(chk, "action");
        const json_t *loc;
        size_t i;

        if (!*p->country_code && !*p->city_name)
                return false;   /* location not evaluated: denied */
        json_array_foreach(json_object_get(chk, "locations"), i, loc) {
                const char *city = str(loc, "city_name");
                if (strcmp(str(loc, "country_code"), p->country_code) == 0 &&
                    (!*city || strcmp(city, p->city_name) == 0))
                        return strcmp(action, "allow") == 0;
        }
        return strcmp(action, "deny") == 0;
}

typedef struct prefix {
        int family;
        unsigned char addr[16];
        int bits;
} prefix;

/* "addr/bits" (or a bare address as a host prefix when host_ok);
 * IPv4-mapped IPv6 unmapped for a bare address only. */
static int parse_prefix(const char *s, bool host_ok, prefix *out) {
        char buf[80];
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t) (slash - s) : strlen(s);

        if (n >= sizeof buf || (!slash && !host_ok))
                return -1;
        memcpy(buf, s, n);
        buf[n] = '\0';
        *out = (prefix) { 0 };
        if (inet_pton(AF_INET, buf, out->addr) == 1) {
                out->family = AF_INET;
                out->bits = 32;
        } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
                out->family = AF_INET6;
                out->bits = 128;
                static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
                if (!slash && memcmp(out->addr, mapped, 12) == 0) {
                        memmove(out->addr, out->addr + 12, 4);
                        memset(out->addr + 4, 0, 12);
                        out->family = AF_INET;
                        out->bits = 32;
                }
        } else {
                return -1;
        }
        if (slash) {
                char *end;
                errno = 0;
                long b = strtol(slash + 1, &end, 10);
                if (errno || end == slash + 1 || *end || b < 0 || b > out->bits)
                        return -1;
                out->bits = (int) b;
        }
        return 0;
}

/* NetBird's prefixContains: same family, outer no more specific, and
 * inner's network inside outer. */
static bool prefix_contains(const prefix *outer, const prefix *inner) {
        if (outer->family != inner->family || outer->bits > inner->bits)
                return false;
        int full = outer->bits / 8, rest = outer->bits % 8;
        if (memcmp(outer->addr, inner->addr, (size_t) full) != 0)
                return false;
        if (rest) {
                unsigned char mask = (unsigned char) (0xff << (8 - rest));
                return (outer->addr[full] & mask) == (inner->addr[full] & mask);
        }
        return true;
}

static bool network_ok(const json_t *chk, const cp_posture_peer *p) {
        const char *action = str(chk, "action");
        prefix peer[64], r;
        size_t n = 0, i, k;
        const json_t *e;

        for (i = 0; i < p->n_net_addrs && n < 63; i++)
                if (parse_prefix(p->net_addrs[i], false, &peer[n]) == 0)
                        n++;
        if (*p->connection_ip && parse_prefix(p->connection_ip, true, &peer[n]) == 0 && !strchr(p->connection_ip, '/'))
                n++;
        if (n == 0)
                return false;   /* no addresses: an error, so denied */
        for (k = 0; k < n; k++)
                json_array_foreach(json_object_get(chk, "ranges"), i, e)
                        if (parse_prefix(json_string_value(e) ? json_string_value(e) : "", false, &r) == 0 &&
                            prefix_contains(&r, &peer[k]))
                                return strcmp(action, "allow") == 0;
        return strcmp(action, "deny") == 0;
}

static bool running(const cp_posture_peer *p, const char *path) {
        for (size_t i = 0; i < p->n_running; i++)
                if (strcmp(p->running[i], path) == 0)
                        return true;
        return false;
}

static bool process_ok(const json_t *chk, const cp_posture_peer *p) {
        const char *key;
        const json_t *proc;
        size_t i;

        if (strcmp(p->go_os, "linux") == 0)
                key = "linux_path";
        else if (strcmp(p->go_os, "darwin") == 0)
                key = "mac_path";
        else if (strcmp(p->go_os, "windows") == 0)
                key = "windows_path";
        else
                return false;   /* unsupported OS: an error, so denied */
        json_array_foreach(json_object_get(chk, "processes"), i, proc) {
                const char *path = str(proc, key);
                if (!*path || !running(p, path))
                        return false;
        }
        return true;
}

bool cp_posture_check_peer(const json_t *checks, const cp_posture_peer *p) {
        const json_t *c;

        if ((c = json_object_get(checks, "nb_version_check")) && !nb_version_ok(c, p))
                return false;
        if ((c = json_object_get(checks, "os_version_check")) && !os_version_ok(c, p))
                return false;
        if ((c = json_object_get(checks, "geo_location_check")) && !geo_ok(c, p))
                return false;
        if ((c = json_object_get(checks, "peer_network_range_check")) && !network_ok(c, p))
                return false;
        if ((c = json_object_get(checks, "process_check")) && !process_ok(c, p))
                return false;
        return true;
}

size_t cp_posture_files(const json_t *checks, json_t *files) {
        static const char *const keys[] = { "linux_path", "mac_path", "windows_path" };
        const json_t *proc;
        size_t i, n = 0;

        json_array_foreach(json_object_get(json_object_get(checks, "process_check"), "processes"), i, proc)
                for (size_t k = 0; k < 3; k++)
                        if (*str(proc, keys[k])) {
                                json_array_append_new(files, json_string(str(proc, keys[k])));
                                n++;
                        }
        return n;
}
