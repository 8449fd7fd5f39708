"""Changes made over the REST API reach connected agents: on the replica
that handled the request and, through the Redis bus, on every other
replica. The periodic serial check is off (--serial-check-interval 0s), so
nothing but the request's own push and the bus can deliver a map."""

import queue
import secrets

import apifix
from apifix import svc
from fixture import Deployment, json_dump
from nbagent import build_meta, remote_keys

test = svc.test


def replicas(n):
    dep = Deployment()
    prefix = "api-" + secrets.token_hex(6)
    out = []
    for _ in range(n):
        srv = dep.start("--serial-check-interval", "0s", "--redis-url", svc.REDIS_URL,
                        "--bus-channel-prefix", prefix)
        srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
        out.append(srv)
    return dep, out


def agent_on(dep, srv, name):
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta(name))
    a.peer_id = dep.peers()[a.pub_b64]["id"]
    return a


def tcp_ports(msg):
    """Ports of the map's TCP firewall rules (the Port string agents read,
    or PortInfo)."""
    out = []
    for r in msg.NetworkMap.FirewallRules:
        if r.Port:
            out.append(int(r.Port))
        elif r.PortInfo.port:
            out.append(r.PortInfo.port)
    return sorted(set(out))


@test
def policy_change_over_the_api_reaches_streams_on_every_replica():
    """Agents a and b hold streams on replicas 1 and 2; an operator works
    through replica 3: replacing the Default policy with a tcp/22 policy
    between two groups changes both maps, pushed at once."""
    svc.needs_redis()
    dep, (r1, r2, r3) = replicas(3)
    api = apifix.api_for(r3, dep.admin_token)
    a = agent_on(dep, r1, "alpha")
    b = agent_on(dep, r2, "bravo")
    sa, sb = a.sync(), b.sync()
    sa.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    sb.wait_for(lambda m: a.pub_b64 in remote_keys(m), timeout=10)

    ga = api.ok("POST", "/api/groups", {"name": "ga", "peers": [a.peer_id]})
    gb = api.ok("POST", "/api/groups", {"name": "gb", "peers": [b.peer_id]})
    default = [p for p in api.ok("GET", "/api/policies") if p["name"] == "Default"]
    assert len(default) == 1, default
    api.ok("DELETE", "/api/policies/" + default[0]["id"])
    serial = dep.network_serial()
    # No policy left: each stream gets a map without the other peer.
    ma = sa.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    mb = sb.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    assert remote_keys(ma) == set() and ma.NetworkMap.remotePeersIsEmpty, json_dump(ma)
    assert remote_keys(mb) == set() and mb.NetworkMap.remotePeersIsEmpty, json_dump(mb)

    api.ok("POST", "/api/policies", {
        "name": "ssh", "enabled": True,
        "rules": [{"name": "ssh", "enabled": True, "action": "accept", "bidirectional": False,
                   "protocol": "tcp", "ports": ["22"], "sources": [ga["id"]], "destinations": [gb["id"]]}]})
    serial = dep.network_serial()
    ma = sa.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    mb = sb.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    assert ma.NetworkMap.Serial == serial and mb.NetworkMap.Serial == serial, (
        ma.NetworkMap.Serial, mb.NetworkMap.Serial, serial)
    assert remote_keys(ma) == {b.pub_b64}, json_dump(ma)
    assert remote_keys(mb) == {a.pub_b64}, json_dump(mb)
    # The destination (b) accepts tcp/22 from a; the source gets the
    # outbound rule for the same port.
    assert tcp_ports(mb) == [22], json_dump(mb)
    assert tcp_ports(ma) == [22], json_dump(ma)


@test
def api_change_on_the_streams_own_replica_and_group_edits():
    """The same without the bus: one replica holds the stream and serves the
    request. Taking the peer out of the policy's group removes the rule."""
    dep = Deployment()
    srv = dep.start("--serial-check-interval", "0s")
    api = apifix.api_for(srv, dep.admin_token)
    a = agent_on(dep, srv, "alpha")
    b = agent_on(dep, srv, "bravo")
    sa = a.sync()
    sa.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    gb = api.ok("POST", "/api/groups", {"name": "gb", "peers": [b.peer_id]})
    ga = api.ok("POST", "/api/groups", {"name": "ga", "peers": [a.peer_id]})
    for p in api.ok("GET", "/api/policies"):
        api.ok("DELETE", "/api/policies/" + p["id"])
    api.ok("POST", "/api/policies", {
        "name": "web", "enabled": True,
        "rules": [{"name": "web", "enabled": True, "action": "accept", "bidirectional": True,
                   "protocol": "tcp", "ports": ["443"], "sources": [ga["id"]], "destinations": [gb["id"]]}]})
    m = sa.wait_for(lambda m: m.NetworkMap.Serial >= dep.network_serial(), timeout=10)
    assert remote_keys(m) == {b.pub_b64} and tcp_ports(m), json_dump(m)
    # Emptying gb leaves a with nobody to talk to.
    api.ok("PUT", "/api/groups/" + gb["id"], {"name": "gb", "peers": []})
    m = sa.wait_for(lambda m: m.NetworkMap.Serial >= dep.network_serial(), timeout=10)
    assert remote_keys(m) == set() and m.NetworkMap.firewallRulesIsEmpty, json_dump(m)


@test
def failed_request_pushes_nothing():
    """A request that fails changes no serial, so no map is pushed: the
    stream stays silent, and the next successful change's push carries
    the very next serial."""
    dep = Deployment()
    srv = dep.start("--serial-check-interval", "0s")
    api = apifix.api_for(srv, dep.admin_token)
    a = agent_on(dep, srv, "alpha")
    sa = a.sync()
    first = sa.next(timeout=10)
    serial = dep.network_serial()
    assert first.NetworkMap.Serial == serial
    api.error("POST", "/api/groups", 422, {"name": "x", "peers": ["missing"]})
    api.error("POST", "/api/policies", 400, raw="{")
    assert dep.network_serial() == serial
    try:
        extra = sa.next(timeout=1.5)
        raise AssertionError("unexpected push after failed requests: %s" % json_dump(extra))
    except queue.Empty:
        pass
    # One change that works: one bump, and it is the next thing pushed.
    api.ok("POST", "/api/groups", {"name": "x", "peers": [a.peer_id]})
    assert dep.network_serial() == serial + 1
    m = sa.next(timeout=10)
    assert m.NetworkMap.Serial == serial + 1, json_dump(m)


if __name__ == "__main__":
    apifix.run_tests()
