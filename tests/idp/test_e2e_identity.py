"""End to end identity: the real dev OIDC provider (deploy/oidc, started by
tests/idp/oidcflow.py) and two netbird-mgmt replicas on one database with a
Redis bus. Every token here comes from a real authorization code + PKCE
sign-in over HTTP: the dashboard's client for the REST API, the agent's
client (with the settings GetPKCEAuthorizationFlow hands out) for SSO
peers. Nothing is minted; tests/api/test_api_jwt.py and
tests/agent/test_sso.py keep the bad-token cases a real provider never
produces, with tokens from tests/idp/testidp.py.

management.json is what deploy/dev/up --oidc writes: HttpConfig with the
provider's issuer, discovery document and JWKS, AuthAudience = the
dashboard client id (the provider's default --audience, which the agent
client's access tokens carry too), IdpSignKeyRefreshEnabled, and
PKCEAuthorizationFlow for the agent client.

Needs node, deploy/oidc/node_modules (tests/run installs them) and Redis;
without them every case skips.
"""

import json
import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "api"))

import grpc  # noqa: E402

import apifix  # noqa: E402  (puts tests/service and tests/agent on the path)
import oidcflow  # noqa: E402
import svc  # noqa: E402
from fixture import json_dump  # noqa: E402
from nbagent import RpcFailed, build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

SC = grpc.StatusCode
ORIGIN = "http://127.0.0.1:9"                # the dashboard's origin; nothing listens there
DASH_REDIRECT = ORIGIN + "/nb-auth"          # made from --dashboard-origin
AUDIENCE = "netbird-dashboard"               # deploy/dev/up --oidc: OIDC_AUDIENCE
AGENT_SCOPE = "openid profile email offline_access api"
EXTRA_OFF = {"peer_approval_enabled": False, "user_approval_required": False,
             "network_traffic_logs_enabled": False, "network_traffic_packet_counter_enabled": False}


def person(login, groups):
    return {"login": login, "password": login + "-pw-" + secrets.token_hex(4), "sub": "sub-" + login,
            "email": login + "@corp.example", "name": login.capitalize(), "groups": groups}


USERS = [person("alice", ["admins"]), person("bob", ["devs"]), person("carol", ["devs"]),
         person("erin", ["ops", "devs"])]


def sub(login):
    return "sub-" + login


# ---- the world: provider + replicas -----------------------------------------------------------

