"""/api/locations (api-locations.c) on the geolocation databases of the
datadir, written by tests/lib/geofix.py: NetBird's Country and City lists,
its 422 for a bad code, and what is answered without databases."""

import os
import sys

import apifix
from apifix import svc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import geofix  # noqa: E402

test = svc.test

OPENAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "reference",
                       "netbird", "openapi.yml")


def check_schema(obj, name):
    """obj validates against NetBird's components.schemas[name]."""
    if not os.path.exists(OPENAPI):
        return
    import jsonschema
    import yaml
    with open(OPENAPI) as f:
        spec = yaml.safe_load(f)
    schema = {"$ref": "#/components/schemas/" + name, "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(obj)


def geo_dir():
    return geofix.write_datadir(os.path.join(svc.tmpdir(), "datadir"))


@test
def countries_and_cities():
    dep, srv, api = apifix.start(extra=("--datadir", geo_dir()))
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("geolocation"))
    assert line["msg"] == "geolocation enabled", line
    assert line["mmdb"].endswith("GeoLite2-City_20240101.mmdb"), line
    assert line["countries"] == "geonames", line
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


if __name__ == "__main__":
    apifix.run_tests()
