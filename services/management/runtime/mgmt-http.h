/*
 * mgmt-http.h: the plain-HTTP listener (libevent evhttp): probes,
 * /metrics and the REST API (cp/api.h) under /api.
 *
 * Runs entirely on the manager's event loop thread: every function here
 * must be called from that thread. Requests are dispatched through a route
 * table (path, allowed methods, handler); an unknown path answers 404 and a
 * known path with another method 405, both with NetBird's JSON error body
 * {"message": "...", "code": N}.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/api.h"
#include "cp/error.h"
#include "mgmt-ready.h"
#include "mgmt-work.h"

struct event_base;
typedef struct mgmt_http mgmt_http;

/* Binds address:port (port 0 picks a free one) on base. ready is borrowed
 * and must outlive the listener. */
int mgmt_http_new(struct event_base *base, const char *address, int port, mgmt_ready *ready,
                  mgmt_http **ret, cp_error *reterr);
/* /readyz asks this (on the loop thread) when the store is ready: NULL
 * when every optional part works, else the name of the part that does not
 * (e.g. "bus") with why[0..n) filled; /readyz then answers 200
 * {"status":"degraded",...}. */
typedef const char *(*mgmt_http_degraded_fn)(char *why, size_t n, void *userdata);
void mgmt_http_set_degraded(mgmt_http *h, mgmt_http_degraded_fn fn, void *userdata);

/* The REST API under /api: requests are handled by api on the workers
 * (it blocks on PostgreSQL) and answered back on the loop thread, to
 * which post(fn, arg, post_userdata) must hand fn(arg) (any thread).
 * Without this call /api answers 404. api and workers are borrowed. */
typedef void (*mgmt_http_post_fn)(void (*fn)(void *arg), void *arg, void *userdata);
void mgmt_http_set_api(mgmt_http *h, cp_api *api, mgmt_workers *workers, mgmt_http_post_fn post,
                       void *post_userdata);
/* Limits (docs/ops.md "Limits"): the tables the REST API takes from are
 * given to it by the manager (cp_api_options); here the client's address
 * for them (the real one when the peer is one of realip's trusted
 * proxies), the count of refusals, and the connection cap: at most
 * max_connections connections that sent a request (0 = no limit); a
 * request on one more is answered 503 "too many connections" and its
 * connection closed. /healthz, /readyz and /metrics are answered over
 * the cap too (probes), on a connection then closed. limits and realip
 * are borrowed (may be NULL). */
struct mgmt_limits;
struct mgmt_realip;
void mgmt_http_set_limits(mgmt_http *h, struct mgmt_limits *limits, const struct mgmt_realip *realip,
                          int64_t max_connections);

/* REST requests handed to workers and not yet answered. */
unsigned mgmt_http_pending(const mgmt_http *h);
/* Called on the loop thread when the pending count drops to 0 (shutdown
 * waits for it before it frees the workers and the listener). */
void mgmt_http_on_idle(mgmt_http *h, void (*fn)(void *userdata), void *userdata);

/* The port actually bound. */
int mgmt_http_port(const mgmt_http *h);
/* Shutdown began: the listener stays open, /healthz and /metrics are
 * served as before, /readyz answers 503 (failed "draining") and new REST
 * requests 503 "server is shutting down"; requests already on the workers
 * finish. */
void mgmt_http_draining(mgmt_http *h);
/* Like mgmt_http_draining(), and closes the listening socket; open
 * connections stay until mgmt_http_free. */
void mgmt_http_stop_accepting(mgmt_http *h);
/* Closes every connection and frees. Accepts NULL; returns NULL. */
mgmt_http *mgmt_http_free(mgmt_http *h);
