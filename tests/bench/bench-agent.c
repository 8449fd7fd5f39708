/*
 * bench-agent: Login of an existing peer and Sync open against the real
 * netbird-mgmt on NetBird's 5000/200 and 5000/15 shapes, next to NetBird's bands
 * (docs/targets.md) and to two floors measured in the same run: a bare
 * unary gRPC round trip (GetServerKey, isHealthy) and a single-row fenced
 * UPDATE through libpq.
 *
 * The client is C (gRPC C core + protobuf-c + libsodium, through
 * common/nbclient, which netbird-load shares), not Python: a Python
 * grpcio call costs ~0.3-0.5 ms of client time on this machine, about the
 * size of what is being measured, and PyNaCl adds more. The client
 * precomputes each peer's box key once (cp_nbc_peer_set_server_key), so
 * its own cost per call is a few microseconds of packing and sealing.
 *
 * What it does, bounded in time (alarm) and count, loopback only:
 *   1. CREATE DATABASE bench_<random> on CP_TEST_PG_DSN (key=value conninfo;
 *      " dbname=X" is appended). Unset: prints how to run it and exits 0.
 *   2. netbird-mgmt migrate, bootstrap, then the shape in SQL: 5,200 peers
 *      with valid WireGuard public keys (the first DRIVEN have private keys
 *      this process holds), 200 groups of 25 + a routing peer, one
 *      bidirectional ALL policy per group, and per group (NetBird's
 *      setupTestAccountManager) a network routed by the group's routing
 *      peer with a host resource and a bidirectional ALL resource policy
 *      from the group; every peer in All, the Default policy removed, all
 *      peers but the driven ones connected.
 *   3. netbird-mgmt management on 127.0.0.1, free ports (--port 0), a
 *      throwaway data-store key; its log goes to a temporary file.
 *   4. Measures (sequential, one HTTP/2 connection):
 *        GetServerKey, isHealthy               unary gRPC floor
 *        fenced UPDATE of one row (prepared)   DB floor (its own connection)
 *        Login (existing peer), alone          server key cached
 *        GetServerKey + Login                  what a NetBird agent does
 *        Sync open                             call start -> first message
 *                                              opened; then cancelled
 *   5. Stops the server (SIGTERM, then SIGKILL) by pid, drops the database.
 *
 * Steps 1-5 run once per shape, each on a database of its own.
 *
 * Usage: bench-agent NETBIRD-MGMT [logins [syncs [SHAPE...]]]
 * (registered with meson benchmark(); tests/bench/run starts a throwaway
 * PostgreSQL for it.)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "cp/crypto.h"
#include "cp-methods.h"
#include "cp/nbclient.h"

#define DRIVEN 16
#define FLOOR_CALLS 2000
#define TIME_LIMIT_S 900

/* NetBird's shapes with Login and Sync bands (management/server/
 * account_test.go, BenchmarkLoginPeer_ExistingPeer and
 * BenchmarkSyncAndMarkPeer, local runs; ms per op); targets.md sets our
 * targets for 5000/200 only. */
static const struct shape {
        const char *name;
        int peers, groups;
        int login_lo, login_hi, sync_lo, sync_hi;
        const char *login_target, *sync_target;
} shapes[] = {
        { "5000/200", 5000, 200, 60, 100, 65, 110, "p50 <= 1 ms", "p50 <= 2 ms" },
        { "5000/15", 5000, 15, 60, 100, 65, 80, "", "" },
};

/* The shape being measured: peers in groups of PER_GROUP, then one
 * routing peer per group. */
static int n_peers, n_groups;
#define PER_GROUP (n_peers / n_groups)
#define TOTAL (n_peers + n_groups)

extern char **environ;

static const char *mgmt_bin;
static char admin_dsn[1024], db_dsn[1200], db_name[64], log_path[256];
static pid_t server_pid = -1;
static bool db_created;

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

/* ---- cleanup: everything we started, by pid / by name ------------------------------ */

static void stop_server(void) {
        if (server_pid <= 0)
                return;
        (void) kill(server_pid, SIGTERM);
        for (int i = 0; i < 200; i++) {
                if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
                        server_pid = -1;
                        return;
                }
                usleep(50 * 1000);
        }
        (void) kill(server_pid, SIGKILL);
        (void) waitpid(server_pid, NULL, 0);
        server_pid = -1;
}

