"""/api/dns/zones and their records against the real server: CRUD,
NetBird's validation, texts and status codes (its zones module), events
with their meta, permissions (module dns), other accounts' zones, the
serial, and a zone reaching an agent's map through another replica."""

import secrets

import apifix
from apifix import all_group, svc
from fixture import Deployment
from nbagent import build_meta

test = svc.test

check_schema = apifix.check_schema


def zone_body(groups, **over):
    b = {"name": "Internal", "domain": "internal.example", "enabled": True, "enable_search_domain": False,
         "distribution_groups": groups}
    b.update(over)
    return b


def rec_body(**over):
    b = {"name": "www.internal.example", "type": "A", "content": "10.0.0.10", "ttl": 300}
    b.update(over)
    return b


def events(dep, target):
    return dep.sql("SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
                   (dep.account_id, target))


@test
def zone_crud():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    devs = api.ok("POST", "/api/groups", {"name": "devs"})["id"]
    serial0 = dep.network_serial()

    z = api.ok("POST", "/api/dns/zones", zone_body([gall]))
    check_schema(z, "Zone")
    assert z == {"id": z["id"], "name": "Internal", "domain": "internal.example", "enabled": True,
                 "enable_search_domain": False, "distribution_groups": [gall], "records": []}, z
    # An empty zone changes no map: NetBird does not push on create.
    assert dep.network_serial() == serial0
    assert api.ok("GET", "/api/dns/zones/" + z["id"]) == z
    assert api.ok("GET", "/api/dns/zones") == [z]

    # enabled defaults to true when absent
    z2 = api.ok("POST", "/api/dns/zones", {"name": "b", "domain": "b.example", "distribution_groups": [devs]})
    assert z2["enabled"] is True and z2["enable_search_domain"] is False, z2

    u = api.ok("PUT", "/api/dns/zones/" + z["id"],
               zone_body([devs, gall], name="Renamed", enabled=False, enable_search_domain=True))
    check_schema(u, "Zone")
    assert (u["name"], u["enabled"], u["enable_search_domain"], u["distribution_groups"]) == \
        ("Renamed", False, True, [devs, gall]), u
    assert dep.network_serial() == serial0 + 1
    # the dashboard PUTs the whole object back, id and records included
    assert api.ok("PUT", "/api/dns/zones/" + z["id"], u) == u
    api.error("PUT", "/api/dns/zones/" + z["id"], 422, zone_body([gall], domain="other.example"),
              message="zone domain cannot be updated")

    assert api.ok("DELETE", "/api/dns/zones/" + z["id"]) == {}
    assert dep.network_serial() == serial0 + 3
    zid = z["id"]
    api.error("GET", "/api/dns/zones/" + zid, 404, message="zone: %s not found" % zid)
    api.error("PUT", "/api/dns/zones/" + zid, 404, zone_body([gall]),
              message="failed to get zone: zone: %s not found" % zid)
    api.error("DELETE", "/api/dns/zones/" + zid, 404, message="failed to get zone: zone: %s not found" % zid)
    assert api.ok("GET", "/api/dns/zones") == [api.ok("GET", "/api/dns/zones/" + z2["id"])]

    ev = events(dep, zid)
    assert [e[0] for e in ev] == [96, 97, 97, 98], ev
    assert ev[0][1] == {"name": "Internal", "domain": "internal.example"}, ev
    assert ev[1][1] == {"name": "Renamed", "domain": "internal.example"}, ev
    assert ev[2][1] == ev[1][1] and ev[3][1] == ev[1][1], ev


