/*
 * admin-import-map.c: NetBird's rows, staged in the TEMP table nb_src
 * (t = NetBird's table name, r = the row as jsonb of text values), mapped
 * to our tables with INSERT ... SELECT, one account ($1) at a time inside
 * the caller's transaction.
 *
 * The conversions are small TEMP functions (pg_temp.nb_*), created with
 * the staging table: NetBird's time strings (Go's zero time is NULL),
 * booleans as SQLite and PostgreSQL write them, JSON-in-text lists,
 * addresses as JSON strings or as raw BLOBs (old stores), network_net as
 * Go's JSON of net.IPNet. A value that does not convert reads as NULL;
 * the checks below turn what that breaks into "skipped" records, listed
 * in the TEMP table nb_skip (t, id, reason), and every INSERT leaves those
 * out.
 */
#include "cp/base.h"
#include "admin-import.h"

/* One statement. (A struct, so the scope checker, tests/sql/sqlscope.py,
 * can read every statement this file sends.) */
typedef struct import_sql {
        const char *sql;
} import_sql;

/* ---- staging -------------------------------------------------------------------------- */

static const import_sql SQL_STAGE[] = {
        { "CREATE TEMP TABLE IF NOT EXISTS nb_src (t text NOT NULL, r jsonb NOT NULL) ON COMMIT DROP" },
        { "CREATE TEMP TABLE IF NOT EXISTS nb_skip (t text NOT NULL, id text NOT NULL, reason text NOT NULL)"
        " ON COMMIT DROP" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_ts(v text) RETURNS timestamptz LANGUAGE plpgsql STABLE AS $f$"
        " BEGIN"
        "  IF v IS NULL OR v = '' OR v LIKE '0001-01-01%' THEN RETURN NULL; END IF;"
        "  RETURN regexp_replace(v, '\\s+[A-Z]{3,5}$', '')::timestamptz;"
        " EXCEPTION WHEN others THEN RETURN NULL;"
        " END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_bool(v text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $f$"
        " SELECT CASE WHEN lower(v) IN ('1', 't', 'true') THEN true"
        "  WHEN lower(v) IN ('0', 'f', 'false', '') THEN false END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_int(v text) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $f$"
        " BEGIN RETURN v::numeric::bigint; EXCEPTION WHEN others THEN RETURN NULL; END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_json(v text, d jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $f$"
        " BEGIN"
        "  IF v IS NULL OR v IN ('', 'null') THEN RETURN d; END IF;"
        "  RETURN v::jsonb;"
        " EXCEPTION WHEN others THEN RETURN d;"
        " END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_arr(v text) RETURNS text[] LANGUAGE plpgsql IMMUTABLE AS $f$"
        " DECLARE j jsonb := pg_temp.nb_json(v, '[]');"
        " BEGIN"
        "  IF jsonb_typeof(j) <> 'array' THEN RETURN '{}'; END IF;"
        "  RETURN ARRAY(SELECT jsonb_array_elements_text(j));"
        " END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_intarr(v text) RETURNS integer[] LANGUAGE plpgsql IMMUTABLE AS $f$"
        " BEGIN RETURN ARRAY(SELECT x::numeric::integer FROM unnest(pg_temp.nb_arr(v)) x);"
        " EXCEPTION WHEN others THEN RETURN '{}'; END $f$" },
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_ranges(v text) RETURNS int4range[] LANGUAGE plpgsql IMMUTABLE AS $f$"
        " BEGIN RETURN ARRAY(SELECT int4range((e->>'Start')::integer, (e->>'End')::integer, '[]')"
        "  FROM jsonb_array_elements(pg_temp.nb_json(v, '[]')) e);"
        " EXCEPTION WHEN others THEN RETURN '{}'; END $f$" },
        /* An address: a JSON string ("100.64.0.1", netip.Addr and net.IP
         * with serializer:json), plain text, or the BLOB of a net.IP (old
         * stores: 4 bytes or 16 with IPv4 mapped). */
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_ip(v text) RETURNS inet LANGUAGE plpgsql IMMUTABLE AS $f$"
        " DECLARE b bytea;"
        " BEGIN"
        "  IF v IS NULL OR v IN ('', '\"\"', 'null') THEN RETURN NULL; END IF;"
        "  IF left(v, 2) = '\\x' THEN"
        "   b := decode(substr(v, 3), 'hex');"
        "   IF length(b) = 16 AND substr(b, 1, 12) = '\\x00000000000000000000ffff'::bytea THEN b := substr(b, 13); END IF;"
        "   IF length(b) = 4 THEN"
        "    RETURN (get_byte(b, 0) || '.' || get_byte(b, 1) || '.' || get_byte(b, 2) || '.' || get_byte(b, 3))::inet;"
        "   END IF;"
        "   IF length(b) = 16 THEN RETURN regexp_replace(encode(b, 'hex'), '(....)(?!$)', '\\1:', 'g')::inet; END IF;"
        "   v := convert_from(b, 'UTF8');"
        "  END IF;"
        "  IF left(v, 1) = '\"' THEN v := v::jsonb #>> '{}'; END IF;"
        "  IF v = '' THEN RETURN NULL; END IF;"
        "  RETURN v::inet;"
        " EXCEPTION WHEN others THEN RETURN NULL;"
        " END $f$" },
        /* A network: Go's JSON of net.IPNet ({"IP": "100.64.0.0", "Mask":
         * base64}), a JSON string ("10.0.0.0/24", netip.Prefix) or plain. */
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_net(v text) RETURNS cidr LANGUAGE plpgsql IMMUTABLE AS $f$"
        " DECLARE j jsonb; ip inet; m bytea; bits integer;"
        " BEGIN"
        "  IF v IS NULL OR v IN ('', '\"\"', 'null', '{}') THEN RETURN NULL; END IF;"
        "  IF left(v, 2) = '\\x' THEN v := convert_from(decode(substr(v, 3), 'hex'), 'UTF8'); END IF;"
        "  IF left(v, 1) NOT IN ('{', '\"') THEN RETURN network(v::inet)::cidr; END IF;"
        "  j := v::jsonb;"
        "  IF jsonb_typeof(j) = 'string' THEN"
        "   IF j #>> '{}' = '' THEN RETURN NULL; END IF;"
        "   RETURN network((j #>> '{}')::inet)::cidr;"
        "  END IF;"
        "  IF coalesce(j->>'IP', '') = '' THEN RETURN NULL; END IF;"
        "  ip := (j->>'IP')::inet; m := decode(j->>'Mask', 'base64'); bits := bit_count(m);"
        "  IF family(ip) = 4 AND length(m) = 16 THEN bits := bits - 96; END IF;"
        "  RETURN network(set_masklen(ip, bits))::cidr;"
        " EXCEPTION WHEN others THEN RETURN NULL;"
        " END $f$" },
        /* posture.ChecksDefinition (Go field names) -> the REST API's
         * Checks object, which is what posture_checks.checks holds. */
        { "CREATE OR REPLACE FUNCTION pg_temp.nb_posture(v text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $f$"
        " DECLARE j jsonb := pg_temp.nb_json(v, '{}');"
        " BEGIN"
        "  IF jsonb_typeof(j) <> 'object' THEN RETURN NULL; END IF;"
        "  RETURN jsonb_strip_nulls(jsonb_build_object("
        "   'nb_version_check', CASE WHEN jsonb_typeof(j->'NBVersionCheck') = 'object'"
        "    THEN jsonb_build_object('min_version', j#>>'{NBVersionCheck,MinVersion}') END,"
        "   'os_version_check', CASE WHEN jsonb_typeof(j->'OSVersionCheck') = 'object' THEN jsonb_build_object("
        "    'android', CASE WHEN jsonb_typeof(j#>'{OSVersionCheck,Android}') = 'object'"
        "     THEN jsonb_build_object('min_version', j#>>'{OSVersionCheck,Android,MinVersion}') END,"
        "    'darwin', CASE WHEN jsonb_typeof(j#>'{OSVersionCheck,Darwin}') = 'object'"
        "     THEN jsonb_build_object('min_version', j#>>'{OSVersionCheck,Darwin,MinVersion}') END,"
        "    'ios', CASE WHEN jsonb_typeof(j#>'{OSVersionCheck,Ios}') = 'object'"
        "     THEN jsonb_build_object('min_version', j#>>'{OSVersionCheck,Ios,MinVersion}') END,"
        "    'linux', CASE WHEN jsonb_typeof(j#>'{OSVersionCheck,Linux}') = 'object'"
        "     THEN jsonb_build_object('min_kernel_version', j#>>'{OSVersionCheck,Linux,MinKernelVersion}') END,"
        "    'windows', CASE WHEN jsonb_typeof(j#>'{OSVersionCheck,Windows}') = 'object'"
        "     THEN jsonb_build_object('min_kernel_version', j#>>'{OSVersionCheck,Windows,MinKernelVersion}') END) END,"
        "   'geo_location_check', CASE WHEN jsonb_typeof(j->'GeoLocationCheck') = 'object' THEN jsonb_build_object("
        "    'locations', coalesce((SELECT jsonb_agg(jsonb_build_object('country_code', l->>'CountryCode',"
        "      'city_name', nullif(l->>'CityName', '')))"
        "     FROM jsonb_array_elements(coalesce(j#>'{GeoLocationCheck,Locations}', '[]')) l), '[]'),"
        "    'action', j#>>'{GeoLocationCheck,Action}') END,"
        "   'peer_network_range_check', CASE WHEN jsonb_typeof(j->'PeerNetworkRangeCheck') = 'object'"
        "    THEN jsonb_build_object('ranges', coalesce(j#>'{PeerNetworkRangeCheck,Ranges}', '[]'),"
        "     'action', j#>>'{PeerNetworkRangeCheck,Action}') END,"
        "   'process_check', CASE WHEN jsonb_typeof(j->'ProcessCheck') = 'object' THEN jsonb_build_object("
        "    'processes', coalesce((SELECT jsonb_agg(jsonb_build_object('linux_path', nullif(p->>'LinuxPath', ''),"
        "      'mac_path', nullif(p->>'MacPath', ''), 'windows_path', nullif(p->>'WindowsPath', '')))"
        "     FROM jsonb_array_elements(coalesce(j#>'{ProcessCheck,Processes}', '[]')) p), '[]')) END));"
        " EXCEPTION WHEN others THEN RETURN NULL;"
        " END $f$" },
};

