"""/api/peers against the real server: list (filters), get, update (name
and DNS label, SSH, expirations, approval, address), delete (and the
deleted peer's Sync stream), accessible-peers from the network maps,
validation errors, and what regular users may see."""

import re
import secrets

import apifix
from apifix import svc

import nbagent
from nbagent import RpcFailed, StreamEnded, build_meta

test = svc.test

DOMAIN = "netbird.selfhosted"           # the server's default --dns-domain
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
PEER_KEYS = {
    "approval_required", "city_name", "connected", "connection_ip", "country_code", "created_at", "dns_label",
    "ephemeral", "extra_dns_labels", "geoname_id", "groups", "hostname", "id", "inactivity_expiration_enabled",
    "ip", "kernel_version", "last_login", "last_seen", "local_flags", "login_expiration_enabled",
    "login_expired", "name", "os", "serial_number", "ssh_enabled", "ui_version", "user_id", "version",
}
FLAG_KEYS = {
    "block_inbound", "block_lan_access", "disable_client_routes", "disable_dns", "disable_firewall",
    "disable_server_routes", "lazy_connection_enabled", "rosenpass_enabled", "rosenpass_permissive",
    "server_ssh_allowed",
}
ACCESSIBLE_KEYS = {"city_name", "connected", "country_code", "dns_label", "geoname_id", "id", "ip", "last_seen",
                   "name", "os", "user_id"}
SSO_LOGIN = ("this peer hasn't been added with the sso login, therefore the login expiration can't be updated")
SSO_INACTIVITY = ("this peer hasn't been added with the sso login, therefore the inactivity expiration can't "
                  "be updated")


# ---- helpers ----------------------------------------------------------------------

def register(dep, hostname, **meta):
    """A real agent registered with the setup key; returns (agent, peer id)."""
    a = dep.agent()
    a.register(dep.setup_key, meta=build_meta(hostname, **meta))
    return a, dep.peers()[a.pub_b64]["id"]


def peer_row(dep, pid, cols):
    return dep.sql("SELECT %s FROM peers WHERE id = %%s" % cols, (pid,))[0]


def events(dep, activity, target=None):
    q = "SELECT target_id, initiator_id, meta FROM events WHERE account_id = %s AND activity = %s"
    args = [dep.account_id, activity]
    if target is not None:
        q += " AND target_id = %s"
        args.append(target)
    return dep.sql(q + " ORDER BY id", args)


def set_policies(dep, rules):
    """Replaces every policy with one per (sources, destinations,
    bidirectional) triple of group ids."""
    dep.sql("DELETE FROM policies WHERE account_id = %s", (dep.account_id,))
    for i, (src, dst, bidir) in enumerate(rules):
        pid = "pol%d%s" % (i, secrets.token_hex(4))
        dep.sql("INSERT INTO policies (id, account_id, name) VALUES (%s, %s, %s)", (pid, dep.account_id, pid))
        dep.sql("INSERT INTO policy_rules (id, policy_id, account_id, bidirectional, protocol, sources,"
                " destinations) VALUES (%s, %s, %s, %s, 'all', %s, %s)",
                ("r" + pid, pid, dep.account_id, bidir, list(src), list(dst)))
    bump(dep)


def bump(dep):
    """A change made in SQL behind the server's back: move the serial."""
    dep.sql("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s", (dep.account_id,))


def by_id(items):
    return {x["id"]: x for x in items}


# ---- list and get -------------------------------------------------------------------

