"""The MSP API (/api/integrations/msp, NetBird's tag MSP) and acting inside
a tenant with ?account=, against the real server: every route, its
validation and roles, responses checked against NetBird's openapi.yml,
idempotent creation (also concurrent, on two replicas), cross-MSP probes,
events with both ids, the DNS challenge against a DNS server on loopback
that the test controls, and a change made inside a tenant reaching that
tenant's agents only."""

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import apifix
from apifix import svc
from nbagent import StreamEnded, build_meta

import testidp

test = svc.test


# ---- a DNS server on loopback whose TXT answers the test sets ---------------------------

class TxtServer:
    """Answers TXT queries for the names in self.txt (name -> [strings]);
    NXDOMAIN for anything else. UDP on 127.0.0.1, a thread of its own."""

    def __init__(self):
        self.txt = {}
        self.queries = []
        self.silent = False             # True: queries go unanswered
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        svc.defer(self.stop)

    def stop(self):
        self.stopped = True
        self.sock.close()

    def serve(self):
        while not self.stopped:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.silent:
                continue
            try:
                self.sock.sendto(self.answer(data), addr)
            except (OSError, ValueError, IndexError, struct.error):
                pass

    def answer(self, q):
        qid, _flags, qd = struct.unpack(">HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        name = ".".join(labels)
        self.queries.append((name, qtype))
        strings = self.txt.get(name)
        if strings is None or qtype != 16:
            rcode = 3 if strings is None else 0
            return struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, 0, 0, 0) + question
        rrs = b""
        for s in strings:
            parts = s if isinstance(s, list) else [s]
            rdata = b"".join(bytes([len(p.encode())]) + p.encode() for p in parts)
            rrs += b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, len(rdata)) + rdata
        return struct.pack(">HHHHHH", qid, 0x8180, 1, len(strings), 0, 0) + question + rrs


# ---- helpers ---------------------------------------------------------------------------------

def make_msp(dep, api, account=None, user=None):
    """Makes the account an MSP (the operator's `msp enable`, here SQL),
    gives it a group "msp-admins" holding `user` (default the owner);
    returns the group id."""
    account = account or dep.account_id
    dep.sql("UPDATE accounts SET msp_enabled_at = now() WHERE id = %s", (account,))
    g = api.ok("POST", "/api/groups", {"name": "msp-admins"})
    dep.sql("UPDATE users SET auto_groups = array_append(auto_groups, %s) WHERE id = %s",
            (g["id"], user or dep.user_id))
    return g["id"]


def tenant_body(name, domain, groups):
    return {"name": name, "domain": domain, "groups": groups}


def check_tenant(t):
    apifix.check_schema(t, "TenantResponse")
    return t


# ---- routes, validation, roles ----------------------------------------------------------------

@test
def non_msp_accounts_get_what_a_server_without_msps_answers():
    dep, srv, api = apifix.start()
    for m, p in [("GET", "/api/integrations/msp"), ("GET", "/api/integrations/msp/switcher"),
                 ("GET", "/api/integrations/msp/tenants"), ("POST", "/api/integrations/msp/tenants"),
                 ("PUT", "/api/integrations/msp/tenants/x"), ("POST", "/api/integrations/msp/tenants/x/dns"),
                 ("POST", "/api/integrations/msp/tenants/x/invite"),
                 ("POST", "/api/integrations/msp/tenants/x/unlink"),
                 ("GET", "/api/integrations/billing/usage"), ("GET", "/api/integrations/billing/subscription"),
                 ("POST", "/api/integrations/msp/tenants/x/subscription")]:
        b = api.error(m, p, 404, body={"name": "n", "domain": "d.example", "groups": []})
        assert b == {"message": "not found", "code": 404}, (p, b)
    assert "tenants" not in api.ok("GET", "/api/users/current")["permissions"]["modules"]
    # Without a token: 401 as every route.
    api.as_token(None).error("GET", "/api/integrations/msp/tenants", 401)


