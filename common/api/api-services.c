/*
 * /api/reverse-proxies/services: NetBird's reverse-proxy services (openapi
 * Service, ServiceRequest). List, get, create, update, delete.
 *
 * Stored (migration 0008): the scalar fields in columns; targets, auth and
 * access restrictions as JSON in the REST shapes, normalised here, with
 * every secret (password, PIN, header value) replaced by its argon2id hash
 * in NetBird's PHC form. Responses never carry a secret: the auth object
 * goes out with only the enabled flags, header names and distribution
 * groups, as NetBird's ToAPIResponse writes it.
 *
 * Validation follows NetBird's Service.Validate and the service manager
 * (texts and statuses): 422 for bad input, 412 when no proxy cluster
 * serves the domain, 409 for a taken domain or port, 403 for a
 * terminated service. Every write that changes what proxies serve appends
 * to the mapping change log (cp_store_tx_proxy_change) in the request's
 * transaction, with the rules of docs/proxy.md: new -> CREATED; domain or
 * cluster changed -> REMOVED (old) + CREATED (new); enabled -> disabled
 * REMOVED; disabled -> enabled CREATED; anything else MODIFIED; delete
 * REMOVED (only for an enabled service). The dispatcher calls the
 * proxy_announce hook after commit with the highest seq written.
 */
#include "api-activity.h"
#include "api-int.h"
#include "api-rproxy.h"
#include "cp/proxyauth.h"
#include "cp/store-services.h"

#include <arpa/inet.h>
#include <ctype.h>

/* ---- Go durations (time.ParseDuration / Duration.String) ------------------------------- */

/* Parses a Go duration into ns; -1 when it is not one. */
static int go_duration_parse(const char *s, int64_t *ret) {
        static const struct {
                const char *unit;
                int64_t ns;
        } units[] = { { "ns", 1 },           { "us", 1000 },         { "\xc2\xb5s", 1000 },
                      { "\xce\xbcs", 1000 }, { "ms", 1000000 },      { "s", 1000000000 },
                      { "m", 60000000000LL }, { "h", 3600000000000LL } };
        bool neg = false;
        double total = 0;

        if (*s == '-' || *s == '+')
                neg = *s++ == '-';
        if (strcmp(s, "0") == 0) {
                *ret = 0;
                return 0;
        }
        if (!*s)
                return -1;
        while (*s) {
                const char *start = s;
                double v = 0, frac = 0, scale = 1;
                while (isdigit((unsigned char) *s))
                        v = v * 10 + (*s++ - '0');
                bool digits = s > start;
                if (*s == '.') {
                        s++;
                        const char *fs = s;
                        while (isdigit((unsigned char) *s)) {
                                scale /= 10;
                                frac += (*s++ - '0') * scale;
                        }
                        digits = digits || s > fs;
                }
                if (!digits)
                        return -1;
                size_t best = 0;
                int64_t mul = 0;
                for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
                        size_t n = strlen(units[i].unit);
                        if (n > best && strncmp(s, units[i].unit, n) == 0) {
                                best = n;
                                mul = units[i].ns;
                        }
                }
                if (!best)
                        return -1;
                s += best;
                total += (v + frac) * (double) mul;
                if (total > 9.2e18)
                        return -1;
        }
        *ret = (int64_t) (neg ? -total : total);
        return 0;
}

/* Go's Duration.String for a non-negative duration. */
static void go_duration_format(int64_t ns, char out[48]) {
        char frac[16] = "";
        if (ns == 0) {
                (void) snprintf(out, 48, "0s");
                return;
        }
        if (ns < 1000000000) {
                /* ns, µs or ms with a fraction */
                const char *unit = "ns";
                int64_t div = 1;
                if (ns >= 1000000) {
                        unit = "ms";
                        div = 1000000;
                } else if (ns >= 1000) {
                        unit = "\xc2\xb5s";
                        div = 1000;
                }
                int64_t whole = ns / div, rem = ns % div;
                if (rem) {
                        int w = div == 1000000 ? 6 : 3;
                        (void) snprintf(frac, sizeof frac, ".%0*" PRId64, w, rem);
                        for (size_t n = strlen(frac); n > 1 && frac[n - 1] == '0'; n--)
                                frac[n - 1] = '\0';
                }
                (void) snprintf(out, 48, "%" PRId64 "%s%s", whole, frac, unit);
                return;
        }
        int64_t h = ns / 3600000000000LL, m = ns / 60000000000LL % 60, s = ns / 1000000000 % 60,
                rem = ns % 1000000000;
        if (rem) {
                (void) snprintf(frac, sizeof frac, ".%09" PRId64, rem);
                for (size_t n = strlen(frac); n > 1 && frac[n - 1] == '0'; n--)
                        frac[n - 1] = '\0';
        }
        if (h)
                (void) snprintf(out, 48, "%" PRId64 "h%" PRId64 "m%" PRId64 "%ss", h, m, s, frac);
        else if (m)
                (void) snprintf(out, 48, "%" PRId64 "m%" PRId64 "%ss", m, s, frac);
        else
                (void) snprintf(out, 48, "%" PRId64 "%ss", s, frac);
}

/* ---- HTTP header names (Go's http.CanonicalHeaderKey and the lists) ------------------------------ */

static bool header_token(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char) *s) && !strchr("!#$%&'*+-.^_`|~", *s))
                        return false;
        return true;
}

static void header_canonical(const char *in, char *out, size_t cap) {
        bool upper = true;
        size_t i = 0;
        for (; in[i] && i + 1 < cap; i++) {
                char ch = in[i];
                out[i] = upper ? (char) toupper((unsigned char) ch) : (char) tolower((unsigned char) ch);
                upper = ch == '-';
        }
        out[i] = '\0';
}

static bool in_list(const char *s, const char *const *list) {
        for (; *list; list++)
                if (strcmp(s, *list) == 0)
                        return true;
        return false;
}

static const char *const hop_by_hop[] = { "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
                                          "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
                                          NULL };
static const char *const reserved_headers[] = { "Content-Length",   "Content-Type",     "Cookie",
                                                "Forwarded",        "X-Forwarded-For",  "X-Forwarded-Host",
                                                "X-Forwarded-Port", "X-Forwarded-Proto", "X-Real-Ip",
                                                NULL };

/* ---- the request, normalised ------------------------------------------------------------------------ */

typedef struct svc_in {
        const char *name;
        const char *domain;
        const char *mode;               /* "http" when absent */
        int64_t listen_port;
        bool enabled, pass_host_header, rewrite_redirects, private_;
        json_t *targets;                /* owned: array of normalised targets */
        json_t *auth;                   /* owned: object, secrets in plain text until hashed */
        json_t *restrictions;           /* owned: object */
        cp_strbuf access_groups;        /* PostgreSQL array literal */
        size_t n_access_groups;
        json_t *access_groups_json;     /* borrowed from the body, or NULL */
} svc_in;

static void svc_in_release(svc_in *s) {
        if (s->targets)
                json_decref(s->targets);
        if (s->auth) {
                /* wipe plain secrets before freeing */
                json_t *pw = json_object_get(json_object_get(s->auth, "password_auth"), "password");
                json_t *pin = json_object_get(json_object_get(s->auth, "pin_auth"), "pin");
                if (json_is_string(pw))
                        explicit_bzero((char *) json_string_value(pw), json_string_length(pw));
                if (json_is_string(pin))
                        explicit_bzero((char *) json_string_value(pin), json_string_length(pin));
                json_decref(s->auth);
        }
        if (s->restrictions)
                json_decref(s->restrictions);
        cp_strbuf_release(&s->access_groups);
}

