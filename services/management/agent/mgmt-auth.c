/*
 * The agent side of identity: a JWT from the IdP on Login and
 * ExtendAuthSession (netbird-protocol.md sections 3.1 step 4 and 6.2).
 *
 * One validation pipeline serves both RPCs, NetBird's validateToken:
 *   1. cp_jwt_validate (signature, issuer, audience, exp) -> InvalidArgument
 *      "invalid jwt token, err: ...";
 *   2. the one-time claim (claimLoginToken) in PostgreSQL, so it holds
 *      across replicas: no exp -> Unauthenticated "jwt token has no
 *      expiration", replay -> "JWT already used", past exp -> "JWT expired",
 *      a database failure -> Unavailable "failed to claim jwt token";
 *   3. cp_identity_resolve in its own transaction (GetAccountIDFromUserAuth,
 *      the JWT allow list and the JWT groups sync): -EPERM -> PermissionDenied
 *      with the validator's text, anything else -> Internal "unable to fetch
 *      account with claims, err: ...".
 * Up to three attempts, 200 ms apart, no wait after the last; the last
 * failure is answered. An attempt whose claim succeeded is the last one:
 * NetBird retries it too, and its retries can only fail with "JWT already
 * used", which hides the real reason (the allow list, say) from the agent.
 *
 * Cancellation: the handlers run on a worker and cannot select on a Go
 * context; gRPC core tells the CQ thread (RECV_CLOSE_ON_SERVER) and
 * mgmt_call_is_over() reads that flag from any thread. The wait between
 * attempts sleeps in 5 ms slices and polls it, so a cancelled call ends
 * its wait at once (answered CANCELLED, which nobody receives). NetBird's
 * Login sleeps uncancellably and also after the last failure; here both
 * RPCs share the cancellable wait, which only saves the worker's time.
 */
#include "cp/base.h"
#include "cp/store-sso.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-sync.h"

#include <time.h>

#define JWT_ATTEMPTS 3
#define JWT_RETRY_MS 200
#define CANCEL_POLL_MS 5

#define MSG_NO_IDP "JWT authentication is not supported by this server: no identity provider is configured; " \
        "use a setup key"

/* One attempt's failure, kept until the last attempt decides. */
typedef struct attempt_fail {
        grpc_status_code status;
        char message[400];
        char detail[200];
        bool final;                     /* the token was claimed: no retry can succeed */
} attempt_fail;

static int fail_with(attempt_fail *f, grpc_status_code status, const char *detail, const char *fmt, ...)
        _printf_(4, 5);
static int fail_with(attempt_fail *f, grpc_status_code status, const char *detail, const char *fmt, ...) {
        va_list ap;

        f->status = status;
        va_start(ap, fmt);
        (void) vsnprintf(f->message, sizeof f->message, fmt, ap);
        va_end(ap);
        (void) snprintf(f->detail, sizeof f->detail, "%s", detail ? detail : "");
        return -1;
}

/* identity resolution in its own transaction; a serial bumped by a JWT
 * groups change is announced after the commit. */
static int resolve(mgmt_agent_op *op, const cp_jwt_claims *claims, mgmt_auth_user *ret, attempt_fail *f) {
        cp_store_tx *tx = NULL;
        cp_identity_user u = { 0 };
        cp_error err = { 0 };
        int r;

        r = cp_store_tx_begin(op->agent->store, &tx, &err);
        if (r >= 0)
                r = cp_identity_resolve(tx, &op->agent->identity, claims, 0, &u, &err);
        if (r >= 0)
                r = cp_store_tx_commit(tx, &err);       /* frees tx */
        else
                (void) cp_store_tx_end(tx);
        if (r == -EPERM)
                return fail_with(f, GRPC_STATUS_PERMISSION_DENIED, NULL, "%s", err.message);
        if (r < 0)
                return fail_with(f, GRPC_STATUS_INTERNAL, NULL, "unable to fetch account with claims, err: %s",
                                 err.message[0] ? err.message : strerror(-r));
        if (u.serial > 0)
                mgmt_sync_local_change(op->agent->sync, u.account_id, u.serial);
        *ret = (mgmt_auth_user) { .blocked = u.blocked, .pending_approval = u.pending_approval };
        (void) snprintf(ret->user_id, sizeof ret->user_id, "%s", u.user_id);
        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u.account_id);
        (void) snprintf(ret->email, sizeof ret->email, "%s", claims->email ? claims->email : "");
        return 0;
}

