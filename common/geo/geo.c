/*
 * IP geolocation on NetBird's datadir databases (cp/geo.h).
 */
#include "cp/base.h"
#include "cp/geo.h"

#include <errno.h>
#include <glob.h>
#include <jansson.h>
#include <maxminddb.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <unistd.h>

#define ISO3166_DEFAULT "/usr/share/iso-codes/json/iso_3166-1.json"

typedef struct country {
        char code[8];
        char *name;
} country;

struct cp_geo {
        char *mmdb_path;                /* "" = none */
        char *names_path;               /* "" = none */
        bool has_mmdb;
        MMDB_s mmdb;
        sqlite3 *names;                 /* NULL = none; used under lock */
        sqlite3_stmt *cities;           /* prepared on names */
        pthread_mutex_t lock;
        const char *source;             /* "geonames", "iso-codes", "none" */
        country *countries;             /* read once at open, in name order */
        size_t n_countries;
};

/* The last file in name order matching dir/pattern, or "" (new string). */
static char *newest(const char *dir, const char *pattern) {
        _cleanup_free_ char *pat = cp_xasprintf("%s/%s", dir, pattern);
        glob_t gl = { 0 };
        char *found;

        if (glob(pat, 0, NULL, &gl) != 0 || gl.gl_pathc == 0) {
                globfree(&gl);
                return cp_xstrdup("");
        }
        found = cp_xstrdup(gl.gl_pathv[gl.gl_pathc - 1]);
        globfree(&gl);
        return found;
}

static void add_country(cp_geo *g, size_t *cap, const char *code, const char *name) {
        if (!code || !name || !*name || strlen(code) >= sizeof g->countries[0].code)
                return;
        if (g->n_countries == *cap) {
                *cap = *cap ? *cap * 2 : 64;
                g->countries = cp_xrealloc(g->countries, *cap * sizeof *g->countries);
        }
        country *c = &g->countries[g->n_countries++];
        (void) snprintf(c->code, sizeof c->code, "%s", code);
        c->name = cp_xstrdup(name);
}

static int by_name(const void *a, const void *b) {
        return strcmp(((const country *) a)->name, ((const country *) b)->name);
}

