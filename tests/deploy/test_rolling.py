"""A rolling update of the dev cluster under load (issue 14, "Rolling
update"): deploy/dev/up --replicas 3 behind nginx, CP_TEST_ROLLING_AGENTS
agents (default 5,000) registered, then holding their Sync streams
through netbird-load --reconnect, then
deploy/dev/roll replaces the replicas one at a time (SIGTERM, drain over
--drain-window, new process, /readyz) while a thread changes policies over
the REST API through nginx.

Asserted, all on outcomes (the times are printed for
docs/kubernetes-rolling.md, bounded only by generous timeouts):
- every agent holds a stream again whose last map has the account's final
  network serial (from the database): no update was lost;
- every acknowledged policy change is in the database, its serial was
  taken in order and is covered by the final serial;
- at the end every agent's peer row is connected, with its session owned
  by one of the three live replicas;
- during the roll, a sampler never saw a peer row disconnected while the
  load client held that agent's stream (see Sampler for why the check is
  sound), and each old replica's fenced disconnects all ran (landed, or
  fenced off because the peer had reconnected elsewhere first).

CP_TEST_ROLLING_DRAIN_WINDOW (default 3s) is the replicas' --drain-window,
to measure the all-at-once burst (0s) against the spread one.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "api"))

import svc  # noqa: E402
import test_devcluster  # noqa: E402
# Importing it registered its own tests; this file runs only its own.
del svc._tests[:]
from test_devcluster import DevCluster, NGINX, ROOT  # noqa: E402
from fixture import wait_until  # noqa: E402
from apifix import Api  # noqa: E402
from svc import test  # noqa: E402

LOAD = os.environ.get("NETBIRD_LOAD", "")
AGENTS = int(os.environ.get("CP_TEST_ROLLING_AGENTS", "5000"))
WINDOW = os.environ.get("CP_TEST_ROLLING_DRAIN_WINDOW", "3s")
ROLL = os.path.join(ROOT, "deploy", "dev", "roll")
UP = test_devcluster.UP
# Generous bounds: correctness is asserted, the figures are printed.
OPEN_TIMEOUT = 600
RESYNC_TIMEOUT = 300


def sql(dsn, query, params=None):
    import psycopg2
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def register(env, keys):
    """netbird-load registers AGENTS peers (Login only, no streams, so no
    fan-out per registration) into the keys file; returns the seconds."""
    t0 = time.monotonic()
    p = subprocess.run([LOAD, "--target", env["MGMT_GRPC"], "--setup-key", env["SETUP_KEY"], "--peers", str(AGENTS),
                        "--connections", "8", "--concurrency", "200", "--retry", "--no-sync", "--keys-file", keys,
                        "--timeout", str(OPEN_TIMEOUT), "--hostname-prefix", "roll", "--quiet"],
                       capture_output=True, text=True, timeout=OPEN_TIMEOUT + 60, env=svc.clean_env())
    assert p.returncode == 0, "registering %d peers failed:\n%s\n%s" % (AGENTS, p.stdout[-2000:], p.stderr[-3000:])
    return time.monotonic() - t0


class Load:
    """netbird-load holding the AGENTS registered peers' streams through
    nginx (--sync-only), reconnecting streams the server ends like NetBird's
    agent."""

    def __init__(self, env, base, keys):
        self.dir = base
        self.report = os.path.join(base, "load.report")
        self.ready = os.path.join(base, "load.ready")
        self.out = open(os.path.join(base, "load.out"), "w")
        self.err = open(os.path.join(base, "load.err"), "w")
        self.lock = threading.Lock()
        # nginx allows 1,024 streams per HTTP/2 connection (up sets
        # http2_max_concurrent_streams; its default is 128).
        conns = max(8, (AGENTS + 199) // 200)
        self.p = subprocess.Popen(
            [LOAD, "--target", env["MGMT_GRPC"], "--peers", str(AGENTS), "--sync-only", "--keys-file", keys,
             "--connections", str(conns), "--concurrency", "200", "--retry", "--reconnect", "--hold", "7200",
             "--timeout", str(OPEN_TIMEOUT), "--report-file", self.report, "--ready-file", self.ready, "--quiet"],
            stdout=self.out, stderr=self.err, env=svc.clean_env())
        svc.defer(self.stop)

    def wait_open(self):
        wait_until(lambda: os.path.exists(self.ready) or self.p.poll() is not None, timeout=OPEN_TIMEOUT + 30,
                   interval=0.2, what="netbird-load's opening phase")
        with open(self.ready) as f:
            return int(f.read().split()[1])

    def snapshot(self, timeout=30):
        """{index: (state, serial, generation)} as of now (SIGUSR1)."""
        with self.lock:
            try:
                os.unlink(self.report)
            except FileNotFoundError:
                pass
            self.p.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while not os.path.exists(self.report):
                assert self.p.poll() is None and time.monotonic() < deadline, "netbird-load wrote no report"
                time.sleep(0.02)
            rows = {}
            with open(self.report) as f:
                for line in f:
                    if line.startswith("#"):
                        continue
                    p = line.split()
                    rows[int(p[0])] = (p[3], int(p[2]), int(p[8]))
            return rows

    def stop(self):
        """Ends the run (SIGINT) and returns its JSON summary."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(120)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in (self.out, self.err):
            if not f.closed:
                f.close()
        with open(self.out.name) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        return json.loads(lines[-1]) if lines else None


