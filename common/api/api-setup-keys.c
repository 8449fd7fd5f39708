/*
 * /api/setup-keys: list, get, create, update (revoke, auto-groups),
 * delete (openapi SetupKey, SetupKeyClear, CreateSetupKeyRequest,
 * SetupKeyRequest).
 *
 * The plain key exists only while the POST runs: it is generated here,
 * stored as base64(SHA-256(UPPERCASE(key))) (what Login looks up) with
 * its masked form "ABCDE****", and sent back once in the POST response.
 *
 * Setup keys do not appear in network maps, so nothing here calls
 * api_changed(): no serial bump, no push (as in NetBird).
 */
#include "api-activity.h"
#include "api-int.h"
#include "cp/crypto.h"

#include <ctype.h>
#include <stdarg.h>

/* NetBird's rules (types.SetupKey): expired wins over revoked, which wins
 * over overused; a one-off key is limited to one use whatever its limit. */
#define KEY_EXPIRED(k) "(" k ".expires_at IS NOT NULL AND " k ".expires_at < CURRENT_TIMESTAMP)"
#define KEY_OVERUSED(k)                                                                                     \
        "((CASE WHEN " k ".type = 'one-off' THEN 1 ELSE " k ".usage_limit END) > 0"                       \
        " AND " k ".used_times >= (CASE WHEN " k ".type = 'one-off' THEN 1 ELSE " k ".usage_limit END))"

/* One key as NetBird's SetupKey; key is the SQL expression for "key"
 * (the masked form, or the plain key once after creation). */
#define KEY_JSON(k, key)                                                                                    \
        "json_build_object('allow_extra_dns_labels', " k ".allow_extra_dns_labels,"                         \
        " 'auto_groups', to_json(" k ".auto_groups), 'ephemeral', " k ".ephemeral,"                         \
        " 'expires', " API_TS_OR_ZERO_JSON(k ".expires_at") ", 'id', " k ".id, 'key', " key ","                         \
        " 'last_used', " API_TS_OR_ZERO_JSON(k ".last_used") ", 'name', " k ".name, 'revoked', " k ".revoked,"         \
        " 'state', CASE WHEN " KEY_EXPIRED(k) " THEN 'expired' WHEN " k ".revoked THEN 'revoked'"           \
        " WHEN " KEY_OVERUSED(k) " THEN 'overused' ELSE 'valid' END,"                                       \
        " 'type', " k ".type, 'updated_at', " API_TS_OR_ZERO_JSON(k ".updated_at") ","                                  \
        " 'usage_limit', " k ".usage_limit, 'used_times', " k ".used_times,"                                \
        " 'valid', NOT (" KEY_EXPIRED(k) " OR " k ".revoked OR " KEY_OVERUSED(k) "))"

static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" KEY_JSON("k", "k.key_secret") " ORDER BY k.created_at, k.id), '[]')"
        " FROM setup_keys k WHERE k.account_id = $1";
static const char SQL_GET[] =
        "SELECT " KEY_JSON("k", "k.key_secret") " FROM setup_keys k WHERE k.account_id = $1 AND k.id = $2";
/* The row, locked; auto_groups as a PostgreSQL array literal. */
static const char SQL_FIND[] =
        "SELECT name, type, key_secret, revoked, auto_groups::text FROM setup_keys"
        " WHERE account_id = $1 AND id = $2 FOR UPDATE";

/* The first of the requested auto-groups that NetBird refuses, in request
 * order: one that is not a group of the account, or the "All" group. */
/* $1 as an array without repeats, in first-seen order. */
#define DISTINCT_IDS(p)                                                                                     \
        "(SELECT COALESCE(array_agg(id ORDER BY o), '{}') FROM (SELECT id, min(o) AS o"                     \
        " FROM unnest(" p "::text[]) WITH ORDINALITY u(id, o) GROUP BY id) d)"

static const char SQL_INSERT[] =
        "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, expires_at, usage_limit,"
        " auto_groups, ephemeral, allow_extra_dns_labels)"
        " VALUES ($1, $2, $3, $4, $5, $6,"
        " CASE WHEN $7::bigint > 0 THEN CURRENT_TIMESTAMP + make_interval(secs => $7::bigint) END,"
        " $8::int, " DISTINCT_IDS("$9") ", $10::boolean, $11::boolean)";
