/*
 * The generic settings loader: defaults, then the JSON file, then the
 * environment, then the command line, each row of each table handled the
 * same way. See cp/config.h for the contract and README.md for why.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/util.h"

#include <ctype.h>
#include <jansson.h>
#include <sys/stat.h>

extern char **environ;

/* A config file larger than this is refused before it is parsed. */
#define CFG_MAX_FILE_SIZE (4u << 20)
/* Values quoted in error messages are cut to this many bytes. */
#define CFG_QUOTE_MAX 80

typedef struct pending_flag {
        size_t index;           /* into the flat option list */
        const char *value;      /* borrowed from argv, or "true" */
} pending_flag;

typedef struct loader {
        const cp_cfg_spec *spec;
        const cp_cfg_table *tables;
        size_t n_tables;
        char *const *envp;
        cp_cfg_result *res;
        /* The flat option list: table t, row r <-> one index. */
        size_t n_options;
        size_t *table_of;       /* index -> table */
        pending_flag *flags;
        size_t n_flags;
} loader;

static const cp_cfg_option *opt_at(const loader *l, size_t i) {
        return l->res->origins[i].option;
}

static void *field_at(const loader *l, size_t i) {
        const cp_cfg_table *t = &l->tables[l->table_of[i]];
        return (char *) t->base + opt_at(l, i)->offset;
}

static void add_warning(cp_cfg_result *res, char *w) {
        res->warnings = cp_xrealloc(res->warnings, (res->n_warnings + 1) * sizeof *res->warnings);
        res->warnings[res->n_warnings++] = w;
}

static const char *type_expectation(const cp_cfg_option *o, char *buf, size_t n) {
        switch (o->type) {
        case CP_CFG_INT:
                (void) snprintf(buf, n, "expected an integer from %" PRId64 " to %" PRId64, o->min, o->max);
                return buf;
        case CP_CFG_BOOL:
                return "expected true or false";
        case CP_CFG_DURATION:
                (void) snprintf(buf, n, "expected a duration such as 10s, 1m30s or 250ms, from %" PRId64
                                "ms to %" PRId64 "ms", o->min, o->max);
                return buf;
        case CP_CFG_LOG_LEVEL:
                return "expected one of trace, debug, info, warn, error, fatal, panic";
        case CP_CFG_STRING:
        default:
                return "expected a string";
        }
}

/* One setting's value while it is parsed, before it is stored. */
typedef union cfg_value {
        int64_t i;
        bool b;
        cp_log_level level;
        char *s;
} cfg_value;

/* Stores v into field as o's type; a string field takes ownership of v.s
 * and frees what it held. The one place that knows each type's storage. */
static void store_value(const cp_cfg_option *o, void *field, cfg_value v) {
        switch (o->type) {
        case CP_CFG_STRING:
                free(*(char **) field);
                *(char **) field = v.s;
                break;
        case CP_CFG_INT:
        case CP_CFG_DURATION:
                *(int64_t *) field = v.i;
                break;
        case CP_CFG_BOOL:
                *(bool *) field = v.b;
                break;
        case CP_CFG_LOG_LEVEL:
                *(cp_log_level *) field = v.level;
                break;
        }
}

/* Parses text as o's type into a local value, runs o->check, and only then
 * stores it into field (which may be a scratch union for ignored rows).
 * On failure reterr says what was expected, without naming the source. */