/* NetBird's GetAllCountries: one entry per country name. */
static int countries_from_names(cp_geo *g, cp_error *reterr) {
        sqlite3_stmt *st = NULL;
        size_t cap = 0;
        int rc;

        rc = sqlite3_prepare_v2(g->names,
                                "SELECT MIN(country_iso_code), country_name FROM geonames"
                                " WHERE country_name <> '' AND country_iso_code <> ''"
                                " GROUP BY country_name ORDER BY country_name", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return cp_error_set(reterr, -EINVAL, "%s: not a geonames database: %s", g->names_path,
                                    sqlite3_errmsg(g->names));
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
                add_country(g, &cap, (const char *) sqlite3_column_text(st, 0),
                            (const char *) sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE)
                return cp_error_set(reterr, -EIO, "%s: %s", g->names_path, sqlite3_errmsg(g->names));
        g->source = "geonames";
        return 0;
}

/* Debian's iso-codes: {"3166-1": [{"alpha_2": "DE", "name": "Germany", ...}]}.
 * A missing or unreadable file leaves the list empty (logged by the
 * caller as source "none"). */
static void countries_from_iso(cp_geo *g, const char *path) {
        json_error_t jerr;
        json_t *root, *list, *e;
        size_t i, cap = 0;

        if (!*path || access(path, R_OK) != 0)
                return;
        root = json_load_file(path, 0, &jerr);
        if (!root)
                return;
        list = json_object_get(root, "3166-1");
        json_array_foreach(list, i, e)
                add_country(g, &cap, json_string_value(json_object_get(e, "alpha_2")),
                            json_string_value(json_object_get(e, "name")));
        json_decref(root);
        if (g->n_countries > 0) {
                qsort(g->countries, g->n_countries, sizeof *g->countries, by_name);
                g->source = "iso-codes";
        }
}

static int open_names(cp_geo *g, cp_error *reterr) {
        int rc;

        rc = sqlite3_open_v2(g->names_path, &g->names, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK)
                return cp_error_set(reterr, -EIO, "%s: cannot open: %s", g->names_path,
                                    g->names ? sqlite3_errmsg(g->names) : sqlite3_errstr(rc));
        rc = sqlite3_prepare_v2(g->names,
                                "SELECT MIN(geoname_id), city_name FROM geonames"
                                " WHERE country_iso_code = ?1 AND city_name <> ''"
                                " GROUP BY city_name ORDER BY city_name", -1, &g->cities, NULL);
        if (rc != SQLITE_OK)
                return cp_error_set(reterr, -EINVAL, "%s: not a geonames database: %s", g->names_path,
                                    sqlite3_errmsg(g->names));
        return countries_from_names(g, reterr);
}

int cp_geo_open(const cp_geo_options *o, cp_geo **ret, cp_error *reterr) {
        const char *dir = o && o->dir ? o->dir : "";
        const char *iso = o && o->iso3166_path ? o->iso3166_path : ISO3166_DEFAULT;
        cp_geo *g = cp_xcalloc(1, sizeof *g);
        int r = 0, rc;

        pthread_mutex_init(&g->lock, NULL);
        g->source = "none";
        g->mmdb_path = *dir ? newest(dir, "GeoLite2-City_*.mmdb") : cp_xstrdup("");
        g->names_path = *dir ? newest(dir, "geonames_*.db") : cp_xstrdup("");

        if (*g->mmdb_path) {
                rc = MMDB_open(g->mmdb_path, MMDB_MODE_MMAP, &g->mmdb);
                if (rc != MMDB_SUCCESS) {
                        r = cp_error_set(reterr, -EINVAL, "%s: cannot open: %s", g->mmdb_path, MMDB_strerror(rc));
                        goto fail;
                }
                g->has_mmdb = true;
        }
        if (*g->names_path) {
                r = open_names(g, reterr);
                if (r < 0)
                        goto fail;
        } else
                countries_from_iso(g, iso);
        *ret = g;
        return 0;
fail:
        cp_geo_free(g);
        return r;
}

cp_geo *cp_geo_free(cp_geo *g) {
        if (!g)
                return NULL;
        if (g->has_mmdb)
                MMDB_close(&g->mmdb);
        sqlite3_finalize(g->cities);
        sqlite3_close(g->names);
        for (size_t i = 0; i < g->n_countries; i++)
                free(g->countries[i].name);
        free(g->countries);
        free(g->mmdb_path);
        free(g->names_path);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return NULL;
}

const char *cp_geo_mmdb_path(const cp_geo *g) {
        return g ? g->mmdb_path : "";
}

const char *cp_geo_names_path(const cp_geo *g) {
        return g && g->names ? g->names_path : "";
}

const char *cp_geo_countries_source(const cp_geo *g) {
        return g ? g->source : "none";
}

bool cp_geo_can_lookup(const cp_geo *g) {
        return g && g->has_mmdb;
}

/* One string of the record at path (NULL-terminated), copied into out;
 * absent or of another type: "". */
static void get_string(MMDB_entry_s *entry, char *out, size_t cap, ...) {
        MMDB_entry_data_s d;
        va_list ap;

        out[0] = '\0';
        va_start(ap, cap);
        int rc = MMDB_vget_value(entry, &d, ap);
        va_end(ap);
        if (rc == MMDB_SUCCESS && d.has_data && d.type == MMDB_DATA_TYPE_UTF8_STRING)
                (void) snprintf(out, cap, "%.*s", (int) d.data_size, d.utf8_string);
}

int cp_geo_lookup(cp_geo *g, const char *ip, cp_geo_location *ret, cp_error *reterr) {
        MMDB_lookup_result_s res;
        MMDB_entry_data_s d;
        int gai = 0, rc = MMDB_SUCCESS;

        memset(ret, 0, sizeof *ret);
        if (!cp_geo_can_lookup(g))
                return 0;
        if (!ip || !*ip)
                return cp_error_set(reterr, -EINVAL, "no address to look up");
        res = MMDB_lookup_string(&g->mmdb, ip, &gai, &rc);
        if (gai != 0)
                return cp_error_set(reterr, -EINVAL, "invalid address \"%s\"", ip);
        if (rc != MMDB_SUCCESS)
                return cp_error_set(reterr, -EIO, "%s: lookup of %s: %s", g->mmdb_path, ip, MMDB_strerror(rc));
        if (!res.found_entry)
                return 1;
        get_string(&res.entry, ret->country_code, sizeof ret->country_code, "country", "iso_code", NULL);
        get_string(&res.entry, ret->city_name, sizeof ret->city_name, "city", "names", "en", NULL);
        if (MMDB_get_value(&res.entry, &d, "city", "geoname_id", NULL) == MMDB_SUCCESS && d.has_data) {
                if (d.type == MMDB_DATA_TYPE_UINT32)
                        ret->geoname_id = d.uint32;
                else if (d.type == MMDB_DATA_TYPE_UINT16)
                        ret->geoname_id = d.uint16;
                else if (d.type == MMDB_DATA_TYPE_UINT64)
                        ret->geoname_id = (int64_t) (d.uint64 & INT64_MAX);
                else if (d.type == MMDB_DATA_TYPE_INT32)
                        ret->geoname_id = d.int32;
        }
        return 1;
}

int cp_geo_countries(cp_geo *g, cp_geo_country_fn fn, void *userdata, cp_error *reterr) {
        (void) reterr;
        if (!g)
                return 0;
        for (size_t i = 0; i < g->n_countries; i++) {
                int r = fn(g->countries[i].code, g->countries[i].name, userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

int cp_geo_cities(cp_geo *g, const char *country_code, cp_geo_city_fn fn, void *userdata, cp_error *reterr) {
        int r = 0, rc;

        if (!g || !g->names)
                return 0;
        pthread_mutex_lock(&g->lock);
        sqlite3_reset(g->cities);
        sqlite3_bind_text(g->cities, 1, country_code, -1, SQLITE_TRANSIENT);
        while ((rc = sqlite3_step(g->cities)) == SQLITE_ROW) {
                r = fn(sqlite3_column_int64(g->cities, 0), (const char *) sqlite3_column_text(g->cities, 1),
                       userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = cp_error_set(reterr, -EIO, "%s: %s", g->names_path, sqlite3_errmsg(g->names));
        sqlite3_reset(g->cities);
        sqlite3_clear_bindings(g->cities);
        pthread_mutex_unlock(&g->lock);
        return r;
}
