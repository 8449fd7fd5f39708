"""deploy/oidc, the dev OIDC provider, for real: node server.js on a free
loopback port, signed in to with a real authorization code + PKCE flow
(tests/idp/oidcflow.py). Checks the tokens' signatures against the JWKS the
discovery document names and their claims, refused logins and redirect
URIs, refresh tokens, CORS for the dashboard's origin, the device flow,
key rotation (SIGUSR1) and that a restart keeps the keys and users.

Needs node and deploy/oidc/node_modules (deploy/oidc/install; tests/run
runs it through deploy/install-deps); without them every case skips.
"""

import os
import shutil
import subprocess
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))

import jwt  # noqa: E402

import oidcflow  # noqa: E402
import svc  # noqa: E402
from svc import test  # noqa: E402

ORIGIN = "http://127.0.0.1:9"               # the dashboard's origin; nothing listens there
DASH_REDIRECT = ORIGIN + "/nb-auth"         # made from --dashboard-origin
AGENT_REDIRECT = "http://localhost:53000/"  # NetBird's agent PKCE default
AUDIENCE = "netbird-test-api"


def provider(**kw):
    kw.setdefault("dashboard_origins", [ORIGIN])
    kw.setdefault("audience", AUDIENCE)
    p = oidcflow.Provider(**kw)
    try:
        p.start()
    except oidcflow.Unavailable as e:
        raise svc.Skip(str(e))
    svc.defer(p.stop)
    return p


def verify(p, token, audience, **kw):
    """Signature against the JWKS of the discovery document, issuer,
    audience, expiry; returns the claims."""
    disc = oidcflow.get_json(p.discovery_url)
    assert disc["issuer"] == p.issuer, disc
    key = jwt.PyJWKClient(disc["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(token)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=p.issuer,
                      options={"require": ["exp", "iat", "sub", "aud", "iss"]}, **kw)


def check_user_claims(claims, user):
    assert claims["sub"] == user["sub"], (claims, user)
    assert claims["email"] == user["email"] and claims["name"] == user["name"], claims
    assert claims["groups"] == user["groups"], claims


@test
def dashboard_flow_for_both_users():
    p = provider()
    disc = p.discovery
    for k in ("authorization_endpoint", "token_endpoint", "jwks_uri", "device_authorization_endpoint"):
        assert disc.get(k, "").startswith(p.issuer + "/"), (k, disc)
    assert "S256" in disc["code_challenge_methods_supported"], disc
    subs = set()
    for login in ("alice", "bob"):
        user = p.user(login)
        tok = oidcflow.login(p.issuer, login, user["password"], p.dashboard_client_id, DASH_REDIRECT,
                             audience=AUDIENCE)
        assert tok["token_type"] == "Bearer" and tok.get("refresh_token"), sorted(tok)
        # The access token: a JWT for the API (aud = the audience), with the
        # user's claims, what the dashboard sends by default.
        at = verify(p, tok["access_token"], AUDIENCE)
        check_user_claims(at, user)
        assert at["client_id"] == p.dashboard_client_id and "api" in at["scope"].split(), at
        # The ID token: aud = the client, the nonce of the request, the same claims.
        it = verify(p, tok["id_token"], p.dashboard_client_id)
        check_user_claims(it, user)
        assert it["nonce"] == tok["nonce"], it
        subs.add(at["sub"])
    assert len(subs) == 2, subs


@test
def agent_pkce_client():
    """NetBird's agent PKCE flow: its own public client, redirect to
    http://localhost:53000/, access token for the same audience."""
    p = provider()
    user = p.user("bob")
    tok = oidcflow.login(p.issuer, "bob", user["password"], p.agent_client_id, AGENT_REDIRECT,
                         scope="openid profile email offline_access api", audience=AUDIENCE)
    check_user_claims(verify(p, tok["access_token"], AUDIENCE), user)
    check_user_claims(verify(p, tok["id_token"], p.agent_client_id), user)
    # The other port NetBird offers works too.
    tok = oidcflow.login(p.issuer, "bob", user["password"], p.agent_client_id, "http://localhost:54000/")
    assert verify(p, tok["access_token"], AUDIENCE)["sub"] == user["sub"]


@test
def wrong_password_and_unknown_user_are_refused():
    p = provider()
    alice = p.user("alice")
    for login, password in (("alice", "not-" + alice["password"]), ("alice", ""), ("mallory", alice["password"]),
                            ("bob", alice["password"])):
        try:
            oidcflow.login(p.issuer, login, password, p.dashboard_client_id, DASH_REDIRECT)
        except oidcflow.LoginRefused as e:
            assert e.status == 401 and "Wrong login or password" in e.body, (e.status, e.body[:500])
        else:
            raise AssertionError("%s/%r was let in" % (login, password))
    # And the right password still works afterwards.
    oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id, DASH_REDIRECT)


