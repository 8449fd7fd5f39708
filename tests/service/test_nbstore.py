"""tests/lib/nbstore.py checks itself: every NetBird store version written
to SQLite and to PostgreSQL reads back with the tables, columns, types and
row counts the module promises; the secrets it hands the import tests
(WireGuard keys, setup keys, tokens, the encrypted fields) are what NetBird
would accept; the broken stores are broken the way they claim."""

import base64
import os
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import svc  # noqa: E402
import nbstore  # noqa: E402

test = svc.test


def sqlite_counts(path, version):
    db = sqlite3.connect(path)
    try:
        return {t: db.execute("SELECT count(*) FROM `%s`" % t).fetchone()[0] for t in nbstore.tables(version)}
    finally:
        db.close()


def sqlite_columns(path):
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%'")]
        return {n: [r[1] for r in db.execute("PRAGMA table_info(`%s`)" % n)] for n in names}
    finally:
        db.close()


def key_for(version):
    return nbstore.KEY if version == "encrypted" else None


@test
def sqlite_every_version():
    d = svc.tmpdir()
    for v in nbstore.VERSIONS:
        path = nbstore.write_sqlite(os.path.join(d, v + ".db"), v, key=key_for(v))
        assert sqlite_columns(path) == nbstore.tables(v), v
        counts = sqlite_counts(path, v)
        assert counts == nbstore.row_counts(v), (v, counts)
        assert counts["accounts"] == 2 and counts["peers"] == 10 and counts["users"] == 7, (v, counts)
        held = nbstore.data_for(v)["accounts"]
        assert counts["routes"] == sum(len(a["routes"]) for a in held), (v, counts)


@test
def sqlite_version_shapes():
    """What distinguishes the versions, as a reader of the file sees it."""
    d = svc.tmpdir()
    data = nbstore.dataset()
    rich = data["accounts"][0]
    servers = nbstore.by_name(rich["setup_keys"], "servers")
    anna = nbstore.by_name(rich["peers"], "laptop-anna")
    owner = rich["users"][0]
    dbs = {v: sqlite3.connect(nbstore.write_sqlite(os.path.join(d, v + ".db"), v, key=key_for(v)))
           for v in nbstore.VERSIONS}
    try:
        # peers.ip: BLOB of 4 or 16 bytes, then a JSON string
        ips = dbs["v0.27.4"].execute("SELECT typeof(ip), length(ip), ip FROM peers").fetchall()
        assert {r[0] for r in ips} == {"blob"} and {r[1] for r in ips} == {4, 16}, ips
        for r in ips:
            assert bytes(r[2])[-4:] in [bytes(int(x) for x in p["ip"].split("."))
                                        for a in data["accounts"] for p in a["peers"]]
        for v in ("v0.30.0", "v0.52.0", "current"):
            got = dbs[v].execute("SELECT ip FROM peers WHERE id = ?", (anna["id"],)).fetchone()[0]
            assert got == '"%s"' % anna["ip"], (v, got)
        # setup keys: plain, then hashed with the masked secret
        for v in ("v0.27.4", "v0.30.0"):
            got = dbs[v].execute("SELECT key FROM setup_keys WHERE id = ?", (servers["id"],)).fetchone()[0]
            assert got == servers["plain"], (v, got)
        for v in ("v0.52.0", "current"):
            got = dbs[v].execute("SELECT key, key_secret FROM setup_keys WHERE id = ?", (servers["id"],)).fetchone()
            assert got == (nbstore.sha256_b64(servers["plain"]), servers["plain"][:5] + "****"), (v, got)
        # group membership: groups.peers JSON, then group_peers
        for v in ("v0.27.4", "v0.30.0", "v0.52.0"):
            got = dbs[v].execute("SELECT peers FROM groups WHERE name = 'servers' AND account_id = ?",
                                 (rich["id"],)).fetchone()[0]
            assert got == '["%s"]' % '","'.join(nbstore.by_name(rich["groups"], "servers")["peers"]), got
        got = dbs["current"].execute("SELECT count(*) FROM group_peers gp JOIN groups g ON g.id = gp.group_id "
                                     "WHERE g.name = 'All' AND gp.account_id = ?", (rich["id"],)).fetchone()[0]
        assert got == len(rich["peers"]), got
        # users' name/email: absent, plain, encrypted
        assert "email" not in sqlite_columns_of(dbs["v0.52.0"], "users")
        got = dbs["current"].execute("SELECT name, email FROM users WHERE id = ?", (owner["id"],)).fetchone()
        assert got == (owner["name"], owner["email"]), got
        got = dbs["encrypted"].execute("SELECT name, email FROM users WHERE id = ?", (owner["id"],)).fetchone()
        assert got[1] != owner["email"] and nbstore.field_decrypt(nbstore.KEY, got[1]) == owner["email"], got
        assert nbstore.field_decrypt(nbstore.KEY, got[0]) == owner["name"]
        assert len(base64.b64decode(got[1])) == 12 + len(owner["email"]) + 16
        # gorm's value encodings
        net = dbs["current"].execute("SELECT network_net, settings_peer_login_expiration, "
                                     "settings_peer_login_expiration_enabled FROM accounts WHERE id = ?",
                                     (rich["id"],)).fetchone()
        assert net == ('{"IP":"100.90.0.0","Mask":"//8AAA=="}', 86400 * 10 ** 9, 1), net
        got = dbs["current"].execute("SELECT created_at FROM accounts WHERE id = ?", (rich["id"],)).fetchone()[0]
        assert got == "2025-01-10 08:00:00+00:00", got
        # domain routes from v0.30.0 on
        assert dbs["v0.27.4"].execute("SELECT count(*) FROM routes").fetchone()[0] == 2
        assert dbs["v0.30.0"].execute("SELECT count(*) FROM routes WHERE domains <> '[]'").fetchone()[0] == 1
    finally:
        for db in dbs.values():
            db.close()


