/*
 * cp/store-sso.h: the peers of interactive SSO logins (a JWT from the
 * IdP) as the agent protocol needs them: the one-time claim of a JWT,
 * the JWT login of a known SSO peer and ExtendAuthSession
 * (netbird-protocol.md sections 3.2 and 6). The SSO registration itself
 * is cp_store_peer_register() with user_id set (cp/store-peers.h).
 *
 * Threads, scope and errors as in cp/store-peers.h: any thread, one
 * pooled connection per call, every function one statement (its own
 * transaction), negative errno values with reterr filled. Nothing here
 * logs, and no token text is ever stored or passed in: only its hash.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/store.h"

/* NetBird activity codes written here (netbird-protocol.md section 7). */
#define CP_STORE_ACTIVITY_USER_LOGGED_IN_PEER 49        /* user.peer.login */
#define CP_STORE_ACTIVITY_USER_EXTENDED_PEER_SESSION 125 /* user.peer.session.extend */

/* ---- one-time JWT use (NetBird's claimLoginToken) ---------------------------
 * Claims the token whose hex SHA-256 is token_hash (64 lower-case hex
 * digits, cp_jwt_claims.token_hash) until exp_unix_s (its exp claim), for
 * every replica at once: one INSERT ... ON CONFLICT DO NOTHING into
 * jwt_claims, judged by the database clock. Returns 0 when this call
 * claimed it; -EALREADY when it was claimed before ("JWT already used");
 * -EKEYEXPIRED when exp is not in the future ("JWT expired"); -EINVAL for
 * a malformed hash or exp <= 0 (the caller answers "jwt token has no
 * expiration" before asking). */
int cp_store_jwt_claim(cp_store *s, const char *token_hash, int64_t exp_unix_s, cp_error *reterr);

/* Deletes the claims whose token has expired (a replayed expired token is
 * refused by its exp anyway). *ret_deleted (optional) gets the count. */
int cp_store_jwt_claims_gc(cp_store *s, int64_t *ret_deleted, cp_error *reterr);

/* ---- JWT login of a known peer (NetBird's LoginPeer with a user id) --------
 * In ONE statement, with the peer row locked: when user_id owns the peer,
 * is not blocked and the peer's login has expired (peer_status_login_expired,
 * or expiration on for account and peer and last_login + the account's
 * expiration at or before now), last_login = now and login_expired =
 * false, the user's last_login = now, event 49 (user.peer.login, initiator
 * the user, NetBird's peer meta; dns_domain as in cp_store_peer_delete),
 * and network_serial + 1. A login that has not expired changes nothing
 * (NetBird refreshes last_login only then: ExtendAuthSession exists for
 * the rest). */
typedef struct cp_store_sso_login {
        bool refreshed;                 /* the expired login was renewed (fan out) */
        int64_t serial;                 /* the bumped serial when refreshed, else 0 */
        int64_t last_login_unix_ns;     /* the new last_login when refreshed, else 0 */
} cp_store_sso_login;

/* Errors: -ENOENT the peer is not in the account; -EACCES the peer has
 * another owner or none (a setup-key peer: "peer is already registered by
 * a different User or a Setup Key"); -EPERM the owner is blocked ("user is
 * blocked"). Nothing is written on any error. */
int cp_store_peer_sso_login(cp_store *s, const char *account_id, const char *peer_id, const char *user_id,
                            const char *dns_domain, cp_store_sso_login *ret, cp_error *reterr);

/* ---- ExtendAuthSession (NetBird's ExtendPeerSession, section 6.2) ----------
 * The peer with WireGuard key wg_pub_key, in ONE statement with its row
 * locked: when its account has login expiration on, the peer is an SSO
 * peer with login expiration on and user_id owns it, last_login = now and
 * login_expired = false, the user's last_login = now and event 125
 * (user.peer.session.extend, initiator the user, the peer meta). No serial
 * bump: nothing in any network map changes. */
typedef enum cp_store_extend_outcome {
        CP_STORE_EXTEND_OK,
        CP_STORE_EXTEND_DISABLED,       /* "peer login expiration is disabled for the account" */
        CP_STORE_EXTEND_NOT_ELIGIBLE,   /* "peer is not eligible for session extension" */
        CP_STORE_EXTEND_NOT_OWNER,      /* "peer is already registered by a different User or a Setup Key" */
} cp_store_extend_outcome;

typedef struct cp_store_extend {
        cp_store_extend_outcome outcome;        /* only OK writes anything */
        char account_id[64];
        char peer_id[64];
        int64_t last_login_unix_ns;     /* OK: the new last_login */
        int64_t deadline_unix_ns;       /* OK: last_login + the account's expiration */
} cp_store_extend;

/* -ENOENT when no peer has that key; otherwise 0 with ret->outcome. */
int cp_store_peer_extend_session(cp_store *s, const char *wg_pub_key, const char *user_id,
                                 const char *dns_domain, cp_store_extend *ret, cp_error *reterr);
