/*
 * store-snapshot.c: one account's network-map inputs in one REPEATABLE
 * READ READ ONLY transaction, one query per table (cp/store-snapshot.h).
 *
 * Lists come back as JSON text (array_to_json) and are read with jansson,
 * as store-peers.c does; an empty list is the literal "[]" and costs no
 * parse. Queries go through PQexecParams on the borrowed connection, so
 * the statement table in store.c is untouched.
 */
#include "cp/base.h"

#include <jansson.h>

#include "cp/store-snapshot.h"
#include "cp/store-tx.h"
#include "store-int.h"

#define Q_ACCOUNT \
        "SELECT network_serial, network_net::text, settings_dns_domain," \
        " settings_lazy_connection_enabled, settings_routing_peer_dns_resolution_enabled," \
        " settings_peer_login_expiration_enabled, settings_peer_login_expiration," \
        " array_to_json(dns_settings_disabled_management_groups)::text," \
        " (EXTRACT(EPOCH FROM now()) * 1000000)::bigint" \
        " FROM accounts WHERE id = $1"

#define Q_PEERS \
        "SELECT id, key, host(ip), dns_label, array_to_json(extra_dns_labels)::text, ssh_key," \
        " meta_wt_version, COALESCE(user_id, ''), ssh_enabled," \
        " COALESCE((meta_flags->>'ServerSSHAllowed')::boolean, false)," \
        " 1 = ANY(meta_capabilities), login_expiration_enabled," \
        " COALESCE((EXTRACT(EPOCH FROM last_login) * 1000000)::bigint, 0)," \
        " peer_status_login_expired, peer_status_requires_approval" \
        " FROM peers WHERE account_id = $1 ORDER BY id"

#define Q_GROUPS "SELECT id, name FROM groups WHERE account_id = $1 ORDER BY id"

#define Q_GROUP_PEERS \
        "SELECT group_id, peer_id FROM group_peers WHERE account_id = $1 ORDER BY group_id, peer_id"

#define Q_POLICIES "SELECT id, enabled FROM policies WHERE account_id = $1 ORDER BY id"

/* port_ranges are int4range, canonically [start, end + 1). */
#define Q_RULES \
        "SELECT id, policy_id, enabled, action, protocol, bidirectional," \
        " array_to_json(sources)::text, array_to_json(destinations)::text," \
        " source_resource_id, source_resource_type, destination_resource_id, destination_resource_type," \
        " array_to_json(ports)::text," \
        " COALESCE((SELECT json_agg(json_build_array(lower(r), upper(r) - 1))" \
        " FROM unnest(port_ranges) r WHERE NOT isempty(r)), '[]')::text" \
        " FROM policy_rules WHERE account_id = $1 ORDER BY policy_id, id"

#define Q_ROUTES \
        "SELECT id, network::text, network_type, net_id, peer," \
        " array_to_json(peer_groups)::text, array_to_json(groups)::text," \
        " array_to_json(access_control_groups)::text, array_to_json(domains)::text," \
        " metric, masquerade, enabled, keep_route, skip_auto_apply" \
        " FROM routes WHERE account_id = $1 ORDER BY id"

#define Q_NSGROUPS \
        "SELECT id, enabled, \"primary\", search_domains_enabled, name_servers::text," \
        " array_to_json(groups)::text, array_to_json(domains)::text" \
        " FROM name_server_groups WHERE account_id = $1 ORDER BY id"

#define Q_ZONES \
        "SELECT id, domain, enabled, enable_search_domain, array_to_json(distribution_groups)::text" \
        " FROM dns_zones WHERE account_id = $1 ORDER BY id"

#define Q_ZONE_RECORDS \
        "SELECT id, zone_id, name, type, content, ttl FROM dns_records WHERE account_id = $1 ORDER BY zone_id, id"
#define Q_NETWORKS "SELECT id, name FROM networks WHERE account_id = $1 ORDER BY id"

#define Q_NETWORK_RESOURCES \
        "SELECT id, network_id, name, type, prefix::text, domain, enabled" \
        " FROM network_resources WHERE account_id = $1 ORDER BY id"

#define Q_NETWORK_ROUTERS \
        "SELECT id, network_id, peer, array_to_json(peer_groups)::text, metric, masquerade, enabled" \
        " FROM network_routers WHERE account_id = $1 ORDER BY id"

