#!/usr/bin/env python3
"""tests/bench/shape.py: NetBird's benchmark shapes written into our
PostgreSQL for one account, for end-to-end benchmarks (tests/bench/bench-e2e).

    shape.py --dsn DSN --account ID --peers P --groups G [--routes]
             [--keys-file F] [--prune]

The shape is NetBird's setupTestAccountManager(peers, groups)
(docs/targets.md), the same tests/bench/bench-netmap.c builds in-process
(read its fill(); this mirrors it): P + G peers of the account, taken in
the order of their overlay IP, or with --keys-file in the order of a
netbird-load keys file (its first P + G registered lines, matched by
hostname: then `netbird-load --peers P+G --keys-file F` holds exactly the
shape's peers); the first P split
into G groups of consecutive peers (group g holds peers
[g*P/G, (g+1)*P/G)), each group plus one extra routing peer (peer P + g);
one bidirectional ALL policy per group on itself; every other policy of
the account removed (the default "All" policy goes; the All group stays,
holding everyone); then, NetBird's full shape (the default), per group a
network with that routing peer as its only router (metric 9999, no
masquerade), one host resource 10.(g>>8).(g&255).1/32 named "Network
resource for Group g" and a bidirectional ALL resource policy from the
group to that resource; or, with --routes (the previous shape), one route
per group (10.(g>>8).(g&255).0/24, masquerade, metric 9999) served by the
routing peer and distributed to the group. Plus one posture check
"PostureChecksAll" ({"nb_version_check": {"min_version": "0.0.1"}}) that no
policy names.

The peers must exist: register P + G of them first, e.g. with netbird-load
(`--setup-key KEY --peers P+G --no-sync --keys-file F`; 5,200 peers take
~8 s here), then hold their streams with `--sync-only --keys-file F`.
netbird-load's agents report NetBird 0.60.0 with the source-prefix
capability, as bench-netmap's peers; they carry no SSH key (bench-netmap's
do: a few bytes per remote peer more there).

Everything is one transaction, scoped to the account, and re-runnable: the
account's groups other than All, its policies, networks, routes and
posture checks are replaced. --prune deletes the account's other peers
(so the account holds exactly P + G, as NetBird's). The account's network_serial is bumped the
way the store does (UPDATE ... network_serial + 1), so replicas rebuild on
their next read: streams opened after this see the shape; streams already
held see it at the next change or bus hint (make a change through the
REST API, or publish a hint). Prints one line: the serial and the counts.

Ids are "<account>-g0001" etc. (ids are global primary keys). Exit 0 on
success, 1 with a message on stderr otherwise (too few peers, no account).
"""

import argparse
import json
import sys

import psycopg2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--account", required=True)
    ap.add_argument("--peers", type=int, required=True)
    ap.add_argument("--groups", type=int, required=True)
    ap.add_argument("--routes", action="store_true", help="the previous shape: a route per group, no networks")
    ap.add_argument("--keys-file", help="take the peers in this netbird-load keys file's order (by hostname)")
    ap.add_argument("--prune", action="store_true", help="delete the account's peers outside the shape")
    a = ap.parse_args()
    if a.peers < 1 or a.groups < 1 or a.groups > a.peers:
        sys.exit("shape.py: need 1 <= --groups <= --peers")

    conn = psycopg2.connect(a.dsn)
    try:
        with conn:
            with conn.cursor() as cur:
                print(build(cur, a.account, a.peers, a.groups, not a.routes, hostnames(a.keys_file), a.prune))
    except ShapeError as e:
        sys.exit("shape.py: %s" % e)
    finally:
        conn.close()


class ShapeError(Exception):
    pass


def hostnames(path):
    """The hostnames of a netbird-load keys file's registered peers, in
    its order; None without a file."""
    if not path:
        return None
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and not line.startswith("#") and parts[2] == "1":
                out.append(parts[1])
    return out


