"""The agent-protocol edge of netbird-mgmt (services/management/agent/mgmt-agent.c,
mgmt-login.c): the shared server key, the EncryptedMessage envelope and its
error codes, the simple RPCs, and Login (errors, registration with a setup
key, re-login, the LoginResponse contents). The fuller agent scenarios live
in tests/agent/; these stay at the edge.

Messages come from the generated management_pb2 (CP_PROTO_DIR, set by
meson); the envelope is PyNaCl's Box, which is NetBird's NaCl box.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import sys
import threading
import time

import grpc

import svc
from svc import test, Server, base_args

sys.path.insert(0, os.environ.get("CP_PROTO_DIR", ""))
try:
    import management_pb2 as pb
    from nacl.public import Box, PrivateKey, PublicKey
except ImportError as e:        # reported per test
    pb = None
    IMPORT_ERROR = str(e)

MGMT = "/management.ManagementService/"
TURN_SECRET = "edge-turn-secret"
RELAY_SECRET = "edge-relay-secret"
NETBIRD_JSON = {
    "Stuns": [{"Proto": "udp", "URI": "stun:stun.edge.test:3478", "Username": "", "Password": ""}],
    "TURNConfig": {
        "TimeBasedCredentials": True,
        "CredentialsTTL": "2h",
        "Secret": TURN_SECRET,
        "Turns": [{"Proto": "udp", "URI": "turn:turn.edge.test:3478", "Username": "u", "Password": "p"},
                  {"Proto": "tcp", "URI": "turn:turn.edge.test:3478?transport=tcp", "Username": "u",
                   "Password": "p"}],
    },
    "Relay": {"Addresses": ["rels://relay.edge.test:443"], "CredentialsTTL": "30m", "Secret": RELAY_SECRET},
    "Signal": {"Proto": "https", "URI": "signal.edge.test:443", "Username": "", "Password": ""},
    "HttpConfig": {"AuthAudience": "edge-aud", "AuthIssuer": "https://idp.edge.test/"},
    "Datadir": "",
}


def need_pb():
    if pb is None:
        raise svc.Skip("management_pb2 / nacl not importable: %s" % IMPORT_ERROR)


# ---- a minimal agent ---------------------------------------------------------

class Agent:
    """One WireGuard key and a channel; seals requests like a NetBird agent."""

    def __init__(self, srv, key=None):
        need_pb()
        self.key = key or PrivateKey.generate()
        self.pub = base64.b64encode(bytes(self.key.public_key)).decode()
        self.ch = grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port)
        self.ch.subscribe(lambda state: None, try_to_connect=True)     # see test_grpc.py
        svc.defer(self.ch.close)
        self.server_key = None

    def get_server_key(self):
        f = self.ch.unary_unary(MGMT + "GetServerKey", request_serializer=pb.Empty.SerializeToString,
                                response_deserializer=pb.ServerKeyResponse.FromString)
        resp = f(pb.Empty(), timeout=10)
        self.server_key = resp.key
        return resp

    def seal(self, msg):
        box = Box(self.key, PublicKey(base64.b64decode(self.server_key)))
        return bytes(box.encrypt(msg.SerializeToString()))

    def raw(self, method, em_bytes, timeout=20):
        """Sends bytes; returns (response bytes, None) or (None, RpcError)."""
        try:
            return self.ch.unary_unary(MGMT + method)(em_bytes, timeout=timeout), None
        except grpc.RpcError as e:
            return None, e

    def call(self, method, inner, resp_cls=None, timeout=20):
        """Sealed request; returns (decoded response, plaintext bytes) or raises RpcError."""
        if self.server_key is None:
            self.get_server_key()
        em = pb.EncryptedMessage(wgPubKey=self.pub, body=self.seal(inner))
        out, err = self.raw(method, em.SerializeToString(), timeout)
        if err is not None:
            raise err
        if resp_cls is None:            # plaintext answer (SyncMeta, Logout)
            return pb.Empty.FromString(out), out
        em = pb.EncryptedMessage.FromString(out)
        assert em.wgPubKey == self.server_key, (em.wgPubKey, self.server_key)
        plain = bytes(Box(self.key, PublicKey(base64.b64decode(em.wgPubKey))).decrypt(em.body))
        return resp_cls.FromString(plain), plain

    def login(self, setup_key="", hostname="edge-host", **kw):
        meta = pb.PeerSystemMeta(hostname=hostname, goOS="linux", OS="linux", netbirdVersion="0.60.0",
                                 kernel="Linux", core="12", platform="x86_64")
        req = pb.LoginRequest(setupKey=setup_key, meta=meta, **kw)
        return self.call("Login", req, pb.LoginResponse)


def expect_error(fn, code, details=None):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        if details is not None:
            assert e.details() == details, (e.details(), details)
        return e
    raise AssertionError("call succeeded; expected %s" % code)


def start(dsn, *extra, config="", env=None, **over):
    e = svc.dsn_env(dsn)
    e.update(env or {})
    return Server(base_args(config=config, **over) + list(extra), env=e)


def bootstrap(dsn):
    r = svc.run(["bootstrap", "--config="], env=svc.dsn_env(dsn))
    assert r.rc == 0, r
    return dict(line.split("=", 1) for line in r.out.splitlines())


def rpc_line(srv, method, code):
    return srv.wait_log(lambda o: o.get("msg") == "rpc" and o.get("method") == method and o.get("code") == code)


# ---- server key ------------------------------------------------------------------

@test
def server_key_is_shared_by_replicas():
    need_pb()
    dsn, _ = svc.new_db()
    a, b = start(dsn), start(dsn)
    ka, kb = Agent(a).get_server_key(), Agent(b).get_server_key()
    assert ka.key == kb.key, (ka.key, kb.key)
    raw = base64.b64decode(ka.key, validate=True)
    assert len(raw) == 32 and base64.b64encode(raw).decode() == ka.key, ka.key
    now = time.time()
    assert ka.HasField("expiresAt") and now + 3600 < ka.expiresAt.seconds < now + 48 * 3600, ka.expiresAt
    assert ka.version == 0
    # One row, the private half stored encrypted, never in clear.
    rows = svc.query(dsn, "SELECT public_key, private_key_enc FROM server_keys")
    assert len(rows) == 1 and rows[0][0] == ka.key, rows
    # A restarted replica comes back with the same key.
    assert a.stop()[0] == 0
    c = start(dsn)
    assert Agent(c).get_server_key().key == ka.key
    # A replica with a different DataStoreEncryptionKey cannot open it:
    # never a silent new key, and no crash loop either: it stays up, not
    # ready, with one error naming its key's fingerprint (docs/ops.md).
    other = base64.b64encode(b"\x01" * 32).decode()
    hport = svc.free_port()
    bad = Server(base_args(data_store_encryption_key=other, http_port=hport), env=svc.dsn_env(dsn), wait=False)
    bad.http_port = hport
    err = bad.wait_log(lambda o: o.get("level") == "error")
    assert "DataStoreEncryptionKey" in err["msg"] + err.get("error", ""), err
    assert other not in bad.stdout() and other not in bad.stderr()
    def readyz():
        try:
            return svc.http("GET", bad.url("/readyz"))[0]
        except OSError:         # its HTTP port opens just after the error
            return None
    deadline = time.time() + 30
    while readyz() != 503:
        assert time.time() < deadline and bad.proc.poll() is None, bad.stdout()
        time.sleep(0.2)
    assert bad.proc.poll() is None, "the replica with the wrong key exited"
    assert svc.query(dsn, "SELECT public_key FROM server_keys") == [(ka.key,)]
    assert bad.stop()[0] == 0
    for s in (b, c):
        assert s.stop()[0] == 0


@test
def is_healthy_and_plaintext_key():
    need_pb()
    dsn, _ = svc.new_db()
    srv = start(dsn)
    ag = Agent(srv)
    f = ag.ch.unary_unary(MGMT + "isHealthy", request_serializer=pb.Empty.SerializeToString,
                          response_deserializer=pb.Empty.FromString)
    assert f(pb.Empty(), timeout=10) == pb.Empty()
    # GetServerKey ignores its (Empty) request.
    out, err = ag.raw("GetServerKey", b"")
    assert err is None and pb.ServerKeyResponse.FromString(out).key
    assert srv.stop()[0] == 0


# ---- the envelope -------------------------------------------------------------------

@test
def envelope_errors():
    need_pb()
    dsn, _ = svc.new_db()
    srv = start(dsn)
    ag = Agent(srv)
    ag.get_server_key()
    login = pb.LoginRequest(meta=pb.PeerSystemMeta(hostname="x"))
    for bad in ("abc", "", "not base64 at all!!", base64.b64encode(b"\x01" * 31).decode(),
                base64.b64encode(b"\x01" * 33).decode()):
        em = pb.EncryptedMessage(wgPubKey=bad, body=ag.seal(login))
        _, e = ag.raw("Login", em.SerializeToString())
        assert e and e.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, e)
        assert e.details() == "provided wgPubKey %s is invalid" % bad, e.details()
    # The device and PKCE flows open the envelope the same way.
    _, e = ag.raw("GetDeviceAuthorizationFlow", pb.EncryptedMessage(wgPubKey="abc").SerializeToString())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "wgPubKey abc" in e.details(), e

    def invalid(em_bytes, method="Login"):
        _, e = ag.raw(method, em_bytes)
        assert e and e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert e.details() == "invalid request message", e.details()
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=b"garbage" * 10).SerializeToString())
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=b"").SerializeToString())
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=b"\x00" * 39).SerializeToString())
    # Sealed to another server key.
    stranger = PrivateKey.generate()
    body = bytes(Box(ag.key, stranger.public_key).encrypt(login.SerializeToString()))
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=body).SerializeToString())
    # Sealed by another peer than wgPubKey claims.
    other = Agent(srv)
    other.server_key = ag.server_key
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=other.seal(login)).SerializeToString())
    # A correct box around bytes that are not a LoginRequest.
    box = Box(ag.key, PublicKey(base64.b64decode(ag.server_key)))
    invalid(pb.EncryptedMessage(wgPubKey=ag.pub, body=bytes(box.encrypt(b"\xff\xff\xff"))).SerializeToString())
    # Not an EncryptedMessage at all.
    invalid(b"\xff\xff\xff\xff")
    invalid(b"\xff\xff", method="GetPKCEAuthorizationFlow")
    # Size limits: a sealed body over 256 KiB is refused by the edge, a
    # message over 288 KiB by gRPC itself; both RESOURCE_EXHAUSTED.
    big = pb.LoginRequest(meta=pb.PeerSystemMeta(hostname="x" * (270 * 1024)))
    _, e = ag.raw("Login", pb.EncryptedMessage(wgPubKey=ag.pub, body=ag.seal(big)).SerializeToString())
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and e.details() == "request message too large", e
    _, e = ag.raw("Login", pb.EncryptedMessage(wgPubKey=ag.pub, body=b"\x00" * (300 * 1024)).SerializeToString())
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    # Every outcome is logged once, with the method and the peer key.
    line = srv.wait_log(lambda o: o.get("msg") == "rpc" and o.get("error") == "invalid request message"
                        and o.get("peer_key") == ag.pub)
    assert line["component"] == "agent" and line["method"] == "Login" and line["peer"] == "127.0.0.1", line
    assert srv.stop()[0] == 0


# ---- simple RPCs -------------------------------------------------------------------

@test
def auth_flows_and_unimplemented_methods():
    need_pb()
    dsn, _ = svc.new_db()
    srv = start(dsn)
    ag = Agent(srv)
    expect_error(lambda: ag.call("GetDeviceAuthorizationFlow", pb.DeviceAuthorizationFlowRequest(),
                                 pb.DeviceAuthorizationFlow),
                 grpc.StatusCode.NOT_FOUND, "no device authorization flow information available")
    expect_error(lambda: ag.call("GetPKCEAuthorizationFlow", pb.PKCEAuthorizationFlowRequest(),
                                 pb.PKCEAuthorizationFlow),
                 grpc.StatusCode.NOT_FOUND, "no pkce authorization flow information available")
    # ExtendAuthSession (tests/agent/test_sso.py) and the expose RPCs
    # (tests/agent/test_expose.py) are served: an empty box does not open.
    for name in ("ExtendAuthSession", "CreateExpose", "RenewExpose", "StopExpose"):
        out, e = ag.raw(name, pb.EncryptedMessage(wgPubKey=ag.pub).SerializeToString())
        assert e and e.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, e)
    # Job is bidi: the agent's hello is answered UNIMPLEMENTED, which the
    # agent takes as "no jobs here".
    e = expect_error(lambda: list(ag.ch.stream_stream(MGMT + "Job")(iter([b"\x0a\x00"]), timeout=10)),
                     grpc.StatusCode.UNIMPLEMENTED, "method Job not implemented")
    assert srv.stop()[0] == 0

    # Configured in management.json: answered from the file, sealed.
    conf = svc.write_json({
        "DeviceAuthorizationFlow": {"Provider": "hosted", "ProviderConfig": {
            "ClientID": "cli", "ClientSecret": "s3cret", "Domain": "idp.edge.test", "Audience": "aud",
            "DeviceAuthEndpoint": "https://idp.edge.test/device", "TokenEndpoint": "https://idp.edge.test/token",
            "Scope": "openid", "UseIDToken": True}},
        "PKCEAuthorizationFlow": {"ProviderConfig": {
            "ClientID": "cli2", "Audience": "aud2", "TokenEndpoint": "https://idp.edge.test/token",
            "AuthorizationEndpoint": "https://idp.edge.test/authorize", "Scope": "openid profile",
            "RedirectURLs": ["http://localhost:53000/", "http://localhost:54000/"], "LoginFlag": 1,
            "DisablePromptLogin": True}},
    })
    srv = start(dsn, config=conf)
    ag = Agent(srv)
    d, _ = ag.call("GetDeviceAuthorizationFlow", pb.DeviceAuthorizationFlowRequest(), pb.DeviceAuthorizationFlow)
    assert d.Provider == pb.DeviceAuthorizationFlow.HOSTED, d
    pc = d.ProviderConfig
    assert (pc.ClientID, pc.ClientSecret, pc.Domain, pc.Audience, pc.DeviceAuthEndpoint, pc.TokenEndpoint,
            pc.Scope, pc.UseIDToken) == ("cli", "s3cret", "idp.edge.test", "aud", "https://idp.edge.test/device",
                                         "https://idp.edge.test/token", "openid", True), pc
    p, _ = ag.call("GetPKCEAuthorizationFlow", pb.PKCEAuthorizationFlowRequest(), pb.PKCEAuthorizationFlow)
    pc = p.ProviderConfig
    assert (pc.ClientID, pc.Audience, pc.AuthorizationEndpoint, list(pc.RedirectURLs), pc.LoginFlag,
            pc.DisablePromptLogin) == ("cli2", "aud2", "https://idp.edge.test/authorize",
                                       ["http://localhost:53000/", "http://localhost:54000/"], 1, True), pc
    assert srv.stop()[0] == 0

    # Provider "none" means unconfigured; an unknown provider is refused.
    for provider, code in (("none", grpc.StatusCode.NOT_FOUND), ("auth0", grpc.StatusCode.INVALID_ARGUMENT)):
        srv = start(dsn, config=svc.write_json({"DeviceAuthorizationFlow": {"Provider": provider}}))
        ag = Agent(srv)
        expect_error(lambda: ag.call("GetDeviceAuthorizationFlow", pb.DeviceAuthorizationFlowRequest(),
                                     pb.DeviceAuthorizationFlow), code)
        assert srv.stop()[0] == 0


@test
def netbird_config_from_the_environment():
    """Every agent-facing key of management.json also comes from its
    environment variable (a JSON value; HttpConfig's strings as plain
    text), and the variable wins over the file."""
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    file_conf = {"Stuns": [{"Proto": "udp", "URI": "stun:file.test:3478"}],
                 "Signal": {"Proto": "http", "URI": "signal.file.test:80"},
                 "DeviceAuthorizationFlow": {"Provider": "none"},
                 "HttpConfig": {"AuthAudience": "file-aud", "AuthIssuer": "https://idp.file.test/"}}
    env = {k: json.dumps(NETBIRD_JSON[v]) for k, v in (
        ("NB_MGMT_STUNS", "Stuns"), ("NB_MGMT_TURN_CONFIG", "TURNConfig"), ("NB_MGMT_RELAY", "Relay"),
        ("NB_MGMT_SIGNAL", "Signal"))}
    env.update({
        "NB_MGMT_DEVICE_AUTHORIZATION_FLOW": json.dumps({"Provider": "hosted", "ProviderConfig": {
            "ClientID": "env-cli", "TokenEndpoint": "https://idp.env.test/token", "UseIDToken": True}}),
        "NB_MGMT_PKCE_AUTHORIZATION_FLOW": json.dumps({"ProviderConfig": {
            "ClientID": "env-pkce", "RedirectURLs": ["http://localhost:53000/"], "LoginFlag": 2}}),
        "NB_MGMT_AUTH_AUDIENCE": "env-aud",
        "NB_MGMT_AUTH_ISSUER": "https://idp.env.test/",
        "NB_MGMT_AUTH_KEYS_LOCATION": "https://idp.env.test/keys",
    })
    srv = start(dsn, config=svc.write_json(file_conf), env=env)
    ag = Agent(srv)
    now = time.time()
    resp, _ = ag.login(setup_key=acct["SETUP_KEY"])
    nc = resp.netbirdConfig
    assert [(s.uri, s.protocol) for s in nc.stuns] == [("stun:stun.edge.test:3478", pb.HostConfig.UDP)], nc
    check_turn(nc.turns, now)
    check_relay(nc.relay, now)
    assert (nc.signal.uri, nc.signal.protocol) == ("signal.edge.test:443", pb.HostConfig.HTTPS), nc.signal
    d, _ = ag.call("GetDeviceAuthorizationFlow", pb.DeviceAuthorizationFlowRequest(), pb.DeviceAuthorizationFlow)
    assert d.Provider == pb.DeviceAuthorizationFlow.HOSTED and d.ProviderConfig.ClientID == "env-cli", d
    p, _ = ag.call("GetPKCEAuthorizationFlow", pb.PKCEAuthorizationFlowRequest(), pb.PKCEAuthorizationFlow)
    assert (p.ProviderConfig.ClientID, list(p.ProviderConfig.RedirectURLs), p.ProviderConfig.LoginFlag) == \
        ("env-pkce", ["http://localhost:53000/"], 2), p
    svc.execute(dsn, "UPDATE peers SET ssh_enabled = true RETURNING id")
    r, _ = ag.login()
    jwt = r.peerConfig.sshConfig.jwtConfig
    assert (jwt.issuer, jwt.audience, jwt.keysLocation) == \
        ("https://idp.env.test/", "env-aud", "https://idp.env.test/keys"), jwt
    assert srv.stop()[0] == 0


# ---- Login -------------------------------------------------------------------------

@test
def login_errors():
    need_pb()
    dsn, _ = svc.new_db()
    bootstrap(dsn)
    srv = start(dsn)
    ag = Agent(srv)
    expect_error(lambda: ag.call("Login", pb.LoginRequest(setupKey="x"), pb.LoginResponse),
                 grpc.StatusCode.FAILED_PRECONDITION,
                 "peer system meta has to be provided to log in. Peer %s, remote addr 127.0.0.1" % ag.pub)
    expect_error(lambda: ag.login(), grpc.StatusCode.PERMISSION_DENIED,
                 "no peer auth method provided, please use a setup key or interactive SSO login")
    for key in ("A2C8E62B-38F5-4553-B31E-DD66C696CEBB", "not-a-uuid"):
        expect_error(lambda: ag.login(setup_key=key), grpc.StatusCode.NOT_FOUND,
                     "couldn't add peer: setup key is invalid")
    # No identity provider: a JWT cannot be checked.
    e = expect_error(lambda: ag.login(jwtToken="eyJhbGciOiJub25lIn0.e30."), grpc.StatusCode.PERMISSION_DENIED)
    assert "JWT" in e.details() and "setup key" in e.details(), e.details()
    # Nothing was written.
    assert svc.query(dsn, "SELECT count(*) FROM peers") == [(0,)]
    line = rpc_line(srv, "Login", "NOT_FOUND")
    assert line["peer_key"] == ag.pub and line["level"] == "info", line
    assert srv.stop()[0] == 0


def check_turn(turns, now):
    want = [("turn:turn.edge.test:3478", pb.HostConfig.UDP),
            ("turn:turn.edge.test:3478?transport=tcp", pb.HostConfig.TCP)]
    assert [(t.hostConfig.uri, t.hostConfig.protocol) for t in turns] == want, turns
    for t in turns:
        expires = int(t.user)
        assert now + 2 * 3600 - 60 <= expires <= now + 2 * 3600 + 60, (t.user, now)
        mac = hmac.new(TURN_SECRET.encode(), t.user.encode(), hashlib.sha1).digest()
        assert t.password == base64.b64encode(mac).decode(), t


def check_relay(relay, now):
    assert list(relay.urls) == ["rels://relay.edge.test:443"], relay
    expires = int(relay.tokenPayload)
    assert now + 1800 - 60 <= expires <= now + 1800 + 60, relay
    key = hashlib.sha256(RELAY_SECRET.encode()).digest()
    mac = hmac.new(key, relay.tokenPayload.encode(), hashlib.sha256).digest()
    assert relay.tokenSignature == base64.b64encode(mac).decode(), relay


@test
def registration_login_and_response():
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    network = ipaddress.ip_network(acct["NETWORK"])
    srv = start(dsn, "--dns-domain", "edge.internal", config=svc.write_json(NETBIRD_JSON))
    ag = Agent(srv)
    now = time.time()
    # The reference agent sends the setup key in lower case.
    resp, plain = ag.login(setup_key=acct["SETUP_KEY"].lower(), hostname="Edge Box.local",
                           peerKeys=pb.PeerKeys(sshPubKey=b"ssh-ed25519 AAAAC3Nz edge", wgPubKey=ag.pub.encode()))
    pc = resp.peerConfig
    ip, prefix = pc.address.split("/")
    assert ipaddress.ip_address(ip) in network and int(prefix) == network.prefixlen, (pc.address, network)
    assert pc.fqdn == "edge-box.edge.internal", pc.fqdn
    assert pc.sshConfig.sshEnabled is False and not pc.sshConfig.HasField("jwtConfig"), pc.sshConfig
    assert pc.RoutingPeerDnsResolutionEnabled is True and pc.LazyConnectionEnabled is False, pc
    nc = resp.netbirdConfig
    assert [(s.uri, s.protocol) for s in nc.stuns] == [("stun:stun.edge.test:3478", pb.HostConfig.UDP)], nc
    check_turn(nc.turns, now)
    check_relay(nc.relay, now)
    assert (nc.signal.uri, nc.signal.protocol) == ("signal.edge.test:443", pb.HostConfig.HTTPS), nc.signal
    # A setup-key peer never expires: sessionExpiresAt present but empty,
    # which on the wire is field 4 with length 0, written last.
    assert resp.HasField("sessionExpiresAt") and resp.sessionExpiresAt.seconds == 0, resp
    assert plain.endswith(b"\x22\x00"), plain[-8:]
    assert len(resp.Checks) == 0
    rows = svc.query(dsn, "SELECT account_id, host(ip), dns_label, ssh_key, meta_hostname, meta_wt_version, "
                          "host(location_connection_ip), user_id FROM peers WHERE key = '%s'" % ag.pub)
    assert rows == [(acct["ACCOUNT_ID"], ip, "edge-box", "ssh-ed25519 AAAAC3Nz edge", "Edge Box.local",
                     "0.60.0", "127.0.0.1", None)], rows
    line = rpc_line(srv, "Login", "OK")
    assert line["account"] == acct["ACCOUNT_ID"] and line["peer_key"] == ag.pub, line

    # Re-login without a key: the same peer, the same address; the meta is
    # updated. Asking again with the setup key is a login too.
    resp2, _ = ag.login(hostname="renamed")
    assert resp2.peerConfig.address == pc.address and resp2.peerConfig.fqdn == pc.fqdn, resp2.peerConfig
    resp3, _ = ag.login(setup_key=acct["SETUP_KEY"])
    assert resp3.peerConfig.address == pc.address
    assert svc.query(dsn, "SELECT count(*), min(meta_hostname) FROM peers") == [(1, "edge-host")]
    # Another agent gets another address in the same network.
    other = Agent(srv)
    r, _ = other.login(setup_key=acct["SETUP_KEY"], hostname="edge-box")
    assert r.peerConfig.address != pc.address and ipaddress.ip_address(r.peerConfig.address.split("/")[0]) in network
    assert r.peerConfig.fqdn != pc.fqdn and r.peerConfig.fqdn.endswith(".edge.internal"), r.peerConfig.fqdn

    # Account settings flow into PeerConfig; an account DNS domain wins
    # over --dns-domain; SSH gets the JWT settings of HttpConfig.
    svc.execute(dsn, "UPDATE accounts SET settings_dns_domain = 'corp.test', "
                   "settings_lazy_connection_enabled = true, settings_routing_peer_dns_resolution_enabled = false "
                   "RETURNING id")
    svc.execute(dsn, "UPDATE peers SET ssh_enabled = true WHERE key = '%s' RETURNING id" % ag.pub)
    r, _ = ag.login()
    assert r.peerConfig.fqdn == "edge-box.corp.test", r.peerConfig.fqdn
    assert r.peerConfig.LazyConnectionEnabled and not r.peerConfig.RoutingPeerDnsResolutionEnabled, r.peerConfig
    jwt = r.peerConfig.sshConfig.jwtConfig
    assert r.peerConfig.sshConfig.sshEnabled and jwt.issuer == "https://idp.edge.test/" and \
        jwt.audience == "edge-aud" and jwt.keysLocation == "https://idp.edge.test/.well-known/jwks.json", jwt
    assert srv.stop()[0] == 0


@test
def static_turn_credentials_and_sso_session():
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    conf = dict(NETBIRD_JSON)
    conf["TURNConfig"] = dict(conf["TURNConfig"], TimeBasedCredentials=False)
    del conf["Relay"]
    srv = start(dsn, config=svc.write_json(conf))
    ag = Agent(srv)
    resp, _ = ag.login(setup_key=acct["SETUP_KEY"])
    assert [(t.user, t.password) for t in resp.netbirdConfig.turns] == [("u", "p"), ("u", "p")], resp
    assert not resp.netbirdConfig.HasField("relay"), resp.netbirdConfig
    assert resp.peerConfig.fqdn.endswith(".netbird.selfhosted"), resp.peerConfig.fqdn

    # Turn the peer into an SSO peer (as if added with a JWT): its session
    # deadline is last_login + the account's expiration (24 h by default).
    svc.execute(dsn, "UPDATE peers SET user_id = '%s', login_expiration_enabled = true, "
                   "last_login = now() - interval '1 hour' RETURNING id" % acct["USER_ID"])
    last_login = svc.query(dsn, "SELECT extract(epoch FROM last_login)::float8 FROM peers")[0][0]
    resp, _ = ag.login()
    deadline = resp.sessionExpiresAt.seconds + resp.sessionExpiresAt.nanos / 1e9
    assert abs(deadline - (last_login + 24 * 3600)) < 0.001, (deadline, last_login)
    # Expiration off for the account: present but empty again.
    svc.execute(dsn, "UPDATE accounts SET settings_peer_login_expiration_enabled = false RETURNING id")
    resp, plain = ag.login()
    assert resp.HasField("sessionExpiresAt") and resp.sessionExpiresAt.seconds == 0 and plain.endswith(b"\x22\x00")
    # Expired: the agent must log in again with SSO.
    svc.execute(dsn, "UPDATE accounts SET settings_peer_login_expiration_enabled = true RETURNING id")
    svc.execute(dsn, "UPDATE peers SET last_login = now() - interval '25 hours' RETURNING id")
    expect_error(lambda: ag.login(), grpc.StatusCode.PERMISSION_DENIED,
                 "peer login has expired, please log in once more")
    assert srv.stop()[0] == 0


@test
def sync_meta_and_logout():
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    srv = start(dsn)
    ag = Agent(srv)
    expect_error(lambda: ag.call("SyncMeta", pb.SyncMetaRequest(meta=pb.PeerSystemMeta(hostname="x"))),
                 grpc.StatusCode.NOT_FOUND, "peer not found: %s" % ag.pub)
    ag.login(setup_key=acct["SETUP_KEY"])
    e = expect_error(lambda: ag.call("SyncMeta", pb.SyncMetaRequest()), grpc.StatusCode.FAILED_PRECONDITION)
    assert e.details().startswith("peer system meta has to be provided on sync. Peer %s" % ag.pub), e.details()
    # SyncMeta answers a plaintext Empty and stores the meta.
    resp, raw = ag.call("SyncMeta", pb.SyncMetaRequest(meta=pb.PeerSystemMeta(hostname="meta-2", OSVersion="13")))
    assert raw == b"", raw
    assert svc.query(dsn, "SELECT meta_hostname, meta_os_version FROM peers") == [("meta-2", "13")]
    # Logout deletes the peer; a second one finds nothing; a bare Login
    # then asks for registration again.
    _, raw = ag.call("Logout", pb.Empty())
    assert raw == b""
    assert svc.query(dsn, "SELECT count(*) FROM peers") == [(0,)]
    expect_error(lambda: ag.call("Logout", pb.Empty()), grpc.StatusCode.NOT_FOUND, "peer not found: %s" % ag.pub)
    expect_error(lambda: ag.login(), grpc.StatusCode.PERMISSION_DENIED)
    assert srv.stop()[0] == 0


@test
def many_concurrent_logins_then_clean_shutdown():
    """Registrations from many agents at once go through the worker pool
    (a small one here) without losing or duplicating any."""
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    srv = start(dsn, db_pool_size=2)
    agents = [Agent(srv) for _ in range(40)]
    results, errors = [], []

    def run(ag):
        try:
            r, _ = ag.login(setup_key=acct["SETUP_KEY"], hostname="many")
            r2, _ = ag.login(hostname="many")
            assert r.peerConfig.address == r2.peerConfig.address
            results.append(r.peerConfig.address)
        except Exception as e:     # reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(results) == 40 and len(set(results)) == 40, results
    assert svc.query(dsn, "SELECT count(*), count(DISTINCT dns_label) FROM peers") == [(40, 40)]
    rc, took = srv.stop()
    assert rc == 0 and took < 5, (rc, took)
    svc.check_sanitizer_clean(srv.stderr())


@test
def sigterm_while_logins_are_in_flight():
    """Shutdown waits for jobs still on the workers (one worker here, so
    jobs queue up), answers or cancels every call, and exits cleanly."""
    need_pb()
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    srv = start(dsn, db_pool_size=1, shutdown_timeout="3s")
    agents = [Agent(srv) for _ in range(8)]
    stop = threading.Event()
    codes, lock = [], threading.Lock()

    def loop(ag):
        while not stop.is_set():
            try:
                ag.login(setup_key=acct["SETUP_KEY"], hostname="busy")
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                codes.append(code)
            if code != grpc.StatusCode.OK:
                return
    threads = [threading.Thread(target=loop, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(codes) < 50:
        assert time.monotonic() < deadline, codes
        time.sleep(0.05)
    rc, took = srv.stop()
    stop.set()
    for t in threads:
        t.join(20)
    assert rc == 0 and took < 3 + 3, (rc, took, srv.stdout()[-2000:])
    allowed = (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert all(c in allowed for c in codes), set(codes)
    assert svc.query(dsn, "SELECT count(*) FROM peers") == [(8,)]
    svc.check_sanitizer_clean(srv.stderr())


@test
def shutdown_waits_for_workers_stuck_in_the_database():
    """Workers blocked inside PostgreSQL (a table lock held by the test)
    when SIGTERM comes: the calls are cancelled after the grace period,
    the server waits for the jobs to come back, then exits cleanly."""
    need_pb()
    import psycopg2
    dsn, _ = svc.new_db()
    acct = bootstrap(dsn)
    srv = start(dsn, db_pool_size=1, shutdown_timeout="1s")
    first = Agent(srv)
    first.login(setup_key=acct["SETUP_KEY"])
    locker = psycopg2.connect(dsn)
    svc.defer(locker.close)
    cur = locker.cursor()
    cur.execute("LOCK TABLE peers IN ACCESS EXCLUSIVE MODE")     # held until commit
    codes = []

    def one(ag):
        try:
            ag.login()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    agents = [first] + [Agent(srv) for _ in range(3)]
    threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.signal()
    srv.wait_log(lambda o: o.get("msg") == "shutdown grace period over, cancelling calls")
    for t in threads:
        t.join(10)
    # gRPC's cancel-all reports UNAVAILABLE "Cancelling all calls".
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 4, codes
    time.sleep(1.0)
    assert srv.proc.poll() is None, "exited while a worker was still in the database"
    locker.commit()                     # the stuck job finishes; the queued ones are skipped
    rc = srv.wait(20)
    took = time.monotonic() - t0
    assert rc == 0 and 2.0 < took < 6.0, (rc, took, srv.stdout()[-3000:])
    assert any(l.get("msg") == "waiting for jobs on workers" for l in srv.logs()), srv.stdout()[-3000:]
    svc.check_sanitizer_clean(srv.stderr())


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
