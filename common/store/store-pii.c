#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/store-pii.h"
#include "cp/store-tx.h"
#include "cp/util.h"

/* pg_advisory locks: 0x6e62 ("nb") and a number of our own. */
#define LOCK_KEYS       "7045142901"
#define LOCK_LEGACY     "7045142902"

/* ---- the key check ------------------------------------------------------------ */

/* The installed key (fingerprint into fp) that opens sealed, or -1. */
static int which_opens(const char *sealed, char fp[CP_PII_FP_LEN]) {
        const char *fps[2] = { cp_pii_key_fp(), cp_pii_previous_fp() };

        for (int i = 0; i < 2; i++) {
                uint8_t key[CP_DATA_KEY_LEN];
                char *plain = NULL;
                size_t len = 0;
                if (!*fps[i] || cp_pii_key_get(fps[i], key) < 0)
                        continue;
                int r = cp_crypto_aead_decrypt_dup(key, sealed, &plain, &len, NULL);
                cp_explicit_bzero(key, sizeof key);
                if (r >= 0) {
                        cp_explicit_bzero(plain, len);  /* a server key: binary */
                        free(plain);
                        memcpy(fp, fps[i], CP_PII_FP_LEN);
                        return i;
                }
        }
        return -1;
}

static const char SQL_KEYS_CURRENT[] = "SELECT fingerprint FROM data_keys WHERE current";
/* Something already sealed, to prove a key against (from before 0012). */
static const char SQL_SEALED_SAMPLE[] =
        "SELECT private_key_enc FROM server_keys UNION ALL"
        " (SELECT session_private_key FROM services WHERE session_private_key <> '' LIMIT 1) LIMIT 1";
/* An upsert: our key may be recorded already, no longer current (all
 * current marks gone). */
static const char SQL_KEY_REGISTER[] =
        "INSERT INTO data_keys (fingerprint, current) SELECT $1, true"
        " WHERE NOT EXISTS (SELECT 1 FROM data_keys WHERE current)"
        " ON CONFLICT (fingerprint) DO UPDATE SET current = true";

static int key_check(cp_store *s, cp_store_pii_check *ret, bool again, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        char fp[CP_PII_FP_LEN] = "";
        int r;

        memset(ret, 0, sizeof *ret);
        if (!cp_pii_installed())
                return cp_error_set(reterr, -EINVAL, "no DataStoreEncryptionKey installed");
        r = cp_store_exec1(s, SQL_KEYS_CURRENT, 0, NULL, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 1) {
                (void) snprintf(ret->current, sizeof ret->current, "%s", cp_store_rows_get(rows, 0, 0));
                if (cp_pii_use(ret->current) < 0)
                        return cp_error_set(reterr, -EKEYREJECTED, "the data is sealed with key %s, which is "
                                            "not configured", ret->current);
                return 0;
        }
        rows = cp_store_rows_free(rows);
        if (again)      /* registered, yet still none current */
                return cp_error_set(reterr, -EIO, "data_keys has no current key after recording one");

        /* No key recorded yet: prove ours against what is sealed. */
        r = cp_store_exec1(s, SQL_SEALED_SAMPLE, 0, NULL, &rows, reterr);
        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 1) {
                if (which_opens(cp_store_rows_get(rows, 0, 0), fp) < 0)
                        return cp_error_set(reterr, -EKEYREJECTED, "the existing server key does not open with "
                                            "the configured DataStoreEncryptionKey%s",
                                            *cp_pii_previous_fp() ? " nor the previous one" : "");
        } else
                memcpy(fp, cp_pii_key_fp(), CP_PII_FP_LEN);
        rows = cp_store_rows_free(rows);

        {
                cp_store_tx *tx = NULL;
                const char *p[1] = { fp };
                r = cp_store_tx_begin(s, &tx, reterr);
                if (r < 0)
                        return r;
                r = cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock(" LOCK_KEYS ")", 0, NULL, NULL, reterr);
                if (r >= 0)
                        r = cp_store_tx_exec(tx, SQL_KEY_REGISTER, 1, p, &rows, reterr);
                if (r >= 0) {
                        ret->registered = cp_store_rows_affected(rows) == 1;
                        r = cp_store_tx_commit(tx, reterr);
                        tx = NULL;
                }
                cp_store_tx_end(tx);
                if (r < 0)
                        return r;
        }
        /* Read back whichever key won a race with another replica. */
        bool registered = ret->registered;
        r = key_check(s, ret, true, reterr);
        ret->registered = registered;
        return r;
}

