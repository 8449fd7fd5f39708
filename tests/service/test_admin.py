"""netbird-cp-admin against the real binary, a throwaway database and, where
a case needs one, running netbird-mgmt replicas with agents (nbagent.py).

The admin binary's path is in NETBIRD_ADMIN (meson sets it); netbird-mgmt's
is the first argument, as for every service test. `setup-key create/list`
and `peers list` go through the REST layer (/api/setup-keys, /api/peers)
in-process.
"""

import glob
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
import fixture  # noqa: E402
import nbagent  # noqa: E402
from fixture import Deployment, parse_env_output, replica_id, wait_until  # noqa: E402
from nbagent import RpcFailed, build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

ADMIN = svc.ADMIN
ENV_KEYS = ["ACCOUNT_ID", "USER_ID", "SETUP_KEY", "ADMIN_TOKEN", "NETWORK"]
# The migrations compiled into both binaries (sql/meson.build lists them).
MIGRATIONS = sorted(glob.glob(os.path.join(ROOT, "sql", "migrations", "*.sql")))


admin, ok, admin_json = svc.admin, svc.admin_ok, svc.admin_json


def fresh_db_env():
    dsn, _ = svc.new_db()
    return {"NB_STORE_ENGINE_POSTGRES_DSN": dsn}


# ---- usage -----------------------------------------------------------------------------


@test
def usage_errors_exit_2():
    r = admin([])
    assert r.rc == 2 and "Usage:" in r.err and "account create" in r.err, r
    r = admin(["--help"])
    assert r.rc == 0 and "server-key rotate" in r.out and "sessions list" in r.out, r
    r = admin(["version"])
    assert r.rc == 0 and r.out.startswith("netbird-cp-admin "), r
    svc.check_usage_error(admin(["frobnicate"]), 'unknown command "frobnicate"')
    svc.check_usage_error(admin(["account"]), '"account" needs a verb')
    svc.check_usage_error(admin(["account", "delete"]), 'unknown command "account delete"')
    env = {"NB_STORE_ENGINE_POSTGRES_DSN": "host=127.0.0.1 port=1 dbname=none"}
    svc.check_usage_error(admin(["account", "create", "--frobnicate", "1"], env), "unknown flag --frobnicate",
                          "account create --help")
    svc.check_usage_error(admin(["account", "list", "stray"], env), "stray")
    svc.check_usage_error(admin(["setup-key", "create", "--usage-limit", "many"], env), "--usage-limit")
    svc.check_usage_error(admin(["setup-key", "create", "--auto-group"], env), "--auto-group needs a value")
    svc.check_usage_error(admin(["account", "create", "--setup-key-ttl", "1500ms"], env), "whole seconds")
    svc.check_usage_error(admin(["server-key", "rotate", "--grace", "soon"], env), "--grace")
    # Server flags are not admin flags.
    svc.check_usage_error(admin(["migrate", "--port", "1"], env), "unknown flag --port")
    # No DSN: the same message as netbird-mgmt's.
    svc.check_usage_error(admin(["account", "list"]), "NB_STORE_ENGINE_POSTGRES_DSN")
    # --account is required where the API is used (checked before connecting).
    svc.check_usage_error(admin(["peers", "list"], env), "--account is required")
    svc.check_usage_error(admin(["setup-key", "list"], env), "--account is required")
    # A database that cannot be reached is a failure, not a usage error.
    r = admin(["account", "list"], env)
    assert r.rc == 1 and "cannot connect to PostgreSQL" in r.err, r


