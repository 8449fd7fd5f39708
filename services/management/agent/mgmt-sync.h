/*
 * mgmt-sync.h: the Sync RPC (server streaming) and the registry of open
 * streams with the fan-out of network maps to them.
 *
 * One mgmt_sync per process, owned by the manager. Its registry (peer id
 * -> the peer's current stream, account id -> the account's streams)
 * belongs to the gRPC CQ thread: only that thread reads or changes it,
 * and every stream's send queue with it. Work that may block (opening
 * the envelope, PostgreSQL, building and sealing maps) runs on workers
 * and comes back to the CQ thread as a post. See services/management/
 * README.md ("Sync streams") and docs/protocol.md ("Sync").
 *
 * Entry points from other threads (all non-blocking; they post to the CQ
 * thread):
 *   mgmt_sync_local_change()     after any change this process committed
 *                                (registration, a login or meta update that
 *                                bumped the serial, login expiry): announced
 *                                to the other replicas, then pushed here
 *   mgmt_sync_account_changed()  push here only (no announcement)
 *   mgmt_sync_account_hint()     a bus message "account A changed" from
 *                                any replica (its serial is not trusted):
 *                                the serial is read from the database and
 *                                pushed here when it differs from what the
 *                                streams have
 *   mgmt_sync_peer_deleted()     Logout: the peer's stream gets its last
 *                                map and ends
 *   mgmt_sync_check_serials()    periodic: notice serials moved elsewhere
 *   mgmt_sync_expire_logins()    periodic: mark expired SSO logins
 *   mgmt_sync_refresh_credentials()  periodic: TURN/relay credential refresh
 *   mgmt_sync_retry_disconnects()    periodic: fenced disconnects that failed
 *   mgmt_sync_end_key()          a server key was retired: its streams end
 *   mgmt_sync_reconnect_all()    this replica's sessions were taken away
 *                                (it was reaped): streams end, agents
 *                                reconnect
 *   mgmt_sync_drain()            shutdown: end every stream (spread over a
 *                                window by mgmt_sync_drain_step())
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "mgmt-grpc.h"

typedef struct mgmt_sync mgmt_sync;
struct mgmt_agent;
struct mgmt_maps;

/* agent and maps are borrowed and outlive the mgmt_sync.
 * max_setups caps Sync opens in progress (NB_MAX_CONCURRENT_SYNCS; < 0 =
 * no cap). */
mgmt_sync *mgmt_sync_new(const struct mgmt_agent *agent, struct mgmt_maps *maps,
                         int max_setups);
/* After the gRPC server has stopped (no stream is left). Accepts NULL;
 * returns NULL. */
mgmt_sync *mgmt_sync_free(mgmt_sync *s);

/* For mgmt_grpc_options.on_start: records the server to post to. */
void mgmt_sync_on_grpc_start(mgmt_grpc *g, void *userdata);

/* CQ thread: the Sync method's on_call / on_close (mgmt-agent.c). */
void mgmt_sync_on_call(mgmt_sync *s, mgmt_call *c);
void mgmt_sync_on_close(mgmt_sync *s, mgmt_call *c, bool cancelled);

/* Any thread: account_id changed and is now at serial (0 = unknown).
 * Rebuilds the account's map once and pushes every stream of the account
 * in this process its new map; bursts coalesce to one rebuild at a time
 * per account, and a stream whose previous map is still unsent gets only
 * the newest. */
void mgmt_sync_account_changed(mgmt_sync *s, const char *account_id, int64_t serial);

/* Any thread: a hint that account_id may have changed (a bus message,
 * this process's own announcements included). Whatever serial the
 * message carried is not trusted and not taken: the account's serial is
 * read from the database on a worker, and its streams here get a new map
 * only when that serial differs from the one they have; a serial below
 * theirs (a restored database) is raised past it first
 * (cp_store_account_serial_raise), so the agents take the new map. An
 * account without streams here costs nothing; hints that come while a
 * read or rebuild for the account runs make one more read after it. */
void mgmt_sync_account_hint(mgmt_sync *s, const char *account_id);
/* The same with the message's send time (the publisher's Unix ms; 0 =
 * absent), the start of netbird_cp_sync_delivery_seconds{origin="bus"}. */
void mgmt_sync_account_hint_sent(mgmt_sync *s, const char *account_id, int64_t sent_ms);

/* Called, on the thread that committed the change, for every local change
 * (mgmt_sync_local_change, mgmt_sync_peer_deleted); must not block. The
 * manager publishes it on the bus. */
typedef void (*mgmt_sync_announce_fn)(const char *account_id, int64_t serial, void *userdata);

/* Before the gRPC server starts. */
void mgmt_sync_set_announce(mgmt_sync *s, mgmt_sync_announce_fn fn, void *userdata);

/* Any thread: a change this process committed: the announce hook, then
 * mgmt_sync_account_changed(). */
