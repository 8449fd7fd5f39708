"""Sync streams of netbird-mgmt (services/management/agent/mgmt-sync.c): the
session token from the database clock and the fenced connect/disconnect,
the stream registry (a newer stream replaces an older one, an older
stream's end never touches the newer one), a stale open writes nothing,
fan-out pushes, a slow consumer (coalesced to the newest map), a stream
held across client keepalive pings, the periodic serial check (changes
committed elsewhere), Logout's last map, the concurrency cap and SIGTERM
with streams open.

Agents are tests/agent/nbagent.py; deployments are tests/agent/fixture.py
(a database per test, bootstrap, servers on loopback).
"""

import base64
import hashlib
import hmac
import ipaddress
import os
import queue
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import grpc  # noqa: E402

import fixture  # noqa: E402
import svc  # noqa: E402
from fixture import Deployment, wait_until, json_dump  # noqa: E402
import nbagent  # noqa: E402
from nbagent import RpcFailed, StreamEnded, build_meta, pb, remote_keys  # noqa: E402
from svc import test  # noqa: E402

SC = grpc.StatusCode
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


# ---- helpers -------------------------------------------------------------------

def db_now_ns(dep):
    return dep.sql("SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint")[0][0]


def status(dep, agent):
    """(connected, session token) of the agent's peer row, or None when gone."""
    rows = dep.sql("SELECT peer_status_connected, peer_status_session_started_at FROM peers WHERE key = %s",
                   (agent.pub_b64,))
    return tuple(rows[0]) if rows else None


def open_sync(agent, meta=None):
    s = agent.sync(meta=meta)
    first = s.next(timeout=15)
    return s, first


def registered(dep, name, srv=None, **kw):
    a = dep.agent(srv, **kw)
    a.register(dep.setup_key, meta=build_meta(name))
    return a


def binary_uses_asan():
    return binary_links("libasan")


