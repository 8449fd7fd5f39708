/*
 * /api/accounts: the caller's account with its settings (openapi Account,
 * AccountSettings, AccountRequest), the settings update and the deletion
 * of the whole account.
 *
 * NetBird's PUT replaces the settings: a required field that is absent
 * reads as false / 0 (so a missing peer_login_expiration fails its range
 * check) and so does an absent optional one, except "extra", which is
 * kept when absent. Fields of the schema this server has no column for
 * are type-checked like NetBird's decoder does and then ignored.
 */
#include "api-activity.h"
#include "api-int.h"
#include "cp/store-tenant.h"
#include "cp/store-services.h"

#include <arpa/inet.h>
#include <ctype.h>

#define NS_PER_S INT64_C(1000000000)
/* Largest number of seconds whose nanoseconds fit a bigint. */
#define MAX_DURATION_S (INT64_MAX / NS_PER_S)
#define HOUR_S INT64_C(3600)
#define LOGIN_EXPIRATION_MAX_S (180 * 24 * HOUR_S)

/* NetBird's limits on the overlay range (handlers/accounts). The /8
 * bound is ours: peer registration allocates in /8 .. /30 only. */
#define RANGE_MIN_BITS 8
#define RANGE_MAX_BITS 28
#define RANGE_MIN_ADDRESSES 10

/* One Account object. The settings the server has no column for answer
 * what a fresh NetBird account says; network_range is the range in use
 * when no override was set, as NetBird reports it. */
#define ACCOUNT_JSON(a)                                                                                   \
        "json_build_object('id', " a ".id,"                                                               \
        " 'settings', json_build_object("                                                                 \
        "  'peer_login_expiration_enabled', " a ".settings_peer_login_expiration_enabled,"                \
        "  'peer_login_expiration', " a ".settings_peer_login_expiration / 1000000000,"                   \
        "  'peer_inactivity_expiration_enabled', " a ".settings_peer_inactivity_expiration_enabled,"      \
        "  'peer_inactivity_expiration', " a ".settings_peer_inactivity_expiration / 1000000000,"         \
        "  'regular_users_view_blocked', " a ".settings_regular_users_view_blocked,"                      \
        "  'groups_propagation_enabled', " a ".settings_groups_propagation_enabled,"                      \
        "  'jwt_groups_enabled', " a ".settings_jwt_groups_enabled,"                                      \
        "  'jwt_groups_claim_name', " a ".settings_jwt_groups_claim_name,"                                \
        "  'jwt_allow_groups', " a ".settings_jwt_allow_groups,"                                          \
        "  'routing_peer_dns_resolution_enabled', " a ".settings_routing_peer_dns_resolution_enabled,"    \
        "  'dns_domain', " a ".settings_dns_domain,"                                                      \
        "  'network_range', COALESCE(" a ".settings_network_range, " a ".network_net)::text,"             \
        "  'peer_expose_enabled', " a ".settings_peer_expose_enabled,"                                    \
        "  'peer_expose_groups', to_json(" a ".settings_peer_expose_groups),"                             \
        "  'extra', json_build_object('peer_approval_enabled', " a ".settings_extra_peer_approval_enabled," \
        "   'user_approval_required', " a ".settings_extra_user_approval_required,"                       \
        "   'network_traffic_logs_enabled', false, 'network_traffic_logs_groups', '[]'::json,"            \
        "   'network_traffic_packet_counter_enabled', false),"                                            \
        "  'lazy_connection_enabled', " a ".settings_lazy_connection_enabled,"                            \
        "  'auto_update_version', '', 'auto_update_always', false, 'metrics_push_enabled', false,"        \
        "  'agent_network_only', false, 'embedded_idp_enabled', false, 'local_auth_disabled', false,"     \
        "  'local_mfa_enabled', false, 'ipv6_enabled_groups', '[]'::json),"                               \
        " 'domain', " a ".domain, 'domain_category', " a ".domain_category,"                              \
        " 'created_at', " API_TS_JSON(a ".created_at") ", 'created_by', " a ".created_by,"                     \
        " 'onboarding', json_build_object('signup_form_pending', false, 'onboarding_flow_pending', false))"