static int bad(api_ctx *c, const char *fmt, ...) _printf_(2, 3);
static int bad(api_ctx *c, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        (void) vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        return api_error(c, 422, "%s", msg);
}

/* A JSON member of the wanted type: 1 present, 0 absent/null, API_FAIL wrong type. */
static int get_typed(api_ctx *c, json_t *obj, const char *key, json_type t, json_t **ret) {
        json_t *v = json_object_get(obj, key);
        if (!v || json_is_null(v))
                return 0;
        if (t == JSON_TRUE ? !json_is_boolean(v) : json_typeof(v) != t)
                return api_bad_json(c);
        *ret = v;
        return 1;
}

static int copy_str(api_ctx *c, json_t *from, const char *key, json_t *to, bool always) {
        json_t *v = NULL;
        int r = get_typed(c, from, key, JSON_STRING, &v);
        if (r < 0)
                return r;
        if (r || always)
                json_object_set_new(to, key, json_string(r ? json_string_value(v) : ""));
        return 0;
}

static int copy_bool(api_ctx *c, json_t *from, const char *key, json_t *to, bool always) {
        json_t *v = NULL;
        int r = get_typed(c, from, key, JSON_TRUE, &v);
        if (r < 0)
                return r;
        if (r || always)
                json_object_set_new(to, key, json_boolean(r && json_is_true(v)));
        return 0;
}

static int copy_strarr(api_ctx *c, json_t *from, const char *key, json_t *to) {
        json_t *v = NULL, *e;
        size_t i;
        int r = get_typed(c, from, key, JSON_ARRAY, &v);
        if (r <= 0)
                return r;
        json_array_foreach(v, i, e) if (!json_is_string(e)) return api_bad_json(c);
        json_object_set(to, key, v);
        return 0;
}

/* validateCustomHeaders for one header: fills msg and returns true when
 * it is refused. seen maps canonical names to the keys already accepted. */
static bool custom_header_error(const char *key, const char *val, const char *canon, json_t *seen, char *msg,
                                size_t cap) {
        const char *prev = json_string_value(json_object_get(seen, canon));

        if (!header_token(key))
                (void) snprintf(msg, cap, "custom header key \"%s\" is not a valid HTTP header name", key);
        else if (strlen(key) > 128)
                (void) snprintf(msg, cap, "custom header key \"%s\" exceeds maximum length of 128", key);
        else if (strlen(val) > 4096)
                (void) snprintf(msg, cap, "custom header \"%s\" value exceeds maximum length of 4096", key);
        else if (strpbrk(val, "\r\n"))
                (void) snprintf(msg, cap, "custom header \"%s\" contains invalid characters", key);
        else if (prev)
                (void) snprintf(msg, cap, "custom header keys \"%s\" and \"%s\" collide (both canonicalize to \"%s\")",
                                prev, key, canon);
        else if (in_list(canon, hop_by_hop))
                (void) snprintf(msg, cap, "custom header \"%s\" is a hop-by-hop header and cannot be set", key);
        else if (in_list(canon, reserved_headers))
                (void) snprintf(msg, cap, "custom header \"%s\" is managed by the proxy and cannot be overridden", key);
        else if (strcmp(canon, "Host") == 0)
                (void) snprintf(msg, cap, "use pass_host_header instead of setting Host as a custom header");
        else
                return false;
        return true;
}

static int norm_options(api_ctx *c, int idx, json_t *in, json_t *out, bool *proxy_protocol) {
        json_t *v = NULL;
        int r;
        int64_t ns;
        char dur[48];

        if ((r = copy_bool(c, in, "skip_tls_verify", out, false)) < 0 ||
            (r = copy_bool(c, in, "direct_upstream", out, false)) < 0 ||
            (r = copy_bool(c, in, "proxy_protocol", out, false)) < 0)
                return r;
        *proxy_protocol = json_is_true(json_object_get(out, "proxy_protocol"));
        static const char *const durs[] = { "request_timeout", "session_idle_timeout" };
        for (int i = 0; i < 2; i++) {
                r = get_typed(c, in, durs[i], JSON_STRING, &v);
                if (r < 0)
                        return r;
                if (!r)
                        continue;
                if (go_duration_parse(json_string_value(v), &ns) < 0)
                        return bad(c, "target %d: parse %s \"%s\": time: invalid duration \"%s\"", idx, durs[i],
                                   json_string_value(v), json_string_value(v));
                if (ns < 0)
                        return bad(c, "target %d: %s must be positive", idx, durs[i]);
                if (ns > 0) {
                        go_duration_format(ns, dur);
                        json_object_set_new(out, durs[i], json_string(dur));
                }
        }
        r = get_typed(c, in, "path_rewrite", JSON_STRING, &v);
        if (r < 0)
                return r;
        if (r && *json_string_value(v)) {
                if (strcmp(json_string_value(v), "preserve") != 0)
                        return bad(c, "target %d: unknown path_rewrite mode \"%s\"", idx, json_string_value(v));
                json_object_set(out, "path_rewrite", v);
        }
        r = get_typed(c, in, "custom_headers", JSON_OBJECT, &v);
        if (r < 0)
                return r;
        if (r && json_object_size(v) > 0) {
                const char *key;
                json_t *val;
                char canon[160];
                json_t *seen = json_object();
                if (json_object_size(v) > 16) {
                        json_decref(seen);
                        return bad(c, "target %d: custom_headers count %zu exceeds maximum of 16", idx,
                                   json_object_size(v));
                }
                json_object_foreach(v, key, val) {
                        char msg[400];
                        if (!json_is_string(val)) {
                                json_decref(seen);
                                return api_bad_json(c);
                        }
                        header_canonical(key, canon, sizeof canon);
                        if (custom_header_error(key, json_string_value(val), canon, seen, msg, sizeof msg)) {
                                json_decref(seen);
                                return bad(c, "target %d: %s", idx, msg);
                        }
                        json_object_set_new(seen, canon, json_string(key));
                }
                json_decref(seen);
                json_object_set(out, "custom_headers", v);
        }
        return 0;
}

static int norm_targets(api_ctx *c, json_t *body, svc_in *s) {
        json_t *arr = NULL, *t;
        size_t i;
        int r = get_typed(c, body, "targets", JSON_ARRAY, &arr);

        s->targets = json_array();
        if (r <= 0)
                return r;
        json_array_foreach(arr, i, t) {
                json_t *o = json_object(), *opts = json_object(), *in_opts = NULL, *port = NULL;
                bool pp = false;
                json_array_append_new(s->targets, o);
                json_object_set_new(o, "options", opts);
                if (!json_is_object(t))
                        return api_bad_json(c);
                if ((r = copy_str(c, t, "target_id", o, true)) < 0 || (r = copy_str(c, t, "target_type", o, true)) < 0 ||
                    (r = copy_str(c, t, "path", o, false)) < 0 || (r = copy_str(c, t, "protocol", o, true)) < 0 ||
                    (r = copy_str(c, t, "host", o, true)) < 0 || (r = copy_bool(c, t, "enabled", o, true)) < 0)
                        return r;
                r = get_typed(c, t, "port", JSON_INTEGER, &port);
                if (r < 0)
                        return r;
                int64_t p = r ? json_integer_value(port) : 0;
                if (p < 0 || p > 65535)
                        return bad(c, "target %zu: port %" PRId64 " out of range", i, p);
                json_object_set_new(o, "port", json_integer(p));
                r = get_typed(c, t, "options", JSON_OBJECT, &in_opts);
                if (r < 0)
                        return r;
                if (r && (r = norm_options(c, (int) i, in_opts, opts, &pp)) < 0)
                        return r;
        }
        return 0;
}

