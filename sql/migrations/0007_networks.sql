-- 0007_networks: what NetBird's current network model adds to the map:
-- Networks (resources and their routers), posture checks and custom DNS
-- zones with their records.
--
-- Column names follow NetBird's gorm tables (networks, network_resources,
-- network_routers, posture_checks, zones, records) with PostgreSQL types.
-- Every table carries account_id; child rows cascade with their parent so
-- deleting a network or a zone leaves nothing behind. References that the
-- REST API refuses to break (a group still used, a posture check still
-- referenced by a policy) are checked there, with NetBird's error texts;
-- the foreign keys below are the database's last word, not the API's.

CREATE TABLE networks (
    id              text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT ''
);
CREATE INDEX idx_networks_account_id ON networks (account_id);

-- type host: prefix is the address as a /32 (or /128); subnet: prefix is
-- the network; domain: domain holds the name (may start with "*.") and
-- prefix is NULL.
CREATE TABLE network_resources (
    id              text PRIMARY KEY,
    network_id      text NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    type            text NOT NULL CHECK (type IN ('host', 'subnet', 'domain')),
    domain          text NOT NULL DEFAULT '',
    prefix          cidr,
    enabled         boolean NOT NULL DEFAULT true,
    CHECK ((type = 'domain') = (prefix IS NULL)),
    CHECK (type <> 'domain' OR domain <> '')
);
CREATE INDEX idx_network_resources_account_id ON network_resources (account_id);
CREATE INDEX idx_network_resources_network_id ON network_resources (network_id);
CREATE UNIQUE INDEX idx_network_resources_name ON network_resources (account_id, name);

-- A router is one peer or the members of peer groups (never both).
CREATE TABLE network_routers (
    id              text PRIMARY KEY,
    network_id      text NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    peer            text REFERENCES peers (id) ON DELETE CASCADE,
    peer_groups     text[] NOT NULL DEFAULT '{}',
    masquerade      boolean NOT NULL DEFAULT false,
    metric          integer NOT NULL DEFAULT 9999 CHECK (metric BETWEEN 1 AND 9999),
    enabled         boolean NOT NULL DEFAULT true,
    CHECK ((peer IS NULL) <> (cardinality(peer_groups) = 0))
);
CREATE INDEX idx_network_routers_account_id ON network_routers (account_id);
CREATE INDEX idx_network_routers_network_id ON network_routers (network_id);

-- Group membership of resources (NetBird keeps it as groups.resources, a
-- JSON list of {id, type}). resource_type is always 'host', 'subnet' or
-- 'domain' today; a policy rule may also name a single 'peer' resource,
-- which lives in policy_rules, not here.
CREATE TABLE group_resources (
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    group_id        text NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    resource_id     text NOT NULL REFERENCES network_resources (id) ON DELETE CASCADE,
    resource_type   text NOT NULL CHECK (resource_type IN ('host', 'subnet', 'domain')),
    PRIMARY KEY (group_id, resource_id)
);
CREATE INDEX idx_group_resources_account_id ON group_resources (account_id);
CREATE INDEX idx_group_resources_resource_id ON group_resources (resource_id);

-- checks is the REST API's Checks object as the client sent it after
-- validation (nb_version_check, os_version_check, geo_location_check,
-- peer_network_range_check, process_check), so what is stored is what
-- GET returns.
CREATE TABLE posture_checks (
    id              text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    checks          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(checks) = 'object')
);
CREATE INDEX idx_posture_checks_account_id ON posture_checks (account_id);
CREATE UNIQUE INDEX idx_posture_checks_name ON posture_checks (account_id, name);

-- Custom DNS zones (NetBird's zones table) and their records.
CREATE TABLE dns_zones (
    id                      text PRIMARY KEY,
    account_id              text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    domain                  text NOT NULL,
    enabled                 boolean NOT NULL DEFAULT true,
    enable_search_domain    boolean NOT NULL DEFAULT false,
    distribution_groups     text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_dns_zones_account_id ON dns_zones (account_id);
CREATE UNIQUE INDEX idx_dns_zones_domain ON dns_zones (account_id, domain);

CREATE TABLE dns_records (
    id              text PRIMARY KEY,
    zone_id         text NOT NULL REFERENCES dns_zones (id) ON DELETE CASCADE,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    type            text NOT NULL CHECK (type IN ('A', 'AAAA', 'CNAME')),
    content         text NOT NULL,
    ttl             integer NOT NULL DEFAULT 300 CHECK (ttl >= 0)
);
CREATE INDEX idx_dns_records_account_id ON dns_records (account_id);
CREATE INDEX idx_dns_records_zone_id ON dns_records (zone_id);

-- Ephemeral peers are deleted once disconnected for NetBird's idle time;
-- the sweep looks them up by last seen.
CREATE INDEX idx_peers_ephemeral_last_seen ON peers (peer_status_last_seen)
    WHERE ephemeral AND NOT peer_status_connected;
