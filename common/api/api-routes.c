/*
 * /api/routes: list, get, create, update, delete (openapi Route,
 * RouteRequest): the "network routes" agents find in their network maps.
 * Also the helpers the DNS handlers share (api-int.h): the group list
 * check, IDNA/punycode domains with NetBird's domain syntax, and IP
 * addresses printed the way Go prints them.
 *
 * Storage (routes): net_id is the API's network_id, peer the routing peer
 * (NULL when the route has peer groups), network NULL for a domain route
 * (the snapshot gives agents NetBird's placeholder 192.0.2.0/32), domains
 * in punycode, network_type NetBird's numbers (1 IPv4, 2 IPv6, 3 domain).
 */
#include "api-activity.h"
#include "api-int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>

#define MAX_NET_ID_CHARS 40     /* route.MaxNetIDChar */
#define MIN_METRIC 1
#define MAX_METRIC 9999
#define MAX_DOMAINS 32          /* the domain package's limit per list */
/* A domain route's network in NetBird: a documentation address, so an old
 * agent that installs it harms nobody. */
#define DOMAIN_PLACEHOLDER "192.0.2.0/32"

enum { NET_INVALID, NET_IPV4, NET_IPV6, NET_DOMAIN };  /* route.NetworkType */


/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Code points of s (valid UTF-8: jansson checked it); *n gets the count.
 * The caller frees the array. */
static uint32_t *utf8_decode(const char *s, size_t len, size_t *n) {
        uint32_t *v = cp_xmalloc((len + 1) * sizeof *v);
        size_t k = 0;

        for (size_t i = 0; i < len;) {
                unsigned char b = (unsigned char) s[i];
                int extra = b < 0x80 ? 0 : b < 0xe0 ? 1 : b < 0xf0 ? 2 : 3;
                uint32_t cp = extra == 0 ? b : extra == 1 ? b & 0x1f : extra == 2 ? b & 0x0f : b & 0x07;
                i++;
                for (int e = 0; e < extra && i < len; e++, i++)
                        cp = (cp << 6) | ((unsigned char) s[i] & 0x3f);
                v[k++] = cp;
        }
        *n = k;
        return v;
}

static void utf8_add(cp_strbuf *sb, uint32_t cp) {
        if (cp >= 0xd800 && cp <= 0xdfff)
                cp = 0xfffd;    /* what Go's string conversion makes of a surrogate */
        if (cp < 0x80)
                cp_strbuf_addch(sb, (char) cp);
        else if (cp < 0x800) {
                cp_strbuf_addch(sb, (char) (0xc0 | (cp >> 6)));
                cp_strbuf_addch(sb, (char) (0x80 | (cp & 0x3f)));
        } else if (cp < 0x10000) {
                cp_strbuf_addch(sb, (char) (0xe0 | (cp >> 12)));
                cp_strbuf_addch(sb, (char) (0x80 | ((cp >> 6) & 0x3f)));
                cp_strbuf_addch(sb, (char) (0x80 | (cp & 0x3f)));
        } else {
                cp_strbuf_addch(sb, (char) (0xf0 | (cp >> 18)));
                cp_strbuf_addch(sb, (char) (0x80 | ((cp >> 12) & 0x3f)));
                cp_strbuf_addch(sb, (char) (0x80 | ((cp >> 6) & 0x3f)));
                cp_strbuf_addch(sb, (char) (0x80 | (cp & 0x3f)));
        }
}

size_t api_utf8_count(const char *s) {
        size_t n = 0;

        for (; *s; s++)
                if (((unsigned char) *s & 0xc0) != 0x80)
                        n++;
        return n;
}

static bool is_ascii(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) s[i] >= 0x80)
                        return false;
        return true;
}

/* Go's %q of an ASCII-or-UTF-8 string, enough for error texts. */
void api_go_quote(cp_strbuf *sb, const char *s, size_t len) {
        cp_strbuf_addch(sb, '"');
        for (size_t i = 0; i < len; i++) {
                unsigned char ch = (unsigned char) s[i];
                if (ch == '"' || ch == '\\') {
                        cp_strbuf_addch(sb, '\\');
                        cp_strbuf_addch(sb, (char) ch);
                } else if (ch < 0x20 || ch == 0x7f)
                        cp_strbuf_addf(sb, "\\x%02x", ch);
                else
                        cp_strbuf_addch(sb, (char) ch);
        }
        cp_strbuf_addch(sb, '"');
}

/* ---- punycode (RFC 3492), as golang.org/x/net/idna does it ------------------------------- */

enum { PC_BASE = 36, PC_TMIN = 1, PC_TMAX = 26, PC_SKEW = 38, PC_DAMP = 700, PC_BIAS = 72, PC_N = 128 };

static int32_t pc_adapt(int32_t delta, int32_t npoints, bool first) {
        int32_t k = 0;

        delta = first ? delta / PC_DAMP : delta / 2;
        delta += delta / npoints;
        while (delta > ((PC_BASE - PC_TMIN) * PC_TMAX) / 2) {
                delta /= PC_BASE - PC_TMIN;
                k += PC_BASE;
        }
        return k + (PC_BASE - PC_TMIN + 1) * delta / (delta + PC_SKEW);
}

