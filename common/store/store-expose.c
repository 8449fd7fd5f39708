/*
 * Peer-exposed services (cp/store-expose.h): NetBird's
 * CreateServiceFromPeer, RenewServiceFromPeer, StopServiceFromPeer and
 * its expose reaper, on cp_store_tx.
 */
#include <jansson.h>

#include "cp/base.h"
#include "cp/store-expose.h"
#include "cp/store-services.h"
#include "cp/store-tx.h"

_Static_assert(CP_STORE_PROXY_CHANGES_LOCK == INT64_C(31070482533939321),
               "CP_STORE_SQL_PROXY_LOCK must spell CP_STORE_PROXY_CHANGES_LOCK");

/* A proxy counts as active while connected and seen in the last two
 * minutes (NetBird's proxyActiveThreshold). */
#define ACTIVE_PROXY "status = 'connected' AND last_seen > CURRENT_TIMESTAMP - interval '2 minutes'"

/* NetBird's Service.EventMeta() plus the peer's name and address, from a
 * services row s and a peers row p (LEFT JOINed: may be NULL). */
#define SERVICE_EVENT_META(s, p)                                                                        \
        "jsonb_strip_nulls(jsonb_build_object('name', " s ".name, 'domain', " s ".domain,"            \
        " 'proxy_cluster', " s ".proxy_cluster, 'source', " s ".source,"                               \
        " 'auth', " s ".auth <> '{}'::jsonb, 'mode', " s ".mode,"                                      \
        " 'listen_port', NULLIF(" s ".listen_port, 0), 'peer_name', " p ".name,"                       \
        " 'peer_ip', host(" p ".ip)))"

static const char SQL_PERMISSION[] =
        "SELECT a.settings_peer_expose_enabled, cardinality(a.settings_peer_expose_groups) > 0,"
        " EXISTS (SELECT 1 FROM group_peers gp WHERE gp.account_id = a.id AND gp.peer_id = $2"
        "  AND gp.group_id = ANY (a.settings_peer_expose_groups))"
        " FROM accounts a WHERE a.id = $1";

/* The public clusters a random domain is picked from (NetBird's
 * GetClusterDomains), and the clusters a domain may belong to: the
 * account's own proxies first, then the public ones. */
static const char SQL_PUBLIC_CLUSTERS[] =
        "SELECT DISTINCT cluster_address FROM proxies WHERE account_id IS NULL AND " ACTIVE_PROXY
        " ORDER BY 1";
static const char SQL_ALLOWED_CLUSTERS[] =
        "SELECT cluster_address FROM (SELECT cluster_address, min(CASE WHEN account_id IS NULL THEN 1 ELSE 0 END)"
        " AS pub FROM proxies WHERE (account_id IS NULL OR account_id = $1) AND " ACTIVE_PROXY
        " GROUP BY cluster_address) c ORDER BY pub, cluster_address";
static const char SQL_CUSTOM_DOMAIN[] =
        "SELECT target_cluster FROM proxy_domains WHERE account_id = $1 AND ($2 = domain OR $2 LIKE '%.' || domain)"
        " ORDER BY length(domain) DESC LIMIT 1";
/* Any active proxy of the cluster says it takes custom ports (NULL: no
 * proxy said anything). */
static const char SQL_CUSTOM_PORTS[] =
        "SELECT bool_or(supports_custom_ports) FROM proxies WHERE cluster_address = $1 AND " ACTIVE_PROXY;
/* NetBird's GetGroupByName: of equal names, the group with most peers. */
static const char SQL_GROUP_BY_NAME[] =
        "SELECT g.id FROM groups g LEFT JOIN group_peers gp ON gp.group_id = g.id"
        " WHERE g.account_id = $1 AND g.name = $2 GROUP BY g.id ORDER BY count(gp.peer_id) DESC, g.id LIMIT 1";

static const char SQL_LOCK_PEER[] = "SELECT 1 FROM peers WHERE account_id = $1 AND id = $2 FOR UPDATE";
static const char SQL_PEER_HAS_DOMAIN[] =
        "SELECT 1 FROM services WHERE account_id = $1 AND source_peer = $2 AND source = 'ephemeral'"
        " AND domain = $3 FOR UPDATE";
