"""netbird-cp-admin import: NetBird stores written by tests/lib/nbstore.py
(every schema version, SQLite and PostgreSQL) imported into a real
database, then checked through a real netbird-mgmt: the REST API shows
what NetBird showed for that store (nbstore.expected_rest), and an agent
holding a stored peer's private key logs in without a setup key and gets
its map. Also: --dry-run, refusal of an existing account, --update twice,
the encryption key, and broken sources that import nothing."""

import base64
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import fixture  # noqa: E402
import nbagent  # noqa: E402
import nbstore  # noqa: E402
import nacl.public  # noqa: E402
from fixture import Deployment  # noqa: E402
from nbagent import build_meta, remote_keys  # noqa: E402

test = svc.test
DNS_DOMAIN = "netbird.selfhosted"


def key_for(version):
    return nbstore.KEY if version == "encrypted" else None


def imp(dep, *args, env=None):
    e = dep.env()
    e.update(env or {})
    return svc.admin(["import"] + list(args), e)


def import_args(version, path):
    args = ["--sqlite", path]
    if key_for(version):
        args += ["--encryption-key", key_for(version)]
    return args


def account_ids(dep):
    return sorted(r[0] for r in dep.sql("SELECT id FROM accounts"))


def result_lines(out, verb):
    return [l for l in out.splitlines() if l.startswith(verb + " account ")]


def skipped_lines(out):
    return [l for l in out.splitlines() if l.startswith("skipped ")]


def owner_token(acc):
    owner = [u["id"] for u in acc["users"] if u["role"] == "owner"][0]
    return [p["token"] for p in acc["pats"] if p["user_id"] == owner][0]


def check_rest(srv, data, what):
    expected = nbstore.expected_rest(data, dns_domain=DNS_DOMAIN)
    for acc in data["accounts"]:
        token = owner_token(acc)
        for path, want in expected[acc["id"]].items():
            if path == "/api/peers":
                # The store keeps peer_status_requires_approval (checked in
                # SQL below); the API reports false as NetBird's open-source
                # validator does (docs/protocol.md "Peer approval").
                want = [{k: v for k, v in p.items() if k != "approval_required"} for p in want]
            status, got = svc.rest(srv, "GET", path, token)
            assert status == 200, (what, path, status, got)
            nbstore.assert_subset(got, want, "%s %s %s" % (what, acc["id"], path))


def agent_for(dep, srv, peer):
    key = nacl.public.PrivateKey(base64.b64decode(peer["private_key"]))
    return dep.agent(srv, private_key=key)


def check_agent(dep, srv, data, what):
    """The small account's first peer logs in with its key only (no setup
    key) and its map holds the other peer (the Default policy)."""
    acc = data["accounts"][-1]
    me, other = acc["peers"][0], acc["peers"][1]
    a = agent_for(dep, srv, me)
    assert a.pub_b64 == me["key"], (what, a.pub_b64, me["key"])
    resp = a.login(meta=build_meta(hostname=me["name"]))
    assert resp.peerConfig.address.split("/")[0] == me["ip"], (what, resp.peerConfig)
    s = a.sync()
    m = s.wait_for(lambda m: other["key"] in remote_keys(m), timeout=30)
    assert other["key"] in remote_keys(m), (what, m)


def start(dep):
    return dep.start("--dns-domain", DNS_DOMAIN)


# ---- every version, SQLite --------------------------------------------------------------


@test
def every_sqlite_version_imports_with_rest_and_agent():
    d = svc.tmpdir()
    for v in nbstore.VERSIONS:
        dep = Deployment()
        before = account_ids(dep)
        nbstore.write_datadir(os.path.join(d, v), v, key=key_for(v))
        r = imp(dep, *import_args(v, os.path.join(d, v, "store.db")))
        assert r.rc == 0, (v, r)
        data = nbstore.data_for(v)
        lines = result_lines(r.out, "imported")
        assert len(lines) == len(data["accounts"]), (v, r)
        for acc in data["accounts"]:
            line = [l for l in lines if l.startswith("imported account %s (" % acc["id"])]
            assert line and "%d peers, %d users" % (len(acc["peers"]), len(acc["users"])) in line[0], (v, r)
            # events.db beside store.db came along
            assert "%d events" % len(acc["events"]) in line[0], (v, line)
        assert not skipped_lines(r.out), (v, r)
        assert account_ids(dep) == sorted(before + [a["id"] for a in data["accounts"]]), v
        # imported peers start disconnected, with no session
        assert dep.sql("SELECT count(*) FROM peers WHERE peer_status_connected OR peer_status_session_started_at <> 0"
                       " AND account_id <> %s", (dep.account_id,))[0][0] == 0, v
        waiting = [p["id"] for a in data["accounts"] for p in a["peers"] if p.get("requires_approval")]
        assert sorted(r[0] for r in dep.sql("SELECT id FROM peers WHERE peer_status_requires_approval")) == \
            sorted(waiting), v
        srv = start(dep)
        check_rest(srv, data, v)
        check_agent(dep, srv, data, v)
        srv.stop()


