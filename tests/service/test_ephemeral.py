"""Ephemeral peers (cp/store-ephemeral.h, services/management/
mgmt-sync-checks.c): a peer registered with an ephemeral setup key is
deleted once it has been disconnected for --ephemeral-peer-lifetime, by
whichever replica's sweep gets it (the database decides, each peer once);
the deletion reaches every other peer's map on every replica. A peer that
reconnects in time stays.

Replicas run with --serial-check-interval 0s and the Redis bus, so a push
to another replica can only come from the sweep's announce. The lifetime is
short (2s) and the sweep beat (--login-expiry-check-interval) 200ms; the
waits below are upper bounds, never asserted durations.
"""

import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until, json_dump  # noqa: E402
from nbagent import build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

COMMON = ("--serial-check-interval", "0s", "--heartbeat-interval", "200ms", "--replica-expiry", "1s")


def deployment():
    dep = Deployment()
    dep.bus_prefix = "t-" + secrets.token_hex(6)
    return dep


def replica(dep, sweep=True, lifetime="2s"):
    """A replica on the bus; sweep=False: one that never sweeps (its
    streams learn of a deletion only through the bus)."""
    beat = "200ms" if sweep else "0s"
    srv = dep.start(*(list(COMMON) + ["--login-expiry-check-interval", beat, "--ephemeral-peer-lifetime", lifetime,
                                      "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", dep.bus_prefix]))
    srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    return srv


def registered(dep, name, srv, key=None):
    a = dep.agent(srv)
    a.register(key or dep.setup_key, meta=build_meta(name))
    return a


def open_sync(agent):
    s = agent.sync()
    return s, s.next(timeout=15)


def peer_row(dep, agent):
    rows = dep.sql("SELECT id, peer_status_connected FROM peers WHERE key = %s", (agent.pub_b64,))
    return tuple(rows[0]) if rows else None


def all_keys(m):
    return remote_keys(m) | {p.wgPubKey for p in m.NetworkMap.offlinePeers}


@test
def disconnected_ephemeral_peer_is_deleted_and_pushed_everywhere():
    """e (ephemeral key) connects on replica 1 and disconnects; after the
    lifetime it is gone from the database, event 5 is written once from
    "sys", a policy naming it went with event 11, and b's stream on
    replica 2 (which does not sweep: the push comes over the bus) gets a
    map without it at the new serial."""
    svc.needs_redis()
    dep = deployment()
    r1, r2 = replica(dep), replica(dep, sweep=False)
    eph_key = dep.add_setup_key(ephemeral=True)
    b = registered(dep, "keeper", r2)
    # Registered, e is due one lifetime after its registration unless it
    # connects: its stream opens at once.
    e = registered(dep, "ephemeral", r1, key=eph_key)
    se, fe = open_sync(e)
    eid = peer_row(dep, e)[0]
    sb, fb = open_sync(b)
    dep.sql("INSERT INTO policies (id, account_id, name) VALUES ('pe1', %s, 'to the ephemeral')", (dep.account_id,))
    dep.sql("INSERT INTO policy_rules (id, policy_id, account_id, destination_resource_id, destination_resource_type)"
            " VALUES ('pe1r', 'pe1', %s, %s, 'peer')", (dep.account_id, eid))
    assert b.pub_b64 in all_keys(fe), json_dump(fe)
    if e.pub_b64 not in all_keys(fb):
        sb.wait_for(lambda m: e.pub_b64 in all_keys(m), timeout=10)
    wait_until(lambda: peer_row(dep, e) == (eid, True), what="e connected")
    # Connected for longer than the lifetime: not deleted.
    time.sleep(2.5)
    assert peer_row(dep, e) == (eid, True), "a connected ephemeral peer was deleted"
    se.cancel()
    wait_until(lambda: peer_row(dep, e) is None, timeout=20, what="e deleted after its lifetime")
    push = sb.wait_for(lambda m: e.pub_b64 not in all_keys(m), timeout=10)
    assert push.NetworkMap.Serial == dep.network_serial(), (push.NetworkMap.Serial, dep.network_serial())
    rows = dep.sql("SELECT initiator_id, meta->>'name' FROM events WHERE activity = 5 AND target_id = %s", (eid,))
    assert rows == [("sys", "ephemeral")], rows
    assert dep.sql("SELECT count(*) FROM policies WHERE id = 'pe1'") == [(0,)]
    rows = dep.sql("SELECT initiator_id, meta->>'name' FROM events WHERE activity = 11 AND target_id = %s", (eid,))
    assert rows == [("sys", "to the ephemeral")], rows
    assert dep.sql("SELECT count(*) FROM group_peers WHERE peer_id = %s", (eid,)) == [(0,)]
    assert [o for o in r1.logs() if o.get("msg") == "ephemeral peer deleted after its idle time"
            and o.get("peer") == eid], "replica 1 did not log the deletion"
    # b itself (not ephemeral) is never touched, connected or not.
    sb.cancel()
    time.sleep(2.5)
    assert peer_row(dep, b) is not None


@test
def ephemeral_peer_that_reconnects_in_time_stays():
    """e disconnects and reconnects before its lifetime ends, then stays
    connected past it: never deleted, no event."""
    svc.needs_redis()
    dep = deployment()
    r1 = replica(dep)
    e = registered(dep, "comeback", r1, key=dep.add_setup_key(ephemeral=True))
    s1, _ = open_sync(e)
    eid = peer_row(dep, e)[0]
    s1.cancel()
    wait_until(lambda: peer_row(dep, e) == (eid, False), what="e disconnected")
    s2, _ = open_sync(e)
    wait_until(lambda: peer_row(dep, e) == (eid, True), what="e reconnected")
    time.sleep(3.5)     # past the lifetime since the disconnect, many sweeps
    assert peer_row(dep, e) == (eid, True)
    assert dep.sql("SELECT count(*) FROM events WHERE activity = 5") == [(0,)]
    s2.cancel()


@test
def replicas_sweeping_together_delete_each_peer_once():
    """Three replicas sweep the same database every 200ms; 12 ephemeral
    peers become due at the same moment: each is deleted once, with one
    event, and the serial moved once per replica that deleted some."""
    svc.needs_redis()
    dep = deployment()
    # A long lifetime: nothing is due until the UPDATE below makes it so.
    rs = [replica(dep, lifetime="30m") for _ in range(3)]
    key = dep.add_setup_key(ephemeral=True)
    agents = [registered(dep, "swept%d" % i, rs[i % 3], key=key) for i in range(12)]
    ids = {peer_row(dep, a)[0] for a in agents}
    before = dep.network_serial()
    # All due at once (disconnected, last seen an hour ago), in one
    # transaction, so the replicas' sweeps race for them.
    dep.sql("UPDATE peers SET peer_status_last_seen = now() - interval '1 hour' WHERE ephemeral")
    wait_until(lambda: dep.sql("SELECT count(*) FROM peers WHERE ephemeral") == [(0,)], timeout=20,
               what="every ephemeral peer deleted")
    rows = dep.sql("SELECT target_id, count(*) FROM events WHERE activity = 5 GROUP BY target_id")
    assert {r[0] for r in rows} == ids and all(r[1] == 1 for r in rows), rows
    bumps = dep.network_serial() - before
    assert 1 <= bumps <= 3, bumps
    # Each replica logged the peers it deleted; together: each once.
    logged = []
    for srv in rs:
        logged += [o.get("peer") for o in srv.logs() if o.get("msg") == "ephemeral peer deleted after its idle time"]
    assert sorted(logged) == sorted(ids), logged


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
