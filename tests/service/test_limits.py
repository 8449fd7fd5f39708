"""Rate and connection limits of one replica (docs/ops.md "Limits"), against
the real netbird-mgmt with tiny limits: Login per source address (the real
one behind --trusted-proxies, from X-Forwarded-For), registration per setup
key, REST per token and failed REST authentications per address, gRPC
streams per connection, gRPC connections and HTTP connections; and their
counts in /metrics. Nothing here asserts on time: refills are waited for as
states (wait_until).
"""

import http.client
import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import grpc  # noqa: E402

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
import nbagent  # noqa: E402
from nbagent import RpcFailed, build_meta, pb  # noqa: E402
from svc import test  # noqa: E402

SC = grpc.StatusCode
LOGIN_LIMITED = "too many login attempts, please try again later"
# Each agent on its own HTTP/2 connection (grpcio shares one between
# channels of the same target and arguments otherwise).
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def labelled(srv, name, **labels):
    """The value of name{labels} on srv's /metrics (0 when absent)."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    status, _, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, status
    for line in body.decode().splitlines():
        if line.startswith("%s{%s} " % (name, want)):
            return float(line.split()[-1])
    return 0.0


def login_from(agent, ip, setup_key=None, name="lim"):
    """Login with X-Forwarded-For: ip (trusted from 127.0.0.1)."""
    server_key = agent.get_server_key()
    env = agent.envelope(agent.login_request(setup_key, build_meta(name)), server_key)
    fn = agent.channel.unary_unary(nbagent.SERVICE + "Login")
    try:
        fn(env.SerializeToString(), timeout=10, metadata=[("x-forwarded-for", ip)])
    except grpc.RpcError as e:
        raise RpcFailed("Login", e.code(), e.details()) from None


def limited(fn):
    """True when fn() fails RESOURCE_EXHAUSTED with the Login limit's text."""
    try:
        fn()
        return False
    except RpcFailed as e:
        if e.code != SC.RESOURCE_EXHAUSTED:
            raise
        assert e.details == LOGIN_LIMITED, e
        return True


