/*
 * JWT user provisioning (cp/identity.h): NetBird's GetAccountIDFromUserAuth
 * (single-account override, getAccountIDWithAuthorizationClaims and its
 * helpers), EnsureUserAccessByJWTGroups, SyncUserJWTGroups and
 * GetUserFromUserAuth, in the caller's transaction.
 *
 * Every creation (account or user) happens under the store's
 * account-creation advisory lock, taken only when the user is not found;
 * the lookups that decide are repeated after the lock, so two replicas
 * signing in the same new user, or the first users of an empty
 * deployment, end with one account and one user row.
 *
 * Where this differs from NetBird, on purpose:
 *   - single-account mode joins the one existing account whatever its
 *     domain (NetBird looks for a primary private account of the domain
 *     and would create a second account beside one made without domain,
 *     e.g. by `netbird-cp-admin account create`);
 *   - the sign-in time is the token's nb_last_login claim when present
 *     (NetBird's Auth0 action), else its iat: a new token that is newer
 *     than users.last_login is a dashboard login (event 51);
 *   - email and name from the token are written to the user when they
 *     differ (NetBird keeps them only from creation or its IdP cache).
 */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/identity.h"
#include "cp/log.h"
#include "cp/store.h"
#include "cp/util.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <time.h>

/* NetBird's activity codes written here (management/server/activity). */
enum {
        ACT_USER_JOINED = 2,
        ACT_GROUP_ADDED_TO_USER = 20,
        ACT_GROUP_REMOVED_FROM_USER = 21,
        ACT_DASHBOARD_LOGIN = 51,
};

#define PRIVATE_CATEGORY "private"

/* The user with what the rest of the sign-in needs of its account. */
static const cp_log_ctx log_ctx = { .component = "identity" };

static const char SQL_USER[] =
        "SELECT u.id, u.account_id, u.role, u.is_service_user, u.blocked, u.pending_approval, u.email, u.name,"
        " COALESCE(floor(extract(epoch FROM u.last_login))::bigint, 0), u.service_user_name,"
        " a.settings_jwt_groups_enabled, a.settings_jwt_groups_claim_name,"
        " array_to_json(a.settings_jwt_allow_groups)::text, a.settings_groups_propagation_enabled,"
        " array_to_json(u.auto_groups)::text, a.domain, a.domain_category, u.pii_key"
        " FROM users u JOIN accounts a ON a.id = u.account_id WHERE u.id = $1";
enum {
        U_ID, U_ACCOUNT, U_ROLE, U_SERVICE, U_BLOCKED, U_PENDING, U_EMAIL, U_NAME, U_LAST_LOGIN, U_SERVICE_NAME,
        U_JWT_ON, U_JWT_CLAIM, U_JWT_ALLOW, U_PROPAGATE, U_AUTO_GROUPS, U_ACC_DOMAIN, U_ACC_CATEGORY, U_PII_KEY,
};

/* NetBird's GetAnyAccountID: the newest account. */
/* Single account mode's account: never an MSP's tenant (a customer's
 * network), whatever was created last. */
static const char SQL_ANY_ACCOUNT[] =
        "SELECT a.id FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM msp_tenants t WHERE t.account_id = a.id)"
        " ORDER BY a.created_at DESC, a.id DESC LIMIT 1";
static const char SQL_PRIVATE_DOMAIN_ACCOUNT[] =
        "SELECT id FROM accounts WHERE domain = lower($1) AND is_domain_primary_account"
        " AND domain_category = 'private' LIMIT 1";
static const char SQL_ACCOUNT_DOMAIN[] = "SELECT domain FROM accounts WHERE id = $1";
static const char SQL_SET_DOMAIN_ATTRS[] =
        "UPDATE accounts SET domain = $2, domain_category = $3, is_domain_primary_account = $4::boolean"
        " WHERE id = $1";
/* What NetBird's newAccount adds to an account made at sign-in. */
static const char SQL_NEW_ACCOUNT_ATTRS[] =
        "UPDATE accounts SET domain_category = $2, is_domain_primary_account = $3::boolean,"
        " settings_extra_user_approval_required = true WHERE id = $1";
/* email and name are sealed (cp/crypto-pii.h), $5 the key's fingerprint. */
static const char SQL_OWNER_DETAILS[] =
        "UPDATE users SET email = $3, name = $4, pii_key = $5 WHERE account_id = $1 AND id = $2";
