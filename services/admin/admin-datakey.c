/*
 * data-key status | reencrypt | retire: the deployment's
 * DataStoreEncryptionKeys (cp/store-pii.h, docs/ops.md "Rotating the
 * DataStoreEncryptionKey").
 *
 * reencrypt takes the new key as DataStoreEncryptionKey and the old one
 * as DataStoreEncryptionKeyPrevious, makes the new key current (replicas
 * that have it follow within seconds), re-seals server and session keys,
 * then personal data in committed batches: an interrupted run (or one
 * stopped by --max-batches) is resumed by running it again.
 */
#include "admin.h"
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-pii.h"
#include "cp/store-tx.h"

static const cp_log_ctx log_ctx_admin = { .component = "data-key" };

/* Installs the configured keys. Returns 0 or an exit code after
 * reporting. */
static int install_keys(const admin_ctx *a, bool required) {
        uint8_t key[32], prev[32];
        cp_error err = { 0 };
        int r, pr;

        r = cp_config_encryption_key(a->cfg, key);
        pr = cp_config_encryption_key_previous(a->cfg, prev);
        if (r < 0 || pr < 0 || (r == 0 && required)) {
                cp_error_set(&err, -EINVAL, r == 0 ? "no DataStoreEncryptionKey configured" :
                             "invalid DataStoreEncryptionKey or DataStoreEncryptionKeyPrevious: expected standard "
                             "base64 of 32 bytes");
                cp_error_hint(&err, "--data-store-encryption-key (NB_MGMT_DATA_STORE_ENCRYPTION_KEY) is the new "
                              "key, --data-store-encryption-key-previous "
                              "(NB_MGMT_DATA_STORE_ENCRYPTION_KEY_PREVIOUS) the one being replaced");
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                return admin_fail(ADMIN_EXIT_USAGE, &err, "cannot use the keys");
        }
        if (r == 1)
                cp_pii_install(key, pr == 1 ? prev : NULL);
        cp_explicit_bzero(key, sizeof key);
        cp_explicit_bzero(prev, sizeof prev);
        return 0;
}

/* The keys installed and the store open: 0, or an exit code after
 * reporting (nothing left to undo). close_keyed() undoes both. */
static int open_keyed(const admin_ctx *a, bool required, cp_store **ret) {
        int r = install_keys(a, required);

        if (r != 0)
                return r;
        r = admin_open_store(a, false, NULL, ret);
        if (r != 0)
                cp_pii_uninstall();
        return r;
}

static void close_keyed(cp_store *s) {
        cp_store_free(s);
        cp_pii_uninstall();
}

int admin_cmd_data_key_status(const admin_ctx *a) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r, code = ADMIN_EXIT_OK;

        r = open_keyed(a, false, &s);
        if (r != 0)
                return r;
        r = cp_store_pii_key_list(s, &rows, &err);
        if (r < 0) {
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot read the keys");
                goto out;
        }
        json_t *list = json_array();
        for (int i = 0; i < cp_store_rows_count(rows); i++) {
                const char *fp = cp_store_rows_get(rows, i, 0);
                int64_t n = 0, secrets = -1;
                if (cp_store_pii_key_usage(s, fp, &n, &secrets, &err) < 0) {
                        json_decref(list);
                        code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot count the rows of key %s", fp);
                        goto out;
                }
                const char *configured = strcmp(fp, cp_pii_key_fp()) == 0 ? "key" :
                                         strcmp(fp, cp_pii_previous_fp()) == 0 ? "previous" : "-";
                json_array_append_new(list, json_pack("{s:s, s:b, s:s, s:I, s:s}", "fingerprint", fp, "current",
                                                      cp_store_rows_bool(rows, i, 1), "created_at",
                                                      cp_store_rows_get(rows, i, 2), "rows", (json_int_t) n,
                                                      "configured", configured));
        }
        rows = cp_store_rows_free(rows);
        int64_t plain = 0, secrets = 0;
        if (cp_store_pii_key_usage(s, "", &plain, &secrets, &err) < 0) {
                json_decref(list);
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot count plain-text rows");
                goto out;
        }
        json_array_append_new(list, json_pack("{s:s, s:b, s:s, s:I, s:s}", "fingerprint", "(plain text)", "current",
                                              0, "created_at", "", "rows", (json_int_t) plain, "configured", "-"));
        static const admin_column cols[] = { { "FINGERPRINT", "fingerprint" }, { "CURRENT", "current" },
                                             { "ROWS", "rows" }, { "CONFIGURED", "configured" },
                                             { "CREATED", "created_at" } };
        admin_print_rows(list, cols, ELEMENTSOF(cols), a->opts->json);
        json_decref(list);
        if (admin_finish_stdout() != 0)
                code = ADMIN_EXIT_FAILURE;
out:
        close_keyed(s);
        return r != 0 ? r : code;
}

