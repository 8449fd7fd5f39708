"""The management server as a process: probes, gRPC, TLS, logs, precedence
and shutdown. Every test gets its own database and loopback ports."""

import json
import os
import queue
import signal
import socket
import subprocess
import time

import grpc

import svc
from svc import test, Server, base_args, http, http_json

MGMT = "/management.ManagementService/"


def start(dsn, *extra, env=None, **over):
    e = svc.dsn_env(dsn)
    e.update(env or {})
    return Server(base_args(**over) + list(extra), env=e)


def stop_ok(srv, within):
    rc, took = srv.stop(timeout=within + 30)
    assert rc == 0, "exit %r\n%s\n%s" % (rc, srv.stdout(), srv.stderr())
    assert took < within, "shutdown took %.1fs (limit %.1fs)" % (took, within)
    msgs = [l.get("msg") for l in srv.logs()]
    assert "shutting down" in msgs and "stopped" in msgs, msgs
    svc.check_sanitizer_clean(srv.stderr())


@test
def probes_and_routes():
    dsn, _ = svc.new_db()
    srv = start(dsn)
    status, headers, body = http_json("GET", srv.url("/healthz"))
    assert status == 200 and body == {"status": "ok"}, (status, body)
    assert headers["Content-Type"].startswith("application/json"), headers
    status, _, body = http_json("GET", srv.url("/readyz"))
    assert status == 200 and body == {"status": "ready"}, (status, body)
    status, _, body = http_json("GET", srv.url("/no/such/path"))
    assert status == 404 and body == {"message": "not found", "code": 404}, (status, body)
    status, headers, body = http_json("POST", srv.url("/healthz"))
    assert status == 405 and body["code"] == 405, (status, body)
    assert "GET" in headers.get("Allow", ""), headers
    status, _, body = http("HEAD", srv.url("/readyz"))
    assert status == 200 and body == b"", (status, body)
    status, headers, _ = http("GET", srv.url("/healthz"), headers={"X-Request-Id": "probe-42"})
    assert headers.get("X-Request-Id") == "probe-42", headers
    stop_ok(srv, 10)


