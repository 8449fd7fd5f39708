/*
 * /api/groups: list, get, create, update, delete (openapi Group,
 * GroupRequest). Groups hold peers (group_peers) and network resources
 * (group_resources); a POST or PUT sets both to what it sends, as
 * NetBird's handler does (absent = none).
 */
#include "api-activity.h"
#include "api-int.h"

/* One group as NetBird's Group schema; t is the groups row alias. */
#define GROUP_JSON(t)                                                                                       \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'issued', " t ".issued,"                    \
        " 'peers_count', (SELECT count(*) FROM group_peers gp WHERE gp.account_id = " t ".account_id"      \
        " AND gp.group_id = " t ".id),"                                                                     \
        " 'resources_count', (SELECT count(*) FROM group_resources gr WHERE gr.account_id = " t ".account_id" \
        " AND gr.group_id = " t ".id),"                                                                     \
        " 'peers', COALESCE((SELECT json_agg(json_build_object('id', p.id, 'name', p.name)"                \
        " ORDER BY p.name, p.id) FROM group_peers gp JOIN peers p ON p.account_id = gp.account_id"          \
        " AND p.id = gp.peer_id WHERE gp.account_id = " t ".account_id AND gp.group_id = " t ".id), '[]'),"  \
        " 'resources', COALESCE((SELECT json_agg(json_build_object('id', gr.resource_id, 'type',"          \
        " gr.resource_type) ORDER BY gr.resource_id) FROM group_resources gr"                                \
        " WHERE gr.account_id = " t ".account_id AND gr.group_id = " t ".id), '[]'))"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" GROUP_JSON("g") " ORDER BY g.name, g.id), '[]')"
        " FROM groups g WHERE g.account_id = $1";
static const char SQL_GET[] = "SELECT " GROUP_JSON("g") " FROM groups g WHERE g.account_id = $1 AND g.id = $2";
static const char SQL_FIND[] = "SELECT name, issued FROM groups WHERE account_id = $1 AND id = $2";
static const char SQL_NAME_TAKEN[] = "SELECT 1 FROM groups WHERE account_id = $1 AND name = $2 AND id <> $3";
/* The first id of $2 that is not a peer of the account. */
static const char SQL_MISSING_PEER[] =
        "SELECT u.id FROM unnest($2::text[]) WITH ORDINALITY AS u(id, ord) WHERE NOT EXISTS"
        " (SELECT 1 FROM peers p WHERE p.account_id = $1 AND p.id = u.id) ORDER BY u.ord LIMIT 1";
static const char SQL_INSERT[] =
        "INSERT INTO groups (id, account_id, name, issued) VALUES ($1, $2, $3, 'api')";
static const char SQL_RENAME[] = "UPDATE groups SET name = $3 WHERE account_id = $1 AND id = $2";
/* Membership set to exactly $3, with one GroupAddedToPeer /
 * GroupRemovedFromPeer event per peer that joined or left (NetBird's
 * meta: group, group_id, peer_ip, peer_fqdn). $4 initiator, $5 the
 * server's DNS domain, $6/$7 the activity codes. */
