"""The reverse proxy's REST API against the real server:
/api/reverse-proxies/services, /domains (+ validate), /clusters,
/proxy-tokens and /api/events/proxy. Every route, NetBird's validation
texts and statuses, roles, cross-account probes, openapi schemas, the
mapping change log each write appends (proxy_mapping_changes), and the
secrets: argon2id PHC hashes at rest (verified with libargon2), never in a
response."""

import base64
import ctypes
import hashlib
import re
import secrets

import apifix
from apifix import check_schema, role_api, sql_peer, svc

test = svc.test

CLUSTER = "eu.proxy.test"

_argon = ctypes.CDLL("libargon2.so.1")
_argon.argon2id_verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]


def argon_ok(encoded, plain):
    return _argon.argon2id_verify(encoded.encode(), plain.encode(), len(plain.encode())) == 0


PHC = re.compile(r"\$argon2id\$v=19\$m=19456,t=2,p=1\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


def check_phc(h, plain):
    m = PHC.fullmatch(h)
    assert m, h
    salt = base64.b64decode(m.group(1) + "=" * (-len(m.group(1)) % 4))
    key = base64.b64decode(m.group(2) + "=" * (-len(m.group(2)) % 4))
    assert (len(salt), len(key)) == (16, 32), (len(salt), len(key))
    assert argon_ok(h, plain) and not argon_ok(h, plain + "x"), h


def add_proxy(dep, cluster=CLUSTER, account=None, connected=True, **caps):
    pid = "px" + secrets.token_hex(6)
    cols = ", ".join(caps)
    dep.sql("INSERT INTO proxies (id, session_id, cluster_address, account_id, status%s) VALUES (%%s, 's', %%s, %%s,"
            " %%s%s)" % ((", " + cols) if cols else "", ", %s" * len(caps)),
            (pid, cluster, account, "connected" if connected else "disconnected", *caps.values()))
    return pid


def changes(dep, after=0):
    return dep.sql("SELECT seq, service_id, op, cluster, domain FROM proxy_mapping_changes WHERE account_id = %s"
                   " AND seq > %s ORDER BY seq", (dep.account_id, after))


def last_seq(dep):
    return dep.sql("SELECT COALESCE(max(seq), 0) FROM proxy_mapping_changes")[0][0]


def events(dep, target):
    return [(r[0], r[1]) for r in dep.sql(
        "SELECT activity, meta FROM events WHERE account_id = %s AND target_id = %s ORDER BY id",
        (dep.account_id, target))]


def peer_target(pid, **kw):
    t = {"target_id": pid, "target_type": "peer", "protocol": "http", "port": 8080, "enabled": True}
    t.update(kw)
    return t


def http_service(pid, name="app", domain="app." + CLUSTER, **kw):
    s = {"name": name, "domain": domain, "enabled": True, "targets": [peer_target(pid)]}
    s.update(kw)
    return s


def setup():
    dep, srv, api = apifix.start()
    add_proxy(dep)
    pid = sql_peer(dep)
    return dep, srv, api, pid


@test
def create_get_list_update_delete():
    dep, srv, api, pid = setup()
    seq0 = last_seq(dep)
    serial0 = dep.network_serial()
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid, pass_host_header=True))
    check_schema(s, "Service")
    assert (s["name"], s["domain"], s["proxy_cluster"], s["mode"]) == ("app", "app." + CLUSTER, CLUSTER, "http"), s
    assert s["enabled"] is True and s["pass_host_header"] is True and s["terminated"] is False, s
    assert s["meta"]["status"] == "pending" and s["listen_port"] == 0, s
    # host: the peer's address (NetBird's replaceHostByLookup)
    ip = dep.sql("SELECT host(ip) FROM peers WHERE id = %s", (pid,))[0][0]
    assert s["targets"] == [dict(peer_target(pid), host=ip, options={})], s["targets"]
    assert s["auth"] == {}, s
    assert dep.network_serial() > serial0
    assert [c[1:] for c in changes(dep, seq0)] == [(s["id"], 0, CLUSTER, "app." + CLUSTER)]
    ev = events(dep, s["id"])
    assert ev == [(108, {"name": "app", "domain": "app." + CLUSTER, "proxy_cluster": CLUSTER, "source": "permanent",
                         "auth": False, "mode": "http"})], ev
    # session key: sealed seed + base64 public key
    priv, pub = dep.sql("SELECT session_private_key, session_public_key FROM services WHERE id = %s", (s["id"],))[0]
    assert len(base64.b64decode(pub)) == 32 and len(base64.b64decode(priv)) == 12 + 32 + 16, (priv, pub)

    assert api.ok("GET", "/api/reverse-proxies/services/" + s["id"]) == s
    lst = api.ok("GET", "/api/reverse-proxies/services")
    assert lst == [s], lst
    for x in lst:
        check_schema(x, "Service")

    # update (plain modification) -> MODIFIED
    seq1 = last_seq(dep)
    u = api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, name="app2"))
    check_schema(u, "Service")
    assert u["name"] == "app2" and u["pass_host_header"] is False and u["meta"] == s["meta"], u
    assert [c[1:] for c in changes(dep, seq1)] == [(s["id"], 1, CLUSTER, "app." + CLUSTER)]
    assert events(dep, s["id"])[-1][0] == 109

    # disable -> REMOVED; enable -> CREATED
    seq2 = last_seq(dep)
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, enabled=False))
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, enabled=True))
    assert [c[2] for c in changes(dep, seq2)] == [2, 0]

    # domain change -> REMOVED old + CREATED new
    seq3 = last_seq(dep)
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, domain="new." + CLUSTER))
    assert [c[1:] for c in changes(dep, seq3)] == [(s["id"], 2, CLUSTER, "app." + CLUSTER),
                                                   (s["id"], 0, CLUSTER, "new." + CLUSTER)]

    # delete -> REMOVED, {} and 404 afterwards
    seq4 = last_seq(dep)
    assert api.ok("DELETE", "/api/reverse-proxies/services/" + s["id"]) == {}
    assert [c[1:] for c in changes(dep, seq4)] == [(s["id"], 2, CLUSTER, "new." + CLUSTER)]
    assert events(dep, s["id"])[-1][0] == 110
    api.error("GET", "/api/reverse-proxies/services/" + s["id"], 404, message="service %s not found" % s["id"])
    api.error("DELETE", "/api/reverse-proxies/services/" + s["id"], 404)
    api.error("PUT", "/api/reverse-proxies/services/" + s["id"], 404, body=http_service(pid))
    assert api.ok("GET", "/api/reverse-proxies/services") == []


