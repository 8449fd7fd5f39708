/*
 * sql-scope-dump: the exact inputs of tests/sql/test_sql_scope.py.
 *
 *   sql-scope-dump table   prints, as one JSON array, every named prepared
 *                          statement of the store (store.c's statements
 *                          table, read through cp_store__stmt_sql) and
 *                          every compiled-in migration:
 *                          [{"name", "source", "nparams", "sql"}, ...]
 *   sql-scope-dump parse   reads a JSON array of SQL texts on stdin and
 *                          prints, in the same order, PostgreSQL's own
 *                          parse tree of each (libpg_query, the server's
 *                          parser outside the server) as
 *                          [{"tree": {...}} or {"error": "..."}, ...]
 *
 * Exit status 0, or 1 on bad input (a message on stderr). The texts are
 * never run: nothing here connects to a database.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <pg_query.h>

#include "store-int.h"

static int dump_table(void) {
        json_t *out = json_array();

        for (int st = 0; st < _ST_MAX; st++) {
                int n = 0;
                const char *sql = cp_store__stmt_sql((cp_store_stmt) st, &n);
                (void) json_array_append_new(out, json_pack("{s:s, s:s, s:i, s:s}",
                                                            "name", cp_store__stmt_name((cp_store_stmt) st),
                                                            "source", "common/store/store.c statements[]",
                                                            "nparams", n, "sql", sql));
        }
        for (size_t m = 0; m < cp_store__n_migrations; m++) {
                char name[256];
                (void) snprintf(name, sizeof name, "migration:%s", cp_store__migrations[m].name);
                (void) json_array_append_new(out, json_pack("{s:s, s:s, s:i, s:s}", "name", name,
                                                            "source", "sql/migrations", "nparams", 0,
                                                            "sql", cp_store__migrations[m].sql));
        }
        int r = json_dumpf(out, stdout, JSON_INDENT(1)) < 0 ? 1 : 0;
        json_decref(out);
        putchar('\n');
        return r;
}

static int parse_stdin(void) {
        json_error_t jerr;
        json_t *in = json_loadf(stdin, 0, &jerr);
        size_t i;
        json_t *v;

        if (!in || !json_is_array(in)) {
                fprintf(stderr, "sql-scope-dump: stdin is not a JSON array: %s\n", jerr.text);
                json_decref(in);
                return 1;
        }
        json_t *out = json_array();
        json_array_foreach(in, i, v) {
                if (!json_is_string(v)) {
                        fprintf(stderr, "sql-scope-dump: element %zu is not a string\n", i);
                        json_decref(in);
                        json_decref(out);
                        return 1;
                }
                PgQueryParseResult res = pg_query_parse(json_string_value(v));
                json_t *tree = NULL;
                if (!res.error)
                        tree = json_loads(res.parse_tree, 0, &jerr);
                if (tree)
                        (void) json_array_append_new(out, json_pack("{s:o}", "tree", tree));
                else
                        (void) json_array_append_new(out, json_pack("{s:s}", "error",
                                                                    res.error ? res.error->message :
                                                                    "unreadable parse tree"));
                pg_query_free_parse_result(res);
        }
        int r = json_dumpf(out, stdout, JSON_COMPACT) < 0 ? 1 : 0;
        putchar('\n');
        json_decref(in);
        json_decref(out);
        pg_query_exit();        /* the parser's memory context */
        return r;
}

int main(int argc, char **argv) {
        if (argc == 2 && strcmp(argv[1], "table") == 0)
                return dump_table();
        if (argc == 2 && strcmp(argv[1], "parse") == 0)
                return parse_stdin();
        fprintf(stderr, "usage: sql-scope-dump table | parse < texts.json\n");
        return 2;
}
