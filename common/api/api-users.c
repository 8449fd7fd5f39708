/*
 * /api/users and /api/users/{userId}/tokens: users (openapi User,
 * UserRequest, UserCreateRequest), the caller with its permissions
 * (UserPermissions) and personal access tokens (PersonalAccessToken,
 * PersonalAccessTokenGenerated, PersonalAccessTokenRequest).
 *
 * There is no identity provider behind this server, so the only users
 * POST can create are service users; regular users come from the admin
 * CLI. A token's plain text exists only in the POST response: the table
 * keeps its hash (cp_crypto_pat_hash), which is what authentication looks
 * up.
 *
 * A user id of another account reads as an unknown user (404) on every
 * route, so nothing tells whether it exists elsewhere.
 */
#include "api-activity.h"
#include "api-int.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/store-pii.h"
#include "cp/store-expose.h"

#include <ctype.h>

/* One User object; cur is the caller's id (is_current). A service user
 * is shown under its service user name. The reply is expanded
 * (cp_pii_expand_json): plain text that may start with "pii1:" goes
 * through CP_PII_PLAIN (the id may be an IdP's sub). */
#define USER_JSON(u, cur)                                                                                  \
        "json_build_object('id', " CP_PII_PLAIN(u ".id") ", 'email', " CP_PII_SQL(u ".pii_key", u ".email") ","             \
        " 'name', CASE WHEN " u ".is_service_user THEN " CP_PII_PLAIN(u ".service_user_name")                             \
        " ELSE " CP_PII_SQL(u ".pii_key", u ".name") " END,"                                               \
        " 'role', " u ".role, 'auto_groups', " u ".auto_groups,"                                           \
        " 'status', CASE WHEN " u ".blocked THEN 'blocked' ELSE 'active' END,"                            \
        " 'last_login', " API_TS_OR_ZERO_JSON(u ".last_login") ","                                             \
        " 'is_current', " u ".id = " cur ", 'is_service_user', " u ".is_service_user,"                     \
        " 'is_blocked', " u ".blocked, 'pending_approval', " u ".pending_approval, 'issued', " u ".issued)"

/* One PersonalAccessToken; last_used is left out until the first use. */
#define PAT_JSON(t)                                                                                        \
        "json_strip_nulls(json_build_object('id', " t ".id, 'name', " t ".name,"                            \
        " 'expiration_date', " API_TS_JSON(t ".expiration_date") ", 'created_by', " t ".created_by,"           \
        " 'created_at', " API_TS_JSON(t ".created_at") ", 'last_used', " API_TS_JSON(t ".last_used") "))"

/* NetBird's peer event meta (Peer.EventMeta); $3 is the server's DNS
 * domain, used when the account has none of its own. */
#define PEER_META_JSON(t)                                                                                  \
        "jsonb_build_object('name', " t ".name, 'fqdn', CASE WHEN COALESCE(NULLIF(a.settings_dns_domain, ''),"\
        " $3, '') = '' THEN '' ELSE " t ".dns_label || '.' || COALESCE(NULLIF(a.settings_dns_domain, ''), $3)" \
        " END, 'ip', host(" t ".ip), 'created_at', " t ".created_at,"                                      \
        " 'location_city_name', " t ".location_city_name, 'location_country_code', " t ".location_country_code," \
        " 'location_geo_name_id', " t ".location_geo_name_id,"                                             \
        " 'location_connection_ip', COALESCE(host(" t ".location_connection_ip), ''))"

/* ---- SQL: users ---------------------------------------------------------------------------- */

/* $2 the caller, $3 NULL or the service_user filter, $4 whether the
 * caller may see everyone (else only themselves, as NetBird answers a
 * regular user). Non-deletable service users (integrations) are hidden. */
static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" USER_JSON("u", "$2") " ORDER BY u.created_at, u.id), '[]')"
        " FROM users u WHERE u.account_id = $1 AND NOT (u.is_service_user AND u.non_deletable)"
        " AND ($3::boolean IS NULL OR u.is_service_user = $3::boolean) AND ($4::boolean OR u.id = $2)";
static const char SQL_GET[] = "SELECT " USER_JSON("u", "$3") " FROM users u WHERE u.account_id = $1 AND u.id = $2";
/* The caller with "permissions" ($2: the modules object). */
static const char SQL_CURRENT[] =
        "SELECT (" USER_JSON("u", "u.id") "::jsonb || jsonb_build_object('permissions', jsonb_build_object("
        " 'is_restricted', u.role IN ('user', 'billing_admin') AND a.settings_regular_users_view_blocked,"
        " 'modules', $3::jsonb)))::text"
        " FROM users u JOIN accounts a ON a.id = u.account_id WHERE u.account_id = $1 AND u.id = $2";
/* The same for an MSP user acting inside tenant $1 (api_msp_enter): the
 * user's row of their MSP account $4 with the role they took ($5) and the
 * tenant's restriction setting. */
static const char SQL_CURRENT_ACTING[] =
        "SELECT (" USER_JSON("u", "u.id") "::jsonb || jsonb_build_object('role', $5::text,"
        " 'permissions', jsonb_build_object("
        " 'is_restricted', $5 IN ('user', 'billing_admin') AND a.settings_regular_users_view_blocked,"
        " 'modules', $3::jsonb)))::text"
        " FROM users u JOIN accounts a ON a.id = $1 WHERE u.account_id = $4 AND u.id = $2";