@test
def what_a_service_uses_cannot_be_deleted():
    """NetBird's checks: a peer or network resource a service targets
    (412 "... is in use by proxy <id>"), a group a service's bearer auth
    is distributed to (400 "group has been linked to reverse proxy
    service: <domain>"); once the service is gone, all three go."""
    dep, srv, api, pid = setup()
    g = api.ok("POST", "/api/groups", {"name": "sso-users"})
    net = api.ok("POST", "/api/networks", {"name": "lab"})
    res = api.ok("POST", "/api/networks/%s/resources" % net["id"],
                 {"name": "web", "address": "10.99.99.10", "enabled": True, "groups": [g["id"]]})
    api.ok("PUT", "/api/groups/" + g["id"], {"name": "sso-users", "resources": []})
    s1 = api.ok("POST", "/api/reverse-proxies/services", http_service(
        pid, auth={"bearer_auth": {"enabled": True, "distribution_groups": [g["id"]]}}))
    s2 = api.ok("POST", "/api/reverse-proxies/services", http_service(
        pid, name="web", domain="web." + CLUSTER,
        targets=[{"target_id": res["id"], "target_type": "host", "protocol": "http", "port": 80,
                  "enabled": True}]))
    api.error("DELETE", "/api/peers/" + pid, 412, message="peer %s is in use by proxy %s" % (pid, s1["id"]))
    api.error("DELETE", "/api/networks/%s/resources/%s" % (net["id"], res["id"]), 412,
              message="resource %s is in use by proxy %s" % (res["id"], s2["id"]))
    api.error("DELETE", "/api/groups/" + g["id"], 400,
              message="group has been linked to reverse proxy service: app." + CLUSTER)
    assert dep.sql("SELECT count(*) FROM network_resources WHERE id = %s", (res["id"],)) == [(1,)]
    api.ok("DELETE", "/api/reverse-proxies/services/" + s2["id"])
    api.ok("DELETE", "/api/networks/%s/resources/%s" % (net["id"], res["id"]))
    api.ok("DELETE", "/api/reverse-proxies/services/" + s1["id"])
    api.ok("DELETE", "/api/groups/" + g["id"])
    api.ok("DELETE", "/api/peers/" + pid)


