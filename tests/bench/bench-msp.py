"""bench-msp: an MSP's tenants at scale on a cluster of 2 replicas (issue
13, "Scale"): provisioning through the REST API, 5 connected agents per
tenant, replica memory per tenant, and the fan-out of a one-tenant change.

    tests/bench/run --only msp [--msp-tenants N]       (starts PostgreSQL)
    or by hand, with a PostgreSQL (and optionally a Redis):
    CP_TEST_PG_DSN="host=127.0.0.1 port=P user=postgres dbname=postgres" \\
        /usr/bin/python3 tests/bench/bench-msp.py build/services/management/netbird-mgmt \\
        [--tenants N] [--baseline M] [--changes K] [--provision api|admin] [--json]

For each size (the baseline M first, default 1,000, then N, default
10,000), in a fresh database, with the same Redis bus:
  1. `netbird-mgmt bootstrap` makes the MSP account (its owner's PAT), the
     account is made an MSP, its owner put in an "MSP admins" group; two
     `netbird-mgmt management` replicas start on loopback with --redis-url
     (log level warn); their VmRSS is read after one warm-up request each.
  2. Provisioning (`provision_api`): a bounded number of keep-alive HTTP/1.1
     connections (asyncio, --http-clients, default 8, over both replicas) each
     create tenants one after another: POST /api/integrations/msp/tenants,
     then POST /api/setup-keys?account=<tenant> (a reusable key). The figure
     is tenants/s and the time for all; the client's own CPU is printed (it
     must not be the bottleneck). `--provision admin` instead runs
     `netbird-cp-admin account create` per tenant (no MSP API: the stand-in
     used before the MSP API existed; not a figure for the target).
  3. netbird-load (services/load) registers 5 agents per tenant with the
     tenant's setup key (--setup-keys-file: agent i is tenant i mod N's, so
     the agents registering at the same moment are of different tenants),
     a tenant's 5 round-robin over the two replicas (--target-mode spread;
     --placement tenant puts them on one), and holds the Sync streams. Once all are open and 3 s passed, VmRSS again:
     memory per tenant = (sum of both replicas' RSS after - before) / tenants.
  4. K times (--changes, default 10), one peer of one tenant (a different
     tenant each time) is renamed with PUT /api/peers/{id}?account=<tenant>
     as the MSP owner; the time from sending it to the last of that
     tenant's 5 streams receiving a newer map (netbird-load's --report-file:
     receive times on CLOCK_MONOTONIC, the same clock as time.monotonic()).
     After each, every other stream is checked: none may have received
     anything, and the replicas' netbird_cp_fanout_maps_pushed_total must
     have grown by exactly 5 (the tenant's streams); the replicas' own
     netbird_cp_fanout_duration_seconds (commit -> maps queued) is printed.
Then the figures of N next to M and the targets: memory <= 100 KB per
tenant, N tenants provisioned in <= 60 s, fan-out at N / at M ~ 1.

Every process it starts (replicas, netbird-load, Redis when none is given in
CP_TEST_REDIS_URL) is stopped by its pid; every load is bounded in count and
time. Never fails on a slow machine: exit 1 only when something could not
run (a replica did not start, agents did not connect, a request failed).
--json prints one JSON line per size (the smoke test in tests/run reads it).
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))

import svc  # noqa: E402

PEERS_PER_TENANT = 5
TARGET_KB_PER_TENANT = 100.0
TARGET_PROVISION_S = 60.0          # for 10,000 tenants
OPEN_TIMEOUT_S = 900               # netbird-load's opening phase
CHANGE_TIMEOUT_S = 30.0
QUIET_AFTER_S = 1.5                # after a change: time for stray updates to show
FIRST_LOOK_S = 1.0                 # after a change: first report asked for then, not before
IDLE_S = 5.0


class BenchError(Exception):
    pass


def parse_env(text):
    """NAME=value lines (bootstrap's and account create's output)."""
    out = {}
    for line in text.splitlines():
        parts = shlex.split(line) if "=" in line else []
        if len(parts) == 1 and "=" in parts[0]:
            k, v = parts[0].split("=", 1)
            out[k] = v
    return out


def log(msg):
    print("bench-msp: " + msg, file=sys.stderr, flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_pid(proc, timeout=30):
    """SIGTERM, then SIGKILL after timeout; only the process we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ---- Redis: the one from tests/run, or our own ---------------------------------