static const char SQL_DOMAIN_TAKEN[] = "SELECT 1 FROM services WHERE domain = $1";
static const char SQL_PEER_COUNT[] =
        "SELECT count(*) FROM (SELECT 1 FROM services WHERE account_id = $1 AND source_peer = $2"
        " AND source = 'ephemeral' FOR UPDATE) x";
static const char SQL_CLUSTER_PORTS[] =
        "SELECT DISTINCT listen_port FROM (SELECT listen_port FROM services WHERE proxy_cluster = $1"
        " AND listen_port > 0 FOR UPDATE) x";
static const char SQL_PORT_USERS[] =
        "SELECT name, domain FROM services WHERE proxy_cluster = $1 AND mode = $2 AND listen_port = $3::integer"
        " ORDER BY id FOR UPDATE";
/* The session's clock is the database's, like the sweep's. */
static const char SQL_SET_EXPIRY[] =
        "UPDATE services SET expires_at = CURRENT_TIMESTAMP + make_interval(secs => $2::bigint),"
        " meta_last_renewed_at = CURRENT_TIMESTAMP WHERE id = $1";
static const char SQL_EVENT[] =
        "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $3::int, $4, s.id, s.account_id, " SERVICE_EVENT_META("s", "p")
        " FROM services s LEFT JOIN peers p ON p.account_id = s.account_id AND p.id = $4"
        " WHERE s.account_id = $1 AND s.id = $2";

static const char SQL_SERVICE_BY_DOMAIN[] = "SELECT id FROM services WHERE domain = $1";
static const char SQL_RENEW[] =
        "UPDATE services SET expires_at = CURRENT_TIMESTAMP + make_interval(secs => $4::bigint),"
        " meta_last_renewed_at = CURRENT_TIMESTAMP"
        " WHERE id = $1 AND account_id = $2 AND source_peer = $3 AND source = 'ephemeral'";
static const char SQL_STOP_LOCK[] =
        "SELECT source, source_peer FROM services WHERE account_id = $1 AND id = $2 FOR UPDATE";

/* The reaper in one statement. The inner SELECT locks the due rows it
 * can (SKIP LOCKED: a row another replica is deleting, or a renewal
 * holds, is left to them); a row renewed meanwhile no longer matches.
 * The change rows are numbered only after the advisory lock is held (xl
 * is joined in before nextval runs). */
static const char SQL_SWEEP[] =
        "WITH d AS (DELETE FROM services s WHERE s.id IN (SELECT id FROM services WHERE source = 'ephemeral'"
        "  AND expires_at < CURRENT_TIMESTAMP ORDER BY expires_at LIMIT $1::int FOR UPDATE SKIP LOCKED)"
        "  AND s.expires_at < CURRENT_TIMESTAMP RETURNING s.*),"
        " xl AS (SELECT pg_advisory_xact_lock(" CP_STORE_SQL_PROXY_LOCK ") AS l"
        "  WHERE EXISTS (SELECT 1 FROM d WHERE d.enabled)),"
        " xc AS (INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"
        "  SELECT d.account_id, d.id, 2, d.proxy_cluster, d.domain FROM d CROSS JOIN xl WHERE d.enabled"
        "  ORDER BY d.id RETURNING seq),"
        " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        "  SELECT $2::int, d.source_peer, d.id, d.account_id, " SERVICE_EVENT_META("d", "p")
        "  FROM d LEFT JOIN peers p ON p.account_id = d.account_id AND p.id = d.source_peer)"
        " SELECT d.account_id, d.id, d.source_peer, d.domain, (SELECT max(seq) FROM xc) FROM d"
        " ORDER BY d.account_id, d.id";

/* ---- helpers ---------------------------------------------------------------------------------- */