static const char SQL_LOAD[] = "INSERT INTO nb_src (t, r) SELECT $1, e FROM jsonb_array_elements($2::jsonb) e";

/* Rows without their own account_id get their parent's: rules their
 * policy's, tokens their user's, memberships their group's, records
 * their zone's. */
static const import_sql SQL_PARENTS[] = {
        { "UPDATE nb_src c SET r = c.r || jsonb_build_object('account_id', p.r->>'account_id') FROM nb_src p"
        " WHERE c.t = 'policy_rules' AND p.t = 'policies' AND p.r->>'id' = c.r->>'policy_id'" },
        { "UPDATE nb_src c SET r = c.r || jsonb_build_object('account_id', p.r->>'account_id') FROM nb_src p"
        " WHERE c.t = 'personal_access_tokens' AND p.t = 'users' AND p.r->>'id' = c.r->>'user_id'" },
        { "UPDATE nb_src c SET r = c.r || jsonb_build_object('account_id', p.r->>'account_id') FROM nb_src p"
        " WHERE c.t = 'group_peers' AND p.t = 'groups' AND p.r->>'id' = c.r->>'group_id'" },
        { "UPDATE nb_src c SET r = c.r || jsonb_build_object('account_id', p.r->>'account_id') FROM nb_src p"
        " WHERE c.t = 'records' AND p.t = 'zones' AND p.r->>'id' = c.r->>'zone_id'"
        " AND coalesce(c.r->>'account_id', '') = ''" },
        /* A setup key without an id (NetBird's own test stores have one):
         * a stable id from its key, so --update finds it again. */
        { "UPDATE nb_src SET r = r || jsonb_build_object('id', 'nbimport' || left(md5(r->>'key'), 12))"
        " WHERE t = 'setup_keys' AND coalesce(r->>'id', '') = '' AND coalesce(r->>'key', '') <> ''" },
        { "CREATE INDEX IF NOT EXISTS nb_src_t ON nb_src (t, (r->>'account_id'))" },
        { "CREATE INDEX IF NOT EXISTS nb_src_id ON nb_src (t, (r->>'id'))" },
        { "CREATE INDEX IF NOT EXISTS nb_skip_id ON nb_skip (t, id)" },
        /* TEMP tables have no statistics until analysed: without them the
         * planner nests loops over thousands of peers. */
        { "ANALYZE nb_src" },
};

/* Runs n statements, each with the n_params parameters params. */
static int exec_list(cp_store_tx *tx, const import_sql *list, size_t n, int n_params, const char *const *params,
                     cp_error *reterr) {
        for (const import_sql *q = list; q < list + n; q++) {
                int r = cp_store_tx_exec(tx, q->sql, n_params, params, NULL, reterr);
                if (r < 0)
                        return r;
        }
        return 0;
}

int import_map_stage(cp_store_tx *tx, const import_src *src, cp_error *reterr) {
        int r;

        r = exec_list(tx, SQL_STAGE, ELEMENTSOF(SQL_STAGE), 0, NULL, reterr);
        if (r < 0)
                return r;
        for (import_table t = 0; t < _IMPORT_N_TABLES; t++) {
                if (!src->rows[t] || src->count[t] == 0)
                        continue;
                const char *p[] = { import_table_name(t), src->rows[t] };
                r = cp_store_tx_exec(tx, SQL_LOAD, 2, p, NULL, reterr);
                if (r < 0)
                        return r;
        }
        return exec_list(tx, SQL_PARENTS, ELEMENTSOF(SQL_PARENTS), 0, NULL, reterr);
}

static const char SQL_EXISTS[] = "SELECT 1 FROM accounts WHERE id = $1";

int import_map_exists(cp_store_tx *tx, const char *account_id, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = cp_store_tx_exec(tx, SQL_EXISTS, 1, &account_id, &rows, reterr);
        return r < 0 ? r : cp_store_rows_count(rows) > 0;
}

