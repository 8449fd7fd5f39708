"""netbird-cp-admin proxy-token create / list / revoke against the real
binary and a bootstrapped database: management-wide and account-scoped
tokens, the plain token printed once and stored as base64(SHA-256), list
filters, revocation, and usage errors."""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, parse_env_output  # noqa: E402
from proxyclient import token_hash  # noqa: E402
from svc import test  # noqa: E402

admin, ok, admin_json = svc.admin, svc.admin_ok, svc.admin_json


@test
def create_list_revoke():
    dep = Deployment()
    env = dep.env()
    out = parse_env_output(ok(["proxy-token", "create", "--name", "edge", "--expires-in", "30d"], env).out)
    tid, plain = out["PROXY_TOKEN_ID"], out["PROXY_TOKEN"]
    assert re.fullmatch(r"nbx_[0-9A-Za-z]{36}", plain), plain
    rows = dep.sql("SELECT name, account_id, hashed_token, revoked, expires_at - created_at > interval '29 days',"
                   " expires_at - created_at < interval '31 days' FROM proxy_access_tokens WHERE id = %s", (tid,))
    assert rows == [("edge", None, token_hash(plain), False, True, True)], rows
    assert not dep.sql("SELECT 1 FROM proxy_access_tokens WHERE hashed_token = %s", (plain,))

    j = admin_json(["proxy-token", "create", "--name", "byop", "--account", dep.account_id], env)
    assert j["account_id"] == dep.account_id and j["plain_token"].startswith("nbx_"), j
    assert dep.sql("SELECT account_id, expires_at FROM proxy_access_tokens WHERE id = %s", (j["id"],)) == \
        [(dep.account_id, None)]
    # The account's token shows in the REST API's list; the management-wide one does not.
    lst = admin_json(["proxy-token", "list"], env)
    assert [(x["id"], x["account_id"], x["state"]) for x in lst] == [(tid, None, "valid"),
                                                                     (j["id"], dep.account_id, "valid")], lst
    assert [x["id"] for x in admin_json(["proxy-token", "list", "--account", dep.account_id], env)] == [j["id"]]
    table = ok(["proxy-token", "list"], env).out
    assert table.splitlines()[0].split() == ["ID", "NAME", "ACCOUNT", "STATE", "CREATED", "EXPIRES", "LAST_USED"]
    assert plain not in table and tid in table

    r = ok(["proxy-token", "revoke", tid], env)
    assert r.out.strip() == tid + " revoked", r
    assert ok(["proxy-token", "revoke", tid], env).out.strip() == tid + " was already revoked"
    assert admin_json(["proxy-token", "list"], env)[0]["state"] == "revoked"
    r = admin(["proxy-token", "revoke", "nope"], env)
    assert r.rc == 1 and "proxy token nope not found" in r.err, r


@test
def usage_errors():
    dep = Deployment()
    env = dep.env()
    svc.check_usage_error(admin(["proxy-token", "create"], env), "--name is required")
    svc.check_usage_error(admin(["proxy-token", "create", "--name", "x", "--expires-in", "1500ms"], env),
                          "whole seconds")
    svc.check_usage_error(admin(["proxy-token", "create", "--name", "x", "--expires-in", "soon"], env),
                          "--expires-in")
    svc.check_usage_error(admin(["proxy-token", "revoke"], env), "needs the token id")
    svc.check_usage_error(admin(["proxy-token", "frob"], env), 'unknown command "proxy-token frob"')
    r = admin(["proxy-token", "create", "--name", "x", "--account", "nosuch"], env)
    assert r.rc == 1 and "account nosuch not found" in r.err, r
    assert dep.sql("SELECT count(*) FROM proxy_access_tokens")[0][0] == 0
    r = admin(["--help"])
    assert "proxy-token create" in r.out, r


if __name__ == "__main__":
    sys.exit(svc.run_all())
