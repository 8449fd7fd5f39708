"""Helpers for the service tests: a TAP runner, throwaway databases, free
ports and a wrapper around a running netbird-mgmt process.

Run by /usr/bin/python3 (the interpreter that has grpc and psycopg2); the
binary's path is the first command-line argument (meson passes it).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NETBIRD_MGMT", "")
PG_DSN = os.environ.get("CP_TEST_PG_DSN", "")
REDIS_URL = os.environ.get("CP_TEST_REDIS_URL", "")
# The DataStoreEncryptionKey every test server gets (management refuses to
# start without one). One fixed key, so replicas on one database share it.
DATA_KEY = "r0R6+3lrV9x0m1cQp8kzq5d0eZ0oW8h3bJ2yQe4aZ1c="
KEY_ARGS = ["--data-store-encryption-key", DATA_KEY]
# Start-up under ASan/valgrind is slow; keep generous limits.
START_TIMEOUT = float(os.environ.get("CP_TEST_START_TIMEOUT", "30"))


class Skip(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM arrived (meson's timeout, tests/run interrupted). Not an
    Exception, so run_all does not take it for one failed test and go on
    with the next: it runs the current test's cleanups and stops."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)       # the cleanups run undisturbed
    raise Terminated("SIGTERM")


def needs_db():
    if not PG_DSN:
        raise Skip("CP_TEST_PG_DSN not set (run through tests/run)")


def needs_redis():
    if not REDIS_URL:
        raise Skip("CP_TEST_REDIS_URL not set (tests/run starts a Redis)")


# ---- TAP -------------------------------------------------------------------

_tests = []
_cleanups = []


def test(fn):
    _tests.append(fn)
    return fn


def defer(fn, *args):
    """Run fn(*args) when the current test ends, pass or fail."""
    _cleanups.append((fn, args))


def run_all():
    """Runs the tests (only the one named by the second argument, if any)
    and prints TAP; returns the exit status. On SIGTERM or Ctrl-C the
    running test's cleanups still run (meson sends SIGKILL half a second
    after SIGTERM: a cleanup that must finish anyway runs detached), then
    it stops with "Bail out!"."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    only = sys.argv[2] if len(sys.argv) > 2 else None
    chosen = [t for t in _tests if only is None or t.__name__ == only]
    print("1..%d" % len(chosen), flush=True)
    failed = 0
    for i, t in enumerate(chosen, 1):
        name = t.__name__
        ok, skip, stop = True, None, None
        try:
            if not BINARY or not os.access(BINARY, os.X_OK):
                raise Skip("netbird-mgmt binary not given")
            t()
        except Skip as s:
            skip = str(s)
        except Exception:
            ok = False
            for l in traceback.format_exc().splitlines():
                print("# " + l)
        except BaseException as e:          # Terminated, KeyboardInterrupt
            ok, stop = False, e
            print("# interrupted: %r" % (e,), flush=True)
        # Cleanups run whatever happened; a failing one (say, a sanitizer
        # report from a server killed at the end) fails the test too.
        while _cleanups:
            fn, args = _cleanups.pop()
            try:
                fn(*args)
            except Exception:
                ok = False
                for l in traceback.format_exc().splitlines():
                    print("# cleanup: " + l)
            except BaseException as e:      # SIGTERM during a cleanup: the others still run
                ok, stop = False, stop or e
                print("# cleanup interrupted: %r" % (e,), flush=True)
        if not ok:
            failed += 1
            line = "not ok %d - %s" % (i, name)
        elif skip is not None:
            line = "ok %d - %s # SKIP %s" % (i, name, skip)
        else:
            line = "ok %d - %s" % (i, name)
        print(line, flush=True)
        if stop is not None:
            print("Bail out! %s" % type(stop).__name__, flush=True)
            return 1
    return 1 if failed else 0


# ---- databases, ports, files -------------------------------------------------

def _admin(sql):
    import psycopg2
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def new_db():
    """Creates an empty database, dropped when the test ends; returns its DSN."""
    needs_db()
    name = "svc_" + secrets.token_hex(6)
    _admin("CREATE DATABASE %s" % name)
    defer(drop_db, name)
    return PG_DSN + " dbname=" + name, name


def drop_db(name):
    _admin("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def query(dsn, sql):
    import psycopg2
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def execute(dsn, sql):
    """Runs one statement and commits it; returns its rows, if any."""
    import psycopg2
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLUSTER_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "lib", "cluster.sh")