@test
def list_and_get_show_netbirds_fields():
    dep, srv, api = apifix.start()
    a, pa = register(dep, "alpha")
    b, pb_ = register(dep, "beta", OSVersion="", core="6.1")
    peers = api.ok("GET", "/api/peers")
    assert len(peers) == 2, peers
    m = by_id(peers)
    p = m[pa]
    assert set(p) == PEER_KEYS | {"accessible_peers_count"}, set(p) ^ (PEER_KEYS | {"accessible_peers_count"})
    row = dep.peers()[a.pub_b64]
    assert p["name"] == "alpha" and p["hostname"] == "alpha" and p["ip"] == row["ip"], p
    assert p["dns_label"] == "alpha." + DOMAIN, p["dns_label"]
    assert p["os"] == "Debian GNU/Linux 12" and m[pb_]["os"] == "Debian GNU/Linux 6.1", (p["os"], m[pb_]["os"])
    assert p["version"] == "0.60.0" and p["kernel_version"] == "6.1.0-18-amd64", p
    assert p["serial_number"] == "SN-alpha" and p["user_id"] == "" and p["ui_version"] == "", p
    assert p["connected"] is False and p["login_expired"] is False and p["approval_required"] is False, p
    assert p["ssh_enabled"] is False and p["ephemeral"] is False and p["extra_dns_labels"] == [], p
    assert p["connection_ip"] == "127.0.0.1" and p["geoname_id"] == 0 and p["country_code"] == "", p
    for k in ("created_at", "last_seen", "last_login"):
        assert TIME_RE.match(p[k]), (k, p[k])
    assert set(p["local_flags"]) == FLAG_KEYS and not any(p["local_flags"].values()), p["local_flags"]
    assert [g["name"] for g in p["groups"]] == ["All"], p["groups"]
    g = p["groups"][0]
    assert set(g) == {"id", "name", "peers_count", "resources_count", "issued"}, g
    assert g["peers_count"] == 2 and g["resources_count"] == 0 and g["issued"] == "api", g
    # The Default policy (All <-> All): each sees the other.
    assert p["accessible_peers_count"] == 1 and m[pb_]["accessible_peers_count"] == 1, peers

    one = api.ok("GET", "/api/peers/" + pa)
    want = dict(p)
    del want["accessible_peers_count"]
    assert one == want, (one, want)
    api.error("GET", "/api/peers/nope", 404, message="peer not found: nope")


@test
def list_filters_by_name_and_ip():
    dep, srv, api = apifix.start()
    register(dep, "web-1")
    register(dep, "web-2")
    _, db = register(dep, "db-1")
    names = sorted(p["name"] for p in api.ok("GET", "/api/peers?name=web"))
    assert names == ["web-1", "web-2"], names
    ip = api.ok("GET", "/api/peers/" + db)["ip"]
    got = api.ok("GET", "/api/peers?ip=" + ip)
    assert [p["id"] for p in got] == [db], got
    assert api.ok("GET", "/api/peers?name=nothing-like-it") == []
    assert len(api.ok("GET", "/api/peers?name=")) == 3      # empty = no filter


@test
def agent_meta_and_status_show():
    dep, srv, api = apifix.start()
    flags = nbagent.pb.Flags(rosenpassEnabled=True, serverSSHAllowed=True, blockInbound=True, disableDNS=True)
    a, pa = register(dep, "flagged", flags=flags)
    s = a.sync(meta=build_meta("flagged", flags=flags))   # Sync stores the meta it carries
    s.next(timeout=15)
    p = api.ok("GET", "/api/peers/" + pa)
    assert p["connected"] is True, p
    f = p["local_flags"]
    on = sorted(k for k, v in f.items() if v)
    assert on == ["block_inbound", "disable_dns", "rosenpass_enabled", "server_ssh_allowed"], f
    dep.sql("UPDATE peers SET location_country_code = 'DE', location_city_name = 'Berlin',"
            " location_geo_name_id = 2950159, extra_dns_labels = '{web,api.x}' WHERE id = %s", (pa,))
    p = api.ok("GET", "/api/peers/" + pa)
    assert (p["country_code"], p["city_name"], p["geoname_id"]) == ("DE", "Berlin", 2950159), p
    assert p["extra_dns_labels"] == ["web." + DOMAIN, "api.x." + DOMAIN], p["extra_dns_labels"]
    # The account's own DNS domain wins over the server's.
    dep.sql("UPDATE accounts SET settings_dns_domain = 'corp.example' WHERE id = %s", (dep.account_id,))
    assert api.ok("GET", "/api/peers/" + pa)["dns_label"] == "flagged.corp.example"