static const char SQL_LIST[] = "SELECT json_build_array(" ACCOUNT_JSON("a") ") FROM accounts a WHERE a.id = $1";
static const char SQL_GET[] = "SELECT " ACCOUNT_JSON("a") " FROM accounts a WHERE a.id = $1";

/* The settings as stored, for the change detection (the dispatcher holds
 * the account row locked). */
static const char SQL_OLD[] =
        "SELECT settings_peer_login_expiration_enabled, settings_peer_login_expiration,"
        " settings_peer_inactivity_expiration_enabled, settings_peer_inactivity_expiration,"
        " settings_groups_propagation_enabled, settings_routing_peer_dns_resolution_enabled,"
        " settings_dns_domain, settings_lazy_connection_enabled, settings_extra_peer_approval_enabled,"
        " settings_extra_user_approval_required, network_net::text, settings_peer_expose_enabled"
        " FROM accounts WHERE id = $1";
enum { OLD_LOGIN_ON, OLD_LOGIN_NS, OLD_INACT_ON, OLD_INACT_NS, OLD_PROPAGATION, OLD_ROUTING_DNS,
       OLD_DNS_DOMAIN, OLD_LAZY, OLD_PEER_APPROVAL, OLD_USER_APPROVAL, OLD_NETWORK, OLD_PEER_EXPOSE };

/* An inactivity expiration of 0 (absent) keeps the stored one: NetBird
 * stores 0, which our schema refuses (and which means nothing while the
 * feature is off). */
static const char SQL_SAVE[] =
        "UPDATE accounts SET settings_peer_login_expiration_enabled = $2::boolean,"
        " settings_peer_login_expiration = $3::bigint * 1000000000,"
        " settings_peer_inactivity_expiration_enabled = $4::boolean,"
        " settings_peer_inactivity_expiration = CASE WHEN $5::bigint > 0 THEN $5::bigint * 1000000000"
        "  ELSE settings_peer_inactivity_expiration END,"
        " settings_regular_users_view_blocked = $6::boolean,"
        " settings_groups_propagation_enabled = $7::boolean,"
        " settings_jwt_groups_enabled = $8::boolean,"
        " settings_jwt_groups_claim_name = $9,"
        " settings_jwt_allow_groups = $10::text[],"
        " settings_routing_peer_dns_resolution_enabled = $11::boolean,"
        " settings_dns_domain = $12,"
        " settings_lazy_connection_enabled = $13::boolean,"
        " settings_extra_peer_approval_enabled = $14::boolean,"
        " settings_extra_user_approval_required = $15::boolean,"
        " settings_network_range = COALESCE($16::cidr, settings_network_range)"
        " WHERE id = $1";

/* Which peers may expose their own services (CreateExpose). */
static const char SQL_SAVE_EXPOSE[] =
        "UPDATE accounts SET settings_peer_expose_enabled = $2::boolean, settings_peer_expose_groups = $3::text[]"
        " WHERE id = $1";

static const char SQL_PEER_COUNT[] = "SELECT count(*) FROM peers WHERE account_id = $1";
/* Re-addressing every peer into a new range takes two steps: the unique
 * (account_id, ip) index is checked row by row, so moving straight from
 * an overlapping old range could collide half-way. Step one parks every
 * peer on a distinct IPv6 address (never inside an IPv4 range), step two
 * numbers them from the first host address, in their old order. */
static const char SQL_PARK_IPS[] =
        "UPDATE peers p SET ip = 'fd00::'::inet + n.rn"
        " FROM (SELECT id, row_number() OVER (ORDER BY ip, id) AS rn FROM peers WHERE account_id = $1) n"
        " WHERE p.account_id = $1 AND p.id = n.id";
static const char SQL_PLACE_IPS[] =
        "UPDATE peers p SET ip = $2::inet + n.rn"
        " FROM (SELECT id, row_number() OVER (ORDER BY ip, id) AS rn FROM peers WHERE account_id = $1) n"
        " WHERE p.account_id = $1 AND p.id = n.id";
static const char SQL_SET_NETWORK[] = "UPDATE accounts SET network_net = $2::cidr WHERE id = $1";

/* Turning group propagation on puts every user's peers into the user's
 * auto-groups (groups that no longer exist are skipped). */