static void drop_db(void) {
        if (!db_created)
                return;
        db_created = false;
        PGconn *c = PQconnectdb(admin_dsn);
        if (PQstatus(c) == CONNECTION_OK) {
                char sql[128];
                (void) snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db_name);
                PQclear(PQexec(c, sql));
        }
        PQfinish(c);
}

static void cleanup(void) {
        stop_server();
        drop_db();
        if (log_path[0])
                (void) unlink(log_path);
}

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "bench-agent: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
        if (log_path[0] && server_pid > 0) {
                char cmd[300];
                (void) snprintf(cmd, sizeof cmd, "tail -n 20 %s >&2", log_path);
                (void) system(cmd);
        }
        cleanup();
        exit(1);
}

static void on_alarm(int sig) {
        (void) sig;
        /* Not async-signal-safe in general, but we are leaving anyway and the
           main thread is blocked in a bounded wait. */
        if (server_pid > 0)
                (void) kill(server_pid, SIGKILL);
        static const char msg[] = "bench-agent: time limit reached\n";
        (void) !write(2, msg, sizeof msg - 1);
        drop_db();
        _exit(1);
}

/* ---- running netbird-mgmt ---------------------------------------------------------- */

static char **child_env(const char *key) {
        size_t n = 0;
        for (char **e = environ; *e; e++)
                n++;
        char **env = calloc(n + 4, sizeof *env);
        size_t k = 0;
        for (char **e = environ; *e; e++)
                if (strncmp(*e, "NB_", 3) != 0 && strncmp(*e, "NETBIRD_", 8) != 0)
                        env[k++] = *e;
        static char dsn_var[1300], key_var[128];
        (void) snprintf(dsn_var, sizeof dsn_var, "NB_STORE_ENGINE_POSTGRES_DSN=%s", db_dsn);
        (void) snprintf(key_var, sizeof key_var, "NB_MGMT_DATA_STORE_ENCRYPTION_KEY=%s", key);
        env[k++] = dsn_var;
        env[k++] = key_var;
        /* CP_BENCH_PREPARED=false: the server's --db-prepared-statements
         * (docs/database-ha.md compares both). */
        static char prep_var[64];
        const char *prep = getenv("CP_BENCH_PREPARED");
        if (prep && *prep) {
                (void) snprintf(prep_var, sizeof prep_var, "NB_MGMT_DB_PREPARED_STATEMENTS=%s", prep);
                env[k++] = prep_var;
        }
        return env;
}

/* Runs netbird-mgmt with args; stdout goes to out_path (if not NULL). */
static pid_t spawn(char *const argv[], const char *key, const char *out_path) {
        char **env = child_env(key);
        pid_t pid = fork();
        if (pid < 0)
                die("fork failed");
        if (pid == 0) {
                if (out_path) {
                        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
                                _exit(127);
                }
                execve(mgmt_bin, argv, env);
                _exit(127);
        }
        free(env);
        return pid;
}

static char *slurp(const char *path) {
        FILE *f = fopen(path, "r");
        if (!f)
                return NULL;
        char *buf = calloc(1, 1 << 20);
        size_t n = fread(buf, 1, (1 << 20) - 1, f);
        buf[n] = 0;
        fclose(f);
        return buf;
}

static void run_cmd(const char *sub, const char *key, const char *out_path) {
        char *argv[] = { (char *) mgmt_bin, (char *) sub, (char *) "--config=", NULL };
        pid_t pid = spawn(argv, key, out_path);
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                char *out = slurp(out_path);
                fprintf(stderr, "%s\n", out ? out : "");
                free(out);
                die("netbird-mgmt %s failed", sub);
        }
}

/* VAR=value or VAR='value' from bootstrap's output. */
static void env_var(const char *text, const char *name, char *out, size_t cap) {
        char pat[64];
        (void) snprintf(pat, sizeof pat, "\n%s=", name);
        char *buf = malloc(strlen(text) + 2);
        buf[0] = '\n';
        strcpy(buf + 1, text);
        const char *p = strstr(buf, pat);
        if (!p)
                die("bootstrap printed no %s", name);
        p += strlen(pat);
        if (*p == '\'')
                p++;
        size_t n = strcspn(p, "'\n");
        if (n >= cap)
                die("%s too long", name);
        memcpy(out, p, n);
        out[n] = 0;
        free(buf);
}