@test
def disabled_service_writes_no_change_rows():
    dep, srv, api, pid = setup()
    seq0 = last_seq(dep)
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid, enabled=False))
    assert s["enabled"] is False
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, enabled=False, name="x"))
    api.ok("DELETE", "/api/reverse-proxies/services/" + s["id"])
    assert changes(dep, seq0) == []
    # a target whose peer is gone reads "unknown"
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid))
    dep.sql("DELETE FROM peers WHERE id = %s", (pid,))
    assert api.ok("GET", "/api/reverse-proxies/services/" + s["id"])["targets"][0]["host"] == "unknown"


@test
def deleting_the_account_removes_its_services_from_proxies():
    dep, srv, api, pid = setup()
    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    opid = sql_peer(dep, account=other["ACCOUNT_ID"])
    on = oapi.ok("POST", "/api/reverse-proxies/services", http_service(opid, domain="o." + CLUSTER))
    oapi.ok("POST", "/api/reverse-proxies/services", http_service(opid, domain="off." + CLUSTER, enabled=False))
    mine = api.ok("POST", "/api/reverse-proxies/services", http_service(pid))
    seq0 = last_seq(dep)
    oapi.ok("DELETE", "/api/accounts/" + other["ACCOUNT_ID"])
    rows = dep.sql("SELECT account_id, service_id, op, cluster, domain FROM proxy_mapping_changes WHERE seq > %s",
                   (seq0,))
    assert rows == [(other["ACCOUNT_ID"], on["id"], 2, CLUSTER, "o." + CLUSTER)], rows
    assert [s["id"] for s in api.ok("GET", "/api/reverse-proxies/services")] == [mine["id"]]


@test
def secrets_hashed_never_returned_and_kept_on_update():
    dep, srv, api, pid = setup()
    auth = {"password_auth": {"enabled": True, "password": "s3cret-pw"},
            "pin_auth": {"enabled": True, "pin": "123456"},
            "header_auths": [{"enabled": True, "header": "X-Api-Key", "value": "hdr-value"}]}
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid, auth=auth))
    check_schema(s, "Service")
    assert s["auth"] == {"password_auth": {"enabled": True, "password": ""}, "pin_auth": {"enabled": True, "pin": ""},
                         "header_auths": [{"enabled": True, "header": "X-Api-Key", "value": ""}]}, s["auth"]
    raw = dep.sql("SELECT auth::text FROM services WHERE id = %s", (s["id"],))[0][0]
    for plain in ("s3cret-pw", "123456", "hdr-value"):
        assert plain not in raw, raw
    stored = dep.sql("SELECT auth FROM services WHERE id = %s", (s["id"],))[0][0]
    check_phc(stored["password_auth"]["password"], "s3cret-pw")
    check_phc(stored["pin_auth"]["pin"], "123456")
    check_phc(stored["header_auths"][0]["value"], "hdr-value")
    assert events(dep, s["id"])[0][1]["auth"] is True

    # What the dashboard sends back: the GET body, secrets empty -> kept.
    body = api.ok("GET", "/api/reverse-proxies/services/" + s["id"])
    body["name"] = "renamed"
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], body)
    after = dep.sql("SELECT auth FROM services WHERE id = %s", (s["id"],))[0][0]
    assert after == stored, (after, stored)
    # A new password replaces the hash; the rest stays.
    body["auth"]["password_auth"] = {"enabled": True, "password": "other"}
    api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], body)
    after2 = dep.sql("SELECT auth FROM services WHERE id = %s", (s["id"],))[0][0]
    check_phc(after2["password_auth"]["password"], "other")
    assert after2["pin_auth"] == stored["pin_auth"] and after2["header_auths"] == stored["header_auths"]
    # An enabled header without a value on create is refused.
    api.error("POST", "/api/reverse-proxies/services", 422, message="header_auths[0]: value is required",
              body=http_service(pid, domain="h." + CLUSTER,
                                auth={"header_auths": [{"enabled": True, "header": "X-K", "value": ""}]}))
    # A disabled secret is not kept (NetBird would store it as sent).
    s2 = api.ok("POST", "/api/reverse-proxies/services", http_service(
        pid, domain="d." + CLUSTER, auth={"password_auth": {"enabled": False, "password": "plain-off"},
                                          "header_auths": [{"enabled": False, "header": "X-K", "value": "v-off"}]}))
    raw2 = dep.sql("SELECT auth::text FROM services WHERE id = %s", (s2["id"],))[0][0]
    assert "plain-off" not in raw2 and "v-off" not in raw2, raw2
    # No response anywhere carries a hash.
    for path in ("/api/reverse-proxies/services", "/api/reverse-proxies/services/" + s["id"]):
        st, b = api.get(path)
        assert "argon2" not in repr(b), b


