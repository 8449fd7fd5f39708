"""Personal data at rest (docs/msp.md "Personal data at rest", docs/ops.md
"Rotating the DataStoreEncryptionKey"): users' e-mails and names sealed
in PostgreSQL and shown unchanged by the API, the key rotation with two
replicas and netbird-cp-admin data-key, and a replica with the wrong key
that stays up, not ready, and writes nothing."""

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "api"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import apifix  # noqa: E402
import fixture  # noqa: E402
import testidp  # noqa: E402  (on the path apifix sets)

test = svc.test
admin = svc.admin

NAME = 'Zoë "Zed" Tester\\'
EMAIL = "zoe.pii@example.test"


def fingerprint(b64key):
    mac = hmac.new(base64.b64decode(b64key), b"netbird-cp data key fingerprint v1", hashlib.sha256)
    return mac.digest()[:16].hex()


def new_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


def wait_until(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except OSError:         # not listening yet
            v = None
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.2)


def ready(srv):
    return svc.http_json("GET", srv.url("/readyz"))


def table_digests(dep):
    """Every table's rows, as one md5 per table."""
    tables = [r[0] for r in dep.sql("SELECT table_name FROM information_schema.tables WHERE table_schema ="
                                    " current_schema() AND table_type = 'BASE TABLE' ORDER BY 1")]
    out = {}
    for t in tables:
        out[t] = dep.sql('SELECT md5(COALESCE(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) FROM "%s" x' % t)[0][0]
    return out


def add_user(dep, name=NAME, email=EMAIL):
    """A legacy (plain-text) row, as written before migration 0012."""
    return apifix.sql_user(dep, "user", name=name, email=email)


def wait_sealed(dep):
    wait_until(lambda: dep.sql("SELECT count(*) FROM users WHERE pii_key = '' AND (email <> '' OR name <> '')")[0][0] == 0,
               what="legacy rows sealed")


def admin_env(dep, key, previous=None):
    e = {"NB_STORE_ENGINE_POSTGRES_DSN": dep.dsn, "NB_MGMT_DATA_STORE_ENCRYPTION_KEY": key}
    if previous:
        e["NB_MGMT_DATA_STORE_ENCRYPTION_KEY_PREVIOUS"] = previous
    return e


def env_lines(text):
    return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)


@test
def emails_and_names_are_sealed_in_postgres_and_shown_by_the_api():
    dep, srv, api = apifix.start()
    uid = add_user(dep)
    wait_sealed(dep)
    fp = fingerprint(dep.enc_key)
    assert dep.sql("SELECT fingerprint FROM data_keys WHERE current") == [(fp,)]
    rows = dep.sql("SELECT id, email, name, pii_key FROM users")
    for _, email, name, key in rows:
        assert key == fp, rows
        # Texts that cannot occur inside base64 by chance ('.', non-ASCII).
        assert "zoe.pii" not in email.lower() and "Zo\u00eb" not in name and "admin" not in name.lower(), rows
    # No plain text anywhere in the users table.
    assert dep.sql("SELECT count(*) FROM users u WHERE u::text ILIKE '%%zoe%%' OR u::text LIKE '%%Zed%%'")[0][0] == 0
    # The API shows them as before, byte for byte in PostgreSQL's JSON.
    u = [x for x in api.ok("GET", "/api/users") if x["id"] == uid][0]
    assert (u["email"], u["name"]) == (EMAIL, NAME), u
    st, _, raw = svc.http("GET", srv.url("/api/users"), headers={"Authorization": "Token " + dep.admin_token})
    assert st == 200 and b'"email" : "zoe.pii@example.test"' in raw, raw
    assert '"name" : "Zo\u00eb \\"Zed\\" Tester\\\\"'.encode() in raw, raw
    # Deleting the user keeps the name and e-mail in the event, sealed.
    api.ok("DELETE", "/api/users/" + uid)
    ev = dep.sql("SELECT meta::text, pii_key FROM events WHERE target_id = %s AND meta ? 'email'", (uid,))
    assert len(ev) == 1 and ev[0][1] == fp and "zoe" not in ev[0][0].lower(), ev
    audit = api.ok("GET", "/api/events/audit")
    gone = [e for e in audit if e["target_id"] == uid and e["activity_code"] == "user.delete"]
    assert gone and gone[0]["meta"]["email"] == EMAIL and gone[0]["meta"]["username"] == NAME, gone
    # The access-log filters on users' e-mails and names still work.
    assert api.ok("GET", "/api/events/proxy?user_email=pii@example")["data"] == []


