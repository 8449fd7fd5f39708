/*
 * common/netmap: NetBird's Networks (resources, routers, resource
 * policies) in the per-peer maps. Each fixture's expected maps are
 * written by hand from NetBird's semantics (account_components.go's
 * resource loop and NetworkMapComponents.Calculate:
 * getNetworkResourcesRoutesToSync, getPeerNetworkResourceFirewallRules,
 * addNetworksRoutingPeers), then compared with what the encoder sends,
 * decoded with protoc-c (and re-packed to the same bytes).
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cptest.h"
#include "nmtest.h"
#include "management.pb-c.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

/* ---- building ------------------------------------------------------------------------ */

static cp_netmap_builder *account(void) {
        cp_netmap_account_spec spec = {
                .id = "acc1",
                .serial = 3,
                .network_cidr = "100.64.0.0/16",
                .dns_domain = "netbird.selfhosted",
        };
        cp_netmap_builder *b = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        return b;
}

static void peer_ex(cp_netmap_builder *b, const char *id, const char *ip, bool expired, bool approval) {
        char key[64];
        cp_error err = { 0 };
        (void) snprintf(key, sizeof key, "key-%s", id);
        cp_netmap_peer_spec p = {
                .id = id,
                .key = key,
                .ip = ip,
                .dns_label = id,
                .wt_version = "0.60.0",
                .login_expired = expired,
                .requires_approval = approval,
        };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
}

static void peer(cp_netmap_builder *b, const char *id, const char *ip) {
        peer_ex(b, id, ip, false, false);
}

static void group(cp_netmap_builder *b, const char *id, ...) {
        cp_error err = { 0 };
        va_list ap;
        ASSERT_OK(cp_netmap_builder_add_group(b, id, id, &err), &err);
        va_start(ap, id);
        for (const char *p; (p = va_arg(ap, const char *));)
                ASSERT_OK(cp_netmap_builder_add_group_peer(b, id, p, &err), &err);
        va_end(ap);
}

static void group_resource(cp_netmap_builder *b, const char *gid, const char *rid) {
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_group_resource(b, gid, rid, &err), &err);
}

static void resource(cp_netmap_builder *b, const char *id, const char *net, const char *name,
                     cp_netmap_resource_type type, const char *prefix_or_domain, bool enabled) {
        cp_error err = { 0 };
        cp_netmap_network_resource_spec r = {
                .id = id,
                .network_id = net,
                .name = name,
                .type = type,
                .prefix = type == CP_NETMAP_RESOURCE_DOMAIN ? NULL : prefix_or_domain,
                .domain = type == CP_NETMAP_RESOURCE_DOMAIN ? prefix_or_domain : NULL,
                .enabled = enabled,
        };
        ASSERT_OK(cp_netmap_builder_add_network_resource(b, &r, &err), &err);
}

/* router(b, id, net, peer or NULL, metric, masquerade, enabled, group ids..., NULL) */
static void router(cp_netmap_builder *b, const char *id, const char *net, const char *p, int metric, bool masq,
                   bool enabled, ...) {
        cp_error err = { 0 };
        const char *groups[8];
        size_t n = 0;
        va_list ap;
        va_start(ap, enabled);
        for (const char *g; (g = va_arg(ap, const char *)) && n < 8;)
                groups[n++] = g;
        va_end(ap);
        cp_netmap_network_router_spec r = {
                .id = id,
                .network_id = net,
                .peer = p,
                .peer_groups = groups,
                .n_peer_groups = n,
                .metric = metric,
                .masquerade = masq,
                .enabled = enabled,
        };
        ASSERT_OK(cp_netmap_builder_add_network_router(b, &r, &err), &err);
}

static void policy(cp_netmap_builder *b, const char *pid, bool enabled, const cp_netmap_rule_spec *tmpl) {
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_policy(b, pid, enabled, &err), &err);
        cp_netmap_rule_spec r = *tmpl;
        r.policy_id = pid;
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r, &err), &err);
}

static cp_netmap_account *finish(cp_netmap_builder *b) {
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);
        return a;
}

/* ---- decoding ------------------------------------------------------------------------ */

