/*
 * What every handler uses: error and reply helpers, SQL in the request's
 * transaction, activity events, query parameters and typed JSON fields.
 */
#include "api-int.h"
#include "cp/crypto-pii.h"

#include <ctype.h>
#include <stdarg.h>

/* ---- errors and replies --------------------------------------------------------------- */

int api_error_verbatim(api_ctx *c, int status, const char *fmt, ...) {
        va_list ap;

        c->err_status = status;
        va_start(ap, fmt);
        (void) vsnprintf(c->err_message, sizeof c->err_message, fmt, ap);
        va_end(ap);
        return API_FAIL;
}

int api_error(api_ctx *c, int status, const char *fmt, ...) {
        va_list ap;

        c->err_status = status;
        va_start(ap, fmt);
        (void) vsnprintf(c->err_message, sizeof c->err_message, fmt, ap);
        va_end(ap);
        /* NetBird's error writer lower-cases the whole text, ids and
         * names included. */
        for (char *p = c->err_message; *p; p++)
                *p = (char) tolower((unsigned char) *p);
        return API_FAIL;
}

int api_internal(api_ctx *c, const char *what, const cp_error *err) {
        c->err_status = 500;
        (void) snprintf(c->err_message, sizeof c->err_message, "internal server error");
        (void) snprintf(c->err_detail, sizeof c->err_detail, "%s%s%s", what, err ? ": " : "",
                        err ? err->message : "");
        /* PostgreSQL gave up on this transaction to let another one
         * through; running it again is safe (nothing was committed). */
        if (err && (strcmp(err->sqlstate, "40P01") == 0 || strcmp(err->sqlstate, "40001") == 0))
                c->retryable = true;
        return API_FAIL;
}

int api_bad_json(api_ctx *c) {
        return api_error_verbatim(c, 400, "couldn't parse JSON request");
}

int api_reply_text(api_ctx *c, int status, const char *json, size_t len) {
        c->status = status;
        cp_strbuf_reset(&c->out);
        cp_strbuf_add(&c->out, json, len);
        c->replied = true;
        return 0;
}

static int dump_cb(const char *buf, size_t size, void *data) {
        cp_strbuf_add(data, buf, size);
        return 0;
}

int api_reply_json(api_ctx *c, int status, const json_t *v) {
        c->status = status;
        cp_strbuf_reset(&c->out);
        if (json_dump_callback(v, dump_cb, &c->out, JSON_COMPACT | JSON_ENCODE_ANY) < 0)
                return api_internal(c, "encoding the response", NULL);
        c->replied = true;
        return 0;
}

int api_reply_empty_object(api_ctx *c) {
        return api_reply_text(c, 200, "{}", 2);
}

/* ---- SQL ------------------------------------------------------------------------------- */

int api_sql_try(api_ctx *c, const char *sql, int n, const char *const *params, cp_store_rows **ret,
                cp_error *err) {
        return cp_store_tx_exec(c->tx, sql, n, params, ret, err);
}

int api_sql(api_ctx *c, const char *sql, int n, const char *const *params, cp_store_rows **ret) {
        cp_error err = { 0 };
        int r = cp_store_tx_exec(c->tx, sql, n, params, ret, &err);

        if (r < 0)
                return api_internal(c, "database", &err);
        return 0;
}

int api_reply_list(api_ctx *c, const char *sql) {
        const char *p[1] = { c->account_id };
        bool found;
        int r = api_sql_reply(c, 200, sql, 1, p, &found);

        if (r == 0 && !found)
                return api_reply_text(c, 200, "[]", 2);
        return r;
}

int api_reply_one(api_ctx *c, const char *sql, const char *id, const char *noun) {
        const char *p[2] = { c->account_id, id };
        bool found;
        int r = api_sql_reply(c, 200, sql, 2, p, &found);

        if (r < 0)
                return r;
        if (!found)
                return api_error(c, 404, "%s: %s not found", noun, id);
        return 0;
}

/* One JSON value from SQL as the reply; pii: expand the CP_PII_SQL
 * markers in it (cp/crypto-pii.h). */
static int sql_reply(api_ctx *c, int status, const char *sql, int n, const char *const *params, bool *found,
                     bool pii) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        int r = api_sql(c, sql, n, params, &rows);

        if (r < 0)
                return r;
        const char *v = cp_store_rows_get(rows, 0, 0);
        *found = v != NULL;
        if (!v)
                return 0;
        if (!pii || !cp_pii_json_has_marker(v))
                return api_reply_text(c, status, v, (size_t) cp_store_rows_len(rows, 0, 0));
        /* Straight into the reply buffer: it holds what the caller may
         * see anyway. */
        cp_strbuf_reset(&c->out);
        cp_strbuf_grow(&c->out, (size_t) cp_store_rows_len(rows, 0, 0));
        cp_pii_expand_json(v, &c->out);
        c->status = status;
        c->replied = true;
        return 0;
}