static const char SQL_UPDATE[] =
        "UPDATE setup_keys SET auto_groups = " DISTINCT_IDS("$3") ", revoked = $4::boolean,"
        " updated_at = CURRENT_TIMESTAMP WHERE account_id = $1 AND id = $2";
static const char SQL_DELETE[] = "DELETE FROM setup_keys WHERE account_id = $1 AND id = $2";

/* The key's own event (created, revoked, deleted) with NetBird's meta:
 * name, type and the masked key. $4 the activity code. */
static const char SQL_KEY_EVENT[] =
        "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $4::int, $3, k.id, k.account_id,"
        " jsonb_build_object('name', k.name, 'type', k.type, 'key', k.key_secret)"
        " FROM setup_keys k WHERE k.account_id = $1 AND k.id = $2";

/* One GroupRemovedFromSetupKey per group in $4 (old) but not in $5 (new),
 * then one GroupAddedToSetupKey per group in $5 but not in $4, each in
 * list order, with NetBird's meta (group, group_id, setupkey). $6 the key
 * name; $7/$8 the removed/added activity codes. Groups that no longer
 * exist are passed over, as NetBird does. */
static const char SQL_GROUP_EVENTS[] =
        "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT ch.act, $3, $2, $1, jsonb_build_object('group', g.name, 'group_id', g.id, 'setupkey', $6::text)"
        " FROM (SELECT 1 AS s, o, id, $7::int AS act FROM unnest(" DISTINCT_IDS("$4") ") WITH ORDINALITY u(id, o)"
        "        WHERE NOT id = ANY ($5::text[])"
        "       UNION ALL SELECT 2, o, id, $8::int FROM unnest(" DISTINCT_IDS("$5") ") WITH ORDINALITY u(id, o)"
        "        WHERE NOT id = ANY ($4::text[])) ch"
        " JOIN groups g ON g.account_id = $1 AND g.id = ch.id ORDER BY ch.s, ch.o";


static int list_keys(api_ctx *c) {
        return api_reply_list(c, SQL_LIST);
}

static int reply_key(api_ctx *c, const char *id) {
        return api_reply_one(c, SQL_GET, id, "setup key");
}

static int get_key(api_ctx *c) {
        return reply_key(c, c->param[0]);
}

/* NetBird's auto-group check: every id a group of the account, none of
 * them "All"; 422 for the first that is not. */
static int check_auto_groups(api_ctx *c, const char *groups) {
        char bad[256];
        bool is_all = false;
        int r = api_find_bad_group(c, groups, true, bad, sizeof bad, &is_all);

        if (r <= 0)
                return r;
        if (!is_all)
                return api_error(c, 422, "invalid auto groups: group not found: %s", bad);
        return api_error(c, 422, "invalid auto groups: can't add 'All' group to the setup key");
}

static int key_event(api_ctx *c, int activity, const char *id) {
        char code[16];

        (void) snprintf(code, sizeof code, "%d", activity);
        const char *p[4] = { c->account_id, id, c->user_id, code };
        return api_sql(c, SQL_KEY_EVENT, 4, p, NULL);
}

static int group_events(api_ctx *c, const char *id, const char *name, const char *old_groups,
                        const char *new_groups) {
        char removed[16], added[16];

        (void) snprintf(removed, sizeof removed, "%d", API_ACT_GROUP_REMOVED_FROM_SETUP_KEY);
        (void) snprintf(added, sizeof added, "%d", API_ACT_GROUP_ADDED_TO_SETUP_KEY);
        const char *p[8] = { c->account_id, id, c->user_id, old_groups, new_groups, name, removed, added };
        return api_sql(c, SQL_GROUP_EVENTS, 8, p, NULL);
}

/* ---- create --------------------------------------------------------------------------- */

/* The largest expires_in whose nanoseconds still fit NetBird's Duration. */
#define MAX_EXPIRES_IN_S (INT64_MAX / 1000000000)

typedef struct key_req {
        const char *name;
        const char *type;
        int64_t expires_in;
        int64_t usage_limit;
        bool ephemeral;
        bool allow_extra_dns_labels;
        cp_strbuf groups;       /* PostgreSQL array literal */
} key_req;

/* The body's fields; a value of the wrong type is 400, as NetBird's
 * decoder answers, before any other check. Absent fields take Go's zero
 * values. */
