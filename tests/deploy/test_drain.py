"""The shutdown drain of one replica (issue 14, "Rolling update"): after
SIGTERM /readyz answers 503 "draining" while /healthz and the listener stay,
REST requests get 503, a new Sync is refused with UNAVAILABLE, and the held
Sync streams end with UNAVAILABLE spread over --drain-window (all at once
with 0s), each with its fenced disconnect; --drain-window must be less than
--shutdown-timeout.

The spread is asserted loosely (the endings cover at least half of the
window, no quarter second holds most of them), never on exact times: the
figures are printed for docs/kubernetes-rolling.md.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))

import svc  # noqa: E402
from fixture import Deployment, wait_until  # noqa: E402
from svc import test  # noqa: E402

LOAD = os.environ.get("NETBIRD_LOAD", "")
STREAMS = 200


def need_load():
    if not LOAD or not os.access(LOAD, os.X_OK):
        raise svc.Skip("NETBIRD_LOAD not set (meson sets it)")


def log_time(line):
    return datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def hold_streams(dep, srv, n):
    """netbird-load registering n peers and holding their streams (no
    reconnect); returns the process once every stream is open."""
    d = svc.tmpdir()
    ready = os.path.join(d, "ready")
    out = open(os.path.join(d, "load.out"), "w")
    p = subprocess.Popen([LOAD, "--target", srv.grpc_target, "--setup-key", dep.setup_key, "--peers", str(n),
                          "--connections", "2", "--concurrency", "50", "--hold", "600", "--ready-file", ready,
                          "--quiet"], stdout=out, stderr=subprocess.STDOUT, env=svc.clean_env())

    def stop():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        out.close()
    svc.defer(stop)
    wait_until(lambda: os.path.exists(ready) or p.poll() is not None, timeout=120, interval=0.1,
               what="netbird-load's streams open")
    with open(ready) as f:
        assert f.read().split() == ["open", str(n)], open(out.name).read()[-2000:]
    return p


def drain(window, grace="8s"):
    """One server, STREAMS held streams, SIGTERM; returns (end times of the
    streams from the server's log, the server's log lines, the deployment)."""
    need_load()
    dep = Deployment()
    srv = dep.start("--shutdown-timeout", grace, "--drain-window", window)
    hold_streams(dep, srv, STREAMS)
    wait_until(lambda: dep.sql("SELECT count(*) FROM peers WHERE peer_status_connected")[0][0] == STREAMS,
               what="every peer connected")
    t0 = time.time()
    srv.signal(signal.SIGTERM)
    return t0, srv, dep


def endings(srv):
    lines = srv.logs()
    ends = sorted(log_time(l) for l in lines
                  if l.get("msg") == "sync stream ended" and l.get("reason") == "server shutting down")
    summary = [l for l in lines if l.get("msg") == "sync streams at shutdown"]
    return ends, summary


def histogram(ends, t0, bucket=0.25):
    h = {}
    for t in ends:
        k = int((t - t0) / bucket)
        h[k] = h.get(k, 0) + 1
    return [h.get(k, 0) for k in range(max(h) + 1)] if h else []


@test
def drain_spreads_stream_endings_over_the_window():
    t0, srv, dep = drain("2s")
    # While it drains: not ready (but answering), healthy, REST refused.
    st, _, body = svc.http_json("GET", srv.url("/readyz"))
    assert st == 503 and body.get("failed") == "draining", (st, body)
    st, _, body = svc.http_json("GET", srv.url("/healthz"))
    assert st == 200, (st, body)
    st, _, body = svc.http_json("GET", srv.url("/api/peers"), headers={"Authorization": "Token " + dep.admin_token})
    assert st == 503 and body == {"message": "server is shutting down", "code": 503}, (st, body)
    # The drain counter is on /metrics while the listener answers.
    st, _, text = svc.http("GET", srv.url("/metrics"))
    assert st == 200 and b"netbird_cp_sync_drained_total" in text, st
    # ... and the readiness gauges say what /readyz says.
    lines = text.decode().splitlines()
    assert "netbird_cp_ready 0" in lines, [l for l in lines if l.startswith("netbird_cp_ready")]
    assert 'netbird_cp_ready_failing{check="draining"} 1' in lines, [l for l in lines if "failing" in l]
    # A new Sync is refused (the agent would go to another replica).
    with grpc.insecure_channel(srv.grpc_target) as ch:
        try:
            ch.unary_stream("/management.ManagementService/Sync")(b"", timeout=5).next()
            raise AssertionError("a Sync opened during the drain")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
    assert srv.wait(30) == 0, srv.stderr()[-3000:]
    ends, summary = endings(srv)
    assert len(ends) == STREAMS, (len(ends), STREAMS)
    span = ends[-1] - ends[0]
    hist = histogram(ends, ends[0])
    print("# window 2s: %d streams ended over %.2fs, per 250 ms: %s" % (len(ends), span, hist))
    # Spread: most of the window, never one burst (loose bounds, no timing
    # figure is asserted tightly).
    assert span >= 1.0, (span, hist)
    assert max(hist) <= STREAMS * 0.5, hist
    # Every ended stream's fenced disconnect ran; nobody reconnected, so
    # every one landed and the rows are disconnected.
    assert len(summary) == 1, summary
    s = summary[0]
    assert int(s["drained"]) == STREAMS, s
    assert int(s["disconnects_landed"]) == STREAMS and int(s["disconnects_fenced_off"]) == 0, s
    assert dep.sql("SELECT count(*) FROM peers WHERE peer_status_connected")[0][0] == 0


@test
def zero_window_ends_every_stream_at_once():
    t0, srv, dep = drain("0s")
    assert srv.wait(30) == 0, srv.stderr()[-3000:]
    ends, summary = endings(srv)
    assert len(ends) == STREAMS, (len(ends), STREAMS)
    print("# window 0s: %d streams ended over %.2fs, per 250 ms: %s"
          % (len(ends), ends[-1] - ends[0], histogram(ends, ends[0])))
    assert len(summary) == 1 and int(summary[0]["drained"]) == STREAMS, summary
    assert int(summary[0]["disconnects_landed"]) == STREAMS, summary
    assert dep.sql("SELECT count(*) FROM peers WHERE peer_status_connected")[0][0] == 0


@test
def drain_window_must_fit_the_grace_period():
    r = svc.run(["management", "--drain-window", "5s", "--shutdown-timeout", "5s"])
    svc.check_usage_error(r, "drain-window (5000ms, from flag --drain-window) must be less than shutdown-timeout")
    r = svc.run(["management", "--drain-window", "later"])
    svc.check_usage_error(r, "--drain-window")


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
