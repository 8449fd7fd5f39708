/*
 * Networks through cp/store-snapshot.h and cp_netmap_load(): networks,
 * network_resources (host, subnet, domain, disabled), network_routers (a
 * peer, peer groups, disabled), group_resources and a rule with a
 * destination resource, written with SQL, loaded, encoded and decoded.
 * Another account's network rows must not leak in. NetBird's full
 * 5000/200 shape (a network, router, host resource and resource policy
 * per group) times the load.
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cp/store-snapshot.h"
#include "cp/util.h"
#include "cptest.h"
#include "management.pb-c.h"
#include "testdb.h"

static void exec(cptest_db *db, const char *sql) {
        free(cptest_db_query(db, sql, 0, NULL));
}

static void fill(cptest_db *db) {
        exec(db, "INSERT INTO accounts (id, network_net, network_serial) VALUES"
                 " ('acc-a', '100.70.0.0/16', 5), ('acc-b', '100.71.0.0/16', 1)");
        exec(db, "INSERT INTO peers (id, account_id, key, ip, dns_label, meta_wt_version) VALUES"
                 " ('src', 'acc-a', 'kS', '100.70.0.1', 'src', '0.60.0'),"
                 " ('ra', 'acc-a', 'kRA', '100.70.0.2', 'ra', '0.60.0'),"
                 " ('rb', 'acc-a', 'kRB', '100.70.0.3', 'rb', '0.60.0'),"
                 " ('rc', 'acc-a', 'kRC', '100.70.0.4', 'rc', '0.60.0'),"
                 " ('pb', 'acc-b', 'kPB', '100.71.0.1', 'pb', '0.60.0')");
        exec(db, "INSERT INTO groups (id, account_id, name) VALUES ('g-src', 'acc-a', 'src'),"
                 " ('g-rt', 'acc-a', 'routers'), ('g-res', 'acc-a', 'resources'), ('gb', 'acc-b', 'b')");
        exec(db, "INSERT INTO group_peers (account_id, group_id, peer_id) VALUES"
                 " ('acc-a', 'g-src', 'src'), ('acc-a', 'g-rt', 'rb'), ('acc-b', 'gb', 'pb')");
        exec(db, "INSERT INTO networks (id, account_id, name) VALUES ('n1', 'acc-a', 'office'),"
                 " ('nb', 'acc-b', 'other')");
        exec(db, "INSERT INTO network_resources (id, network_id, account_id, name, type, prefix, domain, enabled)"
                 " VALUES ('r-host', 'n1', 'acc-a', 'host', 'host', '10.0.0.9/32', '', true),"
                 " ('r-sub', 'n1', 'acc-a', 'sub', 'subnet', '10.1.0.0/16', '', true),"
                 " ('r-dom', 'n1', 'acc-a', 'dom', 'domain', NULL, 'intra.example', true),"
                 " ('r-off', 'n1', 'acc-a', 'off', 'host', '10.0.0.10/32', '', false),"
                 " ('r-b', 'nb', 'acc-b', 'bres', 'host', '10.9.9.9/32', '', true)");
        exec(db, "INSERT INTO group_resources (account_id, group_id, resource_id, resource_type) VALUES"
                 " ('acc-a', 'g-res', 'r-host', 'host'), ('acc-a', 'g-res', 'r-sub', 'subnet'),"
                 " ('acc-a', 'g-res', 'r-off', 'host')");
        exec(db, "INSERT INTO network_routers (id, network_id, account_id, peer, peer_groups, metric, masquerade,"
                 " enabled) VALUES ('rt-a', 'n1', 'acc-a', 'ra', '{}', 100, true, true),"
                 " ('rt-b', 'n1', 'acc-a', NULL, '{g-rt}', 200, false, true),"
                 " ('rt-c', 'n1', 'acc-a', 'rc', '{}', 300, false, false),"
                 " ('rt-x', 'nb', 'acc-b', 'pb', '{}', 1, false, true)");
        exec(db, "INSERT INTO policies (id, account_id, name, enabled) VALUES"
                 " ('pol-res', 'acc-a', 'res', true), ('pol-dom', 'acc-a', 'dom', true)");
        exec(db, "INSERT INTO policy_rules (id, policy_id, account_id, protocol, sources, destinations, ports,"
                 " destination_resource_id, destination_resource_type) VALUES"
                 " ('rule-res', 'pol-res', 'acc-a', 'tcp', '{g-src}', '{g-res}', '{22}', NULL, NULL),"
                 " ('rule-dom', 'pol-dom', 'acc-a', 'all', '{g-src}', '{}', '{}', 'r-dom', 'domain')");
}

static Management__SyncResponse *map_of(cp_netmap_account *a, const char *peer_id) {
        cp_netmap_worker *w = cp_netmap_worker_new();
        const uint8_t *d;
        size_t n;
        int64_t idx = cp_netmap_account_find_peer(a, peer_id);

        ASSERT_TRUE(idx >= 0);
        ASSERT_OK(cp_netmap_encode_sync(w, a, (size_t) idx, NULL, &d, &n, NULL), NULL);
        Management__SyncResponse *sr = management__sync_response__unpack(NULL, n, d);
        ASSERT_TRUE(sr != NULL);
        cp_netmap_worker_free(w);
        return sr;
}

static const Management__Route *route(const Management__NetworkMap *nm, const char *id) {
        for (size_t i = 0; i < nm->n_routes; i++)
                if (strcmp(nm->routes[i]->id, id) == 0)
                        return nm->routes[i];
        return NULL;
}

/* A sink that counts the network rows of the account. */
typedef struct counts {
        int networks, resources, routers, group_resources;
} counts;