static const char SQL_FIND[] =
        "SELECT role, is_service_user, blocked, auto_groups::text, service_user_name, non_deletable, issued,"
        " name, email, " API_TS_JSON("created_at") ", pii_key FROM users WHERE account_id = $1 AND id = $2";
/* U_NAME and U_EMAIL are as stored: sealed with the key U_PII_KEY names. */
enum { U_ROLE, U_SERVICE, U_BLOCKED, U_AUTO_GROUPS, U_SERVICE_NAME, U_NON_DELETABLE, U_ISSUED, U_NAME, U_EMAIL,
       U_CREATED_AT, U_PII_KEY };
/* The first of $2 that is not a group of the account, or is "All". */
static const char SQL_INSERT_SERVICE[] =
        "INSERT INTO users (id, account_id, role, is_service_user, service_user_name, auto_groups, issued)"
        " VALUES ($1, $2, $3, TRUE, $4, $5::text[], 'api')";
static const char SQL_UPDATE[] =
        "UPDATE users SET role = $3, blocked = $4::boolean, auto_groups = $5::text[]"
        " WHERE account_id = $1 AND id = $2";
static const char SQL_SET_ROLE[] = "UPDATE users SET role = $3 WHERE account_id = $1 AND id = $2";
static const char SQL_PROPAGATION_ON[] = "SELECT settings_groups_propagation_enabled FROM accounts WHERE id = $1";

/* Groups added to ($3 new, $4 old) and removed from a user's
 * auto-groups, applied to the user's peers. */
#define GROUP_DIFF_CTES                                                                                     \
        "WITH added AS (SELECT DISTINCT x AS gid FROM unnest($3::text[]) x WHERE NOT (x = ANY ($4::text[]))),"  \
        " removed AS (SELECT DISTINCT x AS gid FROM unnest($4::text[]) x WHERE NOT (x = ANY ($3::text[])))"
static const char SQL_PROPAGATE[] =
        GROUP_DIFF_CTES ","
        " ins AS (INSERT INTO group_peers (account_id, group_id, peer_id)"
        "  SELECT $1, g.id, p.id FROM added JOIN groups g ON g.account_id = $1 AND g.id = added.gid"
        "  JOIN peers p ON p.account_id = $1 AND p.user_id = $2 ON CONFLICT DO NOTHING RETURNING 1),"
        " del AS (DELETE FROM group_peers gp USING peers p WHERE gp.account_id = $1 AND p.account_id = $1"
        "  AND p.user_id = $2 AND gp.peer_id = p.id AND gp.group_id IN (SELECT gid FROM removed) RETURNING 1)"
        " SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM del)";
/* GroupAddedToUser / GroupRemovedFromUser per existing group ($5
 * initiator, $6/$7 the codes), added ones first. */