@test
def unregistered_redirect_uri_is_refused():
    """No redirect to a URI the client did not register (an open redirect
    would hand codes to anyone), and no PKCE-less request."""
    p = provider()
    _, challenge = oidcflow.pkce_pair()
    base = {"client_id": p.dashboard_client_id, "response_type": "code", "scope": "openid",
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "s"}
    b = oidcflow.Browser()
    for q in (dict(base, redirect_uri="http://127.0.0.1:9/elsewhere"),
              dict(base, redirect_uri="http://evil.example/nb-auth"),
              dict(base, client_id=p.agent_client_id, redirect_uri=DASH_REDIRECT)):
        status, headers, body = b.request("GET", p.discovery["authorization_endpoint"] + "?" +
                                          urllib.parse.urlencode(q))
        assert status == 400 and "Location" not in headers and "redirect_uri" in body, (status, body[:300])
    q = dict(base, redirect_uri=DASH_REDIRECT)
    del q["code_challenge"], q["code_challenge_method"]
    got = b.follow("GET", p.discovery["authorization_endpoint"] + "?" + urllib.parse.urlencode(q), DASH_REDIRECT)
    assert got[0] == "redirect", got[:3]
    back = urllib.parse.parse_qs(urllib.parse.urlsplit(got[1]).query)
    assert back["error"] == ["invalid_request"] and "code" not in back, back


@test
def refresh_token_gives_new_tokens():
    p = provider()
    alice = p.user("alice")
    tok = oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id, DASH_REDIRECT)
    again = oidcflow.refresh(p.issuer, p.dashboard_client_id, tok["refresh_token"])
    at = verify(p, again["access_token"], AUDIENCE)
    check_user_claims(at, alice)
    assert again["access_token"] != tok["access_token"], "the same access token again"
    check_user_claims(verify(p, again["id_token"], p.dashboard_client_id), alice)
    # The agent client cannot use the dashboard's refresh token.
    try:
        oidcflow.refresh(p.issuer, p.agent_client_id, again["refresh_token"])
    except oidcflow.FlowError as e:
        assert "invalid_grant" in str(e), e
    else:
        raise AssertionError("another client used the refresh token")


@test
def cors_for_the_dashboard_origin_only():
    p = provider()
    alice = p.user("alice")
    tok = oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id, DASH_REDIRECT)
    form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": p.dashboard_client_id,
                                   "refresh_token": tok["refresh_token"]}).encode()
    for origin, allowed in ((ORIGIN, True), ("http://evil.example", False)):
        req = oidcflow.urllib.request.Request(p.discovery["token_endpoint"], data=form, method="POST",
                                              headers={"Origin": origin,
                                                       "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with oidcflow.urllib.request.urlopen(req, timeout=10) as r:
                status, headers = r.status, r.headers
        except oidcflow.urllib.error.HTTPError as e:
            status, headers = e.code, e.headers
        acao = headers.get("Access-Control-Allow-Origin")
        if allowed:
            assert status == 200 and acao == origin, (origin, status, acao)
            form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": p.dashboard_client_id,
                                           "refresh_token": "x"}).encode()
        else:
            assert acao != origin and acao != "*", (origin, status, acao)
    # Discovery and the JWKS are readable from anywhere.
    status, headers, _ = svc.http("GET", p.discovery_url, headers={"Origin": "http://evil.example"})
    assert status == 200 and headers.get("Access-Control-Allow-Origin") in ("*", "http://evil.example"), headers


@test
def key_rotation_publishes_a_new_kid_and_restart_keeps_keys():
    p = provider()
    alice = p.user("alice")
    old = oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id, DASH_REDIRECT)
    old_kid = jwt.get_unverified_header(old["access_token"])["kid"]
    assert [k["kid"] for k in p.jwks()["keys"]] == [old_kid], p.jwks()
    new_kid = p.rotate_keys()
    assert new_kid != old_kid
    kids = [k["kid"] for k in p.jwks()["keys"]]
    assert kids == [new_kid, old_kid], kids
    for k in p.jwks()["keys"]:
        assert k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" and "d" not in k, k
    # New tokens are signed with the new key; the old token still verifies.
    new = oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id, DASH_REDIRECT)
    assert jwt.get_unverified_header(new["access_token"])["kid"] == new_kid
    check_user_claims(verify(p, new["access_token"], AUDIENCE), alice)
    check_user_claims(verify(p, old["access_token"], AUDIENCE), alice)
    # Sign-ins from before the rotation carry on: the refresh token still works.
    refreshed = oidcflow.refresh(p.issuer, p.dashboard_client_id, old["refresh_token"])
    assert jwt.get_unverified_header(refreshed["access_token"])["kid"] == new_kid
    check_user_claims(verify(p, refreshed["access_token"], AUDIENCE), alice)
    # A restart on the same data directory keeps the kids and the users.
    data_dir = p.data_dir
    p.own_dir = False
    p.stop()
    svc.defer(lambda: __import__("shutil").rmtree(data_dir, ignore_errors=True))
    q = provider(data_dir=data_dir)
    assert [k["kid"] for k in q.jwks()["keys"]] == [new_kid, old_kid], q.jwks()
    assert q.user("alice") == alice
    tok = oidcflow.login(q.issuer, "alice", alice["password"], q.dashboard_client_id, DASH_REDIRECT)
    assert jwt.get_unverified_header(tok["access_token"])["kid"] == new_kid


