/*
 * cp/geo.h: IP geolocation from the databases NetBird's management server
 * keeps in its datadir (management/server/geolocation):
 *
 *   GeoLite2-City_*.mmdb   a MaxMind DB (libmaxminddb): IP -> country ISO
 *                          code, English city name, city geoname id
 *   geonames_*.db          a SQLite file with NetBird's table "geonames"
 *                          (columns geoname_id, country_iso_code,
 *                          country_name, city_name, ...): the country list
 *                          and the cities of each country
 *
 * When several files match a pattern, the last in name order is used
 * (NetBird's files carry their date, so that is the newest). Nothing is
 * ever downloaded. A missing database is a state, not an error:
 *   - no .mmdb: cp_geo_lookup() reports "unknown" (0), peers keep the
 *     location they have;
 *   - no geonames db: the country list comes from Debian's iso-codes
 *     (iso_3166-1.json) when that file is there, else it is empty; every
 *     country has no cities.
 *
 * A cp_geo is opened once and then read by any thread: lookups and lists
 * are thread-safe (the .mmdb is mapped read-only; the SQLite handle is
 * used under a mutex). There is no reload.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cp/error.h"

typedef struct cp_geo cp_geo;

typedef struct cp_geo_options {
        const char *dir;                /* NetBird's datadir; NULL or "" = no databases */
        /* Debian's iso-codes country list, the fallback when there is no
         * geonames db; NULL = /usr/share/iso-codes/json/iso_3166-1.json,
         * "" = no fallback. */
        const char *iso3166_path;
} cp_geo_options;

/* Opens what the directory holds. Fails only on a database that is there
 * but unreadable or corrupt (-EINVAL/-EIO with the file named in reterr);
 * missing files give a cp_geo with that part absent. */
int cp_geo_open(const cp_geo_options *o, cp_geo **ret, cp_error *reterr);
/* Accepts NULL; returns NULL. */
cp_geo *cp_geo_free(cp_geo *g);

/* The files in use ("" when absent), for the start-up log line. */
const char *cp_geo_mmdb_path(const cp_geo *g);
const char *cp_geo_names_path(const cp_geo *g);
/* Where the country list comes from: "geonames", "iso-codes" or "none". */
const char *cp_geo_countries_source(const cp_geo *g);
/* True when IP lookups can answer (an .mmdb is open). g may be NULL. */
bool cp_geo_can_lookup(const cp_geo *g);

/* What NetBird stores as a peer's location (its Record's country.iso_code,
 * city.names.en, city.geoname_id). Empty strings and 0 for what the
 * database does not know. */
typedef struct cp_geo_location {
        char country_code[8];
        char city_name[128];
        int64_t geoname_id;
} cp_geo_location;

/* Looks up ip (IPv4 or IPv6 text, no port). Returns 1 with *ret filled
 * (all empty when the address is in no network of the database, as
 * NetBird's lookup then gives an empty record), 0 when there is no .mmdb
 * (g NULL included), -EINVAL for an address that does not parse, -EIO for
 * a corrupt database. */
int cp_geo_lookup(cp_geo *g, const char *ip, cp_geo_location *ret, cp_error *reterr);

/* The country list (NetBird's GetAllCountries: one per country name) and
 * the cities of a country (GetCitiesByCountry: one per city name; code
 * matched as given, NetBird's stored codes are upper case). fn is called
 * once per entry, in name order; a negative return from fn stops the walk
 * and is returned. 0 when done; -EIO on a database error. g may be NULL
 * (no entries). */
typedef int (*cp_geo_country_fn)(const char *code, const char *name, void *userdata);
typedef int (*cp_geo_city_fn)(int64_t geoname_id, const char *name, void *userdata);
int cp_geo_countries(cp_geo *g, cp_geo_country_fn fn, void *userdata, cp_error *reterr);
int cp_geo_cities(cp_geo *g, const char *country_code, cp_geo_city_fn fn, void *userdata, cp_error *reterr);
