/*
 * export: the deployment's accounts written out as a NetBird store, so
 * that an operator can go back to NetBird's own management server.
 *
 *   netbird-cp-admin export --sqlite FILE [--account ID] [--events-sqlite FILE]
 *                           [--encryption-key KEY] [--force]
 *
 * Target: NetBird v0.77.1 (the commit this project pins); the tables and
 * what goes in each are below ("the tables"). FILE is a store.db that
 * NetBird's management server opens with its SQLite engine (its datadir's
 * store.db): its migrations find nothing to convert, AutoMigrate adds the
 * tables of features we do not have (agent networks, reverse-proxy
 * services, invites, jobs) and it backfills public ids.
 *
 * Secrets as NetBird stores them: setup keys and personal access tokens
 * are hashes in both stores and are copied, so existing keys and tokens
 * keep working; users' e-mails and names are sealed here under OUR
 * DataStoreEncryptionKey (the common --data-store-encryption-key) and
 * written encrypted with NetBird's (--encryption-key, the
 * DataStoreEncryptionKey of its management.json, FieldEncrypt's
 * AES-256-GCM), or in plain text without it -- which NetBird reads only
 * when it runs without a DataStoreEncryptionKey (with one, it fails to
 * decrypt them). events.db (--events-sqlite) is NetBird's activity
 * store, which always encrypts: the e-mail and name an event carries go
 * to deleted_users encrypted, so it needs --encryption-key.
 *
 * Not exported (NetBird has no place for them or they are ours): the
 * cluster's sessions (peers are written disconnected), replicas, server
 * keys (NetBird makes its own: agents fetch it before each login), JWT
 * claims cache, reverse-proxy services, proxy tokens and access logs
 * (their NetBird tables differ and hold secrets sealed under our key),
 * MSP tenants and device limits, the data-key fingerprints, and the
 * events' initiator account.
 *
 * Consistency and safety: everything is read in one REPEATABLE READ,
 * READ ONLY transaction (one snapshot while replicas write), each table
 * with a statement scoped to one account. The files are written as
 * FILE.tmp (mode 0600: they hold token and key hashes) in one SQLite
 * transaction each and renamed over FILE only when everything is
 * written: a failed export leaves nothing behind. An existing FILE is
 * refused unless --force.
 */
#include "admin.h"
#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"

#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#define EVENTS_PAGE "2000"

static const cp_log_ctx log_ctx = { .component = "export" };

/*
 * The export writes a NetBird store of NetBird v0.77.1's schema (the
 * pinned commit: the gorm models of management/server/types, peer, route,
 * dns, posture, networks and zones, as gorm's SQLite dialect creates them:
 * text, numeric for booleans, integer, datetime, JSON in text columns)
 * and an events.db of NetBird's activity schema. Each table is one
 * SQLite DDL text (CREATE TABLE with gorm's constraint names, then its
 * indexes, including the ones NetBird's migrations create:
 * idx_account_ip, idx_account_dnslabel, idx_peers_key_unique) and one
 * PostgreSQL SELECT over our tables, scoped to one account ($1), whose
 * first columns are the SQLite table's columns in order, each already in
 * NetBird's stored form as text (booleans 1/0, times as go-sqlite3 writes
 * them, JSON as encoding/json would marshal the Go value).
 *
 * Values that only C can produce (personal data sealed under our
 * DataStoreEncryptionKey, re-encrypted under NetBird's) are flagged per
 * column: see export_table_spec.pii.
 */
typedef struct export_table_spec {
        const char *name;               /* NetBird's table */
        const char *ddl;                /* SQLite: CREATE TABLE and CREATE INDEX statements */
        const char *sql;                /* PostgreSQL: the rows of account $1 */
        /* Bit i set: column i is personal data sealed under our key; the
         * SELECT gives the row's pii_key after the table's columns. It is
         * opened and written as NetBird stores it: encrypted with its
         * DataStoreEncryptionKey (FieldEncrypt) when one is given, else in
         * plain text. */
        unsigned pii;
        const char *noun;               /* the summary line's word for its rows, NULL = not shown */
} export_table_spec;

/* ---- the tables ------------------------------------------------------------
 *
 * NetBird v0.77.1's store tables as the export writes them: SQLite DDL as
 * gorm's SQLite dialect creates it from the models, and the SELECT that
 * turns one account's rows of our schema into NetBird's stored values.
 *
 * What is written how (NetBird's gorm model -> our column):
 *   booleans           numeric 1/0
 *   time.Time          go-sqlite3's text form "2006-01-02 15:04:05.999999-07:00"
 *                      in UTC; a NULL non-pointer time is Go's zero time
 *   serializer:json    encoding/json of the Go value: []string from text[],
 *                      netip.Addr / netip.Prefix as "..." ("" when none),
 *                      net.IPNet (accounts.network_net) as {"IP","Mask"} with
 *                      the mask in base64, meta_* JSON as stored (our
 *                      columns keep the agent's Go field names)
 *   policy rules       ports as strings, port ranges {"Start","End"}
 *                      (inclusive), source/destination resources {"ID","Type"}
 *   name servers       {"IP","NSType":1 (udp),"Port"}
 *   posture checks     the REST form we keep turned into NetBird's Go form
 *                      (NBVersionCheck, OSVersionCheck, GeoLocationCheck,
 *                      PeerNetworkRangeCheck, ProcessCheck)
 *   groups             resources from group_resources; members in group_peers
 *   public_id          '' everywhere: NetBird backfills it on start
 *                      (migration.BackfillPublicIDs), we have no such ids
 * Not written, NetBird's defaults apply: settings NetBird has and we do
 * not (auto update 'disabled', metrics push, agent-network-only,
 * dashboard features, local MFA, integrated validator, network range v6);
 * IPv6 is enabled for the All group only when the account has an IPv6
 * range. Peers are written disconnected (session 0).
 */
/* Our value -> NetBird's stored text. */
#define TS(c)   "(to_char((" c ") AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00')"
#define TSZ(c)  "COALESCE(" TS(c) ", '0001-01-01 00:00:00+00:00')"
#define B(c)    "(" c ")::int"
#define JARR(c) "array_to_json(" c ")::text"
#define JSTR(c) "COALESCE(to_json(" c ")::text, '\"\"')"
/* net.IPNet: {"IP":"100.64.0.0","Mask":"<base64 of the mask bytes>"}; the
 * mask is 4 bytes for IPv4, 16 for IPv6, from the prefix length. */
#define IPNET(c)                                                                                                  \
        "(CASE WHEN " c " IS NULL THEN '{\"IP\":\"\",\"Mask\":null}' ELSE json_build_object('IP', host(" c "),"   \
        " 'Mask', encode(decode(rpad(repeat('f', masklen(" c ") / 4) || (CASE masklen(" c ") % 4 WHEN 1 THEN '8'" \
        " WHEN 2 THEN 'c' WHEN 3 THEN 'e' ELSE '' END), CASE family(" c ") WHEN 4 THEN 8 ELSE 32 END, '0'),"     \
        " 'hex'), 'base64'))::text END)"

