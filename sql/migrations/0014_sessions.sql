-- 0014_sessions: the fenced connect and disconnect become HOT updates
-- (issue 16, "connect throughput").
--
-- PostgreSQL updates a row in place on its page (HOT: no new entry in any
-- index of the table) only when no column an index reads -- its key, its
-- expression or its predicate -- changes value, and the page has room for
-- the new version. Every connect and disconnect writes
-- peer_status_last_seen, peer_status_connected and peer_status_replica_id,
-- which two indexes read; so each one wrote a new entry into every index
-- of peers (docs/scaling.md, "Why 0 % HOT"). Neither index is needed for
-- a frequent query:
--
-- - idx_peers_ephemeral_last_seen served the ephemeral sweep's search for
--   accounts with a peer due. idx_peers_ephemeral (account_id) WHERE
--   ephemeral serves the same search: it holds only ephemeral peers, and
--   the last-seen test is applied to those rows.
-- - peers_status_replica_idx served the reaper and the deregistering
--   replica: the sessions of one replica. The reaper's sweep joins the
--   replicas it deleted, so when none died (every round but one) the
--   peers table is not read; when one died, or one deregisters, one scan
--   of peers clears its sessions -- once per replica lifetime.
--
-- fillfactor leaves room on each page for the new versions of its rows,
-- so an update finds space next to the old version (pages written from now
-- on; VACUUM FULL or pg_repack applies it to existing pages).
DROP INDEX idx_peers_ephemeral_last_seen;
DROP INDEX peers_status_replica_idx;
ALTER TABLE peers SET (fillfactor = 70);