#define Q_GROUP_RESOURCES \
        "SELECT group_id, resource_id FROM group_resources WHERE account_id = $1 ORDER BY group_id, resource_id"

#define Q_POSTURE_CHECKS "SELECT id, checks::text FROM posture_checks WHERE account_id = $1 ORDER BY id"

#define Q_POLICY_POSTURE \
        "SELECT id, array_to_json(source_posture_checks)::text FROM policies" \
        " WHERE account_id = $1 AND source_posture_checks <> '{}' ORDER BY id"

#define Q_POSTURE_PEERS \
        "SELECT id, meta_wt_version, meta_go_os, meta_os_version, meta_kernel_version," \
        " COALESCE((SELECT json_agg(e->>'NetIP') FROM jsonb_array_elements(meta_network_addresses) e" \
        "  WHERE jsonb_typeof(e) = 'object' AND e ? 'NetIP'), '[]')::text," \
        " COALESCE((SELECT json_agg(e->>'Path') FROM jsonb_array_elements(meta_files) e" \
        "  WHERE jsonb_typeof(e) = 'object' AND e->'ProcessIsRunning' = 'true' AND e ? 'Path'), '[]')::text," \
        " COALESCE(host(location_connection_ip), ''), location_country_code, location_city_name" \
        " FROM peers WHERE account_id = $1" \
        " AND EXISTS (SELECT 1 FROM policies x WHERE x.account_id = $1 AND x.source_posture_checks <> '{}')" \
        " ORDER BY id"

static int query(cp_store_conn *c, const char *sql, const char *account_id, PGresult **ret, cp_error *reterr) {
        const char *params[1] = { account_id };
        PGresult *res = PQexecParams(c->pg, sql, 1, NULL, params, NULL, NULL, 0);

        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                int r = cp_store__error(c->pg, res, reterr);
                PQclear(res);
                return r;
        }
        *ret = res;
        return 0;
}

