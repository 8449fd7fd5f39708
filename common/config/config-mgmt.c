/*
 * The management server's settings table. docs/config.md lists the same
 * rows for people; keep the two in step.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/prefix.h"

#include <arpa/inet.h>

/* ---- checks (run on every value, whatever its source) ------------------- */

static int check_nonempty(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;

        if (!s || !*s)
                return cp_error_set(reterr, -EINVAL, "must not be empty");
        return 0;
}

static int check_letsencrypt(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;

        if (!s || !*s)
                return 0;
        return cp_error_set(reterr, -EINVAL, "ACME/Let's Encrypt is not supported; obtain a certificate "
                            "(e.g. cert-manager) and pass --cert-file and --cert-key");
}

/* A comma-separated list of IPv4/IPv6 addresses or prefixes (cp/prefix.h,
 * the same parser services/management/runtime/mgmt-realip.c uses). */
static int check_prefixes(const void *field, cp_error *reterr) {
        cp_prefix_list l;
        int r = cp_prefix_list_parse(*(char *const *) field, &l, reterr);

        cp_prefix_list_release(&l);
        return r;
}

/* "IPv4[:port]": the MSP DNS server (common/api/api-msp.c parses it the
 * same way when the API starts). */
static int check_dns_server(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;
        char host[INET_ADDRSTRLEN];
        struct in_addr a;

        if (!s || !*s)
                return 0;
        const char *colon = strchr(s, ':');
        size_t hl = colon ? (size_t) (colon - s) : strlen(s);
        if (hl == 0 || hl >= sizeof host)
                return cp_error_set(reterr, -EINVAL, "expected IPv4[:port], e.g. 127.0.0.1:5353");
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (inet_pton(AF_INET, host, &a) != 1)
                return cp_error_set(reterr, -EINVAL, "expected IPv4[:port], e.g. 127.0.0.1:5353");
        if (colon) {
                char *end;
                errno = 0;
                long port = strtol(colon + 1, &end, 10);
                if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
                        return cp_error_set(reterr, -EINVAL, "port must be 1-65535");
        }
        return 0;
}

static int check_store_engine(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;

        if (!s || !*s || strcasecmp(s, "postgres") == 0)
                return 0;
        cp_error_set(reterr, -EINVAL, "only the postgres store engine is supported (sqlite, mysql and "
                     "jsonfile are not)");
        cp_error_hint(reterr, "set StoreConfig.Engine to \"postgres\" and the DSN in "
                      "NB_STORE_ENGINE_POSTGRES_DSN");
        return -EINVAL;
}

static int check_dns_domain(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;

        if (!s || !*s || strlen(s) > 192)
                return cp_error_set(reterr, -EINVAL, "expected a domain name of 1 to 192 characters");
        return 0;
}

static int check_bus_prefix(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;

        if (!s || !*s || strlen(s) > 64)
                return cp_error_set(reterr, -EINVAL, "expected 1 to 64 characters");
        for (const char *p = s; *p; p++)
                if (*p <= ' ' || *p == 0x7f)
                        return cp_error_set(reterr, -EINVAL, "must not contain spaces or control characters");
        return 0;
}

static int check_encryption_key(const void *field, cp_error *reterr) {
        const char *s = *(char *const *) field;
        uint8_t key[33];

        if (!s || !*s)
                return 0;
        int n = cp_cfg_b64_decode(s, key, sizeof key);
        cp_explicit_bzero(key, sizeof key);
        if (n != 32)
                return cp_error_set(reterr, -EINVAL, "expected standard base64 of 32 bytes "
                                    "(e.g. the output of: openssl rand -base64 32)");
        return 0;
}

/* ---- the table ----------------------------------------------------------- */

#define F(field) offsetof(cp_config, field)
#define PORT_RANGE 0, 65535