static int parse_text(const cp_cfg_option *o, const char *text, void *field, cp_error *reterr) {
        char buf[160];
        cfg_value v = { 0 };
        int r;

        switch (o->type) {
        case CP_CFG_STRING:
                v.s = cp_xstrdup(text);
                r = 0;
                break;
        case CP_CFG_INT:
                r = cp_parse_int64(text, o->min, o->max, &v.i);
                break;
        case CP_CFG_BOOL:
                r = cp_parse_bool(text, &v.b);
                break;
        case CP_CFG_DURATION:
                r = cp_parse_duration_ms(text, &v.i);
                if (r >= 0 && (v.i < o->min || v.i > o->max))
                        r = -ERANGE;
                break;
        case CP_CFG_LOG_LEVEL:
                r = cp_log_level_parse(text, &v.level);
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0)
                return cp_error_set(reterr, -EINVAL, "%s", type_expectation(o, buf, sizeof buf));
        if (o->check) {
                const void *p = o->type == CP_CFG_STRING ? (const void *) &v.s : (const void *) &v;
                r = o->check(p, reterr);
                if (r < 0) {
                        free(v.s);
                        return r;
                }
        }
        store_value(o, field, v);
        return 0;
}

/* Sets option i from text found at origin (kind, what), or fails with a
 * message naming both the value and the origin. Takes ownership of what. */
static int assign(loader *l, size_t i, const char *text, cp_cfg_origin_kind kind, char *what,
                  cp_error *reterr) {
        const cp_cfg_option *o = opt_at(l, i);
        cp_error why = { 0 };
        union {
                int64_t i;
                bool b;
                cp_log_level level;
                char *s;
        } scratch = { 0 };
        bool ignored = o->flags & CP_CFG_IGNORED;
        int r;

        r = parse_text(o, text, ignored ? (void *) &scratch : field_at(l, i), &why);
        if (o->type == CP_CFG_STRING)
                free(scratch.s);
        if (r < 0) {
                if (o->flags & CP_CFG_SECRET)
                        r = cp_error_set(reterr, r, "invalid value for %s: %s", what, why.message);
                else
                        r = cp_error_set(reterr, r, "invalid value \"%.*s\"%s for %s: %s", CFG_QUOTE_MAX,
                                         text, strlen(text) > CFG_QUOTE_MAX ? "..." : "", what,
                                         why.message);
                if (why.hint[0])
                        cp_error_hint(reterr, "%s", why.hint);
                free(what);
                return r;
        }
        if (ignored)
                add_warning(l->res, cp_xasprintf("%s is accepted for compatibility with NetBird "
                                                 "and ignored", what));
        cp_cfg_origin *org = &l->res->origins[i];
        free(org->text);
        org->text = what;
        org->kind = kind;
        return 0;
}

/* ---- environment -------------------------------------------------------- */

char *cp_cfg_env_name(const char *prefix, const cp_cfg_option *o) {
        char *s = cp_xasprintf("%s%s", prefix ? prefix : "", o->name);

        for (char *p = s + (prefix ? strlen(prefix) : 0); *p; p++)
                *p = *p == '-' ? '_' : (char) toupper((unsigned char) *p);
        return s;
}

static const char *env_lookup(const loader *l, const char *name) {
        char *const *env = l->envp ? l->envp : environ;
        size_t n = strlen(name);

        for (; env && *env; env++)
                if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
                        return *env + n + 1;
        return NULL;
}

static int apply_env_one(loader *l, size_t i, cp_error *reterr) {
        const cp_cfg_option *o = opt_at(l, i);
        _cleanup_free_ char *generic = cp_cfg_env_name(l->spec->env_prefix, o);
        const char *names[1 + CP_CFG_MAX_ENV] = { generic };

        for (size_t k = 0; k < CP_CFG_MAX_ENV; k++)
                names[k + 1] = o->env[k];
        for (size_t k = 0; k < ELEMENTSOF(names); k++) {
                if (!names[k])
                        continue;
                const char *v = env_lookup(l, names[k]);
                if (!v || !*v)
                        continue;
                return assign(l, i, v, CP_CFG_FROM_ENV,
                              cp_xasprintf("environment variable %s", names[k]), reterr);
        }
        return 0;
}

/* ---- command line ------------------------------------------------------- */