/* NetBird's NewRegularUser, blocked and pending when the account asks. */
static const char SQL_JOIN[] =
        "INSERT INTO users (id, account_id, role, email, name, pii_key, issued, blocked, pending_approval)"
        " SELECT $2, a.id, 'user', $3, $4, $5, 'api', a.settings_extra_user_approval_required,"
        " a.settings_extra_user_approval_required FROM accounts a WHERE a.id = $1"
        " RETURNING pending_approval";
/* Only forward: of two requests with the same new token, one writes
 * (and records the event). */
static const char SQL_LOGIN[] =
        "UPDATE users SET last_login = to_timestamp($3::bigint), email = $4, name = $5, pii_key = $6"
        " WHERE account_id = $1 AND id = $2 AND (last_login IS NULL OR last_login < to_timestamp($3::bigint))";
/* The same when the stored email and name did not open: the time only. */
static const char SQL_LOGIN_TIME[] =
        "UPDATE users SET last_login = to_timestamp($3::bigint)"
        " WHERE account_id = $1 AND id = $2 AND (last_login IS NULL OR last_login < to_timestamp($3::bigint))";
static const char SQL_DETAILS[] =
        "UPDATE users SET email = $3, name = $4, pii_key = $5 WHERE account_id = $1 AND id = $2";

typedef struct user_row {
        bool found;
        char account_id[64];
        char role[32];
        bool service_user, blocked, pending;
        char *email, *name, *service_name;
        /* email and name did not open (a key not configured, altered
         * data): they are "" here and must never be written back. */
        bool pii_unopened;
        int64_t last_login;
        bool jwt_groups, propagate;
        char *jwt_claim;
        json_t *allow, *auto_groups;
        char *acc_domain, *acc_category;        /* the account's */
} user_row;

static void user_row_clear(user_row *u) {
        free(u->email);
        free(u->name);
        free(u->service_name);
        free(u->jwt_claim);
        free(u->acc_domain);
        free(u->acc_category);
        if (u->allow)
                json_decref(u->allow);
        if (u->auto_groups)
                json_decref(u->auto_groups);
        memset(u, 0, sizeof *u);
}

static json_t *json_array_text(const char *s) {
        json_t *v = s ? json_loads(s, 0, NULL) : NULL;

        if (!json_is_array(v)) {
                if (v)
                        json_decref(v);
                v = json_array();
        }
        return v;
}

static int load_user(cp_store_tx *tx, const char *user_id, user_row *u, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { user_id };
        int r = cp_store_tx_exec(tx, SQL_USER, 1, p, &rows, reterr);

        user_row_clear(u);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return 0;
        u->found = true;
        (void) snprintf(u->account_id, sizeof u->account_id, "%s", cp_store_rows_get(rows, 0, U_ACCOUNT));
        (void) snprintf(u->role, sizeof u->role, "%s", cp_store_rows_get(rows, 0, U_ROLE));
        u->service_user = cp_store_rows_bool(rows, 0, U_SERVICE);
        u->blocked = cp_store_rows_bool(rows, 0, U_BLOCKED);
        u->pending = cp_store_rows_bool(rows, 0, U_PENDING);
        {
                const char *fp = cp_store_rows_get(rows, 0, U_PII_KEY);
                cp_error err = { 0 };
                int k = cp_pii_open_strict(fp, cp_store_rows_get(rows, 0, U_EMAIL), &u->email, &err);
                if (k >= 0)
                        k = cp_pii_open_strict(fp, cp_store_rows_get(rows, 0, U_NAME), &u->name, &err);
                if (k < 0) {
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot open a user's e-mail or name; they are left as "
                                  "stored", "user_id", user_id, "key_fingerprint", fp, "error", err.message, NULL);
                        if (u->email)
                                cp_explicit_bzero(u->email, strlen(u->email));
                        free(u->email);
                        u->email = cp_xstrdup("");
                        u->name = cp_xstrdup("");
                        u->pii_unopened = true;
                }
        }
        u->last_login = strtoll(cp_store_rows_get(rows, 0, U_LAST_LOGIN), NULL, 10);
        u->service_name = cp_xstrdup(cp_store_rows_get(rows, 0, U_SERVICE_NAME));
        u->jwt_groups = cp_store_rows_bool(rows, 0, U_JWT_ON);
        u->jwt_claim = cp_xstrdup(cp_store_rows_get(rows, 0, U_JWT_CLAIM));
        u->allow = json_array_text(cp_store_rows_get(rows, 0, U_JWT_ALLOW));
        u->propagate = cp_store_rows_bool(rows, 0, U_PROPAGATE);
        u->auto_groups = json_array_text(cp_store_rows_get(rows, 0, U_AUTO_GROUPS));
        u->acc_domain = cp_xstrdup(cp_store_rows_get(rows, 0, U_ACC_DOMAIN));
        u->acc_category = cp_xstrdup(cp_store_rows_get(rows, 0, U_ACC_CATEGORY));
        return 0;
}

