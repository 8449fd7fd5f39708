/*
 * Unit tests for common/config: the generic loader (precedence, syntax,
 * error messages that name the key and its source) and the management
 * settings table.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cptest.h"

#include <jansson.h>

/* Every test passes its own environment, so nothing leaks in from the
 * real one; the default config path must not be read either. */
#define NOFILE "--config="

static char *tmp_json(const char *text) {
        char *path = cp_xstrdup("/tmp/test-config-XXXXXX.json");
        int fd = mkstemps(path, 5);

        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ((long long) strlen(text), (long long) write(fd, text, strlen(text)));
        (void) close(fd);
        return path;
}

/* Loads argv (NULL-terminated) with env (NULL-terminated) into *c. */
static int load(cp_config *c, cp_error *err, char **env, char **argv) {
        int argc = 0;

        while (argv && argv[argc])
                argc++;
        return cp_config_load(c, argc, argv, env, NULL, 0, err);
}

#define ARGV(...) ((char *[]) { __VA_ARGS__, NULL })
#define ENV(...) ((char *[]) { __VA_ARGS__, NULL })
#define NOENV ((char *[]) { NULL })

static void assert_contains(const char *hay, const char *needle) {
        if (!strstr(hay, needle))
                cptest_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"", hay, needle);
}

/* Loading must fail and the message must contain each needle. */
static void expect_error(char **env, char **argv, const char *n1, const char *n2) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        int r = load(&c, &err, env, argv);
        if (r >= 0) {
                cp_config_release(&c);
                cptest_fail(__FILE__, __LINE__, "load succeeded, expected an error with \"%s\"", n1);
        }
        ASSERT_TRUE(r < 0 && err.code == r);
        assert_contains(err.message, n1);
        if (n2)
                assert_contains(err.message, n2);
        /* Nothing was handed out on failure. */
        ASSERT_TRUE(c.listen_address == NULL && c.source.origins == NULL);
}

TEST(defaults) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE)), &err);
        ASSERT_EQ(33073, c.port);
        ASSERT_EQ(33080, c.http_port);
        ASSERT_STREQ("0.0.0.0", c.listen_address);
        ASSERT_STREQ("/var/lib/netbird/", c.datadir);
        ASSERT_STREQ("console", c.log_file);
        ASSERT_EQ(CP_LOG_INFO, c.log_level);
        ASSERT_STREQ("netbird.selfhosted", c.dns_domain);
        ASSERT_EQ(8, c.db_pool_size);
        ASSERT_EQ(10000, c.shutdown_timeout_ms);
        ASSERT_STREQ("postgres", c.store_engine);
        ASSERT_TRUE(c.cert_file == NULL && c.cert_key == NULL && c.postgres_dsn == NULL);
        ASSERT_TRUE(c.redis_url == NULL && c.letsencrypt_domain == NULL);
        ASSERT_TRUE(c.config_file == NULL);     /* "" means no file */
        ASSERT_TRUE(c.source.file == NULL);
        ASSERT_EQ(0, c.source.n_warnings);
        ASSERT_EQ(CP_CFG_FROM_DEFAULT, cp_cfg_result_origin(&c.source, "port")->kind);
        ASSERT_EQ(-EINVAL, cp_config_check_store(&c, NULL));
        cp_config_release(&c);
        cp_config_release(NULL);
}

