#include "cp/base.h"
#include "cp/store-expose.h"
#include "cp/crypto.h"
#include "store-int.h"

/* The peer record's columns, read by peer_from_row() in store-peers.c by
 * position (enum peer_col there); keep both in the same order. The base
 * part is what Login and Sync need (cp_store_peer_lookup); the detail
 * part, the values that travel as JSON, completes the record. */
#define PEER_BASE_COLUMNS \
        "p.id, p.account_id, p.key, host(p.ip), p.dns_label, p.name, COALESCE(p.user_id, ''), p.ssh_key," \
        " p.ssh_enabled, p.login_expiration_enabled, p.inactivity_expiration_enabled, p.ephemeral," \
        " p.allow_extra_dns_labels," \
        " COALESCE((EXTRACT(EPOCH FROM p.last_login) * 1000000)::bigint, 0)," \
        " (EXTRACT(EPOCH FROM p.created_at) * 1000000)::bigint," \
        " COALESCE(host(p.location_connection_ip), '')," \
        " p.peer_status_connected, p.peer_status_login_expired, p.peer_status_requires_approval," \
        " p.peer_status_session_started_at," \
        " COALESCE((EXTRACT(EPOCH FROM p.peer_status_last_seen) * 1000000)::bigint, 0)," \
        " p.meta_hostname, p.meta_go_os, p.meta_kernel, p.meta_core, p.meta_platform, p.meta_os," \
        " p.meta_os_version, p.meta_wt_version, p.meta_ui_version, p.meta_kernel_version," \
        " p.meta_system_serial_number, p.meta_system_product_name, p.meta_system_manufacturer," \
        " COALESCE(p.meta_environment->>'Cloud', ''), COALESCE(p.meta_environment->>'Platform', '')," \
        " p.meta_sync_message_version"
#define PEER_DETAIL_COLUMNS \
        "array_to_json(p.extra_dns_labels)::text," \
        " p.meta_network_addresses::text, p.meta_files::text, p.meta_flags::text," \
        " array_to_json(p.meta_capabilities)::text," \
        " COALESCE((SELECT json_agg(gp.group_id ORDER BY gp.group_id) FROM group_peers gp" \
        " WHERE gp.account_id = p.account_id AND gp.peer_id = p.id), '[]')::text"
#define PEER_COLUMNS PEER_BASE_COLUMNS ", " PEER_DETAIL_COLUMNS

/* The 19 stored meta columns, in the order of meta_params() in
 * store-peers.c, and their parameters starting at $n. */
#define PEER_META_COLUMNS \
        "meta_hostname, meta_go_os, meta_kernel, meta_core, meta_platform, meta_os, meta_os_version," \
        " meta_wt_version, meta_ui_version, meta_kernel_version, meta_network_addresses," \
        " meta_system_serial_number, meta_system_product_name, meta_system_manufacturer," \
        " meta_environment, meta_flags, meta_files, meta_capabilities, meta_sync_message_version"
#define P_(n) "$" #n
#define PEER_META_PARAMS_(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s) \
        P_(a) ", " P_(b) ", " P_(c) ", " P_(d) ", " P_(e) ", " P_(f) ", " P_(g) ", " P_(h) ", " \
        P_(i) ", " P_(j) ", " P_(k) "::jsonb, " P_(l) ", " P_(m) ", " P_(n) ", " P_(o) "::jsonb, " \
        P_(p) "::jsonb, " P_(q) "::jsonb, " P_(r) "::integer[], " P_(s) "::integer"
#define PEER_META_PARAMS(start) PEER_META_PARAMS_##start
#define PEER_META_PARAMS_7 PEER_META_PARAMS_(7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25)

/* The same columns of the row alias t ("p."), to compare with. */
#define PEER_META_COLUMNS_OF(t) \
        t "meta_hostname, " t "meta_go_os, " t "meta_kernel, " t "meta_core, " t "meta_platform, " \
        t "meta_os, " t "meta_os_version, " t "meta_wt_version, " t "meta_ui_version, " \
        t "meta_kernel_version, " t "meta_network_addresses, " t "meta_system_serial_number, " \
        t "meta_system_product_name, " t "meta_system_manufacturer, " t "meta_environment, " \
        t "meta_flags, " t "meta_files, " t "meta_capabilities, " t "meta_sync_message_version"
/* The values a login or connect writes into PEER_META_COLUMNS: each
 * parameter from $6 on, or the stored value (row alias p) where it is
 * NULL, so a request without meta passes NULLs and keeps the row's. */
#define PEER_META_OR_KEPT_(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p_, q, r, s) \
        "COALESCE(" P_(a) ", p.meta_hostname), COALESCE(" P_(b) ", p.meta_go_os)," \
        " COALESCE(" P_(c) ", p.meta_kernel), COALESCE(" P_(d) ", p.meta_core)," \
        " COALESCE(" P_(e) ", p.meta_platform), COALESCE(" P_(f) ", p.meta_os)," \
        " COALESCE(" P_(g) ", p.meta_os_version), COALESCE(" P_(h) ", p.meta_wt_version)," \
        " COALESCE(" P_(i) ", p.meta_ui_version), COALESCE(" P_(j) ", p.meta_kernel_version)," \
        " COALESCE(" P_(k) "::jsonb, p.meta_network_addresses)," \
        " COALESCE(" P_(l) ", p.meta_system_serial_number), COALESCE(" P_(m) ", p.meta_system_product_name)," \
        " COALESCE(" P_(n) ", p.meta_system_manufacturer), COALESCE(" P_(o) "::jsonb, p.meta_environment)," \
        " COALESCE(" P_(p_) "::jsonb, p.meta_flags), COALESCE(" P_(q) "::jsonb, p.meta_files)," \
        " COALESCE(" P_(r) "::integer[], p.meta_capabilities)," \
        " COALESCE(" P_(s) "::integer, p.meta_sync_message_version)"
#define PEER_META_OR_KEPT_6 \
        PEER_META_OR_KEPT_(6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)

/* The account settings a LoginResponse and the expiry check need (row
 * alias a), read by settings_from_row() in store-peers.c in this order. */
#define ACCOUNT_SETTINGS_COLUMNS \
        "a.network_net::text, masklen(a.network_net), a.settings_dns_domain," \
        " a.settings_peer_login_expiration_enabled, a.settings_peer_login_expiration," \
        " a.settings_peer_inactivity_expiration_enabled, a.settings_peer_inactivity_expiration," \
        " a.settings_lazy_connection_enabled, a.settings_routing_peer_dns_resolution_enabled," \
        " a.settings_extra_peer_approval_enabled, a.network_serial, a.suspended_at IS NOT NULL"

/* The database clock in Unix nanoseconds (microsecond resolution).
 * clock_timestamp(), not now(): the time of this statement, not of a
 * surrounding transaction. */
#define DB_NOW_NS "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint * 1000"

/* NetBird's peer event meta (Peer.EventMeta): name, fqdn under the
 * account's DNS domain override or the server's ($dom), ip, created_at and
 * the location fields. Needs accounts joined as a. */
