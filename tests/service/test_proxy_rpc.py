"""ProxyService's unary RPCs (services/management/proxy/mgmt-proxy-*.c)
against real replicas on one PostgreSQL: every Authenticate,
ValidateSession and ValidateTunnelPeer outcome of proxy-and-api.md 1.6,
session tokens checked with PyNaCl and carried across replicas,
SendStatusUpdate, SendAccessLog (rows written in batches, bad input
refused with nothing written), GetOIDCURL and the callback's state check,
CreateProxyPeer once and only once, account-scoped tokens, and the LLM
RPCs answering UNIMPLEMENTED.

Rows (accounts, users, groups, peers, services with argon2id secrets and
a sealed session key, proxy tokens) are written with SQL by proxyfix.py.
"""

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import svc
from svc import test, Server, base_args
import proxyfix as pf
from proxyfix import q

try:
    import grpc
    OK = grpc.StatusCode.OK
except ImportError:
    grpc = None


def start(dsn, *extra, config=None, **over):
    path = svc.write_json(config) if config is not None else ""
    return Server(base_args(config=path, **over) + list(extra), env=svc.dsn_env(dsn))


class World:
    """One database, one replica (two with replicas=2), two accounts."""

    def __init__(self, replicas=1, config=None):
        pf.need()
        self.dsn, _ = svc.new_db()
        self.servers = [start(self.dsn, config=config) for _ in range(replicas)]
        for s in self.servers:
            svc.defer(s.stop)
        self.a = pf.Account(self.dsn, "100.90.0.0/16")
        self.b = pf.Account(self.dsn, "100.91.0.0/16")
        self.token = pf.global_proxy_token(self.dsn)
        self.proxy = pf.Proxy(self.servers[0], self.token)

    def proxy_on(self, i, token=None):
        return pf.Proxy(self.servers[i], token or self.token)


# ---- Authenticate -------------------------------------------------------------------------

@test
def authenticate_every_outcome():
    w = World()
    auth = {
        "password_auth": {"enabled": True, "password": pf.argon2id("s3cret")},
        "pin_auth": {"enabled": True, "pin": pf.argon2id("1234")},
        "header_auths": [{"enabled": False, "header": "X-Api-Key", "value": pf.argon2id("off")},
                         {"enabled": True, "header": "X-Api-Key", "value": pf.argon2id("k-1")}],
    }
    sid, domain, sk = w.a.service(auth=auth)
    pub = pf.base64.b64encode(bytes(sk.verify_key)).decode()
    p = w.proxy

    r = p.authenticate(id=sid, account_id=w.a.id, password=pf.ppb.PasswordRequest(password="s3cret"))
    assert r.success, r
    c = pf.verify_session(r.session_token, pub, domain)
    assert c["sub"] == "password-user" and c["method"] == "password", c
    assert "email" not in c and "groups" not in c, c

    r = p.authenticate(id=sid, account_id=w.a.id, pin=pf.ppb.PinRequest(pin="1234"))
    assert r.success and pf.verify_session(r.session_token, pub, domain)["sub"] == "pin-user", r
    # header names compare without regard to case; the disabled entry is skipped
    r = p.authenticate(id=sid, account_id=w.a.id,
                       header_auth=pf.ppb.HeaderAuthRequest(header_name="x-api-key", header_value="k-1"))
    assert r.success, r
    c = pf.verify_session(r.session_token, pub, domain)
    assert c["sub"] == "header-user" and c["method"] == "header", c

    # wrong secrets, a disabled header entry, nothing at all: no token, no error
    for kw in ({"password": pf.ppb.PasswordRequest(password="S3cret")},
               {"pin": pf.ppb.PinRequest(pin="0000")},
               {"header_auth": pf.ppb.HeaderAuthRequest(header_name="X-Api-Key", header_value="off")},
               {"header_auth": pf.ppb.HeaderAuthRequest(header_name="X-Other", header_value="k-1")},
               {}):
        r = p.authenticate(id=sid, account_id=w.a.id, **kw)
        assert not r.success and r.session_token == "", (kw, r)

    # a scheme that is not enabled fails the same way
    sid2, _, _ = w.a.service(auth={"password_auth": {"enabled": False, "password": pf.argon2id("x")}})
    r = p.authenticate(id=sid2, account_id=w.a.id, password=pf.ppb.PasswordRequest(password="x"))
    assert not r.success and not r.session_token, r
    # a service without a session key: success, empty token (NetBird)
    sid3, _, _ = w.a.service(auth={"pin_auth": {"enabled": True, "pin": pf.argon2id("9")}}, key=False)
    r = p.authenticate(id=sid3, account_id=w.a.id, pin=pf.ppb.PinRequest(pin="9"))
    assert r.success and r.session_token == "", r

    # unknown service, or a service of another account: FAILED_PRECONDITION
    code, _ = p.code("Authenticate", pf.ppb.AuthenticateRequest(id="nope", account_id=w.a.id),
                     pf.ppb.AuthenticateResponse)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, code
    code, _ = p.code("Authenticate", pf.ppb.AuthenticateRequest(id=sid, account_id=w.b.id),
                     pf.ppb.AuthenticateResponse)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, code

    # an account-scoped token names only its own account
    pb_ = pf.Proxy(w.servers[0], w.b.proxy_token(scoped=True))
    code, msg = pb_.code("Authenticate", pf.ppb.AuthenticateRequest(
        id=sid, account_id=w.a.id, password=pf.ppb.PasswordRequest(password="s3cret")), pf.ppb.AuthenticateResponse)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "account-scoped token" in msg, (code, msg)
    pa = pf.Proxy(w.servers[0], w.a.proxy_token(scoped=True))
    assert pa.authenticate(id=sid, account_id=w.a.id, password=pf.ppb.PasswordRequest(password="s3cret")).success


