/*
 * netmap-load.c: a snapshot from PostgreSQL. The store reads the rows
 * (cp/store-snapshot.h, one consistent transaction); this file turns them
 * into builder calls and applies the two rules that need the database
 * clock: login expiry and the session deadline (sections 4.3 and 6, the
 * same rules services/management applies on Login).
 */
#include "cp/base.h"

#include "cp/netmap.h"
#include "cp/posture.h"
#include "cp/store-snapshot.h"

typedef struct load_ctx {
        cp_netmap_builder *b;
        const char *default_dns_domain;
        int64_t now_ns;
        bool expiration_enabled;
        int64_t expiration_ns;
} load_ctx;

static int on_account(void *ud, const cp_store_snap_account *a, cp_error *reterr) {
        load_ctx *x = ud;
        cp_netmap_account_spec spec = {
                .id = a->id,
                .serial = a->network_serial > 0 ? (uint64_t) a->network_serial : 0,
                .network_cidr = a->network_cidr,
                .dns_domain = a->dns_domain[0] ? a->dns_domain : x->default_dns_domain,
                .lazy_connection_enabled = a->lazy_connection_enabled,
                .routing_peer_dns_resolution_enabled = a->routing_peer_dns_resolution_enabled,
                .dns_disabled_groups = a->dns_disabled_groups,
                .n_dns_disabled_groups = a->n_dns_disabled_groups,
        };
        x->now_ns = a->now_unix_ns;
        x->expiration_enabled = a->login_expiration_enabled;
        x->expiration_ns = a->login_expiration_ns;
        return cp_netmap_builder_new(&spec, &x->b, reterr);
}

static int on_peer(void *ud, const cp_store_snap_peer *p, cp_error *reterr) {
        load_ctx *x = ud;
        /* Only SSO peers (with a user) expire; setup-key peers never do. */
        bool sso = p->user_id[0] != 0;
        bool tracked = sso && x->expiration_enabled && p->login_expiration_enabled && p->last_login_unix_ns > 0;
        int64_t deadline = tracked ? p->last_login_unix_ns + x->expiration_ns : 0;
        cp_netmap_peer_spec spec = {
                .id = p->id,
                .key = p->key,
                .ip = p->ip,
                .dns_label = p->dns_label,
                .extra_dns_labels = p->extra_dns_labels,
                .n_extra_dns_labels = p->n_extra_dns_labels,
                .ssh_key = p->ssh_key,
                .wt_version = p->wt_version,
                .ssh_enabled = p->ssh_enabled,
                .server_ssh_allowed = p->server_ssh_allowed,
                .cap_source_prefixes = p->cap_source_prefixes,
                .login_expired = sso && (p->status_login_expired || (tracked && deadline <= x->now_ns)),
                /* NetBird's open-source validator validates every peer
                 * (GetValidatedPeers): the stored flag is not consulted
                 * (docs/protocol.md "Peer approval"). */
                .requires_approval = false,
                .session_expires_unix_ns = deadline,
        };
        return cp_netmap_builder_add_peer(x->b, &spec, reterr);
}

static int on_group(void *ud, const char *id, const char *name, cp_error *reterr) {
        return cp_netmap_builder_add_group(((load_ctx *) ud)->b, id, name, reterr);
}

static int on_group_peer(void *ud, const char *group_id, const char *peer_id, cp_error *reterr) {
        return cp_netmap_builder_add_group_peer(((load_ctx *) ud)->b, group_id, peer_id, reterr);
}

static int on_policy(void *ud, const char *id, bool enabled, cp_error *reterr) {
        return cp_netmap_builder_add_policy(((load_ctx *) ud)->b, id, enabled, reterr);
}

static const char *peer_resource(const char *id, const char *type) {
        return id && *id && type && strcmp(type, "peer") == 0 ? id : NULL;
}

/* A network resource (host, subnet, domain) as a rule's destination. */
static const char *network_resource(const char *id, const char *type) {
        return id && *id && type && *type && strcmp(type, "peer") != 0 ? id : NULL;
}