@test
def create_list_update_with_validation_and_schema():
    dep, srv, api = apifix.start()
    gid = make_msp(dep, api)
    info = api.ok("GET", "/api/integrations/msp")
    assert info["id"] == dep.account_id and info["activated_at"] and "parent_name" not in info, info
    assert api.ok("GET", "/api/integrations/msp/tenants") == []

    t = check_tenant(api.ok("POST", "/api/integrations/msp/tenants",
                            tenant_body("Acme", "Acme.Example", [{"id": gid, "role": "admin", "name": "x"}])))
    assert t["name"] == "Acme" and t["domain"] == "acme.example" and t["status"] == "pending", t
    assert t["groups"] == [{"id": gid, "role": "admin"}] and len(t["dns_challenge"]) == 43, t
    assert "activated_at" not in t and "invited_at" not in t, t
    # The tenant is an account with its default group and policy.
    assert dep.sql("SELECT domain FROM accounts WHERE id = %s", (t["id"],)) == [("acme.example",)]
    assert dep.sql("SELECT name FROM groups WHERE account_id = %s", (t["id"],)) == [("All",)]

    lst = api.ok("GET", "/api/integrations/msp/tenants")
    apifix.check_schema(lst, "GetTenantsResponse")
    assert [x["id"] for x in lst] == [t["id"]], lst

    # Same domain again: the same tenant, its challenge kept, nothing new.
    again = check_tenant(api.ok("POST", "/api/integrations/msp/tenants",
                                tenant_body("Other name", "acme.example", [])))
    assert again == t, (again, t)
    assert dep.sql("SELECT count(*) FROM msp_tenants")[0][0] == 1
    assert dep.sql("SELECT count(*) FROM accounts")[0][0] == 2

    # Idempotency-Key: same body -> same tenant; different body -> 409.
    body = tenant_body("Beta", "beta.example", [])
    h = {"Idempotency-Key": "k-123"}
    b1 = check_tenant(api.ok("POST", "/api/integrations/msp/tenants", body, headers=h))
    b2 = api.ok("POST", "/api/integrations/msp/tenants", body, headers=h)
    assert b1 == b2, (b1, b2)
    api.error("POST", "/api/integrations/msp/tenants", 409, tenant_body("Beta 2", "beta2.example", []),
              message="idempotency key", headers=h)
    assert dep.sql("SELECT count(*) FROM msp_tenants")[0][0] == 2

    # Validation.
    api.error("POST", "/api/integrations/msp/tenants", 422, tenant_body("", "x.example", []),
              message="tenant name should not be empty")
    api.error("POST", "/api/integrations/msp/tenants", 422, tenant_body("n", "", []),
              message="tenant domain should not be empty")
    for bad in ["no_dot", "bad..example", "*.wild.example", "sp ace.example"]:
        api.error("POST", "/api/integrations/msp/tenants", 422, tenant_body("n", bad, []), message="invalid domain")
    api.error("POST", "/api/integrations/msp/tenants", 422,
              tenant_body("n", "g.example", [{"id": "nosuchgroup", "role": "admin"}]),
              message="group id nosuchgroup not found")
    api.error("POST", "/api/integrations/msp/tenants", 422,
              tenant_body("n", "g.example", [{"id": gid, "role": "superuser"}]), message="invalid role: superuser")
    api.error("POST", "/api/integrations/msp/tenants", 422, tenant_body("n", "g.example", [{"id": gid}]))
    api.error("POST", "/api/integrations/msp/tenants", 400, raw="{not json")
    api.error("POST", "/api/integrations/msp/tenants", 400, {"name": 5, "domain": "g.example", "groups": []})
    api.error("POST", "/api/integrations/msp/tenants", 400, {"name": "n", "domain": "g.example", "groups": {}})
    # A group of the tenant is not a group of the MSP.
    tall = dep.sql("SELECT id FROM groups WHERE account_id = %s", (t["id"],))[0][0]
    api.error("POST", "/api/integrations/msp/tenants", 422,
              tenant_body("n", "g.example", [{"id": tall, "role": "admin"}]), message="not found")
    assert dep.sql("SELECT count(*) FROM msp_tenants")[0][0] == 2

    # Update: name and groups; domain and challenge stay.
    g2 = api.ok("POST", "/api/groups", {"name": "msp-auditors"})["id"]
    u = check_tenant(api.ok("PUT", "/api/integrations/msp/tenants/" + t["id"],
                            {"name": "Acme Corp", "groups": [{"id": g2, "role": "auditor"}]}))
    assert u["name"] == "Acme Corp" and u["groups"] == [{"id": g2, "role": "auditor"}], u
    assert u["dns_challenge"] == t["dns_challenge"] and u["domain"] == t["domain"], u
    api.error("PUT", "/api/integrations/msp/tenants/" + t["id"], 422, {"name": "", "groups": []})
    api.error("PUT", "/api/integrations/msp/tenants/nosuch", 404, {"name": "x", "groups": []})
    # groups: required, at most 100 entries, each id once.
    api.error("PUT", "/api/integrations/msp/tenants/" + t["id"], 422, {"name": "x"}, message="groups is required")
    api.error("PUT", "/api/integrations/msp/tenants/" + t["id"], 422,
              {"name": "x", "groups": [{"id": gid, "role": "admin"}, {"id": gid, "role": "user"}]},
              message="more than once")
    api.error("PUT", "/api/integrations/msp/tenants/" + t["id"], 422,
              {"name": "x", "groups": [{"id": "g%d" % i, "role": "user"} for i in range(101)]},
              message="at most 100")
    assert api.ok("GET", "/api/integrations/msp/tenants")[0]["groups"] == u["groups"]

    # Roles inside the MSP: owner and admin only.
    _, admin = apifix.role_api(dep, api, "admin")
    admin.ok("GET", "/api/integrations/msp/tenants")
    for role in ["user", "auditor", "network_admin", "billing_admin"]:
        _, other = apifix.role_api(dep, api, role)
        other.error("GET", "/api/integrations/msp/tenants", 403, message="permission denied")
        other.error("POST", "/api/integrations/msp/tenants", 403, tenant_body("z", "z.example", []))
        # Everyone may read the info and the switcher (empty for them).
        assert other.ok("GET", "/api/integrations/msp/switcher") == []
        other.ok("GET", "/api/integrations/msp")
        assert "tenants" not in other.ok("GET", "/api/users/current")["permissions"]["modules"]


