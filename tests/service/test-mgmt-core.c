/*
 * Unit tests of mgmt-core pieces that need no server: the worker pool,
 * the per-RPC arena, the EncryptedMessage streams send, and mgmt_netconf (management.json's agent keys and
 * the TURN / relay credentials, checked against HMAC values computed
 * independently with Python's hmac module).
 */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cptest.h"
#include "mgmt-agent-int.h"
#include "mgmt-arena.h"
#include "mgmt-limits.h"
#include "mgmt-netconf.h"
#include "mgmt-realip.h"
#include "mgmt-strmap.h"
#include "mgmt-work.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* ---- worker pool ---------------------------------------------------------- */

typedef struct gate {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool open;
        atomic_int ran;
        int order[64];
        atomic_int n_order;
} gate;

static void wait_gate(void *userdata) {
        gate *g = userdata;

        pthread_mutex_lock(&g->lock);
        while (!g->open)
                pthread_cond_wait(&g->cond, &g->lock);
        pthread_mutex_unlock(&g->lock);
        atomic_fetch_add(&g->ran, 1);
}

static void count(void *userdata) {
        atomic_fetch_add(&((gate *) userdata)->ran, 1);
}

TEST(workers_queue_limit_and_drain) {
        gate g = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        mgmt_workers *w = NULL;

        ASSERT_EQ(0, mgmt_workers_new(1, 2, &w, NULL));
        /* The one thread blocks in the first job; two more fit the queue. */
        ASSERT_EQ(0, mgmt_workers_submit(w, wait_gate, &g, false));
        while (mgmt_workers_queued(w) != 0)
                ;
        ASSERT_EQ(0, mgmt_workers_submit(w, count, &g, false));
        ASSERT_EQ(0, mgmt_workers_submit(w, count, &g, false));
        ASSERT_EQ(-EAGAIN, mgmt_workers_submit(w, count, &g, false));
        ASSERT_EQ(2, mgmt_workers_queued(w));
        /* A job that must run (a fenced disconnect) goes past the bound. */
        ASSERT_EQ(0, mgmt_workers_submit(w, count, &g, true));
        ASSERT_EQ(3, mgmt_workers_queued(w));
        pthread_mutex_lock(&g.lock);
        g.open = true;
        pthread_cond_broadcast(&g.cond);
        pthread_mutex_unlock(&g.lock);
        /* Freeing runs what was accepted, then joins. */
        mgmt_workers_free(w);
        ASSERT_EQ(4, atomic_load(&g.ran));
        ASSERT_TRUE(mgmt_workers_free(NULL) == NULL);
}

TEST(workers_bad_size) {
        mgmt_workers *w = NULL;
        cp_error err = { 0 };

        ASSERT_EQ(-EINVAL, mgmt_workers_new(0, 10, &w, &err));
        ASSERT_EQ(-EINVAL, mgmt_workers_new(257, 10, &w, &err));
        ASSERT_TRUE(w == NULL);
}

typedef struct many {
        atomic_int sum;
} many;

static void add_one(void *userdata) {
        atomic_fetch_add(&((many *) userdata)->sum, 1);
}

TEST(workers_many_threads) {
        many m = { 0 };
        mgmt_workers *w = NULL;

        ASSERT_EQ(0, mgmt_workers_new(8, 100000, &w, NULL));
        for (int i = 0; i < 20000; i++)
                ASSERT_EQ(0, mgmt_workers_submit(w, add_one, &m, false));
        mgmt_workers_free(w);
        ASSERT_EQ(20000, atomic_load(&m.sum));
}

/* ---- arena ---------------------------------------------------------------- */

TEST(arena_alignment_big_blocks_and_strings) {
        mgmt_arena a;

        mgmt_arena_init(&a);
        for (int i = 1; i < 200; i++) {
                uint8_t *p = mgmt_arena_alloc(&a, (size_t) i * 7);
                ASSERT_EQ(0, (uintptr_t) p % _Alignof(max_align_t));
                for (int k = 0; k < i * 7; k++)
                        ASSERT_EQ(0, p[k]);
                memset(p, 0xab, (size_t) i * 7);
        }
        uint8_t *big = mgmt_arena_alloc(&a, 100000);
        memset(big, 1, 100000);
        char *small = mgmt_arena_strdup(&a, "after the big block");
        ASSERT_TRUE(strcmp(small, "after the big block") == 0);
        ASSERT_TRUE(strcmp(mgmt_arena_printf(&a, "%s/%u", "100.64.0.1", 16u), "100.64.0.1/16") == 0);
        uint32_t *arr = mgmt_arena_array(&a, 1000, sizeof *arr);
        arr[999] = 7;
        ASSERT_TRUE(mgmt_arena_alloc(&a, 0) != NULL);
        /* As a protobuf-c allocator. */
        ProtobufCAllocator *pb = mgmt_arena_pb(&a);
        void *q = pb->alloc(pb->allocator_data, 40);
        pb->free(pb->allocator_data, q);
        mgmt_arena_release(&a);
        mgmt_arena_release(&a);         /* empty again: fine */
}