@test
def help_for_every_command():
    cases = {
        ("migrate",): ["--postgres-dsn", "NB_STORE_ENGINE_POSTGRES_DSN", "--config"],
        ("account", "create"): ["--owner-name", "--domain", "--dns-domain", "--setup-key-ttl", "--if-none",
                                "NB_ADMIN_OWNER_NAME"],
        ("account", "list"): ["--json"],
        ("setup-key", "create"): ["--account", "--name", "--type", "--expires-in", "--usage-limit",
                                  "--auto-group", "--ephemeral"],
        ("setup-key", "list"): ["--account", "--json"],
        ("peers", "list"): ["--account", "--json", "--dns-domain"],
        ("sessions", "list"): ["--account", "--json"],
        ("replicas", "list"): ["--json"],
        ("server-key", "rotate"): ["--grace", "--force", "--data-store-encryption-key",
                                   "NB_MGMT_DATA_STORE_ENCRYPTION_KEY"],
        ("server-key", "show"): ["--json"],
        ("netmap", "show"): ["--account", "--peer", "--json", "--dns-domain"],
    }
    for cmd, needles in cases.items():
        r = admin(list(cmd) + ["--help"])
        assert r.rc == 0, (cmd, r)
        for n in needles:
            assert n in r.out, (cmd, n, r)
    # Flags of one command are not offered by another.
    assert "--grace" not in admin(["account", "create", "--help"]).out


# ---- migrate, account create/list ---------------------------------------------------------


@test
def migrate_applies_once():
    env = fresh_db_env()
    r = admin(["sessions", "list"], env)
    assert r.rc == 1 and "migrate" in r.err, r
    n = len(MIGRATIONS)
    assert n >= 4, MIGRATIONS
    r = ok(["migrate"], env)
    assert r.out == "applied %d migrations (0 already applied)\n" % n, r
    r = ok(["migrate"], env)
    assert r.out == "applied 0 migrations (%d already applied)\n" % n, r
    # netbird-mgmt agrees (the same compiled list and report).
    r = svc.run(["migrate"], env=env)
    assert r.rc == 0 and r.out == "applied 0 migrations (%d already applied)\n" % n, r


@test
def account_create_prints_bootstrap_lines_and_the_token_works():
    dep = Deployment()          # one account from `netbird-mgmt bootstrap`
    env = dep.env()
    r = ok(["account", "create", "--owner-name", "Ops Team", "--domain", "example.test",
            "--dns-domain", "corp.internal", "--setup-key-ttl", "48h"], env)
    lines = r.out.splitlines()
    assert [l.split("=", 1)[0] for l in lines] == ENV_KEYS, r
    # Safe to source: the shell sees the same values.
    sh = subprocess.run(["bash", "-c", 'set -eu; eval "$1"; printf "%s|" "$ACCOUNT_ID" "$USER_ID" "$SETUP_KEY" '
                         '"$ADMIN_TOKEN" "$NETWORK"', "x", r.out], capture_output=True, text=True, check=True)
    v = parse_env_output(r.out)
    assert sh.stdout == "|".join(v[k] for k in ENV_KEYS) + "|", (sh.stdout, v)
    assert v["ACCOUNT_ID"] != dep.account_id and v["ADMIN_TOKEN"].startswith("nbp_"), v
    rows = dep.sql("SELECT a.domain, a.settings_dns_domain, u.name, u.role,"
                   " (SELECT expires_at - created_at FROM setup_keys k WHERE k.account_id = a.id), u.pii_key"
                   " FROM accounts a JOIN users u ON u.account_id = a.id WHERE a.id = %s", (v["ACCOUNT_ID"],))
    assert len(rows) == 1, rows
    domain, dns, owner, role, ttl, pii_key = rows[0]
    # The owner's name is sealed with the DataStoreEncryptionKey (docs/msp.md).
    assert (domain, dns, role) == ("example.test", "corp.internal", "owner"), rows
    assert owner != "Ops Team" and pii_key != "", rows
    assert abs(ttl.total_seconds() - 48 * 3600) < 5, ttl
    assert dep.sql("SELECT id FROM users WHERE account_id = %s", (v["ACCOUNT_ID"],)) == [(v["USER_ID"],)]

    # The token works against the REST API of a running server, and only
    # for its own account.
    srv = dep.start()
    st, _, body = svc.http_json("GET", srv.url("/api/groups"),
                                headers={"Authorization": "Token " + v["ADMIN_TOKEN"]})
    assert st == 200 and [g["name"] for g in body] == ["All"], (st, body)
    st, _, users = svc.http_json("GET", srv.url("/api/users"),
                                 headers={"Authorization": "Token " + v["ADMIN_TOKEN"]})
    assert st == 200 and [u["name"] for u in users] == ["Ops Team"], (st, users)
    st, _, other = svc.http_json("GET", srv.url("/api/groups"),
                                 headers={"Authorization": "Token " + dep.admin_token})
    assert st == 200 and {g["id"] for g in other}.isdisjoint({g["id"] for g in body}), (body, other)
    # The setup key registers a peer into the new account.
    a = dep.agent(srv)
    a.register(v["SETUP_KEY"], meta=build_meta("admin-made"))
    assert dep.peers()[a.pub_b64]["account_id"] == v["ACCOUNT_ID"]


