"""NetBird management stores written by the project itself (issue 17).

One Python data set (dataset()) written in NetBird's own storage shapes, so
the import (netbird-cp-admin import) and export tests have real NetBird
stores of several schema versions without NetBird or its test data:

    data = nbstore.dataset()                  # plain dicts/lists, see below
    nbstore.write_sqlite(dir + "/store.db", "current", data)
    nbstore.write_events_sqlite(dir + "/events.db", data, key=KEY)
    nbstore.write_postgres(dsn, "v0.52.0", data)
    nbstore.expected_rest(nbstore.data_for("v0.27.4", data))

The tables are written from NetBird's gorm models and migrations at the
pinned commit (v0.77.1+2) and at the release tags named below, read in
NetBird's repository (management/server/types/*.go, peer/peer.go,
route/route.go, dns/nameserver.go, posture/, networks/**/types,
internals/modules/zones, store/store.go's migrations, migration/migration.go,
util/crypt/crypt.go, activity/store). Nothing is copied from NetBird's test
stores; they were only used to check the result by hand.

Schema versions (VERSIONS), each named after the NetBird release whose gorm
models produce exactly these tables. How they were dated: the struct tags
and AutoMigrate list read at the git tag, and the migration that ends the
shape (`git log -S` on store.go, `git describe --contains`):
  "v0.27.4"   peers.ip and peers.location_connection_ip are net.IP without a
              serializer, so gorm writes them as BLOBs (4 or 16 bytes);
              network_net/route network/peer_groups are already JSON (gob
              before v0.27.4; gob is not written here). Setup keys in plain
              text, groups.peers a JSON list, no domain routes, no port
              ranges, no peers.meta_files, no networks tables. Ends with
              MigrateNetIPFieldFromBlobToJSON (first in v0.27.8).
  "v0.30.0"   peers.ip a JSON string ("100.64.0.1"), routes.domains and
              keep_route, policy_rules.port_ranges, peers.setup_key; setup
              keys still plain text (MigrateSetupKeyToHashedSetupKey first
              in v0.31.0). NetBird's store-storev1.sql is of this shape.
  "v0.52.0"   setup keys hashed (key = base64(SHA-256(plain)), key_secret the
              masked form), networks / network_routers / network_resources,
              account_onboardings, groups.resources, extra DNS labels,
              peers' inactivity expiration; groups.peers still a JSON list
              (MigrateJsonToTable to group_peers first in v0.53.0), no users
              name/email (first in v0.62.0), no public_id (v0.75.0).
  "current"   v0.77.1, the pinned commit: group_peers, users name/email,
              public_id columns, zones/records, peers ipv6/capabilities/
              session_started_at/proxy_meta, settings up to v0.77.
  "encrypted" "current" with users' email/name encrypted under a
              DataStoreEncryptionKey (key=...) in util/crypt's FieldEncrypt
              format: base64(nonce(12) || AES-256-GCM(plain)), as NetBird's
              User.EncryptSensitiveData writes them (NetBird encrypts
              only when it has a key; "current" is a store without one).
The events store (events.db) has versions of its own, EVENTS_VERSIONS
("v0.28.0", "v0.44.0", "current"), dated in _events_schema(); its deleted
users' email and name are always encrypted (key= needed), events.meta is
plain JSON. On PostgreSQL NetBird has kept its store since v0.28.0 and its
events since v0.46.0; write_postgres() still writes "v0.27.4" (bytea IPs)
as a harder case that NetBird itself never produced.

Values as gorm writes them. SQLite: bool -> numeric 0/1, time.Time ->
"2006-01-02 15:04:05.999999-07:00" text (datetime), time.Duration -> integer
nanoseconds, serializer:json -> compact JSON text (Go's encoding: net.IPNet
{"IP":..,"Mask":base64}, netip.Addr/Prefix as strings, nil slices null).
PostgreSQL: boolean, timestamptz, bigint, text, bytea. Only the tables the
store holds data in are created; NetBird's AutoMigrate adds the others
(jobs, services, proxies, agent-network tables, ...) on first open.

Differences from NetBird's own test dumps (testdata/*.sql; compared column
by column with sqlite3's PRAGMA table_info in the session that wrote this;
the dumps are older than v0.77 and partly hand-edited by NetBird's authors):
  - store-storev1.sql: identical to our "v0.30.0" (tables, columns, order,
    types). Against "v0.27.4" it has the JSON ip columns, meta_files,
    port_ranges and routes' domains/keep_route/access_control_groups.
  - store.sql, extended-store.sql, networks.sql, http-*.sql mix eras:
    networks tables and account_onboardings next to peers.setup_key and
    plain setup keys (or key_secret next to peers.setup_key), and
    network_resources with an `address` column (v0.35-era: Address became
    gorm:"-" with domain/prefix/name/description/enabled columns later),
    network_routers without `enabled`. Our "v0.52.0" has each table as
    that release's models create it, so against these dumps it has more
    columns (settings_peer_inactivity_*, routing_peer_dns_resolution,
    dns_domain, lazy_connection, extra_integrated_validator, groups.resources,
    peers.meta_flags/inactivity/extra_dns_labels, rules' source/destination
    resource, setup_keys.allow_extra_dns_labels) and lacks peers.setup_key.
  - A store upgraded in place keeps columns gorm never drops (for example
    network_resources.address); importers must ignore unknown columns.
    The writers here create fresh stores of one release, without those.
  - account_onboardings: the dump orders created_at second; gorm (and we)
    follow the struct: account_id, the two flags, created_at, updated_at.
  - indexes: we create the ones NetBird's lookups need (primary keys, the
    account_id indexes, idx_peers_key_unique, idx_account_ip,
    idx_account_dnslabel), not every gorm index.

The data set (dataset()): {"accounts": [acct, ...]} with two accounts; acct
holds "id", "settings", "network", "users", "pats", "setup_keys", "peers",
"groups" (with "peers" and "resources" member lists), "policies" (with
"rules"), "posture_checks", "routes", "networks" (with "resources" and
"routers"), "nameserver_groups", "dns" (disabled management groups),
"zones" (with "records"), "events" (meta as NetBird's code passes it to the
events store: the writer moves email+name to deleted_users as NetBird's
Save does). Secrets the tests need ride along in the same dicts and are
never written to a store: peers[i]["private_key"] (base64 X25519, the
agent's WireGuard key), setup_keys[i]["plain"], pats[i]["token"]. Helpers:
by_name(), KEY, field_encrypt()/field_decrypt(), legacy_decrypt().
expected_rest() and expected_events() give what NetBird's REST API shows
for a data set; subset_diff()/assert_subset() compare.
"""

import base64
import copy
import datetime
import hashlib
import ipaddress
import json
import os
import sqlite3
import zlib

VERSIONS = ("v0.27.4", "v0.30.0", "v0.52.0", "current", "encrypted")

# A DataStoreEncryptionKey (32 random bytes, base64) the tests use for the
# "encrypted" store; any other 32-byte key works the same.
KEY = base64.b64encode(hashlib.sha256(b"nbstore fixture data store key").digest()).decode()

UTC = datetime.timezone.utc
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B32HEX = "0123456789abcdefghijklmnopqrstuv"


# ---------------------------------------------------------------- helpers

def xid(label):
    """A 20-character id shaped like NetBird's xids, fixed per label."""
    h = int.from_bytes(hashlib.sha256(("nbstore " + label).encode()).digest()[:13], "big")
    return "".join(_B32HEX[(h >> (5 * i)) & 31] for i in range(20))


def t(s):
    """'2025-03-01 10:00:00' -> aware UTC datetime."""
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def wg_keypair(seed_label):
    """(private_b64, public_b64): a real X25519 key pair from a fixed seed."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    raw = bytearray(hashlib.sha256(("nbstore wg " + seed_label).encode()).digest())
    raw[0] &= 248           # clamped as wg genkey does
    raw[31] = (raw[31] & 127) | 64
    priv = X25519PrivateKey.from_private_bytes(bytes(raw))
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(bytes(raw)).decode(), base64.b64encode(pub).decode()


def ssh_public_key(label):
    """An OpenSSH ed25519 public key ("ssh-ed25519 AAAA..."), as agents
    report theirs, from a fixed seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    priv = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(("nbstore ssh " + label).encode()).digest())
    return priv.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def pat_from_secret(secret):
    """NetBird's personal access token of a 30-character base62 secret:
    nbp_ + secret + its CRC32 in 6 base62 digits (tests/api/apifix.py
    makes random ones with it)."""
    crc, tail = zlib.crc32(secret.encode()), ""
    for _ in range(6):
        tail, crc = BASE62[crc % 62] + tail, crc // 62
    return "nbp_" + secret + tail


def pat_token(label):
    """A deterministic NetBird personal access token for label."""
    h = int.from_bytes(hashlib.sha256(("nbstore pat " + label).encode()).digest(), "big")
    secret = ""
    for _ in range(30):
        secret, h = secret + BASE62[h % 62], h // 62
    return pat_from_secret(secret)


def sha256_b64(s):
    return base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()