# ---- ValidateSession ------------------------------------------------------------------------

@test
def validate_session_every_outcome_and_across_replicas():
    w = World(replicas=2)
    devs, ops = w.a.group("devs"), w.a.group("ops")
    sid, domain, sk = w.a.service(auth={"bearer_auth": {"enabled": True, "distribution_groups": [devs]}})
    open_sid, open_domain, open_sk = w.a.service()
    bad_sid, bad_domain, bad_sk = w.a.service(pub="not-a-key")
    alice = w.a.user(email="alice@a.test", auto_groups=[devs, ops])
    bob = w.a.user(email="bob@a.test", auto_groups=[ops])
    pending = w.a.user(email="p@a.test", pending=True, blocked=True, auto_groups=[devs])
    blocked = w.a.user(email="b@a.test", blocked=True, auto_groups=[devs])
    stranger = w.b.user(email="s@b.test")
    p1, p2 = w.proxy_on(0), w.proxy_on(1)

    def reason(p, dom, tok):
        r = p.validate_session(dom, tok)
        return r.valid, r.denied_reason, r

    assert reason(p1, "", "x")[1] == "missing domain or session_token"
    assert reason(p1, domain, "")[1] == "missing domain or session_token"
    assert reason(p1, "unknown.proxy.test", "x")[1] == "service_not_found"
    assert reason(p1, bad_domain, pf.mint_session(bad_sk, alice, bad_domain))[1] == "invalid_service_config"
    assert reason(p1, domain, "garbage")[1] == "invalid_token"
    assert reason(p1, domain, pf.mint_session(open_sk, alice, domain))[1] == "invalid_token"   # other key
    assert reason(p1, domain, pf.mint_session(sk, alice, open_domain))[1] == "invalid_token"   # other aud
    assert reason(p1, domain, pf.mint_session(sk, alice, domain, exp_in=-10))[1] == "invalid_token"
    assert reason(p1, domain, pf.mint_session(sk, alice, domain, iss="someone"))[1] == "invalid_token"
    assert reason(p1, domain, pf.mint_session(sk, "ghost", domain))[1] == "user_not_found"
    v, why, r = reason(p1, domain, pf.mint_session(sk, stranger, domain))
    assert why == "account_mismatch" and r.user_id == "" and not r.peer_group_ids, r
    v, why, r = reason(p1, domain, pf.mint_session(sk, pending, domain))
    assert why == "pending_approval" and r.user_id == pending and list(r.peer_group_ids) == [devs], r
    assert reason(p1, domain, pf.mint_session(sk, blocked, domain))[1] == "user_blocked"
    v, why, r = reason(p1, domain, pf.mint_session(sk, bob, domain))
    assert not v and why == "not_in_group" and r.user_email == "bob@a.test", r
    # bob passes where no distribution groups are set
    assert reason(p1, open_domain, pf.mint_session(open_sk, bob, open_domain))[0]

    # valid: identity and the user's groups, ids and names paired
    v, why, r = reason(p2, domain, pf.mint_session(sk, alice, domain))
    assert v and why == "" and r.user_id == alice and r.user_email == "alice@a.test", r
    assert list(zip(r.peer_group_ids, r.peer_group_names)) == [(devs, "devs"), (ops, "ops")], r

    # an account-scoped token of another account: PERMISSION_DENIED
    pb_ = pf.Proxy(w.servers[1], w.b.proxy_token(scoped=True))
    code, _ = pb_.code("ValidateSession", pf.ppb.ValidateSessionRequest(
        domain=domain, session_token=pf.mint_session(sk, alice, domain)), pf.ppb.ValidateSessionResponse)
    assert code == grpc.StatusCode.PERMISSION_DENIED, code

    # a session minted by replica 1 (the tunnel fast path) validates on replica 2
    w.a.peer("100.90.0.7", name="alice-laptop", user_id=alice, groups=[devs])
    t = p1.validate_tunnel_peer(domain, "100.90.0.7")
    assert t.valid and t.session_token, t
    v, why, r = reason(p2, domain, t.session_token)
    assert v and r.user_id == alice, r

    # rotation: the previous public key keeps validating inside its grace period
    new = pf.nacl.signing.SigningKey.generate()
    old_pub = pf.base64.b64encode(bytes(sk.verify_key)).decode()
    svc.execute(w.dsn, "UPDATE services SET session_prev_public_key = %s, session_prev_valid_until ="
                " CURRENT_TIMESTAMP + interval '1 hour', session_public_key = %s, session_private_key = %s"
                " WHERE id = %s" % (q(old_pub), q(pf.base64.b64encode(bytes(new.verify_key)).decode()),
                                    q(pf.seal(bytes(new))), q(sid)))
    assert reason(p1, domain, t.session_token)[0]
    assert reason(p1, domain, pf.mint_session(new, alice, domain))[0]
    svc.execute(w.dsn, "UPDATE services SET session_prev_valid_until = CURRENT_TIMESTAMP - interval '1 s'"
                " WHERE id = %s" % q(sid))
    assert reason(p1, domain, t.session_token)[1] == "invalid_token"


