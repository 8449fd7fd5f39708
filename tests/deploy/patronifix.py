"""A Patroni pair on loopback for tests: one etcd (Debian's etcd-server,
v3 API), two PostgreSQL nodes managed by Debian's patroni, data in a
temporary directory, free ports, synchronous_mode on. PostgreSQL refuses
to run as root: when we are root, patroni (and so postgres) runs as the
postgres user and the directory is that user's. Every process is ours and
is stopped by its pid. docs/database-ha.md explains the settings."""

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import svc

ETCD = "/usr/bin/etcd"
PATRONI = "/usr/bin/patroni"
SCOPE = "cpha"
# Leader key TTL, Patroni's loop and retry: a dead leader's key expires
# after TTL seconds; loop_wait + 2 * retry_timeout <= ttl.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 4


def pg_bindir():
    d = os.environ.get("CP_TEST_PG_BINDIR")
    if d and os.path.isdir(d):
        return d
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not found:
        raise svc.Skip("no PostgreSQL under /usr/lib/postgresql")
    return found[-1]


def _yaml(obj, indent=0):
    """JSON is YAML: Patroni reads it as is."""
    return json.dumps(obj, indent=2)


class Node:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.pg_port = svc.free_port()
        self.api_port = svc.free_port()
        self.data = os.path.join(cluster.dir, name)
        self.sock = os.path.join(cluster.dir, "sock-" + name)
        self.log = os.path.join(cluster.dir, name + ".log")
        self.conf = os.path.join(cluster.dir, name + ".yml")
        self.proc = None
        os.makedirs(self.sock, exist_ok=True)
        cluster.chown(self.sock)
        cfg = {
            "scope": SCOPE,
            "name": name,
            "log": {"level": "INFO"},
            "restapi": {"listen": "127.0.0.1:%d" % self.api_port,
                        "connect_address": "127.0.0.1:%d" % self.api_port},
            "etcd3": {"hosts": ["127.0.0.1:%d" % cluster.etcd_port]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    # A commit is acknowledged only once the synchronous
                    # standby has it: no acknowledged change is lost when
                    # the primary dies and the standby is promoted.
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": False,
                        "parameters": {"max_connections": 200, "wal_level": "replica", "hot_standby": "on",
                                       "max_wal_senders": 10, "max_replication_slots": 10,
                                       "wal_keep_size": "128MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "no-locale", {"auth-host": "trust"},
                           {"auth-local": "trust"}],
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 trust",
                           "host replication all 127.0.0.1/32 trust"],
            },
            "postgresql": {
                "listen": "127.0.0.1:%d" % self.pg_port,
                "connect_address": "127.0.0.1:%d" % self.pg_port,
                "data_dir": self.data,
                "bin_dir": pg_bindir(),
                "pgpass": os.path.join(cluster.dir, name + ".pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "unused"},
                    "replication": {"username": "postgres", "password": "unused"},
                },
                "parameters": {"unix_socket_directories": self.sock, "logging_collector": "off"},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }
        with open(self.conf, "w") as f:
            f.write(_yaml(cfg))
        cluster.chown(self.conf)

    def start(self):
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([PATRONI, self.conf], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.cluster.dir,
                                     env=self.cluster.env(), **self.cluster.run_as())
        out.close()

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return 0

    def role(self):
        """'master'/'primary', 'replica', or None when the REST API does not answer."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/patroni" % self.api_port, timeout=2) as r:
                return json.loads(r.read().decode()).get("role")
        except Exception:
            return None

    def kill9(self):
        """The node dies: Patroni and its postmaster, SIGKILL, no clean-up."""
        pm = self.postmaster_pid()
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if pm > 1:
            try:
                os.kill(pm, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Patroni stops its postmaster; one orphaned by a SIGKILLed
        # Patroni is ours to stop.
        pm = self.postmaster_pid()
        if pm > 1:
            try:
                os.kill(pm, signal.SIGQUIT)
            except ProcessLookupError:
                return
            for _ in range(100):
                try:
                    os.kill(pm, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)
            try:
                os.kill(pm, signal.SIGKILL)
            except ProcessLookupError:
                pass


class PatroniCluster:
    def __init__(self):
        for exe in (ETCD, PATRONI):
            if not os.access(exe, os.X_OK):
                raise svc.Skip(exe + " not installed (deploy/install-deps)")
        self.root = os.geteuid() == 0
        # A directory the postgres user can reach (every parent traversable).
        self.dir = tempfile.mkdtemp(prefix="cp-patroni-", dir="/tmp")
        os.chmod(self.dir, 0o711)
        self.chown(self.dir)
        self.etcd_port, self.etcd_peer = svc.free_port(), svc.free_port()
        self.etcd = None
        svc.defer(self.cleanup)
        self.nodes = []

    def chown(self, path):
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def run_as(self):
        return {"user": "postgres", "group": "postgres"} if self.root else {}

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PATRONI", "NB_"))}
        if self.root:
            e["HOME"] = self.dir
            e["USER"] = e["LOGNAME"] = "postgres"
        return e

    def start(self, n=2, timeout=120):
        etcd_dir = os.path.join(self.dir, "etcd")
        out = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.etcd = subprocess.Popen(
            [ETCD, "--name", "e0", "--data-dir", etcd_dir,
             "--listen-client-urls", "http://127.0.0.1:%d" % self.etcd_port,
             "--advertise-client-urls", "http://127.0.0.1:%d" % self.etcd_port,
             "--listen-peer-urls", "http://127.0.0.1:%d" % self.etcd_peer,
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.etcd_peer,
             "--initial-cluster", "e0=http://127.0.0.1:%d" % self.etcd_peer,
             "--enable-v2=true"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        out.close()
        self._wait(lambda: self._http_ok("http://127.0.0.1:%d/health" % self.etcd_port), 30, "etcd healthy")
        for i in range(n):
            self.nodes.append(Node(self, "pg%d" % (i + 1)))
        # The first bootstraps; the second clones it once it leads.
        self.nodes[0].start()
        self._wait(lambda: self.nodes[0].role() in ("master", "primary"), timeout, "pg1 leads")
        for node in self.nodes[1:]:
            node.start()
        self._wait(lambda: self.sync_standby() is not None, timeout, "a synchronous standby")

    def _http_ok(self, url):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def _wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            for p in [self.etcd] + [n.proc for n in self.nodes]:
                if p is not None and p.poll() is not None and p is self.etcd:
                    raise AssertionError("etcd exited: %s" % self.tail("etcd.log"))
            time.sleep(0.2)
        raise AssertionError("not reached in %ds: %s\n%s" % (timeout, what, self.tails()))

    def cluster_state(self):
        for n in self.nodes:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/cluster" % n.api_port, timeout=2) as r:
                    return json.loads(r.read().decode())
            except Exception:
                continue
        return None

    def leader(self):
        st = self.cluster_state() or {}
        for m in st.get("members", []):
            if m.get("role") == "leader" and m.get("state") == "running":
                return next((n for n in self.nodes if n.name == m["name"]), None)
        return None

    def sync_standby(self):
        st = self.cluster_state() or {}
        for m in st.get("members", []):
            if m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming"):
                return next((n for n in self.nodes if n.name == m["name"]), None)
        return None

    def dsn(self, dbname="postgres"):
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        return ("host=%s port=%s user=postgres dbname=%s target_session_attrs=read-write connect_timeout=3"
                % (hosts, ports, dbname))

    def tail(self, name, n=30):
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def tails(self):
        return "\n".join("--- %s\n%s" % (x, self.tail(x)) for x in
                         ["etcd.log"] + [n.name + ".log" for n in self.nodes])

    def cleanup(self):
        for n in reversed(self.nodes):
            n.stop()
        if self.etcd and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(20)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(10)
        if os.environ.get("CP_TEST_KEEP_TMP") == "1":
            print("# kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
