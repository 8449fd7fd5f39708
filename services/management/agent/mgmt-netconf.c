#include "cp/base.h"
#include "cp/config.h"
#include "cp/crypto.h"
#include "cp/jwt.h"
#include "cp/util.h"
#include "mgmt-netconf.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* NetBird's default for TURN and relay credentials without a usable TTL. */
#define DEFAULT_TTL_S (12 * 3600)
/* Upper bounds for lists read from the file: generous, but bounded. */
#define MAX_HOSTS 256
#define MAX_STRINGS 256

/* ---- reading the file ------------------------------------------------------ */

typedef struct reader {
        const char *path;       /* where the value being read came from */
        cp_error *err;
} reader;

/* The member called key, matched case-insensitively like Go's
 * encoding/json; NULL when absent or JSON null. */
static json_t *jget(const json_t *obj, const char *key) {
        json_t *v = cp_cfg_json_get(obj, key, strlen(key));

        return v && !json_is_null(v) ? v : NULL;
}

static int bad(reader *r, const char *where, const char *fmt, ...) _printf_(3, 4);
static int bad(reader *r, const char *where, const char *fmt, ...) {
        char what[300];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        return cp_error_set(r->err, -EINVAL, "invalid value for %s in %s: %s", where, r->path, what);
}

static int want(reader *r, const char *where, const json_t *v, bool ok, const char *expected) {
        if (ok)
                return 0;
        return bad(r, where, "expected %s, got %s", expected, cp_cfg_json_kind(v));
}

/* A string member; absent or null gives "". *ret is heap. */
static int read_str(reader *r, const json_t *obj, const char *key, const char *where, char **ret) {
        json_t *v = jget(obj, key);
        char w[200];

        (void) snprintf(w, sizeof w, "%s.%s", where, key);
        if (v && want(r, w, v, json_is_string(v), "a string") < 0)
                return -EINVAL;
        *ret = cp_xstrdup(v ? json_string_value(v) : "");
        return 0;
}

static int read_bool(reader *r, const json_t *obj, const char *key, const char *where, bool *ret) {
        json_t *v = jget(obj, key);
        char w[200];

        (void) snprintf(w, sizeof w, "%s.%s", where, key);
        if (v && want(r, w, v, json_is_boolean(v), "true or false") < 0)
                return -EINVAL;
        *ret = v && json_is_true(v);
        return 0;
}

/* A Go duration: a string such as "12h" or "1h30m0s", or a number of
 * nanoseconds. Absent, zero or negative gives the default. */
static int read_ttl(reader *r, const json_t *obj, const char *key, const char *where, int64_t *ret_s) {
        json_t *v = jget(obj, key);
        char w[200];
        int64_t ms = 0;

        (void) snprintf(w, sizeof w, "%s.%s", where, key);
        if (!v)
                ms = 0;
        else if (json_is_string(v)) {
                const char *s = json_string_value(v);
                if (*s && cp_parse_duration_ms(s, &ms) < 0)
                        return bad(r, w, "\"%.40s\" is not a duration (e.g. \"12h\", \"30m\")", s);
        } else if (json_is_integer(v))
                ms = (int64_t) (json_integer_value(v) / 1000000);
        else if (json_is_real(v)) {
                double d = json_real_value(v) / 1e6;
                /* Bounded before the conversion, which is undefined out of
                 * int64_t's range (tests/fuzz: fuzz_config's regress-ttl-real). */
                if (!(d > -1e15 && d < 1e15))
                        return bad(r, w, "%g is out of range", json_real_value(v));
                ms = (int64_t) d;
        } else
                return want(r, w, v, false, "a duration string");
        *ret_s = ms >= 1000 ? ms / 1000 : DEFAULT_TTL_S;
        return 0;
}

static int read_strings(reader *r, const json_t *obj, const char *key, const char *where, char ***ret,
                        size_t *ret_n) {
        json_t *v = jget(obj, key);
        char w[200];

        (void) snprintf(w, sizeof w, "%s.%s", where, key);
        *ret = NULL;
        *ret_n = 0;
        if (!v)
                return 0;
        if (want(r, w, v, json_is_array(v), "an array of strings") < 0)
                return -EINVAL;
        if (json_array_size(v) > MAX_STRINGS)
                return bad(r, w, "more than %d entries", MAX_STRINGS);
        *ret = cp_xcalloc(json_array_size(v) + 1, sizeof **ret);
        for (size_t i = 0; i < json_array_size(v); i++) {
                json_t *e = json_array_get(v, i);
                if (!json_is_string(e)) {
                        char wi[220];
                        (void) snprintf(wi, sizeof wi, "%s[%zu]", w, i);
                        return want(r, wi, e, false, "a string");
                }
                (*ret)[(*ret_n)++] = cp_xstrdup(json_string_value(e));
        }
        return 0;
}

