"""The real OIDC provider of deploy/oidc, driven from the tests: start and
stop it (node deploy/oidc/server.js on a free loopback port, a temporary
data directory), and sign in as a browser would, with urllib only.

    p = oidcflow.Provider(dashboard_redirect_uris=["http://127.0.0.1:9/cb"])
    p.start()                           # raises Unavailable without node or node_modules
    alice = p.user("alice")             # {"login", "password", "sub", "email", "name", "groups"}
    tok = oidcflow.login(p.issuer, "alice", alice["password"], p.dashboard_client_id,
                         "http://127.0.0.1:9/cb")
    tok["access_token"], tok["id_token"], tok["refresh_token"]
    kid = p.rotate_keys()               # SIGUSR1; returns the new kid once the JWKS shows it
    p.stop()

deploy/oidc's packages must be installed first (deploy/oidc/install, which
deploy/install-deps and so tests/run call).
"""

import base64
import hashlib
import html.parser
import http.cookiejar
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OIDC_DIR = os.path.join(ROOT, "deploy", "oidc")
DEFAULT_SCOPE = "openid profile email api offline_access"     # what NetBird's dashboard asks for


class Unavailable(Exception):
    """node or deploy/oidc/node_modules is missing."""


class LoginRefused(Exception):
    def __init__(self, status, body):
        super().__init__("login refused: HTTP %d" % status)
        self.status, self.body = status, body


class FlowError(Exception):
    pass


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


class Provider:
    def __init__(self, data_dir=None, port=None, audience=None, dashboard_origins=(),
                 dashboard_redirect_uris=(), agent_redirect_uris=(), users=None, node="node"):
        self.node = shutil.which(node)
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="oidc-test-")
        self.port = port
        self.audience = audience
        self.dashboard_origins = list(dashboard_origins)
        self.dashboard_redirect_uris = list(dashboard_redirect_uris)
        self.agent_redirect_uris = list(agent_redirect_uris)
        self.users = users                  # None: the provider makes alice and bob
        self.dashboard_client_id = "netbird-dashboard"
        self.agent_client_id = "netbird-client"
        self.proc = None
        self.log_file = os.path.join(self.data_dir, "oidc.log")
        self.pid_file = os.path.join(self.data_dir, "oidc.pid")

    @property
    def issuer(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def discovery_url(self):
        return self.issuer + "/.well-known/openid-configuration"

    def start(self, timeout=30):
        if not self.node:
            raise Unavailable("node is not installed")
        if not os.path.isdir(os.path.join(OIDC_DIR, "node_modules", "oidc-provider")):
            raise Unavailable("deploy/oidc/node_modules is missing (run deploy/oidc/install)")
        self.port = self.port or _free_port()
        args = [self.node, os.path.join(OIDC_DIR, "server.js"), "--port", str(self.port),
                "--data-dir", self.data_dir, "--pid-file", self.pid_file, "--log-file", self.log_file]
        if self.audience:
            args += ["--audience", self.audience]
        for o in self.dashboard_origins:
            args += ["--dashboard-origin", o]
        for u in self.dashboard_redirect_uris:
            args += ["--dashboard-redirect-uri", u]
        for u in self.agent_redirect_uris:
            args += ["--agent-redirect-uri", u]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
        if self.users is not None:
            env["OIDC_USERS"] = json.dumps(self.users)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.data_dir, "oidc.out"), "ab"), env=env)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FlowError("the OIDC provider exited with %s:\n%s" % (self.proc.returncode, self.logs()))
            try:
                self.discovery = get_json(self.discovery_url, timeout=2)
                return self
            except (OSError, ValueError):
                if time.time() > deadline:
                    self.stop()
                    raise FlowError("the OIDC provider did not answer in %ds:\n%s" % (timeout, self.logs()))
                time.sleep(0.1)

    def logs(self):
        text = ""
        for name in ("oidc.out", "oidc.log"):
            try:
                with open(os.path.join(self.data_dir, name), errors="replace") as f:
                    text += f.read()[-3000:]
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def user(self, login):
        """A user's entry (with its password) from the provider's users."""
        users = self.users
        if users is None:
            with open(os.path.join(self.data_dir, "users.json")) as f:
                users = json.load(f)
        for u in users:
            if u["login"] == login:
                return u
        raise KeyError(login)

    def jwks(self):
        return get_json(self.discovery["jwks_uri"])

    def rotate_keys(self, timeout=20):
        """Sends SIGUSR1; returns the new signing kid once the JWKS lists it first."""
        before = [k["kid"] for k in self.jwks()["keys"]]
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.time() + timeout
        while time.time() < deadline:
            kids = [k["kid"] for k in self.jwks()["keys"]]
            if kids and kids[0] not in before:
                return kids[0]
            time.sleep(0.1)
        raise FlowError("no new kid after SIGUSR1 (JWKS still %r)" % before)


# ---- the browser side of authorization code + PKCE ----------------------------------

