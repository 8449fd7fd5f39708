/*
 * /api/integrations/msp: NetBird Cloud's MSP API (openapi tag MSP) and
 * what the dashboard's cloud mode reads around it (the MSP info object
 * and the tenant switcher), plus acting inside a tenant (?account=<tenant
 * id> on any route, entered by the dispatcher through api_msp_enter()).
 *
 * An MSP is an account with accounts.msp_enabled_at set; its tenants are
 * the msp_tenants rows naming it (sql/migrations/0010_msp.sql). The MSP
 * routes answer a caller whose account is no MSP exactly as an unknown
 * path (404 "not found"), which is what a self-hosted NetBird answers;
 * in an MSP, only owners and admins manage tenants (403 otherwise).
 * docs/api.md, section "MSP", has every route and status.
 */
#include "api-int.h"
#include "cp/crypto-pii.h"
#include "cp/store-tenant.h"
#include "cp/store-msp.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <resolv.h>

/* One tenant as NetBird's TenantResponse (absent times left out, which
 * is how the dashboard tells an active tenant: activated_at present),
 * plus disabled_at (the dashboard's Tenant) while the account is
 * suspended. t: msp_tenants, a: the tenant's accounts row. */
#define TENANT_JSON(t, a)                                                                                   \
        "jsonb_strip_nulls(jsonb_build_object('id', " t ".account_id, 'name', " t ".name,"                 \
        " 'domain', " t ".domain, 'groups', " t ".groups,"                                                  \
        " 'activated_at', " API_TS_JSON(t ".activated_at") ", 'dns_challenge', " t ".dns_challenge,"         \
        " 'created_at', " API_TS_JSON(t ".created_at") ", 'updated_at', " API_TS_JSON(t ".updated_at") ","  \
        " 'invited_at', " API_TS_JSON(t ".invited_at") ", 'status', " t ".status,"                         \
        " 'disabled_at', " API_TS_JSON(a ".suspended_at") "))"

/* DNS checks (POST /tenants/{id}/dns) running at once on a replica. */
#define MSP_DNS_CHECKS_MAX 4

static const char SQL_IS_MSP[] =
        "SELECT msp_enabled_at IS NOT NULL, suspended_at IS NOT NULL FROM accounts WHERE id = $1";
static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(" TENANT_JSON("t", "a") " ORDER BY t.created_at, t.account_id), '[]')"
        " FROM msp_tenants t JOIN accounts a ON a.id = t.account_id WHERE t.msp_account_id = $1";
static const char SQL_GET[] =
        "SELECT " TENANT_JSON("t", "a") "::text FROM msp_tenants t JOIN accounts a ON a.id = t.account_id"
        " WHERE t.msp_account_id = $1 AND t.account_id = $2";
static const char SQL_FIND[] =
        "SELECT domain, dns_challenge, status, name FROM msp_tenants WHERE msp_account_id = $1 AND account_id = $2"
        " FOR UPDATE";
/* The same without the row lock: the DNS check holds nothing while it
 * waits for the resolver (its update re-checks the status). */
static const char SQL_FIND_NOLOCK[] =
        "SELECT domain, dns_challenge, status, name FROM msp_tenants WHERE msp_account_id = $1 AND account_id = $2";
static const char SQL_UPDATE[] =
        "UPDATE msp_tenants SET name = $3, groups = $4::jsonb, updated_at = CURRENT_TIMESTAMP"
        " WHERE msp_account_id = $1 AND account_id = $2";
static const char SQL_ACTIVATE[] =
        "UPDATE msp_tenants SET status = 'active', activated_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP"
        " WHERE msp_account_id = $1 AND account_id = $2 AND status = 'pending'";

/* The role an MSP user ($3, of MSP $2) takes in tenant $1: the most
 * privileged role of the tenant's groups mapping among the user's MSP
 * groups. None: no row. An invited (not yet accepted) tenant admits no
 * one; a disabled MSP neither. */
#define SQL_ROLE_RANK(r)                                                                                    \
        "CASE " r " WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 WHEN 'network_admin' THEN 2"                  \
        " WHEN 'auditor' THEN 3 WHEN 'billing_admin' THEN 4 ELSE 5 END"
static const char SQL_ENTER[] =
        "SELECT g.role FROM msp_tenants t"
        " JOIN accounts m ON m.id = t.msp_account_id AND m.msp_enabled_at IS NOT NULL AND m.suspended_at IS NULL"
        " JOIN users u ON u.account_id = t.msp_account_id AND u.id = $3"
        " CROSS JOIN LATERAL jsonb_to_recordset(t.groups) AS g(id text, role text)"
        " WHERE t.account_id = $1 AND t.msp_account_id = $2 AND t.status <> 'invited'"
        " AND g.id = ANY (u.auto_groups) ORDER BY " SQL_ROLE_RANK("g.role") " LIMIT 1";
