/*
 * /api/policies: list, get, create, update, delete (openapi PolicyCreate,
 * PolicyUpdate, Policy, PolicyRule*, RulePortRange).
 *
 * Rules live in policy_rules, read by the account snapshot that network
 * maps are built from (common/store/store-snapshot.c): ports as integer[],
 * port ranges as int4range[] in canonical [start, end + 1) form, sources
 * and destinations as group ids, a peer resource in source_resource_* /
 * destination_resource_*. Every change calls api_changed(); an update that
 * leaves the policy as it was writes nothing (NetBird skips it too).
 *
 * Rules may name a peer or a network resource (host, subnet, domain) of
 * the account as source or destination; source_posture_checks name the
 * account's posture checks. Unknown references are refused with 422
 * rather than stored and ignored.
 */
#include "api-activity.h"
#include "api-int.h"

#include <ctype.h>
#include <stdarg.h>

/* The groups of an id array as NetBird's GroupMinimum, in array order;
 * ids that are not groups of the account are left out. */
#define GROUPS_MIN(arr)                                                                                     \
        "COALESCE((SELECT json_agg(json_build_object('id', g.id, 'name', g.name, 'peers_count',"            \
        " (SELECT count(*) FROM group_peers gp WHERE gp.account_id = g.account_id AND gp.group_id = g.id),"  \
        " 'resources_count', (SELECT count(*) FROM group_resources gr WHERE gr.account_id = g.account_id"   \
        " AND gr.group_id = g.id)) ORDER BY u.o) FROM unnest(" arr ") WITH ORDINALITY u(gid, o)"               \
        " JOIN groups g ON g.account_id = r.account_id AND g.id = u.gid), '[]')"

/* A rule as NetBird's PolicyRule: ports, port_ranges, authorized_groups
 * and the resources only when set (null members are stripped). */
#define RULE_JSON                                                                                           \
        "json_strip_nulls(json_build_object('id', r.id, 'name', r.name, 'description', r.description,"     \
        " 'enabled', r.enabled, 'action', r.action, 'bidirectional', r.bidirectional,"                      \
        " 'protocol', r.protocol,"                                                                          \
        " 'ports', CASE WHEN cardinality(r.ports) > 0 THEN (SELECT json_agg(x::text ORDER BY o)"            \
        "  FROM unnest(r.ports) WITH ORDINALITY u(x, o)) END,"                                              \
        " 'port_ranges', CASE WHEN cardinality(r.port_ranges) > 0 THEN (SELECT json_agg("                   \
        "  json_build_object('start', lower(x), 'end', upper(x) - 1) ORDER BY o)"                           \
        "  FROM unnest(r.port_ranges) WITH ORDINALITY u(x, o)) END,"                                        \
        " 'authorized_groups', CASE WHEN r.authorized_groups <> '{}'::jsonb THEN r.authorized_groups END,"  \
        " 'sources', " GROUPS_MIN("r.sources") ", 'destinations', " GROUPS_MIN("r.destinations") ","       \
        " 'sourceResource', CASE WHEN r.source_resource_id IS NOT NULL THEN json_build_object("             \
        "  'id', r.source_resource_id, 'type', r.source_resource_type) END,"                                \
        " 'destinationResource', CASE WHEN r.destination_resource_id IS NOT NULL THEN json_build_object("   \
        "  'id', r.destination_resource_id, 'type', r.destination_resource_type) END))"

/* A policy as NetBird's Policy; rules in rule id order. */
#define POLICY_JSON                                                                                         \
        "json_build_object('id', p.id, 'name', p.name, 'description', p.description,"                      \
        " 'enabled', p.enabled, 'source_posture_checks', to_json(p.source_posture_checks),"                 \
        " 'rules', COALESCE((SELECT json_agg(" RULE_JSON " ORDER BY r.id) FROM policy_rules r"              \
        " WHERE r.account_id = p.account_id AND r.policy_id = p.id), '[]'))"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" POLICY_JSON " ORDER BY p.name, p.id), '[]')"
        " FROM policies p WHERE p.account_id = $1";
static const char SQL_GET[] = "SELECT " POLICY_JSON " FROM policies p WHERE p.account_id = $1 AND p.id = $2";
static const char SQL_FIND[] = "SELECT name FROM policies WHERE account_id = $1 AND id = $2 FOR UPDATE";
static const char SQL_RULE_IDS[] = "SELECT id FROM policy_rules WHERE account_id = $1 AND policy_id = $2";

