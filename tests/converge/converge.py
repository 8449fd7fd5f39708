"""The convergence checker (issue 15): three replicas on one PostgreSQL with
a Redis bus, agents holding Sync streams, a workload of REST changes, and
faults injected one after another; afterwards every agent must hold the
account's newest serial and the map computed fresh from the database, and
the session fence must never have been violated. docs/testing.md
("Convergence checker") says what is checked and why it is sound.

    converge.py NETBIRD_MGMT            the short form (tests/run --suite converge)
    CP_CONVERGE_LONG=1 converge.py ...  the long form (tests/converge/run --long)

Output is TAP with "#" lines: every fault (time, kind, target) and every
check (what, how many, result).
"""

import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import fixture  # noqa: E402
import nbagent  # noqa: E402
from fixture import wait_until  # noqa: E402
from svc import test  # noqa: E402

import cluster  # noqa: E402
from agents import AgentFleet  # noqa: E402
from workload import Workload, Sampler  # noqa: E402

LONG = os.environ.get("CP_CONVERGE_LONG", "") not in ("", "0")
# A forged bus message carrying a huge serial (issue 15's first bullet: bus
# messages are hints only) is one of the default fault kinds;
# CP_CONVERGE_FORGE=0 leaves it out (to compare with a tree without the fix).
FORGE = os.environ.get("CP_CONVERGE_FORGE", "1") not in ("", "0")
SEED = int(os.environ.get("CP_CONVERGE_SEED", "0") or 0) or int(time.time())

if LONG:
    N_AGENTS, ROUNDS, REDIS_DOWN_S, SETTLE_S, SLOW_S = 120, 3, 30.0, 8.0, 20.0
else:
    N_AGENTS, ROUNDS, REDIS_DOWN_S, SETTLE_S, SLOW_S = 36, 1, 8.0, 3.0, 8.0
QUIESCE_S = 60.0

T0 = time.monotonic()


def say(text):
    print("# [%7.2fs] %s" % (time.monotonic() - T0, text), flush=True)


def bootstrap(dsn):
    r = svc.run(["bootstrap", "--config="], env={"NB_STORE_ENGINE_POSTGRES_DSN": dsn,
                                                  "NB_MGMT_DATA_STORE_ENCRYPTION_KEY": svc.DATA_KEY})
    assert r.rc == 0, "bootstrap failed: %r" % r
    return fixture.parse_env_output(r.out)