@test
def list_stays_current_between_calls():
    """The list keeps rendered peers between calls; every kind of change
    must still show at once."""
    dep, srv, api = apifix.start()
    a, pa = register(dep, "one")
    _, pb_ = register(dep, "two")
    m = by_id(api.ok("GET", "/api/peers"))
    assert not m[pa]["connected"] and m[pa]["accessible_peers_count"] == 1, m
    s = a.sync()                                   # status columns change, the serial does not
    s.next(timeout=15)
    assert by_id(api.ok("GET", "/api/peers"))[pa]["connected"] is True
    dep.sql("UPDATE peers SET location_city_name = 'Oslo' WHERE id = %s", (pb_,))
    assert by_id(api.ok("GET", "/api/peers"))[pb_]["city_name"] == "Oslo"
    g = api.ok("POST", "/api/groups", {"name": "pair", "peers": [pa]})
    m = by_id(api.ok("GET", "/api/peers"))
    assert [x["name"] for x in m[pa]["groups"]] == ["All", "pair"], m[pa]["groups"]
    assert [x["peers_count"] for x in m[pb_]["groups"]] == [2], m[pb_]["groups"]
    put(api, pb_, name="deux")
    m = by_id(api.ok("GET", "/api/peers"))
    assert m[pb_]["name"] == "deux" and m[pb_]["dns_label"] == "deux." + DOMAIN, m[pb_]
    dep.sql("UPDATE accounts SET settings_dns_domain = 'corp.example' WHERE id = %s", (dep.account_id,))
    m = by_id(api.ok("GET", "/api/peers"))
    assert m[pa]["dns_label"] == "one.corp.example" and m[pb_]["dns_label"] == "deux.corp.example", m
    api.ok("DELETE", "/api/groups/" + g["id"])
    api.ok("DELETE", "/api/peers/" + pb_)
    got = api.ok("GET", "/api/peers")
    assert [p["id"] for p in got] == [pa] and got[0]["accessible_peers_count"] == 0, got
    assert [x["name"] for x in got[0]["groups"]] == ["All"] and got[0]["groups"][0]["peers_count"] == 1, got
    # A filtered list (not kept) agrees with the full one.
    assert api.ok("GET", "/api/peers?name=one") == got


# ---- update -------------------------------------------------------------------------

def put(api, pid, status=200, message=None, **fields):
    body = {"name": None, "ssh_enabled": False, "login_expiration_enabled": False,
            "inactivity_expiration_enabled": False}
    body.update(fields)
    if status == 200:
        return api.ok("PUT", "/api/peers/" + pid, body)
    return api.error("PUT", "/api/peers/" + pid, status, body, message=message)


@test
def rename_recomputes_the_dns_label():
    dep, srv, api = apifix.start()
    _, pa = register(dep, "alpha")
    _, pb_ = register(dep, "beta")
    serial = dep.network_serial()
    p = put(api, pa, name="Web Server.lan")
    assert p["name"] == "Web Server.lan" and p["dns_label"] == "web-server." + DOMAIN, p
    assert dep.network_serial() == serial + 1
    ev = events(dep, 32, pa)
    assert len(ev) == 1 and ev[0][1] == dep.user_id, ev
    assert ev[0][2]["name"] == "Web Server.lan" and ev[0][2]["fqdn"] == "web-server." + DOMAIN, ev

    # beta takes alpha's label: the registration fallback "<label>-<o3>-<o4>".
    ip = api.ok("GET", "/api/peers/" + pb_)["ip"]
    o = ip.split(".")
    p = put(api, pb_, name="web-server")
    assert p["dns_label"] == "web-server-%s-%s.%s" % (o[2], o[3], DOMAIN), p
    # Same name again: nothing renamed, no event; the label stays.
    p = put(api, pb_, name="web-server")
    assert p["dns_label"].startswith("web-server-"), p
    assert len(events(dep, 32, pb_)) == 1
    # A peer may take back a label that is its own.
    p = put(api, pa, name="WEB-SERVER")
    assert p["dns_label"] == "web-server." + DOMAIN, p
    # Non-ASCII names become punycode labels, as at registration.
    p = put(api, pa, name="bücher")
    assert p["dns_label"] == "xn--bcher-kva." + DOMAIN, p