def setup_key_plain(label):
    """An upper-case UUID, as NetBird generates setup keys."""
    h = hashlib.sha256(("nbstore setup key " + label).encode()).hexdigest().upper()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:32])


def hidden_key(plain):
    """NetBird's key_secret: the first 5 characters and 4 stars."""
    return plain[:5] + "****"


def field_encrypt(key_b64, plain, nonce=None):
    """util/crypt FieldEncrypt.Encrypt: base64(nonce || AES-GCM(plain))."""
    if plain == "":
        return ""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if nonce is None:
        nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(base64.b64decode(key_b64)).encrypt(nonce, plain.encode(), None)).decode()


def field_decrypt(key_b64, ct):
    if ct == "":
        return ""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    raw = base64.b64decode(ct)
    return AESGCM(base64.b64decode(key_b64)).decrypt(raw[:12], raw[12:], None).decode()


def by_name(items, name):
    """The dict in items whose "name" (or "id") is name."""
    for it in items:
        if it.get("name") == name or it.get("id") == name:
            return it
    raise KeyError(name)


# ---------------------------------------------------------------- data set

def _peer(acct, name, ip, **kw):
    priv, pub = wg_keypair(acct + "/" + name)
    p = {
        "id": xid(acct + "/peer/" + name), "name": name, "key": pub, "private_key": priv,
        "ip": ip, "dns_label": name, "hostname": name, "goos": "linux", "kernel": "Linux",
        "core": "24.04", "platform": "x86_64", "os": "Ubuntu", "os_version": "24.04",
        "wt_version": "0.36.5", "ui_version": "", "kernel_version": "6.8.0",
        "network_addresses": [], "serial": "", "product": "", "manufacturer": "",
        "environment": {"Cloud": "", "Platform": ""}, "files": [],
        "user_id": "", "setup_key_id": "", "ssh_key": "", "ssh_enabled": False,
        "login_expiration_enabled": False, "inactivity_expiration_enabled": False,
        "last_login": t("2025-05-01 08:00:00"), "created_at": t("2025-01-10 09:00:00"),
        "last_seen": t("2025-05-02 08:00:00"), "connected": False, "login_expired": False,
        "requires_approval": False, "ephemeral": False,
        "location": None, "extra_dns_labels": [], "allow_extra_dns_labels": False,
    }
    p.update(kw)
    return p


