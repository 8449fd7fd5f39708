"""deploy/dev/up and deploy/dev/down, run for real into a private state
directory (CP_DEV_DIR) with the binaries of this build (CP_DEV_BUILD_DIR):
cluster.env is complete, psql on PG_DSN shows the schema, an agent
registers and syncs through MGMT_GRPC, a second `up` changes nothing, and
`down` stops exactly the processes `up` started. With --replicas 3, nginx
balances gRPC and HTTP over the replicas and an agent registers and syncs
through it. With --oidc and --config, the dev OIDC provider (deploy/oidc)
answers, cluster.env names its issuer, clients and users, and the replicas
run with the operator's management.json plus the provider's HttpConfig and
agent flows; alice and bob sign in with a real PKCE flow and their access
tokens (and refreshed ones) work on /api/users/current through nginx and on
every replica, and at the provider's userinfo.

Needs nothing from the network: everything listens on 127.0.0.1, and
deploy/install-deps finds its packages installed (tests/run installs nginx
with WITH_NGINX=1; without /usr/sbin/nginx the three-replica case skips).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import jwt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "api"))
sys.path.insert(0, os.path.join(HERE, "..", "idp"))

import fixture  # noqa: E402
import svc  # noqa: E402
from fixture import wait_until  # noqa: E402
from nbagent import Agent, build_meta  # noqa: E402
from svc import test  # noqa: E402
from apifix import Api  # noqa: E402
import proxyclient as pc  # noqa: E402
import oidcflow  # noqa: E402

UP = os.path.join(ROOT, "deploy", "dev", "up")
DOWN = os.path.join(ROOT, "deploy", "dev", "down")
NGINX = "/usr/sbin/nginx"
# One up or down (and the clean-up's down --purge), generous for ASan where
# every replica starts slowly. The meson timeout of service-devcluster
# (tests/service/meson.build) is sized from it.
SCRIPT_TIMEOUT = 120
# DevCluster's reaper (sh -c; $0 is deploy/dev/down, $1 the base directory):
# waits for EOF on stdin, then stops and deletes what up made. The output
# stays, with the directory, only when down fails.
REAPER = """cat >/dev/null
rc=0
if [ -d "$1/dev" ]; then "$0" --purge >"$1/down-purge.out" 2>&1 || rc=$?; fi
[ $rc != 0 ] || rm -rf "$1"
exit $rc"""


# ---- helpers -------------------------------------------------------------------

def build_dir():
    """The meson build directory of the binary under test
    (<build>/services/management/netbird-mgmt)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(svc.BINARY))))


class DevCluster:
    """One private state directory for deploy/dev/up and down."""

    def __init__(self):
        svc.needs_db()          # tests/run's servers stand for "everything else"
        # Under /tmp with mode 711: the PostgreSQL user must reach it when
        # we run as root (deploy/lib/cluster.sh, cl_pg_dir_usable).
        self.base = tempfile.mkdtemp(prefix="cp-devtest-", dir="/tmp")
        os.chmod(self.base, 0o711)
        self.dir = os.path.join(self.base, "dev")
        self.runs = 0
        # The daemons up starts are in sessions of their own: nothing but
        # down stops them. The reaper runs down --purge (and removes base)
        # once our end of its stdin closes: in cleanup, or when this process
        # dies however it dies. Meson's timeout is SIGTERM to our process
        # group and SIGKILL half a second later; the reaper, in a session of
        # its own, sees neither.
        self.reaper = subprocess.Popen(["sh", "-c", REAPER, DOWN, self.base], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env(),
                                       start_new_session=True)
        svc.defer(self.cleanup)

    def env(self, extra=None):
        e = {"CP_DEV_DIR": self.dir, "CP_DEV_BUILD_DIR": build_dir()}
        e.update(extra or {})
        return svc.clean_env(e)

    def script(self, path, *args, env=None):
        """Runs a script with its output in a file (daemons it starts must
        not hold a pipe of ours); returns (exit status, output)."""
        self.runs += 1
        out = os.path.join(self.base, "run-%d.out" % self.runs)
        with open(out, "w") as f:
            p = subprocess.run([path] + list(args), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                               env=self.env(env), timeout=SCRIPT_TIMEOUT)
        with open(out) as f:
            return p.returncode, f.read()

    def up(self, *args):
        rc, out = self.script(UP, *args)
        assert rc == 0, "deploy/dev/up %s failed (%d):\n%s%s" % (" ".join(args), rc, out[-6000:], self.logs())
        return self.cluster_env()

    def down(self, *args):
        rc, out = self.script(DOWN, *args)
        assert rc == 0, "deploy/dev/down failed (%d):\n%s" % (rc, out[-4000:])
        return out

    def cluster_env(self):
        with open(os.path.join(self.dir, "cluster.env")) as f:
            return fixture.parse_env_output(f.read())

    def logs(self):
        text = ""
        for name in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []:
            if name.startswith("replica-") and name.endswith((".log", ".out")):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += "\n--- %s\n%s" % (name, f.read()[-2000:])
        return text

    def sanitizer_clean(self):
        for name in os.listdir(self.dir):
            if name.startswith("replica-") and name.endswith(".out"):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    svc.check_sanitizer_clean(f.read())

    def cleanup(self):
        """Lets the reaper run down --purge and remove the directory."""
        self.reaper.stdin.close()
        rc = self.reaper.wait(SCRIPT_TIMEOUT)
        if rc != 0:
            with open(os.path.join(self.base, "down-purge.out"), errors="replace") as f:
                text = f.read()
            shutil.rmtree(self.base, ignore_errors=True)
            raise AssertionError("deploy/dev/down --purge failed (%d):\n%s" % (rc, text[-4000:]))


