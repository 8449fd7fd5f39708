"""Tenant lifecycle (issue 13; docs/msp.md "Tenant lifecycle"): the device
limit at registration (refused with ResourceExhausted and event 1300,
exact under concurrent registrations on two replicas, a raised limit
admits at once), suspend (Login, Sync and registration refused with
FailedPrecondition, streams ended on every replica by the bus hint or by
the periodic serial check, data kept) and resume, delete (every row of
the tenant in one transaction, no row of another account touched, its
streams ended everywhere), and the netbird-cp-admin commands msp
enable|disable and tenant create|list|suspend|resume|delete|limit."""

import os
import secrets
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import grpc  # noqa: E402

import svc  # noqa: E402
from fixture import Deployment, parse_env_output, wait_until  # noqa: E402
from nbagent import RpcFailed, StreamEnded, build_meta, remote_keys  # noqa: E402
from svc import test  # noqa: E402

MSG_SUSPENDED = "account is suspended"
MSG_LIMIT = "couldn't add peer: the account has reached its device limit"
EV_LIMIT, EV_SUSPENDED, EV_RESUMED, EV_LIMIT_SET, EV_MSP_ON, EV_MSP_OFF = 1300, 1301, 1302, 1303, 1304, 1305


def deployment():
    dep = Deployment()
    dep.bus_prefix = "t-" + secrets.token_hex(6)
    return dep


def replica(dep, bus=True, check="0s"):
    args = ["--serial-check-interval", check]
    if bus:
        args += ["--redis-url", svc.REDIS_URL, "--bus-channel-prefix", dep.bus_prefix]
    srv = dep.start(*args)
    if bus:
        srv.wait_log(lambda o: o.get("msg") == "bus subscribed")
    return srv


def cli(dep, *args, bus=False):
    extra = ["--redis-url", svc.REDIS_URL, "--bus-channel-prefix", dep.bus_prefix] if bus else []
    return svc.admin(list(args) + extra, env=dep.env())


def cli_ok(dep, *args, bus=False):
    r = cli(dep, *args, bus=bus)
    assert r.rc == 0, r
    return r


def new_tenant(dep, name, domain):
    """A tenant of dep's account (made an MSP first): its env lines."""
    cli_ok(dep, "msp", "enable", dep.account_id)
    r = cli_ok(dep, "tenant", "create", "--msp", dep.account_id, "--name", name, "--domain", domain)
    v = parse_env_output(r.out)
    assert v.get("TENANT_ID") and v.get("CREATED") == "true" and v.get("SETUP_KEY"), r
    return v


def register(dep, srv, key, name):
    a = dep.agent(srv)
    a.register(key, meta=build_meta(name))
    return a


def events(dep, account, code):
    return dep.sql("SELECT initiator_id, target_id, meta FROM events WHERE account_id = %s AND activity = %s"
                   " ORDER BY id", (account, code))


def expect_rpc(fn, code, details):
    try:
        fn()
    except RpcFailed as e:
        assert e.code == code and e.details == details, e
        return
    raise AssertionError("expected %s %r" % (code, details))




def peer_count(dep, account):
    return dep.sql("SELECT count(*) FROM peers WHERE account_id = %s", (account,))[0][0]


# ---- device limit ----------------------------------------------------------------------------