static const char SQL_SET_PEERS[] =
        "WITH want AS (SELECT DISTINCT u AS peer_id FROM unnest($3::text[]) u),"
        " del AS (DELETE FROM group_peers gp WHERE gp.account_id = $1 AND gp.group_id = $2"
        "  AND gp.peer_id NOT IN (SELECT peer_id FROM want) RETURNING gp.peer_id),"
        " ins AS (INSERT INTO group_peers (account_id, group_id, peer_id)"
        "  SELECT $1, $2, w.peer_id FROM want w ON CONFLICT DO NOTHING RETURNING peer_id),"
        " changed AS (SELECT peer_id, $6::int AS act FROM ins UNION ALL SELECT peer_id, $7::int FROM del)"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT ch.act, $4, p.id, $1, jsonb_build_object('group', g.name, 'group_id', g.id,"
        "  'peer_ip', host(p.ip), 'peer_fqdn', CASE WHEN COALESCE(NULLIF(a.settings_dns_domain, ''), $5) = ''"
        "  THEN p.dns_label ELSE p.dns_label || '.' || COALESCE(NULLIF(a.settings_dns_domain, ''), $5) END)"
        " FROM changed ch JOIN peers p ON p.account_id = $1 AND p.id = ch.peer_id"
        " JOIN groups g ON g.account_id = $1 AND g.id = $2 JOIN accounts a ON a.id = $1";
static const char SQL_DELETE[] = "DELETE FROM groups WHERE account_id = $1 AND id = $2";

/* What still refers to a group, in NetBird's order of checks: the kind
 * and the name it reports ("group has been linked to policy: Default"). */
static const char SQL_LINKS[] =
        "SELECT kind, name FROM ("
        " SELECT 0 AS o, 'network resource' AS kind, gr.resource_id AS name FROM group_resources gr"
        "  WHERE gr.account_id = $1 AND gr.group_id = $2"
        " UNION ALL SELECT 1, 'route' AS kind, r.net_id AS name FROM routes r WHERE r.account_id = $1"
        "  AND ($2 = ANY (r.groups) OR $2 = ANY (r.peer_groups) OR $2 = ANY (r.access_control_groups))"
        " UNION ALL SELECT 2, 'name server groups', n.name FROM name_server_groups n"
        "  WHERE n.account_id = $1 AND $2 = ANY (n.groups)"
        " UNION ALL SELECT 3, 'policy', p.name FROM policies p JOIN policy_rules r"
        "  ON r.account_id = p.account_id AND r.policy_id = p.id WHERE p.account_id = $1"
        "  AND ($2 = ANY (r.sources) OR $2 = ANY (r.destinations))"
        " UNION ALL SELECT 4, 'setup key', k.name FROM setup_keys k WHERE k.account_id = $1"
        "  AND $2 = ANY (k.auto_groups)"
        " UNION ALL SELECT 5, 'user', u.id FROM users u WHERE u.account_id = $1 AND $2 = ANY (u.auto_groups)"
        " UNION ALL SELECT 5.5, 'network router', nr.id FROM network_routers nr WHERE nr.account_id = $1"
        "  AND $2 = ANY (nr.peer_groups)"
        " UNION ALL SELECT 5.7, 'reverse proxy service', s.domain FROM services s WHERE s.account_id = $1"
        "  AND ((s.private AND $2 = ANY (s.access_groups))"
        "   OR ((s.auth->'bearer_auth'->>'enabled')::boolean"
        "    AND s.auth->'bearer_auth'->'distribution_groups' ? $2))"
        " UNION ALL SELECT 6, 'disabled DNS management groups', g.name FROM accounts a"
        "  JOIN groups g ON g.account_id = a.id AND g.id = $2"
        "  WHERE a.id = $1 AND $2 = ANY (a.dns_settings_disabled_management_groups)"
        ") l ORDER BY o, name LIMIT 1";

static int list_groups(api_ctx *c) {
        return api_reply_list(c, SQL_LIST);
}

static int reply_group(api_ctx *c, const char *id) {
        return api_reply_one(c, SQL_GET, id, "group");
}

static int get_group(api_ctx *c) {
        return reply_group(c, c->param[0]);
}

/* The request body: name (required, not empty) and peers (ids of this
 * account's peers). resources must be absent or empty: there are no
 * network resources here. */
typedef struct group_req {
        const char *name;
        cp_strbuf peers;
        bool has_peers;
        cp_strbuf resources;    /* resource ids, a PostgreSQL array literal */
} group_req;

/* The first id of $2 that is not a network resource of the account. */
static const char SQL_MISSING_RESOURCE[] =
        "SELECT u.id FROM unnest($2::text[]) WITH ORDINALITY AS u(id, ord) WHERE NOT EXISTS"
        " (SELECT 1 FROM network_resources r WHERE r.account_id = $1 AND r.id = u.id) ORDER BY u.ord LIMIT 1";
/* Resource membership set to exactly $3 (each with the resource's type). */
static const char SQL_SET_RESOURCES[] =
        "WITH del AS (DELETE FROM group_resources gr WHERE gr.account_id = $1 AND gr.group_id = $2"
        "  AND gr.resource_id <> ALL ($3::text[]))"
        " INSERT INTO group_resources (account_id, group_id, resource_id, resource_type)"
        " SELECT $1, $2, r.id, r.type FROM network_resources r WHERE r.account_id = $1 AND r.id = ANY ($3::text[])"
        " ON CONFLICT (group_id, resource_id) DO NOTHING";

/* resources: [{id, type}] (NetBird's Resource). Ours: each id must be a
 * network resource of the account (NetBird stores any id); the type
 * stored is the resource's own. */
static int parse_group_resources(api_ctx *c, json_t *res, group_req *g) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        json_t *e;
        size_t i;

        api_pgarray_begin(&g->resources);
        json_array_foreach(res, i, e) {
                const char *id = "", *type = "";
                if (!json_is_object(e) || api_field_str(c, e, "id", &id) < 0 || api_field_str(c, e, "type", &type) < 0)
                        return api_bad_json(c);
                api_pgarray_add(&g->resources, id);
        }
        api_pgarray_end(&g->resources);
        const char *p[2] = { c->account_id, g->resources.buf };
        int r = api_sql(c, SQL_MISSING_RESOURCE, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 422, "network resource: %s not found", cp_store_rows_get(rows, 0, 0));
        return 0;
}