@test
def validation_errors():
    dep, srv, api, pid = setup()
    P = "/api/reverse-proxies/services"
    n0 = dep.sql("SELECT count(*) FROM services")[0][0]
    seq0 = last_seq(dep)
    api.error("POST", P, 400, raw="{bad", message="couldn't parse JSON request")
    api.error("POST", P, 400, body={"name": 5}, message="couldn't parse JSON request")
    api.error("POST", P, 400, body=http_service(pid, targets="x"), message="couldn't parse JSON request")
    cases = [
        (http_service(pid, name=""), "service name is required"),
        (http_service(pid, name="x" * 256), "service name exceeds maximum length of 255 characters"),
        (http_service(pid, targets=[]), "at least one target is required"),
        (http_service(pid, domain=""), "service domain is required"),
        (http_service(pid, mode="ftp"), "unsupported mode \"ftp\""),
        (http_service(pid, listen_port=8080), "listen_port is not supported for http services"),
        (http_service(pid, targets=[peer_target(pid, target_type="bogus")]), "target 0 has invalid target_type \"bogus\""),
        (http_service(pid, targets=[peer_target("")]), "target 0 has empty target_id"),
        (http_service(pid, targets=[peer_target("nope")]), "peer target \"nope\" not found in account"),
        (http_service(pid, targets=[peer_target(pid, target_type="subnet")]),
         "target 0 has empty host but target_type is \"subnet\""),
        (http_service(pid, targets=[peer_target(pid, options={"proxy_protocol": True})]),
         "target 0: proxy_protocol is not supported for http services"),
        (http_service(pid, targets=[peer_target(pid, options={"path_rewrite": "strip"})]),
         "target 0: unknown path_rewrite mode \"strip\""),
        (http_service(pid, targets=[peer_target(pid, options={"request_timeout": "soon"})]),
         "target 0: parse request_timeout \"soon\""),
        (http_service(pid, targets=[peer_target(pid, options={"custom_headers": {"Host": "x"}})]),
         "target 0: use pass_host_header instead of setting host as a custom header"),
        (http_service(pid, targets=[peer_target(pid, options={"custom_headers": {"Connection": "x"}})]),
         "is a hop-by-hop header"),
        (http_service(pid, targets=[peer_target(pid, options={"custom_headers": {"X-Forwarded-For": "x"}})]),
         "is managed by the proxy"),
        (http_service(pid, targets=[peer_target(pid, options={"custom_headers": {"a b": "x"}})]),
         "is not a valid http header name"),
        (http_service(pid, targets=[peer_target(pid, options={"direct_upstream": True}, host="h:80")]),
         "must not include a port"),
        (http_service(pid, targets=[{"target_id": "c", "target_type": "cluster", "protocol": "http", "port": 80,
                                     "enabled": True, "host": "up"}]), "target 0: up has direct upstream disabled"),
        (http_service(pid, private=True), "private services require at least one access group"),
        (http_service(pid, auth={"header_auths": [{"enabled": True, "header": "Cookie", "value": "v"}]}),
         "header_auths[0]: header \"cookie\" is managed by the proxy"),
        (http_service(pid, access_restrictions={"allowed_cidrs": ["10.0.0.1/8"]}),
         "allowed_cidrs[0]: \"10.0.0.1/8\" has host bits set, use 10.0.0.0/8 instead"),
        (http_service(pid, access_restrictions={"blocked_countries": ["USA"]}),
         "blocked_countries[0]: \"usa\" must be a 2-letter iso 3166-1 alpha-2 code"),
        (http_service(pid, access_restrictions={"crowdsec_mode": "loud"}), "invalid crowdsec_mode \"loud\""),
        (http_service(pid, access_groups=["nogroup"]), "access group nogroup not found"),
        (http_service(pid, auth={"bearer_auth": {"enabled": True, "distribution_groups": ["nogroup"]}}),
         "distribution group nogroup not found"),
        (http_service(pid, mode="tcp", auth={"pin_auth": {"enabled": True, "pin": "1"}}),
         "auth is not supported for tcp/udp services"),
        (http_service(pid, mode="tls"), "listen_port is required for tls services"),
        (http_service(pid, mode="tcp", targets=[peer_target(pid, port=0)]), "target port is required for l4 services"),
        (http_service(pid, mode="tcp", targets=[peer_target(pid), peer_target(pid)]),
         "tcp/udp services must have exactly one target"),
    ]
    for body, msg in cases:
        st, b = api.post(P, body)
        assert st == 422 and b["code"] == 422 and msg in b["message"], (msg, st, b)
    api.error("POST", P, 412, body=http_service(pid, domain="app.elsewhere.test"),
              message="could not derive cluster from domain app.elsewhere.test")
    assert dep.sql("SELECT count(*) FROM services")[0][0] == n0
    assert last_seq(dep) == seq0


