/*
 * netmap-zones.c: the account's custom DNS zones (NetBird's zones module)
 * as DNSConfig.CustomZones.
 *
 * NetBird's filterPeerAppliedZones and encoder: a zone reaches a peer when
 * it is enabled, holds at least one record and one of its distribution
 * groups holds the peer; only peers with DNS management get zones (the
 * same rule as the peer zone and nameservers). Each zone is one
 * CustomZone {Domain: the domain with a trailing dot, Records,
 * SearchDomainDisabled: !enable_search_domain, NonAuthoritative: true};
 * each record a SimpleRecord {Name: fqdn, Type: 1 A / 28 AAAA / 5 CNAME,
 * Class "IN", TTL, RData: the content, a CNAME's as an fqdn}. They follow
 * the peer zone in the map, in the order added (the loader: by zone id;
 * records by id).
 *
 * Nothing in a zone depends on the receiving peer: records are encoded
 * as they are added, each zone's CustomZone body once in finish, and the
 * per-peer step only tests the zone's groups against the peer's and
 * copies the bytes.
 */
#include "cp/base.h"

#include "netmap-int.h"

enum { DNS_TYPE_A = 1, DNS_TYPE_CNAME = 5, DNS_TYPE_AAAA = 28 };

static bool empty(const char *s) {
        return !s || !*s;
}

/* s with a trailing dot (miekg/dns Fqdn) as a length-delimited field. */
static void put_fqdn(nm_buf *b, unsigned field, const char *s) {
        size_t n = strlen(s);
        bool dot = n && s[n - 1] == '.';

        nm_put_varint(b, NM_TAG(field, NM_WT_LEN));
        nm_put_varint(b, n + (dot ? 0 : 1));
        nm_buf_add(b, s, n);
        if (!dot)
                nm_buf_add(b, ".", 1);
}

int cp_netmap_builder_add_zone(cp_netmap_builder *b, const cp_netmap_zone_spec *z, cp_error *reterr) {
        cp_netmap_account *a = b->a;

        if (!z || empty(z->id) || empty(z->domain))
                return cp_error_set(reterr, -EINVAL, "netmap: zone id or domain missing");
        if (a->n_zones >= CP_NETMAP_MAX_OBJECTS || z->n_groups > 65536)
                return cp_error_set(reterr, -E2BIG, "netmap: too many zones or zone groups");
        if (cp_netmap__map_get(&a->zone_by_id, z->id) >= 0)
                return cp_error_set(reterr, -EEXIST, "netmap: duplicate zone %s", z->id);
        if (a->n_zones == a->cap_zones) {
                a->cap_zones = a->cap_zones ? a->cap_zones * 2 : 8;
                a->zones = cp_xrealloc(a->zones, (size_t) a->cap_zones * sizeof *a->zones);
        }
        nm_zone *n = &a->zones[a->n_zones];
        *n = (nm_zone) {
                .id = cp_netmap__arena_strdup(&a->arena, z->id),
                .domain = cp_netmap__arena_strdup(&a->arena, z->domain),
                .enabled = z->enabled,
                .search = z->enable_search_domain,
                .n_groups = (uint32_t) z->n_groups,
        };
        if (z->n_groups) {
                n->groups = cp_netmap__arena_alloc(&a->arena, z->n_groups * sizeof *n->groups);
                for (size_t i = 0; i < z->n_groups; i++)
                        n->groups[i] = cp_netmap__arena_strdup(&a->arena, z->groups[i]);
        }
        (void) cp_netmap__map_put(&a->zone_by_id, n->id, a->n_zones);
        a->n_zones++;
        return 0;
}