/* ---- the mapping ------------------------------------------------------------------------ */

/* Column c of the staged row s, converted. */
#define V(c)            "(s.r->>'" c "')"
#define TXT(c)          "coalesce(s.r->>'" c "', '')"
#define TS(c)           "pg_temp.nb_ts(s.r->>'" c "')"
#define BOOL(c, d)      "coalesce(pg_temp.nb_bool(s.r->>'" c "'), " d ")"
#define INT(c, d)       "coalesce(pg_temp.nb_int(s.r->>'" c "'), " d ")"
#define ARR(c)          "pg_temp.nb_arr(s.r->>'" c "')"
#define JS(c, d)        "pg_temp.nb_json(s.r->>'" c "', '" d "')"
/* The staged rows of NetBird table tbl of account $1 that no check
 * skipped. */
#define NOT_SKIPPED(tbl) "NOT EXISTS (SELECT 1 FROM nb_skip k WHERE k.t = '" tbl "' AND k.id = s.r->>'id')"
#define ROWS(tbl)       " FROM nb_src s WHERE s.t = '" tbl "' AND s.r->>'account_id' = $1"
#define KEPT(tbl)       ROWS(tbl) " AND " NOT_SKIPPED(tbl)
/* A check: rows of tbl matching cond are skipped with reason (an SQL
 * text expression). */
#define CHECK(tbl, reason, cond) \
        "INSERT INTO nb_skip (t, id, reason) SELECT '" tbl "', coalesce(s.r->>'id', ''), " reason ROWS(tbl) \
        " AND " NOT_SKIPPED(tbl) " AND (" cond ")"
/* Ids are global in our tables: one taken by another account is a
 * record we cannot import. */
#define COLLIDES(tbl, ours) \
        CHECK(tbl, "'its id is used by another account'", \
              "EXISTS (SELECT 1 FROM " ours " o WHERE o.id = s.r->>'id' AND o.account_id <> $1)")
/* The staged id of tbl's row named by column c, kept (not skipped). */
#define IMPORTED(tbl, c) \
        "EXISTS (SELECT 1 FROM nb_src x WHERE x.t = '" tbl "' AND x.r->>'account_id' = $1 AND x.r->>'id' = " c \
        " AND NOT EXISTS (SELECT 1 FROM nb_skip k WHERE k.t = '" tbl "' AND k.id = x.r->>'id'))"
/* NetBird's plaintext setup key (a UUID) hashed as NetBird hashes it;
 * a hashed one (base64 of 32 bytes) kept. */
#define SETUP_KEY_HASH \
        "(CASE WHEN length(s.r->>'key') = 44 AND right(s.r->>'key', 1) = '=' THEN s.r->>'key'" \
        " ELSE encode(sha256(convert_to(upper(s.r->>'key'), 'UTF8')), 'base64') END)"

/* The account's owner among the records the checks left out: an
 * account without its owner cannot be administered, so it fails. */
static const char SQL_OWNER_SKIPPED[] =
        "SELECT k.id, k.reason FROM nb_src s JOIN nb_skip k ON k.t = 'users' AND k.id = s.r->>'id'"
        " WHERE s.t = 'users' AND s.r->>'account_id' = $1 AND s.r->>'role' = 'owner' ORDER BY k.id LIMIT 1";

static const char SQL_NETWORK[] =
        "SELECT pg_temp.nb_net(s.r->>'network_net') IS NOT NULL FROM nb_src s WHERE s.t = 'accounts' AND s.r->>'id' = $1";

/* --update: what is replaced wholesale (users and peers are upserted,
 * so their sessions and logins survive, and the missing ones deleted). */
static const import_sql SQL_CLEAR[] = {
        { "DELETE FROM group_peers WHERE account_id = $1" },
        { "DELETE FROM group_resources WHERE account_id = $1" },
        { "DELETE FROM policy_rules WHERE account_id = $1" },
        { "DELETE FROM policies WHERE account_id = $1" },
        { "DELETE FROM routes WHERE account_id = $1" },
        { "DELETE FROM network_routers WHERE account_id = $1" },
        { "DELETE FROM network_resources WHERE account_id = $1" },
        { "DELETE FROM networks WHERE account_id = $1" },
        { "DELETE FROM name_server_groups WHERE account_id = $1" },
        { "DELETE FROM posture_checks WHERE account_id = $1" },
        { "DELETE FROM dns_records WHERE account_id = $1" },
        { "DELETE FROM dns_zones WHERE account_id = $1" },
        { "DELETE FROM setup_keys WHERE account_id = $1" },
        { "DELETE FROM personal_access_tokens WHERE account_id = $1" },
        { "DELETE FROM groups WHERE account_id = $1" },
};

/* --update, after the upserts: users and peers the store no longer has. */
static const import_sql SQL_PRUNE[] = {
        { "DELETE FROM users u WHERE u.account_id = $1 AND u.id NOT IN (SELECT s.r->>'id'" KEPT("users")
        " AND s.r->>'id' IS NOT NULL)" },
        { "DELETE FROM peers p WHERE p.account_id = $1 AND p.id NOT IN (SELECT s.r->>'id'" KEPT("peers")
        " AND s.r->>'id' IS NOT NULL)" },
};

