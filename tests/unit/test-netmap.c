/*
 * common/netmap: per-peer network maps (netbird-protocol.md 4.3) built
 * from hand-made snapshots, encoded, then decoded with protoc-c and
 * checked field by field. Every decode also re-packs the message with
 * protoc-c and requires the same bytes, so the hand-written encoder is
 * pinned to protoc-c's canonical encoding.
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cptest.h"
#include "nmtest.h"
#include "management.pb-c.h"

/* PeerIP and ForwarderPort are deprecated in the schema but still sent,
 * and checking them is the point here. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define DOMAIN "netbird.selfhosted"
#define NEW_AGENT "0.60.0"

/* ---- building snapshots ------------------------------------------------------------ */

static cp_netmap_builder *account(uint64_t serial) {
        cp_netmap_account_spec spec = {
                .id = "acc1",
                .serial = serial,
                .network_cidr = "100.64.0.0/16",
                .dns_domain = DOMAIN,
                .routing_peer_dns_resolution_enabled = true,
        };
        cp_netmap_builder *b = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        return b;
}

/* Peer "id" with key "key-<id>", label = id, agent NEW_AGENT. */
static void peer_ex(cp_netmap_builder *b, const char *id, const char *ip, const char *version, bool expired,
                    bool ssh, bool caps) {
        char key[64];
        cp_error err = { 0 };
        (void) snprintf(key, sizeof key, "key-%s", id);
        cp_netmap_peer_spec p = {
                .id = id,
                .key = key,
                .ip = ip,
                .dns_label = id,
                .ssh_key = "ssh-ed25519 AAAA",
                .wt_version = version,
                .login_expired = expired,
                .ssh_enabled = ssh,
                .cap_source_prefixes = caps,
        };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
}

static void peer(cp_netmap_builder *b, const char *id, const char *ip) {
        peer_ex(b, id, ip, NEW_AGENT, false, false, false);
}

/* group(b, "g1", "p1", "p2", NULL) */
static void group(cp_netmap_builder *b, const char *id, ...) {
        cp_error err = { 0 };
        va_list ap;
        ASSERT_OK(cp_netmap_builder_add_group(b, id, id, &err), &err);
        va_start(ap, id);
        for (const char *p; (p = va_arg(ap, const char *));)
                ASSERT_OK(cp_netmap_builder_add_group_peer(b, id, p, &err), &err);
        va_end(ap);
}

/* A policy with one rule from group src to group dst. */
static void policy_ex(cp_netmap_builder *b, const char *pid, bool penabled, const cp_netmap_rule_spec *tmpl) {
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_policy(b, pid, penabled, &err), &err);
        cp_netmap_rule_spec r = *tmpl;
        r.policy_id = pid;
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r, &err), &err);
}

static void policy(cp_netmap_builder *b, const char *pid, const char *rid, const char *src, const char *dst,
                   cp_netmap_protocol proto, bool bidir) {
        const char *s[1] = { src }, *d[1] = { dst };
        cp_netmap_rule_spec r = {
                .id = rid, .enabled = true, .protocol = proto, .bidirectional = bidir,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
        };
        policy_ex(b, pid, true, &r);
}

static cp_netmap_account *finish(cp_netmap_builder *b) {
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);
        return a;
}

/* ---- encoding and decoding --------------------------------------------------------- */

static Management__SyncResponse *sync_opts(cp_netmap_account *a, const char *peer_id,
                                           const cp_netmap_encode_opts *o, cp_netmap_stats *st) {
        return nmtest_sync(a, peer_id, o, st);
}

static Management__SyncResponse *sync_of(cp_netmap_account *a, const char *peer_id) {
        return sync_opts(a, peer_id, NULL, NULL);
}

static void done(Management__SyncResponse *sr) {
        management__sync_response__free_unpacked(sr, NULL);
}

static Management__RemotePeerConfig *find_remote(Management__RemotePeerConfig **v, size_t n, const char *id) {
        char key[64];
        (void) snprintf(key, sizeof key, "key-%s", id);
        for (size_t i = 0; i < n; i++)
                if (strcmp(v[i]->wgpubkey, key) == 0)
                        return v[i];
        return NULL;
}

#define REMOTE(nm, id) find_remote((nm)->remotepeers, (nm)->n_remotepeers, id)
#define OFFLINE(nm, id) find_remote((nm)->offlinepeers, (nm)->n_offlinepeers, id)

/* Number of firewall rules for peer IP ip, direction dir (-1 = any),
 * port (NULL = any). */
static size_t count_fw(const Management__NetworkMap *nm, const char *ip, int dir, const char *port) {
        size_t n = 0;
        for (size_t i = 0; i < nm->n_firewallrules; i++) {
                const Management__FirewallRule *r = nm->firewallrules[i];
                if (strcmp(r->peerip, ip) == 0 && (dir < 0 || (int) r->direction == dir) &&
                    (!port || strcmp(r->port, port) == 0))
                        n++;
        }
        return n;
}

static const Management__FirewallRule *find_fw(const Management__NetworkMap *nm, const char *ip, int dir) {
        for (size_t i = 0; i < nm->n_firewallrules; i++)
                if (strcmp(nm->firewallrules[i]->peerip, ip) == 0 && (int) nm->firewallrules[i]->direction == dir)
                        return nm->firewallrules[i];
        return NULL;
}

static const Management__Route *find_route(const Management__NetworkMap *nm, const char *id) {
        for (size_t i = 0; i < nm->n_routes; i++)
                if (strcmp(nm->routes[i]->id, id) == 0)
                        return nm->routes[i];
        return NULL;
}

static bool policy_id_is(const ProtobufCBinaryData *b, const char *s) {
        return b->len == strlen(s) && memcmp(b->data, s, b->len) == 0;
}

static const Management__SimpleRecord *find_record(const Management__NetworkMap *nm, const char *name) {
        const Management__DNSConfig *d = nm->dnsconfig;
        for (size_t z = 0; d && z < d->n_customzones; z++)
                for (size_t i = 0; i < d->customzones[z]->n_records; i++)
                        if (strcmp(d->customzones[z]->records[i]->name, name) == 0)
                                return d->customzones[z]->records[i];
        return NULL;
}

enum { IN = MANAGEMENT__RULE_DIRECTION__IN, OUT = MANAGEMENT__RULE_DIRECTION__OUT };

/* ---- policies and firewall rules ------------------------------------------------------- */

