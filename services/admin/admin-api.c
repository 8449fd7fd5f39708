/*
 * Commands that go through the REST layer in-process (cp/api.h): the
 * request is what a NetBird client would send, made as the account's
 * owner (cp_api_request.as_user_id), so validation, secrets, permission
 * checks and activity events (initiator: the owner) are the API's own.
 */
#include "cp/base.h"
#include "cp/api.h"
#include "cp/log.h"
#include "cp/store-tx.h"
#include "admin.h"

#ifndef ADMIN_VERSION
#define ADMIN_VERSION "unknown"
#endif

static const cp_log_ctx log_ctx = { .component = "admin" };

static const char SQL_OWNER[] =
        "SELECT (SELECT u.id FROM users u WHERE u.account_id = a.id AND u.role = 'owner'"
        "         ORDER BY u.created_at, u.id LIMIT 1)"
        " FROM accounts a WHERE a.id = $1";

/* The account's owner user, who the request runs as. */
static int owner_of(cp_store *s, const char *account_id, char out[64]) {
        _cleanup_rows_ cp_store_rows *rows = NULL;
        const char *p[1] = { account_id };
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        int r;

        r = cp_store_tx_begin(s, &tx, &err);
        if (r >= 0)
                r = cp_store_tx_exec(tx, SQL_OWNER, 1, p, &rows, &err);
        tx = cp_store_tx_end(tx);
        if (r < 0)
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot look up account %s", account_id);
        if (cp_store_rows_count(rows) != 1)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "account %s not found", account_id);
        const char *id = cp_store_rows_get(rows, 0, 0);
        if (!id || strlen(id) >= 64)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "account %s has no owner user", account_id);
        memcpy(out, id, strlen(id) + 1);
        return 0;
}

/* One request as the owner of --account. On 200 returns 0 and the parsed
 * body; otherwise reports NetBird's error message and returns the exit
 * code: 2 for what the API calls bad input (400, 422), 1 for the rest. */
static int call(const admin_ctx *a, const char *method, const char *path, const json_t *body, json_t **ret) {
        char owner[64];
        cp_api_response resp;
        cp_error err = { 0 };
        cp_store *s = NULL;
        cp_api *api = NULL;
        char *text = NULL;
        int r;

        if (!a->opts->account || !*a->opts->account) {
                fprintf(stderr, ADMIN_PROG ": error: --account is required\n");
                return ADMIN_EXIT_USAGE;
        }
        r = admin_open_store(a, false, NULL, &s);
        if (r != 0)
                return r;
        r = owner_of(s, a->opts->account, owner);
        if (r != 0) {
                cp_store_free(s);
                return r;
        }
        /* No announce hook: a change that alters maps reaches the
         * replicas by their serial check (docs/ops.md). */
        cp_api_options ao = { .store = s, .dns_domain = a->cfg->dns_domain, .version = ADMIN_VERSION };
        r = cp_api_new(&ao, &api, &err);
        if (r < 0) {
                cp_store_free(s);
                return admin_fail(ADMIN_EXIT_FAILURE, &err, "cannot set up the API");
        }
        if (body)
                text = json_dumps(body, JSON_COMPACT);
        cp_api_request req = {
                .method = method, .path = path, .body = text, .body_len = text ? strlen(text) : 0,
                .as_user_id = owner,
        };
        cp_api_response_init(&resp);
        cp_api_handle(api, &req, &resp);
        if (text) {
                cp_explicit_bzero(text, strlen(text));
                free(text);
        }
        cp_api_free(api);
        cp_store_free(s);

        cp_log_kv(&log_ctx, CP_LOG_DEBUG, "api call", "method", method, "path", path, "route", resp.route,
                  "detail", resp.detail[0] ? resp.detail : NULL, NULL);
        if (resp.status == 200) {
                json_error_t jerr;
                *ret = resp.body.len ? json_loadb(resp.body.buf, resp.body.len, 0, &jerr) : json_null();
                cp_explicit_bzero(resp.body.buf, resp.body.len);
                cp_api_response_release(&resp);
                if (!*ret)
                        return admin_fail(ADMIN_EXIT_FAILURE, NULL, "%s %s: the API answered with invalid JSON",
                                          method, path);
                return 0;
        }
        if (!resp.route[0]) {
                r = admin_fail(ADMIN_EXIT_FAILURE, NULL, "%s %s: this build's REST API has no such route",
                               method, path);
        } else {
                json_error_t jerr;
                json_t *e = json_loadb(resp.body.buf, resp.body.len, 0, &jerr);
                const char *msg = e ? json_string_value(json_object_get(e, "message")) : NULL;
                r = admin_fail(resp.status == 400 || resp.status == 422 ? ADMIN_EXIT_USAGE : ADMIN_EXIT_FAILURE,
                               NULL, "%s %s: %s (HTTP %d)", method, path, msg ? msg : "failed", resp.status);
                json_decref(e);
        }
        cp_api_response_release(&resp);
        return r;
}