static const char SQL_GROUP_EVENTS[] =
        GROUP_DIFF_CTES
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT ch.act, $5, u.id, $1, jsonb_build_object('group', g.name, 'group_id', g.id,"
        "  'is_service_user', u.is_service_user, 'user_name', u.service_user_name)"
        " FROM (SELECT gid, $6::int AS act, 0 AS o FROM added UNION ALL SELECT gid, $7::int, 1 FROM removed) ch"
        " JOIN groups g ON g.account_id = $1 AND g.id = ch.gid JOIN users u ON u.account_id = $1 AND u.id = $2"
        " ORDER BY ch.o, g.name, g.id";

/* A blocked user's peers must log in again: NetBird marks them login
 * expired, each with a PeerLoginExpired event in the user's name. */
static const char SQL_EXPIRE_PEERS[] =
        "WITH e AS (UPDATE peers p SET peer_status_login_expired = TRUE"
        "  WHERE p.account_id = $1 AND p.user_id = $2 AND NOT p.peer_status_login_expired RETURNING p.*)"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $4::int, e.user_id, e.id, e.account_id, " PEER_META_JSON("e")
        " || jsonb_build_object('reason', 'blocked owner account')"
        " FROM e JOIN accounts a ON a.id = e.account_id";

/* Deleting a regular user deletes their peers (NetBird's deletePeers):
 * first the policies whose rules name one of them as a resource
 * (PolicyRemoved, target the peer), then the peers (PeerRemovedByUser,
 * not for browser peers), group memberships by cascade. $4/$5 codes. */
static const char SQL_DELETE_PEER_POLICIES[] =
        "WITH gone AS (SELECT DISTINCT ON (po.id) po.id, po.name, pe.id AS peer_id"
        "  FROM policies po JOIN policy_rules r ON r.account_id = po.account_id AND r.policy_id = po.id"
        "  JOIN peers pe ON pe.account_id = po.account_id AND pe.user_id = $2"
        "   AND pe.id IN (r.source_resource_id, r.destination_resource_id)"
        "  WHERE po.account_id = $1 ORDER BY po.id, pe.id),"
        " d AS (DELETE FROM policies po USING gone WHERE po.account_id = $1 AND po.id = gone.id"
        "  RETURNING gone.peer_id, gone.name)"
        " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        " SELECT $4::int, $3, d.peer_id, $1, jsonb_build_object('name', d.name) FROM d";
static const char SQL_DELETE_PEERS[] =
        "WITH d AS (DELETE FROM peers WHERE account_id = $1 AND user_id = $2 RETURNING *),"
        CP_STORE_SQL_EXPOSE_GONE("d") ","
        " ev AS (INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
        "  SELECT $5::int, $4, d.id, d.account_id, " PEER_META_JSON("d")
        "  FROM d JOIN accounts a ON a.id = d.account_id WHERE d.meta_kernel_version <> 'wasm')"
        " SELECT count(*), COALESCE((SELECT max(seq) FROM xc), 0) FROM d";
/* Tokens go with the user (foreign key cascade). */
static const char SQL_DELETE_USER[] = "DELETE FROM users WHERE account_id = $1 AND id = $2";

/* ---- SQL: tokens ------------------------------------------------------------------------------ */

static const char SQL_PAT_LIST[] =
        "SELECT COALESCE(json_agg(" PAT_JSON("t") " ORDER BY t.created_at, t.id), '[]')"
        " FROM personal_access_tokens t WHERE t.account_id = $1 AND t.user_id = $2";
static const char SQL_PAT_GET[] =
        "SELECT " PAT_JSON("t") " FROM personal_access_tokens t WHERE t.account_id = $1 AND t.user_id = $2"
        " AND t.id = $3";
static const char SQL_PAT_NAME[] =
        "SELECT name FROM personal_access_tokens WHERE account_id = $1 AND user_id = $2 AND id = $3";
static const char SQL_PAT_INSERT[] =
        "INSERT INTO personal_access_tokens (id, account_id, user_id, name, hashed_token, expiration_date,"
        " created_by) VALUES ($1, $2, $3, $4, $5, CURRENT_TIMESTAMP + make_interval(days => $6::int), $7)";
static const char SQL_PAT_DELETE[] =
        "DELETE FROM personal_access_tokens WHERE account_id = $1 AND user_id = $2 AND id = $3";

#define PAT_MIN_DAYS 1
#define PAT_MAX_DAYS 365

/* ---- helpers ------------------------------------------------------------------------------------ */

/* NetBird's roles (types.StrRoleToUserRole: any letter case). */
static const char *const roles[] = { "owner", "admin", "user", "billing_admin", "auditor", "network_admin" };

/* The role as stored (lower case), or NULL when unknown. */
static const char *role_name(const char *s) {
        for (size_t i = 0; s && i < ELEMENTSOF(roles); i++)
                if (strcasecmp(s, roles[i]) == 0)
                        return roles[i];
        return NULL;
}

/* The user row, or 404 "user: <id> not found" (also for another
 * account's user). */
static int find_user(api_ctx *c, const char *id, cp_store_rows **ret) {
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_FIND, 2, p, ret);

        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) != 1)
                return api_error(c, 404, "user: %s not found", id);
        return 0;
}

static int reply_user(api_ctx *c, const char *id) {
        const char *p[3] = { c->account_id, id, c->user_id };
        bool found;
        int r = api_sql_reply_pii(c, 200, SQL_GET, 3, p, &found);

        if (r == 0 && !found)
                return api_error(c, 404, "user: %s not found", id);
        return r;
}

static void json_str_field(cp_strbuf *sb, const char *key, const char *value, bool first) {
        cp_strbuf_addf(sb, "%s\"%s\":\"", first ? "" : ",", key);
        cp_strbuf_add_json_escaped(sb, value ? value : "");
        cp_strbuf_addch(sb, '"');
}

/* ---- GET /api/users ------------------------------------------------------------------------------ */