def dataset():
    """The fixture data: a rich account and a small one (fresh copy)."""
    A = "rich"
    owner = "google-oauth2|100000000000000000001"
    admin = "google-oauth2|100000000000000000002"
    regular = "google-oauth2|100000000000000000003"
    blocked = "google-oauth2|100000000000000000004"
    autog = "google-oauth2|100000000000000000005"
    svc = xid(A + "/user/ci-bot")
    g = {n: xid(A + "/group/" + n) for n in ("All", "devs", "servers", "ops", "routers", "ci", "office")}
    peers = [
        _peer(A, "laptop-anna", "100.90.0.1", user_id=owner, login_expiration_enabled=True,
              ssh_enabled=True, ssh_key=ssh_public_key(A + "/laptop-anna"),
              location={"ip": "192.0.2.10", "country": "DE", "city": "Berlin", "geoname_id": 2950159},
              goos="darwin", kernel="Darwin", os="macOS", os_version="14.5", platform="arm64",
              core="14.5", kernel_version="23.5.0", serial="C02FIXTURE01", product="MacBookPro18,3",
              manufacturer="Apple Inc.",
              network_addresses=[{"net_ip": "192.168.1.23/24", "mac": "aa:bb:cc:00:00:01"}]),
        _peer(A, "web-1", "100.90.0.2", setup_key_id=xid(A + "/key/servers"),
              extra_dns_labels=["www", "api"], allow_extra_dns_labels=True, connected=True,
              hostname="web-1.internal"),
        _peer(A, "gw-1", "100.90.0.3", setup_key_id=xid(A + "/key/servers")),
        _peer(A, "ci-runner-7", "100.90.0.4", setup_key_id=xid(A + "/key/ci"), ephemeral=True),
        _peer(A, "new-box", "100.90.0.5", user_id=regular, requires_approval=True),
        _peer(A, "phone-ben", "100.90.0.6", user_id=regular, goos="android", os="Android",
              kernel="Linux", os_version="14", login_expiration_enabled=True,
              inactivity_expiration_enabled=True),
        _peer(A, "old-laptop", "100.90.0.7", user_id=admin, login_expiration_enabled=True,
              login_expired=True, last_login=t("2024-11-01 08:00:00")),
        _peer(A, "gw-2", "100.90.0.8", setup_key_id=xid(A + "/key/servers"), dns_label="gw-2-eu"),
    ]
    P = {p["name"]: p["id"] for p in peers}
    member = {
        "All": list(P.values()),
        "devs": [P["laptop-anna"], P["phone-ben"], P["old-laptop"]],
        "servers": [P["web-1"], P["gw-1"], P["gw-2"]],
        "ops": [P["laptop-anna"]],
        "routers": [P["gw-1"], P["gw-2"]],
        "ci": [P["ci-runner-7"]],
        "office": [],
    }
    net_id = xid(A + "/network/office")
    res = {n: xid(A + "/resource/" + n) for n in ("fileserver", "lan", "intranet")}
    groups = [{"id": g[n], "name": n, "issued": "api" if n != "ci" else "jwt",
               "peers": member[n], "resources": []} for n in g]
    by_name(groups, "office")["resources"] = [{"id": res["fileserver"], "type": "host"},
                                              {"id": res["lan"], "type": "subnet"},
                                              {"id": res["intranet"], "type": "domain"}]
    pc = {n: xid(A + "/posture/" + n) for n in ("min-version", "germany", "os", "office-net", "agent-running")}
    rich = {
        "id": xid(A + "/account"),
        "created_by": owner, "created_at": t("2025-01-10 08:00:00"),
        "domain": "rich.example.test", "domain_category": "private", "is_domain_primary_account": True,
        "network": {"identifier": xid(A + "/net"), "net": "100.90.0.0/16", "dns": "", "serial": 42},
        "dns": {"disabled_management_groups": [g["ci"]]},
        "settings": {
            "peer_login_expiration_enabled": True, "peer_login_expiration": 86400 * 10 ** 9,
            "peer_inactivity_expiration_enabled": True, "peer_inactivity_expiration": 3600 * 10 ** 9,
            "regular_users_view_blocked": True, "groups_propagation_enabled": True,
            "jwt_groups_enabled": True, "jwt_groups_claim_name": "groups", "jwt_allow_groups": [],
            "routing_peer_dns_resolution_enabled": True, "dns_domain": "",
            "peer_approval_enabled": True, "user_approval_required": False,
            "lazy_connection_enabled": False,
        },
        "users": [
            {"id": owner, "role": "owner", "name": "Anna Owner", "email": "anna@rich.example.test",
             "auto_groups": [], "last_login": t("2025-05-01 07:59:00")},
            {"id": admin, "role": "admin", "name": "Carl Admin", "email": "carl@rich.example.test",
             "auto_groups": [g["ops"]]},
            {"id": regular, "role": "user", "name": "Ben User", "email": "ben@rich.example.test",
             "auto_groups": [g["devs"]]},
            {"id": blocked, "role": "user", "name": "Dora Blocked", "email": "dora@rich.example.test",
             "blocked": True},
            {"id": autog, "role": "user", "name": "Eve Auto", "email": "eve@rich.example.test",
             "auto_groups": [g["devs"], g["ops"]], "issued": "jwt"},
            {"id": svc, "role": "admin", "is_service_user": True, "service_user_name": "ci-bot",
             "name": "", "email": ""},
        ],
        "pats": [
            {"id": xid(A + "/pat/owner"), "user_id": owner, "name": "owner automation",
             "token": pat_token(A + "/owner"), "expiration_date": t("2099-01-01 00:00:00"),
             "created_by": owner, "created_at": t("2025-02-01 10:00:00"), "last_used": t("2025-05-01 09:00:00")},
            {"id": xid(A + "/pat/ci-bot"), "user_id": svc, "name": "ci token",
             "token": pat_token(A + "/ci-bot"), "expiration_date": t("2099-01-01 00:00:00"),
             "created_by": owner, "created_at": t("2025-02-02 10:00:00"), "last_used": None},
        ],
        "setup_keys": [
            {"id": xid(A + "/key/servers"), "name": "servers", "type": "reusable",
             "plain": setup_key_plain(A + "/servers"), "created_at": t("2025-01-11 10:00:00"),
             "expires_at": t("2099-01-01 00:00:00"), "updated_at": t("2025-01-11 10:00:00"),
             "revoked": False, "used_times": 3, "last_used": t("2025-03-01 10:00:00"),
             "auto_groups": [g["servers"]], "usage_limit": 0, "ephemeral": False,
             "allow_extra_dns_labels": True},
            {"id": xid(A + "/key/ci"), "name": "ci ephemeral", "type": "reusable",
             "plain": setup_key_plain(A + "/ci"), "created_at": t("2025-01-12 10:00:00"),
             "expires_at": t("2099-01-01 00:00:00"), "updated_at": t("2025-01-12 10:00:00"),
             "revoked": False, "used_times": 1, "last_used": t("2025-04-01 10:00:00"),
             "auto_groups": [g["ci"]], "usage_limit": 100, "ephemeral": True},
            {"id": xid(A + "/key/revoked"), "name": "revoked key", "type": "reusable",
             "plain": setup_key_plain(A + "/revoked"), "created_at": t("2025-01-13 10:00:00"),
             "expires_at": t("2099-01-01 00:00:00"), "updated_at": t("2025-02-13 10:00:00"),
             "revoked": True, "used_times": 0, "last_used": None, "auto_groups": [],
             "usage_limit": 0, "ephemeral": False},
            {"id": xid(A + "/key/expired"), "name": "expired key", "type": "reusable",
             "plain": setup_key_plain(A + "/expired"), "created_at": t("2024-01-01 10:00:00"),
             "expires_at": t("2024-02-01 10:00:00"), "updated_at": t("2024-01-01 10:00:00"),
             "revoked": False, "used_times": 0, "last_used": None, "auto_groups": [],
             "usage_limit": 0, "ephemeral": False},
            {"id": xid(A + "/key/oneoff"), "name": "one-off used", "type": "one-off",
             "plain": setup_key_plain(A + "/oneoff"), "created_at": t("2025-01-14 10:00:00"),
             "expires_at": t("2099-01-01 00:00:00"), "updated_at": t("2025-01-14 10:00:00"),
             "revoked": False, "used_times": 1, "last_used": t("2025-01-15 10:00:00"),
             "auto_groups": [g["devs"]], "usage_limit": 1, "ephemeral": False},
        ],
        "peers": peers,
        "groups": groups,
        "posture_checks": [
            {"id": pc["min-version"], "name": "min-version", "description": "agent 0.30 or newer",
             "checks": {"NBVersionCheck": {"MinVersion": "0.30.0"}}},
            {"id": pc["germany"], "name": "germany", "description": "only from Germany",
             "checks": {"GeoLocationCheck": {"Locations": [{"CountryCode": "DE", "CityName": ""}],
                                             "Action": "allow"}}},
            {"id": pc["os"], "name": "os", "description": "",
             "checks": {"OSVersionCheck": {"Android": {"MinVersion": "13"}, "Darwin": None, "Ios": None,
                                           "Linux": {"MinKernelVersion": "5.10"}, "Windows": None}}},
            {"id": pc["office-net"], "name": "office-net", "description": "",
             "checks": {"PeerNetworkRangeCheck": {"Action": "allow", "Ranges": ["192.168.1.0/24"]}}},
            {"id": pc["agent-running"], "name": "agent-running", "description": "",
             "checks": {"ProcessCheck": {"Processes": [{"LinuxPath": "/usr/bin/netbird",
                                                        "MacPath": "", "WindowsPath": ""}]}}},
        ],
        "policies": [
            {"id": xid(A + "/policy/default"), "name": "Default", "description": "This is a default rule that allows connections between all the resources",
             "enabled": True, "source_posture_checks": [],
             "rules": [{"id": xid(A + "/rule/default"), "name": "Default", "description": "", "enabled": True,
                        "action": "accept", "sources": [g["All"]], "destinations": [g["All"]],
                        "bidirectional": True, "protocol": "all", "ports": [], "port_ranges": []}]},
            {"id": xid(A + "/policy/web"), "name": "devs to servers", "description": "web and dns",
             "enabled": True, "source_posture_checks": [pc["min-version"], pc["germany"]],
             "rules": [{"id": xid(A + "/rule/web"), "name": "web", "description": "http(s) and the app range",
                        "enabled": True, "action": "accept", "sources": [g["devs"]],
                        "destinations": [g["servers"]], "bidirectional": False, "protocol": "tcp",
                        "ports": ["80", "443"], "port_ranges": [{"start": 8000, "end": 8100}]},
                       {"id": xid(A + "/rule/dns"), "name": "dns", "description": "", "enabled": True,
                        "action": "accept", "sources": [g["devs"]], "destinations": [g["servers"]],
                        "bidirectional": False, "protocol": "udp", "ports": ["53"], "port_ranges": []}]},
            {"id": xid(A + "/policy/ci"), "name": "ci blocked from ops", "description": "",
             "enabled": False, "source_posture_checks": [],
             "rules": [{"id": xid(A + "/rule/ci"), "name": "ci drop", "description": "", "enabled": True,
                        "action": "drop", "sources": [g["ci"]], "destinations": [g["ops"]],
                        "bidirectional": True, "protocol": "icmp", "ports": [], "port_ranges": []}]},
        ],
        "routes": [
            {"id": xid(A + "/route/lan"), "net_id": "lan", "description": "office LAN via web-1",
             "network": "10.10.0.0/16", "domains": [], "keep_route": False, "peer": P["web-1"],
             "peer_groups": [], "network_type": 1, "masquerade": True, "metric": 9999, "enabled": True,
             "groups": [g["devs"]], "access_control_groups": []},
            {"id": xid(A + "/route/dc"), "net_id": "dc", "description": "HA through the routers group",
             "network": "10.20.0.0/16", "domains": [], "keep_route": False, "peer": "",
             "peer_groups": [g["routers"]], "network_type": 1, "masquerade": False, "metric": 100,
             "enabled": True, "groups": [g["All"]], "access_control_groups": [g["devs"]]},
            {"id": xid(A + "/route/saas"), "net_id": "saas", "description": "a domain route",
             "network": None, "domains": ["example.com", "api.example.net"], "keep_route": True,
             "peer": P["gw-1"], "peer_groups": [], "network_type": 3, "masquerade": True, "metric": 9999,
             "enabled": True, "groups": [g["devs"]], "access_control_groups": []},
        ],
        "networks": [
            {"id": net_id, "name": "office", "description": "the office network",
             "resources": [
                 {"id": res["fileserver"], "name": "fileserver", "description": "", "type": "host",
                  "address": "10.30.0.5/32", "enabled": True, "groups": [g["office"]]},
                 {"id": res["lan"], "name": "lan", "description": "office subnet", "type": "subnet",
                  "address": "10.31.0.0/24", "enabled": True, "groups": [g["office"]]},
                 {"id": res["intranet"], "name": "intranet", "description": "", "type": "domain",
                  "address": "*.intra.example.test", "enabled": True, "groups": [g["office"]]}],
             "routers": [
                 {"id": xid(A + "/router/gw-1"), "peer": P["gw-1"], "peer_groups": [],
                  "masquerade": True, "metric": 9999, "enabled": True},
                 {"id": xid(A + "/router/routers"), "peer": "", "peer_groups": [g["routers"]],
                  "masquerade": False, "metric": 50, "enabled": True}]},
        ],
        "nameserver_groups": [
            {"id": xid(A + "/ns/public"), "name": "public", "description": "primary resolvers",
             "nameservers": [{"ip": "9.9.9.9", "ns_type": "udp", "port": 53},
                             {"ip": "1.1.1.1", "ns_type": "udp", "port": 53}],
             "groups": [g["All"]], "primary": True, "domains": [], "enabled": True,
             "search_domains_enabled": False},
            {"id": xid(A + "/ns/corp"), "name": "corp", "description": "",
             "nameservers": [{"ip": "10.10.0.53", "ns_type": "udp", "port": 5353}],
             "groups": [g["devs"]], "primary": False, "domains": ["corp.example.test"],
             "enabled": True, "search_domains_enabled": True},
        ],
        "zones": [
            {"id": xid(A + "/zone/internal"), "name": "internal", "domain": "internal.rich.example.test",
             "enabled": True, "enable_search_domain": False, "distribution_groups": [g["All"]],
             "records": [
                 {"id": xid(A + "/record/www"), "name": "www.internal.rich.example.test", "type": "A",
                  "content": "100.90.0.2", "ttl": 300},
                 {"id": xid(A + "/record/docs"), "name": "docs.internal.rich.example.test", "type": "CNAME",
                  "content": "www.internal.rich.example.test", "ttl": 600}]},
        ],
        "events": [
            {"id": 1, "timestamp": t("2025-01-10 08:00:00"), "activity": 4, "initiator_id": owner,
             "target_id": xid(A + "/account"), "meta": {}},
            {"id": 2, "timestamp": t("2025-01-10 09:00:00"), "activity": 0, "initiator_id": owner,
             "target_id": peers[0]["id"],
             "meta": {"name": "laptop-anna", "fqdn": "laptop-anna.netbird.selfhosted", "ip": "100.90.0.1",
                      "created_at": "2025-01-10T09:00:00Z", "location_city_name": "Berlin",
                      "location_country_code": "DE", "location_geo_name_id": 2950159,
                      "location_connection_ip": "192.0.2.10"}},
            {"id": 3, "timestamp": t("2025-01-11 10:00:00"), "activity": 1, "initiator_id": xid(A + "/key/servers"),
             "target_id": peers[1]["id"],
             "meta": {"name": "web-1", "fqdn": "web-1.netbird.selfhosted", "ip": "100.90.0.2",
                      "created_at": "2025-01-10T09:00:00Z", "location_city_name": "",
                      "location_country_code": "", "location_geo_name_id": 0, "location_connection_ip": ""}},
            # A user deleted: NetBird's events store moves the meta's email and
            # name to deleted_users, encrypted, and shows them again on read.
            {"id": 4, "timestamp": t("2025-03-01 10:00:00"), "activity": 47, "initiator_id": owner,
             "target_id": "google-oauth2|100000000000000000099",
             "meta": {"name": "Gone Person", "email": "gone@rich.example.test",
                      "created_at": "2025-01-20T10:00:00Z", "issued": "api"}},
        ],
    }
    B = "small"
    sowner = "auth0|small-owner-0001"
    sg = xid(B + "/group/All")
    speers = [_peer(B, "desk", "100.91.0.1", user_id=sowner),
              _peer(B, "nas", "100.91.0.2", setup_key_id=xid(B + "/key/default"))]
    small = {
        "id": xid(B + "/account"), "created_by": sowner, "created_at": t("2025-02-01 08:00:00"),
        "domain": "small.example.test", "domain_category": "private", "is_domain_primary_account": True,
        "network": {"identifier": xid(B + "/net"), "net": "100.91.0.0/16", "dns": "", "serial": 3},
        "dns": {"disabled_management_groups": []},
        "settings": {
            "peer_login_expiration_enabled": False, "peer_login_expiration": 86400 * 10 ** 9,
            "peer_inactivity_expiration_enabled": False, "peer_inactivity_expiration": 600 * 10 ** 9,
            "regular_users_view_blocked": True, "groups_propagation_enabled": True,
            "jwt_groups_enabled": False, "jwt_groups_claim_name": "", "jwt_allow_groups": [],
            "routing_peer_dns_resolution_enabled": True, "dns_domain": "",
            "peer_approval_enabled": False, "user_approval_required": False,
            "lazy_connection_enabled": False,
        },
        "users": [{"id": sowner, "role": "owner", "name": "Sam Small", "email": "sam@small.example.test"}],
        "pats": [{"id": xid(B + "/pat/owner"), "user_id": sowner, "name": "sam", "token": pat_token(B + "/owner"),
                  "expiration_date": t("2099-01-01 00:00:00"), "created_by": sowner,
                  "created_at": t("2025-02-01 09:00:00"), "last_used": None}],
        "setup_keys": [{"id": xid(B + "/key/default"), "name": "Default key", "type": "reusable",
                        "plain": setup_key_plain(B + "/default"), "created_at": t("2025-02-01 08:00:00"),
                        "expires_at": t("2099-01-01 00:00:00"), "updated_at": t("2025-02-01 08:00:00"),
                        "revoked": False, "used_times": 1, "last_used": t("2025-02-02 08:00:00"),
                        "auto_groups": [], "usage_limit": 0, "ephemeral": False}],
        "peers": speers,
        "groups": [{"id": sg, "name": "All", "issued": "api", "peers": [p["id"] for p in speers], "resources": []}],
        "posture_checks": [],
        "policies": [{"id": xid(B + "/policy/default"), "name": "Default", "description": "", "enabled": True,
                      "source_posture_checks": [],
                      "rules": [{"id": xid(B + "/rule/default"), "name": "Default", "description": "",
                                 "enabled": True, "action": "accept", "sources": [sg], "destinations": [sg],
                                 "bidirectional": True, "protocol": "all", "ports": [], "port_ranges": []}]}],
        "routes": [], "networks": [], "nameserver_groups": [], "zones": [],
        "events": [{"id": 5, "timestamp": t("2025-02-01 08:00:00"), "activity": 4, "initiator_id": sowner,
                    "target_id": xid(B + "/account"), "meta": {}}],
    }
    for acct in (rich, small):
        for u in acct["users"]:
            for k, v in (("is_service_user", False), ("non_deletable", False), ("service_user_name", ""),
                         ("auto_groups", []), ("blocked", False), ("pending_approval", False),
                         ("last_login", None), ("created_at", acct["created_at"]), ("issued", "api")):
                u.setdefault(k, v)
        for k in acct["setup_keys"]:
            k.setdefault("allow_extra_dns_labels", False)
    return {"accounts": [rich, small]}


