-- 0008_reverse_proxy: NetBird's reverse proxy ("Services"): the services
-- the proxies serve, custom domains, proxy access tokens, the proxies
-- connected to the cluster, their access logs, and what the ProxyService
-- needs shared between replicas (a log of mapping changes, one-time
-- tokens already used, OIDC flow states) so that a proxy connected to any
-- replica sees every change made on any other.
--
-- Secrets: proxy access tokens are stored as base64(SHA-256) only, like
-- PATs; service passwords, PINs and header values as argon2id hashes
-- inside services.auth (never the plaintext); the per-service session
-- signing key (Ed25519) encrypted with the DataStoreEncryptionKey, like
-- the server key. Column names follow NetBird's gorm tables where one
-- exists.

-- A proxy access token ("nbx_..."). account_id NULL: management-wide
-- (minted by the operator with netbird-cp-admin); set: account-scoped
-- ("bring your own proxy", minted through the REST API).
CREATE TABLE proxy_access_tokens (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    hashed_token    text NOT NULL UNIQUE,            -- base64(SHA-256(token))
    account_id      text REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at      timestamptz,                      -- NULL: never
    created_by      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used       timestamptz,
    revoked         boolean NOT NULL DEFAULT false
);
CREATE INDEX idx_proxy_access_tokens_account_id ON proxy_access_tokens (account_id);

-- One row per proxy instance (its proxy_id) that has connected. The
-- stream that owns the row is session_id; a disconnect writes only when
-- the session still matches (a newer connection of the same proxy, on
-- any replica, wins). A cluster is the set of proxies with one
-- cluster_address; it is "online" while one of them is connected.
CREATE TABLE proxies (
    id                        text PRIMARY KEY,
    session_id                text NOT NULL,
    cluster_address           text NOT NULL,
    ip_address                text NOT NULL DEFAULT '',
    account_id                text REFERENCES accounts (id) ON DELETE CASCADE,
    token_id                  text REFERENCES proxy_access_tokens (id) ON DELETE SET NULL,
    replica_id                text,                   -- the replica holding the stream
    version                   text NOT NULL DEFAULT '',
    status                    text NOT NULL CHECK (status IN ('connected', 'disconnected')),
    connected_at              timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    disconnected_at           timestamptz,
    last_seen                 timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- capabilities as the proxy claimed them; NULL = not sent
    supports_custom_ports     boolean,
    require_subdomain         boolean,
    supports_crowdsec         boolean,
    private                   boolean,
    supports_private_service  boolean
);
CREATE INDEX idx_proxies_cluster_status ON proxies (cluster_address, status);
CREATE INDEX idx_proxies_account_id ON proxies (account_id);
CREATE INDEX idx_proxies_last_seen ON proxies (last_seen);

-- A reverse-proxy service. targets, auth and restrictions are JSON in
-- the REST API's shapes (ServiceTarget[], ServiceAuthConfig with every
-- secret replaced by its argon2id hash, AccessRestrictions). domain is
-- unique across all accounts (NetBird: a domain is served once).
-- source 'ephemeral' is a service a peer exposed with CreateExpose: it
-- belongs to source_peer and ends at expires_at unless renewed.
CREATE TABLE services (
    id                          text PRIMARY KEY,
    account_id                  text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                        text NOT NULL,
    domain                      text NOT NULL UNIQUE,
    proxy_cluster               text NOT NULL DEFAULT '',
    mode                        text NOT NULL DEFAULT 'http' CHECK (mode IN ('http', 'tcp', 'udp', 'tls')),
    listen_port                 integer NOT NULL DEFAULT 0 CHECK (listen_port BETWEEN 0 AND 65535),
    port_auto_assigned          boolean NOT NULL DEFAULT false,
    enabled                     boolean NOT NULL DEFAULT true,
    terminated                  boolean NOT NULL DEFAULT false,
    pass_host_header            boolean NOT NULL DEFAULT false,
    rewrite_redirects           boolean NOT NULL DEFAULT false,
    private                     boolean NOT NULL DEFAULT false,
    access_groups               text[] NOT NULL DEFAULT '{}',
    targets                     jsonb NOT NULL DEFAULT '[]',
    auth                        jsonb NOT NULL DEFAULT '{}',
    restrictions                jsonb NOT NULL DEFAULT '{}',
    meta_created_at             timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    meta_certificate_issued_at  timestamptz,
    meta_last_renewed_at        timestamptz,
    meta_status                 text NOT NULL DEFAULT 'pending'
                                CHECK (meta_status IN ('pending', 'active', 'tunnel_not_created',
                                                       'certificate_pending', 'certificate_failed', 'error')),
    -- Ed25519 session signing key: private part (the 32-byte seed)
    -- sealed with the DataStoreEncryptionKey, public part base64 (what
    -- the proxy gets as Authentication.session_key). After a rotation
    -- the previous public key keeps validating until prev_valid_until.
    session_private_key         text NOT NULL,
    session_public_key          text NOT NULL,
    session_prev_public_key     text,
    session_prev_valid_until    timestamptz,
    source                      text NOT NULL DEFAULT 'permanent' CHECK (source IN ('permanent', 'ephemeral')),
    source_peer                 text REFERENCES peers (id) ON DELETE CASCADE,
    expires_at                  timestamptz,
    CHECK ((source = 'ephemeral') = (source_peer IS NOT NULL))
);
CREATE INDEX idx_services_account_id ON services (account_id);
CREATE INDEX idx_services_proxy_cluster ON services (proxy_cluster, id);
CREATE INDEX idx_services_expires_at ON services (expires_at) WHERE expires_at IS NOT NULL;