int cp_store_pii_key_check(cp_store *s, cp_store_pii_check *ret, cp_error *reterr) {
        return key_check(s, ret, false, reterr);
}

/* ---- re-sealing rows -------------------------------------------------------------- */

typedef struct table_spec {
        const char *what;
        /* $1 the writer's fingerprint (unused by legacy), $2 the batch
         * size: id, pii_key, first value, second value. legacy selects
         * plain-text rows only, with a condition the pii_key index serves
         * (the replicas run it every few seconds); all, rows not sealed
         * with the writer key. */
        const char *legacy, *all;
        /* $1 id, $2 first, $3 second, $4 new fingerprint, $5 old one. */
        const char *update;
        size_t counter;                 /* offset in cp_store_pii_counts */
} table_spec;

/* Legacy rows with nothing to seal (both values empty, as service users
 * have) stay '' and are never touched. */
#define PII_SELECT(cols, from, where, nonempty, order)                                                      \
        "SELECT " cols " FROM " from " WHERE " where "pii_key = '' AND (" nonempty ")"                     \
        " AND $1::text IS NOT NULL ORDER BY " order " LIMIT $2::int FOR UPDATE SKIP LOCKED",                \
        "SELECT " cols " FROM " from " WHERE " where "pii_key <> $1 AND (pii_key <> '' OR " nonempty ")"   \
        " ORDER BY " order " LIMIT $2::int FOR UPDATE SKIP LOCKED"
#define USERS_NONEMPTY "email <> '' OR name <> ''"
#define TENANTS_NONEMPTY "contact_email <> '' OR contact_name <> ''"
#define EVENTS_NONEMPTY "meta->>'email' <> '' OR COALESCE(meta->>'name', '') <> ''"
static const table_spec tables[] = {
        { "users",
          PII_SELECT("id, pii_key, email, name", "users", "", USERS_NONEMPTY, "id"),
          "UPDATE users SET email = $2, name = $3, pii_key = $4 WHERE id = $1 AND pii_key = $5",
          offsetof(cp_store_pii_counts, users) },
        { "msp_tenants",
          PII_SELECT("account_id, pii_key, contact_email, contact_name", "msp_tenants", "", TENANTS_NONEMPTY,
                     "account_id"),
          "UPDATE msp_tenants SET contact_email = $2, contact_name = $3, pii_key = $4"
          " WHERE account_id = $1 AND pii_key = $5",
          offsetof(cp_store_pii_counts, tenants) },
        { "events",
          PII_SELECT("id::text, pii_key, COALESCE(meta->>'email', ''), COALESCE(meta->>'name', '')", "events",
                     "meta ? 'email' AND ", EVENTS_NONEMPTY, "id"),
          "UPDATE events SET meta = meta || jsonb_build_object('email', $2::text)"
          " || CASE WHEN meta ? 'name' THEN jsonb_build_object('name', $3::text) ELSE '{}'::jsonb END,"
          " pii_key = $4 WHERE id = $1::bigint AND pii_key = $5",
          offsetof(cp_store_pii_counts, events) },
};

static void wipe_free(char *s) {
        if (s) {
                cp_explicit_bzero(s, strlen(s));
                free(s);
        }
}

/* One batch of one table in its own transaction: returns the number of
 * rows re-sealed (0 = none left), or a negative error. lock: an advisory
 * lock the batch must get (NULL = none); when another holder has it the
 * batch does nothing and returns 0. */
