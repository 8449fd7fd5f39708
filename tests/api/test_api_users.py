"""/api/users and /api/users/{id}/tokens against the real server: listing,
the current user with its permissions, service users, updates with
NetBird's rules, deletion, personal access tokens, roles, blocked users
and expired tokens, events and serial bumps."""

import secrets

import apifix
from apifix import pat_hash, settings, sql_peer, sql_token, sql_user, svc

test = svc.test

ZERO_TIME = "0001-01-01T00:00:00Z"
ALL_OPS = ("read", "create", "update", "delete")


# ---- helpers ----------------------------------------------------------------

def events(dep, activity, target=None):
    q = "SELECT initiator_id, target_id, meta FROM events WHERE account_id = %s AND activity = %s"
    args = [dep.account_id, activity]
    if target is not None:
        q += " AND target_id = %s"
        args.append(target)
    return dep.sql(q + " ORDER BY id", tuple(args))


def user_by_id(api, uid):
    users = {u["id"]: u for u in api.ok("GET", "/api/users")}
    return users.get(uid)


def service_user(api, role, name, auto_groups=()):
    return api.ok("POST", "/api/users", {"role": role, "name": name, "auto_groups": list(auto_groups),
                                          "is_service_user": True})


def mint(api, uid, name="t", days=30):
    """A token for uid through the API; returns the plain text."""
    g = api.ok("POST", "/api/users/%s/tokens" % uid, {"name": name, "expires_in": days})
    return g["plain_token"]


# ---- listing and the current user -------------------------------------------

@test
def list_users_and_current():
    dep, srv, api = apifix.start()
    users = api.ok("GET", "/api/users")
    assert len(users) == 1, users
    me = users[0]
    assert me["id"] == dep.user_id and me["role"] == "owner" and me["is_current"] is True, me
    assert me["status"] == "active" and me["is_blocked"] is False and me["is_service_user"] is False, me
    assert me["auto_groups"] == [] and me["pending_approval"] is False and me["issued"] == "api", me
    assert me["last_login"] == ZERO_TIME and me["email"] == "", me

    cur = api.ok("GET", "/api/users/current")
    perms = cur.pop("permissions")
    assert cur == me, (cur, me)
    assert perms["is_restricted"] is False, perms
    mods = perms["modules"]
    for m in ("peers", "groups", "settings", "accounts", "users", "pats", "setup_keys", "policies", "routes",
              "dns", "nameservers", "events", "networks", "services"):
        assert mods[m] == {op: True for op in ALL_OPS}, (m, mods[m])
    # Modules this server does not serve are left out (the dashboard
    # treats an absent module as denied and hides its pages).
    for m in ("remote_jobs", "identity_providers", "agent_network"):
        assert m not in mods, (m, mods.get(m))

    # Another user shows up with is_current false; filters by kind.
    su = service_user(api, "user", "robot")
    ids = [u["id"] for u in api.ok("GET", "/api/users")]
    assert ids == [dep.user_id, su["id"]], ids
    assert [u["id"] for u in api.ok("GET", "/api/users?service_user=true")] == [su["id"]]
    assert [u["id"] for u in api.ok("GET", "/api/users?service_user=false")] == [dep.user_id]
    assert [u["id"] for u in api.ok("GET", "/api/users?service_user=1")] == [su["id"]]
    assert len(api.ok("GET", "/api/users?service_user=")) == 2
    assert user_by_id(api, su["id"])["is_current"] is False
    api.error("GET", "/api/users?service_user=maybe", 422, message="invalid service_user query parameter")
    # Integration users (non-deletable service users) are not listed.
    hidden = sql_user(dep, "admin", service=True, name="integration", non_deletable=True)
    assert hidden not in [u["id"] for u in api.ok("GET", "/api/users")]