@test
def concurrent_identical_creates_on_two_replicas_make_one_tenant():
    dep, srv, api = apifix.start(replicas=2)
    gid = make_msp(dep, api)
    apis = [apifix.api_for(s, dep.admin_token) for s in dep.servers]
    body = tenant_body("Race", "race.example", [{"id": gid, "role": "admin"}])

    def create(i):
        return apis[i % 2].ok("POST", "/api/integrations/msp/tenants", body)

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(create, range(16)))
    assert len({t["id"] for t in out}) == 1, out
    assert len({t["dns_challenge"] for t in out}) == 1, out
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE domain = 'race.example'")[0][0] == 1
    assert dep.sql("SELECT count(*) FROM accounts WHERE domain = 'race.example'")[0][0] == 1

    # The same with an Idempotency-Key and different domains' worth of
    # retries: one tenant.
    body2 = tenant_body("Keyed", "keyed.example", [])

    def create_keyed(i):
        return apis[i % 2].ok("POST", "/api/integrations/msp/tenants", body2, headers={"Idempotency-Key": "kk"})

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(create_keyed, range(12)))
    assert len({t["id"] for t in out}) == 1, out
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE idempotency_key = 'kk'")[0][0] == 1


# ---- acting inside a tenant ------------------------------------------------------------------

