"""netbird-load (services/load), the agent-protocol load generator, run
small against a real netbird-mgmt: a few peers register, hold their Sync
streams, follow a change, and the JSON summary says so; a second run
re-logs the same peers in from the keys file; bad options are usage
errors. The benchmarks (tests/bench/load) run it big; this keeps it
working between benchmark runs.

The binary comes from NETBIRD_LOAD (meson sets it).
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from svc import test  # noqa: E402

LOAD = os.environ.get("NETBIRD_LOAD", "")
PEERS = 5


def need_load():
    if not LOAD or not os.access(LOAD, os.X_OK):
        raise svc.Skip("NETBIRD_LOAD not set (meson sets it)")


def load(*args, timeout=120):
    p = subprocess.run([LOAD] + list(args), capture_output=True, text=True, timeout=timeout,
                       env=svc.clean_env())
    svc.check_sanitizer_clean(p.stderr)
    return p


def summary(p):
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, "one JSON line on stdout, got %r\nstderr: %s" % (p.stdout, p.stderr[-3000:])
    return json.loads(lines[0])


def connected(dep):
    return dep.sql("SELECT count(*) FILTER (WHERE peer_status_connected), count(*) FROM peers")[0]


@test
def smoke_register_hold_follow_a_change():
    need_load()
    dep = Deployment()
    srv = dep.start()
    keys = os.path.join(svc.tmpdir(), "peers.keys")
    serial0 = dep.network_serial()
    p = load("--target", srv.grpc_target, "--setup-key", dep.setup_key, "--peers", str(PEERS),
             "--connections", "2", "--concurrency", str(PEERS), "--changes", "1", "--change-interval", "100",
             "--hold", "1", "--keys-file", keys, "--quiet")
    s = summary(p)
    ctx = "%s\nstderr: %s" % (json.dumps(s), p.stderr[-3000:])
    assert p.returncode == 0, ctx
    assert (s["peers"], s["targets"], s["connections"], s["mode"]) == (PEERS, 1, 2, "login+sync"), ctx
    assert s["registered"] == PEERS and s["logged_in"] == PEERS and s["streams_open"] == PEERS, ctx
    assert s["errors_total"] == 0 and s["errors"] == {} and s["streams_ended_by_server"] == 0, ctx
    # Every stream got its first map, then at least the change.
    assert s["sync_responses"] >= 2 * PEERS, ctx
    assert s["updates_received"] >= PEERS and s["updates_per_peer_min"] >= 1, ctx
    assert s["changes"]["streams_missed"] == 0, ctx
    assert not s["interrupted"], ctx
    # The server agrees: the peers and the change's peer exist, the serial
    # moved once per registration, and the cancelled streams disconnected.
    assert dep.network_serial() >= serial0 + PEERS + 1, (serial0, dep.network_serial())
    wait_until(lambda: connected(dep) == (0, PEERS + 1), what="every load peer disconnected")

    # Again from the keys file, without a setup key: the same peers log in.
    p = load("--target", srv.grpc_target, "--peers", str(PEERS), "--keys-file", keys, "--quiet")
    s = summary(p)
    ctx = "%s\nstderr: %s" % (json.dumps(s), p.stderr[-3000:])
    assert p.returncode == 0, ctx
    assert s["registered"] == 0 and s["logged_in"] == PEERS and s["streams_open"] == PEERS, ctx
    assert s["errors_total"] == 0, ctx
    assert connected(dep)[1] == PEERS + 1, "re-login registered new peers"


@test
def errors_are_counted_by_status():
    """A wrong setup key: every peer fails with NOT_FOUND, the summary
    counts them, the exit status is 1."""
    need_load()
    dep = Deployment()
    srv = dep.start()
    p = load("--target", srv.grpc_target, "--setup-key", "00000000-0000-4000-8000-000000000000",
             "--peers", "3", "--quiet")
    s = summary(p)
    assert p.returncode == 1, (p.returncode, s)
    assert s["errors"] == {"NOT_FOUND": 3} and s["errors_total"] == 3 and s["streams_open"] == 0, s
    assert connected(dep) == (0, 0)


@test
def setup_keys_file_peers_per_key_and_report():
    """--setup-keys-file with --peers-per-key 2: 4 peers, 2 keys, each key
    registers 2 of them; --target-mode spread; the --report-file has one
    line per peer with its updates after the change it followed."""
    need_load()
    dep = Deployment()
    srv = dep.start()
    k1, k2 = dep.add_setup_key(), dep.add_setup_key()
    d = svc.tmpdir()
    kf = os.path.join(d, "setup.keys")
    with open(kf, "w") as f:
        f.write("# tenants' keys\n%s\n\n%s\n" % (k1, k2))
    report = os.path.join(d, "report")
    p = load("--target", srv.grpc_target, "--target", srv.grpc_target, "--setup-keys-file", kf,
             "--peers-per-key", "2", "--target-mode", "spread", "--peers", "4", "--changes", "1",
             "--change-interval", "100", "--hold", "0.5", "--report-file", report, "--quiet")
    s = summary(p)
    ctx = "%s\nstderr: %s" % (json.dumps(s), p.stderr[-3000:])
    assert p.returncode == 0 and s["registered"] == 4 and s["streams_open"] == 4, ctx
    # The change's peer registers with the first key: 3 uses of k1, 2 of k2.
    assert (dep.setup_key_used(k1), dep.setup_key_used(k2)) == (3, 2), ctx
    lines = [l.split() for l in open(report) if not l.startswith("#")]
    assert [int(l[0]) for l in lines] == [0, 1, 2, 3], lines
    for l in lines:
        assert len(l) == 8 and l[3] == "O" and int(l[1]) >= 1, lines
        assert float(l[4]) > 0, lines
    assert sum(int(l[1]) for l in lines) == s["updates_received"], (lines, ctx)


@test
def option_errors():
    need_load()
    cases = [
        ([], "--target"),
        (["--target", "127.0.0.1:1"], "--peers"),
        (["--target", "127.0.0.1:1", "--peers", "0"], "--peers"),
        (["--target", "127.0.0.1:1", "--peers", "many"], '"many"'),
        (["--target", "127.0.0.1:1", "--peers", "1", "--frobnicate"], "--frobnicate"),
        (["--target", "127.0.0.1:1", "--peers", "1", "--concurrency", "-3"], "--concurrency"),
        (["--target", "127.0.0.1:1", "--peers", "1", "--hold"], "--hold"),
        (["--target", "127.0.0.1:1", "--peers", "1", "--target-mode", "random"], "--target-mode"),
        (["--target", "127.0.0.1:1", "--peers", "1", "--peers-per-key", "0"], "--peers-per-key"),
        (["--target", "127.0.0.1:1", "--peers", "1", "--setup-keys-file", "/nonexistent/keys"], "/nonexistent/keys"),
    ]
    for args, needle in cases:
        p = load(*args, timeout=30)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "netbird-load: error:" in p.stderr and needle in p.stderr, (args, p.stderr)
        assert p.stdout == "", (args, p.stdout)
    p = load("--help", timeout=30)
    assert p.returncode == 0 and "--setup-key" in p.stdout + p.stderr, p


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
