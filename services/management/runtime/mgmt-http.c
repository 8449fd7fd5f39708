#include "cp/base.h"
#include "cp/log.h"
#include "cp/metrics.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "mgmt-http.h"
#include "mgmt-limits.h"
#include "mgmt-metrics.h"
#include "mgmt-realip.h"
#include "mgmt-strmap.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct mgmt_http {
        struct evhttp *http;
        struct evhttp_bound_socket *sock;
        int port;
        mgmt_ready *ready;
        mgmt_http_degraded_fn degraded;
        void *degraded_userdata;

        /* The REST API (mgmt_http_set_api); NULL = /api answers 404. */
        cp_api *api;
        mgmt_workers *workers;
        mgmt_http_post_fn post;
        void *post_userdata;
        unsigned pending;               /* API jobs not yet answered */
        bool closing;                   /* shutting down: no new API jobs */
        void (*on_idle)(void *userdata);
        void *idle_userdata;

        /* Limits (mgmt_http_set_limits). */
        struct mgmt_limits *limits;
        const struct mgmt_realip *realip;
        int64_t max_connections;        /* 0 = no limit */
        mgmt_strmap *conns;             /* "%p" of each evhttp_connection that sent a request ->
                                         * its TCP peer address (owned) */
        mgmt_strmap *per_addr;          /* TCP peer address -> its connections in conns
                                         * (the count as a pointer) */
};

/* Per request, on the stack of the dispatcher: the request's log context
 * and the id echoed in X-Request-Id. */
typedef struct http_op {
        mgmt_http *h;
        struct evhttp_request *req;
        char request_id[65];
        char peer[64];
        char peer_ip[64];               /* without port; the real one behind a trusted proxy */
        const char *method;
        const char *path;
        cp_log_ctx log;
        int status;
} http_op;

typedef void (*route_fn)(http_op *op);

static void api_done(void *arg);

static void handle_api(http_op *op);
static void handle_healthz(http_op *op);
static void handle_readyz(http_op *op);
static void handle_metrics(http_op *op);

/* The route table: exact paths. */
static const struct route {
        const char *path;
        unsigned methods;       /* EVHTTP_REQ_* mask */
        route_fn handler;
} routes[] = {
        { "/healthz", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, handle_healthz },
        { "/readyz", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, handle_readyz },
        { "/metrics", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, handle_metrics },
};

static const struct {
        enum evhttp_cmd_type cmd;
        const char *name;
} method_names[] = {
        { EVHTTP_REQ_GET, "GET" }, { EVHTTP_REQ_POST, "POST" }, { EVHTTP_REQ_HEAD, "HEAD" },
        { EVHTTP_REQ_PUT, "PUT" }, { EVHTTP_REQ_DELETE, "DELETE" }, { EVHTTP_REQ_OPTIONS, "OPTIONS" },
        { EVHTTP_REQ_TRACE, "TRACE" }, { EVHTTP_REQ_CONNECT, "CONNECT" }, { EVHTTP_REQ_PATCH, "PATCH" },
};

static const char *method_name(enum evhttp_cmd_type cmd) {
        for (size_t i = 0; i < ELEMENTSOF(method_names); i++)
                if (method_names[i].cmd == cmd)
                        return method_names[i].name;
        return "UNKNOWN";
}

static void free_body(const void *data, size_t len, void *extra) {
        free((void *) data);
}

/* Sends code with body (len bytes): copied, or with owned set a malloc'd
 * buffer that libevent frees once sent (a REST response can be tens of
 * megabytes, not worth copying on the loop thread). */
static void send_body(http_op *op, int code, const char *reason, const char *content_type, const char *body,
                      size_t len, bool owned) {
        struct evkeyvalq *out = evhttp_request_get_output_headers(op->req);
        struct evbuffer *buf = evbuffer_new();
        int r = -1;

        (void) evhttp_add_header(out, "Content-Type", content_type);
        (void) evhttp_add_header(out, "Cache-Control", "no-store");
        (void) evhttp_add_header(out, "X-Request-Id", op->request_id);
        if (buf)
                r = owned ? evbuffer_add_reference(buf, body, len, free_body, NULL) : evbuffer_add(buf, body, len);
        if (owned && r < 0)
                free((void *) body);
        evhttp_send_reply(op->req, code, reason, buf);
        if (buf)
                evbuffer_free(buf);
        op->status = code;
}