/* Foreign keys as gorm names them (fk_<owner table>_<field>). */
#define FK_ACCOUNT(name) ",CONSTRAINT `" name "` FOREIGN KEY (`account_id`) REFERENCES `accounts`(`id`)"

static const char DDL_ACCOUNTS[] =
        "CREATE TABLE `accounts` (`id` text,`created_by` text,`created_at` datetime,`domain` text,"
        "`domain_category` text,`is_domain_primary_account` numeric,`network_identifier` text,`network_net` text,"
        "`network_net_v6` text,`network_dns` text,`network_serial` integer,"
        "`dns_settings_disabled_management_groups` text,`settings_peer_login_expiration_enabled` numeric,"
        "`settings_peer_login_expiration` integer,`settings_peer_inactivity_expiration_enabled` numeric,"
        "`settings_peer_inactivity_expiration` integer,`settings_regular_users_view_blocked` numeric,"
        "`settings_groups_propagation_enabled` numeric,`settings_jwt_groups_enabled` numeric,"
        "`settings_jwt_groups_claim_name` text,`settings_jwt_allow_groups` text,"
        "`settings_routing_peer_dns_resolution_enabled` numeric,`settings_dns_domain` text,"
        "`settings_network_range` text,`settings_network_range_v6` text,`settings_peer_expose_enabled` numeric,"
        "`settings_peer_expose_groups` text,`settings_extra_peer_approval_enabled` numeric,"
        "`settings_extra_user_approval_required` numeric,`settings_extra_integrated_validator` text,"
        "`settings_extra_integrated_validator_groups` text,`settings_lazy_connection_enabled` numeric DEFAULT false,"
        "`settings_auto_update_version` text DEFAULT 'disabled',`settings_auto_update_always` numeric DEFAULT false,"
        "`settings_ipv6_enabled_groups` text,`settings_metrics_push_enabled` numeric DEFAULT false,"
        "`settings_agent_network_only` numeric DEFAULT false,`settings_dashboard_features` text,"
        "`settings_local_mfa_enabled` numeric,`reverse_proxy_free_domain_nonce` text,PRIMARY KEY (`id`));"
        "CREATE INDEX `idx_accounts_domain` ON `accounts`(`domain`);";

#define SQL_ACCOUNTS                                                                                            \
        "SELECT a.id, a.created_by, " TSZ("a.created_at") ", a.domain, a.domain_category,"                      \
        " " B("a.is_domain_primary_account") ", a.network_identifier, " IPNET("a.network_net") ","              \
        " " IPNET("a.network_net_v6") ", a.network_dns, a.network_serial,"                                      \
        " " JARR("a.dns_settings_disabled_management_groups") ","                                               \
        " " B("a.settings_peer_login_expiration_enabled") ", a.settings_peer_login_expiration,"                 \
        " " B("a.settings_peer_inactivity_expiration_enabled") ", a.settings_peer_inactivity_expiration,"       \
        " " B("a.settings_regular_users_view_blocked") ", " B("a.settings_groups_propagation_enabled") ","      \
        " " B("a.settings_jwt_groups_enabled") ", a.settings_jwt_groups_claim_name,"                            \
        " " JARR("a.settings_jwt_allow_groups") ", " B("a.settings_routing_peer_dns_resolution_enabled") ","    \
        " a.settings_dns_domain, " JSTR("a.settings_network_range::text") ", '\"\"',"                           \
        " " B("a.settings_peer_expose_enabled") ", " JARR("a.settings_peer_expose_groups") ","                  \
        " " B("a.settings_extra_peer_approval_enabled") ", " B("a.settings_extra_user_approval_required") ","   \
        " '', '[]', " B("a.settings_lazy_connection_enabled") ", 'disabled', 0,"                                \
        " CASE WHEN a.network_net_v6 IS NULL THEN '[]' ELSE COALESCE((SELECT json_build_array(g.id)::text"      \
        "  FROM groups g WHERE g.account_id = a.id AND g.name = 'All'), '[]') END,"                             \
        " 0, 0, NULL, 0, ''"                                                                                    \
        " FROM accounts a WHERE a.id = $1"

static const char DDL_ONBOARDING[] =
        "CREATE TABLE `account_onboardings` (`account_id` text,`onboarding_flow_pending` numeric,"
        "`signup_form_pending` numeric,`created_at` datetime,`updated_at` datetime,PRIMARY KEY (`account_id`),"
        "CONSTRAINT `fk_accounts_onboarding` FOREIGN KEY (`account_id`) REFERENCES `accounts`(`id`)"
        " ON DELETE CASCADE);";

/* Onboarding done: the dashboard shows the account, not its first-run flow. */
#define SQL_ONBOARDING                                                                                          \
        "SELECT a.id, 0, 0, " TSZ("a.created_at") ", " TSZ("a.created_at") " FROM accounts a WHERE a.id = $1"

static const char DDL_USERS[] =
        "CREATE TABLE `users` (`id` text,`account_id` text,`role` text,`is_service_user` numeric,"
        "`non_deletable` numeric,`service_user_name` text,`auto_groups` text,`blocked` numeric,"
        "`pending_approval` numeric,`last_login` datetime,`created_at` datetime,`issued` text DEFAULT \"api\","
        "`integration_ref_id` integer,`integration_ref_integration_type` text,`name` text DEFAULT '',"
        "`email` text DEFAULT '',PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_users_g") ");"
        "CREATE INDEX `idx_users_account_id` ON `users`(`account_id`);";

/* name (14) and email (15) are sealed under our key; pii_key follows. */
#define SQL_USERS                                                                                               \
        "SELECT u.id, u.account_id, u.role, " B("u.is_service_user") ", " B("u.non_deletable") ","              \
        " u.service_user_name, " JARR("u.auto_groups") ", " B("u.blocked") ", " B("u.pending_approval") ","     \
        " " TS("u.last_login") ", " TSZ("u.created_at") ", u.issued, 0, '', u.name, u.email, u.pii_key"         \
        " FROM users u WHERE u.account_id = $1 ORDER BY u.id"

static const char DDL_PATS[] =
        "CREATE TABLE `personal_access_tokens` (`id` text,`user_id` text,`name` text,`hashed_token` text,"
        "`expiration_date` datetime,`created_by` text,`created_at` datetime,`last_used` datetime,"
        "PRIMARY KEY (`id`),CONSTRAINT `fk_users_pa_ts_g` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`)"
        " ON DELETE CASCADE);"
        "CREATE INDEX `idx_personal_access_tokens_user_id` ON `personal_access_tokens`(`user_id`);";

#define SQL_PATS                                                                                                \
        "SELECT t.id, t.user_id, t.name, t.hashed_token, " TS("t.expiration_date") ", t.created_by,"            \
        " " TSZ("t.created_at") ", " TS("t.last_used") " FROM personal_access_tokens t WHERE t.account_id = $1" \
        " ORDER BY t.id"

