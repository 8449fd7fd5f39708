/*
 * cp/store-ephemeral.h: deleting ephemeral peers (peers registered with an
 * ephemeral setup key) once they have been disconnected for their
 * lifetime, as NetBird's ephemeral manager does
 * (management/internals/modules/peers/ephemeral: 10 minutes after the
 * disconnect, then DeletePeers from the system initiator).
 *
 * NetBird keeps the deadlines in the memory of the process that saw the
 * disconnect. Here no replica holds that state: every replica calls
 * cp_store_ephemeral_sweep() periodically and the database decides, from
 * the fenced connect/disconnect columns (peer_status_connected,
 * peer_status_last_seen written by the disconnect). Thread-safe (it
 * borrows pool connections like every cp_store call).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cp/store.h"
#include "cp/store-peers.h"     /* cp_store_expired_account, cp_store_expired_peer */

/* NetBird's EphemeralLifeTime. */
#define CP_STORE_EPHEMERAL_LIFETIME_MS (10 * 60 * 1000)

/* Deletes every ephemeral peer that is not connected and was last seen at
 * least lifetime_ms ago (> 0), one statement per account that has one
 * (each its own transaction, scoped to the account):
 *   - the peer row (group memberships and the routes it serves go by
 *     cascade);
 *   - every policy with a rule naming the peer as its source or
 *     destination resource, with event 11 (policy.delete) each, target
 *     the peer, meta {name};
 *   - event 5 (peer.user.delete) per peer from initiator "sys" with the
 *     peer meta (dns_domain as in cp_store_peer_delete); none for a wasm
 *     peer (meta_kernel_version "wasm"), as NetBird;
 *   - the account's network_serial + 1.
 * The DELETE re-checks its conditions under each row lock: a peer that
 * reconnected meanwhile stays, and callers running at the same time (other
 * replicas) delete, log and bump for each peer exactly once; a caller that
 * deleted nothing writes nothing.
 * On success *ret_accounts (malloc'ed, caller frees; NULL when *ret_n ==
 * 0) holds each account this call changed with its new serial, and, when
 * ret_peers is not NULL, *ret_peers (likewise) the peers it deleted, both
 * sorted by account id (then peer id). An account whose sweep fails is
 * skipped (the next call retries it; a deadlock is retried at once) and
 * the call returns its error after doing the others; what the others
 * changed is still returned. */
int cp_store_ephemeral_sweep(cp_store *s, int64_t lifetime_ms, const char *dns_domain,
                             cp_store_expired_account **ret_accounts, size_t *ret_n,
                             cp_store_expired_peer **ret_peers, size_t *ret_n_peers, cp_error *reterr);