static const char SQL_PROPAGATE[] =
        "INSERT INTO group_peers (account_id, group_id, peer_id)"
        " SELECT $1, g.id, p.id FROM users u"
        " JOIN peers p ON p.account_id = u.account_id AND p.user_id = u.id"
        " JOIN groups g ON g.account_id = u.account_id AND g.id = ANY (u.auto_groups)"
        " WHERE u.account_id = $1 ON CONFLICT DO NOTHING RETURNING peer_id";
/* Turning peer approval off approves every peer still waiting. */
static const char SQL_APPROVE_ALL[] =
        "UPDATE peers SET peer_status_requires_approval = FALSE"
        " WHERE account_id = $1 AND peer_status_requires_approval";

static const char SQL_ACCOUNT_META[] =
        "SELECT jsonb_build_object('account_id', id, 'domain', domain, 'created_at', created_at)::text"
        " FROM accounts WHERE id = $1";
/* Everything of a tenant hangs off its accounts row (ON DELETE CASCADE);
 * the events table has no foreign key, so its rows go explicitly. */

/* ---- GET ------------------------------------------------------------------------------- */

/* NetBird reads the account meta (accounts module) and the settings
 * (settings module); every role that may do one may do the other. */
static int list_accounts(api_ctx *c) {
        const char *p[1] = { c->account_id };
        bool found;
        int r;

        if (!api_allowed(c, API_MOD_SETTINGS, API_READ))
                return api_error(c, 403, "permission denied");
        r = api_sql_reply(c, 200, SQL_LIST, 1, p, &found);
        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "account not found: %s", c->account_id);
        return 0;
}

/* ---- the request body ------------------------------------------------------------------ */

typedef enum field_kind {
        F_BOOL,
        F_INT,
        F_STR,
        F_STRARR,
        F_OBJECT,
} field_kind;

typedef struct settings_req {
        bool login_on;
        int64_t login_s;
        bool inact_on;
        int64_t inact_s;
        bool users_view_blocked;
        bool propagation;
        bool jwt_groups;
        const char *jwt_claim;
        cp_strbuf jwt_allow;
        bool routing_dns;
        const char *dns_domain;
        const char *network_range;
        bool lazy;
        bool peer_expose;
        cp_strbuf expose_groups;
        /* extra */
        bool has_extra;
        bool peer_approval;
        bool user_approval;
} settings_req;

/* A field of the body: where it goes (NO_SLOT: type-checked, then
 * ignored, as this server has nothing to store it in). */
typedef struct field_spec {
        const char *key;
        field_kind kind;
        ptrdiff_t slot;
} field_spec;

#define NO_SLOT ((ptrdiff_t) -1)
#define SLOT(f) ((ptrdiff_t) offsetof(settings_req, f))

static const field_spec settings_fields[] = {
        { "peer_login_expiration_enabled", F_BOOL, SLOT(login_on) },
        { "peer_login_expiration", F_INT, SLOT(login_s) },
        { "peer_inactivity_expiration_enabled", F_BOOL, SLOT(inact_on) },
        { "peer_inactivity_expiration", F_INT, SLOT(inact_s) },
        { "regular_users_view_blocked", F_BOOL, SLOT(users_view_blocked) },
        { "groups_propagation_enabled", F_BOOL, SLOT(propagation) },
        { "jwt_groups_enabled", F_BOOL, SLOT(jwt_groups) },
        { "jwt_groups_claim_name", F_STR, SLOT(jwt_claim) },
        { "jwt_allow_groups", F_STRARR, SLOT(jwt_allow) },
        { "routing_peer_dns_resolution_enabled", F_BOOL, SLOT(routing_dns) },
        { "dns_domain", F_STR, SLOT(dns_domain) },
        { "network_range", F_STR, SLOT(network_range) },
        { "lazy_connection_enabled", F_BOOL, SLOT(lazy) },
        { "network_range_v6", F_STR, NO_SLOT },
        { "peer_expose_enabled", F_BOOL, SLOT(peer_expose) },
        { "peer_expose_groups", F_STRARR, SLOT(expose_groups) },
        { "auto_update_version", F_STR, NO_SLOT },
        { "auto_update_always", F_BOOL, NO_SLOT },
        { "metrics_push_enabled", F_BOOL, NO_SLOT },
        { "agent_network_only", F_BOOL, NO_SLOT },
        { "dashboard_features", F_OBJECT, NO_SLOT },
        { "embedded_idp_enabled", F_BOOL, NO_SLOT },
        { "local_auth_disabled", F_BOOL, NO_SLOT },
        { "local_mfa_enabled", F_BOOL, NO_SLOT },
        { "ipv6_enabled_groups", F_STRARR, NO_SLOT },
        { NULL },
};

