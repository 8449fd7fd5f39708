/* Peers for login and registration (cp/store-peers.h) against a real
 * PostgreSQL: setup-key registration and its limits under races, address
 * and label allocation, login updates, logout, and account scoping. */
#include "cp/base.h"
#include "cp/crypto.h"
#include "cp/util.h"
#include "cp/store-peers.h"
#include "cptest.h"
#include "testdb.h"

#include <pthread.h>

/* A fresh WireGuard-like key: 44 base64 characters, unique. */
static void wg_key(char out[45]) {
        uint8_t raw[32];
        cp_random_bytes(raw, sizeof raw);
        cp_crypto_b64_encode(raw, sizeof raw, out, 45);
}

typedef struct key_spec {
        const char *type;               /* "reusable" (default) or "one-off" */
        int usage_limit;
        bool revoked;
        int expires_in_s;               /* 0 = never, < 0 = already expired */
        bool allow_extra_dns_labels;
        bool ephemeral;
        const char *auto_groups;        /* text[] literal, NULL = '{}' */
        int used_times;
} key_spec;

/* Inserts a setup key into account; returns its plain text in key and
 * its id in id. */
static void make_key(cptest_db *db, const char *account, const key_spec *ks, char key[CP_SETUP_KEY_LEN + 1],
                     char id[CP_ID_LEN + 1]) {
        char hash[CP_SHA256_B64_LEN], masked[10], limit[12], exp[12], used[12];
        cp_crypto_setup_key_new(key);
        ASSERT_OK(cp_crypto_setup_key_hash(key, hash), NULL);
        cp_crypto_setup_key_mask(key, masked);
        cp_id_new(id);
        (void) snprintf(limit, sizeof limit, "%d", ks->usage_limit);
        (void) snprintf(exp, sizeof exp, "%d", ks->expires_in_s);
        (void) snprintf(used, sizeof used, "%d", ks->used_times);
        const char *p[12] = { id, account, hash, masked, ks->type ? ks->type : "reusable", limit,
                              ks->revoked ? "true" : "false", exp,
                              ks->allow_extra_dns_labels ? "true" : "false",
                              ks->ephemeral ? "true" : "false", ks->auto_groups ? ks->auto_groups : "{}", used };
        free(cptest_db_query(db,
                             "INSERT INTO setup_keys (id, account_id, key, key_secret, name, type, usage_limit,"
                             " revoked, expires_at, allow_extra_dns_labels, ephemeral, auto_groups, used_times)"
                             " VALUES ($1, $2, $3, $4, 'test key', $5, $6::int, $7::boolean,"
                             " CASE WHEN $8::int = 0 THEN NULL"
                             " ELSE CURRENT_TIMESTAMP + make_interval(secs => $8::int) END,"
                             " $9::boolean, $10::boolean, $11::text[], $12::int)", 12, p));
}

static void make_group(cptest_db *db, const char *account, const char *name, char id[CP_ID_LEN + 1]) {
        cp_id_new(id);
        const char *p[3] = { id, account, name };
        free(cptest_db_query(db, "INSERT INTO groups (id, account_id, name) VALUES ($1, $2, $3)", 3, p));
}

static const cp_store_peer_netaddr test_addrs[] = {
        { "192.168.1.10/24", "aa:bb:cc:00:00:02" },
        { "not-a-cidr", "aa:bb:cc:00:00:03" },
        { "10.0.0.1", "aa:bb:cc:00:00:04" },            /* no prefix: dropped */
        { "fe80::1/64", "aa:bb:cc:00:00:01" },
};
static const int32_t test_caps[] = { 1, 2 };
static const cp_store_peer_file test_files[] = { { "/usr/bin/zsh", true, false } };

static cp_store_peer_meta test_meta(const char *hostname) {
        return (cp_store_peer_meta) {
                .hostname = hostname, .go_os = "linux", .kernel = "Linux", .core = "12",
                .platform = "x86_64", .os = "Debian GNU/Linux", .os_version = "",
                .wt_version = "0.60.0", .kernel_version = "6.1.0",
                .environment_cloud = "", .environment_platform = "",
                .network_addresses = test_addrs, .n_network_addresses = ELEMENTSOF(test_addrs),
                .files = test_files, .n_files = ELEMENTSOF(test_files),
                .flags = { .rosenpass_enabled = true, .lazy_connection_enabled = true },
                .capabilities = test_caps, .n_capabilities = ELEMENTSOF(test_caps),
                .sync_message_version = 1,
        };
}

typedef struct fixture {
        cp_store *s;
        cptest_db *db;
        cp_store_account_created a;
} fixture;

static void fixture_init(fixture *f, unsigned pool) {
        cp_store_account_spec spec = { .name = "admin" };
        cp_error err = { 0 };

        f->db = cptest_db_new_migrated(pool, &f->s);
        ASSERT_OK(cp_store_account_create(f->s, &spec, &f->a, &err), &err);
}

static void fixture_done(fixture *f) {
        cp_store_free(f->s);
        cptest_db_free(f->db);
}

static int reg(fixture *f, const char *setup_key, const char *hostname, char wg[45], cp_store_peer **ret,
               int64_t *serial, cp_error *err) {
        cp_store_peer_meta meta = test_meta(hostname);
        cp_store_peer_register_req req = {
                .setup_key = setup_key, .wg_pub_key = wg, .meta = &meta, .ssh_key = "ssh-ed25519 AAAA test",
                .connection_ip = "198.51.100.7", .dns_domain = "netbird.cloud",
        };
        wg_key(wg);
        return cp_store_peer_register(f->s, &req, ret, serial, err);
}

TEST(dns_label_from_hostname_follows_netbird) {
        char out[CP_STORE_DNS_LABEL_MAX + 1];

        ASSERT_EQ(9, cp_store_dns_label_from_hostname("My-Laptop.local", out));
        ASSERT_STREQ("my-laptop", out);
        ASSERT_EQ(9, cp_store_dns_label_from_hostname("host_name", out));
        ASSERT_STREQ("host-name", out);
        cp_store_dns_label_from_hostname("a__ +b", out);
        ASSERT_STREQ("a-b", out);
        cp_store_dns_label_from_hostname("-edge-", out);
        ASSERT_STREQ("-edge-", out);
        cp_store_dns_label_from_hostname("bücher", out);
        ASSERT_STREQ("xn--bcher-kva", out);
        cp_store_dns_label_from_hostname("München-PC", out);
        ASSERT_STREQ("xn--mnchen-pc-q9a", out);
        cp_store_dns_label_from_hostname("ÄÖÜ日本.example", out);
        ASSERT_STREQ("xn--7ba0bs4754hzlb", out);
        ASSERT_EQ(59, cp_store_dns_label_from_hostname(
                "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij", out));
        ASSERT_EQ(-EINVAL, cp_store_dns_label_from_hostname("", out));
        ASSERT_EQ(-EINVAL, cp_store_dns_label_from_hostname(".local", out));
        ASSERT_EQ(-EINVAL, cp_store_dns_label_from_hostname(NULL, out));
}