@test
def if_none_is_idempotent_like_bootstrap():
    env = fresh_db_env()
    r = ok(["account", "create", "--if-none"], env)
    first = parse_env_output(r.out)
    assert sorted(first) == sorted(ENV_KEYS), r
    r = ok(["account", "create", "--if-none"], env)
    assert r.out == "", r
    # netbird-mgmt bootstrap sees the same state the same way.
    r = svc.run(["bootstrap"], env=env)
    assert r.rc == 0 and r.out == "", r
    accounts = admin_json(["account", "list"], env)
    assert [a["id"] for a in accounts] == [first["ACCOUNT_ID"]], accounts
    # Without --if-none another account is made.
    second = parse_env_output(ok(["account", "create"], env).out)
    assert second["ACCOUNT_ID"] != first["ACCOUNT_ID"]


@test
def if_none_races_create_one_account():
    env = fresh_db_env()
    ok(["migrate"], env)
    procs = []
    for _ in range(4):
        p = subprocess.Popen([ADMIN, "account", "create", "--if-none"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=svc.clean_env(env))
        svc.defer(lambda p=p: (p.kill(), p.wait(10)))      # a no-op once it has exited
        procs.append(p)
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(1 for o, _ in outs if o) == 1, outs
    assert len(admin_json(["account", "list"], env)) == 1


@test
def account_list_table_and_json():
    env = fresh_db_env()
    a = parse_env_output(ok(["account", "create", "--domain", "a.test"], env).out)
    b = parse_env_output(ok(["account", "create", "--domain", "b.test"], env).out)
    rows = admin_json(["account", "list"], env)
    assert [(r["id"], r["domain"], r["owner_user_id"], r["peers"], r["connected"]) for r in rows] == [
        (a["ACCOUNT_ID"], "a.test", a["USER_ID"], 0, 0), (b["ACCOUNT_ID"], "b.test", b["USER_ID"], 0, 0)], rows
    out = ok(["account", "list"], env).out.splitlines()
    assert out[0].split() == ["ID", "DOMAIN", "OWNER", "PEERS", "CONNECTED", "SERIAL", "CREATED"], out
    assert len(out) == 3 and out[1].split()[:3] == [a["ACCOUNT_ID"], "a.test", a["USER_ID"]], out
    # A command's own flags come from NB_ADMIN_*; a replica's NB_MGMT_DNS_DOMAIN
    # is the server's setting, never the new account's override.
    c = parse_env_output(ok(["account", "create"], dict(env, NB_ADMIN_DOMAIN="env.test",
                                                          NB_MGMT_DNS_DOMAIN="server.example")).out)
    rows = svc.query(env["NB_STORE_ENGINE_POSTGRES_DSN"],
                     "SELECT domain, settings_dns_domain FROM accounts WHERE id = '%s'" % c["ACCOUNT_ID"])
    assert rows == [("env.test", "")], rows


# ---- sessions and replicas with running servers ---------------------------------------------


@test
def sessions_and_replicas_with_a_connected_agent():
    dep = Deployment()
    env = dep.env()
    srv = dep.start()
    rid = replica_id(srv)
    assert admin_json(["sessions", "list"], env) == []

    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("connected-one"))
    b = dep.agent(srv)
    b.register(dep.setup_key, meta=build_meta("registered-only"))
    s = a.sync()
    s.next(timeout=15)
    peer = dep.peers()[a.pub_b64]
    token = dep.sql("SELECT peer_status_session_started_at FROM peers WHERE id = %s", (peer["id"],))[0][0]

    rows = admin_json(["sessions", "list"], env)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["account_id"], row["peer_id"], row["name"], row["ip"]) == (
        dep.account_id, peer["id"], "connected-one", peer["ip"]), row
    assert row["session_token"] == str(token) and token > 0, (row, token)
    assert row["replica_id"] == rid and row["stale"] is None and row["last_seen"].endswith("Z"), row
    assert admin_json(["sessions", "list", "--account", dep.account_id], env) == rows
    assert admin_json(["sessions", "list", "--account", "no-such-account"], env) == []
    table = ok(["sessions", "list"], env).out.splitlines()
    assert table[0].split()[:5] == ["ACCOUNT", "PEER", "NAME", "IP", "SESSION"], table
    assert len(table) == 2 and peer["id"] in table[1] and rid in table[1], table

    reps = admin_json(["replicas", "list"], env)
    assert [(r["id"], r["state"], r["sessions"]) for r in reps] == [(rid, "serving", 1)], reps
    assert reps[0]["http_address"] == "127.0.0.1:%d" % srv.http_port, reps
    assert isinstance(reps[0]["heartbeat_age_ms"], int) and reps[0]["heartbeat_age_ms"] >= 0, reps
    table = ok(["replicas", "list"], env).out.splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "STATE", "HEARTBEAT_AGE_MS"] and rid in table[1], table

    acc = admin_json(["account", "list"], env)
    assert [(r["peers"], r["connected"]) for r in acc] == [(2, 1)], acc

    # The stream ends: the session goes away.
    s.cancel()
    wait_until(lambda: admin_json(["sessions", "list"], env) == [], timeout=15, what="session cleared")