# ---- ValidateTunnelPeer -----------------------------------------------------------------

@test
def validate_tunnel_peer_every_outcome():
    w = World()
    devs, ops = w.a.group("devs"), w.a.group("ops")
    sid, domain, sk = w.a.service(auth={"bearer_auth": {"enabled": True, "distribution_groups": [devs]}})
    priv_sid, priv_domain, _ = w.a.service(private=True, access_groups=[ops])
    closed_sid, closed_domain, _ = w.a.service(private=True, access_groups=[])
    pub = pf.base64.b64encode(bytes(sk.verify_key)).decode()
    alice = w.a.user(email="alice@a.test")
    pending = w.a.user(pending=True, blocked=True)
    blocked = w.a.user(blocked=True)
    stranger = w.b.user()
    p = w.proxy

    w.a.peer("100.90.1.1", name="robot", groups=[devs])                 # no owner
    w.a.peer("100.90.1.2", name="alice-pc", user_id=alice, groups=[devs, ops])
    w.a.peer("100.90.1.3", name="p-pc", user_id=pending, groups=[devs])
    w.a.peer("100.90.1.4", name="b-pc", user_id=blocked, groups=[devs])
    w.a.peer("100.90.1.5", name="x-pc", user_id=stranger, groups=[devs])   # owner in another account
    w.a.peer("100.90.1.6", name="ops-box", groups=[ops])
    w.b.peer("100.91.1.1", name="other-account")

    def reason(dom, ip):
        r = p.validate_tunnel_peer(dom, ip)
        return r.denied_reason, r

    assert reason("", "100.90.1.1")[0] == "missing domain or tunnel_ip"
    assert reason(domain, "")[0] == "missing domain or tunnel_ip"
    assert reason(domain, "100.90.1")[0] == "invalid_tunnel_ip"
    assert reason("nope.proxy.test", "100.90.1.1")[0] == "service_not_found"
    assert reason(domain, "100.90.9.9")[0] == "peer_not_found"
    assert reason(domain, "100.91.1.1")[0] == "peer_not_found"          # a peer of another account
    assert reason(domain, "100.90.1.3")[0] == "pending_approval"
    assert reason(domain, "100.90.1.4")[0] == "user_blocked"
    assert reason(domain, "100.90.1.5")[0] == "user_not_found"
    why, r = reason(domain, "100.90.1.6")
    assert why == "not_in_group" and not r.valid and not r.session_token, r
    assert reason(priv_domain, "100.90.1.1")[0] == "not_in_group"
    assert reason(closed_domain, "100.90.1.2")[0] == "not_in_group"      # empty access groups fail closed

    # an unowned peer is its own principal, shown by its name
    why, r = reason(domain, "100.90.1.1")
    assert r.valid and why == "" and r.user_id.startswith("peer") and r.user_email == "robot", r
    c = pf.verify_session(r.session_token, pub, domain)
    assert c["sub"] == r.user_id and c["method"] == "oidc" and c["email"] == "robot", c
    # an owned peer: the owner, shown by e-mail; the peer's groups in the token
    why, r = reason(domain, "100.90.1.2")
    assert r.valid and r.user_id == alice and r.user_email == "alice@a.test", r
    names = dict(zip(r.peer_group_ids, r.peer_group_names))
    assert names == {w.a.all_group: "All", devs: "devs", ops: "ops"}, names
    c = pf.verify_session(r.session_token, pub, domain)
    assert c["groups"] == list(r.peer_group_ids) and c["group_names"] == list(r.peer_group_names), c
    assert reason(priv_domain, "100.90.1.6")[1].valid

    pb_ = pf.Proxy(w.servers[0], w.b.proxy_token(scoped=True))
    code, _ = pb_.code("ValidateTunnelPeer", pf.ppb.ValidateTunnelPeerRequest(domain=domain, tunnel_ip="100.90.1.1"),
                       pf.ppb.ValidateTunnelPeerResponse)
    assert code == grpc.StatusCode.PERMISSION_DENIED, code


# ---- SendStatusUpdate -----------------------------------------------------------------------

@test
def send_status_update():
    w = World()
    sid, domain, _ = w.a.service()
    p = w.proxy
    S = pf.ppb.ProxyStatus
    p.call("SendStatusUpdate", pf.ppb.SendStatusUpdateRequest(service_id=sid, account_id=w.a.id,
                                                               status=S.Value("PROXY_STATUS_ACTIVE")),
           pf.ppb.SendStatusUpdateResponse)
    rows = svc.query(w.dsn, "SELECT meta_status, meta_certificate_issued_at IS NULL FROM services WHERE id = %s" % q(sid))
    assert rows == [("active", True)], rows
    p.call("SendStatusUpdate", pf.ppb.SendStatusUpdateRequest(service_id=sid, account_id=w.a.id,
                                                               status=S.Value("PROXY_STATUS_CERTIFICATE_FAILED"),
                                                               certificate_issued=True, error_message="acme"),
           pf.ppb.SendStatusUpdateResponse)
    rows = svc.query(w.dsn, "SELECT meta_status, meta_certificate_issued_at IS NOT NULL FROM services WHERE id = %s"
                     % q(sid))
    assert rows == [("certificate_failed", True)], rows

    def code(**kw):
        return p.code("SendStatusUpdate", pf.ppb.SendStatusUpdateRequest(**kw), pf.ppb.SendStatusUpdateResponse)[0]

    assert code(service_id=sid) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(account_id=w.a.id) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(service_id="nope", account_id=w.a.id) == grpc.StatusCode.NOT_FOUND
    assert code(service_id=sid, account_id=w.b.id) == grpc.StatusCode.NOT_FOUND
    pb_ = pf.Proxy(w.servers[0], w.b.proxy_token(scoped=True))
    c, _ = pb_.code("SendStatusUpdate", pf.ppb.SendStatusUpdateRequest(service_id=sid, account_id=w.a.id),
                    pf.ppb.SendStatusUpdateResponse)
    assert c == grpc.StatusCode.PERMISSION_DENIED, c
    rows = svc.query(w.dsn, "SELECT meta_status FROM services WHERE id = %s" % q(sid))
    assert rows == [("certificate_failed",)], rows