@test
def zone_validation():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    serial0 = dep.network_serial()
    cases = [
        (zone_body([gall], name=""), 422, "zone name is required"),
        (zone_body([gall], name="x" * 256), 422, "zone name exceeds maximum length of 255 characters"),
        (zone_body([gall], domain=""), 422, "invalid zone domain format"),
        (zone_body([gall], domain="*.wild.example"), 422, "invalid zone domain format"),
        (zone_body([gall], domain="bad domain.example"), 422, "invalid zone domain format"),
        (zone_body([gall], domain="trailing.example."), 422, "invalid zone domain format"),
        (zone_body([gall], domain="bücher.example"), 422, "invalid zone domain format"),
        (zone_body([]), 422, "at least one distribution group is required"),
        (zone_body([gall, "nosuchgroup"]), 422, "group: nosuchgroup not found"),
        (zone_body([gall], domain="netbird.selfhosted"), 422,
         "zone domain netbird.selfhosted conflicts with peer dns domain"),
        (zone_body([gall], enabled="yes"), 400, "couldn't parse JSON request"),
        (zone_body("g"), 400, "couldn't parse JSON request"),
    ]
    for body, status, msg in cases:
        api.error("POST", "/api/dns/zones", status, body, message=msg)
    st, b, _ = api.call("POST", "/api/dns/zones", raw="{not json")
    assert st == 400, (st, b)
    ok = api.ok("POST", "/api/dns/zones", zone_body([gall], name="x" * 255, domain="Upper_Case.Example"))
    assert ok["domain"] == "Upper_Case.Example", ok
    api.error("POST", "/api/dns/zones", 409, zone_body([gall], domain="Upper_Case.Example"),
              message="zone with domain upper_case.example already exists")
    # the account's own DNS domain is the peers' zone too
    api.ok("PUT", "/api/accounts/" + dep.account_id, apifix.settings(dns_domain="corp.example"))
    api.error("POST", "/api/dns/zones", 422, zone_body([gall], domain="corp.example"),
              message="zone domain corp.example conflicts with peer dns domain")
    # and the other way round: the peers' domain may not become a zone's
    api.error("PUT", "/api/accounts/" + dep.account_id, 422, apifix.settings(dns_domain="Upper_Case.Example"),
              message="peer dns domain upper_case.example conflicts with existing custom dns zone")
    api.ok("PUT", "/api/accounts/" + dep.account_id, apifix.settings(dns_domain="corp.example"))
    # PUT validates the body the same way
    api.error("PUT", "/api/dns/zones/" + ok["id"], 422, zone_body([], domain="Upper_Case.Example"),
              message="at least one distribution group is required")
    api.error("PUT", "/api/dns/zones/" + ok["id"], 422, zone_body(["gone"], domain="Upper_Case.Example"),
              message="group: gone not found")
    assert dep.sql("SELECT count(*) FROM dns_zones WHERE account_id = %s", (dep.account_id,)) == [(1,)]
    # nothing but the settings change moved the serial
    assert dep.network_serial() <= serial0 + 1