static int norm_auth(api_ctx *c, json_t *body, svc_in *s) {
        json_t *a = NULL, *v = NULL;
        int r = get_typed(c, body, "auth", JSON_OBJECT, &a);

        s->auth = json_object();
        if (r <= 0)
                return r;
        static const struct {
                const char *obj, *secret;
        } secrets[] = { { "password_auth", "password" }, { "pin_auth", "pin" } };
        for (int i = 0; i < 2; i++) {
                r = get_typed(c, a, secrets[i].obj, JSON_OBJECT, &v);
                if (r < 0)
                        return r;
                if (!r)
                        continue;
                json_t *o = json_object();
                json_object_set_new(s->auth, secrets[i].obj, o);
                if ((r = copy_bool(c, v, "enabled", o, true)) < 0 || (r = copy_str(c, v, secrets[i].secret, o, true)) < 0)
                        return r;
        }
        r = get_typed(c, a, "bearer_auth", JSON_OBJECT, &v);
        if (r < 0)
                return r;
        if (r) {
                json_t *o = json_object();
                json_object_set_new(s->auth, "bearer_auth", o);
                if ((r = copy_bool(c, v, "enabled", o, true)) < 0 || (r = copy_strarr(c, v, "distribution_groups", o)) < 0)
                        return r;
        }
        r = get_typed(c, a, "header_auths", JSON_ARRAY, &v);
        if (r < 0)
                return r;
        if (r) {
                json_t *arr = json_array(), *h;
                size_t i;
                json_object_set_new(s->auth, "header_auths", arr);
                json_array_foreach(v, i, h) {
                        json_t *o = json_object();
                        json_array_append_new(arr, o);
                        if (!json_is_object(h))
                                return api_bad_json(c);
                        if ((r = copy_bool(c, h, "enabled", o, true)) < 0 || (r = copy_str(c, h, "header", o, true)) < 0 ||
                            (r = copy_str(c, h, "value", o, true)) < 0)
                                return r;
                }
        }
        return 0;
}

/* netip.ParsePrefix and the host-bits check. */
static int check_cidr(api_ctx *c, const char *field, size_t i, const char *raw) {
        char addr[64], masked[80];
        const char *slash = strchr(raw, '/');
        uint8_t b[16];
        int64_t bits;
        if (!slash || (size_t) (slash - raw) >= sizeof addr)
                return bad(c, "%s[%zu]: netip.ParsePrefix(\"%s\"): no '/'", field, i, raw);
        memcpy(addr, raw, (size_t) (slash - raw));
        addr[slash - raw] = '\0';
        int fam = strchr(addr, ':') ? AF_INET6 : AF_INET;
        int maxbits = fam == AF_INET6 ? 128 : 32;
        if (inet_pton(fam, addr, b) != 1)
                return bad(c, "%s[%zu]: netip.ParsePrefix(\"%s\"): ParseAddr(\"%s\"): invalid IP address", field, i,
                           raw, addr);
        if (cp_parse_int64(slash + 1, 0, maxbits, &bits) < 0)
                return bad(c, "%s[%zu]: netip.ParsePrefix(\"%s\"): bad bits after slash: \"%s\"", field, i, raw,
                           slash + 1);
        bool host = false;
        for (int k = (int) bits; k < maxbits; k++)
                if (b[k / 8] & (0x80 >> (k % 8))) {
                        host = true;
                        b[k / 8] &= (uint8_t) ~(0x80 >> (k % 8));
                }
        if (host) {
                char ma[64];
                (void) inet_ntop(fam, b, ma, sizeof ma);
                (void) snprintf(masked, sizeof masked, "%s/%" PRId64, ma, bits);
                return bad(c, "%s[%zu]: \"%s\" has host bits set, use %s instead", field, i, raw, masked);
        }
        return 0;
}

static int norm_restrictions(api_ctx *c, json_t *body, svc_in *s) {
        json_t *a = NULL, *v = NULL;
        int r = get_typed(c, body, "access_restrictions", JSON_OBJECT, &a);

        s->restrictions = json_object();
        if (r <= 0)
                return r;
        static const char *const lists[] = { "allowed_cidrs", "blocked_cidrs", "allowed_countries", "blocked_countries" };
        for (int i = 0; i < 4; i++)
                if ((r = copy_strarr(c, a, lists[i], s->restrictions)) < 0)
                        return r;
        r = get_typed(c, a, "crowdsec_mode", JSON_STRING, &v);
        if (r < 0)
                return r;
        if (r) {
                const char *m = json_string_value(v);
                if (strcmp(m, "off") != 0 && strcmp(m, "enforce") != 0 && strcmp(m, "observe") != 0)
                        return bad(c, "invalid crowdsec_mode \"%s\"", m);
                json_object_set(s->restrictions, "crowdsec_mode", v);
        }
        /* validateAccessRestrictions */
        for (int i = 0; i < 4; i++) {
                json_t *l = json_object_get(s->restrictions, lists[i]);
                size_t max = i < 2 ? 200 : 50;
                if (json_array_size(l) > max)
                        return bad(c, "%s: exceeds maximum of %zu entries", lists[i], max);
        }
        for (int i = 0; i < 4; i++) {
                json_t *l = json_object_get(s->restrictions, lists[i]), *e;
                size_t k;
                json_array_foreach(l, k, e) {
                        const char *x = json_string_value(e);
                        if (i < 2) {
                                if ((r = check_cidr(c, lists[i], k, x)) < 0)
                                        return r;
                        } else {
                                if (strlen(x) != 2)
                                        return bad(c, "%s[%zu]: \"%s\" must be a 2-letter ISO 3166-1 alpha-2 code",
                                                   lists[i], k, x);
                                char up[3] = { (char) toupper((unsigned char) x[0]), (char) toupper((unsigned char) x[1]), 0 };
                                json_array_set_new(l, k, json_string(up));
                        }
                }
                if (json_array_size(l) == 0)
                        json_object_del(s->restrictions, lists[i]);
        }
        return 0;
}

static bool auth_enabled(json_t *auth) {
        json_t *h;
        size_t i;
        if (json_is_true(json_object_get(json_object_get(auth, "password_auth"), "enabled")) ||
            json_is_true(json_object_get(json_object_get(auth, "pin_auth"), "enabled")) ||
            json_is_true(json_object_get(json_object_get(auth, "bearer_auth"), "enabled")))
                return true;
        json_array_foreach(json_object_get(auth, "header_auths"), i, h) {
                if (json_is_true(json_object_get(h, "enabled")))
                        return true;
        }
        return false;
}

static const char *jstr(json_t *o, const char *k) {
        const char *s = json_string_value(json_object_get(o, k));
        return s ? s : "";
}