static const cp_cfg_option options[] = {
        { "port", CP_CFG_INT, F(port), "33073", { NULL }, "ControlPlane.Port", 0, PORT_RANGE,
          NULL, "PORT", "gRPC port for agents (0 = any free port)" },
        { "http-port", CP_CFG_INT, F(http_port), "33080", { NULL }, "ControlPlane.HttpPort", 0, PORT_RANGE,
          NULL, "PORT", "HTTP port for /healthz, /readyz, /metrics and the REST API (0 = any free port)" },
        { "listen-address", CP_CFG_STRING, F(listen_address), "0.0.0.0", { NULL },
          "ControlPlane.ListenAddress", 0, 0, 0, check_nonempty, "ADDR",
          "address both listeners bind to" },
        { "config", CP_CFG_STRING, F(config_file), CP_CONFIG_DEFAULT_FILE, { NULL }, NULL, 0, 0, 0,
          NULL, "FILE", "management.json; a missing file is fine only at the default path" },
        { "datadir", CP_CFG_STRING, F(datadir), "/var/lib/netbird/", { NULL }, "Datadir", 0, 0, 0,
          check_nonempty, "DIR", "data directory" },
        { "log-file", CP_CFG_STRING, F(log_file), "console", { NULL }, "ControlPlane.LogFile", 0, 0, 0,
          check_nonempty, "FILE", "log target: console (stdout), stderr or a file path" },
        { "log-level", CP_CFG_LOG_LEVEL, F(log_level), "info", { NULL }, "ControlPlane.LogLevel", 0, 0, 0,
          NULL, "LEVEL", "trace, debug, info, warn, error, fatal or panic" },
        { "cert-file", CP_CFG_STRING, F(cert_file), NULL, { NULL }, "HttpConfig.CertFile", 0, 0, 0,
          NULL, "FILE", "TLS certificate chain (PEM) for gRPC; needs --cert-key" },
        { "cert-key", CP_CFG_STRING, F(cert_key), NULL, { NULL }, "HttpConfig.CertKey", 0, 0, 0,
          NULL, "FILE", "TLS private key (PEM); needs --cert-file" },
        { "letsencrypt-domain", CP_CFG_STRING, F(letsencrypt_domain), NULL, { NULL },
          "HttpConfig.LetsEncryptDomain", 0, 0, 0, check_letsencrypt, "DOMAIN",
          "not supported: use --cert-file and --cert-key" },
        { "postgres-dsn", CP_CFG_STRING, F(postgres_dsn), NULL,
          { "NB_STORE_ENGINE_POSTGRES_DSN", "NETBIRD_STORE_ENGINE_POSTGRES_DSN" },
          "ControlPlane.PostgresDSN", CP_CFG_SECRET, 0, 0, NULL, "DSN",
          "PostgreSQL conninfo or URI (required)" },
        { "store-engine", CP_CFG_STRING, F(store_engine), "postgres", { "NETBIRD_STORE_ENGINE" },
          "StoreConfig.Engine", 0, 0, 0, check_store_engine, "ENGINE", "only postgres is supported" },
        { "redis-url", CP_CFG_STRING, F(redis_url), NULL, { "NB_CACHE_REDIS_ADDRESS" },
          "ControlPlane.RedisURL", CP_CFG_SECRET, 0, 0, NULL, "URL",
          "Redis for the bus between replicas (redis://host:port); without it, changes reach other replicas"
          " only by the serial check" },
        { "bus-channel-prefix", CP_CFG_STRING, F(bus_channel_prefix), "netbird-cp", { NULL },
          "ControlPlane.BusChannelPrefix", 0, 0, 0, check_bus_prefix, "PREFIX",
          "Redis channel prefix; deployments sharing a Redis need different ones" },
        { "trusted-proxies", CP_CFG_STRING, F(trusted_proxies), NULL, { NULL },
          "ControlPlane.TrustedProxies", 0, 0, 0, check_prefixes, "PREFIXES",
          "reverse proxies whose X-Forwarded-For/X-Real-IP give the agent's address (comma-separated)" },
        { "replica-name", CP_CFG_STRING, F(replica_name), NULL, { "POD_NAME" },
          "ControlPlane.ReplicaName", 0, 0, 0, NULL, "NAME",
          "name shown for this process in the replicas table (default: the host name)" },
        { "heartbeat-interval", CP_CFG_DURATION, F(heartbeat_interval_ms), "2s", { NULL },
          "ControlPlane.HeartbeatInterval", 0, 50, 600 * 1000, NULL, "DURATION",
          "how often this replica's heartbeat is written to the database" },
        { "replica-expiry", CP_CFG_DURATION, F(replica_expiry_ms), "10s", { NULL },
          "ControlPlane.ReplicaExpiry", 0, 100, 3600 * 1000, NULL, "DURATION",
          "a replica silent this long is dead: its sessions are marked disconnected"
          " (at least twice --heartbeat-interval)" },
        { "dns-domain", CP_CFG_STRING, F(dns_domain), "netbird.selfhosted", { NULL },
          "ControlPlane.DNSDomain", 0, 0, 0, check_dns_domain, "DOMAIN", "peer FQDN suffix" },
        { "db-pool-size", CP_CFG_INT, F(db_pool_size), "8", { "NB_SQL_MAX_OPEN_CONNS" },
          "ControlPlane.DBPoolSize", 0, 1, 256, NULL, "N", "PostgreSQL connections per process" },
        { "db-prepared-statements", CP_CFG_BOOL, F(db_prepared_statements), "true", { NULL },
          "ControlPlane.DBPreparedStatements", 0, 0, 0, NULL, NULL,
          "named prepared statements; false behind a pgbouncer in transaction pooling mode" },
        { "shutdown-timeout", CP_CFG_DURATION, F(shutdown_timeout_ms), "10s", { NULL },
          "ControlPlane.ShutdownTimeout", 0, 0, 3600 * 1000, NULL, "DURATION",
          "how long in-flight calls may finish after SIGTERM" },
        { "drain-window", CP_CFG_DURATION, F(drain_window_ms), "3s", { NULL },
          "ControlPlane.DrainWindow", 0, 0, 3600 * 1000, NULL, "DURATION",
          "after SIGTERM, Sync streams are ended spread over this long (0s = all at once); less than"
          " --shutdown-timeout" },
        { "serial-check-interval", CP_CFG_DURATION, F(serial_check_interval_ms), "5s", { NULL },
          "ControlPlane.SerialCheckInterval", 0, 0, 3600 * 1000, NULL, "DURATION",
          "how often serials of accounts with open Sync streams are re-read (0s = never)" },
        { "login-expiry-check-interval", CP_CFG_DURATION, F(login_expiry_check_interval_ms), "30s", { NULL },
          "ControlPlane.LoginExpiryCheckInterval", 0, 0, 3600 * 1000, NULL, "DURATION",
          "how often expired SSO peer logins are looked for in the database (0s = never)" },
        { "ephemeral-peer-lifetime", CP_CFG_DURATION, F(ephemeral_peer_lifetime_ms), "10m", { NULL },
          "ControlPlane.EphemeralPeerLifetime", 0, 100, 7 * 24 * 3600 * 1000LL, NULL, "DURATION",
          "an ephemeral peer disconnected this long is deleted (NetBird's 10m); looked for on every"
          " --login-expiry-check-interval" },
        { "data-store-encryption-key", CP_CFG_STRING, F(data_store_encryption_key), NULL, { NULL },
          "DataStoreEncryptionKey", CP_CFG_SECRET, 0, 0, check_encryption_key, "KEY",
          "base64 of 32 bytes (openssl rand -base64 32); required by management, the same on every replica" },
        { "data-store-encryption-key-previous", CP_CFG_STRING, F(data_store_encryption_key_previous), NULL,
          { NULL }, "DataStoreEncryptionKeyPrevious", CP_CFG_SECRET, 0, 0, check_encryption_key, "KEY",
          "during a key rotation: the DataStoreEncryptionKey being replaced (read, and written while the"
          " database still marks it current); see docs/ops.md" },
        { "single-account-mode-domain", CP_CFG_STRING, F(single_account_mode_domain), "netbird.selfhosted",
          { NULL }, NULL, 0, 0, 0, check_dns_domain, "DOMAIN",
          "single account mode: every new IdP user joins the one account of this domain" },
        { "disable-single-account-mode", CP_CFG_BOOL, F(disable_single_account_mode), "false", { NULL },
          NULL, 0, 0, 0, NULL, NULL, "multi-account mode: a new IdP user gets an account of their own" },
        { "msp-dns-server", CP_CFG_STRING, F(msp_dns_server), NULL, { NULL },
          "ControlPlane.MSPDNSServer", 0, 0, 0, check_dns_server, "IPV4[:PORT]",
          "DNS server asked for MSP tenant domain TXT records (default: the system resolver)" },
        { "idp-sign-key-refresh-enabled", CP_CFG_BOOL, F(idp_sign_key_refresh_enabled), "false", { NULL },
          "HttpConfig.IdpSignKeyRefreshEnabled", 0, 0, 0, NULL, NULL,
          "refetch the IdP's JWKS when a token names an unknown kid (at most every 30 s)" },

        /* Limits (docs/ops.md "Limits"): per replica, per minute; 0 turns one off. */
        { "login-rate", CP_CFG_INT, F(login_rate), "6000", { NULL }, "ControlPlane.LoginRate", 0, 0,
          100000000, NULL, "N", "Login calls per minute per agent address (the real one behind"
          " --trusted-proxies); over it RESOURCE_EXHAUSTED (0 = no limit)" },
        { "login-burst", CP_CFG_INT, F(login_burst), "5000", { NULL }, "ControlPlane.LoginBurst", 0, 0,
          100000000, NULL, "N", "Login calls one agent address may make at once" },
        { "setup-key-rate", CP_CFG_INT, F(setup_key_rate), "3000", { NULL }, "ControlPlane.SetupKeyRate", 0, 0,
          100000000, NULL, "N", "registrations per minute per setup key (0 = no limit)" },
        { "setup-key-burst", CP_CFG_INT, F(setup_key_burst), "5000", { NULL }, "ControlPlane.SetupKeyBurst", 0,
          0, 100000000, NULL, "N", "registrations one setup key may make at once" },
        { "rest-rate", CP_CFG_INT, F(rest_rate), "6000", { NULL }, "ControlPlane.RestRate", 0, 0, 100000000,
          NULL, "N", "REST requests per minute per token (PAT) or IdP user; over it 429 (0 = no limit)" },
        { "rest-burst", CP_CFG_INT, F(rest_burst), "1000", { NULL }, "ControlPlane.RestBurst", 0, 0, 100000000,
          NULL, "N", "REST requests one token may make at once" },
        { "rest-auth-failure-rate", CP_CFG_INT, F(rest_auth_failure_rate), "600", { NULL },
          "ControlPlane.RestAuthFailureRate", 0, 0, 100000000, NULL, "N",
          "failed REST authentications per minute per client address; past it every request of that address"
          " is refused 429 (0 = no limit)" },
        { "rest-auth-failure-burst", CP_CFG_INT, F(rest_auth_failure_burst), "100", { NULL },
          "ControlPlane.RestAuthFailureBurst", 0, 0, 100000000, NULL, "N",
          "failed REST authentications one client address may make at once" },
        { "rate-limit-keys", CP_CFG_INT, F(rate_limit_keys), "65536", { NULL }, "ControlPlane.RateLimitKeys", 0,
          8, 16777216, NULL, "N", "buckets each rate limit keeps (addresses, keys, tokens); the oldest are"
          " forgotten past it" },
        { "grpc-max-streams-per-connection", CP_CFG_INT, F(grpc_max_streams_per_connection), "10000", { NULL },
          "ControlPlane.GrpcMaxStreamsPerConnection", 0, 0, 2147483647, NULL, "N",
          "concurrent gRPC calls per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS; 0 = gRPC's default)" },
        { "grpc-max-connections", CP_CFG_INT, F(grpc_max_connections), "50000", { NULL },
          "ControlPlane.GrpcMaxConnections", 0, 0, 100000000, NULL, "N",
          "gRPC connections with calls in progress; a call on a further connection is refused"
          " RESOURCE_EXHAUSTED (0 = no limit)" },
        { "grpc-threads", CP_CFG_INT, F(grpc_threads), "0", { NULL }, "ControlPlane.GrpcThreads", 0, 0, 64, NULL,
          "N", "gRPC completion queues, each with its own thread and a share of the connections (0 = 1, the"
          " default; see docs/benchmarks.md)" },
        { "http-max-connections", CP_CFG_INT, F(http_max_connections), "4096", { NULL },
          "ControlPlane.HttpMaxConnections", 0, 0, 100000000, NULL, "N",
          "HTTP connections; a request on a further one is refused 503 and its connection closed (0 = no limit)" },

        /* NetBird flags we accept so existing command lines keep working. */
        { "disable-anonymous-metrics", CP_CFG_BOOL, 0, NULL, { NULL }, NULL, CP_CFG_IGNORED, 0, 0, NULL,
          NULL, "ignored (NetBird compatibility)" },
        { "user-delete-from-idp", CP_CFG_BOOL, 0, NULL, { NULL }, NULL, CP_CFG_IGNORED, 0, 0, NULL,
          NULL, "ignored (NetBird compatibility)" },
        { "disable-geolite-update", CP_CFG_BOOL, 0, NULL, { NULL }, NULL, CP_CFG_IGNORED, 0, 0, NULL,
          NULL, "ignored (NetBird compatibility)" },
        { "disable-legacy-port", CP_CFG_BOOL, 0, NULL, { NULL }, NULL, CP_CFG_IGNORED, 0, 0, NULL,
          NULL, "ignored (NetBird compatibility)" },
        { "metrics-port", CP_CFG_INT, 0, NULL, { NULL }, NULL, CP_CFG_IGNORED, PORT_RANGE, NULL, "PORT",
          "ignored (NetBird compatibility)" },
};

