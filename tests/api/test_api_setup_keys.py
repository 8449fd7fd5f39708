"""/api/setup-keys against the real server: create (the plain key once,
stored hashed), list/get (masked, state), update (revoke, auto-groups),
delete, every validation error, events, permissions, no serial bumps, and
a key made over the API registering agents."""

import datetime
import re

import apifix
from apifix import svc
import fixture
import grpc
from nbagent import RpcFailed, build_meta

test = svc.test

ZERO_TIME = "0001-01-01T00:00:00Z"
KEY_FIELDS = {"id", "key", "name", "expires", "type", "valid", "revoked", "used_times", "last_used", "state",
              "auto_groups", "updated_at", "usage_limit", "ephemeral", "allow_extra_dns_labels"}


def parse_ts(s):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", s), s
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def events(dep, target):
    return [(r[0], r[1]) for r in dep.sql(
        "SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
        (dep.account_id, target))]


def event_count(dep):
    return dep.sql("SELECT count(*) FROM events WHERE account_id = %s", (dep.account_id,))[0][0]


def key_count(dep):
    return dep.sql("SELECT count(*) FROM setup_keys WHERE account_id = %s", (dep.account_id,))[0][0]


def expect_bad_key(fn):
    try:
        fn()
    except RpcFailed as e:
        assert e.code == grpc.StatusCode.NOT_FOUND and "setup key is invalid" in e.details, (e.code, e.details)
        return
    raise AssertionError("registration with the key should have failed")


@test
def create_returns_the_plain_key_once():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "servers"})
    serial0, ev0 = dep.network_serial(), event_count(dep)
    t0 = now()
    k = api.ok("POST", "/api/setup-keys", {"name": "ci", "type": "reusable", "expires_in": 86400,
                                           "auto_groups": [g["id"]], "usage_limit": 5, "ephemeral": True,
                                           "allow_extra_dns_labels": True})
    assert set(k) == KEY_FIELDS, sorted(k)
    plain = k["key"]
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", plain), plain
    assert (k["name"], k["type"], k["usage_limit"], k["used_times"]) == ("ci", "reusable", 5, 0), k
    assert k["ephemeral"] is True and k["allow_extra_dns_labels"] is True and k["revoked"] is False, k
    assert k["valid"] is True and k["state"] == "valid" and k["auto_groups"] == [g["id"]], k
    assert k["last_used"] == ZERO_TIME, k
    exp = parse_ts(k["expires"])
    assert datetime.timedelta(hours=23) < exp - t0 < datetime.timedelta(hours=25), (exp, t0)
    parse_ts(k["updated_at"])
    # Stored hashed (what Login looks up) with the masked form; never plain.
    rows = dep.sql("SELECT key, key_secret FROM setup_keys WHERE id = %s", (k["id"],))
    assert rows == [(fixture.setup_key_hash(plain), plain[:5] + "****")], rows
    assert not dep.sql("SELECT 1 FROM setup_keys WHERE key = %s OR key_secret = %s", (plain, plain))
    # Every later read shows the masked key only.
    got = api.ok("GET", "/api/setup-keys/" + k["id"])
    assert got["key"] == plain[:5] + "****", got
    assert {x: got[x] for x in got if x != "key"} == {x: k[x] for x in k if x != "key"}, (got, k)
    listed = api.ok("GET", "/api/setup-keys")
    assert [x["name"] for x in listed] == ["Default key", "ci"], listed
    assert all(set(x) == KEY_FIELDS and x["key"].endswith("****") for x in listed), listed
    assert listed[1] == got
    # Events: created (name, type, masked key), then the group added to the key.
    ev = events(dep, k["id"])
    assert ev == [(12, {"name": "ci", "type": "reusable", "key": plain[:5] + "****"}),
                  (23, {"group": "servers", "group_id": g["id"], "setupkey": "ci"})], ev
    assert event_count(dep) == ev0 + 2
    # Setup keys are not in network maps: no serial bump.
    assert dep.network_serial() == serial0


@test
def defaults_and_one_off():
    dep, srv, api = apifix.start()
    # Only name and type: never expires, unlimited, no groups.
    k = api.ok("POST", "/api/setup-keys", {"name": "plain", "type": "reusable"})
    assert k["expires"] == ZERO_TIME and k["usage_limit"] == 0 and k["auto_groups"] == [], k
    assert k["ephemeral"] is False and k["allow_extra_dns_labels"] is False, k
    assert dep.sql("SELECT expires_at FROM setup_keys WHERE id = %s", (k["id"],)) == [(None,)]
    # expires_in 0 also means never; a one-off key is limited to one use.
    k1 = api.ok("POST", "/api/setup-keys", {"name": "once", "type": "one-off", "expires_in": 0, "usage_limit": 0})
    assert k1["type"] == "one-off" and k1["usage_limit"] == 1 and k1["expires"] == ZERO_TIME, k1
    k2 = api.ok("POST", "/api/setup-keys", {"name": "once too", "type": "one-off", "usage_limit": 1})
    assert k2["usage_limit"] == 1, k2
    # Duplicate auto-groups are kept once, in first-seen order.
    ga = api.ok("POST", "/api/groups", {"name": "a"})["id"]
    gb = api.ok("POST", "/api/groups", {"name": "b"})["id"]
    k3 = api.ok("POST", "/api/setup-keys", {"name": "dups", "type": "reusable", "auto_groups": [gb, ga, gb]})
    assert k3["auto_groups"] == [gb, ga], k3
    assert [a for a, _ in events(dep, k3["id"])] == [12, 23, 23]