static const char *val(const PGresult *res, int row, int col) {
        return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static const char *str(const PGresult *res, int row, int col) {
        return PQgetvalue(res, row, col);       /* "" for NULL */
}

static bool boolean(const PGresult *res, int row, int col) {
        return PQgetvalue(res, row, col)[0] == 't';
}

static int64_t i64(const PGresult *res, int row, int col) {
        return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* ---- JSON lists ----------------------------------------------------------------- */

typedef struct strv {
        json_t *j;
        const char **v;
        size_t n;
} strv;

static void strv_release(strv *s) {
        json_decref(s->j);
        free(s->v);
        *s = (strv) { 0 };
}

static int bad_json(cp_error *reterr, const char *what) {
        return cp_error_set(reterr, -EBADMSG, "snapshot: cannot read %s", what);
}

/* A JSON array of strings (NULL or "[]" = empty). */
static int strv_parse(const char *text, strv *ret, const char *what, cp_error *reterr) {
        *ret = (strv) { 0 };
        if (!text || strcmp(text, "[]") == 0)
                return 0;
        json_t *j = json_loads(text, 0, NULL);
        if (!json_is_array(j)) {
                json_decref(j);
                return bad_json(reterr, what);
        }
        ret->j = j;
        ret->n = json_array_size(j);
        ret->v = cp_xmalloc((ret->n ? ret->n : 1) * sizeof *ret->v);
        for (size_t i = 0; i < ret->n; i++) {
                ret->v[i] = json_string_value(json_array_get(j, i));
                if (!ret->v[i]) {
                        strv_release(ret);
                        return bad_json(reterr, what);
                }
        }
        return 0;
}

/* A JSON array of integers, or of [start, end] pairs when pairs is set,
 * flattened into a new int32 array. */
static int intv_parse(const char *text, bool pairs, int32_t **ret, size_t *ret_n, const char *what,
                      cp_error *reterr) {
        *ret = NULL;
        *ret_n = 0;
        if (!text || strcmp(text, "[]") == 0)
                return 0;
        json_t *j = json_loads(text, 0, NULL);
        if (!json_is_array(j)) {
                json_decref(j);
                return bad_json(reterr, what);
        }
        size_t n = json_array_size(j), k = 0;
        int32_t *v = cp_xmalloc((n ? n : 1) * (pairs ? 2 : 1) * sizeof *v);
        for (size_t i = 0; i < n; i++) {
                json_t *e = json_array_get(j, i);
                json_t *x[2] = { e, NULL };
                if (pairs) {
                        if (!json_is_array(e) || json_array_size(e) != 2)
                                goto bad;
                        x[0] = json_array_get(e, 0);
                        x[1] = json_array_get(e, 1);
                }
                for (int m = 0; m < (pairs ? 2 : 1); m++) {
                        if (!json_is_integer(x[m]))
                                goto bad;
                        v[k++] = (int32_t) json_integer_value(x[m]);
                }
        }
        json_decref(j);
        *ret = v;
        *ret_n = pairs ? k / 2 : k;
        return 0;
bad:
        json_decref(j);
        free(v);
        return bad_json(reterr, what);
}

/* ---- tables ------------------------------------------------------------------------ */

static int load_account(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                        cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        strv groups;
        int r = query(c, Q_ACCOUNT, account_id, &res, reterr);

        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "snapshot: no account %s", account_id);
        r = strv_parse(val(res, 0, 7), &groups, "disabled DNS groups", reterr);
        if (r < 0)
                return r;
        cp_store_snap_account a = {
                .id = account_id,
                .network_serial = i64(res, 0, 0),
                .network_cidr = str(res, 0, 1),
                .dns_domain = str(res, 0, 2),
                .lazy_connection_enabled = boolean(res, 0, 3),
                .routing_peer_dns_resolution_enabled = boolean(res, 0, 4),
                .login_expiration_enabled = boolean(res, 0, 5),
                .login_expiration_ns = i64(res, 0, 6),
                .dns_disabled_groups = groups.v,
                .n_dns_disabled_groups = groups.n,
                .now_unix_ns = i64(res, 0, 8) * 1000,
        };
        r = sink->account ? sink->account(ud, &a, reterr) : 0;
        strv_release(&groups);
        return r;
}

static int load_peers(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                      cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_PEERS, account_id, &res, reterr);

        for (int i = 0; r >= 0 && i < PQntuples(res); i++) {
                strv labels;
                r = strv_parse(val(res, i, 4), &labels, "extra DNS labels", reterr);
                if (r < 0)
                        break;
                cp_store_snap_peer p = {
                        .id = str(res, i, 0),
                        .key = str(res, i, 1),
                        .ip = str(res, i, 2),
                        .dns_label = str(res, i, 3),
                        .extra_dns_labels = labels.v,
                        .n_extra_dns_labels = labels.n,
                        .ssh_key = str(res, i, 5),
                        .wt_version = str(res, i, 6),
                        .user_id = str(res, i, 7),
                        .ssh_enabled = boolean(res, i, 8),
                        .server_ssh_allowed = boolean(res, i, 9),
                        .cap_source_prefixes = boolean(res, i, 10),
                        .login_expiration_enabled = boolean(res, i, 11),
                        .last_login_unix_ns = i64(res, i, 12) * 1000,
                        .status_login_expired = boolean(res, i, 13),
                        .requires_approval = boolean(res, i, 14),
                };
                r = sink->peer ? sink->peer(ud, &p, reterr) : 0;
                strv_release(&labels);
        }
        return r;
}

static int load_pairs(cp_store_conn *c, const char *sql, const char *account_id,
                      int (*cb)(void *, const char *, const char *, cp_error *), void *ud, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, sql, account_id, &res, reterr);

        for (int i = 0; r >= 0 && cb && i < PQntuples(res); i++)
                r = cb(ud, str(res, i, 0), str(res, i, 1), reterr);
        return r;
}

static int load_policies(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                         cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_POLICIES, account_id, &res, reterr);

        for (int i = 0; r >= 0 && sink->policy && i < PQntuples(res); i++)
                r = sink->policy(ud, str(res, i, 0), boolean(res, i, 1), reterr);
        return r;
}