static int one_row(cp_store_tx *tx, const char *sql, int n, const char *const *p, bool *found,
                   cp_store_rows **keep, cp_error *reterr) {
        cp_store_rows *rows = NULL;
        int r = cp_store_tx_exec(tx, sql, n, p, &rows, reterr);

        if (r < 0)
                return r;
        *found = cp_store_rows_count(rows) > 0;
        if (keep)
                *keep = rows;
        else
                cp_store_rows_free(rows);
        return 0;
}

static bool is_l4(const char *mode) {
        return strcmp(mode, "tcp") == 0 || strcmp(mode, "udp") == 0 || strcmp(mode, "tls") == 0;
}

static bool port_based(const char *mode) {
        return strcmp(mode, "tcp") == 0 || strcmp(mode, "udp") == 0;
}

/* NetBird's validateExposePermission. */
static int check_permission(cp_store_tx *tx, const cp_store_expose_req *req, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { req->account_id, req->peer_id };
        bool found;
        int r = one_row(tx, SQL_PERMISSION, 2, p, &found, &rows, reterr);

        if (r < 0)
                return r;
        if (!found)
                return cp_error_set(reterr, -EIO, "get account settings: account %s not found", req->account_id);
        if (!cp_store_rows_bool(rows, 0, 0))
                return cp_error_set(reterr, -EACCES, "peer expose is not enabled for this account");
        if (!cp_store_rows_bool(rows, 0, 1))
                return cp_error_set(reterr, -EACCES, "no group is set for peer expose");
        if (!cp_store_rows_bool(rows, 0, 2))
                return cp_error_set(reterr, -EACCES, "peer is not in an allowed expose group");
        return 0;
}

int cp_store_expose_permitted(cp_store *s, const char *account_id, const char *peer_id, cp_error *reterr) {
        cp_store_expose_req req = { .account_id = account_id, .peer_id = peer_id };
        cp_store_tx *tx = NULL;
        int r = cp_store_tx_begin(s, &tx, reterr);

        if (r < 0)
                return r;
        r = check_permission(tx, &req, reterr);
        (void) cp_store_tx_end(tx);     /* read only */
        return r;
}

/* The service's domain: name.base, or name under a random public
 * cluster (NetBird's buildRandomDomain). */
static int pick_domain(cp_store_tx *tx, const cp_store_expose_req *req, char out[256], cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *base = req->base_domain;
        int r;

        if (!base || !*base) {
                r = cp_store_tx_exec(tx, SQL_PUBLIC_CLUSTERS, 0, NULL, &rows, reterr);
                if (r < 0)
                        return r;
                int n = cp_store_rows_count(rows);
                if (n == 0)
                        return cp_error_set(reterr, -ENODEV, "no cluster domains available");
                base = cp_store_rows_get(rows, (int) cp_random_uniform((uint64_t) n), 0);
        }
        if ((size_t) snprintf(out, 256, "%s.%s", req->name, base) >= 256)
                return cp_error_set(reterr, -EINVAL, "domain %s.%s is too long", req->name, base);
        return 0;
}

static bool under(const char *domain, const char *parent) {
        size_t d = strlen(domain), p = strlen(parent);

        if (strcmp(domain, parent) == 0)
                return true;
        return d > p + 1 && domain[d - p - 1] == '.' && strcmp(domain + d - p, parent) == 0;
}

/* NetBird's DeriveClusterFromDomain: a free domain under an allowed
 * cluster, else the account's custom domain with the longest match. */