@test
def acting_with_account_parameter_takes_the_mapped_role():
    dep, srv, api = apifix.start()
    gid = make_msp(dep, api, user=dep.user_id)
    aud = api.ok("POST", "/api/groups", {"name": "msp-auditors"})["id"]
    # plain text, as a legacy row (pii_key ''): replicas seal such rows later
    dep.sql("UPDATE users SET name = 'Olga Owner', email = 'olga@msp.example', pii_key = '' WHERE id = %s",
            (dep.user_id,))
    t = api.ok("POST", "/api/integrations/msp/tenants",
               tenant_body("T1", "t1.example", [{"id": gid, "role": "admin"}, {"id": aud, "role": "auditor"}]))
    q = "?account=" + t["id"]

    # The owner (in msp-admins) acts as the tenant's admin.
    groups = api.ok("GET", "/api/groups" + q)
    assert [g["name"] for g in groups] == ["All"], groups
    me = api.ok("GET", "/api/users/current" + q)
    assert me["id"] == dep.user_id and me["role"] == "admin", me
    assert me["permissions"]["modules"]["groups"]["create"] is True, me
    assert me["permissions"]["modules"]["accounts"]["update"] is False, me
    assert "tenants" not in me["permissions"]["modules"], me
    assert api.ok("GET", "/api/users/current")["permissions"]["modules"]["tenants"]["read"] is True
    apifix.check_schema(me, "User")
    acc = api.ok("GET", "/api/accounts" + q)
    assert [a["id"] for a in acc] == [t["id"]], acc
    assert api.ok("GET", "/api/integrations/msp/switcher" + q)[0]["id"] == t["id"]

    # The MSP info in tenant context carries the parent.
    info = api.ok("GET", "/api/integrations/msp" + q)
    assert info["id"] == t["id"] and info["parent"] == dep.account_id and info["parent_name"], info
    assert info["parent_owner_email"] == "olga@msp.example" and info["activated_at"] == "", info

    # A write inside the tenant: the tenant's group, events with both ids.
    g = api.ok("POST", "/api/groups" + q, {"name": "customers"})
    assert dep.sql("SELECT account_id FROM groups WHERE id = %s", (g["id"],)) == [(t["id"],)]
    ev = dep.sql("SELECT account_id, initiator_id, initiator_account_id FROM events WHERE target_id = %s",
                 (g["id"],))
    assert ev == [(t["id"], dep.user_id, dep.account_id)], ev
    evs = api.ok("GET", "/api/events/audit" + q)
    mine = [e for e in evs if e["target_id"] == g["id"]]
    assert len(mine) == 1 and mine[0]["initiator_name"] == "Olga Owner", mine
    assert mine[0]["initiator_email"] == "olga@msp.example", mine
    # The MSP account's own events are untouched by the tenant's.
    assert not dep.sql("SELECT 1 FROM events WHERE account_id = %s AND target_id = %s", (dep.account_id, g["id"]))
    # An event in the MSP's own account has no initiator account.
    g0 = api.ok("POST", "/api/groups", {"name": "own"})
    assert dep.sql("SELECT initiator_account_id FROM events WHERE target_id = %s", (g0["id"],)) == [(None,)]

    # An auditor mapping: reads yes, writes no.
    uid, auditor = apifix.role_api(dep, api, "user", name="Al Auditor")
    dep.sql("UPDATE users SET auto_groups = %s WHERE id = %s", ([aud], uid))
    assert auditor.ok("GET", "/api/users/current" + q)["role"] == "auditor"
    auditor.ok("GET", "/api/groups" + q)
    auditor.error("POST", "/api/groups" + q, 403, {"name": "nope"})
    # In both groups: the more privileged role wins.
    dep.sql("UPDATE users SET auto_groups = %s WHERE id = %s", ([aud, gid], uid))
    assert auditor.ok("GET", "/api/users/current" + q)["role"] == "admin"

    # No mapping, unknown tenant: one and the same 403.
    _, nomap = apifix.role_api(dep, api, "admin")
    b1 = nomap.error("GET", "/api/groups" + q, 403)
    b2 = api.error("GET", "/api/groups?account=nosuchtenant", 403)
    b3 = api.error("GET", "/api/groups?account=" + dep.account_id + "x", 403)
    assert b1 == b2 == b3, (b1, b2, b3)
    # ?account= of one's own account is no switch.
    assert api.ok("GET", "/api/groups?account=" + dep.account_id) == api.ok("GET", "/api/groups")

    # A disabled MSP enters no tenant.
    dep.sql("UPDATE accounts SET msp_enabled_at = NULL WHERE id = %s", (dep.account_id,))
    assert api.error("GET", "/api/groups" + q, 403) == b1
    api.error("GET", "/api/integrations/msp/tenants", 404)


@test
def msp_b_cannot_see_act_in_or_learn_of_msp_a_tenants():
    dep, srv, api_a = apifix.start()
    b = apifix.second_account(dep)
    api_b = apifix.api_for(srv, b["ADMIN_TOKEN"])
    ga = make_msp(dep, api_a)
    gb = make_msp(dep, api_b, account=b["ACCOUNT_ID"], user=b["USER_ID"])
    ta = api_a.ok("POST", "/api/integrations/msp/tenants", tenant_body("A1", "a1.example", [{"id": ga, "role": "owner"}]))
    before = dep.sql("SELECT row_to_json(t)::text FROM msp_tenants t ORDER BY 1")

    assert api_b.ok("GET", "/api/integrations/msp/tenants") == []
    assert api_b.ok("GET", "/api/integrations/msp/switcher") == []
    denied = api_b.error("GET", "/api/groups?account=nosuch", 403)
    assert api_b.error("GET", "/api/groups?account=" + ta["id"], 403) == denied
    assert api_b.error("GET", "/api/integrations/msp?account=" + ta["id"], 403) == denied
    api_b.error("POST", "/api/groups?account=" + ta["id"], 403, {"name": "evil"})
    for m, p, body in [("PUT", "", {"name": "x", "groups": []}), ("POST", "/dns", None),
                       ("POST", "/unlink", {"owner": "x"})]:
        e1 = api_b.error(m, "/api/integrations/msp/tenants/" + ta["id"] + p, 404, body)
        e2 = api_b.error(m, "/api/integrations/msp/tenants/nosuch" + p, 404, body)
        assert e1["message"].replace(ta["id"], "ID") == e2["message"].replace("nosuch", "ID"), (e1, e2)
    # Creating A's domain in B is B's own tenant, not A's.
    tb = api_b.ok("POST", "/api/integrations/msp/tenants", tenant_body("B1", "a1.example", [{"id": gb, "role": "admin"}]))
    assert tb["id"] != ta["id"] and tb["dns_challenge"] != ta["dns_challenge"]
    # Inviting A's tenant: the same 404 as an unknown account (no oracle).
    e1 = api_b.error("POST", "/api/integrations/msp/tenants/%s/invite" % ta["id"], 404)
    e2 = api_b.error("POST", "/api/integrations/msp/tenants/nosuch/invite", 404)
    assert e1["message"].replace(ta["id"], "ID") == e2["message"].replace("nosuch", "ID"), (e1, e2)
    # ... and so is inviting an MSP.
    e3 = api_b.error("POST", "/api/integrations/msp/tenants/%s/invite" % dep.account_id, 404)
    assert e3["message"].replace(dep.account_id, "ID") == e2["message"].replace("nosuch", "ID"), (e3, e2)
    # Even the owner mapping of B does not open A's tenant.
    api_b.error("GET", "/api/users/current?account=" + ta["id"], 403)
    after = dep.sql("SELECT row_to_json(t)::text FROM msp_tenants t WHERE account_id <> %s ORDER BY 1", (tb["id"],))
    assert after == before


