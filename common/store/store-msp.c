/*
 * MSP tenants (cp/store-msp.h): the idempotent tenant creation the REST
 * API (common/api/api-msp.c) and the admin CLI share.
 */
#include <ctype.h>
#include <jansson.h>

#include "cp/base.h"
#include "cp/store-msp.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"
#include "cp/util.h"

/* The MSP row in share mode: creates run side by side, a change of the
 * MSP account (disable, delete) waits for them and they for it. */
static const char SQL_LOCK_MSP[] = "SELECT msp_enabled_at IS NOT NULL FROM accounts WHERE id = $1 FOR SHARE";
/* Creates of one MSP with the same idempotency key, then with the same
 * domain, take turns (transaction-scoped advisory locks; two-key form,
 * its own namespace per kind: "mspk" and "mspd"). Always key before
 * domain, so two creates never wait for each other in a circle. */
#define LOCK_KEY_CLASS "1836281963"     /* 'mspk' */
#define LOCK_DOMAIN_CLASS "1836281956"  /* 'mspd' */
static const char SQL_LOCK_KEY[] =
        "SELECT pg_advisory_xact_lock(" LOCK_KEY_CLASS ", hashtext($1 || '/' || $2))";
static const char SQL_LOCK_DOMAIN[] =
        "SELECT pg_advisory_xact_lock(" LOCK_DOMAIN_CLASS ", hashtext($1 || '/' || $2))";
static const char SQL_BY_KEY[] =
        "SELECT account_id, name = $3 AND domain = $4 AND groups = $5::jsonb FROM msp_tenants"
        " WHERE msp_account_id = $1 AND idempotency_key = $2";
static const char SQL_BY_DOMAIN[] = "SELECT account_id FROM msp_tenants WHERE msp_account_id = $1 AND domain = $2";
static const char SQL_INSERT[] =
        "INSERT INTO msp_tenants (account_id, msp_account_id, name, domain, groups, status, dns_challenge,"
        " idempotency_key) VALUES ($1, $2, $3, $4, $5::jsonb, 'pending', $6, NULLIF($7, ''))";
/* The first id of $2 that is not a group of the MSP account $1. */
static const char SQL_BAD_GROUP[] =
        "SELECT x.id FROM unnest($2::text[]) WITH ORDINALITY AS x(id, n)"
        " WHERE NOT EXISTS (SELECT 1 FROM groups g WHERE g.account_id = $1 AND g.id = x.id)"
        " ORDER BY x.n LIMIT 1";

static const char *const roles[] = { "owner", "admin", "user", "auditor", "network_admin", "billing_admin" };

void cp_store_msp_challenge_new(char out[CP_MSP_CHALLENGE_LEN]) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        uint8_t b[33];
        size_t o = 0;

        cp_random_bytes(b, 32);
        b[32] = 0;
        /* 32 bytes = 10 groups of 3 and 2 left: 40 + 3 characters. */
        for (size_t i = 0; i < 33; i += 3) {
                uint32_t v = (uint32_t) b[i] << 16 | (uint32_t) (i + 1 < 33 ? b[i + 1] : 0) << 8 |
                             (uint32_t) (i + 2 < 33 ? b[i + 2] : 0);
                for (int k = 0; k < 4 && o < CP_MSP_CHALLENGE_LEN - 1; k++)
                        out[o++] = alphabet[(v >> (18 - 6 * k)) & 63];
        }
        out[o] = '\0';
}

static bool role_valid(const char *r) {
        for (size_t i = 0; i < ELEMENTSOF(roles); i++)
                if (strcmp(r, roles[i]) == 0)
                        return true;
        return false;
}

