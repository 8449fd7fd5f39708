-- 0009_expose: peers exposing their own services (CreateExpose). NetBird
-- lets a peer expose a local port only when the account's settings allow
-- it and the peer is in one of the chosen groups (Settings.PeerExposeEnabled
-- and PeerExposeGroups, the REST API's settings.peer_expose_enabled and
-- peer_expose_groups). Until now the REST API accepted and dropped them.
ALTER TABLE accounts ADD COLUMN settings_peer_expose_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN settings_peer_expose_groups text[] NOT NULL DEFAULT '{}';

-- An ephemeral service ends at expires_at; the sweep of every replica
-- looks for those due (idx_services_expires_at, migration 0008) and one
-- peer's are counted and locked when it exposes one more.
CREATE INDEX idx_services_source_peer ON services (source_peer) WHERE source_peer IS NOT NULL;