/* Service.Validate: the checks that need nothing but the request. */
static int validate(api_ctx *c, svc_in *s) {
        json_t *t, *h;
        size_t i;
        size_t nt = json_array_size(s->targets);

        if (!*s->name)
                return bad(c, "service name is required");
        if (strlen(s->name) > 255)
                return bad(c, "service name exceeds maximum length of 255 characters");
        if (nt == 0)
                return bad(c, "at least one target is required");
        json_array_foreach(json_object_get(s->auth, "header_auths"), i, h) {
                if (!json_is_true(json_object_get(h, "enabled")))
                        continue;
                const char *name = jstr(h, "header");
                char canon[160];
                header_canonical(name, canon, sizeof canon);
                if (!*name)
                        return bad(c, "header_auths[%zu]: header name is required", i);
                if (!header_token(name))
                        return bad(c, "header_auths[%zu]: header name \"%s\" is not a valid HTTP header name", i, name);
                if (in_list(canon, hop_by_hop))
                        return bad(c, "header_auths[%zu]: header \"%s\" is a hop-by-hop header and cannot be used for auth", i, name);
                if (in_list(canon, reserved_headers))
                        return bad(c, "header_auths[%zu]: header \"%s\" is managed by the proxy and cannot be used for auth", i, name);
                if (strcmp(canon, "Host") == 0)
                        return bad(c, "header_auths[%zu]: Host header cannot be used for auth", i);
                if (strlen(jstr(h, "value")) > 4096)
                        return bad(c, "header_auths[%zu]: value exceeds maximum length of 4096", i);
        }
        if (s->private_) {
                if (strcmp(s->mode, "http") != 0)
                        return bad(c, "private services only support HTTP mode, got \"%s\"", s->mode);
                if (s->n_access_groups == 0)
                        return bad(c, "private services require at least one access group");
                if (json_is_true(json_object_get(json_object_get(s->auth, "bearer_auth"), "enabled")))
                        return bad(c, "private services cannot enable bearer auth (sso): netbird-only access and sso are mutually exclusive");
        }
        bool l4 = strcmp(s->mode, "http") != 0;
        if (strcmp(s->mode, "http") == 0) {
                if (!*s->domain)
                        return bad(c, "service domain is required");
                if (s->listen_port != 0)
                        return bad(c, "listen_port is not supported for HTTP services");
        } else if (strcmp(s->mode, "tcp") == 0 || strcmp(s->mode, "udp") == 0) {
                if (!*s->domain)
                        return bad(c, "domain is required for TCP/UDP services (used for cluster derivation)");
                if (auth_enabled(s->auth))
                        return bad(c, "auth is not supported for TCP/UDP services");
                if (nt != 1)
                        return bad(c, "TCP/UDP services must have exactly one target");
                if (strcmp(s->mode, "udp") == 0 &&
                    json_is_true(json_object_get(json_object_get(json_array_get(s->targets, 0), "options"), "proxy_protocol")))
                        return bad(c, "proxy_protocol is not supported for UDP services");
        } else if (strcmp(s->mode, "tls") == 0) {
                if (!*s->domain)
                        return bad(c, "domain is required for TLS services (used for SNI matching)");
                if (auth_enabled(s->auth))
                        return bad(c, "auth is not supported for TLS services");
                if (s->listen_port == 0)
                        return bad(c, "listen_port is required for TLS services");
                if (nt != 1)
                        return bad(c, "TLS services must have exactly one target");
        } else
                return bad(c, "unsupported mode \"%s\"", s->mode);

        json_array_foreach(s->targets, i, t) {
                const char *type = jstr(t, "target_type"), *host = jstr(t, "host");
                json_t *o = json_object_get(t, "options");
                bool direct = json_is_true(json_object_get(o, "direct_upstream"));
                bool hostish = strcmp(type, "peer") == 0 || strcmp(type, "host") == 0 || strcmp(type, "domain") == 0;
                if (hostish && direct && *host) {
                        if (strpbrk(host, " \t/"))
                                return bad(c, "target %zu: host \"%s\" contains invalid characters", l4 ? 0 : i, host);
                        const char *colon = strrchr(host, ':');
                        bool has_port = colon && (host[0] == '[' ? colon > strchr(host, ']') : strchr(host, ':') == colon);
                        if (has_port)
                                return bad(c, "target %zu: host \"%s\" must not include a port (set target.port instead)",
                                           l4 ? 0 : i, host);
                }
                if (l4) {
                        json_object_set_new(t, "enabled", json_true());
                        if (!*jstr(t, "target_id"))
                                return bad(c, "target_id is required for L4 services");
                        if (json_integer_value(json_object_get(t, "port")) == 0)
                                return bad(c, "target port is required for L4 services");
                        if (strcmp(type, "subnet") == 0 && !*host)
                                return bad(c, "target host is required for subnet targets");
                        if (!hostish && strcmp(type, "subnet") != 0 && strcmp(type, "cluster") != 0)
                                return bad(c, "invalid target_type \"%s\" for L4 service", type);
                        const char *path = json_string_value(json_object_get(t, "path"));
                        if (path && *path && strcmp(path, "/") != 0)
                                return bad(c, "path is not supported for L4 services");
                        if (json_is_true(json_object_get(o, "skip_tls_verify")))
                                return bad(c, "skip_tls_verify is not supported for L4 services");
                        if (json_object_get(o, "path_rewrite"))
                                return bad(c, "path_rewrite is not supported for L4 services");
                        if (json_object_get(o, "custom_headers"))
                                return bad(c, "custom_headers is not supported for L4 services");
                        continue;
                }
                if (strcmp(type, "subnet") == 0) {
                        if (!*host)
                                return bad(c, "target %zu has empty host but target_type is \"%s\"", i, type);
                } else if (strcmp(type, "cluster") == 0) {
                        if (!*host)
                                return bad(c, "target %zu: has empty host", i);
                        if (!direct)
                                return bad(c, "target %zu: %s has direct upstream disabled", i, host);
                } else if (!hostish)
                        return bad(c, "target %zu has invalid target_type \"%s\"", i, type);
                if (!*jstr(t, "target_id"))
                        return bad(c, "target %zu has empty target_id", i);
                if (json_is_true(json_object_get(o, "proxy_protocol")))
                        return bad(c, "target %zu: proxy_protocol is not supported for HTTP services", i);
        }
        return 0;
}

static int parse_request(api_ctx *c, svc_in *s) {
        json_t *body = api_body(c), *v = NULL;
        int r;

        cp_strbuf_init(&s->access_groups);
        s->name = s->domain = "";
        s->mode = "http";
        if (!body)
                return API_FAIL;
        if ((r = api_field_str(c, body, "name", &s->name)) < 0 || (r = api_field_str(c, body, "domain", &s->domain)) < 0)
                return r;
        r = api_field_str(c, body, "mode", &s->mode);
        if (r < 0)
                return r;
        if (r && !*s->mode)
                s->mode = "http";
        r = get_typed(c, body, "listen_port", JSON_INTEGER, &v);
        if (r < 0)
                return r;
        if (r) {
                s->listen_port = json_integer_value(v);
                if (s->listen_port < 0 || s->listen_port > 65535)
                        return bad(c, "listen_port must be between 0 and 65535");
        }
        if ((r = api_field_bool(c, body, "enabled", &s->enabled)) < 0 ||
            (r = api_field_bool(c, body, "pass_host_header", &s->pass_host_header)) < 0 ||
            (r = api_field_bool(c, body, "rewrite_redirects", &s->rewrite_redirects)) < 0 ||
            (r = api_field_bool(c, body, "private", &s->private_)) < 0)
                return r;
        r = api_field_strarr(c, body, "access_groups", &s->access_groups, &s->n_access_groups);
        if (r < 0)
                return r;
        if (r == 0)
                cp_strbuf_adds(&s->access_groups, "{}");
        if ((r = norm_targets(c, body, s)) < 0 || (r = norm_auth(c, body, s)) < 0 ||
            (r = norm_restrictions(c, body, s)) < 0)
                return r;
        return validate(c, s);
}

