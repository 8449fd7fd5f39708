"""Through pgbouncer (Debian's 1.18) in transaction pooling mode, in front
of tests/run's PostgreSQL (CP_TEST_PG_DIRECT_DSN): migrations (transaction
advisory lock), a replica with --db-prepared-statements=false, an agent's
login and Sync, a REST change that reaches the stream. A second replica
left at the default (named prepared statements) switches to unnamed ones
by itself once the pooler hands it a server connection without its
statements, and serves too. Session pooling mode works with the defaults.
docs/database-ha.md explains why."""

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from nbagent import build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

PGBOUNCER = "/usr/sbin/pgbouncer"
DIRECT = os.environ.get("CP_TEST_PG_DIRECT_DSN", svc.PG_DSN)
# The default, stated: tests/run --pgbouncer transaction sets false for
# every server (svc.clean_env).
NAMED = {"NB_MGMT_DB_PREPARED_STATEMENTS": "true"}


def dsn_port(dsn):
    for part in dsn.split():
        if part.startswith("port="):
            return int(part[5:])
    return 5432


class Bouncer:
    def __init__(self, mode):
        if not os.access(PGBOUNCER, os.X_OK):
            raise svc.Skip("pgbouncer not installed (deploy/install-deps)")
        self.root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="cp-pgb-", dir="/tmp")
        os.chmod(self.dir, 0o711)
        self.port = svc.free_port()
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write("[databases]\n* = host=127.0.0.1 port=%d\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
                    "listen_port = %d\nunix_socket_dir =\nauth_type = trust\nauth_file = %s/userlist.txt\n"
                    "pool_mode = %s\nmax_client_conn = 500\ndefault_pool_size = 10\nquery_wait_timeout = 10\n"
                    "server_reset_query = DISCARD ALL\n" % (dsn_port(DIRECT), self.port, self.dir, mode))
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"postgres" ""\n')
        kw = {}
        if self.root:
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, ini, os.path.join(self.dir, "userlist.txt")):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            kw = {"user": "postgres", "group": "postgres"}
        self.log = open(os.path.join(self.dir, "pgbouncer.log"), "ab")
        self.proc = subprocess.Popen([PGBOUNCER, ini], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd="/", **kw)
        svc.defer(self.stop)
        wait_until(lambda: self._answers(), timeout=15, what="pgbouncer answers")

    def _answers(self):
        import psycopg2
        try:
            psycopg2.connect(self.dsn("postgres")).close()
            return True
        except psycopg2.Error:
            assert self.proc.poll() is None, "pgbouncer exited"
            return False

    def dsn(self, dbname):
        return "host=127.0.0.1 port=%d user=postgres dbname=%s" % (self.port, dbname)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def deployment_through(bouncer):
    """A Deployment whose database is made directly and used through the
    pooler (bootstrap, i.e. migrations, included)."""
    saved = svc.PG_DSN
    svc.PG_DSN = bouncer.dsn("postgres")
    try:
        return Deployment()
    finally:
        svc.PG_DSN = saved






def serve_and_change(dep, srv_a, srv_b):
    """Agents on both replicas; a REST change and a registration reach
    the streams (serial check short: no bus here)."""
    a = dep.agent(srv_a)
    a.register(dep.setup_key, meta=build_meta("pgb-a-" + secrets.token_hex(3)))
    sa = a.sync()
    sa.next(timeout=20)
    b = dep.agent(srv_b)
    b.register(dep.setup_key, meta=build_meta("pgb-b-" + secrets.token_hex(3)))
    sb = b.sync()
    sb.next(timeout=20)
    sa.wait_for(lambda m: b.pub_b64 in remote_keys(m), timeout=20)
    for i, srv in enumerate((srv_a, srv_b) * 5):
        status, body = svc.rest(srv, "POST", "/api/groups", dep.admin_token, {"name": "pgb-%d" % i})
        assert status == 200, (status, body)
    status, body = svc.rest(srv_b, "GET", "/api/groups", dep.admin_token)
    assert status == 200 and {"pgb-%d" % i for i in range(10)} <= {g["name"] for g in body}, body
    # A policy change bumps the serial: both streams get the new map.
    status, pols = svc.rest(srv_a, "GET", "/api/policies", dep.admin_token)
    assert status == 200 and pols, pols
    before = dep.network_serial()
    status, body = svc.rest(srv_b, "DELETE", "/api/policies/" + pols[0]["id"], dep.admin_token)
    assert status == 200, (status, body)
    serial = dep.network_serial()
    assert serial > before
    for s in (sa, sb):
        s.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=20)
    for srv in (srv_a, srv_b):
        assert svc.http("GET", srv.url("/readyz"))[0] == 200
    sa.cancel()
    sb.cancel()
    wait_until(lambda: dep.sql("SELECT count(*) FROM peers WHERE peer_status_connected")[0][0] == 0,
               timeout=15, what="both disconnected by their streams' ends")


@test
def transaction_pooling():
    svc.needs_db()
    bouncer = Bouncer("transaction")
    dep = deployment_through(bouncer)
    dep.dsn = bouncer.dsn(dep.db)
    r1 = dep.start("--db-prepared-statements=false", "--serial-check-interval", "1s")
    # Named statements (the default; also under tests/run --pgbouncer
    # transaction, which sets the option for every server): must notice
    # and switch by itself.
    r2 = dep.start("--serial-check-interval", "1s", env=NAMED)
    serve_and_change(dep, r1, r2)
    assert svc.metric(r1, "netbird_cp_store_prepared_statements") == 0
    # Which statement meets a server connection without it depends on the
    # pooler's choice: make sure some do.
    for i in range(40):
        svc.rest(r2, "GET", "/api/groups", dep.admin_token)
        svc.rest(r2, "GET", "/api/peers", dep.admin_token)
    wait_until(lambda: svc.metric(r2, "netbird_cp_store_prepared_statements") == 0, timeout=20,
               what="r2 switched to unnamed statements")
    assert svc.http("GET", r2.url("/readyz"))[0] == 200
    # A second start migrates again through the pooler (nothing pending).
    r = svc.run(["migrate"], env=dep.env())
    assert r.rc == 0, r


@test
def session_pooling():
    svc.needs_db()
    bouncer = Bouncer("session")
    dep = deployment_through(bouncer)
    dep.dsn = bouncer.dsn(dep.db)
    r1 = dep.start("--serial-check-interval", "1s", env=NAMED)
    r2 = dep.start("--serial-check-interval", "1s", env=NAMED)
    serve_and_change(dep, r1, r2)
    # Session pooling keeps a server connection per client: nothing lost.
    assert svc.metric(r1, "netbird_cp_store_prepared_statements") == 1


if __name__ == "__main__":
    svc.run_all()