/* $2 sorted, for comparing lists as NetBird does (order does not matter). */
#define SORTED(a) "(SELECT COALESCE(jsonb_agg(x ORDER BY x), '[]') FROM unnest(" a ") x)"
/* Everything NetBird's Policy.Equal compares, in one comparable text. */
static const char SQL_CANON[] =
        "SELECT jsonb_build_object('name', p.name, 'description', p.description, 'enabled', p.enabled,"
        " 'posture', " SORTED("p.source_posture_checks") ","
        " 'rules', COALESCE((SELECT jsonb_object_agg(r.id, jsonb_build_object('name', r.name,"
        "  'description', r.description, 'enabled', r.enabled, 'action', r.action,"
        "  'bidirectional', r.bidirectional, 'protocol', r.protocol,"
        "  'sources', " SORTED("r.sources") ", 'destinations', " SORTED("r.destinations") ","
        "  'src', jsonb_build_array(r.source_resource_id, r.source_resource_type),"
        "  'dst', jsonb_build_array(r.destination_resource_id, r.destination_resource_type),"
        "  'ports', " SORTED("r.ports") ", 'ranges', (SELECT COALESCE(jsonb_agg(x::text ORDER BY x), '[]')"
        "  FROM unnest(r.port_ranges) x), 'auth', r.authorized_groups, 'user', r.authorized_user))"
        "  FROM policy_rules r WHERE r.account_id = p.account_id AND r.policy_id = p.id), '{}'))::text"
        " FROM policies p WHERE p.account_id = $1 AND p.id = $2";

static const char SQL_INSERT[] =
        "INSERT INTO policies (id, account_id, name, description, enabled) VALUES ($1, $2, $3, $4, $5::boolean)";
static const char SQL_UPDATE[] =
        "UPDATE policies SET name = $3, description = $4, enabled = $5::boolean WHERE account_id = $1 AND id = $2";
static const char SQL_DELETE[] = "DELETE FROM policies WHERE account_id = $1 AND id = $2";
static const char SQL_DELETE_RULES[] = "DELETE FROM policy_rules WHERE account_id = $1 AND policy_id = $2";

/* Group ids of $a that are groups of account $3, in order (check_rule
 * has refused unknown ids already; this keeps the insert safe anyway). */
#define EXISTING_GROUPS(a)                                                                                  \
        "ARRAY(SELECT u.id FROM unnest(" a "::text[]) WITH ORDINALITY u(id, o) WHERE EXISTS"                \
        " (SELECT 1 FROM groups g WHERE g.account_id = $3 AND g.id = u.id) ORDER BY u.o)"

static const char SQL_INSERT_RULE[] =
        "INSERT INTO policy_rules (id, policy_id, account_id, name, description, enabled, action,"
        " bidirectional, protocol, sources, destinations, source_resource_id, source_resource_type,"
        " destination_resource_id, destination_resource_type, ports, port_ranges, authorized_groups)"
        " VALUES ($1, $2, $3, $4, $5, $6::boolean, $7, $8::boolean, $9, " EXISTING_GROUPS("$10") ","
        " " EXISTING_GROUPS("$11") ", $12, $13, $14, $15, $16::integer[], $17::int4range[], $18::jsonb)";


/* ---- the request ------------------------------------------------------------------------- */

typedef struct rule_req {
        const char *id;                 /* as sent; NULL or "" = a new rule */
        const char *name, *description, *action, *protocol;
        bool enabled, bidirectional;
        bool has_sources, has_destinations;
        json_t *sources_json;           /* borrowed */
        cp_strbuf sources, destinations;        /* PostgreSQL array literals */
        json_t *src_res, *dst_res;      /* borrowed resource objects, NULL = none */
        const char *src_res_id, *src_res_type, *dst_res_id, *dst_res_type;
        json_t *ports, *ranges, *auth;  /* borrowed, NULL when absent */

        /* Filled by validation and id assignment. */
        cp_strbuf pg_ports, pg_ranges;
        char *auth_json;                /* authorized_groups to store */
        const char *rid;                /* the rule's id in the database */
        char fresh_id[CP_ID_LEN + 1];
} rule_req;

