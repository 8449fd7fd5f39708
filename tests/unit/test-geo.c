/* common/geo: lookups and lists on fixtures written by tests/lib/geofix.py
 * (its path comes as argv[1]; the fixture data is listed there). */
#include "cp/base.h"
#include "cp/geo.h"
#include "cp/strbuf.h"
#include "cptest.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static const char *geofix;
static char dir[64];

/* A fresh datadir with both databases. */
static void write_fixture(void) {
        char cmd[512];

        if (dir[0])
                return;
        (void) snprintf(dir, sizeof dir, "/tmp/cp-test-geo-%d", (int) getpid());
        (void) snprintf(cmd, sizeof cmd, "python3 %s %s", geofix, dir);
        if (system(cmd) != 0)
                abort();
}

static int add_country(const char *code, const char *name, void *ud) {
        cp_strbuf_addf(ud, "%s=%s;", code, name);
        return 0;
}

static int add_city(int64_t id, const char *name, void *ud) {
        cp_strbuf_addf(ud, "%lld=%s;", (long long) id, name);
        return 0;
}

TEST(lookup_and_lists) {
        cp_error err = { 0 };
        cp_geo *g = NULL;
        cp_geo_location loc;
        cp_strbuf sb;

        write_fixture();
        ASSERT_OK(cp_geo_open(&(cp_geo_options) { .dir = dir, .iso3166_path = "" }, &g, &err), &err);
        ASSERT_TRUE(cp_geo_can_lookup(g));
        ASSERT_STREQ("geonames", cp_geo_countries_source(g));

        ASSERT_EQ(1, cp_geo_lookup(g, "127.0.0.1", &loc, &err));
        ASSERT_STREQ("DE", loc.country_code);
        ASSERT_STREQ("Berlin", loc.city_name);
        ASSERT_EQ(2950159, loc.geoname_id);
        ASSERT_EQ(1, cp_geo_lookup(g, "2001:db8::7", &loc, &err));
        ASSERT_STREQ("JP", loc.country_code);
        ASSERT_STREQ("Tokyo", loc.city_name);
        /* A country without a city. */
        ASSERT_EQ(1, cp_geo_lookup(g, "198.51.100.9", &loc, &err));
        ASSERT_STREQ("US", loc.country_code);
        ASSERT_STREQ("", loc.city_name);
        ASSERT_EQ(0, loc.geoname_id);
        /* In no network: known, but empty (NetBird's empty record). */
        ASSERT_EQ(1, cp_geo_lookup(g, "10.1.2.3", &loc, &err));
        ASSERT_STREQ("", loc.country_code);
        ASSERT_EQ(-EINVAL, cp_geo_lookup(g, "not-an-ip", &loc, &err));
        ASSERT_EQ(-EINVAL, cp_geo_lookup(g, "127.0.0.1:80", &loc, &err));

        cp_strbuf_init(&sb);
        ASSERT_OK(cp_geo_countries(g, add_country, &sb, &err), &err);
        ASSERT_STREQ("FR=France;DE=Germany;JP=Japan;US=United States;", sb.buf);
        cp_strbuf_release(&sb);
        cp_strbuf_init(&sb);
        ASSERT_OK(cp_geo_cities(g, "DE", add_city, &sb, &err), &err);
        ASSERT_STREQ("2950159=Berlin;2911298=Hamburg;2867714=Munich;", sb.buf);
        cp_strbuf_release(&sb);
        cp_strbuf_init(&sb);
        ASSERT_OK(cp_geo_cities(g, "XX", add_city, &sb, &err), &err);
        ASSERT_STREQ("", sb.len ? sb.buf : "");
        cp_strbuf_release(&sb);
        cp_geo_free(g);
}