int admin_cmd_setup_key_create(const admin_ctx *a) {
        const admin_opts *o = a->opts;
        json_t *body, *groups, *resp = NULL;
        int r;

        if (o->expires_in_ms % 1000 != 0) {
                fprintf(stderr, ADMIN_PROG ": error: invalid value for --expires-in: whole seconds only\n");
                return ADMIN_EXIT_USAGE;
        }
        /* NetBird's CreateSetupKeyRequest; the API validates it. */
        groups = json_array();
        for (size_t i = 0; i < o->n_auto_groups; i++)
                json_array_append_new(groups, json_string(o->auto_groups[i]));
        body = json_pack("{s:s, s:s, s:I, s:o, s:I, s:b, s:b}", "name", o->name ? o->name : "",
                         "type", o->type ? o->type : "", "expires_in", (json_int_t) (o->expires_in_ms / 1000),
                         "auto_groups", groups, "usage_limit", (json_int_t) o->usage_limit,
                         "ephemeral", o->ephemeral, "allow_extra_dns_labels", o->allow_extra_dns_labels);
        if (!body)
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "cannot build the request");
        r = call(a, "POST", "/api/setup-keys", body, &resp);
        json_decref(body);
        if (r != 0)
                return r;
        const char *id = json_string_value(json_object_get(resp, "id"));
        const char *key = json_string_value(json_object_get(resp, "key"));
        if (!id || !key) {
                json_decref(resp);
                return admin_fail(ADMIN_EXIT_FAILURE, NULL, "the API's answer has no setup key");
        }
        if (o->json) {
                char *d = json_dumps(resp, JSON_INDENT(2));
                printf("%s\n", d ? d : "{}");
                if (d)
                        cp_explicit_bzero(d, strlen(d));        /* holds the plain key */
                free(d);
        } else {
                cp_strbuf out;
                cp_strbuf_init(&out);
                cp_strbuf_grow(&out, 256);      /* never outgrown: no unwiped copy */
                cp_store_env_line(&out, "SETUP_KEY_ID", id);
                cp_store_env_line(&out, "SETUP_KEY", key);
                fputs(out.buf, stdout);
                cp_explicit_bzero(out.buf, out.len);
                cp_strbuf_release(&out);
        }
        json_decref(resp);
        return admin_finish_stdout();
}

int admin_cmd_setup_key_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" }, { "NAME", "name" }, { "KEY", "key" }, { "TYPE", "type" }, { "STATE", "state" },
                { "USED", "used_times" }, { "LIMIT", "usage_limit" }, { "EXPIRES", "expires" },
                { "AUTO_GROUPS", "auto_groups" },
        };
        json_t *resp = NULL;
        int r = call(a, "GET", "/api/setup-keys", NULL, &resp);

        if (r != 0)
                return r;
        admin_print_rows(resp, cols, ELEMENTSOF(cols), a->opts->json);
        json_decref(resp);
        return admin_finish_stdout();
}

int admin_cmd_peers_list(const admin_ctx *a) {
        static const admin_column cols[] = {
                { "ID", "id" }, { "NAME", "name" }, { "IP", "ip" }, { "DNS_LABEL", "dns_label" },
                { "CONNECTED", "connected" }, { "LAST_SEEN", "last_seen" }, { "OS", "os" },
                { "VERSION", "version" }, { "GROUPS", "groups" },
        };
        json_t *resp = NULL;
        int r = call(a, "GET", "/api/peers", NULL, &resp);

        if (r != 0)
                return r;
        admin_print_rows(resp, cols, ELEMENTSOF(cols), a->opts->json);
        json_decref(resp);
        return admin_finish_stdout();
}
