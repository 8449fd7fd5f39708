"""/api/networks with their resources and routers against the real server:
CRUD, NetBird's validation, texts and status codes (its networks,
resources and routers managers and handlers), the Network JSON's computed
fields, resources in groups, policies naming resources, the group and
peer deletions networks refuse, events with their meta, permissions
(module networks), other accounts' objects, the serial, and a network
built through REST on one replica reaching an agent on another."""

import secrets

import apifix
from apifix import all_group, svc
from fixture import Deployment
from nbagent import build_meta

test = svc.test

check_schema = apifix.check_schema


def res_body(groups, **over):
    b = {"name": "web", "description": "the web server", "address": "10.20.0.5", "enabled": True, "groups": groups}
    b.update(over)
    return b


def router_body(**over):
    b = {"metric": 100, "masquerade": True, "enabled": True}
    b.update(over)
    return b


def events(dep, target):
    return dep.sql("SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
                   (dep.account_id, target))


def count(dep, table):
    return dep.sql("SELECT count(*) FROM %s WHERE account_id = %%s" % table, (dep.account_id,))[0][0]


@test
def network_crud():
    dep, srv, api = apifix.start()
    serial0 = dep.network_serial()
    n = api.ok("POST", "/api/networks", {"name": "office", "description": "the office LAN"})
    check_schema(n, "Network")
    assert n == {"id": n["id"], "name": "office", "description": "the office LAN", "routers": [], "resources": [],
                 "policies": [], "routing_peers_count": 0}, n
    # An empty network changes no map (NetBird does not bump either).
    assert dep.network_serial() == serial0
    assert api.ok("GET", "/api/networks/" + n["id"]) == n
    assert api.ok("GET", "/api/networks") == [n]
    n2 = api.ok("POST", "/api/networks", {"name": "lab"})
    assert n2["description"] == "", n2
    u = api.ok("PUT", "/api/networks/" + n["id"], {"name": "HQ"})
    check_schema(u, "Network")
    assert (u["name"], u["description"]) == ("HQ", ""), u
    assert dep.network_serial() == serial0
    nid = n["id"]
    assert api.ok("DELETE", "/api/networks/" + nid) == {}
    assert dep.network_serial() == serial0 + 1
    api.error("GET", "/api/networks/" + nid, 404, message="network: %s not found" % nid)
    api.error("PUT", "/api/networks/" + nid, 404, {"name": "x"},
              message="failed to get network: network: %s not found" % nid)
    api.error("DELETE", "/api/networks/" + nid, 404, message="network: %s not found" % nid)
    assert [x["id"] for x in api.ok("GET", "/api/networks")] == [n2["id"]]
    api.error("POST", "/api/networks", 400, {"name": 5}, message="couldn't parse JSON request")
    api.error("POST", "/api/networks", 400, raw=b"{", message="couldn't parse JSON request")
    ev = events(dep, nid)
    assert [e[0] for e in ev] == [73, 74, 75], ev
    assert [e[1] for e in ev] == [{"name": "office"}, {"name": "HQ"}, {"name": "HQ"}], ev