static int batch_one(cp_store *s, const table_spec *t, bool legacy_only, int batch, const char *lock,
                     cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        char n[16], fp[CP_PII_FP_LEN];
        int r, count = 0;

        (void) snprintf(n, sizeof n, "%d", batch);
        memcpy(fp, cp_pii_writer_fp(), CP_PII_FP_LEN);
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        if (lock) {
                const char *lp[1] = { lock };
                r = cp_store_tx_exec(tx, "SELECT pg_try_advisory_xact_lock($1::bigint)", 1, lp, &rows, reterr);
                if (r < 0 || !cp_store_rows_bool(rows, 0, 0))
                        goto out;
                rows = cp_store_rows_free(rows);
        }
        const char *sp[2] = { fp, n };
        r = cp_store_tx_exec(tx, legacy_only ? t->legacy : t->all, 2, sp, &rows, reterr);
        if (r < 0)
                goto out;
        for (int i = 0; i < cp_store_rows_count(rows); i++) {
                const char *old = cp_store_rows_get(rows, i, 1);
                char *v1 = NULL, *v2 = NULL, *s1, *s2, nfp[CP_PII_FP_LEN] = "";
                r = cp_pii_open_strict(old, cp_store_rows_get(rows, i, 2), &v1, reterr);
                if (r >= 0)
                        r = cp_pii_open_strict(old, cp_store_rows_get(rows, i, 3), &v2, reterr);
                if (r < 0) {
                        wipe_free(v1);
                        cp_error_prefix(reterr, "%s row %s", t->what, cp_store_rows_get(rows, i, 0));
                        if (r != -ENOKEY)
                                r = cp_error_set(reterr, -EBADMSG, "%s row %s: a value does not open with key %s",
                                                 t->what, cp_store_rows_get(rows, i, 0), old);
                        goto out;
                }
                s1 = cp_pii_seal(v1, nfp);
                s2 = cp_pii_seal(v2, nfp);
                wipe_free(v1);
                wipe_free(v2);
                if (!s1 || !s2) {
                        free(s1);
                        free(s2);
                        r = cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
                        goto out;
                }
                const char *up[5] = { cp_store_rows_get(rows, i, 0), s1, s2, nfp, old };
                r = cp_store_tx_exec(tx, t->update, 5, up, NULL, reterr);
                free(s1);
                free(s2);
                if (r < 0)
                        goto out;
                count++;
        }
        r = cp_store_tx_commit(tx, reterr);
        tx = NULL;
out:
        cp_store_tx_end(tx);
        return r < 0 ? r : count;
}

static int reseal(cp_store *s, bool legacy_only, int batch, int max_batches, const char *lock,
                  cp_store_pii_counts *ret, cp_error *reterr) {
        if (!cp_pii_installed())
                return cp_error_set(reterr, -EINVAL, "no DataStoreEncryptionKey installed");
        if (!*cp_pii_writer_fp())
                return cp_error_set(reterr, -EKEYREJECTED, CP_PII_SEAL_ERROR);
        if (batch <= 0)
                batch = 500;
        ret->done = false;
        for (size_t t = 0; t < ELEMENTSOF(tables); t++) {
                for (;;) {
                        if (max_batches > 0 && ret->batches >= max_batches)
                                return 0;
                        int n = batch_one(s, &tables[t], legacy_only, batch, lock, reterr);
                        if (n < 0)
                                return n;
                        if (n == 0)
                                break;
                        *(int64_t *) ((char *) ret + tables[t].counter) += n;
                        ret->batches++;
                        if (n < batch)
                                break;
                }
        }
        ret->done = true;
        return 0;
}

int cp_store_pii_reseal(cp_store *s, bool legacy_only, int batch, int max_batches, cp_store_pii_counts *ret,
                        cp_error *reterr) {
        return reseal(s, legacy_only, batch, max_batches, NULL, ret, reterr);
}

int cp_store_pii_seal_legacy(cp_store *s, int batch, int max_batches, cp_store_pii_counts *ret,
                             cp_error *reterr) {
        return reseal(s, true, batch, max_batches, LOCK_LEGACY, ret, reterr);
}

/* ---- server and session keys ---------------------------------------------------------- */

/* Whether sealed opens with the writer key. */
static bool opens_with_writer(const char *sealed) {
        uint8_t key[CP_DATA_KEY_LEN];
        char *plain = NULL;
        size_t len = 0;
        int r;

        if (cp_pii_key_get(cp_pii_writer_fp(), key) < 0)
                return false;
        r = cp_crypto_aead_decrypt_dup(key, sealed, &plain, &len, NULL);
        cp_explicit_bzero(key, sizeof key);
        if (r < 0)
                return false;
        cp_explicit_bzero(plain, len);  /* binary: strlen would stop at a zero byte */
        free(plain);
        return true;
}

/* sealed under the writer key, or NULL when it already is; -ENOKEY when
 * no installed key opens it. */
