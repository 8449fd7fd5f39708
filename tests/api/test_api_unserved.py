"""What this server does not hold yet (api-unserved.c): user invites
(NetBird's embedded-IdP invite links) and remote jobs (the agent's Job
stream answers UNIMPLEMENTED, so no peer is ever connected for jobs). The list answers an empty array
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


@test
def remote_jobs_without_job_stream():
    dep, srv, api = apifix.start()
    pid = apifix.sql_peer(dep)
    dep.sql("UPDATE peers SET meta_wt_version = '0.65.1' WHERE id = %s", (pid,))
    old = apifix.sql_peer(dep)
    dep.sql("UPDATE peers SET meta_wt_version = '0.60.0' WHERE id = %s", (old,))
    dev = apifix.sql_peer(dep)
    dep.sql("UPDATE peers SET meta_wt_version = 'development' WHERE id = %s", (dev,))
    other = apifix.second_account(dep)
    foreign = apifix.sql_peer(dep, account=other["ACCOUNT_ID"])
    serial0 = dep.network_serial()
    events0 = dep.sql("SELECT count(*) FROM events")[0][0]
    base = "/api/peers/%s/jobs" % pid
    assert api.ok("GET", base) == []
    api.error("GET", base + "/j1", 404, message="job j1 not found")
    api.error("GET", "/api/peers/nope/jobs", 404, message="peer nope account not found")
    api.error("GET", "/api/peers/%s/jobs" % foreign, 403, message="peer is not part of this account")

    bundle = {"workload": {"type": "bundle", "parameters": {"bundle_for": True, "bundle_for_time": 2,
                                                            "log_file_count": 10, "anonymize": False}}}
    # A valid job: NetBird's answer for a peer with no Job stream.
    api.error("POST", base, 400, bundle, message="peer not connected")
    api.error("POST", "/api/peers/%s/jobs" % dev, 400, bundle, message="peer not connected")
    api.error("POST", "/api/peers/%s/jobs" % old, 412, bundle,
              message="peer version 0.60.0 does not meet the minimum required version 0.64.0 for remote jobs")
    api.error("POST", "/api/peers/nope/jobs", 404, bundle, message="peer not found: nope")
    # NetBird's validation texts.
    api.error("POST", base, 400, {"workload": {"type": "other"}}, message="unsupported job type: other")
    api.error("POST", base, 400, {"workload": {"parameters": {}}}, message="job type is required")
    bad = {"workload": {"type": "bundle", "parameters": {"bundle_for": True, "bundle_for_time": 9,
                                                         "log_file_count": 10, "anonymize": False}}}
    api.error("POST", base, 400, bad, message="bundle_for_time must be between 1 and 5, got 9")
    bad["workload"]["parameters"].update(bundle_for_time=1, log_file_count=0)
    api.error("POST", base, 400, bad, message="log-file-count must be between 1 and 1000, got 0")
    api.error("POST", base, 400, raw=b"{", message="couldn't parse JSON request")
    # Nothing was written.
    assert dep.network_serial() == serial0
    assert dep.sql("SELECT count(*) FROM events")[0][0] == events0
    # NetBird's remote_jobs module: auditors read, users do not.
    roles = {r: apifix.role_api(dep, api, r)[1] for r in ("auditor", "user")}
    assert roles["auditor"].ok("GET", base) == []
    roles["auditor"].error("POST", base, 403, bundle, message="permission denied")
    roles["user"].error("GET", base, 403, message="permission denied")


if __name__ == "__main__":
    apifix.run_tests()
