/*
 * /api/networks with their resources and routers, and the account-wide
 * lists /api/networks/resources and /api/networks/routers: NetBird's
 * Networks (openapi Network, NetworkRequest, NetworkResource,
 * NetworkResourceRequest, NetworkRouter, NetworkRouterRequest), with the
 * checks, texts and status codes of NetBird's networks, resources and
 * routers managers (management/server/networks) and their handlers.
 *
 * Storage: networks, network_resources (type, domain or prefix parsed
 * from the address as NetBird's GetResourceType does), network_routers
 * (one peer or peer groups), group_resources (a resource's groups).
 * Deleting a network deletes its resources and routers, each with its own
 * event first, as NetBird does; a resource's group memberships go with it
 * (events 83 first).
 *
 * Maps: every write but a network's own create or update changes what
 * agents get (common/netmap/netmap-networks.c) and bumps the serial, as
 * NetBird's managers do; creating or renaming a network bumps nothing.
 *
 * Lookups take no row locks: the dispatcher locks the account row for
 * every write, which serialises the account's writers.
 */
#include "api-activity.h"
#include "api-int.h"
#include "cp/store-services.h"

#include <errno.h>

/* Network JSON as NetBird's handler computes it: router and resource ids,
 * the policies whose enabled rules reach one of the network's resources
 * (by a destination group holding it, or by naming it), and the routing
 * peers (1 per peer router, plus the members of each peer group). */
#define NETWORK_JSON(t)                                                                                      \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'description', " t ".description,"            \
        " 'routers', COALESCE((SELECT json_agg(x.id ORDER BY x.id) FROM network_routers x"                    \
        "  WHERE x.account_id = " t ".account_id AND x.network_id = " t ".id), '[]'),"                        \
        " 'resources', COALESCE((SELECT json_agg(x.id ORDER BY x.id) FROM network_resources x"                \
        "  WHERE x.account_id = " t ".account_id AND x.network_id = " t ".id), '[]'),"                        \
        " 'policies', COALESCE((SELECT json_agg(DISTINCT pr.policy_id) FROM policy_rules pr"                  \
        "  JOIN policies po ON po.account_id = pr.account_id AND po.id = pr.policy_id AND po.enabled"         \
        "  JOIN network_resources nr ON nr.account_id = pr.account_id AND nr.network_id = " t ".id"           \
        "  WHERE pr.account_id = " t ".account_id AND pr.enabled AND (pr.destination_resource_id = nr.id"     \
        "  OR EXISTS (SELECT 1 FROM group_resources gr WHERE gr.account_id = nr.account_id"                   \
        "  AND gr.resource_id = nr.id AND gr.group_id = ANY (pr.destinations)))), '[]'),"                    \
        " 'routing_peers_count', (SELECT COALESCE(sum(CASE WHEN x.peer IS NOT NULL THEN 1 ELSE"               \
        "  (SELECT count(*) FROM group_peers gp WHERE gp.account_id = x.account_id"                           \
        "  AND gp.group_id = ANY (x.peer_groups)) END), 0)::int FROM network_routers x"                      \
        "  WHERE x.account_id = " t ".account_id AND x.network_id = " t ".id))"

/* A resource's groups as GroupMinimum, by group id. */
#define RES_GROUPS(t)                                                                                        \
        "COALESCE((SELECT json_agg(json_build_object('id', g.id, 'name', g.name, 'issued', g.issued,"        \
        " 'peers_count', (SELECT count(*) FROM group_peers gp WHERE gp.account_id = g.account_id"             \
        " AND gp.group_id = g.id), 'resources_count', (SELECT count(*) FROM group_resources g2"               \
        " WHERE g2.account_id = g.account_id AND g2.group_id = g.id)) ORDER BY g.id)"                         \
        " FROM group_resources gr JOIN groups g ON g.account_id = gr.account_id AND g.id = gr.group_id"       \
        " WHERE gr.account_id = " t ".account_id AND gr.resource_id = " t ".id), '[]')"

#define RESOURCE_JSON(t)                                                                                     \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'description', " t ".description,"            \
        " 'type', " t ".type, 'address', CASE WHEN " t ".type = 'domain' THEN " t ".domain"                  \
        " ELSE " t ".prefix::text END, 'enabled', " t ".enabled, 'groups', " RES_GROUPS(t) ")"

#define ROUTER_JSON(t)                                                                                       \
        "json_build_object('id', " t ".id, 'peer', COALESCE(" t ".peer, ''), 'peer_groups', " t               \
        ".peer_groups, 'masquerade', " t ".masquerade, 'metric', " t ".metric, 'enabled', " t ".enabled)"