class World:
    def __init__(self, replicas=2, extra=(), users=USERS):
        svc.needs_redis()
        self.p = oidcflow.Provider(dashboard_origins=[ORIGIN], users=list(users))
        try:
            self.p.start()
        except oidcflow.Unavailable as e:
            raise svc.Skip(str(e))
        svc.defer(self._stop_provider)
        self.extra = list(extra)
        self.prefix = "e2e-" + secrets.token_hex(6)
        self.dep = apifix.EmptyDeployment(config=self.management_json())
        self.servers = [self.replica() for _ in range(replicas)]
        for s in self.servers:
            wait_keys(s)

    def management_json(self):
        iss = self.p.issuer
        disc = self.p.discovery
        return {
            "HttpConfig": {"AuthIssuer": iss, "AuthAudience": AUDIENCE, "AuthKeysLocation": disc["jwks_uri"],
                           "AuthUserIDClaim": "sub", "IdpSignKeyRefreshEnabled": True,
                           "OIDCConfigEndpoint": self.p.discovery_url},
            "PKCEAuthorizationFlow": {"ProviderConfig": {
                "ClientID": self.p.agent_client_id, "ClientSecret": "", "Domain": "", "Audience": AUDIENCE,
                "AuthorizationEndpoint": disc["authorization_endpoint"],
                "TokenEndpoint": disc["token_endpoint"], "Scope": AGENT_SCOPE,
                "RedirectURLs": ["http://localhost:53000/", "http://localhost:54000/"], "UseIDToken": False}},
        }

    def replica(self):
        s = self.dep.start("--redis-url", svc.REDIS_URL, "--bus-channel-prefix", self.prefix, *self.extra)
        s.wait_log(lambda o: o.get("msg") == "bus subscribed")
        return s

    # -- the provider

    def _stop_provider(self):
        self.p.own_dir = True
        self.p.stop()

    def provider_down(self):
        """Stops the provider, keeping its data directory (keys) and port."""
        self.p.own_dir = False
        self.p.stop()

    def provider_up(self, users=None):
        if users is not None:
            self.p.users = list(users)
        self.p.start()

    # -- sign-ins

    def user(self, login):
        return self.p.user(login)

    def dashboard_token(self, login):
        """A real dashboard sign-in (code + PKCE); the access token."""
        u = self.p.user(login)
        return oidcflow.login(self.p.issuer, login, u["password"], self.p.dashboard_client_id, DASH_REDIRECT,
                              audience=AUDIENCE)["access_token"]

    def api(self, srv, login=None, token=None):
        return apifix.jwt_api(srv, token or self.dashboard_token(login))

    def agent_token(self, agent, login):
        """What `netbird up` does without a setup key: GetPKCEAuthorizationFlow
        from the server, then the browser sign-in with its client, scope,
        audience and first redirect URL; UseIDToken false: the access token."""
        cfg = agent.pkce_flow().ProviderConfig
        assert cfg.ClientID == self.p.agent_client_id and cfg.Audience == AUDIENCE, json_dump(cfg)
        assert cfg.AuthorizationEndpoint == self.p.discovery["authorization_endpoint"], json_dump(cfg)
        assert not cfg.UseIDToken and list(cfg.RedirectURLs)[0] == "http://localhost:53000/", json_dump(cfg)
        u = self.p.user(login)
        tok = oidcflow.login(self.p.issuer, login, u["password"], cfg.ClientID, cfg.RedirectURLs[0],
                             scope=cfg.Scope, audience=cfg.Audience)
        return tok["access_token"]

    def sql(self, q, params=None):
        return self.dep.sql(q, params)


def wait_keys(srv, timeout=60):
    """Until the replica holds the IdP's signing keys (/readyz no longer
    degraded by "idp")."""
    deadline = time.time() + timeout
    while True:
        st, _, body = svc.http_json("GET", srv.url("/readyz"))
        if st == 200 and body.get("degraded") != "idp":
            return
        assert time.time() < deadline, (st, body)
        time.sleep(0.2)


def metric(srv, name, labels=""):
    status, _, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, status
    want = name + labels
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def key_fetches(srv, result="ok"):
    return metric(srv, "netbird_cp_jwt_key_fetches_total", '{result="%s"}' % result)


def owner_setup(w, approval=False):
    """alice signs in first on replica 1 and owns the new account; user
    approval set as asked (PUT /api/accounts on replica 1). Returns
    (account id, alice's Api on replica 1, alice's Api on replica 2)."""
    r1, r2 = w.servers[:2]
    tok = w.dashboard_token("alice")
    a1, a2 = w.api(r1, token=tok), w.api(r2, token=tok)
    me = a1.ok("GET", "/api/users/current")
    assert me["role"] == "owner" and me["id"] == sub("alice"), me
    acc = a1.ok("GET", "/api/accounts")[0]["id"]
    a1.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=dict(EXTRA_OFF, user_approval_required=approval)))
    return acc, a1, a2


def users_by_id(api):
    return {u["id"]: u for u in api.ok("GET", "/api/users")}


def expect_rpc(fn, code, text):
    try:
        fn()
    except RpcFailed as e:
        assert e.code == code and text in e.details, (e.code, e.details)
        return e
    raise AssertionError("expected %s %r" % (code, text))


# ---- 1. single-account mode on an empty database ---------------------------------------------

