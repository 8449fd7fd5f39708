-- 0001_init: the base schema.
--
-- Column names follow NetBird's gorm schema (snake_case, with the embedded
-- struct prefixes peer_status_, meta_, location_, settings_, network_,
-- dns_settings_) so an operator who knows NetBird's tables finds their way.
-- Types are PostgreSQL's own (inet, cidr, timestamptz, arrays, jsonb) rather
-- than NetBird's JSON-in-text. Durations are bigint nanoseconds, as NetBird
-- stores them. Every tenant table carries account_id and is indexed by it.

CREATE TABLE accounts (
    id                                  text PRIMARY KEY,
    created_by                          text NOT NULL DEFAULT '',
    created_at                          timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    domain                              text NOT NULL DEFAULT '',
    domain_category                     text NOT NULL DEFAULT '',
    is_domain_primary_account           boolean NOT NULL DEFAULT false,
    -- network: the account's overlay range and the map serial
    network_identifier                  text NOT NULL DEFAULT '',
    network_net                         cidr NOT NULL,
    network_net_v6                      cidr,
    network_dns                         text NOT NULL DEFAULT '',
    network_serial                      bigint NOT NULL DEFAULT 0 CHECK (network_serial >= 0),
    -- DNS settings
    dns_settings_disabled_management_groups text[] NOT NULL DEFAULT '{}',
    -- settings: expiration
    settings_peer_login_expiration_enabled      boolean NOT NULL DEFAULT true,
    settings_peer_login_expiration              bigint  NOT NULL DEFAULT 86400000000000,   -- 24 h in ns
    settings_peer_inactivity_expiration_enabled boolean NOT NULL DEFAULT false,
    settings_peer_inactivity_expiration         bigint  NOT NULL DEFAULT 600000000000,     -- 10 min in ns
    -- settings: users and JWT groups
    settings_regular_users_view_blocked         boolean NOT NULL DEFAULT true,
    settings_groups_propagation_enabled         boolean NOT NULL DEFAULT true,
    settings_jwt_groups_enabled                 boolean NOT NULL DEFAULT false,
    settings_jwt_groups_claim_name              text    NOT NULL DEFAULT '',
    settings_jwt_allow_groups                   text[]  NOT NULL DEFAULT '{}',
    -- settings: network and DNS
    settings_routing_peer_dns_resolution_enabled boolean NOT NULL DEFAULT true,
    settings_dns_domain                         text    NOT NULL DEFAULT '',
    settings_network_range                      cidr,
    settings_lazy_connection_enabled            boolean NOT NULL DEFAULT false,
    -- settings: extra
    settings_extra_peer_approval_enabled        boolean NOT NULL DEFAULT false,
    settings_extra_user_approval_required       boolean NOT NULL DEFAULT false,
    CHECK (settings_peer_login_expiration > 0),
    CHECK (settings_peer_inactivity_expiration > 0)
);
CREATE INDEX idx_accounts_domain ON accounts (domain);

CREATE TABLE users (
    id                  text PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    role                text NOT NULL CHECK (role IN ('owner', 'admin', 'user', 'billing_admin',
                                                      'auditor', 'network_admin')),
    is_service_user     boolean NOT NULL DEFAULT false,
    non_deletable       boolean NOT NULL DEFAULT false,
    service_user_name   text NOT NULL DEFAULT '',
    auto_groups         text[] NOT NULL DEFAULT '{}',
    blocked             boolean NOT NULL DEFAULT false,
    pending_approval    boolean NOT NULL DEFAULT false,
    last_login          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    issued              text NOT NULL DEFAULT 'api' CHECK (issued IN ('api', 'integration', 'jwt')),
    name                text NOT NULL DEFAULT '',
    email               text NOT NULL DEFAULT ''
);
CREATE INDEX idx_users_account_id ON users (account_id);