/* ---- checks against the account --------------------------------------------------------------------- */

static const char SQL_PEER_EXISTS[] = "SELECT 1 FROM peers WHERE account_id = $1 AND id = $2";
static const char SQL_RESOURCE_TYPE[] = "SELECT type FROM network_resources WHERE account_id = $1 AND id = $2";

/* validateTargetReferences */
static int check_targets(api_ctx *c, svc_in *s) {
        json_t *t;
        size_t i;
        int r;
        json_array_foreach(s->targets, i, t) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *type = jstr(t, "target_type"), *id = jstr(t, "target_id");
                const char *p[] = { c->account_id, id };
                if (strcmp(type, "peer") == 0) {
                        if ((r = api_sql(c, SQL_PEER_EXISTS, 2, p, &rows)) < 0)
                                return r;
                        if (cp_store_rows_count(rows) == 0)
                                return bad(c, "peer target \"%s\" not found in account", id);
                } else if (strcmp(type, "host") == 0 || strcmp(type, "subnet") == 0 || strcmp(type, "domain") == 0) {
                        if ((r = api_sql(c, SQL_RESOURCE_TYPE, 2, p, &rows)) < 0)
                                return r;
                        if (cp_store_rows_count(rows) == 0)
                                return bad(c, "resource target \"%s\" not found in account", id);
                        if (strcmp(cp_store_rows_get(rows, 0, 0), type) != 0)
                                return bad(c, "target \"%s\" has target_type \"%s\" but resource is of type \"%s\"", id,
                                           type, cp_store_rows_get(rows, 0, 0));
                } else if (strcmp(type, "cluster") == 0) {
                        if (!json_is_true(json_object_get(json_object_get(t, "options"), "direct_upstream")))
                                return bad(c, "cluster target %s has direct upstream disabled", jstr(t, "host"));
                } else
                        return bad(c, "unknown target type \"%s\" for target \"%s\"", type, id);
        }
        return 0;
}

/* Groups named by access_groups and bearer distribution_groups must be
 * groups of the account (a difference from NetBird, which stores any id). */
static int check_groups(api_ctx *c, svc_in *s) {
        char badg[256];
        int r;
        if (s->n_access_groups > 0) {
                r = api_find_bad_group(c, s->access_groups.buf, false, badg, sizeof badg, NULL);
                if (r < 0)
                        return r;
                if (r)
                        return bad(c, "access group %s not found", badg);
        }
        json_t *dg = json_object_get(json_object_get(s->auth, "bearer_auth"), "distribution_groups"), *e;
        size_t i;
        if (json_array_size(dg) > 0) {
                cp_strbuf arr;
                cp_strbuf_init(&arr);
                api_pgarray_begin(&arr);
                json_array_foreach(dg, i, e) api_pgarray_add(&arr, json_string_value(e));
                api_pgarray_end(&arr);
                r = api_find_bad_group(c, arr.buf, false, badg, sizeof badg, NULL);
                cp_strbuf_release(&arr);
                if (r < 0)
                        return r;
                if (r)
                        return bad(c, "distribution group %s not found", badg);
        }
        return 0;
}

/* obj.key, a secret in plain text: replaced by its argon2id hash when
 * obj is enabled, by "" when it is not (NetBird keeps a disabled secret as
 * sent; never stored in clear here). The plain text is wiped. -1 when
 * hashing failed. */
static int hash_one(json_t *obj, const char *key) {
        const char *plain = jstr(obj, key);
        char *hashed = NULL;

        if (!*plain)
                return 0;
        if (json_is_true(json_object_get(obj, "enabled")) &&
            cp_proxyauth_argon2id_hash(plain, strlen(plain), &hashed, NULL) < 0)
                return -1;
        explicit_bzero((char *) plain, strlen(plain));
        json_object_set_new(obj, key, json_string(hashed ? hashed : ""));
        free(hashed);
        return 0;
}

/* Hashes every secret that came in plain text (HashSecrets). */
static int hash_secrets(api_ctx *c, json_t *auth) {
        json_t *x;
        size_t i;

        if (hash_one(json_object_get(auth, "password_auth"), "password") < 0 ||
            hash_one(json_object_get(auth, "pin_auth"), "pin") < 0)
                return api_internal(c, "argon2id hashing failed", NULL);
        json_array_foreach(json_object_get(auth, "header_auths"), i, x)
                if (hash_one(x, "value") < 0)
                        return api_internal(c, "argon2id hashing failed", NULL);
        return 0;
}

static int header_values_present(api_ctx *c, json_t *auth) {
        json_t *x;
        size_t i;
        json_array_foreach(json_object_get(auth, "header_auths"), i, x) {
                if (json_is_true(json_object_get(x, "enabled")) && !*jstr(x, "value"))
                        return bad(c, "header_auths[%zu]: value is required", i);
        }
        return 0;
}

/* ---- L4 ports ---------------------------------------------------------------------------------------- */

#define PORT_MIN 10000
#define PORT_MAX 49151

static const char SQL_CLUSTER_PORTS[] =
        "SELECT listen_port FROM services WHERE proxy_cluster = $1 AND listen_port > 0 FOR UPDATE";
static const char SQL_PORT_CONFLICT[] =
        "SELECT name FROM services WHERE proxy_cluster = $1 AND mode = $2 AND listen_port = $3::integer"
        " AND id <> $4 AND ($2 <> 'tls' OR domain = $5) LIMIT 1 FOR UPDATE";

static int assign_port(api_ctx *c, const char *cluster, int64_t *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { cluster };
        int r = api_sql(c, SQL_CLUSTER_PORTS, 1, p, &rows);
        if (r < 0)
                return r;
        int n = cp_store_rows_count(rows);
        for (int attempt = 0; attempt < 100 + (PORT_MAX - PORT_MIN + 1); attempt++) {
                int64_t port = attempt < 100 ? PORT_MIN + (int64_t) cp_random_uniform(PORT_MAX - PORT_MIN + 1)
                                             : PORT_MIN + attempt - 100;
                bool taken = false;
                for (int i = 0; i < n && !taken; i++)
                        taken = atoll(cp_store_rows_get(rows, i, 0)) == port;
                if (!taken) {
                        *ret = port;
                        return 0;
                }
        }
        return api_error(c, 412, "no available ports on cluster %s", cluster);
}

