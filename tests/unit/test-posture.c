/*
 * Posture checks: NetBird's verdicts (management/server/posture *_test.go
 * facts) on hand-made peers (cp/posture.h), and in the network map: a
 * policy's source peers filtered by its checks, destinations untouched,
 * and SyncResponse.Checks carrying the process paths to the source-group
 * peers (expected maps written by hand).
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cp/posture.h"
#include "cptest.h"
#include "nmtest.h"
#include "management.pb-c.h"

#include <jansson.h>

/* FirewallRule.PeerIP is deprecated in the schema but still sent. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

static json_t *J(const char *text) {
        json_error_t e;
        json_t *j = json_loads(text, 0, &e);
        if (!j)
                fprintf(stderr, "bad test JSON: %s\n", e.text);
        ASSERT_TRUE(j != NULL);
        return j;
}

static bool verdict(const char *checks, const cp_posture_peer *p) {
        json_t *j = J(checks);
        bool ok = cp_posture_check_peer(j, p);
        json_decref(j);
        return ok;
}

static cp_posture_peer P(const char *os, const char *wt) {
        return (cp_posture_peer) { .wt_version = wt, .go_os = os, .os_version = "", .kernel_version = "",
                                   .connection_ip = "", .country_code = "", .city_name = "" };
}

TEST(go_version_rules) {
        ASSERT_TRUE(cp_posture_version_valid("1.2.3"));
        ASSERT_TRUE(cp_posture_version_valid("v1.2"));
        ASSERT_TRUE(cp_posture_version_valid("10"));
        ASSERT_TRUE(cp_posture_version_valid("1.2.3-rc.1+build.5"));
        ASSERT_TRUE(cp_posture_version_valid("1.2.3beta"));
        ASSERT_TRUE(!cp_posture_version_valid(""));
        ASSERT_TRUE(!cp_posture_version_valid("1..2"));
        ASSERT_TRUE(!cp_posture_version_valid("x1.2"));
        ASSERT_TRUE(!cp_posture_version_valid("development"));
        ASSERT_TRUE(!cp_posture_version_valid("99999999999999999999"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.2.3", "1.2.3"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.2", "1.2.0"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.10.0", "1.9.9"));
        ASSERT_EQ(0, cp_posture_version_at_least("1.2.2", "1.2.3"));
        /* go-version: a prerelease meets ">= min" only against a prerelease
         * of the same segments */
        ASSERT_EQ(0, cp_posture_version_at_least("1.3.0-beta", "1.2.0"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.2.0-beta", "1.2.0-alpha"));
        ASSERT_EQ(0, cp_posture_version_at_least("1.2.0-alpha", "1.2.0-beta"));
        ASSERT_EQ(0, cp_posture_version_at_least("1.2.1-beta", "1.2.0-alpha"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.2.0", "1.2.0-alpha"));
        ASSERT_EQ(1, cp_posture_version_at_least("1.2.0-rc.10", "1.2.0-rc.9"));
        ASSERT_EQ(-1, cp_posture_version_at_least("dev", "1.0.0"));
}

TEST(nb_version_check) {
        const char *c = "{\"nb_version_check\": {\"min_version\": \"0.25.0\"}}";
        cp_posture_peer p = P("linux", "0.25.0");
        ASSERT_TRUE(verdict(c, &p));
        p.wt_version = "0.24.9";
        ASSERT_TRUE(!verdict(c, &p));
        /* NetBird cuts both at '-' first: a dev build of a newer version passes */
        p.wt_version = "0.26.0-dev";
        ASSERT_TRUE(verdict(c, &p));
        p.wt_version = "development";
        ASSERT_TRUE(!verdict(c, &p));
        p.wt_version = "";
        ASSERT_TRUE(!verdict(c, &p));
        ASSERT_TRUE(verdict("{}", &p));
}

TEST(os_version_check) {
        const char *c = "{\"os_version_check\": {\"android\": {\"min_version\": \"13\"},"
                        " \"linux\": {\"min_kernel_version\": \"6.0.0\"},"
                        " \"windows\": {\"min_kernel_version\": \"10.0.14393\"}}}";
        cp_posture_peer p = P("android", "0.60.0");
        p.os_version = "13";
        ASSERT_TRUE(verdict(c, &p));
        p.os_version = "12.1";
        ASSERT_TRUE(!verdict(c, &p));
        p = P("linux", "0.60.0");
        p.kernel_version = "6.5.11-linuxkit";      /* cut at '-' */
        ASSERT_TRUE(verdict(c, &p));
        p.kernel_version = "5.15.0-91-generic";
        ASSERT_TRUE(!verdict(c, &p));
        p = P("windows", "0.60.0");
        p.kernel_version = "10.0.14393";
        ASSERT_TRUE(verdict(c, &p));
        p.kernel_version = "10.0.10240";
        ASSERT_TRUE(!verdict(c, &p));
        /* an OS the check names nothing for is refused; one NetBird does
         * not know passes */
        p = P("ios", "0.60.0");
        p.os_version = "17.0";
        ASSERT_TRUE(!verdict(c, &p));
        p = P("darwin", "0.60.0");
        p.os_version = "14.2";
        ASSERT_TRUE(!verdict(c, &p));
        p = P("freebsd", "0.60.0");
        ASSERT_TRUE(verdict(c, &p));
}

TEST(geo_location_check) {
        const char *allow = "{\"geo_location_check\": {\"action\": \"allow\", \"locations\":"
                            " [{\"country_code\": \"DE\", \"city_name\": \"Berlin\"}, {\"country_code\": \"FR\"}]}}";
        const char *deny = "{\"geo_location_check\": {\"action\": \"deny\", \"locations\":"
                           " [{\"country_code\": \"DE\", \"city_name\": \"Berlin\"}]}}";
        cp_posture_peer p = P("linux", "0.60.0");
        /* no location: denied whatever the action */
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(!verdict(deny, &p));
        p.country_code = "DE";
        p.city_name = "Berlin";
        ASSERT_TRUE(verdict(allow, &p));
        ASSERT_TRUE(!verdict(deny, &p));
        p.city_name = "Munich";
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(verdict(deny, &p));
        p.country_code = "FR";
        p.city_name = "Paris";          /* no city in the check: the whole country */
        ASSERT_TRUE(verdict(allow, &p));
        p.country_code = "";
        p.city_name = "Paris";          /* a city alone counts as a location */
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(verdict(deny, &p));
}

TEST(peer_network_range_check) {
        const char *allow = "{\"peer_network_range_check\": {\"action\": \"allow\","
                            " \"ranges\": [\"192.168.0.0/16\", \"1.2.3.0/24\", \"10.0.0.5/32\"]}}";
        const char *deny = "{\"peer_network_range_check\": {\"action\": \"deny\", \"ranges\": [\"10.0.0.0/8\"]}}";
        const char *addrs1[] = { "192.168.1.5/24" }, *addrs2[] = { "172.16.0.1/12", "10.1.0.1/16" },
                   *addrs3[] = { "10.0.0.5/24" }, *addrs4[] = { "fd00::1/64" };
        cp_posture_peer p = P("linux", "0.60.0");
        /* no addresses at all: an error, denied */
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(!verdict(deny, &p));
        p.net_addrs = addrs1;
        p.n_net_addrs = 1;
        ASSERT_TRUE(verdict(allow, &p));
        ASSERT_TRUE(verdict(deny, &p));
        p.net_addrs = addrs2;
        p.n_net_addrs = 2;
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(!verdict(deny, &p));
        /* a /32 rule does not cover a peer's /24 interface (NetBird's
         * prefixContains) */
        p.net_addrs = addrs3;
        p.n_net_addrs = 1;
        ASSERT_TRUE(!verdict(allow, &p));
        /* the public connection IP counts as a host prefix, mapped IPv4
         * unmapped */
        p.net_addrs = addrs4;
        p.connection_ip = "::ffff:1.2.3.4";
        ASSERT_TRUE(verdict(allow, &p));
        p.connection_ip = "5.6.7.8";
        ASSERT_TRUE(!verdict(allow, &p));
        ASSERT_TRUE(verdict(deny, &p));
}

TEST(process_check) {
        const char *c = "{\"process_check\": {\"processes\": ["
                        "{\"linux_path\": \"/usr/bin/a\", \"mac_path\": \"/Applications/a\", \"windows_path\": \"\"},"
                        "{\"linux_path\": \"/usr/bin/b\", \"mac_path\": \"\", \"windows_path\": \"C:\\\\b.exe\"}]}}";
        const char *both[] = { "/usr/bin/a", "/usr/bin/b" }, *one[] = { "/usr/bin/a" };
        cp_posture_peer p = P("linux", "0.60.0");
        ASSERT_TRUE(!verdict(c, &p));
        p.running = both;
        p.n_running = 2;
        ASSERT_TRUE(verdict(c, &p));
        p.running = one;
        p.n_running = 1;
        ASSERT_TRUE(!verdict(c, &p));
        /* darwin: the second process has no mac path, so it fails */
        const char *mac[] = { "/Applications/a" };
        p = P("darwin", "0.60.0");
        p.running = mac;
        p.n_running = 1;
        ASSERT_TRUE(!verdict(c, &p));
        /* an OS without paths in NetBird's model: denied */
        p = P("android", "0.60.0");
        ASSERT_TRUE(!verdict(c, &p));
        /* the files the agent is asked about */
        json_t *j = J(c), *files = json_array();
        ASSERT_EQ(4, cp_posture_files(j, files));
        ASSERT_STREQ("/usr/bin/a", json_string_value(json_array_get(files, 0)));
        ASSERT_STREQ("/Applications/a", json_string_value(json_array_get(files, 1)));
        ASSERT_STREQ("/usr/bin/b", json_string_value(json_array_get(files, 2)));
        ASSERT_STREQ("C:\\b.exe", json_string_value(json_array_get(files, 3)));
        json_decref(files);
        json_decref(j);
}

/* ---- in the network map ------------------------------------------------------------------ */

static void add_peer(cp_netmap_builder *b, const char *id, const char *ip, const char *ver, const char *os,
                     const char *const *running, size_t n_running) {
        char key[64];
        cp_error err = { 0 };
        (void) snprintf(key, sizeof key, "key-%s", id);
        cp_netmap_peer_spec p = { .id = id, .key = key, .ip = ip, .dns_label = id, .wt_version = ver };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
        cp_posture_peer m = P(os, ver);
        m.running = running;
        m.n_running = n_running;
        ASSERT_OK(cp_netmap_builder_set_peer_posture(b, id, &m, &err), &err);
}

static void add_group(cp_netmap_builder *b, const char *id, const char *p1, const char *p2) {
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_group(b, id, id, &err), &err);
        if (p1)
                ASSERT_OK(cp_netmap_builder_add_group_peer(b, id, p1, &err), &err);
        if (p2)
                ASSERT_OK(cp_netmap_builder_add_group_peer(b, id, p2, &err), &err);
}

static void add_policy(cp_netmap_builder *b, const char *id, const char *src, const char *dst, bool bidir,
                       const char *const *checks, size_t n_checks) {
        cp_error err = { 0 };
        const char *s[1] = { src }, *d[1] = { dst };
        char rid[64];
        (void) snprintf(rid, sizeof rid, "r-%s", id);
        cp_netmap_rule_spec r = { .id = rid, .policy_id = id, .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                  .bidirectional = bidir, .sources = s, .n_sources = 1, .destinations = d,
                                  .n_destinations = 1 };
        ASSERT_OK(cp_netmap_builder_add_policy(b, id, true, &err), &err);
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r, &err), &err);
        ASSERT_OK(cp_netmap_builder_set_policy_posture_checks(b, id, checks, n_checks, &err), &err);
}