# ---- PostgreSQL source --------------------------------------------------------------------


@test
def postgres_store_imports():
    for v in ("v0.27.4", "current", "encrypted"):
        dep = Deployment()
        src, _ = svc.new_db()
        nbstore.write_postgres(src, v, key=key_for(v))
        ev, _ = svc.new_db()
        nbstore.write_events_postgres(ev, key=nbstore.KEY)
        args = ["--postgres", src, "--events-postgres", ev]
        if key_for(v):
            args += ["--encryption-key", key_for(v)]
        r = imp(dep, *args)
        assert r.rc == 0, (v, r)
        data = nbstore.data_for(v)
        assert len(result_lines(r.out, "imported")) == len(data["accounts"]), (v, r)
        assert not skipped_lines(r.out), (v, r)
        if v == "current":
            srv = start(dep)
            check_rest(srv, data, "postgres " + v)
            check_agent(dep, srv, data, "postgres " + v)
            srv.stop()


# ---- dry run, refusal, update ---------------------------------------------------------------


@test
def dry_run_prints_and_writes_nothing():
    dep = Deployment()
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "store.db"), "current")
    before = account_ids(dep)
    n_events = dep.sql("SELECT count(*) FROM events")[0][0]
    r = imp(dep, "--sqlite", path, "--dry-run")
    assert r.rc == 0, r
    data = nbstore.dataset()
    lines = result_lines(r.out, "would import")
    assert len(lines) == 2 and not result_lines(r.out, "imported"), r
    assert account_ids(dep) == before
    assert dep.sql("SELECT count(*) FROM events")[0][0] == n_events
    # what it prints is what the import does
    r2 = imp(dep, "--sqlite", path)
    assert r2.rc == 0, r2
    assert [l.replace("imported", "", 1) for l in result_lines(r2.out, "imported")] == \
        [l.replace("would import", "", 1) for l in lines], (r, r2)
    assert account_ids(dep) == sorted(before + [a["id"] for a in data["accounts"]])


def snapshot(dep, account):
    tables = ["users", "peers", "groups", "group_peers", "setup_keys", "personal_access_tokens", "policies",
              "policy_rules", "routes", "name_server_groups", "posture_checks", "networks", "network_resources",
              "network_routers", "group_resources", "dns_zones", "dns_records"]
    snap = {}
    for t in tables:
        # sealed values differ by their nonce; the session is the replicas'
        rows = dep.sql("SELECT to_jsonb(x) - 'pii_key' - 'email' - 'name' - 'peer_status_connected'"
                       " - 'peer_status_session_started_at' FROM %s x WHERE account_id = %%s" % t, (account,))
        snap[t] = sorted(str(r[0]) for r in rows)
    snap["events"] = dep.sql("SELECT count(*) FROM events WHERE account_id = %s", (account,))[0][0]
    snap["account"] = dep.sql("SELECT to_jsonb(a) - 'network_serial' FROM accounts a WHERE id = %s", (account,))
    return snap


@test
def existing_account_refused_unless_update_and_update_is_idempotent():
    dep = Deployment()
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "store.db"), "current")
    rich = nbstore.dataset()["accounts"][0]["id"]
    assert imp(dep, "--sqlite", path).rc == 0
    first = snapshot(dep, rich)
    serial = dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (rich,))[0][0]

    r = imp(dep, "--sqlite", path)
    assert r.rc == 1 and "account %s exists" % rich in r.err and "--update" in r.err, r
    assert snapshot(dep, rich) == first

    # a peer connected meanwhile keeps its session through an update
    peer = nbstore.dataset()["accounts"][0]["peers"][0]
    dep.sql("UPDATE peers SET peer_status_connected = true, peer_status_session_started_at = 42 WHERE id = %s",
            (peer["id"],))
    for _ in range(2):
        r = imp(dep, "--sqlite", path, "--update", "--account", rich)
        assert r.rc == 0 and len(result_lines(r.out, "updated")) == 1, r
        assert "no --redis-url" in r.err, r
        assert snapshot(dep, rich) == first
    # the serial moves on each update, so agents take the new map
    assert dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (rich,))[0][0] == serial + 2
    assert dep.sql("SELECT peer_status_session_started_at FROM peers WHERE id = %s", (peer["id"],))[0][0] == 42