class Changer(threading.Thread):
    """Creates policies over REST through nginx, one after the other, while
    the roll runs. A change is acknowledged when the API answered 200; its
    serial is the account's network serial read right after (>= the serial
    the change committed). Failed attempts (a replica draining answers 503,
    one being replaced refuses the connection) are kept apart: they are not
    acknowledged, so nothing is required of them."""

    def __init__(self, env, group_id):
        super().__init__(daemon=True)
        self.api = Api(env["MGMT_HTTP"], env["ADMIN_TOKEN"])
        self.dsn = env["PG_DSN"]
        self.account = env["ACCOUNT_ID"]
        self.group = group_id
        self.stop_flag = threading.Event()
        self.acked = []         # (k, policy id, name, serial after)
        self.failed = []        # (k, status or error)
        self.error = None

    def run(self):
        k = 0
        try:
            while not self.stop_flag.is_set():
                k += 1
                name = "roll-%d" % k
                body = {"name": name, "enabled": True, "rules": [
                    {"name": name, "enabled": True, "action": "accept", "bidirectional": True,
                     "protocol": "all", "sources": [self.group], "destinations": [self.group]}]}
                try:
                    st, b, _ = self.api.call("POST", "/api/policies", body=body, timeout=30)
                except Exception as e:          # connection refused or reset mid-roll
                    self.failed.append((k, repr(e)))
                    time.sleep(0.2)
                    continue
                if st == 200:
                    serial = sql(self.dsn, "SELECT network_serial FROM accounts WHERE id = %s",
                                 (self.account,))[0][0]
                    self.acked.append((k, b["id"], name, serial))
                else:
                    self.failed.append((k, st))
                time.sleep(0.2)
        except Exception as e:
            self.error = e


