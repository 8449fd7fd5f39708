-- 0004_server_key_rotation: rotating the server key without breaking a
-- running fleet.
--
-- `netbird-cp-admin server-key rotate` replaces the key pair in one
-- UPDATE and keeps the pair it replaced as the previous key until
-- previous_expires_at (the grace period): requests still sealed to the
-- previous key keep opening on every replica until then. generation goes
-- up by one on every rotation, so a replica polling the row sees at a
-- glance whether anything changed. The previous private key is encrypted
-- exactly like the current one (AES-256-GCM with the
-- DataStoreEncryptionKey). Replicas that predate this migration read only
-- public_key and private_key_enc and keep working (they never see a
-- rotation until restarted).
ALTER TABLE server_keys
    ADD COLUMN generation              bigint NOT NULL DEFAULT 1 CHECK (generation > 0),
    ADD COLUMN rotated_at              timestamptz,
    ADD COLUMN previous_public_key     text CHECK (length(previous_public_key) = 44),
    ADD COLUMN previous_private_key_enc text CHECK (previous_private_key_enc <> ''),
    ADD COLUMN previous_expires_at     timestamptz,
    -- the previous key is all three columns or none
    ADD CONSTRAINT server_keys_previous_whole CHECK (
        (previous_public_key IS NULL) = (previous_private_key_enc IS NULL) AND
        (previous_public_key IS NULL) = (previous_expires_at IS NULL));