static const import_sql SQL_CHECKS[] = {
        /* users */
        { CHECK("users", "'role ' || coalesce(s.r->>'role', '(none)') || ' is not known'",
              "coalesce(s.r->>'role', '') NOT IN ('owner', 'admin', 'user', 'billing_admin', 'auditor',"
              " 'network_admin')") },
        { CHECK("users", "'no id'", "coalesce(s.r->>'id', '') = ''") },
        { COLLIDES("users", "users") },
        /* peers */
        { CHECK("peers", "'no WireGuard key'", "coalesce(s.r->>'key', '') = ''") },
        { CHECK("peers", "'its IP address cannot be read'", "pg_temp.nb_ip(s.r->>'ip') IS NULL") },
        { CHECK("peers", "'no DNS label'", "coalesce(s.r->>'dns_label', '') = ''") },
        { COLLIDES("peers", "peers") },
        { CHECK("peers", "'its WireGuard key is used by a peer of another account'",
              "EXISTS (SELECT 1 FROM peers o WHERE o.key = s.r->>'key' AND o.account_id <> $1)") },
        { CHECK("peers", "'its IP address is used by another peer'",
              "s.r->>'id' IN (SELECT d.id FROM (SELECT o.r->>'id' id, row_number() OVER (PARTITION BY"
              " pg_temp.nb_ip(o.r->>'ip') ORDER BY o.r->>'id') n FROM nb_src o WHERE o.t = 'peers'"
              " AND o.r->>'account_id' = $1) d WHERE d.n > 1)") },
        { CHECK("peers", "'its DNS label is used by another peer'",
              "s.r->>'id' IN (SELECT d.id FROM (SELECT o.r->>'id' id, row_number() OVER (PARTITION BY"
              " o.r->>'dns_label' ORDER BY o.r->>'id') n FROM nb_src o WHERE o.t = 'peers'"
              " AND o.r->>'account_id' = $1) d WHERE d.n > 1)") },
        /* groups */
        { CHECK("groups", "'no name'", "coalesce(s.r->>'name', '') = ''") },
        { COLLIDES("groups", "groups") },
        { CHECK("groups", "'a second group named All'",
              "s.r->>'name' = 'All' AND EXISTS (SELECT 1 FROM nb_src o WHERE o.t = 'groups'"
              " AND o.r->>'account_id' = $1 AND o.r->>'name' = 'All' AND o.r->>'id' < s.r->>'id')") },
        /* setup keys */
        { CHECK("setup_keys", "'no id'", "coalesce(s.r->>'id', '') = ''") },
        { CHECK("setup_keys", "'no key'", "coalesce(s.r->>'key', '') = ''") },
        { CHECK("setup_keys", "'type ' || coalesce(s.r->>'type', '(none)') || ' is not known'",
              "coalesce(s.r->>'type', '') NOT IN ('reusable', 'one-off')") },
        { COLLIDES("setup_keys", "setup_keys") },
        { CHECK("setup_keys", "'the same key is in another account'",
              "EXISTS (SELECT 1 FROM setup_keys o WHERE o.key = " SETUP_KEY_HASH " AND o.account_id <> $1)") },
        /* personal access tokens */
        { CHECK("personal_access_tokens", "'its user ' || coalesce(s.r->>'user_id', '') || ' is not imported'",
              "NOT " IMPORTED("users", "s.r->>'user_id'")) },
        { CHECK("personal_access_tokens", "'no token hash'", "coalesce(s.r->>'hashed_token', '') = ''") },
        { COLLIDES("personal_access_tokens", "personal_access_tokens") },
        { CHECK("personal_access_tokens", "'the same token is in another account'",
              "EXISTS (SELECT 1 FROM personal_access_tokens o WHERE o.hashed_token = s.r->>'hashed_token'"
              " AND o.account_id <> $1)") },
        /* posture checks, policies, rules */
        { COLLIDES("posture_checks", "posture_checks") },
        { CHECK("posture_checks", "'its checks cannot be read'", "pg_temp.nb_posture(s.r->>'checks') IS NULL") },
        { CHECK("posture_checks", "'a second posture check of the same name'",
              "EXISTS (SELECT 1 FROM nb_src o WHERE o.t = 'posture_checks' AND o.r->>'account_id' = $1"
              " AND o.r->>'name' = s.r->>'name' AND o.r->>'id' < s.r->>'id')") },
        { COLLIDES("policies", "policies") },
        { CHECK("policy_rules", "'protocol ' || coalesce(s.r->>'protocol', '(none)') || ' is not known'",
              "lower(coalesce(s.r->>'protocol', '')) NOT IN ('all', 'tcp', 'udp', 'icmp', 'netbird-ssh')") },
        { CHECK("policy_rules", "'action ' || coalesce(s.r->>'action', '(none)') || ' is not known'",
              "lower(coalesce(s.r->>'action', '')) NOT IN ('accept', 'drop')") },
        { CHECK("policy_rules", "'its policy is not imported'", "NOT " IMPORTED("policies", "s.r->>'policy_id'")) },
        { COLLIDES("policy_rules", "policy_rules") },
        /* routes */
        { CHECK("routes", "'neither a network nor domains'",
              "pg_temp.nb_net(s.r->>'network') IS NULL AND cardinality(" ARR("domains") ") = 0") },
        { CHECK("routes", "'its routing peer ' || (s.r->>'peer') || ' is not imported'",
              "coalesce(s.r->>'peer', '') <> '' AND NOT " IMPORTED("peers", "s.r->>'peer'")) },
        { CHECK("routes", "'no routing peer and no peer groups'",
              "coalesce(s.r->>'peer', '') = '' AND cardinality(" ARR("peer_groups") ") = 0") },
        { COLLIDES("routes", "routes") },
        /* nameservers */
        { COLLIDES("name_server_groups", "name_server_groups") },
        /* networks */
        { COLLIDES("networks", "networks") },
        { CHECK("network_resources", "'its network is not imported'",
              "NOT " IMPORTED("networks", "s.r->>'network_id'")) },
        { CHECK("network_resources", "'type ' || coalesce(s.r->>'type', '(none)') || ' is not known'",
              "lower(coalesce(s.r->>'type', '')) NOT IN ('host', 'subnet', 'domain')") },
        { CHECK("network_resources", "'its address cannot be read'",
              "(lower(s.r->>'type') IN ('host', 'subnet') AND coalesce(pg_temp.nb_net(s.r->>'prefix'),"
              " pg_temp.nb_net(s.r->>'address')) IS NULL)"
              " OR (lower(s.r->>'type') = 'domain' AND coalesce(nullif(s.r->>'domain', ''), s.r->>'address', '') = '')") },
        { CHECK("network_resources", "'a second resource of the same name'",
              "EXISTS (SELECT 1 FROM nb_src o WHERE o.t = 'network_resources' AND o.r->>'account_id' = $1"
              " AND coalesce(o.r->>'name', o.r->>'id') = coalesce(s.r->>'name', s.r->>'id')"
              " AND o.r->>'id' < s.r->>'id')") },
        { COLLIDES("network_resources", "network_resources") },
        { CHECK("network_routers", "'its network is not imported'", "NOT " IMPORTED("networks", "s.r->>'network_id'")) },
        { CHECK("network_routers", "'its routing peer ' || (s.r->>'peer') || ' is not imported'",
              "coalesce(s.r->>'peer', '') <> '' AND NOT " IMPORTED("peers", "s.r->>'peer'")) },
        { CHECK("network_routers", "'no routing peer and no peer groups'",
              "coalesce(s.r->>'peer', '') = '' AND cardinality(" ARR("peer_groups") ") = 0") },
        { COLLIDES("network_routers", "network_routers") },
        /* DNS zones */
        { COLLIDES("zones", "dns_zones") },
        { CHECK("zones", "'a second zone of the same domain'",
              "EXISTS (SELECT 1 FROM nb_src o WHERE o.t = 'zones' AND o.r->>'account_id' = $1"
              " AND o.r->>'domain' = s.r->>'domain' AND o.r->>'id' < s.r->>'id')") },
        { CHECK("records", "'its zone is not imported'", "NOT " IMPORTED("zones", "s.r->>'zone_id'")) },
        { CHECK("records", "'type ' || coalesce(s.r->>'type', '(none)') || ' is not known'",
              "coalesce(s.r->>'type', '') NOT IN ('A', 'AAAA', 'CNAME')") },
        { COLLIDES("records", "dns_records") },
        /* memberships of a peer the store does not have */
        { "INSERT INTO nb_skip (t, id, reason) SELECT 'group_peers', g || '/' || p, 'peer ' || p || ' is not imported'"
        " FROM (SELECT s.r->>'group_id' g, s.r->>'peer_id' p" ROWS("group_peers") " UNION"
        "  SELECT s.r->>'id', e FROM nb_src s CROSS JOIN unnest(" ARR("peers") ") e"
        "  WHERE s.t = 'groups' AND s.r->>'account_id' = $1) m"
        /* NOT IN: a hashed subplan, where a correlated NOT EXISTS was
         * planned as a nested loop over the union */
        " WHERE m.p NOT IN (SELECT x.r->>'id' FROM nb_src x WHERE x.t = 'peers' AND x.r->>'account_id' = $1"
        "  AND x.r->>'id' IS NOT NULL)" },
};

