"""/api/routes against the real server: CRUD, NetBird's validation and
messages, duplicate routes, domain routes (punycode), events with their
meta, permissions, and the route reaching an agent's network map."""

import apifix
from apifix import all_group, svc
import nbagent

test = svc.test


def add_peer(dep, name):
    a = dep.agent()
    a.register(dep.setup_key, meta=nbagent.build_meta(name))
    return a, dep.peers()[a.pub_b64]["id"]


def route_body(**over):
    b = {"description": "office", "network_id": "office-net", "enabled": True, "network": "10.20.0.0/16",
         "metric": 9999, "masquerade": True, "groups": [], "keep_route": False}
    b.update(over)
    return b


def events(dep, target):
    return dep.sql("SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
                   (dep.account_id, target))


@test
def route_crud_with_a_peer():
    dep, srv, api = apifix.start()
    _, pid = add_peer(dep, "router-1")
    gall = all_group(api)
    serial0 = dep.network_serial()

    r = api.ok("POST", "/api/routes", route_body(peer=pid, network="10.20.30.40/16", groups=[gall]))
    assert r["network"] == "10.20.0.0/16" and r["network_type"] == "IPv4", r
    assert r["peer"] == pid and "peer_groups" not in r and "access_control_groups" not in r, r
    assert r["domains"] is None and r["skip_auto_apply"] is False and r["keep_route"] is False, r
    assert (r["network_id"], r["description"], r["metric"], r["masquerade"], r["enabled"], r["groups"]) == \
        ("office-net", "office", 9999, True, True, [gall]), r
    assert dep.network_serial() == serial0 + 1
    row = dep.sql("SELECT net_id, peer, network::text, network_type, masquerade FROM routes WHERE id = %s",
                  (r["id"],))
    assert row == [("office-net", pid, "10.20.0.0/16", 1, True)], row

    assert api.ok("GET", "/api/routes/" + r["id"]) == r
    assert api.ok("GET", "/api/routes") == [r]

    g = api.ok("POST", "/api/groups", {"name": "routers", "peers": [pid]})
    acl = api.ok("POST", "/api/groups", {"name": "acl"})
    u = api.ok("PUT", "/api/routes/" + r["id"],
               route_body(peer_groups=[g["id"]], groups=[gall], access_control_groups=[acl["id"]], metric=10,
                          masquerade=False, keep_route=True, skip_auto_apply=True, description=""))
    assert u["id"] == r["id"] and u["peer"] == "" and u["peer_groups"] == [g["id"]], u
    assert u["access_control_groups"] == [acl["id"]] and u["metric"] == 10 and u["keep_route"] is True, u
    assert u["skip_auto_apply"] is True and u["masquerade"] is False and u["description"] == "", u
    assert api.ok("GET", "/api/routes/" + r["id"]) == u
    assert dep.sql("SELECT peer FROM routes WHERE id = %s", (r["id"],)) == [(None,)]

    assert api.ok("DELETE", "/api/routes/" + r["id"]) == {}
    api.error("GET", "/api/routes/" + r["id"], 404, message="route: %s not found" % r["id"])
    api.error("PUT", "/api/routes/" + r["id"], 404, route_body(peer=pid, groups=[gall]),
              message="route: %s not found" % r["id"])
    api.error("DELETE", "/api/routes/" + r["id"], 404,
              message="failed to delete route %s: route: %s not found" % (r["id"], r["id"]))
    assert api.ok("GET", "/api/routes") == []

    ev = events(dep, r["id"])
    assert [e[0] for e in ev] == [27, 29, 28], ev
    assert ev[0][1] == {"name": "office-net", "network_range": "10.20.0.0/16", "domains": "", "peer_id": pid,
                        "peer_groups": None}, ev[0][1]
    assert ev[1][1] == {"name": "office-net", "network_range": "10.20.0.0/16", "domains": "", "peer_id": "",
                        "peer_groups": [g["id"]]}, ev[1][1]
    assert ev[2][1] == ev[1][1], ev
    # create, two groups, update, delete: five serial bumps
    assert dep.network_serial() == serial0 + 5


