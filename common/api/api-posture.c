/*
 * /api/posture-checks: list, get, create, update, delete (openapi
 * PostureCheck, PostureCheckUpdate, Checks and the five check schemas).
 *
 * Storage: posture_checks; the checks column holds the API's "checks"
 * object as this server answers it (known members only, ranges as Go's
 * netip prints them, the three process paths always present, an empty
 * city left out), which the network map reads back (cp/posture.h).
 *
 * NetBird's order: the body is decoded (400), network ranges parsed (422
 * "invalid network prefix"), then Validate() (name, at least one check,
 * each check's own rules), then the id's existence (404), then the name
 * (create only in NetBird; here on update too, the column is unique).
 * Create does not touch maps (nothing references a new check); update and
 * delete do. Delete is refused while a policy names the check.
 * Permission module: policies, as NetBird's.
 */
#include "api-activity.h"
#include "api-int.h"

#include "cp/posture.h"

#include <ctype.h>

#define PC_JSON(t)                                                                                  \
        "json_build_object('id', " t ".id, 'name', " t ".name, 'description', " t ".description,"   \
        " 'checks', " t ".checks)"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" PC_JSON("p") " ORDER BY p.id), '[]') FROM posture_checks p"
        " WHERE p.account_id = $1";
static const char SQL_GET[] = "SELECT " PC_JSON("p") " FROM posture_checks p WHERE p.account_id = $1 AND p.id = $2";
static const char SQL_FIND[] = "SELECT name FROM posture_checks WHERE account_id = $1 AND id = $2 FOR UPDATE";
static const char SQL_NAME_TAKEN[] = "SELECT 1 FROM posture_checks WHERE account_id = $1 AND name = $2 AND id <> $3";
static const char SQL_INSERT[] =
        "INSERT INTO posture_checks (id, account_id, name, description, checks) VALUES ($1, $2, $3, $4, $5::jsonb)";
static const char SQL_UPDATE[] =
        "UPDATE posture_checks SET name = $3, description = $4, checks = $5::jsonb WHERE id = $1 AND account_id = $2";
static const char SQL_DELETE[] = "DELETE FROM posture_checks WHERE account_id = $1 AND id = $2";
static const char SQL_LINKED[] =
        "SELECT name FROM policies WHERE account_id = $1 AND $2 = ANY (source_posture_checks) ORDER BY name LIMIT 1";

typedef struct pc_req {
        const char *name, *description;
        json_t *checks;         /* normalised, owned */
} pc_req;

/* ---- decoding: wrong JSON types are 400, as Go's decoder ---------------------------------- */

static int get_obj(api_ctx *c, json_t *o, const char *key, json_t **ret) {
        *ret = NULL;
        return api_field_object(c, o, key, ret);
}

/* {"<key>": "<string>"} copied into out (present: "" when absent). */
static int copy_str(api_ctx *c, json_t *in, const char *key, json_t *out) {
        const char *s = "";
        if (api_field_str(c, in, key, &s) < 0)
                return API_FAIL;
        json_object_set_new(out, key, json_string(s));
        return 0;
}

static int min_version(api_ctx *c, json_t *in, const char *key, const char *field, json_t *out) {
        json_t *o, *n;
        int r = get_obj(c, in, key, &o);

        if (r <= 0)
                return r;
        n = json_object();
        json_object_set_new(out, key, n);
        return copy_str(c, o, field, n);
}

static int decode_os(api_ctx *c, json_t *in, json_t *out) {
        json_t *o, *n;
        int r = get_obj(c, in, "os_version_check", &o);

        if (r <= 0)
                return r;
        n = json_object();
        json_object_set_new(out, "os_version_check", n);
        if (min_version(c, o, "android", "min_version", n) < 0 || min_version(c, o, "darwin", "min_version", n) < 0 ||
            min_version(c, o, "ios", "min_version", n) < 0 ||
            min_version(c, o, "linux", "min_kernel_version", n) < 0 ||
            min_version(c, o, "windows", "min_kernel_version", n) < 0)
                return API_FAIL;
        return 0;
}