@test
def device_limit_exact_under_concurrency_on_two_replicas():
    """Limit 5, 16 registrations at once through two replicas: exactly 5
    peers, 11 refusals with ResourceExhausted and NetBird-style text,
    events 1300 but not one per refusal; nothing of a refused one is written (the
    setup key's use is not counted)."""
    dep = deployment()
    r1, r2 = replica(dep, bus=False), replica(dep, bus=False)
    cli_ok(dep, "tenant", "limit", dep.account_id, "--max-devices", "5")
    assert dep.sql("SELECT device_limit FROM accounts WHERE id = %s", (dep.account_id,)) == [(5,)]
    assert len(events(dep, dep.account_id, EV_LIMIT_SET)) == 1
    results = [None] * 16
    go = threading.Barrier(len(results))

    def one(i):
        a = dep.agent(r1 if i % 2 else r2)
        a.get_server_key()
        go.wait()
        try:
            a.login(setup_key=dep.setup_key, meta=build_meta("conc-%d" % i))
            results[i] = "ok"
        except RpcFailed as e:
            results[i] = (e.code, e.details)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [r for r in results if r == "ok"]
    refused = [r for r in results if r != "ok"]
    assert len(ok) == 5, results
    assert all(r == (grpc.StatusCode.RESOURCE_EXHAUSTED, MSG_LIMIT) for r in refused), results
    assert peer_count(dep, dep.account_id) == 5
    assert dep.setup_key_used(dep.setup_key) == 5
    # Refusal events: at most one per account in 10 minutes (concurrent
    # refusals may each find none yet), so retrying agents cannot flood
    # the activity log; a later refusal adds none.
    ev = events(dep, dep.account_id, EV_LIMIT)
    assert 1 <= len(ev) <= 11, ev
    key_id = dep.sql("SELECT id FROM setup_keys WHERE account_id = %s", (dep.account_id,))[0][0]
    assert all(e[0] == key_id and e[2]["device_limit"] == 5 and e[2]["name"].startswith("conc-") for e in ev), ev
    late = dep.agent(r1)
    late.get_server_key()
    try:
        late.login(setup_key=dep.setup_key, meta=build_meta("late"))
        assert False, "registered past the limit"
    except RpcFailed as e:
        assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    assert len(events(dep, dep.account_id, EV_LIMIT)) == len(ev)


@test
def raised_limit_admits_at_once_lowered_limit_keeps_existing_peers():
    """A raise takes effect on the next registration (read from the row,
    no cache, any replica); a lowered limit refuses new peers while the
    existing ones keep logging in and syncing."""
    dep = deployment()
    r1, r2 = replica(dep, bus=False), replica(dep, bus=False)
    cli_ok(dep, "tenant", "limit", dep.account_id, "--max-devices", "1")
    first = register(dep, r1, dep.setup_key, "first")
    second = dep.agent(r2)
    expect_rpc(lambda: second.register(dep.setup_key, meta=build_meta("second")),
               grpc.StatusCode.RESOURCE_EXHAUSTED, MSG_LIMIT)
    cli_ok(dep, "tenant", "limit", dep.account_id, "--max-devices", "2")
    second.register(dep.setup_key, meta=build_meta("second"))
    assert peer_count(dep, dep.account_id) == 2
    cli_ok(dep, "tenant", "limit", dep.account_id, "--max-devices", "0")
    third = dep.agent(r1)
    expect_rpc(lambda: third.register(dep.setup_key, meta=build_meta("third")),
               grpc.StatusCode.RESOURCE_EXHAUSTED, MSG_LIMIT)
    # Over the lowered limit, the existing peers keep working.
    first.login(meta=build_meta("first"))
    s = second.sync()
    m = s.next(timeout=15)
    assert first.pub_b64 in remote_keys(m)
    s.cancel()
    cli_ok(dep, "tenant", "limit", dep.account_id, "--max-devices", "none")
    third.register(dep.setup_key, meta=build_meta("third"))
    assert peer_count(dep, dep.account_id) == 3
    assert dep.sql("SELECT device_limit FROM accounts WHERE id = %s", (dep.account_id,)) == [(None,)]


# ---- suspend / resume ---------------------------------------------------------------------------


def check_suspended_refusals(dep, srv, agent):
    expect_rpc(lambda: agent.login(meta=build_meta("again")), grpc.StatusCode.FAILED_PRECONDITION, MSG_SUSPENDED)
    end, _ = agent.sync().wait_end(timeout=15)
    assert isinstance(end, RpcFailed) and end.code == grpc.StatusCode.FAILED_PRECONDITION \
        and end.details == MSG_SUSPENDED, end
    newcomer = dep.agent(srv)
    expect_rpc(lambda: newcomer.register(dep.setup_key, meta=build_meta("newcomer")),
               grpc.StatusCode.FAILED_PRECONDITION, MSG_SUSPENDED)
    # Nor does it write through the other RPCs: SyncMeta, CreateExpose.
    expect_rpc(lambda: agent.sync_meta(build_meta("meta")), grpc.StatusCode.FAILED_PRECONDITION, MSG_SUSPENDED)
    expect_rpc(lambda: agent.create_expose(8080), grpc.StatusCode.FAILED_PRECONDITION, MSG_SUSPENDED)