TEST(register_happy_path) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], key_id[CP_ID_LEN + 1], g1[CP_ID_LEN + 1], g2[CP_ID_LEN + 1];
        char wg[45], groups[64];
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        int64_t serial = -1;

        fixture_init(&f, 1);
        make_group(f.db, f.a.account_id, "dev", g1);
        make_group(f.db, f.a.account_id, "ops", g2);
        (void) snprintf(groups, sizeof groups, "{%s,%s}", g1, g2);
        make_key(f.db, f.a.account_id, &(key_spec) { .auto_groups = groups }, key, key_id);

        ASSERT_OK(reg(&f, key, "Dev-Box.example.com", wg, &p, &serial, &err), &err);
        ASSERT_EQ(1, serial);
        ASSERT_STREQ(f.a.account_id, p->account_id);
        ASSERT_STREQ(wg, p->key);
        ASSERT_STREQ("dev-box", p->dns_label);
        ASSERT_STREQ("Dev-Box.example.com", p->name);
        ASSERT_STREQ("", p->user_id);
        ASSERT_STREQ("ssh-ed25519 AAAA test", p->ssh_key);
        ASSERT_STREQ("198.51.100.7", p->connection_ip);
        ASSERT_FALSE(p->login_expiration_enabled);
        ASSERT_FALSE(p->inactivity_expiration_enabled);
        ASSERT_FALSE(p->ephemeral);
        ASSERT_FALSE(p->status.connected);
        ASSERT_FALSE(p->status.login_expired);
        ASSERT_EQ(0, p->status.session_started_at);
        ASSERT_TRUE(p->last_login_unix_ns > 0);
        ASSERT_TRUE(p->created_at_unix_ns > 0);
        ASSERT_TRUE(llabs(p->created_at_unix_ns - cp_now_unix_ns()) < 60LL * 1000000000LL);
        /* Meta mapping: os_version falls back to core, bad CIDRs dropped,
         * addresses sorted by MAC. */
        ASSERT_STREQ("12", p->meta.os_version);
        ASSERT_STREQ("0.60.0", p->meta.wt_version);
        ASSERT_EQ(2, p->meta.n_network_addresses);
        ASSERT_STREQ("fe80::1/64", p->meta.network_addresses[0].net_ip);
        ASSERT_STREQ("192.168.1.10/24", p->meta.network_addresses[1].net_ip);
        ASSERT_STREQ("aa:bb:cc:00:00:02", p->meta.network_addresses[1].mac);
        ASSERT_EQ(1, p->meta.n_files);
        ASSERT_STREQ("/usr/bin/zsh", p->meta.files[0].path);
        ASSERT_TRUE(p->meta.files[0].exist);
        ASSERT_TRUE(p->meta.flags.rosenpass_enabled);
        ASSERT_TRUE(p->meta.flags.lazy_connection_enabled);
        ASSERT_FALSE(p->meta.flags.block_inbound);
        ASSERT_EQ(2, p->meta.n_capabilities);
        ASSERT_EQ(2, p->meta.capabilities[1]);
        ASSERT_EQ(1, p->meta.sync_message_version);

        /* Inside the /16, never the network or broadcast address. */
        ASSERT_DB_QUERY2("t", f.db, "SELECT $1::inet << network_net AND $1::inet <> host(network_net)::inet"
                                " AND $1::inet <> host(broadcast(network_net))::inet FROM accounts WHERE id = $2",
                     p->ip, f.a.account_id);
        ASSERT_DB_QUERY2("t", f.db, "SELECT user_id IS NULL FROM peers WHERE id = $1", p->id, NULL);
        /* All + both auto-groups, in group_peers and in the record. */
        ASSERT_EQ(3, p->n_group_ids);
        ASSERT_DB_QUERY2("All,dev,ops", f.db, "SELECT string_agg(g.name, ',' ORDER BY g.name) FROM group_peers gp"
                                          " JOIN groups g ON g.id = gp.group_id WHERE gp.peer_id = $1"
                                          " AND gp.account_id = $2", p->id, f.a.account_id);
        ASSERT_DB_QUERY2("1", f.db, "SELECT used_times FROM setup_keys WHERE id = $1", key_id, NULL);
        ASSERT_DB_QUERY2("t", f.db, "SELECT last_used IS NOT NULL FROM setup_keys WHERE id = $1", key_id, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT network_serial FROM accounts WHERE id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2(key_id, f.db, "SELECT initiator_id FROM events WHERE activity = 1 AND target_id = $1",
                     p->id, NULL);
        const char *ev[3] = { p->id, p->ip, f.a.account_id };
        char *ok = cptest_db_query(f.db,
                                   "SELECT meta->>'setup_key_name' = 'test key' AND meta->>'name' = 'Dev-Box.example.com'"
                                   " AND meta->>'fqdn' = 'dev-box.netbird.cloud' AND meta->>'ip' = $2"
                                   " AND meta ? 'created_at' AND account_id = $3"
                                   " FROM events WHERE activity = 1 AND target_id = $1", 3, ev);
        ASSERT_STREQ("t", ok);
        free(ok);
        cp_store_peer_free(p);

        /* get_by_key finds it from the key alone; unknown keys are ENOENT. */
        ASSERT_OK(cp_store_peer_get_by_key(f.s, wg, &p, &err), &err);
        ASSERT_STREQ(f.a.account_id, p->account_id);
        ASSERT_STREQ("dev-box", p->dns_label);
        ASSERT_EQ(3, p->n_group_ids);
        cp_store_peer_free(p);
        p = NULL;
        ASSERT_EQ(-ENOENT, cp_store_peer_get_by_key(f.s, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &p, &err));
        ASSERT_TRUE(p == NULL);
        fixture_done(&f);
}

TEST(account_settings_for_login) {
        fixture f;
        cp_store_account_settings st;
        cp_error err = { 0 };

        fixture_init(&f, 1);
        ASSERT_OK(cp_store_account_get_settings(f.s, f.a.account_id, &st, &err), &err);
        ASSERT_STREQ(f.a.network_cidr, st.network_cidr);
        ASSERT_EQ(16, st.network_prefix_len);
        ASSERT_STREQ("", st.dns_domain);
        ASSERT_TRUE(st.login_expiration_enabled);
        ASSERT_EQ(86400000000000LL, st.login_expiration_ns);
        ASSERT_FALSE(st.inactivity_expiration_enabled);
        ASSERT_TRUE(st.routing_peer_dns_resolution_enabled);
        ASSERT_EQ(0, st.network_serial);
        ASSERT_EQ(-ENOENT, cp_store_account_get_settings(f.s, "nope", &st, &err));
        fixture_done(&f);
}

