/*
 * mgmt-proxy-mapping.c: a services row as a ProxyMapping (NetBird's
 * ToProtoMapping): targets -> PathMapping, auth -> Authentication,
 * restrictions -> AccessRestrictions. The JSON columns are in the REST
 * API's shapes (migration 0008); a column that does not parse gives an
 * empty part (the REST API wrote it, so that is a bug, logged once per
 * mapping), never a failed stream.
 */
#include "cp/base.h"
#include "cp/log.h"
#include "cp/store-proxyconn.h"
#include "cp/util.h"
#include "mgmt-proxy-int.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <jansson.h>

/* Authentication.max_session_age_seconds: NetBird's 24 h. */
#define SESSION_AGE_S (24 * 3600)

static const cp_log_ctx log_ctx = { .component = "proxy" };

static json_t *parse(const cp_store_rows *rows, int row, int col, const char *service_id) {
        const char *v = cp_store_rows_get(rows, row, col);
        json_error_t e;
        json_t *j;

        if (!v)
                return NULL;
        j = json_loads(v, 0, &e);
        if (!j)
                cp_log_kv(&log_ctx, CP_LOG_ERROR, "unreadable JSON in a service row", "service_id", service_id,
                          "error", e.text, NULL);
        return j;
}

static bool jbool(const json_t *o, const char *key) {
        return json_is_true(json_object_get(o, key));
}

static const char *jstr(const json_t *o, const char *key) {
        const char *s = json_string_value(json_object_get(o, key));

        return s ? s : "";
}

static char **str_array(mgmt_arena *a, const json_t *arr, size_t *n) {
        size_t i, k = 0;
        json_t *v;
        char **out;

        *n = 0;
        if (!json_is_array(arr) || json_array_size(arr) == 0)
                return NULL;
        out = mgmt_arena_array(a, json_array_size(arr), sizeof *out);
        json_array_foreach(arr, i, v) {
                if (json_is_string(v))
                        out[k++] = mgmt_arena_strdup(a, json_string_value(v));
        }
        *n = k;
        return out;
}

static Google__Protobuf__Duration *duration(mgmt_arena *a, const json_t *o, const char *key) {
        const char *s = json_string_value(json_object_get(o, key));
        int64_t ms;

        if (!s || !*s || cp_parse_duration_ms(s, &ms) < 0 || ms <= 0)
                return NULL;
        Google__Protobuf__Duration *d = mgmt_arena_alloc(a, sizeof *d);
        google__protobuf__duration__init(d);
        d->seconds = ms / 1000;
        d->nanos = (int32_t) (ms % 1000) * 1000000;
        return d;
}

static const char *or_empty(const char *s) {
        return s ? s : "";
}

static bool is_l4(const char *mode) {
        return strcmp(mode, "tcp") == 0 || strcmp(mode, "udp") == 0 || strcmp(mode, "tls") == 0;
}

static Management__PathTargetOptions *http_options(mgmt_arena *a, const json_t *o) {
        Management__PathTargetOptions *po;
        const json_t *hdrs = json_object_get(o, "custom_headers");
        const char *rewrite = jstr(o, "path_rewrite");
        Google__Protobuf__Duration *timeout = duration(a, o, "request_timeout");

        if (!jbool(o, "skip_tls_verify") && !*rewrite && !timeout && json_object_size(hdrs) == 0 &&
            !jbool(o, "direct_upstream"))
                return NULL;
        po = mgmt_arena_alloc(a, sizeof *po);
        management__path_target_options__init(po);
        po->skip_tls_verify = jbool(o, "skip_tls_verify");
        po->path_rewrite = strcmp(rewrite, "preserve") == 0 ? MANAGEMENT__PATH_REWRITE_MODE__PATH_REWRITE_PRESERVE
                                                            : MANAGEMENT__PATH_REWRITE_MODE__PATH_REWRITE_DEFAULT;
        po->request_timeout = timeout;
        po->direct_upstream = jbool(o, "direct_upstream");
        if (json_object_size(hdrs) > 0) {
                const char *k;
                json_t *v;
                size_t n = 0;
                po->custom_headers = mgmt_arena_array(a, json_object_size(hdrs), sizeof *po->custom_headers);
                json_object_foreach((json_t *) hdrs, k, v) {
                        if (!json_is_string(v))
                                continue;
                        Management__PathTargetOptions__CustomHeadersEntry *e = mgmt_arena_alloc(a, sizeof *e);
                        management__path_target_options__custom_headers_entry__init(e);
                        e->key = mgmt_arena_strdup(a, k);
                        e->value = mgmt_arena_strdup(a, json_string_value(v));
                        po->custom_headers[n++] = e;
                }
                po->n_custom_headers = n;
        }
        return po;
}

