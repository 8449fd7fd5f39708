#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/store-peers.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "store-int.h"

/* NetBird activity codes used here (netbird-protocol.md section 7). */
enum {
        ACTIVITY_ACCOUNT_CREATED = 4,
        ACTIVITY_POLICY_ADDED = 9,
        ACTIVITY_SETUP_KEY_CREATED = 12,
        ACTIVITY_GROUP_CREATED = 16,
        ACTIVITY_PAT_CREATED = 41,
};

#define PAT_TTL_DAYS "365"
/* Advisory lock key serialising "create the first account": "nbcpfrst". */
#define FIRST_ACCOUNT_LOCK_KEY "7953758364750951540"

int cp_store_account_count(cp_store *s, int64_t *ret, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = cp_store__run(s, ST_ACCOUNT_COUNT, NULL, &res, reterr);

        if (r < 0)
                return r;
        *ret = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        return 0;
}

static int event(cp_store_conn *c, int activity, const char *initiator, const char *target,
                 const char *account, const char *meta, cp_error *reterr) {
        char code[12];
        const char *params[5] = { code, initiator, target, account, meta };

        (void) snprintf(code, sizeof code, "%d", activity);
        return cp_store__exec(c, ST_EVENT_INSERT, params, NULL, reterr);
}

/* All inserts of one new account, inside the caller's transaction. */
static int insert_all(cp_store_conn *c, const cp_store_account_spec *spec,
                      cp_store_account_created *out, cp_error *reterr) {
        char all_id[CP_ID_LEN + 1], policy_id[CP_ID_LEN + 1], rule_id[CP_ID_LEN + 1];
        char hash[CP_SHA256_B64_LEN], masked[10], ttl[24], groups[CP_ID_LEN + 3];
        const bool idp = spec->owner_user_id != NULL;
        const char *name = spec->name && *spec->name ? spec->name : idp ? "" : "admin";
        int r;

        cp_id_new(out->account_id);
        if (!idp) {
                cp_id_new(out->user_id);
                cp_id_new(out->setup_key_id);
                cp_id_new(out->pat_id);
        }
        const char *owner = idp ? spec->owner_user_id : out->user_id;
        cp_id_new(all_id);
        cp_id_new(policy_id);
        cp_id_new(rule_id);
        /* A random /16 inside 100.64.0.0/10, as NetBird allocates. */
        (void) snprintf(out->network_cidr, sizeof out->network_cidr, "100.%u.0.0/16",
                        64u + (unsigned) cp_random_uniform(64));

        const char *acct[6] = { out->account_id, owner, spec->domain ? spec->domain : "",
                                out->account_id, out->network_cidr,
                                spec->dns_domain ? spec->dns_domain : "" };
        r = cp_store__exec(c, ST_ACCOUNT_INSERT, acct, NULL, reterr);
        if (r < 0)
                return r;

        const char *grp[4] = { all_id, out->account_id, "All", "api" };
        r = cp_store__exec(c, ST_GROUP_INSERT, grp, NULL, reterr);
        if (r < 0)
                return r;

        (void) snprintf(groups, sizeof groups, "{%s}", all_id);
        const char *pol[5] = { policy_id, out->account_id, "Default",
                               "This is a default policy that allows connections between all the resources",
                               "true" };
        r = cp_store__exec(c, ST_POLICY_INSERT, pol, NULL, reterr);
        if (r < 0)
                return r;
        const char *rule[11] = { rule_id, policy_id, out->account_id, "Default",
                                 "This is a default rule that allows connections between all the resources",
                                 "true", "accept", "true", "all", groups, groups };
        r = cp_store__exec(c, ST_POLICY_RULE_INSERT, rule, NULL, reterr);
        if (r < 0)
                return r;

        /* The owner's name is personal data: sealed when the process has
         * its DataStoreEncryptionKey (cp/crypto-pii.h); else it stays plain
         * text (pii_key '') until a replica seals it. */
        char pii_key[CP_PII_FP_LEN] = "";
        _cleanup_free_ char *sealed = cp_pii_installed() ? cp_pii_seal(name, pii_key) : NULL;
        if (cp_pii_installed() && !sealed)
                return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
        const char *user[8] = { owner, out->account_id, "owner", "false", idp ? "false" : "true", "",
                                sealed ? sealed : name, pii_key };
        r = cp_store__exec(c, ST_USER_INSERT, user, NULL, reterr);
        if (r < 0)
                return r;
        if (idp)
                /* NetBird's newAccount: the owner signs in through the
                 * IdP, so no token and no setup key; one event. */
                return event(c, ACTIVITY_ACCOUNT_CREATED, owner, out->account_id, out->account_id, "{}", reterr);

        cp_crypto_pat_new(out->admin_token);
        cp_crypto_pat_hash(out->admin_token, hash);
        const char *pat[7] = { out->pat_id, out->account_id, out->user_id, "bootstrap admin token",
                               hash, PAT_TTL_DAYS, out->user_id };
        r = cp_store__exec(c, ST_PAT_INSERT, pat, NULL, reterr);
        if (r < 0)
                return r;

        cp_crypto_setup_key_new(out->setup_key);
        r = cp_crypto_setup_key_hash(out->setup_key, hash);
        if (r < 0)
                return cp_error_set(reterr, r, "cannot hash setup key");
        cp_crypto_setup_key_mask(out->setup_key, masked);
        (void) snprintf(ttl, sizeof ttl, "%" PRId64, spec->setup_key_ttl_s > 0 ? spec->setup_key_ttl_s : 0);
        const char *key[10] = { out->setup_key_id, out->account_id, hash, masked,
                                spec->setup_key_name ? spec->setup_key_name : "Default key",
                                "reusable", ttl, "0", "{}", "false" };
        r = cp_store__exec(c, ST_SETUP_KEY_INSERT, key, NULL, reterr);
        if (r < 0)
                return r;

        /* The activity log NetBird writes for the same steps. */
        r = event(c, ACTIVITY_ACCOUNT_CREATED, out->user_id, out->account_id, out->account_id, "{}", reterr);
        if (r >= 0)
                r = event(c, ACTIVITY_GROUP_CREATED, out->user_id, all_id, out->account_id,
                          "{\"name\":\"All\"}", reterr);
        if (r >= 0)
                r = event(c, ACTIVITY_POLICY_ADDED, out->user_id, policy_id, out->account_id,
                          "{\"name\":\"Default\"}", reterr);
        if (r >= 0)
                r = event(c, ACTIVITY_PAT_CREATED, out->user_id, out->pat_id, out->account_id,
                          "{\"name\":\"bootstrap admin token\"}", reterr);
        if (r >= 0)
                r = event(c, ACTIVITY_SETUP_KEY_CREATED, out->user_id, out->setup_key_id, out->account_id,
                          "{\"name\":\"Default key\",\"type\":\"reusable\"}", reterr);
        return r;
}