# What each version can hold; data_for() drops the rest.
_FEATURES = {
    "v0.27.4": set(),
    "v0.30.0": {"domain_routes", "port_ranges", "acl_groups", "files"},
    "v0.52.0": {"domain_routes", "port_ranges", "acl_groups", "files", "networks", "extra_dns_labels",
                "inactivity", "hashed_keys", "group_resources"},
    "current": {"domain_routes", "port_ranges", "acl_groups", "files", "networks", "extra_dns_labels",
                "inactivity", "hashed_keys", "group_resources", "user_names", "zones", "group_peers",
                "public_id", "user_approval"},
}
_FEATURES["encrypted"] = _FEATURES["current"] | {"encrypted"}


def _check_version(version):
    if version not in _FEATURES:
        raise ValueError("unknown NetBird store version %r (have %s)" % (version, ", ".join(VERSIONS)))
    return _FEATURES[version]


def data_for(version, data=None):
    """The part of data a store of this version can hold (a copy): what
    the import of such a store should yield."""
    f = _check_version(version)
    d = copy.deepcopy(data if data is not None else dataset())
    for a in d["accounts"]:
        if "domain_routes" not in f:
            a["routes"] = [r for r in a["routes"] if not r["domains"]]
        for r in a["routes"]:
            if "acl_groups" not in f:
                r["access_control_groups"] = []
        if "port_ranges" not in f:
            for p in a["policies"]:
                for r in p["rules"]:
                    r["port_ranges"] = []
        for p in a["peers"]:
            if "files" not in f:
                p["files"] = []
            if "extra_dns_labels" not in f:
                p["extra_dns_labels"], p["allow_extra_dns_labels"] = [], False
            if "inactivity" not in f:
                p["inactivity_expiration_enabled"] = False
        if "inactivity" not in f:
            a["settings"]["peer_inactivity_expiration_enabled"] = False
            a["settings"]["peer_inactivity_expiration"] = 0
        if "networks" not in f:
            a["networks"] = []
        if "group_resources" not in f:
            for g in a["groups"]:
                g["resources"] = []
        if "extra_dns_labels" not in f:
            for k in a["setup_keys"]:
                k["allow_extra_dns_labels"] = False
        if "user_names" not in f:
            for u in a["users"]:
                u["name"], u["email"] = "", ""
        if "user_approval" not in f:
            for u in a["users"]:
                u["pending_approval"] = False
        if "zones" not in f:
            a["zones"] = []
    return d


# ---------------------------------------------------------------- schemas
#
# A table is (name, [(column, kind, extra)], primary key columns, indexes,
# foreign keys). kinds: text bool int time json blob serial; extra is a
# DEFAULT clause or "". Rendered for SQLite as gorm's sqlite dialect does
# (text numeric integer datetime blob) and for PostgreSQL as gorm's
# postgres dialect (text boolean bigint timestamptz bytea bigserial).

def _cols(spec):
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(None, 2)
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


_ACCOUNT_HEAD = "id text, created_by text, created_at time, domain text, domain_category text, " \
                "is_domain_primary_account bool, network_identifier text, network_net json"
_SETTINGS_OLD = "settings_peer_login_expiration_enabled bool, settings_peer_login_expiration int, " \
                "settings_regular_users_view_blocked bool, settings_groups_propagation_enabled bool, " \
                "settings_jwt_groups_enabled bool, settings_jwt_groups_claim_name text, " \
                "settings_jwt_allow_groups json"