@test
def current_user_permissions_follow_the_role():
    dep, srv, api = apifix.start()
    regular = sql_user(dep, "user", name="Reggie")
    auditor = sql_user(dep, "auditor")
    netadm = sql_user(dep, "network_admin")
    admin = sql_user(dep, "admin")

    cur = api.as_token(sql_token(dep, regular)).ok("GET", "/api/users/current")
    assert cur["id"] == regular and cur["name"] == "Reggie" and cur["is_current"] is True, cur
    # Regular users are restricted while the account blocks their view.
    assert cur["permissions"]["is_restricted"] is True
    assert all(not v for m in cur["permissions"]["modules"].values() for v in m.values()), cur
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings(regular_users_view_blocked=False))
    cur = api.as_token(sql_token(dep, regular)).ok("GET", "/api/users/current")
    assert cur["permissions"]["is_restricted"] is False, cur

    mods = api.as_token(sql_token(dep, auditor)).ok("GET", "/api/users/current")["permissions"]["modules"]
    assert mods["users"] == {"read": True, "create": False, "update": False, "delete": False}, mods
    assert mods["peers"]["read"] and not mods["groups"]["create"], mods

    p = api.as_token(sql_token(dep, netadm)).ok("GET", "/api/users/current")["permissions"]
    mods = p["modules"]
    assert p["is_restricted"] is False
    assert mods["groups"] == {op: True for op in ALL_OPS}, mods
    assert mods["users"] == {"read": True, "create": False, "update": False, "delete": False}, mods
    assert mods["pats"]["create"] and not mods["setup_keys"]["create"], mods

    mods = api.as_token(sql_token(dep, admin)).ok("GET", "/api/users/current")["permissions"]["modules"]
    assert mods["accounts"] == {"read": True, "create": False, "update": False, "delete": False}, mods
    assert mods["settings"]["update"] and mods["users"]["delete"], mods

    # Service users have no "current user" in NetBird.
    su = service_user(api, "admin", "bot")
    api.as_token(mint(api, su["id"])).error("GET", "/api/users/current", 403, message="permission denied")


@test
def regular_user_sees_only_themselves():
    dep, srv, api = apifix.start()
    regular = sql_user(dep, "user")
    service_user(api, "user", "robot")
    rapi = api.as_token(sql_token(dep, regular))
    users = rapi.ok("GET", "/api/users")
    assert [u["id"] for u in users] == [regular], users
    assert users[0]["is_current"] is True
    # The users module refuses them everything else.
    rapi.error("POST", "/api/users", 403, {"role": "user", "is_service_user": True, "auto_groups": []},
               message="permission denied")
    rapi.error("PUT", "/api/users/" + dep.user_id, 403, {"role": "owner", "auto_groups": []})
    rapi.error("DELETE", "/api/users/" + dep.user_id, 403)


# ---- service users ----------------------------------------------------------

@test
def create_service_users():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "bots"})
    serial0 = dep.network_serial()
    su = service_user(api, "Admin", "terraform", [g["id"]])
    assert su["role"] == "admin" and su["name"] == "terraform" and su["is_service_user"] is True, su
    assert su["auto_groups"] == [g["id"]] and su["status"] == "active" and su["is_current"] is False, su
    assert su["email"] == "" and su["is_blocked"] is False and su["issued"] == "api", su
    assert user_by_id(api, su["id"]) == su
    row = dep.sql("SELECT role, is_service_user, service_user_name, name FROM users WHERE id = %s", (su["id"],))
    assert row == [("admin", True, "terraform", "")], row
    ev = events(dep, 43, su["id"])
    assert len(ev) == 1 and ev[0][0] == dep.user_id and ev[0][2] == {"name": "terraform"}, ev
    # A service user changes no network map.
    assert dep.network_serial() == serial0
    # Name and auto_groups may be left out.
    su2 = api.ok("POST", "/api/users", {"role": "user", "is_service_user": True})
    assert su2["name"] == "" and su2["auto_groups"] == [], su2


@test
def create_user_validation():
    dep, srv, api = apifix.start()
    all_id = api.ok("GET", "/api/groups")[0]["id"]
    api.error("POST", "/api/users", 400, raw="{oops", message="couldn't parse JSON request")
    api.error("POST", "/api/users", 400, raw='"x"')
    api.error("POST", "/api/users", 400, {"role": 1, "is_service_user": True})
    api.error("POST", "/api/users", 400, {"role": "user", "is_service_user": "yes"})
    api.error("POST", "/api/users", 400, {"role": "user", "is_service_user": True, "auto_groups": "g"})
    api.error("POST", "/api/users", 422, {"role": "boss", "is_service_user": True},
              message="unknown user role boss")
    api.error("POST", "/api/users", 422, {"is_service_user": True}, message="unknown user role")
    api.error("POST", "/api/users", 422, {"role": "owner", "is_service_user": True},
              message="can't create a service user with owner role")
    # A regular user needs an invite from an IdP, which this server has not.
    api.error("POST", "/api/users", 412, {"role": "user", "email": "a@b.c", "name": "A", "auto_groups": []},
              message="idp manager must be enabled to send user invites")
    api.error("POST", "/api/users", 422, {"role": "user", "is_service_user": True, "auto_groups": ["nope"]},
              message="group: nope not found")
    api.error("POST", "/api/users", 422, {"role": "user", "is_service_user": True, "auto_groups": [all_id]},
              message="can't add all group to the user")
    assert dep.sql("SELECT count(*) FROM users WHERE account_id = %s", (dep.account_id,)) == [(1,)]
    assert events(dep, 43) == []