@test
def netmap_show_is_what_a_stream_gets():
    """netmap show computes a peer's SyncResponse from the database with
    the replicas' map code: it equals the stream's first map (but for
    netbirdConfig, sent only in a stream's first message) and its push
    after a change; --peer picks one; errors are reported."""
    import base64
    dep = Deployment()
    env = dep.env()
    srv = dep.start()
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("map-a"))
    b = dep.agent(srv)
    b.register(dep.setup_key, meta=build_meta("map-b"))
    s = a.sync()
    first = s.next(timeout=15)
    ids = {k: v["id"] for k, v in dep.peers().items()}

    def fresh(peer_id):
        doc = admin_json(["netmap", "show", "--account", dep.account_id], env)
        assert doc["account"] == dep.account_id and doc["serial"] == dep.network_serial(), doc
        assert sorted(p["peer_id"] for p in doc["peers"]) == sorted(ids.values()), doc
        [p] = [p for p in doc["peers"] if p["peer_id"] == peer_id]
        assert p["peer_key"] == a.pub_b64, p
        m = nbagent.pb.SyncResponse()
        m.ParseFromString(base64.b64decode(p["sync_response"]))
        return m

    def same(got, want):
        g = nbagent.pb.SyncResponse()
        g.CopyFrom(got)
        g.ClearField("netbirdConfig")
        return g.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)

    want = fresh(ids[a.pub_b64])
    assert first.HasField("netbirdConfig") and not want.HasField("netbirdConfig"), want
    assert same(first, want), (fixture.json_dump(first), fixture.json_dump(want))
    assert remote_keys(want) == {b.pub_b64}, fixture.json_dump(want)
    # One peer, plain output: "<peer id> <serial> <base64>".
    line = ok(["netmap", "show", "--account", dep.account_id, "--peer", ids[a.pub_b64]], env).out.split()
    assert line[:2] == [ids[a.pub_b64], str(dep.network_serial())] and len(line) == 3, line
    one = nbagent.pb.SyncResponse()
    one.ParseFromString(base64.b64decode(line[2]))
    assert same(one, want), fixture.json_dump(one)

    # A change: the push equals a fresh computation again.
    status, _ = svc.rest(srv, "PUT", "/api/peers/" + ids[b.pub_b64], dep.admin_token, {
        "name": "renamed-b", "ssh_enabled": False, "login_expiration_enabled": False,
        "inactivity_expiration_enabled": False})
    assert status == 200, status
    serial = dep.network_serial()
    pushed = s.wait_for(lambda m: m.NetworkMap.Serial == serial, timeout=15)
    want = fresh(ids[a.pub_b64])
    assert want.NetworkMap.Serial == serial and same(pushed, want), (
        fixture.json_dump(pushed), fixture.json_dump(want))

    svc.check_usage_error(admin(["netmap", "show"], env), "--account is required")
    r = admin(["netmap", "show", "--account", dep.account_id, "--peer", "no-such-peer"], env)
    assert r.rc == 1 and "peer no-such-peer is not in account" in r.err, r
    r = admin(["netmap", "show", "--account", "no-such-account"], env)
    assert r.rc == 1 and "cannot read the map of account no-such-account" in r.err, r