@test
def resource_crud_groups_and_events():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    devs = api.ok("POST", "/api/groups", {"name": "devs"})["id"]
    web = api.ok("POST", "/api/groups", {"name": "web"})["id"]
    n = api.ok("POST", "/api/networks", {"name": "office"})
    rp = "/api/networks/%s/resources" % n["id"]
    serial0 = dep.network_serial()

    r = api.ok("POST", rp, res_body([web]))
    check_schema(r, "NetworkResource")
    assert dep.network_serial() == serial0 + 1
    assert (r["name"], r["type"], r["address"], r["enabled"], r["description"]) == \
        ("web", "host", "10.20.0.5/32", True, "the web server"), r
    assert [(g["id"], g["name"], g["resources_count"], g["peers_count"]) for g in r["groups"]] == \
        [(web, "web", 1, 0)], r
    assert api.ok("GET", rp + "/" + r["id"]) == r
    assert api.ok("GET", rp) == [r]
    assert api.ok("GET", "/api/networks/resources") == [r]

    # Address forms: NetBird's GetResourceType.
    for addr, typ, shown in (("10.1.0.0/16", "subnet", "10.1.0.0/16"), ("10.1.2.3/32", "host", "10.1.2.3/32"),
                             ("2001:db8::1", "host", "2001:db8::1/128"), ("2001:db8::/32", "subnet", "2001:db8::/32"),
                             ("docs.example.com", "domain", "docs.example.com"),
                             ("*.example.com", "domain", "*.example.com")):
        x = api.ok("POST", rp, res_body([], name="r-" + addr, address=addr))
        check_schema(x, "NetworkResource")
        assert (x["type"], x["address"], x["groups"]) == (typ, shown, []), x
    for bad in ("", "10.0.0.0/33", "not a domain!", "10.0.0.1/024", "-x.example.com"):
        api.error("POST", rp, 422, res_body([], name="bad", address=bad),
                  message="not a valid host, subnet, or domain")
    api.error("POST", rp, 422, res_body([]), message="resource with name web already exists")
    api.error("POST", rp, 404, res_body(["nope"], name="g"), message="group: nope not found")
    api.error("POST", "/api/networks/nonet/resources", 404, res_body([], name="n"),
              message="failed to get network: network: nonet not found")
    api.error("POST", rp, 400, res_body([1], name="x"), message="couldn't parse JSON request")
    api.error("POST", rp, 400, res_body([], name="x", enabled="yes"), message="couldn't parse JSON request")
    assert api.ok("GET", "/api/networks/nonet/resources") == []

    g = api.ok("GET", "/api/groups/" + web)
    check_schema(g, "Group")
    assert g["resources"] == [{"id": r["id"], "type": "host"}] and g["resources_count"] == 1, g

    # Update: new address (subnet), groups web -> devs + All.
    serial1 = dep.network_serial()
    u = api.ok("PUT", rp + "/" + r["id"], res_body([devs, gall], name="web2", address="10.20.0.0/24",
                                                   enabled=False))
    check_schema(u, "NetworkResource")
    assert (u["name"], u["type"], u["address"], u["enabled"]) == ("web2", "subnet", "10.20.0.0/24", False), u
    assert sorted(x["id"] for x in u["groups"]) == sorted([devs, gall]), u
    assert dep.network_serial() == serial1 + 1
    assert api.ok("GET", "/api/groups/" + web)["resources"] == []
    assert api.ok("GET", "/api/groups/" + devs)["resources"] == [{"id": r["id"], "type": "subnet"}]
    # The dashboard's toggle: the object back, groups as ids.
    back = api.ok("PUT", rp + "/" + r["id"], dict(u, groups=[x["id"] for x in u["groups"]], enabled=True))
    assert back == dict(u, enabled=True), back
    api.error("PUT", rp + "/" + r["id"], 422, res_body([], name="r-docs.example.com"),
              message="new resource name already exists")
    api.error("PUT", rp + "/nores", 404, res_body([], name="zz"), message="network resource: nores not found")

    # The resource in another network of the account is not this one's.
    n2 = api.ok("POST", "/api/networks", {"name": "other"})
    api.error("GET", "/api/networks/%s/resources/%s" % (n2["id"], r["id"]), 404)
    api.error("DELETE", "/api/networks/%s/resources/%s" % (n2["id"], r["id"]), 404)

    rid = r["id"]
    assert api.ok("DELETE", rp + "/" + rid) == {}
    assert dep.network_serial() == serial1 + 3
    api.error("GET", rp + "/" + rid, 404, message="network resource: %s not found" % rid)
    assert dep.sql("SELECT count(*) FROM group_resources WHERE resource_id = %s", (rid,))[0][0] == 0

    ev = events(dep, rid)
    meta = {"name": "web", "type": "host", "network_name": "office", "network_id": n["id"]}
    assert [e[0] for e in ev] == [76, 77, 77, 78], ev
    assert ev[0][1] == meta, ev
    assert ev[1][1] == dict(meta, name="web2", type="subnet") and ev[2][1] == ev[3][1] == ev[1][1], ev
    gev = events(dep, web)
    assert [e[0] for e in gev if e[0] in (82, 83)] == [82, 83], gev
    assert [e[1] for e in gev if e[0] == 82][0] == {"name": "web", "id": web, "resource_name": "web",
                                                    "resource_id": rid, "resource_type": "host"}, gev