@test
def a_pasted_ciphertext_is_shown_as_typed_never_opened():
    """Someone holding a database dump pastes a sealed value into a
    service user's name: the API must not open it for them."""
    dep, srv, api = apifix.start()
    uid = add_user(dep)
    wait_sealed(dep)
    fp, ct = dep.sql("SELECT pii_key, email FROM users WHERE id = %s", (uid,))[0]
    marker = "pii1:%s:%s" % (fp, ct)
    for name in (marker, 'x"' + marker + '"', "pii0:" + marker):
        sid = api.ok("POST", "/api/users", {"name": name, "role": "user", "auto_groups": [],
                                            "is_service_user": True})["id"]
        listed = [x for x in api.ok("GET", "/api/users?service_user=true") if x["id"] == sid]
        assert listed and listed[0]["name"] == name, (name, listed)
        assert EMAIL not in json.dumps(api.ok("GET", "/api/users?service_user=true"))
    # A legacy row (written without the key) whose name is a ciphertext.
    dep.sql("INSERT INTO users (id, account_id, role, name, email, pii_key) VALUES ('usrpaste', %s, 'user', %s,"
            " '', '')", (dep.account_id, marker))
    got = [x for x in api.ok("GET", "/api/users") if x["id"] == "usrpaste"]
    assert got and got[0]["name"] == marker, got


def start_with(dep, key, previous=None, **kw):
    env = {"NB_MGMT_DATA_STORE_ENCRYPTION_KEY": key}
    if previous:
        env["NB_MGMT_DATA_STORE_ENCRYPTION_KEY_PREVIOUS"] = previous
    return dep.start(env=env, **kw)


@test
def rotation_with_two_replicas_resumes_and_ends_with_only_the_new_key():
    dep = fixture.Deployment()
    old, new = dep.enc_key, new_key()
    r1, r2 = dep.start(), dep.start()
    api = apifix.Api(r1.url(""), dep.admin_token)
    uids = [add_user(dep, name="User %d" % i, email="u%d@rot.test" % i) for i in range(7)]
    wait_sealed(dep)
    api.ok("DELETE", "/api/users/" + uids[-1])
    uids.pop()
    want = {u["id"]: (u["email"], u["name"]) for u in api.ok("GET", "/api/users")}

    # Rolling restart: replica 2 first gets the new key with the old one
    # as previous; it still writes with the old key (the current one).
    fixture.stop_server(r2)
    r2 = start_with(dep, new, old)
    wait_until(lambda: ready(r2)[0] == 200, what="replica 2 ready")
    api2 = apifix.Api(r2.url(""), dep.admin_token)
    assert {u["id"]: (u["email"], u["name"]) for u in api2.ok("GET", "/api/users")} == want
    fixture.stop_server(r1)
    r1 = start_with(dep, new, old)
    api = apifix.Api(r1.url(""), dep.admin_token)

    # An interrupted run: two batches of one row, then stop.
    env = admin_env(dep, new, old)
    r = admin(["data-key", "reencrypt", "--batch-size", "1", "--max-batches", "2"], env)
    assert r.rc == 0, r
    out = env_lines(r.out)
    assert out["DONE"] == "false" and out["BATCHES"] == "2" and out["CURRENT_KEY"] == fingerprint(new), r
    keys = dict(dep.sql("SELECT pii_key, count(*) FROM users GROUP BY 1"))
    assert keys.get(fingerprint(new)) == 2 and keys.get(fingerprint(old)) >= 1, keys
    assert dep.sql("SELECT fingerprint FROM data_keys WHERE current") == [(fingerprint(new),)]
    # Both replicas read the mixed data and write with the new key.
    for a in (api, api2):
        assert {u["id"]: (u["email"], u["name"]) for u in a.ok("GET", "/api/users")} == want
    # The rerun finishes.
    r = admin(["data-key", "reencrypt", "--batch-size", "2"], env)
    assert r.rc == 0 and env_lines(r.out)["DONE"] == "true", r
    assert dep.sql("SELECT DISTINCT pii_key FROM users") == [(fingerprint(new),)]
    assert dep.sql("SELECT DISTINCT pii_key FROM events WHERE meta ? 'email'") == [(fingerprint(new),)]
    status = svc.admin_json(["data-key", "status"], env)
    assert [s["rows"] for s in status if s["fingerprint"] == fingerprint(old)] == [0], status

    # The old key is no longer needed: replicas with only the new key.
    for srv in (r1, r2):
        fixture.stop_server(srv)
    r1 = start_with(dep, new)
    wait_until(lambda: ready(r1)[0] == 200, what="replica with only the new key ready")
    api = apifix.Api(r1.url(""), dep.admin_token)
    assert {u["id"]: (u["email"], u["name"]) for u in api.ok("GET", "/api/users")} == want
    r = admin(["data-key", "retire", fingerprint(old)], admin_env(dep, new))
    assert r.rc == 0, r
    assert dep.sql("SELECT fingerprint FROM data_keys") == [(fingerprint(new),)]
    # A replica with only the old key now refuses.
    r3 = held_server(dep, old)
    r3.wait_log(lambda o: o.get("level") == "error" and o.get("key_fingerprint") == fingerprint(old))
    r3.stop(10)


