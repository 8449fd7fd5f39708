/*
 * export: the deployment's accounts written out as a NetBird store, so
 * that an operator can go back to NetBird's own management server.
 *
 *   netbird-cp-admin export --sqlite FILE [--account ID] [--events-sqlite FILE]
 *                           [--encryption-key KEY] [--force]
 *
 * Target: NetBird v0.77.1 (the commit this project pins); the tables and
 * what goes in each are in admin-export-schema.c. FILE is a store.db that
 * NetBird's management server opens with its SQLite engine (its datadir's
 * store.db): its migrations find nothing to convert, AutoMigrate adds the
 * tables of features we do not have (agent networks, reverse-proxy
 * services, invites, jobs) and it backfills public ids.
 *
 * Secrets as NetBird stores them: setup keys and personal access tokens
 * are hashes in both stores and are copied, so existing keys and tokens
 * keep working; users' e-mails and names are sealed here under OUR
 * DataStoreEncryptionKey (the common --data-store-encryption-key) and
 * written encrypted with NetBird's (--encryption-key, the
 * DataStoreEncryptionKey of its management.json, FieldEncrypt's
 * AES-256-GCM), or in plain text without it -- which NetBird reads only
 * when it runs without a DataStoreEncryptionKey (with one, it fails to
 * decrypt them). events.db (--events-sqlite) is NetBird's activity
 * store, which always encrypts: the e-mail and name an event carries go
 * to deleted_users encrypted, so it needs --encryption-key.
 *
 * Not exported (NetBird has no place for them or they are ours): the
 * cluster's sessions (peers are written disconnected), replicas, server
 * keys (NetBird makes its own: agents fetch it before each login), JWT
 * claims cache, reverse-proxy services, proxy tokens and access logs
 * (their NetBird tables differ and hold secrets sealed under our key),
 * MSP tenants and device limits, the data-key fingerprints, and the
 * events' initiator account.
 *
 * Consistency and safety: everything is read in one REPEATABLE READ,
 * READ ONLY transaction (one snapshot while replicas write), each table
 * with a statement scoped to one account. The files are written as
 * FILE.tmp (mode 0600: they hold token and key hashes) in one SQLite
 * transaction each and renamed over FILE only when everything is
 * written: a failed export leaves nothing behind. An existing FILE is
 * refused unless --force.
 */
#include "admin.h"
#include "admin-export.h"
#include "cp/base.h"
#include "cp/crypto-aead.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"

#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#define EVENTS_PAGE "2000"

static const cp_log_ctx log_ctx = { .component = "export" };

typedef struct export_file {
        char *path, *tmp;
        sqlite3 *db;
} export_file;

typedef struct export_run {
        const admin_ctx *a;
        cp_store_tx *tx;
        export_file store, events;
        sqlite3_stmt **insert;          /* per admin_export_store_tables row (NULL: no rows) */
        sqlite3_stmt *event_insert, *deleted_user_insert;
        uint8_t nb_key[CP_DATA_KEY_LEN];
        bool has_nb_key;
        int64_t counts[32];             /* per table, for the current account */
        int64_t n_events;
} export_run;

/* ---- SQLite files ----------------------------------------------------------- */

