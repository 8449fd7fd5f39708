"""Networks (resources and routers) reach agents end to end: rows written
straight into PostgreSQL (networks, network_resources, network_routers,
group_resources and a policy with a resource destination), the account
serial bumped and announced on the Redis bus as a replica would, and the
pushed Sync maps checked on a source agent and on its routing peers.

The periodic serial check is off (--serial-check-interval 0s), so only the
bus announcement can deliver the new maps. Expected values are NetBird's
(account_components.go, NetworkMapComponents.Calculate): routes
"<resource id>:<peer id>" with the resource name as NetID, KeepRoute, each
router's metric and masquerade; a domain resource's route carries the
domain and 192.0.2.0/32; the routers get RouteFirewallRules from the
policy's source peers and see them as remote peers."""

import secrets
import socket
import urllib.parse

from fixture import Deployment, json_dump  # sets up sys.path for svc and nbagent
from nbagent import build_meta, pb, remote_keys
import svc

test = svc.test


def publish(channel, payload):
    """PUBLISH on the test Redis (RESP by hand: no redis module here)."""
    u = urllib.parse.urlparse(svc.REDIS_URL)
    parts = [b"PUBLISH", channel.encode(), payload.encode()]
    msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((u.hostname, u.port or 6379), timeout=5) as s:
        s.sendall(msg)
        reply = s.recv(64)
    assert reply.startswith(b":"), reply


def agent_on(dep, srv, name):
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta(name))
    row = dep.peers()[a.pub_b64]
    a.peer_id, a.ip = row["id"], row["ip"]
    return a


def routes_by_id(msg):
    return {r.ID: r for r in msg.NetworkMap.Routes}


