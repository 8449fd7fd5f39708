#include "cp/base.h"
#include "cp/prefix.h"
#include "cp/error.h"
#include "cp/strbuf.h"
#include "cp/util.h"
#include "cptest.h"

#include <sys/prctl.h>
#include <sys/resource.h>

TEST(strbuf_grows_and_detaches) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        ASSERT_STREQ("", sb.buf);
        for (int i = 0; i < 1000; i++)
                cp_strbuf_addf(&sb, "%d,", i % 10);
        ASSERT_EQ(2000, sb.len);
        ASSERT_TRUE(sb.cap > sb.len);
        ASSERT_EQ(0, sb.buf[sb.len]);
        char *s = cp_strbuf_detach(&sb);
        ASSERT_EQ(0, sb.len);
        ASSERT_TRUE(strncmp(s, "0,1,2,", 6) == 0);
        free(s);
        cp_strbuf_release(&sb);
}

TEST(strbuf_json_escape) {
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_strbuf_add_json_escaped(&sb, "a\"b\\c\nd\x01");
        ASSERT_STREQ("a\\\"b\\\\c\\nd\\u0001", sb.buf);
        /* Appends; runs without escapes at either end, UTF-8 as it is. */
        cp_strbuf_add_json_escaped(&sb, "\t\xc3\xa9t\xc3\xa9 \x1f\"");
        cp_strbuf_add_json_escaped(&sb, "");
        cp_strbuf_add_json_escaped(&sb, "plain");
        ASSERT_STREQ("a\\\"b\\\\c\\nd\\u0001\\t\xc3\xa9t\xc3\xa9 \\u001f\\\"plain", sb.buf);
        cp_strbuf_release(&sb);
}

TEST(error_set_and_prefix) {
        cp_error e;

        ASSERT_EQ(-EINVAL, cp_error_set(&e, -EINVAL, "bad port %s", "x"));
        cp_error_prefix(&e, "loading config");
        ASSERT_STREQ("loading config: bad port x", e.message);
        ASSERT_EQ(-EINVAL, e.code);
        ASSERT_EQ(-ENOENT, cp_error_set(NULL, -ENOENT, "ignored"));
}

TEST(parse_int64_is_strict) {
        int64_t v = 7;

        ASSERT_EQ(0, cp_parse_int64("65535", 1, 65535, &v));
        ASSERT_EQ(65535, v);
        ASSERT_EQ(-ERANGE, cp_parse_int64("65536", 1, 65535, &v));
        ASSERT_EQ(-EINVAL, cp_parse_int64("12abc", 1, 65535, &v));
        ASSERT_EQ(-EINVAL, cp_parse_int64("", 1, 65535, &v));
        ASSERT_EQ(65535, v);    /* untouched on failure */
}

TEST(parse_bool) {
        bool b = false;

        ASSERT_EQ(0, cp_parse_bool("TRUE", &b));
        ASSERT_TRUE(b);
        ASSERT_EQ(0, cp_parse_bool("off", &b));
        ASSERT_FALSE(b);
        ASSERT_EQ(-EINVAL, cp_parse_bool("maybe", &b));
}

TEST(parse_duration) {
        int64_t ms = 0;

        ASSERT_EQ(0, cp_parse_duration_ms("12h", &ms));
        ASSERT_EQ(12LL * 3600 * 1000, ms);
        ASSERT_EQ(0, cp_parse_duration_ms("1h30m", &ms));
        ASSERT_EQ(90LL * 60 * 1000, ms);
        ASSERT_EQ(0, cp_parse_duration_ms("250ms", &ms));
        ASSERT_EQ(250, ms);
        ASSERT_EQ(0, cp_parse_duration_ms("10", &ms));
        ASSERT_EQ(10000, ms);
        ASSERT_EQ(-EINVAL, cp_parse_duration_ms("10x", &ms));
        ASSERT_EQ(-EINVAL, cp_parse_duration_ms("h", &ms));
        ASSERT_EQ(-EINVAL, cp_parse_duration_ms("", &ms));
}