static bool find_option(const loader *l, const char *name, size_t len, size_t *ret) {
        for (size_t i = 0; i < l->n_options; i++) {
                const char *n = opt_at(l, i)->name;
                if (strlen(n) == len && strncmp(n, name, len) == 0) {
                        *ret = i;
                        return true;
                }
        }
        return false;
}

/* First pass over argv: syntax and names only; values are applied after the
 * file and the environment so that the command line wins. */
static int scan_argv(loader *l, int argc, char *const *argv, cp_error *reterr) {
        l->flags = cp_xcalloc((size_t) (argc > 0 ? argc : 1), sizeof *l->flags);
        for (int a = 0; a < argc; a++) {
                const char *arg = argv[a];
                size_t i;

                if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
                        l->res->help = true;
                        return 0;
                }
                if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
                        if (arg[0] == '-' && arg[1] != '\0' && arg[1] != '-')
                                return cp_error_set(reterr, -EINVAL,
                                                    "unknown flag %.*s (long flags start with --)",
                                                    CFG_QUOTE_MAX, arg);
                        return cp_error_set(reterr, -EINVAL, "unexpected argument \"%.*s\"",
                                            CFG_QUOTE_MAX, arg);
                }
                const char *name = arg + 2, *eq = strchr(name, '=');
                size_t len = eq ? (size_t) (eq - name) : strlen(name);
                if (!find_option(l, name, len, &i))
                        return cp_error_set(reterr, -EINVAL, "unknown flag --%.*s",
                                            (int) (len > CFG_QUOTE_MAX ? CFG_QUOTE_MAX : len), name);
                const cp_cfg_option *o = opt_at(l, i);
                const char *value;
                if (eq)
                        value = eq + 1;
                else if (o->type == CP_CFG_BOOL)
                        value = "true";
                else if (a + 1 < argc && strncmp(argv[a + 1], "--", 2) != 0)
                        value = argv[++a];
                else
                        return cp_error_set(reterr, -EINVAL, "flag --%s needs a value", o->name);
                l->flags[l->n_flags++] = (pending_flag) { .index = i, .value = value };
        }
        return 0;
}

