/*
 * /api/dns/nameservers: list, get, create, update, delete (openapi
 * NameserverGroup, NameserverGroupRequest, Nameserver), and
 * /api/dns/settings: the groups whose peers do not get DNS management
 * (openapi DNSSettings).
 *
 * Storage: name_server_groups (name_servers is a jsonb array of
 * {"ip", "ns_type", "port"}, the API's shape, which the snapshot hands to
 * agents; domains as sent) and accounts.dns_settings_disabled_management_groups.
 */
#include "api-activity.h"
#include "api-int.h"

#include <ctype.h>
#include <stdarg.h>

#define MAX_NAME_CHARS 40       /* dns.MaxGroupNameChar */
#define MAX_NAMESERVERS 3


/* ---- nameserver groups ------------------------------------------------------------------------- */

#define NSG_JSON(t)                                                                                          \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'description', " t ".description,"            \
        " 'nameservers', " t ".name_servers, 'groups', " t ".groups, 'primary', " t ".\"primary\","           \
        " 'domains', " t ".domains, 'enabled', " t ".enabled, 'search_domains_enabled', "                      \
        t ".search_domains_enabled)"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" NSG_JSON("n") " ORDER BY n.id), '[]') FROM name_server_groups n"
        " WHERE n.account_id = $1";
static const char SQL_GET[] =
        "SELECT " NSG_JSON("n") " FROM name_server_groups n WHERE n.account_id = $1 AND n.id = $2";
static const char SQL_NAME[] = "SELECT name FROM name_server_groups WHERE account_id = $1 AND id = $2";
static const char SQL_NAME_TAKEN[] =
        "SELECT 1 FROM name_server_groups WHERE account_id = $1 AND name = $2 AND id <> $3";
static const char SQL_INSERT[] =
        "INSERT INTO name_server_groups (id, account_id, name, description, name_servers, groups, \"primary\","
        " domains, enabled, search_domains_enabled)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::text[], $7::boolean, $8::text[], $9::boolean, $10::boolean)";
static const char SQL_UPDATE[] =
        "UPDATE name_server_groups SET name = $3, description = $4, name_servers = $5::jsonb,"
        " groups = $6::text[], \"primary\" = $7::boolean, domains = $8::text[], enabled = $9::boolean,"
        " search_domains_enabled = $10::boolean WHERE id = $1 AND account_id = $2";
static const char SQL_DELETE[] = "DELETE FROM name_server_groups WHERE account_id = $1 AND id = $2";

typedef struct nsg_req {
        const char *name, *description;
        bool enabled, primary, search_domains_enabled;
        json_t *servers;                /* borrowed from the body; NULL when absent */
        json_t *domains;                /* borrowed; NULL when absent */
        cp_strbuf groups, domains_pg;   /* PostgreSQL array literals */
        size_t n_groups;
        char *servers_json;             /* the normalised list, for the name_servers column */
} nsg_req;

static void nsg_req_init(nsg_req *q) {
        *q = (nsg_req) { .name = "", .description = "" };
        cp_strbuf_init(&q->groups);
        cp_strbuf_init(&q->domains_pg);
        cp_strbuf_adds(&q->groups, "{}");
        cp_strbuf_adds(&q->domains_pg, "{}");
}

static void nsg_req_release(nsg_req *q) {
        cp_strbuf_release(&q->groups);
        cp_strbuf_release(&q->domains_pg);
        free(q->servers_json);
}

/* Each nameserver must be an object with ip, ns_type and port of the
 * right JSON types (400 otherwise, like Go's decoder). */
static int parse_servers_types(api_ctx *c, json_t *servers) {
        json_t *e;
        size_t i;

        json_array_foreach(servers, i, e) {
                const char *s;
                int64_t port;
                if (!json_is_object(e))
                        return api_bad_json(c);
                if (api_field_str(c, e, "ip", &s) < 0 || api_field_str(c, e, "ns_type", &s) < 0 ||
                    api_field_int(c, e, "port", INT64_MIN, INT64_MAX, &port) < 0)
                        return API_FAIL;
        }
        return 0;
}

