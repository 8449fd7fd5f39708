"""/api/accounts against the real server: the account with its settings,
settings updates (validation, events, serial bumps, the new network range
re-addressing every peer, group propagation, peer approval), roles and
account deletion."""

import datetime
import ipaddress

import apifix
from apifix import settings, sql_peer, svc

test = svc.test

NS = 1000000000


# ---- helpers ------------------------------------------------------------------

def peer_ips(dep):
    return dict(dep.sql("SELECT id, host(ip) FROM peers WHERE account_id = %s", (dep.account_id,)))


def activities(dep, since=0):
    return [r[0] for r in dep.sql("SELECT activity FROM events WHERE account_id = %s AND id > %s ORDER BY id",
                                  (dep.account_id, since))]


def last_event_id(dep):
    return dep.sql("SELECT COALESCE(max(id), 0) FROM events")[0][0]


# ---- GET ----------------------------------------------------------------------

@test
def get_account_with_settings():
    dep, srv, api = apifix.start()
    accts = api.ok("GET", "/api/accounts")
    assert isinstance(accts, list) and len(accts) == 1, accts
    a = accts[0]
    assert a["id"] == dep.account_id and a["created_by"] == dep.user_id, a
    assert a["domain"] == "" and a["domain_category"] == "" and a["created_at"].endswith("Z"), a
    assert a["onboarding"] == {"signup_form_pending": False, "onboarding_flow_pending": False}, a
    s = a["settings"]
    want = settings()["settings"]
    for k, v in want.items():
        assert s[k] == v, (k, s[k], v)
    assert s["network_range"] == str(dep.network), s
    assert s["extra"]["peer_approval_enabled"] is False and s["extra"]["user_approval_required"] is False, s
    assert s["ipv6_enabled_groups"] == [] and s["auto_update_version"] == "", s
    # The same object is what PUT answers.
    put = api.ok("PUT", "/api/accounts/" + dep.account_id, settings())
    assert put == a, (put, a)


# ---- PUT ----------------------------------------------------------------------

@test
def update_settings_writes_events_and_bumps_serial():
    dep, srv, api = apifix.start()
    serial0, ev0 = dep.network_serial(), last_event_id(dep)
    body = settings(peer_login_expiration_enabled=False, peer_login_expiration=7200,
                    peer_inactivity_expiration_enabled=True, peer_inactivity_expiration=3600,
                    regular_users_view_blocked=False, groups_propagation_enabled=False,
                    routing_peer_dns_resolution_enabled=False, dns_domain="corp.example",
                    lazy_connection_enabled=True, jwt_groups_enabled=True, jwt_groups_claim_name="roles",
                    jwt_allow_groups=["ops", "dev"], extra={"peer_approval_enabled": True,
                                                            "user_approval_required": True})
    a = api.ok("PUT", "/api/accounts/" + dep.account_id, body)
    s = a["settings"]
    for k, v in body["settings"].items():
        if k != "extra":
            assert s[k] == v, (k, s[k], v)
    assert s["extra"]["peer_approval_enabled"] is True and s["extra"]["user_approval_required"] is True, s
    assert api.ok("GET", "/api/accounts")[0] == a
    row = dep.sql("SELECT settings_peer_login_expiration, settings_peer_inactivity_expiration,"
                  " settings_jwt_allow_groups FROM accounts WHERE id = %s", (dep.account_id,))
    assert row == [(7200 * NS, 3600 * NS, ["ops", "dev"])], row
    # One bump for the whole change; NetBird's events in its order.
    assert dep.network_serial() == serial0 + 1
    assert activities(dep, ev0) == [72, 85, 39, 40, 70, 65, 67, 84, 55], activities(dep, ev0)
    meta = dep.sql("SELECT initiator_id, target_id, meta FROM events WHERE activity = 84")
    assert meta == [(dep.user_id, dep.account_id, {"old_dns_domain": "", "new_dns_domain": "corp.example"})], meta

    # The same settings again change nothing.
    serial1, ev1 = dep.network_serial(), last_event_id(dep)
    api.ok("PUT", "/api/accounts/" + dep.account_id, body)
    assert dep.network_serial() == serial1 and activities(dep, ev1) == []

    # And back: the opposite events.
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings(extra={"peer_approval_enabled": False}))
    assert activities(dep, ev1) == [71, 86, 38, 40, 69, 66, 67, 84, 56], activities(dep, ev1)
    assert dep.network_serial() == serial1 + 1