int admin_cmd_data_key_reencrypt(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_store_pii_counts counts = { 0 };
        cp_store_pii_check chk;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int64_t left = 0, secrets_left = 0;
        char new_fp[CP_PII_FP_LEN], old_fp[CP_PII_FP_LEN] = "";
        int r, code = ADMIN_EXIT_OK;

        r = open_keyed(a, true, &s);
        if (r != 0)
                return r;
        (void) snprintf(new_fp, sizeof new_fp, "%s", cp_pii_key_fp());
        r = cp_store_pii_key_check(s, &chk, &err);
        if (r < 0) {
                if (r == -EKEYREJECTED)
                        cp_error_hint(&err, "give the key the database is sealed with as "
                                      "--data-store-encryption-key-previous");
                code = admin_fail(r == -EKEYREJECTED ? ADMIN_EXIT_USAGE : ADMIN_EXIT_FAILURE, &err,
                                  "cannot re-encrypt");
                r = 0;
                goto out;
        }
        if (strcmp(chk.current, new_fp) != 0) {
                (void) snprintf(old_fp, sizeof old_fp, "%s", chk.current);
                r = cp_store_pii_key_set_current(s, new_fp, &err);
                if (r < 0) {
                        code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot record the new key");
                        r = 0;
                        goto out;
                }
                cp_log_kv(&log_ctx_admin, CP_LOG_INFO, "new DataStoreEncryptionKey is current", "key_fingerprint",
                          new_fp, "previous_key_fingerprint", old_fp, NULL);
        } else if (*cp_pii_previous_fp())
                (void) snprintf(old_fp, sizeof old_fp, "%s", cp_pii_previous_fp());
        (void) cp_pii_use(new_fp);

        r = cp_store_pii_reseal_secrets(s, &counts, &err);
        if (r >= 0)
                r = cp_store_pii_reseal(s, false, (int) o->batch_size, (int) o->max_batches, &counts, &err);
        if (r >= 0 && counts.done && *old_fp)
                r = cp_store_pii_key_usage(s, old_fp, &left, &secrets_left, &err);
        if (r < 0) {
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "re-encryption stopped (what was committed stays; run "
                                  "the command again to continue)");
                r = 0;
                goto out;
        }
        /* Rows a replica wrote with the old key just before it switched:
         * one more pass picks them up. */
        if (counts.done && (left > 0 || secrets_left > 0)) {
                r = cp_store_pii_reseal_secrets(s, &counts, &err);
                if (r >= 0)
                        r = cp_store_pii_reseal(s, false, (int) o->batch_size, 0, &counts, &err);
                if (r >= 0)
                        r = cp_store_pii_key_usage(s, old_fp, &left, &secrets_left, &err);
                if (r < 0) {
                        code = admin_fail(ADMIN_EXIT_FAILURE, &err, "re-encryption stopped");
                        r = 0;
                        goto out;
                }
        }
        bool done = counts.done && left == 0 && secrets_left == 0;
        if (o->json) {
                json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:i, s:b}", "current_key", new_fp,
                                      "previous_key", old_fp, "users", (json_int_t) counts.users, "events",
                                      (json_int_t) counts.events, "tenants", (json_int_t) counts.tenants, "secrets",
                                      (json_int_t) counts.secrets, "batches", counts.batches, "done", done);
                char *d = json_dumps(j, JSON_INDENT(2));
                printf("%s\n", d ? d : "{}");
                free(d);
                json_decref(j);
        } else {
                printf("CURRENT_KEY=%s\nPREVIOUS_KEY=%s\nUSERS=%" PRId64 "\nEVENTS=%" PRId64 "\nTENANTS=%" PRId64
                       "\nSECRETS=%" PRId64 "\nBATCHES=%d\nDONE=%s\n", new_fp, old_fp, counts.users, counts.events,
                       counts.tenants, counts.secrets, counts.batches, done ? "true" : "false");
        }
        if (!done)
                fprintf(stderr, ADMIN_PROG ": not finished: run the command again to continue\n");
        else if (*old_fp)
                fprintf(stderr, ADMIN_PROG ": done: nothing is sealed with %s any more; run: " ADMIN_PROG
                        " data-key retire %s, then drop DataStoreEncryptionKeyPrevious from every replica\n",
                        old_fp, old_fp);
        if (admin_finish_stdout() != 0)
                code = ADMIN_EXIT_FAILURE;
out:
        close_keyed(s);
        return r != 0 ? r : code;
}

int admin_cmd_data_key_retire(const admin_ctx *a) {
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r, code = ADMIN_EXIT_OK;

        r = open_keyed(a, true, &s);
        if (r != 0)
                return r;
        {
                cp_store_pii_check chk;
                r = cp_store_pii_key_check(s, &chk, &err);
                if (r < 0) {
                        code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot retire a key");
                        r = 0;
                        goto out;
                }
        }
        r = cp_store_pii_key_retire(s, a->opts->arg, &err);
        if (r < 0) {
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot retire key %s", a->opts->arg);
                r = 0;
                goto out;
        }
        printf("RETIRED_KEY=%s\n", a->opts->arg);
        if (admin_finish_stdout() != 0)
                code = ADMIN_EXIT_FAILURE;
out:
        close_keyed(s);
        return r != 0 ? r : code;
}
