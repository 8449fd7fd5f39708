"""bench-api-jwt: what signing in with an IdP token costs per request,
against a personal access token of the same user.

    tests/bench/run runs it (or by hand, with a PostgreSQL):
    CP_TEST_PG_DSN="host=127.0.0.1 port=P user=postgres dbname=postgres" \\
        /usr/bin/python3 tests/bench/bench-api-jwt.py build/services/management/netbird-mgmt

One netbird-mgmt with HttpConfig pointing at the loopback test IdP
(tests/idp/testidp.py), an account created by the first JWT sign-in, a
PAT made for that same user. Then GET /api/users/current over one
keep-alive HTTP/1.1 connection each, JWT and PAT requests interleaved in
the same run (so both see the same machine load), after warm-up requests
that fill the server's key and verified-token caches. Prints p50 and p90
of each, in ms to the last byte, and the JWT/PAT ratio of the medians
(the project's target: <= 1.2). Never fails on a slow machine: it prints.
"""

import http.client
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1 and not os.environ.get("CP_PROTO_DIR"):
    os.environ["CP_PROTO_DIR"] = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "proto")
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "api"))

import svc  # noqa: E402
import apifix  # noqa: E402
import testidp  # noqa: E402

RUNS = int(os.environ.get("BENCH_API_JWT_RUNS", "2000"))
WARMUP = 50


class Client:
    def __init__(self, port, authorization):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": authorization, "Accept": "application/json"}

    def get(self, path):
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        t1 = time.perf_counter()
        if r.status != 200:
            raise SystemExit("bench-api-jwt: GET %s -> %d: %r" % (path, r.status, data[:300]))
        return (t1 - t0) * 1000.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    if not svc.PG_DSN:
        print("bench-api-jwt: set CP_TEST_PG_DSN (tests/bench/run does) to run it")
        return 0
    if not svc.BINARY:
        print("usage: bench-api-jwt.py NETBIRD-MGMT")
        return 2
    idp = testidp.TestIdP()
    try:
        dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
        token = idp.token("bench-user", email="bench@x.example", name="Bench")
        jwt_api = apifix.jwt_api(srv, token)
        deadline = time.time() + 60
        while jwt_api.get("/api/users/current")[0] != 200:
            if time.time() > deadline:
                raise SystemExit("bench-api-jwt: the JWT was never accepted (no IdP wired into netbird-mgmt?)")
            time.sleep(0.2)
        pat = jwt_api.ok("POST", "/api/users/bench-user/tokens", {"name": "bench", "expires_in": 1})
        port = int(srv.url("").rsplit(":", 1)[1].split("/")[0])
        cj = Client(port, "Bearer " + token)
        cp = Client(port, "Token " + pat["plain_token"])
        for _ in range(WARMUP):
            cj.get("/api/users/current")
            cp.get("/api/users/current")
        tj, tp = [], []
        for i in range(RUNS):
            # Alternate which goes first so neither always follows the other.
            if i % 2:
                tj.append(cj.get("/api/users/current"))
                tp.append(cp.get("/api/users/current"))
            else:
                tp.append(cp.get("/api/users/current"))
                tj.append(cj.get("/api/users/current"))
        print("bench-api-jwt: GET /api/users/current, %d requests each, interleaved, keep-alive,"
              " ms to the last byte" % RUNS)
        print("  %-6s p50 %7.3f ms   p90 %7.3f ms" % ("JWT", statistics.median(tj), pct(tj, 90)))
        print("  %-6s p50 %7.3f ms   p90 %7.3f ms" % ("PAT", statistics.median(tp), pct(tp, 90)))
        print("  ratio JWT/PAT: p50 %.2f, p90 %.2f (target <= 1.2)" % (
            statistics.median(tj) / statistics.median(tp), pct(tj, 90) / pct(tp, 90)))
        sys.stdout.flush()
    finally:
        while svc._cleanups:
            fn, args = svc._cleanups.pop()
            fn(*args)
        idp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