def redis_url(tmp):
    if svc.REDIS_URL:
        return svc.REDIS_URL
    exe = shutil.which("redis-server")
    if not exe:
        raise BenchError("no CP_TEST_REDIS_URL and no redis-server installed")
    port = free_ports(1)[0]
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    svc.defer(stop_pid, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return "redis://127.0.0.1:%d" % port
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError("redis-server did not start")


# ---- replicas ------------------------------------------------------------------

class Replica:
    def __init__(self, name, env, tmp, redis):
        self.name = name
        self.grpc_port, self.http_port = free_ports(2)
        self.log_path = os.path.join(tmp, name + ".log")
        args = [svc.BINARY, "management", "--config=", "--listen-address", "127.0.0.1",
                "--port", str(self.grpc_port), "--http-port", str(self.http_port), "--shutdown-timeout", "5s",
                "--log-level", "warn", "--log-file", self.log_path, "--redis-url", redis]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=svc.clean_env(env))
        svc.defer(stop_pid, self.proc)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError("replica %s exited %s; log %s" % (name, self.proc.returncode, self.tail()))
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("replica %s did not answer /healthz in 60 s" % name)
            time.sleep(0.1)

    def tail(self):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-10:])
        except OSError:
            return "(no log)"

    @property
    def grpc(self):
        return "127.0.0.1:%d" % self.grpc_port

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def metrics(self):
        """{sample name: value} of the fan-out metrics."""
        out = {}
        with urllib.request.urlopen(self.url("/metrics"), timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(("netbird_cp_fanout_duration_seconds_sum", "netbird_cp_fanout_duration_seconds_count",
                                    "netbird_cp_fanout_maps_pushed_total")):
                    k, v = line.rsplit(" ", 1)
                    out[k] = float(v)
        return out


# ---- a small HTTP/1.1 client (keep-alive, one request at a time a connection) ----

class Conn:
    def __init__(self, port, token):
        self.port = port
        self.auth = "Token " + token
        self.r = self.w = None

    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\nAccept: application/json\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (method, path, self.auth, len(data)))
        self.w.write(head.encode() + data)
        await self.w.drain()
        status_line = await self.r.readline()
        if not status_line:
            raise BenchError("%s %s: connection closed" % (method, path))
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                n = int((await self.r.readline()).split(b";")[0], 16)
                if n == 0:
                    await self.r.readline()
                    break
                parts.append(await self.r.readexactly(n))
                await self.r.readline()
            payload = b"".join(parts)
        else:
            payload = await self.r.readexactly(length) if length else b""
        return status, payload

    async def close(self):
        if self.w:
            self.w.close()
            try:
                await self.w.wait_closed()
            except OSError:
                pass


def call_once(port, token, method, path, body=None):
    async def go():
        c = Conn(port, token)
        await c.open()
        try:
            return await c.call(method, path, body)
        finally:
            await c.close()
    return asyncio.run(go())


def check(status, payload, what, ok=(200,)):
    if status not in ok:
        raise BenchError("%s -> %d: %s" % (what, status, payload[:300].decode(errors="replace")))
    return json.loads(payload) if payload else None


# ---- provisioning --------------------------------------------------------------

SETUP_KEY_BODY = {"name": "agents", "type": "reusable", "expires_in": 86400, "auto_groups": [],
                  "usage_limit": 0, "ephemeral": False}


