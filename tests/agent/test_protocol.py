"""The agent protocol end to end: a NetBird-like agent (nbagent.py) against
the real netbird-mgmt binary and PostgreSQL. Registration, login, the error
codes agents act on (netbird-protocol.md section 3.4), the NaCl envelope,
the LoginResponse contents, and the Sync stream.

Usage (meson does this): /usr/bin/python3 test_protocol.py NETBIRD_MGMT [TEST]
with CP_PROTO_DIR=<build>/proto and CP_TEST_PG_DSN set.
"""

import base64
import hashlib
import hmac
import ipaddress
import threading
import time
import uuid

import grpc

import fixture  # sets up sys.path for svc and nbagent
import svc
import nbagent
from fixture import Deployment, wait_until, json_dump
from nbagent import RpcFailed, StreamEnded, build_meta, pb
from svc import test

SC = grpc.StatusCode
DNS_DOMAIN = "netbird.selfhosted"

MSG_NO_AUTH = "no peer auth method provided, please use a setup key or interactive SSO login"
MSG_BAD_KEY = "couldn't add peer: setup key is invalid"
MSG_NO_META = "peer system meta has to be provided to log in"
MSG_BAD_REQ = "invalid request message"
MSG_ALREADY = "peer has been already registered"


# ---- helpers ------------------------------------------------------------------

def expect_rpc(fn, code, contains=None):
    """fn() must fail with gRPC status code (and details containing `contains`)."""
    try:
        got = fn()
    except RpcFailed as e:
        assert e.code == code, "expected %s, got %s %r" % (code.name, e.code, e.details)
        if contains is not None:
            assert contains in e.details, "expected details containing %r, got %r" % (contains, e.details)
        return e
    raise AssertionError("expected %s, call succeeded: %s" % (code.name, json_dump(got) if got is not None else got))


def split_address(resp):
    ip, _, plen = resp.peerConfig.address.partition("/")
    return ipaddress.ip_address(ip), int(plen) if plen else None


def check_address(dep, resp):
    ip, plen = split_address(resp)
    assert plen == dep.network.prefixlen, "address %r: prefix length must be the account network's (%s)" % (
        resp.peerConfig.address, dep.network)
    assert ip in dep.network, "address %r is outside the account network %s" % (resp.peerConfig.address, dep.network)
    assert ip not in (dep.network.network_address, dep.network.broadcast_address), resp.peerConfig.address
    return ip


def check_session_no_expiry(msg, field="sessionExpiresAt"):
    """Present but empty (seconds = nanos = 0): 'no expiry' for setup-key peers."""
    assert msg.HasField(field), "%s must be present (empty) for a setup-key peer, it is absent" % field
    ts = getattr(msg, field)
    assert ts.seconds == 0 and ts.nanos == 0, "%s must be empty, got %s" % (field, ts)


def check_turn_time_based(user, password, now=None):
    """TURN REST credentials: user = decimal Unix expiry, password =
    base64(HMAC-SHA1(secret, user)) (netbird-protocol.md section 1.5)."""
    now = now or time.time()
    assert user.isdigit(), "time-based TURN user must be a decimal expiry, got %r" % user
    want = base64.b64encode(hmac.new(fixture.TURN_SECRET.encode(), user.encode(), hashlib.sha1).digest()).decode()
    assert password == want, "TURN password %r is not base64(HMAC-SHA1(secret, %r)) = %r" % (password, user, want)
    exp = int(user)
    assert now + fixture.TURN_TTL_S - 300 <= exp <= now + fixture.TURN_TTL_S + 300, \
        "TURN expiry %d is not now+TTL (now %d, TTL %d)" % (exp, now, fixture.TURN_TTL_S)


def check_relay(relay, now=None):
    """Relay token: payload = decimal Unix expiry, signature =
    base64(HMAC-SHA256(key = SHA-256(secret), payload))."""
    now = now or time.time()
    assert list(relay.urls) == fixture.NETBIRD_CONFIG["Relay"]["Addresses"], list(relay.urls)
    payload = relay.tokenPayload
    assert payload.isdigit(), "relay token payload must be a decimal expiry, got %r" % payload
    key = hashlib.sha256(fixture.RELAY_SECRET.encode()).digest()
    want = base64.b64encode(hmac.new(key, payload.encode(), hashlib.sha256).digest()).decode()
    assert relay.tokenSignature == want, "relay signature %r, expected %r" % (relay.tokenSignature, want)
    exp = int(payload)
    assert now + fixture.RELAY_TTL_S - 300 <= exp <= now + fixture.RELAY_TTL_S + 300, \
        "relay expiry %d is not now+TTL (now %d)" % (exp, now)


def check_stuns_signal(cfg):
    stuns = [(h.uri, h.protocol) for h in cfg.stuns]
    assert stuns == [(s["URI"], pb.HostConfig.UDP) for s in fixture.NETBIRD_CONFIG["Stuns"]], stuns
    assert cfg.HasField("signal"), "netbirdConfig.signal missing"
    assert cfg.signal.uri == fixture.NETBIRD_CONFIG["Signal"]["URI"], cfg.signal
    assert cfg.signal.protocol == pb.HostConfig.HTTPS, cfg.signal
    assert len(cfg.turns) == 1, list(cfg.turns)
    t = cfg.turns[0]
    assert t.hostConfig.uri == "turn:turn.example.test:3478" and t.hostConfig.protocol == pb.HostConfig.UDP, t
    assert not cfg.HasField("flow"), "flow config is cloud-only and must be absent"