TEST(default_all_policy_full_mesh) {
        cp_netmap_builder *b = account(7);
        peer(b, "p1", "100.64.0.1");
        peer(b, "p2", "100.64.0.2");
        peer(b, "p3", "100.64.0.3");
        group(b, "all", "p1", "p2", "p3", NULL);
        policy(b, "pol-default", "rule-default", "all", "all", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *a = finish(b);

        static const char *const ids[] = { "p1", "p2", "p3" };
        static const char *const ips[] = { "100.64.0.1", "100.64.0.2", "100.64.0.3" };
        for (int i = 0; i < 3; i++) {
                Management__SyncResponse *sr = sync_of(a, ids[i]);
                Management__NetworkMap *nm = sr->networkmap;
                ASSERT_TRUE(nm != NULL);
                ASSERT_TRUE(sr->netbirdconfig == NULL);          /* fan-out push: pitfall 7 */
                ASSERT_EQ(7, nm->serial);
                ASSERT_EQ(2, nm->n_remotepeers);
                ASSERT_FALSE(nm->remotepeersisempty);
                ASSERT_FALSE(sr->remotepeersisempty);
                ASSERT_TRUE(REMOTE(nm, ids[i]) == NULL);
                ASSERT_EQ(4, nm->n_firewallrules);
                ASSERT_FALSE(nm->firewallrulesisempty);
                ASSERT_TRUE(nm->routesfirewallrulesisempty);
                for (int j = 0; j < 3; j++) {
                        if (j == i)
                                continue;
                        ASSERT_TRUE(REMOTE(nm, ids[j]) != NULL);
                        ASSERT_EQ(1, count_fw(nm, ips[j], IN, NULL));
                        ASSERT_EQ(1, count_fw(nm, ips[j], OUT, NULL));
                        const Management__FirewallRule *r = find_fw(nm, ips[j], IN);
                        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__ALL, r->protocol);
                        ASSERT_EQ(MANAGEMENT__RULE_ACTION__ACCEPT, r->action);
                        ASSERT_STREQ("", r->port);
                        ASSERT_TRUE(r->portinfo == NULL);
                        ASSERT_TRUE(policy_id_is(&r->policyid, "rule-default"));
                        ASSERT_EQ(0, r->n_sourceprefixes);
                }
                /* the remote peer config */
                Management__RemotePeerConfig *rp = nm->remotepeers[0];
                const char *first = i == 0 ? "p2" : "p1";
                char want[64];
                ASSERT_STREQ(REMOTE(nm, first)->wgpubkey, rp->wgpubkey);        /* ascending index */
                (void) snprintf(want, sizeof want, "%s/32", i == 0 ? ips[1] : ips[0]);
                ASSERT_EQ(1, rp->n_allowedips);
                ASSERT_STREQ(want, rp->allowedips[0]);
                (void) snprintf(want, sizeof want, "%s." DOMAIN, first);
                ASSERT_STREQ(want, rp->fqdn);
                ASSERT_STREQ(NEW_AGENT, rp->agentversion);
                ASSERT_TRUE(rp->sshconfig != NULL);
                ASSERT_EQ(strlen("ssh-ed25519 AAAA"), rp->sshconfig->sshpubkey.len);
                /* own peer config, in both places */
                (void) snprintf(want, sizeof want, "%s/16", ips[i]);
                ASSERT_STREQ(want, nm->peerconfig->address);
                ASSERT_STREQ(want, sr->peerconfig->address);
                (void) snprintf(want, sizeof want, "%s." DOMAIN, ids[i]);
                ASSERT_STREQ(want, nm->peerconfig->fqdn);
                ASSERT_TRUE(nm->peerconfig->routingpeerdnsresolutionenabled);
                ASSERT_FALSE(nm->peerconfig->lazyconnectionenabled);
                ASSERT_TRUE(nm->peerconfig->sshconfig != NULL);
                ASSERT_FALSE(nm->peerconfig->sshconfig->sshenabled);
                ASSERT_STREQ("disabled", nm->peerconfig->autoupdate->version);
                /* new agents get no deprecated top-level list */
                ASSERT_EQ(0, sr->n_remotepeers);
                /* sessionExpiresAt present, empty: no expiry */
                ASSERT_TRUE(sr->sessionexpiresat != NULL);
                ASSERT_EQ(0, sr->sessionexpiresat->seconds);
                done(sr);
        }
        cp_netmap_account_unref(a);
}