static int load_rules(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                      cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_RULES, account_id, &res, reterr);

        for (int i = 0; r >= 0 && i < PQntuples(res); i++) {
                strv src = { 0 }, dst = { 0 };
                int32_t *ports = NULL, *ranges = NULL;
                size_t n_ports = 0, n_ranges = 0;

                if ((r = strv_parse(val(res, i, 6), &src, "rule sources", reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 7), &dst, "rule destinations", reterr)) < 0 ||
                    (r = intv_parse(val(res, i, 12), false, &ports, &n_ports, "rule ports", reterr)) < 0 ||
                    (r = intv_parse(val(res, i, 13), true, &ranges, &n_ranges, "rule port ranges", reterr)) < 0)
                        goto next;
                cp_store_snap_rule rule = {
                        .id = str(res, i, 0),
                        .policy_id = str(res, i, 1),
                        .enabled = boolean(res, i, 2),
                        .action = str(res, i, 3),
                        .protocol = str(res, i, 4),
                        .bidirectional = boolean(res, i, 5),
                        .sources = src.v,
                        .n_sources = src.n,
                        .destinations = dst.v,
                        .n_destinations = dst.n,
                        .source_resource_id = val(res, i, 8),
                        .source_resource_type = val(res, i, 9),
                        .destination_resource_id = val(res, i, 10),
                        .destination_resource_type = val(res, i, 11),
                        .ports = ports,
                        .n_ports = n_ports,
                        .port_ranges = ranges,
                        .n_port_ranges = n_ranges,
                };
                r = sink->rule ? sink->rule(ud, &rule, reterr) : 0;
        next:
                strv_release(&src);
                strv_release(&dst);
                free(ports);
                free(ranges);
        }
        return r;
}

static int load_routes(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                       cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_ROUTES, account_id, &res, reterr);

        for (int i = 0; r >= 0 && i < PQntuples(res); i++) {
                strv pg = { 0 }, g = { 0 }, acg = { 0 }, dom = { 0 };

                if ((r = strv_parse(val(res, i, 5), &pg, "route peer groups", reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 6), &g, "route groups", reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 7), &acg, "route access control groups", reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 8), &dom, "route domains", reterr)) < 0)
                        goto next;
                cp_store_snap_route route = {
                        .id = str(res, i, 0),
                        .network = val(res, i, 1),
                        .network_type = (int) i64(res, i, 2),
                        .net_id = str(res, i, 3),
                        .peer = val(res, i, 4),
                        .peer_groups = pg.v,
                        .n_peer_groups = pg.n,
                        .groups = g.v,
                        .n_groups = g.n,
                        .access_control_groups = acg.v,
                        .n_access_control_groups = acg.n,
                        .domains = dom.v,
                        .n_domains = dom.n,
                        .metric = (int) i64(res, i, 9),
                        .masquerade = boolean(res, i, 10),
                        .enabled = boolean(res, i, 11),
                        .keep_route = boolean(res, i, 12),
                        .skip_auto_apply = boolean(res, i, 13),
                };
                r = sink->route ? sink->route(ud, &route, reterr) : 0;
        next:
                strv_release(&pg);
                strv_release(&g);
                strv_release(&acg);
                strv_release(&dom);
        }
        return r;
}

/* name_servers: [{"ip": "1.1.1.1", "ns_type": "udp", "port": 53}, ...] */
static int parse_nameservers(const char *text, json_t **ret_j, cp_store_snap_nameserver **ret, size_t *ret_n,
                             cp_error *reterr) {
        json_t *j = json_loads(text ? text : "[]", 0, NULL);
        *ret_j = NULL;
        *ret = NULL;
        *ret_n = 0;
        if (!json_is_array(j)) {
                json_decref(j);
                return bad_json(reterr, "name servers");
        }
        size_t n = json_array_size(j);
        cp_store_snap_nameserver *v = cp_xcalloc(n ? n : 1, sizeof *v);
        for (size_t i = 0; i < n; i++) {
                json_t *e = json_array_get(j, i);
                const char *ip = json_string_value(json_object_get(e, "ip"));
                const char *type = json_string_value(json_object_get(e, "ns_type"));
                json_t *port = json_object_get(e, "port");
                if (!ip || (port && !json_is_integer(port))) {
                        free(v);
                        json_decref(j);
                        return bad_json(reterr, "name servers");
                }
                v[i] = (cp_store_snap_nameserver) { ip, type ? type : "udp",
                                                    port ? (int) json_integer_value(port) : 53 };
        }
        *ret_j = j;
        *ret = v;
        *ret_n = n;
        return 0;
}