static int decode_geo(api_ctx *c, json_t *in, json_t *out) {
        json_t *o, *locs = NULL, *l, *n, *arr;
        const char *action = "";
        size_t i;
        int r = get_obj(c, in, "geo_location_check", &o);

        if (r <= 0)
                return r;
        if (api_field_array(c, o, "locations", &locs) < 0 || api_field_str(c, o, "action", &action) < 0)
                return API_FAIL;
        arr = json_array();
        n = json_pack("{s:o, s:s}", "locations", arr, "action", action);
        json_object_set_new(out, "geo_location_check", n);
        json_array_foreach(locs, i, l) {
                const char *cc = "", *city = "";
                if (!json_is_object(l))
                        return api_bad_json(c);
                if (api_field_str(c, l, "country_code", &cc) < 0 || api_field_str(c, l, "city_name", &city) < 0)
                        return API_FAIL;
                json_t *e = json_pack("{s:s}", "country_code", cc);
                if (*city)
                        json_object_set_new(e, "city_name", json_string(city));
                json_array_append_new(arr, e);
        }
        return 0;
}

/* A prefix as Go's netip.ParsePrefix takes it and Prefix.String prints
 * it (the address not masked); -1 when it does not parse. */
static int canonical_prefix(const char *s, char out[80]) {
        const char *slash = strchr(s, '/');
        char addr[64], canon[64];
        size_t n;

        if (!slash || (n = (size_t) (slash - s)) >= sizeof addr)
                return -1;
        memcpy(addr, s, n);
        addr[n] = '\0';
        if (api_ip_canonical(addr, canon) < 0)
                return -1;
        const char *b = slash + 1;
        size_t nb = strlen(b);
        if (nb == 0 || nb > 3 || (nb > 1 && b[0] == '0'))
                return -1;
        for (size_t i = 0; i < nb; i++)
                if (!isdigit((unsigned char) b[i]))
                        return -1;
        int bits = atoi(b);
        if (bits > (strchr(canon, ':') ? 128 : 32))
                return -1;
        snprintf(out, 80, "%s/%d", canon, bits);
        return 0;
}

static int decode_ranges(api_ctx *c, json_t *in, json_t *out) {
        json_t *o, *ranges = NULL, *e, *arr;
        const char *action = "";
        size_t i;
        int r = get_obj(c, in, "peer_network_range_check", &o);

        if (r <= 0)
                return r;
        if (api_field_array(c, o, "ranges", &ranges) < 0 || api_field_str(c, o, "action", &action) < 0)
                return API_FAIL;
        json_array_foreach(ranges, i, e)
                if (!json_is_string(e))
                        return api_bad_json(c);
        arr = json_array();
        json_object_set_new(out, "peer_network_range_check", json_pack("{s:o, s:s}", "ranges", arr, "action", action));
        json_array_foreach(ranges, i, e) {
                char p[80];
                if (canonical_prefix(json_string_value(e), p) < 0)
                        return 1;       /* the caller answers "invalid network prefix" after decoding */
                json_array_append_new(arr, json_string(p));
        }
        return 0;
}

static int decode_process(api_ctx *c, json_t *in, json_t *out) {
        json_t *o, *procs = NULL, *p, *arr;
        size_t i;
        int r = get_obj(c, in, "process_check", &o);

        if (r <= 0)
                return r;
        if (api_field_array(c, o, "processes", &procs) < 0)
                return API_FAIL;
        arr = json_array();
        json_object_set_new(out, "process_check", json_pack("{s:o}", "processes", arr));
        json_array_foreach(procs, i, p) {
                if (!json_is_object(p))
                        return api_bad_json(c);
                json_t *n = json_object();
                json_array_append_new(arr, n);
                if (copy_str(c, p, "linux_path", n) < 0 || copy_str(c, p, "mac_path", n) < 0 ||
                    copy_str(c, p, "windows_path", n) < 0)
                        return API_FAIL;
        }
        return 0;
}

static int decode(api_ctx *c, pc_req *q) {
        json_t *body = api_body(c), *in = NULL;
        int bad_prefix;

        *q = (pc_req) { .name = "", .description = "", .checks = json_object() };
        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &q->name) < 0 ||
            api_field_str(c, body, "description", &q->description) < 0 ||
            get_obj(c, body, "checks", &in) < 0)
                return API_FAIL;
        if (!in)
                return 0;
        if (min_version(c, in, "nb_version_check", "min_version", q->checks) < 0 || decode_os(c, in, q->checks) < 0 ||
            decode_geo(c, in, q->checks) < 0 || (bad_prefix = decode_ranges(c, in, q->checks)) < 0 ||
            decode_process(c, in, q->checks) < 0)
                return API_FAIL;
        if (bad_prefix)
                return api_error(c, 422, "invalid network prefix");
        return 0;
}

/* ---- Validate() in NetBird's order and words --------------------------------------------- */

static const char *sget(json_t *o, const char *k) {
        const char *s = json_string_value(json_object_get(o, k));
        return s ? s : "";
}