/* A request that carried secrets, unpacked into an arena as the edge
 * does (mgmt_agent_open_request): after mgmt_arena_wipe() neither secret
 * is left in the arena's memory, which stays valid; then it is freed. */
TEST(arena_wipe_clears_an_unpacked_login_request) {
        static const char key[] = "A2C8E62B-38F5-4553-B31E-DD66C696CEBB";
        static const char jwt[] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        Management__LoginRequest in = MANAGEMENT__LOGIN_REQUEST__INIT;
        mgmt_arena a;

        in.setupkey = (char *) key;
        in.jwttoken = (char *) jwt;
        size_t len = management__login_request__get_packed_size(&in);
        uint8_t *buf = cp_xmalloc(len);
        ASSERT_EQ(len, management__login_request__pack(&in, buf));

        mgmt_arena_init(&a);
        (void) mgmt_arena_alloc(&a, 100000);    /* a big block of its own too */
        Management__LoginRequest *req = management__login_request__unpack(mgmt_arena_pb(&a), len, buf);
        free(buf);
        ASSERT_TRUE(req != NULL);
        ASSERT_TRUE(strcmp(req->setupkey, key) == 0 && strcmp(req->jwttoken, jwt) == 0);
        char *k = req->setupkey, *j = req->jwttoken;
        size_t nk = strlen(k), nj = strlen(j);
        mgmt_arena_wipe(&a);
        for (size_t i = 0; i < nk; i++)
                ASSERT_EQ(0, k[i]);
        for (size_t i = 0; i < nj; i++)
                ASSERT_EQ(0, j[i]);
        /* Still usable after a wipe. */
        ASSERT_TRUE(strcmp(mgmt_arena_strdup(&a, "later"), "later") == 0);
        mgmt_arena_release_wiped(&a);
        mgmt_arena_release_wiped(&a);   /* empty: fine */
}

/* ---- netconf --------------------------------------------------------------- */

/* An empty environment, so the runner's variables never leak in. */
static char *const no_env[] = { NULL };

static int load(const char *text, mgmt_netconf **ret, cp_error *err) {
        json_error_t je;
        json_t *j = json_loads(text, 0, &je);

        if (!j)
                cptest_fail(__FILE__, __LINE__, "bad JSON in test: %s", je.text);
        int r = mgmt_netconf_load(j, "/test/management.json", no_env, ret, err);
        json_decref(j);
        return r;
}

TEST(netconf_empty_file) {
        mgmt_netconf *n = NULL;
        mgmt_arena a;

        ASSERT_EQ(0, mgmt_netconf_load(NULL, NULL, no_env, &n, NULL));
        ASSERT_FALSE(n->device_flow || n->pkce_flow || n->has_signal || n->has_turn);
        mgmt_arena_init(&a);
        Management__NetbirdConfig *nc = mgmt_netconf_build(n, 1700000000, &a);
        ASSERT_TRUE(nc && nc->n_stuns == 0 && nc->n_turns == 0 && !nc->relay && !nc->signal);
        ASSERT_TRUE(mgmt_netconf_jwt_config(n, &a) == NULL);
        mgmt_arena_release(&a);
        mgmt_netconf_free(n);
}