TEST(precedence_file_env_flag) {
        _cleanup_free_ char *path = tmp_json("{\"ControlPlane\": {\"Port\": 1001, \"HttpPort\": 2001,"
                                             " \"LogLevel\": \"debug\"}}");
        _cleanup_free_ char *cfgflag = cp_xasprintf("--config=%s", path);
        cp_config c = { 0 };
        cp_error err = { 0 };

        /* file only */
        ASSERT_OK(load(&c, &err, NOENV, ARGV(cfgflag)), &err);
        ASSERT_EQ(1001, c.port);
        ASSERT_EQ(2001, c.http_port);
        ASSERT_EQ(CP_LOG_DEBUG, c.log_level);
        ASSERT_EQ(CP_CFG_FROM_FILE, cp_cfg_result_origin(&c.source, "port")->kind);
        assert_contains(cp_cfg_result_origin(&c.source, "port")->text, "ControlPlane.Port");
        ASSERT_TRUE(c.source.file != NULL && json_is_object(c.source.file));
        ASSERT_STREQ(path, c.source.file_path);
        cp_config_release(&c);

        /* env beats file */
        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_PORT=1002"), ARGV(cfgflag)), &err);
        ASSERT_EQ(1002, c.port);
        ASSERT_EQ(2001, c.http_port);
        ASSERT_STREQ("environment variable NB_MGMT_PORT", cp_cfg_result_origin(&c.source, "port")->text);
        cp_config_release(&c);

        /* flag beats env; both spellings; the last repeated flag wins */
        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_PORT=1002", "NB_MGMT_HTTP_PORT=2002"),
                       ARGV(cfgflag, "--port", "1", "--port=1003", "--log-level", "warn")), &err);
        ASSERT_EQ(1003, c.port);
        ASSERT_EQ(2002, c.http_port);
        ASSERT_EQ(CP_LOG_WARN, c.log_level);
        ASSERT_STREQ("flag --port", cp_cfg_result_origin(&c.source, "port")->text);
        cp_config_release(&c);

        /* the file path itself can come from the environment */
        _cleanup_free_ char *envcfg = cp_xasprintf("NB_MGMT_CONFIG=%s", path);
        ASSERT_OK(load(&c, &err, ENV(envcfg), NULL), &err);
        ASSERT_EQ(1001, c.port);
        cp_config_release(&c);
        (void) unlink(path);
}

TEST(netbird_env_aliases) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, ENV("NETBIRD_STORE_ENGINE_POSTGRES_DSN=host=c",
                                     "NB_SQL_MAX_OPEN_CONNS=3", "NB_CACHE_REDIS_ADDRESS=redis://r:6379"),
                       ARGV(NOFILE)), &err);
        ASSERT_STREQ("host=c", c.postgres_dsn);
        ASSERT_EQ(3, c.db_pool_size);
        ASSERT_STREQ("redis://r:6379", c.redis_url);
        ASSERT_OK(cp_config_check_store(&c, &err), &err);
        cp_config_release(&c);

        /* NB_MGMT_ first, then NB_STORE_ENGINE_POSTGRES_DSN, then NETBIRD_…;
         * an empty variable counts as unset. */
        ASSERT_OK(load(&c, &err, ENV("NETBIRD_STORE_ENGINE_POSTGRES_DSN=host=c",
                                     "NB_STORE_ENGINE_POSTGRES_DSN=host=b", "NB_MGMT_POSTGRES_DSN="),
                       ARGV(NOFILE)), &err);
        ASSERT_STREQ("host=b", c.postgres_dsn);
        ASSERT_STREQ("environment variable NB_STORE_ENGINE_POSTGRES_DSN",
                     cp_cfg_result_origin(&c.source, "postgres-dsn")->text);
        cp_config_release(&c);

        ASSERT_OK(load(&c, &err, ENV("NB_STORE_ENGINE_POSTGRES_DSN=host=b", "NB_MGMT_POSTGRES_DSN=host=a"),
                       ARGV(NOFILE)), &err);
        ASSERT_STREQ("host=a", c.postgres_dsn);
        cp_config_release(&c);

        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_POSTGRES_DSN=host=a"), ARGV(NOFILE, "--postgres-dsn", "host=f")),
                  &err);
        ASSERT_STREQ("host=f", c.postgres_dsn);
        cp_config_release(&c);
}

TEST(missing_dsn_names_env) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE)), &err);
        ASSERT_EQ(-EINVAL, cp_config_check_store(&c, &err));
        assert_contains(err.message, "NB_STORE_ENGINE_POSTGRES_DSN");
        assert_contains(err.hint, "--postgres-dsn");
        cp_config_release(&c);
}