@test
def unknown_and_unimplemented_methods():
    dsn, _ = svc.new_db()
    srv = start(dsn)
    with grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port) as ch:
        # Paths are case-sensitive: the health RPC is "isHealthy".
        for path in ("IsHealthy", "NoSuchMethod"):
            try:
                ch.unary_unary(MGMT + path)(b"", timeout=10)
                raise AssertionError("call succeeded")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (path, e.code(), e.details())
                assert path in e.details(), e.details()
        # Registered, not implemented yet: grpc-go's wording.
        try:
            for _ in ch.stream_stream(MGMT + "Job")(iter([b"\x0a\x00"]), timeout=10):
                pass
            raise AssertionError("stream succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
            assert e.details() == "method Job not implemented", e.details()
        # Sync is served: an envelope without a key is the usual error.
        try:
            for _ in ch.unary_stream(MGMT + "Sync")(b"\x0a\x00", timeout=10):
                pass
            raise AssertionError("stream succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        try:
            for _ in ch.stream_stream("/management.NoSuchService/Stream")(iter([b"", b""]), timeout=10):
                pass
            raise AssertionError("bidi succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        # ProxyService is registered on the same server: its token check
        # answers first (tests/service/test_proxy_stream.py).
        try:
            for _ in ch.stream_stream("/management.ProxyService/SyncMappings")(iter([b""]), timeout=10):
                pass
            raise AssertionError("SyncMappings without a token succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    # Both kinds are logged with their context.
    line = srv.wait_log(lambda o: o.get("msg") == "unimplemented method" and "IsHealthy" in o.get("method", ""))
    assert line["component"] == "grpc" and line["peer"].startswith("ipv4:127.0.0.1:") and line["request_id"], line
    line = srv.wait_log(lambda o: o.get("msg") == "rpc" and o.get("method") == "Job")
    assert line["component"] == "agent" and line["code"] == "UNIMPLEMENTED" and line["peer"] == "127.0.0.1", line
    stop_ok(srv, 10)


@test
def log_lines_are_json():
    dsn, _ = svc.new_db()
    cfg = svc.write_json({"Stuns": [{"Proto": "udp", "URI": "stun:example.com:3478"}],
                          "Relay": {"Addresses": ["rels://example.com:443"]},
                          "HttpConfig": {"AuthAudience": "x"}, "TotallyUnknown": 1})
    srv = start(dsn, "--disable-anonymous-metrics", "--metrics-port=9090", config=cfg)
    with grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port) as ch:
        try:
            ch.unary_unary(MGMT + "NoSuchMethod")(b"", timeout=10)
        except grpc.RpcError:
            pass
    srv.wait_log(lambda o: o.get("msg") == "unimplemented method")
    stop_ok(srv, 10)
    logs = srv.logs()
    assert len(logs) >= 6, logs
    for l in logs:
        for key in ("time", "level", "msg", "component"):
            assert key in l, l
        assert l["level"] in ("trace", "debug", "info", "warn", "error", "fatal", "panic"), l
        assert l["time"].endswith("Z"), l
    listening = {l["protocol"]: l for l in logs if l["msg"] == "listening"}
    assert listening["grpc"]["address"] == "127.0.0.1:%d" % srv.grpc_port, listening
    assert listening["http"]["address"] == "127.0.0.1:%d" % srv.http_port, listening
    warnings = [l["msg"] for l in logs if l["level"] == "warn" and l["component"] == "config"]
    assert any("TotallyUnknown" in w for w in warnings), warnings
    assert not any(w.startswith("unknown key") and ("Stuns" in w or "Relay" in w or "HttpConfig" in w)
                   for w in warnings), warnings
    assert any("--disable-anonymous-metrics" in w and "ignored" in w for w in warnings), warnings
    assert any("--metrics-port" in w for w in warnings), warnings
    # Relay addresses without a secret load (as in NetBird) but are flagged.
    assert any("Relay.Secret is empty" in w for w in warnings), warnings
    started = [l for l in logs if l["msg"] == "starting"]
    assert started and started[0]["config_file"] == cfg, started


@test
def log_file_target():
    dsn, _ = svc.new_db()
    path = os.path.join(svc.tmpdir(), "mgmt.log")
    srv = Server(base_args() + ["--log-file", path, "--log-level", "debug"], env=svc.dsn_env(dsn), wait=False)
    deadline = time.monotonic() + svc.START_TIMEOUT
    while not (os.path.exists(path) and '"http"' in open(path).read()):
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr()
        time.sleep(0.1)
    port = [l for l in svc.json_lines(open(path).read()) if l.get("protocol") == "http"][0]["port"]
    assert http_json("GET", "http://127.0.0.1:%s/healthz" % port)[0] == 200
    rc, _ = srv.stop()
    assert rc == 0 and srv.stdout() == "", srv.stdout()
    logs = svc.json_lines(open(path).read())
    assert logs[-1]["msg"] == "stopped", logs[-1]
    # the per-request debug line carries the request context
    req = [l for l in logs if l["msg"] == "http request"]
    assert req and req[0]["method"] == "GET" and req[0]["path"] == "/healthz" and req[0]["request_id"], req
    # a log file that cannot be opened is a configuration error
    r = svc.run(["management"] + base_args() + ["--log-file", "/nonexistent/dir/mgmt.log"], env=svc.dsn_env(dsn))
    svc.check_usage_error(r, "/nonexistent/dir/mgmt.log")


@test
def file_env_flag_precedence():
    dsn, _ = svc.new_db()
    p_file, p_env, p_flag = svc.free_port(), svc.free_port(), svc.free_port()
    g_file = svc.free_port()
    cfg = svc.write_json({"ControlPlane": {"HttpPort": p_file, "Port": g_file, "ListenAddress": "127.0.0.1"}})
    env = svc.dsn_env(dsn)

    def run_and_probe(args, extra_env, want_http, want_grpc=None):
        e = dict(env)
        e.update(extra_env)
        srv = Server(["--config", cfg] + svc.KEY_ARGS + args, env=e)
        assert srv.http_port == want_http, (srv.http_port, want_http)
        if want_grpc:
            assert srv.grpc_port == want_grpc, (srv.grpc_port, want_grpc)
        status, _, body = http_json("GET", "http://127.0.0.1:%d/healthz" % want_http)
        assert status == 200 and body == {"status": "ok"}
        stop_ok(srv, 10)

    run_and_probe([], {}, p_file, g_file)                                   # file over default
    run_and_probe([], {"NB_MGMT_HTTP_PORT": str(p_env)}, p_env, g_file)     # env over file
    run_and_probe(["--http-port", str(p_flag)], {"NB_MGMT_HTTP_PORT": str(p_env)}, p_flag, g_file)  # flag over env
    # the DSN from the NetBird fallback name works too
    e = {"NETBIRD_STORE_ENGINE_POSTGRES_DSN": dsn, "NB_STORE_ENGINE_POSTGRES_DSN": ""}
    srv = Server(["--config", cfg, "--http-port=0", "--port=0"] + svc.KEY_ARGS, env=dict(e))
    assert srv.http_port not in (p_file, 0)
    stop_ok(srv, 10)


def make_cert(d):
    crt, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=netbird-mgmt-test",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return crt, key


@test
def tls_with_self_signed_certificate():
    dsn, _ = svc.new_db()
    crt, key = make_cert(svc.tmpdir())
    srv = start(dsn, "--cert-file", crt, "--cert-key", key)
    listening = [l for l in srv.logs() if l.get("msg") == "listening" and l.get("protocol") == "grpc"]
    assert listening[0]["tls"] == "true", listening
    with open(crt, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel("127.0.0.1:%d" % srv.grpc_port, creds) as ch:
        # GetServerKey answers over TLS: field 1 is the 44-character key.
        resp = ch.unary_unary(MGMT + "GetServerKey")(b"", timeout=10)
        assert resp[:2] == b"\x0a\x2c" and len(resp) > 46, resp
    # plaintext clients cannot talk to the TLS port
    with grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port) as ch:
        try:
            ch.unary_unary(MGMT + "GetServerKey")(b"", timeout=3)
            raise AssertionError("plaintext call succeeded")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e.code()
    # the key must match the certificate
    crt2, key2 = make_cert(svc.tmpdir())
    r = svc.run(["management"] + base_args() + ["--cert-file", crt, "--cert-key", key2], env=svc.dsn_env(dsn))
    svc.check_usage_error(r, "does not match")
    stop_ok(srv, 10)


@test
def sigterm_and_sigint_stop_cleanly():
    dsn, _ = svc.new_db()
    srv = start(dsn, shutdown_timeout="2s")
    stop_ok(srv, 5)
    srv = start(dsn)
    t0 = time.monotonic()
    srv.signal(signal.SIGINT)
    assert srv.wait(30) == 0
    assert time.monotonic() - t0 < 5
    assert any(l.get("signal") == "SIGINT" for l in srv.logs())
    # after shutdown the ports are free again
    with socket.socket() as s:
        s.bind(("127.0.0.1", srv.http_port))


@test
def sigterm_with_open_client_connections():
    dsn, _ = svc.new_db()
    srv = start(dsn, shutdown_timeout="3s")
    ch = grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port)
    svc.defer(ch.close)
    # a bidi call whose client never half-closes
    q = queue.Queue()

    def requests():
        while True:
            item = q.get()
            if item is None:
                return
            yield item
    svc.defer(q.put, None)
    call = ch.stream_stream(MGMT + "Sync")(requests(), timeout=60)
    grpc.channel_ready_future(ch).result(timeout=10)
    # a TCP client that sent only the HTTP/2 preface, and one that sent nothing
    raw1 = socket.create_connection(("127.0.0.1", srv.grpc_port))
    raw1.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    raw2 = socket.create_connection(("127.0.0.1", srv.grpc_port))
    # an HTTP client halfway through its request headers
    raw3 = socket.create_connection(("127.0.0.1", srv.http_port))
    raw3.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for s in (raw1, raw2, raw3):
        svc.defer(s.close)
    time.sleep(0.3)
    stop_ok(srv, 3 + 5)
    try:
        for _ in call:
            pass
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.CANCELLED), e.code()


def core_limit(pid):
    """(soft, hard) "Max core file size" of a running process."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max core file size"):
                return tuple(line.split()[4:6])
    raise AssertionError("no core limit in /proc/%d/limits" % pid)


@test
def core_dumps_are_off_unless_allowed():
    """A replica holds the server key, the data key and tokens: it makes
    no core file (limit 0, soft and hard; non-dumpable) unless the operator
    sets NB_CP_ALLOW_CORE_DUMPS=1, which it then warns about."""
    import resource
    try:
        # What the replica inherits: core files allowed.
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        raise svc.Skip("cannot raise RLIMIT_CORE here")
    dsn, _ = svc.new_db()
    srv = start(dsn)
    assert core_limit(srv.proc.pid) == ("0", "0"), core_limit(srv.proc.pid)
    assert not [l for l in srv.logs() if "core dumps" in l.get("msg", "")], srv.logs()
    stop_ok(srv, 10)
    srv = start(dsn, env={"NB_CP_ALLOW_CORE_DUMPS": "1"})
    # Left alone: the hard limit stays (the soft one too, except under
    # AddressSanitizer, whose runtime sets it to 0 by itself).
    assert core_limit(srv.proc.pid)[1] == "unlimited", core_limit(srv.proc.pid)
    srv.wait_log(lambda o: o.get("level") == "warn" and o.get("msg", "").startswith("core dumps allowed"))
    stop_ok(srv, 10)


@test
def readyz_fails_when_the_database_goes_away():
    dsn, name = svc.new_db()
    srv = start(dsn)
    assert http_json("GET", srv.url("/readyz"))[0] == 200
    svc.drop_db(name)
    deadline = time.monotonic() + 30
    while True:
        status, _, body = http_json("GET", srv.url("/readyz"))
        if status == 503:
            break
        assert time.monotonic() < deadline, "readyz still %r" % status
        time.sleep(0.3)
    # Anyone reaching the port reads /readyz: our words, not the
    # database's (which name the database, the user, the host).
    assert body == {"status": "not ready", "failed": "store", "error": "database unavailable"}, body
    # liveness does not depend on the database
    assert http_json("GET", srv.url("/healthz"))[0] == 200
    # The database's own text is in the log, once, not once per probe.
    line = srv.wait_log(lambda o: o.get("component") == "ready" and o.get("msg") == "not ready")
    assert line.get("error") and line["error"] != "database unavailable", line
    for _ in range(10):
        assert http_json("GET", srv.url("/readyz"))[0] == 503
        time.sleep(0.3)
    lines = [o for o in srv.logs() if o.get("component") == "ready" and o.get("msg") == "not ready"]
    assert len(lines) == 1, lines
    stop_ok(srv, 10)


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
