"""bench-proxy-logs: SendAccessLog ingest from concurrent proxies into one
netbird-mgmt, and what that load does to another RPC on the same replica.

bench-proxy-logs-load (C, next to netbird-mgmt's build; BENCH_LOG_RATE
calls a second, 10,000) or, with BENCH_LOG_CLIENT=python, several Python
proxy processes (grpcio, each with its own channel and a window of calls
in flight) send access-log entries for LOAD_S seconds; the rate is
what the server accepted and what landed in proxy_access_logs (it writes
them in batches: one INSERT ... jsonb_to_recordset per flush). Meanwhile,
and before, one client calls ValidateSession (a service lookup, an Ed25519
verification and a user lookup) one call at a time; its p50/p99 with and
without the log load are printed with their ratio. A second replica on
the same database takes the same load first: the machine, PostgreSQL and
the Python clients are then just as busy, so "load on A / load on B" is
what the log path costs A's other RPCs, apart from the cores the clients
take on a small machine.

    /usr/bin/python3 tests/bench/bench-proxy-logs.py BUILDDIR/services/management/netbird-mgmt

Needs CP_TEST_PG_DSN (tests/bench/run sets it). Target (issue 12): 10,000
entries/s into one replica without slowing other RPCs. On a small machine
the Python clients share the cores with the server and PostgreSQL; the
figures say which side ran out.
Environment: BENCH_LOG_PROCS (4), BENCH_LOG_WINDOW (128), BENCH_LOAD_S (10).
"""

import multiprocessing
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1 and not os.environ.get("CP_PROTO_DIR"):
    os.environ["CP_PROTO_DIR"] = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "proto")
sys.path.insert(0, os.path.join(HERE, "..", "service"))

import svc  # noqa: E402
import proxyfix as pf  # noqa: E402