TEST(bad_values_name_the_source) {
        expect_error(NOENV, ARGV(NOFILE, "--bogus"), "unknown flag --bogus", NULL);
        expect_error(NOENV, ARGV(NOFILE, "--bogus=1"), "unknown flag --bogus", NULL);
        expect_error(NOENV, ARGV(NOFILE, "-port", "1"), "unknown flag -port", NULL);
        expect_error(NOENV, ARGV(NOFILE, "stray"), "unexpected argument \"stray\"", NULL);
        expect_error(NOENV, ARGV(NOFILE, "--port", "abc"), "flag --port", "\"abc\"");
        expect_error(NOENV, ARGV(NOFILE, "--port=70000"), "flag --port", "0 to 65535");
        expect_error(NOENV, ARGV(NOFILE, "--port"), "flag --port needs a value", NULL);
        expect_error(NOENV, ARGV(NOFILE, "--port", "--http-port", "1"), "flag --port needs a value", NULL);
        expect_error(NOENV, ARGV(NOFILE, "--log-level", "loud"), "flag --log-level", "trace, debug");
        expect_error(NOENV, ARGV(NOFILE, "--shutdown-timeout", "soon"), "flag --shutdown-timeout", "duration");
        expect_error(NOENV, ARGV(NOFILE, "--shutdown-timeout", "2h"), "flag --shutdown-timeout", "duration");
        expect_error(NOENV, ARGV(NOFILE, "--db-pool-size", "0"), "flag --db-pool-size", "1 to 256");
        expect_error(NOENV, ARGV(NOFILE, "--disable-legacy-port=maybe"), "flag --disable-legacy-port",
                     "true or false");
        expect_error(NOENV, ARGV(NOFILE, "--listen-address="), "flag --listen-address", "must not be empty");
        expect_error(ENV("NB_MGMT_PORT=abc"), ARGV(NOFILE), "environment variable NB_MGMT_PORT", "\"abc\"");
        expect_error(ENV("NB_SQL_MAX_OPEN_CONNS=lots"), ARGV(NOFILE), "environment variable NB_SQL_MAX_OPEN_CONNS",
                     NULL);
        expect_error(ENV("NB_MGMT_LOG_LEVEL=loud"), ARGV(NOFILE), "NB_MGMT_LOG_LEVEL", NULL);
        expect_error(ENV("NETBIRD_STORE_ENGINE=sqlite"), ARGV(NOFILE), "NETBIRD_STORE_ENGINE", "postgres");
        /* bools never take the next argument as their value */
        expect_error(NOENV, ARGV(NOFILE, "--disable-legacy-port", "false"), "unexpected argument \"false\"",
                     NULL);
}

TEST(secrets_not_echoed) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_EQ(-EINVAL, load(&c, &err, NOENV, ARGV(NOFILE, "--data-store-encryption-key", "c2VjcmV0")));
        assert_contains(err.message, "flag --data-store-encryption-key");
        ASSERT_TRUE(strstr(err.message, "c2VjcmV0") == NULL);
        /* 32 bytes is accepted and decodes */
        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE, "--data-store-encryption-key",
                                            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")), &err);
        uint8_t key[32];
        ASSERT_EQ(1, cp_config_encryption_key(&c, key));
        ASSERT_EQ(0, key[0]);
        ASSERT_EQ(31, key[31]);
        cp_config_release(&c);
}

TEST(letsencrypt_and_cert_pair) {
        expect_error(NOENV, ARGV(NOFILE, "--letsencrypt-domain", "mgmt.example.com"), "flag --letsencrypt-domain",
                     "ACME/Let's Encrypt is not supported");
        expect_error(NOENV, ARGV(NOFILE, "--cert-file", "/x.crt"), "--cert-file is set", "--cert-key is not");
        expect_error(NOENV, ARGV(NOFILE, "--cert-key", "/x.key"), "--cert-key is set", "--cert-file is not");

        cp_config c = { 0 };
        cp_error err = { 0 };
        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE, "--cert-file", "/x.crt", "--cert-key=/x.key",
                                            "--letsencrypt-domain=")), &err);
        ASSERT_STREQ("/x.crt", c.cert_file);
        ASSERT_STREQ("/x.key", c.cert_key);
        ASSERT_TRUE(c.letsencrypt_domain == NULL);
        cp_config_release(&c);
}