class _Form(html.parser.HTMLParser):
    """The first <form> of a page: its action, method and input fields."""

    def __init__(self):
        super().__init__()
        self.action = self.method = None
        self.fields = {}
        self.done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.done:
            return
        if tag == "form" and self.action is None:
            self.action, self.method = a.get("action", ""), (a.get("method") or "get").lower()
        elif tag == "input" and self.action is not None and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self.action is not None:
            self.done = True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Cookies kept, redirects seen one by one (the last one goes to the
    client's redirect_uri, where no server listens)."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(self, method, url, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=15) as r:
                return r.status, r.headers, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode(errors="replace")

    def follow(self, method, url, stop_at, form=None, limit=10):
        """Requests url and follows redirects until one points at stop_at
        (returned as ("redirect", url)) or a page answers (("page", status,
        url, body))."""
        for _ in range(limit):
            status, headers, body = self.request(method, url, form)
            if status in (301, 302, 303, 307, 308):
                url = urllib.parse.urljoin(url, headers["Location"])
                if url.startswith(stop_at):
                    return ("redirect", url)
                method, form = "GET", None
                continue
            return ("page", status, url, body)
        raise FlowError("too many redirects")


def pkce_pair():
    verifier = _b64url(secrets.token_bytes(32))
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


def token_request(token_endpoint, form):
    req = urllib.request.Request(token_endpoint, data=urllib.parse.urlencode(form).encode(), method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise FlowError("token endpoint: HTTP %d %s" % (e.code, e.read().decode(errors="replace")))


def login(issuer, user, password, client_id, redirect_uri, scope=DEFAULT_SCOPE, audience=None, extra=None):
    """A whole authorization code + PKCE sign-in, as the dashboard or the
    agent's PKCE flow does it: GET /auth, the login form, the redirect to
    redirect_uri with code and state, the code exchanged at the token
    endpoint. audience is sent as the dashboard sends it (an extra
    `audience` parameter). Returns the token response (access_token,
    id_token, refresh_token, ...). A refused login raises LoginRefused."""
    disc = get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    q = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": scope,
         "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}
    if audience:
        q["audience"] = audience
    q.update(extra or {})
    b = Browser()
    got = b.follow("GET", disc["authorization_endpoint"] + "?" + urllib.parse.urlencode(q), redirect_uri)
    if got[0] != "page" or got[1] != 200:
        raise FlowError("no login page: %r" % (got[:3],))
    form = _Form()
    form.feed(got[3])
    if form.action is None or "password" not in form.fields:
        raise FlowError("no login form in:\n%s" % got[3][:2000])
    fields = dict(form.fields, login=user, password=password)
    got = b.follow(form.method.upper(), urllib.parse.urljoin(got[2], form.action), redirect_uri, form=fields)
    if got[0] == "page":
        raise LoginRefused(got[1], got[3])
    back = urllib.parse.parse_qs(urllib.parse.urlsplit(got[1]).query)
    if "error" in back:
        raise FlowError("authorization error: %r" % back)
    if back.get("state") != [state]:
        raise FlowError("state changed: %r" % back)
    tokens = token_request(disc["token_endpoint"], {
        "grant_type": "authorization_code", "code": back["code"][0], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier})
    tokens["nonce"] = nonce
    return tokens


def refresh(issuer, client_id, refresh_token):
    disc = get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    return token_request(disc["token_endpoint"], {"grant_type": "refresh_token", "client_id": client_id,
                                                  "refresh_token": refresh_token})


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def device_start(issuer, client_id, scope=DEFAULT_SCOPE, audience=None):
    """The device authorization request a NetBird agent makes; returns
    device_code, user_code, verification_uri, ..."""
    disc = get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    form = {"client_id": client_id, "scope": scope}
    if audience:
        form["audience"] = audience
    return token_request(disc["device_authorization_endpoint"], form)


def device_approve(start, user, passwords, user_code=None):
    """The user's side in a browser: the code entry page, the confirmation,
    the sign-in, trying each of passwords (a string or a list) in turn on
    the login form, as a user who mistyped would. Returns (status, body,
    refusals) of the last page; raises LoginRefused when the last password
    is refused too."""
    if isinstance(passwords, str):
        passwords = [passwords]
    passwords = list(passwords)
    refusals = 0
    b = Browser()
    got = b.follow("GET", start["verification_uri"], "\0")
    code_sent = False
    for _ in range(5 + len(passwords)):
        if got[0] != "page" or got[1] not in (200, 400, 401):
            raise FlowError("unexpected answer in the device flow: %r" % (got[:3],))
        form = _Form()
        form.feed(got[3])
        if form.action is None:
            return got[1], got[3], refusals
        fields = dict(form.fields)
        if "user_code" in fields and "confirm" not in fields:
            if code_sent:                   # the code was not taken: the form again
                return got[1], got[3], refusals
            fields["user_code"] = user_code or start["user_code"]
            code_sent = True
        elif "password" in fields:
            if got[1] == 401:
                refusals += 1
                if not passwords:
                    raise LoginRefused(got[1], got[3])
            fields.update(login=user, password=passwords.pop(0))
        elif got[1] != 200:
            return got[1], got[3], refusals
        got = b.follow(form.method.upper(), urllib.parse.urljoin(got[2], form.action), "\0", form=fields)
    raise FlowError("the device flow did not end")


def device_token(issuer, client_id, device_code):
    disc = get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    return token_request(disc["token_endpoint"], {"grant_type": DEVICE_GRANT, "device_code": device_code,
                                                  "client_id": client_id})