/* Go's strconv.ParseBool. */
static int parse_go_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
        static const char *const no[] = { "0", "f", "F", "FALSE", "false", "False" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Everyone for roles that may read users; a regular user gets only
 * themselves (NetBird answers so rather than 403). */
static int list_users(api_ctx *c) {
        const char *q = api_query(c, "service_user");
        const char *filter = NULL;
        bool service = false, found;

        if (q && *q) {
                if (parse_go_bool(q, &service) < 0)
                        return api_error(c, 422, "invalid service_user query parameter");
                filter = service ? "true" : "false";
        }
        const char *p[4] = { c->account_id, c->user_id, filter,
                             api_allowed(c, API_MOD_USERS, API_READ) ? "true" : "false" };
        return api_sql_reply_pii(c, 200, SQL_LIST, 4, p, &found);
}

/* ---- GET /api/users/current --------------------------------------------------------------------- */

/* NetBird's permission modules as /users/current reports them, each
 * answered by api_allowed() so the map and the checks never disagree.
 * Modules this server does not serve are reported as not allowed, which
 * keeps the dashboard away from pages that would only fail. */
static const struct {
        const char *name;
        bool served;
        api_module module;
} perm_modules[] = {
        { "networks", true, API_MOD_NETWORKS },
        { "peers", true, API_MOD_PEERS },
        { "remote_jobs", false, API_MOD_PUBLIC },
        { "groups", true, API_MOD_GROUPS },
        { "settings", true, API_MOD_SETTINGS },
        { "accounts", true, API_MOD_ACCOUNTS },
        { "dns", true, API_MOD_DNS },
        { "nameservers", true, API_MOD_NAMESERVERS },
        { "events", true, API_MOD_EVENTS },
        { "policies", true, API_MOD_POLICIES },
        { "routes", true, API_MOD_ROUTES },
        { "users", true, API_MOD_USERS },
        { "setup_keys", true, API_MOD_SETUP_KEYS },
        { "pats", true, API_MOD_PATS },
        { "identity_providers", false, API_MOD_PUBLIC },
        { "services", true, API_MOD_SERVICES },
        { "agent_network", false, API_MOD_PUBLIC },
        { "agent_network.providers", false, API_MOD_PUBLIC },
        { "agent_network.policies", false, API_MOD_PUBLIC },
        { "agent_network.guardrails", false, API_MOD_PUBLIC },
        { "agent_network.budgets", false, API_MOD_PUBLIC },
        { "agent_network.usage", false, API_MOD_PUBLIC },
        { "agent_network.logs", false, API_MOD_PUBLIC },
        { "agent_network.settings", false, API_MOD_PUBLIC },
};

static const struct {
        const char *name;
        api_op op;
} perm_ops[] = {
        { "read", API_READ },
        { "create", API_CREATE },
        { "update", API_UPDATE },
        { "delete", API_DELETE },
};

/* tenants: add the MSP "tenants" module, all allowed. */
static void permission_modules(const api_ctx *c, bool tenants, cp_strbuf *out) {
        bool first = true;

        cp_strbuf_addch(out, '{');
        for (size_t m = 0; m < ELEMENTSOF(perm_modules); m++) {
                /* Only what is served: the dashboard fills absent modules
                 * in as denied (PermissionsProvider), and a module it sees
                 * allowed is a page it opens. */
                if (!perm_modules[m].served)
                        continue;
                cp_strbuf_addf(out, "%s\"%s\":{", first ? "" : ",", perm_modules[m].name);
                first = false;
                for (size_t o = 0; o < ELEMENTSOF(perm_ops); o++) {
                        bool ok = api_allowed(c, perm_modules[m].module, perm_ops[o].op);
                        cp_strbuf_addf(out, "%s\"%s\":%s", o ? "," : "", perm_ops[o].name, ok ? "true" : "false");
                }
                cp_strbuf_addch(out, '}');
        }
        if (tenants)
                cp_strbuf_adds(out, ",\"tenants\":{\"read\":true,\"create\":true,\"update\":true,\"delete\":true}");
        cp_strbuf_addch(out, '}');
}

/* Any authenticated user but a service user (NetBird: permission
 * denied); a blocked user never gets here. */
static int current_user(api_ctx *c) {
        cp_strbuf modules;
        bool found;
        int r;

        if (c->service_user)
                return api_error(c, 403, "permission denied");
        /* "tenants": what opens the dashboard's Tenants page (api-msp.c). */
        bool tenants = false;
        r = api_msp_tenants_allowed(c, &tenants);
        if (r < 0)
                return r;
        cp_strbuf_init(&modules);
        permission_modules(c, tenants, &modules);
        const char *p[5] = { c->account_id, c->user_id, modules.buf, c->home_account_id, c->role };
        if (c->home_account_id[0])
                r = api_sql_reply_pii(c, 200, SQL_CURRENT_ACTING, 5, p, &found);
        else
                r = api_sql_reply_pii(c, 200, SQL_CURRENT, 3, p, &found);
        cp_strbuf_release(&modules);
        if (r == 0 && !found)
                return api_error(c, 404, "user: %s not found", c->user_id);
        return r;
}

/* ---- POST /api/users ---------------------------------------------------------------------------- */

static int service_user_event(api_ctx *c, int activity, const char *id, const char *name, const char *created_at) {
        if (created_at)
                return api_event_kv(c, activity, id, "name", name, "created_at", created_at, NULL);
        return api_event_kv(c, activity, id, "name", name, NULL);
}

/* Only service users: a regular user needs an IdP invite, and this
 * server has no IdP (NetBird's answer without one). Auto-groups are
 * checked like on update, which NetBird skips here. */
static int create_service_user(api_ctx *c, const char *role, const char *name, const char *groups) {
        char id[CP_ID_LEN + 1], bad[128];
        bool is_all = false;
        int r;

        if (strcmp(role, "owner") == 0)
                return api_error(c, 422, "can't create a service user with owner role");
        r = api_find_bad_group(c, groups, true, bad, sizeof bad, &is_all);
        if (r < 0)
                return r;
        if (r > 0)
                return is_all ? api_error(c, 422, "can't add All group to the user")
                              : api_error(c, 422, "group: %s not found", bad);
        cp_id_new(id);
        const char *p[5] = { id, c->account_id, role, name, groups };
        r = api_sql(c, SQL_INSERT_SERVICE, 5, p, NULL);
        if (r == 0)
                r = service_user_event(c, API_ACT_SERVICE_USER_CREATED, id, name, NULL);
        if (r == 0)
                r = reply_user(c, id);
        return r;
}

static int create_user(api_ctx *c) {
        json_t *body = api_body(c);
        const char *role_in = "", *name = "", *email = "", *role;
        bool service = false;
        cp_strbuf groups;
        int r;

        if (!body)
                return API_FAIL;
        cp_strbuf_init(&groups);
        if (api_field_str(c, body, "role", &role_in) < 0 || api_field_str(c, body, "name", &name) < 0 ||
            api_field_str(c, body, "email", &email) < 0 || api_field_bool(c, body, "is_service_user", &service) < 0 ||
            api_field_strarr(c, body, "auto_groups", &groups, NULL) < 0)
                r = API_FAIL;
        else if (!(role = role_name(role_in)))
                r = api_error(c, 422, "unknown user role %s", role_in);
        else if (!service)
                r = api_error(c, 412, "idp manager must be enabled to send user invites");
        else {
                if (groups.len == 0)
                        cp_strbuf_adds(&groups, "{}");
                r = create_service_user(c, role, name, groups.buf);
        }
        cp_strbuf_release(&groups);
        return r;
}

/* ---- PUT /api/users/{userId} -------------------------------------------------------------------- */

typedef struct user_update {
        const char *id;
        const char *role;               /* new role */
        bool blocked;
        const char *groups;             /* new auto-groups, a PostgreSQL array */
        /* the stored user */
        const char *old_role;
        bool old_blocked;
        bool service;
        const char *old_groups;
} user_update;

/* NetBird's validateUserUpdate, in its order; msg gets the reason and
 * the status is returned (0: allowed). */
static int update_denied(const api_ctx *c, const user_update *u, const char **msg) {
        bool self = strcmp(c->user_id, u->id) == 0;
        bool owner = strcmp(c->role, "owner") == 0;
        bool was_owner = strcmp(u->old_role, "owner") == 0;
        bool to_owner = strcmp(u->role, "owner") == 0;

        if (!api_is_admin(c))
                *msg = "only admins and owners can update users";
        else if (self && u->old_blocked != u->blocked)
                *msg = "admins can't block or unblock themselves";
        else if (self && strcmp(u->role, c->role) != 0)
                *msg = "admins can't change their role";
        else if (!owner && was_owner && strcmp(u->role, u->old_role) != 0)
                *msg = "only owners can remove owner role from their user";
        else if (was_owner && u->blocked && !u->old_blocked)
                *msg = "unable to block owner user";
        else if (!owner && to_owner && !was_owner)
                *msg = "only owners can add owner role to other users";
        else if (u->service && to_owner)
                *msg = "can't update a service user with owner role";
        else
                return 0;
        return 403;
}

static int validate_update(api_ctx *c, const user_update *u) {
        const char *msg = NULL;
        char bad[128];
        bool is_all = false;
        int status = update_denied(c, u, &msg);
        int r;

        /* NetBird wraps these in the update's own error. */
        if (status)
                return api_error(c, status, "failed to process update for user %s: %s", u->id, msg);
        r = api_find_bad_group(c, u->groups, true, bad, sizeof bad, &is_all);
        if (r < 0)
                return r;
        if (r > 0 && is_all)
                return api_error(c, 422, "failed to process update for user %s: can't add All group to the user",
                                 u->id);
        if (r > 0)
                return api_error(c, 422, "failed to process update for user %s: provided group ID %s in the user %s"
                                 " update doesn't exist", u->id, bad, u->id);
        return 0;
}

static int with_codes(api_ctx *c, const char *sql, int n, const char **p, int code_at, int a, int b) {
        char ca[16], cb[16];

        (void) snprintf(ca, sizeof ca, "%d", a);
        (void) snprintf(cb, sizeof cb, "%d", b);
        p[code_at] = ca;
        if (b >= 0)
                p[code_at + 1] = cb;
        return api_sql(c, sql, n, p, NULL);
}

/* With group propagation on, the user's peers follow the auto-groups,
 * and each group added or removed is logged (NetBird logs them only
 * then). */
static int propagate_groups(api_ctx *c, const user_update *u, bool *logged) {
        _cleanup_rows_ cp_store_rows *on = NULL;
        const char *p1[1] = { c->account_id };
        int r;

        *logged = false;
        r = api_sql(c, SQL_PROPAGATION_ON, 1, p1, &on);
        if (r < 0 || !cp_store_rows_bool(on, 0, 0))
                return r;
        *logged = true;
        const char *p[4] = { c->account_id, u->id, u->groups, u->old_groups };
        return api_sql(c, SQL_PROPAGATE, 4, p, NULL);
}

static int group_events(api_ctx *c, const user_update *u) {
        const char *p[7] = { c->account_id, u->id, u->groups, u->old_groups, c->user_id };

        return with_codes(c, SQL_GROUP_EVENTS, 7, p, 5, API_ACT_GROUP_ADDED_TO_USER, API_ACT_GROUP_REMOVED_FROM_USER);
}

static int role_event(api_ctx *c, const user_update *u, bool transferred) {
        if (transferred)
                return api_event(c, API_ACT_TRANSFERRED_OWNER_ROLE, u->id, NULL);
        if (strcmp(u->role, u->old_role) == 0)
                return 0;
        return api_event_kv(c, API_ACT_USER_ROLE_UPDATED, u->id, "role", u->role, NULL);
}

/* The events in NetBird's order: blocked / unblocked, role, groups,
 * then the expired peers. */
static int save_user(api_ctx *c, const user_update *u) {
        /* An owner who makes someone else owner steps down to admin. */
        bool transferred = strcmp(c->role, "owner") == 0 && strcmp(u->id, c->user_id) != 0 &&
                           strcmp(u->role, "owner") == 0;
        const char *p[5] = { c->account_id, u->id, u->role, u->blocked ? "true" : "false", u->groups };
        bool propagated = false;
        int r;

        if (transferred && c->home_account_id[0]) {
                /* An MSP user acting as the tenant's owner is no user
                 * there: the tenant's own owners step down instead, so
                 * the tenant keeps one owner. */
                const char *pt[2] = { c->account_id, u->id };
                r = api_sql(c, "UPDATE users SET role = 'admin' WHERE account_id = $1 AND role = 'owner'"
                            " AND id <> $2", 2, pt, NULL);
                if (r < 0)
                        return r;
        } else if (transferred) {
                const char *pt[3] = { c->account_id, c->user_id, "admin" };
                r = api_sql(c, SQL_SET_ROLE, 3, pt, NULL);
                if (r < 0)
                        return r;
        }
        r = api_sql(c, SQL_UPDATE, 5, p, NULL);
        if (r == 0)
                r = propagate_groups(c, u, &propagated);
        if (r == 0 && u->blocked != u->old_blocked)
                r = api_event(c, u->blocked ? API_ACT_USER_BLOCKED : API_ACT_USER_UNBLOCKED, u->id, NULL);
        if (r == 0)
                r = role_event(c, u, transferred);
        if (r == 0 && propagated)
                r = group_events(c, u);
        if (r == 0 && u->blocked && !u->old_blocked) {
                const char *pe[4] = { c->account_id, u->id, c->api->dns_domain };
                r = with_codes(c, SQL_EXPIRE_PEERS, 4, pe, 3, API_ACT_PEER_LOGIN_EXPIRED, -1);
        }
        return r;
}

/* The body: auto_groups must be there (NetBird's 400), role must be a
 * known one, is_blocked absent is false. Types first, as Go decodes. */
static int parse_update(api_ctx *c, user_update *u, cp_strbuf *groups) {
        json_t *body = api_body(c);
        const char *role_in = "";
        int has_groups;

        if (!body)
                return API_FAIL;
        has_groups = api_field_strarr(c, body, "auto_groups", groups, NULL);
        if (has_groups < 0 || api_field_str(c, body, "role", &role_in) < 0 ||
            api_field_bool(c, body, "is_blocked", &u->blocked) < 0)
                return API_FAIL;
        if (!has_groups)
                return api_error(c, 400, "auto_groups field can't be absent");
        if (!(u->role = role_name(role_in)))
                return api_error(c, 422, "invalid user role");
        u->groups = groups->buf;
        return 0;
}

static int update_user(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *row = NULL;
        user_update u = { .id = c->param[0] };
        cp_strbuf groups;
        int r;

        r = find_user(c, u.id, &row);
        if (r < 0)
                return r;
        u.old_role = cp_store_rows_get(row, 0, U_ROLE);
        u.old_blocked = cp_store_rows_bool(row, 0, U_BLOCKED);
        u.service = cp_store_rows_bool(row, 0, U_SERVICE);
        u.old_groups = cp_store_rows_get(row, 0, U_AUTO_GROUPS);
        cp_strbuf_init(&groups);
        r = parse_update(c, &u, &groups);
        if (r == 0)
                r = validate_update(c, &u);
        if (r == 0)
                r = save_user(c, &u);
        if (r == 0) {
                /* Memberships, SSH users and login state may all have moved. */
                api_changed(c);
                r = reply_user(c, u.id);
        }
        cp_strbuf_release(&groups);
        return r;
}

/* ---- DELETE /api/users/{userId} ----------------------------------------------------------------- */

static int delete_service_user(api_ctx *c, const char *id, cp_store_rows *row) {
        const char *p[2] = { c->account_id, id };
        int r;

        if (cp_store_rows_bool(row, 0, U_NON_DELETABLE))
                return api_error(c, 403, "service user is marked as non-deletable");
        r = api_sql(c, SQL_DELETE_USER, 2, p, NULL);
        if (r < 0)
                return r;
        return service_user_event(c, API_ACT_SERVICE_USER_DELETED, id, cp_store_rows_get(row, 0, U_SERVICE_NAME),
                                  cp_store_rows_get(row, 0, U_CREATED_AT));
}

/* The event keeps the name and e-mail as the user's row had them, still
 * sealed, with the row's key fingerprint. */
static int user_deleted_event(api_ctx *c, const char *id, cp_store_rows *row) {
        static const char *const keys[] = { "name", "email", "created_at", "issued" };
        const int cols[] = { U_NAME, U_EMAIL, U_CREATED_AT, U_ISSUED };
        cp_error err = { 0 };
        cp_strbuf meta;
        int r;

        cp_strbuf_init(&meta);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                cp_strbuf_addf(&meta, "%s\"%s\":\"", i ? "," : "{", keys[i]);
                cp_strbuf_add_json_escaped(&meta, cp_store_rows_get(row, 0, cols[i]));
                cp_strbuf_addch(&meta, '"');
        }
        cp_strbuf_addch(&meta, '}');
        r = cp_store_tx_event_sealed(c->tx, API_ACT_USER_DELETED, c->user_id, id, c->account_id, meta.buf,
                                     cp_store_rows_get(row, 0, U_PII_KEY), &err);
        cp_strbuf_release(&meta);
        if (r < 0)
                return api_internal(c, "database", &err);
        return 0;
}