@test
def state_follows_netbirds_rules():
    dep, srv, api = apifix.start()
    cases = {
        "expired": dict(expires_in_s=-60),
        "revoked": dict(revoked=True),
        "overused": dict(usage_limit=2, used_times=2),
        "valid": dict(usage_limit=2, used_times=1, expires_in_s=3600),
    }

    def key_id(plain):
        return dep.sql("SELECT id FROM setup_keys WHERE key = %s", (fixture.setup_key_hash(plain),))[0][0]

    want = {key_id(dep.add_setup_key(**kw)): state for state, kw in cases.items()}
    # Expired wins over revoked, which wins over overused; one-off means one use.
    want[key_id(dep.add_setup_key(expires_in_s=-60, revoked=True, usage_limit=1, used_times=1))] = "expired"
    want[key_id(dep.add_setup_key(revoked=True, usage_limit=1, used_times=1))] = "revoked"
    want[key_id(dep.add_setup_key(type_="one-off", used_times=1))] = "overused"
    for kid, state in want.items():
        k = api.ok("GET", "/api/setup-keys/" + kid)
        assert k["state"] == state and k["valid"] is (state == "valid"), (state, k)


@test
def api_key_registers_agents():
    """A key made over the API is what Login looks up: it registers a peer
    into its auto-groups and counts the use; a one-off key then refuses a
    second peer and reports "overused"."""
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "fleet"})
    k = api.ok("POST", "/api/setup-keys", {"name": "fleet key", "type": "one-off", "auto_groups": [g["id"]]})
    a = dep.agent()
    a.register(k["key"].lower(), meta=build_meta("fleet-1"))     # any case works, as in NetBird
    pid = dep.peers()[a.pub_b64]["id"]
    assert "fleet" in dep.peer_groups(pid), dep.peer_groups(pid)
    got = api.ok("GET", "/api/setup-keys/" + k["id"])
    assert got["used_times"] == 1 and got["state"] == "overused" and got["valid"] is False, got
    assert abs(parse_ts(got["last_used"]) - now()) < datetime.timedelta(minutes=5), got
    expect_bad_key(lambda: dep.agent().login(setup_key=k["key"], meta=build_meta("fleet-2")))
    assert len(dep.peers()) == 1


@test
def update_revokes_and_changes_groups():
    dep, srv, api = apifix.start()
    ga = api.ok("POST", "/api/groups", {"name": "ga"})["id"]
    gb = api.ok("POST", "/api/groups", {"name": "gb"})["id"]
    gc = api.ok("POST", "/api/groups", {"name": "gc"})["id"]
    k = api.ok("POST", "/api/setup-keys", {"name": "k", "type": "reusable", "auto_groups": [ga, gb],
                                           "usage_limit": 3})
    serial0 = dep.network_serial()
    # Groups: gb stays, ga leaves, gc joins. Other fields are not changed by PUT.
    u = api.ok("PUT", "/api/setup-keys/" + k["id"], {"revoked": False, "auto_groups": [gb, gc],
                                                     "name": "renamed", "usage_limit": 9, "type": "one-off"})
    assert u["auto_groups"] == [gb, gc] and u["revoked"] is False and u["state"] == "valid", u
    assert (u["name"], u["type"], u["usage_limit"], u["key"]) == ("k", "reusable", 3, k["key"][:5] + "****"), u
    assert parse_ts(u["updated_at"]) >= parse_ts(k["updated_at"]), (u, k)
    ev = events(dep, k["id"])[3:]      # after created and two groups added
    assert ev == [(24, {"group": "ga", "group_id": ga, "setupkey": "k"}),
                  (23, {"group": "gc", "group_id": gc, "setupkey": "k"})], ev
    # The same again changes nothing and writes no event.
    n = event_count(dep)
    api.ok("PUT", "/api/setup-keys/" + k["id"], {"revoked": False, "auto_groups": [gb, gc]})
    assert event_count(dep) == n
    # Revoking: the revoked event; the key no longer registers anyone.
    r = api.ok("PUT", "/api/setup-keys/" + k["id"], {"revoked": True, "auto_groups": []})
    assert r["revoked"] is True and r["state"] == "revoked" and r["valid"] is False and r["auto_groups"] == [], r
    ev = events(dep, k["id"])[5:]
    assert [a for a, _ in ev] == [14, 24, 24], ev
    assert ev[0][1] == {"name": "k", "type": "reusable", "key": k["key"][:5] + "****"}, ev
    expect_bad_key(lambda: dep.agent().login(setup_key=k["key"], meta=build_meta("late")))
    # Still revoked when "revoked" is true again; un-revoking is refused.
    api.ok("PUT", "/api/setup-keys/" + k["id"], {"revoked": True, "auto_groups": []})
    api.error("PUT", "/api/setup-keys/" + k["id"], 422, {"revoked": False, "auto_groups": []},
              message="can't un-revoke a revoked setup key")
    api.error("PUT", "/api/setup-keys/" + k["id"], 422, {"auto_groups": []},
              message="can't un-revoke a revoked setup key")
    assert api.ok("GET", "/api/setup-keys/" + k["id"])["revoked"] is True
    assert dep.network_serial() == serial0