static int sqlite_fail(sqlite3 *db, const char *what, cp_error *err) {
        return cp_error_set(err, -EIO, "%s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
}

static void file_remove_tmp(export_file *f) {
        char journal[PATH_MAX];

        if (!f->tmp)
                return;
        (void) unlink(f->tmp);
        (void) snprintf(journal, sizeof journal, "%s-journal", f->tmp);
        (void) unlink(journal);
}

/* FILE.tmp, new and private, opened with a transaction begun. */
static int file_open(export_file *f, const char *path, cp_error *err) {
        int fd;

        f->path = cp_xstrdup(path);
        f->tmp = cp_xasprintf("%s.tmp", path);
        file_remove_tmp(f);             /* left by an interrupted export */
        fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return cp_error_set(err, -errno, "cannot create %s: %s", f->tmp, strerror(errno));
        (void) close(fd);
        if (sqlite3_open_v2(f->tmp, &f->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        /* Rows go in table order, parents first, but NetBird's own stores
         * have dangling references (a peer's user deleted): keys are not
         * enforced while writing, as gorm does not enforce them either. */
        if (sqlite3_exec(f->db, "PRAGMA foreign_keys = OFF; BEGIN", NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        return 0;
}

static int file_commit(export_file *f, cp_error *err) {
        if (sqlite3_exec(f->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        if (sqlite3_close(f->db) != SQLITE_OK)
                return sqlite_fail(f->db, f->tmp, err);
        f->db = NULL;
        return 0;
}

static void file_release(export_file *f, bool discard) {
        if (f->db)
                (void) sqlite3_close_v2(f->db);
        f->db = NULL;
        if (discard)
                file_remove_tmp(f);
        free(f->path);
        free(f->tmp);
        f->path = f->tmp = NULL;
}

/* INSERT INTO table VALUES (?, ...) with one parameter per column of the
 * table as created. */
static int prepare_insert(sqlite3 *db, const char *table, const char *verb, sqlite3_stmt **ret, cp_error *err) {
        sqlite3_stmt *probe = NULL;
        cp_strbuf sb;
        int n, rc;

        cp_strbuf_init(&sb);
        cp_strbuf_addf(&sb, "SELECT * FROM `%s`", table);
        rc = sqlite3_prepare_v2(db, sb.buf, -1, &probe, NULL);
        n = rc == SQLITE_OK ? sqlite3_column_count(probe) : 0;
        (void) sqlite3_finalize(probe);
        cp_strbuf_reset(&sb);
        cp_strbuf_addf(&sb, "%s INTO `%s` VALUES (", verb, table);
        for (int i = 0; i < n; i++)
                cp_strbuf_adds(&sb, i ? ",?" : "?");
        cp_strbuf_addch(&sb, ')');
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, sb.buf, -1, ret, NULL);
        cp_strbuf_release(&sb);
        if (rc != SQLITE_OK)
                return sqlite_fail(db, table, err);
        return 0;
}

/* Binds values (NULL = SQL NULL) and inserts one row. */
static int insert_row(sqlite3 *db, sqlite3_stmt *st, const char *const *values, int n, const char *table,
                      cp_error *err) {
        int rc = SQLITE_OK;

        for (int i = 0; i < n && rc == SQLITE_OK; i++)
                rc = values[i] ? sqlite3_bind_text(st, i + 1, values[i], -1, SQLITE_TRANSIENT)
                               : sqlite3_bind_null(st, i + 1);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        if (rc != SQLITE_OK)
                (void) sqlite_fail(db, table, err);
        (void) sqlite3_reset(st);
        (void) sqlite3_clear_bindings(st);
        return rc == SQLITE_OK ? 0 : -EIO;
}

/* ---- values ----------------------------------------------------------------- */

/* A value sealed under our key (fp = its pii_key), as NetBird stores it:
 * encrypted with its key when given, else plain. *ret is the caller's
 * (wiped and freed by secret_free). */
static int pii_value(const export_run *x, const char *fp, const char *stored, char **ret, cp_error *err) {
        char *plain = NULL;
        int r;

        r = cp_pii_open_strict(fp, stored ? stored : "", &plain, err);
        if (r < 0) {
                if (r == -ENOKEY)
                        cp_error_hint(err, "give this deployment's DataStoreEncryptionKey "
                                      "(--data-store-encryption-key or NB_MGMT_DATA_STORE_ENCRYPTION_KEY)");
                return r;
        }
        if (!x->has_nb_key) {
                *ret = plain;
                return 0;
        }
        r = cp_crypto_aead_encrypt(x->nb_key, plain, strlen(plain), ret, err);
        cp_explicit_bzero(plain, strlen(plain));
        free(plain);
        return r;
}

/* Names the row whose personal data failed (err keeps its hint). */
static void pii_error(cp_error *err, int r, const char *what, const char *id) {
        char why[sizeof err->message], hint[sizeof err->hint];

        (void) snprintf(why, sizeof why, "%s", err->message);
        (void) snprintf(hint, sizeof hint, "%s", err->hint);
        (void) cp_error_set(err, r, "%s %s: cannot open its personal data: %s", what, id, why);
        if (hint[0])
                cp_error_hint(err, "%s", hint);
}

static void secret_free(char *s) {
        if (s) {
                cp_explicit_bzero(s, strlen(s));
                free(s);
        }
}

/* ---- tables ------------------------------------------------------------------- */

static int export_table(export_run *x, size_t t, const char *account_id, cp_error *err) {
        const admin_export_table *tab = &admin_export_store_tables[t];
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        sqlite3_stmt *st = x->insert[t];
        int n = sqlite3_bind_parameter_count(st);
        const char **values;
        int r;

        r = cp_store_tx_exec(x->tx, tab->sql, 1, p, &rows, err);
        if (r < 0)
                return r;
        values = cp_xcalloc((size_t) n + 1, sizeof *values);
        for (int i = 0; i < cp_store_rows_count(rows) && r >= 0; i++) {
                char *sealed[32] = { NULL };
                const char *fp = tab->pii ? cp_store_rows_get(rows, i, n) : NULL;
                for (int c = 0; c < n && r >= 0; c++) {
                        values[c] = cp_store_rows_get(rows, i, c);
                        if (c < 32 && (tab->pii & (1u << c))) {
                                r = pii_value(x, fp, values[c], &sealed[c], err);
                                if (r < 0)
                                        pii_error(err, r, tab->name, cp_store_rows_get(rows, i, 0));
                                values[c] = sealed[c];
                        }
                }
                if (r >= 0)
                        r = insert_row(x->store.db, st, values, n, tab->name, err);
                for (int c = 0; c < 32; c++)
                        secret_free(sealed[c]);
        }
        free(values);
        if (r >= 0)
                x->counts[t] += cp_store_rows_count(rows);
        return r;
}

/* One event as NetBird's activity store saves it: when meta holds both
 * "email" and "name" they move to deleted_users (encrypted, keyed by the
 * target id, the last event winning) and out of meta, which is NULL when
 * nothing else was in it. */
static int export_event(export_run *x, const cp_store_rows *rows, int i, cp_error *err) {
        const char *meta_text = cp_store_rows_get(rows, i, 6), *fp = cp_store_rows_get(rows, i, 7);
        const char *values[7];
        char *meta_out = NULL, *email = NULL, *name = NULL;
        json_t *meta = meta_text ? json_loads(meta_text, 0, NULL) : NULL;
        json_t *je = meta ? json_object_get(meta, "email") : NULL, *jn = meta ? json_object_get(meta, "name") : NULL;
        int r = 0;

        if (json_is_string(je) && json_is_string(jn)) {
                r = pii_value(x, fp, json_string_value(je), &email, err);
                if (r >= 0)
                        r = pii_value(x, fp, json_string_value(jn), &name, err);
                if (r < 0) {
                        pii_error(err, r, "event", cp_store_rows_get(rows, i, 0));
                        goto out;
                }
                const char *du[4] = { cp_store_rows_get(rows, i, 4), email, name, "GCM" };
                r = insert_row(x->events.db, x->deleted_user_insert, du, 4, "deleted_users", err);
                if (r < 0)
                        goto out;
                size_t before = json_object_size(meta);
                (void) json_object_del(meta, "email");
                (void) json_object_del(meta, "name");
                if (before == 2) {
                        json_decref(meta);
                        meta = NULL;
                }
        }
        /* encoding/json writes a map's keys sorted. */
        meta_out = meta ? json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        /* events: timestamp, activity, id, initiator_id, target_id, account_id, meta */
        values[0] = cp_store_rows_get(rows, i, 1);
        values[1] = cp_store_rows_get(rows, i, 2);
        values[2] = cp_store_rows_get(rows, i, 0);
        values[3] = cp_store_rows_get(rows, i, 3);
        values[4] = cp_store_rows_get(rows, i, 4);
        values[5] = cp_store_rows_get(rows, i, 5);
        values[6] = meta_out;
        r = insert_row(x->events.db, x->event_insert, values, 7, "events", err);
out:
        json_decref(meta);
        free(meta_out);
        secret_free(email);
        secret_free(name);
        return r;
}

static int export_events(export_run *x, const char *account_id, cp_error *err) {
        char after[24] = "0";

        for (;;) {
                _cleanup_rows_ cp_store_rows *rows = NULL;
                const char *p[3] = { account_id, after, EVENTS_PAGE };
                int r = cp_store_tx_exec(x->tx, admin_export_events_sql, 3, p, &rows, err);
                int n = r < 0 ? 0 : cp_store_rows_count(rows);
                if (r < 0)
                        return r;
                for (int i = 0; i < n; i++) {
                        r = export_event(x, rows, i, err);
                        if (r < 0)
                                return r;
                }
                x->n_events += n;
                if (n < atoi(EVENTS_PAGE))
                        return 0;
                (void) snprintf(after, sizeof after, "%s", cp_store_rows_get(rows, n - 1, 0));
        }
}

static void summary_line(const export_run *x, const char *account_id, cp_strbuf *out) {
        bool first = true;

        cp_strbuf_addf(out, "exported account %s (", account_id);
        for (size_t t = 0; t < admin_export_n_store_tables; t++) {
                if (!admin_export_store_tables[t].noun)
                        continue;
                cp_strbuf_addf(out, "%s%" PRId64 " %s", first ? "" : ", ", x->counts[t],
                               admin_export_store_tables[t].noun);
                first = false;
        }
        if (x->events.path)
                cp_strbuf_addf(out, ", %" PRId64 " events", x->n_events);
        cp_strbuf_adds(out, ")\n");
}

/* ---- the command ---------------------------------------------------------------- */

static const char SQL_SNAPSHOT[] = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
static const char SQL_ACCOUNT_ONE[] = "SELECT a.id FROM accounts a WHERE a.id = $1";
/* Deployment-wide on purpose: the export's list of accounts. */
static const char SQL_ACCOUNT_ALL[] = "SELECT a.id FROM accounts a ORDER BY a.created_at, a.id";

/* Creates the files' schema and the insert statements. */
static int create_schema(export_run *x, cp_error *err) {
        for (size_t t = 0; t < admin_export_n_store_tables; t++) {
                const admin_export_table *tab = &admin_export_store_tables[t];
                if (sqlite3_exec(x->store.db, tab->ddl, NULL, NULL, NULL) != SQLITE_OK)
                        return sqlite_fail(x->store.db, tab->name, err);
                if (tab->sql && prepare_insert(x->store.db, tab->name, "INSERT", &x->insert[t], err) < 0)
                        return -EIO;
        }
        if (!x->events.path)
                return 0;
        if (sqlite3_exec(x->events.db, admin_export_events_ddl, NULL, NULL, NULL) != SQLITE_OK)
                return sqlite_fail(x->events.db, "events", err);
        if (prepare_insert(x->events.db, "events", "INSERT", &x->event_insert, err) < 0 ||
            prepare_insert(x->events.db, "deleted_users", "INSERT OR REPLACE", &x->deleted_user_insert, err) < 0)
                return -EIO;
        return 0;
}

static int export_all(export_run *x, cp_strbuf *out, cp_error *err) {
        const admin_opts *o = x->a->opts;
        _cleanup_rows_ cp_store_rows *accounts = NULL;
        const char *p[1] = { o->account };
        int r;

        r = cp_store_tx_exec(x->tx, SQL_SNAPSHOT, 0, NULL, NULL, err);
        if (r >= 0)
                r = o->account ? cp_store_tx_exec(x->tx, SQL_ACCOUNT_ONE, 1, p, &accounts, err)
                               : cp_store_tx_exec(x->tx, SQL_ACCOUNT_ALL, 0, NULL, &accounts, err);
        if (r < 0)
                return r;
        if (o->account && cp_store_rows_count(accounts) == 0)
                return cp_error_set(err, -ENOENT, "account %s not found", o->account);
        r = create_schema(x, err);
        for (int i = 0; i < cp_store_rows_count(accounts) && r >= 0; i++) {
                const char *id = cp_store_rows_get(accounts, i, 0);
                memset(x->counts, 0, sizeof x->counts);
                x->n_events = 0;
                for (size_t t = 0; t < admin_export_n_store_tables && r >= 0; t++)
                        if (admin_export_store_tables[t].sql)
                                r = export_table(x, t, id, err);
                if (r >= 0 && x->events.path)
                        r = export_events(x, id, err);
                if (r >= 0) {
                        summary_line(x, id, out);
                        cp_log_kv(&log_ctx, CP_LOG_INFO, "account exported", "account", id, NULL);
                }
        }
        return r;
}

/* Installs our DataStoreEncryptionKey (when configured) to open the
 * personal data; returns 0 or an exit code after reporting. */
static int install_our_key(const admin_ctx *a) {
        uint8_t key[CP_DATA_KEY_LEN], prev[CP_DATA_KEY_LEN];
        int r = cp_config_encryption_key(a->cfg, key), pr = cp_config_encryption_key_previous(a->cfg, prev);

        if (r < 0 || pr < 0) {
                cp_explicit_bzero(key, sizeof key);
                cp_explicit_bzero(prev, sizeof prev);
                return admin_fail(ADMIN_EXIT_USAGE, NULL, "invalid DataStoreEncryptionKey: expected standard base64 "
                                  "of 32 bytes");
        }
        if (r == 1)
                cp_pii_install(key, pr == 1 ? prev : NULL);
        cp_explicit_bzero(key, sizeof key);
        cp_explicit_bzero(prev, sizeof prev);
        return 0;
}

static int check_target(const char *path, bool force) {
        struct stat st;

        if (stat(path, &st) == 0 && !force) {
                fprintf(stderr, ADMIN_PROG ": error: %s exists\nhint: give --force to replace it\n", path);
                return ADMIN_EXIT_FAILURE;
        }
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
                fprintf(stderr, ADMIN_PROG ": error: %s is a directory\n", path);
                return ADMIN_EXIT_FAILURE;
        }
        return 0;
}

int admin_cmd_export(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        export_run x = { .a = a };
        cp_store *s = NULL;
        cp_error err = { 0 };
        cp_strbuf out;
        int r, code;

        if (!o->sqlite || !*o->sqlite) {
                fprintf(stderr, ADMIN_PROG ": error: --sqlite FILE is required (the NetBird store.db to write)\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->events_sqlite && *o->events_sqlite && !(o->encryption_key && *o->encryption_key)) {
                fprintf(stderr, ADMIN_PROG ": error: --events-sqlite needs --encryption-key: NetBird's activity "
                        "store encrypts the e-mails and names it keeps\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->encryption_key && *o->encryption_key) {
                if (cp_crypto_data_key_parse(o->encryption_key, x.nb_key, &err) < 0)
                        return admin_fail(ADMIN_EXIT_USAGE, &err, "invalid --encryption-key");
                x.has_nb_key = true;
        }
        if (o->events_sqlite && *o->events_sqlite && strcmp(o->events_sqlite, o->sqlite) == 0) {
                fprintf(stderr, ADMIN_PROG ": error: --sqlite and --events-sqlite name the same file\n");
                return ADMIN_EXIT_USAGE;
        }
        code = check_target(o->sqlite, o->force);
        if (code == 0 && o->events_sqlite && *o->events_sqlite)
                code = check_target(o->events_sqlite, o->force);
        if (code == 0)
                code = install_our_key(a);
        if (code != 0) {
                cp_explicit_bzero(x.nb_key, sizeof x.nb_key);
                return code;
        }
        code = admin_open_store(a, false, NULL, &s);
        if (code != 0)
                goto out_keys;

        cp_strbuf_init(&out);
        x.insert = cp_xcalloc(admin_export_n_store_tables, sizeof *x.insert);
        r = file_open(&x.store, o->sqlite, &err);
        if (r >= 0 && o->events_sqlite && *o->events_sqlite)
                r = file_open(&x.events, o->events_sqlite, &err);
        if (r >= 0)
                r = cp_store_tx_begin(s, &x.tx, &err);
        if (r >= 0)
                r = export_all(&x, &out, &err);
        x.tx = cp_store_tx_end(x.tx);   /* read only: nothing to commit */
        for (size_t t = 0; t < admin_export_n_store_tables; t++)
                (void) sqlite3_finalize(x.insert[t]);
        (void) sqlite3_finalize(x.event_insert);
        (void) sqlite3_finalize(x.deleted_user_insert);
        free(x.insert);
        if (r >= 0)
                r = file_commit(&x.store, &err);
        if (r >= 0 && x.events.path)
                r = file_commit(&x.events, &err);
        /* Both files complete: only now do they take their names. */
        if (r >= 0 && rename(x.store.tmp, x.store.path) < 0)
                r = cp_error_set(&err, -errno, "cannot rename %s to %s: %s", x.store.tmp, x.store.path,
                                 strerror(errno));
        if (r >= 0 && x.events.path && rename(x.events.tmp, x.events.path) < 0) {
                r = cp_error_set(&err, -errno, "cannot rename %s to %s: %s", x.events.tmp, x.events.path,
                                 strerror(errno));
                (void) unlink(x.store.path);
        }
        file_release(&x.store, r < 0);
        file_release(&x.events, r < 0);
        if (r < 0) {
                code = admin_fail(ADMIN_EXIT_FAILURE, &err, "export failed, nothing written");
        } else {
                fputs(out.buf, stdout);
                code = admin_finish_stdout();
        }
        cp_strbuf_release(&out);
        cp_store_free(s);
out_keys:
        cp_pii_uninstall();
        cp_explicit_bzero(x.nb_key, sizeof x.nb_key);
        return code;
}