/* The tenants user $2 of MSP $1 may enter, as the dashboard's
 * TenantListItem. */
static const char SQL_SWITCHER[] =
        "SELECT COALESCE(json_agg(json_build_object('id', t.account_id, 'account_id', t.account_id,"
        " 'name', t.name, 'domain', t.domain, 'status', t.status,"
        " 'activated_at', COALESCE(" API_TS_JSON("t.activated_at") ", ''),"
        " 'disabled_at', COALESCE(" API_TS_JSON("a.suspended_at") ", ''),"
        " 'created_at', " API_TS_JSON("t.created_at") ", 'updated_at', " API_TS_JSON("t.updated_at") ")"
        " ORDER BY t.name, t.account_id), '[]')"
        " FROM msp_tenants t JOIN accounts a ON a.id = t.account_id"
        " JOIN users u ON u.account_id = t.msp_account_id AND u.id = $2"
        " WHERE t.msp_account_id = $1 AND t.status <> 'invited'"
        " AND EXISTS (SELECT 1 FROM jsonb_to_recordset(t.groups) AS g(id text, role text)"
        "  WHERE g.id = ANY (u.auto_groups))";

/* Events the request writes from now on record the MSP account
 * (events.initiator_account_id's default, sql/migrations/0011_mspapi.sql);
 * transaction-local. */
static const char SQL_EVENTS_INITIATOR[] =
        "SELECT set_config('netbird_cp.initiator_account_id', $1, true)";

/* One text refusal for an unknown tenant, a tenant of another MSP and a
 * tenant without a mapping for the caller: nothing tells them apart. */
#define ENTER_DENIED "permission denied"

/* ---- acting inside a tenant (the dispatcher) ------------------------------------------- */

int api_msp_enter(api_ctx *c, const char *tenant_id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[3] = { tenant_id, c->account_id, c->user_id };
        int r;

        if (strlen(tenant_id) >= sizeof c->account_id)
                return api_error(c, 403, ENTER_DENIED);
        r = api_sql(c, SQL_ENTER, 3, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 403, ENTER_DENIED);
        const char *pe[1] = { c->account_id };
        r = api_sql(c, SQL_EVENTS_INITIATOR, 1, pe, NULL);
        if (r < 0)
                return r;
        memcpy(c->home_account_id, c->account_id, sizeof c->home_account_id);
        memcpy(c->home_role, c->role, sizeof c->home_role);
        (void) snprintf(c->account_id, sizeof c->account_id, "%s", tenant_id);
        (void) snprintf(c->role, sizeof c->role, "%s", cp_store_rows_get(rows, 0, 0));
        return 0;
}

/* ---- guards ------------------------------------------------------------------------------ */

/* Whether the account is an MSP, and (ret_suspended, may be NULL)
 * whether it is suspended: one read of its row. */
static int msp_state(api_ctx *c, const char *account_id, bool *ret, bool *ret_suspended) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        int r = api_sql(c, SQL_IS_MSP, 1, p, &rows);

        if (r < 0)
                return r;
        bool found = cp_store_rows_count(rows) == 1;
        *ret = found && cp_store_rows_bool(rows, 0, 0);
        if (ret_suspended)
                *ret_suspended = found && cp_store_rows_bool(rows, 0, 1);
        return 0;
}

static int is_msp(api_ctx *c, const char *account_id, bool *ret) {
        return msp_state(c, account_id, ret, NULL);
}

/* The MSP routes: 404 for an account that is no MSP (as a server without
 * them), 403 for an MSP user who is not an owner or admin. A suspended
 * MSP reads but changes nothing (the dispatcher's check covers the
 * routes that take the account lock; creates and DNS checks do not take
 * it). */
static int msp_guard(api_ctx *c) {
        bool msp, suspended;
        int r = msp_state(c, c->account_id, &msp, &suspended);

        if (r < 0)
                return r;
        if (!msp)
                return api_error(c, 404, "not found");
        if (!api_is_admin(c))
                return api_error(c, 403, "permission denied");
        if (suspended && strcmp(c->route->method, "GET") != 0)
                return api_error(c, 403, "account is suspended");
        return 0;
}

