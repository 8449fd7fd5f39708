"""/api/policies against the real server: CRUD, rules replaced on update
(ids kept), what is stored for the network map (ports, canonical port
ranges), every validation error with nothing half-written, events, serial
bumps only for real changes, permissions, and a policy made over the API
reaching an agent's network map."""

import apifix
from apifix import svc
from nbagent import build_meta, pb

test = svc.test

POLICY_FIELDS = {"id", "name", "description", "enabled", "source_posture_checks", "rules"}


def rule(src, dst, **kw):
    r = {"name": "r", "enabled": True, "action": "accept", "bidirectional": False, "protocol": "tcp",
         "sources": src, "destinations": dst}
    r.update(kw)
    return r


def policy(*rules, **kw):
    p = {"name": "p", "enabled": True, "rules": list(rules)}
    p.update(kw)
    return p


def events(dep, target):
    return [(r[0], r[1]) for r in dep.sql(
        "SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
        (dep.account_id, target))]


def counts(dep):
    """(policies, rules, events) of the account."""
    q = "SELECT (SELECT count(*) FROM policies WHERE account_id = %s), (SELECT count(*) FROM policy_rules" \
        " WHERE account_id = %s), (SELECT count(*) FROM events WHERE account_id = %s)"
    return dep.sql(q, (dep.account_id,) * 3)[0]


def stored_rules(dep, policy_id):
    """What the network map reads (store-snapshot.c's rule query), per rule id."""
    rows = dep.sql(
        "SELECT id, protocol, array_to_json(sources)::text, array_to_json(destinations)::text,"
        " array_to_json(ports)::text, COALESCE((SELECT json_agg(json_build_array(lower(r), upper(r) - 1))"
        " FROM unnest(port_ranges) r WHERE NOT isempty(r)), '[]')::text, port_ranges::text,"
        " source_resource_id, source_resource_type, authorized_groups"
        " FROM policy_rules WHERE account_id = %s AND policy_id = %s ORDER BY id", (dep.account_id, policy_id))
    return {r[0]: r[1:] for r in rows}


def gmin(g, peers=0):
    return {"id": g["id"], "name": g["name"], "peers_count": peers, "resources_count": 0}


@test
def policy_crud():
    dep, srv, api = apifix.start()
    listed = api.ok("GET", "/api/policies")
    assert [p["name"] for p in listed] == ["Default"], listed
    d = listed[0]
    all_g = api.ok("GET", "/api/groups")[0]
    assert d["rules"][0]["sources"] == [gmin(all_g)] and d["rules"][0]["protocol"] == "all", d
    assert "ports" not in d["rules"][0] and "port_ranges" not in d["rules"][0], d
    ga = api.ok("POST", "/api/groups", {"name": "ga"})
    gb = api.ok("POST", "/api/groups", {"name": "gb"})
    serial0 = dep.network_serial()

    p = api.ok("POST", "/api/policies", policy(
        rule([ga["id"]], [gb["id"]], name="ssh", description="ssh in", ports=["22", "80"]),
        name="ops", description="ops access"))
    assert set(p) == POLICY_FIELDS, sorted(p)
    assert (p["name"], p["description"], p["enabled"], p["source_posture_checks"]) == \
        ("ops", "ops access", True, []), p
    [r] = p["rules"]
    assert r == {"id": p["id"], "name": "ssh", "description": "ssh in", "enabled": True, "action": "accept",
                 "bidirectional": False, "protocol": "tcp", "ports": ["22", "80"],
                 "sources": [gmin(ga)], "destinations": [gmin(gb)]}, r
    assert dep.network_serial() == serial0 + 1
    assert stored_rules(dep, p["id"])[p["id"]][:5] == ("tcp", '["%s"]' % ga["id"], '["%s"]' % gb["id"],
                                                        "[22,80]", "[]")
    assert api.ok("GET", "/api/policies/" + p["id"]) == p
    assert [x["name"] for x in api.ok("GET", "/api/policies")] == ["Default", "ops"]

    # Update: same rule id, now a port range, udp, both ways, disabled policy.
    u = api.ok("PUT", "/api/policies/" + p["id"], policy(
        rule([gb["id"]], [ga["id"]], id=p["id"], name="dns", protocol="udp", bidirectional=True,
             port_ranges=[{"start": 8000, "end": 8080}, {"start": 53, "end": 53}]),
        name="ops2", enabled=False))
    [r] = u["rules"]
    assert (u["name"], u["enabled"], u["description"]) == ("ops2", False, ""), u
    assert r["id"] == p["id"] and r["protocol"] == "udp" and r["bidirectional"] is True, r
    assert r["port_ranges"] == [{"start": 8000, "end": 8080}, {"start": 53, "end": 53}] and "ports" not in r, r
    assert r["sources"] == [gmin(gb)] and r["destinations"] == [gmin(ga)], r
    st = stored_rules(dep, p["id"])[p["id"]]
    # Canonical int4range [start, end + 1); the snapshot reads back the inclusive pairs.
    assert st[3:6] == ("[]", "[[8000, 8080], [53, 53]]", '{"[8000,8081)","[53,54)"}'), st
    assert dep.network_serial() == serial0 + 2

    # The same update again: nothing to do, no event, no new serial.
    n = counts(dep)
    again = api.ok("PUT", "/api/policies/" + p["id"], policy(
        rule([gb["id"]], [ga["id"]], id=p["id"], name="dns", protocol="udp", bidirectional=True,
             port_ranges=[{"start": 53, "end": 53}, {"start": 8000, "end": 8080}]),
        name="ops2", enabled=False))
    assert again["name"] == "ops2" and counts(dep) == n and dep.network_serial() == serial0 + 2

    assert api.ok("DELETE", "/api/policies/" + p["id"]) == {}
    assert dep.network_serial() == serial0 + 3
    b = api.error("GET", "/api/policies/" + p["id"], 404)
    assert b["message"] == "policy: %s not found" % p["id"], b
    assert stored_rules(dep, p["id"]) == {}
    assert events(dep, p["id"]) == [(9, {"name": "ops"}), (10, {"name": "ops2"}), (11, {"name": "ops2"})]
    api.error("PUT", "/api/policies/" + p["id"], 404, policy(rule([ga["id"]], [gb["id"]])))
    api.error("DELETE", "/api/policies/" + p["id"], 404, message="not found")