static int derive_cluster(cp_store_tx *tx, const char *account_id, const char *domain, char out[256],
                          cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL, *custom = NULL;
        const char *p[] = { account_id, domain };
        bool found;
        int r;

        r = cp_store_tx_exec(tx, SQL_ALLOWED_CLUSTERS, 1, p, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return cp_error_set(reterr, -ENOSPC, "could not derive cluster from domain %s: no proxy clusters "
                                    "available", domain);
        for (int i = 0; i < cp_store_rows_count(rows); i++) {
                const char *c = cp_store_rows_get(rows, i, 0);
                if (under(domain, c)) {
                        (void) snprintf(out, 256, "%s", c);
                        return 0;
                }
        }
        r = one_row(tx, SQL_CUSTOM_DOMAIN, 2, p, &found, &custom, reterr);
        if (r < 0)
                return r;
        if (!found)
                return cp_error_set(reterr, -ENOSPC, "could not derive cluster from domain %s: domain %s does not "
                                    "match any available proxy cluster", domain, domain);
        (void) snprintf(out, 256, "%s", cp_store_rows_get(custom, 0, 0));
        return 0;
}

/* The auth column: secrets as their hashes, the groups as ids. */
static int build_auth(cp_store_tx *tx, const cp_store_expose_req *req, char **ret, cp_error *reterr) {
        json_t *auth = json_object();
        int r = 0;

        if (req->password_hash)
                json_object_set_new(auth, "password_auth",
                                    json_pack("{s:b, s:s}", "enabled", 1, "password", req->password_hash));
        if (req->pin_hash)
                json_object_set_new(auth, "pin_auth", json_pack("{s:b, s:s}", "enabled", 1, "pin", req->pin_hash));
        if (req->n_user_groups > 0) {
                json_t *ids = json_array();
                for (size_t i = 0; r == 0 && i < req->n_user_groups; i++) {
                        _cleanup_rows_ cp_store_rows *g = NULL;
                        const char *p[] = { req->account_id, req->user_groups[i] };
                        bool found;
                        r = one_row(tx, SQL_GROUP_BY_NAME, 2, p, &found, &g, reterr);
                        if (r == 0 && !found)
                                r = cp_error_set(reterr, -ENOENT, "group: %s not found", req->user_groups[i]);
                        if (r == 0)
                                json_array_append_new(ids, json_string(cp_store_rows_get(g, 0, 0)));
                }
                json_object_set_new(auth, "bearer_auth",
                                    json_pack("{s:b, s:o}", "enabled", 1, "distribution_groups", ids));
        }
        if (r == 0)
                *ret = json_dumps(auth, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(auth);
        return r;
}

static char *build_targets(const cp_store_expose_req *req) {
        json_t *t = json_pack("[{s:s, s:s, s:s, s:i, s:b}]", "target_id", req->peer_id, "target_type", "peer",
                              "protocol", req->target_protocol, "port", req->port, "enabled", 1);
        char *s = json_dumps(t, JSON_COMPACT);

        json_decref(t);
        return s;
}

/* NetBird's ensureL4Port and checkPortConflict, under row locks. */
static int l4_port(cp_store_tx *tx, const cp_store_expose_req *req, const char *cluster, const char *domain,
                   cp_store_expose_created *ret, cp_error *reterr) {
        int port = req->listen_port > 0 ? req->listen_port : req->port;
        char buf[16];
        int r;

        ret->listen_port = 0;
        ret->port_auto_assigned = false;
        if (!is_l4(req->mode))
                return 0;
        if (port_based(req->mode) && port > 0) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *p[] = { cluster };
                r = cp_store_tx_exec(tx, SQL_CUSTOM_PORTS, 1, p, &rows, reterr);
                if (r < 0)
                        return r;
                if (!cp_store_rows_bool(rows, 0, 0))
                        port = 0;       /* an ephemeral service takes any port instead */
        }
        if (port == 0) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                _cleanup_free_ bool *taken = cp_xcalloc(CP_EXPOSE_PORT_MAX - CP_EXPOSE_PORT_MIN + 1, sizeof *taken);
                const char *p[] = { cluster };
                r = cp_store_tx_exec(tx, SQL_CLUSTER_PORTS, 1, p, &rows, reterr);
                if (r < 0)
                        return r;
                for (int i = 0; i < cp_store_rows_count(rows); i++) {
                        int64_t v = 0;
                        if (cp_parse_int64(cp_store_rows_get(rows, i, 0), CP_EXPOSE_PORT_MIN, CP_EXPOSE_PORT_MAX,
                                           &v) == 0)
                                taken[v - CP_EXPOSE_PORT_MIN] = true;
                }
                uint64_t range = CP_EXPOSE_PORT_MAX - CP_EXPOSE_PORT_MIN + 1;
                for (int i = 0; i < 100 && port == 0; i++) {
                        int c = CP_EXPOSE_PORT_MIN + (int) cp_random_uniform(range);
                        if (!taken[c - CP_EXPOSE_PORT_MIN])
                                port = c;
                }
                for (int c = CP_EXPOSE_PORT_MIN; c <= CP_EXPOSE_PORT_MAX && port == 0; c++)
                        if (!taken[c - CP_EXPOSE_PORT_MIN])
                                port = c;
                if (port == 0)
                        return cp_error_set(reterr, -ENOSPC, "no available ports on cluster %s", cluster);
                ret->port_auto_assigned = true;
        }
        _cleanup_rows_ cp_store_rows *users = NULL;
        (void) snprintf(buf, sizeof buf, "%d", port);
        const char *p[] = { cluster, req->mode, buf };
        r = cp_store_tx_exec(tx, SQL_PORT_USERS, 3, p, &users, reterr);
        if (r < 0)
                return r;
        for (int i = 0; i < cp_store_rows_count(users); i++) {
                /* TLS shares a port between domains (SNI). */
                if (strcmp(req->mode, "tls") == 0 && strcmp(cp_store_rows_get(users, i, 1), domain) != 0)
                        continue;
                return cp_error_set(reterr, -EEXIST, "%s port %d is already in use by service \"%s\" on cluster %s",
                                    req->mode, port, cp_store_rows_get(users, i, 0), cluster);
        }
        ret->listen_port = port;
        return 0;
}