/* Starts management; returns the gRPC port from its "listening" log line. */
static int start_server(const char *key) {
        char *argv[] = { (char *) mgmt_bin, (char *) "management", (char *) "--listen-address",
                         (char *) "127.0.0.1", (char *) "--port", (char *) "0", (char *) "--http-port",
                         (char *) "0", (char *) "--config=", (char *) "--shutdown-timeout", (char *) "2s",
                         NULL };
        server_pid = spawn(argv, key, log_path);
        double deadline = now_ms() + 30000;
        while (now_ms() < deadline) {
                if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
                        server_pid = -1;
                        char *out = slurp(log_path);
                        fprintf(stderr, "%s\n", out ? out : "");
                        free(out);
                        die("management exited at start");
                }
                char *out = slurp(log_path);
                for (char *line = out ? strtok(out, "\n") : NULL; line; line = strtok(NULL, "\n")) {
                        if (!strstr(line, "\"msg\":\"listening\"") || !strstr(line, "\"protocol\":\"grpc\""))
                                continue;
                        const char *p = strstr(line, "\"port\":");
                        if (p) {
                                p += 7;
                                if (*p == '"')
                                        p++;
                                int port = atoi(p);
                                free(out);
                                return port;
                        }
                }
                free(out);
                usleep(50 * 1000);
        }
        die("management did not report its gRPC port");
        return -1;
}

/* ---- the database and the shape ----------------------------------------------------- */

static PGconn *connect_db(const char *dsn) {
        PGconn *c = PQconnectdb(dsn);
        if (PQstatus(c) != CONNECTION_OK)
                die("cannot connect: %s", PQerrorMessage(c));
        return c;
}

static void exec_ok(PGconn *c, const char *sql) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
                fprintf(stderr, "%s\n", sql);
                die("SQL failed: %s", PQerrorMessage(c));
        }
        PQclear(r);
}