TEST(one_way_tcp80_is_symmetric_in_visibility_only) {
        cp_netmap_builder *b = account(3);
        peer(b, "a", "100.64.0.1");
        peer(b, "b", "100.64.0.2");
        peer(b, "c", "100.64.0.3");
        group(b, "ga", "a", NULL);
        group(b, "gb", "b", NULL);
        group(b, "gc", "c", NULL);
        const char *s[] = { "ga" }, *d[] = { "gb" };
        const uint16_t ports[] = { 80 };
        cp_netmap_rule_spec r = {
                .id = "r80", .enabled = true, .protocol = CP_NETMAP_PROTO_TCP,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
                .ports = ports, .n_ports = 1,
        };
        policy_ex(b, "p80", true, &r);
        cp_netmap_account *a = finish(b);

        /* A (source) sees B and gets OUT to B:80 */
        Management__SyncResponse *sr = sync_of(a, "a");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(1, nm->n_remotepeers);
        ASSERT_TRUE(REMOTE(nm, "b") != NULL);
        ASSERT_EQ(1, nm->n_firewallrules);
        const Management__FirewallRule *fr = nm->firewallrules[0];
        ASSERT_STREQ("100.64.0.2", fr->peerip);
        ASSERT_EQ(OUT, fr->direction);
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__TCP, fr->protocol);
        ASSERT_STREQ("80", fr->port);
        ASSERT_TRUE(fr->portinfo == NULL);
        ASSERT_TRUE(policy_id_is(&fr->policyid, "r80"));
        done(sr);

        /* B (destination) sees A and gets IN from A:80 */
        sr = sync_of(a, "b");
        nm = sr->networkmap;
        ASSERT_EQ(1, nm->n_remotepeers);
        ASSERT_TRUE(REMOTE(nm, "a") != NULL);
        ASSERT_EQ(1, nm->n_firewallrules);
        ASSERT_EQ(1, count_fw(nm, "100.64.0.1", IN, "80"));
        done(sr);

        /* C: nothing, and every emptiness flag says so (pitfall 5) */
        sr = sync_of(a, "c");
        nm = sr->networkmap;
        ASSERT_EQ(0, nm->n_remotepeers);
        ASSERT_TRUE(nm->remotepeersisempty);
        ASSERT_TRUE(sr->remotepeersisempty);
        ASSERT_EQ(0, nm->n_firewallrules);
        ASSERT_TRUE(nm->firewallrulesisempty);
        ASSERT_TRUE(nm->routesfirewallrulesisempty);
        ASSERT_EQ(0, nm->n_routes);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(disabled_policy_and_disabled_rule_are_ignored) {
        cp_netmap_builder *b = account(1);
        peer(b, "a", "100.64.0.1");
        peer(b, "b", "100.64.0.2");
        group(b, "all", "a", "b", NULL);
        const char *g[] = { "all" };
        cp_netmap_rule_spec r = {
                .id = "r1", .enabled = true, .bidirectional = true,
                .sources = g, .n_sources = 1, .destinations = g, .n_destinations = 1,
        };
        policy_ex(b, "disabled-policy", false, &r);
        r.id = "r2";
        r.enabled = false;
        policy_ex(b, "disabled-rule", true, &r);
        /* a rule whose policy does not exist */
        cp_error err = { 0 };
        r.id = "r3";
        r.enabled = true;
        r.policy_id = "ghost";
        ASSERT_OK(cp_netmap_builder_add_rule(b, &r, &err), &err);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "a");
        ASSERT_EQ(0, sr->networkmap->n_remotepeers);
        ASSERT_TRUE(sr->networkmap->remotepeersisempty);
        ASSERT_TRUE(sr->networkmap->firewallrulesisempty);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(drop_action_and_icmp) {
        cp_netmap_builder *b = account(1);
        peer(b, "a", "100.64.0.1");
        peer(b, "b", "100.64.0.2");
        group(b, "ga", "a", NULL);
        group(b, "gb", "b", NULL);
        const char *s[] = { "ga" }, *d[] = { "gb" };
        cp_netmap_rule_spec r = {
                .id = "drop-icmp", .enabled = true, .action = CP_NETMAP_DROP, .protocol = CP_NETMAP_PROTO_ICMP,
                .bidirectional = true, .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
        };
        policy_ex(b, "p", true, &r);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "a");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(2, nm->n_firewallrules);      /* bidirectional: IN and OUT */
        for (size_t i = 0; i < 2; i++) {
                ASSERT_EQ(MANAGEMENT__RULE_ACTION__DROP, nm->firewallrules[i]->action);
                ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__ICMP, nm->firewallrules[i]->protocol);
                ASSERT_TRUE(nm->firewallrules[i]->portinfo == NULL);
        }
        ASSERT_EQ(IN, nm->firewallrules[0]->direction);        /* IN before OUT */
        ASSERT_EQ(OUT, nm->firewallrules[1]->direction);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(port_ranges_and_all_ports_encoding) {
        cp_netmap_builder *b = account(1);
        peer(b, "new", "100.64.0.1");
        peer_ex(b, "old", "100.64.0.2", "0.47.0", false, false, false);
        peer(b, "srv", "100.64.0.3");
        group(b, "clients", "new", "old", NULL);
        group(b, "servers", "srv", NULL);
        const char *s[] = { "clients" }, *d[] = { "servers" };
        const cp_netmap_port_range ranges[] = { { 8000, 8100 }, { 443, 443 } };
        cp_netmap_rule_spec r = {
                .id = "ranges", .enabled = true, .protocol = CP_NETMAP_PROTO_TCP,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
                .port_ranges = ranges, .n_port_ranges = 2,
        };
        policy_ex(b, "p1", true, &r);
        /* udp without ports: PortInfo range {0,0} = all ports */
        cp_netmap_rule_spec u = {
                .id = "udp-all", .enabled = true, .protocol = CP_NETMAP_PROTO_UDP,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
        };
        policy_ex(b, "p2", true, &u);
        cp_netmap_account *a = finish(b);

        /* new agent: both ranges as PortInfo ranges */
        Management__SyncResponse *sr = sync_of(a, "new");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(3, nm->n_firewallrules);
        const Management__FirewallRule *fr = nm->firewallrules[0];
        ASSERT_STREQ("", fr->port);
        ASSERT_TRUE(fr->portinfo != NULL);
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION_RANGE, fr->portinfo->port_selection_case);
        ASSERT_EQ(8000, fr->portinfo->range->start);
        ASSERT_EQ(8100, fr->portinfo->range->end);
        ASSERT_EQ(443, nm->firewallrules[1]->portinfo->range->start);
        ASSERT_EQ(443, nm->firewallrules[1]->portinfo->range->end);
        fr = nm->firewallrules[2];
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__UDP, fr->protocol);
        ASSERT_TRUE(fr->portinfo != NULL);
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION_RANGE, fr->portinfo->port_selection_case);
        ASSERT_EQ(0, fr->portinfo->range->start);
        ASSERT_EQ(0, fr->portinfo->range->end);
        done(sr);

        /* agent < 0.48.0: only the single-port range survives, as a Port */
        sr = sync_of(a, "old");
        nm = sr->networkmap;
        ASSERT_EQ(2, nm->n_firewallrules);
        ASSERT_STREQ("443", nm->firewallrules[0]->port);
        ASSERT_TRUE(nm->firewallrules[0]->portinfo == NULL);
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__UDP, nm->firewallrules[1]->protocol);
        /* old agents (< 0.29.3 is not this one) still get no top-level list */
        ASSERT_EQ(0, sr->n_remotepeers);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(netbird_ssh_sent_as_tcp_enables_ssh_on_destination) {
        cp_netmap_builder *b = account(1);
        peer(b, "admin", "100.64.0.1");
        peer(b, "server", "100.64.0.2");
        group(b, "admins", "admin", NULL);
        group(b, "servers", "server", NULL);
        const char *s[] = { "admins" }, *d[] = { "servers" };
        const uint16_t ports[] = { 22 };
        cp_netmap_rule_spec r = {
                .id = "ssh", .enabled = true, .protocol = CP_NETMAP_PROTO_NETBIRD_SSH,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
                .ports = ports, .n_ports = 1,
        };
        policy_ex(b, "p", true, &r);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "server");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_TRUE(nm->peerconfig->sshconfig->sshenabled);
        ASSERT_EQ(2, nm->n_firewallrules);      /* 22 plus the native companion 22022 */
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__TCP, nm->firewallrules[0]->protocol);
        ASSERT_EQ(1, count_fw(nm, "100.64.0.1", IN, "22"));
        ASSERT_EQ(1, count_fw(nm, "100.64.0.1", IN, "22022"));
        done(sr);

        sr = sync_of(a, "admin");
        ASSERT_FALSE(sr->networkmap->peerconfig->sshconfig->sshenabled);
        ASSERT_EQ(1, count_fw(sr->networkmap, "100.64.0.2", OUT, "22"));
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(login_expired_peer_is_offline_not_remote) {
        cp_netmap_builder *b = account(1);
        peer(b, "a", "100.64.0.1");
        peer_ex(b, "gone", "100.64.0.2", NEW_AGENT, true, false, false);
        peer(b, "c", "100.64.0.3");
        group(b, "all", "a", "gone", "c", NULL);
        policy(b, "p", "r", "all", "all", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "a");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(1, nm->n_remotepeers);
        ASSERT_TRUE(REMOTE(nm, "c") != NULL);
        ASSERT_TRUE(REMOTE(nm, "gone") == NULL);
        ASSERT_EQ(1, nm->n_offlinepeers);
        ASSERT_TRUE(OFFLINE(nm, "gone") != NULL);
        ASSERT_STREQ("gone." DOMAIN, OFFLINE(nm, "gone")->fqdn);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(peer_waiting_for_approval_is_invisible_and_gets_empty_map) {
        cp_netmap_builder *b = account(9);
        cp_error err = { 0 };
        peer(b, "a", "100.64.0.1");
        cp_netmap_peer_spec p = { .id = "new", .key = "key-new", .ip = "100.64.0.2", .dns_label = "new",
                                  .wt_version = NEW_AGENT, .requires_approval = true };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
        group(b, "all", "a", "new", NULL);
        policy(b, "p", "r", "all", "all", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "a");
        ASSERT_EQ(0, sr->networkmap->n_remotepeers);
        ASSERT_TRUE(sr->networkmap->firewallrulesisempty);
        ASSERT_TRUE(find_record(sr->networkmap, "new." DOMAIN) == NULL);
        done(sr);

        sr = sync_of(a, "new");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(9, nm->serial);
        ASSERT_TRUE(nm->remotepeersisempty);
        ASSERT_TRUE(nm->firewallrulesisempty);
        ASSERT_TRUE(nm->routesfirewallrulesisempty);
        ASSERT_FALSE(nm->dnsconfig->serviceenable);
        ASSERT_STREQ("100.64.0.2/16", nm->peerconfig->address);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(source_prefixes_for_capable_agents) {
        cp_netmap_builder *b = account(1);
        peer_ex(b, "a", "100.64.1.2", NEW_AGENT, false, false, true);
        peer(b, "b", "100.64.3.4");
        group(b, "all", "a", "b", NULL);
        policy(b, "p", "r", "all", "all", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "a");
        const Management__FirewallRule *fr = sr->networkmap->firewallrules[0];
        ASSERT_EQ(1, fr->n_sourceprefixes);
        ASSERT_EQ(5, fr->sourceprefixes[0].len);
        static const uint8_t want[5] = { 100, 64, 3, 4, 32 };
        ASSERT_TRUE(memcmp(want, fr->sourceprefixes[0].data, 5) == 0);
        done(sr);
        sr = sync_of(a, "b");
        ASSERT_EQ(0, sr->networkmap->firewallrules[0]->n_sourceprefixes);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(old_agent_gets_deprecated_remote_peers) {
        cp_netmap_builder *b = account(1);
        peer_ex(b, "old", "100.64.0.1", "0.28.0", false, false, false);
        peer_ex(b, "dev", "100.64.0.2", "development", false, false, false);
        peer_ex(b, "none", "100.64.0.3", "", false, false, false);
        group(b, "all", "old", "dev", "none", NULL);
        policy(b, "p", "r", "all", "all", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "old");
        ASSERT_EQ(2, sr->n_remotepeers);
        ASSERT_EQ(2, sr->networkmap->n_remotepeers);
        ASSERT_STREQ(sr->networkmap->remotepeers[1]->wgpubkey, sr->remotepeers[1]->wgpubkey);
        done(sr);
        sr = sync_of(a, "dev");
        ASSERT_EQ(0, sr->n_remotepeers);
        done(sr);
        sr = sync_of(a, "none");        /* unparsable version: treated as old */
        ASSERT_EQ(2, sr->n_remotepeers);
        done(sr);
        /* a 0.28 agent in the account: the old forwarder port */
        ASSERT_EQ(5353, cp_netmap_account_forwarder_port(a));
        cp_netmap_account_unref(a);
}

/* ---- routes ------------------------------------------------------------------------------ */

static void route(cp_netmap_builder *b, const cp_netmap_route_spec *r) {
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_route(b, r, &err), &err);
}

TEST(routes_distribution_peer_key_groups_exit_node) {
        cp_netmap_builder *b = account(1);
        peer(b, "client", "100.64.0.1");
        peer(b, "r1", "100.64.0.11");
        peer(b, "r2", "100.64.0.12");
        peer(b, "other", "100.64.0.2");         /* sees the routers but is not in the distribution */
        peer(b, "hidden", "100.64.0.3");        /* in the distribution but sees no router */
        group(b, "all", "client", "r1", "r2", "other", "hidden", NULL);
        group(b, "clients", "client", "hidden", NULL);
        group(b, "routers", "r1", "r2", NULL);
        group(b, "ha-dist", "client", "r1", "r2", NULL);
        group(b, "mesh", "client", "r1", "r2", "other", NULL);
        policy(b, "p", "r", "mesh", "mesh", CP_NETMAP_PROTO_ALL, true);
        const char *dist[] = { "clients" }, *rg[] = { "routers" }, *hadist[] = { "ha-dist" };
        route(b, &(cp_netmap_route_spec) {
                .id = "net10", .network = "10.0.0.0/8", .network_type = 1, .net_id = "office", .peer = "r1",
                .groups = dist, .n_groups = 1, .metric = 100, .masquerade = true, .enabled = true });
        route(b, &(cp_netmap_route_spec) {
                .id = "ha", .network = "172.16.0.0/12", .network_type = 1, .net_id = "dc",
                .peer_groups = rg, .n_peer_groups = 1, .groups = hadist, .n_groups = 1, .metric = 9999,
                .enabled = true, .keep_route = true });
        route(b, &(cp_netmap_route_spec) {
                .id = "exit", .network = "0.0.0.0/0", .network_type = 1, .net_id = "exit", .peer = "r2",
                .groups = dist, .n_groups = 1, .metric = 9999, .enabled = true, .skip_auto_apply = true });
        route(b, &(cp_netmap_route_spec) {
                .id = "off", .network = "192.168.0.0/16", .network_type = 1, .net_id = "off", .peer = "r1",
                .groups = dist, .n_groups = 1, .metric = 9999, .enabled = false });
        route(b, &(cp_netmap_route_spec) {      /* IPv6 is not supported: never sent */
                .id = "v6", .network = "fd00:1::/64", .network_type = 2, .net_id = "v6", .peer = "r1",
                .groups = dist, .n_groups = 1, .metric = 9999, .enabled = true });
        const char *dom[] = { "example.com" };
        route(b, &(cp_netmap_route_spec) {
                .id = "dns", .network_type = 3, .net_id = "web", .peer = "r2", .domains = dom, .n_domains = 1,
                .groups = dist, .n_groups = 1, .metric = 9999, .enabled = true });
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "client");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(5, nm->n_routes);
        const Management__Route *rt = find_route(nm, "net10");
        ASSERT_TRUE(rt != NULL);
        ASSERT_STREQ("10.0.0.0/8", rt->network);
        ASSERT_STREQ("key-r1", rt->peer);       /* WireGuard key, not the peer id (pitfall 13) */
        ASSERT_EQ(100, rt->metric);
        ASSERT_TRUE(rt->masquerade);
        ASSERT_STREQ("office", rt->netid);
        ASSERT_EQ(1, rt->networktype);
        rt = find_route(nm, "ha:r1");           /* peer-group routes: one per routing peer */
        ASSERT_TRUE(rt != NULL);
        ASSERT_STREQ("key-r1", rt->peer);
        ASSERT_TRUE(rt->keeproute);
        rt = find_route(nm, "ha:r2");
        ASSERT_TRUE(rt != NULL);
        ASSERT_STREQ("key-r2", rt->peer);
        ASSERT_TRUE(find_route(nm, "ha") == NULL);
        rt = find_route(nm, "exit");
        ASSERT_STREQ("0.0.0.0/0", rt->network);
        ASSERT_TRUE(rt->skipautoapply);
        rt = find_route(nm, "dns");
        ASSERT_STREQ("192.0.2.0/32", rt->network);
        ASSERT_EQ(3, rt->networktype);
        ASSERT_EQ(1, rt->n_domains);
        ASSERT_STREQ("example.com", rt->domains[0]);
        ASSERT_TRUE(find_route(nm, "off") == NULL);     /* disabled */
        ASSERT_TRUE(nm->routesfirewallrulesisempty);    /* not a routing peer */
        done(sr);

        /* not in the distribution group */
        sr = sync_of(a, "other");
        ASSERT_EQ(0, sr->networkmap->n_routes);
        done(sr);
        /* in the distribution group, but no policy lets it reach a router */
        sr = sync_of(a, "hidden");
        ASSERT_EQ(0, sr->networkmap->n_routes);
        done(sr);

        /* The routing peer receives the routes it serves with its own key
         * (the agent sets them up as server routes), never another
         * peer's route of an HA set it serves itself, and a default-permit
         * route firewall rule for each. */
        sr = sync_of(a, "r1");
        nm = sr->networkmap;
        ASSERT_EQ(2, nm->n_routes);
        ASSERT_STREQ("key-r1", find_route(nm, "net10")->peer);
        ASSERT_STREQ("key-r1", find_route(nm, "ha:r1")->peer);
        ASSERT_TRUE(find_route(nm, "ha:r2") == NULL);
        ASSERT_TRUE(find_route(nm, "off") == NULL);
        ASSERT_TRUE(find_route(nm, "exit") == NULL);    /* r1 is not in the distribution */
        ASSERT_EQ(2, nm->n_routesfirewallrules);
        ASSERT_FALSE(nm->routesfirewallrulesisempty);
        const Management__RouteFirewallRule *rf = nm->routesfirewallrules[0];
        ASSERT_EQ(1, rf->n_sourceranges);
        ASSERT_STREQ("0.0.0.0/0", rf->sourceranges[0]);
        ASSERT_STREQ("10.0.0.0/8", rf->destination);
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__ALL, rf->protocol);
        ASSERT_STREQ("net10", rf->routeid);
        ASSERT_TRUE(rf->portinfo != NULL);
        ASSERT_STREQ("ha:r1", nm->routesfirewallrules[1]->routeid);
        done(sr);

        sr = sync_of(a, "r2");
        nm = sr->networkmap;
        ASSERT_TRUE(find_route(nm, "exit") != NULL);
        ASSERT_TRUE(find_route(nm, "exit")->skipautoapply);
        rf = NULL;
        for (size_t i = 0; i < nm->n_routesfirewallrules; i++)
                if (strcmp(nm->routesfirewallrules[i]->routeid, "dns") == 0)
                        rf = nm->routesfirewallrules[i];
        ASSERT_TRUE(rf != NULL);
        ASSERT_TRUE(rf->isdynamic);
        ASSERT_EQ(1, rf->n_domains);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(route_access_control_groups) {
        cp_netmap_builder *b = account(1);
        peer(b, "dev1", "100.64.0.1");
        peer(b, "dev2", "100.64.0.2");
        peer(b, "ops", "100.64.0.3");
        peer(b, "gw", "100.64.0.10");
        group(b, "devs", "dev1", "dev2", NULL);
        group(b, "opsg", "ops", NULL);
        group(b, "gws", "gw", NULL);
        group(b, "acl-db", NULL);
        group(b, "users", "dev1", "dev2", "ops", NULL);
        /* everyone may reach the gateway */
        policy(b, "p-mesh", "r-mesh", "users", "gws", CP_NETMAP_PROTO_ALL, true);
        /* devs may reach the database network on tcp/5432 */
        const char *s[] = { "devs" }, *d[] = { "acl-db" };
        const uint16_t ports[] = { 5432 };
        cp_netmap_rule_spec r = {
                .id = "r-db", .enabled = true, .protocol = CP_NETMAP_PROTO_TCP,
                .sources = s, .n_sources = 1, .destinations = d, .n_destinations = 1,
                .ports = ports, .n_ports = 1,
        };
        policy_ex(b, "p-db", true, &r);
        const char *dist[] = { "users" }, *acg[] = { "acl-db" };
        route(b, &(cp_netmap_route_spec) {
                .id = "db", .network = "10.10.0.0/16", .network_type = 1, .net_id = "db", .peer = "gw",
                .groups = dist, .n_groups = 1, .access_control_groups = acg, .n_access_control_groups = 1,
                .metric = 9999, .enabled = true });
        cp_netmap_account *a = finish(b);

        Management__SyncResponse *sr = sync_of(a, "gw");
        Management__NetworkMap *nm = sr->networkmap;
        ASSERT_EQ(1, nm->n_routesfirewallrules);
        const Management__RouteFirewallRule *rf = nm->routesfirewallrules[0];
        ASSERT_EQ(2, rf->n_sourceranges);
        ASSERT_STREQ("100.64.0.1/32", rf->sourceranges[0]);
        ASSERT_STREQ("100.64.0.2/32", rf->sourceranges[1]);
        ASSERT_STREQ("10.10.0.0/16", rf->destination);
        ASSERT_EQ(MANAGEMENT__RULE_PROTOCOL__TCP, rf->protocol);
        ASSERT_EQ(MANAGEMENT__PORT_INFO__PORT_SELECTION_PORT, rf->portinfo->port_selection_case);
        ASSERT_EQ(5432, rf->portinfo->port);
        ASSERT_TRUE(policy_id_is(&rf->policyid, "p-db"));  /* the policy id here */
        ASSERT_STREQ("db", rf->routeid);
        done(sr);
        cp_netmap_account_unref(a);
}

/* ---- DNS ----------------------------------------------------------------------------------- */

TEST(dns_records_nameservers_and_disabled_management) {
        cp_netmap_account_spec spec = {
                .id = "acc-dns", .serial = 4, .network_cidr = "100.64.0.0/16", .dns_domain = DOMAIN,
                .dns_disabled_groups = (const char *const[]) { "nodns" }, .n_dns_disabled_groups = 1,
        };
        cp_netmap_builder *b = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        peer(b, "a", "100.64.0.1");
        peer(b, "b", "100.64.0.2");
        peer(b, "far", "100.64.0.3");           /* visible to nobody */
        peer(b, "quiet", "100.64.0.4");         /* DNS management disabled */
        peer(b, "ns", "100.64.0.53");           /* is itself the nameserver */
        const char *labels[] = { "alias" };
        cp_netmap_peer_spec xp = { .id = "x", .key = "key-x", .ip = "100.64.0.9", .dns_label = "x",
                                   .extra_dns_labels = labels, .n_extra_dns_labels = 1, .wt_version = NEW_AGENT };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &xp, &err), &err);
        group(b, "mesh", "a", "b", "quiet", "ns", "x", NULL);
        group(b, "nodns", "quiet", NULL);
        group(b, "resolve", "a", "quiet", "ns", NULL);
        group(b, "far", "far", NULL);
        policy(b, "p", "r", "mesh", "mesh", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_nameserver servers[] = { { "100.64.0.53", 1, 53 }, { "1.1.1.1", 1, 53 } };
        const char *nsg[] = { "resolve" }, *nsd[] = { "corp.example" };
        cp_netmap_nsgroup_spec g = { .id = "ns1", .enabled = true, .primary = false, .search_domains_enabled = true,
                                     .nameservers = servers, .n_nameservers = 2, .groups = nsg, .n_groups = 1,
                                     .domains = nsd, .n_domains = 1 };
        ASSERT_OK(cp_netmap_builder_add_nsgroup(b, &g, &err), &err);
        cp_netmap_nsgroup_spec off = { .id = "ns-off", .enabled = false, .nameservers = servers,
                                       .n_nameservers = 1, .groups = nsg, .n_groups = 1 };
        ASSERT_OK(cp_netmap_builder_add_nsgroup(b, &off, &err), &err);
        cp_netmap_account *a = finish(b);
        ASSERT_EQ(22054, cp_netmap_account_forwarder_port(a));

        Management__SyncResponse *sr = sync_of(a, "a");
        Management__DNSConfig *d = sr->networkmap->dnsconfig;
        ASSERT_TRUE(d->serviceenable);
        ASSERT_EQ(22054, d->forwarderport);
        ASSERT_EQ(1, d->n_customzones);
        ASSERT_STREQ(DOMAIN ".", d->customzones[0]->domain);
        /* self + the four visible peers, plus x's extra label; not "far" */
        ASSERT_EQ(6, d->customzones[0]->n_records);
        const Management__SimpleRecord *rec = find_record(sr->networkmap, "a." DOMAIN);
        ASSERT_TRUE(rec != NULL);
        ASSERT_STREQ("100.64.0.1", rec->rdata);
        ASSERT_EQ(1, rec->type);
        ASSERT_STREQ("IN", rec->class_);
        ASSERT_EQ(300, rec->ttl);
        ASSERT_TRUE(find_record(sr->networkmap, "b." DOMAIN) != NULL);
        ASSERT_STREQ("100.64.0.9", find_record(sr->networkmap, "alias." DOMAIN)->rdata);
        ASSERT_TRUE(find_record(sr->networkmap, "far." DOMAIN) == NULL);
        ASSERT_EQ(1, d->n_nameservergroups);
        ASSERT_EQ(2, d->nameservergroups[0]->n_nameservers);
        ASSERT_STREQ("100.64.0.53", d->nameservergroups[0]->nameservers[0]->ip);
        ASSERT_EQ(1, d->nameservergroups[0]->nameservers[0]->nstype);
        ASSERT_EQ(53, d->nameservergroups[0]->nameservers[0]->port);
        ASSERT_TRUE(d->nameservergroups[0]->searchdomainsenabled);
        ASSERT_STREQ("corp.example", d->nameservergroups[0]->domains[0]);
        done(sr);

        /* not in the nameserver group's groups */
        sr = sync_of(a, "b");
        ASSERT_EQ(0, sr->networkmap->dnsconfig->n_nameservergroups);
        ASSERT_TRUE(sr->networkmap->dnsconfig->serviceenable);
        done(sr);
        /* a nameserver does not get its own group */
        sr = sync_of(a, "ns");
        ASSERT_EQ(0, sr->networkmap->dnsconfig->n_nameservergroups);
        done(sr);
        /* disabled management group: no zones, no nameservers */
        sr = sync_of(a, "quiet");
        d = sr->networkmap->dnsconfig;
        ASSERT_TRUE(d != NULL);
        ASSERT_FALSE(d->serviceenable);
        ASSERT_EQ(0, d->n_customzones);
        ASSERT_EQ(0, d->n_nameservergroups);
        ASSERT_EQ(22054, d->forwarderport);
        ASSERT_EQ(4, sr->networkmap->n_remotepeers);    /* the rest of the map is unaffected */
        done(sr);
        /* a peer that sees nobody still has its own record */
        sr = sync_of(a, "far");
        ASSERT_EQ(1, sr->networkmap->dnsconfig->customzones[0]->n_records);
        done(sr);
        cp_netmap_account_unref(a);
}