TEST(netconf_credentials) {
        mgmt_netconf *n = NULL;
        mgmt_token t;
        mgmt_arena a;

        ASSERT_EQ(0, load("{\"turnconfig\": {\"TimeBasedCredentials\": true, \"CredentialsTTL\": \"2h0m0s\","
                          " \"Secret\": \"edge-turn-secret\", \"Turns\": [{\"Proto\": \"UDP\", \"URI\": \"turn:t:3478\"}]},"
                          " \"Relay\": {\"Addresses\": [\"rels://r:443\"], \"CredentialsTTL\": 1800000000000,"
                          " \"Secret\": \"edge-relay-secret\"},"
                          " \"Signal\": {\"Proto\": \"https\", \"URI\": \"s:443\"}}", &n, NULL));
        ASSERT_EQ(7200, n->turn_ttl_s);
        ASSERT_EQ(1800, n->relay_ttl_s);
        mgmt_netconf_turn_token(n, 1700000000, &t);
        ASSERT_TRUE(strcmp(t.payload, "1700007200") == 0);
        ASSERT_TRUE(strcmp(t.signature, "V/EgqVf6IwOasmGzJmXGCYXJI9k=") == 0);
        mgmt_netconf_relay_token(n, 1700000000, &t);
        ASSERT_TRUE(strcmp(t.payload, "1700001800") == 0);
        ASSERT_TRUE(strcmp(t.signature, "UM1PrN5coInsMAH06oI2x+5dgRE1+J0LT5rdG5SB25I=") == 0);

        mgmt_arena_init(&a);
        Management__NetbirdConfig *nc = mgmt_netconf_build(n, 1700000000, &a);
        ASSERT_EQ(1, nc->n_turns);
        ASSERT_TRUE(strcmp(nc->turns[0]->user, "1700007200") == 0);
        ASSERT_EQ(MANAGEMENT__HOST_CONFIG__PROTOCOL__UDP, nc->turns[0]->hostconfig->protocol);
        ASSERT_TRUE(nc->relay && nc->relay->n_urls == 1 && strcmp(nc->relay->tokenpayload, "1700001800") == 0);
        ASSERT_TRUE(nc->signal && nc->signal->protocol == MANAGEMENT__HOST_CONFIG__PROTOCOL__HTTPS);
        /* It packs. */
        size_t len = management__netbird_config__get_packed_size(nc);
        uint8_t *buf = mgmt_arena_alloc(&a, len);
        ASSERT_EQ(len, management__netbird_config__pack(nc, buf));

        /* Refresh: 3/4 of the shorter TTL (relay's 1800 s); only turns and
         * relay, both fresh. */
        ASSERT_EQ(1350 * 1000, mgmt_netconf_refresh_ms(n));
        nc = mgmt_netconf_build_refresh(n, 1700000100, &a);
        ASSERT_TRUE(nc && nc->n_stuns == 0 && !nc->signal);
        ASSERT_TRUE(nc->n_turns == 1 && strcmp(nc->turns[0]->user, "1700007300") == 0);
        ASSERT_TRUE(nc->relay && strcmp(nc->relay->tokenpayload, "1700001900") == 0);
        mgmt_arena_release(&a);
        mgmt_netconf_free(n);
}

TEST(netconf_refresh) {
        mgmt_netconf *n = NULL;
        mgmt_arena a;

        mgmt_arena_init(&a);
        ASSERT_EQ(0, mgmt_netconf_refresh_ms(NULL));
        /* Static TURN, no relay: nothing expires. */
        ASSERT_EQ(0, load("{\"TURNConfig\": {\"CredentialsTTL\": \"4s\", \"Turns\": [{\"Proto\": \"udp\", "
                          "\"URI\": \"turn:t:3478\", \"Username\": \"u\", \"Password\": \"p\"}]}}", &n, NULL));
        ASSERT_EQ(0, mgmt_netconf_refresh_ms(n));
        ASSERT_TRUE(mgmt_netconf_build_refresh(n, 1, &a) == NULL);
        n = mgmt_netconf_free(n);
        /* Static TURN with relay: relay only, at 3/4 of its TTL. */
        ASSERT_EQ(0, load("{\"TURNConfig\": {\"Turns\": [{\"Proto\": \"udp\", \"URI\": \"turn:t:3478\","
                          " \"Username\": \"u\", \"Password\": \"p\"}]},"
                          " \"Relay\": {\"Addresses\": [\"rels://r:443\"], \"CredentialsTTL\": \"4s\","
                          " \"Secret\": \"s\"}}", &n, NULL));
        ASSERT_EQ(3000, mgmt_netconf_refresh_ms(n));
        Management__NetbirdConfig *nc = mgmt_netconf_build_refresh(n, 10, &a);
        ASSERT_TRUE(nc && nc->n_turns == 0 && nc->relay && strcmp(nc->relay->tokenpayload, "14") == 0);
        n = mgmt_netconf_free(n);
        /* Time-based TURN without relay: turns only. */
        ASSERT_EQ(0, load("{\"TURNConfig\": {\"TimeBasedCredentials\": true, \"CredentialsTTL\": \"8s\","
                          " \"Secret\": \"x\", \"Turns\": [{\"Proto\": \"udp\", \"URI\": \"turn:t:3478\"}]}}",
                          &n, NULL));
        ASSERT_EQ(6000, mgmt_netconf_refresh_ms(n));
        nc = mgmt_netconf_build_refresh(n, 10, &a);
        ASSERT_TRUE(nc && nc->n_turns == 1 && !nc->relay && strcmp(nc->turns[0]->user, "18") == 0);
        n = mgmt_netconf_free(n);
        mgmt_arena_release(&a);
}

