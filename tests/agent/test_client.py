"""Self-test of the test agent (nbagent.py), with no netbird-mgmt and no
database: an in-process grpcio server that plays the management side of
the envelope exactly as netbird-protocol.md section 2 describes it. It
pins what the agent puts on the wire (keys, body layout, the lower-case
setup key, peerKeys), that it opens what a server seals, and how it
reports statuses and stream ends, so a failure in test_protocol.py can be
blamed on the server and not on the client.

Usage: /usr/bin/python3 test_client.py NETBIRD_MGMT [TEST]   (the binary
is only there because the shared TAP runner wants one; it is not started)
"""

import base64
import queue
import threading
from concurrent import futures

import grpc
import nacl.public

import fixture  # noqa: F401  (sys.path)
import svc
import nbagent
from nbagent import RpcFailed, StreamEnded, ProtocolError, build_meta, pb
from svc import test

SC = grpc.StatusCode


class FakeServer:
    """GetServerKey / isHealthy / Login / Sync / Logout / Job, sealed with a
    server key pair; what each call received is kept in .seen."""

    def __init__(self, sync_items=3, end_sync_ok=True):
        self.priv = nacl.public.PrivateKey.generate()
        self.pub_b64 = base64.b64encode(bytes(self.priv.public_key)).decode()
        self.seen = queue.Queue()
        self.sync_items = sync_items
        self.end_sync_ok = end_sync_ok
        self.release_sync = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "GetServerKey": grpc.unary_unary_rpc_method_handler(self.get_server_key),
            "isHealthy": grpc.unary_unary_rpc_method_handler(lambda req, ctx: pb.Empty().SerializeToString()),
            "Login": grpc.unary_unary_rpc_method_handler(self.login),
            "Logout": grpc.unary_unary_rpc_method_handler(self.logout),
            "Sync": grpc.unary_stream_rpc_method_handler(self.sync),
            "Job": grpc.stream_stream_rpc_method_handler(self.job),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("management.ManagementService", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        svc.defer(self.server.stop, 0)
        self.target = "127.0.0.1:%d" % self.port

    def _open(self, raw, cls, ctx):
        env = pb.EncryptedMessage()
        env.ParseFromString(raw)
        peer = nbagent.key_from_b64(env.wgPubKey)
        plain = nacl.public.Box(self.priv, peer).decrypt(env.body)
        msg = cls()
        msg.ParseFromString(plain)
        self.seen.put((env, msg))
        return peer, msg

    def _seal(self, peer, msg):
        body = nbagent.seal(msg.SerializeToString(), self.priv, peer)
        return pb.EncryptedMessage(wgPubKey=self.pub_b64, body=body).SerializeToString()

    def get_server_key(self, raw, ctx):
        return pb.ServerKeyResponse(key=self.pub_b64).SerializeToString()

    def login(self, raw, ctx):
        peer, req = self._open(raw, pb.LoginRequest, ctx)
        if not req.HasField("meta"):
            ctx.abort(SC.FAILED_PRECONDITION, "peer system meta has to be provided to log in")
        if not req.setupKey:
            ctx.abort(SC.PERMISSION_DENIED, "no peer auth method provided")
        resp = pb.LoginResponse()
        resp.peerConfig.address = "100.64.0.7/16"
        resp.sessionExpiresAt.SetInParent()
        resp.netbirdConfig.SetInParent()
        return self._seal(peer, resp)

    def logout(self, raw, ctx):
        self._open(raw, pb.Empty, ctx)
        return pb.Empty().SerializeToString()

    def sync(self, raw, ctx):
        peer, req = self._open(raw, pb.SyncRequest, ctx)
        for i in range(self.sync_items):
            m = pb.SyncResponse()
            m.NetworkMap.Serial = i + 1
            m.NetworkMap.remotePeersIsEmpty = True
            if i == 0:
                m.netbirdConfig.SetInParent()
            m.sessionExpiresAt.SetInParent()
            yield self._seal(peer, m)
        if self.sync_items < 0:
            yield pb.EncryptedMessage(wgPubKey=self.pub_b64, body=b"\x00" * 60).SerializeToString()
        self.release_sync.wait(10)
        if not self.end_sync_ok:
            ctx.abort(SC.PERMISSION_DENIED, "peer login has expired, please log in once more")

    def job(self, it, ctx):
        raw = next(it)
        self._open(raw, pb.JobRequest, ctx)
        ctx.abort(SC.UNIMPLEMENTED, "method Job is not implemented")
        yield b""   # never reached


def agent(srv, **kw):
    a = nbagent.Agent(srv.target, **kw)
    svc.defer(a.close)
    return a


@test
def keys_and_envelope_layout():
    srv = FakeServer()
    a = agent(srv)
    assert len(a.pub_b64) == 44 and base64.b64decode(a.pub_b64) == bytes(a.pub)
    raw = bytes(a.key)
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40, "private key must be clamped"
    assert bytes(a.get_server_key()) == bytes(srv.priv.public_key)
    plain = b"hello"
    body = nbagent.seal(plain, a.key, srv.priv.public_key)
    assert len(body) == 24 + 16 + len(plain), "nonce(24) || tag(16) || ciphertext"
    assert nacl.public.Box(srv.priv, a.pub).decrypt(body[24:], body[:24]) == plain
    empty = nbagent.seal(b"", a.key, srv.priv.public_key)
    assert len(empty) == 40
    try:
        nbagent.open_box(b"\x00" * 10, a.key, srv.priv.public_key)
        raise AssertionError("short body opened")
    except ProtocolError:
        pass


@test
def login_request_on_the_wire():
    srv = FakeServer()
    a = agent(srv)
    key = "A2C8E5D1-1111-4222-8333-444455556666"
    resp = a.login(setup_key=key, meta=build_meta("wire"), ssh_pub_key="ssh-ed25519 AAAA x", dns_labels=["web"])
    env, req = srv.seen.get(timeout=5)
    assert env.wgPubKey == a.pub_b64 and env.version == 0
    assert req.setupKey == key.lower(), req.setupKey
    assert req.peerKeys.wgPubKey == a.pub_b64.encode()
    assert req.peerKeys.sshPubKey == b"ssh-ed25519 AAAA x"
    assert list(req.dnsLabels) == ["web"]
    m = req.meta
    assert m.hostname == "wire" and m.goOS == "linux" and m.netbirdVersion == "0.60.0"
    assert list(m.capabilities) == [1, 2] and m.syncMessageVersion == 1
    assert [n.netIP for n in m.networkAddresses] == ["192.168.122.17/24", "fe80::5054:ff:fe12:3456/64"]
    assert resp.peerConfig.address == "100.64.0.7/16"
    assert resp.HasField("sessionExpiresAt") and resp.sessionExpiresAt.seconds == 0
    assert resp.HasField("netbirdConfig")
    # without meta
    try:
        a.login(setup_key=key, with_meta=False)
        raise AssertionError("no error")
    except RpcFailed as e:
        assert e.code == SC.FAILED_PRECONDITION and "meta" in e.details, e


@test
def register_tries_bare_login_first():
    srv = FakeServer()
    a = agent(srv)
    a.register("A2C8E5D1-1111-4222-8333-444455556666", meta=build_meta("reg"))
    _, first = srv.seen.get(timeout=5)
    _, second = srv.seen.get(timeout=5)
    assert first.setupKey == "" and second.setupKey, (first, second)


@test
def errors_carry_code_and_details():
    srv = FakeServer()
    a = agent(srv)
    try:
        a.login(meta=build_meta("x"))
        raise AssertionError("no error")
    except RpcFailed as e:
        assert e.code == SC.PERMISSION_DENIED and e.details == "no peer auth method provided", e
        assert e.method == "Login"
    try:
        a.device_flow()      # not served by the fake: UNIMPLEMENTED
        raise AssertionError("no error")
    except RpcFailed as e:
        assert e.code == SC.UNIMPLEMENTED, e


@test
def sync_stream_decrypts_and_ends_cleanly():
    srv = FakeServer(sync_items=3)
    a = agent(srv)
    s = a.sync(meta=build_meta("s"))
    msgs = [s.next(timeout=5) for _ in range(3)]
    assert [m.NetworkMap.Serial for m in msgs] == [1, 2, 3]
    assert msgs[0].HasField("netbirdConfig") and not msgs[1].HasField("netbirdConfig")
    assert all(m.HasField("sessionExpiresAt") for m in msgs)
    _, req = srv.seen.get(timeout=5)
    assert req.meta.hostname == "s"
    try:
        s.next(timeout=0.3)
        raise AssertionError("a message out of nowhere")
    except queue.Empty:
        pass
    srv.release_sync.set()
    end, rest = s.wait_end(timeout=5)
    assert isinstance(end, StreamEnded) and rest == [], (end, rest)
    try:
        s.next(timeout=1)
        raise AssertionError("read after end")
    except StreamEnded:
        pass


@test
def sync_stream_error_status():
    srv = FakeServer(sync_items=1, end_sync_ok=False)
    a = agent(srv)
    s = a.sync()
    s.next(timeout=5)
    srv.release_sync.set()
    end, _ = s.wait_end(timeout=5)
    assert isinstance(end, RpcFailed) and end.code == SC.PERMISSION_DENIED, end
    assert "peer login has expired" in end.details


@test
def sync_undecryptable_item_is_protocol_error():
    srv = FakeServer(sync_items=-1)
    a = agent(srv)
    s = a.sync()
    try:
        s.next(timeout=5)
        raise AssertionError("garbage item decrypted")
    except ProtocolError:
        pass
    srv.release_sync.set()
    end, _ = s.wait_end(timeout=5)
    assert isinstance(end, StreamEnded), end


@test
def sync_wait_for_and_cancel():
    srv = FakeServer(sync_items=3)
    a = agent(srv)
    s = a.sync()
    m = s.wait_for(lambda m: m.NetworkMap.Serial == 3, timeout=5)
    assert m.NetworkMap.Serial == 3 and len(s.received) == 3
    s.cancel()          # the server is still holding the stream open
    srv.release_sync.set()


@test
def job_hello_and_unimplemented():
    srv = FakeServer()
    a = agent(srv)
    try:
        a.job()
        raise AssertionError("no error")
    except RpcFailed as e:
        assert e.code == SC.UNIMPLEMENTED, e
    env, hello = srv.seen.get(timeout=5)
    assert env.wgPubKey == a.pub_b64 and len(hello.ID) == 36, hello


@test
def logout_sends_sealed_empty():
    srv = FakeServer()
    a = agent(srv)
    assert a.logout() == pb.Empty()
    env, msg = srv.seen.get(timeout=5)
    assert len(env.body) == 40, len(env.body)


@test
def fixture_helpers():
    assert fixture.setup_key_hash("a2c8e5d1-1111-4222-8333-444455556666") == \
        fixture.setup_key_hash("A2C8E5D1-1111-4222-8333-444455556666")
    import hashlib
    want = base64.b64encode(hashlib.sha256(b"A2C8E5D1-1111-4222-8333-444455556666").digest()).decode()
    assert fixture.setup_key_hash("a2c8e5d1-1111-4222-8333-444455556666") == want
    out = fixture.parse_env_output("ACCOUNT_ID=abc\nSETUP_KEY='x y'\nNETWORK=100.64.0.0/16\n")
    assert out == {"ACCOUNT_ID": "abc", "SETUP_KEY": "x y", "NETWORK": "100.64.0.0/16"}, out


if __name__ == "__main__":
    raise SystemExit(svc.run_all())