def provision_api(ctx, n, clients):
    """n tenants through the MSP API, `clients` connections over both
    replicas. Returns [(tenant id, setup key)] in tenant order."""
    out = [None] * n
    nxt = [0]

    async def worker(i):
        rep = ctx.replicas[i % len(ctx.replicas)]
        c = Conn(rep.http_port, ctx.token)
        await c.open()
        try:
            while nxt[0] < n:
                k = nxt[0]
                nxt[0] += 1
                name = "tenant-%05d" % k
                body = {"name": name, "domain": "%s.%s.bench.test" % (name, ctx.run_tag),
                        "groups": [{"id": ctx.msp_group, "role": "admin"}]}
                t = check(*await c.call("POST", "/api/integrations/msp/tenants", body), "create " + name,
                          ok=(200, 201))
                key = check(*await c.call("POST", "/api/setup-keys?account=" + t["id"], SETUP_KEY_BODY),
                            "setup key of " + name)
                out[k] = (t["id"], key["key"])
        finally:
            await c.close()

    async def main():
        await asyncio.gather(*(worker(i) for i in range(clients)))
    asyncio.run(main())
    return out


def provision_admin(ctx, n, clients):
    """The stand-in: `netbird-cp-admin account create` per tenant (no MSP
    API, no ?account=); the change then uses each tenant's own PAT."""
    out = [None] * n
    admin = os.environ.get("NETBIRD_ADMIN") or os.path.join(os.path.dirname(svc.BINARY), "..", "admin",
                                                            "netbird-cp-admin")
    procs = {}
    k = 0
    while k < n or procs:
        while k < n and len(procs) < clients:
            p = subprocess.Popen([admin, "account", "create", "--domain", "tenant-%05d.bench.test" % k],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=svc.clean_env(ctx.env))
            procs[p] = k
            k += 1
        p = next(iter(procs))
        so, se = p.communicate(timeout=120)
        i = procs.pop(p)
        if p.returncode != 0:
            raise BenchError("netbird-cp-admin account create: %s" % se.strip())
        v = parse_env(so)
        out[i] = (v["ACCOUNT_ID"], v["SETUP_KEY"])
        ctx.tenant_tokens[v["ACCOUNT_ID"]] = v["ADMIN_TOKEN"]
    return out


PROVISIONERS = {"api": provision_api, "admin": provision_admin}


class LockSampler:
    """Samples pg_stat_activity of the bench's database every 0.25 s in a
    thread while provisioning runs: how many of the replicas' backends are
    in a transaction, how many of those wait on a lock, and on which
    statement most often (where the provisioning time goes)."""

    def __init__(self, dsn):
        import psycopg2
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.stop = threading.Event()
        self.samples = self.busy = self.waiting = 0
        self.by_query = {}
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        q = ("SELECT wait_event_type, left(query, 70) FROM pg_stat_activity WHERE datname = current_database()"
             " AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'")
        while not self.stop.wait(0.25):
            with self.conn.cursor() as cur:
                cur.execute(q)
                rows = cur.fetchall()
            self.samples += 1
            self.busy += len(rows)
            for wait, query in rows:
                if wait == "Lock":
                    self.waiting += 1
                    self.by_query[query] = self.by_query.get(query, 0) + 1

    def finish(self):
        self.stop.set()
        self.t.join(10)
        self.conn.close()
        top = max(self.by_query.items(), key=lambda kv: kv[1])[0] if self.by_query else None
        return {"samples": self.samples,
                "busy_backends_mean": round(self.busy / self.samples, 1) if self.samples else None,
                "lock_waiting_mean": round(self.waiting / self.samples, 1) if self.samples else None,
                "lock_top_query": top}


# ---- one size ------------------------------------------------------------------

class Ctx:
    pass