static int parse_nsg(api_ctx *c, nsg_req *q) {
        json_t *body = api_body(c);
        int rd;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 ||
            api_field_str(c, body, "description", &q->description) < 0 ||
            api_field_array(c, body, "nameservers", &q->servers) < 0 ||
            (q->servers && parse_servers_types(c, q->servers) < 0) ||
            api_field_bool(c, body, "enabled", &q->enabled) < 0 ||
            api_field_strarr(c, body, "groups", &q->groups, &q->n_groups) < 0 ||
            api_field_bool(c, body, "primary", &q->primary) < 0 ||
            (rd = api_field_strarr(c, body, "domains", &q->domains_pg, NULL)) < 0 ||
            api_field_bool(c, body, "search_domains_enabled", &q->search_domains_enabled) < 0)
                return API_FAIL;
        q->domains = rd == 1 ? json_object_get(body, "domains") : NULL;
        return 0;
}

/* One nameserver as NetBird reads it: "<ns_type>://<ip>:<port>" must
 * parse, so ns_type is "udp" (any case), ip an address (in brackets or
 * not, no zone) and port not negative. Appends {ip, ns_type, port} with
 * the address as Go prints it; -1 when it does not parse. */
static int normalise_server(json_t *e, json_t *out) {
        const char *ip = "", *type = "";
        json_t *jp = json_object_get(e, "port");
        double dport = json_is_number(jp) ? json_number_value(jp) : 0;
        char host[64], canon[64];
        size_t n;

        /* Checked as a double: a port such as 1e300 must not reach the
         * int64_t conversion, which is undefined out of range (the
         * pattern tests/fuzz found in common/proxyauth). */
        if (!(dport >= 0 && dport <= INT32_MAX))
                return -1;
        int64_t port = (int64_t) dport;

        if (json_is_string(json_object_get(e, "ip")))
                ip = json_string_value(json_object_get(e, "ip"));
        if (json_is_string(json_object_get(e, "ns_type")))
                type = json_string_value(json_object_get(e, "ns_type"));
        if (strcasecmp(type, "udp") != 0 || port < 0 || port > INT32_MAX)
                return -1;
        n = strlen(ip);
        if (strpbrk(ip, "[]")) {
                if (n < 2 || ip[0] != '[' || ip[n - 1] != ']')
                        return -1;
                ip++;
                n -= 2;
        }
        if (n >= sizeof host)
                return -1;
        memcpy(host, ip, n);
        host[n] = '\0';
        if (api_ip_canonical(host, canon) < 0)
                return -1;
        json_array_append_new(out, json_pack("{s:s, s:s, s:I}", "ip", canon, "ns_type", "udp", "port",
                                             (json_int_t) port));
        return 0;
}

static int normalise_servers(api_ctx *c, nsg_req *q) {
        json_t *out = json_array(), *e;
        size_t i;

        json_array_foreach(q->servers, i, e) {
                if (normalise_server(e, out) < 0) {
                        json_decref(out);
                        return api_error(c, 422, "invalid NS servers format");
                }
        }
        q->servers_json = json_dumps(out, JSON_COMPACT);
        json_decref(out);
        return 0;
}

/* Why d is not a valid match domain, into why (empty when it is): no
 * wildcard, one trailing dot allowed, otherwise NetBird's domain syntax. */
static void domain_problem(const char *d, cp_strbuf *why) {
        cp_strbuf t, ascii, err;
        size_t n = strlen(d);

        if (strncmp(d, "*.", 2) == 0) {
                cp_strbuf_adds(why, "wildcards not allowed");
                return;
        }
        cp_strbuf_init(&t);
        cp_strbuf_init(&ascii);
        cp_strbuf_init(&err);
        cp_strbuf_add(&t, d, n > 0 && d[n - 1] == '.' ? n - 1 : n);
        if (api_domain_to_ascii(t.buf, &ascii, &err) < 0)
                cp_strbuf_addf(why, "invalid domain name: convert domain to punycode: %s: %s", t.buf, err.buf);
        else if (!api_domain_valid(ascii.buf))
                cp_strbuf_addf(why, "invalid domain name: invalid domain format: %s", t.buf);
        cp_strbuf_release(&t);
        cp_strbuf_release(&ascii);
        cp_strbuf_release(&err);
}

/* primary XOR domains, no search domains on a primary group, and each
 * domain's syntax. */