static int parse_create(api_ctx *c, key_req *k) {
        json_t *body = api_body(c);

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &k->name) < 0 || api_field_str(c, body, "type", &k->type) < 0 ||
            api_field_int(c, body, "expires_in", INT64_MIN, INT64_MAX, &k->expires_in) < 0 ||
            api_field_int(c, body, "usage_limit", INT64_MIN, INT64_MAX, &k->usage_limit) < 0 ||
            api_field_bool(c, body, "ephemeral", &k->ephemeral) < 0 ||
            api_field_bool(c, body, "allow_extra_dns_labels", &k->allow_extra_dns_labels) < 0)
                return API_FAIL;
        int r = api_field_strarr(c, body, "auto_groups", &k->groups, NULL);
        if (r < 0)
                return API_FAIL;
        if (r == 0)
                cp_strbuf_adds(&k->groups, "{}");
        return 0;
}

/* NetBird's checks in its order, then ours: a usage limit must fit the
 * column and cannot be negative, an expiry must fit a Go Duration. */
static int validate_create(api_ctx *c, key_req *k) {
        if (!k->name || !*k->name)
                return api_error(c, 422, "setup key name shouldn't be empty");
        if (!k->type || (strcmp(k->type, "reusable") != 0 && strcmp(k->type, "one-off") != 0))
                return api_error(c, 422, "unknown setup key type %s", k->type ? k->type : "");
        bool one_off = strcmp(k->type, "one-off") == 0;
        if (one_off && k->usage_limit > 1)
                return api_error(c, 422, "usage_limit %" PRId64 " is not valid for a one-off setup key, which can be"
                            " used once; use type reusable for a key that can be used more than once",
                            k->usage_limit);
        if (k->expires_in < 0)
                return api_error(c, 422, "expiresIn can not be in the past");
        if (k->expires_in > MAX_EXPIRES_IN_S)
                return api_error(c, 422, "expires_in must be between 0 and %" PRId64, (int64_t) MAX_EXPIRES_IN_S);
        if (k->usage_limit < 0 || k->usage_limit > INT32_MAX)
                return api_error(c, 422, "usage_limit must be between 0 and %d", INT32_MAX);
        /* A one-off key is limited to a single use whatever was asked. */
        if (one_off)
                k->usage_limit = 1;
        return check_auto_groups(c, k->groups.buf);
}

static int insert_key(api_ctx *c, const key_req *k, const char *id, const char *plain) {
        char hash[CP_SHA256_B64_LEN], masked[10], expires[24], limit[24];

        if (cp_crypto_setup_key_hash(plain, hash) < 0)
                return api_internal(c, "hashing the setup key", NULL);
        cp_crypto_setup_key_mask(plain, masked);
        (void) snprintf(expires, sizeof expires, "%" PRId64, k->expires_in);
        (void) snprintf(limit, sizeof limit, "%" PRId64, k->usage_limit);
        const char *p[11] = { id,      c->account_id, hash,          masked,
                              k->name, k->type,       expires,       limit,
                              k->groups.buf, k->ephemeral ? "true" : "false",
                              k->allow_extra_dns_labels ? "true" : "false" };
        return api_sql(c, SQL_INSERT, 11, p, NULL);
}

/* The only response that carries the plain key: the row's JSON from the
 * database (masked key), the plain key put in here. The plain key never
 * goes to PostgreSQL, not even as a parameter: a server with statement
 * logging would write it to its log. The JSON string made here is
 * wiped; the serialised response body (the REST layer's buffer, sent to
 * the client) is freed without a wipe, as every response is. */
static int reply_created(api_ctx *c, const char *id, const char *plain) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        json_t *obj, *key;
        int r = api_sql(c, SQL_GET, 2, p, &rows);

        if (r < 0)
                return r;
        const char *text = cp_store_rows_get(rows, 0, 0);
        if (!text)
                return api_internal(c, "the new setup key is gone", NULL);
        obj = json_loads(text, 0, NULL);
        key = json_string(plain);
        if (!obj || !key || json_object_set(obj, "key", key) < 0)
                r = api_internal(c, "encoding the new setup key", NULL);
        else
                r = api_reply_json(c, 200, obj);
        if (key)
                cp_explicit_bzero((char *) json_string_value(key), json_string_length(key));
        json_decref(key);
        json_decref(obj);
        return r;
}

