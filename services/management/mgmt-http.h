/*
 * mgmt-http.h: the plain-HTTP listener (libevent evhttp) for probes, and
 * later /metrics and the REST API.
 *
 * Runs entirely on the manager's event loop thread: every function here
 * must be called from that thread. Requests are dispatched through a route
 * table (path, allowed methods, handler); an unknown path answers 404 and a
 * known path with another method 405, both with NetBird's JSON error body
 * {"message": "...", "code": N}.
 */
#pragma once

#include <stddef.h>

#include "cp/error.h"
#include "mgmt-ready.h"

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

/* The port actually bound. */
int mgmt_http_port(const mgmt_http *h);
/* Closes the listening socket; open connections stay until mgmt_http_free. */
void mgmt_http_stop_accepting(mgmt_http *h);
/* Closes every connection and frees. Accepts NULL; returns NULL. */
mgmt_http *mgmt_http_free(mgmt_http *h);