/* A regular user goes with their peers. */
static int delete_regular_user(api_ctx *c, const char *id, cp_store_rows *row) {
        _cleanup_rows_ cp_store_rows *gone = NULL;
        const char *pp[5] = { c->account_id, id, c->user_id };
        const char *pd[5] = { c->account_id, id, c->api->dns_domain, c->user_id };
        const char *pu[2] = { c->account_id, id };
        char removed[16];
        int r;

        r = with_codes(c, SQL_DELETE_PEER_POLICIES, 4, pp, 3, API_ACT_POLICY_REMOVED, -1);
        if (r < 0)
                return r;
        (void) snprintf(removed, sizeof removed, "%d", API_ACT_PEER_REMOVED_BY_USER);
        pd[4] = removed;
        r = api_sql(c, SQL_DELETE_PEERS, 5, pd, &gone);
        if (r < 0)
                return r;
        if (strcmp(cp_store_rows_get(gone, 0, 0), "0") != 0)
                api_changed(c);
        /* The REMOVED change rows of the services its peers exposed. */
        int64_t seq = strtoll(cp_store_rows_get(gone, 0, 1), NULL, 10);
        if (seq > c->proxy_seq)
                c->proxy_seq = seq;
        r = api_sql(c, SQL_DELETE_USER, 2, pu, NULL);
        if (r < 0)
                return r;
        return user_deleted_event(c, id, row);
}