/* Inside the transaction: wait for any other "first account" creation to
 * commit (transaction-scoped advisory lock), then make sure none exists. */
static int check_none(cp_store_conn *c, cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        r = cp_store__command(c, "SELECT pg_advisory_xact_lock(" FIRST_ACCOUNT_LOCK_KEY ")", reterr);
        if (r < 0)
                return r;
        r = cp_store__exec(c, ST_ACCOUNT_COUNT, NULL, &res, reterr);
        if (r < 0)
                return r;
        if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
                return cp_error_set(reterr, -EEXIST, "an account already exists");
        return 0;
}

int cp_store_account_create(cp_store *s, const cp_store_account_spec *spec,
                            cp_store_account_created *ret, cp_error *reterr) {
        cp_store_account_created out = { 0 };
        cp_store_conn *c;
        int r;

        r = cp_store__acquire(s, &c, reterr);
        if (r < 0)
                return r;
        r = cp_store__command(c, "BEGIN", reterr);
        if (r >= 0 && spec->only_if_none)
                r = check_none(c, reterr);
        if (r >= 0)
                r = insert_all(c, spec, &out, reterr);
        if (r >= 0)
                r = cp_store__command(c, "COMMIT", reterr);
        if (r < 0) {
                (void) cp_store__command(c, "ROLLBACK", NULL);
                cp_error_prefix(reterr, "creating account");
        }
        cp_store__release(s, c);
        if (r >= 0)
                *ret = out;
        cp_explicit_bzero(&out, sizeof out);
        return r;
}