TEST(lookup_reads_peer_settings_and_clock_at_once) {
        fixture f;
        char wg[45];
        cp_store_peer *p = NULL, *full = NULL;
        cp_store_account_settings st;
        cp_error err = { 0 };
        int64_t now = 0;

        fixture_init(&f, 1);
        ASSERT_OK(reg(&f, f.a.setup_key, "look", wg, &full, NULL, &err), &err);
        char *before = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0,
                                       NULL);
        ASSERT_OK(cp_store_peer_lookup(f.s, wg, &p, &st, &now, &err), &err);
        char *after = cptest_db_query(f.db, "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint", 0,
                                      NULL);
        /* The record Login and Sync use: the same as get's, but for the
         * JSON parts, which it leaves empty. */
        ASSERT_STREQ(full->id, p->id);
        ASSERT_STREQ(full->account_id, p->account_id);
        ASSERT_STREQ(full->ip, p->ip);
        ASSERT_STREQ(full->dns_label, p->dns_label);
        ASSERT_STREQ(full->ssh_key, p->ssh_key);
        ASSERT_STREQ(full->connection_ip, p->connection_ip);
        ASSERT_STREQ(full->meta.hostname, p->meta.hostname);
        ASSERT_STREQ(full->meta.wt_version, p->meta.wt_version);
        ASSERT_EQ(full->last_login_unix_ns, p->last_login_unix_ns);
        ASSERT_EQ(full->status.session_started_at, p->status.session_started_at);
        ASSERT_TRUE(full->n_group_ids > 0);
        ASSERT_EQ(0, p->n_group_ids);
        ASSERT_TRUE(p->group_ids != NULL && p->group_ids[0] == NULL);
        ASSERT_TRUE(full->meta.n_network_addresses > 0);
        ASSERT_EQ(0, p->meta.n_network_addresses);
        ASSERT_EQ(0, p->n_extra_dns_labels);
        /* The account's settings, as cp_store_account_get_settings reads them. */
        cp_store_account_settings want;
        ASSERT_OK(cp_store_account_get_settings(f.s, f.a.account_id, &want, &err), &err);
        ASSERT_STREQ(want.network_cidr, st.network_cidr);
        ASSERT_EQ(want.network_prefix_len, st.network_prefix_len);
        ASSERT_STREQ(want.dns_domain, st.dns_domain);
        ASSERT_EQ(want.login_expiration_enabled, st.login_expiration_enabled);
        ASSERT_EQ(want.login_expiration_ns, st.login_expiration_ns);
        ASSERT_EQ(want.inactivity_expiration_enabled, st.inactivity_expiration_enabled);
        ASSERT_EQ(want.routing_peer_dns_resolution_enabled, st.routing_peer_dns_resolution_enabled);
        ASSERT_EQ(want.lazy_connection_enabled, st.lazy_connection_enabled);
        ASSERT_EQ(want.peer_approval_enabled, st.peer_approval_enabled);
        ASSERT_EQ(want.network_serial, st.network_serial);
        /* The database clock of that statement, in ns. */
        ASSERT_TRUE(now / 1000 >= strtoll(before, NULL, 10));
        ASSERT_TRUE(now / 1000 <= strtoll(after, NULL, 10));
        ASSERT_EQ(0, now % 1000);
        free(before);
        free(after);
        cp_store_peer_free(p);
        cp_store_peer_free(full);
        p = NULL;
        ASSERT_EQ(-ENOENT, cp_store_peer_lookup(f.s, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &p, &st, &now, &err));
        ASSERT_TRUE(p == NULL);
        fixture_done(&f);
}

TEST(label_collision_falls_back_to_ip_octets) {
        fixture f;
        char wg[45], want[80];
        cp_store_peer *p1 = NULL, *p2 = NULL, *p3 = NULL;
        cp_error err = { 0 };
        unsigned o1, o2, o3, o4;

        fixture_init(&f, 1);
        ASSERT_OK(reg(&f, f.a.setup_key, "laptop", wg, &p1, NULL, &err), &err);
        ASSERT_OK(reg(&f, f.a.setup_key, "LAPTOP.home", wg, &p2, NULL, &err), &err);
        ASSERT_OK(reg(&f, f.a.setup_key, "laptop", wg, &p3, NULL, &err), &err);
        ASSERT_STREQ("laptop", p1->dns_label);
        ASSERT_EQ(4, sscanf(p2->ip, "%u.%u.%u.%u", &o1, &o2, &o3, &o4));
        (void) snprintf(want, sizeof want, "laptop-%u-%u", o3, o4);
        ASSERT_STREQ(want, p2->dns_label);
        ASSERT_EQ(4, sscanf(p3->ip, "%u.%u.%u.%u", &o1, &o2, &o3, &o4));
        (void) snprintf(want, sizeof want, "laptop-%u-%u", o3, o4);
        ASSERT_STREQ(want, p3->dns_label);
        cp_store_peer_free(p1);
        cp_store_peer_free(p2);
        cp_store_peer_free(p3);

        /* A 59-character label plus "-255-255" still fits 63. */
        char host[70];
        memset(host, 'x', 65);
        host[65] = '\0';
        ASSERT_OK(reg(&f, f.a.setup_key, host, wg, &p1, NULL, &err), &err);
        ASSERT_OK(reg(&f, f.a.setup_key, host, wg, &p2, NULL, &err), &err);
        ASSERT_EQ(59, strlen(p1->dns_label));
        ASSERT_TRUE(strlen(p2->dns_label) <= 63);
        ASSERT_EQ(0, strncmp(p2->dns_label, host, 55));
        cp_store_peer_free(p1);
        cp_store_peer_free(p2);
        fixture_done(&f);
}

