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
    # events.db (beside store.db) always has its deleted users sealed
    return ["--sqlite", path, "--encryption-key", nbstore.KEY]


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
    zones = nbstore.expected_zones(data)
    for acc in data["accounts"]:
        token = owner_token(acc)
        paths = dict(expected[acc["id"]])
        paths.update(zones.get(acc["id"], {}))
        for path, want in paths.items():
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


@test
def upgraded_store_leftovers_are_ignored():
    """A store NetBird upgraded in place keeps the legacy rules table and
    network_resources.address: neither changes what is imported."""
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "store.db"), "current", leftovers=True)
    dep = Deployment()
    r = imp(dep, "--sqlite", path)
    assert r.rc == 0 and not skipped_lines(r.out), r
    srv = start(dep)
    check_rest(srv, nbstore.data_for("current"), "leftovers")


# ---- PostgreSQL source --------------------------------------------------------------------


@test
def postgres_store_imports():
    for v in ("v0.27.4", "current", "encrypted"):
        dep = Deployment()
        src, _ = svc.new_db()
        nbstore.write_postgres(src, v, key=key_for(v))
        ev, _ = svc.new_db()
        nbstore.write_events_postgres(ev, key=nbstore.KEY)
        args = ["--postgres", src, "--events-postgres", ev, "--encryption-key", nbstore.KEY]
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
    d = svc.tmpdir()
    nbstore.write_datadir(d, "current", key=nbstore.KEY)
    path = os.path.join(d, "store.db")
    before = account_ids(dep)
    n_events = dep.sql("SELECT count(*) FROM events")[0][0]
    r = imp(dep, "--sqlite", path, "--dry-run")
    assert r.rc == 0, r
    # without --encryption-key a deleted user's sealed e-mail is left out, said once
    gone = nbstore.deleted_users(nbstore.dataset())[0][0]
    assert skipped_lines(r.out) == ["skipped deleted_users %s: its e-mail and name are encrypted "
                                    "(give --encryption-key)" % gone], r
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


@test
def an_account_whose_owner_is_taken_fails_and_ephemeral_peers_get_their_idle_time():
    """The account a first sign-in to the cluster made for the same IdP
    user holds the owner's id: the store's account fails as a whole (an
    account without its owner), the other one lands. Once that account is
    gone it imports, and its ephemeral peer counts as seen at the import
    (the sweep would delete one last seen before the switch at once)."""
    dep = Deployment()
    data = nbstore.dataset()
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "store.db"), "current", data)
    rich, small = data["accounts"]
    owner = [u["id"] for u in rich["users"] if u["role"] == "owner"][0]
    dep.sql("INSERT INTO accounts (id, network_net) VALUES ('firstsignin00000000', '100.64.0.0/16')")
    dep.sql("INSERT INTO users (id, account_id, role) VALUES (%s, 'firstsignin00000000', 'owner')", (owner,))
    r = imp(dep, *import_args("current", path))
    assert r.rc == 1, r
    assert "account %s: its owner %s cannot be imported" % (rich["id"], owner) in r.err, r
    assert [l.split()[2] for l in result_lines(r.out, "imported")] == [small["id"]], r
    assert dep.sql("SELECT count(*) FROM peers WHERE account_id = %s", (rich["id"],))[0][0] == 0
    assert dep.sql("SELECT count(*) FROM accounts WHERE id = %s", (rich["id"],))[0][0] == 0

    dep.sql("DELETE FROM accounts WHERE id = 'firstsignin00000000'")
    r = imp(dep, "--sqlite", path, "--encryption-key", nbstore.KEY, "--account", rich["id"])
    assert r.rc == 0, r
    eph = [p for p in rich["peers"] if p.get("ephemeral")]
    assert eph
    for p in eph:
        age = dep.sql("SELECT extract(epoch FROM now() - peer_status_last_seen) FROM peers WHERE id = %s",
                      (p["id"],))
        assert age and age[0][0] is not None and float(age[0][0]) < 120, (p["name"], age)


# ---- secrets ------------------------------------------------------------------------------


@test
def encrypted_store_needs_the_right_key():
    d = svc.tmpdir()
    nbstore.write_datadir(d, "encrypted", key=nbstore.KEY)
    path = os.path.join(d, "store.db")
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
    # a deleted user's e-mail (NetBird's deleted_users, sealed) is in the
    # meta of the events about them, sealed with our key, and the API shows it
    gone_id, gone_email, _ = nbstore.deleted_users(nbstore.dataset())[0]
    stored = dep.sql("SELECT meta->>'email', pii_key FROM events WHERE target_id = %s", (gone_id,))
    assert stored and stored[0][0] not in ("", None, gone_email) and stored[0][1] != "", stored
    status, events = svc.rest(srv, "GET", "/api/events", owner_token(acc))
    assert status == 200, (status, events)
    mine = [e for e in events if e.get("target_id") == gone_id]
    assert mine and gone_email in str(mine[0].get("meta")), mine


@test
def every_events_version_imports():
    """events.db as NetBird wrote it over time (legacy CBC deleted users,
    GCM, gorm tables): /api/events shows nbstore.expected_events."""
    data = nbstore.data_for("current")
    want = nbstore.expected_events(data)
    for ev in nbstore.EVENTS_VERSIONS:
        d = svc.tmpdir()
        path = nbstore.write_sqlite(os.path.join(d, "store.db"), "current")
        nbstore.write_events_sqlite(os.path.join(d, "events.db"), key=nbstore.KEY, version=ev)
        dep = Deployment()
        r = imp(dep, "--sqlite", path, "--encryption-key", nbstore.KEY)
        assert r.rc == 0 and not skipped_lines(r.out), (ev, r)
        srv = start(dep)
        for acc in data["accounts"]:
            status, got = svc.rest(srv, "GET", "/api/events", owner_token(acc))
            assert status == 200, (ev, status, got)
            got = sorted(got, key=lambda e: (e.get("timestamp"), e.get("activity_code")))
            assert len(got) == len(want[acc["id"]]), (ev, got, want[acc["id"]])
            for g, w in zip(got, want[acc["id"]]):
                nbstore.assert_subset(g, w, "%s %s /api/events" % (ev, acc["id"]))
        srv.stop()


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
    empty, _ = svc.new_db()
    for dsn, needle in [(empty, "is not a NetBird store (it has no accounts table)"),
                        ("host=127.0.0.1 port=1 dbname=none connect_timeout=5", "cannot connect to NetBird's PostgreSQL")]:
        r = imp(dep, "--postgres", dsn)
        assert r.rc == 1 and needle in r.err and "nothing imported" in r.err, (dsn, r)
        assert account_ids(dep) == before, dsn


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
