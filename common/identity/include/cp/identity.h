/*
 * cp/identity.h: who a valid IdP token is, in our accounts — NetBird's
 * GetAccountIDFromUserAuth, EnsureUserAccessByJWTGroups and
 * SyncUserJWTGroups in one call, shared by the REST API (dashboard users)
 * and the agent gRPC service (SSO peers).
 *
 * Provisioning follows NetBird: in single-account mode (the default; the
 * domain from --single-account-mode-domain) every JWT user joins the one
 * account, the first becoming its owner and later ones role "user"
 * (pending approval when the account requires user approval); in
 * multi-account mode NetBird's domain rules and its custom claims
 * (wt_account_id, wt_account_domain, wt_account_domain_category) decide.
 * With the account's JWT groups on, the groups claim creates or joins
 * groups and the allow list is enforced.
 *
 * Everything runs inside the caller's transaction, so a request that
 * fails later leaves no user behind; concurrent first logins on several
 * replicas create one account (advisory transaction locks).
 *
 * Threads: any thread; the transaction belongs to the calling thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"
#include "cp/jwt.h"
#include "cp/store-tx.h"

typedef struct cp_identity_options {
        /* --single-account-mode-domain; NULL or "" = multi-account mode
         * (--disable-single-account-mode). */
        const char *single_account_domain;
} cp_identity_options;

/* What cp_identity_resolve() asks for besides the lookup. */
#define CP_IDENTITY_LOGIN       (1u << 0)       /* a dashboard sign-in (NetBird's
                                                 * GetUserFromUserAuth; the REST API passes it,
                                                 * the agent service does not): last_login = the
                                                 * token's nb_last_login or iat when newer, with
                                                 * event 51 when a sign-in was seen before; the
                                                 * token's email and name stored on the user */

typedef struct cp_identity_user {
        char user_id[256];
        char account_id[64];
        char role[32];
        bool service_user;
        bool blocked;
        bool pending_approval;
        bool new_user;                  /* created by this call */
        bool new_account;               /* created by this call */
        /* Group memberships changed (JWT groups): the account's network
         * serial was bumped in the transaction and is this (0 = no
         * change); the caller announces it after commit. */
        int64_t serial;
} cp_identity_user;

/*
 * Resolves claims to a user of an account, creating either as NetBird
 * does. Failures:
 *   -EPERM   the user is outside the account's JWT allow list (message:
 *            NetBird's "user does not belong to any of the allowed JWT groups")
 *   -ENOENT  the token names an account (wt_account_id) that does not
 *            exist or the user is not in
 *   -EIO and the store's other codes for database failures
 * Blocked and pending users are returned, not refused: each caller answers
 * them with its own NetBird text.
 */
int cp_identity_resolve(cp_store_tx *tx, const cp_identity_options *o, const cp_jwt_claims *claims,
                        unsigned flags, cp_identity_user *ret, cp_error *reterr);
