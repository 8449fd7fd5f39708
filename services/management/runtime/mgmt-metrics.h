/*
 * mgmt-metrics.h: the management server's metrics (docs/metrics.md), in
 * the process-wide registry of common/metrics, served at GET /metrics.
 *
 * The recording functions are what the hot paths call: each is a few
 * relaxed atomics on handles made once (the first call of any function
 * here makes every family and child), any thread, no allocation, no lock.
 *
 * The watch functions add collectors that read a component's own numbers
 * at each scrape (the store pool, the bus); unwatch before freeing it.
 */
#pragma once

#include <grpc/status.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp/strbuf.h"

typedef struct cp_store cp_store;
typedef struct cp_bus cp_bus;
typedef struct mgmt_replica mgmt_replica;
typedef struct cp_jwt cp_jwt;
typedef struct mgmt_ready mgmt_ready;

/* Makes every family (idempotent; the other functions call it too). */
void mgmt_metrics_init(void);

/* Appends the text exposition of the process's registry. Any thread
 * (mgmt-http.c calls it on the loop thread); the collectors it runs read
 * relaxed counters or take the store pool's lock briefly. */
void mgmt_metrics_render(cp_strbuf *out);

/* ---- Sync (mgmt-sync.c, CQ thread) ---------------------------------------------- */

/* A stream entered (+1) or left (-1) the registry. */
void mgmt_metrics_sync_streams(int delta);
/* Shutdown ended n Sync streams (the drain, spread over --drain-window). */
void mgmt_metrics_sync_drained(unsigned n);
/* A ProxyService mapping stream registered its proxy (+1) or ended (-1). */
void mgmt_metrics_proxy_streams(int delta);

typedef enum mgmt_sync_open_outcome {
        MGMT_SYNC_OPEN_OK,              /* registered, first map queued */
        MGMT_SYNC_OPEN_STALE,           /* fenced off: a newer stream owns the peer */
        MGMT_SYNC_OPEN_CLOSED,          /* the client left or shutdown began during the open */
        MGMT_SYNC_OPEN_FAILED,          /* ended with a non-OK status */
} mgmt_sync_open_outcome;

/* One Sync open ended its setup; status is used for MGMT_SYNC_OPEN_FAILED. */
void mgmt_metrics_sync_open(mgmt_sync_open_outcome outcome, grpc_status_code status);

/* Monotonic nanoseconds, to time a fan-out. */
int64_t mgmt_metrics_now_ns(void);
/* One account's fan-out finished: rebuild, encode, seal and queue for
 * every stream of the account here; maps = the maps queued. */
void mgmt_metrics_fanout(int64_t started_ns, uint64_t maps);
/* netbird_cp_sync_delivery_seconds{origin}: one fan-out's last map was
 * written (any thread); t0_ns is the monotonic time of its change (the
 * commit here, or mgmt_metrics_bus_t0_ns() of a bus hint; bus picks the
 * label). */
void mgmt_metrics_sync_delivery(bool bus, int64_t t0_ns);
/* A bus message's send time (the publisher's Unix ms; 0 = absent: now) on
 * this process's monotonic clock, lag clamped to [0, 1 h]. Never 0. */
int64_t mgmt_metrics_bus_t0_ns(int64_t sent_ms);

/* What a bus message about an account caused (mgmt-sync.c, CQ thread):
 * nothing (no stream of the account here), one more read after the one
 * in flight (coalesced), or a read of the account's serial. */
typedef enum mgmt_sync_hint_outcome {
        MGMT_SYNC_HINT_NO_STREAMS,
        MGMT_SYNC_HINT_COALESCED,
        MGMT_SYNC_HINT_READ,
        MGMT_SYNC_HINT_N_
} mgmt_sync_hint_outcome;
void mgmt_metrics_sync_hint(mgmt_sync_hint_outcome outcome);

/* What a hint's read of an account's serial found (a bus message or the
 * periodic serial check): the streams had it (no rebuild), it differed
 * (rebuilt and pushed), or it was below what the streams had (a restored
 * database: raised past it, rebuilt and pushed; counted for any fan-out). */
typedef enum mgmt_sync_read_result {
        MGMT_SYNC_READ_UNCHANGED,
        MGMT_SYNC_READ_CHANGED,
        MGMT_SYNC_READ_WENT_BACK,
        MGMT_SYNC_READ_N_
} mgmt_sync_read_result;
void mgmt_metrics_sync_serial_read(mgmt_sync_read_result result);

/* ---- requests refused before their handler (agent/, proxy/; any thread) ------------- */

