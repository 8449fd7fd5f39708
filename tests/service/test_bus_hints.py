"""Bus messages are hints only (issue 15): a message on Redis makes a
replica read the account's serial from PostgreSQL, and what it pushes is
decided by the database, never by the serial the message carries. Two
replicas on one PostgreSQL and the Redis of tests/run, agents from
tests/agent's nbagent.py, two streams on each replica. The periodic serial
check is off (--serial-check-interval 0s), so only the bus can carry a
change from one replica to the other.

- a forged "<account> 9223372036854775807" must not silence the account:
  a change through the REST API on the other replica still reaches every
  stream on both replicas;
- a serial that goes back (a restored database) must not either: the
  change reaches every stream with a serial above what the agents hold
  (NetBird's agent ignores a map whose serial is lower than its own,
  client/internal/engine.go updateNetworkMap);
- a flood of forged messages costs a bounded number of database reads and
  no rebuild at all while the database says nothing changed."""

import os
import secrets
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, meshed_streams, wait_until, json_dump  # noqa: E402
from nbagent import remote_keys  # noqa: E402
from svc import test  # noqa: E402

INT64_MAX = 2 ** 63 - 1
FLOOD = 2000


def deployment():
    dep = Deployment()
    dep.bus_prefix = "h-" + secrets.token_hex(6)
    return dep


def replica(dep):
    srv = dep.start("--serial-check-interval", "0s", "--redis-url", svc.REDIS_URL,
                    "--bus-channel-prefix", dep.bus_prefix)
    srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    return srv