static int32_t pc_threshold(int32_t k, int32_t bias) {
        if (k <= bias)
                return PC_TMIN;
        if (k >= bias + PC_TMAX)
                return PC_TMAX;
        return k - bias;
}

/* *ret = a + b * c; false on int32 overflow. */
static bool pc_madd(int32_t a, int32_t b, int32_t c, int32_t *ret) {
        int64_t p = (int64_t) b * c;

        if (p > (int64_t) INT32_MAX - a)
                return false;
        *ret = a + (int32_t) p;
        return true;
}

/* Appends "xn--" and the encoding of the code points cp[0..n). */
static int pc_encode(const uint32_t *cp, size_t n, cp_strbuf *out) {
        int32_t delta = 0, bias = PC_BIAS, next = PC_N, b = 0, h, remaining = 0;

        cp_strbuf_adds(out, "xn--");
        for (size_t i = 0; i < n; i++) {
                if (cp[i] < 0x80) {
                        b++;
                        cp_strbuf_addch(out, (char) cp[i]);
                } else
                        remaining++;
        }
        h = b;
        if (b > 0)
                cp_strbuf_addch(out, '-');
        while (remaining) {
                int32_t m = INT32_MAX;
                for (size_t i = 0; i < n; i++)
                        if ((int32_t) cp[i] < m && (int32_t) cp[i] >= next)
                                m = (int32_t) cp[i];
                if (!pc_madd(delta, m - next, h + 1, &delta))
                        return -1;
                next = m;
                for (size_t i = 0; i < n; i++) {
                        if ((int32_t) cp[i] < next) {
                                if (++delta < 0)
                                        return -1;
                                continue;
                        }
                        if ((int32_t) cp[i] > next)
                                continue;
                        int32_t q = delta;
                        for (int32_t k = PC_BASE;; k += PC_BASE) {
                                int32_t t = pc_threshold(k, bias), d;
                                if (q < t)
                                        break;
                                d = t + (q - t) % (PC_BASE - t);
                                cp_strbuf_addch(out, (char) (d < 26 ? 'a' + d : '0' + d - 26));
                                q = (q - t) / (PC_BASE - t);
                        }
                        cp_strbuf_addch(out, (char) (q < 26 ? 'a' + q : '0' + q - 26));
                        bias = pc_adapt(delta, h + 1, h == b);
                        delta = 0;
                        h++;
                        remaining--;
                }
                delta++;
                next++;
        }
        return 0;
}

static int32_t pc_digit(char ch) {
        if (ch >= '0' && ch <= '9')
                return ch - '0' + 26;
        if (ch >= 'A' && ch <= 'Z')
                return ch - 'A';
        if (ch >= 'a' && ch <= 'z')
                return ch - 'a';
        return -1;
}

/* Decodes the part of a label after "xn--" into UTF-8 (appended to out). */
static int pc_decode(const char *enc, size_t len, cp_strbuf *out) {
        uint32_t v[1024];
        size_t n = 0, pos = 0;
        int32_t i = 0, next = PC_N, bias = PC_BIAS;

        if (len == 0)
                return 0;
        for (size_t k = 0; k < len; k++)
                if (enc[k] == '-')
                        pos = k + 1;
        if (pos == 1)
                return -1;
        if (pos == len) {               /* only basic code points */
                cp_strbuf_add(out, enc, len - 1);
                return 0;
        }
        if (pos > 0) {
                if (pos - 1 > ELEMENTSOF(v))
                        return -1;
                for (size_t k = 0; k + 1 < pos; k++)
                        v[n++] = (unsigned char) enc[k];
        }
        while (pos < len) {
                int32_t old = i, w = 1;
                for (int32_t k = PC_BASE;; k += PC_BASE) {
                        if (pos == len)
                                return -1;
                        int32_t d = pc_digit(enc[pos++]);
                        if (d < 0 || !pc_madd(i, d, w, &i))
                                return -1;
                        int32_t t = pc_threshold(k, bias);
                        if (d < t)
                                break;
                        if (!pc_madd(0, w, PC_BASE - t, &w))
                                return -1;
                }
                if (n >= ELEMENTSOF(v))
                        return -1;
                int32_t x = (int32_t) n + 1;
                bias = pc_adapt(i - old, x, old == 0);
                next += i / x;
                i %= x;
                if (next < 0 || next > 0x10ffff)
                        return -1;
                memmove(&v[i + 1], &v[i], (n - (size_t) i) * sizeof v[0]);
                v[i] = (uint32_t) next;
                n++;
                i++;
        }
        for (size_t k = 0; k < n; k++)
                utf8_add(out, v[k]);
        return 0;
}

/* ---- domains ------------------------------------------------------------------------------- */

/* Calls fn for each '.'-separated label of s (empty ones included). */
typedef int (*label_fn)(const char *label, size_t len, void *ud);