void mgmt_sync_local_change(mgmt_sync *s, const char *account_id, int64_t serial);

/* Any thread: peer_id was deleted (Logout). msg[0..len) is its last
 * SyncResponse, packed but not sealed (copied); the peer's stream, if it
 * has one here, seals it with the stream's own key pair, sends it and
 * ends with OK. Also does
 * mgmt_sync_local_change(account_id, serial). */
void mgmt_sync_peer_deleted(mgmt_sync *s, const char *account_id, const char *peer_id, const void *msg,
                            size_t len, int64_t serial);

/* Any thread: re-reads, in one query on a worker, the serials of the
 * accounts that have streams in this process, and pushes new maps to the
 * streams of every account whose serial differs from the one its streams
 * have (as mgmt_sync_account_hint(), a serial that went back included):
 * a change committed elsewhere (another replica, an API,
 * an operator in psql who bumps network_serial) reaches connected peers.
 * The manager calls it every --serial-check-interval and when the bus
 * (re)subscribes. A call while a check runs makes one more check run after
 * it; a full worker queue makes the call a no-op (the next tick retries). */
void mgmt_sync_check_serials(mgmt_sync *s);

/* Any thread: on a worker, marks every peer whose SSO login expired
 * (cp_store_expire_logins: one statement, safe with every replica doing
 * the same at once; no timer state lives in any process) and pushes new
 * maps, with the expired peers in offlinePeers, to the streams of each
 * account it changed. On the same beat it deletes the ephemeral peers
 * disconnected for --ephemeral-peer-lifetime (cp_store_ephemeral_sweep,
 * each peer by one replica) and announces each account it changed. The manager calls it every
 * --login-expiry-check-interval. A check still running (or a full worker
 * queue) makes the call a no-op. */
void mgmt_sync_expire_logins(mgmt_sync *s);

/* Credential refresh (netbird-protocol.md section 1.5). When time-based
 * TURN credentials or relay tokens are configured, every open stream gets,
 * mgmt_netconf_refresh_ms() (3/4 of the shortest such TTL) after its
 * previous credentials were made (the first message, then each refresh),
 * a SyncResponse with only netbirdConfig: turns (time-based) and relay
 * (when configured), sealed on a worker. It has its own per-stream slot,
 * sent before a pending map, so map coalescing never drops it. The
 * streams wait on one list sorted by due time; no per-stream timer.
 *
 * mgmt_sync_refresh_tick_ms(): how often the manager should call
 * mgmt_sync_refresh_credentials() (a quarter of the interval, 100 ms to
 * 1 s); 0 = nothing expires, no timer needed.
 * mgmt_sync_refresh_credentials(): any thread; posts one scan of the
 * streams that are due to the CQ thread. */
int64_t mgmt_sync_refresh_tick_ms(const mgmt_sync *s);
void mgmt_sync_refresh_credentials(mgmt_sync *s);

/* Any thread: retries the fenced disconnects that failed (PostgreSQL
 * unreachable when the stream ended) and are due: 1 s after the failure,
 * doubling to 30 s, until each lands or is fenced off. The manager calls
 * it every second. Left over at shutdown, they are covered by the
 * replica's deregistration (which marks every session it still owns
 * disconnected) or, failing that, by the others reaping it. */
void mgmt_sync_retry_disconnects(mgmt_sync *s);

/* Any thread: ends every stream with UNAVAILABLE "session lost on this
 * server, please reconnect" and keeps serving: agents reconnect (here or
 * elsewhere) and their fenced connects take the rows back. For a replica
 * that learns it was reaped (its sessions were marked disconnected while
 * it was cut off from the database). */
void mgmt_sync_reconnect_all(mgmt_sync *s);

/* Any thread: the server key pub_b64 was retired (a rotation's grace
 * period ended, or a forced rotation). The streams sealed with it end
 * with UNAVAILABLE, so their agents fetch the current key and reconnect
 * instead of going on with a retired (perhaps leaked) key. */
void mgmt_sync_end_key(mgmt_sync *s, const char *pub_b64);

/* Any thread: shutdown began. Every stream ends with UNAVAILABLE (agents
 * reconnect, to another replica when there is one) and its fenced
 * disconnect runs before the server reports it has stopped; opens still
 * in progress end the same way when they complete. window_ms <= 0: all
 * at once. Otherwise the endings are spread evenly (in random order) over
 * window_ms, one slice per mgmt_sync_drain_step(), which the caller runs
 * on a timer (every 50 ms or so) until it returns false; a step at or
 * past the window's end ends every stream left. Until then the streams
 * not yet ended keep getting new maps. */
void mgmt_sync_drain(mgmt_sync *s, int64_t window_ms);
/* Any thread: posts one drain step; false once no stream is left to end
 * (then the timer can stop). */
bool mgmt_sync_drain_step(mgmt_sync *s);