static void reply(http_op *op, int code, const char *reason, const char *content_type, const char *body,
                  size_t len) {
        send_body(op, code, reason, content_type, body, len, false);
}

static void reply_json(http_op *op, int code, const char *reason, const char *body) {
        reply(op, code, reason, "application/json; charset=UTF-8", body, strlen(body));
}

/* NetBird's REST error body. */
static void reply_error(http_op *op, int code, const char *reason, const char *message) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_adds(&sb, "{\"message\":\"");
        cp_strbuf_add_json_escaped(&sb, message);
        cp_strbuf_addf(&sb, "\",\"code\":%d}", code);
        reply_json(op, code, reason, sb.buf);
        cp_strbuf_release(&sb);
}

static void handle_healthz(http_op *op) {
        reply_json(op, HTTP_OK, "OK", "{\"status\":\"ok\"}");
}

/* Prometheus text format 0.0.4 (docs/metrics.md). Rendering runs the
 * collectors here, on the loop thread; each reads its source's counters
 * or takes a short lock (the store pool), never waits for I/O. */
static void handle_metrics(http_op *op) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        mgmt_metrics_render(&sb);
        reply(op, HTTP_OK, "OK", CP_METRICS_CONTENT_TYPE, sb.buf, sb.len);
        cp_strbuf_release(&sb);
}

static void handle_readyz(http_op *op) {
        mgmt_ready_state st;
        cp_strbuf sb;

        if (op->h->closing) {
                /* Shutdown began: still answering, so probes see the
                 * replica leave rather than a refused connection. */
                reply_json(op, HTTP_SERVUNAVAIL, "Service Unavailable",
                           "{\"status\":\"not ready\",\"failed\":\"draining\",\"error\":\"server is shutting "
                           "down\"}");
                return;
        }
        mgmt_ready_get(op->h->ready, &st);
        if (st.ready) {
                /* Serving, but a part that is not needed to serve is down
                 * (the bus): still 200, so no load balancer pulls us out. */
                char why[256];
                const char *part = op->h->degraded ? op->h->degraded(why, sizeof why, op->h->degraded_userdata)
                                                   : NULL;
                if (!part) {
                        reply_json(op, HTTP_OK, "OK", "{\"status\":\"ready\"}");
                        return;
                }
                cp_strbuf_init(&sb);
                cp_strbuf_adds(&sb, "{\"status\":\"degraded\",\"degraded\":\"");
                cp_strbuf_add_json_escaped(&sb, part);
                cp_strbuf_adds(&sb, "\",\"error\":\"");
                cp_strbuf_add_json_escaped(&sb, why);
                cp_strbuf_adds(&sb, "\"}");
                reply_json(op, HTTP_OK, "OK", sb.buf);
                cp_strbuf_release(&sb);
                return;
        }
        cp_strbuf_init(&sb);
        cp_strbuf_adds(&sb, "{\"status\":\"not ready\",\"failed\":\"");
        cp_strbuf_add_json_escaped(&sb, st.failed);
        cp_strbuf_adds(&sb, "\",\"error\":\"");
        cp_strbuf_add_json_escaped(&sb, st.error);
        cp_strbuf_adds(&sb, "\"}");
        reply_json(op, HTTP_SERVUNAVAIL, "Service Unavailable", sb.buf);
        cp_strbuf_release(&sb);
}

/* ---- the REST API ----------------------------------------------------------------------
 *
 * The loop thread copies what the API needs out of the request and hands
 * it to a worker (cp_api_handle blocks on PostgreSQL); the worker posts
 * the result back and the loop thread answers. If the client went away
 * meanwhile, libevent has detached the request from its connection and
 * evhttp_send_reply() only frees it. */

typedef struct api_job {
        mgmt_http *h;
        struct evhttp_request *req;
        char request_id[65];
        char peer[64];
        char peer_ip[64];
        char *method, *path, *query, *authorization, *body;
        char *idempotency_key;          /* the Idempotency-Key header, NULL = none */
        size_t body_len;
        int64_t started_ns;
        cp_api_response resp;
} api_job;

static void api_job_free(api_job *j) {
        free(j->method);
        free(j->path);
        free(j->query);
        free(j->idempotency_key);
        if (j->authorization) {
                cp_explicit_bzero(j->authorization, strlen(j->authorization));
                free(j->authorization);
        }
        if (j->body) {
                cp_explicit_bzero(j->body, j->body_len);
                free(j->body);
        }
        cp_api_response_release(&j->resp);
        free(j);
}