static int each_label(const char *s, label_fn fn, void *ud) {
        for (;;) {
                size_t n = strcspn(s, ".");
                int r = fn(s, n, ud);
                if (r < 0)
                        return r;
                if (!s[n])
                        return 0;
                s += n + 1;
        }
}

typedef struct ascii_state {
        cp_strbuf *out, *err;
        bool first;
} ascii_state;

/* One label of ToASCII with NetBird's profile (no mapping, no checks but
 * valid punycode): an "xn--" label is decoded (and encoded again if it
 * holds anything not ASCII), other non-ASCII labels are encoded. */
static int ascii_label(const char *label, size_t len, void *ud) {
        ascii_state *st = ud;
        cp_strbuf u;
        int r = 0;

        if (!st->first)
                cp_strbuf_addch(st->out, '.');
        st->first = false;
        cp_strbuf_init(&u);
        if (len >= 4 && memcmp(label, "xn--", 4) == 0) {
                if (pc_decode(label + 4, len - 4, &u) < 0) {
                        cp_strbuf_adds(st->err, "idna: invalid label ");
                        api_go_quote(st->err, label + 4, len - 4);
                        r = -1;
                }
        } else
                cp_strbuf_add(&u, label, len);
        if (r == 0 && !is_ascii(u.buf, u.len)) {
                size_t n;
                uint32_t *cp = utf8_decode(u.buf, u.len, &n);
                if (pc_encode(cp, n, st->out) < 0) {
                        cp_strbuf_adds(st->err, "idna: invalid label ");
                        api_go_quote(st->err, u.buf, u.len);
                        r = -1;
                }
                free(cp);
        } else if (r == 0)
                cp_strbuf_add(st->out, u.buf, u.len);
        cp_strbuf_release(&u);
        return r;
}

int api_domain_to_ascii(const char *in, cp_strbuf *out, cp_strbuf *err) {
        ascii_state st = { out, err, true };

        cp_strbuf_reset(out);
        if (each_label(in, ascii_label, &st) < 0)
                return -1;
        for (size_t i = 0; i < out->len; i++)
                out->buf[i] = (char) tolower((unsigned char) out->buf[i]);
        return 0;
}

static bool label_char(char ch) {
        return isalnum((unsigned char) ch) || ch == '-' || ch == '_';
}

/* One label of the domain syntax without the optional "xn--": 1 to 63
 * characters, a letter or digit first (or '_' for labels that are not the
 * last), a letter or digit last, letters, digits, '-' or '_' between. */
static bool label_plain(const char *s, size_t n, bool last) {
        if (n == 0 || n > 63)
                return false;
        if (!isalnum((unsigned char) s[0]) && (last || s[0] != '_'))
                return false;
        if (n > 1 && !isalnum((unsigned char) s[n - 1]))
                return false;
        for (size_t i = 1; i + 1 < n; i++)
                if (!label_char(s[i]))
                        return false;
        return true;
}

static int valid_label(const char *s, size_t n, void *ud) {
        const char *end = ud;
        bool last = s + n == end;

        if (label_plain(s, n, last) || (n > 4 && memcmp(s, "xn--", 4) == 0 && label_plain(s + 4, n - 4, last)))
                return 0;
        return -1;
}

bool api_domain_valid(const char *ascii) {
        if (strncmp(ascii, "*.", 2) == 0)
                ascii += 2;
        if (!*ascii)
                return false;
        return each_label(ascii, valid_label, (void *) (ascii + strlen(ascii))) == 0;
}

static int unicode_label(const char *label, size_t len, void *ud) {
        cp_strbuf *out = ud;

        if (out->len > 0)
                cp_strbuf_addch(out, '.');
        if (len >= 4 && memcmp(label, "xn--", 4) == 0)
                return pc_decode(label + 4, len - 4, out);
        cp_strbuf_add(out, label, len);
        return 0;
}

/* ToUnicode of a stored (punycode) domain, appended to out; the punycode
 * itself when it does not decode (NetBird's SafeString). */
static void domain_to_unicode(const char *ascii, cp_strbuf *out) {
        cp_strbuf u;

        cp_strbuf_init(&u);
        if (each_label(ascii, unicode_label, &u) < 0 || u.len == 0)
                cp_strbuf_adds(out, ascii);
        else
                cp_strbuf_adds(out, u.buf);
        cp_strbuf_release(&u);
}

/* ---- IP addresses and prefixes --------------------------------------------------------------- */

typedef struct prefix {
        bool v6;
        unsigned char a[16];
        unsigned bits;
} prefix;