class Sampler(threading.Thread):
    """Looks for a peer row marked disconnected while its agent is held.

    Why this is sound, with no assumption about how fast anything is. A
    sample is: report R1 (the load client's state of every agent: H = a
    stream held, plus the stream's generation, which grows by one each
    time the agent reopens its stream), then, in one statement, the peer
    rows D and the account's network serial S_D, then report R2. A
    candidate is an agent that is H with the same generation in R1 and R2
    while D shows its row disconnected. The client may lag behind the
    server (a stream already ended on the server can still look held), so
    a candidate is only decided at the end of the test, from the final
    report, in which every agent holds a stream at the final serial F:
    - same generation as in R1 and F > S_D: that very stream was open
      before D was read (R1) and later delivered a map computed from a
      commit after D (serial > S_D), so it was open on its replica when D
      showed the row disconnected: a violation (e.g. an old replica's late
      disconnect overwriting the newer session -- what the fence forbids);
    - a newer generation: the stream did end after all and the agent
      reconnected; the row was rightly disconnected in between;
    - same generation but F == S_D: undecidable (no later map proves the
      stream outlived D); counted and printed, never hidden as a pass of
      this check alone: the end state check (every row connected, owned
      by a live replica) still covers a disconnect that stuck.
    """

    GRACE = 1.0

    def __init__(self, env, load, peer_of):
        super().__init__(daemon=True)
        self.dsn = env["PG_DSN"]
        self.account = env["ACCOUNT_ID"]
        self.load = load
        self.peer_of = peer_of              # index -> peer id
        self.stop_flag = threading.Event()
        self.samples = 0
        self.timeline = []                  # (monotonic time, agents not holding a stream)
        self.candidates = []                # (index, generation at R1, S_D)
        self.error = None

    def rows(self):
        got = sql(self.dsn, "SELECT p.id, p.peer_status_connected, a.network_serial FROM accounts a "
                            "LEFT JOIN peers p ON p.account_id = a.id WHERE a.id = %s", (self.account,))
        return {r[0]: r[1] for r in got if r[0] is not None}, (got[0][2] if got else 0)

    def run(self):
        try:
            while not self.stop_flag.is_set():
                r1 = self.load.snapshot()
                self.timeline.append((time.monotonic(), sum(1 for v in r1.values() if v[0] != "H")))
                d, serial = self.rows()
                time.sleep(self.GRACE)
                r2 = self.load.snapshot()
                self.timeline.append((time.monotonic(), sum(1 for v in r2.values() if v[0] != "H")))
                self.candidates += [(i, gen, serial) for i, (st, _, gen) in r1.items()
                                    if st == "H" and r2.get(i, ("", 0, -1))[0] == "H" and r2[i][2] == gen
                                    and d.get(self.peer_of[i]) is False]
                self.samples += 1
        except Exception as e:
            self.error = e

    def decide(self, final_snap, final_serial):
        """(violations, reconnected, undecided) from the final report."""
        violations, reconnected, undecided = [], 0, 0
        for i, gen, serial in self.candidates:
            st, _, gen_end = final_snap[i]
            if gen_end != gen:
                reconnected += 1
            elif final_serial > serial:
                violations.append((i, self.peer_of[i], gen, serial, final_snap[i]))
            else:
                undecided += 1
        return violations, reconnected, undecided


def old_replica_summaries(dc, n):
    """The 'sync streams at shutdown' lines and the drain's stream end
    times of every replica process that exited, from the replicas' logs."""
    out = []
    for i in range(1, n + 1):
        path = os.path.join(dc.dir, "replica-%d.log" % i)
        ends, start = [], None
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                if o.get("msg") == "shutting down":
                    start, ends = o["time"], []
                elif o.get("msg") == "sync stream ended" and o.get("reason") == "server shutting down":
                    ends.append(o["time"])
                elif o.get("msg") == "sync streams at shutdown":
                    out.append((i, o, start, ends))
    return out


def iso(t):
    import datetime
    return datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


