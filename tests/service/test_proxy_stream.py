"""management.ProxyService's connections and mapping streams
(docs/proxy.md, "Proxy connections and mapping streams"): proxy token
authentication, SyncMappings and GetMappingUpdate snapshots with ack
back-pressure, capability filtering, bad input, changes and revocations
reaching proxies on other replicas through the bus."""

import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import grpc  # noqa: E402
import svc  # noqa: E402
from fixture import Deployment, parse_env_output, wait_until  # noqa: E402
from svc import test  # noqa: E402
import proxyclient as pc  # noqa: E402
from proxyclient import pb  # noqa: E402

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
CLUSTER = "eu.proxy.example"
# Many failed logins from 127.0.0.1 in one test: the limiter is tested
# on its own with a small burst.
ENV = {"NB_PROXY_AUTH_FAILURE_BURST": "1000"}


def server(dep, *extra, env=None):
    e = dict(ENV)
    e.update(env or {})
    return dep.start("--serial-check-interval", "0s", *extra, env=e)


def proxy(srv, token):
    p = pc.Proxy(srv.grpc_target, token)
    svc.defer(p.close)
    return p


def stream(p, **kw):
    s = p.sync(**kw)
    svc.defer(s.close)
    return s


def proxies_row(dep, proxy_id):
    rows = dep.sql("SELECT status, cluster_address, session_id, replica_id, supports_custom_ports,"
                   " supports_private_service FROM proxies WHERE id = %s", (proxy_id,))
    return rows[0] if rows else None


def unary_status(p, md=None):
    try:
        p.unary("SendStatusUpdate", pb.SendStatusUpdateRequest(), pb.SendStatusUpdateResponse, md=md)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


@test
def token_authentication():
    dep = Deployment()
    srv = server(dep)
    _, good = pc.add_token(dep)
    _, expired = pc.add_token(dep, expires_sql="now() - interval '1 minute'")
    _, revoked = pc.add_token(dep, revoked=True)
    p = proxy(srv, good)
    cases = [
        ([], "missing authorization header"),
        ([("authorization", "Basic abc")], "invalid authorization format"),
        ([("authorization", "Bearer nbx_short")], "invalid token format"),
        ([("authorization", "Bearer " + good[:-1] + ("A" if good[-1] != "A" else "B"))], "invalid token format"),
        ([("authorization", "Bearer " + pc.new_token())], "invalid token"),
        ([("authorization", "Bearer " + expired)], "token expired or revoked"),
        ([("authorization", "Bearer " + revoked)], "token expired or revoked"),
    ]
    for md, text in cases:
        code, details = unary_status(p, md=md)
        assert (code, details) == (UNAUTH, text), (md, code, details)
        # The streams refuse the same way, before anything else.
        s = stream(p, md=md)
        s.send_init("p-auth", CLUSTER)
        assert s.wait_end() == (UNAUTH, text), md
        try:
            list(p.get_mapping_update("p-auth", CLUSTER, md=md))
            raise AssertionError("GetMappingUpdate accepted %r" % md)
        except grpc.RpcError as e:
            assert (e.code(), e.details()) == (UNAUTH, text), (e.code(), e.details())
    # A valid token passes the token check; the empty request is then the
    # handler's to refuse.
    assert unary_status(p) == (grpc.StatusCode.INVALID_ARGUMENT, "service_id and account_id are required"), \
        unary_status(p)
    assert dep.sql("SELECT last_used IS NOT NULL FROM proxy_access_tokens WHERE hashed_token = %s",
                   (pc.token_hash(good),)) == [(True,)]
    assert dep.sql("SELECT count(*) FROM proxies") == [(0,)]


@test
def failure_limiter():
    dep = Deployment()
    srv = server(dep, env={"NB_PROXY_AUTH_FAILURE_BURST": "3"})
    _, good = pc.add_token(dep)
    p = proxy(srv, good)
    for _ in range(3):
        assert unary_status(p, md=[("authorization", "Bearer " + pc.new_token())])[0] == UNAUTH
    # The bucket is empty: refused before the token is looked at, even a good one.
    assert unary_status(p) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed authentication attempts")