static const char SQL_NETWORKS[] =
        "SELECT COALESCE(json_agg(" NETWORK_JSON("n") " ORDER BY n.id), '[]') FROM networks n WHERE n.account_id = $1";
static const char SQL_NETWORK_JSON[] =
        "SELECT " NETWORK_JSON("n") " FROM networks n WHERE n.account_id = $1 AND n.id = $2";
static const char SQL_NETWORK[] = "SELECT name FROM networks WHERE account_id = $1 AND id = $2";
static const char SQL_NETWORK_INSERT[] =
        "INSERT INTO networks (id, account_id, name, description) VALUES ($1, $2, $3, $4)";
static const char SQL_NETWORK_UPDATE[] =
        "UPDATE networks SET name = $3, description = $4 WHERE account_id = $1 AND id = $2";
static const char SQL_NETWORK_DELETE[] = "DELETE FROM networks WHERE account_id = $1 AND id = $2";

static const char SQL_ALL_RESOURCES[] =
        "SELECT COALESCE(json_agg(" RESOURCE_JSON("r") " ORDER BY r.id), '[]') FROM network_resources r"
        " WHERE r.account_id = $1";
static const char SQL_NET_RESOURCES[] =
        "SELECT COALESCE(json_agg(" RESOURCE_JSON("r") " ORDER BY r.id), '[]') FROM network_resources r"
        " WHERE r.account_id = $1 AND r.network_id = $2";
static const char SQL_RESOURCE_JSON[] =
        "SELECT " RESOURCE_JSON("r") " FROM network_resources r WHERE r.account_id = $1 AND r.id = $2";
static const char SQL_RESOURCE[] =
        "SELECT network_id, name, type FROM network_resources WHERE account_id = $1 AND id = $2";
static const char SQL_NET_RESOURCE_IDS[] =
        "SELECT id FROM network_resources WHERE account_id = $1 AND network_id = $2 ORDER BY id";
static const char SQL_RESOURCE_NAME[] =
        "SELECT id FROM network_resources WHERE account_id = $1 AND name = $2";
static const char SQL_RESOURCE_INSERT[] =
        "INSERT INTO network_resources (id, network_id, account_id, name, description, type, domain, prefix, enabled)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, network($8::inet), $9::boolean)";
static const char SQL_RESOURCE_UPDATE[] =
        "UPDATE network_resources SET name = $3, description = $4, type = $5, domain = $6,"
        " prefix = network($7::inet), enabled = $8::boolean WHERE account_id = $1 AND id = $2";
static const char SQL_RESOURCE_DELETE[] = "DELETE FROM network_resources WHERE account_id = $1 AND id = $2";
/* The groups a resource is in, by id, with their names. */
static const char SQL_RESOURCE_GROUPS[] =
        "SELECT g.id, g.name FROM group_resources gr JOIN groups g ON g.account_id = gr.account_id"
        " AND g.id = gr.group_id WHERE gr.account_id = $1 AND gr.resource_id = $2 ORDER BY g.id";
static const char SQL_GROUP_NAME[] = "SELECT name FROM groups WHERE account_id = $1 AND id = $2";
static const char SQL_GROUP_ADD[] =
        "INSERT INTO group_resources (account_id, group_id, resource_id, resource_type) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (group_id, resource_id) DO UPDATE SET resource_type = EXCLUDED.resource_type";
static const char SQL_GROUP_REMOVE[] =
        "DELETE FROM group_resources WHERE account_id = $1 AND group_id = $2 AND resource_id = $3";
static const char SQL_GROUP_RETYPE[] =
        "UPDATE group_resources SET resource_type = $3 WHERE account_id = $1 AND resource_id = $2";

static const char SQL_ALL_ROUTERS[] =
        "SELECT COALESCE(json_agg(" ROUTER_JSON("x") " ORDER BY x.network_id, x.id), '[]') FROM network_routers x"
        " WHERE x.account_id = $1";
static const char SQL_NET_ROUTERS[] =
        "SELECT COALESCE(json_agg(" ROUTER_JSON("x") " ORDER BY x.id), '[]') FROM network_routers x"
        " WHERE x.account_id = $1 AND x.network_id = $2";
static const char SQL_ROUTER_JSON[] =
        "SELECT " ROUTER_JSON("x") " FROM network_routers x WHERE x.account_id = $1 AND x.id = $2";
