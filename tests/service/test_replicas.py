"""Several replicas on one PostgreSQL with the Redis bus between them
(CP_TEST_REDIS_URL): changes committed on one replica reach streams held
by the others, the replicas table and session owners, the psql runbook
views, heartbeats, reaping of a dead replica, drain. The periodic serial check is switched off
(--serial-check-interval 0s) wherever a test proves the bus, so nothing
else could deliver the push."""

import os
import secrets
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import fixture  # noqa: E402
from fixture import Deployment, replica_id, wait_until, json_dump  # noqa: E402
from nbagent import RpcFailed, StreamEnded, build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

# Short heartbeats so a dead replica is reaped within a few seconds.
FAST_HEARTBEAT = ("--heartbeat-interval", "200ms", "--replica-expiry", "1s")


def replica(dep, *extra, redis=True, prefix=None):
    """A replica on the bus (a prefix of its own per deployment, so tests
    running side by side on one Redis never hear each other)."""
    args = list(FAST_HEARTBEAT) + ["--serial-check-interval", "0s"]
    if redis:
        args += ["--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix or dep.bus_prefix]
    srv = dep.start(*(args + list(extra)))
    if redis:
        srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    return srv


def deployment(**kw):
    dep = Deployment(**kw)
    dep.bus_prefix = "t-" + secrets.token_hex(6)
    return dep


def registered(dep, name, srv):
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta(name))
    return a


def open_sync(agent):
    s = agent.sync()
    return s, s.next(timeout=15)


def owner(dep, agent):
    """(connected, token, owning replica id) of the agent's peer row."""
    rows = dep.sql("SELECT peer_status_connected, peer_status_session_started_at,"
                   " coalesce(peer_status_replica_id, '') FROM peers WHERE key = %s", (agent.pub_b64,))
    return tuple(rows[0]) if rows else None


def check_runbook_views(dep, streams, peers, stale_peers):
    """The psql runbook views (sql/migrations/0003_replicas.sql, docs/ops.md)
    agree with what is running: streams maps each replica to the agents
    whose streams it holds; peers is the account's peer count; the two
    agents of stale_peers (without streams) are made stale in a
    transaction that is rolled back."""
    ids = {replica_id(srv): srv for srv in streams}
    rows = dep.sql("SELECT id, pid, state, grpc_address, sessions, heartbeat_age < interval '10 seconds'"
                   " FROM cp_replicas")
    assert {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows} == {
        rid: (srv.proc.pid, "serving", "127.0.0.1:%d" % srv.grpc_port, len(streams[srv]), True)
        for rid, srv in ids.items()}, rows
    rows = dep.sql("SELECT replica_id, sessions, accounts FROM cp_sessions_by_replica")
    assert sorted(rows) == sorted((rid, len(streams[srv]), 1) for rid, srv in ids.items() if streams[srv]), rows
    rows = dep.sql("SELECT account_id, network_serial, peers, connected, login_expired"
                   " FROM cp_peers_connected_by_account")
    connected = sum(len(v) for v in streams.values())
    assert rows == [(dep.account_id, dep.network_serial(), peers, connected, 0)], rows
    assert dep.sql("SELECT * FROM cp_stale_sessions") == [], "live sessions listed as stale"
    # One stale session of each kind the view knows, seen inside one
    # transaction that is rolled back (so no reaper ever sees them).
    import psycopg2
    conn = psycopg2.connect(dep.dsn)
    try:
        with conn.cursor() as cur:
            no_owner, gone = stale_peers
            cur.execute("UPDATE peers SET peer_status_connected = true, peer_status_replica_id = NULL"
                        " WHERE key = %s", (no_owner.pub_b64,))
            cur.execute("UPDATE peers SET peer_status_connected = true, peer_status_replica_id = 'no-such-replica'"
                        " WHERE key = %s", (gone.pub_b64,))
            cur.execute("INSERT INTO replicas (id, name, heartbeat_at)"
                        " VALUES ('silent', 'silent-host', CURRENT_TIMESTAMP - interval '1 minute')")
            cur.execute("INSERT INTO peers (id, account_id, key, ip, dns_label, name, peer_status_connected,"
                        " peer_status_replica_id) SELECT 'silentpeer', %s, 'c2lsZW50', %s::inet + 60000,"
                        " 'silent', 'silent', true, 'silent'", (dep.account_id, str(dep.network.network_address)))
            cur.execute("SELECT coalesce(replica_id, ''), reason FROM cp_stale_sessions")
            got = sorted(cur.fetchall())
            cur.execute("SELECT connected FROM cp_peers_connected_by_account")
            now_connected = cur.fetchall()
            cur.execute("SELECT replica_id, replica_name, sessions FROM cp_sessions_by_replica"
                        " WHERE replica_id IN ('(none)', 'silent', 'no-such-replica')")
            by_replica = sorted(cur.fetchall(), key=lambda r: r[0])
    finally:
        conn.rollback()
        conn.close()
    assert got == [("", "no owner"), ("no-such-replica", "owner gone"), ("silent", "owner silent")], got
    assert now_connected == [(connected + 3,)], now_connected
    assert by_replica == [("(none)", None, 1), ("no-such-replica", None, 1), ("silent", "silent-host", 1)], \
        by_replica
    assert dep.sql("SELECT count(*) FROM cp_stale_sessions") == [(0,)]