TEST(netconf_defaults_static_turn_and_flows) {
        mgmt_netconf *n = NULL;
        mgmt_arena a;

        ASSERT_EQ(0, load("{\"TURNConfig\": {\"CredentialsTTL\": \"0s\", \"Turns\": [{\"Proto\": \"tcp\", "
                          "\"URI\": \"turn:t:3478\", \"Username\": \"u\", \"Password\": \"p\"}]},"
                          " \"DeviceAuthorizationFlow\": {\"Provider\": \"none\"},"
                          " \"PKCEAuthorizationFlow\": {\"ProviderConfig\": {\"LoginFlag\": 2}},"
                          " \"HttpConfig\": {\"AuthAudience\": \"aud\"}}", &n, NULL));
        ASSERT_EQ(12 * 3600, n->turn_ttl_s);            /* NetBird's default */
        ASSERT_FALSE(n->device_flow);
        ASSERT_TRUE(n->pkce_flow && n->pkce.login_flag == 2);
        mgmt_arena_init(&a);
        Management__NetbirdConfig *nc = mgmt_netconf_build(n, 1, &a);
        ASSERT_TRUE(strcmp(nc->turns[0]->user, "u") == 0 && strcmp(nc->turns[0]->password, "p") == 0);
        /* An audience but no issuer: no JWT config. */
        ASSERT_TRUE(mgmt_netconf_jwt_config(n, &a) == NULL);
        mgmt_arena_release(&a);
        mgmt_netconf_free(n);

        /* The issuer can come from the device flow's token endpoint. */
        ASSERT_EQ(0, load("{\"DeviceAuthorizationFlow\": {\"Provider\": \"hosted\", \"ProviderConfig\": "
                          "{\"TokenEndpoint\": \"https://idp.test/oauth/token\"}},"
                          " \"HttpConfig\": {\"AuthAudience\": \"aud\"}}", &n, NULL));
        ASSERT_TRUE(n->device_flow && n->device_provider_ok);
        mgmt_arena_init(&a);
        Management__JWTConfig *j = mgmt_netconf_jwt_config(n, &a);
        ASSERT_TRUE(j && strcmp(j->issuer, "https://idp.test/") == 0);
        ASSERT_TRUE(strcmp(j->keyslocation, "https://idp.test/.well-known/jwks.json") == 0);
        mgmt_arena_release(&a);
        mgmt_netconf_free(n);
}

static int n_warnings;

static void on_warning(const char *text, void *userdata) {
        n_warnings++;
}

TEST(netconf_errors_and_warnings) {
        static const struct { const char *json, *needle; } bad[] = {
                { "{\"Stuns\": [{\"Proto\": \"quic\", \"URI\": \"x\"}]}", "Stuns[0].Proto" },
                { "{\"Stuns\": [{\"Proto\": \"udp\"}]}", "Stuns[0].URI" },
                { "{\"Stuns\": 5}", "expected an array, got an integer" },
                { "{\"TURNConfig\": []}", "TURNConfig in /test/management.json: expected an object" },
                { "{\"TURNConfig\": {\"CredentialsTTL\": \"soon\"}}", "TURNConfig.CredentialsTTL" },
                { "{\"TURNConfig\": {\"TimeBasedCredentials\": \"yes\"}}", "TURNConfig.TimeBasedCredentials" },
                { "{\"Relay\": {\"Addresses\": [\"a\", 3]}}", "Relay.Addresses[1]" },
                { "{\"Signal\": {\"Proto\": 1, \"URI\": \"s\"}}", "Signal.Proto" },
                { "{\"PKCEAuthorizationFlow\": {\"ProviderConfig\": {\"LoginFlag\": 300}}}", "LoginFlag" },
                { "{\"HttpConfig\": {\"AuthIssuer\": false}}", "HttpConfig.AuthIssuer" },
        };
        mgmt_netconf *n = NULL;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                cp_error err = { 0 };
                ASSERT_EQ(-EINVAL, load(bad[i].json, &n, &err));
                if (!strstr(err.message, bad[i].needle))
                        cptest_fail(__FILE__, __LINE__, "%s: %s", bad[i].json, err.message);
                ASSERT_TRUE(n == NULL);
        }
        ASSERT_EQ(0, load("{\"Relay\": {\"Addresses\": [\"rels://r:443\"]}, \"TURNConfig\": "
                          "{\"TimeBasedCredentials\": true, \"Turns\": [{\"Proto\": \"udp\", \"URI\": \"t\"}]}}",
                          &n, NULL));
        n_warnings = 0;
        mgmt_netconf_check(n, on_warning, NULL);
        ASSERT_EQ(2, n_warnings);
        mgmt_netconf_free(n);
}