static int event(cp_store_tx *tx, const char *account_id, const char *service_id, int activity,
                 const char *peer_id, cp_error *reterr) {
        char code[12];

        (void) snprintf(code, sizeof code, "%d", activity);
        const char *p[] = { account_id, service_id, code, peer_id };
        return cp_store_tx_exec(tx, SQL_EVENT, 4, p, NULL, reterr);
}

/* ---- create ----------------------------------------------------------------------------------- */

static int create_in(cp_store_tx *tx, const uint8_t data_key[CP_DATA_KEY_LEN], const cp_store_expose_req *req,
                     cp_store_expose_created *ret, cp_error *reterr) {
        _cleanup_free_ char *auth = NULL, *targets = NULL;
        char ttl[24];
        bool found;
        int r;

        /* NetBird's order: permission, domain, group names, cluster. */
        r = check_permission(tx, req, reterr);
        if (r == 0)
                r = pick_domain(tx, req, ret->domain, reterr);
        if (r == 0)
                r = build_auth(tx, req, &auth, reterr);
        if (r == 0)
                r = derive_cluster(tx, req->account_id, ret->domain, ret->cluster, reterr);
        if (r < 0)
                return r;
        targets = build_targets(req);

        const char *peer[] = { req->account_id, req->peer_id, ret->domain };
        r = one_row(tx, SQL_LOCK_PEER, 2, peer, &found, NULL, reterr);
        if (r == 0 && !found)
                r = cp_error_set(reterr, -ENOENT, "peer %s not found", req->peer_id);
        if (r == 0)
                r = one_row(tx, SQL_PEER_HAS_DOMAIN, 3, peer, &found, NULL, reterr);
        if (r == 0 && found)
                r = cp_error_set(reterr, -EEXIST, "peer already has an active expose session for this domain");
        if (r == 0)
                r = one_row(tx, SQL_DOMAIN_TAKEN, 1, &peer[2], &found, NULL, reterr);
        if (r == 0 && found)
                r = cp_error_set(reterr, -EEXIST, "domain already taken");
        if (r < 0)
                return r;
        _cleanup_rows_ cp_store_rows *count = NULL;
        r = cp_store_tx_exec(tx, SQL_PEER_COUNT, 2, peer, &count, reterr);
        if (r < 0)
                return r;
        if (strtoll(cp_store_rows_get(count, 0, 0), NULL, 10) >= CP_EXPOSE_MAX_PER_PEER)
                return cp_error_set(reterr, -ENOSPC,
                                    "peer has reached the maximum number of active expose sessions (%d)",
                                    CP_EXPOSE_MAX_PER_PEER);
        r = l4_port(tx, req, ret->cluster, ret->domain, ret, reterr);
        if (r < 0)
                return r;

        cp_store_service_new svc = {
                .account_id = req->account_id,
                .name = req->name,
                .domain = ret->domain,
                .proxy_cluster = ret->cluster,
                .mode = req->mode,
                .listen_port = ret->listen_port,
                .port_auto_assigned = ret->port_auto_assigned,
                .enabled = true,
                .targets = targets,
                .auth = auth,
                .source_peer = req->peer_id,
                .expires_at_s = cp_now_unix_ns() / 1000000000 + req->ttl_s,
        };
        r = cp_store_tx_service_create(tx, data_key, &svc, ret->id, &ret->seq, reterr);
        if (r == -EEXIST)
                return cp_error_set(reterr, -EEXIST, "domain already taken");
        if (r < 0)
                return r;
        (void) snprintf(ttl, sizeof ttl, "%" PRId64, req->ttl_s);
        const char *e[] = { ret->id, ttl };
        r = cp_store_tx_exec(tx, SQL_SET_EXPIRY, 2, e, NULL, reterr);
        if (r < 0)
                return r;
        return event(tx, req->account_id, ret->id, CP_ACTIVITY_PEER_SERVICE_EXPOSED, req->peer_id, reterr);
}

