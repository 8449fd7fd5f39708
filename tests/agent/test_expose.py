"""CreateExpose, RenewExpose and StopExpose end to end: an agent speaking
NetBird's proto (nbagent.py) exposes a local port as an ephemeral
reverse-proxy service, renews it, stops it; other peers cannot touch it;
bad requests get NetBird's status and text and write nothing; an expired
one is swept by whichever replica looks (each row once) with its REMOVED
change-log row; a deleted peer's exposes leave REMOVED rows too.

A proxy cluster is "connected" by writing its proxies row (what the
ProxyService does when a proxy connects). Expected texts are NetBird's
(expose_service.go, service/manager/manager.go, service.go)."""

import json

from fixture import Deployment, wait_until
from nbagent import RpcFailed, build_meta, pb
import grpc
import svc

test = svc.test
SC = grpc.StatusCode
CLUSTER = "proxy.example.test"
TCP = 2


def expect_rpc(fn, code, details=None):
    try:
        got = fn()
    except RpcFailed as e:
        assert e.code == code, "expected %s, got %s %r" % (code.name, e.code, e.details)
        if details is not None:
            assert e.details == details, "expected details %r, got %r" % (details, e.details)
        return e
    raise AssertionError("expected %s, call succeeded: %r" % (code.name, got))


def connect_proxy(dep, cluster=CLUSTER, account_id=None, custom_ports=None):
    dep.sql("INSERT INTO proxies (id, session_id, cluster_address, account_id, status, supports_custom_ports)"
            " VALUES (%s, 's1', %s, %s, 'connected', %s)",
            ("px-" + cluster, cluster, account_id, custom_ports))


def all_group(dep):
    return dep.sql("SELECT id FROM groups WHERE account_id = %s AND name = 'All'", (dep.account_id,))[0][0]


def enable_expose(dep, groups=None):
    dep.sql("UPDATE accounts SET settings_peer_expose_enabled = true, settings_peer_expose_groups = %s"
            " WHERE id = %s", (groups if groups is not None else [all_group(dep)], dep.account_id))


def setup(*extra):
    dep = Deployment()
    srv = dep.start(*extra)
    connect_proxy(dep)
    enable_expose(dep)
    return dep, srv


def peer(dep, srv, name="exposer"):
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta(name))
    a.peer_id = dep.peers()[a.pub_b64]["id"]
    return a


def service(dep, domain):
    rows = dep.sql("SELECT id, source, source_peer, mode, listen_port, port_auto_assigned, proxy_cluster,"
                   " targets, auth, expires_at > now() + interval '60 seconds', name"
                   " FROM services WHERE domain = %s", (domain,))
    if not rows:
        return None
    cols = ("id", "source", "source_peer", "mode", "listen_port", "port_auto_assigned", "cluster", "targets",
            "auth", "fresh", "name")
    return dict(zip(cols, rows[0]))


def changes(dep, service_id):
    return [tuple(r) for r in dep.sql("SELECT op, cluster, domain FROM proxy_mapping_changes"
                                      " WHERE service_id = %s ORDER BY seq", (service_id,))]


def events(dep, service_id):
    return [r[0] for r in dep.sql("SELECT activity FROM events WHERE target_id = %s ORDER BY id",
                                  (service_id,))]


def footprint(dep):
    """Everything an expose writes."""
    return dep.sql("SELECT (SELECT count(*) FROM services), (SELECT count(*) FROM proxy_mapping_changes),"
                   " (SELECT count(*) FROM events WHERE activity BETWEEN 111 AND 113),"
                   " (SELECT coalesce(max(expires_at)::text, '') FROM services)")[0]


