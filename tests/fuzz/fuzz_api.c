/*
 * fuzz_api: NetBird's REST API as every replica serves it (common/api:
 * api.c's router, authentication and permission check, each family's
 * JSON body parsing and validation, its SQL), against a real PostgreSQL.
 * The handlers read and write inside one transaction per request and
 * cannot run without the store, so this target does not stub it: it is
 * the slow target of tests/fuzz (README.md).
 *
 * At start it creates a fresh database (cp_fuzz_<pid>) on the server of
 * CP_FUZZ_PG_DSN or CP_TEST_PG_DSN, migrates it and bootstraps one
 * account (owner user, admin PAT). Input:
 *   byte 0 % 3: 0 = as the owner (the admin CLI's trusted in-process
 *               caller), 1 = "Authorization: Token <the admin PAT>" (the
 *               HTTP path), 2 = the Authorization header is the next line;
 *   "METHOD PATH[?QUERY]" line; (mode 2) the Authorization line; the rest
 *   is the body. "{acc}", "{user}" and "{all}" in the path and body
 *   become the account's id, the owner's and the "All" group's, so seeds
 *   can name them.
 * Every response must be a status in 200..599 with an empty or JSON body,
 * and no request may answer 500 (a 5xx other than 503 aborts: bad input
 * must get a clear 4xx); CP_FUZZ_API_ALLOW_500=1 turns the last check off.
 */
#include "cp/api.h"
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/crypto-pii.h"
#include "cp/store.h"

#include <jansson.h>
#include <libpq-fe.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static cp_store *store;
static cp_api *api;
static cp_store_account_created owner;
static char admin_auth[80];
static char all_group[64];             /* the account's "All" group id */
static bool allow_500;

static void die(const char *what, const char *why) {
        fprintf(stderr, "fuzz_api: %s: %s\n", what, why);
        exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        const char *base = getenv("CP_FUZZ_PG_DSN") ? getenv("CP_FUZZ_PG_DSN") : getenv("CP_TEST_PG_DSN");
        cp_store_account_spec spec = { .name = "fuzz-owner", .domain = "fuzz.example" };
        cp_store_migrate_result mr;
        cp_error err = { 0 };
        uint8_t key[32];
        char db[64];

        if (!base)
                die("no database", "set CP_FUZZ_PG_DSN or CP_TEST_PG_DSN (a libpq conninfo)");
        allow_500 = getenv("CP_FUZZ_API_ALLOW_500") && strcmp(getenv("CP_FUZZ_API_ALLOW_500"), "1") == 0;
        if (cp_crypto_init() < 0)
                die("cp_crypto_init", "failed");
        (void) snprintf(db, sizeof db, "cp_fuzz_%d", (int) getpid());
        PGconn *c = PQconnectdb(base);
        if (PQstatus(c) != CONNECTION_OK)
                die("connect", PQerrorMessage(c));
        _cleanup_free_ char *drop = cp_xasprintf("DROP DATABASE IF EXISTS %s", db);
        _cleanup_free_ char *create = cp_xasprintf("CREATE DATABASE %s", db);
        PQclear(PQexec(c, drop));
        PGresult *res = PQexec(c, create);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                die("CREATE DATABASE", PQerrorMessage(c));
        PQclear(res);
        PQfinish(c);

        _cleanup_free_ char *dsn = cp_xasprintf("%s dbname=%s", base, db);
        if (cp_store_open(dsn, 2, &store, &err) < 0 || cp_store_migrate(store, &mr, &err) < 0 ||
            cp_store_account_create(store, &spec, &owner, &err) < 0)
                die("store", err.message);
        memset(key, 0x5a, sizeof key);
        cp_pii_install(key, NULL);
        cp_api_options o = { .store = store, .dns_domain = "netbird.fuzz", .version = "fuzz", .data_key = key };
        if (cp_api_new(&o, &api, &err) < 0)
                die("cp_api_new", err.message);
        (void) snprintf(admin_auth, sizeof admin_auth, "Token %s", owner.admin_token);
        {
                cp_api_request req = { .method = "GET", .path = "/api/groups", .as_user_id = owner.user_id };
                cp_api_response resp;
                json_error_t jerr;
                json_t *g, *list;
                size_t i;

                cp_api_response_init(&resp);
                cp_api_handle(api, &req, &resp);
                list = json_loadb(resp.body.buf, resp.body.len, 0, &jerr);
                json_array_foreach(list, i, g)
                        if (strcmp(json_string_value(json_object_get(g, "name")) ?: "", "All") == 0)
                                (void) snprintf(all_group, sizeof all_group, "%s",
                                                json_string_value(json_object_get(g, "id")));
                json_decref(list);
                cp_api_response_release(&resp);
        }
        fprintf(stderr, "fuzz_api: database %s, account %s\n", db, owner.account_id);
        return 0;
}