typedef enum mgmt_refused_reason {
        MGMT_REFUSED_SIZE,              /* over the method's size limit */
        MGMT_REFUSED_ENVELOPE,          /* EncryptedMessage or its wgPubKey malformed */
        MGMT_REFUSED_BOX,               /* the box did not open */
        MGMT_REFUSED_BUDGET,            /* decoding went over the per-call memory budget */
        MGMT_REFUSED_DECODE,            /* the message did not decode */
        MGMT_REFUSED_QUEUE,             /* the workers' queue (jobs or queued bytes) is full */
        _MGMT_REFUSED_MAX,
} mgmt_refused_reason;

/* One request refused; service is "agent" or "proxy". */
void mgmt_metrics_refused(const char *service, mgmt_refused_reason reason);

/* ---- Login (mgmt-agent.c, any thread) --------------------------------------------- */

/* One Login call's outcome; registration: it took the setup-key path. */
void mgmt_metrics_login(bool registration, grpc_status_code status);

/* ---- REST API (mgmt-http.c) -------------------------------------------------------- */

/* One REST request answered: route is the matched pattern ("other" when
 * none), so the label values stay bounded by the route table. */
void mgmt_metrics_http(const char *route, const char *method, int code, double seconds);

/* ---- the store pool (mgmt-manager.c) --------------------------------------------- */

/* Exports the pool of s (size, busy, idle) at each scrape; s is borrowed
 * until mgmt_metrics_unwatch_store(s) returns. One store at a time. */
void mgmt_metrics_watch_store(cp_store *s);
void mgmt_metrics_unwatch_store(cp_store *s);

/* ---- the bus (mgmt-manager.c, on the loop thread that owns the bus) ---------------- */

/* Exports the bus's counters at each scrape (and registers the bus
 * families: a replica without a bus shows none). bus is borrowed until
 * mgmt_metrics_unwatch_bus(bus) returns; call that before cp_bus_free().
 * Counters carry on across a new bus (unwatch folds the old one's in). */
/* The replica's heartbeat and reaping counters (mgmt_replica_get_stats),
 * read at each scrape; unwatch before mgmt_replica_stop(). */
void mgmt_metrics_watch_replica(mgmt_replica *r);
void mgmt_metrics_unwatch_replica(mgmt_replica *r);

void mgmt_metrics_watch_bus(const cp_bus *bus);
void mgmt_metrics_unwatch_bus(const cp_bus *bus);
/* From the bus's on_state callback. */
void mgmt_metrics_bus_state(bool connected);
/* From on_message: sent_ms is the publisher's Unix ms (0 = absent: not
 * observed). The lag is our wall clock minus sent_ms, so replica clock
 * skew adds to it; negative values count as 0. */
void mgmt_metrics_bus_message(int64_t sent_ms);

/* ---- geolocation (mgmt-manager.c) ------------------------------------------------------ */

/* netbird_cp_geolocation_databases{database="mmdb"|"geonames"}: 1 when that
 * database of the datadir is open, 0 when absent. Set once at start. */
void mgmt_metrics_geo(bool mmdb, bool geonames);

/* ---- the IdP token validator (mgmt-manager.c) --------------------------------------- */

/* Exports cp_jwt_get_stats(j) at each scrape (and registers the jwt
 * families: a replica without an IdP shows none). j is borrowed until
 * mgmt_metrics_unwatch_jwt(j) returns; call that before cp_jwt_free().
 * Both accept NULL. */
void mgmt_metrics_watch_jwt(cp_jwt *j);
void mgmt_metrics_unwatch_jwt(cp_jwt *j);

/* ---- readiness (mgmt-manager.c) ------------------------------------------------------ */

/* netbird_cp_ready (1 when GET /readyz answers 200, else 0) and
 * netbird_cp_ready_failing{check} (1 for the check that fails now: "store",
 * "migrations", a gate's name or "draining"; 0 for the others, every one
 * present from the first scrape), read from mgmt_ready_get() and the
 * draining flag at each scrape. r is borrowed until
 * mgmt_metrics_unwatch_ready(r) returns; call that before
 * mgmt_ready_stop(). Both accept NULL. */
void mgmt_metrics_watch_ready(mgmt_ready *r);
void mgmt_metrics_unwatch_ready(mgmt_ready *r);
/* Any thread (mgmt-http.c, from mgmt_http_draining()): /readyz answers
 * 503 "draining" from now on, so netbird_cp_ready is 0 and
 * failing{check="draining"} 1. Not undone (the process is ending). */
void mgmt_metrics_ready_draining(void);