/* ensureL4Port + checkPortConflict. */
static int l4_port(api_ctx *c, svc_in *s, const char *id, const char *cluster, bool update, bool *auto_assigned) {
        if (strcmp(s->mode, "http") == 0)
                return 0;
        bool port_based = strcmp(s->mode, "tcp") == 0 || strcmp(s->mode, "udp") == 0;
        int custom = api_rproxy_capability(c, cluster, "supports_custom_ports");
        if (custom < -1)
                return API_FAIL;
        if (port_based && s->listen_port > 0 && !update && custom != 1)
                return bad(c, "custom ports not supported on cluster %s", cluster);
        if (s->listen_port == 0) {
                int r = assign_port(c, cluster, &s->listen_port);
                if (r < 0)
                        return r;
                *auto_assigned = true;
        }
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char port[16];
        (void) snprintf(port, sizeof port, "%" PRId64, s->listen_port);
        const char *p[] = { cluster, s->mode, port, id, s->domain };
        int r = api_sql(c, SQL_PORT_CONFLICT, 5, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 409, "%s port %" PRId64 " is already in use by service \"%s\" on cluster %s",
                                 s->mode, s->listen_port, cp_store_rows_get(rows, 0, 0), cluster);
        return 0;
}

/* ---- responses ---------------------------------------------------------------------------------------- */

static const char SQL_COLS[] =
        "SELECT s.id, s.name, s.domain, s.proxy_cluster, s.mode, s.listen_port, s.port_auto_assigned, s.enabled,"
        " s.terminated, s.pass_host_header, s.rewrite_redirects, s.private, to_json(s.access_groups)::text,"
        " " CP_STORE_SQL_SERVICE_TARGETS ", s.auth::text, s.restrictions::text, " API_TS_JSON("s.meta_created_at") ","
        " " API_TS_JSON("s.meta_certificate_issued_at") ", s.meta_status, s.source"
        " FROM services s WHERE s.account_id = $1";

static json_t *parse_col(const cp_store_rows *rows, int i, int col, json_t *dflt) {
        const char *v = cp_store_rows_get(rows, i, col);
        json_t *j = v ? json_loads(v, 0, NULL) : NULL;
        if (!j)
                return dflt;
        json_decref(dflt);
        return j;
}

static bool enabled_of(json_t *o) {
        return json_is_true(json_object_get(o, "enabled"));
}

/* Service.ToAPIResponse for row i. */
static json_t *service_json(const cp_store_rows *rows, int i) {
        json_t *o = json_object(), *t, *h;
        size_t k;
        bool terminated = cp_store_rows_bool(rows, i, 8);

        json_object_set_new(o, "id", json_string(cp_store_rows_get(rows, i, 0)));
        json_object_set_new(o, "name", json_string(cp_store_rows_get(rows, i, 1)));
        json_object_set_new(o, "domain", json_string(cp_store_rows_get(rows, i, 2)));
        const char *cluster = cp_store_rows_get(rows, i, 3);
        if (cluster && *cluster)
                json_object_set_new(o, "proxy_cluster", json_string(cluster));
        json_object_set_new(o, "mode", json_string(cp_store_rows_get(rows, i, 4)));
        json_object_set_new(o, "listen_port", json_integer(atoll(cp_store_rows_get(rows, i, 5))));
        json_object_set_new(o, "port_auto_assigned", json_boolean(cp_store_rows_bool(rows, i, 6)));
        json_object_set_new(o, "enabled", json_boolean(cp_store_rows_bool(rows, i, 7) && !terminated));
        json_object_set_new(o, "terminated", json_boolean(terminated));
        json_object_set_new(o, "pass_host_header", json_boolean(cp_store_rows_bool(rows, i, 9)));
        json_object_set_new(o, "rewrite_redirects", json_boolean(cp_store_rows_bool(rows, i, 10)));
        json_object_set_new(o, "private", json_boolean(cp_store_rows_bool(rows, i, 11)));
        json_t *groups = parse_col(rows, i, 12, json_array());
        if (json_array_size(groups) > 0)
                json_object_set_new(o, "access_groups", groups);
        else
                json_decref(groups);

        json_t *targets = parse_col(rows, i, 13, json_array());
        json_array_foreach(targets, k, t) {
                json_t *opts = json_object_get(t, "options");
                if (!json_is_object(opts))
                        json_object_set_new(t, "options", json_object());
                else if (json_is_false(json_object_get(opts, "proxy_protocol")))
                        json_object_del(opts, "proxy_protocol");
                if (json_is_false(json_object_get(opts, "skip_tls_verify")))
                        json_object_del(opts, "skip_tls_verify");
                if (json_is_false(json_object_get(opts, "direct_upstream")))
                        json_object_del(opts, "direct_upstream");
                if (terminated)
                        json_object_set_new(t, "enabled", json_false());
        }
        json_object_set_new(o, "targets", targets);

        /* auth without secrets (ClearSecrets: the fields stay, empty) */
        json_t *stored = parse_col(rows, i, 14, json_object()), *auth = json_object(), *x;
        if ((x = json_object_get(stored, "password_auth")))
                json_object_set_new(auth, "password_auth",
                                    json_pack("{s:b,s:s}", "enabled", enabled_of(x), "password", ""));
        if ((x = json_object_get(stored, "pin_auth")))
                json_object_set_new(auth, "pin_auth", json_pack("{s:b,s:s}", "enabled", enabled_of(x), "pin", ""));
        if ((x = json_object_get(stored, "bearer_auth"))) {
                json_t *dg = json_object_get(x, "distribution_groups");
                json_object_set_new(auth, "bearer_auth",
                                    json_pack("{s:b,s:o}", "enabled", enabled_of(x), "distribution_groups",
                                              json_is_array(dg) ? json_incref(dg) : json_array()));
        }
        if (json_array_size(x = json_object_get(stored, "header_auths")) > 0) {
                json_t *arr = json_array();
                json_array_foreach(x, k, h) {
                        json_array_append_new(arr, json_pack("{s:b,s:s,s:s}", "enabled", enabled_of(h), "header",
                                                             jstr(h, "header"), "value", ""));
                }
                json_object_set_new(auth, "header_auths", arr);
        }
        json_decref(stored);
        json_object_set_new(o, "auth", auth);

        json_t *restr = parse_col(rows, i, 15, json_object());
        if (json_object_size(restr) > 0)
                json_object_set_new(o, "access_restrictions", restr);
        else
                json_decref(restr);

        json_t *meta = json_object();
        json_object_set_new(meta, "created_at", json_string(cp_store_rows_get(rows, i, 16)));
        if (cp_store_rows_get(rows, i, 17))
                json_object_set_new(meta, "certificate_issued_at", json_string(cp_store_rows_get(rows, i, 17)));
        json_object_set_new(meta, "status", json_string(cp_store_rows_get(rows, i, 18)));
        json_object_set_new(o, "meta", meta);
        return o;
}

static int reply_service(api_ctx *c, const char *id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_strbuf sql;
        cp_strbuf_init(&sql);
        cp_strbuf_adds(&sql, SQL_COLS);
        cp_strbuf_adds(&sql, " AND s.id = $2");
        const char *p[] = { c->account_id, id };
        int r = api_sql(c, sql.buf, 2, p, &rows);
        cp_strbuf_release(&sql);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "service %s not found", id);
        json_t *o = service_json(rows, 0);
        r = api_reply_json(c, 200, o);
        json_decref(o);
        return r;
}