/* NetBird's isDomainValid: ^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$ */
static bool domain_valid(const char *d) {
        const char *last = strrchr(d, '.');
        size_t labels = 0;

        if (!last || strlen(last + 1) < 2)
                return false;
        for (const char *p = last + 1; *p; p++)
                if (*p < 'a' || *p > 'z')
                        return false;
        for (const char *p = d; p < last;) {
                size_t n = strcspn(p, ".");
                if (n == 0 || p[0] == '-' || p[n - 1] == '-')
                        return false;
                for (size_t i = 0; i < n; i++) {
                        char ch = p[i];
                        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                                  (ch == '-' && p[i + 1] != '-');
                        if (!ok)
                                return false;
                }
                labels++;
                p += n + 1;
        }
        return labels > 0;
}

static char *lower_dup(const char *s) {
        char *d = cp_xstrdup(s);

        for (char *p = d; *p; p++)
                *p = (char) tolower((unsigned char) *p);
        return d;
}

/* One text value of a one-row, one-column query; "" when no row. */
static const char SQL_BUMP_SERIAL[] =
        "UPDATE accounts SET network_serial = network_serial + 1 WHERE id = $1 RETURNING network_serial";

static int query_one(cp_store_tx *tx, const char *sql, int n, const char *const *p, char *out, size_t outsz,
                     cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = cp_store_tx_exec(tx, sql, n, p, &rows, reterr);

        if (r < 0)
                return r;
        const char *v = cp_store_rows_count(rows) > 0 ? cp_store_rows_get(rows, 0, 0) : NULL;
        (void) snprintf(out, outsz, "%s", v ? v : "");
        return 0;
}

/* What the claims say once the single-account override is applied. */
typedef struct auth_view {
        const char *user_id, *email, *name;
        char *domain;                   /* as the token (or the override) gives it */
        const char *category;
        const char *account_id;         /* wt_account_id, "" = none */
} auth_view;

/* NetBird's updateAccountDomainAttributesIfNotUpToDate, for the user's
 * account (its domain and category came with the user's row, so the
 * usual case, nothing to do, costs no query). lookup_primary: the
 * account stays primary only when the domain has no other primary
 * account (handleExistingUserAccount); else it is primary. */
static int update_domain_attrs(cp_store_tx *tx, const user_row *u, const auth_view *a, bool lookup_primary,
                               cp_error *reterr) {
        const char *acc_domain = u->acc_domain, *acc_cat = u->acc_category;
        bool primary = true;
        int r;

        if (!a->domain[0])
                return 0;
        /* domainIsUpToDate */
        if (strcmp(acc_cat, PRIVATE_CATEGORY) == 0 || strcmp(a->category, PRIVATE_CATEGORY) != 0 ||
            strcmp(acc_domain, a->domain) != 0)
                return 0;
        if (lookup_primary) {
                char domain_account[64];
                const char *p[1] = { a->domain };
                r = query_one(tx, SQL_PRIVATE_DOMAIN_ACCOUNT, 1, p, domain_account, sizeof domain_account, reterr);
                if (r < 0)
                        return r;
                primary = !domain_account[0] || strcmp(domain_account, u->account_id) == 0;
        }
        _cleanup_free_ char *lower = lower_dup(a->domain);
        const char *new_domain = acc_domain, *new_cat = acc_cat;
        bool admin = strcmp(u->role, "owner") == 0 || strcmp(u->role, "admin") == 0;
        if (strcmp(acc_domain, lower) != 0 && admin)
                new_domain = lower;
        if (strcmp(acc_domain, lower) == 0)
                new_cat = a->category;
        const char *w[4] = { u->account_id, new_domain, new_cat, primary ? "true" : "false" };
        return cp_store_tx_exec(tx, SQL_SET_DOMAIN_ATTRS, 4, w, NULL, reterr);
}