# ---- setup keys and peers through the REST layer ----------------------------------------------


@test
def setup_key_create_through_the_api_registers_a_peer():
    dep = Deployment()
    env = dep.env()
    grp = dep.add_group("admins-made")
    r = ok(["setup-key", "create", "--account", dep.account_id, "--name", "cli key", "--type", "reusable",
            "--expires-in", "48h", "--usage-limit", "2", "--auto-group", grp, "--ephemeral=false"], env)
    v = parse_env_output(r.out)
    assert [l.split("=", 1)[0] for l in r.out.splitlines()] == ["SETUP_KEY_ID", "SETUP_KEY"], r
    key = v["SETUP_KEY"]
    # Stored hashed, with what was asked for; the event names the owner.
    rows = dep.sql("SELECT id, name, type, usage_limit, auto_groups, key <> %s FROM setup_keys"
                   " WHERE account_id = %s AND key = %s",
                   (key, dep.account_id, fixture.setup_key_hash(key)))
    assert rows == [(v["SETUP_KEY_ID"], "cli key", "reusable", 2, [grp], True)], rows
    ev = dep.sql("SELECT initiator_id FROM events WHERE account_id = %s AND target_id = %s AND activity = 12",
                 (dep.account_id, v["SETUP_KEY_ID"]))
    assert ev == [(dep.user_id,)], ev
    listed = admin_json(["setup-key", "list", "--account", dep.account_id], env)
    assert v["SETUP_KEY_ID"] in [k["id"] for k in listed], listed

    srv = dep.start()
    a = dep.agent(srv)
    a.register(key, meta=build_meta("via-cli-key"))
    peer = dep.peers()[a.pub_b64]
    assert peer["account_id"] == dep.account_id and "admins-made" in dep.peer_groups(peer["id"]), peer

    # Bad values are the API's to refuse; that is a usage error here.
    r = admin(["setup-key", "create", "--account", dep.account_id, "--type", "sometimes"], env)
    assert r.rc == 2 and "unknown setup key type" in r.err, r
    r = admin(["setup-key", "create", "--account", "no-such-account"], env)
    assert r.rc == 1 and "account no-such-account not found" in r.err, r