static Management__SyncResponse *sync_of(cp_netmap_account *a, const char *peer_id) {
        return nmtest_sync(a, peer_id, NULL, NULL);
}

static bool sees(const Management__SyncResponse *sr, const char *id) {
        char key[64];
        (void) snprintf(key, sizeof key, "key-%s", id);
        for (size_t i = 0; i < sr->networkmap->n_remotepeers; i++)
                if (strcmp(sr->networkmap->remotepeers[i]->wgpubkey, key) == 0)
                        return true;
        return false;
}

static size_t rules_with(const Management__SyncResponse *sr, const char *ip, int dir) {
        size_t n = 0;
        for (size_t i = 0; i < sr->networkmap->n_firewallrules; i++)
                if (strcmp(sr->networkmap->firewallrules[i]->peerip, ip) == 0 &&
                    (int) sr->networkmap->firewallrules[i]->direction == dir)
                        n++;
        return n;
}

enum { IN = MANAGEMENT__RULE_DIRECTION__IN, OUT = MANAGEMENT__RULE_DIRECTION__OUT };

/* ok (new agent, process running) and bad (old agent, nothing running)
 * in the source group of a one-way policy to dst, guarded by pc1 (version
 * and process) and an id that is no check (skipped, as in NetBird). */
TEST(map_filters_sources_and_sends_checks) {
        cp_netmap_account_spec spec = { .id = "acc1", .serial = 1, .network_cidr = "100.64.0.0/16",
                                        .dns_domain = "nb.test" };
        cp_netmap_builder *b = NULL;
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        const char *running[] = { "/usr/bin/agent" };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        add_peer(b, "ok", "100.64.0.1", "0.60.0", "linux", running, 1);
        add_peer(b, "bad", "100.64.0.2", "0.20.0", "linux", NULL, 0);
        add_peer(b, "dst", "100.64.0.3", "0.60.0", "linux", NULL, 0);
        add_peer(b, "other", "100.64.0.4", "0.20.0", "linux", NULL, 0);
        add_group(b, "src", "ok", "bad");
        add_group(b, "gd", "dst", NULL);
        add_group(b, "go", "other", "dst");
        ASSERT_OK(cp_netmap_builder_add_posture_check(b, "pc1",
                  "{\"nb_version_check\": {\"min_version\": \"0.30.0\"}, \"process_check\": {\"processes\":"
                  " [{\"linux_path\": \"/usr/bin/agent\", \"mac_path\": \"/Applications/agent\", \"windows_path\": \"\"}]}}",
                  &err), &err);
        ASSERT_OK(cp_netmap_builder_add_posture_check(b, "pc-unused", "{\"nb_version_check\": {\"min_version\": \"9.0\"}}",
                  &err), &err);
        const char *checks[] = { "pc1", "gone" };
        add_policy(b, "guarded", "src", "gd", false, checks, 2);
        /* an unguarded policy: "other" (fails pc1) still reaches dst */
        add_policy(b, "open", "go", "go", true, NULL, 0);
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_posture_check(b, "x", "[1]", &err));
        ASSERT_EQ(-EEXIST, cp_netmap_builder_add_posture_check(b, "pc1", "{}", &err));
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);

        /* ok passes: sees dst, one OUT rule to it; asked about both paths */
        Management__SyncResponse *sr = sync_of(a, "ok");
        ASSERT_TRUE(sees(sr, "dst") && !sees(sr, "bad"));
        ASSERT_EQ(1, rules_with(sr, "100.64.0.3", OUT));
        ASSERT_EQ(1, sr->n_checks);
        ASSERT_EQ(2, sr->checks[0]->n_files);
        ASSERT_STREQ("/usr/bin/agent", sr->checks[0]->files[0]);
        ASSERT_STREQ("/Applications/agent", sr->checks[0]->files[1]);
        management__sync_response__free_unpacked(sr, NULL);

        /* bad fails: not a source, so nothing from the guarded policy, but
         * it still gets the checks it must report on */
        sr = sync_of(a, "bad");
        ASSERT_EQ(0, sr->networkmap->n_remotepeers);
        ASSERT_EQ(0, sr->networkmap->n_firewallrules);
        ASSERT_EQ(1, sr->n_checks);
        management__sync_response__free_unpacked(sr, NULL);

        /* dst: in from ok only; "other" via the open policy; no checks */
        sr = sync_of(a, "dst");
        ASSERT_TRUE(sees(sr, "ok") && !sees(sr, "bad") && sees(sr, "other"));
        ASSERT_EQ(1, rules_with(sr, "100.64.0.1", IN));
        ASSERT_EQ(0, rules_with(sr, "100.64.0.2", IN));
        ASSERT_EQ(0, sr->n_checks);
        management__sync_response__free_unpacked(sr, NULL);

        /* other: its open policy is untouched by posture checks */
        sr = sync_of(a, "other");
        ASSERT_TRUE(sees(sr, "dst"));
        ASSERT_EQ(0, sr->n_checks);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
}