-- Tokens are stored only as base64(SHA-256(token)); account_id is ours (not
-- in NetBird's table) so every lookup can be scoped to its account.
CREATE TABLE personal_access_tokens (
    id                  text PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    user_id             text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                text NOT NULL,
    hashed_token        text NOT NULL UNIQUE,
    expiration_date     timestamptz NOT NULL,
    created_by          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used           timestamptz
);
CREATE INDEX idx_personal_access_tokens_user_id ON personal_access_tokens (user_id);

CREATE TABLE peers (
    id                              text PRIMARY KEY,
    account_id                      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key                             text NOT NULL,          -- base64 WireGuard public key
    ip                              inet NOT NULL,
    ipv6                            inet,
    name                            text NOT NULL DEFAULT '',
    dns_label                       text NOT NULL,
    -- meta_: what the agent reports about its system
    meta_hostname                   text NOT NULL DEFAULT '',
    meta_go_os                      text NOT NULL DEFAULT '',
    meta_kernel                     text NOT NULL DEFAULT '',
    meta_core                       text NOT NULL DEFAULT '',
    meta_platform                   text NOT NULL DEFAULT '',
    meta_os                         text NOT NULL DEFAULT '',
    meta_os_version                 text NOT NULL DEFAULT '',
    meta_wt_version                 text NOT NULL DEFAULT '',
    meta_ui_version                 text NOT NULL DEFAULT '',
    meta_kernel_version             text NOT NULL DEFAULT '',
    meta_network_addresses          jsonb NOT NULL DEFAULT '[]',
    meta_system_serial_number       text NOT NULL DEFAULT '',
    meta_system_product_name        text NOT NULL DEFAULT '',
    meta_system_manufacturer        text NOT NULL DEFAULT '',
    meta_environment                jsonb NOT NULL DEFAULT '{}',
    meta_flags                      jsonb NOT NULL DEFAULT '{}',
    meta_files                      jsonb NOT NULL DEFAULT '[]',
    meta_capabilities               integer[] NOT NULL DEFAULT '{}',
    meta_sync_message_version       integer NOT NULL DEFAULT 0,
    -- peer_status_: the fenced session columns (netbird-protocol.md section 5)
    peer_status_last_seen           timestamptz,
    peer_status_session_started_at  bigint NOT NULL DEFAULT 0,
    peer_status_connected           boolean NOT NULL DEFAULT false,
    peer_status_login_expired       boolean NOT NULL DEFAULT false,
    peer_status_requires_approval   boolean NOT NULL DEFAULT false,
    -- ownership and expiry; user_id is NULL for peers added with a setup key
    user_id                         text,
    ssh_key                         text NOT NULL DEFAULT '',
    ssh_enabled                     boolean NOT NULL DEFAULT false,
    login_expiration_enabled        boolean NOT NULL DEFAULT false,
    inactivity_expiration_enabled   boolean NOT NULL DEFAULT false,
    last_login                      timestamptz,
    created_at                      timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ephemeral                       boolean NOT NULL DEFAULT false,
    -- location_: geo data of the connection
    location_connection_ip          inet,
    location_country_code           text NOT NULL DEFAULT '',
    location_city_name              text NOT NULL DEFAULT '',
    location_geo_name_id            bigint NOT NULL DEFAULT 0,
    -- extra DNS labels
    extra_dns_labels                text[] NOT NULL DEFAULT '{}',
    allow_extra_dns_labels          boolean NOT NULL DEFAULT false,
    CHECK (peer_status_session_started_at >= 0)
);
CREATE UNIQUE INDEX idx_peers_key_unique ON peers (key);
CREATE UNIQUE INDEX idx_account_ip ON peers (account_id, ip);
CREATE UNIQUE INDEX idx_account_dnslabel ON peers (account_id, dns_label);
CREATE INDEX idx_peers_account_id ON peers (account_id);
CREATE INDEX idx_peers_user_id ON peers (account_id, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idx_peers_ephemeral ON peers (account_id) WHERE ephemeral;

CREATE TABLE groups (
    id                                  text PRIMARY KEY,
    account_id                          text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                                text NOT NULL,
    issued                              text NOT NULL DEFAULT 'api' CHECK (issued IN ('api', 'integration', 'jwt')),
    integration_ref_id                  bigint NOT NULL DEFAULT 0,
    integration_ref_integration_type    text NOT NULL DEFAULT ''
);
CREATE INDEX idx_groups_account_id ON groups (account_id);
-- Exactly one "All" group per account.
CREATE UNIQUE INDEX idx_groups_account_all ON groups (account_id) WHERE name = 'All';

CREATE TABLE group_peers (
    account_id  text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    group_id    text NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    peer_id     text NOT NULL REFERENCES peers (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, peer_id)
);
CREATE INDEX idx_group_peers_account_id ON group_peers (account_id);
CREATE INDEX idx_group_peers_peer_id ON group_peers (peer_id);

CREATE TABLE policies (
    id                      text PRIMARY KEY,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    description             text NOT NULL DEFAULT '',
    enabled                 boolean NOT NULL DEFAULT true,
    source_posture_checks   text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_policies_account_id ON policies (account_id);

-- sources / destinations are group ids; port_ranges are inclusive
-- [start, end] pairs kept as int4range (canonical form [start, end+1)).
CREATE TABLE policy_rules (
    id                      text PRIMARY KEY,
    policy_id               text NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                    text NOT NULL DEFAULT '',
    description             text NOT NULL DEFAULT '',
    enabled                 boolean NOT NULL DEFAULT true,
    action                  text NOT NULL DEFAULT 'accept' CHECK (action IN ('accept', 'drop')),
    bidirectional           boolean NOT NULL DEFAULT false,
    protocol                text NOT NULL DEFAULT 'all'
                            CHECK (protocol IN ('all', 'tcp', 'udp', 'icmp', 'netbird-ssh')),
    sources                 text[] NOT NULL DEFAULT '{}',
    destinations            text[] NOT NULL DEFAULT '{}',
    source_resource_id      text,
    source_resource_type    text,
    destination_resource_id   text,
    destination_resource_type text,
    ports                   integer[] NOT NULL DEFAULT '{}',
    port_ranges             int4range[] NOT NULL DEFAULT '{}',
    authorized_groups       jsonb NOT NULL DEFAULT '{}',
    authorized_user         text NOT NULL DEFAULT ''
);
CREATE INDEX idx_policy_rules_policy_id ON policy_rules (policy_id);
CREATE INDEX idx_policy_rules_account_id ON policy_rules (account_id);

CREATE TABLE routes (
    id                      text PRIMARY KEY,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    network                 cidr,                   -- NULL for domain routes
    domains                 text[] NOT NULL DEFAULT '{}',
    keep_route              boolean NOT NULL DEFAULT false,
    net_id                  text NOT NULL,          -- HA group identifier shown to agents
    description             text NOT NULL DEFAULT '',
    peer                    text REFERENCES peers (id) ON DELETE CASCADE,  -- routing peer id
    peer_groups             text[] NOT NULL DEFAULT '{}',
    network_type            smallint NOT NULL DEFAULT 1 CHECK (network_type IN (0, 1, 2, 3)),
    masquerade              boolean NOT NULL DEFAULT false,
    metric                  integer NOT NULL DEFAULT 9999 CHECK (metric BETWEEN 1 AND 9999),
    enabled                 boolean NOT NULL DEFAULT true,
    groups                  text[] NOT NULL DEFAULT '{}',   -- distribution groups
    access_control_groups   text[] NOT NULL DEFAULT '{}',
    skip_auto_apply         boolean NOT NULL DEFAULT false,
    CHECK (network IS NOT NULL OR cardinality(domains) > 0),
    CHECK (peer IS NULL OR cardinality(peer_groups) = 0)
);
CREATE INDEX idx_routes_account_id ON routes (account_id);

-- key is base64(SHA-256(UPPERCASE(plain key))); the plain key is never stored.
CREATE TABLE setup_keys (
    id                      text PRIMARY KEY,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key                     text NOT NULL,
    key_secret              text NOT NULL,          -- masked display form, e.g. A2C8E****
    name                    text NOT NULL,
    type                    text NOT NULL CHECK (type IN ('reusable', 'one-off')),
    created_at              timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at              timestamptz,            -- NULL = never expires
    updated_at              timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    revoked                 boolean NOT NULL DEFAULT false,
    used_times              integer NOT NULL DEFAULT 0 CHECK (used_times >= 0),
    last_used               timestamptz,
    auto_groups             text[] NOT NULL DEFAULT '{}',
    usage_limit             integer NOT NULL DEFAULT 0 CHECK (usage_limit >= 0),  -- 0 = unlimited
    ephemeral               boolean NOT NULL DEFAULT false,
    allow_extra_dns_labels  boolean NOT NULL DEFAULT false,
    -- the limits hold in the database too, not only in application code
    CHECK (usage_limit = 0 OR used_times <= usage_limit),
    CHECK (type = 'reusable' OR used_times <= 1)
);
CREATE UNIQUE INDEX idx_setup_keys_key ON setup_keys (key);
CREATE INDEX idx_setup_keys_account_id ON setup_keys (account_id);

-- name_servers: [{"ip": "1.1.1.1", "ns_type": "udp", "port": 53}, ...]
CREATE TABLE name_server_groups (
    id                      text PRIMARY KEY,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    description             text NOT NULL DEFAULT '',
    name_servers            jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(name_servers) = 'array'),
    groups                  text[] NOT NULL DEFAULT '{}',
    "primary"               boolean NOT NULL DEFAULT false,
    domains                 text[] NOT NULL DEFAULT '{}',
    enabled                 boolean NOT NULL DEFAULT true,
    search_domains_enabled  boolean NOT NULL DEFAULT false
);
CREATE INDEX idx_name_server_groups_account_id ON name_server_groups (account_id);

-- Activity events (NetBird keeps them in a separate database; here they
-- share the one PostgreSQL). activity is NetBird's numeric code.
CREATE TABLE events (
    id              bigserial PRIMARY KEY,
    "timestamp"     timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    activity        integer NOT NULL,
    initiator_id    text NOT NULL DEFAULT '',
    target_id       text NOT NULL DEFAULT '',
    account_id      text NOT NULL,
    meta            jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_events_account_time ON events (account_id, "timestamp");
