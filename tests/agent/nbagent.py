"""An agent-like client of the NetBird management protocol, for tests.

It knows only what a stock NetBird agent knows: the public wire schema
(management_pb2, generated from proto/management.proto at build time), the
NaCl box envelope and the order of calls the agent makes
(docs: netbird-protocol.md sections 1-4). Nothing here looks at the
server's database or code.

    agent = Agent("127.0.0.1:33073")                 # h2c
    agent = Agent(addr, tls=True, root_certs=pem)     # TLS
    resp = agent.login(setup_key=key, meta=build_meta("peer-1"))
    stream = agent.sync()
    first = stream.next(timeout=10)

Every encrypted call fetches the server key first (as the agent does) and
seals the request with the agent's private key and that server key; the
response is opened with the same pair. A gRPC failure raises RpcFailed
(code + details); a response that does not decrypt or parse raises
ProtocolError, which always means a server bug.

Run by /usr/bin/python3 (grpcio, protobuf, PyNaCl). management_pb2 is
found through CP_PROTO_DIR (meson sets it) or an already set sys.path.
"""

import base64
import os
import queue
import sys
import threading
import uuid

import grpc
import nacl.exceptions
import nacl.public
import nacl.utils

if os.environ.get("CP_PROTO_DIR") and os.environ["CP_PROTO_DIR"] not in sys.path:
    sys.path.insert(0, os.environ["CP_PROTO_DIR"])
import management_pb2 as pb  # noqa: E402  (generated; see proto/README.md)

SERVICE = "/management.ManagementService/"
NONCE_LEN = 24
DEFAULT_TIMEOUT = 10.0


class RpcFailed(Exception):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, method, code, details):
        super().__init__("%s: %s %r" % (method, code.name if code else None, details))
        self.method = method
        self.code = code
        self.details = details or ""


class ProtocolError(Exception):
    """The server answered, but not with what the protocol promises
    (undecryptable body, unparsable message, wrong key in the envelope)."""


class WaitTimeout(queue.Empty):
    """A bounded wait on a stream ran out (a queue.Empty with a message)."""


def _short(msg, limit=1500):
    from google.protobuf import json_format
    import json
    return json.dumps(json_format.MessageToDict(msg), sort_keys=True)[:limit]


class StreamEnded(Exception):
    """The server closed a stream with status OK (a clean EOF)."""


# ---- keys and envelope ---------------------------------------------------------

def b64(raw):
    return base64.b64encode(raw).decode("ascii")


def key_from_b64(text):
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes, got %d" % len(raw))
    return nacl.public.PublicKey(raw)