def read_report(path):
    """[(updates, [receive times ms])] per peer index."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            parts = line.split()
            rows.append((int(parts[1]), [float(t) for t in parts[4:] if t != "-"]))
    return rows


def ask_report(load, path, timeout=30):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    load.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if load.poll() is not None or time.monotonic() > deadline:
            raise BenchError("netbird-load wrote no report")
        time.sleep(0.02)
    return read_report(path)


def fanout_metrics(replicas):
    tot = {"sum": 0.0, "count": 0.0, "maps": 0.0}
    for r in replicas:
        m = r.metrics()
        tot["sum"] += m.get("netbird_cp_fanout_duration_seconds_sum", 0)
        tot["count"] += m.get("netbird_cp_fanout_duration_seconds_count", 0)
        tot["maps"] += m.get("netbird_cp_fanout_maps_pushed_total", 0)
    return tot


def run_size(args, n, redis, tmp):
    loadavg0 = loadavg()
    ctx = Ctx()
    ctx.tenant_tokens = {}
    ctx.run_tag = secrets.token_hex(3)
    dsn, _ = svc.new_db()
    ctx.env = {"NB_STORE_ENGINE_POSTGRES_DSN": dsn,
               "NB_MGMT_DATA_STORE_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    r = svc.run(["bootstrap", "--config="], env=ctx.env, timeout=120)
    if r.rc != 0:
        raise BenchError("bootstrap failed: %s" % r.err.strip())
    v = parse_env(r.out)
    ctx.msp_account, ctx.token, ctx.user_id = v["ACCOUNT_ID"], v["ADMIN_TOKEN"], v["USER_ID"]
    # The MSP account: enabled as the operator's `netbird-cp-admin msp enable`
    # does, its owner in a group that every tenant maps to the admin role.
    ctx.msp_group = "mspadmins" + ctx.run_tag
    svc.execute(dsn, "UPDATE accounts SET msp_enabled_at = now() WHERE id = '%s';"
                     "INSERT INTO groups (id, account_id, name) VALUES ('%s', '%s', 'MSP admins');"
                     "UPDATE users SET auto_groups = array_append(auto_groups, '%s') WHERE id = '%s'"
                % (ctx.msp_account, ctx.msp_group, ctx.msp_account, ctx.msp_group, ctx.user_id))
    ctx.replicas = [Replica("r%d-%d" % (i + 1, n), ctx.env, tmp, redis) for i in range(2)]
    for rep in ctx.replicas:        # warm-up: the HTTP path, the pool, the PAT
        check(*call_once(rep.http_port, ctx.token, "GET", "/api/users/current"), "warm-up")
    time.sleep(1)
    rss0 = [rss_kb(rep.pid) for rep in ctx.replicas]
    cpu0 = [cpu_s(rep.pid) for rep in ctx.replicas]

    # -- provisioning
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    ruc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = LockSampler(dsn)
    t0 = time.monotonic()
    try:
        tenants = PROVISIONERS[args.provision](ctx, n, args.http_clients)
    finally:
        prov_s = time.monotonic() - t0
        locks = sampler.finish()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ruc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime +
                  ruc1.ru_utime + ruc1.ru_stime - ruc0.ru_utime - ruc0.ru_stime)
    cpu1 = [cpu_s(rep.pid) for rep in ctx.replicas]
    rss_prov = [rss_kb(rep.pid) for rep in ctx.replicas]
    log("%d tenants provisioned in %.1f s" % (n, prov_s))

    # -- agents
    keys_path = os.path.join(tmp, "setup-keys-%d" % n)
    with open(keys_path, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write("".join(k + "\n" for _, k in tenants))
    report = os.path.join(tmp, "report-%d" % n)
    ready = os.path.join(tmp, "ready-%d" % n)
    peers = n * PEERS_PER_TENANT
    conns = max(2, min(100, peers // 500 * 2))
    common = [args.load, "--quiet", "--target", ctx.replicas[0].grpc, "--target", ctx.replicas[1].grpc,
              "--setup-keys-file", keys_path, "--target-mode", "spread" if args.placement == "spread" else "key",
              "--peers", str(peers), "--connections", str(conns), "--concurrency", "128", "--retry",
              "--timeout", str(OPEN_TIMEOUT_S), "--keys-file", os.path.join(tmp, "peers-%d.keys" % n)]
    # Registration first (Login with the tenant's setup key, no stream) ...
    t0 = time.monotonic()
    reg = subprocess.run(common + ["--no-sync"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=OPEN_TIMEOUT_S + 120, env=svc.clean_env())
    reg_s = time.monotonic() - t0
    try:
        reg_sum = json.loads(reg.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("netbird-load (registration) printed no summary: %s" % reg.stderr[-2000:])
    if reg_sum["logged_in"] < peers:
        raise BenchError("only %d of %d agents registered: %s, %s" % (reg_sum["logged_in"], peers, reg_sum["errors"],
                                                                       reg.stderr[-2000:]))
    time.sleep(2)
    rss_reg = [rss_kb(rep.pid) for rep in ctx.replicas]
    cpu_reg = [cpu_s(rep.pid) for rep in ctx.replicas]
    log("%d agents registered in %.1f s" % (peers, reg_s))
    # ... then every agent's Sync stream, held.
    load_out = open(os.path.join(tmp, "load-%d.json" % n), "w")
    load_err = open(os.path.join(tmp, "load-%d.err" % n), "w")
    t0 = time.monotonic()
    load = subprocess.Popen(common + ["--sync-only", "--hold", "3600", "--ready-file", ready, "--report-file", report],
                            stdout=load_out, stderr=load_err, env=svc.clean_env())
    svc.defer(stop_pid, load, 120)
    while not os.path.exists(ready):
        if load.poll() is not None:
            raise BenchError("netbird-load ended before its streams were open: %s" % open(load_err.name).read()[-2000:])
        if time.monotonic() - t0 > OPEN_TIMEOUT_S + 60:
            raise BenchError("netbird-load not ready after %d s" % (OPEN_TIMEOUT_S + 60))
        time.sleep(0.2)
    open_s = time.monotonic() - t0
    with open(ready) as f:
        opened = int(f.read().split()[1])
    time.sleep(3)
    rss1 = [rss_kb(rep.pid) for rep in ctx.replicas]
    cpu2 = [cpu_s(rep.pid) for rep in ctx.replicas]
    # What the held streams cost when nothing changes: the replicas' CPU
    # over IDLE_S (heartbeats, serial checks, keepalives).
    time.sleep(IDLE_S)
    idle_cpu = [(cpu_s(rep.pid) - c) / IDLE_S for rep, c in zip(ctx.replicas, cpu2)]
    log("%d of %d streams open in %.1f s" % (opened, peers, open_s))
    if opened < peers:
        raise BenchError("only %d of %d agents connected: %s" % (opened, peers, open(load_err.name).read()[-2000:]))

    # -- one-tenant changes
    changes = []
    step = max(1, n // max(1, args.changes))
    for c in range(args.changes):
        k = (n // 2 + c * step) % n
        tid = tenants[k][0]
        token, q = ctx.token, "?account=" + tid
        if tid in ctx.tenant_tokens:
            token, q = ctx.tenant_tokens[tid], ""
        rep = ctx.replicas[c % 2]
        plist = check(*call_once(rep.http_port, token, "GET", "/api/peers" + q), "peers of tenant %d" % k)
        if len(plist) != PEERS_PER_TENANT:
            raise BenchError("tenant %d has %d peers, not %d" % (k, len(plist), PEERS_PER_TENANT))
        body = {"name": "renamed-%d" % c, "ssh_enabled": False, "login_expiration_enabled": False,
                "inactivity_expiration_enabled": False}
        time.sleep(0.3)
        before = ask_report(load, report)
        m0 = fanout_metrics(ctx.replicas)
        mine = set(k + j * n for j in range(PEERS_PER_TENANT))

        async def put():
            conn = Conn(rep.http_port, token)
            await conn.open()
            try:
                t_send = time.monotonic() * 1e3
                st, pl = await conn.call("PUT", "/api/peers/%s%s" % (plist[0]["id"], q), body)
                return t_send, time.monotonic() * 1e3, st, pl
            finally:
                await conn.close()
        t_send, t_resp, st, pl = asyncio.run(put())
        check(st, pl, "rename in tenant %d" % k)
        # netbird-load's one thread writes a report in tens of ms at 50,000
        # streams and receives nothing meanwhile: ask for none while the
        # change is on its way (times are taken at receipt, not here).
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        time.sleep(FIRST_LOOK_S)
        while True:
            now = ask_report(load, report)
            if all(now[i][0] > before[i][0] for i in mine) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(QUIET_AFTER_S)
        after = ask_report(load, report)
        m1 = fanout_metrics(ctx.replicas)
        got = [i for i in mine if after[i][0] > before[i][0]]
        firsts = []
        for i in got:
            ts = [t for t in after[i][1] if t >= t_send]
            if ts:
                firsts.append(min(ts))
        others = sum(1 for i in range(peers) if i not in mine and after[i][0] != before[i][0])
        changes.append({
            "tenant": k, "received": len(got), "others_touched": others,
            "last_ms": (max(firsts) - t_send) if len(firsts) == PEERS_PER_TENANT else None,
            "last_after_response_ms": max(0.0, max(firsts) - t_resp) if len(firsts) == PEERS_PER_TENANT else None,
            "put_ms": t_resp - t_send,
            "maps_pushed": m1["maps"] - m0["maps"],
            "server_fanouts": m1["count"] - m0["count"],
            "server_fanout_ms": ((m1["sum"] - m0["sum"]) / (m1["count"] - m0["count"]) * 1e3)
            if m1["count"] > m0["count"] else None,
        })

    rss2 = [rss_kb(rep.pid) for rep in ctx.replicas]
    load_cpu = cpu_s(load.pid)
    stop_pid(load, 120)
    load_out.close()
    load_err.close()
    summary = {}
    try:
        with open(load_out.name) as f:
            summary = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        pass
    for rep in ctx.replicas:
        stop_pid(rep.proc)

    lasts = [c["last_ms"] for c in changes if c["last_ms"] is not None]
    srv = [c["server_fanout_ms"] for c in changes if c["server_fanout_ms"] is not None]
    res = {
        "tenants": n, "peers": peers, "provision": args.provision, "http_clients": args.http_clients,
        "provision_s": round(prov_s, 3), "tenants_per_s": round(n / prov_s, 1) if prov_s else None,
        "client_cpu_s": round(client_cpu, 2), "provision_db": locks,
        "replica_cpu_provision_s": [round(b - a, 2) for a, b in zip(cpu0, cpu1)],
        "replica_cpu_register_s": [round(b - a, 2) for a, b in zip(cpu1, cpu_reg)],
        "replica_cpu_streams_s": [round(b - a, 2) for a, b in zip(cpu_reg, cpu2)],
        "replica_idle_cpu": [round(c, 3) for c in idle_cpu],
        "register_s": round(reg_s, 1), "registrations_per_s": round(peers / reg_s, 1),
        "register_errors": reg_sum.get("errors"), "register_retries": reg_sum.get("retries"),
        "rss_kb_registered": rss_reg,
        "kb_per_tenant_registered": round((sum(rss_reg) - sum(rss0)) / n, 1),
        "loadavg_start": loadavg0, "loadavg_end": loadavg(),
        "rss_kb_before": rss0, "rss_kb_provisioned": rss_prov, "rss_kb_connected": rss1, "rss_kb_end": rss2,
        "kb_per_tenant": round((sum(rss1) - sum(rss0)) / n, 1),
        "kb_per_tenant_provisioned_only": round((sum(rss_prov) - sum(rss0)) / n, 1),
        "streams_open": opened, "open_s": round(open_s, 1), "load_cpu_s": round(load_cpu, 1),
        "load_errors": summary.get("errors"), "load_retries": summary.get("retries"),
        "streams_ended_by_server": summary.get("streams_ended_by_server"),
        "placement": args.placement,
        "login_ms": reg_sum.get("login_ms"), "sync_open_ms": summary.get("sync_open_ms"),
        "changes": changes,
        "fanout_last_ms_p50": round(statistics.median(lasts), 1) if lasts else None,
        "fanout_last_ms_max": round(max(lasts), 1) if lasts else None,
        "server_fanout_ms_mean": round(statistics.mean(srv), 2) if srv else None,
        "changes_incomplete": sum(1 for c in changes if c["received"] != PEERS_PER_TENANT),
        "others_touched": sum(c["others_touched"] for c in changes),
        "maps_pushed": [c["maps_pushed"] for c in changes],
    }
    return res


# ---- output ---------------------------------------------------------------------

def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "n/a"


def show(res, base):
    n = res["tenants"]
    print("")
    print("%d tenants x %d agents = %d Sync streams on 2 replicas (Redis bus); load average %s at the start, %s at the end:"
          % (n, PEERS_PER_TENANT, res["peers"], res["loadavg_start"], res["loadavg_end"]))
    print("  provisioning (%s, %d HTTP clients over both replicas): %.1f s, %.0f tenants/s;"
          " client CPU %.1f s (%.0f %% of one core), replicas' CPU %s s"
          % (res["provision"], res["http_clients"], res["provision_s"], res["tenants_per_s"], res["client_cpu_s"],
             100.0 * res["client_cpu_s"] / res["provision_s"], "+".join("%.1f" % c for c in res["replica_cpu_provision_s"])))
    db = res["provision_db"]
    print("    PostgreSQL meanwhile (%d samples): %s of the replicas' backends busy on average, %s of them waiting"
          " on a lock%s" % (db["samples"], db["busy_backends_mean"], db["lock_waiting_mean"],
                            ", most often in: %s" % db["lock_top_query"] if db["lock_top_query"] else ""))
    if n >= 10000 or base is None:
        t10k = res["provision_s"] * 10000.0 / n
        print("    10,000 tenants at this rate: %.1f s   target <= %.0f s: ratio %s"
              % (t10k, TARGET_PROVISION_S, ratio(t10k, TARGET_PROVISION_S)))
    lm, sm = res.get("login_ms") or {}, res.get("sync_open_ms") or {}
    cpu = lambda f: "+".join("%.1f" % c for c in res[f])  # noqa: E731
    print("  agents (%s, netbird-load concurrency 128):"
          % ("a tenant's 5 over both replicas" if res["placement"] == "spread" else "a tenant's 5 on one replica"))
    print("    registered (Login with the tenant's setup key): %d in %.1f s, %.0f/s, Login p50 %s ms p99 %s ms;"
          " replicas' CPU %s s; errors %s, retries %s"
          % (res["peers"], res["register_s"], res["registrations_per_s"], lm.get("p50"), lm.get("p99"),
             cpu("replica_cpu_register_s"), res["register_errors"], res["register_retries"]))
    print("    Sync streams: %d open in %.1f s, open p50 %s ms p99 %s ms; replicas' CPU %s s; client CPU %.1f s;"
          " errors %s, retries %s" % (res["streams_open"], res["open_s"], sm.get("p50"), sm.get("p99"),
                                      cpu("replica_cpu_streams_s"), res["load_cpu_s"], res["load_errors"],
                                      res["load_retries"]))
    print("    held, nothing changing: replicas' CPU %s of a core" % "+".join("%.1f %%" % (100 * c) for c in
                                                                         res["replica_idle_cpu"]))
    print("  replica RSS (MB): before %s, provisioned %s, agents registered %s, all streams held %s"
          % tuple("+".join("%.0f" % (k / 1024.0) for k in res[f]) for f in
                  ("rss_kb_before", "rss_kb_provisioned", "rss_kb_registered", "rss_kb_connected")))
    print("  memory per tenant (both replicas' RSS growth / tenants): %.1f KB   target <= %.0f KB: ratio %s"
          " (provisioned only: %.1f KB; agents registered, no streams: %.1f KB)"
          % (res["kb_per_tenant"], TARGET_KB_PER_TENANT, ratio(res["kb_per_tenant"], TARGET_KB_PER_TENANT),
             res["kb_per_tenant_provisioned_only"], res["kb_per_tenant_registered"]))
    print("    vs the appliance's ~100 MB per customer: %.0fx less" % (100 * 1024.0 / res["kb_per_tenant"])
          if res["kb_per_tenant"] > 0 else "    (no growth measured)")
    print("  one-tenant change (peer rename, PUT ?account=), %d changes in different tenants:" % len(res["changes"]))
    print("    send -> last of the tenant's 5 maps received: p50 %s ms, max %s ms; replicas' own fan-out"
          " (commit -> maps queued) mean %s ms" % (res["fanout_last_ms_p50"], res["fanout_last_ms_max"],
                                                   res["server_fanout_ms_mean"]))
    print("    streams of other tenants that received anything: %d (of %d x %d); maps pushed per change %s;"
          " incomplete changes %d" % (res["others_touched"], res["peers"] - PEERS_PER_TENANT, len(res["changes"]),
                                      sorted(set(int(m) for m in res["maps_pushed"])), res["changes_incomplete"]))
    if base:
        print("  vs %d tenants in the same run: fan-out p50 ratio %s (target ~1: does not grow with tenants),"
              " memory per tenant ratio %s, tenants/s ratio %s"
              % (base["tenants"], ratio(res["fanout_last_ms_p50"], base["fanout_last_ms_p50"]),
                 ratio(res["kb_per_tenant"], base["kb_per_tenant"]),
                 ratio(res["tenants_per_s"], base["tenants_per_s"])))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(prog="bench-msp.py")
    ap.add_argument("mgmt")
    ap.add_argument("--tenants", type=int, default=10000)
    ap.add_argument("--baseline", type=int, default=1000, help="comparison size in the same run; 0 = none")
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--http-clients", type=int, default=8,
                    help="concurrent HTTP clients for provisioning (8: past that they queue on the MSP row lock)")
    ap.add_argument("--provision", choices=sorted(PROVISIONERS), default="api")
    ap.add_argument("--placement", choices=["spread", "tenant"], default="spread",
                    help="spread: a tenant's agents round-robin over both replicas; tenant: all on one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, load summaries)")
    ap.add_argument("--load", default=None, help="netbird-load (default: next to the build's services/)")
    ap.add_argument("--json", action="store_true", help="also one JSON line per size")
    args = ap.parse_args()
    if not svc.PG_DSN:
        print("bench-msp: set CP_TEST_PG_DSN (tests/bench/run does) to run it")
        return 0
    if args.tenants < 1 or args.baseline < 0 or args.changes < 1 or args.http_clients < 1:
        print("bench-msp: --tenants, --changes and --http-clients must be >= 1, --baseline >= 0", file=sys.stderr)
        return 2
    args.load = args.load or os.path.join(os.path.dirname(os.path.abspath(args.mgmt)), "..", "load", "netbird-load")
    if not os.access(args.load, os.X_OK):
        print("bench-msp: %s missing; build it" % args.load, file=sys.stderr)
        return 1
    sizes = ([args.baseline] if 0 < args.baseline < args.tenants else []) + [args.tenants]
    print("bench-msp: %d cores, %.0f GB, load %s; sizes %s; provisioning: %s"
          % (os.cpu_count(), os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30,
             " ".join(open("/proc/loadavg").read().split()[:3]), sizes, args.provision))
    print("  client: Python asyncio, keep-alive HTTP/1.1 (provisioning); netbird-load (C, one thread) for the agents")
    tmp = tempfile.mkdtemp(prefix="cp-msp-")
    rc = 0
    base = None
    try:
        redis = redis_url(tmp)
        for n in sizes:
            try:
                res = run_size(args, n, redis, tmp)
            finally:
                while len(svc._cleanups) > (1 if not svc.REDIS_URL else 0):
                    fn, a = svc._cleanups.pop()
                    try:
                        fn(*a)
                    except Exception as e:      # keep cleaning up
                        log("cleanup: %s" % e)
            show(res, base)
            if args.json:
                print("bench-msp-json: " + json.dumps(res))
            base = base or res
    except BenchError as e:
        log("error: %s" % e)
        rc = 1
    finally:
        while svc._cleanups:
            fn, a = svc._cleanups.pop()
            try:
                fn(*a)
            except Exception as e:
                log("cleanup: %s" % e)
        if args.keep:
            log("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