int cp_store_tx_msp_groups_check(cp_store_tx *tx, const char *msp_account_id, const char *groups_json, char **ret,
                                 cp_error *reterr) {
        _cleanup_(json_decrefp) json_t *in = NULL;
        _cleanup_(json_decrefp) json_t *out = json_array();
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_strbuf ids;
        size_t i;
        json_t *g;
        int r;

        if (groups_json && *groups_json) {
                in = json_loads(groups_json, JSON_REJECT_DUPLICATES, NULL);
                if (!json_is_array(in))
                        return cp_error_set(reterr, -EINVAL, "groups should be a json array of group id and role");
        }
        cp_strbuf_init(&ids);
        cp_strbuf_addch(&ids, '{');
        json_array_foreach(in, i, g) {
                const char *id = json_string_value(json_object_get(g, "id"));
                const char *role = json_string_value(json_object_get(g, "role"));
                if (!json_is_object(g) || !id || !role) {
                        cp_strbuf_release(&ids);
                        return cp_error_set(reterr, -EINVAL, "groups should be a json array of group id and role");
                }
                if (!*id) {
                        cp_strbuf_release(&ids);
                        return cp_error_set(reterr, -EINVAL, "group id should not be empty string");
                }
                if (i >= CP_MSP_GROUPS_MAX || strlen(id) > CP_MSP_GROUP_ID_MAX) {
                        cp_strbuf_release(&ids);
                        return cp_error_set(reterr, -EINVAL, "groups should hold at most %d entries of group ids of "
                                            "at most %d characters", CP_MSP_GROUPS_MAX, CP_MSP_GROUP_ID_MAX);
                }
                for (size_t j = 0; j < i; j++)
                        if (strcmp(json_string_value(json_object_get(json_array_get(in, j), "id")), id) == 0) {
                                cp_strbuf_release(&ids);
                                return cp_error_set(reterr, -EINVAL, "group id %s is given more than once", id);
                        }
                if (!role_valid(role)) {
                        cp_strbuf_release(&ids);
                        return cp_error_set(reterr, -EINVAL, "invalid role: %s", role);
                }
                if (i > 0)
                        cp_strbuf_addch(&ids, ',');
                cp_strbuf_addch(&ids, '"');
                for (const char *p = id; *p; p++) {
                        if (*p == '"' || *p == '\\')
                                cp_strbuf_addch(&ids, '\\');
                        cp_strbuf_addch(&ids, *p);
                }
                cp_strbuf_addch(&ids, '"');
                json_array_append_new(out, json_pack("{s:s,s:s}", "id", id, "role", role));
        }
        cp_strbuf_addch(&ids, '}');
        const char *p[2] = { msp_account_id, ids.buf };
        r = cp_store_tx_exec(tx, SQL_BAD_GROUP, 2, p, &rows, reterr);
        cp_strbuf_release(&ids);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) > 0)
                return cp_error_set(reterr, -EINVAL, "group id %s not found", cp_store_rows_get(rows, 0, 0));
        *ret = json_dumps(out, JSON_COMPACT);
        if (!*ret)
                return cp_error_set(reterr, -ENOMEM, "out of memory");
        return 0;
}

/* Lower case ASCII letters, digits, '-', '_' and dots between labels. */
static int domain_normalise(const char *in, char *out, size_t outsz, cp_error *reterr) {
        size_t n = in ? strlen(in) : 0;

        if (n == 0)
                return cp_error_set(reterr, -EINVAL, "tenant domain should not be empty");
        if (n > CP_MSP_DOMAIN_MAX || n >= outsz)
                return cp_error_set(reterr, -EINVAL, "invalid domain: %s", in);
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char) in[i];
                if (!(isalnum(ch) || ch == '-' || ch == '_' || ch == '.') || (ch == '.' && (i == 0 || in[i - 1] == '.')))
                        return cp_error_set(reterr, -EINVAL, "invalid domain: %s", in);
                out[i] = (char) tolower(ch);
        }
        out[n] = '\0';
        if (out[n - 1] == '.' || !strchr(out, '.'))
                return cp_error_set(reterr, -EINVAL, "invalid domain: %s", in);
        return 0;
}