@test
def create_renew_stop():
    dep, srv = setup()
    a = peer(dep, srv)
    resp = a.create_expose(8080)
    assert resp.domain.endswith("." + CLUSTER), resp
    name = resp.domain[:-len(CLUSTER) - 1]
    assert resp.service_name == name and len(name) == 12 and name.isalnum() and name == name.lower(), resp
    assert resp.service_url == "https://" + resp.domain and not resp.port_auto_assigned, resp
    s = service(dep, resp.domain)
    assert s and s["source"] == "ephemeral" and s["source_peer"] == a.peer_id and s["mode"] == "http", s
    assert s["cluster"] == CLUSTER and s["fresh"] and s["auth"] == {}, s
    assert s["targets"] == [{"target_id": a.peer_id, "target_type": "peer", "protocol": "http", "port": 8080,
                             "enabled": True}], s
    assert changes(dep, s["id"]) == [(0, CLUSTER, resp.domain)]
    assert events(dep, s["id"]) == [111]

    # Renewing moves the end back to now + 90 s.
    dep.sql("UPDATE services SET expires_at = now() + interval '5 seconds' WHERE id = %s", (s["id"],))
    assert not service(dep, resp.domain)["fresh"]
    a.renew_expose(resp.domain)
    assert service(dep, resp.domain)["fresh"]
    assert changes(dep, s["id"]) == [(0, CLUSTER, resp.domain)]     # proxies need nothing new

    a.stop_expose(resp.domain)
    assert service(dep, resp.domain) is None
    assert changes(dep, s["id"]) == [(0, CLUSTER, resp.domain), (2, CLUSTER, resp.domain)]
    assert events(dep, s["id"]) == [111, 112]
    expect_rpc(lambda: a.stop_expose(resp.domain), SC.NOT_FOUND,
               "service with domain %s not found" % resp.domain)


@test
def prefix_domain_and_auth():
    dep, srv = setup()
    a = peer(dep, srv)
    resp = a.create_expose(3000, protocol=1, name_prefix="web", domain=CLUSTER, password="s3cret-pass",
                           pin="123456", user_groups=["All"])
    assert resp.domain.startswith("web-") and resp.domain.endswith("." + CLUSTER), resp
    assert len(resp.service_name) == len("web-") + 4 and resp.domain == resp.service_name + "." + CLUSTER, resp
    s = service(dep, resp.domain)
    assert s["targets"][0]["protocol"] == "https", s
    auth = s["auth"]
    text = json.dumps(auth)
    assert "s3cret-pass" not in text and "123456" not in text, text
    assert auth["password_auth"]["enabled"] and auth["password_auth"]["password"].startswith("$argon2id$"), auth
    assert auth["pin_auth"]["enabled"] and auth["pin_auth"]["pin"].startswith("$argon2id$"), auth
    assert auth["bearer_auth"] == {"enabled": True, "distribution_groups": [all_group(dep)]}, auth

    # The same domain again: the name is new each time, so it is a new one.
    again = a.create_expose(3000, name_prefix="web", domain=CLUSTER)
    assert again.domain != resp.domain


@test
def l4_port_auto_assigned():
    dep, srv = setup()
    a = peer(dep, srv)
    resp = a.create_expose(5432, protocol=TCP)
    s = service(dep, resp.domain)
    assert resp.port_auto_assigned and s["port_auto_assigned"] and 10000 <= s["listen_port"] <= 49151, (resp, s)
    assert resp.service_url == "tcp://%s:%d" % (resp.domain, s["listen_port"]), resp
    assert s["targets"][0]["protocol"] == "tcp" and s["targets"][0]["port"] == 5432, s


@test
def foreign_peer_refused():
    dep, srv = setup()
    owner, other = peer(dep, srv, "owner"), peer(dep, srv, "other")
    resp = owner.create_expose(8080)
    sid = service(dep, resp.domain)["id"]
    before = footprint(dep)
    expect_rpc(lambda: other.renew_expose(resp.domain), SC.NOT_FOUND,
               "no active expose session for service %s" % sid)
    expect_rpc(lambda: other.stop_expose(resp.domain), SC.PERMISSION_DENIED,
               "cannot delete service exposed by another peer")
    assert footprint(dep) == before
    # A permanent service of the same account cannot be stopped by a peer.
    dep.sql("UPDATE services SET source = 'permanent', source_peer = NULL WHERE id = %s", (sid,))
    expect_rpc(lambda: owner.stop_expose(resp.domain), SC.PERMISSION_DENIED,
               "cannot delete API-created service via peer expose")
    assert service(dep, resp.domain) is not None


