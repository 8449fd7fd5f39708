/*
 * /api/dns/zones and /api/dns/zones/{zoneId}/records: NetBird's custom DNS
 * zones and their records (openapi Zone, ZoneRequest, DNSRecord,
 * DNSRecordRequest, DNSRecordType), with the checks, texts and status
 * codes of NetBird's zones module (management/internals/modules/zones).
 *
 * Storage: dns_zones (distribution_groups a text[] without foreign keys:
 * NetBird lets a group used by a zone be deleted, the zone keeps the id)
 * and dns_records (cascading with their zone). Domains, record names and
 * contents are stored as sent; NetBird compares them as sent too.
 *
 * Maps: a zone reaches the peers of its distribution groups only once it
 * is enabled and holds records (common/netmap/netmap-zones.c), so
 * creating a zone changes no map and does not bump the serial, as in
 * NetBird; every other write does.
 */
#include "api-activity.h"
#include "api-int.h"

#include <arpa/inet.h>

#define MAX_ZONE_NAME 255       /* zones.Zone.Validate, in bytes as Go's len */

#define REC_JSON(t)                                                                                          \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'type', " t ".type, 'content', " t ".content,"  \
        " 'ttl', " t ".ttl)"

#define ZONE_JSON(t)                                                                                         \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'domain', " t ".domain, 'enabled', " t        \
        ".enabled, 'enable_search_domain', " t ".enable_search_domain, 'distribution_groups', " t             \
        ".distribution_groups, 'records', COALESCE((SELECT json_agg(" REC_JSON("r") " ORDER BY r.id)"         \
        " FROM dns_records r WHERE r.account_id = " t ".account_id AND r.zone_id = " t ".id), '[]'))"

static const char SQL_ZONES[] =
        "SELECT COALESCE(json_agg(" ZONE_JSON("z") " ORDER BY z.id), '[]') FROM dns_zones z WHERE z.account_id = $1";
static const char SQL_ZONE_JSON[] = "SELECT " ZONE_JSON("z") " FROM dns_zones z WHERE z.account_id = $1 AND z.id = $2";
static const char SQL_ZONE[] = "SELECT name, domain FROM dns_zones WHERE account_id = $1 AND id = $2";
static const char SQL_DOMAIN_TAKEN[] = "SELECT 1 FROM dns_zones WHERE account_id = $1 AND domain = $2";
static const char SQL_ACCOUNT_DOMAIN[] = "SELECT settings_dns_domain FROM accounts WHERE id = $1";
static const char SQL_ZONE_INSERT[] =
        "INSERT INTO dns_zones (id, account_id, name, domain, enabled, enable_search_domain, distribution_groups)"
        " VALUES ($1, $2, $3, $4, $5::boolean, $6::boolean, $7::text[])";
static const char SQL_ZONE_UPDATE[] =
        "UPDATE dns_zones SET name = $3, enabled = $4::boolean, enable_search_domain = $5::boolean,"
        " distribution_groups = $6::text[] WHERE id = $1 AND account_id = $2";
static const char SQL_ZONE_DELETE[] = "DELETE FROM dns_zones WHERE account_id = $1 AND id = $2";

static const char SQL_RECORDS[] =
        "SELECT COALESCE(json_agg(" REC_JSON("r") " ORDER BY r.id), '[]') FROM dns_records r"
        " WHERE r.account_id = $1 AND r.zone_id = $2";
static const char SQL_RECORD_JSON[] =
        "SELECT " REC_JSON("r") " FROM dns_records r WHERE r.account_id = $1 AND r.zone_id = $2 AND r.id = $3";
static const char SQL_RECORD[] =
        "SELECT id, name, type, content, ttl FROM dns_records WHERE account_id = $1 AND zone_id = $2 AND id = $3";
/* Every record of a zone, in id order (the events of a zone delete). */
static const char SQL_ZONE_RECORDS[] =
        "SELECT id, name, type, content, ttl FROM dns_records WHERE account_id = $1 AND zone_id = $2 ORDER BY id";
/* The other records of a zone with the same name. */
static const char SQL_SAME_NAME[] =
        "SELECT type, content FROM dns_records WHERE account_id = $1 AND zone_id = $2 AND name = $3 AND id <> $4"
        " ORDER BY id";
static const char SQL_RECORD_INSERT[] =
        "INSERT INTO dns_records (id, zone_id, account_id, name, type, content, ttl)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::integer)";