@test
def resources_and_routers_reach_source_and_routing_peers():
    svc.needs_redis()
    dep = Deployment()
    prefix = "nw-" + secrets.token_hex(6)
    srv = dep.start("--serial-check-interval", "0s", "--redis-url", svc.REDIS_URL,
                    "--bus-channel-prefix", prefix)
    srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    src = agent_on(dep, srv, "alpha")
    r1 = agent_on(dep, srv, "bravo")
    r2 = agent_on(dep, srv, "charlie")
    streams = {a: a.sync() for a in (src, r1, r2)}
    for s in streams.values():
        s.next(timeout=10)

    acc = dep.account_id
    sql = dep.sql
    # No peer-to-peer policy: only the resource policies connect them.
    sql("DELETE FROM policies WHERE account_id = %s", (acc,))
    devs = dep.add_group("devs")
    routers = dep.add_group("routers")
    res = dep.add_group("web-resources")
    for g, a in ((devs, src), (routers, r1), (routers, r2)):
        sql("INSERT INTO group_peers (account_id, group_id, peer_id) VALUES (%s, %s, %s)", (acc, g, a.peer_id))
    sql("INSERT INTO networks (id, account_id, name) VALUES ('net1', %s, 'office')", (acc,))
    sql("INSERT INTO network_resources (id, network_id, account_id, name, type, prefix, enabled)"
        " VALUES ('res-web', 'net1', %s, 'web', 'host', '10.20.0.5/32', true)", (acc,))
    sql("INSERT INTO network_resources (id, network_id, account_id, name, type, domain, enabled)"
        " VALUES ('res-docs', 'net1', %s, 'docs', 'domain', 'docs.example.com', true)", (acc,))
    sql("INSERT INTO group_resources (account_id, group_id, resource_id, resource_type)"
        " VALUES (%s, %s, 'res-web', 'host')", (acc, res))
    sql("INSERT INTO network_routers (id, network_id, account_id, peer_groups, metric, masquerade, enabled)"
        " VALUES ('rt1', 'net1', %s, %s, 50, true, true)", (acc, [routers]))
    sql("INSERT INTO policies (id, account_id, name, enabled) VALUES ('pol-web', %s, 'web', true)", (acc,))
    sql("INSERT INTO policy_rules (id, policy_id, account_id, protocol, sources, destinations, ports)"
        " VALUES ('rule-web', 'pol-web', %s, 'tcp', %s, %s, '{443}')", (acc, [devs], [res]))
    sql("INSERT INTO policies (id, account_id, name, enabled) VALUES ('pol-docs', %s, 'docs', true)", (acc,))
    sql("INSERT INTO policy_rules (id, policy_id, account_id, protocol, sources,"
        " destination_resource_id, destination_resource_type)"
        " VALUES ('rule-docs', 'pol-docs', %s, 'all', %s, 'res-docs', 'domain')", (acc, [devs]))
    serial = sql("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s"
                 " RETURNING network_serial", (acc,))[0][0]
    publish(prefix + ":account-serial", "%s %d" % (acc, serial))

    # The source: both routers' routes for both resources, the routers as peers.
    m = streams[src].wait_for(lambda x: x.NetworkMap.Serial >= serial, timeout=15)
    nm = m.NetworkMap
    assert remote_keys(m) == {r1.pub_b64, r2.pub_b64}, json_dump(m)
    rs = routes_by_id(m)
    want = {"res-web:" + r1.peer_id, "res-web:" + r2.peer_id, "res-docs:" + r1.peer_id, "res-docs:" + r2.peer_id}
    assert set(rs) == want, json_dump(m)
    for r in (r1, r2):
        web = rs["res-web:" + r.peer_id]
        assert (web.Network, web.NetworkType, web.Peer, web.Metric, web.Masquerade, web.NetID, web.keepRoute) == \
            ("10.20.0.5/32", 1, r.pub_b64, 50, True, "web", True), json_dump(m)
        docs = rs["res-docs:" + r.peer_id]
        assert (docs.Network, docs.NetworkType, list(docs.Domains), docs.NetID, docs.keepRoute) == \
            ("192.0.2.0/32", 3, ["docs.example.com"], "docs", True), json_dump(m)
    assert len(nm.routesFirewallRules) == 0 and nm.routesFirewallRulesIsEmpty, json_dump(m)
    assert len(nm.FirewallRules) == 0 and nm.firewallRulesIsEmpty, json_dump(m)

    # Each router: its own routes, the source as a peer, the route rules.
    for r in (r1, r2):
        m = streams[r].wait_for(lambda x: x.NetworkMap.Serial >= serial, timeout=15)
        nm = m.NetworkMap
        assert remote_keys(m) == {src.pub_b64}, json_dump(m)
        assert set(routes_by_id(m)) == {"res-web:" + r.peer_id, "res-docs:" + r.peer_id}, json_dump(m)
        rules = {x.RouteID: x for x in nm.routesFirewallRules}
        assert len(nm.routesFirewallRules) == 2 and set(rules) == set(routes_by_id(m)), json_dump(m)
        web = rules["res-web:" + r.peer_id]
        assert list(web.sourceRanges) == [src.ip + "/32"], json_dump(m)
        assert (web.destination, web.protocol, web.portInfo.port, web.PolicyID, web.isDynamic) == \
            ("10.20.0.5/32", pb.RuleProtocol.TCP, 443, b"pol-web", False), json_dump(m)
        docs = rules["res-docs:" + r.peer_id]
        assert list(docs.sourceRanges) == [src.ip + "/32"], json_dump(m)
        assert (docs.destination, docs.protocol, docs.isDynamic, list(docs.domains), docs.PolicyID) == \
            ("192.0.2.0/32", pb.RuleProtocol.ALL, True, ["docs.example.com"], b"pol-docs"), json_dump(m)
        assert docs.action == pb.RuleAction.ACCEPT and web.action == pb.RuleAction.ACCEPT

    # Disabling the router takes it all back.
    sql("UPDATE network_routers SET enabled = false WHERE id = 'rt1'")
    serial = sql("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s"
                 " RETURNING network_serial", (acc,))[0][0]
    publish(prefix + ":account-serial", "%s %d" % (acc, serial))
    for a in (src, r1, r2):
        m = streams[a].wait_for(lambda x: x.NetworkMap.Serial >= serial, timeout=15)
        assert len(m.NetworkMap.Routes) == 0 and len(m.NetworkMap.routesFirewallRules) == 0, json_dump(m)
        assert remote_keys(m) == set(), json_dump(m)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