static Management__SyncResponse *sync_st(cp_netmap_account *a, const char *peer_id, cp_netmap_stats *st) {
        return nmtest_sync(a, peer_id, NULL, st);
}

static Management__SyncResponse *sync_of(cp_netmap_account *a, const char *peer_id) {
        return sync_st(a, peer_id, NULL);
}

static void done(Management__SyncResponse *sr) {
        management__sync_response__free_unpacked(sr, NULL);
}

/* The remote peers' ids (keys less "key-"), comma-separated, in order. */
static char *ids(Management__RemotePeerConfig **v, size_t n) {
        char *s = cp_xstrdup("");
        for (size_t i = 0; i < n; i++) {
                char *t = cp_xasprintf("%s%s%s", s, i ? "," : "", v[i]->wgpubkey + 4);
                free(s);
                s = t;
        }
        return s;
}

static void expect_remotes(const Management__NetworkMap *nm, const char *want) {
        _cleanup_free_ char *got = ids(nm->remotepeers, nm->n_remotepeers);
        ASSERT_STREQ(want, got);
        ASSERT_EQ(!*want, nm->remotepeersisempty);
}

static void expect_offline(const Management__NetworkMap *nm, const char *want) {
        _cleanup_free_ char *got = ids(nm->offlinepeers, nm->n_offlinepeers);
        ASSERT_STREQ(want, got);
}

/* The routes' ids, comma-separated, in order. */
static void expect_routes(const Management__NetworkMap *nm, const char *want) {
        char *s = cp_xstrdup("");
        for (size_t i = 0; i < nm->n_routes; i++) {
                char *t = cp_xasprintf("%s%s%s", s, i ? "," : "", nm->routes[i]->id);
                free(s);
                s = t;
        }
        ASSERT_STREQ(want, s);
        free(s);
}

static const Management__Route *route(const Management__NetworkMap *nm, const char *id) {
        for (size_t i = 0; i < nm->n_routes; i++)
                if (strcmp(nm->routes[i]->id, id) == 0)
                        return nm->routes[i];
        ASSERT_TRUE(!"route missing");
        return NULL;
}

static void expect_route(const Management__NetworkMap *nm, const char *id, const char *network, int64_t type,
                         const char *peer_key, int64_t metric, bool masq, const char *netid, const char *domain) {
        const Management__Route *r = route(nm, id);
        ASSERT_STREQ(network, r->network);
        ASSERT_EQ(type, r->networktype);
        ASSERT_STREQ(peer_key, r->peer);
        ASSERT_EQ(metric, r->metric);
        ASSERT_EQ(masq, (bool) r->masquerade);
        ASSERT_STREQ(netid, r->netid);
        ASSERT_TRUE(r->keeproute);
        ASSERT_FALSE(r->skipautoapply);
        if (domain) {
                ASSERT_EQ(1, r->n_domains);
                ASSERT_STREQ(domain, r->domains[0]);
        } else {
                ASSERT_EQ(0, r->n_domains);
        }
}

static char *joined(char **v, size_t n) {
        char *s = cp_xstrdup("");
        for (size_t i = 0; i < n; i++) {
                char *t = cp_xasprintf("%s%s%s", s, i ? "," : "", v[i]);
                free(s);
                s = t;
        }
        return s;
}

static bool policy_id_is(const ProtobufCBinaryData *b, const char *s) {
        return b->len == strlen(s) && memcmp(b->data, s, b->len) == 0;
}

/* RouteFirewallRule i: sources, destination, protocol, policy, route. */
static const Management__RouteFirewallRule *expect_rfw(const Management__NetworkMap *nm, size_t i,
                                                       const char *sources, const char *dest,
                                                       Management__RuleProtocol proto, const char *policy_id,
                                                       const char *route_id) {
        ASSERT_TRUE(i < nm->n_routesfirewallrules);
        const Management__RouteFirewallRule *r = nm->routesfirewallrules[i];
        _cleanup_free_ char *src = joined(r->sourceranges, r->n_sourceranges);
        ASSERT_STREQ(sources, src);
        ASSERT_STREQ(dest, r->destination);
        ASSERT_EQ(proto, r->protocol);
        ASSERT_EQ(MANAGEMENT__RULE_ACTION__ACCEPT, r->action);
        ASSERT_TRUE(policy_id_is(&r->policyid, policy_id));
        ASSERT_STREQ(route_id, r->routeid);
        ASSERT_TRUE(r->portinfo != NULL);
        return r;
}