def _schema(version):
    """[(table, columns, pk, [(index, cols, unique)], [(fk name, col, ref table, on delete)])]"""
    cur = version in ("current", "encrypted")
    old = version in ("v0.27.4", "v0.30.0")
    T = []

    # accounts
    a = _ACCOUNT_HEAD + (", network_net_v6 json" if cur else "") + \
        ", network_dns text, network_serial int, dns_settings_disabled_management_groups json, "
    if old:
        a += _SETTINGS_OLD + ", settings_extra_peer_approval_enabled bool, settings_extra_integrated_validator_groups json"
    else:
        a += "settings_peer_login_expiration_enabled bool, settings_peer_login_expiration int, " \
             "settings_peer_inactivity_expiration_enabled bool, settings_peer_inactivity_expiration int, " \
             "settings_regular_users_view_blocked bool, settings_groups_propagation_enabled bool, " \
             "settings_jwt_groups_enabled bool, settings_jwt_groups_claim_name text, " \
             "settings_jwt_allow_groups json, settings_routing_peer_dns_resolution_enabled bool, " \
             "settings_dns_domain text, "
        if cur:
            a += "settings_network_range json, settings_network_range_v6 json, " \
                 "settings_peer_expose_enabled bool, settings_peer_expose_groups json, "
        a += "settings_extra_peer_approval_enabled bool, "
        if cur:
            a += "settings_extra_user_approval_required bool, "
        a += "settings_extra_integrated_validator text, settings_extra_integrated_validator_groups json, " \
             "settings_lazy_connection_enabled bool DEFAULT false"
        if cur:
            a += ", settings_auto_update_version text DEFAULT 'disabled', " \
                 "settings_auto_update_always bool DEFAULT false, settings_ipv6_enabled_groups json, " \
                 "settings_metrics_push_enabled bool DEFAULT false, " \
                 "settings_agent_network_only bool DEFAULT false, settings_dashboard_features json, " \
                 "settings_local_mfa_enabled bool, reverse_proxy_free_domain_nonce text"
    T.append(("accounts", _cols(a), ["id"], [("idx_accounts_domain", ["domain"], False)], []))
    fk_acct = lambda tb: [("fk_accounts_" + tb, "account_id", "accounts", "")]

    if not old:
        T.append(("account_onboardings", _cols(
            "account_id text, onboarding_flow_pending bool, signup_form_pending bool, "
            "created_at time, updated_at time"), ["account_id"], [],
            [("fk_accounts_onboarding", "account_id", "accounts", "CASCADE")]))

    # setup_keys
    s = "id text, account_id text, key text, " + ("key_secret text, " if not old else "") + \
        "name text, type text, created_at time, expires_at time, updated_at time, revoked bool, " \
        "used_times int, last_used time, auto_groups json, usage_limit int, ephemeral bool" + \
        (", allow_extra_dns_labels bool" if not old else "")
    sk_idx = [("idx_setup_keys_account_id", ["account_id"], False)]
    if cur:
        sk_idx.append(("idx_setup_keys_key_secret", ["key_secret"], False))
    T.append(("setup_keys", _cols(s), ["id"], sk_idx, fk_acct("setup_keys_g")))

    # peers
    ipk = "blob" if version == "v0.27.4" else "json"
    p = "id text, account_id text, key text, " + ("setup_key text, " if old else "") + \
        "ip %s, " % ipk + ("ipv6 json, " if cur else "") + \
        "meta_hostname text, meta_go_os text, meta_kernel text, meta_core text, meta_platform text, " \
        "meta_os text, meta_os_version text, meta_wt_version text, meta_ui_version text, " \
        "meta_kernel_version text, meta_network_addresses json, meta_system_serial_number text, " \
        "meta_system_product_name text, meta_system_manufacturer text, meta_environment json, "
    if not old:
        p += "meta_flags json, "
    if version != "v0.27.4":
        p += "meta_files json, "
    if cur:
        p += "meta_capabilities json, meta_sync_message_version int, proxy_meta_embedded bool, " \
             "proxy_meta_cluster text, "
    p += "name text, dns_label text, peer_status_last_seen time, "
    if cur:
        p += "peer_status_session_started_at int NOT_NULL_DEFAULT_0, "
    p += "peer_status_connected bool, peer_status_login_expired bool, peer_status_requires_approval bool, " \
         "user_id text, ssh_key text, ssh_enabled bool, login_expiration_enabled bool, "
    if not old:
        p += "inactivity_expiration_enabled bool, "
    p += "last_login time, created_at time, ephemeral bool, location_connection_ip %s, " % ipk + \
         "location_country_code text, location_city_name text, location_geo_name_id int"
    if not old:
        p += ", extra_dns_labels json, allow_extra_dns_labels bool"
    pidx = [("idx_peers_account_id", ["account_id"], False), ("idx_peers_key_unique", ["key"], True)]
    if version == "v0.27.4":
        pidx.append(("idx_peers_account_id_ip", ["account_id", "ip"], True))
    else:
        pidx += [("idx_account_ip", ["account_id", "ip"], True),
                 ("idx_account_dnslabel", ["account_id", "dns_label"], True)]
    if cur:
        pidx += [("idx_peers_name", ["name"], False), ("idx_peers_ephemeral", ["ephemeral"], False)]
    T.append(("peers", _cols(p), ["id"], pidx, fk_acct("peers_g")))

    # users
    u = "id text, account_id text, role text, is_service_user bool, non_deletable bool, " \
        "service_user_name text, auto_groups json, blocked bool, " + \
        ("pending_approval bool, " if cur else "") + \
        "last_login time, created_at time, issued text DEFAULT 'api', integration_ref_id int, " \
        "integration_ref_integration_type text" + (", name text DEFAULT '', email text DEFAULT ''" if cur else "")
    T.append(("users", _cols(u), ["id"], [("idx_users_account_id", ["account_id"], False)], fk_acct("users_g")))
    T.append(("personal_access_tokens", _cols(
        "id text, user_id text, name text, hashed_token text, expiration_date time, created_by text, "
        "created_at time, last_used time"), ["id"],
        [("idx_personal_access_tokens_user_id", ["user_id"], False)],
        [("fk_users_pa_ts_g", "user_id", "users", "" if old else "CASCADE")]))

    # groups
    gcols = "id text, account_id text, " + ("public_id text, " if cur else "") + "name text, issued text, "
    if not cur:
        gcols += "peers json, "
    if not old:
        gcols += "resources json, "
    gcols += "integration_ref_id int, integration_ref_integration_type text"
    T.append(("groups", _cols(gcols), ["id"], [("idx_groups_account_id", ["account_id"], False)],
              fk_acct("groups_g")))
    if cur:
        T.append(("group_peers", _cols("account_id text, group_id text, peer_id text"),
                  ["group_id", "peer_id"], [("idx_group_peers_account_id", ["account_id"], False)],
                  [("fk_groups_group_peers", "group_id", "groups", "CASCADE")]))

    pub = "public_id text, " if cur else ""
    T.append(("policies", _cols("id text, " + pub + "account_id text, name text, description text, "
                                "enabled bool, source_posture_checks json"), ["id"],
              [("idx_policies_account_id", ["account_id"], False)], fk_acct("policies")))
    r = "id text, policy_id text, name text, description text, enabled bool, action text, destinations json, "
    if not old:
        r += "destination_resource json, "
    r += "sources json, "
    if not old:
        r += "source_resource json, "
    r += "bidirectional bool, protocol text, ports json"
    if version != "v0.27.4":
        r += ", port_ranges json"
    if cur:
        r += ", authorized_groups json, authorized_user text"
    T.append(("policy_rules", _cols(r), ["id"], [("idx_policy_rules_policy_id", ["policy_id"], False)],
              [("fk_policies_rules", "policy_id", "policies", "CASCADE")]))

    rt = "id text, account_id text, " + pub + "network json, "
    if version != "v0.27.4":
        rt += "domains json, keep_route bool, "
    rt += "net_id text, description text, peer text, peer_groups json, network_type int, masquerade bool, " \
          "metric int, enabled bool, groups json"
    if version != "v0.27.4":
        rt += ", access_control_groups json"
    if cur:
        rt += ", skip_auto_apply bool"
    T.append(("routes", _cols(rt), ["id"], [("idx_routes_account_id", ["account_id"], False)],
              fk_acct("routes_g")))
    T.append(("name_server_groups", _cols(
        "id text, account_id text, " + pub + "name text, description text, name_servers json, groups json, "
        "primary bool, domains json, enabled bool, search_domains_enabled bool"), ["id"],
        [("idx_name_server_groups_account_id", ["account_id"], False)], fk_acct("name_server_groups_g")))
    T.append(("installations", _cols("id int, installation_id_value text"), ["id"], [], []))
    T.append(("extra_settings", _cols(
        "peer_approval_enabled bool, " + ("user_approval_required bool, " if cur else "") +
        ("integrated_validator text, " if not old else "") + "integrated_validator_groups json"), [], [], []))
    T.append(("posture_checks", _cols("id text, name text, description text, account_id text, " + pub +
                                      "checks json"), ["id"],
              [("idx_posture_checks_account_id", ["account_id"], False)], fk_acct("posture_checks")))
    T.append(("network_addresses", _cols("net_ip json, mac text"), [], [], []))
    if not old:
        T.append(("networks", _cols("id text, account_id text, " + pub + "name text, description text"),
                  ["id"], [("idx_networks_account_id", ["account_id"], False)], fk_acct("networks")))
        T.append(("network_routers", _cols(
            "id text, network_id text, account_id text, " + pub + "peer text, peer_groups json, "
            "masquerade bool, metric int, enabled bool"), ["id"],
            [("idx_network_routers_account_id", ["account_id"], False),
             ("idx_network_routers_network_id", ["network_id"], False)], fk_acct("network_routers")))
        T.append(("network_resources", _cols(
            "id text, network_id text, account_id text, " + pub + "name text, description text, type text, "
            "domain text, prefix json, enabled bool"), ["id"],
            [("idx_network_resources_account_id", ["account_id"], False),
             ("idx_network_resources_network_id", ["network_id"], False)], fk_acct("network_resources")))
    if cur:
        T.append(("zones", _cols("id text, account_id text, name text, domain text, enabled bool, "
                                 "enable_search_domain bool, distribution_groups json"), ["id"],
                  [("idx_zones_account_id", ["account_id"], False)], []))
        T.append(("records", _cols("account_id text, zone_id text, id text, name text, type text, "
                                   "content text, ttl int"), ["id"],
                  [("idx_records_account_id", ["account_id"], False), ("idx_records_zone_id", ["zone_id"], False)],
                  [("fk_zones_records", "zone_id", "zones", "")]))
    return T