/* Loads text (a management.json, or NULL for none) with the environment
 * envp. */
static int load_env(const char *text, char *const *envp, mgmt_netconf **ret, cp_error *err) {
        json_error_t je;
        json_t *j = text ? json_loads(text, 0, &je) : NULL;

        if (text && !j)
                cptest_fail(__FILE__, __LINE__, "bad JSON in test: %s", je.text);
        int r = mgmt_netconf_load(j, "/test/management.json", envp, ret, err);
        json_decref(j);
        return r;
}

TEST(netconf_from_the_environment) {
        static const char file[] =
                "{\"Stuns\": [{\"Proto\": \"udp\", \"URI\": \"stun:file:3478\"}],"
                " \"Signal\": {\"Proto\": \"http\", \"URI\": \"file-signal:80\"},"
                " \"Relay\": {\"Addresses\": [\"rels://file-relay:443\"], \"Secret\": \"f\"},"
                " \"HttpConfig\": {\"AuthIssuer\": \"https://file-idp/\", \"AuthAudience\": \"file-aud\","
                " \"ExtraAuthAudience\": \"file-extra\", \"AuthUserIDClaim\": \"oid\"}}";
        char *const env[] = {
                "NB_MGMT_STUNS=[{\"Proto\": \"tcp\", \"URI\": \"stun:env:3478\"},"
                " {\"Proto\": \"udp\", \"URI\": \"stun:env2:3478\"}]",
                "NB_MGMT_TURN_CONFIG={\"TimeBasedCredentials\": true, \"CredentialsTTL\": \"1h\","
                " \"Secret\": \"t\", \"Turns\": [{\"Proto\": \"udp\", \"URI\": \"turn:env:3478\"}]}",
                "NB_MGMT_RELAY=null",           /* null: the file's value stays */
                "NB_MGMT_SIGNAL=",              /* empty: unset, the file's value stays */
                "NB_MGMT_DEVICE_AUTHORIZATION_FLOW={\"Provider\": \"hosted\", \"ProviderConfig\":"
                " {\"ClientID\": \"env-cli\", \"LoginFlag\": 3}}",
                "NB_MGMT_PKCE_AUTHORIZATION_FLOW={\"ProviderConfig\": {\"RedirectURLs\": [\"http://l:1/\"]}}",
                "NB_MGMT_AUTH_AUDIENCE=env-aud",
                "NB_MGMT_AUTH_KEYS_LOCATION=https://keys.env/jwks",
                "NB_MGMT_OIDC_CONFIG_ENDPOINT=https://idp.env/.well-known/openid-configuration",
                "NB_MGMT_EXTRA_AUTH_AUDIENCE=env-extra",
                "NB_MGMT_STUNSX=[1]",           /* a longer name is another variable */
                NULL,
        };
        mgmt_netconf *n = NULL;
        cp_error err = { 0 };

        ASSERT_OK(load_env(file, env, &n, &err), &err);
        ASSERT_EQ(2, n->n_stuns);
        ASSERT_STREQ("stun:env:3478", n->stuns[0].uri);
        ASSERT_EQ(MANAGEMENT__HOST_CONFIG__PROTOCOL__TCP, n->stuns[0].protocol);
        ASSERT_TRUE(n->has_turn && n->turn_time_based && n->turn_ttl_s == 3600 && n->n_turns == 1);
        ASSERT_TRUE(n->n_relay_urls == 1 && strcmp(n->relay_urls[0], "rels://file-relay:443") == 0);
        ASSERT_TRUE(n->has_signal && strcmp(n->signal.uri, "file-signal:80") == 0);
        ASSERT_TRUE(n->device_flow && n->device_provider_ok && n->device.login_flag == 3);
        ASSERT_STREQ("env-cli", n->device.client_id);
        ASSERT_TRUE(n->pkce_flow && n->pkce.n_redirect_urls == 1);
        /* HttpConfig: each string on its own; the file's issuer stays. */
        ASSERT_STREQ("https://file-idp/", n->auth_issuer);
        ASSERT_STREQ("env-aud", n->auth_audience);
        ASSERT_STREQ("https://keys.env/jwks", n->auth_keys_location);
        ASSERT_STREQ("env-extra", n->extra_auth_audience);
        ASSERT_STREQ("oid", n->auth_user_id_claim);
        ASSERT_STREQ("https://idp.env/.well-known/openid-configuration", n->oidc_config_endpoint);
        n = mgmt_netconf_free(n);

        /* No file at all: the environment alone. */
        char *const only[] = { "NB_MGMT_SIGNAL={\"Proto\": \"https\", \"URI\": \"s:443\"}", NULL };
        ASSERT_OK(load_env(NULL, only, &n, &err), &err);
        ASSERT_TRUE(n->has_signal && n->signal.protocol == MANAGEMENT__HOST_CONFIG__PROTOCOL__HTTPS);
        ASSERT_TRUE(n->n_stuns == 0 && !n->has_turn && !n->device_flow);
        mgmt_netconf_free(n);
}

