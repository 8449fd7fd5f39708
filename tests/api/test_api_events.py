"""/api/events/audit (and the legacy /api/events) and /api/instance against
the real server: the events the API writes, their order and fields, meta
printed as NetBird prints it, user names, permissions; the instance
endpoints with and without a token."""

import re

import apifix
from apifix import svc
import nbagent

test = svc.test

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,5}[1-9])?Z$")


def add_event(dep, activity, initiator="sys", target="", meta="{}", ts=None, account=None):
    """Inserts an event straight into the database; returns its id (a string, as the API shows it)."""
    row = dep.sql("INSERT INTO events (activity, initiator_id, target_id, account_id, meta, \"timestamp\")"
                  " VALUES (%s, %s, %s, %s, %s::jsonb, COALESCE(%s::timestamptz, CURRENT_TIMESTAMP)) RETURNING id",
                  (activity, initiator, target, account or dep.account_id, meta, ts))
    return str(row[0][0])


@test
def events_after_a_few_changes():
    dep, srv, api = apifix.start()
    uid, admin = apifix.role_api(dep, api, "admin", name="Ada Admin", email="ada@x.test")
    a = dep.agent()
    a.register(dep.setup_key, meta=nbagent.build_meta("router-1"))
    pid = dep.peers()[a.pub_b64]["id"]
    gall = apifix.all_group(api)

    g = admin.ok("POST", "/api/groups", {"name": "ops"})
    r = admin.ok("POST", "/api/routes", {"network_id": "lan", "network": "10.1.0.0/16", "peer": pid, "metric": 10,
                                         "groups": [gall], "enabled": True})
    ns = admin.ok("POST", "/api/dns/nameservers", {"name": "dns", "nameservers": [
        {"ip": "10.0.0.53", "ns_type": "udp", "port": 53}], "groups": [gall], "primary": True, "enabled": True})
    admin.ok("PUT", "/api/dns/settings", {"disabled_management_groups": [g["id"]]})
    admin.ok("DELETE", "/api/routes/" + r["id"])

    evs = api.ok("GET", "/api/events/audit")
    assert api.ok("GET", "/api/events") == evs
    top = [(e["activity_code"], e["target_id"]) for e in evs[:5]]
    assert top == [("route.delete", r["id"]), ("dns.setting.disabled.management.group.add", dep.account_id),
                   ("nameserver.group.add", ns["id"]), ("route.add", r["id"]), ("group.add", g["id"])], top
    for e in evs[:5]:
        assert (e["initiator_id"], e["initiator_name"], e["initiator_email"]) == (uid, "Ada Admin", "ada@x.test"), e
    assert evs[0]["activity"] == "Route deleted" and evs[3]["activity"] == "Route created", evs[:4]
    assert evs[0]["meta"] == {"name": "lan", "network_range": "10.1.0.0/16", "domains": "", "peer_id": pid,
                              "peer_groups": "<nil>"}, evs[0]
    assert evs[1]["meta"] == {"group": "ops", "group_id": g["id"]}, evs[1]
    assert evs[2]["meta"] == {"name": "dns"} and evs[4]["meta"] == {"name": "ops"}, evs[:5]
    # Registration with the setup key: peer.setupkey.add, no user behind it.
    reg = [e for e in evs if e["activity_code"] == "peer.setupkey.add"]
    assert len(reg) == 1 and reg[0]["target_id"] == pid and reg[0]["initiator_name"] == "", reg
    # Every event: all of NetBird's fields, ids distinct, newest first.
    keys = {"id", "timestamp", "activity", "activity_code", "initiator_id", "initiator_name", "initiator_email",
            "target_id", "meta"}
    rows = dict((str(i), (a, t)) for i, a, t in dep.sql(
        "SELECT id, activity, \"timestamp\" FROM events WHERE account_id = %s", (dep.account_id,)))
    assert sorted(e["id"] for e in evs) == sorted(rows), (evs, rows)
    for e in evs:
        assert set(e) == keys and TIMESTAMP.match(e["timestamp"]), e
        assert all(isinstance(v, str) for v in e["meta"].values()), e
    order = [(rows[e["id"]][1], int(e["id"])) for e in evs]
    assert order == sorted(order, reverse=True), order