static int list_services(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_strbuf sql;
        cp_strbuf_init(&sql);
        cp_strbuf_adds(&sql, SQL_COLS);
        cp_strbuf_adds(&sql, " ORDER BY s.meta_created_at, s.id");
        const char *p[] = { c->account_id };
        int r = api_sql(c, sql.buf, 1, p, &rows);
        cp_strbuf_release(&sql);
        if (r < 0)
                return r;
        json_t *arr = json_array();
        for (int i = 0; i < cp_store_rows_count(rows); i++)
                json_array_append_new(arr, service_json(rows, i));
        r = api_reply_json(c, 200, arr);
        json_decref(arr);
        return r;
}

static int get_service(api_ctx *c) {
        return reply_service(c, c->param[0]);
}

/* ---- events --------------------------------------------------------------------------------------------- */

/* Service.EventMeta */
static int service_event(api_ctx *c, int act, const char *id, const char *name, const char *domain,
                         const char *cluster, const char *source, bool auth, const char *mode, int64_t port) {
        json_t *m = json_pack("{s:s,s:s,s:s,s:s,s:b,s:s}", "name", name, "domain", domain, "proxy_cluster", cluster,
                              "source", source, "auth", auth, "mode", mode);
        if (port)
                json_object_set_new(m, "listen_port", json_integer(port));
        char *txt = json_dumps(m, JSON_COMPACT);
        int r = api_event(c, act, id, txt);
        free(txt);
        json_decref(m);
        return r;
}

static int change(api_ctx *c, const char *id, int op, const char *cluster, const char *domain) {
        cp_error err = { 0 };
        int64_t seq = 0;
        int r = cp_store_tx_proxy_change(c->tx, c->account_id, id, op, cluster, domain, &seq, &err);
        if (r < 0)
                return api_internal(c, "proxy change log", &err);
        if (seq > c->proxy_seq)
                c->proxy_seq = seq;
        return 0;
}

/* ---- create ---------------------------------------------------------------------------------------------- */

static int create_service(api_ctx *c) {
        _cleanup_free_ char *targets = NULL, *auth = NULL, *restr = NULL;
        svc_in s = { 0 };
        char cluster[256], id[CP_ID_LEN + 1];
        cp_error err = { 0 };
        bool auto_port = false;
        int64_t seq = 0;
        int r;

        r = parse_request(c, &s);
        if (r < 0)
                goto out;
        if (!c->api->has_data_key) {
                r = api_internal(c, "no DataStoreEncryptionKey configured for the API", NULL);
                goto out;
        }
        if ((r = api_rproxy_derive_cluster(c, s.domain, cluster, sizeof cluster)) < 0 ||
            (r = api_rproxy_check_subdomain(c, s.domain, cluster)) < 0 || (r = header_values_present(c, s.auth)) < 0)
                goto out;
        if ((r = check_targets(c, &s)) < 0 || (r = check_groups(c, &s)) < 0)
                goto out;
        /* the domain first: 409 before anything else is written */
        if ((r = api_rproxy_domain_taken(c, s.domain, "")) < 0)
                goto out;
        cp_id_new(id);
        if ((r = l4_port(c, &s, id, cluster, false, &auto_port)) < 0 || (r = hash_secrets(c, s.auth)) < 0)
                goto out;
        targets = json_dumps(s.targets, JSON_COMPACT);
        auth = json_dumps(s.auth, JSON_COMPACT);
        restr = json_dumps(s.restrictions, JSON_COMPACT);
        cp_store_service_new sn = {
                .id = id,
                .account_id = c->account_id,
                .name = s.name,
                .domain = s.domain,
                .proxy_cluster = cluster,
                .mode = s.mode,
                .listen_port = (int) s.listen_port,
                .port_auto_assigned = auto_port,
                .enabled = s.enabled,
                .pass_host_header = s.pass_host_header,
                .rewrite_redirects = s.rewrite_redirects,
                .private_ = s.private_,
                .access_groups = s.access_groups.buf,
                .targets = targets,
                .auth = auth,
                .restrictions = restr,
        };
        r = cp_store_tx_service_create(c->tx, c->api->data_key, &sn, NULL, &seq, &err);
        if (r == -EEXIST) {
                r = api_error(c, 409, "domain already taken");
                goto out;
        }
        if (r < 0) {
                r = api_internal(c, "create service", &err);
                goto out;
        }
        if (seq > c->proxy_seq)
                c->proxy_seq = seq;
        r = service_event(c, API_ACT_SERVICE_CREATED, id, s.name, s.domain, cluster, "permanent", auth_enabled(s.auth),
                          s.mode, s.listen_port);
        if (r < 0)
                goto out;
        api_changed(c);
        r = reply_service(c, id);
out:
        svc_in_release(&s);
        return r;
}

/* ---- update ---------------------------------------------------------------------------------------------- */

static const char SQL_OLD[] =
        "SELECT domain, proxy_cluster, mode, enabled, terminated, listen_port, port_auto_assigned, auth::text, source"
        " FROM services WHERE account_id = $1 AND id = $2 FOR UPDATE";
static const char SQL_UPDATE[] =
        "UPDATE services SET name = $3, domain = $4, proxy_cluster = $5, mode = $6, listen_port = $7::integer,"
        " port_auto_assigned = $8::boolean, enabled = $9::boolean, pass_host_header = $10::boolean,"
        " rewrite_redirects = $11::boolean, private = $12::boolean, access_groups = $13::text[],"
        " targets = $14::jsonb, auth = $15::jsonb, restrictions = $16::jsonb"
        " WHERE account_id = $1 AND id = $2";

/* preserveExistingAuthSecrets: an enabled password / PIN sent empty keeps
 * the stored hash when the stored one was enabled too; an enabled header
 * sent without a value keeps the stored hash of the same header. */
static void preserve_secrets(json_t *auth, json_t *old) {
        static const struct {
                const char *obj, *secret;
        } secrets[] = { { "password_auth", "password" }, { "pin_auth", "pin" } };
        json_t *h, *oh;
        size_t i, k;
        for (int n = 0; n < 2; n++) {
                json_t *o = json_object_get(auth, secrets[n].obj), *p = json_object_get(old, secrets[n].obj);
                if (json_is_true(json_object_get(o, "enabled")) && json_is_true(json_object_get(p, "enabled")) &&
                    !*jstr(o, secrets[n].secret))
                        json_object_set_new(auth, secrets[n].obj, json_deep_copy(p));
        }
        json_array_foreach(json_object_get(auth, "header_auths"), i, h) {
                char a[160], b[160];
                if (!json_is_true(json_object_get(h, "enabled")) || *jstr(h, "value"))
                        continue;
                header_canonical(jstr(h, "header"), a, sizeof a);
                json_array_foreach(json_object_get(old, "header_auths"), k, oh) {
                        header_canonical(jstr(oh, "header"), b, sizeof b);
                        if (strcmp(a, b) == 0 && *jstr(oh, "value"))
                                json_object_set_new(h, "value", json_string(jstr(oh, "value")));
                }
        }
}

