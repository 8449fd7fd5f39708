"""What NetBird's REST API shows for a tests/lib/nbstore.py data set
(issue 17): expected_rest(), expected_events(), and subset_diff() /
assert_subset() to compare a live answer with them. Only fields that
come from the store; each is derived as NetBird's REST handlers derive it
(management/server/http/handlers/*, toPeerListItemResponse,
toGroupResponse, toPolicyResponse, setup_keys ToResponseBody,
toUserResponse, the networks' ToAPIResponse, events toEventResponse).
Use them through nbstore (nbstore.expected_rest(...) etc.)."""

import datetime
import json

import nbstore



def _rfc3339(v):
    return v.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if v else None


def _posture_api(c):
    out = {}
    if "NBVersionCheck" in c:
        out["nb_version_check"] = {"min_version": c["NBVersionCheck"]["MinVersion"]}
    if "OSVersionCheck" in c:
        o = {}
        for k, v in c["OSVersionCheck"].items():
            if v:
                o[k.lower()] = ({"min_version": v["MinVersion"]} if "MinVersion" in v
                                else {"min_kernel_version": v["MinKernelVersion"]})
        out["os_version_check"] = o
    if "GeoLocationCheck" in c:
        g = c["GeoLocationCheck"]
        out["geo_location_check"] = {"action": g["Action"], "locations": [
            dict({"country_code": x["CountryCode"]}, **({"city_name": x["CityName"]} if x["CityName"] else {}))
            for x in g["Locations"]]}
    if "PeerNetworkRangeCheck" in c:
        g = c["PeerNetworkRangeCheck"]
        out["peer_network_range_check"] = {"action": g["Action"], "ranges": g["Ranges"]}
    if "ProcessCheck" in c:
        out["process_check"] = {"processes": [
            {k: v for k, v in (("linux_path", p["LinuxPath"]), ("mac_path", p["MacPath"]),
                               ("windows_path", p["WindowsPath"])) if v} for p in c["ProcessCheck"]["Processes"]]}
    return out


# activity codes of the events in the data set (activity/codes.go)
_EVENT_CODES = {0: "peer.user.add", 1: "peer.setupkey.add", 2: "user.join", 4: "account.create", 47: "user.delete"}


