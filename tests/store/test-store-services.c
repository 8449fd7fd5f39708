/*
 * cp/store-services.h against the real schema: the mapping change log
 * (writers serialised by the advisory lock, so seqs commit in order),
 * service create/delete with the sealed Ed25519 session key, proxy access
 * tokens; and the REST API's two reverse-proxy hooks (proxy_announce with
 * the highest seq a request wrote, proxy_token_revoked) called after
 * commit, through cp_api in-process.
 */
#include "cp/api.h"
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/proxyauth.h"
#include "cp/store-services.h"
#include "cptest.h"
#include "testdb.h"

#include <jansson.h>
#include <pthread.h>
#include <sodium.h>

typedef struct fixture {
        cp_store *s;
        cptest_db *db;
        cp_store_account_created a;
        uint8_t key[CP_DATA_KEY_LEN];
} fixture;

static void fixture_init(fixture *f, unsigned pool) {
        cp_store_account_spec sa = { .name = "alpha" };
        cp_error err = { 0 };

        ASSERT_EQ(0, cp_crypto_init());
        f->db = cptest_db_new_migrated(pool, &f->s);
        ASSERT_OK(cp_store_account_create(f->s, &sa, &f->a, &err), &err);
        memset(f->key, 7, sizeof f->key);
}

static void fixture_done(fixture *f) {
        cp_store_free(f->s);
        cptest_db_free(f->db);
}

typedef struct writer {
        cp_store *s;
        const char *account;
        int64_t seq;
        int r;
        cp_error err;
} writer;

static void *second_writer(void *arg) {
        writer *w = arg;
        cp_store_tx *tx = NULL;

        w->r = cp_store_tx_begin(w->s, &tx, &w->err);
        if (w->r >= 0)
                w->r = cp_store_tx_proxy_change(tx, w->account, "svc-b", CP_PROXY_CHANGE_CREATED, "c", "b.c", &w->seq,
                                                &w->err);
        if (w->r >= 0) {
                w->r = cp_store_tx_commit(tx, &w->err);
                tx = NULL;
        }
        cp_store_tx_end(tx);
        return NULL;
}

/* A second writer waits on the lock while the first is open, and gets a
 * higher seq, committed after the first. */
