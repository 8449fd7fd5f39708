"""Geolocation test data written by the project itself (no MaxMind data).

write_mmdb(path, networks) writes a small MaxMind DB (format 2.0, the
public "MaxMind DB File Format Specification"): an IPv6 search tree with
IPv4 networks under ::/96, 32-bit records, and a data section holding
GeoLite2-City-shaped records (country.iso_code, city.names.en,
city.geoname_id). networks: [("127.0.0.0/8", {"country": "DE", "city":
"Berlin", "geoname_id": 2950159}), ...], non-overlapping.

write_geonames(path, rows) writes NetBird's geonames SQLite layout (table
geonames with the columns of its GeoNames struct). rows: [(geoname_id,
country_iso_code, country_name, city_name), ...].

write_datadir(dir) writes both, named as NetBird names them
(GeoLite2-City_<date>.mmdb, geonames_<date>.db), with FIXTURE below.
"""
import ipaddress
import os
import sqlite3
import struct

# The fixture every geo test uses: loopback is Berlin, so agents that
# connect from 127.0.0.1 get a location.
NETWORKS = [
    ("127.0.0.0/8", {"country": "DE", "city": "Berlin", "geoname_id": 2950159}),
    ("192.0.2.0/24", {"country": "FR", "city": "Paris", "geoname_id": 2988507}),
    ("198.51.100.0/24", {"country": "US", "city": "", "geoname_id": 0}),
    ("2001:db8::/32", {"country": "JP", "city": "Tokyo", "geoname_id": 1850147}),
]
GEONAMES = [
    (2950159, "DE", "Germany", "Berlin"),
    (2867714, "DE", "Germany", "Munich"),
    (2911298, "DE", "Germany", "Hamburg"),
    (2921044, "DE", "Germany", ""),
    (2988507, "FR", "France", "Paris"),
    (1850147, "JP", "Japan", "Tokyo"),
    (5128581, "US", "United States", "New York"),
]


def _ctrl(typ, size):
    """Control byte(s) for a type and payload size (spec: Data Section)."""
    if size < 29:
        first, ext = size, b""
    elif size < 29 + 256:
        first, ext = 29, bytes([size - 29])
    elif size < 285 + 65536:
        first, ext = 30, struct.pack(">H", size - 285)
    else:
        first, ext = 31, struct.pack(">I", size - 65821)[1:]
    if typ <= 7:
        return bytes([(typ << 5) | first]) + ext
    return bytes([first, typ - 7]) + ext


def _uint(typ, v):
    b = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big") if v else b""
    return _ctrl(typ, len(b)) + b


def encode(v, uint_type=None):
    if isinstance(v, bool):
        return _ctrl(14, 1 if v else 0)
    if isinstance(v, str):
        b = v.encode()
        return _ctrl(2, len(b)) + b
    if isinstance(v, int):
        return _uint(uint_type or 6, v)
    if isinstance(v, dict):
        out = _ctrl(7, len(v))
        for k, x in v.items():
            t = None
            if isinstance(x, tuple):
                x, t = x
            out += encode(k) + encode(x, t)
        return out
    if isinstance(v, list):
        out = _ctrl(11, len(v))
        for x in v:
            out += encode(x)
        return out
    raise TypeError(type(v))


def _record(country, city, geoname_id):
    r = {"country": {"iso_code": country}}
    if city or geoname_id:
        c = {}
        if geoname_id:
            c["geoname_id"] = geoname_id
        if city:
            c["names"] = {"en": city}
        r["city"] = c
    return r


def write_mmdb(path, networks=NETWORKS):
    # The trie: nodes[i] = [left, right]; a record is a node index (int),
    # ("data", offset) or None (no data).
    nodes = [[None, None]]
    data = b""
    for cidr, rec in networks:
        net = ipaddress.ip_network(cidr)
        if net.version == 4:
            bits = int(net.network_address) | 0  # under ::/96
            plen = 96 + net.prefixlen
        else:
            bits = int(net.network_address)
            plen = net.prefixlen
        off = len(data)
        data += encode(_record(rec["country"], rec.get("city", ""), rec.get("geoname_id", 0)))
        n = 0
        for depth in range(plen):
            bit = (bits >> (127 - depth)) & 1
            if depth == plen - 1:
                nodes[n][bit] = ("data", off)
            else:
                if nodes[n][bit] is None:
                    nodes.append([None, None])
                    nodes[n][bit] = len(nodes) - 1
                n = nodes[n][bit]
    count = len(nodes)
    tree = b""
    for node in nodes:
        for r in node:
            if r is None:
                v = count
            elif isinstance(r, tuple):
                v = count + 16 + r[1]
            else:
                v = r
            tree += struct.pack(">I", v)
    meta = encode({
        "node_count": (count, 6),
        "record_size": (32, 5),
        "ip_version": (6, 5),
        "database_type": "GeoLite2-City",
        "languages": ["en"],
        "binary_format_major_version": (2, 5),
        "binary_format_minor_version": (0, 5),
        "build_epoch": (1700000000, 9),
        "description": {"en": "control plane test fixture"},
    })
    with open(path, "wb") as f:
        f.write(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)


def write_geonames(path, rows=GEONAMES):
    if os.path.exists(path):
        os.unlink(path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE geonames (geoname_id integer, locale_code text, continent_code text,"
               " continent_name text, country_iso_code text, country_name text,"
               " subdivision_1_iso_code text, subdivision_1_name text, subdivision_2_iso_code text,"
               " subdivision_2_name text, city_name text, metro_code text, time_zone text,"
               " is_in_european_union text)")
    db.executemany("INSERT INTO geonames (geoname_id, locale_code, country_iso_code, country_name,"
                   " city_name) VALUES (?, 'en', ?, ?, ?)", rows)
    db.commit()
    db.close()


def write_datadir(d):
    os.makedirs(d, exist_ok=True)
    write_mmdb(os.path.join(d, "GeoLite2-City_20240101.mmdb"))
    write_geonames(os.path.join(d, "geonames_20240101.db"))
    return d


if __name__ == "__main__":
    import sys
    write_datadir(sys.argv[1])