static const char DDL_SETUP_KEYS[] =
        "CREATE TABLE `setup_keys` (`id` text,`account_id` text,`key` text,`key_secret` text,`name` text,"
        "`type` text,`created_at` datetime,`expires_at` datetime,`updated_at` datetime,`revoked` numeric,"
        "`used_times` integer,`last_used` datetime,`auto_groups` text,`usage_limit` integer,`ephemeral` numeric,"
        "`allow_extra_dns_labels` numeric,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_setup_keys_g") ");"
        "CREATE INDEX `idx_setup_keys_account_id` ON `setup_keys`(`account_id`);"
        "CREATE INDEX `idx_setup_keys_key_secret` ON `setup_keys`(`key_secret`);";

/* key is base64(SHA-256(upper(plain))) in both stores; key_secret the
 * masked form NetBird shows (it also tells its migration the key is
 * hashed already). */
#define SQL_SETUP_KEYS                                                                                               \
        "SELECT k.id, k.account_id, k.key, k.key_secret, k.name, k.type, " TSZ("k.created_at") ","                   \
        " " TS("k.expires_at") ", " TSZ("k.updated_at") ", " B("k.revoked") ", k.used_times, " TS("k.last_used") "," \
        " " JARR("k.auto_groups") ", k.usage_limit, " B("k.ephemeral") ", " B("k.allow_extra_dns_labels")            \
        " FROM setup_keys k WHERE k.account_id = $1 ORDER BY k.id"

static const char DDL_PEERS[] =
        "CREATE TABLE `peers` (`id` text,`account_id` text,`key` text,`ip` text,`ipv6` text,`meta_hostname` text,"
        "`meta_go_os` text,`meta_kernel` text,`meta_core` text,`meta_platform` text,`meta_os` text,"
        "`meta_os_version` text,`meta_wt_version` text,`meta_ui_version` text,`meta_kernel_version` text,"
        "`meta_network_addresses` text,`meta_system_serial_number` text,`meta_system_product_name` text,"
        "`meta_system_manufacturer` text,`meta_environment` text,`meta_flags` text,`meta_files` text,"
        "`meta_capabilities` text,`meta_sync_message_version` integer,`proxy_meta_embedded` numeric,"
        "`proxy_meta_cluster` text,`name` text,`dns_label` text,`peer_status_last_seen` datetime,"
        "`peer_status_session_started_at` integer NOT NULL DEFAULT 0,`peer_status_connected` numeric,"
        "`peer_status_login_expired` numeric,`peer_status_requires_approval` numeric,`user_id` text,"
        "`ssh_key` text,`ssh_enabled` numeric,`login_expiration_enabled` numeric,"
        "`inactivity_expiration_enabled` numeric,`last_login` datetime,`created_at` datetime,`ephemeral` numeric,"
        "`location_connection_ip` text,`location_country_code` text,`location_city_name` text,"
        "`location_geo_name_id` integer,`extra_dns_labels` text,`allow_extra_dns_labels` numeric,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_peers_g") ");"
        "CREATE INDEX `idx_peers_account_id` ON `peers`(`account_id`);"
        "CREATE INDEX `idx_peers_proxy_meta_embedded` ON `peers`(`proxy_meta_embedded`);"
        "CREATE INDEX `idx_peers_proxy_meta_cluster` ON `peers`(`proxy_meta_cluster`);"
        "CREATE INDEX `idx_peers_name` ON `peers`(`name`);"
        "CREATE INDEX `idx_peers_ephemeral` ON `peers`(`ephemeral`);"
        /* NetBird's post-AutoMigrate migrations (store.go) */
        "CREATE UNIQUE INDEX idx_account_ip ON peers (account_id, ip);"
        "CREATE UNIQUE INDEX idx_account_dnslabel ON peers (account_id, dns_label);"
        "CREATE UNIQUE INDEX idx_peers_key_unique ON peers (key);";

/* Written disconnected: the cluster's sessions mean nothing to NetBird. */
#define SQL_PEERS                                                                                                 \
        "SELECT p.id, p.account_id, p.key, " JSTR("host(p.ip)") ", " JSTR("host(p.ipv6)") ", p.meta_hostname,"    \
        " p.meta_go_os, p.meta_kernel, p.meta_core, p.meta_platform, p.meta_os, p.meta_os_version,"               \
        " p.meta_wt_version, p.meta_ui_version, p.meta_kernel_version, p.meta_network_addresses::text,"           \
        " p.meta_system_serial_number, p.meta_system_product_name, p.meta_system_manufacturer,"                   \
        " p.meta_environment::text, p.meta_flags::text, p.meta_files::text, " JARR("p.meta_capabilities") ","     \
        " p.meta_sync_message_version, " B("p.proxy_embedded") ", COALESCE(p.proxy_cluster, ''), p.name,"         \
        " p.dns_label, " TSZ("p.peer_status_last_seen") ", 0, 0, " B("p.peer_status_login_expired") ","           \
        " " B("p.peer_status_requires_approval") ", COALESCE(p.user_id, ''), p.ssh_key, " B("p.ssh_enabled") ","  \
        " " B("p.login_expiration_enabled") ", " B("p.inactivity_expiration_enabled") ", " TS("p.last_login") "," \
        " " TSZ("p.created_at") ", " B("p.ephemeral") ", " JSTR("host(p.location_connection_ip)") ","             \
        " p.location_country_code, p.location_city_name, p.location_geo_name_id, " JARR("p.extra_dns_labels") "," \
        " " B("p.allow_extra_dns_labels") " FROM peers p WHERE p.account_id = $1 ORDER BY p.id"

static const char DDL_GROUPS[] =
        "CREATE TABLE `groups` (`id` text,`account_id` text,`public_id` text,`name` text,`issued` text,"
        "`resources` text,`integration_ref_id` integer,`integration_ref_integration_type` text,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_groups_g") ");"
        "CREATE INDEX `idx_groups_account_id` ON `groups`(`account_id`);";

#define SQL_GROUPS                                                                                              \
        "SELECT g.id, g.account_id, '', g.name, g.issued,"                                                      \
        " COALESCE((SELECT json_agg(json_build_object('ID', r.resource_id, 'Type', r.resource_type)"            \
        "  ORDER BY r.resource_id)::text FROM group_resources r WHERE r.account_id = g.account_id"              \
        "  AND r.group_id = g.id), '[]'),"                                                                      \
        " g.integration_ref_id, g.integration_ref_integration_type FROM groups g WHERE g.account_id = $1"       \
        " ORDER BY g.id"

static const char DDL_GROUP_PEERS[] =
        "CREATE TABLE `group_peers` (`account_id` text,`group_id` text,`peer_id` text,"
        "PRIMARY KEY (`group_id`,`peer_id`),CONSTRAINT `fk_groups_group_peers` FOREIGN KEY (`group_id`)"
        " REFERENCES `groups`(`id`) ON DELETE CASCADE);"
        "CREATE INDEX `idx_group_peers_account_id` ON `group_peers`(`account_id`);";

