"""Secrets never reach PostgreSQL in plain text, not even as a statement's
parameter (issue 15). A PostgreSQL of this test's own logs every
statement with its parameters (log_statement = all,
log_min_duration_statement = 0, parameters unabridged); every secret
the control plane hands out or takes is created the ways an operator or
a user would, and none of them may appear in that log:

  - setup keys: `netbird-mgmt bootstrap`, REST POST /api/setup-keys (both
    types), `netbird-cp-admin setup-key create` (the REST layer in
    process) and `account create`; then used by an agent's Login;
  - personal access tokens: bootstrap's admin token, REST POST
    /api/users/{id}/tokens (service user), `account create`'s token;
  - reverse-proxy access tokens: REST POST
    /api/reverse-proxies/proxy-tokens and `netbird-cp-admin proxy-token
    create`;
  - a reverse-proxy service's password, PIN and header value (stored as
    argon2id hashes).

The log must hold those statements with their parameters (checked with
the stored hash of a key), so an empty log cannot pass."""

import os
import secrets
import subprocess
import sys

import apifix
from apifix import sql_peer, svc
from svc import test

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import fixture  # noqa: E402
from fixture import parse_env_output, setup_key_hash  # noqa: E402
from nbagent import build_meta  # noqa: E402

CLUSTER = "secrets.proxy.test"

# What makes PostgreSQL write every statement and its parameters.
LOGGING = {"log_statement": "all", "log_min_duration_statement": "0", "log_parameter_max_length": "-1",
           "log_parameter_max_length_on_error": "-1", "log_min_error_statement": "error"}


def logging_postgres():
    """svc.PrivatePostgres with statement logging on; .log() is its server
    log."""
    pg = svc.PrivatePostgres(prefix="cp-seclog.")
    for k, v in LOGGING.items():
        svc.execute(pg.dsn, "ALTER SYSTEM SET %s = '%s'" % (k, v))
    svc.execute(pg.dsn, "SELECT pg_reload_conf()")
    fixture.wait_until(lambda: svc.query(pg.dsn, "SHOW log_statement") == [("all",)], timeout=10,
                       what="log_statement = all")
    return pg



def admin(dep, *args):
    exe = os.environ.get("NETBIRD_ADMIN", "")
    assert exe and os.access(exe, os.X_OK), "NETBIRD_ADMIN does not name the admin binary: %r" % exe
    p = subprocess.run([exe] + list(args), capture_output=True, text=True, env=svc.clean_env(dep.env()),
                       timeout=60)
    svc.check_sanitizer_clean(p.stderr)
    assert p.returncode == 0, "%s failed: rc=%r\n%s\n%s" % (args, p.returncode, p.stdout, p.stderr)
    return parse_env_output(p.stdout)


def variants(plain):
    """The secret as written and in the cases a server might fold it to."""
    return {plain, plain.upper(), plain.lower()}


@test
def no_secret_reaches_the_postgresql_log():
    pg = logging_postgres()
    dep = fixture.deployment_on(pg.dsn)
    srv = dep.start()
    api = apifix.Api(srv.url(""), dep.admin_token)
    plain = {"bootstrap setup key": dep.setup_key, "bootstrap admin token": dep.admin_token}

    # Setup keys: REST (both types) and the admin CLI.
    for t in ("reusable", "one-off"):
        k = api.ok("POST", "/api/setup-keys", {"name": "rest " + t, "type": t, "expires_in": 86400,
                                                "auto_groups": [], "usage_limit": 0})
        assert k["key"].count("-") == 4 and "*" not in k["key"], k
        plain["REST setup key " + t] = k["key"]
        listed = api.ok("GET", "/api/setup-keys/" + k["id"])
        assert listed["key"] == k["key"][:5] + "****", listed
    v = admin(dep, "setup-key", "create", "--account", dep.account_id, "--name", "cli", "--type", "reusable")
    plain["admin setup key"] = v["SETUP_KEY"]
    acct = admin(dep, "account", "create", "--config=")
    plain["account create setup key"] = acct["SETUP_KEY"]
    plain["account create admin token"] = acct["ADMIN_TOKEN"]

    # Personal access tokens of a service user.
    su = api.ok("POST", "/api/users", {"role": "admin", "is_service_user": True, "name": "bot",
                                       "auto_groups": []})
    tok = api.ok("POST", "/api/users/%s/tokens" % su["id"], {"name": "ci", "expires_in": 30})
    plain["REST personal access token"] = tok["plain_token"]

    # Reverse-proxy access tokens.
    pt = api.ok("POST", "/api/reverse-proxies/proxy-tokens", {"name": "edge", "expires_in": 3600})
    plain["REST proxy token"] = pt["plain_token"]
    v = admin(dep, "proxy-token", "create", "--name", "cli-edge")
    plain["admin proxy token"] = v["PROXY_TOKEN"]

    # A service's password, PIN and header value.
    dep.sql("INSERT INTO proxies (id, session_id, cluster_address, status) VALUES (%s, 's', %s, 'connected')",
            ("px" + secrets.token_hex(6), CLUSTER))
    pid = sql_peer(dep)
    pw, pin, hdr = "pw-" + secrets.token_hex(12), "%06d" % secrets.randbelow(10 ** 6), "hv-" + secrets.token_hex(12)
    api.ok("POST", "/api/reverse-proxies/services", {
        "name": "app", "domain": "app." + CLUSTER, "enabled": True,
        "targets": [{"target_id": pid, "target_type": "peer", "protocol": "http", "port": 8080, "enabled": True}],
        "auth": {"password_auth": {"enabled": True, "password": pw}, "pin_auth": {"enabled": True, "pin": pin},
                 "header_auths": [{"enabled": True, "header": "X-Api-Key", "value": hdr}]}})
    plain["service password"], plain["service header value"] = pw, hdr

    # Keys used: registration with the REST key, the admin key and the
    # bootstrap key, then REST with each token.
    for name in ("REST setup key reusable", "admin setup key", "bootstrap setup key"):
        dep.agent(srv).register(plain[name], meta=build_meta("p-" + secrets.token_hex(3)))
    api.ok("GET", "/api/groups")
    api.as_token(tok["plain_token"]).ok("GET", "/api/groups")
    apifix.Api(srv.url(""), acct["ADMIN_TOKEN"]).ok("GET", "/api/groups")

    log = pg.log()
    # The log is real: it has the statements with their parameters, e.g.
    # the hash of the REST key as the INSERT's parameter.
    assert "parameters: $1 = " in log, log[-3000:]
    assert setup_key_hash(plain["REST setup key one-off"]) in log, "statement parameters are not logged"
    leaked = sorted(n for n, p in plain.items() if any(x in log for x in variants(p)))
    assert not leaked, "in the PostgreSQL log: %s" % ", ".join(leaked)
    # The PIN is six digits, which a timestamp could hold by chance: only
    # as a quoted parameter value is it a leak.
    assert "'%s'" % pin not in log and '"%s"' % pin not in log, "the service PIN is in the PostgreSQL log"
    print("# checked %d secrets against %d bytes of PostgreSQL log: %s" % (len(plain) + 1, len(log),
                                                                           ", ".join(sorted(plain))))


if __name__ == "__main__":
    apifix.run_tests()