@test
def record_crud_and_events():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    z = api.ok("POST", "/api/dns/zones", zone_body([gall]))
    zp = "/api/dns/zones/%s/records" % z["id"]
    serial0 = dep.network_serial()

    a = api.ok("POST", zp, rec_body())
    check_schema(a, "DNSRecord")
    assert a == {"id": a["id"], "name": "www.internal.example", "type": "A", "content": "10.0.0.10", "ttl": 300}
    assert dep.network_serial() == serial0 + 1
    six = api.ok("POST", zp, rec_body(type="AAAA", content="2001:db8::10", ttl=0))
    apex = api.ok("POST", zp, rec_body(name="internal.example", content="10.0.0.1"))
    cn = api.ok("POST", zp, rec_body(name="alias.internal.example", type="CNAME", content="www.internal.example"))
    wild = api.ok("POST", zp, rec_body(name="*.apps.internal.example", content="10.0.0.20"))
    assert api.ok("GET", zp + "/" + a["id"]) == a
    got = api.ok("GET", zp)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in (a, six, apex, cn, wild)), got
    for r in got:
        check_schema(r, "DNSRecord")
    zone = api.ok("GET", "/api/dns/zones/" + z["id"])
    check_schema(zone, "Zone")
    assert sorted(r["id"] for r in zone["records"]) == sorted(r["id"] for r in got), zone

    u = api.ok("PUT", zp + "/" + a["id"], rec_body(content="10.0.0.11", ttl=60))
    assert (u["id"], u["content"], u["ttl"]) == (a["id"], "10.0.0.11", 60), u
    # a TTL-only change is not checked against the other records; the
    # dashboard sends the whole record, id included
    assert api.ok("PUT", zp + "/" + u["id"], dict(u, ttl=61))["ttl"] == 61
    assert api.ok("DELETE", zp + "/" + six["id"]) == {}
    api.error("GET", zp + "/" + six["id"], 404, message="dns record: %s not found" % six["id"])
    api.error("PUT", zp + "/" + six["id"], 404, rec_body(), message="failed to get record: dns record: %s not found"
              % six["id"])
    api.error("DELETE", zp + "/" + six["id"], 404, message="failed to get record: dns record: %s not found"
              % six["id"])
    # 5 creates, 2 updates, 1 delete
    assert dep.network_serial() == serial0 + 8

    ev = events(dep, a["id"])
    assert [e[0] for e in ev] == [99, 100, 100], ev
    assert ev[0][1] == {"name": "www.internal.example", "type": "A", "content": "10.0.0.10", "ttl": 300,
                        "zone_id": z["id"], "zone_name": "Internal"}, ev
    assert ev[1][1]["content"] == "10.0.0.11" and ev[1][1]["ttl"] == 60, ev
    ev = events(dep, six["id"])
    assert [e[0] for e in ev] == [99, 101] and ev[1][1]["type"] == "AAAA" and ev[1][1]["ttl"] == 0, ev

    # deleting the zone takes its records, one event each before the zone's
    assert api.ok("DELETE", "/api/dns/zones/" + z["id"]) == {}
    assert dep.sql("SELECT count(*) FROM dns_records WHERE zone_id = %s", (z["id"],)) == [(0,)]
    for r in (a, apex, cn, wild):
        assert [e[0] for e in events(dep, r["id"])][-1] == 101, r
    last = dep.sql("SELECT activity FROM events WHERE account_id = %s ORDER BY id DESC LIMIT 5", (dep.account_id,))
    assert [x[0] for x in last] == [98, 101, 101, 101, 101], last
    # a zone's records on a zone that does not exist: an empty list, as in NetBird
    assert api.ok("GET", zp) == []
    api.error("POST", zp, 404, rec_body(), message="failed to get zone: zone: %s not found" % z["id"])
    api.error("DELETE", zp + "/" + a["id"], 404, message="failed to get zone: zone: %s not found" % z["id"])