#define PEER_EVENT_META(t, dom) \
        "jsonb_build_object('name', " t ".name, 'fqdn', CASE WHEN COALESCE(NULLIF(a.settings_dns_domain, ''), " \
        dom ", '') = '' THEN '' ELSE " t ".dns_label || '.' || COALESCE(NULLIF(a.settings_dns_domain, ''), " \
        dom ") END, 'ip', host(" t ".ip), 'created_at', " t ".created_at," \
        " 'location_city_name', " t ".location_city_name, 'location_country_code', " t ".location_country_code," \
        " 'location_geo_name_id', " t ".location_geo_name_id," \
        " 'location_connection_ip', COALESCE(host(" t ".location_connection_ip), ''))"

/* An SSO peer's login deadline has passed (peer alias t, account alias
 * a): expiration on for the account and the peer, last_login +
 * settings_peer_login_expiration (ns) at or before now. */
#define LOGIN_RAN_OUT(t, a) \
        a ".settings_peer_login_expiration_enabled AND " t ".login_expiration_enabled" \
        " AND " t ".last_login IS NOT NULL AND " t ".last_login + (" a ".settings_peer_login_expiration / 1000)" \
        " * interval '1 microsecond' <= now()"
/* NetBird's inactivity expiration (Peer.SessionExpired): inactivity
 * expiration on for the account and the peer, the peer disconnected, and
 * last_seen + settings_peer_inactivity_expiration at or before now. */
#define INACTIVE_TOO_LONG(t, a) \
        a ".settings_peer_inactivity_expiration_enabled AND " t ".inactivity_expiration_enabled" \
        " AND NOT " t ".peer_status_connected AND " t ".peer_status_last_seen IS NOT NULL" \
        " AND " t ".peer_status_last_seen + (" a ".settings_peer_inactivity_expiration / 1000)" \
        " * interval '1 microsecond' <= now()"

/* What a landing fenced connect writes (both connect statements): the
 * session ($3 token, $4 owning replica), the connection address ($5) and
 * the meta ($6..$24), NULL meaning "keep what is stored". */
#define PEER_CONNECT_SET(cc, city, gid) PEER_CONNECT_SET_TOKEN("$3::bigint", cc, city, gid)
#define PEER_CONNECT_SET_TOKEN(tok, cc, city, gid) \
        "peer_status_connected = TRUE, peer_status_last_seen = CURRENT_TIMESTAMP," \
        " peer_status_session_started_at = " tok ", peer_status_login_expired = FALSE," \
        " peer_status_replica_id = $4, location_connection_ip = COALESCE($5::inet, p.location_connection_ip)," \
        " (" PEER_META_COLUMNS ") = (" PEER_META_OR_KEPT_6 ")," \
        " location_country_code = COALESCE(" cc "::text, p.location_country_code)," \
        " location_city_name = COALESCE(" city "::text, p.location_city_name)," \
        " location_geo_name_id = COALESCE(" gid "::bigint, p.location_geo_name_id)"

/* Posture re-evaluation (docs/protocol.md "Location and posture"): the
 * account has posture checks, and a connect changes what they read: the
 * meta fields os, os_version, kernel_version, go_os, network addresses,
 * files ($7 $11 $12 $15 $16 $22, NULL = keep), the connection address
 * ($5; NetBird's peer network range check reads it too) or the location's
 * country or city (cc, city; NULL = keep). Row alias p, before the write. */
#define HAS_POSTURE_CHECKS HAS_POSTURE_CHECKS_OF("$1")
#define HAS_POSTURE_CHECKS_OF(acc) "EXISTS (SELECT 1 FROM posture_checks pc WHERE pc.account_id = " acc ")"
#define POSTURE_INPUTS_CHANGED(cc, city) POSTURE_INPUTS_CHANGED_IP("$5", cc, city)
#define POSTURE_INPUTS_CHANGED_IP(ip, cc, city) \
        "(p.meta_go_os, p.meta_os, p.meta_os_version, p.meta_kernel_version, p.meta_network_addresses," \
        " p.meta_files, p.location_connection_ip, p.location_country_code, p.location_city_name)" \
        " IS DISTINCT FROM" \
        " (COALESCE($7, p.meta_go_os), COALESCE($11, p.meta_os), COALESCE($12, p.meta_os_version)," \
        " COALESCE($15, p.meta_kernel_version), COALESCE($16::jsonb, p.meta_network_addresses)," \
        " COALESCE($22::jsonb, p.meta_files), COALESCE(" ip "::inet, p.location_connection_ip)," \
        " COALESCE(" cc "::text, p.location_country_code), COALESCE(" city "::text, p.location_city_name))"

/* Every statement the store prepares, by cp_store_stmt. Parameters are
 * passed as text; PostgreSQL infers their types from the statement. */