# ---- update -----------------------------------------------------------------

@test
def update_role_and_auto_groups():
    dep, srv, api = apifix.start()
    g1 = api.ok("POST", "/api/groups", {"name": "g1"})["id"]
    g2 = api.ok("POST", "/api/groups", {"name": "g2"})["id"]
    uid = sql_user(dep, "user", name="Una")
    peer = sql_peer(dep, user_id=uid)
    other = sql_peer(dep)                 # a setup-key peer: never touched
    serial0 = dep.network_serial()

    u = api.ok("PUT", "/api/users/" + uid, {"role": "admin", "auto_groups": [g1, g2], "is_blocked": False})
    assert u["role"] == "admin" and u["auto_groups"] == [g1, g2] and u["name"] == "Una", u
    assert u["is_current"] is False and u["status"] == "active", u
    assert dep.network_serial() == serial0 + 1
    assert events(dep, 22, uid)[0][2] == {"role": "admin"}
    # Propagation is on by default: the user's peers follow the groups.
    assert dep.peer_groups(peer) == ["g1", "g2"], dep.peer_groups(peer)
    assert dep.peer_groups(other) == []
    added = events(dep, 20, uid)
    assert [e[2]["group"] for e in added] == ["g1", "g2"], added
    assert added[0][2] == {"group": "g1", "group_id": g1, "is_service_user": False, "user_name": ""}, added

    u = api.ok("PUT", "/api/users/" + uid, {"role": "admin", "auto_groups": [g2]})
    assert u["auto_groups"] == [g2], u
    assert dep.peer_groups(peer) == ["g2"]
    assert [e[2]["group_id"] for e in events(dep, 21, uid)] == [g1]
    assert len(events(dep, 22, uid)) == 1           # the role did not change again
    assert dep.network_serial() == serial0 + 2

    # Without propagation the peers keep their groups and nothing is logged.
    api.ok("PUT", "/api/accounts/" + dep.account_id, settings(groups_propagation_enabled=False))
    api.ok("PUT", "/api/users/" + uid, {"role": "admin", "auto_groups": [g1]})
    assert dep.peer_groups(peer) == ["g2"]
    assert len(events(dep, 20, uid)) == 2 and len(events(dep, 21, uid)) == 1
    assert dep.sql("SELECT auto_groups FROM users WHERE id = %s", (uid,)) == [([g1],)]


@test
def update_user_validation():
    dep, srv, api = apifix.start()
    all_id = api.ok("GET", "/api/groups")[0]["id"]
    uid = sql_user(dep, "user")
    path = "/api/users/" + uid
    serial0 = dep.network_serial()
    api.error("PUT", "/api/users/nope", 404, {"role": "user", "auto_groups": []}, message="user: nope not found")
    api.error("PUT", path, 400, raw="{", message="couldn't parse JSON request")
    api.error("PUT", path, 400, {"role": "user"}, message="auto_groups field can't be absent")
    api.error("PUT", path, 400, {"role": "user", "auto_groups": None}, message="auto_groups field can't be absent")
    api.error("PUT", path, 400, {"role": "user", "auto_groups": [1]})
    api.error("PUT", path, 400, {"role": "user", "auto_groups": [], "is_blocked": "no"})
    api.error("PUT", path, 422, {"role": "chief", "auto_groups": []}, message="invalid user role")
    api.error("PUT", path, 422, {"auto_groups": []}, message="invalid user role")
    pre = "failed to process update for user %s: " % uid
    api.error("PUT", path, 422, {"role": "user", "auto_groups": ["nope"]},
              message=pre + "provided group id nope in the user %s update doesn't exist" % uid)
    api.error("PUT", path, 422, {"role": "user", "auto_groups": [all_id]},
              message=pre + "can't add all group to the user")
    # The owner about themselves.
    me = "/api/users/" + dep.user_id
    pre_me = "failed to process update for user %s: " % dep.user_id
    api.error("PUT", me, 403, {"role": "admin", "auto_groups": []}, message=pre_me + "admins can't change their role")
    api.error("PUT", me, 403, {"role": "owner", "auto_groups": [], "is_blocked": True},
              message=pre_me + "admins can't block or unblock themselves")
    su = service_user(api, "user", "bot")
    api.error("PUT", "/api/users/" + su["id"], 403, {"role": "owner", "auto_groups": []},
              message="can't update a service user with owner role")
    # Nothing was written.
    assert dep.network_serial() == serial0
    assert dep.sql("SELECT role, auto_groups, blocked FROM users WHERE id = %s", (uid,)) == [("user", [], False)]


