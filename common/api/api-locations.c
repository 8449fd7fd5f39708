/*
 * /api/locations: the country list and the cities of a country, from the
 * geolocation databases (cp/geo.h), as NetBird's geolocationsHandler
 * serves them (management/server/http/handlers/policies).
 *
 * Any signed-in user may read them (NetBird checks no module). A country
 * code that is not two letters is refused first (422 "invalid country
 * code"). Where NetBird answers 412 "Geo location database is not
 * initialized" (it runs without its databases), this server answers what
 * it knows: an empty list, or the country list of Debian's iso-codes
 * (docs/api.md "Locations"): the stock dashboard shows an error toast for
 * anything but a 200 on its posture-check pages.
 */
#include "api-int.h"
#include "cp/geo.h"

#include <ctype.h>

static int add_country(const char *code, const char *name, void *ud) {
        cp_strbuf *sb = ud;

        cp_strbuf_adds(sb, sb->len > 1 ? ",{\"country_code\":\"" : "{\"country_code\":\"");
        cp_strbuf_add_json_escaped(sb, code);
        cp_strbuf_adds(sb, "\",\"country_name\":\"");
        cp_strbuf_add_json_escaped(sb, name);
        cp_strbuf_adds(sb, "\"}");
        return 0;
}

static int add_city(int64_t geoname_id, const char *name, void *ud) {
        cp_strbuf *sb = ud;

        cp_strbuf_addf(sb, "%s{\"city_name\":\"", sb->len > 1 ? "," : "");
        cp_strbuf_add_json_escaped(sb, name);
        cp_strbuf_addf(sb, "\",\"geoname_id\":%lld}", (long long) geoname_id);
        return 0;
}

static int reply_list(api_ctx *c, cp_strbuf *sb, int r, const cp_error *err) {
        if (r < 0) {
                cp_strbuf_release(sb);
                return api_internal(c, "cannot read the geonames database", err);
        }
        cp_strbuf_addch(sb, ']');
        r = api_reply_text(c, 200, sb->buf, sb->len);
        cp_strbuf_release(sb);
        return r;
}

static int countries(api_ctx *c) {
        cp_error err = { 0 };
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_addch(&sb, '[');
        return reply_list(c, &sb, cp_geo_countries(c->api->geo, add_country, &sb, &err), &err);
}

/* NetBird's countryCodeRegex ^[a-zA-Z]{2}$, checked before anything else;
 * the code is then matched as given (NetBird's stored codes are upper
 * case, as the dashboard sends them). */
static int cities(api_ctx *c) {
        const char *cc = c->param[0];
        cp_error err = { 0 };
        cp_strbuf sb;

        if (strlen(cc) != 2 || !isalpha((unsigned char) cc[0]) || !isalpha((unsigned char) cc[1]))
                return api_error(c, 422, "invalid country code");
        cp_strbuf_init(&sb);
        cp_strbuf_addch(&sb, '[');
        return reply_list(c, &sb, cp_geo_cities(c->api->geo, cc, add_city, &sb, &err), &err);
}

const api_route api_locations_routes[] = {
        { "GET", "/api/locations/countries", API_MOD_SELF, API_READ, countries },
        { "GET", "/api/locations/countries/{country}/cities", API_MOD_SELF, API_READ, cities },
        { NULL, NULL, 0, 0, NULL },
};