static const char SQL_RECORD_UPDATE[] =
        "UPDATE dns_records SET name = $4, type = $5, content = $6, ttl = $7::integer"
        " WHERE id = $1 AND zone_id = $2 AND account_id = $3";
static const char SQL_RECORD_DELETE[] = "DELETE FROM dns_records WHERE account_id = $1 AND zone_id = $2 AND id = $3";

/* NetBird's domain.IsValidDomainNoWildcard: the domain syntax (checked on
 * the lower-cased text; only ASCII can match) without a "*." in front. */
static bool domain_ok(const char *s, bool wildcard) {
        if (!*s || (!wildcard && strncmp(s, "*.", 2) == 0))
                return false;
        for (const char *p = s; *p; p++)
                if ((unsigned char) *p >= 0x80)
                        return false;
        return api_domain_valid(s);
}

static const char *tf(bool v) {
        return v ? "t" : "f";
}

/* ---- zones ------------------------------------------------------------------------------------------ */

typedef struct zone_req {
        const char *name, *domain;
        bool enabled, search;
        cp_strbuf groups;       /* a PostgreSQL array literal */
        size_t n_groups;
} zone_req;

/* Reads every field first (a wrong JSON type is 400), then NetBird's
 * Zone.Validate (422). enabled defaults to true. */
static int parse_zone(api_ctx *c, zone_req *q) {
        json_t *body = api_body(c);

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 || api_field_str(c, body, "domain", &q->domain) < 0 ||
            api_field_bool(c, body, "enabled", &q->enabled) < 0 ||
            api_field_bool(c, body, "enable_search_domain", &q->search) < 0 ||
            api_field_strarr(c, body, "distribution_groups", &q->groups, &q->n_groups) < 0)
                return API_FAIL;
        if (!*q->name)
                return api_error(c, 422, "zone name is required");
        if (strlen(q->name) > MAX_ZONE_NAME)
                return api_error(c, 422, "zone name exceeds maximum length of %d characters", MAX_ZONE_NAME);
        if (!domain_ok(q->domain, false))
                return api_error(c, 422, "invalid zone domain format");
        if (q->n_groups == 0)
                return api_error(c, 422, "at least one distribution group is required");
        return 0;
}

/* Every distribution group must be a group of the account; NetBird
 * answers the store's not-found text as an invalid argument. */
static int check_groups(api_ctx *c, const zone_req *q) {
        char bad[256];
        int r = api_find_bad_group(c, q->groups.buf, false, bad, sizeof bad, NULL);

        if (r <= 0)
                return r;
        return api_error(c, 422, "group: %s not found", bad);
}

/* The zone's name and domain into *ret (row 0), or 404 with prefix. */
static int find_zone(api_ctx *c, const char *id, const char *prefix, cp_store_rows **ret) {
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_ZONE, 2, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) == 0)
                return api_error(c, 404, "%szone: %s not found", prefix, id);
        return 0;
}

static int reply_zone(api_ctx *c, const char *id) {
        const char *p[2] = { c->account_id, id };
        bool found;
        int r = api_sql_reply(c, 200, SQL_ZONE_JSON, 2, p, &found);

        if (r == 0 && !found)
                return api_internal(c, "zone vanished", NULL);
        return r;
}

static int list_zones(api_ctx *c) {
        return api_reply_list(c, SQL_ZONES);
}

static int get_zone(api_ctx *c) {
        return api_reply_one(c, SQL_ZONE_JSON, c->param[0], "zone");
}

/* NetBird refuses a zone on the peers' own DNS domain: the server's and
 * the account's. */
static int check_domain(api_ctx *c, const char *domain) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, domain };
        const char *dd = c->api->dns_domain;
        int r;

        if (dd && *dd && strcmp(dd, domain) == 0)
                return api_error(c, 422, "zone domain %s conflicts with peer DNS domain", domain);
        r = api_sql(c, SQL_ACCOUNT_DOMAIN, 1, p, &rows);
        if (r < 0)
                return r;
        const char *ad = cp_store_rows_count(rows) ? cp_store_rows_get(rows, 0, 0) : NULL;
        if (ad && *ad && strcmp(ad, domain) == 0)
                return api_error(c, 422, "zone domain %s conflicts with peer DNS domain", domain);
        rows = cp_store_rows_free(rows);
        r = api_sql(c, SQL_DOMAIN_TAKEN, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows))
                return api_error(c, 409, "zone with domain %s already exists", domain);
        return 0;
}