@test
def suspend_ends_streams_on_both_replicas_and_resume_restores():
    """Through the bus alone (no serial check): suspend ends the account's
    streams on both replicas with FailedPrecondition (the agent retries
    with backoff, not PermissionDenied); Login, Sync and registration are
    refused; the other account's stream stays; rows are kept; resume lets
    the same agents log in and sync again."""
    svc.needs_redis()
    dep = deployment()
    r1, r2 = replica(dep), replica(dep)
    other = new_tenant(dep, "Other", "other.example")
    a = register(dep, r1, dep.setup_key, "alpha")
    b = register(dep, r2, dep.setup_key, "bravo")
    o = register(dep, r2, other["SETUP_KEY"], "other")
    sa, sb, so = a.sync(), b.sync(), o.sync()
    for s in (sa, sb, so):
        s.next(timeout=15)
    peers_before = peer_count(dep, dep.account_id)
    r = cli_ok(dep, "tenant", "suspend", dep.account_id, bus=True)
    assert r.out.strip() == "account %s: suspended" % dep.account_id, r
    for s in (sa, sb):
        end, _ = s.wait_end(timeout=15)
        assert isinstance(end, RpcFailed) and end.code == grpc.StatusCode.FAILED_PRECONDITION \
            and end.details == MSG_SUSPENDED, end
    check_suspended_refusals(dep, r2, a)
    assert peer_count(dep, dep.account_id) == peers_before
    # REST: reads allowed, writes refused.
    status, body = svc.rest(r1, "GET", "/api/peers", dep.admin_token)
    assert status == 200 and len(body) == peers_before, (status, body)
    status, body = svc.rest(r2, "POST", "/api/groups", dep.admin_token, {"name": "nope"})
    assert status == 403 and body["message"] == "account is suspended", (status, body)
    status, body = svc.rest(r1, "GET", "/api/events", dep.admin_token)
    assert status == 200 and any(e["activity_code"] == "account.suspend" for e in body), body
    assert len(events(dep, dep.account_id, EV_SUSPENDED)) == 1
    # The other account is untouched: its stream still gets maps.
    o.sync_meta(meta=build_meta("other", netbird_version="0.61.0"))
    assert so.wait_for(lambda m: True, timeout=10) is not None
    # Suspending again: no second event, still suspended.
    r = cli_ok(dep, "tenant", "suspend", dep.account_id, bus=True)
    assert "(already)" in r.out and len(events(dep, dep.account_id, EV_SUSPENDED)) == 1, r
    cli_ok(dep, "tenant", "resume", dep.account_id, bus=True)
    assert dep.sql("SELECT suspended_at FROM accounts WHERE id = %s", (dep.account_id,)) == [(None,)]
    assert len(events(dep, dep.account_id, EV_RESUMED)) == 1
    a.login(meta=build_meta("alpha"))
    s = b.sync()
    m = s.next(timeout=15)
    assert a.pub_b64 in remote_keys(m), m
    s.cancel()
    so.cancel()


@test
def suspend_without_the_bus_is_caught_by_the_serial_check():
    """No Redis at all: the CLI warns, and the replica's periodic serial
    check (here 300ms) notices the suspension and ends the stream."""
    dep = deployment()
    srv = replica(dep, bus=False, check="300ms")
    a = register(dep, srv, dep.setup_key, "lonely")
    s = a.sync()
    s.next(timeout=15)
    r = cli_ok(dep, "tenant", "suspend", dep.account_id)
    assert "warning: no --redis-url" in r.err, r
    end, _ = s.wait_end(timeout=15)
    assert isinstance(end, RpcFailed) and end.code == grpc.StatusCode.FAILED_PRECONDITION, end


# ---- delete ---------------------------------------------------------------------------------------


def snapshot_except(dep, account):
    """Every row of every table that has an account_id column (and the
    accounts table), as text, leaving out the rows of account."""
    tables = [t for (t,) in dep.sql(
        "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND c.column_name = 'account_id'"
        " AND t.table_type = 'BASE TABLE' ORDER BY 1")]
    snap = {"accounts": sorted(r[0] for r in dep.sql(
        "SELECT a::text FROM accounts a WHERE id <> %s", (account,)))}
    for t in tables:
        snap[t] = sorted(r[0] for r in dep.sql(
            'SELECT x::text FROM "%s" x WHERE account_id IS DISTINCT FROM %%s' % t, (account,)))
    return tables, snap