int api_msp_tenants_allowed(api_ctx *c, bool *ret) {
        *ret = false;
        if (c->home_account_id[0] || !api_is_admin(c))
                return 0;
        return is_msp(c, c->account_id, ret);
}

static int reply_tenant(api_ctx *c, const char *id) {
        const char *p[2] = { c->account_id, id };
        bool found;
        int r = api_sql_reply(c, 200, SQL_GET, 2, p, &found);

        if (r == 0 && !found)
                return api_error(c, 404, "tenant: %s not found", id);
        return r;
}

/* ---- GET /api/integrations/msp ---------------------------------------------------------- */

/* The name and e-mail of an account's first owner
 * (the MSP's contact the dashboard shows its tenants). */
static int owner_contact(api_ctx *c, const char *account_id, json_t *obj) {
        static const char sql[] =
                "SELECT name, email, pii_key FROM users WHERE account_id = $1 AND role = 'owner'"
                " AND NOT is_service_user ORDER BY created_at, id LIMIT 1";
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        int r = api_sql(c, sql, 1, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 1) {
                /* sealed with the key pii_key names (cp/crypto-pii.h) */
                const char *fp = cp_store_rows_get(rows, 0, 2);
                _cleanup_free_ char *name = cp_pii_open(fp, cp_store_rows_get(rows, 0, 0));
                _cleanup_free_ char *email = cp_pii_open(fp, cp_store_rows_get(rows, 0, 1));
                json_object_set_new(obj, "parent_owner_name", json_string(name ? name : ""));
                json_object_set_new(obj, "parent_owner_email", json_string(email ? email : ""));
        }
        return 0;
}

/* The MSP info object (the dashboard's MSP interface):
 *  - an MSP's own view: id, name, domain, activated_at (msp_enabled_at),
 *    status "active";
 *  - an MSP user with ?account=<tenant> they may enter, or a user of a
 *    tenant account: the tenant's id, name, domain, status and
 *    activated_at ("" while not verified) with parent, parent_name,
 *    parent_domain and the MSP owner's name and e-mail;
 *  - anyone else: 404 "not found", as a server without MSPs. */
static const char SQL_MSP_SELF[] =
        "SELECT id, COALESCE(NULLIF(domain, ''), id), domain, " API_TS_JSON("msp_enabled_at")
        " FROM accounts WHERE id = $1 AND msp_enabled_at IS NOT NULL";
static const char SQL_AS_TENANT[] =
        "SELECT t.account_id, t.name, t.domain, t.status, COALESCE(" API_TS_JSON("t.activated_at") ", ''),"
        " m.id, COALESCE(NULLIF(m.domain, ''), m.id), m.domain"
        " FROM msp_tenants t JOIN accounts m ON m.id = t.msp_account_id WHERE t.account_id = $1";

static int msp_info(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        _cleanup_(json_decrefp) json_t *o = NULL;
        const char *acct = c->acting_param;   /* read once by the dispatcher */
        const char *tenant = c->account_id;
        int r;

        if (acct && *acct && strcmp(acct, c->account_id) != 0) {
                /* The MSP user's view inside a tenant: only one they may enter. */
                _cleanup_rows_ cp_store_rows *role = NULL;
                const char *p[3] = { acct, c->account_id, c->user_id };
                r = api_sql(c, SQL_ENTER, 3, p, &role);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(role) != 1)
                        return api_error(c, 403, ENTER_DENIED);
                tenant = acct;
        } else {
                const char *p[1] = { c->account_id };
                r = api_sql(c, SQL_MSP_SELF, 1, p, &rows);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(rows) == 1) {
                        o = json_pack("{s:s,s:s,s:s,s:s,s:s}", "id", cp_store_rows_get(rows, 0, 0), "name",
                                      cp_store_rows_get(rows, 0, 1), "domain", cp_store_rows_get(rows, 0, 2),
                                      "activated_at", cp_store_rows_get(rows, 0, 3), "status", "active");
                        return api_reply_json(c, 200, o);
                }
                rows = cp_store_rows_free(rows);
        }
        const char *p[1] = { tenant };
        r = api_sql(c, SQL_AS_TENANT, 1, p, &rows);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return api_error(c, 404, "not found");
        o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "id", cp_store_rows_get(rows, 0, 0), "name",
                      cp_store_rows_get(rows, 0, 1), "domain", cp_store_rows_get(rows, 0, 2), "status",
                      cp_store_rows_get(rows, 0, 3), "activated_at", cp_store_rows_get(rows, 0, 4), "parent",
                      cp_store_rows_get(rows, 0, 5), "parent_name", cp_store_rows_get(rows, 0, 6), "parent_domain",
                      cp_store_rows_get(rows, 0, 7));
        r = owner_contact(c, cp_store_rows_get(rows, 0, 5), o);
        if (r < 0)
                return r;
        return api_reply_json(c, 200, o);
}