@test
def first_user_owns_the_account_second_joins_on_the_other_replica():
    w = World()
    r1, r2 = w.servers
    assert w.sql("SELECT count(*) FROM accounts")[0][0] == 0
    alice = w.api(r1, "alice")
    me = alice.ok("GET", "/api/users/current")
    assert me["role"] == "owner" and me["id"] == sub("alice") and me["email"] == "alice@corp.example", me
    assert me["name"] == "Alice" and me["status"] == "active", me
    rows = w.sql("SELECT a.id, u.role, u.email, u.pii_key FROM accounts a JOIN users u ON u.account_id = a.id")
    # The e-mail is sealed with the DataStoreEncryptionKey (docs/msp.md).
    assert len(rows) == 1 and rows[0][1] == "owner" and "alice" not in rows[0][2] and rows[0][3], rows
    acc = rows[0][0]
    # A signed-up account asks for user approval (NetBird's newAccount);
    # the owner turns it off here, on replica 1.
    assert alice.ok("GET", "/api/accounts")[0]["settings"]["extra"]["user_approval_required"] is True
    alice.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=EXTRA_OFF))

    bob = w.api(r2, "bob")
    me = bob.ok("GET", "/api/users/current")
    assert me["role"] == "user" and me["email"] == "bob@corp.example" and me["id"] == sub("bob"), me
    assert w.sql("SELECT count(*) FROM accounts")[0][0] == 1
    assert w.sql("SELECT account_id, role, pending_approval, blocked FROM users WHERE id = %s",
                 (sub("bob"),)) == [(acc, "user", False, False)]
    # Both users, with their emails, on either replica.
    for srv in (r1, r2):
        listed = users_by_id(apifix.jwt_api(srv, alice.token))
        assert listed[sub("alice")]["email"] == "alice@corp.example", listed
        assert listed[sub("alice")]["role"] == "owner", listed
        assert listed[sub("bob")]["email"] == "bob@corp.example" and listed[sub("bob")]["role"] == "user", listed
        assert len([u for u in listed.values() if not u.get("is_service_user")]) == 2, listed


# ---- 2. user approval and blocking ------------------------------------------------------------

@test
def approval_on_one_replica_lets_the_user_in_on_the_other_blocked_user_refused():
    w = World()
    r1, r2 = w.servers
    acc, a1, a2 = owner_setup(w, approval=False)
    bob = w.api(r2, "bob")
    assert bob.ok("GET", "/api/users/current")["status"] == "active"
    # Approval required from now on (PUT on replica 2).
    a2.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=dict(EXTRA_OFF, user_approval_required=True)))
    assert a1.ok("GET", "/api/accounts")[0]["settings"]["extra"]["user_approval_required"] is True
    carol = w.api(r1, "carol")
    carol.error("GET", "/api/users/current", 403, message="user is pending approval")
    carol.error("GET", "/api/groups", 403, message="user is pending approval")
    assert w.sql("SELECT role, pending_approval, blocked FROM users WHERE id = %s",
                 (sub("carol"),)) == [("user", True, True)]
    listed = users_by_id(a2)[sub("carol")]
    assert listed["pending_approval"] is True and listed["email"] == "carol@corp.example", listed
    # The owner approves on replica 2; carol's same token now works on replica 1.
    approved = a2.ok("POST", "/api/users/%s/approve" % sub("carol"))
    assert approved["pending_approval"] is False and approved["is_blocked"] is False, approved
    me = carol.ok("GET", "/api/users/current")
    assert me["id"] == sub("carol") and me["role"] == "user", me
    assert w.sql("SELECT pending_approval, blocked FROM users WHERE id = %s", (sub("carol"),)) == [(False, False)]
    # bob blocked by the owner on replica 1: refused on replica 2.
    a1.ok("PUT", "/api/users/" + sub("bob"), {"role": "user", "auto_groups": [], "is_blocked": True})
    bob.error("GET", "/api/users/current", 403, message="user is blocked")
    apifix.jwt_api(r1, bob.token).error("GET", "/api/users/current", 403, message="user is blocked")
    assert w.sql("SELECT blocked FROM users WHERE id = %s", (sub("bob"),)) == [(True,)]
    # A new sign-in does not get round it.
    w.api(r2, "bob").error("GET", "/api/peers", 403, message="user is blocked")
    # Unblocked on replica 2: back in.
    a2.ok("PUT", "/api/users/" + sub("bob"), {"role": "user", "auto_groups": [], "is_blocked": False})
    assert apifix.jwt_api(r1, bob.token).ok("GET", "/api/users/current")["is_blocked"] is False