/* NetBird's newAccount (+ addNewPrivateAccount when private): the user
 * becomes the owner of a new account. */
static int new_account(cp_store_tx *tx, const auth_view *a, bool private_domain, cp_identity_user *ret,
                       cp_error *reterr) {
        _cleanup_free_ char *lower = lower_dup(a->domain);
        cp_store_account_spec spec = { .name = a->name, .domain = lower, .owner_user_id = a->user_id };
        cp_store_account_created out;
        int r;

        r = cp_store_tx_account_create(tx, &spec, &out, reterr);
        if (r < 0)
                return r;
        const char *p[3] = { out.account_id, private_domain ? a->category : "", private_domain ? "true" : "false" };
        r = cp_store_tx_exec(tx, SQL_NEW_ACCOUNT_ATTRS, 3, p, NULL, reterr);
        if (r < 0)
                return r;
        char fp[CP_PII_FP_LEN] = "";
        _cleanup_free_ char *email = cp_pii_seal(a->email, fp), *name = cp_pii_seal(a->name, fp);
        if (!email || !name)
                return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
        const char *d[5] = { out.account_id, a->user_id, email, name, fp };
        r = cp_store_tx_exec(tx, SQL_OWNER_DETAILS, 5, d, NULL, reterr);
        if (r < 0)
                return r;
        if (private_domain) {
                r = cp_store_tx_event(tx, ACT_USER_JOINED, a->user_id, a->user_id, out.account_id, NULL, reterr);
                if (r < 0)
                        return r;
        }
        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", out.account_id);
        ret->new_account = ret->new_user = true;
        return 0;
}

/* NetBird's addNewUserToDomainAccount. */
static int join_account(cp_store_tx *tx, const char *account_id, const auth_view *a, cp_identity_user *ret,
                        cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char fp[CP_PII_FP_LEN] = "";
        _cleanup_free_ char *email = cp_pii_seal(a->email, fp), *name = cp_pii_seal(a->name, fp);
        if (!email || !name)
                return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
        const char *p[5] = { account_id, a->user_id, email, name, fp };
        int r = cp_store_tx_exec(tx, SQL_JOIN, 5, p, &rows, reterr);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) != 1)
                return cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        bool pending = cp_store_rows_bool(rows, 0, 0);
        r = cp_store_tx_event(tx, ACT_USER_JOINED, a->user_id, a->user_id, account_id,
                              pending ? "{\"pending_approval\":true}" : NULL, reterr);
        if (r < 0)
                return r;
        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", account_id);
        ret->new_user = true;
        return 0;
}

/* The user not found: wait for any other creation, then look again.
 * Returns 1 when the user now exists (u reloaded), 0 when the caller
 * creates it (the lock stays held until commit). */
static int lock_and_recheck(cp_store_tx *tx, const char *user_id, user_row *u, cp_error *reterr) {
        int r = cp_store_tx_lock_accounts(tx, reterr);

        if (r < 0)
                return r;
        r = load_user(tx, user_id, u, reterr);
        if (r < 0)
                return r;
        return u->found ? 1 : 0;
}

/* Which account the user is in, creating user and account as NetBird
 * does. u is the user's row (reloaded after any creation). */