/* ---- GET /api/integrations/msp/switcher ----------------------------------------------------- */

/* Any user of an MSP: the tenants they may enter (404 outside an MSP). */
static int msp_switcher(api_ctx *c) {
        bool msp, found;
        int r = is_msp(c, c->account_id, &msp);

        if (r < 0)
                return r;
        if (!msp)
                return api_error(c, 404, "not found");
        const char *p[2] = { c->account_id, c->user_id };
        return api_sql_reply(c, 200, SQL_SWITCHER, 2, p, &found);
}

/* ---- GET, POST /api/integrations/msp/tenants, PUT /tenants/{id} ---------------------------------- */

static int list_tenants(api_ctx *c) {
        int r = msp_guard(c);

        if (r < 0)
                return r;
        return api_reply_list(c, SQL_LIST);
}

/* name and groups of a create or update body; groups as JSON text
 * (malloc'd, NULL = absent). */
static int tenant_body(api_ctx *c, const char **name, char **groups) {
        json_t *body = api_body(c), *g = NULL;
        int r;

        if (!body)
                return API_FAIL;
        *name = NULL;
        *groups = NULL;
        r = api_field_str(c, body, "name", name);
        if (r < 0)
                return r;
        if (!*name || !**name)
                return api_error(c, 422, "tenant name should not be empty");
        if (strlen(*name) > CP_MSP_NAME_MAX)
                return api_error(c, 422, "tenant name should not be longer than %d characters", CP_MSP_NAME_MAX);
        r = api_field_array(c, body, "groups", &g);
        if (r < 0)
                return r;
        /* Required (NetBird's schema): an absent mapping must not clear
         * every MSP user's access by accident. */
        if (!g)
                return api_error(c, 422, "groups is required");
        *groups = json_dumps(g, JSON_COMPACT);
        return 0;
}

/* A store refusal as the API answers it. */
static int store_error(api_ctx *c, int r, const cp_error *err) {
        switch (r) {
        case -EINVAL:
                return api_error(c, 422, "%s", err->message);
        case -EEXIST:
                return api_error(c, 409, "%s", err->message);
        case -EPERM:
        case -ENOENT:
                return api_error(c, 404, "not found");
        default:
                return api_internal(c, "msp", err);
        }
}

static int create_tenant(api_ctx *c) {
        _cleanup_free_ char *groups = NULL;
        cp_store_msp_tenant_created out;
        const char *name, *domain = NULL;
        cp_strbuf ascii, why;
        cp_error err = { 0 };
        int r;

        r = msp_guard(c);
        if (r < 0)
                return r;
        r = tenant_body(c, &name, &groups);
        if (r < 0)
                return r;
        r = api_field_str(c, api_body(c), "domain", &domain);
        if (r < 0)
                return r;
        /* IDNA and the label rules of every DNS name the API takes here;
         * emptiness, wildcards, the dot and the length are the store's
         * (the admin CLI's creates go there too). */
        cp_strbuf_init(&ascii);
        cp_strbuf_init(&why);
        if (domain && *domain && (api_domain_to_ascii(domain, &ascii, &why) < 0 || !api_domain_valid(ascii.buf))) {
                cp_strbuf_release(&ascii);
                cp_strbuf_release(&why);
                return api_error(c, 422, "invalid domain: %s", domain);
        }
        cp_strbuf_release(&why);
        cp_store_msp_tenant_spec spec = {
                .msp_account_id = c->account_id, .name = name, .domain = ascii.len ? ascii.buf : "",
                .groups_json = groups,
                .idempotency_key = c->req->idempotency_key,
        };
        r = cp_store_tx_msp_tenant_create(c->tx, &spec, &out, &err);
        cp_strbuf_release(&ascii);
        /* The tenant's own owner token and setup key are not the MSP's:
         * its users act through ?account=. */
        cp_explicit_bzero(&out.account, sizeof out.account);
        if (r < 0)
                return store_error(c, r, &err);
        return reply_tenant(c, out.account_id);
}

/* The MSP's tenant {id} for a change: the caller checked (msp_guard),
 * the link row locked (SQL_FIND's columns: domain, dns_challenge,
 * status, name); 404 for an unknown tenant or another MSP's. */