# ---- DNS challenge --------------------------------------------------------------------------------

@test
def dns_challenge_against_a_loopback_dns_server():
    dns = TxtServer()
    dep, srv, api = apifix.start(extra=("--msp-dns-server", "127.0.0.1:%d" % dns.port))
    gid = make_msp(dep, api)
    t = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("D", "dns.example", [{"id": gid, "role": "admin"}]))
    path = "/api/integrations/msp/tenants/%s/dns" % t["id"]

    # The DNS server does not answer: 501 (not found), no 500.
    dns.silent = True
    st, body = api.post(path)
    assert st == 501 and body == {"dns_challenge": t["dns_challenge"]}, (st, body)
    dns.silent = False
    # No record (NXDOMAIN): 501 with the challenge.
    st, body = api.post(path)
    assert st == 501 and body == {"dns_challenge": t["dns_challenge"]}, (st, body)
    apifix.check_schema(body, "DNSChallengeResponse")
    assert ("dns.example", 16) in dns.queries, dns.queries
    # A wrong value: still 501, still pending.
    dns.txt["dns.example"] = ["v=spf1 -all", "nb-verification=wrong"]
    assert api.post(path)[0] == 501
    assert api.ok("GET", "/api/integrations/msp/tenants")[0]["status"] == "pending"
    # The right one (split in two character-strings as some providers do).
    want = "nb-verification=" + t["dns_challenge"]
    dns.txt["dns.example"] = ["v=spf1 -all", [want[:20], want[20:]]]
    done = check_tenant(api.ok("POST", path))
    assert done["status"] == "active" and done["activated_at"], done
    assert api.ok("GET", "/api/integrations/msp/switcher")[0]["activated_at"] == done["activated_at"]
    # Again: 200, unchanged.
    assert api.ok("POST", path) == done
    api.error("POST", "/api/integrations/msp/tenants/nosuch/dns", 404)


# ---- invite, accept, decline, unlink ----------------------------------------------------------

