/*
 * Authenticate, ValidateSession and ValidateTunnelPeer (proxy-and-api.md
 * 1.6): the secrets of services.auth (argon2id), the session tokens, and
 * the users and peers behind them with NetBird's denied reasons.
 */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/proxyauth.h"
#include "mgmt-proxy-rpc-int.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <time.h>

/* ---- services.auth ------------------------------------------------------------ */

static json_t *auth_part(const json_t *auth, const char *name) {
        json_t *v = json_object_get(auth, name);

        return json_is_object(v) && json_is_true(json_object_get(v, "enabled")) ? v : NULL;
}

static const char *jstr(const json_t *o, const char *k) {
        json_t *v = json_object_get(o, k);

        return json_is_string(v) ? json_string_value(v) : "";
}

/* The bearer auth's distribution groups when it is enabled and has some. */
static const json_t *distribution_groups(const json_t *auth) {
        json_t *b = auth_part(auth, "bearer_auth"), *g = b ? json_object_get(b, "distribution_groups") : NULL;

        return json_is_array(g) && json_array_size(g) > 0 ? g : NULL;
}

static bool any_in(const json_t *allowed, const char *const *ids, size_t n) {
        size_t i;
        json_t *a;

        json_array_foreach(allowed, i, a)
                for (size_t j = 0; j < n; j++)
                        if (json_is_string(a) && strcmp(json_string_value(a), ids[j]) == 0)
                                return true;
        return false;
}

/* 1 (and who/method) when the request's secret matches, 0 when not. */
static int check_secret(const json_t *auth, const Management__AuthenticateRequest *req, const char **who,
                        const char **method) {
        json_t *part;
        int r;

        switch (req->request_case) {
        case MANAGEMENT__AUTHENTICATE_REQUEST__REQUEST_PASSWORD:
                part = auth_part(auth, "password_auth");
                if (!part || !req->password)
                        return 0;
                r = cp_proxyauth_argon2id_verify(jstr(part, "password"), req->password->password,
                                                 strlen(req->password->password));
                *who = "password-user";
                *method = "password";
                return r;
        case MANAGEMENT__AUTHENTICATE_REQUEST__REQUEST_PIN:
                part = auth_part(auth, "pin_auth");
                if (!part || !req->pin)
                        return 0;
                r = cp_proxyauth_argon2id_verify(jstr(part, "pin"), req->pin->pin, strlen(req->pin->pin));
                *who = "pin-user";
                *method = "pin";
                return r;
        case MANAGEMENT__AUTHENTICATE_REQUEST__REQUEST_HEADER_AUTH: {
                json_t *list = json_object_get(auth, "header_auths"), *h;
                const Management__HeaderAuthRequest *ha = req->header_auth;
                size_t i;

                if (!ha)
                        return 0;
                /* Header names compare as HTTP canonicalises them, i.e.
                 * without regard to case; every enabled entry is tried. */
                json_array_foreach(list, i, h) {
                        if (!json_is_object(h) || !json_is_true(json_object_get(h, "enabled")))
                                continue;
                        if (*ha->header_name && strcasecmp(jstr(h, "header"), ha->header_name) != 0)
                                continue;
                        r = cp_proxyauth_argon2id_verify(jstr(h, "value"), ha->header_value,
                                                         strlen(ha->header_value));
                        if (r != 0) {
                                *who = "header-user";
                                *method = "header";
                                return r;
                        }
                }
                return 0;
        }
        default:
                return 0;
        }
}

void prpc_authenticate(mgmt_prpc *p, const mgmt_prpc_caller *who, const Management__AuthenticateRequest *req,
                       mgmt_prpc_reply *ret) {
        Management__AuthenticateResponse resp = MANAGEMENT__AUTHENTICATE_RESPONSE__INIT;
        _cleanup_free_ char *token = NULL;
        const char *user = NULL, *method = NULL;
        prpc_service s = { 0 };
        cp_error err = { 0 };
        int r;

        if (!prpc_scope_ok(who, req->account_id, ret))
                return;
        r = prpc_service_get(p, req->account_id, req->id, NULL, &s, &err);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_FAILED_PRECONDITION, "get service from store: %s", err.message);
        json_auto_t *auth = json_loads(s.auth_json, 0, NULL);
        r = check_secret(auth, req, &user, &method);
        if (r < 0) {
                prpc_service_release(&s);
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "verify secret: out of memory");
        }
        if (r > 0) {
                r = prpc_session_mint(p, &s, user, NULL, method, NULL, NULL, 0, &token, &err);
                if (r < 0) {
                        prpc_service_release(&s);
                        return prpc_fail(ret, GRPC_STATUS_INTERNAL, "sign session token: %s", err.message);
                }
                resp.success = true;
                resp.session_token = token;
        }
        prpc_service_release(&s);
        prpc_ok(ret, &resp.base);
}