TEST(netconf_environment_errors_name_the_variable) {
        static const struct { const char *var, *needle1, *needle2; } bad[] = {
                { "NB_MGMT_STUNS=[{\"Proto\": \"udp\"", "environment variable NB_MGMT_STUNS", "not JSON" },
                { "NB_MGMT_STUNS=stun:x:3478", "environment variable NB_MGMT_STUNS", "not JSON" },
                { "NB_MGMT_STUNS=[{\"Proto\": \"quic\", \"URI\": \"x\"}]",
                  "Stuns[0].Proto in environment variable NB_MGMT_STUNS", "\"quic\"" },
                { "NB_MGMT_TURN_CONFIG=[]", "TURNConfig in environment variable NB_MGMT_TURN_CONFIG",
                  "expected an object, got an array" },
                { "NB_MGMT_RELAY={\"CredentialsTTL\": \"soon\"}",
                  "Relay.CredentialsTTL in environment variable NB_MGMT_RELAY", "duration" },
                { "NB_MGMT_SIGNAL={\"Proto\": \"https\"}", "Signal.URI in environment variable NB_MGMT_SIGNAL",
                  "empty" },
                { "NB_MGMT_DEVICE_AUTHORIZATION_FLOW={\"ProviderConfig\": {\"UseIDToken\": 1}}",
                  "DeviceAuthorizationFlow.ProviderConfig.UseIDToken in environment variable "
                  "NB_MGMT_DEVICE_AUTHORIZATION_FLOW", "true or false" },
                { "NB_MGMT_PKCE_AUTHORIZATION_FLOW=7",
                  "PKCEAuthorizationFlow in environment variable NB_MGMT_PKCE_AUTHORIZATION_FLOW",
                  "expected an object" },
        };
        mgmt_netconf *n = NULL;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *const env[] = { (char *) bad[i].var, NULL };
                cp_error err = { 0 };
                ASSERT_EQ(-EINVAL, load_env("{}", env, &n, &err));
                if (!strstr(err.message, bad[i].needle1) || !strstr(err.message, bad[i].needle2))
                        cptest_fail(__FILE__, __LINE__, "%s: %s", bad[i].var, err.message);
                ASSERT_TRUE(n == NULL);
        }
        /* A bad file key is still named with the file while another key
         * comes from the environment. */
        char *const env[] = { "NB_MGMT_STUNS=[]", NULL };
        cp_error err = { 0 };
        ASSERT_EQ(-EINVAL, load_env("{\"Signal\": 1}", env, &n, &err));
        ASSERT_TRUE(strstr(err.message, "Signal in /test/management.json") != NULL);
}

static void count_entries(const char *key, void *value, void *userdata) {
        (*(size_t *) userdata)++;
}

