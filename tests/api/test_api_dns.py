"""/api/dns/nameservers and /api/dns/settings against the real server:
CRUD, NetBird's validation and messages, events, permissions, and a
nameserver group reaching an agent's DNS config."""

import apifix
from apifix import all_group, svc
import nbagent

test = svc.test


def ns_body(groups, **over):
    b = {"name": "corp", "description": "corporate resolvers", "enabled": True, "groups": groups,
         "primary": False, "domains": ["corp.example"], "search_domains_enabled": False,
         "nameservers": [{"ip": "10.0.0.53", "ns_type": "udp", "port": 53}]}
    b.update(over)
    return b


def events(dep, target, codes):
    return dep.sql("SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s"
                   " AND activity = ANY (%s) ORDER BY id", (dep.account_id, target, list(codes)))



@test
def fuzz_findings_are_client_errors():
    """What tests/fuzz found (docs/fuzzing.md): a path or query that is not
    UTF-8 reached PostgreSQL, which refused it: a 500; it is a 400 now and
    nothing is written. Ports out of range, as integers and as numbers no
    integer holds, are refused too (the conversion is bounded)."""
    dep, srv, api = apifix.start()
    gall = all_group(api)
    serial0 = dep.network_serial()
    for port, status in ((1e300, 400), (-1e300, 400), (3000000000, 422), (-1, 422)):
        api.error("POST", "/api/dns/nameservers", status,
                  ns_body([gall], nameservers=[{"ip": "10.0.0.53", "ns_type": "udp", "port": port}]))
    api.error("GET", "/api/dns/nameservers/%ff%fe", 400, message="invalid path")
    api.error("DELETE", "/api/groups/%c0%af", 400, message="invalid path")
    api.error("GET", "/api/peers?name=%ff", 400, message="invalid query")
    # Valid UTF-8 still goes through.
    api.error("GET", "/api/dns/nameservers/M%C3%BCnchen", 404)
    assert dep.network_serial() == serial0

@test
def nameserver_group_crud():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    serial0 = dep.network_serial()
    body = ns_body([gall], search_domains_enabled=True, domains=["corp.example.", "München.de"], nameservers=[
        {"ip": "1.1.1.1", "ns_type": "udp", "port": 53},
        {"ip": "[2606:4700:4700:0:0:0:0:1111]", "ns_type": "UDP", "port": 5353}])
    g = api.ok("POST", "/api/dns/nameservers", body)
    assert g["nameservers"] == [{"ip": "1.1.1.1", "ns_type": "udp", "port": 53},
                                {"ip": "2606:4700:4700::1111", "ns_type": "udp", "port": 5353}], g
    assert (g["name"], g["description"], g["groups"], g["primary"], g["enabled"]) == \
        ("corp", "corporate resolvers", [gall], False, True), g
    assert g["domains"] == ["corp.example.", "München.de"] and g["search_domains_enabled"] is True, g
    assert dep.network_serial() == serial0 + 1
    assert api.ok("GET", "/api/dns/nameservers/" + g["id"]) == g
    assert api.ok("GET", "/api/dns/nameservers") == [g]
    stored = dep.sql("SELECT name_servers FROM name_server_groups WHERE id = %s", (g["id"],))[0][0]
    assert stored == g["nameservers"], stored

    u = api.ok("PUT", "/api/dns/nameservers/" + g["id"],
               ns_body([gall], name="primary", primary=True, domains=[], enabled=False, description=""))
    assert u["id"] == g["id"] and u["name"] == "primary" and u["primary"] is True and u["domains"] == [], u
    assert u["enabled"] is False and u["description"] == "" and u["nameservers"] == \
        [{"ip": "10.0.0.53", "ns_type": "udp", "port": 53}], u
    assert api.ok("GET", "/api/dns/nameservers/" + g["id"]) == u

    assert api.ok("DELETE", "/api/dns/nameservers/" + g["id"]) == {}
    for method in ("GET", "DELETE"):
        api.error(method, "/api/dns/nameservers/" + g["id"], 404, message="nameserver group: %s not found" % g["id"])
    api.error("PUT", "/api/dns/nameservers/" + g["id"], 404, ns_body([gall]),
              message="nameserver group: %s not found" % g["id"])
    assert api.ok("GET", "/api/dns/nameservers") == []
    ev = events(dep, g["id"], (35, 36, 37))
    assert ev == [(35, {"name": "corp"}), (37, {"name": "primary"}), (36, {"name": "primary"})], ev
    assert dep.network_serial() == serial0 + 3


