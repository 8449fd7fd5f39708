-- 0003_replicas: which replica processes are alive, and which one holds
-- each peer's session.
--
-- Every management process registers a row here when it starts (a new id
-- per process start) and moves heartbeat_at forward every
-- --heartbeat-interval, by the database's clock. A row whose heartbeat is
-- older than --replica-expiry belongs to a process that died without
-- saying goodbye (kill -9, lost node): another replica deletes it and, in
-- the same statement, marks disconnected exactly the sessions that replica
-- still owned. Deployment-wide, so it has no account_id.
CREATE TABLE replicas (
    id            text PRIMARY KEY CHECK (id <> ''),
    name          text NOT NULL DEFAULT '',       -- host name (the pod name on Kubernetes)
    pid           integer NOT NULL DEFAULT 0,
    grpc_address  text NOT NULL DEFAULT '',
    http_address  text NOT NULL DEFAULT '',
    version       text NOT NULL DEFAULT '',
    state         text NOT NULL DEFAULT 'serving' CHECK (state IN ('serving', 'draining')),
    started_at    timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    heartbeat_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- The replica whose stream holds the current session: set by the fenced
-- connect together with the token, cleared by the fenced disconnect. No
-- foreign key: the reaper clears it in the statement that deletes the
-- replica row, and a connect must never fail because its own replica row
-- is being re-registered.
ALTER TABLE peers ADD COLUMN peer_status_replica_id text;

CREATE INDEX peers_status_replica_idx ON peers (peer_status_replica_id)
    WHERE peer_status_replica_id IS NOT NULL;

-- Views for the psql runbook (docs/ops.md). Read-only conveniences; the
-- server never reads them.
CREATE VIEW cp_replicas AS
SELECT r.id, r.name, r.pid, r.state, r.grpc_address, r.http_address, r.version, r.started_at,
       r.heartbeat_at,
       date_trunc('millisecond', CURRENT_TIMESTAMP - r.heartbeat_at) AS heartbeat_age,
       (SELECT count(*) FROM peers p
         WHERE p.peer_status_replica_id = r.id AND p.peer_status_connected) AS sessions
  FROM replicas r;

CREATE VIEW cp_sessions_by_replica AS
SELECT coalesce(p.peer_status_replica_id, '(none)') AS replica_id,
       r.name AS replica_name,
       count(*) AS sessions,
       count(DISTINCT p.account_id) AS accounts,
       min(p.peer_status_last_seen) AS oldest_connect
  FROM peers p LEFT JOIN replicas r ON r.id = p.peer_status_replica_id
 WHERE p.peer_status_connected
 GROUP BY 1, 2;

CREATE VIEW cp_peers_connected_by_account AS
SELECT a.id AS account_id, a.domain, a.network_serial,
       count(p.id) AS peers,
       count(p.id) FILTER (WHERE p.peer_status_connected) AS connected,
       count(p.id) FILTER (WHERE p.peer_status_login_expired) AS login_expired
  FROM accounts a LEFT JOIN peers p ON p.account_id = a.id
 GROUP BY a.id, a.domain, a.network_serial;

-- Sessions marked connected whose owner is not a live replica: no owner
-- (written before this migration, or by a tool), or an owner that is gone
-- or has missed its heartbeats. The reaper empties the last kind within
-- one heartbeat interval after the expiry.
CREATE VIEW cp_stale_sessions AS
SELECT p.account_id, p.id AS peer_id, p.name, p.peer_status_replica_id AS replica_id,
       p.peer_status_last_seen AS last_seen, r.heartbeat_at,
       CASE WHEN p.peer_status_replica_id IS NULL THEN 'no owner'
            WHEN r.id IS NULL THEN 'owner gone'
            ELSE 'owner silent' END AS reason
  FROM peers p LEFT JOIN replicas r ON r.id = p.peer_status_replica_id
 WHERE p.peer_status_connected
   AND (r.id IS NULL OR r.heartbeat_at < CURRENT_TIMESTAMP - interval '30 seconds');