def held_server(dep, key, previous=None):
    port = svc.free_port()
    env = dict(dep.env(), NB_MGMT_DATA_STORE_ENCRYPTION_KEY=key)
    if previous:
        env["NB_MGMT_DATA_STORE_ENCRYPTION_KEY_PREVIOUS"] = previous
    args = ["--listen-address", "127.0.0.1", "--port", "0", "--http-port", str(port), "--config=",
            "--shutdown-timeout", "2s"]
    srv = svc.Server(args, env=env, wait=False)
    srv.http_port = port
    return srv


def check_held(dep, srv, expected_fp, key):
    err = srv.wait_log(lambda o: o.get("level") == "error")
    assert err["key_fingerprint"] == fingerprint(key), err
    assert err["data_key_fingerprint"] == expected_fp, err
    assert key not in srv.stdout() and key not in srv.stderr()
    wait_until(lambda: svc.http("GET", srv.url("/healthz"))[0] == 200, what="healthz")
    st, _, body = ready(srv)
    assert st == 503 and body["failed"] == "data_key" and fingerprint(key) in body["error"], (st, body)
    time.sleep(5)       # a few re-checks
    assert srv.proc.poll() is None, "the replica exited"
    errors = [l for l in srv.logs() if l.get("level") == "error"]
    assert len(errors) == 1, errors
    assert not [l for l in srv.logs() if l.get("msg") == "listening"], "it served"


@test
def a_replica_with_the_wrong_key_stays_not_ready_and_writes_nothing():
    dep = fixture.Deployment()
    srv = dep.start()
    add_user(dep)
    wait_sealed(dep)
    fixture.stop_server(srv)
    before = table_digests(dep)
    wrong = new_key()
    held = held_server(dep, wrong, previous=new_key())
    check_held(dep, held, fingerprint(dep.enc_key), wrong)
    assert table_digests(dep) == before
    rc, _ = held.stop(10)
    assert rc == 0, held.stderr()
    assert table_digests(dep) == before
    # The right key starts as usual.
    srv = dep.start()
    assert ready(srv)[0] == 200


@test
def a_database_from_before_the_fingerprints_is_checked_with_its_server_key():
    dep = fixture.Deployment()
    srv = dep.start()
    fixture.stop_server(srv)
    # As before migration 0012: no key recorded, plain-text users.
    dep.sql("DELETE FROM data_keys")
    dep.sql("UPDATE users SET name = 'Legacy Owner', email = 'legacy@x.test', pii_key = ''")
    before = table_digests(dep)
    wrong = new_key()
    held = held_server(dep, wrong)
    check_held(dep, held, "unknown (sealed before fingerprints)", wrong)
    held.stop(10)
    assert table_digests(dep) == before
    # The right key: proven by the server key, recorded, legacy rows sealed.
    srv = dep.start()
    wait_sealed(dep)
    assert dep.sql("SELECT fingerprint, current FROM data_keys") == [(fingerprint(dep.enc_key), True)]
    api = apifix.Api(srv.url(""), dep.admin_token)
    assert [(u["name"], u["email"]) for u in api.ok("GET", "/api/users")] == [("Legacy Owner", "legacy@x.test")]