@test
def update_validation():
    dep, srv, api = apifix.start()
    all_id = api.ok("GET", "/api/groups")[0]["id"]
    g = api.ok("POST", "/api/groups", {"name": "g"})["id"]
    k = api.ok("POST", "/api/setup-keys", {"name": "k", "type": "reusable", "auto_groups": [g]})
    path = "/api/setup-keys/" + k["id"]
    n, serial0 = event_count(dep), dep.network_serial()
    api.error("PUT", path, 400, raw="{", message="couldn't parse JSON request")
    api.error("PUT", path, 400, {"revoked": "yes", "auto_groups": []}, message="couldn't parse JSON request")
    api.error("PUT", path, 400, {"revoked": True, "auto_groups": "g"}, message="couldn't parse JSON request")
    api.error("PUT", path, 400, {"revoked": True, "auto_groups": [1]}, message="couldn't parse JSON request")
    api.error("PUT", path, 422, {"revoked": True}, message="setup key autogroups field is invalid")
    api.error("PUT", path, 422, {"revoked": True, "auto_groups": None}, message="setup key autogroups field is invalid")
    b = api.error("PUT", path, 422, {"revoked": True, "auto_groups": [g, "NoSuchGroup"]})
    assert b["message"] == "invalid auto groups: group not found: nosuchgroup", b      # lower-cased, as NetBird
    b = api.error("PUT", path, 422, {"revoked": True, "auto_groups": [all_id]})
    assert b["message"] == "invalid auto groups: can't add 'all' group to the setup key", b
    b = api.error("PUT", "/api/setup-keys/NoSuchKey", 404, {"revoked": True, "auto_groups": []})
    assert b["message"] == "setup key: nosuchkey not found", b
    # Nothing changed.
    got = api.ok("GET", path)
    assert got["revoked"] is False and got["auto_groups"] == [g] and got["updated_at"] == k["updated_at"], got
    assert event_count(dep) == n and dep.network_serial() == serial0


@test
def create_validation():
    dep, srv, api = apifix.start()
    all_id = api.ok("GET", "/api/groups")[0]["id"]
    keys0, n, serial0 = key_count(dep), event_count(dep), dep.network_serial()

    def bad(status, body, message=None, raw=None):
        b = api.error("POST", "/api/setup-keys", status, body, raw=raw)
        if message is not None:
            assert b["message"] == message, (body, b)

    bad(400, None, "couldn't parse JSON request", raw="not json")
    bad(400, None, "couldn't parse JSON request", raw="[]")
    bad(400, {"name": 1, "type": "reusable"}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "expires_in": "1d"}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "expires_in": 1.5}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "usage_limit": "2"}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "ephemeral": "true"}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "allow_extra_dns_labels": 1}, "couldn't parse JSON request")
    bad(400, {"name": "x", "type": "reusable", "auto_groups": [None]}, "couldn't parse JSON request")
    # A type error is reported before any other problem, as NetBird's decoder does.
    bad(400, {"name": "", "type": "reusable", "ephemeral": 0}, "couldn't parse JSON request")
    bad(422, {"type": "reusable"}, "setup key name shouldn't be empty")
    bad(422, {"name": "", "type": "reusable"}, "setup key name shouldn't be empty")
    bad(422, {"name": "x"}, "unknown setup key type ")
    bad(422, {"name": "x", "type": "Multi"}, "unknown setup key type multi")
    bad(422, {"name": "x", "type": "one-off", "usage_limit": 2},
        "usage_limit 2 is not valid for a one-off setup key, which can be used once; use type reusable for a key"
        " that can be used more than once")
    bad(422, {"name": "x", "type": "reusable", "expires_in": -1}, "expiresin can not be in the past")
    bad(422, {"name": "x", "type": "reusable", "expires_in": 9223372037}, "expires_in must be between 0 and 9223372036")
    bad(422, {"name": "x", "type": "reusable", "usage_limit": -1}, "usage_limit must be between 0 and 2147483647")
    bad(422, {"name": "x", "type": "reusable", "usage_limit": 2147483648},
        "usage_limit must be between 0 and 2147483647")
    bad(422, {"name": "x", "type": "reusable", "auto_groups": ["nope"]}, "invalid auto groups: group not found: nope")
    bad(422, {"name": "x", "type": "reusable", "auto_groups": [all_id]},
        "invalid auto groups: can't add 'all' group to the setup key")
    # Nothing half-written: no key, no event, no serial bump.
    assert key_count(dep) == keys0 and event_count(dep) == n and dep.network_serial() == serial0