PROCS = int(os.environ.get("BENCH_LOG_PROCS", "4"))
WINDOW = int(os.environ.get("BENCH_LOG_WINDOW", "128"))
LOAD_S = float(os.environ.get("BENCH_LOAD_S", "10"))
PROBES = int(os.environ.get("BENCH_PROBES", "400"))
RATE = float(os.environ.get("BENCH_LOG_RATE", "10000"))
# The C load generator next to netbird-mgmt's build (BUILDDIR/tests/bench);
# BENCH_LOG_CLIENT=python uses Python senders instead (unpaced).
LOADER = None
if len(sys.argv) > 1 and os.environ.get("BENCH_LOG_CLIENT", "c") == "c":
    _l = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "tests", "bench",
                      "bench-proxy-logs-load")
    LOADER = _l if os.access(_l, os.X_OK) else None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def sender(port, token, account, service, seconds, out):
    import grpc
    # The load generator stands for proxies on other machines: on a small
    # box it must not take the server's cores (BENCH_LOG_NICE, 10).
    os.nice(int(os.environ.get("BENCH_LOG_NICE", "10")))
    ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    f = ch.unary_unary(pf.SVC + "SendAccessLog", request_serializer=lambda m: m.SerializeToString(),
                       response_deserializer=pf.ppb.SendAccessLogResponse.FromString)
    md = (("authorization", "Bearer " + token),)
    prefix = "%d-%s-" % (os.getpid(), pf.rid())
    ok = refused = 0
    n = 0
    inflight = []
    end = time.time() + seconds
    while time.time() < end:
        while len(inflight) < WINDOW:
            req = pf.ppb.SendAccessLogRequest(log=pf.ppb.AccessLog(
                log_id=prefix + str(n), account_id=account, service_id=service, host="app.bench.test",
                path="/api/items/%d" % n, method="GET", response_code=200, duration_ms=3, source_ip="198.51.100.7",
                auth_success=True, protocol="http", bytes_upload=100, bytes_download=2000))
            req.log.timestamp.seconds = int(time.time())
            n += 1
            inflight.append(f.future(req, metadata=md, timeout=30))
        done = inflight[:WINDOW // 4]
        inflight = inflight[WINDOW // 4:]
        for fut in done:
            try:
                fut.result()
                ok += 1
            except grpc.RpcError:
                refused += 1
    for fut in inflight:
        try:
            fut.result()
            ok += 1
        except grpc.RpcError:
            refused += 1
    ch.close()
    out.put((ok, refused))


def probe(p, domain, token, n, stop_at=None):
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = p.validate_session(domain, token)
        lat.append((time.perf_counter() - t0) * 1000)
        assert r.valid, r
        if stop_at and time.time() > stop_at:
            break
    return lat


def cpu_s(pid):
    """User + system CPU seconds of process pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_phase(target, p, domain, session, token, account, sid, dsn):
    """LOAD_S seconds of SendAccessLog into target while probing p:
    (accepted, refused, sent_s, rows, landed_s, probe latencies, target's
    CPU seconds)."""
    rows0 = svc.query(dsn, "SELECT count(*) FROM proxy_access_logs")[0][0]
    cpu0 = cpu_s(target.proc.pid)
    if LOADER:
        return load_phase_c(target, p, domain, session, token, account, sid, dsn, rows0, cpu0)
    # spawn, not fork: a forked child would share the parent's gRPC
    # core state (grpcio does not survive fork with a live channel).
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=sender, args=(target.grpc_port, token, account, sid, LOAD_S, q))
             for _ in range(PROCS)]
    t0 = time.time()
    for pr in procs:
        pr.start()
    time.sleep(min(1.0, LOAD_S / 5))                            # let the load build up
    lat = probe(p, domain, session, PROBES * 100, stop_at=t0 + LOAD_S - 0.5)
    results = [q.get() for _ in procs]
    for pr in procs:
        pr.join()
    sent_s = time.time() - t0
    accepted = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    deadline = time.time() + 30
    while True:
        rows = svc.query(dsn, "SELECT count(*) FROM proxy_access_logs")[0][0] - rows0
        if rows >= accepted or time.time() > deadline:
            break
        time.sleep(0.2)
    return accepted, refused, sent_s, rows, time.time() - t0, lat, cpu_s(target.proc.pid) - cpu0


def wait_landed(dsn, rows0, accepted):
    deadline = time.time() + 30
    while True:
        rows = svc.query(dsn, "SELECT count(*) FROM proxy_access_logs")[0][0] - rows0
        if rows >= accepted or time.time() > deadline:
            return rows
        time.sleep(0.2)


def load_phase_c(target, p, domain, session, token, account, sid, dsn, rows0, cpu0):
    """load_phase with bench-proxy-logs-load (C) as the proxies, paced at
    RATE calls a second."""
    import subprocess
    nice = int(os.environ.get("BENCH_LOG_NICE", "10"))
    cmd = ["nice", "-n", str(nice), LOADER, "127.0.0.1:%d" % target.grpc_port, token, account, sid,
           str(LOAD_S), str(PROCS), str(WINDOW), str(RATE)]
    t0 = time.time()
    pr = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(min(1.0, LOAD_S / 5))
    lat = probe(p, domain, session, PROBES * 100, stop_at=t0 + LOAD_S - 0.5)
    out, _ = pr.communicate(timeout=LOAD_S + 60)
    f = out.split()
    accepted, refused, sent_s = int(f[1]), int(f[3]), float(f[5])
    rows = wait_landed(dsn, rows0, accepted)
    return accepted, refused, sent_s, rows, time.time() - t0, lat, cpu_s(target.proc.pid) - cpu0


def main():
    if not svc.PG_DSN or not svc.BINARY:
        print("bench-proxy-logs: needs CP_TEST_PG_DSN and the netbird-mgmt path (tests/bench/run)")
        return 0
    pf.need()
    try:
        dsn, _ = svc.new_db()
        # Two replicas on one database: the probes always go to srv; the
        # log load goes first to other (the machine, PostgreSQL and the
        # clients as busy as in the real phase: the baseline), then to srv.
        srv = svc.Server(svc.base_args(), env=svc.dsn_env(dsn))
        svc.defer(srv.stop)
        other = svc.Server(svc.base_args(), env=svc.dsn_env(dsn))
        svc.defer(other.stop)
        a = pf.Account(dsn)
        sid, domain, sk = a.service()
        user = a.user(email="bench@a.test")
        token = pf.global_proxy_token(dsn)
        p = pf.Proxy(srv, token)
        session = pf.mint_session(sk, user, domain)
        probe(p, domain, session, 50)                               # warm up
        base = probe(p, domain, session, PROBES)
        phases = [("another replica", load_phase(other, p, domain, session, token, a.id, sid, dsn)),
                  ("this replica", load_phase(srv, p, domain, session, token, a.id, sid, dsn))]

        if LOADER:
            print("bench-proxy-logs: bench-proxy-logs-load (C), %d connections x %d calls in flight, paced at"
                  " %.0f/s, %.0f s of load per phase" % (PROCS, WINDOW, RATE, LOAD_S))
        else:
            print("bench-proxy-logs: %d Python proxy processes x %d calls in flight, %.0f s of load per phase"
                  % (PROCS, WINDOW, LOAD_S))
        print("  ValidateSession on replica A, idle:       p50 %.2f ms  p99 %.2f ms  (%d calls)" %
              (statistics.median(base), pct(base, 0.99), len(base)))
        for name, (accepted, refused, sent_s, rows, landed_s, lat, cpu) in phases:
            print("  log load into %s:" % name)
            print("    SendAccessLog accepted   %8d  (%.0f/s)   refused (queue full) %d" %
                  (accepted, accepted / sent_s, refused))
            print("    rows in proxy_access_logs %7d  (%.0f/s until the last one landed)   target 10000/s" %
                  (rows, rows / landed_s))
            print("    ValidateSession on A:  p50 %.2f ms  p99 %.2f ms  (%d calls)" %
                  (statistics.median(lat), pct(lat, 0.99), len(lat)))
            print("    the loaded replica's CPU: %.1f us per entry (%.2f cores at 10,000/s)" %
                  (cpu * 1e6 / max(accepted, 1), cpu / max(accepted, 1) * 10000))
        lo, hi = phases[0][1][5], phases[1][1][5]
        print("  ratio load-on-A / load-on-B (what the log path costs A's other RPCs):"
              "  p50 x%.2f  p99 x%.2f" % (statistics.median(hi) / statistics.median(lo), pct(hi, 0.99) / pct(lo, 0.99)))
        print("  ratio load-on-A / idle (includes the machine being busy):  p50 x%.2f  p99 x%.2f" %
              (statistics.median(hi) / statistics.median(base), pct(hi, 0.99) / pct(base, 0.99)))
        return 0
    finally:
        while svc._cleanups:
            fn, args = svc._cleanups.pop()
            try:
                fn(*args)
            except Exception as e:       # keep cleaning up
                print("bench-proxy-logs: cleanup: %s" % e)


if __name__ == "__main__":
    raise SystemExit(main())