@test
def domain_unique_across_accounts_and_subdomain_rule():
    dep, srv, api, pid = setup()
    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    opid = sql_peer(dep, account=other["ACCOUNT_ID"])
    api.ok("POST", "/api/reverse-proxies/services", http_service(pid))
    oapi.error("POST", "/api/reverse-proxies/services", 409, body=http_service(opid), message="domain already taken")
    # the second account sees nothing of the first
    assert oapi.ok("GET", "/api/reverse-proxies/services") == []
    sid = api.ok("GET", "/api/reverse-proxies/services")[0]["id"]
    oapi.error("GET", "/api/reverse-proxies/services/" + sid, 404)
    oapi.error("PUT", "/api/reverse-proxies/services/" + sid, 404, body=http_service(opid, domain="z." + CLUSTER))
    oapi.error("DELETE", "/api/reverse-proxies/services/" + sid, 404)
    # a peer of another account is not a target
    api.error("POST", "/api/reverse-proxies/services", 422, body=http_service(opid, domain="p." + CLUSTER),
              message="not found in account")
    # the bare cluster address: allowed until the cluster requires a subdomain
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid, domain=CLUSTER, name="bare"))
    api.ok("DELETE", "/api/reverse-proxies/services/" + s["id"])
    add_proxy(dep, require_subdomain=True)
    api.error("POST", "/api/reverse-proxies/services", 422, body=http_service(pid, domain=CLUSTER),
              message="domain %s requires a subdomain label" % CLUSTER)