int cp_store_tx_account_create(cp_store_tx *tx, const cp_store_account_spec *spec,
                               cp_store_account_created *ret, cp_error *reterr) {
        cp_store_account_created out = { 0 };
        cp_store_conn *c = cp_store__tx_conn(tx);
        int r;

        if (!c)
                return cp_error_set(reterr, -ECANCELED, "the transaction was aborted by an earlier error");
        r = insert_all(c, spec, &out, reterr);
        if (r < 0) {
                cp_store__tx_failed(tx);
                cp_error_prefix(reterr, "creating account");
        } else
                *ret = out;
        cp_explicit_bzero(&out, sizeof out);
        return r;
}

int cp_store_tx_lock_accounts(cp_store_tx *tx, cp_error *reterr) {
        return cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock(" FIRST_ACCOUNT_LOCK_KEY ")", 0, NULL, NULL,
                                reterr);
}

int cp_store_tx_event(cp_store_tx *tx, int activity, const char *initiator_id, const char *target_id,
                      const char *account_id, const char *meta_json, cp_error *reterr) {
        static const char sql[] = "INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
                                  " VALUES ($1::int, $2, $3, $4, COALESCE($5::jsonb, '{}'::jsonb))";
        char code[16];

        (void) snprintf(code, sizeof code, "%d", activity);
        const char *p[5] = { code, initiator_id ? initiator_id : "", target_id ? target_id : "", account_id,
                             meta_json };
        return cp_store_tx_exec(tx, sql, 5, p, NULL, reterr);
}

/* Values are ids, UUIDs, base64/base62 and CIDRs; anything else is
 * single-quoted so the output stays safe to source. */
void cp_store_env_line(cp_strbuf *out, const char *name, const char *value) {
        static const char plain[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:+=@";

        if (strspn(value, plain) == strlen(value)) {
                cp_strbuf_addf(out, "%s=%s\n", name, value);
                return;
        }
        cp_strbuf_addf(out, "%s='", name);
        for (const char *p = value; *p; p++)
                if (*p == '\'')
                        cp_strbuf_adds(out, "'\\''");
                else
                        cp_strbuf_addch(out, *p);
        cp_strbuf_adds(out, "'\n");
}

void cp_store_account_env(const cp_store_account_created *a, cp_strbuf *out) {
        /* Room for every line up front: a buffer the strbuf outgrew would
         * be freed with the secrets in it, unwiped. */
        cp_strbuf_grow(out, 1024);
        cp_store_env_line(out, "ACCOUNT_ID", a->account_id);
        cp_store_env_line(out, "USER_ID", a->user_id);
        cp_store_env_line(out, "SETUP_KEY", a->setup_key);
        cp_store_env_line(out, "ADMIN_TOKEN", a->admin_token);
        cp_store_env_line(out, "NETWORK", a->network_cidr);
}

int cp_store_account_serial_raise(cp_store *s, const char *account_id, int64_t min_serial, int64_t *ret_serial,
                                  cp_error *reterr) {
        _cleanup_pgresult_ PGresult *res = NULL;
        char v[24];
        const char *params[2] = { account_id, v };
        int r;

        if (!account_id || !*account_id || !ret_serial)
                return cp_error_set(reterr, -EINVAL, "an account id and a result are required");
        (void) snprintf(v, sizeof v, "%" PRId64, min_serial);
        r = cp_store__run(s, ST_ACCOUNT_SERIAL_RAISE, params, &res, reterr);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return cp_error_set(reterr, -ENOENT, "account %s not found", account_id);
        *ret_serial = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        return 0;
}
