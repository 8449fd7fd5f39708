/*
 * common/netmap, custom DNS zones (netmap-zones.c): hand-made snapshots,
 * each peer's map encoded, decoded with protoc-c (and re-packed to the
 * same bytes), and its DNSConfig.CustomZones compared with the expected
 * list written by hand from NetBird's filterPeerAppliedZones and encoder
 * (management/server/types/account.go, account_test.go).
 */
#include "cp/base.h"
#include "cp/netmap.h"
#include "cp/strbuf.h"
#include "cptest.h"
#include "nmtest.h"
#include "management.pb-c.h"

#define DOMAIN "netbird.selfhosted"

static cp_netmap_builder *account(const char *dns_domain, const char *const *disabled, size_t n_disabled) {
        cp_netmap_account_spec spec = {
                .id = "acc-zones",
                .serial = 7,
                .network_cidr = "100.64.0.0/16",
                .dns_domain = dns_domain,
                .dns_disabled_groups = disabled,
                .n_dns_disabled_groups = n_disabled,
        };
        cp_netmap_builder *b = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_new(&spec, &b, &err), &err);
        return b;
}

static void peer_ex(cp_netmap_builder *b, const char *id, const char *ip, bool pending) {
        char key[64];
        cp_error err = { 0 };
        (void) snprintf(key, sizeof key, "key-%s", id);
        cp_netmap_peer_spec p = { .id = id, .key = key, .ip = ip, .dns_label = id, .wt_version = "0.60.0",
                                  .requires_approval = pending };
        ASSERT_OK(cp_netmap_builder_add_peer(b, &p, &err), &err);
}

