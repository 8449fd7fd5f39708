/*
 * admin-export-schema.c: NetBird v0.77.1's store tables as the export
 * writes them (see admin-export.h): SQLite DDL as gorm's SQLite dialect
 * creates it from the models, and the SELECT that turns one account's
 * rows of our schema into NetBird's stored values.
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
#include "admin-export.h"

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

static const char SQL_ACCOUNTS[] =
        "SELECT a.id, a.created_by, " TSZ("a.created_at") ", a.domain, a.domain_category,"
        " " B("a.is_domain_primary_account") ", a.network_identifier, " IPNET("a.network_net") ","
        " " IPNET("a.network_net_v6") ", a.network_dns, a.network_serial,"
        " " JARR("a.dns_settings_disabled_management_groups") ","
        " " B("a.settings_peer_login_expiration_enabled") ", a.settings_peer_login_expiration,"
        " " B("a.settings_peer_inactivity_expiration_enabled") ", a.settings_peer_inactivity_expiration,"
        " " B("a.settings_regular_users_view_blocked") ", " B("a.settings_groups_propagation_enabled") ","
        " " B("a.settings_jwt_groups_enabled") ", a.settings_jwt_groups_claim_name,"
        " " JARR("a.settings_jwt_allow_groups") ", " B("a.settings_routing_peer_dns_resolution_enabled") ","
        " a.settings_dns_domain, " JSTR("a.settings_network_range::text") ", '\"\"',"
        " " B("a.settings_peer_expose_enabled") ", " JARR("a.settings_peer_expose_groups") ","
        " " B("a.settings_extra_peer_approval_enabled") ", " B("a.settings_extra_user_approval_required") ","
        " '', '[]', " B("a.settings_lazy_connection_enabled") ", 'disabled', 0,"
        " CASE WHEN a.network_net_v6 IS NULL THEN '[]' ELSE COALESCE((SELECT json_build_array(g.id)::text"
        "  FROM groups g WHERE g.account_id = a.id AND g.name = 'All'), '[]') END,"
        " 0, 0, NULL, 0, ''"
        " FROM accounts a WHERE a.id = $1";

static const char DDL_ONBOARDING[] =
        "CREATE TABLE `account_onboardings` (`account_id` text,`onboarding_flow_pending` numeric,"
        "`signup_form_pending` numeric,`created_at` datetime,`updated_at` datetime,PRIMARY KEY (`account_id`),"
        "CONSTRAINT `fk_accounts_onboarding` FOREIGN KEY (`account_id`) REFERENCES `accounts`(`id`)"
        " ON DELETE CASCADE);";

/* Onboarding done: the dashboard shows the account, not its first-run flow. */
static const char SQL_ONBOARDING[] =
        "SELECT a.id, 0, 0, " TSZ("a.created_at") ", " TSZ("a.created_at") " FROM accounts a WHERE a.id = $1";

static const char DDL_USERS[] =
        "CREATE TABLE `users` (`id` text,`account_id` text,`role` text,`is_service_user` numeric,"
        "`non_deletable` numeric,`service_user_name` text,`auto_groups` text,`blocked` numeric,"
        "`pending_approval` numeric,`last_login` datetime,`created_at` datetime,`issued` text DEFAULT \"api\","
        "`integration_ref_id` integer,`integration_ref_integration_type` text,`name` text DEFAULT '',"
        "`email` text DEFAULT '',PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_users_g") ");"
        "CREATE INDEX `idx_users_account_id` ON `users`(`account_id`);";

/* name (14) and email (15) are sealed under our key; pii_key follows. */
static const char SQL_USERS[] =
        "SELECT u.id, u.account_id, u.role, " B("u.is_service_user") ", " B("u.non_deletable") ","
        " u.service_user_name, " JARR("u.auto_groups") ", " B("u.blocked") ", " B("u.pending_approval") ","
        " " TS("u.last_login") ", " TSZ("u.created_at") ", u.issued, 0, '', u.name, u.email, u.pii_key"
        " FROM users u WHERE u.account_id = $1 ORDER BY u.id";

static const char DDL_PATS[] =
        "CREATE TABLE `personal_access_tokens` (`id` text,`user_id` text,`name` text,`hashed_token` text,"
        "`expiration_date` datetime,`created_by` text,`created_at` datetime,`last_used` datetime,"
        "PRIMARY KEY (`id`),CONSTRAINT `fk_users_pa_ts_g` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`)"
        " ON DELETE CASCADE);"
        "CREATE INDEX `idx_personal_access_tokens_user_id` ON `personal_access_tokens`(`user_id`);";

