/*
 * mgmt-expose.c: a peer's own reverse-proxy services (mgmt-expose.h), as
 * NetBird's expose_service.go and its service manager answer them: the
 * same checks in the same order, the same statuses and texts.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/proxyauth.h"
#include "cp/store-expose.h"
#include "cp/store-peers.h"
#include "cp/util.h"
#include "mgmt-agent-int.h"
#include "mgmt-expose.h"

#include "cp/store-tenant.h"
#include "management.pb-c.h"

void mgmt_expose_changed(const mgmt_agent *a, int64_t seq) {
        /* INTEGRATOR: the manager sets a->proxy_changed to its
         * mgmt_manager_proxy_changed (wt-pstream: this replica's proxy
         * streams plus the bus hint); until then it is NULL. */
        if (seq > 0 && a->proxy_changed)
                a->proxy_changed(a->proxy_changed_userdata, seq);
}

/* The account and peer of the sealed request's key (NetBird's
 * authenticateExposePeer). NULL with op's outcome set. */
static cp_store_peer *expose_peer(mgmt_agent_op *op) {
        cp_store_account_settings st;
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        int r = cp_store_peer_lookup(op->agent->store, op->peer_key, &p, &st, NULL, &err);

        if (r == -ENOENT) {
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, "peer is not registered");
                return NULL;
        }
        if (r < 0) {
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "lookup account for peer");
                (void) snprintf(op->detail, sizeof op->detail, "%s", err.message);
                return NULL;
        }
        (void) snprintf(op->account, sizeof op->account, "%s", p->account_id);
        /* A suspended account exposes nothing (docs/msp.md). */
        if (st.suspended) {
                mgmt_agent_fail(op, GRPC_STATUS_FAILED_PRECONDITION, CP_STORE_MSG_SUSPENDED);
                cp_store_peer_free(p);
                return NULL;
        }
        return p;
}

/* NetBird's mapExposeError over cp/store-expose.h's codes. */
static void store_fail(mgmt_agent_op *op, int r, const cp_error *err) {
        switch (r) {
        case -EINVAL:
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "%s", err->message);
                return;
        case -EACCES:
                mgmt_agent_fail(op, GRPC_STATUS_PERMISSION_DENIED, "%s", err->message);
                return;
        case -ENOENT:
                mgmt_agent_fail(op, GRPC_STATUS_NOT_FOUND, "%s", err->message);
                return;
        case -EEXIST:
                mgmt_agent_fail(op, GRPC_STATUS_ALREADY_EXISTS, "%s", err->message);
                return;
        case -ENOSPC:
                mgmt_agent_fail(op, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", err->message);
                return;
        default:
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "internal error");
                (void) snprintf(op->detail, sizeof op->detail, "expose service error: %s",
                                err->message[0] ? err->message : strerror(-r));
                return;
        }
}

/* ExposeProtocol -> the service's mode and its target's protocol. */
static bool protocol_mode(Management__ExposeProtocol p, const char **mode, const char **target) {
        switch (p) {
        case MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_HTTP:
                *mode = "http", *target = "http";
                return true;
        case MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_HTTPS:
                *mode = "http", *target = "https";
                return true;
        case MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_TCP:
                *mode = "tcp", *target = "tcp";
                return true;
        case MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_UDP:
                *mode = "udp", *target = "udp";
                return true;
        case MANAGEMENT__EXPOSE_PROTOCOL__EXPOSE_TLS:
                *mode = "tls", *target = "tcp";
                return true;
        default:
                return false;
        }
}

/* ^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$ */
static bool name_prefix_ok(const char *s) {
        size_t n = strlen(s);

        if (n < 1 || n > 32)
                return false;
        for (size_t i = 0; i < n; i++) {
                bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');
                if (!alnum && (s[i] != '-' || i == 0 || i == n - 1))
                        return false;
        }
        return true;
}