static const char SQL_ROUTER[] =
        "SELECT network_id, COALESCE(peer, ''), peer_groups FROM network_routers WHERE account_id = $1 AND id = $2";
static const char SQL_NET_ROUTER_IDS[] =
        "SELECT id FROM network_routers WHERE account_id = $1 AND network_id = $2 ORDER BY id";
static const char SQL_ROUTER_INSERT[] =
        "INSERT INTO network_routers (id, network_id, account_id, peer, peer_groups, masquerade, metric, enabled)"
        " VALUES ($1, $2, $3, NULLIF($4, ''), $5::text[], $6::boolean, $7::integer, $8::boolean)";
static const char SQL_ROUTER_UPDATE[] =
        "UPDATE network_routers SET peer = NULLIF($3, ''), peer_groups = $4::text[], masquerade = $5::boolean,"
        " metric = $6::integer, enabled = $7::boolean WHERE account_id = $1 AND id = $2";
static const char SQL_ROUTER_DELETE[] = "DELETE FROM network_routers WHERE account_id = $1 AND id = $2";
static const char SQL_PEER_EXISTS[] = "SELECT 1 FROM peers WHERE account_id = $1 AND id = $2";

static const char *tf(bool v) {
        return v ? "t" : "f";
}

/* The network's name into name, or 404 with
 * NetBird's text after prefix. */
static int find_network(api_ctx *c, const char *id, const char *prefix, cp_strbuf *name) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_NETWORK, 2, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "%snetwork: %s not found", prefix, id);
        cp_strbuf_adds(name, cp_store_rows_get(rows, 0, 0));
        return 0;
}

static int reply_by_id(api_ctx *c, const char *sql, const char *id) {
        const char *p[2] = { c->account_id, id };
        bool found;
        int r = api_sql_reply(c, 200, sql, 2, p, &found);

        if (r == 0 && !found)
                return api_internal(c, "network object vanished", NULL);
        return r;
}

static int reply_list_in(api_ctx *c, const char *sql, const char *network_id) {
        const char *p[2] = { c->account_id, network_id };
        bool found;
        int r = api_sql_reply(c, 200, sql, 2, p, &found);

        if (r == 0 && !found)
                return api_reply_text(c, 200, "[]", 2);
        return r;
}

/* ---- networks ------------------------------------------------------------------------------------ */

static int list_networks(api_ctx *c) {
        return api_reply_list(c, SQL_NETWORKS);
}

static int get_network(api_ctx *c) {
        return api_reply_one(c, SQL_NETWORK_JSON, c->param[0], "network");
}

/* NetBird's NetworkRequest: name and description as sent (it checks
 * neither; an empty name is stored as is). */
static int save_network(api_ctx *c, bool existing) {
        json_t *body = api_body(c);
        const char *name = "", *desc = "";
        char newid[CP_ID_LEN + 1];
        const char *id = c->param[0];
        cp_strbuf old;
        int r;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &name) < 0 || api_field_str(c, body, "description", &desc) < 0)
                return API_FAIL;
        cp_strbuf_init(&old);
        if (existing) {
                r = find_network(c, id, "failed to get network: ", &old);
                if (r == 0) {
                        const char *p[4] = { c->account_id, id, name, desc };
                        r = api_sql(c, SQL_NETWORK_UPDATE, 4, p, NULL);
                }
        } else {
                cp_id_new(newid);
                id = newid;
                const char *p[4] = { id, c->account_id, name, desc };
                r = api_sql(c, SQL_NETWORK_INSERT, 4, p, NULL);
        }
        cp_strbuf_release(&old);
        if (r == 0)
                r = api_event_kv(c, existing ? API_ACT_NETWORK_UPDATED : API_ACT_NETWORK_CREATED, id, "name", name,
                                 NULL);
        if (r < 0)
                return r;
        return reply_by_id(c, SQL_NETWORK_JSON, id);
}

static int create_network(api_ctx *c) {
        return save_network(c, false);
}

static int update_network(api_ctx *c) {
        return save_network(c, true);
}

static int delete_resource_rows(api_ctx *c, const char *network_id, const char *network_name, const char *id);
static int delete_router_row(api_ctx *c, const char *network_id, const char *network_name, const char *id);