@test
def l4_ports():
    dep, srv, api, pid = setup()
    tcp = http_service(pid, domain="db." + CLUSTER, mode="tcp", targets=[peer_target(pid, protocol="tcp", port=5432)])
    s = api.ok("POST", "/api/reverse-proxies/services", tcp)
    check_schema(s, "Service")
    assert 10000 <= s["listen_port"] <= 49151 and s["port_auto_assigned"] is True, s
    # a custom port needs a cluster that supports it
    api.error("POST", "/api/reverse-proxies/services", 422,
              body=dict(tcp, domain="db2." + CLUSTER, listen_port=5432),
              message="custom ports not supported on cluster " + CLUSTER)
    add_proxy(dep, supports_custom_ports=True)
    s2 = api.ok("POST", "/api/reverse-proxies/services", dict(tcp, domain="db2." + CLUSTER, listen_port=5432))
    assert s2["listen_port"] == 5432 and s2["port_auto_assigned"] is False, s2
    api.error("POST", "/api/reverse-proxies/services", 409, body=dict(tcp, domain="db3." + CLUSTER, listen_port=5432),
              message="tcp port 5432 is already in use")
    # the port survives an update that does not send it; the mode cannot change
    u = api.ok("PUT", "/api/reverse-proxies/services/" + s["id"], dict(tcp, name="db"))
    assert u["listen_port"] == s["listen_port"] and u["port_auto_assigned"] is True, u
    api.error("PUT", "/api/reverse-proxies/services/" + s["id"], 422, body=dict(tcp, mode="udp"),
              message="cannot change mode from \"tcp\" to \"udp\"")


@test
def roles():
    dep, srv, api, pid = setup()
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid))
    _, aud = role_api(dep, api, "auditor")
    _, usr = role_api(dep, api, "user")
    _, na = role_api(dep, api, "network_admin")
    _, adm = role_api(dep, api, "admin")
    assert aud.ok("GET", "/api/reverse-proxies/services") == [s]
    for who in (aud, usr, na):
        who.error("POST", "/api/reverse-proxies/services", 403, body=http_service(pid, domain="r." + CLUSTER),
                  message="permission denied")
        who.error("DELETE", "/api/reverse-proxies/services/" + s["id"], 403)
        who.error("POST", "/api/reverse-proxies/proxy-tokens", 403, body={"name": "t"})
    for who in (usr, na):
        who.error("GET", "/api/reverse-proxies/services", 403)
        who.error("GET", "/api/reverse-proxies/clusters", 403)
        who.error("GET", "/api/events/proxy", 403)
    adm.ok("PUT", "/api/reverse-proxies/services/" + s["id"], http_service(pid, name="by-admin"))
    perms = aud.ok("GET", "/api/users/current")["permissions"]["modules"]["services"]
    assert perms == {"read": True, "create": False, "update": False, "delete": False}, perms


@test
def domains():
    dep, srv, api, pid = setup()
    add_proxy(dep, cluster="gone.proxy.test", connected=False)
    d = api.ok("GET", "/api/reverse-proxies/domains")
    for x in d:
        check_schema(x, "ReverseProxyDomain")
    assert d == [{"id": "", "domain": CLUSTER, "validated": True, "type": "free"}], d
    api.error("POST", "/api/reverse-proxies/domains", 422, body={"domain": "example.com", "target_cluster": "nope"},
              message="target cluster nope is not available")
    api.error("POST", "/api/reverse-proxies/domains", 422, body={"domain": "bad domain", "target_cluster": CLUSTER})
    c = api.ok("POST", "/api/reverse-proxies/domains", {"domain": "Example.COM", "target_cluster": CLUSTER})
    check_schema(c, "ReverseProxyDomain")
    assert {k: c[k] for k in c if k != "id"} == {"domain": "example.com", "validated": False, "type": "custom",
                                                 "target_cluster": CLUSTER}, c
    assert events(dep, c["id"]) == [(118, {"domain": "example.com", "target_cluster": CLUSTER, "validated": False})]
    api.error("POST", "/api/reverse-proxies/domains", 409, body={"domain": "example.com", "target_cluster": CLUSTER})
    assert api.ok("GET", "/api/reverse-proxies/domains")[1]["id"] == c["id"]
    # a service on the custom domain derives the domain's cluster
    s = api.ok("POST", "/api/reverse-proxies/services", http_service(pid, domain="www.example.com"))
    assert s["proxy_cluster"] == CLUSTER, s
    st, b, _ = api.call("GET", "/api/reverse-proxies/domains/%s/validate" % c["id"])
    assert st == 202 and b is None, (st, b)
    api.error("GET", "/api/reverse-proxies/domains/nope/validate", 404)
    # another account cannot see or delete it
    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    oapi.error("DELETE", "/api/reverse-proxies/domains/" + c["id"], 404)
    assert [x["type"] for x in oapi.ok("GET", "/api/reverse-proxies/domains")] == ["free"]
    st, b, _ = api.call("DELETE", "/api/reverse-proxies/domains/" + c["id"])
    assert st == 204 and b is None, (st, b)
    assert events(dep, c["id"])[-1][0] == 119
    api.error("DELETE", "/api/reverse-proxies/domains/" + c["id"], 404)