static void copy_rows(PGconn *c, const char *copy_sql, const char *data, size_t len) {
        PGresult *r = PQexec(c, copy_sql);
        if (PQresultStatus(r) != PGRES_COPY_IN)
                die("COPY failed: %s", PQerrorMessage(c));
        PQclear(r);
        if (PQputCopyData(c, data, (int) len) != 1 || PQputCopyEnd(c, NULL) != 1)
                die("COPY data failed: %s", PQerrorMessage(c));
        r = PQgetResult(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
                die("COPY failed: %s", PQerrorMessage(c));
        PQclear(r);
        while ((r = PQgetResult(c)))
                PQclear(r);
}

static cp_nbc_peer peers[DRIVEN];

static double build_shape(const char *account, const char *network) {
        double t0 = now_ms();
        unsigned a, b;
        if (sscanf(network, "100.%u.%u.", &a, &b) != 2)
                die("unexpected NETWORK %s", network);
        PGconn *c = connect_db(db_dsn);
        exec_ok(c, "BEGIN");
        char *esc = PQescapeLiteral(c, account, strlen(account));
        char sql[4096];
        (void) snprintf(sql, sizeof sql, "DELETE FROM policies WHERE account_id = %s", esc);
        exec_ok(c, sql);

        size_t cap = (size_t) TOTAL * 256, len = 0;
        char *buf = malloc(cap);
        for (int i = 0; i < TOTAL; i++) {
                uint8_t pk[CP_WG_KEY_LEN], sk[CP_WG_KEY_LEN];
                char b64[CP_WG_KEY_B64_LEN];
                if (i < DRIVEN) {
                        cp_nbc_peer_generate(&peers[i]);
                        memcpy(pk, peers[i].pub, sizeof pk);
                } else {
                        cp_crypto_wg_keypair_new(sk, pk);
                }
                cp_crypto_wg_key_format(pk, b64);
                int host = i + 1;       /* skip the network address */
                len += (size_t) snprintf(buf + len, cap - len,
                        "bp%05d\t%s\t%s\t100.%u.%d.%d\tbench-%d\tbench-%d\tbench-%d\tlinux\t0.60.0\t{1,2}\t%s\n",
                        i, account, b64, a, host >> 8, host & 255, i, i, i, i < DRIVEN ? "f" : "t");
        }
        copy_rows(c, "COPY peers (id, account_id, key, ip, name, dns_label, meta_hostname, meta_go_os, "
                     "meta_wt_version, meta_capabilities, peer_status_connected) FROM STDIN", buf, len);
        len = 0;
        for (int g = 0; g < n_groups; g++)
                len += (size_t) snprintf(buf + len, cap - len, "bg%03d\t%s\tgroup-%03d\n", g, account, g);
        copy_rows(c, "COPY groups (id, account_id, name) FROM STDIN", buf, len);
        len = 0;
        for (int g = 0; g < n_groups; g++) {
                for (int i = g * PER_GROUP; i < (g + 1) * PER_GROUP; i++)
                        len += (size_t) snprintf(buf + len, cap - len, "%s\tbg%03d\tbp%05d\n", account, g, i);
                len += (size_t) snprintf(buf + len, cap - len, "%s\tbg%03d\tbp%05d\n", account, g, n_peers + g);
        }
        copy_rows(c, "COPY group_peers (account_id, group_id, peer_id) FROM STDIN", buf, len);
        free(buf);
        (void) snprintf(sql, sizeof sql,
                "INSERT INTO group_peers (account_id, group_id, peer_id) "
                "SELECT %s, g.id, p.id FROM groups g, peers p "
                "WHERE g.account_id = %s AND g.name = 'All' AND p.account_id = %s "
                "ON CONFLICT DO NOTHING", esc, esc, esc);
        exec_ok(c, sql);
        (void) snprintf(sql, sizeof sql,
                "INSERT INTO policies (id, account_id, name) "
                "SELECT 'bpol' || lpad(g::text, 3, '0'), %s, 'policy-' || g FROM generate_series(0, %d) g;"
                "INSERT INTO policy_rules (id, policy_id, account_id, name, bidirectional, protocol, "
                "sources, destinations) "
                "SELECT 'brule' || lpad(g::text, 3, '0'), 'bpol' || lpad(g::text, 3, '0'), %s, 'rule-' || g, "
                "true, 'all', ARRAY['bg' || lpad(g::text, 3, '0')], ARRAY['bg' || lpad(g::text, 3, '0')] "
                "FROM generate_series(0, %d) g;"
                /* NetBird's setupTestAccountManager: per group a network, its
                 * routing peer as router, a host resource and a resource
                 * policy from the group (this used to be a route per group);
                 * the account's one posture check is added below. */
                "INSERT INTO networks (id, account_id, name) "
                "SELECT 'bnet' || lpad(g::text, 3, '0'), %s, 'network-' || g FROM generate_series(0, %d) g;"
                "INSERT INTO network_routers (id, network_id, account_id, peer, metric) "
                "SELECT 'brt' || lpad(g::text, 3, '0'), 'bnet' || lpad(g::text, 3, '0'), %s, "
                "'bp' || lpad((%d + g)::text, 5, '0'), 9999 FROM generate_series(0, %d) g;"
                "INSERT INTO network_resources (id, network_id, account_id, name, type, prefix) "
                "SELECT 'bres' || lpad(g::text, 3, '0'), 'bnet' || lpad(g::text, 3, '0'), %s, 'resource-' || g, "
                "'host', ('10.' || (g >> 8) || '.' || (g & 255) || '.1/32')::cidr FROM generate_series(0, %d) g;"
                "INSERT INTO policies (id, account_id, name) "
                "SELECT 'bpolnr' || lpad(g::text, 3, '0'), %s, 'policy-nr-' || g FROM generate_series(0, %d) g;"
                "INSERT INTO policy_rules (id, policy_id, account_id, name, bidirectional, protocol, "
                "sources, destination_resource_id, destination_resource_type) "
                "SELECT 'brulenr' || lpad(g::text, 3, '0'), 'bpolnr' || lpad(g::text, 3, '0'), %s, "
                "'rule-nr-' || g, true, 'all', ARRAY['bg' || lpad(g::text, 3, '0')], "
                "'bres' || lpad(g::text, 3, '0'), 'host' FROM generate_series(0, %d) g;"
                "UPDATE peers SET peer_status_last_seen = now(), peer_status_session_started_at = 1 "
                "WHERE account_id = %s AND peer_status_connected;"
                "UPDATE accounts SET network_serial = network_serial + 1 WHERE id = %s",
                esc, n_groups - 1, esc, n_groups - 1, esc, n_groups - 1, esc, n_peers, n_groups - 1, esc,
                n_groups - 1, esc, n_groups - 1, esc, n_groups - 1, esc, esc);
        exec_ok(c, sql);
        /* NetBird's shape also holds one posture check, which no policy names. */
        (void) snprintf(sql, sizeof sql,
                "INSERT INTO posture_checks (id, account_id, name, checks) VALUES ('bpc-' || %s, %s, 'All',"
                " '{\"nb_version_check\": {\"min_version\": \"0.0.1\"}}')", esc, esc);
        exec_ok(c, sql);
        exec_ok(c, "COMMIT");
        exec_ok(c, "ANALYZE");
        PQfreemem(esc);
        PQfinish(c);
        return now_ms() - t0;
}

/* ---- gRPC client (common/nbclient) ---------------------------------------------------- */

static grpc_channel *chan;
static grpc_completion_queue *cq;
static uint8_t server_pk[CP_WG_KEY_LEN];

/* One unary call; returns the response (the caller destroys it) or dies
 * on a non-OK status. req is taken. */
static grpc_byte_buffer *unary(const char *method, grpc_byte_buffer *req) {
        grpc_status_code status;
        grpc_byte_buffer *resp;

        if (cp_nbc_unary(chan, cq, method, req, 10000, &status, &resp) < 0)
                die("%s: the call did not complete", method);
        if (status != GRPC_STATUS_OK)
                die("%s: status %s", method, cp_proto_status_name((int) status));
        if (!resp)
                die("%s: no response message", method);
        return resp;
}

static void get_server_key(void) {
        if (cp_nbc_get_server_key(chan, cq, 10000, server_pk) < 0)
                die("GetServerKey failed");
}

static void is_healthy(void) {
        grpc_byte_buffer_destroy(unary(CP_NBC_IS_HEALTHY, NULL));
}

/* Opens a response sealed to peer i; returns its plaintext (malloc'd). */
static uint8_t *open_or_die(int i, grpc_byte_buffer *bb, size_t *len) {
        uint8_t *plain;

        if (cp_nbc_open(&peers[i], bb, &plain, len) < 0)
                die("response does not open");
        return plain;
}

static size_t login(int i) {
        char host[32];
        cp_nbc_meta meta;
        size_t n;

        (void) snprintf(host, sizeof host, "bench-%d", i);
        cp_nbc_meta_init(&meta, host);
        grpc_byte_buffer *resp = unary(CP_NBC_LOGIN, cp_nbc_login_request(&peers[i], &meta, NULL));
        free(open_or_die(i, resp, &n));
        grpc_byte_buffer_destroy(resp);
        return n;
}

static int sync_remote, sync_rules, sync_routes;

/* Opens a Sync stream, waits for the first message, opens it, cancels.
   Returns the time to the first opened message; *bytes its plaintext size. */
static double sync_open(int i, size_t *bytes) {
        double t0 = now_ms();
        char host[32];
        cp_nbc_meta meta;
        cp_nbc_call c;
        int tag1, tag2;

        (void) snprintf(host, sizeof host, "bench-%d", i);
        cp_nbc_meta_init(&meta, host);
        if (cp_nbc_call_start(&c, chan, cq, CP_NBC_SYNC, cp_nbc_sync_request(&peers[i], &meta), 30000, true, &tag1,
                              &tag2) < 0)
                die("start_batch failed");
        if (cp_nbc_wait(cq, &tag1, 30000) < 0)
                die("gRPC batch did not complete");
        if (!c.recv) {
                (void) cp_nbc_wait(cq, &tag2, 30000);
                char *d = cp_nbc_call_details(&c);
                fprintf(stderr, "bench-agent: Sync: status %s %s\n", cp_proto_status_name((int) c.status), d);
                free(d);
                die("Sync sent no message");
        }
        uint8_t *plain = open_or_die(i, c.recv, bytes);
        double took = now_ms() - t0;
        Management__SyncResponse *sr = management__sync_response__unpack(NULL, *bytes, plain);
        if (!sr || !sr->networkmap)
                die("first Sync message has no NetworkMap");
        sync_remote = (int) sr->networkmap->n_remotepeers;
        sync_rules = (int) sr->networkmap->n_firewallrules;
        sync_routes = (int) sr->networkmap->n_routes;
        management__sync_response__free_unpacked(sr, NULL);
        free(plain);
        cp_nbc_call_cancel(&c);
        if (cp_nbc_wait(cq, &tag2, 30000) < 0)
                die("gRPC batch did not complete");
        cp_nbc_call_release(&c);
        return took;
}

/* ---- statistics --------------------------------------------------------------------- */

typedef struct series {
        double p50, p99, mean;
        int n;
} series;

static int cmp_d(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static series summarize(double *v, int n) {
        series s = { .n = n };
        double sum = 0;
        for (int i = 0; i < n; i++)
                sum += v[i];
        qsort(v, (size_t) n, sizeof *v, cmp_d);
        s.p50 = v[n / 2];
        s.p99 = v[(int) ((double) n * 0.99) < n ? (int) ((double) n * 0.99) : n - 1];
        s.mean = sum / n;
        return s;
}

static void print_row(const char *name, series s, const char *band, const char *target) {
        printf("  %-34s %6d  p50 %8.3f ms  p99 %8.3f ms  mean %8.3f ms  %s%s%s\n", name, s.n, s.p50, s.p99,
               s.mean, band, *target ? "  target " : "", target);
}

/* ---- one shape ---------------------------------------------------------------------- */

/* A fresh database with the shape, a server on it, the measures, then
 * everything stopped and dropped again. */
static void run_shape(const struct shape *sh, const char *pg, int n_login, int n_sync) {
        n_peers = sh->peers;
        n_groups = sh->groups;

        /* 1. a fresh database */
        uint8_t rnd[6];
        randombytes_buf(rnd, sizeof rnd);
        (void) snprintf(db_name, sizeof db_name, "bench_%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
                        rnd[4], rnd[5]);
        (void) snprintf(admin_dsn, sizeof admin_dsn, "%s", pg);
        (void) snprintf(db_dsn, sizeof db_dsn, "%s dbname=%s", pg, db_name);
        PGconn *admin = connect_db(admin_dsn);
        char sql[256];
        (void) snprintf(sql, sizeof sql, "CREATE DATABASE %s", db_name);
        exec_ok(admin, sql);
        db_created = true;
        PGresult *ver = PQexec(admin, "SHOW server_version");
        char pg_version[64] = "?";
        if (PQresultStatus(ver) == PGRES_TUPLES_OK)
                (void) snprintf(pg_version, sizeof pg_version, "%s", PQgetvalue(ver, 0, 0));
        PQclear(ver);
        PQfinish(admin);

        /* 2. migrate, bootstrap, the shape */
        uint8_t kraw[32];
        char data_key[64];
        randombytes_buf(kraw, sizeof kraw);
        sodium_bin2base64(data_key, sizeof data_key, kraw, 32, sodium_base64_VARIANT_ORIGINAL);
        (void) snprintf(log_path, sizeof log_path, "/tmp/bench-agent-%d.log", (int) getpid());
        run_cmd("migrate", data_key, log_path);
        run_cmd("bootstrap", data_key, log_path);
        char *boot = slurp(log_path), account[128], network[64];
        env_var(boot, "ACCOUNT_ID", account, sizeof account);
        env_var(boot, "NETWORK", network, sizeof network);
        free(boot);
        double shape_ms = build_shape(account, network);

        /* 3. the server */
        int port = start_server(data_key);
        char target[64];
        (void) snprintf(target, sizeof target, "127.0.0.1:%d", port);
        chan = cp_nbc_channel_new(target, false);
        cq = grpc_completion_queue_create_for_pluck(NULL);

        printf("\nbench-agent: netbird-mgmt on %s, PostgreSQL %s, database %s\n", target, pg_version, db_name);
        printf("  shape %s: %d peers (%d groups of %d + a routing peer, one bidirectional ALL policy and\n"
               "  one network with that peer as router, a host resource and a resource policy each (NetBird's\n"
               "  setupTestAccountManager), Default policy removed), built in SQL in %.0f ms\n", sh->name, TOTAL, n_groups,
               PER_GROUP, shape_ms);
        printf("  client: C (common/nbclient: gRPC C core, protobuf-c, libsodium; box keys precomputed per peer), sequential\n"
               "  calls on one HTTP/2 connection; %d driven peers\n", DRIVEN);

        get_server_key();
        for (int i = 0; i < DRIVEN; i++)
                if (cp_nbc_peer_set_server_key(&peers[i], server_pk) < 0)
                        die("bad server key");

        int nmax = FLOOR_CALLS > n_login * 2 ? FLOOR_CALLS : n_login * 2;
        double *v = malloc(sizeof(double) * (size_t) (nmax > n_sync ? nmax : n_sync));

        /* warm-up: first logins store the agent's meta; first opens fill the map cache */
        size_t login_bytes = 0, sync_bytes = 0;
        for (int k = 0; k < 3 * DRIVEN; k++)
                login_bytes = login(k % DRIVEN);
        for (int k = 0; k < DRIVEN; k++)
                (void) sync_open(k, &sync_bytes);
        for (int k = 0; k < 200; k++)
                is_healthy();

        /* 4a. unary gRPC floor */
        for (int k = 0; k < FLOOR_CALLS; k++) {
                double t0 = now_ms();
                get_server_key();
                v[k] = now_ms() - t0;
        }
        series gsk = summarize(v, FLOOR_CALLS);
        for (int k = 0; k < FLOOR_CALLS; k++) {
                double t0 = now_ms();
                is_healthy();
                v[k] = now_ms() - t0;
        }
        series health = summarize(v, FLOOR_CALLS);

        /* 4b. DB floor: a single-row fenced UPDATE, prepared, on a peer no one drives */
        PGconn *c = connect_db(db_dsn);
        PGresult *pr = PQprepare(c, "fence",
                "UPDATE peers SET peer_status_session_started_at = $2::bigint, peer_status_connected = true, "
                "peer_status_last_seen = now() WHERE id = $1 AND peer_status_session_started_at < $2::bigint",
                2, NULL);
        if (PQresultStatus(pr) != PGRES_COMMAND_OK)
                die("prepare: %s", PQerrorMessage(c));
        PQclear(pr);
        for (int k = 0; k < FLOOR_CALLS + 200; k++) {
                char tok[32];
                (void) snprintf(tok, sizeof tok, "%d", 10 + k);
                const char *params[2] = { "bp04999", tok };
                double t0 = now_ms();
                PGresult *r = PQexecPrepared(c, "fence", 2, params, NULL, NULL, 0);
                double took = now_ms() - t0;
                if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1") != 0)
                        die("fenced update: %s", PQerrorMessage(c));
                PQclear(r);
                if (k >= 200)
                        v[k - 200] = took;
        }
        series dbf = summarize(v, FLOOR_CALLS);
        PQfinish(c);

        /* 4c. Login of an existing peer, alone (server key already known) */
        for (int k = 0; k < n_login; k++) {
                double t0 = now_ms();
                (void) login(k % DRIVEN);
                v[k] = now_ms() - t0;
        }
        series lg = summarize(v, n_login);
        /* 4d. GetServerKey + Login, as a NetBird agent does it */
        for (int k = 0; k < n_login; k++) {
                double t0 = now_ms();
                get_server_key();
                (void) login(k % DRIVEN);
                v[k] = now_ms() - t0;
        }
        series lgk = summarize(v, n_login);

        /* 4e. Sync open */
        for (int k = 0; k < n_sync; k++)
                v[k] = sync_open(k % DRIVEN, &sync_bytes);
        series sy = summarize(v, n_sync);

        char lband[64], sband[64];
        (void) snprintf(lband, sizeof lband, "NetBird %d-%d ms local", sh->login_lo, sh->login_hi);
        (void) snprintf(sband, sizeof sband, "NetBird %d-%d ms local", sh->sync_lo, sh->sync_hi);
        printf("\n  measure (%s)                  calls\n", sh->name);
        print_row("floor: GetServerKey (unary gRPC)", gsk, "", "");
        print_row("floor: isHealthy (unary gRPC)", health, "", "");
        print_row("floor: fenced 1-row UPDATE (libpq)", dbf, "", "");
        print_row("Login, existing peer (alone)", lg, lband, sh->login_target);
        print_row("GetServerKey + Login (agent-like)", lgk, lband, "");
        print_row("Sync open (to first map opened)", sy, sband, sh->sync_target);
        printf("\n  LoginResponse %zu bytes, first SyncResponse %zu bytes (plaintext)\n", login_bytes, sync_bytes);
        printf("  first map of a driven peer: %d remote peers, %d firewall rules, %d routes\n", sync_remote,
               sync_rules, sync_routes);
        printf("  ratios (p50):  Login / GetServerKey %.1f   Login / UPDATE %.1f\n", lg.p50 / gsk.p50,
               lg.p50 / dbf.p50);
        printf("                 Sync open / GetServerKey %.1f   Sync open / UPDATE %.1f\n", sy.p50 / gsk.p50,
               sy.p50 / dbf.p50);
        printf("  vs NetBird's local band (p50): Login %.0fx-%.0fx faster, Sync open %.0fx-%.0fx faster\n",
               sh->login_lo / lg.p50, sh->login_hi / lg.p50, sh->sync_lo / sy.p50, sh->sync_hi / sy.p50);
        if (*sh->login_target)
                printf("  targets: Login p50 %.3f ms %s 1 ms; Sync open p50 %.3f ms %s 2 ms\n", lg.p50,
                       lg.p50 <= 1 ? "<=" : ">", sy.p50, sy.p50 <= 2 ? "<=" : ">");

        free(v);
        grpc_completion_queue_shutdown(cq);
        (void) grpc_completion_queue_pluck(cq, NULL, gpr_time_from_seconds(5, GPR_TIMESPAN), NULL);
        grpc_completion_queue_destroy(cq);
        grpc_channel_destroy(chan);
        cleanup();
}

/* ---- main --------------------------------------------------------------------------- */

int main(int argc, char **argv) {
        mgmt_bin = argc > 1 ? argv[1] : getenv("NETBIRD_MGMT");
        int n_login = argc > 2 ? atoi(argv[2]) : 500;
        int n_sync = argc > 3 ? atoi(argv[3]) : 200;
        const char *pg = getenv("CP_TEST_PG_DSN");
        setvbuf(stdout, NULL, _IOLBF, 0);

        if (!mgmt_bin || access(mgmt_bin, X_OK) != 0) {
                fprintf(stderr, "usage: bench-agent NETBIRD-MGMT [logins [syncs [SHAPE...]]]\n"
                                "  SHAPE: 5000/200 or 5000/15 (default: both)\n");
                return 2;
        }
        if (!pg || !*pg) {
                printf("bench-agent: CP_TEST_PG_DSN is not set; nothing started.\n"
                       "  Run it with a throwaway PostgreSQL:  tests/bench/run <builddir>\n"
                       "  or against one you have:  CP_TEST_PG_DSN='host=127.0.0.1 port=5432 user=postgres "
                       "dbname=postgres' %s %s\n", argv[0], mgmt_bin);
                return 0;
        }
        if (n_login < 10 || n_sync < 10 || cp_crypto_init() < 0)
                return 2;
        for (int a = 4; a < argc; a++) {
                bool known = false;
                for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
                        known |= strcmp(argv[a], shapes[k].name) == 0;
                if (!known) {
                        fprintf(stderr, "bench-agent: unknown shape %s (5000/200 or 5000/15)\n", argv[a]);
                        return 2;
                }
        }
        signal(SIGALRM, on_alarm);
        alarm(TIME_LIMIT_S);
        grpc_init();
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                bool chosen = argc <= 4;
                for (int a = 4; a < argc; a++)
                        chosen |= strcmp(argv[a], shapes[k].name) == 0;
                if (chosen)
                        run_shape(&shapes[k], pg, n_login, n_sync);
        }
        grpc_shutdown();
        alarm(0);
        return 0;
}