static const char SQL_ACCOUNT[] =
        "INSERT INTO accounts (id, created_by, created_at, domain, domain_category, is_domain_primary_account,"
        " network_identifier, network_net, network_net_v6, network_dns, network_serial,"
        " dns_settings_disabled_management_groups, settings_peer_login_expiration_enabled,"
        " settings_peer_login_expiration, settings_peer_inactivity_expiration_enabled,"
        " settings_peer_inactivity_expiration, settings_regular_users_view_blocked,"
        " settings_groups_propagation_enabled, settings_jwt_groups_enabled, settings_jwt_groups_claim_name,"
        " settings_jwt_allow_groups, settings_routing_peer_dns_resolution_enabled, settings_dns_domain,"
        " settings_network_range, settings_lazy_connection_enabled, settings_extra_peer_approval_enabled,"
        " settings_extra_user_approval_required, settings_peer_expose_enabled, settings_peer_expose_groups)"
        " SELECT $1, " TXT("created_by") ", coalesce(" TS("created_at") ", now()), " TXT("domain") ","
        " " TXT("domain_category") ", " BOOL("is_domain_primary_account", "false") ", " TXT("network_identifier") ","
        " pg_temp.nb_net(s.r->>'network_net'), pg_temp.nb_net(s.r->>'network_net_v6'), " TXT("network_dns") ","
        /* past NetBird's serial, so agents that held it accept our first map */
        " greatest(" INT("network_serial", "0") ", 0) + 1,"
        " " ARR("dns_settings_disabled_management_groups") ","
        " " BOOL("settings_peer_login_expiration_enabled", "true") ","
        " coalesce(nullif(greatest(" INT("settings_peer_login_expiration", "0") ", 0), 0), 86400000000000),"
        " " BOOL("settings_peer_inactivity_expiration_enabled", "false") ","
        " coalesce(nullif(greatest(" INT("settings_peer_inactivity_expiration", "0") ", 0), 0), 600000000000),"
        " " BOOL("settings_regular_users_view_blocked", "true") ", " BOOL("settings_groups_propagation_enabled", "true") ","
        " " BOOL("settings_jwt_groups_enabled", "false") ", " TXT("settings_jwt_groups_claim_name") ","
        " " ARR("settings_jwt_allow_groups") ", " BOOL("settings_routing_peer_dns_resolution_enabled", "true") ","
        " " TXT("settings_dns_domain") ", pg_temp.nb_net(s.r->>'settings_network_range'),"
        " " BOOL("settings_lazy_connection_enabled", "false") ", " BOOL("settings_extra_peer_approval_enabled", "false") ","
        " " BOOL("settings_extra_user_approval_required", "false") ", " BOOL("settings_peer_expose_enabled", "false") ","
        " " ARR("settings_peer_expose_groups")
        " FROM nb_src s WHERE s.t = 'accounts' AND s.r->>'id' = $1"
        " ON CONFLICT (id) DO UPDATE SET created_by = EXCLUDED.created_by, created_at = EXCLUDED.created_at,"
        " domain = EXCLUDED.domain, domain_category = EXCLUDED.domain_category,"
        " is_domain_primary_account = EXCLUDED.is_domain_primary_account,"
        " network_identifier = EXCLUDED.network_identifier, network_net = EXCLUDED.network_net,"
        " network_net_v6 = EXCLUDED.network_net_v6, network_dns = EXCLUDED.network_dns,"
        " network_serial = greatest(accounts.network_serial + 1, EXCLUDED.network_serial),"
        " dns_settings_disabled_management_groups = EXCLUDED.dns_settings_disabled_management_groups,"
        " settings_peer_login_expiration_enabled = EXCLUDED.settings_peer_login_expiration_enabled,"
        " settings_peer_login_expiration = EXCLUDED.settings_peer_login_expiration,"
        " settings_peer_inactivity_expiration_enabled = EXCLUDED.settings_peer_inactivity_expiration_enabled,"
        " settings_peer_inactivity_expiration = EXCLUDED.settings_peer_inactivity_expiration,"
        " settings_regular_users_view_blocked = EXCLUDED.settings_regular_users_view_blocked,"
        " settings_groups_propagation_enabled = EXCLUDED.settings_groups_propagation_enabled,"
        " settings_jwt_groups_enabled = EXCLUDED.settings_jwt_groups_enabled,"
        " settings_jwt_groups_claim_name = EXCLUDED.settings_jwt_groups_claim_name,"
        " settings_jwt_allow_groups = EXCLUDED.settings_jwt_allow_groups,"
        " settings_routing_peer_dns_resolution_enabled = EXCLUDED.settings_routing_peer_dns_resolution_enabled,"
        " settings_dns_domain = EXCLUDED.settings_dns_domain, settings_network_range = EXCLUDED.settings_network_range,"
        " settings_lazy_connection_enabled = EXCLUDED.settings_lazy_connection_enabled,"
        " settings_extra_peer_approval_enabled = EXCLUDED.settings_extra_peer_approval_enabled,"
        " settings_extra_user_approval_required = EXCLUDED.settings_extra_user_approval_required,"
        " settings_peer_expose_enabled = EXCLUDED.settings_peer_expose_enabled,"
        " settings_peer_expose_groups = EXCLUDED.settings_peer_expose_groups"
        " WHERE accounts.id = $1";