def expected_rest(data=None, dns_domain="netbird.selfhosted"):
    """What NetBird's REST API shows for data, per account:
    {account_id: {"/api/peers": [...], "/api/groups": [...], ...}}.
    Only fields that come from the store (no live status, no computed
    counts that depend on policies), so a test compares subsets with
    assert_subset() (events: expected_events()). dns_domain: the server's DNS domain (peers'
    dns_label in the API is label + "." + domain). Pass data_for(version)
    for what a store of an older version can hold."""
    data = data if data is not None else nbstore.dataset()
    out = {}
    for a in data["accounts"]:
        gname = {g["id"]: g["name"] for g in a["groups"]}
        gmin = lambda ids: [{"id": i, "name": gname[i]} for i in ids]
        groups_of = {}
        for g in a["groups"]:
            for pid in g["peers"]:
                groups_of.setdefault(pid, []).append({"id": g["id"], "name": g["name"]})
        dom = a["settings"]["dns_domain"] or dns_domain
        peers = []
        for p in a["peers"]:
            loc = p["location"] or {}
            peers.append({
                "id": p["id"], "name": p["name"], "ip": p["ip"], "dns_label": p["dns_label"] + "." + dom,
                "extra_dns_labels": [x + "." + dom for x in p["extra_dns_labels"]],
                "hostname": p["hostname"], "os": "%s %s" % (p["os"], p["os_version"] or p["core"]),
                "kernel_version": p["kernel_version"], "version": p["wt_version"],
                "ssh_enabled": p["ssh_enabled"], "user_id": p["user_id"],
                "login_expiration_enabled": p["login_expiration_enabled"],
                "inactivity_expiration_enabled": p["inactivity_expiration_enabled"],
                "login_expired": p["login_expired"],
                # NetBird's open-source validator approves every peer, so
                # its API says false whatever peer_status_requires_approval
                # holds (setApprovalRequiredFlag): check that column in SQL
                "approval_required": False,
                "ephemeral": p["ephemeral"], "serial_number": p["serial"],
                "groups": sorted(groups_of.get(p["id"], []), key=lambda x: x["id"]),
            })
            if loc:         # without one NetBird prints net.IP(nil) as "<nil>": left out
                peers[-1].update(country_code=loc["country"], city_name=loc["city"], connection_ip=loc["ip"])
        pname = {p["id"]: p["name"] for p in a["peers"]}
        groups = [{"id": g["id"], "name": g["name"], "issued": g["issued"],
                   "peers": [{"id": i, "name": pname[i]} for i in g["peers"]], "peers_count": len(g["peers"]),
                   "resources": [{"id": r["id"], "type": r["type"]} for r in g["resources"]],
                   "resources_count": len(g["resources"])} for g in a["groups"]]
        policies = []
        for po in a["policies"]:
            rules = []
            for r in po["rules"]:
                rr = {"id": r["id"], "name": r["name"], "description": r["description"], "enabled": r["enabled"],
                      "action": r["action"], "bidirectional": r["bidirectional"], "protocol": r["protocol"],
                      "sources": gmin(r["sources"]), "destinations": gmin(r["destinations"])}
                if r["ports"]:
                    rr["ports"] = r["ports"]
                if r["port_ranges"]:
                    rr["port_ranges"] = [{"start": x["start"], "end": x["end"]} for x in r["port_ranges"]]
                rules.append(rr)
            policies.append({"id": po["id"], "name": po["name"], "description": po["description"],
                             "enabled": po["enabled"], "source_posture_checks": po["source_posture_checks"],
                             "rules": rules})
        routes = []
        for r in a["routes"]:
            rr = {"id": r["id"], "network_id": r["net_id"], "description": r["description"], "enabled": r["enabled"],
                  "network_type": {1: "IPv4", 2: "IPv6", 3: "Domain"}[r["network_type"]],
                  "masquerade": r["masquerade"], "metric": r["metric"], "groups": r["groups"],
                  "keep_route": r["keep_route"]}
            if r["network"]:
                rr["network"] = r["network"]
            if r["domains"]:
                rr["domains"] = r["domains"]
            if r["peer"]:
                rr["peer"] = r["peer"]
            if r["peer_groups"]:
                rr["peer_groups"] = r["peer_groups"]
            if r["access_control_groups"]:
                rr["access_control_groups"] = r["access_control_groups"]
            routes.append(rr)
        keys = []
        now = datetime.datetime.now(datetime.timezone.utc)
        for k in a["setup_keys"]:
            expired = k["expires_at"] is not None and k["expires_at"] < now
            limit = 1 if k["type"] == "one-off" else k["usage_limit"]
            over = limit > 0 and k["used_times"] >= limit
            state = "expired" if expired else "revoked" if k["revoked"] else "overused" if over else "valid"
            keys.append({"id": k["id"], "name": k["name"], "type": k["type"], "key": nbstore.hidden_key(k["plain"]),
                         "revoked": k["revoked"], "used_times": k["used_times"], "state": state,
                         "valid": state == "valid", "auto_groups": k["auto_groups"],
                         "usage_limit": k["usage_limit"], "ephemeral": k["ephemeral"],
                         "allow_extra_dns_labels": k["allow_extra_dns_labels"],
                         "expires": _rfc3339(k["expires_at"])})
        users = []
        for u in a["users"]:
            d = {"id": u["id"], "role": u["role"], "auto_groups": u["auto_groups"],
                 "is_service_user": u["is_service_user"], "is_blocked": u["blocked"], "issued": u["issued"]}
            if u["is_service_user"]:
                d["name"] = u["service_user_name"]
            elif u["name"] or u["email"]:
                d["name"], d["email"] = u["name"], u["email"]
            if u["blocked"]:
                d["status"] = "blocked"
            users.append(d)
        nets, resources, routers = [], {}, {}
        for nw in a["networks"]:
            nets.append({"id": nw["id"], "name": nw["name"], "description": nw["description"],
                         "resources": [r["id"] for r in nw["resources"]],
                         "routers": [r["id"] for r in nw["routers"]]})
            resources[nw["id"]] = [{"id": r["id"], "name": r["name"], "description": r["description"],
                                    "type": r["type"], "address": r["address"], "enabled": r["enabled"],
                                    "groups": gmin(r["groups"])} for r in nw["resources"]]
            routers[nw["id"]] = [{"id": r["id"], "peer": r["peer"], "peer_groups": r["peer_groups"],
                                  "masquerade": r["masquerade"], "metric": r["metric"], "enabled": r["enabled"]}
                                 for r in nw["routers"]]
        view = {
            "/api/accounts": [{"id": a["id"], "domain": a["domain"], "domain_category": a["domain_category"],
                               "created_by": a["created_by"], "settings": {
                                   "peer_login_expiration_enabled": a["settings"]["peer_login_expiration_enabled"],
                                   "peer_login_expiration": a["settings"]["peer_login_expiration"] // 10 ** 9,
                                   "regular_users_view_blocked": a["settings"]["regular_users_view_blocked"],
                                   "groups_propagation_enabled": a["settings"]["groups_propagation_enabled"],
                                   "jwt_groups_enabled": a["settings"]["jwt_groups_enabled"],
                                   "jwt_groups_claim_name": a["settings"]["jwt_groups_claim_name"],
                                   "jwt_allow_groups": a["settings"]["jwt_allow_groups"],
                                   "extra": {"peer_approval_enabled": a["settings"]["peer_approval_enabled"]}}}],
            "/api/peers": peers, "/api/groups": groups, "/api/policies": policies, "/api/routes": routes,
            "/api/setup-keys": keys, "/api/users": users,
            "/api/posture-checks": [{"id": c["id"], "name": c["name"], "description": c["description"],
                                     "checks": _posture_api(c["checks"])} for c in a["posture_checks"]],
            "/api/networks": nets,
            "/api/dns/nameservers": [{"id": n["id"], "name": n["name"], "description": n["description"],
                                      "nameservers": n["nameservers"], "groups": n["groups"],
                                      "primary": n["primary"], "domains": n["domains"], "enabled": n["enabled"],
                                      "search_domains_enabled": n["search_domains_enabled"]}
                                     for n in a["nameserver_groups"]],
            "/api/dns/settings": {"disabled_management_groups": a["dns"]["disabled_management_groups"]},
        }
        for nid in resources:
            view["/api/networks/%s/resources" % nid] = resources[nid]
            view["/api/networks/%s/routers" % nid] = routers[nid]
        if a["settings"]["peer_inactivity_expiration_enabled"] or a["settings"]["peer_inactivity_expiration"]:
            s = view["/api/accounts"][0]["settings"]
            s["peer_inactivity_expiration_enabled"] = a["settings"]["peer_inactivity_expiration_enabled"]
            s["peer_inactivity_expiration"] = a["settings"]["peer_inactivity_expiration"] // 10 ** 9
        out[a["id"]] = view
    return out