def fresh_agents(dep, n, srv=None, **kw):
    return [dep.agent(srv, **kw) for _ in range(n)]


def run_parallel(fns):
    """Runs the callables at the same moment (barrier); returns
    [("ok", value) | ("err", RpcFailed)] in order."""
    barrier = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def run(i, fn):
        try:
            barrier.wait(10)
            results[i] = ("ok", fn())
        except RpcFailed as e:
            results[i] = ("err", e)
        except Exception as e:
            results[i] = ("exc", e)

    ts = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert all(r is not None for r in results), "a parallel call did not finish within 60 s"
    for r in results:
        if r[0] == "exc":
            raise r[1]
    return results


def open_sync(agent, meta=None):
    """Opens Sync and reads the first message (an error status fails)."""
    stream = agent.sync(meta=meta)
    first = stream.next(timeout=15)
    check_map_invariants(first)
    return stream, first


def check_map_invariants(msg):
    """What every SyncResponse carrying a map must satisfy (section 1.5, 9)."""
    if not msg.HasField("NetworkMap"):
        return
    nm = msg.NetworkMap
    ctx = json_dump(msg)
    assert nm.remotePeersIsEmpty == (len(nm.remotePeers) == 0), "remotePeersIsEmpty wrong: " + ctx
    assert msg.remotePeersIsEmpty == nm.remotePeersIsEmpty, "top-level remotePeersIsEmpty differs: " + ctx
    assert nm.firewallRulesIsEmpty == (len(nm.FirewallRules) == 0), "firewallRulesIsEmpty wrong: " + ctx
    assert nm.routesFirewallRulesIsEmpty == (len(nm.routesFirewallRules) == 0), \
        "routesFirewallRulesIsEmpty wrong: " + ctx
    assert msg.Version == 0 and not msg.HasField("NetworkMapEnvelope"), "legacy map expected: " + ctx
    assert nm.HasField("peerConfig") and msg.HasField("peerConfig"), "peerConfig missing: " + ctx
    assert nm.peerConfig == msg.peerConfig, "NetworkMap.peerConfig differs from peerConfig: " + ctx
    # our agents say 0.60.0: the deprecated top-level list stays empty
    assert len(msg.remotePeers) == 0, "deprecated top-level remotePeers sent to a new agent: " + ctx
    assert msg.HasField("sessionExpiresAt"), "sessionExpiresAt must be present on map messages: " + ctx


def remote_keys(msg):
    return {p.wgPubKey: p for p in msg.NetworkMap.remotePeers}


# ---- GetServerKey, isHealthy, transport ------------------------------------------

@test
def server_key_and_health():
    dep = Deployment()
    srv = dep.start()
    a = dep.agent()
    assert a.is_healthy()
    r1 = a.get_server_key_response()
    assert len(r1.key) == 44, r1.key
    raw = base64.b64decode(r1.key, validate=True)
    assert len(raw) == 32, r1.key
    assert a.get_server_key_response().key == r1.key, "server key changed between calls"
    assert r1.version == 0, r1


@test
def server_key_shared_by_two_servers():
    """Replicas on one database answer GetServerKey alike, so a request
    sealed for one replica opens on another."""
    dep = Deployment()
    s1, s2 = dep.start(), dep.start()
    a1 = dep.agent(s1)
    k1, k2 = a1.get_server_key_response().key, dep.agent(s2).get_server_key_response().key
    assert k1 == k2, "servers on one database disagree on the key: %r vs %r" % (k1, k2)
    # register on s1 ...
    resp = a1.register(dep.setup_key, meta=build_meta("replica-peer"))
    ip = check_address(dep, resp)
    # ... log in on s2 with the same identity
    a2 = dep.agent(s2, private_key=a1.key)
    resp2 = a2.login(meta=build_meta("replica-peer"))
    assert split_address(resp2)[0] == ip, (resp.peerConfig.address, resp2.peerConfig.address)
    # a request sealed with the key fetched from s1, sent to s2
    env = a1.envelope(a1.login_request(meta=build_meta("replica-peer")), nbagent.key_from_b64(k1))
    out = nbagent.parse(pb.EncryptedMessage, a2.call_raw("Login", env))
    lr = nbagent.parse(pb.LoginResponse, nbagent.open_box(out.body, a1.key, nbagent.key_from_b64(k1)))
    assert lr.peerConfig.address == resp.peerConfig.address, lr


@test
def server_key_survives_restart():
    dep = Deployment()
    srv = dep.start()
    a = dep.agent(srv)
    k1 = a.get_server_key_response().key
    resp = a.register(dep.setup_key, meta=build_meta("restart-peer"))
    a.close()
    fixture.stop_server(srv)
    srv2 = dep.start()
    b = dep.agent(srv2, private_key=a.key)
    assert b.get_server_key_response().key == k1, "server key changed across a restart"
    resp2 = b.login(meta=build_meta("restart-peer"))
    assert resp2.peerConfig.address == resp.peerConfig.address, (resp.peerConfig.address, resp2.peerConfig.address)