def publish_many(dep, payloads):
    """PUBLISH each payload on the deployment's account-serial channel, all
    pipelined on one Redis connection; waits for every reply."""
    hostport = svc.REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    chan = dep.bus_prefix + ":account-serial"
    out = []
    for p in payloads:
        parts = ["PUBLISH", chan, p]
        out.append("*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(x.encode()), x) for x in parts))
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall("".join(out).encode())
        got = b""
        while got.count(b"\r\n") < len(payloads):
            chunk = s.recv(65536)
            assert chunk, "Redis closed the connection"
            got += chunk
    assert all(line.startswith(b":") for line in got.split(b"\r\n") if line), got[:200]


def metric_sum(srv, name, label=None):
    """The sum of every sample of family name on srv's /metrics (only those
    whose labels contain label, when given); None when there is none."""
    status, _, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, status
    total = None
    for line in body.decode().splitlines():
        if not (line.startswith(name + " ") or line.startswith(name + "{")):
            continue
        if label and label not in line:
            continue
        total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def bus_received(srv):
    return metric_sum(srv, "netbird_cp_bus_messages_total", 'result="received"') or 0


def four_streams(dep):
    """Replicas r1, r2; agents a, b with streams on r1 and c, d on r2,
    each stream holding a map with the three others."""
    r1, r2 = replica(dep), replica(dep)
    agents, streams = meshed_streams(dep, (r1, r1, r2, r2), ("alpha", "bravo", "charlie", "delta"))
    return r1, r2, agents, streams


def held_serial(s):
    """The newest serial the stream has delivered (what the agent holds)."""
    return max(m.NetworkMap.Serial for m in s.received if m.HasField("NetworkMap"))


def delete_policies(dep, srv):
    """A change through the REST API on srv: every policy deleted, so every
    map loses its remote peers."""
    st, pols = svc.rest(srv, "GET", "/api/policies", dep.admin_token)
    assert st == 200 and pols, (st, pols)
    for p in pols:
        st, body = svc.rest(srv, "DELETE", "/api/policies/" + p["id"], dep.admin_token)
        assert st == 200, (st, body)


def all_reach(streams, pred, what):
    for i, s in enumerate(streams):
        try:
            s.wait_for(pred, timeout=5)
        except Exception as e:
            raise AssertionError("stream %d (%s) never got %s within 5 s: %r; last %s" % (
                i, "r1" if i < 2 else "r2", what, e,
                json_dump(s.received[-1]) if s.received else "nothing")) from None


# ---- tests ---------------------------------------------------------------------------


@test
def forged_huge_serial_does_not_silence_the_account():
    """A forged message with the largest serial, then a change through the
    REST API on r2: every stream on r1 and r2 gets it within 5 s."""
    svc.needs_redis()
    dep = deployment()
    r1, r2, agents, streams = four_streams(dep)
    before = (bus_received(r1), bus_received(r2))
    publish_many(dep, ["%s %d" % (dep.account_id, INT64_MAX)])
    wait_until(lambda: bus_received(r1) > before[0] and bus_received(r2) > before[1],
               what="the forged message received by both replicas")
    delete_policies(dep, r2)
    serial = dep.network_serial()
    all_reach(streams, lambda m: m.HasField("NetworkMap") and m.NetworkMap.Serial == serial
              and not remote_keys(m), "the map without policies at serial %d" % serial)
    # And once more from r1 (the replica that got the forged message first
    # in no particular order): a policy back, peers back everywhere.
    st, body = svc.rest(r1, "POST", "/api/policies", dep.admin_token, {
        "name": "back", "enabled": True, "rules": [{
            "name": "all", "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
            "sources": [g["id"] for g in svc.rest(r1, "GET", "/api/groups", dep.admin_token)[1]
                        if g["name"] == "All"],
            "destinations": [g["id"] for g in svc.rest(r1, "GET", "/api/groups", dep.admin_token)[1]
                             if g["name"] == "All"]}]})
    assert st == 200, (st, body)
    serial = dep.network_serial()
    all_reach(streams, lambda m: m.HasField("NetworkMap") and m.NetworkMap.Serial == serial
              and len(remote_keys(m)) == 3, "the map with the new policy at serial %d" % serial)


@test
def restored_lower_serial_resynchronises_every_stream():
    """The account's serial goes back in SQL (a restored database), then a
    change through the REST API on r2: every stream gets the change with a
    serial above the one its agent holds (NetBird's agent ignores lower
    ones), and the database's serial is that serial."""
    svc.needs_redis()
    dep = deployment()
    r1, r2, agents, streams = four_streams(dep)
    held = [held_serial(s) for s in streams]
    high = max(held)
    assert high >= 3, held
    dep.sql("UPDATE accounts SET network_serial = 1 WHERE id = %s", (dep.account_id,))
    delete_policies(dep, r2)
    all_reach(streams, lambda m: m.HasField("NetworkMap") and not remote_keys(m) and m.NetworkMap.Serial > high,
              "the map without policies at a serial above %d" % high)
    final = dep.network_serial()
    assert final > high, (final, high)
    for s in streams:
        assert held_serial(s) <= final, (held_serial(s), final)
        serials = [m.NetworkMap.Serial for m in s.received if m.HasField("NetworkMap")]
        assert serials == sorted(serials), "serials went backwards on a stream: %r" % serials
    # The replica that found the serial below its streams' says so.
    went_back = (metric_sum(r1, "netbird_cp_sync_serial_reads_total", 'result="went_back"') or 0) + \
        (metric_sum(r2, "netbird_cp_sync_serial_reads_total", 'result="went_back"') or 0)
    assert went_back >= 1, went_back


@test
def flood_of_forged_messages_costs_bounded_reads():
    """2,000 forged messages for the account (huge, random, equal and
    lower serials) and some for accounts with no stream here: a bounded
    number of database reads, no rebuild, no map pushed; the account still
    gets the next real change everywhere."""
    svc.needs_redis()
    dep = deployment()
    r1, r2, agents, streams = four_streams(dep)
    serial = dep.network_serial()
    reads0 = metric_sum(r1, "netbird_cp_sync_serial_reads_total") or 0
    hints0 = metric_sum(r1, "netbird_cp_sync_hints_total") or 0
    pushed0 = metric_sum(r1, "netbird_cp_fanout_maps_pushed_total")
    recv0 = bus_received(r1)
    payloads = []
    for i in range(FLOOD):
        if i % 10 == 9:
            payloads.append("nosuchaccount%04d %d" % (i, i + 1))
        else:
            payloads.append("%s %d" % (dep.account_id, (INT64_MAX, serial, serial + 1 + i, 1, i)[i % 5]))
    publish_many(dep, payloads)
    wait_until(lambda: bus_received(r1) >= recv0 + FLOOD, timeout=20, what="the flood received")
    wait_until(lambda: (metric_sum(r1, "netbird_cp_sync_hints_total") or 0) >= hints0 + FLOOD, timeout=20,
               what="every hint handled")
    # Settled: the last read (if any) came back.
    last = [None]

    def settled():
        now = metric_sum(r1, "netbird_cp_sync_serial_reads_total")
        same = now == last[0]
        last[0] = now
        return same
    wait_until(settled, timeout=20, interval=0.3, what="the hint reads settled")
    reads = (metric_sum(r1, "netbird_cp_sync_serial_reads_total") or 0) - reads0
    pushed = metric_sum(r1, "netbird_cp_fanout_maps_pushed_total") - pushed0
    no_streams = metric_sum(r1, "netbird_cp_sync_hints_total", 'outcome="no_streams"') or 0
    print("# %d forged messages: %d serial reads, %d maps pushed, %d hints for accounts without streams"
          % (FLOOD, reads, pushed, no_streams), flush=True)
    assert 1 <= reads <= FLOOD // 10, reads
    assert pushed == 0, pushed
    assert no_streams >= FLOOD // 10, no_streams
    unchanged = metric_sum(r1, "netbird_cp_sync_serial_reads_total", 'result="unchanged"') or 0
    assert unchanged >= reads, (unchanged, reads)
    assert dep.network_serial() == serial
    # Nothing was silenced: a real change on r2 reaches every stream.
    delete_policies(dep, r2)
    serial = dep.network_serial()
    all_reach(streams, lambda m: m.HasField("NetworkMap") and m.NetworkMap.Serial == serial
              and not remote_keys(m), "the map without policies at serial %d" % serial)


@test
def forged_proxy_sequence_does_not_silence_the_proxies():
    """The ProxyService's bus messages are hints too: a forged
    "~proxy 9223372036854775807", then a service created through the REST
    API on r1 reaches a proxy's mapping stream on r2 (no poll: only the bus
    can carry it)."""
    svc.needs_redis()
    import proxyclient as pc
    from proxyclient import pb
    dep = deployment()
    r1, r2 = replica(dep), replica(dep)
    cl = "hints.proxy.test"
    st, t = pc.rest(r1, dep.admin_token, "POST", "/api/reverse-proxies/proxy-tokens", {"name": "edge"})
    assert st == 200, (st, t)
    p = pc.Proxy(r2.grpc_target, t["plain_token"])
    svc.defer(p.close)
    s = p.sync()
    svc.defer(s.close)
    s.send_init("hints-proxy", cl)
    assert pc.snapshot(s)[0] == []
    before = bus_received(r2)
    publish_many(dep, ["~proxy %d" % INT64_MAX])
    wait_until(lambda: bus_received(r2) > before, what="the forged message received")
    created, _ = pc.add_peer_service(dep, r1, cl)
    _, r = s.next(timeout=5)
    assert [(m.id, m.type) for m in r.mapping] == [(created["id"], pb.UPDATE_TYPE_CREATED)], r


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