static int load_nsgroups(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                         cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_NSGROUPS, account_id, &res, reterr);

        for (int i = 0; r >= 0 && i < PQntuples(res); i++) {
                strv g = { 0 }, dom = { 0 };
                json_t *nsj = NULL;
                cp_store_snap_nameserver *ns = NULL;
                size_t n_ns = 0;

                if ((r = parse_nameservers(val(res, i, 4), &nsj, &ns, &n_ns, reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 5), &g, "nameserver groups", reterr)) < 0 ||
                    (r = strv_parse(val(res, i, 6), &dom, "nameserver domains", reterr)) < 0)
                        goto next;
                cp_store_snap_nsgroup nsg = {
                        .id = str(res, i, 0),
                        .enabled = boolean(res, i, 1),
                        .primary = boolean(res, i, 2),
                        .search_domains_enabled = boolean(res, i, 3),
                        .nameservers = ns,
                        .n_nameservers = n_ns,
                        .groups = g.v,
                        .n_groups = g.n,
                        .domains = dom.v,
                        .n_domains = dom.n,
                };
                r = sink->nsgroup ? sink->nsgroup(ud, &nsg, reterr) : 0;
        next:
                free(ns);
                json_decref(nsj);
                strv_release(&g);
                strv_release(&dom);
        }
        return r;
}

static int load_zones(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                      cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL, *recs = NULL;
        int r = query(c, Q_ZONES, account_id, &res, reterr);

        for (int i = 0; r >= 0 && i < PQntuples(res); i++) {
                strv g = { 0 };
                if ((r = strv_parse(val(res, i, 4), &g, "zone distribution groups", reterr)) < 0)
                        break;
                cp_store_snap_zone z = {
                        .id = str(res, i, 0),
                        .domain = str(res, i, 1),
                        .enabled = boolean(res, i, 2),
                        .enable_search_domain = boolean(res, i, 3),
                        .groups = g.v,
                        .n_groups = g.n,
                };
                r = sink->zone ? sink->zone(ud, &z, reterr) : 0;
                strv_release(&g);
        }
        if (r >= 0)
                r = query(c, Q_ZONE_RECORDS, account_id, &recs, reterr);
        for (int i = 0; r >= 0 && i < PQntuples(recs); i++) {
                cp_store_snap_zone_record rec = {
                        .id = str(recs, i, 0),
                        .zone_id = str(recs, i, 1),
                        .name = str(recs, i, 2),
                        .type = str(recs, i, 3),
                        .content = str(recs, i, 4),
                        .ttl = i64(recs, i, 5),
                };
                r = sink->zone_record ? sink->zone_record(ud, &rec, reterr) : 0;
        }
        return r;
}

static int load_network_resources(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink,
                                  void *ud, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_NETWORK_RESOURCES, account_id, &res, reterr);

        for (int i = 0; r >= 0 && sink->network_resource && i < PQntuples(res); i++) {
                cp_store_snap_network_resource x = {
                        .id = str(res, i, 0),
                        .network_id = str(res, i, 1),
                        .name = str(res, i, 2),
                        .type = str(res, i, 3),
                        .prefix = val(res, i, 4),
                        .domain = str(res, i, 5),
                        .enabled = boolean(res, i, 6),
                };
                r = sink->network_resource(ud, &x, reterr);
        }
        return r;
}

static int load_network_routers(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink,
                                void *ud, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = query(c, Q_NETWORK_ROUTERS, account_id, &res, reterr);

        for (int i = 0; r >= 0 && sink->network_router && i < PQntuples(res); i++) {
                strv pg;
                if ((r = strv_parse(val(res, i, 3), &pg, "network router peer groups", reterr)) < 0)
                        break;
                cp_store_snap_network_router x = {
                        .id = str(res, i, 0),
                        .network_id = str(res, i, 1),
                        .peer = val(res, i, 2),
                        .peer_groups = pg.v,
                        .n_peer_groups = pg.n,
                        .metric = (int) i64(res, i, 4),
                        .masquerade = boolean(res, i, 5),
                        .enabled = boolean(res, i, 6),
                };
                r = sink->network_router(ud, &x, reterr);
                strv_release(&pg);
        }
        return r;
}