static bool is_action(const char *a) {
        return strcmp(a, "allow") == 0 || strcmp(a, "deny") == 0;
}

static int validate_os(api_ctx *c, json_t *os) {
        static const struct {
                const char *key, *field, *label;
        } oses[] = {
                { "android", "min_version", " android version" },
                { "ios", "min_version", " ios version" },
                { "darwin", "min_version", "  darwin version" },
                { "linux", "min_kernel_version", "  linux kernel version" },
                { "windows", "min_kernel_version", "  windows kernel version" },
        };
        if (json_object_size(os) == 0)
                return api_error(c, 422, "OSVersionCheck at least one OS version check is required");
        for (size_t i = 0; i < 5; i++) {
                json_t *o = json_object_get(os, oses[i].key);
                if (o && !cp_posture_version_valid(sget(o, oses[i].field)))
                        return api_error(c, 422, "OSVersionCheck%s: %s is not valid", oses[i].label,
                                    sget(o, oses[i].field));
        }
        return 0;
}

static int validate(api_ctx *c, const pc_req *q) {
        json_t *k;

        if (!*q->name)
                return api_error(c, 422, "posture checks name shouldn't be empty");
        if (json_object_size(q->checks) == 0)
                return api_error(c, 422, "posture checks shouldn't be empty");
        if ((k = json_object_get(q->checks, "nb_version_check"))) {
                const char *v = sget(k, "min_version");
                if (!*v)
                        return api_error(c, 422, "NBVersionCheck minimum version shouldn't be empty");
                if (!cp_posture_version_valid(v))
                        return api_error(c, 422, "NBVersionCheck version: %s is not valid", v);
        }
        if ((k = json_object_get(q->checks, "os_version_check")) && validate_os(c, k) < 0)
                return API_FAIL;
        if ((k = json_object_get(q->checks, "geo_location_check"))) {
                const char *a = sget(k, "action");
                json_t *l;
                size_t i;
                if (!*a)
                        return api_error(c, 422, "GeoLocationCheck action shouldn't be empty");
                if (!is_action(a))
                        return api_error(c, 422, "GeoLocationCheck action is not valid");
                if (json_array_size(json_object_get(k, "locations")) == 0)
                        return api_error(c, 422, "GeoLocationCheck locations shouldn't be empty");
                json_array_foreach(json_object_get(k, "locations"), i, l) {
                        const char *cc = sget(l, "country_code");
                        if (!*cc)
                                return api_error(c, 422, "GeoLocationCheck country code shouldn't be empty");
                        if (strlen(cc) != 2 || !isalpha((unsigned char) cc[0]) || !isalpha((unsigned char) cc[1]))
                                return api_error(c, 422,
                                            "GeoLocationCheck country code must be 2 letters (ISO 3166-1 alpha-2 format)");
                }
        }
        if ((k = json_object_get(q->checks, "peer_network_range_check"))) {
                const char *a = sget(k, "action");
                if (!*a)
                        return api_error(c, 422, "action for peer network range check shouldn't be empty");
                if (!is_action(a))
                        return api_error(c, 422, "PeerNetworkRangeCheck action is not valid");
                if (json_array_size(json_object_get(k, "ranges")) == 0)
                        return api_error(c, 422, "PeerNetworkRangeCheck network ranges shouldn't be empty");
        }
        if ((k = json_object_get(q->checks, "process_check"))) {
                json_t *p;
                size_t i;
                if (json_array_size(json_object_get(k, "processes")) == 0)
                        return api_error(c, 422, "ProcessCheck processes shouldn't be empty");
                json_array_foreach(json_object_get(k, "processes"), i, p)
                        if (!*sget(p, "linux_path") && !*sget(p, "mac_path") && !*sget(p, "windows_path"))
                                return api_error(c, 422, "ProcessCheck path shouldn't be empty");
        }
        return 0;
}

/* ---- handlers --------------------------------------------------------------------------------- */

static int find(api_ctx *c, const char *id, char **name) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[2] = { c->account_id, id };

        if (api_sql(c, SQL_FIND, 2, q, &rows) < 0)
                return API_FAIL;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "posture checks: %s not found", id);
        if (name)
                *name = cp_xstrdup(cp_store_rows_get(rows, 0, 0));
        return 0;
}

static int name_free(api_ctx *c, const char *id, const char *name) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *q[3] = { c->account_id, name, id };

        if (api_sql(c, SQL_NAME_TAKEN, 3, q, &rows) < 0)
                return API_FAIL;
        if (cp_store_rows_count(rows) > 0)
                return api_error(c, 422, "posture checks with name %s already exists", name);
        return 0;
}

