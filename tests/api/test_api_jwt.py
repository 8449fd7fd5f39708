"""IdP sign-in on the REST API: JWTs from the loopback test IdP
(tests/idp/testidp.py) validated by netbird-mgmt (HttpConfig in
management.json), users and accounts provisioned as NetBird does
(single- and multi-account mode, JWT groups, approval), the request then
served exactly as for a personal access token of the same user. Also the
approve/reject endpoints, raw CORS headers and long Authorization values."""

import http.client
import threading
import time
import urllib.parse

import apifix
from apifix import svc

import testidp

test = svc.test

# NetBird's OpenAPI description (shared/ beside the repository, as on the
# developers' machines and in CI).
check_schema = apifix.check_schema


def new_idp():
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    return idp


def wait_ok(api, path="/api/users/current", timeout=90):
    """Polls until the call answers 200 (the server fetches the IdP's keys
    in the background); returns the body."""
    deadline = time.time() + timeout
    while True:
        st, body = api.get(path)
        if st == 200:
            return body
        assert time.time() < deadline, "%s never answered 200: %d %r" % (path, st, body)
        time.sleep(0.2)


def user_by_id(api, uid):
    return [u for u in api.ok("GET", "/api/users") if u["id"] == uid][0]


def audit(api):
    return api.ok("GET", "/api/events/audit")


def set_settings(api, account_id, **over):
    body = apifix.settings(**over)
    return api.ok("PUT", "/api/accounts/" + account_id, body)


# ---- single-account mode ------------------------------------------------------------------

@test
def first_user_owns_a_new_account_later_users_wait_for_approval():
    """An empty deployment: the first IdP user creates the account and owns
    it (NetBird's newAccount: user approval on, no setup key); the next
    one joins as "user", pending approval, answered 403 until an owner
    approves; a rejected one is removed."""
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    alice = apifix.jwt_api(srv, idp.token("alice-sub", email="alice@corp.example", name="Alice"))
    # The very first request is a GET: provisioning writes all the same.
    me = wait_ok(alice)
    check_schema(me, "User")
    assert me["role"] == "owner" and me["email"] == "alice@corp.example" and me["name"] == "Alice", me
    assert me["id"] == "alice-sub" and me["is_current"] is True and me["status"] == "active", me
    accounts = alice.ok("GET", "/api/accounts")
    assert len(accounts) == 1, accounts
    acc = accounts[0]
    assert acc["domain"] == "netbird.selfhosted" and acc["domain_category"] == "private", acc
    assert acc["settings"]["extra"]["user_approval_required"] is True, acc
    assert alice.ok("GET", "/api/setup-keys") == [], "a signed-up account has no setup key"

    bob_tok = idp.token("bob-sub", email="bob@corp.example", name="Bob")
    bob = apifix.jwt_api(srv, bob_tok)
    bob.error("GET", "/api/users/current", 403, message="user is pending approval")
    b = user_by_id(alice, "bob-sub")
    for u in alice.ok("GET", "/api/users"):
        check_schema(u, "User")
    assert b["pending_approval"] is True and b["is_blocked"] is True and b["role"] == "user", b
    assert b["email"] == "bob@corp.example" and b["name"] == "Bob", b

    approved = alice.ok("POST", "/api/users/bob-sub/approve")
    check_schema(approved, "User")
    assert approved["id"] == "bob-sub" and approved["pending_approval"] is False, approved
    assert approved["is_blocked"] is False and approved["is_current"] is False, approved
    alice.error("POST", "/api/users/bob-sub/approve", 422, message="user bob-sub is not pending approval")
    alice.error("POST", "/api/users/nobody/approve", 404, message="user: nobody not found")
    me = bob.ok("GET", "/api/users/current")
    assert me["role"] == "user" and me["permissions"]["is_restricted"] is True, me
    # A regular user may not approve anyone.
    carol = apifix.jwt_api(srv, idp.token("carol-sub", email="carol@corp.example"))
    carol.error("GET", "/api/users/current", 403, message="user is pending approval")
    bob.error("DELETE", "/api/users/carol-sub/reject", 403)
    assert alice.ok("DELETE", "/api/users/carol-sub/reject") == {}
    assert "carol-sub" not in [u["id"] for u in alice.ok("GET", "/api/users")]
    alice.error("DELETE", "/api/users/bob-sub/reject", 422, message="user bob-sub is not pending approval")

    codes = [(e["activity_code"], e["target_id"]) for e in audit(alice)]
    for want in [("account.create", acc["id"]), ("user.join", "alice-sub"), ("user.join", "bob-sub"),
                 ("user.approve", "bob-sub"), ("user.reject", "carol-sub")]:
        assert want in codes, (want, codes)
    # One account, whatever the claims said.
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 1