static const import_sql SQL_MAP[] = {
        /* users: email and name arrive sealed (admin-import.c) with pii_key */
        { "INSERT INTO users (id, account_id, role, is_service_user, non_deletable, service_user_name, auto_groups,"
        " blocked, pending_approval, last_login, created_at, issued, name, email, pii_key)"
        " SELECT s.r->>'id', $1, s.r->>'role', " BOOL("is_service_user", "false") ", " BOOL("non_deletable", "false") ","
        " " TXT("service_user_name") ", " ARR("auto_groups") ", " BOOL("blocked", "false") ","
        " " BOOL("pending_approval", "false") ", " TS("last_login") ", coalesce(" TS("created_at") ", now()),"
        " CASE WHEN s.r->>'issued' IN ('api', 'integration', 'jwt') THEN s.r->>'issued' ELSE 'api' END,"
        " " TXT("name") ", " TXT("email") ", " TXT("pii_key") KEPT("users")
        " ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, is_service_user = EXCLUDED.is_service_user,"
        " non_deletable = EXCLUDED.non_deletable, service_user_name = EXCLUDED.service_user_name,"
        " auto_groups = EXCLUDED.auto_groups, blocked = EXCLUDED.blocked,"
        " pending_approval = EXCLUDED.pending_approval, last_login = EXCLUDED.last_login,"
        " created_at = EXCLUDED.created_at, issued = EXCLUDED.issued, name = EXCLUDED.name,"
        " email = EXCLUDED.email, pii_key = EXCLUDED.pii_key WHERE users.account_id = $1" },
        /* peers: imported disconnected (session token 0), status kept on update */
        { "INSERT INTO peers (id, account_id, key, ip, ipv6, name, dns_label, meta_hostname, meta_go_os, meta_kernel,"
        " meta_core, meta_platform, meta_os, meta_os_version, meta_wt_version, meta_ui_version, meta_kernel_version,"
        " meta_network_addresses, meta_system_serial_number, meta_system_product_name, meta_system_manufacturer,"
        " meta_environment, meta_flags, meta_files, meta_capabilities, meta_sync_message_version,"
        " peer_status_last_seen, peer_status_login_expired, peer_status_requires_approval, user_id, ssh_key,"
        " ssh_enabled, login_expiration_enabled, inactivity_expiration_enabled, last_login, created_at, ephemeral,"
        " location_connection_ip, location_country_code, location_city_name, location_geo_name_id,"
        " extra_dns_labels, allow_extra_dns_labels)"
        " SELECT s.r->>'id', $1, s.r->>'key', pg_temp.nb_ip(s.r->>'ip'), pg_temp.nb_ip(s.r->>'ipv6'), " TXT("name") ","
        " s.r->>'dns_label', " TXT("meta_hostname") ", " TXT("meta_go_os") ", " TXT("meta_kernel") ","
        " " TXT("meta_core") ", " TXT("meta_platform") ", " TXT("meta_os") ", " TXT("meta_os_version") ","
        " " TXT("meta_wt_version") ", " TXT("meta_ui_version") ", " TXT("meta_kernel_version") ","
        " CASE WHEN jsonb_typeof(" JS("meta_network_addresses", "[]") ") = 'array'"
        "  THEN " JS("meta_network_addresses", "[]") " ELSE '[]' END,"
        " " TXT("meta_system_serial_number") ", " TXT("meta_system_product_name") ","
        " " TXT("meta_system_manufacturer") ","
        " CASE WHEN jsonb_typeof(" JS("meta_environment", "{}") ") = 'object' THEN " JS("meta_environment", "{}")
        "  ELSE '{}' END,"
        " CASE WHEN jsonb_typeof(" JS("meta_flags", "{}") ") = 'object' THEN " JS("meta_flags", "{}") " ELSE '{}' END,"
        " CASE WHEN jsonb_typeof(" JS("meta_files", "[]") ") = 'array' THEN " JS("meta_files", "[]") " ELSE '[]' END,"
        " pg_temp.nb_intarr(s.r->>'meta_capabilities'), " INT("meta_sync_message_version", "0") "::integer,"
        /* an ephemeral peer is seen "now": NetBird gives every stored
         * ephemeral peer its idle time again when it starts, and our sweep
         * would delete one last seen before the switch at once */
        " CASE WHEN " BOOL("ephemeral", "false") " THEN now() ELSE " TS("peer_status_last_seen") " END,"
        " " BOOL("peer_status_login_expired", "false") ","
        " " BOOL("peer_status_requires_approval", "false") ", nullif(s.r->>'user_id', ''), " TXT("ssh_key") ","
        " " BOOL("ssh_enabled", "false") ", " BOOL("login_expiration_enabled", "false") ","
        " " BOOL("inactivity_expiration_enabled", "false") ", " TS("last_login") ","
        " coalesce(" TS("created_at") ", now()), " BOOL("ephemeral", "false") ","
        " pg_temp.nb_ip(s.r->>'location_connection_ip'), " TXT("location_country_code") ","
        " " TXT("location_city_name") ", greatest(" INT("location_geo_name_id", "0") ", 0),"
        " " ARR("extra_dns_labels") ", " BOOL("allow_extra_dns_labels", "false") KEPT("peers")
        " ON CONFLICT (id) DO UPDATE SET key = EXCLUDED.key, ip = EXCLUDED.ip, ipv6 = EXCLUDED.ipv6,"
        " name = EXCLUDED.name, dns_label = EXCLUDED.dns_label, meta_hostname = EXCLUDED.meta_hostname,"
        " meta_go_os = EXCLUDED.meta_go_os, meta_kernel = EXCLUDED.meta_kernel, meta_core = EXCLUDED.meta_core,"
        " meta_platform = EXCLUDED.meta_platform, meta_os = EXCLUDED.meta_os,"
        " meta_os_version = EXCLUDED.meta_os_version, meta_wt_version = EXCLUDED.meta_wt_version,"
        " meta_ui_version = EXCLUDED.meta_ui_version, meta_kernel_version = EXCLUDED.meta_kernel_version,"
        " meta_network_addresses = EXCLUDED.meta_network_addresses,"
        " meta_system_serial_number = EXCLUDED.meta_system_serial_number,"
        " meta_system_product_name = EXCLUDED.meta_system_product_name,"
        " meta_system_manufacturer = EXCLUDED.meta_system_manufacturer,"
        " meta_environment = EXCLUDED.meta_environment, meta_flags = EXCLUDED.meta_flags,"
        " meta_files = EXCLUDED.meta_files, meta_capabilities = EXCLUDED.meta_capabilities,"
        " meta_sync_message_version = EXCLUDED.meta_sync_message_version,"
        " peer_status_requires_approval = EXCLUDED.peer_status_requires_approval, user_id = EXCLUDED.user_id,"
        " ssh_key = EXCLUDED.ssh_key, ssh_enabled = EXCLUDED.ssh_enabled,"
        " login_expiration_enabled = EXCLUDED.login_expiration_enabled,"
        " inactivity_expiration_enabled = EXCLUDED.inactivity_expiration_enabled,"
        " created_at = EXCLUDED.created_at, ephemeral = EXCLUDED.ephemeral,"
        " location_connection_ip = EXCLUDED.location_connection_ip,"
        " location_country_code = EXCLUDED.location_country_code, location_city_name = EXCLUDED.location_city_name,"
        " location_geo_name_id = EXCLUDED.location_geo_name_id, extra_dns_labels = EXCLUDED.extra_dns_labels,"
        " allow_extra_dns_labels = EXCLUDED.allow_extra_dns_labels WHERE peers.account_id = $1" },
        /* groups and their members (the group_peers table, or the JSON list of old stores) */
        { "INSERT INTO groups (id, account_id, name, issued, integration_ref_id, integration_ref_integration_type)"
        " SELECT s.r->>'id', $1, s.r->>'name',"
        " CASE WHEN s.r->>'issued' IN ('api', 'integration', 'jwt') THEN s.r->>'issued' ELSE 'api' END,"
        " " INT("integration_ref_id", "0") ", " TXT("integration_ref_integration_type") KEPT("groups") },
        { "INSERT INTO group_peers (account_id, group_id, peer_id)"
        " SELECT DISTINCT $1, m.g, m.p FROM (SELECT s.r->>'group_id' g, s.r->>'peer_id' p" ROWS("group_peers")
        "  UNION SELECT s.r->>'id', e FROM nb_src s CROSS JOIN unnest(" ARR("peers") ") e"
        "  WHERE s.t = 'groups' AND s.r->>'account_id' = $1) m"
        " JOIN groups g ON g.account_id = $1 AND g.id = m.g JOIN peers p ON p.account_id = $1 AND p.id = m.p" },
        /* setup keys: plaintext ones hashed; the masked form NetBird shows */
        { "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, created_at, expires_at, updated_at,"
        " revoked, used_times, last_used, auto_groups, usage_limit, ephemeral, allow_extra_dns_labels)"
        " SELECT s.r->>'id', $1, " SETUP_KEY_HASH ","
        " CASE WHEN coalesce(s.r->>'key_secret', '') <> '' THEN s.r->>'key_secret'"
        "  WHEN length(s.r->>'key') = 44 AND right(s.r->>'key', 1) = '=' THEN '****'"
        "  ELSE left(s.r->>'key', 5) || '****' END,"
        " " TXT("name") ", s.r->>'type', coalesce(" TS("created_at") ", now()), " TS("expires_at") ","
        " coalesce(" TS("updated_at") ", " TS("created_at") ", now()), " BOOL("revoked", "false") ","
        " CASE WHEN s.r->>'type' = 'one-off' THEN least(greatest(" INT("used_times", "0") ", 0), 1)"
        "  WHEN greatest(" INT("usage_limit", "0") ", 0) > 0"
        "  THEN least(greatest(" INT("used_times", "0") ", 0), " INT("usage_limit", "0") ")"
        "  ELSE greatest(" INT("used_times", "0") ", 0) END,"
        " " TS("last_used") ", " ARR("auto_groups") ", greatest(" INT("usage_limit", "0") ", 0),"
        " " BOOL("ephemeral", "false") ", " BOOL("allow_extra_dns_labels", "false") KEPT("setup_keys") },
        /* personal access tokens: the hashes, so the tokens keep working */
        { "INSERT INTO personal_access_tokens (id, account_id, user_id, name, hashed_token, expiration_date,"
        " created_by, created_at, last_used)"
        " SELECT s.r->>'id', $1, s.r->>'user_id', " TXT("name") ", s.r->>'hashed_token',"
        " coalesce(" TS("expiration_date") ", 'infinity'), " TXT("created_by") ", coalesce(" TS("created_at") ", now()),"
        " " TS("last_used") KEPT("personal_access_tokens") },
        /* posture checks, policies and rules */
        { "INSERT INTO posture_checks (id, account_id, name, description, checks)"
        " SELECT s.r->>'id', $1, coalesce(s.r->>'name', s.r->>'id'), " TXT("description") ","
        " pg_temp.nb_posture(s.r->>'checks')" KEPT("posture_checks") },
        { "INSERT INTO policies (id, account_id, name, description, enabled, source_posture_checks)"
        " SELECT s.r->>'id', $1, " TXT("name") ", " TXT("description") ", " BOOL("enabled", "true") ","
        " " ARR("source_posture_checks") KEPT("policies") },
        { "INSERT INTO policy_rules (id, policy_id, account_id, name, description, enabled, action, bidirectional,"
        " protocol, sources, destinations, source_resource_id, source_resource_type, destination_resource_id,"
        " destination_resource_type, ports, port_ranges, authorized_groups, authorized_user)"
        " SELECT s.r->>'id', s.r->>'policy_id', $1, " TXT("name") ", " TXT("description") ", " BOOL("enabled", "true") ","
        " lower(s.r->>'action'), " BOOL("bidirectional", "false") ", lower(s.r->>'protocol'), " ARR("sources") ","
        " " ARR("destinations") ", nullif(" JS("source_resource", "{}") "->>'ID', ''),"
        " CASE WHEN nullif(" JS("source_resource", "{}") "->>'ID', '') IS NOT NULL"
        "  THEN " JS("source_resource", "{}") "->>'Type' END,"
        " nullif(" JS("destination_resource", "{}") "->>'ID', ''),"
        " CASE WHEN nullif(" JS("destination_resource", "{}") "->>'ID', '') IS NOT NULL"
        "  THEN " JS("destination_resource", "{}") "->>'Type' END,"
        " pg_temp.nb_intarr(s.r->>'ports'), pg_temp.nb_ranges(s.r->>'port_ranges'),"
        " CASE WHEN jsonb_typeof(" JS("authorized_groups", "{}") ") = 'object' THEN " JS("authorized_groups", "{}")
        "  ELSE '{}' END, " TXT("authorized_user") KEPT("policy_rules") },
        /* routes and nameservers */
        { "INSERT INTO routes (id, account_id, network, domains, keep_route, net_id, description, peer, peer_groups,"
        " network_type, masquerade, metric, enabled, groups, access_control_groups, skip_auto_apply)"
        " SELECT s.r->>'id', $1, pg_temp.nb_net(s.r->>'network'), " ARR("domains") ", " BOOL("keep_route", "false") ","
        " " TXT("net_id") ", " TXT("description") ", nullif(s.r->>'peer', ''),"
        " CASE WHEN coalesce(s.r->>'peer', '') = '' THEN " ARR("peer_groups") " ELSE '{}' END,"
        " CASE WHEN " INT("network_type", "-1") " IN (0, 1, 2, 3) THEN " INT("network_type", "1") "::smallint"
        "  WHEN family(pg_temp.nb_net(s.r->>'network')) = 6 THEN 2 WHEN pg_temp.nb_net(s.r->>'network') IS NULL"
        "  THEN 3 ELSE 1 END,"
        " " BOOL("masquerade", "false") ", least(greatest(" INT("metric", "9999") ", 1), 9999)::integer,"
        " " BOOL("enabled", "true") ", " ARR("groups") ", " ARR("access_control_groups") ","
        " " BOOL("skip_auto_apply", "false") KEPT("routes") },
        { "INSERT INTO name_server_groups (id, account_id, name, description, name_servers, groups, \"primary\","
        " domains, enabled, search_domains_enabled)"
        " SELECT s.r->>'id', $1, " TXT("name") ", " TXT("description") ","
        " coalesce((SELECT jsonb_agg(jsonb_build_object('ip', e->>'IP', 'ns_type',"
        "   CASE WHEN e->>'NSType' IN ('0', '1') THEN 'udp' ELSE lower(e->>'NSType') END,"
        "   'port', coalesce(pg_temp.nb_int(e->>'Port'), 53)))"
        "  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(" JS("name_servers", "[]") ") = 'array'"
        "   THEN " JS("name_servers", "[]") " ELSE '[]' END) e), '[]'),"
        " " ARR("groups") ", " BOOL("primary", "false") ", " ARR("domains") ", " BOOL("enabled", "true") ","
        " " BOOL("search_domains_enabled", "false") KEPT("name_server_groups") },
        /* networks, their resources (with group membership) and routers */
        { "INSERT INTO networks (id, account_id, name, description)"
        " SELECT s.r->>'id', $1, " TXT("name") ", " TXT("description") KEPT("networks") },
        { "INSERT INTO network_resources (id, network_id, account_id, name, description, type, domain, prefix, enabled)"
        " SELECT s.r->>'id', s.r->>'network_id', $1, coalesce(s.r->>'name', s.r->>'id'), " TXT("description") ","
        " lower(s.r->>'type'),"
        " CASE WHEN lower(s.r->>'type') = 'domain' THEN coalesce(nullif(s.r->>'domain', ''), s.r->>'address')"
        "  ELSE '' END,"
        " CASE WHEN lower(s.r->>'type') <> 'domain'"
        "  THEN coalesce(pg_temp.nb_net(s.r->>'prefix'), pg_temp.nb_net(s.r->>'address')) END,"
        " " BOOL("enabled", "true") KEPT("network_resources") },
        { "INSERT INTO group_resources (account_id, group_id, resource_id, resource_type)"
        " SELECT DISTINCT ON (g.id, nr.id) $1, g.id, nr.id, nr.type"
        " FROM nb_src s CROSS JOIN jsonb_array_elements(CASE WHEN jsonb_typeof(" JS("resources", "[]") ") = 'array'"
        "  THEN " JS("resources", "[]") " ELSE '[]' END) e"
        " JOIN groups g ON g.account_id = $1 AND g.id = s.r->>'id'"
        " JOIN network_resources nr ON nr.account_id = $1 AND nr.id = e->>'ID'"
        " WHERE s.t = 'groups' AND s.r->>'account_id' = $1" },
        { "INSERT INTO network_routers (id, network_id, account_id, peer, peer_groups, masquerade, metric, enabled)"
        " SELECT s.r->>'id', s.r->>'network_id', $1, nullif(s.r->>'peer', ''),"
        " CASE WHEN coalesce(s.r->>'peer', '') = '' THEN " ARR("peer_groups") " ELSE '{}' END,"
        " " BOOL("masquerade", "false") ", least(greatest(" INT("metric", "9999") ", 1), 9999)::integer,"
        " " BOOL("enabled", "true") KEPT("network_routers") },
        /* custom DNS zones */
        { "INSERT INTO dns_zones (id, account_id, name, domain, enabled, enable_search_domain, distribution_groups)"
        " SELECT s.r->>'id', $1, " TXT("name") ", " TXT("domain") ", " BOOL("enabled", "true") ","
        " " BOOL("enable_search_domain", "false") ", " ARR("distribution_groups") KEPT("zones") },
        { "INSERT INTO dns_records (id, zone_id, account_id, name, type, content, ttl)"
        " SELECT s.r->>'id', s.r->>'zone_id', $1, " TXT("name") ", s.r->>'type', " TXT("content") ","
        " greatest(" INT("ttl", "300") ", 0)::integer" KEPT("records") },
        /* activity events, once each (an --update adds only new ones) */
        { "INSERT INTO events (\"timestamp\", activity, initiator_id, target_id, account_id, meta, pii_key)"
        " SELECT coalesce(" TS("timestamp") ", now()), " INT("activity", "0") "::integer, " TXT("initiator_id") ","
        " " TXT("target_id") ", $1, CASE WHEN jsonb_typeof(" JS("meta", "{}") ") = 'object' THEN " JS("meta", "{}")
        "  ELSE '{}' END, " TXT("pii_key") ROWS("events")
        " AND NOT EXISTS (SELECT 1 FROM events o WHERE o.account_id = $1"
        "  AND o.\"timestamp\" = coalesce(" TS("timestamp") ", now()) AND o.activity = " INT("activity", "0") "::integer"
        "  AND o.initiator_id = " TXT("initiator_id") " AND o.target_id = " TXT("target_id") ")" },
};

