/*
 * proxy-token create / list / revoke: NetBird's proxy access tokens
 * ("nbx_...") that reverse proxies present to the ProxyService.
 *
 * These go to the store directly, not through the REST API: the API only
 * knows account-scoped tokens, while the operator mints management-wide
 * ones (account_id NULL) that every shared proxy uses. With --account the
 * token is scoped to that account, like one made on the dashboard.
 *
 * The plain token exists only in this process and on stdout, once; the
 * database keeps base64(SHA-256), as for PATs.
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/store-services.h"
#include "cp/strbuf.h"
#include "admin.h"

int admin_cmd_proxy_token_create(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        cp_store_proxy_token_created tok;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        if (!o->name || !*o->name || strlen(o->name) > 255) {
                fprintf(stderr, ADMIN_PROG ": error: --name is required (at most 255 characters)\n");
                return ADMIN_EXIT_USAGE;
        }
        if (o->expires_in_ms % 1000 != 0) {
                fprintf(stderr, ADMIN_PROG ": error: invalid value for --expires-in: whole seconds only\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = cp_store_tx_begin(s, &tx, &err);
        if (r >= 0)
                r = cp_store_tx_proxy_token_create(tx, o->account, o->name, o->expires_in_ms / 1000, "", &tok, &err);
        if (r >= 0) {
                r = cp_store_tx_commit(tx, &err);
                tx = NULL;
        }
        tx = cp_store_tx_end(tx);
        cp_store_free(s);
        if (r == -ENOENT)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "account %s not found", o->account);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot create the proxy token");
        if (o->json) {
                json_t *j = json_pack("{s:s,s:s,s:s?,s:s}", "id", tok.id, "name", o->name, "account_id", o->account,
                                      "plain_token", tok.plain);
                char *d = json_dumps(j, JSON_INDENT(2));
                printf("%s\n", d ? d : "{}");
                if (d)
                        cp_explicit_bzero(d, strlen(d));
                free(d);
                json_decref(j);
        } else {
                cp_strbuf out;
                cp_strbuf_init(&out);
                cp_strbuf_grow(&out, 256);      /* never outgrown: no unwiped copy */
                cp_store_env_line(&out, "PROXY_TOKEN_ID", tok.id);
                cp_store_env_line(&out, "PROXY_TOKEN", tok.plain);
                fputs(out.buf, stdout);
                cp_explicit_bzero(out.buf, out.len);
                cp_strbuf_release(&out);
        }
        cp_explicit_bzero(tok.plain, sizeof tok.plain);
        return admin_finish_stdout();
}

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* Every token, or (with $1) the account's; management-wide first. */
static const char SQL_LIST[] =
        "SELECT COALESCE(json_agg(json_build_object('id', id, 'name', name, 'account_id', account_id,"
        " 'created_at', " TS("created_at") ", 'expires_at', " TS("expires_at") ", 'last_used', " TS("last_used") ","
        " 'revoked', revoked, 'state', CASE WHEN revoked THEN 'revoked' WHEN expires_at < now() THEN 'expired'"
        " ELSE 'valid' END) ORDER BY account_id NULLS FIRST, created_at, id), '[]')"
        " FROM proxy_access_tokens WHERE $1::text IS NULL OR account_id = $1";

int admin_cmd_proxy_token_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" },           { "NAME", "name" },       { "ACCOUNT", "account_id" },
                { "STATE", "state" },     { "CREATED", "created_at" }, { "EXPIRES", "expires_at" },
                { "LAST_USED", "last_used" },
        };
        cp_store *s = NULL;
        json_t *rows = NULL;
        int r = admin_open_store(a, false, NULL, &s);

        if (r != 0)
                return r;
        const char *p[] = { a->opts->account };
        r = admin_query_json(s, SQL_LIST, 1, p, &rows);
        cp_store_free(s);
        if (r != 0)
                return r;
        admin_print_rows(rows, cols, ELEMENTSOF(cols), a->opts->json);
        json_decref(rows);
        return admin_finish_stdout();
}

/* Revokes any token by id (management-wide or an account's). The proxies
 * using it are cut off by the servers (docs/proxy.md). */
int admin_cmd_proxy_token_revoke(const admin_ctx *a) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *id = a->opts->arg;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        cp_store *s = NULL;
        int r;

        if (!id || !*id) {
                fprintf(stderr, ADMIN_PROG ": error: proxy-token revoke needs the token id\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = cp_store_tx_begin(s, &tx, &err);
        const char *p[] = { id };
        if (r >= 0)
                r = cp_store_tx_exec(tx, "SELECT account_id FROM proxy_access_tokens WHERE id = $1", 1, p, &rows, &err);
        bool found = r >= 0 && cp_store_rows_count(rows) == 1;
        if (found)
                r = cp_store_tx_proxy_token_revoke(tx, cp_store_rows_get(rows, 0, 0), id, &err);
        if (r >= 0 && found) {
                int rr = cp_store_tx_commit(tx, &err);
                tx = NULL;
                if (rr < 0)
                        r = rr;
        }
        tx = cp_store_tx_end(tx);
        cp_store_free(s);
        if (r >= 0 && !found)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "proxy token %s not found", id);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot revoke the proxy token");
        printf("%s %s\n", id, r == 1 ? "revoked" : "was already revoked");
        return admin_finish_stdout();
}
