"""/api/locations (api-locations.c) on the geolocation databases of the
datadir, written by tests/lib/geofix.py: NetBird's Country and City lists,
its 422 for a bad code, and what is answered without databases."""

import os
import sys

import apifix
from apifix import svc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import geofix  # noqa: E402
from nbagent import build_meta  # noqa: E402

test = svc.test

check_schema = apifix.check_schema


def geo_metrics(srv):
    """netbird_cp_geolocation_databases by database, from /metrics."""
    import urllib.request
    with urllib.request.urlopen(srv.url("/metrics"), timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('netbird_cp_geolocation_databases{database="'):
            name = line.split('"')[1]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def geo_dir():
    return geofix.write_datadir(os.path.join(svc.tmpdir(), "datadir"))


@test
def countries_and_cities():
    dep, srv, api = apifix.start(extra=("--datadir", geo_dir()))
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("geolocation"))
    assert line["msg"] == "geolocation enabled", line
    assert line["mmdb"].endswith("GeoLite2-City_20240101.mmdb"), line
    assert line["countries"] == "geonames", line
    assert geo_metrics(srv) == {"mmdb": 1.0, "geonames": 1.0}
    countries = api.ok("GET", "/api/locations/countries")
    assert countries == [
        {"country_code": "FR", "country_name": "France"},
        {"country_code": "DE", "country_name": "Germany"},
        {"country_code": "JP", "country_name": "Japan"},
        {"country_code": "US", "country_name": "United States"},
    ], countries
    for c in countries:
        check_schema(c, "Country")
    cities = api.ok("GET", "/api/locations/countries/DE/cities")
    assert cities == [
        {"city_name": "Berlin", "geoname_id": 2950159},
        {"city_name": "Hamburg", "geoname_id": 2911298},
        {"city_name": "Munich", "geoname_id": 2867714},
    ], cities
    for c in cities:
        check_schema(c, "City")
    assert api.ok("GET", "/api/locations/countries/JP/cities") == [{"city_name": "Tokyo", "geoname_id": 1850147}]
    # An unknown country and a lower-case code (matched as given, as
    # NetBird's query does): no cities.
    assert api.ok("GET", "/api/locations/countries/XX/cities") == []
    assert api.ok("GET", "/api/locations/countries/de/cities") == []
    # NetBird's code check comes first.
    api.error("GET", "/api/locations/countries/D1/cities", 422, message="invalid country code")
    api.error("GET", "/api/locations/countries/DEU/cities", 422, message="invalid country code")
    api.error("POST", "/api/locations/countries", 405)
    # Any signed-in user; nobody without a token.
    user = apifix.role_api(dep, api, "user")[1]
    assert user.ok("GET", "/api/locations/countries") == countries
    assert user.ok("GET", "/api/locations/countries/FR/cities") == [{"city_name": "Paris", "geoname_id": 2988507}]
    api.as_token(None).error("GET", "/api/locations/countries", 401, message="no valid authentication provided")


@test
def without_databases():
    empty = os.path.join(svc.tmpdir(), "empty")
    os.makedirs(empty)
    dep, srv, api = apifix.start(extra=("--datadir", empty))
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("geolocation"))
    assert line["msg"].startswith("geolocation disabled"), line
    assert geo_metrics(srv) == {"mmdb": 0.0, "geonames": 0.0}
    assert line["level"] in ("warn", "warning"), line
    # Countries from Debian's iso-codes when installed, else none; never
    # NetBird's 412 and never a 500.
    countries = api.ok("GET", "/api/locations/countries")
    if os.path.exists("/usr/share/iso-codes/json/iso_3166-1.json"):
        assert line["countries"] == "iso-codes", line
        assert {"country_code": "DE", "country_name": "Germany"} in countries, countries
    else:
        assert countries == []
    assert api.ok("GET", "/api/locations/countries/DE/cities") == []
    api.error("GET", "/api/locations/countries/1/cities", 422, message="invalid country code")


@test
def corrupt_database_is_left_out():
    d = os.path.join(svc.tmpdir(), "bad")
    os.makedirs(d)
    with open(os.path.join(d, "GeoLite2-City_20240101.mmdb"), "wb") as f:
        f.write(b"not a maxmind database")
    dep, srv, api = apifix.start(extra=("--datadir", d))
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("geolocation database unusable"))
    assert "GeoLite2-City_20240101.mmdb" in line["error"], line
    srv.wait_log(lambda o: o.get("msg", "").startswith("geolocation disabled"))
    api.ok("GET", "/api/locations/countries")
    assert api.ok("GET", "/api/locations/countries/DE/cities") == []


