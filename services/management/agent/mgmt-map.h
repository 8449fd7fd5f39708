/*
 * mgmt-map.h: network maps as the Sync streams need them, and nothing
 * more. This is the one seam between the streams (mgmt-sync.c) and the
 * network-map code (common/netmap): "the packed SyncResponse of peer P of
 * account A at the newest serial, optionally with this NetbirdConfig".
 *
 * A mgmt_map is one account at one serial: an immutable snapshot read
 * from PostgreSQL in one consistent read. mgmt_maps keeps the newest one
 * per account, so a burst of Sync opens and a fan-out to every connected
 * peer of the account share one read and one precomputation; a new serial
 * makes the next mgmt_maps_get() read again.
 *
 * Threads: everything here may be called from any thread (workers); a
 * mgmt_map is immutable and reference-counted atomically. Encoding uses a
 * buffer per thread, freed when the thread exits.
 *
 * Staleness: a cached map is reused while the account's serial has not
 * moved. Login expiry is evaluated when the map is read, so a peer whose
 * SSO login runs out moves to others' offlinePeers with the next serial
 * (NetBird's expiry job bumps the serial when it flags peers).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/config.h"
#include "cp/crypto-box.h"
#include "cp/error.h"
#include "cp/store.h"
#include "management.pb-c.h"
#include "mgmt-arena.h"
#include "mgmt-netconf.h"

typedef struct mgmt_maps mgmt_maps;
typedef struct mgmt_map mgmt_map;

/* store, cfg and netconf are borrowed and outlive the cache
 * (cfg->dns_domain is the FQDN suffix unless the account overrides it;
 * netconf gives PeerConfig.sshConfig.jwtConfig). */
mgmt_maps *mgmt_maps_new(cp_store *store, const cp_config *cfg, const mgmt_netconf *netconf);
/* Drops the cache's references; maps still held elsewhere live on.
 * Accepts NULL; returns NULL. */
mgmt_maps *mgmt_maps_free(mgmt_maps *m);

/* The account's map at its newest serial: reads the serial, returns the
 * cached map when it matches, else reads and precomputes the account.
 * *ret is a new reference (mgmt_map_unref). -ENOENT: no such account;
 * store errors otherwise. */
int mgmt_maps_get(mgmt_maps *m, const char *account_id, mgmt_map **ret, cp_error *reterr);
/* The same for a caller that has just read the account's serial (a Sync
 * open): the cached map when it is at serial or newer, without asking
 * the database again; else a read as above. */
int mgmt_maps_get_at(mgmt_maps *m, const char *account_id, int64_t serial, mgmt_map **ret, cp_error *reterr);

/* The cached snapshot of account_id at serial or newer, as a new
 * reference, or NULL; never reads the database (for the REST API's
 * peers routes, cp_api_options.snapshot_peek). */
struct cp_netmap_account *mgmt_maps_peek(mgmt_maps *m, const char *account_id, int64_t serial);

mgmt_map *mgmt_map_ref(mgmt_map *map);
/* Accepts NULL; returns NULL. */
mgmt_map *mgmt_map_unref(mgmt_map *map);
/* accounts.network_serial the map was read at. */
int64_t mgmt_map_serial(const mgmt_map *map);

/* The SyncResponse (plaintext protobuf, not sealed) for peer_id: the full
 * NetworkMap with its serial and *IsEmpty flags, peerConfig,
 * sessionExpiresAt (present), the posture Checks; netbird_config (may be NULL:
 * fan-out pushes leave it unset, netbird-protocol.md §9.7) is copied in
 * as given. The bytes live in a. -ENOENT: the peer is not in this map
 * (deleted meanwhile). */
int mgmt_map_pack(mgmt_maps *m, const mgmt_map *map, const char *peer_id,
                  const Management__NetbirdConfig *netbird_config, mgmt_arena *a, uint8_t **ret, size_t *ret_len,
                  cp_error *reterr);

/* PeerConfig.sshConfig.jwtConfig as a packed JWTConfig in a, or NULL
 * (*ret_len 0) when the deployment has none (or m has no netconf): packed
 * once for a batch of mgmt_map_seal() calls. */
const uint8_t *mgmt_map_jwt_config(mgmt_maps *m, mgmt_arena *a, size_t *ret_len);

/* The fan-out's path (mgmt-sync.c chunk_work): peer_id's SyncResponse as
 * mgmt_map_pack() makes it without netbirdConfig, with jwt_config (from
 * mgmt_map_jwt_config(), may be NULL), sealed with shared inside the
 * EncryptedMessage carrying server_key: *ret is the one malloc'd buffer
 * the stream sends (free(); mgmt_call_send_take() takes it). The
 * plaintext is never copied: it is sealed from this thread's encoding
 * buffer, which the thread's next map overwrites (a map is no secret of
 * the kind ops.md wipes). -ENOENT: the peer is not in this map; -EIO
 * (reterr says why) when sealing failed. */
int mgmt_map_seal(mgmt_maps *m, const mgmt_map *map, const char *peer_id, const uint8_t *jwt_config,
                  size_t jwt_config_len, const char *server_key, const cp_crypto_box_shared *shared, uint8_t **ret,
                  size_t *ret_len, cp_error *reterr);

/* Whether peer_id's SSO login had expired when the map was read (false
 * for a peer not in the map). */
bool mgmt_map_peer_login_expired(const mgmt_map *map, const char *peer_id);

/* The last SyncResponse of a deleted peer (§3.5): NetworkMap with the
 * serial, empty remotePeers with remotePeersIsEmpty, firewallRulesIsEmpty
 * and routesFirewallRulesIsEmpty set, DNSConfig.ForwarderPort; no
 * peerConfig, no sessionExpiresAt. The bytes live in a. */
int mgmt_map_pack_deleted(const mgmt_map *map, mgmt_arena *a, uint8_t **ret, size_t *ret_len);