static const char SQL_SKIPPED[] =
        "SELECT DISTINCT ON (t, id) t, id, reason FROM nb_skip ORDER BY t, id, reason";

static const char SQL_COUNTS[] =
        "SELECT (SELECT count(*) FROM peers WHERE account_id = $1), (SELECT count(*) FROM users WHERE account_id = $1),"
        " (SELECT count(*) FROM groups WHERE account_id = $1), (SELECT count(*) FROM policies WHERE account_id = $1),"
        " (SELECT count(*) FROM routes WHERE account_id = $1), (SELECT count(*) FROM setup_keys WHERE account_id = $1),"
        " (SELECT count(*) FROM personal_access_tokens WHERE account_id = $1),"
        " (SELECT count(*) FROM name_server_groups WHERE account_id = $1),"
        " (SELECT count(*) FROM posture_checks WHERE account_id = $1),"
        " (SELECT count(*) FROM networks WHERE account_id = $1), (SELECT count(*) FROM dns_zones WHERE account_id = $1),"
        " (SELECT count(*) FROM events WHERE account_id = $1)";

int import_map_account(cp_store_tx *tx, const char *account_id, bool update, import_counts *ret, FILE *out,
                       cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *net = NULL, *owner = NULL, *skipped = NULL, *counts = NULL;
        int r;

        r = cp_store_tx_exec(tx, SQL_NETWORK, 1, &account_id, &net, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(net) != 1 || !cp_store_rows_bool(net, 0, 0))
                return cp_error_set(reterr, -EINVAL, "account %s: its network (accounts.network_net) cannot be read",
                                    account_id);
        r = cp_store_tx_exec(tx, "DELETE FROM nb_skip", 0, NULL, NULL, reterr);
        if (r >= 0 && update)
                r = exec_list(tx, SQL_CLEAR, ELEMENTSOF(SQL_CLEAR), 1, &account_id, reterr);
        if (r >= 0)
                r = exec_list(tx, SQL_CHECKS, ELEMENTSOF(SQL_CHECKS), 1, &account_id, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, SQL_OWNER_SKIPPED, 1, &account_id, &owner, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(owner) > 0)
                return cp_error_set(reterr, -EEXIST,
                                    "account %s: its owner %s cannot be imported (%s); delete the account of ours that "
                                    "holds that user first, e.g. one a first sign-in to the cluster created",
                                    account_id, cp_store_rows_get(owner, 0, 0), cp_store_rows_get(owner, 0, 1));
        r = cp_store_tx_exec(tx, SQL_ACCOUNT, 1, &account_id, NULL, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "ANALYZE nb_skip", 0, NULL, NULL, reterr);
        if (r >= 0)
                r = exec_list(tx, SQL_MAP, ELEMENTSOF(SQL_MAP), 1, &account_id, reterr);
        if (r >= 0 && update)
                r = exec_list(tx, SQL_PRUNE, ELEMENTSOF(SQL_PRUNE), 1, &account_id, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, SQL_SKIPPED, 0, NULL, &skipped, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, SQL_COUNTS, 1, &account_id, &counts, reterr);
        if (r < 0)
                return r;
        for (int i = 0; i < cp_store_rows_count(skipped); i++) {
                if (out)
                        fprintf(out, "skipped %s %s: %s\n", cp_store_rows_get(skipped, i, 0),
                                cp_store_rows_get(skipped, i, 1), cp_store_rows_get(skipped, i, 2));
                ret->skipped++;
        }
        int64_t *f[] = { &ret->peers, &ret->users, &ret->groups, &ret->policies, &ret->routes, &ret->setup_keys,
                         &ret->pats, &ret->ns_groups, &ret->posture, &ret->networks, &ret->zones, &ret->events };
        for (size_t i = 0; i < ELEMENTSOF(f); i++)
                *f[i] = strtoll(cp_store_rows_get(counts, 0, (int) i) ?: "0", NULL, 10);
        return 0;
}