@test
def domain_and_ipv6_routes():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    _, pid = add_peer(dep, "router-1")
    body = route_body(peer=pid, groups=[gall], network=None, network_id="svc",
                      domains=["Example.COM", "münchen.de", "*.svc.internal", "xn--bcher-kva.example"])
    del body["network"]
    r = api.ok("POST", "/api/routes", body)
    assert r["network_type"] == "Domain" and r["network"] == "192.0.2.0/32", r
    assert r["domains"] == ["example.com", "münchen.de", "*.svc.internal", "bücher.example"], r
    stored = dep.sql("SELECT domains, network FROM routes WHERE id = %s", (r["id"],))
    assert stored == [(["example.com", "xn--mnchen-3ya.de", "*.svc.internal", "xn--bcher-kva.example"], None)], \
        stored
    meta = events(dep, r["id"])[0][1]
    assert meta["domains"] == "example.com, münchen.de, *.svc.internal, bücher.example", meta
    assert meta["network_range"] == "192.0.2.0/32", meta

    # The same domains on the same peer again is a duplicate.
    api.error("POST", "/api/routes", 409, dict(body, network_id="other"),
              message="failed to add route with domains [example.com, münchen.de, *.svc.internal, "
                      "bücher.example] - peer %s already has this route" % pid)

    v6 = api.ok("POST", "/api/routes", route_body(peer=pid, groups=[gall], network="2001:DB8:0:0:0::1/64"))
    assert v6["network"] == "2001:db8::/64" and v6["network_type"] == "IPv6", v6
    mapped = api.ok("POST", "/api/routes", route_body(peer=pid, groups=[gall], network="::ffff:10.1.2.3/120"))
    assert mapped["network"] == "::ffff:10.1.2.0/120" and mapped["network_type"] == "IPv6", mapped
    # A route switches from domains to a network and back.
    n = api.ok("PUT", "/api/routes/" + r["id"], route_body(peer=pid, groups=[gall], network="192.168.7.0/24"))
    assert n["network_type"] == "IPv4" and n["domains"] is None, n
    assert dep.sql("SELECT domains FROM routes WHERE id = %s", (r["id"],)) == [([],)]