int cp_store_tx_msp_tenant_create(cp_store_tx *tx, const cp_store_msp_tenant_spec *spec,
                                  cp_store_msp_tenant_created *ret, cp_error *reterr) {
        _cleanup_free_ char *groups = NULL;
        _cleanup_rows_ cp_store_rows *lock = NULL, *by_key = NULL, *by_domain = NULL;
        char domain[CP_MSP_DOMAIN_MAX + 1], challenge[CP_MSP_CHALLENGE_LEN];
        const char *key = spec->idempotency_key ? spec->idempotency_key : "";
        int r;

        memset(ret, 0, sizeof *ret);
        if (!spec->msp_account_id || !spec->name || !*spec->name)
                return cp_error_set(reterr, -EINVAL, "tenant name should not be empty");
        if (strlen(spec->name) > CP_MSP_NAME_MAX)
                return cp_error_set(reterr, -EINVAL, "tenant name should not be longer than %d characters",
                                    CP_MSP_NAME_MAX);
        if (strlen(key) > CP_MSP_IDEMPOTENCY_KEY_MAX)
                return cp_error_set(reterr, -EINVAL, "idempotency key should not be longer than %d characters",
                                    CP_MSP_IDEMPOTENCY_KEY_MAX);
        r = domain_normalise(spec->domain, domain, sizeof domain, reterr);
        if (r < 0)
                return r;

        const char *pl[1] = { spec->msp_account_id };
        r = cp_store_tx_exec(tx, SQL_LOCK_MSP, 1, pl, &lock, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(lock) != 1)
                return cp_error_set(reterr, -ENOENT, "account not found");
        if (!cp_store_rows_bool(lock, 0, 0))
                return cp_error_set(reterr, -EPERM, "account is not an msp");

        r = cp_store_tx_msp_groups_check(tx, spec->msp_account_id, spec->groups_json, &groups, reterr);
        if (r < 0)
                return r;

        /* Identical creates on any replicas take turns here; the later
         * ones then find the first one's tenant. */
        if (*key) {
                const char *pk[2] = { spec->msp_account_id, key };
                r = cp_store_tx_exec(tx, SQL_LOCK_KEY, 2, pk, NULL, reterr);
                if (r < 0)
                        return r;
        }
        const char *pdl[2] = { spec->msp_account_id, domain };
        r = cp_store_tx_exec(tx, SQL_LOCK_DOMAIN, 2, pdl, NULL, reterr);
        if (r < 0)
                return r;

        if (*key) {
                const char *p[5] = { spec->msp_account_id, key, spec->name, domain, groups };
                r = cp_store_tx_exec(tx, SQL_BY_KEY, 5, p, &by_key, reterr);
                if (r < 0)
                        return r;
                if (cp_store_rows_count(by_key) == 1) {
                        if (!cp_store_rows_bool(by_key, 0, 1))
                                return cp_error_set(reterr, -EEXIST,
                                                    "idempotency key was already used with a different request");
                        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s",
                                        cp_store_rows_get(by_key, 0, 0));
                        return 0;
                }
        }
        const char *pd[2] = { spec->msp_account_id, domain };
        r = cp_store_tx_exec(tx, SQL_BY_DOMAIN, 2, pd, &by_domain, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(by_domain) == 1) {
                (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", cp_store_rows_get(by_domain, 0, 0));
                return 0;
        }

        cp_store_account_spec as = { .name = "admin", .domain = domain };
        r = cp_store_tx_account_create(tx, &as, &ret->account, reterr);
        if (r < 0)
                return r;
        cp_store_msp_challenge_new(challenge);
        const char *pi[7] = { ret->account.account_id, spec->msp_account_id, spec->name, domain, groups, challenge,
                              key };
        r = cp_store_tx_exec(tx, SQL_INSERT, 7, pi, NULL, reterr);
        if (r < 0) {
                cp_explicit_bzero(&ret->account, sizeof ret->account);
                return r;
        }
        (void) snprintf(ret->account_id, sizeof ret->account_id, "%s", ret->account.account_id);
        ret->created = true;
        return 0;
}

int cp_store_msp_tenant_create(cp_store *s, const cp_store_msp_tenant_spec *spec, cp_store_msp_tenant_created *ret,
                               cp_error *reterr) {
        cp_store_tx *tx = NULL;
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_msp_tenant_create(tx, spec, ret, reterr);
        if (r >= 0) {
                r = cp_store_tx_commit(tx, reterr);
                tx = NULL;
        }
        (void) cp_store_tx_end(tx);
        if (r < 0)
                cp_explicit_bzero(ret, sizeof *ret);
        return r;
}