@test
def ssh_and_expirations():
    dep, srv, api = apifix.start()
    _, pid = register(dep, "box")
    ip = api.ok("GET", "/api/peers/" + pid)["ip"]
    p = put(api, pid, name="box", ssh_enabled=True)
    assert p["ssh_enabled"] is True, p
    assert [e[0] for e in events(dep, 30)] == [ip], "SSH events target the peer's address, as NetBird's"
    put(api, pid, name="box", ssh_enabled=False)
    assert [e[0] for e in events(dep, 31)] == [ip]
    # Expiration settings only for peers added by a user (SSO).
    put(api, pid, 412, SSO_LOGIN, name="box", login_expiration_enabled=True)
    put(api, pid, 412, SSO_INACTIVITY, name="box", inactivity_expiration_enabled=True)
    dep.sql("UPDATE peers SET user_id = %s WHERE id = %s", (dep.user_id, pid))
    p = put(api, pid, name="box", login_expiration_enabled=True, inactivity_expiration_enabled=True)
    assert p["login_expiration_enabled"] and p["inactivity_expiration_enabled"] and p["user_id"] == dep.user_id
    assert [e[0] for e in events(dep, 33)] == [ip] and [e[0] for e in events(dep, 63)] == [ip]
    put(api, pid, name="box")       # absent booleans are false, as Go decodes them
    assert len(events(dep, 34)) == 1 and len(events(dep, 64)) == 1
    assert peer_row(dep, pid, "login_expiration_enabled, inactivity_expiration_enabled") == (False, False)


@test
def approval_and_address():
    """Peer approval as NetBird's open-source server has it: its integrated
    validator validates every peer, so with the account's
    peer_approval_enabled on, a peer registers approved, and even a peer
    whose stored peer_status_requires_approval is true (a database from
    elsewhere) is listed as approved, reaches and is reached by the others,
    gets SSH on Login and its peers on Sync; PUT "approval_required" is
    read and ignored (no write, no event 57/58)."""
    dep, srv, api = apifix.start()
    dep.sql("UPDATE accounts SET settings_extra_peer_approval_enabled = true WHERE id = %s", (dep.account_id,))
    agent, pid = register(dep, "box")
    other_agent, other = register(dep, "other")
    assert peer_row(dep, pid, "peer_status_requires_approval") == (False,)
    ev = events(dep, 1, pid)
    assert len(ev) == 1 and "pending_approval" not in ev[0][2], ev
    dep.sql("UPDATE peers SET peer_status_requires_approval = true, ssh_enabled = true WHERE id = %s", (pid,))
    bump(dep)
    p = api.ok("GET", "/api/peers/" + pid)
    assert p["approval_required"] is False and "disapproval_reason" not in p, p
    listed = {x["id"]: x for x in api.ok("GET", "/api/peers")}
    assert listed[pid]["approval_required"] is False and "disapproval_reason" not in listed[pid], listed[pid]
    counts = {i: x["accessible_peers_count"] for i, x in listed.items()}
    assert counts == {pid: 1, other: 1}, counts
    login = agent.login(meta=build_meta("box"))
    assert login.peerConfig.sshConfig.sshEnabled, login
    s = agent.sync(meta=build_meta("box"))
    m = s.next(timeout=15)
    assert other_agent.pub_b64 in nbagent.remote_keys(m), m
    s.cancel()
    s = other_agent.sync(meta=build_meta("other"))
    m = s.next(timeout=15)
    assert agent.pub_b64 in nbagent.remote_keys(m), m
    s.cancel()
    serial = dep.network_serial()
    p = put(api, pid, name="box", ssh_enabled=True, approval_required=False)
    assert p["approval_required"] is False and "disapproval_reason" not in p, p
    put(api, pid, name="box", ssh_enabled=True, approval_required=True)
    assert peer_row(dep, pid, "peer_status_requires_approval") == (True,)     # never written
    assert events(dep, 57, pid) == [] and events(dep, 58, pid) == []
    assert dep.network_serial() == serial + 2       # NetBird bumps on every update
    put(api, pid, 400, name="box", approval_required="yes")

    old = p["ip"]
    new = str(dep.network.network_address + 200)
    if new in (old, api.ok("GET", "/api/peers/" + other)["ip"]):
        new = str(dep.network.network_address + 201)
    p = put(api, pid, name="box", ip=new)
    assert p["ip"] == new and peer_row(dep, pid, "host(ip)") == (new,), p
    ev = events(dep, 88, pid)
    assert len(ev) == 1 and ev[0][2]["old_ip"] == old and ev[0][2]["ip"] == new, ev