static int find_tenant_as(api_ctx *c, const char *id, const char *sql, cp_store_rows **ret) {
        int r = msp_guard(c);

        if (r < 0)
                return r;
        const char *p[2] = { c->account_id, id };
        r = api_sql(c, sql, 2, p, ret);
        if (r < 0)
                return r;
        if (cp_store_rows_count(*ret) != 1)
                return api_error(c, 404, "tenant: %s not found", id);
        return 0;
}

static int find_tenant(api_ctx *c, const char *id, cp_store_rows **ret) {
        return find_tenant_as(c, id, SQL_FIND, ret);
}

static int update_tenant(api_ctx *c) {
        _cleanup_free_ char *groups = NULL, *norm = NULL;
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0], *name;
        cp_error err = { 0 };
        int r;

        r = find_tenant(c, id, &rows);
        if (r < 0)
                return r;
        r = tenant_body(c, &name, &groups);
        if (r < 0)
                return r;
        r = cp_store_tx_msp_groups_check(c->tx, c->account_id, groups, &norm, &err);
        if (r < 0)
                return store_error(c, r, &err);
        const char *p[4] = { c->account_id, id, name, norm };
        r = api_sql(c, SQL_UPDATE, 4, p, NULL);
        if (r < 0)
                return r;
        return reply_tenant(c, id);
}

/* ---- POST /tenants/{id}/dns --------------------------------------------------------------- */

/* Whether a TXT record of domain holds "nb-verification=<challenge>"
 * (the value the dashboard tells the MSP to publish, at the domain
 * itself), asked of the configured DNS server or the system's. Returns 1
 * found, 0 not found (no record, NXDOMAIN, no answer), -1 with why set
 * when the resolver cannot be set up. */
static int txt_has(const cp_api *api, const char *domain, const char *challenge, char *why, size_t whysz) {
        struct __res_state st;
        unsigned char answer[4096];
        char want[128];
        ns_msg msg;
        int n, found = 0;

        memset(&st, 0, sizeof st);
        if (res_ninit(&st) < 0) {
                (void) snprintf(why, whysz, "res_ninit failed");
                return -1;
        }
        if (api->msp_dns_port) {
                memset(&st.nsaddr_list[0], 0, sizeof st.nsaddr_list[0]);
                st.nsaddr_list[0].sin_family = AF_INET;
                st.nsaddr_list[0].sin_addr.s_addr = api->msp_dns_addr;
                st.nsaddr_list[0].sin_port = api->msp_dns_port;
                st.nscount = 1;
        }
        st.retrans = 2;
        st.retry = 2;
        st.options &= ~(unsigned long) (RES_DNSRCH | RES_DEFNAMES);
        n = res_nquery(&st, domain, ns_c_in, ns_t_txt, answer, sizeof answer);
        res_nclose(&st);
        /* res_nquery returns the answer's full length, which may be more
         * than it could copy (a long answer over TCP): parse only what is
         * in the buffer. */
        if (n > (int) sizeof answer)
                n = (int) sizeof answer;
        if (n < 0 || ns_initparse(answer, n, &msg) < 0)
                return 0;
        (void) snprintf(want, sizeof want, "nb-verification=%s", challenge);
        for (int i = 0; i < ns_msg_count(msg, ns_s_an) && !found; i++) {
                ns_rr rr;
                if (ns_parserr(&msg, ns_s_an, i, &rr) < 0 || ns_rr_type(rr) != ns_t_txt)
                        continue;
                const unsigned char *d = ns_rr_rdata(rr), *end = d + ns_rr_rdlen(rr);
                char joined[1024];
                size_t jl = 0;
                /* Each character-string on its own, and all of them
                 * joined (a long value split by the DNS provider). */
                while (d < end) {
                        size_t l = *d++;
                        if ((size_t) (end - d) < l)
                                break;
                        if (l == strlen(want) && memcmp(d, want, l) == 0)
                                found = 1;
                        if (jl + l < sizeof joined) {
                                memcpy(joined + jl, d, l);
                                jl += l;
                        }
                        d += l;
                }
                joined[jl] = '\0';
                if (strcmp(joined, want) == 0)
                        found = 1;
        }
        return found;
}