int api_zones_check_dns_domain(api_ctx *c, const char *old_domain, const char *new_domain) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, new_domain };
        int r;

        if (!new_domain || !*new_domain || (old_domain && strcmp(old_domain, new_domain) == 0))
                return 0;
        r = api_sql(c, SQL_DOMAIN_TAKEN, 2, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows))
                return api_error(c, 422, "peer DNS domain %s conflicts with existing custom DNS zone", new_domain);
        return 0;
}

static int zone_event(api_ctx *c, int activity, const char *id, const char *name, const char *domain) {
        return api_event_kv(c, activity, id, "name", name, "domain", domain, NULL);
}

static int save_zone(api_ctx *c, bool existing) {
        _cleanup_rows_ cp_store_rows *cur = NULL;
        char newid[CP_ID_LEN + 1];
        const char *id = c->param[0];
        zone_req q = { .name = "", .domain = "", .enabled = true };
        int r;

        cp_strbuf_init(&q.groups);
        cp_strbuf_adds(&q.groups, "{}");
        r = parse_zone(c, &q);
        if (r == 0 && existing) {
                r = find_zone(c, id, "failed to get zone: ", &cur);
                if (r == 0 && strcmp(cp_store_rows_get(cur, 0, 1), q.domain) != 0)
                        r = api_error(c, 422, "zone domain cannot be updated");
        } else if (r == 0) {
                cp_id_new(newid);
                id = newid;
                r = check_domain(c, q.domain);
        }
        if (r == 0)
                r = check_groups(c, &q);
        if (r == 0 && existing) {
                const char *p[6] = { id, c->account_id, q.name, tf(q.enabled), tf(q.search), q.groups.buf };
                r = api_sql(c, SQL_ZONE_UPDATE, 6, p, NULL);
        } else if (r == 0) {
                const char *p[7] = { id, c->account_id, q.name, q.domain, tf(q.enabled), tf(q.search), q.groups.buf };
                r = api_sql(c, SQL_ZONE_INSERT, 7, p, NULL);
        }
        if (r == 0)
                r = zone_event(c, existing ? API_ACT_DNS_ZONE_UPDATED : API_ACT_DNS_ZONE_CREATED, id, q.name,
                               q.domain);
        cp_strbuf_release(&q.groups);
        if (r < 0)
                return r;
        if (existing)
                api_changed(c);
        return reply_zone(c, id);
}

static int create_zone(api_ctx *c) {
        return save_zone(c, false);
}

static int update_zone(api_ctx *c) {
        return save_zone(c, true);
}

/* NetBird's record event meta: name, type, content, ttl (a number),
 * zone_id, zone_name. */
static int record_event(api_ctx *c, int activity, const char *id, const char *name, const char *type,
                        const char *content, int64_t ttl, const char *zone_id, const char *zone_name) {
        json_t *m = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "name", name, "type", type, "content", content,
                              "ttl", (json_int_t) ttl, "zone_id", zone_id, "zone_name", zone_name);
        if (!m)
                return api_internal(c, "record event meta", NULL);
        char *meta = json_dumps(m, JSON_COMPACT);
        json_decref(m);
        int r = api_event(c, activity, id, meta);
        free(meta);
        return r;
}