/* ---- fixture 1: host, subnet and domain resources ------------------------------------ */

/*
 * p1, p2, p4 in "devs"; p3 routes n1 alone (metric 100, masquerade);
 * p4 and p5 route n2 through the peer group "routers" (HA); p7 routes n3
 * through a disabled router; p6 is in no policy.
 *   n1: r-host host 10.0.0.5/32 (group res-g1), r-dis disabled (res-g1)
 *   n3: r-n3 subnet 10.3.0.0/16 (res-g1)
 *   n2: r-sub subnet 192.168.0.0/24 (res-g2), r-dom domain *.example.com
 *       (no group: named by a rule's destination resource)
 * pol-host: devs -> res-g1, tcp 80, 443
 * pol-sub:  devs -> res-g2, all, bidirectional
 * pol-dom:  peer p1 -> resource r-dom, udp 1000-2000
 */
static cp_netmap_account *fixture1(void) {
        cp_netmap_builder *b = account();
        peer(b, "p1", "100.64.0.1");
        peer(b, "p2", "100.64.0.2");
        peer(b, "p3", "100.64.0.3");
        peer(b, "p4", "100.64.0.4");
        peer(b, "p5", "100.64.0.5");
        peer(b, "p6", "100.64.0.6");
        peer(b, "p7", "100.64.0.7");
        group(b, "devs", "p1", "p2", "p4", NULL);
        group(b, "routers", "p4", "p5", NULL);
        group(b, "res-g1", NULL);
        group(b, "res-g2", NULL);

        resource(b, "r-host", "n1", "host1", CP_NETMAP_RESOURCE_HOST, "10.0.0.5/32", true);
        resource(b, "r-dis", "n1", "disabled1", CP_NETMAP_RESOURCE_HOST, "10.0.0.6/32", false);
        resource(b, "r-n3", "n3", "net3", CP_NETMAP_RESOURCE_SUBNET, "10.3.0.0/16", true);
        resource(b, "r-sub", "n2", "subnet1", CP_NETMAP_RESOURCE_SUBNET, "192.168.0.0/24", true);
        resource(b, "r-dom", "n2", "dom1", CP_NETMAP_RESOURCE_DOMAIN, "*.example.com", true);
        group_resource(b, "res-g1", "r-host");
        group_resource(b, "res-g1", "r-dis");
        group_resource(b, "res-g1", "r-n3");
        group_resource(b, "res-g2", "r-sub");
        router(b, "rt1", "n1", "p3", 100, true, true, NULL);
        router(b, "rt2", "n2", NULL, 9999, false, true, "routers", NULL);
        router(b, "rt3", "n3", "p7", 10, false, false, NULL);

        const char *devs[] = { "devs" }, *g1[] = { "res-g1" }, *g2[] = { "res-g2" };
        uint16_t web[] = { 80, 443 };
        cp_netmap_port_range hi = { 1000, 2000 };
        policy(b, "pol-host", true,
               &(cp_netmap_rule_spec) { .id = "rule-host", .enabled = true, .protocol = CP_NETMAP_PROTO_TCP,
                                        .sources = devs, .n_sources = 1, .destinations = g1,
                                        .n_destinations = 1, .ports = web, .n_ports = 2 });
        policy(b, "pol-sub", true,
               &(cp_netmap_rule_spec) { .id = "rule-sub", .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                        .bidirectional = true, .sources = devs, .n_sources = 1,
                                        .destinations = g2, .n_destinations = 1 });
        policy(b, "pol-dom", true,
               &(cp_netmap_rule_spec) { .id = "rule-dom", .enabled = true, .protocol = CP_NETMAP_PROTO_UDP,
                                        .source_peer = "p1", .destination_resource = "r-dom",
                                        .port_ranges = &hi, .n_port_ranges = 1 });
        return finish(b);
}

