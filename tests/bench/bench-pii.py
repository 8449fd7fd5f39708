"""bench-pii: GET /api/users with 1,000 users whose e-mails and names are
plain text (as before migration 0012) next to 1,000 users sealed with the
DataStoreEncryptionKey (docs/msp.md "Personal data at rest").

    tests/bench/run --only pii   (or by hand with CP_TEST_PG_DSN set:
    /usr/bin/python3 tests/bench/bench-pii.py build/services/management/netbird-mgmt)

One netbird-mgmt and two accounts of 1,000 users each, inserted in SQL:
account A in plain text (pii_key ''), account B sealed here in Python
(AES-256-GCM, NetBird's format, the deployment's key) with the key's
fingerprint. The script holds the advisory lock the replicas' legacy
sealing takes, so A stays plain while it runs. Requests alternate A, B,
A, B... over keep-alive connections (so load from elsewhere on the
machine hits both alike); each figure is the median, to the last byte,
after a warm-up. Then the lock is released and the time the replica
takes to seal A's 1,000 legacy rows is measured. Never fails on a slow
machine: it prints.
"""

import base64
import hashlib
import hmac
import http.client
import os
import secrets
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1 and not os.environ.get("CP_PROTO_DIR"):
    os.environ["CP_PROTO_DIR"] = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "proto")
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "service"))

import svc  # noqa: E402
import fixture  # noqa: E402

USERS = int(os.environ.get("BENCH_PII_USERS", "1000"))
RUNS = int(os.environ.get("BENCH_PII_RUNS", "40"))
LEGACY_LOCK = 7045142902        # common/store/store-pii.c LOCK_LEGACY


def seal(key, text):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, text.encode(), None)).decode()


def get(conn, token):
    t0 = time.perf_counter()
    conn.request("GET", "/api/users", headers={"Authorization": "Token " + token})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return (time.perf_counter() - t0) * 1000, body


def main():
    if not svc.PG_DSN:
        print("bench-pii: set CP_TEST_PG_DSN (tests/bench/run does)")
        return 0
    import psycopg2
    dep = fixture.Deployment()
    lock = psycopg2.connect(dep.dsn)
    lock.autocommit = True
    with lock.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LEGACY_LOCK,))
    srv = dep.start()
    admin_bin = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "admin", "netbird-cp-admin")
    out = subprocess.run([admin_bin, "account", "create", "--domain", "b.bench"], capture_output=True, text=True,
                         env=svc.clean_env(dep.env()), check=True).stdout
    b = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
    key = base64.b64decode(dep.enc_key)
    fp = hmac.new(key, b"netbird-cp data key fingerprint v1", hashlib.sha256).digest()[:16].hex()
    dep.sql("INSERT INTO users (id, account_id, role, name, email) SELECT 'plain' || i, %s, 'user',"
            " 'Bench User ' || i, 'bench' || i || '@example.test' FROM generate_series(1, %s) i",
            (dep.account_id, USERS))
    rows = [("sealed%d" % i, b["ACCOUNT_ID"], seal(key, "Bench User %d" % i), seal(key, "bench%d@example.test" % i),
             fp) for i in range(1, USERS + 1)]
    import psycopg2.extras
    conn = psycopg2.connect(dep.dsn)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, "INSERT INTO users (id, account_id, role, name, email, pii_key)"
                                       " VALUES %s", [(r[0], r[1], "user", r[2], r[3], r[4]) for r in rows])
    conn.close()

    ca = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    cb = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    get(ca, dep.admin_token)
    get(cb, b["ADMIN_TOKEN"])
    ta, tb = [], []
    for _ in range(RUNS):
        t, body_a = get(ca, dep.admin_token)
        ta.append(t)
        t, body_b = get(cb, b["ADMIN_TOKEN"])
        tb.append(t)
    ca.close()
    cb.close()
    same = body_b.replace(b"sealed", b"plain").replace(b["ACCOUNT_ID"].encode(), b"") .count(b"bench") == \
        body_a.count(b"bench")
    # The same aggregate in SQL alone, with and without the markers.
    def sql_ms(expr, account):
        q = ("SELECT length(COALESCE(json_agg(json_build_object('id', u.id, 'email', %s, 'name', %s)"
             " ORDER BY u.created_at, u.id), '[]')::text) FROM users u WHERE u.account_id = %%s") % expr
        c = psycopg2.connect(dep.dsn)
        ts = []
        with c.cursor() as cur:
            for _ in range(RUNS):
                t0 = time.perf_counter()
                cur.execute(q, (account,))
                cur.fetchall()
                ts.append((time.perf_counter() - t0) * 1000)
        c.close()
        return statistics.median(ts)
    marker = "(CASE WHEN (u.pii_key) = '' THEN (u.{0}) WHEN u.pii_key IS NOT NULL THEN concat('pii1:', u.pii_key, ':', u.{0}) END)"
    sql_plain = sql_ms(("u.email", "u.name"), b["ACCOUNT_ID"])
    sql_marked = sql_ms((marker.format("email"), marker.format("name")), b["ACCOUNT_ID"])
    if os.environ.get("BENCH_PII_VARIANTS"):
        for label, e in (("no CASE", "'pii1:' || u.pii_key || ':' || u.{0}"), ("concat()", "concat('pii1:', u.pii_key, ':', u.{0})"),
                         ("suffix", "u.{0} || u.pii_key"), ("columns again", "u.{0}")):
            print("  variant %-14s %.2f ms" % (label, sql_ms((e.format("email"), e.format("name")), b["ACCOUNT_ID"])))
    plain_left = dep.sql("SELECT count(*) FROM users WHERE pii_key = '' AND id LIKE 'plain%%'")[0][0]

    with lock.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (LEGACY_LOCK,))
    lock.close()
    t0 = time.monotonic()
    while dep.sql("SELECT count(*) FROM users WHERE pii_key = ''")[0][0]:
        time.sleep(0.1)
    seal_s = time.monotonic() - t0

    pa, pb = statistics.median(ta), statistics.median(tb)
    print("bench-pii: GET /api/users, %d users per account, alternating, median of %d" % (USERS, RUNS))
    print("  A plain text (%d rows unsealed)   %7.2f ms  (%d bytes)" % (plain_left, pa, len(body_a)))
    print("  B sealed, opened in C            %7.2f ms  (%d bytes)   %+.1f %%" % (pb, len(body_b),
                                                                          100 * (pb / pa - 1)))
    print("  SQL alone on B: columns %.2f ms, with CP_PII_SQL markers %.2f ms" % (sql_plain, sql_marked))
    print("  every user of B shown in plain text: %s" % (same and b"@example.test" in body_b))
    print("  legacy sealing by the replica: %d rows in %.1f s (batches of 500, 4 per readiness check)" % (
        USERS + 1, seal_s))
    fixture.stop_server(srv)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        while svc._cleanups:
            fn, args = svc._cleanups.pop()
            fn(*args)
