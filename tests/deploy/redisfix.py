"""A redis-server of a test's own on a free loopback port, with extra
arguments (a password, ACL users), stopped by the pid in its pidfile."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import svc

REDIS_SERVER = "/usr/bin/redis-server"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (daemonized: its parent is init, which reaps it) counts as gone
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class OwnRedis:
    def __init__(self, *extra):
        if not os.access(REDIS_SERVER, os.X_OK):
            raise svc.Skip(REDIS_SERVER + " not installed")
        self.dir = tempfile.mkdtemp(prefix="cp-redis-")
        self.port = svc.free_port()
        self.pidfile = os.path.join(self.dir, "redis.pid")
        self.extra = list(extra)
        svc.defer(self.cleanup)
        self.start()

    def start(self):
        subprocess.run([REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--pidfile", self.pidfile,
                        "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")] + self.extra,
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server on port %d did not answer" % self.port)

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self):
        pid = self.pid()
        if pid <= 1:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(self.pidfile):
            time.sleep(0.05)
        if os.path.exists(self.pidfile):
            # Still there after 10 s: no graceful exit, kill it (the pid is
            # the one its own pidfile names, ours).
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, userinfo=""):
        return "redis://%s127.0.0.1:%d" % (userinfo + "@" if userinfo else "", self.port)