@test
def peers_list_through_the_api():
    dep = Deployment()
    env = dep.env()
    srv = dep.start()
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("listed-peer"))
    peers = admin_json(["peers", "list", "--account", dep.account_id], env)
    assert [p["name"] for p in peers] == ["listed-peer"], peers
    assert peers[0]["id"] == dep.peers()[a.pub_b64]["id"]
    table = ok(["peers", "list", "--account", dep.account_id], env).out.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "IP"] and "listed-peer" in table[1], table


# ---- server key rotation with two replicas ----------------------------------------------------


class PinnedAgent(nbagent.Agent):
    """An agent that keeps using the server key it was given instead of
    fetching one before every call (what an agent that fetched the key a
    moment ago, from another replica, effectively does)."""
    pinned = None

    def get_server_key(self):
        if self.pinned is None:
            return super().get_server_key()
        self.server_key = self.pinned
        return self.pinned


def pinned_agent(dep, srv, key_b64, private_key=None):
    a = PinnedAgent(srv.grpc_target, private_key=private_key)
    svc.defer(a.close)
    a.pinned = nbagent.key_from_b64(key_b64)
    return a


def server_key_of(srv):
    a = nbagent.Agent(srv if isinstance(srv, str) else srv.grpc_target)
    try:
        return a.get_server_key_response().key
    finally:
        a.close()