def rest(srv, method, path, token=None, headers=None):
    """(status, headers, parsed body) of one REST request."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Token " + token
    status, hdrs, body = svc.http(method, srv.url(path), headers=h)
    return status, hdrs, json.loads(body.decode()) if body else None


# ---- Login ----------------------------------------------------------------------------------

def failed_login_limited(dep, ip):
    """A Login of an unknown peer without setup key from ip: True when the
    address is refused (RESOURCE_EXHAUSTED), False when it failed as such
    a Login does (PERMISSION_DENIED)."""
    try:
        login_from(dep.agent(), ip)
    except RpcFailed as e:
        if e.code == SC.PERMISSION_DENIED:
            return False
        assert e.code == SC.RESOURCE_EXHAUSTED and e.details == LOGIN_LIMITED, e
        return True
    raise AssertionError("an unknown peer logged in without a setup key")


@test
def login_limited_per_source_address():
    dep = Deployment()
    srv = dep.start("--trusted-proxies", "127.0.0.1/32", "--login-rate", "600", "--login-burst", "3")
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("lim"))
    # A known peer's Logins take nothing from its address (agents log in
    # before every Sync: thousands behind one NAT are never refused).
    for _ in range(20):
        login_from(a, "198.51.100.6")
    # Failed Logins from one address are refused once the burst is spent
    # (10 a second refill: a loop of Logins outruns it).
    n = 0
    while not failed_login_limited(dep, "198.51.100.7"):
        n += 1
        assert n < 200, "never limited"
    assert n >= 2, "limited before the burst was spent (%d Logins passed)" % n
    # While its bucket is empty the address is refused before decoding;
    # another address is not affected.
    assert limited(lambda: login_from(a, "198.51.100.7"))
    login_from(a, "198.51.100.8")
    # The refused Login changed nothing and the address gets in again once
    # its bucket refilled.
    wait_until(lambda: not limited(lambda: login_from(a, "198.51.100.7")), timeout=30,
               what="Login allowed again after the refill")
    assert labelled(srv, "netbird_cp_rate_limited_total", limit="login_addr") >= 1
    logs = [l for l in srv.logs() if l.get("msg") == "rpc" and l.get("code") == "RESOURCE_EXHAUSTED"]
    assert logs and all(l.get("peer") == "198.51.100.7" for l in logs), logs[:3]


@test
def login_limit_off_with_zero():
    dep = Deployment()
    dep.start("--trusted-proxies", "127.0.0.1/32", "--login-rate", "0", "--login-burst", "1")
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("nolim"))
    for _ in range(10):
        login_from(a, "198.51.100.9")


@test
def registration_limited_per_setup_key():
    dep = Deployment()
    srv = dep.start("--setup-key-rate", "1", "--setup-key-burst", "2")
    for i in range(2):
        dep.agent().register(dep.setup_key, meta=build_meta("reg%d" % i))
    before = len(dep.peers())
    third = dep.agent()
    try:
        third.register(dep.setup_key, meta=build_meta("reg2"))
        raise AssertionError("a third registration with the key passed")
    except RpcFailed as e:
        assert e.code == SC.RESOURCE_EXHAUSTED and e.details == LOGIN_LIMITED, e
    assert len(dep.peers()) == before, "a refused registration wrote a peer"
    # The key in another case is the same key to the store, and to its
    # limit.
    try:
        dep.agent().register(dep.setup_key.lower(), meta=build_meta("reg3"))
        raise AssertionError("the key in lower case passed the key's limit")
    except RpcFailed as e:
        assert e.code == SC.RESOURCE_EXHAUSTED and e.details == LOGIN_LIMITED, e
    # A peer already registered with that key still logs in (not a
    # registration), and another setup key registers.
    other = dep.add_setup_key()
    third.register(other, meta=build_meta("reg2"))
    assert len(dep.peers()) == before + 1
    assert labelled(srv, "netbird_cp_rate_limited_total", limit="login_key") == 2
    text = srv.stdout() + srv.stderr()
    assert dep.setup_key not in text, "the setup key appears in the log"


# ---- REST -----------------------------------------------------------------------------------

@test
def rest_limited_per_token():
    dep = Deployment()
    srv = dep.start("--rest-rate", "1", "--rest-burst", "3")
    # 1 of 3: a second token of the same user.
    req = urllib.request.Request(srv.url("/api/users/%s/tokens" % dep.user_id), method="POST",
                                 data=json.dumps({"name": "second", "expires_in": 30}).encode(),
                                 headers={"Authorization": "Token " + dep.admin_token,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        second = json.loads(resp.read())["plain_token"]
    for _ in range(2):      # 2 and 3 of 3
        status, _, body = rest(srv, "GET", "/api/peers", dep.admin_token)
        assert status == 200, (status, body)
    status, headers, body = rest(srv, "GET", "/api/peers", dep.admin_token)
    assert status == 429, (status, body)
    assert body == {"message": "too many requests", "code": 429}, body
    assert int(headers.get("Retry-After", "0")) >= 1, headers
    assert headers.get("Access-Control-Allow-Origin") == "*", headers
    # Another token of the same user is not affected.
    status, _, body = rest(srv, "GET", "/api/peers", second)
    assert status == 200, (status, body)
    assert labelled(srv, "netbird_cp_rate_limited_total", limit="rest_token") == 1


@test
def rest_auth_failures_limited_per_address():
    dep = Deployment()
    srv = dep.start("--trusted-proxies", "127.0.0.1/32", "--rest-auth-failure-rate", "1",
                    "--rest-auth-failure-burst", "2")
    guesser = {"X-Forwarded-For": "203.0.113.5"}
    bad = "nbp_" + "A" * 36
    for _ in range(2):
        status, _, body = rest(srv, "GET", "/api/peers", bad, headers=guesser)
        assert status == 401, (status, body)
    # Past the failures' burst a failed authentication from the address
    # is 429 instead of 401.
    status, headers, body = rest(srv, "GET", "/api/peers", bad, headers=guesser)
    assert status == 429 and body == {"message": "too many requests", "code": 429}, (status, body)
    assert int(headers.get("Retry-After", "0")) >= 1, headers
    # A valid token behind the same address (a NAT, a proxy) is never
    # refused for the guesser's failures; nor is another address or an
    # unauthenticated probe.
    status, _, body = rest(srv, "GET", "/api/peers", dep.admin_token, headers=guesser)
    assert status == 200, (status, body)
    status, _, body = rest(srv, "GET", "/api/peers", dep.admin_token, headers={"X-Forwarded-For": "203.0.113.6"})
    assert status == 200, (status, body)
    assert svc.http("GET", srv.url("/healthz"), headers=guesser)[0] == 200
    # The client's own X-Real-IP passed through the proxy beside its
    # X-Forwarded-For does not move it to a fresh address.
    status, _, body = rest(srv, "GET", "/api/peers", bad,
                           headers=dict(guesser, **{"X-Real-IP": "198.51.100.99"}))
    assert status == 429, (status, body)
    # X-Forwarded-For on two lines (a proxy that adds a line of its own):
    # the rightmost entry of them all is the client, not the first line.
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    conn.putrequest("GET", "/api/peers")
    conn.putheader("Authorization", "Token " + bad)
    conn.putheader("X-Forwarded-For", "198.51.100.50")
    conn.putheader("X-Forwarded-For", "203.0.113.5")
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 429, resp.status
    # IPv6 addresses are keyed by their /64 (one host holds a whole one).
    for a in ("2001:db8:5::1", "2001:db8:5::2"):
        assert rest(srv, "GET", "/api/peers", bad, headers={"X-Forwarded-For": a})[0] == 401
    assert rest(srv, "GET", "/api/peers", bad, headers={"X-Forwarded-For": "2001:db8:5::3"})[0] == 429
    assert rest(srv, "GET", "/api/peers", bad, headers={"X-Forwarded-For": "2001:db8:6::1"})[0] == 401
    assert labelled(srv, "netbird_cp_rate_limited_total", limit="rest_addr") == 4


# ---- gRPC connections and streams -------------------------------------------------------------

def shared_agents(target, n):
    """n agents on one channel (one HTTP/2 connection)."""
    first = nbagent.Agent(target, options=OWN_CONNECTION)
    svc.defer(first.close)
    agents = [first]
    for _ in range(n - 1):
        a = nbagent.Agent(target, options=OWN_CONNECTION)
        a.channel.unsubscribe(a._sub)
        a.channel.close()
        a.channel = first.channel
        a.close = lambda: None
        agents.append(a)
    return agents


@test
def streams_per_connection_capped():
    dep = Deployment()
    srv = dep.start("--grpc-max-streams-per-connection", "2")
    agents = shared_agents(srv.grpc_target, 3)
    for i, a in enumerate(agents):
        # registered on connections of their own
        r = nbagent.Agent(srv.grpc_target, private_key=a.key, options=OWN_CONNECTION)
        r.register(dep.setup_key, meta=build_meta("s%d" % i))
        r.close()
    s1 = agents[0].sync()
    s1.next(timeout=15)
    s2 = agents[1].sync()
    s2.next(timeout=15)
    # Two streams are open on the connection: a third call waits in the
    # client for one to end (gRPC honours SETTINGS_MAX_CONCURRENT_STREAMS).
    try:
        agents[2].get_server_key_response(timeout=2)
        raise AssertionError("a third call ran beside two streams")
    except RpcFailed as e:
        assert e.code == SC.DEADLINE_EXCEEDED, e
    # Another connection is not affected.
    other = dep.agent(options=OWN_CONNECTION)
    other.get_server_key_response()
    s1.cancel()
    wait_until(lambda: try_key(agents[2]), timeout=20, what="a call once a stream ended")
    s2.cancel()


def try_key(a):
    try:
        a.get_server_key_response(timeout=2)
        return True
    except RpcFailed as e:
        if e.code not in (SC.DEADLINE_EXCEEDED, SC.RESOURCE_EXHAUSTED, SC.UNAVAILABLE):
            raise
        return False


@test
def connections_capped():
    dep = Deployment()
    srv = dep.start("--grpc-max-connections", "1")
    a = dep.agent(options=OWN_CONNECTION)
    a.register(dep.setup_key, meta=build_meta("c1"))
    s = a.sync()
    s.next(timeout=15)
    wait_until(lambda: labelled(srv, "netbird_cp_connections", listener="grpc") == 1,
               what="one gRPC connection counted")
    b = dep.agent(options=OWN_CONNECTION)
    try:
        b.get_server_key_response()
        raise AssertionError("a call on a second connection passed")
    except RpcFailed as e:
        assert e.code == SC.RESOURCE_EXHAUSTED and e.details == "too many connections, please try again later", e
    # The connection that holds the stream still makes calls.
    a.get_server_key_response()
    assert labelled(srv, "netbird_cp_connections_refused_total", listener="grpc") >= 1
    s.cancel()
    wait_until(lambda: try_key(b), timeout=20, what="a second connection once the first has no call")
    wait_until(lambda: labelled(srv, "netbird_cp_connections", listener="grpc") <= 1,
               what="the connection gauge back down")


# ---- HTTP connections -------------------------------------------------------------------------

def peers_on(srv, dep, c=None):
    """GET /api/peers with the admin token on connection c (a new one,
    closed with the test, when None); returns (connection, status, body)."""
    if c is None:
        c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
        svc.defer(c.close)
    c.request("GET", "/api/peers", headers={"Authorization": "Token " + dep.admin_token})
    r = c.getresponse()
    return c, r, r.read()


def assert_refused(c, r, body):
    """The HTTP cap's answer: 503 {"message","code"}, then the connection closes."""
    body = json.loads(body)
    assert r.status == 503 and body == {"message": "too many connections", "code": 503}, (r.status, body)
    assert (r.getheader("Connection") or "").lower() == "close", r.getheaders()
    c.close()