static int on_rule(void *ud, const cp_store_snap_rule *r, cp_error *reterr) {
        load_ctx *x = ud;
        cp_netmap_rule_spec spec = {
                .id = r->id,
                .policy_id = r->policy_id,
                .enabled = r->enabled,
                .bidirectional = r->bidirectional,
                .sources = r->sources,
                .n_sources = r->n_sources,
                .destinations = r->destinations,
                .n_destinations = r->n_destinations,
                .source_peer = peer_resource(r->source_resource_id, r->source_resource_type),
                .destination_peer = peer_resource(r->destination_resource_id, r->destination_resource_type),
                .destination_resource = network_resource(r->destination_resource_id, r->destination_resource_type),
        };
        if (cp_netmap_protocol_parse(r->protocol, &spec.protocol) < 0 ||
            cp_netmap_action_parse(r->action, &spec.action) < 0)
                return cp_error_set(reterr, -EBADMSG, "netmap: rule %s: unknown protocol or action", r->id);

        uint16_t *ports = cp_xmalloc((r->n_ports ? r->n_ports : 1) * sizeof *ports);
        cp_netmap_port_range *ranges = cp_xmalloc((r->n_port_ranges ? r->n_port_ranges : 1) * sizeof *ranges);
        int ret = 0;
        for (size_t i = 0; i < r->n_ports; i++) {
                if (r->ports[i] < 0 || r->ports[i] > 65535)
                        ret = -EBADMSG;
                ports[i] = (uint16_t) r->ports[i];
        }
        for (size_t i = 0; i < r->n_port_ranges; i++) {
                int32_t s = r->port_ranges[2 * i], e = r->port_ranges[2 * i + 1];
                if (s < 0 || e > 65535 || s > e)
                        ret = -EBADMSG;
                ranges[i] = (cp_netmap_port_range) { (uint16_t) s, (uint16_t) e };
        }
        if (ret < 0)
                ret = cp_error_set(reterr, ret, "netmap: rule %s: port out of range", r->id);
        else {
                spec.ports = ports;
                spec.n_ports = r->n_ports;
                spec.port_ranges = ranges;
                spec.n_port_ranges = r->n_port_ranges;
                ret = cp_netmap_builder_add_rule(x->b, &spec, reterr);
        }
        free(ports);
        free(ranges);
        return ret;
}

static int on_route(void *ud, const cp_store_snap_route *r, cp_error *reterr) {
        cp_netmap_route_spec spec = {
                .id = r->id,
                .network = r->network,
                .network_type = r->network_type,
                .net_id = r->net_id,
                .peer = r->peer,
                .peer_groups = r->peer_groups,
                .n_peer_groups = r->n_peer_groups,
                .groups = r->groups,
                .n_groups = r->n_groups,
                .access_control_groups = r->access_control_groups,
                .n_access_control_groups = r->n_access_control_groups,
                .domains = r->domains,
                .n_domains = r->n_domains,
                .metric = r->metric,
                .masquerade = r->masquerade,
                .enabled = r->enabled,
                .keep_route = r->keep_route,
                .skip_auto_apply = r->skip_auto_apply,
        };
        return cp_netmap_builder_add_route(((load_ctx *) ud)->b, &spec, reterr);
}

static int on_nsgroup(void *ud, const cp_store_snap_nsgroup *g, cp_error *reterr) {
        cp_netmap_nameserver *ns = cp_xcalloc(g->n_nameservers ? g->n_nameservers : 1, sizeof *ns);
        for (size_t i = 0; i < g->n_nameservers; i++)
                ns[i] = (cp_netmap_nameserver) {
                        .ip = g->nameservers[i].ip,
                        /* NetBird's NameServerType: 1 = udp, 0 = invalid */
                        .ns_type = strcmp(g->nameservers[i].ns_type, "udp") == 0 ? 1 : 0,
                        .port = g->nameservers[i].port,
                };
        cp_netmap_nsgroup_spec spec = {
                .id = g->id,
                .enabled = g->enabled,
                .primary = g->primary,
                .search_domains_enabled = g->search_domains_enabled,
                .nameservers = ns,
                .n_nameservers = g->n_nameservers,
                .groups = g->groups,
                .n_groups = g->n_groups,
                .domains = g->domains,
                .n_domains = g->n_domains,
        };
        int r = cp_netmap_builder_add_nsgroup(((load_ctx *) ud)->b, &spec, reterr);
        free(ns);
        return r;
}

static int on_zone(void *ud, const cp_store_snap_zone *z, cp_error *reterr) {
        cp_netmap_zone_spec spec = {
                .id = z->id,
                .domain = z->domain,
                .enabled = z->enabled,
                .enable_search_domain = z->enable_search_domain,
                .groups = z->groups,
                .n_groups = z->n_groups,
        };
        return cp_netmap_builder_add_zone(((load_ctx *) ud)->b, &spec, reterr);
}

static int on_zone_record(void *ud, const cp_store_snap_zone_record *r, cp_error *reterr) {
        cp_netmap_zone_record_spec spec = {
                .zone_id = r->zone_id,
                .name = r->name,
                .type = r->type,
                .content = r->content,
                .ttl = r->ttl,
        };
        return cp_netmap_builder_add_zone_record(((load_ctx *) ud)->b, &spec, reterr);
}