@test
def bad_input_writes_nothing():
    dep, srv = setup()
    a = peer(dep, srv)
    before = footprint(dep)
    IA = SC.INVALID_ARGUMENT
    cases = [
        (lambda: a.create_expose(0), IA, "validate expose request: port must be between 1 and 65535, got 0"),
        (lambda: a.create_expose(70000), IA, "port out of range: 70000"),
        (lambda: a.create_expose(80, listen_port=65536), IA, "listen_port out of range: 65536"),
        (lambda: a.create_expose(80, protocol=9), IA, "unsupported expose protocol: 9"),
        (lambda: a.create_expose(80, pin="12ab56"), IA, "validate expose request: invalid pin: must be exactly 6 digits"),
        (lambda: a.create_expose(80, protocol=TCP, password="x"), IA,
         "validate expose request: authentication is not supported for tcp mode"),
        (lambda: a.create_expose(80, user_groups=[""]), IA,
         "validate expose request: user group name cannot be empty"),
        (lambda: a.create_expose(80, name_prefix="Bad_Prefix"), IA,
         'validate expose request: invalid name prefix "Bad_Prefix": must be lowercase alphanumeric with'
         ' optional hyphens, 1-32 characters'),
        (lambda: a.create_expose(80, user_groups=["no-such-group"]), SC.NOT_FOUND, "group: no-such-group not found"),
        (lambda: a.renew_expose(""), IA, "domain is required"),
        (lambda: a.stop_expose(""), IA, "domain is required"),
        (lambda: a.renew_expose("nope." + CLUSTER), SC.NOT_FOUND, "service with domain nope.%s not found" % CLUSTER),
        (lambda: a.stop_expose("nope." + CLUSTER), SC.NOT_FOUND, "service with domain nope.%s not found" % CLUSTER),
    ]
    for fn, code, details in cases:
        expect_rpc(fn, code, details)
    e = expect_rpc(lambda: a.create_expose(80, domain="elsewhere.test"), SC.RESOURCE_EXHAUSTED)
    assert e.details.startswith("could not derive cluster from domain ") and \
        e.details.endswith(".elsewhere.test does not match any available proxy cluster"), e.details

    # Not registered.
    stranger = dep.agent(srv)
    expect_rpc(lambda: stranger.create_expose(80), SC.PERMISSION_DENIED, "peer is not registered")
    expect_rpc(lambda: stranger.renew_expose("x." + CLUSTER), SC.PERMISSION_DENIED, "peer is not registered")
    # Settings: not enabled, no group, not in the group.
    dep.sql("UPDATE accounts SET settings_peer_expose_enabled = false")
    expect_rpc(lambda: a.create_expose(80), SC.PERMISSION_DENIED, "peer expose is not enabled for this account")
    enable_expose(dep, groups=[])
    expect_rpc(lambda: a.create_expose(80), SC.PERMISSION_DENIED, "no group is set for peer expose")
    enable_expose(dep, groups=[dep.add_group("exposers")])
    expect_rpc(lambda: a.create_expose(80), SC.PERMISSION_DENIED, "peer is not in an allowed expose group")
    # The same refusal, before any secret is hashed.
    expect_rpc(lambda: a.create_expose(80, password="s3cret-pass", pin="123456"), SC.PERMISSION_DENIED,
               "peer is not in an allowed expose group")
    # No proxy cluster connected: NetBird's internal error.
    enable_expose(dep)
    dep.sql("UPDATE proxies SET status = 'disconnected'")
    expect_rpc(lambda: a.create_expose(80), SC.INTERNAL, "internal error")
    assert footprint(dep) == before


@test
def per_peer_limit():
    dep, srv = setup()
    a = peer(dep, srv)
    for i in range(10):
        a.create_expose(8000 + i)
    before = footprint(dep)
    expect_rpc(lambda: a.create_expose(9000), SC.RESOURCE_EXHAUSTED,
               "peer has reached the maximum number of active expose sessions (10)")
    assert footprint(dep) == before


