"""/api/posture-checks against the real server: CRUD with NetBird's JSON
(validated against its openapi.yml), every validation message of
NetBird's posture package, events, serial bumps, permissions, other
accounts, and the refusal to delete a check a policy still names."""


import apifix
from apifix import svc
from nbagent import build_meta

test = svc.test

check_schema = apifix.check_schema


ALL_CHECKS = {
    "nb_version_check": {"min_version": "0.28.0"},
    "os_version_check": {"android": {"min_version": "13"}, "ios": {"min_version": "17.3.1"},
                         "darwin": {"min_version": "14.2.1"}, "linux": {"min_kernel_version": "5.3.3"},
                         "windows": {"min_kernel_version": "10.0.1234"}},
    "geo_location_check": {"locations": [{"country_code": "DE", "city_name": "Berlin"}, {"country_code": "FR"}],
                           "action": "allow"},
    "peer_network_range_check": {"ranges": ["192.168.1.0/24", "2001:0db8:0:0::/56", "10.1.2.3/8"],
                                 "action": "deny"},
    "process_check": {"processes": [{"linux_path": "/usr/bin/netbird", "mac_path": "/Applications/nb"},
                                    {"windows_path": "C:\\nb.exe"}]},
}


def body(checks=None, **over):
    b = {"name": "strict", "description": "all of them", "checks": ALL_CHECKS if checks is None else checks}
    b.update(over)
    return b


def events(dep, target):
    return [(r[0], r[1]) for r in dep.sql(
        "SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
        (dep.account_id, target))]


def rule(g):
    return {"name": "r", "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
            "sources": [g], "destinations": [g]}


@test
def posture_check_crud():
    dep, srv, api = apifix.start()
    serial0 = dep.network_serial()
    assert api.ok("GET", "/api/posture-checks") == []
    pc = api.ok("POST", "/api/posture-checks", body())
    check_schema(pc, "PostureCheck")
    assert (pc["name"], pc["description"]) == ("strict", "all of them"), pc
    want = dict(ALL_CHECKS)
    # Ranges as Go's netip prints them (not masked), every process path
    # present, an empty city left out.
    want["peer_network_range_check"] = {"ranges": ["192.168.1.0/24", "2001:db8::/56", "10.1.2.3/8"],
                                        "action": "deny"}
    want["process_check"] = {"processes": [
        {"linux_path": "/usr/bin/netbird", "mac_path": "/Applications/nb", "windows_path": ""},
        {"linux_path": "", "mac_path": "", "windows_path": "C:\\nb.exe"}]}
    assert pc["checks"] == want, pc["checks"]
    # A new check changes no map (nothing references it yet).
    assert dep.network_serial() == serial0
    assert api.ok("GET", "/api/posture-checks/" + pc["id"]) == pc
    assert api.ok("GET", "/api/posture-checks") == [pc]
    stored = dep.sql("SELECT checks FROM posture_checks WHERE id = %s", (pc["id"],))[0][0]
    assert stored == want, stored

    u = api.ok("PUT", "/api/posture-checks/" + pc["id"],
               {"name": "min", "description": "", "checks": {"nb_version_check": {"min_version": "0.30.1"}}})
    check_schema(u, "PostureCheck")
    assert u == {"id": pc["id"], "name": "min", "description": "",
                 "checks": {"nb_version_check": {"min_version": "0.30.1"}}}, u
    assert dep.network_serial() == serial0 + 1
    assert api.ok("DELETE", "/api/posture-checks/" + pc["id"]) == {}
    assert dep.network_serial() == serial0 + 2
    for method in ("GET", "DELETE"):
        api.error(method, "/api/posture-checks/" + pc["id"], 404, message="posture checks: %s not found" % pc["id"])
    api.error("PUT", "/api/posture-checks/" + pc["id"], 404, body(), message="posture checks: %s not found" % pc["id"])
    assert events(dep, pc["id"]) == [(60, {"name": "strict"}), (61, {"name": "min"}), (62, {"name": "min"})]


