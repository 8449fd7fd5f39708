"""Cross-tenant probes: a token of account A can never read or change
anything of account B, whatever path, method or body it tries. B's rows
(every tenant table) are compared before and after the probes."""

import json

import apifix
from apifix import svc
from nbagent import build_meta, remote_keys

test = svc.test

TENANT_TABLES = ["accounts", "users", "personal_access_tokens", "peers", "groups", "group_peers", "policies",
                 "policy_rules", "routes", "setup_keys", "name_server_groups", "events"]


def snapshot(dep, account_id):
    """Every row of the account, as text, per table."""
    out = {}
    for t in TENANT_TABLES:
        col = "id" if t == "accounts" else "account_id"
        rows = dep.sql("SELECT row_to_json(x)::text FROM %s x WHERE %s = %%s ORDER BY 1" % (t, col),
                       (account_id,))
        out[t] = [r[0] for r in rows]
    return out


def populate(dep, srv, api, setup_key, tag):
    """Gives an account a peer, groups, a policy, a route, a nameserver
    group, a setup key and a service user with a token; returns their ids."""
    a = dep.agent(srv)
    a.register(setup_key, meta=build_meta("peer-" + tag))
    peer_id = dep.sql("SELECT id FROM peers WHERE key = %s", (a.pub_b64,))[0][0]
    g = api.ok("POST", "/api/groups", {"name": "grp-" + tag, "peers": [peer_id]})
    pol = api.ok("POST", "/api/policies", {
        "name": "pol-" + tag, "enabled": True,
        "rules": [{"name": "r", "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
                   "sources": [g["id"]], "destinations": [g["id"]]}]})
    route = api.ok("POST", "/api/routes", {
        "description": "r-" + tag, "network_id": "net-" + tag, "enabled": True, "peer": peer_id,
        "network": "10.%d.0.0/16" % (10 if tag == "a" else 20), "metric": 100, "masquerade": False,
        "groups": [g["id"]], "keep_route": False})
    ns = api.ok("POST", "/api/dns/nameservers", {
        "name": "ns-" + tag, "description": "", "enabled": True, "groups": [g["id"]], "primary": True,
        "domains": [], "search_domains_enabled": False,
        "nameservers": [{"ip": "1.1.1.1", "ns_type": "udp", "port": 53}]})
    key = api.ok("POST", "/api/setup-keys", {"name": "key-" + tag, "type": "reusable", "expires_in": 86400,
                                            "auto_groups": [g["id"]], "usage_limit": 0})
    user = api.ok("POST", "/api/users", {"name": "svc-" + tag, "role": "admin", "is_service_user": True,
                                        "auto_groups": []})
    tok = api.ok("POST", "/api/users/%s/tokens" % user["id"], {"name": "t-" + tag, "expires_in": 30})
    return {"peer": peer_id, "group": g["id"], "policy": pol["id"], "route": route["id"], "ns": ns["id"],
            "setup_key": key["id"], "user": user["id"], "token": tok["personal_access_token"]["id"]}