TEST(strmap_put_get_remove_grow) {
        mgmt_strmap *m = mgmt_strmap_new();
        static int values[1000];
        char key[32];
        size_t n = 0;

        for (int i = 0; i < 1000; i++) {
                (void) snprintf(key, sizeof key, "peer-%d", i);
                ASSERT_TRUE(mgmt_strmap_put(m, key, &values[i]) == NULL);
        }
        ASSERT_EQ(1000, mgmt_strmap_size(m));
        for (int i = 0; i < 1000; i++) {
                (void) snprintf(key, sizeof key, "peer-%d", i);
                ASSERT_TRUE(mgmt_strmap_get(m, key) == &values[i]);
        }
        /* Replacing returns the old value; the size stays. */
        ASSERT_TRUE(mgmt_strmap_put(m, "peer-7", &values[8]) == &values[7]);
        ASSERT_EQ(1000, mgmt_strmap_size(m));
        ASSERT_TRUE(mgmt_strmap_remove(m, "peer-7") == &values[8]);
        ASSERT_TRUE(mgmt_strmap_remove(m, "peer-7") == NULL);
        ASSERT_TRUE(mgmt_strmap_get(m, "peer-7") == NULL);
        ASSERT_TRUE(mgmt_strmap_get(m, "") == NULL);
        mgmt_strmap_foreach(m, count_entries, &n);
        ASSERT_EQ(999, n);
        ASSERT_TRUE(mgmt_strmap_free(m) == NULL);
        ASSERT_TRUE(mgmt_strmap_free(NULL) == NULL);
}

/* ---- the EncryptedMessage of a stream ------------------------------------- */

/* The REST client's address behind a trusted proxy (mgmt_realip_apply_headers),
 * and the limit tables made from the settings. */
TEST(realip_headers_and_limit_tables) {
        mgmt_realip *r = NULL;
        char ip[64];

        ASSERT_OK(mgmt_realip_new("127.0.0.1/32, 10.0.0.0/8", &r, NULL), NULL);
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply_headers(r, "198.51.100.1, 10.1.2.3", NULL, ip, sizeof ip);
        ASSERT_STREQ("198.51.100.1", ip);
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply_headers(r, NULL, " 198.51.100.2 ", ip, sizeof ip);
        ASSERT_STREQ("198.51.100.2", ip);
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply_headers(r, "not an address", NULL, ip, sizeof ip);
        ASSERT_STREQ("127.0.0.1", ip);
        /* X-Real-IP never overrides an X-Forwarded-For (the client's own
         * X-Real-IP passed through the proxy). */
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply_headers(r, "198.51.100.1", "203.0.113.9", ip, sizeof ip);
        ASSERT_STREQ("198.51.100.1", ip);
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply_headers(r, "junk, 10.1.2.3", "203.0.113.9", ip, sizeof ip);
        ASSERT_STREQ("127.0.0.1", ip);
        /* X-Forwarded-For on more than one line (the proxy added its
         * own): every line, in order. */
        grpc_metadata md[3] = {
                { .key = grpc_slice_from_static_string("x-forwarded-for"),
                  .value = grpc_slice_from_static_string("198.51.100.1") },
                { .key = grpc_slice_from_static_string("x-real-ip"),
                  .value = grpc_slice_from_static_string("198.51.100.2") },
                { .key = grpc_slice_from_static_string("x-forwarded-for"),
                  .value = grpc_slice_from_static_string("203.0.113.4, 10.1.2.3") },
        };
        grpc_metadata_array arr = { .count = 3, .capacity = 3, .metadata = md };
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply(r, &arr, ip, sizeof ip);
        ASSERT_STREQ("203.0.113.4", ip);
        arr.count = 2;
        snprintf(ip, sizeof ip, "127.0.0.1");
        mgmt_realip_apply(r, &arr, ip, sizeof ip);
        ASSERT_STREQ("198.51.100.1", ip);
        snprintf(ip, sizeof ip, "192.0.2.9");           /* not a trusted proxy: headers ignored */
        mgmt_realip_apply_headers(r, "198.51.100.1", "198.51.100.2", ip, sizeof ip);
        ASSERT_STREQ("192.0.2.9", ip);
        mgmt_realip_apply_headers(NULL, "198.51.100.1", NULL, ip, sizeof ip);
        ASSERT_STREQ("192.0.2.9", ip);
        mgmt_realip_free(r);

        cp_config c = { .login_rate = 60, .login_burst = 2, .setup_key_rate = 0, .setup_key_burst = 5,
                        .rest_rate = 1, .rest_burst = 1, .rest_auth_failure_rate = 1, .rest_auth_failure_burst = 1,
                        .rate_limit_keys = 16 };
        mgmt_limits *l = mgmt_limits_new(&c);
        ASSERT_TRUE(mgmt_limits_take(l, MGMT_LIMIT_LOGIN_ADDR, "a", 1, NULL));
        ASSERT_TRUE(mgmt_limits_take(l, MGMT_LIMIT_LOGIN_ADDR, "a", 1, NULL));
        int64_t retry = 0;
        ASSERT_FALSE(mgmt_limits_take(l, MGMT_LIMIT_LOGIN_ADDR, "a", 1, &retry));
        ASSERT_TRUE(retry > 0 && retry <= 1001);
        for (int i = 0; i < 100; i++)           /* rate 0: off */
                ASSERT_TRUE(mgmt_limits_take(l, MGMT_LIMIT_LOGIN_KEY, "k", 1, NULL));
        ASSERT_FALSE(cp_ratelimit_enabled(mgmt_limits_table(l, MGMT_LIMIT_LOGIN_KEY)));
        ASSERT_EQ(16, cp_ratelimit_capacity(mgmt_limits_table(l, MGMT_LIMIT_REST_TOKEN)));
        ASSERT_STREQ("rest_addr", mgmt_limit_name(MGMT_LIMIT_REST_ADDR));
        ASSERT_TRUE(mgmt_limits_take(NULL, MGMT_LIMIT_LOGIN_ADDR, "a", 1, NULL));
        mgmt_limits_free(l);
}

