"""mgmt-core's gRPC server through mgmt-grpc-harness (tests/service): the
registered-method path, client cancellation, and shutdown that cancels
calls still running when the grace period ends. Needs no database.

The harness path comes from MGMT_GRPC_HARNESS (set by meson).
"""

import os
import threading
import time

import grpc

import svc
from svc import test, Server

HARNESS = os.environ.get("MGMT_GRPC_HARNESS", "")


def start(grace_ms):
    if not HARNESS:
        raise svc.Skip("harness binary not given")
    return Server([str(grace_ms)], command=[HARNESS], protocols=("grpc",))


def channel(srv):
    ch = grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port)
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
def shutdown_without_calls_is_immediate():
    srv = start(10000)
    ch = channel(srv)
    grpc.channel_ready_future(ch).result(timeout=10)    # an idle connection stays open
    rc, took = srv.stop()
    assert rc == 0 and took < 3, (rc, took)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