typedef struct policy_req {
        const char *name, *description;
        bool enabled;
        size_t n_rules;
        rule_req *rules;
        size_t n_posture;
        json_t *posture;                /* borrowed source_posture_checks, NULL when absent */
} policy_req;

static void policy_req_release(policy_req *p) {
        for (size_t i = 0; p->rules && i < p->n_rules; i++) {
                rule_req *r = &p->rules[i];
                cp_strbuf_release(&r->sources);
                cp_strbuf_release(&r->destinations);
                cp_strbuf_release(&r->pg_ports);
                cp_strbuf_release(&r->pg_ranges);
                free(r->auth_json);
        }
        free(p->rules);
        p->rules = NULL;
}

/* {"id": ..., "type": ...}; either may be absent (Go's zero value). */
static int parse_resource(api_ctx *c, json_t *rule, const char *key, json_t **obj, const char **id,
                          const char **type) {
        if (api_field_object(c, rule, key, obj) < 0)
                return API_FAIL;
        if (!*obj)
                return 0;
        *id = *type = "";
        if (api_field_str(c, *obj, "id", id) < 0 || api_field_str(c, *obj, "type", type) < 0)
                return API_FAIL;
        return 0;
}

static bool is_str_array(const json_t *a) {
        json_t *e;
        size_t i;

        if (!json_is_array(a))
                return false;
        json_array_foreach(a, i, e) {
                if (!json_is_string(e) || strlen(json_string_value(e)) != json_string_length(e))
                        return false;
        }
        return true;
}

/* An array of strings, borrowed; 400 for anything else. */
static int parse_str_array(api_ctx *c, json_t *obj, const char *key, json_t **ret) {
        if (api_field_array(c, obj, key, ret) < 0)
                return API_FAIL;
        if (*ret && !is_str_array(*ret))
                return api_bad_json(c);
        return 0;
}

/* port_ranges: objects with integer start and end. */
static int parse_ranges(api_ctx *c, json_t *rule, json_t **ret) {
        json_t *e;
        size_t i;
        int64_t v;

        if (api_field_array(c, rule, "port_ranges", ret) < 0)
                return API_FAIL;
        json_array_foreach(*ret, i, e) {
                if (!json_is_object(e))
                        return api_bad_json(c);
                if (api_field_int(c, e, "start", INT64_MIN, INT64_MAX, &v) < 0 ||
                    api_field_int(c, e, "end", INT64_MIN, INT64_MAX, &v) < 0)
                        return API_FAIL;
        }
        return 0;
}

/* authorized_groups: an object of string arrays. */
static int parse_auth(api_ctx *c, json_t *rule, json_t **ret) {
        const char *k;
        json_t *v;

        if (api_field_object(c, rule, "authorized_groups", ret) < 0)
                return API_FAIL;
        json_object_foreach(*ret, k, v) {
                if (!json_is_null(v) && !is_str_array(v))
                        return api_bad_json(c);
        }
        return 0;
}

/* One rule's fields with their JSON types; 400 for a wrong type. */
static int parse_rule(api_ctx *c, json_t *j, rule_req *r) {
        int has_src, has_dst;

        if (!json_is_object(j))
                return api_bad_json(c);
        r->name = r->description = r->action = r->protocol = "";
        if (api_field_str(c, j, "id", &r->id) < 0 || api_field_str(c, j, "name", &r->name) < 0 ||
            api_field_str(c, j, "description", &r->description) < 0 ||
            api_field_bool(c, j, "enabled", &r->enabled) < 0 || api_field_str(c, j, "action", &r->action) < 0 ||
            api_field_bool(c, j, "bidirectional", &r->bidirectional) < 0 ||
            api_field_str(c, j, "protocol", &r->protocol) < 0)
                return API_FAIL;
        if ((has_src = api_field_strarr(c, j, "sources", &r->sources, NULL)) < 0 ||
            (has_dst = api_field_strarr(c, j, "destinations", &r->destinations, NULL)) < 0)
                return API_FAIL;
        r->has_sources = has_src == 1;
        r->has_destinations = has_dst == 1;
        if (!r->has_sources)
                cp_strbuf_adds(&r->sources, "{}");
        if (!r->has_destinations)
                cp_strbuf_adds(&r->destinations, "{}");
        r->sources_json = json_object_get(j, "sources");
        if (parse_resource(c, j, "sourceResource", &r->src_res, &r->src_res_id, &r->src_res_type) < 0 ||
            parse_resource(c, j, "destinationResource", &r->dst_res, &r->dst_res_id, &r->dst_res_type) < 0 ||
            parse_str_array(c, j, "ports", &r->ports) < 0 || parse_ranges(c, j, &r->ranges) < 0 ||
            parse_auth(c, j, &r->auth) < 0)
                return API_FAIL;
        return 0;
}

