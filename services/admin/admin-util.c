#include "cp/base.h"
#include "cp/log.h"
#include "cp/store-tx.h"
#include "cp/strbuf.h"
#include "admin.h"

#include <stdarg.h>

static const cp_log_ctx log_ctx = { .component = "admin" };

int admin_fail(int code, const cp_error *err, const char *fmt, ...) {
        char what[512];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        if (err && err->message[0])
                fprintf(stderr, ADMIN_PROG ": error: %s: %s\n", what, err->message);
        else
                fprintf(stderr, ADMIN_PROG ": error: %s\n", what);
        if (err && err->hint[0])
                fprintf(stderr, "hint: %s\n", err->hint);
        (void) cp_log_error(&log_ctx, err && err->code ? err->code : -EINVAL, err, "%s", what);
        return code;
}

int admin_open_store(const admin_ctx *a, bool migrate, cp_store_migrate_result *mr, cp_store **ret) {
        cp_store_migrate_result res = { 0 };
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        /* Two connections: one for the command, one spare for a lookup
         * next to an open transaction. */
        r = cp_store_open(a->cfg->postgres_dsn, 2, &s, &err);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot connect to PostgreSQL");
        if (migrate) {
                r = cp_store_migrate(s, &res, &err);
                if (r < 0) {
                        cp_store_free(s);
                        return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot apply database migrations");
                }
                if (mr)
                        *mr = res;
        } else {
                r = cp_store_migrations_current(s, &err);
                if (r == 0) {
                        cp_error_set(&err, -ESTALE, "the database schema is not up to date");
                        cp_error_hint(&err, "run '" ADMIN_PROG " migrate' (or start a netbird-mgmt replica) first");
                }
                if (r <= 0) {
                        cp_store_free(s);
                        return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot use the database");
                }
        }
        *ret = s;
        return 0;
}

int admin_query_json(cp_store *s, const char *sql, int n, const char *const *params, json_t **ret) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        json_error_t jerr;
        json_t *v;
        int r;

        r = cp_store_tx_begin(s, &tx, &err);
        if (r >= 0)
                r = cp_store_tx_exec(tx, sql, n, params, &rows, &err);
        tx = cp_store_tx_end(tx);       /* read-only: nothing to commit */
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "query failed");
        const char *text = cp_store_rows_count(rows) == 1 ? cp_store_rows_get(rows, 0, 0) : NULL;
        v = text ? json_loads(text, 0, &jerr) : NULL;
        if (!v)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "query returned no JSON");
        *ret = v;
        return 0;
}

/* ---- output -------------------------------------------------------------------- */

static void cell_text(const json_t *v, cp_strbuf *out) {
        if (!v || json_is_null(v)) {
                cp_strbuf_addch(out, '-');
        } else if (json_is_string(v)) {
                const char *s = json_string_value(v);
                cp_strbuf_adds(out, *s ? s : "\"\"");
        } else if (json_is_integer(v)) {
                cp_strbuf_addf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        } else if (json_is_real(v)) {
                cp_strbuf_addf(out, "%g", json_real_value(v));
        } else if (json_is_boolean(v)) {
                cp_strbuf_adds(out, json_is_true(v) ? "true" : "false");
        } else if (json_is_array(v)) {
                size_t i;
                const json_t *e;
                if (json_array_size(v) == 0)
                        cp_strbuf_addch(out, '-');
                json_array_foreach(v, i, e) {
                        if (i)
                                cp_strbuf_addch(out, ',');
                        if (json_is_object(e) && json_object_get(e, "id"))
                                cell_text(json_object_get(e, "id"), out);
                        else
                                cell_text(e, out);
                }
        } else {
                char *d = json_dumps(v, JSON_COMPACT);
                cp_strbuf_adds(out, d ? d : "?");
                free(d);
        }
}

/* Control characters would break the table (and a terminal): shown as '?'. */
static void sanitize(char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        *s = '?';
}

void admin_print_rows(const json_t *rows, const admin_column *cols, size_t n_cols, bool json) {
        size_t n_rows = json_is_array(rows) ? json_array_size(rows) : 0;
        size_t width[16] = { 0 };
        char **cells;

        if (json) {
                char *d = json_dumps(rows, JSON_INDENT(2));
                if (d)
                        printf("%s\n", d);
                free(d);
                return;
        }
        if (n_cols > ELEMENTSOF(width))
                n_cols = ELEMENTSOF(width);
        cells = cp_xcalloc(n_rows * n_cols + 1, sizeof *cells);
        for (size_t c = 0; c < n_cols; c++)
                width[c] = strlen(cols[c].header);
        for (size_t r = 0; r < n_rows; r++) {
                const json_t *row = json_array_get(rows, r);
                for (size_t c = 0; c < n_cols; c++) {
                        cp_strbuf sb;
                        cp_strbuf_init(&sb);
                        cell_text(json_is_object(row) ? json_object_get(row, cols[c].key) : NULL, &sb);
                        cells[r * n_cols + c] = cp_strbuf_detach(&sb);
                        sanitize(cells[r * n_cols + c]);
                        if (strlen(cells[r * n_cols + c]) > width[c])
                                width[c] = strlen(cells[r * n_cols + c]);
                }
        }
        for (size_t c = 0; c < n_cols; c++)
                printf("%-*s%s", c + 1 < n_cols ? (int) width[c] : 0, cols[c].header, c + 1 < n_cols ? "  " : "\n");
        for (size_t r = 0; r < n_rows; r++)
                for (size_t c = 0; c < n_cols; c++)
                        printf("%-*s%s", c + 1 < n_cols ? (int) width[c] : 0, cells[r * n_cols + c],
                               c + 1 < n_cols ? "  " : "\n");
        for (size_t i = 0; i < n_rows * n_cols; i++)
                free(cells[i]);
        free(cells);
}

int admin_finish_stdout(void) {
        if (fflush(stdout) != 0 || ferror(stdout))
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "cannot write to stdout");
        return ADMIN_EXIT_OK;
}