static Management__PathTargetOptions *l4_options(mgmt_arena *a, const json_t *o) {
        Google__Protobuf__Duration *timeout = duration(a, o, "request_timeout");
        Google__Protobuf__Duration *idle = duration(a, o, "session_idle_timeout");
        Management__PathTargetOptions *po;

        if (!jbool(o, "proxy_protocol") && !timeout && !idle)
                return NULL;
        po = mgmt_arena_alloc(a, sizeof *po);
        management__path_target_options__init(po);
        po->proxy_protocol = jbool(o, "proxy_protocol");
        po->request_timeout = timeout;
        po->session_idle_timeout = idle;
        return po;
}

/* host as a URL or host:port authority: IPv6 literals in brackets. */
static const char *bracket(mgmt_arena *a, const char *host) {
        struct in6_addr v6;
        char bare[128];
        size_t n = strlen(host);

        if (n >= 2 && host[0] == '[' && host[n - 1] == ']')
                return host;
        if (n < sizeof bare && strchr(host, ':')) {
                memcpy(bare, host, n + 1);
                if (inet_pton(AF_INET6, bare, &v6) == 1)
                        return mgmt_arena_printf(a, "[%s]", host);
        }
        return host;
}

static void paths(mgmt_arena *a, Management__ProxyMapping *m, const json_t *targets) {
        size_t i, k = 0;
        json_t *t;

        if (!json_is_array(targets) || json_array_size(targets) == 0)
                return;
        m->path = mgmt_arena_array(a, json_array_size(targets), sizeof *m->path);
        json_array_foreach(targets, i, t) {
                if (!jbool(t, "enabled"))
                        continue;
                const json_t *opts = json_object_get(t, "options");
                const char *host = jstr(t, "host");
                json_int_t port = json_integer_value(json_object_get(t, "port"));
                Management__PathMapping *pm = mgmt_arena_alloc(a, sizeof *pm);
                management__path_mapping__init(pm);
                if (is_l4(m->mode)) {
                        pm->target = mgmt_arena_printf(a, "%s:%" JSON_INTEGER_FORMAT, bracket(a, host), port);
                        pm->options = l4_options(a, opts);
                } else {
                        const char *proto = jstr(t, "protocol");
                        bool dflt = (strcmp(proto, "https") == 0 && port == 443) ||
                                    (strcmp(proto, "http") == 0 && port == 80);
                        if (port > 0 && !dflt)
                                pm->target = mgmt_arena_printf(a, "%s://%s:%" JSON_INTEGER_FORMAT "/", proto,
                                                               bracket(a, host), port);
                        else
                                pm->target = mgmt_arena_printf(a, "%s://%s/", proto, bracket(a, host));
                        const char *path = json_string_value(json_object_get(t, "path"));
                        pm->path = mgmt_arena_strdup(a, path ? path : "/");
                        pm->options = http_options(a, opts);
                }
                m->path[k++] = pm;
        }
        m->n_path = k;
}

static Management__Authentication *authentication(mgmt_arena *a, const json_t *auth, const char *session_key) {
        Management__Authentication *au = mgmt_arena_alloc(a, sizeof *au);
        const json_t *hdrs = json_object_get(auth, "header_auths");
        size_t i, k = 0;
        json_t *h;

        management__authentication__init(au);
        au->session_key = mgmt_arena_strdup(a, session_key ? session_key : "");
        au->max_session_age_seconds = SESSION_AGE_S;
        au->password = jbool(json_object_get(auth, "password_auth"), "enabled");
        au->pin = jbool(json_object_get(auth, "pin_auth"), "enabled");
        au->oidc = jbool(json_object_get(auth, "bearer_auth"), "enabled");
        if (json_is_array(hdrs) && json_array_size(hdrs) > 0) {
                au->header_auths = mgmt_arena_array(a, json_array_size(hdrs), sizeof *au->header_auths);
                json_array_foreach(hdrs, i, h) {
                        if (!jbool(h, "enabled"))
                                continue;
                        Management__HeaderAuth *ha = mgmt_arena_alloc(a, sizeof *ha);
                        management__header_auth__init(ha);
                        ha->header = mgmt_arena_strdup(a, jstr(h, "header"));
                        ha->hashed_value = mgmt_arena_strdup(a, jstr(h, "value"));
                        au->header_auths[k++] = ha;
                }
                au->n_header_auths = k;
        }
        return au;
}