@test
def delete_removes_every_row_of_the_tenant_and_nothing_else():
    """A tenant with peers (streams on two replicas), groups, policies,
    setup keys, users, tokens, events and its msp_tenants link is deleted
    by `tenant delete`: no table keeps a row of it, every other account's
    rows are byte-for-byte the same, its streams end on both replicas and
    its agents are refused afterwards as unregistered."""
    svc.needs_redis()
    dep = deployment()
    r1, r2 = replica(dep), replica(dep)
    victim = new_tenant(dep, "Victim", "victim.example")
    other = new_tenant(dep, "Other", "other.example")
    vid = victim["TENANT_ID"]
    v1 = register(dep, r1, victim["SETUP_KEY"], "v-one")
    v2 = register(dep, r2, victim["SETUP_KEY"], "v-two")
    register(dep, r1, other["SETUP_KEY"], "o-one")
    register(dep, r2, dep.setup_key, "msp-one")
    # More rows of the victim through its own REST API.
    status, body = svc.rest(r1, "POST", "/api/groups", victim["ADMIN_TOKEN"], {"name": "victim-devs"})
    assert status == 200, (status, body)
    s1, s2 = v1.sync(), v2.sync()
    s1.next(timeout=15)
    s2.next(timeout=15)
    # The replicas seal plain-text names and e-mails (rows the CLI wrote
    # without the key) in the background: let them finish first, so the
    # snapshots differ only by what the delete did.
    deadline = time.time() + 30
    while dep.sql("SELECT (SELECT count(*) FROM users WHERE pii_key = '' AND (name <> '' OR email <> ''))"
                  " + (SELECT count(*) FROM events WHERE pii_key = '' AND meta ? 'email')")[0][0]:
        assert time.time() < deadline, "plain-text rows were never sealed"
        time.sleep(0.3)
    tables, before = snapshot_except(dep, vid)
    assert {"events", "peers", "groups", "group_peers", "users", "setup_keys", "policies", "msp_tenants"} \
        <= set(tables), tables
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE account_id = %s", (vid,)) == [(1,)]
    r = cli_ok(dep, "tenant", "delete", vid, bus=True)
    assert r.out.strip() == "account %s: deleted (2 peers)" % vid, r
    for s in (s1, s2):
        end, _ = s.wait_end(timeout=15)
        assert isinstance(end, (StreamEnded, RpcFailed)), end
    _, after = snapshot_except(dep, vid)
    assert after == before, [t for t in before if before[t] != after[t]]
    assert dep.sql("SELECT count(*) FROM accounts WHERE id = %s", (vid,)) == [(0,)]
    for t in tables:
        n = dep.sql('SELECT count(*) FROM "%s" WHERE account_id = %%s' % t, (vid,))[0][0]
        assert n == 0, (t, n)
    expect_rpc(lambda: v1.sync().next(timeout=15), grpc.StatusCode.PERMISSION_DENIED, "peer is not registered")
    r = cli(dep, "tenant", "delete", vid)
    assert r.rc == 1 and "account %s not found" % vid in r.err, r


@test
def delete_refuses_when_a_table_would_keep_rows():
    """A table with an account_id column but no cascading foreign key (a
    future migration's mistake) makes the delete fail as a whole, naming
    the table: nothing is deleted."""
    dep = deployment()
    t = new_tenant(dep, "Kept", "kept.example")
    dep.sql("CREATE TABLE zz_orphans (account_id text NOT NULL)")
    try:
        dep.sql("INSERT INTO zz_orphans VALUES (%s)", (t["TENANT_ID"],))
        r = cli(dep, "tenant", "delete", t["TENANT_ID"])
        assert r.rc == 1 and "zz_orphans" in r.err, r
        assert dep.sql("SELECT count(*) FROM accounts WHERE id = %s", (t["TENANT_ID"],)) == [(1,)]
        assert dep.sql("SELECT count(*) FROM users WHERE account_id = %s", (t["TENANT_ID"],))[0][0] >= 1
    finally:
        dep.sql("DROP TABLE zz_orphans")
    cli_ok(dep, "tenant", "delete", t["TENANT_ID"])


# ---- CLI ---------------------------------------------------------------------------------------------