@test
def snapshot_both_rpcs_and_rows():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    ids, _ = pc.add_services(dep, dep.account_id, CLUSTER, n=3)
    pc.add_services(dep, dep.account_id, "other.example", n=2)
    pc.add_services(dep, dep.account_id, CLUSTER, n=1, enabled=False)
    p = proxy(srv, tok)

    s = stream(p)
    s.send_init("p-1", CLUSTER)
    maps, batches = pc.snapshot(s)
    assert batches == 1 and sorted(m.id for m in maps) == sorted(ids), maps
    m = maps[0]
    assert m.type == pb.UPDATE_TYPE_CREATED and m.account_id == dep.account_id and m.auth_token
    assert m.domain.endswith("." + CLUSTER) and m.mode == "http" and m.auth.password
    assert m.auth.session_key == "pubkey=" and m.auth.max_session_age_seconds == 86400
    assert [(x.path, x.target) for x in m.path] == [("/", "http://10.0.0.1:8080/")], m.path
    assert len({x.auth_token for x in maps}) == 3        # one fresh token per mapping
    row = proxies_row(dep, "p-1")
    assert row[0] == "connected" and row[1] == CLUSTER and row[2], row
    s.close()
    wait_until(lambda: proxies_row(dep, "p-1")[0] == "disconnected", what="disconnected")

    call = p.get_mapping_update("p-2", CLUSTER)
    first = next(call)
    assert first.initial_sync_complete and sorted(x.id for x in first.mapping) == sorted(ids)
    call.cancel()

    # An empty cluster: one empty message with initial_sync_complete.
    s = stream(p)
    s.send_init("p-3", "empty.example")
    _, r = s.next()
    assert r.initial_sync_complete and len(r.mapping) == 0


@test
def mapping_targets_looked_up():
    """As NetBird's replaceHostByLookup before a mapping goes out: a peer
    target dials the peer's address, a host resource its address, a
    domain resource its domain, a vanished one "unknown"; subnet targets
    keep their host."""
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    net = "net" + secrets.token_hex(4)
    dep.sql("INSERT INTO networks (id, account_id, name) VALUES (%s, %s, 'lab')", (net, dep.account_id))
    dep.sql("INSERT INTO network_resources (id, network_id, account_id, name, type, prefix) VALUES"
            " ('res-host', %s, %s, 'web', 'host', '10.99.99.10/32')", (net, dep.account_id))
    dep.sql("INSERT INTO network_resources (id, network_id, account_id, name, type, domain) VALUES"
            " ('res-dom', %s, %s, 'dom', 'domain', 'db.internal')", (net, dep.account_id))
    dep.sql("INSERT INTO peers (id, account_id, key, ip, name, dns_label) VALUES (%s, %s, %s, %s, %s, %s)",
            ("peer-t", dep.account_id, "k" + secrets.token_hex(20), "100.64.0.9", "t", "peer-t"))
    targets = [("peer", "peer-t", "", "http://100.64.0.9:8080/"),
               ("host", "res-host", "", "http://10.99.99.10:8080/"),
               ("domain", "res-dom", "", "http://db.internal:8080/"),
               ("host", "res-gone", "", "http://unknown:8080/"),
               ("subnet", "res-net", "10.1.2.3", "http://10.1.2.3:8080/")]
    ids, _ = pc.add_services(dep, dep.account_id, CLUSTER, n=len(targets))
    for sid, (typ, tid, host, _) in zip(ids, targets):
        dep.sql("UPDATE services SET targets = jsonb_build_array(jsonb_build_object('target_type', %s::text,"
                " 'target_id', %s::text, 'host', %s::text, 'protocol', 'http', 'port', 8080, 'enabled', true))"
                " WHERE id = %s", (typ, tid, host, sid))
    s = stream(proxy(srv, tok))
    s.send_init("p-targets", CLUSTER)
    maps, _ = pc.snapshot(s)
    got = {m.id: [x.target for x in m.path] for m in maps}
    assert got == {sid: [want] for sid, (_, _, _, want) in zip(ids, targets)}, got