TEST(file_errors_name_the_key) {
        static const struct {
                const char *json, *n1, *n2;
        } cases[] = {
                { "{\"ControlPlane\": {\"Port\": \"abc\"}}", "ControlPlane.Port", "expected an integer" },
                { "{\"ControlPlane\": {\"Port\": 99999}}", "ControlPlane.Port", "0 to 65535" },
                { "{\"ControlPlane\": {\"ShutdownTimeout\": 10}}", "ControlPlane.ShutdownTimeout", "a string" },
                { "{\"ControlPlane\": {\"ShutdownTimeout\": \"forever\"}}", "ControlPlane.ShutdownTimeout",
                  "duration" },
                { "{\"HttpConfig\": {\"CertFile\": 5}}", "HttpConfig.CertFile", "expected a string" },
                { "{\"HttpConfig\": \"x\"}", "HttpConfig", "expected an object" },
                { "{\"StoreConfig\": {\"Engine\": \"sqlite\"}}", "StoreConfig.Engine", "postgres" },
                { "{\"HttpConfig\": {\"LetsEncryptDomain\": \"a.example\"}}", "HttpConfig.LetsEncryptDomain",
                  "not supported" },
                { "{\"DataStoreEncryptionKey\": \"short\"}", "DataStoreEncryptionKey", "32 bytes" },
                { "{\"ControlPlane\": {\"LogLevel\": \"loud\"}}", "ControlPlane.LogLevel", "trace" },
                { "{\"Stuns\": [", "cannot parse config file", "line" },
                { "[1, 2]", "cannot parse config file", "object" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *path = tmp_json(cases[i].json);
                _cleanup_free_ char *flag = cp_xasprintf("--config=%s", path);
                expect_error(NOENV, ARGV(flag), cases[i].n1, cases[i].n2);
                expect_error(NOENV, ARGV(flag), path, NULL);
                (void) unlink(path);
        }
}

TEST(file_compat_rules) {
        /* A NetBird-shaped file: known keys we do not read are fine, empty
         * strings keep the lower layer, keys match case-insensitively,
         * unknown top-level and ControlPlane keys are warnings. */
        _cleanup_free_ char *path = tmp_json(
                "{\"Stuns\": [{\"Proto\": \"udp\", \"URI\": \"stun:x:3478\"}],"
                " \"TURNConfig\": {}, \"Relay\": {\"Addresses\": [\"rels://x:443\"]}, \"Signal\": {},"
                " \"Datadir\": \"\", \"DataStoreEncryptionKey\": \"\","
                " \"HttpConfig\": {\"LetsEncryptDomain\": \"\", \"AuthAudience\": \"x\","
                "                  \"certfile\": \"/c.pem\", \"CertKey\": \"/k.pem\"},"
                " \"IdpManagerConfig\": {}, \"DeviceAuthorizationFlow\": null, \"PKCEAuthorizationFlow\": {},"
                " \"StoreConfig\": {\"Engine\": \"postgres\"}, \"ReverseProxy\": {},"
                " \"controlplane\": {\"dnsdomain\": \"corp.internal\", \"Bogus\": 1},"
                " \"Fancy\": true}");
        _cleanup_free_ char *flag = cp_xasprintf("--config=%s", path);
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, NOENV, ARGV(flag)), &err);
        ASSERT_STREQ("/var/lib/netbird/", c.datadir);
        ASSERT_STREQ("/c.pem", c.cert_file);
        ASSERT_STREQ("/k.pem", c.cert_key);
        ASSERT_STREQ("corp.internal", c.dns_domain);
        ASSERT_TRUE(c.data_store_encryption_key == NULL);
        ASSERT_EQ(2, c.source.n_warnings);
        assert_contains(c.source.warnings[0], "\"Fancy\"");
        assert_contains(c.source.warnings[1], "\"ControlPlane.Bogus\"");
        /* the raw file stays available for later readers */
        json_t *relay = json_object_get(c.source.file, "Relay");
        ASSERT_TRUE(json_is_object(relay));
        ASSERT_EQ(1, json_array_size(json_object_get(relay, "Addresses")));
        cp_config_release(&c);
        (void) unlink(path);
}

