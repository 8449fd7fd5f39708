"""A deployment for agent tests: a throwaway database, `netbird-mgmt
bootstrap`, and one or more `netbird-mgmt management` processes on loopback.

Built on tests/service/svc.py (TAP runner, databases, ports, process
wrapper). Every object registers its own cleanup with svc.defer, so a test
that fails half-way still drops its database and stops its servers:
agents are closed first, then servers get SIGTERM (SIGKILL if they linger),
then the database is dropped.
"""

import base64
import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import signal
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
sys.path.insert(0, HERE)

import svc  # noqa: E402
import nbagent  # noqa: E402

STOP_TIMEOUT = 20.0

# What the management.json of the config-bearing tests holds (NetBird's own
# keys and format; util.Duration as Go duration strings).
TURN_SECRET = "turn-shared-secret-for-tests"
RELAY_SECRET = "relay-shared-secret-for-tests"
TURN_TTL_S = 12 * 3600
RELAY_TTL_S = 24 * 3600
NETBIRD_CONFIG = {
    "Stuns": [
        {"Proto": "udp", "URI": "stun:stun.example.test:3478", "Username": "", "Password": ""},
        {"Proto": "udp", "URI": "stun:stun2.example.test:3478", "Username": "", "Password": ""},
    ],
    "TURNConfig": {
        "TimeBasedCredentials": True,
        "CredentialsTTL": "12h0m0s",
        "Secret": TURN_SECRET,
        "Turns": [
            {"Proto": "udp", "URI": "turn:turn.example.test:3478", "Username": "static-user",
             "Password": "static-pass"},
        ],
    },
    "Relay": {
        "Addresses": ["rels://relay.example.test:443", "rel://relay2.example.test:80"],
        "CredentialsTTL": "24h0m0s",
        "Secret": RELAY_SECRET,
    },
    "Signal": {"Proto": "https", "URI": "signal.example.test:443", "Username": "", "Password": ""},
    "Datadir": "",
}


def parse_env_output(text):
    """bootstrap prints NAME=value lines, values single-quoted if not plain."""
    out = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        parts = shlex.split(line)
        if len(parts) != 1 or "=" not in parts[0]:
            continue
        k, v = parts[0].split("=", 1)
        out[k] = v
    return out


def setup_key_hash(plain):
    """setup_keys.key: base64(sha256(UPPER(plain))) (docs: §3.3 step 2)."""
    return base64.b64encode(hashlib.sha256(plain.upper().encode()).digest()).decode()


class Deployment:
    """One database, bootstrapped, with servers started on demand."""

    def __init__(self, config=None, setup_key_ttl=None):
        self.dsn, self.db = svc.new_db()
        self.enc_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.config_path = svc.write_json(config) if config is not None else ""
        self.servers = []
        args = ["bootstrap", "--config=" + self.config_path]
        if setup_key_ttl is not None:
            args += ["--setup-key-ttl", str(setup_key_ttl)]
        r = svc.run(args, env=self.env())
        assert r.rc == 0, "bootstrap failed: %r" % r
        v = parse_env_output(r.out)
        for k in ("ACCOUNT_ID", "SETUP_KEY", "NETWORK", "USER_ID", "ADMIN_TOKEN"):
            assert v.get(k), "bootstrap printed no %s: %r" % (k, r)
        self.account_id = v["ACCOUNT_ID"]
        self.admin_token = v["ADMIN_TOKEN"]
        self.setup_key = v["SETUP_KEY"]
        self.user_id = v["USER_ID"]
        self.network = ipaddress.ip_network(v["NETWORK"])

    def env(self):
        return {"NB_STORE_ENGINE_POSTGRES_DSN": self.dsn,
                "NB_MGMT_DATA_STORE_ENCRYPTION_KEY": self.enc_key}

    def start(self, *extra, env=None):
        """Starts `netbird-mgmt management` on 127.0.0.1 with free ports."""
        e = self.env()
        e.update(env or {})
        args = ["--listen-address", "127.0.0.1", "--port", "0", "--http-port", "0",
                "--config=" + self.config_path, "--shutdown-timeout", "2s"] + list(extra)
        srv = svc.Server(args, env=e)
        srv.grpc_target = "127.0.0.1:%d" % srv.grpc_port
        svc.defer(stop_server, srv)       # runs before svc.Server's own kill
        self.servers.append(srv)
        return srv

    def agent(self, srv=None, **kw):
        srv = srv or self.servers[0]
        a = nbagent.Agent(srv.grpc_target, **kw)
        svc.defer(a.close)                # runs before the server is stopped
        return a

    # -- SQL on the test database ---------------------------------------------

    def sql(self, query, params=None):
        import psycopg2
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def add_setup_key(self, type_="reusable", revoked=False, expires_in_s=None, used_times=0,
                      usage_limit=0, ephemeral=False, allow_extra_dns_labels=False, auto_groups=()):
        """Inserts a setup key straight into the database; returns the plain key
        (upper-case UUID, as bootstrap prints it). expires_in_s < 0 is in the past."""
        plain = str(uuid.uuid4()).upper()
        kid = "sk" + secrets.token_hex(9)
        expires = None
        if expires_in_s is not None:
            expires = "now() + make_interval(secs => %d)" % int(expires_in_s)
        self.sql(
            "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, expires_at, revoked,"
            " used_times, usage_limit, ephemeral, allow_extra_dns_labels, auto_groups)"
            " VALUES (%%s, %%s, %%s, %%s, %%s, %%s, %s, %%s, %%s, %%s, %%s, %%s, %%s)" % (expires or "NULL"),
            (kid, self.account_id, setup_key_hash(plain), plain[:5] + "****", "test " + type_, type_, revoked,
             used_times, usage_limit, ephemeral, allow_extra_dns_labels, list(auto_groups)))
        return plain

    def add_group(self, name):
        gid = "grp" + secrets.token_hex(8)
        self.sql("INSERT INTO groups (id, account_id, name) VALUES (%s, %s, %s)", (gid, self.account_id, name))
        return gid

    def peer_groups(self, peer_id):
        """Names of the groups the peer is in."""
        return sorted(r[0] for r in self.sql(
            "SELECT g.name FROM group_peers gp JOIN groups g ON g.id = gp.group_id"
            " WHERE gp.peer_id = %s AND gp.account_id = %s", (peer_id, self.account_id)))

    def setup_key_used(self, plain):
        rows = self.sql("SELECT used_times FROM setup_keys WHERE key = %s", (setup_key_hash(plain),))
        return rows[0][0] if rows else None

    def peers(self):
        """{wg key: row dict} of every peer in the database."""
        rows = self.sql("SELECT key, id, account_id, host(ip), dns_label, name, user_id, ssh_key,"
                        " meta_hostname, meta_wt_version FROM peers")
        cols = ("key", "id", "account_id", "ip", "dns_label", "name", "user_id", "ssh_key",
                "meta_hostname", "meta_wt_version")
        return {r[0]: dict(zip(cols, r)) for r in rows}

    def network_serial(self):
        return self.sql("SELECT network_serial FROM accounts WHERE id = %s", (self.account_id,))[0][0]