@test
def capability_filtering():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    plain, _ = pc.add_services(dep, dep.account_id, CLUSTER)
    priv, _ = pc.add_services(dep, dep.account_id, CLUSTER, private=True)
    tcp, _ = pc.add_services(dep, dep.account_id, CLUSTER, mode="tcp", port=5432)
    tls, _ = pc.add_services(dep, dep.account_id, CLUSTER, mode="tls", port=8443)
    p = proxy(srv, tok)
    for c, want in [(None, plain + tls),
                    (pc.caps(supports_custom_ports=False), plain + tcp + tls),
                    (pc.caps(supports_private_service=True), plain + priv + tls),
                    (pc.caps(supports_private_service=False, supports_custom_ports=True), plain + tcp + tls)]:
        s = stream(p)
        s.send_init("p-caps-" + secrets.token_hex(3), CLUSTER, capabilities=c)
        maps, _ = pc.snapshot(s)
        assert sorted(m.id for m in maps) == sorted(want), (c, [m.id for m in maps])
        s.close()
    tcpmap = [m for m in maps if m.id == tcp[0]][0]
    assert tcpmap.mode == "tcp" and tcpmap.listen_port == 5432 and tcpmap.path[0].target == "10.0.0.1:8080"


@test
def account_scoped_token():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep, account_id=dep.account_id)
    mine, _ = pc.add_services(dep, dep.account_id, CLUSTER, n=2)
    # Another account's services on the same cluster: not this token's.
    other = parse_env_output(svc.admin_ok(["account", "create"], dep.env()).out)["ACCOUNT_ID"]
    theirs, _ = pc.add_services(dep, other, CLUSTER, n=2)
    p = proxy(srv, tok)
    s = stream(p)
    s.send_init("byop-1", CLUSTER)
    maps, _ = pc.snapshot(s)
    assert sorted(m.id for m in maps) == sorted(mine), (maps, theirs)
    # A management-wide token serves both accounts.
    _, wide = pc.add_token(dep)
    s = stream(proxy(srv, wide))
    s.send_init("shared-1", CLUSTER)
    maps, _ = pc.snapshot(s)
    assert sorted(m.id for m in maps) == sorted(mine + theirs)