@test
def posture_check_validation():
    dep, srv, api = apifix.start()
    existing = api.ok("POST", "/api/posture-checks", body(name="taken"))
    n0 = dep.sql("SELECT count(*) FROM events")[0][0]
    serial0 = dep.network_serial()

    def bad(status, b, message, raw=None, put=True):
        targets = [("POST", "/api/posture-checks")]
        if put:
            targets.append(("PUT", "/api/posture-checks/" + existing["id"]))
        for method, path in targets:
            got = api.error(method, path, status, b, raw=raw)
            assert got["message"] == message, (method, got, message)

    j = "couldn't parse JSON request"
    bad(400, None, j, raw="{")
    bad(400, body(name=5), j)
    bad(400, body(checks=[]), j)
    bad(400, body(checks={"nb_version_check": {"min_version": 1}}), j)
    bad(400, body(checks={"geo_location_check": {"locations": ["DE"], "action": "allow"}}), j)
    bad(400, body(checks={"peer_network_range_check": {"ranges": [1], "action": "allow"}}), j)
    bad(400, body(checks={"process_check": {"processes": [{"linux_path": True}]}}), j)
    # Prefixes parse before anything else is validated.
    bad(422, body(name="", checks={"peer_network_range_check": {"ranges": ["10.0.0.0"], "action": "x"}}),
        "invalid network prefix")
    for r in ("10.0.0.0/33", "10.0.0.0/08", "010.0.0.0/8", "fe80::1%eth0/64", "x/1"):
        bad(422, body(checks={"peer_network_range_check": {"ranges": [r], "action": "allow"}}),
            "invalid network prefix")
    bad(422, body(name=""), "posture checks name shouldn't be empty")
    bad(422, body(checks={}), "posture checks shouldn't be empty")
    bad(422, {"name": "x"}, "posture checks shouldn't be empty")
    bad(422, body(checks={"nb_version_check": {"min_version": ""}}),
        "nbversioncheck minimum version shouldn't be empty")
    bad(422, body(checks={"nb_version_check": {"min_version": "1.x"}}), "nbversioncheck version: 1.x is not valid")
    bad(422, body(checks={"os_version_check": {}}), "osversioncheck at least one os version check is required")
    bad(422, body(checks={"os_version_check": {"android": {"min_version": "a"}}}),
        "osversioncheck android version: a is not valid")
    bad(422, body(checks={"os_version_check": {"darwin": {"min_version": ""}}}),
        "osversioncheck  darwin version:  is not valid")
    bad(422, body(checks={"os_version_check": {"linux": {"min_kernel_version": "5..1"}}}),
        "osversioncheck  linux kernel version: 5..1 is not valid")
    bad(422, body(checks={"os_version_check": {"windows": {}}}),
        "osversioncheck  windows kernel version:  is not valid")
    bad(422, body(checks={"geo_location_check": {"locations": [{"country_code": "DE"}]}}),
        "geolocationcheck action shouldn't be empty")
    bad(422, body(checks={"geo_location_check": {"locations": [{"country_code": "DE"}], "action": "maybe"}}),
        "geolocationcheck action is not valid")
    bad(422, body(checks={"geo_location_check": {"locations": [], "action": "deny"}}),
        "geolocationcheck locations shouldn't be empty")
    bad(422, body(checks={"geo_location_check": {"locations": [{"city_name": "Berlin"}], "action": "deny"}}),
        "geolocationcheck country code shouldn't be empty")
    bad(422, body(checks={"geo_location_check": {"locations": [{"country_code": "DEU"}], "action": "deny"}}),
        "geolocationcheck country code must be 2 letters (iso 3166-1 alpha-2 format)")
    bad(422, body(checks={"peer_network_range_check": {"ranges": ["10.0.0.0/8"]}}),
        "action for peer network range check shouldn't be empty")
    bad(422, body(checks={"peer_network_range_check": {"ranges": ["10.0.0.0/8"], "action": "block"}}),
        "peernetworkrangecheck action is not valid")
    bad(422, body(checks={"peer_network_range_check": {"ranges": [], "action": "allow"}}),
        "peernetworkrangecheck network ranges shouldn't be empty")
    bad(422, body(checks={"process_check": {"processes": []}}), "processcheck processes shouldn't be empty")
    bad(422, body(checks={"process_check": {"processes": [{"linux_path": ""}]}}), "processcheck path shouldn't be empty")
    bad(422, body(name="taken"), "posture checks with name taken already exists", put=False)
    # The one check with a valid body but another's name on update (ours:
    # the name is unique in the table).
    other = api.ok("POST", "/api/posture-checks", body(name="other"))
    api.error("PUT", "/api/posture-checks/" + other["id"], 422, body(name="taken"),
              message="posture checks with name taken already exists")
    # Version forms go-version accepts.
    for v in ("v1.2", "1.2.3-rc.1", "1.2.3+build.5", "1.2.3-beta", "10"):
        pc = api.ok("PUT", "/api/posture-checks/" + other["id"],
                    body(name="other", checks={"nb_version_check": {"min_version": v}}))
        assert pc["checks"]["nb_version_check"]["min_version"] == v
    # Nothing written by the failures: the events are those of "other".
    assert dep.sql("SELECT count(*) FROM events")[0][0] == n0 + 1 + 5
    assert dep.network_serial() == serial0 + 5
    assert len(api.ok("GET", "/api/posture-checks")) == 2