/* CORS as NetBird's API has it: any origin, the methods and headers the
 * dashboard sends; credentials are headers, never cookies. Added once,
 * when handle_api() takes the request: every answer to it (preflight,
 * refusal, the API's response) carries exactly this one set. */
static void add_cors(struct evkeyvalq *out) {
        (void) evhttp_add_header(out, "Access-Control-Allow-Origin", "*");
        (void) evhttp_add_header(out, "Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS");
        (void) evhttp_add_header(out, "Access-Control-Allow-Headers",
                                 "Authorization, Content-Type, Accept, X-Request-Id, Idempotency-Key");
        (void) evhttp_add_header(out, "Access-Control-Max-Age", "600");
}

static void api_work(void *arg) {
        api_job *j = arg;
        cp_api_request areq = {
                .method = j->method, .path = j->path, .query = j->query, .authorization = j->authorization,
                .body = j->body, .body_len = j->body_len, .remote = j->peer,
                .remote_ip = j->peer_ip[0] ? j->peer_ip : NULL,
                .idempotency_key = j->idempotency_key,
        };

        cp_api_handle(j->h->api, &areq, &j->resp);
        j->h->post(api_done, j, j->h->post_userdata);
}

static void api_finish(mgmt_http *h) {
        if (--h->pending == 0 && h->on_idle)
                h->on_idle(h->idle_userdata);
}

static void api_done(void *arg) {
        api_job *j = arg;
        mgmt_http *h = j->h;
        http_op op = { .h = h, .req = j->req, .method = j->method, .path = j->path };
        double took = (double) (mgmt_metrics_now_ns() - j->started_ns) / 1e9;
        char status[8], ms[24];

        memcpy(op.request_id, j->request_id, sizeof op.request_id);
        size_t len = j->resp.body.len;
        if (j->resp.location)
                (void) evhttp_add_header(evhttp_request_get_output_headers(j->req), "Location", j->resp.location);
        if (j->resp.retry_after > 0) {
                char ra[16];
                (void) snprintf(ra, sizeof ra, "%d", j->resp.retry_after);
                (void) evhttp_add_header(evhttp_request_get_output_headers(j->req), "Retry-After", ra);
        }
        if (j->resp.limited[0])
                mgmt_limits_count(strcmp(j->resp.limited, "rest_addr") == 0 ? MGMT_LIMIT_REST_ADDR :
                                  MGMT_LIMIT_REST_TOKEN);
        send_body(&op, j->resp.status, NULL, "application/json; charset=UTF-8", cp_strbuf_detach(&j->resp.body), len,
                  true);
        mgmt_metrics_http(j->resp.route[0] ? j->resp.route : "other", j->method, j->resp.status, took);

        cp_log_ctx log = { .component = "api", .request_id = j->request_id, .method = j->method,
                           .peer = j->peer, .account = j->resp.account_id[0] ? j->resp.account_id : NULL };
        (void) snprintf(status, sizeof status, "%d", j->resp.status);
        (void) snprintf(ms, sizeof ms, "%.3f", took * 1000);
        cp_log_level level = j->resp.status >= 500 ? CP_LOG_ERROR :
                             strcmp(j->method, "GET") != 0 || j->resp.status >= 400 ? CP_LOG_INFO : CP_LOG_DEBUG;
        cp_log_kv(&log, level, "api request", "path", j->path, "route", j->resp.route, "status", status, "user",
                  j->resp.user_id, "took_ms", ms, "detail", j->resp.detail[0] ? j->resp.detail : NULL, NULL);
        api_job_free(j);
        api_finish(h);
}