@test
def rules_are_replaced_and_keep_their_ids():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "g"})["id"]
    # Ids sent on create are ignored: the first rule takes the policy's id.
    p = api.ok("POST", "/api/policies", policy(rule([g], [g], id="mine", name="one"),
                                               rule([g], [g], name="two", protocol="icmp")))
    ids = sorted(r["id"] for r in p["rules"])
    assert p["id"] in ids and "mine" not in ids and len(set(ids)) == 2, p
    assert [r["id"] for r in p["rules"]] == ids, "rules are listed in id order"
    other = [i for i in ids if i != p["id"]][0]
    # Keep "two" (renamed), drop "one", add a new rule: it gets the free policy id.
    u = api.ok("PUT", "/api/policies/" + p["id"], policy(rule([g], [g], id=other, name="two'"),
                                                         rule([g], [g], name="three", protocol="udp")))
    got = {r["id"]: r["name"] for r in u["rules"]}
    assert got == {other: "two'", p["id"]: "three"}, got
    assert set(stored_rules(dep, p["id"])) == {other, p["id"]}
    # A rule id that is not one of the policy's, or the same id twice: refused.
    d = api.ok("GET", "/api/policies")[0]
    assert d["name"] == "Default"
    b = api.error("PUT", "/api/policies/" + p["id"], 422, policy(rule([g], [g], id=d["rules"][0]["id"])))
    assert b["message"] == "invalid rule id: %s" % d["rules"][0]["id"].lower(), b
    api.error("PUT", "/api/policies/" + p["id"], 422, policy(rule([g], [g], id="Nope")),
              message="invalid rule id: nope")
    api.error("PUT", "/api/policies/" + p["id"], 422, policy(rule([g], [g], id=other), rule([g], [g], id=other)),
              message="invalid rule id: " + other)
    assert api.ok("GET", "/api/policies/" + p["id"]) == u
    # Two new rules when the policy id is taken by a kept rule: both get fresh ids.
    u2 = api.ok("PUT", "/api/policies/" + p["id"], policy(rule([g], [g], id=p["id"]), rule([g], [g]),
                                                          rule([g], [g])))
    assert len({r["id"] for r in u2["rules"]}) == 3 and p["id"] in {r["id"] for r in u2["rules"]}, u2


