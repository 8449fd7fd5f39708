"""/api/groups against the real server: CRUD, validation, the "All" group,
deletion of a group still in use, events and serial bumps."""

import apifix
from apifix import svc

test = svc.test


@test
def groups_crud():
    dep, srv, api = apifix.start()
    groups = api.ok("GET", "/api/groups")
    assert [g["name"] for g in groups] == ["All"], groups
    serial0 = dep.network_serial()

    g = api.ok("POST", "/api/groups", {"name": "devs"})
    assert g["name"] == "devs" and g["issued"] == "api", g
    assert g["peers"] == [] and g["peers_count"] == 0 and g["resources"] == [], g
    assert dep.network_serial() == serial0 + 1

    assert api.ok("GET", "/api/groups/" + g["id"]) == g
    names = [x["name"] for x in api.ok("GET", "/api/groups")]
    assert names == ["All", "devs"], names

    g2 = api.ok("PUT", "/api/groups/" + g["id"], {"name": "developers"})
    assert g2["id"] == g["id"] and g2["name"] == "developers", g2
    assert dep.network_serial() == serial0 + 2

    assert api.ok("DELETE", "/api/groups/" + g["id"]) == {}
    api.error("GET", "/api/groups/" + g["id"], 404, message="not found")
    acts = [r[0] for r in dep.sql("SELECT activity FROM events WHERE target_id = %s ORDER BY id", (g["id"],))]
    assert acts == [16, 17, 48], acts      # created, updated, deleted


@test
def group_members_are_peers_of_the_account():
    dep, srv, api = apifix.start()
    a = dep.agent()
    a.register(dep.setup_key)
    peer = dep.peers()[a.pub_b64]
    pid = peer["id"]
    g = api.ok("POST", "/api/groups", {"name": "one", "peers": [pid]})
    assert peer["name"] and g["peers_count"] == 1 and g["peers"] == [{"id": pid, "name": peer["name"]}], g
    assert "one" in dep.peer_groups(pid)
    # One GroupAddedToPeer event for the peer.
    rows = dep.sql("SELECT meta->>'group' FROM events WHERE activity = 18 AND target_id = %s", (pid,))
    assert rows == [("one",)], rows
    # Replacing the member list with nothing removes the peer.
    g = api.ok("PUT", "/api/groups/" + g["id"], {"name": "one"})
    assert g["peers_count"] == 0, g
    assert "one" not in dep.peer_groups(pid)
    api.error("POST", "/api/groups", 422, {"name": "x", "peers": ["no-such-peer"]},
              message="peer with id no-such-peer not found")


@test
def group_validation():
    dep, srv, api = apifix.start()
    serial0 = dep.network_serial()
    api.error("POST", "/api/groups", 400, raw="{not json", message="couldn't parse JSON request")
    api.error("POST", "/api/groups", 400, raw="[1,2]")
    api.error("POST", "/api/groups", 400, {"name": 7})
    api.error("POST", "/api/groups", 400, {"name": "x", "peers": "p1"})
    api.error("POST", "/api/groups", 422, {"name": ""}, message="group name shouldn't be empty")
    api.error("POST", "/api/groups", 422, {"peers": []}, message="group name shouldn't be empty")
    dup = api.ok("POST", "/api/groups", {"name": "dup"})
    api.error("POST", "/api/groups", 409, {"name": "dup"}, message="group with name dup already exists")
    # A rename onto a taken name, "All" included, is refused too.
    other = api.ok("POST", "/api/groups", {"name": "other"})
    api.error("PUT", "/api/groups/" + other["id"], 409, {"name": "dup"}, message="group with name dup already exists")
    api.error("PUT", "/api/groups/" + other["id"], 409, {"name": "All"}, message="group with name all already exists")
    # Keeping its own name is no conflict.
    api.ok("PUT", "/api/groups/" + dup["id"], {"name": "dup"})
    api.error("PUT", "/api/groups/nope", 404, {"name": "x"})
    api.error("DELETE", "/api/groups/nope", 404)
    # The first unknown peer named is the first in the request.
    api.error("POST", "/api/groups", 422, {"name": "x", "peers": ["zz-missing", "aa-missing"]},
              message="peer with id zz-missing not found")
    # Nothing half-written: two groups created, one renamed onto itself.
    assert sorted(g["name"] for g in api.ok("GET", "/api/groups")) == ["All", "dup", "other"]
    assert dep.network_serial() == serial0 + 3


@test
def the_all_group_is_fixed():
    dep, srv, api = apifix.start()
    all_id = api.ok("GET", "/api/groups")[0]["id"]
    api.error("PUT", "/api/groups/" + all_id, 422, {"name": "Everyone"}, message="updating group all is not allowed")
    api.error("DELETE", "/api/groups/" + all_id, 422, message="deleting group all is not allowed")


@test
def group_in_use_cannot_be_deleted():
    dep, srv, api = apifix.start()
    g = api.ok("POST", "/api/groups", {"name": "keyed"})
    dep.add_setup_key(auto_groups=[g["id"]])
    b = api.error("DELETE", "/api/groups/" + g["id"], 400, message="group has been linked to setup key")
    assert api.ok("GET", "/api/groups/" + g["id"])["name"] == "keyed", b


if __name__ == "__main__":
    apifix.run_tests()