/* Its resources, then its routers, then itself, each with its event. */
static int delete_network(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *res = NULL, *rts = NULL;
        const char *id = c->param[0];
        const char *p[2] = { c->account_id, id };
        cp_strbuf name;
        int r;

        cp_strbuf_init(&name);
        r = find_network(c, id, "failed to get network: ", &name);
        if (r == 0)
                r = api_sql(c, SQL_NET_RESOURCE_IDS, 2, p, &res);
        for (int i = 0; r == 0 && i < cp_store_rows_count(res); i++)
                r = delete_resource_rows(c, id, name.buf, cp_store_rows_get(res, i, 0));
        if (r == 0)
                r = api_sql(c, SQL_NET_ROUTER_IDS, 2, p, &rts);
        for (int i = 0; r == 0 && i < cp_store_rows_count(rts); i++)
                r = delete_router_row(c, id, name.buf, cp_store_rows_get(rts, i, 0));
        if (r == 0)
                r = api_sql(c, SQL_NETWORK_DELETE, 2, p, NULL);
        if (r == 0)
                r = api_event_kv(c, API_ACT_NETWORK_DELETED, id, "name", name.buf, NULL);
        cp_strbuf_release(&name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- resources ----------------------------------------------------------------------------------- */

/* Go's strconv.Atoi as netip.ParsePrefix uses it for the bits: decimal,
 * no sign, no leading zero. */
static int parse_bits(const char *s, int max) {
        int v = 0;

        if (!*s || (s[0] == '0' && s[1]) || strlen(s) > 3)
                return -1;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -1;
                v = v * 10 + (*p - '0');
        }
        return v <= max ? v : -1;
}

/* NetBird's GetResourceType: a prefix (host when /32 or /128, else
 * subnet), an address (host, as a full-length prefix), or a domain
 * (IDNA-converted, wildcard allowed). prefix gets "addr/bits" for
 * PostgreSQL (NULL for a domain). */
static int resource_type(const char *address, const char **type, char prefix[80]) {
        char ip[64], canon[64];
        const char *slash = strchr(address, '/');

        if (slash && (size_t) (slash - address) < sizeof ip) {
                memcpy(ip, address, (size_t) (slash - address));
                ip[slash - address] = 0;
                if (api_ip_canonical(ip, canon) == 0) {
                        bool v6 = strchr(canon, ':') != NULL;
                        int bits = parse_bits(slash + 1, v6 ? 128 : 32);
                        if (bits >= 0) {
                                *type = bits == (v6 ? 128 : 32) ? "host" : "subnet";
                                (void) snprintf(prefix, 80, "%s/%d", canon, bits);
                                return 0;
                        }
                }
        }
        if (!slash && api_ip_canonical(address, canon) == 0) {
                *type = "host";
                (void) snprintf(prefix, 80, "%s/%d", canon, strchr(canon, ':') ? 128 : 32);
                return 0;
        }
        cp_strbuf ascii, err;
        int r = -1;
        cp_strbuf_init(&ascii);
        cp_strbuf_init(&err);
        if (*address && api_domain_to_ascii(address, &ascii, &err) == 0 && api_domain_valid(ascii.buf)) {
                *type = "domain";
                prefix[0] = 0;
                r = 0;
        }
        cp_strbuf_release(&ascii);
        cp_strbuf_release(&err);
        return r;
}

typedef struct resource_req {
        const char *name, *desc, *address, *type;
        bool enabled;
        json_t *groups;         /* borrowed array of strings, may be NULL */
        char prefix[80];
} resource_req;

static int parse_resource_req(api_ctx *c, resource_req *q, const char *what) {
        json_t *body = api_body(c), *e;
        size_t i;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 || api_field_str(c, body, "description", &q->desc) < 0 ||
            api_field_str(c, body, "address", &q->address) < 0 ||
            api_field_bool(c, body, "enabled", &q->enabled) < 0 ||
            api_field_array(c, body, "groups", &q->groups) < 0)
                return API_FAIL;
        json_array_foreach(q->groups, i, e) {
                if (!json_is_string(e))
                        return api_bad_json(c);
        }
        /* Ours: NetBird answers this 500 (an untyped error). */
        if (resource_type(q->address, &q->type, q->prefix) < 0)
                return api_error(c, 422, "%s: not a valid host, subnet, or domain", what);
        return 0;
}

static int resource_event(api_ctx *c, int act, const char *id, const char *name, const char *type,
                          const char *network_id, const char *network_name) {
        return api_event_kv(c, act, id, "name", name, "type", type, "network_name", network_name, "network_id",
                            network_id, NULL);
}

static int group_resource_event(api_ctx *c, int act, const char *group_id, const char *group_name,
                                const char *res_id, const char *res_name, const char *res_type) {
        return api_event_kv(c, act, group_id, "name", group_name, "id", group_id, "resource_name", res_name,
                            "resource_id", res_id, "resource_type", res_type, NULL);
}