#undef F
#undef PORT_RANGE

/* Top-level keys of NetBird's management.json that no row of the table
 * reads. Some are read elsewhere from cp_config.source.file: Stuns,
 * TURNConfig, Relay, Signal, DeviceAuthorizationFlow, PKCEAuthorizationFlow
 * and parts of HttpConfig by services/management/agent/mgmt-netconf.c. */
static const char *const known_keys[] = {
        "Stuns", "TURNConfig", "Relay", "Signal", "Datadir", "DataStoreEncryptionKey", "HttpConfig",
        "IdpManagerConfig", "DeviceAuthorizationFlow", "PKCEAuthorizationFlow", "StoreConfig",
        "ReverseProxy", "DisableDefaultPolicy", "EmbeddedIdP", "AgentNetwork",
        "HighestSupportedSyncMessageVersion", "PerAccountHighestSupportedSyncMessageVersion",
        NULL,
};

/* Our own settings live under one object NetBird does not use, so the same
 * file stays readable by NetBird (Go ignores unknown keys). */
static const char *const owned_objects[] = { "ControlPlane", NULL };

const cp_cfg_spec cp_config_spec = {
        .env_prefix = CP_CONFIG_ENV_PREFIX,
        .file_option = "config",
        .file_known_keys = known_keys,
        .file_owned_objects = owned_objects,
};