@test
def invite_accept_decline_and_unlink():
    dep, srv, api = apifix.start()
    gid = make_msp(dep, api)
    other = apifix.second_account(dep)
    api_o = apifix.api_for(srv, other["ADMIN_TOKEN"])
    oid = other["ACCOUNT_ID"]

    t = check_tenant(api.ok("POST", "/api/integrations/msp/tenants/%s/invite" % oid))
    assert t["id"] == oid and t["status"] == "invited" and t["invited_at"], t
    # Nothing of the account shows before it accepts.
    assert t["name"] == oid and t["domain"] == oid, t
    api.error("POST", "/api/integrations/msp/tenants/%s/invite" % oid, 409)
    api.error("POST", "/api/integrations/msp/tenants/nosuch/invite", 404)
    api.error("POST", "/api/integrations/msp/tenants/%s/invite" % dep.account_id, 422)
    # Invited: nobody may act inside yet.
    api.ok("PUT", "/api/integrations/msp/tenants/" + oid, {"name": "Other", "groups": [{"id": gid, "role": "admin"}]})
    api.error("GET", "/api/groups?account=" + oid, 403)
    # The invited owner sees the invitation in the MSP info.
    info = api_o.ok("GET", "/api/integrations/msp")
    assert info["status"] == "invited" and info["parent"] == dep.account_id and "parent_name" in info, info
    # Only the invited account's owner answers.
    api.error("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, 403, {"value": "accept"})
    _, o_admin = apifix.role_api(dep, api, "admin", account=oid)
    o_admin.error("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, 403, {"value": "accept"})
    api_o.error("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, 422, {"value": "maybe"})
    api_o.ok("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, {"value": "accept"})
    assert dep.sql("SELECT status FROM msp_tenants WHERE account_id = %s", (oid,)) == [("existing",)]
    api_o.error("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, 404, {"value": "accept"})
    # Accepted: the MSP acts inside.
    assert api.ok("GET", "/api/users/current?account=" + oid)["role"] == "admin"

    # Unlink of an account that joined by invitation: the link goes, its
    # own owner stays its owner (nothing inside it changes).
    uid = apifix.sql_user(dep, "user", account=oid, name="New Owner")
    roles = dict(dep.sql("SELECT id, role FROM users WHERE account_id = %s", (oid,)))
    api.error("POST", "/api/integrations/msp/tenants/nosuch/unlink", 404, {"owner": uid})
    api.ok("POST", "/api/integrations/msp/tenants/%s/unlink" % oid, {"owner": uid})
    assert dict(dep.sql("SELECT id, role FROM users WHERE account_id = %s", (oid,))) == roles
    assert roles[other["USER_ID"]] == "owner", roles
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE account_id = %s", (oid,)) == [(0,)]
    api.error("GET", "/api/groups?account=" + oid, 403)
    api_o.error("GET", "/api/integrations/msp", 404)

    # Unlink of a tenant the MSP made: a user of the tenant (not blocked)
    # becomes its owner, the tenant's other owners admins, the link goes.
    made = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("Made", "made.example", []))
    tu = apifix.sql_user(dep, "user", account=made["id"], name="Their Owner")
    tb = apifix.sql_user(dep, "user", account=made["id"], name="Blocked")
    dep.sql("UPDATE users SET blocked = true WHERE id = %s", (tb,))
    un = "/api/integrations/msp/tenants/%s/unlink" % made["id"]
    api.error("POST", un, 422, {"owner": dep.user_id})
    api.error("POST", un, 422, {})
    api.error("POST", un, 422, {"owner": tb})
    api.ok("POST", un, {"owner": tu})
    mroles = dict(dep.sql("SELECT id, role FROM users WHERE account_id = %s", (made["id"],)))
    assert mroles[tu] == "owner" and list(mroles.values()).count("owner") == 1, mroles
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE account_id = %s", (made["id"],)) == [(0,)]

    # An invitation withdrawn before it is answered: no role changes.
    api.ok("POST", "/api/integrations/msp/tenants/%s/invite" % oid)
    api.ok("POST", "/api/integrations/msp/tenants/%s/unlink" % oid, {"owner": other["USER_ID"]})
    assert dict(dep.sql("SELECT id, role FROM users WHERE account_id = %s", (oid,))) == roles
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE account_id = %s", (oid,)) == [(0,)]

    # Decline.
    api.ok("POST", "/api/integrations/msp/tenants/%s/invite" % oid)
    api_o.ok("PUT", "/api/integrations/msp/tenants/%s/invite" % oid, {"value": "decline"})
    assert dep.sql("SELECT count(*) FROM msp_tenants WHERE account_id = %s", (oid,)) == [(0,)]


# ---- a change inside a tenant reaches its agents only -----------------------------------------------

@test
def a_change_made_with_account_reaches_that_tenants_agents_only():
    dep, srv, api = apifix.start()
    gid = make_msp(dep, api)
    t1 = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("T1", "one.example", [{"id": gid, "role": "admin"}]))
    t2 = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("T2", "two.example", [{"id": gid, "role": "admin"}]))
    keys = {}
    for t in (t1, t2):
        k = api.ok("POST", "/api/setup-keys?account=" + t["id"],
                   {"name": "k", "type": "reusable", "expires_in": 86400, "auto_groups": [], "usage_limit": 0})
        keys[t["id"]] = k["key"]
    a1, a2, am = dep.agent(), dep.agent(), dep.agent()
    a1.register(keys[t1["id"]], meta=build_meta("one"))
    a2.register(keys[t2["id"]], meta=build_meta("two"))
    am.register(dep.setup_key, meta=build_meta("msp"))
    assert dep.peers()[a1.pub_b64]["account_id"] == t1["id"]
    s1, s2, sm = a1.sync(), a2.sync(), am.sync()
    for s in (s1, s2, sm):
        s.next(timeout=10)
    serials = {a: dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (a,))[0][0]
               for a in (t1["id"], t2["id"], dep.account_id)}

    all1 = [g for g in api.ok("GET", "/api/groups?account=" + t1["id"]) if g["name"] == "All"][0]["id"]
    api.ok("POST", "/api/dns/nameservers?account=" + t1["id"], {
        "name": "corp", "description": "", "enabled": True, "groups": [all1], "primary": True, "domains": [],
        "search_domains_enabled": False, "nameservers": [{"ip": "10.9.9.9", "ns_type": "udp", "port": 53}]})
    m = s1.wait_for(lambda m: any(ns.IP == "10.9.9.9" for g in m.NetworkMap.DNSConfig.NameServerGroups
                                  for ns in g.NameServers), timeout=15)
    assert m is not None
    after = {a: dep.sql("SELECT network_serial FROM accounts WHERE id = %s", (a,))[0][0] for a in serials}
    assert after[t1["id"]] > serials[t1["id"]], (serials, after)
    assert after[t2["id"]] == serials[t2["id"]] and after[dep.account_id] == serials[dep.account_id], (serials, after)
    assert not dep.sql("SELECT 1 FROM name_server_groups WHERE account_id <> %s", (t1["id"],))
    # Events written by other code paths (the store's peer events) record the MSP too.
    api.ok("DELETE", "/api/peers/%s?account=%s" % (dep.peers()[a1.pub_b64]["id"], t1["id"]))
    ev = dep.sql("SELECT activity, initiator_account_id FROM events WHERE account_id = %s AND initiator_id = %s",
                 (t1["id"], dep.user_id))
    assert len(ev) >= 3 and all(a == dep.account_id for _, a in ev), ev
    assert not dep.sql("SELECT 1 FROM events WHERE initiator_account_id IS NOT NULL AND account_id NOT IN (%s, %s)",
                       (t1["id"], t2["id"])), "only the tenants' events name the MSP"


@test
def usage_and_delete_of_a_tenant():
    """GET /api/integrations/billing/usage (the tenant table's Users and
    Peers columns) and DELETE /api/integrations/msp/tenants/{id}: the
    tenant's rows go, its stream ends, the other tenant keeps everything."""
    dep, srv, api = apifix.start()
    gid = make_msp(dep, api)
    t1 = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("T1", "one.example", [{"id": gid, "role": "admin"}]))
    t2 = api.ok("POST", "/api/integrations/msp/tenants", tenant_body("T2", "two.example", [{"id": gid, "role": "admin"}]))
    keys = {t["id"]: api.ok("POST", "/api/setup-keys?account=" + t["id"],
                            {"name": "k", "type": "reusable", "expires_in": 86400, "auto_groups": [],
                             "usage_limit": 0})["key"] for t in (t1, t2)}
    a1, a2 = dep.agent(), dep.agent()
    a1.register(keys[t1["id"]], meta=build_meta("one"))
    a2.register(keys[t2["id"]], meta=build_meta("two"))
    s1, s2 = a1.sync(), a2.sync()
    s1.next(timeout=10)
    s2.next(timeout=10)

    u = api.ok("GET", "/api/integrations/billing/usage?account=" + t1["id"])
    apifix.check_schema(u, "UsageStats")
    assert u["total_peers"] == 1 and u["active_peers"] == 1 and u["total_users"] == 1, u
    assert api.ok("GET", "/api/integrations/billing/usage")["total_peers"] == 0    # the MSP's own
    _, user = apifix.role_api(dep, api, "user")
    user.error("GET", "/api/integrations/billing/usage", 403)

    def rows_of(account):
        return {t: dep.sql("SELECT count(*) FROM %s WHERE account_id = %%s" % t, (account,))[0][0]
                for t in ("peers", "groups", "policies", "setup_keys", "users", "events")}
    before2 = rows_of(t2["id"])
    _, auditor = apifix.role_api(dep, api, "auditor")
    auditor.error("DELETE", "/api/integrations/msp/tenants/" + t1["id"], 403)
    api.error("DELETE", "/api/integrations/msp/tenants/nosuch", 404)
    api.ok("DELETE", "/api/integrations/msp/tenants/" + t1["id"])
    # The deleted tenant's stream ends as a deleted peer's does (OK, the
    # peer is gone), not by a failure; t2's stream goes on.
    end, _ = s1.wait_end(timeout=15)
    assert isinstance(end, StreamEnded), end
    assert all(n == 0 for t, n in rows_of(t1["id"]).items() if t != "events"), rows_of(t1["id"])
    assert not dep.sql("SELECT 1 FROM accounts WHERE id = %s", (t1["id"],))
    assert rows_of(t2["id"]) == before2
    assert [x["id"] for x in api.ok("GET", "/api/integrations/msp/tenants")] == [t2["id"]]
    assert dep.sql("SELECT activity, target_id FROM events WHERE account_id = %s AND activity = 1306",
                   (dep.account_id,)) == [(1306, t1["id"])]
    api.error("DELETE", "/api/integrations/msp/tenants/" + t1["id"], 404)
    # The MSP itself cannot go while it has tenants (their links are rows
    # of other accounts).
    api.error("DELETE", "/api/accounts/" + dep.account_id, 412, message="manages 1 tenants")
    assert rows_of(t2["id"]) == before2
    # An account that joined by invitation is unlinked, never deleted.
    dep.sql("UPDATE msp_tenants SET status = 'existing' WHERE account_id = %s", (t2["id"],))
    api.error("DELETE", "/api/integrations/msp/tenants/" + t2["id"], 400, message="unlink it")
    assert rows_of(t2["id"]) == before2
    # t2's stream went on through all of it.
    peer2 = dep.peers()[a2.pub_b64]["id"]
    api.ok("PUT", "/api/peers/%s?account=%s" % (peer2, t2["id"]),
           {"name": "two-renamed", "ssh_enabled": False, "login_expiration_enabled": False})
    assert s2.wait_for(lambda m: m.peerConfig.fqdn.startswith("two-renamed"), timeout=15) is not None