static void addr_format(bool v6, const unsigned char *a, char out[64]) {
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        uint16_t w[8];
        int zs = -1, ze = -1, o = 0;

        if (!v6) {
                (void) snprintf(out, 64, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
                return;
        }
        if (memcmp(a, mapped, 12) == 0) {
                (void) snprintf(out, 64, "::ffff:%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
                return;
        }
        for (int i = 0; i < 8; i++)
                w[i] = (uint16_t) (a[2 * i] << 8 | a[2 * i + 1]);
        /* The first longest run of two or more zero groups becomes "::". */
        for (int i = 0; i < 8; i++) {
                int j = i;
                while (j < 8 && w[j] == 0)
                        j++;
                if (j - i >= 2 && j - i > ze - zs) {
                        zs = i;
                        ze = j;
                }
        }
        for (int i = 0; i < 8; i++) {
                if (i == zs) {
                        o += snprintf(out + o, 64 - (size_t) o, "::");
                        i = ze;
                        if (i >= 8)
                                break;
                } else if (i > 0)
                        o += snprintf(out + o, 64 - (size_t) o, ":");
                o += snprintf(out + o, 64 - (size_t) o, "%x", w[i]);
        }
}

/* A plain address: dotted quad (no leading zeros: inet_pton refuses them
 * as Go does) or IPv6 without a zone. */
static int addr_parse(const char *s, bool *v6, unsigned char a[16]) {
        if (strchr(s, ':')) {
                *v6 = true;
                return inet_pton(AF_INET6, s, a) == 1 ? 0 : -1;
        }
        *v6 = false;
        return inet_pton(AF_INET, s, a) == 1 ? 0 : -1;
}

int api_ip_canonical(const char *in, char out[64]) {
        unsigned char a[16];
        bool v6;

        if (addr_parse(in, &v6, a) < 0)
                return -1;
        addr_format(v6, a, out);
        return 0;
}

/* "<address>/<bits>" as netip.ParsePrefix takes it, then masked. */
static int prefix_parse(const char *s, prefix *p) {
        const char *slash = strrchr(s, '/');
        char addr[64];
        unsigned bits = 0;

        if (!slash || (size_t) (slash - s) >= sizeof addr || !slash[1])
                return -1;
        memcpy(addr, s, (size_t) (slash - s));
        addr[slash - s] = '\0';
        if (addr_parse(addr, &p->v6, p->a) < 0)
                return -1;
        if (slash[1] == '0' && slash[2])
                return -1;              /* no leading zeros */
        for (const char *d = slash + 1; *d; d++) {
                if (!isdigit((unsigned char) *d) || bits > 128)
                        return -1;
                bits = bits * 10 + (unsigned) (*d - '0');
        }
        if (bits > (p->v6 ? 128u : 32u))
                return -1;
        p->bits = bits;
        unsigned len = p->v6 ? 16 : 4;
        for (unsigned i = 0; i < len; i++) {
                unsigned keep = bits >= 8 * (i + 1) ? 8 : bits > 8 * i ? bits - 8 * i : 0;
                p->a[i] &= (unsigned char) (0xff00 >> keep);
        }
        return 0;
}

static void prefix_format(const prefix *p, char out[64]) {
        char a[64];

        addr_format(p->v6, p->a, a);
        (void) snprintf(out, 64, "%s/%u", a, p->bits);
}

/* ---- groups ----------------------------------------------------------------------------------- */

/* The first element of $2 that is empty or not a group of the account. */
int api_check_groups(api_ctx *c, const char *pgarray, size_t n) {
        char bad[256];
        int r;

        if (n == 0)
                return api_error(c, 422, "the list of group IDs should not be empty");
        r = api_find_bad_group(c, pgarray, false, bad, sizeof bad, NULL);
        if (r <= 0)
                return r;
        if (!*bad)              /* "" is no group id */
                return api_error(c, 422, "group ID should not be empty string");
        return api_error(c, 422, "group id %s not found", bad);
}

/* ---- the Route object -------------------------------------------------------------------------- */

/* The stored columns; finish_route() turns them into NetBird's Route. */
#define ROUTE_ROW(t)                                                                                       \
        "json_build_object('id', " t ".id, 'description', " t ".description, 'network_id', " t ".net_id,"  \
        " 'enabled', " t ".enabled, 'peer', COALESCE(" t ".peer, ''), 'peer_groups', " t ".peer_groups,"    \
        " 'network', " t ".network::text, 'network_type', " t ".network_type, 'domains', " t ".domains,"    \
        " 'masquerade', " t ".masquerade, 'metric', " t ".metric, 'groups', " t ".groups,"                 \
        " 'keep_route', " t ".keep_route, 'access_control_groups', " t ".access_control_groups,"           \
        " 'skip_auto_apply', " t ".skip_auto_apply)"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" ROUTE_ROW("r") " ORDER BY r.id), '[]') FROM routes r WHERE r.account_id = $1";
static const char SQL_GET[] = "SELECT " ROUTE_ROW("r") " FROM routes r WHERE r.account_id = $1 AND r.id = $2";
static const char SQL_DELETE[] = "DELETE FROM routes WHERE account_id = $1 AND id = $2";
static const char SQL_PEER_EXISTS[] = "SELECT 1 FROM peers WHERE account_id = $1 AND id = $2";
static const char SQL_INSERT[] =
        "INSERT INTO routes (id, account_id, network, domains, keep_route, net_id, description, peer,"
        " peer_groups, network_type, masquerade, metric, enabled, groups, access_control_groups, skip_auto_apply)"
        " VALUES ($1, $2, $3::cidr, $4::text[], $5::boolean, $6, $7, NULLIF($8, ''), $9::text[], $10::smallint,"
        " $11::boolean, $12::integer, $13::boolean, $14::text[], $15::text[], $16::boolean)";