@test
def login_over_tls():
    dep = Deployment()
    crt, key = fixture.make_cert(svc.tmpdir())
    srv = dep.start("--cert-file", crt, "--cert-key", key)
    with open(crt, "rb") as f:
        pem = f.read()
    a = dep.agent(srv, tls=True, root_certs=pem, server_name="localhost")
    resp = a.register(dep.setup_key, meta=build_meta("tls-peer"))
    check_address(dep, resp)


# ---- registration and login ----------------------------------------------------

@test
def register_with_setup_key():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    meta = build_meta("alice-laptop")
    # the agent always tries a bare Login first
    expect_rpc(lambda: a.login(meta=meta), SC.PERMISSION_DENIED, MSG_NO_AUTH)
    assert dep.peers() == {}, "a bare Login must not create a peer"
    resp = a.login(setup_key=dep.setup_key, meta=meta, ssh_pub_key=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAtest alice")
    ip = check_address(dep, resp)
    peers = dep.peers()
    assert list(peers) == [a.pub_b64], peers
    row = peers[a.pub_b64]
    assert row["ip"] == str(ip), (row, resp.peerConfig.address)
    assert row["account_id"] == dep.account_id, row
    assert row["user_id"] is None, "setup-key peers have no user: %r" % row
    assert row["ssh_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAtest alice", row
    assert row["dns_label"] == "alice-laptop", row
    assert resp.peerConfig.fqdn == "alice-laptop." + DNS_DOMAIN, resp.peerConfig.fqdn
    assert dep.setup_key_used(dep.setup_key) == 1
    assert dep.network_serial() >= 1, "registration must bump network_serial"


@test
def setup_key_in_any_case():
    """Keys are hashed upper-case: the agent's lower-case form and the
    printed upper-case form are the same key."""
    dep = Deployment()
    dep.start()
    a, b = dep.agent(), dep.agent()
    r1 = a.login(setup_key=dep.setup_key.lower(), meta=build_meta("lower"))
    req = b.login_request(meta=build_meta("upper"))
    req.setupKey = dep.setup_key.upper()
    env = b.envelope(req)
    out = nbagent.parse(pb.EncryptedMessage, b.call_raw("Login", env))
    r2 = nbagent.parse(pb.LoginResponse, nbagent.open_box(out.body, b.key, b.server_key))
    check_address(dep, r1)
    check_address(dep, r2)
    assert r1.peerConfig.address != r2.peerConfig.address


@test
def login_again_keeps_peer_and_ip():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    meta = build_meta("bob-desktop")
    r1 = a.register(dep.setup_key, meta=meta)
    serial = dep.network_serial()
    r2 = a.login(meta=meta)                                  # bare login of a known peer
    r3 = a.login(setup_key=dep.setup_key, meta=meta)         # setup key again: still a login
    assert r1.peerConfig.address == r2.peerConfig.address == r3.peerConfig.address, \
        (r1.peerConfig.address, r2.peerConfig.address, r3.peerConfig.address)
    assert r1.peerConfig.fqdn == r2.peerConfig.fqdn == r3.peerConfig.fqdn
    assert len(dep.peers()) == 1, dep.peers()
    assert dep.setup_key_used(dep.setup_key) == 1, "login of a known peer must not use the key again"
    assert dep.network_serial() == serial, "a login changes no topology"
    # a second connection (new HTTP/2 connection, same identity)
    b = dep.agent(private_key=a.key)
    assert b.login(meta=meta).peerConfig.address == r1.peerConfig.address


@test
def unknown_peer_bare_login_is_permission_denied():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    expect_rpc(lambda: a.login(meta=build_meta("nobody")), SC.PERMISSION_DENIED, MSG_NO_AUTH)
    expect_rpc(lambda: a.login(meta=build_meta("nobody")), SC.PERMISSION_DENIED, MSG_NO_AUTH)
    assert dep.peers() == {}


@test
def missing_meta_is_failed_precondition():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    # unknown peer, with a valid setup key: meta is checked first
    expect_rpc(lambda: a.login(setup_key=dep.setup_key, with_meta=False), SC.FAILED_PRECONDITION, MSG_NO_META)
    expect_rpc(lambda: a.login(with_meta=False), SC.FAILED_PRECONDITION, MSG_NO_META)
    assert dep.peers() == {}, "no peer may be created without meta"
    assert dep.setup_key_used(dep.setup_key) == 0
    # a registered peer
    a.register(dep.setup_key, meta=build_meta("meta-peer"))
    expect_rpc(lambda: a.login(with_meta=False), SC.FAILED_PRECONDITION, MSG_NO_META)


@test
def invalid_setup_keys_are_not_found():
    dep = Deployment()
    dep.start()
    cases = {
        "unknown": str(uuid.uuid4()),
        "not a uuid": "definitely-not-a-setup-key",
        "expired": dep.add_setup_key(expires_in_s=-60),
        "revoked": dep.add_setup_key(revoked=True),
        "one-off used": dep.add_setup_key(type_="one-off", used_times=1),
        "usage limit reached": dep.add_setup_key(usage_limit=3, used_times=3),
        "expired and revoked": dep.add_setup_key(expires_in_s=-1, revoked=True),
    }
    failures = []
    for what, key in cases.items():
        a = dep.agent()
        try:
            expect_rpc(lambda: a.login(setup_key=key, meta=build_meta("k-" + what.replace(" ", "-"))),
                       SC.NOT_FOUND, MSG_BAD_KEY)
        except AssertionError as e:
            failures.append("%s: %s" % (what, e))
    assert not failures, "\n".join(failures)
    assert dep.peers() == {}, dep.peers()


@test
def valid_limited_keys_work_until_used_up():
    dep = Deployment()
    dep.start()
    future = dep.add_setup_key(expires_in_s=3600)
    check_address(dep, dep.agent().login(setup_key=future, meta=build_meta("future-key")))
    limited = dep.add_setup_key(usage_limit=2, used_times=1)
    check_address(dep, dep.agent().login(setup_key=limited, meta=build_meta("limited-1")))
    assert dep.setup_key_used(limited) == 2
    expect_rpc(lambda: dep.agent().login(setup_key=limited, meta=build_meta("limited-2")), SC.NOT_FOUND, MSG_BAD_KEY)
    one_off = dep.add_setup_key(type_="one-off")
    check_address(dep, dep.agent().login(setup_key=one_off, meta=build_meta("one-off-1")))
    expect_rpc(lambda: dep.agent().login(setup_key=one_off, meta=build_meta("one-off-2")), SC.NOT_FOUND, MSG_BAD_KEY)
    assert len(dep.peers()) == 3, dep.peers()


@test
def one_off_key_used_concurrently():
    """8 agents race for one one-off key: exactly one registers."""
    dep = Deployment()
    dep.start()
    key = dep.add_setup_key(type_="one-off")
    agents = fresh_agents(dep, 8)
    for a in agents:
        a.get_server_key()              # connections up before the race
    results = run_parallel([lambda a=a, i=i: a.login(setup_key=key, meta=build_meta("racer-%d" % i))
                            for i, a in enumerate(agents)])
    ok = [r for r in results if r[0] == "ok"]
    errs = [r[1] for r in results if r[0] == "err"]
    assert len(ok) == 1, "exactly one registration must succeed, got %d: %r" % (len(ok), errs)
    for e in errs:
        # NotFound when the key was already used up at lookup; FailedPrecondition
        # when it was used up inside the registering transaction (section 3.3 step 12)
        assert (e.code, e.details) in ((SC.NOT_FOUND, MSG_BAD_KEY), (SC.FAILED_PRECONDITION, MSG_BAD_KEY)), e
    assert len(dep.peers()) == 1, dep.peers()
    assert dep.setup_key_used(key) == 1


@test
def duplicate_registration_race():
    """One identity registering over 8 connections at once: one peer, one
    address, the key used once; latecomers either log in or get
    FailedPrecondition 'peer has been already registered'."""
    dep = Deployment()
    dep.start()
    key = dep.add_setup_key(type_="reusable")
    first = dep.agent()
    agents = [first] + [dep.agent(private_key=first.key) for _ in range(7)]
    for a in agents:
        a.get_server_key()
    meta = build_meta("dup-peer")
    results = run_parallel([lambda a=a: a.login(setup_key=key, meta=meta) for a in agents])
    ok = [r[1] for r in results if r[0] == "ok"]
    errs = [r[1] for r in results if r[0] == "err"]
    assert ok, "no registration succeeded: %r" % errs
    for e in errs:
        assert e.code == SC.FAILED_PRECONDITION and MSG_ALREADY in e.details, e
    assert len({r.peerConfig.address for r in ok}) == 1, [r.peerConfig.address for r in ok]
    assert list(dep.peers()) == [first.pub_b64], dep.peers()
    assert dep.setup_key_used(key) == 1, "one peer, but the key was counted %r times" % dep.setup_key_used(key)


@test
def extra_dns_labels_need_a_key_that_allows_them():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    expect_rpc(lambda: a.login(setup_key=dep.setup_key, meta=build_meta("labels"), dns_labels=["web", "api"]),
               SC.FAILED_PRECONDITION, "setup key doesn't allow extra DNS labels")
    assert dep.peers() == {}


@test
def registration_records_meta_groups_and_event():
    """What a registration leaves behind: the meta (bare addresses dropped),
    the key's auto-groups plus All, the key's ephemeral flag, event 1
    peer.setupkey.add initiated by the setup key."""
    dep = Deployment()
    dep.start()
    gid = dep.add_group("servers")
    key = dep.add_setup_key(auto_groups=[gid], ephemeral=True)
    a = dep.agent()
    meta = build_meta("meta-host", netbird_version="0.60.1")
    meta.networkAddresses.add(netIP="10.9.8.7", mac="00:00:00:00:00:01")      # not a prefix: dropped
    a.login(setup_key=key, meta=meta)
    row = dep.sql("SELECT id, meta_hostname, meta_go_os, meta_wt_version, meta_kernel_version, meta_os_version,"
                  " meta_capabilities, meta_sync_message_version, meta_network_addresses, ephemeral,"
                  " login_expiration_enabled, user_id FROM peers WHERE key = %s", (a.pub_b64,))
    assert len(row) == 1, row
    (pid, host, goos, ver, kver, osver, caps, smv, addrs, eph, lexp, uid) = row[0]
    assert (host, goos, ver, kver, osver) == ("meta-host", "linux", "0.60.1", "6.1.0-18-amd64", "12"), row
    assert list(caps) == [1, 2] and smv == 1, row
    nets = sorted(x.get("NetIP") for x in addrs)
    assert nets == ["192.168.122.17/24", "fe80::5054:ff:fe12:3456/64"], addrs
    assert eph is True, "the key is ephemeral, so is the peer: %r" % (row,)
    assert lexp is False and uid is None, "setup-key peers never expire: %r" % (row,)
    assert dep.peer_groups(pid) == ["All", "servers"], dep.peer_groups(pid)
    ev = dep.sql("SELECT initiator_id, meta FROM events WHERE activity = 1 AND target_id = %s", (pid,))
    key_id = dep.sql("SELECT id FROM setup_keys WHERE key = %s", (fixture.setup_key_hash(key),))[0][0]
    assert len(ev) == 1 and ev[0][0] == key_id, ev
    assert ev[0][1].get("setup_key_name") == "test reusable", ev


@test
def login_updates_ssh_key_and_checks_dns_labels():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    meta = build_meta("ssh-peer")
    a.login(setup_key=dep.setup_key, meta=meta, ssh_pub_key="ssh-ed25519 AAAA first")
    a.login(meta=meta, ssh_pub_key="ssh-ed25519 AAAA second")
    assert dep.peers()[a.pub_b64]["ssh_key"] == "ssh-ed25519 AAAA second", dep.peers()
    expect_rpc(lambda: a.login(meta=meta, dns_labels=["extra"]), SC.FAILED_PRECONDITION,
               "couldn't login peer: setup key doesn't allow extra DNS labels")


@test
def extra_dns_labels_allowed_are_stored():
    dep = Deployment()
    dep.start()
    key = dep.add_setup_key(allow_extra_dns_labels=True)
    a = dep.agent()
    resp = a.login(setup_key=key, meta=build_meta("labelled"), dns_labels=["web", "api"])
    check_address(dep, resp)
    rows = dep.sql("SELECT extra_dns_labels, allow_extra_dns_labels FROM peers WHERE key = %s", (a.pub_b64,))
    assert sorted(rows[0][0]) == ["api", "web"] and rows[0][1] is True, rows
    # a later login with labels is fine for this peer
    a.login(meta=build_meta("labelled"), dns_labels=["web"])


@test
def logout_unknown_peer_is_not_found():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    try:
        a.logout()
        raise AssertionError("Logout of an unknown key succeeded")
    except RpcFailed as e:
        assert e.code == SC.NOT_FOUND, e


@test
def logout_deletes_the_peer():
    """Logout without a stream: the peer is deleted (event 5
    user.peer.delete, initiator "sys" for a setup-key peer), its address is
    free, and it is unknown afterwards."""
    dep = Deployment()
    dep.start()
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("bye"))
    pid = dep.peers()[a.pub_b64]["id"]
    assert a.logout() == pb.Empty()
    assert a.pub_b64 not in dep.peers(), "Logout deletes the peer"
    assert dep.sql("SELECT count(*) FROM group_peers WHERE peer_id = %s", (pid,))[0][0] == 0
    ev = dep.sql("SELECT initiator_id FROM events WHERE activity = 5 AND target_id = %s", (pid,))
    assert len(ev) == 1 and ev[0][0] == "sys", "one user.peer.delete event by \"sys\" expected: %r" % ev
    expect_rpc(lambda: a.login(meta=build_meta("bye")), SC.PERMISSION_DENIED, MSG_NO_AUTH)
    expect_rpc(a.logout, SC.NOT_FOUND)
    # the same key can register again
    check_address(dep, a.login(setup_key=dep.setup_key, meta=build_meta("bye")))


@test
def sync_meta_stores_meta():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("meta-a"))
    assert a.sync_meta(build_meta("meta-a2", netbird_version="0.61.0")) == pb.Empty()
    row = dep.peers()[a.pub_b64]
    assert row["meta_wt_version"] == "0.61.0" and row["meta_hostname"] == "meta-a2", row
    expect_rpc(lambda: a.sync_meta(with_meta=False), SC.FAILED_PRECONDITION,
               "peer system meta has to be provided on sync")
    stranger = dep.agent()
    expect_rpc(lambda: stranger.sync_meta(build_meta("x")), SC.NOT_FOUND)