static const char SQL_PATS[] =
        "SELECT t.id, t.user_id, t.name, t.hashed_token, " TS("t.expiration_date") ", t.created_by,"
        " " TSZ("t.created_at") ", " TS("t.last_used") " FROM personal_access_tokens t WHERE t.account_id = $1"
        " ORDER BY t.id";

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
static const char SQL_SETUP_KEYS[] =
        "SELECT k.id, k.account_id, k.key, k.key_secret, k.name, k.type, " TSZ("k.created_at") ","
        " " TS("k.expires_at") ", " TSZ("k.updated_at") ", " B("k.revoked") ", k.used_times, " TS("k.last_used") ","
        " " JARR("k.auto_groups") ", k.usage_limit, " B("k.ephemeral") ", " B("k.allow_extra_dns_labels")
        " FROM setup_keys k WHERE k.account_id = $1 ORDER BY k.id";

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
static const char SQL_PEERS[] =
        "SELECT p.id, p.account_id, p.key, " JSTR("host(p.ip)") ", " JSTR("host(p.ipv6)") ", p.meta_hostname,"
        " p.meta_go_os, p.meta_kernel, p.meta_core, p.meta_platform, p.meta_os, p.meta_os_version,"
        " p.meta_wt_version, p.meta_ui_version, p.meta_kernel_version, p.meta_network_addresses::text,"
        " p.meta_system_serial_number, p.meta_system_product_name, p.meta_system_manufacturer,"
        " p.meta_environment::text, p.meta_flags::text, p.meta_files::text, " JARR("p.meta_capabilities") ","
        " p.meta_sync_message_version, " B("p.proxy_embedded") ", COALESCE(p.proxy_cluster, ''), p.name,"
        " p.dns_label, " TSZ("p.peer_status_last_seen") ", 0, 0, " B("p.peer_status_login_expired") ","
        " " B("p.peer_status_requires_approval") ", COALESCE(p.user_id, ''), p.ssh_key, " B("p.ssh_enabled") ","
        " " B("p.login_expiration_enabled") ", " B("p.inactivity_expiration_enabled") ", " TS("p.last_login") ","
        " " TSZ("p.created_at") ", " B("p.ephemeral") ", " JSTR("host(p.location_connection_ip)") ","
        " p.location_country_code, p.location_city_name, p.location_geo_name_id, " JARR("p.extra_dns_labels") ","
        " " B("p.allow_extra_dns_labels") " FROM peers p WHERE p.account_id = $1 ORDER BY p.id";

static const char DDL_GROUPS[] =
        "CREATE TABLE `groups` (`id` text,`account_id` text,`public_id` text,`name` text,`issued` text,"
        "`resources` text,`integration_ref_id` integer,`integration_ref_integration_type` text,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_groups_g") ");"
        "CREATE INDEX `idx_groups_account_id` ON `groups`(`account_id`);";

static const char SQL_GROUPS[] =
        "SELECT g.id, g.account_id, '', g.name, g.issued,"
        " COALESCE((SELECT json_agg(json_build_object('ID', r.resource_id, 'Type', r.resource_type)"
        "  ORDER BY r.resource_id)::text FROM group_resources r WHERE r.account_id = g.account_id"
        "  AND r.group_id = g.id), '[]'),"
        " g.integration_ref_id, g.integration_ref_integration_type FROM groups g WHERE g.account_id = $1"
        " ORDER BY g.id";

static const char DDL_GROUP_PEERS[] =
        "CREATE TABLE `group_peers` (`account_id` text,`group_id` text,`peer_id` text,"
        "PRIMARY KEY (`group_id`,`peer_id`),CONSTRAINT `fk_groups_group_peers` FOREIGN KEY (`group_id`)"
        " REFERENCES `groups`(`id`) ON DELETE CASCADE);"
        "CREATE INDEX `idx_group_peers_account_id` ON `group_peers`(`account_id`);";

static const char SQL_GROUP_PEERS[] =
        "SELECT gp.account_id, gp.group_id, gp.peer_id FROM group_peers gp WHERE gp.account_id = $1"
        " ORDER BY gp.group_id, gp.peer_id";

static const char DDL_POSTURE[] =
        "CREATE TABLE `posture_checks` (`id` text,`name` text,`description` text,`account_id` text,"
        "`public_id` text,`checks` text,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_posture_checks") ");"
        "CREATE INDEX `idx_posture_checks_account_id` ON `posture_checks`(`account_id`);";