@test
def route_validation():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    _, pid = add_peer(dep, "router-1")
    serial0 = dep.network_serial()
    ok = route_body(peer=pid, groups=[gall])

    def without(*keys, **over):
        b = dict(ok, **over)
        for k in keys:
            b.pop(k, None)
        return b

    api.error("POST", "/api/routes", 400, raw="{bad", message="couldn't parse JSON request")
    api.error("POST", "/api/routes", 400, raw="[]", message="couldn't parse JSON request")
    api.error("POST", "/api/routes", 400, dict(ok, metric="1"), message="couldn't parse JSON request")
    api.error("POST", "/api/routes", 400, dict(ok, groups="x"), message="couldn't parse JSON request")
    api.error("POST", "/api/routes", 400, dict(ok, enabled="yes"), message="couldn't parse JSON request")
    cases = [
        (dict(ok, domains=["a.com"]), "only one of 'network' or 'domains' should be provided"),
        (without("network"), "either 'network' or 'domains' should be provided"),
        (without("peer"), "either 'peer' or 'peer_groups' should be provided"),
        (dict(ok, peer_groups=[gall]), "only one of 'peer' or 'peer_groups' should be provided"),
        (without("network_id"), "identifier should be between 1 and 40 characters"),
        (dict(ok, network_id="x" * 41), "identifier should be between 1 and 40 characters"),
        (dict(ok, network="10.0.0.0"), "invalid network 10.0.0.0"),
        (dict(ok, network="10.0.0.0/33"), "invalid network 10.0.0.0/33"),
        (dict(ok, network="010.0.0.0/8"), "invalid network 010.0.0.0/8"),
        (dict(ok, network="10.0.0.0/08"), "invalid network 10.0.0.0/08"),
        (dict(ok, network="fe80::1%eth0/64"), "invalid network fe80::1%eth0/64"),
        (dict(ok, network="Office/24"), "invalid network office/24"),
        (without("network", domains=[]), "invalid domains: domains list is empty"),
        (without("network", domains=["d%d.com" % i for i in range(33)]),
         "invalid domains: domains list exceeds maximum allowed domains: 32"),
        (without("network", domains=["ok.com", "-bad.com"]), "invalid domains: invalid domain format: -bad.com"),
        (without("network", domains=["bad..com"]), "invalid domains: invalid domain format: bad..com"),
        (without("network", domains=["x" * 64 + ".com"]),
         "invalid domains: invalid domain format: " + "x" * 64 + ".com"),
        (without("network", domains=["xn---abc.com"]),
         'invalid domains: convert domain to punycode: xn---abc.com: idna: invalid label "-abc"'),
        (without("metric"), "metric should be between 1 and 9999"),
        (dict(ok, metric=10000), "metric should be between 1 and 9999"),
        (without("groups"), "the list of group ids should not be empty"),
        (dict(ok, groups=[""]), "group id should not be empty string"),
        (dict(ok, groups=[gall, "NoSuch"]), "group id nosuch not found"),
        (without("peer", peer_groups=["nope"]), "group id nope not found"),
        (dict(ok, access_control_groups=["acl-missing"]), "group id acl-missing not found"),
        (dict(ok, peer="no-such-peer"), "peer with id no-such-peer not found"),
    ]
    for body, msg in cases:
        b = api.error("POST", "/api/routes", 422, body, message=msg)
        assert b["message"] == msg, (body, b)
    # The same checks on PUT, after the route is found.
    r = api.ok("POST", "/api/routes", ok)
    for body, msg in cases[:3]:
        api.error("PUT", "/api/routes/" + r["id"], 422, body, message=msg)
    api.error("PUT", "/api/routes/" + r["id"], 400, raw="nope", message="couldn't parse JSON request")
    # Nothing half-written: one route, one bump.
    assert len(api.ok("GET", "/api/routes")) == 1
    assert dep.network_serial() == serial0 + 1
    assert [e[0] for e in events(dep, r["id"])] == [27]


@test
def duplicate_routes_for_the_same_peers():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    _, p1 = add_peer(dep, "router-1")
    _, p2 = add_peer(dep, "router-2")
    g1 = api.ok("POST", "/api/groups", {"name": "Edge", "peers": [p1]})
    g2 = api.ok("POST", "/api/groups", {"name": "both", "peers": [p1, p2]})
    p1_name = dep.sql("SELECT name FROM peers WHERE id = %s", (p1,))[0][0]

    single = api.ok("POST", "/api/routes", route_body(peer=p1, groups=[gall]))
    # The same peer and network again (NetBird's intent; see docs/api.md).
    api.error("POST", "/api/routes", 409, route_body(peer=p1, groups=[gall], network="10.20.5.5/16"),
              message="failed to add route with prefix 10.20.0.0/16 - peer %s already has this route" % p1)
    # Another peer for the same network is an HA route: fine.
    api.ok("POST", "/api/routes", route_body(peer=p2, groups=[gall]))
    # A group holding a peer that already routes it.
    api.error("POST", "/api/routes", 409, route_body(peer_groups=[g1["id"]], groups=[gall]),
              message="failed to add route with prefix 10.20.0.0/16 - peer %s from the group edge already has "
                      "this route" % p1_name.lower())
    # A group that already routes it.
    api.ok("POST", "/api/routes", route_body(peer_groups=[g2["id"]], groups=[gall], network="10.30.0.0/16"))
    api.error("POST", "/api/routes", 409, route_body(peer_groups=[g2["id"]], groups=[gall], network="10.30.0.0/16"),
              message="failed to add route with prefix 10.30.0.0/16 - peer group both already has this route")
    # A peer inside a group that routes it.
    api.error("POST", "/api/routes", 409, route_body(peer=p2, groups=[gall], network="10.30.0.0/16"),
              message="failed to add route with prefix 10.30.0.0/16 - peer %s already has this route" % p2)
    # Updating a route does not collide with itself.
    api.ok("PUT", "/api/routes/" + single["id"], route_body(peer=p1, groups=[gall], metric=5))
    # A different network is no duplicate.
    api.ok("POST", "/api/routes", route_body(peer=p1, groups=[gall], network="10.21.0.0/16"))