const cp_cfg_option *cp_config_options(size_t *n) {
        *n = ELEMENTSOF(options);
        return options;
}

/* ---- load ----------------------------------------------------------------- */

/* "" and NULL mean the same for every string setting afterwards. */
static void empty_to_null(const cp_cfg_table *tables, size_t n_tables) {
        for (size_t t = 0; t < n_tables; t++)
                for (size_t k = 0; k < tables[t].n_options; k++) {
                        const cp_cfg_option *o = &tables[t].options[k];
                        if (o->type != CP_CFG_STRING || (o->flags & CP_CFG_IGNORED))
                                continue;
                        char **f = (char **) ((char *) tables[t].base + o->offset);
                        if (*f && !**f) {
                                free(*f);
                                *f = NULL;
                        }
                }
}

static int check_cross(cp_config *c, cp_error *reterr) {
        if (c->drain_window_ms > 0 && c->drain_window_ms >= c->shutdown_timeout_ms) {
                const cp_cfg_origin *o = cp_cfg_result_origin(&c->source, "drain-window");

                /* The default yields to a short grace period set on its
                 * own: half of it, so the last streams still end in time. */
                if (!o || o->kind == CP_CFG_FROM_DEFAULT)
                        c->drain_window_ms = c->shutdown_timeout_ms / 2;
                else {
                        cp_error_set(reterr, -EINVAL, "drain-window (%" PRId64 "ms, from %s) must be less than "
                                     "shutdown-timeout (%" PRId64 "ms)", c->drain_window_ms, o->text,
                                     c->shutdown_timeout_ms);
                        cp_error_hint(reterr, "the streams still open when the grace period ends are cancelled; "
                                      "use e.g. --drain-window 3s with --shutdown-timeout 10s, or 0s to end "
                                      "them all at once");
                        return -EINVAL;
                }
        }
        if (c->replica_expiry_ms < 2 * c->heartbeat_interval_ms)
                return cp_error_set(reterr, -EINVAL,
                                    "replica-expiry (%" PRId64 "ms) must be at least twice heartbeat-interval"
                                    " (%" PRId64 "ms)", c->replica_expiry_ms, c->heartbeat_interval_ms);
        if (!!c->cert_file != !!c->cert_key) {
                const char *set = c->cert_file ? "cert-file" : "cert-key";
                const char *unset = c->cert_file ? "cert-key" : "cert-file";
                const cp_cfg_origin *o = cp_cfg_result_origin(&c->source, set);
                cp_error_set(reterr, -EINVAL, "--%s is set (from %s) but --%s is not: TLS needs both the "
                             "certificate and its key", set, o ? o->text : "?", unset);
                cp_error_hint(reterr, "pass both --cert-file and --cert-key (HttpConfig.CertFile and "
                              "HttpConfig.CertKey), or neither for plaintext h2c");
                return -EINVAL;
        }
        return 0;
}