/* The REST form we keep -> posture.ChecksDefinition. */
#define PC(path) "c.checks->" path
#define MINV(os)                                                                                        \
        "CASE WHEN " PC("'os_version_check'") " ? '" os "' THEN jsonb_build_object('MinVersion', "      \
        PC("'os_version_check'->'" os "'->>'min_version'") ") END"
#define MINK(os)                                                                                        \
        "CASE WHEN " PC("'os_version_check'") " ? '" os "' THEN jsonb_build_object('MinKernelVersion', " \
        PC("'os_version_check'->'" os "'->>'min_kernel_version'") ") END"
static const char SQL_POSTURE[] =
        "SELECT c.id, c.name, c.description, c.account_id, '', jsonb_strip_nulls(jsonb_build_object("
        " 'NBVersionCheck', CASE WHEN c.checks ? 'nb_version_check' THEN jsonb_build_object('MinVersion',"
        "  " PC("'nb_version_check'->>'min_version'") ") END,"
        " 'OSVersionCheck', CASE WHEN c.checks ? 'os_version_check' THEN jsonb_build_object("
        "  'Android', " MINV("android") ", 'Darwin', " MINV("darwin") ", 'Ios', " MINV("ios") ","
        "  'Linux', " MINK("linux") ", 'Windows', " MINK("windows") ") END,"
        " 'GeoLocationCheck', CASE WHEN c.checks ? 'geo_location_check' THEN jsonb_build_object("
        "  'Locations', COALESCE((SELECT jsonb_agg(jsonb_build_object('CountryCode', l->>'country_code',"
        "   'CityName', COALESCE(l->>'city_name', '')) ORDER BY o) FROM jsonb_array_elements("
        "   " PC("'geo_location_check'->'locations'") ") WITH ORDINALITY AS x(l, o)), '[]'),"
        "  'Action', " PC("'geo_location_check'->>'action'") ") END,"
        " 'PeerNetworkRangeCheck', CASE WHEN c.checks ? 'peer_network_range_check' THEN jsonb_build_object("
        "  'Action', " PC("'peer_network_range_check'->>'action'") ","
        "  'Ranges', COALESCE(" PC("'peer_network_range_check'->'ranges'") ", '[]')) END,"
        " 'ProcessCheck', CASE WHEN c.checks ? 'process_check' THEN jsonb_build_object('Processes',"
        "  COALESCE((SELECT jsonb_agg(jsonb_build_object('LinuxPath', COALESCE(x.p->>'linux_path', ''),"
        "   'MacPath', COALESCE(x.p->>'mac_path', ''), 'WindowsPath', COALESCE(x.p->>'windows_path', ''))"
        "   ORDER BY x.o) FROM jsonb_array_elements(" PC("'process_check'->'processes'") ")"
        "   WITH ORDINALITY AS x(p, o)), '[]')) END))::text"
        " FROM posture_checks c WHERE c.account_id = $1 ORDER BY c.id";

static const char DDL_POLICIES[] =
        "CREATE TABLE `policies` (`id` text,`public_id` text,`account_id` text,`name` text,`description` text,"
        "`enabled` numeric,`source_posture_checks` text,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_policies") ");"
        "CREATE INDEX `idx_policies_account_id` ON `policies`(`account_id`);";

static const char SQL_POLICIES[] =
        "SELECT p.id, '', p.account_id, p.name, p.description, " B("p.enabled") ","
        " " JARR("p.source_posture_checks") " FROM policies p WHERE p.account_id = $1 ORDER BY p.id";

static const char DDL_RULES[] =
        "CREATE TABLE `policy_rules` (`id` text,`policy_id` text,`name` text,`description` text,`enabled` numeric,"
        "`action` text,`destinations` text,`destination_resource` text,`sources` text,`source_resource` text,"
        "`bidirectional` numeric,`protocol` text,`ports` text,`port_ranges` text,`authorized_groups` text,"
        "`authorized_user` text,PRIMARY KEY (`id`),CONSTRAINT `fk_policies_rules` FOREIGN KEY (`policy_id`)"
        " REFERENCES `policies`(`id`) ON DELETE CASCADE);"
        "CREATE INDEX `idx_policy_rules_policy_id` ON `policy_rules`(`policy_id`);";

/* port_ranges are int4range [start, end + 1) here, inclusive {Start, End}
 * there; ports are strings there. */