static int check_domains(api_ctx *c, const nsg_req *q) {
        size_t n = json_array_size(q->domains), i;
        json_t *e;
        int r = 0;

        if (!q->primary && n == 0)
                return api_error(c, 422, "nameserver group primary status is false and domains are empty,"
                                     " it should be primary or have at least one domain");
        if (q->primary && n != 0)
                return api_error(c, 422, "nameserver group primary status is true and domains are not empty,"
                                     " you should set either primary or domain");
        if (q->primary && q->search_domains_enabled)
                return api_error(c, 422, "nameserver group primary status is true and search domains is enabled,"
                                     " you should not set search domains for primary nameservers");
        json_array_foreach(q->domains, i, e) {
                cp_strbuf why, quoted;
                cp_strbuf_init(&why);
                cp_strbuf_init(&quoted);
                domain_problem(json_string_value(e), &why);
                if (why.len > 0) {
                        api_go_quote(&quoted, why.buf, why.len);
                        r = api_error(c, 422, "nameserver group got an invalid domain: %s %s", json_string_value(e),
                                  quoted.buf);
                }
                cp_strbuf_release(&why);
                cp_strbuf_release(&quoted);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* NetBird's validateNameServerGroup, in its order. */
static int check_nsg(api_ctx *c, const char *id, const nsg_req *q) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        size_t n_servers = json_array_size(q->servers), name_len = api_utf8_count(q->name);
        int r;

        r = check_domains(c, q);
        if (r < 0)
                return r;
        if (n_servers == 0 || n_servers > MAX_NAMESERVERS)
                return api_error(c, 422, "the list of nameservers should be 1 or 3, got %zu", n_servers);
        if (name_len == 0 || name_len > MAX_NAME_CHARS)
                return api_error(c, 422, "nameserver group name should be between 1 and %d", MAX_NAME_CHARS);
        const char *p[3] = { c->account_id, q->name, id };
        r = api_sql(c, SQL_NAME_TAKEN, 3, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 422, "nameserver group with name %s already exist", q->name);
        return api_check_groups(c, q->groups.buf, q->n_groups);
}

static int write_nsg(api_ctx *c, const char *sql, const char *id, const nsg_req *q) {
        const char *p[10] = {
                id, c->account_id, q->name, q->description, q->servers_json, q->groups.buf,
                q->primary ? "t" : "f", q->domains_pg.buf, q->enabled ? "t" : "f",
                q->search_domains_enabled ? "t" : "f",
        };
        return api_sql(c, sql, 10, p, NULL);
}

static int reply_nsg(api_ctx *c, const char *id) {
        return api_reply_one(c, SQL_GET, id, "nameserver group");
}

/* Whether group id exists; 404 with NetBird's message when it does not. */
static int find_nsg(api_ctx *c, const char *id, cp_store_rows **ret) {
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_NAME, 2, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) == 0)
                return api_error(c, 404, "nameserver group: %s not found", id);
        return 0;
}

static int list_nsgs(api_ctx *c) {
        return api_reply_list(c, SQL_LIST);
}

static int get_nsg(api_ctx *c) {
        return reply_nsg(c, c->param[0]);
}

/* The write, its event, the serial bump and the reply. */
static int save_nsg(api_ctx *c, const char *sql, const char *id, const nsg_req *q, int activity) {
        int r = write_nsg(c, sql, id, q);

        if (r == 0)
                r = api_event_kv(c, activity, id, "name", q->name, NULL);
        if (r < 0)
                return r;
        api_changed(c);
        return reply_nsg(c, id);
}

/* POST and PUT: parse, normalise, (for PUT) find, check, write. NetBird
 * reads the body before it looks the group up, so a bad body on an
 * unknown id is still 400/422. */
static int put_nsg(api_ctx *c, const char *id, bool existing) {
        _cleanup_rows_ cp_store_rows *cur = NULL;
        nsg_req q;
        int r;

        nsg_req_init(&q);
        r = parse_nsg(c, &q);
        if (r == 0)
                r = normalise_servers(c, &q);
        if (r == 0 && existing)
                r = find_nsg(c, id, &cur);
        if (r == 0)
                r = check_nsg(c, id, &q);
        if (r == 0)
                r = save_nsg(c, existing ? SQL_UPDATE : SQL_INSERT, id, &q,
                             existing ? API_ACT_NAMESERVER_GROUP_UPDATED : API_ACT_NAMESERVER_GROUP_CREATED);
        nsg_req_release(&q);
        return r;
}

static int create_nsg(api_ctx *c) {
        char id[CP_ID_LEN + 1];

        cp_id_new(id);
        return put_nsg(c, id, false);
}

static int update_nsg(api_ctx *c) {
        return put_nsg(c, c->param[0], true);
}