int api_sql_reply(api_ctx *c, int status, const char *sql, int n, const char *const *params, bool *found) {
        return sql_reply(c, status, sql, n, params, found, false);
}

int api_sql_reply_pii(api_ctx *c, int status, const char *sql, int n, const char *const *params, bool *found) {
        return sql_reply(c, status, sql, n, params, found, true);
}

void api_changed(api_ctx *c) {
        c->changed = true;
}

/* The writer itself is the store's (cp_store_tx_event), shared with
 * identity provisioning. */
int api_event(api_ctx *c, int activity, const char *target_id, const char *meta_json) {
        cp_error err = { 0 };
        int r = cp_store_tx_event(c->tx, activity, c->user_id, target_id, c->account_id, meta_json, &err);

        if (r < 0)
                return api_internal(c, "database", &err);
        return 0;
}

/* ---- group references ---------------------------------------------------------------- */

/* The first element of $2, in array order, that is not a group of the
 * account, or (with $3) is its "All" group. */
static const char SQL_BAD_GROUP[] =
        "SELECT u.id, g.id IS NOT NULL FROM unnest($2::text[]) WITH ORDINALITY AS u(id, ord)"
        " LEFT JOIN groups g ON g.account_id = $1 AND g.id = u.id"
        " WHERE g.id IS NULL OR ($3::boolean AND g.name = 'All') ORDER BY u.ord LIMIT 1";

int api_find_bad_group(api_ctx *c, const char *pgarray, bool all_is_bad, char *bad, size_t badsz, bool *is_all) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[3] = { c->account_id, pgarray, all_is_bad ? "true" : "false" };
        int r = api_sql(c, SQL_BAD_GROUP, 3, p, &rows);

        if (r < 0)
                return r;
        if (cp_store_rows_count(rows) == 0)
                return 0;
        (void) snprintf(bad, badsz, "%s", cp_store_rows_get(rows, 0, 0));
        if (is_all)
                *is_all = cp_store_rows_bool(rows, 0, 1);
        return 1;
}

int api_event_kv(api_ctx *c, int activity, const char *target_id, ...) {
        cp_strbuf meta;
        va_list ap;
        const char *k;
        int r;

        cp_strbuf_init(&meta);
        cp_strbuf_addch(&meta, '{');
        va_start(ap, target_id);
        while ((k = va_arg(ap, const char *))) {
                const char *v = va_arg(ap, const char *);
                cp_strbuf_adds(&meta, meta.len > 1 ? ",\"" : "\"");
                cp_strbuf_add_json_escaped(&meta, k);
                cp_strbuf_adds(&meta, "\":\"");
                cp_strbuf_add_json_escaped(&meta, v ? v : "");
                cp_strbuf_addch(&meta, '"');
        }
        va_end(ap);
        cp_strbuf_addch(&meta, '}');
        r = api_event(c, activity, target_id, meta.buf);
        cp_strbuf_release(&meta);
        return r;
}

/* ---- query parameters ------------------------------------------------------------------ */

static int hexval(int ch) {
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        ch = tolower(ch);
        return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Form decoding: '+' is a space, %XX a byte. */
static void form_decode(cp_strbuf *out, const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '+')
                        cp_strbuf_addch(out, ' ');
                else if (s[i] == '%' && i + 2 < n && hexval((unsigned char) s[i + 1]) >= 0 && hexval((unsigned char) s[i + 2]) >= 0) {
                        int v = hexval((unsigned char) s[i + 1]) * 16 + hexval((unsigned char) s[i + 2]);
                        if (v)
                                cp_strbuf_addch(out, (char) v);
                        i += 2;
                } else
                        cp_strbuf_addch(out, s[i]);
        }
}

const char *api_query(api_ctx *c, const char *name) {
        const char *q = c->req->query;
        size_t nlen = strlen(name);

        while (q && *q) {
                size_t seg = strcspn(q, "&");
                const char *eq = memchr(q, '=', seg);
                size_t klen = eq ? (size_t) (eq - q) : seg;
                if (klen == nlen && memcmp(q, name, nlen) == 0) {
                        cp_strbuf sb;
                        cp_strbuf_init(&sb);
                        if (eq)
                                form_decode(&sb, eq + 1, seg - klen - 1);
                        if (c->nqval == API_MAX_QVALS) {
                                cp_strbuf_release(&sb);
                                return NULL;
                        }
                        c->qval[c->nqval++] = cp_strbuf_detach(&sb);
                        return c->qval[c->nqval - 1];
                }
                q += seg;
                if (*q == '&')
                        q++;
        }
        return NULL;
}