@test
def groups_resources_and_ssh():
    dep, srv, api = apifix.start()
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("res-peer"))
    pid = dep.peers()[a.pub_b64]["id"]
    ga = api.ok("POST", "/api/groups", {"name": "ga", "peers": [pid]})
    gb = api.ok("POST", "/api/groups", {"name": "gb"})
    # Unknown group ids are refused (NetBird would drop them silently),
    # and nothing is written; repeats stay.
    n_before = len(api.ok("GET", "/api/policies"))
    api.error("POST", "/api/policies", 422, policy(rule(["nope", ga["id"]], [gb["id"]])), message="group nope not found")
    api.error("POST", "/api/policies", 422, policy(rule([ga["id"]], [gb["id"], "gone"])), message="group gone not found")
    assert len(api.ok("GET", "/api/policies")) == n_before
    p = api.ok("POST", "/api/policies", policy(rule([ga["id"]], [gb["id"], gb["id"]])))
    r = p["rules"][0]
    assert r["sources"] == [gmin(ga, 1)] and r["destinations"] == [gmin(gb), gmin(gb)], r
    assert stored_rules(dep, p["id"])[p["id"]][1] == '["%s"]' % ga["id"]
    # A peer as the source (NetBird's resource type "peer"): stored for the map.
    p2 = api.ok("POST", "/api/policies", policy(rule(None, [gb["id"]], sourceResource={"id": pid, "type": "peer"},
                                                     protocol="all")))
    r2 = p2["rules"][0]
    assert r2["sourceResource"] == {"id": pid, "type": "peer"} and r2["sources"] == [], r2
    assert stored_rules(dep, p2["id"])[p2["id"]][6:8] == (pid, "peer")
    # netbird-ssh with authorized groups for every source group.
    p3 = api.ok("POST", "/api/policies", policy(rule([ga["id"]], [gb["id"]], protocol="netbird-ssh", ports=["22"],
                                                     authorized_groups={ga["id"]: ["root", "admin"]})))
    r3 = p3["rules"][0]
    assert r3["protocol"] == "netbird-ssh" and r3["authorized_groups"] == {ga["id"]: ["root", "admin"]}, r3
    assert stored_rules(dep, p3["id"])[p3["id"]][8] == {ga["id"]: ["root", "admin"]}
    # authorized_groups only count for netbird-ssh rules.
    p4 = api.ok("POST", "/api/policies", policy(rule([ga["id"]], [gb["id"]], authorized_groups={"x": ["y"]})))
    assert "authorized_groups" not in p4["rules"][0], p4
    # Ports given as "+22" / "022" are read as Go's Atoi reads them.
    p5 = api.ok("POST", "/api/policies", policy(rule([ga["id"]], [gb["id"]], ports=["+22", "0443"])))
    assert p5["rules"][0]["ports"] == ["22", "443"], p5