/* The zone's records go with it, each with its own event first. */
static int delete_zone(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *zone = NULL, *recs = NULL;
        const char *id = c->param[0];
        const char *p[2] = { c->account_id, id };
        int r;

        r = find_zone(c, id, "failed to get zone: ", &zone);
        if (r == 0)
                r = api_sql(c, SQL_ZONE_RECORDS, 2, p, &recs);
        for (int i = 0; r == 0 && i < cp_store_rows_count(recs); i++)
                r = record_event(c, API_ACT_DNS_RECORD_DELETED, cp_store_rows_get(recs, i, 0),
                                 cp_store_rows_get(recs, i, 1), cp_store_rows_get(recs, i, 2),
                                 cp_store_rows_get(recs, i, 3), strtoll(cp_store_rows_get(recs, i, 4), NULL, 10),
                                 id, cp_store_rows_get(zone, 0, 0));
        if (r == 0)
                r = api_sql(c, SQL_ZONE_DELETE, 2, p, NULL);
        if (r == 0)
                r = zone_event(c, API_ACT_DNS_ZONE_DELETED, id, cp_store_rows_get(zone, 0, 0),
                               cp_store_rows_get(zone, 0, 1));
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

/* ---- records ---------------------------------------------------------------------------------------- */

typedef struct record_req {
        const char *name, *type, *content;
        int64_t ttl;
} record_req;

static bool ip_of_family(const char *s, bool v4) {
        unsigned char a[16];
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

        if (inet_pton(AF_INET, s, a) == 1)
                return v4;
        if (inet_pton(AF_INET6, s, a) != 1)
                return false;
        /* Go's net.IP.To4 also takes an IPv4-mapped IPv6 address as IPv4. */
        return (memcmp(a, mapped, sizeof mapped) == 0) == v4;
}

/* The body, then NetBird's Record.Validate in its order. */
static int parse_record(api_ctx *c, record_req *q) {
        json_t *body = api_body(c);

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 || api_field_str(c, body, "type", &q->type) < 0 ||
            api_field_str(c, body, "content", &q->content) < 0 ||
            api_field_int(c, body, "ttl", INT64_MIN, INT64_MAX, &q->ttl) < 0)
                return API_FAIL;
        if (!*q->name)
                return api_error(c, 422, "record name is required");
        if (!domain_ok(q->name, true))
                return api_error(c, 422, "invalid record name format");
        if (!*q->type)
                return api_error(c, 422, "record type is required");
        if (strcmp(q->type, "A") == 0 || strcmp(q->type, "AAAA") == 0) {
                bool v4 = q->type[1] == 0;
                if (!*q->content)
                        return api_error(c, 422, "%s record is required", q->type);
                if (!ip_of_family(q->content, v4))
                        return api_error(c, 422, "%s record must be a valid %s address", q->type, v4 ? "IPv4" : "IPv6");
        } else if (strcmp(q->type, "CNAME") == 0) {
                if (!domain_ok(q->content, false))
                        return api_error(c, 422, "invalid CNAME target format");
        } else
                return api_error(c, 422, "invalid record type, must be A, AAAA, or CNAME");
        if (q->ttl < 0)
                return api_error(c, 422, "TTL cannot be negative");
        /* NetBird's column is Go's int; ours an integer. */
        if (q->ttl > INT32_MAX)
                return api_error(c, 422, "TTL must be at most %d", INT32_MAX);
        return 0;
}

/* NetBird's validateRecordConflicts: the name lies in the zone; no other
 * record of the name with the same type and content; a CNAME shares its
 * name with nothing. */
static int check_conflicts(api_ctx *c, const char *zone_id, const char *domain, const char *rec_id,
                           const record_req *q) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        size_t nl = strlen(q->name), dl = strlen(domain);
        bool inside = strcmp(q->name, domain) == 0 ||
                      (nl > dl + 1 && q->name[nl - dl - 1] == '.' && strcmp(q->name + nl - dl, domain) == 0);
        const char *p[4] = { c->account_id, zone_id, q->name, rec_id };
        int r;

        if (!inside)
                return api_error(c, 422, "record name does not belong to zone");
        r = api_sql(c, SQL_SAME_NAME, 4, p, &rows);
        for (int i = 0; r == 0 && i < cp_store_rows_count(rows); i++) {
                const char *type = cp_store_rows_get(rows, i, 0);
                if (strcmp(type, q->type) == 0 && strcmp(cp_store_rows_get(rows, i, 1), q->content) == 0)
                        return api_error(c, 409, "identical record already exists");
                if (strcmp(type, "CNAME") == 0 || strcmp(q->type, "CNAME") == 0)
                        return api_error(c, 422, "An A, AAAA, or CNAME record with name %s already exists", q->name);
        }
        return r;
}

static int list_records(api_ctx *c) {
        const char *p[2] = { c->account_id, c->param[0] };
        bool found;
        int r = api_sql_reply(c, 200, SQL_RECORDS, 2, p, &found);

        if (r == 0 && !found)
                return api_reply_text(c, 200, "[]", 2);
        return r;
}

static int reply_record(api_ctx *c, const char *zone_id, const char *id, bool created) {
        const char *p[3] = { c->account_id, zone_id, id };
        bool found;
        int r = api_sql_reply(c, 200, SQL_RECORD_JSON, 3, p, &found);

        if (r == 0 && !found)
                return created ? api_internal(c, "record vanished", NULL)
                               : api_error(c, 404, "dns record: %s not found", id);
        return r;
}

