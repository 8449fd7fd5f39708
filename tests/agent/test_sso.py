"""SSO peers on the agent protocol (services/management/agent/mgmt-auth.c,
mgmt-login.c; common/store/store-sso.c): Login with a JWT (registration,
owner, blocked and pending users), ExtendAuthSession in every case, the
one-time JWT claim across two replicas on one database, login and
inactivity expiry seen by other peers, and an admin's settings change
reaching the stream's sessionExpiresAt.

Tokens come from tests/idp/testidp.py's TestIdP; the server reads its
HttpConfig from management.json. (tests/idp/test_e2e_identity.py does
the same with tokens from the real OIDC provider.)
"""

import os
import sys
import time
import urllib.request
import json
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "idp"))

import grpc  # noqa: E402

import fixture  # noqa: E402
import svc  # noqa: E402
from fixture import Deployment, wait_until, json_dump  # noqa: E402
from nbagent import RpcFailed, StreamEnded, build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402
import testidp  # noqa: E402

SC = grpc.StatusCode
NOT_OWNER = "peer is already registered by a different User or a Setup Key"


# ---- helpers ---------------------------------------------------------------------------

def sso_deployment(replicas=1, extra_args=()):
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    cfg = dict(fixture.NETBIRD_CONFIG)
    cfg["HttpConfig"] = idp.http_config()
    dep = Deployment(config=cfg)
    servers = [dep.start(*extra_args) for _ in range(replicas)]
    return idp, dep, servers


def fresh(idp, sub, **kw):
    """A token no other call has used: identical claims signed with RS256
    give identical tokens (same second), and every JWT is single-use."""
    extra = dict(kw.pop("extra", None) or {})
    extra["jti"] = uuid.uuid4().hex
    return idp.token(sub, extra=extra, **kw)


def jwt_login(agent, token, meta=None, **kw):
    """Login with a JWT (the server has HttpConfig: a no-IdP refusal is a failure)."""
    return agent.login(jwt_token=token, meta=meta, **kw)


def expect_fail(fn, code, text=None):
    try:
        fn()
    except RpcFailed as e:
        assert e.code == code, (e.code, e.details)
        if text is not None:
            assert text in e.details, (text, e.details)
        return e
    raise AssertionError("expected %s" % code)


def add_user(dep, uid, **cols):
    dep.sql("INSERT INTO users (id, account_id, role, blocked, pending_approval) VALUES (%s, %s, 'user', %s, %s)",
            (uid, dep.account_id, cols.get("blocked", False), cols.get("pending", False)))


def deadline_s(dep, key):
    return dep.sql("SELECT floor(extract(epoch FROM p.last_login + a.settings_peer_login_expiration / 1000"
                   " * interval '1 microsecond'))::bigint FROM peers p JOIN accounts a ON a.id = p.account_id"
                   " WHERE p.key = %s", (key,))[0][0]