/* The whole body with its JSON types, before any other check (NetBird
 * decodes first, so a wrong type anywhere is 400 whatever else is wrong). */
static int parse_policy(api_ctx *c, policy_req *p) {
        json_t *body = api_body(c), *rules = NULL, *posture = NULL, *e;
        size_t i;

        if (!body)
                return API_FAIL;
        p->name = p->description = "";
        if (api_field_str(c, body, "name", &p->name) < 0 ||
            api_field_str(c, body, "description", &p->description) < 0 ||
            api_field_bool(c, body, "enabled", &p->enabled) < 0 || api_field_array(c, body, "rules", &rules) < 0 ||
            parse_str_array(c, body, "source_posture_checks", &posture) < 0)
                return API_FAIL;
        p->n_posture = json_array_size(posture);
        p->posture = posture;
        p->n_rules = json_array_size(rules);
        p->rules = cp_xcalloc(p->n_rules ? p->n_rules : 1, sizeof *p->rules);
        for (i = 0; i < p->n_rules; i++) {
                rule_req *r = &p->rules[i];
                cp_strbuf_init(&r->sources);
                cp_strbuf_init(&r->destinations);
                cp_strbuf_init(&r->pg_ports);
                cp_strbuf_init(&r->pg_ranges);
        }
        json_array_foreach(rules, i, e) {
                if (parse_rule(c, e, &p->rules[i]) < 0)
                        return API_FAIL;
        }
        return 0;
}

/* ---- validation (NetBird's order and messages) --------------------------------------------- */

#define MSG_PORT "valid port value is in 1..65535 range"

/* Go's strconv.Atoi then 1..65535: an optional sign and decimal digits. */
static bool port_value(const char *s, int *ret) {
        const char *p = s + (*s == '+' || *s == '-');
        long v = 0;

        if (!*p)
                return false;
        for (; *p; p++) {
                if (!isdigit((unsigned char) *p))
                        return false;
                if (v <= 65535)
                        v = v * 10 + (*p - '0');
        }
        if (*s == '-')
                v = -v;
        if (v < 1 || v > 65535)
                return false;
        *ret = (int) v;
        return true;
}

static int check_ports(api_ctx *c, rule_req *r) {
        json_t *e;
        size_t i;
        int port;

        if (json_array_size(r->ports) > 0 && json_array_size(r->ranges) > 0)
                return api_error(c, 422, "specify either individual ports or port ranges, not both");
        cp_strbuf_addch(&r->pg_ports, '{');
        json_array_foreach(r->ports, i, e) {
                if (!port_value(json_string_value(e), &port))
                        return api_error(c, 422, MSG_PORT);
                cp_strbuf_addf(&r->pg_ports, "%s%d", i ? "," : "", port);
        }
        cp_strbuf_addch(&r->pg_ports, '}');
        cp_strbuf_addch(&r->pg_ranges, '{');
        json_array_foreach(r->ranges, i, e) {
                int64_t start = 0, end = 0;
                (void) api_field_int(c, e, "start", INT64_MIN, INT64_MAX, &start);
                (void) api_field_int(c, e, "end", INT64_MIN, INT64_MAX, &end);
                if (start < 1 || end > 65535)
                        return api_error(c, 422, MSG_PORT);
                /* NetBird stores a reversed range as it is; an int4range
                 * cannot hold one, and it would match nothing anyway. */
                if (start > end)
                        return api_error(c, 422, "port range start %" PRId64 " is greater than its end %" PRId64, start,
                                    end);
                cp_strbuf_addf(&r->pg_ranges, "%s\"[%" PRId64 ",%" PRId64 "]\"", i ? "," : "", start, end);
        }
        cp_strbuf_addch(&r->pg_ranges, '}');
        return 0;
}