static int create_key(api_ctx *c) {
        key_req k = { 0 };
        char id[CP_ID_LEN + 1], plain[CP_SETUP_KEY_LEN + 1];
        int r;

        cp_strbuf_init(&k.groups);
        r = parse_create(c, &k);
        if (r == 0)
                r = validate_create(c, &k);
        if (r == 0) {
                cp_id_new(id);
                cp_crypto_setup_key_new(plain);
                r = insert_key(c, &k, id, plain);
        }
        if (r == 0)
                r = key_event(c, API_ACT_SETUP_KEY_CREATED, id);
        if (r == 0)
                r = group_events(c, id, k.name, "{}", k.groups.buf);
        if (r == 0)
                r = reply_created(c, id, plain);
        cp_explicit_bzero(plain, sizeof plain);
        cp_strbuf_release(&k.groups);
        return r;
}

/* ---- update ------------------------------------------------------------------------------ */

/* PUT takes only revoked and auto_groups (NetBird's SaveSetupKey): the
 * name, type, limits and expiry of a key never change. auto_groups is
 * required (an empty list clears them); revoked absent means false, and
 * a revoked key cannot be un-revoked. No SetupKeyUpdated event: NetBird
 * writes SetupKeyRevoked and one event per group added or removed only. */
static int update_key(api_ctx *c) {
        const char *id = c->param[0];
        _cleanup_rows_ cp_store_rows *cur = NULL;
        json_t *body = api_body(c);
        bool revoked = false;
        cp_strbuf groups;
        int r = 0;

        if (!body)
                return API_FAIL;
        cp_strbuf_init(&groups);
        if (api_field_bool(c, body, "revoked", &revoked) < 0 ||
            (r = api_field_strarr(c, body, "auto_groups", &groups, NULL)) < 0)
                goto out_fail;
        if (r == 0) {
                (void) api_error(c, 422, "setup key AutoGroups field is invalid");
                goto out_fail;
        }
        if (check_auto_groups(c, groups.buf) < 0)
                goto out_fail;
        const char *p[2] = { c->account_id, id };
        if (api_sql(c, SQL_FIND, 2, p, &cur) < 0)
                goto out_fail;
        if (cp_store_rows_count(cur) != 1) {
                (void) api_error(c, 404, "setup key: %s not found", id);
                goto out_fail;
        }
        bool was_revoked = cp_store_rows_bool(cur, 0, 3);
        if (was_revoked && !revoked) {
                (void) api_error(c, 422, "can't un-revoke a revoked setup key");
                goto out_fail;
        }
        const char *u[4] = { c->account_id, id, groups.buf, revoked ? "true" : "false" };
        r = api_sql(c, SQL_UPDATE, 4, u, NULL);
        if (r == 0 && revoked && !was_revoked)
                r = key_event(c, API_ACT_SETUP_KEY_REVOKED, id);
        if (r == 0)
                r = group_events(c, id, cp_store_rows_get(cur, 0, 0), cp_store_rows_get(cur, 0, 4), groups.buf);
        if (r == 0)
                r = reply_key(c, id);
        cp_strbuf_release(&groups);
        return r;
out_fail:
        cp_strbuf_release(&groups);
        return API_FAIL;
}

/* ---- delete ------------------------------------------------------------------------------- */

static int delete_key(api_ctx *c) {
        const char *id = c->param[0];
        _cleanup_rows_ cp_store_rows *cur = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_FIND, 2, p, &cur);

        if (r < 0)
                return r;
        if (cp_store_rows_count(cur) != 1)
                return api_error(c, 404, "setup key: %s not found", id);
        /* The event reads the row, so it goes in first. */
        r = key_event(c, API_ACT_SETUP_KEY_DELETED, id);
        if (r == 0)
                r = api_sql(c, SQL_DELETE, 2, p, NULL);
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

const api_route api_setup_keys_routes[] = {
        { "GET", "/api/setup-keys", API_MOD_SETUP_KEYS, API_READ, list_keys },
        { "POST", "/api/setup-keys", API_MOD_SETUP_KEYS, API_CREATE, create_key },
        { "GET", "/api/setup-keys/{keyId}", API_MOD_SETUP_KEYS, API_READ, get_key },
        { "PUT", "/api/setup-keys/{keyId}", API_MOD_SETUP_KEYS, API_UPDATE, update_key },
        { "DELETE", "/api/setup-keys/{keyId}", API_MOD_SETUP_KEYS, API_DELETE, delete_key },
        { NULL },
};