@test
def record_validation_and_conflicts():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    z = api.ok("POST", "/api/dns/zones", zone_body([gall]))
    zp = "/api/dns/zones/%s/records" % z["id"]
    cases = [
        (rec_body(name=""), 422, "record name is required"),
        (rec_body(name="bad name.internal.example"), 422, "invalid record name format"),
        (rec_body(type=""), 422, "record type is required"),
        (rec_body(type="MX"), 422, "invalid record type, must be a, aaaa, or cname"),
        (rec_body(content=""), 422, "a record is required"),
        (rec_body(content="10.0.0.300"), 422, "a record must be a valid ipv4 address"),
        (rec_body(content="2001:db8::1"), 422, "a record must be a valid ipv4 address"),
        (rec_body(content="010.0.0.1"), 422, "a record must be a valid ipv4 address"),
        (rec_body(type="AAAA", content=""), 422, "aaaa record is required"),
        (rec_body(type="AAAA", content="10.0.0.1"), 422, "aaaa record must be a valid ipv6 address"),
        (rec_body(type="AAAA", content="::ffff:10.0.0.1"), 422, "aaaa record must be a valid ipv6 address"),
        (rec_body(type="CNAME", content="*.x.example"), 422, "invalid cname target format"),
        (rec_body(type="CNAME", content="not a domain"), 422, "invalid cname target format"),
        (rec_body(ttl=-1), 422, "ttl cannot be negative"),
        (rec_body(ttl="300"), 400, "couldn't parse JSON request"),
        (rec_body(ttl=1.5), 400, "couldn't parse JSON request"),
        (rec_body(name="www.other.example"), 422, "record name does not belong to zone"),
        (rec_body(name="xinternal.example"), 422, "record name does not belong to zone"),
    ]
    for body, status, msg in cases:
        api.error("POST", zp, status, body, message=msg)
    # an IPv4-mapped address is IPv4 for Go's To4
    mapped = api.ok("POST", zp, rec_body(name="m.internal.example", content="::ffff:10.0.0.9"))
    assert mapped["content"] == "::ffff:10.0.0.9", mapped

    a = api.ok("POST", zp, rec_body())
    api.error("POST", zp, 409, rec_body(ttl=5), message="identical record already exists")
    # a second A of the same name is fine (round robin)
    a2 = api.ok("POST", zp, rec_body(content="10.0.0.12"))
    api.error("POST", zp, 422, rec_body(type="CNAME", content="target.example"),
              message="an a, aaaa, or cname record with name www.internal.example already exists")
    c = api.ok("POST", zp, rec_body(name="c.internal.example", type="CNAME", content="target.example"))
    api.error("POST", zp, 422, rec_body(name="c.internal.example"),
              message="an a, aaaa, or cname record with name c.internal.example already exists")
    # an update that becomes identical to another record
    api.error("PUT", zp + "/" + a2["id"], 409, rec_body(), message="identical record already exists")
    api.error("PUT", zp + "/" + a2["id"], 422, rec_body(name="c.internal.example"),
              message="an a, aaaa, or cname record with name c.internal.example already exists")
    # a CNAME alone under its name may change its target
    assert api.ok("PUT", zp + "/" + c["id"], rec_body(name="c.internal.example", type="CNAME",
                                                      content="t2.example"))["content"] == "t2.example"
    assert len(api.ok("GET", zp)) == 4
    assert a["id"]


@test
def zones_permissions_and_accounts():
    dep, srv, api = apifix.start()
    gall = all_group(api)
    z = api.ok("POST", "/api/dns/zones", zone_body([gall]))
    r = api.ok("POST", "/api/dns/zones/%s/records" % z["id"], rec_body())
    zp, rp = "/api/dns/zones/" + z["id"], "/api/dns/zones/%s/records/%s" % (z["id"], r["id"])
    roles = {n: apifix.role_api(dep, api, n)[1] for n in ("admin", "auditor", "network_admin", "user")}
    for n in ("admin", "auditor", "network_admin"):
        assert roles[n].ok("GET", "/api/dns/zones")[0]["id"] == z["id"], n
        assert roles[n].ok("GET", rp) == r, n
    for path in ("/api/dns/zones", zp, zp + "/records", rp):
        roles["user"].error("GET", path, 403, message="permission denied")
    for n in ("auditor", "user"):
        roles[n].error("POST", "/api/dns/zones", 403, zone_body([gall], domain="x.example"),
                       message="permission denied")
        roles[n].error("PUT", zp, 403, zone_body([gall]), message="permission denied")
        roles[n].error("DELETE", rp, 403, message="permission denied")
        roles[n].error("POST", zp + "/records", 403, rec_body(name="n.internal.example"),
                       message="permission denied")
    nz = roles["network_admin"].ok("POST", "/api/dns/zones", zone_body([gall], domain="na.example"))
    assert roles["network_admin"].ok("DELETE", "/api/dns/zones/" + nz["id"]) == {}
    apifix.Api(srv.url("")).error("GET", "/api/dns/zones", 401)

    # Another account sees none of it and cannot touch it.
    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    assert oapi.ok("GET", "/api/dns/zones") == []
    oapi.error("GET", zp, 404, message="zone: %s not found" % z["id"])
    oapi.error("PUT", zp, 404, zone_body([gall]))
    oapi.error("DELETE", zp, 404)
    assert oapi.ok("GET", zp + "/records") == []
    oapi.error("GET", rp, 404)
    oapi.error("PUT", rp, 404, rec_body())
    oapi.error("DELETE", rp, 404)
    oapi.error("POST", zp + "/records", 404, rec_body())
    # The same domain may exist in another account; its groups are its own.
    ogall = all_group(oapi)
    oapi.ok("POST", "/api/dns/zones", zone_body([ogall]))
    oapi.error("POST", "/api/dns/zones", 422, zone_body([gall], domain="y.example"),
               message="group: %s not found" % gall.lower())
    assert api.ok("GET", rp) == r