int cp_config_load(cp_config *ret, int argc, char *const *argv, char *const *envp,
                   const cp_cfg_table *extra, size_t n_extra, cp_error *reterr) {
        cp_config c = { 0 };
        size_t n_tables = 1 + n_extra;
        cp_cfg_table *tables = cp_xcalloc(n_tables, sizeof *tables);
        int r;

        tables[0] = (cp_cfg_table) { options, ELEMENTSOF(options), &c };
        for (size_t i = 0; i < n_extra; i++)
                tables[1 + i] = extra[i];

        r = cp_cfg_load(&cp_config_spec, tables, n_tables, argc, argv, envp, &c.source, reterr);
        if (r >= 0 && !c.source.help) {
                empty_to_null(tables, n_tables);
                r = check_cross(&c, reterr);
        }
        if (r < 0) {
                cp_cfg_release_fields(tables, n_tables);
                cp_cfg_result_release(&c.source);
                free(tables);
                return r;
        }
        free(tables);
        *ret = c;
        return 0;
}

void cp_config_release(cp_config *c) {
        if (!c)
                return;
        cp_cfg_table t = { options, ELEMENTSOF(options), c };
        if (c->data_store_encryption_key)
                cp_explicit_bzero(c->data_store_encryption_key, strlen(c->data_store_encryption_key));
        if (c->data_store_encryption_key_previous)
                cp_explicit_bzero(c->data_store_encryption_key_previous,
                                  strlen(c->data_store_encryption_key_previous));
        if (c->postgres_dsn)
                cp_explicit_bzero(c->postgres_dsn, strlen(c->postgres_dsn));
        cp_cfg_release_fields(&t, 1);
        cp_cfg_result_release(&c->source);
        memset(c, 0, sizeof *c);
}