def expected_events(data=None):
    """What NetBird's GET /api/events shows per account, oldest first:
    {account_id: [{"timestamp", "activity_code", "initiator_id",
    "target_id", "meta"}]}, without ids (an import may renumber them):
    sort the API's answer by timestamp and compare with assert_subset().
    A deleted user's event shows the email and name NetBird kept in
    deleted_users as meta "email" and "username"."""
    data = data if data is not None else nbstore.dataset()
    out = {}
    for a in data["accounts"]:
        gone = {uid: (email, name) for uid, email, name in nbstore.deleted_users({"accounts": [a]})}
        events = []
        for e in sorted(a["events"], key=lambda e: e["timestamp"]):
            ev = {"timestamp": _rfc3339(e["timestamp"]), "activity_code": _EVENT_CODES[e["activity"]],
                  "initiator_id": e["initiator_id"], "target_id": e["target_id"]}
            meta = {k: v for k, v in e["meta"].items() if k not in ("email", "name") or e["target_id"] not in gone}
            if e["target_id"] in gone:
                meta["email"], meta["username"] = gone[e["target_id"]]
            # the API prints every meta value with Go's %v: numbers from
            # JSON come out as floats (2.950159e+06), so only strings here
            ev["meta"] = {k: v for k, v in meta.items() if isinstance(v, str)}
            events.append(ev)
        out[a["id"]] = events
    return out