@test
def events_order_time_and_meta():
    dep, srv, api = apifix.start()
    same = "2031-05-06 07:08:09.120000+00"
    ids = [add_event(dep, 16, meta='{"name": "g%d"}' % i, ts=same) for i in range(3)]
    old = add_event(dep, 17, ts="2001-02-03 04:05:06+00", meta=(
        '{"n": 53, "f": 1.5, "big": 1234567, "ok": 123456, "small": 0.00001, "tiny": 0.0001, "neg": -2,'
        ' "b": true, "nil": null, "arr": ["a", 1, null, [true]], "obj": {"z": 1, "a": "x"}, "s": "plain"}'))
    unknown = add_event(dep, 4242, ts="2031-05-06 07:08:09.000001+00")
    add_event(dep, 16, account="some-other-account", ts="2032-01-01 00:00:00+00")

    evs = api.ok("GET", "/api/events/audit")
    assert [e["id"] for e in evs[:4]] == [ids[2], ids[1], ids[0], unknown], evs[:4]
    assert evs[0]["timestamp"] == "2031-05-06T07:08:09.12Z", evs[0]
    assert evs[3]["timestamp"] == "2031-05-06T07:08:09.000001Z", evs[3]
    assert evs[3]["activity"] == "UNKNOWN_ACTIVITY" and evs[3]["activity_code"] == "UNKNOWN_ACTIVITY", evs[3]
    assert evs[-1]["id"] == old and evs[-1]["timestamp"] == "2001-02-03T04:05:06Z", evs[-1]
    assert evs[-1]["meta"] == {"n": "53", "f": "1.5", "big": "1.234567e+06", "ok": "123456", "small": "1e-05",
                               "tiny": "0.0001", "neg": "-2", "b": "true", "nil": "<nil>", "arr": "[a 1 <nil> [true]]",
                               "obj": "map[a:x z:1]", "s": "plain"}, evs[-1]
    # Another account's events never show.
    assert len(evs) == len(dep.sql("SELECT 1 FROM events WHERE account_id = %s", (dep.account_id,)))


@test
def events_user_names():
    dep, srv, api = apifix.start()
    uid, _ = apifix.user_token(dep, "user", name="Uma User", email="uma@x.test")
    add_event(dep, 22, initiator=dep.user_id, target=uid, meta='{"role": "user"}')
    # A deleted user: NetBird keeps name and e-mail from the event that had both.
    gone = "gone-user"
    add_event(dep, 47, initiator=dep.user_id, target=gone, meta='{"name": "Gus Gone", "email": "gus@x.test",'
                                                              ' "created_at": "2020"}')
    add_event(dep, 16, initiator=gone, target="g1", meta='{"name": "made by gus"}')
    # "user joined" twice for the same pair shows once (the newest).
    first = add_event(dep, 2, initiator=uid, target=uid)
    second = add_event(dep, 2, initiator=uid, target=uid)

    evs = api.ok("GET", "/api/events/audit")
    by_id = {e["id"]: e for e in evs}
    assert second in by_id and first not in by_id, [e["id"] for e in evs]
    assert by_id[second]["initiator_name"] == "Uma User" and by_id[second]["meta"] == \
        {"username": "Uma User", "email": "uma@x.test"}, by_id[second]
    role = [e for e in evs if e["activity_code"] == "user.role.update"][0]
    assert role["meta"] == {"role": "user", "username": "Uma User", "email": "uma@x.test"}, role
    assert role["initiator_id"] == dep.user_id, role
    deleted = [e for e in evs if e["activity_code"] == "user.delete"][0]
    assert deleted["meta"] == {"created_at": "2020", "username": "Gus Gone", "email": "gus@x.test"}, deleted
    made = [e for e in evs if e["target_id"] == "g1"][0]
    assert (made["initiator_name"], made["initiator_email"]) == ("Gus Gone", "gus@x.test"), made
    # The system initiator has no name.
    add_event(dep, 50, initiator="sys", target="p1")
    sys_ev = [e for e in api.ok("GET", "/api/events") if e["target_id"] == "p1"][0]
    assert (sys_ev["initiator_id"], sys_ev["initiator_name"], sys_ev["initiator_email"]) == ("sys", "", ""), sys_ev


@test
def events_permissions():
    dep, srv, api = apifix.start()
    add_event(dep, 16, meta='{"name": "x"}')
    _, auditor = apifix.role_api(dep, api, "auditor")
    _, netadmin = apifix.role_api(dep, api, "network_admin")
    _, user = apifix.role_api(dep, api, "user")
    n = len(api.ok("GET", "/api/events/audit"))
    assert n >= 1
    assert len(auditor.ok("GET", "/api/events/audit")) == n
    assert len(netadmin.ok("GET", "/api/events")) == n
    user.error("GET", "/api/events/audit", 403, message="permission denied")
    user.error("GET", "/api/events", 403, message="permission denied")
    apifix.Api(srv.url("")).error("GET", "/api/events/audit", 401, message="no valid authentication provided")
    api.error("POST", "/api/events/audit", 405)


@test
def instance_endpoints():
    dep, srv, api = apifix.start()
    anon = apifix.Api(srv.url(""))
    assert anon.ok("GET", "/api/instance") == {"setup_required": False}
    assert api.ok("GET", "/api/instance") == {"setup_required": False}
    # A bad token does not matter to a public endpoint.
    assert apifix.Api(srv.url(""), "nbp_garbage").ok("GET", "/api/instance") == {"setup_required": False}
    anon.error("GET", "/api/instance/version", 401, message="no valid authentication provided")
    v = api.ok("GET", "/api/instance/version")
    assert set(v) == {"management_current_version", "management_update_available"}, v
    assert isinstance(v["management_current_version"], str) and v["management_current_version"], v
    assert v["management_update_available"] is False, v
    _, user = apifix.role_api(dep, api, "user")
    assert user.ok("GET", "/api/instance/version") == v


if __name__ == "__main__":
    apifix.run_tests()