class Faults:
    """The fault schedule: each kind once per round, the workload running."""

    def __init__(self, pg, redis, replicas, fleet, workload, token, log):
        self.pg, self.redis, self.replicas, self.fleet, self.log = pg, redis, replicas, fleet, log
        self.workload = workload
        self.token = token
        self.injected = []          # (seconds since start, kind, target, what happened)

    def note(self, kind, target, what):
        t = time.monotonic() - T0
        self.injected.append((t, kind, target, what))
        self.log("FAULT %s on %s: %s" % (kind, target, what))

    def kill9(self, rep):
        old = rep.id
        rep.kill9()
        self.note("kill -9", "%s (%s)" % (rep.name, old), "SIGKILL; restarting in 3 s")
        time.sleep(3)
        rep.start(skew=rep.skew)
        self.note("kill -9", rep.name, "restarted as %s; %s" % (
            rep.id, self.fleet.rebalance(rep, len(self.fleet.agents) // 6)))

    def redis_down(self, seconds):
        self.redis.stop()
        self.note("redis stopped", "redis :%d" % self.redis.port,
                  "down for %.0f s%s" % (seconds, "" if seconds >= 30 else
                                          " (short form; the long form keeps it down 30 s)"))
        time.sleep(seconds)
        self.redis.start()
        self.note("redis stopped", "redis :%d" % self.redis.port, "started again")

    def forge(self, prefix, account):
        msg = "%s 9223372036854775807" % account
        n = self.redis.publish("%s:account-serial" % prefix, msg)
        self.note("forged bus message", "redis :%d" % self.redis.port,
                  "PUBLISH %s:account-serial %r reached %d subscriber(s)" % (prefix, msg, n))

    def pg_restart(self):
        self.pg.stop_immediate()
        self.note("postgres restart", "postgres :%d" % self.pg.port, "pg_ctl stop -m immediate")
        time.sleep(2)
        self.pg.start()
        self.note("postgres restart", "postgres :%d" % self.pg.port, "started again")

    def clock_ahead(self, rep):
        """rep runs 5 s ahead from now on; a replica that ran ahead before
        (the long form's later rounds pick another) gets its clock back."""
        if svc.binary_uses_asan():
            self.note("clock +5s", rep.name, "SKIPPED: libfaketime's LD_PRELOAD does not mix with ASan "
                                             "(tests/run --sanitize); the plain build runs it")
            return
        for other in self.replicas:
            if other is not rep and other.skew:
                fixture.stop_server(other.srv)
                other.start()
                self.note("clock +5s", other.name, "restarted with the right clock as %s" % other.id)
        if rep.skew:
            self.note("clock +5s", rep.name, "already 5 s ahead")
            return
        fixture.stop_server(rep.srv)
        rep.start(skew="+5s")
        lo, hi = rep.log_skew(self.token)
        assert lo <= 5.5 and hi >= 4.5, "replica %s under libfaketime: its HTTP thread's log lines are %.2f to " \
            "%.2f s ahead, not 5" % (rep.name, lo, hi)
        self.note("clock +5s", rep.name, "restarted under libfaketime (+5s) as %s; its HTTP thread logs %.2f to "
                                         "%.2f s ahead (a probe request's log line); %s" % (
                                             rep.id, lo, hi, self.fleet.rebalance(rep, len(self.fleet.agents) // 4)))

    def slow_consumer(self, seconds):
        a = self.fleet.pick_holding()
        if a is None:
            self.note("slow consumer", "-", "no agent holds a stream; skipped")
            return
        s0 = self.serial()
        t0 = time.monotonic()
        a.pause(seconds)
        self.workload.burst.set()
        self.note("slow consumer", "agent %d (peer %s, on %s)" % (a.idx, a.peer_id, a.replica_name),
                  "stops reading its stream for %.0f s (account serial %d); the workload makes its changes back "
                  "to back meanwhile" % (seconds, s0))
        time.sleep(seconds)
        self.workload.burst.clear()
        s1 = self.serial()
        time.sleep(2)
        got = sorted(set(s for t, s in list(a.trace) if t >= t0 and s0 < s <= s1))
        self.note("slow consumer", "agent %d" % a.idx, "reads again; the serial moved %d -> %d meanwhile (%d "
                  "changes), the agent then read %d maps for them: the replica %s" % (
                      s0, s1, s1 - s0, len(got), "replaced the maps that waited (send side backed up)"
                      if len(got) < s1 - s0 else "sent every one (its send side did not back up)"))

    def serial(self):
        return svc.query(self.pg.dsn, "SELECT max(network_serial) FROM accounts")[0][0]


def fresh_equal(agent_msg, fresh_bytes):
    """Compares what an agent holds with the fresh SyncResponse. Normalised:
    netbirdConfig is cleared on both sides (a replica sends it only in the
    first message of a stream, pitfall 7; the agent keeps the last message,
    which may be that first one). Everything else must be equal byte for
    byte after a canonical re-serialisation."""
    pb = nbagent.pb
    fresh = pb.SyncResponse()
    fresh.ParseFromString(fresh_bytes)
    got = pb.SyncResponse()
    got.CopyFrom(agent_msg)
    got.ClearField("netbirdConfig")
    fresh.ClearField("netbirdConfig")
    if got.SerializeToString(deterministic=True) == fresh.SerializeToString(deterministic=True):
        return True, None
    return False, (fixture.json_dump(got), fixture.json_dump(fresh))


@test
def convergence_under_faults():
    random.seed(SEED)
    say("seed %d, %s form: %d agents, %d round(s) of faults, Redis down %.0f s" % (
        SEED, "long" if LONG else "short", N_AGENTS, ROUNDS, REDIS_DOWN_S))
    svc.needs_db()
    pg = cluster.Postgres()
    redis = cluster.Redis()
    env = bootstrap(pg.dsn)
    account, setup_key, token = env["ACCOUNT_ID"], env["SETUP_KEY"], env["ADMIN_TOKEN"]
    prefix = "conv%d" % random.randrange(1 << 30)
    extra = ["--heartbeat-interval", "300ms", "--replica-expiry", "3s", "--serial-check-interval", "2s",
             "--bus-channel-prefix", prefix, "--log-level", "debug"]
    replicas = [cluster.Replica(n, pg.dsn, redis.url, extra) for n in ("r0", "r1", "r2")]
    for r in replicas:
        r.start()
    say("started PostgreSQL :%d, Redis :%d, replicas %s" % (
        pg.port, redis.port, ", ".join("%s=%s (grpc :%d, http :%d)" % (r.name, r.id, r.grpc_port, r.http_port)
                                       for r in replicas)))

    fleet = AgentFleet(replicas, setup_key, pg.dsn, say)
    fleet.register(N_AGENTS)
    wl = Workload(replicas, token, pg.dsn, account, fleet.peer_ids(), say)
    wl.setup()
    fleet.start()
    svc.defer(fleet.stop)
    wait_until(lambda: fleet.n_holding() == N_AGENTS, timeout=60, interval=0.2,
               what="every agent holding a Sync stream with its first map")
    say("%d agents hold streams: %s" % (N_AGENTS, fleet.spread()))

    sampler = Sampler(pg.dsn, account, fleet)
    sampler.start()
    wl.start()
    faults = Faults(pg, redis, replicas, fleet, wl, token, say)
    kinds = ["kill9", "redis", "postgres", "clock", "slow"] + (["forge"] if FORGE else [])
    for rnd in range(ROUNDS):
        order = list(kinds)
        if rnd:
            random.shuffle(order)
        for kind in order:
            time.sleep(SETTLE_S)
            if kind == "kill9":
                faults.kill9(random.choice(replicas))
            elif kind == "redis":
                faults.redis_down(REDIS_DOWN_S)
            elif kind == "postgres":
                faults.pg_restart()
            elif kind == "clock":
                faults.clock_ahead(replicas[(2 + rnd) % len(replicas)])
            elif kind == "slow":
                faults.slow_consumer(SLOW_S)
            elif kind == "forge":
                faults.forge(prefix, account)
    time.sleep(SETTLE_S)
    wl.stop()
    say("workload stopped: %s" % wl.summary())
    # One last change through one replica: the others' streams can only
    # learn of it through the bus or the periodic serial check.
    last = random.choice(replicas)
    wl.final_change(last)
    say("final change through %s only (serial %d): the other replicas must learn of it from the bus or the "
        "serial check" % (last.name, faults.serial()))

    # ---- quiesce: a bounded wait for every agent to hold the newest serial
    # and the fresh map.
    state = {}

    def converged():
        serial = svc.query(pg.dsn, "SELECT network_serial FROM accounts WHERE id = '%s'" % account)[0][0]
        fresh_serial, fresh = cluster.netmaps(pg.dsn, account)
        if fresh_serial != serial:
            return False            # a change landed between the two reads; read again
        bad = []
        for a in fleet.agents:
            msg, held = a.last_message()
            if not held or msg is None:
                bad.append((a.idx, "no stream held", None))
            elif msg.NetworkMap.Serial != serial:
                bad.append((a.idx, "serial %d, newest %d, on %s" % (msg.NetworkMap.Serial, serial, a.replica_name),
                            None))
            else:
                ok, diff = fresh_equal(msg, fresh[a.peer_id])
                if not ok:
                    bad.append((a.idx, "map differs from the fresh one, on %s" % a.replica_name, diff))
        state.update(serial=serial, bad=bad, fresh=fresh)
        return not bad
    t_q = time.monotonic()
    try:
        wait_until(converged, timeout=QUIESCE_S, interval=0.5, what="convergence")
    except AssertionError:
        lines = ["agent %d (peer %s): %s" % (i, fleet.agents[i].peer_id, why) for i, why, _ in state["bad"][:10]]
        for i, why, diff in state["bad"][:2]:
            if diff:
                lines.append("agent %d holds: %s" % (i, diff[0][:1500]))
                lines.append("fresh:          %s" % diff[1][:1500])
        raise AssertionError("not converged %.0f s after the workload stopped (serial %s): %d of %d agents "
                             "behind:\n  %s" % (QUIESCE_S, state.get("serial"), len(state["bad"]), N_AGENTS,
                                                "\n  ".join(lines)))
    serial = state["serial"]
    say("CHECK newest serial: %d of %d agents hold serial %d (converged %.1f s after the workload stopped): ok" % (
        N_AGENTS, N_AGENTS, serial, time.monotonic() - t_q))
    say("CHECK fresh map (netbird-cp-admin netmap show, normalised: netbirdConfig cleared): %d of %d equal: ok" % (
        N_AGENTS, N_AGENTS))
    sampler.stop()

    # ---- the fence
    violations, reconnected, undecided = sampler.decide()
    say("CHECK fence, sampled: %d samples, %d disconnected-while-held candidates (%d settled by a "
        "reconnect, %d undecidable), %d violations: %s" % (
            sampler.samples, len(sampler.candidates), reconnected, undecided, len(violations),
            "ok" if not violations else "FAILED"))
    assert not violations, "peer rows marked disconnected while their stream was open (agent, peer, stream " \
        "generation, serial when its row read disconnected, a later serial that same stream read): %r" % (
            violations[:5],)
    say("CHECK fence, token order: %d connected samples, %d tokens lower than one stored before: %s" % (
        sampler.token_samples, len(sampler.token_drops), "ok" if not sampler.token_drops else "FAILED"))
    assert not sampler.token_drops, "a connect landed with a lower token: %r" % sampler.token_drops[:5]

    rows = {r[0]: r[1:] for r in svc.query(pg.dsn, (
        "SELECT id, peer_status_connected, peer_status_session_started_at, coalesce(peer_status_replica_id, '')"
        " FROM peers WHERE account_id = '%s'" % account))}
    sessions = {s["peer_id"]: s for s in svc.admin_json(["sessions", "list", "--account", account],
                                                         {"NB_STORE_ENGINE_POSTGRES_DSN": pg.dsn})}
    wrong = []
    for a in fleet.agents:
        connected, tok, owner = rows[a.peer_id]
        sess = sessions.get(a.peer_id)
        if not connected or tok <= 0 or owner != a.replica_id or not sess or \
                sess.get("replica_id") != a.replica_id:
            wrong.append((a.idx, a.peer_id, a.replica_id, rows[a.peer_id], sess))
    say("CHECK fence, end state: %d of %d peers connected, owned by the replica their stream is on (SQL and "
        "`sessions list`): %s" % (N_AGENTS - len(wrong), N_AGENTS, "ok" if not wrong else "FAILED"))
    assert not wrong, "peer rows not owned by their stream's replica: %r" % wrong[:5]

    fenced = sum(sum(1 for o in r.logs() if o.get("msg") == "disconnect fenced off (newer session)")
                 for r in replicas)
    failed = sum(sum(1 for o in r.logs() if o.get("msg") == "cannot mark the peer disconnected") for r in replicas)
    say("INFO fenced-off disconnects logged by the running replicas: %d; failed disconnects: %d" % (fenced, failed))
    say("INFO agents: %s; streams at the end: %s (%s runs 5 s ahead)" % (
        fleet.summary(), fleet.spread(), ", ".join(r.name for r in replicas if r.skew) or "no replica"))
    assert not fleet.protocol_errors, "undecryptable or unparsable Sync messages: %r" % fleet.protocol_errors[:5]
    say("SUMMARY %d faults injected (%s); checks passed: newest serial, fresh map, fence (sampled, token "
        "order, end state)" % (len(faults.injected), ", ".join(sorted(set(f[1] for f in faults.injected)))))


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