static const field_spec extra_fields[] = {
        { "peer_approval_enabled", F_BOOL, SLOT(peer_approval) },
        { "user_approval_required", F_BOOL, SLOT(user_approval) },
        { "network_traffic_logs_enabled", F_BOOL, NO_SLOT },
        { "network_traffic_logs_groups", F_STRARR, NO_SLOT },
        { "network_traffic_packet_counter_enabled", F_BOOL, NO_SLOT },
        { NULL },
};

/* Onboarding state is not kept here (always "nothing pending"). */
static const field_spec onboarding_fields[] = {
        { "signup_form_pending", F_BOOL, NO_SLOT },
        { "onboarding_flow_pending", F_BOOL, NO_SLOT },
        { NULL },
};

/* Reads obj's fields into s by table; API_FAIL (400) on a wrong type. */
static int parse_fields(api_ctx *c, json_t *obj, const field_spec *spec, settings_req *s) {
        for (const field_spec *f = spec; f->key; f++) {
                char *slot = f->slot == NO_SLOT ? NULL : (char *) s + f->slot;
                bool b;
                int64_t i;
                const char *str;
                json_t *o;
                cp_strbuf ignored;
                int r;

                switch (f->kind) {
                case F_BOOL:
                        r = api_field_bool(c, obj, f->key, &b);
                        if (r == 1 && slot)
                                *(bool *) slot = b;
                        break;
                case F_INT:
                        r = api_field_int(c, obj, f->key, -MAX_DURATION_S, MAX_DURATION_S, &i);
                        if (r == 1 && slot)
                                *(int64_t *) slot = i;
                        break;
                case F_STR:
                        r = api_field_str(c, obj, f->key, &str);
                        if (r == 1 && slot)
                                *(const char **) slot = str;
                        break;
                case F_STRARR:
                        if (slot) {
                                r = api_field_strarr(c, obj, f->key, (cp_strbuf *) slot, NULL);
                                break;
                        }
                        cp_strbuf_init(&ignored);
                        r = api_field_strarr(c, obj, f->key, &ignored, NULL);
                        cp_strbuf_release(&ignored);
                        break;
                case F_OBJECT:
                default:
                        r = api_field_object(c, obj, f->key, &o);
                        break;
                }
                if (r < 0)
                        return API_FAIL;
        }
        return 0;
}

static int parse_request(api_ctx *c, settings_req *s) {
        json_t *body = api_body(c), *settings = NULL, *extra = NULL, *onboarding = NULL;

        if (!body)
                return API_FAIL;
        if (api_field_object(c, body, "settings", &settings) < 0 ||
            api_field_object(c, body, "onboarding", &onboarding) < 0)
                return API_FAIL;
        if (parse_fields(c, settings, settings_fields, s) < 0 ||
            parse_fields(c, onboarding, onboarding_fields, s) < 0)
                return API_FAIL;
        if (api_field_object(c, settings, "extra", &extra) < 0)
                return API_FAIL;
        s->has_extra = extra != NULL;
        if (parse_fields(c, extra, extra_fields, s) < 0)
                return API_FAIL;
        if (s->jwt_allow.len == 0)
                cp_strbuf_adds(&s->jwt_allow, "{}");
        if (s->expose_groups.len == 0)
                cp_strbuf_adds(&s->expose_groups, "{}");
        return 0;
}

/* ---- validation ------------------------------------------------------------------------ */

/* NetBird's domain syntax (routes' and nameservers' too), without the
 * "*." wildcard prefix a DNS domain may not have. */
static bool domain_ok(const char *d) {
        return strncmp(d, "*.", 2) != 0 && api_domain_valid(d);
}

/* An IPv4 prefix in Go's netip.ParsePrefix syntax, masked. */
typedef struct range4 {
        uint32_t base;          /* host order */
        int bits;
        char text[INET_ADDRSTRLEN + 4];
        char addr[INET_ADDRSTRLEN];
} range4;