TEST(hundred_registrations_get_distinct_addresses_and_labels) {
        fixture f;
        char wg[45], host[32];
        cp_error err = { 0 };
        int64_t serial = 0;

        fixture_init(&f, 1);
        for (int i = 0; i < 100; i++) {
                cp_store_peer *p = NULL;
                /* Half share one hostname, so half the labels fall back. */
                (void) snprintf(host, sizeof host, i % 2 ? "same" : "host-%d", i);
                ASSERT_OK(reg(&f, f.a.setup_key, host, wg, &p, &serial, &err), &err);
                ASSERT_EQ(i + 1, serial);
                cp_store_peer_free(p);
        }
        ASSERT_DB_QUERY2("100", f.db, "SELECT count(DISTINCT ip) FROM peers WHERE account_id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2("100", f.db, "SELECT count(DISTINCT dns_label) FROM peers WHERE account_id = $1",
                     f.a.account_id, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM peers p JOIN accounts a ON a.id = p.account_id"
                                " WHERE NOT (p.ip << a.network_net) OR p.ip = host(a.network_net)::inet"
                                " OR p.ip = host(broadcast(a.network_net))::inet", NULL, NULL);
        ASSERT_DB_QUERY2("100", f.db, "SELECT used_times FROM setup_keys WHERE account_id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2("100", f.db, "SELECT count(*) FROM group_peers WHERE account_id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2("100", f.db, "SELECT count(*) FROM events WHERE activity = 1 AND account_id = $1",
                     f.a.account_id, NULL);
        fixture_done(&f);
}

/* Registers with a key that must be refused; nothing may change. */
static void assert_refused(fixture *f, const char *key, const char *key_id) {
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        char wg[45];
        int64_t serial = -1;
        char *before = cptest_db_query2(f->db, "SELECT used_times FROM setup_keys WHERE id = $1", key_id, NULL);

        ASSERT_EQ(-ENOKEY, reg(f, key, "refused", wg, &p, &serial, &err));
        ASSERT_STREQ("setup key is invalid", err.message);
        ASSERT_TRUE(p == NULL);
        ASSERT_EQ(-1, serial);
        ASSERT_DB_QUERY2(before, f->db, "SELECT used_times FROM setup_keys WHERE id = $1", key_id, NULL);
        ASSERT_DB_QUERY2("0", f->db, "SELECT count(*) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("0", f->db, "SELECT network_serial FROM accounts WHERE id = $1", f->a.account_id, NULL);
        ASSERT_DB_QUERY2("0", f->db, "SELECT count(*) FROM events WHERE activity = 1", NULL, NULL);
        free(before);
}

TEST(invalid_keys_are_refused_without_writing) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1], wg[45];
        cp_error err = { 0 };

        fixture_init(&f, 1);
        make_key(f.db, f.a.account_id, &(key_spec) { .expires_in_s = -60 }, key, id);
        assert_refused(&f, key, id);
        make_key(f.db, f.a.account_id, &(key_spec) { .revoked = true }, key, id);
        assert_refused(&f, key, id);
        make_key(f.db, f.a.account_id, &(key_spec) { .usage_limit = 2, .used_times = 2 }, key, id);
        assert_refused(&f, key, id);
        make_key(f.db, f.a.account_id, &(key_spec) { .type = "one-off", .used_times = 1 }, key, id);
        assert_refused(&f, key, id);
        /* Unknown, empty and absurd keys. */
        char unknown[CP_SETUP_KEY_LEN + 1];
        cp_crypto_setup_key_new(unknown);
        assert_refused(&f, unknown, id);
        assert_refused(&f, "", id);
        ASSERT_EQ(-ENOKEY, reg(&f, NULL, "refused", wg, NULL, NULL, &err));
        fixture_done(&f);
}

TEST(lower_case_setup_key_is_accepted) {
        fixture f;
        char lower[CP_SETUP_KEY_LEN + 1], wg[45];
        cp_error err = { 0 };

        fixture_init(&f, 1);
        for (size_t i = 0; i <= CP_SETUP_KEY_LEN; i++)
                lower[i] = (char) (f.a.setup_key[i] >= 'A' && f.a.setup_key[i] <= 'Z' ?
                                   f.a.setup_key[i] - 'A' + 'a' : f.a.setup_key[i]);
        ASSERT_TRUE(strcmp(lower, f.a.setup_key) != 0);
        ASSERT_OK(reg(&f, lower, "lower", wg, NULL, NULL, &err), &err);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM peers", NULL, NULL);
        fixture_done(&f);
}

TEST(duplicate_peer_key_rolls_the_claim_back) {
        fixture f;
        char wg[45];
        cp_store_peer_meta meta = test_meta("dup");
        cp_store_peer_register_req req = { .setup_key = NULL, .wg_pub_key = wg, .meta = &meta };
        cp_error err = { 0 };
        int64_t serial = -1;

        fixture_init(&f, 1);
        req.setup_key = f.a.setup_key;
        wg_key(wg);
        ASSERT_OK(cp_store_peer_register(f.s, &req, NULL, &serial, &err), &err);
        ASSERT_EQ(1, serial);
        ASSERT_EQ(-EEXIST, cp_store_peer_register(f.s, &req, NULL, &serial, &err));
        ASSERT_EQ(1, serial);
        ASSERT_DB_QUERY2("1", f.db, "SELECT used_times FROM setup_keys WHERE account_id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT network_serial FROM accounts", NULL, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM events WHERE activity = 1", NULL, NULL);

        /* The same key in another account is a duplicate too. */
        cp_store_account_spec spec = { .name = "other" };
        cp_store_account_created b;
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        req.setup_key = b.setup_key;
        ASSERT_EQ(-EEXIST, cp_store_peer_register(f.s, &req, NULL, NULL, &err));
        ASSERT_DB_QUERY2("0", f.db, "SELECT used_times FROM setup_keys WHERE account_id = $1", b.account_id, NULL);
        fixture_done(&f);
}

TEST(extra_dns_labels_need_a_key_that_allows_them) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1], wg[45];
        const char *labels[2] = { "Web", "api.internal" };
        const char *bad[1] = { "-bad" };
        cp_store_peer_meta meta = test_meta("labels");
        cp_store_peer_register_req req = { .wg_pub_key = wg, .meta = &meta,
                                           .extra_dns_labels = labels, .n_extra_dns_labels = 2 };
        cp_store_peer *p = NULL;
        cp_error err = { 0 };

        fixture_init(&f, 1);
        wg_key(wg);
        req.setup_key = f.a.setup_key;          /* the default key does not allow them */
        ASSERT_EQ(-EPERM, cp_store_peer_register(f.s, &req, NULL, NULL, &err));
        ASSERT_DB_QUERY2("0", f.db, "SELECT used_times FROM setup_keys WHERE id = $1", f.a.setup_key_id, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM peers", NULL, NULL);

        make_key(f.db, f.a.account_id, &(key_spec) { .allow_extra_dns_labels = true, .ephemeral = true }, key, id);
        req.setup_key = key;
        req.extra_dns_labels = bad;
        req.n_extra_dns_labels = 1;
        ASSERT_EQ(-EINVAL, cp_store_peer_register(f.s, &req, NULL, NULL, &err));
        req.extra_dns_labels = labels;
        req.n_extra_dns_labels = 2;
        ASSERT_OK(cp_store_peer_register(f.s, &req, &p, NULL, &err), &err);
        ASSERT_TRUE(p->allow_extra_dns_labels);
        ASSERT_TRUE(p->ephemeral);
        ASSERT_EQ(2, p->n_extra_dns_labels);
        ASSERT_STREQ("web", p->extra_dns_labels[0]);
        ASSERT_STREQ("api.internal", p->extra_dns_labels[1]);

        /* At login: allowed for this peer, refused for one that is not. */
        cp_store_peer_login_req lr = { .n_extra_dns_labels = 1 };
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &lr, NULL, NULL, &err), &err);
        cp_store_peer *plain = NULL;
        ASSERT_OK(reg(&f, f.a.setup_key, "plain", wg, &plain, NULL, &err), &err);
        ASSERT_EQ(-EPERM, cp_store_peer_login_update(f.s, f.a.account_id, plain->id, &lr, NULL, NULL, &err));
        cp_store_peer_free(plain);
        cp_store_peer_free(p);
        fixture_done(&f);
}