# ---- envelope errors -------------------------------------------------------------

@test
def bad_wg_pub_key_is_invalid_argument():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    server_key = a.get_server_key()
    body = nbagent.seal(a.login_request(setup_key=dep.setup_key).SerializeToString(), a.key, server_key)
    bad = ["", "not-a-key", base64.b64encode(b"\x01" * 31).decode(), base64.b64encode(b"\x01" * 33).decode(),
           a.pub_b64[:-1], a.pub_b64.rstrip("=") + "!"]
    failures = []
    for k in bad:
        try:
            expect_rpc(lambda: a.call_raw("Login", pb.EncryptedMessage(wgPubKey=k, body=body)),
                       SC.INVALID_ARGUMENT, "is invalid")
        except AssertionError as e:
            failures.append("wgPubKey %r: %s" % (k, e))
    # a low-order (all-zero) key parses but must not open anything
    try:
        expect_rpc(lambda: a.call_raw("Login", pb.EncryptedMessage(wgPubKey=nbagent.b64(b"\x00" * 32), body=body)),
                   SC.INVALID_ARGUMENT)
    except AssertionError as e:
        failures.append("all-zero wgPubKey: %s" % e)
    assert not failures, "\n".join(failures)
    assert dep.peers() == {}


@test
def garbage_body_is_invalid_request():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    other = nbagent.new_private_key()
    server_key = a.get_server_key()
    good = a.login_request(setup_key=dep.setup_key, meta=build_meta("garbage")).SerializeToString()
    bodies = {
        "empty": b"",
        "shorter than a nonce": b"\x00" * 10,
        "nonce only": b"\x00" * 24,
        "random bytes": bytes(range(100)),
        "sealed to another server key": nbagent.seal(good, a.key, other.public_key),
        "sealed by another sender key": nbagent.seal(good, other, server_key),
        "tampered": bytearray(nbagent.seal(good, a.key, server_key)),
        "not a protobuf inside": nbagent.seal(b"\x0a\x05ab", a.key, server_key),
    }
    bodies["tampered"][30] ^= 0x01
    bodies["tampered"] = bytes(bodies["tampered"])
    failures = []
    for what, body in bodies.items():
        try:
            expect_rpc(lambda: a.call_raw("Login", pb.EncryptedMessage(wgPubKey=a.pub_b64, body=body)),
                       SC.INVALID_ARGUMENT, MSG_BAD_REQ)
        except AssertionError as e:
            failures.append("%s: %s" % (what, e))
    # not even an EncryptedMessage on the wire: grpc-go answers Internal
    # ("error unmarshalling request"); InvalidArgument is as good for agents
    try:
        a.call_raw("Login", b"\xff\xff\xff\xff")
        failures.append("unparsable EncryptedMessage: call succeeded")
    except RpcFailed as e:
        if e.code not in (SC.INTERNAL, SC.INVALID_ARGUMENT):
            failures.append("unparsable EncryptedMessage: %s" % e)
    assert not failures, "\n".join(failures)
    assert dep.peers() == {}
    assert dep.setup_key_used(dep.setup_key) == 0
    # the server is still fine
    check_address(dep, a.login(setup_key=dep.setup_key, meta=build_meta("garbage")))


