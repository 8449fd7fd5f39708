/*
 * /api/events/audit and the legacy /api/events: the account's activity
 * log (openapi Event), newest first.
 *
 * NetBird reads at most 10,000 events (no pagination in its openapi for
 * audit events), fills the initiator's name and e-mail from the users,
 * adds "username" and "email" to the meta of events whose target is a
 * user, drops repeated "user joined" events, and prints every meta value
 * with Go's %v. The same here; see docs/api.md for where it differs.
 */
#include "api-activity.h"
#include "api-int.h"

#include <math.h>

#define MAX_EVENTS "10000"      /* NetBird's limit for one read */

/* NetBird keeps the name and e-mail of a deleted user (taken out of the
 * meta of an event that carried both) in a table of its own and shows
 * them for that user's id afterwards. Here the events themselves are that
 * table: "gone" is, per target, the newest event meta with both keys. The
 * initiator and the target are looked up among the account's users only. */
static const char SQL_EVENTS[] =
        "WITH gone AS (SELECT DISTINCT ON (d.target_id) d.target_id, d.meta->>'name' AS name,"
        "  d.meta->>'email' AS email FROM events d WHERE d.account_id = $1 AND d.target_id <> ''"
        "  AND d.meta ? 'email' AND d.meta ? 'name' ORDER BY d.target_id, d.id DESC)"
        " SELECT e.id, (extract(epoch FROM e.\"timestamp\") * 1000000)::bigint, e.activity, e.initiator_id,"
        "  COALESCE(NULLIF(gi.name, ''), u.name, ''), COALESCE(NULLIF(gi.email, ''), u.email, ''),"
        "  e.target_id, e.meta::text, t.id IS NOT NULL, COALESCE(t.name, ''), COALESCE(t.email, ''),"
        "  COALESCE(gt.name, ''), COALESCE(gt.email, '')"
        " FROM events e"
        /* PII: users.email/name. An MSP user acting in this tenant is
         * a user of the MSP account (initiator_account_id). */
        " LEFT JOIN users u ON u.account_id = COALESCE(e.initiator_account_id, $1) AND u.id = e.initiator_id"
        " LEFT JOIN gone gi ON gi.target_id = e.initiator_id"
        " LEFT JOIN users t ON t.account_id = $1 AND t.id = e.target_id"
        " LEFT JOIN gone gt ON gt.target_id = e.target_id"
        " WHERE e.account_id = $1 ORDER BY e.\"timestamp\" DESC, e.id DESC LIMIT " MAX_EVENTS;

enum { COL_ID, COL_US, COL_ACT, COL_INIT, COL_INAME, COL_IMAIL, COL_TARGET, COL_META, COL_TUSER, COL_TNAME,
       COL_TMAIL, COL_GNAME, COL_GMAIL };

/* ---- Go's %v ------------------------------------------------------------------------------------ */

static void go_value(cp_strbuf *sb, const json_t *v);

/* A float64 as %v prints it (strconv's shortest %g): the fewest digits
 * that read back the same, in exponent form when the decimal exponent is
 * below -4 or at least 6 (so 1e+06, but 123456). */