TEST(auto_groups_of_other_accounts_are_ignored) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1], wg[45], foreign[CP_ID_LEN + 1], groups[64];
        cp_store_account_spec spec = { .name = "b" };
        cp_store_account_created b;
        cp_store_peer *p = NULL;
        cp_error err = { 0 };

        fixture_init(&f, 1);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        make_group(f.db, b.account_id, "theirs", foreign);
        (void) snprintf(groups, sizeof groups, "{%s,missing}", foreign);
        make_key(f.db, f.a.account_id, &(key_spec) { .auto_groups = groups }, key, id);
        ASSERT_OK(reg(&f, key, "mine", wg, &p, NULL, &err), &err);
        ASSERT_EQ(1, p->n_group_ids);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM group_peers WHERE group_id = $1", foreign, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT network_serial FROM accounts WHERE id = $1", b.account_id, NULL);
        cp_store_peer_free(p);
        fixture_done(&f);
}

/* ---- races ----------------------------------------------------------------- */

#define RACERS 8

typedef struct racer {
        fixture *f;
        const char *key;
        pthread_barrier_t *start;
        int r;
} racer;

static void *racer_main(void *arg) {
        racer *rc = arg;
        cp_store_peer_meta meta = test_meta("racer");
        char wg[45];
        cp_store_peer_register_req req = { .setup_key = rc->key, .wg_pub_key = wg, .meta = &meta };

        wg_key(wg);
        pthread_barrier_wait(rc->start);
        rc->r = cp_store_peer_register(rc->f->s, &req, NULL, NULL, NULL);
        return NULL;
}

/* keys: one key for everyone (key) or one per racer (keys[i]). */
static int race_keys(fixture *f, const char *key, char keys[][CP_SETUP_KEY_LEN + 1]) {
        pthread_t th[RACERS];
        racer rc[RACERS];
        pthread_barrier_t start;
        int ok = 0;

        pthread_barrier_init(&start, NULL, RACERS);
        for (int i = 0; i < RACERS; i++) {
                rc[i] = (racer) { .f = f, .key = keys ? keys[i] : key, .start = &start };
                ASSERT_EQ(0, pthread_create(&th[i], NULL, racer_main, &rc[i]));
        }
        for (int i = 0; i < RACERS; i++)
                pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < RACERS; i++) {
                if (rc[i].r == 0)
                        ok++;
                else
                        ASSERT_EQ(-ENOKEY, rc[i].r);
        }
        return ok;
}

static int race(fixture *f, const char *key) {
        return race_keys(f, key, NULL);
}

TEST(one_off_key_raced_by_8_registers_exactly_one) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1];

        fixture_init(&f, RACERS);
        for (int round = 0; round < 5; round++) {
                make_key(f.db, f.a.account_id, &(key_spec) { .type = "one-off" }, key, id);
                ASSERT_EQ(1, race(&f, key));
                ASSERT_DB_QUERY2("1", f.db, "SELECT used_times FROM setup_keys WHERE id = $1", id, NULL);
        }
        ASSERT_DB_QUERY2("5", f.db, "SELECT count(*) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("5", f.db, "SELECT network_serial FROM accounts WHERE id = $1", f.a.account_id, NULL);
        fixture_done(&f);
}

TEST(usage_limit_3_raced_by_8_registers_exactly_three) {
        fixture f;
        char key[CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1];

        fixture_init(&f, RACERS);
        for (int round = 0; round < 5; round++) {
                make_key(f.db, f.a.account_id, &(key_spec) { .usage_limit = 3 }, key, id);
                ASSERT_EQ(3, race(&f, key));
                ASSERT_DB_QUERY2("3", f.db, "SELECT used_times FROM setup_keys WHERE id = $1", id, NULL);
        }
        ASSERT_DB_QUERY2("15", f.db, "SELECT count(*) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("15", f.db, "SELECT count(DISTINCT dns_label) FROM peers", NULL, NULL);
        fixture_done(&f);
}

TEST(concurrent_registrations_with_an_unlimited_key_all_land) {
        fixture f;

        fixture_init(&f, RACERS);
        for (int round = 0; round < 5; round++)
                ASSERT_EQ(RACERS, race(&f, f.a.setup_key));
        ASSERT_DB_QUERY2("40", f.db, "SELECT count(DISTINCT dns_label) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("40", f.db, "SELECT network_serial FROM accounts", NULL, NULL);
        fixture_done(&f);
}

/* Different keys do not serialise on one key row, so equal hostnames
 * collide on the label index and go through the savepoint retry. */
TEST(concurrent_registrations_with_distinct_keys_get_distinct_labels) {
        fixture f;
        char keys[RACERS][CP_SETUP_KEY_LEN + 1], id[CP_ID_LEN + 1];

        fixture_init(&f, RACERS);
        for (int round = 0; round < 5; round++) {
                for (int i = 0; i < RACERS; i++)
                        make_key(f.db, f.a.account_id, &(key_spec) { .type = "one-off" }, keys[i], id);
                ASSERT_EQ(RACERS, race_keys(&f, NULL, keys));
        }
        ASSERT_DB_QUERY2("40", f.db, "SELECT count(DISTINCT dns_label) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("40", f.db, "SELECT count(DISTINCT ip) FROM peers", NULL, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM peers WHERE dns_label = 'racer'", NULL, NULL);
        ASSERT_DB_QUERY2("40", f.db, "SELECT network_serial FROM accounts WHERE id = $1", f.a.account_id, NULL);
        fixture_done(&f);
}

/* ---- login, logout, scoping -------------------------------------------------- */

TEST(login_update_reports_and_bumps_only_what_others_see) {
        fixture f;
        char wg[45];
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        unsigned changed = 99;
        int64_t serial = -1;

        fixture_init(&f, 1);
        ASSERT_OK(reg(&f, f.a.setup_key, "box", wg, &p, NULL, &err), &err);

        /* Same meta, same ssh key, same address: nothing changes. */
        cp_store_peer_meta meta = test_meta("box");
        cp_store_peer_login_req lr = { .meta = &meta, .ssh_key = "ssh-ed25519 AAAA test",
                                       .connection_ip = "198.51.100.7" };
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &lr, &changed, &serial, &err), &err);
        ASSERT_EQ(0, changed);
        ASSERT_EQ(1, serial);
        /* Reordered addresses are the same set. */
        cp_store_peer_netaddr rev[ELEMENTSOF(test_addrs)];
        for (size_t i = 0; i < ELEMENTSOF(test_addrs); i++)
                rev[i] = test_addrs[ELEMENTSOF(test_addrs) - 1 - i];
        meta.network_addresses = rev;
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &lr, &changed, &serial, &err), &err);
        ASSERT_EQ(0, changed);

        /* A meta change others don't see: stored, reported, no bump. */
        meta.kernel_version = "6.9.0";
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &lr, &changed, &serial, &err), &err);
        ASSERT_EQ(CP_STORE_PEER_CHANGED_META, changed);
        ASSERT_EQ(1, serial);
        ASSERT_DB_QUERY2("6.9.0", f.db, "SELECT meta_kernel_version FROM peers WHERE id = $1", p->id, NULL);

        /* A new agent version: remote peers see agentVersion; bump. */
        meta.wt_version = "0.61.0";
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &lr, &changed, &serial, &err), &err);
        ASSERT_EQ(CP_STORE_PEER_CHANGED_META | CP_STORE_PEER_CHANGED_WT_VERSION | CP_STORE_PEER_CHANGED_SERIAL,
                  changed);
        ASSERT_EQ(2, serial);

        /* A new ssh key: bump. No ssh key sent: keep the stored one. */
        cp_store_peer_login_req ssh = { .ssh_key = "ssh-ed25519 BBBB new" };
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &ssh, &changed, &serial, &err), &err);
        ASSERT_EQ(CP_STORE_PEER_CHANGED_SSH_KEY | CP_STORE_PEER_CHANGED_SERIAL, changed);
        ASSERT_EQ(3, serial);
        ssh.ssh_key = "";
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &ssh, &changed, &serial, &err), &err);
        ASSERT_EQ(0, changed);
        ASSERT_DB_QUERY2("ssh-ed25519 BBBB new", f.db, "SELECT ssh_key FROM peers WHERE id = $1", p->id, NULL);

        /* The connection address alone. */
        cp_store_peer_login_req ip = { .connection_ip = "2001:db8::7" };
        ASSERT_OK(cp_store_peer_login_update(f.s, f.a.account_id, p->id, &ip, &changed, &serial, &err), &err);
        ASSERT_EQ(CP_STORE_PEER_CHANGED_CONN_IP, changed);
        ip.connection_ip = "not an address";
        ASSERT_EQ(-EINVAL, cp_store_peer_login_update(f.s, f.a.account_id, p->id, &ip, &changed, &serial, &err));

        cp_store_peer *after = NULL;
        ASSERT_OK(cp_store_peer_get(f.s, f.a.account_id, p->id, &after, &err), &err);
        ASSERT_STREQ("0.61.0", after->meta.wt_version);
        ASSERT_STREQ("6.9.0", after->meta.kernel_version);
        ASSERT_STREQ("2001:db8::7", after->connection_ip);
        ASSERT_EQ(p->last_login_unix_ns, after->last_login_unix_ns);
        cp_store_peer_free(after);

        ASSERT_EQ(-ENOENT, cp_store_peer_login_update(f.s, f.a.account_id, "nope", &lr, &changed, &serial, &err));
        cp_store_peer_free(p);
        fixture_done(&f);
}