static void handle_api(http_op *op) {
        mgmt_http *h = op->h;
        enum evhttp_cmd_type cmd = evhttp_request_get_command(op->req);
        const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(op->req);
        struct evkeyvalq *in = evhttp_request_get_input_headers(op->req);
        struct evbuffer *body = evhttp_request_get_input_buffer(op->req);

        add_cors(evhttp_request_get_output_headers(op->req));
        if (cmd == EVHTTP_REQ_OPTIONS) {          /* a CORS preflight */
                reply(op, HTTP_OK, "OK", "application/json; charset=UTF-8", "", 0);
                mgmt_metrics_http("preflight", "OPTIONS", HTTP_OK, 0);
                return;
        }

        if (h->closing) {
                reply_error(op, HTTP_SERVUNAVAIL, "Service Unavailable", "server is shutting down");
                mgmt_metrics_http("other", op->method, HTTP_SERVUNAVAIL, 0);
                return;
        }
        api_job *j = cp_xcalloc(1, sizeof *j);
        j->h = h;
        j->req = op->req;
        memcpy(j->request_id, op->request_id, sizeof j->request_id);
        memcpy(j->peer, op->peer, sizeof j->peer);
        memcpy(j->peer_ip, op->peer_ip, sizeof j->peer_ip);
        j->method = cp_xstrdup(op->method);
        j->path = cp_xstrdup(op->path);
        const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
        j->query = q ? cp_xstrdup(q) : NULL;
        const char *a = evhttp_find_header(in, "Authorization");
        j->authorization = a ? cp_xstrdup(a) : NULL;
        const char *ik = evhttp_find_header(in, "Idempotency-Key");
        j->idempotency_key = ik ? cp_xstrdup(ik) : NULL;
        j->body_len = body ? evbuffer_get_length(body) : 0;
        if (j->body_len > 0) {
                j->body = cp_xmalloc(j->body_len + 1);
                (void) evbuffer_copyout(body, j->body, j->body_len);
                j->body[j->body_len] = '\0';
        }
        j->started_ns = mgmt_metrics_now_ns();
        cp_api_response_init(&j->resp);

        int r = mgmt_workers_submit(h->workers, api_work, j, false);
        if (r < 0) {
                /* The database is too slow for the load: shed it. */
                reply_error(op, HTTP_SERVUNAVAIL, "Service Unavailable", "server is busy, try again later");
                mgmt_metrics_http("other", op->method, HTTP_SERVUNAVAIL, 0);
                cp_log_kv(&op->log, CP_LOG_WARN, "api request refused: worker queue full", "path", op->path,
                          NULL);
                api_job_free(j);
                return;
        }
        h->pending++;
}

void mgmt_http_set_api(mgmt_http *h, cp_api *api, mgmt_workers *workers, mgmt_http_post_fn post,
                       void *post_userdata) {
        h->api = api;
        h->workers = workers;
        h->post = post;
        h->post_userdata = post_userdata;
}

unsigned mgmt_http_pending(const mgmt_http *h) {
        return h ? h->pending : 0;
}

void mgmt_http_on_idle(mgmt_http *h, void (*fn)(void *userdata), void *userdata) {
        h->on_idle = fn;
        h->idle_userdata = userdata;
}