# ---- auth flows and unimplemented RPCs ----------------------------------------------

@test
def device_and_pkce_flows_not_found():
    dep = Deployment()
    dep.start()
    a = dep.agent()                 # the agent asks before it is registered
    expect_rpc(a.device_flow, SC.NOT_FOUND, "no device authorization flow information available")
    expect_rpc(a.pkce_flow, SC.NOT_FOUND, "no pkce authorization flow information available")


@test
def job_is_unimplemented():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("job-peer"))
    expect_rpc(a.job, SC.UNIMPLEMENTED)


# ---- LoginResponse contents -------------------------------------------------------

@test
def login_response_contents():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a = dep.agent()
    hostname = "Laptop_Of.alice.lan"           # label: first label, runs of [^a-z0-9-] -> '-', lower case
    t0 = time.time()
    resp = a.register(dep.setup_key, meta=build_meta(hostname))
    ctx = json_dump(resp)

    ip = check_address(dep, resp)
    row = dep.peers()[a.pub_b64]
    assert row["ip"] == str(ip), (row, ctx)
    assert row["dns_label"] == "laptop-of", row
    assert row["name"] == hostname, row
    assert resp.peerConfig.fqdn == "laptop-of." + DNS_DOMAIN, ctx
    assert resp.peerConfig.dns == "", ctx
    assert not resp.peerConfig.sshConfig.sshEnabled, ctx
    assert resp.peerConfig.RoutingPeerDnsResolutionEnabled, "account default is on: " + ctx
    assert len(resp.Checks) == 0, ctx
    check_session_no_expiry(resp)

    assert resp.HasField("netbirdConfig"), "netbirdConfig is always set on login: " + ctx
    cfg = resp.netbirdConfig
    check_stuns_signal(cfg)
    t = cfg.turns[0]
    # NetBird's Login carries the static TURN credentials from the file
    # (section 3.1 step 6); time-based ones are also usable by agents.
    if (t.user, t.password) != ("static-user", "static-pass"):
        check_turn_time_based(t.user, t.password, t0)
    assert cfg.HasField("relay"), "relay missing: " + ctx
    check_relay(cfg.relay, t0)

    # a plain re-login carries the same contents
    resp2 = a.login(meta=build_meta(hostname))
    assert resp2.peerConfig == resp.peerConfig, (resp.peerConfig, resp2.peerConfig)
    check_session_no_expiry(resp2)
    check_relay(resp2.netbirdConfig.relay)