@test
def a_token_of_one_account_never_reaches_another():
    dep, srv, api_a = apifix.start()
    b = apifix.second_account(dep)
    api_b = apifix.api_for(srv, b["ADMIN_TOKEN"])
    ids_a = populate(dep, srv, api_a, dep.setup_key, "a")
    ids_b = populate(dep, srv, api_b, b["SETUP_KEY"], "b")
    b_account = b["ACCOUNT_ID"]
    before = snapshot(dep, b_account)
    secrets_b = set(ids_b.values()) | {b_account, b["USER_ID"]}

    # Lists: nothing of B appears in anything A can list.
    for path in ["/api/accounts", "/api/users", "/api/peers", "/api/groups", "/api/policies", "/api/routes",
                 "/api/setup-keys", "/api/dns/nameservers", "/api/dns/settings", "/api/events/audit",
                 "/api/events", "/api/users/current", "/api/users/%s/tokens" % dep.user_id]:
        text = json.dumps(api_a.ok("GET", path))
        for s in secrets_b:
            assert s not in text, "%s leaks %s: %s" % (path, s, text[:2000])

    # B's objects by id: every method fails, none with 2xx.
    by_id = {
        "/api/peers/%s": "peer", "/api/peers/%s/accessible-peers": "peer", "/api/groups/%s": "group",
        "/api/policies/%s": "policy", "/api/routes/%s": "route", "/api/dns/nameservers/%s": "ns",
        "/api/setup-keys/%s": "setup_key", "/api/users/%s": "user", "/api/users/%s/tokens": "user",
    }
    bodies = {"peer": {"name": "x", "ssh_enabled": True, "login_expiration_enabled": False,
                       "inactivity_expiration_enabled": False},
              "group": {"name": "x"}, "user": {"role": "user", "auto_groups": [], "is_blocked": True},
              "setup_key": {"revoked": True, "auto_groups": []}}
    for pattern, kind in by_id.items():
        path = pattern % ids_b[kind]
        for method in ("GET", "PUT", "DELETE", "POST"):
            st, body, _ = api_a.call(method, path, body=bodies.get(kind, {"name": "x"}))
            assert 400 <= st < 500, "%s %s -> %d %r" % (method, path, st, body)
    path = "/api/users/%s/tokens/%s" % (ids_b["user"], ids_b["token"])
    for method in ("GET", "DELETE"):
        st, body, _ = api_a.call(method, path)
        assert 400 <= st < 500, "%s %s -> %d %r" % (method, path, st, body)
    for method in ("PUT", "DELETE"):
        st, body, _ = api_a.call(method, "/api/accounts/" + b_account,
                                 body={"settings": {"peer_login_expiration_enabled": False,
                                                    "peer_login_expiration": 3600}})
        assert 400 <= st < 500, "%s account B -> %d %r" % (method, st, body)

    # A's own objects cannot be made to point at B's.
    api_a.error("POST", "/api/groups", 422, {"name": "steal", "peers": [ids_b["peer"]]})
    api_a.error("PUT", "/api/groups/" + ids_a["group"], 422, {"name": "grp-a", "peers": [ids_b["peer"]]})
    for st_body in [
        ("/api/policies", {"name": "p", "enabled": True, "rules": [
            {"name": "r", "enabled": True, "action": "accept", "bidirectional": True, "protocol": "all",
             "sources": [ids_b["group"]], "destinations": [ids_a["group"]]}]}),
        ("/api/routes", {"description": "", "network_id": "n", "enabled": True, "peer": ids_b["peer"],
                         "network": "10.99.0.0/16", "metric": 1, "masquerade": False,
                         "groups": [ids_a["group"]], "keep_route": False}),
        ("/api/routes", {"description": "", "network_id": "n", "enabled": True, "peer": ids_a["peer"],
                         "network": "10.98.0.0/16", "metric": 1, "masquerade": False,
                         "groups": [ids_b["group"]], "keep_route": False}),
        ("/api/dns/nameservers", {"name": "n", "description": "", "enabled": True, "groups": [ids_b["group"]],
                                  "primary": True, "domains": [], "search_domains_enabled": False,
                                  "nameservers": [{"ip": "9.9.9.9", "ns_type": "udp", "port": 53}]}),
        ("/api/setup-keys", {"name": "k", "type": "reusable", "expires_in": 86400,
                             "auto_groups": [ids_b["group"]], "usage_limit": 0}),
    ]:
        st, body, _ = api_a.call("POST", st_body[0], body=st_body[1])
        assert 400 <= st < 500, "POST %s with B's ids -> %d %r" % (st_body[0], st, body)
    st, body, _ = api_a.call("PUT", "/api/dns/settings", body={"disabled_management_groups": [ids_b["group"]]})
    assert 400 <= st < 500, (st, body)
    st, body, _ = api_a.call("PUT", "/api/users/" + ids_a["user"],
                             body={"role": "admin", "auto_groups": [ids_b["group"]], "is_blocked": False})
    assert 400 <= st < 500, (st, body)

    # B is exactly as it was; B's own token still works.
    after = snapshot(dep, b_account)
    for t in TENANT_TABLES:
        assert before[t] == after[t], "table %s of account B changed:\n%r\n%r" % (t, before[t], after[t])
    assert len(api_b.ok("GET", "/api/peers")) == 1


@test
def unauthenticated_and_forged_requests_see_nothing():
    dep, srv, api = apifix.start()
    anon = apifix.api_for(srv, None)
    for path in ["/api/peers", "/api/groups", "/api/accounts", "/api/users/current", "/api/events/audit"]:
        anon.error("GET", path, 401, message="no valid authentication provided")
        # A well-formed token that does not exist, and a mangled one.
        apifix.api_for(srv, "nbp_" + "A" * 36).error("GET", path, 401, message="token invalid")
        apifix.api_for(srv, dep.admin_token[:-1] + ("A" if dep.admin_token[-1] != "A" else "B")).error(
            "GET", path, 401, message="token invalid")
        # A JWT-looking bearer: there is no IdP here.
        api.as_token("eyJhbGciOiJSUzI1NiJ9.e30.sig", scheme="Bearer").error("GET", path, 401,
                                                                         message="token invalid")
    # The PAT also works as a bearer, as in NetBird.
    assert api.as_token(dep.admin_token, scheme="Bearer").ok("GET", "/api/groups")