def location_row(dep, pid):
    return dep.sql("SELECT COALESCE(host(location_connection_ip), ''), location_country_code,"
                   " location_city_name, location_geo_name_id FROM peers WHERE id = %s", (pid,))[0]


def reconnect(a, meta, metadata=None):
    """A new Sync stream (newer session) with meta; returns it after its
    first map."""
    s = a.sync(meta=meta, metadata=metadata)
    s.next(timeout=10)
    return s


@test
def agent_location_stored_and_shown():
    """An agent connecting from 127.0.0.1 gets the fixture's Berlin,
    written by the fenced connect and shown by the peers API."""
    dep, srv, api = apifix.start(extra=("--datadir", geo_dir()))
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("geo-1"))
    pid = dep.peers()[a.pub_b64]["id"]
    # Registration looks the address up (NetBird's AddPeer).
    assert location_row(dep, pid) == ("127.0.0.1", "DE", "Berlin", 2950159)
    dep.sql("UPDATE peers SET location_country_code = '', location_city_name = '',"
            " location_geo_name_id = 0 WHERE id = %s", (pid,))
    # And every Sync connect.
    reconnect(a, build_meta("geo-1"))
    assert location_row(dep, pid) == ("127.0.0.1", "DE", "Berlin", 2950159)
    p = api.ok("GET", "/api/peers/" + pid)
    assert (p["connection_ip"], p["country_code"], p["city_name"], p["geoname_id"]) == \
        ("127.0.0.1", "DE", "Berlin", 2950159), p
    listed = [x for x in api.ok("GET", "/api/peers") if x["id"] == pid][0]
    assert (listed["country_code"], listed["city_name"]) == ("DE", "Berlin"), listed


@test
def agent_without_databases_keeps_location():
    """No .mmdb: the location is not looked up; what is stored stays."""
    empty = os.path.join(svc.tmpdir(), "empty")
    os.makedirs(empty)
    dep, srv, api = apifix.start(extra=("--datadir", empty))
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("geo-2"))
    pid = dep.peers()[a.pub_b64]["id"]
    dep.sql("UPDATE peers SET location_country_code = 'FR', location_city_name = 'Paris',"
            " location_geo_name_id = 2988507 WHERE id = %s", (pid,))
    reconnect(a, build_meta("geo-2"))
    assert location_row(dep, pid) == ("127.0.0.1", "FR", "Paris", 2988507)