@test
def router_crud_and_validation():
    dep, srv, api = apifix.start()
    p1 = apifix.sql_peer(dep)
    rgroup = api.ok("POST", "/api/groups", {"name": "routers", "peers": [p1]})["id"]
    n = api.ok("POST", "/api/networks", {"name": "office"})
    tp = "/api/networks/%s/routers" % n["id"]
    serial0 = dep.network_serial()

    r = api.ok("POST", tp, router_body(peer=p1))
    check_schema(r, "NetworkRouter")
    assert r == {"id": r["id"], "peer": p1, "peer_groups": [], "metric": 100, "masquerade": True,
                 "enabled": True}, r
    assert dep.network_serial() == serial0 + 1
    g = api.ok("POST", tp, router_body(peer_groups=[rgroup], metric=9999, masquerade=False))
    check_schema(g, "NetworkRouter")
    assert (g["peer"], g["peer_groups"], g["metric"], g["masquerade"]) == ("", [rgroup], 9999, False), g
    assert api.ok("GET", tp + "/" + r["id"]) == r
    assert api.ok("GET", tp) == sorted([r, g], key=lambda x: x["id"])
    assert sorted(x["id"] for x in api.ok("GET", "/api/networks/routers")) == sorted([r["id"], g["id"]])
    nn = api.ok("GET", "/api/networks/" + n["id"])
    assert nn["routers"] == sorted([r["id"], g["id"]]) and nn["routing_peers_count"] == 2, nn

    api.error("POST", tp, 400, router_body(peer=p1, peer_groups=[rgroup]),
              message="peer and peer_groups cannot be set at the same time")
    api.error("POST", tp, 400, router_body(), message="either peer or peer_groups must be provided")
    api.error("POST", tp, 400, router_body(peer_groups=[]), message="either peer or peer_groups must be provided")
    for m in (0, 10000, None):
        body = router_body(peer=p1)
        if m is None:
            del body["metric"]
        else:
            body["metric"] = m
        api.error("POST", tp, 422, body, message="metric must be between 1 and 9999")
    api.error("POST", tp, 422, router_body(peer="nopeer"), message="peer with id nopeer not found")
    api.error("POST", tp, 422, router_body(peer_groups=["nogroup"]), message="group nogroup not found")
    api.error("POST", tp, 400, router_body(peer=5), message="couldn't parse JSON request")
    api.error("POST", "/api/networks/nonet/routers", 404, router_body(peer=p1), message="network: nonet not found")
    assert api.ok("GET", "/api/networks/nonet/routers") == []

    serial1 = dep.network_serial()
    u = api.ok("PUT", tp + "/" + r["id"], router_body(peer_groups=[rgroup], metric=5, enabled=False))
    check_schema(u, "NetworkRouter")
    assert (u["peer"], u["peer_groups"], u["metric"], u["enabled"]) == ("", [rgroup], 5, False), u
    assert dep.network_serial() == serial1 + 1
    # The dashboard's toggle PUTs the object back with enabled flipped.
    back = api.ok("PUT", tp + "/" + g["id"], dict(g, enabled=False))
    assert back == dict(g, enabled=False), back
    api.error("PUT", tp + "/nort", 404, router_body(peer=p1), message="network router: nort not found")
    n2 = api.ok("POST", "/api/networks", {"name": "lab"})
    api.error("PUT", "/api/networks/%s/routers/%s" % (n2["id"], r["id"]), 400, router_body(peer=p1),
              message="router %s is not part of the network %s" % (r["id"], n2["id"]))
    assert api.ok("DELETE", tp + "/" + r["id"]) == {}
    assert dep.network_serial() == serial1 + 3
    api.error("DELETE", tp + "/" + r["id"], 404, message="network router: %s not found" % r["id"])
    ev = events(dep, r["id"])
    assert [e[0] for e in ev] == [79, 80, 81], ev  # (the toggle was on the other router)
    assert ev[0][1] == {"network_name": "office", "network_id": n["id"], "peer": p1, "peer_groups": []}, ev
    assert ev[1][1] == {"network_name": "office", "network_id": n["id"], "peer": "", "peer_groups": [rgroup]}, ev