static int c_net(void *ud, const char *id, const char *name, cp_error *e) {
        ((counts *) ud)->networks++;
        ASSERT_STREQ("n1", id);
        ASSERT_STREQ("office", name);
        return 0;
}

static int c_res(void *ud, const cp_store_snap_network_resource *r, cp_error *e) {
        ((counts *) ud)->resources++;
        if (strcmp(r->id, "r-dom") == 0) {
                ASSERT_TRUE(r->prefix == NULL);
                ASSERT_STREQ("intra.example", r->domain);
                ASSERT_STREQ("domain", r->type);
        } else if (strcmp(r->id, "r-host") == 0) {
                ASSERT_STREQ("10.0.0.9/32", r->prefix);
                ASSERT_STREQ("n1", r->network_id);
                ASSERT_TRUE(r->enabled);
        }
        return 0;
}

static int c_router(void *ud, const cp_store_snap_network_router *r, cp_error *e) {
        ((counts *) ud)->routers++;
        if (strcmp(r->id, "rt-b") == 0) {
                ASSERT_TRUE(r->peer == NULL);
                ASSERT_EQ(1, r->n_peer_groups);
                ASSERT_STREQ("g-rt", r->peer_groups[0]);
                ASSERT_EQ(200, r->metric);
        }
        return 0;
}

static int c_gr(void *ud, const char *g, const char *r, cp_error *e) {
        ((counts *) ud)->group_resources++;
        ASSERT_STREQ("g-res", g);
        return 0;
}

TEST(snapshot_reads_network_rows_of_the_account_only) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_error err = { 0 };
        counts c = { 0 };
        cp_store_snapshot_sink sink = {
                .network = c_net, .network_resource = c_res, .network_router = c_router, .group_resource = c_gr,
        };

        fill(db);
        ASSERT_OK(cp_store_snapshot_load(s, "acc-a", &sink, &c, &err), &err);
        ASSERT_EQ(1, c.networks);
        ASSERT_EQ(4, c.resources);
        ASSERT_EQ(3, c.routers);
        ASSERT_EQ(3, c.group_resources);
        cp_store_free(s);
        cptest_db_free(db);
}