TEST(source_gets_routes_of_every_router) {
        cp_netmap_account *a = fixture1();
        Management__SyncResponse *sr = sync_of(a, "p1");
        Management__NetworkMap *nm = sr->networkmap;

        /* the routing peers become remote peers; no firewall rules (the
         * resource groups hold no peers) and no route firewall rules */
        expect_remotes(nm, "p3,p4,p5");
        expect_offline(nm, "");
        ASSERT_EQ(0, nm->n_firewallrules);
        ASSERT_TRUE(nm->firewallrulesisempty);
        ASSERT_EQ(0, nm->n_routesfirewallrules);
        ASSERT_TRUE(nm->routesfirewallrulesisempty);
        /* resource order; per resource the routing peers; r-dis disabled,
         * r-n3's only router disabled */
        expect_routes(nm, "r-host:p3,r-sub:p4,r-sub:p5,r-dom:p4,r-dom:p5");
        expect_route(nm, "r-host:p3", "10.0.0.5/32", 1, "key-p3", 100, true, "host1", NULL);
        expect_route(nm, "r-sub:p4", "192.168.0.0/24", 1, "key-p4", 9999, false, "subnet1", NULL);
        expect_route(nm, "r-sub:p5", "192.168.0.0/24", 1, "key-p5", 9999, false, "subnet1", NULL);
        expect_route(nm, "r-dom:p4", "192.0.2.0/32", 3, "key-p4", 9999, false, "dom1", "*.example.com");
        expect_route(nm, "r-dom:p5", "192.0.2.0/32", 3, "key-p5", 9999, false, "dom1", "*.example.com");
        /* routing peers reached through a resource get no DNS records */
        const Management__DNSConfig *d = nm->dnsconfig;
        ASSERT_EQ(1, d->n_customzones);
        ASSERT_EQ(1, d->customzones[0]->n_records);
        ASSERT_STREQ("p1.netbird.selfhosted", d->customzones[0]->records[0]->name);
        done(sr);

        /* p2 is no source of pol-dom (its source is the peer p1) */
        sr = sync_of(a, "p2");
        nm = sr->networkmap;
        expect_remotes(nm, "p3,p4,p5");
        expect_routes(nm, "r-host:p3,r-sub:p4,r-sub:p5");
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(router_gets_its_route_rules_and_sources) {
        cp_netmap_account *a = fixture1();
        cp_netmap_stats st;
        Management__SyncResponse *sr = sync_st(a, "p3", &st);
        Management__NetworkMap *nm = sr->networkmap;

        expect_remotes(nm, "p1,p2,p4");
        expect_routes(nm, "r-host:p3");
        expect_route(nm, "r-host:p3", "10.0.0.5/32", 1, "key-p3", 100, true, "host1", NULL);
        ASSERT_EQ(0, nm->n_firewallrules);
        /* one rule per port, sources = the policy's source peers */
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        ASSERT_FALSE(nm->routesfirewallrulesisempty);
        const Management__RouteFirewallRule *r;
        r = expect_rfw(nm, 0, "100.64.0.1/32,100.64.0.2/32,100.64.0.4/32", "10.0.0.5/32",
                       MANAGEMENT__RULE_PROTOCOL__TCP, "pol-host", "r-host:p3");
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION_PORT, r->portinfo->port_selection_case);
        ASSERT_EQ(80, r->portinfo->port);
        ASSERT_FALSE(r->isdynamic);
        r = expect_rfw(nm, 1, "100.64.0.1/32,100.64.0.2/32,100.64.0.4/32", "10.0.0.5/32",
                       MANAGEMENT__RULE_PROTOCOL__TCP, "pol-host", "r-host:p3");
        ASSERT_EQ(443, r->portinfo->port);
        ASSERT_EQ(1, st.routes);
        ASSERT_EQ(2, st.route_firewall_rules);
        ASSERT_EQ(3, st.remote_peers);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(peer_group_routers_and_a_router_that_is_a_source) {
        cp_netmap_account *a = fixture1();

        /* p5 routes n2: its own routes only; sources of pol-sub (p1, p2,
         * p4) and pol-dom (p1) are its remote peers */
        Management__SyncResponse *sr = sync_of(a, "p5");
        Management__NetworkMap *nm = sr->networkmap;
        expect_remotes(nm, "p1,p2,p4");
        expect_routes(nm, "r-sub:p5,r-dom:p5");
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        const Management__RouteFirewallRule *r;
        r = expect_rfw(nm, 0, "100.64.0.1/32,100.64.0.2/32,100.64.0.4/32", "192.168.0.0/24",
                       MANAGEMENT__RULE_PROTOCOL__ALL, "pol-sub", "r-sub:p5");
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION__NOT_SET, r->portinfo->port_selection_case);
        r = expect_rfw(nm, 1, "100.64.0.1/32", "192.0.2.0/32", MANAGEMENT__RULE_PROTOCOL__UDP, "pol-dom",
                       "r-dom:p5");
        ASSERT_TRUE(r->isdynamic);
        ASSERT_EQ(1, r->n_domains);
        ASSERT_STREQ("*.example.com", r->domains[0]);
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION_RANGE, r->portinfo->port_selection_case);
        ASSERT_EQ(1000, r->portinfo->range->start);
        ASSERT_EQ(2000, r->portinfo->range->end);
        done(sr);

        /* p4 routes n2 and is a source in devs: for n2's resources it only
         * gets its own routes (not p5's), for r-host the route through p3;
         * it is left out of its own rules' sources */
        sr = sync_of(a, "p4");
        nm = sr->networkmap;
        expect_remotes(nm, "p1,p2,p3");
        expect_routes(nm, "r-host:p3,r-sub:p4,r-dom:p4");
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        expect_rfw(nm, 0, "100.64.0.1/32,100.64.0.2/32", "192.168.0.0/24", MANAGEMENT__RULE_PROTOCOL__ALL,
                   "pol-sub", "r-sub:p4");
        expect_rfw(nm, 1, "100.64.0.1/32", "192.0.2.0/32", MANAGEMENT__RULE_PROTOCOL__UDP, "pol-dom", "r-dom:p4");
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(unrelated_and_disabled_router_peers_get_nothing) {
        cp_netmap_account *a = fixture1();
        static const char *const who[] = { "p6", "p7" };
        for (size_t i = 0; i < 2; i++) {
                Management__SyncResponse *sr = sync_of(a, who[i]);
                Management__NetworkMap *nm = sr->networkmap;
                expect_remotes(nm, "");
                expect_routes(nm, "");
                ASSERT_EQ(0, nm->n_routesfirewallrules);
                ASSERT_TRUE(nm->routesfirewallrulesisempty);
                done(sr);
        }
        cp_netmap_account_unref(a);
}

