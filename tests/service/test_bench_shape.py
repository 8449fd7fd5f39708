"""tests/bench/shape.py writes NetBird's benchmark shape (issue 16) that the
server turns into the maps bench-netmap builds in-process: 10 peers in 2
groups plus 2 routing peers, registered with nbagent.py; after the shape,
peer 0's stream gets a map with its group (4 others and the group's
routing peer) and one route, the group's host resource 10.0.0.1/32 through
that routing peer; the routing peer sees its group. The account holds
NetBird's counts: 2 groups + All, 4 policies (2 group, 2 resource), 2
networks with one router and one host resource each, one posture check,
no Default policy; a second run replaces them (same counts)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment  # noqa: E402
from nbagent import build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

SHAPE = os.path.join(HERE, "..", "bench", "shape.py")


def shape(dep, *extra):
    r = subprocess.run(["/usr/bin/python3", SHAPE, "--dsn", dep.dsn, "--account", dep.account_id,
                        "--peers", "10", "--groups", "2"] + list(extra), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def count(dep, table):
    return dep.sql("SELECT count(*) FROM %s WHERE account_id = %%s" % table, (dep.account_id,))[0][0]


@test
def shape_gives_bench_netmaps_maps():
    svc.needs_db()
    dep = Deployment()
    srv = dep.start("--serial-check-interval", "0s")
    agents = []
    for i in range(12):
        a = dep.agent(srv)
        a.register(dep.setup_key, meta=build_meta("shape-%d" % i))
        agents.append(a)
    out = shape(dep)
    assert "10/2" in out, out
    # The shape's order is the overlay IP's: find peer 0 and its group.
    order = [r[0] for r in dep.sql("SELECT key FROM peers WHERE account_id = %s ORDER BY ip", (dep.account_id,))]
    by_key = {a.pub_b64: a for a in agents}
    first, router0 = by_key[order[0]], by_key[order[10]]
    group0 = set(order[0:5]) | {order[10]}
    m = first.sync().wait_for(lambda m: m.HasField("NetworkMap"), timeout=10)
    assert remote_keys(m) == group0 - {order[0]}, (remote_keys(m), group0)
    routes = list(m.NetworkMap.Routes)
    assert [r.Network for r in routes] == ["10.0.0.1/32"], routes
    assert routes[0].Peer == order[10], routes[0]
    m = router0.sync().wait_for(lambda m: m.HasField("NetworkMap"), timeout=10)
    assert remote_keys(m) == group0 - {order[10]}, remote_keys(m)

    def counts():
        return (count(dep, "groups"), count(dep, "policies"), count(dep, "policy_rules"), count(dep, "networks"),
                count(dep, "network_routers"), count(dep, "network_resources"), count(dep, "posture_checks"))
    assert counts() == (3, 4, 4, 2, 2, 2, 1), counts()
    assert dep.sql("SELECT count(*) FROM policies WHERE account_id = %s AND name = 'Default'",
                   (dep.account_id,))[0][0] == 0
    shape(dep)
    assert counts() == (3, 4, 4, 2, 2, 2, 1), counts()
    # --routes: the previous shape, a route per group instead.
    shape(dep, "--routes")
    assert (count(dep, "networks"), count(dep, "routes"), count(dep, "policies")) == (0, 2, 2)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