static int reseal_secret(const char *sealed, char **ret, cp_error *reterr) {
        uint8_t buf[4096];
        int n;

        *ret = NULL;
        if (!sealed || !*sealed || opens_with_writer(sealed))
                return 0;
        n = cp_pii_decrypt(NULL, sealed, buf, sizeof buf, reterr);
        if (n == -EBADMSG)
                return cp_error_set(reterr, -ENOKEY, "a sealed key opens with no configured key");
        if (n < 0)
                return n;
        n = cp_pii_encrypt(NULL, buf, (size_t) n, ret, reterr);
        cp_explicit_bzero(buf, sizeof buf);
        return n < 0 ? n : 1;
}

int cp_store_pii_reseal_secrets(cp_store *s, cp_store_pii_counts *ret, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        int r;

        if (!cp_pii_installed())
                return cp_error_set(reterr, -EINVAL, "no DataStoreEncryptionKey installed");
        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_exec(tx, "SELECT purpose, private_key_enc, previous_private_key_enc FROM server_keys"
                             " ORDER BY purpose FOR UPDATE", 0, NULL, &rows, reterr);
        for (int i = 0; r >= 0 && i < cp_store_rows_count(rows); i++) {
                char *a = NULL, *b = NULL;
                r = reseal_secret(cp_store_rows_get(rows, i, 1), &a, reterr);
                if (r >= 0)
                        r = reseal_secret(cp_store_rows_get(rows, i, 2), &b, reterr);
                if (r >= 0 && (a || b)) {
                        const char *p[3] = { cp_store_rows_get(rows, i, 0), a, b };
                        r = cp_store_tx_exec(tx, "UPDATE server_keys SET private_key_enc = COALESCE($2,"
                                             " private_key_enc), previous_private_key_enc = COALESCE($3,"
                                             " previous_private_key_enc) WHERE purpose = $1", 3, p, NULL, reterr);
                        ret->secrets += (a != NULL) + (b != NULL);
                }
                free(a);
                free(b);
                if (r < 0)
                        cp_error_prefix(reterr, "server key");
        }
        rows = cp_store_rows_free(rows);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "SELECT id, session_private_key FROM services"
                                     " WHERE session_private_key <> '' ORDER BY id FOR UPDATE", 0, NULL, &rows,
                                     reterr);
        for (int i = 0; r >= 0 && i < cp_store_rows_count(rows); i++) {
                char *a = NULL;
                r = reseal_secret(cp_store_rows_get(rows, i, 1), &a, reterr);
                if (r >= 0 && a) {
                        const char *p[2] = { cp_store_rows_get(rows, i, 0), a };
                        r = cp_store_tx_exec(tx, "UPDATE services SET session_private_key = $2 WHERE id = $1",
                                             2, p, NULL, reterr);
                        ret->secrets++;
                }
                free(a);
                if (r < 0)
                        cp_error_prefix(reterr, "session key of service %s", cp_store_rows_get(rows, i, 0));
        }
        if (r >= 0) {
                r = cp_store_tx_commit(tx, reterr);
                tx = NULL;
        }
        cp_store_tx_end(tx);
        return r;
}

/* ---- the key table ------------------------------------------------------------------------ */

int cp_store_pii_key_set_current(cp_store *s, const char *fp, cp_error *reterr) {
        cp_store_tx *tx = NULL;
        const char *p[1] = { fp };
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock(" LOCK_KEYS ")", 0, NULL, NULL, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "UPDATE data_keys SET current = false WHERE current AND fingerprint <> $1",
                                     1, p, NULL, reterr);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "INSERT INTO data_keys (fingerprint, current) VALUES ($1, true)"
                                     " ON CONFLICT (fingerprint) DO UPDATE SET current = true", 1, p, NULL, reterr);
        if (r >= 0) {
                r = cp_store_tx_commit(tx, reterr);
                tx = NULL;
        }
        cp_store_tx_end(tx);
        return r;
}