def alive(pid):
    """A live process (not a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid):
    """pid and every process below it, from /proc."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def started_pids(env, replicas):
    """The pids cluster.env records: {name: pid}."""
    names = ["PG_PID", "REDIS_PID"] + ["REPLICA_%d_PID" % i for i in range(1, replicas + 1)]
    for n in ("LB_PID", "OIDC_PID"):
        if n in env:
            names.append(n)
    return {n: int(env[n]) for n in names}


def check_env(env, replicas):
    for k in ("MGMT_GRPC", "MGMT_HTTP", "PG_DSN", "REDIS_URL", "SETUP_KEY", "ADMIN_TOKEN", "ACCOUNT_ID"):
        assert env.get(k), "cluster.env has no %s: %r" % (k, env)
    assert env["PG_DSN"].startswith("postgresql://postgres@127.0.0.1:"), env["PG_DSN"]
    assert env["REDIS_URL"].startswith("redis://127.0.0.1:"), env["REDIS_URL"]
    assert env["MGMT_GRPC"].startswith("127.0.0.1:") and env["MGMT_HTTP"].startswith("http://127.0.0.1:"), env
    assert env.get("REPLICAS") == str(replicas), env
    for i in range(1, replicas + 1):
        for k in ("GRPC", "HTTP", "PID"):
            assert env.get("REPLICA_%d_%s" % (i, k)), "cluster.env has no REPLICA_%d_%s: %r" % (i, k, env)
        pid = int(env["REPLICA_%d_PID" % i])
        assert alive(pid) and "netbird-mgmt" in cmdline(pid), (i, pid, cmdline(pid))
        status, _, body = svc.http("GET", env["REPLICA_%d_HTTP" % i] + "/healthz")
        assert status == 200, (i, status, body)
    assert "REPLICA_%d_PID" % (replicas + 1) not in env, env
    for name, pid in started_pids(env, replicas).items():
        assert alive(pid), "%s %d is not running" % (name, pid)
    status, _, _ = svc.http("GET", env["MGMT_HTTP"] + "/readyz")
    assert status == 200, status