/* ---- fixture 2: HA routers, expiry, approval, disabled policies ---------------------- */

/*
 * n1 has r1 (10.1.0.0/16, group rg1). Routers in order: rt-a peer ra
 * metric 10; rt-b peer rb metric 20; rt-c peer group "rgrp" (rb, rd)
 * metric 30 with masquerade (rb takes rt-c, the later one; rd waits
 * for approval and is left out). rb's login expired.
 * pol-1: s1, s2 -> rg1 (tcp 22). pol-peer: s2 <-> rb (all), so s2 sees
 * rb as offline. pol-off (disabled): s3 -> rg2 holding r2 (same
 * network): no routes for r2. r3 is in rg1 but only in a network
 * without routers.
 */
static cp_netmap_account *fixture2(void) {
        cp_netmap_builder *b = account();
        peer(b, "s1", "100.64.1.1");
        peer(b, "s2", "100.64.1.2");
        peer(b, "s3", "100.64.1.3");
        peer(b, "ra", "100.64.2.1");
        peer_ex(b, "rb", "100.64.2.2", true, false);
        peer_ex(b, "rd", "100.64.2.4", false, true);
        group(b, "src", "s1", "s2", NULL);
        group(b, "src3", "s3", NULL);
        group(b, "s2g", "s2", NULL);
        group(b, "rbg", "rb", NULL);
        group(b, "rgrp", "rb", "rd", NULL);
        group(b, "rg1", NULL);
        group(b, "rg2", NULL);
        resource(b, "r1", "n1", "net-one", CP_NETMAP_RESOURCE_SUBNET, "10.1.0.0/16", true);
        resource(b, "r2", "n1", "net-two", CP_NETMAP_RESOURCE_HOST, "10.1.2.3/32", true);
        resource(b, "r3", "n9", "net-nine", CP_NETMAP_RESOURCE_HOST, "10.9.0.1/32", true);
        group_resource(b, "rg1", "r1");
        group_resource(b, "rg1", "r3");
        group_resource(b, "rg2", "r2");
        router(b, "rt-a", "n1", "ra", 10, false, true, NULL);
        router(b, "rt-b", "n1", "rb", 20, false, true, NULL);
        router(b, "rt-c", "n1", NULL, 30, true, true, "rgrp", NULL);

        const char *src[] = { "src" }, *src3[] = { "src3" }, *rg1[] = { "rg1" }, *rg2[] = { "rg2" };
        const char *s2g[] = { "s2g" }, *rbg[] = { "rbg" };
        uint16_t ssh[] = { 22 };
        policy(b, "pol-1", true,
               &(cp_netmap_rule_spec) { .id = "rule-1", .enabled = true, .protocol = CP_NETMAP_PROTO_TCP,
                                        .sources = src, .n_sources = 1, .destinations = rg1,
                                        .n_destinations = 1, .ports = ssh, .n_ports = 1 });
        policy(b, "pol-peer", true,
               &(cp_netmap_rule_spec) { .id = "rule-peer", .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                        .bidirectional = true, .sources = s2g, .n_sources = 1,
                                        .destinations = rbg, .n_destinations = 1 });
        policy(b, "pol-off", false,
               &(cp_netmap_rule_spec) { .id = "rule-off", .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                        .sources = src3, .n_sources = 1, .destinations = rg2,
                                        .n_destinations = 1 });
        return finish(b);
}