TEST(missing_file_default_vs_explicit) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        expect_error(NOENV, ARGV("--config", "/nonexistent/management.json"), "/nonexistent/management.json",
                     "flag --config");
        expect_error(ENV("NB_MGMT_CONFIG=/nonexistent/m.json"), NULL, "/nonexistent/m.json",
                     "environment variable NB_MGMT_CONFIG");
        if (access(CP_CONFIG_DEFAULT_FILE, F_OK) == 0)
                CPTEST_SKIP(CP_CONFIG_DEFAULT_FILE " exists on this machine");
        ASSERT_OK(load(&c, &err, NOENV, NULL), &err);
        ASSERT_TRUE(c.source.file == NULL);
        ASSERT_STREQ(CP_CONFIG_DEFAULT_FILE, c.config_file);
        cp_config_release(&c);
}

TEST(ignored_netbird_flags_warn) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_METRICS_PORT=9090"),
                       ARGV(NOFILE, "--disable-anonymous-metrics", "--disable-geolite-update=false",
                            "--user-delete-from-idp", "--disable-legacy-port", "--metrics-port=9091")), &err);
        ASSERT_EQ(6, c.source.n_warnings);
        assert_contains(c.source.warnings[0], "environment variable NB_MGMT_METRICS_PORT");
        assert_contains(c.source.warnings[1], "flag --disable-anonymous-metrics");
        assert_contains(c.source.warnings[1], "ignored");
        cp_config_release(&c);
        /* ignored flags still check their values */
        expect_error(NOENV, ARGV(NOFILE, "--metrics-port", "x"), "flag --metrics-port", NULL);
}

TEST(identity_flags) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE)), &err);
        ASSERT_STREQ("netbird.selfhosted", c.single_account_mode_domain);
        ASSERT_FALSE(c.disable_single_account_mode);
        ASSERT_FALSE(c.idp_sign_key_refresh_enabled);
        ASSERT_EQ(0, c.source.n_warnings);
        cp_config_release(&c);

        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_IDP_SIGN_KEY_REFRESH_ENABLED=true"),
                       ARGV(NOFILE, "--single-account-mode-domain", "x.io", "--disable-single-account-mode")),
                  &err);
        ASSERT_STREQ("x.io", c.single_account_mode_domain);
        ASSERT_TRUE(c.disable_single_account_mode);
        ASSERT_TRUE(c.idp_sign_key_refresh_enabled);
        ASSERT_EQ(0, c.source.n_warnings);
        cp_config_release(&c);
}

typedef struct extra_cfg {
        char *name;
        int64_t ttl_ms;
        bool force;
} extra_cfg;

static const cp_cfg_option extra_options[] = {
        { "account-name", CP_CFG_STRING, offsetof(extra_cfg, name), "admin", { NULL }, NULL, 0, 0, 0, NULL,
          "NAME", "owner" },
        { "setup-key-ttl", CP_CFG_DURATION, offsetof(extra_cfg, ttl_ms), "0", { NULL }, NULL, 0, 0,
          INT64_MAX, NULL, "DURATION", "ttl" },
        { "force", CP_CFG_BOOL, offsetof(extra_cfg, force), "false", { NULL }, NULL, 0, 0, 0, NULL, NULL, "f" },
};

TEST(extra_tables) {
        extra_cfg x = { 0 };
        cp_cfg_table t = { extra_options, ELEMENTSOF(extra_options), &x };
        cp_config c = { 0 };
        cp_error err = { 0 };
        char *argv[] = { NOFILE, "--account-name", "ops", "--setup-key-ttl=1h30m", "--force", "--port=1" };
        char *env[] = { "NB_MGMT_FORCE=false", NULL };

        ASSERT_OK(cp_config_load(&c, ELEMENTSOF(argv), argv, env, &t, 1, &err), &err);
        ASSERT_STREQ("ops", x.name);
        ASSERT_EQ(5400000, x.ttl_ms);
        ASSERT_TRUE(x.force);
        ASSERT_EQ(1, c.port);
        ASSERT_EQ(CP_CFG_FROM_FLAG, cp_cfg_result_origin(&c.source, "force")->kind);
        cp_config_release(&c);
        cp_cfg_release_fields(&t, 1);
        ASSERT_TRUE(x.name == NULL);

        /* failure leaves the extra struct empty */
        char *bad[] = { NOFILE, "--account-name", "ops", "--setup-key-ttl", "x" };
        ASSERT_EQ(-EINVAL, cp_config_load(&c, ELEMENTSOF(bad), bad, env, &t, 1, &err));
        assert_contains(err.message, "flag --setup-key-ttl");
        ASSERT_TRUE(x.name == NULL);
        /* without the extra table the flag is unknown */
        expect_error(NOENV, ARGV(NOFILE, "--account-name", "ops"), "unknown flag --account-name", NULL);
}