@test
def bad_input():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    pc.add_services(dep, dep.account_id, CLUSTER, n=2)
    p = proxy(srv, tok)
    INV = grpc.StatusCode.INVALID_ARGUMENT

    s = stream(p)
    s.send_ack()
    assert s.wait_end() == (INV, "first message must be init")

    s = stream(p)
    s.send_init("", CLUSTER)
    assert s.wait_end()[0] == INV
    s = stream(p)
    s.send_init("p-bad", "not a domain!")
    assert s.wait_end()[0] == INV
    assert dep.sql("SELECT count(*) FROM proxies") == [(0,)]

    # An ack before any batch.
    s = stream(p)
    s.send_init("p-early", CLUSTER)
    s.send_ack()
    assert s.wait_end() == (INV, "ack before any batch"), s.wait_end()

    # Init again where an ack is due; an extra ack after the snapshot.
    s = stream(p)
    s.send_init("p-twice", CLUSTER)
    s.next()
    s.send_init("p-twice", CLUSTER)
    assert s.wait_end() == (INV, "expected ack")
    s = stream(p)
    s.send_init("p-extra", CLUSTER)
    pc.snapshot(s)
    s.send_ack()
    assert s.wait_end()[0] == INV

    # Oversized: gRPC's receive limit (1 MiB).
    s = stream(p)
    s.send_init("p-" + "x" * (2 << 20), CLUSTER)
    assert s.wait_end()[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Nothing of the bad streams stays connected (the disconnects run
    # after the streams end); services untouched.
    wait_until(lambda: dep.sql("SELECT count(*) FROM proxies WHERE status = 'connected'") == [(0,)],
               what="no proxy connected")
    assert dep.sql("SELECT count(*) FROM services") == [(2,)]


@test
def ack_deadline():
    dep = Deployment()
    srv = server(dep, env={"NB_PROXY_ACK_TIMEOUT": "1s"})
    _, tok = pc.add_token(dep)
    pc.add_services(dep, dep.account_id, CLUSTER, n=1)
    p = proxy(srv, tok)
    s = stream(p)
    s.send_init("p-slow", CLUSTER)
    s.next()
    assert s.wait_end()[0] == grpc.StatusCode.DEADLINE_EXCEEDED


@test
def large_snapshot_slow_acks():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    pc.add_many_services(dep, dep.account_id, CLUSTER, 10000)
    p = proxy(srv, tok)
    # Warm up (allocator, first page), then measure.
    s = stream(p)
    s.send_init("p-warm", CLUSTER)
    pc.snapshot(s)
    s.close()
    before = pc.rss_kb(srv.proc.pid)

    s = stream(p)
    s.send_init("p-big", CLUSTER)
    seen, batches = set(), 0
    while True:
        t, r = s.next(timeout=30)
        if batches > 0:
            assert t > s.acks[-1], "batch %d arrived before the ack of the previous" % batches
        batches += 1
        seen.update(m.id for m in r.mapping)
        assert len(r.mapping) <= 500
        if batches % 5 == 1:
            # A slow proxy: nothing more comes until it acks.
            assert s.quiet(0.3), "a batch arrived without an ack"
        if r.initial_sync_complete:
            break
        s.send_ack()
    assert len(seen) == 10000 and batches == 20, (len(seen), batches)
    after = pc.rss_kb(srv.proc.pid)
    # One page and one batch of 500 are a few MB; the whole snapshot
    # would be tens of MB. Generous bound.
    assert after - before < 48 * 1024, (before, after)


def cluster(n):
    dep = Deployment()
    dep.bus_prefix = "t-" + secrets.token_hex(6)
    svc.needs_redis()
    srvs = []
    for _ in range(n):
        # A token cache far longer than any wait below: a revoked token
        # is refused at once only because the hint empties the caches.
        srv = server(dep, "--redis-url", svc.REDIS_URL, "--bus-channel-prefix", dep.bus_prefix,
                     env={"NB_PROXY_TOKEN_CACHE_TTL": "60s"})
        srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
        srvs.append(srv)
    return dep, srvs


@test
def change_reaches_other_replica_and_reconnect():
    dep, (r1, r2, r3) = cluster(3)
    _, tok = pc.add_token(dep)
    first, _ = pc.add_services(dep, dep.account_id, CLUSTER, n=2)
    p3 = proxy(r3, tok)
    s = stream(p3)
    s.send_init("p-multi", CLUSTER)
    maps, _ = pc.snapshot(s)
    assert sorted(m.id for m in maps) == sorted(first)
    # "Replica 1" commits a service with its change-log row and publishes.
    new, seq = pc.add_services(dep, dep.account_id, CLUSTER, n=1, change=True)
    pc.add_services(dep, dep.account_id, "elsewhere.example", n=1, change=True)
    pc.publish(svc.REDIS_URL, dep.bus_prefix, "~proxy", seq + 1)
    _, r = s.next(timeout=10)
    assert [(m.id, m.type) for m in r.mapping] == [(new[0], pb.UPDATE_TYPE_CREATED)] and r.mapping[0].auth_token
    assert not r.initial_sync_complete
    s.send_ack()
    # A removal.
    import psycopg2
    conn = psycopg2.connect(dep.dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (pc.CHANGES_LOCK,))
        cur.execute("DELETE FROM services WHERE id = %s RETURNING domain", (first[0],))
        dom = cur.fetchone()[0]
        cur.execute("INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"
                    " VALUES (%s, %s, 2, %s, %s) RETURNING seq", (dep.account_id, first[0], CLUSTER, dom))
        seq = cur.fetchone()[0]
    conn.close()
    pc.publish(svc.REDIS_URL, dep.bus_prefix, "~proxy", seq)
    _, r = s.next(timeout=10)
    assert [(m.id, m.type, m.domain) for m in r.mapping] == [(first[0], pb.UPDATE_TYPE_REMOVED, dom)]
    s.send_ack()
    s.close()
    # Reconnecting to another replica: a full snapshot of what is there now.
    p1 = proxy(r1, tok)
    s = stream(p1)
    s.send_init("p-multi", CLUSTER)
    maps, _ = pc.snapshot(s)
    assert sorted(m.id for m in maps) == sorted([first[1], new[0]])
    wait_until(lambda: proxies_row(dep, "p-multi")[0] == "connected", what="row connected")


@test
def revocation_ends_streams_on_two_replicas():
    dep, (r1, r2) = cluster(2)
    tid, tok = pc.add_token(dep)
    _, keep = pc.add_token(dep)
    streams = []
    for srv, t, name in [(r1, tok, "rv-1"), (r2, tok, "rv-2"), (r2, keep, "rv-keep")]:
        s = stream(proxy(srv, t))
        s.send_init(name, CLUSTER)
        pc.snapshot(s)
        streams.append(s)
    dep.sql("UPDATE proxy_access_tokens SET revoked = true WHERE id = %s", (tid,))
    pc.publish(svc.REDIS_URL, dep.bus_prefix, "~proxytok", int(time.time() * 1000))
    for s in streams[:2]:
        assert s.wait_end(10) == (UNAUTH, "token expired or revoked")
    assert not streams[2].done.wait(1), "the other token's stream ended too"
    wait_until(lambda: proxies_row(dep, "rv-1")[0] == "disconnected", what="rv-1 disconnected")


@test
def periodic_token_check():
    dep = Deployment()
    srv = server(dep, env={"NB_PROXY_TOKEN_CHECK_INTERVAL": "1s"})
    tid, tok = pc.add_token(dep)
    s = stream(proxy(srv, tok))
    s.send_init("p-exp", CLUSTER)
    pc.snapshot(s)
    dep.sql("UPDATE proxy_access_tokens SET expires_at = now() - interval '1 second' WHERE id = %s", (tid,))
    assert s.wait_end(10) == (UNAUTH, "token expired or revoked")


@test
def rest_changes_and_revocation_across_replicas():
    """The REST API on replica 1 (its proxy hooks and the bus) reaches a
    proxy connected to replica 3: a service created, modified, deleted;
    then its account-scoped token revoked."""
    dep, (r1, _r2, r3) = cluster(3)
    cl = "byop.proxy.test"
    st, t = pc.rest(r1, dep.admin_token, "POST", "/api/reverse-proxies/proxy-tokens", {"name": "edge"})
    assert st == 200, (st, t)
    s = stream(proxy(r3, t["plain_token"]))
    s.send_init("rest-proxy", cl)
    assert pc.snapshot(s)[0] == []
    svc_, body = pc.add_peer_service(dep, r1, cl)
    _, r = s.next(timeout=10)
    assert [(m.id, m.type, m.domain) for m in r.mapping] == [(svc_["id"], pb.UPDATE_TYPE_CREATED, "app." + cl)]
    assert r.mapping[0].path[0].target == "http://%s:8080/" % (dep.network.network_address + 7), r.mapping[0]
    s.send_ack()
    body["name"] = "app2"
    st, _ = pc.rest(r1, dep.admin_token, "PUT", "/api/reverse-proxies/services/" + svc_["id"], body)
    assert st == 200
    _, r = s.next(timeout=10)
    assert [(m.id, m.type) for m in r.mapping] == [(svc_["id"], pb.UPDATE_TYPE_MODIFIED)]
    s.send_ack()
    st, _ = pc.rest(r1, dep.admin_token, "DELETE", "/api/reverse-proxies/services/" + svc_["id"])
    assert st == 200
    _, r = s.next(timeout=10)
    assert [(m.id, m.type) for m in r.mapping] == [(svc_["id"], pb.UPDATE_TYPE_REMOVED)]
    s.send_ack()
    # Unary calls on replica 3 pass the token check (now cached there)...
    p3 = proxy(r3, t["plain_token"])
    # (an empty SendStatusUpdate names no account: this account-scoped
    # token gets PERMISSION_DENIED, after the token check)
    assert unary_status(p3)[0] == grpc.StatusCode.PERMISSION_DENIED, unary_status(p3)
    st, _ = pc.rest(r1, dep.admin_token, "DELETE", "/api/reverse-proxies/proxy-tokens/" + t["id"])
    assert st == 200, st
    assert s.wait_end(10) == (UNAUTH, "token expired or revoked")
    # ...and are refused right after the revocation on replica 1.
    wait_until(lambda: unary_status(p3)[0] == UNAUTH, timeout=10, what="revoked token refused on replica 3")


@test
def get_mapping_update_changes_and_superseding():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    p = proxy(srv, tok)
    call = p.get_mapping_update("gmu-1", CLUSTER)
    first = next(call)
    assert first.initial_sync_complete and not first.mapping
    new, seq = pc.add_services(dep, dep.account_id, CLUSTER, n=2, change=True)
    # No hint and no poll here: a second connection of the same proxy
    # (it supersedes the first) gets them in its snapshot.
    s = stream(p)
    s.send_init("gmu-1", CLUSTER)
    maps, _ = pc.snapshot(s)
    assert sorted(m.id for m in maps) == sorted(new)
    try:
        next(call)
        raise AssertionError("the superseded stream went on")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.CANCELLED, e
    row = proxies_row(dep, "gmu-1")
    assert row[0] == "connected"
    # Changes on the legacy RPC, one mapping per message, read on the
    # poll (--serial-check-interval 1s) without any hint.
    srv2 = server(dep, "--serial-check-interval", "1s")
    p2 = proxy(srv2, tok)
    call = p2.get_mapping_update("gmu-2", CLUSTER)
    assert len(next(call).mapping) == 2
    more, _ = pc.add_services(dep, dep.account_id, CLUSTER, n=2, change=True)
    got = [next(call), next(call)]
    assert [len(r.mapping) for r in got] == [1, 1] and sorted(r.mapping[0].id for r in got) == sorted(more)
    call.cancel()


@test
def heartbeat_and_stale_rows():
    dep = Deployment()
    srv = server(dep, env={"NB_PROXY_HEARTBEAT_INTERVAL": "1s", "NB_PROXY_STALE_AFTER": "4s"})
    _, tok = pc.add_token(dep)
    dep.sql("INSERT INTO proxies (id, session_id, cluster_address, status, last_seen)"
            " VALUES ('gone', 's', %s, 'disconnected', now() - interval '2 hours')", (CLUSTER,))
    s = stream(proxy(srv, tok))
    s.send_init("alive", CLUSTER)
    pc.snapshot(s)
    seen0 = dep.sql("SELECT last_seen FROM proxies WHERE id = 'alive'")[0][0]
    wait_until(lambda: dep.sql("SELECT last_seen > %s FROM proxies WHERE id = 'alive'", (seen0,)) == [(True,)],
               what="heartbeat")
    wait_until(lambda: dep.sql("SELECT id FROM proxies ORDER BY id") == [("alive",)], timeout=20,
               what="stale row deleted, live one kept")


@test
def drain_at_shutdown():
    dep = Deployment()
    srv = server(dep)
    _, tok = pc.add_token(dep)
    s = stream(proxy(srv, tok))
    s.send_init("drain-1", CLUSTER)
    pc.snapshot(s)
    body = svc.http("GET", "http://127.0.0.1:%d/metrics" % srv.http_port)[2].decode()
    assert "netbird_cp_proxy_streams 1" in body, [l for l in body.splitlines() if "proxy" in l]
    srv.signal()
    assert s.wait_end(10) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    assert srv.wait(20) == 0
    assert proxies_row(dep, "drain-1")[0] == "disconnected"


if __name__ == "__main__":
    svc.run_all()