static const struct {
        const char *name;
        const char *sql;
        int nparams;
} statements[_ST_MAX] = {
        [ST_PING] = { "ping", "SELECT 1", 0 },
        [ST_DB_NOW] = { "db_now", "SELECT " DB_NOW_NS, 0 },

        /* Fenced status: one UPDATE each, netbird-protocol.md section 5.2.
         * The connect lands only for a strictly newer token ($3). In the
         * same statement, so only when it lands and under its row lock,
         * it writes the connection address ($5) and the meta ($6..$24),
         * NULL = keep (cp_store_peer_connect). $25, when not NULL, is the
         * agent version the caller expects stored and sends again: the
         * connect then also needs that, so a version that changed
         * meanwhile (the serial would have to move) fails it; the caller
         * then runs peer_connect_version. $26..$28: the location (country
         * code, city, geoname id; NULL = keep). It also needs that the
         * connect changes no posture input while the account has posture
         * checks (else peer_connect_version, which bumps the serial). */
        [ST_PEER_CONNECT] = { "peer_connect",
                "UPDATE peers p SET " PEER_CONNECT_SET("$26", "$27", "$28")
                " WHERE p.account_id = $1 AND p.id = $2"
                " AND p.peer_status_session_started_at < $3::bigint"
                " AND ($25::text IS NULL OR p.meta_wt_version = $25)"
                " AND NOT (" HAS_POSTURE_CHECKS " AND " POSTURE_INPUTS_CHANGED("$26", "$27") ")", 28 },
        /* The same connect when the agent version may change, or the
         * inputs of posture checks (plain connect refused above): o locks
         * the row with the same fence and compares the stored version
         * and posture inputs with the ones written (a row changed
         * meanwhile is re-read under the lock, so the answer is exact); b
         * bumps the serial when the version differs (remote peers show
         * it) or the posture inputs do while the account has checks.
         * Location: $25..$27. Peers row before accounts row,
         * as everywhere in store-peers.c. One row: landed, with whether
         * the version changed and the serial after the statement; none:
         * fenced off, nothing written. */
        [ST_PEER_CONNECT_VERSION] = { "peer_connect_version",
                "WITH o AS (SELECT p.id,"
                " p.meta_wt_version IS DISTINCT FROM COALESCE($13, p.meta_wt_version) AS version,"
                " " HAS_POSTURE_CHECKS " AND " POSTURE_INPUTS_CHANGED("$25", "$26") " AS posture"
                " FROM peers p WHERE p.account_id = $1 AND p.id = $2"
                " AND p.peer_status_session_started_at < $3::bigint FOR NO KEY UPDATE),"
                " u AS (UPDATE peers p SET " PEER_CONNECT_SET("$25", "$26", "$27")
                " FROM o WHERE p.account_id = $1 AND p.id = $2 AND p.id = o.id"
                " AND p.peer_status_session_started_at < $3::bigint"
                " RETURNING o.version, o.posture),"
                " b AS (UPDATE accounts SET network_serial = network_serial + 1"
                " WHERE id = $1 AND (SELECT version OR posture FROM u) RETURNING network_serial)"
                " SELECT u.version, COALESCE((SELECT network_serial FROM b),"
                " (SELECT network_serial FROM accounts WHERE id = $1)), u.posture FROM u", 27 },
        /* The Sync open in one round trip (cp_store_peer_open): the
         * lookup by key ($1) and the plain fenced connect in one UPDATE,
         * which lands only where the open needs nothing the lookup would
         * have decided otherwise: the account not suspended, the peer's
         * login not expired (flag clear; an SSO peer's deadline, by the
         * replica's clock $3 in Unix microseconds, not passed; its owner
         * not blocked), the agent version unchanged ($2, NULL = no meta)
         * and no posture input changed while the account has posture
         * checks. The token is the database clock, above the stored one
         * (computed under the row lock, so the connect lands as the
         * newest; a stored token at the top of the range is never
         * beaten). $4 replica, $5 address, $6..$24 meta, $25..$27
         * location, as peer_connect. One row: landed, with the peer, its
         * account, the token and the serial; none: the caller takes the
         * lookup and peer_connect(_version) path, which decides. */
        [ST_PEER_OPEN] = { "peer_open",
                "UPDATE peers p SET " PEER_CONNECT_SET_TOKEN(
                        "GREATEST(" DB_NOW_NS ", p.peer_status_session_started_at + 1)", "$25", "$26", "$27")
                " FROM accounts a WHERE p.key = $1 AND a.id = p.account_id AND a.suspended_at IS NULL"
                " AND p.peer_status_session_started_at < 9223372036854775807"
                " AND NOT p.peer_status_login_expired"
                " AND ($2::text IS NULL OR p.meta_wt_version = $2)"
                " AND NOT (COALESCE(p.user_id, '') <> '' AND (COALESCE((SELECT u.blocked FROM users u"
                " WHERE u.account_id = p.account_id AND u.id = p.user_id), FALSE)"
                " OR (a.settings_peer_login_expiration_enabled AND p.login_expiration_enabled"
                " AND p.last_login IS NOT NULL AND p.last_login + (a.settings_peer_login_expiration / 1000)"
                " * interval '1 microsecond' <= 'epoch'::timestamptz + $3::bigint * interval '1 microsecond')))"
                " AND NOT (" HAS_POSTURE_CHECKS_OF("p.account_id") " AND " POSTURE_INPUTS_CHANGED("$25", "$26") ")"
                " RETURNING p.id, p.account_id, p.peer_status_session_started_at, a.network_serial", 27 },
        [ST_PEER_DISCONNECT] = { "peer_disconnect",
                "UPDATE peers SET peer_status_connected = FALSE,"
                " peer_status_last_seen = CURRENT_TIMESTAMP,"
                " peer_status_session_started_at = 0,"
                " peer_status_replica_id = NULL"
                " WHERE account_id = $1 AND id = $2"
                " AND peer_status_session_started_at = $3::bigint", 3 },
        [ST_PEER_STATUS] = { "peer_status",
                "SELECT peer_status_connected, peer_status_login_expired,"
                " peer_status_requires_approval, peer_status_session_started_at,"
                " COALESCE((EXTRACT(EPOCH FROM peer_status_last_seen) * 1000000)::bigint, 0),"
                " COALESCE(peer_status_replica_id, '')"
                " FROM peers WHERE account_id = $1 AND id = $2", 2 },

        [ST_ACCOUNT_COUNT] = { "account_count", "SELECT count(*) FROM accounts", 0 },
        [ST_ACCOUNT_INSERT] = { "account_insert",
                "INSERT INTO accounts (id, created_by, domain, network_identifier, network_net,"
                " network_serial, settings_dns_domain)"
                " VALUES ($1, $2, $3, $4, $5::cidr, 0, $6)", 6 },
        [ST_GROUP_INSERT] = { "group_insert",
                "INSERT INTO groups (id, account_id, name, issued) VALUES ($1, $2, $3, $4)", 4 },
        [ST_POLICY_INSERT] = { "policy_insert",
                "INSERT INTO policies (id, account_id, name, description, enabled)"
                " VALUES ($1, $2, $3, $4, $5::boolean)", 5 },
        [ST_POLICY_RULE_INSERT] = { "policy_rule_insert",
                "INSERT INTO policy_rules (id, policy_id, account_id, name, description, enabled,"
                " action, bidirectional, protocol, sources, destinations)"
                " VALUES ($1, $2, $3, $4, $5, $6::boolean, $7, $8::boolean, $9,"
                " $10::text[], $11::text[])", 11 },
        [ST_USER_INSERT] = { "user_insert",
                "INSERT INTO users (id, account_id, role, is_service_user, non_deletable,"
                " service_user_name, name, pii_key, issued)"
                " VALUES ($1, $2, $3, $4::boolean, $5::boolean, $6, $7, $8, 'api')", 8 },
        [ST_PAT_INSERT] = { "pat_insert",
                "INSERT INTO personal_access_tokens (id, account_id, user_id, name, hashed_token,"
                " expiration_date, created_by)"
                " VALUES ($1, $2, $3, $4, $5,"
                " CURRENT_TIMESTAMP + make_interval(days => $6::int), $7)", 7 },
        [ST_SETUP_KEY_INSERT] = { "setup_key_insert",
                "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, expires_at,"
                " usage_limit, auto_groups, ephemeral)"
                " VALUES ($1, $2, $3, $4, $5, $6,"
                " CASE WHEN $7::bigint > 0 THEN CURRENT_TIMESTAMP + make_interval(secs => $7::bigint)"
                " END, $8::int, $9::text[], $10::boolean)", 10 },
        [ST_EVENT_INSERT] = { "event_insert",
                "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " VALUES ($1::int, $2, $3, $4, $5::jsonb)", 5 },
        /* The same at most once per account and activity in 10 minutes:
         * for refusals that agents retry forever (the device limit). */
        [ST_EVENT_INSERT_SPARSE] = { "event_insert_sparse",
                "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $1::int, $2, $3, $4, $5::jsonb WHERE NOT EXISTS (SELECT 1 FROM events"
                " WHERE account_id = $4 AND activity = $1::int"
                " AND \"timestamp\" > CURRENT_TIMESTAMP - interval '10 minutes')", 5 },

        /* Server key pair (store-serverkey.c): first writer wins, all read. */
        /* The previous key comes back only inside its grace period, by the
         * database clock, so every replica drops it at the same moment. */
        [ST_SERVER_KEY_GET] = { "server_key_get",
                "SELECT public_key, private_key_enc, generation,"
                " CASE WHEN previous_expires_at > CURRENT_TIMESTAMP THEN previous_public_key END,"
                " CASE WHEN previous_expires_at > CURRENT_TIMESTAMP THEN previous_private_key_enc END"
                " FROM server_keys WHERE purpose = $1", 1 },
        [ST_SERVER_KEY_INSERT] = { "server_key_insert",
                "INSERT INTO server_keys (purpose, public_key, private_key_enc) VALUES ($1, $2, $3)"
                " ON CONFLICT (purpose) DO NOTHING", 3 },
        [ST_SERVER_KEY_INFO] = { "server_key_info",
                "SELECT public_key, generation,"
                " (extract(epoch FROM created_at) * 1000000)::bigint,"
                " (extract(epoch FROM rotated_at) * 1000000)::bigint,"
                " previous_public_key, (extract(epoch FROM previous_expires_at) * 1000000)::bigint,"
                " coalesce(previous_expires_at > CURRENT_TIMESTAMP, false)"
                " FROM server_keys WHERE purpose = $1", 1 },
        [ST_SERVER_KEY_LOCK] = { "server_key_lock",
                "SELECT public_key, private_key_enc,"
                " coalesce(previous_expires_at > CURRENT_TIMESTAMP, false)"
                " FROM server_keys WHERE purpose = $1 FOR UPDATE", 1 },
        [ST_SERVER_KEY_ROTATE] = { "server_key_rotate",
                "UPDATE server_keys SET previous_public_key = public_key,"
                " previous_private_key_enc = private_key_enc,"
                " previous_expires_at = CURRENT_TIMESTAMP + $4::bigint * interval '1 second',"
                " public_key = $2, private_key_enc = $3, rotated_at = CURRENT_TIMESTAMP,"
                " generation = generation + 1"
                " WHERE purpose = $1", 4 },

        /* Peers for login and registration (store-peers.c). PEER_COLUMNS
         * is the record layout peer_from_row() reads, in that order. */
        [ST_PEER_GET_BY_KEY] = { "peer_get_by_key",
                "SELECT " PEER_COLUMNS " FROM peers p WHERE p.key = $1", 1 },
        [ST_PEER_GET] = { "peer_get",
                "SELECT " PEER_COLUMNS " FROM peers p WHERE p.account_id = $1 AND p.id = $2", 2 },
        [ST_ACCOUNT_SETTINGS] = { "account_settings",
                "SELECT " ACCOUNT_SETTINGS_COLUMNS " FROM accounts a WHERE a.id = $1", 1 },
        /* Login and Sync open: the peer, its account's settings and the
         * database clock in one round trip (cp_store_peer_lookup). */
        [ST_PEER_LOOKUP] = { "peer_lookup",
                "SELECT " PEER_BASE_COLUMNS ", " ACCOUNT_SETTINGS_COLUMNS ", " DB_NOW_NS ","
                " COALESCE((SELECT u.blocked FROM users u WHERE u.account_id = p.account_id"
                " AND u.id = p.user_id), FALSE)"
                " FROM peers p JOIN accounts a ON a.id = p.account_id WHERE p.key = $1", 1 },
        /* KEY SHARE: a range change (REST API, which holds the row FOR
         * UPDATE while it re-addresses every peer) finishes before the
         * range is read; registrations do not wait for each other. */
        [ST_ACCOUNT_NETWORK] = { "account_network",
                "SELECT host(network_net), masklen(network_net), family(network_net)"
                " FROM accounts WHERE id = $1 FOR KEY SHARE", 1 },
        [ST_ACCOUNT_SERIAL_BUMP] = { "account_serial_bump",
                "UPDATE accounts SET network_serial = network_serial + 1 WHERE id = $1"
                " RETURNING network_serial", 1 },
        /* One conditional UPDATE claims a use: the row lock makes the check
         * and the increment one decision, so concurrent registrations can
         * never exceed usage_limit or use a one-off key twice. */
        [ST_SETUP_KEY_CLAIM] = { "setup_key_claim",
                "UPDATE setup_keys SET used_times = used_times + 1, last_used = CURRENT_TIMESTAMP"
                " WHERE key = $1 AND NOT revoked"
                " AND (expires_at IS NULL OR expires_at > CURRENT_TIMESTAMP)"
                " AND (usage_limit = 0 OR used_times < usage_limit)"
                " AND (type = 'reusable' OR used_times = 0)"
                " RETURNING id, account_id, name, ephemeral, allow_extra_dns_labels", 1 },
        /* Registration locks the key's account before it claims the key:
         * REST writes lock the account row first and may then touch the
         * key (a setup-key update), so both take the two locks in the same
         * order and cannot deadlock. KEY SHARE lets registrations run side
         * by side and waits only for a REST writer of the account. */
        [ST_SETUP_KEY_ACCOUNT_LOCK] = { "setup_key_account_lock",
                "SELECT a.id FROM accounts a WHERE a.id = (SELECT k.account_id FROM setup_keys k"
                " WHERE k.key = $1) FOR KEY SHARE", 1 },
        [ST_PEER_LABEL_TAKEN] = { "peer_label_taken",
                "SELECT EXISTS (SELECT 1 FROM peers WHERE account_id = $1 AND dns_label = $2)", 2 },
        /* First free host offset in [$3, $4] of the network whose address
         * is $2; the series is produced lazily (target list), so a sparse
         * network costs a probe or two. */
        [ST_PEER_FREE_IP] = { "peer_free_ip",
                "SELECT host($2::inet + s.o) FROM (SELECT generate_series($3::bigint, $4::bigint) AS o) s"
                " WHERE NOT EXISTS (SELECT 1 FROM peers p WHERE p.account_id = $1"
                " AND p.ip = $2::inet + s.o) LIMIT 1", 4 },
        [ST_PEER_INSERT] = { "peer_insert",
                "INSERT INTO peers (id, account_id, key, ip, name, dns_label, " PEER_META_COLUMNS ","
                " ssh_key, ephemeral, allow_extra_dns_labels, extra_dns_labels, location_connection_ip,"
                " user_id, login_expiration_enabled, inactivity_expiration_enabled, last_login,"
                " created_at, peer_status_last_seen, peer_status_connected,"
                " peer_status_session_started_at, peer_status_login_expired,"
                " location_country_code, location_city_name, location_geo_name_id)"
                " VALUES ($1, $2, $3, $4::inet, $5, $6, " PEER_META_PARAMS(7) ","
                " $26, $27::boolean, $28::boolean, $29::text[], $30::inet,"
                " NULLIF($31, ''), $32::boolean, $32::boolean,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, FALSE, 0, FALSE,"
                " $33, $34, $35::bigint)"
                " ON CONFLICT (key) DO NOTHING RETURNING id", 35 },
        [ST_PEER_GROUP_ALL] = { "peer_group_all",
                "INSERT INTO group_peers (account_id, group_id, peer_id)"
                " SELECT account_id, id, $2 FROM groups WHERE account_id = $1 AND name = 'All'"
                " ON CONFLICT DO NOTHING", 2 },
        /* Auto-groups of the key that exist in the key's (= the peer's)
         * account; ids of other accounts or deleted groups match nothing. */
        [ST_PEER_GROUP_AUTO] = { "peer_group_auto",
                "INSERT INTO group_peers (account_id, group_id, peer_id)"
                " SELECT g.account_id, g.id, $2 FROM setup_keys k"
                " JOIN groups g ON g.account_id = k.account_id AND g.id = ANY (k.auto_groups)"
                " WHERE k.account_id = $1 AND k.id = $3"
                " ON CONFLICT DO NOTHING", 3 },
        /* A peer activity event with NetBird's peer meta ($6 merged in). */
        /* $7: the event's target when it is not the peer id (NetBird
         * targets some peer events at the peer's IP); NULL = the peer id. */
        [ST_PEER_EVENT] = { "peer_event",
                "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $1::int, $2, COALESCE($7, p.id), p.account_id, " PEER_EVENT_META("p", "$5")
                " || $6::jsonb"
                " FROM peers p JOIN accounts a ON a.id = p.account_id"
                " WHERE p.account_id = $3 AND p.id = $4", 7 },
        /* Login of a known peer (cp_store_peer_login_update) in one
         * statement: o locks the row and compares it with what the login
         * writes: the ssh key ($3), the connection address ($4) and the
         * meta ($6..$24), NULL = keep; u writes only when something
         * differs (an unchanged login writes no row version), and nothing
         * when extra DNS labels are asked for ($5) but not allowed; b
         * bumps the serial when u wrote a change remote peers see (ssh
         * key, agent version) or a posture input while the account has
         * posture checks (POSTURE_INPUTS_CHANGED; a Login does not look
         * the location up). Peers row before accounts row, as
         * everywhere in store-peers.c. No row: no such peer in that
         * account. */
        [ST_PEER_LOGIN_UPDATE] = { "peer_login_update",
                "WITH o AS (SELECT p.id, p.allow_extra_dns_labels AS allowed,"
                " (" PEER_META_COLUMNS_OF("p.") ") IS DISTINCT FROM (" PEER_META_OR_KEPT_6 ") AS meta,"
                " p.meta_wt_version IS DISTINCT FROM COALESCE($13, p.meta_wt_version) AS version,"
                " p.ssh_key IS DISTINCT FROM COALESCE($3, p.ssh_key) AS ssh,"
                " p.location_connection_ip IS DISTINCT FROM COALESCE($4::inet, p.location_connection_ip) AS ip,"
                " " HAS_POSTURE_CHECKS " AND " POSTURE_INPUTS_CHANGED_IP("$4", "NULL", "NULL") " AS posture"
                " FROM peers p WHERE p.account_id = $1 AND p.id = $2 FOR NO KEY UPDATE),"
                " u AS (UPDATE peers p SET ssh_key = COALESCE($3, p.ssh_key),"
                " location_connection_ip = COALESCE($4::inet, p.location_connection_ip),"
                " (" PEER_META_COLUMNS ") = (" PEER_META_OR_KEPT_6 ")"
                " FROM o WHERE p.account_id = $1 AND p.id = $2 AND p.id = o.id"
                " AND (NOT $5::boolean OR o.allowed) AND (o.meta OR o.ssh OR o.ip)"
                " RETURNING o.version OR o.ssh AS seen, o.posture),"
                " b AS (UPDATE accounts SET network_serial = network_serial + 1"
                " WHERE id = $1 AND (SELECT seen OR posture FROM u) RETURNING network_serial)"
                " SELECT o.allowed, o.meta, o.version, o.ssh, o.ip,"
                " COALESCE((SELECT network_serial FROM b), (SELECT network_serial FROM accounts WHERE id = $1)),"
                " COALESCE((SELECT posture FROM u), FALSE)"
                " FROM o", 24 },
        /* Delete and log in one statement, so the event carries the
         * deleted row's values; group_peers rows go by cascade, and so
         * do the services the peer exposed, whose REMOVED change rows
         * the proxies read are written here. */
        [ST_PEER_DELETE] = { "peer_delete",
                "WITH d AS (DELETE FROM peers WHERE account_id = $1 AND id = $2 RETURNING *),"
                CP_STORE_SQL_EXPOSE_GONE("d")
                " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $5::int, COALESCE($3, NULLIF(d.user_id, ''), 'sys'), d.id, d.account_id, "
                PEER_EVENT_META("d", "$4")
                " FROM d JOIN accounts a ON a.id = d.account_id RETURNING id", 5 },
        /* The serials of many accounts in one read, in the order asked
         * (NULL for an account that does not exist). */
        [ST_ACCOUNT_SERIALS] = { "account_serials",
                "SELECT a.network_serial FROM unnest($1::text[]) WITH ORDINALITY AS u(id, i)"
                " LEFT JOIN accounts a ON a.id = u.id ORDER BY u.i", 1 },
        /* A serial that went back (a restored database) raised past what
         * the agents were sent (cp_store_account_serial_raise); never
         * lowers it. */
        [ST_ACCOUNT_SERIAL_RAISE] = { "account_serial_raise",
                "UPDATE accounts SET network_serial = GREATEST(network_serial, $2::bigint) WHERE id = $1"
                " RETURNING network_serial", 2 },
        /* Login expiration (cp_store_expire_logins): one statement. The
         * UPDATE's WHERE NOT peer_status_login_expired, re-checked under
         * the row lock, hands every expired peer to exactly one caller;
         * the events and the one serial bump per account follow from the
         * rows this caller's UPDATE returned, and from nothing else.
         * Durations are nanoseconds; the interval has microseconds. */
        [ST_PEER_EXPIRE_LOGINS] = { "peer_expire_logins",
                "WITH e AS (UPDATE peers p SET peer_status_login_expired = TRUE"
                " FROM accounts a WHERE a.id = p.account_id"
                " AND p.user_id IS NOT NULL AND p.user_id <> ''"
                " AND NOT p.peer_status_login_expired"
                " AND ((" LOGIN_RAN_OUT("p", "a") ")"
                " OR (" INACTIVE_TOO_LONG("p", "a") "))"
                " RETURNING p.*, " LOGIN_RAN_OUT("p", "a") " AS by_login),"
                " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $1::int, e.user_id, e.id, e.account_id, " PEER_EVENT_META("e", "$2")
                " || jsonb_build_object('reason', CASE WHEN e.by_login THEN 'session expiration'"
                " ELSE 'inactivity timeout' END)"
                " FROM e JOIN accounts a ON a.id = e.account_id)"
                " , u AS (UPDATE accounts SET network_serial = network_serial + 1"
                " WHERE id IN (SELECT DISTINCT account_id FROM e)"
                " RETURNING id, network_serial)"
                " SELECT u.id, u.network_serial, e.id FROM u JOIN e ON e.account_id = u.id"
                " ORDER BY u.id, e.id", 2 },

        /* SSO peers (store-sso.c). The one-time claim of a JWT: the row
         * that is inserted wins; a token past its exp claims nothing. */
        [ST_JWT_CLAIM] = { "jwt_claim",
                "WITH t AS (SELECT to_timestamp($2::bigint) AS exp),"
                " i AS (INSERT INTO jwt_claims (token_hash, expires_at)"
                " SELECT $1, t.exp FROM t WHERE t.exp > CURRENT_TIMESTAMP"
                " ON CONFLICT (token_hash) DO NOTHING RETURNING 1)"
                " SELECT EXISTS (SELECT 1 FROM i), (SELECT exp <= CURRENT_TIMESTAMP FROM t)", 2 },
        [ST_JWT_CLAIMS_GC] = { "jwt_claims_gc",
                "DELETE FROM jwt_claims WHERE expires_at < CURRENT_TIMESTAMP", 0 },
        /* A known SSO peer logging in with a JWT (NetBird's LoginPeer with
         * a user id, handleUserPeer, handleExpiredPeer), one statement:
         * p locks the peer row; the refresh (u) happens only when the JWT
         * user owns the peer, is not blocked and the login has expired
         * (marked, or its deadline passed); then the user's last_login,
         * event $4 (user.peer.login) and one serial bump. */
        [ST_PEER_SSO_LOGIN] = { "peer_sso_login",
                "WITH p AS (SELECT p.id, COALESCE(p.user_id, '') AS uid,"
                " p.peer_status_login_expired OR (" LOGIN_RAN_OUT("p", "a") ") AS expired"
                " FROM peers p JOIN accounts a ON a.id = p.account_id"
                " WHERE p.account_id = $1 AND p.id = $2 FOR NO KEY UPDATE OF p),"
                " usr AS (SELECT blocked FROM users WHERE account_id = $1 AND id = $3),"
                " r AS (UPDATE peers x SET last_login = CURRENT_TIMESTAMP, peer_status_login_expired = FALSE"
                " FROM p WHERE x.account_id = $1 AND x.id = p.id AND p.uid = $3 AND p.expired"
                " AND NOT COALESCE((SELECT blocked FROM usr), FALSE) RETURNING x.*),"
                " uu AS (UPDATE users SET last_login = CURRENT_TIMESTAMP"
                " WHERE account_id = $1 AND id = $3 AND EXISTS (SELECT 1 FROM r)),"
                " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $4::int, $3, r.id, r.account_id, " PEER_EVENT_META("r", "$5")
                " FROM r JOIN accounts a ON a.id = r.account_id),"
                " b AS (UPDATE accounts SET network_serial = network_serial + 1"
                " WHERE id = $1 AND EXISTS (SELECT 1 FROM r) RETURNING network_serial)"
                " SELECT p.uid, COALESCE((SELECT blocked FROM usr), FALSE), EXISTS (SELECT 1 FROM r),"
                " COALESCE((SELECT network_serial FROM b), 0),"
                " COALESCE((SELECT (EXTRACT(EPOCH FROM r.last_login) * 1000000)::bigint FROM r), 0)"
                " FROM p", 5 },
        /* ExtendAuthSession (NetBird's ExtendPeerSession), one statement:
         * p locks the peer of key $1 and reads what decides; only an
         * eligible peer of user $2 in an account with expiration on gets
         * the new last_login (and login_expired cleared); the user's
         * last_login and event $4 (user.peer.session.extend) follow. */
        [ST_PEER_EXTEND_SESSION] = { "peer_extend_session",
                "WITH p AS (SELECT p.id, p.account_id, COALESCE(p.user_id, '') AS uid,"
                " p.login_expiration_enabled AS peer_on, a.settings_peer_login_expiration_enabled AS acc_on,"
                " a.settings_peer_login_expiration AS exp_ns"
                " FROM peers p JOIN accounts a ON a.id = p.account_id WHERE p.key = $1 FOR NO KEY UPDATE OF p),"
                " r AS (UPDATE peers x SET last_login = CURRENT_TIMESTAMP, peer_status_login_expired = FALSE"
                " FROM p WHERE x.account_id = p.account_id AND x.id = p.id AND p.acc_on AND p.peer_on"
                " AND p.uid <> '' AND p.uid = $2 RETURNING x.*),"
                " uu AS (UPDATE users u SET last_login = CURRENT_TIMESTAMP FROM r"
                " WHERE u.account_id = r.account_id AND u.id = $2),"
                " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $4::int, $2, r.id, r.account_id, " PEER_EVENT_META("r", "$3")
                " FROM r JOIN accounts a ON a.id = r.account_id)"
                " SELECT p.account_id, p.id, p.uid, p.peer_on, p.acc_on, p.exp_ns, EXISTS (SELECT 1 FROM r),"
                " COALESCE((SELECT (EXTRACT(EPOCH FROM r.last_login) * 1000000)::bigint FROM r), 0)"
                " FROM p", 4 },
        /* SSO registration: the user's account locked first (the order
         * REST writers use), then the user. */
        [ST_SSO_USER_ACCOUNT_LOCK] = { "sso_user_account_lock",
                "SELECT a.id FROM accounts a WHERE a.id = (SELECT u.account_id FROM users u"
                " WHERE u.id = $1) FOR KEY SHARE", 1 },
        [ST_SSO_USER] = { "sso_user",
                "UPDATE users SET last_login = CURRENT_TIMESTAMP WHERE id = $1 AND NOT pending_approval"
                " RETURNING account_id", 1 },
        [ST_SSO_USER_PENDING] = { "sso_user_pending",
                "SELECT pending_approval FROM users WHERE id = $1", 1 },
        [ST_PEER_GROUP_USER_AUTO] = { "peer_group_user_auto",
                "INSERT INTO group_peers (account_id, group_id, peer_id)"
                " SELECT g.account_id, g.id, $2 FROM users u"
                " JOIN groups g ON g.account_id = u.account_id AND g.id = ANY (u.auto_groups)"
                " WHERE u.account_id = $1 AND u.id = $3"
                " ON CONFLICT DO NOTHING", 3 },

        /* Replicas (store-replica.c). The peers UPDATEs below are the
         * fenced disconnect for a whole replica: they touch only rows the
         * replica still owns, re-checked under each row's lock, so a peer
         * that reconnected elsewhere meanwhile keeps its new session. */
        [ST_REPLICA_REGISTER] = { "replica_register",
                "INSERT INTO replicas (id, name, pid, grpc_address, http_address, version)"
                " VALUES ($1, $2, $3::integer, $4, $5, $6)"
                " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, pid = EXCLUDED.pid,"
                " grpc_address = EXCLUDED.grpc_address, http_address = EXCLUDED.http_address,"
                " version = EXCLUDED.version, state = 'serving', heartbeat_at = CURRENT_TIMESTAMP", 6 },
        [ST_REPLICA_HEARTBEAT] = { "replica_heartbeat",
                "UPDATE replicas SET heartbeat_at = CURRENT_TIMESTAMP WHERE id = $1", 1 },
        [ST_REPLICA_STATE] = { "replica_state",
                "UPDATE replicas SET state = $2, heartbeat_at = CURRENT_TIMESTAMP WHERE id = $1", 2 },
        [ST_REPLICA_DEREGISTER] = { "replica_deregister",
                "WITH gone AS (DELETE FROM replicas WHERE id = $1)"
                " UPDATE peers SET peer_status_connected = FALSE,"
                " peer_status_last_seen = CURRENT_TIMESTAMP,"
                " peer_status_session_started_at = 0,"
                " peer_status_replica_id = NULL"
                " WHERE peer_status_replica_id = $1", 1 },
        [ST_REPLICA_REAP] = { "replica_reap",
                "WITH dead AS (DELETE FROM replicas"
                " WHERE heartbeat_at < CURRENT_TIMESTAMP - $1::bigint * interval '1 millisecond'"
                " AND id <> $2 RETURNING id, name),"
                " swept AS (UPDATE peers p SET peer_status_connected = FALSE,"
                " peer_status_last_seen = CURRENT_TIMESTAMP,"
                " peer_status_session_started_at = 0,"
                " peer_status_replica_id = NULL"
                " FROM dead d WHERE p.peer_status_replica_id = d.id RETURNING d.id)"
                " SELECT d.id, d.name, (SELECT count(*) FROM swept s WHERE s.id = d.id)"
                " FROM dead d ORDER BY d.id", 2 },

        /* Ephemeral peers (store-ephemeral.c, cp/store-ephemeral.h). The
         * accounts with a peer due, through the partial index
         * idx_peers_ephemeral (no index reads a status column: every
         * connect is a HOT update, migration 0014). $1 = lifetime in us. */
        [ST_EPHEMERAL_ACCOUNTS] = { "ephemeral_accounts",
                "SELECT DISTINCT account_id FROM peers WHERE ephemeral AND NOT peer_status_connected"
                " AND peer_status_last_seen <= CURRENT_TIMESTAMP - $1::bigint * interval '1 microsecond'"
                " ORDER BY account_id", 1 },
        /* One account's sweep, one statement: the DELETE re-checks its
         * WHERE under each row lock (a peer that reconnected, or that a
         * concurrent sweep already deleted, is skipped), so every peer is
         * deleted, logged and announced by exactly one caller. What
         * NetBird's DeletePeers does besides: policies with a rule naming
         * the peer as a resource go (event $5, target the peer, meta
         * {name}), event $3 per peer from "sys" with the peer meta (none
         * for wasm peers), one serial bump. Memberships and served routes
         * go by cascade. Peers before the account row, as elsewhere.
         * $1 account, $2 lifetime (us), $3 peer-removed code, $4 DNS
         * domain, $5 policy-removed code. One row per deleted peer: the
         * account's new serial and the peer id. */
        [ST_EPHEMERAL_SWEEP] = { "ephemeral_sweep",
                "WITH d AS (DELETE FROM peers p WHERE p.account_id = $1 AND p.ephemeral"
                " AND NOT p.peer_status_connected"
                " AND p.peer_status_last_seen <= CURRENT_TIMESTAMP - $2::bigint * interval '1 microsecond'"
                " RETURNING p.*),"
                CP_STORE_SQL_EXPOSE_GONE("d") ","
                " pr AS (SELECT r.policy_id, min(d.id) AS peer_id FROM policy_rules r JOIN d"
                " ON r.source_resource_id = d.id OR r.destination_resource_id = d.id"
                " WHERE r.account_id = $1 GROUP BY r.policy_id),"
                " pol AS (DELETE FROM policies x USING pr WHERE x.account_id = $1 AND x.id = pr.policy_id"
                " RETURNING x.name, pr.peer_id),"
                " pev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $5::int, 'sys', pol.peer_id, $1, jsonb_build_object('name', pol.name) FROM pol),"
                " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                " SELECT $3::int, 'sys', d.id, d.account_id, " PEER_EVENT_META("d", "$4")
                " FROM d JOIN accounts a ON a.id = d.account_id WHERE d.meta_kernel_version <> 'wasm'),"
                " u AS (UPDATE accounts SET network_serial = network_serial + 1"
                " WHERE id = $1 AND EXISTS (SELECT 1 FROM d) RETURNING network_serial)"
                " SELECT (SELECT network_serial FROM u), d.id FROM d ORDER BY d.id", 5 },
        /* CreateProxyPeer: the account the proxy peer joins, locked as a
         * setup-key registration locks the key's account. */
        [ST_PROXY_PEER_ACCOUNT_LOCK] = { "proxy_peer_account_lock",
                "SELECT a.id FROM accounts a WHERE a.id = $1 FOR KEY SHARE", 1 },
        [ST_PROXY_PEER_META] = { "proxy_peer_meta",
                "UPDATE peers SET proxy_cluster = $3, proxy_embedded = TRUE"
                " WHERE account_id = $1 AND id = $2", 3 },
        /* A registration's admission (cp_store_peer_register): read
         * without a lock; for an account with a device limit, the
         * account row then locked FOR NO KEY UPDATE, so registrations into one
         * account pass this point one at a time (the serial bump later
         * takes the same lock anyway), then the count in a statement of
         * its own: under READ COMMITTED its snapshot is taken after the
         * lock was granted, so it sees every peer a registration that held
         * the lock before committed. Proxy peers are not counted. */
        [ST_ACCOUNT_ADMIT_READ] = { "account_admit_read",
                "SELECT suspended_at IS NOT NULL, device_limit FROM accounts WHERE id = $1", 1 },
        [ST_ACCOUNT_ADMIT_LOCK] = { "account_admit_lock",
                "SELECT suspended_at IS NOT NULL, device_limit FROM accounts WHERE id = $1"
                " FOR NO KEY UPDATE", 1 },
        [ST_ACCOUNT_PEER_COUNT] = { "account_peer_count",
                "SELECT count(*) FROM peers WHERE account_id = $1 AND NOT proxy_embedded", 1 },
};

int cp_store__error(PGconn *pg, const PGresult *res, cp_error *reterr) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        int code = -EIO;

        if (pg && PQstatus(pg) != CONNECTION_OK)
                code = -ECONNRESET;
        else if (state && strcmp(state, "23505") == 0)
                code = -EEXIST;
        else if (state && strcmp(state, "23503") == 0)
                code = -ENOENT;
        else if (state && (strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0 ||
                           strncmp(state, "22", 2) == 0))
                code = -EINVAL;
        else if (state && strncmp(state, "08", 2) == 0)
                code = -ECONNRESET;

        if (!reterr)
                return code;
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (!msg || !*msg)
                msg = pg ? PQerrorMessage(pg) : "no connection";
        cp_error_set(reterr, code, "%s", msg);
        /* libpq messages end in a newline; logs are one line each. */
        size_t n = strlen(reterr->message);
        while (n > 0 && (reterr->message[n - 1] == '\n' || reterr->message[n - 1] == ' '))
                reterr->message[--n] = '\0';
        if (state)
                (void) snprintf(reterr->sqlstate, sizeof reterr->sqlstate, "%s", state);
        const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
        const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
        if (detail)
                cp_error_detail(reterr, "%s", detail);
        if (hint)
                cp_error_hint(reterr, "%s", hint);
        return code;
}