-- Custom domains of an account (free domains are the clusters' own
-- addresses and are not stored).
CREATE TABLE proxy_domains (
    id              text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain          text NOT NULL UNIQUE,
    target_cluster  text NOT NULL,
    validated       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_proxy_domains_account_id ON proxy_domains (account_id);

-- What proxies must learn, in commit order. Every transaction that
-- changes what a proxy serves (a service created, modified, removed,
-- moved to another cluster or domain) appends rows here; a connected
-- proxy's stream on any replica reads the rows after the last one it
-- sent. Writers take pg_advisory_xact_lock(cp_store PROXY_CHANGES_LOCK)
-- before inserting, so sequence numbers are assigned in commit order and
-- a reader that has seen seq N never misses a later commit with a lower
-- one. op is ProxyMappingUpdateType: 0 created, 1 modified, 2 removed;
-- cluster and domain are the values the change applies to (the old ones
-- for a removal). Rows older than a retention are deleted.
CREATE TABLE proxy_mapping_changes (
    seq             bigserial PRIMARY KEY,
    account_id      text NOT NULL,
    service_id      text NOT NULL,
    op              smallint NOT NULL CHECK (op IN (0, 1, 2)),
    cluster         text NOT NULL,
    domain          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_proxy_mapping_changes_created_at ON proxy_mapping_changes (created_at);

-- One-time tokens of ProxyMapping.auth_token that CreateProxyPeer has
-- used. The tokens themselves are stateless (signed, with an expiry);
-- this table only makes each one usable once, on any replica.
CREATE TABLE proxy_used_tokens (
    token_hash      text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX idx_proxy_used_tokens_expires_at ON proxy_used_tokens (expires_at);

-- OIDC flows started by GetOIDCURL: the PKCE verifier kept under the
-- hash of the flow's state until the callback (on any replica) uses it.
CREATE TABLE proxy_oidc_states (
    state_hash      text PRIMARY KEY CHECK (state_hash ~ '^[0-9a-f]{64}$'),
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    service_id      text NOT NULL,
    verifier        text NOT NULL,
    redirect_url    text NOT NULL,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX idx_proxy_oidc_states_expires_at ON proxy_oidc_states (expires_at);

-- Access log entries from proxies (SendAccessLog), written in batches.
-- id is the proxy's log_id (a repeat is ignored). Kept for
-- ReverseProxy.AccessLogRetentionDays.
CREATE TABLE proxy_access_logs (
    id                  text PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    service_id          text NOT NULL DEFAULT '',
    timestamp           timestamptz NOT NULL,
    method              text NOT NULL DEFAULT '',
    host                text NOT NULL DEFAULT '',
    path                text NOT NULL DEFAULT '',
    duration_ms         bigint NOT NULL DEFAULT 0,
    status_code         integer NOT NULL DEFAULT 0,
    source_ip           text NOT NULL DEFAULT '',
    reason              text NOT NULL DEFAULT '',
    user_id             text NOT NULL DEFAULT '',
    auth_method_used    text NOT NULL DEFAULT '',
    country_code        text NOT NULL DEFAULT '',
    city_name           text NOT NULL DEFAULT '',
    subdivision_code    text NOT NULL DEFAULT '',
    bytes_upload        bigint NOT NULL DEFAULT 0,
    bytes_download      bigint NOT NULL DEFAULT 0,
    protocol            text NOT NULL DEFAULT '',
    metadata            jsonb NOT NULL DEFAULT '{}',
    agent_network       boolean NOT NULL DEFAULT false
);
CREATE INDEX idx_proxy_access_logs_account_ts ON proxy_access_logs (account_id, timestamp DESC);
CREATE INDEX idx_proxy_access_logs_timestamp ON proxy_access_logs (timestamp);

-- A peer created by CreateProxyPeer for a proxy's embedded client
-- (NetBird's ProxyMeta): the cluster it serves.
ALTER TABLE peers ADD COLUMN proxy_cluster text;
ALTER TABLE peers ADD COLUMN proxy_embedded boolean NOT NULL DEFAULT false;