/* NetBird's validateToken: one attempt. */
static int attempt(mgmt_agent_op *op, const char *token, mgmt_auth_user *ret, attempt_fail *f) {
        cp_jwt_claims *claims = NULL;
        cp_error err = { 0 };
        int r;

        r = cp_jwt_validate(op->agent->jwt, token, &claims, &err);
        if (r < 0)
                return fail_with(f, GRPC_STATUS_INVALID_ARGUMENT, NULL, "invalid jwt token, err: %s",
                                 err.message[0] ? err.message : strerror(-r));
        if (claims->exp <= 0)
                r = fail_with(f, GRPC_STATUS_UNAUTHENTICATED, NULL, "jwt token has no expiration");
        else {
                r = cp_store_jwt_claim(op->agent->store, claims->token_hash, claims->exp, &err);
                if (r == -EALREADY)
                        r = fail_with(f, GRPC_STATUS_UNAUTHENTICATED, NULL, "JWT already used");
                else if (r == -EKEYEXPIRED)
                        r = fail_with(f, GRPC_STATUS_UNAUTHENTICATED, NULL, "JWT expired");
                else if (r < 0)
                        r = fail_with(f, GRPC_STATUS_UNAVAILABLE, err.message, "failed to claim jwt token");
        }
        if (r >= 0)
                f->final = true;
        if (r >= 0 && !claims->user_id[0])
                r = fail_with(f, GRPC_STATUS_UNAUTHENTICATED, NULL, "jwt token did not yield a user id");
        if (r >= 0)
                r = resolve(op, claims, ret, f);
        cp_jwt_claims_free(claims);
        return r;
}

/* Sleeps ms unless the call ends first; false when it did. */
static bool wait_unless_cancelled(mgmt_agent_op *op, int64_t ms) {
        int64_t end = cp_now_mono_ms() + ms;

        for (;;) {
                if (mgmt_call_is_over(op->call))
                        return false;
                int64_t left = end - cp_now_mono_ms();
                if (left <= 0)
                        return true;
                struct timespec ts = { 0, (left < CANCEL_POLL_MS ? left : CANCEL_POLL_MS) * 1000000L };
                (void) nanosleep(&ts, NULL);
        }
}

int mgmt_auth_jwt(mgmt_agent_op *op, const char *token, mgmt_auth_user *ret) {
        attempt_fail f = { 0 };

        if (!op->agent->jwt) {
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MSG_NO_IDP);
                return -1;
        }
        for (int i = 0; i < JWT_ATTEMPTS; i++) {
                if (attempt(op, token, ret, &f) == 0) {
                        if (!op->account[0])
                                snprintf(op->account, sizeof op->account, "%s", ret->account_id);
                        return 0;
                }
                if (f.final)
                        break;
                if (i + 1 < JWT_ATTEMPTS && !wait_unless_cancelled(op, JWT_RETRY_MS)) {
                        mgmt_agent_fail(op, GRPC_STATUS_CANCELLED, "context canceled");
                        (void) snprintf(op->detail, sizeof op->detail, "cancelled during the JWT retry wait "
                                        "after: %s", f.message);
                        return -1;
                }
        }
        mgmt_agent_fail(op, f.status, "%s", f.message);
        if (f.detail[0])
                (void) snprintf(op->detail, sizeof op->detail, "%s", f.detail);
        return -1;
}

/* ---- ExtendAuthSession ------------------------------------------------------------ */

Google__Protobuf__Timestamp *mgmt_session_expires(mgmt_arena *a, int64_t unix_ns) {
        Google__Protobuf__Timestamp *ts = mgmt_arena_alloc(a, sizeof *ts);

        /* Zero stays present but empty: "no expiry" (section 6.4). */
        google__protobuf__timestamp__init(ts);
        if (unix_ns > 0) {
                ts->seconds = unix_ns / 1000000000;
                ts->nanos = (int32_t) (unix_ns % 1000000000);
        }
        return ts;
}

void mgmt_extend_session(mgmt_agent_op *op) {
        const Management__ExtendAuthSessionRequest *req = (const Management__ExtendAuthSessionRequest *) op->request;
        Management__ExtendAuthSessionResponse *resp;
        mgmt_auth_user u;
        cp_store_extend ex;
        cp_error err = { 0 };
        int r;

        op->wipe = true;        /* the JWT: the arena is wiped when the call ends */
        if (!req->jwttoken || !req->jwttoken[0]) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "jwt token is required");
                return;
        }
        if (mgmt_auth_jwt(op, req->jwttoken, &u) < 0)
                return;
        r = cp_store_peer_extend_session(op->agent->store, op->peer_key, u.user_id, op->agent->config->dns_domain,
                                         &ex, &err);
        if (r == -ENOENT) {
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "peer not found");
                return;
        }
        if (r < 0) {
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "failed handling request");
                (void) snprintf(op->detail, sizeof op->detail, "cannot extend the session: %s", err.message);
                return;
        }
        snprintf(op->account, sizeof op->account, "%s", ex.account_id);
        switch (ex.outcome) {
        case CP_STORE_EXTEND_OK:
                break;
        case CP_STORE_EXTEND_DISABLED:
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, "peer login expiration is disabled for the account");
                return;
        case CP_STORE_EXTEND_NOT_ELIGIBLE:
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, "peer is not eligible for session extension");
                return;
        case CP_STORE_EXTEND_NOT_OWNER:
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, MGMT_MSG_NOT_OWNER);
                return;
        }
        /* Committed. No map is pushed: the stream and the tunnel are
         * untouched; the expiry sweep reads last_login from the database,
         * so it sees the new deadline at its next run. */
        resp = mgmt_arena_alloc(&op->arena, sizeof *resp);
        management__extend_auth_session_response__init(resp);
        resp->sessionexpiresat = mgmt_session_expires(&op->arena, ex.deadline_unix_ns);
        op->response = &resp->base;
}