def new_private_key():
    """A WireGuard private key. X25519 clamps on use, so 32 random bytes do;
    we clamp anyway so the stored form matches `wg genkey`."""
    raw = bytearray(nacl.utils.random(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return nacl.public.PrivateKey(bytes(raw))


def seal(plaintext, our_priv, their_pub):
    """nonce(24) || tag(16) || ciphertext: NaCl box, as NetBird's encryption
    package produces it (PyNaCl's Box.encrypt already prefixes the nonce)."""
    nonce = nacl.utils.random(NONCE_LEN)
    return bytes(nacl.public.Box(our_priv, their_pub).encrypt(plaintext, nonce))


def open_box(body, our_priv, their_pub):
    if len(body) < NONCE_LEN:
        raise ProtocolError("sealed body shorter than a nonce (%d bytes)" % len(body))
    try:
        return nacl.public.Box(our_priv, their_pub).decrypt(body)
    except nacl.exceptions.CryptoError as e:
        raise ProtocolError("body does not open with our key and the server key: %s" % e) from None


def parse(cls, data):
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as e:      # google.protobuf.message.DecodeError
        raise ProtocolError("cannot parse %s: %s" % (cls.__name__, e)) from None
    return msg


# ---- system meta ------------------------------------------------------------------

def build_meta(hostname="agent-1", netbird_version="0.60.0", **over):
    """A PeerSystemMeta like the Linux agent sends (client/system on Debian):
    capabilities 1 (source prefixes) and 2 (IPv6 overlay), sync message
    version 1. Keyword arguments override top-level fields."""
    m = pb.PeerSystemMeta(
        hostname=hostname,
        goOS="linux",
        kernel="Linux",
        core="12",
        platform="x86_64",
        OS="Debian GNU/Linux",
        netbirdVersion=netbird_version,
        uiVersion="",
        kernelVersion="6.1.0-18-amd64",
        OSVersion="12",
        sysSerialNumber="SN-%s" % hostname,
        sysProductName="Standard PC (Q35 + ICH9, 2009)",
        sysManufacturer="QEMU",
        environment=pb.Environment(cloud="", platform=""),
        flags=pb.Flags(rosenpassEnabled=False, serverSSHAllowed=False, lazyConnectionEnabled=False),
        capabilities=[pb.PeerCapabilitySourcePrefixes, pb.PeerCapabilityIPv6Overlay],
        syncMessageVersion=1,
    )
    m.networkAddresses.add(netIP="192.168.122.17/24", mac="52:54:00:12:34:56")
    m.networkAddresses.add(netIP="fe80::5054:ff:fe12:3456/64", mac="52:54:00:12:34:56")
    m.files.add(path="/usr/bin/netbird", exist=True, processIsRunning=True)
    for k, v in over.items():
        if k in ("capabilities", "networkAddresses", "files"):
            m.ClearField(k)
            getattr(m, k).extend(v)
        elif k in ("environment", "flags"):
            getattr(m, k).CopyFrom(v)
        else:
            setattr(m, k, v)
    return m


# ---- the client -------------------------------------------------------------------

class Agent:
    """One agent identity (a WireGuard key pair) and one HTTP/2 connection."""

    def __init__(self, target, private_key=None, tls=False, root_certs=None, server_name=None,
                 timeout=DEFAULT_TIMEOUT, options=()):
        """options: extra gRPC channel arguments, e.g. keepalive settings."""
        self.target = target
        self.key = private_key or new_private_key()
        self.pub = self.key.public_key
        self.pub_b64 = b64(bytes(self.pub))
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)] + list(options)
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certs)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        # Keep the channel reading its socket while idle, as a Go agent does,
        # so the server's graceful GOAWAY ping is answered at shutdown.
        self._sub = lambda state: None
        self.channel.subscribe(self._sub, try_to_connect=True)
        self.server_key = None          # last key fetched, nacl PublicKey
        self._streams = []

    def close(self):
        if self.channel is None:
            return
        for s in list(self._streams):
            s.cancel()
        try:
            self.channel.unsubscribe(self._sub)
        except Exception:
            pass
        self.channel.close()
        self.channel = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw calls ------------------------------------------------------------

    def _unary(self, method, req_bytes, timeout=None):
        fn = self.channel.unary_unary(SERVICE + method)     # bytes in, bytes out
        try:
            return fn(req_bytes, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise RpcFailed(method, e.code(), e.details()) from None

    def call_raw(self, method, envelope, timeout=None):
        """Sends an EncryptedMessage (or any message) as is; returns the raw
        response bytes. For malformed-request tests."""
        data = envelope if isinstance(envelope, bytes) else envelope.SerializeToString()
        return self._unary(method, data, timeout)

    def envelope(self, inner, server_key=None):
        """EncryptedMessage{wgPubKey: ours, body: sealed(inner)}."""
        server_key = server_key or self.get_server_key()
        data = inner if isinstance(inner, bytes) else inner.SerializeToString()
        return pb.EncryptedMessage(wgPubKey=self.pub_b64, body=seal(data, self.key, server_key))

    def _encrypted_unary(self, method, inner, resp_cls, timeout=None):
        """GetServerKey, seal, call, open. resp_cls None: plaintext Empty."""
        server_key = self.get_server_key()
        raw = self.call_raw(method, self.envelope(inner, server_key), timeout)
        if resp_cls is None:
            return parse(pb.Empty, raw)
        env = parse(pb.EncryptedMessage, raw)
        if env.wgPubKey != b64(bytes(server_key)):
            raise ProtocolError("%s response envelope carries key %r, GetServerKey said %r" %
                                (method, env.wgPubKey, b64(bytes(server_key))))
        return parse(resp_cls, open_box(env.body, self.key, server_key))

    # -- plaintext RPCs ---------------------------------------------------------

    def get_server_key_response(self, timeout=5.0):
        raw = self._unary("GetServerKey", pb.Empty().SerializeToString(), timeout)
        return parse(pb.ServerKeyResponse, raw)

    def get_server_key(self):
        """The server's public key (nacl PublicKey); the agent fetches it
        before every call and every stream (5 s timeout)."""
        resp = self.get_server_key_response()
        try:
            self.server_key = key_from_b64(resp.key)
        except Exception as e:
            raise ProtocolError("GetServerKey returned an unusable key %r: %s" % (resp.key, e))
        return self.server_key

    def is_healthy(self, timeout=5.0):
        parse(pb.Empty, self._unary("isHealthy", pb.Empty().SerializeToString(), timeout))
        return True

    # -- login / registration ---------------------------------------------------

    def login_request(self, setup_key=None, meta=None, ssh_pub_key=None, dns_labels=None, jwt_token=None,
                      with_meta=True):
        req = pb.LoginRequest()
        if setup_key:
            # The agent validates the key as a UUID and sends the canonical
            # lower-case form; anything else is sent as given.
            try:
                setup_key = str(uuid.UUID(setup_key))
            except ValueError:
                pass
            req.setupKey = setup_key
        if with_meta:
            req.meta.CopyFrom(meta if meta is not None else build_meta())
        if jwt_token:
            req.jwtToken = jwt_token
        req.peerKeys.wgPubKey = self.pub_b64.encode()
        if ssh_pub_key:
            req.peerKeys.sshPubKey = ssh_pub_key if isinstance(ssh_pub_key, bytes) else ssh_pub_key.encode()
        if dns_labels:
            req.dnsLabels.extend(dns_labels)
        return req

    def login(self, setup_key=None, meta=None, ssh_pub_key=None, dns_labels=None, jwt_token=None,
              with_meta=True, timeout=None):
        """Login (registration when setup_key/jwt is given and the key is new).
        Returns the decrypted LoginResponse or raises RpcFailed."""
        req = self.login_request(setup_key, meta, ssh_pub_key, dns_labels, jwt_token, with_meta)
        return self._encrypted_unary("Login", req, pb.LoginResponse, timeout)

    def register(self, setup_key, meta=None, **kw):
        """What `netbird up --setup-key` does: a bare Login first; only on
        PermissionDenied the Login with the setup key."""
        try:
            return self.login(meta=meta, **kw)
        except RpcFailed as e:
            if e.code != grpc.StatusCode.PERMISSION_DENIED:
                raise
        return self.login(setup_key=setup_key, meta=meta, **kw)

    # -- other unary RPCs ---------------------------------------------------------

    def sync_meta(self, meta=None, with_meta=True):
        req = pb.SyncMetaRequest()
        if with_meta:
            req.meta.CopyFrom(meta if meta is not None else build_meta())
        return self._encrypted_unary("SyncMeta", req, None)

    def logout(self):
        return self._encrypted_unary("Logout", pb.Empty(), None, timeout=15)

    def device_flow(self):
        return self._encrypted_unary("GetDeviceAuthorizationFlow", pb.DeviceAuthorizationFlowRequest(),
                                     pb.DeviceAuthorizationFlow, timeout=2)

    def pkce_flow(self):
        return self._encrypted_unary("GetPKCEAuthorizationFlow", pb.PKCEAuthorizationFlowRequest(),
                                     pb.PKCEAuthorizationFlow, timeout=2)

    def extend_auth_session(self, jwt_token, meta=None):
        req = pb.ExtendAuthSessionRequest(jwtToken=jwt_token, meta=meta if meta is not None else build_meta())
        return self._encrypted_unary("ExtendAuthSession", req, pb.ExtendAuthSessionResponse)

    def create_expose(self, port, protocol=0, pin="", password="", user_groups=(), domain="", name_prefix="",
                      listen_port=0):
        """CreateExpose (NetBird's `netbird expose`); protocol an ExposeProtocol value."""
        req = pb.ExposeServiceRequest(port=port, protocol=protocol, pin=pin, password=password,
                                      user_groups=list(user_groups), domain=domain, name_prefix=name_prefix,
                                      listen_port=listen_port)
        return self._encrypted_unary("CreateExpose", req, pb.ExposeServiceResponse)

    def renew_expose(self, domain):
        return self._encrypted_unary("RenewExpose", pb.RenewExposeRequest(domain=domain), pb.RenewExposeResponse)

    def stop_expose(self, domain):
        return self._encrypted_unary("StopExpose", pb.StopExposeRequest(domain=domain), pb.StopExposeResponse)

    # -- streams ----------------------------------------------------------------

    def sync(self, meta=None, timeout=120.0, metadata=None):
        """Opens Sync and returns a SyncStream. Items are decrypted with the
        server key fetched right before opening, as the agent does.
        metadata: extra request headers, e.g. [("x-forwarded-for", ip)]."""
        server_key = self.get_server_key()
        req = pb.SyncRequest(meta=meta if meta is not None else build_meta())
        env = self.envelope(req, server_key)
        fn = self.channel.unary_stream(SERVICE + "Sync")
        call = fn(env.SerializeToString(), timeout=timeout, metadata=metadata)
        s = SyncStream(self, call, server_key)
        self._streams.append(s)
        return s

    def job(self, timeout=10.0):
        """Opens Job with the agent's hello (a sealed JobRequest with a random
        ID) and returns the first decrypted JobRequest, or raises RpcFailed /
        StreamEnded. The stream is cancelled afterwards."""
        server_key = self.get_server_key()
        hello = pb.JobRequest(ID=str(uuid.uuid4()).encode())
        env = self.envelope(hello, server_key)
        done = threading.Event()

        def requests():
            yield env.SerializeToString()
            done.wait(timeout)      # keep our side open while we read

        fn = self.channel.stream_stream(SERVICE + "Job")
        call = fn(requests(), timeout=timeout)
        try:
            for raw in call:
                e = parse(pb.EncryptedMessage, raw)
                return parse(pb.JobRequest, open_box(e.body, self.key, server_key))
            raise StreamEnded("Job")
        except grpc.RpcError as e:
            raise RpcFailed("Job", e.code(), e.details()) from None
        finally:
            done.set()
            call.cancel()


class SyncStream:
    """A running Sync call. A reader thread decrypts every item into a queue,
    so tests can wait with a bound: next(timeout) returns a SyncResponse,
    raises StreamEnded on a clean end (status OK), RpcFailed on an error
    status, ProtocolError on an undecryptable item, queue.Empty on timeout."""

    _END = object()

    def __init__(self, agent, call, server_key):
        self.agent = agent
        self.call = call
        self.server_key = server_key
        self.q = queue.Queue()
        self.received = []
        self.ended = None           # None while open; StreamEnded / RpcFailed / ProtocolError after
        self.cancelled = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        try:
            for raw in self.call:
                try:
                    env = parse(pb.EncryptedMessage, raw)
                    msg = parse(pb.SyncResponse, open_box(env.body, self.agent.key, self.server_key))
                except ProtocolError as e:
                    self.q.put(e)
                    continue
                self.q.put(msg)
            self.q.put(StreamEnded("Sync"))
        except grpc.RpcError as e:
            self.q.put(RpcFailed("Sync", e.code(), e.details()))
        except Exception as e:      # should not happen; surface it
            self.q.put(ProtocolError("Sync reader: %r" % e))
        self.q.put(self._END)

    def next(self, timeout=10.0):
        if self.ended is not None:
            raise self.ended
        item = self.q.get(timeout=timeout)
        if item is self._END:
            raise StreamEnded("Sync")
        if isinstance(item, (StreamEnded, RpcFailed)):
            self.ended = item
            raise item
        if isinstance(item, ProtocolError):
            raise item
        self.received.append(item)
        return item

    def wait_for(self, pred, timeout=10.0):
        """Reads until pred(msg) holds; returns that message. Messages before
        it are kept in .received."""
        import time
        deadline = time.monotonic() + timeout
        start = len(self.received)
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty()
                msg = self.next(timeout=left)
            except queue.Empty:
                got = self.received[start:]
                raise WaitTimeout("no matching Sync message within %.1fs; %d other(s) arrived%s" % (
                    timeout, len(got), (", the last: " + _short(got[-1])) if got else "")) from None
            if pred(msg):
                return msg

    def wait_end(self, timeout=10.0):
        """Drains until the stream ends; returns the ending exception
        (StreamEnded or RpcFailed) and the messages read meanwhile."""
        import time
        deadline = time.monotonic() + timeout
        msgs = []
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty()
                msgs.append(self.next(timeout=left))
            except (StreamEnded, RpcFailed) as e:
                return e, msgs
            except queue.Empty:
                raise WaitTimeout("Sync stream did not end within %.1fs (%d message(s) meanwhile)" % (
                    timeout, len(msgs))) from None

    def __iter__(self):
        while True:
            try:
                yield self.next(timeout=self.agent.timeout)
            except StreamEnded:
                return

    def cancel(self):
        self.cancelled = True
        self.call.cancel()
        self._t.join(5)
        if self in self.agent._streams:
            self.agent._streams.remove(self)


def remote_keys(msg):
    """The WireGuard keys of a SyncResponse's remote peers, as a set."""
    return {p.wgPubKey for p in msg.NetworkMap.remotePeers}


# ---- command line: poke a running server by hand -----------------------------------

def _main(argv=None):
    """python3 nbagent.py [--target HOST:PORT] [--tls [--ca FILE] [--server-name N]]
                          [--key-file F] COMMAND [args]
    COMMAND: health | server-key | login [SETUP_KEY] | register SETUP_KEY |
             sync [N] | sync-meta | logout
    The target defaults to $MGMT_GRPC. --key-file keeps the agent's private
    key (base64) between runs; it is created when missing. Responses are
    printed as JSON."""
    import argparse
    import json as _json
    from google.protobuf import json_format

    ap = argparse.ArgumentParser(description="NetBird-like test agent")
    ap.add_argument("--target", default=os.environ.get("MGMT_GRPC", ""))
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca", help="PEM file with the root certificates (default: system roots)")
    ap.add_argument("--server-name", help="TLS name to verify instead of the target host")
    ap.add_argument("--key-file", help="base64 WireGuard private key; created when missing")
    ap.add_argument("--hostname", default=os.uname().nodename)
    ap.add_argument("command", choices=["health", "server-key", "login", "register", "sync", "sync-meta", "logout"])
    ap.add_argument("arg", nargs="?")
    o = ap.parse_args(argv)
    if not o.target:
        ap.error("no target: give --target or set MGMT_GRPC")
    key = None
    if o.key_file:
        if os.path.exists(o.key_file):
            with open(o.key_file) as f:
                key = nacl.public.PrivateKey(base64.b64decode(f.read().strip()))
        else:
            key = new_private_key()
            with open(os.open(o.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(b64(bytes(key)) + "\n")
    roots = open(o.ca, "rb").read() if o.ca else None
    out = lambda m: print(_json.dumps(json_format.MessageToDict(m), indent=1, sort_keys=True))
    meta = build_meta(o.hostname)
    with Agent(o.target, private_key=key, tls=o.tls, root_certs=roots, server_name=o.server_name) as a:
        print("# peer key " + a.pub_b64, file=sys.stderr)
        try:
            if o.command == "health":
                a.is_healthy()
                print("healthy")
            elif o.command == "server-key":
                out(a.get_server_key_response())
            elif o.command == "login":
                out(a.login(setup_key=o.arg, meta=meta))
            elif o.command == "register":
                out(a.register(o.arg, meta=meta))
            elif o.command == "sync":
                s = a.sync(meta=meta, timeout=3600)
                for _ in range(int(o.arg or 1)):
                    out(s.next(timeout=3600))
                s.cancel()
            elif o.command == "sync-meta":
                a.sync_meta(meta)
                print("ok")
            elif o.command == "logout":
                a.logout()
                print("ok")
        except (RpcFailed, ProtocolError, StreamEnded) as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
