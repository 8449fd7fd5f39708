"""bench-proxy-sync: a proxy's initial sync of 10,000 mappings against the
real netbird-mgmt and a real PostgreSQL.

    tests/bench/run runs it (or by hand, with a PostgreSQL):
    CP_TEST_PG_DSN="host=127.0.0.1 port=P user=postgres dbname=postgres" \\
        /usr/bin/python3 tests/bench/bench-proxy-sync.py build/services/management/netbird-mgmt

Measured, median of RUNS (after one warm-up):
  SyncMappings      init to initial_sync_complete, acking each batch at once
                    (20 batches of 500: 20 ack round trips)
  GetMappingUpdate  request to initial_sync_complete (back-to-back batches)
  baseline          SELECT of the same rows with the same columns over one
                    psycopg2 connection (what the database alone costs)
Never fails on a slow machine: it prints.
"""

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1 and not os.environ.get("CP_PROTO_DIR"):
    os.environ["CP_PROTO_DIR"] = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "proto")
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "service"))

import svc  # noqa: E402
from fixture import Deployment  # noqa: E402
import proxyclient as pc  # noqa: E402

N = 10000
CLUSTER = "bench.proxy.example"
RUNS = int(os.environ.get("BENCH_PROXY_RUNS", "5"))


def timed(fn):
    t = time.monotonic()
    fn()
    return (time.monotonic() - t) * 1000


def main():
    if not svc.PG_DSN:
        print("# bench-proxy-sync needs CP_TEST_PG_DSN (tests/bench/run provides one)")
        return
    dep = Deployment()
    srv = dep.start("--serial-check-interval", "0s")
    _, tok = pc.add_token(dep)
    pc.add_many_services(dep, dep.account_id, CLUSTER, N)
    p = pc.Proxy(srv.grpc_target, tok)

    def sync_mappings():
        s = p.sync()
        s.send_init("bench-sync", CLUSTER)
        maps, _ = pc.snapshot(s, timeout=120)
        assert len(maps) == N, len(maps)
        s.close()

    def get_mapping_update():
        n = 0
        call = p.get_mapping_update("bench-gmu", CLUSTER)
        for r in call:
            n += len(r.mapping)
            if r.initial_sync_complete:
                break
        call.cancel()
        assert n == N, n

    def baseline():
        import psycopg2
        conn = psycopg2.connect(dep.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, account_id, domain, mode, listen_port, pass_host_header,"
                            " rewrite_redirects, private, targets::text, auth::text, restrictions::text,"
                            " session_public_key FROM services WHERE proxy_cluster = %s AND enabled"
                            " ORDER BY id", (CLUSTER,))
                assert len(cur.fetchall()) == N
        finally:
            conn.close()

    results = {}
    for name, fn in [("SyncMappings (immediate acks)", sync_mappings), ("GetMappingUpdate", get_mapping_update),
                     ("baseline: SELECT of the same rows", baseline)]:
        fn()
        results[name] = statistics.median(timed(fn) for _ in range(RUNS))
    print("# initial sync of %d mappings, median of %d runs" % (N, RUNS))
    for name, ms in results.items():
        print("%-36s %8.1f ms" % (name, ms))
    base = results["baseline: SELECT of the same rows"]
    for name in list(results)[:2]:
        print("%-36s %8.1fx the baseline" % (name, results[name] / base))
    p.close()


if __name__ == "__main__":
    svc.test(main)
    sys.exit(svc.run_all())