static int find_account(cp_store_tx *tx, const cp_identity_options *o, auth_view *a, user_row *u,
                        cp_identity_user *ret, cp_error *reterr) {
        char domain_account[64] = "";
        int r;

        if (o && o->single_account_domain && o->single_account_domain[0]) {
                /* updateUserAuthWithSingleMode */
                char any[64];
                a->category = PRIVATE_CATEGORY;
                if (u->found && (strcmp(u->acc_category, PRIVATE_CATEGORY) == 0 || !u->acc_domain[0])) {
                        /* Up to date whatever the domain (domainIsUpToDate),
                         * or an account without a domain (made by the CLI or
                         * bootstrap), which update_domain_attrs below would
                         * leave as it is whatever the newest account's
                         * domain: the every-request path, no more queries. */
                        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u->account_id);
                        return 0;
                }
                r = query_one(tx, SQL_ANY_ACCOUNT, 0, NULL, any, sizeof any, reterr);
                if (r < 0)
                        return r;
                if (!u->found) {
                        r = lock_and_recheck(tx, a->user_id, u, reterr);
                        if (r < 0)
                                return r;
                        if (r == 0) {
                                r = query_one(tx, SQL_ANY_ACCOUNT, 0, NULL, any, sizeof any, reterr);
                                if (r < 0)
                                        return r;
                        }
                }
                if (any[0]) {
                        const char *p[1] = { any };
                        char dom[256];
                        r = query_one(tx, SQL_ACCOUNT_DOMAIN, 1, p, dom, sizeof dom, reterr);
                        if (r < 0)
                                return r;
                        free(a->domain);
                        a->domain = cp_xstrdup(dom);
                } else {
                        free(a->domain);
                        a->domain = cp_xstrdup(o->single_account_domain);
                }
                if (u->found) {
                        r = update_domain_attrs(tx, u, a, false, reterr);
                        if (r < 0)
                                return r;
                        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u->account_id);
                        return 0;
                }
                if (any[0])
                        return join_account(tx, any, a, ret, reterr);
                return new_account(tx, a, true, ret, reterr);
        }

        if (strcmp(a->category, PRIVATE_CATEGORY) != 0 || !domain_valid(a->domain)) {
                /* GetAccountIDByUserID -> GetOrCreateAccountByUser */
                if (!u->found) {
                        r = lock_and_recheck(tx, a->user_id, u, reterr);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                return new_account(tx, a, false, ret, reterr);
                }
                (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u->account_id);
                return 0;
        }

        if (a->account_id[0]) {
                /* handlePrivateAccountWithIDFromClaim */
                if (!u->found)
                        return cp_error_set(reterr, -ENOENT, "user %s not found", a->user_id);
                if (strcmp(u->account_id, a->account_id) != 0)
                        return cp_error_set(reterr, -ENOENT, "user %s is not part of the account id %s",
                                            a->user_id, a->account_id);
                r = update_domain_attrs(tx, u, a, true, reterr);
                if (r < 0)
                        return r;
                (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u->account_id);
                return 0;
        }

        /* getPrivateDomainWithGlobalLock: only a user to create needs the
         * domain's account; the lock comes first so the look is final. */
        if (!u->found) {
                r = lock_and_recheck(tx, a->user_id, u, reterr);
                if (r < 0)
                        return r;
                if (r == 0) {
                        const char *p[1] = { a->domain };
                        r = query_one(tx, SQL_PRIVATE_DOMAIN_ACCOUNT, 1, p, domain_account, sizeof domain_account,
                                      reterr);
                        if (r < 0)
                                return r;
                }
        }
        if (u->found) {
                /* handleExistingUserAccount */
                r = update_domain_attrs(tx, u, a, true, reterr);
                if (r < 0)
                        return r;
                (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", u->account_id);
                return 0;
        }
        if (domain_account[0])
                return join_account(tx, domain_account, a, ret, reterr);
        return new_account(tx, a, true, ret, reterr);
}

/* ---- JWT groups ------------------------------------------------------------------------------- */

/* The groups of the account that are the user's auto groups or carry a
 * name from the claim. */
static const char SQL_JWT_GROUPS[] =
        "SELECT g.id, g.name, g.issued, g.id = ANY(u.auto_groups) FROM groups g JOIN users u ON u.id = $2"
        " WHERE g.account_id = $1 AND (g.id = ANY(u.auto_groups)"
        " OR g.name IN (SELECT jsonb_array_elements_text($3::jsonb))) ORDER BY g.id";
static const char SQL_GROUP_CREATE[] = "INSERT INTO groups (id, account_id, name, issued) VALUES ($1, $2, $3, 'jwt')";
static const char SQL_SET_AUTO_GROUPS[] =
        "UPDATE users SET auto_groups = ARRAY(SELECT jsonb_array_elements_text($3::jsonb))"
        " WHERE account_id = $1 AND id = $2";
static const char SQL_PEERS_JOIN[] =
        "INSERT INTO group_peers (account_id, group_id, peer_id)"
        " SELECT $1, g, p.id FROM peers p, jsonb_array_elements_text($3::jsonb) g"
        " WHERE p.account_id = $1 AND p.user_id = $2 ON CONFLICT DO NOTHING";
static const char SQL_PEERS_LEAVE[] =
        "DELETE FROM group_peers WHERE account_id = $1"
        " AND group_id IN (SELECT jsonb_array_elements_text($3::jsonb))"
        " AND peer_id IN (SELECT id FROM peers WHERE account_id = $1 AND user_id = $2)";