# ---- SendAccessLog --------------------------------------------------------------------------

def access_log(account, service, log_id=None, **kw):
    fields = dict(log_id=log_id or pf.rid("log"), account_id=account, service_id=service,
                  host="app.proxy.test", path="/x", method="GET", response_code=200, duration_ms=12,
                  source_ip="::ffff:203.0.113.9", auth_mechanism="password", user_id="password-user",
                  auth_success=True, protocol="http", bytes_upload=10, bytes_download=20)
    fields.update(kw)
    entry = pf.ppb.AccessLog(**fields)
    entry.timestamp.seconds = int(time.time())
    entry.timestamp.nanos = 123456000
    return pf.ppb.SendAccessLogRequest(log=entry)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def get_no_redirect(url):
    """(status, headers, body) without following a redirect."""
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_rows(dsn, sql, n, timeout=15):
    deadline = time.time() + timeout
    while True:
        rows = svc.query(dsn, sql)
        if len(rows) >= n or time.time() > deadline:
            return rows
        time.sleep(0.1)


@test
def send_access_log_rows_and_refusals():
    w = World()
    sid, domain, _ = w.a.service()
    p = w.proxy
    R = pf.ppb.SendAccessLogResponse
    ids = []
    for i in range(50):
        req = access_log(w.a.id, sid, metadata={"k": "v%d" % i})
        ids.append(req.log.log_id)
        p.call("SendAccessLog", req, R)
    # an HTTP failure gets NetBird's reason; a repeat of a log_id is stored once
    failed = access_log(w.a.id, sid, response_code=503)
    denied = access_log(w.a.id, sid, auth_success=False, response_code=401)
    tcp = access_log(w.a.id, sid, protocol="tcp", auth_success=False)
    for req in (failed, denied, tcp, failed):
        p.call("SendAccessLog", req, R)
    rows = wait_rows(w.dsn, "SELECT id FROM proxy_access_logs WHERE account_id = %s" % q(w.a.id), 53)
    assert len(rows) == 53, len(rows)
    row = svc.query(w.dsn, "SELECT service_id, method, host, path, duration_ms, status_code, source_ip,"
                    " user_id, auth_method_used, bytes_upload, bytes_download, protocol, metadata,"
                    " extract(microseconds from timestamp)::bigint %% 1000000 FROM proxy_access_logs WHERE id = %s"
                    % q(ids[7]))
    assert row == [(sid, "GET", "app.proxy.test", "/x", 12, 200, "203.0.113.9", "password-user", "password", 10,
                    20, "http", {"k": "v7"}, 123456)], row
    reasons = dict(svc.query(w.dsn, "SELECT id, reason FROM proxy_access_logs WHERE id IN (%s, %s, %s)"
                             % (q(failed.log.log_id), q(denied.log.log_id), q(tcp.log.log_id))))
    assert reasons == {failed.log.log_id: "Request failed", denied.log.log_id: "Authentication failed",
                       tcp.log.log_id: ""}, reasons

    # bad input: the right status and nothing written
    bad = {
        "no log": (pf.ppb.SendAccessLogRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        "no id": (access_log(w.a.id, sid, log_id=""), None),
        "no account": (access_log("", sid), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown service": (access_log(w.a.id, "nope"), grpc.StatusCode.NOT_FOUND),
        "other account's service": (access_log(w.b.id, sid), grpc.StatusCode.NOT_FOUND),
        "oversized": (access_log(w.a.id, sid, metadata={"k%d" % i: "v" * 2000 for i in range(40)}),
                      grpc.StatusCode.INVALID_ARGUMENT),
        "too many metadata": (access_log(w.a.id, sid, metadata={"k%d" % i: "v" for i in range(100)}),
                              grpc.StatusCode.INVALID_ARGUMENT),
    }
    bad["no id"][0].log.log_id = ""
    bad["no id"] = (bad["no id"][0], grpc.StatusCode.INVALID_ARGUMENT)
    for name, (req, want) in bad.items():
        code, _ = p.code("SendAccessLog", req, R)
        assert code == want, (name, code)
    pb_ = pf.Proxy(w.servers[0], w.b.proxy_token(scoped=True))
    code, _ = pb_.code("SendAccessLog", access_log(w.a.id, sid), R)
    assert code == grpc.StatusCode.PERMISSION_DENIED, code
    time.sleep(0.6)     # past a flush interval
    n = svc.query(w.dsn, "SELECT count(*) FROM proxy_access_logs")[0][0]
    assert n == 53, n


@test
def access_logs_are_flushed_at_shutdown_and_retention_deletes_old_rows():
    pf.need()
    dsn, _ = svc.new_db()
    cfg = {"ReverseProxy": {"AccessLogRetentionDays": 3}}
    srv = start(dsn, config=cfg)
    a = pf.Account(dsn)
    sid, _, _ = a.service()
    p = pf.Proxy(srv, pf.global_proxy_token(dsn))
    old = access_log(a.id, sid)
    old.log.timestamp.seconds = int(time.time()) - 5 * 86400
    recent = access_log(a.id, sid)
    recent.log.timestamp.seconds = int(time.time()) - 2 * 86400
    for req in (old, recent):
        p.call("SendAccessLog", req, pf.ppb.SendAccessLogResponse)
    reqs = [access_log(a.id, sid) for _ in range(20)]
    for req in reqs:
        p.call("SendAccessLog", req, pf.ppb.SendAccessLogResponse)
    srv.stop()
    n = svc.query(dsn, "SELECT count(*) FROM proxy_access_logs")[0][0]
    assert n >= 21, n
    # the clean-up runs a few seconds after start: the 5-day-old row goes
    # expired one-time token and OIDC flow rows go with the same clean-up
    svc.execute(dsn, "INSERT INTO proxy_used_tokens (token_hash, account_id, expires_at) VALUES"
                " (repeat('a', 64), %s, CURRENT_TIMESTAMP - interval '1 minute'),"
                " (repeat('b', 64), %s, CURRENT_TIMESTAMP + interval '5 minutes')" % (q(a.id), q(a.id)))
    svc.execute(dsn, "INSERT INTO proxy_oidc_states (state_hash, account_id, service_id, verifier, redirect_url,"
                " expires_at) VALUES (repeat('c', 64), %s, %s, 'v', 'https://x/', CURRENT_TIMESTAMP - interval '1 s')"
                % (q(a.id), q(sid)))
    srv = start(dsn, config=cfg)
    svc.defer(srv.stop)
    deadline = time.time() + 20
    while svc.query(dsn, "SELECT count(*) FROM proxy_access_logs WHERE id = %s" % q(old.log.log_id))[0][0]:
        assert time.time() < deadline, "the old row is still there"
        time.sleep(0.2)
    assert svc.query(dsn, "SELECT count(*) FROM proxy_access_logs WHERE id = %s" % q(recent.log.log_id))[0][0] == 1
    deadline = time.time() + 20
    while svc.query(dsn, "SELECT count(*) FROM proxy_oidc_states")[0][0] != 0:
        assert time.time() < deadline, "the expired OIDC state is still there"
        time.sleep(0.2)
    assert svc.query(dsn, "SELECT token_hash FROM proxy_used_tokens") == [("b" * 64,)]


@test
def access_logs_get_the_source_location():
    pf.need()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    import geofix
    dsn, _ = svc.new_db()
    datadir = svc.tmpdir()
    geofix.write_datadir(datadir)
    srv = start(dsn, "--datadir", datadir)
    svc.defer(srv.stop)
    a = pf.Account(dsn)
    sid, _, _ = a.service()
    p = pf.Proxy(srv, pf.global_proxy_token(dsn))
    reqs = [access_log(a.id, sid, source_ip=ip) for ip in ("192.0.2.5", "::ffff:127.0.0.1", "10.1.2.3", "bad")]
    for req in reqs:
        p.call("SendAccessLog", req, pf.ppb.SendAccessLogResponse)
    rows = wait_rows(dsn, "SELECT id FROM proxy_access_logs", 4)
    assert len(rows) == 4, rows
    got = [svc.query(dsn, "SELECT source_ip, country_code, city_name FROM proxy_access_logs WHERE id = %s"
                     % q(r.log.log_id))[0] for r in reqs]
    assert got == [("192.0.2.5", "FR", "Paris"), ("127.0.0.1", "DE", "Berlin"), ("10.1.2.3", "", ""),
                   ("", "", "")], got


# ---- GetOIDCURL and the callback ------------------------------------------------------------

@test
def get_oidc_url_checks_and_callback_state():
    pf.need()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "idp"))
    import testidp
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    cfg = {"HttpConfig": dict(idp.http_config(), AuthClientID="proxy-client",
                              AuthCallbackURL="https://mgmt.test/api/reverse-proxy/callback")}
    w = World(config=cfg)
    sid, domain, _ = w.a.service()
    p = w.proxy
    R = pf.ppb.GetOIDCURLResponse

    def code(url, account=None):
        return p.code("GetOIDCURL", pf.ppb.GetOIDCURLRequest(id=sid, account_id=account or w.a.id, redirect_url=url),
                      R)[0]

    assert code("ftp://%s/x" % domain) == grpc.StatusCode.INVALID_ARGUMENT
    assert code("not a url") == grpc.StatusCode.INVALID_ARGUMENT
    assert code("https://elsewhere.test/x") == grpc.StatusCode.FAILED_PRECONDITION
    assert code("https://%s/x" % domain, account=w.b.id) == grpc.StatusCode.FAILED_PRECONDITION

    r = p.call("GetOIDCURL", pf.ppb.GetOIDCURLRequest(id=sid, account_id=w.a.id,
                                                        redirect_url="https://%s/app?x=1" % domain), R)
    u = urllib.parse.urlsplit(r.url)
    qs = urllib.parse.parse_qs(u.query)
    assert qs["client_id"] == ["proxy-client"] and qs["response_type"] == ["code"], qs
    assert qs["redirect_uri"] == ["https://mgmt.test/api/reverse-proxy/callback"], qs
    assert qs["code_challenge_method"] == ["S256"] and len(qs["code_challenge"][0]) == 43, qs
    assert qs["scope"] == ["openid profile email"], qs
    state = qs["state"][0]
    enc_url, nonce, mac = state.split("|")
    assert pf.base64.urlsafe_b64decode(enc_url).decode() == "https://%s/app?x=1" % domain
    assert len(mac) == 64, state
    n = svc.query(w.dsn, "SELECT count(*) FROM proxy_oidc_states WHERE account_id = %s" % q(w.a.id))[0][0]
    assert n == 1, n

    cb = w.servers[0].url("/api/reverse-proxy/callback")
    # a forged state (wrong HMAC) is refused and does not consume the flow
    forged = enc_url + "|" + nonce + "|" + "0" * 64
    status, _, _ = get_no_redirect(cb + "?" + urllib.parse.urlencode({"state": forged, "code": "c"}))
    assert status == 400, status
    assert svc.query(w.dsn, "SELECT count(*) FROM proxy_oidc_states")[0][0] == 1
    status, _, _ = get_no_redirect(cb + "?code=c")
    assert status == 400, status

    # the whole flow: the IdP answers the code with alice's ID token
    alice = w.a.user(email="alice@a.test")
    idp.codes["code-1"] = idp.token(alice, email="alice@a.test")
    status, headers, _ = get_no_redirect(cb + "?" + urllib.parse.urlencode({"state": state, "code": "code-1"}))
    assert status == 302, status
    loc = urllib.parse.urlsplit(headers["Location"])
    assert (loc.scheme, loc.netloc, loc.path) == ("https", domain, "/app"), loc
    lq = urllib.parse.parse_qs(loc.query)
    assert lq["x"] == ["1"], lq
    pub = svc.query(w.dsn, "SELECT session_public_key FROM services WHERE id = %s" % q(sid))[0][0]
    c = pf.verify_session(lq["session_token"][0], pub, domain)
    assert c["sub"] == alice and c["method"] == "oidc" and c["email"] == "alice@a.test", c
    posted = idp.token_requests[-1]
    challenge = pf.b64url(hashlib.sha256(posted["code_verifier"].encode()).digest())
    assert challenge == qs["code_challenge"][0], (posted, qs)
    assert posted["client_id"] == "proxy-client" and posted["redirect_uri"] == cfg["HttpConfig"]["AuthCallbackURL"]
    assert svc.query(w.dsn, "SELECT last_login IS NOT NULL FROM users WHERE id = %s" % q(alice)) == [(True,)]
    # the flow is spent: the same state again is refused
    idp.codes["code-2"] = idp.token(alice)
    status, _, _ = get_no_redirect(cb + "?" + urllib.parse.urlencode({"state": state, "code": "code-2"}))
    assert status == 400, status

    def flow(user_token):
        r = p.call("GetOIDCURL", pf.ppb.GetOIDCURLRequest(id=sid, account_id=w.a.id,
                                                            redirect_url="https://%s/" % domain), R)
        st = urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query)["state"][0]
        idp.codes["c"] = user_token
        return get_no_redirect(cb + "?" + urllib.parse.urlencode({"state": st, "code": "c"}))

    # a blocked user, a user of another account: back to the service with access_denied
    for uid in (w.a.user(blocked=True), w.b.user()):
        status, headers, _ = flow(idp.token(uid))
        lq = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["Location"]).query)
        assert status == 302 and lq["error"] == ["access_denied"] and "session_token" not in lq, (status, lq)
    # an ID token the validator refuses: 401
    status, _, _ = flow(testidp.TestIdP.tamper(idp.token(alice)))
    assert status == 401, status

    # NetBird's limit on the callback: bursts of 15 per client, then 429
    statuses = [get_no_redirect(cb + "?state=x")[0] for _ in range(16)]
    assert statuses[-1] == 429 and set(statuses) <= {400, 429}, statuses