int cp_store_expose_create(cp_store *s, const uint8_t data_key[CP_DATA_KEY_LEN], const cp_store_expose_req *req,
                           cp_store_expose_created *ret, cp_error *reterr) {
        cp_store_tx *tx = NULL;
        int r;

        if (!req || !req->account_id || !req->peer_id || !req->name || !req->mode || !req->target_protocol ||
            req->port < 1 || req->port > 65535 || req->listen_port < 0 || req->listen_port > 65535 ||
            req->ttl_s <= 0)
                return cp_error_set(reterr, -EINVAL, "bad expose request");
        memset(ret, 0, sizeof *ret);
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = create_in(tx, data_key, req, ret, reterr);
        if (r == 0)
                r = cp_store_tx_commit(tx, reterr);
        else
                cp_store_tx_end(tx);
        return r;
}

/* ---- renew and stop --------------------------------------------------------------------------- */

static int service_by_domain(cp_store_tx *tx, const char *domain, char id[64], cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[] = { domain };
        bool found;
        int r = one_row(tx, SQL_SERVICE_BY_DOMAIN, 1, p, &found, &rows, reterr);

        if (r < 0)
                return r;
        if (!found)
                return cp_error_set(reterr, -ENOENT, "service with domain %s not found", domain);
        (void) snprintf(id, 64, "%s", cp_store_rows_get(rows, 0, 0));
        return 0;
}

int cp_store_expose_renew(cp_store *s, const char *account_id, const char *peer_id, const char *domain,
                          int64_t ttl_s, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        char id[64], ttl[24];
        int r;

        if (!account_id || !peer_id || !domain || ttl_s <= 0)
                return cp_error_set(reterr, -EINVAL, "bad renew request");
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = service_by_domain(tx, domain, id, reterr);
        if (r == 0) {
                (void) snprintf(ttl, sizeof ttl, "%" PRId64, ttl_s);
                const char *p[] = { id, account_id, peer_id, ttl };
                r = cp_store_tx_exec(tx, SQL_RENEW, 4, p, &rows, reterr);
        }
        if (r == 0 && cp_store_rows_affected(rows) == 0)
                r = cp_error_set(reterr, -ENOENT, "no active expose session for service %s", id);
        if (r == 0)
                return cp_store_tx_commit(tx, reterr);
        cp_store_tx_end(tx);
        return r;
}