# ---- 3. JWT groups and the allow list ----------------------------------------------------------

def jwt_groups(w, acc):
    return {name: gid for gid, name in w.sql("SELECT id, name FROM groups WHERE account_id = %s AND issued = 'jwt'",
                                             (acc,))}


@test
def groups_from_the_providers_claim_and_the_allow_list():
    w = World()
    r1, r2 = w.servers
    acc, a1, a2 = owner_setup(w)
    a1.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=EXTRA_OFF, jwt_groups_enabled=True,
                                                          jwt_groups_claim_name="groups"))
    erin_tok = w.dashboard_token("erin")
    me = w.api(r2, token=erin_tok).ok("GET", "/api/users/current")
    groups = jwt_groups(w, acc)
    assert {"ops", "devs"} <= set(groups), groups
    assert sorted(me["auto_groups"]) == sorted([groups["ops"], groups["devs"]]), (me, groups)
    listed = {g["name"]: g for g in a1.ok("GET", "/api/groups")}
    assert listed["ops"]["issued"] == "jwt" and listed["devs"]["issued"] == "jwt", listed

    # The provider now says erin is in devs and qa (restarted with the new
    # users; same keys): the next sign-in's groups are erin's auto_groups.
    users = [dict(u, groups=["devs", "qa"]) if u["login"] == "erin" else u for u in USERS]
    w.provider_down()
    w.provider_up(users)
    me = w.api(r1, "erin").ok("GET", "/api/users/current")
    groups = jwt_groups(w, acc)
    assert "qa" in groups, groups
    assert sorted(me["auto_groups"]) == sorted([groups["devs"], groups["qa"]]), (me, groups)
    assert users_by_id(a2)[sub("erin")]["auto_groups"] == me["auto_groups"]

    # An allow list without erin's groups: refused with NetBird's texts on
    # both sides (REST 401 "token invalid"; an agent's Login PermissionDenied).
    a2.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=EXTRA_OFF, jwt_groups_enabled=True,
                                                          jwt_groups_claim_name="groups",
                                                          jwt_allow_groups=["admins"]))
    for srv in (r1, r2):
        w.api(srv, "erin").error("GET", "/api/users/current", 401, message="token invalid")
    ag = w.dep.agent(r1)
    expect_rpc(lambda: ag.login(jwt_token=w.agent_token(ag, "erin"), meta=build_meta("erin-laptop")),
               SC.PERMISSION_DENIED, "user does not belong to any of the allowed JWT groups")
    assert w.sql("SELECT count(*) FROM peers")[0][0] == 0
    # alice (in admins) is still served.
    assert w.api(r2, "alice").ok("GET", "/api/users/current")["id"] == sub("alice")


# ---- 4. key rotation ------------------------------------------------------------------------------

@test
def rotated_provider_keys_are_refetched_by_every_replica():
    w = World()
    r1, r2 = w.servers
    owner_setup(w)
    old = w.dashboard_token("alice")
    for s in w.servers:
        assert w.api(s, token=old).ok("GET", "/api/users/current")["id"] == sub("alice")
    before = [key_fetches(s) for s in w.servers]
    assert all(b >= 1 for b in before), before
    old_kid = json.loads(oidcflow.base64.urlsafe_b64decode(old.split(".")[0] + "==="))["kid"]
    new_kid = w.p.rotate_keys()
    assert new_kid != old_kid
    new = w.dashboard_token("alice")
    assert json.loads(oidcflow.base64.urlsafe_b64decode(new.split(".")[0] + "==="))["kid"] == new_kid
    # The unknown kid makes each replica refetch at once; the request waits for it.
    for s in w.servers:
        assert w.api(s, token=new).ok("GET", "/api/users/current")["id"] == sub("alice")
    after = [key_fetches(s) for s in w.servers]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    assert [metric(s, "netbird_cp_jwt_signing_keys") for s in w.servers] == [2.0, 2.0]
    # The old key is still published: tokens signed before the rotation work.
    for s in w.servers:
        assert w.api(s, token=old).ok("GET", "/api/users/current")["id"] == sub("alice")
    # An agent's SSO Login with a new-kid token from the agent client, on replica 2.
    ag = w.dep.agent(r2)
    resp = ag.login(jwt_token=w.agent_token(ag, "alice"), meta=build_meta("rotated"))
    assert resp.HasField("peerConfig"), json_dump(resp)