static int parse_protocol(const char *s, Management__HostConfig__Protocol *ret) {
        static const struct { const char *name; Management__HostConfig__Protocol p; } protos[] = {
                { "udp", MANAGEMENT__HOST_CONFIG__PROTOCOL__UDP },
                { "tcp", MANAGEMENT__HOST_CONFIG__PROTOCOL__TCP },
                { "http", MANAGEMENT__HOST_CONFIG__PROTOCOL__HTTP },
                { "https", MANAGEMENT__HOST_CONFIG__PROTOCOL__HTTPS },
                { "dtls", MANAGEMENT__HOST_CONFIG__PROTOCOL__DTLS },
        };

        for (size_t i = 0; i < ELEMENTSOF(protos); i++)
                if (strcasecmp(s, protos[i].name) == 0) {
                        *ret = protos[i].p;
                        return 0;
                }
        return -EINVAL;
}

/* A Host: {Proto, URI, Username, Password}. URI is required and Proto must
 * be one NetBird knows (NetBird itself panics on an unknown one when it
 * builds the first response). */
static int read_host(reader *r, const json_t *v, const char *where, mgmt_host *h) {
        _cleanup_free_ char *proto = NULL;
        char w[200];

        if (want(r, where, v, json_is_object(v), "an object") < 0)
                return -EINVAL;
        if (read_str(r, v, "Proto", where, &proto) < 0 || read_str(r, v, "URI", where, &h->uri) < 0 ||
            read_str(r, v, "Username", where, &h->username) < 0 ||
            read_str(r, v, "Password", where, &h->password) < 0)
                return -EINVAL;
        (void) snprintf(w, sizeof w, "%s.URI", where);
        if (!*h->uri)
                return bad(r, w, "must not be empty");
        (void) snprintf(w, sizeof w, "%s.Proto", where);
        if (parse_protocol(proto, &h->protocol) < 0)
                return bad(r, w, "\"%.20s\" is not one of udp, tcp, http, https, dtls", proto);
        return 0;
}

static int read_hosts(reader *r, const json_t *v, const char *where, mgmt_host **ret, size_t *ret_n) {
        if (!v)
                return 0;
        if (want(r, where, v, json_is_array(v), "an array") < 0)
                return -EINVAL;
        if (json_array_size(v) > MAX_HOSTS)
                return bad(r, where, "more than %d entries", MAX_HOSTS);
        *ret = cp_xcalloc(json_array_size(v) + 1, sizeof **ret);
        for (size_t i = 0; i < json_array_size(v); i++) {
                char w[200];
                (void) snprintf(w, sizeof w, "%s[%zu]", where, i);
                (*ret_n)++;
                if (read_host(r, json_array_get(v, i), w, &(*ret)[i]) < 0)
                        return -EINVAL;
        }
        return 0;
}

static int read_provider(reader *r, const json_t *v, const char *where, mgmt_provider *p) {
        json_t *lf;
        char w[200];

        if (v && want(r, where, v, json_is_object(v), "an object") < 0)
                return -EINVAL;
        if (read_str(r, v, "ClientID", where, &p->client_id) < 0 ||
            read_str(r, v, "ClientSecret", where, &p->client_secret) < 0 ||
            read_str(r, v, "Domain", where, &p->domain) < 0 ||
            read_str(r, v, "Audience", where, &p->audience) < 0 ||
            read_str(r, v, "DeviceAuthEndpoint", where, &p->device_auth_endpoint) < 0 ||
            read_str(r, v, "TokenEndpoint", where, &p->token_endpoint) < 0 ||
            read_str(r, v, "AuthorizationEndpoint", where, &p->authorization_endpoint) < 0 ||
            read_str(r, v, "Scope", where, &p->scope) < 0 ||
            read_bool(r, v, "UseIDToken", where, &p->use_id_token) < 0 ||
            read_strings(r, v, "RedirectURLs", where, &p->redirect_urls, &p->n_redirect_urls) < 0 ||
            read_bool(r, v, "DisablePromptLogin", where, &p->disable_prompt_login) < 0)
                return -EINVAL;
        lf = jget(v, "LoginFlag");
        (void) snprintf(w, sizeof w, "%s.LoginFlag", where);
        if (lf) {
                if (want(r, w, lf, json_is_integer(lf), "an integer") < 0)
                        return -EINVAL;
                if (json_integer_value(lf) < 0 || json_integer_value(lf) > 255)
                        return bad(r, w, "expected 0 to 255");
                p->login_flag = (uint32_t) json_integer_value(lf);
        }
        return 0;
}

