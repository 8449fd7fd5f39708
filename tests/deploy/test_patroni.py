"""PostgreSQL failover under load (issue 14): a Patroni pair (Debian's
patroni + etcd on loopback, synchronous_mode) behind a multi-host DSN with
target_session_attrs=read-write; two replicas on it with agents holding
Sync streams and a REST writer recording every acknowledged (2xx) change.
The primary node is killed (SIGKILL to Patroni and its postmaster); Patroni
promotes the synchronous standby. Asserted: /readyz of each replica goes
503 and then 200 (timeline printed), both reconnect to the new primary,
every acknowledged change is there afterwards, every agent resyncs to the
newest serial, and the fence held (no replica reaped another's sessions;
every peer with an open stream is connected in the database). The figures
(kill -> first 200 -> all agents resynced) are printed as TAP comments;
docs/database-ha.md records them."""

import json
import os
import secrets
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from nbagent import RpcFailed, StreamEnded, build_meta, remote_keys  # noqa: E402
from patronifix import PatroniCluster  # noqa: E402
from svc import test  # noqa: E402

AGENTS = 6


def rest(srv, method, path, token, body=None, timeout=5):
    """svc.rest, with a connection failure (a replica mid-failover) as
    status 0 instead of an exception."""
    try:
        return svc.rest(srv, method, path, token, body, timeout=timeout)
    except Exception:
        return 0, None


class Poller(threading.Thread):
    """GET /readyz every 100 ms: (seconds since start, status) on changes."""

    def __init__(self, srv, t0):
        super().__init__(daemon=True)
        self.srv, self.t0 = srv, t0
        self.timeline = []
        self.stop = False

    def run(self):
        last = None
        while not self.stop:
            try:
                status = svc.http("GET", self.srv.url("/readyz"), timeout=2)[0]
            except Exception:
                status = 0
            if status != last:
                self.timeline.append((round(time.monotonic() - self.t0, 2), status))
                last = status
            time.sleep(0.1)


class Writer(threading.Thread):
    """POST /api/groups in turn on each replica, every 100 ms; keeps the
    names the server acknowledged (2xx)."""

    def __init__(self, dep, servers):
        super().__init__(daemon=True)
        self.dep, self.servers = dep, servers
        self.acked, self.failed = [], 0
        self.stop = False

    def run(self):
        i = 0
        while not self.stop:
            name = "ha-%05d" % i
            status, body = rest(self.servers[i % len(self.servers)], "POST", "/api/groups", self.dep.admin_token,
                                {"name": name})
            if 200 <= status < 300:
                self.acked.append(name)
            else:
                self.failed += 1
            i += 1
            time.sleep(0.1)




@test
def primary_killed_under_load():
    svc.needs_db()
    svc.needs_redis()
    cluster = PatroniCluster()
    cluster.start()
    old = cluster.leader()
    assert old is not None and cluster.sync_standby() is not None, cluster.cluster_state()
    # Deployment makes its database through svc.PG_DSN: the cluster's.
    saved = svc.PG_DSN
    svc.PG_DSN = cluster.dsn()
    try:
        dep = Deployment()
    finally:
        svc.PG_DSN = saved
    prefix = "ha-" + secrets.token_hex(4)
    servers = [dep.start("--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix) for _ in range(2)]
    agents, streams = [], []
    for i in range(AGENTS):
        a = dep.agent(servers[i % 2])
        a.register(dep.setup_key, meta=build_meta("ha-%d" % i))
        s = a.sync()
        s.next(timeout=20)
        agents.append(a)
        streams.append(s)

    t0 = time.monotonic()
    pollers = [Poller(srv, t0) for srv in servers]
    writer = Writer(dep, servers)
    for th in pollers + [writer]:
        th.start()
    time.sleep(3)
    acked_before = len(writer.acked)
    assert acked_before > 0, "no write acknowledged before the failover"

    t_kill = time.monotonic() - t0
    old.kill9()
    new = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new = cluster.leader()
        if new is not None and new is not old:
            break
        time.sleep(0.2)
    assert new is not None and new is not old, "no promotion:\n" + cluster.tails()
    t_promoted = time.monotonic() - t0

    def ready_again(p):
        return any(st == 503 for t, st in p.timeline if t > t_kill) and \
            p.timeline[-1][1] == 200 and p.timeline[-1][0] > t_kill

    wait_until(lambda: all(ready_again(p) for p in pollers), timeout=60, interval=0.2,
               what="/readyz 503 then 200 on both replicas")
    t_ready = [next(t for t, st in p.timeline if t > t_kill and st == 200 and any(
        st2 == 503 for t2, st2 in p.timeline if t_kill < t2 < t)) for p in pollers]
    time.sleep(3)               # writes go on against the new primary
    writer.stop = True
    writer.join(10)

    # A change after the failover: every agent must see it.
    late = dep.agent(servers[0])
    late.register(dep.setup_key, meta=build_meta("ha-late"))
    serial = dep.network_serial()
    reopened = 0
    pending = set(range(AGENTS))
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for i in sorted(pending):
            try:
                m = streams[i].wait_for(lambda m: m.NetworkMap.Serial >= serial and late.pub_b64 in remote_keys(m),
                                        timeout=0.5)
                pending.discard(i)
            except (StreamEnded, RpcFailed):
                # The replica ended the stream (it could not read or fence
                # while the database was away): the agent reconnects.
                reopened += 1
                streams[i] = agents[i].sync()
            except Exception:
                pass
    assert not pending, "agents not resynced to serial %d: %s" % (serial, sorted(pending))
    t_resynced = time.monotonic() - t0
    for p in pollers:
        p.stop = True

    # Every acknowledged change is there (read through the same DSN: the new primary).
    names = {r[0] for r in dep.sql("SELECT name FROM groups WHERE account_id = %s", (dep.account_id,))}
    lost = [n for n in writer.acked if n not in names]
    assert not lost, "acknowledged but lost: %s" % lost
    # The fence: nobody reaped anybody; every agent's peer is connected.
    for srv in servers:
        assert svc.metric(srv, "netbird_cp_replica_reaped_sessions_total") == 0
    keys = [a.pub_b64 for a in agents]
    rows = dep.sql("SELECT key, peer_status_connected FROM peers WHERE key = ANY(%s)", (keys,))
    assert len(rows) == AGENTS and all(r[1] for r in rows), rows

    figures = {
        "kill_s": t_kill, "promoted_after_s": round(t_promoted - t_kill, 2),
        "first_200_after_s": [round(t - t_kill, 2) for t in t_ready],
        "all_agents_resynced_after_s": round(t_resynced - t_kill, 2),
        "acked_writes": len(writer.acked), "failed_writes": writer.failed, "streams_reopened": reopened,
        "readyz_timeline": [p.timeline for p in pollers],
    }
    print("# failover: %s" % json.dumps(figures))
    for a in agents + [late]:
        a.close()


if __name__ == "__main__":
    svc.run_all()