TEST(ha_routers_share_the_net_id_with_their_own_metric) {
        cp_netmap_account *a = fixture2();
        Management__SyncResponse *sr = sync_of(a, "s1");
        Management__NetworkMap *nm = sr->networkmap;

        expect_routes(nm, "r1:ra,r1:rb");
        expect_route(nm, "r1:ra", "10.1.0.0/16", 1, "key-ra", 10, false, "net-one", NULL);
        /* rb is in rt-b and (through rgrp) rt-c: the later router wins */
        expect_route(nm, "r1:rb", "10.1.0.0/16", 1, "key-rb", 30, true, "net-one", NULL);
        /* a routing peer whose login expired is still a remote peer */
        expect_remotes(nm, "ra,rb");
        expect_offline(nm, "");
        done(sr);

        /* s2 sees rb through a peer policy too: it stays offline there */
        sr = sync_of(a, "s2");
        nm = sr->networkmap;
        expect_routes(nm, "r1:ra,r1:rb");
        expect_remotes(nm, "ra");
        expect_offline(nm, "rb");
        ASSERT_EQ(2, nm->n_firewallrules);      /* the peer policy, IN and OUT */
        done(sr);

        /* the disabled policy opens nothing */
        sr = sync_of(a, "s3");
        nm = sr->networkmap;
        expect_routes(nm, "");
        expect_remotes(nm, "");
        done(sr);

        /* ra: route, rule for port 22 from s1 and s2, both remote */
        sr = sync_of(a, "ra");
        nm = sr->networkmap;
        expect_routes(nm, "r1:ra");
        expect_remotes(nm, "s1,s2");
        ASSERT_EQ(1, nm->n_routesfirewallrules);
        const Management__RouteFirewallRule *r = expect_rfw(nm, 0, "100.64.1.1/32,100.64.1.2/32", "10.1.0.0/16",
                                                            MANAGEMENT__RULE_PROTOCOL__TCP, "pol-1", "r1:ra");
        ASSERT_EQ(22, r->portinfo->port);
        done(sr);

        /* rd waits for approval: no map, and no route through it */
        sr = sync_of(a, "rd");
        nm = sr->networkmap;
        expect_routes(nm, "");
        expect_remotes(nm, "");
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(routes_of_resources_come_before_account_routes) {
        cp_netmap_builder *b = account();
        cp_error err = { 0 };
        peer(b, "s1", "100.64.1.1");
        peer(b, "ra", "100.64.2.1");
        group(b, "src", "s1", NULL);
        group(b, "rg", NULL);
        resource(b, "r1", "n1", "res-one", CP_NETMAP_RESOURCE_HOST, "10.1.0.7/32", true);
        group_resource(b, "rg", "r1");
        router(b, "rt", "n1", "ra", 5, false, true, NULL);
        const char *src[] = { "src" }, *rg[] = { "rg" };
        policy(b, "pol", true,
               &(cp_netmap_rule_spec) { .id = "rule", .enabled = true, .protocol = CP_NETMAP_PROTO_ALL,
                                        .sources = src, .n_sources = 1, .destinations = rg,
                                        .n_destinations = 1 });
        /* an account route from ra to src, no access-control groups */
        cp_netmap_route_spec rt = {
                .id = "legacy", .network = "172.16.0.0/12", .network_type = 1, .net_id = "legacy",
                .peer = "ra", .groups = src, .n_groups = 1, .metric = 9999, .enabled = true,
        };
        ASSERT_OK(cp_netmap_builder_add_route(b, &rt, &err), &err);
        cp_netmap_account *a = finish(b);

        /* s1 does not see ra through a policy, so NetBird's route step
         * (which looks at the policy peers) leaves the account route out */
        Management__SyncResponse *sr = sync_of(a, "s1");
        expect_routes(sr->networkmap, "r1:ra");
        expect_remotes(sr->networkmap, "ra");
        done(sr);

        sr = sync_of(a, "ra");
        Management__NetworkMap *nm = sr->networkmap;
        expect_routes(nm, "r1:ra,legacy");
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        expect_rfw(nm, 0, "100.64.1.1/32", "10.1.0.7/32", MANAGEMENT__RULE_PROTOCOL__ALL, "pol", "r1:ra");
        ASSERT_STREQ("legacy", nm->routesfirewallrules[1]->routeid);
        ASSERT_STREQ("0.0.0.0/0", nm->routesfirewallrules[1]->sourceranges[0]);
        done(sr);
        cp_netmap_account_unref(a);
}

/* A policy's sources for its resources are NetBird's SourceGroups(): the
 * source groups of every rule (also of a disabled one and of one aimed
 * elsewhere); the router's rules come from each active rule with its own
 * protocol and ports. A resource matched by a group and by a destination
 * resource gets the policy once. */
TEST(multi_rule_policy_sources) {
        cp_netmap_builder *b = account();
        cp_error err = { 0 };
        peer(b, "a1", "100.64.1.1");
        peer(b, "b1", "100.64.1.2");
        peer(b, "c1", "100.64.1.3");
        peer(b, "rt", "100.64.2.1");
        group(b, "ga", "a1", NULL);
        group(b, "gb", "b1", NULL);
        group(b, "gc", "c1", NULL);
        group(b, "rg", NULL);
        resource(b, "r1", "n1", "one", CP_NETMAP_RESOURCE_SUBNET, "10.5.0.0/16", true);
        group_resource(b, "rg", "r1");
        router(b, "x", "n1", "rt", 7, false, true, NULL);
        const char *ga[] = { "ga" }, *gb[] = { "gb" }, *gc[] = { "gc" }, *rg[] = { "rg" };
        uint16_t p5432[] = { 5432 };
        ASSERT_OK(cp_netmap_builder_add_policy(b, "pol", true, &err), &err);
        cp_netmap_rule_spec r1 = { .id = "pol-r1", .policy_id = "pol", .enabled = true,
                                   .protocol = CP_NETMAP_PROTO_ALL, .sources = ga, .n_sources = 1,
                                   .destinations = rg, .n_destinations = 1, .destination_resource = "r1" };
        cp_netmap_rule_spec r2 = { .id = "pol-r2", .policy_id = "pol", .enabled = true,
                                   .protocol = CP_NETMAP_PROTO_TCP, .sources = gb, .n_sources = 1,
                                   .destinations = gc, .n_destinations = 1, .ports = p5432, .n_ports = 1 };
        cp_netmap_rule_spec r3 = { .id = "pol-r3", .policy_id = "pol", .enabled = false,
                                   .protocol = CP_NETMAP_PROTO_ALL, .sources = gc, .n_sources = 1,
                                   .destinations = rg, .n_destinations = 1 };
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r1, &err), &err);
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r2, &err), &err);
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r3, &err), &err);
        cp_netmap_account *a = finish(b);

        static const char *const srcs[] = { "a1", "b1", "c1" };
        for (size_t i = 0; i < 3; i++) {
                Management__SyncResponse *sr = sync_of(a, srcs[i]);
                expect_routes(sr->networkmap, "r1:rt");
                expect_route(sr->networkmap, "r1:rt", "10.5.0.0/16", 1, "key-rt", 7, false, "one", NULL);
                done(sr);
        }
        Management__SyncResponse *sr = sync_of(a, "rt");
        Management__NetworkMap *nm = sr->networkmap;
        expect_routes(nm, "r1:rt");
        expect_remotes(nm, "a1,b1,c1");
        /* one set per active rule: r1 (all, from a1), r2 (tcp/5432, from b1) */
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        expect_rfw(nm, 0, "100.64.1.1/32", "10.5.0.0/16", MANAGEMENT__RULE_PROTOCOL__ALL, "pol", "r1:rt");
        const Management__RouteFirewallRule *rf =
                expect_rfw(nm, 1, "100.64.1.2/32", "10.5.0.0/16", MANAGEMENT__RULE_PROTOCOL__TCP, "pol", "r1:rt");
        ASSERT_EQ(5432, rf->portinfo->port);
        done(sr);
        cp_netmap_account_unref(a);
}