#define SQL_GROUP_PEERS                                                                                         \
        "SELECT gp.account_id, gp.group_id, gp.peer_id FROM group_peers gp WHERE gp.account_id = $1"            \
        " ORDER BY gp.group_id, gp.peer_id"

static const char DDL_POSTURE[] =
        "CREATE TABLE `posture_checks` (`id` text,`name` text,`description` text,`account_id` text,"
        "`public_id` text,`checks` text,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_posture_checks") ");"
        "CREATE INDEX `idx_posture_checks_account_id` ON `posture_checks`(`account_id`);";

/* The REST form we keep -> posture.ChecksDefinition: encoding/json leaves
 * out the absent checks (omitempty) and writes null for an OS without a
 * minimum. */
#define PC(path) "c.checks->" path
#define MINV(os)                                                                                        \
        "CASE WHEN " PC("'os_version_check'") " ? '" os "' THEN jsonb_build_object('MinVersion', "      \
        PC("'os_version_check'->'" os "'->>'min_version'") ") END"
#define MINK(os)                                                                                        \
        "CASE WHEN " PC("'os_version_check'") " ? '" os "' THEN jsonb_build_object('MinKernelVersion', " \
        PC("'os_version_check'->'" os "'->>'min_kernel_version'") ") END"
#define SQL_POSTURE                                                                                             \
        "SELECT c.id, c.name, c.description, c.account_id, '',"                                                 \
        " COALESCE((SELECT jsonb_object_agg(d.key, d.value) FROM jsonb_each(jsonb_build_object("                \
        " 'NBVersionCheck', CASE WHEN c.checks ? 'nb_version_check' THEN jsonb_build_object('MinVersion',"      \
        "  " PC("'nb_version_check'->>'min_version'") ") END,"                                                  \
        " 'OSVersionCheck', CASE WHEN c.checks ? 'os_version_check' THEN jsonb_build_object("                   \
        "  'Android', " MINV("android") ", 'Darwin', " MINV("darwin") ", 'Ios', " MINV("ios") ","               \
        "  'Linux', " MINK("linux") ", 'Windows', " MINK("windows") ") END,"                                    \
        " 'GeoLocationCheck', CASE WHEN c.checks ? 'geo_location_check' THEN jsonb_build_object("               \
        "  'Locations', COALESCE((SELECT jsonb_agg(jsonb_build_object('CountryCode', l->>'country_code',"       \
        "   'CityName', COALESCE(l->>'city_name', '')) ORDER BY o) FROM jsonb_array_elements("                  \
        "   " PC("'geo_location_check'->'locations'") ") WITH ORDINALITY AS x(l, o)), '[]'),"                   \
        "  'Action', " PC("'geo_location_check'->>'action'") ") END,"                                           \
        " 'PeerNetworkRangeCheck', CASE WHEN c.checks ? 'peer_network_range_check' THEN jsonb_build_object("    \
        "  'Action', " PC("'peer_network_range_check'->>'action'") ","                                          \
        "  'Ranges', COALESCE(" PC("'peer_network_range_check'->'ranges'") ", '[]')) END,"                      \
        " 'ProcessCheck', CASE WHEN c.checks ? 'process_check' THEN jsonb_build_object('Processes',"            \
        "  COALESCE((SELECT jsonb_agg(jsonb_build_object('LinuxPath', COALESCE(x.p->>'linux_path', ''),"        \
        "   'MacPath', COALESCE(x.p->>'mac_path', ''), 'WindowsPath', COALESCE(x.p->>'windows_path', ''))"      \
        "   ORDER BY x.o) FROM jsonb_array_elements(" PC("'process_check'->'processes'") ")"                    \
        "   WITH ORDINALITY AS x(p, o)), '[]')) END))"                                                          \
        " d WHERE d.value <> 'null'::jsonb), '{}')::text"                                                       \
        " FROM posture_checks c WHERE c.account_id = $1 ORDER BY c.id"

static const char DDL_POLICIES[] =
        "CREATE TABLE `policies` (`id` text,`public_id` text,`account_id` text,`name` text,`description` text,"
        "`enabled` numeric,`source_posture_checks` text,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_policies") ");"
        "CREATE INDEX `idx_policies_account_id` ON `policies`(`account_id`);";

#define SQL_POLICIES                                                                                            \
        "SELECT p.id, '', p.account_id, p.name, p.description, " B("p.enabled") ","                             \
        " " JARR("p.source_posture_checks") " FROM policies p WHERE p.account_id = $1 ORDER BY p.id"

static const char DDL_RULES[] =
        "CREATE TABLE `policy_rules` (`id` text,`policy_id` text,`name` text,`description` text,`enabled` numeric,"
        "`action` text,`destinations` text,`destination_resource` text,`sources` text,`source_resource` text,"
        "`bidirectional` numeric,`protocol` text,`ports` text,`port_ranges` text,`authorized_groups` text,"
        "`authorized_user` text,PRIMARY KEY (`id`),CONSTRAINT `fk_policies_rules` FOREIGN KEY (`policy_id`)"
        " REFERENCES `policies`(`id`) ON DELETE CASCADE);"
        "CREATE INDEX `idx_policy_rules_policy_id` ON `policy_rules`(`policy_id`);";

/* port_ranges are int4range [start, end + 1) here, inclusive {Start, End}
 * there; ports are strings there. */
#define SQL_RULES                                                                                                    \
        "SELECT r.id, r.policy_id, r.name, r.description, " B("r.enabled") ", r.action, " JARR("r.destinations") "," \
        " json_build_object('ID', COALESCE(r.destination_resource_id, ''),"                                          \
        "  'Type', COALESCE(r.destination_resource_type, ''))::text,"                                                \
        " " JARR("r.sources") ", json_build_object('ID', COALESCE(r.source_resource_id, ''),"                        \
        "  'Type', COALESCE(r.source_resource_type, ''))::text,"                                                     \
        " " B("r.bidirectional") ", r.protocol,"                                                                     \
        " COALESCE((SELECT json_agg(u.x::text ORDER BY u.o) FROM unnest(r.ports) WITH ORDINALITY AS u(x, o))::text," \
        "  '[]'),"                                                                                                   \
        " COALESCE((SELECT json_agg(json_build_object('Start', lower(u.x), 'End', upper(u.x) - 1) ORDER BY u.o)"     \
        "  FROM unnest(r.port_ranges) WITH ORDINALITY AS u(x, o))::text, '[]'),"                                     \
        " r.authorized_groups::text, r.authorized_user FROM policy_rules r WHERE r.account_id = $1"                  \
        " ORDER BY r.policy_id, r.id"

static const char DDL_ROUTES[] =
        "CREATE TABLE `routes` (`id` text,`account_id` text,`public_id` text,`network` text,`domains` text,"
        "`keep_route` numeric,`net_id` text,`description` text,`peer` text,`peer_groups` text,"
        "`network_type` integer,`masquerade` numeric,`metric` integer,`enabled` numeric,`groups` text,"
        "`access_control_groups` text,`skip_auto_apply` numeric,PRIMARY KEY (`id`)"
        FK_ACCOUNT("fk_accounts_routes_g") ");"
        "CREATE INDEX `idx_routes_account_id` ON `routes`(`account_id`);";