static int get_record(api_ctx *c) {
        return reply_record(c, c->param[0], c->param[1], false);
}

/* The record into *ret (row 0), or 404 as NetBird words it. */
static int find_record(api_ctx *c, const char *zone_id, const char *id, cp_store_rows **ret) {
        const char *p[3] = { c->account_id, zone_id, id };
        int r = api_sql(c, SQL_RECORD, 3, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) == 0)
                return api_error(c, 404, "failed to get record: dns record: %s not found", id);
        return 0;
}

static int save_record(api_ctx *c, bool existing) {
        _cleanup_rows_ cp_store_rows *zone = NULL, *cur = NULL;
        const char *zone_id = c->param[0];
        char newid[CP_ID_LEN + 1], ttl[24];
        const char *id = existing ? c->param[1] : newid;
        record_req q = { .name = "", .type = "", .content = "" };
        int r;

        if (!existing)
                cp_id_new(newid);
        r = parse_record(c, &q);
        if (r == 0)
                r = find_zone(c, zone_id, "failed to get zone: ", &zone);
        if (r == 0 && existing)
                r = find_record(c, zone_id, id, &cur);
        /* An update that keeps name, type and content is not checked again. */
        if (r == 0 && (!existing || strcmp(cp_store_rows_get(cur, 0, 1), q.name) != 0 ||
                       strcmp(cp_store_rows_get(cur, 0, 2), q.type) != 0 ||
                       strcmp(cp_store_rows_get(cur, 0, 3), q.content) != 0))
                r = check_conflicts(c, zone_id, cp_store_rows_get(zone, 0, 1), id, &q);
        if (r == 0) {
                (void) snprintf(ttl, sizeof ttl, "%" PRId64, q.ttl);
                const char *p[7] = { id, zone_id, c->account_id, q.name, q.type, q.content, ttl };
                r = api_sql(c, existing ? SQL_RECORD_UPDATE : SQL_RECORD_INSERT, 7, p, NULL);
        }
        if (r == 0)
                r = record_event(c, existing ? API_ACT_DNS_RECORD_UPDATED : API_ACT_DNS_RECORD_CREATED, id, q.name,
                                 q.type, q.content, q.ttl, zone_id, cp_store_rows_get(zone, 0, 0));
        if (r < 0)
                return r;
        api_changed(c);
        return reply_record(c, zone_id, id, true);
}

static int create_record(api_ctx *c) {
        return save_record(c, false);
}

static int update_record(api_ctx *c) {
        return save_record(c, true);
}

static int delete_record(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *zone = NULL, *cur = NULL;
        const char *zone_id = c->param[0], *id = c->param[1];
        const char *p[3] = { c->account_id, zone_id, id };
        int r;

        r = find_zone(c, zone_id, "failed to get zone: ", &zone);
        if (r == 0)
                r = find_record(c, zone_id, id, &cur);
        if (r == 0)
                r = api_sql(c, SQL_RECORD_DELETE, 3, p, NULL);
        if (r == 0)
                r = record_event(c, API_ACT_DNS_RECORD_DELETED, id, cp_store_rows_get(cur, 0, 1),
                                 cp_store_rows_get(cur, 0, 2), cp_store_rows_get(cur, 0, 3),
                                 strtoll(cp_store_rows_get(cur, 0, 4), NULL, 10), zone_id,
                                 cp_store_rows_get(zone, 0, 0));
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_zones_routes[] = {
        { "GET", "/api/dns/zones", API_MOD_DNS, API_READ, list_zones },
        { "POST", "/api/dns/zones", API_MOD_DNS, API_CREATE, create_zone },
        { "GET", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_READ, get_zone },
        { "PUT", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_UPDATE, update_zone },
        { "DELETE", "/api/dns/zones/{zoneId}", API_MOD_DNS, API_DELETE, delete_zone },
        { "GET", "/api/dns/zones/{zoneId}/records", API_MOD_DNS, API_READ, list_records },
        { "POST", "/api/dns/zones/{zoneId}/records", API_MOD_DNS, API_CREATE, create_record },
        { "GET", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_READ, get_record },
        { "PUT", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_UPDATE, update_record },
        { "DELETE", "/api/dns/zones/{zoneId}/records/{recordId}", API_MOD_DNS, API_DELETE, delete_record },
        { NULL },
};