EVENTS_VERSIONS = ("v0.28.0", "v0.44.0", "current")


def _events_schema(version="current"):
    """NetBird's activity store (events.db). "current" (v0.45.0 on): gorm's
    tables from activity.Event and activity.DeletedUser. "v0.44.0"
    (v0.29.2 - v0.44.x): the hand-written SQLite tables of
    activity/sqlite/sqlite.go, deleted users encrypted with AES-GCM and
    enc_algo "GCM". "v0.28.0" (v0.23.3 - v0.29.1): the same tables before
    enc_algo, deleted users encrypted with the legacy AES-CBC and static IV
    (util/crypt/legacy.go), which NetBird's migrateLegacyEncryptedUsersToGCM
    converts. Dated by `git describe --contains` of the commits that added
    enc_algo/GCM (#2569) and moved the store to gorm (#3837)."""
    if version == "current":
        return [("events", _cols("timestamp time, activity int32, id serial, initiator_id text, target_id text, "
                                 "account_id text, meta json"), ["id"],
                 [("idx_events_account_id", ["account_id"], False)], []),
                ("deleted_users", _cols("id text, email text NOT_NULL, name text, enc_algo text NOT_NULL"),
                 ["id"], [], [])]
    if version not in EVENTS_VERSIONS:
        raise ValueError("unknown events store version %r (have %s)" % (version, ", ".join(EVENTS_VERSIONS)))
    du = "id text NOT_NULL, email text NOT_NULL, name text" + (", enc_algo text NOT_NULL" if version == "v0.44.0" else "")
    return [("events", _cols("id serial, activity int32, timestamp time, initiator_id text, account_id text, "
                             "meta json, target_id text"), ["id"], [], []),
            ("deleted_users", _cols(du), [], [], [])]


_SQLITE_TYPES = {"text": "text", "bool": "numeric", "int": "integer", "int32": "integer", "time": "datetime",
                 "json": "text", "blob": "blob", "serial": "integer"}
_PG_TYPES = {"text": "text", "bool": "boolean", "int": "bigint", "int32": "integer",
             "time": "timestamp with time zone", "json": "text", "blob": "bytea", "serial": "bigserial"}


def _extra(extra, engine):
    if extra == "NOT_NULL_DEFAULT_0":
        return " NOT NULL DEFAULT 0"
    if extra == "NOT_NULL":
        return " NOT NULL"
    if extra.startswith("DEFAULT"):
        v = extra.split(None, 1)[1]
        if engine == "sqlite" and v in ("false", "true"):
            v = "0" if v == "false" else "1"
        return " DEFAULT " + v
    return ""


def ddl(version, engine="sqlite", events=False):
    """The CREATE statements of a version, for "sqlite" or "postgres"
    (events=True: of the events store; version then one of EVENTS_VERSIONS)."""
    schema = _events_schema(version or "current") if events else _schema(version)
    q = (lambda s: "`%s`" % s) if engine == "sqlite" else (lambda s: '"%s"' % s)
    types = _SQLITE_TYPES if engine == "sqlite" else _PG_TYPES
    out = []
    for name, cols, pk, idx, fks in schema:
        parts = []
        for c, kind, extra in cols:
            if engine == "sqlite" and kind == "serial":
                parts.append("%s integer PRIMARY KEY AUTOINCREMENT" % q(c))
                continue
            parts.append("%s %s%s" % (q(c), types[kind], _extra(extra, engine)))
        if pk and not (engine == "sqlite" and any(k == "serial" for _, k, _ in cols)):
            parts.append("PRIMARY KEY (%s)" % ",".join(q(c) for c in pk))
        for fk, col, ref, ondel in fks:
            parts.append("CONSTRAINT %s FOREIGN KEY (%s) REFERENCES %s(%s)%s" % (
                q(fk), q(col), q(ref), q("id"), " ON DELETE " + ondel if ondel else ""))
        out.append("CREATE TABLE %s (%s)" % (q(name), ",".join(parts)))
        for iname, icols, unique in idx:
            out.append("CREATE %sINDEX %s ON %s(%s)" % ("UNIQUE " if unique else "", q(iname), q(name),
                                                         ",".join(q(c) for c in icols)))
    return out


# ---------------------------------------------------------------- rows

def _ipnet_json(cidr):
    n = ipaddress.ip_network(cidr)
    return {"IP": str(n.network_address),
            "Mask": base64.b64encode(n.netmask.packed).decode()}


def _ip_blob(ip, i):
    """net.IP as gorm wrote it before v0.27.8: 4 bytes for most peers, the
    16-byte v4-in-v6 form for every third one (both occur in the field)."""
    a = ipaddress.ip_address(ip)
    return (b"\x00" * 10 + b"\xff\xff" + a.packed) if i % 3 == 2 else a.packed


def _zero_time():
    return datetime.datetime(1, 1, 1, tzinfo=UTC)