@test
def group_deletion_leaves_zones_alone():
    """NetBird's group deletion does not look at zones: a zone's
    distribution group may be deleted; the zone keeps the id."""
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "zone-users"})["id"]
    z = api.ok("POST", "/api/dns/zones", zone_body([g]))
    assert api.ok("DELETE", "/api/groups/" + g) == {}
    assert api.ok("GET", "/api/dns/zones/" + z["id"])["distribution_groups"] == [g]
    # the zone still saves once its groups exist again
    gall = all_group(api)
    api.error("PUT", "/api/dns/zones/" + z["id"], 422, zone_body([g]), message="not found")
    assert api.ok("PUT", "/api/dns/zones/" + z["id"], zone_body([gall]))["distribution_groups"] == [gall]


@test
def zone_reaches_an_agent_on_another_replica():
    """An agent holds its stream on replica 2; the zone and its records
    are made through replica 1 and arrive as a CustomZone."""
    svc.needs_redis()
    dep = Deployment()
    prefix = "zones-" + secrets.token_hex(6)
    srvs = []
    for _ in range(2):
        s = dep.start("--serial-check-interval", "0s", "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", prefix)
        s.wait_log(lambda o: o.get("msg") == "bus subscribed")
        srvs.append(s)
    api = apifix.api_for(srvs[0], dep.admin_token)
    a = dep.agent(srvs[1])
    a.register(dep.setup_key, meta=build_meta("zone-client"))
    stream = a.sync()
    stream.next(timeout=15)
    gall = all_group(api)
    z = api.ok("POST", "/api/dns/zones", zone_body([gall], enable_search_domain=True))
    zp = "/api/dns/zones/%s/records" % z["id"]
    api.ok("POST", zp, rec_body())
    api.ok("POST", zp, rec_body(name="alias.internal.example", type="CNAME", content="www.internal.example",
                                ttl=60))

    def zone(m):
        zs = [x for x in m.NetworkMap.DNSConfig.CustomZones if x.Domain == "internal.example."]
        return zs[0] if zs and len(zs[0].Records) == 2 else None

    m = stream.wait_for(zone, timeout=15)
    cz = zone(m)
    assert cz.NonAuthoritative is True and cz.SearchDomainDisabled is False, cz
    recs = sorted((r.Name, r.Type, r.Class, r.TTL, r.RData) for r in cz.Records)
    assert recs == [("alias.internal.example.", 5, "IN", 60, "www.internal.example."),
                    ("www.internal.example.", 1, "IN", 300, "10.0.0.10")], recs

    # disabling the zone takes it out of the map
    api.ok("PUT", "/api/dns/zones/" + z["id"], zone_body([gall], enabled=False))
    stream.wait_for(lambda m: not any(x.Domain == "internal.example." for x in m.NetworkMap.DNSConfig.CustomZones),
                    timeout=15)


if __name__ == "__main__":
    apifix.run_tests()