@test
def http_connections_capped_per_address():
    dep = Deployment()
    srv = dep.start("--http-max-connections", "32")     # 2 per address
    conns = []
    for _ in range(2):
        c, r, _ = peers_on(srv, dep)
        assert r.status == 200, r.status
        conns.append(c)
    assert_refused(*peers_on(srv, dep))
    assert labelled(srv, "netbird_cp_connections_refused_total", listener="http") >= 1
    # Once one closes, the address gets a connection again.
    conns[0].close()
    def fresh_ok():
        c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
        try:
            return peers_on(srv, dep, c)[1].status == 200
        finally:
            c.close()
    wait_until(fresh_ok, timeout=20, what="a connection again once one closed")


@test
def http_connections_capped():
    dep = Deployment()
    srv = dep.start("--http-max-connections", "1")
    first, r, _ = peers_on(srv, dep)
    assert r.status == 200, r.status
    assert_refused(*peers_on(srv, dep))
    # Probes are answered over the cap.
    assert svc.http("GET", srv.url("/healthz"))[0] == 200
    # The first connection keeps working.
    r = peers_on(srv, dep, first)[1]
    assert r.status == 200, r.status
    assert labelled(srv, "netbird_cp_connections_refused_total", listener="http") >= 1
    first.close()
    wait_until(lambda: rest(srv, "GET", "/api/peers", dep.admin_token)[0] == 200, timeout=20,
               what="a new connection once the first closed")


@test
def defaults_are_reported():
    """The options are in --help with their defaults."""
    r = svc.run(["management", "--help"])
    for flag in ("--login-rate", "--login-burst", "--setup-key-rate", "--setup-key-burst", "--rest-rate",
                 "--rest-burst", "--rest-auth-failure-rate", "--rest-auth-failure-burst", "--rate-limit-keys",
                 "--grpc-max-streams-per-connection", "--grpc-max-connections", "--http-max-connections"):
        assert flag in r.out + r.err, flag


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