int64_t cp_store__affected(const PGresult *res) {
        const char *n = PQcmdTuples((PGresult *) res);
        return n && *n ? strtoll(n, NULL, 10) : 0;
}

/* libpq prints NOTICEs to stderr by default; a library must not write to
 * the process's streams, and the notices carry nothing we act on. */
static void drop_notice(void *arg, const char *message) {
}

static _Atomic bool use_prepared = true;

void cp_store_use_prepared(bool on) {
        use_prepared = on;
}

bool cp_store_uses_prepared(cp_store *s) {
        return !s->unprepared;
}

static int conn_open(cp_store *s, cp_store_conn *c, cp_error *reterr) {
        PGconn *pg = PQconnectdb(s->dsn);

        if (PQstatus(pg) != CONNECTION_OK) {
                int r = cp_store__error(pg, NULL, reterr);
                cp_error_prefix(reterr, "cannot connect to PostgreSQL");
                PQfinish(pg);
                return r;
        }
        PQsetNoticeProcessor(pg, drop_notice, NULL);
        c->pg = pg;
        c->store = s;
        memset(c->prepared, 0, sizeof c->prepared);
        return 0;
}

static void conn_close(cp_store_conn *c) {
        if (c->pg)
                PQfinish(c->pg);
        c->pg = NULL;
        memset(c->prepared, 0, sizeof c->prepared);
}

