"""GET /metrics of netbird-mgmt (services/management/runtime/mgmt-metrics.c,
common/metrics): the Prometheus text format that `promtool check metrics`
accepts without a warning, and counters that move with what agents do
(registration, a Sync open, a failing login, a fan-out, a disconnect).

Agents are tests/agent/nbagent.py; deployments are tests/agent/fixture.py.
"""

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import fixture  # noqa: E402
import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from nbagent import RpcFailed, build_meta  # noqa: E402
from svc import test  # noqa: E402

import grpc  # noqa: E402

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def scrape(srv):
    status, headers, body = svc.http("GET", srv.url("/metrics"))
    assert status == 200, (status, body)
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype == "text/plain; version=0.0.4; charset=utf-8", ctype
    return body.decode()


def parse(text):
    """{(name, ((label, value), ...)): float} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        key = (m.group(1), labels)
        assert key not in out, "duplicate series %r" % (key,)
        out[key] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text):
    exe = shutil.which("promtool")
    if not exe:
        raise svc.Skip("promtool not installed (deploy/install-deps installs the prometheus package)")
    p = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        "promtool check metrics: rc=%d\n%s%s" % (p.returncode, p.stdout, p.stderr)


@test
def counters_move_with_agents():
    dep = Deployment(config=fixture.NETBIRD_CONFIG)
    srv = dep.start()
    before = parse(scrape(srv))
    assert value(before, "netbird_cp_build_info", version="0.1.0") == 1, before
    assert value(before, "netbird_cp_sync_streams") == 0
    assert value(before, "process_start_time_seconds") > 1.6e9
    assert value(before, "process_open_fds") > 0
    assert value(before, "process_resident_memory_bytes") > 0
    assert value(before, "netbird_cp_store_pool_size") >= 1

    def delta(samples, name, **labels):
        return value(samples, name, **labels) - value(before, name, **labels)

    # `netbird up --setup-key`: a bare Login (denied: unknown peer), then
    # the registration.
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("m-a"))
    s = a.sync(meta=build_meta("m-a"))
    s.next(timeout=15)
    # A failing registration: a setup key that does not exist.
    bad = dep.agent()
    try:
        bad.login(setup_key="00000000-0000-0000-0000-000000000000", meta=build_meta("m-bad"))
        raise AssertionError("login with an unknown setup key succeeded")
    except RpcFailed as e:
        assert e.code == grpc.StatusCode.NOT_FOUND, e
    # A second peer: the first stream gets a map by fan-out.
    b = dep.agent()
    b.register(dep.setup_key, meta=build_meta("m-b"))
    s.wait_for(lambda m: b.pub_b64 in {p.wgPubKey for p in m.NetworkMap.remotePeers}, timeout=10)

    now = parse(scrape(srv))
    assert delta(now, "netbird_cp_logins_total", kind="login", outcome="permission_denied") == 2, now
    assert delta(now, "netbird_cp_logins_total", kind="registration", outcome="ok") == 2
    assert delta(now, "netbird_cp_logins_total", kind="registration", outcome="not_found") == 1
    assert delta(now, "netbird_cp_sync_opens_total", outcome="ok") == 1
    assert value(now, "netbird_cp_sync_streams") == 1
    assert delta(now, "netbird_cp_fenced_updates_total", op="connect", result="landed") == 1
    # The fan-out histogram: at least the push for b (its _count equals the
    # +Inf bucket), and at least one map queued by it.
    assert delta(now, "netbird_cp_fanout_duration_seconds_count") >= 1
    assert value(now, "netbird_cp_fanout_duration_seconds_count") == \
        value(now, "netbird_cp_fanout_duration_seconds_bucket", le="+Inf")
    assert delta(now, "netbird_cp_fanout_maps_pushed_total") >= 1
    # The store: the Sync open's one-statement connect ran once (the
    # lookup path's connect only when that wrote nothing), lookups ran,
    # COMMITs were timed.
    assert delta(now, "netbird_cp_store_query_duration_seconds_count", statement="peer_open") == 1
    assert delta(now, "netbird_cp_store_query_duration_seconds_count", statement="peer_connect") <= 1
    assert value(now, "netbird_cp_store_query_duration_seconds_count", statement="peer_lookup") >= 3
    assert value(now, "netbird_cp_store_query_duration_seconds_count", statement="commit") >= 2
    assert value(now, "netbird_cp_store_query_errors_total", statement="peer_open") == 0
    assert value(now, "netbird_cp_store_query_errors_total", statement="peer_connect") == 0
    pool = value(now, "netbird_cp_store_pool_size")
    busy = value(now, "netbird_cp_store_pool_connections", state="busy")
    idle = value(now, "netbird_cp_store_pool_connections", state="idle")
    assert idle >= 1 and busy + idle <= pool, (busy, idle, pool)

    # The stream ends: the gauge goes back and the fenced disconnect lands.
    s.cancel()
    wait_until(lambda: value(parse(scrape(srv)), "netbird_cp_sync_streams") == 0, what="stream gauge back to 0")
    wait_until(lambda: delta(parse(scrape(srv)), "netbird_cp_fenced_updates_total", op="disconnect",
                             result="landed") == 1, what="disconnect counted")

    promtool_check(scrape(srv))


@test
def sync_open_failures_by_status():
    dep = Deployment()
    srv = dep.start()
    before = parse(scrape(srv))
    stranger = dep.agent()
    s = stranger.sync(meta=build_meta("m-stranger"))
    ended = None
    try:
        got = s.next(timeout=15)
    except RpcFailed as e:
        ended, got = e, None
    assert ended is not None and ended.code == grpc.StatusCode.PERMISSION_DENIED, (ended, got)
    wait_until(lambda: value(parse(scrape(srv)), "netbird_cp_sync_opens_total", outcome="permission_denied")
               - value(before, "netbird_cp_sync_opens_total", outcome="permission_denied") == 1,
               what="failed open counted")
    now = parse(scrape(srv))
    assert value(now, "netbird_cp_sync_streams") == 0
    promtool_check(scrape(srv))


@test
def bus_counters():
    redis_url = os.environ.get("CP_TEST_REDIS_URL", "")
    if not redis_url:
        raise svc.Skip("CP_TEST_REDIS_URL not set (run through tests/run)")
    dep = Deployment()
    srv = dep.start("--redis-url", redis_url)
    wait_until(lambda: value(parse(scrape(srv)), "netbird_cp_bus_connected") == 1, timeout=15,
               what="bus subscribed")
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta("m-bus"))
    # The replica receives its own announcement: published and received
    # both move, and the lag of that message is observed.
    wait_until(lambda: value(parse(scrape(srv)), "netbird_cp_bus_messages_total", result="received") >= 1,
               timeout=15, what="bus message received")
    now = parse(scrape(srv))
    assert value(now, "netbird_cp_bus_messages_total", result="published") >= 1, now
    assert value(now, "netbird_cp_bus_messages_total", result="malformed") == 0
    assert value(now, "netbird_cp_bus_lag_seconds_count") >= 1
    assert ("netbird_cp_bus_reconnects_total", ()) in now
    promtool_check(scrape(srv))


@test
def methods_and_text_rules():
    dep = Deployment()
    srv = dep.start()
    status, headers, body = svc.http("HEAD", srv.url("/metrics"))
    assert status == 200 and body == b"", (status, body)
    status, headers, body = svc.http("POST", srv.url("/metrics"))
    assert status == 405, status
    assert {k.lower(): v for k, v in headers.items()}.get("allow") == "GET, HEAD", headers
    text = scrape(srv)
    assert text.endswith("\n"), text[-200:]
    # Every family: HELP, then TYPE, then its samples; names are unique.
    seen = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in seen, "family %s twice" % name
            seen.add(name)
            assert lines[i - 1].startswith("# HELP %s " % name), lines[i - 1]
    # Without --redis-url there is no bus, and no bus family.
    assert not any(n.startswith("netbird_cp_bus_") for n in seen), seen
    for name in ("netbird_cp_build_info", "netbird_cp_sync_streams", "netbird_cp_sync_opens_total",
                 "netbird_cp_logins_total", "netbird_cp_fanout_duration_seconds",
                 "netbird_cp_fanout_maps_pushed_total", "netbird_cp_store_pool_size",
                 "netbird_cp_store_pool_connections", "netbird_cp_store_query_duration_seconds",
                 "netbird_cp_store_query_errors_total", "netbird_cp_fenced_updates_total",
                 "process_start_time_seconds", "process_open_fds"):
        assert name in seen, "no family %s in\n%s" % (name, text)
    promtool_check(text)


if __name__ == "__main__":
    sys.exit(svc.run_all())