# ---- a JWT MSP user (the dashboard's path) ------------------------------------------------------

@test
def a_jwt_msp_user_lists_switches_and_works_inside_a_tenant():
    idp = testidp.TestIdP()
    svc.defer(idp.stop)
    dep, (srv,) = apifix.start_idp(idp, bootstrap=False)
    alice = apifix.jwt_api(srv, idp.token("alice-sub", email="alice@msp.example", name="Alice"))
    deadline = time.time() + 90
    while alice.get("/api/users/current")[0] != 200:
        assert time.time() < deadline, "the server never accepted the IdP token"
        time.sleep(0.2)
    acct = alice.ok("GET", "/api/accounts")[0]["id"]
    dep.sql("UPDATE accounts SET msp_enabled_at = now() WHERE id = %s", (acct,))
    g = alice.ok("POST", "/api/groups", {"name": "msp-admins"})["id"]
    dep.sql("UPDATE users SET auto_groups = array_append(auto_groups, %s) WHERE id = 'alice-sub'", (g,))
    assert alice.ok("GET", "/api/users/current")["permissions"]["modules"]["tenants"]["read"] is True
    t = check_tenant(alice.ok("POST", "/api/integrations/msp/tenants",
                              tenant_body("Globex", "globex.example", [{"id": g, "role": "admin"}])))
    assert [x["id"] for x in alice.ok("GET", "/api/integrations/msp/tenants")] == [t["id"]]
    q = "?account=" + t["id"]
    assert [x["id"] for x in alice.ok("GET", "/api/integrations/msp/switcher" + q)] == [t["id"]]
    me = alice.ok("GET", "/api/users/current" + q)
    assert me["id"] == "alice-sub" and me["role"] == "admin" and me["email"] == "alice@msp.example", me
    info = alice.ok("GET", "/api/integrations/msp" + q)
    assert info["parent"] == acct and info["parent_owner_email"] == "alice@msp.example", info
    assert alice.ok("GET", "/api/peers" + q) == []
    k = alice.ok("POST", "/api/setup-keys" + q, {"name": "k", "type": "one-off", "expires_in": 3600,
                                                 "auto_groups": [], "usage_limit": 1})
    assert dep.sql("SELECT account_id FROM setup_keys WHERE id = %s", (k["id"],)) == [(t["id"],)]
    assert dep.sql("SELECT initiator_id, initiator_account_id FROM events WHERE target_id = %s",
                   (k["id"],)) == [("alice-sub", acct)]
    # Single account mode (the default here) puts a new IdP user in the
    # deployment's account: never in a customer's tenant, which is now
    # the newest account.
    bob = apifix.jwt_api(srv, idp.token("bob-sub", email="bob@example.com", name="Bob"))
    bob.get("/api/users/current")       # signs bob in (he may wait for approval)
    assert dep.sql("SELECT account_id FROM users WHERE id = 'bob-sub'") == [(acct,)]
    assert bob.get("/api/peers" + q)[0] == 403


if __name__ == "__main__":
    apifix.run_tests()