/* ---- encoding options, determinism, lifetimes ----------------------------------------------- */

TEST(first_message_options_and_session_deadline) {
        cp_netmap_builder *b = account(5);
        cp_error err = { 0 };
        cp_netmap_peer_spec p = { .id = "sso", .key = "key-sso", .ip = "100.64.0.1", .dns_label = "sso",
                                  .wt_version = NEW_AGENT, .ssh_enabled = true,
                                  .session_expires_unix_ns = 1800000000123456789ll };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
        cp_netmap_account *a = finish(b);

        Management__HostConfig signal = MANAGEMENT__HOST_CONFIG__INIT;
        signal.uri = (char *) "signal.example:443";
        signal.protocol = MANAGEMENT__HOST_CONFIG__PROTOCOL__HTTPS;
        Management__NetbirdConfig nbc = MANAGEMENT__NETBIRD_CONFIG__INIT;
        nbc.signal = &signal;
        uint8_t nbc_buf[256], jwt_buf[256];
        size_t nbc_len = management__netbird_config__pack(&nbc, nbc_buf);
        Management__JWTConfig jwt = MANAGEMENT__JWTCONFIG__INIT;
        jwt.issuer = (char *) "https://idp.example/";
        size_t jwt_len = management__jwtconfig__pack(&jwt, jwt_buf);
        cp_netmap_encode_opts o = { .with_netbird_config = true, .netbird_config = nbc_buf,
                                    .netbird_config_len = nbc_len, .jwt_config = jwt_buf,
                                    .jwt_config_len = jwt_len };
        cp_netmap_stats st;
        Management__SyncResponse *sr = sync_opts(a, "sso", &o, &st);
        ASSERT_TRUE(sr->netbirdconfig != NULL);
        ASSERT_STREQ("signal.example:443", sr->netbirdconfig->signal->uri);
        ASSERT_TRUE(sr->peerconfig->sshconfig->sshenabled);
        ASSERT_STREQ("https://idp.example/", sr->peerconfig->sshconfig->jwtconfig->issuer);
        ASSERT_EQ(1800000000, sr->sessionexpiresat->seconds);
        ASSERT_EQ(123456789, sr->sessionexpiresat->nanos);
        ASSERT_TRUE(sr->networkmap->remotepeersisempty);
        ASSERT_EQ(0, st.remote_peers);
        ASSERT_TRUE(st.ssh_enabled);
        done(sr);

        cp_netmap_encode_opts push = { .omit_session_expires = true };
        sr = sync_opts(a, "sso", &push, NULL);
        ASSERT_TRUE(sr->netbirdconfig == NULL);
        ASSERT_TRUE(sr->sessionexpiresat == NULL);
        ASSERT_TRUE(sr->peerconfig->sshconfig->jwtconfig == NULL);
        done(sr);
        cp_netmap_account_unref(a);
}