static int delete_nsg(api_ctx *c) {
        const char *id = c->param[0];
        _cleanup_rows_ cp_store_rows *cur = NULL;
        const char *p[2] = { c->account_id, id };
        int r;

        r = find_nsg(c, id, &cur);
        if (r < 0)
                return r;
        r = api_event_kv(c, API_ACT_NAMESERVER_GROUP_DELETED, id, "name", cp_store_rows_get(cur, 0, 0), NULL);
        if (r == 0)
                r = api_sql(c, SQL_DELETE, 2, p, NULL);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- DNS settings --------------------------------------------------------------------------------- */

static const char SQL_SETTINGS[] =
        "SELECT json_build_object('disabled_management_groups', dns_settings_disabled_management_groups)"
        " FROM accounts WHERE id = $1";
/* One event per group that joined ($3) or left ($4) the list, joined ones
 * first, each in list order, for groups that exist (NetBird's meta: group,
 * group_id; the target is the account). $5 the initiator. */
static const char SQL_SETTINGS_EVENTS[] =
        "WITH old AS (SELECT dns_settings_disabled_management_groups AS g FROM accounts WHERE id = $1),"
        " ch AS (SELECT u.id, u.ord, 0 AS phase, $3::int AS act"
        "   FROM unnest($2::text[]) WITH ORDINALITY AS u(id, ord), old WHERE NOT (u.id = ANY (old.g))"
        "  UNION ALL SELECT u.id, u.ord, 1, $4::int"
        "   FROM old, unnest(old.g) WITH ORDINALITY AS u(id, ord) WHERE NOT (u.id = ANY ($2::text[])))"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT ch.act, $5, $1, $1, jsonb_build_object('group', g.name, 'group_id', g.id)"
        " FROM ch JOIN groups g ON g.account_id = $1 AND g.id = ch.id ORDER BY ch.phase, ch.ord";
static const char SQL_SETTINGS_SAVE[] =
        "UPDATE accounts SET dns_settings_disabled_management_groups = $2::text[] WHERE id = $1";

static int get_settings(api_ctx *c) {
        const char *p[1] = { c->account_id };
        bool found;
        int r = api_sql_reply(c, 200, SQL_SETTINGS, 1, p, &found);

        if (r == 0 && !found)
                return api_internal(c, "account row missing", NULL);
        return r;
}

/* The list is replaced by what was sent (absent = empty); every group
 * must exist. */
static int update_settings(api_ctx *c) {
        json_t *body = api_body(c);
        char added[16], removed[16];
        cp_strbuf groups;
        size_t n = 0;
        int r;

        if (!body)
                return API_FAIL;
        cp_strbuf_init(&groups);
        cp_strbuf_adds(&groups, "{}");
        r = api_field_strarr(c, body, "disabled_management_groups", &groups, &n);
        if (r > 0 && n > 0)
                r = api_check_groups(c, groups.buf, n);
        if (r >= 0) {
                (void) snprintf(added, sizeof added, "%d", API_ACT_GROUP_ADDED_TO_DISABLED_MANAGEMENT_GROUPS);
                (void) snprintf(removed, sizeof removed, "%d",
                                API_ACT_GROUP_REMOVED_FROM_DISABLED_MANAGEMENT_GROUPS);
                const char *p[5] = { c->account_id, groups.buf, added, removed, c->user_id };
                r = api_sql(c, SQL_SETTINGS_EVENTS, 5, p, NULL);
        }
        if (r >= 0) {
                const char *p[2] = { c->account_id, groups.buf };
                r = api_sql(c, SQL_SETTINGS_SAVE, 2, p, NULL);
        }
        cp_strbuf_release(&groups);
        if (r < 0)
                return r;
        api_changed(c);
        return get_settings(c);
}

const api_route api_dns_routes[] = {
        { "GET", "/api/dns/nameservers", API_MOD_NAMESERVERS, API_READ, list_nsgs },
        { "POST", "/api/dns/nameservers", API_MOD_NAMESERVERS, API_CREATE, create_nsg },
        { "GET", "/api/dns/nameservers/{nsgroupId}", API_MOD_NAMESERVERS, API_READ, get_nsg },
        { "PUT", "/api/dns/nameservers/{nsgroupId}", API_MOD_NAMESERVERS, API_UPDATE, update_nsg },
        { "DELETE", "/api/dns/nameservers/{nsgroupId}", API_MOD_NAMESERVERS, API_DELETE, delete_nsg },
        { "GET", "/api/dns/settings", API_MOD_DNS, API_READ, get_settings },
        { "PUT", "/api/dns/settings", API_MOD_DNS, API_UPDATE, update_settings },
        { NULL },
};