@test
def an_account_made_by_the_cli_is_joined():
    """`netbird-mgmt bootstrap` (like `netbird-cp-admin account create`)
    made the account: the IdP user joins it as a regular user (approval is
    off there), listed with the token's email and name."""
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp)
    owner = apifix.api_for(srv, dep.admin_token)
    dave = apifix.jwt_api(srv, idp.token("dave-sub", email="dave@x.example", name="Dave"))
    me = wait_ok(dave)
    assert me["role"] == "user" and me["email"] == "dave@x.example", me
    d = user_by_id(owner, "dave-sub")
    assert d["name"] == "Dave" and d["pending_approval"] is False and d["last_login"] != "0001-01-01T00:00:00Z", d
    assert dep.sql("SELECT account_id FROM users WHERE id = 'dave-sub'")[0][0] == dep.account_id

    # Blocked by the owner: 403 "user is blocked".
    owner.ok("PUT", "/api/users/dave-sub", {"role": "user", "auto_groups": [], "is_blocked": True})
    dave.error("GET", "/api/users/current", 403, message="user is blocked")
    dave.error("GET", "/api/groups", 403, message="user is blocked")


@test
def jwt_groups_are_created_joined_and_the_allow_list_refuses():
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp)
    owner = apifix.api_for(srv, dep.admin_token)
    set_settings(owner, dep.account_id, jwt_groups_enabled=True, jwt_groups_claim_name="groups",
                 jwt_allow_groups=["ops"])
    existing = owner.ok("POST", "/api/groups", {"name": "ops"})
    erin = apifix.jwt_api(srv, idp.token("erin-sub", email="erin@x.example", groups=["ops", "devs"]))
    serial0 = dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (dep.account_id,))[0][0]
    me = wait_ok(erin)
    # The memberships changed: new maps for the account's streams.
    assert dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (dep.account_id,))[0][0] > serial0
    groups = {g["name"]: g for g in owner.ok("GET", "/api/groups")}
    assert groups["devs"]["issued"] == "jwt", groups["devs"]
    assert groups["ops"]["id"] == existing["id"] and groups["ops"]["issued"] == "api", groups["ops"]
    # An api group of the same name is not taken over; the jwt one is.
    assert me["auto_groups"] == [groups["devs"]["id"]], me
    names = [e["activity_code"] for e in audit(owner) if e["target_id"] == "erin-sub"]
    assert "user.group.add" in names, names

    # Groups leave with the claim.
    erin2 = apifix.jwt_api(srv, idp.token("erin-sub", email="erin@x.example", groups=["ops"], iat=int(time.time()) + 1))
    assert erin2.ok("GET", "/api/users/current")["auto_groups"] == []

    # Outside the allow list: NetBird's middleware answers 401 "token invalid".
    frank = apifix.jwt_api(srv, idp.token("frank-sub", groups=["devs"]))
    frank.error("GET", "/api/users/current", 401, message="token invalid")
    assert dep.sql("SELECT count(*) FROM users WHERE id = 'frank-sub'")[0][0] == 0
    nogroups = apifix.jwt_api(srv, idp.token("gina-sub"))
    nogroups.error("GET", "/api/users/current", 401, message="token invalid")


# ---- multi-account mode -------------------------------------------------------------------

def claims_for(domain, category, account_id=None):
    c = {"wt_account_domain": domain, "wt_account_domain_category": category}
    if account_id:
        c["wt_account_id"] = account_id
    return c


@test
def multi_account_mode_follows_domains_and_claims():
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False, extra=("--disable-single-account-mode",))

    def me(sub, domain, category, account_id=None):
        api = apifix.jwt_api(srv, idp.token(sub, email=sub + "@" + domain,
                                            extra=claims_for(domain, category, account_id)))
        return api, api.get("/api/users/current")

    api, _ = me("a1", "one.example", "private")
    a1 = wait_ok(api)
    _, (st, b1) = me("b1", "two.example", "private")
    assert st == 200 and a1["role"] == "owner" and b1["role"] == "owner", (a1, b1)
    acc = lambda uid: dep.sql("SELECT account_id FROM users WHERE id = %s", (uid,))[0][0]  # noqa: E731
    assert acc("a1") != acc("b1")
    _, (st, a2) = me("a2", "one.example", "private")
    assert st == 403 and a2["message"] == "user is pending approval", a2     # the owner's account asks for approval
    assert acc("a2") == acc("a1")
    _, (st, p1) = me("p1", "gmail.com", "public")
    _, (st2, p2) = me("p2", "gmail.com", "public")
    assert st == 200 and st2 == 200 and p1["role"] == "owner" and p2["role"] == "owner", (p1, p2)
    assert acc("p1") != acc("p2")
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 4
    # wt_account_id: the user's own account, or refused.
    _, (st, _b) = me("a1", "one.example", "private", acc("a1"))
    assert st == 200, _b
    _, (st, b) = me("a1", "one.example", "private", acc("b1"))
    assert st == 401 and b["message"] == "token invalid", b