/* Adds the resource to group gid (404 "group: <id> not found" after
 * prefix when the account has no such group), with event 82. */
static int add_to_group(api_ctx *c, const char *prefix, const char *gid, const char *id, const char *name,
                        const char *type) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, gid };
        int r = api_sql(c, SQL_GROUP_NAME, 2, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return api_error(c, 404, "%sfailed to add resource to group: error adding resource to group: "
                                 "group: %s not found", prefix, gid);
        const char *q[4] = { c->account_id, gid, id, type };
        r = api_sql(c, SQL_GROUP_ADD, 4, q, NULL);
        if (r == 0)
                r = group_resource_event(c, API_ACT_RESOURCE_ADDED_TO_GROUP, gid, cp_store_rows_get(rows, 0, 0), id,
                                         name, type);
        return r;
}

static bool json_has_str(const json_t *a, const char *s) {
        json_t *e;
        size_t i;

        json_array_foreach(a, i, e) {
                if (strcmp(json_string_value(e), s) == 0)
                        return true;
        }
        return false;
}

static int list_all_resources(api_ctx *c) {
        return api_reply_list(c, SQL_ALL_RESOURCES);
}

/* NetBird lists an unknown network's resources as none. */
static int list_resources(api_ctx *c) {
        return reply_list_in(c, SQL_NET_RESOURCES, c->param[0]);
}

/* The resource's network id, name and type (row 0) into *ret; 404 when
 * the account has none with the id or it belongs to another network
 * (NetBird: an untyped "resource not part of network", a 500). */
static int find_resource(api_ctx *c, const char *network_id, const char *id, const char *prefix,
                         cp_store_rows **ret) {
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_RESOURCE, 2, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) == 0 || strcmp(cp_store_rows_get(*ret, 0, 0), network_id) != 0)
                return api_error(c, 404, "%snetwork resource: %s not found", prefix, id);
        return 0;
}

static int get_resource(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = find_resource(c, c->param[0], c->param[1], "failed to get network resource: ", &rows);

        return r < 0 ? r : reply_by_id(c, SQL_RESOURCE_JSON, c->param[1]);
}

static int create_resource(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        static const char pfx[] = "failed to create network resource: ";
        const char *net = c->param[0];
        resource_req q = { .name = "", .desc = "", .address = "" };
        char id[CP_ID_LEN + 1];
        json_t *e;
        size_t i;
        cp_strbuf net_name;
        int r;

        r = parse_resource_req(c, &q, "failed to create new network resource: invalid address");
        if (r < 0)
                return r;
        const char *p[2] = { c->account_id, q.name };
        r = api_sql(c, SQL_RESOURCE_NAME, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows))
                return api_error(c, 422, "%sresource with name %s already exists", pfx, q.name);
        cp_strbuf_init(&net_name);
        r = find_network(c, net, "failed to create network resource: failed to get network: ", &net_name);
        cp_id_new(id);
        if (r == 0) {
                const char *v[9] = { id,     net,    c->account_id, q.name,        q.desc,
                                     q.type, q.type[0] == 'd' ? q.address : "", q.prefix[0] ? q.prefix : NULL,
                                     tf(q.enabled) };
                r = api_sql(c, SQL_RESOURCE_INSERT, 9, v, NULL);
        }
        if (r == 0)
                r = resource_event(c, API_ACT_NETWORK_RESOURCE_CREATED, id, q.name, q.type, net, net_name.buf);
        json_array_foreach(q.groups, i, e) {
                if (r == 0)
                        r = add_to_group(c, pfx, json_string_value(e), id, q.name, q.type);
        }
        cp_strbuf_release(&net_name);
        if (r < 0)
                return r;
        api_changed(c);
        return reply_by_id(c, SQL_RESOURCE_JSON, id);
}