static const char SQL_UPDATE[] =
        "UPDATE routes SET network = $3::cidr, domains = $4::text[], keep_route = $5::boolean, net_id = $6,"
        " description = $7, peer = NULLIF($8, ''), peer_groups = $9::text[], network_type = $10::smallint,"
        " masquerade = $11::boolean, metric = $12::integer, enabled = $13::boolean, groups = $14::text[],"
        " access_control_groups = $15::text[], skip_auto_apply = $16::boolean"
        " WHERE id = $1 AND account_id = $2";

/* The first route of the same network (or the same domain list) that
 * already reaches the new route's routing peers, other than the route
 * itself ($2). $3 the punycode domains joined by ", " (NetBird's
 * comparison key), $4 the prefix (the placeholder for a domain route), $5
 * the peer (''), $6 the peer groups. Rows: kind ('peer', 'group' or
 * 'member'), the peer id or group name, and for 'member' the group name.
 * In NetBird's order: the peer first, then each peer group in the
 * request's order, the group itself before its members. */
static const char SQL_CONFLICT[] =
        "WITH same AS (SELECT r.peer, r.peer_groups FROM routes r WHERE r.account_id = $1 AND r.id <> $2::text"
        "  AND ((r.network_type = 3 AND array_to_string(r.domains, ', ') = $3::text)"
        "   OR (r.network_type <> 3 AND r.network = $4::cidr))),"
        " seen_groups AS (SELECT DISTINCT unnest(s.peer_groups) AS id FROM same s),"
        " seen_peers AS (SELECT s.peer AS id FROM same s WHERE s.peer IS NOT NULL"
        "  UNION SELECT gp.peer_id FROM group_peers gp JOIN seen_groups sg ON sg.id = gp.group_id"
        "  WHERE gp.account_id = $1),"
        " want AS (SELECT u.id, u.ord, g.name FROM unnest($6::text[]) WITH ORDINALITY AS u(id, ord)"
        "  JOIN groups g ON g.account_id = $1 AND g.id = u.id)"
        " SELECT x.kind, x.a, x.b FROM ("
        "  SELECT 0::bigint AS o, 'peer' AS kind, $5::text AS a, '' AS b"
        "   WHERE $5::text IN (SELECT id FROM seen_peers)"
        "  UNION ALL SELECT w.ord * 2, 'group', w.name, '' FROM want w WHERE w.id IN (SELECT id FROM seen_groups)"
        "  UNION ALL SELECT w.ord * 2 + 1, 'member', m.name, w.name FROM want w"
        "   JOIN LATERAL (SELECT p.name FROM group_peers gp JOIN peers p ON p.account_id = gp.account_id"
        "    AND p.id = gp.peer_id WHERE gp.account_id = $1 AND gp.group_id = w.id"
        "    AND gp.peer_id IN (SELECT id FROM seen_peers) ORDER BY p.name, p.id LIMIT 1) m ON true"
        " ) x ORDER BY x.o LIMIT 1";

static const char *type_name(int type) {
        switch (type) {
        case NET_IPV4:
                return "IPv4";
        case NET_IPV6:
                return "IPv6";
        case NET_DOMAIN:
                return "Domain";
        default:
                return "Invalid";
        }
}

/* Stored row -> NetBird's Route: the network as Go prints it (the
 * placeholder for domain routes), domains in Unicode (null for network
 * routes), the type by name, empty peer_groups and access_control_groups
 * left out. */
static void finish_route(json_t *r) {
        int type = (int) json_integer_value(json_object_get(r, "network_type"));
        const char *net = json_string_value(json_object_get(r, "network"));
        char buf[64];
        prefix p;

        if (type == NET_DOMAIN || !net)
                (void) snprintf(buf, sizeof buf, "%s", DOMAIN_PLACEHOLDER);
        else if (prefix_parse(net, &p) == 0)
                prefix_format(&p, buf);
        else
                (void) snprintf(buf, sizeof buf, "%s", net);
        json_object_set_new(r, "network", json_string(buf));
        json_object_set_new(r, "network_type", json_string(type_name(type)));
        if (type == NET_DOMAIN) {
                json_t *in = json_object_get(r, "domains"), *out = json_array(), *e;
                size_t i;
                cp_strbuf u;
                cp_strbuf_init(&u);
                json_array_foreach(in, i, e) {
                        cp_strbuf_reset(&u);
                        domain_to_unicode(json_string_value(e), &u);
                        json_array_append_new(out, json_string(u.buf));
                }
                cp_strbuf_release(&u);
                json_object_set_new(r, "domains", out);
        } else
                json_object_set_new(r, "domains", json_null());
        if (json_array_size(json_object_get(r, "peer_groups")) == 0)
                json_object_del(r, "peer_groups");
        if (json_array_size(json_object_get(r, "access_control_groups")) == 0)
                json_object_del(r, "access_control_groups");
}

/* Loads route id as NetBird's Route (*ret, the caller's reference), or
 * *ret = NULL when it does not exist. */