def _rows(version, data, key):
    """{table: [row dict]} for one version; values still Python types, with
    json columns as Python objects (encoded at insert)."""
    f = _check_version(version)
    cur = "group_peers" in f
    data = data_for(version, data)
    rows = {}

    def add(table, **kw):
        rows.setdefault(table, []).append(kw)

    def enc(s):
        return field_encrypt(key, s) if ("encrypted" in f and key) else s

    add("installations", id=1, installation_id_value="nbstore-fixture-installation")
    for a in data["accounts"]:
        s, n = a["settings"], a["network"]
        acct = dict(id=a["id"], created_by=a["created_by"], created_at=a["created_at"], domain=a["domain"],
                    domain_category=a["domain_category"], is_domain_primary_account=a["is_domain_primary_account"],
                    network_identifier=n["identifier"], network_net=_ipnet_json(n["net"]),
                    network_net_v6={"IP": "", "Mask": None}, network_dns=n["dns"], network_serial=n["serial"],
                    dns_settings_disabled_management_groups=a["dns"]["disabled_management_groups"],
                    reverse_proxy_free_domain_nonce="")
        for k, v in s.items():
            if k in ("peer_approval_enabled", "user_approval_required"):
                acct["settings_extra_" + k] = v
            else:
                acct["settings_" + k] = v
        acct.update(settings_extra_integrated_validator="", settings_extra_integrated_validator_groups=[],
                    settings_network_range="", settings_network_range_v6="", settings_peer_expose_enabled=False,
                    settings_peer_expose_groups=[], settings_auto_update_version="disabled",
                    settings_auto_update_always=False, settings_ipv6_enabled_groups=[],
                    settings_metrics_push_enabled=False, settings_agent_network_only=False,
                    settings_dashboard_features=None, settings_local_mfa_enabled=False)
        add("accounts", **acct)
        add("account_onboardings", account_id=a["id"], onboarding_flow_pending=False, signup_form_pending=False,
            created_at=a["created_at"], updated_at=a["created_at"])
        key_of = {}
        for k in a["setup_keys"]:
            plain = k["plain"]
            key_of[k["id"]] = plain
            hashed = "hashed_keys" in f
            add("setup_keys", id=k["id"], account_id=a["id"], key=sha256_b64(plain) if hashed else plain,
                key_secret=hidden_key(plain), name=k["name"], type=k["type"], created_at=k["created_at"],
                expires_at=k["expires_at"], updated_at=k["updated_at"], revoked=k["revoked"],
                used_times=k["used_times"], last_used=k["last_used"] or (None if hashed else _zero_time()),
                auto_groups=k["auto_groups"], usage_limit=k["usage_limit"], ephemeral=k["ephemeral"],
                allow_extra_dns_labels=k["allow_extra_dns_labels"])
        for i, p in enumerate(a["peers"]):
            loc = p["location"] or {"ip": None, "country": "", "city": "", "geoname_id": 0}
            if version == "v0.27.4":
                ip = _ip_blob(p["ip"], i)
                cip = ipaddress.ip_address(loc["ip"]).packed if loc["ip"] else None
            else:
                ip = p["ip"]
                cip = loc["ip"] or ""
            add("peers", id=p["id"], account_id=a["id"], key=p["key"],
                setup_key=key_of.get(p["setup_key_id"], ""), ip=ip, ipv6="",
                meta_hostname=p["hostname"], meta_go_os=p["goos"], meta_kernel=p["kernel"], meta_core=p["core"],
                meta_platform=p["platform"], meta_os=p["os"], meta_os_version=p["os_version"],
                meta_wt_version=p["wt_version"], meta_ui_version=p["ui_version"],
                meta_kernel_version=p["kernel_version"],
                meta_network_addresses=[{"NetIP": x["net_ip"], "Mac": x["mac"]} for x in p["network_addresses"]],
                meta_system_serial_number=p["serial"], meta_system_product_name=p["product"],
                meta_system_manufacturer=p["manufacturer"], meta_environment=p["environment"],
                meta_flags={"RosenpassEnabled": False, "RosenpassPermissive": False, "ServerSSHAllowed": p["ssh_enabled"],
                            "DisableClientRoutes": False, "DisableServerRoutes": False, "DisableDNS": False,
                            "DisableFirewall": False, "BlockLANAccess": False, "BlockInbound": False,
                            "DisableIPv6": False, "LazyConnectionEnabled": False},
                meta_files=p["files"], meta_capabilities=[1, 3], meta_sync_message_version=1,
                proxy_meta_embedded=False, proxy_meta_cluster="",
                name=p["name"], dns_label=p["dns_label"], peer_status_last_seen=p["last_seen"],
                peer_status_session_started_at=0, peer_status_connected=p["connected"],
                peer_status_login_expired=p["login_expired"], peer_status_requires_approval=p["requires_approval"],
                user_id=p["user_id"], ssh_key=p["ssh_key"], ssh_enabled=p["ssh_enabled"],
                login_expiration_enabled=p["login_expiration_enabled"],
                inactivity_expiration_enabled=p["inactivity_expiration_enabled"],
                last_login=p["last_login"], created_at=p["created_at"], ephemeral=p["ephemeral"],
                location_connection_ip=cip, location_country_code=loc["country"],
                location_city_name=loc["city"], location_geo_name_id=loc["geoname_id"],
                extra_dns_labels=p["extra_dns_labels"], allow_extra_dns_labels=p["allow_extra_dns_labels"])
        for u in a["users"]:
            add("users", id=u["id"], account_id=a["id"], role=u["role"], is_service_user=u["is_service_user"],
                non_deletable=u["non_deletable"], service_user_name=u["service_user_name"],
                auto_groups=u["auto_groups"], blocked=u["blocked"], pending_approval=u["pending_approval"],
                last_login=u["last_login"] if (u["last_login"] or cur or version == "v0.52.0") else _zero_time(),
                created_at=u["created_at"], issued=u["issued"], integration_ref_id=0,
                integration_ref_integration_type="", name=enc(u["name"]), email=enc(u["email"]))
        for pt in a["pats"]:
            add("personal_access_tokens", id=pt["id"], user_id=pt["user_id"], name=pt["name"],
                hashed_token=sha256_b64(pt["token"]), expiration_date=pt["expiration_date"],
                created_by=pt["created_by"], created_at=pt["created_at"],
                last_used=pt["last_used"] or (None if version not in ("v0.27.4", "v0.30.0") else _zero_time()))
        for g in a["groups"]:
            add("groups", id=g["id"], account_id=a["id"], public_id=xid("public/" + g["id"]), name=g["name"],
                issued=g["issued"], peers=g["peers"],
                resources=[{"ID": r["id"], "Type": r["type"]} for r in g["resources"]],
                integration_ref_id=0, integration_ref_integration_type="")
            for pid in g["peers"]:
                add("group_peers", account_id=a["id"], group_id=g["id"], peer_id=pid)
        for pc in a["posture_checks"]:
            add("posture_checks", id=pc["id"], name=pc["name"], description=pc["description"],
                account_id=a["id"], public_id=xid("public/" + pc["id"]), checks=pc["checks"])
        for po in a["policies"]:
            add("policies", id=po["id"], public_id=xid("public/" + po["id"]), account_id=a["id"],
                name=po["name"], description=po["description"], enabled=po["enabled"],
                source_posture_checks=po["source_posture_checks"])
            for r in po["rules"]:
                add("policy_rules", id=r["id"], policy_id=po["id"], name=r["name"], description=r["description"],
                    enabled=r["enabled"], action=r["action"], destinations=r["destinations"],
                    destination_resource={"ID": "", "Type": ""}, sources=r["sources"],
                    source_resource={"ID": "", "Type": ""}, bidirectional=r["bidirectional"],
                    protocol=r["protocol"], ports=r["ports"],
                    port_ranges=[{"Start": x["start"], "End": x["end"]} for x in r["port_ranges"]],
                    authorized_groups=None, authorized_user="")
        for rt in a["routes"]:
            add("routes", id=rt["id"], account_id=a["id"], public_id=xid("public/" + rt["id"]),
                network=rt["network"] or "", domains=rt["domains"], keep_route=rt["keep_route"],
                net_id=rt["net_id"], description=rt["description"], peer=rt["peer"],
                peer_groups=rt["peer_groups"], network_type=rt["network_type"], masquerade=rt["masquerade"],
                metric=rt["metric"], enabled=rt["enabled"], groups=rt["groups"],
                access_control_groups=rt["access_control_groups"], skip_auto_apply=False)
        for ns in a["nameserver_groups"]:
            add("name_server_groups", id=ns["id"], account_id=a["id"], public_id=xid("public/" + ns["id"]),
                name=ns["name"], description=ns["description"],
                name_servers=[{"IP": x["ip"], "NSType": 1, "Port": x["port"]} for x in ns["nameservers"]],
                groups=ns["groups"], primary=ns["primary"], domains=ns["domains"], enabled=ns["enabled"],
                search_domains_enabled=ns["search_domains_enabled"])
        for nw in a["networks"]:
            add("networks", id=nw["id"], account_id=a["id"], public_id=xid("public/" + nw["id"]),
                name=nw["name"], description=nw["description"])
            for r in nw["resources"]:
                dom = r["address"] if r["type"] == "domain" else ""
                pfx = r["address"] if r["type"] != "domain" else ""
                add("network_resources", id=r["id"], network_id=nw["id"], account_id=a["id"],
                    public_id=xid("public/" + r["id"]), name=r["name"], description=r["description"],
                    type=r["type"], domain=dom, prefix=pfx, enabled=r["enabled"])
            for r in nw["routers"]:
                add("network_routers", id=r["id"], network_id=nw["id"], account_id=a["id"],
                    public_id=xid("public/" + r["id"]), peer=r["peer"], peer_groups=r["peer_groups"],
                    masquerade=r["masquerade"], metric=r["metric"], enabled=r["enabled"])
        for z in a["zones"]:
            add("zones", id=z["id"], account_id=a["id"], name=z["name"], domain=z["domain"], enabled=z["enabled"],
                enable_search_domain=z["enable_search_domain"], distribution_groups=z["distribution_groups"])
            for r in z["records"]:
                add("records", account_id=a["id"], zone_id=z["id"], id=r["id"], name=r["name"], type=r["type"],
                    content=r["content"], ttl=r["ttl"])
    return rows


_LEGACY_IV = bytes([10, 22, 13, 79, 5, 8, 52, 91, 87, 98, 88, 98, 35, 25, 13, 5])


