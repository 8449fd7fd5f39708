/*
 * /api/peers: list (?name=, ?ip=), get, update, delete, accessible-peers
 * (openapi Peer, PeerBatch, PeerRequest, AccessiblePeer; NetBird's
 * handlers/peers/peers_handler.go and server/peer.go). The JSON, the list
 * and what is kept between requests are in api-peers-list.c.
 *
 * What a peer can reach (accessible-peers, accessible_peers_count) comes
 * from the network maps themselves: a common/netmap snapshot of the
 * account, the one the Sync path encodes maps from, never a second policy
 * evaluator.
 *
 * Regular users (NetBird's GetPeers / GetPeer / GetAccessiblePeers): the
 * read routes are API_MOD_SELF and the handlers decide with the Peers
 * module's read permission, as NetBird's managers do; update and delete
 * are plain API_MOD_PEERS routes.
 */
#include "api-activity.h"
#include "api-peers.h"
#include "cp/store-services.h"
#include "cp/store-peers.h"

#include <arpa/inet.h>

/* ---- the account ----------------------------------------------------------------------- */

static const char SQL_ACCOUNT[] =
        "SELECT network_serial, settings_dns_domain, settings_regular_users_view_blocked, network_net::text,"
        " network_net_v6 IS NOT NULL FROM accounts WHERE id = $1";

static int load_account(api_ctx *c, account_info *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        int r = api_sql(c, SQL_ACCOUNT, 1, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_internal(c, "the caller's account is gone", NULL);
        const char *dom = cp_store_rows_get(rows, 0, 1);
        ret->serial = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        (void) snprintf(ret->domain, sizeof ret->domain, "%s", dom && *dom ? dom : c->api->dns_domain);
        ret->view_blocked = cp_store_rows_bool(rows, 0, 2);
        (void) snprintf(ret->network, sizeof ret->network, "%s", cp_store_rows_get(rows, 0, 3));
        ret->has_v6 = cp_store_rows_bool(rows, 0, 4);
        return 0;
}

/* ---- who may see which peer ------------------------------------------------------------- */

/* NetBird's User.IsRestrictable(): the roles whose view the account
 * setting "regular users view blocked" empties. */
static bool restrictable(const api_ctx *c) {
        return strcmp(c->role, "user") == 0 || strcmp(c->role, "billing_admin") == 0;
}

static bool may_read_all(const api_ctx *c) {
        return api_allowed(c, API_MOD_PEERS, API_READ);
}

/* ---- GET /api/peers ----------------------------------------------------------------------------- */

static int list_peers(api_ctx *c) {
        const char *name = api_query(c, "name"), *ip = api_query(c, "ip");
        peer_filter f = { .name = name && *name ? name : NULL, .ip = ip && *ip ? ip : NULL };
        account_info acc;
        int r;

        r = load_account(c, &acc);
        if (r < 0)
                return r;
        if (!may_read_all(c)) {
                /* NetBird's GetPeers: a restrictable user sees nothing when
                 * the account blocks the view, else the peers they own. */
                if (restrictable(c) && acc.view_blocked)
                        return api_reply_text(c, 200, "[]", 2);
                f.user_id = c->user_id;
        }
        return api_peers__list(c, &acc, &f);
}

/* ---- GET /api/peers/{peerId} -------------------------------------------------------------------- */

typedef struct peer_row {
        char id[64];
        char *name;                     /* malloc'd; peer_row_release() */
        char label[CP_STORE_DNS_LABEL_MAX + 1];
        char ip[INET6_ADDRSTRLEN];
        char user_id[128];
        bool ssh_enabled;
        bool login_expiration_enabled;
        bool inactivity_expiration_enabled;
        bool requires_approval;
} peer_row;

#define SQL_FIND_PEER                                                                                       \
        "SELECT id, name, dns_label, host(ip), COALESCE(user_id, ''), ssh_enabled, login_expiration_enabled,"   \
        " inactivity_expiration_enabled, peer_status_requires_approval"                                         \
        " FROM peers WHERE account_id = $1 AND id = $2"
static const char SQL_FIND[] = SQL_FIND_PEER;
static const char SQL_FIND_FOR_UPDATE[] = SQL_FIND_PEER " FOR UPDATE";

static void peer_row_release(peer_row *p) {
        free(p->name);
        p->name = NULL;
}

static void peer_row_freep(peer_row *p) {
        peer_row_release(p);
}

/* Reads the peer; *found false when it is not in the account (nothing to
 * release then). */
static int find_peer(api_ctx *c, const char *id, bool lock, peer_row *ret, bool *found) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, lock ? SQL_FIND_FOR_UPDATE : SQL_FIND, 2, p, &rows);

        if (r < 0)
                return r;
        *found = cp_store_rows_count(rows) == 1;
        if (!*found)
                return 0;
        (void) snprintf(ret->id, sizeof ret->id, "%s", cp_store_rows_get(rows, 0, 0));
        ret->name = cp_xstrdup(cp_store_rows_get(rows, 0, 1));
        (void) snprintf(ret->label, sizeof ret->label, "%s", cp_store_rows_get(rows, 0, 2));
        (void) snprintf(ret->ip, sizeof ret->ip, "%s", cp_store_rows_get(rows, 0, 3));
        (void) snprintf(ret->user_id, sizeof ret->user_id, "%s", cp_store_rows_get(rows, 0, 4));
        ret->ssh_enabled = cp_store_rows_bool(rows, 0, 5);
        ret->login_expiration_enabled = cp_store_rows_bool(rows, 0, 6);
        ret->inactivity_expiration_enabled = cp_store_rows_bool(rows, 0, 7);
        ret->requires_approval = cp_store_rows_bool(rows, 0, 8);
        return 0;
}