@test
def a_held_replica_starts_once_the_database_matches_its_key():
    dep = fixture.Deployment()
    srv = dep.start()
    fixture.stop_server(srv)
    other = new_key()
    held = held_server(dep, other)
    held.wait_log(lambda o: o.get("level") == "error")
    # The operator re-keys the database to this key (reencrypt with both).
    r = admin(["data-key", "reencrypt"], admin_env(dep, other, dep.enc_key))
    assert r.rc == 0 and env_lines(r.out)["DONE"] == "true", r
    held.wait_log(lambda o: o.get("msg") == "listening" and o.get("protocol") == "http", timeout=30)
    wait_until(lambda: ready(held)[0] == 200, what="ready after the database matched")
    held.stop(10)


@test
def a_replica_whose_first_key_check_fails_waits_instead_of_starting_unchecked():
    """Not a wrong key but a check that errs (here a trigger refuses to
    record the key): the replica holds, not ready, until a check passes."""
    dep = fixture.Deployment()
    srv = dep.start()
    fixture.stop_server(srv)
    dep.sql("DELETE FROM data_keys")
    dep.sql("CREATE FUNCTION piifix_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'piifix: refused'; END$$")
    dep.sql("CREATE TRIGGER piifix_refuse BEFORE INSERT ON data_keys FOR EACH ROW EXECUTE FUNCTION piifix_refuse()")
    held = held_server(dep, dep.enc_key)
    held.wait_log(lambda o: o.get("level") == "warn" and "retrying" in o.get("msg", ""))
    wait_until(lambda: svc.http("GET", held.url("/healthz"))[0] == 200, what="healthz")
    st, _, body = ready(held)
    assert st == 503 and body["failed"] == "data_key", (st, body)
    time.sleep(3)
    assert held.proc.poll() is None, "the replica exited"
    assert not [l for l in held.logs() if l.get("msg") == "listening"], "it started unchecked"
    dep.sql("DROP TRIGGER piifix_refuse ON data_keys")
    held.wait_log(lambda o: o.get("msg") == "listening" and o.get("protocol") == "http", timeout=30)
    wait_until(lambda: ready(held)[0] == 200, what="ready once the check passed")
    assert dep.sql("SELECT fingerprint, current FROM data_keys") == [(fingerprint(dep.enc_key), True)]
    held.stop(10)


@test
def a_running_replica_whose_key_is_replaced_seals_nothing_with_its_old_one():
    """The database's current key changes under a running replica (another
    deployment re-keyed it): the replica goes not ready and a sign-in that
    would write a new user's e-mail and name fails instead of sealing them
    with the old key; once the database matches again, it works."""
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    alice = apifix.Api(srv.url(""), idp.token("alice-sub", email="alice@corp.example", name="Alice"),
                       scheme="Bearer")
    wait_until(lambda: alice.get("/api/users/current")[0] == 200, timeout=90, what="alice signed in")
    mine = fingerprint(dep.enc_key)
    other = fingerprint(new_key())
    dep.sql("UPDATE data_keys SET current = false")
    dep.sql("INSERT INTO data_keys (fingerprint, current) VALUES (%s, true)", (other,))
    wait_until(lambda: ready(srv)[0] == 503, what="not ready")
    bob = apifix.Api(srv.url(""), idp.token("bob-sub", email="bob@corp.example", name="Bob"), scheme="Bearer")
    st, body = bob.get("/api/users/current")
    assert st >= 500, (st, body)
    assert dep.sql("SELECT count(*) FROM users WHERE id = 'bob-sub'")[0][0] == 0
    assert dep.sql("SELECT count(*) FROM users WHERE pii_key NOT IN (%s, '')", (mine,))[0][0] == 0
    # Back to this replica's key: ready again, and the sign-in works.
    dep.sql("DELETE FROM data_keys WHERE fingerprint = %s", (other,))
    dep.sql("UPDATE data_keys SET current = true WHERE fingerprint = %s", (mine,))
    wait_until(lambda: ready(srv)[0] == 200, what="ready again")
    wait_until(lambda: bob.get("/api/users/current")[0] in (200, 403), what="bob signed in")
    assert dep.sql("SELECT pii_key FROM users WHERE id = 'bob-sub'") == [(mine,)]


if __name__ == "__main__":
    sys.exit(svc.run_all())