@test
def rolling_update_under_load():
    if not LOAD or not os.access(LOAD, os.X_OK):
        raise svc.Skip("NETBIRD_LOAD not set (meson sets it)")
    if not os.access(NGINX, os.X_OK):
        raise svc.Skip("no %s (tests/run installs nginx)" % NGINX)
    dc = DevCluster()
    renv = {"NB_MGMT_DRAIN_WINDOW": WINDOW}
    rc, out = dc.script(UP, "--replicas", "3", env=renv)
    assert rc == 0, "deploy/dev/up failed (%d):\n%s%s" % (rc, out[-6000:], dc.logs())
    env = dc.cluster_env()
    dsn, account = env["PG_DSN"], env["ACCOUNT_ID"]
    api = Api(env["MGMT_HTTP"], env["ADMIN_TOKEN"])
    # No policy while the agents register: maps stay small (the figures
    # are about streams and serials, not map sizes).
    for pol in api.ok("GET", "/api/policies"):
        api.ok("DELETE", "/api/policies/" + pol["id"])

    keys = os.path.join(dc.base, "load.keys")
    took = register(env, keys)
    load = Load(env, dc.base, keys)
    t0 = time.monotonic()
    opened = load.wait_open()
    assert opened == AGENTS, "%d of %d streams opened\n%s" % (opened, AGENTS, open(load.err.name).read()[-3000:])
    print("# %d agents registered in %.1fs, then synced through nginx in %.1fs" % (AGENTS, took,
                                                                                  time.monotonic() - t0))
    rows = sql(dsn, "SELECT id, meta_hostname FROM peers WHERE account_id = %s", (account,))
    peer_of = {int(h.rsplit("-", 1)[1]): pid for pid, h in rows if h.startswith("roll-")}
    assert sorted(peer_of) == list(range(AGENTS)), (len(peer_of), AGENTS)
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM peers WHERE account_id = %s AND peer_status_connected",
                           (account,))[0][0] == AGENTS, timeout=60, what="every peer row connected")
    group = api.ok("POST", "/api/groups", {"name": "roll", "peers": [peer_of[0], peer_of[1]]})

    changer = Changer(env, group["id"])
    sampler = Sampler(env, load, peer_of)
    changer.start()
    sampler.start()
    svc.defer(changer.stop_flag.set)
    svc.defer(sampler.stop_flag.set)
    time.sleep(2)       # a few changes before the roll

    t_roll = time.monotonic()
    rc, out = dc.script(ROLL, "--no-build", "--wait-ready", "90", env=renv)
    t_rolled = time.monotonic()
    assert rc == 0, "deploy/dev/roll failed (%d):\n%s%s" % (rc, out[-6000:], dc.logs())
    for line in out.splitlines():
        if line.startswith("replica "):
            print("# roll: " + line)
    time.sleep(2)       # and a few after it
    changer.stop_flag.set()
    changer.join(60)
    assert changer.error is None, changer.error
    assert changer.acked, "no policy change was acknowledged: %r" % changer.failed[:20]

    # No update lost: every agent holds a stream whose last map carries
    # the account's final serial.
    final = sql(dsn, "SELECT network_serial FROM accounts WHERE id = %s", (account,))[0][0]
    t_wait = time.monotonic()
    behind = None
    while True:
        snap = load.snapshot()
        behind = [i for i, (st, serial, _) in snap.items() if st != "H" or serial != final]
        if not behind or time.monotonic() - t_wait > RESYNC_TIMEOUT:
            break
        time.sleep(0.5)
    synced_at = time.monotonic()
    assert not behind, "%d agents not at serial %d after %ds, e.g. %r" % (
        len(behind), final, RESYNC_TIMEOUT, [(i, snap[i]) for i in behind[:10]])
    print("# every agent at the final serial %d: %.1fs after the roll began, %.1fs after it ended"
          " (%.1fs after the last change)" % (final, synced_at - t_roll, synced_at - t_rolled, synced_at - t_wait))

    sampler.stop_flag.set()
    sampler.join(120)
    assert sampler.error is None, sampler.error
    violations, reconnected, undecided = sampler.decide(snap, final)
    print("# sampler: %d samples, %d candidates: %d reconnected, %d undecided, %d violations"
          % (sampler.samples, len(sampler.candidates), reconnected, undecided, len(violations)))
    assert sampler.samples >= 3, sampler.samples
    print("# agents without a stream, by seconds since the roll began: %s" % " ".join(
        "%.0f:%d" % (t - t_roll, n) for t, n in sampler.timeline if t >= t_roll))
    assert not violations, "peer rows disconnected while their agent's stream was open: %r" % (
        violations[:10],)

    # Every acknowledged change is in the database, in order, covered by
    # the final serial.
    serials = [a[3] for a in changer.acked]
    assert serials == sorted(serials) and len(set(serials)) == len(serials), serials
    assert serials[-1] <= final, (serials[-1], final)
    names = dict(sql(dsn, "SELECT id, name FROM policies WHERE account_id = %s", (account,)))
    missing = [a for a in changer.acked if names.get(a[1]) != a[2]]
    assert not missing, "acknowledged changes not in the database: %r" % missing[:10]
    print("# policy changes during the roll: %d acknowledged (serials %d..%d), %d attempts failed: %r"
          % (len(changer.acked), serials[0], serials[-1], len(changer.failed),
             sorted(set(str(f[1])[:60] for f in changer.failed))[:5]))

    # At the end every agent's row is connected, owned by a live replica.
    live = {r[0] for r in sql(dsn, "SELECT id FROM replicas")}
    assert len(live) == 3, live
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM peers WHERE account_id = %s AND peer_status_connected "
                                "AND peer_status_replica_id = ANY(%s)", (account, list(live)))[0][0] == AGENTS,
               timeout=60, what="every peer row connected to a live replica")
    per = sql(dsn, "SELECT peer_status_replica_id, count(*) FROM peers WHERE account_id = %s GROUP BY 1",
              (account,))
    print("# sessions per live replica after the roll: %s" % sorted(c for _, c in per))

    # Each old replica drained, and every fenced disconnect ran: it landed
    # (the agent had not reconnected yet) or was fenced off (it had, on
    # another replica, with a newer token), never lost.
    olds = old_replica_summaries(dc, 3)
    assert len(olds) == 3, olds
    for i, s, start, ends in olds:
        drained, landed, fenced = int(s["drained"]), int(s["disconnects_landed"]), int(s["disconnects_fenced_off"])
        assert int(s["disconnects_failed"]) == 0, s
        assert landed + fenced >= drained, s
        span = iso(ends[-1]) - iso(ends[0]) if ends else 0
        print("# replica %d drained %d streams over %.2fs (window %s); disconnects landed %d, fenced off %d"
              % (i, drained, span, WINDOW, landed, fenced))
        if ends:
            b0 = iso(start)
            hist = {}
            for t in ends:
                k = int((iso(t) - b0) / 0.5)
                hist[k] = hist.get(k, 0) + 1
            print("#   endings per 500 ms after SIGTERM: %s" % [hist.get(k, 0) for k in range(max(hist) + 1)])

    s = load.stop()
    assert s is not None, open(load.err.name).read()[-3000:]
    print("# load: %s" % json.dumps({k: s.get(k) for k in ("streams_open", "streams_ended_by_server", "reconnects",
                                                              "reconnect_attempts", "reconnect_ms", "retries",
                                                              "errors_total")}))
    assert s["errors_total"] == 0 and s["streams_open"] == AGENTS, s
    assert s["reconnects"] >= AGENTS, s      # every replica was replaced: every agent reconnected


@test
def roll_argument_errors():
    """deploy/dev/roll: bad arguments exit 2 with the reason; without a
    cluster it says to start one (exit 1); nothing is created."""
    d = svc.tmpdir()
    env = svc.clean_env({"CP_DEV_DIR": os.path.join(d, "dev")})
    for args, rc, needle in ((["--bogus"], 2, "unknown argument: --bogus"),
                             (["--wait-ready", "soon"], 2, "--wait-ready wants a number of seconds"),
                             (["--pause"], 2, "deploy/dev/roll [--wait-ready"),
                             (["--no-build"], 1, "start the cluster with deploy/dev/up first")):
        p = subprocess.run([ROLL] + args, capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == rc and needle in p.stderr, (args, p.returncode, p.stderr[-2000:])
    assert not os.path.exists(os.path.join(d, "dev")), os.listdir(d)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