def build(cur, acct, n_peers, n_groups, networks, hosts=None, prune=False):
    cur.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (acct,))
    if cur.fetchone() is None:
        raise ShapeError("no account %s" % acct)
    total = n_peers + n_groups
    if hosts is None:
        cur.execute("SELECT id FROM peers WHERE account_id = %s ORDER BY ip LIMIT %s", (acct, total))
        peers = [r[0] for r in cur.fetchall()]
    else:
        cur.execute("SELECT meta_hostname, id FROM peers WHERE account_id = %s AND meta_hostname = ANY(%s)",
                    (acct, hosts[:total]))
        by_host = dict(cur.fetchall())
        peers = [by_host[h] for h in hosts[:total] if h in by_host]
    if len(peers) < total:
        raise ShapeError("the account has %d peers; the shape needs %d (%d + %d routing peers)"
                         % (len(peers), total, n_peers, n_groups))

    if prune:
        cur.execute("DELETE FROM peers WHERE account_id = %s AND NOT id = ANY(%s)", (acct, peers))
    # Replace what a previous shape (or bootstrap) left.
    for table in ("policies", "routes", "networks", "posture_checks"):
        cur.execute("DELETE FROM %s WHERE account_id = %%s" % table, (acct,))
    cur.execute("DELETE FROM groups WHERE account_id = %s AND name <> 'All'", (acct,))
    cur.execute("SELECT id FROM groups WHERE account_id = %s AND name = 'All'", (acct,))
    row = cur.fetchone()
    if row is None:
        raise ShapeError("the account has no All group")
    all_id = row[0]
    cur.execute("INSERT INTO group_peers (account_id, group_id, peer_id)"
                " SELECT %s, %s, unnest(%s::text[]) ON CONFLICT DO NOTHING", (acct, all_id, peers))

    groups, members, policies, rules = [], [], [], []
    nets, resources, routers, routes = [], [], [], []
    for g in range(n_groups):
        lo, hi = g * n_peers // n_groups, (g + 1) * n_peers // n_groups
        router = peers[n_peers + g]
        gid = "%s-g%04d" % (acct, g)
        groups.append((gid, acct, "group%04d" % g))
        members += [(acct, gid, p) for p in peers[lo:hi]] + [(acct, gid, router)]
        pid = "%s-p%04d" % (acct, g)
        policies.append((pid, acct, "policy%04d" % g))
        rules.append(("%s-r%04d" % (acct, g), pid, acct, "rule%04d" % g, [gid], [gid], None, None))
        if networks:
            nid, resid = "%s-n%04d" % (acct, g), "%s-res%04d" % (acct, g)
            nets.append((nid, acct, "network%04d" % g))
            resources.append((resid, nid, acct, "Network resource for Group %d" % g,
                              "10.%d.%d.1/32" % (g >> 8, g & 255)))
            routers.append(("%s-rt%04d" % (acct, g), nid, acct, router))
            npid = "%s-pnr%04d" % (acct, g)
            policies.append((npid, acct, "policy-nr%04d" % g))
            rules.append(("%s-rnr%04d" % (acct, g), npid, acct, "rule-nr%04d" % g, [gid], [], resid, "host"))
        else:
            routes.append(("%s-route%04d" % (acct, g), acct, "10.%d.%d.0/24" % (g >> 8, g & 255),
                           "route%04d" % g, router, [gid]))

    ins(cur, "groups (id, account_id, name)", groups)
    ins(cur, "group_peers (account_id, group_id, peer_id)", members)
    ins(cur, "policies (id, account_id, name)", policies)
    ins(cur, "policy_rules (id, policy_id, account_id, name, sources, destinations, destination_resource_id,"
             " destination_resource_type, enabled, action, bidirectional, protocol)", rules,
        extra="true, 'accept', true, 'all'")
    if networks:
        ins(cur, "networks (id, account_id, name)", nets)
        ins(cur, "network_resources (id, network_id, account_id, name, prefix, type, enabled)", resources,
            extra="'host', true")
        ins(cur, "network_routers (id, network_id, account_id, peer, masquerade, metric, enabled)", routers,
            extra="false, 9999, true")
    else:
        route_cols(cur)
        ins(cur, "routes (id, account_id, network, net_id, peer, groups, network_type, metric, masquerade,"
                 " enabled)", routes, extra="1, 9999, true, true")
    cur.execute("INSERT INTO posture_checks (id, account_id, name, checks) VALUES (%s, %s, %s, %s)",
                ("%s-pc" % acct, acct, "PostureChecksAll",
                 json.dumps({"nb_version_check": {"min_version": "0.0.1"}})))
    cur.execute("UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s RETURNING network_serial",
                (acct,))
    serial = cur.fetchone()[0]
    return ("shape %s: account %s, %d peers + %d routing peers, %d groups (+ All), %d policies, %s; serial %d"
            % ("%d/%d" % (n_peers, n_groups), acct, n_peers, n_groups, n_groups, len(policies),
               "%d networks with a router and a host resource each" % len(nets) if networks
               else "%d routes" % len(routes), serial))


def ins(cur, target, rows, extra=None):
    """INSERT rows (tuples) into target "table (cols...)", in batches; extra:
    SQL constants for the trailing columns that rows do not carry."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ", ".join(["%s"] * width) + (", " + extra if extra else "") + ")"
    for i in range(0, len(rows), 1000):
        batch = rows[i:i + 1000]
        sql = "INSERT INTO " + target + " VALUES " + ", ".join([one] * len(batch))
        cur.execute(sql, [v for r in batch for v in r])


def route_cols(cur):
    """The routes table's columns this writes must exist (0001_init.sql)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'routes'")
    have = {r[0] for r in cur.fetchall()}
    need = {"id", "account_id", "network", "net_id", "peer", "groups", "network_type", "metric", "masquerade",
            "enabled"}
    if not need <= have:
        raise ShapeError("routes lacks %s" % sorted(need - have))


if __name__ == "__main__":
    main()