static bool json_has_string(const json_t *arr, const char *s) {
        size_t i;
        json_t *v;

        json_array_foreach(arr, i, v)
                if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
                        return true;
        return false;
}

/* NetBird's userHasAllowedGroup. */
static bool allowed_by_jwt(const json_t *allow, const json_t *names) {
        size_t i;
        json_t *v;

        if (json_array_size(allow) == 0)
                return true;
        json_array_foreach(names, i, v)
                if (json_has_string(allow, json_string_value(v)))
                        return true;
        return false;
}

static int group_event(cp_store_tx *tx, int act, const char *user_id, const char *account_id, const user_row *u,
                       const char *gid, const char *gname, cp_error *reterr) {
        json_t *meta = json_pack("{s:s, s:s, s:b, s:s}", "group", gname, "group_id", gid, "is_service_user",
                                 u->service_user, "user_name", u->service_name ? u->service_name : "");
        _cleanup_free_ char *text = json_dumps(meta, JSON_COMPACT);
        json_decref(meta);
        return cp_store_tx_event(tx, act, user_id, user_id, account_id, text, reterr);
}

/* NetBird's getJWTGroupsChanges + SyncUserJWTGroups. */
static int sync_jwt_groups(cp_store_tx *tx, const char *user_id, const user_row *u, const json_t *names,
                           cp_identity_user *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        _cleanup_free_ char *names_text = json_dumps(names, JSON_COMPACT);
        const char *p[3] = { u->account_id, user_id, names_text };
        json_t *jwt_ids = json_object();        /* name -> id of the user's JWT groups */
        json_t *keep = json_array(), *added = json_array(), *removed = json_array();
        json_t *added_names = json_array(), *removed_names = json_array();
        _cleanup_free_ char *auto_text = NULL, *added_text = NULL, *removed_text = NULL;
        bool modified = false;
        size_t i;
        json_t *v;
        int r;

        r = cp_store_tx_exec(tx, SQL_JWT_GROUPS, 3, p, &rows, reterr);
        if (r < 0)
                goto out;
        int n = cp_store_rows_count(rows);
        /* separateGroups: auto groups that exist, JWT ones by name, the
         * rest kept in their order. */
        json_array_foreach(u->auto_groups, i, v) {
                for (int k = 0; k < n; k++) {
                        if (strcmp(cp_store_rows_get(rows, k, 0), json_string_value(v)) != 0)
                                continue;
                        if (strcmp(cp_store_rows_get(rows, k, 2), "jwt") == 0)
                                json_object_set_new(jwt_ids, cp_store_rows_get(rows, k, 1), json_string(
                                                    cp_store_rows_get(rows, k, 0)));
                        else
                                json_array_append(keep, v);
                        break;
                }
        }
        bool any_add = false, any_remove = false;
        json_array_foreach(names, i, v)
                if (!json_object_get(jwt_ids, json_string_value(v)))
                        any_add = true;
        const char *key;
        json_object_foreach(jwt_ids, key, v)
                if (!json_has_string(names, key))
                        any_remove = true;
        if (!any_add && !any_remove)
                goto out;

        json_array_foreach(names, i, v) {
                const char *name = json_string_value(v);
                if (json_object_get(jwt_ids, name))
                        continue;
                int found = -1;
                for (int k = 0; k < n && found < 0; k++)
                        if (strcmp(cp_store_rows_get(rows, k, 1), name) == 0)
                                found = k;
                if (found < 0) {
                        char gid[CP_ID_LEN + 1];
                        cp_id_new(gid);
                        const char *g[3] = { gid, u->account_id, name };
                        r = cp_store_tx_exec(tx, SQL_GROUP_CREATE, 3, g, NULL, reterr);
                        if (r < 0)
                                goto out;
                        json_array_append_new(added, json_string(gid));
                        json_array_append_new(added_names, json_string(name));
                        modified = true;
                } else if (strcmp(cp_store_rows_get(rows, found, 2), "jwt") == 0) {
                        json_array_append_new(added, json_string(cp_store_rows_get(rows, found, 0)));
                        json_array_append_new(added_names, json_string(name));
                        modified = true;
                }
        }
        json_object_foreach(jwt_ids, key, v) {
                if (json_has_string(names, key)) {
                        json_array_append(keep, v);
                        continue;
                }
                json_array_append(removed, v);
                json_array_append_new(removed_names, json_string(key));
                modified = true;
        }
        if (!modified)
                goto out;

        json_array_extend(keep, added);
        auto_text = json_dumps(keep, JSON_COMPACT);
        added_text = json_dumps(added, JSON_COMPACT);
        removed_text = json_dumps(removed, JSON_COMPACT);
        const char *s[3] = { u->account_id, user_id, auto_text };
        r = cp_store_tx_exec(tx, SQL_SET_AUTO_GROUPS, 3, s, NULL, reterr);
        if (r < 0)
                goto out;
        if (u->propagate) {
                const char *ja[3] = { u->account_id, user_id, added_text };
                const char *jr[3] = { u->account_id, user_id, removed_text };
                r = cp_store_tx_exec(tx, SQL_PEERS_JOIN, 3, ja, NULL, reterr);
                if (r >= 0)
                        r = cp_store_tx_exec(tx, SQL_PEERS_LEAVE, 3, jr, NULL, reterr);
                if (r < 0)
                        goto out;
        }
        json_array_foreach(added, i, v) {
                r = group_event(tx, ACT_GROUP_ADDED_TO_USER, user_id, u->account_id, u, json_string_value(v),
                                json_string_value(json_array_get(added_names, i)), reterr);
                if (r < 0)
                        goto out;
        }
        json_array_foreach(removed, i, v) {
                r = group_event(tx, ACT_GROUP_REMOVED_FROM_USER, user_id, u->account_id, u, json_string_value(v),
                                json_string_value(json_array_get(removed_names, i)), reterr);
                if (r < 0)
                        goto out;
        }
        /* The user's groups are in authorized-user maps (SSH) and, with
         * propagation, in the peers' groups: new maps either way. */
        ret->serial = -1;       /* bumped once, at the end of cp_identity_resolve */
out:
        json_decref(jwt_ids);
        json_decref(keep);
        json_decref(added);
        json_decref(removed);
        json_decref(added_names);
        json_decref(removed_names);
        return r;
}