static void go_float(cp_strbuf *sb, double x) {
        char buf[40], digits[24];
        int prec, exp, nd = 0;

        if (x == 0) {
                cp_strbuf_adds(sb, signbit(x) ? "-0" : "0");
                return;
        }
        for (prec = 0; prec < 17; prec++) {
                (void) snprintf(buf, sizeof buf, "%.*e", prec, x);
                if (strtod(buf, NULL) == x)
                        break;
        }
        /* buf is [-]d[.ddd]e±XX */
        const char *p = buf;
        if (*p == '-') {
                cp_strbuf_addch(sb, '-');
                p++;
        }
        for (; *p != 'e'; p++)
                if (*p != '.')
                        digits[nd++] = *p;
        digits[nd] = '\0';
        exp = atoi(p + 1);
        if (exp < -4 || exp >= 6) {
                cp_strbuf_addch(sb, digits[0]);
                if (nd > 1)
                        cp_strbuf_addf(sb, ".%s", digits + 1);
                cp_strbuf_addf(sb, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
                return;
        }
        if (exp < 0) {
                cp_strbuf_adds(sb, "0.");
                for (int i = -1; i > exp; i--)
                        cp_strbuf_addch(sb, '0');
                cp_strbuf_adds(sb, digits);
                return;
        }
        for (int i = 0; i <= exp || i < nd; i++) {
                if (i == exp + 1)
                        cp_strbuf_addch(sb, '.');
                cp_strbuf_addch(sb, i < nd ? digits[i] : '0');
        }
}

static int key_cmp(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* map[k:v k:v] with the keys sorted, as fmt prints a map. */
static void go_map(cp_strbuf *sb, const json_t *v) {
        size_t n = json_object_size(v), i = 0;
        const char **keys = cp_xmalloc((n ? n : 1) * sizeof *keys);
        const char *k;
        json_t *e;

        json_object_foreach((json_t *) v, k, e)
                keys[i++] = k;
        qsort(keys, n, sizeof *keys, key_cmp);
        cp_strbuf_adds(sb, "map[");
        for (i = 0; i < n; i++) {
                if (i)
                        cp_strbuf_addch(sb, ' ');
                cp_strbuf_addf(sb, "%s:", keys[i]);
                go_value(sb, json_object_get(v, keys[i]));
        }
        cp_strbuf_addch(sb, ']');
        free(keys);
}

/* A JSON value decoded into Go's any, printed with %v. */
static void go_value(cp_strbuf *sb, const json_t *v) {
        size_t i;
        json_t *e;

        switch (json_typeof(v)) {
        case JSON_STRING:
                cp_strbuf_add(sb, json_string_value(v), json_string_length(v));
                break;
        case JSON_TRUE:
                cp_strbuf_adds(sb, "true");
                break;
        case JSON_FALSE:
                cp_strbuf_adds(sb, "false");
                break;
        case JSON_INTEGER:
        case JSON_REAL:
                go_float(sb, json_number_value(v));
                break;
        case JSON_ARRAY:
                cp_strbuf_addch(sb, '[');
                json_array_foreach((json_t *) v, i, e) {
                        if (i)
                                cp_strbuf_addch(sb, ' ');
                        go_value(sb, e);
                }
                cp_strbuf_addch(sb, ']');
                break;
        case JSON_OBJECT:
                go_map(sb, v);
                break;
        default:
                cp_strbuf_adds(sb, "<nil>");
                break;
        }
}

/* ---- events ---------------------------------------------------------------------------------------- */

/* RFC 3339 with the fraction's trailing zeros dropped, as Go marshals a
 * time.Time. */
static void format_time(int64_t us, char out[40]) {
        char buf[32];

        cp_format_rfc3339(us * 1000, buf);      /* ...:SS.uuuuuuZ */
        char *dot = strchr(buf, '.');
        if (dot) {
                char *end = buf + strlen(buf) - 1;      /* the Z */
                while (end > dot + 1 && end[-1] == '0')
                        end--;
                if (end == dot + 1)
                        end = dot;
                end[0] = 'Z';
                end[1] = '\0';
        }
        (void) snprintf(out, 40, "%s", buf);
}

static const char *col(cp_store_rows *rows, int i, int c) {
        const char *v = cp_store_rows_get(rows, i, c);
        return v ? v : "";
}

/* The event's meta as NetBird shows it: the stored keys (name and email
 * together move to the deleted-user record, see SQL_EVENTS), then the
 * target user's username and email, every value through %v. */
static json_t *event_meta(cp_store_rows *rows, int i) {
        json_t *stored = json_loads(col(rows, i, COL_META), JSON_DECODE_INT_AS_REAL, NULL);
        json_t *out = json_object(), *v;
        const char *k;
        cp_strbuf sb;

        if (!json_is_object(stored)) {
                json_decref(stored);
                stored = json_object();
        }
        if (json_object_get(stored, "email") && json_object_get(stored, "name")) {
                json_object_del(stored, "email");
                json_object_del(stored, "name");
        }
        if (strcmp(col(rows, i, COL_TUSER), "t") == 0) {
                json_object_set_new(stored, "username", json_string(col(rows, i, COL_TNAME)));
                json_object_set_new(stored, "email", json_string(col(rows, i, COL_TMAIL)));
        } else {
                if (*col(rows, i, COL_GNAME))
                        json_object_set_new(stored, "username", json_string(col(rows, i, COL_GNAME)));
                if (*col(rows, i, COL_GMAIL))
                        json_object_set_new(stored, "email", json_string(col(rows, i, COL_GMAIL)));
        }
        cp_strbuf_init(&sb);
        json_object_foreach(stored, k, v) {
                cp_strbuf_reset(&sb);
                go_value(&sb, v);
                json_object_set_new(out, k, json_stringn(sb.buf, sb.len));
        }
        cp_strbuf_release(&sb);
        json_decref(stored);
        return out;
}

static json_t *event_json(cp_store_rows *rows, int i) {
        int code = atoi(col(rows, i, COL_ACT));
        const api_activity_info *info = api_activity_lookup(code);
        char ts[40];

        format_time(strtoll(col(rows, i, COL_US), NULL, 10), ts);
        return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}",
                         "id", col(rows, i, COL_ID),
                         "timestamp", ts,
                         "activity", info ? info->message : "UNKNOWN_ACTIVITY",
                         "activity_code", info ? info->name : "UNKNOWN_ACTIVITY",
                         "initiator_id", col(rows, i, COL_INIT),
                         "initiator_name", col(rows, i, COL_INAME),
                         "initiator_email", col(rows, i, COL_IMAIL),
                         "target_id", col(rows, i, COL_TARGET),
                         "meta", event_meta(rows, i));
}

/* NetBird shows one "user joined" event per (target, initiator): an
 * invite redeemed twice must not show twice. The newest one stays. */
static bool seen_join(json_t *seen, cp_store_rows *rows, int i) {
        char key[300];

        if (atoi(col(rows, i, COL_ACT)) != API_ACT_USER_JOINED)
                return false;
        (void) snprintf(key, sizeof key, "%s\n%s", col(rows, i, COL_TARGET), col(rows, i, COL_INIT));
        if (json_object_get(seen, key))
                return true;
        json_object_set_new(seen, key, json_true());
        return false;
}

static int list_events(api_ctx *c) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { c->account_id };
        json_t *out, *seen;
        int r = api_sql(c, SQL_EVENTS, 1, p, &rows);

        if (r < 0)
                return r;
        out = json_array();
        seen = json_object();
        for (int i = 0; i < cp_store_rows_count(rows); i++)
                if (!seen_join(seen, rows, i))
                        json_array_append_new(out, event_json(rows, i));
        r = api_reply_json(c, 200, out);
        json_decref(out);
        json_decref(seen);
        return r;
}

const api_route api_events_routes[] = {
        { "GET", "/api/events/audit", API_MOD_EVENTS, API_READ, list_events },
        { "GET", "/api/events", API_MOD_EVENTS, API_READ, list_events },
        { NULL },
};