/* netbird-ssh with authorized_groups: every source group needs an entry.
 * The map is kept only for netbird-ssh rules, as in NetBird. */
static int check_ssh(api_ctx *c, rule_req *r) {
        json_t *e;
        size_t i;

        if (strcmp(r->protocol, "netbird-ssh") != 0 || json_object_size(r->auth) == 0)
                return 0;
        json_array_foreach(r->sources_json, i, e) {
                if (!json_object_get(r->auth, json_string_value(e)))
                        return api_error(c, 422,
                                    "authorized group for netbird-ssh protocol should be specified for each source group");
        }
        r->auth_json = json_dumps(r->auth, JSON_COMPACT);
        if (!r->auth_json)
                return api_internal(c, "encoding authorized_groups", NULL);
        return 0;
}

static bool is_one_of(const char *s, const char *const *set) {
        for (; *set; set++)
                if (strcmp(s, *set) == 0)
                        return true;
        return false;
}

/* 422 "group <id> not found" for the first id of pgarray that is not a
 * group of the caller's account. */
static int check_groups_exist(api_ctx *c, const char *pgarray) {
        char bad[256];
        int r;

        if (strcmp(pgarray, "{}") == 0)
                return 0;
        r = api_find_bad_group(c, pgarray, false, bad, sizeof bad, NULL);
        if (r <= 0)
                return r;
        return api_error(c, 422, "group %s not found", bad);
}

/* A rule's sourceResource / destinationResource (res NULL = none). */
static int check_rule_resource(api_ctx *c, const json_t *res, const char *id, const char *type) {
        static const char SQL_PEER[] = "SELECT 1 FROM peers WHERE account_id = $1 AND id = $2";
        static const char SQL_RES[] = "SELECT 1 FROM network_resources WHERE account_id = $1 AND id = $2 AND type = $3";
        _cleanup_rows_ cp_store_rows *rows = NULL;
        bool peer;
        int r;

        if (!res)
                return 0;
        peer = strcmp(type, "peer") == 0;
        if (!peer && strcmp(type, "host") != 0 && strcmp(type, "subnet") != 0 && strcmp(type, "domain") != 0)
                return api_error(c, 422, "invalid resource type: %s", type);
        const char *p[3] = { c->account_id, id, type };
        r = api_sql(c, peer ? SQL_PEER : SQL_RES, peer ? 2 : 3, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return peer ? api_error(c, 422, "peer %s not found", id)
                            : api_error(c, 422, "network resource: %s not found", id);
        return 0;
}

static int check_rule(api_ctx *c, rule_req *r) {
        static const char *const actions[] = { "accept", "drop", NULL };
        static const char *const protocols[] = { "all", "tcp", "udp", "icmp", "netbird-ssh", NULL };
        int ret;

        if (r->has_sources && r->src_res)
                return api_error(c, 422, "specify either sources or  source resources, not both");
        if (r->has_destinations && r->dst_res)
                return api_error(c, 422, "specify either destinations or  destination resources, not both");
        if (!(r->has_sources || r->src_res) || !(r->has_destinations || r->dst_res))
                return api_error(c, 422,
                            "specify either sources or source resources and destinations or destination resources");
        if (!is_one_of(r->action, actions))
                return api_error(c, 422, "unknown action type");
        if (!is_one_of(r->protocol, protocols))
                return api_error(c, 422, "unknown protocol type: %s", r->protocol);
        if ((ret = check_ports(c, r)) < 0 || (ret = check_ssh(c, r)) < 0)
                return ret;
        if ((strcmp(r->protocol, "all") == 0 || strcmp(r->protocol, "icmp") == 0) &&
            (json_array_size(r->ports) > 0 || json_array_size(r->ranges) > 0))
                return api_error(c, 422, "for ALL or ICMP protocol ports is not allowed");
        /* A rule may name a peer or a network resource directly. Ours:
         * NetBird stores any id and type; here the type must be one it
         * knows and the id the account's peer or resource of that type. */
        if ((ret = check_rule_resource(c, r->src_res, r->src_res_id, r->src_res_type)) < 0 ||
            (ret = check_rule_resource(c, r->dst_res, r->dst_res_id, r->dst_res_type)) < 0)
                return ret;
        /* Ours: NetBird drops group ids that do not exist without a word,
         * so a typo silently opens nothing (or less than meant); here a
         * rule naming a group that is not the account's is refused. */
        if ((ret = check_groups_exist(c, r->sources.buf)) < 0 ||
            (ret = check_groups_exist(c, r->destinations.buf)) < 0)
                return ret;
        return 0;
}

static int validate_policy(api_ctx *c, policy_req *p) {
        int r;

        if (!*p->name)
                return api_error(c, 422, "policy name shouldn't be empty");
        if (p->n_rules == 0)
                return api_error(c, 422, "policy rules shouldn't be empty");
        for (size_t i = 0; i < p->n_rules; i++)
                if ((r = check_rule(c, &p->rules[i])) < 0)
                        return r;
        return api_posture_ids_check(c, p->posture);
}

/* ---- rule ids ------------------------------------------------------------------------------ */

static bool rows_have(cp_store_rows *rows, const char *id) {
        for (int i = 0; i < cp_store_rows_count(rows); i++)
                if (strcmp(cp_store_rows_get(rows, i, 0), id) == 0)
                        return true;
        return false;
}

static bool given_id(const rule_req *r) {
        return r->id && *r->id;
}

/* On update a rule sent with an id keeps it, and the id must be one of
 * the policy's rules (NetBird: "invalid rule ID"); each may appear once.
 * A new rule takes the policy's id, as NetBird's first rule does, unless
 * another rule has it; further new rules get fresh ids. On create, ids
 * sent are ignored. */
static int assign_rule_ids(api_ctx *c, policy_req *p, const char *policy_id, bool update) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        bool policy_id_taken = false;

        if (update) {
                const char *q[2] = { c->account_id, policy_id };
                if (api_sql(c, SQL_RULE_IDS, 2, q, &rows) < 0)
                        return API_FAIL;
                for (size_t i = 0; i < p->n_rules; i++) {
                        rule_req *r = &p->rules[i];
                        if (!given_id(r))
                                continue;
                        bool repeated = false;
                        for (size_t k = 0; k < i; k++)
                                repeated |= given_id(&p->rules[k]) && strcmp(p->rules[k].id, r->id) == 0;
                        if (repeated || !rows_have(rows, r->id))
                                return api_error(c, 422, "invalid rule ID: %s", r->id);
                        r->rid = r->id;
                        policy_id_taken |= strcmp(r->id, policy_id) == 0;
                }
        }
        for (size_t i = 0; i < p->n_rules; i++) {
                rule_req *r = &p->rules[i];
                if (r->rid)
                        continue;
                if (!policy_id_taken) {
                        r->rid = policy_id;
                        policy_id_taken = true;
                        continue;
                }
                cp_id_new(r->fresh_id);
                r->rid = r->fresh_id;
        }
        return 0;
}