# ---- tests ---------------------------------------------------------------------------


@test
def change_on_one_replica_reaches_streams_on_the_others():
    """Peers a and b hold streams on replicas 1 and 2. A peer registering
    through replica 3 reaches both at once (the bus; no serial check), and
    a peer registering through replica 1 reaches b on replica 2."""
    svc.needs_redis()
    dep = deployment()
    r1, r2, r3 = replica(dep), replica(dep), replica(dep)
    a = registered(dep, "alpha", r1)
    b = registered(dep, "bravo", r2)
    sa, fa = open_sync(a)
    sb, fb = open_sync(b)
    assert a.pub_b64 in remote_keys(fb), json_dump(fb)
    # a's stream on r1 learns of b (registered on r2 before a's stream
    # opened? no: after a registered, before its Sync) from its first map.
    assert b.pub_b64 in remote_keys(fa) or b.pub_b64 in remote_keys(
        sa.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=5))
    c = registered(dep, "charlie", r3)
    serial = dep.network_serial()
    ma = sa.wait_for(lambda m: c.pub_b64 in remote_keys(m), timeout=5)
    mb = sb.wait_for(lambda m: c.pub_b64 in remote_keys(m), timeout=5)
    assert ma.NetworkMap.Serial == serial and mb.NetworkMap.Serial == serial, (
        ma.NetworkMap.Serial, mb.NetworkMap.Serial, serial)
    d = registered(dep, "delta", r1)
    mb = sb.wait_for(lambda m: d.pub_b64 in remote_keys(m), timeout=5)
    assert mb.NetworkMap.Serial == dep.network_serial(), json_dump(mb)
    # Session owners are the replicas holding the streams.
    assert owner(dep, a) == (True, owner(dep, a)[1], replica_id(r1)), owner(dep, a)
    assert owner(dep, b)[2] == replica_id(r2), owner(dep, b)
    check_runbook_views(dep, {r1: [a], r2: [b], r3: []}, peers=4, stale_peers=(c, d))
    sa.cancel()
    sb.cancel()
    wait_until(lambda: owner(dep, a) == (False, 0, "") and owner(dep, b) == (False, 0, ""),
               what="both disconnected, owners cleared")


@test
def replicas_table_heartbeat_and_drain():
    """Each replica has a row that heartbeats; SIGTERM deregisters it."""
    svc.needs_redis()
    dep = deployment()
    r1, r2 = replica(dep), replica(dep)
    ids = {replica_id(r1), replica_id(r2)}
    rows = dep.sql("SELECT id, state, pid, grpc_address FROM replicas ORDER BY id")
    assert {r[0] for r in rows} == ids, rows
    assert all(r[1] == "serving" for r in rows), rows
    assert {r[2] for r in rows} == {r1.proc.pid, r2.proc.pid}, rows
    assert {r[3] for r in rows} == {"127.0.0.1:%d" % r1.grpc_port, "127.0.0.1:%d" % r2.grpc_port}, rows
    hb1 = dep.sql("SELECT heartbeat_at FROM replicas WHERE id = %s", (replica_id(r1),))[0][0]
    wait_until(lambda: dep.sql("SELECT heartbeat_at FROM replicas WHERE id = %s",
                               (replica_id(r1),))[0][0] > hb1, timeout=5, what="heartbeat moved")
    # The heartbeats show in /metrics too.
    import re

    def heartbeats_ok():
        _, _, body = svc.http("GET", r2.url("/metrics"))
        m = re.search(r'^netbird_cp_replica_heartbeats_total\{result="ok"\} (\S+)$', body.decode(), re.M)
        return m and float(m.group(1)) >= 2
    wait_until(heartbeats_ok, timeout=5, what="heartbeats counted in /metrics")
    a = registered(dep, "drained", r1)
    s, _ = open_sync(a)
    assert owner(dep, a)[2] == replica_id(r1)
    fixture.stop_server(r1)
    end, _ = s.wait_end(timeout=10)
    assert isinstance(end, RpcFailed) and end.code.name == "UNAVAILABLE", end
    assert owner(dep, a) == (False, 0, ""), owner(dep, a)
    rows = dep.sql("SELECT id FROM replicas")
    assert rows == [(replica_id(r2),)], rows
    logs = [o for o in r1.logs() if o.get("msg") == "replica deregistered"]
    assert logs and logs[0]["sessions_swept"] == "0", logs


@test
def readyz_degraded_without_the_bus():
    """A replica whose Redis is unreachable starts, serves, and reports
    degraded (200) on /readyz; without --redis-url it is plainly ready."""
    dep = deployment()
    port = svc.free_port()
    srv = dep.start("--redis-url", "redis://127.0.0.1:%d" % port, *FAST_HEARTBEAT)
    status, _, body = svc.http_json("GET", srv.url("/readyz"))
    assert status == 200 and body.get("status") == "degraded" and body.get("degraded") == "bus", body
    a = registered(dep, "nobus", srv)
    s, first = open_sync(a)
    assert first.NetworkMap.Serial >= 1
    s.cancel()
    plain = dep.start(*FAST_HEARTBEAT)
    status, _, body = svc.http_json("GET", plain.url("/readyz"))
    assert status == 200 and body == {"status": "ready"}, body


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