/* ---- users and groups ------------------------------------------------------------- */

typedef struct prpc_user {
        char *id, *account_id, *email;
        bool blocked, pending;
        json_t *auto_groups;            /* ids as stored, for the group gate */
        char **group_ids, **group_names;        /* resolved groups, paired */
        size_t n_groups;
} prpc_user;

static void user_release(prpc_user *u) {
        free(u->id);
        free(u->account_id);
        free(u->email);
        json_decref(u->auto_groups);
        for (size_t i = 0; i < u->n_groups; i++) {
                free(u->group_ids[i]);
                free(u->group_names[i]);
        }
        free(u->group_ids);
        free(u->group_names);
        memset(u, 0, sizeof *u);
}

/* [[id, name], ...] into paired arrays. */
static void groups_from_json(const char *text, char ***ids, char ***names, size_t *n) {
        json_auto_t *a = json_loads(text ? text : "[]", 0, NULL);
        size_t i;
        json_t *e;

        *ids = cp_xcalloc(json_array_size(a) + 1, sizeof **ids);
        *names = cp_xcalloc(json_array_size(a) + 1, sizeof **names);
        *n = 0;
        json_array_foreach(a, i, e) {
                if (!json_is_string(json_array_get(e, 0)))
                        continue;
                (*ids)[*n] = cp_xstrdup(json_string_value(json_array_get(e, 0)));
                (*names)[*n] = cp_xstrdup(json_is_string(json_array_get(e, 1)) ?
                                          json_string_value(json_array_get(e, 1)) : "");
                (*n)++;
        }
}

/* The user by id (user ids are global), with its auto-groups resolved in
 * its own account, in their stored order. 1 found, 0 not, < 0 error. */
