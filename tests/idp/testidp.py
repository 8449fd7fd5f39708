"""A test identity provider on loopback, for tests that need IdP-signed
JWTs without a browser flow: RSA and EC signing keys, a JWKS and an OIDC
discovery document served over HTTP, tokens minted with PyJWT.

    idp = testidp.TestIdP()                 # serves on 127.0.0.1:<free port>
    cfg = idp.http_config()                 # HttpConfig keys for management.json
    tok = idp.token("user-1", email="a@example.com", groups=["devs"])
    idp.rotate()                            # a new kid; the old key may stay or go
    idp.down = True                         # the IdP answers 503 from now on
    idp.stop()

The real OIDC provider (authorization code + PKCE) is deploy/oidc; this one
is for validator cases a real provider never produces (bad algorithms,
wrong issuers, tampered signatures).
"""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "netbird-test-client"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n):
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Key:
    def __init__(self, kid, kind):
        self.kid, self.kind = kid, kind
        if kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        self.public = self.private.public_key()

    def jwk(self):
        if self.kind == "RSA":
            n = self.public.public_numbers()
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                    "n": _int_b64(n.n), "e": _int_b64(n.e)}
        n = self.public.public_numbers()
        return {"kty": "EC", "kid": self.kid, "use": "sig", "alg": self.alg, "crv": "P-256",
                "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}

    def public_pem(self):
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)


class TestIdP:
    def __init__(self, audience=AUDIENCE, max_age=3600, issuer_path=""):
        self.audience = audience
        self.max_age = max_age
        self.down = False
        self.fetches = 0              # JWKS requests served (any answer)
        self.discovery_fetches = 0
        self.keys = {"rsa1": Key("rsa1", "RSA"), "ec1": Key("ec1", "EC")}
        self.published = ["rsa1", "ec1"]
        self._lock = threading.Lock()
        self._next = 2
        # The token endpoint (authorization-code grant): code -> the ID
        # token it answers with; each code works once. token_requests
        # keeps every form posted, for PKCE checks.
        self.codes = {}
        self.token_requests = []
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with idp._lock:
                    if path.endswith("/.well-known/jwks.json"):
                        idp.fetches += 1
                    elif path.endswith("/.well-known/openid-configuration"):
                        idp.discovery_fetches += 1
                    down = idp.down
                if down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.endswith("/.well-known/jwks.json"):
                    body = json.dumps(idp.jwks()).encode()
                    cc = "public, max-age=%d" % idp.max_age
                elif path.endswith("/.well-known/openid-configuration"):
                    body = json.dumps(idp.discovery()).encode()
                    cc = "no-cache"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", cc)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                import urllib.parse
                n = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(n).decode()).items()}
                with idp._lock:
                    idp.token_requests.append(form)
                    id_token = idp.codes.pop(form.get("code", ""), None) \
                        if form.get("grant_type") == "authorization_code" else None
                if self.path.split("?")[0].endswith("/token") and id_token:
                    body = json.dumps({"access_token": "at", "token_type": "Bearer", "expires_in": 300,
                                       "id_token": id_token}).encode()
                    self.send_response(200)
                else:
                    body = json.dumps({"error": "invalid_grant"}).encode()
                    self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        self.base = "http://127.0.0.1:%d%s" % (self.port, issuer_path)
        self.issuer = self.base + "/"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    # ---- what the server reads

    @property
    def jwks_url(self):
        return self.base + "/.well-known/jwks.json"

    @property
    def discovery_url(self):
        return self.base + "/.well-known/openid-configuration"

    def jwks(self):
        with self._lock:
            return {"keys": [self.keys[k].jwk() for k in self.published]}

    def discovery(self):
        return {"issuer": self.issuer, "jwks_uri": self.jwks_url,
                "authorization_endpoint": self.base + "/auth", "token_endpoint": self.base + "/token"}

    def http_config(self, **extra):
        """management.json HttpConfig for this IdP."""
        cfg = {"AuthIssuer": self.issuer, "AuthAudience": self.audience,
               "AuthKeysLocation": self.jwks_url, "AuthUserIDClaim": "sub",
               "IdpSignKeyRefreshEnabled": True}
        cfg.update(extra)
        return cfg

    # ---- keys

    def rotate(self, kind="RSA", keep_old=True):
        """Adds (and publishes) a new key; returns its kid."""
        with self._lock:
            kid = "%s%d" % (kind.lower(), self._next)
            self._next += 1
            self.keys[kid] = Key(kid, kind)
            self.published = (self.published if keep_old else []) + [kid]
            return kid

    # ---- tokens

    def claims(self, sub, email=None, name=None, groups=None, aud=None, iss=None, exp_in=3600,
               nbf=None, iat=None, extra=None, groups_claim="groups"):
        now = int(time.time())
        c = {"iss": self.issuer if iss is None else iss, "sub": sub,
             "aud": self.audience if aud is None else aud,
             "iat": now if iat is None else iat, "exp": now + exp_in}
        if nbf is not None:
            c["nbf"] = nbf
        if email is not None:
            c["email"] = email
        if name is not None:
            c["name"] = name
        if groups is not None:
            c[groups_claim] = groups
        if extra:
            c.update(extra)
        return c

    def token(self, sub, kid="rsa1", headers=None, **kw):
        """A token signed with key kid (RS256 or ES256 after its kind)."""
        key = self.keys[kid]
        hdr = {"kid": kid}
        if headers:
            hdr.update(headers)
        return jwt.encode(self.claims(sub, **kw), key.private, algorithm=key.alg, headers=hdr)

    def token_alg_none(self, sub, kid="rsa1", **kw):
        """An unsigned token ("alg": "none")."""
        head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        body = b64url(json.dumps(self.claims(sub, **kw)).encode())
        return head + "." + body + "."

    def token_hs256_confusion(self, sub, kid="rsa1", **kw):
        """HS256 with the RSA public key (PEM) as the HMAC secret: the
        classic key-confusion attack."""
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = b64url(json.dumps(self.claims(sub, **kw)).encode())
        mac = hmac.new(self.keys[kid].public_pem(), (head + "." + body).encode(), hashlib.sha256).digest()
        return head + "." + body + "." + b64url(mac)

    @staticmethod
    def tamper(token):
        """The same token with one payload claim changed, signature kept."""
        head, body, sig = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["sub"] = claims.get("sub", "") + "-evil"
        return head + "." + b64url(json.dumps(claims).encode()) + "." + sig

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()