TEST(encoding_is_deterministic_and_workers_are_independent) {
        cp_netmap_builder *b = account(11);
        char id[16], ip[24];
        for (int i = 0; i < 40; i++) {
                (void) snprintf(id, sizeof id, "p%02d", i);
                (void) snprintf(ip, sizeof ip, "100.64.%d.%d", i / 10, i % 10 + 1);
                peer(b, id, ip);
        }
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_add_group(b, "g", "g", &err), &err);
        for (int i = 0; i < 40; i += 2) {
                (void) snprintf(id, sizeof id, "p%02d", i);
                ASSERT_OK(cp_netmap_builder_add_group_peer(b, "g", id, &err), &err);
        }
        ASSERT_OK(cp_netmap_builder_add_group_peer(b, "g", "nobody", &err), &err);     /* dangling */
        policy(b, "p", "r", "g", "g", CP_NETMAP_PROTO_TCP, false);
        cp_netmap_account *a = finish(b);
        ASSERT_EQ(40, cp_netmap_account_n_peers(a));
        ASSERT_EQ(11, cp_netmap_account_serial(a));
        ASSERT_STREQ("acc1", cp_netmap_account_id(a));
        ASSERT_EQ(3, cp_netmap_account_find_peer_by_key(a, "key-p03"));
        ASSERT_EQ(-ENOENT, cp_netmap_account_find_peer(a, "nobody"));
        ASSERT_STREQ("p05", cp_netmap_account_peer_id(a, 5));

        cp_netmap_worker *w1 = cp_netmap_worker_new(), *w2 = cp_netmap_worker_new();
        for (size_t i = 0; i < 40; i++) {
                const uint8_t *d1, *d2;
                size_t n1, n2;
                ASSERT_OK(cp_netmap_encode_sync(w1, a, i, NULL, &d1, &n1, NULL), NULL);
                ASSERT_OK(cp_netmap_encode_sync(w2, a, (i + 7) % 40, NULL, &d2, &n2, NULL), NULL);
                ASSERT_OK(cp_netmap_encode_sync(w2, a, i, NULL, &d2, &n2, NULL), NULL);
                ASSERT_EQ(n1, n2);
                ASSERT_TRUE(memcmp(d1, d2, n1) == 0);
        }
        ASSERT_EQ(-EINVAL, cp_netmap_encode_sync(w1, a, 40, NULL, &(const uint8_t *) { NULL }, &(size_t) { 0 },
                                                 NULL));
        /* a worker that served a smaller account in between still agrees */
        cp_netmap_builder *small = account(1);
        peer(small, "s1", "100.64.9.1");
        peer(small, "s2", "100.64.9.2");
        group(small, "g", "s1", "s2", NULL);
        policy(small, "p", "r", "g", "g", CP_NETMAP_PROTO_ALL, true);
        cp_netmap_account *sa = finish(small);
        for (size_t i = 0; i < 40; i++) {
                const uint8_t *d1, *d2;
                size_t n1, n2;
                ASSERT_OK(cp_netmap_encode_sync(w2, sa, i % 2, NULL, &d2, &n2, NULL), NULL);
                ASSERT_OK(cp_netmap_encode_sync(w2, a, i, NULL, &d2, &n2, NULL), NULL);
                ASSERT_OK(cp_netmap_encode_sync(w1, a, i, NULL, &d1, &n1, NULL), NULL);
                ASSERT_EQ(n1, n2);
                ASSERT_TRUE(memcmp(d1, d2, n1) == 0);
        }
        cp_netmap_account_unref(sa);
        cp_netmap_worker_free(w1);
        cp_netmap_worker_free(w2);

        /* group members: 20 peers, a one-way tcp rule inside the group */
        Management__SyncResponse *sr = sync_of(a, "p00");
        ASSERT_EQ(19, sr->networkmap->n_remotepeers);
        ASSERT_EQ(38, sr->networkmap->n_firewallrules);         /* IN and OUT from g -> g */
        for (size_t i = 1; i < sr->networkmap->n_remotepeers; i++)
                ASSERT_TRUE(strcmp(sr->networkmap->remotepeers[i - 1]->wgpubkey,
                                   sr->networkmap->remotepeers[i]->wgpubkey) < 0);
        done(sr);
        sr = sync_of(a, "p01");
        ASSERT_TRUE(sr->networkmap->remotepeersisempty);
        done(sr);

        /* references: the snapshot lives until the last unref */
        ASSERT_TRUE(cp_netmap_account_ref(a) == a);
        ASSERT_TRUE(cp_netmap_account_unref(a) == NULL);
        ASSERT_EQ(40, cp_netmap_account_n_peers(a));
        cp_netmap_account_unref(a);
        ASSERT_TRUE(cp_netmap_account_unref(NULL) == NULL);
        ASSERT_TRUE(cp_netmap_worker_free(NULL) == NULL);
}

