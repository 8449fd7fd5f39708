-- 0002_server_key: the server's WireGuard key pair, shared by all replicas.
--
-- Agents fetch the server public key (GetServerKey) and seal every request
-- to it; whichever replica answers the next call must hold the matching
-- private key. NetBird makes a new key per process; we keep one per
-- deployment here so replicas agree and restarts do not change it.
--
-- One row per purpose ('wireguard' today). The first replica to start
-- inserts it (INSERT ... ON CONFLICT DO NOTHING), everyone reads it back.
-- The private key never sits here in the clear: private_key_enc is the
-- AES-256-GCM form of the DataStoreEncryptionKey, base64(nonce || ciphertext
-- || tag), exactly like NetBird's encrypted columns. Deployment-wide, so it
-- has no account_id.
CREATE TABLE server_keys (
    purpose         text PRIMARY KEY CHECK (purpose <> ''),
    public_key      text NOT NULL CHECK (length(public_key) = 44),      -- standard base64 of 32 bytes
    private_key_enc text NOT NULL CHECK (private_key_enc <> ''),
    created_at      timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