@test
def update_validation():
    dep, srv, api = apifix.start()
    _, pid = register(dep, "box")
    _, other = register(dep, "other")
    other_ip = api.ok("GET", "/api/peers/" + other)["ip"]
    serial = dep.network_serial()
    path = "/api/peers/" + pid
    api.error("PUT", path, 400, raw="{nope", message="couldn't parse JSON request")
    api.error("PUT", path, 400, raw="[]")
    put(api, pid, 400, name=7)
    put(api, pid, 400, name="box", ssh_enabled="yes")
    put(api, pid, 422, "peer name shouldn't be empty", name="")
    put(api, pid, 422, "peer name shouldn't be empty")
    put(api, pid, 422, "invalid ip address nope", name="box", ip="nope")
    put(api, pid, 422, "is not within the account network range", name="box", ip="10.255.255.1")
    put(api, pid, 422, "is not within the account network range", name="box", ip="fd00::1")
    put(api, pid, 422, "ip %s is already assigned to peer %s" % (other_ip, other), name="box", ip=other_ip)
    put(api, pid, 412, "ipv6 is not configured for this account", name="box", ipv6="fd00::1")
    put(api, pid, 422, "is not ipv6", name="box", ipv6="100.64.0.1")
    put(api, "nope", 404, "peer not found: nope", name="box")
    # Nothing half-written: the rename before the refused setting is undone.
    put(api, pid, 412, SSO_LOGIN, name="renamed", ssh_enabled=True, login_expiration_enabled=True)
    assert peer_row(dep, pid, "name, ssh_enabled") == ("box", False)
    assert dep.network_serial() == serial
    assert events(dep, 32) == [] and events(dep, 30) == []


# ---- delete ------------------------------------------------------------------------------

@test
def delete_removes_the_peer():
    dep, srv, api = apifix.start()
    _, pid = register(dep, "gone")
    _, keep = register(dep, "kept")
    ip = api.ok("GET", "/api/peers/" + pid)["ip"]
    g = api.ok("POST", "/api/groups", {"name": "team", "peers": [pid, keep]})
    # A policy naming the peer as a resource goes with it (NetBird's deletePeers).
    dep.sql("INSERT INTO policies (id, account_id, name) VALUES ('rp1', %s, 'to gone')", (dep.account_id,))
    dep.sql("INSERT INTO policy_rules (id, policy_id, account_id, destination_resource_id,"
            " destination_resource_type, sources) VALUES ('rr1', 'rp1', %s, %s, 'peer', %s)",
            (dep.account_id, pid, [g["id"]]))
    serial = dep.network_serial()
    assert api.ok("DELETE", "/api/peers/" + pid) == {}
    api.error("GET", "/api/peers/" + pid, 404)
    assert [p["id"] for p in api.ok("GET", "/api/peers")] == [keep]
    assert api.ok("GET", "/api/groups/" + g["id"])["peers_count"] == 1
    assert dep.sql("SELECT count(*) FROM policies WHERE id = 'rp1'")[0][0] == 0
    assert dep.network_serial() == serial + 1
    ev = events(dep, 5, pid)
    assert len(ev) == 1 and ev[0][1] == dep.user_id, ev
    assert ev[0][2]["name"] == "gone" and ev[0][2]["ip"] == ip and ev[0][2]["fqdn"] == "gone." + DOMAIN, ev
    ev = events(dep, 11, pid)
    assert len(ev) == 1 and ev[0][2] == {"name": "to gone"}, ev
    api.error("DELETE", "/api/peers/" + pid, 404, message="peer %s account not found" % pid)