static int verify_dns(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0];
        char why[128];
        int r;

        r = find_tenant_as(c, id, SQL_FIND_NOLOCK, &rows);
        if (r < 0)
                return r;
        const char *domain = cp_store_rows_get(rows, 0, 0), *challenge = cp_store_rows_get(rows, 0, 1);
        const char *status = cp_store_rows_get(rows, 0, 2);
        if (strcmp(status, "active") == 0)
                return reply_tenant(c, id);
        if (strcmp(status, "pending") != 0)
                return api_error(c, 422, "tenant is not pending domain verification");
        /* A lookup may wait seconds on a silent server while it holds a
         * worker and a database connection: a few at a time per replica. */
        static atomic_int dns_checks;
        if (atomic_fetch_add(&dns_checks, 1) >= MSP_DNS_CHECKS_MAX) {
                atomic_fetch_sub(&dns_checks, 1);
                return api_error(c, 429, "too many DNS checks in progress, try again later");
        }
        r = txt_has(c->api, domain, challenge, why, sizeof why);
        atomic_fetch_sub(&dns_checks, 1);
        if (r < 0) {
                (void) snprintf(c->err_detail, sizeof c->err_detail, "dns: %s", why);
                return api_internal(c, "dns", NULL);
        }
        if (r == 0) {
                _cleanup_(json_decrefp) json_t *o = json_pack("{s:s}", "dns_challenge", challenge);
                return api_reply_json(c, 501, o);
        }
        const char *pa[2] = { c->account_id, id };
        r = api_sql(c, SQL_ACTIVATE, 2, pa, NULL);
        if (r < 0)
                return r;
        return reply_tenant(c, id);
}

/* ---- invite, accept, decline, unlink --------------------------------------------------------------- */

/* POST /tenants/{id}/invite: the MSP asks an existing account (id) to
 * become its tenant: a link with status invited. Not for an MSP, an
 * account linked to any MSP, or the MSP itself. */
static int invite_tenant(api_ctx *c) {
        static const char sql_target[] =
                "SELECT a.msp_enabled_at IS NOT NULL, EXISTS (SELECT 1 FROM msp_tenants t WHERE t.account_id = a.id),"
                " EXISTS (SELECT 1 FROM msp_tenants t WHERE t.account_id = a.id AND t.msp_account_id = $2)"
                " FROM accounts a WHERE a.id = $1";
        static const char sql_insert[] =
                "INSERT INTO msp_tenants (account_id, msp_account_id, name, domain, groups, status, dns_challenge,"
                " invited_at) VALUES ($1, $2, $3, lower($3), '[]', 'invited', $4, CURRENT_TIMESTAMP)";
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char challenge[CP_MSP_CHALLENGE_LEN];
        const char *id = c->param[0];
        cp_error err = { 0 };
        int r;

        r = msp_guard(c);
        if (r < 0)
                return r;
        if (strcmp(id, c->account_id) == 0)
                return api_error(c, 422, "an msp cannot invite its own account");
        const char *p[2] = { id, c->account_id };
        r = api_sql(c, sql_target, 2, p, &rows);
        if (r < 0)
                return r;
        /* One answer for an unknown account, an MSP and an account of
         * another MSP: the invitation tells nothing about accounts the
         * MSP has no business with. */
        if (cp_store_rows_count(rows) != 1 || cp_store_rows_bool(rows, 0, 0) ||
            (cp_store_rows_bool(rows, 0, 1) && !cp_store_rows_bool(rows, 0, 2)))
                return api_error(c, 404, "account: %s not found", id);
        if (cp_store_rows_bool(rows, 0, 1))
                return api_error(c, 409, "account is already linked to this msp");
        cp_store_msp_challenge_new(challenge);
        /* Name and domain stay the id until the account accepts. */
        const char *pi[4] = { id, c->account_id, id, challenge };
        r = api_sql_try(c, sql_insert, 4, pi, NULL, &err);
        if (r == -EEXIST)
                return api_error(c, 409, "a tenant with this domain already exists");
        if (r < 0)
                return api_internal(c, "invite", &err);
        return reply_tenant(c, id);
}

/* PUT /tenants/{id}/invite {"value": "accept" | "decline"}: the invited
 * account's owner answers; accept makes the link "existing", decline
 * removes it. Anyone else: 403; no pending invitation: 404. */
