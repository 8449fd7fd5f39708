"""A reverse-proxy test client for management.ProxyService, speaking
NetBird's proto (proxy_service_pb2 from the build, CP_PROTO_DIR), plus the
SQL helpers the proxy tests share: proxy access tokens, services and
change-log rows written the way the REST API writes them (the change-log
row under the advisory lock, in the same transaction), and the bus hint.
"""

import base64
import hashlib
import os
import queue
import secrets
import socket
import sys
import threading
import time
import zlib

sys.path.insert(0, os.environ.get("CP_PROTO_DIR", ""))

import grpc  # noqa: E402
import proxy_service_pb2 as pb  # noqa: E402

SVC = "/management.ProxyService/"
# cp/store-services.h CP_STORE_PROXY_CHANGES_LOCK ("nbproxy").
CHANGES_LOCK = 0x6e6270726f7879
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_token():
    """A well-formed nbx_ token (30 base62 + CRC32 checksum)."""
    body = "".join(secrets.choice(BASE62) for _ in range(30))
    crc = zlib.crc32(body.encode()) & 0xffffffff
    sum_ = ""
    for _ in range(6):
        sum_ = BASE62[crc % 62] + sum_
        crc //= 62
    return "nbx_" + body + sum_


def token_hash(tok):
    return base64.b64encode(hashlib.sha256(tok.encode()).digest()).decode()


def add_token(dep, account_id=None, expires_sql="NULL", revoked=False):
    """Inserts a proxy access token; returns (id, plain)."""
    tok = new_token()
    tid = "pt" + secrets.token_hex(8)
    dep.sql("INSERT INTO proxy_access_tokens (id, name, hashed_token, account_id, expires_at, revoked)"
            " VALUES (%s, %s, %s, %s, " + expires_sql + ", %s)",
            (tid, "test " + tid, token_hash(tok), account_id, revoked))
    return tid, tok


SERVICE_COLS = ("id, account_id, name, domain, proxy_cluster, mode, listen_port, enabled, private,"
                " targets, auth, session_private_key, session_public_key")


def service_values(account_id, cluster, i=None, sid=None, mode="http", port=0, enabled=True, private=False):
    sid = sid or "svc" + secrets.token_hex(6)
    dom = "%s.%s" % (sid, cluster)
    # A subnet target keeps its own host (peer and resource targets are
    # looked up: test_proxy_stream.mapping_targets_looked_up).
    targets = '[{"target_id": "n1", "target_type": "subnet", "protocol": "http", "host": "10.0.0.1",' \
              ' "port": 8080, "path": "/", "enabled": true}]'
    return (sid, account_id, "svc " + sid, dom, cluster, mode, port, enabled, private, targets,
            '{"password_auth": {"enabled": true, "password": "$argon2id$x"}}', "sealed", "pubkey=")


def add_services(dep, account_id, cluster, n=1, change=False, **kw):
    """Inserts n services (and, with change, their CREATED change-log rows
    in the same transaction under the advisory lock). Returns
    (ids, last seq or 0)."""
    import psycopg2
    conn = psycopg2.connect(dep.dsn)
    ids, seq = [], 0
    try:
        with conn, conn.cursor() as cur:
            if change:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
            rows = [service_values(account_id, cluster, **kw) for _ in range(n)]
            ids = [r[0] for r in rows]
            args = b",".join(cur.mogrify("(" + ",".join(["%s"] * 13) + ")", r) for r in rows)
            cur.execute(b"INSERT INTO services (" + SERVICE_COLS.encode() + b") VALUES " + args)
            if change:
                for r in rows:
                    cur.execute("INSERT INTO proxy_mapping_changes (account_id, service_id, op, cluster, domain)"
                                " VALUES (%s, %s, 0, %s, %s) RETURNING seq", (account_id, r[0], cluster, r[3]))
                    seq = cur.fetchone()[0]
    finally:
        conn.close()
    return ids, seq


def add_many_services(dep, account_id, cluster, n):
    """n services in one statement (generate_series), no change-log rows."""
    dep.sql("INSERT INTO services (" + SERVICE_COLS + ") SELECT 'bulk' || lpad(g::text, 6, '0'), %s,"
            " 'bulk ' || g, 'bulk' || g || '.' || %s, %s, 'http', 0, true, false,"
            " '[{\"protocol\": \"http\", \"host\": \"10.0.0.1\", \"port\": 80, \"enabled\": true}]', '{}',"
            " 'sealed', 'pubkey=' FROM generate_series(1, %s) g", (account_id, cluster, cluster, n))


def publish(redis_url, channel_prefix, account_id, serial):
    """PUBLISH "<account_id> <serial>" on the bus channel (raw RESP)."""
    hostport = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    chan = channel_prefix + ":account-serial"
    payload = "%s %d" % (account_id, serial)
    parts = ["PUBLISH", chan, payload]
    cmd = "*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(p.encode()), p) for p in parts)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(cmd.encode())
        return s.recv(64)