TEST(builder_refuses_bad_input) {
        cp_netmap_builder *b = account(1);
        cp_error err = { 0 };
        peer(b, "a", "100.64.0.1");
        cp_netmap_peer_spec dup = { .id = "a", .key = "other", .ip = "100.64.0.2" };
        ASSERT_EQ(-EEXIST, cp_netmap_builder_add_peer(b, &dup, &err));
        cp_netmap_peer_spec dupkey = { .id = "b", .key = "key-a", .ip = "100.64.0.2" };
        ASSERT_EQ(-EEXIST, cp_netmap_builder_add_peer(b, &dupkey, &err));
        cp_netmap_peer_spec badip = { .id = "c", .key = "key-c", .ip = "100.64.0.300" };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_peer(b, &badip, &err));
        ASSERT_EQ(-EEXIST, (cp_netmap_builder_add_group(b, "g", NULL, &err),
                            cp_netmap_builder_add_group(b, "g", NULL, &err)));
        cp_netmap_port_range bad[] = { { 10, 5 } };
        cp_netmap_rule_spec r = { .id = "r", .policy_id = "p", .port_ranges = bad, .n_port_ranges = 1 };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_rule(b, &r, &err));
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_route(b, &(cp_netmap_route_spec) { .id = "x", .network = "10/8" },
                                                       &err));
        cp_netmap_builder_free(b);

        cp_netmap_account_spec spec = { .id = "x", .network_cidr = "fd00::/64" };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_new(&spec, &b, &err));
        cp_netmap_protocol pr;
        cp_netmap_action ac;
        ASSERT_OK(cp_netmap_protocol_parse("netbird-ssh", &pr), NULL);
        ASSERT_EQ(CP_NETMAP_PROTO_NETBIRD_SSH, pr);
        ASSERT_EQ(-EINVAL, cp_netmap_protocol_parse("sctp", &pr));
        ASSERT_OK(cp_netmap_action_parse("drop", &ac), NULL);
        ASSERT_EQ(CP_NETMAP_DROP, ac);
}