#define SQL_ROUTES                                                                                                     \
        "SELECT r.id, r.account_id, '', " JSTR("r.network::text") ", " JARR("r.domains") ", " B("r.keep_route") ","    \
        " r.net_id, r.description, COALESCE(r.peer, ''), " JARR("r.peer_groups") ", r.network_type,"                   \
        " " B("r.masquerade") ", r.metric, " B("r.enabled") ", " JARR("r.groups") ", " JARR("r.access_control_groups") \
        ", " B("r.skip_auto_apply") " FROM routes r WHERE r.account_id = $1 ORDER BY r.id"

static const char DDL_NSGROUPS[] =
        "CREATE TABLE `name_server_groups` (`id` text,`account_id` text,`public_id` text,`name` text,"
        "`description` text,`name_servers` text,`groups` text,`primary` numeric,`domains` text,`enabled` numeric,"
        "`search_domains_enabled` numeric,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_name_server_groups_g") ");"
        "CREATE INDEX `idx_name_server_groups_account_id` ON `name_server_groups`(`account_id`);";

#define SQL_NSGROUPS                                                                                            \
        "SELECT n.id, n.account_id, '', n.name, n.description,"                                                 \
        " COALESCE((SELECT json_agg(json_build_object('IP', x.e->>'ip', 'NSType',"                              \
        "  CASE x.e->>'ns_type' WHEN 'udp' THEN 1 ELSE 0 END, 'Port', (x.e->>'port')::int) ORDER BY x.o)"       \
        "  FROM jsonb_array_elements(n.name_servers) WITH ORDINALITY AS x(e, o))::text, '[]'),"                 \
        " " JARR("n.groups") ", " B("n.\"primary\"") ", " JARR("n.domains") ", " B("n.enabled") ","             \
        " " B("n.search_domains_enabled") " FROM name_server_groups n WHERE n.account_id = $1 ORDER BY n.id"

static const char DDL_NETWORKS[] =
        "CREATE TABLE `networks` (`id` text,`account_id` text,`public_id` text,`name` text,`description` text,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_networks") ");"
        "CREATE INDEX `idx_networks_account_id` ON `networks`(`account_id`);";

#define SQL_NETWORKS                                                                                                 \
        "SELECT n.id, n.account_id, '', n.name, n.description FROM networks n WHERE n.account_id = $1 ORDER BY n.id"

static const char DDL_ROUTERS[] =
        "CREATE TABLE `network_routers` (`id` text,`network_id` text,`account_id` text,`public_id` text,"
        "`peer` text,`peer_groups` text,`masquerade` numeric,`metric` integer,`enabled` numeric,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_network_routers") ");"
        "CREATE INDEX `idx_network_routers_network_id` ON `network_routers`(`network_id`);"
        "CREATE INDEX `idx_network_routers_account_id` ON `network_routers`(`account_id`);";

#define SQL_ROUTERS                                                                                             \
        "SELECT r.id, r.network_id, r.account_id, '', COALESCE(r.peer, ''), " JARR("r.peer_groups") ","         \
        " " B("r.masquerade") ", r.metric, " B("r.enabled") " FROM network_routers r WHERE r.account_id = $1"   \
        " ORDER BY r.id"

static const char DDL_RESOURCES[] =
        "CREATE TABLE `network_resources` (`id` text,`network_id` text,`account_id` text,`public_id` text,"
        "`name` text,`description` text,`type` text,`domain` text,`prefix` text,`enabled` numeric,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_network_resources") ");"
        "CREATE INDEX `idx_network_resources_network_id` ON `network_resources`(`network_id`);"
        "CREATE INDEX `idx_network_resources_account_id` ON `network_resources`(`account_id`);";

#define SQL_RESOURCES                                                                                           \
        "SELECT r.id, r.network_id, r.account_id, '', r.name, r.description, r.type, r.domain,"                 \
        " " JSTR("r.prefix::text") ", " B("r.enabled") " FROM network_resources r WHERE r.account_id = $1"      \
        " ORDER BY r.id"

static const char DDL_ZONES[] =
        "CREATE TABLE `zones` (`id` text,`account_id` text,`name` text,`domain` text,`enabled` numeric,"
        "`enable_search_domain` numeric,`distribution_groups` text,PRIMARY KEY (`id`));"
        "CREATE INDEX `idx_zones_account_id` ON `zones`(`account_id`);";

#define SQL_ZONES                                                                                               \
        "SELECT z.id, z.account_id, z.name, z.domain, " B("z.enabled") ", " B("z.enable_search_domain") ","     \
        " " JARR("z.distribution_groups") " FROM dns_zones z WHERE z.account_id = $1 ORDER BY z.id"

static const char DDL_RECORDS[] =
        "CREATE TABLE `records` (`account_id` text,`zone_id` text,`id` text,`name` text,`type` text,"
        "`content` text,`ttl` integer,PRIMARY KEY (`id`),CONSTRAINT `fk_zones_records` FOREIGN KEY (`zone_id`)"
        " REFERENCES `zones`(`id`));"
        "CREATE INDEX `idx_records_account_id` ON `records`(`account_id`);"
        "CREATE INDEX `idx_records_zone_id` ON `records`(`zone_id`);";

#define SQL_RECORDS                                                                                             \
        "SELECT r.account_id, r.zone_id, r.id, r.name, r.type, r.content, r.ttl FROM dns_records r"             \
        " WHERE r.account_id = $1 ORDER BY r.zone_id, r.id"

/* Tables NetBird's AutoMigrate would create anyway, written empty so the
 * file has the whole schema: NetBird fills installations itself. */
static const char DDL_EMPTY[] =
        "CREATE TABLE `installations` (`id` integer,`installation_id_value` text,PRIMARY KEY (`id`));"
        "CREATE TABLE `extra_settings` (`peer_approval_enabled` numeric,`user_approval_required` numeric,"
        "`integrated_validator` text,`integrated_validator_groups` text);"
        "CREATE TABLE `network_addresses` (`net_ip` text,`mac` text);";