static int bad_cidr(api_ctx *c, const char *s, const char *why) {
        return api_error(c, 422, "invalid CIDR format: netip.ParsePrefix(\"%s\"): %s", s, why);
}

static int parse_range(api_ctx *c, const char *s, range4 *ret) {
        const char *slash = strrchr(s, '/');
        char addr[64];
        struct in_addr in4;
        struct in6_addr in6;

        if (!slash)
                return bad_cidr(c, s, "no '/'");
        if ((size_t) (slash - s) >= sizeof addr)
                return bad_cidr(c, s, "ParseAddr: unable to parse IP");
        memcpy(addr, s, (size_t) (slash - s));
        addr[slash - s] = '\0';
        if (inet_pton(AF_INET6, addr, &in6) == 1)
                return api_error(c, 422, "network range must be an IPv4 address");
        if (inet_pton(AF_INET, addr, &in4) != 1)
                return api_error(c, 422, "invalid CIDR format: netip.ParsePrefix(\"%s\"): ParseAddr(\"%s\"):"
                                 " unable to parse IP", s, addr);
        const char *b = slash + 1;
        size_t nb = strlen(b);
        if (nb == 0 || nb > 2 || strspn(b, "0123456789") != nb || (nb == 2 && b[0] == '0'))
                return api_error(c, 422, "invalid CIDR format: netip.ParsePrefix(\"%s\"): bad bits after slash:"
                                 " \"%s\"", s, b);
        int bits = atoi(b);
        if (bits > 32)
                return bad_cidr(c, s, "prefix length out of range");
        uint32_t mask = bits == 0 ? 0 : UINT32_MAX << (32 - bits);
        ret->base = ntohl(in4.s_addr) & mask;
        ret->bits = bits;
        in4.s_addr = htonl(ret->base);
        (void) inet_ntop(AF_INET, &in4, ret->addr, sizeof ret->addr);
        (void) snprintf(ret->text, sizeof ret->text, "%s/%d", ret->addr, bits);
        return 0;
}

/* NetBird's checks on a new range: no special-purpose space, at least
 * RANGE_MIN_ADDRESSES and room for every peer plus half again. */
static int check_range(api_ctx *c, const range4 *n) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        uint32_t a = n->base;
        int r;

        if ((a >> 24) == 127)
                return api_error(c, 422, "loopback address range not allowed");
        if ((a >> 28) == 0xe)
                return api_error(c, 422, "multicast address range not allowed");
        if ((a >> 16) == 0xa9fe)
                return api_error(c, 422, "link-local address range not allowed");
        if (n->bits > RANGE_MAX_BITS)
                return api_error(c, 422, "network range too small: minimum size is /%d for IPv4", RANGE_MAX_BITS);
        if (n->bits < RANGE_MIN_BITS)
                return api_error(c, 422, "network range too large: maximum size is /%d for IPv4", RANGE_MIN_BITS);
        r = api_sql(c, SQL_PEER_COUNT, 1, p, &rows);
        if (r < 0)
                return r;
        int64_t peers = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        int64_t need = peers + peers / 2;
        int64_t hosts = (INT64_C(1) << (32 - n->bits)) - 2;
        if (need < RANGE_MIN_ADDRESSES)
                need = RANGE_MIN_ADDRESSES;
        if (hosts < need)
                return api_error(c, 422, "network range too small: need at least %" PRId64 " addresses for %" PRId64
                                 " peers + buffer, but range provides %" PRId64, need, peers, hosts);
        return 0;
}

static int validate(api_ctx *c, const settings_req *s, range4 *range) {
        if (s->network_range && *s->network_range) {
                int r = parse_range(c, s->network_range, range);
                if (r == 0)
                        r = check_range(c, range);
                if (r < 0)
                        return r;
        }
        if (s->login_s > LOGIN_EXPIRATION_MAX_S)
                return api_error(c, 422, "peer login expiration can't be larger than 180 days");
        if (s->login_s < HOUR_S)
                return api_error(c, 422, "peer login expiration can't be smaller than one hour");
        if (s->inact_s < 0)
                return api_error(c, 422, "peer inactivity expiration can't be negative");
        if (s->dns_domain && *s->dns_domain && !domain_ok(s->dns_domain))
                return api_error(c, 422, "invalid domain \"%s\" provided for dns domain", s->dns_domain);
        if (s->peer_expose && strcmp(s->expose_groups.buf, "{}") == 0)
                return api_error(c, 422, "peer expose requires at least one group");
        return 0;
}