TEST(ids_are_unique_and_well_formed) {
        char a[CP_ID_LEN + 1], b[CP_ID_LEN + 1];

        cp_id_new(a);
        cp_id_new(b);
        ASSERT_EQ(CP_ID_LEN, strlen(a));
        ASSERT_TRUE(strcmp(a, b) != 0);
        for (size_t i = 0; i < CP_ID_LEN; i++)
                ASSERT_TRUE((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'v'));
}

TEST(random_uniform_stays_in_bound) {
        int seen[7] = { 0 };

        for (int i = 0; i < 7000; i++) {
                uint64_t v = cp_random_uniform(7);
                ASSERT_TRUE(v < 7);
                seen[v]++;
        }
        for (int i = 0; i < 7; i++)
                ASSERT_TRUE(seen[i] > 500);
}

TEST(rfc3339_format) {
        char buf[32];

        cp_format_rfc3339(1700000000123456789LL, buf);
        ASSERT_STREQ("2023-11-14T22:13:20.123456Z", buf);
}

/* cp/prefix.h: the list syntax --trusted-proxies uses, and the match. */
TEST(prefix_lists) {
        cp_prefix_list l;
        cp_error err = { 0 };

        ASSERT_OK(cp_prefix_list_parse("10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,,", &l, &err), &err);
        ASSERT_EQ(3, l.n);
        ASSERT_TRUE(cp_prefix_list_contains(&l, "10.200.3.4"));
        ASSERT_TRUE(cp_prefix_list_contains(&l, "192.0.2.7"));
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "192.0.2.8"));
        ASSERT_TRUE(cp_prefix_list_contains(&l, "2001:db8::1"));
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "2001:db9::1"));
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "::ffff:10.0.0.1"));    /* families never mix */
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "10.0.0.0/8"));         /* an address, not a prefix */
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "nonsense"));
        cp_prefix_list_release(&l);
        /* host bits past the length are ignored; /0 holds everything of its family */
        ASSERT_OK(cp_prefix_list_parse("172.16.5.9/12 ::/0", &l, &err), &err);
        ASSERT_TRUE(cp_prefix_list_contains(&l, "172.31.255.255"));
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "172.32.0.0"));
        ASSERT_TRUE(cp_prefix_list_contains(&l, "fe80::1"));
        cp_prefix_list_release(&l);
        ASSERT_OK(cp_prefix_list_parse(NULL, &l, &err), &err);
        ASSERT_EQ(0, l.n);
        ASSERT_TRUE(!cp_prefix_list_contains(&l, "10.0.0.1"));
        const char *bad[] = { "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0", "example.com",
                              "10.0.0.0/8 1.2.3.4/-1" };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
                ASSERT_EQ(-EINVAL, cp_prefix_list_parse(bad[i], &l, &err));
                ASSERT_TRUE(strstr(err.message, "is not an IP address or prefix") != NULL);
                ASSERT_EQ(0, l.n);
        }
}

/* Last: it leaves this process without core dumps. */
TEST(core_dumps_disabled_unless_allowed) {
        struct rlimit lim;

        ASSERT_OK(setenv(CP_CORE_DUMPS_ENV, "1", 1), NULL);
        ASSERT_EQ(1, cp_core_dumps_disable());
        ASSERT_EQ(1, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
        ASSERT_OK(setenv(CP_CORE_DUMPS_ENV, "yes", 1), NULL);  /* only "1" allows */
        ASSERT_EQ(0, cp_core_dumps_disable());
        ASSERT_EQ(0, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
        ASSERT_OK(getrlimit(RLIMIT_CORE, &lim), NULL);
        ASSERT_EQ(0, lim.rlim_cur);
        ASSERT_EQ(0, lim.rlim_max);
        ASSERT_OK(unsetenv(CP_CORE_DUMPS_ENV), NULL);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