static int read_turn(reader *r, const json_t *v, mgmt_netconf *n) {
        if (!v)
                return 0;
        if (want(r, "TURNConfig", v, json_is_object(v), "an object") < 0)
                return -EINVAL;
        n->has_turn = true;
        if (read_bool(r, v, "TimeBasedCredentials", "TURNConfig", &n->turn_time_based) < 0 ||
            read_ttl(r, v, "CredentialsTTL", "TURNConfig", &n->turn_ttl_s) < 0 ||
            read_str(r, v, "Secret", "TURNConfig", &n->turn_secret) < 0 ||
            read_hosts(r, jget(v, "Turns"), "TURNConfig.Turns", &n->turns, &n->n_turns) < 0)
                return -EINVAL;
        return 0;
}

static int read_relay(reader *r, const json_t *v, mgmt_netconf *n) {
        _cleanup_free_ char *secret = NULL;

        n->relay_ttl_s = DEFAULT_TTL_S;
        if (!v)
                return 0;
        if (want(r, "Relay", v, json_is_object(v), "an object") < 0)
                return -EINVAL;
        if (read_strings(r, v, "Addresses", "Relay", &n->relay_urls, &n->n_relay_urls) < 0 ||
            read_ttl(r, v, "CredentialsTTL", "Relay", &n->relay_ttl_s) < 0 ||
            read_str(r, v, "Secret", "Relay", &secret) < 0)
                return -EINVAL;
        n->relay_secret_empty = !*secret;
        cp_crypto_sha256(secret, strlen(secret), n->relay_key);
        cp_explicit_bzero(secret, strlen(secret));
        return 0;
}

static int read_device_flow(reader *r, const json_t *d, mgmt_netconf *n) {
        if (!d)
                return 0;
        if (want(r, "DeviceAuthorizationFlow", d, json_is_object(d), "an object") < 0 ||
            read_str(r, d, "Provider", "DeviceAuthorizationFlow", &n->device_provider_name) < 0 ||
            read_provider(r, jget(d, "ProviderConfig"), "DeviceAuthorizationFlow.ProviderConfig", &n->device) < 0)
                return -EINVAL;
        /* NetBird: absent or "none" means not configured; the name,
         * upper-cased, must be a value of the protocol's enum (HOSTED is
         * the only one). */
        n->device_flow = strcmp(n->device_provider_name, "none") != 0;
        n->device_provider_ok = strcasecmp(n->device_provider_name, "hosted") == 0;
        return 0;
}

static int read_pkce_flow(reader *r, const json_t *p, mgmt_netconf *n) {
        if (!p)
                return 0;
        if (want(r, "PKCEAuthorizationFlow", p, json_is_object(p), "an object") < 0 ||
            read_provider(r, jget(p, "ProviderConfig"), "PKCEAuthorizationFlow.ProviderConfig", &n->pkce) < 0)
                return -EINVAL;
        n->pkce_flow = true;
        return 0;
}

static int read_http(reader *r, const json_t *file, mgmt_netconf *n) {
        json_t *h = jget(file, "HttpConfig");

        if (h && want(r, "HttpConfig", h, json_is_object(h), "an object") < 0)
                return -EINVAL;
        if (read_str(r, h, "AuthIssuer", "HttpConfig", &n->auth_issuer) < 0 ||
            read_str(r, h, "AuthAudience", "HttpConfig", &n->auth_audience) < 0 ||
            read_str(r, h, "AuthKeysLocation", "HttpConfig", &n->auth_keys_location) < 0 ||
            read_str(r, h, "ExtraAuthAudience", "HttpConfig", &n->extra_auth_audience) < 0 ||
            read_str(r, h, "AuthUserIDClaim", "HttpConfig", &n->auth_user_id_claim) < 0 ||
            read_str(r, h, "OIDCConfigEndpoint", "HttpConfig", &n->oidc_config_endpoint) < 0)
                return -EINVAL;
        return 0;
}