def check_schema(env):
    """psql on PG_DSN, as an operator would run it, lists the tables."""
    psql = os.path.join(env["PG_BINDIR"], "psql") if env.get("PG_BINDIR") else "psql"
    r = subprocess.run([psql, "-X", "-At", env["PG_DSN"], "-c", r"\dt"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    tables = {line.split("|")[1] for line in r.stdout.splitlines() if line.count("|") >= 2}
    for t in ("accounts", "peers", "groups", "policies", "setup_keys", "personal_access_tokens", "replicas"):
        assert t in tables, (t, sorted(tables))
    r = subprocess.run([psql, "-X", "-At", env["PG_DSN"], "-c", "SELECT count(*) FROM accounts"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "1", (r.stdout, r.stderr)


def register_and_sync(env, name):
    """Two agents register through MGMT_GRPC; the first one's Sync stream
    gets its map and then the second one in a push."""
    a = Agent(env["MGMT_GRPC"])
    svc.defer(a.close)
    login = a.register(env["SETUP_KEY"], meta=build_meta(name + "-a"))
    assert login.peerConfig.address, login
    s = a.sync(meta=build_meta(name + "-a"))
    first = s.next(timeout=20)
    assert first.HasField("netbirdConfig") and first.NetworkMap.Serial > 0, first
    assert first.peerConfig.address == login.peerConfig.address, (first.peerConfig, login.peerConfig)
    b = Agent(env["MGMT_GRPC"])
    svc.defer(b.close)
    b.register(env["SETUP_KEY"], meta=build_meta(name + "-b"))
    push = s.wait_for(lambda m: b.pub_b64 in {p.wgPubKey for p in m.NetworkMap.remotePeers}, timeout=20)
    assert push.NetworkMap.Serial > first.NetworkMap.Serial, (first.NetworkMap.Serial, push.NetworkMap.Serial)
    return a, s


def decoys():
    """Processes named like the ones down stops, which down must leave
    alone (it stops recorded pids, never by name)."""
    procs = []
    for name in ("netbird-mgmt management", "nginx: master process", "redis-server 127.0.0.1:1", "postgres"):
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 600', name], stdin=subprocess.DEVNULL)
        procs.append(p)
        svc.defer(lambda p=p: (p.kill(), p.wait(5)))
    return procs


def check_down_stopped_exactly(dc, env, replicas):
    pids = started_pids(env, replicas)
    tree = set()
    for pid in pids.values():
        tree |= descendants(pid)            # nginx workers, PostgreSQL backends
    dummies = decoys()
    out = dc.down()
    for name, pid in pids.items():
        assert not alive(pid), "%s %d still runs after down:\n%s" % (name, pid, out)
    left = [p for p in tree if alive(p)]
    assert not left, "children of what up started still run: %r" % [(p, cmdline(p)) for p in left]
    for p in dummies:
        assert p.poll() is None, "down stopped a process it did not start: %r" % p.args
    # tests/run's own PostgreSQL is still there.
    assert svc.query(svc.PG_DSN, "SELECT 1") == [(1,)]
    assert not os.path.exists(os.path.join(dc.dir, "cluster.env")), "down leaves no cluster.env"
    dc.sanitizer_clean()


def log_lines(path, pred):
    with open(path, errors="replace") as f:
        out = []
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if pred(obj):
                out.append(obj)
        return out


def api_requests(base):
    """GET requests to the REST API this replica served, from its /metrics."""
    status, _, body = svc.http("GET", base + "/metrics")
    assert status == 200, status
    n = 0
    for line in body.decode().splitlines():
        if line.startswith("netbird_cp_http_requests_total{") and 'method="GET"' in line and "/api/" in line:
            n += int(float(line.rsplit(" ", 1)[1]))
    return n


# ---- tests ---------------------------------------------------------------------------

@test
def one_replica_up_twice_then_down():
    dc = DevCluster()
    env = dc.up()
    check_env(env, 1)
    assert env["MGMT_GRPC"] == env["REPLICA_1_GRPC"] and env["MGMT_HTTP"] == env["REPLICA_1_HTTP"], env
    assert "LB_PID" not in env, env
    check_schema(env)
    r = subprocess.run(["redis-cli", "-u", env["REDIS_URL"], "ping"], capture_output=True, text=True, timeout=10)
    assert r.stdout.strip() == "PONG", (r.stdout, r.stderr)
    agent, stream = register_and_sync(env, "dev1")

    # Again: nothing new, nothing restarted; the open stream is untouched.
    again = dc.up()
    for k in ("MGMT_GRPC", "MGMT_HTTP", "PG_DSN", "REDIS_URL", "ACCOUNT_ID", "SETUP_KEY", "ADMIN_TOKEN",
              "REPLICA_1_GRPC", "REPLICA_1_HTTP", "REPLICA_1_PID", "PG_PID", "REDIS_PID"):
        assert again[k] == env[k], (k, env[k], again[k])
    check_schema(again)                     # still exactly one account
    assert stream.ended is None and stream.q.empty(), "the second up disturbed an open stream"
    agent.close()

    check_down_stopped_exactly(dc, env, 1)
    # Down twice is fine, and up after down brings back the same account.
    dc.down()
    back = dc.up()
    assert back["ACCOUNT_ID"] == env["ACCOUNT_ID"] and back["SETUP_KEY"] == env["SETUP_KEY"], back
    assert back["REPLICA_1_PID"] != env["REPLICA_1_PID"], back
    check_schema(back)
    check_down_stopped_exactly(dc, back, 1)


def operator_through_the_load_balancer(env, a, stream, c):
    """Issue 5's acceptance: an operator creates groups, a policy, a route
    and a setup key over REST through the load balancer (each request may
    land on any replica) and the stream held through nginx gets the maps."""
    api = Api(env["MGMT_HTTP"], env["ADMIN_TOKEN"])
    peers = {p["name"]: p["id"] for p in api.ok("GET", "/api/peers")}
    assert {"dev3-a", "dev3-c"} <= set(peers), peers
    a_id, c_id = peers["dev3-a"], peers["dev3-c"]
    ga = api.ok("POST", "/api/groups", {"name": "ops", "peers": [a_id]})
    gc = api.ok("POST", "/api/groups", {"name": "db", "peers": [c_id]})
    for pol in api.ok("GET", "/api/policies"):
        api.ok("DELETE", "/api/policies/" + pol["id"])
    api.ok("POST", "/api/policies", {"name": "ssh-to-db", "enabled": True, "rules": [
        {"name": "ssh", "enabled": True, "action": "accept", "bidirectional": False, "protocol": "tcp",
         "ports": ["22"], "sources": [ga["id"]], "destinations": [gc["id"]]}]})
    stream.wait_for(lambda m: {p.wgPubKey for p in m.NetworkMap.remotePeers} == {c.pub_b64}
                    and any(r.Port == "22" for r in m.NetworkMap.FirewallRules), timeout=20)
    route = api.ok("POST", "/api/routes", {"description": "lan", "network_id": "lan", "enabled": True,
                                          "peer": c_id, "network": "10.77.0.0/16", "metric": 100,
                                          "masquerade": True, "groups": [ga["id"]], "keep_route": False})
    stream.wait_for(lambda m: any(r.Network == "10.77.0.0/16" for r in m.NetworkMap.Routes), timeout=20)
    key = api.ok("POST", "/api/setup-keys", {"name": "ops", "type": "one-off", "expires_in": 3600,
                                            "auto_groups": [ga["id"]], "usage_limit": 1})
    d = Agent(env["MGMT_GRPC"])
    svc.defer(d.close)
    d.register(key["key"], meta=build_meta("dev3-d"))
    d_peer = [p for p in api.ok("GET", "/api/peers") if p["name"] == "dev3-d"][0]
    assert ga["id"] in {g["id"] for g in d_peer["groups"]}, d_peer
    api.ok("DELETE", "/api/routes/" + route["id"])
    stream.wait_for(lambda m: not any(r.Network == "10.77.0.0/16" for r in m.NetworkMap.Routes), timeout=20)
    d.close()


def proxy_through_the_load_balancer(env):
    """Issue 12's acceptance: a reverse proxy that knows only NetBird's
    proto, every call through nginx (any replica): it syncs its mappings,
    gets a service made over REST, authenticates a user with the service's
    password and validates tunnel peers by their NetBird IPs."""
    api = Api(env["MGMT_HTTP"], env["ADMIN_TOKEN"])
    tok = api.ok("POST", "/api/reverse-proxies/proxy-tokens", {"name": "edge"})
    p = pc.Proxy(env["MGMT_GRPC"], tok["plain_token"])
    svc.defer(p.close)
    s = p.sync()
    svc.defer(s.close)
    cluster = "edge.dev.test"
    s.send_init("edge-1", cluster, pc.caps(supports_custom_ports=True))
    assert pc.snapshot(s)[0] == []
    peers = {x["name"]: x for x in api.ok("GET", "/api/peers")}
    ops = [g for g in api.ok("GET", "/api/groups") if g["name"] == "ops"][0]
    svc_ = api.ok("POST", "/api/reverse-proxies/services", {
        "name": "app", "domain": "app." + cluster, "enabled": True,
        "targets": [{"target_id": peers["dev3-a"]["id"], "target_type": "peer", "protocol": "http",
                     "port": 8080, "enabled": True}],
        "auth": {"password_auth": {"enabled": True, "password": "s3cret-pass"},
                 "bearer_auth": {"enabled": True, "distribution_groups": [ops["id"]]}}})
    _, r = s.next(timeout=20)
    m = r.mapping[0]
    assert (m.id, m.type, m.domain) == (svc_["id"], pc.pb.UPDATE_TYPE_CREATED, "app." + cluster), r
    assert [x.target for x in m.path] == ["http://%s:8080/" % peers["dev3-a"]["ip"]], m.path
    assert m.auth.password and m.auth.oidc and m.auth.session_key and m.auth_token
    s.send_ack()
    acc = env["ACCOUNT_ID"]
    bad = p.unary("Authenticate", pc.pb.AuthenticateRequest(
        id=svc_["id"], account_id=acc, password=pc.pb.PasswordRequest(password="wrong")), pc.pb.AuthenticateResponse)
    assert not bad.success and not bad.session_token
    good = p.unary("Authenticate", pc.pb.AuthenticateRequest(
        id=svc_["id"], account_id=acc, password=pc.pb.PasswordRequest(password="s3cret-pass")),
        pc.pb.AuthenticateResponse)
    assert good.success and good.session_token.count(".") == 2, good
    # dev3-a is in the service's group "ops", dev3-c is not.
    ok = p.unary("ValidateTunnelPeer", pc.pb.ValidateTunnelPeerRequest(
        tunnel_ip=peers["dev3-a"]["ip"], domain="app." + cluster), pc.pb.ValidateTunnelPeerResponse)
    assert ok.valid and ok.session_token and ops["id"] in ok.peer_group_ids, ok
    no = p.unary("ValidateTunnelPeer", pc.pb.ValidateTunnelPeerRequest(
        tunnel_ip=peers["dev3-c"]["ip"], domain="app." + cluster), pc.pb.ValidateTunnelPeerResponse)
    assert not no.valid and no.denied_reason == "not_in_group", no
    none = p.unary("ValidateTunnelPeer", pc.pb.ValidateTunnelPeerRequest(
        tunnel_ip="100.127.255.254", domain="app." + cluster), pc.pb.ValidateTunnelPeerResponse)
    assert not none.valid and none.denied_reason == "peer_not_found", none
    print("# proxy through nginx: mapping %s, password session, tunnel peers valid/%s/%s"
          % (m.domain, no.denied_reason, none.denied_reason), flush=True)
    s.close()


@test
def three_replicas_behind_nginx():
    if not os.access(NGINX, os.X_OK):
        raise svc.Skip("nginx not installed (tests/run installs it: WITH_NGINX=1 deploy/install-deps)")
    dc = DevCluster()
    env = dc.up("--replicas", "3")
    check_env(env, 3)
    lb_pid = int(env["LB_PID"])
    assert alive(lb_pid) and "nginx" in cmdline(lb_pid), cmdline(lb_pid)
    assert env["MGMT_GRPC"] == env["LB_GRPC"] and env["MGMT_HTTP"] == env["LB_HTTP"], env
    replica_grpc = {env["REPLICA_%d_GRPC" % i] for i in (1, 2, 3)}
    assert len(replica_grpc) == 3 and env["MGMT_GRPC"] not in replica_grpc, env
    check_schema(env)

    # Through the load balancer: register, sync, see the other agent (its
    # registration may land on another replica: the bus carries it).
    agent, stream = register_and_sync(env, "dev3")
    # Each call is one HTTP/2 request that nginx balances round robin, so
    # a few logins reach every replica.
    for _ in range(9):
        agent.login(meta=build_meta("dev3-a"))
    logs = {i: env["REPLICA_%d_LOG" % i] for i in (1, 2, 3)}

    def logins_everywhere():
        return all(log_lines(p, lambda o: o.get("msg") == "rpc" and o.get("method") == "Login")
                   for p in logs.values())
    wait_until(logins_everywhere, timeout=10, what="Login calls on every replica")
    # HTTP as well: each replica counts the REST requests it served in its
    # own /metrics (asked directly, not through nginx).
    hdr = {"Authorization": "Token " + env["ADMIN_TOKEN"]}
    for _ in range(9):
        status, _, body = svc.http("GET", env["MGMT_HTTP"] + "/api/groups", headers=hdr)
        assert status == 200, (status, body)
    served = {i: api_requests(env["REPLICA_%d_HTTP" % i]) for i in (1, 2, 3)}
    assert all(n > 0 for n in served.values()) and sum(served.values()) == 9, served
    # The stream through nginx still follows changes.
    c = Agent(env["MGMT_GRPC"])
    svc.defer(c.close)
    c.register(env["SETUP_KEY"], meta=build_meta("dev3-c"))
    stream.wait_for(lambda m: c.pub_b64 in {p.wgPubKey for p in m.NetworkMap.remotePeers}, timeout=20)

    operator_through_the_load_balancer(env, agent, stream, c)
    proxy_through_the_load_balancer(env)

    again = dc.up("--replicas", "3")
    for k in ("MGMT_GRPC", "MGMT_HTTP", "ACCOUNT_ID", "LB_PID", "PG_PID", "REDIS_PID") + tuple(
            "REPLICA_%d_%s" % (i, k) for i in (1, 2, 3) for k in ("GRPC", "HTTP", "PID")):
        assert again[k] == env[k], (k, env[k], again[k])
    check_schema(again)
    assert stream.ended is None, "the second up ended a stream through nginx: %r" % (stream.ended,)
    agent.close()
    c.close()
    check_down_stopped_exactly(dc, env, 3)


@test
def replicas_without_nginx_is_an_error():
    """--replicas N > 1 without nginx stops with a clear error, before
    anything is started, instead of handing out replica 1 as MGMT_GRPC."""
    st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "nginx-light"], capture_output=True, text=True)
    if st.stdout != "install ok installed":
        # deploy/install-deps would try to install it first.
        raise svc.Skip("nginx-light not installed")
    dc = DevCluster()
    missing = os.path.join(dc.base, "no-nginx")
    rc, out = dc.script(UP, "--replicas", "2", env={"CP_DEV_NGINX": missing})
    assert rc != 0, out
    assert "--replicas 2 needs nginx" in out and missing in out, out
    assert not os.path.exists(os.path.join(dc.dir, "cluster.env")), out
    assert not any(n.endswith(".pid") for n in os.listdir(dc.dir)), os.listdir(dc.dir)
    assert not os.path.exists(os.path.join(dc.dir, "pg-base")), "PostgreSQL was set up anyway"


# The dashboard's origin in the OIDC case; nothing listens there.
DASH_ORIGIN = "http://127.0.0.1:9"
OIDC_KEYS = ("OIDC_ISSUER", "OIDC_DISCOVERY", "OIDC_AUDIENCE", "OIDC_CLIENT_ID", "OIDC_AGENT_CLIENT_ID",
             "OIDC_PID", "OIDC_LOG", "OIDC_USER_1", "OIDC_PASSWORD_1", "OIDC_SUB_1", "OIDC_EMAIL_1",
             "OIDC_USER_2", "OIDC_PASSWORD_2", "OIDC_SUB_2", "OIDC_EMAIL_2")


def users_current(base, token):
    status, _, body = svc.http_json("GET", base + "/api/users/current",
                                    headers={"Authorization": "Bearer " + token})
    return status, body


def check_signed_in_users(env, disc):
    """The dashboard's sign-in, for real, against the cluster: each user's
    access token from the code + PKCE flow on GET /api/users/current,
    first through MGMT_HTTP (nginx with several replicas), then on every
    replica directly; the same token at the provider's userinfo, from the
    dashboard's origin, as the dashboard's OIDC library sends it; then a
    refresh_token grant and the new access token everywhere too. alice is
    the bootstrap account's owner (her sub is its USER_ID); bob, unknown
    until now, joins that account as a regular user (single-account mode,
    approval off in an account the CLI made)."""
    iss = env["OIDC_ISSUER"]
    bases = [env["MGMT_HTTP"]] + [env["REPLICA_%d_HTTP" % i] for i in range(1, int(env["REPLICAS"]) + 1)]
    for n, role in ((1, "owner"), (2, "user")):
        sub, email = env["OIDC_SUB_%d" % n], env["OIDC_EMAIL_%d" % n]
        tok = oidcflow.login(iss, env["OIDC_USER_%d" % n], env["OIDC_PASSWORD_%d" % n], env["OIDC_CLIENT_ID"],
                             DASH_ORIGIN + "/nb-auth", audience=env["OIDC_AUDIENCE"])
        key = jwt.PyJWKClient(disc["jwks_uri"]).get_signing_key_from_jwt(tok["access_token"])
        claims = jwt.decode(tok["access_token"], key.key, algorithms=["RS256"], audience=env["OIDC_AUDIENCE"],
                            issuer=iss)
        assert claims["sub"] == sub and claims["email"] == email, claims
        refreshed = oidcflow.refresh(iss, env["OIDC_CLIENT_ID"], tok["refresh_token"])
        assert refreshed["access_token"] != tok["access_token"], "the refresh gave the same access token"
        for what, token in (("sign-in", tok["access_token"]), ("refresh", refreshed["access_token"])):
            for base in bases:
                status, me = users_current(base, token)
                assert status == 200, (what, env["OIDC_USER_%d" % n], base, status, me)
                assert me["id"] == sub and me["role"] == role and me["email"] == email, (what, base, me)
                assert me["is_current"] is True and me["status"] == "active", (what, base, me)
            status, headers, info = svc.http_json("GET", disc["userinfo_endpoint"], headers={
                "Authorization": "Bearer " + token, "Origin": DASH_ORIGIN})
            assert status == 200 and info["sub"] == sub and info["email"] == email, (what, status, info)
            assert headers.get("Access-Control-Allow-Origin") == DASH_ORIGIN, headers
    # Both in the bootstrap account: its owner's PAT lists them.
    owner = Api(env["MGMT_HTTP"], env["ADMIN_TOKEN"])
    users = {u["id"]: u for u in owner.ok("GET", "/api/users")}
    assert users[env["OIDC_SUB_1"]]["role"] == "owner", users
    bob = users[env["OIDC_SUB_2"]]
    assert bob["role"] == "user" and bob["email"] == env["OIDC_EMAIL_2"] and not bob["pending_approval"], bob


def check_oidc(env):
    """cluster.env's OIDC keys, the provider behind them, the replicas'
    management.json, the flows agents are given, and a real sign-in."""
    for k in OIDC_KEYS + ("MGMT_CONFIG",):
        assert env.get(k), "cluster.env has no %s: %r" % (k, sorted(env))
    iss = env["OIDC_ISSUER"]
    assert iss.startswith("http://127.0.0.1:"), iss
    disc = oidcflow.get_json(env["OIDC_DISCOVERY"])
    assert disc["issuer"] == iss and disc["jwks_uri"] == iss + "/jwks", disc
    pid = int(env["OIDC_PID"])
    assert alive(pid) and "oidc/server.js" in cmdline(pid), cmdline(pid)
    with open(env["MGMT_CONFIG"]) as f:
        cfg = json.load(f)
    h = cfg["HttpConfig"]
    assert h["AuthIssuer"] == iss and h["AuthAudience"] == env["OIDC_AUDIENCE"], h
    assert h["AuthKeysLocation"] == disc["jwks_uri"] and h["AuthUserIDClaim"] == "sub", h
    assert h["OIDCConfigEndpoint"] == env["OIDC_DISCOVERY"] and h["IdpSignKeyRefreshEnabled"] is True, h
    for i in range(1, int(env["REPLICAS"]) + 1):
        rid = int(env["REPLICA_%d_PID" % i])
        assert "--config " + env["MGMT_CONFIG"] in cmdline(rid), (i, cmdline(rid))
    # alice is the bootstrap account's owner.
    assert env["OIDC_USER_1"] == "alice" and env["OIDC_SUB_1"] == env["USER_ID"], env
    # Every replica fetched the provider's keys (OIDCConfigEndpoint, then
    # its jwks_uri) and is ready, not degraded "idp".
    nkeys = len(oidcflow.get_json(disc["jwks_uri"])["keys"])
    for i in range(1, int(env["REPLICAS"]) + 1):
        base = env["REPLICA_%d_HTTP" % i]

        def keys_loaded():
            return "netbird_cp_jwt_signing_keys %d" % nkeys in svc.http("GET", base + "/metrics")[2].decode()
        wait_until(keys_loaded, timeout=20, what="replica %d loading the provider's signing keys" % i)
        status, _, body = svc.http("GET", base + "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready", (i, status, body)
    # What the replica tells agents comes from that file.
    a = Agent(env["MGMT_GRPC"])
    svc.defer(a.close)
    login = a.register(env["SETUP_KEY"], meta=build_meta("oidc-a"))
    pkce = a.pkce_flow().ProviderConfig
    assert pkce.ClientID == env["OIDC_AGENT_CLIENT_ID"] and pkce.Audience == env["OIDC_AUDIENCE"], pkce
    assert pkce.AuthorizationEndpoint == disc["authorization_endpoint"], pkce
    assert pkce.TokenEndpoint == disc["token_endpoint"], pkce
    assert "http://localhost:53000/" in pkce.RedirectURLs and not pkce.UseIDToken, pkce
    dev = a.device_flow().ProviderConfig
    assert dev.DeviceAuthEndpoint == disc["device_authorization_endpoint"], dev
    a.close()
    # Both users sign in through the dashboard's client and use the API.
    check_signed_in_users(env, disc)
    return login


@test
def oidc_provider_and_operator_config():
    if not os.path.isdir(os.path.join(ROOT, "deploy", "oidc", "node_modules", "oidc-provider")):
        raise svc.Skip("deploy/oidc/node_modules missing (deploy/oidc/install; tests/run runs it)")
    dc = DevCluster()
    op = os.path.join(dc.base, "operator.json")
    with open(op, "w") as f:
        # The operator's keys stay; up's auth keys replace theirs whatever
        # their case.
        json.dump({"Stuns": [{"Proto": "udp", "URI": "stun:stun.example.net:3478"}],
                   "HttpConfig": {"authaudience": "theirs", "AuthIssuer": "https://idp.example"}}, f)
    # Three replicas behind nginx, as the dashboard is tried against
    # (one without nginx).
    n = 3 if os.access(NGINX, os.X_OK) else 1
    args = ("--replicas", str(n), "--oidc", "--dashboard-origin", DASH_ORIGIN, "--config", op)
    env = dc.up(*args)
    check_env(env, n)
    login = check_oidc(env)
    assert [s.uri for s in login.netbirdConfig.stuns] == ["stun:stun.example.net:3478"], login.netbirdConfig
    with open(env["MGMT_CONFIG"]) as f:
        h = json.load(f)["HttpConfig"]
    assert "authaudience" not in h and h["AuthIssuer"] == env["OIDC_ISSUER"], h
    assert env["OIDC_DASHBOARD_ORIGINS"] == DASH_ORIGIN, env

    # Again: the provider and the replica are reused, the users the same.
    again = dc.up(*args)
    for k in OIDC_KEYS + ("MGMT_CONFIG",) + tuple("REPLICA_%d_PID" % i for i in range(1, n + 1)):
        assert again[k] == env[k], (k, env[k], again[k])

    # Without --oidc and --config: the provider stops, the replica restarts
    # without a management.json.
    plain = dc.up()
    assert not alive(int(env["OIDC_PID"])), "the OIDC provider still runs"
    assert not any(k.startswith("OIDC_") for k in plain) and "MGMT_CONFIG" not in plain, sorted(plain)
    assert plain["REPLICA_1_PID"] != env["REPLICA_1_PID"], "the replica kept its old configuration"
    assert "--config" not in cmdline(int(plain["REPLICA_1_PID"])), cmdline(int(plain["REPLICA_1_PID"]))
    check_env(plain, 1)
    gone = ["REPLICA_%d_PID" % i for i in range(2, n + 1)] + (["LB_PID"] if n > 1 else [])
    assert not any(alive(int(env[k])) for k in gone), [(k, env[k]) for k in gone if alive(int(env[k]))]

    # --oidc alone: the provider comes back with the same users and keys.
    back = dc.up("--oidc")
    for k in ("OIDC_USER_1", "OIDC_PASSWORD_1", "OIDC_SUB_1", "OIDC_PASSWORD_2"):
        assert back[k] == env[k], (k, env[k], back[k])
    assert back["OIDC_DASHBOARD_ORIGINS"] == "http://localhost:3000", back
    check_env(back, 1)
    check_down_stopped_exactly(dc, back, 1)


@test
def oidc_and_config_argument_errors():
    """Bad --dashboard-origin, --config or their combination: exit 2 with
    the reason, before anything is created."""
    dc = DevCluster()
    for args, needle in ((["--dashboard-origin", "http://127.0.0.1:9"], "--dashboard-origin needs --oidc"),
                         (["--oidc", "--dashboard-origin", "http://127.0.0.1:9/path"], "scheme://host[:port]"),
                         (["--oidc", "--dashboard-origin", "ftp://x"], "scheme://host[:port]"),
                         (["--config", os.path.join(dc.base, "missing.json")], "is not a readable file")):
        rc, out = dc.script(UP, *args)
        assert rc == 2 and needle in out, (args, rc, out[-2000:])
        assert not os.path.exists(dc.dir), (args, os.listdir(dc.dir))


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