/* The REST API's views of the maps (accessible peers and their counts)
 * must be what each peer's own encoded map lists, on a shuffled account
 * with one-way, disabled and peer-resource rules, expired peers and a
 * peer waiting for approval. */
TEST(visible_peers_and_counts_match_the_encoded_maps) {
        enum { NP = 60, NG = 8, NPOL = 12 };
        uint32_t seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff)
        cp_netmap_builder *b = account(3);
        cp_error err = { 0 };
        char id[NP][8], gid[NG][8];

        for (int i = 0; i < NP; i++) {
                char ip[20];
                (void) snprintf(id[i], sizeof id[i], "p%02d", i);
                (void) snprintf(ip, sizeof ip, "100.64.1.%d", i + 1);
                if (i == 7) {
                        cp_netmap_peer_spec p = { .id = id[i], .key = "key-p07", .ip = ip, .dns_label = id[i],
                                                  .wt_version = NEW_AGENT, .requires_approval = true };
                        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
                } else
                        peer_ex(b, id[i], ip, NEW_AGENT, i % 9 == 4, false, false);
        }
        for (int g = 0; g < NG; g++) {
                (void) snprintf(gid[g], sizeof gid[g], "g%d", g);
                ASSERT_OK(cp_netmap_builder_add_group(b, gid[g], gid[g], &err), &err);
                for (int i = 0; i < NP; i++)
                        if (RND() % 5 == 0)
                                ASSERT_OK(cp_netmap_builder_add_group_peer(b, gid[g], id[i], &err), &err);
        }
        for (int k = 0; k < NPOL; k++) {
                char pid[8], rid[8];
                const char *src[1] = { gid[RND() % NG] }, *dst[1] = { gid[RND() % NG] };
                (void) snprintf(pid, sizeof pid, "pol%d", k);
                (void) snprintf(rid, sizeof rid, "rule%d", k);
                cp_netmap_rule_spec r = {
                        .id = rid, .enabled = k != 3, .protocol = CP_NETMAP_PROTO_ALL,
                        .bidirectional = RND() % 2, .sources = src, .n_sources = 1,
                        .destinations = dst, .n_destinations = 1,
                        .source_peer = k == 5 ? id[11] : NULL,
                };
                policy_ex(b, pid, k != 8, &r);
        }