static int parse_group(api_ctx *c, group_req *g) {
        json_t *body = api_body(c), *res = NULL;
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &g->name) < 0)
                return API_FAIL;
        r = api_field_strarr(c, body, "peers", &g->peers, NULL);
        if (r < 0)
                return API_FAIL;
        g->has_peers = r == 1;
        if (!g->has_peers)
                cp_strbuf_adds(&g->peers, "{}");
        if (api_field_array(c, body, "resources", &res) < 0)
                return API_FAIL;
        if (!g->name || !*g->name)
                return api_error(c, 422, "group name shouldn't be empty");
        if (parse_group_resources(c, res, g) < 0)
                return API_FAIL;
        const char *p[2] = { c->account_id, g->peers.buf };
        r = api_sql(c, SQL_MISSING_PEER, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 422, "peer with id %s not found", cp_store_rows_get(rows, 0, 0));
        return 0;
}

static int set_peers(api_ctx *c, const char *group_id, const char *peers) {
        char added[16], removed[16];

        (void) snprintf(added, sizeof added, "%d", API_ACT_GROUP_ADDED_TO_PEER);
        (void) snprintf(removed, sizeof removed, "%d", API_ACT_GROUP_REMOVED_FROM_PEER);
        const char *p[7] = { c->account_id, group_id, peers, c->user_id, c->api->dns_domain, added, removed };
        return api_sql(c, SQL_SET_PEERS, 7, p, NULL);
}


/* The member list (NetBird replaces it with what was sent; none = empty),
 * the event, the serial bump and the reply: the end of POST and PUT. */
static int finish_group(api_ctx *c, const char *id, const group_req *g, int activity) {
        const char *p[3] = { c->account_id, id, g->resources.buf };
        int r = set_peers(c, id, g->peers.buf);

        if (r == 0)
                r = api_sql(c, SQL_SET_RESOURCES, 3, p, NULL);

        if (r == 0)
                r = api_event_kv(c, activity, id, "name", g->name, NULL);
        if (r < 0)
                return r;
        api_changed(c);
        return reply_group(c, id);
}

/* 409 when another group of the account has the name. NetBird checks it
 * on create only; here a rename is checked too (it could only end in a
 * duplicate, or a second "All" the schema refuses). */