TEST(help_flag) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_PORT=abc"), ARGV("--help", "--port", "abc")), &err);
        ASSERT_TRUE(c.source.help);
        cp_config_release(&c);
        ASSERT_OK(load(&c, &err, NOENV, ARGV("-h")), &err);
        ASSERT_TRUE(c.source.help);
        cp_config_release(&c);
}

TEST(drain_window) {
        cp_config c = { 0 };
        cp_error err = { 0 };

        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE)), &err);
        ASSERT_EQ(3000, c.drain_window_ms);
        cp_config_release(&c);
        /* The default yields to a short grace period: half of it. */
        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE, "--shutdown-timeout", "2s")), &err);
        ASSERT_EQ(1000, c.drain_window_ms);
        cp_config_release(&c);
        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE, "--shutdown-timeout", "0s")), &err);
        ASSERT_EQ(0, c.drain_window_ms);
        cp_config_release(&c);
        ASSERT_OK(load(&c, &err, ENV("NB_MGMT_DRAIN_WINDOW=0s"), ARGV(NOFILE)), &err);
        ASSERT_EQ(0, c.drain_window_ms);
        cp_config_release(&c);
        ASSERT_OK(load(&c, &err, NOENV, ARGV(NOFILE, "--drain-window", "9s")), &err);
        ASSERT_EQ(9000, c.drain_window_ms);
        cp_config_release(&c);
        /* Set on purpose, it must fit in the grace period. */
        expect_error(NOENV, ARGV(NOFILE, "--drain-window", "10s"), "drain-window (10000ms, from flag --drain-window)",
                     "less than shutdown-timeout (10000ms)");
        expect_error(ENV("NB_MGMT_DRAIN_WINDOW=5s"), ARGV(NOFILE, "--shutdown-timeout", "2s"),
                     "environment variable NB_MGMT_DRAIN_WINDOW", "must be less than shutdown-timeout");
        expect_error(NOENV, ARGV(NOFILE, "--drain-window", "soon"), "flag --drain-window", "duration");
}

TEST(usage_lists_every_option) {
        size_t n;
        const cp_cfg_option *o = cp_config_options(&n);
        cp_cfg_table t = { o, n, NULL };
        cp_strbuf sb;

        cp_strbuf_init(&sb);
        cp_cfg_usage(&sb, &cp_config_spec, &t, 1);
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *flag = cp_xasprintf("--%s", o[i].name);
                _cleanup_free_ char *env = cp_cfg_env_name(CP_CONFIG_ENV_PREFIX, &o[i]);
                assert_contains(sb.buf, flag);
                assert_contains(sb.buf, env);
        }
        assert_contains(sb.buf, "NB_STORE_ENGINE_POSTGRES_DSN");
        cp_strbuf_release(&sb);
}

TEST(env_name_derivation) {
        size_t n;
        const cp_cfg_option *o = cp_config_options(&n);

        for (size_t i = 0; i < n; i++)
                if (strcmp(o[i].name, "data-store-encryption-key") == 0) {
                        _cleanup_free_ char *e = cp_cfg_env_name("NB_MGMT_", &o[i]);
                        ASSERT_STREQ("NB_MGMT_DATA_STORE_ENCRYPTION_KEY", e);
                        return;
                }
        cptest_fail(__FILE__, __LINE__, "option not found");
}

TEST(base64_decode) {
        uint8_t out[8];

        ASSERT_EQ(3, cp_cfg_b64_decode("YWJj", out, sizeof out));
        ASSERT_EQ(0, memcmp(out, "abc", 3));
        ASSERT_EQ(2, cp_cfg_b64_decode("YWI=", out, sizeof out));
        ASSERT_EQ(1, cp_cfg_b64_decode("YQ==", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("YQ=", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("Y=Q=", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("YQ==YQ==", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("YW!j", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("", out, sizeof out));
        ASSERT_EQ(-EINVAL, cp_cfg_b64_decode("YWJjZGVmZ2hp", out, sizeof out));       /* 9 > 8 */
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