@test
def owner_rules_for_admins():
    dep, srv, api = apifix.start()
    adm = service_user(api, "admin", "ops")
    aapi = api.as_token(mint(api, adm["id"]))
    uid = sql_user(dep, "user")
    owner = "/api/users/" + dep.user_id
    pre = "failed to process update for user %s: " % dep.user_id
    aapi.error("PUT", owner, 403, {"role": "admin", "auto_groups": []},
               message=pre + "only owners can remove owner role from their user")
    aapi.error("PUT", owner, 403, {"role": "owner", "auto_groups": [], "is_blocked": True},
               message=pre + "unable to block owner user")
    aapi.error("PUT", "/api/users/" + uid, 403, {"role": "owner", "auto_groups": []},
               message="only owners can add owner role to other users")
    # An admin may otherwise manage users.
    u = aapi.ok("PUT", "/api/users/" + uid, {"role": "auditor", "auto_groups": []})
    assert u["role"] == "auditor", u
    assert events(dep, 22, uid)[0][0] == adm["id"]


@test
def owner_transfers_the_owner_role():
    dep, srv, api = apifix.start()
    uid = sql_user(dep, "admin")
    u = api.ok("PUT", "/api/users/" + uid, {"role": "owner", "auto_groups": []})
    assert u["role"] == "owner", u
    roles = dict(dep.sql("SELECT id, role FROM users WHERE account_id = %s", (dep.account_id,)))
    assert roles == {uid: "owner", dep.user_id: "admin"}, roles
    assert len(events(dep, 59, uid)) == 1 and events(dep, 22, uid) == []
    # The former owner is an admin now: account deletion is no longer theirs.
    api.error("DELETE", "/api/accounts/" + dep.account_id, 403, message="only account owner can delete account")


@test
def blocking_a_user():
    dep, srv, api = apifix.start()
    uid = sql_user(dep, "admin")
    token = sql_token(dep, uid)
    peer = sql_peer(dep, user_id=uid)
    other = sql_peer(dep)
    uapi = api.as_token(token)
    uapi.ok("GET", "/api/users")
    serial0 = dep.network_serial()

    u = api.ok("PUT", "/api/users/" + uid, {"role": "admin", "auto_groups": [], "is_blocked": True})
    assert u["is_blocked"] is True and u["status"] == "blocked", u
    # Its token stops working, NetBird's text (the dashboard matches it).
    uapi.error("GET", "/api/users", 403, message="user is blocked")
    uapi.error("GET", "/api/users/current", 403, message="user is blocked")
    # Its peers must log in again; setup-key peers are left alone.
    rows = dict(dep.sql("SELECT id, peer_status_login_expired FROM peers WHERE account_id = %s",
                        (dep.account_id,)))
    assert rows == {peer: True, other: False}, rows
    exp = events(dep, 50, peer)
    assert len(exp) == 1 and exp[0][0] == uid and exp[0][2]["reason"] == "blocked owner account", exp
    assert exp[0][2]["name"] == peer and "ip" in exp[0][2], exp
    assert len(events(dep, 45, uid)) == 1
    assert dep.network_serial() == serial0 + 1

    api.ok("PUT", "/api/users/" + uid, {"role": "admin", "auto_groups": [], "is_blocked": False})
    assert len(events(dep, 46, uid)) == 1
    assert uapi.ok("GET", "/api/users/current")["status"] == "active"


# ---- delete -----------------------------------------------------------------