/* Use the caller's X-Request-Id when it is short and plain, else a new id. */
static void pick_request_id(http_op *op) {
        const char *in = evhttp_find_header(evhttp_request_get_input_headers(op->req), "X-Request-Id");
        size_t n = in ? strlen(in) : 0;

        if (n > 0 && n < sizeof op->request_id && strspn(in, "abcdefghijklmnopqrstuvwxyz"
                                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n) {
                memcpy(op->request_id, in, n + 1);
                return;
        }
        char id[CP_ID_LEN + 1];
        cp_id_new(id);
        memcpy(op->request_id, id, sizeof id);
}

/* Every line of header name in order, joined with ", " (a proxy may add
 * its X-Forwarded-For as a line of its own); NULL when there is none.
 * The caller frees it. */
static char *joined_header(struct evkeyvalq *in, const char *name) {
        struct evkeyval *kv;
        size_t total = 0;
        char *out, *p;

        for (kv = in->tqh_first; kv; kv = kv->next.tqe_next)
                if (strcasecmp(kv->key, name) == 0)
                        total += strlen(kv->value) + 2;
        if (total == 0)
                return NULL;
        out = p = cp_xmalloc(total + 1);
        for (kv = in->tqh_first; kv; kv = kv->next.tqe_next)
                if (strcasecmp(kv->key, name) == 0) {
                        size_t n = strlen(kv->value);
                        if (p != out) {
                                memcpy(p, ", ", 2);
                                p += 2;
                        }
                        memcpy(p, kv->value, n);
                        p += n;
                }
        *p = '\0';
        return out;
}

/* ---- the connection cap ------------------------------------------------------------ */

static void conn_key(const struct evhttp_connection *conn, char out[32]) {
        (void) snprintf(out, 32, "%p", (const void *) conn);
}

static void addr_count(mgmt_http *h, const char *addr, intptr_t delta) {
        intptr_t n = (intptr_t) mgmt_strmap_get(h->per_addr, addr) + delta;

        if (n > 0)
                (void) mgmt_strmap_put(h->per_addr, addr, (void *) n);
        else
                (void) mgmt_strmap_remove(h->per_addr, addr);
}

static void on_conn_close(struct evhttp_connection *conn, void *arg) {
        mgmt_http *h = arg;
        char key[32];

        conn_key(conn, key);
        char *addr = mgmt_strmap_remove(h->conns, key);
        if (addr) {
                addr_count(h, addr, -1);
                free(addr);
        }
        mgmt_limits_connections(MGMT_LISTENER_HTTP, (int64_t) mgmt_strmap_size(h->conns));
}

/* A request on conn from the TCP peer addr: counts a connection seen for
 * the first time; false when that would be one more than
 * --http-max-connections, or than a sixteenth of it (at least 1) from one
 * address (one client cannot take every slot). A trusted proxy
 * (--trusted-proxies) carries many clients: only the total applies. */
static bool conn_admit(mgmt_http *h, struct evhttp_connection *conn, const char *addr) {
        char key[32];

        if (!conn)
                return true;
        conn_key(conn, key);
        if (mgmt_strmap_get(h->conns, key))
                return true;
        if (h->max_connections > 0) {
                int64_t per_addr = h->max_connections / 16 > 1 ? h->max_connections / 16 : 1;
                if ((int64_t) mgmt_strmap_size(h->conns) >= h->max_connections)
                        return false;
                if (!mgmt_realip_trusts(h->realip, addr) &&
                    (intptr_t) mgmt_strmap_get(h->per_addr, addr) >= per_addr)
                        return false;
        }
        (void) mgmt_strmap_put(h->conns, key, cp_xstrdup(addr));
        addr_count(h, addr, 1);
        evhttp_connection_set_closecb(conn, on_conn_close, h);
        mgmt_limits_connections(MGMT_LISTENER_HTTP, (int64_t) mgmt_strmap_size(h->conns));
        return true;
}

void mgmt_http_set_limits(mgmt_http *h, struct mgmt_limits *limits, const struct mgmt_realip *realip,
                          int64_t max_connections) {
        h->limits = limits;
        h->realip = realip;
        h->max_connections = max_connections;
}

static void dispatch(struct evhttp_request *req, void *userdata) {
        http_op op = { .h = userdata, .req = req };
        struct evhttp_connection *conn = evhttp_request_get_connection(req);
        const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
        enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
        const struct route *route = NULL;
        char tcp_ip[64] = "";

        pick_request_id(&op);
        op.method = method_name(cmd);
        op.path = uri ? evhttp_uri_get_path(uri) : NULL;
        if (!op.path || !*op.path)
                op.path = "/";
        if (conn) {
                char *addr = NULL;
                ev_uint16_t port = 0;
                evhttp_connection_get_peer(conn, &addr, &port);
                (void) snprintf(op.peer, sizeof op.peer, "%s:%u", addr ? addr : "?", (unsigned) port);
                (void) snprintf(op.peer_ip, sizeof op.peer_ip, "%s", addr ? addr : "");
                (void) snprintf(tcp_ip, sizeof tcp_ip, "%s", addr ? addr : "");
                struct evkeyvalq *in = evhttp_request_get_input_headers(req);
                _cleanup_free_ char *xff = op.h->realip ? joined_header(in, "X-Forwarded-For") : NULL;
                mgmt_realip_apply_headers(op.h->realip, xff, evhttp_find_header(in, "X-Real-IP"), op.peer_ip,
                                          sizeof op.peer_ip);
        }
        op.log = (cp_log_ctx) { .component = "http", .request_id = op.request_id, .method = op.method,
                                .peer = op.peer };

        if (!conn_admit(op.h, conn, tcp_ip)) {
                /* Over --http-max-connections: this connection is not
                 * kept. Probes are still answered (a pod at its cap must
                 * not be restarted for it). */
                (void) evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
                bool probe = strcmp(op.path, "/healthz") == 0 || strcmp(op.path, "/readyz") == 0 ||
                             strcmp(op.path, "/metrics") == 0;
                if (!probe) {
                        mgmt_limits_connection_refused(MGMT_LISTENER_HTTP);
                        reply_error(&op, HTTP_SERVUNAVAIL, "Service Unavailable", "too many connections");
                        mgmt_metrics_http("other", op.method, HTTP_SERVUNAVAIL, 0);
                        cp_log_kv(&op.log, CP_LOG_WARN, "http request refused: too many connections", "path",
                                  op.path, NULL);
                        return;
                }
        }
        if (op.h->api && cp_api_owns_path(op.path)) {
                handle_api(&op);
                return;         /* answered later, from a worker's result */
        }
        for (size_t i = 0; i < ELEMENTSOF(routes); i++)
                if (strcmp(routes[i].path, op.path) == 0) {
                        route = &routes[i];
                        break;
                }
        if (!route)
                reply_error(&op, HTTP_NOTFOUND, "Not Found", "not found");
        else if (!(route->methods & cmd)) {
                (void) evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
                reply_error(&op, HTTP_BADMETHOD, "Method Not Allowed", "method not allowed");
        } else
                route->handler(&op);

        char status[8];
        (void) snprintf(status, sizeof status, "%d", op.status);
        cp_log_kv(&op.log, CP_LOG_DEBUG, "http request", "path", op.path, "status", status, NULL);
}

int mgmt_http_new(struct event_base *base, const char *address, int port, mgmt_ready *ready,
                  mgmt_http **ret, cp_error *reterr) {
        mgmt_http *h = cp_xcalloc(1, sizeof *h);
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char host[256];

        h->ready = ready;
        h->conns = mgmt_strmap_new();
        h->per_addr = mgmt_strmap_new();
        h->http = evhttp_new(base);
        if (!h->http) {
                mgmt_strmap_free(h->conns);
                mgmt_strmap_free(h->per_addr);
                free(h);
                return cp_error_set(reterr, -ENOMEM, "cannot create the HTTP server");
        }
        /* Every method reaches the router, which answers 405 itself. */
        evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                   EVHTTP_REQ_PATCH);
        evhttp_set_timeout(h->http, 30);
        /* An Authorization value of up to 16 KiB (an IdP token with many
         * group claims) plus the other headers; the API refuses longer
         * values with 401, a larger header block gets libevent's error. */
        evhttp_set_max_headers_size(h->http, 32 * 1024);
        evhttp_set_max_body_size(h->http, 1024 * 1024);
        evhttp_set_gencb(h->http, dispatch, h);

        /* evhttp wants a bare IPv6 address, without brackets. */
        size_t n = strlen(address);
        if (n >= 2 && address[0] == '[' && address[n - 1] == ']')
                (void) snprintf(host, sizeof host, "%.*s", (int) (n - 2), address + 1);
        else
                (void) snprintf(host, sizeof host, "%s", address);
        h->sock = evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t) port);
        if (!h->sock) {
                int e = errno ? errno : EADDRINUSE;
                evhttp_free(h->http);
                mgmt_strmap_free(h->conns);
                mgmt_strmap_free(h->per_addr);
                free(h);
                return cp_error_set(reterr, -e, "cannot listen for HTTP on %s port %d: %s", address, port,
                                    strerror(e));
        }
        h->port = port;
        if (getsockname(evhttp_bound_socket_get_fd(h->sock), (struct sockaddr *) &ss, &len) == 0) {
                if (ss.ss_family == AF_INET)
                        h->port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
                else if (ss.ss_family == AF_INET6)
                        h->port = ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
        }
        *ret = h;
        return 0;
}

int mgmt_http_port(const mgmt_http *h) {
        return h->port;
}

void mgmt_http_draining(mgmt_http *h) {
        if (h) {
                h->closing = true;
                mgmt_metrics_ready_draining();
        }
}

void mgmt_http_stop_accepting(mgmt_http *h) {
        if (h) {
                h->closing = true;
                mgmt_metrics_ready_draining();
        }
        if (h && h->sock) {
                evhttp_del_accept_socket(h->http, h->sock);
                h->sock = NULL;
        }
}

static void free_value(const char *key, void *value, void *userdata) {
        (void) key;
        (void) userdata;
        free(value);
}

mgmt_http *mgmt_http_free(mgmt_http *h) {
        if (!h)
                return NULL;
        if (h->http)
                evhttp_free(h->http);   /* may run on_conn_close */
        mgmt_strmap_foreach(h->conns, free_value, NULL);
        mgmt_strmap_free(h->conns);
        mgmt_strmap_free(h->per_addr);
        free(h);
        return NULL;
}

void mgmt_http_set_degraded(mgmt_http *h, mgmt_http_degraded_fn fn, void *userdata) {
        h->degraded = fn;
        h->degraded_userdata = userdata;
}