@test
def nameserver_group_validation():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    serial0 = dep.network_serial()
    ok = ns_body([gall])

    def ns(**over):
        return dict(ok, nameservers=[dict(ok["nameservers"][0], **over)])

    for raw in ("{bad", "[]"):
        api.error("POST", "/api/dns/nameservers", 400, raw=raw, message="couldn't parse JSON request")
    for body in (dict(ok, nameservers="1.1.1.1"), dict(ok, nameservers=["1.1.1.1"]), ns(port="53"), ns(ip=1),
                 dict(ok, primary="no"), dict(ok, domains="x.com")):
        api.error("POST", "/api/dns/nameservers", 400, body, message="couldn't parse JSON request")
    bad_ns = [ns(ns_type="tcp"), ns(ip="1.1.1"), ns(ip="[1.1.1.1"), ns(ip="fe80::1%eth0"), ns(ip="01.1.1.1"),
              ns(port=-1), dict(ok, nameservers=[{"port": 53, "ns_type": "udp"}]), ns(ip="dns.example")]
    for body in bad_ns:
        b = api.error("POST", "/api/dns/nameservers", 422, body)
        assert b["message"] == "invalid ns servers format", (body, b)
    five = [{"ip": "10.0.0.%d" % i, "ns_type": "udp", "port": 53} for i in range(4)]
    cases = [
        (dict(ok, domains=[]), "nameserver group primary status is false and domains are empty, it should be "
                               "primary or have at least one domain"),
        (dict(ok, primary=True), "nameserver group primary status is true and domains are not empty, you should "
                                 "set either primary or domain"),
        (dict(ok, primary=True, domains=[], search_domains_enabled=True),
         "nameserver group primary status is true and search domains is enabled, you should not set search "
         "domains for primary nameservers"),
        (dict(ok, domains=["ok.example", "*.corp"]),
         'nameserver group got an invalid domain: *.corp "wildcards not allowed"'),
        (dict(ok, domains=["Bad..com"]),
         'nameserver group got an invalid domain: bad..com "invalid domain name: invalid domain format: bad..com"'),
        (dict(ok, domains=["."]),
         'nameserver group got an invalid domain: . "invalid domain name: invalid domain format: "'),
        (dict(ok, nameservers=[]), "the list of nameservers should be 1 or 3, got 0"),
        (dict(ok, nameservers=five), "the list of nameservers should be 1 or 3, got 4"),
        (dict(ok, name=""), "nameserver group name should be between 1 and 40"),
        (dict(ok, name="n" * 41), "nameserver group name should be between 1 and 40"),
        (dict(ok, groups=[]), "the list of group ids should not be empty"),
        (dict(ok, groups=[gall, ""]), "group id should not be empty string"),
        (dict(ok, groups=["Missing"]), "group id missing not found"),
    ]
    for body, msg in cases:
        b = api.error("POST", "/api/dns/nameservers", 422, body)
        assert b["message"] == msg, (body, b)
    # A domain with one trailing dot and the longest name are fine.
    g = api.ok("POST", "/api/dns/nameservers", dict(ok, name="n" * 40, domains=["corp.example."]))
    api.error("POST", "/api/dns/nameservers", 422, dict(ok, name="n" * 40),
              message="nameserver group with name %s already exist" % ("n" * 40))
    other = api.ok("POST", "/api/dns/nameservers", dict(ok, name="other"))
    api.error("PUT", "/api/dns/nameservers/" + other["id"], 422, dict(ok, name="n" * 40),
              message="nameserver group with name %s already exist" % ("n" * 40))
    # Its own name is no conflict.
    api.ok("PUT", "/api/dns/nameservers/" + g["id"], dict(ok, name="n" * 40))
    # PUT reads the body and its nameservers before looking the group up.
    api.error("PUT", "/api/dns/nameservers/nope", 400, raw="{", message="couldn't parse JSON request")
    api.error("PUT", "/api/dns/nameservers/nope", 422, ns(ns_type="tcp"), message="invalid ns servers format")
    api.error("PUT", "/api/dns/nameservers/nope", 404, dict(ok, name=""), message="nameserver group: nope not found")
    for body, msg in cases[:3]:
        api.error("PUT", "/api/dns/nameservers/" + g["id"], 422, body, message=msg)
    assert len(api.ok("GET", "/api/dns/nameservers")) == 2
    assert dep.network_serial() == serial0 + 3