static int apply_flags(loader *l, const size_t *only, cp_error *reterr) {
        for (size_t k = 0; k < l->n_flags; k++) {
                const pending_flag *f = &l->flags[k];
                if (only && f->index != *only)
                        continue;
                int r = assign(l, f->index, f->value, CP_CFG_FROM_FLAG,
                               cp_xasprintf("flag --%s", opt_at(l, f->index)->name), reterr);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- the config file ---------------------------------------------------- */

json_t *cp_cfg_json_get(const json_t *obj, const char *key, size_t len) {
        const char *k;
        json_t *v, *fold = NULL;

        if (!obj || !json_is_object(obj))
                return NULL;
        json_object_foreach((json_t *) obj, k, v) {
                if (strlen(k) != len)
                        continue;
                if (strncmp(k, key, len) == 0)
                        return v;
                if (!fold && strncasecmp(k, key, len) == 0)
                        fold = v;
        }
        return fold;
}

const char *cp_cfg_json_kind(const json_t *v) {
        switch (json_typeof(v)) {
        case JSON_OBJECT: return "an object";
        case JSON_ARRAY: return "an array";
        case JSON_STRING: return "a string";
        case JSON_INTEGER: return "an integer";
        case JSON_REAL: return "a number";
        case JSON_TRUE:
        case JSON_FALSE: return "a boolean";
        case JSON_NULL:
        default: return "null";
        }
}

static int apply_file_one(loader *l, size_t i, cp_error *reterr) {
        const cp_cfg_option *o = opt_at(l, i);
        const char *path = o->json, *seg = path;
        json_t *v = l->res->file;
        char num[32];
        const char *text;

        /* Walk "A.B.C": every level but the last must be an object. */
        for (;;) {
                const char *dot = strchr(seg, '.');
                size_t len = dot ? (size_t) (dot - seg) : strlen(seg);
                v = cp_cfg_json_get(v, seg, len);
                if (!v || json_is_null(v))
                        return 0;
                if (!dot)
                        break;
                if (!json_is_object(v))
                        return cp_error_set(reterr, -EINVAL, "invalid value for %.*s in %s: "
                                            "expected an object, got %s", (int) (dot - path), path,
                                            l->res->file_path, cp_cfg_json_kind(v));
                seg = dot + 1;
        }
        switch (o->type) {
        case CP_CFG_INT:
                if (!json_is_integer(v))
                        goto bad_type;
                (void) snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                text = num;
                break;
        case CP_CFG_BOOL:
                if (!json_is_boolean(v))
                        goto bad_type;
                text = json_is_true(v) ? "true" : "false";
                break;
        case CP_CFG_STRING:
        case CP_CFG_DURATION:
        case CP_CFG_LOG_LEVEL:
        default:
                if (!json_is_string(v))
                        goto bad_type;
                text = json_string_value(v);
                if (!*text)
                        return 0;
                break;
        }
        return assign(l, i, text, CP_CFG_FROM_FILE, cp_xasprintf("%s in %s", path, l->res->file_path),
                      reterr);

bad_type:
        return cp_error_set(reterr, -EINVAL, "invalid value for %s in %s: %s, got %s", path,
                            l->res->file_path,
                            o->type == CP_CFG_INT ? "expected an integer" :
                            o->type == CP_CFG_BOOL ? "expected true or false" : "expected a string",
                            cp_cfg_json_kind(v));
}

static bool in_list(const char *const *list, const char *key) {
        for (; list && *list; list++)
                if (strcasecmp(*list, key) == 0)
                        return true;
        return false;
}

/* Is prefix.key (prefix may be NULL) the start of some row's JSON path? */
static bool row_reads(const loader *l, const char *prefix, const char *key) {
        size_t plen = prefix ? strlen(prefix) + 1 : 0, klen = strlen(key);

        for (size_t i = 0; i < l->n_options; i++) {
                const char *p = opt_at(l, i)->json;
                if (!p || (prefix && (strncasecmp(p, prefix, plen - 1) != 0 || p[plen - 1] != '.')))
                        continue;
                p += plen;
                if (strncasecmp(p, key, klen) == 0 && (p[klen] == '\0' || p[klen] == '.'))
                        return true;
        }
        return false;
}

static void warn_unknown_keys(loader *l) {
        json_t *root = l->res->file, *v;
        const char *key;

        json_object_foreach(root, key, v) {
                if (!in_list(l->spec->file_known_keys, key) && !in_list(l->spec->file_owned_objects, key) &&
                    !row_reads(l, NULL, key))
                        add_warning(l->res, cp_xasprintf("unknown key \"%s\" in %s is ignored", key,
                                                         l->res->file_path));
        }
        for (const char *const *own = l->spec->file_owned_objects; own && *own; own++) {
                json_t *obj = cp_cfg_json_get(root, *own, strlen(*own)), *x;
                if (!json_is_object(obj))
                        continue;
                json_object_foreach(obj, key, x)
                        if (!row_reads(l, *own, key))
                                add_warning(l->res, cp_xasprintf("unknown key \"%s.%s\" in %s is ignored",
                                                                 *own, key, l->res->file_path));
        }
}

static int read_file(loader *l, const char *path, const char *origin, bool explicit, cp_error *reterr) {
        json_error_t jerr;
        struct stat st;
        FILE *f;

        f = fopen(path, "re");
        if (!f) {
                int e = errno;
                if (e == ENOENT && !explicit)
                        return 0;
                return cp_error_set(reterr, -e, "cannot read config file %s (from %s): %s", path, origin,
                                    strerror(e));
        }
        if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CFG_MAX_FILE_SIZE) {
                (void) fclose(f);
                return cp_error_set(reterr, -EINVAL, "cannot read config file %s (from %s): not a "
                                    "regular file of at most %u bytes", path, origin, CFG_MAX_FILE_SIZE);
        }
        json_t *root = json_loadf(f, 0, &jerr);
        (void) fclose(f);
        if (!root)
                return cp_error_set(reterr, -EINVAL, "cannot parse config file %s: %s (line %d, column %d)",
                                    path, jerr.text, jerr.line, jerr.column);
        if (!json_is_object(root)) {
                json_decref(root);
                return cp_error_set(reterr, -EINVAL, "cannot parse config file %s: expected a JSON object "
                                    "at the top level", path);
        }
        l->res->file = root;
        l->res->file_path = cp_xstrdup(path);
        return 0;
}

static int load_file(loader *l, cp_error *reterr) {
        size_t fi;
        int r;

        if (!l->spec->file_option)
                return 0;
        if (!find_option(l, l->spec->file_option, strlen(l->spec->file_option), &fi))
                return cp_error_set(reterr, -EINVAL, "no option %s for the config file", l->spec->file_option);
        /* Resolve the file's own path first, with the usual precedence. */
        r = apply_env_one(l, fi, reterr);
        if (r < 0)
                return r;
        r = apply_flags(l, &fi, reterr);
        if (r < 0)
                return r;
        const char *path = *(char **) field_at(l, fi);
        const cp_cfg_origin *org = &l->res->origins[fi];
        if (!path || !*path)
                return 0;
        r = read_file(l, path, org->text, org->kind != CP_CFG_FROM_DEFAULT, reterr);
        if (r < 0 || !l->res->file)
                return r;
        warn_unknown_keys(l);
        for (size_t i = 0; i < l->n_options; i++) {
                if (!opt_at(l, i)->json)
                        continue;
                r = apply_file_one(l, i, reterr);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- the whole load ----------------------------------------------------- */

int cp_cfg_load(const cp_cfg_spec *spec, const cp_cfg_table *tables, size_t n_tables,
                int argc, char *const *argv, char *const *envp,
                cp_cfg_result *ret, cp_error *reterr) {
        cp_cfg_result res = { 0 };
        loader l = { .spec = spec, .tables = tables, .n_tables = n_tables, .envp = envp, .res = &res };
        int r = 0;

        for (size_t t = 0; t < n_tables; t++)
                l.n_options += tables[t].n_options;
        res.n_origins = l.n_options;
        res.origins = cp_xcalloc(l.n_options ? l.n_options : 1, sizeof *res.origins);
        l.table_of = cp_xcalloc(l.n_options ? l.n_options : 1, sizeof *l.table_of);
        for (size_t t = 0, i = 0; t < n_tables; t++)
                for (size_t k = 0; k < tables[t].n_options; k++, i++) {
                        res.origins[i] = (cp_cfg_origin) {
                                .option = &tables[t].options[k],
                                .kind = CP_CFG_FROM_DEFAULT,
                                .text = cp_xstrdup("default"),
                        };
                        l.table_of[i] = t;
                }

        r = scan_argv(&l, argc, argv, reterr);
        if (r < 0 || res.help)
                goto done;
        for (size_t i = 0; i < l.n_options; i++) {
                const cp_cfg_option *o = opt_at(&l, i);
                if (!o->def || (o->flags & CP_CFG_IGNORED))
                        continue;
                cp_error why = { 0 };
                r = parse_text(o, o->def, field_at(&l, i), &why);
                if (r < 0) {
                        r = cp_error_set(reterr, r, "bad built-in default \"%s\" for %s: %s", o->def,
                                         o->name, why.message);
                        goto done;
                }
        }
        r = load_file(&l, reterr);
        if (r < 0)
                goto done;
        for (size_t i = 0; i < l.n_options; i++) {
                r = apply_env_one(&l, i, reterr);
                if (r < 0)
                        goto done;
        }
        r = apply_flags(&l, NULL, reterr);

done:
        free(l.flags);
        free(l.table_of);
        if (r < 0) {
                cp_cfg_result_release(&res);
                return r;
        }
        *ret = res;
        return 0;
}

void cp_cfg_result_release(cp_cfg_result *r) {
        if (!r)
                return;
        json_decref(r->file);
        free(r->file_path);
        for (size_t i = 0; i < r->n_warnings; i++)
                free(r->warnings[i]);
        free(r->warnings);
        for (size_t i = 0; i < r->n_origins; i++)
                free(r->origins[i].text);
        free(r->origins);
        memset(r, 0, sizeof *r);
}

const cp_cfg_origin *cp_cfg_result_origin(const cp_cfg_result *r, const char *name) {
        for (size_t i = 0; r && i < r->n_origins; i++)
                if (strcmp(r->origins[i].option->name, name) == 0)
                        return &r->origins[i];
        return NULL;
}

void cp_cfg_release_fields(const cp_cfg_table *tables, size_t n_tables) {
        for (size_t t = 0; t < n_tables; t++)
                for (size_t k = 0; k < tables[t].n_options; k++) {
                        const cp_cfg_option *o = &tables[t].options[k];
                        void *f = (char *) tables[t].base + o->offset;
                        if (o->flags & CP_CFG_IGNORED)
                                continue;
                        store_value(o, f, (cfg_value) { 0 });
                }
}

/* ---- --help ------------------------------------------------------------- */

void cp_cfg_usage(cp_strbuf *out, const cp_cfg_spec *spec, const cp_cfg_table *tables, size_t n_tables) {
        for (size_t t = 0; t < n_tables; t++)
                for (size_t k = 0; k < tables[t].n_options; k++) {
                        const cp_cfg_option *o = &tables[t].options[k];
                        _cleanup_free_ char *env = cp_cfg_env_name(spec->env_prefix, o);
                        char left[64];

                        (void) snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "",
                                        o->arg ? o->arg : "");
                        cp_strbuf_addf(out, "  %-34s %s", left, o->help ? o->help : "");
                        if (o->def && *o->def)
                                cp_strbuf_addf(out, " (default %s)", o->def);
                        cp_strbuf_addf(out, "\n  %-34s env %s", "", env);
                        for (size_t e = 0; e < CP_CFG_MAX_ENV && o->env[e]; e++)
                                cp_strbuf_addf(out, ", %s", o->env[e]);
                        if (o->json)
                                cp_strbuf_addf(out, "; file %s", o->json);
                        cp_strbuf_addch(out, '\n');
                }
}

/* ---- base64 ------------------------------------------------------------- */

static int b64_value(unsigned char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int cp_cfg_b64_decode(const char *in, uint8_t *out, size_t out_cap) {
        size_t n = in ? strlen(in) : 0, o = 0;

        if (n == 0 || n % 4 != 0)
                return -EINVAL;
        for (size_t i = 0; i < n; i += 4) {
                int v[4], pad = 0;
                for (size_t k = 0; k < 4; k++) {
                        unsigned char c = (unsigned char) in[i + k];
                        /* '=' only at the end: "xx==" or "xxx=". */
                        if (c == '=' && i + 4 == n && k >= 2 && (k == 3 || in[i + 3] == '=')) {
                                v[k] = 0;
                                pad++;
                                continue;
                        }
                        if (pad || (v[k] = b64_value(c)) < 0)
                                return -EINVAL;
                }
                uint32_t w = (uint32_t) v[0] << 18 | (uint32_t) v[1] << 12 | (uint32_t) v[2] << 6 |
                             (uint32_t) v[3];
                size_t bytes = 3 - (size_t) pad;
                if (o + bytes > out_cap)
                        return -EINVAL;
                for (size_t k = 0; k < bytes; k++)
                        out[o++] = (uint8_t) (w >> (16 - 8 * k));
        }
        return (int) o;
}
