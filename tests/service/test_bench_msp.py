"""tests/bench/bench-msp.py run small (20 tenants, 4 as its baseline, 2
changes), so the benchmark's code cannot rot between its long runs: every
size must provision its tenants through the MSP API, connect all agents,
deliver each one-tenant change to exactly that tenant's 5 streams and to
no other stream, and print its figures. No figure is judged here (the
benchmark never fails on a slow machine); only what the run did.

The binaries come from NETBIRD_LOAD and NETBIRD_ADMIN (meson sets them);
CP_TEST_PG_DSN and CP_TEST_REDIS_URL from tests/run.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

import svc  # noqa: E402
from svc import test  # noqa: E402

BENCH = os.path.join(HERE, "..", "bench", "bench-msp.py")
LOAD = os.environ.get("NETBIRD_LOAD", "")
PROVISION = os.environ.get("BENCH_MSP_PROVISION", "api")


@test
def smoke_twenty_tenants():
    svc.needs_db()
    svc.needs_redis()
    if not LOAD or not os.access(LOAD, os.X_OK):
        raise svc.Skip("NETBIRD_LOAD not set (meson sets it)")
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    p = subprocess.run([sys.executable, BENCH, svc.BINARY, "--tenants", "20", "--baseline", "4", "--changes", "2",
                        "--http-clients", "4", "--provision", PROVISION, "--load", LOAD, "--json"],
                       capture_output=True, text=True, timeout=240, env=env)
    ctx = "rc %d\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout[-4000:], p.stderr[-4000:])
    assert p.returncode == 0, ctx
    svc.check_sanitizer_clean(p.stderr)
    res = [json.loads(l.split(" ", 1)[1]) for l in p.stdout.splitlines() if l.startswith("bench-msp-json: ")]
    assert [r["tenants"] for r in res] == [4, 20], ctx
    for r in res:
        assert r["streams_open"] == r["peers"] == 5 * r["tenants"], ctx
        assert r["register_errors"] == {} and r["load_errors"] == {} and r["streams_ended_by_server"] == 0, ctx
        assert len(r["changes"]) == 2 and r["changes_incomplete"] == 0, ctx
        for c in r["changes"]:
            # The tenant's 5 streams got the change, in time; nobody else got anything.
            assert c["received"] == 5 and c["last_ms"] is not None and c["others_touched"] == 0, ctx
            assert c["maps_pushed"] >= 5, ctx
        assert r["kb_per_tenant"] > 0 and r["tenants_per_s"] > 0, ctx
    # The human-readable figures are there too.
    for needle in ("memory per tenant", "tenants/s", "one-tenant change", "vs 4 tenants in the same run"):
        assert needle in p.stdout, (needle, ctx)


if __name__ == "__main__":
    sys.exit(svc.run_all())