static int update_resource(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *cur = NULL, *named = NULL, *groups = NULL;
        static const char pfx[] = "failed to update network resource: ";
        const char *net = c->param[0], *id = c->param[1];
        resource_req q = { .name = "", .desc = "", .address = "" };
        json_t *e;
        size_t i;
        cp_strbuf net_name;
        int r;

        r = parse_resource_req(c, &q, "failed to get resource type");
        if (r < 0)
                return r;
        cp_strbuf_init(&net_name);
        r = find_network(c, net, "failed to update network resource: failed to get network: ", &net_name);
        if (r == 0)
                r = find_resource(c, net, id, "failed to update network resource: failed to get network resource: ",
                                  &cur);
        if (r == 0) {
                const char *p[2] = { c->account_id, q.name };
                r = api_sql(c, SQL_RESOURCE_NAME, 2, p, &named);
                if (r == 0 && cp_store_rows_count(named) && strcmp(cp_store_rows_get(named, 0, 0), id) != 0)
                        r = api_error(c, 422, "%snew resource name already exists", pfx);
        }
        if (r == 0) {
                const char *v[8] = { c->account_id, id, q.name, q.desc, q.type, q.type[0] == 'd' ? q.address : "",
                                     q.prefix[0] ? q.prefix : NULL, tf(q.enabled) };
                r = api_sql(c, SQL_RESOURCE_UPDATE, 8, v, NULL);
        }
        if (r == 0) {
                const char *p[3] = { c->account_id, id, q.type };
                r = api_sql(c, SQL_GROUP_RETYPE, 3, p, NULL);
        }
        if (r == 0) {
                const char *p[2] = { c->account_id, id };
                r = api_sql(c, SQL_RESOURCE_GROUPS, 2, p, &groups);
        }
        /* The groups sent and not held yet, then those held and not sent. */
        json_array_foreach(q.groups, i, e) {
                const char *gid = json_string_value(e);
                bool held = false;
                for (int k = 0; r == 0 && k < cp_store_rows_count(groups); k++)
                        held |= strcmp(cp_store_rows_get(groups, k, 0), gid) == 0;
                if (r == 0 && !held)
                        r = add_to_group(c, pfx, gid, id, q.name, q.type);
        }
        for (int k = 0; r == 0 && k < cp_store_rows_count(groups); k++) {
                const char *gid = cp_store_rows_get(groups, k, 0);
                if (q.groups && json_has_str(q.groups, gid))
                        continue;
                const char *p[3] = { c->account_id, gid, id };
                r = api_sql(c, SQL_GROUP_REMOVE, 3, p, NULL);
                if (r == 0)
                        r = group_resource_event(c, API_ACT_RESOURCE_REMOVED_FROM_GROUP, gid,
                                                 cp_store_rows_get(groups, k, 1), id, q.name, q.type);
        }
        if (r == 0)
                r = resource_event(c, API_ACT_NETWORK_RESOURCE_UPDATED, id, q.name, q.type, net, net_name.buf);
        cp_strbuf_release(&net_name);
        if (r < 0)
                return r;
        api_changed(c);
        return reply_by_id(c, SQL_RESOURCE_JSON, id);
}

/* NetBird's DeleteResourceInTransaction: out of each group (event 83),
 * then the row, then event 78. */
static int delete_resource_rows(api_ctx *c, const char *network_id, const char *network_name, const char *id) {
        _cleanup_rows_ cp_store_rows *cur = NULL, *groups = NULL;
        const char *p[2] = { c->account_id, id };
        _cleanup_rows_ cp_store_rows *service = NULL;
        int r = find_resource(c, network_id, id, "failed to delete network resource: failed to get network resource: ",
                              &cur);

        if (r == 0)
                r = api_sql(c, CP_STORE_SQL_SERVICE_TARGETING, 2, p, &service);
        if (r == 0 && cp_store_rows_count(service) > 0)
                return api_error(c, 412, "resource %s is in use by proxy %s", id, cp_store_rows_get(service, 0, 0));
        if (r == 0)
                r = api_sql(c, SQL_RESOURCE_GROUPS, 2, p, &groups);
        const char *name = r == 0 ? cp_store_rows_get(cur, 0, 1) : "", *type = r == 0 ? cp_store_rows_get(cur, 0, 2) : "";
        for (int k = 0; r == 0 && k < cp_store_rows_count(groups); k++) {
                const char *q[3] = { c->account_id, cp_store_rows_get(groups, k, 0), id };
                r = api_sql(c, SQL_GROUP_REMOVE, 3, q, NULL);
                if (r == 0)
                        r = group_resource_event(c, API_ACT_RESOURCE_REMOVED_FROM_GROUP, q[1],
                                                 cp_store_rows_get(groups, k, 1), id, name, type);
        }
        if (r == 0)
                r = api_sql(c, SQL_RESOURCE_DELETE, 2, p, NULL);
        if (r == 0)
                r = resource_event(c, API_ACT_NETWORK_RESOURCE_DELETED, id, name, type, network_id, network_name);
        return r;
}