@test
def route_permissions():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    _, pid = add_peer(dep, "router-1")
    r = api.ok("POST", "/api/routes", route_body(peer=pid, groups=[gall]))
    _, auditor = apifix.role_api(dep, api, "auditor")
    _, netadmin = apifix.role_api(dep, api, "network_admin")
    _, user = apifix.role_api(dep, api, "user")
    _, svc_user = apifix.role_api(dep, api, "user", service=True)
    assert auditor.ok("GET", "/api/routes") == [r]
    assert svc_user.ok("GET", "/api/routes/" + r["id"]) == r
    auditor.error("POST", "/api/routes", 403, route_body(peer=pid, groups=[gall], network="10.9.0.0/16"),
                  message="permission denied")
    auditor.error("DELETE", "/api/routes/" + r["id"], 403, message="permission denied")
    user.error("GET", "/api/routes", 403, message="permission denied")
    user.error("PUT", "/api/routes/" + r["id"], 403, route_body(peer=pid, groups=[gall]))
    n = netadmin.ok("POST", "/api/routes", route_body(peer=pid, groups=[gall], network="10.9.0.0/16"))
    assert netadmin.ok("DELETE", "/api/routes/" + n["id"]) == {}
    apifix.Api(srv.url("")).error("GET", "/api/routes", 401, message="no valid authentication provided")


@test
def route_reaches_the_network_map():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    router, rid = add_peer(dep, "router-1")
    client, _ = add_peer(dep, "client-1")
    stream = client.sync()
    first = stream.next(timeout=15)
    assert not [x for x in first.NetworkMap.Routes if x.Network == "10.50.0.0/16"], nbagent._short(first)

    r = api.ok("POST", "/api/routes", route_body(peer=rid, groups=[gall], network="10.50.1.0/16", metric=42,
                                                  network_id="lab"))

    def has(net):
        return lambda m: any(x.Network == net for x in m.NetworkMap.Routes)

    m = stream.wait_for(has("10.50.0.0/16"), timeout=15)
    got = [x for x in m.NetworkMap.Routes if x.Network == "10.50.0.0/16"][0]
    assert (got.ID, got.NetID, got.Peer, got.Metric, got.Masquerade, got.NetworkType) == \
        (r["id"], "lab", router.pub_b64, 42, True, 1), nbagent._short(m)
    assert got.skipAutoApply is False

    # An exit node that agents must not pick up by themselves.
    e = api.ok("POST", "/api/routes", route_body(peer=rid, groups=[gall], network="0.0.0.0/0", network_id="exit",
                                                  skip_auto_apply=True))
    assert e["skip_auto_apply"] is True and e["network"] == "0.0.0.0/0", e
    m = stream.wait_for(has("0.0.0.0/0"), timeout=15)
    got = [x for x in m.NetworkMap.Routes if x.Network == "0.0.0.0/0"][0]
    assert got.skipAutoApply is True and got.NetID == "exit" and got.ID == e["id"], nbagent._short(m)

    # Deleting it takes it out of the next map.
    api.ok("DELETE", "/api/routes/" + e["id"])
    stream.wait_for(lambda m: not has("0.0.0.0/0")(m), timeout=15)


if __name__ == "__main__":
    apifix.run_tests()