static const char SQL_RULES[] =
        "SELECT r.id, r.policy_id, r.name, r.description, " B("r.enabled") ", r.action, " JARR("r.destinations") ","
        " json_build_object('ID', COALESCE(r.destination_resource_id, ''),"
        "  'Type', COALESCE(r.destination_resource_type, ''))::text,"
        " " JARR("r.sources") ", json_build_object('ID', COALESCE(r.source_resource_id, ''),"
        "  'Type', COALESCE(r.source_resource_type, ''))::text,"
        " " B("r.bidirectional") ", r.protocol,"
        " COALESCE((SELECT json_agg(u.x::text ORDER BY u.o) FROM unnest(r.ports) WITH ORDINALITY AS u(x, o))::text,"
        "  '[]'),"
        " COALESCE((SELECT json_agg(json_build_object('Start', lower(u.x), 'End', upper(u.x) - 1) ORDER BY u.o)"
        "  FROM unnest(r.port_ranges) WITH ORDINALITY AS u(x, o))::text, '[]'),"
        " r.authorized_groups::text, r.authorized_user FROM policy_rules r WHERE r.account_id = $1"
        " ORDER BY r.policy_id, r.id";

static const char DDL_ROUTES[] =
        "CREATE TABLE `routes` (`id` text,`account_id` text,`public_id` text,`network` text,`domains` text,"
        "`keep_route` numeric,`net_id` text,`description` text,`peer` text,`peer_groups` text,"
        "`network_type` integer,`masquerade` numeric,`metric` integer,`enabled` numeric,`groups` text,"
        "`access_control_groups` text,`skip_auto_apply` numeric,PRIMARY KEY (`id`)"
        FK_ACCOUNT("fk_accounts_routes_g") ");"
        "CREATE INDEX `idx_routes_account_id` ON `routes`(`account_id`);";

static const char SQL_ROUTES[] =
        "SELECT r.id, r.account_id, '', " JSTR("r.network::text") ", " JARR("r.domains") ", " B("r.keep_route") ","
        " r.net_id, r.description, COALESCE(r.peer, ''), " JARR("r.peer_groups") ", r.network_type,"
        " " B("r.masquerade") ", r.metric, " B("r.enabled") ", " JARR("r.groups") ", " JARR("r.access_control_groups")
        ", " B("r.skip_auto_apply") " FROM routes r WHERE r.account_id = $1 ORDER BY r.id";

static const char DDL_NSGROUPS[] =
        "CREATE TABLE `name_server_groups` (`id` text,`account_id` text,`public_id` text,`name` text,"
        "`description` text,`name_servers` text,`groups` text,`primary` numeric,`domains` text,`enabled` numeric,"
        "`search_domains_enabled` numeric,PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_name_server_groups_g") ");"
        "CREATE INDEX `idx_name_server_groups_account_id` ON `name_server_groups`(`account_id`);";

static const char SQL_NSGROUPS[] =
        "SELECT n.id, n.account_id, '', n.name, n.description,"
        " COALESCE((SELECT json_agg(json_build_object('IP', x.e->>'ip', 'NSType',"
        "  CASE x.e->>'ns_type' WHEN 'udp' THEN 1 ELSE 0 END, 'Port', (x.e->>'port')::int) ORDER BY x.o)"
        "  FROM jsonb_array_elements(n.name_servers) WITH ORDINALITY AS x(e, o))::text, '[]'),"
        " " JARR("n.groups") ", " B("n.\"primary\"") ", " JARR("n.domains") ", " B("n.enabled") ","
        " " B("n.search_domains_enabled") " FROM name_server_groups n WHERE n.account_id = $1 ORDER BY n.id";

static const char DDL_NETWORKS[] =
        "CREATE TABLE `networks` (`id` text,`account_id` text,`public_id` text,`name` text,`description` text,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_networks") ");"
        "CREATE INDEX `idx_networks_account_id` ON `networks`(`account_id`);";

static const char SQL_NETWORKS[] =
        "SELECT n.id, n.account_id, '', n.name, n.description FROM networks n WHERE n.account_id = $1 ORDER BY n.id";

static const char DDL_ROUTERS[] =
        "CREATE TABLE `network_routers` (`id` text,`network_id` text,`account_id` text,`public_id` text,"
        "`peer` text,`peer_groups` text,`masquerade` numeric,`metric` integer,`enabled` numeric,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_network_routers") ");"
        "CREATE INDEX `idx_network_routers_network_id` ON `network_routers`(`network_id`);"
        "CREATE INDEX `idx_network_routers_account_id` ON `network_routers`(`account_id`);";