static int check_name_free(api_ctx *c, const char *name, const char *id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[3] = { c->account_id, name, id };
        int r = api_sql(c, SQL_NAME_TAKEN, 3, p, &rows);

        if (r == 0 && cp_store_rows_count(rows) > 0)
                r = api_error(c, 409, "group with name %s already exists", name);
        return r;
}

static int create_group(api_ctx *c) {
        group_req g = { 0 };
        char id[CP_ID_LEN + 1];
        int r;

        cp_strbuf_init(&g.peers);
        cp_strbuf_init(&g.resources);
        cp_id_new(id);
        r = parse_group(c, &g);
        if (r == 0)
                r = check_name_free(c, g.name, id);
        if (r == 0) {
                const char *p[3] = { id, c->account_id, g.name };
                r = api_sql(c, SQL_INSERT, 3, p, NULL);
        }
        if (r == 0)
                r = finish_group(c, id, &g, API_ACT_GROUP_CREATED);
        cp_strbuf_release(&g.peers);
        cp_strbuf_release(&g.resources);
        return r;
}

/* Loads the group's name into name; 404 when missing. */
static int find_group(api_ctx *c, const char *id, cp_strbuf *name) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_FIND, 2, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "group: %s not found", id);
        cp_strbuf_adds(name, cp_store_rows_get(rows, 0, 0));
        return 0;
}

static int update_group(api_ctx *c) {
        const char *id = c->param[0];
        group_req g = { 0 };
        cp_strbuf name;
        int r;

        cp_strbuf_init(&name);
        r = find_group(c, id, &name);
        if (r == 0 && strcmp(name.buf, "All") == 0)
                r = api_error(c, 422, "updating group ALL is not allowed");
        cp_strbuf_release(&name);
        if (r < 0)
                return r;
        cp_strbuf_init(&g.peers);
        cp_strbuf_init(&g.resources);
        r = parse_group(c, &g);
        if (r == 0)
                r = check_name_free(c, g.name, id);
        if (r == 0) {
                const char *p[3] = { c->account_id, id, g.name };
                r = api_sql(c, SQL_RENAME, 3, p, NULL);
        }
        if (r == 0)
                r = finish_group(c, id, &g, API_ACT_GROUP_UPDATED);
        cp_strbuf_release(&g.peers);
        cp_strbuf_release(&g.resources);
        return r;
}

static int delete_group(api_ctx *c) {
        const char *id = c->param[0];
        const char *p[2] = { c->account_id, id };
        _cleanup_rows_ cp_store_rows *links = NULL;
        cp_strbuf name;
        int r;

        cp_strbuf_init(&name);
        r = find_group(c, id, &name);
        if (r == 0 && strcmp(name.buf, "All") == 0)
                r = api_error(c, 422, "deleting group ALL is not allowed");
        if (r == 0)
                r = api_sql(c, SQL_LINKS, 2, p, &links);
        if (r == 0 && cp_store_rows_count(links) > 0)
                r = api_error_verbatim(c, 400, "group has been linked to %s: %s", cp_store_rows_get(links, 0, 0),
                                       cp_store_rows_get(links, 0, 1));
        if (r == 0)
                r = api_sql(c, SQL_DELETE, 2, p, NULL);
        if (r == 0)
                r = api_event_kv(c, API_ACT_GROUP_DELETED, id, "name", name.buf, NULL);
        cp_strbuf_release(&name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_groups_routes[] = {
        { "GET", "/api/groups", API_MOD_GROUPS, API_READ, list_groups },
        { "POST", "/api/groups", API_MOD_GROUPS, API_CREATE, create_group },
        { "GET", "/api/groups/{groupId}", API_MOD_GROUPS, API_READ, get_group },
        { "PUT", "/api/groups/{groupId}", API_MOD_GROUPS, API_UPDATE, update_group },
        { "DELETE", "/api/groups/{groupId}", API_MOD_GROUPS, API_DELETE, delete_group },
        { NULL },
};