@test
def oidc_sign_in_end_to_end_with_the_dev_provider():
    """deploy/oidc (a real OIDC provider, node) signs alice in: GetOIDCURL's
    URL is followed as a browser would, the provider redirects to our
    callback, which exchanges the code and sends the browser back to the
    service with a session token."""
    pf.need()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "idp"))
    import oidcflow
    http_port = svc.free_port()
    callback = "http://127.0.0.1:%d/api/reverse-proxy/callback" % http_port
    alice = {"login": "alice", "password": "alice-pw-" + pf.rid(), "sub": "sub-alice-" + pf.rid(),
             "email": "alice@corp.example", "name": "Alice", "groups": []}
    prov = oidcflow.Provider(dashboard_redirect_uris=[callback], users=[alice])
    try:
        prov.start()
    except oidcflow.Unavailable as e:
        raise svc.Skip(str(e))
    svc.defer(prov.stop)
    cfg = {"HttpConfig": {"AuthIssuer": prov.issuer, "AuthAudience": prov.dashboard_client_id,
                          "AuthKeysLocation": prov.discovery["jwks_uri"], "AuthUserIDClaim": "sub",
                          "AuthClientID": prov.dashboard_client_id, "AuthCallbackURL": callback}}
    dsn, _ = svc.new_db()
    srv = start(dsn, config=cfg, http_port=http_port)
    svc.defer(srv.stop)
    deadline = time.time() + 60
    while True:                         # the replica holds the provider's signing keys
        st, _, body = svc.http_json("GET", srv.url("/readyz"))
        if st == 200 and body.get("degraded") != "idp":
            break
        assert time.time() < deadline, (st, body)
        time.sleep(0.2)
    a = pf.Account(dsn)
    a.user(alice["sub"], email=alice["email"])
    sid, domain, _ = a.service()
    p = pf.Proxy(srv, pf.global_proxy_token(dsn))
    r = p.call("GetOIDCURL", pf.ppb.GetOIDCURLRequest(id=sid, account_id=a.id,
                                                        redirect_url="https://%s/private?q=1" % domain),
               pf.ppb.GetOIDCURLResponse)
    b = oidcflow.Browser()
    got = b.follow("GET", r.url, callback)
    assert got[0] == "page" and got[1] == 200, got[:3]
    form = oidcflow._Form()
    form.feed(got[3])
    fields = dict(form.fields, login="alice", password=alice["password"])
    got = b.follow(form.method.upper(), urllib.parse.urljoin(got[2], form.action), callback, form=fields)
    assert got[0] == "redirect", got[:3]
    status, headers, body = get_no_redirect(got[1])
    assert status == 302, (status, body)
    loc = urllib.parse.urlsplit(headers["Location"])
    assert (loc.netloc, loc.path) == (domain, "/private"), loc
    lq = urllib.parse.parse_qs(loc.query)
    pub = svc.query(dsn, "SELECT session_public_key FROM services WHERE id = %s" % q(sid))[0][0]
    c = pf.verify_session(lq["session_token"][0], pub, domain)
    assert c["sub"] == alice["sub"] and c["email"] == alice["email"] and c["method"] == "oidc", c
    assert p.validate_session(domain, lq["session_token"][0]).valid