int cp_config_check_store(const cp_config *c, cp_error *reterr) {
        if (c->postgres_dsn)
                return 0;
        cp_error_set(reterr, -EINVAL, "no PostgreSQL DSN configured: set NB_STORE_ENGINE_POSTGRES_DSN");
        cp_error_hint(reterr, "or pass --postgres-dsn, or set NB_MGMT_POSTGRES_DSN, "
                      "NETBIRD_STORE_ENGINE_POSTGRES_DSN or ControlPlane.PostgresDSN in the config file; "
                      "e.g. \"host=db user=netbird dbname=netbird\"");
        return -EINVAL;
}

int cp_config_encryption_key_previous(const cp_config *c, uint8_t out[32]) {
        uint8_t key[33];

        if (!c->data_store_encryption_key_previous || !*c->data_store_encryption_key_previous)
                return 0;
        int n = cp_cfg_b64_decode(c->data_store_encryption_key_previous, key, sizeof key);
        if (n == 32)
                memcpy(out, key, 32);
        cp_explicit_bzero(key, sizeof key);
        return n == 32 ? 1 : -EINVAL;
}

int cp_config_encryption_key(const cp_config *c, uint8_t out[32]) {
        uint8_t key[33];

        if (!c->data_store_encryption_key)
                return 0;
        int n = cp_cfg_b64_decode(c->data_store_encryption_key, key, sizeof key);
        if (n == 32)
                memcpy(out, key, 32);
        cp_explicit_bzero(key, sizeof key);
        return n == 32 ? 1 : -EINVAL;
}