# ---- 5. IdP down ---------------------------------------------------------------------------------

@test
def provider_down_validated_tokens_keep_working_readyz_stays_200():
    w = World()
    r1, r2 = w.servers
    acc, a1, a2 = owner_setup(w)
    bob = w.dashboard_token("bob")
    for s in w.servers:
        w.api(s, token=bob).ok("GET", "/api/users/current")
    w.provider_down()
    # Tokens already validated are served from the cache (until their exp,
    # an hour for this provider), on both replicas; /readyz stays 200.
    for s in w.servers:
        hits = metric(s, "netbird_cp_jwt_cache_hits_total")
        assert w.api(s, token=bob).ok("GET", "/api/users/current")["id"] == sub("bob")
        assert metric(s, "netbird_cp_jwt_cache_hits_total") == hits + 1
        assert w.api(s, token=a1.token).ok("GET", "/api/groups")
        st, _, body = svc.http_json("GET", s.url("/readyz"))
        assert st == 200 and body.get("status") == "ready", (st, body)
    # No new sign-in while the provider is down.
    try:
        w.dashboard_token("carol")
    except OSError as e:            # connection refused (urllib.error.URLError)
        print("# sign-in while down: %r" % (e,))
    else:
        raise AssertionError("signed in with the provider down")
    # A replica started now has no keys: ready for agents (200), degraded
    # "idp" in the body, IdP tokens refused.
    r3 = w.replica()
    time.sleep(1.0)
    st, _, body = svc.http_json("GET", r3.url("/readyz"))
    assert st == 200 and body.get("degraded") == "idp", (st, body)
    w.api(r3, token=bob).error("GET", "/api/users/current", 401, message="token invalid")
    assert key_fetches(r3, "failed") >= 1
    # The provider back (same keys): sign-in works and every replica takes the token.
    w.provider_up()
    carol = w.dashboard_token("carol")
    wait_keys(r3)
    for s in (r1, r2, r3):
        me = w.api(s, token=carol).ok("GET", "/api/users/current")
        assert me["id"] == sub("carol") and me["role"] == "user", me
        st, _, body = svc.http_json("GET", s.url("/readyz"))
        assert st == 200 and body.get("status") == "ready", (st, body)
    assert w.api(r3, token=bob).ok("GET", "/api/users/current")["id"] == sub("bob")


# ---- 6. SSO peers ----------------------------------------------------------------------------------

def deadline_s(w, key):
    return w.sql("SELECT floor(extract(epoch FROM p.last_login + a.settings_peer_login_expiration / 1000"
                 " * interval '1 microsecond'))::bigint FROM peers p JOIN accounts a ON a.id = p.account_id"
                 " WHERE p.key = %s", (key,))[0][0]