static int get_peer(api_ctx *c) {
        const char *id = c->param[0];
        account_info acc;
        _cleanup_(peer_row_freep) peer_row p = { 0 };
        bool found;
        int r;

        r = find_peer(c, id, false, &p, &found);
        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer not found: %s", id);
        /* NetBird's GetPeer: without the Peers read permission only the
         * peer's owner; anyone else gets its Internal error (a 500). */
        if (!may_read_all(c) && strcmp(p.user_id, c->user_id) != 0)
                return api_error(c, 500, "user %s has no access to peer %s under account %s", c->user_id, id,
                                 c->account_id);
        r = load_account(c, &acc);
        if (r < 0)
                return r;
        return api_peers__reply_peer(c, &acc, id);
}

/* ---- PUT /api/peers/{peerId} -------------------------------------------------------------------- */

typedef struct peer_req {
        const char *name;
        bool ssh_enabled;
        bool login_expiration_enabled;
        bool inactivity_expiration_enabled;
        bool approval_required;
        bool has_approval;
        const char *ip;
        const char *ipv6;
} peer_req;

/* PeerRequest. The booleans NetBird marks required decode to false when
 * absent (Go's decoder), so a PUT sets all of them. */
static int parse_peer_req(api_ctx *c, peer_req *q) {
        json_t *body = api_body(c);
        int r;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 ||
            api_field_bool(c, body, "ssh_enabled", &q->ssh_enabled) < 0 ||
            api_field_bool(c, body, "login_expiration_enabled", &q->login_expiration_enabled) < 0 ||
            api_field_bool(c, body, "inactivity_expiration_enabled", &q->inactivity_expiration_enabled) < 0 ||
            api_field_str(c, body, "ip", &q->ip) < 0 || api_field_str(c, body, "ipv6", &q->ipv6) < 0)
                return API_FAIL;
        r = api_field_bool(c, body, "approval_required", &q->approval_required);
        if (r < 0)
                return API_FAIL;
        q->has_approval = r == 1;
        return 0;
}

static const char SQL_IP_CHECK[] =
        "SELECT $2::inet << a.network_net,"
        " (SELECT p.id FROM peers p WHERE p.account_id = $1 AND p.ip = $2::inet AND p.id <> $3 LIMIT 1)"
        " FROM accounts a WHERE a.id = $1";
static const char SQL_SET_IP[] = "UPDATE peers SET ip = $2::inet WHERE account_id = $1 AND id = $3";

/* NetBird's UpdatePeerIP: an address inside the account network that no
 * other peer has; event 88 with the old address. */