# ---- CreateProxyPeer ---------------------------------------------------------------------

@test
def create_proxy_peer_refusals():
    w = World()
    sid, domain, _ = w.a.service()
    p = w.proxy
    R = pf.ppb.CreateProxyPeerResponse
    key = pf.base64.b64encode(pf.os.urandom(32)).decode()
    r = p.call("CreateProxyPeer", pf.ppb.CreateProxyPeerRequest(service_id=sid, account_id=w.a.id,
                                                                 wireguard_public_key=key), R)
    assert not r.success and "missing required fields" in r.error_message, r
    code, msg = p.code("CreateProxyPeer", pf.ppb.CreateProxyPeerRequest(
        service_id=sid, account_id=w.a.id, token="forged", wireguard_public_key=key, cluster="c.test"), R)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid or expired token" in msg, (code, msg)
    pb_ = pf.Proxy(w.servers[0], w.b.proxy_token(scoped=True))
    code, _ = pb_.code("CreateProxyPeer", pf.ppb.CreateProxyPeerRequest(
        service_id=sid, account_id=w.a.id, token="t", wireguard_public_key=key), R)
    assert code == grpc.StatusCode.PERMISSION_DENIED, code
    assert svc.query(w.dsn, "SELECT count(*) FROM peers")[0][0] == 0