@test
def network_delete_cascades_and_policies_field():
    dep, srv, api = apifix.start()
    p1 = apifix.sql_peer(dep)
    gall = all_group(api)
    res_g = api.ok("POST", "/api/groups", {"name": "res"})["id"]
    n = api.ok("POST", "/api/networks", {"name": "office"})
    r1 = api.ok("POST", "/api/networks/%s/resources" % n["id"], res_body([res_g]))
    r2 = api.ok("POST", "/api/networks/%s/resources" % n["id"], res_body([], name="docs", address="docs.example.com"))
    rt = api.ok("POST", "/api/networks/%s/routers" % n["id"], router_body(peer=p1))
    rule = {"name": "r", "enabled": True, "action": "accept", "bidirectional": False, "protocol": "tcp",
            "ports": ["443"], "sources": [gall], "destinations": [res_g]}
    pol1 = api.ok("POST", "/api/policies", {"name": "by-group", "enabled": True, "rules": [rule]})
    rule2 = dict(rule, destinations=None, destinationResource={"id": r2["id"], "type": "domain"})
    del rule2["destinations"]
    pol2 = api.ok("POST", "/api/policies", {"name": "by-resource", "enabled": True, "rules": [rule2]})
    check_schema(pol2, "Policy")
    assert pol2["rules"][0]["destinationResource"] == {"id": r2["id"], "type": "domain"}, pol2
    api.ok("POST", "/api/policies", {"name": "unrelated", "enabled": True, "rules": [dict(rule, destinations=[gall])]})
    api.ok("POST", "/api/policies", {"name": "off", "enabled": False, "rules": [rule]})
    # A wrong type or a resource the account does not have is refused.
    api.error("POST", "/api/policies", 422, {"name": "x", "rules": [dict(rule2, destinationResource={
        "id": r2["id"], "type": "host"})]}, message="network resource: %s not found" % r2["id"])

    nn = api.ok("GET", "/api/networks/" + n["id"])
    check_schema(nn, "Network")
    assert sorted(nn["policies"]) == sorted([pol1["id"], pol2["id"]]), nn
    assert nn["resources"] == sorted([r1["id"], r2["id"]]) and nn["routers"] == [rt["id"]], nn
    assert nn["routing_peers_count"] == 1, nn
    g = api.ok("GET", "/api/groups/" + res_g)
    assert g["resources_count"] == 1, g
    assert [x for x in api.ok("GET", "/api/policies/" + pol1["id"])["rules"][0]["destinations"]][0][
        "resources_count"] == 1

    serial0 = dep.network_serial()
    assert api.ok("DELETE", "/api/networks/" + n["id"]) == {}
    assert dep.network_serial() == serial0 + 1
    for t in ("network_resources", "network_routers", "group_resources", "networks"):
        assert count(dep, t) == 0, t
    assert [e[0] for e in events(dep, r1["id"])][-1] == 78
    assert [e[0] for e in events(dep, rt["id"])][-1] == 81
    assert [e[0] for e in events(dep, res_g)][-1] == 83
    # The policies stay (NetBird leaves them); the group may go now.
    assert api.ok("GET", "/api/policies/" + pol2["id"])["rules"][0]["destinationResource"]["id"] == r2["id"]


