"""mgmt-core's gRPC server through mgmt-grpc-harness (tests/service): the
registered-method path, client cancellation, shutdown that cancels
calls still running when the grace period ends, and several completion
queues serving streams at once with a fan-out reaching all of them. Needs
no database.

The harness path comes from MGMT_GRPC_HARNESS (set by meson).
"""

import os
import threading
import time

import grpc

import svc
from svc import test, Server

HARNESS = os.environ.get("MGMT_GRPC_HARNESS", "")


def start(grace_ms, threads=None):
    if not HARNESS:
        raise svc.Skip("harness binary not given")
    args = [str(grace_ms)] + ([str(threads)] if threads is not None else [])
    return Server(args, command=[HARNESS], protocols=("grpc",))


def channel(srv, own_connection=False):
    # own_connection: a TCP connection of its own (as every agent has),
    # not one shared with the other channels of this process.
    opts = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    ch = grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port, options=opts)
    # Keep the client reading its socket even with no call active, as a Go
    # agent does: an idle grpcio channel does not answer the PING of the
    # server's graceful GOAWAY, and shutdown would then wait for the grace
    # period to end.
    ch.subscribe(lambda state: None, try_to_connect=True)
    svc.defer(ch.close)
    return ch


def hold(ch, results, timeout=60):
    """Starts a Hold call on a thread; its final status code lands in results."""
    def consume():
        try:
            for _ in ch.unary_stream("/cptest.Harness/Hold")(b"", timeout=timeout):
                pass
            results.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            results.append(e.code())
    t = threading.Thread(target=consume, daemon=True)
    t.start()
    return t


def count(srv, msg, **fields):
    return sum(1 for l in srv.logs()
               if l.get("msg") == msg and all(l.get(k) == v for k, v in fields.items()))


def wait_count(srv, n, msg, **fields):
    deadline = time.monotonic() + 20
    while count(srv, msg, **fields) < n:
        assert time.monotonic() < deadline, "%d x %r not seen:\n%s" % (n, msg, srv.stdout())
        time.sleep(0.05)


@test
def registered_and_unknown_methods():
    srv = start(1000)
    ch = channel(srv)
    assert list(ch.unary_stream("/cptest.Harness/Empty")(b"", timeout=10)) == []
    wait_count(srv, 1, "call closed", cancelled="false")
    try:
        ch.unary_unary("/cptest.Harness/Nope")(b"", timeout=10)
        raise AssertionError("call succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e.code()
    rc, took = srv.stop()
    assert rc == 0 and took < 3, (rc, took, srv.stdout())


@test
def client_cancellation_is_seen():
    srv = start(5000)
    ch = channel(srv)
    call = ch.unary_stream("/cptest.Harness/Hold")(b"", timeout=60)
    wait_count(srv, 1, "holding call")
    call.cancel()
    wait_count(srv, 1, "call closed", cancelled="true")
    # nothing is in flight any more: shutdown does not wait for the grace period
    rc, took = srv.stop()
    assert rc == 0 and took < 3, (rc, took, srv.stdout())


@test
def shutdown_cancels_calls_after_the_grace_period():
    grace = 1500
    srv = start(grace)
    ch = channel(srv)
    results = []
    threads = [hold(ch, results) for _ in range(3)]
    wait_count(srv, 3, "holding call")
    rc, took = srv.stop()
    assert rc == 0, (rc, srv.stdout(), srv.stderr())
    assert grace / 1000 * 0.8 <= took < grace / 1000 + 3, took
    for t in threads:
        t.join(10)
    assert results == [grpc.StatusCode.CANCELLED] * 3 or \
        all(r in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE) for r in results), results
    assert count(srv, "call closed", cancelled="true") == 3, srv.stdout()
    line = [l for l in srv.logs() if l.get("msg") == "shutdown grace period over, cancelling calls"]
    assert line and line[0]["calls"] == "3", srv.stdout()
    svc.check_sanitizer_clean(srv.stderr())


@test
def several_queues_serve_streams_and_a_fanout_reaches_every_one():
    queues, conns, per_conn = 4, 8, 6
    srv = start(2000, threads=queues)
    listening = [l for l in srv.logs() if l.get("msg") == "listening"]
    assert listening and listening[0]["queues"] == str(queues), srv.stdout()
    got = []            # per stream: the messages in the order received
    ends = []
    lock = threading.Lock()
    calls = []

    def watch(ch, k):
        call = ch.unary_stream("/cptest.Harness/Watch")(b"", timeout=60)
        with lock:
            calls.append(call)
        try:
            for m in call:
                with lock:
                    got[k].append(m)
        except grpc.RpcError as e:
            with lock:
                ends.append(e.code())

    chans = [channel(srv, own_connection=True) for _ in range(conns)]
    threads = []
    for j, ch in enumerate(chans):
        for _ in range(per_conn):
            got.append([])
            t = threading.Thread(target=watch, args=(ch, len(got) - 1), daemon=True)
            t.start()
            threads.append(t)
    n = conns * per_conn
    wait_count(srv, n, "watching call")
    on = [l["queue"] for l in srv.logs() if l.get("msg") == "watching call"]
    # the server spreads connections over its queues (round robin)
    assert len(set(on)) >= 2, on

    push = chans[0].unary_unary("/cptest.Harness/Push")
    assert push(b"m-000", timeout=10) == str(n).encode()

    def wait_all(last):
        deadline = time.monotonic() + 20
        while True:
            with lock:
                if all(g and g[-1] == last for g in got):
                    return
            assert time.monotonic() < deadline, [g[-1:] for g in got]
            time.sleep(0.02)
    wait_all(b"m-000")
    assert all(g == [b"m-000"] for g in got), got
    # pushes back to back: a newer message may replace one still unsent,
    # but every stream ends with the newest and never goes backwards
    for i in range(1, 30):
        assert push(b"m-%03d" % i, timeout=10) == str(n).encode()
    wait_all(b"m-029")
    with lock:
        for g in got:
            assert g == sorted(set(g)), g
    with lock:
        for c in calls:
            c.cancel()
    for t in threads:
        t.join(10)
    wait_count(srv, n, "call closed", cancelled="true")
    rc, took = srv.stop()
    assert rc == 0 and took < 3, (rc, took, srv.stdout())
    svc.check_sanitizer_clean(srv.stderr())


@test
def shutdown_without_calls_is_immediate():
    srv = start(10000)
    ch = channel(srv)
    grpc.channel_ready_future(ch).result(timeout=10)    # an idle connection stays open
    rc, took = srv.stop()
    assert rc == 0 and took < 3, (rc, took)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