/* ---- JSON body ---------------------------------------------------------------------------- */

json_t *api_body(api_ctx *c) {
        if (!c->body_parsed) {
                json_error_t jerr;
                c->body_parsed = true;
                if (c->req->body && c->req->body_len > 0)
                        c->body = json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &jerr);
                if (c->body && !json_is_object(c->body)) {
                        json_decref(c->body);
                        c->body = NULL;
                }
        }
        if (!c->body)
                (void) api_bad_json(c);
        return c->body;
}

/* The value of key, NULL when absent or JSON null. */
static json_t *field(json_t *obj, const char *key) {
        json_t *v = obj ? json_object_get(obj, key) : NULL;
        return v && !json_is_null(v) ? v : NULL;
}

int api_field_str(api_ctx *c, json_t *obj, const char *key, const char **ret) {
        json_t *v = field(obj, key);

        if (!v)
                return 0;
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
                return api_bad_json(c);         /* not a string, or one with a NUL inside */
        *ret = json_string_value(v);
        return 1;
}

int api_field_bool(api_ctx *c, json_t *obj, const char *key, bool *ret) {
        json_t *v = field(obj, key);

        if (!v)
                return 0;
        if (!json_is_boolean(v))
                return api_bad_json(c);
        *ret = json_is_true(v);
        return 1;
}

int api_field_int(api_ctx *c, json_t *obj, const char *key, int64_t min, int64_t max, int64_t *ret) {
        json_t *v = field(obj, key);
        int64_t x;

        if (!v)
                return 0;
        if (json_is_integer(v))
                x = (int64_t) json_integer_value(v);
        else if (json_is_real(v) && json_real_value(v) >= -9.2e18 && json_real_value(v) <= 9.2e18 &&
                 json_real_value(v) == (double) (int64_t) json_real_value(v))
                x = (int64_t) json_real_value(v);
        else
                return api_bad_json(c);
        if (x < min || x > max)
                return api_error(c, 422, "%s must be between %" PRId64 " and %" PRId64, key, min, max);
        *ret = x;
        return 1;
}

int api_field_strarr(api_ctx *c, json_t *obj, const char *key, cp_strbuf *pgarray, size_t *count) {
        json_t *v = field(obj, key), *e;
        size_t i;

        if (!v)
                return 0;
        if (!json_is_array(v))
                return api_bad_json(c);
        json_array_foreach(v, i, e) {
                if (!json_is_string(e) || strlen(json_string_value(e)) != json_string_length(e))
                        return api_bad_json(c);
        }
        api_pgarray_begin(pgarray);
        json_array_foreach(v, i, e)
                api_pgarray_add(pgarray, json_string_value(e));
        api_pgarray_end(pgarray);
        if (count)
                *count = json_array_size(v);
        return 1;
}

int api_field_array(api_ctx *c, json_t *obj, const char *key, json_t **ret) {
        json_t *v = field(obj, key);

        if (!v)
                return 0;
        if (!json_is_array(v))
                return api_bad_json(c);
        *ret = v;
        return 1;
}

int api_field_object(api_ctx *c, json_t *obj, const char *key, json_t **ret) {
        json_t *v = field(obj, key);

        if (!v)
                return 0;
        if (!json_is_object(v))
                return api_bad_json(c);
        *ret = v;
        return 1;
}

/* ---- PostgreSQL array literals ----------------------------------------------------------------- */

void api_pgarray_begin(cp_strbuf *sb) {
        cp_strbuf_reset(sb);
        cp_strbuf_addch(sb, '{');
}

void api_pgarray_add(cp_strbuf *sb, const char *elem) {
        if (sb->len > 1)
                cp_strbuf_addch(sb, ',');
        cp_strbuf_addch(sb, '"');
        for (const char *p = elem; *p; p++) {
                if (*p == '"' || *p == '\\')
                        cp_strbuf_addch(sb, '\\');
                cp_strbuf_addch(sb, *p);
        }
        cp_strbuf_addch(sb, '"');
}

void api_pgarray_end(cp_strbuf *sb) {
        cp_strbuf_addch(sb, '}');
}