/* ---- the environment --------------------------------------------------------- */

/* Each agent-facing key can also come from one environment variable that
 * holds its JSON value (a Kubernetes deployment may have no file). A set
 * variable replaces the file's key as a whole; empty or null counts as
 * unset, as for every other setting. */
static const struct {
        const char *key;
        const char *env;
} env_json[] = {
        { "Stuns", CP_CONFIG_ENV_PREFIX "STUNS" },
        { "TURNConfig", CP_CONFIG_ENV_PREFIX "TURN_CONFIG" },
        { "Relay", CP_CONFIG_ENV_PREFIX "RELAY" },
        { "Signal", CP_CONFIG_ENV_PREFIX "SIGNAL" },
        { "DeviceAuthorizationFlow", CP_CONFIG_ENV_PREFIX "DEVICE_AUTHORIZATION_FLOW" },
        { "PKCEAuthorizationFlow", CP_CONFIG_ENV_PREFIX "PKCE_AUTHORIZATION_FLOW" },
};

/* The string members of HttpConfig we read, each also a plain-text
 * variable (like HttpConfig.CertFile and NB_MGMT_CERT_FILE). */
static const struct {
        const char *key;
        const char *env;
        size_t offset;
} env_http[] = {
        { "AuthIssuer", CP_CONFIG_ENV_PREFIX "AUTH_ISSUER", offsetof(mgmt_netconf, auth_issuer) },
        { "AuthAudience", CP_CONFIG_ENV_PREFIX "AUTH_AUDIENCE", offsetof(mgmt_netconf, auth_audience) },
        { "AuthKeysLocation", CP_CONFIG_ENV_PREFIX "AUTH_KEYS_LOCATION",
          offsetof(mgmt_netconf, auth_keys_location) },
        { "ExtraAuthAudience", CP_CONFIG_ENV_PREFIX "EXTRA_AUTH_AUDIENCE",
          offsetof(mgmt_netconf, extra_auth_audience) },
        { "AuthUserIDClaim", CP_CONFIG_ENV_PREFIX "AUTH_USER_ID_CLAIM",
          offsetof(mgmt_netconf, auth_user_id_claim) },
        { "OIDCConfigEndpoint", CP_CONFIG_ENV_PREFIX "OIDC_CONFIG_ENDPOINT",
          offsetof(mgmt_netconf, oidc_config_endpoint) },
};

extern char **environ;

static const char *env_get(char *const *envp, const char *name) {
        size_t n = strlen(name);

        for (char *const *e = envp ? envp : environ; e && *e; e++)
                if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
                        return (*e)[n + 1] ? *e + n + 1 : NULL;
        return NULL;
}

/* The values of the keys in env_json: from their variables where set,
 * else from the file; origin[i] names where each came from. The values
 * parsed from variables are added to owned (one reference each). */
typedef struct sources {
        const json_t *value[ELEMENTSOF(env_json)];
        char *origin[ELEMENTSOF(env_json)];
        json_t *owned[ELEMENTSOF(env_json)];
} sources;

static void sources_release(sources *src) {
        for (size_t i = 0; i < ELEMENTSOF(env_json); i++) {
                free(src->origin[i]);
                json_decref(src->owned[i]);
        }
        memset(src, 0, sizeof *src);
}

static int sources_load(const json_t *file, const char *path, char *const *envp, sources *src,
                        cp_error *reterr) {
        for (size_t i = 0; i < ELEMENTSOF(env_json); i++) {
                const char *text = env_get(envp, env_json[i].env);
                json_error_t je;

                if (!text) {
                        src->value[i] = jget(file, env_json[i].key);
                        src->origin[i] = cp_xstrdup(path);
                        continue;
                }
                /* JSON_DECODE_ANY: Stuns is an array, the others objects;
                 * the readers say which was expected. */
                src->owned[i] = json_loads(text, JSON_DECODE_ANY, &je);
                if (!src->owned[i])
                        return cp_error_set(reterr, -EINVAL, "invalid value for environment variable %s "
                                            "(%s): not JSON: %s at column %d", env_json[i].env,
                                            env_json[i].key, je.text, je.column);
                src->value[i] = json_is_null(src->owned[i]) ? jget(file, env_json[i].key) : src->owned[i];
                src->origin[i] = json_is_null(src->owned[i]) ? cp_xstrdup(path) :
                                 cp_xasprintf("environment variable %s", env_json[i].env);
        }
        return 0;
}