@test
def dns_settings():
    dep, srv, api = apifix.start()
    serial0 = dep.network_serial()
    assert api.ok("GET", "/api/dns/settings") == {"disabled_management_groups": []}
    g1 = api.ok("POST", "/api/groups", {"name": "servers"})["id"]
    g2 = api.ok("POST", "/api/groups", {"name": "laptops"})["id"]

    def ev():
        return dep.sql("SELECT activity, target_id, meta FROM events WHERE account_id = %s"
                       " AND activity IN (25, 26) ORDER BY id", (dep.account_id,))

    s = api.ok("PUT", "/api/dns/settings", {"disabled_management_groups": [g1, g2]})
    assert s == {"disabled_management_groups": [g1, g2]}, s
    assert api.ok("GET", "/api/dns/settings") == s
    assert dep.sql("SELECT dns_settings_disabled_management_groups FROM accounts WHERE id = %s",
                   (dep.account_id,)) == [([g1, g2],)]
    aid = dep.account_id
    assert ev() == [(25, aid, {"group": "servers", "group_id": g1}), (25, aid, {"group": "laptops", "group_id": g2})]

    assert api.ok("PUT", "/api/dns/settings", {"disabled_management_groups": [g2]}) == \
        {"disabled_management_groups": [g2]}
    assert ev()[2:] == [(26, aid, {"group": "servers", "group_id": g1})], ev()
    # The same list again: no event, still a new serial.
    api.ok("PUT", "/api/dns/settings", {"disabled_management_groups": [g2]})
    assert len(ev()) == 3
    # Absent means empty.
    assert api.ok("PUT", "/api/dns/settings", {}) == {"disabled_management_groups": []}
    assert ev()[3:] == [(26, aid, {"group": "laptops", "group_id": g2})], ev()
    assert dep.network_serial() == serial0 + 2 + 4

    api.error("PUT", "/api/dns/settings", 400, raw="[", message="couldn't parse JSON request")
    api.error("PUT", "/api/dns/settings", 400, {"disabled_management_groups": g1},
              message="couldn't parse JSON request")
    api.error("PUT", "/api/dns/settings", 422, {"disabled_management_groups": [g1, "gone"]},
              message="group id gone not found")
    api.error("PUT", "/api/dns/settings", 422, {"disabled_management_groups": [""]},
              message="group id should not be empty string")
    assert api.ok("GET", "/api/dns/settings") == {"disabled_management_groups": []}
    assert dep.network_serial() == serial0 + 6 and len(ev()) == 4


@test
def dns_permissions():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    g = api.ok("POST", "/api/dns/nameservers", ns_body([gall]))
    auditor, netadmin, user = (apifix.role_api(dep, api, r)[1] for r in ("auditor", "network_admin", "user"))
    assert auditor.ok("GET", "/api/dns/nameservers") == [g]
    assert auditor.ok("GET", "/api/dns/settings") == {"disabled_management_groups": []}
    auditor.error("POST", "/api/dns/nameservers", 403, ns_body([gall], name="x"), message="permission denied")
    auditor.error("PUT", "/api/dns/settings", 403, {"disabled_management_groups": []}, message="permission denied")
    user.error("GET", "/api/dns/nameservers/" + g["id"], 403, message="permission denied")
    user.error("GET", "/api/dns/settings", 403, message="permission denied")
    n = netadmin.ok("POST", "/api/dns/nameservers", ns_body([gall], name="netadmin's"))
    netadmin.ok("PUT", "/api/dns/settings", {"disabled_management_groups": [gall]})
    assert netadmin.ok("DELETE", "/api/dns/nameservers/" + n["id"]) == {}
    apifix.Api(srv.url("")).error("GET", "/api/dns/settings", 401)


@test
def nameserver_group_reaches_the_dns_config():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    a = dep.agent()
    a.register(dep.setup_key, meta=nbagent.build_meta("client-1"))
    stream = a.sync()
    stream.next(timeout=15)
    api.ok("POST", "/api/dns/nameservers", ns_body([gall], domains=["corp.example"], nameservers=[
        {"ip": "[2001:db8::53]", "ns_type": "udp", "port": 5353}, {"ip": "10.0.0.53", "ns_type": "udp", "port": 53}]))

    def groups(m):
        return list(m.NetworkMap.DNSConfig.NameServerGroups)

    m = stream.wait_for(lambda m: groups(m), timeout=15)
    g = groups(m)[0]
    assert list(g.Domains) == ["corp.example"], nbagent._short(m)
    assert [(n.IP, n.NSType, n.Port) for n in g.NameServers] == [("2001:db8::53", 1, 5353), ("10.0.0.53", 1, 53)], \
        nbagent._short(m)


if __name__ == "__main__":
    apifix.run_tests()