TEST(delete_cascades_membership_logs_and_bumps) {
        fixture f;
        char wg[45];
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        int64_t serial = -1;

        fixture_init(&f, 1);
        ASSERT_OK(reg(&f, f.a.setup_key, "gone", wg, &p, NULL, &err), &err);
        ASSERT_DB_QUERY2("1", f.db, "SELECT count(*) FROM group_peers WHERE peer_id = $1", p->id, NULL);
        ASSERT_OK(cp_store_peer_delete(f.s, f.a.account_id, p->id, NULL, "netbird.cloud", &serial, &err), &err);
        ASSERT_EQ(2, serial);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM peers WHERE id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM group_peers WHERE peer_id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("sys", f.db, "SELECT initiator_id FROM events WHERE activity = 5 AND target_id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("gone.netbird.cloud", f.db,
                     "SELECT meta->>'fqdn' FROM events WHERE activity = 5 AND target_id = $1", p->id, NULL);
        ASSERT_EQ(-ENOENT, cp_store_peer_get_by_key(f.s, wg, NULL, &err));
        serial = -1;
        ASSERT_EQ(-ENOENT, cp_store_peer_delete(f.s, f.a.account_id, p->id, NULL, NULL, &serial, &err));
        ASSERT_EQ(-1, serial);
        ASSERT_DB_QUERY2("2", f.db, "SELECT network_serial FROM accounts", NULL, NULL);
        cp_store_peer_free(p);

        /* An explicit initiator wins; the account's DNS domain overrides. */
        ASSERT_OK(reg(&f, f.a.setup_key, "gone2", wg, &p, NULL, &err), &err);
        free(cptest_db_query2(f.db, "UPDATE accounts SET settings_dns_domain = 'corp.example' WHERE id = $1", f.a.account_id, NULL));
        ASSERT_OK(cp_store_peer_delete(f.s, f.a.account_id, p->id, f.a.user_id, "netbird.cloud", NULL, &err), &err);
        ASSERT_DB_QUERY2(f.a.user_id, f.db, "SELECT initiator_id FROM events WHERE activity = 5 AND target_id = $1",
                     p->id, NULL);
        ASSERT_DB_QUERY2("gone2.corp.example", f.db,
                     "SELECT meta->>'fqdn' FROM events WHERE activity = 5 AND target_id = $1", p->id, NULL);
        cp_store_peer_free(p);
        fixture_done(&f);
}

TEST(another_accounts_id_never_touches_the_peer) {
        fixture f;
        char wg[45];
        cp_store_account_spec spec = { .name = "b" };
        cp_store_account_created b;
        cp_store_peer *p = NULL, *none = NULL;
        cp_error err = { 0 };
        cp_store_peer_meta meta = test_meta("evil");
        cp_store_peer_login_req lr = { .meta = &meta, .ssh_key = "ssh-ed25519 EVIL" };

        fixture_init(&f, 1);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        ASSERT_OK(reg(&f, f.a.setup_key, "victim", wg, &p, NULL, &err), &err);

        ASSERT_EQ(-ENOENT, cp_store_peer_get(f.s, b.account_id, p->id, &none, &err));
        ASSERT_EQ(-ENOENT, cp_store_peer_login_update(f.s, b.account_id, p->id, &lr, NULL, NULL, &err));
        ASSERT_EQ(-ENOENT, cp_store_peer_delete(f.s, b.account_id, p->id, NULL, NULL, NULL, &err));
        ASSERT_TRUE(none == NULL);

        ASSERT_DB_QUERY2("victim", f.db, "SELECT meta_hostname FROM peers WHERE id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("ssh-ed25519 AAAA test", f.db, "SELECT ssh_key FROM peers WHERE id = $1", p->id, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT network_serial FROM accounts WHERE id = $1", b.account_id, NULL);
        ASSERT_DB_QUERY2("1", f.db, "SELECT network_serial FROM accounts WHERE id = $1", f.a.account_id, NULL);
        ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM events WHERE activity = 5", NULL, NULL);
        cp_store_peer_free(p);
        fixture_done(&f);
}