/* ---- sign-in ------------------------------------------------------------------------------------ */

/* The sign-in time: nb_last_login (any audience prefix) or iat. */
static int64_t login_time(const cp_jwt_claims *claims) {
        const char *key;
        json_t *v;

        if (claims->payload)
                json_object_foreach(claims->payload, key, v) {
                        size_t n = strlen(key);
                        if (n < 13 || strcmp(key + n - 13, "nb_last_login") != 0 || !json_is_string(v))
                                continue;
                        struct tm tm = { 0 };
                        const char *end = strptime(json_string_value(v), "%Y-%m-%dT%H:%M:%S", &tm);
                        if (end)
                                return (int64_t) timegm(&tm);
                }
        if (claims->iat > 0)
                return claims->iat;
        return (int64_t) time(NULL);
}

/* NetBird's GetUserFromUserAuth, plus the token's email and name. */
static int sign_in(cp_store_tx *tx, const cp_jwt_claims *claims, const user_row *u, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int64_t t = login_time(claims);
        const char *email = claims->email && claims->email[0] ? claims->email : u->email;
        const char *name = claims->name && claims->name[0] ? claims->name : u->name;
        /* A stored value that did not open is never written back (it
         * would become "" for good): the token's values replace the
         * stored ones only when it has both. */
        bool details = !u->pii_unopened || (claims->email && claims->email[0] && claims->name && claims->name[0]);
        int r;

        if (t <= u->last_login) {
                if (!details || (strcmp(email, u->email) == 0 && strcmp(name, u->name) == 0))
                        return 0;       /* the every-request path: nothing to write */
                char fp[CP_PII_FP_LEN] = "";
                _cleanup_free_ char *se = cp_pii_seal(email, fp), *sn = cp_pii_seal(name, fp);
                if (!se || !sn)
                        return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
                const char *p[5] = { u->account_id, claims->user_id, se, sn, fp };
                return cp_store_tx_exec(tx, SQL_DETAILS, 5, p, NULL, reterr);
        }
        char ts[24], fp[CP_PII_FP_LEN] = "";
        (void) snprintf(ts, sizeof ts, "%" PRId64, t);
        if (details) {
                _cleanup_free_ char *se = cp_pii_seal(email, fp), *sn = cp_pii_seal(name, fp);
                if (!se || !sn)
                        return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
                const char *p[6] = { u->account_id, claims->user_id, ts, se, sn, fp };
                r = cp_store_tx_exec(tx, SQL_LOGIN, 6, p, &rows, reterr);
        } else {
                const char *p[3] = { u->account_id, claims->user_id, ts };
                r = cp_store_tx_exec(tx, SQL_LOGIN_TIME, 3, p, &rows, reterr);
        }
        if (r < 0 || cp_store_rows_affected(rows) != 1 || u->last_login == 0)
                return r;
        /* LastDashboardLoginChanged: newer than a sign-in already seen. */
        char meta[64];
        struct tm tm;
        time_t tt = (time_t) t;
        (void) gmtime_r(&tt, &tm);
        (void) strftime(meta, sizeof meta, "{\"timestamp\":\"%Y-%m-%dT%H:%M:%SZ\"}", &tm);
        return cp_store_tx_event(tx, ACT_DASHBOARD_LOGIN, claims->user_id, claims->user_id, u->account_id, meta,
                                 reterr);
}

