/*
 * mgmt-manager.h: the Manager of the management server (style.md habit 11).
 *
 * One mgmt_manager owns everything the server process has: the event loop,
 * the store pool, the server's WireGuard key pair, the worker pool, the
 * readiness checker, the gRPC server (with the agent protocol) and the
 * HTTP listener. It is built by mgmt_manager_new(), driven by
 * mgmt_manager_run() on the thread that built it (the loop thread) and
 * torn down by mgmt_manager_free(). Nothing else is global apart from the
 * logger's settings.
 *
 * Threads: the loop thread owns the manager. Other threads (the gRPC CQ
 * thread, the readiness checker) never touch the event_base; they hand
 * work over with mgmt_manager_post(), which queues a function and wakes
 * the loop through an eventfd.
 *
 * Shutdown: SIGTERM or SIGINT turns the HTTP side to draining (/readyz
 * 503, REST 503; the listener closes when the manager is freed), asks gRPC
 * to stop accepting, ends the Sync streams spread over
 * config->drain_window_ms (a loop timer steps the drain) and gives
 * in-flight calls config->shutdown_timeout_ms to end, after which they are
 * cancelled. When gRPC reports it has stopped the loop exits. A second
 * signal cancels in-flight calls at once.
 */
#pragma once

#include <stdint.h>

#include "cp/config.h"
#include "cp/error.h"
#include "mgmt-netconf.h"
#include "mgmt-tls.h"

typedef struct mgmt_manager mgmt_manager;

typedef void (*mgmt_post_fn)(mgmt_manager *m, void *userdata);

/* Opens the store, applies migrations, loads (or creates) the server key
 * pair with data_key (the raw DataStoreEncryptionKey, only read during
 * the call), starts the workers, binds both listeners and starts the gRPC
 * thread; logs the "listening" lines. cfg is borrowed and must outlive the
 * manager; tls (may be NULL) and netconf are taken over, even on failure.
 * -EKEYREJECTED: data_key is not the key the stored server key was
 * encrypted with (a configuration error). */
int mgmt_manager_new(const cp_config *cfg, mgmt_tls *tls, mgmt_netconf *netconf, const uint8_t data_key[32],
                     mgmt_manager **ret, cp_error *reterr);

/* Runs the event loop until shutdown completes. Returns 0, or a negative
 * errno when shutdown did not complete in time. */
int mgmt_manager_run(mgmt_manager *m);

/* Any thread: runs fn(m, userdata) on the loop thread soon. Functions still
 * queued when the manager is freed are dropped without running. */
void mgmt_manager_post(mgmt_manager *m, mgmt_post_fn fn, void *userdata);

/* Accepts NULL; returns NULL. */
mgmt_manager *mgmt_manager_free(mgmt_manager *m);

/* Any thread: this replica committed proxy mapping changes up to seq
 * (proxy_mapping_changes): its ProxyService streams read them, and the
 * other replicas hear of it on the bus ("~proxy", serial = seq). For the
 * REST API's proxy hook. */
void mgmt_manager_proxy_changed(mgmt_manager *m, int64_t seq);
/* Any thread: a proxy access token was revoked or deleted here: the
 * streams of every replica re-check their tokens ("~proxytok"). */
void mgmt_manager_proxy_token_revoked(mgmt_manager *m, const char *token_id);