/* ---- storage -------------------------------------------------------------------------------- */

static int insert_rules(api_ctx *c, const policy_req *p, const char *policy_id) {
        for (size_t i = 0; i < p->n_rules; i++) {
                const rule_req *r = &p->rules[i];
                const char *q[18] = {
                        r->rid,
                        policy_id,
                        c->account_id,
                        r->name,
                        r->description,
                        r->enabled ? "true" : "false",
                        r->action,
                        r->bidirectional ? "true" : "false",
                        r->protocol,
                        r->sources.buf,
                        r->destinations.buf,
                        r->src_res ? r->src_res_id : NULL,
                        r->src_res ? r->src_res_type : NULL,
                        r->dst_res ? r->dst_res_id : NULL,
                        r->dst_res ? r->dst_res_type : NULL,
                        r->pg_ports.buf,
                        r->pg_ranges.buf,
                        r->auth_json ? r->auth_json : "{}",
                };
                if (api_sql(c, SQL_INSERT_RULE, 18, q, NULL) < 0)
                        return API_FAIL;
        }
        return 0;
}

/* The policy in comparable form, or NULL when it does not exist. */
static char *canonical(api_ctx *c, const char *id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[2] = { c->account_id, id };

        if (api_sql(c, SQL_CANON, 2, q, &rows) < 0 || cp_store_rows_count(rows) != 1)
                return NULL;
        return cp_xstrdup(cp_store_rows_get(rows, 0, 0));
}

/* ---- handlers --------------------------------------------------------------------------------- */

static int list_policies(api_ctx *c) {
        return api_reply_list(c, SQL_LIST);
}

