"""netbird_cp_sync_delivery_seconds{origin} (issue 16): the server's own
measure of one fan-out, from the change (the commit on this replica, or
the publisher's send time of a bus hint) to the send completion of the
last map it queued. Agents from tests/agent's nbagent.py hold Sync
streams; one change through the REST API makes the histogram's count go
up by exactly one per fan-out that pushed maps: origin "local" on the
replica that committed it, origin "bus" on a replica that learnt it from
Redis. Its sum grows by a positive amount no larger than the test's own
wall time around the change. No timing assertion beyond that bound. The
periodic serial check is off (--serial-check-interval 0s), so only the
change and the bus make fan-outs."""

import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, meshed_streams, wait_until  # noqa: E402
from svc import test  # noqa: E402

FAMILY = "netbird_cp_sync_delivery_seconds"


def delivery(srv, origin):
    """(count, sum) of the family's origin child on srv's /metrics."""
    status, _, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, status
    count = total = None
    label = 'origin="%s"' % origin
    for line in body.decode().splitlines():
        if label not in line:
            continue
        if line.startswith(FAMILY + "_count{"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith(FAMILY + "_sum{"):
            total = float(line.rsplit(" ", 1)[1])
    assert count is not None and total is not None, "no %s{%s} on /metrics" % (FAMILY, label)
    return count, total


def settled(srv, origin):
    """The child's count once it stopped moving (fan-outs of the opens)."""
    last = delivery(srv, origin)
    while True:
        time.sleep(0.5)
        now = delivery(srv, origin)
        if now == last:
            return now
        last = now


def start(dep, *extra):
    return dep.start("--serial-check-interval", "0s", *extra)


def add_policy(dep, srv, name):
    """One change through the REST API on srv (a new policy All -> All):
    the account's serial moves and every peer gets a new map."""
    st, groups = svc.rest(srv, "GET", "/api/groups", dep.admin_token)
    assert st == 200, (st, groups)
    all_id = [g["id"] for g in groups if g["name"] == "All"]
    st, body = svc.rest(srv, "POST", "/api/policies", dep.admin_token, {
        "name": name, "enabled": True, "rules": [{
            "name": name, "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
            "sources": all_id, "destinations": all_id}]})
    assert st == 200, (st, body)


def streams_on(dep, placement):
    """Agents registered and streaming, placement: one server per agent;
    returns the streams once each holds a map with all the others."""
    return meshed_streams(dep, placement)[1]


def all_at(streams, serial):
    for s in streams:
        s.wait_for(lambda m: m.HasField("NetworkMap") and m.NetworkMap.Serial >= serial, timeout=10)


@test
def local_change_observes_one_fanout():
    """Three streams on one replica; one policy created through its REST
    API: count{origin="local"} +1, sum grows by (0, wall time]; bus
    untouched."""
    dep = Deployment()
    r = start(dep)
    streams = streams_on(dep, [r, r, r])
    c0, s0 = settled(r, "local")
    b0 = delivery(r, "bus")
    t = time.monotonic()
    add_policy(dep, r, "delivery-local")
    all_at(streams, dep.network_serial())
    wait_until(lambda: delivery(r, "local")[0] >= c0 + 1, what="the local delivery observed")
    wall = time.monotonic() - t
    c1, s1 = settled(r, "local")
    assert c1 == c0 + 1, (c0, c1)
    assert 0 < s1 - s0 <= wall, (s1 - s0, wall)
    assert delivery(r, "bus") == b0, (b0, delivery(r, "bus"))


@test
def several_changes_one_observation_each():
    """Three changes one at a time on one replica: three observations."""
    dep = Deployment()
    r = start(dep)
    streams = streams_on(dep, [r, r])
    c0, s0 = settled(r, "local")
    t = time.monotonic()
    for i in range(3):
        add_policy(dep, r, "delivery-%d" % i)
        all_at(streams, dep.network_serial())
        wait_until(lambda i=i: delivery(r, "local")[0] >= c0 + i + 1, what="delivery %d observed" % i)
    wall = time.monotonic() - t
    c1, s1 = settled(r, "local")
    assert c1 == c0 + 3, (c0, c1)
    assert 0 < s1 - s0 <= wall, (s1 - s0, wall)


@test
def bus_hint_observes_one_fanout_on_the_other_replica():
    """Two replicas on one Redis; two streams on each; a policy created
    on r1: r1 count{local} +1, r2 count{bus} +1 (and no local one there),
    r1's own message (if it hears it) pushes nothing, so its bus count
    stays."""
    svc.needs_redis()
    dep = Deployment()
    prefix = "d-" + secrets.token_hex(6)
    r1 = start(dep, "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix)
    r2 = start(dep, "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix)
    for r in (r1, r2):
        r.wait_log(lambda o: o.get("msg") == "bus subscribed")
    streams = streams_on(dep, [r1, r1, r2, r2])
    l1, _ = settled(r1, "local")
    b1, _ = settled(r1, "bus")
    l2, _ = settled(r2, "local")
    b2, bs2 = settled(r2, "bus")
    t = time.monotonic()
    add_policy(dep, r1, "delivery-bus")
    all_at(streams, dep.network_serial())
    wait_until(lambda: delivery(r2, "bus")[0] >= b2 + 1 and delivery(r1, "local")[0] >= l1 + 1,
               what="the local and bus deliveries observed")
    wall = time.monotonic() - t
    c, s = settled(r2, "bus")
    assert c == b2 + 1, (b2, c)
    assert 0 < s - bs2 <= wall + 0.01, (s - bs2, wall)   # 10 ms: the bus's ms resolution
    assert settled(r1, "local")[0] == l1 + 1
    assert delivery(r2, "local")[0] == l2
    assert delivery(r1, "bus")[0] == b1


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