@test
def delete_service_user_and_its_tokens():
    dep, srv, api = apifix.start()
    su = service_user(api, "admin", "ci")
    token = mint(api, su["id"])
    sapi = api.as_token(token)
    sapi.ok("GET", "/api/groups")
    serial0 = dep.network_serial()
    assert api.ok("DELETE", "/api/users/" + su["id"]) == {}
    assert dep.sql("SELECT count(*) FROM personal_access_tokens WHERE user_id = %s", (su["id"],)) == [(0,)]
    sapi.error("GET", "/api/groups", 401, message="token invalid")
    ev = events(dep, 44, su["id"])
    assert len(ev) == 1 and ev[0][2]["name"] == "ci" and ev[0][2]["created_at"].startswith("20"), ev
    assert dep.network_serial() == serial0
    assert user_by_id(api, su["id"]) is None
    api.error("DELETE", "/api/users/" + su["id"], 404, message="user: %s not found" % su["id"])


@test
def delete_regular_user_with_peers():
    dep, srv, api = apifix.start()
    uid = sql_user(dep, "user", name="Leaver")
    token = sql_token(dep, uid)
    p1 = sql_peer(dep, user_id=uid)
    p2 = sql_peer(dep, user_id=uid)
    keep = sql_peer(dep)
    serial0 = dep.network_serial()
    assert api.ok("DELETE", "/api/users/" + uid) == {}
    left = [r[0] for r in dep.sql("SELECT id FROM peers WHERE account_id = %s", (dep.account_id,))]
    assert left == [keep], left
    assert sorted(e[1] for e in events(dep, 5)) == sorted([p1, p2])
    assert all(e[0] == dep.user_id for e in events(dep, 5))
    ev = events(dep, 47, uid)
    assert len(ev) == 1 and ev[0][2]["name"] == "Leaver" and ev[0][2]["issued"] == "api", ev
    assert dep.network_serial() == serial0 + 1
    api.as_token(token).error("GET", "/api/users", 401, message="token invalid")


@test
def delete_user_rules():
    dep, srv, api = apifix.start()
    adm = service_user(api, "admin", "ops")
    aapi = api.as_token(mint(api, adm["id"]))
    api.error("DELETE", "/api/users/" + dep.user_id, 422, message="self deletion is not allowed")
    aapi.error("DELETE", "/api/users/" + dep.user_id, 403, message="can't delete a user with the owner role")
    locked = sql_user(dep, "admin", service=True, name="integration", non_deletable=True)
    api.error("DELETE", "/api/users/" + locked, 403, message="service user is marked as non-deletable")
    integ = sql_user(dep, "user", issued="integration")
    api.error("DELETE", "/api/users/" + integ, 403, message="only integration service user can delete this user")
    assert aapi.ok("DELETE", "/api/users/" + integ) == {}      # a service user may
    api.error("DELETE", "/api/users/nope", 404, message="user: nope not found")
    ids = {r[0] for r in dep.sql("SELECT id FROM users WHERE account_id = %s", (dep.account_id,))}
    assert ids == {dep.user_id, adm["id"], locked}, ids


# ---- tokens -----------------------------------------------------------------

@test
def token_lifecycle():
    dep, srv, api = apifix.start()
    me = dep.user_id
    base = "/api/users/%s/tokens" % me
    before = api.ok("GET", base)
    assert [t["name"] for t in before] == ["bootstrap admin token"], before

    g = api.ok("POST", base, {"name": "laptop", "expires_in": 30})
    plain = g["plain_token"]
    pat = g["personal_access_token"]
    assert plain.startswith("nbp_") and len(plain) == 40, g
    assert pat["name"] == "laptop" and pat["created_by"] == me and "last_used" not in pat, pat
    assert pat["expiration_date"].endswith("Z") and pat["created_at"].endswith("Z"), pat
    days = dep.sql("SELECT round(extract(epoch FROM expiration_date - created_at) / 86400)"
                   " FROM personal_access_tokens WHERE id = %s", (pat["id"],))
    assert days == [(30,)], days
    # Only the hash is stored; the plain text is nowhere in the table.
    rows = dep.sql("SELECT t::text, hashed_token FROM personal_access_tokens t WHERE id = %s", (pat["id"],))
    assert rows[0][1] == pat_hash(plain), rows
    assert plain not in rows[0][0] and plain[4:] not in rows[0][0], rows
    assert dep.sql("SELECT count(*) FROM events WHERE meta::text LIKE %s", ("%" + plain[4:] + "%",)) == [(0,)]
    # Plain text is shown once: neither list nor get carries it.
    assert api.ok("GET", base + "/" + pat["id"]) == pat
    listed = api.ok("GET", base)
    assert [t["id"] for t in listed] == [before[0]["id"], pat["id"]], listed
    assert "plain_token" not in str(listed)

    # It works, with either scheme, and records its use.
    tapi = api.as_token(plain)
    tapi.ok("GET", "/api/users")
    api.as_token(plain, scheme="Bearer").ok("GET", "/api/users")
    assert "last_used" in api.ok("GET", base + "/" + pat["id"])

    ev = events(dep, 41, me)
    assert ev[-1][2] == {"name": "laptop", "is_service_user": False, "user_name": ""}, ev
    assert api.ok("DELETE", base + "/" + pat["id"]) == {}
    tapi.error("GET", "/api/users", 401, message="token invalid")
    api.error("GET", base + "/" + pat["id"], 404, message="pat: %s not found" % pat["id"])
    api.error("DELETE", base + "/" + pat["id"], 404, message="pat: %s not found" % pat["id"])
    assert events(dep, 42, me)[-1][2]["name"] == "laptop"