static int update_ip(api_ctx *c, const account_info *acc, peer_row *p, const char *ip) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        unsigned char bin[16];
        char canon[INET6_ADDRSTRLEN];
        int af = inet_pton(AF_INET, ip, bin) == 1 ? AF_INET : inet_pton(AF_INET6, ip, bin) == 1 ? AF_INET6 : 0;
        int r;

        if (!af)
                return api_error(c, 422, "invalid ip address %s: parseaddr(\"%s\"): unable to parse ip", ip, ip);
        (void) inet_ntop(af, bin, canon, sizeof canon);
        if (strcmp(canon, p->ip) == 0)
                return 0;
        const char *q[3] = { c->account_id, canon, p->id };
        r = api_sql(c, SQL_IP_CHECK, 3, q, &rows);
        if (r < 0)
                return r;
        if (af != AF_INET || !cp_store_rows_bool(rows, 0, 0))
                return api_error(c, 422, "ip %s is not within the account network range %s", canon, acc->network);
        if (cp_store_rows_get(rows, 0, 1))
                return api_error(c, 422, "ip %s is already assigned to peer %s", canon, cp_store_rows_get(rows, 0, 1));
        r = api_sql(c, SQL_SET_IP, 3, q, NULL);
        if (r < 0)
                return r;

        cp_strbuf meta;
        cp_strbuf_init(&meta);
        cp_strbuf_adds(&meta, "{\"old_ip\":\"");
        cp_strbuf_add_json_escaped(&meta, p->ip);
        cp_strbuf_adds(&meta, "\"}");
        cp_error err = { 0 };
        r = cp_store_tx_peer_event(c->tx, API_ACT_PEER_IP_UPDATED, c->account_id, p->id, c->user_id, NULL,
                                   c->api->dns_domain, meta.buf, &err);
        cp_strbuf_release(&meta);
        if (r < 0)
                return api_internal(c, "peer event", &err);
        (void) snprintf(p->ip, sizeof p->ip, "%s", canon);
        return 0;
}

/* NetBird's UpdatePeerIPv6: IPv6 overlay addresses are not supported
 * here, so any valid one meets "not configured" unless the account has a
 * v6 network (which nothing sets yet). */
static int update_ipv6(api_ctx *c, const account_info *acc, const char *ip) {
        unsigned char bin[16];

        if (inet_pton(AF_INET6, ip, bin) != 1) {
                if (inet_pton(AF_INET, ip, bin) == 1)
                        return api_error(c, 422, "address %s is not ipv6", ip);
                return api_error(c, 422, "invalid ipv6 address %s: parseaddr(\"%s\"): unable to parse ip", ip, ip);
        }
        if (!acc->has_v6)
                return api_error(c, 412, "ipv6 is not configured for this account");
        return api_error(c, 412, "ipv6 overlay addresses are not supported by this server");
}

static const char SQL_LABEL_TAKEN[] =
        "SELECT EXISTS (SELECT 1 FROM peers WHERE account_id = $1 AND dns_label = $2 AND id <> $3)";
static const char SQL_RENAME[] = "UPDATE peers SET name = $3, dns_label = $4 WHERE account_id = $1 AND id = $2";

static int label_taken(api_ctx *c, const char *peer_id, const char *label, bool *ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[3] = { c->account_id, label, peer_id };
        int r = api_sql(c, SQL_LABEL_TAKEN, 3, q, &rows);

        if (r < 0)
                return r;
        *ret = cp_store_rows_bool(rows, 0, 0);
        return 0;
}

/* A new name gets a new DNS label, derived as registration derives it
 * (cp_store_dns_label_from_hostname), with the "-<octet 3>-<octet 4>"
 * fallback when another peer holds the plain label. */
static int rename_peer(api_ctx *c, peer_row *p, const char *name, bool *renamed) {
        char label[CP_STORE_DNS_LABEL_MAX + 1], alt[CP_STORE_DNS_LABEL_MAX + 1];
        bool taken = false;
        int r;

        *renamed = false;
        if (strcmp(name, p->name) == 0)
                return 0;
        if (!*name)
                return api_error(c, 422, "peer name shouldn't be empty");
        if (cp_store_dns_label_from_hostname(name, label) <= 0)
                return api_error(c, 422, "invalid peer name %s: it gives no dns label", name);
        r = label_taken(c, p->id, label, &taken);
        if (r < 0)
                return r;
        if (taken) {
                if (cp_store_dns_label_with_ip(label, p->ip, alt) < 0)
                        return api_internal(c, "no IPv4 address for the label", NULL);
                r = label_taken(c, p->id, alt, &taken);
                if (r < 0)
                        return r;
                if (taken)
                        return api_error(c, 409, "dns labels %s and %s are already taken", label, alt);
                memcpy(label, alt, sizeof label);
        }
        const char *q[4] = { c->account_id, p->id, name, label };
        r = api_sql(c, SQL_RENAME, 4, q, NULL);
        if (r < 0)
                return r;
        free(p->name);
        p->name = cp_xstrdup(name);
        (void) snprintf(p->label, sizeof p->label, "%s", label);
        *renamed = true;
        return 0;
}