static int load_posture(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                        cp_error *reterr) {
        _cleanup_pgresult_ PGresult *checks = NULL, *pols = NULL, *peers = NULL;
        int r = query(c, Q_POSTURE_CHECKS, account_id, &checks, reterr);

        for (int i = 0; r >= 0 && sink->posture_check && i < PQntuples(checks); i++)
                r = sink->posture_check(ud, str(checks, i, 0), str(checks, i, 1), reterr);
        if (r >= 0)
                r = query(c, Q_POLICY_POSTURE, account_id, &pols, reterr);
        for (int i = 0; r >= 0 && sink->policy_posture && i < PQntuples(pols); i++) {
                strv ids;
                if ((r = strv_parse(val(pols, i, 1), &ids, "source posture checks", reterr)) < 0)
                        break;
                r = sink->policy_posture(ud, str(pols, i, 0), ids.v, ids.n, reterr);
                strv_release(&ids);
        }
        if (r >= 0)
                r = query(c, Q_POSTURE_PEERS, account_id, &peers, reterr);
        for (int i = 0; r >= 0 && sink->posture_peer && i < PQntuples(peers); i++) {
                strv addrs, files = { 0 };
                if ((r = strv_parse(val(peers, i, 5), &addrs, "network addresses", reterr)) < 0 ||
                    (r = strv_parse(val(peers, i, 6), &files, "meta files", reterr)) < 0) {
                        strv_release(&addrs);
                        break;
                }
                cp_store_snap_posture_peer p = {
                        .id = str(peers, i, 0),
                        .wt_version = str(peers, i, 1),
                        .go_os = str(peers, i, 2),
                        .os_version = str(peers, i, 3),
                        .kernel_version = str(peers, i, 4),
                        .net_addrs = addrs.v,
                        .n_net_addrs = addrs.n,
                        .running = files.v,
                        .n_running = files.n,
                        .connection_ip = str(peers, i, 7),
                        .country_code = str(peers, i, 8),
                        .city_name = str(peers, i, 9),
                };
                r = sink->posture_peer(ud, &p, reterr);
                strv_release(&addrs);
                strv_release(&files);
        }
        return r;
}

/* Every table, in order, on c. */
static int load_all(cp_store_conn *c, const char *account_id, const cp_store_snapshot_sink *sink, void *ud,
                    cp_error *reterr) {
        int r;

        if ((r = load_account(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_peers(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_pairs(c, Q_GROUPS, account_id, sink->group, ud, reterr)) >= 0 &&
            (r = load_pairs(c, Q_GROUP_PEERS, account_id, sink->group_peer, ud, reterr)) >= 0 &&
            (r = load_policies(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_rules(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_routes(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_nsgroups(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_zones(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_pairs(c, Q_NETWORKS, account_id, sink->network, ud, reterr)) >= 0 &&
            (r = load_network_resources(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_network_routers(c, account_id, sink, ud, reterr)) >= 0 &&
            (r = load_pairs(c, Q_GROUP_RESOURCES, account_id, sink->group_resource, ud, reterr)) >= 0)
                r = load_posture(c, account_id, sink, ud, reterr);
        return r;
}

int cp_store_snapshot_load(cp_store *s, const char *account_id, const cp_store_snapshot_sink *sink,
                           void *userdata, cp_error *reterr) {
        cp_store_conn *c;
        int r;

        if (!s || !account_id || !*account_id || !sink)
                return cp_error_set(reterr, -EINVAL, "snapshot: bad arguments");
        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = cp_store__command(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", reterr);
        if (r < 0)
                goto out;
        r = load_all(c, account_id, sink, userdata, reterr);
        if (r >= 0)
                r = cp_store__command(c, "COMMIT", reterr);
        if (r < 0)
                (void) cp_store__command(c, "ROLLBACK", NULL);
out:
        cp_store__release(s, c);
        return r < 0 ? r : 0;
}

int cp_store_snapshot_load_tx(cp_store_tx *tx, const char *account_id, const cp_store_snapshot_sink *sink,
                              void *userdata, cp_error *reterr) {
        cp_store_conn *c;
        int r;

        if (!tx || !account_id || !*account_id || !sink)
                return cp_error_set(reterr, -EINVAL, "snapshot: bad arguments");
        c = cp_store__tx_conn(tx);
        if (!c)
                return cp_error_set(reterr, -ECANCELED, "the transaction was aborted by an earlier error");
        r = load_all(c, account_id, sink, userdata, reterr);
        if (r < 0)
                cp_store__tx_failed(tx);
        return r < 0 ? r : 0;
}