@test
def expiry_sweep_on_another_replica():
    dep = Deployment()
    connect_proxy(dep)
    enable_expose(dep)
    # Replica 1 never sweeps during the test; replica 2 does every 200 ms.
    srv1 = dep.start("--login-expiry-check-interval", "1h")
    srv2 = dep.start("--login-expiry-check-interval", "200ms")
    a = peer(dep, srv1)
    resp = a.create_expose(8080)
    keep = a.create_expose(8081)
    sid = service(dep, resp.domain)["id"]
    dep.sql("UPDATE services SET expires_at = now() - interval '1 second' WHERE id = %s", (sid,))
    wait_until(lambda: service(dep, resp.domain) is None, timeout=20, what="the expired expose swept")
    srv2.wait_log(lambda o: o.get("msg") == "expired expose session removed" and o.get("domain") == resp.domain)
    assert changes(dep, sid) == [(0, CLUSTER, resp.domain), (2, CLUSTER, resp.domain)]
    assert events(dep, sid) == [111, 113]
    assert service(dep, keep.domain) is not None        # not expired: kept
    expect_rpc(lambda: a.renew_expose(resp.domain), SC.NOT_FOUND, "service with domain %s not found" % resp.domain)


@test
def deleted_peer_exposes_removed():
    dep, srv = setup()
    a = peer(dep, srv)
    resp = a.create_expose(8080)
    sid = service(dep, resp.domain)["id"]
    a.logout()
    assert service(dep, resp.domain) is None
    assert changes(dep, sid) == [(0, CLUSTER, resp.domain), (2, CLUSTER, resp.domain)]


@test
def concurrent_sweeps_remove_each_once():
    dep = Deployment()
    connect_proxy(dep)
    enable_expose(dep)
    servers = [dep.start("--login-expiry-check-interval", "100ms") for _ in range(3)]
    peers = [peer(dep, servers[i % 3], "p%d" % i) for i in range(4)]
    ids = []
    for i, a in enumerate(peers):
        for j in range(5):
            ids.append(service(dep, a.create_expose(7000 + j).domain)["id"])
    dep.sql("UPDATE services SET expires_at = now() - interval '1 second'")
    wait_until(lambda: dep.sql("SELECT count(*) FROM services")[0][0] == 0, timeout=30,
               what="every expired expose swept")
    for sid in ids:
        assert [c[0] for c in changes(dep, sid)] == [0, 2], (sid, changes(dep, sid))
        assert events(dep, sid) == [111, 113], (sid, events(dep, sid))


@test
def ephemeral_peer_sweep_removes_its_exposes():
    dep = Deployment()
    connect_proxy(dep)
    enable_expose(dep)
    srv = dep.start("--login-expiry-check-interval", "200ms", "--ephemeral-peer-lifetime", "1s")
    a = dep.agent(srv)
    a.register(dep.add_setup_key(ephemeral=True), meta=build_meta("eph"))
    resp = a.create_expose(8080)
    sid = service(dep, resp.domain)["id"]
    dep.sql("UPDATE peers SET peer_status_last_seen = now() - interval '1 hour' WHERE ephemeral")
    wait_until(lambda: service(dep, resp.domain) is None, timeout=20, what="the ephemeral peer swept")
    assert changes(dep, sid) == [(0, CLUSTER, resp.domain), (2, CLUSTER, resp.domain)]


@test
def rest_peer_and_user_delete_remove_exposes():
    dep, srv = setup()
    a, b = peer(dep, srv, "rest-a"), peer(dep, srv, "rest-b")
    ra, rb = a.create_expose(8080), b.create_expose(8080)
    sa, sb = service(dep, ra.domain)["id"], service(dep, rb.domain)["id"]
    auth = {"Authorization": "Token " + dep.admin_token}
    st, _, body = svc.http("DELETE", srv.url("/api/peers/" + a.peer_id), headers=auth)
    assert st == 200, (st, body)
    assert service(dep, ra.domain) is None
    assert changes(dep, sa) == [(0, CLUSTER, ra.domain), (2, CLUSTER, ra.domain)]
    # A user's peers go with the user (here: b, moved to a fresh user).
    dep.sql("INSERT INTO users (id, account_id, role) VALUES ('u-gone', %s, 'user')", (dep.account_id,))
    dep.sql("UPDATE peers SET user_id = 'u-gone' WHERE id = %s", (b.peer_id,))
    st, _, body = svc.http("DELETE", srv.url("/api/users/u-gone"), headers=auth)
    assert st == 200, (st, body)
    assert service(dep, rb.domain) is None
    assert changes(dep, sb) == [(0, CLUSTER, rb.domain), (2, CLUSTER, rb.domain)]


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