static int delete_resource(api_ctx *c) {
        cp_strbuf net_name;
        int r;

        cp_strbuf_init(&net_name);
        r = find_network(c, c->param[0], "failed to delete network resource: failed to delete resource: "
                         "failed to get network: ", &net_name);
        if (r == 0)
                r = delete_resource_rows(c, c->param[0], net_name.buf, c->param[1]);
        cp_strbuf_release(&net_name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- routers ------------------------------------------------------------------------------------- */

typedef struct router_req {
        const char *peer;
        cp_strbuf groups;
        size_t n_groups;
        bool masquerade, enabled;
        int64_t metric;
        char metric_s[16];
} router_req;

/* The body and NetBird's NetworkRouter.Validate (400, its text); then
 * ours: the metric within the schema's 1..9999. */
static int parse_router(api_ctx *c, router_req *q) {
        json_t *body = api_body(c);

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "peer", &q->peer) < 0 ||
            api_field_strarr(c, body, "peer_groups", &q->groups, &q->n_groups) < 0 ||
            api_field_bool(c, body, "masquerade", &q->masquerade) < 0 ||
            api_field_bool(c, body, "enabled", &q->enabled) < 0 ||
            api_field_int(c, body, "metric", INT64_MIN, INT64_MAX, &q->metric) < 0)
                return API_FAIL;
        if (*q->peer && q->n_groups > 0)
                return api_error_verbatim(c, 400, "peer and peer_groups cannot be set at the same time");
        if (!*q->peer && q->n_groups == 0)
                return api_error_verbatim(c, 400, "either peer or peer_groups must be provided");
        if (q->metric < 1 || q->metric > 9999)
                return api_error(c, 422, "metric must be between 1 and 9999");
        (void) snprintf(q->metric_s, sizeof q->metric_s, "%" PRId64, q->metric);
        return 0;
}

/* Ours (after the network and router are found): the peer or the peer
 * groups must be the account's. */
static int check_router_refs(api_ctx *c, router_req *q) {
        int r;

        if (*q->peer) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *p[2] = { c->account_id, q->peer };
                r = api_sql(c, SQL_PEER_EXISTS, 2, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) == 0)
                        return api_error(c, 422, "peer with id %s not found", q->peer);
                return 0;
        }
        char bad[256];
        r = api_find_bad_group(c, q->groups.buf, false, bad, sizeof bad, NULL);
        if (r < 0)
                return r;
        if (r > 0)
                return api_error(c, 422, "group %s not found", bad);
        return 0;
}

/* NetBird's router meta: network_name, network_id, peer, peer_groups (a
 * list). groups is a PostgreSQL array literal. */
static int router_event(api_ctx *c, int act, const char *id, const char *network_id, const char *network_name,
                        const char *peer, const char *groups) {
        static const char sql[] =
                "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " VALUES ($1::int, $2, $3, $4, jsonb_build_object('network_name', $5::text, 'network_id', $6::text,"
                " 'peer', $7::text, 'peer_groups', to_jsonb($8::text[])))";
        char act_s[16];

        (void) snprintf(act_s, sizeof act_s, "%d", act);
        const char *p[8] = { act_s, c->user_id, id, c->account_id, network_name, network_id, peer, groups };
        return api_sql(c, sql, 8, p, NULL);
}

static int list_all_routers(api_ctx *c) {
        return api_reply_list(c, SQL_ALL_ROUTERS);
}

static int list_routers(api_ctx *c) {
        return reply_list_in(c, SQL_NET_ROUTERS, c->param[0]);
}

/* The router's network id, peer and peer groups (row 0) into *ret; 404
 * when missing; 400 NetBird's text when in another network (get: ours,
 * NetBird answers an untyped 500 there). */
static int find_router(api_ctx *c, const char *network_id, const char *id, const char *prefix, cp_store_rows **ret) {
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_ROUTER, 2, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) == 0)
                return api_error(c, 404, "%snetwork router: %s not found", prefix, id);
        if (strcmp(cp_store_rows_get(*ret, 0, 0), network_id) != 0)
                return api_error(c, 400, "router %s is not part of the network %s", id, network_id);
        return 0;
}

static int get_router(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = find_router(c, c->param[0], c->param[1], "failed to get network router: ", &rows);

        return r < 0 ? r : reply_by_id(c, SQL_ROUTER_JSON, c->param[1]);
}