def jwt_refused(srv):
    """netbird_cp_jwt_tokens_total{result="refused"} from /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.http_port, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('netbird_cp_jwt_tokens_total{result="refused"}'):
                return float(line.split()[-1])
    return 0.0


def api(srv, dep, method, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (srv.http_port, path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Token " + dep.admin_token,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


# ---- tests -----------------------------------------------------------------------------------

@test
def sso_register_on_one_replica_extend_on_the_other():
    idp, dep, (r1, r2) = sso_deployment(replicas=2)
    a = dep.agent(r1)
    tok = fresh(idp, dep.user_id, email="owner@example.com")
    resp = jwt_login(a, tok, meta=build_meta("sso-laptop"))
    row = dep.sql("SELECT user_id, login_expiration_enabled, inactivity_expiration_enabled FROM peers"
                  " WHERE key = %s", (a.pub_b64,))
    assert row == [(dep.user_id, True, True)], row
    assert resp.HasField("sessionExpiresAt") and resp.sessionExpiresAt.seconds == deadline_s(dep, a.pub_b64)
    assert dep.sql("SELECT count(*) FROM events WHERE activity = 0 AND initiator_id = %s",
                   (dep.user_id,))[0][0] == 1
    # The same JWT on the other replica: already used (the claim is in PostgreSQL).
    b = dep.agent(r2, private_key=a.key)
    expect_fail(lambda: b.extend_auth_session(tok), SC.UNAUTHENTICATED, "JWT already used")
    # A fresh JWT extends the session on replica 2.
    before = deadline_s(dep, a.pub_b64)
    time.sleep(1.1)
    ext = b.extend_auth_session(fresh(idp, dep.user_id))
    after = deadline_s(dep, a.pub_b64)
    assert after > before, (before, after)
    assert ext.sessionExpiresAt.seconds == after, (json_dump(ext), after)
    assert dep.sql("SELECT count(*) FROM events WHERE activity = 125")[0][0] == 1


@test
def extend_auth_session_refusals():
    idp, dep, (srv,) = sso_deployment()
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    expect_fail(lambda: a.extend_auth_session(""), SC.INVALID_ARGUMENT, "jwt token is required")
    # A bad token: three attempts (three refusals counted), then the
    # validator's text.
    refused = jwt_refused(srv)
    expect_fail(lambda: a.extend_auth_session(testidp.TestIdP.tamper(fresh(idp, dep.user_id))),
                SC.INVALID_ARGUMENT, "invalid jwt token, err:")
    assert jwt_refused(srv) == refused + 3, (refused, jwt_refused(srv))
    # Another user's JWT.
    add_user(dep, "other-user")
    expect_fail(lambda: a.extend_auth_session(fresh(idp, "other-user")), SC.PERMISSION_DENIED, NOT_OWNER)
    # A setup-key peer is not eligible.
    k = dep.agent(srv)
    k.register(dep.setup_key, meta=build_meta("keyed"))
    expect_fail(lambda: k.extend_auth_session(fresh(idp, dep.user_id)), SC.FAILED_PRECONDITION,
                "peer is not eligible for session extension")
    # Expiration off for the account.
    dep.sql("UPDATE accounts SET settings_peer_login_expiration_enabled = false WHERE id = %s", (dep.account_id,))
    expect_fail(lambda: a.extend_auth_session(fresh(idp, dep.user_id)), SC.FAILED_PRECONDITION,
                "peer login expiration is disabled for the account")
    assert dep.sql("SELECT count(*) FROM events WHERE activity = 125")[0][0] == 0


@test
def extend_auth_session_pushes_no_map():
    idp, dep, (srv,) = sso_deployment()
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    s = a.sync()
    first = s.next(timeout=15)
    serial = dep.network_serial()
    a.extend_auth_session(fresh(idp, dep.user_id))
    assert dep.network_serial() == serial
    try:
        m = s.next(timeout=2.0)
        raise AssertionError("a map was pushed after ExtendAuthSession: " + json_dump(m))
    except Exception as e:  # WaitTimeout: nothing came
        if isinstance(e, AssertionError):
            raise
    s.cancel()
    assert first.HasField("sessionExpiresAt")


@test
def cancelled_retry_wait_ends_the_call():
    idp, dep, (srv,) = sso_deployment()
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    bad = testidp.TestIdP.tamper(fresh(idp, dep.user_id))
    # The client gives up after 100 ms, inside the first 200 ms wait.
    req_meta = build_meta()
    try:
        a._encrypted_unary("ExtendAuthSession", __import__("nbagent").pb.ExtendAuthSessionRequest(
            jwtToken=bad, meta=req_meta), __import__("nbagent").pb.ExtendAuthSessionResponse, timeout=0.1)
        raise AssertionError("the call should have been cut by its deadline")
    except RpcFailed as e:
        assert e.code == SC.DEADLINE_EXCEEDED, e
    # The worker saw the cancellation during the wait and ended the call.
    obj = srv.wait_log(lambda o: "cancelled during the JWT retry wait" in (o.get("detail") or ""), timeout=10)
    assert obj.get("code") == "CANCELLED", obj


@test
def login_refusals_not_owner_blocked_pending():
    idp, dep, (srv,) = sso_deployment()
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    add_user(dep, "intruder")
    expect_fail(lambda: a.login(jwt_token=fresh(idp, "intruder")), SC.PERMISSION_DENIED, NOT_OWNER)
    k = dep.agent(srv)
    k.register(dep.setup_key, meta=build_meta("keyed"))
    expect_fail(lambda: k.login(jwt_token=fresh(idp, dep.user_id)), SC.PERMISSION_DENIED, NOT_OWNER)
    dep.sql("UPDATE peers SET peer_status_login_expired = true WHERE key = %s", (a.pub_b64,))
    dep.sql("UPDATE users SET blocked = true WHERE id = %s", (dep.user_id,))
    expect_fail(lambda: a.login(jwt_token=fresh(idp, dep.user_id)), SC.PERMISSION_DENIED, "user is blocked")
    # Sync of a blocked user's peer (NetBird's SyncPeer checks it first).
    expect_fail(lambda: a.sync().next(timeout=10), SC.PERMISSION_DENIED, "user is blocked")
    add_user(dep, "waiting", pending=True)
    n = dep.agent(srv)
    expect_fail(lambda: n.login(jwt_token=fresh(idp, "waiting")), SC.PERMISSION_DENIED,
                "user pending approval cannot add peers")


@test
def login_expiry_and_jwt_login_brings_it_back():
    idp, dep, (srv,) = sso_deployment(extra_args=("--login-expiry-check-interval", "500ms"))
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    other = dep.agent(srv)
    other.register(dep.setup_key, meta=build_meta("watcher"))
    so = other.sync()
    so.next(timeout=15)
    dep.sql("UPDATE accounts SET settings_peer_login_expiration = 2000000000 WHERE id = %s", (dep.account_id,))
    so.wait_for(lambda m: a.pub_b64 in {p.wgPubKey for p in m.NetworkMap.offlinePeers}, timeout=20)
    expect_fail(lambda: a.login(), SC.PERMISSION_DENIED, "peer login has expired, please log in once more")
    expect_fail(lambda: a.sync().next(timeout=10), SC.PERMISSION_DENIED, "peer login has expired")
    dep.sql("UPDATE accounts SET settings_peer_login_expiration = 3600000000000 WHERE id = %s", (dep.account_id,))
    jwt_login(a, fresh(idp, dep.user_id))
    so.wait_for(lambda m: a.pub_b64 in remote_keys(m), timeout=20)
    assert dep.sql("SELECT count(*) FROM events WHERE activity = 49")[0][0] == 1
    s = a.sync()
    s.next(timeout=15)
    s.cancel()
    so.cancel()


@test
def expiry_ends_the_stream_on_a_replica_that_did_not_sweep():
    # r1 sweeps; r2 never does (interval 0s) and holds the SSO peer's
    # stream: the expiry reaches r2 as a serial change (the serial check
    # here; the bus in a cluster) and r2's fan-out ends the stream.
    idp, dep, (r1,) = sso_deployment(extra_args=("--login-expiry-check-interval", "500ms",
                                                 "--serial-check-interval", "500ms"))
    r2 = dep.start("--login-expiry-check-interval", "0s", "--serial-check-interval", "500ms")
    a = dep.agent(r2)
    jwt_login(a, fresh(idp, dep.user_id))
    s = a.sync()
    s.next(timeout=15)
    dep.sql("UPDATE accounts SET settings_peer_login_expiration = 2000000000 WHERE id = %s", (dep.account_id,))
    wait_until(lambda: dep.sql("SELECT peer_status_login_expired FROM peers WHERE key = %s",
                               (a.pub_b64,))[0][0], timeout=20, what="r1's sweep")
    ended, _ = s.wait_end(timeout=20)
    assert isinstance(ended, StreamEnded), ended       # a clean end (OK), as NetBird closes the channel
    expect_fail(lambda: a.sync().next(timeout=10), SC.PERMISSION_DENIED, "peer login has expired")


@test
def inactivity_expiry():
    idp, dep, (srv,) = sso_deployment(extra_args=("--login-expiry-check-interval", "500ms"))
    a = dep.agent(srv)
    jwt_login(a, fresh(idp, dep.user_id))
    dep.sql("UPDATE accounts SET settings_peer_inactivity_expiration_enabled = true,"
            " settings_peer_inactivity_expiration = 1000000000 WHERE id = %s", (dep.account_id,))
    wait_until(lambda: dep.sql("SELECT peer_status_login_expired FROM peers WHERE key = %s",
                               (a.pub_b64,))[0][0], timeout=20, what="inactivity expiry")
    assert dep.sql("SELECT meta->>'reason' FROM events WHERE activity = 50") == [("inactivity timeout",)]
    expect_fail(lambda: a.login(), SC.PERMISSION_DENIED, "peer login has expired")


@test
def settings_change_reaches_the_stream():
    # Runs without the validator too: the SSO peer is made with SQL.
    idp, dep, (r1, r2) = sso_deployment(replicas=2, extra_args=("--serial-check-interval", "500ms"))
    a = dep.agent(r1)
    a.register(dep.setup_key, meta=build_meta("sso-made"))
    dep.sql("UPDATE peers SET user_id = %s, login_expiration_enabled = true, last_login = now()"
            " WHERE key = %s", (dep.user_id, a.pub_b64))
    s = a.sync()
    first = s.next(timeout=15)
    assert first.sessionExpiresAt.seconds == deadline_s(dep, a.pub_b64), json_dump(first)
    acct = api(r2, dep, "GET", "/api/accounts")[0]
    settings = dict(acct["settings"])
    settings["peer_login_expiration"] = 7200
    api(r2, dep, "PUT", "/api/accounts/" + dep.account_id, {"settings": settings})
    m = s.wait_for(lambda m: m.sessionExpiresAt.seconds == deadline_s(dep, a.pub_b64)
                   and m.sessionExpiresAt.seconds != first.sessionExpiresAt.seconds, timeout=20)
    settings["peer_login_expiration_enabled"] = False
    api(r2, dep, "PUT", "/api/accounts/" + dep.account_id, {"settings": settings})
    m = s.wait_for(lambda m: m.HasField("sessionExpiresAt") and m.sessionExpiresAt.seconds == 0, timeout=20)
    s.cancel()


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