static void peer(cp_netmap_builder *b, const char *id, const char *ip) {
        peer_ex(b, id, ip, false);
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

/* zone(b, "z1", "corp.example", enabled, search, "g1", "g2", NULL) */
static void zone(cp_netmap_builder *b, const char *id, const char *domain, bool enabled, bool search, ...) {
        const char *groups[8];
        size_t n = 0;
        cp_error err = { 0 };
        va_list ap;
        va_start(ap, search);
        for (const char *g; (g = va_arg(ap, const char *)) && n < ELEMENTSOF(groups);)
                groups[n++] = g;
        va_end(ap);
        cp_netmap_zone_spec z = { .id = id, .domain = domain, .enabled = enabled, .enable_search_domain = search,
                                  .groups = groups, .n_groups = n };
        ASSERT_OK(cp_netmap_builder_add_zone(b, &z, &err), &err);
}

static void rec(cp_netmap_builder *b, const char *zone_id, const char *name, const char *type, const char *content,
                int64_t ttl) {
        cp_error err = { 0 };
        cp_netmap_zone_record_spec r = { .zone_id = zone_id, .name = name, .type = type, .content = content,
                                         .ttl = ttl };
        ASSERT_OK(cp_netmap_builder_add_zone_record(b, &r, &err), &err);
}

static cp_netmap_account *finish(cp_netmap_builder *b) {
        cp_netmap_account *a = NULL;
        cp_error err = { 0 };
        ASSERT_OK(cp_netmap_builder_finish(b, &a, &err), &err);
        return a;
}

static Management__SyncResponse *sync_of(cp_netmap_account *a, const char *peer_id) {
        return nmtest_sync(a, peer_id, NULL, NULL);
}

/* The custom zones of peer_id's map as text, one zone per line:
 * "<domain> search=<0|1> nonauth=<0|1>: <name> <type> <class> <ttl> <rdata>, ..."
 * The peer zone (DOMAIN.) is left out when skip_peer_zone is set; with
 * DNS disabled the text is "dns off". */
static char *zones_text(cp_netmap_account *a, const char *peer_id, bool skip_peer_zone) {
        Management__SyncResponse *sr = sync_of(a, peer_id);
        const Management__DNSConfig *d = sr->networkmap->dnsconfig;
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        if (!d->serviceenable) {
                ASSERT_EQ(0, d->n_customzones);
                cp_strbuf_adds(&sb, "dns off");
        }
        for (size_t i = 0; i < d->n_customzones; i++) {
                const Management__CustomZone *z = d->customzones[i];
                if (skip_peer_zone && strcmp(z->domain, DOMAIN ".") == 0) {
                        ASSERT_EQ(0, i);        /* the peer zone comes first */
                        continue;
                }
                cp_strbuf_addf(&sb, "%s search=%d nonauth=%d:", z->domain, !z->searchdomaindisabled,
                               z->nonauthoritative);
                for (size_t k = 0; k < z->n_records; k++) {
                        const Management__SimpleRecord *r = z->records[k];
                        cp_strbuf_addf(&sb, "%s %s %" PRId64 " %s %" PRId64 " %s", k ? "," : "", r->name, r->type,
                                       r->class_, r->ttl, r->rdata);
                }
                cp_strbuf_adds(&sb, "\n");
        }
        management__sync_response__free_unpacked(sr, NULL);
        char *s = strdup(sb.buf ? sb.buf : "");
        cp_strbuf_release(&sb);
        return s;
}

#define ASSERT_ZONES(expected, a, peer_id)                              \
        do {                                                            \
                char *_t = zones_text(a, peer_id, true);                \
                ASSERT_STREQ(expected, _t);                             \
                free(_t);                                               \
        } while (0)

static const char Z1[] = "corp.example. search=1 nonauth=1:"
                         " www.corp.example. 1 IN 300 10.0.0.10,"
                         " www.corp.example. 28 IN 300 2001:db8::10,"
                         " alias.corp.example. 5 IN 60 www.corp.example.,"
                         " *.apps.corp.example. 1 IN 300 10.0.0.20\n";
static const char Z3[] = "lab.example. search=0 nonauth=1: host.lab.example. 1 IN 0 10.1.0.1\n";
static const char Z5[] = "all.example. search=0 nonauth=1: x.all.example. 5 IN 3600 target.example.\n";

TEST(zones_reach_the_peers_of_their_groups) {
        const char *off[] = { "nodns" };
        cp_netmap_builder *b = account(DOMAIN, off, 1);
        peer(b, "a", "100.64.0.1");             /* g1 */
        peer(b, "b", "100.64.0.2");             /* g2 */
        peer(b, "c", "100.64.0.3");             /* g1 and a DNS-disabled group */
        peer(b, "e", "100.64.0.5");             /* only All */
        peer_ex(b, "p", "100.64.0.6", true);    /* g1, waiting for approval */
        group(b, "All", "a", "b", "c", "e", "p", NULL);
        group(b, "g1", "a", "c", "p", NULL);
        group(b, "g2", "b", NULL);
        group(b, "nodns", "c", NULL);

        /* enabled, search domain on, every record type */
        zone(b, "z1", "corp.example", true, true, "g1", NULL);
        rec(b, "z1", "www.corp.example", "A", "10.0.0.10", 300);
        rec(b, "z1", "www.corp.example", "AAAA", "2001:db8::10", 300);
        rec(b, "z1", "alias.corp.example", "CNAME", "www.corp.example", 60);
        rec(b, "z1", "*.apps.corp.example", "A", "10.0.0.20", 300);
        rec(b, "z1", "mx.corp.example", "MX", "10 mail", 300);         /* unknown type: skipped */
        /* disabled: nobody */
        zone(b, "z2", "off.example", false, true, "g1", "g2", NULL);
        rec(b, "z2", "h.off.example", "A", "10.9.9.9", 300);
        /* a missing group beside a real one; TTL 0; a name already an fqdn */
        zone(b, "z3", "lab.example.", true, false, "missing", "g2", NULL);
        rec(b, "z3", "host.lab.example.", "A", "10.1.0.1", 0);
        /* no records: nobody */
        zone(b, "z4", "empty.example", true, true, "g1", NULL);
        /* for All; a CNAME target already an fqdn */
        zone(b, "z5", "all.example", true, false, "All", NULL);
        rec(b, "z5", "x.all.example", "CNAME", "target.example.", 3600);
        rec(b, "nosuchzone", "y.all.example", "A", "10.0.0.1", 300);   /* dangling: ignored */
        cp_netmap_account *a = finish(b);

        char *expect_a = cp_xasprintf("%s%s", Z1, Z5);
        ASSERT_ZONES(expect_a, a, "a");
        free(expect_a);
        char *expect_b = cp_xasprintf("%s%s", Z3, Z5);
        ASSERT_ZONES(expect_b, a, "b");
        free(expect_b);
        ASSERT_ZONES("dns off", a, "c");
        ASSERT_ZONES(Z5, a, "e");
        ASSERT_ZONES("dns off", a, "p");

        /* the peer zone stays first, with its own flags */
        Management__SyncResponse *sr = sync_of(a, "a");
        const Management__DNSConfig *d = sr->networkmap->dnsconfig;
        ASSERT_EQ(3, d->n_customzones);
        ASSERT_STREQ(DOMAIN ".", d->customzones[0]->domain);
        ASSERT_FALSE(d->customzones[0]->nonauthoritative);
        ASSERT_FALSE(d->customzones[0]->searchdomaindisabled);
        ASSERT_STREQ("corp.example.", d->customzones[1]->domain);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
}

TEST(zones_without_a_peer_dns_domain_and_no_zones) {
        cp_netmap_builder *b = account("", NULL, 0);
        peer(b, "a", "100.64.0.1");
        group(b, "g", "a", NULL);
        zone(b, "z5", "all.example", true, false, "g", NULL);
        rec(b, "z5", "x.all.example", "CNAME", "target.example.", 3600);
        cp_netmap_account *a = finish(b);
        /* no peer zone at all: the custom zone is the only one */
        char *t = zones_text(a, "a", false);
        ASSERT_STREQ(Z5, t);
        free(t);
        cp_netmap_account_unref(a);

        /* an account without zones: only the peer zone */
        b = account(DOMAIN, NULL, 0);
        peer(b, "a", "100.64.0.1");
        a = finish(b);
        Management__SyncResponse *sr = sync_of(a, "a");
        ASSERT_EQ(1, sr->networkmap->dnsconfig->n_customzones);
        ASSERT_STREQ(DOMAIN ".", sr->networkmap->dnsconfig->customzones[0]->domain);
        management__sync_response__free_unpacked(sr, NULL);
        cp_netmap_account_unref(a);
}

TEST(several_zones_keep_their_order_and_share_bytes_between_workers) {
        cp_netmap_builder *b = account(DOMAIN, NULL, 0);
        char id[16], dom[32], name[48];
        peer(b, "a", "100.64.0.1");
        peer(b, "b", "100.64.0.2");
        group(b, "g", "a", "b", NULL);
        for (int i = 0; i < 20; i++) {
                (void) snprintf(id, sizeof id, "z%02d", i);
                (void) snprintf(dom, sizeof dom, "d%02d.example", i);
                zone(b, id, dom, true, i % 2 == 0, "g", NULL);
                (void) snprintf(name, sizeof name, "h.d%02d.example", i);
                rec(b, id, name, "A", "10.0.0.1", i);
        }
        cp_netmap_account *a = finish(b);
        Management__SyncResponse *sr = sync_of(a, "b");
        const Management__DNSConfig *d = sr->networkmap->dnsconfig;
        ASSERT_EQ(21, d->n_customzones);
        for (int i = 0; i < 20; i++) {
                const Management__CustomZone *z = d->customzones[i + 1];
                (void) snprintf(dom, sizeof dom, "d%02d.example.", i);
                ASSERT_STREQ(dom, z->domain);
                ASSERT_EQ(i % 2 != 0, z->searchdomaindisabled);
                ASSERT_EQ(1, z->n_records);
                ASSERT_EQ(i, z->records[0]->ttl);
        }
        management__sync_response__free_unpacked(sr, NULL);
        /* a and b get the same zones (same groups) */
        char *ta = zones_text(a, "a", true), *tb = zones_text(a, "b", true);
        ASSERT_STREQ(ta, tb);
        free(ta);
        free(tb);
        cp_netmap_account_unref(a);
}

TEST(zone_builder_refuses_bad_input) {
        cp_netmap_builder *b = account(DOMAIN, NULL, 0);
        cp_error err = { 0 };
        cp_netmap_zone_spec z = { .id = "z", .domain = "x.example", .enabled = true };
        ASSERT_OK(cp_netmap_builder_add_zone(b, &z, &err), &err);
        ASSERT_EQ(-EEXIST, cp_netmap_builder_add_zone(b, &z, &err));
        cp_netmap_zone_spec nodomain = { .id = "z2", .domain = "" };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_zone(b, &nodomain, &err));
        cp_netmap_zone_record_spec r = { .zone_id = "z", .name = "", .type = "A", .content = "10.0.0.1" };
        ASSERT_EQ(-EINVAL, cp_netmap_builder_add_zone_record(b, &r, &err));
        cp_netmap_builder_free(b);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