@test
def settings_that_leave_maps_alone_do_not_bump_the_serial():
    dep, srv, api = apifix.start()
    serial0, ev0 = dep.network_serial(), last_event_id(dep)
    api.ok("PUT", "/api/accounts/" + dep.account_id,
           settings(regular_users_view_blocked=False, jwt_groups_enabled=True, peer_inactivity_expiration=900))
    assert dep.network_serial() == serial0
    assert activities(dep, ev0) == [67], activities(dep, ev0)


@test
def put_replaces_the_settings():
    """NetBird's PUT: an absent field is false / empty, except "extra"
    (kept) and, here, the inactivity duration (kept when 0 or absent)."""
    dep, srv, api = apifix.start()
    api.ok("PUT", "/api/accounts/" + dep.account_id,
           settings(extra={"peer_approval_enabled": True, "user_approval_required": False}))
    a = api.ok("PUT", "/api/accounts/" + dep.account_id,
               {"settings": {"peer_login_expiration": 3600, "peer_login_expiration_enabled": True}})
    s = a["settings"]
    assert s["groups_propagation_enabled"] is False and s["routing_peer_dns_resolution_enabled"] is False, s
    assert s["regular_users_view_blocked"] is False and s["peer_inactivity_expiration"] == 600, s
    assert s["extra"]["peer_approval_enabled"] is True, s
    # Unknown fields, and known ones this server does not keep, are ignored.
    body = settings(auto_update_version="latest", metrics_push_enabled=True, ipv6_enabled_groups=["x"],
                    network_range_v6="fd00::/64", something_new={"a": 1})
    body["onboarding"] = {"signup_form_pending": True, "onboarding_flow_pending": True}
    body["whatever"] = 1
    a = api.ok("PUT", "/api/accounts/" + dep.account_id, body)
    assert a["settings"]["metrics_push_enabled"] is False and a["onboarding"]["signup_form_pending"] is False, a


@test
def update_validation():
    dep, srv, api = apifix.start()
    path = "/api/accounts/" + dep.account_id
    serial0, ev0 = dep.network_serial(), last_event_id(dep)
    before = api.ok("GET", "/api/accounts")
    api.error("PUT", path, 400, raw="{nope", message="couldn't parse JSON request")
    api.error("PUT", path, 400, raw="[]")
    api.error("PUT", path, 400, {"settings": 1})
    api.error("PUT", path, 400, settings(peer_login_expiration="1h"))
    api.error("PUT", path, 400, settings(peer_login_expiration=3600.5))
    api.error("PUT", path, 400, settings(lazy_connection_enabled="yes"))
    api.error("PUT", path, 400, settings(jwt_allow_groups="ops"))
    api.error("PUT", path, 400, settings(dns_domain=5))
    api.error("PUT", path, 400, settings(extra=[]))
    api.error("PUT", path, 400, settings(extra={"peer_approval_enabled": 1}))
    api.error("PUT", path, 400, settings(auto_update_version=1))     # ignored, but typed
    api.error("PUT", path, 400, dict(settings(), onboarding={"signup_form_pending": "no"}))
    api.error("PUT", path, 422, settings(peer_login_expiration=3599),
              message="peer login expiration can't be smaller than one hour")
    api.error("PUT", path, 422, {}, message="peer login expiration can't be smaller than one hour")
    api.error("PUT", path, 422, settings(peer_login_expiration=180 * 86400 + 1),
              message="peer login expiration can't be larger than 180 days")
    api.error("PUT", path, 422, settings(peer_inactivity_expiration=-5))
    for bad in ("bad_domain-", "*.example.com", "a..b", "-a.example", "exa mple.com", "example.com.",
                "x" * 64 + ".com", "a.-b", "a.b-"):
        api.error("PUT", path, 422, settings(dns_domain=bad),
                  message='invalid domain "%s" provided for dns domain' % bad)
    for bad, msg in (("10.0.0.0", "invalid cidr format"), ("10.0.0/16", "invalid cidr format"),
                     ("10.0.0.0/33", "invalid cidr format"), ("10.0.0.0/x", "invalid cidr format"),
                     ("fd00::/64", "network range must be an ipv4 address"),
                     ("127.0.0.0/16", "loopback address range not allowed"),
                     ("224.1.0.0/16", "multicast address range not allowed"),
                     ("169.254.0.0/16", "link-local address range not allowed"),
                     ("10.0.0.0/29", "network range too small: minimum size is /28 for ipv4"),
                     ("10.0.0.0/7", "network range too large")):
        api.error("PUT", path, 422, settings(network_range=bad), message=msg)
    # Not our account: NetBird's permission error.
    api.error("PUT", "/api/accounts/someone-else", 403, settings(),
              message="failed to validate user permissions: user is not part of this account")
    # Nothing moved.
    assert dep.network_serial() == serial0 and activities(dep, ev0) == []
    assert api.ok("GET", "/api/accounts") == before