@test
def login_response_without_netbird_config():
    """No management.json: netbirdConfig is still present, just empty of hosts."""
    dep = Deployment()
    dep.start()
    a = dep.agent()
    resp = a.register(dep.setup_key, meta=build_meta("plain"))
    assert resp.HasField("netbirdConfig"), json_dump(resp)
    assert len(resp.netbirdConfig.stuns) == 0 and len(resp.netbirdConfig.turns) == 0, json_dump(resp)
    assert not resp.netbirdConfig.HasField("relay"), "no relay configured, none may be sent: " + json_dump(resp)
    check_session_no_expiry(resp)


@test
def addresses_are_unique():
    dep = Deployment()
    dep.start()
    agents = fresh_agents(dep, 6)
    results = run_parallel([lambda a=a, i=i: a.login(setup_key=dep.setup_key, meta=build_meta("same-name"))
                            for i, a in enumerate(agents)])
    errs = [r[1] for r in results if r[0] != "ok"]
    assert not errs, errs
    addrs = [r[1].peerConfig.address for r in results]
    assert len(set(addrs)) == 6, addrs
    for _, r in results:
        check_address(dep, r)
    labels = [p["dns_label"] for p in dep.peers().values()]
    assert len(set(labels)) == 6, "dns labels must be unique: %r" % labels
    assert len(set(r[1].peerConfig.fqdn for r in results)) == 6, [r[1].peerConfig.fqdn for r in results]