@test
def delete_key():
    dep, srv, api = apifix.start()
    k = api.ok("POST", "/api/setup-keys", {"name": "gone", "type": "reusable"})
    serial0 = dep.network_serial()
    assert api.ok("DELETE", "/api/setup-keys/" + k["id"]) == {}
    b = api.error("GET", "/api/setup-keys/" + k["id"], 404)
    assert b["message"] == "setup key: %s not found" % k["id"], b
    api.error("DELETE", "/api/setup-keys/" + k["id"], 404, message="not found")
    assert events(dep, k["id"])[-1] == (68, {"name": "gone", "type": "reusable", "key": k["key"][:5] + "****"})
    assert [x["name"] for x in api.ok("GET", "/api/setup-keys")] == ["Default key"]
    expect_bad_key(lambda: dep.agent().login(setup_key=k["key"], meta=build_meta("after-delete")))
    assert dep.network_serial() == serial0
    # A key used by a peer can be deleted; the peer stays.
    k2 = api.ok("POST", "/api/setup-keys", {"name": "used", "type": "reusable"})
    a = dep.agent()
    a.register(k2["key"], meta=build_meta("stays"))
    api.ok("DELETE", "/api/setup-keys/" + k2["id"])
    assert a.pub_b64 in dep.peers()


@test
def keys_of_other_accounts_are_invisible():
    dep, srv, api = apifix.start()
    api2 = api.as_token(apifix.second_account(dep)["ADMIN_TOKEN"])
    k2 = api2.ok("POST", "/api/setup-keys", {"name": "theirs", "type": "reusable"})
    assert "theirs" not in [x["name"] for x in api.ok("GET", "/api/setup-keys")]
    api.error("GET", "/api/setup-keys/" + k2["id"], 404)
    api.error("PUT", "/api/setup-keys/" + k2["id"], 404, {"revoked": True, "auto_groups": []})
    api.error("DELETE", "/api/setup-keys/" + k2["id"], 404)
    # Nor can another account's group be an auto-group.
    g2 = api2.ok("POST", "/api/groups", {"name": "theirs"})["id"]
    api.error("POST", "/api/setup-keys", 422, {"name": "x", "type": "reusable", "auto_groups": [g2]},
              message="group not found")
    assert api2.ok("GET", "/api/setup-keys/" + k2["id"])["revoked"] is False


@test
def permissions():
    dep, srv, api = apifix.start()
    k = api.ok("POST", "/api/setup-keys", {"name": "k", "type": "reusable"})
    body = {"name": "x", "type": "reusable"}
    upd = {"revoked": False, "auto_groups": []}
    path = "/api/setup-keys/" + k["id"]
    for role, can_read, can_write in (("admin", True, True), ("network_admin", True, False),
                                      ("auditor", True, False), ("user", False, False),
                                      ("billing_admin", False, False)):
        _, a = apifix.role_api(dep, api, role)
        for method, p, b, allowed in (("GET", "/api/setup-keys", None, can_read), ("GET", path, None, can_read),
                                      ("POST", "/api/setup-keys", body, can_write), ("PUT", path, upd, can_write)):
            st, resp, _ = a.call(method, p, body=b)
            if allowed:
                assert st == 200, (role, method, p, st, resp)
            else:
                assert st == 403 and resp == {"message": "permission denied", "code": 403}, (role, method, st, resp)
        if not can_write:
            a.error("DELETE", path, 403, message="permission denied")
    # A service user reads whatever its role.
    _, svc_api = apifix.role_api(dep, api, "user", service=True)
    svc_api.ok("GET", "/api/setup-keys")
    svc_api.error("POST", "/api/setup-keys", 403, body)
    # No token at all.
    api.as_token(None).error("GET", "/api/setup-keys", 401, message="no valid authentication provided")
    api.ok("DELETE", path)


if __name__ == "__main__":
    apifix.run_tests()