int cp_netmap_builder_add_zone_record(cp_netmap_builder *b, const cp_netmap_zone_record_spec *r,
                                      cp_error *reterr) {
        cp_netmap_account *a = b->a;
        nm_buf rec = { 0 };
        int type;

        if (!r || empty(r->zone_id) || empty(r->name) || !r->type || !r->content)
                return cp_error_set(reterr, -EINVAL, "netmap: zone record incomplete");
        int64_t zi = cp_netmap__map_get(&a->zone_by_id, r->zone_id);
        if (zi < 0)
                return 0;       /* a dangling record: ignored */
        if (strcmp(r->type, "A") == 0)
                type = DNS_TYPE_A;
        else if (strcmp(r->type, "AAAA") == 0)
                type = DNS_TYPE_AAAA;
        else if (strcmp(r->type, "CNAME") == 0)
                type = DNS_TYPE_CNAME;
        else
                return 0;       /* NetBird skips unknown types too */
        nm_zone *z = &a->zones[zi];
        if (z->n_recs >= CP_NETMAP_MAX_OBJECTS)
                return cp_error_set(reterr, -E2BIG, "netmap: zone %s: too many records", z->id);

        /* SimpleRecord: 1 Name, 2 Type, 3 Class, 4 TTL, 5 RData */
        put_fqdn(&rec, 1, r->name);
        nm_put_uint(&rec, 2, (uint64_t) type);
        nm_put_str(&rec, 3, "IN");
        nm_put_uint(&rec, 4, (uint64_t) r->ttl);
        if (type == DNS_TYPE_CNAME)
                put_fqdn(&rec, 5, r->content);
        else
                nm_put_str(&rec, 5, r->content);
        nm_put_lenfield(&z->recs, 2, rec.data, rec.len);
        cp_netmap__buf_release(&rec);
        z->n_recs++;
        return 0;
}

void cp_netmap__zones_finish(cp_netmap_account *a) {
        for (uint32_t i = 0; i < a->n_zones; i++) {
                nm_zone *z = &a->zones[i];
                size_t n = z->n_groups ? z->n_groups : 1;
                z->group_idx = cp_netmap__arena_alloc(&a->arena, n * sizeof *z->group_idx);
                z->n_group_idx = 0;
                for (uint32_t k = 0; k < z->n_groups; k++) {
                        int64_t g = cp_netmap__map_get(&a->group_by_id, z->groups[k]);
                        if (g >= 0)
                                z->group_idx[z->n_group_idx++] = (uint32_t) g;
                }
                if (z->enabled && z->n_recs && z->n_group_idx) {
                        /* CustomZone: 1 Domain, 2 Records, 3 SearchDomainDisabled, 4 NonAuthoritative */
                        size_t s = a->blob.len;
                        put_fqdn(&a->blob, 1, z->domain);
                        nm_buf_add(&a->blob, z->recs.data, z->recs.len);
                        nm_put_bool(&a->blob, 3, !z->search);
                        nm_put_bool(&a->blob, 4, true);
                        z->msg = (nm_span) { (uint32_t) s, (uint32_t) (a->blob.len - s) };
                }
                cp_netmap__buf_release(&z->recs);
        }
}

void cp_netmap__zones_free(cp_netmap_account *a) {
        for (uint32_t i = 0; i < a->n_zones; i++)
                cp_netmap__buf_release(&a->zones[i].recs);
        free(a->zones);
        cp_netmap__map_release(&a->zone_by_id);
}

void cp_netmap__zones_pick(cp_netmap_worker *w, const cp_netmap_account *a) {
        w->zones.n = 0;
        if (!w->dns)
                return;
        for (uint32_t i = 0; i < a->n_zones; i++) {
                const nm_zone *z = &a->zones[i];
                if (!z->msg.len)
                        continue;
                for (uint32_t k = 0; k < z->n_group_idx; k++) {
                        uint32_t g = z->group_idx[k];
                        if ((w->grp[g >> 6] >> (g & 63)) & 1) {
                                nm_vec_push(&w->zones, i);
                                break;
                        }
                }
        }
}

size_t cp_netmap__zones_size(const cp_netmap_worker *w, const cp_netmap_account *a) {
        size_t n = 0;

        for (size_t i = 0; i < w->zones.n; i++)
                n += nm_fsize(a->zones[w->zones.v[i]].msg.len);
        return n;
}

uint8_t *cp_netmap__zones_write(uint8_t *o, const cp_netmap_worker *w, const cp_netmap_account *a) {
        for (size_t i = 0; i < w->zones.n; i++) {
                nm_span s = a->zones[w->zones.v[i]].msg;
                *o++ = NM_TAG(3, NM_WT_LEN);    /* DNSConfig.CustomZones */
                o = nm_vput(o, s.len);
                memcpy(o, a->blob.data + s.off, s.len);
                o += s.len;
        }
        return o;
}