/* [p, end) up to '\n' as a new string; *p moves past it. */
static char *take_line(const char **p, const char *end) {
        const char *nl = memchr(*p, '\n', (size_t) (end - *p));
        const char *e = nl ? nl : end;
        char *s = cp_xstrndup(*p, (size_t) (e - *p));

        *p = nl ? nl + 1 : end;
        return s;
}

/* s with every {acc} and {user} replaced. */
static char *expand(const char *s) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        while (*s) {
                if (strncmp(s, "{acc}", 5) == 0) {
                        cp_strbuf_adds(&sb, owner.account_id);
                        s += 5;
                } else if (strncmp(s, "{all}", 5) == 0) {
                        cp_strbuf_adds(&sb, all_group);
                        s += 5;
                } else if (strncmp(s, "{user}", 6) == 0) {
                        cp_strbuf_adds(&sb, owner.user_id);
                        s += 6;
                } else
                        cp_strbuf_addch(&sb, *s++);
        }
        return cp_strbuf_detach(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data + 1, *end = (const char *) data + size;
        _cleanup_free_ char *line = NULL, *auth = NULL, *target = NULL;
        cp_api_request req = { 0 };
        cp_api_response resp;
        int mode;

        if (size < 2)
                return 0;
        mode = data[0] % 3;
        line = take_line(&p, end);
        if (mode == 2)
                auth = take_line(&p, end);
        char *sp = strchr(line, ' ');
        if (!sp)
                return 0;
        *sp = '\0';
        target = expand(sp + 1);
        char *q = strchr(target, '?');
        if (q)
                *q++ = '\0';
        if (!cp_api_owns_path(target))
                return 0;       /* the HTTP listener answers these itself */

        req.method = line;
        req.path = target;
        req.query = q;
        _cleanup_free_ char *body = NULL;
        if (p < end) {
                _cleanup_free_ char *raw = cp_xstrndup(p, (size_t) (end - p));
                /* Bytes after a NUL stay out of the substitution (and of
                 * the body: the HTTP listener gives bodies with NULs as
                 * they are, but then {all} would not apply). */
                body = expand(raw);
                req.body = body;
                req.body_len = strlen(body);
        }
        req.remote = "192.0.2.10:40000";
        if (mode == 0)
                req.as_user_id = owner.user_id;
        else if (mode == 1)
                req.authorization = admin_auth;
        else
                req.authorization = auth;

        cp_api_response_init(&resp);
        cp_api_handle(api, &req, &resp);
        if (resp.status < 200 || resp.status > 599) {
                fprintf(stderr, "fuzz_api: %s %s answered %d\n", req.method, req.path, resp.status);
                abort();
        }
        if (resp.body.len > 0) {
                json_error_t jerr;
                json_t *j = json_loadb(resp.body.buf, resp.body.len, 0, &jerr);
                if (!j) {
                        fprintf(stderr, "fuzz_api: %s %s answered %d with a body that is not JSON: %.200s\n",
                                req.method, req.path, resp.status, resp.body.buf);
                        abort();
                }
                json_decref(j);
        }
        if (resp.status >= 500 && resp.status != 503 && !allow_500) {
                fprintf(stderr, "fuzz_api: %s %s answered %d: %.300s (detail: %s)\n", req.method, req.path,
                        resp.status, resp.body.buf ? resp.body.buf : "", resp.detail);
                abort();
        }
        cp_api_response_release(&resp);
        return 0;
}