static const char SQL_SET_FLAGS[] =
        "UPDATE peers SET ssh_enabled = $3::boolean, login_expiration_enabled = $4::boolean,"
        " inactivity_expiration_enabled = $5::boolean, peer_status_requires_approval = $6::boolean"
        " WHERE account_id = $1 AND id = $2";

static const char *tf(bool v) {
        return v ? "true" : "false";
}

static int peer_event(api_ctx *c, int activity, const peer_row *p, const char *target) {
        cp_error err = { 0 };
        int r = cp_store_tx_peer_event(c->tx, activity, c->account_id, p->id, c->user_id, target,
                                       c->api->dns_domain, NULL, &err);

        return r < 0 ? api_internal(c, "peer event", &err) : 0;
}

#define SSO_ONLY(what) \
        "this peer hasn't been added with the sso login, therefore the " what " expiration can't be updated"

static int update_peer(api_ctx *c) {
        const char *id = c->param[0];
        peer_req q = { 0 };
        account_info acc;
        _cleanup_(peer_row_freep) peer_row p = { 0 };
        bool found, renamed = false;
        int r;

        if (parse_peer_req(c, &q) < 0)
                return API_FAIL;
        if ((r = load_account(c, &acc)) < 0 || (r = find_peer(c, id, true, &p, &found)) < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer not found: %s", id);
        /* What changes decides the events. */
        const bool was_ssh = p.ssh_enabled, was_login = p.login_expiration_enabled,
                   was_inactivity = p.inactivity_expiration_enabled;
        if (!q.name || !*q.name)
                return api_error(c, 422, "peer name shouldn't be empty");

        /* NetBird's handler order: the address, the IPv6 address, then
         * UpdatePeer's name, SSH and expiration settings. */
        if (q.ip && (r = update_ip(c, &acc, &p, q.ip)) < 0)
                return r;
        if (q.ipv6 && (r = update_ipv6(c, &acc, q.ipv6)) < 0)
                return r;
        if ((r = rename_peer(c, &p, q.name, &renamed)) < 0)
                return r;
        bool sso = p.user_id[0] != 0;
        if (q.login_expiration_enabled != p.login_expiration_enabled && !sso)
                return api_error(c, 412, SSO_ONLY("login"));
        if (q.inactivity_expiration_enabled != p.inactivity_expiration_enabled && !sso)
                return api_error(c, 412, SSO_ONLY("inactivity"));
        p.ssh_enabled = q.ssh_enabled;
        p.login_expiration_enabled = q.login_expiration_enabled;
        p.inactivity_expiration_enabled = q.inactivity_expiration_enabled;
        /* "approval_required" is read (a non-boolean is a 400) and
         * ignored, as NetBird's open-source UpdatePeer does: its validator
         * hands the update back and the status is never saved. */
        const char *u[6] = { c->account_id, p.id, tf(p.ssh_enabled), tf(p.login_expiration_enabled),
                             tf(p.inactivity_expiration_enabled), tf(p.requires_approval) };
        r = api_sql(c, SQL_SET_FLAGS, 6, u, NULL);
        if (r < 0)
                return r;

        /* NetBird's events, in its order; the SSH and expiration ones are
         * targeted at the peer's address, as NetBird does. */
        if (p.ssh_enabled != was_ssh &&
            (r = peer_event(c, p.ssh_enabled ? API_ACT_PEER_SSH_ENABLED : API_ACT_PEER_SSH_DISABLED, &p, p.ip)) < 0)
                return r;
        if (renamed && (r = peer_event(c, API_ACT_PEER_RENAMED, &p, NULL)) < 0)
                return r;
        if (p.login_expiration_enabled != was_login &&
            (r = peer_event(c, p.login_expiration_enabled ? API_ACT_PEER_LOGIN_EXPIRATION_ENABLED
                                                          : API_ACT_PEER_LOGIN_EXPIRATION_DISABLED,
                            &p, p.ip)) < 0)
                return r;
        if (p.inactivity_expiration_enabled != was_inactivity &&
            (r = peer_event(c, p.inactivity_expiration_enabled ? API_ACT_PEER_INACTIVITY_EXPIRATION_ENABLED
                                                               : API_ACT_PEER_INACTIVITY_EXPIRATION_DISABLED,
                            &p, p.ip)) < 0)
                return r;
        /* NetBird bumps the serial on every update, changed or not. */
        api_changed(c);
        return api_peers__reply_peer(c, &acc, p.id);
}

/* ---- DELETE /api/peers/{peerId} ----------------------------------------------------------------- */

/* NetBird's deletePeers: every policy with a rule that names the peer as
 * its source or destination resource goes too, each with event 11
 * (meta {name}, target the peer). */
static const char SQL_DELETE_PEER_POLICIES[] =
        "WITH d AS (DELETE FROM policies p WHERE p.account_id = $1 AND EXISTS (SELECT 1 FROM policy_rules r"
        " WHERE r.account_id = $1 AND r.policy_id = p.id"
        " AND (r.source_resource_id = $2 OR r.destination_resource_id = $2)) RETURNING p.name)"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $4::int, $3, $2, $1, jsonb_build_object('name', d.name) FROM d";

/* Whether the peer exposed a service proxies serve (its deletion then
 * writes REMOVED change rows: cp/store-expose.h). */
static const char SQL_PEER_EXPOSES[] =
        "SELECT EXISTS (SELECT 1 FROM services WHERE account_id = $1 AND source_peer = $2 AND enabled)";
static const char SQL_LAST_PROXY_SEQ[] = "SELECT COALESCE(max(seq), 0) FROM proxy_mapping_changes";
/* NetBird's validatePeerDelete: a peer that is a network router stays. */
static const char SQL_PEER_ROUTER[] =
        "SELECT id FROM network_routers WHERE account_id = $1 AND peer = $2 ORDER BY id LIMIT 1";

static int delete_peer(api_ctx *c) {
        const char *id = c->param[0];
        char code[16];
        cp_error err = { 0 };
        _cleanup_(peer_row_freep) peer_row p = { 0 };
        bool found;
        int r;

        r = find_peer(c, id, true, &p, &found);
        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "peer %s account not found", id);
        const char *q[4] = { c->account_id, id, c->user_id, code };
        _cleanup_rows_ cp_store_rows *router = NULL, *service = NULL;
        r = api_sql(c, CP_STORE_SQL_SERVICE_TARGETING, 2, q, &service);
        if (r < 0)
                return r;
        if (cp_store_rows_count(service) > 0)
                return api_error(c, 412, "peer %s is in use by proxy %s", id, cp_store_rows_get(service, 0, 0));
        r = api_sql(c, SQL_PEER_ROUTER, 2, q, &router);
        if (r < 0)
                return r;
        if (cp_store_rows_count(router) > 0)
                return api_error(c, 412, "peer is linked to a network router: %s", cp_store_rows_get(router, 0, 0));
        (void) snprintf(code, sizeof code, "%d", API_ACT_POLICY_REMOVED);
        r = api_sql(c, SQL_DELETE_PEER_POLICIES, 4, q, NULL);
        if (r < 0)
                return r;
        _cleanup_rows_ cp_store_rows *exposed = NULL;
        r = api_sql(c, SQL_PEER_EXPOSES, 2, q, &exposed);
        if (r < 0)
                return r;
        r = cp_store_tx_peer_delete(c->tx, c->account_id, id, c->user_id, c->api->dns_domain, &err);
        if (r == -ENOENT)
                return api_error(c, 404, "peer %s account not found", id);
        if (r < 0)
                return api_internal(c, "deleting the peer", &err);
        if (cp_store_rows_bool(exposed, 0, 0)) {
                /* The delete wrote REMOVED change rows for the services
                 * the peer exposed and holds the change-log lock, so the
                 * highest seq this transaction sees is its own. */
                _cleanup_rows_ cp_store_rows *seq = NULL;
                r = api_sql(c, SQL_LAST_PROXY_SEQ, 0, NULL, &seq);
                if (r < 0)
                        return r;
                c->proxy_seq = strtoll(cp_store_rows_get(seq, 0, 0), NULL, 10);
        }
        /* The fan-out this triggers ends the peer's own Sync stream with
         * its last, empty map (services/management/agent/mgmt-sync.c). */
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- GET /api/peers/{peerId}/accessible-peers ------------------------------------------------- */

/* AccessiblePeer for the ids in $2, in that order. */
static const char SQL_ACCESSIBLE[] =
        "SELECT COALESCE(json_agg(json_build_object('city_name', p.location_city_name,"
        " 'connected', p.peer_status_connected, 'country_code', p.location_country_code,"
        " 'dns_label', CASE WHEN $3 = '' THEN p.dns_label ELSE p.dns_label || '.' || $3 END,"
        " 'geoname_id', p.location_geo_name_id, 'id', p.id, 'ip', host(p.ip),"
        " 'last_seen', " API_TS_OR_ZERO_JSON("p.peer_status_last_seen") ","
        " 'name', p.name, 'os', p.meta_os, 'user_id', COALESCE(p.user_id, '')) ORDER BY u.n), '[]')"
        " FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n)"
        " JOIN peers p ON p.account_id = $1 AND p.id = u.id";

static int reply_accessible(api_ctx *c, const account_info *acc, const char *id) {
        cp_netmap_account *a = NULL;
        cp_netmap_visible v = { 0 };
        cp_strbuf ids;
        bool found;
        int r;

        r = api_peers__snapshot(c, acc, &a);
        if (r < 0)
                return r;
        int64_t idx = cp_netmap_account_find_peer(a, id);
        if (idx < 0) {
                /* Not a peer of this account (NetBird answers an empty
                 * list; an id of another tenant or a typo is a 404 here,
                 * like the peer's own GET). */
                cp_netmap_account_unref(a);
                return api_error(c, 404, "peer not found");
        }
        cp_strbuf_init(&ids);
        api_pgarray_begin(&ids);
        cp_netmap_worker *w = cp_netmap_worker_new();
        if (cp_netmap_visible_peers(w, a, (size_t) idx, &v) == 0) {
                for (size_t k = 0; k < v.n_remote; k++)
                        api_pgarray_add(&ids, cp_netmap_account_peer_id(a, v.remote[k]));
                for (size_t k = 0; k < v.n_offline; k++)
                        api_pgarray_add(&ids, cp_netmap_account_peer_id(a, v.offline[k]));
        }
        api_pgarray_end(&ids);
        cp_netmap_worker_free(w);
        cp_netmap_account_unref(a);
        const char *q[3] = { c->account_id, ids.buf, acc->domain };
        r = api_sql_reply(c, 200, SQL_ACCESSIBLE, 3, q, &found);
        cp_strbuf_release(&ids);
        if (r == 0 && !found)
                r = api_reply_text(c, 200, "[]", 2);
        return r;
}

static int accessible_peers(api_ctx *c) {
        const char *id = c->param[0];
        account_info acc;
        int r;

        r = load_account(c, &acc);
        if (r < 0)
                return r;
        /* NetBird's GetAccessiblePeers: without the Peers read permission,
         * nothing when the view is blocked, 404 for an unknown peer and
         * nothing for someone else's; with it, whatever the map says
         * (404 for an unknown peer: NetBird answers an empty list). */
        if (!may_read_all(c)) {
                _cleanup_(peer_row_freep) peer_row p = { 0 };
                bool found;
                if (acc.view_blocked)
                        return api_reply_text(c, 200, "[]", 2);
                r = find_peer(c, id, false, &p, &found);
                if (r < 0)
                        return r;
                if (!found)
                        return api_error(c, 404, "peer not found");
                if (strcmp(p.user_id, c->user_id) != 0)
                        return api_reply_text(c, 200, "[]", 2);
        }
        return reply_accessible(c, &acc, id);
}

const api_route api_peers_routes[] = {
        { "GET", "/api/peers", API_MOD_SELF, API_READ, list_peers },
        { "GET", "/api/peers/{peerId}", API_MOD_SELF, API_READ, get_peer },
        { "PUT", "/api/peers/{peerId}", API_MOD_PEERS, API_UPDATE, update_peer },
        { "DELETE", "/api/peers/{peerId}", API_MOD_PEERS, API_DELETE, delete_peer },
        { "GET", "/api/peers/{peerId}/accessible-peers", API_MOD_SELF, API_READ, accessible_peers },
        { NULL },
};