@test
def sso_peer_registers_replay_refused_extends_expires_and_comes_back():
    w = World(extra=("--login-expiry-check-interval", "500ms"))
    r1, r2 = w.servers
    acc, a1, a2 = owner_setup(w)
    # `netbird up` without a setup key: a bare Login is refused, then the
    # PKCE sign-in with the settings the server gives, then Login with the JWT.
    a = w.dep.agent(r1)
    expect_rpc(lambda: a.login(meta=build_meta("sso-laptop")), SC.PERMISSION_DENIED,
               "no peer auth method provided, please use a setup key or interactive SSO login")
    tok = w.agent_token(a, "alice")
    resp = a.login(jwt_token=tok, meta=build_meta("sso-laptop"))
    row = w.sql("SELECT id, user_id, name, login_expiration_enabled FROM peers WHERE key = %s", (a.pub_b64,))
    assert len(row) == 1 and row[0][1:] == (sub("alice"), "sso-laptop", True), row
    peer_id = row[0][0]
    assert resp.sessionExpiresAt.seconds == deadline_s(w, a.pub_b64), json_dump(resp)
    listed = [p for p in a2.ok("GET", "/api/peers") if p["id"] == peer_id]
    assert listed and listed[0]["user_id"] == sub("alice") and listed[0]["login_expiration_enabled"], listed
    # The same JWT replayed on replica 2 (same peer key): already used.
    b = w.dep.agent(r2, private_key=a.key)
    expect_rpc(lambda: b.login(jwt_token=tok, meta=build_meta("sso-laptop")), SC.UNAUTHENTICATED,
               "JWT already used")
    # ExtendAuthSession on replica 2 with a fresh token moves the deadline.
    before = deadline_s(w, a.pub_b64)
    time.sleep(1.1)
    ext = b.extend_auth_session(w.agent_token(b, "alice"))
    after = deadline_s(w, a.pub_b64)
    assert after > before and ext.sessionExpiresAt.seconds == after, (before, after, json_dump(ext))

    # A watcher peer (setup key made over the API) on replica 2.
    key = a2.ok("POST", "/api/setup-keys", {"name": "watcher", "type": "reusable", "expires_in": 86400,
                                             "auto_groups": [], "usage_limit": 0})["key"]
    other = w.dep.agent(r2)
    other.register(key, meta=build_meta("watcher"))
    so = other.sync()
    so.wait_for(lambda m: a.pub_b64 in remote_keys(m), timeout=20)

    # A short login expiration: the API's floor is an hour (NetBird's too).
    a1.error("PUT", "/api/accounts/" + acc, 422, apifix.settings(extra=EXTRA_OFF, peer_login_expiration=3),
             message="peer login expiration can't be smaller than one hour")
    a1.ok("PUT", "/api/accounts/" + acc, apifix.settings(extra=EXTRA_OFF, peer_login_expiration=3600))
    # An hour cannot pass in a test: the session is aged in the database
    # so that its deadline is 3 s away.
    w.sql("UPDATE peers SET last_login = now() - interval '3597 seconds' WHERE key = %s", (a.pub_b64,))
    so.wait_for(lambda m: a.pub_b64 in {p.wgPubKey for p in m.NetworkMap.offlinePeers}, timeout=30)
    assert w.sql("SELECT peer_status_login_expired FROM peers WHERE key = %s", (a.pub_b64,)) == [(True,)]
    for agent in (a, b):
        expect_rpc(lambda: agent.login(meta=build_meta("sso-laptop")), SC.PERMISSION_DENIED,
                   "peer login has expired, please log in once more")
    assert [p for p in a1.ok("GET", "/api/peers") if p["id"] == peer_id][0]["login_expired"] is True

    # A fresh sign-in brings it back.
    resp = a.login(jwt_token=w.agent_token(a, "alice"), meta=build_meta("sso-laptop"))
    assert resp.sessionExpiresAt.seconds == deadline_s(w, a.pub_b64), json_dump(resp)
    so.wait_for(lambda m: a.pub_b64 in remote_keys(m)
                and a.pub_b64 not in {p.wgPubKey for p in m.NetworkMap.offlinePeers}, timeout=20)
    assert w.sql("SELECT peer_status_login_expired FROM peers WHERE key = %s", (a.pub_b64,)) == [(False,)]
    s = a.sync()
    first = s.next(timeout=15)
    assert other.pub_b64 in remote_keys(first), json_dump(first)
    s.cancel()
    so.cancel()


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