@test
def policies_reference_posture_checks():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "g"})["id"]
    pc = api.ok("POST", "/api/posture-checks", body(checks={"nb_version_check": {"min_version": "0.1.0"}}))
    pol = {"name": "Guarded", "enabled": True, "rules": [rule(g)], "source_posture_checks": [pc["id"]]}
    p = api.ok("POST", "/api/policies", pol)
    check_schema(p, "Policy")
    assert p["source_posture_checks"] == [pc["id"]], p
    assert dep.sql("SELECT source_posture_checks FROM policies WHERE id = %s", (p["id"],))[0][0] == [pc["id"]]
    # An id that is not the account's posture check is refused (NetBird
    # drops it silently).
    api.error("POST", "/api/policies", 422, dict(pol, source_posture_checks=[pc["id"], "nope"]),
              message="posture checks: nope not found")
    # Deleting a referenced check: NetBird's 412 with the policy's name.
    api.error("DELETE", "/api/posture-checks/" + pc["id"], 412,
              message="posture checks have been linked to policy: guarded")
    assert len(api.ok("GET", "/api/posture-checks")) == 1
    # An update that only drops the check is a change (event, serial).
    serial = dep.network_serial()
    u = api.ok("PUT", "/api/policies/" + p["id"], dict(pol, source_posture_checks=[]))
    assert u["source_posture_checks"] == [] and dep.network_serial() == serial + 1, u
    assert api.ok("DELETE", "/api/posture-checks/" + pc["id"]) == {}


@test
def posture_checks_permissions_and_accounts():
    dep, srv, api = apifix.start()
    pc = api.ok("POST", "/api/posture-checks", body())
    roles = {r: apifix.role_api(dep, api, r)[1] for r in ("admin", "auditor", "network_admin", "user")}
    for r in ("admin", "auditor", "network_admin"):
        assert roles[r].ok("GET", "/api/posture-checks") == [pc], r
        assert roles[r].ok("GET", "/api/posture-checks/" + pc["id"]) == pc, r
    roles["user"].error("GET", "/api/posture-checks", 403, message="permission denied")
    roles["user"].error("GET", "/api/posture-checks/" + pc["id"], 403, message="permission denied")
    for r in ("auditor", "user"):
        roles[r].error("POST", "/api/posture-checks", 403, body(name="x"), message="permission denied")
        roles[r].error("PUT", "/api/posture-checks/" + pc["id"], 403, body(), message="permission denied")
        roles[r].error("DELETE", "/api/posture-checks/" + pc["id"], 403, message="permission denied")
    x = roles["network_admin"].ok("POST", "/api/posture-checks", body(name="by-netadmin"))
    assert roles["admin"].ok("DELETE", "/api/posture-checks/" + x["id"]) == {}
    api.as_token(None).error("GET", "/api/posture-checks", 401)

    # Another account sees none of it, and cannot name it.
    b = apifix.second_account(dep)
    other = api.as_token(b["ADMIN_TOKEN"])
    assert other.ok("GET", "/api/posture-checks") == []
    for method in ("GET", "DELETE"):
        other.error(method, "/api/posture-checks/" + pc["id"], 404, message="not found")
    other.error("PUT", "/api/posture-checks/" + pc["id"], 404, body(), message="not found")
    g = [x for x in other.ok("GET", "/api/groups") if x["name"] == "All"][0]["id"]
    other.error("POST", "/api/policies", 422, {"name": "p", "enabled": True, "rules": [rule(g)],
                                               "source_posture_checks": [pc["id"]]}, message="not found")
    # The same name is free in another account.
    assert other.ok("POST", "/api/posture-checks", body())["name"] == "strict"
    assert api.ok("GET", "/api/posture-checks/" + pc["id"]) == pc