static int list_checks(api_ctx *c) {
        return api_reply_list(c, SQL_LIST);
}

static int get_check(api_ctx *c) {
        return api_reply_one(c, SQL_GET, c->param[0], "posture checks");
}

static int save(api_ctx *c, const char *id, bool create) {
        pc_req q;
        char *checks = NULL;
        int r = decode(c, &q);

        if (r == 0)
                r = validate(c, &q);
        if (r == 0 && !create)
                r = find(c, id, NULL);
        if (r == 0)
                r = name_free(c, id, q.name);
        if (r == 0 && !(checks = json_dumps(q.checks, JSON_COMPACT | JSON_SORT_KEYS)))
                r = api_internal(c, "encoding posture checks", NULL);
        if (r == 0) {
                const char *p[5] = { id, c->account_id, q.name, q.description, checks };
                r = api_sql(c, create ? SQL_INSERT : SQL_UPDATE, 5, p, NULL);
        }
        if (r == 0)
                r = api_event_kv(c, create ? API_ACT_POSTURE_CHECK_CREATED : API_ACT_POSTURE_CHECK_UPDATED, id, "name",
                                 q.name, NULL);
        if (r == 0 && !create)
                api_changed(c);
        if (r == 0)
                r = api_reply_one(c, SQL_GET, id, "posture checks");
        free(checks);
        json_decref(q.checks);
        return r;
}

static int create_check(api_ctx *c) {
        char id[CP_ID_LEN + 1];

        cp_id_new(id);
        return save(c, id, true);
}

static int update_check(api_ctx *c) {
        return save(c, c->param[0], false);
}

static int delete_check(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0], *q[2] = { c->account_id, id };
        char *name = NULL;
        int r = find(c, id, &name);

        if (r == 0)
                r = api_sql(c, SQL_LINKED, 2, q, &rows);
        if (r == 0 && cp_store_rows_count(rows) > 0)
                r = api_error(c, 412, "posture checks have been linked to policy: %s", cp_store_rows_get(rows, 0, 0));
        if (r == 0)
                r = api_sql(c, SQL_DELETE, 2, q, NULL);
        if (r == 0)
                r = api_event_kv(c, API_ACT_POSTURE_CHECK_DELETED, id, "name", name, NULL);
        free(name);
        if (r < 0)
                return r;
        api_changed(c);
        return api_reply_empty_object(c);
}

const api_route api_posture_routes[] = {
        { "GET", "/api/posture-checks", API_MOD_POLICIES, API_READ, list_checks },
        { "POST", "/api/posture-checks", API_MOD_POLICIES, API_CREATE, create_check },
        { "GET", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_READ, get_check },
        { "PUT", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_UPDATE, update_check },
        { "DELETE", "/api/posture-checks/{postureCheckId}", API_MOD_POLICIES, API_DELETE, delete_check },
        { NULL },
};

/* ---- policies' source_posture_checks ---------------------------------------------------------- */

static const char SQL_EXISTS[] = "SELECT 1 FROM posture_checks WHERE account_id = $1 AND id = $2";
static const char SQL_SET_POLICY[] =
        "UPDATE policies SET source_posture_checks = $3::text[] WHERE account_id = $1 AND id = $2";

/* Ours: NetBird drops ids that are not the account's posture checks
 * without a word (getValidPostureCheckIDs), so a typo would leave a
 * policy unchecked; here it is refused. */
int api_posture_ids_check(api_ctx *c, const json_t *ids) {
        const json_t *e;
        size_t i;

        json_array_foreach(ids, i, e) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *q[2] = { c->account_id, json_string_value(e) };
                if (api_sql(c, SQL_EXISTS, 2, q, &rows) < 0)
                        return API_FAIL;
                if (cp_store_rows_count(rows) == 0)
                        return api_error(c, 422, "posture checks: %s not found", q[1]);
        }
        return 0;
}

int api_posture_ids_store(api_ctx *c, const char *policy_id, const json_t *ids) {
        cp_strbuf arr;
        const json_t *e;
        size_t i;
        int r;

        cp_strbuf_init(&arr);
        api_pgarray_begin(&arr);
        json_array_foreach(ids, i, e)
                api_pgarray_add(&arr, json_string_value(e));
        api_pgarray_end(&arr);
        const char *q[3] = { c->account_id, policy_id, arr.buf };
        r = api_sql(c, SQL_SET_POLICY, 3, q, NULL);
        cp_strbuf_release(&arr);
        return r;
}