static int update_service(api_ctx *c) {
        _cleanup_free_ char *targets = NULL, *auth = NULL, *restr = NULL;
        _cleanup_rows_ cp_store_rows *old = NULL;
        svc_in s = { 0 };
        const char *id = c->param[0];
        char cluster[256];
        bool auto_port = false;
        int r;

        r = parse_request(c, &s);
        if (r < 0)
                goto out;
        const char *p2[] = { c->account_id, id };
        if ((r = api_sql(c, SQL_OLD, 2, p2, &old)) < 0)
                goto out;
        if (cp_store_rows_count(old) == 0) {
                r = api_error(c, 404, "service %s not found", id);
                goto out;
        }
        const char *old_domain = cp_store_rows_get(old, 0, 0), *old_cluster = cp_store_rows_get(old, 0, 1),
                   *old_mode = cp_store_rows_get(old, 0, 2);
        bool old_enabled = cp_store_rows_bool(old, 0, 3);
        int64_t old_port = atoll(cp_store_rows_get(old, 0, 5));
        bool old_auto = cp_store_rows_bool(old, 0, 6);
        if (cp_store_rows_bool(old, 0, 4)) {
                r = api_error(c, 403, "service is terminated and cannot be updated");
                goto out;
        }
        if (strcmp(old_mode, s.mode) != 0 && !(strcmp(old_mode, "http") == 0 && strcmp(s.mode, "http") == 0)) {
                r = bad(c, "cannot change mode from \"%s\" to \"%s\"", old_mode, s.mode);
                goto out;
        }
        bool domain_changed = strcmp(old_domain, s.domain) != 0;
        (void) snprintf(cluster, sizeof cluster, "%s", old_cluster);
        if (domain_changed) {
                /* resolveEffectiveCluster: keep the old cluster when none matches */
                char derived[256];
                if (api_rproxy_derive_cluster_quiet(c, s.domain, derived, sizeof derived) == 1)
                        (void) snprintf(cluster, sizeof cluster, "%s", derived);
                if ((r = api_rproxy_domain_taken(c, s.domain, id)) < 0)
                        goto out;
        }
        if ((r = check_targets(c, &s)) < 0 || (r = check_groups(c, &s)) < 0 ||
            (r = api_rproxy_check_subdomain(c, s.domain, cluster)) < 0)
                goto out;
        /* hashed first, as NetBird's UpdateService does: a preserved
         * value is a hash already */
        if ((r = hash_secrets(c, s.auth)) < 0)
                goto out;
        json_t *old_auth = parse_col(old, 0, 7, json_object());
        preserve_secrets(s.auth, old_auth);
        json_decref(old_auth);
        if ((r = header_values_present(c, s.auth)) < 0)
                goto out;
        /* preserveListenPort */
        if (old_port > 0 && s.listen_port == 0) {
                s.listen_port = old_port;
                auto_port = old_auto;
        } else if (s.listen_port == old_port)
                auto_port = old_auto;
        bool port_based = strcmp(s.mode, "tcp") == 0 || strcmp(s.mode, "udp") == 0;
        if (port_based && s.listen_port != 0 && s.listen_port != old_port) {
                int custom = api_rproxy_capability(c, cluster, "supports_custom_ports");
                if (custom < -1) {
                        r = API_FAIL;
                        goto out;
                }
                if (custom != 1) {
                        r = bad(c, "custom ports not supported on target cluster %s", cluster);
                        goto out;
                }
        }
        if ((r = l4_port(c, &s, id, cluster, true, &auto_port)) < 0)
                goto out;
        targets = json_dumps(s.targets, JSON_COMPACT);
        auth = json_dumps(s.auth, JSON_COMPACT);
        restr = json_dumps(s.restrictions, JSON_COMPACT);
        char port[16];
        (void) snprintf(port, sizeof port, "%" PRId64, s.listen_port);
        const char *p[] = { c->account_id,
                            id,
                            s.name,
                            s.domain,
                            cluster,
                            s.mode,
                            port,
                            auto_port ? "t" : "f",
                            s.enabled ? "t" : "f",
                            s.pass_host_header ? "t" : "f",
                            s.rewrite_redirects ? "t" : "f",
                            s.private_ ? "t" : "f",
                            s.access_groups.buf,
                            targets,
                            auth,
                            restr };
        cp_error err = { 0 };
        r = api_sql_try(c, SQL_UPDATE, 16, p, NULL, &err);
        if (r == -EEXIST) {
                r = api_error(c, 409, "domain already taken");
                goto out;
        }
        if (r < 0) {
                r = api_internal(c, "update service", &err);
                goto out;
        }
        /* what the proxies must learn (sendServiceUpdateNotifications) */
        if (domain_changed || strcmp(old_cluster, cluster) != 0) {
                if (old_enabled && (r = change(c, id, CP_PROXY_CHANGE_REMOVED, old_cluster, old_domain)) < 0)
                        goto out;
                if (s.enabled && (r = change(c, id, CP_PROXY_CHANGE_CREATED, cluster, s.domain)) < 0)
                        goto out;
        } else if (old_enabled && !s.enabled)
                r = change(c, id, CP_PROXY_CHANGE_REMOVED, cluster, s.domain);
        else if (!old_enabled && s.enabled)
                r = change(c, id, CP_PROXY_CHANGE_CREATED, cluster, s.domain);
        else if (s.enabled)
                r = change(c, id, CP_PROXY_CHANGE_MODIFIED, cluster, s.domain);
        if (r < 0)
                goto out;
        r = service_event(c, API_ACT_SERVICE_UPDATED, id, s.name, s.domain, cluster, cp_store_rows_get(old, 0, 8),
                          auth_enabled(s.auth), s.mode, s.listen_port);
        if (r < 0)
                goto out;
        api_changed(c);
        r = reply_service(c, id);
out:
        svc_in_release(&s);
        return r;
}

/* ---- delete ---------------------------------------------------------------------------------------------- */

static const char SQL_DEL_INFO[] =
        "SELECT name, domain, proxy_cluster, source, mode, listen_port, auth::text FROM services"
        " WHERE account_id = $1 AND id = $2 FOR UPDATE";

static int delete_service(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0];
        const char *p[] = { c->account_id, id };
        cp_error err = { 0 };
        int64_t seq = 0;
        int r;

        if ((r = api_sql(c, SQL_DEL_INFO, 2, p, &rows)) < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "service %s not found", id);
        r = cp_store_tx_service_delete(c->tx, c->account_id, id, &seq, &err);
        if (r < 0)
                return api_internal(c, "delete service", &err);
        if (seq > c->proxy_seq)
                c->proxy_seq = seq;
        json_t *auth = parse_col(rows, 0, 6, json_object());
        bool ae = auth_enabled(auth);
        json_decref(auth);
        r = service_event(c, API_ACT_SERVICE_DELETED, id, cp_store_rows_get(rows, 0, 0), cp_store_rows_get(rows, 0, 1),
                          cp_store_rows_get(rows, 0, 2), cp_store_rows_get(rows, 0, 3), ae, cp_store_rows_get(rows, 0, 4),
                          atoll(cp_store_rows_get(rows, 0, 5)));
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_services_routes[] = {
        { "GET", "/api/reverse-proxies/services", API_MOD_SERVICES, API_READ, list_services },
        { "POST", "/api/reverse-proxies/services", API_MOD_SERVICES, API_CREATE, create_service },
        { "GET", "/api/reverse-proxies/services/{serviceId}", API_MOD_SERVICES, API_READ, get_service },
        { "PUT", "/api/reverse-proxies/services/{serviceId}", API_MOD_SERVICES, API_UPDATE, update_service },
        { "DELETE", "/api/reverse-proxies/services/{serviceId}", API_MOD_SERVICES, API_DELETE, delete_service },
        { NULL },
};