/* A self-mesh policy guarded by a check: only passing peers connect, to
 * each other (destinations are the same group but a failing peer is
 * still a destination of passing sources, as in NetBird). */
TEST(map_self_mesh_guarded) {
        cp_netmap_account_spec spec = { .id = "acc1", .serial = 1, .network_cidr = "100.64.0.0/16" };
        cp_netmap_builder *b = NULL;
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        add_peer(b, "new", "100.64.0.1", "0.60.0", "linux", NULL, 0);
        add_peer(b, "old", "100.64.0.2", "0.20.0", "linux", NULL, 0);
        add_group(b, "all", "new", "old");
        ASSERT_OK(cp_netmap_builder_add_posture_check(b, "v", "{\"nb_version_check\": {\"min_version\": \"0.30.0\"}}",
                  &err), &err);
        const char *checks[] = { "v" };
        add_policy(b, "mesh", "all", "all", false, checks, 1);
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);
        /* one-way all -> all: sources {new}, destinations {new, old} */
        Management__SyncResponse *sr = sync_of(a, "new");
        ASSERT_TRUE(sees(sr, "old"));
        ASSERT_EQ(1, rules_with(sr, "100.64.0.2", OUT));
        ASSERT_EQ(0, rules_with(sr, "100.64.0.2", IN));
        ASSERT_EQ(0, sr->n_checks);     /* no process check: nothing to report */
        management__sync_response__free_unpacked(sr, NULL);
        sr = sync_of(a, "old");
        ASSERT_TRUE(sees(sr, "new"));
        ASSERT_EQ(1, rules_with(sr, "100.64.0.1", IN));
        ASSERT_EQ(0, rules_with(sr, "100.64.0.1", OUT));
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
}