static int load_route(api_ctx *c, const char *id, json_t **ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_GET, 2, p, &rows);

        *ret = NULL;
        if (r < 0)
                return r;
        const char *v = cp_store_rows_get(rows, 0, 0);
        if (!v)
                return 0;
        *ret = json_loads(v, 0, NULL);
        if (!*ret)
                return api_internal(c, "route json", NULL);
        finish_route(*ret);
        return 0;
}

/* NetBird's event meta of a route: name, network_range, domains (Unicode,
 * ", "), peer_id and peer_groups (null when there are none). */
static char *route_meta(const json_t *route) {
        json_t *m = json_object(), *doms = json_object_get(route, "domains"), *pg, *e;
        cp_strbuf d;
        size_t i;

        cp_strbuf_init(&d);
        json_array_foreach(doms, i, e) {
                if (i)
                        cp_strbuf_adds(&d, ", ");
                cp_strbuf_adds(&d, json_string_value(e));
        }
        pg = json_object_get(route, "peer_groups");
        json_object_set(m, "name", json_object_get(route, "network_id"));
        json_object_set(m, "network_range", json_object_get(route, "network"));
        json_object_set_new(m, "domains", json_string(d.buf));
        json_object_set(m, "peer_id", json_object_get(route, "peer"));
        json_object_set_new(m, "peer_groups", pg ? json_copy(pg) : json_null());
        char *s = json_dumps(m, JSON_COMPACT);
        json_decref(m);
        cp_strbuf_release(&d);
        return s;
}

/* ---- the request ------------------------------------------------------------------------------ */

typedef struct route_req {
        const char *description, *network_id, *peer, *network;
        bool enabled, masquerade, keep_route, skip_auto_apply;
        bool has_peer, has_peer_groups;
        int64_t metric;
        json_t *domains;                        /* borrowed; NULL when absent */
        cp_strbuf peer_groups, groups, acg;     /* PostgreSQL array literals */
        size_t n_peer_groups, n_groups, n_acg;
        /* Derived by check_destination(). */
        int type;
        char prefix[64];                        /* the placeholder for a domain route */
        cp_strbuf domains_pg;                   /* punycode, an array literal */
        cp_strbuf domains_key;                  /* punycode joined by ", " */
        cp_strbuf domains_text;                 /* Unicode joined by ", " (for messages) */
} route_req;

static void route_req_init(route_req *q) {
        *q = (route_req) { .description = "", .network_id = "" };
        cp_strbuf_init(&q->peer_groups);
        cp_strbuf_init(&q->groups);
        cp_strbuf_init(&q->acg);
        cp_strbuf_init(&q->domains_pg);
        cp_strbuf_init(&q->domains_key);
        cp_strbuf_init(&q->domains_text);
        cp_strbuf_adds(&q->peer_groups, "{}");
        cp_strbuf_adds(&q->groups, "{}");
        cp_strbuf_adds(&q->acg, "{}");
        cp_strbuf_adds(&q->domains_pg, "{}");
}

static void route_req_release(route_req *q) {
        cp_strbuf_release(&q->peer_groups);
        cp_strbuf_release(&q->groups);
        cp_strbuf_release(&q->acg);
        cp_strbuf_release(&q->domains_pg);
        cp_strbuf_release(&q->domains_key);
        cp_strbuf_release(&q->domains_text);
}

/* Reads every field first: a value of the wrong type is 400 before any
 * other check, as with NetBird's JSON decoder. Absent fields are Go's
 * zero values. */
static int parse_route(api_ctx *c, route_req *q) {
        json_t *body = api_body(c);
        cp_strbuf scratch;
        int r, rp, rpg, rd;

        if (!body)
                return API_FAIL;
        cp_strbuf_init(&scratch);
        if (api_field_str(c, body, "description", &q->description) < 0 ||
            api_field_str(c, body, "network_id", &q->network_id) < 0 ||
            api_field_bool(c, body, "enabled", &q->enabled) < 0 ||
            (rp = api_field_str(c, body, "peer", &q->peer)) < 0 ||
            (rpg = api_field_strarr(c, body, "peer_groups", &q->peer_groups, &q->n_peer_groups)) < 0 ||
            api_field_str(c, body, "network", &q->network) < 0 ||
            (rd = api_field_strarr(c, body, "domains", &scratch, NULL)) < 0 ||
            api_field_int(c, body, "metric", INT64_MIN, INT64_MAX, &q->metric) < 0 ||
            api_field_bool(c, body, "masquerade", &q->masquerade) < 0 ||
            api_field_strarr(c, body, "groups", &q->groups, &q->n_groups) < 0 ||
            api_field_bool(c, body, "keep_route", &q->keep_route) < 0 ||
            api_field_strarr(c, body, "access_control_groups", &q->acg, &q->n_acg) < 0 ||
            api_field_bool(c, body, "skip_auto_apply", &q->skip_auto_apply) < 0)
                r = API_FAIL;
        else {
                q->has_peer = rp == 1;
                q->has_peer_groups = rpg == 1;
                q->domains = rd == 1 ? json_object_get(body, "domains") : NULL;
                if (!q->peer)
                        q->peer = "";
                r = 0;
        }
        cp_strbuf_release(&scratch);
        return r;
}