#undef RND
        cp_netmap_account *a = finish(b);
        cp_netmap_worker *w = cp_netmap_worker_new();
        uint32_t counts[NP];
        ASSERT_OK(cp_netmap_visible_counts(w, a, counts), NULL);

        size_t nonzero = 0;
        for (int i = 0; i < NP; i++) {
                Management__SyncResponse *sr = sync_of(a, id[i]);
                size_t want = sr->networkmap->n_remotepeers + sr->networkmap->n_offlinepeers;
                cp_netmap_visible v;
                ASSERT_OK(cp_netmap_visible_peers(w, a, (size_t) cp_netmap_account_find_peer(a, id[i]), &v), NULL);
                ASSERT_EQ(want, v.n_remote + v.n_offline);
                ASSERT_EQ(sr->networkmap->n_offlinepeers, v.n_offline);
                for (size_t k = 0; k < v.n_remote; k++)
                        ASSERT_TRUE(find_remote(sr->networkmap->remotepeers, sr->networkmap->n_remotepeers,
                                                cp_netmap_account_peer_id(a, v.remote[k])) != NULL);
                ASSERT_EQ(want, (size_t) counts[cp_netmap_account_find_peer(a, id[i])]);
                nonzero += want > 0;
                done(sr);
        }
        ASSERT_EQ(0, counts[7]);        /* waiting for approval */
        ASSERT_TRUE(nonzero > NP / 2);  /* the shape is not trivially empty */
        ASSERT_EQ(-EINVAL, cp_netmap_visible_peers(w, a, NP, &(cp_netmap_visible) { 0 }));
        cp_netmap_worker_free(w);
        cp_netmap_account_unref(a);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