@test
def clusters():
    dep, srv, api, pid = setup()
    add_proxy(dep, supports_custom_ports=True, require_subdomain=False)
    add_proxy(dep, cluster="gone.proxy.test", connected=False)
    add_proxy(dep, cluster="mine.proxy.test", account=dep.account_id, private=True)
    other = apifix.second_account(dep)
    add_proxy(dep, cluster="theirs.proxy.test", account=other["ACCOUNT_ID"])
    cl = api.ok("GET", "/api/reverse-proxies/clusters")
    for x in cl:
        check_schema(x, "ProxyCluster")
    by = {x["address"]: x for x in cl}
    assert set(by) == {CLUSTER, "gone.proxy.test", "mine.proxy.test"}, by
    assert by[CLUSTER]["online"] is True and by[CLUSTER]["connected_proxies"] == 2 and by[CLUSTER]["type"] == "shared"
    assert by[CLUSTER]["supports_custom_ports"] is True and by[CLUSTER]["require_subdomain"] is False
    assert "supports_crowdsec" not in by[CLUSTER]
    assert by["gone.proxy.test"]["online"] is False and by["gone.proxy.test"]["connected_proxies"] == 0
    assert by["mine.proxy.test"]["type"] == "account" and by["mine.proxy.test"]["private"] is True
    # shared clusters are not the account's to delete
    api.error("DELETE", "/api/reverse-proxies/clusters/" + CLUSTER, 404, message="cluster not found")
    api.error("DELETE", "/api/reverse-proxies/clusters/theirs.proxy.test", 404)
    assert api.ok("DELETE", "/api/reverse-proxies/clusters/mine.proxy.test") == {}
    assert "mine.proxy.test" not in [x["address"] for x in api.ok("GET", "/api/reverse-proxies/clusters")]


@test
def proxy_tokens():
    dep, srv, api, pid = setup()
    P = "/api/reverse-proxies/proxy-tokens"
    assert api.ok("GET", P) == []
    t = api.ok("POST", P, {"name": "edge", "expires_in": 3600})
    check_schema(t, "ProxyTokenCreated")
    plain = t["plain_token"]
    assert re.fullmatch(r"nbx_[0-9A-Za-z]{36}", plain), plain
    assert t["name"] == "edge" and t["revoked"] is False and "expires_at" in t and "last_used" not in t, t
    h = base64.b64encode(hashlib.sha256(plain.encode()).digest()).decode()
    rows = dep.sql("SELECT account_id, created_by, hashed_token FROM proxy_access_tokens WHERE id = %s", (t["id"],))
    assert rows == [(dep.account_id, dep.user_id, h)], rows
    assert not dep.sql("SELECT 1 FROM proxy_access_tokens WHERE hashed_token = %s", (plain,))
    t2 = api.ok("POST", P, {"name": "forever"})
    assert "expires_at" not in t2
    lst = api.ok("GET", P)
    for x in lst:
        check_schema(x, "ProxyToken")
        assert "plain_token" not in x
    assert [x["id"] for x in lst] == [t["id"], t2["id"]]
    api.error("POST", P, 400, body={"name": ""}, message="name is required and must be at most 255 characters")
    api.error("POST", P, 400, body={"name": "x" * 256})
    api.error("POST", P, 400, body={"name": "n", "expires_in": -1}, message="expires_in must be non-negative")
    api.error("POST", P, 400, body={"name": "n", "expires_in": "soon"}, message="couldn't parse JSON request")
    # management-wide tokens and other accounts' tokens are not listed or revocable here
    other = apifix.second_account(dep)
    oapi = api.as_token(other["ADMIN_TOKEN"])
    assert oapi.ok("GET", P) == []
    oapi.error("DELETE", P + "/" + t["id"], 404, message="token not found")
    dep.sql("INSERT INTO proxy_access_tokens (id, name, hashed_token) VALUES ('global1', 'g', 'hh')")
    api.error("DELETE", P + "/global1", 404)
    seq0 = last_seq(dep)
    assert api.ok("DELETE", P + "/" + t["id"]) == {}
    assert api.ok("GET", P)[0]["revoked"] is True
    assert api.ok("DELETE", P + "/" + t["id"]) == {}       # again: still {}
    assert last_seq(dep) == seq0                             # revocation is not a mapping change


