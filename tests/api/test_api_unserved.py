"""What this server does not hold yet (api-unserved.c): networks, DNS zones, geolocation and user invites. Their lists answer an
empty array (the stock dashboard reads them on most pages), everything
that names or makes one says it is not served, and NetBird's permission
modules still decide who gets which answer first."""

import apifix
from apifix import svc

test = svc.test

LISTS = [
    "/api/networks",
    "/api/networks/routers",
    "/api/networks/resources",
    "/api/networks/n1/resources",
    "/api/networks/n1/routers",
    "/api/dns/zones",
    "/api/dns/zones/z1/records",
    "/api/locations/countries",
    "/api/locations/countries/DE/cities",
]

# (create path, one-id path, words of the message)
FEATURES = [
    ("/api/networks", "/api/networks/n1", "networks"),
    ("/api/networks/n1/resources", "/api/networks/n1/resources/r1", "network resources"),
    ("/api/networks/n1/routers", "/api/networks/n1/routers/r1", "network routers"),
    ("/api/dns/zones", "/api/dns/zones/z1", "dns zones"),
    ("/api/dns/zones/z1/records", "/api/dns/zones/z1/records/r1", "dns records"),
]


@test
def lists_are_empty_arrays():
    dep, srv, api = apifix.start()
    for path in LISTS:
        assert api.ok("GET", path) == [], path
        # A trailing slash is tolerated as on every route.
        assert api.ok("GET", path + "/") == [], path
    api.error("GET", "/api/locations/countries/D1/cities", 422, message="invalid country code")
    api.error("GET", "/api/locations/countries/DEU/cities", 422, message="invalid country code")
    # Without a token: NetBird's 401, not an empty list.
    api.as_token(None).error("GET", "/api/networks", 401, message="no valid authentication provided")


@test
def writes_say_not_served():
    dep, srv, api = apifix.start()
    serial0 = dep.network_serial()
    events0 = dep.sql("SELECT count(*) FROM events")[0][0]
    for create, one, what in FEATURES:
        msg = what + " are not served by this server yet"
        api.error("POST", create, 422, {"name": "x"}, message=msg)
        api.error("GET", one, 404, message=msg)
        api.error("PUT", one, 404, {"name": "x"}, message=msg)
        api.error("DELETE", one, 404, message=msg)
    # Nothing was written.
    assert dep.network_serial() == serial0
    assert dep.sql("SELECT count(*) FROM events")[0][0] == events0
    # Methods NetBird has no route for stay 405.
    api.error("DELETE", "/api/networks", 405)
    api.error("POST", "/api/locations/countries", 405)


@test
def invites_without_embedded_idp():
    dep, srv, api = apifix.start()
    acc = api.ok("GET", "/api/accounts")[0]
    assert acc["settings"]["embedded_idp_enabled"] is False, acc
    msg = "invite links are only available with embedded identity provider"
    # The list is empty (NetBird says 412; the dashboard asks before it
    # knows the flag and would show an error toast).
    assert api.ok("GET", "/api/users/invites") == []
    api.error("POST", "/api/users/invites", 412, {"email": "a@example.com", "name": "a", "role": "user",
                                                  "auto_groups": []}, message=msg)
    api.error("DELETE", "/api/users/invites/i1", 412, message=msg)
    api.error("POST", "/api/users/invites/i1/regenerate", 412, {}, message=msg)
    # The users routes around them are untouched.
    assert api.ok("GET", "/api/users/current")["role"] == "owner"


@test
def permissions_follow_netbird_modules():
    dep, srv, api = apifix.start()
    roles = {r: apifix.role_api(dep, api, r)[1] for r in ("admin", "auditor", "network_admin", "user")}
    # Reads: networks and zones are their modules; a regular user reads none of them; locations need only a
    # signed-in user.
    for role in ("admin", "auditor", "network_admin"):
        for path in LISTS:
            assert roles[role].ok("GET", path) == [], (role, path)
    for path in LISTS:
        if path.startswith("/api/locations/"):
            assert roles["user"].ok("GET", path) == [], path
        else:
            roles["user"].error("GET", path, 403, message="permission denied")
    # Writes: an auditor and a regular user are refused before the
    # feature answers; a network admin may write networks and zones, so gets the feature's answer.
    for create, one, what in FEATURES:
        for role in ("auditor", "user"):
            roles[role].error("POST", create, 403, {"name": "x"}, message="permission denied")
            roles[role].error("DELETE", one, 403, message="permission denied")
        roles["network_admin"].error("POST", create, 422, {"name": "x"}, message="not served")
        roles["admin"].error("DELETE", one, 404, message="not served")
    # Invites: users module, read.
    assert roles["auditor"].ok("GET", "/api/users/invites") == []
    roles["user"].error("GET", "/api/users/invites", 403, message="permission denied")
    # A service user reads everything, as in NetBird.
    _, svcapi = apifix.role_api(dep, api, "user", service=True)
    assert svcapi.ok("GET", "/api/networks") == []


if __name__ == "__main__":
    apifix.run_tests()