/* ---- PUT ------------------------------------------------------------------------------- */

static bool col_true(cp_store_rows *rows, int col) {
        const char *v = cp_store_rows_get(rows, 0, col);
        return v && strcmp(v, "t") == 0;
}

static const char *tf(bool b) {
        return b ? "true" : "false";
}

/* An event whose code depends on a boolean that changed. */
static int toggle_event(api_ctx *c, bool old, bool new, int on, int off) {
        if (old == new)
                return 0;
        return api_event(c, new ? on : off, c->account_id, NULL);
}

/* Moves the account and every peer into the new range. */
static int renumber(api_ctx *c, const range4 *range) {
        const char *p1[1] = { c->account_id };
        const char *p2[2] = { c->account_id, range->addr };
        const char *p3[2] = { c->account_id, range->text };
        int r;

        r = api_sql(c, SQL_PARK_IPS, 1, p1, NULL);
        if (r == 0)
                r = api_sql(c, SQL_PLACE_IPS, 2, p2, NULL);
        if (r == 0)
                r = api_sql(c, SQL_SET_NETWORK, 2, p3, NULL);
        return r;
}

/* Work that follows from a changed setting, before the events: the new
 * range, group propagation, approving waiting peers. */
static int apply_side_effects(api_ctx *c, const settings_req *s, cp_store_rows *old, const range4 *range,
                              bool range_changed) {
        const char *p[1] = { c->account_id };
        int r;

        if (range_changed) {
                r = renumber(c, range);
                if (r < 0)
                        return r;
                api_changed(c);
        }
        if (s->propagation && !col_true(old, OLD_PROPAGATION)) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                r = api_sql(c, SQL_PROPAGATE, 1, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) > 0)
                        api_changed(c);
        }
        if (s->has_extra && col_true(old, OLD_PEER_APPROVAL) && !s->peer_approval) {
                r = api_sql(c, SQL_APPROVE_ALL, 1, p, NULL);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* NetBird's events for the settings that changed, in its order. The
 * inactivity events follow the codes' meaning (enabled / disabled /
 * duration updated); NetBird itself never writes 65. */