static bool pin_ok(const char *s) {
        if (strlen(s) != 6)
                return false;
        for (int i = 0; i < 6; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

/* NetBird's ExposeServiceRequest.Validate; NULL when valid, else the
 * text after "validate expose request: ". */
static const char *validate(mgmt_agent_op *op, const Management__ExposeServiceRequest *req, const char *mode) {
        bool l4 = strcmp(mode, "http") != 0;

        if (req->port == 0)
                return "port must be between 1 and 65535, got 0";
        if (l4 && (*req->pin || *req->password || req->n_user_groups > 0))
                return mgmt_arena_printf(&op->arena, "authentication is not supported for %s mode", mode);
        if (*req->pin && !pin_ok(req->pin))
                return "invalid pin: must be exactly 6 digits";
        for (size_t i = 0; i < req->n_user_groups; i++)
                if (!*req->user_groups[i])
                        return "user group name cannot be empty";
        if (*req->name_prefix && !name_prefix_ok(req->name_prefix))
                return mgmt_arena_printf(&op->arena, "invalid name prefix \"%s\": must be lowercase alphanumeric "
                                         "with optional hyphens, 1-32 characters", req->name_prefix);
        return NULL;
}

/* NetBird's GenerateExposeName: 12 random [a-z0-9], or prefix-XXXX. */
static char *expose_name(mgmt_arena *a, const char *prefix) {
        static const char charset[] = "abcdefghijklmnopqrstuvwxyz0123456789";
        size_t n = *prefix ? 4 : 12;
        char suffix[13];

        for (size_t i = 0; i < n; i++)
                suffix[i] = charset[cp_random_uniform(sizeof charset - 1)];
        suffix[n] = '\0';
        return *prefix ? mgmt_arena_printf(a, "%s-%s", prefix, suffix) : mgmt_arena_strdup(a, suffix);
}

/* A secret's argon2id hash in op's arena; NULL with op's outcome set. */
static const char *hash_secret(mgmt_agent_op *op, const char *secret) {
        char *h = NULL;
        cp_error err = { 0 };

        if (cp_proxyauth_argon2id_hash(secret, strlen(secret), &h, &err) < 0) {
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "internal error");
                (void) snprintf(op->detail, sizeof op->detail, "hash secrets: %s", err.message);
                return NULL;
        }
        const char *copy = mgmt_arena_strdup(&op->arena, h);
        explicit_bzero(h, strlen(h));
        free(h);
        return copy;
}

void mgmt_create_expose(mgmt_agent_op *op) {
        const Management__ExposeServiceRequest *req = (const Management__ExposeServiceRequest *) op->request;
        _cleanup_store_peer_ cp_store_peer *p = NULL;
        const char *mode, *target, *why;
        cp_store_expose_created out;
        cp_error err = { 0 };
        uint8_t key[CP_DATA_KEY_LEN];
        int r;

        /* A password or PIN in the request: wiped with the arena. */
        op->wipe = *req->password || *req->pin;

        p = expose_peer(op);
        if (!p)
                return;
        if (req->port > 65535) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "port out of range: %" PRIu32, req->port);
                return;
        }
        if (req->listen_port > 65535) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "listen_port out of range: %" PRIu32,
                                req->listen_port);
                return;
        }
        if (!protocol_mode(req->protocol, &mode, &target)) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "unsupported expose protocol: %d",
                                (int) req->protocol);
                return;
        }
        why = validate(op, req, mode);
        if (why) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "validate expose request: %s", why);
                return;
        }

        cp_store_expose_req sr = {
                .account_id = p->account_id,
                .peer_id = p->id,
                .name = expose_name(&op->arena, req->name_prefix),
                .base_domain = req->domain,
                .mode = mode,
                .target_protocol = target,
                .port = (int) req->port,
                /* L4: the public port is the local one unless asked
                 * otherwise (NetBird's ToService). */
                .listen_port = (int) req->listen_port,
                .user_groups = (const char *const *) req->user_groups,
                .n_user_groups = req->n_user_groups,
                .ttl_s = CP_EXPOSE_TTL_S,
        };
        /* Refused peers must not get argon2id (19 MiB, tens of ms) for free. */
        if ((*req->password || *req->pin) &&
            (r = cp_store_expose_permitted(op->agent->store, p->account_id, p->id, &err)) < 0) {
                store_fail(op, r, &err);
                return;
        }
        if (*req->password && !(sr.password_hash = hash_secret(op, req->password)))
                return;
        if (*req->pin && !(sr.pin_hash = hash_secret(op, req->pin)))
                return;
        if (cp_config_encryption_key(op->agent->config, key) != 1) {
                mgmt_agent_fail(op, GRPC_STATUS_INTERNAL, "internal error");
                (void) snprintf(op->detail, sizeof op->detail, "no DataStoreEncryptionKey");
                return;
        }
        r = cp_store_expose_create(op->agent->store, key, &sr, &out, &err);
        explicit_bzero(key, sizeof key);
        if (r < 0) {
                store_fail(op, r, &err);
                return;
        }
        cp_log_ctx ctx = { .component = "expose", .account = p->account_id };
        cp_log_kv(&ctx, CP_LOG_INFO, "peer exposed a service", "peer", p->id, "domain", out.domain, NULL);
        mgmt_expose_changed(op->agent, out.seq);

        Management__ExposeServiceResponse *resp = mgmt_arena_alloc(&op->arena, sizeof *resp);
        management__expose_service_response__init(resp);
        resp->service_name = (char *) sr.name;
        resp->domain = mgmt_arena_strdup(&op->arena, out.domain);
        resp->port_auto_assigned = out.port_auto_assigned;
        if (strcmp(mode, "http") == 0)
                resp->service_url = mgmt_arena_printf(&op->arena, "https://%s", out.domain);
        else
                resp->service_url = mgmt_arena_printf(&op->arena, "%s://%s:%d", mode, out.domain, out.listen_port);
        op->response = &resp->base;
}

void mgmt_renew_expose(mgmt_agent_op *op) {
        const Management__RenewExposeRequest *req = (const Management__RenewExposeRequest *) op->request;
        _cleanup_store_peer_ cp_store_peer *p = expose_peer(op);
        cp_error err = { 0 };
        int r;

        if (!p)
                return;
        if (!*req->domain) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "domain is required");
                return;
        }
        r = cp_store_expose_renew(op->agent->store, p->account_id, p->id, req->domain, CP_EXPOSE_TTL_S, &err);
        if (r < 0)
                store_fail(op, r, &err);
}

void mgmt_stop_expose(mgmt_agent_op *op) {
        const Management__StopExposeRequest *req = (const Management__StopExposeRequest *) op->request;
        _cleanup_store_peer_ cp_store_peer *p = expose_peer(op);
        cp_error err = { 0 };
        int64_t seq = 0;
        int r;

        if (!p)
                return;
        if (!*req->domain) {
                mgmt_agent_fail(op, GRPC_STATUS_INVALID_ARGUMENT, "domain is required");
                return;
        }
        r = cp_store_expose_stop(op->agent->store, p->account_id, p->id, req->domain, &seq, &err);
        if (r < 0) {
                store_fail(op, r, &err);
                return;
        }
        cp_log_ctx ctx = { .component = "expose", .account = p->account_id };
        cp_log_kv(&ctx, CP_LOG_INFO, "peer stopped exposing a service", "peer", p->id, "domain", req->domain,
                  NULL);
        mgmt_expose_changed(op->agent, seq);
}
