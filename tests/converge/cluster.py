"""The pieces the convergence checker (converge.py) runs and breaks: a
PostgreSQL cluster and a Redis of its own (never the shared ones of
tests/run), three netbird-mgmt replicas on fixed loopback ports (so a
replica restarted after kill -9 comes back where its agents look for it),
and netbird-cp-admin's fresh map (`netmap show`).

Every process here is a child of the checker, stopped by its pid.
"""

import base64
import datetime
import json
import os
import random
import signal
import time

import svc
import fixture
from fixture import wait_until

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def Redis():
    """Redis of the checker's own (svc.PrivateRedis): stop/start for the
    Redis fault, publish for the forged message."""
    return svc.PrivateRedis()


def Postgres():
    """PostgreSQL of the checker's own (svc.PrivatePostgres): start, stop,
    stop_immediate for the PostgreSQL fault."""
    return svc.PrivatePostgres(prefix="cp-conv.")


class Replica:
    """One netbird-mgmt management process on fixed ports; restartable."""

    def __init__(self, name, dsn, redis_url, extra):
        self.name = name
        self.dsn = dsn
        self.redis_url = redis_url
        self.extra = list(extra)
        self.grpc_port = svc.free_port()
        self.http_port = svc.free_port()
        self.grpc_target = "127.0.0.1:%d" % self.grpc_port
        self.srv = None
        self.runs = 0
        self.skew = None            # "+5s" while it runs under libfaketime
        self.ids = []               # replica ids it had, oldest first

    def start(self, skew=None):
        env = {"NB_STORE_ENGINE_POSTGRES_DSN": self.dsn}
        if skew:
            lib = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
            if lib is None:
                raise svc.Skip("libfaketime not installed (Debian package faketime)")
            env.update({"LD_PRELOAD": lib, "FAKETIME": skew, "FAKETIME_DONT_RESET": "1"})
        args = ["--listen-address", "127.0.0.1", "--port", str(self.grpc_port),
                "--http-port", str(self.http_port), "--config=", "--shutdown-timeout", "2s",
                "--redis-url", self.redis_url] + svc.KEY_ARGS + self.extra
        # A port of a replica killed a moment ago may still be in use by its
        # dying sockets for a short while: retry the start a few times.
        self.runs += 1
        for attempt in range(5):
            self.srv = svc.Server(args, env=env, wait=False)
            # Cleanups run last-in first-out: SIGTERM (and its checks), then
            # the log is kept, then svc.Server's own kill finds it gone.
            svc.defer(self.save_log, self.srv, self.runs)
            svc.defer(fixture.stop_server, self.srv)
            try:
                self.srv.wait_listening()
                break
            except AssertionError:
                if self.srv.proc.poll() is None or attempt == 4:
                    raise
                time.sleep(1)
        self.skew = skew
        self.ids.append(fixture.replica_id(self.srv))
        return self

    def save_log(self, srv, run):
        """Keeps the process's log lines in CP_CONVERGE_LOG_DIR, if set
        (tests/converge/run sets it to build/meson-logs/converge)."""
        d = os.environ.get("CP_CONVERGE_LOG_DIR", "")
        if not d:
            return
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%s-run%d.log" % (self.name, run)), "w") as f:
            f.write(srv.stdout() + "\n" + srv.stderr())

    @property
    def id(self):
        return self.ids[-1] if self.ids else None

    def alive(self):
        return self.srv is not None and self.srv.proc.poll() is None

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def kill9(self):
        self.srv.proc.send_signal(signal.SIGKILL)
        self.srv.proc.wait(10)

    def stop(self):
        if self.alive():
            fixture.stop_server(self.srv)

    def logs(self):
        return self.srv.logs() if self.srv else []

    def log_skew(self, token):
        """How far ahead this process's clock runs, seen from the thread
        that serves HTTP and logs (libfaketime must reach every thread,
        not only main): a request for a unique path, bracketed by our
        clock, and the timestamp of its "api request" log line. Returns
        (lowest, highest) possible skew in seconds."""
        path = "/api/peers/skew-probe-%d" % random.randrange(1 << 40)
        t_before = time.time()
        svc.rest(self, "GET", path, token)
        t_after = time.time()
        line = self.srv.wait_log(lambda o: o.get("msg") == "api request" and o.get("path") == path, timeout=10)
        ts = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
        return ts - t_after, ts - t_before


def netmaps(dsn, account):
    """{peer id: SyncResponse bytes} computed fresh from the database by
    netbird-cp-admin netmap show (the replicas' own map code, no cache),
    and the serial it was computed at."""
    r = svc.admin(["netmap", "show", "--account", account, "--json"], env={"NB_STORE_ENGINE_POSTGRES_DSN": dsn})
    assert r.rc == 0, "netmap show failed: %r" % r
    doc = json.loads(r.out)
    return doc["serial"], {p["peer_id"]: base64.b64decode(p["sync_response"]) for p in doc["peers"]}