static int answer_invite(api_ctx *c) {
        static const char sql_accept[] =
                "UPDATE msp_tenants t SET status = 'existing', updated_at = CURRENT_TIMESTAMP,"
                " name = COALESCE(NULLIF(a.domain, ''), a.id), domain = lower(COALESCE(NULLIF(a.domain, ''), a.id))"
                " FROM accounts a WHERE a.id = t.account_id AND t.account_id = $1 AND t.status = 'invited'";
        static const char sql_decline[] = "DELETE FROM msp_tenants WHERE account_id = $1 AND status = 'invited'";
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0], *value = NULL;
        json_t *body;
        int r;

        if (strcmp(id, c->account_id) != 0 || strcmp(c->role, "owner") != 0 || c->home_account_id[0])
                return api_error(c, 403, "permission denied");
        body = api_body(c);
        if (!body)
                return API_FAIL;
        r = api_field_str(c, body, "value", &value);
        if (r < 0)
                return r;
        bool accept = value && strcmp(value, "accept") == 0;
        if (!accept && !(value && strcmp(value, "decline") == 0))
                return api_error(c, 422, "value should be accept or decline");
        const char *p[1] = { id };
        cp_error err = { 0 };
        r = api_sql_try(c, accept ? sql_accept : sql_decline, 1, p, &rows, &err);
        if (r == -EEXIST)
                return api_error(c, 409, "the msp has a tenant with this account's domain already");
        if (r < 0)
                return api_internal(c, "answering the invitation", &err);
        if (cp_store_rows_affected(rows) == 0)
                return api_error(c, 404, "invitation not found");
        return api_reply_empty_object(c);
}

/* POST /tenants/{id}/unlink {"owner": <user id of the tenant>}: the user
 * becomes the tenant's owner (other owners step down to admin) and the
 * link goes; the account stays. An invitation not yet accepted is only
 * withdrawn (no owner needed, nothing inside the account changes). */