/* ---- login expiration ---------------------------------------------------- */

/* Registers a peer and turns it into an SSO-like peer of the account's
 * owner whose login is age_h hours old (login expiration on). */
static void sso_peer(fixture *f, const char *account, const char *user, const char *setup_key,
                     const char *name, int age_h, char id[64]) {
        cp_store_peer *p = NULL;
        cp_error err = { 0 };
        char wg[45], age[12];
        cp_store_peer_meta meta = test_meta(name);
        cp_store_peer_register_req req = { .setup_key = setup_key, .wg_pub_key = wg, .meta = &meta };

        wg_key(wg);
        ASSERT_OK(cp_store_peer_register(f->s, &req, &p, NULL, &err), &err);
        (void) snprintf(id, 64, "%s", p->id);
        (void) snprintf(age, sizeof age, "%d", age_h);
        const char *params[4] = { id, user, age, account };
        free(cptest_db_query(f->db,
                             "UPDATE peers SET user_id = $2, login_expiration_enabled = true,"
                             " last_login = now() - make_interval(hours => $3::int)"
                             " WHERE id = $1 AND account_id = $4", 4, params));
        cp_store_peer_free(p);
}

static int64_t serial_of(fixture *f, const char *account) {
        char *v = cptest_db_query2(f->db, "SELECT network_serial FROM accounts WHERE id = $1", account, NULL);
        int64_t n = strtoll(v, NULL, 10);
        free(v);
        return n;
}

TEST(account_serials_reads_many_accounts_in_order) {
        fixture f;
        cp_store_account_spec spec = { .name = "b" };
        cp_store_account_created b;
        cp_error err = { 0 };
        int64_t serials[3] = { 0 };

        fixture_init(&f, 1);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        free(cptest_db_query2(f.db, "UPDATE accounts SET network_serial = 7 WHERE id = $1", b.account_id, NULL));
        const char *ids[3] = { b.account_id, "no-such-account", f.a.account_id };
        ASSERT_OK(cp_store_account_serials(f.s, ids, 3, serials, &err), &err);
        ASSERT_EQ(7, serials[0]);
        ASSERT_EQ(-1, serials[1]);
        ASSERT_EQ(serial_of(&f, f.a.account_id), serials[2]);
        fixture_done(&f);
}

TEST(account_serial_raise_never_lowers_and_stays_in_its_account) {
        fixture f;
        cp_store_account_spec spec = { .name = "b" };
        cp_store_account_created b;
        cp_error err = { 0 };
        int64_t now = 0, b_before;

        fixture_init(&f, 1);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        free(cptest_db_query2(f.db, "UPDATE accounts SET network_serial = 3 WHERE id = $1", f.a.account_id, NULL));
        b_before = serial_of(&f, b.account_id);
        /* Below what agents were sent (a restored database): raised. */
        ASSERT_OK(cp_store_account_serial_raise(f.s, f.a.account_id, 42, &now, &err), &err);
        ASSERT_EQ(42, now);
        ASSERT_EQ(42, serial_of(&f, f.a.account_id));
        /* Already above: left alone, the serial it has now comes back. */
        ASSERT_OK(cp_store_account_serial_raise(f.s, f.a.account_id, 10, &now, &err), &err);
        ASSERT_EQ(42, now);
        ASSERT_EQ(42, serial_of(&f, f.a.account_id));
        /* Another account is untouched; an unknown one is -ENOENT. */
        ASSERT_EQ(b_before, serial_of(&f, b.account_id));
        ASSERT_EQ(-ENOENT, cp_store_account_serial_raise(f.s, "no-such-account", 5, &now, &err));
        ASSERT_EQ(-EINVAL, cp_store_account_serial_raise(f.s, "", 5, &now, &err));
        fixture_done(&f);
}

