/*
 * import: a NetBird store into our database (docs/migration.md).
 *
 *   netbird-cp-admin import (--sqlite FILE | --postgres DSN)
 *       [--events-sqlite FILE | --events-postgres DSN] [--encryption-key KEY]
 *       [--dry-run] [--update] [--account ID]
 *
 * The whole source is read first (admin-import-src.c): a damaged file, a
 * database that is not NetBird's, or users' fields that the given
 * --encryption-key (NetBird's DataStoreEncryptionKey) does not open stop
 * the command before anything is written. Users' e-mails and names are
 * opened with NetBird's key here and sealed with ours (the
 * --data-store-encryption-key, when given; else they stay plain text with
 * pii_key '' for the replicas to seal).
 *
 * Then one transaction per account: the source is staged in TEMP tables
 * and mapped in SQL (admin-import-map.c). --dry-run runs the same
 * transaction and rolls it back, so its output is what an import does.
 * An account that exists is refused unless --update, which replaces its
 * imported rows (users and peers are upserted, so sessions survive) and
 * then sends the bus hint so replicas push new maps.
 *
 * Output: "skipped <table> <id>: <reason>" per record that cannot map,
 * then "imported|would import|updated account <id> (<counts>)" per
 * account. Exit 0 when every account landed, 1 otherwise.
 */
#include "cp/base.h"
#include "cp/bus.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-pii.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"
#include "admin.h"
#include "admin-import.h"

#include <ctype.h>
#include <inttypes.h>
#include <libgen.h>

#define BUS_TIMEOUT_MS 3000

static const cp_log_ctx log_ctx = { .component = "import" };

/* A stored NetBird value that is not plain text: standard base64 of at
 * least nonce + tag, with no '@' or space (an e-mail or a name has). */
static bool looks_sealed(const char *v) {
        size_t n = strlen(v);
        if (n < 40 || n % 4 != 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) v[i]) && v[i] != '+' && v[i] != '/' && v[i] != '=')
                        return false;
        return true;
}

/* Users' email and name: opened with NetBird's key (when given), sealed
 * with ours (when installed). Returns 0 or an exit code after reporting. */
static int reseal_users(import_src *src, const uint8_t *nb_key) {
        json_t *users = src->parsed[IMPORT_USERS], *u;
        static const char *const fields[] = { "email", "name" };
        size_t i;

        json_array_foreach(users, i, u) {
                char fp[CP_PII_FP_LEN] = "";
                for (size_t f = 0; f < ELEMENTSOF(fields); f++) {
                        const char *v = json_string_value(json_object_get(u, fields[f]));
                        _cleanup_free_ char *plain = NULL;
                        cp_error err = { 0 };

                        if (!v || !*v)
                                continue;
                        /* NetBird seals them only when it has a key: a
                         * value that cannot be a sealed one is plain text. */
                        if (nb_key && looks_sealed(v)) {
                                if (cp_crypto_aead_decrypt_dup(nb_key, v, &plain, NULL, &err) < 0)
                                        return admin_fail(ADMIN_EXIT_FAILURE, NULL,
                                                          "user %s: its %s does not open with --encryption-key "
                                                          "(is it NetBird's DataStoreEncryptionKey?); nothing imported",
                                                          json_string_value(json_object_get(u, "id")) ?: "?",
                                                          fields[f]);
                        } else if (looks_sealed(v)) {
                                fprintf(stderr, ADMIN_PROG ": error: users' %s is encrypted in this store; nothing "
                                                "imported\nhint: give NetBird's DataStoreEncryptionKey (from its "
                                                "management.json) as --encryption-key\n", fields[f]);
                                return ADMIN_EXIT_FAILURE;
                        } else {
                                plain = cp_xstrdup(v);
                        }
                        char *sealed = cp_pii_seal(plain, fp);
                        cp_explicit_bzero(plain, strlen(plain));
                        if (!sealed)
                                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "%s", CP_PII_SEAL_ERROR);
                        (void) json_object_set_new(u, fields[f], json_string(sealed));
                        free(sealed);
                }
                (void) json_object_set_new(u, "pii_key", json_string(fp));
        }
        if (users)
                import_src_sync(src, IMPORT_USERS);
        return 0;
}

static void publish(const admin_ctx *a, cp_store *s, const char *account_id) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_error err = { 0 };
        int64_t serial = 0;

        if (!a->cfg->redis_url || !*a->cfg->redis_url) {
                fprintf(stderr, ADMIN_PROG ": warning: no --redis-url: replicas notice the update within their "
                                "--serial-check-interval\n");
                return;
        }
        if (cp_store_exec1(s, "SELECT network_serial FROM accounts WHERE id = $1", 1, &account_id, &rows, &err) >= 0 &&
            cp_store_rows_count(rows) == 1)
                serial = strtoll(cp_store_rows_get(rows, 0, 0), NULL, 10);
        if (cp_bus_publish_once(a->cfg->redis_url, a->cfg->bus_channel_prefix ? a->cfg->bus_channel_prefix
                                                                              : "netbird-cp",
                                account_id, serial, BUS_TIMEOUT_MS, &err) < 0)
                fprintf(stderr, ADMIN_PROG ": warning: bus hint not sent (%s): replicas notice within their "
                                "--serial-check-interval\n", err.message);
}