static int user_get(mgmt_prpc *p, const char *id, prpc_user *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *params[1] = { id };
        int r;

        r = prpc_exec(p, "SELECT u.account_id, " CP_PII_SQL("u.pii_key", "u.email") ", u.blocked, u.pending_approval, to_json(u.auto_groups)::text,"
                      " COALESCE((SELECT json_agg(json_build_array(g.id, g.name) ORDER BY a.ord)"
                      " FROM unnest(u.auto_groups) WITH ORDINALITY a(gid, ord)"
                      " JOIN groups g ON g.account_id = u.account_id AND g.id = a.gid), '[]')::text"
                      " FROM users u WHERE u.id = $1", 1, params, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return 0;
        ret->id = cp_xstrdup(id);
        ret->account_id = cp_xstrdup(cp_store_rows_get(rows, 0, 0));
        ret->email = cp_pii_open_marked(cp_store_rows_get(rows, 0, 1));
        ret->blocked = cp_store_rows_bool(rows, 0, 2);
        ret->pending = cp_store_rows_bool(rows, 0, 3);
        ret->auto_groups = json_loads(cp_store_rows_get(rows, 0, 4), 0, NULL);
        groups_from_json(cp_store_rows_get(rows, 0, 5), &ret->group_ids, &ret->group_names, &ret->n_groups);
        return 1;
}

/* A user awaiting approval is stored blocked too: pending is reported
 * first, it is the state an administrator acts on. */
static const char *user_status_denied(const prpc_user *u) {
        if (u->pending)
                return "pending_approval";
        if (u->blocked)
                return "user_blocked";
        return NULL;
}

/* ---- ValidateSession ------------------------------------------------------------- */

static void session_denied(mgmt_prpc_reply *ret, const char *reason) {
        Management__ValidateSessionResponse resp = MANAGEMENT__VALIDATE_SESSION_RESPONSE__INIT;

        resp.denied_reason = (char *) reason;
        prpc_ok(ret, &resp.base);
}

void prpc_validate_session(mgmt_prpc *p, const mgmt_prpc_caller *who,
                           const Management__ValidateSessionRequest *req, mgmt_prpc_reply *ret) {
        Management__ValidateSessionResponse resp = MANAGEMENT__VALIDATE_SESSION_RESPONSE__INIT;
        uint8_t pub[32], prev[32];
        prpc_service s = { 0 };
        prpc_user u = { 0 };
        cp_proxyauth_verified v = { 0 };
        cp_error err = { 0 };
        const char *reason = NULL;
        int r;

        if (!*req->domain || !*req->session_token)
                return session_denied(ret, "missing domain or session_token");
        if (prpc_service_get(p, NULL, NULL, req->domain, &s, &err) < 0)
                return session_denied(ret, "service_not_found");
        if (!prpc_scope_ok(who, s.account_id, ret))
                goto out;
        if (cp_proxyauth_pub_parse(s.pub_b64, pub) < 0) {
                session_denied(ret, "invalid_service_config");
                goto out;
        }
        bool has_prev = *s.prev_pub_b64 && cp_proxyauth_pub_parse(s.prev_pub_b64, prev) == 0;
        if (cp_proxyauth_session_verify(pub, has_prev ? prev : NULL, req->session_token, req->domain,
                                        (int64_t) time(NULL), &v, &err) < 0) {
                session_denied(ret, "invalid_token");
                goto out;
        }
        r = user_get(p, v.sub, &u, &err);
        if (r <= 0) {
                session_denied(ret, "user_not_found");
                goto out;
        }
        if (strcmp(u.account_id, s.account_id) != 0) {
                session_denied(ret, "account_mismatch");
                goto out;
        }
        reason = user_status_denied(&u);
        if (!reason) {
                json_auto_t *auth = json_loads(s.auth_json, 0, NULL);
                const json_t *allowed = distribution_groups(auth);
                size_t n = json_array_size(u.auto_groups), i;
                _cleanup_free_ const char **ids = cp_xcalloc(n + 1, sizeof *ids);
                json_t *g;
                json_array_foreach(u.auto_groups, i, g)
                        ids[i] = json_is_string(g) ? json_string_value(g) : "";
                if (allowed && !any_in(allowed, ids, n))
                        reason = "not_in_group";
        }
        resp.valid = reason == NULL;
        resp.user_id = u.id;
        resp.user_email = u.email;
        resp.denied_reason = (char *) (reason ? reason : "");
        resp.n_peer_group_ids = resp.n_peer_group_names = u.n_groups;
        resp.peer_group_ids = u.group_ids;
        resp.peer_group_names = u.group_names;
        prpc_ok(ret, &resp.base);
out:
        cp_proxyauth_verified_release(&v);
        user_release(&u);
        prpc_service_release(&s);
}

/* ---- ValidateTunnelPeer --------------------------------------------------------- */

static void tunnel_denied(mgmt_prpc_reply *ret, const char *reason) {
        Management__ValidateTunnelPeerResponse resp = MANAGEMENT__VALIDATE_TUNNEL_PEER_RESPONSE__INIT;

        resp.denied_reason = (char *) reason;
        prpc_ok(ret, &resp.base);
}

/* The peer with that overlay address in the account, its groups (with
 * names) and its owner (resolved only inside the same account). */
typedef struct tunnel_peer {
        char *id, *name, *user_id;
        char **group_ids, **group_names;
        size_t n_groups;
        bool has_owner;
        char *owner_email;
        bool owner_blocked, owner_pending;
} tunnel_peer;

static void tunnel_peer_release(tunnel_peer *t) {
        free(t->id);
        free(t->name);
        free(t->user_id);
        for (size_t i = 0; i < t->n_groups; i++) {
                free(t->group_ids[i]);
                free(t->group_names[i]);
        }
        free(t->group_ids);
        free(t->group_names);
        free(t->owner_email);
        memset(t, 0, sizeof *t);
}

static int tunnel_peer_get(mgmt_prpc *p, const char *account_id, const char *ip, tunnel_peer *ret,
                           cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *params[2] = { account_id, ip };
        int r;

        r = prpc_exec(p, "SELECT p.id, p.name, COALESCE(p.user_id, ''),"
                      " COALESCE((SELECT json_agg(json_build_array(g.id, g.name) ORDER BY g.name, g.id)"
                      " FROM group_peers gp JOIN groups g ON g.account_id = gp.account_id AND g.id = gp.group_id"
                      " WHERE gp.account_id = p.account_id AND gp.peer_id = p.id), '[]')::text,"
                      " u.id IS NOT NULL, COALESCE(" CP_PII_SQL("u.pii_key", "u.email") ", ''),"
                      " COALESCE(u.blocked, false),"
                      " COALESCE(u.pending_approval, false)"
                      " FROM peers p LEFT JOIN users u ON u.id = p.user_id AND u.account_id = p.account_id"
                      " WHERE p.account_id = $1 AND p.ip = $2::inet", 2, params, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return 0;
        ret->id = cp_xstrdup(cp_store_rows_get(rows, 0, 0));
        ret->name = cp_xstrdup(cp_store_rows_get(rows, 0, 1));
        ret->user_id = cp_xstrdup(cp_store_rows_get(rows, 0, 2));
        groups_from_json(cp_store_rows_get(rows, 0, 3), &ret->group_ids, &ret->group_names, &ret->n_groups);
        ret->has_owner = cp_store_rows_bool(rows, 0, 4);
        ret->owner_email = cp_pii_open_marked(cp_store_rows_get(rows, 0, 5));
        ret->owner_blocked = cp_store_rows_bool(rows, 0, 6);
        ret->owner_pending = cp_store_rows_bool(rows, 0, 7);
        return 1;
}

static bool tunnel_groups_ok(const prpc_service *s, const tunnel_peer *t) {
        const char *const *ids = (const char *const *) t->group_ids;

        if (s->private_) {
                /* An empty list fails closed: the RPC is the boundary. */
                for (size_t i = 0; i < s->n_access_groups; i++)
                        for (size_t j = 0; j < t->n_groups; j++)
                                if (strcmp(s->access_groups[i], ids[j]) == 0)
                                        return true;
                return false;
        }
        json_auto_t *auth = json_loads(s->auth_json, 0, NULL);
        const json_t *allowed = distribution_groups(auth);
        return !allowed || any_in(allowed, ids, t->n_groups);
}

void prpc_validate_tunnel_peer(mgmt_prpc *p, const mgmt_prpc_caller *who,
                               const Management__ValidateTunnelPeerRequest *req, mgmt_prpc_reply *ret) {
        Management__ValidateTunnelPeerResponse resp = MANAGEMENT__VALIDATE_TUNNEL_PEER_RESPONSE__INIT;
        _cleanup_free_ char *token = NULL;
        uint8_t bin[16];
        prpc_service s = { 0 };
        tunnel_peer t = { 0 };
        cp_error err = { 0 };
        const char *reason = NULL;

        if (!*req->domain || !*req->tunnel_ip)
                return tunnel_denied(ret, "missing domain or tunnel_ip");
        if (inet_pton(AF_INET, req->tunnel_ip, bin) != 1 && inet_pton(AF_INET6, req->tunnel_ip, bin) != 1)
                return tunnel_denied(ret, "invalid_tunnel_ip");
        if (prpc_service_get(p, NULL, NULL, req->domain, &s, &err) < 0)
                return tunnel_denied(ret, "service_not_found");
        if (!prpc_scope_ok(who, s.account_id, ret))
                goto out;
        if (tunnel_peer_get(p, s.account_id, req->tunnel_ip, &t, &err) <= 0) {
                tunnel_denied(ret, "peer_not_found");
                goto out;
        }
        /* The principal: the owner when there is one (peers of one user
         * share an identity), else the peer itself; shown as the owner's
         * e-mail, else the peer's name. */
        const char *principal = *t.user_id ? t.user_id : t.id;
        const char *display = t.has_owner && *t.owner_email ? t.owner_email : t.name;
        if (*t.user_id)
                reason = !t.has_owner ? "user_not_found" : t.owner_pending ? "pending_approval"
                         : t.owner_blocked ? "user_blocked" : NULL;
        if (!reason && !tunnel_groups_ok(&s, &t))
                reason = "not_in_group";
        if (!reason && prpc_session_mint(p, &s, principal, display, "oidc", (const char *const *) t.group_ids,
                                         (const char *const *) t.group_names, t.n_groups, &token, &err) < 0) {
                prpc_fail(ret, GRPC_STATUS_INTERNAL, "sign session token: %s", err.message);
                goto out;
        }
        resp.valid = reason == NULL;
        resp.user_id = (char *) principal;
        resp.user_email = (char *) display;
        resp.denied_reason = (char *) (reason ? reason : "");
        resp.session_token = token ? token : "";
        resp.n_peer_group_ids = resp.n_peer_group_names = t.n_groups;
        resp.peer_group_ids = t.group_ids;
        resp.peer_group_names = t.group_names;
        prpc_ok(ret, &resp.base);
out:
        tunnel_peer_release(&t);
        prpc_service_release(&s);
}