@test
def access_logs():
    dep, srv, api, pid = setup()
    uid, _ = apifix.user_token(dep, "user", email="alice@example.com", name="Alice")
    rows = [
        ("l1", "2026-01-01T10:00:00Z", "GET", "a.test", "/one", 200, "1.1.1.1", "", ""),
        ("l2", "2026-01-01T11:00:00Z", "POST", "b.test", "/two", 401, "2.2.2.2", "auth failed", ""),
        ("l3", "2026-01-01T12:00:00Z", "GET", "a.test", "/three", 302, "1.1.1.1", "", uid),
    ]
    for r in rows:
        dep.sql("INSERT INTO proxy_access_logs (id, account_id, service_id, timestamp, method, host, path,"
                " status_code, source_ip, reason, user_id, duration_ms, bytes_upload, bytes_download)"
                " VALUES (%s, %s, 'svc', %s, %s, %s, %s, %s, %s, %s, %s, 15, 1, 2)", (r[0], dep.account_id) + r[1:])
    other = apifix.second_account(dep)
    dep.sql("INSERT INTO proxy_access_logs (id, account_id, timestamp) VALUES ('x1', %s, now())",
            (other["ACCOUNT_ID"],))

    def ids(q=""):
        b = api.ok("GET", "/api/events/proxy" + q)
        check_schema(b, "ProxyAccessLogsResponse")
        return [x["id"] for x in b["data"]], b

    got, b = ids()
    assert got == ["l3", "l2", "l1"] and (b["page"], b["page_size"], b["total_records"], b["total_pages"]) == \
        (1, 50, 3, 1), b
    l2 = b["data"][1]
    assert l2 == {"id": "l2", "service_id": "svc", "timestamp": "2026-01-01T11:00:00Z", "method": "POST",
                  "host": "b.test", "path": "/two", "duration_ms": 15, "status_code": 401, "source_ip": "2.2.2.2",
                  "reason": "auth failed", "bytes_upload": 1, "bytes_download": 2}, l2
    assert ids("?sort_order=asc")[0] == ["l1", "l2", "l3"]
    assert ids("?sort_by=path&sort_order=asc")[0] == ["l1", "l3", "l2"]
    assert ids("?sort_by=bogus&sort_order=bogus")[0] == ["l3", "l2", "l1"]
    got, b = ids("?page=2&page_size=2")
    assert got == ["l1"] and (b["page"], b["page_size"], b["total_records"], b["total_pages"]) == (2, 2, 3, 2), b
    assert ids("?page_size=1000")[1]["page_size"] == 100
    assert ids("?page=0&page_size=-1")[1]["page"] == 1
    assert ids("?status=failed")[0] == ["l2"]
    assert ids("?status=success")[0] == ["l3", "l1"]
    assert ids("?status_code=302")[0] == ["l3"]
    assert ids("?method=GET&host=a.test")[0] == ["l3", "l1"]
    assert ids("?path=thr")[0] == ["l3"]
    assert ids("?source_ip=2.2.2.2")[0] == ["l2"]
    assert ids("?search=two")[0] == ["l2"]
    assert ids("?search=alice")[0] == ["l3"]
    assert ids("?user_email=alice@")[0] == ["l3"]
    assert ids("?user_name=Ali")[0] == ["l3"]
    assert ids("?user_id=" + uid)[0] == ["l3"]
    assert ids("?start_date=2026-01-01T10:30:00Z&end_date=2026-01-01T11:30:00Z")[0] == ["l2"]
    assert ids("?start_date=yesterday")[0] == ["l3", "l2", "l1"]


if __name__ == "__main__":
    apifix.run_tests()