@test
def account_filter_imports_one():
    dep = Deployment()
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "store.db"), "current")
    small = nbstore.dataset()["accounts"][1]["id"]
    r = imp(dep, "--sqlite", path, "--account", small)
    assert r.rc == 0 and result_lines(r.out, "imported") == [l for l in result_lines(r.out, "imported")
                                                            if small in l] and len(r.out.splitlines()) == 1, r
    r = imp(dep, "--sqlite", path, "--account", "nosuchaccount")
    assert r.rc == 1 and "nosuchaccount is not in the NetBird store" in r.err, r


# ---- secrets ------------------------------------------------------------------------------


@test
def encrypted_store_needs_the_right_key():
    d = svc.tmpdir()
    path = nbstore.write_sqlite(os.path.join(d, "store.db"), "encrypted", key=nbstore.KEY)
    dep = Deployment()
    before = account_ids(dep)
    wrong = base64.b64encode(b"\x01" * 32).decode()
    r = imp(dep, "--sqlite", path, "--encryption-key", wrong)
    assert r.rc == 1 and "does not open with --encryption-key" in r.err and "nothing imported" in r.err, r
    assert account_ids(dep) == before
    r = imp(dep, "--sqlite", path)
    assert r.rc == 1 and "encrypted" in r.err and "--encryption-key" in r.err, r
    assert account_ids(dep) == before
    r = imp(dep, "--sqlite", path, "--encryption-key", "not-a-key")
    assert r.rc == 2 and "invalid --encryption-key" in r.err, r
    r = imp(dep, "--sqlite", path, "--encryption-key", nbstore.KEY)
    assert r.rc == 0, r
    # sealed under OUR key: the owner's e-mail is not stored in plain text,
    # and the REST API (our key) shows it
    acc = nbstore.dataset()["accounts"][0]
    owner = [u for u in acc["users"] if u["role"] == "owner"][0]
    stored = dep.sql("SELECT email, pii_key FROM users WHERE id = %s", (owner["id"],))[0]
    assert stored[0] != owner["email"] and stored[1] != "", stored
    srv = start(dep)
    status, users = svc.rest(srv, "GET", "/api/users", owner_token(acc))
    assert status == 200 and owner["email"] in [u.get("email") for u in users], (status, users)


# ---- bad input ------------------------------------------------------------------------------


@test
def broken_sources_import_nothing():
    d = svc.tmpdir()
    dep = Deployment()
    before = account_ids(dep)
    cases = [
        (nbstore.write_truncated(os.path.join(d, "trunc.db")), "cannot read the NetBird store"),
        (nbstore.write_not_sqlite(os.path.join(d, "json.db")), "cannot read the NetBird store"),
        (nbstore.write_unknown_schema(os.path.join(d, "noacc.db"), "no_accounts"), "not a NetBird store"),
        (nbstore.write_unknown_schema(os.path.join(d, "nokey.db"), "missing_column"), "has no column key"),
        (os.path.join(d, "missing.db"), "cannot open"),
    ]
    for path, needle in cases:
        r = imp(dep, "--sqlite", path)
        assert r.rc == 1 and needle in r.err and "nothing imported" in r.err, (path, r)
        assert r.out == "", (path, r)
        assert account_ids(dep) == before, path


@test
def usage_errors():
    dep = Deployment()
    svc.check_usage_error(imp(dep), "exactly one of --sqlite FILE and --postgres DSN")
    svc.check_usage_error(imp(dep, "--sqlite", "a", "--postgres", "b"), "exactly one of")
    svc.check_usage_error(imp(dep, "--sqlite", "a", "--events-sqlite", "b", "--events-postgres", "c"),
                          "at most one of")
    r = svc.admin(["import", "--help"])
    assert r.rc == 0, r
    for flag in ("--sqlite", "--postgres", "--events-sqlite", "--events-postgres", "--encryption-key", "--dry-run",
                 "--update", "--account", "--data-store-encryption-key"):
        assert flag in r.out, (flag, r)


if __name__ == "__main__":
    sys.exit(svc.run_all())