@test
def valid_dns_domains():
    dep, srv, api = apifix.start()
    path = "/api/accounts/" + dep.account_id
    for good in ("netbird.cloud", "Corp.Example", "a", "xn--bcher-kva.example", "_srv.example.com", "a-b.c1"):
        assert api.ok("PUT", path, settings(dns_domain=good))["settings"]["dns_domain"] == good
    rows = dep.sql("SELECT meta FROM events WHERE activity = 84 ORDER BY id")
    assert rows[-1][0] == {"old_dns_domain": "_srv.example.com", "new_dns_domain": "a-b.c1"}, rows


@test
def network_range_moves_every_peer():
    dep, srv, api = apifix.start()
    a = dep.agent()
    a.register(dep.setup_key)
    stream = a.sync()
    first = stream.next(timeout=10)
    assert ipaddress.ip_interface(first.peerConfig.address).ip in dep.network, first.peerConfig
    # More peers: one low in the old range, then some already holding the
    # first addresses of the new range (the old range's second /24), so a
    # one-step re-addressing would collide with them.
    extra = [sql_peer(dep, 10)] + [sql_peer(dep, 257 + i) for i in range(4)]
    old_range = str(dep.network)
    new_range = str(ipaddress.ip_network("%s/24" % (dep.network.network_address + 256)))
    serial0, ev0 = dep.network_serial(), last_event_id(dep)

    s = api.ok("PUT", "/api/accounts/" + dep.account_id, settings(network_range=new_range))["settings"]
    assert s["network_range"] == new_range, s
    ips = peer_ips(dep)
    assert len(ips) == 6 and len(set(ips.values())) == 6, ips
    net = ipaddress.ip_network(new_range)
    moved = {pid for pid, ip in ips.items() if ipaddress.ip_address(ip) in net and ip != str(net.network_address)}
    assert moved == set(ips), ips
    assert set(extra) <= moved, (extra, ips)
    assert dep.sql("SELECT network_net::text, settings_network_range::text FROM accounts WHERE id = %s",
                   (dep.account_id,)) == [(new_range, new_range)]
    assert dep.network_serial() == serial0 + 1
    ev = dep.sql("SELECT activity, meta FROM events WHERE id > %s ORDER BY id", (ev0,))
    assert ev == [(87, {"old_network_range": old_range, "new_network_range": new_range})], ev
    # The agent is told its new address.
    want = ips[dep.peers()[a.pub_b64]["id"]] + "/24"
    stream.wait_for(lambda m: m.peerConfig.address == want, timeout=10)

    # A prefix with host bits is masked; the same range again moves nothing.
    ev1 = last_event_id(dep)
    host_bits = str(net.network_address + 5) + "/24"
    assert api.ok("PUT", "/api/accounts/" + dep.account_id,
                  settings(network_range=host_bits))["settings"]["network_range"] == new_range
    assert peer_ips(dep) == ips and activities(dep, ev1) == []
    # Leaving it out keeps the range.
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings())
    assert api.ok("GET", "/api/accounts")[0]["settings"]["network_range"] == new_range


@test
def network_range_needs_room_for_the_peers():
    dep, srv, api = apifix.start()
    for i in range(10):
        sql_peer(dep, 10 + i)
    ips = peer_ips(dep)
    api.error("PUT", "/api/accounts/" + dep.account_id, 422, settings(network_range="10.9.0.0/28"),
              message="network range too small: need at least 15 addresses for 10 peers + buffer,"
                      " but range provides 14")
    assert peer_ips(dep) == ips
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings(network_range="10.9.0.0/27"))
    assert all(ip.startswith("10.9.0.") for ip in peer_ips(dep).values())