/* The value of key (one of env_json) and, in r->path, where it came from. */
static const json_t *pick(reader *r, const sources *src, const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(env_json); i++)
                if (strcmp(env_json[i].key, key) == 0) {
                        r->path = src->origin[i];
                        return src->value[i];
                }
        abort();        /* a key missing from env_json: a bug here */
}

static void http_from_env(char *const *envp, mgmt_netconf *n) {
        for (size_t i = 0; i < ELEMENTSOF(env_http); i++) {
                const char *v = env_get(envp, env_http[i].env);
                char **field = (char **) ((char *) n + env_http[i].offset);

                if (v) {
                        free(*field);
                        *field = cp_xstrdup(v);
                }
        }
}

int mgmt_netconf_load(const json_t *file, const char *path, char *const *envp, mgmt_netconf **ret,
                      cp_error *reterr) {
        mgmt_netconf *n = cp_xcalloc(1, sizeof *n);
        reader r = { .err = reterr };
        sources src = { 0 };
        const json_t *sig;

        path = path ? path : "the config file";
        n->turn_ttl_s = DEFAULT_TTL_S;
        n->relay_ttl_s = DEFAULT_TTL_S;
        if (sources_load(file, path, envp, &src, reterr) < 0)
                goto fail;
        if (read_hosts(&r, pick(&r, &src, "Stuns"), "Stuns", &n->stuns, &n->n_stuns) < 0 ||
            read_turn(&r, pick(&r, &src, "TURNConfig"), n) < 0 || read_relay(&r, pick(&r, &src, "Relay"), n) < 0 ||
            read_device_flow(&r, pick(&r, &src, "DeviceAuthorizationFlow"), n) < 0 ||
            read_pkce_flow(&r, pick(&r, &src, "PKCEAuthorizationFlow"), n) < 0)
                goto fail;
        r.path = path;
        if (read_http(&r, file, n) < 0)
                goto fail;
        http_from_env(envp, n);
        sig = pick(&r, &src, "Signal");
        if (sig) {
                if (read_host(&r, sig, "Signal", &n->signal) < 0)
                        goto fail;
                n->has_signal = true;
        }
        if (!n->turn_secret)
                n->turn_secret = cp_xstrdup("");
        sources_release(&src);
        *ret = n;
        return 0;
fail:
        sources_release(&src);
        mgmt_netconf_free(n);
        return -EINVAL;
}

void mgmt_netconf_usage(cp_strbuf *out) {
        cp_strbuf_addf(out, "\nWhat agents are given (management.json keys; each also from the environment, "
                            "which wins over the file):\n");
        for (size_t i = 0; i < ELEMENTSOF(env_json); i++)
                cp_strbuf_addf(out, "  %-34s env %s (the key's JSON value)\n", env_json[i].key, env_json[i].env);
        for (size_t i = 0; i < ELEMENTSOF(env_http); i++) {
                char key[64];
                (void) snprintf(key, sizeof key, "HttpConfig.%s", env_http[i].key);
                cp_strbuf_addf(out, "  %-34s env %s (a string)\n", key, env_http[i].env);
        }
}

void mgmt_netconf_check(const mgmt_netconf *n, void (*warn)(const char *text, void *userdata), void *userdata) {
        if (n->has_turn && n->turn_time_based && n->n_turns > 0 && !n->turn_secret[0])
                warn("TURNConfig.TimeBasedCredentials is true but TURNConfig.Secret is empty: TURN servers "
                     "will reject the credentials", userdata);
        if (n->n_relay_urls > 0 && n->relay_secret_empty)
                warn("Relay.Addresses is set but Relay.Secret is empty: relay servers will reject the tokens",
                     userdata);
        if (n->has_turn && !n->turn_time_based)
                for (size_t i = 0; i < n->n_turns; i++)
                        if (!n->turns[i].username[0]) {
                                warn("TURNConfig.Turns has an entry without Username while "
                                     "TimeBasedCredentials is false", userdata);
                                break;
                        }
}

static void wipe_free(char *s) {
        if (s) {
                cp_explicit_bzero(s, strlen(s));
                free(s);
        }
}

