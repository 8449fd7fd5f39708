"""Fixtures for the ProxyService tests: proxy access tokens, services with
argon2id secrets and a sealed Ed25519 session key, users, groups and peers
written straight into PostgreSQL, a proxy client speaking NetBird's
proxy_service.proto, and an independent session-token verifier (PyNaCl).

Secrets are made the way the server expects them: argon2id in PHC form
through libargon2 (ctypes; Debian's python has no argon2 module), the
session seed sealed with AES-256-GCM under the test DataStoreEncryptionKey
(nonce || ciphertext || tag, standard base64).
"""

import base64
import ctypes
import ctypes.util
import json
import os
import secrets
import sys
import time
import zlib

import svc

sys.path.insert(0, os.environ.get("CP_PROTO_DIR", ""))
try:
    import grpc
    import proxy_service_pb2 as ppb
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import nacl.signing
    IMPORT_ERROR = None
except ImportError as e:        # reported per test
    ppb = None
    IMPORT_ERROR = str(e)

SVC = "/management.ProxyService/"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def need():
    if ppb is None:
        raise svc.Skip("proxy_service_pb2 / grpc / nacl not importable: %s" % IMPORT_ERROR)


def q(v):
    """An SQL literal (test values only)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "ARRAY[%s]::text[]" % ",".join(q(x) for x in v) if v else "'{}'::text[]"
    return "'" + str(v).replace("'", "''") + "'"


def rid(prefix=""):
    return prefix + secrets.token_hex(8)


# ---- secrets ---------------------------------------------------------------------

_argon2 = None


def argon2id(secret):
    """NetBird's parameters: m=19456, t=2, p=1, 16-byte salt, 32-byte key."""
    global _argon2
    if _argon2 is None:
        _argon2 = ctypes.CDLL(ctypes.util.find_library("argon2") or "libargon2.so.1")
    pwd = secret.encode()
    salt = os.urandom(16)
    out = ctypes.create_string_buffer(256)
    r = _argon2.argon2id_hash_encoded(ctypes.c_uint32(2), ctypes.c_uint32(19456), ctypes.c_uint32(1),
                                      pwd, ctypes.c_size_t(len(pwd)), salt, ctypes.c_size_t(16),
                                      ctypes.c_size_t(32), out, ctypes.c_size_t(256))
    assert r == 0, r
    return out.value.decode()


def seal(plain):
    key = base64.b64decode(svc.DATA_KEY)
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, None)).decode()


def proxy_token():
    body = "".join(secrets.choice(BASE62) for _ in range(30))
    crc = zlib.crc32(body.encode())
    cs = ""
    for _ in range(6):
        cs = BASE62[crc % 62] + cs
        crc //= 62
    tok = "nbx_" + body + cs
    import hashlib
    return tok, base64.b64encode(hashlib.sha256(tok.encode()).digest()).decode()


# ---- rows --------------------------------------------------------------------------

