"""What this server does not hold yet (api-unserved.c): user invites
(NetBird's embedded-IdP invite links). The list answers an empty array
(the stock dashboard reads it on the users page), the writes answer what
NetBird answers without its embedded IdP, and NetBird's permission
modules still decide who gets which answer first."""

import apifix
from apifix import svc

test = svc.test

MSG = "invite links are only available with embedded identity provider"


@test
def invites_without_embedded_idp():
    dep, srv, api = apifix.start()
    acc = api.ok("GET", "/api/accounts")[0]
    assert acc["settings"]["embedded_idp_enabled"] is False, acc
    serial0 = dep.network_serial()
    events0 = dep.sql("SELECT count(*) FROM events")[0][0]
    # The list is empty (NetBird says 412; the dashboard asks before it
    # knows the flag and would show an error toast).
    assert api.ok("GET", "/api/users/invites") == []
    assert api.ok("GET", "/api/users/invites/") == []
    api.error("POST", "/api/users/invites", 412, {"email": "a@example.com", "name": "a", "role": "user",
                                                  "auto_groups": []}, message=MSG)
    api.error("DELETE", "/api/users/invites/i1", 412, message=MSG)
    api.error("POST", "/api/users/invites/i1/regenerate", 412, {}, message=MSG)
    # Nothing was written.
    assert dep.network_serial() == serial0
    assert dep.sql("SELECT count(*) FROM events")[0][0] == events0
    # Without a token: NetBird's 401, not an empty list.
    api.as_token(None).error("GET", "/api/users/invites", 401, message="no valid authentication provided")
    # The users routes around them are untouched.
    assert api.ok("GET", "/api/users/current")["role"] == "owner"


@test
def invite_permissions_follow_netbird_modules():
    dep, srv, api = apifix.start()
    roles = {r: apifix.role_api(dep, api, r)[1] for r in ("admin", "auditor", "user")}
    # The list: users module, read.
    assert roles["auditor"].ok("GET", "/api/users/invites") == []
    assert roles["admin"].ok("GET", "/api/users/invites") == []
    roles["user"].error("GET", "/api/users/invites", 403, message="permission denied")
    # Writes: NetBird checks its IdP before the permission, so every
    # signed-in caller gets the 412.
    for role in ("auditor", "user"):
        roles[role].error("DELETE", "/api/users/invites/i1", 412, message=MSG)


if __name__ == "__main__":
    apifix.run_tests()