int cp_store_open(const char *dsn, unsigned pool_size, cp_store **ret, cp_error *reterr) {
        cp_store *s;
        cp_store_conn *c;
        int r;

        if (!dsn || !*dsn)
                return cp_error_set(reterr, -EINVAL, "no PostgreSQL DSN given");
        if (pool_size < 1 || pool_size > 256)
                return cp_error_set(reterr, -EINVAL, "pool size %u out of range 1..256", pool_size);

        s = cp_xcalloc(1, sizeof *s);
        s->dsn = cp_xstrdup(dsn);
        s->unprepared = !use_prepared;
        s->size = pool_size;
        s->conns = cp_xcalloc(pool_size, sizeof *s->conns);
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);

        /* Connect one now so a bad DSN or a down server fails here. */
        r = cp_store__acquire(s, &c, reterr);
        if (r < 0) {
                cp_store_free(s);
                return r;
        }
        cp_store__release(s, c);
        *ret = s;
        return 0;
}

cp_store *cp_store_free(cp_store *s) {
        if (!s)
                return NULL;
        for (unsigned i = 0; i < s->size; i++)
                conn_close(&s->conns[i]);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        cp_explicit_bzero(s->dsn, strlen(s->dsn));
        free(s->dsn);
        free(s->replica_id);
        free(s->conns);
        free(s);
        return NULL;
}