# ---- Sync ------------------------------------------------------------------------

@test
def sync_unknown_peer_is_permission_denied():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    s = a.sync(meta=build_meta("stranger"))
    try:
        s.next(timeout=15)
        raise AssertionError("Sync of an unregistered key sent a message")
    except RpcFailed as e:
        assert e.code == SC.PERMISSION_DENIED, e
        assert "peer is not registered" in e.details, e


@test
def sync_first_message():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a = dep.agent()
    login = a.register(dep.setup_key, meta=build_meta("first-sync"))
    t0 = time.time()
    stream, first = open_sync(a, meta=build_meta("first-sync"))
    ctx = json_dump(first)
    # config with fresh credentials
    assert first.HasField("netbirdConfig"), "the first Sync message carries netbirdConfig: " + ctx
    cfg = first.netbirdConfig
    check_stuns_signal(cfg)
    check_turn_time_based(cfg.turns[0].user, cfg.turns[0].password, t0)
    check_relay(cfg.relay, t0)
    # peer config and map
    assert first.peerConfig.address == login.peerConfig.address, ctx
    assert first.peerConfig.fqdn == login.peerConfig.fqdn, ctx
    assert first.HasField("NetworkMap"), "full NetworkMap expected: " + ctx
    nm = first.NetworkMap
    assert nm.Serial == dep.network_serial() and nm.Serial >= 1, (nm.Serial, dep.network_serial())
    assert nm.remotePeersIsEmpty and len(nm.remotePeers) == 0, ctx
    assert nm.firewallRulesIsEmpty, "alone in the account: no rules, flag set: " + ctx
    assert nm.routesFirewallRulesIsEmpty, ctx
    assert nm.HasField("DNSConfig") and nm.DNSConfig.ServiceEnable, ctx
    check_session_no_expiry(first)
    # the peer is connected now
    wait_until(lambda: dep.sql("SELECT peer_status_connected FROM peers WHERE key = %s", (a.pub_b64,))[0][0],
               what="peer_status_connected")


@test
def login_and_sync_agree_on_peer_config():
    """NetBird builds both from one toPeerConfig(): the PeerConfig a Login
    returns equals the one in the first Sync message (autoUpdate included,
    account default version "disabled")."""
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a = dep.agent()
    login = a.register(dep.setup_key, meta=build_meta("same-config"))
    stream, first = open_sync(a, meta=build_meta("same-config"))
    assert first.peerConfig.HasField("autoUpdate"), json_dump(first)
    assert login.peerConfig == first.peerConfig, "Login: %s\nSync: %s" % (
        json_dump(login.peerConfig), json_dump(first.peerConfig))