TEST(snapshot_load_builds_network_routes) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };

        fill(db);
        ASSERT_OK(cp_netmap_load(s, "acc-a", "netbird.selfhosted", &a, &err), &err);

        /* the source: each enabled resource through ra and rb (rt-c is
         * disabled, r-off too) */
        Management__SyncResponse *sr = map_of(a, "src");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(6, nm->n_routes);
        const Management__Route *r = route(nm, "r-host:ra");
        ASSERT_TRUE(r != NULL);
        ASSERT_STREQ("10.0.0.9/32", r->network);
        ASSERT_STREQ("kRA", r->peer);
        ASSERT_EQ(100, r->metric);
        ASSERT_TRUE(r->masquerade);
        ASSERT_STREQ("host", r->netid);
        r = route(nm, "r-sub:rb");
        ASSERT_TRUE(r != NULL);
        ASSERT_STREQ("10.1.0.0/16", r->network);
        ASSERT_EQ(200, r->metric);
        ASSERT_FALSE(r->masquerade);
        r = route(nm, "r-dom:rb");
        ASSERT_TRUE(r != NULL);
        ASSERT_EQ(3, r->networktype);
        ASSERT_STREQ("192.0.2.0/32", r->network);
        ASSERT_EQ(1, r->n_domains);
        ASSERT_STREQ("intra.example", r->domains[0]);
        ASSERT_TRUE(route(nm, "r-off:ra") == NULL);
        ASSERT_EQ(2, nm->n_remotepeers);
        management__sync_response__free_unpacked(sr, NULL);

        /* a router: its three routes, three rules (tcp/22 twice, all once) */
        sr = map_of(a, "rb");
        nm = sr->networkmap;
        ASSERT_EQ(3, nm->n_routes);
        ASSERT_EQ(3, nm->n_routesfirewallrules);
        for (size_t i = 0; i < 3; i++) {
                ASSERT_EQ(1, nm->routesfirewallrules[i]->n_sourceranges);
                ASSERT_STREQ("100.70.0.1/32", nm->routesfirewallrules[i]->sourceranges[0]);
        }
        ASSERT_EQ(1, nm->n_remotepeers);
        ASSERT_STREQ("kS", nm->remotepeers[0]->wgpubkey);
        management__sync_response__free_unpacked(sr, NULL);

        /* rc's router is disabled */
        sr = map_of(a, "rc");
        ASSERT_EQ(0, sr->networkmap->n_routes);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);

        /* an unknown resource type is reported, not half-loaded */
        exec(db, "ALTER TABLE network_resources DROP CONSTRAINT network_resources_type_check");
        exec(db, "UPDATE network_resources SET type = 'weird' WHERE id = 'r-host'");
        ASSERT_EQ(-EBADMSG, cp_netmap_load(s, "acc-a", "netbird.selfhosted", &a, &err));
        cp_error_clear(&err);
        cp_store_free(s);
        cptest_db_free(db);
}

/* NetBird's setupTestAccountManager(5000, 200) in SQL: groups of 25 plus
 * a routing peer, a self-mesh policy per group, and per group a network
 * routed by that peer, one host resource and a resource policy from the
 * group; everyone in All. Prints the load + precompute time. */