@test
def server_key_rotation_keeps_the_fleet_working():
    dep = Deployment()
    env = dep.env()
    # Replica 1 polls the key every second; replica 2 practically never,
    # so it can only learn the new key when a request needs it.
    r1 = dep.start("--serial-check-interval", "1s")
    r2 = dep.start("--serial-check-interval", "1h")
    old = server_key_of(r1)
    assert server_key_of(r2) == old
    shown = admin_json(["server-key", "show"], env)
    assert (shown["public_key"], shown["generation"], shown["previous_public_key"]) == (old, 1, None), shown

    # A peer with an open stream (sealed with the old key) and a peer
    # that will keep using the old key.
    a = dep.agent(r1)
    a.register(dep.setup_key, meta=build_meta("streaming"))
    stream = a.sync()
    stream.next(timeout=15)
    b_key = nbagent.new_private_key()
    b = dep.agent(r2, private_key=b_key)
    b.register(dep.setup_key, meta=build_meta("old-key"))

    # Rotation needs the DataStoreEncryptionKey, and the right one.
    r = admin(["server-key", "rotate"], {"NB_STORE_ENGINE_POSTGRES_DSN": dep.dsn})
    assert r.rc == 2 and "DataStoreEncryptionKey" in r.err, r
    wrong = dict(env, NB_MGMT_DATA_STORE_ENCRYPTION_KEY=svc.DATA_KEY)
    r = admin(["server-key", "rotate"], wrong)
    assert r.rc == 2 and "does not match" in r.err, r
    assert admin_json(["server-key", "show"], env)["generation"] == 1

    info = admin_json(["server-key", "rotate", "--grace", "1h"], env)
    new = info["public_key"]
    assert new != old and info["previous_public_key"] == old and info["previous_valid"] is True, info
    assert info["generation"] == 2, info

    # An agent holding the new key logs in on either replica at once,
    # including the one that has not polled (reload on a miss).
    for srv in (r2, r1):
        c = pinned_agent(dep, srv, new)
        c.register(dep.setup_key, meta=build_meta("new-key-%d" % srv.grpc_port))
    r2.wait_log(lambda o: o.get("msg") == "server key changed" and o.get("public_key") == new, timeout=10)
    # Both hand out the new key now (replica 1 by its poll at the latest).
    wait_until(lambda: server_key_of(r1) == new and server_key_of(r2) == new, timeout=30,
               what="GetServerKey returns the new key on both replicas")

    # The agent that still has the old key logs in on both during the
    # grace period (its answers are sealed with the old key: nbagent checks).
    for srv in (r1, r2):
        pinned_agent(dep, srv, old, private_key=b_key).login(meta=build_meta("old-key"))

    # The stream opened with the old key is still open and gets pushes,
    # sealed with the key it was opened with.
    d = dep.agent(r1)
    d.register(dep.setup_key, meta=build_meta("after-rotation"))
    m = stream.wait_for(lambda m: d.pub_b64 in remote_keys(m), timeout=30)
    assert b.pub_b64 in remote_keys(m), m
    assert stream.ended is None

    # Rotating again inside the grace period needs --force; then the first
    # key is gone at once, everywhere.
    r = admin(["server-key", "rotate"], env)
    assert r.rc == 1 and "grace period" in r.err and "--force" in r.err, r
    third = admin_json(["server-key", "rotate", "--force", "--grace", "0s"], env)
    assert third["previous_valid"] is False and third["generation"] == 3, third
    wait_until(lambda: server_key_of(r1) == third["public_key"], timeout=30, what="replica 1 polled")
    for srv in (r1, r2):
        # The newest key works everywhere. Replica 2, which does not poll,
        # reloads on a miss, but at most once a second and it did so for
        # the first rotation moments ago: like an agent, retry a little.
        def third_works(srv=srv):
            try:
                pinned_agent(dep, srv, third["public_key"], private_key=b_key).login(meta=build_meta("old-key"))
                return True
            except RpcFailed as e:
                assert e.code.name == "INVALID_ARGUMENT", e
                return False
        wait_until(third_works, timeout=10, interval=0.3, what="login with the newest key")
        # The first key is gone, and the second with its 0 s grace period.
        for gone in (old, new):
            try:
                pinned_agent(dep, srv, gone, private_key=b_key).login(meta=build_meta("old-key"))
                raise AssertionError("dropped key %s still opens on %d" % (gone, srv.grpc_port))
            except RpcFailed as e:
                assert e.code.name == "INVALID_ARGUMENT", e
    # The stream opened with the first key ends now that the key is gone
    # (docs/ops.md: within a poll interval); its agent reconnects with the
    # current key and follows changes again.
    ended, _ = stream.wait_end(timeout=30)
    assert isinstance(ended, RpcFailed) and ended.code.name == "UNAVAILABLE", ended
    assert ended.details == "server key rotated, please reconnect", ended
    stream = a.sync()
    e = dep.agent(r1)
    e.register(dep.setup_key, meta=build_meta("after-second-rotation"))
    stream.wait_for(lambda m: e.pub_b64 in remote_keys(m), timeout=30)
    shown = admin_json(["server-key", "show"], env)
    assert shown["public_key"] == third["public_key"] and shown["previous_public_key"] == new, shown
    # A restarted replica loads the current key.
    fixture.stop_server(r2)
    r3 = dep.start()
    assert server_key_of(r3) == third["public_key"]


@test
def server_key_show_and_rotate_before_any_replica():
    env = fresh_db_env()
    ok(["migrate"], env)
    r = admin(["server-key", "show"], env)
    assert r.rc == 1 and "no server key yet" in r.err, r
    env["NB_MGMT_DATA_STORE_ENCRYPTION_KEY"] = svc.DATA_KEY
    r = admin(["server-key", "rotate"], env)
    assert r.rc == 1 and "no server key yet" in r.err, r
    # KEY=VALUE output once a replica made the key.
    srv = svc.Server(svc.base_args(), env=env)
    key = server_key_of("127.0.0.1:%d" % srv.grpc_port)
    srv.stop()
    v = parse_env_output(ok(["server-key", "show"], env).out)
    assert v["SERVER_KEY_PUBLIC_KEY"] == key and v["SERVER_KEY_GENERATION"] == "1", v
    assert v["SERVER_KEY_PREVIOUS_VALID"] == "false", v


if __name__ == "__main__":
    sys.exit(svc.run_all())
