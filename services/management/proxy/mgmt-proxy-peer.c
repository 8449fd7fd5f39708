/*
 * CreateProxyPeer (proxy-and-api.md 1.6): a proxy's embedded client joins
 * the account of a service with the one-time token of its mapping.
 *
 * The tokens are stateless (signed, with an expiry; the edge's module
 * makes and checks them); what makes one usable once is its hash in
 * proxy_used_tokens, inserted with ON CONFLICT DO NOTHING: of two uses on
 * any replicas only one INSERT lands. The token is spent before the peer
 * is added, as NetBird consumes it before AddPeer.
 */
#include "cp/base.h"
#include "cp/crypto-box.h"
#include "cp/store-peers.h"
#include "cp/util.h"
#include "mgmt-proxy-rpc-int.h"

static void peer_reply(mgmt_prpc_reply *ret, bool success, const char *error) {
        Management__CreateProxyPeerResponse resp = MANAGEMENT__CREATE_PROXY_PEER_RESPONSE__INIT;

        resp.success = success;
        if (error) {
                resp._error_message_case = MANAGEMENT__CREATE_PROXY_PEER_RESPONSE___ERROR_MESSAGE_ERROR_MESSAGE;
                resp.error_message = (char *) error;
        }
        prpc_ok(ret, &resp.base);
}

/* 1 when this call spent the token, 0 when it was spent before. */
static int spend(mgmt_prpc *p, const char *hash, const char *account_id, int64_t expires, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char exp[24];
        int r;

        (void) snprintf(exp, sizeof exp, "%" PRId64, expires);
        const char *params[3] = { hash, account_id, exp };
        r = prpc_exec(p, "INSERT INTO proxy_used_tokens (token_hash, account_id, expires_at)"
                      " VALUES ($1, $2, to_timestamp($3::bigint)) ON CONFLICT (token_hash) DO NOTHING"
                      " RETURNING 1", 3, params, &rows, reterr);
        if (r < 0)
                return r;
        return cp_store_rows_count(rows) == 1 ? 1 : 0;
}

void prpc_create_proxy_peer(mgmt_prpc *p, const mgmt_prpc_caller *who,
                            const Management__CreateProxyPeerRequest *req, mgmt_prpc_reply *ret) {
        uint8_t key[CP_WG_KEY_LEN];
        char hash[65] = "", name[5 + CP_ID_LEN + 1], id[CP_ID_LEN + 1];
        int64_t expires = 0, serial = 0;
        cp_error err = { 0 };
        int r;

        if (!prpc_scope_ok(who, req->account_id, ret))
                return;
        if (!*req->service_id || !*req->account_id || !*req->token)
                return peer_reply(ret, false,
                                  "missing required fields: service_id, account_id, and token are required");
        if (cp_crypto_wg_key_parse(req->wireguard_public_key, key, NULL) < 0)
                return peer_reply(ret, false, "invalid wireguard public key");
        if (strlen(req->cluster) > 255)
                return peer_reply(ret, false, "cluster address is too long");

        r = p->onetime_verify ? p->onetime_verify(req->token, req->account_id, req->service_id, hash, &expires,
                                                  p->onetime_userdata) : -ENOSYS;
        if (r >= 0) {
                r = spend(p, hash, req->account_id, expires, &err);
                if (r < 0)
                        return prpc_fail(ret, GRPC_STATUS_INTERNAL, "spend token: %s", err.message);
                r = r == 1 ? 0 : -EALREADY;
        }
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_UNAUTHENTICATED,
                                 "authentication failed: invalid or expired token");

        /* The same key again (the proxy restarted with its key): done. */
        r = cp_store_peer_get_by_key(p->store, req->wireguard_public_key, NULL, &err);
        if (r == 0)
                return peer_reply(ret, true, NULL);
        if (r != -ENOENT)
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "create proxy peer: %s", err.message);

        cp_id_new(id);
        (void) snprintf(name, sizeof name, "proxy-%s", id);
        cp_store_peer_meta meta = { .hostname = name, .go_os = "proxy", .os = "proxy" };
        cp_store_peer_register_req rr = {
                .wg_pub_key = req->wireguard_public_key,
                .meta = &meta,
                .dns_domain = p->dns_domain,
                .proxy_account_id = req->account_id,
                .proxy_cluster = req->cluster,
        };
        r = cp_store_peer_register(p->store, &rr, NULL, &serial, &err);
        if (r == -EEXIST)               /* a concurrent call with the same key won */
                return peer_reply(ret, true, NULL);
        if (r < 0)
                return prpc_fail(ret, GRPC_STATUS_INTERNAL, "create proxy peer: %s", err.message);
        if (p->account_changed)
                p->account_changed(req->account_id, serial, p->userdata);
        peer_reply(ret, true, NULL);
}