def legacy_encrypt(key_b64, plain):
    """util/crypt LegacyEncrypt: AES-CBC, static IV, PKCS#5 padding."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    raw = plain.encode()
    pad = 16 - len(raw) % 16
    raw += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(base64.b64decode(key_b64)), modes.CBC(_LEGACY_IV)).encryptor()
    return base64.b64encode(enc.update(raw) + enc.finalize()).decode()


def legacy_decrypt(key_b64, ct):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    dec = Cipher(algorithms.AES(base64.b64decode(key_b64)), modes.CBC(_LEGACY_IV)).decryptor()
    raw = dec.update(base64.b64decode(ct)) + dec.finalize()
    return raw[:-raw[-1]].decode()


def deleted_users(data=None):
    """[(user id, email, name)] NetBird's events store keeps encrypted:
    the targets of events whose meta held both email and name."""
    data = data if data is not None else dataset()
    out = {}
    for a in data["accounts"]:
        for e in a["events"]:
            if "email" in e["meta"] and "name" in e["meta"]:
                out[e["target_id"]] = (e["target_id"], e["meta"]["email"], e["meta"]["name"])
    return list(out.values())


def _events_rows(data, key, version="current"):
    rows = {"events": [], "deleted_users": []}
    for a in data["accounts"]:
        for e in a["events"]:
            meta = dict(e["meta"])
            if "email" in meta and "name" in meta:
                del meta["email"], meta["name"]
            rows["events"].append(dict(timestamp=e["timestamp"], activity=e["activity"], id=e["id"],
                                       initiator_id=e["initiator_id"], target_id=e["target_id"],
                                       account_id=a["id"], meta=meta or None))
    for uid, email, name in deleted_users(data):
        if not key:
            raise ValueError("deleted users need key= (NetBird encrypts their email and name)")
        if version == "v0.28.0":
            rows["deleted_users"].append(dict(id=uid, email=legacy_encrypt(key, email), name=legacy_encrypt(key, name)))
        else:
            rows["deleted_users"].append(dict(id=uid, email=field_encrypt(key, email), name=field_encrypt(key, name),
                                              enc_algo="GCM"))
    return rows


def _go_time(v):
    """time.Time as mattn/go-sqlite3 stores it."""
    s = v.strftime("%Y-%m-%d %H:%M:%S")
    if v.microsecond:
        s += (".%06d" % v.microsecond).rstrip("0")
    off = v.utcoffset() or datetime.timedelta(0)
    mins = int(off.total_seconds()) // 60
    return s + "%s%02d:%02d" % ("+" if mins >= 0 else "-", abs(mins) // 60, abs(mins) % 60)


def _value(kind, v, engine):
    if kind == "json":
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    if v is None:
        return None
    if kind == "bool":
        return (1 if v else 0) if engine == "sqlite" else bool(v)
    if kind == "time":
        return _go_time(v) if engine == "sqlite" else v
    if kind == "blob":
        return v if engine == "sqlite" else bytes(v)
    return v


def _insert_all(schema, rows, engine, execute):
    ph = "?" if engine == "sqlite" else "%s"
    q = (lambda s: "`%s`" % s) if engine == "sqlite" else (lambda s: '"%s"' % s)
    for name, cols, _pk, _idx, _fks in schema:
        for r in rows.get(name, []):
            names = [c for c, _k, _e in cols if c in r]
            vals = [_value(k, r[c], engine) for c, k, _e in cols if c in r]
            execute("INSERT INTO %s (%s) VALUES (%s)" % (q(name), ",".join(q(c) for c in names),
                                                         ",".join([ph] * len(names))), vals)


def _need_key(version, key):
    if version == "encrypted" and not key:
        raise ValueError('version "encrypted" needs key= (a base64 DataStoreEncryptionKey)')


# ---------------------------------------------------------------- writers

def _leftovers(version, data, engine, execute):
    """What a store upgraded in place keeps (gorm's AutoMigrate never drops
    a table or a column): the legacy `rules` table of NetBird before
    policies (in AutoMigrate up to v0.2x), one disabled rule per account,
    and, where Networks exist, network_resources.address of v0.35 (before
    Address became gorm:"-"), filled as it was then."""
    q = (lambda x: "`%s`" % x) if engine == "sqlite" else (lambda x: '"%s"' % x)
    ph = "?" if engine == "sqlite" else "%s"
    types = _SQLITE_TYPES if engine == "sqlite" else _PG_TYPES
    execute("CREATE TABLE %s (%s text,%s text,%s text,%s text,%s %s,%s text,%s text,%s %s,PRIMARY KEY (%s))" % (
        q("rules"), q("id"), q("account_id"), q("name"), q("description"), q("disabled"), types["bool"],
        q("source"), q("destination"), q("flow"), types["int"], q("id")))
    for a in data_for(version, data)["accounts"]:
        all_group = [g["id"] for g in a["groups"] if g["name"] == "All"]
        execute("INSERT INTO %s VALUES (%s)" % (q("rules"), ",".join([ph] * 8)),
                [xid(a["id"] + "/legacy-rule"), a["id"], "Default", "a rule from before policies",
                 _value("bool", True, engine), json.dumps(all_group), json.dumps(all_group), 0])
        if "networks" not in _FEATURES[version]:
            continue
        for nw in a["networks"]:
            for r in nw["resources"]:
                execute("UPDATE %s SET %s = %s WHERE %s = %s" % (q("network_resources"), q("address"), ph, q("id"), ph),
                        [r["address"], r["id"]])
    return execute


def write_sqlite(path, version, data=None, key=None, leftovers=False):
    """Write NetBird's store.db of this version to path (replaced).
    leftovers=True: as a store upgraded from older releases looks, with
    a table and a column the current models no longer know (_leftovers)."""
    _check_version(version)
    _need_key(version, key)
    data = data if data is not None else dataset()
    if os.path.exists(path):
        os.unlink(path)
    db = sqlite3.connect(path)
    try:
        for stmt in ddl(version, "sqlite"):
            db.execute(stmt)
        _insert_all(_schema(version), _rows(version, data, key), "sqlite", db.execute)
        if leftovers:
            if "networks" in _FEATURES[version]:
                db.execute("ALTER TABLE `network_resources` ADD COLUMN `address` text")
            _leftovers(version, data, "sqlite", db.execute)
        db.commit()
    finally:
        db.close()
    return path


def write_events_sqlite(path, data=None, key=None, version="current"):
    """Write NetBird's events.db (activity store) of an EVENTS_VERSIONS
    shape to path (replaced). key: the DataStoreEncryptionKey the deleted
    users' email and name are encrypted with (needed when there are any)."""
    data = data if data is not None else dataset()
    if os.path.exists(path):
        os.unlink(path)
    db = sqlite3.connect(path)
    try:
        for stmt in ddl(version, "sqlite", events=True):
            db.execute(stmt)
        _insert_all(_events_schema(version), _events_rows(data, key, version), "sqlite", db.execute)
        db.commit()
    finally:
        db.close()
    return path


def write_datadir(directory, version, data=None, key=None):
    """store.db and events.db in directory, as NetBird's datadir holds them."""
    os.makedirs(directory, exist_ok=True)
    write_sqlite(os.path.join(directory, "store.db"), version, data, key)
    write_events_sqlite(os.path.join(directory, "events.db"), data, key or KEY)
    return directory


def _pg(dsn, statements_fn):
    import psycopg2
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            statements_fn(cur)
        conn.commit()
    finally:
        conn.close()


def write_postgres(dsn, version, data=None, key=None, leftovers=False):
    """Create NetBird's PostgreSQL store tables of this version in the
    (empty) database or schema dsn points at, and fill them. NetBird has
    had a PostgreSQL store since v0.28.0: "v0.27.4" here (IPs as bytea) is
    a shape NetBird never wrote to PostgreSQL, kept as a harder case."""
    _check_version(version)
    _need_key(version, key)
    data = data if data is not None else dataset()

    def run(cur):
        for stmt in ddl(version, "postgres"):
            cur.execute(stmt)
        _insert_all(_schema(version), _rows(version, data, key), "postgres", cur.execute)
        if leftovers:
            if "networks" in _FEATURES[version]:
                cur.execute('ALTER TABLE "network_resources" ADD COLUMN "address" text')
            _leftovers(version, data, "postgres", cur.execute)
    _pg(dsn, run)


def write_events_postgres(dsn, data=None, key=None):
    """NetBird's activity store in PostgreSQL (NB_ACTIVITY_EVENT_POSTGRES_DSN,
    from v0.46.0 on; gorm's tables: SQLite-only before)."""
    data = data if data is not None else dataset()

    def run(cur):
        for stmt in ddl("current", "postgres", events=True):
            cur.execute(stmt)
        _insert_all(_events_schema(), _events_rows(data, key), "postgres", cur.execute)
        cur.execute("SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT COALESCE(max(id), 1) FROM events))")
    _pg(dsn, run)


def tables(version, events=False):
    """{table: [columns]} of a version (what a store of it holds)."""
    schema = _events_schema(version or "current") if events else _schema(version)
    return {name: [c for c, _k, _e in cols] for name, cols, _pk, _i, _f in schema}


def row_counts(version, data=None):
    """{table: rows} the writers write for this version and data."""
    data = data if data is not None else dataset()
    rows = _rows(version, data, KEY)
    names = tables(version)
    return {n: len(rows.get(n, [])) for n in names}


# ---------------------------------------------------------------- broken stores

def write_truncated(path, version="current", data=None, keep=0.5):
    """A store.db cut off part-way (a copy interrupted mid-file)."""
    write_sqlite(path, version, data, KEY if version == "encrypted" else None)
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(raw[:max(100, int(len(raw) * keep))])
    return path


def write_not_sqlite(path):
    """A file that is not SQLite at all (a management.json by mistake)."""
    with open(path, "w") as fh:
        json.dump({"Stores": {"Engine": "sqlite"}, "DataStoreEncryptionKey": KEY}, fh)
    return path


def write_unknown_schema(path, kind="no_accounts"):
    """A valid SQLite file that is not a NetBird store: kind "no_accounts"
    (tables, but no accounts table) or "missing_column" (a NetBird store
    whose peers table lacks the key column)."""
    if os.path.exists(path):
        os.unlink(path)
    if kind == "no_accounts":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text)")
        db.execute("INSERT INTO notes (body) VALUES ('not a NetBird store')")
        db.commit()
        db.close()
    elif kind == "missing_column":
        write_sqlite(path, "current")
        db = sqlite3.connect(path)
        db.execute("DROP INDEX idx_peers_key_unique")
        db.execute("ALTER TABLE peers DROP COLUMN key")
        db.commit()
        db.close()
    else:
        raise ValueError("unknown kind %r" % kind)
    return path


# ---------------------------------------------------------------- expected REST view
# (in nbstore_rest.py; these keep the one import for the tests)

def expected_rest(data=None, dns_domain="netbird.selfhosted"):
    """What NetBird's REST API shows for data, per account:
    {account_id: {"/api/peers": [...], ...}} (nbstore_rest.expected_rest)."""
    import nbstore_rest
    return nbstore_rest.expected_rest(data, dns_domain)


def expected_events(data=None):
    """GET /api/events per account, oldest first (nbstore_rest.expected_events)."""
    import nbstore_rest
    return nbstore_rest.expected_events(data)


def expected_zones(data=None):
    """GET /api/dns/zones (and each zone's records) per account
    (nbstore_rest.expected_zones)."""
    import nbstore_rest
    return nbstore_rest.expected_zones(data)


def subset_diff(actual, expected, path=""):
    import nbstore_rest
    return nbstore_rest.subset_diff(actual, expected, path)


def assert_subset(actual, expected, what=""):
    import nbstore_rest
    return nbstore_rest.assert_subset(actual, expected, what)