@test
def token_validation():
    dep, srv, api = apifix.start()
    base = "/api/users/%s/tokens" % dep.user_id
    api.error("POST", base, 400, raw="[", message="couldn't parse JSON request")
    api.error("POST", base, 400, {"name": 5, "expires_in": 5})
    api.error("POST", base, 400, {"name": "x", "expires_in": "5"})
    api.error("POST", base, 400, {"name": "x", "expires_in": 1.5})
    api.error("POST", base, 422, {"expires_in": 5}, message="token name can't be empty")
    api.error("POST", base, 422, {"name": "", "expires_in": 5}, message="token name can't be empty")
    for days in (None, 0, -1, 366):
        body = {"name": "x"}
        if days is not None:
            body["expires_in"] = days
        api.error("POST", base, 422, body, message="expiration has to be between 1 and 365")
    api.ok("POST", base, {"name": "x", "expires_in": 365})
    api.ok("POST", base, {"name": "y", "expires_in": 1})
    api.error("POST", "/api/users/nope/tokens", 404, {"name": "x", "expires_in": 5}, message="user: nope not found")
    api.error("GET", "/api/users/nope/tokens", 404)
    api.error("GET", base + "/nope", 404, message="pat: nope not found")


@test
def expired_token_is_invalid():
    dep, srv, api = apifix.start()
    plain = mint(api, dep.user_id)
    tapi = api.as_token(plain)
    tapi.ok("GET", "/api/users")
    dep.sql("UPDATE personal_access_tokens SET expiration_date = now() - interval '1 second'"
            " WHERE hashed_token = %s", (pat_hash(plain),))
    tapi.error("GET", "/api/users", 401, message="token invalid")
    api.ok("GET", "/api/users")     # other tokens are unaffected