@test
def group_and_peer_deletion_refused():
    dep, srv, api = apifix.start()
    p1, p2 = apifix.sql_peer(dep), apifix.sql_peer(dep)
    rg = api.ok("POST", "/api/groups", {"name": "routers", "peers": [p2]})["id"]
    resg = api.ok("POST", "/api/groups", {"name": "res"})["id"]
    n = api.ok("POST", "/api/networks", {"name": "office"})
    r = api.ok("POST", "/api/networks/%s/resources" % n["id"], res_body([resg]))
    rt1 = api.ok("POST", "/api/networks/%s/routers" % n["id"], router_body(peer=p1))
    rt2 = api.ok("POST", "/api/networks/%s/routers" % n["id"], router_body(peer_groups=[rg]))
    serial0 = dep.network_serial()
    api.error("DELETE", "/api/groups/" + resg, 400, message="group has been linked to network resource: " + r["id"])
    api.error("DELETE", "/api/groups/" + rg, 400, message="group has been linked to network router: " + rt2["id"])
    api.error("DELETE", "/api/peers/" + p1, 412, message="peer is linked to a network router: " + rt1["id"].lower())
    assert dep.network_serial() == serial0
    assert count(dep, "groups") >= 3 and dep.sql("SELECT count(*) FROM peers WHERE id = %s", (p1,))[0][0] == 1
    # p2 is a router only through its group: it may go.
    assert api.ok("DELETE", "/api/peers/" + p2) == {}

    # Group PUT with resources sets them (the dashboard sends them back);
    # absent, they are cleared, as in NetBird.
    gg = api.ok("GET", "/api/groups/" + resg)
    u = api.ok("PUT", "/api/groups/" + resg, {"name": "res", "peers": [], "resources": gg["resources"]})
    assert u["resources"] == [{"id": r["id"], "type": "host"}], u
    api.error("PUT", "/api/groups/" + resg, 422, {"name": "res", "resources": [{"id": "nores", "type": "host"}]},
              message="network resource: nores not found")
    api.error("PUT", "/api/groups/" + resg, 400, {"name": "res", "resources": ["x"]},
              message="couldn't parse JSON request")
    assert api.ok("PUT", "/api/groups/" + resg, {"name": "res"})["resources"] == []
    assert api.ok("DELETE", "/api/groups/" + resg) == {}
    c = api.ok("POST", "/api/groups", {"name": "new", "resources": [{"id": r["id"], "type": "host"}]})
    check_schema(c, "Group")
    assert c["resources"] == [{"id": r["id"], "type": "host"}] and c["resources_count"] == 1, c
    assert [x["id"] for x in api.ok("GET", "/api/networks/%s/resources/%s" % (n["id"], r["id"]))["groups"]] == \
        [c["id"]]
    # The peers' GroupMinimum counts the resources too.
    api.ok("PUT", "/api/groups/" + c["id"], {"name": "new", "peers": [p1], "resources": c["resources"]})
    pg = [g for g in api.ok("GET", "/api/peers/" + p1)["groups"] if g["id"] == c["id"]]
    assert pg and pg[0]["resources_count"] == 1 and pg[0]["peers_count"] == 1, pg
    lp = [x for x in api.ok("GET", "/api/peers") if x["id"] == p1][0]
    pg = [g for g in lp["groups"] if g["id"] == c["id"]]
    assert pg and pg[0]["resources_count"] == 1, pg


@test
def permissions_and_other_accounts():
    dep, srv, api = apifix.start()
    p1 = apifix.sql_peer(dep)
    n = api.ok("POST", "/api/networks", {"name": "office"})
    np = "/api/networks/" + n["id"]
    r = api.ok("POST", np + "/resources", res_body([]))
    rt = api.ok("POST", np + "/routers", router_body(peer=p1))
    rp, tp = np + "/resources/" + r["id"], np + "/routers/" + rt["id"]
    roles = {x: apifix.role_api(dep, api, x)[1] for x in ("admin", "auditor", "network_admin", "user")}
    for x in ("admin", "auditor", "network_admin"):
        for path in ("/api/networks", np, np + "/resources", rp, np + "/routers", tp, "/api/networks/routers",
                     "/api/networks/resources"):
            assert roles[x].ok("GET", path), (x, path)
    for path in ("/api/networks", np, rp, tp, "/api/networks/routers", "/api/networks/resources"):
        roles["user"].error("GET", path, 403, message="permission denied")
    for x in ("auditor", "user"):
        roles[x].error("POST", "/api/networks", 403, {"name": "x"}, message="permission denied")
        roles[x].error("PUT", np, 403, {"name": "x"}, message="permission denied")
        roles[x].error("DELETE", rp, 403, message="permission denied")
        roles[x].error("POST", np + "/routers", 403, router_body(peer=p1), message="permission denied")
    na = roles["network_admin"].ok("POST", "/api/networks", {"name": "na"})
    assert roles["network_admin"].ok("DELETE", "/api/networks/" + na["id"]) == {}
    perms = roles["network_admin"].ok("GET", "/api/users/current")["permissions"]["modules"]
    assert perms["networks"] == {"read": True, "create": True, "update": True, "delete": True}, perms
    apifix.Api(srv.url("")).error("GET", "/api/networks", 401)

    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    before = [dep.sql("SELECT * FROM %s ORDER BY id" % t) for t in ("networks", "network_resources",
                                                                    "network_routers")]
    assert oapi.ok("GET", "/api/networks") == []
    assert oapi.ok("GET", "/api/networks/routers") == [] and oapi.ok("GET", "/api/networks/resources") == []
    oapi.error("GET", np, 404, message="network: %s not found" % n["id"])
    oapi.error("PUT", np, 404, {"name": "x"})
    oapi.error("DELETE", np, 404)
    assert oapi.ok("GET", np + "/resources") == [] and oapi.ok("GET", np + "/routers") == []
    oapi.error("GET", rp, 404)
    oapi.error("PUT", rp, 404, res_body([], name="zz"))
    oapi.error("DELETE", rp, 404)
    oapi.error("POST", np + "/resources", 404, res_body([], name="zz"))
    oapi.error("GET", tp, 404)
    oapi.error("PUT", tp, 404, router_body(peer=p1))
    oapi.error("DELETE", tp, 404)
    # Their own network cannot take our peer, group or resource.
    on = oapi.ok("POST", "/api/networks", {"name": "theirs"})
    oapi.error("POST", "/api/networks/%s/routers" % on["id"], 422, router_body(peer=p1), message="not found")
    oapi.error("POST", "/api/groups", 422, {"name": "g", "resources": [{"id": r["id"], "type": "host"}]},
               message="not found")
    ogall = all_group(oapi)
    orule = {"name": "r", "enabled": True, "action": "accept", "protocol": "all", "sources": [ogall],
             "destinationResource": {"id": r["id"], "type": "host"}}
    oapi.error("POST", "/api/policies", 422, {"name": "p", "rules": [orule]}, message="not found")
    oapi.ok("DELETE", "/api/networks/" + on["id"])
    after = [dep.sql("SELECT * FROM %s ORDER BY id" % t) for t in ("networks", "network_resources",
                                                                   "network_routers")]
    assert after == before