static const export_table_spec store_tables[] = {
        { "accounts", DDL_ACCOUNTS, SQL_ACCOUNTS, 0, NULL },
        { "account_onboardings", DDL_ONBOARDING, SQL_ONBOARDING, 0, NULL },
        { "users", DDL_USERS, SQL_USERS, (1u << 14) | (1u << 15), "users" },
        { "personal_access_tokens", DDL_PATS, SQL_PATS, 0, "tokens" },
        { "setup_keys", DDL_SETUP_KEYS, SQL_SETUP_KEYS, 0, "setup keys" },
        { "peers", DDL_PEERS, SQL_PEERS, 0, "peers" },
        { "groups", DDL_GROUPS, SQL_GROUPS, 0, "groups" },
        { "group_peers", DDL_GROUP_PEERS, SQL_GROUP_PEERS, 0, NULL },
        { "posture_checks", DDL_POSTURE, SQL_POSTURE, 0, "posture checks" },
        { "policies", DDL_POLICIES, SQL_POLICIES, 0, "policies" },
        { "policy_rules", DDL_RULES, SQL_RULES, 0, NULL },
        { "routes", DDL_ROUTES, SQL_ROUTES, 0, "routes" },
        { "name_server_groups", DDL_NSGROUPS, SQL_NSGROUPS, 0, "nameserver groups" },
        { "networks", DDL_NETWORKS, SQL_NETWORKS, 0, "networks" },
        { "network_routers", DDL_ROUTERS, SQL_ROUTERS, 0, NULL },
        { "network_resources", DDL_RESOURCES, SQL_RESOURCES, 0, NULL },
        { "zones", DDL_ZONES, SQL_ZONES, 0, "zones" },
        { "records", DDL_RECORDS, SQL_RECORDS, 0, NULL },
};
static const size_t n_store_tables = ELEMENTSOF(store_tables);

/* NetBird's activity store (management/server/activity): events, and the
 * e-mail and name of users events are about, encrypted, in deleted_users
 * (NetBird moves them out of meta when it saves an event). */
static const char DDL_EVENTS[] =
        "CREATE TABLE `events` (`timestamp` datetime,`activity` integer,`id` integer PRIMARY KEY AUTOINCREMENT,"
        "`initiator_id` text,`target_id` text,`account_id` text,`meta` text);"
        "CREATE INDEX `idx_events_account_id` ON `events`(`account_id`);"
        "CREATE TABLE `deleted_users` (`id` text,`email` text NOT NULL,`name` text,`enc_algo` text NOT NULL,"
        "PRIMARY KEY (`id`));";

static const char SQL_EVENTS[] =
        "SELECT e.id, " TSZ("e.\"timestamp\"") ", e.activity, e.initiator_id, e.target_id, e.account_id,"
        " e.meta::text, e.pii_key FROM events e WHERE e.account_id = $1 AND e.id > $2::bigint ORDER BY e.id"
        " LIMIT $3::int";

typedef struct export_file {
        char *path, *tmp;
        sqlite3 *db;
} export_file;

typedef struct export_run {
        const admin_ctx *a;
        cp_store_tx *tx;
        export_file store, events;
        sqlite3_stmt **insert;          /* per store_tables row */
        sqlite3_stmt *event_insert, *deleted_user_insert;
        uint8_t nb_key[CP_DATA_KEY_LEN];
        bool has_nb_key;
        int64_t counts[ELEMENTSOF(store_tables)];       /* per table, for the current account */
        int64_t n_events;
} export_run;

/* ---- SQLite files ----------------------------------------------------------- */