def binary_links(lib):
    try:
        out = subprocess.run(["ldd", svc.BINARY], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return False
    return lib in out


# ---- tests ---------------------------------------------------------------------------

@test
def first_message_and_db_token():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a = dep.agent()
    login = a.register(dep.setup_key, meta=build_meta("first"))
    before = db_now_ns(dep)
    s, first = open_sync(a, meta=build_meta("first"))
    after = db_now_ns(dep)
    ctx = json_dump(first)
    assert first.HasField("netbirdConfig") and len(first.netbirdConfig.stuns) == 2, ctx
    assert first.netbirdConfig.HasField("relay") and first.netbirdConfig.relay.tokenSignature, ctx
    assert first.NetworkMap.Serial == dep.network_serial(), (first.NetworkMap.Serial, dep.network_serial())
    assert first.peerConfig.address == login.peerConfig.address, ctx
    assert first.NetworkMap.peerConfig.address == login.peerConfig.address, ctx
    assert first.HasField("sessionExpiresAt"), ctx
    connected, token = status(dep, a)
    assert connected, "peer must be connected while its stream is open"
    # The token is the database clock at open, not this process's clock.
    assert before <= token <= after, (before, token, after)
    s.cancel()
    wait_until(lambda: status(dep, a) == (False, 0), what="disconnected with token 0")


@test
def push_on_new_peer_without_config():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    dep.start()
    a = registered(dep, "pa")
    s, first = open_sync(a)
    b = registered(dep, "pb")
    push = s.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    assert push.NetworkMap.Serial > first.NetworkMap.Serial, (first.NetworkMap.Serial, push.NetworkMap.Serial)
    assert not push.HasField("netbirdConfig"), "fan-out pushes leave netbirdConfig unset: " + json_dump(push)
    assert not push.NetworkMap.remotePeersIsEmpty, json_dump(push)
    serials = [m.NetworkMap.Serial for m in s.received]
    assert serials == sorted(serials), "serials went backwards: %r" % serials


@test
def burst_of_changes_coalesces_to_newest():
    """Many registrations at once: the open stream ends up at the newest
    serial with every peer, and its serials never go backwards."""
    import threading
    dep = Deployment()
    dep.start()
    a = registered(dep, "watcher")
    s, first = open_sync(a)
    others = [dep.agent() for _ in range(8)]
    errors = []

    def reg(x, i):
        try:
            x.register(dep.setup_key, meta=build_meta("burst-%d" % i))
        except Exception as e:          # reported below
            errors.append(e)
    threads = [threading.Thread(target=reg, args=(x, i)) for i, x in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    want = {x.pub_b64 for x in others}
    final = dep.network_serial()
    last = s.wait_for(lambda m: m.NetworkMap.Serial == final and want <= remote_keys(m), timeout=15)
    assert not last.HasField("netbirdConfig"), json_dump(last)
    serials = [m.NetworkMap.Serial for m in s.received]
    assert serials == sorted(serials), "serials went backwards: %r" % serials
    # Coalesced: fewer pushes than changes is allowed, never more than one
    # per change plus the first map.
    assert len(serials) <= 1 + len(others), serials


def keepalive_options(interval_ms):
    """Client keepalive as a NetBird agent has it (pings with or without
    calls, no limit on pings without data), at interval_ms."""
    return [("grpc.keepalive_time_ms", interval_ms), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


@test
def stream_held_across_keepalive_pings():
    """Agents ping every 30 s while a Sync stream is open; the server
    permits pings down to 5 s apart (docs/protocol.md, "Transport"). A
    stream pinged every 6 s stays open across several pings and still gets
    a push. The control: pings every second are too many, and the server
    ends that connection, which shows the pings really reach it."""
    dep = Deployment()
    dep.start()
    a = registered(dep, "pinger", options=keepalive_options(6000))
    s, first = open_sync(a)
    token = status(dep, a)[1]
    try:
        msg = s.next(timeout=20)            # ~3 pings; nothing may arrive
    except queue.Empty:
        msg = None
    except (StreamEnded, RpcFailed) as e:
        raise AssertionError("the pinged stream ended: %r" % (e,))
    assert msg is None, "a message without a change: %s" % json_dump(msg)
    assert status(dep, a) == (True, token), status(dep, a)
    b = registered(dep, "after-pings")
    push = s.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=10)
    assert push.NetworkMap.Serial > first.NetworkMap.Serial
    s.cancel()

    c = registered(dep, "too-eager", options=keepalive_options(1000))
    s2, _ = open_sync(c)
    end, _ = s2.wait_end(timeout=20)
    assert isinstance(end, RpcFailed) and end.code == SC.UNAVAILABLE and "ping" in end.details.lower(), end


def add_bulk_peers(dep, n):
    """n peers straight into the database, in the All group (so in every
    map through the Default policy), then a serial bump: maps of about
    100 bytes per peer."""
    net = dep.network
    first = int(net.network_address) + 40000
    dep.sql("INSERT INTO peers (id, account_id, key, ip, dns_label, name)"
            " SELECT 'bulk' || i, %s, encode(sha256(('bulk-' || i)::bytea), 'base64'),"
            " %s::inet + i, 'bulk-' || i, 'bulk-' || i FROM generate_series(1, %s) i",
            (dep.account_id, str(ipaddress.ip_address(first)), n))
    dep.sql("INSERT INTO group_peers (account_id, group_id, peer_id)"
            " SELECT %s, g.id, 'bulk' || i FROM groups g, generate_series(1, %s) i"
            " WHERE g.account_id = %s AND g.name = 'All'", (dep.account_id, n, dep.account_id))
    dep.sql("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s", (dep.account_id,))


@test
def slow_consumer_gets_the_newest_map():
    """A client that stops reading while several changes are pushed gets,
    once it reads again, the newest map last, with serials never going
    backwards, and far fewer maps than changes: the server keeps one map in
    flight and one pending, replacing the pending one (mgmt-sync.c), not a
    queue that grows with every change. The client's HTTP/2 window is kept
    small (no BDP growth) so maps of ~100 kB cannot all sit in its buffers."""
    dep = Deployment()
    srv = dep.start("--log-level", "debug", "--serial-check-interval", "0s")
    add_bulk_peers(dep, 800)
    opts = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
    slow = registered(dep, "slow", options=opts)
    server_key = slow.get_server_key()
    env = slow.envelope(pb.SyncRequest(meta=build_meta("slow")), server_key)
    call = slow.channel.unary_stream(nbagent.SERVICE + "Sync")(env.SerializeToString(), timeout=120)
    raw = next(call)                        # the first map, then we stop reading
    first = nbagent.parse(pb.SyncResponse, nbagent.open_box(
        nbagent.parse(pb.EncryptedMessage, raw).body, slow.key, server_key))
    assert len(first.NetworkMap.remotePeers) >= 800, len(first.NetworkMap.remotePeers)
    size = len(raw)
    assert size > 64 * 1024, "maps too small to fill the client's window: %d bytes" % size

    changes = 8
    newcomers = []
    for i in range(changes):
        # One fan-out per change: waiting for each keeps a slow machine
        # from folding them all into one fan-out, which would leave the
        # stream's own coalescing untested.
        newcomers.append(registered(dep, "change-%d" % i))
        serial = dep.network_serial()
        srv.wait_log(lambda o, serial=serial: o.get("msg") == "fan-out done"
                     and int(o.get("serial", 0)) >= serial, timeout=30)
    final = dep.network_serial()
    assert final >= first.NetworkMap.Serial + changes, (first.NetworkMap.Serial, final)
    # Every change was fanned out to the stream while it was not read.
    srv.wait_log(lambda o: o.get("msg") == "fan-out done" and int(o.get("serial", 0)) == final, timeout=30)
    fanouts = [o for o in srv.logs() if o.get("msg") == "fan-out done" and
               int(o["serial"]) > first.NetworkMap.Serial and int(o["maps"]) > 0]
    assert len(fanouts) >= 3, "too few fan-outs to test coalescing: %r" % fanouts

    s = nbagent.SyncStream(slow, call, server_key)     # read again
    last = s.wait_for(lambda m: m.NetworkMap.Serial == final, timeout=20)
    want = {x.pub_b64 for x in newcomers}
    assert want <= remote_keys(last), "the newest map lacks a newcomer"
    serials = [m.NetworkMap.Serial for m in s.received]
    print("# slow consumer: %d fan-outs while not reading, then %d map(s) of ~%d bytes: serials %r"
          % (len(fanouts), len(serials), size, serials), flush=True)
    assert serials == sorted(serials), "serials went backwards: %r" % serials
    assert len(serials) <= 3, "a queue, not coalescing: %d maps for %d fan-outs: %r" % (
        len(serials), len(fanouts), serials)
    try:
        extra = s.next(timeout=2)
    except queue.Empty:
        extra = None
    assert extra is None, "a map after the newest: %s" % json_dump(extra)
    s.cancel()


@test
def newer_stream_replaces_older():
    dep = Deployment()
    dep.start()
    a = registered(dep, "twice")
    s1, _ = open_sync(a)
    t1 = status(dep, a)[1]
    s2, _ = open_sync(a)
    t2 = status(dep, a)[1]
    assert t2 > t1, (t1, t2)
    end, _ = s1.wait_end(timeout=10)
    assert isinstance(end, StreamEnded), "the replaced stream ends with OK, got %r" % end
    # The old stream is gone and its client cancels late: nothing changes.
    s1.cancel()
    time.sleep(0.5)
    assert status(dep, a) == (True, t2), status(dep, a)
    # The new stream keeps getting pushes.
    c = registered(dep, "third")
    s2.wait_for(lambda m: c.pub_b64 in remote_keys(m), timeout=10)
    assert s2.ended is None
    assert status(dep, a) == (True, t2), status(dep, a)
    s2.cancel()
    wait_until(lambda: status(dep, a) == (False, 0), what="disconnected with token 0")


@test
def older_stream_on_other_replica_never_disconnects_newer():
    """Two replicas, one database: stream A on replica 1, then stream B of
    the same peer on replica 2. A's end (its client cancels) must leave the
    row to B; B's end disconnects."""
    dep = Deployment()
    r1 = dep.start()
    r2 = dep.start()
    a1 = registered(dep, "roamer", r1)
    a2 = dep.agent(r2, private_key=a1.key)
    s1, _ = open_sync(a1)
    t1 = status(dep, a1)[1]
    s2, _ = open_sync(a2)
    t2 = status(dep, a1)[1]
    assert t2 > t1, (t1, t2)
    s1.cancel()
    time.sleep(1.0)
    assert status(dep, a1) == (True, t2), "the old stream's end disconnected the new session: %r" % (
        status(dep, a1),)
    s2.cancel()
    wait_until(lambda: status(dep, a1) == (False, 0), what="disconnected by the owning stream")


@test
def token_above_stored_token():
    """A stored token ahead of the database clock (a reconnect in the same
    microsecond looks like this) still gives a strictly larger token."""
    dep = Deployment()
    dep.start()
    a = registered(dep, "ahead")
    far = db_now_ns(dep) + 3600 * 10**9
    dep.sql("UPDATE peers SET peer_status_session_started_at = %s WHERE key = %s", (far, a.pub_b64))
    s, _ = open_sync(a)
    assert status(dep, a) == (True, far + 1), status(dep, a)
    s.cancel()
    wait_until(lambda: status(dep, a) == (False, 0), what="disconnected")


INT64_MAX = 2**63 - 1


def conn_ip_and_host(dep, agent):
    rows = dep.sql("SELECT host(location_connection_ip), meta_hostname FROM peers WHERE key = %s",
                   (agent.pub_b64,))
    return tuple(rows[0])


@test
def stale_connect_has_no_side_effects():
    """A Sync whose fenced connect cannot land (the stored token is the
    largest there is) ends cleanly without a map and writes nothing: not
    the connection address, not the meta. Once the peer is free, a landed
    connect from another address stores both."""
    dep = Deployment()
    dep.start()
    a = registered(dep, "before")
    dep.sql("UPDATE peers SET location_connection_ip = '10.9.9.9', peer_status_session_started_at = %s"
            " WHERE key = %s", (INT64_MAX, a.pub_b64))
    s = a.sync(meta=build_meta("after"))
    end, msgs = s.wait_end(timeout=15)
    assert isinstance(end, StreamEnded), "a stale open must end with OK: %r" % (end,)
    assert msgs == [], "a stale open sent %d map(s)" % len(msgs)
    assert conn_ip_and_host(dep, a) == ("10.9.9.9", "before"), conn_ip_and_host(dep, a)
    assert status(dep, a) == (False, INT64_MAX), status(dep, a)

    dep.sql("UPDATE peers SET peer_status_session_started_at = 0 WHERE key = %s", (a.pub_b64,))
    s, _ = open_sync(a, meta=build_meta("after"))
    assert conn_ip_and_host(dep, a) == ("127.0.0.1", "after"), conn_ip_and_host(dep, a)
    assert status(dep, a)[0], "the landed open must connect the peer"
    s.cancel()
    wait_until(lambda: status(dep, a) == (False, 0), what="disconnected")


@test
def serial_check_pushes_changes_made_elsewhere():
    """A change committed outside this process (here: an operator disables
    the Default policy in psql and bumps network_serial) reaches the open
    stream through the periodic serial check."""
    dep = Deployment()
    dep.start("--serial-check-interval", "1s")
    a = registered(dep, "watcher")
    b = registered(dep, "other")
    s, first = open_sync(a)
    assert b.pub_b64 in remote_keys(first), json_dump(first)
    serial = dep.sql("WITH d AS (UPDATE policies SET enabled = false WHERE account_id = %s AND name = 'Default')"
                     " UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s"
                     " RETURNING network_serial", (dep.account_id, dep.account_id))[0][0]
    push = s.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    assert push.NetworkMap.Serial == serial, (push.NetworkMap.Serial, serial)
    assert push.NetworkMap.remotePeersIsEmpty and not push.NetworkMap.remotePeers, json_dump(push)
    assert not push.HasField("netbirdConfig"), json_dump(push)
    # Nothing moved since: no further push.
    time.sleep(2.5)
    assert s.q.empty(), "pushed again without a change"
    s.cancel()


@test
def serial_check_off():
    """--serial-check-interval 0s: a serial bumped elsewhere is not noticed."""
    dep = Deployment()
    dep.start(env={"NB_MGMT_SERIAL_CHECK_INTERVAL": "0s"})
    a = registered(dep, "quiet")
    s, first = open_sync(a)
    dep.sql("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s", (dep.account_id,))
    time.sleep(2.5)
    assert s.q.empty(), "pushed although the serial check is off"
    s.cancel()


@test
def expired_sso_login_goes_offline_for_others():
    """--login-expiry-check-interval: a peer whose SSO login expired (made
    so in SQL) is marked once, event 50 is written, and the other peers'
    streams get a map with it in offlinePeers; its own next open is
    refused."""
    dep = Deployment()
    dep.start("--login-expiry-check-interval", "1s", "--serial-check-interval", "0s")
    a = registered(dep, "keeper")
    b = registered(dep, "expiring")
    sa, fa = open_sync(a)
    sb, fb = open_sync(b)
    assert b.pub_b64 in remote_keys(fa) or b.pub_b64 in remote_keys(sa.wait_for(
        lambda m: b.pub_b64 in remote_keys(m), timeout=10))
    before = dep.network_serial()
    owner = dep.sql("SELECT id FROM users WHERE account_id = %s AND role = 'owner'", (dep.account_id,))[0][0]
    dep.sql("UPDATE peers SET user_id = %s, login_expiration_enabled = true,"
            " last_login = now() - interval '25 hours' WHERE key = %s", (owner, b.pub_b64))
    push = sa.wait_for(lambda m: b.pub_b64 in {p.wgPubKey for p in m.NetworkMap.offlinePeers}, timeout=10)
    assert b.pub_b64 not in remote_keys(push), json_dump(push)
    assert push.NetworkMap.Serial == before + 1, (push.NetworkMap.Serial, before)
    assert dep.network_serial() == before + 1
    rows = dep.sql("SELECT initiator_id, meta->>'reason' FROM events WHERE activity = 50")
    assert rows == [(owner, "session expiration")], rows  # initiator: the peer's user, as NetBird
    # Later ticks find nothing more to do.
    time.sleep(2.5)
    assert dep.network_serial() == before + 1
    assert len(dep.sql("SELECT 1 FROM events WHERE activity = 50")) == 1
    # Its own stream was ended by the server (status OK), not by us, and
    # its end disconnected it with its own token.
    end, _ = sb.wait_end(timeout=10)
    assert isinstance(end, StreamEnded), end
    wait_until(lambda: status(dep, b) == (False, 0), what="b disconnected")
    s = b.sync(meta=build_meta("expiring"))
    try:
        s.next(timeout=15)
        raise AssertionError("a message for an expired peer")
    except RpcFailed as e:
        assert e.code == SC.PERMISSION_DENIED, e
        assert e.details == "peer login has expired, please log in once more", e
    sa.cancel()


def short_ttl_config(time_based=True, relay=True):
    """NETBIRD_CONFIG with 4 s credential TTLs: refreshes are due at 3 s."""
    import copy
    cfg = copy.deepcopy(fixture.NETBIRD_CONFIG)
    cfg["TURNConfig"]["TimeBasedCredentials"] = time_based
    cfg["TURNConfig"]["CredentialsTTL"] = "4s"
    if relay:
        cfg["Relay"]["CredentialsTTL"] = "4s"
    else:
        del cfg["Relay"]
    return cfg


def check_fresh_credentials(cfg, now):
    """turns carry time-based credentials expiring ~4 s after now, relay a
    token as fresh; both HMACs recomputed (netbird-protocol.md 1.5)."""
    assert len(cfg.turns) == 1, json_dump(cfg)
    for t in cfg.turns:
        assert t.hostConfig.uri == "turn:turn.example.test:3478", t
        assert now + 4 - 2 <= int(t.user) <= now + 4 + 2, (t.user, now)
        mac = hmac.new(fixture.TURN_SECRET.encode(), t.user.encode(), hashlib.sha1).digest()
        assert t.password == base64.b64encode(mac).decode(), t
    r = cfg.relay
    assert list(r.urls) == ["rels://relay.example.test:443", "rel://relay2.example.test:80"], r
    assert now + 4 - 2 <= int(r.tokenPayload) <= now + 4 + 2, (r.tokenPayload, now)
    key = hashlib.sha256(fixture.RELAY_SECRET.encode()).digest()
    mac = hmac.new(key, r.tokenPayload.encode(), hashlib.sha256).digest()
    assert r.tokenSignature == base64.b64encode(mac).decode(), r


@test
def credentials_refreshed_at_three_quarters_of_ttl():
    """Time-based TURN credentials and relay tokens with a 4 s TTL: the open
    stream gets, 3 s after its first message, a message with only
    netbirdConfig (fresh turns and relay, no NetworkMap), and again 3 s
    later; a map pushed meanwhile still arrives."""
    dep = Deployment(config=short_ttl_config())
    dep.start()
    a = registered(dep, "refreshed")
    s, first = open_sync(a)
    t0 = time.monotonic()
    check_fresh_credentials(first.netbirdConfig, int(time.time()))
    ref = s.next(timeout=6)
    took = time.monotonic() - t0
    ctx = json_dump(ref)
    assert 2.0 <= took <= 5.5, (took, ctx)
    assert ref.HasField("netbirdConfig"), ctx
    assert not ref.HasField("NetworkMap") and not ref.HasField("peerConfig"), ctx
    assert not ref.HasField("sessionExpiresAt"), ctx
    assert not ref.netbirdConfig.stuns and not ref.netbirdConfig.HasField("signal"), ctx
    check_fresh_credentials(ref.netbirdConfig, int(time.time()))
    assert int(ref.netbirdConfig.turns[0].user) > int(first.netbirdConfig.turns[0].user), ctx
    assert int(ref.netbirdConfig.relay.tokenPayload) > int(first.netbirdConfig.relay.tokenPayload), ctx
    # A map pushed now is not lost behind the refreshes, nor they behind it.
    b = registered(dep, "newcomer")
    push = s.wait_for(lambda m: m.HasField("NetworkMap") and b.pub_b64 in remote_keys(m), timeout=10)
    assert not push.HasField("netbirdConfig"), json_dump(push)
    ref2 = s.wait_for(lambda m: m.HasField("netbirdConfig"), timeout=6)
    assert not ref2.HasField("NetworkMap"), json_dump(ref2)
    check_fresh_credentials(ref2.netbirdConfig, int(time.time()))
    assert int(ref2.netbirdConfig.relay.tokenPayload) > int(ref.netbirdConfig.relay.tokenPayload)
    s.cancel()


@test
def static_turn_without_relay_is_not_refreshed():
    """Static TURN credentials and no relay: nothing expires, no refresh."""
    dep = Deployment(config=short_ttl_config(time_based=False, relay=False))
    dep.start()
    a = registered(dep, "static")
    s, first = open_sync(a)
    ctx = json_dump(first)
    assert first.netbirdConfig.turns[0].user == "static-user", ctx
    assert not first.netbirdConfig.HasField("relay"), ctx
    time.sleep(5)
    assert s.q.empty(), "a refresh although no credential expires"
    s.cancel()


@test
def logout_sends_last_map_and_ends():
    dep = Deployment()
    dep.start()
    a = registered(dep, "leaver")
    b = registered(dep, "stayer")
    sa, fa = open_sync(a)
    sb, fb = open_sync(b)
    assert a.pub_b64 in remote_keys(fb), json_dump(fb)
    a.logout()
    end, msgs = sa.wait_end(timeout=10)
    assert isinstance(end, StreamEnded), end
    assert msgs, "a last map before the end"
    last = msgs[-1].NetworkMap
    assert last.remotePeersIsEmpty and last.firewallRulesIsEmpty and not last.remotePeers, json_dump(msgs[-1])
    assert last.Serial >= fa.NetworkMap.Serial
    assert status(dep, a) is None, "the peer row is deleted"
    sb.wait_for(lambda m: a.pub_b64 not in remote_keys(m), timeout=10)


@test
def unknown_peer_is_permission_denied():
    dep = Deployment()
    dep.start()
    a = dep.agent()
    s = a.sync(meta=build_meta("stranger"))
    try:
        s.next(timeout=15)
        raise AssertionError("a message for an unknown peer")
    except RpcFailed as e:
        assert e.code == SC.PERMISSION_DENIED and e.details == "peer is not registered", e


@test
def concurrency_cap():
    dep = Deployment()
    dep.start(env={"NB_MAX_CONCURRENT_SYNCS": "0"})
    a = registered(dep, "capped")
    s = a.sync()
    try:
        s.next(timeout=15)
        raise AssertionError("Sync opened above the cap")
    except RpcFailed as e:
        assert e.code == SC.RESOURCE_EXHAUSTED, e
        assert e.details == "too many concurrent sync requests, please try again later", e
    assert status(dep, a) == (False, 0)


@test
def sigterm_ends_streams_and_disconnects():
    dep = Deployment()
    srv = dep.start()
    agents = [registered(dep, "term-%d" % i) for i in range(3)]
    streams = [open_sync(x)[0] for x in agents]
    for x in agents:
        assert status(dep, x)[0]
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    for s in streams:
        end, _ = s.wait_end(timeout=10)
        assert isinstance(end, RpcFailed) and end.code == SC.UNAVAILABLE, end
    rc = srv.wait(15)
    assert rc == 0, rc
    assert time.monotonic() - t0 < 5, "streams should not wait for the grace period"
    for x in agents:
        assert status(dep, x) == (False, 0), status(dep, x)
    svc.check_sanitizer_clean(srv.stderr())


@test
def replica_clock_ahead_does_not_matter():
    """A replica whose clock is 5 s ahead (faketime) still takes its tokens
    from the database: a stream opened on it first loses to a stream opened
    later on a replica with the right clock."""
    lib = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
    if lib is None:
        raise svc.Skip("libfaketime not installed (Debian package faketime)")
    if binary_uses_asan():
        raise svc.Skip("libfaketime's LD_PRELOAD does not mix with ASan")
    if binary_links("libtsan"):
        # libfaketime replaces pthread_cond_timedwait for monotonic
        # condition variables: TSan no longer sees the wait release its
        # mutex and reports races under that mutex (docs/testing.md).
        raise svc.Skip("libfaketime's LD_PRELOAD hides condition-variable waits from TSan")
    dep = Deployment()
    env = dep.env()
    # The library itself (not the faketime wrapper, which does not pass
    # SIGTERM on), so the server is our child and exits 0.
    env.update({"LD_PRELOAD": lib, "FAKETIME": "+5s", "FAKETIME_DONT_RESET": "1"})
    fast = svc.Server(["--listen-address", "127.0.0.1", "--port", "0", "--http-port", "0",
                       "--config=" + dep.config_path, "--shutdown-timeout", "2s"], env=env)
    fast.grpc_target = "127.0.0.1:%d" % fast.grpc_port
    svc.defer(fixture.stop_server, fast)
    normal = dep.start()
    a_fast = registered(dep, "skewed", fast)
    a_norm = dep.agent(normal, private_key=a_fast.key)
    s1, _ = open_sync(a_fast)
    t1 = status(dep, a_fast)[1]
    assert t1 <= db_now_ns(dep), "token from the replica's clock (5 s ahead), not the database's"
    s2, _ = open_sync(a_norm)
    t2 = status(dep, a_fast)[1]
    assert t2 > t1, (t1, t2)
    s1.cancel()
    time.sleep(1.0)
    assert status(dep, a_fast) == (True, t2), status(dep, a_fast)
    s2.cancel()
    wait_until(lambda: status(dep, a_fast) == (False, 0), what="disconnected")


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