/* One worker reused across every peer (as the fan-out does) gives the
 * same bytes as a fresh worker per peer. */
TEST(worker_reuse_gives_the_same_bytes) {
        cp_netmap_account *a = fixture1();
        cp_netmap_worker *shared = cp_netmap_worker_new();
        for (int round = 0; round < 2; round++)
                for (size_t i = 0; i < cp_netmap_account_n_peers(a); i++) {
                        cp_netmap_worker *fresh = cp_netmap_worker_new();
                        const uint8_t *d1, *d2;
                        size_t n1, n2;
                        ASSERT_OK(cp_netmap_encode_sync(shared, a, i, NULL, &d1, &n1, NULL), NULL);
                        ASSERT_OK(cp_netmap_encode_sync(fresh, a, i, NULL, &d2, &n2, NULL), NULL);
                        ASSERT_EQ(n2, n1);
                        ASSERT_TRUE(memcmp(d1, d2, n1) == 0);
                        cp_netmap_worker_free(fresh);
                }
        cp_netmap_worker_free(shared);
        cp_netmap_account_unref(a);
}

TEST(builder_refuses_bad_resources) {
        cp_netmap_builder *b = account();
        cp_error err = { 0 };
        cp_netmap_network_resource_spec r = {
                .id = "r", .network_id = "n", .name = "x", .type = CP_NETMAP_RESOURCE_HOST, .prefix = "nope",
                .enabled = true,
        };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_network_resource(b, &r, &err));
        r.type = CP_NETMAP_RESOURCE_DOMAIN;
        r.prefix = NULL;
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_network_resource(b, &r, &err));
        r.domain = "example.com";
        ASSERT_OK(cp_netmap_builder_add_network_resource(b, &r, &err), &err);
        ASSERT_EQ(-EEXIST, cp_netmap_builder_add_network_resource(b, &r, &err));
        cp_netmap_network_router_spec rt = { .id = "rt", .network_id = "" };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_network_router(b, &rt, &err));
        cp_netmap_resource_type t;
        ASSERT_EQ(-EINVAL, cp_netmap_resource_type_parse("peer", &t));
        ASSERT_OK(cp_netmap_resource_type_parse("subnet", &t), NULL);
        ASSERT_EQ(CP_NETMAP_RESOURCE_SUBNET, t);
        cp_error_clear(&err);
        cp_netmap_builder_free(b);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