/* domains: 1 to 32, each converted to punycode and in NetBird's syntax. */
static int check_domains(api_ctx *c, route_req *q) {
        size_t n = json_array_size(q->domains), i;
        cp_strbuf ascii, why;
        json_t *e;
        int r = 0;

        if (n == 0)
                return api_error(c, 422, "invalid domains: domains list is empty");
        if (n > MAX_DOMAINS)
                return api_error(c, 422, "invalid domains: domains list exceeds maximum allowed domains: %d", MAX_DOMAINS);
        cp_strbuf_init(&ascii);
        cp_strbuf_init(&why);
        api_pgarray_begin(&q->domains_pg);
        json_array_foreach(q->domains, i, e) {
                const char *d = json_string_value(e);
                if (api_domain_to_ascii(d, &ascii, &why) < 0) {
                        r = api_error(c, 422, "invalid domains: convert domain to punycode: %s: %s", d, why.buf);
                        break;
                }
                if (!api_domain_valid(ascii.buf)) {
                        r = api_error(c, 422, "invalid domains: invalid domain format: %s", d);
                        break;
                }
                api_pgarray_add(&q->domains_pg, ascii.buf);
                if (i) {
                        cp_strbuf_adds(&q->domains_key, ", ");
                        cp_strbuf_adds(&q->domains_text, ", ");
                }
                cp_strbuf_adds(&q->domains_key, ascii.buf);
                domain_to_unicode(ascii.buf, &q->domains_text);
        }
        api_pgarray_end(&q->domains_pg);
        cp_strbuf_release(&ascii);
        cp_strbuf_release(&why);
        q->type = NET_DOMAIN;
        (void) snprintf(q->prefix, sizeof q->prefix, "%s", DOMAIN_PLACEHOLDER);
        return r;
}

/* Exactly one of network and domains; the network masked to its prefix. */
static int check_destination(api_ctx *c, route_req *q) {
        prefix p;

        if (q->domains)
                return check_domains(c, q);
        if (prefix_parse(q->network, &p) < 0)
                return api_error(c, 422, "invalid network %s", q->network);
        q->type = p.v6 ? NET_IPV6 : NET_IPV4;
        prefix_format(&p, q->prefix);
        return 0;
}

/* NetBird's checks, in its order (the handler's, then the account
 * manager's), up to the groups. */
static int check_route(api_ctx *c, route_req *q) {
        size_t id_len = api_utf8_count(q->network_id);
        int r;

        if (q->network && q->domains)
                return api_error(c, 422, "only one of 'network' or 'domains' should be provided");
        if (!q->network && !q->domains)
                return api_error(c, 422, "either 'network' or 'domains' should be provided");
        if (!q->has_peer && !q->has_peer_groups)
                return api_error(c, 422, "either 'peer' or 'peer_groups' should be provided");
        if (q->has_peer && q->has_peer_groups)
                return api_error(c, 422, "only one of 'peer' or 'peer_groups' should be provided");
        if (id_len == 0 || id_len > MAX_NET_ID_CHARS)
                return api_error(c, 422, "identifier should be between 1 and %d characters", MAX_NET_ID_CHARS);
        r = check_destination(c, q);
        if (r < 0)
                return r;
        if (q->metric < MIN_METRIC || q->metric > MAX_METRIC)
                return api_error(c, 422, "metric should be between %d and %d", MIN_METRIC, MAX_METRIC);
        if (q->n_peer_groups > 0 && (r = api_check_groups(c, q->peer_groups.buf, q->n_peer_groups)) < 0)
                return r;
        if (q->n_acg > 0 && (r = api_check_groups(c, q->acg.buf, q->n_acg)) < 0)
                return r;
        return api_check_groups(c, q->groups.buf, q->n_groups);
}

/* The routing peer must exist; no route of the same network (or domain
 * list) may already be served by the same peers. NetBird means to refuse
 * a second route on the same single peer too, but compares that peer with
 * route ids by a slip; here the peer itself counts (docs/api.md). */
static int check_peers(api_ctx *c, const char *id, route_req *q) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char what[320];
        int r;

        if (*q->peer) {
                const char *p[2] = { c->account_id, q->peer };
                r = api_sql(c, SQL_PEER_EXISTS, 2, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) == 0)
                        return api_error(c, 422, "peer with ID %s not found", q->peer);
                rows = cp_store_rows_free(rows);
        }
        const char *p[6] = { c->account_id, id, q->domains_key.buf, q->prefix, q->peer, q->peer_groups.buf };
        r = api_sql(c, SQL_CONFLICT, 6, p, &rows);
        if (r < 0 || cp_store_rows_count(rows) == 0)
                return r;
        if (q->type == NET_DOMAIN)
                (void) snprintf(what, sizeof what, "domains [%s]", q->domains_text.buf);
        else
                (void) snprintf(what, sizeof what, "prefix %s", q->prefix);
        const char *kind = cp_store_rows_get(rows, 0, 0), *a = cp_store_rows_get(rows, 0, 1);
        if (strcmp(kind, "peer") == 0)
                return api_error(c, 409, "failed to add route with %s - peer %s already has this route", what, a);
        if (strcmp(kind, "group") == 0)
                return api_error(c, 409, "failed to add route with %s - peer group %s already has this route", what, a);
        return api_error(c, 409, "failed to add route with %s - peer %s from the group %s already has this route", what,
                     a, cp_store_rows_get(rows, 0, 2));
}