@test
def registration_waits_for_a_range_change():
    """A peer registering while the range changes gets an address in the
    new range: registration reads the range under a key-share lock, which
    the API's write lock on the account row holds off until commit."""
    import threading
    import psycopg2
    dep, srv, api = apifix.start()
    new_range = "10.30.0.0/24"
    conn = psycopg2.connect(dep.dsn)
    try:
        cur = conn.cursor()
        # What PUT /api/accounts does, held open: the row lock, then the move.
        cur.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (dep.account_id,))
        cur.execute("UPDATE accounts SET network_net = %s WHERE id = %s", (new_range, dep.account_id))
        a = dep.agent()
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("r", a.register(dep.setup_key)), daemon=True)
        t.start()
        # The registration is waiting on a lock held by this transaction.
        waiting = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid"
                   " WHERE NOT l.granted AND s.datname = current_database()")
        apifix.fixture.wait_until(lambda: dep.sql(waiting)[0][0] > 0, timeout=20,
                                  what="registration waiting on the account row")
        conn.commit()
    finally:
        conn.close()
    t.join(30)
    assert "r" in done, "registration did not finish"
    ip = dep.peers()[a.pub_b64]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(new_range), ip


@test
def settings_reach_the_agents():
    dep, srv, api = apifix.start()
    a = dep.agent()
    a.register(dep.setup_key)
    stream = a.sync()
    first = stream.next(timeout=10)
    assert first.peerConfig.LazyConnectionEnabled is False
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings(lazy_connection_enabled=True))
    m = stream.wait_for(lambda m: m.peerConfig.LazyConnectionEnabled, timeout=10)
    assert m.NetworkMap.Serial == dep.network_serial(), (m.NetworkMap.Serial, dep.network_serial())


@test
def enabling_group_propagation_fills_the_groups():
    dep, srv, api = apifix.start()
    path = "/api/accounts/" + dep.account_id
    api.ok("PUT", path, settings(groups_propagation_enabled=False))
    g = api.ok("POST", "/api/groups", {"name": "staff"})["id"]
    uid = apifix.sql_user(dep, "user")
    peer = sql_peer(dep, 77, user_id=uid)
    api.ok("PUT", "/api/users/" + uid, {"role": "user", "auto_groups": [g]})
    assert dep.peer_groups(peer) == []
    serial0, ev0 = dep.network_serial(), last_event_id(dep)
    api.ok("PUT", path, settings(groups_propagation_enabled=True))
    assert dep.peer_groups(peer) == ["staff"]
    assert activities(dep, ev0) == [69] and dep.network_serial() == serial0 + 1


@test
def disabling_peer_approval_approves_waiting_peers():
    dep, srv, api = apifix.start()
    path = "/api/accounts/" + dep.account_id
    api.ok("PUT", path, settings(extra={"peer_approval_enabled": True}))
    peer = sql_peer(dep, 42)
    dep.sql("UPDATE peers SET peer_status_requires_approval = TRUE WHERE id = %s", (peer,))
    # Without "extra" the setting stands and nobody is approved.
    api.ok("PUT", path, settings())
    assert dep.sql("SELECT peer_status_requires_approval FROM peers WHERE id = %s", (peer,)) == [(True,)]
    serial0, ev0 = dep.network_serial(), last_event_id(dep)
    api.ok("PUT", path, settings(extra={"peer_approval_enabled": False}))
    assert dep.sql("SELECT peer_status_requires_approval FROM peers WHERE id = %s", (peer,)) == [(False,)]
    assert activities(dep, ev0) == [56] and dep.network_serial() == serial0 + 1


# ---- roles ----------------------------------------------------------------------