@test
def create_proxy_peer_once_and_only_once():
    w = World(replicas=2)
    cluster = "eu.proxy.test"
    sid, domain, _ = w.a.service(cluster=cluster)
    sid2, _, _ = w.a.service(cluster=cluster)
    p1, p2 = w.proxy_on(0), w.proxy_on(1)
    R = pf.ppb.CreateProxyPeerResponse
    tokens = p1.mapping_tokens(cluster)
    assert set(tokens) == {sid, sid2} and all(tokens.values()), tokens
    key = pf.base64.b64encode(pf.os.urandom(32)).decode()
    serial0 = svc.query(w.dsn, "SELECT network_serial FROM accounts WHERE id = %s" % q(w.a.id))[0][0]

    def create(p, token, service=sid, k=key):
        return p.call("CreateProxyPeer", pf.ppb.CreateProxyPeerRequest(
            service_id=service, account_id=w.a.id, token=token, wireguard_public_key=k, cluster=cluster), R)

    def refused(p, token, service=sid, k=key):
        code, msg = p.code("CreateProxyPeer", pf.ppb.CreateProxyPeerRequest(
            service_id=service, account_id=w.a.id, token=token, wireguard_public_key=k, cluster=cluster), R)
        return code == grpc.StatusCode.UNAUTHENTICATED and "invalid or expired token" in msg

    # a token for another service does not open this one (and is not spent by trying)
    assert refused(p2, tokens[sid2])
    r = create(p2, tokens[sid])         # minted on replica 1, used on replica 2
    assert r.success and not r.HasField("error_message"), r
    rows = svc.query(w.dsn, "SELECT p.name, p.meta_os, p.meta_go_os, p.ephemeral, p.proxy_cluster, p.proxy_embedded,"
                     " p.user_id, p.login_expiration_enabled, array(SELECT g.name FROM group_peers gp JOIN groups g"
                     " ON g.id = gp.group_id WHERE gp.peer_id = p.id)"
                     " FROM peers p WHERE p.account_id = %s AND p.key = %s" % (q(w.a.id), q(key)))
    assert len(rows) == 1, rows
    name, os_, goos, eph, pc, emb, uid, lexp, groups = rows[0]
    assert name.startswith("proxy-") and os_ == "proxy" and goos == "proxy", rows
    assert eph and pc == cluster and emb and uid is None and not lexp and groups == ["All"], rows
    serial1 = svc.query(w.dsn, "SELECT network_serial FROM accounts WHERE id = %s" % q(w.a.id))[0][0]
    assert serial1 == serial0 + 1, (serial0, serial1)
    # the same token again, on either replica: refused, nothing new
    assert refused(p1, tokens[sid]) and refused(p2, tokens[sid])
    assert refused(p1, tokens[sid], k=pf.base64.b64encode(pf.os.urandom(32)).decode())
    # a fresh token with the same key: idempotent, still one peer
    fresh = p2.mapping_tokens(cluster)
    assert create(p1, fresh[sid]).success
    assert svc.query(w.dsn, "SELECT count(*) FROM peers WHERE key = %s" % q(key))[0][0] == 1
    assert svc.query(w.dsn, "SELECT count(*) FROM proxy_used_tokens")[0][0] == 2
    # the token of sid2 still works once, for a second proxy peer
    k2 = pf.base64.b64encode(pf.os.urandom(32)).decode()
    assert create(p1, tokens[sid2], service=sid2, k=k2).success
    assert refused(p2, tokens[sid2], service=sid2, k=k2)
    assert svc.query(w.dsn, "SELECT count(*) FROM peers WHERE account_id = %s" % q(w.a.id))[0][0] == 2