# ---- replicas, tokens and keys ------------------------------------------------------------

@test
def replicas_agree_and_refuse_bad_tokens_alike():
    """Two replicas on one database: the same user on both; every kind of
    bad token refused with NetBird's text on both."""
    idp = new_idp()
    dep, servers = apifix.start_idp(idp, bootstrap=False, replicas=2)
    tok = idp.token("hank-sub", email="hank@x.example")
    seen = [wait_ok(apifix.jwt_api(s, tok)) for s in servers]
    assert seen[0] == seen[1] and seen[0]["role"] == "owner", seen
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 1

    now = int(time.time())
    bad = {
        "wrong issuer": idp.token("hank-sub", iss="http://127.0.0.1:1/other/"),
        "wrong audience": idp.token("hank-sub", aud="someone-else"),
        "not yet valid": idp.token("hank-sub", nbf=now + 3600),
        "tampered": idp.tamper(tok),
        "alg none": idp.token_alg_none("hank-sub"),
        "hs256 confusion": idp.token_hs256_confusion("hank-sub"),
        "garbage": "not.a.jwt",
        "unknown kid": idp.token("hank-sub", headers={"kid": "nope"}),
    }
    for s in servers:
        for what, t in bad.items():
            b = apifix.jwt_api(s, t).error("GET", "/api/users/current", 401)
            assert b["message"] == "token invalid", (what, b)
        expired = idp.token("hank-sub", exp_in=-3600, iat=now - 7200)
        b = apifix.jwt_api(s, expired).error("GET", "/api/users/current", 401)
        assert b["message"] == "token expired", b
    assert dep.sql("SELECT count(*) FROM users WHERE id LIKE 'hank-sub%%'")[0][0] == 1


def wait_keys(srv, timeout=60):
    """Until the replica has the IdP's signing keys (/readyz no longer
    degraded by "idp"), without signing anyone in."""
    deadline = time.time() + timeout
    while True:
        st, _, body = svc.http_json("GET", srv.url("/readyz"))
        if st == 200 and body.get("degraded") != "idp":
            return
        assert time.time() < deadline, body
        time.sleep(0.2)


@test
def concurrent_first_sign_ins_on_two_replicas_make_one_account():
    """An empty deployment, two replicas: eight new users (one of them
    twice, once per replica) sign in at the same moment. One account, one
    owner, every user once."""
    idp = new_idp()
    dep, servers = apifix.start_idp(idp, bootstrap=False, replicas=2)
    for s in servers:
        wait_keys(s)
    subs = ["racer-%d" % i for i in range(7)] + ["racer-0"]
    results = [None] * len(subs)
    go = threading.Barrier(len(subs))

    def one(i):
        api = apifix.jwt_api(servers[i % 2], idp.token(subs[i]))
        go.wait()
        results[i] = api.get("/api/users/current")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(subs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r[0] for r in results)
    assert all(st in (200, 403) for st in statuses), results
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 1
    assert dep.sql("SELECT count(*) FROM users WHERE role = 'owner'")[0][0] == 1
    assert dep.sql("SELECT count(*) FROM users")[0][0] == 7
    # Everyone but the owner waits for approval (a signed-up account asks for it).
    assert dep.sql("SELECT count(*) FROM users WHERE pending_approval")[0][0] == 6
    owner = dep.sql("SELECT id FROM users WHERE role = 'owner'")[0][0]
    assert [r for r, sub in zip(results, subs) if sub == owner][0][0] == 200, results


@test
def a_rotated_key_is_picked_up_by_every_replica():
    idp = new_idp()
    dep, servers = apifix.start_idp(idp, bootstrap=False, replicas=2)
    for s in servers:
        wait_ok(apifix.jwt_api(s, idp.token("ivy-sub")))
    kid = idp.rotate(keep_old=False)
    tok = idp.token("ivy-sub", kid=kid)
    for s in servers:
        assert wait_ok(apifix.jwt_api(s, tok), timeout=30)["id"] == "ivy-sub"


@test
def idp_down_then_up():
    idp = new_idp()
    idp.down = True
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    api = apifix.jwt_api(srv, idp.token("jack-sub"))
    api.error("GET", "/api/users/current", 401, message="token invalid")
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 0
    idp.down = False
    assert wait_ok(api)["role"] == "owner"


# ---- a JWT user is served as a PAT of the same user ---------------------------------------