@test
def cli_msp_and_tenant_list_create_and_errors():
    dep = deployment()
    srv = replica(dep, bus=False, check="300ms")
    # Not an MSP yet: tenant create explains.
    r = cli(dep, "tenant", "create", "--msp", dep.account_id, "--name", "T", "--domain", "t.example")
    assert r.rc == 1 and "is not an MSP" in r.err and "msp enable" in r.err, r
    r = cli_ok(dep, "msp", "enable", dep.account_id)
    assert r.out.strip() == "account %s: MSP enabled" % dep.account_id, r
    assert "(already)" in cli_ok(dep, "msp", "enable", dep.account_id).out
    assert len(events(dep, dep.account_id, EV_MSP_ON)) == 1
    r = cli_ok(dep, "tenant", "create", "--msp", dep.account_id, "--name", "Acme", "--domain", "Acme.example")
    t = parse_env_output(r.out)
    assert t["CREATED"] == "true" and t["TENANT_ID"] == t["ACCOUNT_ID"], r
    # Idempotent by domain: the same tenant, no new secrets.
    r = cli_ok(dep, "tenant", "create", "--msp", dep.account_id, "--name", "Acme", "--domain", "acme.example")
    again = parse_env_output(r.out)
    assert again == {"TENANT_ID": t["TENANT_ID"], "CREATED": "false"}, r
    register(dep, srv, t["SETUP_KEY"], "acme-1")
    a2 = register(dep, srv, t["SETUP_KEY"], "acme-2")
    s = a2.sync()
    s.next(timeout=15)
    cli_ok(dep, "tenant", "limit", t["TENANT_ID"], "--max-devices", "10")
    cli_ok(dep, "tenant", "suspend", t["TENANT_ID"])
    s.wait_end(timeout=15)
    rows = svc.admin_json(["tenant", "list", "--msp", dep.account_id], dep.env())
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["id"] == t["TENANT_ID"] and row["name"] == "Acme" and row["domain"] == "acme.example", row
    assert row["state"] == "suspended" and row["suspended_at"] and row["device_limit"] == 10, row
    assert row["peers_total"] == 2 and row["peers_connected"] == 0 and row["last_activity"], row
    serial = dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (t["TENANT_ID"],))[0][0]
    assert row["serial"] == serial and row["status"] == "pending", row
    r = cli_ok(dep, "tenant", "list", "--msp", dep.account_id)
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "DOMAIN"] and len(lines) == 2, r
    assert t["TENANT_ID"] in lines[1] and "suspended" in lines[1], r
    # Disable keeps the link.
    cli_ok(dep, "msp", "disable", dep.account_id)
    assert dep.sql("SELECT msp_enabled_at FROM accounts WHERE id = %s", (dep.account_id,)) == [(None,)]
    assert len(svc.admin_json(["tenant", "list", "--msp", dep.account_id], dep.env())) == 1
    # Errors: unknown account -> 1 with a clear message; usage -> 2.
    for args in (["msp", "enable", "nope"], ["tenant", "suspend", "nope"], ["tenant", "resume", "nope"],
                 ["tenant", "delete", "nope"], ["tenant", "limit", "nope", "--max-devices", "3"],
                 ["tenant", "list", "--msp", "nope"]):
        r = cli(dep, *args)
        assert r.rc == 1 and "account nope not found" in r.err, (args, r)
    svc.check_usage_error(cli(dep, "tenant", "suspend"), "needs the account id")
    svc.check_usage_error(cli(dep, "tenant", "limit", dep.account_id, "--max-devices", "-1"), "--max-devices")
    svc.check_usage_error(cli(dep, "tenant", "limit", dep.account_id), "--max-devices")
    svc.check_usage_error(cli(dep, "tenant", "list"), "--msp")
    svc.check_usage_error(cli(dep, "tenant", "create", "--msp", dep.account_id), "--name")
    # --groups: MSP group ids and roles, checked by the store.
    gid = dep.add_group("support")
    r = cli_ok(dep, "msp", "enable", dep.account_id)
    r = cli_ok(dep, "tenant", "create", "--msp", dep.account_id, "--name", "Grp", "--domain", "grp.example",
               "--groups", gid + ":admin")
    tid = parse_env_output(r.out)["TENANT_ID"]
    assert dep.sql("SELECT groups FROM msp_tenants WHERE account_id = %s", (tid,)) == [([{"id": gid,
                                                                                          "role": "admin"}],)]
    svc.check_usage_error(cli(dep, "tenant", "create", "--msp", dep.account_id, "--name", "X", "--domain",
                              "x.example", "--groups", "nocolon"), "--groups")
    svc.check_usage_error(cli(dep, "tenant", "create", "--msp", dep.account_id, "--name", "X", "--domain",
                              "x.example", "--groups", "nosuchgroup:admin"), "cannot create the tenant")


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