def expected_zones(data=None):
    """Custom DNS zones (NetBird v0.6x+, internals/modules/zones) per
    account: {account_id: {"/api/dns/zones": [...],
    "/api/dns/zones/<id>/records": [...]}}. Apart from expected_rest()
    so loops over that one do not change; empty for versions without
    zones (data_for() drops them)."""
    data = data if data is not None else nbstore.dataset()
    out = {}
    for a in data["accounts"]:
        view = {"/api/dns/zones": []}
        for z in a["zones"]:
            recs = [{"id": r["id"], "name": r["name"], "type": r["type"], "content": r["content"], "ttl": r["ttl"]}
                    for r in z["records"]]
            view["/api/dns/zones"].append({"id": z["id"], "name": z["name"], "domain": z["domain"],
                                           "enabled": z["enabled"], "enable_search_domain": z["enable_search_domain"],
                                           "distribution_groups": z["distribution_groups"], "records": recs})
            view["/api/dns/zones/%s/records" % z["id"]] = recs
        out[a["id"]] = view
    return out


def subset_diff(actual, expected, path=""):
    """[differences] where expected is not a subset of actual. Dicts:
    every expected key must match; lists of dicts with "id": matched by
    id, order ignored, no extra or missing ids; lists of other dicts:
    item by item in order, same length; other lists: equal as sorted
    lists of their JSON."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return ["%s: expected an object, got %r" % (path, actual)]
        diffs = []
        for k, v in expected.items():
            if k not in actual:
                diffs.append("%s.%s: missing (expected %r)" % (path, k, v))
            else:
                diffs += subset_diff(actual[k], v, path + "." + k)
        return diffs
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return ["%s: expected a list, got %r" % (path, actual)]
        if expected and all(isinstance(x, dict) and "id" in x for x in expected):
            got = {x.get("id"): x for x in actual if isinstance(x, dict)}
            diffs = []
            for x in expected:
                if x["id"] not in got:
                    diffs.append("%s[%s]: missing" % (path, x["id"]))
                else:
                    diffs += subset_diff(got[x["id"]], x, "%s[%s]" % (path, x["id"]))
            extra = set(got) - {x["id"] for x in expected}
            if extra:
                diffs.append("%s: unexpected ids %s" % (path, sorted(extra)))
            return diffs
        if expected and all(isinstance(x, dict) for x in expected):
            if len(actual) != len(expected):
                return ["%s: %d items, expected %d" % (path, len(actual), len(expected))]
            diffs = []
            for i, (a, x) in enumerate(zip(actual, expected)):
                diffs += subset_diff(a, x, "%s[%d]" % (path, i))
            return diffs
        key = lambda x: json.dumps(x, sort_keys=True)
        if sorted(map(key, actual)) != sorted(map(key, expected)):
            return ["%s: %r != expected %r" % (path, actual, expected)]
        return []
    if actual != expected:
        return ["%s: %r != expected %r" % (path, actual, expected)]
    return []


def assert_subset(actual, expected, what=""):
    d = subset_diff(actual, expected, what)
    assert not d, "\n".join(d[:20])