static Management__AccessRestrictions *restrictions(mgmt_arena *a, const json_t *r) {
        Management__AccessRestrictions *ar = mgmt_arena_alloc(a, sizeof *ar);

        management__access_restrictions__init(ar);
        ar->allowed_cidrs = str_array(a, json_object_get(r, "allowed_cidrs"), &ar->n_allowed_cidrs);
        ar->blocked_cidrs = str_array(a, json_object_get(r, "blocked_cidrs"), &ar->n_blocked_cidrs);
        ar->allowed_countries = str_array(a, json_object_get(r, "allowed_countries"), &ar->n_allowed_countries);
        ar->blocked_countries = str_array(a, json_object_get(r, "blocked_countries"), &ar->n_blocked_countries);
        ar->crowdsec_mode = mgmt_arena_strdup(a, jstr(r, "crowdsec_mode"));
        if (!ar->n_allowed_cidrs && !ar->n_blocked_cidrs && !ar->n_allowed_countries && !ar->n_blocked_countries &&
            !*ar->crowdsec_mode)
                return NULL;
        return ar;
}

Management__ProxyMapping *mgmt_proxy_mapping_build(mgmt_arena *a, const cp_store_rows *rows, int row, int type,
                                                   const char *auth_token) {
        Management__ProxyMapping *m = mgmt_arena_alloc(a, sizeof *m);
        const char *id = cp_store_rows_get(rows, row, CP_SVC_ID);
        const char *port = cp_store_rows_get(rows, row, CP_SVC_LISTEN_PORT);
        const char *mode = cp_store_rows_get(rows, row, CP_SVC_MODE);

        management__proxy_mapping__init(m);
        m->type = (Management__ProxyMappingUpdateType) type;
        m->id = mgmt_arena_strdup(a, id ? id : "");
        m->account_id = mgmt_arena_strdup(a, or_empty(cp_store_rows_get(rows, row, CP_SVC_ACCOUNT_ID)));
        m->domain = mgmt_arena_strdup(a, or_empty(cp_store_rows_get(rows, row, CP_SVC_DOMAIN)));
        m->auth_token = mgmt_arena_strdup(a, auth_token ? auth_token : "");
        m->pass_host_header = cp_store_rows_bool(rows, row, CP_SVC_PASS_HOST_HEADER);
        m->rewrite_redirects = cp_store_rows_bool(rows, row, CP_SVC_REWRITE_REDIRECTS);
        m->mode = mgmt_arena_strdup(a, mode ? mode : "http");
        m->listen_port = port ? (int32_t) strtol(port, NULL, 10) : 0;
        m->private_ = cp_store_rows_bool(rows, row, CP_SVC_PRIVATE);

        json_t *targets = parse(rows, row, CP_SVC_TARGETS, m->id);
        json_t *auth = parse(rows, row, CP_SVC_AUTH, m->id);
        json_t *restr = parse(rows, row, CP_SVC_RESTRICTIONS, m->id);
        paths(a, m, targets);
        m->auth = authentication(a, auth, cp_store_rows_get(rows, row, CP_SVC_SESSION_PUBLIC_KEY));
        m->access_restrictions = restrictions(a, restr);
        json_decref(targets);
        json_decref(auth);
        json_decref(restr);
        return m;
}

Management__ProxyMapping *mgmt_proxy_mapping_removed(mgmt_arena *a, const char *id, const char *account_id,
                                                     const char *domain) {
        Management__ProxyMapping *m = mgmt_arena_alloc(a, sizeof *m);

        management__proxy_mapping__init(m);
        m->type = MANAGEMENT__PROXY_MAPPING_UPDATE_TYPE__UPDATE_TYPE_REMOVED;
        m->id = mgmt_arena_strdup(a, id ? id : "");
        m->account_id = mgmt_arena_strdup(a, account_id ? account_id : "");
        m->domain = mgmt_arena_strdup(a, domain ? domain : "");
        return m;
}