def sqlite_columns_of(db, table):
    return [r[1] for r in db.execute("PRAGMA table_info(`%s`)" % table)]


@test
def events_sqlite():
    path = nbstore.write_events_sqlite(os.path.join(svc.tmpdir(), "events.db"), key=nbstore.KEY)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 5
        row = db.execute("SELECT id, email, name, enc_algo FROM deleted_users").fetchone()
        gone = nbstore.dataset()["accounts"][0]["deleted_users"][0]
        assert row[0] == gone["id"] and row[3] == "GCM", row
        assert nbstore.field_decrypt(nbstore.KEY, row[1]) == gone["email"]
        assert nbstore.field_decrypt(nbstore.KEY, row[2]) == gone["name"]
        meta = db.execute("SELECT meta FROM events WHERE activity = 8").fetchone()[0]
        assert '"email":"ben@rich.example.test"' in meta, meta
    finally:
        db.close()


@test
def postgres_every_version():
    for v in nbstore.VERSIONS:
        dsn, _ = svc.new_db()
        nbstore.write_postgres(dsn, v, key=key_for(v))
        counts = {t: svc.query(dsn, 'SELECT count(*) FROM "%s"' % t)[0][0] for t in nbstore.tables(v)}
        assert counts == nbstore.row_counts(v), (v, counts)
        cols = {}
        for t, c, typ in svc.query(dsn, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                                        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"):
            cols.setdefault(t, []).append((c, typ))
        assert {t: [c for c, _ in cs] for t, cs in cols.items()} == nbstore.tables(v), v
        types = dict(cols["peers"])
        assert types["ephemeral"] == "boolean" and types["created_at"] == "timestamp with time zone", types
        assert types["location_geo_name_id"] == "bigint", types
        assert types["ip"] == ("bytea" if v == "v0.27.4" else "text"), types
    dsn, _ = svc.new_db()
    nbstore.write_events_postgres(dsn, key=nbstore.KEY)
    assert svc.query(dsn, "SELECT count(*), max(id) FROM events")[0] == (5, 5)
    assert svc.query(dsn, "SELECT count(*) FROM deleted_users")[0][0] == 1


@test
def secrets_are_usable():
    """Peer keys are X25519 pairs, tokens carry NetBird's checksum, and
    the store holds only their hashes."""
    import zlib
    from nacl.public import PrivateKey
    data = nbstore.dataset()
    keys = set()
    for a in data["accounts"]:
        for p in a["peers"]:
            pub = PrivateKey(base64.b64decode(p["private_key"])).public_key.encode()
            assert base64.b64encode(pub).decode() == p["key"], p["name"]
            keys.add(p["key"])
        for t in a["pats"]:
            tok = t["token"]
            assert tok.startswith("nbp_") and len(tok) == 40, tok
            crc, tail = zlib.crc32(tok[4:34].encode()), ""
            for _ in range(6):
                tail, crc = nbstore.BASE62[crc % 62] + tail, crc // 62
            assert tok[34:] == tail, tok
    assert len(keys) == 10
    assert nbstore.dataset() == nbstore.dataset()        # deterministic
    path = nbstore.write_sqlite(os.path.join(svc.tmpdir(), "s.db"), "current")
    raw = open(path, "rb").read()
    for a in data["accounts"]:
        for t in a["pats"]:
            assert t["token"].encode() not in raw
        for k in a["setup_keys"]:
            assert k["plain"].encode() not in raw
        for p in a["peers"]:
            assert p["private_key"].encode() not in raw


@test
def broken_stores():
    d = svc.tmpdir()
    for path in (nbstore.write_truncated(os.path.join(d, "trunc.db")),
                 nbstore.write_not_sqlite(os.path.join(d, "management.json"))):
        try:
            db = sqlite3.connect(path)
            db.execute("SELECT count(*) FROM peers").fetchone()
            db.execute("PRAGMA integrity_check").fetchall()
            rows = db.execute("SELECT * FROM peers").fetchall()
            raise AssertionError("%s read back fine (%d peers)" % (path, len(rows)))
        except sqlite3.DatabaseError:
            pass
    p = nbstore.write_unknown_schema(os.path.join(d, "other.db"))
    assert "accounts" not in sqlite_columns(p)
    p = nbstore.write_unknown_schema(os.path.join(d, "nokey.db"), "missing_column")
    cols = sqlite_columns(p)
    assert "accounts" in cols and "key" not in cols["peers"], cols["peers"]
    for bad in (lambda: nbstore.write_sqlite(os.path.join(d, "x.db"), "v9.9"),
                lambda: nbstore.write_sqlite(os.path.join(d, "x.db"), "encrypted")):
        try:
            bad()
            raise AssertionError("accepted")
        except ValueError:
            pass


@test
def expected_view():
    """expected_rest() follows the data and data_for() trims per version."""
    data = nbstore.dataset()
    view = nbstore.expected_rest(data)
    rich, small = data["accounts"]
    rv = view[rich["id"]]
    assert len(rv["/api/peers"]) == 8 and len(view[small["id"]]["/api/peers"]) == 2
    states = {k["name"]: k["state"] for k in rv["/api/setup-keys"]}
    assert states == {"servers": "valid", "ci ephemeral": "valid", "revoked key": "revoked",
                      "expired key": "expired", "one-off used": "overused"}, states
    web = [r for p in rv["/api/policies"] for r in p["rules"] if r["name"] == "web"][0]
    assert web["port_ranges"] == [{"start": 8000, "end": 8100}] and web["ports"] == ["80", "443"]
    assert [r["network_type"] for r in rv["/api/routes"]] == ["IPv4", "IPv4", "Domain"]
    old = nbstore.expected_rest(nbstore.data_for("v0.27.4", data))[rich["id"]]
    assert len(old["/api/routes"]) == 2 and old["/api/networks"] == []
    assert all("port_ranges" not in r for p in old["/api/policies"] for r in p["rules"])
    assert nbstore.subset_diff(rv, rv) == []
    moved = [dict(p, name="x") for p in rv["/api/peers"]]
    assert len(nbstore.subset_diff(moved, rv["/api/peers"])) == 8


if __name__ == "__main__":
    sys.exit(svc.run_all())