/* A resource policy guarded by a check (NetBird's getPostureValidPeers in
 * the resource routes): the passing source gets the route through the
 * router, the failing one none; the router's route firewall rule lets in
 * only the passing source. */
TEST(map_resource_policy_guarded) {
        cp_netmap_account_spec spec = { .id = "acc1", .serial = 1, .network_cidr = "100.64.0.0/16" };
        cp_netmap_builder *b = NULL;
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        add_peer(b, "new", "100.64.0.1", "0.60.0", "linux", NULL, 0);
        add_peer(b, "old", "100.64.0.2", "0.20.0", "linux", NULL, 0);
        add_peer(b, "rtr", "100.64.0.3", "0.60.0", "linux", NULL, 0);
        add_group(b, "src", "new", "old");
        cp_netmap_network_resource_spec res = { .id = "res1", .network_id = "net1", .name = "db",
                                                .type = CP_NETMAP_RESOURCE_HOST, .prefix = "10.0.0.5/32",
                                                .enabled = true };
        ASSERT_OK(cp_netmap_builder_add_network_resource(b, &res, &err), &err);
        cp_netmap_network_router_spec rt = { .id = "rt1", .network_id = "net1", .peer = "rtr", .metric = 9999,
                                             .enabled = true };
        ASSERT_OK(cp_netmap_builder_add_network_router(b, &rt, &err), &err);
        ASSERT_OK(cp_netmap_builder_add_posture_check(b, "v", "{\"nb_version_check\": {\"min_version\": \"0.30.0\"}}",
                  &err), &err);
        const char *s[] = { "src" }, *checks[] = { "v" };
        cp_netmap_rule_spec r = { .id = "r-res", .policy_id = "pres", .enabled = true,
                                  .protocol = CP_NETMAP_PROTO_ALL, .sources = s, .n_sources = 1,
                                  .destination_resource = "res1" };
        ASSERT_OK(cp_netmap_builder_add_policy(b, "pres", true, &err), &err);
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r, &err), &err);
        ASSERT_OK(cp_netmap_builder_set_policy_posture_checks(b, "pres", checks, 1, &err), &err);
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);

        Management__SyncResponse *sr = sync_of(a, "new");
        ASSERT_EQ(1, sr->networkmap->n_routes);
        ASSERT_STREQ("10.0.0.5/32", sr->networkmap->routes[0]->network);
        ASSERT_STREQ("res1:rtr", sr->networkmap->routes[0]->id);
        ASSERT_TRUE(sees(sr, "rtr"));
        management__sync_response__free_unpacked(sr, NULL);

        sr = sync_of(a, "old");
        ASSERT_EQ(0, sr->networkmap->n_routes);
        ASSERT_TRUE(!sees(sr, "rtr"));
        management__sync_response__free_unpacked(sr, NULL);

        sr = sync_of(a, "rtr");
        ASSERT_TRUE(sees(sr, "new") && !sees(sr, "old"));
        ASSERT_EQ(1, sr->networkmap->n_routesfirewallrules);
        ASSERT_EQ(1, sr->networkmap->routesfirewallrules[0]->n_sourceranges);
        ASSERT_STREQ("100.64.0.1/32", sr->networkmap->routesfirewallrules[0]->sourceranges[0]);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