@test
def sync_push_when_peer_registers():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a, b = dep.agent(), dep.agent()
    ra = a.register(dep.setup_key, meta=build_meta("peer-a"))
    sa, first = open_sync(a, meta=build_meta("peer-a"))
    s0 = first.NetworkMap.Serial
    rb = b.register(dep.setup_key, meta=build_meta("peer-b"))
    b_ip = str(split_address(rb)[0])
    push = sa.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    for m in sa.received:
        check_map_invariants(m)
    ctx = json_dump(push)
    assert not push.HasField("netbirdConfig"), "a fan-out push must leave netbirdConfig unset: " + ctx
    assert push.NetworkMap.Serial > s0, "serial must grow with a new peer (%d -> %d)" % (s0, push.NetworkMap.Serial)
    rp = remote_keys(push)[b.pub_b64]
    assert list(rp.allowedIps) == [b_ip + "/32"], ctx
    assert rp.fqdn == "peer-b." + DNS_DOMAIN, ctx
    assert rp.agentVersion == "0.60.0", ctx
    assert not push.NetworkMap.remotePeersIsEmpty and not push.NetworkMap.firewallRulesIsEmpty, ctx
    dirs = {(r.PeerIP, r.Direction) for r in push.NetworkMap.FirewallRules}
    assert {(b_ip, pb.IN), (b_ip, pb.OUT)} <= dirs, "default policy is bidirectional: " + ctx
    rule_ids = {r[0] for r in dep.sql("SELECT id FROM policy_rules WHERE account_id = %s", (dep.account_id,))}
    for r in push.NetworkMap.FirewallRules:
        assert r.Protocol == pb.ALL and r.Action == pb.ACCEPT, ctx
        assert r.PolicyID.decode() in rule_ids, "PolicyID carries the policy *rule* id: " + ctx
        # capability 1 (source prefixes): 5 bytes each, IPv4 + prefix length
        assert all(len(p) == 5 for p in r.sourcePrefixes), ctx
    # the peer zone: one A record per peer in the map, including ourselves
    zones = {z.Domain: z for z in push.NetworkMap.DNSConfig.CustomZones}
    assert DNS_DOMAIN + "." in zones, "peer zone missing: " + ctx
    recs = {(r.Name, r.Type, r.RData) for r in zones[DNS_DOMAIN + "."].Records}
    a_ip = str(split_address(ra)[0])
    assert {("peer-a." + DNS_DOMAIN, 1, a_ip), ("peer-b." + DNS_DOMAIN, 1, b_ip)} <= recs, ctx
    check_session_no_expiry(push)
    # b's own first map sees a
    sb, fb = open_sync(b, meta=build_meta("peer-b"))
    assert a.pub_b64 in remote_keys(fb), json_dump(fb)
    assert fb.NetworkMap.Serial >= push.NetworkMap.Serial
    assert str(split_address(ra)[0]) + "/32" in remote_keys(fb)[a.pub_b64].allowedIps, json_dump(fb)


@test
def sync_replaced_stream_ends_cleanly():
    """A second Sync of the same peer closes the first with a clean EOF
    (status OK); the second keeps receiving pushes."""
    dep = Deployment()
    dep.start()
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("twice"))
    s1, _ = open_sync(a)
    s2, _ = open_sync(a)
    end, _ = s1.wait_end(timeout=10)
    assert isinstance(end, StreamEnded), "the replaced stream must end with OK, got %r" % end
    # s2 is alive: a new peer is pushed to it
    c = dep.agent()
    c.register(dep.setup_key, meta=build_meta("third"))
    s2.wait_for(lambda m: c.pub_b64 in remote_keys(m), timeout=10)
    for m in s2.received:
        check_map_invariants(m)
    assert s2.ended is None


@test
def sync_meta_pushes_to_other_peers():
    """SyncMeta always fans out (section 3.6): a version change of A reaches
    B's stream as A's agentVersion."""
    dep = Deployment()
    dep.start()
    a, b = dep.agent(), dep.agent()
    a.register(dep.setup_key, meta=build_meta("meta-a"))
    b.register(dep.setup_key, meta=build_meta("meta-b"))
    sb, fb = open_sync(b, meta=build_meta("meta-b"))
    assert a.pub_b64 in remote_keys(fb), "B's first map must list A: " + json_dump(fb)
    assert remote_keys(fb)[a.pub_b64].agentVersion == "0.60.0", json_dump(fb)
    a.sync_meta(build_meta("meta-a", netbird_version="0.61.0"))
    push = sb.wait_for(lambda m: a.pub_b64 in remote_keys(m) and
                       remote_keys(m)[a.pub_b64].agentVersion == "0.61.0", timeout=10)
    assert not push.HasField("netbirdConfig"), json_dump(push)
    for m in sb.received:
        check_map_invariants(m)


@test
def logout_deletes_peer_and_ends_stream():
    dep = Deployment()
    dep.start()
    a, b = dep.agent(), dep.agent()
    a.register(dep.setup_key, meta=build_meta("leaver"))
    b.register(dep.setup_key, meta=build_meta("stayer"))
    sa, fa = open_sync(a)
    sb, fb = open_sync(b)
    assert a.pub_b64 in remote_keys(fb), "B's first map must list A: " + json_dump(fb)
    a.logout()
    end, msgs = sa.wait_end(timeout=10)
    assert isinstance(end, StreamEnded), "the logged-out peer's stream must end cleanly, got %r" % end
    assert msgs, "the deleted peer gets one last (empty) map before its stream ends"
    last = msgs[-1]
    assert last.NetworkMap.remotePeersIsEmpty and len(last.NetworkMap.remotePeers) == 0, json_dump(last)
    assert last.NetworkMap.firewallRulesIsEmpty, json_dump(last)
    assert last.NetworkMap.DNSConfig.ForwarderPort in (22054, 5353), json_dump(last)
    assert not last.HasField("sessionExpiresAt"), "the deleted-peer map carries no session info: " + json_dump(last)
    assert a.pub_b64 not in dep.peers(), "Logout deletes the peer"
    sb.wait_for(lambda m: m.HasField("NetworkMap") and a.pub_b64 not in remote_keys(m), timeout=10)
    expect_rpc(lambda: a.login(meta=build_meta("leaver")), SC.PERMISSION_DENIED, MSG_NO_AUTH)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