@test
def who_may_read_and_change_the_account():
    dep, srv, api = apifix.start()
    path = "/api/accounts/" + dep.account_id
    tokens = {}
    for name, role, service in (("svc_user", "user", True), ("svc_admin", "admin", True),
                                ("regular", "user", False), ("auditor", "auditor", False),
                                ("netadmin", "network_admin", False), ("admin", "admin", False),
                                ("billing", "billing_admin", False)):
        _, tokens[name] = apifix.role_api(dep, api, role, service=service)
    for name in ("svc_user", "svc_admin", "auditor", "netadmin", "admin"):
        assert tokens[name].ok("GET", "/api/accounts")[0]["id"] == dep.account_id, name
    for name in ("regular", "billing"):
        tokens[name].error("GET", "/api/accounts", 403, message="permission denied")
    for name in ("svc_user", "regular", "auditor", "netadmin", "billing"):
        tokens[name].error("PUT", path, 403, settings(), message="permission denied")
    tokens["svc_admin"].ok("PUT", path, settings(lazy_connection_enabled=True))
    tokens["admin"].ok("PUT", path, settings(lazy_connection_enabled=False))
    for name in ("svc_user", "svc_admin", "auditor", "netadmin", "admin", "regular"):
        tokens[name].error("DELETE", path, 403,
                           message="user is not allowed to delete account. only account owner can delete account")
    assert dep.sql("SELECT count(*) FROM accounts") == [(1,)]


# ---- DELETE ---------------------------------------------------------------------

@test
def delete_account_removes_everything():
    dep, srv, api = apifix.start()
    # A second account that must survive.
    b = apifix.second_account(dep)
    other = b["ACCOUNT_ID"]
    api.error("DELETE", "/api/accounts/" + other, 403,
              message="failed to validate user permissions: user is not part of this account")

    a = dep.agent()
    a.register(dep.setup_key)
    api.ok("POST", "/api/groups", {"name": "g"})
    su = api.ok("POST", "/api/users", {"role": "admin", "is_service_user": True, "name": "bot"})
    api.ok("POST", "/api/users/%s/tokens" % su["id"], {"name": "t", "expires_in": 1})
    created = dep.sql("SELECT created_at FROM accounts WHERE id = %s", (dep.account_id,))[0][0]

    assert api.ok("DELETE", "/api/accounts/" + dep.account_id) == {}
    for table in ("accounts", "users", "personal_access_tokens", "peers", "groups", "group_peers", "policies",
                  "policy_rules", "routes", "setup_keys", "name_server_groups"):
        col = "id" if table == "accounts" else "account_id"
        n = dep.sql("SELECT count(*) FROM %s WHERE %s = %%s" % (table, col), (dep.account_id,))[0][0]
        assert n == 0, (table, n)
    # Only the AccountDeleted event is left of its log.
    ev = dep.sql("SELECT activity, initiator_id, target_id, meta FROM events WHERE account_id = %s",
                 (dep.account_id,))
    assert len(ev) == 1 and ev[0][:3] == (99999, dep.user_id, dep.account_id), ev
    # Its meta is the deleted account's (jsonb's ISO 8601 timestamp).
    meta = ev[0][3]
    assert meta["account_id"] == dep.account_id and meta["domain"] == "", ev
    assert datetime.datetime.fromisoformat(meta["created_at"]) == created, (meta, created)
    api.error("GET", "/api/accounts", 401, message="token invalid")
    # The other account is untouched.
    assert api.as_token(b["ADMIN_TOKEN"]).ok("GET", "/api/accounts")[0]["id"] == other


@test
def peer_expose_settings_are_kept():
    dep, srv, api = apifix.start()
    gid = apifix.all_group(api)
    path = "/api/accounts/" + dep.account_id
    ev0 = last_event_id(dep)
    api.error("PUT", path, 422, settings(peer_expose_enabled=True), message="peer expose requires at least one group")
    a = api.ok("PUT", path, settings(peer_expose_enabled=True, peer_expose_groups=[gid]))
    assert a["settings"]["peer_expose_enabled"] is True and a["settings"]["peer_expose_groups"] == [gid], a
    assert api.ok("GET", "/api/accounts")[0]["settings"]["peer_expose_groups"] == [gid]
    assert dep.sql("SELECT settings_peer_expose_enabled, settings_peer_expose_groups FROM accounts"
                   " WHERE id = %s", (dep.account_id,))[0] == (True, [gid])
    a = api.ok("PUT", path, settings())
    assert a["settings"]["peer_expose_enabled"] is False and a["settings"]["peer_expose_groups"] == [], a
    codes = [r[0] for r in dep.sql("SELECT activity FROM events WHERE id > %s ORDER BY id", (ev0,))]
    assert codes == [114, 115], codes       # AccountPeerExposeEnabled, AccountPeerExposeDisabled


if __name__ == "__main__":
    apifix.run_tests()