static int settings_events(api_ctx *c, const settings_req *s, cp_store_rows *old, const range4 *range,
                           bool range_changed) {
        int64_t old_login_ns = strtoll(cp_store_rows_get(old, 0, OLD_LOGIN_NS), NULL, 10);
        int64_t old_inact_ns = strtoll(cp_store_rows_get(old, 0, OLD_INACT_NS), NULL, 10);
        const char *old_domain = cp_store_rows_get(old, 0, OLD_DNS_DOMAIN);
        const char *new_domain = s->dns_domain ? s->dns_domain : "";
        int r = 0;

        r = toggle_event(c, col_true(old, OLD_ROUTING_DNS), s->routing_dns,
                         API_ACT_ACCOUNT_ROUTING_PEER_DNS_RESOLUTION_ENABLED,
                         API_ACT_ACCOUNT_ROUTING_PEER_DNS_RESOLUTION_DISABLED);
        if (r == 0)
                r = toggle_event(c, col_true(old, OLD_LAZY), s->lazy, API_ACT_ACCOUNT_LAZY_CONNECTION_ENABLED,
                                 API_ACT_ACCOUNT_LAZY_CONNECTION_DISABLED);
        if (r == 0)
                r = toggle_event(c, col_true(old, OLD_LOGIN_ON), s->login_on,
                                 API_ACT_ACCOUNT_PEER_LOGIN_EXPIRATION_ENABLED,
                                 API_ACT_ACCOUNT_PEER_LOGIN_EXPIRATION_DISABLED);
        if (r == 0 && old_login_ns != s->login_s * NS_PER_S)
                r = api_event(c, API_ACT_ACCOUNT_PEER_LOGIN_EXPIRATION_DURATION_UPDATED, c->account_id, NULL);
        if (r == 0)
                r = toggle_event(c, col_true(old, OLD_PROPAGATION), s->propagation,
                                 API_ACT_USER_GROUP_PROPAGATION_ENABLED, API_ACT_USER_GROUP_PROPAGATION_DISABLED);
        if (r == 0)
                r = toggle_event(c, col_true(old, OLD_INACT_ON), s->inact_on,
                                 API_ACT_ACCOUNT_PEER_INACTIVITY_EXPIRATION_ENABLED,
                                 API_ACT_ACCOUNT_PEER_INACTIVITY_EXPIRATION_DISABLED);
        if (r == 0 && s->inact_s > 0 && old_inact_ns != s->inact_s * NS_PER_S)
                r = api_event(c, API_ACT_ACCOUNT_PEER_INACTIVITY_EXPIRATION_DURATION_UPDATED, c->account_id, NULL);
        if (r == 0 && strcmp(old_domain, new_domain) != 0)
                r = api_event_kv(c, API_ACT_ACCOUNT_DNS_DOMAIN_UPDATED, c->account_id, "old_dns_domain", old_domain,
                                 "new_dns_domain", new_domain, NULL);
        if (r == 0 && range_changed)
                r = api_event_kv(c, API_ACT_ACCOUNT_NETWORK_RANGE_UPDATED, c->account_id, "old_network_range",
                                 cp_store_rows_get(old, 0, OLD_NETWORK), "new_network_range", range->text, NULL);
        if (r == 0)
                r = toggle_event(c, col_true(old, OLD_PEER_EXPOSE), s->peer_expose,
                                 API_ACT_ACCOUNT_PEER_EXPOSE_ENABLED, API_ACT_ACCOUNT_PEER_EXPOSE_DISABLED);
        if (r == 0 && s->has_extra)
                r = toggle_event(c, col_true(old, OLD_PEER_APPROVAL), s->peer_approval,
                                 API_ACT_ACCOUNT_PEER_APPROVAL_ENABLED, API_ACT_ACCOUNT_PEER_APPROVAL_DISABLED);
        return r;
}

/* Whether agents need new maps (or a new login deadline): what NetBird
 * pushes to every peer after a settings update. */
static bool maps_affected(const settings_req *s, cp_store_rows *old) {
        int64_t old_login_ns = strtoll(cp_store_rows_get(old, 0, OLD_LOGIN_NS), NULL, 10);

        return col_true(old, OLD_LOGIN_ON) != s->login_on || old_login_ns != s->login_s * NS_PER_S ||
               strcmp(cp_store_rows_get(old, 0, OLD_DNS_DOMAIN), s->dns_domain ? s->dns_domain : "") != 0 ||
               col_true(old, OLD_LAZY) != s->lazy || col_true(old, OLD_ROUTING_DNS) != s->routing_dns ||
               (s->has_extra && col_true(old, OLD_PEER_APPROVAL) != s->peer_approval);
}

static int save_settings(api_ctx *c, const settings_req *s, const range4 *range, bool has_range) {
        char login[24], inact[24];

        (void) snprintf(login, sizeof login, "%" PRId64, s->login_s);
        (void) snprintf(inact, sizeof inact, "%" PRId64, s->inact_s);
        const char *p[16] = {
                c->account_id,  tf(s->login_on),   login,
                tf(s->inact_on), inact,            tf(s->users_view_blocked),
                tf(s->propagation), tf(s->jwt_groups), s->jwt_claim ? s->jwt_claim : "",
                s->jwt_allow.buf, tf(s->routing_dns), s->dns_domain ? s->dns_domain : "",
                tf(s->lazy),    tf(s->peer_approval), tf(s->user_approval),
                has_range ? range->text : NULL,
        };
        int r = api_sql(c, SQL_SAVE, 16, p, NULL);
        if (r < 0)
                return r;
        const char *e[3] = { c->account_id, tf(s->peer_expose), s->expose_groups.buf };
        return api_sql(c, SQL_SAVE_EXPOSE, 3, e, NULL);
}

/* The stored extra settings stand when the request has no "extra". */
static void keep_extra(settings_req *s, cp_store_rows *old) {
        if (s->has_extra)
                return;
        s->peer_approval = col_true(old, OLD_PEER_APPROVAL);
        s->user_approval = col_true(old, OLD_USER_APPROVAL);
}