static int unlink_tenant(api_ctx *c) {
        static const char sql_user[] =
                "SELECT 1 FROM users WHERE account_id = $1 AND id = $2 AND NOT is_service_user AND NOT blocked"
                " AND NOT pending_approval";
        static const char sql_demote[] =
                "UPDATE users SET role = 'admin' WHERE account_id = $1 AND role = 'owner' AND id <> $2";
        static const char sql_owner[] = "UPDATE users SET role = 'owner' WHERE account_id = $1 AND id = $2";
        static const char sql_unlink[] = "DELETE FROM msp_tenants WHERE account_id = $1 AND msp_account_id = $2";
        _cleanup_rows_ cp_store_rows *rows = NULL, *user = NULL;
        const char *id = c->param[0], *owner = NULL;
        json_t *body;
        int r;

        r = find_tenant(c, id, &rows);
        if (r < 0)
                return r;
        const char *status = cp_store_rows_get(rows, 0, 2);
        if (strcmp(status, "invited") == 0 || strcmp(status, "existing") == 0) {
                /* An account that was someone's before the invitation
                 * (accepted or not): the link goes, nothing inside the
                 * account changes (its owner is still its owner). */
                const char *pl[2] = { id, c->account_id };
                r = api_sql(c, sql_unlink, 2, pl, NULL);
                if (r < 0)
                        return r;
                return api_reply_empty_object(c);
        }
        body = api_body(c);
        if (!body)
                return API_FAIL;
        r = api_field_str(c, body, "owner", &owner);
        if (r < 0)
                return r;
        if (!owner || !*owner)
                return api_error(c, 422, "owner should not be empty");
        const char *pu[2] = { id, owner };
        r = api_sql(c, sql_user, 2, pu, &user);
        if (r < 0)
                return r;
        if (cp_store_rows_count(user) != 1)
                return api_error(c, 422, "user: %s not found in the tenant", owner);
        r = api_sql(c, sql_demote, 2, pu, NULL);
        if (r == 0)
                r = api_sql(c, sql_owner, 2, pu, NULL);
        if (r == 0) {
                const char *pl[2] = { id, c->account_id };
                r = api_sql(c, sql_unlink, 2, pl, NULL);
        }
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

/* DELETE /api/integrations/msp/tenants/{id}: the tenant account and
 * every row of it (the dashboard's "Delete tenant"). Only a tenant the
 * MSP created (pending or active): an account that joined by invitation
 * was someone else's before and is unlinked instead (400). */
static int delete_tenant(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = c->param[0];
        int r = find_tenant(c, id, &rows);

        if (r < 0)
                return r;
        const char *status = cp_store_rows_get(rows, 0, 2);
        if (strcmp(status, "pending") != 0 && strcmp(status, "active") != 0)
                return api_error(c, 400, "tenant %s joined by invitation: unlink it instead of deleting it", id);
        cp_store_account_deleted del = { 0 };
        cp_error err = { 0 };
        r = cp_store_tx_account_delete_all(c->tx, id, &del, &err);
        if (r < 0)
                return api_internal(c, "deleting the tenant", &err);
        if (del.proxy_seq > c->proxy_seq)
                c->proxy_seq = del.proxy_seq;
        (void) snprintf(c->gone_account, sizeof c->gone_account, "%s", id);
        c->gone_serial = del.serial;
        r = api_event_kv(c, CP_ACTIVITY_MSP_TENANT_DELETED, id, "name", cp_store_rows_get(rows, 0, 3), "domain",
                         cp_store_rows_get(rows, 0, 0), NULL);
        if (r < 0)
                return r;
        return api_reply_empty_object(c);
}

/* GET /api/integrations/billing/usage (UsageStats): NetBird Cloud's
 * billing counters, served because the dashboard's tenant table reads
 * its Users and Peers columns from it (?account=<tenant>). No billing
 * here: active users = users (not service users) who logged in within
 * 30 days, active peers = peers connected now. */
static const char SQL_USAGE[] =
        "SELECT json_build_object('active_users', us.active, 'total_users', us.total,"
        " 'active_peers', ps.connected, 'total_peers', ps.total)"
        " FROM (SELECT count(*) FILTER (WHERE last_login > CURRENT_TIMESTAMP - interval '30 days') AS active,"
        " count(*) AS total FROM users WHERE account_id = $1 AND NOT is_service_user) us,"
        " " CP_STORE_SQL_ACCOUNT_PEERS("$1") " ps";

static int billing_usage(api_ctx *c) {
        const char *p[1] = { c->account_id };
        bool found, msp = false;
        int r = 0;

        /* Only where the dashboard's MSP pages ask: inside a tenant
         * (?account=) or in an MSP; elsewhere 404 as NetBird's
         * self-hosted server. */
        if (!c->home_account_id[0])
                r = is_msp(c, c->account_id, &msp);
        if (r < 0)
                return r;
        if (!c->home_account_id[0] && !msp)
                return api_error(c, 404, "not found");
        return api_sql_reply(c, 200, SQL_USAGE, 1, p, &found);
}

const api_route api_msp_routes[] = {
        { "GET", "/api/integrations/msp", API_MOD_MSP, API_READ, msp_info },
        { "GET", "/api/integrations/msp/switcher", API_MOD_MSP, API_READ, msp_switcher },
        { "GET", "/api/integrations/msp/tenants", API_MOD_MSP, API_READ, list_tenants },
        /* No account lock for a create either: the store orders
         * identical creates itself (per domain and key), so tenants of
         * one MSP are made side by side. */
        { "POST", "/api/integrations/msp/tenants", API_MOD_MSP, API_READ, create_tenant },
        { "PUT", "/api/integrations/msp/tenants/{id}", API_MOD_MSP, API_UPDATE, update_tenant },
        /* A DNS query may take seconds: no account lock for it (the
         * update it may make is one row). */
        { "POST", "/api/integrations/msp/tenants/{id}/dns", API_MOD_MSP, API_READ, verify_dns },
        { "POST", "/api/integrations/msp/tenants/{id}/invite", API_MOD_MSP, API_UPDATE, invite_tenant },
        { "PUT", "/api/integrations/msp/tenants/{id}/invite", API_MOD_MSP, API_UPDATE, answer_invite },
        { "POST", "/api/integrations/msp/tenants/{id}/unlink", API_MOD_MSP, API_UPDATE, unlink_tenant },
        { "DELETE", "/api/integrations/msp/tenants/{id}", API_MOD_MSP, API_DELETE, delete_tenant },
        { "GET", "/api/integrations/billing/usage", API_MOD_ACCOUNTS, API_READ, billing_usage },
        { NULL },
};

int cp_api_parse_dns_server(const char *s, uint32_t *ret_addr, uint16_t *ret_port, cp_error *reterr) {
        struct in_addr a;
        char host[INET_ADDRSTRLEN];
        const char *colon = strchr(s, ':');
        size_t hl = colon ? (size_t) (colon - s) : strlen(s);
        long port = 53;

        if (hl == 0 || hl >= sizeof host)
                return cp_error_set(reterr, -EINVAL, "invalid DNS server %s: expected IPv4[:port]", s);
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (colon) {
                char *end;
                errno = 0;
                port = strtol(colon + 1, &end, 10);
                if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
                        return cp_error_set(reterr, -EINVAL, "invalid DNS server %s: bad port", s);
        }
        if (inet_pton(AF_INET, host, &a) != 1)
                return cp_error_set(reterr, -EINVAL, "invalid DNS server %s: expected IPv4[:port]", s);
        *ret_addr = a.s_addr;
        *ret_port = htons((uint16_t) port);
        return 0;
}