def caps(**kw):
    return pb.ProxyCapabilities(**kw)


class Proxy:
    """One proxy connection to a server's gRPC port."""

    def __init__(self, target, token):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)])
        self.md = [("authorization", "Bearer " + token)] if token is not None else []

    def close(self):
        self.channel.close()

    def unary(self, method, req, resp_cls, md=None):
        fn = self.channel.unary_unary(SVC + method, request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=resp_cls.FromString)
        return fn(req, metadata=self.md if md is None else md, timeout=10)

    def get_mapping_update(self, proxy_id, address, capabilities=None, md=None, timeout=None):
        fn = self.channel.unary_stream(SVC + "GetMappingUpdate",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=pb.GetMappingUpdateResponse.FromString)
        req = pb.GetMappingUpdateRequest(proxy_id=proxy_id, version="test", address=address,
                                         capabilities=capabilities)
        return fn(req, metadata=self.md if md is None else md, timeout=timeout)

    def sync(self, md=None, timeout=None):
        return SyncStream(self, md, timeout)


class SyncStream:
    """SyncMappings: requests are fed through a queue; responses land in
    another with their arrival time (a reader thread)."""

    def __init__(self, proxy, md, timeout):
        self.out = queue.Queue()
        self.got = queue.Queue()
        self.acks = []                  # monotonic times acks were handed to gRPC
        fn = proxy.channel.stream_stream(SVC + "SyncMappings",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=pb.SyncMappingsResponse.FromString)
        self.call = fn(self._requests(), metadata=proxy.md if md is None else md, timeout=timeout)
        self.error = None
        self.done = threading.Event()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _requests(self):
        while True:
            m = self.out.get()
            if m is None:
                return
            if m.HasField("ack"):
                self.acks.append(time.monotonic())
            yield m

    def _read(self):
        try:
            for r in self.call:
                self.got.put((time.monotonic(), r))
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()

    def send_init(self, proxy_id, address, capabilities=None):
        self.out.put(pb.SyncMappingsRequest(init=pb.SyncMappingsInit(
            proxy_id=proxy_id, version="test", address=address, capabilities=capabilities)))

    def send_ack(self):
        self.out.put(pb.SyncMappingsRequest(ack=pb.SyncMappingsAck()))

    def send_raw(self, msg):
        self.out.put(msg)

    def next(self, timeout=15):
        """(arrival time, SyncMappingsResponse); raises on end or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.got.get(timeout=0.05)
            except queue.Empty:
                if self.done.is_set() and self.got.empty():
                    raise StreamEnded(self.error)
                if time.monotonic() > deadline:
                    raise TimeoutError("no SyncMappings message within %.1fs" % timeout)

    def quiet(self, seconds):
        """True when nothing arrives for seconds."""
        try:
            self.got.get(timeout=seconds)
            return False
        except queue.Empty:
            return True

    def wait_end(self, timeout=15):
        """The status code and details the stream ended with."""
        if not self.done.wait(timeout):
            raise TimeoutError("SyncMappings did not end within %.1fs" % timeout)
        if self.error is None:
            return grpc.StatusCode.OK, ""
        return self.error.code(), self.error.details()

    def close(self):
        self.out.put(None)
        self.call.cancel()


class StreamEnded(Exception):
    def __init__(self, error):
        super().__init__(repr(error))
        self.error = error

    def code(self):
        return self.error.code() if self.error else grpc.StatusCode.OK

    def details(self):
        return self.error.details() if self.error else ""


def snapshot(stream, ack=True, timeout=30):
    """Reads a SyncMappings snapshot (acking each batch); returns
    (mappings, batches)."""
    maps, batches = [], 0
    while True:
        _, r = stream.next(timeout)
        batches += 1
        maps.extend(r.mapping)
        if ack:
            stream.send_ack()
        if r.initial_sync_complete:
            return maps, batches


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rest(srv, token, method, path, body=None):
    """The REST API with a PAT: (status, decoded JSON or None)."""
    import json
    import urllib.error
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (srv.http_port, path), data=data, method=method,
                                 headers={"Authorization": "Token " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def add_peer_service(dep, srv, cluster):
    """A peer row (IP .7 of the account's network) and, through the REST
    API of srv, an HTTP service app.<cluster> targeting it on port 8080;
    returns (the created service's JSON, the request body, for a PUT)."""
    pid = "peer" + secrets.token_hex(8)
    dep.sql("INSERT INTO peers (id, account_id, key, ip, name, dns_label) VALUES (%s, %s, %s, %s, %s, %s)",
            (pid, dep.account_id, secrets.token_hex(16) + "=", str(dep.network.network_address + 7), pid, pid))
    body = {"name": "app", "domain": "app." + cluster, "enabled": True,
            "targets": [{"target_id": pid, "target_type": "peer", "protocol": "http", "port": 8080,
                         "enabled": True}]}
    st, created = rest(srv, dep.admin_token, "POST", "/api/reverse-proxies/services", body)
    assert st == 200, (st, created)
    return created, body