int cp_identity_resolve(cp_store_tx *tx, const cp_identity_options *o, const cp_jwt_claims *claims,
                        unsigned flags, cp_identity_user *ret, cp_error *reterr) {
        cp_identity_user out = { 0 };
        user_row u = { 0 };
        auth_view a = { 0 };
        const char **names = NULL;
        json_t *groups = NULL;
        int r;

        if (!claims || !claims->user_id || !claims->user_id[0])
                return cp_error_set(reterr, -EINVAL, "no valid userID provided");
        if (strlen(claims->user_id) >= sizeof out.user_id)
                return cp_error_set(reterr, -EINVAL, "user id too long");
        a.user_id = claims->user_id;
        a.email = claims->email ? claims->email : "";
        a.name = claims->name ? claims->name : "";
        a.domain = cp_xstrdup(claims->domain ? claims->domain : "");
        a.category = claims->domain_category ? claims->domain_category : "";
        a.account_id = claims->account_id ? claims->account_id : "";

        r = load_user(tx, claims->user_id, &u, reterr);
        if (r < 0)
                goto out;
        r = find_account(tx, o, &a, &u, &out, reterr);
        if (r < 0)
                goto out;
        if (out.new_user) {
                r = load_user(tx, claims->user_id, &u, reterr);
                if (r < 0)
                        goto out;
        }
        if (!u.found) {
                r = cp_error_set(reterr, -ENOENT, "user %s not found", claims->user_id);
                goto out;
        }

        /* EnsureUserAccessByJWTGroups + SyncUserJWTGroups */
        if (u.jwt_groups) {
                int n = u.jwt_claim[0] ? cp_jwt_claims_strings(claims, u.jwt_claim, &names) : 0;
                groups = json_array();
                for (int i = 0; i < n; i++)
                        if (names[i][0] && !json_has_string(groups, names[i]))
                                json_array_append_new(groups, json_string(names[i]));
                if (!allowed_by_jwt(u.allow, groups)) {
                        r = cp_error_set(reterr, -EPERM, "user does not belong to any of the allowed JWT groups");
                        goto out;
                }
                if (u.jwt_claim[0] && !u.service_user) {
                        r = sync_jwt_groups(tx, claims->user_id, &u, groups, &out, reterr);
                        if (r < 0)
                                goto out;
                }
        }

        if (flags & CP_IDENTITY_LOGIN) {
                r = sign_in(tx, claims, &u, reterr);
                if (r < 0)
                        goto out;
        }

        if (out.serial < 0) {
                /* Memberships changed: other peers' maps change with them. */
                char serial[24];
                const char *p[1] = { u.account_id };
                r = query_one(tx, SQL_BUMP_SERIAL, 1, p, serial, sizeof serial, reterr);
                if (r < 0)
                        goto out;
                out.serial = strtoll(serial, NULL, 10);
        }

        (void) snprintf(out.user_id, sizeof out.user_id, "%s", claims->user_id);
        (void) snprintf(out.account_id, sizeof out.account_id, "%s", u.account_id);
        (void) snprintf(out.role, sizeof out.role, "%s", u.role);
        out.service_user = u.service_user;
        out.blocked = u.blocked;
        out.pending_approval = u.pending;
        *ret = out;
        r = 0;
out:
        free(a.domain);
        free(names);
        if (groups)
                json_decref(groups);
        user_row_clear(&u);
        return r;
}