# ---- service-key rotate ---------------------------------------------------------------------

@test
def service_key_rotate_keeps_old_sessions_for_the_grace_period():
    import subprocess
    admin_bin = os.environ.get("NETBIRD_ADMIN", "")
    if not admin_bin:
        raise svc.Skip("NETBIRD_ADMIN not set")
    w = World()
    sid, domain, sk = w.a.service(auth={"pin_auth": {"enabled": True, "pin": pf.argon2id("42")}},
                                  cluster="eu.proxy.test")
    sid2, domain2, sk2 = w.a.service()
    alice = w.a.user()
    old_token = pf.mint_session(sk, alice, domain)
    old2 = pf.mint_session(sk2, alice, domain2)
    env = svc.clean_env(dict(svc.dsn_env(w.dsn), NB_MGMT_DATA_STORE_ENCRYPTION_KEY=svc.DATA_KEY))

    def admin(*args):
        p = subprocess.run([admin_bin, "service-key", "rotate"] + list(args), capture_output=True, text=True,
                           env=env, timeout=60)
        return p.returncode, p.stdout, p.stderr

    seq0 = svc.query(w.dsn, "SELECT COALESCE(max(seq), 0) FROM proxy_mapping_changes")[0][0]
    rc, out, err = admin("--service", sid, "--grace", "1h", "--json")
    assert rc == 0, (rc, out, err)
    res = json.loads(out)
    assert res[0]["id"] == sid and res[0]["result"] == "rotated", res
    new_pub = res[0]["public_key"]
    assert svc.query(w.dsn, "SELECT session_public_key FROM services WHERE id = %s" % q(sid))[0][0] == new_pub
    # proxies learn the new public key: a MODIFIED change for the service
    rows = svc.query(w.dsn, "SELECT service_id, op FROM proxy_mapping_changes WHERE seq > %d" % seq0)
    assert rows == [(sid, 1)], rows
    p = w.proxy
    # sessions signed with the old key still validate; new ones use the new key
    assert p.validate_session(domain, old_token).valid
    r = p.authenticate(id=sid, account_id=w.a.id, pin=pf.ppb.PinRequest(pin="42"))
    assert r.success and pf.verify_session(r.session_token, new_pub, domain), r
    # again inside the grace period: refused without --force
    rc, out, err = admin("--service", sid)
    assert rc == 1 and "skipped" in out, (rc, out, err)
    rc, out, err = admin("--service", "nope")
    assert rc == 1, (rc, out, err)
    rc, out, err = admin("--all")
    assert rc == 0 and sid + " skipped" in out and sid2 + " rotated" in out, (rc, out, err)
    assert p.validate_session(domain2, old2).valid
    # --force with no grace: the old key stops at once
    rc, out, err = admin("--service", sid2, "--force", "--grace", "0s")
    assert rc == 0, (rc, out, err)
    assert p.validate_session(domain2, old2).denied_reason == "invalid_token"
    # a wrong DataStoreEncryptionKey is a usage error and changes nothing
    before = svc.query(w.dsn, "SELECT session_public_key FROM services WHERE id = %s" % q(sid))
    env["NB_MGMT_DATA_STORE_ENCRYPTION_KEY"] = pf.base64.b64encode(b"x" * 32).decode()
    rc, out, err = admin("--service", sid, "--force")
    assert rc == 2, (rc, out, err)
    assert svc.query(w.dsn, "SELECT session_public_key FROM services WHERE id = %s" % q(sid)) == before
    rc, out, err = admin()
    assert rc == 2, (rc, out, err)


# ---- the LLM RPCs ---------------------------------------------------------------------------

@test
def llm_rpcs_are_unimplemented():
    w = World()
    code, _ = w.proxy.code("CheckLLMPolicyLimits", pf.ppb.CheckLLMPolicyLimitsRequest(account_id=w.a.id),
                           pf.ppb.CheckLLMPolicyLimitsResponse)
    assert code == grpc.StatusCode.UNIMPLEMENTED, code
    code, _ = w.proxy.code("RecordLLMUsage", pf.ppb.RecordLLMUsageRequest(account_id=w.a.id),
                           pf.ppb.RecordLLMUsageResponse)
    assert code == grpc.StatusCode.UNIMPLEMENTED, code


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