def deployment_on(dsn):
    """A Deployment bootstrapped in the database dsn names (a
    svc.PrivatePostgres the test owns), instead of a new database on the
    shared PostgreSQL."""
    dep = Deployment.__new__(Deployment)
    dep.dsn, dep.db = dsn, None
    dep.enc_key = base64.b64encode(secrets.token_bytes(32)).decode()
    dep.config_path = ""
    dep.servers = []
    r = svc.run(["bootstrap", "--config="], env=dep.env())
    assert r.rc == 0, "bootstrap failed: %r" % r
    v = parse_env_output(r.out)
    dep.account_id, dep.setup_key, dep.user_id = v["ACCOUNT_ID"], v["SETUP_KEY"], v["USER_ID"]
    dep.admin_token = v.get("ADMIN_TOKEN")
    dep.network = ipaddress.ip_network(v["NETWORK"]) if v.get("NETWORK") else None
    return dep


def stop_server(srv):
    """SIGTERM and wait; SIGKILL after STOP_TIMEOUT (and fail the test)."""
    if srv.proc.poll() is not None:
        return
    srv.signal(signal.SIGTERM)
    try:
        rc = srv.wait(STOP_TIMEOUT)
    except Exception:
        srv.proc.kill()
        srv.proc.wait(10)
        raise AssertionError("server did not stop within %.0fs after SIGTERM" % STOP_TIMEOUT)
    assert rc == 0, "server exited %r after SIGTERM\n%s" % (rc, srv.stderr()[-4000:])


def replica_id(srv):
    """The id a running server logged for itself ("replica started")."""
    return srv.wait_log(lambda o: o.get("msg") == "replica started")["replica_id"]


def make_cert(d):
    """A self-signed P-256 certificate for localhost / 127.0.0.1."""
    import subprocess
    crt, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=netbird-mgmt-test",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return crt, key


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %.1fs" % (what, timeout))
        time.sleep(interval)


def meshed_streams(dep, placement, names=None):
    """One agent per server in placement, registered on it (hostnames from
    names, else d0, d1, ...), each with a Sync stream; returns (agents,
    streams) once every stream holds a map with all the other agents."""
    agents = []
    for i, srv in enumerate(placement):
        a = dep.agent(srv)
        a.register(dep.setup_key, meta=nbagent.build_meta(names[i] if names else "d%d" % i))
        agents.append(a)
    streams = []
    for a in agents:
        s = a.sync()
        others = {o.pub_b64 for o in agents if o is not a}
        s.wait_for(lambda m, others=others: nbagent.remote_keys(m) == others, timeout=10)
        streams.append(s)
    return agents, streams


def json_dump(msg):
    """A protobuf message as compact JSON, for assertion messages."""
    from google.protobuf import json_format
    return json.dumps(json_format.MessageToDict(msg), sort_keys=True)[:4000]