@test
def network_reaches_an_agent_on_another_replica():
    """Agents hold their streams on replica 2; the network, resource,
    router and policy are made through replica 1 and arrive as routes."""
    svc.needs_redis()
    dep = Deployment()
    prefix = "netrest-" + secrets.token_hex(6)
    srvs = []
    for _ in range(2):
        s = dep.start("--serial-check-interval", "0s", "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix)
        s.wait_log(lambda o: o.get("msg") == "bus subscribed")
        srvs.append(s)
    api = apifix.api_for(srvs[0], dep.admin_token)
    src = dep.agent(srvs[1])
    src.register(dep.setup_key, meta=build_meta("client"))
    rtr = dep.agent(srvs[1])
    rtr.register(dep.setup_key, meta=build_meta("router"))
    peers = dep.peers()
    src_id, rtr_id = peers[src.pub_b64]["id"], peers[rtr.pub_b64]["id"]
    streams = {a: a.sync() for a in (src, rtr)}
    for st in streams.values():
        st.next(timeout=15)

    devs = api.ok("POST", "/api/groups", {"name": "devs", "peers": [src_id]})["id"]
    n = api.ok("POST", "/api/networks", {"name": "office"})
    r = api.ok("POST", "/api/networks/%s/resources" % n["id"], res_body([]))
    api.ok("POST", "/api/networks/%s/routers" % n["id"], router_body(peer=rtr_id, metric=50))
    rule = {"name": "r", "enabled": True, "action": "accept", "bidirectional": False, "protocol": "tcp",
            "ports": ["443"], "sources": [devs], "destinationResource": {"id": r["id"], "type": "host"}}
    api.ok("POST", "/api/policies", {"name": "web", "enabled": True, "rules": [rule]})

    rid = "%s:%s" % (r["id"], rtr_id)

    def has_route(m):
        return any(x.ID == rid for x in m.NetworkMap.Routes)

    m = streams[src].wait_for(has_route, timeout=15)
    route = [x for x in m.NetworkMap.Routes if x.ID == rid][0]
    assert (route.Network, route.Peer, route.Metric, route.Masquerade, route.NetID) == \
        ("10.20.0.5/32", rtr.pub_b64, 50, True, "web"), route
    m = streams[rtr].wait_for(lambda m: any(x.RouteID == rid for x in m.NetworkMap.routesFirewallRules), timeout=15)

    # Deleting the network through REST takes the route away.
    api.ok("DELETE", "/api/networks/" + n["id"])
    streams[src].wait_for(lambda m: not has_route(m), timeout=15)


if __name__ == "__main__":
    apifix.run_tests()