static const char SQL_ROUTERS[] =
        "SELECT r.id, r.network_id, r.account_id, '', COALESCE(r.peer, ''), " JARR("r.peer_groups") ","
        " " B("r.masquerade") ", r.metric, " B("r.enabled") " FROM network_routers r WHERE r.account_id = $1"
        " ORDER BY r.id";

static const char DDL_RESOURCES[] =
        "CREATE TABLE `network_resources` (`id` text,`network_id` text,`account_id` text,`public_id` text,"
        "`name` text,`description` text,`type` text,`domain` text,`prefix` text,`enabled` numeric,"
        "PRIMARY KEY (`id`)" FK_ACCOUNT("fk_accounts_network_resources") ");"
        "CREATE INDEX `idx_network_resources_network_id` ON `network_resources`(`network_id`);"
        "CREATE INDEX `idx_network_resources_account_id` ON `network_resources`(`account_id`);";

static const char SQL_RESOURCES[] =
        "SELECT r.id, r.network_id, r.account_id, '', r.name, r.description, r.type, r.domain,"
        " " JSTR("r.prefix::text") ", " B("r.enabled") " FROM network_resources r WHERE r.account_id = $1"
        " ORDER BY r.id";

static const char DDL_ZONES[] =
        "CREATE TABLE `zones` (`id` text,`account_id` text,`name` text,`domain` text,`enabled` numeric,"
        "`enable_search_domain` numeric,`distribution_groups` text,PRIMARY KEY (`id`));"
        "CREATE INDEX `idx_zones_account_id` ON `zones`(`account_id`);";

static const char SQL_ZONES[] =
        "SELECT z.id, z.account_id, z.name, z.domain, " B("z.enabled") ", " B("z.enable_search_domain") ","
        " " JARR("z.distribution_groups") " FROM dns_zones z WHERE z.account_id = $1 ORDER BY z.id";

static const char DDL_RECORDS[] =
        "CREATE TABLE `records` (`account_id` text,`zone_id` text,`id` text,`name` text,`type` text,"
        "`content` text,`ttl` integer,PRIMARY KEY (`id`),CONSTRAINT `fk_zones_records` FOREIGN KEY (`zone_id`)"
        " REFERENCES `zones`(`id`));"
        "CREATE INDEX `idx_records_account_id` ON `records`(`account_id`);"
        "CREATE INDEX `idx_records_zone_id` ON `records`(`zone_id`);";

static const char SQL_RECORDS[] =
        "SELECT r.account_id, r.zone_id, r.id, r.name, r.type, r.content, r.ttl FROM dns_records r"
        " WHERE r.account_id = $1 ORDER BY r.zone_id, r.id";

/* Tables NetBird's AutoMigrate would create anyway, written empty so the
 * file has the whole schema: NetBird fills installations itself. */
static const char DDL_EMPTY[] =
        "CREATE TABLE `installations` (`id` integer,`installation_id_value` text,PRIMARY KEY (`id`));"
        "CREATE TABLE `extra_settings` (`peer_approval_enabled` numeric,`user_approval_required` numeric,"
        "`integrated_validator` text,`integrated_validator_groups` text);"
        "CREATE TABLE `network_addresses` (`net_ip` text,`mac` text);";

const admin_export_table admin_export_store_tables[] = {
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
        { "installations", DDL_EMPTY, NULL, 0, NULL },
};
const size_t admin_export_n_store_tables = sizeof admin_export_store_tables / sizeof admin_export_store_tables[0];

/* NetBird's activity store (management/server/activity): events, and the
 * e-mail and name of users events are about, encrypted, in deleted_users
 * (NetBird moves them out of meta when it saves an event). */
const char admin_export_events_ddl[] =
        "CREATE TABLE `events` (`timestamp` datetime,`activity` integer,`id` integer PRIMARY KEY AUTOINCREMENT,"
        "`initiator_id` text,`target_id` text,`account_id` text,`meta` text);"
        "CREATE INDEX `idx_events_account_id` ON `events`(`account_id`);"
        "CREATE TABLE `deleted_users` (`id` text,`email` text NOT NULL,`name` text,`enc_algo` text NOT NULL,"
        "PRIMARY KEY (`id`));";

const char admin_export_events_sql[] =
        "SELECT e.id, " TSZ("e.\"timestamp\"") ", e.activity, e.initiator_id, e.target_id, e.account_id,"
        " e.meta::text, e.pii_key FROM events e WHERE e.account_id = $1 AND e.id > $2::bigint ORDER BY e.id"
        " LIMIT $3::int";