@test
def policy_validation():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "g"})["id"]
    existing = api.ok("POST", "/api/policies", policy(rule([g], [g]), name="keep"))
    n0, serial0 = counts(dep), dep.network_serial()
    good = rule([g], [g])

    def bad(status, body, message=None, raw=None):
        for method, path in (("POST", "/api/policies"), ("PUT", "/api/policies/" + existing["id"])):
            b = api.error(method, path, status, body, raw=raw)
            if message is not None:
                assert b["message"] == message, (method, body, b)

    j = "couldn't parse JSON request"
    bad(400, None, j, raw="{")
    bad(400, None, j, raw="[]")
    bad(400, {"name": 1, "rules": [good]}, j)
    bad(400, {"name": "x", "enabled": "yes", "rules": [good]}, j)
    bad(400, {"name": "x", "rules": good}, j)
    bad(400, {"name": "x", "rules": ["r"]}, j)
    bad(400, policy(rule([g], [g], ports=[22])), j)
    bad(400, policy(rule([g], [g], port_ranges=[{"start": "1", "end": 2}])), j)
    bad(400, policy(rule([g], [g], port_ranges=[80])), j)
    bad(400, policy(rule([g], [g], port_ranges=[{"start": 1.5, "end": 2}])), j)
    bad(400, policy(rule([g], "g")), j)
    bad(400, policy(rule([g], [g], sourceResource="peer")), j)
    bad(400, policy(rule([g], [g], sourceResource={"id": 1, "type": "peer"})), j)
    bad(400, policy(rule([g], [g], authorized_groups=["x"])), j)
    bad(400, policy(rule([g], [g], authorized_groups={"x": "root"})), j)
    bad(400, policy(rule([g], [g], enabled="true")), j)
    bad(400, policy(good, source_posture_checks="pc"), j)
    # A wrong type anywhere is reported before anything else.
    bad(400, {"name": "", "rules": [rule([g], [g], protocol=6)]}, j)

    bad(422, policy(good, name=""), "policy name shouldn't be empty")
    bad(422, {"rules": [good]}, "policy name shouldn't be empty")
    bad(422, policy(), "policy rules shouldn't be empty")
    bad(422, {"name": "x"}, "policy rules shouldn't be empty")
    peer_res = {"id": "p", "type": "peer"}
    bad(422, policy(rule([g], [g], sourceResource=peer_res)), "specify either sources or  source resources, not both")
    bad(422, policy(rule([g], [g], destinationResource=peer_res)),
        "specify either destinations or  destination resources, not both")
    both = "specify either sources or source resources and destinations or destination resources"
    bad(422, policy(rule(None, [g])), both)
    bad(422, policy(rule([g], None)), both)
    bad(422, policy(rule([g], [g], action="allow")), "unknown action type")
    bad(422, policy(rule([g], [g], action=None)), "unknown action type")
    bad(422, policy(rule([g], [g], protocol="TCP")), "unknown protocol type: tcp")
    bad(422, policy(rule([g], [g], protocol=None)), "unknown protocol type: ")
    bad(422, policy(rule([g], [g], ports=["22"], port_ranges=[{"start": 1, "end": 2}])),
        "specify either individual ports or port ranges, not both")
    for port in ("0", "65536", "-1", "ssh", "", "22 ", "1e3", "99999999999999999999"):
        bad(422, policy(rule([g], [g], ports=["80", port])), "valid port value is in 1..65535 range")
    for pr in ({"start": 0, "end": 10}, {"start": 10, "end": 65536}, {"end": 10}):
        bad(422, policy(rule([g], [g], port_ranges=[pr])), "valid port value is in 1..65535 range")
    bad(422, policy(rule([g], [g], port_ranges=[{"start": 90, "end": 80}])),
        "port range start 90 is greater than its end 80")
    bad(422, policy(rule([g], [g], protocol="netbird-ssh", authorized_groups={"other": ["root"]})),
        "authorized group for netbird-ssh protocol should be specified for each source group")
    for proto in ("all", "icmp"):
        bad(422, policy(rule([g], [g], protocol=proto, ports=["22"])), "for all or icmp protocol ports is not allowed")
        bad(422, policy(rule([g], [g], protocol=proto, port_ranges=[{"start": 1, "end": 2}])),
            "for all or icmp protocol ports is not allowed")
    # Ours: a resource the account does not have (tests/api/test_api_networks.py has real ones).
    for t in ("host", "subnet", "domain"):
        bad(422, policy(rule(None, [g], sourceResource={"id": "r1", "type": t})), "network resource: r1 not found")
        bad(422, policy(rule([g], None, destinationResource={"id": "r1", "type": t})),
            "network resource: r1 not found")
    bad(422, policy(rule(None, [g], sourceResource={"id": "r1", "type": "bogus"})), "invalid resource type: bogus")
    bad(422, policy(rule(None, [g], sourceResource={"id": "nope", "type": "peer"})), "peer nope not found")
    bad(422, policy(good, source_posture_checks=["pc1"]), "posture checks: pc1 not found")
    # One bad rule after a good one: nothing of the policy is written.
    bad(422, policy(good, rule([g], [g], ports=["0"])), "valid port value is in 1..65535 range")
    api.error("PUT", "/api/policies/nope", 404, policy(good), message="policy: nope not found")
    # NetBird looks the policy up before it reads the body.
    api.error("PUT", "/api/policies/nope", 404, raw="{", message="policy: nope not found")

    assert counts(dep) == n0 and dep.network_serial() == serial0
    assert api.ok("GET", "/api/policies/" + existing["id"]) == existing
    assert [p["name"] for p in api.ok("GET", "/api/policies")] == ["Default", "keep"]