@test
def resource_references_stay_in_their_account():
    """A policy rule's sourceResource / destinationResource names one
    object by id: a peer (type "peer") or a network resource ("host",
    "subnet", "domain"). Like a group id, it must be the account's own:
    account A naming B's peer or B's resource, or an id that does not
    exist, is refused with 422 and nothing is written, on POST and on PUT.
    Route and network-router peers (peer, peer_groups) likewise. A's own
    peer is accepted, and A's maps carry it."""
    dep, srv, api_a = apifix.start()
    b = apifix.second_account(dep)
    api_b = apifix.api_for(srv, b["ADMIN_TOKEN"])

    # A: two agents, no Default policy, so a map shows only what a rule opens.
    agents = []
    for name in ("src", "dst"):
        a = dep.agent(srv)
        a.register(dep.setup_key, meta=build_meta("iso-" + name))
        a.peer_id = dep.peers()[a.pub_b64]["id"]
        agents.append(a)
    src, dst = agents
    for p in api_a.ok("GET", "/api/policies"):
        api_a.ok("DELETE", "/api/policies/" + p["id"])
    g_dst = api_a.ok("POST", "/api/groups", {"name": "dst", "peers": [dst.peer_id]})
    net_a = api_a.ok("POST", "/api/networks", {"name": "a-net"})

    # B: a peer, a group, a network with a host resource.
    pb = dep.agent(srv)
    pb.register(b["SETUP_KEY"], meta=build_meta("iso-b"))
    b_peer = dep.sql("SELECT id FROM peers WHERE key = %s", (pb.pub_b64,))[0][0]
    b_group = api_b.ok("POST", "/api/groups", {"name": "b-grp", "peers": [b_peer]})["id"]
    net_b = api_b.ok("POST", "/api/networks", {"name": "b-net"})
    b_res = api_b.ok("POST", "/api/networks/%s/resources" % net_b["id"],
                     {"name": "b-web", "address": "10.77.0.5", "enabled": True, "groups": [b_group]})["id"]

    def rule(**kw):
        r = {"name": "r", "enabled": True, "action": "accept", "bidirectional": False, "protocol": "all"}
        r.update(kw)
        return {"name": "p", "enabled": True, "rules": [r]}

    def a_rows():
        return {t: dep.sql("SELECT row_to_json(x)::text FROM %s x WHERE account_id = %%s ORDER BY 1" % t,
                           (dep.account_id,)) for t in ("policies", "policy_rules", "routes", "network_routers")}

    before_a, before_b, serial = a_rows(), snapshot(dep, b["ACCOUNT_ID"]), dep.network_serial()
    refused = [
        (rule(sourceResource={"id": b_peer, "type": "peer"}, destinations=[g_dst["id"]]), "peer %s not found" % b_peer),
        (rule(sources=[g_dst["id"]], destinationResource={"id": b_peer, "type": "peer"}),
         "peer %s not found" % b_peer),
        (rule(sources=[g_dst["id"]], destinationResource={"id": b_res, "type": "host"}),
         "network resource: %s not found" % b_res),
        # B's resource named as a peer, and B's peer as a resource.
        (rule(sources=[g_dst["id"]], destinationResource={"id": b_res, "type": "peer"}), "peer %s not found" % b_res),
        (rule(sources=[g_dst["id"]], destinationResource={"id": b_peer, "type": "host"}),
         "network resource: %s not found" % b_peer),
        (rule(sourceResource={"id": "nosuchpeer", "type": "peer"}, destinations=[g_dst["id"]]),
         "peer nosuchpeer not found"),
        (rule(sourceResource={"id": b_group, "type": "group"}, destinations=[g_dst["id"]]),
         "invalid resource type: group"),
    ]
    for body, msg in refused:
        api_a.error("POST", "/api/policies", 422, body, message=msg)
    own = api_a.ok("POST", "/api/policies", rule(sourceResource={"id": src.peer_id, "type": "peer"},
                                                 destinations=[g_dst["id"]]))
    assert own["rules"][0]["sourceResource"] == {"id": src.peer_id, "type": "peer"}, own
    mid_a, mid_serial = a_rows(), dep.network_serial()
    for body, msg in refused:
        body["rules"][0]["id"] = own["rules"][0]["id"]
        api_a.error("PUT", "/api/policies/" + own["id"], 422, body, message=msg)
    # Route and network-router peers.
    route = {"description": "", "network_id": "n", "enabled": True, "network": "10.99.0.0/16", "metric": 1,
             "masquerade": False, "groups": [g_dst["id"]], "keep_route": False}
    api_a.error("POST", "/api/routes", 422, dict(route, peer=b_peer), message="not found")
    api_a.error("POST", "/api/routes", 422, dict(route, peer_groups=[b_group]), message="not found")
    rp = "/api/networks/%s/routers" % net_a["id"]
    router = {"metric": 100, "masquerade": True, "enabled": True}
    api_a.error("POST", rp, 422, dict(router, peer=b_peer), message="peer with id %s not found" % b_peer)
    api_a.error("POST", rp, 422, dict(router, peer_groups=[b_group]), message="group %s not found" % b_group)

    # Nothing written on either side by the refusals; B untouched.
    assert a_rows() == mid_a and dep.network_serial() == mid_serial
    assert before_a != mid_a and mid_serial > serial
    after_b = snapshot(dep, b["ACCOUNT_ID"])
    for t in TENANT_TABLES:
        assert before_b[t] == after_b[t], "table %s of account B changed" % t

    # The accepted rule reaches the maps: dst sees src and only src.
    m = dst.sync().wait_for(lambda m: m.NetworkMap.Serial >= mid_serial, timeout=10)
    assert remote_keys(m) == {src.pub_b64}, m
    assert pb.pub_b64 not in remote_keys(m)


if __name__ == "__main__":
    apifix.run_tests()