static void host_release(mgmt_host *h) {
        free(h->uri);
        wipe_free(h->username);
        wipe_free(h->password);
}

static void hosts_free(mgmt_host *h, size_t n) {
        for (size_t i = 0; i < n; i++)
                host_release(&h[i]);
        free(h);
}

static void strings_free(char **s, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(s[i]);
        free(s);
}

static void provider_release(mgmt_provider *p) {
        free(p->client_id);
        wipe_free(p->client_secret);
        free(p->domain);
        free(p->audience);
        free(p->device_auth_endpoint);
        free(p->token_endpoint);
        free(p->authorization_endpoint);
        free(p->scope);
        strings_free(p->redirect_urls, p->n_redirect_urls);
}

mgmt_netconf *mgmt_netconf_free(mgmt_netconf *n) {
        if (!n)
                return NULL;
        hosts_free(n->stuns, n->n_stuns);
        hosts_free(n->turns, n->n_turns);
        wipe_free(n->turn_secret);
        strings_free(n->relay_urls, n->n_relay_urls);
        host_release(&n->signal);
        free(n->device_provider_name);
        provider_release(&n->device);
        provider_release(&n->pkce);
        free(n->auth_issuer);
        free(n->auth_audience);
        free(n->auth_keys_location);
        free(n->extra_auth_audience);
        free(n->auth_user_id_claim);
        free(n->oidc_config_endpoint);
        cp_explicit_bzero(n, sizeof *n);
        free(n);
        return NULL;
}

/* ---- credentials ------------------------------------------------------------ */

static void make_token(const EVP_MD *md, const void *key, size_t key_len, int64_t expires_s, mgmt_token *ret) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;

        (void) snprintf(ret->payload, sizeof ret->payload, "%" PRId64, expires_s);
        if (!HMAC(md, key, (int) key_len, (const unsigned char *) ret->payload, strlen(ret->payload), mac,
                  &mac_len))
                abort();        /* only on out-of-memory inside OpenSSL */
        cp_crypto_b64_encode(mac, mac_len, ret->signature, sizeof ret->signature);
        cp_explicit_bzero(mac, sizeof mac);
}

void mgmt_netconf_turn_token(const mgmt_netconf *n, int64_t now_s, mgmt_token *ret) {
        make_token(EVP_sha1(), n->turn_secret, strlen(n->turn_secret), now_s + n->turn_ttl_s, ret);
}

void mgmt_netconf_relay_token(const mgmt_netconf *n, int64_t now_s, mgmt_token *ret) {
        make_token(EVP_sha256(), n->relay_key, sizeof n->relay_key, now_s + n->relay_ttl_s, ret);
}

/* ---- the NetbirdConfig message ------------------------------------------------ */

static Management__HostConfig *host_config(const mgmt_host *h, mgmt_arena *a) {
        Management__HostConfig *hc = mgmt_arena_alloc(a, sizeof *hc);

        management__host_config__init(hc);
        hc->uri = h->uri;
        hc->protocol = h->protocol;
        return hc;
}

static bool turn_expires(const mgmt_netconf *n) {
        return n->n_turns > 0 && n->turn_time_based;
}

/* turns and relay of a NetbirdConfig (see mgmt_netconf_build). */
static void build_turns(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a, Management__NetbirdConfig *nc) {
        if (n->n_turns) {
                mgmt_token *tok = NULL;
                if (n->turn_time_based) {
                        tok = mgmt_arena_alloc(a, sizeof *tok);
                        mgmt_netconf_turn_token(n, now_s, tok);
                }
                nc->turns = mgmt_arena_array(a, n->n_turns, sizeof *nc->turns);
                for (size_t i = 0; i < n->n_turns; i++) {
                        Management__ProtectedHostConfig *t = mgmt_arena_alloc(a, sizeof *t);
                        management__protected_host_config__init(t);
                        t->hostconfig = host_config(&n->turns[i], a);
                        t->user = tok ? tok->payload : n->turns[i].username;
                        t->password = tok ? tok->signature : n->turns[i].password;
                        nc->turns[i] = t;
                }
                nc->n_turns = n->n_turns;
        }
}