TEST(missing_databases) {
        cp_error err = { 0 };
        cp_geo *g = NULL;
        cp_geo_location loc;
        cp_strbuf sb;

        /* No directory at all: nothing known, nothing fails. */
        ASSERT_OK(cp_geo_open(&(cp_geo_options) { .dir = "/nonexistent/geo", .iso3166_path = "" }, &g, &err),
                  &err);
        ASSERT_FALSE(cp_geo_can_lookup(g));
        ASSERT_STREQ("none", cp_geo_countries_source(g));
        ASSERT_EQ(0, cp_geo_lookup(g, "127.0.0.1", &loc, &err));
        cp_strbuf_init(&sb);
        ASSERT_OK(cp_geo_countries(g, add_country, &sb, &err), &err);
        ASSERT_OK(cp_geo_cities(g, "DE", add_city, &sb, &err), &err);
        ASSERT_EQ(0, (long long) sb.len);
        cp_strbuf_release(&sb);
        cp_geo_free(g);
        ASSERT_EQ(0, cp_geo_lookup(NULL, "127.0.0.1", &loc, &err));

        /* Debian's iso-codes as the country list, when installed. */
        if (access("/usr/share/iso-codes/json/iso_3166-1.json", R_OK) != 0)
                return;
        ASSERT_OK(cp_geo_open(&(cp_geo_options) { .dir = "/nonexistent/geo" }, &g, &err), &err);
        ASSERT_STREQ("iso-codes", cp_geo_countries_source(g));
        cp_strbuf_init(&sb);
        ASSERT_OK(cp_geo_countries(g, add_country, &sb, &err), &err);
        ASSERT_TRUE(strstr(sb.buf, "DE=Germany;") != NULL);
        ASSERT_TRUE(strstr(sb.buf, "FR=France;") != NULL);
        cp_strbuf_release(&sb);
        cp_geo_free(g);
}

TEST(corrupt_database_fails_open) {
        char d[96], path[160];
        cp_error err = { 0 };
        cp_geo *g = NULL;
        FILE *f;

        (void) snprintf(d, sizeof d, "/tmp/cp-test-geo-bad-%d", (int) getpid());
        (void) snprintf(path, sizeof path, "mkdir -p %s", d);
        ASSERT_EQ(0, system(path));
        (void) snprintf(path, sizeof path, "%s/GeoLite2-City_20240101.mmdb", d);
        f = fopen(path, "w");
        ASSERT_TRUE(f != NULL);
        fputs("not a database", f);
        fclose(f);
        ASSERT_EQ(-EINVAL, cp_geo_open(&(cp_geo_options) { .dir = d, .iso3166_path = "" }, &g, &err));
        ASSERT_TRUE(strstr(err.message, "GeoLite2-City_20240101.mmdb") != NULL);
        (void) unlink(path);
        (void) rmdir(d);
}

/* Many threads on one handle: every answer right. */
static void *worker(void *arg) {
        cp_geo *g = arg;
        long bad = 0;

        for (int i = 0; i < 2000; i++) {
                cp_geo_location loc;
                cp_strbuf sb;
                if (cp_geo_lookup(g, i % 2 ? "127.0.0.1" : "192.0.2.1", &loc, NULL) != 1 ||
                    strcmp(loc.city_name, i % 2 ? "Berlin" : "Paris") != 0)
                        bad++;
                cp_strbuf_init(&sb);
                if (cp_geo_cities(g, "DE", add_city, &sb, NULL) < 0 ||
                    strcmp(sb.buf, "2950159=Berlin;2911298=Hamburg;2867714=Munich;") != 0)
                        bad++;
                cp_strbuf_release(&sb);
        }
        return (void *) bad;
}

TEST(threads) {
        cp_error err = { 0 };
        pthread_t t[4];
        cp_geo *g = NULL;
        long bad = 0;

        write_fixture();
        ASSERT_OK(cp_geo_open(&(cp_geo_options) { .dir = dir, .iso3166_path = "" }, &g, &err), &err);
        for (int i = 0; i < 4; i++)
                pthread_create(&t[i], NULL, worker, g);
        for (int i = 0; i < 4; i++) {
                void *r;
                pthread_join(t[i], &r);
                bad += (long) r;
        }
        ASSERT_EQ(0, bad);
        cp_geo_free(g);
}

int main(int argc, char **argv) {
        geofix = getenv("CP_GEOFIX");
        if (!geofix)
                geofix = "tests/lib/geofix.py";
        int r = cptest_main(argc, argv);
        if (dir[0]) {
                char cmd[128];
                (void) snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
                (void) system(cmd);
        }
        return r;
}