int cp_store__acquire(cp_store *s, cp_store_conn **ret, cp_error *reterr) {
        cp_store_conn *c = NULL;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                /* Prefer a live connection, then any free slot. */
                for (unsigned i = 0; i < s->size && !c; i++)
                        if (!s->conns[i].in_use && s->conns[i].pg)
                                c = &s->conns[i];
                for (unsigned i = 0; i < s->size && !c; i++)
                        if (!s->conns[i].in_use)
                                c = &s->conns[i];
                if (c)
                        break;
                pthread_cond_wait(&s->cond, &s->lock);
        }
        c->in_use = true;
        pthread_mutex_unlock(&s->lock);

        /* Connecting happens outside the lock; the slot is ours. */
        if (c->pg && PQstatus(c->pg) != CONNECTION_OK)
                conn_close(c);
        if (!c->pg) {
                int r = conn_open(s, c, reterr);
                if (r < 0) {
                        cp_store__release(s, c);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

void cp_store__release(cp_store *s, cp_store_conn *c) {
        /* A connection left inside a transaction or broken is not reused. */
        if (c->pg && (PQstatus(c->pg) != CONNECTION_OK ||
                      PQtransactionStatus(c->pg) != PQTRANS_IDLE))
                conn_close(c);
        pthread_mutex_lock(&s->lock);
        c->in_use = false;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

/* The name a statement is prepared under on the server: its name, '_'
 * and 8 hex digits of the SHA-256 of its SQL. Behind a transaction
 * pooler a server connection may hold a statement another client (or
 * another version of this one) prepared under the same name; with the
 * hash a foreign statement never matches ours, so it is never run in
 * place of ours (different SQL, or a different parameter count: 08P01):
 * ours is missing (26000) or ours is there (42P05, the same SQL). Within
 * PostgreSQL's 63 bytes; computed once. */
static char server_names[_ST_MAX][64];
static pthread_once_t server_names_once = PTHREAD_ONCE_INIT;

static void server_names_init(void) {
        for (int st = 0; st < _ST_MAX; st++) {
                uint8_t h[CP_SHA256_LEN];

                cp_crypto_sha256(statements[st].sql, strlen(statements[st].sql), h);
                (void) snprintf(server_names[st], sizeof server_names[st], "%.54s_%02x%02x%02x%02x",
                                statements[st].name, h[0], h[1], h[2], h[3]);
        }
}

const char *cp_store__stmt_server_name(cp_store_stmt st) {
        (void) pthread_once(&server_names_once, server_names_init);
        return server_names[st];
}

static int prepare(cp_store_conn *c, cp_store_stmt st, cp_error *reterr) {
        PGresult *res;
        int r = 0;

        if (c->prepared[st])
                return 0;
        res = PQprepare(c->pg, cp_store__stmt_server_name(st), statements[st].sql, statements[st].nparams, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                r = cp_store__error(c->pg, res, reterr);
                cp_error_prefix(reterr, "preparing %s", statements[st].name);
        } else
                c->prepared[st] = true;
        PQclear(res);
        return r;
}

const char *cp_store__stmt_name(cp_store_stmt st) {
        return statements[st].name;
}

const char *cp_store__stmt_sql(cp_store_stmt st, int *ret_nparams) {
        if (ret_nparams)
                *ret_nparams = statements[st].nparams;
        return statements[st].sql;
}

/* The server does not have (26000) or already has (42P05) a statement
 * we prepared: a transaction pooler hands us other server connections. */
static bool lost_prepared(const cp_error *err) {
        return err && (strcmp(err->sqlstate, "26000") == 0 || strcmp(err->sqlstate, "42P05") == 0);
}

int cp_store__exec(cp_store_conn *c, cp_store_stmt st, const char *const *params,
                   PGresult **ret, cp_error *reterr) {
        int64_t started = cp_store__clock_ns();
        cp_error own = { 0 };
        PGresult *res;
        bool named = !c->store->unprepared;
        int r;

again:
        if (named) {
                r = prepare(c, st, &own);
                if (r < 0)
                        goto failed;
                res = PQexecPrepared(c->pg, cp_store__stmt_server_name(st), statements[st].nparams, params,
                                     NULL, NULL, 0);
        } else
                res = PQexecParams(c->pg, statements[st].sql, statements[st].nparams, NULL, params, NULL, NULL, 0);
        ExecStatusType status = PQresultStatus(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
                r = cp_store__error(c->pg, res, &own);
                cp_error_prefix(&own, "%s", statements[st].name);
                PQclear(res);
                goto failed;
        }
        cp_store__observe(st, started, false);
        if (ret)
                *ret = res;
        else
                PQclear(res);
        return 0;

failed:
        if (named && lost_prepared(&own)) {
                /* For good, for every connection of this store. */
                c->store->unprepared = true;
                named = false;
                if (PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
                        own = (cp_error) { 0 };
                        goto again;
                }
                /* Inside a transaction: it is aborted. A passing fault
                 * (the caller's retry runs unnamed), like a lost
                 * connection, not a bad statement. */
                r = -ECONNRESET;
                cp_error_prefix(&own, "prepared statement lost to a transaction pooler "
                                "(--db-prepared-statements=false is required with transaction pooling)");
        }
        cp_store__observe(st, started, true);
        if (reterr)
                *reterr = own;
        return r;
}

int cp_store__command(cp_store_conn *c, const char *sql, cp_error *reterr) {
        int64_t started = cp_store__clock_ns();
        PGresult *res = PQexec(c->pg, sql);
        ExecStatusType status = PQresultStatus(res);
        int r = 0;

        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
                r = cp_store__error(c->pg, res, reterr);
        PQclear(res);
        /* Of the commands, only COMMIT is timed (label "commit"): it is
         * where every write transaction waits for durability. */
        if (strcmp(sql, "COMMIT") == 0)
                cp_store__observe(_ST_MAX, started, r < 0);
        return r;
}

int cp_store__run(cp_store *s, cp_store_stmt st, const char *const *params, PGresult **ret,
                  cp_error *reterr) {
        cp_store_conn *c;
        int r = cp_store__acquire(s, &c, reterr);

        if (r < 0)
                return r;
        r = cp_store__exec(c, st, params, ret, reterr);
        cp_store__release(s, c);
        return r;
}

int cp_store_db_now_ns(cp_store *s, int64_t *ret, cp_error *reterr) {
        PGresult *res = NULL;
        int r = cp_store__run(s, ST_DB_NOW, NULL, &res, reterr);

        if (r < 0)
                return r;
        *ret = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        return 0;
}

int cp_store_ping(cp_store *s, cp_error *reterr) {
        return cp_store__run(s, ST_PING, NULL, NULL, reterr);
}