/* One account in one transaction. Returns true when it landed (or would). */
static bool import_account(const admin_ctx *a, cp_store *s, const import_src *src, const char *id) {
        const admin_opts *o = a->opts;
        import_counts n = { 0 };
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        bool exists = false;
        int r;

        r = cp_store_tx_begin(s, &tx, &err);
        if (r >= 0)
                r = import_map_stage(tx, src, &err);
        if (r >= 0) {
                r = import_map_exists(tx, id, &err);
                exists = r > 0;
        }
        if (r >= 0 && exists && !o->update) {
                (void) cp_store_tx_end(tx);
                fprintf(stderr, ADMIN_PROG ": error: account %s exists; nothing imported for it\n"
                                "hint: --update replaces its imported data\n", id);
                return false;
        }
        if (r >= 0)
                r = import_map_account(tx, id, exists, &n, stdout, &err);
        if (r >= 0 && !o->dry_run)
                r = cp_store_tx_commit(tx, &err);
        else
                (void) cp_store_tx_end(tx);
        if (r < 0) {
                (void) admin_fail(ADMIN_EXIT_FAILURE, &err, "account %s not imported", id);
                return false;
        }
        printf("%s account %s (%" PRId64 " peers, %" PRId64 " users, %" PRId64 " groups, %" PRId64 " policies, %"
               PRId64 " routes, %" PRId64 " setup keys, %" PRId64 " tokens, %" PRId64 " nameserver groups, %" PRId64
               " posture checks, %" PRId64 " networks, %" PRId64 " zones, %" PRId64 " events, %" PRId64 " skipped)\n",
               o->dry_run ? "would import" : exists ? "updated" : "imported", id, n.peers, n.users, n.groups,
               n.policies, n.routes, n.setup_keys, n.pats, n.ns_groups, n.posture, n.networks, n.zones, n.events,
               n.skipped);
        (void) fflush(stdout);
        cp_log_kv(&log_ctx, CP_LOG_INFO, o->dry_run ? "account import tried" : "account imported", "account", id,
                  NULL);
        if (exists && !o->dry_run)
                publish(a, s, id);
        return true;
}

/* events.db beside the store file, if there is one. */
static char *events_beside(const char *store_path) {
        _cleanup_free_ char *copy = cp_xstrdup(store_path);
        char *path = cp_xasprintf("%s/events.db", dirname(copy));
        if (access(path, R_OK) == 0)
                return path;
        free(path);
        return NULL;
}

int admin_cmd_import(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        _cleanup_free_ char *events_file = NULL;
        uint8_t nb_key[CP_DATA_KEY_LEN];
        bool have_nb_key = false;
        import_src src = { 0 };
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r, failed = 0, done = 0;

        if (!!o->import_sqlite == !!o->import_postgres) {
                fprintf(stderr, ADMIN_PROG ": error: give exactly one of --sqlite FILE and --postgres DSN\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->events_sqlite && o->events_postgres) {
                fprintf(stderr, ADMIN_PROG ": error: give at most one of --events-sqlite and --events-postgres\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->encryption_key) {
                if (cp_crypto_data_key_parse(o->encryption_key, nb_key, &err) < 0) {
                        fprintf(stderr, ADMIN_PROG ": error: invalid --encryption-key: %s\n", err.message);
                        return ADMIN_EXIT_USAGE;
                }
                have_nb_key = true;
        }

        /* 1. The whole source, before anything is written. */
        if (o->import_sqlite)
                r = import_src_read_sqlite(o->import_sqlite, &src, &err);
        else
                r = import_src_read_pg(o->import_postgres, &src, &err);
        if (r >= 0 && o->events_sqlite)
                r = import_src_read_events_sqlite(o->events_sqlite, &src, &err);
        else if (r >= 0 && o->events_postgres)
                r = import_src_read_events_pg(o->events_postgres, &src, &err);
        else if (r >= 0 && o->import_sqlite && (events_file = events_beside(o->import_sqlite)))
                r = import_src_read_events_sqlite(events_file, &src, &err);
        if (r < 0) {
                r = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot read the NetBird store; nothing imported");
                goto out;
        }

        /* 2. Our database and our data key. */
        r = admin_open_store(a, false, NULL, &s);
        if (r)
                goto out;
        {
                uint8_t key[CP_DATA_KEY_LEN], prev[CP_DATA_KEY_LEN];
                int k = cp_config_encryption_key(a->cfg, key), p = cp_config_encryption_key_previous(a->cfg, prev);
                r = cp_store_pii_tool_keys(s, k == 1 ? key : NULL, p == 1 ? prev : NULL, &err);
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                if (r < 0) {
                        r = admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot check the data key; nothing imported");
                        goto out;
                }
        }
        r = reseal_users(&src, have_nb_key ? nb_key : NULL);
        if (r)
                goto out;

        /* 3. One transaction per account. */
        json_t *accounts = src.parsed[IMPORT_ACCOUNTS], *acc;
        size_t i;
        if (o->account) {
                bool found = false;
                json_array_foreach(accounts, i, acc)
                        found = found || strcmp(json_string_value(json_object_get(acc, "id")) ?: "", o->account) == 0;
                if (!found) {
                        r = admin_fail(ADMIN_EXIT_FAILURE, NULL, "account %s is not in the NetBird store", o->account);
                        goto out;
                }
        }
        json_array_foreach(accounts, i, acc) {
                const char *id = json_string_value(json_object_get(acc, "id"));
                if (!id || !*id) {
                        printf("skipped accounts %s: no id\n", id ? "\"\"" : "(null)");
                        failed++;
                        continue;
                }
                if (o->account && strcmp(o->account, id) != 0)
                        continue;
                if (import_account(a, s, &src, id))
                        done++;
                else
                        failed++;
        }
        if (done + failed == 0)
                printf("no accounts in the NetBird store\n");
        r = admin_finish_stdout();
        if (r == ADMIN_EXIT_OK && failed)
                r = ADMIN_EXIT_FAILURE;
out:
        cp_explicit_bzero(nb_key, sizeof nb_key);
        cp_pii_uninstall();
        if (s)
                cp_store_free(s);
        import_src_free(&src);
        return r;
}