class Account:
    """An account made with SQL: its All group, an owner user."""

    def __init__(self, dsn, net="100.90.0.0/16"):
        self.dsn = dsn
        self.id = rid("acc")
        self.owner = rid("usr")
        svc.execute(dsn, "INSERT INTO accounts (id, created_by, domain, network_net) VALUES (%s, %s, %s, %s)"
                    % (q(self.id), q(self.owner), q(self.id + ".test"), q(net)))
        self.all_group = self.group("All")
        self.user(self.owner, email="owner@%s.test" % self.id, role="owner")

    def group(self, name):
        gid = rid("grp")
        svc.execute(self.dsn, "INSERT INTO groups (id, account_id, name) VALUES (%s, %s, %s)"
                    % (q(gid), q(self.id), q(name)))
        return gid

    def user(self, uid=None, email="", role="user", blocked=False, pending=False, auto_groups=()):
        uid = uid or rid("usr")
        svc.execute(self.dsn, "INSERT INTO users (id, account_id, role, email, blocked, pending_approval,"
                    " auto_groups) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    % (q(uid), q(self.id), q(role), q(email), q(blocked), q(pending), q(list(auto_groups))))
        return uid

    def peer(self, ip, name="peer", user_id=None, groups=()):
        pid = rid("peer")
        key = base64.b64encode(os.urandom(32)).decode()
        svc.execute(self.dsn, "INSERT INTO peers (id, account_id, key, ip, name, dns_label, user_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    % (q(pid), q(self.id), q(key), q(ip), q(name), q(pid), q(user_id)))
        for g in (self.all_group,) + tuple(groups):
            svc.execute(self.dsn, "INSERT INTO group_peers (account_id, group_id, peer_id) VALUES (%s, %s, %s)"
                        % (q(self.id), q(g), q(pid)))
        return pid

    def service(self, domain=None, auth=None, private=False, access_groups=(), key=True, pub=None, cluster=""):
        """Returns (service id, domain, signing key or None)."""
        sid = rid("svc")
        domain = domain or sid + ".proxy.test"
        sk = nacl.signing.SigningKey.generate() if key else None
        priv = seal(bytes(sk)) if sk else ""
        pub = pub if pub is not None else (base64.b64encode(bytes(sk.verify_key)).decode() if sk else "")
        svc.execute(self.dsn, "INSERT INTO services (id, account_id, name, domain, private, access_groups, auth,"
                    " session_private_key, session_public_key, proxy_cluster)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
                    % (q(sid), q(self.id), q(sid), q(domain), q(private), q(list(access_groups)),
                       q(json.dumps(auth or {})), q(priv), q(pub), q(cluster)))
        return sid, domain, sk

    def proxy_token(self, scoped=False):
        tok, hashed = proxy_token()
        svc.execute(self.dsn, "INSERT INTO proxy_access_tokens (id, name, hashed_token, account_id)"
                    " VALUES (%s, %s, %s, %s)" % (q(rid("ptk")), q("test"), q(hashed),
                                                   q(self.id if scoped else None)))
        return tok


def global_proxy_token(dsn):
    tok, hashed = proxy_token()
    svc.execute(dsn, "INSERT INTO proxy_access_tokens (id, name, hashed_token) VALUES (%s, %s, %s)"
                % (q(rid("ptk")), q("global"), q(hashed)))
    return tok


# ---- session tokens ---------------------------------------------------------------

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_session(token, verify_key_b64, domain):
    """PyNaCl, not our C code: the signature, NetBird's header and claims."""
    h, p, s = token.split(".")
    vk = nacl.signing.VerifyKey(base64.b64decode(verify_key_b64))
    vk.verify((h + "." + p).encode(), unb64url(s))      # raises on a bad signature
    header = json.loads(unb64url(h))
    claims = json.loads(unb64url(p))
    assert header == {"alg": "EdDSA", "typ": "JWT"}, header
    assert claims["iss"] == "netbird-management" and claims["aud"] == [domain], claims
    now = time.time()
    assert claims["nbf"] <= now + 5 and claims["iat"] <= now + 5, claims
    assert abs(claims["exp"] - claims["iat"] - 86400) <= 1, claims
    return claims


def mint_session(sk, sub, domain, method="oidc", exp_in=86400, iss="netbird-management"):
    now = int(time.time())
    h = b64url(b'{"alg":"EdDSA","typ":"JWT"}')
    p = b64url(json.dumps({"iss": iss, "sub": sub, "aud": [domain], "exp": now + exp_in, "nbf": now - 1,
                           "iat": now - 1, "method": method}).encode())
    sig = sk.sign((h + "." + p).encode()).signature
    return h + "." + p + "." + b64url(sig)


# ---- the proxy client ----------------------------------------------------------------

class Proxy:
    """A proxy's unary calls on one replica, with its access token."""

    def __init__(self, srv, token):
        need()
        self.ch = grpc.insecure_channel("127.0.0.1:%d" % srv.grpc_port)
        self.ch.subscribe(lambda state: None, try_to_connect=True)
        svc.defer(self.ch.close)
        self.md = (("authorization", "Bearer " + token),)

    def call(self, name, req, resp_type):
        f = self.ch.unary_unary(SVC + name, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=resp_type.FromString)
        return f(req, metadata=self.md, timeout=20)

    def code(self, name, req, resp_type):
        """(status code, details) of a call expected to fail."""
        try:
            self.call(name, req, resp_type)
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError("%s succeeded" % name)

    def authenticate(self, **kw):
        return self.call("Authenticate", ppb.AuthenticateRequest(**kw), ppb.AuthenticateResponse)

    def validate_session(self, domain, token):
        return self.call("ValidateSession", ppb.ValidateSessionRequest(domain=domain, session_token=token),
                         ppb.ValidateSessionResponse)

    def mapping_tokens(self, cluster):
        """The one-time tokens of the snapshot a GetMappingUpdate stream of
        cluster starts with: {service id: auth_token}."""
        f = self.ch.unary_stream(SVC + "GetMappingUpdate", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=ppb.GetMappingUpdateResponse.FromString)
        req = ppb.GetMappingUpdateRequest(proxy_id=rid("proxy-"), version="test", address=cluster)
        stream = f(req, metadata=self.md, timeout=20)
        out = {}
        try:
            for msg in stream:
                for m in msg.mapping:
                    out[m.id] = m.auth_token
                if msg.initial_sync_complete:
                    break
        finally:
            stream.cancel()
        return out

    def validate_tunnel_peer(self, domain, ip):
        return self.call("ValidateTunnelPeer", ppb.ValidateTunnelPeerRequest(domain=domain, tunnel_ip=ip),
                         ppb.ValidateTunnelPeerResponse)
