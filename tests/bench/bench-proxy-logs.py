"""bench-proxy-logs: SendAccessLog ingest from concurrent proxies into one
netbird-mgmt, and what that load does to another RPC on the same replica.

Several proxy processes (grpcio, each with its own channel and a window of
calls in flight) send access-log entries for LOAD_S seconds; the rate is
what the server accepted and what landed in proxy_access_logs (it writes
them in batches: one INSERT ... jsonb_to_recordset per flush). Meanwhile,
and before, one client calls ValidateSession (a service lookup, an Ed25519
verification and a user lookup) one call at a time; its p50/p99 with and
without the log load are printed with their ratio.

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


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def sender(port, token, account, service, seconds, out):
    import grpc
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


def main():
    if not svc.PG_DSN or not svc.BINARY:
        print("bench-proxy-logs: needs CP_TEST_PG_DSN and the netbird-mgmt path (tests/bench/run)")
        return 0
    pf.need()
    try:
        dsn, _ = svc.new_db()
        srv = svc.Server(svc.base_args(), env=svc.dsn_env(dsn))
        svc.defer(srv.stop)
        a = pf.Account(dsn)
        sid, domain, sk = a.service()
        user = a.user(email="bench@a.test")
        token = pf.global_proxy_token(dsn)
        p = pf.Proxy(srv, token)
        session = pf.mint_session(sk, user, domain)
        probe(p, domain, session, 50)                               # warm up
        base = probe(p, domain, session, PROBES)

        # spawn, not fork: a forked child would share the parent's gRPC
        # core state (grpcio does not survive fork with a live channel).
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        procs = [ctx.Process(target=sender, args=(srv.grpc_port, token, a.id, sid, LOAD_S, q))
                 for _ in range(PROCS)]
        t0 = time.time()
        for pr in procs:
            pr.start()
        time.sleep(min(1.0, LOAD_S / 5))                            # let the load build up
        loaded = probe(p, domain, session, PROBES * 100, stop_at=t0 + LOAD_S - 0.5)
        results = [q.get() for _ in procs]
        for pr in procs:
            pr.join()
        sent_s = time.time() - t0
        accepted = sum(r[0] for r in results)
        refused = sum(r[1] for r in results)
        deadline = time.time() + 30
        while True:
            rows = svc.query(dsn, "SELECT count(*) FROM proxy_access_logs")[0][0]
            if rows >= accepted or time.time() > deadline:
                break
            time.sleep(0.2)
        landed_s = time.time() - t0

        print("bench-proxy-logs: %d proxy processes x %d calls in flight, %.0f s of load" % (PROCS, WINDOW, LOAD_S))
        print("  SendAccessLog accepted   %8d  (%.0f/s)   refused (queue full) %d" %
              (accepted, accepted / sent_s, refused))
        print("  rows in proxy_access_logs %7d  (%.0f/s until the last one landed)   target 10000/s" %
              (rows, rows / landed_s))
        print("  ValidateSession          p50 %.2f ms  p99 %.2f ms  (idle, %d calls)" %
              (statistics.median(base), pct(base, 0.99), len(base)))
        print("  ValidateSession          p50 %.2f ms  p99 %.2f ms  (under log load, %d calls)" %
              (statistics.median(loaded), pct(loaded, 0.99), len(loaded)))
        print("  ratio loaded/idle        p50 x%.2f  p99 x%.2f" %
              (statistics.median(loaded) / statistics.median(base), pct(loaded, 0.99) / pct(base, 0.99)))
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
