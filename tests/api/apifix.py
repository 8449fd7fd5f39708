"""REST API test helpers: a bootstrapped deployment (tests/agent/fixture.py)
plus a small JSON client for the HTTP side of netbird-mgmt.

    dep, srv, api = apifix.start()          # one account, one server
    st, body = api.get("/api/groups")       # (status, parsed JSON or None)
    api.ok("POST", "/api/groups", {"name": "devs"})   # asserts 200, returns body

Everything is cleaned up when the test ends (svc.defer).
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import fixture  # noqa: E402


class Api:
    """JSON over HTTP with `Authorization: Token <token>`."""

    def __init__(self, base, token=None, scheme="Token"):
        self.base = base.rstrip("/")
        self.token = token
        self.scheme = scheme

    def as_token(self, token, scheme="Token"):
        return Api(self.base, token, scheme)

    def call(self, method, path, body=None, raw=None, headers=None, timeout=30):
        """Returns (status, parsed JSON body or None, headers)."""
        h = {"Accept": "application/json"}
        if self.token is not None:
            h["Authorization"] = "%s %s" % (self.scheme, self.token)
        h.update(headers or {})
        data = None
        if raw is not None:
            data = raw if isinstance(raw, bytes) else raw.encode()
        elif body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text, hdrs = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, text, hdrs = e.code, e.read(), dict(e.headers)
        parsed = None
        if text:
            try:
                parsed = json.loads(text.decode())
            except ValueError:
                raise AssertionError("%s %s: body is not JSON: %r" % (method, path, text[:500]))
        return status, parsed, hdrs

    def get(self, path, **kw):
        st, body, _ = self.call("GET", path, **kw)
        return st, body

    def post(self, path, body=None, **kw):
        st, b, _ = self.call("POST", path, body=body, **kw)
        return st, b

    def put(self, path, body=None, **kw):
        st, b, _ = self.call("PUT", path, body=body, **kw)
        return st, b

    def delete(self, path, **kw):
        st, b, _ = self.call("DELETE", path, **kw)
        return st, b

    def ok(self, method, path, body=None, status=200, **kw):
        """The call must answer `status`; returns the parsed body."""
        st, b, _ = self.call(method, path, body=body, **kw)
        assert st == status, "%s %s -> %d (wanted %d): %r" % (method, path, st, status, b)
        return b

    def error(self, method, path, status, body=None, message=None, **kw):
        """The call must fail with `status` and NetBird's error body
        {"message": ..., "code": status}; message, if given, must be in it."""
        st, b, _ = self.call(method, path, body=body, **kw)
        assert st == status, "%s %s -> %d (wanted %d): %r" % (method, path, st, status, b)
        assert isinstance(b, dict) and b.get("code") == status and isinstance(b.get("message"), str), b
        if message is not None:
            assert message in b["message"], "%r not in %r" % (message, b["message"])
        return b


def start(replicas=1, config=None, extra=()):
    """A fresh database with one bootstrapped account and `replicas`
    servers. Returns (deployment, first server, Api as the owner's token);
    dep.admin_token is the token, dep.servers every server."""
    dep = fixture.Deployment(config=config)
    for _ in range(replicas):
        dep.start(*extra)
    srv = dep.servers[0]
    return dep, srv, Api(srv.url(""), dep.admin_token)


def api_for(srv, token):
    return Api(srv.url(""), token)


def second_account(dep):
    """Creates another account in the same database with the admin CLI
    (`netbird-cp-admin account create`, whose path meson passes in
    NETBIRD_ADMIN); returns its dict (ACCOUNT_ID, USER_ID, SETUP_KEY,
    ADMIN_TOKEN, NETWORK), the same lines `netbird-mgmt bootstrap` prints."""
    admin = os.environ.get("NETBIRD_ADMIN", "")
    assert admin and os.access(admin, os.X_OK), "NETBIRD_ADMIN does not name the admin binary: %r" % admin
    p = subprocess.run([admin, "account", "create", "--config=" + dep.config_path], capture_output=True,
                       text=True, env=svc.clean_env(dep.env()), timeout=60)
    svc.check_sanitizer_clean(p.stderr)
    assert p.returncode == 0, "account create failed: rc=%r\n%s\n%s" % (p.returncode, p.stdout, p.stderr)
    return fixture.parse_env_output(p.stdout)


def run_tests():
    sys.exit(svc.run_all())