/* The user id of a DELETE (or a reject): not the caller, in the account,
 * not the owner (NetBird's texts); *row is its users row. */
static int find_deletable(api_ctx *c, const char *id, cp_store_rows **row) {
        int r;

        if (strcmp(id, c->user_id) == 0)
                return api_error(c, 422, "self deletion is not allowed");
        r = find_user(c, id, row);
        if (r < 0)
                return r;
        if (strcmp(cp_store_rows_get(*row, 0, U_ROLE), "owner") == 0)
                return api_error(c, 403, "can't delete a user with the owner role");
        return 0;
}

static int delete_user(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *row = NULL;
        const char *id = c->param[0];
        int r;

        r = find_deletable(c, id, &row);
        if (r < 0)
                return r;
        if (strcmp(cp_store_rows_get(row, 0, U_ISSUED), "integration") == 0 && !c->service_user)
                return api_error(c, 403, "only integration service user can delete this user");
        if (cp_store_rows_bool(row, 0, U_SERVICE))
                r = delete_service_user(c, id, row);
        else
                r = delete_regular_user(c, id, row);
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

/* ---- user approval ---------------------------------------------------------------------------- */

static const char SQL_PENDING[] = "SELECT pending_approval FROM users WHERE account_id = $1 AND id = $2";
static const char SQL_APPROVE[] =
        "UPDATE users SET blocked = false, pending_approval = false WHERE account_id = $1 AND id = $2";

/* The target of approve/reject: in the caller's account and pending
 * (NetBird's texts: 404 "user: <id> not found", 422 "user <id> is not
 * pending approval"). */
static int find_pending(api_ctx *c, const char *id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[2] = { c->account_id, id };
        int r = api_sql(c, SQL_PENDING, 2, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "user: %s not found", id);
        if (!cp_store_rows_bool(rows, 0, 0))
                return api_error(c, 422, "user %s is not pending approval", id);
        return 0;
}

/* POST /api/users/{userId}/approve: NetBird's ApproveUser. */
static int approve_user(api_ctx *c) {
        const char *id = c->param[0];
        const char *p[2] = { c->account_id, id };
        int r = find_pending(c, id);

        if (r < 0)
                return r;
        r = api_sql(c, SQL_APPROVE, 2, p, NULL);
        if (r < 0)
                return r;
        r = api_event(c, API_ACT_USER_APPROVED, id, NULL);
        if (r < 0)
                return r;
        return reply_user(c, id);
}

/* DELETE /api/users/{userId}/reject: NetBird's RejectUser (DeleteUser
 * with its events, then user.reject). */
static int reject_user(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *row = NULL;
        const char *id = c->param[0];
        int r = find_pending(c, id);

        if (r < 0)
                return r;
        r = find_deletable(c, id, &row);
        if (r < 0)
                return r;
        r = delete_regular_user(c, id, row);
        if (r < 0)
                return r;
        r = api_event(c, API_ACT_USER_REJECTED, id, NULL);
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

/* ---- tokens ------------------------------------------------------------------------------------- */

typedef struct pat_target {
        const char *id;
        bool service;
        char service_name[256];
} pat_target;

/* The user whose tokens a route names, and NetBird's rule: your own
 * tokens, or (with owner or admin role) a service user's. */
static int pat_target_check(api_ctx *c, pat_target *t) {
        _cleanup_rows_ cp_store_rows *row = NULL;
        int r;

        t->id = c->param[0];
        r = find_user(c, t->id, &row);
        if (r < 0)
                return r;
        t->service = cp_store_rows_bool(row, 0, U_SERVICE);
        (void) snprintf(t->service_name, sizeof t->service_name, "%s", cp_store_rows_get(row, 0, U_SERVICE_NAME));
        if (strcmp(c->user_id, t->id) != 0 && !(api_is_admin(c) && t->service))
                return api_error(c, 403, "admin role required to perform this action");
        return 0;
}

/* PersonalAccessTokenCreated / Deleted, target the token's user. */
static int pat_event(api_ctx *c, int activity, const pat_target *t, const char *name) {
        cp_strbuf meta;
        int r;

        cp_strbuf_init(&meta);
        cp_strbuf_addch(&meta, '{');
        json_str_field(&meta, "name", name, true);
        cp_strbuf_addf(&meta, ",\"is_service_user\":%s", t->service ? "true" : "false");
        json_str_field(&meta, "user_name", t->service_name, false);
        cp_strbuf_addch(&meta, '}');
        r = api_event(c, activity, t->id, meta.buf);
        cp_strbuf_release(&meta);
        return r;
}

static int list_tokens(api_ctx *c) {
        pat_target t;
        bool found;
        int r = pat_target_check(c, &t);

        if (r < 0)
                return r;
        const char *p[2] = { c->account_id, t.id };
        return api_sql_reply(c, 200, SQL_PAT_LIST, 2, p, &found);
}

static int get_token(api_ctx *c) {
        pat_target t;
        bool found;
        int r = pat_target_check(c, &t);

        if (r < 0)
                return r;
        const char *p[3] = { c->account_id, t.id, c->param[1] };
        r = api_sql_reply(c, 200, SQL_PAT_GET, 3, p, &found);
        if (r == 0 && !found)
                return api_error(c, 404, "pat: %s not found", c->param[1]);
        return r;
}

/* Replies {"plain_token": ..., "personal_access_token": {...}}; the
 * plain token never goes to the database, not even as a parameter. */
static int reply_generated(api_ctx *c, const char *user_id, const char *pat_id, const char *plain) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[3] = { c->account_id, user_id, pat_id };
        cp_strbuf out;
        int r = api_sql(c, SQL_PAT_GET, 3, p, &rows);

        if (r < 0)
                return r;
        const char *pat = cp_store_rows_get(rows, 0, 0);
        if (!pat)
                return api_internal(c, "the new token is gone", NULL);
        cp_strbuf_init(&out);
        cp_strbuf_adds(&out, "{\"plain_token\":\"");
        cp_strbuf_add_json_escaped(&out, plain);
        cp_strbuf_adds(&out, "\",\"personal_access_token\":");
        cp_strbuf_adds(&out, pat);
        cp_strbuf_addch(&out, '}');
        r = api_reply_text(c, 200, out.buf, out.len);
        cp_explicit_bzero(out.buf, out.len);
        cp_strbuf_release(&out);
        return r;
}

static int create_token(api_ctx *c) {
        json_t *body = api_body(c);
        const char *name = "";
        int64_t days = 0;
        char id[CP_ID_LEN + 1], plain[CP_PAT_LEN + 1], hash[CP_SHA256_B64_LEN], ndays[16];
        pat_target t;
        int r;

        if (!body)
                return API_FAIL;
        if (api_field_str(c, body, "name", &name) < 0 ||
            api_field_int(c, body, "expires_in", INT64_MIN, INT64_MAX, &days) < 0)
                return API_FAIL;
        if (!*name)
                return api_error(c, 422, "token name can't be empty");
        if (days < PAT_MIN_DAYS || days > PAT_MAX_DAYS)
                return api_error(c, 422, "expiration has to be between %d and %d", PAT_MIN_DAYS, PAT_MAX_DAYS);
        r = pat_target_check(c, &t);
        if (r < 0)
                return r;
        cp_id_new(id);
        cp_crypto_pat_new(plain);
        cp_crypto_pat_hash(plain, hash);
        (void) snprintf(ndays, sizeof ndays, "%" PRId64, days);
        const char *p[7] = { id, c->account_id, t.id, name, hash, ndays, c->user_id };
        r = api_sql(c, SQL_PAT_INSERT, 7, p, NULL);
        if (r == 0)
                r = pat_event(c, API_ACT_PERSONAL_ACCESS_TOKEN_CREATED, &t, name);
        if (r == 0)
                r = reply_generated(c, t.id, id, plain);
        cp_explicit_bzero(plain, sizeof plain);
        return r;
}

static int delete_token(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        pat_target t;
        int r = pat_target_check(c, &t);

        if (r < 0)
                return r;
        const char *p[3] = { c->account_id, t.id, c->param[1] };
        r = api_sql(c, SQL_PAT_NAME, 3, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "pat: %s not found", c->param[1]);
        r = api_sql(c, SQL_PAT_DELETE, 3, p, NULL);
        if (r == 0)
                r = pat_event(c, API_ACT_PERSONAL_ACCESS_TOKEN_DELETED, &t, cp_store_rows_get(rows, 0, 0));
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

/* /users/current comes before the {userId} routes. PUT checks the users
 * module for update where NetBird asks for create; no role tells the two
 * apart. */
const api_route api_users_routes[] = {
        { "GET", "/api/users", API_MOD_SELF, API_READ, list_users },
        { "POST", "/api/users", API_MOD_USERS, API_CREATE, create_user },
        { "GET", "/api/users/current", API_MOD_SELF, API_READ, current_user },
        { "PUT", "/api/users/{userId}", API_MOD_USERS, API_UPDATE, update_user },
        { "DELETE", "/api/users/{userId}", API_MOD_USERS, API_DELETE, delete_user },
        { "POST", "/api/users/{userId}/approve", API_MOD_USERS, API_UPDATE, approve_user },
        { "DELETE", "/api/users/{userId}/reject", API_MOD_USERS, API_DELETE, reject_user },
        { "GET", "/api/users/{userId}/tokens", API_MOD_PATS, API_READ, list_tokens },
        { "POST", "/api/users/{userId}/tokens", API_MOD_PATS, API_CREATE, create_token },
        { "GET", "/api/users/{userId}/tokens/{tokenId}", API_MOD_PATS, API_READ, get_token },
        { "DELETE", "/api/users/{userId}/tokens/{tokenId}", API_MOD_PATS, API_DELETE, delete_token },
        { NULL },
};
