"""Several processes against one database: replicas starting together,
and the migrate / bootstrap subcommands."""

import re
import threading

import svc
from svc import test, Server, base_args, http_json


@test
def two_replicas_start_together_on_a_fresh_database():
    dsn, _ = svc.new_db()
    servers = [None, None]
    errors = []
    go = threading.Barrier(2)

    def start(i):
        try:
            go.wait()
            servers[i] = Server(base_args(), env=svc.dsn_env(dsn))
        except Exception as e:      # reported below
            errors.append(e)
    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for srv in servers:
        status, _, body = http_json("GET", srv.url("/readyz"))
        assert status == 200 and body == {"status": "ready"}, body
    # Each migration ran exactly once, whichever replica applied it.
    known = svc.query(dsn, "SELECT count(*) FROM schema_migrations")[0][0]
    applied = [int(srv.wait_log(lambda o: o.get("msg") == "database schema ready")["applied"]) for srv in servers]
    assert sum(applied) == known and known > 0, (applied, known)
    for srv in servers:
        rc, _ = srv.stop(30)
        assert rc == 0, srv.stdout()


def parse_vars(text):
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        assert m, "not a NAME=value line: %r" % line
        out[m.group(1)] = m.group(2)
    return out


@test
def migrate_then_bootstrap():
    dsn, _ = svc.new_db()
    env = svc.dsn_env(dsn)
    r = svc.run(["migrate", "--config="], env=env)
    assert r.rc == 0, r
    m = re.fullmatch(r"applied (\d+) migrations? \(0 already applied\)\n", r.out)
    assert m and int(m.group(1)) > 0, r
    n = int(m.group(1))
    # logs went to stderr, as JSON
    assert any(l.get("msg") == "database schema ready" for l in svc.json_lines(r.err)), r
    r = svc.run(["migrate", "--config="], env=env)
    assert r.rc == 0 and r.out == "applied 0 migrations (%d already applied)\n" % n, r

    r = svc.run(["bootstrap", "--config=", "--account-name", "ops", "--setup-key-ttl", "720h"], env=env)
    assert r.rc == 0, r
    v = parse_vars(r.out)
    assert sorted(v) == ["ACCOUNT_ID", "ADMIN_TOKEN", "NETWORK", "SETUP_KEY", "USER_ID"], v
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[0-9A-F]{4}-[0-9A-F]{12}", v["SETUP_KEY"]), v
    assert v["ADMIN_TOKEN"].startswith("nbp_") and len(v["ADMIN_TOKEN"]) == 40, v
    assert re.fullmatch(r"100\.\d+\.0\.0/16", v["NETWORK"]), v
    assert svc.query(dsn, "SELECT count(*) FROM accounts")[0][0] == 1
    assert svc.query(dsn, "SELECT id FROM accounts")[0][0] == v["ACCOUNT_ID"]
    assert svc.query(dsn, "SELECT count(*) FROM users WHERE id = '%s' AND account_id = '%s'" % (
        v["USER_ID"], v["ACCOUNT_ID"]))[0][0] == 1
    # secrets are stored hashed, never in plain text
    keys = svc.query(dsn, "SELECT key FROM setup_keys WHERE account_id = '%s'" % v["ACCOUNT_ID"])
    assert keys and all(k[0] != v["SETUP_KEY"] for k in keys), keys
    assert svc.json_lines(r.err), r

    # a second bootstrap creates nothing and prints nothing
    r = svc.run(["bootstrap", "--config="], env=env)
    assert r.rc == 0 and r.out == "", r
    assert svc.query(dsn, "SELECT count(*) FROM accounts")[0][0] == 1
    assert any(l.get("level") == "warn" and "already exist" in l.get("msg", "") for l in svc.json_lines(r.err)), r


@test
def bootstrap_on_an_empty_database_migrates_first():
    dsn, _ = svc.new_db()
    r = svc.run(["bootstrap", "--config=", "--dns-domain", "corp.internal"], env=svc.dsn_env(dsn))
    assert r.rc == 0, r
    v = parse_vars(r.out)
    # The schema exists and the account is there. Its own DNS-domain override
    # stays empty: the server's --dns-domain applies, and changing the flag
    # later must not leave the first account behind on the old domain.
    assert svc.query(dsn, "SELECT count(*) FROM schema_migrations") != [(0,)]
    assert svc.query(dsn, "SELECT settings_dns_domain FROM accounts WHERE id = '%s'" % v["ACCOUNT_ID"]) == \
        [("",)]


@test
def concurrent_bootstraps_create_one_account():
    dsn, _ = svc.new_db()
    import subprocess
    procs = [subprocess.Popen([svc.BINARY, "bootstrap", "--config="], env=svc.clean_env(svc.dsn_env(dsn)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for _, err in outs:
        svc.check_sanitizer_clean(err)
    printed = [o for o, _ in outs if "ACCOUNT_ID=" in o]
    assert len(printed) == 1, outs
    assert svc.query(dsn, "SELECT count(*) FROM accounts") == [(1,)]


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