TEST(expire_logins_marks_each_expired_sso_peer_once) {
        fixture f;
        cp_store_account_spec spec = { .name = "off" };
        cp_store_account_created b;
        cp_store_expired_account *acc = NULL;
        cp_store_expired_peer *peers = NULL;
        size_t n = 99, n_peers = 99;
        cp_error err = { 0 };
        char x1[64], x2[64], fresh[64], disabled[64], setupkey[64], other[64];
        char wg[45];
        cp_store_peer *p = NULL;

        fixture_init(&f, 2);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        sso_peer(&f, f.a.account_id, f.a.user_id, f.a.setup_key, "exp1", 25, x1);
        sso_peer(&f, f.a.account_id, f.a.user_id, f.a.setup_key, "exp2", 30, x2);
        sso_peer(&f, f.a.account_id, f.a.user_id, f.a.setup_key, "fresh", 23, fresh);
        sso_peer(&f, f.a.account_id, f.a.user_id, f.a.setup_key, "disabled", 25, disabled);
        free(cptest_db_query2(f.db, "UPDATE peers SET login_expiration_enabled = false WHERE id = $1", disabled, NULL));
        /* A setup-key peer: user_id NULL, expiration on, old login. */
        ASSERT_OK(reg(&f, f.a.setup_key, "setupkey", wg, &p, NULL, &err), &err);
        (void) snprintf(setupkey, sizeof setupkey, "%s", p->id);
        cp_store_peer_free(p);
        free(cptest_db_query2(f.db, "UPDATE peers SET login_expiration_enabled = true, last_login = now() - interval '48 hours'"
                     " WHERE id = $1", setupkey, NULL));
        /* An account with the setting off. */
        sso_peer(&f, b.account_id, b.user_id, b.setup_key, "other", 25, other);
        free(cptest_db_query2(f.db, "UPDATE accounts SET settings_peer_login_expiration_enabled = false WHERE id = $1",
               b.account_id, NULL));

        int64_t sa = serial_of(&f, f.a.account_id), sb = serial_of(&f, b.account_id);
        ASSERT_OK(cp_store_expire_logins(f.s, "netbird.cloud", &acc, &n, &peers, &n_peers, &err), &err);
        ASSERT_EQ(1, (int) n);
        ASSERT_STREQ(f.a.account_id, acc[0].account_id);
        ASSERT_EQ(sa + 1, acc[0].serial);
        ASSERT_EQ(sa + 1, serial_of(&f, f.a.account_id));
        ASSERT_EQ(sb, serial_of(&f, b.account_id));
        free(acc);
        /* The marked peers, sorted by account then peer id. */
        ASSERT_EQ(2, (int) n_peers);
        ASSERT_STREQ(f.a.account_id, peers[0].account_id);
        ASSERT_STREQ(f.a.account_id, peers[1].account_id);
        ASSERT_STREQ(strcmp(x1, x2) < 0 ? x1 : x2, peers[0].peer_id);
        ASSERT_STREQ(strcmp(x1, x2) < 0 ? x2 : x1, peers[1].peer_id);
        free(peers);

        ASSERT_DB_QUERY2("t", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", x1, NULL);
        ASSERT_DB_QUERY2("t", f.db, "SELECT peer_status_login_expired FROM peers WHERE id = $1", x2, NULL);
        ASSERT_DB_QUERY2("2", f.db, "SELECT count(*) FROM peers WHERE peer_status_login_expired", NULL, NULL);
        ASSERT_DB_QUERY2("2", f.db, "SELECT count(*) FROM events WHERE activity = 50", NULL, NULL);
        /* Initiator: the peer's user, as NetBird's expireAndUpdatePeers. */
        char want[200];
        (void) snprintf(want, sizeof want, "%s|session expiration|exp1.netbird.cloud", f.a.user_id);
        ASSERT_DB_QUERY2(want, f.db,
                     "SELECT initiator_id || '|' || (meta->>'reason') || '|' || (meta->>'fqdn') FROM events"
                     " WHERE activity = 50 AND target_id = $1 AND account_id = $2", x1, f.a.account_id);

        /* Nothing left to do: no rows, no event, no bump. */
        acc = NULL;
        n = 99;
        peers = (cp_store_expired_peer *) &n;   /* must be overwritten */
        n_peers = 99;
        ASSERT_OK(cp_store_expire_logins(f.s, "netbird.cloud", &acc, &n, &peers, &n_peers, &err), &err);
        ASSERT_EQ(0, (int) n);
        ASSERT_TRUE(acc == NULL);
        ASSERT_EQ(0, (int) n_peers);
        ASSERT_TRUE(peers == NULL);
        ASSERT_EQ(sa + 1, serial_of(&f, f.a.account_id));
        ASSERT_DB_QUERY2("2", f.db, "SELECT count(*) FROM events WHERE activity = 50", NULL, NULL);

        /* A re-login clears the flag (the connect UPDATE); once the login
         * is old again it expires again. */
        free(cptest_db_query2(f.db, "UPDATE peers SET peer_status_login_expired = false WHERE id = $1", x1, NULL));
        ASSERT_OK(cp_store_expire_logins(f.s, NULL, &acc, &n, NULL, NULL, &err), &err);
        ASSERT_EQ(1, (int) n);
        ASSERT_EQ(sa + 2, acc[0].serial);
        free(acc);
        ASSERT_DB_QUERY2("2", f.db, "SELECT count(*) FROM events WHERE activity = 50 AND target_id = $1", x1, NULL);
        fixture_done(&f);
}

#define EXPIRERS 4

typedef struct expirer {
        fixture *f;
        pthread_barrier_t *start;
        cp_store_expired_account *acc;
        size_t n;
        cp_store_expired_peer *peers;
        size_t n_peers;
        int r;
} expirer;

static void *expirer_main(void *arg) {
        expirer *e = arg;

        pthread_barrier_wait(e->start);
        e->r = cp_store_expire_logins(e->f->s, "netbird.cloud", &e->acc, &e->n, &e->peers, &e->n_peers, NULL);
        return NULL;
}

TEST(concurrent_expire_logins_process_each_peer_once) {
        fixture f;
        cp_store_account_spec spec = { .name = "second" };
        cp_store_account_created b;
        cp_error err = { 0 };
        char id[64];

        fixture_init(&f, EXPIRERS);
        ASSERT_OK(cp_store_account_create(f.s, &spec, &b, &err), &err);
        for (int round = 0; round < 5; round++) {
                pthread_t th[EXPIRERS];
                expirer ex[EXPIRERS];
                pthread_barrier_t start;
                int64_t sa = serial_of(&f, f.a.account_id), sb = serial_of(&f, b.account_id);
                int seen_a = 0, seen_b = 0, seen_peers = 0;

                for (int i = 0; i < 3; i++) {
                        sso_peer(&f, f.a.account_id, f.a.user_id, f.a.setup_key, "ra", 25, id);
                        sso_peer(&f, b.account_id, b.user_id, b.setup_key, "rb", 26, id);
                }
                sa = serial_of(&f, f.a.account_id);
                sb = serial_of(&f, b.account_id);
                pthread_barrier_init(&start, NULL, EXPIRERS);
                for (int i = 0; i < EXPIRERS; i++) {
                        ex[i] = (expirer) { .f = &f, .start = &start };
                        ASSERT_EQ(0, pthread_create(&th[i], NULL, expirer_main, &ex[i]));
                }
                for (int i = 0; i < EXPIRERS; i++)
                        pthread_join(th[i], NULL);
                pthread_barrier_destroy(&start);
                for (int i = 0; i < EXPIRERS; i++) {
                        ASSERT_EQ(0, ex[i].r);
                        for (size_t j = 0; j < ex[i].n; j++) {
                                if (strcmp(ex[i].acc[j].account_id, f.a.account_id) == 0)
                                        seen_a++;
                                else if (strcmp(ex[i].acc[j].account_id, b.account_id) == 0)
                                        seen_b++;
                                else
                                        ASSERT_TRUE(false);
                        }
                        /* A caller's peers belong to the accounts it reported. */
                        for (size_t j = 0; j < ex[i].n_peers; j++) {
                                bool found = false;
                                for (size_t k = 0; k < ex[i].n; k++)
                                        found |= strcmp(ex[i].peers[j].account_id, ex[i].acc[k].account_id) == 0;
                                ASSERT_TRUE(found);
                        }
                        seen_peers += (int) ex[i].n_peers;
                        free(ex[i].acc);
                        free(ex[i].peers);
                }
                /* Each account reported by exactly one caller, bumped once;
                 * each of the 6 peers by exactly one caller. */
                ASSERT_EQ(6, seen_peers);
                ASSERT_EQ(1, seen_a);
                ASSERT_EQ(1, seen_b);
                ASSERT_EQ(sa + 1, serial_of(&f, f.a.account_id));
                ASSERT_EQ(sb + 1, serial_of(&f, b.account_id));
                ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM peers WHERE NOT peer_status_login_expired", NULL,
                             NULL);
                /* One event per peer, never two. */
                ASSERT_DB_QUERY2("0", f.db, "SELECT count(*) FROM (SELECT target_id FROM events WHERE activity = 50"
                                        " GROUP BY target_id HAVING count(*) <> 1) d", NULL, NULL);
                char want[12];
                (void) snprintf(want, sizeof want, "%d", 6 * (round + 1));
                ASSERT_DB_QUERY2(want, f.db, "SELECT count(*) FROM events WHERE activity = 50", NULL, NULL);
        }
        fixture_done(&f);
}

int main(int argc, char **argv) {
        if (cp_crypto_init() < 0)
                return 1;
        return cptest_main(argc, argv);
}