static int key_usage(cp_store_tx *tx, const char *fp, int64_t *ret_rows, int64_t *ret_secrets,
                     cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { fp };
        int r;

        r = cp_store_tx_exec(tx, "SELECT (SELECT count(*) FROM users WHERE pii_key = $1 AND ($1 <> '' OR "
                             USERS_NONEMPTY "))"
                             " + (SELECT count(*) FROM msp_tenants WHERE pii_key = $1 AND ($1 <> '' OR "
                             TENANTS_NONEMPTY "))"
                             " + (SELECT count(*) FROM events WHERE meta ? 'email' AND pii_key = $1 AND ($1 <> '' OR "
                             EVENTS_NONEMPTY "))", 1, p, &rows, reterr);
        if (r < 0)
                return r;
        *ret_rows = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        rows = cp_store_rows_free(rows);
        r = cp_store_tx_exec(tx, "SELECT private_key_enc FROM server_keys UNION ALL SELECT previous_private_key_enc"
                             " FROM server_keys WHERE previous_private_key_enc IS NOT NULL UNION ALL"
                             " SELECT session_private_key FROM services WHERE session_private_key <> ''", 0, NULL,
                             &rows, reterr);
        if (r < 0)
                return r;
        *ret_secrets = 0;
        for (int i = 0; i < cp_store_rows_count(rows); i++)
                if (!opens_with_writer(cp_store_rows_get(rows, i, 0)))
                        (*ret_secrets)++;
        return 0;
}

int cp_store_pii_key_usage(cp_store *s, const char *fp, int64_t *ret_rows, int64_t *ret_secrets,
                           cp_error *reterr) {
        cp_store_tx *tx = NULL;
        int r = cp_store_tx_begin(s, &tx, reterr);

        if (r < 0)
                return r;
        r = key_usage(tx, fp, ret_rows, ret_secrets, reterr);
        cp_store_tx_end(tx);            /* read only: rolled back */
        return r;
}

/* The count and the delete in one transaction under the keys' lock: a
 * key made current, or a row sealed, in between cannot slip through. */
int cp_store_pii_key_retire(cp_store *s, const char *fp, cp_error *reterr) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        const char *p[1] = { fp };
        int64_t n = 0, secrets = 0;
        int r;

        r = cp_store_tx_begin(s, &tx, reterr);
        if (r < 0)
                return r;
        r = cp_store_tx_exec(tx, "SELECT pg_advisory_xact_lock(" LOCK_KEYS ")", 0, NULL, NULL, reterr);
        if (r >= 0)
                r = key_usage(tx, fp, &n, &secrets, reterr);
        if (r >= 0 && (n > 0 || secrets > 0))
                r = cp_error_set(reterr, -EBUSY, "%" PRId64 " rows and %" PRId64 " keys are still sealed with "
                                 "key %s: run data-key reencrypt first", n, secrets, fp);
        if (r >= 0)
                r = cp_store_tx_exec(tx, "DELETE FROM data_keys WHERE fingerprint = $1 AND NOT current", 1, p, &rows,
                                     reterr);
        if (r >= 0 && cp_store_rows_affected(rows) != 1)
                r = cp_error_set(reterr, -EBUSY, "key %s is the current key or is not recorded", fp);
        if (r >= 0) {
                r = cp_store_tx_commit(tx, reterr);
                tx = NULL;
        }
        cp_store_tx_end(tx);
        return r;
}

int cp_store_pii_key_list(cp_store *s, struct pg_result **ret_rows, cp_error *reterr) {
        return cp_store_exec1(s, "SELECT fingerprint, current, to_char(created_at AT TIME ZONE 'UTC',"
                              " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM data_keys ORDER BY current DESC, created_at",
                              0, NULL, ret_rows, reterr);
}

int cp_store_tx_event_sealed(cp_store_tx *tx, int activity, const char *initiator_id, const char *target_id,
                             const char *account_id, const char *meta_json, const char *pii_key,
                             cp_error *reterr) {
        static const char sql[] = "INSERT INTO events (activity, initiator_id, target_id, account_id, meta, pii_key)"
                                  " VALUES ($1::int, $2, $3, $4, COALESCE($5::jsonb, '{}'::jsonb), $6)";
        char code[16];

        (void) snprintf(code, sizeof code, "%d", activity);
        const char *p[6] = { code, initiator_id ? initiator_id : "", target_id ? target_id : "", account_id,
                             meta_json, pii_key ? pii_key : "" };
        return cp_store_tx_exec(tx, sql, 6, p, NULL, reterr);
}

int cp_store_pii_tool_keys(cp_store *s, const uint8_t *key, const uint8_t *previous, cp_error *reterr) {
        cp_store_pii_check chk;
        int r;

        if (!key)
                return 0;
        cp_pii_install(key, previous);
        r = cp_store_pii_key_check(s, &chk, reterr);
        if (r >= 0)
                return 1;
        cp_pii_uninstall();
        return r == -EKEYREJECTED ? 0 : r;
}
