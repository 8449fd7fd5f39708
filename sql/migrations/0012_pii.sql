-- 0012_pii: personal data at rest, and which DataStoreEncryptionKey sealed it
-- (issue 13, "Secrets and keys").
--
-- data_keys lists the DataStoreEncryptionKeys this deployment has used, by
-- fingerprint only: the first 16 bytes, in lower-case hex, of
-- HMAC-SHA256(key, "netbird-cp data key fingerprint v1"). The key itself is
-- never stored. Exactly one row is current: every replica writes with that
-- key (it must be configured as DataStoreEncryptionKey or
-- DataStoreEncryptionKeyPrevious, else the replica stays not ready and
-- writes nothing). The first replica that starts on a database without
-- rows proves its key by opening the existing server key (or, on an empty
-- database, takes its own) and records it. `netbird-cp-admin data-key
-- reencrypt` adds a new key, makes it current and re-seals everything;
-- `data-key retire` removes an old key once nothing is sealed with it.
CREATE TABLE data_keys (
    fingerprint text PRIMARY KEY CHECK (fingerprint ~ '^[0-9a-f]{32}$'),
    current     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX idx_data_keys_current ON data_keys (current) WHERE current;

-- pii_key: the fingerprint of the key that sealed the row's personal data
-- (AES-256-GCM in NetBird's format, cp/crypto-aead.h), or '' for a row
-- still in plain text (written before this migration; replicas and the
-- admin CLI seal those in batches).
--   users        email and name
--   events       meta->'email' and meta->'name' (events about a user, such
--                as user deleted, keep them); '' for events without them
--   msp_tenants  contact_email and contact_name
ALTER TABLE users ADD COLUMN pii_key text NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN pii_key text NOT NULL DEFAULT '';
ALTER TABLE msp_tenants ADD COLUMN pii_key text NOT NULL DEFAULT '';
-- The batches look for rows not yet under the current key.
CREATE INDEX idx_users_pii_key ON users (pii_key);
CREATE INDEX idx_events_pii_key ON events (pii_key) WHERE meta ? 'email';