def port_answers(port):
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def binary_uses_asan():
    """True when the server binary under test is built with ASan (some
    faults, e.g. libfaketime, do not mix with it)."""
    try:
        out = subprocess.run(["ldd", BINARY], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return False
    return "libasan" in out


def _poll(pred, timeout, what):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


class PrivateRedis:
    """A redis-server of the test's own on a free port (no persistence),
    our child, stopped by its pid at exit and restartable on the same port
    (for tests that stop Redis; the shared one of tests/run stays up)."""

    def __init__(self):
        if not shutil.which("redis-server"):
            raise Skip("redis-server not installed")
        self.dir = tmpdir()
        self.port = free_port()
        self.url = "redis://127.0.0.1:%d" % self.port
        self.proc = None
        self.start()
        defer(self.stop)

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _poll(lambda: self.ping() or self.proc.poll() is not None, 15, "redis up")
        assert self.proc.poll() is None, "redis-server exited: %s" % self.log()

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                return c.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def publish(self, channel, message):
        """PUBLISH over RESP; returns the number of subscribers reached."""
        parts = [b"PUBLISH", channel.encode(), message.encode()]
        cmd = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            c.sendall(cmd)
            reply = c.recv(64)
        assert reply.startswith(b":"), reply
        return int(reply[1:].split(b"\r\n")[0])

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()           # exactly our pid
            self.proc.wait(15)
        _poll(lambda: not port_answers(self.port), 10, "redis port closed")

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (deploy/lib/cluster.sh:
    cl_pg_init fast, cl_pg_start, cl_pg_stop = pg_ctl stop -m fast on the
    pid in postmaster.pid), on a free port, stopped and removed at exit;
    dsn is its postgres database. For tests that stop, crash or
    reconfigure PostgreSQL (the shared one of tests/run stays untouched)."""

    def __init__(self, prefix="cp-pg."):
        bindir = os.environ.get("CP_TEST_PG_BINDIR", "")
        if not bindir or not os.access(os.path.join(bindir, "initdb"), os.X_OK):
            raise Skip("CP_TEST_PG_BINDIR not set (tests/run sets it)")
        self.bindir = bindir
        # The PostgreSQL user must reach the directory (tests/run does the same).
        self.tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        os.chmod(self.tmp, 0o711)
        defer(shutil.rmtree, self.tmp, True)
        self.base = os.path.join(self.tmp, "pg")
        self.port = free_port()
        self.dsn = "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=5" % self.port
        self._sh('cl_pg_init "$1" fast', self.base)
        defer(self.stop)
        self.start()

    def _sh(self, cmd, *args, check=True):
        p = subprocess.run(["bash", "-c", ". '%s' && %s" % (CLUSTER_SH, cmd), "cluster"] + list(args),
                           capture_output=True, text=True, timeout=120)
        assert not check or p.returncode == 0, "%s failed: %s%s" % (cmd, p.stdout, p.stderr)
        return p

    def start(self):
        self._sh('cl_pg_start "$1" "$2"', self.base, str(self.port))

    def stop(self):
        self._sh('cl_pg_stop "$1"', self.base)

    def stop_immediate(self):
        """pg_ctl stop -m immediate: no checkpoint, every backend killed
        (a crash as far as the clients can tell)."""
        self._sh('cl_as_pg "$2/pg_ctl" stop -D "$1/data" -m immediate -w -t 30 -s', self.base, self.bindir)

    def running(self):
        return self._sh('cl_pg_pid "$1"', self.base, check=False).returncode == 0

    def log(self):
        with open(os.path.join(self.base, "postgres.log"), errors="replace") as f:
            return f.read()


def tmpdir():
    d = tempfile.TemporaryDirectory(prefix="svc-")
    defer(d.cleanup)
    return d.name


def write_json(obj, text=None):
    path = os.path.join(tmpdir(), "management.json")
    with open(path, "w") as f:
        f.write(text if text is not None else json.dumps(obj))
    return path


def clean_env(extra=None):
    """The environment without any setting variables, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NB_", "NETBIRD_"))}
    # tests/run --pgbouncer transaction: what docs/database-ha.md tells
    # operators to set behind a transaction pooler.
    if os.environ.get("CP_TEST_PGBOUNCER") == "transaction":
        env["NB_MGMT_DB_PREPARED_STATEMENTS"] = "false"
    env.update(extra or {})
    return env


# ---- one-shot runs -----------------------------------------------------------

class Result:
    def __init__(self, p, out, err):
        self.rc = p.returncode
        self.out = out
        self.err = err

    def __repr__(self):
        return "rc=%r\nstdout=%s\nstderr=%s" % (self.rc, self.out, self.err)


def run(args, env=None, timeout=60):
    p = subprocess.run([BINARY] + list(args), capture_output=True, text=True,
                       env=clean_env(env), timeout=timeout)
    check_sanitizer_clean(p.stderr)
    return Result(p, p.stdout, p.stderr)


# netbird-cp-admin (meson passes its path in NETBIRD_ADMIN).
ADMIN = os.environ.get("NETBIRD_ADMIN", "")


def admin(args, env=None, timeout=60):
    """One netbird-cp-admin run; skips the test when the binary is not
    there."""
    if not ADMIN or not os.access(ADMIN, os.X_OK):
        raise Skip("NETBIRD_ADMIN does not name the netbird-cp-admin binary")
    p = subprocess.run([ADMIN] + list(args), capture_output=True, text=True, env=clean_env(env),
                       timeout=timeout)
    check_sanitizer_clean(p.stderr)
    return Result(p, p.stdout, p.stderr)


def admin_ok(args, env):
    r = admin(args, env)
    assert r.rc == 0, r
    return r


def admin_json(args, env):
    return json.loads(admin_ok(list(args) + ["--json"], env).out)


def check_usage_error(r, *needles):
    """Exit 2, and stderr mentions every needle."""
    assert r.rc == 2, r
    for n in needles:
        assert n in r.err, "%r not in stderr\n%r" % (n, r)
    check_sanitizer_clean(r.err)


def check_sanitizer_clean(text):
    for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
        assert bad not in text, text


def json_lines(text):
    """Parses every line as a JSON object (fails on anything else)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError("not a JSON log line: %r" % line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


# ---- a running server --------------------------------------------------------

class Server:
    """netbird-mgmt management, with stdout/stderr collected by threads."""

    def __init__(self, args, env=None, wait=True, command=None, protocols=("grpc", "http")):
        self.lines = []
        self.err = []
        self.cond = threading.Condition()
        self.protocols = protocols
        self.proc = subprocess.Popen((command or [BINARY, "management"]) + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=clean_env(env))
        defer(self.kill)
        self._t1 = threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True)
        self._t2 = threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True)
        self._t1.start()
        self._t2.start()
        self.grpc_port = self.http_port = None
        if wait:
            self.wait_listening()

    def _pump(self, stream, sink):
        for line in stream:
            with self.cond:
                sink.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def stdout(self):
        with self.cond:
            return "\n".join(self.lines)

    def stderr(self):
        with self.cond:
            return "\n".join(self.err)

    def logs(self):
        return json_lines(self.stdout())

    def wait_log(self, pred, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if pred(obj):
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._t1.is_alive()):
                    raise AssertionError("log line not seen; rc=%r\nstdout:\n%s\nstderr:\n%s" % (
                        self.proc.poll(), "\n".join(self.lines), "\n".join(self.err)))
                self.cond.wait(min(left, 0.2))

    def wait_listening(self):
        for proto in self.protocols:
            obj = self.wait_log(lambda o, p=proto: o.get("msg") == "listening" and o.get("protocol") == p)
            setattr(self, proto + "_port", int(obj["port"]))

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        rc = self.proc.wait(timeout)
        self._t1.join(5)
        self._t2.join(5)
        return rc

    def stop(self, timeout=30):
        """SIGTERM and wait; returns (exit code, seconds taken)."""
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        check_sanitizer_clean(self.stderr())


def http(method, url, timeout=10, headers=None):
    """Returns (status, headers, body bytes); HTTP errors are results too."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(method, url, **kw):
    status, headers, body = http(method, url, **kw)
    return status, headers, json.loads(body.decode()) if body else None


def rest(srv, method, path, token, body=None, timeout=10):
    """(status, parsed JSON body or None) of a REST call with a PAT."""
    req = urllib.request.Request(srv.url(path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Token " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


def metric(srv, name):
    """The value of an unlabelled sample on srv's /metrics, or None."""
    status, _, body = http("GET", srv.url("/metrics"))
    assert status == 200, status
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def dsn_env(dsn):
    return {"NB_STORE_ENGINE_POSTGRES_DSN": dsn}


def base_args(**over):
    """--listen-address 127.0.0.1, fresh ports and the test
    DataStoreEncryptionKey unless given."""
    args = ["--listen-address", "127.0.0.1",
            "--data-store-encryption-key", over.pop("data_store_encryption_key", DATA_KEY),
            "--port", str(over.pop("port", free_port())),
            "--http-port", str(over.pop("http_port", free_port())),
            "--config", over.pop("config", "")]
    for k, v in over.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args