static int on_network_resource(void *ud, const cp_store_snap_network_resource *r, cp_error *reterr) {
        cp_netmap_network_resource_spec spec = {
                .id = r->id,
                .network_id = r->network_id,
                .name = r->name,
                .prefix = r->prefix,
                .domain = r->domain,
                .enabled = r->enabled,
        };
        if (cp_netmap_resource_type_parse(r->type, &spec.type) < 0)
                return cp_error_set(reterr, -EBADMSG, "netmap: network resource %s: unknown type", r->id);
        return cp_netmap_builder_add_network_resource(((load_ctx *) ud)->b, &spec, reterr);
}

static int on_network_router(void *ud, const cp_store_snap_network_router *r, cp_error *reterr) {
        cp_netmap_network_router_spec spec = {
                .id = r->id,
                .network_id = r->network_id,
                .peer = r->peer,
                .peer_groups = r->peer_groups,
                .n_peer_groups = r->n_peer_groups,
                .metric = r->metric,
                .masquerade = r->masquerade,
                .enabled = r->enabled,
        };
        return cp_netmap_builder_add_network_router(((load_ctx *) ud)->b, &spec, reterr);
}

static int on_group_resource(void *ud, const char *group_id, const char *resource_id, cp_error *reterr) {
        return cp_netmap_builder_add_group_resource(((load_ctx *) ud)->b, group_id, resource_id, reterr);
}

static int on_posture_check(void *ud, const char *id, const char *checks_json, cp_error *reterr) {
        return cp_netmap_builder_add_posture_check(((load_ctx *) ud)->b, id, checks_json, reterr);
}

static int on_policy_posture(void *ud, const char *policy_id, const char *const *ids, size_t n, cp_error *reterr) {
        return cp_netmap_builder_set_policy_posture_checks(((load_ctx *) ud)->b, policy_id, ids, n, reterr);
}

static int on_posture_peer(void *ud, const cp_store_snap_posture_peer *p, cp_error *reterr) {
        cp_posture_peer m = {
                .wt_version = p->wt_version,
                .go_os = p->go_os,
                .os_version = p->os_version,
                .kernel_version = p->kernel_version,
                .net_addrs = p->net_addrs,
                .n_net_addrs = p->n_net_addrs,
                .connection_ip = p->connection_ip,
                .running = p->running,
                .n_running = p->n_running,
                .country_code = p->country_code,
                .city_name = p->city_name,
        };
        return cp_netmap_builder_set_peer_posture(((load_ctx *) ud)->b, p->id, &m, reterr);
}

static const cp_store_snapshot_sink sink = {
        .account = on_account,
        .peer = on_peer,
        .group = on_group,
        .group_peer = on_group_peer,
        .policy = on_policy,
        .rule = on_rule,
        .route = on_route,
        .nsgroup = on_nsgroup,
        .zone = on_zone,
        .zone_record = on_zone_record,
        .network_resource = on_network_resource,
        .network_router = on_network_router,
        .group_resource = on_group_resource,
        .posture_check = on_posture_check,
        .policy_posture = on_policy_posture,
        .posture_peer = on_posture_peer,
};

/* Finishes what a load (r) left in x. */
static int finish_load(load_ctx *x, int r, const char *account_id, cp_netmap_account **ret, cp_error *reterr) {
        if (r < 0) {
                cp_netmap_builder_free(x->b);
                return r;
        }
        if (!x->b)      /* cannot happen: the account row comes first */
                return cp_error_set(reterr, -ENOENT, "netmap: no account %s", account_id);
        return cp_netmap_builder_finish(x->b, ret, reterr);
}

int cp_netmap_load(cp_store *s, const char *account_id, const char *default_dns_domain, cp_netmap_account **ret,
                   cp_error *reterr) {
        load_ctx x = { .default_dns_domain = default_dns_domain };
        int r = cp_store_snapshot_load(s, account_id, &sink, &x, reterr);

        return finish_load(&x, r, account_id, ret, reterr);
}

int cp_netmap_load_tx(cp_store_tx *tx, const char *account_id, const char *default_dns_domain,
                      cp_netmap_account **ret, cp_error *reterr) {
        load_ctx x = { .default_dns_domain = default_dns_domain };
        int r = cp_store_snapshot_load_tx(tx, account_id, &sink, &x, reterr);

        return finish_load(&x, r, account_id, ret, reterr);
}