@test
def posture_inputs_bump_the_serial_only_with_posture_checks():
    """A connect that changes posture-relevant meta or the location bumps
    the account's serial (the maps are recomputed and pushed) only when
    the account has posture checks; an unchanged reconnect never does."""
    dep, srv, api = apifix.start(extra=("--datadir", geo_dir()))
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("geo-3"))
    pid = dep.peers()[a.pub_b64]["id"]
    reconnect(a, build_meta("geo-3"))
    # No posture checks: a new OS version and a moved location cost nothing.
    serial = dep.network_serial()
    reconnect(a, build_meta("geo-3", OSVersion="13"))
    assert dep.network_serial() == serial
    dep.sql("UPDATE peers SET location_country_code = 'FR', location_city_name = 'Paris' WHERE id = %s", (pid,))
    reconnect(a, build_meta("geo-3", OSVersion="13"))
    assert location_row(dep, pid)[1:3] == ("DE", "Berlin")
    assert dep.network_serial() == serial

    dep.sql("INSERT INTO posture_checks (id, account_id, name, checks) VALUES ('pc-geo', %s, 'geo',"
            " '{\"geo_location_check\": {\"action\": \"allow\", \"locations\": [{\"country_code\": \"DE\"}]}}')",
            (dep.account_id,))
    # Unchanged: no bump.
    reconnect(a, build_meta("geo-3", OSVersion="13"))
    assert dep.network_serial() == serial
    # Each posture input, one at a time: one bump each, and the stream
    # that connected gets a map at least that new.
    for over in ({"OSVersion": "14"}, {"kernelVersion": "6.2.0"}, {"OS": "Ubuntu"}, {"goOS": "freebsd"}):
        meta = build_meta("geo-3", **over)
        s = reconnect(a, meta)
        now = dep.network_serial()
        assert now == serial + 1, (over, serial, now)
        serial = now
        s.wait_for(lambda m: m.NetworkMap.Serial >= serial, timeout=10)
    # Network addresses and files.
    meta = build_meta("geo-3", goOS="freebsd", OS="Ubuntu", kernelVersion="6.2.0", OSVersion="14")
    meta.networkAddresses.add(netIP="10.9.9.9/24", mac="52:54:00:12:34:57")
    reconnect(a, meta)
    assert dep.network_serial() == serial + 1
    serial += 1
    meta.files.add(path="/usr/bin/other", exist=False, processIsRunning=False)
    reconnect(a, meta)
    assert dep.network_serial() == serial + 1
    serial += 1
    # The location: a peer that moved (stored elsewhere) is back in Berlin.
    dep.sql("UPDATE peers SET location_country_code = 'FR', location_city_name = 'Paris' WHERE id = %s", (pid,))
    reconnect(a, meta)
    assert location_row(dep, pid)[1:3] == ("DE", "Berlin")
    assert dep.network_serial() == serial + 1
    serial += 1
    # The connection address (NetBird's peer network range check reads it).
    dep.sql("UPDATE peers SET location_connection_ip = '192.0.2.1' WHERE id = %s", (pid,))
    reconnect(a, meta)
    assert location_row(dep, pid)[0] == "127.0.0.1"
    assert dep.network_serial() == serial + 1
    serial += 1
    # Fields no posture check reads (hostname, serial number): no bump.
    other = build_meta("geo-3-renamed", goOS="freebsd", OS="Ubuntu", kernelVersion="6.2.0", OSVersion="14",
                       sysSerialNumber="SN-x")
    other.networkAddresses.add(netIP="10.9.9.9/24", mac="52:54:00:12:34:57")
    other.files.add(path="/usr/bin/other", exist=False, processIsRunning=False)
    reconnect(a, other)
    assert dep.network_serial() == serial
    # A Login (the agent's restart) that brings a new OS version bumps too
    # (NetBird's LoginPeer updates when meta changed and checks exist);
    # the Sync after it then has nothing new.
    after_login = build_meta("geo-3-renamed", goOS="freebsd", OS="Ubuntu", kernelVersion="6.2.0",
                             OSVersion="15", sysSerialNumber="SN-x")
    after_login.networkAddresses.add(netIP="10.9.9.9/24", mac="52:54:00:12:34:57")
    after_login.files.add(path="/usr/bin/other", exist=False, processIsRunning=False)
    a.login(meta=after_login)
    assert dep.network_serial() == serial + 1
    serial += 1
    reconnect(a, after_login)
    assert dep.network_serial() == serial
    # SyncMeta likewise.
    after_login.kernelVersion = "6.3.0"
    a.sync_meta(after_login)
    assert dep.network_serial() == serial + 1


@test
def forwarded_address_only_from_trusted_proxies():
    """X-Forwarded-For / X-Real-IP are read only when the TCP peer is a
    trusted proxy (--trusted-proxies); the forwarded address is stored and
    looked up."""
    d = geo_dir()
    dep, srv, api = apifix.start(extra=("--datadir", d))
    a = dep.agent(srv)
    a.register(dep.setup_key, meta=build_meta("geo-4"))
    pid = dep.peers()[a.pub_b64]["id"]
    # Not trusted (the default): the headers are ignored.
    reconnect(a, build_meta("geo-4"), metadata=[("x-forwarded-for", "192.0.2.7"), ("x-real-ip", "192.0.2.8")])
    assert location_row(dep, pid) == ("127.0.0.1", "DE", "Berlin", 2950159)

    srv2 = dep.start("--datadir", d, "--trusted-proxies", "10.0.0.0/8, 127.0.0.0/8")
    a2 = dep.agent(srv2, private_key=a.key)
    # The rightmost entry that is not a trusted proxy is the client.
    reconnect(a2, build_meta("geo-4"), metadata=[("x-forwarded-for", "203.0.113.1, 192.0.2.7, 10.1.1.1")])
    assert location_row(dep, pid) == ("192.0.2.7", "FR", "Paris", 2988507)
    # X-Real-IP when there is no X-Forwarded-For.
    reconnect(a2, build_meta("geo-4"), metadata=[("x-real-ip", "2001:db8::5")])
    assert location_row(dep, pid) == ("2001:db8::5", "JP", "Tokyo", 1850147)
    # Garbage: the peer address stays.
    reconnect(a2, build_meta("geo-4"), metadata=[("x-forwarded-for", "not-an-ip"), ("x-real-ip", "x")])
    assert location_row(dep, pid) == ("127.0.0.1", "DE", "Berlin", 2950159)
    # An address in no network of the database: known, and empty.
    reconnect(a2, build_meta("geo-4"), metadata=[("x-real-ip", "10.200.0.1")])
    assert location_row(dep, pid) == ("10.200.0.1", "", "", 0)


if __name__ == "__main__":
    apifix.run_tests()