TEST(snapshot_load_5000_200_full_shape) {
        cp_store *s = NULL;
        cptest_db *db = cptest_db_new_migrated(1, &s);
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };

        exec(db, "INSERT INTO accounts (id, network_net, network_serial) VALUES ('big', '100.80.0.0/16', 3)");
        exec(db, "INSERT INTO peers (id, account_id, key, ip, dns_label, meta_wt_version, meta_capabilities)"
                 " SELECT 'bp' || lpad(i::text, 5, '0'), 'big', 'bkey' || i, '100.80.0.0'::inet + i + 1,"
                 " 'host-' || i, '0.60.0', '{1}' FROM generate_series(0, 5199) i");
        exec(db, "INSERT INTO groups (id, account_id, name) SELECT 'bg' || lpad(g::text, 3, '0'), 'big', 'g' || g"
                 " FROM generate_series(0, 199) g");
        exec(db, "INSERT INTO groups (id, account_id, name) VALUES ('ball', 'big', 'All')");
        exec(db, "INSERT INTO group_peers (account_id, group_id, peer_id)"
                 " SELECT 'big', 'bg' || lpad((i / 25)::text, 3, '0'), 'bp' || lpad(i::text, 5, '0')"
                 " FROM generate_series(0, 4999) i"
                 " UNION ALL SELECT 'big', 'bg' || lpad(g::text, 3, '0'), 'bp' || lpad((5000 + g)::text, 5, '0')"
                 " FROM generate_series(0, 199) g"
                 " UNION ALL SELECT 'big', 'ball', 'bp' || lpad(i::text, 5, '0') FROM generate_series(0, 5199) i");
        exec(db, "INSERT INTO policies (id, account_id, name) SELECT 'pol' || lpad(g::text, 3, '0'), 'big', 'p'"
                 " FROM generate_series(0, 199) g"
                 " UNION ALL SELECT 'polnr' || lpad(g::text, 3, '0'), 'big', 'nr' FROM generate_series(0, 199) g");
        exec(db, "INSERT INTO policy_rules (id, policy_id, account_id, bidirectional, sources, destinations,"
                 " destination_resource_id, destination_resource_type)"
                 " SELECT 'rule' || lpad(g::text, 3, '0'), 'pol' || lpad(g::text, 3, '0'), 'big', true,"
                 " ARRAY['bg' || lpad(g::text, 3, '0')], ARRAY['bg' || lpad(g::text, 3, '0')], NULL, NULL"
                 " FROM generate_series(0, 199) g"
                 " UNION ALL SELECT 'rulenr' || lpad(g::text, 3, '0'), 'polnr' || lpad(g::text, 3, '0'), 'big', true,"
                 " ARRAY['bg' || lpad(g::text, 3, '0')], '{}', 'res' || lpad(g::text, 3, '0'), 'host'"
                 " FROM generate_series(0, 199) g");
        exec(db, "INSERT INTO networks (id, account_id, name) SELECT 'net' || lpad(g::text, 3, '0'), 'big',"
                 " 'Network for Group ' || g FROM generate_series(0, 199) g");
        exec(db, "INSERT INTO network_routers (id, network_id, account_id, peer, metric)"
                 " SELECT 'rtr' || lpad(g::text, 3, '0'), 'net' || lpad(g::text, 3, '0'), 'big',"
                 " 'bp' || lpad((5000 + g)::text, 5, '0'), 9999 FROM generate_series(0, 199) g");
        exec(db, "INSERT INTO network_resources (id, network_id, account_id, name, type, prefix)"
                 " SELECT 'res' || lpad(g::text, 3, '0'), 'net' || lpad(g::text, 3, '0'), 'big',"
                 " 'Network resource for Group ' || g, 'host', ('10.' || (g / 256) || '.' || (g % 256) || '.1/32')::cidr"
                 " FROM generate_series(0, 199) g");
        exec(db, "ANALYZE");

        double best = 1e30;
        for (int run = 0; run < 3; run++) {
                double t0 = (double) cp_now_mono_ms();
                ASSERT_OK(cp_netmap_load(s, "big", "netbird.selfhosted", &a, &err), &err);
                double t = (double) cp_now_mono_ms() - t0;
                best = t < best ? t : best;
                if (run < 2)
                        a = cp_netmap_account_unref(a);
        }
        printf("# load + precompute of 5200 peers / 200 groups, full shape: best %.0f ms (of 3)\n", best);
        ASSERT_EQ(5200, cp_netmap_account_n_peers(a));
        Management__SyncResponse *sr = map_of(a, "bp00000");
        ASSERT_EQ(25, sr->networkmap->n_remotepeers);
        ASSERT_EQ(50, sr->networkmap->n_firewallrules);
        ASSERT_EQ(1, sr->networkmap->n_routes);
        ASSERT_STREQ("res000:bp05000", sr->networkmap->routes[0]->id);
        management__sync_response__free_unpacked(sr, NULL);
        sr = map_of(a, "bp05000");
        ASSERT_EQ(1, sr->networkmap->n_routes);
        ASSERT_EQ(1, sr->networkmap->n_routesfirewallrules);
        ASSERT_EQ(25, sr->networkmap->routesfirewallrules[0]->n_sourceranges);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
        cp_store_free(s);
        cptest_db_free(db);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