static int stop_in(cp_store_tx *tx, const char *account_id, const char *peer_id, const char *domain,
                   int64_t *ret_seq, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char id[64];
        bool found;
        int r;

        r = service_by_domain(tx, domain, id, reterr);
        if (r < 0)
                return r;
        const char *p[] = { account_id, id };
        r = one_row(tx, SQL_STOP_LOCK, 2, p, &found, &rows, reterr);
        if (r < 0)
                return r;
        if (!found)
                return cp_error_set(reterr, -ENOENT, "service %s not found", id);
        if (strcmp(cp_store_rows_get(rows, 0, 0), "ephemeral") != 0)
                return cp_error_set(reterr, -EACCES, "cannot delete API-created service via peer expose");
        if (strcmp(cp_store_rows_get(rows, 0, 1), peer_id) != 0)
                return cp_error_set(reterr, -EACCES, "cannot delete service exposed by another peer");
        r = event(tx, account_id, id, CP_ACTIVITY_PEER_SERVICE_UNEXPOSED, peer_id, reterr);
        if (r < 0)
                return r;
        return cp_store_tx_service_delete(tx, account_id, id, ret_seq, reterr);
}

int cp_store_expose_stop(cp_store *s, const char *account_id, const char *peer_id, const char *domain,
                         int64_t *ret_seq, cp_error *reterr) {
        cp_store_tx *tx = NULL;
        int64_t seq = 0;
        int r;

        if (!account_id || !peer_id || !domain)
                return cp_error_set(reterr, -EINVAL, "bad stop request");
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = stop_in(tx, account_id, peer_id, domain, &seq, reterr);
        if (r == 0)
                r = cp_store_tx_commit(tx, reterr);
        else
                cp_store_tx_end(tx);
        if (r == 0 && ret_seq)
                *ret_seq = seq;
        return r;
}

/* ---- the sweep -------------------------------------------------------------------------------- */

int cp_store_expose_sweep(cp_store *s, cp_store_expired_expose **ret, size_t *ret_n, int64_t *ret_seq,
                          cp_error *reterr) {
        char limit[12], code[12];
        int r;

        if (!ret || !ret_n || !ret_seq)
                return cp_error_set(reterr, -EINVAL, "result pointers are required");
        *ret = NULL;
        *ret_n = 0;
        *ret_seq = 0;
        (void) snprintf(limit, sizeof limit, "%d", CP_EXPOSE_SWEEP_BATCH);
        (void) snprintf(code, sizeof code, "%d", CP_ACTIVITY_PEER_SERVICE_EXPOSE_EXPIRED);
        const char *p[] = { limit, code };
        for (int attempt = 0;; attempt++) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                cp_error err = { 0 };

                r = cp_store_exec1(s, SQL_SWEEP, 2, p, &rows, &err);
                if (r < 0) {
                        /* A deadlock with a writer that took the change-log
                         * lock before a service row: run again. */
                        if (attempt < 3 && strcmp(err.sqlstate, "40P01") == 0)
                                continue;
                        if (reterr)
                                *reterr = err;
                        return r;
                }
                int n = cp_store_rows_count(rows);
                if (n == 0)
                        return 0;
                cp_store_expired_expose *out = cp_xcalloc((size_t) n, sizeof *out);
                for (int i = 0; i < n; i++) {
                        (void) snprintf(out[i].account_id, sizeof out[i].account_id, "%s",
                                        cp_store_rows_get(rows, i, 0));
                        (void) snprintf(out[i].service_id, sizeof out[i].service_id, "%s",
                                        cp_store_rows_get(rows, i, 1));
                        (void) snprintf(out[i].peer_id, sizeof out[i].peer_id, "%s",
                                        cp_store_rows_get(rows, i, 2) ? cp_store_rows_get(rows, i, 2) : "");
                        (void) snprintf(out[i].domain, sizeof out[i].domain, "%s", cp_store_rows_get(rows, i, 3));
                }
                const char *seq = cp_store_rows_get(rows, 0, 4);
                if (seq)
                        (void) cp_parse_int64(seq, 0, INT64_MAX, ret_seq);
                *ret = out;
                *ret_n = (size_t) n;
                return 0;
        }
}