static int reply_policy(api_ctx *c, const char *id) {
        return api_reply_one(c, SQL_GET, id, "policy");
}

static int get_policy(api_ctx *c) {
        return reply_policy(c, c->param[0]);
}

static int create_policy(api_ctx *c) {
        policy_req p = { 0 };
        char id[CP_ID_LEN + 1];
        int r;

        cp_id_new(id);
        r = parse_policy(c, &p);
        if (r == 0)
                r = validate_policy(c, &p);
        if (r == 0)
                r = assign_rule_ids(c, &p, id, false);
        if (r == 0) {
                const char *q[5] = { id, c->account_id, p.name, p.description, p.enabled ? "true" : "false" };
                r = api_sql(c, SQL_INSERT, 5, q, NULL);
        }
        if (r == 0)
                r = api_posture_ids_store(c, id, p.posture);
        if (r == 0)
                r = insert_rules(c, &p, id);
        if (r == 0)
                r = api_event_kv(c, API_ACT_POLICY_ADDED, id, "name", p.name, NULL);
        if (r == 0) {
                api_changed(c);
                r = reply_policy(c, id);
        }
        policy_req_release(&p);
        return r;
}

/* Loads and locks the policy; 404 when missing. *name (may be NULL) gets
 * its current name, to be freed. */
static int find_policy(api_ctx *c, const char *id, char **name) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[2] = { c->account_id, id };
        int r = api_sql(c, SQL_FIND, 2, q, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "policy: %s not found", id);
        if (name)
                *name = cp_xstrdup(cp_store_rows_get(rows, 0, 0));
        return 0;
}

/* The rules are replaced by those sent: kept ids stay, rules left out are
 * deleted. */
static int update_policy(api_ctx *c) {
        const char *id = c->param[0];
        policy_req p = { 0 };
        char *before = NULL, *after = NULL;
        int r;

        /* NetBird looks the policy up before it reads the body. */
        r = find_policy(c, id, NULL);
        if (r < 0)
                return r;
        r = parse_policy(c, &p);
        if (r == 0)
                r = validate_policy(c, &p);
        if (r == 0)
                r = assign_rule_ids(c, &p, id, true);
        if (r == 0 && !(before = canonical(c, id)))
                r = API_FAIL;
        if (r == 0) {
                const char *q[5] = { c->account_id, id, p.name, p.description, p.enabled ? "true" : "false" };
                r = api_sql(c, SQL_UPDATE, 5, q, NULL);
        }
        if (r == 0)
                r = api_posture_ids_store(c, id, p.posture);
        if (r == 0) {
                const char *q[2] = { c->account_id, id };
                r = api_sql(c, SQL_DELETE_RULES, 2, q, NULL);
        }
        if (r == 0)
                r = insert_rules(c, &p, id);
        if (r == 0 && !(after = canonical(c, id)))
                r = API_FAIL;
        /* An update to what is already there: no event, no new maps. */
        if (r == 0 && strcmp(before, after) != 0) {
                r = api_event_kv(c, API_ACT_POLICY_UPDATED, id, "name", p.name, NULL);
                api_changed(c);
        }
        if (r == 0)
                r = reply_policy(c, id);
        free(before);
        free(after);
        policy_req_release(&p);
        return r;
}

static int delete_policy(api_ctx *c) {
        const char *id = c->param[0];
        char *name = NULL;
        int r = find_policy(c, id, &name);

        if (r < 0)
                return r;
        const char *q[2] = { c->account_id, id };
        r = api_sql(c, SQL_DELETE, 2, q, NULL);
        if (r == 0)
                r = api_event_kv(c, API_ACT_POLICY_REMOVED, id, "name", name, NULL);
        free(name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_policies_routes[] = {
        { "GET", "/api/policies", API_MOD_POLICIES, API_READ, list_policies },
        { "POST", "/api/policies", API_MOD_POLICIES, API_CREATE, create_policy },
        { "GET", "/api/policies/{policyId}", API_MOD_POLICIES, API_READ, get_policy },
        { "PUT", "/api/policies/{policyId}", API_MOD_POLICIES, API_UPDATE, update_policy },
        { "DELETE", "/api/policies/{policyId}", API_MOD_POLICIES, API_DELETE, delete_policy },
        { NULL },
};