static int save_router(api_ctx *c, bool existing) {
        _cleanup_rows_ cp_store_rows *cur = NULL;
        const char *net = c->param[0];
        char newid[CP_ID_LEN + 1];
        const char *id = existing ? c->param[1] : newid;
        router_req q = { .peer = "" };
        cp_strbuf net_name;
        int r;

        cp_strbuf_init(&q.groups);
        cp_strbuf_init(&net_name);
        cp_strbuf_adds(&q.groups, "{}");
        r = parse_router(c, &q);
        if (r == 0)
                r = find_network(c, net, "failed to get network: ", &net_name);
        if (r == 0 && existing)
                r = find_router(c, net, id, "failed to get network router: ", &cur);
        if (r == 0)
                r = check_router_refs(c, &q);
        if (r == 0 && existing) {
                const char *p[7] = { c->account_id, id, q.peer, q.groups.buf, tf(q.masquerade), q.metric_s,
                                     tf(q.enabled) };
                r = api_sql(c, SQL_ROUTER_UPDATE, 7, p, NULL);
        } else if (r == 0) {
                cp_id_new(newid);
                const char *p[8] = { id, net, c->account_id, q.peer, q.groups.buf, tf(q.masquerade), q.metric_s,
                                     tf(q.enabled) };
                r = api_sql(c, SQL_ROUTER_INSERT, 8, p, NULL);
        }
        if (r == 0)
                r = router_event(c, existing ? API_ACT_NETWORK_ROUTER_UPDATED : API_ACT_NETWORK_ROUTER_CREATED, id,
                                 net, net_name.buf, q.peer, q.groups.buf);
        cp_strbuf_release(&q.groups);
        cp_strbuf_release(&net_name);
        if (r < 0)
                return r;
        api_changed(c);
        return reply_by_id(c, SQL_ROUTER_JSON, id);
}

static int create_router(api_ctx *c) {
        return save_router(c, false);
}

static int update_router(api_ctx *c) {
        return save_router(c, true);
}

static int delete_router_row(api_ctx *c, const char *network_id, const char *network_name, const char *id) {
        _cleanup_rows_ cp_store_rows *cur = NULL;
        const char *p[2] = { c->account_id, id };
        int r = find_router(c, network_id, id, "failed to get network router: ", &cur);

        if (r == 0)
                r = api_sql(c, SQL_ROUTER_DELETE, 2, p, NULL);
        if (r == 0)
                r = router_event(c, API_ACT_NETWORK_ROUTER_DELETED, id, network_id, network_name,
                                 cp_store_rows_get(cur, 0, 1), cp_store_rows_get(cur, 0, 2));
        return r;
}

static int delete_router(api_ctx *c) {
        cp_strbuf net_name;
        int r;

        cp_strbuf_init(&net_name);
        r = find_network(c, c->param[0], "failed to get network: ", &net_name);
        if (r == 0)
                r = delete_router_row(c, c->param[0], net_name.buf, c->param[1]);
        cp_strbuf_release(&net_name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_networks_routes[] = {
        { "GET", "/api/networks", API_MOD_NETWORKS, API_READ, list_networks },
        { "POST", "/api/networks", API_MOD_NETWORKS, API_CREATE, create_network },
        { "GET", "/api/networks/routers", API_MOD_NETWORKS, API_READ, list_all_routers },
        { "GET", "/api/networks/resources", API_MOD_NETWORKS, API_READ, list_all_resources },
        { "GET", "/api/networks/{networkId}", API_MOD_NETWORKS, API_READ, get_network },
        { "PUT", "/api/networks/{networkId}", API_MOD_NETWORKS, API_UPDATE, update_network },
        { "DELETE", "/api/networks/{networkId}", API_MOD_NETWORKS, API_DELETE, delete_network },
        { "GET", "/api/networks/{networkId}/resources", API_MOD_NETWORKS, API_READ, list_resources },
        { "POST", "/api/networks/{networkId}/resources", API_MOD_NETWORKS, API_CREATE, create_resource },
        { "GET", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_READ, get_resource },
        { "PUT", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_UPDATE, update_resource },
        { "DELETE", "/api/networks/{networkId}/resources/{resourceId}", API_MOD_NETWORKS, API_DELETE,
          delete_resource },
        { "GET", "/api/networks/{networkId}/routers", API_MOD_NETWORKS, API_READ, list_routers },
        { "POST", "/api/networks/{networkId}/routers", API_MOD_NETWORKS, API_CREATE, create_router },
        { "GET", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_READ, get_router },
        { "PUT", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_UPDATE, update_router },
        { "DELETE", "/api/networks/{networkId}/routers/{routerId}", API_MOD_NETWORKS, API_DELETE, delete_router },
        { NULL },
};