@test
def delete_ends_the_peers_sync_stream():
    dep, srv, api = apifix.start()
    a, pa = register(dep, "leaver")
    b, pb_ = register(dep, "stayer")
    sa, sb = a.sync(), b.sync()
    sa.next(timeout=15)
    first_b = sb.next(timeout=15)
    assert a.pub_b64 in {p.wgPubKey for p in first_b.NetworkMap.remotePeers}
    api.ok("DELETE", "/api/peers/" + pa)
    end, msgs = sa.wait_end(timeout=15)
    assert isinstance(end, StreamEnded), "the deleted peer's stream must end cleanly, got %r" % end
    assert msgs, "the deleted peer gets one last, empty map"
    last = msgs[-1]
    assert last.NetworkMap.remotePeersIsEmpty and len(last.NetworkMap.remotePeers) == 0, last
    assert not last.HasField("sessionExpiresAt"), last
    sb.wait_for(lambda m: m.HasField("NetworkMap") and
                a.pub_b64 not in {p.wgPubKey for p in m.NetworkMap.remotePeers}, timeout=15)
    try:
        a.login(meta=build_meta("leaver"))
        raise AssertionError("a deleted peer logged in")
    except RpcFailed as e:
        assert e.code.name == "PERMISSION_DENIED", e


# ---- accessible peers ---------------------------------------------------------------------

@test
def accessible_peers_follow_the_policies():
    dep, srv, api = apifix.start()
    ids = {}
    for n in ("a", "b", "c", "d"):
        ids[n] = register(dep, n)[1]
    ga = dep.add_group("ab")
    gc = dep.add_group("c")
    dep.sql("INSERT INTO group_peers (account_id, group_id, peer_id) VALUES (%s, %s, %s), (%s, %s, %s),"
            " (%s, %s, %s)", (dep.account_id, ga, ids["a"], dep.account_id, ga, ids["b"],
                              dep.account_id, gc, ids["c"]))
    # a <-> b; c -> a one way (visibility is symmetric); d nowhere.
    set_policies(dep, [([ga], [ga], True), ([gc], [ga], False)])
    want = {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}, "d": set()}
    name_of = {v: k for k, v in ids.items()}
    listed = {name_of[p["id"]]: p["accessible_peers_count"] for p in api.ok("GET", "/api/peers")}
    for n, pid in ids.items():
        got = api.ok("GET", "/api/peers/%s/accessible-peers" % pid)
        assert {name_of[x["id"]] for x in got} == want[n], (n, got)
        for x in got:
            assert set(x) == ACCESSIBLE_KEYS, x
            assert x["dns_label"] == "%s.%s" % (name_of[x["id"]], DOMAIN) and x["os"] == "Debian GNU/Linux", x
            assert TIME_RE.match(x["last_seen"]), x
        assert listed[n] == len(want[n]), (n, listed)
    # A login-expired peer still counts (NetworkMap.offlinePeers).
    dep.sql("UPDATE peers SET user_id = %s, peer_status_login_expired = true WHERE id = %s",
            (dep.user_id, ids["b"]))
    bump(dep)
    got = api.ok("GET", "/api/peers/%s/accessible-peers" % ids["a"])
    assert {name_of[x["id"]] for x in got} == {"b", "c"}, got
    # Through the API: the change takes effect at once (the serial moved).
    api.ok("PUT", "/api/groups/" + ga, {"name": "ab", "peers": [ids["a"]]})
    got = api.ok("GET", "/api/peers/%s/accessible-peers" % ids["a"])
    assert {name_of[x["id"]] for x in got} == {"c"}, got
    listed = {name_of[p["id"]]: p["accessible_peers_count"] for p in api.ok("GET", "/api/peers")}
    assert listed == {"a": 1, "b": 0, "c": 1, "d": 0}, listed
    api.error("GET", "/api/peers/nope/accessible-peers", 404, message="peer not found")