TEST(sealed_message_is_an_encrypted_message_that_opens) {
        uint8_t server_priv[CP_WG_KEY_LEN], server_pub[CP_WG_KEY_LEN], peer_priv[CP_WG_KEY_LEN],
                peer_pub[CP_WG_KEY_LEN];
        char server_b64[CP_WG_KEY_B64_LEN];
        cp_crypto_box_shared ours, theirs;
        cp_error err = { 0 };
        /* Bodies whose length needs one, two and three varint bytes. */
        const size_t lens[] = { 0, 1, 87, 88, 200, 16343, 16344, 70000 };

        cp_crypto_wg_keypair_new(server_priv, server_pub);
        cp_crypto_wg_keypair_new(peer_priv, peer_pub);
        cp_crypto_wg_key_format(server_pub, server_b64);
        ASSERT_OK(cp_crypto_box_shared_init(&ours, peer_pub, server_priv, &err), &err);
        ASSERT_OK(cp_crypto_box_shared_init(&theirs, server_pub, peer_priv, &err), &err);
        for (size_t i = 0; i < ELEMENTSOF(lens); i++) {
                uint8_t *plain = cp_xmalloc(lens[i] + 1), *opened = cp_xmalloc(lens[i] + 1);
                size_t len = 0;

                for (size_t j = 0; j < lens[i]; j++)
                        plain[j] = (uint8_t) (j * 7 + i);
                uint8_t *msg = mgmt_agent_seal_msg(server_b64, &ours, plain, lens[i], &len, &err);
                ASSERT_TRUE(msg != NULL);
                Management__EncryptedMessage *em = management__encrypted_message__unpack(NULL, len, msg);
                ASSERT_TRUE(em != NULL);
                ASSERT_STREQ(server_b64, em->wgpubkey);
                ASSERT_EQ(0, em->version);
                ASSERT_EQ(lens[i] + CP_BOX_OVERHEAD, em->body.len);
                ASSERT_EQ((int) lens[i], cp_crypto_box_open_shared(&theirs, em->body.data, em->body.len, opened,
                                                                   lens[i] + 1, &err));
                ASSERT_TRUE(memcmp(plain, opened, lens[i]) == 0);
                /* protoc-c packs the same message to the same bytes. */
                uint8_t *again = cp_xmalloc(len);
                ASSERT_EQ(len, management__encrypted_message__pack(em, again));
                ASSERT_TRUE(memcmp(again, msg, len) == 0);
                management__encrypted_message__free_unpacked(em, NULL);
                free(again);
                free(msg);
                free(plain);
                free(opened);
        }
        cp_crypto_box_shared_release(&ours);
        cp_crypto_box_shared_release(&theirs);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
