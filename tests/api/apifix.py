"""REST API test helpers: a bootstrapped deployment (tests/agent/fixture.py)
plus a small JSON client for the HTTP side of netbird-mgmt.

    dep, srv, api = apifix.start()          # one account, one server
    st, body = api.get("/api/groups")       # (status, parsed JSON or None)
    api.ok("POST", "/api/groups", {"name": "devs"})   # asserts 200, returns body

Everything is cleaned up when the test ends (svc.defer).
"""

import base64
import hashlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import svc  # noqa: E402
import fixture  # noqa: E402
import nbstore  # noqa: E402


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


def all_group(api):
    """The id of the account's "All" group."""
    return [g for g in api.ok("GET", "/api/groups") if g["name"] == "All"][0]["id"]


def settings(**over):
    """A full AccountRequest body for PUT /api/accounts/{id} (NetBird's PUT
    replaces the settings) with a fresh account's values, changed by
    `over`; "extra" is only sent when given."""
    s = {"peer_login_expiration_enabled": True, "peer_login_expiration": 86400,
         "peer_inactivity_expiration_enabled": False, "peer_inactivity_expiration": 600,
         "regular_users_view_blocked": True, "groups_propagation_enabled": True,
         "routing_peer_dns_resolution_enabled": True, "dns_domain": "", "lazy_connection_enabled": False,
         "jwt_groups_enabled": False, "jwt_groups_claim_name": "", "jwt_allow_groups": [],
         "peer_expose_enabled": False, "peer_expose_groups": []}
    extra = over.pop("extra", None)
    s.update(over)
    if extra is not None:
        s["extra"] = extra
    return {"settings": s}


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


# ---- users, tokens and peers made with SQL -------------------------------------
# Regular users need an IdP invite the API does not offer, and many tests
# want a user of a given role (or a peer without an agent) quickly: these
# write the rows directly, in exactly the format the server checks
# (common/crypto).

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_pat():
    """A random token in NetBird's format (nbstore.pat_from_secret)."""
    return nbstore.pat_from_secret("".join(secrets.choice(BASE62) for _ in range(30)))


def pat_hash(token):
    """What personal_access_tokens.hashed_token holds."""
    return base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()


def sql_user(dep, role, service=False, account=None, name="", email="", issued="api", non_deletable=False):
    """A user row; returns its id. A service user's name goes to
    service_user_name, as the API stores it."""
    uid = "usr" + secrets.token_hex(8)
    dep.sql("INSERT INTO users (id, account_id, role, is_service_user, service_user_name, name, email, issued,"
            " non_deletable) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (uid, account or dep.account_id, role, service, name if service else "", "" if service else name,
             email, issued, non_deletable))
    return uid


def sql_token(dep, uid, account=None, days=1):
    """A token of user uid valid for `days`; returns the plain text."""
    plain = new_pat()
    dep.sql("INSERT INTO personal_access_tokens (id, account_id, user_id, name, hashed_token,"
            " expiration_date, created_by) VALUES (%s, %s, %s, 'sql', %s,"
            " now() + make_interval(days => %s), %s)",
            ("pat" + secrets.token_hex(8), account or dep.account_id, uid, pat_hash(plain), days, uid))
    return plain


def user_token(dep, role, service=False, account=None, name="", email=""):
    """A user of `role` with a token; returns (user id, token)."""
    uid = sql_user(dep, role, service=service, account=account, name=name, email=email)
    return uid, sql_token(dep, uid, account=account)


def role_api(dep, api, role, **kw):
    """A user of `role` with a token (user_token's keywords: service,
    account, name, email); returns (user id, Api as that user)."""
    uid, token = user_token(dep, role, **kw)
    return uid, api.as_token(token)


# Host numbers sql_peer hands out when not given one: distinct within the
# process, so two peers of one account never share an address (the
# (account_id, ip) index is unique). Above the small numbers tests pick.
_hosts = itertools.count(1000)


def sql_peer(dep, host=None, user_id=None, account=None):
    """A peer row with no agent behind it, at host number `host` of the
    deployment's network (the next free one of _hosts if None); its name
    and DNS label are its id. Returns the id."""
    if host is None:
        host = next(_hosts)
    pid = "peer" + secrets.token_hex(8)
    ip = str(dep.network.network_address + host)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    dep.sql("INSERT INTO peers (id, account_id, key, ip, name, dns_label, user_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)", (pid, account or dep.account_id, key, ip, pid, pid, user_id))
    return pid


def run_tests():
    sys.exit(svc.run_all())


# ---- IdP sign-in (tests/idp/testidp.py) -------------------------------------

sys.path.insert(0, os.path.join(HERE, "..", "idp"))


def idp_config(idp, **http_extra):
    """A management.json body whose HttpConfig points at the test IdP."""
    return {"HttpConfig": idp.http_config(**http_extra)}


class EmptyDeployment(fixture.Deployment):
    """A migrated database with no account at all (the first IdP user
    creates it); servers are started as with Deployment."""

    def __init__(self, config=None):  # noqa: super().__init__ bootstraps an account: not wanted here
        self.dsn, self.db = svc.new_db()
        self.enc_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.config_path = svc.write_json(config) if config is not None else ""
        self.servers = []
        r = svc.run(["migrate", "--config=" + self.config_path], env=self.env())
        assert r.rc == 0, "migrate failed: %r" % r
        self.account_id = self.admin_token = self.setup_key = self.user_id = None


def start_idp(idp, bootstrap=True, replicas=1, extra=(), **http_extra):
    """Servers whose HttpConfig trusts idp. bootstrap=False leaves the
    database without any account. Returns (deployment, servers)."""
    cfg = idp_config(idp, **http_extra)
    dep = fixture.Deployment(config=cfg) if bootstrap else EmptyDeployment(config=cfg)
    servers = [dep.start(*extra) for _ in range(replicas)]
    return dep, servers


def jwt_api(srv, token):
    """An Api that sends `Authorization: Bearer <token>`."""
    return Api(srv.url(""), token, scheme="Bearer")


# ---- NetBird's openapi.yml ----------------------------------------------------------------

OPENAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "reference",
                       "netbird", "openapi.yml")
_openapi = None


def check_schema(obj, name):
    """obj must validate against components.schemas[name] of NetBird's
    openapi.yml (OpenAPI 3.1 schemas are JSON Schema 2020-12). Without the
    file (outside this workplace) responses are not checked, and the run
    says so."""
    global _openapi
    if _openapi is None:
        _openapi = {}
        if os.path.exists(OPENAPI):
            import yaml
            with open(OPENAPI) as f:
                _openapi = yaml.safe_load(f)
            # NetBird's ResourceType is allOf(NetworkResourceType, enum
            # ["peer"]): no value satisfies both, yet NetBird itself sends
            # "host", "subnet", "domain" and "peer". Checked as the union.
            _openapi["components"]["schemas"]["ResourceType"] = {
                "type": "string", "enum": ["host", "subnet", "domain", "peer"]}
        else:
            print("# %s not found: responses not checked against it" % OPENAPI)
    if not _openapi:
        return
    import jsonschema
    schema = {"$ref": "#/components/schemas/" + name, "components": _openapi["components"]}
    jsonschema.Draft202012Validator(schema).validate(obj)