TEST(change_log_writers_take_turns) {
        fixture f;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        int64_t seq = 0;
        pthread_t th;

        fixture_init(&f, 3);
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_OK(cp_store_tx_proxy_change(tx, f.a.account_id, "svc-a", CP_PROXY_CHANGE_MODIFIED, "c", "a.c", &seq,
                                           &err),
                  &err);
        ASSERT_TRUE(seq > 0);
        writer w = { .s = f.s, .account = f.a.account_id };
        ASSERT_EQ(0, pthread_create(&th, NULL, second_writer, &w));
        /* wait until the second writer blocks on the advisory lock (in
         * this test's database: other suites use the same lock) */
        bool waiting = false;
        for (int i = 0; i < 2000 && !waiting; i++) {
                char *n = cptest_db_query(f.db,
                                          "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                          " AND database = (SELECT oid FROM pg_database"
                                          "  WHERE datname = current_database())",
                                          0, NULL);
                waiting = strcmp(n, "1") == 0;
                free(n);
                if (!waiting)
                        usleep(5000);
        }
        ASSERT_TRUE(waiting);
        char *none = cptest_db_query(f.db, "SELECT count(*) FROM proxy_mapping_changes", 0, NULL);
        ASSERT_STREQ("0", none);        /* nothing visible yet */
        free(none);
        ASSERT_OK(cp_store_tx_commit(tx, &err), &err);
        ASSERT_EQ(0, pthread_join(th, NULL));
        ASSERT_OK(w.r, &w.err);
        ASSERT_TRUE(w.seq > seq);
        char *rows = cptest_db_query(f.db,
                                     "SELECT string_agg(service_id || ':' || op || ':' || cluster || ':' || domain, ','"
                                     " ORDER BY seq) FROM proxy_mapping_changes",
                                     0, NULL);
        ASSERT_STREQ("svc-a:1:c:a.c,svc-b:0:c:b.c", rows);
        free(rows);

        /* bad arguments write nothing */
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_EQ(-EINVAL, cp_store_tx_proxy_change(tx, f.a.account_id, "x", 3, "c", "d", NULL, &err));
        ASSERT_EQ(-EINVAL, cp_store_tx_proxy_change(tx, f.a.account_id, "x", 0, NULL, "d", NULL, &err));
        cp_store_tx_end(tx);
        fixture_done(&f);
}

TEST(service_create_delete_and_session_key) {
        fixture f;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        char id[CP_ID_LEN + 1], id2[CP_ID_LEN + 1];
        int64_t seq = 0, seq2 = -1, seq3 = 0;
        uint8_t sk[64], wrong[CP_DATA_KEY_LEN];

        fixture_init(&f, 2);
        cp_store_service_new sn = { .account_id = f.a.account_id, .name = "app", .domain = "app.c",
                                    .proxy_cluster = "c", .enabled = true,
                                    .targets = "[{\"target_id\":\"p\",\"target_type\":\"peer\"}]" };
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_OK(cp_store_tx_service_create(tx, f.key, &sn, id, &seq, &err), &err);
        sn.domain = "off.c";
        sn.enabled = false;
        ASSERT_OK(cp_store_tx_service_create(tx, f.key, &sn, id2, &seq2, &err), &err);
        ASSERT_OK(cp_store_tx_commit(tx, &err), &err);
        ASSERT_TRUE(seq > 0);
        ASSERT_EQ(0, seq2);             /* disabled: no change row */

        char *sealed = cptest_db_query1(f.db, "SELECT session_private_key FROM services WHERE id = $1", id);
        char *pub = cptest_db_query1(f.db, "SELECT session_public_key FROM services WHERE id = $1", id);
        uint8_t seed[32], pk[32];
        ASSERT_OK(cp_proxyauth_seed_open(f.key, sealed, seed, &err), &err);
        ASSERT_EQ(0, crypto_sign_seed_keypair(pk, sk, seed));
        uint8_t stored_pk[32];
        ASSERT_EQ(32, cp_crypto_b64_decode(pub, stored_pk, sizeof stored_pk));
        ASSERT_TRUE(memcmp(stored_pk, pk, 32) == 0);
        /* it signs, and the stored public key verifies */
        uint8_t sig[64];
        ASSERT_EQ(0, crypto_sign_detached(sig, NULL, (const uint8_t *) "m", 1, sk));
        ASSERT_EQ(0, crypto_sign_verify_detached(sig, (const uint8_t *) "m", 1, pk));
        memset(wrong, 8, sizeof wrong);
        ASSERT_EQ(-EBADMSG, cp_proxyauth_seed_open(wrong, sealed, seed, &err));
        free(sealed);
        free(pub);

        /* a taken domain (any account) is -EEXIST */
        sn.domain = "app.c";
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_EQ(-EEXIST, cp_store_tx_service_create(tx, f.key, &sn, NULL, NULL, &err));
        cp_store_tx_end(tx);

        /* delete: REMOVED for the enabled one, nothing for the disabled */
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_OK(cp_store_tx_service_delete(tx, f.a.account_id, id, &seq3, &err), &err);
        ASSERT_OK(cp_store_tx_service_delete(tx, f.a.account_id, id2, &seq2, &err), &err);
        ASSERT_EQ(-ENOENT, cp_store_tx_service_delete(tx, "other", id2, NULL, &err));
        cp_store_tx_end(tx);            /* the failed statement did not abort: -ENOENT is no SQL error */
        char *ops = cptest_db_query(f.db, "SELECT string_agg(op::text || domain, ',' ORDER BY seq) FROM proxy_mapping_changes",
                                    0, NULL);
        ASSERT_STREQ("0app.c", ops);    /* the deletes were rolled back */
        free(ops);
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_OK(cp_store_tx_service_delete(tx, f.a.account_id, id, &seq3, &err), &err);
        ASSERT_OK(cp_store_tx_commit(tx, &err), &err);
        ASSERT_TRUE(seq3 > seq);
        ops = cptest_db_query(f.db, "SELECT string_agg(op::text || domain, ',' ORDER BY seq) FROM proxy_mapping_changes",
                              0, NULL);
        ASSERT_STREQ("0app.c,2app.c", ops);
        free(ops);
        fixture_done(&f);
}

TEST(proxy_tokens) {
        fixture f;
        cp_store_tx *tx = NULL;
        cp_error err = { 0 };
        cp_store_proxy_token_created g, a;
        char hash[CP_SHA256_B64_LEN];

        fixture_init(&f, 2);
        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        ASSERT_OK(cp_store_tx_proxy_token_create(tx, NULL, "global", 0, "", &g, &err), &err);
        ASSERT_OK(cp_store_tx_proxy_token_create(tx, f.a.account_id, "mine", 60, "u", &a, &err), &err);
        ASSERT_EQ(-EINVAL, cp_store_tx_proxy_token_create(tx, NULL, "", 0, "", &a, &err));
        ASSERT_EQ(-EINVAL, cp_store_tx_proxy_token_create(tx, NULL, "x", -1, "", &a, &err));
        ASSERT_OK(cp_store_tx_commit(tx, &err), &err);
        ASSERT_EQ(0, cp_crypto_token_check(CP_PROXY_TOKEN_PREFIX, g.plain));
        ASSERT_EQ(-EINVAL, cp_crypto_token_check(CP_PAT_PREFIX, g.plain));
        cp_crypto_pat_hash(g.plain, hash);
        char *stored = cptest_db_query1(f.db, "SELECT hashed_token FROM proxy_access_tokens WHERE id = $1", g.id);
        ASSERT_STREQ(hash, stored);
        free(stored);
        char *exp = cptest_db_query1(f.db,
                                     "SELECT expires_at IS NULL FROM proxy_access_tokens WHERE id = $1", g.id);
        ASSERT_STREQ("t", exp);
        free(exp);

        ASSERT_OK(cp_store_tx_begin(f.s, &tx, &err), &err);
        /* scope: the account's token is not management-wide, and back */
        ASSERT_EQ(-ENOENT, cp_store_tx_proxy_token_revoke(tx, NULL, a.id, &err));
        ASSERT_EQ(-ENOENT, cp_store_tx_proxy_token_revoke(tx, f.a.account_id, g.id, &err));
        ASSERT_EQ(1, cp_store_tx_proxy_token_revoke(tx, f.a.account_id, a.id, &err));
        ASSERT_EQ(0, cp_store_tx_proxy_token_revoke(tx, f.a.account_id, a.id, &err));
        ASSERT_EQ(1, cp_store_tx_proxy_token_revoke(tx, NULL, g.id, &err));
        ASSERT_OK(cp_store_tx_commit(tx, &err), &err);
        char *n = cptest_db_query(f.db, "SELECT count(*) FROM proxy_access_tokens WHERE revoked", 0, NULL);
        ASSERT_STREQ("2", n);
        free(n);
        fixture_done(&f);
}

/* ---- the API hooks -------------------------------------------------------------------- */

typedef struct hooks {
        int64_t seqs[8];
        int n_seqs;
        char revoked[8][64];
        int n_revoked;
} hooks;

static void on_announce(int64_t seq, void *ud) {
        hooks *h = ud;
        if (h->n_seqs < 8)
                h->seqs[h->n_seqs++] = seq;
}

static void on_revoked(const char *id, void *ud) {
        hooks *h = ud;
        if (h->n_revoked < 8)
                (void) snprintf(h->revoked[h->n_revoked++], 64, "%s", id);
}

static json_t *call(cp_api *api, const char *user, const char *method, const char *path, const char *body,
                    int want) {
        cp_api_request req = { .method = method, .path = path, .body = body, .body_len = body ? strlen(body) : 0,
                               .as_user_id = user };
        cp_api_response resp;
        cp_api_response_init(&resp);
        cp_api_handle(api, &req, &resp);
        if (resp.status != want)
                fprintf(stderr, "# %s %s -> %d: %s\n", method, path, resp.status, resp.body.buf ? resp.body.buf : "");
        ASSERT_EQ(want, resp.status);
        json_t *j = resp.body.len ? json_loadb(resp.body.buf, resp.body.len, 0, NULL) : NULL;
        cp_api_response_release(&resp);
        return j;
}

static int64_t max_seq(fixture *f) {
        char *v = cptest_db_query(f->db, "SELECT COALESCE(max(seq), 0) FROM proxy_mapping_changes", 0, NULL);
        int64_t n = strtoll(v, NULL, 10);
        free(v);
        return n;
}

TEST(api_calls_the_proxy_hooks_after_commit) {
        fixture f;
        hooks h = { 0 };
        cp_api *api = NULL;
        cp_error err = { 0 };
        char path[128], body[512];

        fixture_init(&f, 2);
        free(cptest_db_query1(f.db,
                              "INSERT INTO proxies (id, session_id, cluster_address, status) VALUES ('p1', 's', $1,"
                              " 'connected')",
                              "px.test"));
        free(cptest_db_query1(f.db,
                              "INSERT INTO peers (id, account_id, key, ip, dns_label, name) VALUES ('peer1', $1, 'k',"
                              " '100.64.0.9', 'peer1', 'peer1')",
                              f.a.account_id));
        cp_api_options o = { .store = f.s, .proxy_announce = on_announce, .proxy_token_revoked = on_revoked,
                             .proxy_announce_userdata = &h, .data_key = f.key };
        ASSERT_OK(cp_api_new(&o, &api, &err), &err);

#define SVC(domain)                                                                                         \
        "{\"name\":\"a\",\"domain\":\"" domain "\",\"enabled\":true,\"targets\":[{\"target_id\":\"peer1\","       \
        "\"target_type\":\"peer\",\"protocol\":\"http\",\"port\":80,\"enabled\":true}]}"
        (void) snprintf(body, sizeof body, "%s", SVC("a.px.test"));
        json_t *s = call(api, f.a.user_id, "POST", "/api/reverse-proxies/services", body, 200);
        ASSERT_EQ(1, h.n_seqs);
        ASSERT_EQ(max_seq(&f), h.seqs[0]);
        /* a domain change writes two rows: the hook gets the higher seq once */
        (void) snprintf(path, sizeof path, "/api/reverse-proxies/services/%s", json_string_value(json_object_get(s, "id")));
        (void) snprintf(body, sizeof body, "%s", SVC("b.px.test"));
        json_decref(call(api, f.a.user_id, "PUT", path, body, 200));
        ASSERT_EQ(2, h.n_seqs);
        ASSERT_EQ(max_seq(&f), h.seqs[1]);
        ASSERT_EQ(h.seqs[0] + 2, h.seqs[1]);
        /* a failed request calls nothing */
        json_decref(call(api, f.a.user_id, "POST", "/api/reverse-proxies/services", "{\"name\":\"\"}", 422));
        ASSERT_EQ(2, h.n_seqs);
        json_decref(call(api, f.a.user_id, "DELETE", path, NULL, 200));
        ASSERT_EQ(3, h.n_seqs);
        json_decref(s);

        /* a token revocation: the revoked hook, no announce */
        json_t *t = call(api, f.a.user_id, "POST", "/api/reverse-proxies/proxy-tokens", "{\"name\":\"t\"}", 200);
        const char *tid = json_string_value(json_object_get(t, "id"));
        (void) snprintf(path, sizeof path, "/api/reverse-proxies/proxy-tokens/%s", tid);
        json_decref(call(api, f.a.user_id, "DELETE", path, NULL, 200));
        ASSERT_EQ(1, h.n_revoked);
        ASSERT_STREQ(tid, h.revoked[0]);
        ASSERT_EQ(3, h.n_seqs);
        json_decref(call(api, f.a.user_id, "DELETE", "/api/reverse-proxies/proxy-tokens/nope", NULL, 404));
        ASSERT_EQ(1, h.n_revoked);
        json_decref(t);
        cp_api_free(api);
        fixture_done(&f);
}

int main(int argc, char **argv) {
        return cptest_main(argc, argv);
}