static int update_settings(api_ctx *c, settings_req *s) {
        _cleanup_rows_ cp_store_rows *old = NULL;
        const char *p[1] = { c->account_id };
        range4 range = { 0 };
        bool has_range = s->network_range && *s->network_range;
        int r;

        r = validate(c, s, &range);
        if (r < 0)
                return r;
        r = api_sql(c, SQL_OLD, 1, p, &old);
        if (r < 0)
                return r;
        if (cp_store_rows_count(old) != 1)
                return api_error(c, 404, "account not found: %s", c->account_id);
        keep_extra(s, old);
        r = api_zones_check_dns_domain(c, cp_store_rows_get(old, 0, OLD_DNS_DOMAIN), s->dns_domain);
        if (r < 0)
                return r;
        bool range_changed = has_range && strcmp(cp_store_rows_get(old, 0, OLD_NETWORK), range.text) != 0;
        r = apply_side_effects(c, s, old, &range, range_changed);
        if (r == 0)
                r = save_settings(c, s, &range, has_range);
        if (r == 0)
                r = settings_events(c, s, old, &range, range_changed);
        if (r < 0)
                return r;
        if (maps_affected(s, old))
                api_changed(c);
        bool found;
        return api_sql_reply(c, 200, SQL_GET, 1, p, &found);
}

static int update_account(api_ctx *c) {
        settings_req s = { 0 };
        int r;

        cp_strbuf_init(&s.jwt_allow);
        cp_strbuf_init(&s.expose_groups);
        r = parse_request(c, &s);
        if (r == 0 && strcmp(c->param[0], c->account_id) != 0)
                r = api_error(c, 403, "failed to validate user permissions: user is not part of this account");
        if (r == 0)
                r = update_settings(c, &s);
        cp_strbuf_release(&s.jwt_allow);
        cp_strbuf_release(&s.expose_groups);
        return r;
}

/* ---- DELETE ---------------------------------------------------------------------------- */

/* Owner only, with NetBird's own message rather than the dispatcher's.
 * The AccountDeleted event outlives the account, as in NetBird's
 * separate event store. */
static int delete_account(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *meta = NULL;
        const char *p[1] = { c->account_id };
        int r;

        if (strcmp(c->param[0], c->account_id) != 0)
                return api_error(c, 403, "failed to validate user permissions: user is not part of this account");
        /* An MSP user acting in a tenant deletes it through the MSP API,
         * which checks what the tenant was (docs/api.md, "MSP"). */
        if (c->home_account_id[0])
                return api_error(c, 403, "user is not allowed to delete account. "
                                 "only account owner can delete account");
        if (!api_allowed(c, API_MOD_ACCOUNTS, API_DELETE))
                return api_error(c, 403, "user is not allowed to delete account. "
                                 "only account owner can delete account");
        r = api_sql(c, SQL_ACCOUNT_META, 1, p, &meta);
        if (r < 0)
                return r;
        if (cp_store_rows_count(meta) != 1)
                return api_error(c, 404, "account not found: %s", c->account_id);
        /* Every row of the account (cp/store-tenant.h); its services'
         * REMOVED rows tell the proxies. */
        cp_store_account_deleted del = { 0 };
        cp_error err = { 0 };
        r = cp_store_tx_account_delete_all(c->tx, c->account_id, &del, &err);
        if (r == -EBUSY)
                return api_error(c, 412, "%s", err.message);
        if (r < 0)
                return api_internal(c, "deleting the account", &err);
        if (del.proxy_seq > c->proxy_seq)
                c->proxy_seq = del.proxy_seq;
        (void) snprintf(c->gone_account, sizeof c->gone_account, "%s", c->account_id);
        c->gone_serial = del.serial;
        r = api_event(c, API_ACT_ACCOUNT_DELETED, c->account_id, cp_store_rows_get(meta, 0, 0));
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

const api_route api_accounts_routes[] = {
        { "GET", "/api/accounts", API_MOD_ACCOUNTS, API_READ, list_accounts },
        { "PUT", "/api/accounts/{accountId}", API_MOD_SETTINGS, API_UPDATE, update_account },
        /* Checked in the handler, for NetBird's message. */
        { "DELETE", "/api/accounts/{accountId}", API_MOD_SELF, API_DELETE, delete_account },
        { NULL },
};