@test
def agents_get_guarded_maps_and_checks():
    """A policy from {good, bad} to {dst} guarded by a version and process
    check: bad (an old agent) is no source, so dst gets rules from good
    only and bad gets none; both source peers are told which files to
    report (SyncResponse.Checks), dst is not."""
    dep, srv, api = apifix.start()
    good, bad, dst = dep.agent(), dep.agent(), dep.agent()
    metas = {good: build_meta("good", "0.60.0"), bad: build_meta("bad", "0.20.0"), dst: build_meta("dst", "0.60.0")}
    ips = {}
    for ag, m in metas.items():
        ips[ag] = ag.register(dep.setup_key, meta=m).peerConfig.address.split("/")[0]
    peers = dep.peers()
    pid = {ag: peers[ag.pub_b64]["id"] for ag in metas}
    default = api.ok("GET", "/api/policies")[0]
    api.ok("DELETE", "/api/policies/" + default["id"])
    gs = api.ok("POST", "/api/groups", {"name": "src", "peers": [pid[good], pid[bad]]})["id"]
    gd = api.ok("POST", "/api/groups", {"name": "dst", "peers": [pid[dst]]})["id"]
    pc = api.ok("POST", "/api/posture-checks", body(checks={
        "nb_version_check": {"min_version": "0.30.0"},
        "process_check": {"processes": [{"linux_path": "/usr/bin/netbird",
                                         "mac_path": "/Applications/NetBird.app/Contents/MacOS/netbird"}]}}))
    r = dict(rule(gs), destinations=[gd], bidirectional=False)
    p = api.ok("POST", "/api/policies", {"name": "guarded", "enabled": True, "rules": [r],
                                         "source_posture_checks": [pc["id"]]})
    rid = p["rules"][0]["id"]
    streams = {ag: ag.sync(meta=m) for ag, m in metas.items()}

    def keys(m):
        return {x.wgPubKey for x in m.NetworkMap.remotePeers}

    def ready(m):
        return m.HasField("NetworkMap") and m.NetworkMap.Serial >= dep.network_serial()

    md = streams[dst].wait_for(ready, timeout=15)
    assert keys(md) == {good.pub_b64}, keys(md)
    fw = [(x.PeerIP, x.Direction, x.PolicyID.decode()) for x in md.NetworkMap.FirewallRules]
    assert fw == [(ips[good], 0, rid)], fw
    assert list(md.Checks) == [], md.Checks
    files = ["/usr/bin/netbird", "/Applications/NetBird.app/Contents/MacOS/netbird"]
    mg = streams[good].wait_for(ready, timeout=15)
    assert keys(mg) == {dst.pub_b64} and [x.PeerIP for x in mg.NetworkMap.FirewallRules] == [ips[dst]], mg.NetworkMap
    assert [list(c.Files) for c in mg.Checks] == [files], mg.Checks
    mb = streams[bad].wait_for(ready, timeout=15)
    assert keys(mb) == set() and len(mb.NetworkMap.FirewallRules) == 0, mb.NetworkMap
    assert [list(c.Files) for c in mb.Checks] == [files], mb.Checks
    # Login carries the same Checks (from the snapshot the streams use).
    lr = bad.login(meta=metas[bad])
    assert [list(c.Files) for c in lr.Checks] == [files], lr.Checks
    assert list(dst.login(meta=metas[dst]).Checks) == []

    # Without the check the policy opens for bad too.
    api.ok("PUT", "/api/policies/" + p["id"], {"name": "guarded", "enabled": True, "rules": [dict(r, id=rid)],
                                               "source_posture_checks": []})
    md = streams[dst].wait_for(lambda m: ready(m) and bad.pub_b64 in keys(m), timeout=15)
    assert keys(md) == {good.pub_b64, bad.pub_b64}
    mb = streams[bad].wait_for(lambda m: ready(m) and dst.pub_b64 in keys(m), timeout=15)
    assert list(mb.Checks) == []


if __name__ == "__main__":
    apifix.run_tests()