static int sqlite_fail(sqlite3 *db, const char *what, cp_error *err) {
        return cp_error_set(err, -EIO, "%s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
}

static void file_remove_tmp(export_file *f) {
        char journal[PATH_MAX];

        if (!f->tmp)
                return;
        (void) unlink(f->tmp);
        (void) snprintf(journal, sizeof journal, "%s-journal", f->tmp);
        (void) unlink(journal);
}

/* FILE.tmp, new and private, opened with a transaction begun. */
static int file_open(export_file *f, const char *path, cp_error *err) {
        int fd;

        f->path = cp_xstrdup(path);
        f->tmp = cp_xasprintf("%s.tmp", path);
        file_remove_tmp(f);             /* left by an interrupted export */
        fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return cp_error_set(err, -errno, "cannot create %s: %s", f->tmp, strerror(errno));
        (void) close(fd);
        if (sqlite3_open_v2(f->tmp, &f->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        /* Rows go in table order, parents first, but NetBird's own stores
         * have dangling references (a peer's user deleted): keys are not
         * enforced while writing, as gorm does not enforce them either. */
        if (sqlite3_exec(f->db, "PRAGMA foreign_keys = OFF; BEGIN", NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        return 0;
}

static int file_commit(export_file *f, cp_error *err) {
        if (sqlite3_exec(f->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        if (sqlite3_close(f->db) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        f->db = NULL;
        return 0;
}

static void file_release(export_file *f, bool discard) {
        if (f->db)
                (void) sqlite3_close_v2(f->db);
        f->db = NULL;
        if (discard)
                file_remove_tmp(f);
        free(f->path);
        free(f->tmp);
        f->path = f->tmp = NULL;
}

/* INSERT INTO table VALUES (?, ...) with one parameter per column of the
 * table as created. */
static int prepare_insert(sqlite3 *db, const char *table, const char *verb, sqlite3_stmt **ret, cp_error *err) {
        sqlite3_stmt *probe = NULL;
        cp_strbuf sb;
        int n, rc;

        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "SELECT * FROM `%s`", table);
        rc = sqlite3_prepare_v2(db, sb.buf, -1, &probe, NULL);
        n = rc == SQLITE_OK ? sqlite3_column_count(probe) : 0;
        (void) sqlite3_finalize(probe);
        cp_strbuf_reset(&sb);
        cp_strbuf_addf(&sb, "%s INTO `%s` VALUES (", verb, table);
        for (int i = 0; i < n; i++)
                cp_strbuf_adds(&sb, i ? ",?" : "?");
        cp_strbuf_addch(&sb, ')');
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, sb.buf, -1, ret, NULL);
        cp_strbuf_release(&sb);
        if (rc != SQLITE_OK)
                return sqlite_fail(db, table, err);
        return 0;
}

/* Binds values (NULL = SQL NULL) and inserts one row. */
static int insert_row(sqlite3 *db, sqlite3_stmt *st, const char *const *values, int n, const char *table,
                      cp_error *err) {
        int rc = SQLITE_OK;

        for (int i = 0; i < n && rc == SQLITE_OK; i++)
                rc = values[i] ? sqlite3_bind_text(st, i + 1, values[i], -1, SQLITE_TRANSIENT)
                               : sqlite3_bind_null(st, i + 1);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        if (rc != SQLITE_OK)
                (void) sqlite_fail(db, table, err);
        (void) sqlite3_reset(st);
        (void) sqlite3_clear_bindings(st);
        return rc == SQLITE_OK ? 0 : -EIO;
}

/* ---- values ----------------------------------------------------------------- */

/* A value sealed under our key (fp = its pii_key), as NetBird stores it:
 * encrypted with its key when given, else plain. *ret is the caller's
 * (wiped and freed by secret_free). */
static int pii_value(const export_run *x, const char *fp, const char *stored, char **ret, cp_error *err) {
        char *plain = NULL;
        int r;

        r = cp_pii_open_strict(fp, stored ? stored : "", &plain, err);
        if (r < 0) {
                if (r == -ENOKEY)
                        cp_error_hint(err, "give this deployment's DataStoreEncryptionKey "
                                      "(--data-store-encryption-key or NB_MGMT_DATA_STORE_ENCRYPTION_KEY)");
                return r;
        }
        if (!x->has_nb_key) {
                *ret = plain;
                return 0;
        }
        r = cp_crypto_aead_encrypt(x->nb_key, plain, strlen(plain), ret, err);
        cp_explicit_bzero(plain, strlen(plain));
        free(plain);
        return r;
}

/* Names the row whose personal data failed (err keeps its hint). */
static void pii_error(cp_error *err, int r, const char *what, const char *id) {
        char why[sizeof err->message], hint[sizeof err->hint];

        (void) snprintf(why, sizeof why, "%s", err->message);
        (void) snprintf(hint, sizeof hint, "%s", err->hint);
        (void) cp_error_set(err, r, "%s %s: cannot open its personal data: %s", what, id, why);
        if (hint[0])
                cp_error_hint(err, "%s", hint);
}

static void secret_free(char *s) {
        if (s) {
                cp_explicit_bzero(s, strlen(s));
                free(s);
        }
}

/* ---- tables ------------------------------------------------------------------- */

static int export_table(export_run *x, size_t t, const char *account_id, cp_error *err) {
        const export_table_spec *tab = &store_tables[t];
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        sqlite3_stmt *st = x->insert[t];
        int n = sqlite3_bind_parameter_count(st);
        const char **values;
        int r;

        r = cp_store_tx_exec(x->tx, tab->sql, 1, p, &rows, err);
        if (r < 0)
                return r;
        values = cp_xcalloc((size_t) n + 1, sizeof *values);
        for (int i = 0; i < cp_store_rows_count(rows) && r >= 0; i++) {
                char *sealed[32] = { NULL };
                const char *fp = tab->pii ? cp_store_rows_get(rows, i, n) : NULL;
                for (int c = 0; c < n && r >= 0; c++) {
                        values[c] = cp_store_rows_get(rows, i, c);
                        if (c < 32 && (tab->pii & (1u << c))) {
                                r = pii_value(x, fp, values[c], &sealed[c], err);
                                if (r < 0)
                                        pii_error(err, r, tab->name, cp_store_rows_get(rows, i, 0));
                                values[c] = sealed[c];
                        }
                }
                if (r >= 0)
                        r = insert_row(x->store.db, st, values, n, tab->name, err);
                for (int c = 0; c < 32; c++)
                        secret_free(sealed[c]);
        }
        free(values);
        if (r >= 0)
                x->counts[t] += cp_store_rows_count(rows);
        return r;
}

/* One event as NetBird's activity store saves it: when meta holds both
 * "email" and "name" they move to deleted_users (encrypted, keyed by the
 * target id, the last event winning) and out of meta, which is NULL when
 * nothing else was in it. */
static int export_event(export_run *x, const cp_store_rows *rows, int i, cp_error *err) {
        const char *meta_text = cp_store_rows_get(rows, i, 6), *fp = cp_store_rows_get(rows, i, 7);
        const char *values[7];
        char *meta_out = NULL, *email = NULL, *name = NULL;
        json_t *meta = meta_text ? json_loads(meta_text, 0, NULL) : NULL;
        json_t *je = meta ? json_object_get(meta, "email") : NULL, *jn = meta ? json_object_get(meta, "name") : NULL;
        int r = 0;

        if (json_is_string(je) && json_is_string(jn)) {
                r = pii_value(x, fp, json_string_value(je), &email, err);
                if (r >= 0)
                        r = pii_value(x, fp, json_string_value(jn), &name, err);
                if (r < 0) {
                        pii_error(err, r, "event", cp_store_rows_get(rows, i, 0));
                        goto out;
                }
                const char *du[4] = { cp_store_rows_get(rows, i, 4), email, name, "GCM" };
                r = insert_row(x->events.db, x->deleted_user_insert, du, 4, "deleted_users", err);
                if (r < 0)
                        goto out;
                size_t before = json_object_size(meta);
                (void) json_object_del(meta, "email");
                (void) json_object_del(meta, "name");
                if (before == 2) {
                        json_decref(meta);
                        meta = NULL;
                }
        }
        /* encoding/json writes a map's keys sorted. */
        meta_out = meta ? json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        /* events: timestamp, activity, id, initiator_id, target_id, account_id, meta */
        values[0] = cp_store_rows_get(rows, i, 1);
        values[1] = cp_store_rows_get(rows, i, 2);
        values[2] = cp_store_rows_get(rows, i, 0);
        values[3] = cp_store_rows_get(rows, i, 3);
        values[4] = cp_store_rows_get(rows, i, 4);
        values[5] = cp_store_rows_get(rows, i, 5);
        values[6] = meta_out;
        r = insert_row(x->events.db, x->event_insert, values, 7, "events", err);
out:
        json_decref(meta);
        free(meta_out);
        secret_free(email);
        secret_free(name);
        return r;
}

static int export_events(export_run *x, const char *account_id, cp_error *err) {
        char after[24] = "0";

        for (;;) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *p[3] = { account_id, after, EVENTS_PAGE };
                int r = cp_store_tx_exec(x->tx, SQL_EVENTS, 3, p, &rows, err);
                int n = r < 0 ? 0 : cp_store_rows_count(rows);
                if (r < 0)
                        return r;
                for (int i = 0; i < n; i++) {
                        r = export_event(x, rows, i, err);
                        if (r < 0)
                                return r;
                }
                x->n_events += n;
                if (n < atoi(EVENTS_PAGE))
                        return 0;
                (void) snprintf(after, sizeof after, "%s", cp_store_rows_get(rows, n - 1, 0));
        }
}

static void summary_line(const export_run *x, const char *account_id, cp_strbuf *out) {
        bool first = true;

        cp_strbuf_addf(out, "exported account %s (", account_id);
        for (size_t t = 0; t < n_store_tables; t++) {
                if (!store_tables[t].noun)
                        continue;
                cp_strbuf_addf(out, "%s%" PRId64 " %s", first ? "" : ", ", x->counts[t],
                               store_tables[t].noun);
                first = false;
        }
        if (x->events.path)
                cp_strbuf_addf(out, ", %" PRId64 " events", x->n_events);
        cp_strbuf_adds(out, ")\n");
}

/* ---- the command ---------------------------------------------------------------- */

static const char SQL_SNAPSHOT[] = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
static const char SQL_ACCOUNT_ONE[] = "SELECT a.id FROM accounts a WHERE a.id = $1";
/* Deployment-wide on purpose: the export's list of accounts. */
static const char SQL_ACCOUNT_ALL[] = "SELECT a.id FROM accounts a ORDER BY a.created_at, a.id";

/* Creates the files' schema and the insert statements. */
static int create_schema(export_run *x, cp_error *err) {
        for (size_t t = 0; t < n_store_tables; t++) {
                const export_table_spec *tab = &store_tables[t];
                if (sqlite3_exec(x->store.db, tab->ddl, NULL, NULL, NULL) != SQLITE_OK)
                        return sqlite_fail(x->store.db, tab->name, err);
                if (prepare_insert(x->store.db, tab->name, "INSERT", &x->insert[t], err) < 0)
                        return -EIO;
        }
        if (sqlite3_exec(x->store.db, DDL_EMPTY, NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(x->store.db, "installations", err);
        if (!x->events.path)
                return 0;
        if (sqlite3_exec(x->events.db, DDL_EVENTS, NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(x->events.db, "events", err);
        if (prepare_insert(x->events.db, "events", "INSERT", &x->event_insert, err) < 0 ||
            prepare_insert(x->events.db, "deleted_users", "INSERT OR REPLACE", &x->deleted_user_insert, err) < 0)
                return -EIO;
        return 0;
}

static int export_all(export_run *x, cp_strbuf *out, cp_error *err) {
        const admin_opts *o = x->a->opts;
        _cleanup_rows_ cp_store_rows *accounts = NULL;
        const char *p[1] = { o->account };
        int r;

        r = cp_store_tx_exec(x->tx, SQL_SNAPSHOT, 0, NULL, NULL, err);
        if (r >= 0)
                r = o->account ? cp_store_tx_exec(x->tx, SQL_ACCOUNT_ONE, 1, p, &accounts, err)
                               : cp_store_tx_exec(x->tx, SQL_ACCOUNT_ALL, 0, NULL, &accounts, err);
        if (r < 0)
                return r;
        if (o->account && cp_store_rows_count(accounts) == 0)
                return cp_error_set(err, -ENOENT, "account %s not found", o->account);
        r = create_schema(x, err);
        for (int i = 0; i < cp_store_rows_count(accounts) && r >= 0; i++) {
                const char *id = cp_store_rows_get(accounts, i, 0);
                memset(x->counts, 0, sizeof x->counts);
                x->n_events = 0;
                for (size_t t = 0; t < n_store_tables && r >= 0; t++)
                        r = export_table(x, t, id, err);
                if (r >= 0 && x->events.path)
                        r = export_events(x, id, err);
                if (r >= 0) {
                        summary_line(x, id, out);
                        cp_log_kv(&log_ctx, CP_LOG_INFO, "account exported", "account", id, NULL);
                }
        }
        return r;
}

/* Installs our DataStoreEncryptionKey (when configured) to open the
 * personal data; returns 0 or an exit code after reporting. */
static int install_our_key(const admin_ctx *a) {
        uint8_t key[CP_DATA_KEY_LEN], prev[CP_DATA_KEY_LEN];
        int r = cp_config_encryption_key(a->cfg, key), pr = cp_config_encryption_key_previous(a->cfg, prev);

        if (r < 0 || pr < 0) {
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                return admin_fail(ADMIN_EXIT_USAGE, NULL, "invalid DataStoreEncryptionKey: expected standard base64 "
                                  "of 32 bytes");
        }
        if (r == 1)
                cp_pii_install(key, pr == 1 ? prev : NULL);
        cp_explicit_bzero(key, sizeof key);
        cp_explicit_bzero(prev, sizeof prev);
        return 0;
}

static int check_target(const char *path, bool force) {
        struct stat st;

        if (stat(path, &st) == 0 && !force) {
                fprintf(stderr, ADMIN_PROG ": error: %s exists\nhint: give --force to replace it\n", path);
                return ADMIN_EXIT_FAILURE;
        }
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
                fprintf(stderr, ADMIN_PROG ": error: %s is a directory\n", path);
                return ADMIN_EXIT_FAILURE;
        }
        return 0;
}

int admin_cmd_export(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        export_run x = { .a = a };
        cp_store *s = NULL;
        cp_error err = { 0 };
        cp_strbuf out;
        int r, code;

        if (!o->export_sqlite || !*o->export_sqlite) {
                fprintf(stderr, ADMIN_PROG ": error: --sqlite FILE is required (the NetBird store.db to write)\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->events_sqlite && *o->events_sqlite && !(o->encryption_key && *o->encryption_key)) {
                fprintf(stderr, ADMIN_PROG ": error: --events-sqlite needs --encryption-key: NetBird's activity "
                        "store encrypts the e-mails and names it keeps\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->encryption_key && *o->encryption_key) {
                if (cp_crypto_data_key_parse(o->encryption_key, x.nb_key, &err) < 0)
                        return admin_fail(ADMIN_EXIT_USAGE, &err, "invalid --encryption-key");
                x.has_nb_key = true;
        }
        if (o->events_sqlite && *o->events_sqlite && strcmp(o->events_sqlite, o->export_sqlite) == 0) {
                fprintf(stderr, ADMIN_PROG ": error: --sqlite and --events-sqlite name the same file\n");
                return ADMIN_EXIT_USAGE;
        }
        code = check_target(o->export_sqlite, o->force);
        if (code == 0 && o->events_sqlite && *o->events_sqlite)
                code = check_target(o->events_sqlite, o->force);
        if (code == 0)
                code = install_our_key(a);
        if (code != 0) {
                cp_explicit_bzero(x.nb_key, sizeof x.nb_key);
                return code;
        }
        code = admin_open_store(a, false, NULL, &s);
        if (code != 0)
                goto out_keys;

        cp_strbuf_init(&out);
        x.insert = cp_xcalloc(n_store_tables, sizeof *x.insert);
        r = file_open(&x.store, o->export_sqlite, &err);
        if (r >= 0 && o->events_sqlite && *o->events_sqlite)
                r = file_open(&x.events, o->events_sqlite, &err);
        if (r >= 0)
                r = cp_store_tx_begin(s, &x.tx, &err);
        if (r >= 0)
                r = export_all(&x, &out, &err);
        x.tx = cp_store_tx_end(x.tx);   /* read only: nothing to commit */
        for (size_t t = 0; t < n_store_tables; t++)
                (void) sqlite3_finalize(x.insert[t]);
        (void) sqlite3_finalize(x.event_insert);
        (void) sqlite3_finalize(x.deleted_user_insert);
        free(x.insert);
        if (r >= 0)
                r = file_commit(&x.store, &err);
        if (r >= 0 && x.events.path)
                r = file_commit(&x.events, &err);
        /* Both files complete: only now do they take their names. */
        if (r >= 0 && rename(x.store.tmp, x.store.path) < 0)
                r = cp_error_set(&err, -errno, "cannot rename %s to %s: %s", x.store.tmp, x.store.path,
                                 strerror(errno));
        if (r >= 0 && x.events.path && rename(x.events.tmp, x.events.path) < 0) {
                r = cp_error_set(&err, -errno, "cannot rename %s to %s: %s", x.events.tmp, x.events.path,
                                 strerror(errno));
                (void) unlink(x.store.path);
        }
        file_release(&x.store, r < 0);
        file_release(&x.events, r < 0);
        if (r < 0) {
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "export failed, nothing written");
        } else {
                fputs(out.buf, stdout);
                code = admin_finish_stdout();
        }
        cp_strbuf_release(&out);
        cp_store_free(s);
out_keys:
        cp_pii_uninstall();
        cp_explicit_bzero(x.nb_key, sizeof x.nb_key);
        return code;
}