@test
def policy_reaches_the_network_map():
    """Two peers, the Default policy removed: a tcp/22 policy from A's group
    to B's group made over the API shows up as firewall rules in A's next
    map (OUT to B) and B's (IN from A), with the rule's id."""
    dep, srv, api = apifix.start()
    a, b = dep.agent(), dep.agent()
    ra = a.register(dep.setup_key, meta=build_meta("peer-a"))
    rb = b.register(dep.setup_key, meta=build_meta("peer-b"))
    a_ip = ra.peerConfig.address.split("/")[0]
    b_ip = rb.peerConfig.address.split("/")[0]
    peers = dep.peers()
    default = api.ok("GET", "/api/policies")[0]
    api.ok("DELETE", "/api/policies/" + default["id"])
    ga = api.ok("POST", "/api/groups", {"name": "ga", "peers": [peers[a.pub_b64]["id"]]})
    gb = api.ok("POST", "/api/groups", {"name": "gb", "peers": [peers[b.pub_b64]["id"]]})
    sa, sb = a.sync(meta=build_meta("peer-a")), b.sync(meta=build_meta("peer-b"))
    first = sa.next(timeout=15)
    assert b.pub_b64 not in {p.wgPubKey for p in first.NetworkMap.remotePeers}, "no policy: B is not visible"
    assert len(first.NetworkMap.FirewallRules) == 0
    sb.next(timeout=15)

    p = api.ok("POST", "/api/policies", policy(rule([ga["id"]], [gb["id"]], name="ssh", ports=["22"]), name="ssh"))
    rid = p["rules"][0]["id"]

    def has_rule(m):
        return m.HasField("NetworkMap") and any(r.PolicyID.decode() == rid for r in m.NetworkMap.FirewallRules)

    ma = sa.wait_for(has_rule, timeout=15)
    assert b.pub_b64 in {x.wgPubKey for x in ma.NetworkMap.remotePeers}
    fa = [(r.PeerIP, r.Direction, r.Protocol, r.Action, r.Port) for r in ma.NetworkMap.FirewallRules]
    assert fa == [(b_ip, pb.OUT, pb.TCP, pb.ACCEPT, "22")], fa
    mb = sb.wait_for(has_rule, timeout=15)
    fb = [(r.PeerIP, r.Direction, r.Protocol, r.Port) for r in mb.NetworkMap.FirewallRules]
    assert fb == [(a_ip, pb.IN, pb.TCP, "22")], fb

    # A port range replaces the port in the next map.
    api.ok("PUT", "/api/policies/" + p["id"], policy(rule([ga["id"]], [gb["id"]], id=rid, name="ssh", protocol="udp",
                                                          port_ranges=[{"start": 6000, "end": 6010}]), name="ssh"))
    ma = sa.wait_for(lambda m: has_rule(m) and m.NetworkMap.FirewallRules[0].Protocol == pb.UDP, timeout=15)
    r = ma.NetworkMap.FirewallRules[0]
    assert (r.PortInfo.range.start, r.PortInfo.range.end, r.Direction) == (6000, 6010, pb.OUT), ma.NetworkMap
    # Deleting it takes B out of A's map again.
    api.ok("DELETE", "/api/policies/" + p["id"])
    sa.wait_for(lambda m: m.HasField("NetworkMap") and len(m.NetworkMap.FirewallRules) == 0 and
                b.pub_b64 not in {x.wgPubKey for x in m.NetworkMap.remotePeers}, timeout=15)


@test
def permissions():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "g"})["id"]
    p = api.ok("POST", "/api/policies", policy(rule([g], [g])))
    path = "/api/policies/" + p["id"]
    for role, can_read, can_write in (("admin", True, True), ("network_admin", True, True),
                                      ("auditor", True, False), ("user", False, False),
                                      ("billing_admin", False, False)):
        _, a = apifix.role_api(dep, api, role)
        for method, pth, body, allowed in (("GET", "/api/policies", None, can_read), ("GET", path, None, can_read),
                                           ("POST", "/api/policies", policy(rule([g], [g])), can_write),
                                           ("PUT", path, policy(rule([g], [g]), name=role), can_write)):
            st, resp, _ = a.call(method, pth, body=body)
            if allowed:
                assert st == 200, (role, method, pth, st, resp)
            else:
                assert st == 403 and resp == {"message": "permission denied", "code": 403}, (role, method, st, resp)
    _, auditor = apifix.role_api(dep, api, "auditor")
    auditor.error("DELETE", path, 403, message="permission denied")
    _, netadmin = apifix.role_api(dep, api, "network_admin")
    netadmin.ok("DELETE", path)
    api.as_token(None).error("GET", "/api/policies", 401, message="no valid authentication provided")


if __name__ == "__main__":
    apifix.run_tests()