@test
def token_rules_by_role():
    """Own tokens, or a service user's with owner/admin power; the pats
    module decides who may touch tokens at all."""
    dep, srv, api = apifix.start()
    su_user = service_user(api, "user", "reader")
    su_admin = service_user(api, "admin", "ops")
    # The owner mints for both service users.
    user_tok = mint(api, su_user["id"])
    admin_tok = mint(api, su_admin["id"])
    uapi, aapi = api.as_token(user_tok), api.as_token(admin_tok)

    # A "user" service user reads (service users may read everything)...
    assert [t["name"] for t in uapi.ok("GET", "/api/users/%s/tokens" % su_user["id"])] == ["t"]
    assert len(uapi.ok("GET", "/api/users")) == 3
    # ...but creates or deletes nothing, not even its own tokens.
    uapi.error("POST", "/api/users/%s/tokens" % su_user["id"], 403, {"name": "x", "expires_in": 1},
               message="permission denied")
    uapi.error("DELETE", "/api/users/%s/tokens/x" % su_user["id"], 403, message="permission denied")
    uapi.error("POST", "/api/users", 403, {"role": "user", "is_service_user": True}, message="permission denied")
    uapi.error("PUT", "/api/users/" + su_admin["id"], 403, {"role": "user", "auto_groups": []})
    # Reading another user's tokens needs admin power and a service user.
    uapi.error("GET", "/api/users/%s/tokens" % su_admin["id"], 403,
               message="admin role required to perform this action")

    # An admin service user manages other service users' tokens...
    t = aapi.ok("POST", "/api/users/%s/tokens" % su_user["id"], {"name": "rotated", "expires_in": 7})
    assert t["personal_access_token"]["created_by"] == su_admin["id"], t
    assert len(aapi.ok("GET", "/api/users/%s/tokens" % su_user["id"])) == 2
    ev = events(dep, 41, su_user["id"])[-1]
    assert ev[0] == su_admin["id"] and ev[2] == {"name": "rotated", "is_service_user": True,
                                                 "user_name": "reader"}, ev
    # ...but not a regular user's, the owner's included.
    for m, body in (("GET", None), ("POST", {"name": "x", "expires_in": 1})):
        aapi.error(m, "/api/users/%s/tokens" % dep.user_id, 403, body,
                   message="admin role required to perform this action")
    owner_pat = api.ok("GET", "/api/users/%s/tokens" % dep.user_id)[0]["id"]
    aapi.error("GET", "/api/users/%s/tokens/%s" % (dep.user_id, owner_pat), 403,
               message="admin role required to perform this action")
    aapi.error("DELETE", "/api/users/%s/tokens/%s" % (dep.user_id, owner_pat), 403)
    # An admin (not a service user) may not touch another admin's tokens either.
    regular_admin = sql_user(dep, "admin")
    aapi.error("GET", "/api/users/%s/tokens" % regular_admin, 403)
    # A regular user may not even use the tokens module.
    regular = sql_user(dep, "user")
    rapi = api.as_token(sql_token(dep, regular))
    rapi.error("GET", "/api/users/%s/tokens" % regular, 403, message="permission denied")
    rapi.error("POST", "/api/users/%s/tokens" % regular, 403, {"name": "x", "expires_in": 1})
    # A network admin manages its own tokens.
    na = sql_user(dep, "network_admin")
    napi = api.as_token(sql_token(dep, na))
    napi.ok("POST", "/api/users/%s/tokens" % na, {"name": "mine", "expires_in": 2})
    assert len(napi.ok("GET", "/api/users/%s/tokens" % na)) == 2


@test
def other_accounts_are_invisible():
    dep, srv, api = apifix.start()
    b = apifix.second_account(dep)
    aid, owner2, token2 = b["ACCOUNT_ID"], b["USER_ID"], b["ADMIN_TOKEN"]
    su2 = sql_user(dep, "user", service=True, account=aid, name="theirs")
    api2 = api.as_token(token2)
    pat2 = api2.ok("GET", "/api/users/%s/tokens" % owner2)[0]["id"]
    assert {u["id"] for u in api2.ok("GET", "/api/users")} == {owner2, su2}
    for path in ("/api/users/" + su2, "/api/users/" + owner2):
        api.error("PUT", path, 404, {"role": "user", "auto_groups": []}, message="not found")
        api.error("DELETE", path, 404, message="not found")
    api.error("GET", "/api/users/%s/tokens" % owner2, 404, message="user: %s not found" % owner2)
    api.error("GET", "/api/users/%s/tokens/%s" % (owner2, pat2), 404)
    api.error("DELETE", "/api/users/%s/tokens/%s" % (owner2, pat2), 404)
    api.error("POST", "/api/users/%s/tokens" % su2, 404, {"name": "x", "expires_in": 1})
    # A token id of the other account under our own user is unknown too.
    api.error("GET", "/api/users/%s/tokens/%s" % (dep.user_id, pat2), 404, message="pat: %s not found" % pat2)
    api.error("DELETE", "/api/users/%s/tokens/%s" % (dep.user_id, pat2), 404)
    # Their groups cannot be auto-groups here.
    g2 = "grp" + secrets.token_hex(8)
    dep.sql("INSERT INTO groups (id, account_id, name) VALUES (%s, %s, 'theirs')", (g2, aid))
    api.error("POST", "/api/users", 422, {"role": "user", "is_service_user": True, "auto_groups": [g2]})
    # Nothing of theirs moved.
    assert dep.sql("SELECT count(*) FROM users WHERE account_id = %s", (aid,)) == [(2,)]
    assert dep.sql("SELECT count(*) FROM personal_access_tokens WHERE account_id = %s", (aid,)) == [(1,)]
    api2.ok("GET", "/api/users/current")


if __name__ == "__main__":
    apifix.run_tests()