static int write_route(api_ctx *c, const char *sql, const char *id, const route_req *q) {
        char type[8], metric[24];

        (void) snprintf(type, sizeof type, "%d", q->type);
        (void) snprintf(metric, sizeof metric, "%" PRId64, q->metric);
        const char *p[16] = {
                id, c->account_id, q->type == NET_DOMAIN ? NULL : q->prefix, q->domains_pg.buf,
                q->keep_route ? "t" : "f", q->network_id, q->description, q->peer, q->peer_groups.buf, type,
                q->masquerade ? "t" : "f", metric, q->enabled ? "t" : "f", q->groups.buf, q->acg.buf,
                q->skip_auto_apply ? "t" : "f",
        };
        return api_sql(c, sql, 16, p, NULL);
}

/* After a write: the event with the stored route's meta, the serial bump
 * and the route as the reply. */
static int finish_write(api_ctx *c, const char *id, int activity) {
        json_t *route = NULL;
        int r = load_route(c, id, &route);

        if (r < 0)
                return r;
        if (!route)
                return api_internal(c, "route vanished", NULL);
        char *meta = route_meta(route);
        r = api_event(c, activity, id, meta);
        free(meta);
        if (r == 0) {
                api_changed(c);
                r = api_reply_json(c, 200, route);
        }
        json_decref(route);
        return r;
}

/* ---- handlers ---------------------------------------------------------------------------------- */

static int list_routes(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        json_t *all, *e;
        size_t i;
        int r = api_sql(c, SQL_LIST, 1, p, &rows);

        if (r < 0)
                return r;
        all = json_loads(cp_store_rows_get(rows, 0, 0), 0, NULL);
        if (!all)
                return api_internal(c, "routes json", NULL);
        json_array_foreach(all, i, e)
                finish_route(e);
        r = api_reply_json(c, 200, all);
        json_decref(all);
        return r;
}

static int get_route(api_ctx *c) {
        json_t *route;
        int r = load_route(c, c->param[0], &route);

        if (r < 0)
                return r;
        if (!route)
                return api_error(c, 404, "route: %s not found", c->param[0]);
        r = api_reply_json(c, 200, route);
        json_decref(route);
        return r;
}

/* Parse, check, write, event, reply: the same for POST and PUT. */
static int save_route(api_ctx *c, const char *sql, const char *id, int activity) {
        route_req q;
        int r;

        route_req_init(&q);
        r = parse_route(c, &q);
        if (r == 0)
                r = check_route(c, &q);
        if (r == 0)
                r = check_peers(c, id, &q);
        if (r == 0)
                r = write_route(c, sql, id, &q);
        if (r == 0)
                r = finish_write(c, id, activity);
        route_req_release(&q);
        return r;
}

static int create_route(api_ctx *c) {
        char id[CP_ID_LEN + 1];

        cp_id_new(id);
        return save_route(c, SQL_INSERT, id, API_ACT_ROUTE_CREATED);
}

/* PUT replaces the whole route: what the request leaves out takes Go's
 * zero value, as in NetBird. */
static int update_route(api_ctx *c) {
        const char *id = c->param[0];
        json_t *old;
        int r;

        r = load_route(c, id, &old);
        if (r < 0)
                return r;
        if (!old)
                return api_error(c, 404, "route: %s not found", id);
        json_decref(old);
        return save_route(c, SQL_UPDATE, id, API_ACT_ROUTE_UPDATED);
}

static int delete_route(api_ctx *c) {
        const char *id = c->param[0];
        const char *p[2] = { c->account_id, id };
        json_t *route;
        int r;

        r = load_route(c, id, &route);
        if (r < 0)
                return r;
        if (!route)
                return api_error(c, 404, "failed to delete route %s: route: %s not found", id, id);
        char *meta = route_meta(route);
        json_decref(route);
        r = api_sql(c, SQL_DELETE, 2, p, NULL);
        if (r == 0)
                r = api_event(c, API_ACT_ROUTE_REMOVED, id, meta);
        free(meta);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_routes_routes[] = {
        { "GET", "/api/routes", API_MOD_ROUTES, API_READ, list_routes },
        { "POST", "/api/routes", API_MOD_ROUTES, API_CREATE, create_route },
        { "GET", "/api/routes/{routeId}", API_MOD_ROUTES, API_READ, get_route },
        { "PUT", "/api/routes/{routeId}", API_MOD_ROUTES, API_UPDATE, update_route },
        { "DELETE", "/api/routes/{routeId}", API_MOD_ROUTES, API_DELETE, delete_route },
        { NULL },
};