@test
def routes_answer_a_jwt_as_a_pat_of_the_same_user():
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    jwt = apifix.jwt_api(srv, idp.token("kate-sub", email="kate@x.example"))
    wait_ok(jwt)
    pat = jwt.ok("POST", "/api/users/kate-sub/tokens", {"name": "cli", "expires_in": 30})
    tok = apifix.api_for(srv, pat["plain_token"])
    for path in ["/api/users/current", "/api/users", "/api/groups", "/api/peers", "/api/setup-keys",
                 "/api/accounts", "/api/policies", "/api/routes", "/api/dns/nameservers"]:
        a, b = jwt.get(path), tok.get(path)
        assert a == b, (path, a, b)
    g = jwt.ok("POST", "/api/groups", {"name": "from-jwt"})
    h = tok.ok("POST", "/api/groups", {"name": "from-pat"})
    assert g["issued"] == h["issued"] == "api", (g, h)
    jwt.ok("DELETE", "/api/groups/" + h["id"])
    tok.ok("DELETE", "/api/groups/" + g["id"])
    # A regular user, the same way.
    owner_acc = dep.sql("SELECT account_id FROM users WHERE id = 'kate-sub'")[0][0]
    set_settings(jwt, owner_acc, extra={"peer_approval_enabled": False, "user_approval_required": False,
                                        "network_traffic_logs_enabled": False,
                                        "network_traffic_packet_counter_enabled": False})
    leo = apifix.jwt_api(srv, idp.token("leo-sub"))
    assert leo.ok("GET", "/api/users/current")["role"] == "user"
    # (a regular user may not make tokens: one straight in the database)
    leo_tok = apifix.api_for(srv, apifix.sql_token(dep, "leo-sub", account=owner_acc))
    for path in ["/api/users/current", "/api/users", "/api/peers", "/api/groups", "/api/accounts"]:
        assert leo.get(path) == leo_tok.get(path), path


# ---- HTTP: CORS and header sizes ----------------------------------------------------------

def raw(srv, method, path, headers):
    u = urllib.parse.urlparse(srv.url(""))
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        body = r.read()
        return r.status, r.getheaders(), body
    finally:
        c.close()


@test
def one_set_of_cors_headers_on_every_answer():
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp)
    cases = [("OPTIONS", "/api/groups", {"Origin": "http://dash", "Access-Control-Request-Method": "POST"}, 200),
             ("GET", "/api/groups", {"Authorization": "Token " + dep.admin_token}, 200),
             ("GET", "/api/groups", {}, 401),
             ("GET", "/api/nothing-here", {"Authorization": "Token " + dep.admin_token}, 404),
             ("GET", "/api/groups", {"Authorization": "Bearer " + idp.token_alg_none("x")}, 401)]
    for method, path, hdrs, want in cases:
        st, headers, _ = raw(srv, method, path, hdrs)
        assert st == want, (method, path, st)
        names = [k.lower() for k, _ in headers if k.lower().startswith("access-control-")]
        assert names and len(names) == len(set(names)), (method, path, headers)
        assert "access-control-allow-origin" in names, headers


@test
def long_authorization_values():
    """A 10 KiB token (many group claims) is served; a 20 KiB one is
    refused with 401, and the server carries on."""
    idp = new_idp()
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    wait_ok(apifix.jwt_api(srv, idp.token("mia-sub")))
    pad = ["group-%04d-%s" % (i, "x" * 20) for i in range(300)]
    tok = idp.token("mia-sub", extra={"pad": pad})
    assert 9 * 1024 < len(tok) < 14 * 1024, len(tok)
    assert apifix.jwt_api(srv, tok).ok("GET", "/api/users/current")["id"] == "mia-sub"
    big = idp.token("mia-sub", extra={"pad": pad * 2})
    assert len(big) > 17 * 1024, len(big)
    st, _, _ = raw(srv, "GET", "/api/users/current", {"Authorization": "Bearer " + big})
    assert st == 401, st
    st, _, body = raw(srv, "GET", "/api/users/current", {"Authorization": "Bearer " + big[:15000]})
    assert st == 401, (st, body)
    # Past the listener's 32 KiB of headers: libevent refuses the request
    # (an error status or a closed connection), the server carries on.
    try:
        st, _, _ = raw(srv, "GET", "/api/users/current", {"Authorization": "Bearer " + "x" * (40 * 1024)})
        assert 400 <= st < 500, st
    except (ConnectionError, http.client.HTTPException) as e:
        print("# 40 KiB of headers: %r" % (e,))
    assert apifix.jwt_api(srv, tok).ok("GET", "/api/users/current")["id"] == "mia-sub"


if __name__ == "__main__":
    apifix.run_tests()