@test
def counts_agree_with_the_agents_maps():
    """accessible_peers_count = what each agent's own Sync map lists."""
    dep, srv, api = apifix.start()
    agents = {}
    for n in ("m1", "m2", "m3", "m4", "m5"):
        agents[n] = register(dep, n)
    g1, g2 = dep.add_group("g1"), dep.add_group("g2")
    for n, g in (("m1", g1), ("m2", g1), ("m3", g2), ("m4", g2), ("m2", g2)):
        dep.sql("INSERT INTO group_peers (account_id, group_id, peer_id) VALUES (%s, %s, %s)",
                (dep.account_id, g, agents[n][1]))
    set_policies(dep, [([g1], [g1], True), ([g2], [g2], False)])
    counts = {p["id"]: p["accessible_peers_count"] for p in api.ok("GET", "/api/peers")}
    for n, (a, pid) in agents.items():
        s = a.sync()
        m = s.next(timeout=15)
        seen = len(m.NetworkMap.remotePeers) + len(m.NetworkMap.offlinePeers)
        assert counts[pid] == seen, (n, counts[pid], seen)
        got = api.ok("GET", "/api/peers/%s/accessible-peers" % pid)
        keys = {p.wgPubKey for p in m.NetworkMap.remotePeers}
        rows = {r["id"]: r["key"] for r in dep.peers().values()}
        assert {rows[x["id"]] for x in got} == keys, (n, got)
        s.cancel()


# ---- who sees what ---------------------------------------------------------------------------

@test
def regular_users_see_their_own_peers():
    dep, srv, api = apifix.start()
    uid, user = apifix.role_api(dep, api, "user")
    _, mine = register(dep, "mine")
    _, theirs = register(dep, "theirs")
    dep.sql("UPDATE peers SET user_id = %s WHERE id = %s", (uid, mine))
    # The account blocks regular users' view by default: nothing listed.
    assert user.ok("GET", "/api/peers") == []
    assert user.ok("GET", "/api/peers/%s/accessible-peers" % mine) == []
    # GetPeer does not look at that setting: the owner may read its peer.
    assert user.ok("GET", "/api/peers/" + mine)["id"] == mine
    user.error("GET", "/api/peers/" + theirs, 500, message="user %s has no access to peer %s" % (uid, theirs))
    user.error("GET", "/api/peers/nope", 404)

    dep.sql("UPDATE accounts SET settings_regular_users_view_blocked = false WHERE id = %s", (dep.account_id,))
    got = user.ok("GET", "/api/peers")
    assert [p["id"] for p in got] == [mine] and got[0]["accessible_peers_count"] == 1, got
    assert [p["id"] for p in user.ok("GET", "/api/peers/%s/accessible-peers" % mine)] == [theirs]
    assert user.ok("GET", "/api/peers/%s/accessible-peers" % theirs) == []
    user.error("GET", "/api/peers/nope/accessible-peers", 404, message="peer not found")
    # Changes need the Peers permission.
    user.error("PUT", "/api/peers/" + mine, 403, {"name": "x"}, message="permission denied")
    user.error("DELETE", "/api/peers/" + mine, 403, message="permission denied")
    assert len(api.ok("GET", "/api/peers")) == 2


@test
def read_only_roles_and_service_users():
    dep, srv, api = apifix.start()
    _, pid = register(dep, "box")
    _, auditor = apifix.role_api(dep, api, "auditor")
    _, svc_user = apifix.role_api(dep, api, "user", service=True)
    _, netadmin = apifix.role_api(dep, api, "network_admin")
    _, billing = apifix.role_api(dep, api, "billing_admin")
    for who in (auditor, svc_user, netadmin):
        assert [p["id"] for p in who.ok("GET", "/api/peers")] == [pid]
        assert who.ok("GET", "/api/peers/" + pid)["id"] == pid
        assert who.ok("GET", "/api/peers/%s/accessible-peers" % pid) == []
        who.error("PUT", "/api/peers/" + pid, 403, {"name": "x"})
        who.error("DELETE", "/api/peers/" + pid, 403)
    # billing_admin is restrictable like a regular user.
    assert billing.ok("GET", "/api/peers") == []
    _, admin = apifix.role_api(dep, api, "admin")
    assert admin.ok("PUT", "/api/peers/" + pid, {"name": "renamed"})["name"] == "renamed"
    api.error("GET", "/api/peers", 401, headers={"Authorization": "Token nbp_invalid"})


if __name__ == "__main__":
    apifix.run_tests()