@test
def device_flow_for_the_agent():
    """NetBird's device authorization flow: the agent asks for a code, the
    user enters it, confirms and signs in; the agent's poll then gets the
    tokens."""
    p = provider()
    bob = p.user("bob")
    start = oidcflow.device_start(p.issuer, p.agent_client_id, audience=AUDIENCE)
    assert start["verification_uri"] == p.issuer + "/device" and start["user_code"], start
    try:
        oidcflow.device_token(p.issuer, p.agent_client_id, start["device_code"])
    except oidcflow.FlowError as e:
        assert "authorization_pending" in str(e), e
    else:
        raise AssertionError("tokens before the user approved")
    # A wrong code is not taken; a wrong password is refused, and the
    # right one on the same page then approves the device.
    status, body, _ = oidcflow.device_approve(start, "bob", bob["password"], user_code="BCDF-GHJK")
    assert "did not work" in body, (status, body[:500])
    status, body, refusals = oidcflow.device_approve(start, "bob", ["wrong", bob["password"]])
    assert status == 200 and "Device connected" in body and refusals == 1, (status, refusals, body[:500])
    tok = oidcflow.device_token(p.issuer, p.agent_client_id, start["device_code"])
    check_user_claims(verify(p, tok["access_token"], AUDIENCE), bob)
    check_user_claims(verify(p, tok["id_token"], p.agent_client_id), bob)
    # The dashboard's client has no device grant.
    try:
        oidcflow.device_start(p.issuer, p.dashboard_client_id)
    except oidcflow.FlowError as e:
        assert "device_code is not allowed for this client" in str(e), e
    else:
        raise AssertionError("the dashboard client started a device flow")


@test
def users_from_the_environment():
    users = [{"login": "carol", "password": "carol-pass-1", "sub": "u-carol", "email": "carol@example.com",
              "name": "Carol", "groups": ["ops"]}]
    p = provider(users=users)
    tok = oidcflow.login(p.issuer, "carol", "carol-pass-1", p.dashboard_client_id, DASH_REDIRECT)
    check_user_claims(verify(p, tok["access_token"], AUDIENCE), users[0])
    assert not os.path.exists(os.path.join(p.data_dir, "users.json")), "default users made anyway"
    try:
        oidcflow.login(p.issuer, "alice", "x", p.dashboard_client_id, DASH_REDIRECT)
    except oidcflow.LoginRefused:
        pass
    else:
        raise AssertionError("alice exists though OIDC_USERS has only carol")


@test
def bad_options_are_refused():
    if not shutil.which("node") or not os.path.isdir(os.path.join(oidcflow.OIDC_DIR, "node_modules")):
        raise svc.Skip("node or deploy/oidc/node_modules missing")
    server = os.path.join(oidcflow.OIDC_DIR, "server.js")
    d = svc.tmpdir()
    for args, needle in ((["--port", "x", "--data-dir", d], "--port wants a port number"),
                         (["--port", "1"], "--data-dir is required"),
                         (["--port", "1", "--data-dir", d, "--dashboard-origin", "http://x/path"], "is not an origin"),
                         (["--port", "1", "--data-dir", d, "--bogus"], "unknown argument --bogus")):
        r = subprocess.run(["node", server] + args, capture_output=True, text=True, timeout=30,
                           env=svc.clean_env())
        assert r.returncode == 2 and needle in r.stderr, (args, r.returncode, r.stderr[-500:])
    # A users file that is not there is an error, not alice and bob.
    r = subprocess.run(["node", server, "--port", str(svc.free_port()), "--data-dir", d, "--users",
                        os.path.join(d, "missing.json")], capture_output=True, text=True, timeout=30,
                       env=svc.clean_env())
    assert r.returncode == 2 and "oidc: error: --users" in r.stderr and "does not exist" in r.stderr, (
        r.returncode, r.stderr[-500:])
    assert not os.path.exists(os.path.join(d, "users.json"))


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