static void build_relay(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a, Management__NetbirdConfig *nc) {
        if (n->n_relay_urls) {
                Management__RelayConfig *rc = mgmt_arena_alloc(a, sizeof *rc);
                mgmt_token *tok = mgmt_arena_alloc(a, sizeof *tok);
                management__relay_config__init(rc);
                mgmt_netconf_relay_token(n, now_s, tok);
                rc->urls = n->relay_urls;
                rc->n_urls = n->n_relay_urls;
                rc->tokenpayload = tok->payload;
                rc->tokensignature = tok->signature;
                nc->relay = rc;
        }
}

Management__NetbirdConfig *mgmt_netconf_build(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a) {
        Management__NetbirdConfig *nc = mgmt_arena_alloc(a, sizeof *nc);

        management__netbird_config__init(nc);
        if (n->n_stuns) {
                nc->stuns = mgmt_arena_array(a, n->n_stuns, sizeof *nc->stuns);
                for (size_t i = 0; i < n->n_stuns; i++)
                        nc->stuns[i] = host_config(&n->stuns[i], a);
                nc->n_stuns = n->n_stuns;
        }
        build_turns(n, now_s, a, nc);
        if (n->has_signal)
                nc->signal = host_config(&n->signal, a);
        build_relay(n, now_s, a, nc);
        return nc;
}

int64_t mgmt_netconf_refresh_ms(const mgmt_netconf *n) {
        int64_t ttl_s = 0;

        if (!n)
                return 0;
        if (turn_expires(n))
                ttl_s = n->turn_ttl_s;
        if (n->n_relay_urls && (ttl_s == 0 || n->relay_ttl_s < ttl_s))
                ttl_s = n->relay_ttl_s;
        if (ttl_s <= 0)
                return 0;
        return ttl_s * 1000 / 4 * 3;
}

Management__NetbirdConfig *mgmt_netconf_build_refresh(const mgmt_netconf *n, int64_t now_s, mgmt_arena *a) {
        Management__NetbirdConfig *nc;

        if (mgmt_netconf_refresh_ms(n) == 0)
                return NULL;
        nc = mgmt_arena_alloc(a, sizeof *nc);
        management__netbird_config__init(nc);
        if (turn_expires(n))
                build_turns(n, now_s, a, nc);
        build_relay(n, now_s, a, nc);
        return nc;
}

/* "https://idp.example.com/oauth/token" -> "https://idp.example.com/" */
static char *issuer_from_endpoint(const char *endpoint, mgmt_arena *a) {
        const char *p = strstr(endpoint, "://");

        if (!p || p == endpoint)
                return NULL;
        p += 3;
        size_t host = strcspn(p, "/?#");
        if (host == 0)
                return NULL;
        return mgmt_arena_printf(a, "%.*s%.*s/", (int) (p - endpoint), endpoint, (int) host, p);
}

Management__JWTConfig *mgmt_netconf_jwt_config(const mgmt_netconf *n, mgmt_arena *a) {
        Management__JWTConfig *j;
        char *issuer;

        const char *keys = n->auth_keys_location;
        char found_issuer[512], found_keys[1024];

        if (!n->auth_audience || !*n->auth_audience)
                return NULL;
        issuer = n->auth_issuer ? mgmt_arena_strdup(a, n->auth_issuer) : NULL;
        if (n->jwt && n->oidc_config_endpoint && *n->oidc_config_endpoint) {
                /* Discovered values, once the document has been read. */
                cp_jwt_issuer(n->jwt, found_issuer, sizeof found_issuer);
                cp_jwt_keys_location(n->jwt, found_keys, sizeof found_keys);
                if (found_issuer[0])
                        issuer = mgmt_arena_strdup(a, found_issuer);
                if (found_keys[0])
                        keys = mgmt_arena_strdup(a, found_keys);
        }
        if ((!issuer || !*issuer) && n->device_flow && n->device.token_endpoint && *n->device.token_endpoint)
                issuer = issuer_from_endpoint(n->device.token_endpoint, a);
        if (!issuer || !*issuer)
                return NULL;
        j = mgmt_arena_alloc(a, sizeof *j);
        management__jwtconfig__init(j);
        j->issuer = issuer;
        j->audience = n->auth_audience;
        if (keys && *keys)
                j->keyslocation = (char *) keys;
        else {
                size_t l = strlen(issuer);
                j->keyslocation = mgmt_arena_printf(a, "%.*s/.well-known/jwks.json",
                                                    (int) (l && issuer[l - 1] == '/' ? l - 1 : l), issuer);
        }
        return j;
}
